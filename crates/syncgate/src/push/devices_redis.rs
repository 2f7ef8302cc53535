//! Push registrations in cluster mode: one Redis hash per user, so every node sees them.
//!
//! Owns: the key `PREFIX:{p:USER}:d` (hash client id -> Registration JSON) and the two
//! scripts that keep it bounded (`put`) and compare before removing (`remove_if`); each
//! script touches that one key, so it works on Redis Cluster.
//!
//! Must never: wait on Redis without a time limit, or let the hash grow past the bound.

use std::time::Duration;

use async_trait::async_trait;
use redis::{AsyncCommands, Script};

use super::devices::{Devices, Registration};
use crate::store::redis::{is_unavailable, RedisConn};
use crate::store::{StoreError, StoreResult};

const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// KEYS[1] the hash; ARGV: client id, JSON, max. Drops the least recently updated others
/// while the hash is full, then sets the client's entry. Returns the dropped client ids.
const PUT: &str = r#"
local k, c, v, max = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local dropped = {}
if redis.call('HEXISTS', k, c) == 0 then
  while redis.call('HLEN', k) >= max do
    local all = redis.call('HGETALL', k)
    local oldest, at = nil, nil
    for i = 1, #all, 2 do
      local ok, r = pcall(cjson.decode, all[i + 1])
      local t = (ok and type(r) == 'table' and tonumber(r.updated_at)) or 0
      if oldest == nil or t < at or (t == at and all[i] < oldest) then
        oldest, at = all[i], t
      end
    end
    redis.call('HDEL', k, oldest)
    dropped[#dropped + 1] = oldest
  end
end
redis.call('HSET', k, c, v)
return dropped
"#;

/// KEYS[1] the hash; ARGV: client id, address. Removes the entry if its token or
/// subscription endpoint is still this address.
const REMOVE_IF: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local ok, r = pcall(cjson.decode, v)
if not ok or type(r) ~= 'table' then return 0 end
local a = r.token
if a == nil and type(r.subscription) == 'table' then a = r.subscription.endpoint end
if a == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"#;

pub struct RedisDevices {
    conn: RedisConn,
    prefix: String,
    put: Script,
    remove_if: Script,
}

fn map_err(e: redis::RedisError) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Internal(e.to_string())
    }
}

async fn timed<T>(f: impl std::future::Future<Output = redis::RedisResult<T>>) -> StoreResult<T> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(r) => r.map_err(map_err),
        Err(_) => Err(StoreError::Unavailable("Redis did not answer in time".into())),
    }
}

fn decode(v: &str) -> StoreResult<Registration> {
    serde_json::from_str(v).map_err(|e| StoreError::Internal(e.to_string()))
}

impl RedisDevices {
    pub fn new(conn: RedisConn, prefix: &str) -> Self {
        RedisDevices { conn, prefix: prefix.to_string(), put: Script::new(PUT), remove_if: Script::new(REMOVE_IF) }
    }

    fn key(&self, user: &str) -> String {
        format!("{}:{{p:{user}}}:d", self.prefix)
    }
}

#[async_trait]
impl Devices for RedisDevices {
    async fn put(&self, user: &str, reg: Registration, max: usize) -> StoreResult<Vec<String>> {
        let v = serde_json::to_string(&reg).map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut c = self.conn.clone();
        let mut inv = self.put.key(self.key(user));
        inv.arg(&reg.client_id).arg(v).arg(max);
        timed(inv.invoke_async(&mut c)).await
    }

    async fn get(&self, user: &str, client_id: &str) -> StoreResult<Option<Registration>> {
        let mut c = self.conn.clone();
        let v: Option<String> = timed(c.hget(self.key(user), client_id)).await?;
        v.as_deref().map(decode).transpose()
    }

    async fn list(&self, user: &str) -> StoreResult<Vec<Registration>> {
        let mut c = self.conn.clone();
        let all: Vec<(String, String)> = timed(c.hgetall(self.key(user))).await?;
        let mut out = all.iter().map(|(_, v)| decode(v)).collect::<StoreResult<Vec<_>>>()?;
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        Ok(out)
    }

    async fn remove(&self, user: &str, client_id: &str) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        let n: u64 = timed(c.hdel(self.key(user), client_id)).await?;
        Ok(n > 0)
    }

    async fn remove_if(&self, user: &str, client_id: &str, address: &str) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        let mut inv = self.remove_if.key(self.key(user));
        inv.arg(client_id).arg(address);
        let n: u64 = timed(inv.invoke_async(&mut c)).await?;
        Ok(n > 0)
    }
}
