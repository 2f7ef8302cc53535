//! Protocol points the client SDKs rely on: a refused `refresh` (another user, a bad or
//! missing token) changes nothing, so the old expiry still closes with 4001; a join reply's
//! `position` is a valid `since` (the SDKs' first room checkpoint).

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use syncgate_client::{Device, DeviceOptions};

/// Sweeps every 500 ms (the heartbeat interval) with no leeway, so expiry is seen quickly.
async fn fast_sweep() -> TestServer {
    TestServer::with(|c| {
        c.heartbeat.interval = Duration::from_millis(500);
        c.heartbeat.timeout = Duration::from_secs(60);
        c.auth.leeway = Duration::ZERO;
    })
    .await
}

fn mint(s: &TestServer, user: &str, ttl_s: u64) -> String {
    s.node.auth.mint(user, &[], Duration::from_secs(ttl_s), None).expect("mint")
}

#[tokio::test]
async fn refresh_for_another_user_or_with_a_bad_token_is_refused_and_changes_nothing() {
    let s = fast_sweep().await;
    let (mut d, _) = Device::connect(&s.base, DeviceOptions::new(mint(&s, "ana", 2))).await.expect("connects");
    let other = mint(&s, "bob", 3600);
    let e = d.request(json!({"op": "refresh", "token": other}), T).await.expect("answer");
    assert_eq!(e.error_code(), Some("forbidden"), "{e:?}");
    let e = d.request(json!({"op": "refresh", "token": "not-a-jwt"}), T).await.expect("answer");
    assert_eq!(e.error_code(), Some("unauthorized"), "{e:?}");
    let e = d.request(json!({"op": "refresh"}), T).await.expect("answer");
    assert_eq!(e.error_code(), Some("invalid_request"), "{e:?}");
    // The old expiry still holds: closed with 4001 once it passes.
    let code = d.wait_closed(Duration::from_secs(15)).await.expect("closed");
    assert_eq!(code, Some(4001));
    s.stop().await;
}

#[tokio::test]
async fn a_join_reply_carries_its_position_and_a_rejoin_from_it_gets_what_came_meanwhile() {
    let s = TestServer::start().await;
    let (mut d, _) = s.device("ana", &["club"]).await;
    let r = d.join("club", None).await.expect("reply").expect_reply().expect("ok");
    let position = r.rest["position"].as_str().expect("position in the join reply").to_string();
    d.close(1000).await.expect("closed");
    let a = s.api.publish_room("club", json!({"type": "m", "data": 1})).await.expect("publish");
    assert_eq!(a.status, 202);
    let (mut d, _) = s.device("ana", &["club"]).await;
    let r = d.join("club", Some(&position)).await.expect("reply").expect_reply().expect("ok");
    assert_eq!(r.rest["resumed"], 1);
    assert_eq!(d.next_event(T).await.expect("replayed").id, a.body["id"].as_str().expect("id"));
    s.stop().await;
}
