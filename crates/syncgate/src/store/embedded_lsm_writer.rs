//! One group commit on the LSM engine: every mutation the writer thread's requests make,
//! in one atomic fjall commit, and the heads and counters written once at its end. A group
//! that reads what it wrote (cursors, idempotency records, sweeps) runs in a single-writer
//! transaction, which reads its own writes; a group of appends only, which reads nothing it
//! wrote, goes to a plain write batch (see [`Ops`]).
//!
//! Owns: the mutations' order and bookkeeping (heads, per-stream age entries, counters).
//! Must never: write a head more than once per group commit, or leave an age entry that
//! does not match its stream's oldest event.

use std::collections::{HashMap, HashSet};

use fjall::Readable;

use super::super::format::{decode_idem, encode_event, encode_idem, event_times};
use super::super::writer::{Answer, Req, SweepOp};
use super::super::{ms, Head, Which, C_CURSORS, C_MESSAGES, C_STREAMS, EMPTY, NO_EXPIRY, SWEEP_CHUNK};
use super::{
    corrupt, decode_head, decode_pair, decode_u64, encode_head, encode_pair, event_key, key_seq, ord, prefixed, text,
    time_key, Fx, LsmBackend,
};
use crate::store::{IdemRecord, NewEvent, StoreResult};

/// What a group commit changed of one kind's heads and counts, written at its end.
#[derive(Default)]
pub(super) struct Dirty {
    heads: HashMap<String, Head>,
    /// Streams that lost events in this sweep operation: their `oldest_ts` is looked at again.
    touched: HashSet<String>,
    messages: i64,
    streams: i64,
}

/// Where a group commit's writes go, and what its reads see.
pub(super) enum Ops<'d> {
    /// A transaction: reads see the group's own writes. fjall keeps the writes in a memtable
    /// of the transaction's own and copies them into the keyspaces' memtables at commit.
    Tx(fjall::SingleWriterWriteTx<'d>),
    /// Appends only. Their reads are of heads the group has not written (written heads are
    /// the writer's own, in [`Dirty`], until `finish`) and of counters read once before they
    /// are written, so they read the last commit's snapshot, and the writes go once, straight
    /// into the keyspaces' memtables. Every key is written at most once per group (a batch
    /// gives all its writes one sequence number).
    Batch(fjall::OwnedWriteBatch, fjall::Snapshot),
}

impl<'d> Ops<'d> {
    /// Whether a group of these requests may use [`Ops::Batch`].
    pub(super) fn batch_can_take(batch: &[Req]) -> bool {
        batch.iter().all(|r| matches!(r, Req::AppendUser(..) | Req::AppendRoom(..) | Req::Close(_)))
    }

    fn get(&self, space: &fjall::SingleWriterTxKeyspace, key: impl AsRef<[u8]>) -> fjall::Result<Option<fjall::Slice>> {
        match self {
            Ops::Tx(tx) => tx.get(space, key),
            Ops::Batch(_, snap) => snap.get(space, key),
        }
    }

    fn insert(
        &mut self,
        space: &fjall::SingleWriterTxKeyspace,
        key: impl Into<fjall::Slice>,
        value: impl Into<fjall::Slice>,
    ) {
        match self {
            Ops::Tx(tx) => tx.insert(space, key, value),
            Ops::Batch(batch, _) => batch.insert(space.inner(), key, value),
        }
    }

    fn remove(&mut self, space: &fjall::SingleWriterTxKeyspace, key: impl Into<fjall::Slice>) {
        match self {
            Ops::Tx(tx) => tx.remove(space, key),
            Ops::Batch(batch, _) => batch.remove(space.inner(), key),
        }
    }

    /// The transaction, for scans, which must see the group's own writes: a group that scans
    /// is never given a batch ([`Ops::batch_can_take`]), so this is an internal error.
    fn tx(&self) -> StoreResult<&fjall::SingleWriterWriteTx<'d>> {
        match self {
            Ops::Tx(tx) => Ok(tx),
            Ops::Batch(..) => {
                Err(crate::store::StoreError::Internal("a scan in a group commit of appends only".into()))
            }
        }
    }

    /// Commits everything at once, as durable as the batch or transaction was made.
    pub(super) fn commit(self) -> fjall::Result<()> {
        match self {
            Ops::Tx(tx) => tx.commit(),
            Ops::Batch(batch, _) => batch.commit(),
        }
    }
}

/// One group commit: where its writes go ([`Ops`]) and what is written at its end.
pub(super) struct Writer<'a, 'd> {
    pub(super) b: &'a LsmBackend,
    /// Heads as of the last commit, kept across commits (see [`HeadCache`]).
    pub(super) cache: &'a mut HeadCache,
    pub(super) ops: &'a mut Ops<'d>,
    pub(super) user: Dirty,
    pub(super) room: Dirty,
    pub(super) cursors_delta: i64,
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
        if let Some(h) = self.cache.get(which, stream) {
            return Ok(h);
        }
        // Heads are written only at `finish`, so this reads the last commit's head.
        let head = match self.ops.get(&self.b.spaces(which).heads, stream).fx("read head")? {
            Some(v) => decode_head(&v)?,
            None => (0, 0, EMPTY),
        };
        self.cache.put(which, stream.to_string(), head);
        Ok(head)
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
        self.ops.insert(&sp.events, event_key(s, seq)?, encode_event(ev, expires));
        if expires != NO_EXPIRY {
            self.ops.insert(&sp.expiry, time_key(expires, &[&seq.to_be_bytes(), s.as_bytes()]), b"");
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
            self.ops.remove(age, time_key(old, &[stream.as_bytes()]));
        }
        if new != EMPTY {
            self.ops.insert(age, time_key(new, &[stream.as_bytes()]), b"");
        }
    }

    /// Deletes one event and its expiry entry; the head stays. False if it was not there.
    fn delete(&mut self, which: Which, stream: &str, seq: u64) -> StoreResult<bool> {
        let sp = self.b.spaces(which);
        let key = event_key(stream, seq)?;
        let times = match self.ops.get(&sp.events, &key).fx("read event")? {
            Some(v) => event_times(&v)?,
            None => return Ok(false),
        };
        self.ops.remove(&sp.events, key);
        if times.1 != NO_EXPIRY {
            self.ops.remove(&sp.expiry, time_key(times.1, &[&seq.to_be_bytes(), stream.as_bytes()]));
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
        for g in self.ops.tx()?.prefix(&self.b.spaces(which).events, &prefix).take(max) {
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
        for g in self.ops.tx()?.range(&self.b.spaces(which).age, ..ord(cutoff).to_vec()).take(SWEEP_CHUNK) {
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
        for g in self.ops.tx()?.range(expiry, ..ord(cutoff).to_vec()).take(SWEEP_CHUNK) {
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
                self.ops.remove(expiry, k.as_slice());
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
        self.ops.get(&self.b.cursors, key).fx("read cursor")?.map(|v| decode_pair(&v)).transpose()
    }

    /// Forgets the least recently used cursors of `user` past `max`, never `keep` (the one
    /// just created).
    fn evict_devices(&mut self, user: &str, keep: &str, max: usize) -> StoreResult<()> {
        let prefix = prefixed(user)?;
        loop {
            let (mut count, mut oldest) = (0usize, None::<(Vec<u8>, i64)>);
            for g in self.ops.tx()?.prefix(&self.b.cursors, &prefix) {
                let (k, v) = g.into_inner().fx("scan cursors")?;
                count += 1;
                let used = decode_pair(&v)?.1;
                if &k[prefix.len()..] != keep.as_bytes() && oldest.as_ref().is_none_or(|(_, o)| used < *o) {
                    oldest = Some((k.to_vec(), used));
                }
            }
            match oldest {
                Some((key, _)) if count > max => {
                    self.ops.remove(&self.b.cursors, key);
                    self.cursors_delta -= 1;
                }
                _ => return Ok(()),
            }
        }
    }

    fn get_idem(&self, key: &str) -> StoreResult<Option<(i64, IdemRecord)>> {
        self.ops.get(&self.b.idem, key).fx("read idempotency")?.map(|v| decode_idem(&v)).transpose()
    }

    pub(super) fn apply(&mut self, req: &Req) -> StoreResult<Answer> {
        Ok(match req {
            Req::AppendUser(evs, _) => {
                Answer::Seqs(evs.iter().map(|e| self.append(Which::User, e)).collect::<StoreResult<_>>()?)
            }
            Req::AppendRoom(ev, _) => Answer::Seq(self.append(Which::Room, ev)?),
            Req::SetCursor { user, client, seq, now, max_devices, .. } => {
                let key = Self::cursor_key(user, client)?;
                let cur = self.get_cursor(&key)?.map(|c| c.0);
                let new = cur.map_or(*seq, |c| c.max(*seq));
                self.ops.insert(&self.b.cursors, key, encode_pair(new, *now));
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
                        self.ops.insert(&self.b.cursors, key, encode_pair(seq, *now));
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
                    self.ops.remove(&self.b.idem_time, time_key(created, &[key.as_bytes()]));
                }
                self.ops.insert(&self.b.idem, key.as_str(), encode_idem(*new_created, record));
                self.ops.insert(&self.b.idem_time, time_key(*new_created, &[key.as_bytes()]), b"");
                Answer::Idem(None)
            }
            Req::IdemRelease { key, .. } => {
                if let Some((created, rec)) = self.get_idem(key)? {
                    if rec.status == 0 {
                        self.ops.remove(&self.b.idem_time, time_key(created, &[key.as_bytes()]));
                        self.ops.remove(&self.b.idem, key.as_str());
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
                        self.ops.remove(&self.b.cursors, key);
                        removed += 1;
                    }
                }
                self.cursors_delta -= removed as i64;
                Ok((removed, false))
            }
            SweepOp::Idem { cutoff } => {
                let mut keys = Vec::new();
                for g in self.ops.tx()?.range(&self.b.idem_time, ..ord(*cutoff).to_vec()).take(SWEEP_CHUNK) {
                    keys.push(g.key().fx("scan idempotency")?.to_vec());
                }
                for k in &keys {
                    self.ops.remove(&self.b.idem, &k[8..]);
                    self.ops.remove(&self.b.idem_time, k.as_slice());
                }
                Ok((keys.len() as u64, keys.len() == SWEEP_CHUNK))
            }
        }
    }

    /// Writes what is kept for the end of the group commit: heads and counters.
    /// Answers the heads written, for [`HeadCache::commit`] once the commit is done.
    pub(super) fn finish(&mut self) -> StoreResult<[HashMap<String, Head>; 2]> {
        for which in [Which::User, Which::Room] {
            self.rescore(which)?;
            let space = &self.b.spaces(which).heads;
            let dirty = match which {
                Which::User => &self.user,
                Which::Room => &self.room,
            };
            for (stream, head) in &dirty.heads {
                self.ops.insert(space, stream.as_str(), encode_head(*head));
            }
        }
        for (name, delta) in
            [(C_MESSAGES, self.user.messages), (C_STREAMS, self.user.streams), (C_CURSORS, self.cursors_delta)]
        {
            if delta != 0 {
                let v = self.ops.get(&self.b.counters, name).fx("read counter")?.map_or(Ok(0), |v| decode_u64(&v))?;
                let v = u64::try_from(i128::from(v) + i128::from(delta)).unwrap_or(0);
                self.ops.insert(&self.b.counters, name, v.to_le_bytes());
            }
        }
        Ok([std::mem::take(&mut self.user.heads), std::mem::take(&mut self.room.heads)])
    }
}

/// Stream heads as of the last commit, kept by the writer thread across group commits so an
/// append to a stream written recently does not look its head up in the LSM tree (a search
/// of the memtables and segments; about a fifth of the writer's time in a 10k batch). Only
/// the writer changes heads, so the cache is exact: a head read from the tree is the last
/// commit's, and the heads a commit wrote go in once that commit succeeded. Bounded: at
/// `HEAD_CACHE` streams of a kind it starts again empty.
#[derive(Default)]
pub(super) struct HeadCache {
    user: HashMap<String, Head>,
    room: HashMap<String, Head>,
}

/// Most streams of one kind in [`HeadCache`] (about 100 bytes each).
pub(crate) const HEAD_CACHE: usize = 32_768;

impl HeadCache {
    fn kind(&mut self, which: Which) -> &mut HashMap<String, Head> {
        match which {
            Which::User => &mut self.user,
            Which::Room => &mut self.room,
        }
    }

    fn get(&mut self, which: Which, stream: &str) -> Option<Head> {
        self.kind(which).get(stream).copied()
    }

    fn put(&mut self, which: Which, stream: String, head: Head) {
        let m = self.kind(which);
        if m.len() >= HEAD_CACHE {
            m.clear();
        }
        m.insert(stream, head);
    }

    /// The heads a group commit wrote, once it is committed.
    pub(super) fn commit(&mut self, written: [HashMap<String, Head>; 2]) {
        for (which, heads) in [Which::User, Which::Room].into_iter().zip(written) {
            for (stream, head) in heads {
                self.put(which, stream, head);
            }
        }
    }

    /// Forgets everything: after a failed commit, whose reads may have been cached.
    pub(super) fn clear(&mut self) {
        self.user.clear();
        self.room.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_groups_of_appends_go_to_a_batch() {
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let (tx2, _rx2) = tokio::sync::oneshot::channel();
        let (tx3, _rx3) = tokio::sync::oneshot::channel();
        let ev = NewEvent { stream: "u".into(), kind: "t".into(), data: bytes::Bytes::new(), ts: 1, ttl: None };
        let appends = vec![Req::AppendUser(vec![ev.clone()], tx), Req::AppendRoom(ev, tx2)];
        assert!(Ops::batch_can_take(&appends));
        let mut mixed = appends;
        mixed.push(Req::SetCursor { user: "u".into(), client: "c".into(), seq: 1, now: 1, max_devices: 5, reply: tx3 });
        assert!(!Ops::batch_can_take(&mixed));
        mixed.truncate(2);
        mixed.push(Req::Touch { user: "u".into(), client: "c".into(), now: 1 });
        assert!(!Ops::batch_can_take(&mixed));
    }
}
