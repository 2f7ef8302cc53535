//! The node: everything one syncgate process runs, wired together, and the publish paths
//! shared by the HTTP API and client sessions.
//!
//! Owns: construction of the hub, store, broker, auth and limiters from the config;
//! message validation (types, names); publishing (store first when persisted, then the
//! broker); catch-up reads for connections; background housekeeping (heartbeat sweep,
//! retention, limiter sweeps).
//!
//! Must never: answer a persisted publish before the store has it, or speak a wire
//! protocol (frames come from `protocol`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::HashSet;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::auth::Auth;
use crate::broker::{Broker, Envelope, Target};
use crate::config::Config;
use crate::error::{Code, Error, Result};
use crate::hub::{Conn, Hub, StreamRef};
use crate::limits::Limiters;
use crate::metrics::{KindLabels, Metrics};
use crate::presence::Presence;
use crate::protocol;
use crate::store::{EventId, NewEvent, Page, Retention, Store, StreamKey};
use crate::transport::codec;

pub struct Node {
    pub cfg: Arc<Config>,
    pub instance_id: String,
    pub hub: Arc<Hub>,
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn Presence>,
    pub auth: Auth,
    pub limits: Limiters,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    shutting_down: AtomicBool,
    transient: AtomicU64,
    inflight: Mutex<HashSet<String>>,
}

/// Holds an Idempotency-Key while its request runs; released on drop.
pub struct InflightGuard<'a> {
    node: &'a Node,
    key: String,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.node.inflight.lock().remove(&self.key);
    }
}

/// The swappable parts of a node: embedded or Redis.
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn Presence>,
}

/// What to publish.
pub struct Message<'a> {
    pub kind: &'a str,
    /// Raw JSON of `data` (validated by the caller's parser).
    pub data: Bytes,
    pub persist: bool,
    pub ttl: Option<Duration>,
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
        let Backends { store, broker, presence } = backends;
        Node {
            cfg,
            instance_id,
            hub,
            store,
            broker,
            presence,
            auth,
            limits,
            metrics,
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            transient: AtomicU64::new(0),
            inflight: Mutex::new(HashSet::new()),
        }
    }

    /// Marks an idempotency key as in flight; None if it already is.
    pub fn idempotency_inflight(&self, key: &str) -> Option<InflightGuard<'_>> {
        self.inflight.lock().insert(key.to_string()).then(|| InflightGuard { node: self, key: key.to_string() })
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

    /// Checks a user id, room name or client id.
    pub fn check_name(&self, what: &str, name: &str) -> Result<()> {
        let max = self.cfg.limits.max_name_bytes;
        if name.is_empty() || name.len() > max || name.chars().any(char::is_control) {
            return Err(Error::invalid(format!("{what} must be 1 to {max} bytes without control characters")));
        }
        Ok(())
    }

    fn transient_id(&self) -> String {
        format!("{}.t{}", self.epoch(), self.transient.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Publishes one message to the user streams of `users`. Returns one id per user.
    pub async fn publish_users(&self, users: &[String], msg: Message<'_>) -> Result<Vec<String>> {
        let ts = now_ms();
        let mut ids = Vec::with_capacity(users.len());
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
            for (user, seq) in users.iter().zip(seqs) {
                let id = EventId::format(self.epoch(), StreamKey::User(user), seq);
                let frame = protocol::event(&id, "user", msg.kind, &msg.data, ts);
                self.fan_out(Envelope {
                    target: Target::User(user.as_str().into()),
                    seq: Some(seq),
                    frame,
                    except: msg.except,
                })
                .await;
                ids.push(id);
            }
        } else {
            let id = self.transient_id();
            let frame = protocol::event(&id, "user", msg.kind, &msg.data, ts);
            for user in users {
                self.fan_out(Envelope {
                    target: Target::User(user.as_str().into()),
                    seq: None,
                    frame: frame.clone(),
                    except: msg.except,
                })
                .await;
                ids.push(id.clone());
            }
        }
        Ok(ids)
    }

    /// Publishes to a room (kept in its history when persisted).
    pub async fn publish_room(&self, room: &str, msg: Message<'_>) -> Result<String> {
        let ts = now_ms();
        let stream = format!("room:{room}");
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
        let frame = protocol::event(&id, &stream, msg.kind, &msg.data, ts);
        self.fan_out(Envelope { target: Target::Room(room.into()), seq, frame, except: msg.except }).await;
        Ok(id)
    }

    /// Sends a live-only message to every connection.
    pub async fn broadcast(&self, msg: Message<'_>) -> Result<String> {
        let id = self.transient_id();
        let frame = protocol::event(&id, "broadcast", msg.kind, &msg.data, now_ms());
        self.fan_out(Envelope { target: Target::All, seq: None, frame, except: None }).await;
        Ok(id)
    }

    /// Sends a live-only message to every connection whose metadata passes `filter`, on
    /// every node (an empty filter is a plain broadcast).
    pub async fn broadcast_where(&self, msg: Message<'_>, filter: crate::hub::meta::Where) -> Result<String> {
        if filter.is_empty() {
            return self.broadcast(msg).await;
        }
        let id = self.transient_id();
        let frame = protocol::event(&id, "broadcast", msg.kind, &msg.data, now_ms());
        let target = Target::AllWhere(Arc::new(filter));
        self.fan_out(Envelope { target, seq: None, frame, except: None }).await;
        Ok(id)
    }

    /// Closes every connection of a user, on every node. Returns the local count.
    pub async fn disconnect_user(&self, user: &str) -> usize {
        self.fan_out(Envelope { target: Target::Disconnect(user.into()), seq: None, frame: Bytes::new(), except: None })
            .await
    }

    /// Closes the connections of one device of a user, on every node. Returns the local count.
    pub async fn disconnect_device(&self, user: &str, client_id: &str) -> usize {
        let frame = Bytes::copy_from_slice(client_id.as_bytes());
        self.fan_out(Envelope { target: Target::Disconnect(user.into()), seq: None, frame, except: None }).await
    }

    async fn fan_out(&self, env: Envelope) -> usize {
        match self.broker.publish(env).await {
            Ok(n) => n,
            Err(e) => {
                // Persisted messages are already stored: devices get them on catch-up.
                tracing::warn!(error = %e, "broker publish failed");
                0
            }
        }
    }

    pub fn count_in(&self, source: &'static str, n: u64) {
        self.metrics.messages_in.get_or_create(&KindLabels { kind: source }).inc_by(n);
    }

    /// Reads the missing part of a connection's stream from the store and queues it.
    /// Returns false if the store failed (the caller retries later).
    pub async fn fill(&self, conn: &Conn, stream: StreamRef, after: u64, room_in_queue: usize) -> bool {
        let limit = room_in_queue.clamp(1, 500);
        let (page, label, key) = match &stream {
            StreamRef::User => {
                (self.store.read_user(&conn.user, after, limit).await, "user".to_string(), StreamKey::User(&conn.user))
            }
            StreamRef::Room(r) => {
                (self.store.read_room(r, after, limit).await, format!("room:{r}"), StreamKey::Room(r))
            }
        };
        let page: Page = match page {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, conn = conn.id, "catch-up read failed");
                return false;
            }
        };
        let complete = page.events.len() < limit;
        let epoch = self.epoch();
        let frames: Vec<(u64, Bytes)> = page
            .events
            .iter()
            .map(|e| (e.seq, protocol::event(&EventId::format(epoch, key, e.seq), &label, &e.kind, &e.data, e.ts)))
            .collect();
        let n = frames.len() as u64;
        let trimmed = conn.apply_fill(&stream, after, (page.first, page.head), frames, complete);
        self.metrics.replayed.inc_by(n);
        if trimmed > 0 {
            self.metrics.trimmed.inc_by(trimmed);
        }
        true
    }

    /// Background work until shutdown: heartbeats, token expiry, retention, limiter sweeps.
    pub fn spawn_housekeeping(self: &Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let node = self.clone();
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let ping = codec::ping_frame();
            let mut tick = tokio::time::interval(node.cfg.heartbeat.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let timeout = node.cfg.heartbeat.timeout;
            loop {
                tokio::select! {
                    _ = sd.cancelled() => break,
                    _ = tick.tick() => {
                        let now = crate::auth::unix_now().saturating_sub(node.cfg.auth.leeway.as_secs());
                        node.hub.sweep(&ping, timeout, now);
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
    }
}
