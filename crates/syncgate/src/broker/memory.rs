//! The single-node broker: every envelope goes straight to the local hub.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::{Broker, BrokerError, BrokerStats, Envelope, Target};
use crate::hub::{CloseReason, Hub};
use crate::transport::codec::close;

pub struct MemoryBroker {
    hub: Arc<Hub>,
    published: AtomicU64,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>) -> Self {
        MemoryBroker { hub, published: AtomicU64::new(0) }
    }
}

/// Delivers an envelope to a hub (shared by every broker for its local side).
pub fn deliver_local(hub: &Hub, env: &Envelope) -> usize {
    match &env.target {
        Target::User(user) => hub.deliver_user(user, env.seq, &env.frame, env.except),
        Target::Room(room) => hub.deliver_room(room, env.seq, &env.frame, env.except),
        Target::All => hub.deliver_all(&env.frame),
        Target::AllWhere(filter) => hub.deliver_all_where(&env.frame, filter),
        Target::Disconnect(user) => {
            let reason =
                CloseReason { code: close::DISCONNECTED, reason: "disconnected by the server", flush_first: true };
            // The frame names one device (its client id); empty: every device of the user.
            match std::str::from_utf8(&env.frame) {
                Ok("") => hub.disconnect_user(user, reason),
                Ok(client) => hub.disconnect_device(user, client, reason),
                Err(_) => 0,
            }
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, envelope: Envelope) -> Result<usize, BrokerError> {
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(deliver_local(&self.hub, &envelope))
    }

    fn stats(&self) -> BrokerStats {
        let published = self.published.load(Ordering::Relaxed);
        BrokerStats { mode: "memory", published, received: published, ..Default::default() }
    }
}
