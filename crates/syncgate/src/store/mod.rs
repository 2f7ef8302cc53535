//! Durable storage of user streams, room history, device cursors and idempotency keys.
//!
//! Owns: the `Store` trait, the event id format (`EventId`), and the implementations
//! (`embedded`: redb on local disk, the single-node default). Every persisted message to a
//! user is appended to that user's stream with a sequence number that grows by exactly one
//! per message (so a gap can be detected by whoever reads it); rooms keep a bounded history
//! the same way.
//!
//! Must never: deliver anything to a connection (that is the hub's job), answer an append
//! before the data is as durable as the configured fsync policy says, or let a reader see a
//! sequence number whose predecessors are not yet readable.

pub mod embedded;
pub mod redis;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage is shutting down")]
    Closed,
    #[error("storage error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A stream position as clients see it: `"{epoch}.{tag}.{seq}"`.
///
/// The epoch is chosen at random when a store is created; an id of another epoch means
/// the store was wiped (or the id belongs to another deployment) and must not be resumed
/// from silently. The tag is a short hash of the stream (`user:{id}` or `room:{name}`), so
/// an id of another user's stream is refused instead of moving a cursor by mistake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventId {
    pub epoch: String,
    pub tag: u32,
    pub seq: u64,
}

/// Why a client-supplied id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("malformed id {0:?}: expected an id from an event of this stream")]
    Malformed(String),
    #[error("id {0:?} belongs to another store epoch (the store was reset); resume without since")]
    OtherEpoch(String),
    #[error("id {0:?} belongs to another stream")]
    OtherStream(String),
}

/// Which stream an id belongs to.
#[derive(Debug, Clone, Copy)]
pub enum StreamKey<'a> {
    User(&'a str),
    Room(&'a str),
}

impl StreamKey<'_> {
    /// 24-bit FNV-1a hash of the stream's name (stable across versions and platforms).
    pub fn tag(&self) -> u32 {
        let (prefix, name) = match self {
            StreamKey::User(u) => ("user:", *u),
            StreamKey::Room(r) => ("room:", *r),
        };
        let mut h: u32 = 0x811c_9dc5;
        for b in prefix.bytes().chain(name.bytes()) {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
        (h >> 8) ^ (h & 0xff)
    }
}

impl EventId {
    pub fn new(epoch: &str, stream: StreamKey<'_>, seq: u64) -> Self {
        EventId { epoch: epoch.to_string(), tag: stream.tag(), seq }
    }

    /// Formats the id without building an `EventId`.
    pub fn format(epoch: &str, stream: StreamKey<'_>, seq: u64) -> String {
        format!("{epoch}.{:06x}.{seq}", stream.tag())
    }

    /// Parses `s` and checks that it belongs to `epoch` and `stream`; returns the seq.
    pub fn parse(s: &str, epoch: &str, stream: StreamKey<'_>) -> Result<u64, IdError> {
        let malformed = || IdError::Malformed(s.to_string());
        let mut parts = s.split('.');
        let (Some(e), Some(tag), Some(seq), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(malformed());
        };
        if e.is_empty()
            || tag.len() != 6
            || seq.is_empty()
            || seq.len() > 19
            || !seq.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(malformed());
        }
        let tag = u32::from_str_radix(tag, 16).map_err(|_| malformed())?;
        let seq: u64 = seq.parse().map_err(|_| malformed())?;
        if e != epoch {
            return Err(IdError::OtherEpoch(s.to_string()));
        }
        if tag != stream.tag() {
            return Err(IdError::OtherStream(s.to_string()));
        }
        Ok(seq)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06x}.{}", self.epoch, self.tag, self.seq)
    }
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_refuse_foreign_ones() {
        let id = EventId::format("ab12cd34", StreamKey::User("alice"), 42);
        assert_eq!(EventId::parse(&id, "ab12cd34", StreamKey::User("alice")), Ok(42));
        assert_eq!(EventId::new("ab12cd34", StreamKey::User("alice"), 42).to_string(), id);
        assert!(matches!(EventId::parse(&id, "ffffffff", StreamKey::User("alice")), Err(IdError::OtherEpoch(_))));
        assert!(matches!(EventId::parse(&id, "ab12cd34", StreamKey::User("bob")), Err(IdError::OtherStream(_))));
        assert!(matches!(EventId::parse(&id, "ab12cd34", StreamKey::Room("alice")), Err(IdError::OtherStream(_))));
        for bad in [
            "",
            "42",
            "ab12cd34.42",
            "ab12cd34.zzzzzz.1",
            "ab12cd34.000000.-1",
            "a.b.c.d",
            "ab12cd34.000000.99999999999999999999",
        ] {
            assert!(
                matches!(EventId::parse(bad, "ab12cd34", StreamKey::User("alice")), Err(IdError::Malformed(_))),
                "{bad}"
            );
        }
    }
}

/// One message to append to a user's stream.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Stream key: the user id for user streams, the room name for room history.
    pub stream: String,
    /// Message type (e.g. `playlist.updated`).
    pub kind: String,
    /// The message's `data`, as raw JSON bytes (already validated).
    pub data: Bytes,
    /// Unix milliseconds at which the message was accepted.
    pub ts: i64,
    /// Optional per-message time to live; the retention sweep drops it after that.
    pub ttl: Option<Duration>,
}

/// One stored message, as read back.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: u64,
    pub kind: String,
    pub data: Bytes,
    pub ts: i64,
}

/// A page of a stream, read after some position.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Events with `seq > after`, in order, at most `limit` of them.
    pub events: Vec<StoredEvent>,
    /// The last sequence number ever appended to the stream (0 if none).
    pub head: u64,
    /// The oldest sequence number still retained (head + 1 when the stream is empty).
    /// When `first > after + 1`, messages after the reader's position were trimmed.
    pub first: u64,
}

/// What is remembered for an Idempotency-Key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdemRecord {
    /// Hash of the request (method, path, body) that first used the key.
    pub request_hash: u64,
    /// HTTP status of the first answer; 0 for a claim (the first request is in flight).
    pub status: u16,
    /// Body of the first answer.
    pub body: Bytes,
}

/// Counters for /api/v1/offline/stats.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreStats {
    pub stored_messages: u64,
    pub streams: u64,
    pub oldest_age_ms: Option<u64>,
    pub cursors: u64,
    /// Bytes of the embedded store's block cache in use (engine `lsm`; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_bytes: Option<u64>,
    /// Bytes of written data held in memory beside the cache: fjall's memtables (engine `lsm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_buffer_bytes: Option<u64>,
}

/// Retention settings, applied by `sweep`.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Drop user-stream messages older than this.
    pub max_age: Duration,
    /// Keep at most this many messages per user stream.
    pub max_len: u64,
    /// Keep at most this many messages per room history.
    pub room_max_len: u64,
    /// Drop room history older than this.
    pub room_max_age: Duration,
    /// Forget device cursors unused for this long.
    pub cursor_ttl: Duration,
    /// Forget idempotency keys after this long.
    pub idempotency_ttl: Duration,
}

/// Durable storage behind the hub. Implementations: `embedded::EmbeddedStore` (redb or fjall).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The epoch of this store (see [`EventId`]).
    fn epoch(&self) -> &str;

    /// Appends to user streams. Returns each event's sequence number, in input order, once
    /// all of them are durable. Events of one stream get consecutive numbers in input order.
    async fn append_user(&self, events: Vec<NewEvent>) -> StoreResult<Vec<u64>>;

    /// Reads a user stream after `after` (exclusive), at most `limit` events.
    async fn read_user(&self, user: &str, after: u64, limit: usize) -> StoreResult<Page>;

    /// Appends to a room's history (same guarantees as `append_user`).
    async fn append_room(&self, event: NewEvent) -> StoreResult<u64>;

    /// Reads a room's history after `after` (exclusive), at most `limit` events.
    async fn read_room(&self, room: &str, after: u64, limit: usize) -> StoreResult<Page>;

    /// The cursor of a device: the last sequence number it acknowledged, or `None` for a
    /// client id never seen. Reading touches the cursor (resets its expiry).
    async fn cursor(&self, user: &str, client_id: &str) -> StoreResult<Option<u64>>;

    /// What a connecting device needs first: the head of `user`'s stream (the page of
    /// `read_user(user, u64::MAX, 0)`) and, with a client id, that device's cursor (as
    /// `cursor` reads it). A store that can reads both at once.
    async fn head_and_cursor(&self, user: &str, client_id: Option<&str>) -> StoreResult<(Page, Option<u64>)> {
        let head = self.read_user(user, u64::MAX, 0).await?;
        let cursor = match client_id {
            Some(cid) => self.cursor(user, cid).await?,
            None => None,
        };
        Ok((head, cursor))
    }

    /// Moves a device's cursor to `max(current, seq)` (creating it if needed) and returns
    /// the new value. Never moves a cursor backwards. Creating a cursor when the user
    /// already has `max_devices` forgets the least recently used one (last set or read).
    async fn set_cursor(&self, user: &str, client_id: &str, seq: u64, max_devices: usize) -> StoreResult<u64>;

    /// The devices of a user: (client id, cursor), in client id order, at most `limit`
    /// (for the admin UI's stream page). Does not touch the cursors.
    async fn cursors(&self, user: &str, limit: usize) -> StoreResult<Vec<(String, u64)>>;

    /// Looks up an idempotency key (scoped by the caller, e.g. "apikey-hash:key").
    async fn idem_get(&self, key: &str) -> StoreResult<Option<IdemRecord>>;

    /// Remembers an idempotency key's first answer. If the key already has a live answer,
    /// keeps it and returns it (first writer wins); a live claim (status 0) is replaced.
    async fn idem_put(&self, key: &str, record: IdemRecord) -> StoreResult<Option<IdemRecord>>;

    /// Claims an idempotency key for a request about to run, atomically across every node
    /// sharing the store: `None` means claimed (run the request, then `idem_put` its answer or
    /// `idem_release`); otherwise the live record that holds the key: an answer, or a claim
    /// (status 0) of a request still in flight. A claim not answered nor released expires
    /// after `lease`.
    async fn idem_claim(&self, key: &str, request_hash: u64, lease: Duration) -> StoreResult<Option<IdemRecord>>;

    /// Drops a claim (the request failed: its answer is not remembered); keeps an answer.
    async fn idem_release(&self, key: &str) -> StoreResult<()>;

    /// Counters for the offline stats endpoint.
    async fn stats(&self) -> StoreResult<StoreStats>;

    /// Memory the store's engine reports, if it does: (block cache in use, written data held
    /// beside the cache). Cheap: read at every scrape of `/metrics`.
    fn memory(&self) -> Option<(u64, u64)> {
        None
    }

    /// Applies retention (age, length, cursor and idempotency expiry). Returns how many
    /// messages were removed.
    async fn sweep(&self, retention: &Retention, now_ms: i64) -> StoreResult<u64>;

    /// Makes everything appended so far durable and stops accepting writes.
    async fn close(&self) -> StoreResult<()>;

    /// Whether the storage can serve now (for /ready): a networked store checks that its
    /// server answers. The embedded store is always ready while open.
    async fn health(&self) -> StoreResult<()> {
        Ok(())
    }
}
