//! Client tokens for the generated devices: HS256 JWTs with the claims syncgate reads
//! (`sub`, `exp`, `rooms`), signed with the secret the suite gives the server under test.

use anyhow::Result;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde::Serialize;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    rooms: &'a [String],
}

/// Mints tokens for many users with one key.
pub struct Minter {
    key: EncodingKey,
    header: Header,
    exp: u64,
    rooms: Vec<String>,
}

impl Minter {
    /// Tokens valid for `ttl_s` seconds from now, allowing `rooms` (names or `prefix*`).
    pub fn new(secret: &str, ttl_s: u64, rooms: Vec<String>) -> Self {
        let exp = crate::sys::unix_ns() / 1_000_000_000 + ttl_s;
        Minter { key: EncodingKey::from_secret(secret.as_bytes()), header: Header::default(), exp, rooms }
    }

    pub fn token(&self, user: &str) -> Result<String> {
        Ok(encode(&self.header, &Claims { sub: user, exp: self.exp, rooms: &self.rooms }, &self.key)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_carries_claims() {
        let t = Minter::new("s3cret", 60, vec!["bench".into()]).token("u-1").unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_required_spec_claims(&["exp", "sub"]);
        let d = jsonwebtoken::decode::<serde_json::Value>(&t, &jsonwebtoken::DecodingKey::from_secret(b"s3cret"), &v)
            .unwrap();
        assert_eq!(d.claims["sub"], "u-1");
        assert_eq!(d.claims["rooms"][0], "bench");
    }
}
