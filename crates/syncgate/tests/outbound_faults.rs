//! The outbound queue under faults, with real processes: kill -9 of a node with webhook
//! jobs queued and in flight (every job delivered after the restart, with its id
//! unchanged); a cluster node killed while it holds leased jobs (another node finishes
//! them); and three nodes on one Redis sending each event once, not once per node.

mod common;
mod hooks_support;
#[path = "redis_support/mod.rs"]
mod redis_support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::proc::{free_port, token, Proc};
use common::{TestServer, API_KEY};
use hooks_support::{endpoint, Hit, Receiver, SECRET};
use redis_support::RedisServer;
use reqwest::Method;
use serde_json::json;
use syncgate_client::{Api, Device, DeviceOptions};

const LONG: Duration = Duration::from_secs(30);
/// Devices that connect to the doomed node, one user each: one `connect` webhook apiece.
const USERS: usize = 12;
/// Attempts a node runs at once in these tests: fewer than `USERS`, so some jobs are in
/// flight and the rest queued when the node dies.
const CONCURRENCY: usize = 4;

/// A config file for the child process: one endpoint that wants `connect`, a short lease
/// (so jobs of a dead node come back soon) and fast retries.
fn config_file(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let yaml = format!(
        "webhooks:\n  endpoints:\n    - name: app\n      url: {url}\n      secret: {SECRET}\n      events: [connect]\n      timeout: 2s\n\
         queue:\n  lease: 3s\n  concurrency: {CONCURRENCY}\n  backoff_min: 50ms\n  backoff_max: 200ms\n  poll_interval: 50ms\n"
    );
    let path = dir.join("outbound.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn user_of(h: &Hit) -> String {
    h.body["data"]["user_id"].as_str().unwrap_or_default().to_string()
}

async fn queue_stats(api: &Api) -> serde_json::Value {
    api.request(Method::GET, "/api/v1/queue/stats", None, &[]).await.unwrap().body
}

/// Starts a node as a child process with `env`, connects `USERS` devices to it while the
/// receiver holds every request, and kill -9s it once `CONCURRENCY` attempts are in flight.
/// Returns the webhook id each user's `connect` had when it reached the receiver before
/// the kill.
async fn stall_and_kill(rx: &Receiver, data: &std::path::Path, env: &[(&str, &str)]) -> HashMap<String, String> {
    rx.set(|b| b.delay = Duration::from_secs(60));
    let mut p = Proc::spawn(data, free_port(), env);
    p.wait_ready().await;
    let mut devices = Vec::new();
    for i in 0..USERS {
        let (d, _) = Device::connect(&p.base, DeviceOptions::new(token(&format!("u{i}")))).await.unwrap();
        devices.push(d);
    }
    let end = std::time::Instant::now() + LONG;
    while rx.arrivals.lock().len() < CONCURRENCY {
        assert!(std::time::Instant::now() < end, "attempts never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = queue_stats(&Api::new(&p.base, API_KEY)).await;
    p.signal(libc::SIGKILL);
    p.wait_exit(Duration::from_secs(5));
    drop(devices);
    assert!(st["in_flight"].as_u64().unwrap() >= 1, "nothing in flight at the kill: {st}");
    let waiting = st["depth"]["express"].as_u64().unwrap() + st["delayed"].as_u64().unwrap();
    assert!(waiting >= 1, "nothing queued at the kill: {st}");
    let before: HashMap<String, String> = rx.arrivals.lock().iter().map(|h| (user_of(h), h.id.clone())).collect();
    assert!(before.len() < USERS, "every job was tried before the kill: {before:?}");
    rx.set(|b| b.delay = Duration::ZERO);
    before
}

/// Every user's `connect` was answered 2xx; every request for a user carried one id (the
/// one it had before the kill, for those that had been sent).
async fn assert_each_delivered_with_stable_ids(rx: &Receiver, before: &HashMap<String, String>) {
    let hits = rx
        .wait(LONG, "every connect delivered", |h| {
            h.iter().filter(|h| h.status == 200).map(user_of).collect::<HashSet<_>>().len() == USERS
        })
        .await;
    let mut ids: HashMap<String, HashSet<String>> = HashMap::new();
    for h in rx.arrivals.lock().iter().chain(hits.iter()) {
        assert_eq!(h.kind(), "connect");
        ids.entry(user_of(h)).or_default().insert(h.id.clone());
    }
    for (user, set) in &ids {
        assert_eq!(set.len(), 1, "{user}'s connect was sent under several ids: {set:?}");
    }
    for (user, id) in before {
        assert!(ids[user].contains(id), "{user}'s in-flight job came back under another id");
    }
}

async fn until_settled(api: &Api) -> serde_json::Value {
    let end = std::time::Instant::now() + LONG;
    loop {
        let st = queue_stats(api).await;
        let live = ["express", "urgent", "normal"].iter().map(|p| st["depth"][p].as_u64().unwrap()).sum::<u64>()
            + st["delayed"].as_u64().unwrap()
            + st["in_flight"].as_u64().unwrap();
        if live == 0 {
            return st;
        }
        assert!(std::time::Instant::now() < end, "queue never settled: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn kill_9_with_jobs_queued_and_in_flight_delivers_every_job_after_restart_with_stable_ids() {
    let rx = Receiver::start().await;
    let data = tempfile::tempdir().unwrap();
    let cfg = config_file(data.path(), &rx.url());
    let env = [("SYNCGATE_CONFIG", cfg.to_str().unwrap())];
    let before = stall_and_kill(&rx, data.path(), &env).await;
    // The same data dir: the embedded queue had every job on disk.
    let p = Proc::spawn(data.path(), free_port(), &env);
    p.wait_ready().await;
    assert_each_delivered_with_stable_ids(&rx, &before).await;
    let st = until_settled(&Api::new(&p.base, API_KEY)).await;
    assert_eq!(st["dead"], 0, "{st}");
}

#[tokio::test]
async fn a_cluster_node_killed_with_leased_jobs_has_them_finished_by_another_node() {
    let redis = RedisServer::start();
    let url = redis.url();
    let rx = Receiver::start().await;
    let data = tempfile::tempdir().unwrap();
    let cfg = config_file(data.path(), &rx.url());
    let env = [
        ("SYNCGATE_CONFIG", cfg.to_str().unwrap()),
        ("SYNCGATE_REDIS_URL", url.as_str()),
        ("SYNCGATE_INSTANCE_ID", "doomed"),
    ];
    let before = stall_and_kill(&rx, data.path(), &env).await;
    // Another node, with its own (empty) data dir: only Redis has the jobs.
    let hook = rx.url();
    let other = TestServer::with(move |c| {
        c.redis.url = url;
        c.server.instance_id = "survivor".into();
        c.queue.poll_interval = Duration::from_millis(50);
        c.webhooks.endpoints = vec![endpoint(&hook, &["connect"])];
    })
    .await;
    assert_each_delivered_with_stable_ids(&rx, &before).await;
    let st = until_settled(&other.api).await;
    assert_eq!(st["dead"], 0, "{st}");
    // The survivor ran every job: the doomed node completed none (the receiver held them all).
    let m = other.api.metrics().await.unwrap().text;
    let done = format!("syncgate_queue_jobs_succeeded_total{{kind=\"webhook\"}} {USERS}");
    assert!(m.contains(&done), "metrics lack {done}");
    other.stop().await;
}

#[tokio::test]
async fn three_nodes_send_each_event_once_not_once_per_node() {
    let redis = RedisServer::start();
    let rx = Receiver::start().await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        let (url, hook) = (redis.url(), rx.url());
        nodes.push(
            TestServer::with(move |c| {
                c.redis.url = url;
                c.server.instance_id = format!("node-{i}");
                c.queue.poll_interval = Duration::from_millis(50);
                c.webhooks.offline_grace = Duration::from_millis(300);
                c.webhooks.client_message_types = vec!["chat.*".into()];
                c.push.delay = Duration::from_millis(300);
                c.webhooks.endpoints = vec![endpoint(&hook, &[])];
            })
            .await,
        );
    }
    // One user on two nodes; a client message; a message to a user who is offline everywhere.
    let (mut a, _) = nodes[0].device_with("ann", "phone").await;
    let (mut b, _) = nodes[1].device_with("ann", "laptop").await;
    rx.wait(LONG, "online and two connects", |h| h.len() >= 3).await;
    a.publish("chat.msg", json!({"text": "hi"}), None).await.unwrap();
    common::publish(&nodes[2].api, "bob", "note", json!({"n": 1})).await;
    rx.wait(LONG, "client.message and undelivered", |h| h.len() >= 5).await;
    a.close(1000).await.unwrap();
    b.close(1000).await.unwrap();
    rx.wait(LONG, "two disconnects and offline", |h| h.len() >= 8).await;
    // Time for any duplicate from another node to show up (grace, checks, polls).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hits = rx.hits();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for h in &hits {
        *count.entry(h.kind()).or_default() += 1;
    }
    let want: HashMap<&str, usize> = [
        ("user.online", 1),
        ("connect", 2),
        ("client.message", 1),
        ("message.undelivered", 1),
        ("disconnect", 2),
        ("user.offline", 1),
    ]
    .into();
    assert_eq!(count, want, "{:#?}", hits.iter().map(|h| (h.kind(), &h.body["instance_id"])).collect::<Vec<_>>());
    let ids: HashSet<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids.len(), hits.len(), "a webhook id was sent twice");
    let conns: HashSet<&str> =
        hits.iter().filter(|h| h.kind() == "connect").filter_map(|h| h.body["instance_id"].as_str()).collect();
    assert_eq!(conns, HashSet::from(["node-0", "node-1"]), "each connect comes from its own node");
    for n in nodes {
        n.stop().await;
    }
}
