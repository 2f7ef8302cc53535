//! A connection's delivery state: identity, a bounded queue of outgoing items, and the
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
//! Flow control, with `limit` = `limits.send_queue`:
//! - live events are queued while fewer than `limit` items wait; past that the reader is not
//!   keeping up with live traffic and is closed with 4008;
//! - a catch-up fill starts only while the queue is under half full and brings at most as
//!   many events as fill it to half, so a replay of any length to a reader that keeps
//!   reading, however slowly, never overflows;
//! - control items (replies, errors, pongs, heartbeat pings) have `headroom` extra slots
//!   above `limit`, so an answer queued during a replay or a burst never closes a reader.
//!
//! Direct writes: when nothing is queued and the connection's task is not writing, an item
//! is written straight into the socket from the delivery path (a non-blocking write through
//! the transport's [`Direct`]), so a delivery to a connection that keeps up costs one system
//! call and no task wake-up. What the socket does not take is queued, in order, for the task.
//!
//! Must never: hold more than `limit + headroom` items, or block: everything here runs under
//! a short mutex from delivery paths (a direct write is a non-blocking system call).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

pub use super::{StreamPos, StreamRef};
use crate::close::{self, Close};
use crate::event::Event;

/// One item waiting to be written, in a protocol-neutral form: the transport encodes it.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A published message (encoded once per encoding, shared by all its recipients).
    Event(Arc<Event>),
    /// A protocol message for this connection only (welcome, reply, error, pong), already
    /// serialized by the protocol module (JSON text).
    Reply(Bytes),
    /// A heartbeat ping.
    Ping,
    /// The answer to a client's WebSocket ping, with its payload.
    Pong(Bytes),
    /// The rest of an item a direct write wrote only in part, already in wire form.
    Raw(Bytes),
}

impl Outgoing {
    fn is_control(&self) -> bool {
        !matches!(self, Outgoing::Event(_))
    }
}

/// What a direct write did.
#[derive(Debug)]
pub enum Sent {
    /// The whole item is in the socket.
    All,
    /// The socket took part of it: these bytes are left to write, first.
    Part(Bytes),
    /// Nothing was written (the socket is full, or failed: the task finds out).
    Nothing,
}

/// A connection's socket as the delivery paths see it (implemented by the transport, which
/// encodes the item in the connection's wire format).
pub trait Direct: Send + Sync {
    /// Writes `item` without blocking, as far as the socket takes it.
    fn try_send(&self, item: &Outgoing) -> Sent;
}

pub(crate) struct Outbox {
    pub items: VecDeque<Outgoing>,
    /// Set while the connection's task holds bytes it has not written yet: direct writes
    /// wait (queue) until it is done, so bytes never interleave.
    pub busy: bool,
    /// The socket, for direct writes; None before the transport sets it and after the task
    /// stops writing (closing), so the socket is never written by two parties.
    pub direct: Option<Arc<dyn Direct>>,
    pub close: Option<Close>,
    pub user: StreamPos,
    pub rooms: Vec<(Arc<str>, Option<StreamPos>)>,
}

/// Extra queue slots for control items above the event limit.
pub fn headroom(limit: usize) -> usize {
    (limit / 4).max(8)
}

/// One WebSocket connection, shared between its task and the hub's indexes.
pub struct Conn {
    pub id: u64,
    pub user: Arc<str>,
    pub client_id: Option<Arc<str>>,
    /// Token expiry (unix seconds): the connection is closed with 4001 after it.
    pub token_exp: AtomicU64,
    /// Whether the connection negotiated permessage-deflate (the transport picks the
    /// deflated encoding of events for it).
    pub deflate: bool,
    /// Milliseconds (hub clock) when the client was last heard from.
    pub last_seen: AtomicU64,
    limit: usize,
    /// Set (under the lock) whenever a stream becomes `behind`, cleared when none is: lets
    /// the connection task skip the lock on every turn when there is nothing to read.
    any_behind: AtomicBool,
    pub(crate) out: Mutex<Outbox>,
    pub(crate) notify: Notify,
    /// What the upgrade recorded about the device (set once, before the hub admits it).
    pub meta: std::sync::OnceLock<Box<crate::meta::ConnMeta>>,
}

/// What `offer` did with an item.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Written into the socket at once.
    Sent,
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
            token_exp: AtomicU64::new(token_exp),
            deflate: false,
            last_seen: AtomicU64::new(0),
            limit,
            any_behind: AtomicBool::new(user_pos.behind),
            out: Mutex::new(Outbox {
                items: VecDeque::new(),
                busy: false,
                direct: None,
                close: None,
                user: user_pos,
                rooms: Vec::new(),
            }),
            notify: Notify::new(),
            meta: std::sync::OnceLock::new(),
        }
    }

    pub fn touch(&self, now: u64) {
        self.last_seen.store(now, Ordering::Relaxed);
    }

    /// Sets whether the connection negotiated permessage-deflate (before it is shared).
    pub fn with_deflate(mut self, deflate: bool) -> Self {
        self.deflate = deflate;
        self
    }

    /// Gives delivery paths the socket for direct writes (the transport, once the
    /// connection's task runs).
    pub fn set_direct(&self, direct: Arc<dyn Direct>) {
        self.out.lock().direct = Some(direct);
    }

    /// Ends direct writes: from now on only the connection's task writes (it is closing).
    pub fn stop_direct(&self) {
        self.out.lock().direct = None;
    }

    /// The connection's task has written everything it took: direct writes may go again.
    pub fn write_done(&self) {
        self.out.lock().busy = false;
    }

    /// Queues an item that is not part of a sequenced stream (a reply, a transient event).
    pub fn push(&self, item: Outgoing) -> Offer {
        self.push_with(item, true)
    }

    /// `push`, writing directly into the socket only if `direct` allows it.
    pub fn push_with(&self, item: Outgoing, direct: bool) -> Offer {
        let mut out = self.out.lock();
        let r = push_locked(&mut out, self.limit, item, direct);
        drop(out);
        self.wake(&r);
        r
    }

    /// Wakes the connection's task when there is something new for it.
    fn wake(&self, r: &Offer) {
        if *r != Offer::Sent {
            self.notify.notify_one();
        }
    }

    /// Queues a reply (a serialized protocol message for this connection only).
    pub fn reply(&self, msg: Bytes) -> Offer {
        self.push(Outgoing::Reply(msg))
    }

    /// Offers event `seq` of a stream, applying the delivery rule of this module. `silent`
    /// advances the position without queuing the event (the publisher's own message);
    /// `direct` allows writing it straight into the socket.
    pub fn offer(&self, stream: &StreamRef, seq: u64, event: &Arc<Event>, silent: bool, direct: bool) -> Offer {
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
                    let r = push_locked(out, self.limit, Outgoing::Event(event.clone()), direct);
                    self.wake(&r);
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
        let r = push_locked(out, self.limit, Outgoing::Event(event.clone()), direct);
        self.wake(&r);
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
    pub fn close(&self, reason: Close) {
        let mut out = self.out.lock();
        if out.close.is_none() {
            if !reason.flushes_queue() {
                drop_queue(&mut out.items);
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

    /// The close decided for this connection, if any.
    pub fn closing(&self) -> Option<Close> {
        self.out.lock().close
    }

    /// Takes up to `max` queued items (for one vectored write), in order, and the close
    /// reason once nothing is left before it.
    pub fn take(&self, into: &mut Vec<Outgoing>, max: usize) -> Option<Close> {
        let mut out = self.out.lock();
        let n = out.items.len().min(max);
        into.extend(out.items.drain(..n));
        if n > 0 {
            out.busy = true; // until the task has written them (`write_done`)
        }
        if out.items.is_empty() && out.items.capacity() > 0 {
            out.items = VecDeque::new(); // an idle connection keeps no queue memory
        }
        match out.close {
            Some(c) if out.items.is_empty() => Some(c),
            _ => None,
        }
    }

    /// How many store events a catch-up may still queue: up to half the queue.
    fn fill_room(&self, out: &Outbox) -> usize {
        (self.limit / 2).max(1).saturating_sub(out.items.len())
    }

    /// A stream that needs reading from the store, with the position after which to read
    /// and how many events the read may bring (never past half the queue).
    pub fn next_fill(&self) -> Option<(StreamRef, u64, usize)> {
        if !self.any_behind.load(Ordering::Acquire) {
            return None;
        }
        let out = self.out.lock();
        if out.close.is_some() {
            return None;
        }
        let room = self.fill_room(&out);
        if room == 0 {
            return None; // wait until the reader has drained the queue below half
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

    /// Queues events read from the store after `after`, taking the queue no further than half
    /// (live events of other streams may have filled it during the read: the events that do
    /// not fit are left for the next fill, and the stream stays behind). `events` are (seq, event) in order;
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
        events: Vec<(u64, Arc<Event>)>,
        complete: bool,
    ) -> u64 {
        let (first, head) = page;
        let mut guard = self.out.lock();
        let out = &mut *guard;
        if out.close.is_some() {
            return 0; // closing: nothing more is queued
        }
        // The read was sized by `next_fill`, but live events of other streams may have been
        // queued meanwhile: a fill still takes the queue no further than half.
        let room = self.fill_room(out);
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
        let mut queued = Vec::with_capacity(events.len().min(room));
        let mut cut = false;
        for (seq, ev) in events {
            if seq > pos.delivered {
                if queued.len() == room {
                    cut = true; // the rest comes in the next fill, once the queue has room
                    break;
                }
                trimmed += seq - pos.delivered - 1;
                pos.delivered = seq;
                queued.push(ev);
            }
        }
        if complete && !cut {
            if head > pos.delivered {
                trimmed += head - pos.delivered;
                pos.delivered = head;
            }
            if pos.delivered >= pos.max_seen {
                pos.behind = false;
            }
        }
        pos.max_seen = pos.max_seen.max(pos.delivered);
        out.items.extend(queued.into_iter().map(Outgoing::Event));
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

    pub fn in_room(&self, room: &str) -> bool {
        self.out.lock().rooms.iter().any(|(n, _)| &**n == room)
    }
}

/// Drops what is queued, except the rest of a frame a direct write began (the close frame
/// that follows must start on a frame boundary).
fn drop_queue(items: &mut VecDeque<Outgoing>) {
    let keep = usize::from(matches!(items.front(), Some(Outgoing::Raw(_))));
    items.truncate(keep);
}

fn push_locked(out: &mut Outbox, limit: usize, item: Outgoing, direct: bool) -> Offer {
    if out.close.is_some() {
        return Offer::Skipped;
    }
    if direct && out.items.is_empty() && !out.busy {
        if let Some(direct) = &out.direct {
            match direct.try_send(&item) {
                Sent::All => return Offer::Sent,
                Sent::Part(rest) => {
                    out.items.push_back(Outgoing::Raw(rest));
                    return Offer::Queued;
                }
                Sent::Nothing => {}
            }
        }
    }
    let cap = if item.is_control() { limit + headroom(limit) } else { limit };
    if out.items.len() >= cap {
        drop_queue(&mut out.items);
        out.close = Some(close::SLOW);
        return Offer::Overflow;
    }
    out.items.push_back(item);
    Offer::Queued
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
