//! The embedded store's LSM engine (`store.engine = "lsm"`): fjall, a log-structured merge
//! tree, in the directory `syncgate.lsm` of the data dir.
//!
//! Owns: that directory's keyspaces, their key encoding, and every mutation of the writer
//! thread's group commit on this engine (the requests and the batching are shared with the
//! redb engine, `embedded_writer.rs`).
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

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::Path;

use fjall::{KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace};

use super::format::{decode_event, decode_idem, encode_event, encode_idem, event_times, le8};
use super::writer::{Answer, Req, SweepOp};
use super::{
    ms, Backend, Counts, CursorKey, Head, View, Which, C_CURSORS, C_MESSAGES, C_STREAMS, EMPTY, LSM_DIR_NAME,
    NO_EXPIRY, SCAN_PAGE, SWEEP_CHUNK,
};
use crate::store::{IdemRecord, NewEvent, Page, StoreError, StoreResult};

const FORMAT: &[u8] = b"lsm-1";

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
        let db = SingleWriterTxDatabase::builder(dir).cache_size(cache_bytes as u64).open().fx(&what)?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default).fx(&what);
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
        let mut tx = self.db.write_tx().durability(Some(mode));
        let answers = {
            let mut w =
                Writer { b: self, tx: &mut tx, user: Dirty::default(), room: Dirty::default(), cursors_delta: 0 };
            let answers = batch.iter().map(|r| w.apply(r)).collect::<StoreResult<Vec<_>>>()?;
            w.finish()?;
            answers
        };
        tx.commit().fx("commit")?;
        Ok(answers)
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

/// What a group commit changed of one kind's heads and counts, written at its end.
#[derive(Default)]
struct Dirty {
    heads: HashMap<String, Head>,
    /// Streams that lost events in this sweep operation: their `oldest_ts` is looked at again.
    touched: HashSet<String>,
    messages: i64,
    streams: i64,
}

/// One group commit: the transaction (which reads its own writes) and what is written at its
/// end.
struct Writer<'a, 'd> {
    b: &'a LsmBackend,
    tx: &'a mut fjall::SingleWriterWriteTx<'d>,
    user: Dirty,
    room: Dirty,
    cursors_delta: i64,
}

impl Writer<'_, '_> {
    fn dirty(&mut self, which: Which) -> &mut Dirty {
        match which {
            Which::User => &mut self.user,
            Which::Room => &mut self.room,
        }
    }

    fn head(&mut self, which: Which, stream: &str) -> StoreResult<Head> {
        if let Some(h) = self.dirty(which).heads.get(stream) {
            return Ok(*h);
        }
        match self.tx.get(&self.b.spaces(which).heads, stream).fx("read head")? {
            Some(v) => decode_head(&v),
            None => Ok((0, 0, EMPTY)),
        }
    }

    fn set_head(&mut self, which: Which, stream: &str, head: Head) {
        let d = self.dirty(which);
        match d.heads.get_mut(stream) {
            Some(h) => *h = head,
            None => {
                d.heads.insert(stream.to_string(), head);
            }
        }
    }

    fn append(&mut self, which: Which, ev: &NewEvent) -> StoreResult<u64> {
        let s = ev.stream.as_str();
        let (head, count, mut oldest) = self.head(which, s)?;
        let seq = head + 1;
        let expires = ev.ttl.map_or(NO_EXPIRY, |t| ev.ts.saturating_add(ms(t)));
        let sp = self.b.spaces(which);
        self.tx.insert(&sp.events, event_key(s, seq)?, encode_event(ev, expires));
        if expires != NO_EXPIRY {
            self.tx.insert(&sp.expiry, time_key(expires, &[&seq.to_be_bytes(), s.as_bytes()]), b"");
        }
        if count == 0 {
            // Empty until now: this event is its oldest (an empty stream has no age entry).
            self.set_oldest(which, s, oldest, ev.ts);
            oldest = ev.ts;
        }
        self.set_head(which, s, (seq, count + 1, oldest));
        let d = self.dirty(which);
        d.messages += 1;
        d.streams += i64::from(count == 0);
        Ok(seq)
    }

    /// Moves `stream`'s age index entry from `old` to `new` (`EMPTY`: no entry).
    fn set_oldest(&mut self, which: Which, stream: &str, old: i64, new: i64) {
        if old == new {
            return;
        }
        let age = &self.b.spaces(which).age;
        if old != EMPTY {
            self.tx.remove(age, time_key(old, &[stream.as_bytes()]));
        }
        if new != EMPTY {
            self.tx.insert(age, time_key(new, &[stream.as_bytes()]), b"");
        }
    }

    /// Deletes one event and its expiry entry; the head stays. False if it was not there.
    fn delete(&mut self, which: Which, stream: &str, seq: u64) -> StoreResult<bool> {
        let sp = self.b.spaces(which);
        let key = event_key(stream, seq)?;
        let times = match self.tx.get(&sp.events, &key).fx("read event")? {
            Some(v) => event_times(&v)?,
            None => return Ok(false),
        };
        self.tx.remove(&sp.events, key);
        if times.1 != NO_EXPIRY {
            self.tx.remove(&sp.expiry, time_key(times.1, &[&seq.to_be_bytes(), stream.as_bytes()]));
        }
        let (head, count, oldest) = self.head(which, stream)?;
        self.set_head(which, stream, (head, count.saturating_sub(1), oldest));
        let d = self.dirty(which);
        if !d.touched.contains(stream) {
            d.touched.insert(stream.to_string());
        }
        d.messages -= 1;
        d.streams -= i64::from(count == 1);
        Ok(true)
    }

    /// The first `max` events of `stream`: (seq, ts).
    fn front(&self, which: Which, stream: &str, max: usize) -> StoreResult<Vec<(u64, i64)>> {
        let prefix = prefixed(stream)?;
        let mut out = Vec::new();
        for g in self.tx.prefix(&self.b.spaces(which).events, &prefix).take(max) {
            let (k, v) = g.into_inner().fx("scan stream")?;
            out.push((key_seq(&k)?, event_times(&v)?.0));
        }
        Ok(out)
    }

    /// Brings the `oldest_ts` (and age entry) of every stream that lost events up to date.
    fn rescore(&mut self, which: Which) -> StoreResult<()> {
        for stream in std::mem::take(&mut self.dirty(which).touched) {
            let (head, count, oldest) = self.head(which, &stream)?;
            let now = self.front(which, &stream, 1)?.first().map_or(EMPTY, |e| e.1);
            self.set_oldest(which, &stream, oldest, now);
            self.set_head(which, &stream, (head, count, now));
        }
        Ok(())
    }

    /// Deletes up to `SWEEP_CHUNK` events accepted before `cutoff`, oldest streams first,
    /// each from its front.
    fn drop_older(&mut self, which: Which, cutoff: i64) -> StoreResult<(u64, bool)> {
        let mut streams = Vec::new();
        for g in self.tx.range(&self.b.spaces(which).age, ..ord(cutoff).to_vec()).take(SWEEP_CHUNK) {
            streams.push(text(&g.key().fx("scan age index")?[8..])?);
        }
        let (mut removed, mut more) = (0u64, streams.len() == SWEEP_CHUNK);
        for s in &streams {
            let budget = SWEEP_CHUNK - removed as usize;
            let victims: Vec<u64> =
                self.front(which, s, budget)?.into_iter().take_while(|e| e.1 < cutoff).map(|e| e.0).collect();
            for seq in victims {
                removed += u64::from(self.delete(which, s, seq)?);
            }
            if removed as usize >= SWEEP_CHUNK {
                more = true;
                break;
            }
        }
        self.rescore(which)?;
        Ok((removed, more))
    }

    /// Deletes up to `SWEEP_CHUNK` events whose expiry is before `cutoff`.
    fn drop_expired(&mut self, which: Which, cutoff: i64) -> StoreResult<(u64, bool)> {
        let b = self.b;
        let expiry = &b.spaces(which).expiry;
        let mut keys = Vec::new();
        for g in self.tx.range(expiry, ..ord(cutoff).to_vec()).take(SWEEP_CHUNK) {
            let k = g.key().fx("scan index")?;
            let seq = k.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
            keys.push((k.to_vec(), seq.ok_or_else(|| corrupt("index"))?, text(&k[16..])?));
        }
        let mut removed = 0;
        for (k, seq, s) in &keys {
            if self.delete(which, s, *seq)? {
                removed += 1;
            } else {
                // An index entry without its event: drop it so the sweep cannot spin on it.
                self.tx.remove(expiry, k.as_slice());
            }
        }
        self.rescore(which)?;
        Ok((removed, keys.len() == SWEEP_CHUNK))
    }

    /// Deletes the oldest events of streams longer than `max_len`, at most `SWEEP_CHUNK`.
    fn trim(&mut self, which: Which, streams: &[String], max_len: u64) -> StoreResult<(u64, bool)> {
        let (mut budget, mut removed, mut more) = (SWEEP_CHUNK as u64, 0, false);
        for s in streams {
            let excess = self.head(which, s)?.1.saturating_sub(max_len);
            if excess == 0 {
                continue;
            }
            if budget == 0 {
                return Ok((removed, true));
            }
            let take = excess.min(budget);
            let seqs = self.front(which, s, take as usize)?;
            for (seq, _) in &seqs {
                removed += u64::from(self.delete(which, s, *seq)?);
            }
            budget -= take;
            // Fewer events than the count says: do not loop on a wrong counter.
            more |= excess > take && seqs.len() as u64 == take;
        }
        self.rescore(which)?;
        Ok((removed, more))
    }

    fn cursor_key(user: &str, client: &str) -> StoreResult<Vec<u8>> {
        let mut k = prefixed(user)?;
        k.extend_from_slice(client.as_bytes());
        Ok(k)
    }

    fn get_cursor(&self, key: &[u8]) -> StoreResult<Option<(u64, i64)>> {
        self.tx.get(&self.b.cursors, key).fx("read cursor")?.map(|v| decode_pair(&v)).transpose()
    }

    /// Forgets the least recently used cursors of `user` past `max`, never `keep` (the one
    /// just created).
    fn evict_devices(&mut self, user: &str, keep: &str, max: usize) -> StoreResult<()> {
        let prefix = prefixed(user)?;
        loop {
            let (mut count, mut oldest) = (0usize, None::<(Vec<u8>, i64)>);
            for g in self.tx.prefix(&self.b.cursors, &prefix) {
                let (k, v) = g.into_inner().fx("scan cursors")?;
                count += 1;
                let used = decode_pair(&v)?.1;
                if &k[prefix.len()..] != keep.as_bytes() && oldest.as_ref().is_none_or(|(_, o)| used < *o) {
                    oldest = Some((k.to_vec(), used));
                }
            }
            match oldest {
                Some((key, _)) if count > max => {
                    self.tx.remove(&self.b.cursors, key);
                    self.cursors_delta -= 1;
                }
                _ => return Ok(()),
            }
        }
    }

    fn get_idem(&self, key: &str) -> StoreResult<Option<(i64, IdemRecord)>> {
        self.tx.get(&self.b.idem, key).fx("read idempotency")?.map(|v| decode_idem(&v)).transpose()
    }

    fn apply(&mut self, req: &Req) -> StoreResult<Answer> {
        Ok(match req {
            Req::AppendUser(evs, _) => {
                Answer::Seqs(evs.iter().map(|e| self.append(Which::User, e)).collect::<StoreResult<_>>()?)
            }
            Req::AppendRoom(ev, _) => Answer::Seq(self.append(Which::Room, ev)?),
            Req::SetCursor { user, client, seq, now, max_devices, .. } => {
                let key = Self::cursor_key(user, client)?;
                let cur = self.get_cursor(&key)?.map(|c| c.0);
                let new = cur.map_or(*seq, |c| c.max(*seq));
                self.tx.insert(&self.b.cursors, key, encode_pair(new, *now));
                if cur.is_none() {
                    self.cursors_delta += 1;
                    self.evict_devices(user, client, *max_devices)?;
                }
                Answer::Seq(new)
            }
            Req::Touch { user, client, now } => {
                let key = Self::cursor_key(user, client)?;
                if let Some((seq, used)) = self.get_cursor(&key)? {
                    if *now > used {
                        self.tx.insert(&self.b.cursors, key, encode_pair(seq, *now));
                    }
                }
                Answer::Done
            }
            Req::IdemPut { key, record, now, created: new_created, ttl_ms, .. } => {
                if let Some((created, rec)) = self.get_idem(key)? {
                    let answers_claim = rec.status == 0 && record.status != 0;
                    if created.saturating_add(*ttl_ms) > *now && !answers_claim {
                        return Ok(Answer::Idem(Some(rec)));
                    }
                    self.tx.remove(&self.b.idem_time, time_key(created, &[key.as_bytes()]));
                }
                self.tx.insert(&self.b.idem, key.as_str(), encode_idem(*new_created, record));
                self.tx.insert(&self.b.idem_time, time_key(*new_created, &[key.as_bytes()]), b"");
                Answer::Idem(None)
            }
            Req::IdemRelease { key, .. } => {
                if let Some((created, rec)) = self.get_idem(key)? {
                    if rec.status == 0 {
                        self.tx.remove(&self.b.idem_time, time_key(created, &[key.as_bytes()]));
                        self.tx.remove(&self.b.idem, key.as_str());
                    }
                }
                Answer::Idem(None)
            }
            Req::Sweep(op, _) => {
                let (n, more) = self.sweep(op)?;
                Answer::Swept(n, more)
            }
            Req::Close(_) => Answer::Done,
            #[cfg(test)]
            Req::Panic(_) => panic!("writer panic requested by a test"),
        })
    }

    fn sweep(&mut self, op: &SweepOp) -> StoreResult<(u64, bool)> {
        match op {
            SweepOp::Expired { kind, now } => self.drop_expired(*kind, now.saturating_add(1)),
            SweepOp::Older { kind, cutoff } => self.drop_older(*kind, *cutoff),
            SweepOp::TrimLen { kind, streams, max_len } => self.trim(*kind, streams, *max_len),
            SweepOp::Cursors { keys, cutoff } => {
                let mut removed = 0;
                for (u, c) in keys {
                    let key = Self::cursor_key(u, c)?;
                    if self.get_cursor(&key)?.is_some_and(|(_, used)| used < *cutoff) {
                        self.tx.remove(&self.b.cursors, key);
                        removed += 1;
                    }
                }
                self.cursors_delta -= removed as i64;
                Ok((removed, false))
            }
            SweepOp::Idem { cutoff } => {
                let mut keys = Vec::new();
                for g in self.tx.range(&self.b.idem_time, ..ord(*cutoff).to_vec()).take(SWEEP_CHUNK) {
                    keys.push(g.key().fx("scan idempotency")?.to_vec());
                }
                for k in &keys {
                    self.tx.remove(&self.b.idem, &k[8..]);
                    self.tx.remove(&self.b.idem_time, k.as_slice());
                }
                Ok((keys.len() as u64, keys.len() == SWEEP_CHUNK))
            }
        }
    }

    /// Writes what is kept for the end of the group commit: heads and counters.
    fn finish(&mut self) -> StoreResult<()> {
        for which in [Which::User, Which::Room] {
            self.rescore(which)?;
            let heads = std::mem::take(&mut self.dirty(which).heads);
            let space = &self.b.spaces(which).heads;
            for (stream, head) in heads {
                self.tx.insert(space, stream.as_str(), encode_head(head));
            }
        }
        for (name, delta) in
            [(C_MESSAGES, self.user.messages), (C_STREAMS, self.user.streams), (C_CURSORS, self.cursors_delta)]
        {
            if delta != 0 {
                let v = self.tx.get(&self.b.counters, name).fx("read counter")?.map_or(Ok(0), |v| decode_u64(&v))?;
                let v = u64::try_from(i128::from(v) + i128::from(delta)).unwrap_or(0);
                self.tx.insert(&self.b.counters, name, v.to_le_bytes());
            }
        }
        Ok(())
    }
}
