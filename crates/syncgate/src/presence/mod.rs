//! Presence: who is online, with how many connections, and who is in a room — for the
//! whole deployment, not just this node.
//!
//! Owns: the `Presence` trait and its implementations: `local` (one node: the hub is the
//! whole truth) and `redis` (a cluster: each node writes its share through on every connect,
//! close, join and leave, with an expiry, so other nodes see a change within milliseconds and
//! the connections of a node that crashed disappear within a bounded time).
//!
//! Must never: be on the delivery path (it answers queries and admission checks only).

pub mod local;
pub mod redis;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("presence unavailable: {0}")]
    Unavailable(String),
}

impl From<PresenceError> for crate::error::Error {
    fn from(e: PresenceError) -> Self {
        crate::error::Error::unavailable(e.to_string())
    }
}

/// One node's live figures, as the admin UI's overview lists them (GET /api/v1/nodes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeFigures {
    pub instance_id: String,
    pub connections: usize,
    pub users: usize,
    pub rooms: usize,
    /// Messages published through this node since it started (HTTP API and clients).
    pub messages_in: u64,
    /// Event frames this node queued to its connections since it started.
    pub messages_out: u64,
    pub uptime_s: u64,
    /// Unix ms at which the figures were taken.
    pub updated_at: i64,
}

impl NodeFigures {
    /// This node's figures now.
    pub fn of(hub: &crate::hub::Hub, instance_id: &str) -> Self {
        let (connections, users, rooms) = hub.counts();
        let m = hub.metrics();
        NodeFigures {
            instance_id: instance_id.to_string(),
            connections,
            users,
            rooms,
            messages_in: m.messages_in_total(),
            messages_out: m.messages_out.get(),
            uptime_s: hub.clock() / 1000,
            updated_at: crate::node::now_ms(),
        }
    }
}

/// A room's members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomPresence {
    pub users: Vec<String>,
    pub connections: usize,
}

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Connections of `user` across the deployment.
    async fn user_connections(&self, user: &str) -> Result<usize, PresenceError>;

    /// Members of `room` across the deployment (users sorted, deduplicated).
    async fn room(&self, room: &str) -> Result<RoomPresence, PresenceError>;

    /// The connections of `user` across the deployment, with their metadata (the objects of
    /// GET /api/v1/users/{user_id}/connections), oldest first.
    async fn connections(&self, user: &str) -> Result<Vec<serde_json::Value>, PresenceError>;

    /// The live nodes of the deployment, in id order; `me` is this node's fresh figures
    /// (the other nodes' are at most a second or two old).
    async fn nodes(&self, me: NodeFigures) -> Result<Vec<NodeFigures>, PresenceError>;

    /// A page of online users in id order after `after`, and the cursor of the next page.
    async fn online_users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, Option<String>), PresenceError>;
}
