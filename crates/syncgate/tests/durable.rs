//! Durable delivery over real sockets: per-user streams, per-device cursors, acks, resume,
//! the offline API, room history, idempotency, retention.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use syncgate_client::{Device, DeviceOptions, Method};

fn seq_of(id: &str) -> u64 {
    id.rsplit('.').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn offline_device_gets_all_100_in_order_on_reconnect() {
    let s = TestServer::start().await;
    let (d, w) = s.device_with("alice", "phone").await;
    assert_eq!(w.resumed, 0);
    drop(d);
    for i in 0..100 {
        publish(&s.api, "alice", "n", json!(i)).await;
    }
    let (mut d, w) = s.device_with("alice", "phone").await;
    assert_eq!(w.resumed, 100);
    for i in 0..100 {
        let e = d.next_event(T).await.unwrap();
        assert_eq!(e.data, json!(i));
    }
    assert!(d.try_next_event(Duration::from_millis(200)).await.unwrap().is_none(), "no duplicate");
    s.stop().await;
}

#[tokio::test]
async fn devices_recover_independently_from_their_own_cursors() {
    let s = TestServer::start().await;
    let (mut phone, _) = s.device_with("alice", "phone").await;
    let (mut laptop, _) = s.device_with("alice", "laptop").await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(publish(&s.api, "alice", "n", json!(i)).await);
    }
    for d in [&mut phone, &mut laptop] {
        for i in 0..10 {
            assert_eq!(d.next_event(T).await.unwrap().data, json!(i));
        }
    }
    assert!(phone.ack(&ids[5]).await.unwrap().is_ok());
    assert!(laptop.ack(&ids[2]).await.unwrap().is_ok());
    drop(phone);
    drop(laptop);
    for i in 10..14 {
        ids.push(publish(&s.api, "alice", "n", json!(i)).await);
    }
    let (mut phone, w) = s.device_with("alice", "phone").await;
    assert_eq!(w.resumed, 8);
    let got: Vec<_> = phone.collect_events(8, T).await.unwrap().into_iter().map(|e| e.data).collect();
    assert_eq!(got, (6..14).map(|i| json!(i)).collect::<Vec<_>>());
    let (mut laptop, w) = s.device_with("alice", "laptop").await;
    assert_eq!(w.resumed, 11);
    let got: Vec<_> = laptop.collect_events(11, T).await.unwrap().into_iter().map(|e| e.data).collect();
    assert_eq!(got, (3..14).map(|i| json!(i)).collect::<Vec<_>>());
    for d in [&mut phone, &mut laptop] {
        assert!(d.try_next_event(Duration::from_millis(200)).await.unwrap().is_none());
    }
    s.stop().await;
}

#[tokio::test]
async fn reconnects_during_a_stream_of_publishes_lose_and_duplicate_nothing() {
    let s = TestServer::start().await;
    drop(s.device_with("alice", "phone").await);
    const N: u64 = 400;
    let api = s.api.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            publish(&api, "alice", "n", json!(i)).await;
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let mut seen: Vec<u64> = Vec::new();
    let mut last_id: Option<String> = None;
    let mut round = 0;
    while (seen.len() as u64) < N {
        let (mut d, _) = s.device_with("alice", "phone").await;
        round += 1;
        // Read a while, then ack what we have and drop the connection abruptly.
        let budget = if round < 4 { 60 } else { usize::MAX };
        let mut n = 0;
        while n < budget && (seen.len() as u64) < N {
            let e = d.next_event(T).await.unwrap();
            seen.push(e.data.as_u64().unwrap());
            last_id = Some(e.id);
            n += 1;
        }
        if let Some(id) = &last_id {
            assert!(d.ack(id).await.unwrap().is_ok());
        }
    }
    publisher.await.unwrap();
    assert!(round >= 4);
    assert_eq!(seen, (0..N).collect::<Vec<_>>(), "every message once, in order");
    s.stop().await;
}

#[tokio::test]
async fn ack_moves_the_cursor_and_the_count() {
    let s = TestServer::start().await;
    let (mut d, _) = s.device_with("alice", "phone").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish(&s.api, "alice", "n", json!(i)).await);
    }
    let count = |s: &TestServer| {
        let api = s.api.clone();
        async move { api.offline_count(Some("alice"), Some("phone")).await.unwrap().body["count"].as_u64().unwrap() }
    };
    assert_eq!(count(&s).await, 5);
    let r = d.ack(&ids[1]).await.unwrap().expect_reply().unwrap();
    assert_eq!(r.rest["cursor"], ids[1].as_str());
    assert_eq!(count(&s).await, 3);
    // Acks are cumulative and never move back.
    d.ack(&ids[0]).await.unwrap().expect_reply().unwrap();
    assert_eq!(count(&s).await, 3);
    // The offline API with the user's own token, and a batch ack (highest id wins).
    let dev = syncgate_client::Api::with_token(&s.base, s.token("alice", &[]));
    let r = dev.offline_ack_batch(None, "phone", &[&ids[2], &ids[3]]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(dev.offline_count(None, Some("phone")).await.unwrap().body["count"], 1);
    let r = dev.offline_messages(None, Some("phone"), None, None).await.unwrap();
    assert_eq!(r.body["events"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["events"][0]["id"], ids[4].as_str());
    assert_eq!(r.body["next"], ids[4].as_str());
    // A token bound to one device cannot act for another.
    let bound = s.node.auth.mint("alice", &[], Duration::from_secs(60), Some("phone")).unwrap();
    let bound = syncgate_client::Api::with_token(&s.base, bound);
    assert_eq!(bound.offline_count(None, Some("laptop")).await.unwrap().status, 403);
    assert_eq!(bound.offline_ack(None, "laptop", &ids[4]).await.unwrap().status, 403);
    assert_eq!(bound.offline_count(None, Some("phone")).await.unwrap().status, 200);
    // A user token cannot read another user's stream.
    let r = dev.offline_messages(Some("bob"), None, None, None).await.unwrap();
    assert_eq!(r.status, 403);
    s.stop().await;
}

#[tokio::test]
async fn offline_api_pages_through_a_stream() {
    let s = TestServer::start().await;
    for i in 0..25 {
        publish(&s.api, "alice", "n", json!(i)).await;
    }
    let mut since: Option<String> = None;
    let mut got = Vec::new();
    loop {
        let r = s.api.offline_messages(Some("alice"), None, since.as_deref(), Some(10)).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        let events = r.body["events"].as_array().unwrap().clone();
        if events.is_empty() {
            break;
        }
        got.extend(events.iter().map(|e| e["data"].as_u64().unwrap()));
        since = r.body["next"].as_str().map(str::to_string);
    }
    assert_eq!(got, (0..25).collect::<Vec<_>>());
    s.stop().await;
}

#[tokio::test]
async fn bad_positions_and_ids_are_refused_and_change_nothing() {
    let s = TestServer::start().await;
    let (mut d, _) = s.device_with("alice", "phone").await;
    let id = publish(&s.api, "alice", "n", json!(1)).await;
    let bob_id = publish(&s.api, "bob", "n", json!(1)).await;
    d.next_event(T).await.unwrap();
    let epoch = s.node.epoch().to_string();
    let future = format!("{}.{}.{}", epoch, id.split('.').nth(1).unwrap(), seq_of(&id) + 100);
    let other_epoch = id.replacen(&epoch, "00000000", 1);
    for (since, why) in [
        (future.as_str(), "future"),
        (other_epoch.as_str(), "epoch"),
        ("garbage", "malformed"),
        (bob_id.as_str(), "other user"),
    ] {
        let r =
            Device::connect(&s.base, DeviceOptions::new(s.token("alice", &[])).client_id("phone").since(since)).await;
        let e = r.err().unwrap_or_else(|| panic!("since {why} was accepted"));
        assert_eq!((e.http_status(), e.http_error_code()), (Some(400), Some("invalid_request")), "{why}");
    }
    for bad in [bob_id.as_str(), future.as_str(), other_epoch.as_str(), "1"] {
        let f = d.ack(bad).await.unwrap();
        assert_eq!(f.error_code(), Some("invalid_request"), "ack {bad}");
    }
    let r = s.api.offline_count(Some("alice"), Some("phone")).await.unwrap();
    assert_eq!(r.body["count"], 1, "nothing was acked");
    let r = s.api.offline_count(Some("alice"), Some("tablet")).await.unwrap();
    assert_eq!((r.status, r.error_code()), (404, Some("not_found")));
    let r = s.api.offline_ack(Some("alice"), "tablet", &id).await.unwrap();
    assert_eq!(r.status, 404);
    let r = s.api.offline_ack(Some("alice"), "phone", &bob_id).await.unwrap();
    assert_eq!(r.status, 400);
    let r = s.api.offline_ack_batch(Some("alice"), "phone", &[&id, "junk"]).await.unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(s.api.offline_count(Some("alice"), Some("phone")).await.unwrap().body["count"], 1);
    // An API key must say which user.
    let r = s.api.offline_count(None, Some("phone")).await.unwrap();
    assert_eq!(r.status, 400);
    s.stop().await;
}

#[tokio::test]
async fn idempotency_key_replays_the_first_answer_and_refuses_another_body() {
    let s = TestServer::start().await;
    let (mut d, _) = s.device("alice", &[]).await;
    let body = json!({"user_id": "alice", "type": "order.paid", "data": {"order": 9}});
    let first = s.api.post_with_idempotency_key("/api/v1/events", "order-9", body.clone()).await.unwrap();
    assert_eq!(first.status, 202, "{}", first.text);
    let again = s.api.post_with_idempotency_key("/api/v1/events", "order-9", body.clone()).await.unwrap();
    assert_eq!(again.status, 202);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(d.next_event(T).await.unwrap().data, json!({"order": 9}));
    assert!(d.try_next_event(Duration::from_millis(300)).await.unwrap().is_none(), "published once");
    let other = json!({"user_id": "alice", "type": "order.paid", "data": {"order": 10}});
    let r = s.api.post_with_idempotency_key("/api/v1/events", "order-9", other).await.unwrap();
    assert_eq!((r.status, r.error_code()), (409, Some("idempotency_conflict")));
    assert_eq!(s.api.offline_stats().await.unwrap().body["stored_messages"], 1);
    // The same key on another route is another key.
    let r = s
        .api
        .request(
            Method::POST,
            "/api/v1/events/broadcast",
            Some(json!({"type": "x", "data": 1})),
            &[("Idempotency-Key", "order-9")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202);
    s.stop().await;
}

#[tokio::test]
async fn transient_messages_are_live_only() {
    let s = TestServer::start().await;
    let (mut d, _) = s.device_with("alice", "phone").await;
    let r = s.api.publish(json!({"user_id": "alice", "type": "typing", "data": {}, "persist": false})).await.unwrap();
    assert_eq!(r.status, 202);
    let e = d.next_event(T).await.unwrap();
    assert_eq!(e.kind, "typing");
    let f = d.ack(&e.id).await.unwrap();
    assert_eq!(f.error_code(), Some("invalid_request"), "transient ids are not ackable");
    assert_eq!(s.api.offline_count(Some("alice"), Some("phone")).await.unwrap().body["count"], 0);
    drop(d);
    let (_d, w) = s.device_with("alice", "phone").await;
    assert_eq!(w.resumed, 0);
    s.stop().await;
}

#[tokio::test]
async fn room_history_replays_after_since_then_goes_live() {
    let s = TestServer::start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = s.api.publish_room("lobby", json!({"type": "m", "data": i})).await.unwrap();
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    let (mut d, _) = s.device("alice", &["lobby"]).await;
    let r = d.join("lobby", Some(&ids[1])).await.unwrap().expect_reply().unwrap();
    assert_eq!(r.rest["resumed"], 3);
    s.api.publish_room("lobby", json!({"type": "m", "data": 5})).await.unwrap();
    let got: Vec<_> = d.collect_events(4, T).await.unwrap().into_iter().map(|e| e.data).collect();
    assert_eq!(got, vec![json!(2), json!(3), json!(4), json!(5)]);
    let h = s.api.room_history("lobby", Some(&ids[2]), Some(10)).await.unwrap();
    let data: Vec<_> = h.body["events"].as_array().unwrap().iter().map(|e| e["data"].clone()).collect();
    assert_eq!(data, vec![json!(3), json!(4), json!(5)]);
    // A room id is not an id of the user stream.
    assert_eq!(d.ack(&ids[0]).await.unwrap().error_code(), Some("invalid_request"));
    s.stop().await;
}

#[tokio::test]
async fn retention_trims_and_a_resume_is_reported_partial() {
    let s = TestServer::with(|c| {
        c.store.max_stream_len = 5;
        c.store.sweep_interval = Duration::from_millis(100);
    })
    .await;
    drop(s.device_with("alice", "phone").await);
    for i in 0..20 {
        publish(&s.api, "alice", "n", json!(i)).await;
    }
    for _ in 0..100 {
        let st = s.api.offline_stats().await.unwrap();
        if st.body["stored_messages"] == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut d, w) = s.device_with("alice", "phone").await;
    assert_eq!(w.resumed, 5);
    assert_eq!(w.extra["partial"], true);
    assert_eq!(w.extra["trimmed"], 15);
    let got: Vec<_> = d.collect_events(5, T).await.unwrap().into_iter().map(|e| e.data).collect();
    assert_eq!(got, (15..20).map(|i| json!(i)).collect::<Vec<_>>());
    s.stop().await;
}

#[tokio::test]
async fn a_message_expired_by_its_ttl_leaves_no_stall() {
    let s = TestServer::with(|c| c.store.sweep_interval = Duration::from_millis(100)).await;
    drop(s.device_with("alice", "phone").await);
    publish(&s.api, "alice", "n", json!(1)).await;
    let r = s.api.publish(json!({"user_id": "alice", "type": "n", "data": 2, "ttl_s": 1})).await.unwrap();
    assert_eq!(r.status, 202);
    publish(&s.api, "alice", "n", json!(3)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut d, _) = s.device_with("alice", "phone").await;
    let got: Vec<_> = d.collect_events(2, T).await.unwrap().into_iter().map(|e| e.data).collect();
    assert_eq!(got, vec![json!(1), json!(3)]);
    publish(&s.api, "alice", "n", json!(4)).await;
    assert_eq!(d.next_event(T).await.unwrap().data, json!(4));
    s.stop().await;
}

#[tokio::test]
async fn streams_survive_a_restart_on_the_same_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(dir.path(), |c| c.store.fsync = syncgate::store::embedded::FsyncPolicy::Always).await;
    drop(s.device_with("alice", "phone").await);
    for i in 0..10 {
        publish(&s.api, "alice", "n", json!(i)).await;
    }
    let epoch = s.node.epoch().to_string();
    s.stop().await;
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    assert_eq!(s.node.epoch(), epoch);
    let (mut d, w) = s.device_with("alice", "phone").await;
    assert_eq!(w.resumed, 10);
    let got: Vec<_> = d.collect_events(10, T).await.unwrap().into_iter().map(|e| e.data).collect();
    assert_eq!(got, (0..10).map(|i| json!(i)).collect::<Vec<_>>());
    s.stop().await;
}

#[tokio::test]
async fn batch_publish_gives_each_user_an_id_in_their_own_stream() {
    let s = TestServer::start().await;
    let (mut a, _) = s.device("alice", &[]).await;
    let (mut b, _) = s.device("bob", &[]).await;
    publish(&s.api, "alice", "n", json!(0)).await;
    let r = s.api.publish_batch(json!({"user_ids": ["alice", "bob", "alice"], "type": "n", "data": 1})).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    let ids = r.body["ids"].as_object().unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(seq_of(ids["alice"].as_str().unwrap()), 2);
    assert_eq!(seq_of(ids["bob"].as_str().unwrap()), 1);
    assert_eq!(a.collect_events(2, T).await.unwrap()[1].id, ids["alice"].as_str().unwrap());
    assert_eq!(b.next_event(T).await.unwrap().id, ids["bob"].as_str().unwrap());
    s.stop().await;
}

#[tokio::test]
async fn a_new_device_connecting_with_since_gets_a_cursor_there() {
    let s = TestServer::start().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(publish(&s.api, "alice", "n", json!(i)).await);
    }
    // "tablet" was never seen: its first connect resumes from `since` (as the SDKs do after a
    // forgotten cursor), and its acks must be taken.
    let opts = DeviceOptions::new(s.token("alice", &[])).client_id("tablet").since(ids[0].as_str());
    let (mut d, w) = Device::connect(&s.base, opts).await.unwrap();
    assert_eq!(w.resumed, 2);
    assert_eq!(d.next_event(T).await.unwrap().id, ids[1]);
    let r = d.ack(&ids[1]).await.unwrap();
    assert_eq!(r.error_code(), None, "ack of a device that connected with since: {r:?}");
    drop(d);
    ids.push(publish(&s.api, "alice", "n", json!(3)).await);
    // Without `since`, it resumes after its cursor: nothing published after it is lost.
    let (mut d, w) = s.device_with("alice", "tablet").await;
    assert_eq!(w.resumed, 2);
    let got: Vec<_> = d.collect_events(2, T).await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(got, ids[2..].to_vec());
    s.stop().await;
}
