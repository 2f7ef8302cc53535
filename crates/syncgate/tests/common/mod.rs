//! Test harness: a real syncgate node on a random port, in this process, with real sockets.
#![allow(dead_code)]

pub mod proc;

use std::sync::Arc;
use std::time::Duration;

use syncgate::config::{Config, RateSetting};
use syncgate::node::Node;
use syncgate::server::Server;
use syncgate::store::embedded::FsyncPolicy;
use syncgate_client::{Api, Device, DeviceOptions, Welcome};
use tokio::sync::oneshot;

pub const API_KEY: &str = "test-api-key-0123456789";
pub const SECRET: &str = "test-jwt-secret-0123456789abcdef";
pub const T: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub base: String,
    pub api: Api,
    pub node: Arc<Node>,
    pub dir: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

/// The config tests start from: random port, fixed credentials, no connect-rate limits.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.server.data_dir = dir.to_path_buf();
    c.server.shutdown_grace = Duration::from_secs(3);
    c.auth.jwt_secret = SECRET.into();
    c.auth.api_keys = vec![API_KEY.into()];
    c.rate_limits.ws_connect_per_user = RateSetting::off();
    c.rate_limits.api_per_user = RateSetting::off();
    c.store.fsync = FsyncPolicy::Never;
    c.log.level = "warn".into();
    c
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(f: impl FnOnce(&mut Config)) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = Self::start_in(tmp.path(), f).await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts on an existing data dir (for restart tests).
    pub async fn start_in(dir: &std::path::Path, f: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = test_config(dir);
        f(&mut cfg);
        cfg.validate().expect("test config is valid");
        let server = Server::build(cfg).await.expect("server builds");
        let addr = server.local_addr();
        let node = server.node.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .expect("clean shutdown");
        });
        let base = format!("http://{addr}");
        TestServer {
            api: Api::new(&base, API_KEY),
            base,
            node,
            dir: dir.to_path_buf(),
            stop: Some(tx),
            task: Some(task),
            _tmp: None,
        }
    }

    pub fn token(&self, user: &str, rooms: &[&str]) -> String {
        let rooms: Vec<String> = rooms.iter().map(|s| s.to_string()).collect();
        self.node.auth.mint(user, &rooms, Duration::from_secs(3600), None).expect("mint")
    }

    pub async fn device(&self, user: &str, rooms: &[&str]) -> (Device, Welcome) {
        Device::connect(&self.base, DeviceOptions::new(self.token(user, rooms))).await.expect("device connects")
    }

    pub async fn device_with(&self, user: &str, client_id: &str) -> (Device, Welcome) {
        Device::connect(&self.base, DeviceOptions::new(self.token(user, &[])).client_id(client_id))
            .await
            .expect("device connects")
    }

    /// Graceful stop (as on SIGTERM); waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), t).await.expect("shutdown in time").expect("server task");
        }
    }
}

/// `n` nodes in cluster mode on the Redis at `url`, named node-0, node-1, ... (presence
/// expiry 3 s unless `f` says otherwise; `f` adjusts each node's config).
pub async fn cluster_nodes(url: &str, n: usize, f: impl Fn(&mut Config) + Clone) -> Vec<TestServer> {
    let mut out = Vec::new();
    for i in 0..n {
        let f = f.clone();
        let url = url.to_string();
        out.push(
            TestServer::with(move |c| {
                c.redis.url = url;
                c.redis.presence_ttl = Duration::from_secs(3);
                c.server.instance_id = format!("node-{i}");
                f(c);
            })
            .await,
        );
    }
    out
}

/// Stops every node (gracefully, one after the other).
pub async fn stop_all(nodes: Vec<TestServer>) {
    for n in nodes {
        n.stop().await;
    }
}

/// Publishes to a user over the API and returns the id.
pub async fn publish(api: &Api, user: &str, kind: &str, data: serde_json::Value) -> String {
    let r = api.publish_user(user, kind, data).await.expect("publish request");
    assert_eq!(r.status, 202, "publish answered {} {}", r.status, r.text);
    r.body["id"].as_str().expect("id").to_string()
}

/// Polls the async condition `f` every 20 ms until it is true, or fails after `within`.
pub async fn eventually_async<F, Fut>(within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = std::time::Instant::now() + within;
    while !f().await {
        assert!(std::time::Instant::now() < end, "condition not reached in {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `f` until it is true or 5 s pass.
pub async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..250 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached in 5 s");
}
