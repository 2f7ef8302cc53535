//! Web Push against a local stand-in that checks each request the way a browser push
//! service does (none can be reached from here): it decrypts the RFC 8291 payload with the
//! subscription's private key and checks the VAPID token; and the endpoint rule (public
//! hosts only, unless `push.providers.webpush.allow_hosts` lists them) at registration and
//! at send. The other providers are in push.rs.

mod common;
mod push_support;

use std::time::Duration;

use push_support::webpush::{browser, webpush_config, webpush_fixture};
use push_support::{event, job, push_with, TestCert};
use serde_json::json;
use syncgate::push::{Devices, Priority, Provider, Sent};

#[tokio::test]
async fn webpush_payload_decrypts_with_the_subscription_keys_and_vapid_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = TestCert::new(tmp.path());
    let fx = webpush_fixture(tmp.path(), &cert).await;
    let (got, plan) = (fx.got.clone(), fx.plan.clone());
    let (push, devices) = push_with(tmp.path(), &cert, |c| webpush_config(c, &fx));
    let reg = browser(&fx.sub);
    reg.validate(2048, push.allow_hosts()).expect("a browser subscription on an allowed host is valid");
    devices.put("alice", reg, 10).await.unwrap();

    // Each priority maps to its urgency; the payload is the event as the WebSocket carries it.
    for (p, urgency) in [(Priority::High, "high"), (Priority::Normal, "normal"), (Priority::Low, "low")] {
        let sent = push.deliver(&job("browser", Provider::Webpush, event(p, json!({"text": "hi"})))).await;
        assert_eq!(sent, Sent::Delivered);
        let (ttl, u, body) = got.all().pop().unwrap();
        assert_eq!(u, urgency);
        assert_eq!(ttl, 24 * 3600, "push.ttl when the message has none");
        assert_eq!(
            body,
            json!({"id": "e1.abcdef.7", "stream": "user", "type": "chat.message", "data": {"text": "hi"},
                   "ts": 1_700_000_000_000i64, "priority": p.as_str()})
        );
    }
    // A message's own ttl_s wins; a payload too large for one record goes without data.
    let mut big = event(Priority::Normal, json!({"blob": "x".repeat(5000)}));
    big.ttl_s = Some(60);
    assert_eq!(push.deliver(&job("browser", Provider::Webpush, big)).await, Sent::Delivered);
    let (ttl, _, body) = got.all().pop().unwrap();
    assert_eq!(ttl, 60);
    assert_eq!(body["truncated"], json!(true));
    assert!(body.get("data").is_none());

    // 429 with Retry-After and 5xx are retried; other 4xx fail for good; 410 removes it.
    plan.push(429, &[("retry-after", "7")], "slow down");
    let j = job("browser", Provider::Webpush, event(Priority::Normal, json!(1)));
    assert!(matches!(push.deliver(&j).await, Sent::Retry { after: Some(d), .. } if d == Duration::from_secs(7)));
    plan.push(503, &[], "");
    assert!(matches!(push.deliver(&j).await, Sent::Retry { after: None, .. }));
    plan.push(400, &[], "bad");
    assert!(matches!(push.deliver(&j).await, Sent::Failed(_)));
    assert!(devices.get("alice", "browser").await.unwrap().is_some());
    plan.push(410, &[], "");
    assert!(matches!(push.deliver(&j).await, Sent::Gone(_)));
    assert!(devices.get("alice", "browser").await.unwrap().is_none(), "a gone subscription is removed");
    let before = got.len();
    assert_eq!(push.deliver(&j).await, Sent::Skipped);
    assert_eq!(got.len(), before, "nothing is sent to a removed registration");
}

#[tokio::test]
async fn webpush_sends_to_a_private_host_only_when_allow_hosts_lists_it_and_keeps_the_registration() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = TestCert::new(tmp.path());
    let fx = webpush_fixture(tmp.path(), &cert).await;
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();

    // The stand-in is on 127.0.0.1: without allow_hosts, registering it is refused, and a
    // registration stored before the rule (or before allow_hosts changed) is not sent to.
    let (push, devices) = push_with(&dir_a, &cert, |c| {
        webpush_config(c, &fx);
        c.providers.webpush.as_mut().unwrap().allow_hosts.clear();
    });
    let reg = browser(&fx.sub);
    let e = reg.validate(2048, push.allow_hosts()).unwrap_err();
    assert!(e.message.contains("127.0.0.1 is not a public address"), "{}", e.message);
    devices.put("alice", reg.clone(), 10).await.unwrap();
    let sent = push.deliver(&job("browser", Provider::Webpush, event(Priority::High, json!(1)))).await;
    let Sent::Failed(why) = sent.clone() else { panic!("not a permanent failure: {sent:?}") };
    assert!(why.contains("127.0.0.1") && why.contains("push.providers.webpush.allow_hosts"), "{why}");
    assert!(
        matches!(syncgate::push::runner::outcome(sent), syncgate::queue::Outcome::Permanent { error } if error == why),
        "a refused endpoint is dead-lettered with that error, not retried"
    );
    assert_eq!(fx.got.len(), 0, "nothing reached the private host");
    assert_eq!(devices.get("alice", "browser").await.unwrap(), Some(reg.clone()), "the registration is kept");

    // Listed with another port: still refused. Listed with its port: sent.
    let port = fx._server.addr.port();
    let (push, devices) = push_with(&dir_b, &cert, |c| {
        webpush_config(c, &fx);
        c.providers.webpush.as_mut().unwrap().allow_hosts = vec![format!("127.0.0.1:{}", port.wrapping_add(1))];
    });
    assert!(reg.validate(2048, push.allow_hosts()).is_err());
    devices.put("alice", reg.clone(), 10).await.unwrap();
    let j = job("browser", Provider::Webpush, event(Priority::High, json!(2)));
    assert!(matches!(push.deliver(&j).await, Sent::Failed(_)));
    drop((push, devices));
    let (push, _devices) = push_with(&dir_b, &cert, |c| webpush_config(c, &fx));
    reg.validate(2048, push.allow_hosts()).expect("allowed");
    assert_eq!(push.deliver(&j).await, Sent::Delivered);
    assert_eq!(fx.got.len(), 1);
}
