//! Authentication: client JWTs (HS256 secret, RS256/ES256 public keys) and backend API keys.
//!
//! Owns: token verification and minting, the `Claims` a connection is admitted with, room
//! permission patterns, and API key checks.
//!
//! Must never: accept a token without `sub` and `exp`, accept a user token as an API key (or
//! the other way round), or log a secret.

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
        if room.strip_prefix("user:") == Some(self.sub.as_str()) {
            return true;
        }
        self.rooms.iter().any(|p| pattern_matches(p, room))
    }
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
    api_keys: Vec<Vec<u8>>,
    admin_keys: Vec<Vec<u8>>,
}

impl Auth {
    /// Builds the verifier. `secret` and `api_keys` are the effective ones (the config's, or
    /// the development ones created on first start).
    pub fn new(cfg: &AuthConfig, secret: &str, api_keys: &[String]) -> Result<Self, AuthError> {
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
            api_keys: api_keys.iter().map(|k| k.trim().as_bytes().to_vec()).collect(),
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
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.set_required_spec_claims(&["exp", "sub"]);
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
                        _ => AuthError::Invalid(e.to_string()),
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

    /// Whether `key` is one of the configured API keys (compared in constant time).
    pub fn is_api_key(&self, key: &str) -> bool {
        let key = key.trim().as_bytes();
        let mut found = false;
        for k in &self.api_keys {
            found |= constant_time_eq(k, key);
        }
        found
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

    fn auth() -> Auth {
        Auth::new(&AuthConfig::default(), "test-secret-0123456789", &["api-key-123456".into()]).unwrap()
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
    }

    #[test]
    fn refuses_bad_tokens() {
        let a = auth();
        assert!(matches!(a.verify(""), Err(AuthError::Missing)));
        assert!(matches!(a.verify("not.a.jwt"), Err(AuthError::Invalid(_))));
        let other = Auth::new(&AuthConfig::default(), "another-secret-xyz", &[]).unwrap();
        let t = other.mint("alice", &[], Duration::from_secs(60), None).unwrap();
        assert!(matches!(a.verify(&t), Err(AuthError::Invalid(_))));
        let enc = EncodingKey::from_secret(b"test-secret-0123456789");
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
        assert!(a.is_api_key("api-key-123456"));
        assert!(!a.is_api_key("api-key-12345"));
        assert!(!a.is_api_key(""));
    }
}
