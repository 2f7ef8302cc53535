//! The node: everything one syncgate process runs, wired together, and the publish paths
//! shared by the HTTP API and client sessions.
//!
//! Owns: construction of the hub, store, broker, auth and limiters from the config;
//! message validation (types, names); publishing (store first when persisted, then one
//! protocol-neutral `Event` per stream position to the broker); the tracker of connection
//! tasks; background housekeeping (heartbeat sweep, retention, limiter sweeps).
//!
//! Must never: answer a persisted publish before the store has it, or speak a wire
//! protocol.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::broker::{Broker, Envelope, Target};
use crate::config::Config;
use crate::error::{Code, Error, Result};
use crate::event::{Event, Priority, StreamName};
use crate::hub::Hub;
use crate::limits::Limiters;
use crate::metrics::{KindLabels, Metrics};
use crate::presence::Presence;
use crate::store::{EventId, NewEvent, Retention, Store, StreamKey};
use crate::streams::Streams;

pub struct Node {
    pub cfg: Arc<Config>,
    pub instance_id: String,
    pub hub: Arc<Hub>,
    pub store: Arc<dyn Store>,
    /// The delivery rules over the store (start positions, acks, catch-up reads).
    pub streams: Streams,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn Presence>,
    /// The outbound queue's workers (webhooks, push sends, delayed publishes).
    pub workers: Arc<crate::queue::Workers>,
    /// Webhook events; the hooks below call it.
    pub events: Arc<crate::webhooks::Events>,
    pub push: Arc<crate::push::Push>,
    pub auth: Auth,
    pub limits: Limiters,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    shutting_down: AtomicBool,
    transient: AtomicU64,
}

/// The swappable parts of a node: embedded or Redis.
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn Presence>,
    pub queue: Arc<dyn crate::queue::Queue>,
    pub online: Arc<dyn crate::webhooks::online::OnlineMarks>,
    /// Push registrations (on the same backend) and providers.
    pub push: Arc<crate::push::Push>,
}

/// What to publish.
pub struct Message<'a> {
    pub kind: &'a str,
    /// Raw JSON of `data` (validated by the caller's parser).
    pub data: Bytes,
    pub persist: bool,
    pub ttl: Option<Duration>,
    pub priority: Priority,
    /// The publishing connection (not echoed to it), for client publishes.
    pub except: Option<u64>,
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Node {
    pub fn new(
        cfg: Arc<Config>,
        instance_id: String,
        hub: Arc<Hub>,
        backends: Backends,
        auth: Auth,
        metrics: Arc<Metrics>,
    ) -> Self {
        let limits = Limiters::new(&cfg.rate_limits);
        let Backends { store, broker, presence, queue, online, push } = backends;
        let streams = Streams::new(store.clone(), cfg.limits.max_devices_per_user, metrics.clone());
        let workers = crate::queue::Workers::new(queue, &cfg.queue, metrics.queue.clone());
        let events = Arc::new(crate::webhooks::Events::new(
            &cfg,
            &instance_id,
            workers.clone(),
            presence.clone(),
            online,
            store.clone(),
        ));
        Node {
            cfg,
            instance_id,
            hub,
            store,
            streams,
            broker,
            presence,
            workers,
            events,
            push,
            auth,
            limits,
            metrics,
            started: Instant::now(),
            tasks: TaskTracker::new(),
            shutting_down: AtomicBool::new(false),
            transient: AtomicU64::new(0),
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        !self.is_shutting_down() && self.broker.is_ready()
    }

    pub fn epoch(&self) -> &str {
        self.store.epoch()
    }

    /// Checks a message type against the allowlist and length limit.
    pub fn check_type(&self, kind: &str) -> Result<()> {
        let m = &self.cfg.messages;
        if kind.is_empty() || kind.len() > m.max_type_bytes || kind.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(Error::new(
                Code::InvalidMessageType,
                format!("message type must be 1 to {} bytes without spaces or control characters", m.max_type_bytes),
            ));
        }
        if !m.allowed_types.is_empty() && !m.allowed_types.iter().any(|p| crate::auth::pattern_matches(p, kind)) {
            return Err(Error::new(
                Code::InvalidMessageType,
                format!("message type {kind:?} is not allowed on this server"),
            ));
        }
        Ok(())
    }

    /// Checks a user id, room name or client id (the rule lives in [`crate::names`]).
    pub fn check_name(&self, what: &str, name: &str) -> Result<()> {
        crate::names::check(what, name, self.cfg.limits.max_name_bytes)
    }

    fn transient_id(&self) -> String {
        format!("{}.t{}", self.epoch(), self.transient.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Publishes one message to the user streams of `users`. Returns one id per user.
    pub async fn publish_users(&self, users: &[String], msg: Message<'_>) -> Result<Vec<String>> {
        let ts = now_ms();
        let mut ids = Vec::with_capacity(users.len());
        let event =
            |id: String| Arc::new(Event::new(id, StreamName::User, msg.kind, msg.data.clone(), ts, msg.priority));
        if msg.persist {
            let events = users
                .iter()
                .map(|u| NewEvent {
                    stream: u.clone(),
                    kind: msg.kind.to_string(),
                    data: msg.data.clone(),
                    ts,
                    ttl: msg.ttl,
                })
                .collect();
            let seqs = self.store.append_user(events).await?;
            let mut envs = Vec::with_capacity(users.len());
            for (user, seq) in users.iter().zip(seqs) {
                let id = EventId::format(self.epoch(), StreamKey::User(user), seq);
                let target = Target::User(user.as_str().into());
                envs.push(Envelope::new(target, Some(seq), event(id.clone()), msg.except));
                ids.push(id);
            }
            self.fan_out_many("persisted", envs).await.ok();
            self.events.persisted_to_users(users, &ids, &msg, ts);
        } else {
            // One live-only event for all: the same id, encoded once for every recipient.
            let id = self.transient_id();
            let ev = event(id.clone());
            let envs = users
                .iter()
                .map(|user| Envelope::new(Target::User(user.as_str().into()), None, ev.clone(), msg.except))
                .collect();
            self.fan_out_many("transient", envs).await?;
            ids.resize(users.len(), id);
        }
        Ok(ids)
    }

    /// Publishes to a room (kept in its history when persisted).
    pub async fn publish_room(&self, room: &str, msg: Message<'_>) -> Result<String> {
        let ts = now_ms();
        let (id, seq) = if msg.persist {
            let ev = NewEvent {
                stream: room.to_string(),
                kind: msg.kind.to_string(),
                data: msg.data.clone(),
                ts,
                ttl: msg.ttl,
            };
            let seq = self.store.append_room(ev).await?;
            (EventId::format(self.epoch(), StreamKey::Room(room), seq), Some(seq))
        } else {
            (self.transient_id(), None)
        };
        let name: Arc<str> = room.into();
        let ev = Event::new(id.clone(), StreamName::Room(name.clone()), msg.kind, msg.data, ts, msg.priority);
        let sent = self.fan_out(Envelope::new(Target::Room(name), seq, Arc::new(ev), msg.except)).await;
        if seq.is_none() {
            sent?;
        }
        Ok(id)
    }

    /// Sends a live-only message to every connection.
    pub async fn broadcast(&self, msg: Message<'_>) -> Result<String> {
        let id = self.transient_id();
        let ev = Event::new(id.clone(), StreamName::Broadcast, msg.kind, msg.data, now_ms(), msg.priority);
        self.fan_out(Envelope::new(Target::All, None, Arc::new(ev), None)).await?;
        Ok(id)
    }

    /// Sends a live-only message to every connection whose metadata passes `filter`, on
    /// every node (an empty filter is a plain broadcast).
    pub async fn broadcast_where(&self, msg: Message<'_>, filter: crate::meta::Where) -> Result<String> {
        if filter.is_empty() {
            return self.broadcast(msg).await;
        }
        let id = self.transient_id();
        let ev = Event::new(id.clone(), StreamName::Broadcast, msg.kind, msg.data, now_ms(), msg.priority);
        self.fan_out(Envelope::new(Target::AllWhere(Arc::new(filter)), None, Arc::new(ev), None)).await?;
        Ok(id)
    }

    /// Closes the connections of one device of a user, on every node. Returns the local count.
    pub async fn disconnect_device(&self, user: &str, client_id: &str) -> Result<usize> {
        let target = Target::DisconnectDevice(user.into(), client_id.into());
        self.fan_out(Envelope { target, seq: None, event: None, except: None }).await
    }

    /// Closes one connection of a user: `conn_id` on node `node` (as the connections API
    /// lists them). Returns how many were closed here (0 when it is on another node).
    pub async fn disconnect_conn(&self, user: &str, node: &str, conn_id: u64) -> Result<usize> {
        let target = Target::DisconnectConn(user.into(), node.into(), conn_id);
        self.fan_out(Envelope { target, seq: None, event: None, except: None }).await
    }

    /// Closes every connection of a user, on every node. Returns the local count.
    pub async fn disconnect_user(&self, user: &str) -> Result<usize> {
        self.fan_out(Envelope::disconnect(user.into())).await
    }

    /// Hands an envelope to the broker. An error (503) means the other nodes did not get it;
    /// every such failure is counted by what was published. Callers ignore the error of a
    /// persisted message (answered 202): the store has it, and connected devices read it
    /// from the store when their subscription comes back (`Resubscribed`) or the next
    /// message shows the gap; a 503 would make the caller retry and store it twice.
    async fn fan_out(&self, env: Envelope) -> Result<usize> {
        let kind = match (&env.target, env.seq) {
            (Target::Disconnect(_) | Target::DisconnectDevice(..) | Target::DisconnectConn(..), _) => "disconnect",
            (Target::All | Target::AllWhere(_), _) => "broadcast",
            (_, Some(_)) => "persisted",
            (_, None) => "transient",
        };
        self.broker.publish(env).await.map_err(|e| {
            tracing::warn!(error = %e, kind, "broker publish failed");
            self.metrics.dependency_failures.get_or_create(&KindLabels { kind }).inc();
            e.into()
        })
    }

    /// [`Node::fan_out`] for the envelopes of one batch publish, all of one `kind`.
    async fn fan_out_many(&self, kind: &'static str, envs: Vec<Envelope>) -> Result<usize> {
        self.broker.publish_many(envs).await.map_err(|e| {
            tracing::warn!(error = %e, kind, "broker publish failed");
            self.metrics.dependency_failures.get_or_create(&KindLabels { kind }).inc();
            e.into()
        })
    }

    pub fn count_in(&self, source: &'static str, n: u64) {
        self.metrics.messages_in.get_or_create(&KindLabels { kind: source }).inc_by(n);
    }

    /// Background work until shutdown: heartbeats, token expiry, retention, limiter sweeps.
    pub fn spawn_housekeeping(self: &Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let node = self.clone();
        let sd = shutdown.clone();
        let shutdown_memory = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(node.cfg.heartbeat.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let timeout = node.cfg.heartbeat.timeout;
            loop {
                tokio::select! {
                    _ = sd.cancelled() => break,
                    _ = tick.tick() => {
                        let now = crate::auth::unix_now().saturating_sub(node.cfg.auth.leeway.as_secs());
                        node.hub.sweep(timeout, now);
                        node.limits.sweep();
                    }
                }
            }
        });
        let node = self.clone();
        tokio::spawn(async move {
            let s = &node.cfg.store;
            let r = &node.cfg.rooms;
            let retention = Retention {
                max_age: s.retention,
                max_len: s.max_stream_len,
                room_max_len: r.history_size,
                room_max_age: r.history_ttl,
                cursor_ttl: s.cursor_ttl,
                idempotency_ttl: s.idempotency_ttl,
            };
            let mut tick = tokio::time::interval(s.sweep_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => match node.store.sweep(&retention, now_ms()).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(removed = n, "retention sweep"),
                        Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
                    },
                }
            }
        });
        self.spawn_memory_return(shutdown_memory);
    }

    /// After a burst of connects or disconnects, hands the heap's free pages back to the
    /// kernel. Each upgrade in flight holds its HTTP buffers (several KiB) until its socket
    /// is handed to the connection task, so a reconnect storm leaves the allocator with
    /// megabytes of freed memory in the middle of its heap, which glibc keeps resident.
    /// Checked every `TRIM_EVERY`; trims only when, since the last trim, at least
    /// `TRIM_CHURN` connections were accepted or the open ones fell by as many, so a quiet
    /// node never pays for it.
    fn spawn_memory_return(self: &Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
        const TRIM_CHURN: u64 = 1024;
        let node = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TRIM_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let figures = |n: &Node| (n.metrics.connections_total.get(), n.metrics.connections.get().max(0) as u64);
            let mut last = figures(&node);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        let now = figures(&node);
                        if trim_due(last, now, TRIM_CHURN) {
                            last = now;
                            node.metrics.memory_trims.inc();
                            let _ = tokio::task::spawn_blocking(return_free_memory).await;
                        }
                    }
                }
            }
        });
    }
}

/// Whether connections accepted since `last` plus the fall in open connections since then
/// (each figure a pair: accepted ever, open now) reach `churn`.
fn trim_due(last: (u64, u64), now: (u64, u64), churn: u64) -> bool {
    now.0.saturating_sub(last.0) + last.1.saturating_sub(now.1) >= churn
}

/// Returns the allocator's free pages to the kernel (glibc's `malloc_trim`; elsewhere a
/// no-op).
fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and releases the allocator's own free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod memory_tests {
    use super::*;

    #[test]
    fn a_trim_is_due_after_enough_opens_or_closes() {
        assert!(!trim_due((10, 5), (10, 5), 1024));
        assert!(!trim_due((10, 5), (1033, 1028), 1024), "1,023 opened");
        assert!(trim_due((10, 5), (1034, 1029), 1024), "1,024 opened");
        assert!(trim_due((2000, 1500), (2000, 476), 1024), "1,024 closed");
        assert!(!trim_due((0, 0), (600, 100), 1024));
        assert!(!trim_due((0, 0), (1000, 0), 1024), "opened and closed again: 1,000");
        assert!(trim_due((0, 600), (500, 0), 1024), "500 accepted and the open ones fell by 600");
    }

    fn rss_kib() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4
    }

    /// Freed memory in the middle of the heap stays resident until it is returned; then RSS
    /// falls by most of it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn returning_free_memory_lowers_rss() {
        // 64 MiB in 16 KiB blocks (below glibc's mmap threshold: on the heap), then all but
        // the last freed, which pins the heap's top so free alone cannot shrink it.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 16 * 1024]).collect();
        let last = blocks.pop();
        drop(blocks);
        let before = rss_kib();
        return_free_memory();
        let after = rss_kib();
        drop(last);
        assert!(before.saturating_sub(after) > 32 * 1024, "RSS {before} KiB -> {after} KiB");
    }
}
