//! Reliability in cluster mode, against real Redis processes: presence written through,
//! readiness that waits for Pub/Sub, publish errors that surface, Idempotency-Key across
//! nodes, Redis restarts.

mod common;
#[path = "redis_support/mod.rs"]
mod redis_support;

use std::time::{Duration, Instant};

use common::*;
use redis_support::RedisServer;
use serde_json::json;
use syncgate_client::Api;

async fn nodes(url: &str, n: usize, f: impl Fn(&mut syncgate::config::Config) + Clone) -> Vec<TestServer> {
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

async fn stop_all(nodes: Vec<TestServer>) {
    for n in nodes {
        n.stop().await;
    }
}

/// Polls `f` every 5 ms until it holds or `limit` passes; returns how long it took.
async fn within<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn online(api: &Api, user: &str) -> u64 {
    api.user_online(user).await.map(|r| r.body["connections"].as_u64().unwrap_or(0)).unwrap_or(0)
}

#[tokio::test]
async fn presence_is_written_through_within_100ms() {
    let redis = RedisServer::start();
    let n = nodes(&redis.url(), 2, |_| {}).await;
    let other = n[1].api.clone();
    // Let the first full refresh pass, so what is measured is the write-through.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for round in 0..3 {
        let (mut dev, _welcome) = n[0].device("alice", &["r"]).await;
        let seen = within(Duration::from_millis(100), || online(&other, "alice").then_eq(1)).await;
        println!("round {round}: connect visible on the other node after {seen:?}");
        assert!(seen.is_some(), "connection not visible on the other node within 100 ms");
        let users = other.online_users(None, None).await.unwrap().body;
        assert_eq!(users["users"], json!(["alice"]), "{users}");
        dev.join("r", None).await.unwrap().expect_reply().unwrap();
        let seen = within(Duration::from_millis(100), || {
            let other = other.clone();
            async move { other.presence("r").await.unwrap().body["users"] == json!(["alice"]) }
        })
        .await;
        println!("round {round}: join visible after {seen:?}");
        assert!(seen.is_some(), "join not visible on the other node within 100 ms");
        dev.leave("r").await.unwrap().expect_reply().unwrap();
        let seen = within(Duration::from_millis(100), || {
            let other = other.clone();
            async move { other.presence("r").await.unwrap().body["connections"] == 0 }
        })
        .await;
        assert!(seen.is_some(), "leave not visible on the other node within 100 ms");
        dev.close(1000).await.unwrap();
        let seen = within(Duration::from_millis(100), || online(&other, "alice").then_eq(0)).await;
        println!("round {round}: close visible after {seen:?}");
        assert!(seen.is_some(), "close not visible on the other node within 100 ms");
        let users = other.online_users(None, None).await.unwrap().body;
        assert_eq!(users["users"], json!([]), "{users}");
    }
    stop_all(n).await;
}

/// `fut.then_eq(v)`: a future of whether the value is `v`.
trait ThenEq<T> {
    fn then_eq(self, v: T) -> impl std::future::Future<Output = bool>;
}

impl<T: PartialEq, F: std::future::Future<Output = T>> ThenEq<T> for F {
    async fn then_eq(self, v: T) -> bool {
        self.await == v
    }
}
