//! The real binary: CLI commands, SIGTERM drain, and a kill -9 crash under publish load.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::proc::{free_port, token, Proc, BIN};
use common::{API_KEY, T};
use serde_json::json;
use syncgate_client::{Api, Device, DeviceOptions};

#[test]
fn cli_config_check_default_and_version() {
    let out = Command::new(BIN).args(["config", "default"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(syncgate::config::Config::from_yaml(&text).is_ok());
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "limits:\n  send_queue: -3\n").unwrap();
    let out = Command::new(BIN).args(["config", "check", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("limits.send_queue"), "{err}");
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "limits:\n  send_queue: 64\n").unwrap();
    let out = Command::new(BIN).args(["config", "check", "--config"]).arg(&good).output().unwrap();
    assert!(out.status.success());
    let out = Command::new(BIN).args(["config", "check"]).env("SYNCGATE_HEARTBEAT__INTERVAL", "soon").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("heartbeat.interval"));
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("syncgate "));
    for sub in [&["serve", "--help"][..], &["token", "--help"], &["config", "check", "--help"]] {
        assert!(Command::new(BIN).args(sub).output().unwrap().status.success());
    }
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::spawn(dir.path(), free_port(), &[]);
    p.wait_ready().await;
    let (mut d, _) = Device::connect(&p.base, DeviceOptions::new(token("alice")).client_id("phone")).await.unwrap();
    let api = Api::new(&p.base, API_KEY);
    let r = api.publish_user("alice", "n", json!(1)).await.unwrap();
    assert_eq!(r.status, 202);
    assert_eq!(d.next_event(T).await.unwrap().data, json!(1));
    p.signal(libc::SIGTERM);
    assert_eq!(d.wait_closed(T).await.unwrap(), Some(1001));
    let st = p.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0));
    // What was published is still there after the restart.
    let p = Proc::spawn(dir.path(), free_port(), &[]);
    p.wait_ready().await;
    let api = Api::new(&p.base, API_KEY);
    let r = api.offline_count(Some("alice"), Some("phone")).await.unwrap();
    assert_eq!(r.body["count"], 1);
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_publish() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut p = Proc::spawn(dir.path(), port, &[("SYNCGATE_STORE__FSYNC", "always")]);
    p.wait_ready().await;
    let api = Api::new(&p.base, API_KEY);
    // Eight publishers; record every id that got a 2xx.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked: Vec<(String, String)> = Vec::new();
            for i in 0.. {
                let user = format!("u{}", (w + i) % 5);
                match api.publish_user(&user, "n", json!({"w": w, "i": i})).await {
                    Ok(r) if r.status == 202 => acked.push((user, r.body["id"].as_str().unwrap().to_string())),
                    _ => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    p.signal(libc::SIGKILL);
    p.wait_exit(Duration::from_secs(5));
    let mut acked: HashMap<String, Vec<String>> = HashMap::new();
    for t in tasks {
        for (u, id) in t.await.unwrap() {
            acked.entry(u).or_default().push(id);
        }
    }
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(total > 50, "too few publishes before the kill: {total}");
    let p = Proc::spawn(dir.path(), port, &[]);
    p.wait_ready().await;
    let api = Api::new(&p.base, API_KEY);
    for (user, ids) in &acked {
        let mut stored = std::collections::HashSet::new();
        let mut since: Option<String> = None;
        loop {
            let r = api.offline_messages(Some(user), None, since.as_deref(), Some(1000)).await.unwrap();
            let events = r.body["events"].as_array().unwrap();
            if events.is_empty() {
                break;
            }
            stored.extend(events.iter().map(|e| e["id"].as_str().unwrap().to_string()));
            since = r.body["next"].as_str().map(str::to_string);
        }
        for id in ids {
            assert!(stored.contains(id), "acknowledged publish {id} for {user} lost after kill -9");
        }
    }
}
