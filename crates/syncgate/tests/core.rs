//! The delivery core's promises over real sockets: JSON escapes in frames, replays that
//! never close a slow reader, the per-user device limit, one ack rule for WebSocket and
//! HTTP, a client that stops reading being dropped, and token refresh in place.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use syncgate::config::RateSetting;
use syncgate_client::{Device, DeviceOptions, Frame, Method};

#[tokio::test]
async fn json_escapes_in_frame_strings_are_decoded() {
    let s = TestServer::with(|c| c.rooms.client_publish = vec!["café".into()]).await;
    let (mut a, _) = s.device("zoë", &["café"]).await;
    let (mut b, _) = s.device("zoë", &["café"]).await;
    // Python's json.dumps and PHP's json_encode escape non-ASCII and slashes by default.
    a.send_text(r#"{"op":"join","room":"caf\u00e9","ref":"j1"}"#).await.unwrap();
    match a.recv_timeout(T).await.unwrap() {
        Some(Frame::Reply(r)) => assert_eq!(r.rest["room"], json!("café")),
        other => panic!("join with an escaped room: {other:?}"),
    }
    b.send_text(r#"{"op":"join","room":"caf\u00e9","ref":"j2"}"#).await.unwrap();
    assert!(matches!(b.recv_timeout(T).await.unwrap(), Some(Frame::Reply(_))));
    a.send_text(r#"{"op":"publish","type":"a\/b","room":"caf\u00e9","data":{"t":"\u00e9"},"ref":"p1"}"#).await.unwrap();
    match a.recv_timeout(T).await.unwrap() {
        Some(Frame::Reply(r)) => assert!(r.rest["id"].is_string()),
        other => panic!("publish with an escaped type: {other:?}"),
    }
    let e = b.next_event(T).await.unwrap();
    assert_eq!((e.kind.as_str(), e.stream.as_str()), ("a/b", "room:café"));
    assert_eq!(e.data, json!({"t": "é"}));
    s.stop().await;
}

/// A device that comes back to 400 big missed messages and reads them slowly, asking for
/// pings all along, gets every message in order and every pong, and is never closed: the
/// catch-up fills only half of its (small) send queue and replies have room above it.
#[tokio::test]
async fn a_slow_reader_replaying_a_long_backlog_is_never_closed() {
    let s = TestServer::with(|c| c.limits.send_queue = 16).await;
    drop(s.device_with("ann", "phone").await);
    let big = "x".repeat(32 * 1024);
    for i in 0..400 {
        publish(&s.api, "ann", "n", json!({"i": i, "pad": big})).await;
    }
    let (mut d, w) = s.device_with("ann", "phone").await;
    assert_eq!(w.resumed, 400);
    // Let the server fill the socket buffers and its queue before reading anything.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (mut got, mut pongs, mut pings) = (0, 0, 0);
    while got < 400 {
        if got % 20 == 0 && pings <= got / 20 {
            d.send_json(&json!({"op": "ping", "ref": format!("p{pings}")})).await.unwrap();
            pings += 1;
        }
        match d.recv_timeout(T).await {
            Ok(Some(Frame::Event(e))) => {
                assert_eq!(e.data["i"], json!(got), "in order, no gap");
                got += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(Some(Frame::Pong { .. })) => pongs += 1,
            Ok(other) => panic!("unexpected {other:?} after {got} events"),
            Err(e) => panic!("closed after {got} of 400 events: {e:?}"),
        }
    }
    while pongs < pings {
        match d.recv_timeout(T).await.unwrap() {
            Some(Frame::Pong { .. }) => pongs += 1,
            other => panic!("expected the last pongs, got {other:?}"),
        }
    }
    assert!(!d.is_closed());
    s.stop().await;
}

#[tokio::test]
async fn device_cursors_are_bounded_per_user_least_recently_used_first() {
    let s = TestServer::with(|c| c.limits.max_devices_per_user = 2).await;
    let (mut first, _) = s.device_with("bo", "d1").await;
    let id = publish(&s.api, "bo", "n", json!(1)).await;
    first.next_event(T).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    drop(s.device_with("bo", "d2").await);
    tokio::time::sleep(Duration::from_millis(5)).await;
    drop(s.device_with("bo", "d3").await); // d1 is the least recently used: forgotten
    for (client, status) in [("d1", 404), ("d2", 200), ("d3", 200)] {
        let path = format!("/api/v1/offline/count?user_id=bo&client_id={client}");
        let r = s.api.request(Method::GET, &path, None, &[]).await.unwrap();
        assert_eq!(r.status, status, "{client}: only the least recently used cursor is forgotten");
    }
    // One ack rule: the still-connected d1 lost its cursor, so its WebSocket ack is refused
    // exactly like the offline API's (not silently re-created).
    match first.ack(&id).await.unwrap() {
        Frame::Error(e) => assert_eq!(e.code, "not_found"),
        other => panic!("ack of an evicted device: {other:?}"),
    }
    let r = s
        .api
        .request(Method::POST, "/api/v1/offline/ack?user_id=bo", Some(json!({"client_id": "d1", "id": id})), &[])
        .await
        .unwrap();
    assert_eq!((r.status, r.error_code()), (404, Some("not_found")));
    s.stop().await;
}

/// A client that never reads but keeps writing: once its queue overflows (4008), the close
/// frame cannot be written, so the server drops the socket within its bound instead of
/// keeping it (online, counted toward the per-user limit) for good.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_close_bound() {
    let s = TestServer::with(|c| {
        c.limits.send_queue = 8;
        c.rate_limits.client_frames = RateSetting::off(); // the pings must not end it with 4029
    })
    .await;
    let (mut d, _) = s.device("cy", &[]).await;
    let big = "y".repeat(64 * 1024);
    let mut closed_at = None;
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut published = 0;
    while Instant::now() < deadline {
        if published < 400 {
            let r = s.api.publish(json!({"user_id": "cy", "type": "n", "data": big, "persist": false})).await.unwrap();
            assert_eq!(r.status, 202);
            published += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Keep writing (pings), never read.
        let _ = d.send_json(&json!({"op": "ping"})).await;
        let online = s.api.user_online("cy").await.unwrap();
        if online.body["online"] == json!(false) {
            closed_at = Some(Instant::now());
            break;
        }
    }
    assert!(closed_at.is_some(), "the connection was never dropped");
    assert!(s.node.hub.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn refresh_renews_the_token_in_place() {
    let s = TestServer::with(|c| {
        c.heartbeat.interval = Duration::from_millis(500);
        c.auth.leeway = Duration::ZERO;
    })
    .await;
    let short = s.node.auth.mint("dee", &[], Duration::from_secs(3), None).unwrap();
    let (mut d, _) = Device::connect(&s.base, DeviceOptions::new(short.clone())).await.unwrap();
    let (mut unrenewed, _) = Device::connect(&s.base, DeviceOptions::new(short)).await.unwrap();
    let fresh = s.token("dee", &[]);
    match d.request(json!({"op": "refresh", "token": fresh}), T).await.unwrap() {
        Frame::Reply(r) => assert!(r.rest["exp"].as_u64().unwrap() > 3000),
        other => panic!("refresh: {other:?}"),
    }
    // Another user's token is refused; the connection stays.
    let other = s.token("eve", &[]);
    match d.request(json!({"op": "refresh", "token": other}), T).await.unwrap() {
        Frame::Error(e) => assert_eq!(e.code, "forbidden"),
        other => panic!("refresh with another user's token: {other:?}"),
    }
    // Past the old expiry (plus a sweep), the unrenewed one is closed with 4001; the renewed
    // one is still open and delivers.
    assert_eq!(unrenewed.wait_closed(Duration::from_secs(10)).await.unwrap(), Some(4001));
    publish(&s.api, "dee", "n", json!(1)).await;
    assert_eq!(d.next_event(T).await.unwrap().data, json!(1));
    s.stop().await;
}

/// Events are written straight into the socket while it takes them, and queued behind the
/// rest of a partly written frame once it is full: a device that pauses while 12 MB of
/// persisted and transient events arrive, then reads, gets every frame whole, each stream
/// in order, nothing twice.
#[tokio::test]
async fn live_events_stay_whole_and_in_order_when_the_socket_fills() {
    let s = TestServer::with(|c| c.limits.send_queue = 4096).await;
    let (mut d, _) = s.device("ann", &[]).await;
    let pad = "y".repeat(40 * 1024);
    let n = 150;
    for i in 0..n {
        publish(&s.api, "ann", "p", json!({"i": i, "pad": pad})).await;
        let r = s.api.broadcast(json!({"type": "t", "data": {"i": i, "pad": pad}})).await.unwrap();
        assert_eq!(r.status, 202);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut persisted, mut transient) = (0, 0);
    while persisted + transient < 2 * n {
        let e = d.next_event(T).await.expect("a whole event frame");
        assert_eq!(e.data["pad"].as_str().map(str::len), Some(pad.len()));
        let next = if e.kind == "p" { &mut persisted } else { &mut transient };
        assert_eq!(e.data["i"], json!(*next), "{} in order, no gap, no repeat", e.kind);
        *next += 1;
    }
    assert!(d.recv_timeout(Duration::from_millis(300)).await.unwrap().is_none(), "nothing more");
    s.stop().await;
}

/// A room large enough for paced fan-outs (`hub::pace`): spaced messages are written
/// straight into the members' sockets, back-to-back ones queue for their tasks, and a mix of
/// both, persisted and transient, reaches every member whole, in order, once.
#[tokio::test]
async fn a_large_room_gets_every_message_in_order_whether_written_directly_or_queued() {
    let s = TestServer::start().await;
    let members = 300; // over hub::pace::LARGE
    let mut devices = Vec::new();
    for i in 0..members {
        let (mut d, _) = s.device(&format!("m{i}"), &["hall"]).await;
        d.join("hall", None).await.unwrap().expect_reply().unwrap();
        devices.push(d);
    }
    let total = 80;
    for i in 0..total {
        let persist = i % 3 != 0;
        let r = s.api.publish_room("hall", json!({"type": "m", "data": i, "persist": persist})).await.unwrap();
        assert_eq!(r.status, 202);
        if i < 20 {
            tokio::time::sleep(Duration::from_millis(30)).await; // quiet: direct
        }
    }
    let readers: Vec<_> = devices
        .into_iter()
        .map(|mut d| {
            tokio::spawn(async move {
                let got: Vec<_> = d.collect_events(total, T).await.unwrap().into_iter().map(|e| e.data).collect();
                assert!(d.recv_timeout(Duration::from_millis(200)).await.unwrap().is_none(), "nothing more");
                got
            })
        })
        .collect();
    let want: Vec<_> = (0..total).map(|i| json!(i)).collect();
    for r in readers {
        assert_eq!(r.await.unwrap(), want);
    }
    s.stop().await;
}
