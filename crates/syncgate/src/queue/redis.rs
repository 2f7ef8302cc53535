//! The outbound queue on Redis, for cluster mode: every node claims from the same queue,
//! so each job runs on one node at a time, and a job leased by a node that died is claimed
//! by another once its lease is over.
//!
//! Owns: the queue's keys (`redis_scripts` has the layout) and their scripts. Must never:
//! change a job's state except in one script (each is atomic), or block on Redis without
//! the connection's timeouts.

use std::time::Duration;

use async_trait::async_trait;
use redis::{Script, Value};

use super::redis_scripts as lua;
use super::{now_ms, DeadFilter, DeadJob, DeadPage, Job, NewJob, Priority, Queue, QueueError, QueueResult, QueueStats};
use crate::store::redis::{is_unavailable, RedisConn};

pub struct RedisQueue {
    conn: RedisConn,
    keys: Vec<String>,
    max_jobs: u64,
    max_dead: u64,
    s: Scripts,
}

struct Scripts {
    enqueue: Script,
    claim: Script,
    complete: Script,
    reschedule: Script,
    bury: Script,
    retry_dead: Script,
    delete_dead: Script,
}

fn qerr(e: redis::RedisError) -> QueueError {
    if is_unavailable(&e) {
        QueueError::Unavailable(format!("redis: {e}"))
    } else {
        QueueError::Internal(format!("redis: {e}"))
    }
}

fn bad(what: &str) -> QueueError {
    QueueError::Internal(format!("unexpected answer from the {what} script"))
}

/// The job JSON kept in `jobs` / `dj`: the parts of a job that never change.
fn stored_json(job: &Job) -> String {
    let base = Job { attempts: 0, due_at: 0, last_error: None, ..job.clone() };
    serde_json::to_string(&base).unwrap_or_default()
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        Value::Double(d) => Some(format!("{d}")),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse::<f64>().ok().map(|f| f as i64),
    }
}

impl RedisQueue {
    pub fn new(conn: RedisConn, key_prefix: &str, max_jobs: u64, max_dead: u64) -> RedisQueue {
        let keys = lua::KEY_NAMES.iter().map(|k| format!("{key_prefix}:{{q}}:{k}")).collect();
        RedisQueue {
            conn,
            keys,
            max_jobs,
            max_dead,
            s: Scripts {
                enqueue: Script::new(lua::ENQUEUE),
                claim: Script::new(lua::CLAIM),
                complete: Script::new(lua::COMPLETE),
                reschedule: Script::new(lua::RESCHEDULE),
                bury: Script::new(lua::BURY),
                retry_dead: Script::new(lua::RETRY_DEAD),
                delete_dead: Script::new(lua::DELETE_DEAD),
            },
        }
    }

    async fn run(&self, script: &Script, args: &[String]) -> QueueResult<Value> {
        let mut inv = script.prepare_invoke();
        for k in &self.keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(a);
        }
        let mut conn = self.conn.clone();
        inv.invoke_async(&mut conn).await.map_err(qerr)
    }

    fn key(&self, name: &str) -> &str {
        let i = lua::KEY_NAMES.iter().position(|k| *k == name).unwrap_or(0);
        &self.keys[i]
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> QueueResult<T> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn).await.map_err(qerr)
    }

    /// Dead letters by id, in the order given (missing ones skipped).
    async fn dead_jobs(&self, ids: &[(String, i64)]) -> QueueResult<Vec<DeadJob>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
        let jobs: Vec<Option<String>> = self.query(redis::cmd("HMGET").arg(self.key("dj")).arg(&names)).await?;
        let att: Vec<Option<u32>> = self.query(redis::cmd("HMGET").arg(self.key("att")).arg(&names)).await?;
        let err: Vec<Option<String>> = self.query(redis::cmd("HMGET").arg(self.key("err")).arg(&names)).await?;
        let mut out = Vec::with_capacity(ids.len());
        for (i, (_, failed_at)) in ids.iter().enumerate() {
            let Some(Some(json)) = jobs.get(i) else { continue };
            let mut job: Job =
                serde_json::from_str(json).map_err(|e| QueueError::Internal(format!("corrupt job in Redis: {e}")))?;
            job.attempts = att.get(i).copied().flatten().unwrap_or(0);
            job.last_error = err.get(i).cloned().flatten();
            job.due_at = *failed_at;
            out.push(DeadJob { job, failed_at: *failed_at });
        }
        Ok(out)
    }
}

#[async_trait]
impl Queue for RedisQueue {
    async fn enqueue(&self, new: NewJob) -> QueueResult<String> {
        let now = now_ms();
        let job = new.into_job(now);
        let args = [
            job.id.clone(),
            stored_json(&job),
            job.priority.rank().to_string(),
            job.due_at.to_string(),
            now.to_string(),
            self.max_jobs.to_string(),
        ];
        match int(&self.run(&self.s.enqueue, &args).await?) {
            Some(1) => Ok(job.id),
            Some(0) => Err(QueueError::Full { max: self.max_jobs }),
            _ => Err(bad("enqueue")),
        }
    }

    async fn claim(&self, max: usize, lease: Duration) -> QueueResult<Vec<Job>> {
        let now = now_ms();
        let args = [now.to_string(), (now + lease.as_millis() as i64).to_string(), max.to_string()];
        let Value::Array(rows) = self.run(&self.s.claim, &args).await? else { return Err(bad("claim")) };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let Value::Array(f) = row else { return Err(bad("claim")) };
            let (Some(json), Some(attempts)) = (f.get(1).and_then(text), f.get(2).and_then(int)) else {
                return Err(bad("claim"));
            };
            let mut job: Job =
                serde_json::from_str(&json).map_err(|e| QueueError::Internal(format!("corrupt job in Redis: {e}")))?;
            job.attempts = attempts.max(0) as u32;
            job.last_error = f.get(3).and_then(text);
            job.due_at = f.get(4).and_then(int).unwrap_or(now);
            out.push(job);
        }
        Ok(out)
    }

    async fn complete(&self, job: &Job) -> QueueResult<()> {
        self.run(&self.s.complete, std::slice::from_ref(&job.id)).await.map(|_| ())
    }

    async fn reschedule(&self, job: &Job, at_ms: i64, error: Option<&str>, refund: bool) -> QueueResult<()> {
        let args =
            [job.id.clone(), at_ms.to_string(), error.unwrap_or("").to_string(), if refund { "1" } else { "0" }.into()];
        self.run(&self.s.reschedule, &args).await.map(|_| ())
    }

    async fn bury(&self, job: &Job, error: &str) -> QueueResult<()> {
        let args = [job.id.clone(), now_ms().to_string(), error.to_string(), self.max_dead.to_string()];
        let v = self.run(&self.s.bury, &args).await?;
        if let Value::Array(a) = &v {
            if let Some(n @ 1..) = a.get(1).and_then(int) {
                tracing::warn!(dropped = n, "dead-letter queue full (queue.max_dead): oldest dead letters dropped");
            }
        }
        Ok(())
    }

    async fn stats(&self) -> QueueResult<QueueStats> {
        let now = now_ms();
        let mut p = redis::pipe();
        for r in ["r0", "r1", "r2"] {
            p.cmd("ZCOUNT").arg(self.key(r)).arg("-inf").arg(now);
            p.cmd("ZCARD").arg(self.key(r));
        }
        p.cmd("ZCARD").arg(self.key("leased"));
        p.cmd("ZCARD").arg(self.key("dead"));
        p.cmd("ZRANGE").arg(self.key("created")).arg(0).arg(0).arg("WITHSCORES");
        let mut conn = self.conn.clone();
        let (a, b, c, d, e, f, leased, dead, oldest): (u64, u64, u64, u64, u64, u64, u64, u64, Vec<(String, f64)>) =
            p.query_async(&mut conn).await.map_err(qerr)?;
        let mut s = QueueStats::default();
        *s.ready.get_mut(Priority::Express) = a;
        *s.ready.get_mut(Priority::Urgent) = c;
        *s.ready.get_mut(Priority::Normal) = e;
        s.delayed = (b - a.min(b)) + (d - c.min(d)) + (f - e.min(f));
        s.in_flight = leased;
        s.dead = dead;
        s.oldest_age_ms = oldest.first().map_or(0, |(_, t)| (now - *t as i64).max(0));
        Ok(s)
    }

    async fn dead(&self, limit: usize, cursor: Option<&str>) -> QueueResult<DeadPage> {
        let (max, after) = match cursor {
            None => ("+inf".to_string(), None),
            Some(c) => {
                let (t, id) = super::embedded::parse_cursor(c).ok_or(QueueError::BadCursor)?;
                (t.to_string(), Some((t, id)))
            }
        };
        // Equal failure times come in descending member order: skip up to the cursor's id.
        let rows: Vec<(String, f64)> = self
            .query(
                redis::cmd("ZREVRANGEBYSCORE")
                    .arg(self.key("dead"))
                    .arg(&max)
                    .arg("-inf")
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit + 65),
            )
            .await?;
        let mut ids: Vec<(String, i64)> = rows
            .into_iter()
            .map(|(id, t)| (id, t as i64))
            .filter(|(id, t)| after.as_ref().is_none_or(|(at, aid)| t < at || (t == at && id < aid)))
            .collect();
        let more = ids.len() > limit;
        ids.truncate(limit);
        let jobs = self.dead_jobs(&ids).await?;
        let next_cursor = if more { ids.last().map(|(id, t)| format!("{t}:{id}")) } else { None };
        Ok(DeadPage { jobs, next_cursor })
    }

    async fn retry_dead(&self, id: &str) -> QueueResult<bool> {
        let args = [id.to_string(), now_ms().to_string(), self.max_jobs.to_string()];
        match int(&self.run(&self.s.retry_dead, &args).await?) {
            Some(1) => Ok(true),
            Some(0) => Ok(false),
            Some(-1) => Err(QueueError::Full { max: self.max_jobs }),
            _ => Err(bad("retry")),
        }
    }

    async fn retry_dead_all(&self, filter: &DeadFilter) -> QueueResult<u64> {
        let ids: Vec<String> = self.query(redis::cmd("ZRANGE").arg(self.key("dead")).arg(0).arg(-1)).await?;
        // Oldest failure first, each one atomic, until the queue is full: the rest stay
        // dead letters (the script checks the room before it takes one out).
        let mut n = 0;
        for chunk in ids.chunks(256) {
            let pairs: Vec<(String, i64)> = chunk.iter().map(|id| (id.clone(), 0)).collect();
            for d in self.dead_jobs(&pairs).await? {
                if !filter.matches(&d.job) {
                    continue;
                }
                match self.retry_dead(&d.job.id).await {
                    Ok(true) => n += 1,
                    Ok(false) => {}
                    Err(QueueError::Full { .. }) if n > 0 => return Ok(n),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(n)
    }

    async fn delete_dead(&self, id: &str) -> QueueResult<bool> {
        Ok(int(&self.run(&self.s.delete_dead, &[id.to_string()]).await?) == Some(1))
    }
}
