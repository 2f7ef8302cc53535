//! The deferred checks behind `user.offline` and `message.undelivered`, run as queue jobs
//! (`JobKind::Undelivered`) so that they survive restarts and run once in a cluster.
//!
//! - `offline`: `webhooks.offline_grace` after a user's connection closed: if the user has
//!   no connection anywhere and this check clears the online mark, `user.offline` goes out.
//! - `undelivered`: `push.delay` after a persisted message to a user who had no connection:
//!   if the user still has none and no device of the user acked the message (a cursor at or
//!   past it), `message.undelivered` goes out and the undelivered hooks (push) are told.

use std::sync::Weak;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;

use super::{Events, Undelivered};
use crate::queue::{Job, Outcome, Priority, Runner};

#[derive(Deserialize)]
#[serde(tag = "check", rename_all = "snake_case")]
enum Check {
    Offline { user_id: String },
    Undelivered { message: Undelivered },
}

pub struct CheckRunner {
    pub events: Weak<Events>,
}

fn retry(error: String) -> Outcome {
    Outcome::Retry { error, after: None }
}

#[async_trait]
impl Runner for CheckRunner {
    async fn run(&self, job: &Job) -> Outcome {
        let Some(ev) = self.events.upgrade() else { return retry("node shutting down".into()) };
        let check: Check = match serde_json::from_slice(&job.payload) {
            Ok(c) => c,
            Err(e) => return Outcome::Permanent { error: format!("malformed check: {e}") },
        };
        match check {
            Check::Offline { user_id } => {
                match ev.presence().user_connections(&user_id).await {
                    Ok(0) => {}
                    Ok(_) => return Outcome::Done,
                    Err(e) => return retry(e.to_string()),
                }
                match ev.online().clear(&user_id).await {
                    Ok(true) => ev.emit("user.offline", json!({"user_id": user_id}), Priority::Express).await,
                    Ok(false) => {}
                    Err(e) => return retry(e),
                }
                Outcome::Done
            }
            Check::Undelivered { message } => {
                match ev.presence().user_connections(&message.user_id).await {
                    Ok(0) => {}
                    Ok(_) => return Outcome::Done,
                    Err(e) => return retry(e.to_string()),
                }
                // A device that came and went within the delay and acked it has it.
                match ev.acked(&message).await {
                    Ok(true) => return Outcome::Done,
                    Ok(false) => {}
                    Err(e) => return retry(format!("reading the devices' cursors: {e}")),
                }
                let prio = Priority::of_publish(&message.priority).unwrap_or(Priority::Normal);
                for hook in ev.undelivered_hooks() {
                    if let Err(e) = hook.undelivered(&message).await {
                        return retry(format!("undelivered hook: {e}"));
                    }
                }
                ev.emit("message.undelivered", json!(message), prio).await;
                Outcome::Done
            }
        }
    }
}
