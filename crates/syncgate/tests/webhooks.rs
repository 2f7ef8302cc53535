//! Webhooks end to end: a real node, real devices, and a receiving HTTP server that checks
//! every signature (tests/hooks_support). Retries, dead letters and the queue API, 4xx vs
//! 408/429, the circuit breaker, priorities, presence events with their grace, the connect
//! proxy, and delayed publishes.

mod common;
mod hooks_support;

use std::time::Duration;

use common::TestServer;
use hooks_support::{endpoint, Receiver};
use reqwest::Method;
use serde_json::json;
use syncgate::config::{Config, OnError};
use syncgate::queue::{now_ms, JobKind, NewJob, Priority};
use syncgate_client::{Device, DeviceOptions, Frame};

const LONG: Duration = Duration::from_secs(20);

/// Fast retries for tests.
fn fast(c: &mut Config) {
    c.queue.backoff_min = Duration::from_millis(30);
    c.queue.backoff_max = Duration::from_millis(120);
    c.queue.poll_interval = Duration::from_millis(50);
    c.webhooks.offline_grace = Duration::from_millis(400);
}

async fn queue_stats(s: &TestServer) -> serde_json::Value {
    s.api.request(Method::GET, "/api/v1/queue/stats", None, &[]).await.unwrap().body
}

async fn wait_stats(s: &TestServer, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let end = std::time::Instant::now() + LONG;
    loop {
        let st = queue_stats(s).await;
        if f(&st) {
            return st;
        }
        assert!(std::time::Instant::now() < end, "{what}: queue stats {st}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test]
async fn presence_and_connection_events_are_signed_and_sent_once_with_the_grace() {
    let rx = Receiver::start().await;
    let url = rx.url();
    let s = TestServer::with(|c| {
        fast(c);
        c.webhooks.endpoints = vec![endpoint(&url, &[])];
    })
    .await;
    let opts = DeviceOptions::new(s.token("alice", &[])).header("x-app-version", "4.2.0");
    let (mut a, welcome) = Device::connect(&s.base, opts).await.expect("device connects");
    let hits = rx.wait(LONG, "online and connect", |h| h.len() >= 2).await;
    let online = hits.iter().find(|h| h.kind() == "user.online").expect("user.online");
    assert_eq!(online.body["data"]["user_id"], "alice");
    assert_eq!(online.body["id"], online.id, "the body's id is the webhook-id");
    assert_eq!(online.body["instance_id"], s.node.instance_id.as_str());
    assert!(online.body["ts"].as_i64().unwrap() > 0);
    let connect = hits.iter().find(|h| h.kind() == "connect").expect("connect");
    assert_eq!(connect.body["data"]["conn_id"], welcome.conn_id.as_str());
    assert_eq!(connect.body["data"]["user_id"], "alice");
    assert_eq!(connect.body["data"]["node"], s.node.instance_id.as_str());
    assert!(connect.body["data"]["ip"].as_str().unwrap().starts_with("127."));
    assert_eq!(connect.body["data"]["app_version"], "4.2.0");

    // A second device, then a quick reconnect: no second user.online, no user.offline.
    let (b, _) = s.device("alice", &[]).await;
    a.close(1000).await.unwrap();
    drop(a);
    let (_a2, _) = s.device("alice", &[]).await;
    drop(b);
    rx.wait(LONG, "connects and disconnects", |h| {
        h.iter().filter(|x| x.kind() == "connect").count() == 3
            && h.iter().filter(|x| x.kind() == "disconnect").count() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(rx.delivered("user.online").len(), 1);
    assert!(rx.delivered("user.offline").is_empty(), "a reconnect within the grace sends no user.offline");

    // All gone: one user.offline after the grace.
    drop(_a2);
    let hits = rx.wait(LONG, "user.offline", |h| h.iter().any(|x| x.kind() == "user.offline")).await;
    let last_disconnect = hits.iter().filter(|x| x.kind() == "disconnect").map(|x| x.at).max().unwrap();
    let offline = hits.iter().find(|x| x.kind() == "user.offline").unwrap();
    assert!(offline.at >= last_disconnect);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(rx.delivered("user.offline").len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn failures_are_retried_then_dead_lettered_and_the_api_retries_them() {
    let rx = Receiver::start().await;
    rx.set(|b| b.default = 503);
    let url = rx.url();
    let s = TestServer::with(|c| {
        fast(c);
        c.queue.max_attempts = 3;
        c.webhooks.endpoints = vec![endpoint(&url, &["connect"])];
    })
    .await;
    let (_d, _) = s.device("bob", &[]).await;
    wait_stats(&s, "dead letter", |st| st["dead"] == 1).await;
    let hits = rx.hits();
    assert_eq!(hits.len(), 3, "max_attempts attempts");
    assert!(hits.iter().all(|h| h.id == hits[0].id), "one webhook-id for every attempt");
    assert!(hits[1].at.duration_since(hits[0].at) >= Duration::from_millis(30), "backoff_min between attempts");

    let dead = s.api.request(Method::GET, "/api/v1/queue/dead", None, &[]).await.unwrap();
    assert_eq!(dead.status, 200);
    let job = &dead.body["jobs"][0];
    assert_eq!(job["id"], hits[0].id.as_str());
    assert_eq!((job["kind"].as_str(), job["endpoint"].as_str()), (Some("webhook"), Some("app")));
    assert_eq!(job["attempts"], 3);
    assert_eq!(job["last_error"], "HTTP 503");
    assert_eq!(job["payload"]["type"], "connect");
    assert!(job["failed_at"].as_i64().unwrap() >= job["created_at"].as_i64().unwrap());

    // Unknown ids are 404; a bad cursor is 400.
    let r = s.api.request(Method::POST, "/api/v1/queue/dead/nope/retry", None, &[]).await.unwrap();
    assert_eq!((r.status, r.error_code()), (404, Some("not_found")));
    let r = s.api.request(Method::GET, "/api/v1/queue/dead?cursor=zzz", None, &[]).await.unwrap();
    assert_eq!((r.status, r.error_code()), (400, Some("invalid_request")));
    let r = s.api.request(Method::POST, "/api/v1/queue/dead/retry?kind=bogus", None, &[]).await.unwrap();
    assert_eq!(r.status, 400);
    let r = Receiver::start().await;
    drop(r);
    assert_eq!(
        syncgate_client::Api::new(&s.base, "wrong-key-123456")
            .request(Method::GET, "/api/v1/queue/stats", None, &[])
            .await
            .unwrap()
            .status,
        401
    );

    // The endpoint is back: a retry from the API delivers the same id.
    rx.set(|b| b.default = 204);
    let path = format!("/api/v1/queue/dead/{}/retry", hits[0].id);
    let r = s.api.request(Method::POST, &path, None, &[]).await.unwrap();
    assert_eq!((r.status, &r.body["retried"]), (200, &json!(1)));
    let hits = rx.wait(LONG, "delivery after retry", |h| h.iter().any(|x| x.status == 204)).await;
    assert_eq!(hits.last().unwrap().id, hits[0].id);
    let st = wait_stats(&s, "drained", |st| st["dead"] == 0 && st["in_flight"] == 0).await;
    assert_eq!(st["depth"]["express"], 0);

    // Retry all and delete.
    rx.set(|b| b.default = 500);
    let (_e, _) = s.device("carol", &[]).await;
    let (_f, _) = s.device("dave", &[]).await;
    wait_stats(&s, "two dead", |st| st["dead"] == 2).await;
    let dead = s.api.request(Method::GET, "/api/v1/queue/dead?limit=1", None, &[]).await.unwrap();
    assert_eq!(dead.body["jobs"].as_array().unwrap().len(), 1);
    let cursor = dead.body["next_cursor"].as_str().unwrap().to_string();
    let page2 =
        s.api.request(Method::GET, &format!("/api/v1/queue/dead?limit=1&cursor={cursor}"), None, &[]).await.unwrap();
    let second = page2.body["jobs"][0]["id"].as_str().unwrap().to_string();
    assert_ne!(second, dead.body["jobs"][0]["id"].as_str().unwrap());
    let r = s.api.request(Method::DELETE, &format!("/api/v1/queue/dead/{second}"), None, &[]).await.unwrap();
    assert_eq!(r.status, 200);
    let r = s.api.request(Method::DELETE, &format!("/api/v1/queue/dead/{second}"), None, &[]).await.unwrap();
    assert_eq!(r.status, 404);
    rx.set(|b| b.default = 200);
    let r = s.api.request(Method::POST, "/api/v1/queue/dead/retry?endpoint=app", None, &[]).await.unwrap();
    assert_eq!(r.body["retried"], 1);
    wait_stats(&s, "all delivered", |st| st["dead"] == 0 && st["in_flight"] == 0 && st["depth"]["express"] == 0).await;
    let m = s.api.metrics().await.unwrap().text;
    for name in [
        "syncgate_queue_jobs_dead_total{kind=\"webhook\"} 3",
        "syncgate_queue_attempt_seconds_count{endpoint=\"app\"}",
        "syncgate_queue_depth{priority=\"express\"}",
    ] {
        assert!(m.contains(name), "metrics lack {name}");
    }
    s.stop().await;
}

#[tokio::test]
async fn client_errors_dead_letter_at_once_and_408_429_are_retried() {
    let rx = Receiver::start().await;
    rx.set(|b| b.script = [404].into());
    let url = rx.url();
    let s = TestServer::with(|c| {
        fast(c);
        c.webhooks.endpoints = vec![endpoint(&url, &["connect"])];
    })
    .await;
    let (_d, _) = s.device("erin", &[]).await;
    wait_stats(&s, "404 dead at once", |st| st["dead"] == 1).await;
    assert_eq!(rx.hits().len(), 1, "a 4xx is not retried");
    let dead = s.api.request(Method::GET, "/api/v1/queue/dead", None, &[]).await.unwrap();
    assert_eq!(
        (dead.body["jobs"][0]["attempts"].as_u64(), dead.body["jobs"][0]["last_error"].as_str()),
        (Some(1), Some("HTTP 404"))
    );

    rx.set(|b| b.script = [408, 429].into());
    let (_e, _) = s.device("frank", &[]).await;
    let hits = rx.wait(LONG, "408, 429, then 200", |h| h.iter().any(|x| x.status == 200)).await;
    let statuses: Vec<u16> = hits[1..].iter().map(|h| h.status).collect();
    assert_eq!(statuses, [408, 429, 200]);
    assert_eq!(queue_stats(&s).await["dead"], 1);

    // A redirect is not followed (the signed POST goes only to the configured URL): it is
    // a permanent failure, like any other non-2xx that is not retried.
    for (n, status) in [307u16, 308, 302].into_iter().enumerate() {
        rx.set(|b| b.script = [status].into());
        let before = rx.hits().len();
        let (_g, _) = s.device(&format!("gus{n}"), &[]).await;
        wait_stats(&s, "redirect dead at once", |st| st["dead"] == 2 + n as u64).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after: Vec<(String, u16)> = rx.hits()[before..].iter().map(|h| (h.path.clone(), h.status)).collect();
        assert_eq!(after, [("/hooks".to_string(), status)], "not followed to /redirected");
    }
    s.stop().await;
}

#[tokio::test]
async fn the_breaker_opens_after_consecutive_failures_and_a_probe_closes_it() {
    let rx = Receiver::start().await;
    rx.set(|b| b.script = [500, 500].into());
    let url = rx.url();
    let cooldown = Duration::from_millis(800);
    let s = TestServer::with(|c| {
        fast(c);
        c.queue.breaker_failures = 2;
        c.queue.breaker_cooldown = cooldown;
        c.webhooks.endpoints = vec![endpoint(&url, &["connect"])];
    })
    .await;
    let (_d, _) = s.device("gina", &[]).await;
    rx.wait(LONG, "two failures", |h| h.len() == 2).await;
    let st = wait_stats(&s, "circuit open", |st| st["circuits"][0]["state"] == "open").await;
    assert_eq!(st["circuits"][0]["endpoint"], "app");
    let hits = rx.wait(LONG, "probe succeeds", |h| h.iter().any(|x| x.status == 200)).await;
    assert_eq!(hits.len(), 3);
    assert!(hits[2].at.duration_since(hits[1].at) >= cooldown, "no attempt while open");
    wait_stats(&s, "circuit closed", |st| st["circuits"].as_array().is_some_and(|c| c.is_empty())).await;
    s.stop().await;
}

#[tokio::test]
async fn priorities_order_delivery() {
    let rx = Receiver::start().await;
    let url = rx.url();
    let s = TestServer::with(|c| {
        fast(c);
        c.queue.concurrency = 1;
        c.webhooks.endpoints = vec![endpoint(&url, &["connect"])];
    })
    .await;
    // All due at the same moment, enqueued lowest priority first.
    let at = now_ms() + 500;
    let mut want = Vec::new();
    for (p, n) in [(Priority::Normal, 3), (Priority::Urgent, 2), (Priority::Express, 2)] {
        for i in 0..n {
            let body = json!({"type": "connect", "ts": 1, "instance_id": "x", "data": {"p": p.as_str(), "i": i}});
            let job = NewJob::new(JobKind::Webhook, "app", body.to_string()).priority(p).not_before(at);
            s.node.workers.queue().enqueue(job).await.unwrap();
            want.push(p.as_str());
        }
    }
    want.sort_by_key(|p| Priority::parse(p).unwrap());
    let hits = rx.wait(LONG, "all seven", |h| h.len() == 7).await;
    let got: Vec<&str> = hits.iter().map(|h| h.body["data"]["p"].as_str().unwrap()).collect();
    assert_eq!(got, want);
    s.stop().await;
}

#[tokio::test]
async fn client_messages_of_configured_types_are_forwarded() {
    let rx = Receiver::start().await;
    let url = rx.url();
    let s = TestServer::with(|c| {
        fast(c);
        c.webhooks.client_message_types = vec!["chat.*".into()];
        c.webhooks.endpoints = vec![endpoint(&url, &["client.message"])];
    })
    .await;
    let (mut d, _) = s.device_with("hana", "phone").await;
    d.publish("typing", json!({}), None).await.unwrap();
    d.publish("chat.msg", json!({"text": "hi"}), None).await.unwrap();
    let hits = rx.wait(LONG, "client.message", |h| !h.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.hits().len(), 1, "only configured types");
    let data = &hits[0].body["data"];
    assert_eq!((data["user_id"].as_str(), data["client_id"].as_str()), (Some("hana"), Some("phone")));
    assert_eq!((data["message_type"].as_str(), &data["message"]), (Some("chat.msg"), &json!({"text": "hi"})));
    s.stop().await;
}

/// A node sending `message.undelivered` to `rx`, `delay` after a publish to an offline user.
async fn undelivered_server(rx: &Receiver, delay: Duration) -> TestServer {
    let url = rx.url();
    TestServer::with(move |c| {
        fast(c);
        c.push.delay = delay;
        c.webhooks.endpoints = vec![endpoint(&url, &["message.undelivered"])];
    })
    .await
}

/// A device that comes back within `push.delay`, acks the message and leaves again has it:
/// no `message.undelivered` (the contract: "no device of the user acked").
#[tokio::test]
async fn a_message_acked_within_the_delay_is_not_reported_undelivered() {
    let rx = Receiver::start().await;
    let s = undelivered_server(&rx, Duration::from_millis(1500)).await;
    let (d, _) = s.device_with("kai", "phone").await;
    drop(d);
    common::eventually_async(LONG, || async { s.api.user_online("kai").await.unwrap().body["connections"] == 0 }).await;
    let acked = common::publish(&s.api, "kai", "note", json!({"n": 1})).await;
    let unacked = common::publish(&s.api, "lou", "note", json!({"n": 2})).await;
    let (mut d, welcome) = s.device_with("kai", "phone").await;
    assert_eq!(welcome.resumed, 1);
    let ev = d.next_event(LONG).await.unwrap();
    assert_eq!(ev.id, acked);
    d.ack(&ev.id).await.unwrap();
    drop(d);
    // lou's check (queued just after kai's) reports; kai's must have found the ack.
    let hits = rx.wait(LONG, "lou undelivered", |h| !h.is_empty()).await;
    assert_eq!(hits[0].body["data"]["id"], unacked.as_str());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<_> = rx.hits().iter().map(|h| h.body["data"]["id"].clone()).collect();
    assert_eq!(ids, vec![json!(unacked)], "kai's acked message is not undelivered");
    s.stop().await;
}

#[tokio::test]
async fn a_persisted_message_to_an_offline_user_is_reported_undelivered() {
    let rx = Receiver::start().await;
    let s = undelivered_server(&rx, Duration::from_millis(300)).await;
    let id = common::publish(&s.api, "ivan", "note", json!({"n": 1})).await;
    let (_d, _) = s.device("judy", &[]).await;
    common::publish(&s.api, "judy", "note", json!({"n": 2})).await;
    let hits = rx.wait(LONG, "undelivered", |h| !h.is_empty()).await;
    assert_eq!(hits[0].body["data"]["user_id"], "ivan");
    assert_eq!(hits[0].body["data"]["id"], id.as_str());
    assert_eq!(hits[0].body["data"]["data"], json!({"n": 1}));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(rx.hits().len(), 1, "a connected user's message is not undelivered");
    s.stop().await;
}

async fn proxy_server(rx: &Receiver, on_error: OnError, timeout: Duration) -> TestServer {
    let url = format!("http://{}/proxy", rx.addr);
    TestServer::with(move |c| {
        c.webhooks.connect_proxy.url = url;
        c.webhooks.connect_proxy.timeout = timeout;
        c.webhooks.connect_proxy.on_error = on_error;
    })
    .await
}

async fn upgrade_status(s: &TestServer, user: &str) -> Result<Device, u16> {
    let opts = DeviceOptions::new(s.token(user, &[])).client_id("dev-1").header("X-App-Version", "5.1.0");
    match Device::connect(&s.base, opts).await {
        Ok((d, _)) => Ok(d),
        Err(e) => Err(e.http_status().expect("an HTTP refusal")),
    }
}

#[tokio::test]
async fn the_connect_proxy_admits_refuses_and_follows_on_error() {
    let rx = Receiver::start().await;
    let s = proxy_server(&rx, OnError::Reject, Duration::from_millis(500)).await;
    // Allowed, with an extra room the token did not have.
    rx.set(|b| b.answer = Some(json!({"allow": true, "rooms": ["vip"], "meta": {"plan": "pro"}})));
    let mut d = upgrade_status(&s, "kim").await.expect("admitted");
    let reply = d.join("vip", None).await.unwrap();
    assert!(format!("{reply:?}").contains("vip"), "{reply:?}");
    // A refreshed token (without the room) keeps what the proxy granted.
    d.leave("vip").await.unwrap();
    let fresh = s.token("kim", &[]);
    let refreshed = d.request(json!({"op": "refresh", "token": fresh}), LONG).await.unwrap();
    assert!(matches!(refreshed, Frame::Reply(_)), "{refreshed:?}");
    let rejoined = d.join("vip", None).await.unwrap();
    assert!(matches!(rejoined, Frame::Reply(_)), "the proxy's room survives a refresh: {rejoined:?}");
    let hit = &rx.hits()[0];
    assert_eq!(hit.path, "/proxy");
    assert_eq!((hit.body["user_id"].as_str(), hit.body["client_id"].as_str()), (Some("kim"), Some("dev-1")));
    assert_eq!(hit.body["claims"]["sub"], "kim");
    assert_eq!(hit.body["app_version"], "5.1.0", "the app version the connection's metadata took");
    // The proxy's meta is the connection's: in its record, and matched by `where`.
    let conns = s.api.request(Method::GET, "/api/v1/users/kim/connections", None, &[]).await.unwrap();
    assert_eq!(conns.body["connections"][0]["meta"]["plan"], "pro", "{}", conns.text);
    let r = s.api.broadcast(json!({"type": "b", "data": 1, "where": {"plan": "free"}})).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    let r = s.api.broadcast(json!({"type": "b", "data": 2, "where": {"plan": "pro"}})).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(d.next_event(LONG).await.unwrap().data, json!(2), "only the matching broadcast");
    // A proxy meta that would pass the 1 KiB bound refuses the connection (503), changes nothing.
    rx.set(|b| b.answer = Some(json!({"allow": true, "meta": {"pad": "x".repeat(1100)}})));
    assert_eq!(upgrade_status(&s, "kim").await.err(), Some(503));
    // Refused: allow false, or 403.
    rx.set(|b| b.answer = Some(json!({"allow": false})));
    assert_eq!(upgrade_status(&s, "kim").await.err(), Some(403));
    rx.set(|b| {
        b.answer = None;
        b.script = [403].into();
    });
    assert_eq!(upgrade_status(&s, "kim").await.err(), Some(403));
    // Errors and timeouts: on_error reject refuses with 503.
    rx.set(|b| b.script = [500].into());
    assert_eq!(upgrade_status(&s, "kim").await.err(), Some(503));
    rx.set(|b| {
        b.answer = Some(json!({"allow": true}));
        b.delay = Duration::from_secs(2);
    });
    let t0 = std::time::Instant::now();
    assert_eq!(upgrade_status(&s, "kim").await.err(), Some(503));
    assert!(t0.elapsed() < Duration::from_millis(1900), "the proxy's timeout bounds the wait");
    s.stop().await;
    // on_error allow admits on timeout.
    let s = proxy_server(&rx, OnError::Allow, Duration::from_millis(300)).await;
    upgrade_status(&s, "kim").await.expect("admitted on timeout with on_error: allow");
    rx.set(|b| {
        b.delay = Duration::ZERO;
        b.script = [500].into();
    });
    upgrade_status(&s, "kim").await.expect("admitted on a 500 with on_error: allow");
    rx.set(|b| {
        b.delay = Duration::ZERO;
        b.answer = Some(json!({"allow": false}));
    });
    assert_eq!(upgrade_status(&s, "kim").await.err(), Some(403), "a refusal is a refusal under allow too");
    s.stop().await;
}

#[tokio::test]
async fn delayed_publishes_arrive_after_their_delay_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir.path(), fast).await;
    let (mut d, _) = s.device_with("lee", "phone").await;
    let t0 = std::time::Instant::now();
    let r = s.api.publish(json!({"user_id": "lee", "type": "later", "data": {"n": 1}, "delay_s": 1})).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    assert!(r.body["job_id"].as_str().unwrap().starts_with("job_"));
    assert!(r.body["deliver_at"].as_i64().unwrap() >= now_ms() + 500);
    let ev = d.next_event(LONG).await.unwrap();
    assert_eq!((ev.kind.as_str(), t0.elapsed() >= Duration::from_millis(950)), ("later", true));
    // Bad input changes nothing.
    for bad in [
        json!({"user_id": "lee", "type": "x", "data": {}, "delay_s": 1, "deliver_at": now_ms() + 1000}),
        json!({"user_id": "lee", "type": "x", "data": {}, "delay_s": 999_999_999u64}),
        json!({"user_id": "lee", "type": "x", "data": {}, "priority": "urgent"}),
    ] {
        let r = s.api.publish(bad).await.unwrap();
        assert_eq!((r.status, r.error_code()), (400, Some("invalid_request")), "{}", r.text);
    }
    // A room publish and a batch, due after a restart.
    let at = now_ms() + 1500;
    let r = s.api.publish_room("lobby", json!({"type": "room.later", "data": {}, "deliver_at": at})).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    let r = s
        .api
        .publish_batch(
            json!({"user_ids": ["lee"], "type": "batch.later", "data": {}, "delay_s": 1, "priority": "high"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    drop(d);
    s.stop().await;
    let s = TestServer::start_in(dir.path(), fast).await;
    let (mut d, _) = s.device_with("lee", "phone").await;
    // The device never acked: "later" is replayed first, then the delayed batch arrives.
    let mut kinds = Vec::new();
    while !kinds.contains(&"batch.later".to_string()) {
        kinds.push(d.next_event(LONG).await.unwrap().kind);
    }
    assert_eq!(kinds, ["later", "batch.later"]);
    let hist = s.api.room_history("lobby", None, None).await.unwrap();
    let end = std::time::Instant::now() + LONG;
    let mut hist = hist;
    while hist.body["events"].as_array().is_none_or(|e| e.is_empty()) {
        assert!(std::time::Instant::now() < end, "room publish never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
        hist = s.api.room_history("lobby", None, None).await.unwrap();
    }
    assert_eq!(hist.body["events"][0]["type"], "room.later");
    assert!(now_ms() >= at);
    s.stop().await;
}

#[tokio::test]
async fn a_full_queue_refuses_delayed_publishes_with_503_and_counts_them() {
    let s = TestServer::with(|c| c.queue.max_jobs = 2).await;
    let later = |n: u32| json!({"user_id": "max", "type": "later", "data": {"n": n}, "delay_s": 60});
    for n in 0..2 {
        let r = s.api.publish(later(n)).await.unwrap();
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let r = s.api.publish(later(2)).await.unwrap();
    assert_eq!((r.status, r.error_code()), (503, Some("service_unavailable")), "{}", r.text);
    assert!(r.text.contains("outbound queue is full"), "{}", r.text);
    let st = queue_stats(&s).await;
    assert_eq!((st["delayed"].as_u64(), st["max_jobs"].as_u64()), (Some(2), Some(2)), "{st}");
    let m = s.api.metrics().await.unwrap().text;
    assert!(m.contains("syncgate_queue_full_total 1"), "metrics lack the refusal");
    s.stop().await;
}

/// The connect proxy and the connect event see the client's address as the connection
/// records it: from `X-Forwarded-For` when the peer is a trusted proxy.
#[tokio::test]
async fn hooks_get_the_forwarded_client_address_from_a_trusted_proxy() {
    let rx = Receiver::start().await;
    let (url, proxy) = (rx.url(), format!("http://{}/proxy", rx.addr));
    let s = TestServer::with(move |c| {
        fast(c);
        c.server.trusted_proxies = vec!["127.0.0.0/8".into()];
        c.webhooks.endpoints = vec![endpoint(&url, &[])];
        c.webhooks.connect_proxy.url = proxy;
    })
    .await;
    rx.set(|b| b.answer = Some(json!({"allow": true})));
    let opts = DeviceOptions::new(s.token("lena", &[])).header("x-forwarded-for", "198.51.100.4");
    let (_d, _) = Device::connect(&s.base, opts).await.expect("device connects");
    let hits = rx.wait(LONG, "proxy and connect", |h| h.iter().any(|h| h.kind() == "connect")).await;
    let asked = hits.iter().find(|h| h.path == "/proxy").expect("the proxy was asked");
    assert_eq!(asked.body["ip"], "198.51.100.4");
    let connect = hits.iter().find(|h| h.kind() == "connect").expect("connect");
    assert_eq!(connect.body["data"]["ip"], "198.51.100.4");
    s.stop().await;
}
