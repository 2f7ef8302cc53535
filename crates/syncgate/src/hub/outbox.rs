//! A connection as the hub sees it: identity, a bounded queue of encoded frames, and the
//! per-stream positions that make delivery gap-free and duplicate-free.
//!
//! Delivery rule for a stream with sequence numbers (a user stream, a room's history):
//! an event is queued only if its seq is exactly one past the last one queued. A duplicate
//! (seq already passed) is dropped; an event that would leave a gap marks the stream
//! `behind` and is dropped too, and the connection task then reads the missing range from
//! the store (`next_fill` / `apply_fill`). A resume is the same operation: a connection
//! starts `behind` at its cursor and reads until it has caught up. Since every sequenced
//! event is in the store before anyone delivers it, reading the store always closes the gap.
//!
//! Must never: hold more than `limit` frames (a slow reader is closed with 4008 instead),
//! or block: everything here runs under a short mutex from delivery paths.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

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

/// Why a connection is being closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
    /// Send the frames already queued before closing (shutdown) or drop them (slow reader).
    pub flush_first: bool,
}

pub(crate) struct Outbox {
    pub frames: VecDeque<Bytes>,
    pub close: Option<CloseReason>,
    pub user: StreamPos,
    pub rooms: Vec<(Arc<str>, Option<StreamPos>)>,
}

/// One WebSocket connection, shared between its task and the hub's indexes.
pub struct Conn {
    pub id: u64,
    pub user: Arc<str>,
    pub client_id: Option<Arc<str>>,
    /// Token expiry (unix seconds): the connection is closed with 4001 after it.
    pub token_exp: u64,
    /// Milliseconds (hub clock) when the client was last heard from.
    pub last_seen: AtomicU64,
    limit: usize,
    /// Set (under the lock) whenever a stream becomes `behind`, cleared when none is: lets
    /// the connection task skip the lock on every turn when there is nothing to read.
    any_behind: AtomicBool,
    pub(crate) out: Mutex<Outbox>,
    pub(crate) notify: Notify,
    /// What the upgrade recorded about the device (set once, before the hub admits it).
    pub meta: std::sync::OnceLock<Box<super::meta::ConnMeta>>,
}

/// What `offer` did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    Skipped,
    /// The queue was full: the connection is now closing with 4008.
    Overflow,
}

impl Conn {
    pub fn new(
        id: u64,
        user: Arc<str>,
        client_id: Option<Arc<str>>,
        token_exp: u64,
        limit: usize,
        user_pos: StreamPos,
    ) -> Self {
        Conn {
            id,
            user,
            client_id,
            token_exp,
            last_seen: AtomicU64::new(0),
            limit,
            any_behind: AtomicBool::new(user_pos.behind),
            out: Mutex::new(Outbox { frames: VecDeque::new(), close: None, user: user_pos, rooms: Vec::new() }),
            notify: Notify::new(),
            meta: std::sync::OnceLock::new(),
        }
    }

    pub fn touch(&self, now: u64) {
        self.last_seen.store(now, Ordering::Relaxed);
    }

    /// Queues a frame that is not part of a sequenced stream (replies, transient events).
    pub fn push(&self, frame: Bytes) -> Offer {
        let mut out = self.out.lock();
        let r = push_locked(&mut out, self.limit, frame);
        drop(out);
        self.notify.notify_one();
        r
    }

    /// Offers event `seq` of a stream, applying the delivery rule of this module. `silent`
    /// advances the position without queuing the frame (the publisher's own message).
    pub fn offer(&self, stream: &StreamRef, seq: u64, frame: &Bytes, silent: bool) -> Offer {
        let mut out = self.out.lock();
        if out.close.is_some() {
            return Offer::Skipped;
        }
        let out = &mut *out;
        let pos = match stream {
            StreamRef::User => &mut out.user,
            StreamRef::Room(name) => match out.rooms.iter_mut().find(|(n, _)| n == name) {
                Some((_, Some(pos))) => pos,
                // Joined without a position: live only, in arrival order.
                Some((_, None)) if silent => return Offer::Skipped,
                Some((_, None)) => {
                    let r = push_locked(out, self.limit, frame.clone());
                    self.notify.notify_one();
                    return r;
                }
                None => return Offer::Skipped,
            },
        };
        if seq <= pos.delivered {
            return Offer::Skipped;
        }
        if pos.behind || seq != pos.delivered + 1 {
            pos.behind = true;
            pos.max_seen = pos.max_seen.max(seq);
            self.any_behind.store(true, Ordering::Release);
            self.notify.notify_one();
            return Offer::Skipped;
        }
        pos.delivered = seq;
        if silent {
            return Offer::Skipped;
        }
        let r = push_locked(out, self.limit, frame.clone());
        self.notify.notify_one();
        r
    }

    /// Makes the connection read `stream` (or, with None, every positioned stream) from the
    /// store once, in case a live event was missed (e.g. while a broker resubscribed).
    pub fn recheck(&self, stream: Option<&StreamRef>) {
        let mut guard = self.out.lock();
        let out = &mut *guard;
        if matches!(stream, None | Some(StreamRef::User)) {
            out.user.behind = true;
        }
        for (name, pos) in out.rooms.iter_mut() {
            if let Some(p) = pos {
                if stream.is_none() || matches!(stream, Some(StreamRef::Room(r)) if r == name) {
                    p.behind = true;
                }
            }
        }
        self.any_behind.store(true, Ordering::Release);
        drop(guard);
        self.notify.notify_one();
    }

    /// Closes the connection with `reason` (the first reason wins).
    pub fn close(&self, reason: CloseReason) {
        let mut out = self.out.lock();
        if out.close.is_none() {
            if !reason.flush_first {
                out.frames.clear();
            }
            out.close = Some(reason);
        }
        drop(out);
        self.notify.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        self.out.lock().close.is_some()
    }

    /// The rooms this connection is in.
    pub fn rooms(&self) -> Vec<Arc<str>> {
        self.out.lock().rooms.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Takes the queued frames (for one vectored write) and the close reason, if any.
    pub(crate) fn take(&self, into: &mut Vec<Bytes>, max: usize) -> Option<CloseReason> {
        let mut out = self.out.lock();
        let n = out.frames.len().min(max);
        into.extend(out.frames.drain(..n));
        if out.frames.is_empty() && out.frames.capacity() > 0 {
            out.frames = VecDeque::new(); // an idle connection keeps no queue memory
        }
        match out.close {
            Some(c) if out.frames.is_empty() => Some(c),
            _ => None,
        }
    }

    /// A stream that needs reading from the store, with the position after which to read
    /// and how many events fit in the queue now.
    pub fn next_fill(&self) -> Option<(StreamRef, u64, usize)> {
        if !self.any_behind.load(Ordering::Acquire) {
            return None;
        }
        let out = self.out.lock();
        if out.close.is_some() {
            return None;
        }
        let room = self.limit.saturating_sub(out.frames.len());
        if room < self.limit / 2 {
            return None; // wait until the reader has drained half the queue
        }
        if out.user.behind {
            return Some((StreamRef::User, out.user.delivered, room));
        }
        let found = out.rooms.iter().find_map(|(name, pos)| match pos {
            Some(p) if p.behind => Some((StreamRef::Room(name.clone()), p.delivered, room)),
            _ => None,
        });
        if found.is_none() {
            self.any_behind.store(false, Ordering::Release); // e.g. a room left while behind
        }
        found
    }

    /// Queues events read from the store after `after`. `events` are (seq, frame) in order;
    /// `first` is the oldest seq the store still has; `complete` says the read reached the
    /// end of the stream. Returns how many events were skipped because retention (age, length
    /// or a message's own ttl) removed them.
    ///
    /// A store never shows a seq before all earlier ones are readable, so a seq at or below
    /// the read's `head` that is missing from it (before `first`, between two events, or at
    /// the end of a complete read) was removed, not delayed: it is counted and skipped. A
    /// seq offered live above the read's `head` was committed after the read: read again.
    pub fn apply_fill(
        &self,
        stream: &StreamRef,
        after: u64,
        page: (u64, u64),
        events: Vec<(u64, Bytes)>,
        complete: bool,
    ) -> u64 {
        let (first, head) = page;
        let mut guard = self.out.lock();
        let out = &mut *guard;
        let pos = match stream {
            StreamRef::User => &mut out.user,
            StreamRef::Room(name) => match out.rooms.iter_mut().find(|(n, _)| n == name) {
                Some((_, Some(pos))) => pos,
                _ => return 0,
            },
        };
        if pos.delivered != after {
            return 0; // raced with another fill; the next one starts from the new position
        }
        let mut trimmed = 0;
        if first > pos.delivered + 1 {
            trimmed = first - 1 - pos.delivered;
            pos.delivered = first - 1;
        }
        let mut queued = Vec::with_capacity(events.len());
        for (seq, frame) in events {
            if seq > pos.delivered {
                trimmed += seq - pos.delivered - 1;
                pos.delivered = seq;
                queued.push(frame);
            }
        }
        if complete {
            if head > pos.delivered {
                trimmed += head - pos.delivered;
                pos.delivered = head;
            }
            if pos.delivered >= pos.max_seen {
                pos.behind = false;
            }
        }
        pos.max_seen = pos.max_seen.max(pos.delivered);
        for f in queued {
            out.frames.push_back(f);
        }
        let any = out.user.behind || out.rooms.iter().any(|(_, p)| p.as_ref().is_some_and(|p| p.behind));
        self.any_behind.store(any, Ordering::Release);
        drop(guard);
        self.notify.notify_one();
        trimmed
    }

    /// Adds a room; `pos` None means live only. Returns false if already joined.
    pub(crate) fn add_room(&self, room: Arc<str>, pos: Option<StreamPos>) -> bool {
        let mut out = self.out.lock();
        if out.rooms.iter().any(|(n, _)| *n == room) {
            return false;
        }
        if pos.as_ref().is_some_and(|p| p.behind) {
            self.any_behind.store(true, Ordering::Release);
        }
        out.rooms.push((room, pos));
        drop(out);
        self.notify.notify_one();
        true
    }

    pub(crate) fn remove_room(&self, room: &str) -> bool {
        let mut out = self.out.lock();
        let before = out.rooms.len();
        out.rooms.retain(|(n, _)| &**n != room);
        before != out.rooms.len()
    }

    pub fn room_count(&self) -> usize {
        self.out.lock().rooms.len()
    }
}

fn push_locked(out: &mut Outbox, limit: usize, frame: Bytes) -> Offer {
    if out.close.is_some() {
        return Offer::Skipped;
    }
    if out.frames.len() >= limit {
        out.frames.clear();
        out.close = Some(CloseReason {
            code: crate::transport::codec::close::TOO_SLOW,
            reason: "send queue full",
            flush_first: false,
        });
        return Offer::Overflow;
    }
    out.frames.push_back(frame);
    Offer::Queued
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(limit: usize, cursor: u64) -> Conn {
        let c = Conn::new(1, "u".into(), None, u64::MAX, limit, StreamPos::resume_from(cursor));
        // Pretend the catch-up read found nothing.
        c.apply_fill(&StreamRef::User, cursor, (cursor + 1, cursor), vec![], true);
        c
    }

    fn f(n: u64) -> Bytes {
        Bytes::from(n.to_string())
    }

    fn drain(c: &Conn) -> Vec<Bytes> {
        let mut v = Vec::new();
        c.take(&mut v, usize::MAX);
        v
    }

    #[test]
    fn in_order_duplicates_and_gaps() {
        let c = conn(10, 5);
        assert_eq!(c.offer(&StreamRef::User, 6, &f(6), false), Offer::Queued);
        assert_eq!(c.offer(&StreamRef::User, 6, &f(6), false), Offer::Skipped);
        assert_eq!(c.offer(&StreamRef::User, 8, &f(8), false), Offer::Skipped);
        assert_eq!(c.next_fill(), Some((StreamRef::User, 6, 9)));
        // A live 7 arriving while behind is not queued: the fill will bring it.
        assert_eq!(c.offer(&StreamRef::User, 7, &f(7), false), Offer::Skipped);
        c.apply_fill(&StreamRef::User, 6, (1, 8), vec![(7, f(7)), (8, f(8))], true);
        assert_eq!(c.next_fill(), None);
        assert_eq!(c.offer(&StreamRef::User, 9, &f(9), false), Offer::Queued);
        assert_eq!(drain(&c), vec![f(6), f(7), f(8), f(9)]);
    }

    #[test]
    fn fill_that_misses_a_concurrent_event_stays_behind() {
        let c = Conn::new(1, "u".into(), None, u64::MAX, 10, StreamPos::resume_from(0));
        // Event 3 is offered while the catch-up read (which saw 1..2) is in flight.
        c.offer(&StreamRef::User, 3, &f(3), false);
        c.apply_fill(&StreamRef::User, 0, (1, 2), vec![(1, f(1)), (2, f(2))], true);
        assert_eq!(c.next_fill(), Some((StreamRef::User, 2, 8)));
        c.apply_fill(&StreamRef::User, 2, (1, 3), vec![(3, f(3))], true);
        assert_eq!(c.next_fill(), None);
        assert_eq!(drain(&c), vec![f(1), f(2), f(3)]);
    }

    #[test]
    fn holes_left_by_expired_messages_are_skipped_not_waited_for() {
        let c = Conn::new(1, "u".into(), None, u64::MAX, 10, StreamPos::resume_from(0));
        // 2 expired (own ttl); 5 was offered live but expired before the read.
        c.offer(&StreamRef::User, 5, &f(5), false);
        let trimmed = c.apply_fill(&StreamRef::User, 0, (1, 5), vec![(1, f(1)), (3, f(3)), (4, f(4))], true);
        assert_eq!(trimmed, 2);
        assert_eq!(c.next_fill(), None, "no endless catch-up");
        assert_eq!(c.offer(&StreamRef::User, 6, &f(6), false), Offer::Queued);
        assert_eq!(drain(&c), vec![f(1), f(3), f(4), f(6)]);
    }

    #[test]
    fn recheck_reads_the_store_once_even_without_a_later_event() {
        let c = conn(10, 3);
        assert_eq!(c.next_fill(), None);
        c.recheck(Some(&StreamRef::User));
        assert_eq!(c.next_fill(), Some((StreamRef::User, 3, 10)));
        // The missed event 4 is in the store; the read brings it.
        c.apply_fill(&StreamRef::User, 3, (1, 4), vec![(4, f(4))], true);
        assert_eq!(c.next_fill(), None);
        assert_eq!(drain(&c), vec![f(4)]);
    }

    #[test]
    fn trimmed_range_is_reported() {
        let c = Conn::new(1, "u".into(), None, u64::MAX, 10, StreamPos::resume_from(2));
        let trimmed = c.apply_fill(&StreamRef::User, 2, (6, 6), vec![(6, f(6))], true);
        assert_eq!(trimmed, 3);
        assert_eq!(drain(&c), vec![f(6)]);
    }

    #[test]
    fn overflow_closes_with_4008_and_drops_queue() {
        let c = conn(2, 0);
        assert_eq!(c.push(f(1)), Offer::Queued);
        assert_eq!(c.push(f(2)), Offer::Queued);
        assert_eq!(c.push(f(3)), Offer::Overflow);
        let mut v = Vec::new();
        let close = c.take(&mut v, 10).unwrap();
        assert_eq!(close.code, 4008);
        assert!(v.is_empty());
    }

    #[test]
    fn shutdown_close_flushes_first() {
        let c = conn(4, 0);
        c.push(f(1));
        c.close(CloseReason { code: 1001, reason: "bye", flush_first: true });
        let mut v = Vec::new();
        assert_eq!(c.take(&mut v, 10).map(|r| r.code), Some(1001));
        assert_eq!(v, vec![f(1)]);
    }
}
