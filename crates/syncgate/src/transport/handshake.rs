//! The HTTP side of the WebSocket opening handshake (RFC 6455 section 4.2): checking the
//! upgrade request, the 426 answer to an unsupported version, the 101 answer, and the
//! negotiation of permessage-deflate (RFC 7692 section 7) from `Sec-WebSocket-Extensions`.
//!
//! The extension header is parsed here by hand: it is a small grammar (RFC 6455 section
//! 9.1: comma-separated offers of `;`-separated parameters with token or quoted-string
//! values), and no well-kept crate parses it without pulling in a whole WebSocket stack.
//!
//! Must never: accept an extension offer with parameters it does not understand, or
//! answer with parameters the offer does not allow.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine;
use sha1::{Digest, Sha1};

use crate::error::Error;

/// Why an upgrade request is refused.
#[derive(Debug)]
pub enum Refusal {
    /// Not a WebSocket upgrade, or a malformed key: 400.
    Invalid(Error),
    /// A missing or unsupported `Sec-WebSocket-Version`: 426 with `Sec-WebSocket-Version: 13`.
    Version(Error),
}

/// Checks the upgrade request and returns its `Sec-WebSocket-Key`.
pub fn handshake_key(h: &HeaderMap) -> Result<String, Refusal> {
    let has = |name: header::HeaderName, want: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(want)))
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(Refusal::Invalid(Error::invalid("expected a WebSocket upgrade request (Upgrade: websocket)")));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()).map(str::trim) != Some("13") {
        return Err(Refusal::Version(Error::invalid("unsupported or missing Sec-WebSocket-Version; use 13")));
    }
    let key = h.get(header::SEC_WEBSOCKET_KEY).and_then(|v| v.to_str().ok()).unwrap_or("");
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(k) if k.len() == 16 => Ok(key.to_string()),
        _ => Err(Refusal::Invalid(Error::invalid("missing or malformed Sec-WebSocket-Key"))),
    }
}

/// Turns an error answer into RFC 6455's answer to an unsupported version (section 4.4):
/// 426 Upgrade Required, naming the version this server speaks.
pub fn upgrade_required(mut resp: Response) -> Response {
    *resp.status_mut() = StatusCode::UPGRADE_REQUIRED;
    resp.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    resp
}

/// The accepted permessage-deflate offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The offer carried `server_max_window_bits` (necessarily 15, see `accept_offer`): the
    /// answer must carry it too (RFC 7692 section 7.1.2.1).
    server_max_window_bits: bool,
}

impl Deflate {
    /// The `Sec-WebSocket-Extensions` answer. Both no-context-takeover parameters are
    /// always sent (a server may add them to any offer, sections 7.1.1.1 and 7.1.1.2);
    /// `client_max_window_bits` is never sent, since inflating with a 15-bit window reads
    /// whatever window the client uses.
    pub fn answer(&self) -> &'static str {
        if self.server_max_window_bits {
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15"
        } else {
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        }
    }
}

/// Picks the first acceptable permessage-deflate offer of the request, if any.
pub fn negotiate_deflate(h: &HeaderMap) -> Option<Deflate> {
    for value in h.get_all(header::SEC_WEBSOCKET_EXTENSIONS) {
        // A header we cannot read is a list of offers we do not take.
        let Some(offers) = value.to_str().ok().and_then(parse_extensions) else {
            continue;
        };
        if let Some(d) = offers.iter().find_map(accept_offer) {
            return Some(d);
        }
    }
    None
}

/// One extension offer: its name and parameters (values unquoted).
type Offer = (String, Vec<(String, Option<String>)>);

/// Accepts a permessage-deflate offer whose parameters are all known, valid, given once,
/// and compatible with compressing each message once for every recipient.
fn accept_offer((name, params): &Offer) -> Option<Deflate> {
    if !name.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut answer = Deflate { server_max_window_bits: false };
    for (key, value) in params {
        let key = key.as_str();
        if seen.iter().any(|k| k.eq_ignore_ascii_case(key)) {
            return None; // RFC 7692 section 7: a parameter given twice declines the offer
        }
        seen.push(key);
        match (key.to_ascii_lowercase().as_str(), value.as_deref()) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            // Server messages are compressed once with a 15-bit window and shared by every
            // recipient, so an offer asking for a smaller server window is declined.
            ("server_max_window_bits", Some(v)) => {
                window_bits(v)?;
                if v != "15" {
                    return None;
                }
                answer.server_max_window_bits = true;
            }
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
    }
    Some(answer)
}

/// A window size as RFC 7692 writes it: 8 to 15, no leading zero.
fn window_bits(v: &str) -> Option<u8> {
    match v {
        "8" | "9" | "10" | "11" | "12" | "13" | "14" | "15" => v.parse().ok(),
        _ => None,
    }
}

/// Parses an extension list (RFC 6455 section 9.1); None if it is malformed.
fn parse_extensions(s: &str) -> Option<Vec<Offer>> {
    let mut offers = Vec::new();
    for offer in split_outside_quotes(s, ',') {
        let offer = offer.trim();
        if offer.is_empty() {
            continue; // "#rule" lists allow empty elements
        }
        let mut parts = split_outside_quotes(offer, ';').into_iter();
        let name = parts.next()?.trim();
        if !is_token(name) {
            return None;
        }
        let mut params = Vec::new();
        for p in parts {
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k.trim(), Some(param_value(v.trim())?)),
                None => (p.trim(), None),
            };
            if !is_token(k) {
                return None;
            }
            params.push((k.to_string(), v));
        }
        offers.push((name.to_string(), params));
    }
    Some(offers)
}

/// A parameter value: a token, or a quoted string whose unescaped content is a token.
fn param_value(v: &str) -> Option<String> {
    let value = match v.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.push(chars.next()?),
                    '"' => return None,
                    c => out.push(c),
                }
            }
            out
        }
        None => v.to_string(),
    };
    is_token(&value).then_some(value)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Splits on `sep` where it is not inside a quoted string.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The 101 answer, with the extension answer when permessage-deflate was negotiated.
pub fn switching_protocols(key: &str, deflate: Option<Deflate>) -> Response {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(d) = deflate {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static(d.answer()));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(values: &[&str]) -> Option<Deflate> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_str(v).unwrap());
        }
        negotiate_deflate(&h)
    }

    const PLAIN: Option<Deflate> = Some(Deflate { server_max_window_bits: false });
    const WITH_SERVER_BITS: Option<Deflate> = Some(Deflate { server_max_window_bits: true });

    #[test]
    fn accepts_the_offers_clients_send() {
        assert_eq!(offer(&["permessage-deflate"]), PLAIN);
        assert_eq!(offer(&["permessage-deflate; client_max_window_bits"]), PLAIN); // Node ws, Python websockets
        assert_eq!(offer(&["permessage-deflate; client_max_window_bits=10"]), PLAIN);
        assert_eq!(offer(&["permessage-deflate; client_max_window_bits=\"12\""]), PLAIN);
        assert_eq!(offer(&["permessage-deflate; client_max_window_bits=\"1\\0\""]), PLAIN); // quoted-pair
        assert_eq!(offer(&["Permessage-Deflate; Server_No_Context_Takeover; client_no_context_takeover"]), PLAIN);
        assert_eq!(offer(&["permessage-deflate; server_max_window_bits=15"]), WITH_SERVER_BITS);
        assert_eq!(offer(&["x-webkit-deflate-frame, permessage-deflate"]), PLAIN);
        assert_eq!(offer(&["foo", "permessage-deflate"]), PLAIN);
    }

    #[test]
    fn declines_bad_offers_and_takes_the_next() {
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=010",
            "permessage-deflate; server_no_context_takeover=1",
        ] {
            assert_eq!(offer(&[bad]), None, "{bad}");
            let two = format!("{bad}, permessage-deflate; client_max_window_bits");
            assert_eq!(offer(&[&two]), PLAIN, "{two}");
        }
        assert_eq!(offer(&[]), None);
        assert_eq!(offer(&["permessage-deflate; x=\"a,b\""]), None);
        assert_eq!(offer(&["permessage-deflate; client_max_window_bits=\"8\", permessage-deflate; q"]), PLAIN);
        assert_eq!(offer(&["permessage-deflate; =1"]), None);
    }

    #[test]
    fn refuses_other_versions_with_426() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(matches!(handshake_key(&h), Err(Refusal::Version(_))));
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert!(matches!(handshake_key(&h), Err(Refusal::Version(_))));
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        assert_eq!(handshake_key(&h).unwrap(), "dGhlIHNhbXBsZSBub25jZQ==");
        let r = switching_protocols("dGhlIHNhbXBsZSBub25jZQ==", PLAIN);
        assert_eq!(r.headers()[header::SEC_WEBSOCKET_ACCEPT], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(
            r.headers()[header::SEC_WEBSOCKET_EXTENSIONS],
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }
}
