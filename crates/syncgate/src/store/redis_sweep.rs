//! The retention sweep of the Redis store and the figures of its `stats`.
//!
//! Owns: walking the retention indexes (`sg:{i:N}:*`, `INDEX_SHARDS` shards each) page by
//! page, applying age, ttl and length retention to the streams found there and re-scoring or
//! dropping their index entries, expiring cursors, keeping the front of each user index exact
//! for the oldest age in `stats`, noticing a wiped Redis (the epoch check at each sweep), and
//! the `stats` figures: this node's counter deltas, added to `sg:stats` once a second, and the
//! stream count and oldest age read from the indexes.
//!
//! Must never: scan the whole keyspace (only the indexes are read), or drop the index entry of
//! a stream an append refilled meanwhile (an emptied stream is looked at again after its entry
//! is removed; see the module doc of `store::redis`).

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use redis::{RedisError, Value};

use super::scripts::{bad, decode_swept};
use super::{ms, now_ms, zadd_lt, Inner, Kind, INDEX_SHARDS};
use crate::store::{Retention, StoreError, StoreResult, StoreStats};

/// Index entries read per round of a sweep, and scripts in flight at once.
const SWEEP_PAGE: usize = 64;
/// Most events one sweep script removes from one stream before it yields to other clients.
const SWEEP_BUDGET: u64 = 1000;
/// Index entries re-checked per shard after a sweep so the oldest age in `stats` is exact.
const REFRESH_FRONT: usize = 16;
/// How often each node adds its counter deltas to `sg:stats`.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

pub(super) async fn flush_loop(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let _ = inner.flush_counters().await; // kept for the next round on failure
    }
}

impl Inner {
    pub(super) async fn flush_counters(&self) -> Result<(), RedisError> {
        let m = self.messages_delta.swap(0, Ordering::AcqRel);
        let c = self.cursors_delta.swap(0, Ordering::AcqRel);
        if m == 0 && c == 0 {
            return Ok(());
        }
        let mut conn = self.conn();
        let key = self.keys.stats();
        let r = async {
            let mut p = redis::pipe();
            p.cmd("HINCRBY").arg(&key).arg("m").arg(m).ignore();
            p.cmd("HINCRBY").arg(&key).arg("c").arg(c).ignore();
            p.query_async::<()>(&mut conn).await
        };
        let r = match tokio::time::timeout(self.op_timeout, r).await {
            Ok(r) => r,
            Err(_) => Err(RedisError::from((redis::ErrorKind::Io, "timed out"))),
        };
        if r.is_err() {
            self.messages_delta.fetch_add(m, Ordering::AcqRel);
            self.cursors_delta.fetch_add(c, Ordering::AcqRel);
        }
        r
    }

    /// Counts removed messages of user streams and room histories alike. Several nodes may
    /// sweep at once: the scripts make that safe, only the work is repeated.
    pub(super) async fn sweep(&self, retention: &Retention, now_ms: i64) -> StoreResult<u64> {
        self.check_epoch().await?;
        let live = &self.live;
        live.idem_ttl_ms.store(ms(retention.idempotency_ttl).max(1), Ordering::Relaxed);
        live.max_len.store(retention.max_len, Ordering::Relaxed);
        live.room_max_len.store(retention.room_max_len, Ordering::Relaxed);
        let mut removed = 0;
        let kinds = [
            (Kind::User, retention.max_age, retention.max_len, &live.len_swept),
            (Kind::Room, retention.room_max_age, retention.room_max_len, &live.room_len_swept),
        ];
        for (kind, max_age, max_len, swept) in kinds {
            let cutoff = now_ms.saturating_sub(ms(max_age));
            removed += self.sweep_due(kind, 'x', now_ms.saturating_add(1), cutoff, now_ms, max_len).await?;
            removed += self.sweep_due(kind, 't', cutoff, cutoff, now_ms, max_len).await?;
            if swept.load(Ordering::Relaxed) != max_len {
                // Another node (or this one before a restart) may have applied it already.
                let mut conn = self.conn();
                let (key, field) = (self.keys.retention(), kind.letter().to_string());
                let cmd = redis::cmd("HGET").arg(&key).arg(&field).clone();
                let applied: Option<String> = self.run("sweep", cmd.query_async(&mut conn)).await?;
                if applied != Some(max_len.to_string()) {
                    removed += self.sweep_all(kind, cutoff, now_ms, max_len).await?;
                    let cmd = redis::cmd("HSET").arg(&key).arg(&field).arg(max_len.to_string()).clone();
                    self.run("sweep", cmd.query_async::<()>(&mut conn)).await?;
                }
                swept.store(max_len, Ordering::Relaxed);
            }
            if kind == Kind::User {
                removed += self.refresh_front(cutoff, now_ms, max_len).await?;
            }
        }
        self.sweep_cursors(now_ms.saturating_sub(ms(retention.cursor_ttl))).await?;
        // Idempotency records expire in Redis by themselves (PEXPIRE); `idem_get` also ignores
        // the ones older than the ttl just set.
        let _ = self.flush_counters().await;
        Ok(removed)
    }

    /// `Store::stats`: the counters from `sg:stats`, `streams` and the oldest age from the indexes.
    pub(super) async fn stats(&self) -> StoreResult<StoreStats> {
        self.check()?;
        let _ = self.flush_counters().await;
        let now = now_ms();
        let shard_reads = stream::iter((0..INDEX_SHARDS).map(|n| {
            let key = self.keys.index(Kind::User, 't', n);
            let mut conn = self.conn();
            async move {
                let count: u64 = redis::cmd("ZCARD").arg(&key).query_async(&mut conn).await?;
                let front: Vec<(String, f64)> =
                    redis::cmd("ZRANGE").arg(&key).arg(0).arg(0).arg("WITHSCORES").query_async(&mut conn).await?;
                Ok::<_, RedisError>((count, front.first().map(|f| f.1 as i64)))
            }
        }))
        .buffer_unordered(INDEX_SHARDS as usize)
        .try_collect::<Vec<_>>();
        let shards = self.run("stats", shard_reads).await?;
        let mut conn = self.conn();
        let counters: (Option<i64>, Option<i64>) = self
            .run("stats", redis::cmd("HMGET").arg(self.keys.stats()).arg("m").arg("c").query_async(&mut conn))
            .await?;
        let oldest = shards.iter().filter_map(|s| s.1).min();
        Ok(StoreStats {
            stored_messages: counters.0.unwrap_or(0).max(0) as u64,
            streams: shards.iter().map(|s| s.0).sum(),
            oldest_age_ms: oldest.map(|ts| u64::try_from(now.saturating_sub(ts)).unwrap_or(0)),
            cursors: counters.1.unwrap_or(0).max(0) as u64,
            ..StoreStats::default()
        })
    }

    /// Runs the retention script on one stream and re-scores its index entries. Returns the
    /// events removed and whether the stream has more to remove.
    async fn sweep_stream(
        &self,
        kind: Kind,
        name: &str,
        cutoff: i64,
        now: i64,
        max_len: u64,
    ) -> StoreResult<(u64, bool)> {
        let [s, _, x] = self.keys.stream(kind, name);
        let max_len = if max_len == u64::MAX { "-1".to_string() } else { max_len.to_string() };
        let run_script = || {
            let mut inv = self.scripts.sweep_stream.key(&s);
            inv.key(&x).arg(cutoff).arg(now).arg(&max_len).arg(SWEEP_BUDGET);
            let mut conn = self.conn();
            async move { inv.invoke_async::<Value>(&mut conn).await }
        };
        let swept = decode_swept(self.run("sweep", run_script()).await?).ok_or_else(|| bad("sweep"))?;
        if kind == Kind::User {
            self.messages_delta.fetch_sub(swept.removed as i64, Ordering::AcqRel);
        }
        let shard = self.keys.shard(kind, name);
        let (t_index, x_index) = (self.keys.index(kind, 't', shard), self.keys.index(kind, 'x', shard));
        let mut cmds = Vec::new();
        let mut emptied = false;
        match swept.oldest.filter(|_| swept.len > 0) {
            Some(ts) => cmds.push(redis::cmd("ZADD").arg(&t_index).arg(ts).arg(name).clone()),
            None => {
                cmds.push(redis::cmd("ZREM").arg(&t_index).arg(name).clone());
                emptied = true;
            }
        }
        match swept.min_expiry {
            Some(exp) => cmds.push(redis::cmd("ZADD").arg(&x_index).arg(exp).arg(name).clone()),
            None => {
                cmds.push(redis::cmd("ZREM").arg(&x_index).arg(name).clone());
                emptied = true;
            }
        }
        self.run("index", self.send_all(&mut redis::pipe(), cmds)).await?;
        if emptied {
            // An append may have found the stream empty and indexed it before our ZREM: look
            // again and put back what is there.
            let again = decode_swept(self.run("sweep", run_script()).await?).ok_or_else(|| bad("sweep"))?;
            if kind == Kind::User {
                self.messages_delta.fetch_sub(again.removed as i64, Ordering::AcqRel);
            }
            let mut cmds = Vec::new();
            if let Some(ts) = again.oldest.filter(|_| again.len > 0) {
                cmds.push(zadd_lt(&t_index, ts, name));
            }
            if let Some(exp) = again.min_expiry {
                cmds.push(zadd_lt(&x_index, exp, name));
            }
            if !cmds.is_empty() {
                self.run("index", self.send_all(&mut redis::pipe(), cmds)).await?;
            }
            return Ok((swept.removed + again.removed, swept.more || again.more));
        }
        Ok((swept.removed, swept.more))
    }

    /// Sweeps the streams of index `index` scored below `bound`, page by page.
    async fn sweep_due(
        &self,
        kind: Kind,
        what: char,
        bound: i64,
        cutoff: i64,
        now: i64,
        max_len: u64,
    ) -> StoreResult<u64> {
        let mut removed = 0;
        for shard in 0..INDEX_SHARDS {
            let key = self.keys.index(kind, what, shard);
            // Each round re-scores what it visits past `bound` or drops it, so this ends; the
            // cap only guards against a stream whose events keep the wrong order.
            for _ in 0..10_000 {
                let mut conn = self.conn();
                let names: Vec<String> = self
                    .run(
                        "sweep",
                        redis::cmd("ZRANGEBYSCORE")
                            .arg(&key)
                            .arg("-inf")
                            .arg(format!("({bound}"))
                            .arg("LIMIT")
                            .arg(0)
                            .arg(SWEEP_PAGE)
                            .query_async(&mut conn),
                    )
                    .await?;
                if names.is_empty() {
                    break;
                }
                let calls: Vec<_> = names.iter().map(|n| self.sweep_stream(kind, n, cutoff, now, max_len)).collect();
                let results = stream::iter(calls).buffer_unordered(SWEEP_PAGE).try_collect::<Vec<_>>().await?;
                removed += results.iter().map(|r| r.0).sum::<u64>();
            }
        }
        Ok(removed)
    }

    /// Applies retention to every indexed stream of `kind` (used when `max_len` changed).
    async fn sweep_all(&self, kind: Kind, cutoff: i64, now: i64, max_len: u64) -> StoreResult<u64> {
        let mut removed = 0;
        for shard in 0..INDEX_SHARDS {
            let key = self.keys.index(kind, 't', shard);
            let mut cursor = 0u64;
            loop {
                let mut conn = self.conn();
                let (next, page): (u64, Vec<String>) = self
                    .run(
                        "sweep",
                        redis::cmd("ZSCAN").arg(&key).arg(cursor).arg("COUNT").arg(SWEEP_PAGE).query_async(&mut conn),
                    )
                    .await?;
                // ZSCAN answers member, score, member, score...
                let calls: Vec<_> = page
                    .iter()
                    .step_by(2)
                    .map(|n| async move {
                        let mut removed = 0;
                        loop {
                            let (r, more) = self.sweep_stream(kind, n, cutoff, now, max_len).await?;
                            removed += r;
                            if !more {
                                return Ok::<_, StoreError>(removed);
                            }
                        }
                    })
                    .collect();
                let done = stream::iter(calls).buffer_unordered(SWEEP_PAGE).try_collect::<Vec<u64>>().await?;
                removed += done.iter().sum::<u64>();
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(removed)
    }

    /// Makes the lowest index entries of each user shard exact, so `stats` reports the true
    /// oldest age (appends only ever lower a score; trims by length leave it low).
    async fn refresh_front(&self, cutoff: i64, now: i64, max_len: u64) -> StoreResult<u64> {
        let mut removed = 0;
        for shard in 0..INDEX_SHARDS {
            let key = self.keys.index(Kind::User, 't', shard);
            for _ in 0..REFRESH_FRONT {
                let mut conn = self.conn();
                let front: Vec<(String, f64)> = self
                    .run("sweep", redis::cmd("ZRANGE").arg(&key).arg(0).arg(0).arg("WITHSCORES").query_async(&mut conn))
                    .await?;
                let Some((name, score)) = front.into_iter().next() else { break };
                let (r, _) = self.sweep_stream(Kind::User, &name, cutoff, now, max_len).await?;
                removed += r;
                let mut conn = self.conn();
                let after: Option<f64> =
                    self.run("sweep", redis::cmd("ZSCORE").arg(&key).arg(&name).query_async(&mut conn)).await?;
                if after == Some(score) {
                    break; // already exact: the shard's minimum is right
                }
            }
        }
        Ok(removed)
    }

    async fn sweep_cursors(&self, cutoff: i64) -> StoreResult<()> {
        for shard in 0..INDEX_SHARDS {
            let key = self.keys.cursor_index(shard);
            for _ in 0..10_000 {
                let mut conn = self.conn();
                let users: Vec<String> = self
                    .run(
                        "sweep",
                        redis::cmd("ZRANGEBYSCORE")
                            .arg(&key)
                            .arg("-inf")
                            .arg(format!("({cutoff}"))
                            .arg("LIMIT")
                            .arg(0)
                            .arg(SWEEP_PAGE)
                            .query_async(&mut conn),
                    )
                    .await?;
                if users.is_empty() {
                    break;
                }
                let calls: Vec<_> = users.iter().map(|u| self.sweep_user_cursors(&key, u, cutoff)).collect();
                stream::iter(calls).buffer_unordered(SWEEP_PAGE).try_collect::<Vec<()>>().await?;
            }
        }
        Ok(())
    }

    async fn sweep_user_cursors(&self, index: &str, user: &str, cutoff: i64) -> StoreResult<()> {
        let hash = self.keys.cursors(user);
        let run_script = || {
            let mut inv = self.scripts.sweep_cursors.key(&hash);
            inv.arg(cutoff);
            let mut conn = self.conn();
            async move { inv.invoke_async::<(i64, Option<i64>)>(&mut conn).await }
        };
        let (removed, min) = self.run("sweep", run_script()).await?;
        self.cursors_delta.fetch_sub(removed, Ordering::AcqRel);
        let mut conn = self.conn();
        match min {
            Some(min) => {
                self.run("index", redis::cmd("ZADD").arg(index).arg(min).arg(user).query_async::<()>(&mut conn))
                    .await?;
            }
            None => {
                self.run("index", redis::cmd("ZREM").arg(index).arg(user).query_async::<()>(&mut conn)).await?;
                // A cursor created since the script ran must stay indexed.
                let (removed, min) = self.run("sweep", run_script()).await?;
                self.cursors_delta.fetch_sub(removed, Ordering::AcqRel);
                if let Some(min) = min {
                    let cmd = zadd_lt(index, min, user);
                    self.run("index", cmd.query_async::<()>(&mut conn)).await?;
                }
            }
        }
        Ok(())
    }

    /// Marks the store unusable if the epoch key is gone or changed (Redis was wiped).
    async fn check_epoch(&self) -> StoreResult<()> {
        let mut conn = self.conn();
        let found: Option<String> =
            self.run("epoch", redis::cmd("GET").arg(self.keys.epoch()).query_async(&mut conn)).await?;
        if found.as_deref() != Some(self.epoch.as_str()) {
            tracing::error!(
                epoch = %self.epoch,
                found = ?found,
                "redis store: the epoch key is gone or changed (Redis was wiped); refusing to serve until restart"
            );
            self.reset.store(true, Ordering::Release);
            self.check()?;
        }
        Ok(())
    }
}
