//! Fan-out between nodes: a published frame reaches the hub of every node that has a
//! recipient.
//!
//! Owns: the `Broker` trait and the `Envelope` it carries; implementations: `memory` (one
//! node: hands envelopes straight to the local hub). A cluster broker subscribes only to
//! what its node's connections need, filters its own messages, and resubscribes after a
//! reconnect.
//!
//! Must never: store anything (durability is the store's job, done before publishing) or
//! re-encode frames.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

/// Who an envelope is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// All connections of a user.
    User(Arc<str>),
    /// All members of a room.
    Room(Arc<str>),
    /// Every connection.
    All,
    /// Every connection whose metadata passes the filter (a broadcast with `where`).
    AllWhere(Arc<crate::hub::meta::Where>),
    /// Close every connection of a user with 4009; when the frame is not empty, it is the
    /// client id of the one device to close.
    Disconnect(Arc<str>),
}

/// One encoded frame on its way to the hubs.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub target: Target,
    /// Stream position for persisted messages (user stream or room history).
    pub seq: Option<u64>,
    /// The encoded WebSocket frame.
    pub frame: Bytes,
    /// A connection that must not receive the frame (the publisher's own), on its node.
    pub except: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// Counters for GET /api/v1/stats/pubsub.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BrokerStats {
    pub mode: &'static str,
    pub published: u64,
    pub received: u64,
    pub dropped_own: u64,
    pub failed: u64,
    pub reconnects: u64,
}

/// A change in what this node's connections need to receive. The hub reports the first
/// local connection of a user (or member of a room) arriving and the last one leaving, so a
/// cluster broker can subscribe to exactly those channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    UserOn(Arc<str>),
    UserOff(Arc<str>),
    RoomOn(Arc<str>),
    RoomOff(Arc<str>),
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes an envelope to every node (this one included). Returns the number of
    /// deliveries made on this node.
    async fn publish(&self, envelope: Envelope) -> Result<usize, BrokerError>;

    /// Counters since start.
    fn stats(&self) -> BrokerStats;

    /// Called by the hub, synchronously and in order, when local interest changes. Must not
    /// block: a cluster broker queues the (un)subscription for its own task.
    fn interest(&self, change: Interest) {
        let _ = change;
    }

    /// Whether the broker can currently publish (for /ready).
    fn is_ready(&self) -> bool {
        true
    }
}
