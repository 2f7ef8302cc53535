//! Presence across a cluster, on Redis.
//!
//! Each node publishes its own share and nothing else, with an expiry written into every
//! value, so what a crashed node had disappears within `presence_ttl` without anyone
//! cleaning up after it:
//!
//! - `{prefix}:pu:{user}`: hash, field = node id, value = `"{count}:{expires_ms}"`.
//! - `{prefix}:pr:{room}`: hash, field = node id, value = `"{expires_ms}:{connections}:{user}\n{user}..."`.
//! - `{prefix}:pc:{user}`: hash, field = node id, value = `"{expires_ms}\n{JSON array of the
//!   user's connections on that node}"` (what GET /api/v1/users/{user_id}/connections lists),
//!   written with the count, and again when one of the user's connections joins or leaves a room.
//! - `{prefix}:nodes`: hash, field = node id, value = `"{expires_ms}\n{JSON of the node's
//!   figures}"` (connections, users, rooms, messages in/out; GET /api/v1/nodes), every second.
//! - `{prefix}:online`: sorted set of user ids (all scores 0, so it is ordered by id) for
//!   paging; a member whose hash has no live field is dropped when a reader meets it.
//!
//! The hub reports every connect, close, join and leave; a task writes the current state of
//! those users and rooms through at once (one pipeline, coalescing what changed while the
//! previous write was in flight), so other nodes see a change within milliseconds. It also
//! rewrites everything every `presence_ttl / 3` to push the expiry forward, and after a
//! failed write. Every command touches one key, so this works the same on Redis Cluster.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::AsyncCommands;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{NodeFigures, Presence, PresenceError, RoomPresence};
use crate::hub::{Changed, Hub};
use crate::node::now_ms;
use crate::redis_conn::RedisConn;

/// A set of user ids or room names.
type Names = HashSet<Arc<str>>;

/// Users and rooms whose presence changed since the last write, coalesced (bounded by the
/// number of distinct local users and rooms).
#[derive(Default)]
struct Dirty {
    sets: Mutex<(Names, Names)>,
    wake: Notify,
}

impl Dirty {
    fn push(&self, what: Changed) {
        let mut sets = self.sets.lock();
        match what {
            Changed::User(u) => sets.0.insert(u),
            Changed::Room(r) => sets.1.insert(r),
        };
        drop(sets);
        self.wake.notify_one();
    }

    fn take(&self) -> (Names, Names) {
        std::mem::take(&mut *self.sets.lock())
    }
}

pub struct RedisPresence {
    conn: RedisConn,
    prefix: String,
    node: String,
    timeout: Duration,
}

fn unavailable(e: impl std::fmt::Display) -> PresenceError {
    PresenceError::Unavailable(e.to_string())
}

/// Parses `"{count}:{expires}"`; None when expired or malformed.
fn live_count(v: &str, now: i64) -> Option<usize> {
    let (count, exp) = v.split_once(':')?;
    (exp.parse::<i64>().ok()? > now).then(|| count.parse().ok()).flatten()
}

/// The JSON of a `"{expires}\n{JSON}"` value; None when expired or malformed.
fn live_value(v: &str, now: i64) -> Option<&str> {
    let (exp, json) = v.split_once('\n')?;
    (exp.parse::<i64>().ok()? > now).then_some(json)
}

/// Parses a room value; None when expired or malformed.
fn live_room(v: &str, now: i64) -> Option<(usize, Vec<&str>)> {
    let (head, users) = v.split_once('\n').unwrap_or((v, ""));
    let (exp, conns) = head.split_once(':')?;
    if exp.parse::<i64>().ok()? <= now {
        return None;
    }
    Some((conns.parse().ok()?, users.split('\n').filter(|u| !u.is_empty()).collect()))
}

impl RedisPresence {
    pub fn new(conn: RedisConn, prefix: &str, node: &str) -> Self {
        RedisPresence { conn, prefix: prefix.to_string(), node: node.to_string(), timeout: Duration::from_secs(3) }
    }

    fn user_key(&self, user: &str) -> String {
        format!("{}:pu:{user}", self.prefix)
    }

    fn conns_key(&self, user: &str) -> String {
        format!("{}:pc:{user}", self.prefix)
    }

    fn room_key(&self, room: &str) -> String {
        format!("{}:pr:{room}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    fn online_key(&self) -> String {
        format!("{}:online", self.prefix)
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, PresenceError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(unavailable),
            Err(_) => Err(unavailable("redis did not answer in time")),
        }
    }

    /// Keeps this node's share up to date until `stop`; removes it on the way out. Every
    /// change the hub reports is written through at once (coalesced per user and room while a
    /// write is in flight); the whole share is rewritten every `ttl / 3` to push the expiry
    /// forward, and after a failed write.
    pub fn spawn(self: &Arc<Self>, hub: Arc<Hub>, ttl: Duration, stop: CancellationToken) {
        let me = self.clone();
        let dirty = Arc::new(Dirty::default());
        let d = dirty.clone();
        hub.set_change_sink(Box::new(move |what| d.push(what)));
        tokio::spawn(async move {
            let mut written_users: HashMap<Arc<str>, usize> = HashMap::new();
            let mut written_rooms: HashMap<Arc<str>, (usize, Vec<String>)> = HashMap::new();
            let refresh_every = ttl / 3;
            let mut last_full = Instant::now() - refresh_every;
            let mut last_figures = Instant::now() - Duration::from_secs(1);
            let mut tick = tokio::time::interval(Duration::from_secs(1).min(refresh_every));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                    _ = dirty.wake.notified() => {}
                }
                if last_figures.elapsed() >= Duration::from_secs(1) {
                    last_figures = Instant::now();
                    if let Err(e) = me.write_figures(&hub, ttl).await {
                        tracing::debug!(error = %e, "node figures not written");
                    }
                }
                let full = last_full.elapsed() >= refresh_every;
                let (users, rooms) = dirty.take();
                let r = if full {
                    me.sync(&hub, ttl, true, &mut written_users, &mut written_rooms).await
                } else {
                    me.write_through(&hub, ttl, users, rooms, &mut written_users, &mut written_rooms).await
                };
                match r {
                    Ok(()) if full => last_full = Instant::now(),
                    Ok(()) => {}
                    Err(e) => {
                        // Rewrite everything once Redis is back.
                        tracing::debug!(error = %e, "presence sync failed");
                        written_users.clear();
                        written_rooms.clear();
                        last_full = Instant::now() - refresh_every;
                    }
                }
            }
            let _ = me.sync(&Hub::empty(), ttl, true, &mut written_users, &mut written_rooms).await;
            let mut c = me.conn.clone();
            let _ = me.bounded(c.hdel::<_, _, ()>(me.nodes_key(), &me.node)).await;
        });
    }

    /// Writes the current state of the users and rooms that changed.
    async fn write_through(
        &self,
        hub: &Hub,
        ttl: Duration,
        changed_users: Names,
        changed_rooms: Names,
        users: &mut HashMap<Arc<str>, usize>,
        rooms: &mut HashMap<Arc<str>, (usize, Vec<String>)>,
    ) -> Result<(), PresenceError> {
        if changed_users.is_empty() && changed_rooms.is_empty() {
            return Ok(());
        }
        let exp = now_ms() + ttl.as_millis() as i64;
        let key_ttl = (ttl.as_millis() as i64) * 2;
        let mut pipe = redis::pipe();
        let mut gone = Vec::new();
        for u in changed_users {
            let c = hub.user_connections(&u);
            let k = self.user_key(&u);
            if c > 0 {
                self.put_user(&mut pipe, hub, &u, c, exp, key_ttl);
                pipe.zadd(self.online_key(), &*u, 0).ignore();
                users.insert(u, c);
            } else {
                pipe.hdel(&k, &self.node).ignore();
                pipe.hdel(self.conns_key(&u), &self.node).ignore();
                users.remove(&u);
                gone.push(u);
            }
        }
        for r in changed_rooms {
            let (members, conns) = hub.presence(&r);
            let k = self.room_key(&r);
            if conns > 0 {
                let mut val = format!("{exp}:{conns}");
                for u in &members {
                    val.push('\n');
                    val.push_str(u);
                }
                pipe.hset(&k, &self.node, val).ignore().pexpire(&k, key_ttl).ignore();
                rooms.insert(r, (conns, members));
            } else {
                pipe.hdel(&k, &self.node).ignore();
                rooms.remove(&r);
            }
        }
        let mut c = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut c)).await?;
        self.drop_offline(gone).await
    }

    /// Writes this node's figures (with an expiry, like every presence value).
    async fn write_figures(&self, hub: &Hub, ttl: Duration) -> Result<(), PresenceError> {
        let figures = super::NodeFigures::of(hub, &self.node);
        let json = serde_json::to_string(&figures).map_err(unavailable)?;
        let (k, exp) = (self.nodes_key(), now_ms() + ttl.as_millis() as i64);
        let mut pipe = redis::pipe();
        pipe.hset(&k, &self.node, format!("{exp}\n{json}")).ignore().pexpire(&k, ttl.as_millis() as i64 * 2).ignore();
        let mut c = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut c)).await
    }

    /// Queues this node's share of `user`: the connection count and the connections with
    /// their metadata and rooms.
    fn put_user(&self, pipe: &mut redis::Pipeline, hub: &Hub, user: &str, count: usize, exp: i64, key_ttl: i64) {
        let k = self.user_key(user);
        pipe.hset(&k, &self.node, format!("{count}:{exp}")).ignore().pexpire(&k, key_ttl).ignore();
        let conns: Vec<serde_json::Value> = hub.connections_of(user).iter().map(|c| Hub::connection_json(c)).collect();
        let ck = self.conns_key(user);
        let val = format!("{exp}\n{}", serde_json::Value::Array(conns));
        pipe.hset(&ck, &self.node, val).ignore().pexpire(&ck, key_ttl).ignore();
    }

    /// Users that went offline here may be offline everywhere: drops them from the index.
    async fn drop_offline(&self, gone: Vec<Arc<str>>) -> Result<(), PresenceError> {
        for u in gone {
            if self.user_connections(&u).await? == 0 {
                let mut c = self.conn.clone();
                self.bounded(c.zrem::<_, _, ()>(self.online_key(), &*u)).await?;
            }
        }
        Ok(())
    }

    /// Writes what changed since the last sync (everything when `full`).
    async fn sync(
        &self,
        hub: &Hub,
        ttl: Duration,
        full: bool,
        users: &mut HashMap<Arc<str>, usize>,
        rooms: &mut HashMap<Arc<str>, (usize, Vec<String>)>,
    ) -> Result<(), PresenceError> {
        let exp = now_ms() + ttl.as_millis() as i64;
        let key_ttl = (ttl.as_millis() as i64) * 2;
        let mut pipe = redis::pipe();
        let mut n = 0;
        let now_users: HashMap<Arc<str>, usize> = hub.user_counts().into_iter().collect();
        for (u, c) in &now_users {
            if full || users.get(u) != Some(c) {
                self.put_user(&mut pipe, hub, u, *c, exp, key_ttl);
                if !users.contains_key(u) || full {
                    pipe.zadd(self.online_key(), &**u, 0).ignore();
                }
                n += 1;
            }
        }
        let gone: Vec<Arc<str>> = users.keys().filter(|u| !now_users.contains_key(*u)).cloned().collect();
        for u in &gone {
            pipe.hdel(self.user_key(u), &self.node).ignore();
            pipe.hdel(self.conns_key(u), &self.node).ignore();
            n += 1;
        }
        let mut now_rooms: HashMap<Arc<str>, (usize, Vec<String>)> = HashMap::new();
        for r in hub.local_rooms() {
            let (members, conns) = hub.presence(&r);
            now_rooms.insert(r, (conns, members));
        }
        for (r, v) in &now_rooms {
            if full || rooms.get(r) != Some(v) {
                let k = self.room_key(r);
                let mut val = format!("{exp}:{}", v.0);
                for u in &v.1 {
                    val.push('\n');
                    val.push_str(u);
                }
                pipe.hset(&k, &self.node, val).ignore().pexpire(&k, key_ttl).ignore();
                n += 1;
            }
        }
        for r in rooms.keys().filter(|r| !now_rooms.contains_key(*r)) {
            pipe.hdel(self.room_key(r), &self.node).ignore();
            n += 1;
        }
        if n > 0 {
            let mut c = self.conn.clone();
            self.bounded(pipe.query_async::<()>(&mut c)).await?;
        }
        self.drop_offline(gone).await?;
        *users = now_users;
        *rooms = now_rooms;
        Ok(())
    }
}

impl Hub {
    /// An empty hub (used to withdraw a node's presence on shutdown).
    fn empty() -> Hub {
        Hub::new(0, 0, Arc::new(crate::metrics::Metrics::new()))
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn user_connections(&self, user: &str) -> Result<usize, PresenceError> {
        let mut c = self.conn.clone();
        let all: HashMap<String, String> = self.bounded(c.hgetall(self.user_key(user))).await?;
        let now = now_ms();
        Ok(all.values().filter_map(|v| live_count(v, now)).sum())
    }

    async fn room(&self, room: &str) -> Result<RoomPresence, PresenceError> {
        let mut c = self.conn.clone();
        let all: HashMap<String, String> = self.bounded(c.hgetall(self.room_key(room))).await?;
        let now = now_ms();
        let mut out = RoomPresence::default();
        for v in all.values() {
            if let Some((conns, users)) = live_room(v, now) {
                out.connections += conns;
                out.users.extend(users.into_iter().map(str::to_string));
            }
        }
        out.users.sort();
        out.users.dedup();
        Ok(out)
    }

    async fn connections(&self, user: &str) -> Result<Vec<serde_json::Value>, PresenceError> {
        let mut c = self.conn.clone();
        let all: HashMap<String, String> = self.bounded(c.hgetall(self.conns_key(user))).await?;
        let now = now_ms();
        let mut out = Vec::new();
        for list in all.values().filter_map(|v| live_value(v, now)) {
            if let Ok(serde_json::Value::Array(list)) = serde_json::from_str(list) {
                out.extend(list);
            }
        }
        out.sort_by_key(|c| c["connected_at"].as_i64().unwrap_or(0));
        Ok(out)
    }

    async fn nodes(&self, me: NodeFigures) -> Result<Vec<NodeFigures>, PresenceError> {
        let mut c = self.conn.clone();
        let all: HashMap<String, String> = self.bounded(c.hgetall(self.nodes_key())).await?;
        let now = now_ms();
        let mut out: Vec<NodeFigures> = all
            .iter()
            .filter(|(node, _)| **node != self.node)
            .filter_map(|(_, v)| live_value(v, now))
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect();
        out.push(me);
        out.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        Ok(out)
    }

    async fn online_users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, Option<String>), PresenceError> {
        let mut page = Vec::with_capacity(limit);
        let mut from = match after {
            Some(a) => format!("({a}"),
            None => "-".to_string(),
        };
        // Bounded: a few rounds, each checking a batch of candidates for a live field.
        for _ in 0..8 {
            let mut c = self.conn.clone();
            let want = (limit - page.len()) * 2 + 1;
            let candidates: Vec<String> =
                self.bounded(c.zrangebylex_limit(self.online_key(), &from, "+", 0, want as isize)).await?;
            if candidates.is_empty() {
                return Ok((page, None));
            }
            let mut pipe = redis::pipe();
            for u in &candidates {
                pipe.hgetall(self.user_key(u));
            }
            let hashes: Vec<HashMap<String, String>> = self.bounded(pipe.query_async(&mut c)).await?;
            let now = now_ms();
            for (u, h) in candidates.iter().zip(hashes) {
                if h.values().any(|v| live_count(v, now).is_some_and(|n| n > 0)) {
                    if page.len() == limit {
                        return Ok((page.clone(), page.last().cloned()));
                    }
                    page.push(u.clone());
                } else {
                    let _: Result<(), _> = self.bounded(c.zrem(self.online_key(), u)).await;
                }
            }
            from = format!("({}", candidates.last().cloned().unwrap_or_default());
            if candidates.len() < want {
                return Ok((page, None));
            }
        }
        let next = page.last().cloned();
        Ok((page, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_expire() {
        assert_eq!(live_count("3:200", 100), Some(3));
        assert_eq!(live_count("3:100", 100), None);
        assert_eq!(live_count("x", 100), None);
        assert_eq!(live_room("200:2\nalice\nbob", 100), Some((2, vec!["alice", "bob"])));
        assert_eq!(live_room("200:0", 100), Some((0, vec![])));
        assert_eq!(live_room("50:2\nalice", 100), None);
        assert_eq!(live_value("200\n[1]", 100), Some("[1]"));
        assert_eq!(live_value("100\n[1]", 100), None);
        assert_eq!(live_value("[1]", 100), None);
    }
}
