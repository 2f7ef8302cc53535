//! Fan-out between nodes: a published event reaches the hub of every node that has a
//! recipient.
//!
//! Owns: the `Broker` trait, the `Envelope` it carries (a protocol-neutral event, not a wire
//! frame) and the `Local` trait through which a broker hands envelopes to its node (the hub
//! implements it, so brokers never import the hub); implementations: `memory` (one node:
//! hands envelopes straight to the local side). A cluster broker subscribes only to what its
//! node's connections need, filters its own messages, and resubscribes after a reconnect.
//!
//! Must never: store anything (durability is the store's job, done before publishing) or
//! know a wire protocol.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;

use crate::event::Event;

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
    AllWhere(Arc<crate::meta::Where>),
    /// Close every connection of a user with 4009 (no event).
    Disconnect(Arc<str>),
    /// Close the connections of one device (user, client id) with 4009 (no event).
    DisconnectDevice(Arc<str>, Arc<str>),
    /// Close one connection (user, node id, the connection's id on that node) with 4009.
    DisconnectConn(Arc<str>, Arc<str>, u64),
}

/// One event on its way to the hubs.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub target: Target,
    /// Stream position for persisted messages (user stream or room history).
    pub seq: Option<u64>,
    /// The event (None for `Target::Disconnect`).
    pub event: Option<Arc<Event>>,
    /// A connection that must not receive the event (the publisher's own), on its node.
    pub except: Option<u64>,
}

impl Envelope {
    pub fn new(target: Target, seq: Option<u64>, event: Arc<Event>, except: Option<u64>) -> Self {
        Envelope { target, seq, event: Some(event), except }
    }

    pub fn disconnect(user: Arc<str>) -> Self {
        Envelope { target: Target::Disconnect(user), seq: None, event: None, except: None }
    }
}

/// The local side of a node, as a broker sees it: where envelopes are delivered and what
/// this node's connections are interested in. Implemented by the hub.
pub trait Local: Send + Sync + 'static {
    /// Delivers an envelope to this node's connections; returns how many got it.
    fn deliver(&self, env: &Envelope) -> usize;
    /// Users with at least one connection on this node.
    fn local_users(&self) -> Vec<Arc<str>>;
    /// Rooms with at least one member on this node.
    fn local_rooms(&self) -> Vec<Arc<str>>;
    /// Whether `user` has a connection here.
    fn has_user(&self, user: &str) -> bool;
    /// Whether `room` has a member here.
    fn has_room(&self, room: &str) -> bool;
    /// Local connections of `user` re-read their user stream once.
    fn recheck_user(&self, user: &str);
    /// Local members of `room` re-read its history once.
    fn recheck_room(&self, room: &str);
    /// Every local connection re-reads its streams once (after a resubscription).
    fn recheck_all(&self);
    /// Where interest changes go (set once, by the cluster broker).
    fn set_interest_sink(&self, sink: InterestSink);
}

/// Receives interest changes (see [`Interest`]); must not block.
pub type InterestSink = Box<dyn Fn(Interest) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

impl From<BrokerError> for crate::error::Error {
    fn from(e: BrokerError) -> Self {
        crate::error::Error::unavailable(e.to_string())
    }
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
    /// deliveries made on this node, or an error when the envelope could not be handed to
    /// the other nodes (local deliveries may have happened anyway).
    async fn publish(&self, envelope: Envelope) -> Result<usize, BrokerError>;

    /// Publishes several envelopes (one batch publish), each as `publish` would, in order. A
    /// cluster broker sends them in pipelines rather than waiting for one round trip each.
    /// Every envelope is attempted; an error means some did not reach the other nodes.
    async fn publish_many(&self, envelopes: Vec<Envelope>) -> Result<usize, BrokerError> {
        let (mut delivered, mut failed) = (0, None);
        for env in envelopes {
            match self.publish(env).await {
                Ok(n) => delivered += n,
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(delivered), Err)
    }

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
