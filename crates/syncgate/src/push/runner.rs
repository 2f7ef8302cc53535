//! Push on the outbound queue: the `Runner` of `JobKind::Push` jobs, and the hook that turns
//! each `message.undelivered` into one job per registered device.
//!
//! Owns: the mapping of a send's result to the queue's `Outcome` (delivered, skipped and
//! gone are done; 429/5xx and network errors retry, honouring `Retry-After`; other refusals
//! are dead-lettered), and the endpoint a push job is keyed by for circuit breakers and
//! metrics (`fcm`, `apns`, `webpush:HOST`: one push service each, for the first
//! `MAX_WEBPUSH_LABELS` hosts this node enqueues for; later hosts share `webpush:other`).
//!
//! Must never: retry by itself, enqueue for a provider this node does not have, or give
//! more than `MAX_WEBPUSH_LABELS` Web Push hosts a label of their own (devices choose the
//! hosts; each label is a metric series and a circuit breaker).

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Priority, Provider, Push, PushEvent, PushJob, Sent};
use crate::queue::{Job, JobKind, NewJob, Outcome, Priority as QueuePriority, Runner, Workers};
use crate::webhooks::{Undelivered, UndeliveredHook};

/// Runs `JobKind::Push` jobs.
pub struct PushRunner {
    push: Arc<Push>,
}

impl PushRunner {
    pub fn new(push: Arc<Push>) -> Self {
        PushRunner { push }
    }
}

/// The queue's reading of one send.
pub fn outcome(sent: Sent) -> Outcome {
    match sent {
        Sent::Delivered | Sent::Skipped | Sent::Gone(_) => Outcome::Done,
        Sent::Retry { after, reason } => Outcome::Retry { error: reason, after },
        Sent::Failed(error) => Outcome::Permanent { error },
    }
}

#[async_trait]
impl Runner for PushRunner {
    async fn run(&self, job: &Job) -> Outcome {
        let pj: PushJob = match serde_json::from_slice(&job.payload) {
            Ok(p) => p,
            Err(e) => return Outcome::Permanent { error: format!("not a push job: {e}") },
        };
        outcome(self.push.deliver(&pj).await)
    }
}

/// Web Push hosts that get an endpoint label of their own (`webpush:HOST`), per node.
pub const MAX_WEBPUSH_LABELS: usize = 64;
/// The endpoint label shared by the Web Push hosts past `MAX_WEBPUSH_LABELS`.
pub const WEBPUSH_OTHER: &str = "webpush:other";

/// The Web Push hosts with a label of their own: the first `MAX_WEBPUSH_LABELS` distinct
/// hosts seen, for the life of the process. A host keeps the label it got first.
#[derive(Default)]
pub struct HostLabels(Mutex<HashSet<String>>);

impl HostLabels {
    /// `webpush:HOST`, or `webpush:other` once `MAX_WEBPUSH_LABELS` other hosts have theirs.
    pub fn label(&self, host: &str) -> String {
        let mut seen = self.0.lock();
        if seen.contains(host) || (seen.len() < MAX_WEBPUSH_LABELS && seen.insert(host.to_string())) {
            format!("webpush:{host}")
        } else {
            WEBPUSH_OTHER.to_string()
        }
    }
}

/// The breaker and metrics key of a push job: `fcm`, `apns`, or the Web Push endpoint's
/// host as `labels` names it.
pub fn endpoint(provider: Provider, address: &str, labels: &HostLabels) -> String {
    match provider {
        Provider::Fcm => "fcm".into(),
        Provider::Apns => "apns".into(),
        Provider::Webpush => match reqwest::Url::parse(address).ok().as_ref().and_then(|u| u.host_str()) {
            Some(host) if !host.is_empty() => labels.label(host),
            _ => WEBPUSH_OTHER.to_string(),
        },
    }
}

/// The push event of an undelivered message.
pub fn event_of(msg: &Undelivered) -> PushEvent {
    let priority = match msg.priority.as_str() {
        "high" => Priority::High,
        "low" => Priority::Low,
        _ => Priority::Normal,
    };
    PushEvent {
        id: msg.id.clone(),
        kind: msg.kind.clone(),
        data: msg.data.clone(),
        ts: msg.ts,
        priority,
        ttl_s: msg.ttl_s,
    }
}

impl Push {
    /// Enqueues one `JobKind::Push` job per registered device of `user`; returns their ids.
    pub async fn enqueue_for(&self, workers: &Workers, user: &str, event: &PushEvent) -> Result<Vec<String>, String> {
        let regs = self.devices.list(user).await.map_err(|e| e.to_string())?;
        let priority = match event.priority {
            Priority::High => QueuePriority::Urgent,
            Priority::Normal | Priority::Low => QueuePriority::Normal,
        };
        let mut ids = Vec::new();
        for r in regs.into_iter().filter(|r| self.has_provider(r.provider)) {
            let job = PushJob {
                user: user.to_string(),
                client_id: r.client_id.clone(),
                provider: r.provider,
                event: event.clone(),
            };
            let payload = serde_json::to_vec(&job).map_err(|e| e.to_string())?;
            let new =
                NewJob::new(JobKind::Push, endpoint(r.provider, r.address(), &self.labels), payload).priority(priority);
            ids.push(workers.enqueue(new).await.map_err(|e| e.to_string())?);
        }
        Ok(ids)
    }
}

/// Pushes every undelivered message to the user's registered devices, through the queue.
pub struct PushHook {
    push: Arc<Push>,
    workers: Arc<Workers>,
}

impl PushHook {
    pub fn new(push: Arc<Push>, workers: Arc<Workers>) -> Self {
        PushHook { push, workers }
    }
}

#[async_trait]
impl UndeliveredHook for PushHook {
    async fn undelivered(&self, msg: &Undelivered) -> Result<(), String> {
        self.push.enqueue_for(&self.workers, &msg.user_id, &event_of(msg)).await.map(|_| ())
    }
}

/// Registers the push runner with the node's workers and, when a device provider is
/// configured, the hook that turns `message.undelivered` into push jobs.
pub fn install(node: &Arc<crate::node::Node>) {
    node.workers.register(JobKind::Push, Arc::new(PushRunner::new(node.push.clone())));
    if node.push.sends_anything() {
        node.events.on_undelivered(Arc::new(PushHook::new(node.push.clone(), node.workers.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webpush_hosts_past_the_bound_share_one_label() {
        let labels = HostLabels::default();
        let url = |i: usize| format!("https://push{i}.example.net/w/{i}");
        for i in 0..MAX_WEBPUSH_LABELS {
            assert_eq!(endpoint(Provider::Webpush, &url(i), &labels), format!("webpush:push{i}.example.net"));
        }
        // The 65th host, and any later one, is webpush:other; hosts labelled before keep theirs.
        assert_eq!(endpoint(Provider::Webpush, &url(MAX_WEBPUSH_LABELS), &labels), WEBPUSH_OTHER);
        assert_eq!(endpoint(Provider::Webpush, &url(1000), &labels), "webpush:other");
        assert_eq!(
            endpoint(Provider::Webpush, "https://push0.example.net/w/other-device", &labels),
            "webpush:push0.example.net"
        );
        assert_eq!(endpoint(Provider::Webpush, &url(MAX_WEBPUSH_LABELS), &labels), WEBPUSH_OTHER);
        assert_eq!(endpoint(Provider::Fcm, "token", &labels), "fcm");
        assert_eq!(endpoint(Provider::Apns, "ab12", &labels), "apns");
        assert_eq!(endpoint(Provider::Webpush, "not a url", &HostLabels::default()), WEBPUSH_OTHER);
    }
}
