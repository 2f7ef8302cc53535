//! The Lua scripts of the Redis queue. Every key of the queue carries the hash tag `{q}`, so
//! in a Redis Cluster they share one slot and each script is one atomic step.
//!
//! Keys (after the prefix): `jobs` hash id -> job JSON (kind, endpoint, priority, payload,
//! created_at; never rewritten), `att` hash id -> attempts, `err` hash id -> last error,
//! `rk` hash id -> priority rank, `r0` `r1` `r2` zsets of due times per priority (delayed
//! jobs too), `leased` zset of lease ends, `created` zset of enqueue times (oldest age),
//! `dead` zset of failure times and `dj` hash id -> job JSON of dead letters. Times are unix
//! ms, exact in a Lua double.

/// The key order every script below is called with.
pub(super) const KEY_NAMES: [&str; 11] =
    ["jobs", "att", "err", "rk", "r0", "r1", "r2", "leased", "created", "dead", "dj"];

/// ARGV: id, job JSON, rank, due, created, max_jobs. Returns 1, or 0 when full.
pub(super) const ENQUEUE: &str = r#"#!lua
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[6]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], 0)
redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[5 + tonumber(ARGV[3])], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[9], ARGV[5], ARGV[1])
return 1
"#;

/// ARGV: now, lease end, max. Jobs whose lease ended before now are due again first.
/// Returns {{id, job JSON, attempts, last error or false, due}, ...}, express first.
pub(super) const CLAIM: &str = r#"#!lua
local now, max = ARGV[1], tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', '(' .. now, 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[8], id)
  local rk = redis.call('HGET', KEYS[4], id)
  if rk and redis.call('HEXISTS', KEYS[1], id) == 1 then
    redis.call('ZADD', KEYS[5 + tonumber(rk)], now, id)
  end
end
local out = {}
for r = 5, 7 do
  if #out >= max then break end
  local due = redis.call('ZRANGEBYSCORE', KEYS[r], '-inf', now, 'WITHSCORES', 'LIMIT', 0, max - #out)
  for i = 1, #due, 2 do
    local id = due[i]
    redis.call('ZREM', KEYS[r], id)
    local job = redis.call('HGET', KEYS[1], id)
    if job then
      local a = redis.call('HINCRBY', KEYS[2], id, 1)
      redis.call('ZADD', KEYS[8], ARGV[2], id)
      out[#out + 1] = {id, job, a, redis.call('HGET', KEYS[3], id), due[i + 1]}
    end
  end
end
return out
"#;

/// ARGV: id. The job is gone.
pub(super) const COMPLETE: &str = r#"#!lua
local id = ARGV[1]
redis.call('HDEL', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
redis.call('HDEL', KEYS[3], id)
redis.call('HDEL', KEYS[4], id)
for r = 5, 9 do redis.call('ZREM', KEYS[r], id) end
return 1
"#;

/// ARGV: id, due, error ('' = keep), refund (1/0). Returns 0 when the job is gone.
pub(super) const RESCHEDULE: &str = r#"#!lua
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[1], id) == 0 then return 0 end
redis.call('ZREM', KEYS[8], id)
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[2], id, -1) end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[3], id, ARGV[3]) end
local rk = tonumber(redis.call('HGET', KEYS[4], id) or '2')
redis.call('ZADD', KEYS[5 + rk], ARGV[2], id)
return 1
"#;

/// ARGV: id, now, error, max_dead. The job moves to the dead letters (attempts, error and
/// rank stay in their hashes); the oldest dead letters past max_dead are dropped.
/// Returns {moved (1/0), dropped}.
pub(super) const BURY: &str = r#"#!lua
local id = ARGV[1]
local job = redis.call('HGET', KEYS[1], id)
if not job then return {0, 0} end
redis.call('HDEL', KEYS[1], id)
for r = 5, 9 do redis.call('ZREM', KEYS[r], id) end
redis.call('HSET', KEYS[3], id, ARGV[3])
redis.call('ZADD', KEYS[10], ARGV[2], id)
redis.call('HSET', KEYS[11], id, job)
local dropped = 0
while redis.call('ZCARD', KEYS[10]) > tonumber(ARGV[4]) do
  local old = redis.call('ZPOPMIN', KEYS[10])
  local oid = old[1]
  redis.call('HDEL', KEYS[11], oid)
  redis.call('HDEL', KEYS[2], oid)
  redis.call('HDEL', KEYS[3], oid)
  redis.call('HDEL', KEYS[4], oid)
  dropped = dropped + 1
end
return {1, dropped}
"#;

/// ARGV: id, now, max_jobs. Returns 1 (queued again, due now, attempts 0), 0 (no such
/// dead letter) or -1 (queue full).
pub(super) const RETRY_DEAD: &str = r#"#!lua
local id = ARGV[1]
local job = redis.call('HGET', KEYS[11], id)
if not job then return 0 end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
redis.call('ZREM', KEYS[10], id)
redis.call('HDEL', KEYS[11], id)
redis.call('HSET', KEYS[1], id, job)
redis.call('HSET', KEYS[2], id, 0)
local rk = tonumber(redis.call('HGET', KEYS[4], id) or '2')
redis.call('HSET', KEYS[4], id, rk)
redis.call('ZADD', KEYS[5 + rk], ARGV[2], id)
redis.call('ZADD', KEYS[9], ARGV[2], id)
return 1
"#;

/// ARGV: id. Returns 1 when a dead letter was deleted.
pub(super) const DELETE_DEAD: &str = r#"#!lua
local id = ARGV[1]
if redis.call('ZREM', KEYS[10], id) == 0 then return 0 end
redis.call('HDEL', KEYS[11], id)
redis.call('HDEL', KEYS[2], id)
redis.call('HDEL', KEYS[3], id)
redis.call('HDEL', KEYS[4], id)
return 1
"#;
