//! The Lua scripts of the Redis store and the decoding of their answers.
//!
//! Each script touches the keys of one stream (or one cursor hash, or one idempotency
//! record), which share a hash tag and so one cluster slot; the append script takes several
//! streams at once on a standalone server only. Numbers that are seqs travel as
//! decimal strings (Lua numbers are doubles); times in ms fit a double exactly. Each script
//! declares its flags (`#!lua`): Redis then refuses a writing script up front when it is out
//! of memory, instead of failing half-way through.

use bytes::Bytes;
use redis::{Script, Value};

use crate::store::{IdemRecord, StoreError, StoredEvent};

/// Appends events to one or more streams (several only on a standalone server: on a cluster
/// the keys of two streams may live on different nodes). KEYS: per stream: stream, head,
/// expiry zset. ARGV: max_len (-1: none), then per stream: its event count n, then per
/// event: ts, expires_at (0: none), type, data.
/// Returns, per stream, {first seq, stream length before, trimmed}.
pub(super) const APPEND: &str = r#"#!lua
local out = {}
local a = 2
for k = 1, #KEYS, 3 do
  local stream, headkey, xkey = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local n = tonumber(ARGV[a])
  a = a + 1
  local len0 = redis.call('XLEN', stream)
  local head = redis.call('INCRBY', headkey, n) - n
  if head == 0 and redis.call('EXISTS', stream) == 1 then
    -- The head key was lost (evicted or deleted): never number below what the stream gave out.
    local info = redis.call('XINFO', 'STREAM', stream)
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then head = tonumber(string.match(info[i + 1], '^(%d+)')) end
    end
    redis.call('SET', headkey, string.format('%d', head + n))
  end
  local first = head + 1
  for b = a, a + 4 * (n - 1), 4 do
    head = head + 1
    local seq = string.format('%d', head)
    if ARGV[b + 1] == '0' then
      redis.call('XADD', stream, seq .. '-0', 't', ARGV[b], 'k', ARGV[b + 2], 'd', ARGV[b + 3])
    else
      redis.call('XADD', stream, seq .. '-0', 't', ARGV[b], 'x', ARGV[b + 1], 'k', ARGV[b + 2], 'd', ARGV[b + 3])
      redis.call('ZADD', xkey, ARGV[b + 1], seq)
    end
  end
  a = a + 4 * n
  local trimmed = 0
  if ARGV[1] ~= '-1' then trimmed = redis.call('XTRIM', stream, 'MAXLEN', ARGV[1]) end
  out[#out + 1] = {string.format('%d', first), len0, trimmed}
end
return out
"#;

/// Reads a stream. KEYS: stream, head. ARGV: start id ('' for no events), count.
/// Returns {head, id of the oldest entry or nil, entries}.
pub(super) const READ: &str = r#"#!lua flags=no-writes
local head = redis.call('GET', KEYS[2]) or '0'
local f = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local first = false
if #f > 0 then first = f[1][1] end
local evs = {}
if ARGV[1] ~= '' then evs = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2]) end
return {head, first, evs}
"#;

/// Applies retention to one stream. KEYS: stream, expiry zset. ARGV: cutoff (events with ts
/// below go), now (events expiring at or before go), max_len (-1: none), budget.
/// Returns {removed, length after, oldest ts or nil, earliest expiry or nil, more (0/1)}.
pub(super) const SWEEP_STREAM: &str = r#"#!lua
local stream, xkey = KEYS[1], KEYS[2]
local cutoff, budget = tonumber(ARGV[1]), tonumber(ARGV[4])
local removed, more = 0, 0
local due = redis.call('ZRANGEBYSCORE', xkey, '-inf', ARGV[2], 'LIMIT', 0, budget)
for _, seq in ipairs(due) do
  removed = removed + redis.call('XDEL', stream, seq .. '-0')
  redis.call('ZREM', xkey, seq)
end
if #due >= budget then more = 1 end
-- Age: events are in seq order, which is their order of acceptance; stop at the first young one.
while more == 0 do
  local front = redis.call('XRANGE', stream, '-', '+', 'COUNT', 64)
  local old = {}
  for _, e in ipairs(front) do
    if tonumber(e[2][2]) < cutoff then old[#old + 1] = e[1] else break end
  end
  if #old == 0 then break end
  removed = removed + redis.call('XDEL', stream, unpack(old))
  if #old < #front or #front < 64 then break end
  if removed >= budget then more = 1 end
end
if more == 0 and ARGV[3] ~= '-1' then
  local len, maxlen = redis.call('XLEN', stream), tonumber(ARGV[3])
  if len > maxlen then
    local keep = maxlen
    if len - maxlen > budget then keep = len - budget; more = 1 end
    removed = removed + redis.call('XTRIM', stream, 'MAXLEN', keep)
  end
end
local len = redis.call('XLEN', stream)
local oldest = false
if len > 0 then oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1][2][2] end
local minx = false
local x = redis.call('ZRANGE', xkey, 0, 0, 'WITHSCORES')
if #x > 0 then minx = x[2] end
return {removed, len, oldest, minx, more}
"#;

/// Moves a cursor forward. KEYS: cursor hash. ARGV: client, seq, now, max devices.
/// Returns {new seq, 1 if the cursor was created, cursors evicted}. Creating a cursor past
/// the device limit forgets the least recently used ones (the hash holds at most the limit
/// plus one, so the scan is bounded).
pub(super) const SET_CURSOR: &str = r#"#!lua
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local new = ARGV[2]
if cur then
  local c = string.match(cur, '^(%d+)')
  if #c > #new or (#c == #new and c > new) then new = c end
end
redis.call('HSET', KEYS[1], ARGV[1], new .. ':' .. ARGV[3])
if cur then return {new, 0, 0} end
local max = tonumber(ARGV[4])
local evicted = 0
while redis.call('HLEN', KEYS[1]) > max do
  local all = redis.call('HGETALL', KEYS[1])
  local victim, oldest = nil, nil
  for i = 1, #all, 2 do
    local used = tonumber(string.match(all[i + 1], ':(%-?%d+)$'))
    if all[i] ~= ARGV[1] and (oldest == nil or used < oldest) then victim, oldest = all[i], used end
  end
  if victim == nil then break end
  redis.call('HDEL', KEYS[1], victim)
  evicted = evicted + 1
end
return {new, 1, evicted}
"#;

/// Reads a cursor and refreshes its last use. KEYS: cursor hash. ARGV: client, now, touch_after.
pub(super) const GET_CURSOR: &str = r#"#!lua
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return false end
local seq, used = string.match(cur, '^(%d+):(%-?%d+)$')
if tonumber(ARGV[2]) - tonumber(used) > tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], ARGV[1], seq .. ':' .. ARGV[2])
end
return seq
"#;

/// Forgets cursors unused since a cutoff. KEYS: cursor hash. ARGV: cutoff.
/// Returns {removed, least recent last use among those kept, or nil}.
pub(super) const SWEEP_CURSORS: &str = r#"#!lua
local all = redis.call('HGETALL', KEYS[1])
local cutoff = tonumber(ARGV[1])
local removed, min = 0, false
for i = 1, #all, 2 do
  local used = tonumber(string.match(all[i + 1], ':(%-?%d+)$'))
  if used < cutoff then
    removed = removed + redis.call('HDEL', KEYS[1], all[i])
  elseif not min or used < min then
    min = used
  end
end
if min then min = string.format('%d', min) end
return {removed, min}
"#;

/// Remembers an idempotency record unless a live one exists (an answer replaces a live claim,
/// status 0). KEYS: record. ARGV: now, ttl, request hash, status, body, created, expiry ms (a
/// claim is back-dated and expires after its lease). Returns nil if stored, else the existing
/// {hash, status, body}.
pub(super) const IDEM_PUT: &str = r#"#!lua
local old = redis.call('HMGET', KEYS[1], 'c', 's')
if old[1] and tonumber(old[1]) + tonumber(ARGV[2]) > tonumber(ARGV[1]) and not (old[2] == '0' and ARGV[4] ~= '0') then
  return redis.call('HMGET', KEYS[1], 'h', 's', 'b')
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'c', ARGV[6], 'h', ARGV[3], 's', ARGV[4], 'b', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return false
"#;

/// Drops an idempotency claim (status 0), keeping an answer. KEYS: record.
pub(super) const IDEM_RELEASE: &str = r#"#!lua
if redis.call('HGET', KEYS[1], 's') == '0' then
  redis.call('DEL', KEYS[1])
end
return 0
"#;

pub(super) struct Scripts {
    pub(super) append: Script,
    pub(super) read: Script,
    pub(super) sweep_stream: Script,
    pub(super) set_cursor: Script,
    pub(super) get_cursor: Script,
    pub(super) sweep_cursors: Script,
    pub(super) idem_put: Script,
    pub(super) idem_release: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            append: Script::new(APPEND),
            read: Script::new(READ),
            sweep_stream: Script::new(SWEEP_STREAM),
            set_cursor: Script::new(SET_CURSOR),
            get_cursor: Script::new(GET_CURSOR),
            sweep_cursors: Script::new(SWEEP_CURSORS),
            idem_put: Script::new(IDEM_PUT),
            idem_release: Script::new(IDEM_RELEASE),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading script answers.

pub(super) fn bad(what: &str) -> StoreError {
    StoreError::Internal(format!("unexpected answer from redis to {what}"))
}

pub(super) fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

pub(super) fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => std::str::from_utf8(as_bytes(other)?).ok()?.parse().ok(),
    }
}

pub(super) fn as_u64(v: &Value) -> Option<u64> {
    std::str::from_utf8(as_bytes(v)?).ok()?.parse().ok()
}

pub(super) fn opt_int(v: &Value) -> Option<Option<i64>> {
    match v {
        Value::Nil => Some(None),
        v => as_int(v).map(Some),
    }
}

pub(super) fn into_array(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) => Some(a),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

/// Seq of a stream entry id `SEQ-0`.
pub(super) fn id_seq(id: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(id).ok()?;
    s.split_once('-')?.0.parse().ok()
}

/// One XRANGE entry: [id, [t, ts, (x, exp,) k, type, d, data]].
pub(super) fn decode_entry(v: Value) -> Option<StoredEvent> {
    let mut e = into_array(v)?.into_iter();
    let seq = id_seq(as_bytes(&e.next()?)?)?;
    let fields = into_array(e.next()?)?;
    let (mut ts, mut kind, mut data) = (None, None, None);
    let mut it = fields.into_iter();
    while let (Some(f), Some(val)) = (it.next(), it.next()) {
        match as_bytes(&f)? {
            b"t" => ts = as_int(&val),
            b"k" => kind = Some(String::from_utf8(as_bytes(&val)?.to_vec()).ok()?),
            b"d" => {
                data = Some(match val {
                    Value::BulkString(b) => Bytes::from(b),
                    other => Bytes::copy_from_slice(as_bytes(&other)?),
                })
            }
            _ => {}
        }
    }
    Some(StoredEvent { seq, kind: kind?, data: data?, ts: ts? })
}

/// What the stream sweep script found.
pub(super) struct Swept {
    pub(super) removed: u64,
    pub(super) len: u64,
    pub(super) oldest: Option<i64>,
    pub(super) min_expiry: Option<i64>,
    pub(super) more: bool,
}

pub(super) fn decode_swept(v: Value) -> Option<Swept> {
    let a = into_array(v)?;
    let [removed, len, oldest, minx, more] = <[Value; 5]>::try_from(a).ok()?;
    Some(Swept {
        removed: u64::try_from(as_int(&removed)?).ok()?,
        len: u64::try_from(as_int(&len)?).ok()?,
        oldest: opt_int(&oldest)?,
        min_expiry: match &minx {
            Value::Nil => None,
            // Scores come back as decimal strings, possibly with an exponent.
            v => Some(std::str::from_utf8(as_bytes(v)?).ok()?.parse::<f64>().ok()? as i64),
        },
        more: as_int(&more)? != 0,
    })
}

pub(super) fn decode_idem(v: &[Value]) -> Option<IdemRecord> {
    let [h, s, b] = v else { return None };
    Some(IdemRecord {
        request_hash: as_u64(h)?,
        status: u16::try_from(as_int(s)?).ok()?,
        body: Bytes::copy_from_slice(as_bytes(b).unwrap_or_default()),
    })
}
