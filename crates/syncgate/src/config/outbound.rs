//! The `webhooks`, `queue` and `push` sections: outbound calls from the gateway.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

/// Every webhook event type, as written in `webhooks.endpoints[].events`.
pub const WEBHOOK_EVENTS: &[&str] =
    &["user.online", "user.offline", "connect", "disconnect", "client.message", "message.undelivered"];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    pub endpoints: Vec<WebhookEndpoint>,
    pub connect_proxy: ConnectProxy,
    /// Client publish types also forwarded as `client.message` (patterns like `chat.*`).
    pub client_message_types: Vec<String>,
    /// A user's last device gone this long (and none back) before `user.offline`.
    #[serde(with = "duration")]
    pub offline_grace: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            endpoints: Vec::new(),
            connect_proxy: ConnectProxy::default(),
            client_message_types: Vec::new(),
            offline_grace: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    pub name: String,
    pub url: String,
    /// `whsec_` + base64 of the key bytes (Standard Webhooks).
    pub secret: String,
    /// Event types sent to this endpoint; empty = all.
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(with = "duration", default = "default_timeout")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectProxy {
    /// Empty: no connect proxy.
    pub url: String,
    #[serde(with = "duration")]
    pub timeout: Duration,
    pub on_error: OnError,
}

impl Default for ConnectProxy {
    fn default() -> Self {
        ConnectProxy { url: String::new(), timeout: Duration::from_secs(2), on_error: OnError::Reject }
    }
}

/// What the connect proxy's timeout or failure means for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    Allow,
    Reject,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Attempts before a job goes to the dead-letter queue.
    pub max_attempts: u32,
    #[serde(with = "duration")]
    pub backoff_min: Duration,
    #[serde(with = "duration")]
    pub backoff_max: Duration,
    pub breaker_failures: u32,
    #[serde(with = "duration")]
    pub breaker_cooldown: Duration,
    /// Live jobs (ready, delayed, in flight) kept at most; enqueues past it get 503.
    pub max_jobs: u64,
    /// Dead letters kept at most; past it the oldest are dropped (and counted).
    pub max_dead: u64,
    /// Attempts running at once on this node.
    pub concurrency: usize,
    /// How long a claimed job is leased to its node; longer than any attempt's timeout. A
    /// job whose node died is claimed again by another after this.
    #[serde(with = "duration")]
    pub lease: Duration,
    /// How often an idle worker looks for due jobs (jobs enqueued on this node wake it
    /// at once; this bounds the wait for delayed jobs and jobs from other nodes).
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// Longest `delay_s` / `deliver_at` ahead accepted on publishes.
    #[serde(with = "duration")]
    pub max_delay: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_attempts: 8,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            breaker_failures: 10,
            breaker_cooldown: Duration::from_secs(30),
            max_jobs: 100_000,
            max_dead: 10_000,
            concurrency: 32,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(200),
            max_delay: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// The `push` section. The push module adds its providers here.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// A persisted user message no device acked this long after it was published while
    /// none was connected is `message.undelivered` (webhook, push).
    #[serde(with = "duration")]
    pub delay: Duration,
    /// Push registrations kept per user; a new client id past it replaces the registration
    /// updated least recently.
    pub max_devices_per_user: usize,
    /// Lifetime of a notification at the provider when the message has no `ttl_s`
    /// (Web Push `TTL`, APNs `apns-expiration`, FCM `android.ttl`).
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// Time limit of one request to a provider.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Extra PEM root certificates trusted for provider endpoints (test servers, private
    /// gateways); empty: the system's roots only.
    pub ca_file: String,
    pub providers: super::PushProviders,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            delay: Duration::from_secs(10),
            max_devices_per_user: 20,
            ttl: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
            ca_file: String::new(),
            providers: super::PushProviders::default(),
        }
    }
}

impl super::Config {
    /// Checks of the outbound sections, called from `validate`.
    pub(super) fn validate_outbound(&self) -> Result<(), super::ConfigError> {
        let key = |path: String, message: &str| Err(super::ConfigError::Key { path, message: message.into() });
        let q = &self.queue;
        if q.max_attempts == 0 {
            return key("queue.max_attempts".into(), "must be at least 1");
        }
        if q.backoff_min.is_zero() || q.backoff_max < q.backoff_min {
            return key("queue.backoff_max".into(), "backoff_min must be more than 0 and backoff_max at least it");
        }
        if q.breaker_failures == 0 {
            return key("queue.breaker_failures".into(), "must be at least 1");
        }
        for (name, v) in [
            ("queue.max_jobs", q.max_jobs),
            ("queue.max_dead", q.max_dead),
            ("queue.concurrency", q.concurrency as u64),
        ] {
            if v == 0 {
                return key(name.into(), "must be at least 1");
            }
        }
        if q.poll_interval.is_zero() {
            return key("queue.poll_interval".into(), "must be more than 0");
        }
        let w = &self.webhooks;
        let mut names = std::collections::HashSet::new();
        for (i, e) in w.endpoints.iter().enumerate() {
            let at = |k: &str| format!("webhooks.endpoints[{i}].{k}");
            if e.name.is_empty() || !names.insert(e.name.as_str()) {
                return key(at("name"), "must be a non-empty name, unique among the endpoints");
            }
            if !e.url.starts_with("http://") && !e.url.starts_with("https://") {
                return key(at("url"), "must be an http:// or https:// URL");
            }
            if crate::webhooks::signature::decode_secret(&e.secret).is_none() {
                return key(at("secret"), "must be whsec_ followed by the base64 of at least 16 key bytes");
            }
            if let Some(bad) = e.events.iter().find(|t| !WEBHOOK_EVENTS.contains(&t.as_str())) {
                return key(at("events"), &format!("unknown event {bad:?}; known: {}", WEBHOOK_EVENTS.join(", ")));
            }
            if e.timeout.is_zero() || e.timeout >= q.lease {
                return key(at("timeout"), "must be more than 0 and shorter than queue.lease");
            }
        }
        let p = &w.connect_proxy;
        if !p.url.is_empty() && !p.url.starts_with("http://") && !p.url.starts_with("https://") {
            return key("webhooks.connect_proxy.url".into(), "must be empty or an http:// or https:// URL");
        }
        if p.timeout.is_zero() {
            return key("webhooks.connect_proxy.timeout".into(), "must be more than 0");
        }
        Ok(())
    }
}
