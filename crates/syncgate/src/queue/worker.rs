//! Workers: claim due jobs, run each through the `Runner` of its kind (at most
//! `queue.concurrency` at once on this node), and apply the outcome.
//!
//! Owns: the runner registry (`Workers::register`), the claim loop, retries (backoff,
//! `Retry-After`), dead-lettering after `queue.max_attempts` or a permanent error, the
//! circuit breakers, and the queue metrics. Must never: run a job without a lease, count a
//! job held back by an open circuit as an attempt, or wait past the grace time at shutdown
//! (a job cut short is leased, and is run again when its lease is over).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::breaker::{Admit, Breakers};
use super::metrics::{EndpointLabels, JobLabels, PriorityLabels, QueueMetrics};
use super::{now_ms, Job, JobKind, NewJob, Outcome, Priority, Queue, QueueError, QueueResult, QueueStats, Runner};
use crate::config::QueueConfig;

/// How long a job of a kind nobody registered a runner for waits before it is looked at
/// again (a node of another version or configuration may run it meanwhile).
const NO_RUNNER_WAIT: Duration = Duration::from_secs(30);
/// Queue gauges are refreshed this often.
const STATS_EVERY: Duration = Duration::from_secs(2);

pub struct Workers {
    queue: Arc<dyn Queue>,
    runners: RwLock<HashMap<JobKind, Arc<dyn Runner>>>,
    pub breakers: Breakers,
    cfg: QueueConfig,
    backoff: Backoff,
    wake: Notify,
    slots: Arc<Semaphore>,
    metrics: Arc<QueueMetrics>,
}

impl Workers {
    pub fn new(queue: Arc<dyn Queue>, cfg: &QueueConfig, metrics: Arc<QueueMetrics>) -> Arc<Workers> {
        Arc::new(Workers {
            queue,
            runners: RwLock::new(HashMap::new()),
            breakers: Breakers::new(cfg.breaker_failures, cfg.breaker_cooldown),
            cfg: cfg.clone(),
            backoff: Backoff { min: cfg.backoff_min, max: cfg.backoff_max },
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            metrics,
        })
    }

    /// Sets the runner of a kind (replacing any earlier one). Jobs of a kind without a
    /// runner stay queued.
    pub fn register(&self, kind: JobKind, runner: Arc<dyn Runner>) {
        self.runners.write().insert(kind, runner);
        self.wake.notify_one();
    }

    /// Enqueues a job and wakes a worker when it is due now.
    pub async fn enqueue(&self, job: NewJob) -> QueueResult<String> {
        let due_now = job.not_before_ms.is_none_or(|t| t <= now_ms());
        match self.queue.enqueue(job).await {
            Ok(id) => {
                if due_now {
                    self.wake.notify_one();
                }
                Ok(id)
            }
            Err(e) => {
                if matches!(e, QueueError::Full { .. }) {
                    self.metrics.full.inc();
                }
                Err(e)
            }
        }
    }

    /// Wakes an idle worker (jobs became due, e.g. dead letters retried).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
    }

    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    /// Starts the claim loop and the gauge refresher. On `stop`, claiming ends and the
    /// attempts in flight get up to `grace` to finish.
    pub fn spawn(self: &Arc<Self>, stop: CancellationToken, grace: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let st = stop.clone();
        tokio::spawn(async move { me.refresh_gauges(st).await });
        let me = self.clone();
        tokio::spawn(async move {
            me.claim_loop(stop).await;
            let all = me.cfg.concurrency.max(1) as u32;
            if tokio::time::timeout(grace, me.slots.acquire_many(all)).await.is_err() {
                tracing::warn!("outbound attempts still running at shutdown; their jobs are retried after the lease");
            }
        })
    }

    async fn claim_loop(self: &Arc<Self>, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                p = self.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            };
            let free = self.slots.available_permits() + 1;
            let jobs = match self.queue.claim(free, self.cfg.lease).await {
                Ok(jobs) => {
                    failures = 0;
                    jobs
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_multiple_of(50) {
                        tracing::warn!(error = %e, "outbound queue claim failed");
                    }
                    Vec::new()
                }
            };
            if jobs.is_empty() {
                drop(first);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                }
                continue;
            }
            let mut permit = Some(first);
            for job in jobs {
                let p = match permit.take() {
                    Some(p) => p,
                    // The claim asked for as many jobs as there were free slots.
                    None => match self.slots.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                let me = self.clone();
                tokio::spawn(async move {
                    me.attempt(job).await;
                    drop(p);
                });
            }
        }
    }

    /// One attempt of one leased job, and what follows from its outcome.
    async fn attempt(&self, job: Job) {
        let runner = self.runners.read().get(&job.kind).cloned();
        let Some(runner) = runner else {
            let at = now_ms() + NO_RUNNER_WAIT.as_millis() as i64;
            self.store_step(self.queue.reschedule(&job, at, Some("no runner for this kind on the node"), true).await);
            return;
        };
        if let Admit::No { until_ms } = self.breakers.admit(&job.endpoint, now_ms()) {
            self.store_step(self.queue.reschedule(&job, until_ms, job.last_error.as_deref(), true).await);
            return;
        }
        let kind = JobLabels { kind: job.kind.as_str() };
        self.metrics.started.get_or_create(&kind).inc();
        let t0 = Instant::now();
        let outcome = runner.run(&job).await;
        let ep = EndpointLabels { endpoint: job.endpoint.clone() };
        self.metrics.attempt_seconds.get_or_create(&ep).observe(t0.elapsed().as_secs_f64());
        match outcome {
            Outcome::Done => {
                self.breakers.success(&job.endpoint);
                self.metrics.succeeded.get_or_create(&kind).inc();
                self.store_step(self.queue.complete(&job).await);
            }
            Outcome::Retry { error, after } => {
                self.breakers.failure(&job.endpoint, now_ms());
                self.metrics.failed.get_or_create(&kind).inc();
                if job.attempts >= self.cfg.max_attempts {
                    tracing::warn!(job = %job.id, endpoint = %job.endpoint, attempts = job.attempts, %error, "job dead-lettered after its last attempt");
                    self.metrics.dead_lettered.get_or_create(&kind).inc();
                    self.store_step(self.queue.bury(&job, &error).await);
                } else {
                    let wait = after.unwrap_or_else(|| self.backoff.delay(job.attempts)).min(self.cfg.backoff_max);
                    let at = now_ms() + wait.as_millis() as i64;
                    tracing::debug!(job = %job.id, endpoint = %job.endpoint, attempts = job.attempts, %error, ?wait, "job retried later");
                    self.store_step(self.queue.reschedule(&job, at, Some(&error), false).await);
                }
            }
            Outcome::Permanent { error } => {
                // The endpoint answered: it is up, whatever it thought of this job.
                self.breakers.success(&job.endpoint);
                self.metrics.failed.get_or_create(&kind).inc();
                self.metrics.dead_lettered.get_or_create(&kind).inc();
                tracing::warn!(job = %job.id, endpoint = %job.endpoint, %error, "job failed permanently; dead-lettered");
                self.store_step(self.queue.bury(&job, &error).await);
            }
        }
    }

    /// A queue step after an attempt. If it fails, the job stays leased and is run again
    /// when its lease is over (at least once).
    fn store_step(&self, r: QueueResult<()>) {
        if let Err(e) = r {
            tracing::warn!(error = %e, "outbound queue update failed; the job runs again after its lease");
        }
    }

    async fn refresh_gauges(&self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(STATS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Ok(s) = self.queue.stats().await {
                self.set_gauges(&s);
            }
            // Circuits that closed are gone from the snapshot (and so from the metric).
            self.metrics.circuit_state.clear();
            for (endpoint, state, _) in self.breakers.snapshot(now_ms()) {
                self.metrics.circuit_state.get_or_create(&EndpointLabels { endpoint }).set(state.gauge());
            }
        }
    }

    pub fn set_gauges(&self, s: &QueueStats) {
        for p in Priority::ALL {
            self.metrics.depth.get_or_create(&PriorityLabels { priority: p.as_str() }).set(s.ready.get(p) as i64);
        }
        self.metrics.delayed.set(s.delayed as i64);
        self.metrics.in_flight.set(s.in_flight as i64);
        self.metrics.dead.set(s.dead as i64);
        self.metrics.oldest_age_seconds.set(s.oldest_age_ms / 1000);
    }
}
