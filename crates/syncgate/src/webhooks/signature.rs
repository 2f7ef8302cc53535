//! Standard Webhooks signatures: `webhook-signature: v1,BASE64(HMAC-SHA256(key,
//! "{id}.{timestamp}.{body}"))`, where key is the base64-decoded part of the secret after
//! `whsec_`.
//!
//! Owns: decoding secrets and signing. Must never: sign with a key that did not decode.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Fewest key bytes accepted in a `whsec_` secret (the spec suggests 24 to 64).
pub const MIN_KEY_BYTES: usize = 16;

/// The key bytes of a `whsec_...` secret; `None` when it is not one.
pub fn decode_secret(secret: &str) -> Option<Vec<u8>> {
    let b64 = secret.strip_prefix("whsec_")?;
    let key = STANDARD.decode(b64).ok()?;
    (key.len() >= MIN_KEY_BYTES).then_some(key)
}

/// The `webhook-signature` header value for one message.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Checks a `webhook-signature` header (space-separated `v1,SIG` entries, any may match),
/// in constant time per entry. For tests and receivers written in Rust.
pub fn verify(key: &[u8], id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return false };
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    header
        .split_whitespace()
        .filter_map(|e| e.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .any(|sig| mac.clone().verify_slice(&sig).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks specification.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        let key = decode_secret(SECRET).unwrap();
        assert_eq!(sign(&key, ID, TS, BODY), EXPECTED);
        assert!(verify(&key, ID, TS, BODY, EXPECTED));
        assert!(verify(&key, ID, TS, BODY, &format!("v1,AAAA {EXPECTED}")));
        assert!(!verify(&key, ID, TS + 1, BODY, EXPECTED));
        assert!(!verify(&key, ID, TS, br#"{"test": 2432232315}"#, EXPECTED));
    }

    #[test]
    fn refuses_bad_secrets() {
        assert!(decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_none());
        assert!(decode_secret("whsec_not base64!").is_none());
        assert!(decode_secret("whsec_c2hvcnQ=").is_none());
    }
}
