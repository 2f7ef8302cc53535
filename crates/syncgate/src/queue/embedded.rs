//! The outbound queue on local disk (redb), for a single node.
//!
//! Owns: the file `outbound.redb` in the data dir, its tables, and one writer thread that
//! applies every mutation with group commit (as the embedded store does: a batch of
//! requests, one transaction, one fsync, then the answers). Must never: answer an enqueue
//! before the job is committed with the configured durability, or run redb on an async
//! worker thread.
//!
//! Its own file rather than tables in `syncgate.redb`: the queue's writes (three per job)
//! then never wait behind the stream writer's group commits, nor it behind them.
//!
//! Layout: `jobs id -> record (JSON)`, `ready (rank, due_ms, id) -> ()` (delayed jobs too:
//! a claim reads only keys due by now), `leased (until_ms, id) -> ()`, `created
//! (created_ms, id) -> ()` (oldest age without a scan), `dead (failed_ms, id) -> dead job
//! (JSON)` and `dead_ids id -> failed_ms`. After a crash every lease is simply over once
//! its time passes, so jobs in flight at a kill -9 run again.

use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::{now_ms, DeadFilter, DeadJob, DeadPage, Job, NewJob, Priority, Queue, QueueError, QueueResult, QueueStats};
use crate::store::embedded::FsyncPolicy;

pub const FILE_NAME: &str = "outbound.redb";

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const READY: TableDefinition<(u8, i64, &str), ()> = TableDefinition::new("ready");
const LEASED: TableDefinition<(i64, &str), ()> = TableDefinition::new("leased");
const CREATED: TableDefinition<(i64, &str), ()> = TableDefinition::new("created");
const DEAD: TableDefinition<(i64, &str), &[u8]> = TableDefinition::new("dead");
const DEAD_IDS: TableDefinition<&str, i64> = TableDefinition::new("dead_ids");

/// Requests drained into one transaction at most.
const MAX_BATCH: usize = 256;
const QUEUE: usize = 4096;
/// With `FsyncPolicy::Never`, one durable commit per this interval anyway (redb frees pages
/// only on durable commits).
const NEVER_FLUSH_EVERY: Duration = Duration::from_secs(1);

/// A job as stored: the job and, while it is claimed, its lease end.
#[derive(serde::Serialize, serde::Deserialize)]
struct Rec {
    job: Job,
    lease_until: Option<i64>,
}

fn err(what: &str) -> impl Fn(redb::Error) -> QueueError + '_ {
    move |e| match e {
        redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseAlreadyOpen => {
            QueueError::Unavailable(format!("{what}: {e}"))
        }
        e => QueueError::Internal(format!("{what}: {e}")),
    }
}

/// `?` on any redb error type inside a transaction.
macro_rules! r {
    ($e:expr) => {
        $e.map_err(|e| err("outbound queue")(e.into()))?
    };
}

fn decode<T: serde::de::DeserializeOwned>(v: &[u8]) -> QueueResult<T> {
    serde_json::from_slice(v).map_err(|e| QueueError::Internal(format!("corrupt record in {FILE_NAME}: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

enum Op {
    Enqueue(NewJob),
    Claim { max: usize, lease_ms: i64 },
    Complete(String),
    Reschedule { id: String, at: i64, error: Option<String>, refund: bool },
    Bury { id: String, error: String },
    RetryDead(String),
    RetryDeadAll(DeadFilter),
    DeleteDead(String),
    Stats,
    Dead { limit: usize, before: Option<(i64, String)> },
    Close,
}

enum Answer {
    Id(String),
    Jobs(Vec<Job>),
    Unit,
    Bool(bool),
    Count(u64),
    Stats(QueueStats),
    Page(DeadPage),
}

struct Req {
    op: Op,
    tx: oneshot::Sender<QueueResult<Answer>>,
}

/// The queue's handle: every operation, reads included, goes to the one thread that owns
/// the database, so closing it (and so the file lock) is one message.
pub struct EmbeddedQueue {
    tx: mpsc::Sender<Req>,
}

#[derive(Debug, Clone)]
pub struct EmbeddedQueueOptions {
    pub max_jobs: u64,
    pub max_dead: u64,
    pub fsync: FsyncPolicy,
}

impl EmbeddedQueue {
    /// Opens (or creates) `outbound.redb` in `dir` and starts the writer thread.
    pub fn open(dir: &Path, opts: EmbeddedQueueOptions) -> QueueResult<EmbeddedQueue> {
        let db = Database::create(dir.join(FILE_NAME)).map_err(|e| err("open")(e.into()))?;
        {
            let txn = db.begin_write().map_err(|e| err("open")(e.into()))?;
            {
                r!(txn.open_table(JOBS));
                r!(txn.open_table(READY));
                r!(txn.open_table(LEASED));
                r!(txn.open_table(CREATED));
                r!(txn.open_table(DEAD));
                r!(txn.open_table(DEAD_IDS));
            }
            r!(txn.commit());
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("outbound-queue".into())
            .spawn(move || writer_loop(db, rx, &opts))
            .map_err(|e| QueueError::Internal(format!("writer thread: {e}")))?;
        Ok(EmbeddedQueue { tx })
    }

    async fn call(&self, op: Op) -> QueueResult<Answer> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Req { op, tx }).await.map_err(|_| QueueError::Unavailable("queue closed".into()))?;
        rx.await.map_err(|_| QueueError::Unavailable("queue closed".into()))?
    }
}

type Reply = (oneshot::Sender<QueueResult<Answer>>, QueueResult<Answer>);

fn writer_loop(db: Database, rx: mpsc::Receiver<Req>, opts: &EmbeddedQueueOptions) {
    let replies = serve(&db, rx, opts);
    // The batch with the close is answered only once the file lock is released.
    drop(db);
    for (tx, a) in replies {
        let _ = tx.send(a);
    }
}

fn serve(db: &Database, mut rx: mpsc::Receiver<Req>, opts: &EmbeddedQueueOptions) -> Vec<Reply> {
    let mut last_durable = Instant::now();
    let mut batch: Vec<Req> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut closing = matches!(first.op, Op::Close);
        batch.push(first);
        while !closing && batch.len() < MAX_BATCH {
            let Ok(r) = rx.try_recv() else { break };
            closing = matches!(r.op, Op::Close);
            batch.push(r);
        }
        let durable = closing || opts.fsync == FsyncPolicy::Always || last_durable.elapsed() >= NEVER_FLUSH_EVERY;
        let replies: Vec<Reply> = match commit(db, &mut batch, opts, durable) {
            Ok(answers) => batch.drain(..).zip(answers).map(|(req, a)| (req.tx, a)).collect(),
            Err(e) => batch
                .drain(..)
                .map(|req| {
                    let e = match &e {
                        QueueError::Unavailable(m) => QueueError::Unavailable(m.clone()),
                        other => QueueError::Internal(other.to_string()),
                    };
                    (req.tx, Err(e))
                })
                .collect(),
        };
        if durable {
            last_durable = Instant::now();
        }
        if closing {
            // Requests still queued get `Unavailable` (their senders see the channel gone).
            return replies;
        }
        for (tx, a) in replies {
            let _ = tx.send(a);
        }
    }
    // Senders gone: make what was committed durable.
    if let Ok(mut txn) = db.begin_write() {
        txn.set_durability(Durability::Immediate);
        let _ = txn.commit();
    }
    Vec::new()
}

/// One transaction for the batch. An answer that is an error of its own (queue full, not
/// found) does not abort the others; a storage error aborts them all.
fn commit(
    db: &Database,
    batch: &mut [Req],
    opts: &EmbeddedQueueOptions,
    durable: bool,
) -> QueueResult<Vec<QueueResult<Answer>>> {
    let mut txn = r!(db.begin_write());
    txn.set_durability(if durable { Durability::Immediate } else { Durability::None });
    let now = now_ms();
    let mut answers = Vec::with_capacity(batch.len());
    for req in batch.iter_mut() {
        let op = std::mem::replace(&mut req.op, Op::Complete(String::new()));
        answers.push(apply(&txn, op, opts, now));
    }
    // A storage error inside any op aborts (the transaction is dropped uncommitted).
    if let Some(Err(QueueError::Unavailable(m))) = answers.iter().find(|a| matches!(a, Err(QueueError::Unavailable(_))))
    {
        return Err(QueueError::Unavailable(m.clone()));
    }
    r!(txn.commit());
    Ok(answers)
}

fn apply(txn: &WriteTransaction, op: Op, opts: &EmbeddedQueueOptions, now: i64) -> QueueResult<Answer> {
    match op {
        Op::Enqueue(new) => {
            let job = new.into_job(now);
            insert_live(txn, job, opts.max_jobs).map(Answer::Id)
        }
        Op::Claim { max, lease_ms } => claim(txn, max, now, lease_ms).map(Answer::Jobs),
        Op::Complete(id) => {
            if let Some(rec) = take(txn, &id)? {
                let mut created = r!(txn.open_table(CREATED));
                r!(created.remove((rec.job.created_at, id.as_str())));
            }
            Ok(Answer::Unit)
        }
        Op::Reschedule { id, at, error, refund } => {
            if let Some(mut rec) = take_lease(txn, &id)? {
                if refund {
                    rec.job.attempts = rec.job.attempts.saturating_sub(1);
                }
                if error.is_some() {
                    rec.job.last_error = error;
                }
                rec.job.due_at = at;
                put_ready(txn, rec)?;
            }
            Ok(Answer::Unit)
        }
        Op::Bury { id, error } => {
            if let Some(mut rec) = take(txn, &id)? {
                let mut created = r!(txn.open_table(CREATED));
                r!(created.remove((rec.job.created_at, id.as_str())));
                rec.job.last_error = Some(error);
                bury(txn, rec.job, now, opts.max_dead)?;
            }
            Ok(Answer::Unit)
        }
        // A retry that does not fit changes nothing: the room is checked before a dead
        // letter is taken out (an error answer does not roll the batch's transaction back).
        Op::RetryDead(id) => {
            {
                let ids = r!(txn.open_table(DEAD_IDS));
                if r!(ids.get(id.as_str())).is_none() {
                    return Ok(Answer::Bool(false));
                }
            }
            if room(txn, opts.max_jobs)? == 0 {
                return Err(QueueError::Full { max: opts.max_jobs });
            }
            let Some(job) = take_dead(txn, &id)? else { return Ok(Answer::Bool(false)) };
            revive(txn, job, now, opts.max_jobs)?;
            Ok(Answer::Bool(true))
        }
        // As many as fit, oldest failure first; the rest stay dead letters. Full only when
        // some match and none fits.
        Op::RetryDeadAll(filter) => {
            let mut picked = Vec::new();
            {
                let dead = r!(txn.open_table(DEAD));
                for item in r!(dead.iter()) {
                    let (_, v) = r!(item);
                    let d: DeadJob = decode(v.value())?;
                    if filter.matches(&d.job) {
                        picked.push(d.job.id);
                    }
                }
            }
            let room = room(txn, opts.max_jobs)?;
            if !picked.is_empty() && room == 0 {
                return Err(QueueError::Full { max: opts.max_jobs });
            }
            let mut n = 0;
            for id in picked.into_iter().take(usize::try_from(room).unwrap_or(usize::MAX)) {
                if let Some(job) = take_dead(txn, &id)? {
                    revive(txn, job, now, opts.max_jobs)?;
                    n += 1;
                }
            }
            Ok(Answer::Count(n))
        }
        Op::DeleteDead(id) => Ok(Answer::Bool(take_dead(txn, &id)?.is_some())),
        Op::Stats => stats(txn, now).map(Answer::Stats),
        Op::Dead { limit, before } => dead_page(txn, limit, before).map(Answer::Page),
        Op::Close => Ok(Answer::Unit),
    }
}

fn stats(txn: &WriteTransaction, now: i64) -> QueueResult<QueueStats> {
    let mut s = QueueStats::default();
    let ready = r!(txn.open_table(READY));
    let mut all = 0u64;
    for p in Priority::ALL {
        let rank = p.rank();
        let due = r!(ready.range((rank, i64::MIN, "")..(rank, now.saturating_add(1), ""))).count() as u64;
        *s.ready.get_mut(p) = due;
        all += due;
    }
    s.delayed = r!(ready.len()).saturating_sub(all);
    s.in_flight = r!(r!(txn.open_table(LEASED)).len());
    s.dead = r!(r!(txn.open_table(DEAD)).len());
    let created = r!(txn.open_table(CREATED));
    if let Some((k, _)) = r!(created.first()) {
        s.oldest_age_ms = (now - k.value().0).max(0);
    }
    Ok(s)
}

fn dead_page(txn: &WriteTransaction, limit: usize, before: Option<(i64, String)>) -> QueueResult<DeadPage> {
    let dead = r!(txn.open_table(DEAD));
    let mut page = DeadPage::default();
    let iter = match &before {
        Some((t, id)) => r!(dead.range(..(*t, id.as_str()))),
        None => r!(dead.iter()),
    };
    for item in iter.rev() {
        let (_, v) = r!(item);
        if page.jobs.len() == limit {
            // There is more: the cursor is the last job shown.
            page.next_cursor = page.jobs.last().map(|d| format!("{}:{}", d.failed_at, d.job.id));
            break;
        }
        page.jobs.push(decode(v.value())?);
    }
    Ok(page)
}

/// How many more live jobs `queue.max_jobs` allows.
fn room(txn: &WriteTransaction, max_jobs: u64) -> QueueResult<u64> {
    let jobs = r!(txn.open_table(JOBS));
    Ok(max_jobs.saturating_sub(r!(jobs.len())))
}

fn insert_live(txn: &WriteTransaction, job: Job, max_jobs: u64) -> QueueResult<String> {
    {
        let jobs = r!(txn.open_table(JOBS));
        if r!(jobs.len()) >= max_jobs {
            return Err(QueueError::Full { max: max_jobs });
        }
    }
    let id = job.id.clone();
    let mut created = r!(txn.open_table(CREATED));
    r!(created.insert((job.created_at, id.as_str()), ()));
    put_ready(txn, Rec { job, lease_until: None })?;
    Ok(id)
}

fn put_ready(txn: &WriteTransaction, rec: Rec) -> QueueResult<()> {
    let mut jobs = r!(txn.open_table(JOBS));
    let mut ready = r!(txn.open_table(READY));
    let j = &rec.job;
    r!(ready.insert((j.priority.rank(), j.due_at, j.id.as_str()), ()));
    r!(jobs.insert(j.id.as_str(), encode(&rec).as_slice()));
    Ok(())
}

/// Removes a job and its index entries; returns it.
fn take(txn: &WriteTransaction, id: &str) -> QueueResult<Option<Rec>> {
    let Some(rec) = take_lease(txn, id)? else { return Ok(None) };
    let mut jobs = r!(txn.open_table(JOBS));
    r!(jobs.remove(id));
    Ok(Some(rec))
}

/// A job with its lease (or ready entry) removed, still in `jobs`.
fn take_lease(txn: &WriteTransaction, id: &str) -> QueueResult<Option<Rec>> {
    let rec: Rec = {
        let jobs = r!(txn.open_table(JOBS));
        let v = r!(jobs.get(id));
        match v {
            Some(v) => decode(v.value())?,
            None => return Ok(None),
        }
    };
    match rec.lease_until {
        Some(until) => {
            let mut leased = r!(txn.open_table(LEASED));
            r!(leased.remove((until, id)));
        }
        None => {
            let mut ready = r!(txn.open_table(READY));
            r!(ready.remove((rec.job.priority.rank(), rec.job.due_at, id)));
        }
    }
    Ok(Some(Rec { lease_until: None, ..rec }))
}

fn claim(txn: &WriteTransaction, max: usize, now: i64, lease_ms: i64) -> QueueResult<Vec<Job>> {
    // Leases that ran out (a crash, or an attempt cut short): due again now.
    let expired: Vec<String> = {
        let leased = r!(txn.open_table(LEASED));
        let mut v = Vec::new();
        for item in r!(leased.range(..(now, ""))) {
            let (k, _) = r!(item);
            v.push(k.value().1.to_string());
        }
        v
    };
    for id in expired {
        if let Some(mut rec) = take_lease(txn, &id)? {
            rec.job.due_at = now;
            put_ready(txn, rec)?;
        }
    }
    let mut picked: Vec<(u8, i64, String)> = Vec::new();
    {
        let ready = r!(txn.open_table(READY));
        for p in Priority::ALL {
            let rank = p.rank();
            for item in r!(ready.range((rank, i64::MIN, "")..(rank, now.saturating_add(1), ""))) {
                if picked.len() >= max {
                    break;
                }
                let (k, _) = r!(item);
                let (r, d, id) = k.value();
                picked.push((r, d, id.to_string()));
            }
        }
    }
    let mut out = Vec::with_capacity(picked.len());
    let mut jobs = r!(txn.open_table(JOBS));
    let mut ready = r!(txn.open_table(READY));
    let mut leased = r!(txn.open_table(LEASED));
    for (rank, due, id) in picked {
        r!(ready.remove((rank, due, id.as_str())));
        let mut rec: Rec = {
            let Some(v) = r!(jobs.get(id.as_str())) else { continue };
            decode(v.value())?
        };
        let until = now.saturating_add(lease_ms);
        rec.job.attempts = rec.job.attempts.saturating_add(1);
        rec.lease_until = Some(until);
        r!(leased.insert((until, id.as_str()), ()));
        r!(jobs.insert(id.as_str(), encode(&rec).as_slice()));
        out.push(rec.job);
    }
    Ok(out)
}

fn bury(txn: &WriteTransaction, job: Job, now: i64, max_dead: u64) -> QueueResult<()> {
    let mut dead = r!(txn.open_table(DEAD));
    let mut ids = r!(txn.open_table(DEAD_IDS));
    let id = job.id.clone();
    r!(dead.insert((now, id.as_str()), encode(&DeadJob { job, failed_at: now }).as_slice()));
    r!(ids.insert(id.as_str(), now));
    while r!(dead.len()) > max_dead {
        let Some((k, _)) = r!(dead.pop_first()) else { break };
        let (_, old) = k.value();
        r!(ids.remove(old));
        tracing::warn!(job = old, "dead-letter queue full (queue.max_dead): oldest dead letter dropped");
    }
    Ok(())
}

fn take_dead(txn: &WriteTransaction, id: &str) -> QueueResult<Option<Job>> {
    let mut ids = r!(txn.open_table(DEAD_IDS));
    let Some(failed) = r!(ids.remove(id)).map(|v| v.value()) else { return Ok(None) };
    let mut dead = r!(txn.open_table(DEAD));
    let v = r!(dead.remove((failed, id)));
    match v {
        Some(v) => Ok(Some(decode::<DeadJob>(v.value())?.job)),
        None => Ok(None),
    }
}

/// A dead letter back in the queue: due now, attempts from zero, same id.
fn revive(txn: &WriteTransaction, mut job: Job, now: i64, max_jobs: u64) -> QueueResult<()> {
    job.attempts = 0;
    job.due_at = now;
    insert_live(txn, job, max_jobs).map(|_| ())
}

#[async_trait]
impl Queue for EmbeddedQueue {
    async fn enqueue(&self, job: NewJob) -> QueueResult<String> {
        match self.call(Op::Enqueue(job)).await? {
            Answer::Id(id) => Ok(id),
            _ => Err(QueueError::Internal("unexpected answer".into())),
        }
    }

    async fn claim(&self, max: usize, lease: Duration) -> QueueResult<Vec<Job>> {
        let lease_ms = lease.as_millis() as i64;
        match self.call(Op::Claim { max, lease_ms }).await? {
            Answer::Jobs(j) => Ok(j),
            _ => Err(QueueError::Internal("unexpected answer".into())),
        }
    }

    async fn complete(&self, job: &Job) -> QueueResult<()> {
        self.call(Op::Complete(job.id.clone())).await.map(|_| ())
    }

    async fn reschedule(&self, job: &Job, at_ms: i64, error: Option<&str>, refund: bool) -> QueueResult<()> {
        let op = Op::Reschedule { id: job.id.clone(), at: at_ms, error: error.map(str::to_string), refund };
        self.call(op).await.map(|_| ())
    }

    async fn bury(&self, job: &Job, error: &str) -> QueueResult<()> {
        self.call(Op::Bury { id: job.id.clone(), error: error.to_string() }).await.map(|_| ())
    }

    async fn stats(&self) -> QueueResult<QueueStats> {
        match self.call(Op::Stats).await? {
            Answer::Stats(s) => Ok(s),
            _ => Err(QueueError::Internal("unexpected answer".into())),
        }
    }

    async fn dead(&self, limit: usize, cursor: Option<&str>) -> QueueResult<DeadPage> {
        let before = match cursor {
            None => None,
            Some(c) => Some(parse_cursor(c).ok_or(QueueError::BadCursor)?),
        };
        match self.call(Op::Dead { limit, before }).await? {
            Answer::Page(p) => Ok(p),
            _ => Err(QueueError::Internal("unexpected answer".into())),
        }
    }

    async fn retry_dead(&self, id: &str) -> QueueResult<bool> {
        match self.call(Op::RetryDead(id.to_string())).await? {
            Answer::Bool(b) => Ok(b),
            _ => Err(QueueError::Internal("unexpected answer".into())),
        }
    }

    async fn retry_dead_all(&self, filter: &DeadFilter) -> QueueResult<u64> {
        match self.call(Op::RetryDeadAll(filter.clone())).await? {
            Answer::Count(n) => Ok(n),
            _ => Err(QueueError::Internal("unexpected answer".into())),
        }
    }

    async fn delete_dead(&self, id: &str) -> QueueResult<bool> {
        match self.call(Op::DeleteDead(id.to_string())).await? {
            Answer::Bool(b) => Ok(b),
            _ => Err(QueueError::Internal("unexpected answer".into())),
        }
    }

    async fn close(&self) -> QueueResult<()> {
        self.call(Op::Close).await.map(|_| ())
    }
}

/// A dead-letter cursor: `{failed_at}:{id}`.
pub fn parse_cursor(c: &str) -> Option<(i64, String)> {
    let (t, id) = c.split_once(':')?;
    Some((t.parse().ok()?, id.to_string()))
}
