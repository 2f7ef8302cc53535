//! Web Push (RFC 8030) to a browser's push service: the payload encrypted for the
//! subscription (RFC 8291, `aes128gcm` of RFC 8188, by the web-push-native crate) and the
//! application server identified with VAPID (RFC 8292: an ES256 JWT for the push service's
//! origin, and our public key).
//!
//! Must never: send a payload the push service would refuse for its size (4096 bytes of
//! record: `data` is left out past that), a VAPID token valid for more than 24 hours, or a
//! request to an endpoint the rule of `guard.rs` refuses (checked again before each send, for
//! registrations stored before the rule or `allow_hosts` changed).

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};

use super::guard::{check_endpoint, refused_by_resolver, AllowHosts};
use super::http::{body_text, classify, transport_error, Clients};
use super::{payload_within, Priority, PushError, PushEvent, Sent, Subscription, SubscriptionKeys};
use crate::config::PushWebPush;
use crate::error::Error;

/// Largest plaintext that fits one 4096-byte aes128gcm record with its 86-byte header,
/// 16-byte tag and padding delimiter.
pub const MAX_PLAINTEXT: usize = 4096 - 86 - 16 - 1;
/// Lifetime of a VAPID token (RFC 8292 allows at most 24 hours).
const VAPID_LIFETIME: Duration = Duration::from_secs(12 * 3600);

pub struct WebPush {
    /// For hosts in `allow_hosts` (resolved as the system resolves them).
    http: reqwest::Client,
    /// For every other host: names resolve to public addresses only.
    http_public: reqwest::Client,
    allow: AllowHosts,
    key: EncodingKey,
    /// Our public key, uncompressed point in base64url (the `k` parameter).
    public: String,
    subject: String,
}

/// Reads a VAPID private key: PEM (PKCS#8 or SEC1) or the raw 32-byte scalar in base64url
/// (what `web-push generate-vapid-keys` prints).
pub fn load_vapid_key(text: &str) -> Result<p256::SecretKey, String> {
    let t = text.trim();
    if t.starts_with("-----BEGIN PRIVATE KEY-----") {
        return p256::SecretKey::from_pkcs8_pem(t).map_err(|e| format!("not a P-256 PKCS#8 key: {e}"));
    }
    if t.starts_with("-----BEGIN EC PRIVATE KEY-----") {
        return p256::SecretKey::from_sec1_pem(t).map_err(|e| format!("not a P-256 SEC1 key: {e}"));
    }
    let raw = URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')).map_err(|_| "neither PEM nor base64url".to_string())?;
    p256::SecretKey::from_slice(&raw).map_err(|_| "a raw key must be 32 bytes of a P-256 scalar".to_string())
}

/// Decodes a subscription's keys: the P-256 public key and the 16-byte auth secret.
pub fn parse_keys(keys: &SubscriptionKeys) -> Result<(p256::PublicKey, web_push_native::Auth), Error> {
    let b64 = |s: &str| URL_SAFE_NO_PAD.decode(s.trim_end_matches('='));
    let pk = b64(&keys.p256dh)
        .ok()
        .and_then(|b| p256::PublicKey::from_sec1_bytes(&b).ok())
        .ok_or_else(|| Error::invalid("subscription.keys.p256dh is not a base64url P-256 public key"))?;
    let auth = b64(&keys.auth)
        .ok()
        .filter(|b| b.len() == 16)
        .ok_or_else(|| Error::invalid("subscription.keys.auth is not 16 bytes in base64url"))?;
    Ok((pk, web_push_native::Auth::clone_from_slice(&auth)))
}

/// RFC 8030 `Urgency` of a priority.
pub fn urgency(p: Priority) -> &'static str {
    match p {
        Priority::High => "high",
        Priority::Normal => "normal",
        Priority::Low => "low",
    }
}

/// The origin of a push resource (the VAPID `aud`): scheme, host and a non-default port.
fn origin(endpoint: &str) -> Option<String> {
    let uri: axum::http::Uri = endpoint.parse().ok()?;
    let scheme = uri.scheme_str()?;
    let host = uri.host()?;
    Some(match (scheme, uri.port_u16()) {
        ("https", Some(443)) | ("http", Some(80)) | (_, None) => format!("{scheme}://{host}"),
        (_, Some(port)) => format!("{scheme}://{host}:{port}"),
    })
}

impl WebPush {
    pub fn new(cfg: &PushWebPush, clients: &Clients) -> Result<Self, PushError> {
        let err = |m: String| PushError::config("webpush", m);
        let text = std::fs::read_to_string(&cfg.vapid_private_key_file)
            .map_err(|e| err(format!("vapid_private_key_file {}: {e}", cfg.vapid_private_key_file)))?;
        let secret = load_vapid_key(&text).map_err(|m| err(format!("vapid_private_key_file: {m}")))?;
        let der = secret.to_pkcs8_der().map_err(|e| err(e.to_string()))?;
        let public = URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes());
        let allow = AllowHosts::new(&cfg.allow_hosts).map_err(|m| err(format!("allow_hosts: {m}")))?;
        Ok(WebPush {
            http: clients.any.clone(),
            http_public: clients.public.clone(),
            allow,
            key: EncodingKey::from_ec_der(der.as_bytes()),
            public,
            subject: cfg.subject.clone(),
        })
    }

    /// The `Authorization: vapid t=JWT, k=KEY` value for a push resource.
    fn authorization(&self, endpoint: &str) -> Result<String, String> {
        let aud = origin(endpoint).ok_or("subscription endpoint is not a URL")?;
        let exp = crate::auth::unix_now() + VAPID_LIFETIME.as_secs();
        let claims = serde_json::json!({"aud": aud, "exp": exp, "sub": self.subject});
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("JWT".into());
        let t = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| e.to_string())?;
        Ok(format!("vapid t={t}, k={}", self.public))
    }

    /// `push.providers.webpush.allow_hosts`, parsed.
    pub fn allow_hosts(&self) -> &AllowHosts {
        &self.allow
    }

    pub async fn send(&self, sub: &Subscription, event: &PushEvent, ttl: Duration) -> Sent {
        // A refused endpoint fails for good and the registration is kept: the device (or the
        // operator, through allow_hosts) has to change something before a retry could help.
        let url = match check_endpoint(&sub.endpoint, &self.allow) {
            Ok(u) => u,
            Err(m) => return Sent::Failed(format!("refused to send: {m}")),
        };
        let client = if self.allow.allows(&url) { &self.http } else { &self.http_public };
        let (pk, auth) = match parse_keys(&sub.keys) {
            Ok(k) => k,
            Err(e) => return Sent::Gone(e.message),
        };
        let body = match web_push_native::encrypt(payload_within(event, MAX_PLAINTEXT), &pk, &auth) {
            Ok(b) => b,
            Err(e) => return Sent::Failed(format!("encryption failed: {e}")),
        };
        let authorization = match self.authorization(&sub.endpoint) {
            Ok(a) => a,
            Err(e) => return Sent::Gone(e),
        };
        let resp = client
            .post(url)
            .header("ttl", ttl.as_secs().to_string())
            .header("urgency", urgency(event.priority))
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("authorization", authorization)
            .body(body)
            .send()
            .await;
        match resp {
            Ok(r) => {
                let (status, headers) = (r.status(), r.headers().clone());
                let detail = if status.is_success() { String::new() } else { body_text(r).await };
                classify(status, &headers, detail.trim())
            }
            Err(e) => match refused_by_resolver(&e) {
                Some(n) => Sent::Failed(format!("refused to send: {n}")),
                None => transport_error(&e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_keep_non_default_ports_only() {
        assert_eq!(origin("https://push.example.net/w/abc").as_deref(), Some("https://push.example.net"));
        assert_eq!(origin("https://push.example.net:443/w").as_deref(), Some("https://push.example.net"));
        assert_eq!(origin("http://127.0.0.1:9000/w").as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(origin("not a url"), None);
    }

    #[test]
    fn vapid_keys_load_from_raw_base64url_and_pem() {
        let k = load_vapid_key("RS0WdYWWo1HajXg3NZR1olzCf31i-ZBGDkFyCs7j1jw").unwrap();
        let pem = k.to_pkcs8_pem(Default::default()).unwrap();
        assert_eq!(load_vapid_key(&pem).unwrap(), k);
        assert!(load_vapid_key("nope!").is_err());
        assert!(load_vapid_key("AAAA").is_err());
    }
}
