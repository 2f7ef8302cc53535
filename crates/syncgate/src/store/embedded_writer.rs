//! The write side of the embedded store: the requests, the writer thread with its group
//! commit (shared by both engines: it hands each batch to `Backend::commit`), and every
//! mutation of the redb engine (appends, cursors, idempotency, sweep deletions).
//!
//! Must never: answer a request before the transaction holding it is committed, or do more
//! than `SWEEP_CHUNK` deletions for one sweep request.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::{
    decode_idem, dup, encode_event, encode_idem, event_times, first_ts, ms, Backend, Ctx, FsyncPolicy, Head, Kind,
    Which, COUNTERS, CURSORS, C_CURSORS, C_MESSAGES, C_STREAMS, EMPTY, IDEM, IDEM_TIME, NEVER_FLUSH_EVERY, NO_EXPIRY,
    ROOM, SWEEP_CHUNK, USER,
};
use crate::store::{IdemRecord, NewEvent, StoreError, StoreResult};

pub(super) type Tx<T> = oneshot::Sender<StoreResult<T>>;

/// Deletions a sweep asks of the writer; each removes at most `SWEEP_CHUNK` records and
/// answers `(removed, more_to_do)`.
pub(super) enum SweepOp {
    Expired { kind: Which, now: i64 },
    Older { kind: Which, cutoff: i64 },
    TrimLen { kind: Which, streams: Vec<String>, max_len: u64 },
    Cursors { keys: Vec<(String, String)>, cutoff: i64 },
    Idem { cutoff: i64 },
}

pub(super) enum Req {
    AppendUser(Vec<NewEvent>, Tx<Vec<u64>>),
    AppendRoom(NewEvent, Tx<u64>),
    SetCursor {
        user: String,
        client: String,
        seq: u64,
        now: i64,
        /// Cursors kept per user: creating one past it forgets the least recently used.
        max_devices: usize,
        reply: Tx<u64>,
    },
    Touch {
        user: String,
        client: String,
        now: i64,
    },
    /// Stores `record` as created at `created` (a claim is back-dated so it lives only for
    /// its lease), unless a live record exists; an answer replaces a live claim.
    IdemPut {
        key: String,
        record: IdemRecord,
        now: i64,
        created: i64,
        ttl_ms: i64,
        reply: Tx<Option<IdemRecord>>,
    },
    /// Removes a claim (status 0); keeps an answer.
    IdemRelease {
        key: String,
        reply: Tx<Option<IdemRecord>>,
    },
    Sweep(SweepOp, Tx<(u64, bool)>),
    Close(Tx<()>),
    /// Makes the writer thread panic, to test that callers are not left hanging.
    #[cfg(test)]
    Panic(Tx<()>),
}

pub(super) enum Answer {
    Seqs(Vec<u64>),
    Seq(u64),
    Idem(Option<IdemRecord>),
    Swept(u64, bool),
    Done,
}

fn send<T>(tx: Tx<T>, r: StoreResult<Answer>, pick: impl FnOnce(Answer) -> Option<T>) {
    let r =
        r.and_then(|a| pick(a).ok_or_else(|| StoreError::Internal("store writer answered the wrong request".into())));
    let _ = tx.send(r); // the caller may have gone away; nothing to do then
}

impl Req {
    /// Share of `max_batch` taken by this request.
    fn weight(&self) -> usize {
        match self {
            Req::AppendUser(evs, _) => evs.len().max(1),
            Req::Sweep(..) => SWEEP_CHUNK,
            _ => 1,
        }
    }

    fn answer(self, r: StoreResult<Answer>) {
        match self {
            Req::AppendUser(_, tx) => send(tx, r, |a| if let Answer::Seqs(v) = a { Some(v) } else { None }),
            Req::AppendRoom(_, tx) | Req::SetCursor { reply: tx, .. } => {
                send(tx, r, |a| if let Answer::Seq(v) = a { Some(v) } else { None })
            }
            Req::IdemPut { reply, .. } | Req::IdemRelease { reply, .. } => {
                send(reply, r, |a| if let Answer::Idem(v) = a { Some(v) } else { None })
            }
            Req::Sweep(_, tx) => send(tx, r, |a| if let Answer::Swept(n, m) = a { Some((n, m)) } else { None }),
            Req::Close(tx) => send(tx, r, |_| Some(())),
            #[cfg(test)]
            Req::Panic(tx) => send(tx, r, |_| Some(())),
            Req::Touch { .. } => {}
        }
    }
}

pub(super) fn writer_loop(
    db: &dyn Backend,
    mut rx: mpsc::Receiver<Req>,
    fsync: FsyncPolicy,
    max_batch: usize,
    metrics: &super::metrics::WriterMetrics,
) {
    let mut last_durable = Instant::now();
    let mut unflushed = false;
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut weight = first.weight();
        let mut closing = matches!(first, Req::Close(_));
        batch.push(first);
        while !closing && weight < max_batch {
            let Ok(r) = rx.try_recv() else { break };
            weight += r.weight();
            closing = matches!(r, Req::Close(_));
            batch.push(r);
        }
        metrics.waited(db.make_room());
        let durable = fsync == FsyncPolicy::Always || closing || last_durable.elapsed() >= NEVER_FLUSH_EVERY;
        let start = Instant::now();
        let result = db.commit(&batch, durable);
        metrics.committed(batch.len(), durable, start.elapsed());
        match result {
            Ok(answers) => batch.drain(..).zip(answers).for_each(|(req, a)| req.answer(Ok(a))),
            Err(e) => batch.drain(..).for_each(|req| req.answer(Err(dup(&e)))),
        }
        if durable {
            last_durable = Instant::now();
        }
        unflushed = !durable;
        if closing {
            return; // requests still queued are dropped: their callers get `Closed`
        }
    }
    if unflushed {
        let _ = db.commit(&[], true); // best effort on drop
    }
}

/// Applies a batch in one transaction. Any error aborts the whole transaction.
pub(super) fn commit_batch(db: &Database, batch: &[Req], durability: Durability) -> StoreResult<Vec<Answer>> {
    let mut txn = db.begin_write().ctx("begin write")?;
    txn.set_durability(durability);
    let answers = {
        let mut t = Tables::open(&txn)?;
        let answers = batch.iter().map(|r| t.apply(r)).collect::<StoreResult<Vec<_>>>()?;
        t.finish()?;
        answers
    };
    txn.commit().ctx("commit")?;
    Ok(answers)
}

type Index<'t> = Table<'t, (i64, &'static str, u64), ()>;

struct KindTables<'t> {
    events: Table<'t, (&'static str, u64), &'static [u8]>,
    heads: Table<'t, &'static str, Head>,
    age: Table<'t, (i64, &'static str), ()>,
    expiry: Index<'t>,
    /// Heads changed in this transaction, written once at its end (`flush`).
    dirty: HashMap<String, Head>,
    /// Streams that lost events in this sweep operation: their `oldest_ts` is looked at again.
    touched: HashSet<String>,
    messages: i64,
    streams: i64,
}

pub(super) struct Tables<'t> {
    user: KindTables<'t>,
    room: KindTables<'t>,
    cursors: Table<'t, (&'static str, &'static str), (u64, i64)>,
    idem: Table<'t, &'static str, &'static [u8]>,
    idem_time: Table<'t, (i64, &'static str), ()>,
    counters: Table<'t, &'static str, u64>,
    cursors_delta: i64,
}

impl<'t> KindTables<'t> {
    fn open(txn: &'t WriteTransaction, k: &Kind) -> StoreResult<Self> {
        Ok(KindTables {
            events: txn.open_table(k.events).ctx("open events")?,
            heads: txn.open_table(k.heads).ctx("open heads")?,
            age: txn.open_table(k.age).ctx("open age index")?,
            expiry: txn.open_table(k.expiry).ctx("open expiry index")?,
            dirty: HashMap::new(),
            touched: HashSet::new(),
            messages: 0,
            streams: 0,
        })
    }

    fn head(&self, stream: &str) -> StoreResult<Head> {
        if let Some(h) = self.dirty.get(stream) {
            return Ok(*h);
        }
        Ok(self.heads.get(stream).ctx("read head")?.map_or((0, 0, EMPTY), |g| g.value()))
    }

    fn set_head(&mut self, stream: &str, head: Head) {
        match self.dirty.get_mut(stream) {
            Some(h) => *h = head,
            None => {
                self.dirty.insert(stream.to_string(), head);
            }
        }
    }

    fn append(&mut self, ev: &NewEvent) -> StoreResult<u64> {
        let s = ev.stream.as_str();
        let (head, count, mut oldest) = self.head(s)?;
        let seq = head + 1;
        let expires = ev.ttl.map_or(NO_EXPIRY, |t| ev.ts.saturating_add(ms(t)));
        self.events.insert((s, seq), encode_event(ev, expires).as_slice()).ctx("insert event")?;
        if expires != NO_EXPIRY {
            self.expiry.insert((expires, s, seq), ()).ctx("insert expiry index")?;
        }
        if count == 0 {
            // Empty until now: this event is its oldest (an empty stream has no age entry).
            self.set_oldest(s, oldest, ev.ts)?;
            oldest = ev.ts;
        }
        self.set_head(s, (seq, count + 1, oldest));
        self.messages += 1;
        self.streams += i64::from(count == 0);
        Ok(seq)
    }

    /// Moves `stream`'s age index entry from `old` to `new` (`EMPTY`: no entry).
    fn set_oldest(&mut self, stream: &str, old: i64, new: i64) -> StoreResult<()> {
        if old == new {
            return Ok(());
        }
        if old != EMPTY {
            self.age.remove((old, stream)).ctx("delete age index")?;
        }
        if new != EMPTY {
            self.age.insert((new, stream), ()).ctx("write age index")?;
        }
        Ok(())
    }

    /// Deletes one event and its expiry entry; the head stays. False if it was not there.
    fn delete(&mut self, stream: &str, seq: u64) -> StoreResult<bool> {
        let times = match self.events.remove((stream, seq)).ctx("delete event")? {
            Some(v) => event_times(v.value())?,
            None => return Ok(false),
        };
        if times.1 != NO_EXPIRY {
            self.expiry.remove((times.1, stream, seq)).ctx("delete expiry index")?;
        }
        let (head, count, oldest) = self.head(stream)?;
        self.set_head(stream, (head, count.saturating_sub(1), oldest));
        if !self.touched.contains(stream) {
            self.touched.insert(stream.to_string());
        }
        self.messages -= 1;
        self.streams -= i64::from(count == 1);
        Ok(true)
    }

    /// Brings the `oldest_ts` (and age entry) of every stream that lost events up to date.
    fn rescore(&mut self) -> StoreResult<()> {
        for stream in std::mem::take(&mut self.touched) {
            let (head, count, oldest) = self.head(&stream)?;
            let now = first_ts(&self.events, &stream)?.unwrap_or(EMPTY);
            self.set_oldest(&stream, oldest, now)?;
            self.set_head(&stream, (head, count, now));
        }
        Ok(())
    }

    /// Writes the heads changed in this transaction.
    fn flush(&mut self) -> StoreResult<()> {
        self.rescore()?;
        for (stream, head) in self.dirty.drain() {
            self.heads.insert(stream.as_str(), head).ctx("write head")?;
        }
        Ok(())
    }

    /// Deletes up to `SWEEP_CHUNK` events accepted before `cutoff`: streams come from the age
    /// index, oldest first, and each loses events from its front (in sequence order) until
    /// one is recent enough.
    fn drop_older(&mut self, cutoff: i64) -> StoreResult<(u64, bool)> {
        let streams = self
            .age
            .range(..(cutoff, ""))
            .ctx("scan age index")?
            .take(SWEEP_CHUNK)
            .map(|r| r.map(|(k, _)| k.value().1.to_string()))
            .collect::<Result<Vec<_>, _>>()
            .ctx("scan age index")?;
        let (mut removed, mut more) = (0u64, streams.len() == SWEEP_CHUNK);
        for s in &streams {
            let budget = SWEEP_CHUNK - removed as usize;
            let mut victims = Vec::new();
            for r in self.events.range((s.as_str(), 0u64)..=(s.as_str(), u64::MAX)).ctx("scan stream")?.take(budget) {
                let (k, v) = r.ctx("scan stream")?;
                if event_times(v.value())?.0 >= cutoff {
                    break;
                }
                victims.push(k.value().1);
            }
            for seq in victims {
                removed += u64::from(self.delete(s, seq)?);
            }
            if removed as usize >= SWEEP_CHUNK {
                more = true;
                break;
            }
        }
        self.rescore()?;
        Ok((removed, more))
    }

    /// Deletes up to `SWEEP_CHUNK` events whose expiry is before `cutoff`.
    fn drop_expired(&mut self, cutoff: i64) -> StoreResult<(u64, bool)> {
        let keys = self
            .expiry
            .range(..(cutoff, "", 0u64))
            .ctx("scan index")?
            .take(SWEEP_CHUNK)
            .map(|r| r.map(|(k, _)| (k.value().0, k.value().1.to_string(), k.value().2)))
            .collect::<Result<Vec<_>, _>>()
            .ctx("scan index")?;
        let mut removed = 0;
        for (t, s, seq) in &keys {
            if self.delete(s, *seq)? {
                removed += 1;
            } else {
                // An index entry without its event: drop it so the sweep cannot spin on it.
                self.expiry.remove((*t, s.as_str(), *seq)).ctx("delete index")?;
            }
        }
        self.rescore()?;
        Ok((removed, keys.len() == SWEEP_CHUNK))
    }

    /// Deletes the oldest events of streams longer than `max_len`, at most `SWEEP_CHUNK`.
    fn trim(&mut self, streams: &[String], max_len: u64) -> StoreResult<(u64, bool)> {
        let (mut budget, mut removed, mut more) = (SWEEP_CHUNK as u64, 0, false);
        for s in streams {
            let excess = self.head(s)?.1.saturating_sub(max_len);
            if excess == 0 {
                continue;
            }
            if budget == 0 {
                return Ok((removed, true));
            }
            let take = excess.min(budget);
            let seqs = self
                .events
                .range((s.as_str(), 0u64)..=(s.as_str(), u64::MAX))
                .ctx("scan stream")?
                .take(take as usize)
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<Vec<_>, _>>()
                .ctx("scan stream")?;
            for seq in &seqs {
                removed += u64::from(self.delete(s, *seq)?);
            }
            budget -= take;
            // Fewer events than the count says: do not loop on a wrong counter.
            more |= excess > take && seqs.len() as u64 == take;
        }
        self.rescore()?;
        Ok((removed, more))
    }
}

impl<'t> Tables<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> StoreResult<Self> {
        Ok(Tables {
            user: KindTables::open(txn, &USER)?,
            room: KindTables::open(txn, &ROOM)?,
            cursors: txn.open_table(CURSORS).ctx("open cursors")?,
            idem: txn.open_table(IDEM).ctx("open idempotency")?,
            idem_time: txn.open_table(IDEM_TIME).ctx("open idempotency index")?,
            counters: txn.open_table(COUNTERS).ctx("open counters")?,
            cursors_delta: 0,
        })
    }

    fn kind(&mut self, k: Which) -> &mut KindTables<'t> {
        match k {
            Which::User => &mut self.user,
            Which::Room => &mut self.room,
        }
    }

    /// Forgets the least recently used cursors of `user` past `max`, never `keep` (the one
    /// just created). The cursor table is keyed by (user, client), so a user's cursors are
    /// one short range.
    fn evict_devices(&mut self, user: &str, keep: &str, max: usize) -> StoreResult<()> {
        loop {
            let mut count = 0usize;
            let mut oldest: Option<(String, i64)> = None;
            for r in self.cursors.range((user, "")..).ctx("scan cursors")? {
                let (k, v) = r.ctx("scan cursors")?;
                let (u, c) = k.value();
                if u != user {
                    break;
                }
                count += 1;
                let used = v.value().1;
                if c != keep && oldest.as_ref().is_none_or(|(_, o)| used < *o) {
                    oldest = Some((c.to_string(), used));
                }
            }
            match oldest {
                Some((client, _)) if count > max => {
                    self.cursors.remove((user, client.as_str())).ctx("evict cursor")?;
                    self.cursors_delta -= 1;
                }
                _ => return Ok(()),
            }
        }
    }

    fn apply(&mut self, req: &Req) -> StoreResult<Answer> {
        Ok(match req {
            Req::AppendUser(evs, _) => {
                Answer::Seqs(evs.iter().map(|e| self.user.append(e)).collect::<StoreResult<_>>()?)
            }
            Req::AppendRoom(ev, _) => Answer::Seq(self.room.append(ev)?),
            Req::SetCursor { user, client, seq, now, max_devices, .. } => {
                let key = (user.as_str(), client.as_str());
                let cur = self.cursors.get(key).ctx("read cursor")?.map(|g| g.value().0);
                let new = cur.map_or(*seq, |c| c.max(*seq));
                self.cursors.insert(key, (new, *now)).ctx("write cursor")?;
                if cur.is_none() {
                    self.cursors_delta += 1;
                    self.evict_devices(user, client, *max_devices)?;
                }
                Answer::Seq(new)
            }
            Req::Touch { user, client, now } => {
                let key = (user.as_str(), client.as_str());
                let found = self.cursors.get(key).ctx("read cursor")?.map(|g| g.value());
                if let Some((seq, used)) = found {
                    if *now > used {
                        self.cursors.insert(key, (seq, *now)).ctx("touch cursor")?;
                    }
                }
                Answer::Done
            }
            Req::IdemPut { key, record, now, created: new_created, ttl_ms, .. } => {
                let old = self.idem.get(key.as_str()).ctx("read idempotency")?.map(|g| decode_idem(g.value()));
                if let Some((created, rec)) = old.transpose()? {
                    let answers_claim = rec.status == 0 && record.status != 0;
                    if created.saturating_add(*ttl_ms) > *now && !answers_claim {
                        return Ok(Answer::Idem(Some(rec)));
                    }
                    self.idem_time.remove((created, key.as_str())).ctx("delete idempotency index")?;
                }
                self.idem
                    .insert(key.as_str(), encode_idem(*new_created, record).as_slice())
                    .ctx("write idempotency")?;
                self.idem_time.insert((*new_created, key.as_str()), ()).ctx("write idempotency index")?;
                Answer::Idem(None)
            }
            Req::IdemRelease { key, .. } => {
                let old = self.idem.get(key.as_str()).ctx("read idempotency")?.map(|g| decode_idem(g.value()));
                if let Some((created, rec)) = old.transpose()? {
                    if rec.status == 0 {
                        self.idem_time.remove((created, key.as_str())).ctx("delete idempotency index")?;
                        self.idem.remove(key.as_str()).ctx("delete idempotency")?;
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
            SweepOp::Expired { kind, now } => self.kind(*kind).drop_expired(now.saturating_add(1)),
            SweepOp::Older { kind, cutoff } => self.kind(*kind).drop_older(*cutoff),
            SweepOp::TrimLen { kind, streams, max_len } => self.kind(*kind).trim(streams, *max_len),
            SweepOp::Cursors { keys, cutoff } => {
                let mut removed = 0;
                for (u, c) in keys {
                    let used = self.cursors.get((u.as_str(), c.as_str())).ctx("read cursor")?.map(|g| g.value().1);
                    if used.is_some_and(|used| used < *cutoff) {
                        self.cursors.remove((u.as_str(), c.as_str())).ctx("delete cursor")?;
                        removed += 1;
                    }
                }
                self.cursors_delta -= removed as i64;
                Ok((removed, false))
            }
            SweepOp::Idem { cutoff } => {
                let keys = self
                    .idem_time
                    .range(..(*cutoff, ""))
                    .ctx("scan idempotency")?
                    .take(SWEEP_CHUNK)
                    .map(|r| r.map(|(k, _)| (k.value().0, k.value().1.to_string())))
                    .collect::<Result<Vec<_>, _>>()
                    .ctx("scan idempotency")?;
                for (created, key) in &keys {
                    self.idem_time.remove((*created, key.as_str())).ctx("delete idempotency index")?;
                    self.idem.remove(key.as_str()).ctx("delete idempotency")?;
                }
                Ok((keys.len() as u64, keys.len() == SWEEP_CHUNK))
            }
        }
    }

    /// Writes what is kept for the end of the transaction: heads and counters.
    fn finish(&mut self) -> StoreResult<()> {
        self.user.flush()?;
        self.room.flush()?;
        for (name, delta) in
            [(C_MESSAGES, self.user.messages), (C_STREAMS, self.user.streams), (C_CURSORS, self.cursors_delta)]
        {
            if delta != 0 {
                let v = self.counters.get(name).ctx("read counter")?.map_or(0, |g| g.value());
                let v = u64::try_from(i128::from(v) + i128::from(delta)).unwrap_or(0);
                self.counters.insert(name, v).ctx("write counter")?;
            }
        }
        Ok(())
    }
}
