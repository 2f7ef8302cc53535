//! The single-node broker: every envelope goes straight to the local side.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::{Broker, BrokerError, BrokerStats, Envelope, Local};

pub struct MemoryBroker {
    local: Arc<dyn Local>,
    published: AtomicU64,
}

impl MemoryBroker {
    pub fn new(local: Arc<dyn Local>) -> Self {
        MemoryBroker { local, published: AtomicU64::new(0) }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, envelope: Envelope) -> Result<usize, BrokerError> {
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(self.local.deliver(&envelope))
    }

    fn stats(&self) -> BrokerStats {
        let published = self.published.load(Ordering::Relaxed);
        BrokerStats { mode: "memory", published, received: published, ..Default::default() }
    }
}
