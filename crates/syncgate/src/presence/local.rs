//! Presence of a single node: read straight from the hub.

use std::sync::Arc;

use async_trait::async_trait;

use super::{NodeFigures, Presence, PresenceError, RoomPresence};
use crate::hub::Hub;

pub struct LocalPresence {
    hub: Arc<Hub>,
}

impl LocalPresence {
    pub fn new(hub: Arc<Hub>) -> Self {
        LocalPresence { hub }
    }
}

#[async_trait]
impl Presence for LocalPresence {
    async fn user_connections(&self, user: &str) -> Result<usize, PresenceError> {
        Ok(self.hub.user_connections(user))
    }

    async fn room(&self, room: &str) -> Result<RoomPresence, PresenceError> {
        let (users, connections) = self.hub.presence(room);
        Ok(RoomPresence { users, connections })
    }

    async fn connections(&self, user: &str) -> Result<Vec<serde_json::Value>, PresenceError> {
        Ok(self.hub.connections_of(user).iter().map(|c| crate::hub::Hub::connection_json(c)).collect())
    }

    async fn nodes(&self, me: NodeFigures) -> Result<Vec<NodeFigures>, PresenceError> {
        Ok(vec![me])
    }

    async fn online_users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, Option<String>), PresenceError> {
        Ok(self.hub.online_users(after, limit))
    }
}
