//! `syncgate-bench webhooks`: what webhooks cost, on this machine.
//!
//! 1. Deliveries per second: a node with one endpoint (a bare HTTP/1.1 receiver in this
//!    process that answers 204 at once) gets `--events` client messages that each become a
//!    `client.message` webhook while the receiver holds its answers; once every job is
//!    queued the receiver lets go, and the time until the last one arrived gives the rate
//!    at which the queue drains (claim, signed POST, complete) with `queue.concurrency` 32.
//! 2. Added publish latency: the same publishes (POST /api/v1/events to a connected user,
//!    timed to the answer and to the device) under the same background load (client
//!    publishes, and publishes to offline users), first on a node with no endpoint, then
//!    on one whose endpoint takes every event, so the background load also makes
//!    `client.message` and `message.undelivered` webhooks.
//!
//! Prints the figures as JSON on stdout. Loopback only; the nodes it starts are stopped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use syncgate_client::{Api, Device, DeviceOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::hist::Latency;
use crate::scenarios::log;
use crate::target::{Fsync, Proc, Programs, API_KEY, JWT_SECRET};
use crate::token::Minter;

pub struct Options {
    pub events: u64,
    pub samples: u64,
    pub rate: f64,
}

/// The receiving end: counts requests; answers only while `open` is true.
struct Receiver {
    url: String,
    got: Arc<AtomicU64>,
    open: watch::Sender<bool>,
}

impl Receiver {
    async fn start(open: bool) -> Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hooks", listener.local_addr()?);
        let got = Arc::new(AtomicU64::new(0));
        let (tx, rx) = watch::channel(open);
        let g = got.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, g.clone(), rx.clone()));
            }
        });
        Ok(Receiver { url, got, open: tx })
    }
}

/// One keep-alive HTTP/1.1 connection: read a request (headers, Content-Length body),
/// wait while closed, count it, answer 204.
async fn serve(sock: tokio::net::TcpStream, got: Arc<AtomicU64>, mut open: watch::Receiver<bool>) {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    loop {
        let mut len = 0usize;
        loop {
            line.clear();
            match r.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).await.is_err() {
            return;
        }
        if open.wait_for(|o| *o).await.is_err() {
            return;
        }
        got.fetch_add(1, Ordering::Relaxed);
        if w.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await.is_err() {
            return;
        }
    }
}

/// A node whose config file has `endpoint` (or none) and the background settings.
fn node(progs: &Programs, endpoint: Option<&str>) -> Result<(Proc, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let mut yaml = String::from("webhooks:\n  client_message_types: [\"bench.*\"]\n");
    if let Some(url) = endpoint {
        yaml.push_str(&format!(
            "  endpoints:\n    - name: app\n      url: {url}\n      secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n      timeout: 30s\n"
        ));
    }
    yaml.push_str("queue:\n  lease: 2m\n  max_jobs: 1000000\npush:\n  delay: 1s\n");
    let file = dir.path().join("bench.yaml");
    std::fs::write(&file, yaml)?;
    let env = [("SYNCGATE_CONFIG".to_string(), file.display().to_string())];
    Ok((Proc::syncgate(progs, Fsync::Never, "bench-hooks", &env)?, dir))
}

async fn device(base: &str, minter: &Minter, user: &str) -> Result<Device> {
    let (d, _) = Device::connect(base, DeviceOptions::new(minter.token(user)?)).await?;
    Ok(d)
}

async fn queued(api: &Api) -> Result<u64> {
    let s = api.request(reqwest::Method::GET, "/api/v1/queue/stats", None, &[]).await?.body;
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    Ok(n(&s["depth"]["normal"]) + n(&s["depth"]["urgent"]) + n(&s["depth"]["express"]) + n(&s["in_flight"]))
}

/// Phase 1: deliveries per second.
async fn throughput(progs: &Programs, minter: &Minter, events: u64) -> Result<Value> {
    let rx = Receiver::start(false).await?;
    let (p, _dir) = node(progs, Some(&rx.url))?;
    let api = Api::new(&p.base, API_KEY);
    let writers = 8u64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut d = device(&p.base, minter, &format!("writer-{w}")).await?;
        let n = events / writers + u64::from(w < events % writers);
        tasks.push(tokio::spawn(async move {
            for i in 0..n {
                d.publish("bench.m", json!({"i": i}), None).await?;
            }
            anyhow::Ok(d)
        }));
    }
    let mut devices = Vec::new();
    for t in tasks {
        devices.push(t.await??);
    }
    let end = Instant::now() + Duration::from_secs(120);
    while queued(&api).await? < events {
        if Instant::now() > end {
            bail!("the jobs were never all queued");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log(format!("{events} webhook jobs queued; releasing the receiver"));
    let t0 = Instant::now();
    let _ = rx.open.send(true);
    while rx.got.load(Ordering::Relaxed) < events {
        if Instant::now() > end + Duration::from_secs(120) {
            bail!("only {} of {events} webhooks arrived", rx.got.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(devices);
    p.stop(Duration::from_secs(10));
    Ok(json!({"webhooks": events, "seconds": secs, "per_second": (events as f64 / secs).round()}))
}

/// Phase 2, one node: timed publishes under the background load.
async fn latency(progs: &Programs, minter: &Minter, endpoint: Option<&str>, o: &Options) -> Result<Value> {
    let (p, _dir) = node(progs, endpoint)?;
    let api = Api::new(&p.base, API_KEY);
    let mut target = device(&p.base, minter, "timed").await?;
    let mut bg = device(&p.base, minter, "background").await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let period = Duration::from_secs_f64(1.0 / o.rate);
    let (s1, s2) = (stop.clone(), stop.clone());
    let bg_client = tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        while !s1.load(Ordering::Relaxed) {
            tick.tick().await;
            bg.publish("bench.bg", json!({"x": 1}), None).await?;
        }
        anyhow::Ok(())
    });
    let bg_api = api.clone();
    let bg_offline = tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        let mut i = 0u64;
        while !s2.load(Ordering::Relaxed) {
            tick.tick().await;
            bg_api.publish_user(&format!("offline-{}", i % 1000), "note", json!({"i": i})).await?;
            i += 1;
        }
        anyhow::Ok(())
    });
    let (mut answer, mut delivered) = (Latency::default(), Latency::default());
    let mut tick = tokio::time::interval(period);
    for i in 0..o.samples + o.samples / 10 {
        tick.tick().await;
        let t0 = Instant::now();
        let r = api.publish_user("timed", "lat", json!({"i": i})).await?;
        if r.status != 202 {
            bail!("publish answered {} {}", r.status, r.text);
        }
        let t_answer = t0.elapsed();
        target.next_event(Duration::from_secs(10)).await.context("the timed device")?;
        // The first tenth warms up (connections, caches).
        if i >= o.samples / 10 {
            answer.record_us(t_answer.as_micros() as u64);
            delivered.record_us(t0.elapsed().as_micros() as u64);
        }
    }
    stop.store(true, Ordering::Relaxed);
    bg_client.await??;
    bg_offline.await??;
    p.stop(Duration::from_secs(10));
    let (a, d) = (answer.summary(), delivered.summary());
    Ok(json!({
        "answer_ms": {"p50": a.p50_ms, "p99": a.p99_ms},
        "to_device_ms": {"p50": d.p50_ms, "p99": d.p99_ms},
        "samples": a.count,
    }))
}

pub async fn run(progs: &Programs, o: Options) -> Result<Value> {
    let minter = Minter::new(JWT_SECRET, 3600, Vec::new());
    let tp = throughput(progs, &minter, o.events).await?;
    log(format!("throughput: {tp}"));
    let off = latency(progs, &minter, None, &o).await?;
    log(format!("webhooks off: {off}"));
    let rx = Receiver::start(true).await?;
    let on = latency(progs, &minter, Some(&rx.url), &o).await?;
    log(format!("webhooks on: {on} ({} webhooks received)", rx.got.load(Ordering::Relaxed)));
    let diff = |k: &str, q: &str| {
        let d = on[k][q].as_f64().unwrap_or(0.0) - off[k][q].as_f64().unwrap_or(0.0);
        (d * 1000.0).round() / 1000.0
    };
    Ok(json!({
        "deliveries": tp,
        "publish_latency": {
            "rate_per_s": o.rate,
            "background_per_s": {"client_publishes": o.rate, "publishes_to_offline_users": o.rate},
            "webhooks_off": off,
            "webhooks_on": on,
            "added_ms": {
                "answer": {"p50": diff("answer_ms", "p50"), "p99": diff("answer_ms", "p99")},
                "to_device": {"p50": diff("to_device_ms", "p50"), "p99": diff("to_device_ms", "p99")},
            },
        },
    }))
}
