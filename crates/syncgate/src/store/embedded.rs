//! Embedded store: the single-node default, on local disk, over one of two engines
//! (`store.engine`): redb (this file's layout; the default) or fjall (`embedded_lsm.rs`).
//!
//! Owns: the front shared by both engines (the one writer thread with its group commit, the
//! reader threads, the chunked retention sweep's planning, the engine traits `Backend` and
//! `View`), and the redb engine: the database file `syncgate.redb` in the data dir, its
//! table layout and value encoding.
//!
//! Must never: write outside the writer thread, answer a write before its transaction is
//! committed with the configured durability, run a blocking engine call on an async worker
//! thread, hold one write transaction for an unbounded amount of work, or open a data dir
//! that holds the other engine's data (`refuse_other_engine`).
//!
//! Why redb: pure Rust (no C toolchain, unlike RocksDB or SQLite), ACID transactions on
//! copy-on-write B-trees, MVCC reads that run next to the single writer and only ever see
//! whole committed transactions (so a reader never sees seq N+1 without N), and a stable
//! file format since 2.0.
//!
//! Group commit: every write is a request on one bounded channel to one writer thread. The
//! writer takes a request, drains whatever else is already queued (up to `max_batch`
//! events), applies it all in one write transaction, commits once (one fsync with
//! `FsyncPolicy::Always`), and only then answers each request. N concurrent publishers thus
//! cost about one fsync per batch, not N; a failed commit fails every request of the batch.
//!
//! Layout (format 2). Per kind (user streams, room histories): `events (stream, seq) ->
//! event`, `heads stream -> (head, count, oldest_ts)` (kept when a stream is trimmed to
//! empty, so numbering never restarts; `oldest_ts` is the ts of the stream's first retained
//! event, `i64::MAX` when empty), `age (oldest_ts, stream) -> ()` (one entry per non-empty
//! stream: age retention finds its streams without a scan and trims each from the front, in
//! sequence order) and `expiry (expires_at, stream, seq) -> ()` for events with a ttl. An
//! append thus writes the event and, once per batch, the stream's head; the age index only
//! changes when a stream goes from empty to non-empty or the sweep removes its first events.
//! Plus `cursors (user, client) -> (seq, last_used_ms)`, `idem key -> record` with its
//! `(created_ms, key)` index, `counters` (stats without a scan) and `meta` (epoch, format).
//! Heads are never deleted: a stream's numbering must not restart within an epoch.
//!
//! Format 1 (before the age index) kept `heads stream -> (head, count)` and a per-event time
//! index `(ts, stream, seq)`; opening such a file converts it in place, once, in one
//! transaction (`migrate_v1`). A file of format 2 cannot be opened by a build that reads
//! format 1.
//!
//! Files: this one holds the API, the engine traits, the redb layout and the sweep's
//! planning; `embedded_redb.rs` the redb engine's commit and reads; `embedded_lsm.rs` the
//! fjall engine (its keys, reads and mutations); `embedded_writer.rs` the writer thread and
//! every redb mutation; `embedded_readers.rs` the reader threads; `embedded_writeback.rs`
//! the write-back thread of fsync never; `embedded_format.rs` the encoding of values, new
//! files and the format 1 conversion; `embedded_tests.rs` the tests (run once per engine).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use redb::TableDefinition;
use tokio::sync::{mpsc, oneshot};

use super::{IdemRecord, NewEvent, Page, Retention, Store, StoreError, StoreResult, StoreStats};
use format::{decode_event, decode_idem, encode_event, encode_idem, event_times, first_ts, init};
use writer::{writer_loop, Answer, Req, SweepOp, Tx};

/// Name of the database file inside `EmbeddedOptions::dir`.
pub const FILE_NAME: &str = "syncgate.redb";
/// Name of the LSM engine's directory inside `EmbeddedOptions::dir`.
pub const LSM_DIR_NAME: &str = "syncgate.lsm";
const FORMAT: &str = "2";
/// Bound of the writer's request queue: callers wait (backpressure) when it is full.
const QUEUE: usize = 4096;
/// Most deletions one sweep request makes in one transaction, so publishes never wait long.
const SWEEP_CHUNK: usize = 512;
/// Heads or cursors looked at per read transaction while a sweep searches for work.
const SCAN_PAGE: usize = 2048;
/// A cursor read refreshes `last_used` only when it is older than this (expiry is days).
const TOUCH_AFTER_MS: i64 = 60_000;
/// With `FsyncPolicy::Never`, one commit in this interval is made durable anyway: redb only
/// frees pages on durable commits, so the file would otherwise grow without bound. Meanwhile
/// a thread starts the file's write-back every 100 ms (`embedded_writeback.rs`), so that
/// this commit's `fdatasync` has little left to write.
const NEVER_FLUSH_EVERY: Duration = Duration::from_secs(1);
const NO_EXPIRY: i64 = i64::MAX;
/// `oldest_ts` of an empty stream.
const EMPTY: i64 = i64::MAX;
const DEFAULT_IDEM_TTL_MS: i64 = 24 * 3600 * 1000;

type EventsDef = TableDefinition<'static, (&'static str, u64), &'static [u8]>;
type IndexDef = TableDefinition<'static, (i64, &'static str, u64), ()>;
/// (head, count, oldest_ts) of a stream.
type Head = (u64, u64, i64);

/// The tables of one kind of stream.
struct Kind {
    events: EventsDef,
    heads: TableDefinition<'static, &'static str, Head>,
    age: TableDefinition<'static, (i64, &'static str), ()>,
    expiry: IndexDef,
    /// Format 1 tables, only opened to convert them.
    v1_heads: TableDefinition<'static, &'static str, (u64, u64)>,
    v1_by_time: IndexDef,
}

static USER: Kind = Kind {
    events: TableDefinition::new("user_events"),
    heads: TableDefinition::new("user_heads_v2"),
    age: TableDefinition::new("user_age"),
    expiry: TableDefinition::new("user_expiry"),
    v1_heads: TableDefinition::new("user_heads"),
    v1_by_time: TableDefinition::new("user_by_time"),
};
static ROOM: Kind = Kind {
    events: TableDefinition::new("room_events"),
    heads: TableDefinition::new("room_heads_v2"),
    age: TableDefinition::new("room_age"),
    expiry: TableDefinition::new("room_expiry"),
    v1_heads: TableDefinition::new("room_heads"),
    v1_by_time: TableDefinition::new("room_by_time"),
};
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const CURSORS: TableDefinition<(&str, &str), (u64, i64)> = TableDefinition::new("cursors");
const IDEM: TableDefinition<&str, &[u8]> = TableDefinition::new("idem");
const IDEM_TIME: TableDefinition<(i64, &str), ()> = TableDefinition::new("idem_by_time");
const C_MESSAGES: &str = "user_messages";
const C_STREAMS: &str = "user_streams";
const C_CURSORS: &str = "cursors";

/// Maps any redb error to a `StoreError` with context: I/O trouble is `Unavailable` (the
/// disk, retry later or elsewhere), anything else `Internal`.
trait Ctx<T> {
    fn ctx(self, what: &str) -> StoreResult<T>;
}
impl<T, E: Into<redb::Error>> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> StoreResult<T> {
        self.map_err(|e| match e.into() {
            e @ (redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseAlreadyOpen) => {
                StoreError::Unavailable(format!("{what}: {e}"))
            }
            e => StoreError::Internal(format!("{what}: {e}")),
        })
    }
}

fn dup(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Closed => StoreError::Closed,
        StoreError::Internal(m) => StoreError::Internal(m.clone()),
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, ms)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// User streams or room histories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    User,
    Room,
}

/// Counts the stats come from.
struct Counts {
    pub messages: u64,
    pub streams: u64,
    pub cursors: u64,
    /// ts of the oldest retained user event.
    pub oldest_ts: Option<i64>,
}

/// Cursors are paged through by (user, client).
type CursorKey = (String, String);

/// One consistent view of an engine's data (a read transaction, a snapshot): it only ever
/// shows whole committed group commits.
trait View {
    fn page(&self, which: Which, stream: &str, after: u64, limit: usize) -> StoreResult<Page>;
    /// A device's cursor and when it was last used.
    fn cursor(&self, user: &str, client: &str) -> StoreResult<Option<(u64, i64)>>;
    fn cursors(&self, user: &str, limit: usize) -> StoreResult<Vec<(String, u64)>>;
    /// An idempotency record and when it was created.
    fn idem(&self, key: &str) -> StoreResult<Option<(i64, IdemRecord)>>;
    fn counts(&self) -> StoreResult<Counts>;
    /// Of the next `SCAN_PAGE` streams of `which` after `from` (in the engine's key order),
    /// those holding more than `max_len` events, and where the next page starts (`None`: done).
    fn long_streams(
        &self,
        which: Which,
        from: Option<&str>,
        max_len: u64,
    ) -> StoreResult<(Vec<String>, Option<String>)>;
    /// Of the next `SCAN_PAGE` cursors after `from`, those last used before `cutoff`, and
    /// where the next page starts.
    fn old_cursors(&self, from: Option<&CursorKey>, cutoff: i64) -> StoreResult<(Vec<CursorKey>, Option<CursorKey>)>;
}

/// A storage engine under the embedded store: consistent views for the readers, and one
/// group commit at a time from the writer thread.
trait Backend: Send + Sync + 'static {
    fn view(&self) -> StoreResult<Box<dyn View + '_>>;
    /// Applies every request of `batch` in one atomic commit, made durable (on disk, fsynced)
    /// before it returns if `durable`; answers in the order of `batch`.
    fn commit(&self, batch: &[Req], durable: bool) -> StoreResult<Vec<Answer>>;
    /// Called before each group commit: waits while the engine holds more written data in
    /// memory than it should and is making room; answers how long it waited.
    fn make_room(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    /// Memory the engine reports, if it does: (block cache in use, written data held beside
    /// the cache). fjall: its cache and its active and sealed memtables; redb: none.
    fn memory(&self) -> Option<(u64, u64)> {
        None
    }
}

/// The embedded store. Reads run on its reader threads; writes go to the writer thread.
pub struct EmbeddedStore {
    epoch: String,
    readers: readers::Readers,
    /// `None` after `close`, so the files are released once in-flight reads finish.
    db: RwLock<Option<Arc<dyn Backend>>>,
    tx: mpsc::Sender<Req>,
    writer: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    /// Idempotency ttl of the last sweep (24 h until then): older records are not answered.
    idem_ttl_ms: AtomicI64,
    /// With redb and fsync never: the thread that starts the file's write-back ahead of the
    /// durable commits (ends when this is dropped).
    _writeback: Option<writeback::WriteBack>,
}

impl EmbeddedStore {
    /// Opens or creates the store in `opts.dir` and starts its writer thread. Blocking (it
    /// may recover files that were not closed cleanly): call it before serving, or from
    /// `spawn_blocking`.
    pub fn open(opts: EmbeddedOptions) -> StoreResult<Self> {
        Self::open_with_metrics(opts, Default::default())
    }

    /// As [`EmbeddedStore::open`], with the writer thread's figures kept in `metrics` (the
    /// node's, registered in its registry).
    pub fn open_with_metrics(opts: EmbeddedOptions, metrics: Arc<metrics::WriterMetrics>) -> StoreResult<Self> {
        std::fs::create_dir_all(&opts.dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create data dir {}: {e}", opts.dir.display())))?;
        let engine = opts.engine.resolve(&opts.dir);
        refuse_other_engine(&opts.dir, opts.engine)?;
        let (db, epoch, writeback): (Arc<dyn Backend>, String, _) = match engine {
            Engine::Auto => unreachable!("Engine::resolve never answers Auto"),
            Engine::Redb => {
                let path = opts.dir.join(FILE_NAME);
                let db = redb::Builder::new()
                    .set_cache_size(opts.cache_bytes)
                    .create(&path)
                    .ctx(&format!("cannot open {}", path.display()))?;
                let epoch = init(&db)?;
                let wb = if opts.fsync == FsyncPolicy::Never { writeback::WriteBack::start(&path) } else { None };
                (Arc::new(redb_engine::RedbBackend(db)), epoch, wb)
            }
            Engine::Lsm => {
                let (db, epoch) = lsm::LsmBackend::open(&opts.dir.join(LSM_DIR_NAME), opts.cache_bytes)?;
                (Arc::new(db), epoch, None)
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let (wdb, fsync, max_batch) = (db.clone(), opts.fsync, opts.max_batch.max(1));
        let writer = std::thread::Builder::new()
            .name("syncgate-store".into())
            .spawn(move || writer_loop(&*wdb, rx, fsync, max_batch, &metrics))
            .map_err(|e| StoreError::Internal(format!("cannot start the store writer thread: {e}")))?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let readers = readers::Readers::start(readers::Readers::threads_for(cores))
            .map_err(|e| StoreError::Internal(format!("cannot start the store reader threads: {e}")))?;
        Ok(EmbeddedStore {
            epoch,
            readers,
            db: RwLock::new(Some(db)),
            tx,
            writer: Mutex::new(Some(writer)),
            closed: AtomicBool::new(false),
            idem_ttl_ms: AtomicI64::new(DEFAULT_IDEM_TTL_MS),
            _writeback: writeback,
        })
    }

    fn stopped(&self) -> StoreError {
        if self.closed.load(Ordering::Acquire) {
            StoreError::Closed
        } else {
            StoreError::Unavailable("the store writer stopped".into())
        }
    }

    /// Sends one write to the writer and waits until its group commit is done.
    async fn write<T>(&self, make: impl FnOnce(Tx<T>) -> Req) -> StoreResult<T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// The seq of a cursor read as `found`, touching it (resetting its expiry) if it was last
    /// used long enough ago.
    fn touched(&self, user: &str, client_id: &str, found: Option<(u64, i64)>) -> Option<u64> {
        let now = now_ms();
        if found.is_some_and(|(_, used)| now.saturating_sub(used) > TOUCH_AFTER_MS) {
            // Fire and forget: a touch lost to a full queue only shortens a 30-day expiry.
            let _ = self.tx.try_send(Req::Touch { user: user.to_string(), client: client_id.to_string(), now });
        }
        found.map(|(seq, _)| seq)
    }

    /// Runs `f` on one consistent view, on a reader thread.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn View) -> StoreResult<T> + Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let db = self.db.read().map_err(|_| StoreError::Internal("store lock poisoned".into()))?.clone();
        let db = db.ok_or(StoreError::Closed)?;
        self.readers
            .run(move || f(&*db.view()?))
            .await
            .map_err(|_| StoreError::Internal("a store read failed (its reader thread panicked)".into()))?
    }

    /// Repeats one sweep request until the writer says there is nothing more to do.
    async fn sweep_loop(&self, op: impl Fn() -> SweepOp) -> StoreResult<u64> {
        let mut total = 0;
        loop {
            let (n, more) = self.write(|tx| Req::Sweep(op(), tx)).await?;
            total += n;
            if !more {
                return Ok(total);
            }
        }
    }

    /// Trims every stream of `kind` longer than `max_len`; the streams are found by paging
    /// through the heads in reads (which never block the writer).
    async fn trim_len(&self, kind: Which, max_len: u64) -> StoreResult<u64> {
        let (mut removed, mut from) = (0, None::<String>);
        loop {
            let start = from.take();
            let (long, next) = self.read(move |v| v.long_streams(kind, start.as_deref(), max_len)).await?;
            for group in long.chunks(256) {
                let op = || SweepOp::TrimLen { kind, streams: group.to_vec(), max_len };
                removed += self.sweep_loop(op).await?;
            }
            match next {
                Some(n) => from = Some(n),
                None => return Ok(removed),
            }
        }
    }

    /// Forgets cursors unused since `cutoff`, paging through the cursors.
    async fn sweep_cursors(&self, cutoff: i64) -> StoreResult<()> {
        let mut from = None::<CursorKey>;
        loop {
            let start = from.take();
            let (old, next) = self.read(move |v| v.old_cursors(start.as_ref(), cutoff)).await?;
            for keys in old.chunks(SWEEP_CHUNK) {
                self.write(|tx| Req::Sweep(SweepOp::Cursors { keys: keys.to_vec(), cutoff }, tx)).await?;
            }
            match next {
                Some(n) => from = Some(n),
                None => return Ok(()),
            }
        }
    }

    fn join_writer(&self) -> Option<JoinHandle<()>> {
        self.writer.lock().ok().and_then(|mut w| w.take())
    }
}

impl Drop for EmbeddedStore {
    /// Dropping without `close` still finishes queued writes and releases the files (the
    /// writer ends when the channel closes); this waits for that, at most one group commit.
    fn drop(&mut self) {
        let (dummy, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, dummy));
        if let Some(h) = self.join_writer() {
            let _ = h.join(); // a panicked writer has nothing left to release
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    /// `None` on redb (it reports nothing), and once closed.
    fn memory(&self) -> Option<(u64, u64)> {
        self.db.read().ok().and_then(|d| d.as_ref().and_then(|d| d.memory()))
    }

    async fn append_user(&self, events: Vec<NewEvent>) -> StoreResult<Vec<u64>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|tx| Req::AppendUser(events, tx)).await
    }

    async fn read_user(&self, user: &str, after: u64, limit: usize) -> StoreResult<Page> {
        let user = user.to_string();
        self.read(move |v| v.page(Which::User, &user, after, limit)).await
    }

    async fn append_room(&self, event: NewEvent) -> StoreResult<u64> {
        self.write(|tx| Req::AppendRoom(event, tx)).await
    }

    async fn read_room(&self, room: &str, after: u64, limit: usize) -> StoreResult<Page> {
        let room = room.to_string();
        self.read(move |v| v.page(Which::Room, &room, after, limit)).await
    }

    async fn cursor(&self, user: &str, client_id: &str) -> StoreResult<Option<u64>> {
        let (u, c) = (user.to_string(), client_id.to_string());
        let found = self.read(move |v| v.cursor(&u, &c)).await?;
        Ok(self.touched(user, client_id, found))
    }

    async fn head_and_cursor(&self, user: &str, client_id: Option<&str>) -> StoreResult<(Page, Option<u64>)> {
        let (u, c) = (user.to_string(), client_id.map(str::to_string));
        let (head, found) = self
            .read(move |v| {
                let head = v.page(Which::User, &u, u64::MAX, 0)?;
                let found = match &c {
                    Some(c) => v.cursor(&u, c)?,
                    None => None,
                };
                Ok((head, found))
            })
            .await?;
        let cursor = client_id.and_then(|cid| self.touched(user, cid, found));
        Ok((head, cursor))
    }

    async fn cursors(&self, user: &str, limit: usize) -> StoreResult<Vec<(String, u64)>> {
        let u = user.to_string();
        self.read(move |v| v.cursors(&u, limit)).await
    }

    async fn set_cursor(&self, user: &str, client_id: &str, seq: u64, max_devices: usize) -> StoreResult<u64> {
        let (user, client, now) = (user.to_string(), client_id.to_string(), now_ms());
        self.write(|reply| Req::SetCursor { user, client, seq, now, max_devices, reply }).await
    }

    async fn idem_get(&self, key: &str) -> StoreResult<Option<IdemRecord>> {
        let (key, ttl, now) = (key.to_string(), self.idem_ttl_ms.load(Ordering::Relaxed), now_ms());
        let found = self.read(move |v| v.idem(&key)).await?;
        Ok(found.filter(|(created, _)| created.saturating_add(ttl) > now).map(|(_, r)| r))
    }

    async fn idem_put(&self, key: &str, record: IdemRecord) -> StoreResult<Option<IdemRecord>> {
        let (key, ttl_ms, now) = (key.to_string(), self.idem_ttl_ms.load(Ordering::Relaxed), now_ms());
        self.write(|reply| Req::IdemPut { key, record, now, created: now, ttl_ms, reply }).await
    }

    async fn idem_claim(&self, key: &str, request_hash: u64, lease: Duration) -> StoreResult<Option<IdemRecord>> {
        let (key, ttl_ms, now) = (key.to_string(), self.idem_ttl_ms.load(Ordering::Relaxed), now_ms());
        // Back-dated so that the record's ordinary expiry (created + ttl) ends the lease.
        let created = now.saturating_sub(ttl_ms).saturating_add(ms(lease).max(1));
        let record = IdemRecord { request_hash, status: 0, body: Bytes::new() };
        self.write(|reply| Req::IdemPut { key, record, now, created, ttl_ms, reply }).await
    }

    async fn idem_release(&self, key: &str) -> StoreResult<()> {
        let key = key.to_string();
        self.write(|reply| Req::IdemRelease { key, reply }).await.map(|_| ())
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let now = now_ms();
        let c = self.read(|v| v.counts()).await?;
        let memory = self.memory();
        Ok(StoreStats {
            stored_messages: c.messages,
            streams: c.streams,
            oldest_age_ms: c.oldest_ts.map(|ts| u64::try_from(now.saturating_sub(ts)).unwrap_or(0)),
            cursors: c.cursors,
            cache_bytes: memory.map(|m| m.0),
            write_buffer_bytes: memory.map(|m| m.1),
        })
    }

    /// Counts removed messages of user streams and room histories alike.
    async fn sweep(&self, retention: &Retention, now_ms: i64) -> StoreResult<u64> {
        self.idem_ttl_ms.store(ms(retention.idempotency_ttl), Ordering::Relaxed);
        let mut removed = 0;
        let kinds = [
            (Which::User, retention.max_age, retention.max_len),
            (Which::Room, retention.room_max_age, retention.room_max_len),
        ];
        for (kind, max_age, max_len) in kinds {
            removed += self.sweep_loop(|| SweepOp::Expired { kind, now: now_ms }).await?;
            let cutoff = now_ms.saturating_sub(ms(max_age));
            removed += self.sweep_loop(|| SweepOp::Older { kind, cutoff }).await?;
            removed += self.trim_len(kind, max_len).await?;
        }
        self.sweep_cursors(now_ms.saturating_sub(ms(retention.cursor_ttl))).await?;
        let cutoff = now_ms.saturating_sub(ms(retention.idempotency_ttl));
        self.sweep_loop(|| SweepOp::Idem { cutoff }).await?;
        Ok(removed)
    }

    async fn close(&self) -> StoreResult<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Queued writes are ahead of this request: they are committed, then made durable.
        let (tx, rx) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the store writer stopped before close".into());
        let flushed = match self.tx.send(Req::Close(tx)).await {
            Ok(()) => rx.await.unwrap_or_else(|_| Err(stopped())),
            Err(_) => Err(stopped()),
        };
        if let Some(h) = self.join_writer() {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        if let Ok(mut db) = self.db.write() {
            db.take();
        }
        flushed
    }
}

#[path = "embedded_lsm.rs"]
mod lsm;

#[path = "embedded_redb.rs"]
mod redb_engine;

#[path = "embedded_writer.rs"]
mod writer;

#[path = "embedded_format.rs"]
mod format;

#[path = "embedded_readers.rs"]
mod readers;

#[path = "embedded_writeback.rs"]
mod writeback;

#[path = "embedded_metrics.rs"]
pub mod metrics;

#[path = "embedded_options.rs"]
mod options;
pub use options::{refuse_other_engine, EmbeddedOptions, Engine, FsyncPolicy};

/// The store's tests, run once per engine (`ENGINE`).
#[cfg(test)]
mod tests_redb {
    const ENGINE: super::Engine = super::Engine::Redb;
    include!("embedded_tests.rs");
}

#[cfg(test)]
mod tests_lsm {
    const ENGINE: super::Engine = super::Engine::Lsm;
    include!("embedded_tests.rs");

    mod lsm_only {
        use super::*;
        include!("embedded_lsm_tests.rs");
    }
}

#[cfg(test)]
#[path = "embedded_v1_tests.rs"]
mod v1_tests;
