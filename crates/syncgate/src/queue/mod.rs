//! The outbound queue: durable jobs that call out of the gateway (webhooks, push sends,
//! delayed publishes), run at least once, in priority order, with retries.
//!
//! Owns: the job model (`NewJob`, `Job`, `Priority`, `JobKind`), the `Queue` trait with its
//! two implementations (`embedded`: redb on local disk for one node; `redis`: sorted sets
//! and leases for a cluster), and the workers (`worker`) that claim due jobs, hand each to
//! the `Runner` registered for its kind, and apply the outcome: done, retry with backoff
//! (`backoff`), or dead letter. Circuit breakers per endpoint are in `breaker`.
//!
//! Must never: lose an accepted job (a job leaves the queue only when its runner said
//! `Done`, or to the dead-letter queue), hold more than `queue.max_jobs` live jobs, run more
//! than `queue.concurrency` attempts at once on a node, or know what a job means: the
//! payload is opaque bytes for the runner of its kind.
//!
//! Delivery is at least once: a job whose lease ran out (its node died mid-attempt) is
//! claimed again, with the same id, so receivers dedupe by id.

pub mod backoff;
pub mod breaker;
pub mod embedded;
pub mod metrics;
pub mod redis;
mod redis_scripts;
pub mod worker;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use worker::Workers;

/// Order of service: every due express job runs before any due urgent one, and so on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// connect / disconnect webhooks and high-priority work that must not wait.
    Express,
    /// Publishes with `"priority":"high"`.
    Urgent,
    /// Everything else.
    Normal,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Express, Priority::Urgent, Priority::Normal];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Express => "express",
            Priority::Urgent => "urgent",
            Priority::Normal => "normal",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The queue priority of a publish's `"priority"` (`high` -> urgent, `normal` and `low`
    /// -> normal); `None` for a value the contract does not know.
    pub fn of_publish(priority: &str) -> Option<Priority> {
        match priority {
            "high" => Some(Priority::Urgent),
            "normal" | "low" => Some(Priority::Normal),
            _ => None,
        }
    }

    /// 0 for express, 1 urgent, 2 normal: the index used in storage keys.
    pub fn rank(self) -> u8 {
        self as u8
    }

    pub fn from_rank(rank: u8) -> Option<Priority> {
        Priority::ALL.get(rank as usize).copied()
    }
}

/// What a job is; each kind has one `Runner`, registered with `Workers::register`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// A signed POST to a webhook endpoint (`crate::webhooks`).
    Webhook,
    /// A push notification send (the push module's runner).
    Push,
    /// A delayed publish (`delay_s` / `deliver_at`).
    Publish,
    /// A check, `push.delay` after a persisted user message, whether a device acked it;
    /// if not, `message.undelivered` goes out (`crate::webhooks`).
    Undelivered,
}

impl JobKind {
    pub const ALL: [JobKind; 4] = [JobKind::Webhook, JobKind::Push, JobKind::Publish, JobKind::Undelivered];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Webhook => "webhook",
            JobKind::Push => "push",
            JobKind::Publish => "publish",
            JobKind::Undelivered => "undelivered",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: JobKind,
    /// Who the job talks to (a webhook endpoint's name, a push provider, `publish`): the
    /// circuit breaker and the per-endpoint metrics are keyed by it.
    pub endpoint: String,
    pub priority: Priority,
    /// Raw JSON for the runner; the queue never looks inside.
    pub payload: Bytes,
    /// Not run before this unix time in ms (a delay); `None` = now.
    pub not_before_ms: Option<i64>,
}

impl NewJob {
    /// A job due now at normal priority.
    pub fn new(kind: JobKind, endpoint: impl Into<String>, payload: impl Into<Bytes>) -> NewJob {
        NewJob {
            kind,
            endpoint: endpoint.into(),
            priority: Priority::Normal,
            payload: payload.into(),
            not_before_ms: None,
        }
    }

    pub fn priority(mut self, p: Priority) -> NewJob {
        self.priority = p;
        self
    }

    pub fn not_before(mut self, unix_ms: i64) -> NewJob {
        self.not_before_ms = Some(unix_ms);
        self
    }

    /// The job as stored when it is enqueued at `now` (unix ms): a new id, no attempts yet.
    pub fn into_job(self, now: i64) -> Job {
        Job {
            id: new_job_id(),
            kind: self.kind,
            endpoint: self.endpoint,
            priority: self.priority,
            payload: self.payload,
            attempts: 0,
            created_at: now,
            due_at: self.not_before_ms.unwrap_or(now),
            last_error: None,
        }
    }
}

/// A job as stored and as a runner sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Stable for the job's whole life (retries, lease take-overs, dead letter and back):
    /// webhooks send it as `webhook-id` so receivers dedupe.
    pub id: String,
    pub kind: JobKind,
    pub endpoint: String,
    pub priority: Priority,
    #[serde(with = "payload_json")]
    pub payload: Bytes,
    /// Attempts started so far, this one included (1 on the first run).
    pub attempts: u32,
    /// Unix ms when it was enqueued.
    pub created_at: i64,
    /// Unix ms when it is (or was) due.
    pub due_at: i64,
    pub last_error: Option<String>,
}

/// A dead letter: a job that failed for good, with when and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadJob {
    pub job: Job,
    pub failed_at: i64,
}

/// What a runner says about one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done,
    /// A transient failure: try again after `after` (when the other side said, e.g.
    /// Retry-After), else after the queue's backoff. Counts toward the endpoint's breaker.
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// Will never succeed (4xx other than 408/429, a malformed payload): dead letter now.
    Permanent {
        error: String,
    },
}

/// Runs the jobs of one kind.
#[async_trait]
pub trait Runner: Send + Sync {
    async fn run(&self, job: &Job) -> Outcome;
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// `queue.max_jobs` live jobs: answered 503 to a caller.
    #[error("the outbound queue is full ({max} jobs)")]
    Full { max: u64 },
    /// A dead-letter cursor that no page handed out.
    #[error("malformed cursor")]
    BadCursor,
    #[error("outbound queue unavailable: {0}")]
    Unavailable(String),
    #[error("outbound queue error: {0}")]
    Internal(String),
}

pub type QueueResult<T> = Result<T, QueueError>;

/// Counts for the queue API and metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueStats {
    /// Jobs due now (or overdue), per priority.
    pub ready: PerPriority,
    /// Jobs due later (delays and retries waiting for their backoff).
    pub delayed: u64,
    /// Jobs claimed by a worker whose lease has not run out.
    pub in_flight: u64,
    pub dead: u64,
    /// Age in ms of the oldest live job (by `created_at`), 0 when there is none.
    pub oldest_age_ms: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PerPriority {
    pub express: u64,
    pub urgent: u64,
    pub normal: u64,
}

impl PerPriority {
    pub fn get_mut(&mut self, p: Priority) -> &mut u64 {
        match p {
            Priority::Express => &mut self.express,
            Priority::Urgent => &mut self.urgent,
            Priority::Normal => &mut self.normal,
        }
    }

    pub fn get(&self, p: Priority) -> u64 {
        match p {
            Priority::Express => self.express,
            Priority::Urgent => self.urgent,
            Priority::Normal => self.normal,
        }
    }

    pub fn total(&self) -> u64 {
        self.express + self.urgent + self.normal
    }
}

/// Which dead letters `retry_dead_all` takes.
#[derive(Debug, Clone, Default)]
pub struct DeadFilter {
    pub kind: Option<JobKind>,
    pub endpoint: Option<String>,
}

impl DeadFilter {
    pub fn matches(&self, job: &Job) -> bool {
        self.kind.is_none_or(|k| k == job.kind) && self.endpoint.as_deref().is_none_or(|e| e == job.endpoint)
    }
}

/// A page of dead letters, newest failure first.
#[derive(Debug, Clone, Default)]
pub struct DeadPage {
    pub jobs: Vec<DeadJob>,
    pub next_cursor: Option<String>,
}

/// The durable queue. Every method is one atomic step of the store behind it.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Stores a job; it is claimable from `not_before_ms` (or now). Returns its id.
    /// `QueueError::Full` when `queue.max_jobs` live jobs are stored.
    async fn enqueue(&self, job: NewJob) -> QueueResult<String>;

    /// Takes up to `max` due jobs, highest priority first and oldest due first within a
    /// priority, and leases them to the caller until `now + lease`; a job whose lease ran
    /// out is due again. Each claim counts one attempt.
    async fn claim(&self, max: usize, lease: Duration) -> QueueResult<Vec<Job>>;

    /// The attempt succeeded: the job is gone.
    async fn complete(&self, job: &Job) -> QueueResult<()>;

    /// The job is due again at `at_ms` with `error` recorded. `refund` gives back the
    /// attempt the claim counted (the job was not tried, e.g. its circuit is open).
    async fn reschedule(&self, job: &Job, at_ms: i64, error: Option<&str>, refund: bool) -> QueueResult<()>;

    /// The job failed for good: it moves to the dead-letter queue.
    async fn bury(&self, job: &Job, error: &str) -> QueueResult<()>;

    async fn stats(&self) -> QueueResult<QueueStats>;

    /// Dead letters, newest failure first, `limit` per page from `cursor`.
    async fn dead(&self, limit: usize, cursor: Option<&str>) -> QueueResult<DeadPage>;

    /// Queues a dead letter again, due now with fresh attempts; false when there is none
    /// with that id. `QueueError::Full` at `queue.max_jobs` live jobs, and then the dead
    /// letter is kept as it was.
    async fn retry_dead(&self, id: &str) -> QueueResult<bool>;

    /// Queues the dead letters that match again, oldest failure first, as many as
    /// `queue.max_jobs` leaves room for; the rest stay dead letters. Returns how many were
    /// queued; `QueueError::Full` (nothing changed) when some match and none fits.
    async fn retry_dead_all(&self, filter: &DeadFilter) -> QueueResult<u64>;

    /// Deletes a dead letter; false when there is none with that id.
    async fn delete_dead(&self, id: &str) -> QueueResult<bool>;

    /// Makes everything durable and lets go of local resources (the embedded file).
    async fn close(&self) -> QueueResult<()> {
        Ok(())
    }
}

/// A new job id: `job_` and a UUIDv7 in hex, unique without coordination (so two nodes
/// never collide) and ordered by creation time, so jobs due in the same millisecond run
/// in the order they were enqueued.
pub fn new_job_id() -> String {
    format!("job_{}", uuid::Uuid::now_v7().simple())
}

/// Now as unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Payloads are JSON; stored (and shown in the dead-letter API) as JSON values, not as
/// byte arrays. A payload that is not valid JSON is kept as a JSON string.
mod payload_json {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_slice::<&serde_json::value::RawValue>(b) {
            Ok(raw) => raw.serialize(s),
            Err(_) => String::from_utf8_lossy(b).serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        Ok(Bytes::from(raw.get().to_owned()))
    }
}
