//! Redis broker: fan-out between nodes over Redis Pub/Sub (standalone or Redis Cluster).
//!
//! Owns: the channel names, the envelope's wire format (`redis_wire.rs`), the subscriber task
//! (`redis_sub.rs`: subscriptions that follow the hub's local interest, reconnects, health
//! checks) and the pub/sub counters.
//!
//! Must never: deliver its own messages twice (they are delivered locally at publish and
//! dropped when Redis echoes them), subscribe to a user or room without a local connection,
//! block the hub's interest callback, or re-encode a frame.
//!
//! Channels (prefix `sync` by default, as in the in-house version): `sync:user:{id}` (user
//! events and disconnects), `sync:room:{name}`, `sync:broadcast`, and `sync:instance:{id}` (to
//! one node; always subscribed). On Redis Cluster 7+ the broker uses sharded pub/sub
//! (SPUBLISH/SSUBSCRIBE: a message only travels to the shard of its channel); on older clusters
//! classic PUBLISH, which the cluster bus copies to every node.
//!
//! The envelope's wire format (a small header, then the frame bytes untouched) is described
//! and implemented in `redis_wire.rs`.
//!
//! Delivery across an outage: pub/sub keeps nothing, so messages published while this node's
//! subscriber is disconnected do not reach it. Persisted messages are recovered anyway: the
//! next message of the stream (or the device's reconnect) shows the gap and the connection
//! reads the store. Transient messages (typing, presence, broadcasts) published during the
//! outage are lost. `is_ready` is false while the subscriber is down or publishing fails.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisError, Value};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::{Broker, BrokerError, BrokerStats, Envelope, Interest, Local, Target};
use crate::redis_conn::{is_unavailable, Endpoint, RedisConn, RedisMode};
use wire::{decode, encode};

#[path = "redis_wire.rs"]
mod wire;

#[path = "redis_sub.rs"]
mod sub;
use sub::subscriber_loop;

/// Where Redis is and how the broker behaves.
#[derive(Debug, Clone)]
pub struct RedisBrokerOptions {
    /// Same forms as `store::redis::RedisOptions::url` (comma-separated seeds for a cluster).
    pub url: String,
    pub mode: RedisMode,
    /// First part of every channel name.
    pub channel_prefix: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// How often the subscriber connection is pinged (a dead peer is noticed within about
    /// this plus `response_timeout`).
    pub health_interval: Duration,
    /// Longest wait between reconnect attempts (the wait doubles from 100 ms, with jitter).
    pub max_backoff: Duration,
    /// Use sharded pub/sub on a cluster: `None` asks the server (SPUBLISH exists on 7.0+).
    pub sharded: Option<bool>,
}

impl RedisBrokerOptions {
    pub fn new(url: impl Into<String>) -> Self {
        RedisBrokerOptions {
            url: url.into(),
            mode: RedisMode::Auto,
            channel_prefix: "sync".into(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            health_interval: Duration::from_secs(5),
            // Short, so that a node is ready (and delivering) again within about a second of
            // Redis coming back; one connection attempt per second per node costs nothing.
            max_backoff: Duration::from_secs(1),
            sharded: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state.

/// What pub/sub reaches again after a gap: a new subscription (messages published before it
/// was confirmed did not arrive) or a reconnect (nothing arrived while disconnected). Local
/// connections of it should re-read their stream from the store once: a persisted message of
/// the gap is otherwise only noticed when a later one shows the hole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resubscribed {
    User(Arc<str>),
    Room(Arc<str>),
    /// After a reconnect: every local user and room.
    Everything,
}

/// Receives `Resubscribed` notices from the subscriber task; must not block.
pub type ResubscribedHook = Box<dyn Fn(Resubscribed) + Send + Sync>;

/// A user or room whose local interest changed and whose subscription must be reconciled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Topic {
    User(Arc<str>),
    Room(Arc<str>),
}

/// Interest changes reported by the hub, coalesced per topic (so its size is bounded by the
/// number of distinct users and rooms, and a flapping topic costs one reconciliation). Holds no
/// reference to the hub, which holds this (through its sink).
#[derive(Default)]
struct InterestQueue {
    dirty: Mutex<HashSet<Topic>>,
    wake: Notify,
}

impl InterestQueue {
    fn push(&self, change: Interest) {
        let topic = match change {
            Interest::UserOn(u) | Interest::UserOff(u) => Topic::User(u),
            Interest::RoomOn(r) | Interest::RoomOff(r) => Topic::Room(r),
        };
        self.dirty.lock().insert(topic);
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<Topic> {
        self.dirty.lock().drain().collect()
    }
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    received: AtomicU64,
    dropped_own: AtomicU64,
    failed: AtomicU64,
    reconnects: AtomicU64,
}

struct Shared {
    instance_id: Arc<str>,
    hub: Arc<dyn Local>,
    prefix: String,
    sharded: bool,
    counters: Counters,
    sub_ready: AtomicBool,
    publish_ok: AtomicBool,
    queue: Arc<InterestQueue>,
    on_resubscribed: std::sync::OnceLock<ResubscribedHook>,
}

impl Shared {
    fn channel(&self, topic: &Topic) -> String {
        match topic {
            Topic::User(u) => format!("{}:user:{u}", self.prefix),
            Topic::Room(r) => format!("{}:room:{r}", self.prefix),
        }
    }

    fn base_channels(&self) -> [String; 2] {
        [format!("{}:broadcast", self.prefix), format!("{}:instance:{}", self.prefix, self.instance_id)]
    }

    fn target_channel(&self, target: &Target) -> String {
        match target {
            Target::User(u)
            | Target::Disconnect(u)
            | Target::DisconnectDevice(u, _)
            | Target::DisconnectConn(u, ..) => self.channel(&Topic::User(u.clone())),
            Target::Room(r) => self.channel(&Topic::Room(r.clone())),
            Target::All | Target::AllWhere(_) => format!("{}:broadcast", self.prefix),
        }
    }

    fn resubscribed(&self, what: Resubscribed) {
        if let Some(hook) = self.on_resubscribed.get() {
            hook(what);
        }
    }

    /// Whether this node's connections currently need `topic`.
    fn wanted(&self, topic: &Topic) -> bool {
        match topic {
            Topic::User(u) => self.hub.has_user(u),
            Topic::Room(r) => self.hub.has_room(r),
        }
    }

    /// Handles one pub/sub message (runs on the connection's reader: must not block).
    fn on_message(&self, data: Vec<Value>) {
        let payload = match data.into_iter().nth(1) {
            Some(Value::BulkString(b)) => Bytes::from(b),
            _ => return,
        };
        let Some(wire) = decode(payload) else {
            // Someone else publishes on our channels (shared Redis, same prefix?): say it once.
            if self.counters.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!("redis broker: dropped a message that is not a syncgate envelope");
            }
            return;
        };
        if wire.origin.as_ref() == self.instance_id.as_bytes() {
            self.counters.dropped_own.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        self.hub.deliver(&wire.env);
    }
}

/// The cluster broker. Dropping it (or `shutdown`) stops its subscriber task.
pub struct RedisBroker {
    shared: Arc<Shared>,
    publisher: RedisConn,
    op_timeout: Duration,
    cancel: CancellationToken,
}

impl RedisBroker {
    /// Connects with default options; see `connect_with`.
    pub async fn connect(url: &str, instance_id: &str, hub: Arc<dyn Local>) -> Result<Self, BrokerError> {
        Self::connect_with(RedisBrokerOptions::new(url), instance_id, hub).await
    }

    /// Connects the publisher, registers as `hub`'s interest sink, and returns once the
    /// subscriber listens to the broadcast and instance channels and to every user and room
    /// with a local connection. Fails if Redis cannot be reached within the timeouts.
    pub async fn connect_with(
        opts: RedisBrokerOptions,
        instance_id: &str,
        hub: Arc<dyn Local>,
    ) -> Result<Self, BrokerError> {
        let unavailable = |e: RedisError| BrokerError::Unavailable(format!("redis: {e}"));
        if instance_id.is_empty() || instance_id.len() > 255 {
            return Err(BrokerError::Unavailable("the instance id must have 1 to 255 bytes".into()));
        }
        let op_timeout = opts.connect_timeout + opts.response_timeout;
        let setup = async {
            let endpoint = Endpoint::resolve(&opts.url, opts.mode, opts.connect_timeout, opts.response_timeout).await?;
            let mut publisher = endpoint.connect().await?;
            let sharded = match (endpoint.cluster, opts.sharded) {
                (false, _) => false,
                (true, Some(s)) => s,
                (true, None) => {
                    let probe = format!("{}:probe", opts.channel_prefix);
                    redis::cmd("SPUBLISH").arg(probe).arg("").query_async::<i64>(&mut publisher).await.is_ok()
                }
            };
            Ok::<_, RedisError>((endpoint, publisher, sharded))
        };
        let (endpoint, publisher, sharded) = tokio::time::timeout(op_timeout * 2, setup)
            .await
            .map_err(|_| BrokerError::Unavailable("redis did not answer in time".into()))?
            .map_err(unavailable)?;
        let queue = Arc::new(InterestQueue::default());
        let shared = Arc::new(Shared {
            instance_id: instance_id.into(),
            hub: hub.clone(),
            prefix: opts.channel_prefix.clone(),
            sharded,
            counters: Counters::default(),
            sub_ready: AtomicBool::new(false),
            publish_ok: AtomicBool::new(true),
            queue: queue.clone(),
            on_resubscribed: std::sync::OnceLock::new(),
        });
        let q = queue.clone();
        hub.set_interest_sink(Box::new(move |change| q.push(change)));
        let cancel = CancellationToken::new();
        let (first_tx, first_rx) = oneshot::channel();
        let publisher_clone = publisher.clone();
        tokio::spawn(subscriber_loop(shared.clone(), endpoint, opts, publisher_clone, cancel.clone(), first_tx));
        let broker = RedisBroker { shared, publisher, op_timeout, cancel };
        match tokio::time::timeout(op_timeout * 2, first_rx).await {
            Ok(Ok(Ok(()))) => Ok(broker),
            Ok(Ok(Err(e))) => Err(BrokerError::Unavailable(format!("redis subscriber: {e}"))),
            _ => Err(BrokerError::Unavailable("redis subscriber did not start in time".into())),
        }
    }

    /// Whether a cluster's sharded pub/sub is in use.
    pub fn is_sharded(&self) -> bool {
        self.shared.sharded
    }

    /// Sends an envelope to one node only (its `sync:instance:{id}` channel).
    pub async fn publish_to_instance(&self, instance_id: &str, envelope: Envelope) -> Result<(), BrokerError> {
        let channel = format!("{}:instance:{instance_id}", self.shared.prefix);
        self.send(channel, &envelope).await
    }

    /// Sets where `Resubscribed` notices go (the hub, to make local connections re-read their
    /// stream once). Can be set once.
    pub fn on_resubscribed(&self, hook: ResubscribedHook) {
        let _ = self.shared.on_resubscribed.set(hook);
    }

    /// Stops the subscriber task; publishing still works until the broker is dropped.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    async fn send(&self, channel: String, env: &Envelope) -> Result<(), BrokerError> {
        let payload = self.encode(env)?;
        let mut conn = self.publisher.clone();
        let cmd = self.publish_cmd(&channel, &payload);
        let sent = tokio::time::timeout(self.op_timeout, cmd.query_async::<i64>(&mut conn)).await;
        self.sent(sent.map(|r| r.map(|_| 1)))
    }

    fn encode(&self, env: &Envelope) -> Result<Bytes, BrokerError> {
        encode(&self.shared.instance_id, env).ok_or_else(|| {
            self.shared.counters.failed.fetch_add(1, Ordering::Relaxed);
            BrokerError::Unavailable("envelope too large to encode (name over 64 KiB)".into())
        })
    }

    fn publish_cmd(&self, channel: &str, payload: &[u8]) -> redis::Cmd {
        let mut cmd = redis::cmd(if self.shared.sharded { "SPUBLISH" } else { "PUBLISH" });
        cmd.arg(channel).arg(payload);
        cmd
    }

    /// Publishes many (channel, payload) pairs: on a standalone server (or Sentinel master)
    /// in pipelines of `PIPELINE` commands, one round trip each; on a cluster as concurrent
    /// commands, which the cluster connection routes to each channel's node and pipelines on
    /// that node's socket.
    async fn send_many(&self, msgs: Vec<(String, Bytes)>) -> Result<(), BrokerError> {
        const PIPELINE: usize = 1024;
        let total = msgs.len() as u64;
        let conn = self.publisher.clone();
        let work = async {
            match &conn {
                RedisConn::Cluster(_) => {
                    // Futures collected first: a stream over a borrowing closure is not `Send`
                    // enough for `async_trait`.
                    let calls: Vec<_> = msgs
                        .iter()
                        .map(|(channel, payload)| {
                            let (mut conn, cmd) = (conn.clone(), self.publish_cmd(channel, payload));
                            async move { cmd.query_async::<i64>(&mut conn).await }
                        })
                        .collect();
                    futures_util::stream::iter(calls).buffer_unordered(256).try_collect::<Vec<i64>>().await?;
                }
                _ => {
                    for chunk in msgs.chunks(PIPELINE) {
                        let mut pipe = redis::pipe();
                        for (channel, payload) in chunk {
                            pipe.add_command(self.publish_cmd(channel, payload)).ignore();
                        }
                        pipe.query_async::<()>(&mut conn.clone()).await?;
                    }
                }
            }
            Ok::<_, RedisError>(total)
        };
        // The time limit grows with the number of pipelines.
        let limit = self.op_timeout * (1 + msgs.len() / PIPELINE) as u32;
        let sent = tokio::time::timeout(limit, work).await;
        self.sent(sent)
    }

    /// Counts the outcome of a publish of `n` messages and keeps `publish_ok` up to date.
    fn sent(&self, r: Result<Result<u64, RedisError>, tokio::time::error::Elapsed>) -> Result<(), BrokerError> {
        let s = &self.shared;
        match r {
            Ok(Ok(n)) => {
                s.counters.published.fetch_add(n, Ordering::Relaxed);
                if !s.publish_ok.swap(true, Ordering::AcqRel) {
                    tracing::info!("redis broker: publishing works again");
                }
                Ok(())
            }
            failure => {
                s.counters.failed.fetch_add(1, Ordering::Relaxed);
                let msg = match failure {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {:?}", self.op_timeout),
                };
                if s.publish_ok.swap(false, Ordering::AcqRel) {
                    tracing::warn!(error = %msg, "redis broker: publish failed");
                }
                Err(BrokerError::Unavailable(format!("redis publish: {msg}")))
            }
        }
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[async_trait]
impl Broker for RedisBroker {
    /// Delivers locally first, then publishes for the other nodes. A failed publish is an
    /// error (the local deliveries happened, the other nodes got nothing); it is counted in
    /// `failed` and makes the broker not ready until a publish or health check succeeds.
    async fn publish(&self, envelope: Envelope) -> Result<usize, BrokerError> {
        let n = self.shared.hub.deliver(&envelope);
        let channel = self.shared.target_channel(&envelope.target);
        self.send(channel, &envelope).await?;
        Ok(n)
    }

    /// Local deliveries first, then every envelope for the other nodes in pipelines.
    async fn publish_many(&self, envelopes: Vec<Envelope>) -> Result<usize, BrokerError> {
        let (mut n, mut msgs, mut unencodable) = (0, Vec::with_capacity(envelopes.len()), None);
        for env in &envelopes {
            n += self.shared.hub.deliver(env);
            match self.encode(env) {
                Ok(payload) => msgs.push((self.shared.target_channel(&env.target), payload)),
                Err(e) => unencodable = Some(e),
            }
        }
        self.send_many(msgs).await?;
        unencodable.map_or(Ok(n), Err)
    }

    fn stats(&self) -> BrokerStats {
        let c = &self.shared.counters;
        BrokerStats {
            mode: "redis",
            published: c.published.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            dropped_own: c.dropped_own.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
        }
    }

    fn interest(&self, change: Interest) {
        self.shared.queue.push(change);
    }

    fn is_ready(&self) -> bool {
        self.shared.sub_ready.load(Ordering::Acquire) && self.shared.publish_ok.load(Ordering::Acquire)
    }
}

#[cfg(test)]
#[path = "redis_tests.rs"]
mod tests;
