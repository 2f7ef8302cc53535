//! The `refresh` op: a connection renews its token in place before `exp`; a token for
//! another user is refused with forbidden and changes nothing; a connection whose token
//! expires unrenewed is closed with 4001.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use syncgate_client::{Device, DeviceOptions, Frame};

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
async fn refresh_renews_the_token_and_the_connection_outlives_the_old_exp() {
    let s = fast_sweep().await;
    let (mut d, _) = Device::connect(&s.base, DeviceOptions::new(mint(&s, "ana", 2))).await.expect("connects");
    let fresh = mint(&s, "ana", 3600);
    let want_exp = syncgate::auth::unix_now() + 3600;
    let reply =
        d.request(json!({"op": "refresh", "token": fresh}), T).await.expect("reply").expect_reply().expect("ok");
    let exp = reply.rest["exp"].as_u64().expect("exp in the reply");
    assert!(exp >= want_exp - 5 && exp <= want_exp + 5, "exp {exp} vs {want_exp}");
    // Past the first token's exp the connection still works.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(matches!(d.ping().await.expect("still open"), Frame::Pong { .. }));
    s.stop().await;
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
async fn an_unrenewed_token_closes_the_connection_with_4001() {
    let s = fast_sweep().await;
    let (mut d, _) = Device::connect(&s.base, DeviceOptions::new(mint(&s, "ana", 1))).await.expect("connects");
    let code = d.wait_closed(Duration::from_secs(15)).await.expect("closed");
    assert_eq!(code, Some(4001));
    s.stop().await;
}
