//! Webhooks: events of the gateway (user.online / user.offline, connect / disconnect,
//! client.message, message.undelivered) POSTed to the app's endpoints through the outbound
//! queue, signed as Standard Webhooks says; and the connect proxy.
//!
//! Owns: which events exist and their payloads (`Events`, the hooks the node calls), the
//! signed POST of one job (`runner`), the once-per-user online/offline logic with its
//! grace (`online`), the undelivered check, and the connect proxy (`proxy`).
//!
//! Must never: make a caller on the delivery path wait for an endpoint (hooks only enqueue),
//! send an event to an endpoint that did not ask for it, or sign with anything but the
//! endpoint's own key.

pub mod signature;

use async_trait::async_trait;

/// A persisted user message that no device acked within `push.delay` while none was
/// connected: the payload of `message.undelivered`, and what push providers get.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Undelivered {
    pub user_id: String,
    /// The event's id in the user's stream.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The event's `data`, raw JSON.
    pub data: Box<serde_json::value::RawValue>,
    /// `high`, `normal` or `low`, as published.
    pub priority: String,
    /// Unix ms when it was published.
    pub ts: i64,
}

/// Told about every undelivered message (the push module registers one with
/// `Events::on_undelivered`, and typically enqueues `JobKind::Push` jobs from it). Called
/// from the queue worker, so it may await; an error makes the check run again later.
#[async_trait]
pub trait UndeliveredHook: Send + Sync {
    async fn undelivered(&self, msg: &Undelivered) -> Result<(), String>;
}
