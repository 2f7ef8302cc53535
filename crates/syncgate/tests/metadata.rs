//! Connection metadata and targeting: what a connection records (trusted proxies for
//! X-Forwarded-For, app version, user agent, the token's `meta` claim), the connections API,
//! per-device disconnect, and broadcasts with a `where` filter; on one node and across three.

mod common;
#[path = "redis_support/mod.rs"]
mod redis_support;

use std::time::Duration;

use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use redis_support::RedisServer;
use reqwest::Method;
use serde_json::{json, Value};
use syncgate_client::{Device, DeviceOptions};

fn token_with_meta(user: &str, meta: Value) -> String {
    let exp = syncgate::auth::unix_now() + 3600;
    let claims = json!({"sub": user, "exp": exp, "meta": meta, "rooms": ["lobby"]});
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).expect("token")
}

async fn device(s: &TestServer, user: &str, client: &str, meta: Value, headers: &[(&str, &str)]) -> Device {
    let mut o = DeviceOptions::new(token_with_meta(user, meta)).client_id(client);
    for (k, v) in headers {
        o = o.header(*k, *v);
    }
    Device::connect(&s.base, o).await.expect("device connects").0
}

async fn connections(s: &TestServer, user: &str) -> Vec<Value> {
    let r = s.api.request(Method::GET, &format!("/api/v1/users/{user}/connections"), None, &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["connections"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn connections_record_metadata_and_forwarded_for_only_from_trusted_proxies() {
    let xff = [("x-forwarded-for", "203.0.113.7"), ("x-app-version", "3.1.0"), ("user-agent", "phone-app/3.1")];
    // Not trusted: the peer's own address.
    let s = TestServer::start().await;
    let _d = device(&s, "alice", "phone", json!({"region": "eu"}), &xff).await;
    let list = connections(&s, "alice").await;
    assert_eq!(list.len(), 1);
    let c = &list[0];
    assert_eq!(c["ip"], "127.0.0.1");
    assert_eq!(c["client_id"], "phone");
    assert_eq!(c["user_id"], "alice");
    assert_eq!(c["app_version"], "3.1.0");
    assert_eq!(c["user_agent"], "phone-app/3.1");
    assert_eq!(c["meta"], json!({"region": "eu"}));
    assert_eq!(c["node"], s.node.instance_id.as_str());
    assert!(c["connected_at"].as_i64().unwrap() > 0);
    assert_eq!(c["rooms"], json!([]));
    let r = s.api.request(Method::GET, "/api/v1/nodes", None, &[]).await.unwrap();
    assert_eq!(r.body["nodes"].as_array().map(Vec::len), Some(1), "{}", r.text);
    assert_eq!(r.body["nodes"][0]["instance_id"], s.node.instance_id.as_str());
    assert_eq!(r.body["nodes"][0]["connections"], 1);
    s.stop().await;
    // Trusted (loopback is the proxy here): the client address from the header.
    let s = TestServer::with(|c| c.server.trusted_proxies = vec!["127.0.0.0/8".into()]).await;
    let _d = device(&s, "alice", "phone", json!({}), &xff).await;
    assert_eq!(connections(&s, "alice").await[0]["ip"], "203.0.113.7");
    assert!(connections(&s, "nobody").await.is_empty());
    s.stop().await;
}

/// Behind a trusted proxy, the per-address connect limit counts each client address (the
/// one the connection records), not the proxy's: one busy client does not lock out others.
#[tokio::test]
async fn connect_rate_per_ip_counts_the_forwarded_client_behind_a_trusted_proxy() {
    let s = TestServer::with(|c| {
        c.server.trusted_proxies = vec!["127.0.0.0/8".into()];
        c.rate_limits.ws_connect_per_ip = "2/min burst 2".parse().unwrap();
    })
    .await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    let _a = device(&s, "alice", "a1", json!({}), &from("203.0.113.7")).await;
    let _b = device(&s, "bob", "b1", json!({}), &from("203.0.113.7")).await;
    let third = DeviceOptions::new(token_with_meta("carol", json!({}))).header("x-forwarded-for", "203.0.113.7");
    let refused = Device::connect(&s.base, third).await.expect_err("the third connect from one address is refused");
    assert_eq!(refused.http_status(), Some(429));
    // Another client behind the same proxy has its own budget.
    let _c = device(&s, "carol", "c1", json!({}), &from("203.0.113.8")).await;
    assert_eq!(connections(&s, "carol").await[0]["ip"], "203.0.113.8");
    s.stop().await;
}

#[tokio::test]
async fn meta_claim_over_1_kib_or_not_an_object_is_refused_at_upgrade() {
    let s = TestServer::start().await;
    for meta in [json!({"blob": "x".repeat(1100)}), json!(["not", "an", "object"])] {
        let err = Device::connect(&s.base, DeviceOptions::new(token_with_meta("alice", meta))).await.err().unwrap();
        assert_eq!(err.http_status(), Some(400), "{err}");
        assert_eq!(err.http_error_code(), Some("invalid_request"));
    }
    assert!(connections(&s, "alice").await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn disconnect_one_device_or_one_connection_with_4009() {
    let s = TestServer::start().await;
    let mut phone = device(&s, "alice", "phone", json!({}), &[]).await;
    let mut tablet = device(&s, "alice", "tablet", json!({}), &[]).await;
    let r = s.api.request(Method::POST, "/api/v1/users/alice/disconnect?client_id=phone", None, &[]).await.unwrap();
    assert_eq!(r.body["disconnected"], 1);
    let err = phone.next_event(T).await.unwrap_err();
    assert_eq!(err.close_code(), Some(4009), "{err}");
    assert!(tablet.ping().await.is_ok(), "the other device stays");
    // One connection by its id and node: two ephemeral connections, only the named one closes.
    let tok = token_with_meta("bob", json!({}));
    let (mut e1, w1) = Device::connect(&s.base, DeviceOptions::new(tok.clone())).await.unwrap();
    let mut e2 = Device::connect(&s.base, DeviceOptions::new(tok)).await.unwrap().0;
    let list = connections(&s, "bob").await;
    assert_eq!(list.len(), 2);
    let (first, node) = (list[0]["conn_id"].as_str().unwrap(), list[0]["node"].as_str().unwrap());
    let path = format!("/api/v1/users/bob/disconnect?conn_id={first}&node={node}");
    let r = s.api.request(Method::POST, &path, None, &[]).await.unwrap();
    assert_eq!(r.body["disconnected"], 1, "{}", r.text);
    let (closed, open) = if w1.conn_id == first { (&mut e1, &mut e2) } else { (&mut e2, &mut e1) };
    assert_eq!(closed.next_event(T).await.unwrap_err().close_code(), Some(4009));
    assert!(open.ping().await.is_ok());
    // Another node's id closes nothing here; half a selector is refused.
    let r = s.api.request(Method::POST, "/api/v1/users/bob/disconnect?conn_id=1&node=elsewhere", None, &[]).await;
    assert_eq!(r.unwrap().body["disconnected"], 0);
    for q in ["conn_id=1", "node=x", "client_id=a&conn_id=1&node=x"] {
        let r = s.api.request(Method::POST, &format!("/api/v1/users/bob/disconnect?{q}"), None, &[]).await.unwrap();
        assert_eq!(r.status, 400, "{q}: {}", r.text);
    }
    assert!(open.ping().await.is_ok());
    s.stop().await;
}

/// Broadcasts a `where` filter and returns the answer's status.
async fn broadcast_where(s: &TestServer, kind: &str, filter: Value) -> u16 {
    let r = s.api.broadcast(json!({"type": kind, "data": {}, "where": filter})).await.unwrap();
    r.status
}

/// Whether `d` gets an event of type `kind` within `wait`.
async fn gets(d: &mut Device, kind: &str, wait: Duration) -> bool {
    matches!(d.try_next_event(wait).await, Ok(Some(e)) if e.kind == kind)
}

/// `?app_version=` is recorded and wins over the header; given twice, the upgrade is refused
/// with 400 and nothing is admitted.
#[tokio::test]
async fn app_version_from_the_query_wins_and_twice_is_refused() {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error as WsError};
    let s = TestServer::start().await;
    let token = token_with_meta("quinn", json!({"tier": 1}));
    let ws = s.base.replacen("http", "ws", 1);
    let mut req = format!("{ws}/ws?token={token}&client_id=q&app_version=9.9").into_client_request().unwrap();
    req.headers_mut().insert("x-app-version", "1.0".parse().unwrap());
    let (_open, _) = tokio_tungstenite::connect_async(req).await.expect("connects");
    let list = connections(&s, "quinn").await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["app_version"], "9.9");
    match tokio_tungstenite::connect_async(format!("{ws}/ws?token={token}&app_version=1&app_version=2")).await {
        Err(WsError::Http(r)) => assert_eq!(r.status(), 400),
        other => panic!("expected a 400 refusal, got {other:?}"),
    }
    assert_eq!(connections(&s, "quinn").await.len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn broadcast_where_matches_values_lists_and_app_version() {
    let s = TestServer::start().await;
    let mut eu = device(&s, "u1", "a", json!({"region": "eu", "tier": 2}), &[("x-app-version", "2.0")]).await;
    let mut us = device(&s, "u2", "b", json!({"region": "us"}), &[("x-app-version", "1.0")]).await;
    let mut none = device(&s, "u3", "c", json!({}), &[]).await;
    assert_eq!(broadcast_where(&s, "eu.only", json!({"region": "eu"})).await, 202);
    assert!(gets(&mut eu, "eu.only", T).await);
    assert_eq!(broadcast_where(&s, "both", json!({"region": ["eu", "us"]})).await, 202);
    assert!(gets(&mut eu, "both", T).await);
    assert!(gets(&mut us, "both", T).await);
    assert_eq!(broadcast_where(&s, "v2", json!({"app_version": "2.0", "tier": 2})).await, 202);
    assert!(gets(&mut eu, "v2", T).await);
    assert_eq!(broadcast_where(&s, "nobody", json!({"region": "asia"})).await, 202);
    assert_eq!(broadcast_where(&s, "everyone", json!({})).await, 202);
    // Each device's next event shows what it was (not) sent: filtered ones never arrive.
    assert!(gets(&mut eu, "everyone", T).await);
    assert!(gets(&mut us, "everyone", T).await, "us got neither eu.only, v2 nor nobody");
    assert!(gets(&mut none, "everyone", T).await, "a device without meta matches no filter");
    for bad in [json!({"region": []}), json!(["eu"]), json!({"a": {"b": 1}})] {
        let r = s.api.broadcast(json!({"type": "x", "data": {}, "where": bad})).await.unwrap();
        assert_eq!((r.status, r.error_code()), (400, Some("invalid_request")), "{}", r.text);
    }
    s.stop().await;
}

#[tokio::test]
async fn three_nodes_list_connections_and_filter_broadcasts_across_nodes() {
    let redis = RedisServer::start();
    // The default expiry: listings must come from the write-through, not a refresh.
    let n = cluster_nodes(&redis.url(), 3, |c| c.redis.presence_ttl = Duration::from_secs(30)).await;
    let mut a = device(&n[0], "alice", "phone", json!({"region": "eu"}), &[("x-app-version", "1.2")]).await;
    let mut b = device(&n[1], "alice", "tablet", json!({"region": "us"}), &[]).await;
    let mut c = device(&n[2], "bob", "laptop", json!({"region": "eu"}), &[]).await;
    a.join("lobby", None).await.unwrap();
    // Every node lists alice's two devices, on the nodes they are connected to, with the room
    // the phone joined, within a second (written through, not waiting for a refresh).
    for node in &n {
        let mut seen = Vec::new();
        for _ in 0..20 {
            seen = connections(node, "alice").await;
            if seen.len() == 2 && seen.iter().any(|c| c["rooms"] == json!(["lobby"])) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut where_: Vec<(String, String, Value)> = seen
            .iter()
            .map(|c| (c["client_id"].as_str().unwrap().into(), c["node"].as_str().unwrap().into(), c["rooms"].clone()))
            .collect();
        where_.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            where_,
            vec![("phone".into(), "node-0".into(), json!(["lobby"])), ("tablet".into(), "node-1".into(), json!([]))]
        );
    }
    // Every node lists the three nodes with their own connection counts.
    for node in &n {
        let mut got = Vec::new();
        for _ in 0..40 {
            let r = node.api.request(Method::GET, "/api/v1/nodes", None, &[]).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text);
            got = r.body["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| (f["instance_id"].as_str().unwrap().to_string(), f["connections"].as_u64().unwrap()))
                .collect::<Vec<_>>();
            if got.len() == 3 && got.iter().all(|(_, c)| *c == 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(got, vec![("node-0".into(), 1), ("node-1".into(), 1), ("node-2".into(), 1)]);
    }
    // A filtered broadcast sent to node 1 reaches the eu devices on nodes 0 and 2 only.
    assert_eq!(broadcast_where(&n[1], "eu", json!({"region": "eu"})).await, 202);
    assert!(gets(&mut a, "eu", T).await);
    assert!(gets(&mut c, "eu", T).await);
    assert_eq!(broadcast_where(&n[2], "all", json!({})).await, 202);
    assert!(gets(&mut b, "all", T).await, "the us device got no eu message before this one");
    // One connection on node 1, disconnected through node 0 by its id and node.
    let tablet = connections(&n[0], "alice").await.into_iter().find(|c| c["client_id"] == "tablet").unwrap();
    let path = format!("/api/v1/users/alice/disconnect?conn_id={}&node=node-1", tablet["conn_id"].as_str().unwrap());
    let r = n[0].api.request(Method::POST, &path, None, &[]).await.unwrap();
    assert_eq!((r.status, r.body["disconnected"].as_u64()), (200, Some(0)), "closed on node 1, not here");
    assert_eq!(b.next_event(T).await.unwrap_err().close_code(), Some(4009));
    assert!(a.ping().await.is_ok(), "the phone on node 0 (same user) stays");
    stop_all(n).await;
}
