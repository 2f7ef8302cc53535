//! Redis store: user streams, room history, cursors and idempotency keys on Redis, standalone
//! or Redis Cluster, so that every node of a deployment serves any user.
//!
//! Owns: the key layout below, the Lua scripts that keep each stream's numbering atomic
//! (`redis_scripts.rs`, with the decoding of their answers), the retention indexes and their
//! sweep (`redis_sweep.rs`, with the `stats` figures), idempotency claims and records
//! (`redis_idem.rs`). The connection to Redis is
//! `crate::redis_conn` (shared with `broker::redis` and `presence::redis`).
//!
//! Must never: answer an append before Redis acknowledged it, number two events of a stream
//! with the same seq or leave a hole in the numbering, touch keys of two streams in one script
//! on a cluster (they may live on different nodes), scan the whole keyspace, or wait on Redis without
//! a time limit (a call that does not finish within `op_timeout` is `Unavailable`).
//!
//! Same guarantees as the embedded store (see `store::Store`), with these differences:
//!
//! - Durability is Redis's: `appendonly yes` with `appendfsync always` loses nothing that was
//!   answered, `everysec` risks one second. Replication is asynchronous: unless
//!   `wait_replicas` is set (then every append ends with `WAIT`), a failover to a replica can
//!   lose the last answered writes.
//! - Redis must run with `maxmemory-policy noeviction`: an evicted head key would restart a
//!   stream's numbering (the append script repairs it from the stream when the stream is
//!   still there).
//! - A batch append to several users is one script per user on a cluster, one script per 128
//!   users on a standalone server (sent in pipelines), so a failed batch may have been applied
//!   for some of them (callers retry with an Idempotency-Key).
//! - The `stats` counters are kept by each node in memory and added to Redis once a second, so
//!   they are approximate (a crash loses at most one second of counts); `streams` and the
//!   oldest age come from the indexes.
//! - A node whose Redis is wiped while it runs stops serving (`Unavailable`) at its next sweep,
//!   instead of numbering streams from 1 again under the old epoch; a restart draws a new one.
//! - Requires Redis 7.0 or newer (scripts declare their flags, `SET NX GET`, sharded pub/sub).
//!
//! Key layout (prefix `sg` by default). The `{...}` hash tag keeps every key of one stream in
//! one cluster slot, so each script touches one slot on a cluster:
//!
//! | key | type | content |
//! |---|---|---|
//! | `sg:{u:USER}:s`, `sg:{r:ROOM}:s` | stream | the events; entry id `SEQ-0`, fields `t` (ts), `x` (expiry, if any), `k` (type), `d` (data) |
//! | `sg:{u:USER}:h`, `sg:{r:ROOM}:h` | string | head: the last seq given out; never deleted, so numbering never restarts |
//! | `sg:{u:USER}:x`, `sg:{r:ROOM}:x` | zset | seqs of events with a ttl, scored by expiry time |
//! | `sg:{u:USER}:c` | hash | client id -> `SEQ:LAST_USED_MS` |
//! | `sg:{i:N}:ut`, `sg:{i:N}:rt` | zset | index shard N (of 16): non-empty streams, scored by (a lower bound of) their oldest event's ts |
//! | `sg:{i:N}:ux`, `sg:{i:N}:rx` | zset | streams holding events with a ttl, scored by the earliest expiry |
//! | `sg:{i:N}:c` | zset | users with cursors, scored by (a lower bound of) their least recently used cursor |
//! | `sg:stats` | hash | `m` user messages, `c` cursors (approximate counters) |
//! | `sg:idem:KEY` | hash | idempotency record (`c` created ms, `h` request hash, `s` status, `b` body), expires by itself |
//! | `sg:retention` | hash | `u`, `r`: the `max_len` last applied to every user stream / room |
//! | `sg:epoch` | string | the store's epoch, set once (`SET NX`); a wiped Redis gets a new one |
//!
//! The indexes let the sweep find work without a scan: age and ttl retention read the index
//! entries scored below the cutoff, apply the retention to those streams, and re-score them.
//! An index entry is added by an append that found its stream empty (after the append
//! succeeded) and removed by a sweep that emptied the stream, which then looks at the stream
//! again and re-adds it if an append slipped in between; so every non-empty stream stays
//! indexed. Length retention is applied by every append (with the `max_len` of the last sweep)
//! and, when `max_len` changes, by one pass over the index.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use redis::{Cmd, Pipeline, RedisError, ScriptInvocation, Value};

use super::{IdemRecord, NewEvent, Page, Retention, Store, StoreError, StoreResult, StoreStats, StreamKey};
use scripts::*;
use sweep::flush_loop;

#[path = "redis_idem.rs"]
mod idem;
#[path = "redis_scripts.rs"]
mod scripts;
#[path = "redis_sweep.rs"]
mod sweep;

pub use crate::redis_conn::{is_unavailable, Endpoint, RedisConn, RedisMode};

/// How many shards each retention index has (spread over the cluster by their hash tags).
const INDEX_SHARDS: u32 = 16;
/// Scripts in flight at once for a batch append on a cluster.
const APPEND_CONCURRENCY: usize = 64;
/// Scripts per pipeline on a standalone server (four pipelines in flight).
const PIPELINE: usize = 16;
/// Streams one append script takes on a standalone server (one script runs alone on Redis:
/// this bounds how long it holds the server, about a millisecond).
const STREAMS_PER_SCRIPT: usize = 128;
/// A cursor read refreshes `last_used` only when it is older than this (expiry is days).
const TOUCH_AFTER_MS: i64 = 60_000;

/// Where Redis is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` (TLS; append `#insecure` to
    /// skip certificate checks). For Redis Cluster, one or more seed nodes separated by commas.
    pub url: String,
    pub mode: RedisMode,
    /// Prefix of every key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Time to open a connection.
    pub connect_timeout: Duration,
    /// Time Redis has to answer one command.
    pub response_timeout: Duration,
    /// Time one store call may take in all (reconnects included), then it is `Unavailable`.
    pub op_timeout: Duration,
    /// Length limits applied by appends until the first sweep brings the configured ones.
    pub max_len: u64,
    pub room_max_len: u64,
    /// Idempotency record lifetime until the first sweep brings the configured one.
    pub idempotency_ttl: Duration,
    /// Replicas that must confirm an append before it is answered (`WAIT`); 0: none.
    pub wait_replicas: u32,
    /// How long that confirmation may take; fewer replicas by then: `Unavailable`.
    pub wait_timeout: Duration,
}

impl RedisOptions {
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            mode: RedisMode::Auto,
            key_prefix: "sg".into(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            op_timeout: Duration::from_secs(5),
            max_len: u64::MAX,
            room_max_len: u64::MAX,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
        }
    }
}

fn store_err(what: &str, e: RedisError) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable(format!("redis {what}: {e}"))
    } else {
        StoreError::Internal(format!("redis {what}: {e}"))
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, ms)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Keys.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    User,
    Room,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::User => 'u',
            Kind::Room => 'r',
        }
    }

    fn stream_key(self, name: &str) -> StreamKey<'_> {
        match self {
            Kind::User => StreamKey::User(name),
            Kind::Room => StreamKey::Room(name),
        }
    }
}

struct Keys {
    prefix: String,
}

impl Keys {
    fn base(&self, kind: Kind, name: &str) -> String {
        format!("{}:{{{}:{name}}}", self.prefix, kind.letter())
    }
    fn stream(&self, kind: Kind, name: &str) -> [String; 3] {
        let b = self.base(kind, name);
        [format!("{b}:s"), format!("{b}:h"), format!("{b}:x")]
    }
    fn cursors(&self, user: &str) -> String {
        format!("{}:c", self.base(Kind::User, user))
    }
    fn shard(&self, kind: Kind, name: &str) -> u32 {
        kind.stream_key(name).tag() % INDEX_SHARDS
    }
    /// Index of oldest event times (`t`) or earliest expiries (`x`) of shard `n`.
    fn index(&self, kind: Kind, what: char, n: u32) -> String {
        format!("{}:{{i:{n}}}:{}{what}", self.prefix, kind.letter())
    }
    fn cursor_index(&self, n: u32) -> String {
        format!("{}:{{i:{n}}}:c", self.prefix)
    }
    fn stats(&self) -> String {
        format!("{}:stats", self.prefix)
    }
    fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }
    /// The length limits last applied to every stream (`u`, `r`), so a restart skips that pass.
    fn retention(&self) -> String {
        format!("{}:retention", self.prefix)
    }
    fn idem(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.prefix)
    }
}

// ---------------------------------------------------------------------------------------------
// The store.

/// Retention values in force for appends and the idempotency ttl (updated by `sweep`).
struct Live {
    max_len: AtomicU64,
    room_max_len: AtomicU64,
    idem_ttl_ms: AtomicI64,
    /// `max_len` / `room_max_len` last applied to every stream by a sweep (u64::MAX - 1: never;
    /// `u64::MAX` itself means "no limit").
    len_swept: AtomicU64,
    room_len_swept: AtomicU64,
}

struct Inner {
    conn: RedisConn,
    /// Appends go here: with `wait`, a connection of their own, since `WAIT` covers the
    /// writes of its own connection and blocks it until the replicas answer.
    writer: RedisConn,
    wait: Option<(u32, Duration)>,
    endpoint: Endpoint,
    keys: Keys,
    scripts: Scripts,
    epoch: String,
    op_timeout: Duration,
    live: Live,
    closed: AtomicBool,
    /// The epoch key vanished under us (Redis was wiped): refuse everything until a restart.
    reset: AtomicBool,
    /// Counter deltas not yet added to `sg:stats`.
    messages_delta: AtomicI64,
    cursors_delta: AtomicI64,
}

/// The Redis store. Cheap to share (`Arc` inside); `connect` starts a small task that adds
/// this node's counter deltas to Redis once a second.
pub struct RedisStore {
    inner: Arc<Inner>,
}

const NEVER_SWEPT: u64 = u64::MAX - 1;

impl RedisStore {
    /// Connects (detecting a cluster with `RedisMode::Auto`), loads or creates the epoch.
    pub async fn connect(opts: RedisOptions) -> StoreResult<Self> {
        let setup = async {
            let endpoint = Endpoint::resolve(&opts.url, opts.mode, opts.connect_timeout, opts.response_timeout).await?;
            let conn = endpoint.connect().await?;
            let writer = if opts.wait_replicas > 0 { endpoint.connect().await? } else { conn.clone() };
            Ok::<_, RedisError>((endpoint, conn, writer))
        };
        let (endpoint, mut conn, writer) = match tokio::time::timeout(opts.op_timeout, setup).await {
            Ok(r) => r.map_err(|e| store_err("connect", e))?,
            Err(_) => {
                return Err(StoreError::Unavailable(format!("redis did not answer within {:?}", opts.op_timeout)))
            }
        };
        if endpoint.cluster && opts.wait_replicas > 0 {
            return Err(StoreError::Internal("redis.wait_replicas is not supported on a Redis Cluster".into()));
        }
        let keys = Keys { prefix: opts.key_prefix.clone() };
        let fresh = format!("{:08x}", rand::random::<u32>());
        let old: Option<String> = tokio::time::timeout(
            opts.op_timeout,
            redis::cmd("SET").arg(keys.epoch()).arg(&fresh).arg("NX").arg("GET").query_async(&mut conn),
        )
        .await
        .map_err(|_| StoreError::Unavailable("redis did not answer".into()))?
        .map_err(|e| store_err("epoch", e))?;
        let epoch = old.unwrap_or(fresh);
        let inner = Arc::new(Inner {
            conn,
            writer,
            wait: (opts.wait_replicas > 0).then_some((opts.wait_replicas, opts.wait_timeout)),
            endpoint,
            keys,
            scripts: Scripts::new(),
            epoch,
            op_timeout: opts.op_timeout,
            live: Live {
                max_len: AtomicU64::new(opts.max_len),
                room_max_len: AtomicU64::new(opts.room_max_len),
                idem_ttl_ms: AtomicI64::new(ms(opts.idempotency_ttl).max(1)),
                len_swept: AtomicU64::new(NEVER_SWEPT),
                room_len_swept: AtomicU64::new(NEVER_SWEPT),
            },
            closed: AtomicBool::new(false),
            reset: AtomicBool::new(false),
            messages_delta: AtomicI64::new(0),
            cursors_delta: AtomicI64::new(0),
        });
        tokio::spawn(flush_loop(Arc::downgrade(&inner)));
        Ok(RedisStore { inner })
    }

    /// Whether the store runs on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.endpoint.cluster
    }

    /// The store's multiplexed connection, for other parts of a node that keep state in the
    /// same Redis (presence). Clones share one socket per server.
    pub fn connection(&self) -> RedisConn {
        self.inner.conn()
    }
}

impl Inner {
    fn check(&self) -> StoreResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        if self.reset.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "the Redis data was wiped while this node ran (its epoch key is gone): restart the node".into(),
            ));
        }
        Ok(())
    }

    /// Runs `f` with the time limit of one store call.
    async fn run<T>(&self, what: &str, f: impl Future<Output = Result<T, RedisError>>) -> StoreResult<T> {
        self.check()?;
        match tokio::time::timeout(self.op_timeout, f).await {
            Ok(r) => r.map_err(|e| store_err(what, e)),
            Err(_) => Err(StoreError::Unavailable(format!("redis {what}: no answer within {:?}", self.op_timeout))),
        }
    }

    fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    fn max_len(&self, kind: Kind) -> u64 {
        match kind {
            Kind::User => self.live.max_len.load(Ordering::Relaxed),
            Kind::Room => self.live.room_max_len.load(Ordering::Relaxed),
        }
    }

    /// Appends events grouped by stream: one script per stream on a cluster, per 128 streams
    /// on a standalone server.
    async fn append(&self, kind: Kind, events: Vec<NewEvent>) -> StoreResult<Vec<u64>> {
        self.check()?;
        let mut order: HashMap<&str, usize> = HashMap::new();
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let g = *order.entry(e.stream.as_str()).or_insert_with(|| {
                groups.push((e.stream.as_str(), Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        let max_len = match self.max_len(kind) {
            u64::MAX => "-1".to_string(),
            n => n.to_string(),
        };
        // One script per stream on a cluster (two streams may live on different nodes), up to
        // `STREAMS_PER_SCRIPT` streams per script on a standalone server.
        let per_script = if self.endpoint.cluster { 1 } else { STREAMS_PER_SCRIPT };
        let invocations: Vec<_> = groups
            .chunks(per_script)
            .map(|chunk| {
                let mut inv = self.scripts.append.prepare_invoke();
                inv.arg(&max_len);
                for (name, idx) in chunk {
                    let [s, h, x] = self.keys.stream(kind, name);
                    inv.key(s).key(h).key(x).arg(idx.len());
                    for &i in idx {
                        let e = &events[i];
                        let expires = e.ttl.map_or(0, |t| e.ts.saturating_add(ms(t)).max(1));
                        inv.arg(e.ts).arg(expires).arg(&e.kind).arg(e.data.as_ref());
                    }
                }
                inv
            })
            .collect();
        let per_stream = self.run("append", self.invoke_all(&invocations)).await?;
        let mut answers = Vec::with_capacity(groups.len());
        for v in per_stream {
            answers.extend(into_array(v).ok_or_else(|| bad("append"))?);
        }
        if answers.len() != groups.len() {
            return Err(bad("append"));
        }

        let mut seqs = vec![0u64; events.len()];
        let mut index = redis::pipe(); // only used when standalone; cluster sends one by one
        let mut index_cmds: Vec<Cmd> = Vec::new();
        let mut added: i64 = 0;
        for ((name, idx), answer) in groups.iter().zip(answers) {
            let a = into_array(answer).ok_or_else(|| bad("append"))?;
            let (first, len0, trimmed) = match a.as_slice() {
                [f, l, t] => (as_u64(f), as_int(l), as_int(t)),
                _ => return Err(bad("append")),
            };
            let (Some(first), Some(len0), Some(trimmed)) = (first, len0, trimmed) else {
                return Err(bad("append"));
            };
            for (k, &i) in idx.iter().enumerate() {
                seqs[i] = first + k as u64;
            }
            added += idx.len() as i64 - trimmed;
            let shard = self.keys.shard(kind, name);
            if len0 == 0 {
                let oldest = idx.iter().map(|&i| events[i].ts).min().unwrap_or(0);
                index_cmds.push(zadd_lt(&self.keys.index(kind, 't', shard), oldest, name));
            }
            let min_exp = idx.iter().filter_map(|&i| events[i].ttl.map(|t| events[i].ts.saturating_add(ms(t)))).min();
            if let Some(exp) = min_exp {
                index_cmds.push(zadd_lt(&self.keys.index(kind, 'x', shard), exp.max(1), name));
            }
        }
        if kind == Kind::User {
            self.messages_delta.fetch_add(added, Ordering::AcqRel);
        }
        // The index entries go in after the appends succeeded (see the module doc for why). A
        // failure here leaves the events stored and answered; the sweep then misses them until
        // the stream is next emptied, so it is logged, not returned.
        if !index_cmds.is_empty() {
            let r = self.run("index", self.send_all(&mut index, index_cmds)).await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "redis store: retention index update failed after an append");
            }
        }
        // With `redis.wait_replicas`, answered only once enough replicas have the events (the
        // events stay stored on the master either way; a 503 may still be delivered).
        if let Some((n, timeout)) = self.wait {
            let mut c = self.writer.clone();
            let wait = redis::cmd("WAIT").arg(n).arg(ms(timeout)).clone();
            let got: i64 = self.run("wait", wait.query_async(&mut c)).await?;
            if got < i64::from(n) {
                return Err(StoreError::Unavailable(format!(
                    "only {got} of {n} replicas confirmed the write within {timeout:?} (redis.wait_replicas)"
                )));
            }
        }
        Ok(seqs)
    }

    /// Runs script invocations (each on its own stream) and returns their answers in order: on
    /// a standalone server in pipelines of `PIPELINE`, four in flight; on a cluster
    /// `APPEND_CONCURRENCY` at once (a cluster pipeline must stay within one slot). An
    /// invocation Redis refused with NOSCRIPT was not run: it is run again after loading.
    async fn invoke_all(&self, invocations: &[ScriptInvocation<'_>]) -> Result<Vec<Value>, RedisError> {
        if let RedisConn::Cluster(_) = &self.writer {
            // Futures collected first: a stream over a borrowing closure is not `Send` enough
            // for `async_trait`.
            let calls: Vec<_> = invocations
                .iter()
                .map(|inv| {
                    let mut conn = self.writer.clone();
                    async move { inv.invoke_async::<Value>(&mut conn).await }
                })
                .collect();
            return stream::iter(calls).buffered(APPEND_CONCURRENCY).try_collect().await;
        }
        let calls: Vec<_> = invocations
            .chunks(PIPELINE)
            .map(|chunk| {
                let mut conn = self.writer.clone();
                async move {
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors();
                    for inv in chunk {
                        pipe.invoke_script(inv);
                    }
                    let results: Vec<Result<Value, RedisError>> = pipe.query_async(&mut conn).await?;
                    let mut answers = Vec::with_capacity(chunk.len());
                    for (inv, r) in chunk.iter().zip(results) {
                        answers.push(match r {
                            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                                inv.invoke_async(&mut conn).await?
                            }
                            r => r?,
                        });
                    }
                    Ok::<_, RedisError>(answers)
                }
            })
            .collect();
        // A few pipelines in flight, so Redis has the next scripts while answers travel back.
        let parts: Vec<Vec<Value>> = stream::iter(calls).buffered(4).try_collect().await?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// Sends independent commands: one pipeline on a standalone server, concurrently on a
    /// cluster (a cluster pipeline must stay within one slot).
    async fn send_all(&self, pipe: &mut Pipeline, cmds: Vec<Cmd>) -> Result<(), RedisError> {
        let mut conn = self.conn();
        match &conn {
            RedisConn::Single(_) | RedisConn::Sentinel(_) => {
                for c in cmds {
                    pipe.add_command(c).ignore();
                }
                pipe.query_async::<()>(&mut conn).await
            }
            RedisConn::Cluster(_) => stream::iter(cmds.into_iter().map(|c| {
                let mut conn = conn.clone();
                async move { c.query_async::<()>(&mut conn).await }
            }))
            .buffer_unordered(APPEND_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ()),
        }
    }

    async fn read(&self, kind: Kind, name: &str, after: u64, limit: usize) -> StoreResult<Page> {
        let [s, h, _] = self.keys.stream(kind, name);
        let start = match after.checked_add(1) {
            Some(n) if limit > 0 => format!("{n}-0"),
            _ => String::new(),
        };
        let mut conn = self.conn();
        let mut inv = self.scripts.read.key(s);
        inv.key(h).arg(start).arg(limit);
        let v: Value = self.run("read", inv.invoke_async(&mut conn)).await?;
        let a = into_array(v).ok_or_else(|| bad("read"))?;
        let [head, first, evs] = <[Value; 3]>::try_from(a).map_err(|_| bad("read"))?;
        let head = as_u64(&head).ok_or_else(|| bad("read"))?;
        let first = match &first {
            Value::Nil => head + 1,
            v => as_bytes(v).and_then(id_seq).ok_or_else(|| bad("read"))?,
        };
        let events = into_array(evs)
            .ok_or_else(|| bad("read"))?
            .into_iter()
            .map(|e| decode_entry(e).ok_or_else(|| bad("read")))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Page { events, head, first })
    }
}

fn zadd_lt(key: &str, score: i64, member: &str) -> Cmd {
    redis::cmd("ZADD").arg(key).arg("LT").arg(score).arg(member).clone()
}

#[async_trait]
impl Store for RedisStore {
    fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    async fn append_user(&self, events: Vec<NewEvent>) -> StoreResult<Vec<u64>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.append(Kind::User, events).await
    }

    async fn read_user(&self, user: &str, after: u64, limit: usize) -> StoreResult<Page> {
        self.inner.read(Kind::User, user, after, limit).await
    }

    async fn append_room(&self, event: NewEvent) -> StoreResult<u64> {
        let seqs = self.inner.append(Kind::Room, vec![event]).await?;
        seqs.first().copied().ok_or_else(|| bad("append"))
    }

    async fn read_room(&self, room: &str, after: u64, limit: usize) -> StoreResult<Page> {
        self.inner.read(Kind::Room, room, after, limit).await
    }

    async fn cursor(&self, user: &str, client_id: &str) -> StoreResult<Option<u64>> {
        let inner = &self.inner;
        let mut inv = inner.scripts.get_cursor.key(inner.keys.cursors(user));
        inv.arg(client_id).arg(now_ms()).arg(TOUCH_AFTER_MS);
        let mut conn = inner.conn();
        let v: Value = inner.run("cursor", inv.invoke_async(&mut conn)).await?;
        match v {
            Value::Nil => Ok(None),
            v => as_u64(&v).map(Some).ok_or_else(|| bad("cursor")),
        }
    }

    async fn cursors(&self, user: &str, limit: usize) -> StoreResult<Vec<(String, u64)>> {
        let inner = &self.inner;
        let mut conn = inner.conn();
        let key = inner.keys.cursors(user);
        let cmd = redis::cmd("HGETALL").arg(&key).clone();
        let all: HashMap<String, String> = inner.run("cursors", cmd.query_async(&mut conn)).await?;
        let mut out: Vec<(String, u64)> = all
            .into_iter()
            .filter_map(|(c, v)| v.split(':').next().and_then(|s| s.parse().ok()).map(|seq| (c, seq)))
            .collect();
        out.sort();
        out.truncate(limit);
        Ok(out)
    }

    async fn set_cursor(&self, user: &str, client_id: &str, seq: u64, max_devices: usize) -> StoreResult<u64> {
        let inner = &self.inner;
        let now = now_ms();
        let mut inv = inner.scripts.set_cursor.key(inner.keys.cursors(user));
        inv.arg(client_id).arg(seq.to_string()).arg(now).arg(max_devices.max(1));
        let mut conn = inner.conn();
        let v: Value = inner.run("set cursor", inv.invoke_async(&mut conn)).await?;
        let a = into_array(v).ok_or_else(|| bad("set cursor"))?;
        let (new, created, evicted) = match a.as_slice() {
            [n, c, e] => (as_u64(n), as_int(c), as_int(e)),
            _ => (None, None, None),
        };
        let (Some(new), Some(created), Some(evicted)) = (new, created, evicted) else {
            return Err(bad("set cursor"));
        };
        if created == 1 {
            inner.cursors_delta.fetch_add(1 - evicted, Ordering::AcqRel);
            let index = inner.keys.cursor_index(inner.keys.shard(Kind::User, user));
            let cmd = zadd_lt(&index, now, user);
            inner.run("index", cmd.query_async::<()>(&mut conn)).await?;
        }
        Ok(new)
    }

    async fn idem_get(&self, key: &str) -> StoreResult<Option<IdemRecord>> {
        self.get_idem(key).await
    }

    async fn idem_put(&self, key: &str, record: IdemRecord) -> StoreResult<Option<IdemRecord>> {
        self.put_idem(key, record).await
    }

    async fn idem_claim(&self, key: &str, request_hash: u64, lease: Duration) -> StoreResult<Option<IdemRecord>> {
        self.claim_idem(key, request_hash, lease).await
    }

    async fn idem_release(&self, key: &str) -> StoreResult<()> {
        self.release_idem(key).await
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        self.inner.stats().await
    }

    /// Counts removed messages of user streams and room histories alike. Several nodes may
    /// sweep at once: the scripts make that safe, only the work is repeated.
    async fn sweep(&self, retention: &Retention, now_ms: i64) -> StoreResult<u64> {
        self.inner.sweep(retention, now_ms).await
    }

    async fn close(&self) -> StoreResult<()> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let flushed = inner.flush_counters().await;
        inner.closed.store(true, Ordering::Release);
        // Everything answered is already in Redis: nothing else to flush.
        flushed.map_err(|e| store_err("close", e))
    }

    async fn health(&self) -> StoreResult<()> {
        let inner = &self.inner;
        let mut conn = inner.conn();
        inner.run("ping", redis::cmd("PING").query_async::<()>(&mut conn)).await
    }
}

#[cfg(test)]
#[path = "redis_tests.rs"]
mod tests;
