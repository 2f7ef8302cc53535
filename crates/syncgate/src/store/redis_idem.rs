//! Idempotency records of the Redis store: `sg:idem:KEY` hashes (`c` created ms, `h` request
//! hash, `s` status, `b` body), written by the `IDEM_PUT` script so a claim and an answer are
//! atomic on any node. A claim is a record with status 0, back-dated so that the ordinary
//! expiry (created + ttl) ends it after its lease, and with a key expiry of the lease.
//!
//! Must never: let a claim replace a live answer, or remember a failed answer.

use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;

use super::scripts::{decode_idem, into_array, opt_int};
use super::{bad, ms, now_ms, RedisStore};
use crate::store::{IdemRecord, StoreResult};

impl RedisStore {
    pub(super) async fn get_idem(&self, key: &str) -> StoreResult<Option<IdemRecord>> {
        let inner = &self.inner;
        let mut conn = inner.conn();
        let cmd = redis::cmd("HMGET").arg(inner.keys.idem(key)).arg("c").arg("h").arg("s").arg("b").clone();
        let v: Vec<Value> = inner.run("idempotency", cmd.query_async(&mut conn)).await?;
        let [c, h, s, b] = <[Value; 4]>::try_from(v).map_err(|_| bad("idempotency"))?;
        let Some(created) = opt_int(&c).ok_or_else(|| bad("idempotency"))? else {
            return Ok(None);
        };
        if created.saturating_add(inner.live.idem_ttl_ms.load(Ordering::Relaxed)) <= now_ms() {
            return Ok(None);
        }
        decode_idem(&[h, s, b]).map(Some).ok_or_else(|| bad("idempotency"))
    }

    pub(super) async fn put_idem(&self, key: &str, record: IdemRecord) -> StoreResult<Option<IdemRecord>> {
        let ttl = self.inner.live.idem_ttl_ms.load(Ordering::Relaxed);
        let now = now_ms();
        self.idem_write(key, record, now, ttl).await
    }

    pub(super) async fn claim_idem(
        &self,
        key: &str,
        request_hash: u64,
        lease: Duration,
    ) -> StoreResult<Option<IdemRecord>> {
        let ttl = self.inner.live.idem_ttl_ms.load(Ordering::Relaxed);
        // Back-dated so that the record's ordinary expiry (created + ttl) ends the lease.
        let created = now_ms().saturating_sub(ttl).saturating_add(ms(lease).max(1));
        self.idem_write(
            key,
            IdemRecord { request_hash, status: 0, body: bytes::Bytes::new() },
            created,
            ms(lease).max(1),
        )
        .await
    }

    pub(super) async fn release_idem(&self, key: &str) -> StoreResult<()> {
        let inner = &self.inner;
        let inv = inner.scripts.idem_release.key(inner.keys.idem(key));
        let mut conn = inner.conn();
        inner.run("idempotency", inv.invoke_async::<i64>(&mut conn)).await.map(|_| ())
    }

    /// Runs `IDEM_PUT`: stores `record` as created at `created`, expiring after `expire_ms`.
    async fn idem_write(
        &self,
        key: &str,
        record: IdemRecord,
        created: i64,
        expire_ms: i64,
    ) -> StoreResult<Option<IdemRecord>> {
        let inner = &self.inner;
        let mut inv = inner.scripts.idem_put.key(inner.keys.idem(key));
        inv.arg(now_ms())
            .arg(inner.live.idem_ttl_ms.load(Ordering::Relaxed))
            .arg(record.request_hash.to_string())
            .arg(record.status)
            .arg(record.body.as_ref())
            .arg(created)
            .arg(expire_ms.max(1));
        let mut conn = inner.conn();
        let v: Value = inner.run("idempotency", inv.invoke_async(&mut conn)).await?;
        match v {
            Value::Nil => Ok(None),
            v => {
                let a = into_array(v).ok_or_else(|| bad("idempotency"))?;
                decode_idem(&a).map(Some).ok_or_else(|| bad("idempotency"))
            }
        }
    }
}
