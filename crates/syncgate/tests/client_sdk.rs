//! `syncgate_client::Client` against real servers: every persisted event handed over once
//! and in order across a kill -9 and restart of the binary, the zero-event case, a delivery
//! dropped undone comes again, rooms rejoined with resume, token renewal in place and on 4001.

mod common;

use common::proc::{free_port, Proc};
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use syncgate_client::{Client, CursorStore, Delivery, FileCursorStore, MemoryCursorStore, State};

const WAIT: Duration = Duration::from_secs(20);

/// Mints tokens with the test secret, for servers in this process or spawned.
fn auth() -> syncgate::auth::Auth {
    syncgate::auth::Auth::new(&syncgate::config::Config::default().auth, SECRET, &[]).expect("auth")
}

async fn next(c: &mut Client) -> Delivery {
    tokio::time::timeout(WAIT, c.next()).await.expect("an event in time").expect("client open")
}

/// Takes `n` deliveries, marking each done; returns their ids.
async fn take(c: &mut Client, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let d = next(c).await;
        ids.push(d.id.clone());
        d.done().expect("checkpoint saved");
    }
    ids
}

async fn nothing_more(c: &mut Client) {
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(500), c.next()).await {
        panic!("unexpected extra event {}", d.id);
    }
}

async fn connected(c: &Client) {
    let mut s = c.state();
    tokio::time::timeout(WAIT, s.wait_for(|s| *s == State::Connected)).await.expect("connected in time").expect("open");
}

#[tokio::test]
async fn every_event_once_and_in_order_across_a_kill_9_and_restart() {
    kill_9_and_restart(&[("SYNCGATE_STORE__FSYNC", "always")]).await;
}

#[tokio::test]
async fn every_event_once_and_in_order_across_a_kill_9_and_restart_on_the_lsm_engine() {
    kill_9_and_restart(&[("SYNCGATE_STORE__FSYNC", "always"), ("SYNCGATE_STORE__ENGINE", "lsm")]).await;
}

/// The LSM engine hands every commit's journal to the OS before answering, so with fsync
/// never a killed process (not a machine crash) still loses nothing answered.
#[tokio::test]
async fn lsm_with_fsync_never_loses_nothing_answered_to_a_kill_9() {
    kill_9_and_restart(&[("SYNCGATE_STORE__FSYNC", "never"), ("SYNCGATE_STORE__ENGINE", "lsm")]).await;
}

async fn kill_9_and_restart(env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Proc::spawn(dir.path(), port, env);
    server.wait_ready().await;
    let api = syncgate_client::Api::new(&server.base, API_KEY);
    let cursors = tempfile::tempdir().unwrap();
    let store: Arc<dyn CursorStore> = Arc::new(FileCursorStore::open(cursors.path().join("c.json")).unwrap());
    let token = auth().mint("ana", &[], Duration::from_secs(3600), None).unwrap();
    let mut c = Client::builder(&server.base)
        .token(token)
        .client_id("laptop")
        .storage(store)
        .reconnect_delays(Duration::from_millis(50), Duration::from_millis(400))
        .connect()
        .unwrap();
    connected(&c).await;
    let mut published = Vec::new();
    for i in 0..10 {
        published.push(publish(&api, "ana", "fav.added", json!({ "i": i })).await);
    }
    let mut got = take(&mut c, 6).await;
    server.signal(libc::SIGKILL);
    server.wait_exit(Duration::from_secs(10));
    server = Proc::spawn(dir.path(), port, env);
    server.wait_ready().await;
    for i in 10..20 {
        published.push(publish(&api, "ana", "fav.added", json!({ "i": i })).await);
    }
    got.extend(take(&mut c, 14).await);
    assert_eq!(got, published);
    nothing_more(&mut c).await;
    c.close().await;
    drop(server);
}

#[tokio::test]
async fn zero_events_then_away_still_gets_what_was_published_meanwhile() {
    let s = TestServer::start().await;
    let store: Arc<dyn CursorStore> = Arc::new(MemoryCursorStore::new());
    // Ephemeral (no client id): only the welcome's position as first checkpoint can help.
    let c = Client::builder(&s.base).token(s.token("bo", &[])).storage(store.clone()).connect().unwrap();
    connected(&c).await;
    c.close().await;
    let a = publish(&s.api, "bo", "t", json!(1)).await;
    let b = publish(&s.api, "bo", "t", json!(2)).await;
    let mut c = Client::builder(&s.base).token(s.token("bo", &[])).storage(store).connect().unwrap();
    assert_eq!(take(&mut c, 2).await, vec![a, b]);
    c.close().await;
    s.stop().await;
}

#[tokio::test]
async fn a_delivery_dropped_undone_is_not_acked_and_comes_again_in_order() {
    let s = TestServer::start().await;
    let mut c = Client::builder(&s.base)
        .token(s.token("cy", &[]))
        .client_id("phone")
        .reconnect_delays(Duration::from_millis(50), Duration::from_millis(200))
        .connect()
        .unwrap();
    connected(&c).await;
    let ids: Vec<String> = [
        publish(&s.api, "cy", "t", json!(1)).await,
        publish(&s.api, "cy", "t", json!(2)).await,
        publish(&s.api, "cy", "t", json!(3)).await,
    ]
    .into();
    assert_eq!(take(&mut c, 1).await, ids[..1]);
    let failed = next(&mut c).await;
    assert_eq!(failed.id, ids[1]);
    drop(failed); // the application failed on it
    assert_eq!(take(&mut c, 2).await, ids[1..], "the failed one again, then the rest");
    nothing_more(&mut c).await;
    c.close().await;
    let r = s.api.offline_count(Some("cy"), Some("phone")).await.unwrap();
    assert_eq!(r.body["count"], 0, "acked up to the last: {}", r.text);
    s.stop().await;
}

#[tokio::test]
async fn rooms_are_rejoined_after_a_reconnect_and_resume_after_the_last_handled_event() {
    let s = TestServer::start().await;
    let mut c = Client::builder(&s.base)
        .token(s.token("di", &["club"]))
        .client_id("tab")
        .reconnect_delays(Duration::from_millis(1500), Duration::from_millis(1500))
        .connect()
        .unwrap();
    c.join("club", None).await.expect("joined");
    let room = |k: i32| {
        let api = s.api.clone();
        async move {
            api.publish_room("club", json!({"type": "m", "data": k})).await.unwrap().body["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    // Kicked before any room event (4009); reconnects after 1.5 s, meanwhile two are published.
    s.api.disconnect("di").await.unwrap();
    let mut st = c.state();
    st.wait_for(|s| *s != State::Connected).await.unwrap();
    let a = room(1).await;
    let b = room(2).await;
    assert_eq!(take(&mut c, 2).await, vec![a, b]);
    s.api.disconnect("di").await.unwrap();
    st.wait_for(|s| *s != State::Connected).await.unwrap();
    let d = room(3).await;
    assert_eq!(take(&mut c, 1).await, vec![d]);
    nothing_more(&mut c).await;
    let e = c.join("secret", None).await.expect_err("not allowed");
    assert_eq!(e.refused_code(), Some("forbidden"));
    c.close().await;
    s.stop().await;
}

#[tokio::test]
async fn a_token_source_is_renewed_in_place_before_exp_and_again_after_4001() {
    let s = TestServer::with(|c| {
        c.heartbeat.interval = Duration::from_millis(500);
        c.auth.leeway = Duration::ZERO;
    })
    .await;
    let calls = Arc::new(AtomicU32::new(0));
    let (auth, n) = (Arc::new(auth()), calls.clone());
    let c = Client::builder(&s.base)
        .token_source(move || {
            let k = n.fetch_add(1, Ordering::SeqCst);
            let t = auth.mint("eve", &[], Duration::from_secs(3), None).map_err(|e| e.to_string());
            async move { t.map(|t| if k == 2 { "bad-token".to_string() } else { t }) }
        })
        .reconnect_delays(Duration::from_millis(50), Duration::from_millis(200))
        .connect()
        .unwrap();
    connected(&c).await;
    let mut st = c.state();
    // Call 0 connects, call 1 renews in place before exp; call 2 gets a token the server
    // refuses, so the connection is closed with 4001 and call 3 reconnects.
    tokio::time::timeout(WAIT, async {
        while calls.load(Ordering::SeqCst) < 4 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("token source called again");
    st.wait_for(|s| *s == State::Connected).await.unwrap();
    assert!(c.publish("t", json!(1), None).await.is_ok(), "the connection works");
    c.close().await;
    s.stop().await;
}

/// A transient event (`persist: false`, id `EPOCH.tN`) is handed over but is no checkpoint:
/// after a reconnect the client resumes after the last persisted event, of the user stream
/// and of a room, instead of sending the transient id as `since` (refused with 400, or by
/// the join) and being handed earlier events again.
#[tokio::test]
async fn a_transient_event_is_handed_over_but_the_client_resumes_after_the_last_persisted_one() {
    let s = TestServer::start().await;
    let store: Arc<dyn CursorStore> = Arc::new(MemoryCursorStore::new());
    let mut c = Client::builder(&s.base)
        .token(s.token("fi", &["club"]))
        .client_id("phone")
        .storage(store.clone())
        .reconnect_delays(Duration::from_millis(1500), Duration::from_millis(1500))
        .connect()
        .unwrap();
    c.join("club", None).await.expect("joined");
    let to_room = |persist: bool, k: i32| {
        let api = s.api.clone();
        async move {
            let r = api.publish_room("club", json!({"type": "m", "data": k, "persist": persist})).await.unwrap();
            assert_eq!(r.status, 202, "{}", r.text);
            r.body["id"].as_str().unwrap().to_string()
        }
    };
    let p1 = publish(&s.api, "fi", "fav.added", json!(1)).await;
    assert_eq!(take(&mut c, 1).await, vec![p1.clone()]);
    let r1 = to_room(true, 1).await;
    assert_eq!(take(&mut c, 1).await, vec![r1.clone()]);
    let r = s.api.publish(json!({"user_id": "fi", "type": "live", "data": 2, "persist": false})).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    let t1 = r.body["id"].as_str().unwrap().to_string();
    let rt1 = to_room(false, 2).await;
    for id in [&t1, &rt1] {
        let parts: Vec<&str> = id.split('.').collect();
        assert!(parts.len() == 2 && parts[1].starts_with('t'), "a transient id: {id}");
    }
    assert_eq!(take(&mut c, 2).await, vec![t1, rt1], "transient events are handed over");
    assert_eq!(store.load("syncgate:phone:user").unwrap(), Some(p1.clone()), "user checkpoint");
    assert_eq!(store.load("syncgate:phone:room:club").unwrap(), Some(r1), "room checkpoint");
    // The ack of the persisted event got through (a transient one would be refused).
    eventually_async(Duration::from_secs(5), || async {
        let r = s.api.offline_count(Some("fi"), Some("phone")).await.unwrap();
        r.body["count"] == 0
    })
    .await;

    // Away (kicked with 4009; back after 1.5 s) while one event of each stream is published.
    s.api.disconnect("fi").await.unwrap();
    let mut st = c.state();
    st.wait_for(|s| *s != State::Connected).await.unwrap();
    let p2 = publish(&s.api, "fi", "fav.added", json!(3)).await;
    let r2 = to_room(true, 3).await;
    let mut got = take(&mut c, 2).await;
    got.sort();
    let mut missed = vec![p2, r2];
    missed.sort();
    assert_eq!(got, missed, "each missed event once, nothing handed over again");
    nothing_more(&mut c).await;
    c.close().await;
    let r = s.api.offline_count(Some("fi"), Some("phone")).await.unwrap();
    assert_eq!(r.body["count"], 0, "acked up to the last: {}", r.text);
    s.stop().await;
}
