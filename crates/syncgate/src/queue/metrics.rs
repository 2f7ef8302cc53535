//! The outbound queue's metrics (`syncgate_queue_*`), registered in the node's registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriorityLabels {
    pub priority: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

type HistogramFamily = Family<EndpointLabels, Histogram, fn() -> Histogram>;

fn attempt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.002, 2.0, 14))
}

pub struct QueueMetrics {
    pub depth: Family<PriorityLabels, Gauge>,
    pub delayed: Gauge,
    pub in_flight: Gauge,
    pub dead: Gauge,
    pub oldest_age_seconds: Gauge,
    pub started: Family<JobLabels, Counter>,
    pub succeeded: Family<JobLabels, Counter>,
    pub failed: Family<JobLabels, Counter>,
    pub dead_lettered: Family<JobLabels, Counter>,
    pub attempt_seconds: HistogramFamily,
    pub circuit_state: Family<EndpointLabels, Gauge>,
    pub full: Counter,
}

impl Default for QueueMetrics {
    fn default() -> Self {
        QueueMetrics {
            depth: Family::default(),
            delayed: Gauge::default(),
            in_flight: Gauge::default(),
            dead: Gauge::default(),
            oldest_age_seconds: Gauge::default(),
            started: Family::default(),
            succeeded: Family::default(),
            failed: Family::default(),
            dead_lettered: Family::default(),
            attempt_seconds: Family::new_with_constructor(attempt_histogram),
            circuit_state: Family::default(),
            full: Counter::default(),
        }
    }
}

impl QueueMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register("queue_depth", "Outbound jobs due now, by priority", self.depth.clone());
        r.register("queue_delayed", "Outbound jobs due later (delays, retry backoff)", self.delayed.clone());
        r.register("queue_in_flight", "Outbound jobs leased to a worker", self.in_flight.clone());
        r.register("queue_dead", "Jobs in the dead-letter queue", self.dead.clone());
        r.register(
            "queue_oldest_job_age_seconds",
            "Age of the oldest live outbound job",
            self.oldest_age_seconds.clone(),
        );
        r.register("queue_jobs_started", "Job attempts started, by kind", self.started.clone());
        r.register("queue_jobs_succeeded", "Job attempts that succeeded, by kind", self.succeeded.clone());
        r.register("queue_jobs_failed", "Job attempts that failed, by kind", self.failed.clone());
        r.register("queue_jobs_dead", "Jobs moved to the dead-letter queue, by kind", self.dead_lettered.clone());
        r.register("queue_attempt_seconds", "Duration of job attempts, by endpoint", self.attempt_seconds.clone());
        r.register(
            "queue_circuit_state",
            "Circuit of each endpoint on this node: 0 closed, 1 half-open, 2 open",
            self.circuit_state.clone(),
        );
        r.register("queue_full", "Enqueues refused because queue.max_jobs jobs were live", self.full.clone());
    }
}
