//! Metrics of the embedded store's writer thread: how long its group commits take, how many
//! requests they carry, and how long the `lsm` writer waited for fjall's flushes. Updated by
//! the writer thread alone; read at each scrape of `/metrics`.
//!
//! Owns: the metric handles (registered in the node's registry by `register`).
//! Must never: be updated anywhere but the writer thread, or take more than one uncontended
//! lock per group commit (the histogram's).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurableLabels {
    /// `true` for a commit made durable before it returned (every commit with `store.fsync:
    /// always`; at most one a second with `never`), `false` otherwise.
    pub durable: &'static str,
}

fn commit_buckets() -> Histogram {
    // 50 us to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The writer thread's figures.
pub struct WriterMetrics {
    pub commit_seconds: Family<DurableLabels, Histogram, fn() -> Histogram>,
    pub commit_requests: Counter,
    pub flush_wait_seconds: Counter<f64, AtomicU64>,
}

impl Default for WriterMetrics {
    fn default() -> Self {
        WriterMetrics {
            commit_seconds: Family::new_with_constructor(commit_buckets),
            commit_requests: Counter::default(),
            flush_wait_seconds: Counter::default(),
        }
    }
}

impl WriterMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "store_commit_seconds",
            "Time of the embedded store's group commits (their writes, and their sync when durable)",
            self.commit_seconds.clone(),
        );
        registry.register(
            "store_commit_requests",
            "Requests (appends, cursor writes, idempotency records, sweep steps) carried by the embedded store's group commits",
            self.commit_requests.clone(),
        );
        registry.register(
            "store_flush_wait_seconds",
            "Time the embedded store's writer waited for the lsm engine's flushes before a group commit",
            self.flush_wait_seconds.clone(),
        );
    }

    pub(super) fn committed(&self, requests: usize, durable: bool, took: Duration) {
        let durable = if durable { "true" } else { "false" };
        self.commit_seconds.get_or_create(&DurableLabels { durable }).observe(took.as_secs_f64());
        self.commit_requests.inc_by(requests as u64);
    }

    pub(super) fn waited(&self, took: Duration) {
        if !took.is_zero() {
            self.flush_wait_seconds.inc_by(took.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::embedded::{EmbeddedOptions, EmbeddedStore, FsyncPolicy};
    use crate::store::{NewEvent, Store};

    fn figure(text: &str, name: &str) -> f64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line[name.len()..].trim().parse().unwrap()
    }

    #[tokio::test]
    async fn group_commits_are_counted_and_timed_by_durability() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(WriterMetrics::default());
        let opts = EmbeddedOptions { fsync: FsyncPolicy::Always, ..EmbeddedOptions::new(dir.path()) };
        let s = EmbeddedStore::open_with_metrics(opts, m.clone()).unwrap();
        for i in 0..5 {
            let ev = NewEvent { stream: format!("u{i}"), kind: "k".into(), data: "1".into(), ts: 1, ttl: None };
            s.append_user(vec![ev]).await.unwrap();
        }
        s.set_cursor("u1", "c1", 1, 10).await.unwrap();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        // One after the other: six requests, each its own durable commit, each taking time
        // (an fsync); nothing non-durable, no wait for flushes.
        assert_eq!(figure(&text, "store_commit_requests_total "), 6.0, "{text}");
        assert_eq!(figure(&text, "store_commit_seconds_count{durable=\"true\"} "), 6.0, "{text}");
        assert!(figure(&text, "store_commit_seconds_sum{durable=\"true\"} ") > 0.0, "{text}");
        assert!(!text.contains("durable=\"false\""), "{text}");
        assert_eq!(figure(&text, "store_flush_wait_seconds_total "), 0.0, "{text}");
        s.close().await.unwrap();
    }
}
