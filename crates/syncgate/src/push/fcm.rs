//! Firebase Cloud Messaging, HTTP v1 API: an OAuth2 access token from a service account
//! (the JWT bearer grant of RFC 7523: an RS256 assertion signed with the account's key,
//! exchanged at its `token_uri`), cached until shortly before it expires, then
//! `POST {endpoint}/v1/projects/{project_id}/messages:send` with a data message.
//!
//! Must never: log or return the service account's key or an access token, or hold the
//! token lock while sending a message.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::http::{body_text, classify, retry_after, transport_error, Clients};
use super::{payload, Priority, PushError, PushEvent, Sent};
use crate::config::PushFcm;

/// The OAuth2 scope that allows sending FCM messages.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// A token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// The parts of a Google service-account key file that are used.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    client_email: String,
    #[serde(default = "google_token_uri")]
    token_uri: String,
}

fn google_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default = "default_expiry")]
    expires_in: u64,
}

fn default_expiry() -> u64 {
    3600
}

pub struct Fcm {
    http: reqwest::Client,
    key: EncodingKey,
    key_id: Option<String>,
    client_email: String,
    token_uri: String,
    send_url: String,
    token: Mutex<Option<(String, Instant)>>,
}

/// `android.priority` of a message priority (FCM knows only HIGH and NORMAL).
pub fn android_priority(p: Priority) -> &'static str {
    match p {
        Priority::High => "HIGH",
        Priority::Normal | Priority::Low => "NORMAL",
    }
}

/// The v1 `message` for one registration token. FCM data values must be strings, so
/// `data` is carried as its JSON text.
pub fn message(token: &str, event: &PushEvent, ttl: Duration) -> Value {
    let p = payload(event);
    json!({
        "message": {
            "token": token,
            "data": {
                "id": event.id,
                "type": event.kind,
                "data": p["data"].to_string(),
                "ts": event.ts.to_string(),
                "priority": event.priority.as_str(),
            },
            "android": {"priority": android_priority(event.priority), "ttl": format!("{}s", ttl.as_secs())},
            "apns": {"headers": {"apns-priority": if event.priority == Priority::High { "10" } else { "5" }}},
            "webpush": {"headers": {"Urgency": super::webpush::urgency(event.priority), "TTL": ttl.as_secs().to_string()}},
        }
    })
}

impl Fcm {
    pub fn new(cfg: &PushFcm, clients: &Clients) -> Result<Self, PushError> {
        let err = |m: String| PushError::config("fcm", m);
        let text = std::fs::read_to_string(&cfg.service_account_file)
            .map_err(|e| err(format!("service_account_file {}: {e}", cfg.service_account_file)))?;
        let sa: ServiceAccount = serde_json::from_str(&text)
            .map_err(|e| err(format!("service_account_file is not a service-account key: {e}")))?;
        let key = EncodingKey::from_rsa_pem(sa.private_key.as_bytes())
            .map_err(|e| err(format!("service_account_file private_key: {e}")))?;
        let base = cfg.endpoint.trim_end_matches('/');
        Ok(Fcm {
            http: clients.any.clone(),
            key,
            key_id: sa.private_key_id,
            client_email: sa.client_email,
            token_uri: sa.token_uri,
            send_url: format!("{base}/v1/projects/{}/messages:send", sa.project_id),
            token: Mutex::new(None),
        })
    }

    /// A valid access token: the cached one, or a new one from the token endpoint.
    async fn access_token(&self) -> Result<String, Sent> {
        let mut slot = self.token.lock().await;
        if let Some((t, until)) = slot.as_ref() {
            if Instant::now() + RENEW_BEFORE < *until {
                return Ok(t.clone());
            }
        }
        let now = crate::auth::unix_now();
        let claims = json!({
            "iss": self.client_email, "scope": SCOPE, "aud": self.token_uri, "iat": now, "exp": now + 3600,
        });
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.key_id.clone();
        let assertion =
            jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| Sent::Failed(format!("assertion: {e}")))?;
        let form = format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}");
        let resp = self
            .http
            .post(&self.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = body_text(resp).await;
        if !status.is_success() {
            // A refused grant is the account's problem, not this message's: keep retrying
            // (through the queue's backoff) rather than dead-lettering every push.
            let reason = format!("OAuth2 token request: {status}: {}", text.trim());
            return Err(Sent::Retry { after: retry_after(&headers), reason });
        }
        let answer: TokenAnswer = serde_json::from_str(&text)
            .map_err(|e| Sent::Retry { after: None, reason: format!("OAuth2 token answer: {e}") })?;
        let until = Instant::now() + Duration::from_secs(answer.expires_in);
        *slot = Some((answer.access_token.clone(), until));
        Ok(answer.access_token)
    }

    pub async fn send(&self, token: &str, event: &PushEvent, ttl: Duration) -> Sent {
        let access = match self.access_token().await {
            Ok(t) => t,
            Err(sent) => return sent,
        };
        let resp = self.http.post(&self.send_url).bearer_auth(&access).json(&message(token, event, ttl)).send().await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => return transport_error(&e),
        };
        let (status, headers) = (resp.status(), resp.headers().clone());
        if status.is_success() {
            return Sent::Delivered;
        }
        let text = body_text(resp).await;
        let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let codes: Vec<&str> = error["error"]["details"]
            .as_array()
            .map(|d| d.iter().filter_map(|x| x["errorCode"].as_str()).collect())
            .unwrap_or_default();
        let detail = error["error"]["message"].as_str().unwrap_or(text.trim());
        if codes.contains(&"UNREGISTERED") {
            return Sent::Gone(format!("{status}: UNREGISTERED: {detail}"));
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            // Without UNREGISTERED it is a wrong project or endpoint, not a gone token.
            return Sent::Failed(format!("{status}: {detail}"));
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            // The access token was revoked or expired early: fetch a new one next time.
            *self.token.lock().await = None;
            return Sent::Retry { after: None, reason: format!("{status}: {detail}") };
        }
        classify(status, &headers, detail)
    }
}
