//! Delayed publishes: a publish with `delay_s` or `deliver_at` becomes a `JobKind::Publish`
//! job due at that time, so it survives restarts, and is published then like any other.
//!
//! Owns: the job's payload (`DelayedPublish`) and its runner. Must never: publish before the
//! job is due, or publish anything the API would have refused (the request was validated
//! when it was accepted; the runner re-checks names and types against the config in force).

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::node::{Message, Node};
use crate::queue::{Job, JobKind, Outcome, Runner};

/// A publish to do later: to `user_ids`, or to `room`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DelayedPublish {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Box<RawValue>,
    pub persist: bool,
    pub ttl_s: Option<u64>,
    pub priority: Option<String>,
}

/// The endpoint name of publish jobs (metrics and breaker key).
pub const ENDPOINT: &str = "publish";

struct PublishRunner {
    node: Weak<Node>,
}

#[async_trait]
impl Runner for PublishRunner {
    async fn run(&self, job: &Job) -> Outcome {
        let Some(node) = self.node.upgrade() else {
            return Outcome::Retry { error: "node shutting down".into(), after: None };
        };
        let p: DelayedPublish = match serde_json::from_slice(&job.payload) {
            Ok(p) => p,
            Err(e) => return Outcome::Permanent { error: format!("malformed delayed publish: {e}") },
        };
        if let Err(e) = node.check_type(&p.kind) {
            return Outcome::Permanent { error: e.to_string() };
        }
        let msg = Message {
            kind: &p.kind,
            data: Bytes::copy_from_slice(p.data.get().as_bytes()),
            persist: p.persist,
            ttl: p.ttl_s.map(std::time::Duration::from_secs),
            priority: match p.priority.as_deref() {
                Some("high") => crate::event::Priority::High,
                Some("low") => crate::event::Priority::Low,
                _ => crate::event::Priority::Normal,
            },
            except: None,
        };
        let r = match &p.room {
            None => node.publish_users(&p.user_ids, msg).await.map(|_| ()),
            Some(room) => node.publish_room(room, msg).await.map(|_| ()),
        };
        match r {
            Ok(()) => {
                node.count_in("delayed", 1);
                Outcome::Done
            }
            Err(e) if e.code == crate::error::Code::ServiceUnavailable => {
                Outcome::Retry { error: e.to_string(), after: None }
            }
            Err(e) => Outcome::Permanent { error: e.to_string() },
        }
    }
}

/// Registers the publish runner with the node's workers.
pub fn install(node: &Arc<Node>) {
    node.workers.register(JobKind::Publish, Arc::new(PublishRunner { node: Arc::downgrade(node) }));
}
