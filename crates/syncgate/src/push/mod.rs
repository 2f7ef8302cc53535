//! Push notifications: device registrations and the providers that reach a device whose
//! app is not connected (Web Push, FCM HTTP v1, APNs; `message.undelivered` webhooks are the
//! outbound queue's webhooks).
//!
//! Owns: `Push` (the registrations and the configured providers), the job a send is
//! (`PushJob`: one event for one device), and running one job (`deliver`): load the
//! device's registration, send through its provider, and remove the registration when the
//! provider says the token is gone. Files: `devices*.rs` the registrations, one file per
//! provider, `guard.rs` which Web Push endpoints may be reached (registration and send),
//! `http.rs` the shared HTTP client and answer classification, `runner.rs` the outbound
//! queue's side (`Push::enqueue_for`, the `Runner`, the undelivered hook, the bounded
//! `webpush:HOST` endpoint labels).
//!
//! Must never: retry by itself (retries, backoff and dead letters are the outbound queue's),
//! send anything but the event it was given, or keep a registration a provider called gone.

pub mod apns;
pub mod devices;
pub mod devices_embedded;
pub mod devices_redis;
pub mod fcm;
pub mod guard;
pub mod http;
pub mod metrics;
pub mod runner;
pub mod webpush;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::event::Priority;
pub use devices::{Devices, Provider, Registration, Subscription, SubscriptionKeys};

use crate::config::PushConfig;

/// Why the push part could not start (a key file that does not load, and the like).
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("push.providers.{provider}: {message}")]
    Config { provider: &'static str, message: String },
    #[error("push: cannot build the HTTP client: {0}")]
    Client(String),
}

impl PushError {
    fn config(provider: &'static str, message: impl Into<String>) -> Self {
        PushError::Config { provider, message: message.into() }
    }
}

/// The undelivered message a push carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushEvent {
    /// The event id in the user's stream (so the app can fetch or dedupe it).
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: serde_json::Value,
    /// Unix ms at which it was published.
    pub ts: i64,
    #[serde(default)]
    pub priority: Priority,
    /// The message's own time to live, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
}

/// One push: one event to one device (the payload of a `JobKind::Push` job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushJob {
    pub user: String,
    pub client_id: String,
    pub provider: Provider,
    pub event: PushEvent,
}

/// What became of one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The provider accepted it.
    Delivered,
    /// Nothing to send: the device unregistered (or changed provider) since the job was made.
    Skipped,
    /// The provider says the token is gone; the registration was removed.
    Gone(String),
    /// Try again later (429, 5xx, a network error), after at least `after` if given.
    Retry { after: Option<Duration>, reason: String },
    /// The provider refused it for good (other 4xx), or the provider is not configured.
    Failed(String),
}

/// The registrations and the configured providers of a node.
pub struct Push {
    pub cfg: PushConfig,
    pub devices: Arc<dyn Devices>,
    webpush: Option<webpush::WebPush>,
    fcm: Option<fcm::Fcm>,
    apns: Option<apns::Apns>,
    pub metrics: Arc<metrics::PushMetrics>,
    /// Which Web Push hosts have an endpoint label of their own.
    labels: runner::HostLabels,
}

/// Longest token or subscription endpoint accepted at registration.
pub const MAX_ADDRESS_BYTES: usize = 2048;

impl Push {
    /// Loads the providers' keys and builds their HTTP clients.
    pub fn new(
        cfg: &PushConfig,
        devices: Arc<dyn Devices>,
        metrics: Arc<metrics::PushMetrics>,
    ) -> Result<Self, PushError> {
        let p = &cfg.providers;
        let client = http::Clients::new(cfg)?;
        Ok(Push {
            cfg: cfg.clone(),
            devices,
            webpush: p.webpush.as_ref().map(|w| webpush::WebPush::new(w, &client)).transpose()?,
            fcm: p.fcm.as_ref().map(|f| fcm::Fcm::new(f, &client)).transpose()?,
            apns: p.apns.as_ref().map(|a| apns::Apns::new(a, &client)).transpose()?,
            metrics,
            labels: runner::HostLabels::default(),
        })
    }

    /// The Web Push hosts that may be private or use http (`allow_hosts`), for the
    /// registration check (`Registration::validate`).
    pub fn allow_hosts(&self) -> &guard::AllowHosts {
        self.webpush.as_ref().map_or(&guard::NO_HOSTS, |w| w.allow_hosts())
    }

    /// Whether devices may register with this provider here.
    pub fn has_provider(&self, p: Provider) -> bool {
        match p {
            Provider::Webpush => self.webpush.is_some(),
            Provider::Fcm => self.fcm.is_some(),
            Provider::Apns => self.apns.is_some(),
        }
    }

    /// Whether any device provider is configured (else undelivered messages make no jobs).
    pub fn sends_anything(&self) -> bool {
        self.webpush.is_some() || self.fcm.is_some() || self.apns.is_some()
    }

    /// How long the provider should keep this event for an unreachable device.
    fn ttl(&self, event: &PushEvent) -> Duration {
        event.ttl_s.map(Duration::from_secs).unwrap_or(self.cfg.ttl)
    }

    /// Sends one job to its device, with the registration as it is now.
    pub async fn deliver(&self, job: &PushJob) -> Sent {
        let reg = match self.devices.get(&job.user, &job.client_id).await {
            Ok(Some(r)) if r.provider == job.provider => r,
            Ok(_) => return Sent::Skipped,
            Err(e) => return Sent::Retry { after: None, reason: format!("registration lookup: {e}") },
        };
        let ttl = self.ttl(&job.event);
        let sent = match reg.provider {
            Provider::Webpush => match (&self.webpush, &reg.subscription) {
                (Some(w), Some(s)) => w.send(s, &job.event, ttl).await,
                (None, _) => Sent::Failed("push.providers.webpush is not configured".into()),
                (_, None) => Sent::Gone("registration has no subscription".into()),
            },
            Provider::Fcm => match (&self.fcm, &reg.token) {
                (Some(f), Some(t)) => f.send(t, &job.event, ttl).await,
                (None, _) => Sent::Failed("push.providers.fcm is not configured".into()),
                (_, None) => Sent::Gone("registration has no token".into()),
            },
            Provider::Apns => match (&self.apns, &reg.token) {
                (Some(a), Some(t)) => a.send(t, &job.event, ttl).await,
                (None, _) => Sent::Failed("push.providers.apns is not configured".into()),
                (_, None) => Sent::Gone("registration has no token".into()),
            },
        };
        let result = match &sent {
            Sent::Delivered => "delivered",
            Sent::Skipped => "skipped",
            Sent::Gone(_) => "gone",
            Sent::Retry { .. } => "retry",
            Sent::Failed(_) => "failed",
        };
        let provider = reg.provider.as_str();
        self.metrics.sends.get_or_create(&metrics::SendLabels { provider, result }).inc();
        if let Sent::Gone(reason) = &sent {
            match self.devices.remove_if(&job.user, &job.client_id, reg.address()).await {
                Ok(removed) => {
                    if removed {
                        self.metrics.gone.get_or_create(&metrics::ProviderLabels { provider }).inc();
                    }
                    tracing::info!(
                        user = job.user,
                        client_id = job.client_id,
                        provider = reg.provider.as_str(),
                        removed,
                        reason,
                        "push token gone"
                    )
                }
                Err(e) => return Sent::Retry { after: None, reason: format!("removing a gone registration: {e}") },
            }
        }
        sent
    }
}

/// The JSON a device receives: the event as the WebSocket would have carried it.
pub(crate) fn payload(event: &PushEvent) -> serde_json::Value {
    serde_json::json!({
        "id": event.id,
        "stream": "user",
        "type": event.kind,
        "data": event.data,
        "ts": event.ts,
        "priority": event.priority.as_str(),
    })
}

/// The payload, without `data` (and marked `"truncated": true`) when it is longer than
/// `max` bytes: the app then fetches the message from the offline API by its id.
pub(crate) fn payload_within(event: &PushEvent, max: usize) -> Vec<u8> {
    let full = serde_json::to_vec(&payload(event)).unwrap_or_default();
    if full.len() <= max {
        return full;
    }
    let mut v = payload(event);
    if let Some(o) = v.as_object_mut() {
        o.remove("data");
        o.insert("truncated".into(), serde_json::Value::Bool(true));
    }
    serde_json::to_vec(&v).unwrap_or_default()
}
