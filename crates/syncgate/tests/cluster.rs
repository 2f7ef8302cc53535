//! Cluster mode: several nodes on one real Redis behave as one gateway, and a Redis or node
//! failure loses no acknowledged publish.

mod common;
#[path = "redis_support/mod.rs"]
mod redis_support;

use common::proc::{free_port, Proc};
use common::*;
use redis_support::{RedisCluster, RedisServer, ServerOpts};
use serde_json::json;
use std::time::Duration;
use syncgate_client::{Device, DeviceOptions};

/// Waits until presence (as seen through `api`) counts `n` connections of `user`.
async fn until_connections(api: &syncgate_client::Api, user: &str, n: u64) {
    eventually_async(Duration::from_secs(15), || {
        let api = api.clone();
        let user = user.to_string();
        async move { api.user_online(&user).await.unwrap().body["connections"] == n }
    })
    .await;
}

#[tokio::test]
async fn three_nodes_deliver_users_rooms_and_broadcasts_across_nodes() {
    let redis = RedisServer::start();
    let n = cluster_nodes(&redis.url(), 3, |_| {}).await;
    let (mut on_a, w) = n[0].device("alice", &["room:*"]).await;
    assert_eq!(w.instance_id, "node-0");
    let (mut on_b, _) = n[1].device("bob", &["room:*"]).await;
    let (mut on_c, _) = n[2].device("carol", &[]).await;
    // A user publish sent to node C reaches the device on node A.
    let id = publish(&n[2].api, "alice", "n", json!(1)).await;
    let e = on_a.next_event(T).await.unwrap();
    assert_eq!((e.id.as_str(), e.data.clone()), (id.as_str(), json!(1)));
    // A room spans nodes A and B; carol (not a member) gets nothing.
    on_a.join("room:x", None).await.unwrap().expect_reply().unwrap();
    on_b.join("room:x", None).await.unwrap().expect_reply().unwrap();
    let r = n[2].api.publish_room("room:x", json!({"type": "m", "data": "hi"})).await.unwrap();
    assert_eq!(r.status, 202);
    assert_eq!(on_a.next_event(T).await.unwrap().stream, "room:room:x");
    assert_eq!(on_b.next_event(T).await.unwrap().stream, "room:room:x");
    // Broadcast from B reaches all three nodes.
    n[1].api.broadcast(json!({"type": "b", "data": 0})).await.unwrap();
    for d in [&mut on_a, &mut on_b, &mut on_c] {
        assert_eq!(d.next_event(T).await.unwrap().stream, "broadcast");
    }
    assert!(on_c.try_next_event(Duration::from_millis(300)).await.unwrap().is_none(), "no stray room event");
    let sent = n[2].api.pubsub_stats().await.unwrap().body;
    assert_eq!(sent["mode"], "redis");
    assert!(sent["published"].as_u64().unwrap() >= 2, "{sent}");
    let got = n[0].api.pubsub_stats().await.unwrap().body;
    assert!(got["received"].as_u64().unwrap() >= 3, "{got}");
    stop_all(n).await;
}

#[tokio::test]
async fn presence_online_users_and_user_limits_agree_across_nodes() {
    let redis = RedisServer::start();
    let n = cluster_nodes(&redis.url(), 3, |c| c.limits.max_connections_per_user = 2).await;
    let (mut a1, _) = n[0].device("alice", &["r"]).await;
    let (mut a2, _) = n[1].device("alice", &["r"]).await;
    let (_b, _) = n[2].device("bob", &["r"]).await;
    a1.join("r", None).await.unwrap();
    a2.join("r", None).await.unwrap();
    let api = n[2].api.clone();
    eventually_async(Duration::from_secs(15), || {
        let api = api.clone();
        async move {
            let o = api.user_online("alice").await.unwrap().body;
            let p = api.presence("r").await.unwrap().body;
            o["connections"] == 2 && p["connections"] == 2 && p["users"] == json!(["alice"])
        }
    })
    .await;
    for node in &n {
        let page = node.api.online_users(Some(10), None).await.unwrap().body;
        assert_eq!(page["users"], json!(["alice", "bob"]), "node {} disagrees", node.node.instance_id);
    }
    // The per-user limit counts the connections on the other nodes.
    let refused = Device::connect(&n[2].base, DeviceOptions::new(n[2].token("alice", &[]))).await.err().unwrap();
    assert_eq!(refused.http_status(), Some(429));
    // Leaving is seen everywhere too.
    drop(a2);
    let api = n[0].api.clone();
    until_connections(&api, "alice", 1).await;
    stop_all(n).await;
}

#[tokio::test]
async fn a_device_resumes_on_another_node_without_gap_or_duplicate() {
    let redis = RedisServer::start();
    let n = cluster_nodes(&redis.url(), 2, |_| {}).await;
    let (mut d, _) = n[0].device_with("alice", "phone").await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(publish(&n[1].api, "alice", "n", json!(i)).await);
    }
    for i in 0..10 {
        assert_eq!(d.next_event(T).await.unwrap().data, json!(i));
    }
    d.ack(&ids[3]).await.unwrap().expect_reply().unwrap();
    drop(d);
    for i in 10..15 {
        publish(&n[0].api, "alice", "n", json!(i)).await;
    }
    let (mut d, w) = n[1].device_with("alice", "phone").await;
    assert_eq!(w.resumed, 11);
    let got: Vec<_> = d.collect_events(11, T).await.unwrap().into_iter().map(|e| e.data).collect();
    assert_eq!(got, (4..15).map(|i| json!(i)).collect::<Vec<_>>());
    publish(&n[0].api, "alice", "n", json!(15)).await;
    assert_eq!(d.next_event(T).await.unwrap().data, json!(15));
    assert!(d.try_next_event(Duration::from_millis(300)).await.unwrap().is_none());
    stop_all(n).await;
}

#[tokio::test]
async fn works_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let n = cluster_nodes(&cluster.url(), 2, |_| {}).await;
    let (mut d, _) = n[0].device_with("alice", "phone").await;
    let (mut r, _) = n[1].device("bob", &["lobby"]).await;
    r.join("lobby", None).await.unwrap().expect_reply().unwrap();
    for i in 0..20 {
        publish(&n[1].api, "alice", "n", json!(i)).await;
    }
    n[0].api.publish_room("lobby", json!({"type": "m", "data": 1})).await.unwrap();
    let got: Vec<_> = d.collect_events(20, T).await.unwrap().into_iter().map(|e| e.data).collect();
    assert_eq!(got, (0..20).map(|i| json!(i)).collect::<Vec<_>>());
    assert_eq!(r.next_event(T).await.unwrap().data, json!(1));
    stop_all(n).await;
}

#[tokio::test]
async fn redis_restart_loses_no_acknowledged_publish_and_nodes_recover() {
    let mut redis = RedisServer::start_with(ServerOpts { appendonly: true, ..Default::default() });
    let n = cluster_nodes(&redis.url(), 2, |_| {}).await;
    let (mut d, _) = n[0].device_with("alice", "phone").await;
    let api = n[1].api.clone();
    let publisher = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut refused = 0;
        for i in 0..600u64 {
            match api.publish_user("alice", "n", json!(i)).await {
                Ok(r) if r.status == 202 => acked.push(i),
                Ok(r) => {
                    assert_eq!(r.status, 503, "{}", r.text);
                    refused += 1;
                }
                Err(_) => refused += 1,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (acked, refused)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.kill();
    let ready = n[0].api.ready().await.unwrap();
    assert_eq!(ready.status, 503, "not ready while Redis is down");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.restart();
    let (acked, refused) = publisher.await.unwrap();
    assert!(refused > 0, "the outage was not noticed");
    let api = n[0].api.clone();
    eventually_async(Duration::from_secs(15), || {
        let api = api.clone();
        async move { api.ready().await.map(|r| r.status == 200).unwrap_or(false) }
    })
    .await;
    // The live connection stayed up; everything acknowledged arrives, in order, once. A
    // publish whose answer was lost with Redis (the append ran, the reply never came) was
    // refused but may be delivered too: that is why retries carry an Idempotency-Key.
    let last = *acked.last().expect("some publishes were acknowledged");
    let mut got = Vec::new();
    while got.last() != Some(&last) {
        let e = d.next_event(Duration::from_secs(10)).await.expect("acknowledged publish lost");
        got.push(e.data.as_u64().unwrap());
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order, once: {got:?}");
    let missing: Vec<_> = acked.iter().filter(|i| !got.contains(i)).collect();
    assert!(missing.is_empty(), "acknowledged but not delivered: {missing:?}");
    assert!(got.len() - acked.len() <= refused, "only refused publishes may be extra");
    // And new publishes flow again.
    publish(&n[1].api, "alice", "n", json!("after")).await;
    assert_eq!(d.next_event(T).await.unwrap().data, json!("after"));
    stop_all(n).await;
}

#[tokio::test]
async fn a_killed_node_is_forgotten_and_its_devices_resume_elsewhere() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SYNCGATE_REDIS_URL", url.as_str()),
        ("SYNCGATE_REDIS__PRESENCE_TTL", "3s"),
        ("SYNCGATE_INSTANCE_ID", "doomed"),
    ];
    let mut doomed = Proc::spawn(dir.path(), free_port(), &env);
    doomed.wait_ready().await;
    let survivor = cluster_nodes(&url, 1, |_| {}).await.remove(0);
    let token = survivor.token("alice", &[]);
    let (mut d, w) = Device::connect(&doomed.base, DeviceOptions::new(token.clone()).client_id("phone")).await.unwrap();
    assert_eq!(w.instance_id, "doomed");
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..5 {
            v.push(publish(&survivor.api, "alice", "n", json!(i)).await);
        }
        v
    };
    assert_eq!(d.collect_events(5, T).await.unwrap().len(), 5);
    d.ack(&ids[4]).await.unwrap().expect_reply().unwrap();
    let api = survivor.api.clone();
    until_connections(&api, "alice", 1).await;
    doomed.signal(libc::SIGKILL);
    doomed.wait_exit(Duration::from_secs(5));
    assert!(d.wait_closed(T).await.is_ok() || d.is_closed());
    for i in 5..8 {
        publish(&survivor.api, "alice", "n", json!(i)).await;
    }
    // The crashed node's connection disappears from presence within the TTL.
    until_connections(&api, "alice", 0).await;
    let (mut d, w) = Device::connect(&survivor.base, DeviceOptions::new(token).client_id("phone")).await.unwrap();
    assert_eq!(w.resumed, 3);
    let got: Vec<_> = d.collect_events(3, T).await.unwrap().into_iter().map(|e| e.data).collect();
    assert_eq!(got, vec![json!(5), json!(6), json!(7)]);
    survivor.stop().await;
}
