//! Streams: every rule about where a device is in a stream, in one place.
//!
//! Owns: where a connection's user stream starts (cursor, `since`, first-seen devices), where
//! a room join starts, what an ack means (WebSocket and offline API alike), the catch-up read
//! that closes a gap or replays a resume, and the per-connection outbox with its flow control
//! (`outbox`). The WebSocket transport, client sessions and the offline API all call these
//! functions; none of them decides these rules itself.
//!
//! Must never: speak a wire protocol (it queues protocol-neutral `Outgoing` items), or move a
//! cursor backwards.

pub mod outbox;

use std::sync::Arc;

pub use outbox::{Conn, Offer, Outgoing};

use crate::error::{Error, Result};
use crate::event::{Event, Priority, StreamName};
use crate::metrics::Metrics;
use crate::store::{EventId, Page, Store, StreamKey};

/// A stream of a connection with a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRef {
    User,
    Room(Arc<str>),
}

/// Position in one sequenced stream.
#[derive(Debug, Clone)]
pub struct StreamPos {
    /// Last seq queued to the connection.
    pub delivered: u64,
    /// A gap was seen (or a resume is pending): the store must be read after `delivered`.
    pub behind: bool,
    /// Highest seq offered while behind; reading must reach it before going live again.
    pub max_seen: u64,
}

impl StreamPos {
    /// A position that first reads the store after `cursor` (catch-up), then goes live.
    pub fn resume_from(cursor: u64) -> Self {
        StreamPos { delivered: cursor, behind: true, max_seen: cursor }
    }
}

/// Where a stream starts for a connection or a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// The last seq the device already has; delivery starts after it.
    pub cursor: u64,
    /// How many stored messages follow (what the welcome or the join reply reports).
    pub resumed: u64,
    /// How many messages after the cursor retention already removed (a partial resume).
    pub trimmed: u64,
}

impl Start {
    fn new(cursor: u64, page: &Page) -> Self {
        let oldest = page.first.saturating_sub(1);
        Start {
            cursor,
            resumed: page.head.saturating_sub(cursor.max(oldest)),
            trimmed: oldest.saturating_sub(cursor).min(page.head.saturating_sub(cursor)),
        }
    }
}

/// The rules of one node's streams: its store, epoch, device limit and counters.
pub struct Streams {
    pub store: Arc<dyn Store>,
    /// Device cursors kept per user (`limits.max_devices_per_user`).
    pub max_devices: usize,
    metrics: Arc<Metrics>,
}

impl Streams {
    pub fn new(store: Arc<dyn Store>, max_devices: usize, metrics: Arc<Metrics>) -> Self {
        Streams { store, max_devices, metrics }
    }

    pub fn epoch(&self) -> &str {
        self.store.epoch()
    }

    /// Where `user`'s stream starts for a new connection.
    ///
    /// `since` wins (it must be an id of this user's stream, not ahead of its head); else the
    /// device's cursor (clamped to the head); else, for a device seen for the first time, the
    /// head, remembered now so what is published while it is offline later is kept for it;
    /// without a client id, the head (live only). A device seen for the first time with
    /// `since` gets its cursor there (an existing cursor is neither used nor moved), so its
    /// acks are taken and a later connect without `since` resumes from it.
    pub async fn user_start(&self, user: &str, client_id: Option<&str>, since: Option<&str>) -> Result<Start> {
        let (head, known) = self.store.head_and_cursor(user, client_id).await?;
        let cursor = match (since, client_id) {
            (Some(s), cid) => {
                let seq = self.parse_not_ahead(s, StreamKey::User(user), head.head, "this user's stream")?;
                if let (Some(cid), None) = (cid, known) {
                    self.store.set_cursor(user, cid, seq, self.max_devices).await?;
                }
                seq
            }
            (None, Some(cid)) => match known {
                Some(c) => c.min(head.head),
                None => self.store.set_cursor(user, cid, head.head, self.max_devices).await?,
            },
            (None, None) => head.head,
        };
        Ok(Start::new(cursor, &head))
    }

    /// Where a room join starts: after `since` (an id of this room, not ahead of its head),
    /// else at the head (live from now).
    pub async fn room_start(&self, room: &str, since: Option<&str>) -> Result<Start> {
        let head = self.store.read_room(room, u64::MAX, 0).await?;
        let cursor = match since {
            Some(s) => self.parse_not_ahead(s, StreamKey::Room(room), head.head, "the room's history")?,
            None => head.head,
        };
        Ok(Start::new(cursor, &head))
    }

    fn parse_not_ahead(&self, id: &str, key: StreamKey<'_>, head: u64, what: &str) -> Result<u64> {
        let seq = EventId::parse(id, self.epoch(), key)?;
        if seq > head {
            return Err(Error::invalid(format!("id {id:?} is ahead of {what}")));
        }
        Ok(seq)
    }

    /// The cursor of a device that is known (has connected, or was acked before).
    pub async fn known_cursor(&self, user: &str, client_id: &str) -> Result<u64> {
        self.store
            .cursor(user, client_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("unknown client_id {client_id:?}: connect once with it first")))
    }

    /// Acknowledges everything in `user`'s stream up to and including `id` for `client_id`
    /// (cumulative: a lower id leaves the cursor where it is). The id must belong to this
    /// user's stream and not be ahead of its head; the device must be known. Returns the
    /// cursor as an id.
    pub async fn ack(&self, user: &str, client_id: &str, id: &str) -> Result<String> {
        let seq = EventId::parse(id, self.epoch(), StreamKey::User(user))?;
        self.ack_seq(user, client_id, seq).await
    }

    /// [`Streams::ack`] of an id already parsed (e.g. the highest of a batch).
    pub async fn ack_seq(&self, user: &str, client_id: &str, seq: u64) -> Result<String> {
        let key = StreamKey::User(user);
        let head = self.store.read_user(user, u64::MAX, 0).await?.head;
        if seq > head {
            let id = EventId::format(self.epoch(), key, seq);
            return Err(Error::invalid(format!("id {id:?} is ahead of this user's stream")));
        }
        self.known_cursor(user, client_id).await?;
        let cursor = self.store.set_cursor(user, client_id, seq, self.max_devices).await?;
        Ok(EventId::format(self.epoch(), key, cursor))
    }

    /// Reads the missing part of one of `conn`'s streams from the store and queues it.
    /// Returns false if the store failed (the caller retries later).
    pub async fn fill(&self, conn: &Conn, stream: StreamRef, after: u64, room_in_queue: usize) -> bool {
        let limit = room_in_queue.clamp(1, 500);
        let (page, name) = match &stream {
            StreamRef::User => (self.store.read_user(&conn.user, after, limit).await, StreamName::User),
            StreamRef::Room(r) => (self.store.read_room(r, after, limit).await, StreamName::Room(r.clone())),
        };
        let page: Page = match page {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, conn = conn.id, "catch-up read failed");
                return false;
            }
        };
        let complete = page.events.len() < limit;
        let epoch = self.epoch();
        let key = match &stream {
            StreamRef::User => StreamKey::User(&conn.user),
            StreamRef::Room(r) => StreamKey::Room(r),
        };
        let events: Vec<(u64, Arc<Event>)> = page
            .events
            .into_iter()
            .map(|e| {
                let id = EventId::format(epoch, key, e.seq);
                (e.seq, Arc::new(Event::new(id, name.clone(), &e.kind, e.data, e.ts, Priority::Normal)))
            })
            .collect();
        let n = events.len() as u64;
        let trimmed = conn.apply_fill(&stream, after, (page.first, page.head), events, complete);
        self.metrics.replayed.inc_by(n);
        if trimmed > 0 {
            self.metrics.trimmed.inc_by(trimmed);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(first: u64, head: u64) -> Page {
        Page { events: vec![], first, head }
    }

    #[test]
    fn start_counts_resumed_and_trimmed() {
        // Stream 1..=10 fully retained; device at 4.
        assert_eq!(Start::new(4, &page(1, 10)), Start { cursor: 4, resumed: 6, trimmed: 0 });
        // Retention removed 1..=6; device at 4: 7..=10 follow, 5 and 6 are lost.
        assert_eq!(Start::new(4, &page(7, 10)), Start { cursor: 4, resumed: 4, trimmed: 2 });
        // Everything removed (empty stream at head 10).
        assert_eq!(Start::new(4, &page(11, 10)), Start { cursor: 4, resumed: 0, trimmed: 6 });
        // Up to date.
        assert_eq!(Start::new(10, &page(1, 10)), Start { cursor: 10, resumed: 0, trimmed: 0 });
    }
}
