//! The embedded store's LSM engine (`store.engine = "lsm"`): fjall, a log-structured merge
//! tree, in the directory `syncgate.lsm` of the data dir.
//!
//! Owns: that directory's keyspaces, their key encoding, and the readers' views. The
//! mutations of a group commit are in `embedded_lsm_writer.rs` (the requests and the
//! batching are shared with the redb engine, `embedded_writer.rs`).
//!
//! Must never: make a group commit visible to readers before it is as durable as the policy
//! asks (fjall writes the journal, fsyncs it when asked, and only then publishes the commit's
//! seqno to snapshots), or answer a write before its commit returned.
//!
//! Why: an append to redb copies the B-tree pages on the path to the event's leaf and writes
//! them at the commit, tens of microseconds per event; an append here is one record in the
//! journal and one insert into a memtable, and sorted segment files are written and merged by
//! fjall's background threads (docs/performance.md, finding 15).
//!
//! Keys (all integers big-endian, so byte order is number order; an `i64` time has its sign
//! bit flipped). `sk(s)` is a string's length (u16) then its bytes, so one stream's (or one
//! user's) keys are one prefix no other stream's keys start with.
//! - per kind (`user_`/`room_`): `events sk(stream) seq -> event` (the value encoding of
//!   `embedded_format.rs`), `heads stream -> head u64 | count u64 | oldest_ts i64` (little
//!   endian; kept when a stream is trimmed to empty, so numbering never restarts), `age
//!   oldest_ts stream -> ()` (one entry per non-empty stream) and `expiry expires_at seq
//!   stream -> ()` for events with a ttl;
//! - `cursors sk(user) client -> seq u64 | last_used i64`, `idem key -> record` with its
//!   `idem_time created key -> ()` index, `counters name -> u64` and `meta` (format, epoch).

use std::ops::Bound;
use std::path::Path;

use fjall::{KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace};

use super::format::{decode_event, decode_idem, le8};
use super::writer::{Answer, Req};
use super::{Backend, Counts, CursorKey, Head, View, Which, C_CURSORS, C_MESSAGES, C_STREAMS, LSM_DIR_NAME, SCAN_PAGE};
use crate::store::{IdemRecord, Page, StoreError, StoreResult};

#[path = "embedded_lsm_writer.rs"]
mod group;
#[cfg(test)]
pub(super) use group::HEAD_CACHE;
use group::{Dirty, HeadCache, Ops, Writer};

const FORMAT: &[u8] = b"lsm-1";

/// Largest memtable of one keyspace before fjall seals it and flushes it to a segment file in
/// the background (fjall's default is 64 MiB). It bounds the store's memory beside the block
/// cache (`store.cache_bytes`): at most this per keyspace being written, plus sealed ones
/// until their flush ends (fjall stalls writes to a keyspace with four waiting). Fixed when a
/// keyspace is created: fjall keeps it in the directory's metadata.
pub(super) const MEMTABLE_BYTES: u64 = 8 << 20;

/// The same for the keyspaces of small records, most of them written again and again (heads,
/// cursors, counters, the age, expiry and idempotency indexes). Every write of a key is one
/// more entry in the memtable's skiplist until its flush, so 8 MiB of 40-byte head records
/// is well over 100,000 entries for a few thousand streams, and each insert searches all of
/// them; at 1 MiB the skiplist stays an eighth as large (docs/performance.md, finding 21).
pub(super) const SMALL_MEMTABLE_BYTES: u64 = 1 << 20;

/// fjall's background threads (flushes and compactions). fjall's default is one per core up
/// to four; with two, on a 2-core host, its first worker hands each compaction message it
/// receives back to the queue (so that it stays free for flushes) and, while the other
/// worker is busy, receives the same message again at once: a busy loop for as long as the
/// other one works. Four is fjall's own default on a host of four cores or more.
const FJALL_WORKERS: usize = 4;

/// fjall's write buffer (every keyspace's memtables, active and sealed) above which the writer
/// waits for flushes before its next group commit. fjall rotates a full memtable and stalls
/// writes at four sealed ones, but the rotation runs on its worker threads when they get to
/// it: with flushes under way, a write rate above theirs grows the active memtable past
/// `MEMTABLE_BYTES` meanwhile. Waiting here keeps the write buffer within this plus one
/// group commit.
pub(super) const WRITE_BUFFER_BYTES: u64 = 5 * MEMTABLE_BYTES;

/// The longest the writer waits for flushes before one group commit. A flush that fails
/// poisons the database, and the next commit then reports it; a flush slower than this lets
/// one more group in.
const FLUSH_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Maps a fjall error to a `StoreError`: I/O trouble (and a journal that failed to persist,
/// after which fjall refuses writes) is `Unavailable`, anything else `Internal`.
trait Fx<T> {
    fn fx(self, what: &str) -> StoreResult<T>;
}
impl<T> Fx<T> for Result<T, fjall::Error> {
    fn fx(self, what: &str) -> StoreResult<T> {
        self.map_err(|e| match e {
            e @ (fjall::Error::Io(_) | fjall::Error::Poisoned | fjall::Error::Locked) => {
                StoreError::Unavailable(format!("{what}: {e}"))
            }
            e => StoreError::Internal(format!("{what}: {e}")),
        })
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("corrupt {what} record in {LSM_DIR_NAME}"))
}

/// Length-prefixed string: a prefix that no longer string's encoding starts with.
fn sk(out: &mut Vec<u8>, s: &str) -> StoreResult<()> {
    let n = u16::try_from(s.len()).map_err(|_| StoreError::Internal(format!("key of {} bytes", s.len())))?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn prefixed(s: &str) -> StoreResult<Vec<u8>> {
    let mut k = Vec::with_capacity(2 + s.len() + 8);
    sk(&mut k, s)?;
    Ok(k)
}

fn event_key(stream: &str, seq: u64) -> StoreResult<Vec<u8>> {
    let mut k = prefixed(stream)?;
    k.extend_from_slice(&seq.to_be_bytes());
    Ok(k)
}

/// Seq of an event key.
fn key_seq(k: &[u8]) -> StoreResult<u64> {
    k.len().checked_sub(8).and_then(|at| k[at..].try_into().ok()).map(u64::from_be_bytes).ok_or_else(|| corrupt("key"))
}

/// An `i64` time as bytes in number order.
fn ord(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn unord(b: &[u8]) -> StoreResult<i64> {
    let b: [u8; 8] = b.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| corrupt("index"))?;
    Ok((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

fn time_key(t: i64, rest: &[&[u8]]) -> Vec<u8> {
    let mut k = ord(t).to_vec();
    rest.iter().for_each(|r| k.extend_from_slice(r));
    k
}

fn text(b: &[u8]) -> StoreResult<String> {
    std::str::from_utf8(b).map(str::to_string).map_err(|_| corrupt("key"))
}

fn encode_head(h: Head) -> [u8; 24] {
    let mut v = [0u8; 24];
    v[..8].copy_from_slice(&h.0.to_le_bytes());
    v[8..16].copy_from_slice(&h.1.to_le_bytes());
    v[16..].copy_from_slice(&h.2.to_le_bytes());
    v
}

fn decode_head(v: &[u8]) -> StoreResult<Head> {
    match (le8(v, 0), le8(v, 8), le8(v, 16)) {
        (Some(a), Some(b), Some(c)) => Ok((u64::from_le_bytes(a), u64::from_le_bytes(b), i64::from_le_bytes(c))),
        _ => Err(corrupt("head")),
    }
}

fn encode_pair(a: u64, b: i64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&a.to_le_bytes());
    v[8..].copy_from_slice(&b.to_le_bytes());
    v
}

fn decode_pair(v: &[u8]) -> StoreResult<(u64, i64)> {
    match (le8(v, 0), le8(v, 8)) {
        (Some(a), Some(b)) => Ok((u64::from_le_bytes(a), i64::from_le_bytes(b))),
        _ => Err(corrupt("cursor")),
    }
}

fn decode_u64(v: &[u8]) -> StoreResult<u64> {
    le8(v, 0).map(u64::from_le_bytes).ok_or_else(|| corrupt("counter"))
}

/// The keyspaces of one kind of stream.
struct Spaces {
    events: SingleWriterTxKeyspace,
    heads: SingleWriterTxKeyspace,
    age: SingleWriterTxKeyspace,
    expiry: SingleWriterTxKeyspace,
}

pub(super) struct LsmBackend {
    db: SingleWriterTxDatabase,
    /// Used by the writer thread alone (one commit at a time).
    heads: std::sync::Mutex<HeadCache>,
    user: Spaces,
    room: Spaces,
    cursors: SingleWriterTxKeyspace,
    idem: SingleWriterTxKeyspace,
    idem_time: SingleWriterTxKeyspace,
    counters: SingleWriterTxKeyspace,
}

impl LsmBackend {
    /// Opens (recovering the journal of a process that did not close it) or creates the
    /// engine's directory; answers it with the store's epoch.
    pub(super) fn open(dir: &Path, cache_bytes: usize) -> StoreResult<(Self, String)> {
        let what = format!("cannot open {}", dir.display());
        let db = SingleWriterTxDatabase::builder(dir)
            .cache_size(cache_bytes as u64)
            .worker_threads(FJALL_WORKERS)
            .open()
            .fx(&what)?;
        let ks = |name: &str| {
            let size = if name.ends_with("_events") { MEMTABLE_BYTES } else { SMALL_MEMTABLE_BYTES };
            db.keyspace(name, || KeyspaceCreateOptions::default().max_memtable_size(size)).fx(&what)
        };
        let spaces = |p: &str| -> StoreResult<Spaces> {
            Ok(Spaces {
                events: ks(&format!("{p}_events"))?,
                heads: ks(&format!("{p}_heads"))?,
                age: ks(&format!("{p}_age"))?,
                expiry: ks(&format!("{p}_expiry"))?,
            })
        };
        let meta = ks("meta")?;
        let b = LsmBackend {
            user: spaces("user")?,
            room: spaces("room")?,
            cursors: ks("cursors")?,
            idem: ks("idem")?,
            idem_time: ks("idem_time")?,
            counters: ks("counters")?,
            heads: std::sync::Mutex::new(HeadCache::default()),
            db,
        };
        let snap = b.db.read_tx();
        let epoch = match snap.get(&meta, "format").fx("read format")? {
            Some(f) if &*f == FORMAT => {
                let e = snap.get(&meta, "epoch").fx("read epoch")?.ok_or_else(|| corrupt("meta"))?;
                text(&e)?
            }
            Some(f) => {
                return Err(StoreError::Internal(format!(
                    "{LSM_DIR_NAME} has format {}, this build reads {}",
                    String::from_utf8_lossy(&f),
                    String::from_utf8_lossy(FORMAT)
                )))
            }
            None => {
                let e = format!("{:08x}", rand::random::<u32>());
                let mut tx = b.db.write_tx().durability(Some(PersistMode::SyncAll));
                tx.insert(&meta, "epoch", e.as_str());
                tx.insert(&meta, "format", FORMAT);
                tx.commit().fx("write meta")?;
                e
            }
        };
        Ok((b, epoch))
    }

    fn keyspaces(&self) -> [&SingleWriterTxKeyspace; 12] {
        let (u, r) = (&self.user, &self.room);
        [
            &u.events,
            &u.heads,
            &u.age,
            &u.expiry,
            &r.events,
            &r.heads,
            &r.age,
            &r.expiry,
            &self.cursors,
            &self.idem,
            &self.idem_time,
            &self.counters,
        ]
    }

    /// Waits while the write buffer is above [`WRITE_BUFFER_BYTES`] and a flush that will
    /// shrink it is under way (a keyspace has a sealed memtable), for at most
    /// [`FLUSH_WAIT_MAX`]. With no sealed memtable nothing would shrink it, so it does not
    /// wait: the excess is then in active memtables, each below its rotation size or about to
    /// be rotated. Answers how long it waited (zero when it did not).
    fn wait_for_flushes(&self) -> std::time::Duration {
        let start = std::time::Instant::now();
        let mut waited = false;
        while self.db.write_buffer_size() > WRITE_BUFFER_BYTES
            && start.elapsed() < FLUSH_WAIT_MAX
            && self.keyspaces().iter().any(|k| k.inner().sealed_memtable_count() > 0)
        {
            waited = true;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if waited {
            start.elapsed()
        } else {
            std::time::Duration::ZERO
        }
    }

    fn spaces(&self, which: Which) -> &Spaces {
        match which {
            Which::User => &self.user,
            Which::Room => &self.room,
        }
    }
}

impl Backend for LsmBackend {
    fn view(&self) -> StoreResult<Box<dyn View + '_>> {
        Ok(Box::new(LsmView { b: self, snap: self.db.read_tx() }))
    }

    fn commit(&self, batch: &[Req], durable: bool) -> StoreResult<Vec<Answer>> {
        // Not durable (fsync never): the journal is still handed to the OS, so a crash of the
        // process loses nothing answered; one of the machine, up to the last durable commit.
        let mode = if durable { PersistMode::SyncAll } else { PersistMode::Buffer };
        let mut cache = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        let mut ops = if Ops::batch_can_take(batch) {
            // The writer thread is the only writer, so bypassing the transaction's lock is safe.
            Ops::Batch(self.db.inner().batch().durability(Some(mode)), self.db.read_tx())
        } else {
            Ops::Tx(self.db.write_tx().durability(Some(mode)))
        };
        let done = {
            let (user, room) = (Dirty::default(), Dirty::default());
            let mut w = Writer { b: self, cache: &mut cache, ops: &mut ops, user, room, cursors_delta: 0 };
            batch.iter().map(|r| w.apply(r)).collect::<StoreResult<Vec<_>>>().and_then(|a| Ok((a, w.finish()?)))
        };
        // The cache only ever holds committed heads; after a failure it starts again.
        let (answers, written) = match done.and_then(|d| ops.commit().fx("commit").map(|()| d)) {
            Ok(d) => d,
            Err(e) => {
                cache.clear();
                return Err(e);
            }
        };
        cache.commit(written);
        Ok(answers)
    }

    fn make_room(&self) -> std::time::Duration {
        self.wait_for_flushes()
    }

    fn memory(&self) -> Option<(u64, u64)> {
        Some((self.db.inner().cache_size(), self.db.write_buffer_size()))
    }
}

struct LsmView<'a> {
    b: &'a LsmBackend,
    snap: fjall::Snapshot,
}

impl View for LsmView<'_> {
    fn page(&self, which: Which, stream: &str, after: u64, limit: usize) -> StoreResult<Page> {
        let sp = self.b.spaces(which);
        let head = match self.snap.get(&sp.heads, stream).fx("read head")? {
            Some(v) => decode_head(&v)?.0,
            None => 0,
        };
        let prefix = prefixed(stream)?;
        let first = match self.snap.prefix(&sp.events, &prefix).next() {
            Some(g) => key_seq(&g.key().fx("read stream")?)?,
            None => head + 1,
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        if limit > 0 && after < u64::MAX {
            let from = event_key(stream, after + 1)?;
            let to = event_key(stream, u64::MAX)?;
            for g in self.snap.range(&sp.events, from..=to).take(limit) {
                let (k, v) = g.into_inner().fx("read stream")?;
                out.push(decode_event(key_seq(&k)?, &v)?);
            }
        }
        Ok(Page { events: out, head, first })
    }

    fn cursor(&self, user: &str, client: &str) -> StoreResult<Option<(u64, i64)>> {
        let mut k = prefixed(user)?;
        k.extend_from_slice(client.as_bytes());
        self.snap.get(&self.b.cursors, k).fx("read cursor")?.map(|v| decode_pair(&v)).transpose()
    }

    fn cursors(&self, user: &str, limit: usize) -> StoreResult<Vec<(String, u64)>> {
        let prefix = prefixed(user)?;
        let mut out = Vec::new();
        for g in self.snap.prefix(&self.b.cursors, &prefix).take(limit) {
            let (k, v) = g.into_inner().fx("scan cursors")?;
            out.push((text(&k[prefix.len()..])?, decode_pair(&v)?.0));
        }
        Ok(out)
    }

    fn idem(&self, key: &str) -> StoreResult<Option<(i64, IdemRecord)>> {
        self.snap.get(&self.b.idem, key).fx("read idempotency")?.map(|v| decode_idem(&v)).transpose()
    }

    fn counts(&self) -> StoreResult<Counts> {
        let get = |k: &str| -> StoreResult<u64> {
            self.snap.get(&self.b.counters, k).fx("read counter")?.map_or(Ok(0), |v| decode_u64(&v))
        };
        let oldest_ts = match self.snap.first_key_value(&self.b.user.age) {
            Some(g) => Some(unord(&g.key().fx("read age index")?)?),
            None => None,
        };
        Ok(Counts { messages: get(C_MESSAGES)?, streams: get(C_STREAMS)?, cursors: get(C_CURSORS)?, oldest_ts })
    }

    fn long_streams(
        &self,
        which: Which,
        from: Option<&str>,
        max_len: u64,
    ) -> StoreResult<(Vec<String>, Option<String>)> {
        let lower = from.map_or(Bound::Unbounded, |f| Bound::Excluded(f.as_bytes().to_vec()));
        let (mut long, mut seen) = (Vec::new(), 0);
        for g in self.snap.range(&self.b.spaces(which).heads, (lower, Bound::Unbounded)) {
            let (k, v) = g.into_inner().fx("scan heads")?;
            if decode_head(&v)?.1 > max_len {
                long.push(text(&k)?);
            }
            seen += 1;
            if seen == SCAN_PAGE {
                return Ok((long, Some(text(&k)?)));
            }
        }
        Ok((long, None))
    }

    fn old_cursors(&self, from: Option<&CursorKey>, cutoff: i64) -> StoreResult<(Vec<CursorKey>, Option<CursorKey>)> {
        let lower = match from {
            Some((u, c)) => {
                let mut k = prefixed(u)?;
                k.extend_from_slice(c.as_bytes());
                Bound::Excluded(k)
            }
            None => Bound::Unbounded,
        };
        let (mut old, mut seen) = (Vec::new(), 0);
        for g in self.snap.range(&self.b.cursors, (lower, Bound::Unbounded)) {
            let (k, v) = g.into_inner().fx("scan cursors")?;
            let n = k.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize).ok_or_else(|| corrupt("cursor"))?;
            let user = text(k.get(2..2 + n).ok_or_else(|| corrupt("cursor"))?)?;
            let client = text(&k[2 + n..])?;
            if decode_pair(&v)?.1 < cutoff {
                old.push((user.clone(), client.clone()));
            }
            seen += 1;
            if seen == SCAN_PAGE {
                return Ok((old, Some((user, client))));
            }
        }
        Ok((old, None))
    }
}
