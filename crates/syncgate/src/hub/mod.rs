//! The hub: who is connected on this node, to which user and rooms, and local delivery.
//!
//! Owns: the indexes user -> connections, room -> connections, all connections; admission
//! limits (per node, per user); delivery of events to local connections (it implements the
//! broker's `Local` side); presence and online-user queries; server-side closes (disconnect,
//! shutdown, heartbeat).
//!
//! Must never: encode or copy a message per recipient (fan-out clones the `Arc<Event>`; each
//! connection's transport encodes it, once per encoding for all), await while holding an index
//! lock, or know about wire protocols: it delivers what it is given to the connections it has.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use dashmap::DashMap;
use parking_lot::RwLock;

pub use crate::streams::{Conn, Offer, Outgoing, StreamPos, StreamRef};

use crate::broker::{Envelope, Interest, InterestSink, Local, Target};
use crate::close::{self, Close};
use crate::event::Event;
use crate::metrics::Metrics;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("this node has reached its connection limit")]
    NodeFull,
    #[error("this user has reached the per-user connection limit")]
    UserFull,
}

mod pace;
mod spread;

use pace::Pace;
use spread::Spreader;

/// A room's members on this node, and how its large fan-outs are paced.
#[derive(Default)]
struct Room {
    members: HashMap<u64, Arc<Conn>>,
    pace: Pace,
}

pub struct Hub {
    conns: DashMap<u64, Arc<Conn>>,
    users: RwLock<BTreeMap<Arc<str>, Vec<Arc<Conn>>>>,
    rooms: DashMap<Arc<str>, Room>,
    /// Pacing of broadcasts (fan-outs to every connection).
    all_pace: Pace,
    /// Helper threads that write large direct fan-outs with the fan-out's own thread.
    spreader: Spreader,
    count: AtomicUsize,
    next_id: AtomicU64,
    max_connections: usize,
    max_per_user: usize,
    started: Instant,
    metrics: Arc<Metrics>,
    interest: OnceLock<InterestSink>,
    changes: OnceLock<ChangeSink>,
    /// This node's id (for envelopes addressed to one node's connection).
    instance: OnceLock<Arc<str>>,
}

/// A user's connections (their count, or the rooms of one) or a room's membership changed on
/// this node (every change, not only the first and last), for presence to write through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    User(Arc<str>),
    Room(Arc<str>),
}

/// Receives `Changed` notices; called synchronously, must not block.
pub type ChangeSink = Box<dyn Fn(Changed) + Send + Sync>;

impl Hub {
    pub fn new(max_connections: usize, max_per_user: usize, metrics: Arc<Metrics>) -> Self {
        Hub {
            conns: DashMap::new(),
            users: RwLock::new(BTreeMap::new()),
            rooms: DashMap::new(),
            all_pace: Pace::default(),
            spreader: Spreader::for_this_host(),
            count: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            max_connections,
            max_per_user,
            started: Instant::now(),
            metrics,
            interest: OnceLock::new(),
            changes: OnceLock::new(),
            instance: OnceLock::new(),
        }
    }

    /// Sets where interest changes go (the cluster broker). Can be set once.
    pub fn set_interest_sink(&self, sink: InterestSink) {
        let _ = self.interest.set(sink);
    }

    /// Sets this node's id (once, at start-up).
    pub fn set_instance(&self, id: &str) {
        let _ = self.instance.set(id.into());
    }

    /// Sets where every presence change goes (cluster presence). Can be set once.
    pub fn set_change_sink(&self, sink: ChangeSink) {
        let _ = self.changes.set(sink);
    }

    fn changed(&self, what: Changed) {
        if let Some(sink) = self.changes.get() {
            sink(what);
        }
    }

    fn report(&self, change: Interest) {
        if let Some(sink) = self.interest.get() {
            sink(change);
        }
    }

    /// Users with at least one local connection (for a broker resubscribing after a reconnect).
    pub fn local_users(&self) -> Vec<Arc<str>> {
        self.users.read().keys().cloned().collect()
    }

    /// Connection counts of every local user (for presence snapshots).
    pub fn user_counts(&self) -> Vec<(Arc<str>, usize)> {
        self.users.read().iter().map(|(u, l)| (u.clone(), l.len())).collect()
    }

    /// Rooms with at least one local member.
    pub fn local_rooms(&self) -> Vec<Arc<str>> {
        self.rooms.iter().map(|r| r.key().clone()).collect()
    }

    /// The node's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Milliseconds since the hub started (the clock of `Conn::last_seen`).
    pub fn clock(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Cheap pre-check before doing any work for an upgrade.
    pub fn has_room(&self) -> bool {
        self.count.load(Ordering::Relaxed) < self.max_connections
    }

    /// The connections of `user` on this node (for the connections API).
    pub fn connections_of(&self, user: &str) -> Vec<Arc<Conn>> {
        self.users.read().get(user).cloned().unwrap_or_default()
    }

    /// Connections of `user` on this node.
    pub fn user_connections(&self, user: &str) -> usize {
        self.users.read().get(user).map_or(0, Vec::len)
    }

    /// Admits a connection: checks the node and per-user limits and indexes it.
    pub fn admit(&self, conn: Arc<Conn>) -> Result<(), AdmitError> {
        if self.count.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return Err(AdmitError::NodeFull);
        }
        {
            let mut users = self.users.write();
            let list = users.entry(conn.user.clone()).or_default();
            if list.len() >= self.max_per_user {
                if list.is_empty() {
                    users.remove(&conn.user);
                }
                drop(users);
                self.count.fetch_sub(1, Ordering::AcqRel);
                return Err(AdmitError::UserFull);
            }
            if list.capacity() == 0 {
                list.reserve_exact(1); // most users have one connection: no room for four
            }
            list.push(conn.clone());
            if list.len() == 1 {
                self.report(Interest::UserOn(conn.user.clone()));
            }
            self.changed(Changed::User(conn.user.clone()));
        }
        conn.touch(self.clock());
        self.conns.insert(conn.id, conn);
        self.metrics.connections.inc();
        self.metrics.connections_total.inc();
        Ok(())
    }

    /// Removes a connection from every index (idempotent).
    pub fn remove(&self, conn: &Conn) {
        if self.conns.remove(&conn.id).is_none() {
            return;
        }
        for room in conn.rooms() {
            self.drop_member(&room, conn.id);
        }
        let mut users = self.users.write();
        if let Some(list) = users.get_mut(&conn.user) {
            list.retain(|c| c.id != conn.id);
            if list.is_empty() {
                users.remove(&conn.user);
                self.report(Interest::UserOff(conn.user.clone()));
            }
            self.changed(Changed::User(conn.user.clone()));
        }
        drop(users);
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.metrics.connections.dec();
    }

    /// Adds `conn` to `room`. Returns false if it was already a member.
    ///
    /// The position and the membership are set together, under the room's entry: a fan-out
    /// to the room either took its members before (its event was stored before that, so the
    /// catch-up read the position starts, which runs after, finds it) or sees the member with
    /// its position (an event offered while it catches up is remembered). Setting the
    /// position first let a catch-up read finish before the member was added, and an event
    /// stored and fanned out in between waited for the room's next event.
    pub fn join(&self, conn: &Arc<Conn>, room: &str, pos: Option<StreamPos>) -> bool {
        let name: Arc<str> = self.rooms.get(room).map(|r| r.key().clone()).unwrap_or_else(|| room.into());
        let mut room = self.rooms.entry(name.clone()).or_default();
        if !conn.add_room(name.clone(), pos) {
            return false;
        }
        room.members.insert(conn.id, conn.clone());
        if room.members.len() == 1 {
            self.report(Interest::RoomOn(name.clone()));
        }
        drop(room);
        self.changed(Changed::Room(name));
        self.changed(Changed::User(conn.user.clone()));
        true
    }

    /// Removes `conn` from `room`. Returns false if it was not a member.
    pub fn leave(&self, conn: &Conn, room: &str) -> bool {
        if !conn.remove_room(room) {
            return false;
        }
        self.drop_member(room, conn.id);
        self.changed(Changed::User(conn.user.clone()));
        true
    }

    fn drop_member(&self, room: &str, id: u64) {
        if let Some((name, _)) = self.rooms.remove_if_mut(room, |_, r| {
            r.members.remove(&id);
            r.members.is_empty()
        }) {
            self.report(Interest::RoomOff(name));
        }
        self.changed(Changed::Room(room.into()));
    }

    fn count_offer(&self, r: Offer) -> usize {
        count_offer(&self.metrics, r)
    }

    /// Delivers a user-stream event to every local connection of `user`. `seq` is the
    /// stream position for persisted messages, None for transient ones.
    pub fn deliver_user(&self, user: &str, seq: Option<u64>, ev: &Arc<Event>, except: Option<u64>) -> usize {
        let users = self.users.read();
        let Some(list) = users.get(user) else {
            return 0;
        };
        let n = list.iter().map(|c| self.offer(c, &StreamRef::User, seq, ev, Some(c.id) == except, true)).sum();
        self.metrics.messages_out.inc_by(n as u64);
        n
    }

    /// Delivers a room event to the room's local members, except connection `except`.
    pub fn deliver_room(&self, room: &str, seq: Option<u64>, ev: &Arc<Event>, except: Option<u64>) -> usize {
        let Some(entry) = self.rooms.get(room) else {
            return 0;
        };
        let stream = StreamRef::Room(entry.key().clone());
        let members = entry.members.len();
        let n = match self.large_direct(&entry.pace, members) {
            Some(start) => {
                // A direct fan-out takes a while (a system call per member): it runs on a copy
                // of the member list so that joins and leaves of rooms in this shard do not wait.
                let list: Vec<Arc<Conn>> = entry.members.values().cloned().collect();
                drop(entry);
                let len = list.len();
                let (metrics, ev) = (self.metrics.clone(), ev.clone());
                let deliver =
                    move |c: &Conn| count_offer(&metrics, offer(c, &stream, seq, &ev, Some(c.id) == except, true));
                let n = self.spreader.run(list, Box::new(deliver));
                if let Some(entry) = self.rooms.get(room) {
                    entry.pace.end_direct(start, self.clock_ns(), len);
                }
                n
            }
            None => {
                let direct = members < pace::LARGE;
                entry.members.values().map(|c| self.offer(c, &stream, seq, ev, Some(c.id) == except, direct)).sum()
            }
        };
        self.metrics.messages_out.inc_by(n as u64);
        n
    }

    /// Delivers an event to every local connection whose metadata passes `filter` (parsed once
    /// per message; matching allocates nothing).
    pub fn deliver_all_where(&self, ev: &Arc<Event>, filter: &crate::meta::Where) -> usize {
        self.deliver_to_all(ev, Some(filter))
    }

    /// Delivers an event to every local connection.
    pub fn deliver_all(&self, ev: &Arc<Event>) -> usize {
        self.deliver_to_all(ev, None)
    }

    fn deliver_to_all(&self, ev: &Arc<Event>, filter: Option<&crate::meta::Where>) -> usize {
        let total = self.conns.len();
        let wanted = |c: &Conn| filter.is_none_or(|f| c.meta.get().is_some_and(|m| f.matches(m)));
        let send = |c: &Conn, direct: bool| self.count_offer(c.push_with(Outgoing::Event(ev.clone()), direct));
        let n = match self.large_direct(&self.all_pace, total) {
            Some(start) => {
                // As in `deliver_room`: no index lock is held while writing.
                let list: Vec<Arc<Conn>> = self.conns.iter().filter(|c| wanted(c)).map(|c| c.clone()).collect();
                let len = list.len();
                let (metrics, ev) = (self.metrics.clone(), ev.clone());
                let write = move |c: &Conn| count_offer(&metrics, c.push_with(Outgoing::Event(ev.clone()), true));
                let n = self.spreader.run(list, Box::new(write));
                self.all_pace.end_direct(start, self.clock_ns(), len);
                n
            }
            None => self.conns.iter().filter(|c| wanted(c)).map(|c| send(&c, total < pace::LARGE)).sum(),
        };
        self.metrics.messages_out.inc_by(n as u64);
        n
    }

    /// For a fan-out to `n` connections: when it is large and its stream's pacing lets it
    /// write directly, the pacing clock at its start. Small fan-outs (always direct) read no
    /// clock.
    fn large_direct(&self, pace: &Pace, n: usize) -> Option<u64> {
        if n < pace::LARGE {
            return None;
        }
        let start = self.clock_ns().max(1);
        pace.start(start, n).then_some(start)
    }

    /// Nanoseconds since the hub started (the pacing clock).
    fn clock_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    fn offer(&self, c: &Conn, stream: &StreamRef, seq: Option<u64>, ev: &Arc<Event>, own: bool, direct: bool) -> usize {
        self.count_offer(offer(c, stream, seq, ev, own, direct))
    }

    /// Local connections of `user` re-read their user stream from the store once.
    pub fn recheck_user(&self, user: &str) {
        if let Some(list) = self.users.read().get(user) {
            for c in list {
                c.recheck(Some(&StreamRef::User));
            }
        }
    }

    /// Local members of `room` re-read the room's history once.
    pub fn recheck_room(&self, room: &str) {
        if let Some(entry) = self.rooms.get(room) {
            let stream = StreamRef::Room(entry.key().clone());
            for c in entry.members.values() {
                c.recheck(Some(&stream));
            }
        }
    }

    /// Every local connection re-reads its streams once (after a broker reconnect).
    pub fn recheck_all(&self) {
        for c in self.conns.iter() {
            c.recheck(None);
        }
    }

    /// Closes every local connection of `user`. Returns how many.
    pub fn disconnect_user(&self, user: &str, reason: Close) -> usize {
        let list: Vec<Arc<Conn>> = self.users.read().get(user).cloned().unwrap_or_default();
        for c in &list {
            c.close(reason);
        }
        list.len()
    }

    /// Closes the local connections of one device (`client_id`) of `user`. Returns how many.
    pub fn disconnect_device(&self, user: &str, client_id: &str, reason: Close) -> usize {
        let list = self.connections_of(user);
        let mut n = 0;
        for c in list.iter().filter(|c| c.client_id.as_deref() == Some(client_id)) {
            c.close(reason);
            n += 1;
        }
        n
    }

    /// Closes connection `id` of `user` if `node` is this node. Returns how many (0 or 1).
    pub fn disconnect_conn(&self, user: &str, node: &str, id: u64, reason: Close) -> usize {
        if self.instance.get().map(|i| &**i) != Some(node) {
            return 0;
        }
        match self.conns.get(&id) {
            Some(c) if &*c.user == user => {
                c.close(reason);
                1
            }
            _ => 0,
        }
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self, reason: Close) {
        for c in self.conns.iter() {
            c.close(reason);
        }
    }

    /// Heartbeat and expiry sweep: pings every connection, closes the silent and the expired.
    pub fn sweep(&self, timeout: std::time::Duration, now_unix: u64) {
        let timeout_ms = timeout.as_millis() as u64;
        let now = self.clock();
        for c in self.conns.iter() {
            if c.token_exp.load(Ordering::Relaxed) <= now_unix {
                c.close(close::EXPIRED);
            } else if now.saturating_sub(c.last_seen.load(Ordering::Relaxed)) >= timeout_ms {
                self.metrics.heartbeat_timeouts.inc();
                c.close(close::HEARTBEAT);
            } else {
                self.count_offer(c.push(Outgoing::Ping));
            }
        }
    }

    /// Users and connection count of a room on this node.
    pub fn presence(&self, room: &str) -> (Vec<String>, usize) {
        let Some(entry) = self.rooms.get(room) else {
            return (Vec::new(), 0);
        };
        let mut users: Vec<String> = entry.members.values().map(|c| c.user.to_string()).collect();
        users.sort();
        users.dedup();
        (users, entry.members.len())
    }

    /// A page of online users in id order, after `after`.
    pub fn online_users(&self, after: Option<&str>, limit: usize) -> (Vec<String>, Option<String>) {
        use std::ops::Bound;
        let users = self.users.read();
        let lower = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let mut page: Vec<String> =
            users.range::<str, _>((lower, Bound::Unbounded)).take(limit + 1).map(|(u, _)| u.to_string()).collect();
        let next = if page.len() > limit {
            page.truncate(limit);
            page.last().cloned()
        } else {
            None
        };
        (page, next)
    }

    /// One local connection as the connections API shows it (see `meta::ConnMeta::to_json`).
    pub fn connection_json(c: &Conn) -> serde_json::Value {
        let rooms = c.rooms();
        match c.meta.get() {
            Some(m) => m.to_json(c.id, &c.user, c.client_id.as_deref(), &rooms),
            None => crate::meta::ConnMeta::default().to_json(c.id, &c.user, c.client_id.as_deref(), &rooms),
        }
    }

    /// (connections, users, rooms) on this node.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.count.load(Ordering::Relaxed), self.users.read().len(), self.rooms.len())
    }

    /// Whether any connection is still open (used while draining).
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

/// Offers a stream event to one connection: `seq` is the stream position of a persisted
/// message (None for a transient one, which the publisher's own connection does not get).
fn offer(c: &Conn, stream: &StreamRef, seq: Option<u64>, ev: &Arc<Event>, own: bool, direct: bool) -> Offer {
    match seq {
        Some(seq) => c.offer(stream, seq, ev, own, direct),
        None if own => Offer::Skipped,
        None => c.push_with(Outgoing::Event(ev.clone()), direct),
    }
}

/// Whether an offer counts as a delivery; an overflow (the connection is closed as a slow
/// consumer) is counted in the metrics.
fn count_offer(metrics: &Metrics, r: Offer) -> usize {
    match r {
        Offer::Sent | Offer::Queued => 1,
        Offer::Skipped => 0,
        Offer::Overflow => {
            metrics.slow_consumer_closes.inc();
            0
        }
    }
}

impl Local for Hub {
    fn deliver(&self, env: &Envelope) -> usize {
        match (&env.target, &env.event) {
            (Target::User(user), Some(ev)) => self.deliver_user(user, env.seq, ev, env.except),
            (Target::Room(room), Some(ev)) => self.deliver_room(room, env.seq, ev, env.except),
            (Target::All, Some(ev)) => self.deliver_all(ev),
            (Target::AllWhere(filter), Some(ev)) => self.deliver_all_where(ev, filter),
            (Target::Disconnect(user), _) => self.disconnect_user(user, close::KICKED),
            (Target::DisconnectDevice(user, client), _) => self.disconnect_device(user, client, close::KICKED),
            (Target::DisconnectConn(user, node, id), _) => self.disconnect_conn(user, node, *id, close::KICKED),
            (_, None) => 0,
        }
    }

    fn local_users(&self) -> Vec<Arc<str>> {
        Hub::local_users(self)
    }

    fn local_rooms(&self) -> Vec<Arc<str>> {
        Hub::local_rooms(self)
    }

    fn has_user(&self, user: &str) -> bool {
        self.user_connections(user) > 0
    }

    fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    fn recheck_user(&self, user: &str) {
        Hub::recheck_user(self, user)
    }

    fn recheck_room(&self, room: &str) {
        Hub::recheck_room(self, room)
    }

    fn recheck_all(&self) {
        Hub::recheck_all(self)
    }

    fn set_interest_sink(&self, sink: InterestSink) {
        Hub::set_interest_sink(self, sink)
    }
}

#[cfg(test)]
mod tests;
