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

/// Fan-outs to fewer connections than this always write into idle sockets directly; larger
/// ones only when their room is quiet (see [`Pace`]).
const LARGE_FANOUT: usize = 256;

/// Direct fan-outs to at least this many connections are split over threads.
const SPLIT_FANOUT: usize = 2048;

/// Decides, for one room (or for "everyone"), whether a large fan-out writes directly.
///
/// A direct write costs one system call per frame and no task wake-up; a queued frame costs
/// a wake-up, but a task that runs late writes every frame that piled up in one call. So a
/// room whose messages come further apart than twice the time its last direct fan-out took
/// writes directly (at 10 msg/s to 5k connections: no wake-ups at all), and one whose
/// messages come faster queues, so frames coalesce (measured, 5k connections at saturation:
/// 2.5 us per delivery queued, 9 us direct).
#[derive(Default)]
struct Pace {
    /// Hub clock (us) when the last large fan-out started.
    last_start: AtomicU64,
    /// How long the last direct large fan-out took (us).
    direct_took: AtomicU64,
}

/// Two fan-outs less than this apart never both write directly.
const MIN_GAP_US: u64 = 1_000;

impl Pace {
    fn direct(&self, now_us: u64) -> bool {
        let last = self.last_start.swap(now_us, Ordering::Relaxed);
        let took = self.direct_took.load(Ordering::Relaxed);
        last == 0 || now_us.saturating_sub(last) >= (2 * took).max(MIN_GAP_US)
    }

    fn took(&self, us: u64) {
        self.direct_took.store(us, Ordering::Relaxed);
    }
}

/// A room's local members.
#[derive(Default)]
struct Room {
    members: HashMap<u64, Arc<Conn>>,
    pace: Arc<Pace>,
}

pub struct Hub {
    conns: DashMap<u64, Arc<Conn>>,
    users: RwLock<BTreeMap<Arc<str>, Vec<Arc<Conn>>>>,
    rooms: DashMap<Arc<str>, Room>,
    /// Pace of fan-outs to every connection.
    all_pace: Pace,
    count: AtomicUsize,
    next_id: AtomicU64,
    max_connections: usize,
    max_per_user: usize,
    started: Instant,
    /// Threads a large direct fan-out may use (the machine's cores).
    cores: usize,
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
            count: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            max_connections,
            max_per_user,
            started: Instant::now(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
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

    /// The hub clock in microseconds (never 0).
    fn clock_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64 + 1
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
    pub fn join(&self, conn: &Arc<Conn>, room: &str, pos: Option<StreamPos>) -> bool {
        let name: Arc<str> = self.rooms.get(room).map(|r| r.key().clone()).unwrap_or_else(|| room.into());
        if !conn.add_room(name.clone(), pos) {
            return false;
        }
        let mut room = self.rooms.entry(name.clone()).or_default();
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
        if let Some((name, _)) = self.rooms.remove_if_mut(room, |_, room| {
            room.members.remove(&id);
            room.members.is_empty()
        }) {
            self.report(Interest::RoomOff(name));
        }
        self.changed(Changed::Room(room.into()));
    }

    fn count_offer(&self, r: Offer) -> usize {
        match r {
            Offer::Sent | Offer::Queued => 1,
            Offer::Skipped => 0,
            Offer::Overflow => {
                self.metrics.slow_consumer_closes.inc();
                0
            }
        }
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
        let offer = |c: &Arc<Conn>, direct| self.offer(c, &stream, seq, ev, Some(c.id) == except, direct);
        let n = if entry.members.len() < LARGE_FANOUT {
            entry.members.values().map(|c| offer(c, true)).sum()
        } else if entry.pace.direct(self.clock_us()) {
            // Direct writes take a while (a system call each): not under the index lock.
            let members: Vec<Arc<Conn>> = entry.members.values().cloned().collect();
            let pace = entry.pace.clone();
            drop(entry);
            self.direct_fanout(&pace, &members, &|c| offer(c, true))
        } else {
            entry.members.values().map(|c| offer(c, false)).sum()
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
        let passes = |c: &Conn| filter.is_none_or(|f| c.meta.get().is_some_and(|m| f.matches(m)));
        let offer = |c: &Arc<Conn>, direct| self.count_offer(c.push_with(Outgoing::Event(ev.clone()), direct));
        let n = if self.conns.len() < LARGE_FANOUT || self.all_pace.direct(self.clock_us()) {
            let all: Vec<Arc<Conn>> = self.conns.iter().filter(|c| passes(c)).map(|c| c.clone()).collect();
            if all.len() < LARGE_FANOUT {
                all.iter().map(|c| offer(c, true)).sum()
            } else {
                self.direct_fanout(&self.all_pace, &all, &|c| offer(c, true))
            }
        } else {
            self.conns.iter().filter(|c| passes(c)).map(|c| offer(&c, false)).sum()
        };
        self.metrics.messages_out.inc_by(n as u64);
        n
    }

    /// Runs `offer` (a direct delivery) for every connection of a large fan-out, split over
    /// the machine's cores when there are many, and records how long it took. Returns when
    /// every connection has been offered the event, like a queued fan-out.
    fn direct_fanout(&self, pace: &Pace, conns: &[Arc<Conn>], offer: &(dyn Fn(&Arc<Conn>) -> usize + Sync)) -> usize {
        let started = self.clock_us();
        let parts = if conns.len() >= SPLIT_FANOUT { self.cores.min(conns.len() / (SPLIT_FANOUT / 2)) } else { 1 };
        let n = if parts <= 1 {
            conns.iter().map(offer).sum()
        } else {
            let chunk = conns.len().div_ceil(parts);
            std::thread::scope(|s| {
                let mut chunks = conns.chunks(chunk);
                let mine = chunks.next().unwrap_or_default();
                let others: Vec<_> =
                    chunks.map(|part| s.spawn(move || part.iter().map(offer).sum::<usize>())).collect();
                let n: usize = mine.iter().map(offer).sum();
                n + others.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).sum::<usize>()
            })
        };
        pace.took(self.clock_us().saturating_sub(started));
        n
    }

    fn offer(&self, c: &Conn, stream: &StreamRef, seq: Option<u64>, ev: &Arc<Event>, own: bool, direct: bool) -> usize {
        let r = match seq {
            Some(seq) => c.offer(stream, seq, ev, own, direct),
            None if own => Offer::Skipped,
            None => c.push_with(Outgoing::Event(ev.clone()), direct),
        };
        self.count_offer(r)
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
        if let Some(members) = self.rooms.get(room) {
            let stream = StreamRef::Room(members.key().clone());
            for c in members.members.values() {
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
        let Some(members) = self.rooms.get(room) else {
            return (Vec::new(), 0);
        };
        let mut users: Vec<String> = members.members.values().map(|c| c.user.to_string()).collect();
        users.sort();
        users.dedup();
        (users, members.members.len())
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
mod tests {
    use super::*;
    use crate::event::{Priority, StreamName};
    use crate::streams::outbox::{Direct, Sent};
    use bytes::Bytes;

    /// A socket that takes everything.
    struct Open;
    impl Direct for Open {
        fn try_send(&self, _: &Outgoing) -> Sent {
            Sent::All
        }
    }

    fn ev() -> Arc<Event> {
        Arc::new(Event::new("1".into(), StreamName::Room("r".into()), "t", Bytes::new(), 0, Priority::Normal))
    }

    /// Drains the queue as the connection's task would; returns how many items it held.
    fn drain(c: &Conn) -> usize {
        let mut v = Vec::new();
        c.take(&mut v, usize::MAX);
        c.write_done();
        v.len()
    }

    /// Makes a pace look as if a direct fan-out that took 10 s had just started.
    fn busy(p: &Pace, hub: &Hub) {
        p.last_start.store(hub.clock_us(), Ordering::Relaxed);
        p.took(10_000_000);
    }

    #[test]
    fn pace_writes_directly_only_when_fanouts_come_further_apart_than_twice_the_last() {
        let p = Pace::default();
        assert!(p.direct(5_000), "the first fan-out of a room writes directly");
        p.took(30_000);
        assert!(!p.direct(40_000), "35 ms later, under twice the 30 ms it took: queue");
        assert!(!p.direct(90_000), "50 ms after the previous start: still under 60 ms");
        assert!(p.direct(160_000), "70 ms after the previous start: direct again");
        p.took(10);
        assert!(!p.direct(160_500), "never two direct fan-outs under MIN_GAP_US apart");
        assert!(p.direct(161_600));
    }

    #[test]
    fn large_fanouts_write_directly_while_their_room_is_quiet_and_queue_when_it_is_busy() {
        let hub = Hub::new(SPLIT_FANOUT * 2, SPLIT_FANOUT * 2, Arc::new(Metrics::new()));
        let conns: Vec<Arc<Conn>> = (0..SPLIT_FANOUT as u64)
            .map(|i| {
                let c = Arc::new(Conn::new(i, format!("u{i}").into(), None, u64::MAX, 16, StreamPos::resume_from(0)));
                c.set_direct(Box::new(Open));
                hub.admit(c.clone()).unwrap();
                assert!(hub.join(&c, "big", None));
                c
            })
            .collect();
        let n = conns.len();
        let queued = |conns: &[Arc<Conn>]| conns.iter().map(|c| drain(c)).sum::<usize>();
        // The first fan-out is direct (split over threads on a machine with several cores:
        // every connection still gets it exactly once).
        assert_eq!(hub.deliver_room("big", None, &ev(), None), n);
        assert_eq!(queued(&conns), 0);
        // A room whose last direct fan-out took 10 s is busy for the next 20 s: queue.
        hub.rooms.get("big").unwrap().pace.took(10_000_000);
        assert_eq!(hub.deliver_room("big", None, &ev(), None), n);
        assert_eq!(queued(&conns), n, "a busy room's fan-out queues, so frames coalesce");
        assert_eq!(hub.deliver_all(&ev()), n, "everyone: the first one is direct");
        assert_eq!(queued(&conns), 0);
        hub.all_pace.took(10_000_000);
        assert_eq!(hub.deliver_all(&ev()), n);
        assert_eq!(queued(&conns), n);
    }

    #[test]
    fn small_fanouts_and_user_streams_write_directly_busy_large_fanouts_queue() {
        let hub = Hub::new(1000, 1000, Arc::new(Metrics::new()));
        let conns: Vec<Arc<Conn>> = (0..LARGE_FANOUT as u64)
            .map(|i| {
                let c = Arc::new(Conn::new(i, "u".into(), None, u64::MAX, 16, StreamPos::resume_from(0)));
                c.set_direct(Box::new(Open));
                hub.admit(c.clone()).unwrap();
                assert!(hub.join(&c, "big", None));
                if i < 3 {
                    assert!(hub.join(&c, "small", None));
                }
                c
            })
            .collect();
        let n = conns.len();
        let queued = |conns: &[Arc<Conn>]| conns.iter().map(|c| drain(c)).sum::<usize>();
        busy(&hub.rooms.get("big").unwrap().pace, &hub);
        busy(&hub.all_pace, &hub);
        assert_eq!(hub.deliver_room("big", None, &ev(), None), n);
        assert_eq!(queued(&conns), n, "a large fan-out to a busy room queues for the tasks");
        assert_eq!(hub.deliver_all(&ev()), n);
        assert_eq!(queued(&conns), n);
        assert_eq!(hub.deliver_room("small", None, &ev(), None), 3);
        assert_eq!(queued(&conns), 0, "a small fan-out goes straight into idle sockets");
        assert_eq!(hub.deliver_user("u", None, &ev(), None), n);
        assert_eq!(queued(&conns), 0, "so does a user's own stream");
    }
}
