//! Tests of the Redis broker against real `redis-server` processes: two hubs with a broker
//! each on one Redis (user, room, broadcast, disconnect, own-message filtering), subscriptions
//! that follow local interest, a kill/restart of Redis, and sharded pub/sub on a cluster.
//! Unit tests (not in tests/) because reading a connection's frames is crate-private.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::event::{Event, Priority, StreamName};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::streams::{Conn, Outgoing, StreamPos};

#[path = "../../tests/redis_support/mod.rs"]
mod redis_support;
use redis_support::{RedisCluster, RedisServer, ServerOpts};

fn opts(url: &str) -> RedisBrokerOptions {
    RedisBrokerOptions {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(1),
        health_interval: Duration::from_millis(500),
        max_backoff: Duration::from_millis(500),
        ..RedisBrokerOptions::new(url)
    }
}

struct Node {
    hub: Arc<Hub>,
    broker: RedisBroker,
}

async fn node(url: &str, id: &str) -> Node {
    let hub = Arc::new(Hub::new(1000, 10, Arc::new(Metrics::new())));
    let broker = RedisBroker::connect_with(opts(url), id, hub.clone()).await.expect("connect broker");
    Node { hub, broker }
}

/// A connection of `user` that is live on its user stream (next expected seq 1).
fn connect(n: &Node, user: &str) -> Arc<Conn> {
    let live = StreamPos { delivered: 0, behind: false, max_seen: 0 };
    let conn = Arc::new(Conn::new(n.hub.next_conn_id(), user.into(), None, u64::MAX, 64, live));
    n.hub.admit(conn.clone()).expect("admit");
    conn
}

fn frame(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

/// An envelope whose event carries `f` as its data (and id, to check both survive the wire).
fn env(target: Target, seq: Option<u64>, f: &str) -> Envelope {
    if let Target::Disconnect(u) = target {
        return Envelope::disconnect(u);
    }
    let stream = match &target {
        Target::Room(r) => StreamName::Room(r.clone()),
        Target::All => StreamName::Broadcast,
        _ => StreamName::User,
    };
    let ev = Event::new(format!("id-{f}"), stream, "t.x", frame(f), 1_700_000_000_123, Priority::High);
    Envelope::new(target, seq, Arc::new(ev), None)
}

/// Waits until `conn` has `n` events queued (or fails after a generous bound); their data.
async fn frames(conn: &Conn, n: usize) -> Vec<Bytes> {
    let mut items = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while items.len() < n {
        conn.take(&mut items, usize::MAX);
        assert!(Instant::now() < deadline, "got {} items, wanted {n} events", items.len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Nothing more arrives (e.g. a second copy of an event).
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.take(&mut items, usize::MAX);
    items
        .into_iter()
        .map(|o| match o {
            Outgoing::Event(e) => e.data.clone(),
            other => panic!("expected only events, got {other:?}"),
        })
        .collect()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Subscribers of a (classic) channel, from `PUBSUB NUMSUB`.
fn numsub(server: &RedisServer, channel: &str) -> u64 {
    let out = server.cli(&["PUBSUB", "NUMSUB", channel]);
    out.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0)
}

fn channels(server: &RedisServer) -> Vec<String> {
    let mut v: Vec<String> = server.cli(&["PUBSUB", "CHANNELS"]).lines().map(str::to_string).collect();
    v.sort();
    v
}

fn where_(v: serde_json::Value) -> crate::meta::Where {
    crate::meta::Where::parse(&v).unwrap()
}

#[test]
fn envelopes_round_trip_and_garbage_is_refused() {
    let cases = [
        env(Target::User("alice".into()), Some(42), "{\"op\":\"event\"}"),
        env(Target::Room("school:7".into()), Some(u64::MAX), "r"),
        env(Target::Room("lobby".into()), None, ""),
        env(Target::All, None, "hello everyone"),
        env(Target::Disconnect("bob".into()), None, ""),
        env(Target::AllWhere(Arc::new(where_(serde_json::json!({"region": ["eu", "us"], "tier": [2]})))), None, "w"),
        env(Target::DisconnectDevice("bob".into(), "phone".into()), None, ""),
        env(Target::DisconnectConn("bob".into(), "node-2".into(), u64::MAX), None, ""),
    ];
    for e in cases {
        let wire = decode(encode("node-1", &e).unwrap()).unwrap();
        assert_eq!(wire.origin.as_ref(), b"node-1");
        assert_eq!((&wire.env.target, wire.env.seq), (&e.target, e.seq));
        match (&wire.env.event, &e.event) {
            (Some(got), Some(want)) => {
                assert_eq!((&got.id, &got.kind, &got.data, got.ts), (&want.id, &want.kind, &want.data, want.ts));
                assert_eq!((&got.stream, got.priority), (&want.stream, want.priority));
            }
            (None, None) => {}
            other => panic!("event lost or invented: {other:?}"),
        }
    }
    // `except` names a connection of the publishing node: it is not sent.
    let mine = Envelope { except: Some(7), ..env(Target::User("a".into()), None, "x") };
    assert_eq!(decode(encode("n", &mine).unwrap()).unwrap().env.except, None);
    let good = encode("n", &env(Target::User("alice".into()), Some(1), "frame")).unwrap();
    for cut in 0..good.len() - 5 {
        assert!(decode(good.slice(..cut)).is_none(), "truncated at {cut}");
    }
    assert!(decode(Bytes::from_static(b"{\"json\":true}")).is_none());
    let mut other_kind = good.to_vec();
    other_kind[2] = 9;
    assert!(decode(Bytes::from(other_kind)).is_none());
    assert!(encode(&"x".repeat(256), &env(Target::All, None, "")).is_none(), "origin over 255 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_to_each_other_and_drop_their_own() {
    let server = RedisServer::start();
    let url = server.url();
    let (a, b) = (node(&url, "node-a").await, node(&url, "node-b").await);
    assert!(a.broker.is_ready() && b.broker.is_ready());
    assert_eq!(a.broker.stats().mode, "redis");
    let alice = connect(&a, "alice");
    let carol = connect(&b, "carol");
    wait_for("alice's subscription", || numsub(&server, "sync:user:alice") == 1).await;

    // User stream: B has no connection of alice, A delivers.
    let n = b.broker.publish(env(Target::User("alice".into()), Some(1), "e1")).await.unwrap();
    assert_eq!(n, 0, "no local delivery on B");
    let n = b.broker.publish(env(Target::User("alice".into()), Some(2), "e2")).await.unwrap();
    assert_eq!(n, 0);
    assert_eq!(frames(&alice, 2).await, vec![frame("e1"), frame("e2")]);

    // Rooms.
    assert!(a.hub.join(&alice, "lobby", None));
    wait_for("the room subscription", || numsub(&server, "sync:room:lobby") == 1).await;
    b.broker.publish(env(Target::Room("lobby".into()), None, "in the lobby")).await.unwrap();
    assert_eq!(frames(&alice, 1).await, vec![frame("in the lobby")]);

    // Broadcast reaches both nodes, each connection once: B delivered its own copy locally
    // and dropped the echo from Redis.
    let n = b.broker.publish(env(Target::All, None, "to all")).await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(frames(&alice, 1).await, vec![frame("to all")]);
    assert_eq!(frames(&carol, 1).await, vec![frame("to all")]);
    wait_for("B's echo", || b.broker.stats().dropped_own >= 1).await;

    // A user connected on both nodes gets one copy per connection.
    let alice_on_b = connect(&b, "alice");
    // (A transient message published before B's subscription is confirmed would not reach B:
    // the `Resubscribed` notice exists for the persisted ones.)
    wait_for("B's subscription", || numsub(&server, "sync:user:alice") == 2).await;
    let n = a.broker.publish(env(Target::User("alice".into()), None, "typing")).await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(frames(&alice, 1).await, vec![frame("typing")]);
    assert_eq!(frames(&alice_on_b, 1).await, vec![frame("typing")]);

    // To one node only.
    b.broker.publish_to_instance("node-a", env(Target::All, None, "just A")).await.unwrap();
    assert_eq!(frames(&alice, 1).await, vec![frame("just A")]);
    assert!(frames(&carol, 0).await.is_empty());

    // Disconnect travels on the user's channel.
    b.broker.publish(env(Target::Disconnect("alice".into()), None, "")).await.unwrap();
    wait_for("alice's close", || alice.is_closing()).await;
    let mut rest = Vec::new();
    assert_eq!(alice.take(&mut rest, usize::MAX).map(|c| c.code), Some(4009));

    let (sa, sb) = (a.broker.stats(), b.broker.stats());
    assert_eq!(sb.published, 6);
    assert_eq!(sb.failed, 0);
    assert!(sa.received >= 6, "{sa:?}");
    assert!(sa.dropped_own >= 1 && sb.dropped_own >= 1, "{sa:?} {sb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_only_to_what_local_connections_need() {
    let server = RedisServer::start();
    let a = node(&server.url(), "node-a").await;
    let notices = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let n = notices.clone();
    a.broker.on_resubscribed(Box::new(move |r| n.lock().push(r)));
    let base = vec!["sync:broadcast".to_string(), "sync:instance:node-a".to_string()];
    assert_eq!(channels(&server), base);

    let c1 = connect(&a, "alice");
    let c2 = connect(&a, "alice");
    a.hub.join(&c1, "lobby", None);
    a.hub.join(&c2, "lobby", None);
    let mut with_alice = base.clone();
    with_alice.extend(["sync:room:lobby".to_string(), "sync:user:alice".to_string()]);
    with_alice.sort();
    wait_for("alice's channels", || channels(&server) == with_alice).await;
    // Each confirmed subscription is announced, so connections can re-read what they missed.
    wait_for("the notices", || notices.lock().len() == 2).await;
    let mut got = notices.lock().clone();
    got.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(got, vec![Resubscribed::Room("lobby".into()), Resubscribed::User("alice".into())]);

    // The first connection leaving changes nothing; the last one unsubscribes.
    a.hub.remove(&c1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(channels(&server), with_alice);
    a.hub.leave(&c2, "lobby");
    let mut only_user = base.clone();
    only_user.push("sync:user:alice".to_string());
    only_user.sort();
    wait_for("the room unsubscription", || channels(&server) == only_user).await;
    a.hub.remove(&c2);
    wait_for("the user unsubscription", || channels(&server) == base).await;

    // Flapping interest (connect/disconnect in a burst) ends in the right state.
    for _ in 0..50 {
        let c = connect(&a, "bob");
        a.hub.remove(&c);
    }
    let keep = connect(&a, "bob");
    let mut with_bob = base.clone();
    with_bob.push("sync:user:bob".to_string());
    with_bob.sort();
    wait_for("bob's channel", || channels(&server) == with_bob).await;
    drop(keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_resubscribes_after_redis_restarts() {
    let mut server = RedisServer::start();
    let url = server.url();
    let (a, b) = (node(&url, "node-a").await, node(&url, "node-b").await);
    let alice = connect(&a, "alice");
    wait_for("alice's subscription", || numsub(&server, "sync:user:alice") == 1).await;

    server.kill();
    wait_for("A not ready", || !a.broker.is_ready()).await;
    wait_for("B not ready", || !b.broker.is_ready()).await;
    // Published during the outage: lost for pub/sub (a persisted one would be read from the
    // store on the next gap), an error (the other nodes got nothing), counted as failed, and
    // still delivered locally.
    let local = connect(&b, "dave");
    let r = b.broker.publish(env(Target::User("dave".into()), None, "local only")).await;
    assert!(r.is_err(), "a publish that reached no other node is an error");
    assert_eq!(frames(&local, 1).await, vec![frame("local only")]);
    assert!(b.broker.stats().failed >= 1);
    // Interest that appears during the outage is subscribed after it.
    let erin = connect(&a, "erin");

    let notices = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let n = notices.clone();
    a.broker.on_resubscribed(Box::new(move |r| n.lock().push(r)));
    server.restart();
    wait_for("A ready again", || a.broker.is_ready()).await;
    wait_for("the reconnect notice", || notices.lock().contains(&Resubscribed::Everything)).await;
    wait_for("B ready again", || b.broker.is_ready()).await;
    assert!(a.broker.stats().reconnects >= 1);
    assert!(b.broker.stats().reconnects >= 1);
    wait_for("resubscribed", || {
        numsub(&server, "sync:user:alice") == 1
            && numsub(&server, "sync:user:erin") == 1
            && numsub(&server, "sync:broadcast") == 2
    })
    .await;

    b.broker.publish(env(Target::User("alice".into()), Some(1), "after")).await.unwrap();
    b.broker.publish(env(Target::User("erin".into()), None, "hi erin")).await.unwrap();
    assert_eq!(frames(&alice, 1).await, vec![frame("after")]);
    assert_eq!(frames(&erin, 1).await, vec![frame("hi erin")]);
}

#[tokio::test]
async fn connect_fails_when_redis_is_down() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let hub = Arc::new(Hub::new(10, 10, Arc::new(Metrics::new())));
    let r = tokio::time::timeout(Duration::from_secs(10), RedisBroker::connect_with(opts(&url), "n", hub)).await;
    assert!(matches!(r, Ok(Err(BrokerError::Unavailable(_)))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_uses_sharded_pubsub() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let (a, b) = (node(&url, "node-a").await, node(&url, "node-b").await);
    assert!(a.broker.is_sharded() && b.broker.is_sharded());
    let users: Vec<String> = (0..6).map(|i| format!("user{i}")).collect();
    let conns: Vec<_> = users.iter().map(|u| connect(&a, u)).collect();
    let carol = connect(&b, "carol");
    // Each user's channel lives on the shard of its slot: ask every node.
    let shard_subs = |ch: &str| -> u64 {
        cluster
            .nodes
            .iter()
            .map(|n| {
                let out = n.cli(&["PUBSUB", "SHARDNUMSUB", ch]);
                out.lines().nth(1).and_then(|l| l.trim().parse::<u64>().ok()).unwrap_or(0)
            })
            .sum()
    };
    wait_for("sharded subscriptions", || users.iter().all(|u| shard_subs(&format!("sync:user:{u}")) == 1)).await;
    for u in &users {
        b.broker.publish(env(Target::User(u.as_str().into()), Some(1), u)).await.unwrap();
    }
    for (u, c) in users.iter().zip(&conns) {
        assert_eq!(frames(c, 1).await, vec![frame(u)]);
    }
    let n = a.broker.publish(env(Target::All, None, "all")).await.unwrap();
    assert_eq!(n, 6);
    assert_eq!(frames(&carol, 1).await, vec![frame("all")]);
    for c in &conns {
        assert_eq!(frames(c, 1).await, vec![frame("all")]);
    }
    // Leaving unsubscribes on the right shard.
    a.hub.remove(&conns[0]);
    wait_for("sharded unsubscription", || shard_subs("sync:user:user0") == 0).await;
    assert_eq!(a.broker.stats().failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_over_tls() {
    let server = RedisServer::start_with(ServerOpts { tls: true, ..Default::default() });
    let (a, b) = (node(&server.url(), "node-a").await, node(&server.url(), "node-b").await);
    let alice = connect(&a, "alice");
    wait_for("alice's subscription", || numsub(&server, "sync:user:alice") == 1).await;
    b.broker.publish(env(Target::User("alice".into()), None, "secret")).await.unwrap();
    assert_eq!(frames(&alice, 1).await, vec![frame("secret")]);
}
