//! Bad input and limits: every refusal gets the contract's code and changes nothing; the
//! connection stays up where the contract says so.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use syncgate::config::RateSetting;
use syncgate_client::{tungstenite::Message, Device, DeviceOptions, Frame, Method};

async fn refused(s: &TestServer, opts: DeviceOptions) -> (u16, String) {
    match Device::connect(&s.base, opts).await {
        Ok(_) => panic!("connection should have been refused"),
        Err(e) => (e.http_status().expect("an HTTP refusal"), e.http_error_code().unwrap_or_default().to_string()),
    }
}

#[tokio::test]
async fn bad_or_missing_or_expired_tokens_get_401_before_upgrade() {
    let s = TestServer::with(|c| c.auth.leeway = Duration::ZERO).await;
    assert_eq!(refused(&s, DeviceOptions::new("")).await, (401, "unauthorized".into()));
    assert_eq!(refused(&s, DeviceOptions::new("not-a-jwt")).await, (401, "unauthorized".into()));
    let other = syncgate::auth::Auth::new(&Default::default(), "some-other-secret-xyz-0123456789-abcdef", &[]).unwrap();
    let forged = other.mint("alice", &[], Duration::from_secs(60), None).unwrap();
    assert_eq!(refused(&s, DeviceOptions::new(forged)).await, (401, "unauthorized".into()));
    let short = s.node.auth.mint("alice", &[], Duration::ZERO, None).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(refused(&s, DeviceOptions::new(short)).await, (401, "unauthorized".into()));
    // An API key is not a user token.
    assert_eq!(refused(&s, DeviceOptions::new(API_KEY)).await, (401, "unauthorized".into()));
    assert_eq!(s.node.hub.counts().0, 0);
    s.stop().await;
}

#[tokio::test]
async fn token_bound_to_a_client_id_refuses_another() {
    let s = TestServer::start().await;
    let t = s.node.auth.mint("alice", &[], Duration::from_secs(60), Some("phone")).unwrap();
    assert_eq!(refused(&s, DeviceOptions::new(t.clone()).client_id("laptop")).await, (403, "forbidden".into()));
    let (_d, w) = Device::connect(&s.base, DeviceOptions::new(t)).await.unwrap();
    assert_eq!(w.client_id.as_deref(), Some("phone"));
    s.stop().await;
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_connection_stays() {
    let s = TestServer::with(|c| c.messages.allowed_types = vec!["favorite.added".into(), "playlist.*".into()]).await;
    let (mut d, _) = s.device("alice", &["school:*"]).await;
    let (mut other, _) = s.device("alice", &[]).await;
    let cases = [
        (json!({"ref": "a"}), "invalid_frame"),
        (json!({"op": "dance", "ref": "b"}), "unknown_op"),
        (json!({"op": "join", "ref": "c"}), "invalid_request"),
        (json!({"op": "join", "room": 7, "ref": "c2"}), "invalid_frame"),
        (json!({"op": "join", "room": "secret", "ref": "d"}), "forbidden"),
        (json!({"op": "publish", "type": "history.added", "data": {}, "ref": "e"}), "invalid_message_type"),
        (json!({"op": "publish", "type": "bad type", "data": {}, "ref": "e2"}), "invalid_message_type"),
        (json!({"op": "publish", "type": "playlist.updated", "ref": "f"}), "invalid_request"),
        (json!({"op": "ack", "id": "nope", "ref": "g"}), "invalid_request"),
    ];
    for (frame, code) in cases {
        let f = d.request(frame.clone(), T).await.unwrap();
        assert_eq!(f.error_code(), Some(code), "{frame} -> {f:?}");
    }
    d.send_text("\"not an object\"").await.unwrap();
    assert_eq!(d.recv().await.unwrap().error_code(), Some("invalid_frame"));
    d.send_text("{{{").await.unwrap();
    assert_eq!(d.recv().await.unwrap().error_code(), Some("invalid_frame"));
    d.send_binary(vec![1, 2, 3]).await.unwrap();
    assert_eq!(d.recv().await.unwrap().error_code(), Some("invalid_frame"));
    // Nothing was published or joined, and the connection still works.
    assert!(other.try_next_event(Duration::from_millis(200)).await.unwrap().is_none());
    assert!(s.node.hub.presence("secret").1 == 0);
    assert!(d.ping().await.unwrap().is_ok());
    assert!(d.publish("playlist.created", json!({}), None).await.unwrap().is_ok());
    assert_eq!(other.next_event(T).await.unwrap().kind, "playlist.created");
    s.stop().await;
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let s = TestServer::with(|c| c.limits.max_frame_bytes = 1024).await;
    let (mut d, _) = s.device("alice", &[]).await;
    let big = json!({"op": "publish", "type": "x", "data": "a".repeat(2000)}).to_string();
    d.send_text(&big).await.unwrap();
    assert_eq!(d.wait_closed(T).await.unwrap(), Some(1009));
    s.stop().await;
}

/// A node allowing 5 frames a second (3 strikes) and a device on it.
async fn flood_target() -> (TestServer, Device) {
    let s = TestServer::with(|c| {
        c.rate_limits.client_frames = "5/s burst 5".parse().unwrap();
        c.rate_limits.client_frames_strikes = 3;
    })
    .await;
    let (d, _) = s.device("alice", &[]).await;
    (s, d)
}

#[tokio::test]
async fn flooding_socket_gets_rate_limit_errors_then_4029() {
    let (s, mut d) = flood_target().await;
    for _ in 0..20 {
        if d.send_raw(Message::text(r#"{"op":"ping"}"#)).await.is_err() {
            break;
        }
    }
    let mut codes = Vec::new();
    let close = loop {
        match d.recv().await {
            Ok(f) => codes.extend(f.error_code().map(str::to_string)),
            Err(e) => break e.close_code(),
        }
    };
    assert_eq!(close, Some(4029));
    assert!(codes.iter().any(|c| c == "rate_limit_exceeded"), "{codes:?}");
    s.stop().await;
}

/// WebSocket ping control frames count toward `rate_limits.client_frames` too: each is
/// answered (RFC 6455), but a flood of them is closed with 4029 after the strikes.
#[tokio::test]
async fn flooding_websocket_pings_is_closed_with_4029() {
    let (s, mut d) = flood_target().await;
    for _ in 0..20 {
        if d.send_raw(Message::Ping(b"p".to_vec().into())).await.is_err() {
            break;
        }
    }
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), d.recv()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => break e.close_code(),
            Err(_) => break None,
        }
    };
    assert_eq!(close, Some(4029), "a ping flood is closed");
    // Within the limit, pings are answered and the connection stays.
    let (mut e, _) = s.device("bob", &[]).await;
    for _ in 0..3 {
        e.send_raw(Message::Ping(b"q".to_vec().into())).await.unwrap();
    }
    let reply = e.ping().await.unwrap();
    assert!(matches!(reply, Frame::Pong { .. }), "{reply:?}");
    s.stop().await;
}

#[tokio::test]
async fn slow_reader_is_closed_with_4008_not_buffered() {
    let s = TestServer::with(|c| c.limits.send_queue = 8).await;
    let (mut slow, _) = s.device("alice", &[]).await;
    let (mut fast, _) = s.device("bob", &[]).await;
    // ~24 MiB of broadcasts while `slow` reads nothing: more than the kernel buffers hold.
    let payload = "x".repeat(60_000);
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while fast.next_event(T).await.is_ok() {
            n += 1;
            if n == 400 {
                break;
            }
        }
        n
    });
    for _ in 0..400 {
        let r = s.api.broadcast(json!({"type": "big", "data": payload})).await.unwrap();
        assert_eq!(r.status, 202);
    }
    assert_eq!(reader.await.unwrap(), 400, "a reader that keeps up gets everything");
    let code = loop {
        match slow.recv().await {
            Ok(_) => continue,
            Err(e) => break e.close_code(),
        }
    };
    assert_eq!(code, Some(4008));
    let m = s.api.metrics().await.unwrap().text;
    assert!(m.contains("syncgate_slow_consumer_closes_total 1"), "{m}");
    s.stop().await;
}

#[tokio::test]
async fn connection_limits_per_node_and_per_user() {
    let s = TestServer::with(|c| {
        c.limits.max_connections = 3;
        c.limits.max_connections_per_user = 2;
    })
    .await;
    let _a1 = s.device("alice", &[]).await;
    let _a2 = s.device("alice", &[]).await;
    assert_eq!(refused(&s, DeviceOptions::new(s.token("alice", &[]))).await, (429, "rate_limit_exceeded".into()));
    let _b1 = s.device("bob", &[]).await;
    assert_eq!(refused(&s, DeviceOptions::new(s.token("carol", &[]))).await, (503, "service_unavailable".into()));
    s.stop().await;
}

#[tokio::test]
async fn connect_rate_per_user_is_limited() {
    let s = TestServer::with(|c| c.rate_limits.ws_connect_per_user = "2/min burst 2".parse().unwrap()).await;
    let _a = s.device("alice", &[]).await;
    let _b = s.device("alice", &[]).await;
    assert_eq!(refused(&s, DeviceOptions::new(s.token("alice", &[]))).await, (429, "rate_limit_exceeded".into()));
    let _other_user = s.device("bob", &[]).await;
    let m = s.api.metrics().await.unwrap().text;
    assert!(m.contains(r#"syncgate_rate_limited_total{limiter="ws_connect_per_user"} 1"#), "{m}");
    s.stop().await;
}

#[tokio::test]
async fn expired_token_closes_live_connection_with_4001() {
    let s = TestServer::with(|c| {
        c.auth.leeway = Duration::ZERO;
        c.heartbeat.interval = Duration::from_millis(200);
        c.heartbeat.timeout = Duration::from_secs(30);
    })
    .await;
    let t = s.node.auth.mint("alice", &[], Duration::from_secs(1), None).unwrap();
    let (mut d, _) = Device::connect(&s.base, DeviceOptions::new(t)).await.unwrap();
    assert_eq!(d.wait_closed(T).await.unwrap(), Some(4001));
    s.stop().await;
}

#[tokio::test]
async fn api_auth_body_and_json_errors() {
    let s = TestServer::with(|c| c.limits.max_body_bytes = 1024).await;
    let body = json!({"user_id": "alice", "type": "x", "data": {}});
    let anon = syncgate_client::Api::unauthenticated(&s.base);
    let r = anon.publish(body.clone()).await.unwrap();
    assert_eq!((r.status, r.error_code()), (401, Some("unauthorized")));
    let wrong = syncgate_client::Api::new(&s.base, "wrong-key-123456");
    assert_eq!(wrong.publish(body.clone()).await.unwrap().status, 401);
    // A user token is not an API key.
    let user = syncgate_client::Api::with_token(&s.base, s.token("alice", &[]));
    assert_eq!(user.publish(body.clone()).await.unwrap().status, 401);
    let r = anon.request(Method::POST, "/api/v1/events", Some(body.clone()), &[("X-API-Key", API_KEY)]).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    let big = json!({"user_id": "alice", "type": "x", "data": "a".repeat(2000)});
    let r = s.api.publish(big).await.unwrap();
    assert_eq!((r.status, r.error_code()), (413, Some("payload_too_large")));
    let r = s.api.request_raw(Method::POST, "/api/v1/events", Some(b"{nope".to_vec()), &[]).await.unwrap();
    assert_eq!((r.status, r.error_code()), (400, Some("invalid_request")));
    let r = s.api.publish(json!({"user_id": "alice", "type": "x"})).await.unwrap();
    assert_eq!((r.status, r.error_code()), (400, Some("invalid_request")));
    let r = s.api.publish(json!({"user_id": "", "type": "x", "data": 1})).await.unwrap();
    assert_eq!((r.status, r.error_code()), (400, Some("invalid_request")));
    let r = s.api.publish_batch(json!({"user_ids": [], "type": "x", "data": 1})).await.unwrap();
    assert_eq!(r.status, 400);
    let r = s.api.request(Method::GET, "/api/v1/nothing-here", None, &[]).await.unwrap();
    assert_eq!((r.status, r.error_code()), (404, Some("not_found")));
    let r = s.api.request(Method::GET, "/api/v1/online-users?limit=lots", None, &[]).await.unwrap();
    assert_eq!((r.status, r.error_code()), (400, Some("invalid_request")));
    let r = s.api.request(Method::DELETE, "/api/v1/events", None, &[]).await.unwrap();
    assert_eq!((r.status, r.error_code()), (405, Some("invalid_request")));
    // Only the one good publish reached the store.
    let st = s.api.offline_stats().await.unwrap();
    assert_eq!(st.body["stored_messages"], 1, "{}", st.text);
    s.stop().await;
}

#[tokio::test]
async fn disallowed_message_type_is_refused_by_the_api() {
    let text = include_str!("../../../examples/config/music-sync.yaml");
    let music = syncgate::config::Config::from_yaml(text).unwrap();
    let s = TestServer::with(move |c| c.messages = music.messages).await;
    let r = s.api.publish_user("alice", "chat.message", json!({})).await.unwrap();
    assert_eq!((r.status, r.error_code()), (400, Some("invalid_message_type")));
    let r = s.api.publish_user("alice", "playlist.song.added", json!({"song": 1})).await.unwrap();
    assert_eq!(r.status, 202);
    s.stop().await;
}

#[tokio::test]
async fn api_rate_limit_answers_429_with_headers() {
    let s = TestServer::with(|c| c.rate_limits.api_per_key = RateSetting::new(3, Duration::from_secs(60), 3)).await;
    for left in [2, 1, 0] {
        let r = s.api.stats().await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(left.to_string().as_str()));
    }
    let r = s.api.stats().await.unwrap();
    assert_eq!((r.status, r.error_code()), (429, Some("rate_limit_exceeded")));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    s.stop().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_created() {
    let s = TestServer::start().await;
    let r = s.api.request(Method::GET, "/health", None, &[("X-Request-Id", "req-123")]).await.unwrap();
    assert_eq!(r.header("x-request-id"), Some("req-123"));
    assert_eq!(r.body["status"], "healthy");
    let r =
        s.api.request(Method::GET, "/api/v1/stats", None, &[("Authorization", "Bearer bad-key-0000")]).await.unwrap();
    assert_eq!(r.status, 401);
    assert!(r.header("x-request-id").is_some_and(|v| v.len() >= 16));
    s.stop().await;
}

#[tokio::test]
async fn bad_idempotency_keys_and_names_are_refused_and_change_nothing() {
    let s = TestServer::start().await;
    let body = json!({"user_id": "alice", "type": "x", "data": {}});
    // Idempotency-Key is 1 to 255 visible ASCII characters: a space or tab is not one.
    for k in ["order 1", "order\t1"] {
        let r =
            s.api.request(Method::POST, "/api/v1/events", Some(body.clone()), &[("Idempotency-Key", k)]).await.unwrap();
        assert_eq!((r.status, r.error_code()), (400, Some("invalid_request")), "{k:?}: {}", r.text);
    }
    let st = s.api.offline_stats().await.unwrap();
    assert_eq!(st.body["stored_messages"], 0, "{}", st.text);
    // A client_id that breaks the name rule is refused even when `since` is given.
    let id = publish(&s.api, "alice", "x", json!(1)).await;
    let path = format!("/api/v1/offline/messages?user_id=alice&client_id=a%01b&since={id}");
    let r = s.api.request(Method::GET, &path, None, &[]).await.unwrap();
    assert_eq!((r.status, r.error_code()), (400, Some("invalid_request")), "{}", r.text);
    // A token bound to one client_id answers 403 on the offline API: the spec says so.
    let spec = s.api.openapi().await.unwrap().body;
    for (path, method) in [
        ("/api/v1/offline/messages", "get"),
        ("/api/v1/offline/ack", "post"),
        ("/api/v1/offline/ack/batch", "post"),
        ("/api/v1/offline/count", "get"),
    ] {
        assert!(spec["paths"][path][method]["responses"]["403"].is_object(), "{method} {path}: 403 undocumented");
    }
    s.stop().await;
}
