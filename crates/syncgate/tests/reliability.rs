//! Reliability in cluster mode, against real Redis processes: presence written through,
//! readiness that waits for Pub/Sub, publish errors that surface, Idempotency-Key across
//! nodes, Redis restarts.

mod common;
#[path = "redis_support/mod.rs"]
mod redis_support;

use std::time::{Duration, Instant};

use common::*;
use redis_support::{RedisServer, ServerOpts};
use serde_json::json;
use syncgate_client::Api;

/// Polls `f` every 5 ms until it holds or `limit` passes; returns how long it took.
async fn within<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn online(api: &Api, user: &str) -> u64 {
    api.user_online(user).await.map(|r| r.body["connections"].as_u64().unwrap_or(0)).unwrap_or(0)
}

#[tokio::test]
async fn presence_is_written_through_within_100ms() {
    let redis = RedisServer::start();
    let n = cluster_nodes(&redis.url(), 2, |_| {}).await;
    let other = n[1].api.clone();
    // Let the first full refresh pass, so what is measured is the write-through.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for round in 0..3 {
        let (mut dev, _welcome) = n[0].device("alice", &["r"]).await;
        let seen = within(Duration::from_millis(100), || online(&other, "alice").then_eq(1)).await;
        println!("round {round}: connect visible on the other node after {seen:?}");
        assert!(seen.is_some(), "connection not visible on the other node within 100 ms");
        let users = other.online_users(None, None).await.unwrap().body;
        assert_eq!(users["users"], json!(["alice"]), "{users}");
        dev.join("r", None).await.unwrap().expect_reply().unwrap();
        let seen = within(Duration::from_millis(100), || {
            let other = other.clone();
            async move { other.presence("r").await.unwrap().body["users"] == json!(["alice"]) }
        })
        .await;
        println!("round {round}: join visible after {seen:?}");
        assert!(seen.is_some(), "join not visible on the other node within 100 ms");
        dev.leave("r").await.unwrap().expect_reply().unwrap();
        let seen = within(Duration::from_millis(100), || {
            let other = other.clone();
            async move { other.presence("r").await.unwrap().body["connections"] == 0 }
        })
        .await;
        assert!(seen.is_some(), "leave not visible on the other node within 100 ms");
        dev.close(1000).await.unwrap();
        let seen = within(Duration::from_millis(100), || online(&other, "alice").then_eq(0)).await;
        println!("round {round}: close visible after {seen:?}");
        assert!(seen.is_some(), "close not visible on the other node within 100 ms");
        let users = other.online_users(None, None).await.unwrap().body;
        assert_eq!(users["users"], json!([]), "{users}");
    }
    stop_all(n).await;
}

/// `fut.then_eq(v)`: a future of whether the value is `v`.
trait ThenEq<T> {
    fn then_eq(self, v: T) -> impl std::future::Future<Output = bool>;
}

impl<T: PartialEq, F: std::future::Future<Output = T>> ThenEq<T> for F {
    async fn then_eq(self, v: T) -> bool {
        self.await == v
    }
}

#[tokio::test]
async fn concurrent_same_key_publishes_on_three_nodes_publish_once() {
    let redis = RedisServer::start();
    let n = cluster_nodes(&redis.url(), 3, |_| {}).await;
    let (mut dev, _) = n[1].device_with("zed", "phone").await;
    for round in 0..3 {
        let key = format!("order-{round}");
        let body = json!({"user_id": "zed", "type": "paid", "data": {"round": round}});
        let mut calls = Vec::new();
        for i in 0..9 {
            let api = n[i % 3].api.clone();
            let (key, body) = (key.clone(), body.clone());
            calls.push(tokio::spawn(async move { api.post_with_idempotency_key("/api/v1/events", &key, body).await }));
        }
        let mut fresh = Vec::new();
        let mut replayed = Vec::new();
        for c in calls {
            let r = c.await.unwrap().unwrap();
            assert_eq!(r.header("idempotency-key"), Some(key.as_str()), "the key is echoed: {}", r.text);
            match r.status {
                202 if r.header("idempotent-replayed").is_some() => replayed.push(r.body["id"].clone()),
                202 => fresh.push(r.body["id"].clone()),
                409 => assert_eq!(r.error_code(), Some("idempotency_conflict"), "{}", r.text),
                s => panic!("unexpected {s}: {}", r.text),
            }
        }
        assert_eq!(fresh.len(), 1, "exactly one request publishes (round {round})");
        assert!(replayed.iter().all(|id| *id == fresh[0]), "replays give the first answer");
        // A replay after the fact, on any node, gives the same answer.
        let again = n[2].api.post_with_idempotency_key("/api/v1/events", &key, body.clone()).await.unwrap();
        assert_eq!((again.status, again.body["id"].clone()), (202, fresh[0].clone()), "{}", again.text);
        let ev = dev.next_event(T).await.unwrap();
        assert_eq!(json!(ev.id), fresh[0]);
    }
    assert!(dev.try_next_event(Duration::from_millis(300)).await.unwrap().is_none(), "nothing published twice");
    let stored = n[0].api.offline_messages(Some("zed"), None, None, None).await.unwrap().body;
    assert_eq!(stored["events"].as_array().map(Vec::len), Some(3), "{stored}");
    stop_all(n).await;
}

#[tokio::test]
async fn a_failed_publish_is_not_remembered_under_its_key() {
    let redis = RedisServer::start();
    let n = cluster_nodes(&redis.url(), 1, |c| c.messages.allowed_types = vec!["ok".into()]).await;
    let bad = json!({"user_id": "u", "type": "nope", "data": 1});
    let r = n[0].api.post_with_idempotency_key("/api/v1/events", "k1", bad).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.text);
    // Same key, corrected body: not a conflict, since the failure was not remembered.
    let good = json!({"user_id": "u", "type": "ok", "data": 1});
    let r = n[0].api.post_with_idempotency_key("/api/v1/events", "k1", good).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    assert!(r.header("idempotent-replayed").is_none());
    stop_all(n).await;
}

async fn ready(api: &Api) -> bool {
    api.ready().await.map(|r| r.status == 200).unwrap_or(false)
}

#[tokio::test]
async fn after_a_redis_restart_ready_means_live_delivery_works() {
    let mut redis = RedisServer::start_with(ServerOpts { appendonly: true, ..Default::default() });
    let n = cluster_nodes(&redis.url(), 2, |_| {}).await;
    let (mut dev, _) = n[0].device_with("alice", "phone").await;
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(publish(&n[1].api, "alice", "before", json!(i)).await);
    }
    assert_eq!(dev.collect_events(5, T).await.unwrap().len(), 5);
    for round in 0..2 {
        redis.kill();
        let down = within(Duration::from_secs(15), || async { !ready(&n[0].api).await && !ready(&n[1].api).await });
        assert!(down.await.is_some(), "both nodes notice Redis is gone");
        // Publishes while Redis is down are refused, not acknowledged.
        let r = n[1].api.publish_user("alice", "during", json!(round)).await.unwrap();
        assert_eq!(r.status, 503, "{}", r.text);
        let r = n[1].api.publish(json!({"user_id": "alice", "type": "t", "data": 0, "persist": false})).await.unwrap();
        assert_eq!(r.status, 503, "a transient publish that reaches no broker is refused: {}", r.text);
        redis.restart();
        let up = within(Duration::from_secs(20), || async { ready(&n[0].api).await && ready(&n[1].api).await });
        let took = up.await.expect("both nodes ready again");
        println!("round {round}: ready again {took:?} after the restart");
        // Right away: a live-only message from node B reaches the device on node A within 1 s.
        let r = n[1]
            .api
            .publish(json!({"user_id": "alice", "type": "live", "data": round, "persist": false}))
            .await
            .unwrap();
        assert_eq!(r.status, 202, "{}", r.text);
        let sent = Instant::now();
        let ev = dev.next_event(Duration::from_secs(1)).await.expect("live delivery within 1 s of ready");
        assert_eq!((ev.kind.as_str(), ev.data.clone()), ("live", json!(round)));
        println!("round {round}: delivered {:?} after publishing", sent.elapsed());
        acked.push(publish(&n[1].api, "alice", "after", json!(round)).await);
        assert_eq!(dev.next_event(T).await.unwrap().kind, "after");
    }
    // No acknowledged persisted message is lost.
    let stored = n[0].api.offline_messages(Some("alice"), None, None, None).await.unwrap().body;
    let ids: Vec<&str> = stored["events"].as_array().unwrap().iter().filter_map(|e| e["id"].as_str()).collect();
    for id in &acked {
        assert!(ids.contains(&id.as_str()), "acknowledged {id} lost: {stored}");
    }
    stop_all(n).await;
}

/// Python's urllib writes the whole body before it reads the answer: with a 2 MiB body and
/// the default 1 MiB limit, it must read the 413, not fail with EPIPE or a reset.
#[tokio::test]
async fn a_python_urllib_client_sending_2_mib_reads_the_413() {
    let s = TestServer::start().await;
    let script = r#"
import json, sys, urllib.request, urllib.error
url, key = sys.argv[1], sys.argv[2]
body = b'{"user_id":"u","type":"t","data":"' + b"x" * (2 * 1024 * 1024) + b'"}'
for _ in range(3):
    req = urllib.request.Request(url, data=body, method="POST",
        headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=20)
        print("unexpected success"); sys.exit(1)
    except urllib.error.HTTPError as e:
        err = json.loads(e.read())
        print(e.code, err["error"]["code"])
        if e.code != 413 or err["error"]["code"] != "payload_too_large": sys.exit(1)
"#;
    let url = format!("{}/api/v1/events", s.base);
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &url, API_KEY])
        .output()
        .await
        .expect("python3 runs (it is on every CI machine)");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "python saw: {stdout}{stderr}");
    assert_eq!(stdout.matches("413 payload_too_large").count(), 3, "{stdout}");
    s.stop().await;
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn while_redis_is_down_the_user_limit_fails_closed_or_open_as_configured() {
    let mut redis = RedisServer::start();
    let closed = cluster_nodes(&redis.url(), 1, |_| {}).await;
    let open = TestServer::with({
        let url = redis.url();
        move |c| {
            c.redis.url = url;
            c.server.instance_id = "open".into();
            c.limits.presence_failure = syncgate::config::PresenceFailure::Open;
        }
    })
    .await;
    redis.kill();
    let down = within(Duration::from_secs(15), || async { !ready(&closed[0].api).await && !ready(&open.api).await });
    assert!(down.await.is_some(), "the nodes notice Redis is gone");
    let opts = syncgate_client::DeviceOptions::new(closed[0].token("alice", &[]));
    let Err(refused) = syncgate_client::Device::connect(&closed[0].base, opts).await else {
        panic!("admitted although presence cannot be read");
    };
    assert_eq!(refused.http_status(), Some(503), "{refused}");
    assert_eq!(refused.http_error_code(), Some("service_unavailable"), "{refused}");
    // `open` lets the limit check pass; the upgrade then needs the store, down too here.
    let opts = syncgate_client::DeviceOptions::new(open.token("alice", &[]));
    let Err(later) = syncgate_client::Device::connect(&open.base, opts).await else {
        panic!("admitted although the store is down");
    };
    assert!(later.to_string().contains("storage"), "refused by the store, not the limit: {later}");
    // A broadcast cannot reach the other nodes: 503, and counted.
    let r = closed[0].api.broadcast(json!({"type": "b", "data": 0})).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text);
    let m = closed[0].api.metrics().await.unwrap().text;
    assert_eq!(metric(&m, "syncgate_dependency_failures_total{kind=\"presence_admission\"}"), 1, "{m}");
    assert_eq!(metric(&m, "syncgate_dependency_failures_total{kind=\"broadcast\"}"), 1, "{m}");
    let m = open.api.metrics().await.unwrap().text;
    assert_eq!(metric(&m, "syncgate_dependency_failures_total{kind=\"presence_admission\"}"), 1, "{m}");
    open.stop().await;
    stop_all(closed).await;
}
