//! The named scenarios: what each one sets up, drives and measures.
//!
//! Every run starts its own server(s) with a fresh data dir, measures the server processes
//! through /proc (CPU from utime+stime, memory from VmRSS), counts what the devices actually
//! received, and stops everything before returning. A run is `ok` when every message that
//! should have arrived did, and no connection failed or was lost: speed never makes a run
//! fail, so the same code serves the smoke test (tiny sizes) and the suite.
//!
//! Publish-to-deliver latency: each message's `data` carries the publish wall-clock time in
//! ns (`t`) and a sequence number (`s`); devices compute `now - t` on arrival (same machine,
//! same clock).
//!
//! This file owns the shared plumbing (scenario and result types, `run`, the publisher,
//! formatting); the scenarios themselves live in `live` (idle, fanout, direct),
//! `publish` (publish-api, resume, batch) and `soak`.

mod live;
mod publish;
mod soak;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde::Serialize;

use crate::fleet::Fleet;
use crate::hist::Summary;
use crate::http::HttpConn;
use crate::proto::{ConnectSpec, TargetKind};
use crate::sys::{unix_ns, CpuMeter};
use crate::target::{Fsync, Programs, ServerSet, Topology, API_KEY, JWT_SECRET};
use live::{direct, fanout, idle};
use publish::{batch_api, publish_api, resume};
pub use soak::{Sample, SoakArgs, SoakParams};

/// Room of the fanout runs.
pub const ROOM: &str = "bench";
/// Message type of every publish.
const KIND: &str = "bench";

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "scenario", rename_all = "kebab-case")]
pub enum Scenario {
    /// `conns` connections held for `hold_s` seconds after `settle_ms`.
    Idle { conns: usize, settle_ms: u64, hold_s: f64 },
    /// `conns` connections in one room; publishes at `rate` msg/s, or as fast as delivery
    /// allows (`rate: None`, at most `window` messages not yet received by everyone).
    /// `deflate`: the devices negotiate permessage-deflate.
    Fanout { conns: usize, rate: Option<f64>, duration_s: f64, window: u64, msg_bytes: usize, deflate: bool },
    /// `users` devices (one per user, with a client id); publishes to one user at a time,
    /// round-robin, at `rate` msg/s in total from `publishers` connections.
    Direct { users: usize, rate: f64, duration_s: f64, publishers: usize, msg_bytes: usize },
    /// `clients` keep-alive HTTP connections publishing back to back (to `users` users,
    /// nobody connected) for `duration_s` after `warmup_s`.
    /// `persist: false` publishes live-only messages (no store write): the HTTP path alone.
    PublishApi { clients: usize, users: usize, duration_s: f64, warmup_s: f64, msg_bytes: usize, persist: bool },
    /// `devices` devices miss `missed` messages each, then reconnect all at once.
    Resume { devices: usize, missed: u64, msg_bytes: usize },
    /// `rounds` batch publishes to `users` users (nobody connected), one after the other,
    /// then as many to `users / 10` (to show whether the cost is linear in users).
    Batch { users: usize, rounds: usize, msg_bytes: usize },
    /// Connections held for long with churn and mixed publishes (see `soak`).
    Soak(SoakParams),
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Idle { .. } => "idle",
            Scenario::Fanout { .. } => "fanout",
            Scenario::Direct { .. } => "direct",
            Scenario::PublishApi { .. } => "publish-api",
            Scenario::Resume { .. } => "resume",
            Scenario::Batch { .. } => "batch",
            Scenario::Soak(_) => "soak",
        }
    }

    /// Whether the Node `ws` baseline can run it (it has no users, no store).
    pub fn node_can_run(&self) -> bool {
        matches!(self, Scenario::Idle { .. } | Scenario::Fanout { .. } | Scenario::PublishApi { .. })
    }
}

/// One run: a scenario against one target.
#[derive(Debug, Clone, Serialize)]
pub struct RunSpec {
    /// Stable name of the run in the suite (`idle`, `fanout-10`, ...); the table puts runs
    /// with the same id side by side.
    pub id: String,
    /// Human title (sizes, rates, fsync policy).
    pub title: String,
    pub target: TargetKind,
    pub topology: Topology,
    pub fsync: Fsync,
    pub scenario: Scenario,
    /// Server on CPU 0, the generator's workers on CPU 1 (see `sys::Pinning`).
    pub pinned: bool,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub id: String,
    pub title: String,
    pub target: TargetKind,
    pub topology: Topology,
    pub fsync: Fsync,
    /// The server had CPU 0 to itself and the generator's workers CPU 1.
    pub pinned: bool,
    pub params: Scenario,
    /// Every expected message arrived; no connection failed or was lost.
    pub ok: bool,
    pub error: Option<String>,
    /// Raw figures, unit in the name.
    pub figures: BTreeMap<String, f64>,
    pub latency: Option<Summary>,
    /// (label, value) rows for the table, in order.
    pub display: Vec<(String, String)>,
    pub notes: Vec<String>,
    pub elapsed_s: f64,
    /// Readings over time (soak).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<Sample>,
}

impl RunResult {
    fn new(spec: &RunSpec) -> Self {
        RunResult {
            id: spec.id.clone(),
            title: spec.title.clone(),
            target: spec.target,
            topology: spec.topology,
            fsync: spec.fsync,
            pinned: false,
            params: spec.scenario.clone(),
            ok: true,
            error: None,
            figures: BTreeMap::new(),
            latency: None,
            display: Vec::new(),
            notes: Vec::new(),
            elapsed_s: 0.0,
            samples: Vec::new(),
        }
    }

    fn fig(&mut self, name: &str, v: f64) {
        self.figures.insert(name.to_string(), v);
    }

    fn show(&mut self, label: &str, value: String) {
        self.display.push((label.to_string(), value));
    }

    fn fail(&mut self, why: String) {
        self.ok = false;
        self.notes.push(why);
    }

    pub fn figure(&self, name: &str) -> Option<f64> {
        self.figures.get(name).copied()
    }
}

/// What every run needs besides its spec.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub progs: Programs,
    /// Source addresses for device sockets (127.0.0.2 and up).
    pub local_ips: Vec<String>,
    /// Connection attempts in flight per worker.
    pub connect_concurrency: usize,
    /// Hard limit on a worker's life.
    pub worker_deadline: Duration,
    /// `store.engine` of the syncgate servers started, if set (`--store-engine`).
    pub store_engine: Option<&'static str>,
}

pub fn log(msg: impl AsRef<str>) {
    let t = unix_ns() / 1_000_000;
    eprintln!("[bench {}.{:03}] {}", (t / 1000) % 100_000, t % 1000, msg.as_ref());
}

/// Runs one spec; never panics on a failing server: the failure is in the result.
pub async fn run(ctx: &Ctx, spec: &RunSpec) -> RunResult {
    let started = Instant::now();
    let mut res = RunResult::new(spec);
    log(format!("run {} on {}: {}", spec.id, spec.target.label(), spec.title));
    let mut extra = extra_env(spec);
    if let (Some(engine), TargetKind::Syncgate) = (ctx.store_engine, spec.target) {
        extra.push(("SYNCGATE_STORE__ENGINE".to_string(), engine.to_string()));
        res.notes.push(format!("store.engine = {engine}"));
    }
    let pin = crate::sys::Pinning::enter(spec.pinned);
    res.pinned = pin.on();
    let servers = {
        let (progs, target, topo, fsync) = (ctx.progs.clone(), spec.target, spec.topology, spec.fsync);
        tokio::task::spawn_blocking(move || ServerSet::start(&progs, target, topo, fsync, &extra)).await
    };
    let mut servers = match servers.map_err(|e| anyhow!("{e}")).and_then(|r| r) {
        Ok(s) => s,
        Err(e) => {
            res.ok = false;
            res.error = Some(format!("starting the server: {e:#}"));
            res.elapsed_s = started.elapsed().as_secs_f64();
            return res;
        }
    };
    let r = match &spec.scenario {
        Scenario::Idle { conns, settle_ms, hold_s } => {
            idle(ctx, spec, &servers, &mut res, *conns, Duration::from_millis(*settle_ms), secs(*hold_s)).await
        }
        Scenario::Fanout { conns, rate, duration_s, window, msg_bytes, deflate } => {
            let shape = (*window, *msg_bytes, *deflate);
            fanout(ctx, spec, &servers, &mut res, *conns, *rate, secs(*duration_s), shape).await
        }
        Scenario::Direct { users, rate, duration_s, publishers, msg_bytes } => {
            direct(ctx, spec, &servers, &mut res, *users, *rate, secs(*duration_s), *publishers, *msg_bytes).await
        }
        Scenario::PublishApi { clients, users, duration_s, warmup_s, msg_bytes, persist } => {
            let (d, w) = (secs(*duration_s), secs(*warmup_s));
            publish_api(spec, &servers, &mut res, *clients, *users, d, w, *msg_bytes, *persist).await
        }
        Scenario::Resume { devices, missed, msg_bytes } => {
            resume(ctx, spec, &servers, &mut res, *devices, *missed, *msg_bytes).await
        }
        Scenario::Batch { users, rounds, msg_bytes } => {
            batch_api(&servers, &mut res, *users, *rounds, *msg_bytes).await
        }
        Scenario::Soak(p) => soak::soak(ctx, &servers, &mut res, p).await,
    };
    if let Err(e) = r {
        res.ok = false;
        let mut msg = format!("{e:#}");
        if servers.check_alive().is_err() {
            msg.push_str(&format!("\nserver output:\n{}", servers.log_tail()));
        }
        res.error = Some(msg);
    }
    // Redis CPU (cluster runs) after the server's own figures.
    res.display.sort_by_key(|(label, _)| label.starts_with("Redis"));
    tokio::task::spawn_blocking(move || servers.stop()).await.ok();
    res.elapsed_s = started.elapsed().as_secs_f64();
    log(format!(
        "run {} on {} done in {:.1} s: {}",
        spec.id,
        spec.target.label(),
        res.elapsed_s,
        if res.ok { "ok".to_string() } else { format!("FAILED {:?} {:?}", res.error, res.notes) }
    ));
    res
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Server settings a scenario needs beyond the common ones (see `target::Proc::syncgate`).
fn extra_env(spec: &RunSpec) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if let Scenario::Direct { users, .. } | Scenario::Resume { devices: users, .. } | Scenario::Batch { users, .. } =
        spec.scenario
    {
        // Room for one batch publish to every device of the resume run.
        env.push(("SYNCGATE_LIMITS__MAX_BATCH_USERS".to_string(), users.max(10_000).to_string()));
    }
    env
}

fn device_spec(ctx: &Ctx, servers: &ServerSet, n: usize) -> ConnectSpec {
    ConnectSpec {
        kind: servers.kind,
        urls: servers.urls(),
        jwt_secret: JWT_SECRET.to_string(),
        first: 0,
        count: n,
        user_prefix: "u-".to_string(),
        client_ids: false,
        room: None,
        local_ips: ctx.local_ips.clone(),
        concurrency: ctx.connect_concurrency,
        timeout_ms: 30_000,
        expect_events: 0,
        deflate: false,
    }
}

/// Connects `spec.count` devices; the run is marked failed if any could not connect.
async fn connect(fleet: &mut Fleet, spec: &ConnectSpec, res: &mut RunResult) -> Result<u64> {
    let c = fleet.connect(spec, Duration::from_secs(600)).await?;
    let rate = c.ok as f64 / c.elapsed.as_secs_f64().max(1e-3);
    log(format!("  {} connected ({} failed) in {:.1} s, {:.0}/s", c.ok, c.failed, c.elapsed.as_secs_f64(), rate));
    if c.failed > 0 {
        res.fail(format!("{} of {} connections failed: {:?}", c.failed, spec.count, c.errors));
    }
    if c.ok == 0 {
        bail!("no connection could be opened: {:?}", c.errors);
    }
    res.fig("connections", c.ok as f64);
    res.fig("connects_per_s", rate);
    Ok(c.ok)
}

/// The `data` of message `seq`: publish time, sequence number, padding to `size` bytes.
pub fn data_json(seq: u64, size: usize) -> String {
    let head = format!("{{\"t\":{},\"s\":{seq},\"p\":\"", unix_ns());
    let pad = size.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// Publishes over one keep-alive HTTP connection, in the target's dialect.
struct Publisher {
    http: HttpConn,
    kind: TargetKind,
    size: usize,
    /// `"persist":false` in user publishes.
    transient: bool,
}

impl Publisher {
    async fn connect(servers: &ServerSet, size: usize) -> Result<Publisher> {
        let http = HttpConn::connect(servers.publish_base(), Some(API_KEY)).await?;
        Ok(Publisher { http, kind: servers.kind, size, transient: false })
    }

    async fn send(&mut self, path: &str, body: String) -> Result<()> {
        let r = self.http.post(path, body.as_bytes()).await?;
        if r.status != 202 {
            bail!("POST {path}: HTTP {}: {}", r.status, String::from_utf8_lossy(&r.body));
        }
        Ok(())
    }

    async fn room(&mut self, seq: u64) -> Result<()> {
        let body = format!("{{\"type\":\"{KIND}\",\"data\":{}}}", data_json(seq, self.size));
        match self.kind {
            TargetKind::Syncgate => self.send(&format!("/api/v1/rooms/{ROOM}/events"), body).await,
            TargetKind::NodeWs => self.send("/publish", body).await,
        }
    }

    async fn user(&mut self, user: usize, seq: u64) -> Result<()> {
        let persist = if self.transient { ",\"persist\":false" } else { "" };
        let body =
            format!("{{\"user_id\":\"u-{user}\",\"type\":\"{KIND}\"{persist},\"data\":{}}}", data_json(seq, self.size));
        match self.kind {
            TargetKind::Syncgate => self.send("/api/v1/events", body).await,
            TargetKind::NodeWs => self.send("/publish", body).await,
        }
    }

    async fn batch(&mut self, users: std::ops::Range<usize>, seq: u64) -> Result<()> {
        let ids: Vec<String> = users.map(|u| format!("\"u-{u}\"")).collect();
        let body =
            format!("{{\"user_ids\":[{}],\"type\":\"{KIND}\",\"data\":{}}}", ids.join(","), data_json(seq, self.size));
        self.send("/api/v1/events/batch", body).await
    }
}

/// Records the Redis CPU of a cluster run (Redis is not part of "server CPU").
fn redis_figure(res: &mut RunResult, meter: Option<CpuMeter>) {
    if let Some(used) = meter.and_then(|m| m.stop().ok()) {
        res.fig("redis_cpu_cores", used.cores());
        res.show("Redis CPU (not in server CPU)", format!("{:.2} cores", used.cores()));
    }
}

/// The generator's processes: the workers and this one (the publishers run here).
fn generator_pids(fleet: &Fleet) -> Vec<u32> {
    let mut p = fleet.pids();
    p.push(std::process::id());
    p
}

fn kib(bytes: f64) -> String {
    format!("{:.2} KiB", bytes / 1024.0)
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits: Vec<char> = n.unsigned_abs().to_string().chars().collect();
    let mut out = String::new();
    for (i, c) in digits.iter().enumerate() {
        let left = digits.len() - i;
        out.push(*c);
        if left > 1 && left % 3 == 1 {
            out.push(',');
        }
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub fn fmt_count(v: f64) -> String {
    thousands(v)
}

fn lat(s: &Summary) -> String {
    format!("{:.2} / {:.2} / {:.2} / {:.2} ms", s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms)
}

fn close_codes(codes: &[(u16, u64)]) -> String {
    codes.iter().map(|(c, n)| format!("{n}x{c}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_exactly_the_asked_size_and_stamped() {
        for seq in [1u64, 42, 1_000_000] {
            let d = data_json(seq, 100);
            assert_eq!(d.len(), 100, "{d}");
            let v: serde_json::Value = serde_json::from_str(&d).unwrap();
            assert_eq!(v["s"], seq);
            let frame = format!("{{\"op\":\"event\",\"data\":{d}}}");
            assert_eq!(crate::worker::stamp(frame.as_bytes()).1, Some(seq));
        }
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
