//! Apple Push Notification service over HTTP/2 with token-based authentication: an ES256
//! provider token (`kid` the key id, `iss` the team id, `iat`) signed with the account's
//! `.p8` key, reused for 50 minutes (Apple refuses tokens older than one hour and
//! throttles renewing more often than every 20 minutes), then
//! `POST {endpoint}/3/device/{token}` with `apns-topic`, `apns-push-type`,
//! `apns-priority` and `apns-expiration`.
//!
//! Must never: speak HTTP/1.1 to APNs, or send a payload over APNs's 4096-byte limit
//! (`data` is left out past that).

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::http::{body_text, classify, transport_error, Clients};
use super::{payload, Priority, PushError, PushEvent, Sent};
use crate::config::PushApns;

/// Largest APNs payload for a regular notification.
pub const MAX_PAYLOAD: usize = 4096;
/// How long one provider token is used.
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

pub struct Apns {
    http: reqwest::Client,
    key: EncodingKey,
    key_id: String,
    team_id: String,
    topic: String,
    base: String,
    token: Mutex<Option<(String, Instant)>>,
}

/// `apns-priority`: 10 (send now) for high, 5 (power-considerate) otherwise.
pub fn apns_priority(p: Priority) -> &'static str {
    match p {
        Priority::High => "10",
        Priority::Normal | Priority::Low => "5",
    }
}

/// The notification: an alert the app's Notification Service Extension may rewrite
/// (`mutable-content`), with the event under `syncgate`.
pub fn body(event: &PushEvent) -> Vec<u8> {
    let build = |event_json: Value| {
        json!({
            "aps": {"alert": {"title": event.kind}, "mutable-content": 1},
            "syncgate": event_json,
        })
    };
    let full = serde_json::to_vec(&build(payload(event))).unwrap_or_default();
    if full.len() <= MAX_PAYLOAD {
        return full;
    }
    let mut p = payload(event);
    if let Some(o) = p.as_object_mut() {
        o.remove("data");
        o.insert("truncated".into(), Value::Bool(true));
    }
    serde_json::to_vec(&build(p)).unwrap_or_default()
}

impl Apns {
    pub fn new(cfg: &PushApns, clients: &Clients) -> Result<Self, PushError> {
        let err = |m: String| PushError::config("apns", m);
        let pem = std::fs::read(&cfg.key_file).map_err(|e| err(format!("key_file {}: {e}", cfg.key_file)))?;
        let key = EncodingKey::from_ec_pem(&pem).map_err(|e| err(format!("key_file is not a P-256 .p8 key: {e}")))?;
        Ok(Apns {
            http: clients.h2.clone(),
            key,
            key_id: cfg.key_id.clone(),
            team_id: cfg.team_id.clone(),
            topic: cfg.topic.clone(),
            base: cfg.endpoint.trim_end_matches('/').to_string(),
            token: Mutex::new(None),
        })
    }

    /// The current provider token, signed anew when the cached one is 50 minutes old.
    fn provider_token(&self) -> Result<String, String> {
        let mut slot = self.token.lock();
        if let Some((t, at)) = slot.as_ref() {
            if at.elapsed() < TOKEN_LIFETIME {
                return Ok(t.clone());
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = json!({"iss": self.team_id, "iat": crate::auth::unix_now()});
        let t = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| e.to_string())?;
        *slot = Some((t.clone(), Instant::now()));
        Ok(t)
    }

    pub async fn send(&self, device_token: &str, event: &PushEvent, ttl: Duration) -> Sent {
        let bearer = match self.provider_token() {
            Ok(t) => t,
            Err(e) => return Sent::Failed(format!("provider token: {e}")),
        };
        let expiration = crate::auth::unix_now() + ttl.as_secs();
        let resp = self
            .http
            .post(format!("{}/3/device/{device_token}", self.base))
            .header("authorization", format!("bearer {bearer}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", apns_priority(event.priority))
            .header("apns-expiration", expiration.to_string())
            .header("content-type", "application/json")
            .body(body(event))
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return transport_error(&e),
        };
        let (status, headers) = (resp.status(), resp.headers().clone());
        if status.is_success() {
            return Sent::Delivered;
        }
        let text = body_text(resp).await;
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let reason = answer["reason"].as_str().unwrap_or(text.trim()).to_string();
        match (status.as_u16(), reason.as_str()) {
            (410, _) | (400, "BadDeviceToken") | (400, "DeviceTokenNotForTopic") => {
                Sent::Gone(format!("{status}: {reason}"))
            }
            (403, "ExpiredProviderToken" | "InvalidProviderToken") => {
                *self.token.lock() = None;
                Sent::Retry { after: None, reason: format!("{status}: {reason}") }
            }
            // 404 from APNs is a bad request path, not a gone device.
            (404, _) => Sent::Failed(format!("{status}: {reason}")),
            _ => classify(status, &headers, &reason),
        }
    }
}
