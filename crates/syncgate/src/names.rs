//! Names: user ids, client ids and room names, checked by one rule wherever they arrive
//! (HTTP paths, query strings and bodies, a token's `sub`, the `/ws` query, client frames).
//!
//! Owns: the rule (1 to `limits.max_name_bytes` bytes of UTF-8, no control characters)
//! and the strict percent-decoding of URL components (bytes that do not decode to UTF-8
//! are refused, never replaced by U+FFFD, so two different raw names never become one).
//!
//! Must never: normalise or rewrite a name (what is checked is what is stored), or accept
//! a name for one path that another path refuses.

use crate::error::{Error, Result};

/// Checks a user id, client id or room name. `what` names the field in the message.
pub fn check(what: &str, name: &str, max_bytes: usize) -> Result<()> {
    if name.is_empty() || name.len() > max_bytes || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!("{what} must be 1 to {max_bytes} bytes without control characters")));
    }
    Ok(())
}

/// Percent-decodes one URL component (`+` is a space in query strings). Bytes that do not
/// form UTF-8 after decoding are an error.
pub fn decode_component(raw: &str, plus_is_space: bool) -> Result<String> {
    let spaced;
    let raw = if plus_is_space && raw.contains('+') {
        spaced = raw.replace('+', " ");
        spaced.as_str()
    } else {
        raw
    };
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|d| d.into_owned())
        .map_err(|_| Error::invalid("the URL has percent-encoded bytes that are not valid UTF-8"))
}

/// Checks that every key and value of a query string decodes to UTF-8.
pub fn check_query(query: &str) -> Result<()> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        decode_component(k, true)?;
        decode_component(v, true)?;
    }
    Ok(())
}

/// The decoded pairs of a query string, refused when a component is not UTF-8.
pub fn query_pairs(query: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((decode_component(k, true)?, decode_component(v, true)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        assert!(check("room", "school:1", 128).is_ok());
        assert!(check("room", "café", 128).is_ok());
        assert!(check("room", "", 128).is_err());
        assert!(check("room", "a\nb", 128).is_err());
        assert!(check("room", "a\u{7f}", 128).is_err());
        assert!(check("room", &"x".repeat(129), 128).is_err());
    }

    #[test]
    fn strict_decoding() {
        assert_eq!(decode_component("caf%C3%A9", true).unwrap(), "café");
        assert_eq!(decode_component("a+b", true).unwrap(), "a b");
        assert_eq!(decode_component("a+b", false).unwrap(), "a+b");
        assert!(decode_component("%FF", true).is_err());
        assert!(decode_component("%FE", false).is_err());
        assert!(check_query("client_id=%FF").is_err());
        assert!(check_query("client_id=ok&limit=3").is_ok());
        assert_eq!(
            query_pairs("user_id=a%0Ab&x").unwrap(),
            vec![("user_id".into(), "a\nb".into()), ("x".into(), String::new())]
        );
    }
}
