//! Authentication: client JWTs (HS256 secret, RS256/ES256 public keys) and backend API keys.
//!
//! Owns: token verification and minting, the `Claims` a connection is admitted with, room
//! permission patterns, and API key checks.
//!
//! Must never: accept a token without `sub` and `exp`, accept a user token as an API key (or
//! the other way round), or log a secret.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, KeyAlg};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("bad key in config: {0}")]
    Config(String),
}

/// The claims syncgate reads from a client token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Rooms the user may join: exact names or `prefix*` patterns (e.g. `school:*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
    /// When set, the token is only valid for this device's client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Free-form device or user attributes (a JSON object of at most 1 KiB), recorded with
    /// the connection and matched by broadcast `where` filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
}

impl Claims {
    /// Whether these claims allow joining `room`. A user may always join their personal
    /// room `user:{sub}`.
    pub fn may_join(&self, room: &str) -> bool {
        may_join(&self.sub, &self.rooms, room)
    }

    /// What a connection keeps of these claims once it is admitted.
    pub fn into_grants(self) -> RoomGrants {
        RoomGrants((!self.rooms.is_empty()).then(|| self.rooms.into_iter().map(String::into_boxed_str).collect()))
    }
}

/// What a connection keeps of its token after the upgrade: the room patterns (its user id is
/// the connection's own; expiry, client id and `meta` were taken at the upgrade). Nothing is
/// allocated for a token without rooms, and a clone shares the patterns.
#[derive(Debug, Clone, Default)]
pub struct RoomGrants(Option<std::sync::Arc<[Box<str>]>>);

impl RoomGrants {
    /// Whether `user`, holding these grants, may join `room` (the rule of `Claims::may_join`).
    pub fn may_join(&self, user: &str, room: &str) -> bool {
        may_join(user, self.0.as_deref().unwrap_or_default(), room)
    }
}

fn may_join<S: AsRef<str>>(user: &str, patterns: &[S], room: &str) -> bool {
    if room.strip_prefix("user:") == Some(user) {
        return true;
    }
    patterns.iter().any(|p| pattern_matches(p.as_ref(), room))
}

/// `pattern` is an exact room name, or ends with `*` to match every room with that prefix.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Verifies client tokens and API keys.
pub struct Auth {
    hs256: Option<(DecodingKey, EncodingKey)>,
    public: Vec<(Algorithm, DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    /// The configured API keys, each with its fingerprint (computed once, not per request).
    api_keys: Vec<(Vec<u8>, Arc<str>)>,
    admin_keys: Vec<Vec<u8>>,
}

impl Auth {
    /// Builds the verifier. `secret` and `api_keys` are the effective ones (the config's, or
    /// the development ones created on first start).
    pub fn new(cfg: &AuthConfig, secret: &str, api_keys: &[String]) -> Result<Self, AuthError> {
        crate::config::check_jwt_secret(secret).map_err(AuthError::Config)?;
        let hs256 = (!secret.is_empty())
            .then(|| (DecodingKey::from_secret(secret.as_bytes()), EncodingKey::from_secret(secret.as_bytes())));
        let mut public = Vec::new();
        for (i, k) in cfg.jwt_public_keys.iter().enumerate() {
            let pem = match &k.pem_file {
                Some(path) => std::fs::read(path).map_err(|e| {
                    AuthError::Config(format!("auth.jwt_public_keys[{i}].pem_file {}: {e}", path.display()))
                })?,
                None => k.pem.as_bytes().to_vec(),
            };
            let (alg, key) = match k.alg {
                KeyAlg::RS256 => (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)),
                KeyAlg::ES256 => (Algorithm::ES256, DecodingKey::from_ec_pem(&pem)),
            };
            let key = key.map_err(|e| AuthError::Config(format!("auth.jwt_public_keys[{i}]: {e}")))?;
            public.push((alg, key));
        }
        if hs256.is_none() && public.is_empty() {
            return Err(AuthError::Config("no JWT secret and no public key configured".into()));
        }
        Ok(Auth {
            hs256,
            public,
            issuer: (!cfg.issuer.is_empty()).then(|| cfg.issuer.clone()),
            audience: (!cfg.audience.is_empty()).then(|| cfg.audience.clone()),
            leeway: cfg.leeway.as_secs(),
            api_keys: api_keys
                .iter()
                .map(|k| (k.trim().as_bytes().to_vec(), Arc::from(key_fingerprint(k.trim()).as_str())))
                .collect(),
            admin_keys: Vec::new(),
        })
    }

    /// Sets the keys operators sign in to the admin UI with (none: sign-in is refused).
    pub fn with_admin_keys(mut self, keys: &[String]) -> Self {
        self.admin_keys = keys.iter().map(|k| k.trim().as_bytes().to_vec()).filter(|k| !k.is_empty()).collect();
        self
    }

    /// Whether any admin key is configured.
    pub fn has_admin_keys(&self) -> bool {
        !self.admin_keys.is_empty()
    }

    /// Whether `key` is one of the admin keys (compared in constant time).
    pub fn is_admin_key(&self, key: &str) -> bool {
        let key = key.trim().as_bytes();
        let mut found = false;
        for k in &self.admin_keys {
            found |= constant_time_eq(k, key);
        }
        found
    }

    /// Verifies a client token.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = decode_header(token).map_err(|e| AuthError::Invalid(plain(&e)))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        // Configured issuer and audience are required, not only checked when present.
        let mut required = vec!["exp", "sub"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let candidates: Vec<&DecodingKey> = match header.alg {
            Algorithm::HS256 => self.hs256.iter().map(|(d, _)| d).collect(),
            alg => self.public.iter().filter(|(a, _)| *a == alg).map(|(_, k)| k).collect(),
        };
        if candidates.is_empty() {
            return Err(AuthError::Invalid(format!("algorithm {:?} is not accepted", header.alg)));
        }
        let mut last = AuthError::Invalid("no key".into());
        for key in candidates {
            match decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    let c = data.claims;
                    if c.sub.is_empty() {
                        return Err(AuthError::Invalid("empty sub".into()));
                    }
                    return Ok(c);
                }
                Err(e) => {
                    last = match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                        _ => AuthError::Invalid(plain(&e)),
                    };
                    if matches!(last, AuthError::Expired) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    /// Mints an HS256 client token (for `syncgate token` and tests).
    pub fn mint(
        &self,
        user: &str,
        rooms: &[String],
        ttl: Duration,
        client_id: Option<&str>,
    ) -> Result<String, AuthError> {
        let (_, enc) = self.hs256.as_ref().ok_or_else(|| AuthError::Config("minting needs an HS256 secret".into()))?;
        let now = unix_now();
        let claims = Claims {
            sub: user.to_string(),
            exp: now + ttl.as_secs(),
            rooms: rooms.to_vec(),
            client_id: client_id.map(str::to_string),
            iat: Some(now),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            meta: None,
        };
        encode(&Header::new(Algorithm::HS256), &claims, enc).map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// The fingerprint of `key` if it is one of the configured API keys: every key is
    /// compared, in constant time, whichever matches.
    pub fn api_key_fingerprint(&self, key: &str) -> Option<&Arc<str>> {
        let key = key.trim().as_bytes();
        let mut found = None;
        for (k, fp) in &self.api_keys {
            if constant_time_eq(k, key) {
                found = Some(fp);
            }
        }
        found
    }
}

/// A short fingerprint of an API key: the first 6 bytes of its SHA-1, in hex. It scopes
/// idempotency keys and rate limits per key without keeping the key itself.
pub fn key_fingerprint(key: &str) -> String {
    use sha1::{Digest, Sha1};
    use std::fmt::Write;
    let d = Sha1::digest(key.as_bytes());
    let mut s = String::with_capacity(12);
    for b in &d[..6] {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A plain reason for a refused token (never the JWT library's own wording).
fn plain(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => "bad signature".into(),
        K::MissingRequiredClaim(c) => format!("the `{c}` claim is required"),
        K::ExpiredSignature => "token expired".into(),
        K::InvalidIssuer => "wrong issuer (`iss`)".into(),
        K::InvalidAudience => "wrong audience (`aud`)".into(),
        K::ImmatureSignature => "token not valid yet (`nbf` is in the future)".into(),
        K::InvalidAlgorithm | K::MissingAlgorithm | K::InvalidAlgorithmName => "algorithm not accepted".into(),
        K::Json(_) => "claims of the wrong type (`sub` and `iss` are strings, `exp` and `nbf` numbers)".into(),
        _ => "not a well-formed JWT".into(),
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret-0123456789-0123456789";

    fn auth() -> Auth {
        Auth::new(&AuthConfig::default(), SECRET, &["api-key-123456".into()]).unwrap()
    }

    #[test]
    fn mint_then_verify() {
        let a = auth();
        let t = a.mint("alice", &["school:*".into()], Duration::from_secs(60), Some("phone")).unwrap();
        let c = a.verify(&t).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.client_id.as_deref(), Some("phone"));
        assert!(c.may_join("school:42"));
        assert!(c.may_join("user:alice"));
        assert!(!c.may_join("user:bob"));
        assert!(!c.may_join("school"));
        // What a connection keeps of the claims decides joins the same way.
        let g = c.into_grants();
        assert!(g.may_join("alice", "school:42"));
        assert!(g.may_join("alice", "user:alice"));
        assert!(!g.may_join("alice", "user:bob"));
        assert!(!g.may_join("alice", "school"));
        let none = a.verify(&a.mint("bob", &[], Duration::from_secs(60), None).unwrap()).unwrap().into_grants();
        assert!(none.may_join("bob", "user:bob"));
        assert!(!none.may_join("bob", "school:42"));
    }

    #[test]
    fn refuses_bad_tokens() {
        let a = auth();
        assert!(matches!(a.verify(""), Err(AuthError::Missing)));
        assert!(matches!(a.verify("not.a.jwt"), Err(AuthError::Invalid(_))));
        let other = Auth::new(&AuthConfig::default(), "another-secret-xyz-0123456789-abcdef", &[]).unwrap();
        let t = other.mint("alice", &[], Duration::from_secs(60), None).unwrap();
        assert!(matches!(a.verify(&t), Err(AuthError::Invalid(_))));
        let enc = EncodingKey::from_secret(SECRET.as_bytes());
        let expired = Claims {
            sub: "a".into(),
            exp: unix_now() - 3600,
            rooms: vec![],
            client_id: None,
            iat: None,
            iss: None,
            aud: None,
            meta: None,
        };
        let t = encode(&Header::new(Algorithm::HS256), &expired, &enc).unwrap();
        assert!(matches!(a.verify(&t), Err(AuthError::Expired)));
    }

    #[test]
    fn api_keys() {
        let a = auth();
        assert!(a.api_key_fingerprint("api-key-123456").is_some());
        assert!(a.api_key_fingerprint("api-key-12345").is_none());
        assert!(a.api_key_fingerprint("").is_none());
        // The fingerprint is the key's, computed once; a wrong key has none.
        let fp = a.api_key_fingerprint(" api-key-123456 ").unwrap();
        assert_eq!(&**fp, key_fingerprint("api-key-123456"));
        assert_eq!(fp.len(), 12);
        assert_ne!(&**fp, key_fingerprint("api-key-12345"));
        assert!(a.api_key_fingerprint("api-key-1234567").is_none());
    }

    fn sign(claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    #[test]
    fn configured_issuer_and_audience_are_required() {
        let cfg = AuthConfig { issuer: "https://id.example".into(), audience: "syncgate".into(), ..Default::default() };
        let a = Auth::new(&cfg, SECRET, &[]).unwrap();
        let exp = unix_now() + 60;
        let both = sign(serde_json::json!({"sub": "a", "exp": exp, "iss": "https://id.example", "aud": "syncgate"}));
        assert!(a.verify(&both).is_ok());
        let no_iss = sign(serde_json::json!({"sub": "a", "exp": exp, "aud": "syncgate"}));
        assert!(matches!(a.verify(&no_iss), Err(AuthError::Invalid(_))));
        let msg = a.verify(&no_iss).unwrap_err().to_string();
        assert_eq!(msg, "invalid token: the `iss` claim is required");
        let no_aud = sign(serde_json::json!({"sub": "a", "exp": exp, "iss": "https://id.example"}));
        assert!(matches!(a.verify(&no_aud), Err(AuthError::Invalid(_))));
        let wrong = sign(serde_json::json!({"sub": "a", "exp": exp, "iss": "https://evil", "aud": "syncgate"}));
        assert!(matches!(a.verify(&wrong), Err(AuthError::Invalid(_))));
        // Minted tokens carry both, so they pass.
        assert!(a.verify(&a.mint("a", &[], Duration::from_secs(60), None).unwrap()).is_ok());
    }

    #[test]
    fn not_before_is_honoured_with_the_leeway() {
        let a = auth(); // leeway 5 s
        let exp = unix_now() + 600;
        let later = sign(serde_json::json!({"sub": "a", "exp": exp, "nbf": unix_now() + 300}));
        assert!(matches!(a.verify(&later), Err(AuthError::Invalid(_))));
        let within_leeway = sign(serde_json::json!({"sub": "a", "exp": exp, "nbf": unix_now() + 2}));
        assert!(a.verify(&within_leeway).is_ok());
        let past = sign(serde_json::json!({"sub": "a", "exp": exp, "nbf": unix_now() - 10}));
        assert!(a.verify(&past).is_ok());
    }

    #[test]
    fn short_hs256_secrets_are_refused() {
        let e = Auth::new(&AuthConfig::default(), "a", &[]).err().expect("refused");
        assert!(e.to_string().contains("at least 32"), "{e}");
        assert!(Auth::new(&AuthConfig::default(), &"k".repeat(31), &[]).is_err());
        assert!(Auth::new(&AuthConfig::default(), &"k".repeat(32), &[]).is_ok());
    }
}
