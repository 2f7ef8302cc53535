//! Live delivery over real sockets: users with several devices, rooms, broadcast, client
//! operations, presence and the query API.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use syncgate_client::Frame;

#[tokio::test]
async fn user_with_two_devices_gets_each_event_on_both() {
    let s = TestServer::start().await;
    let (mut phone, w) = s.device("alice", &[]).await;
    let (mut laptop, _) = s.device("alice", &[]).await;
    let (mut bob, _) = s.device("bob", &[]).await;
    assert_eq!(w.user_id, "alice");
    assert_eq!(w.resumed, 0);
    let id = publish(&s.api, "alice", "favorite.added", json!({"song": 7})).await;
    for d in [&mut phone, &mut laptop] {
        let e = d.next_event(T).await.unwrap();
        assert_eq!((e.id.as_str(), e.stream.as_str(), e.kind.as_str()), (id.as_str(), "user", "favorite.added"));
        assert_eq!(e.data, json!({"song": 7}));
        assert!(e.ts > 0);
    }
    assert!(bob.try_next_event(Duration::from_millis(300)).await.unwrap().is_none(), "bob got alice's event");
    s.stop().await;
}

#[tokio::test]
async fn room_members_get_room_events_and_others_do_not() {
    let s = TestServer::start().await;
    let (mut member, _) = s.device("alice", &["school:*"]).await;
    let (mut outsider, _) = s.device("bob", &["school:*"]).await;
    let r = member.join("school:1", None).await.unwrap().expect_reply().unwrap();
    assert_eq!(r.rest["room"], "school:1");
    let r = s.api.publish_room("school:1", json!({"type": "notice", "data": {"t": "hi"}})).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    let e = member.next_event(T).await.unwrap();
    assert_eq!((e.stream.as_str(), e.kind.as_str()), ("room:school:1", "notice"));
    assert_eq!(e.id, r.body["id"].as_str().unwrap());
    assert!(outsider.try_next_event(Duration::from_millis(300)).await.unwrap().is_none());
    // After leaving, nothing more arrives.
    member.leave("school:1").await.unwrap().expect_reply().unwrap();
    s.api.publish_room("school:1", json!({"type": "notice", "data": 2})).await.unwrap();
    assert!(member.try_next_event(Duration::from_millis(300)).await.unwrap().is_none());
    s.stop().await;
}

#[tokio::test]
async fn broadcast_reaches_everyone() {
    let s = TestServer::start().await;
    let mut devices = Vec::new();
    for u in ["a", "b", "c", "d"] {
        devices.push(s.device(u, &[]).await.0);
    }
    let r = s.api.broadcast(json!({"type": "announcement", "data": {"m": "maintenance"}})).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    for d in &mut devices {
        let e = d.next_event(T).await.unwrap();
        assert_eq!((e.stream.as_str(), e.kind.as_str()), ("broadcast", "announcement"));
    }
    s.stop().await;
}

#[tokio::test]
async fn client_publish_syncs_other_devices_but_not_the_sender() {
    let s = TestServer::with(|c| c.rooms.client_publish = vec!["chat:*".into()]).await;
    let (mut a1, _) = s.device("alice", &["chat:*", "news"]).await;
    let (mut a2, _) = s.device("alice", &["chat:*"]).await;
    let f = a1.publish("playlist.updated", json!({"p": 1}), None).await.unwrap();
    let id = f.expect_reply().unwrap().rest["id"].as_str().unwrap().to_string();
    let e = a2.next_event(T).await.unwrap();
    assert_eq!((e.id.as_str(), e.kind.as_str()), (id.as_str(), "playlist.updated"));
    assert!(a1.try_next_event(Duration::from_millis(300)).await.unwrap().is_none(), "sender got its own publish");
    // Rooms: allowed by config and token.
    a2.join("chat:1", None).await.unwrap().expect_reply().unwrap();
    a1.publish("msg", json!("hey"), Some("chat:1")).await.unwrap().expect_reply().unwrap();
    assert_eq!(a2.next_event(T).await.unwrap().stream, "room:chat:1");
    // Not allowed by config: forbidden, nothing published.
    let f = a1.publish("msg", json!("x"), Some("news")).await.unwrap();
    assert_eq!(f.error_code(), Some("forbidden"));
    s.stop().await;
}

#[tokio::test]
async fn ping_join_leave_replies_carry_ref() {
    let s = TestServer::start().await;
    let (mut d, _) = s.device("alice", &["lobby"]).await;
    let f = d.request(json!({"op": "ping", "ref": "p1"}), T).await.unwrap();
    assert!(matches!(f, Frame::Pong { .. }), "{f:?}");
    let f = d.request(json!({"op": "join", "room": "lobby", "ref": 42}), T).await.unwrap();
    assert_eq!(f.reference(), Some("42"));
    assert!(f.is_ok());
    let f = d.request(json!({"op": "leave", "room": "elsewhere", "ref": "l"}), T).await.unwrap();
    assert_eq!(f.error_code(), Some("not_found"));
    // Personal room of the user is always allowed.
    assert!(d.join("user:alice", None).await.unwrap().is_ok());
    s.stop().await;
}

#[tokio::test]
async fn presence_online_and_stats_reflect_connections() {
    let s = TestServer::start().await;
    let (mut a, _) = s.device("alice", &["r"]).await;
    let (mut b, _) = s.device("bob", &["r"]).await;
    let (_b2, _) = s.device("bob", &["r"]).await;
    a.join("r", None).await.unwrap();
    b.join("r", None).await.unwrap();
    let p = s.api.presence("r").await.unwrap();
    assert_eq!(p.body, json!({"room": "r", "users": ["alice", "bob"], "connections": 2}));
    let o = s.api.user_online("bob").await.unwrap();
    assert_eq!(o.body, json!({"user_id": "bob", "online": true, "connections": 2}));
    let o = s.api.user_online("carol").await.unwrap();
    assert_eq!(o.body["online"], false);
    // Pagination over online users.
    let p1 = s.api.online_users(Some(1), None).await.unwrap();
    assert_eq!(p1.body["users"], json!(["alice"]));
    let cursor = p1.body["next_cursor"].as_str().unwrap().to_string();
    let p2 = s.api.online_users(Some(1), Some(&cursor)).await.unwrap();
    assert_eq!(p2.body["users"], json!(["bob"]));
    assert!(p2.body["next_cursor"].is_null());
    let st = s.api.stats().await.unwrap();
    assert_eq!(st.body["connections"], 3);
    assert_eq!(st.body["users"], 2);
    assert_eq!(st.body["instance_id"], s.node.instance_id.as_str());
    // Disconnect closes every device of the user with 4009.
    let r = s.api.disconnect("bob").await.unwrap();
    assert_eq!(r.body["disconnected"], 2);
    assert_eq!(b.wait_closed(T).await.unwrap(), Some(4009));
    eventually(|| s.node.hub.user_connections("bob") == 0).await;
    s.stop().await;
}

#[tokio::test]
async fn token_in_header_works_and_many_events_arrive_in_order() {
    let s = TestServer::start().await;
    let opts = syncgate_client::DeviceOptions::new(s.token("alice", &[])).token_in_header(true);
    let (mut d, _) = syncgate_client::Device::connect(&s.base, opts).await.unwrap();
    for i in 0..200 {
        publish(&s.api, "alice", "n", json!(i)).await;
    }
    for i in 0..200 {
        assert_eq!(d.next_event(T).await.unwrap().data, json!(i));
    }
    s.stop().await;
}

#[tokio::test]
async fn server_pings_and_closes_silent_connections() {
    let s = TestServer::with(|c| {
        c.heartbeat.interval = Duration::from_millis(300);
        c.heartbeat.timeout = Duration::from_secs(1);
    })
    .await;
    let (mut alive, w) = s.device("alice", &[]).await;
    assert_eq!(w.heartbeat_ms, 300);
    let (mut silent, _) = s.device("bob", &[]).await;
    // `alive` keeps reading (and so answers pings); `silent` does not read for 2.5 s.
    let keep = tokio::spawn(async move {
        let r = alive.try_next_event(Duration::from_millis(2500)).await;
        (alive, r)
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(silent.wait_closed(T).await.unwrap(), Some(1008));
    let (mut alive, r) = keep.await.unwrap();
    assert!(r.unwrap().is_none());
    assert!(alive.ping().await.unwrap().is_ok(), "a connection that answers pings stays up");
    s.stop().await;
}

#[tokio::test]
async fn openapi_describes_every_route_and_every_route_exists() {
    let s = TestServer::start().await;
    let spec = s.api.openapi().await.unwrap().body;
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let paths = spec["paths"].as_object().unwrap();
    for (method, path) in syncgate::api::ROUTES {
        assert!(paths.get(*path).and_then(|p| p.get(*method)).is_some(), "{method} {path} missing from /openapi.json");
        // The route is served (not the JSON 404 of unknown routes).
        let concrete = path.replace("{room}", "r1").replace("{user_id}", "u1");
        let m = syncgate_client::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = s.api.request(m, &concrete, Some(json!({})), &[]).await.unwrap();
        assert!(!(r.status == 404 && r.text.contains("no such route")), "{method} {path} is not routed");
    }
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, syncgate::api::ROUTES.len(), "the spec documents a route the router does not have");
    s.stop().await;
}

#[tokio::test]
async fn metrics_are_exposed_with_syncgate_names() {
    let s = TestServer::start().await;
    let (_d, _) = s.device("alice", &[]).await;
    publish(&s.api, "alice", "n", json!(1)).await;
    let m = s.api.metrics().await.unwrap().text;
    for name in [
        "syncgate_websocket_connections 1",
        "syncgate_messages_in_total{kind=\"api\"} 1",
        "syncgate_messages_out_total 1",
        "syncgate_http_requests_total{route=\"/api/v1/events\",method=\"POST\",status=\"202\"} 1",
    ] {
        assert!(m.contains(name), "missing {name} in\n{m}");
    }
    // A new data dir is on the lsm engine, which reports its memory: the publish sits in a
    // memtable, and the offline stats say the same.
    let gauge = |name: &str| -> u64 {
        let line = m.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{m}"));
        line[name.len()..].trim().parse().unwrap()
    };
    assert!(gauge("syncgate_store_write_buffer_bytes ") > 0, "{m}");
    assert!(gauge("syncgate_store_cache_bytes ") <= 64 << 20, "{m}");
    // The publish was one request of a group commit, timed.
    assert!(gauge("syncgate_store_commit_requests_total ") >= 1, "{m}");
    let commits: u64 = m
        .lines()
        .filter(|l| l.starts_with("syncgate_store_commit_seconds_count{durable="))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(commits >= 1, "{m}");
    assert!(m.contains("syncgate_store_flush_wait_seconds_total 0"), "{m}");
    let st = s.api.request(syncgate_client::Method::GET, "/api/v1/offline/stats", None, &[]).await.unwrap();
    assert!(st.body["write_buffer_bytes"].as_u64().is_some_and(|b| b > 0), "{}", st.text);
    s.stop().await;
}
