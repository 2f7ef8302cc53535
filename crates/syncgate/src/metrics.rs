//! Prometheus metrics of one node (`syncgate_*`), rendered at GET /metrics.
//!
//! Owns: the registry and every metric handle. Each node has its own registry (no global
//! state), so several nodes in one process (tests) keep separate counts.
//!
//! Must never: take a lock on the delivery hot path (counters are atomics).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The matched route template (`/api/v1/rooms/{room}/events`) or `unmatched`.
    pub route: String,
    /// A standard method name or `other`: static, so a caller's method cannot be a label.
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limiter: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    /// The embedded store's block cache in use and its memtables (engine `lsm`), set at scrape.
    pub store_cache_bytes: Gauge,
    pub store_write_buffer_bytes: Gauge,
    pub connections_total: Counter,
    pub connections_refused: Family<KindLabels, Counter>,
    pub messages_in: Family<KindLabels, Counter>,
    pub messages_out: Counter,
    pub frames_in: Counter,
    pub http_requests: Family<HttpLabels, Counter>,
    pub rate_limited: Family<LimitLabels, Counter>,
    pub slow_consumer_closes: Counter,
    pub heartbeat_timeouts: Counter,
    pub client_errors: Family<KindLabels, Counter>,
    pub replayed: Counter,
    /// Times the heap's free pages were handed back to the kernel after connection churn.
    pub memory_trims: Counter,
    pub trimmed: Counter<u64, AtomicU64>,
    pub queue: std::sync::Arc<crate::queue::metrics::QueueMetrics>,
    /// Requests answered 503 (or let through, by `limits.presence_failure`) because the
    /// broker or presence could not serve, by path.
    pub dependency_failures: Family<KindLabels, Counter>,
    pub push: std::sync::Arc<crate::push::metrics::PushMetrics>,
    /// The embedded store's writer thread (group commits, flush waits).
    pub store: std::sync::Arc<crate::store::embedded::metrics::WriterMetrics>,
}

impl Metrics {
    /// Messages published since start, from every source (the HTTP API and clients).
    pub fn messages_in_total(&self) -> u64 {
        ["api", "client"].iter().map(|k| self.messages_in.get_or_create(&KindLabels { kind: k }).get()).sum()
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("syncgate");
        let m = Metrics {
            connections: Gauge::default(),
            store_cache_bytes: Gauge::default(),
            store_write_buffer_bytes: Gauge::default(),
            connections_total: Counter::default(),
            connections_refused: Family::default(),
            messages_in: Family::default(),
            messages_out: Counter::default(),
            frames_in: Counter::default(),
            http_requests: Family::default(),
            rate_limited: Family::default(),
            slow_consumer_closes: Counter::default(),
            heartbeat_timeouts: Counter::default(),
            client_errors: Family::default(),
            replayed: Counter::default(),
            memory_trims: Counter::default(),
            trimmed: Counter::default(),
            queue: Default::default(),
            dependency_failures: Family::default(),
            push: Default::default(),
            store: Default::default(),
            registry: Registry::default(),
        };
        registry.register("websocket_connections", "Open WebSocket connections", m.connections.clone());
        registry.register(
            "websocket_connections_accepted",
            "WebSocket connections accepted",
            m.connections_total.clone(),
        );
        registry.register(
            "websocket_connections_refused",
            "WebSocket upgrades refused, by reason",
            m.connections_refused.clone(),
        );
        registry.register("messages_in", "Messages published, by source", m.messages_in.clone());
        registry.register("messages_out", "Event frames queued to connections", m.messages_out.clone());
        registry.register("websocket_frames_in", "Frames received from clients", m.frames_in.clone());
        registry.register("http_requests", "HTTP requests by route, method and status", m.http_requests.clone());
        registry.register("rate_limited", "Requests or frames refused by a rate limiter", m.rate_limited.clone());
        registry.register(
            "slow_consumer_closes",
            "Connections closed because their send queue was full (4008)",
            m.slow_consumer_closes.clone(),
        );
        registry.register(
            "heartbeat_timeouts",
            "Connections closed after heartbeat.timeout of silence",
            m.heartbeat_timeouts.clone(),
        );
        registry.register("client_errors", "Error frames sent to clients, by code", m.client_errors.clone());
        registry.register("replayed_messages", "Stored messages replayed to resuming connections", m.replayed.clone());
        registry.register(
            "memory_trims",
            "Times free heap memory was returned to the kernel after connection churn",
            m.memory_trims.clone(),
        );
        registry.register(
            "trimmed_messages",
            "Messages a resuming connection missed because retention removed them",
            m.trimmed.clone(),
        );
        registry.register(
            "store_cache_bytes",
            "Bytes of the embedded store's block cache in use (engine lsm; 0 otherwise)",
            m.store_cache_bytes.clone(),
        );
        registry.register(
            "store_write_buffer_bytes",
            "Bytes of written data the embedded store holds beside its cache: its memtables (engine lsm; 0 otherwise)",
            m.store_write_buffer_bytes.clone(),
        );
        m.queue.register(&mut registry);
        registry.register(
            "dependency_failures",
            "Publishes, disconnects and admission checks the broker or presence could not serve, by path",
            m.dependency_failures.clone(),
        );
        m.push.register(&mut registry);
        m.store.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// Adds a gauge computed at scrape time (e.g. stored messages) under `name`.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Renders the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
