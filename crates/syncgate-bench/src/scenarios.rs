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

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::fleet::Fleet;
use crate::hist::{Latency, Summary};
use crate::http::HttpConn;
use crate::proto::{ConnectSpec, TargetKind};
use crate::sys::{unix_ns, CpuMeter};
use crate::target::{Fsync, Programs, ServerSet, Topology, API_KEY, JWT_SECRET};

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
    Fanout { conns: usize, rate: Option<f64>, duration_s: f64, window: u64, msg_bytes: usize },
    /// `users` devices (one per user, with a client id); publishes to one user at a time,
    /// round-robin, at `rate` msg/s in total from `publishers` connections.
    Direct { users: usize, rate: f64, duration_s: f64, publishers: usize, msg_bytes: usize },
    /// `clients` keep-alive HTTP connections publishing back to back (to `users` users,
    /// nobody connected) for `duration_s` after `warmup_s`.
    /// `persist: false` publishes live-only messages (no store write): the HTTP path alone.
    PublishApi { clients: usize, users: usize, duration_s: f64, warmup_s: f64, msg_bytes: usize, persist: bool },
    /// `devices` devices miss `missed` messages each, then reconnect all at once.
    Resume { devices: usize, missed: u64, msg_bytes: usize },
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Idle { .. } => "idle",
            Scenario::Fanout { .. } => "fanout",
            Scenario::Direct { .. } => "direct",
            Scenario::PublishApi { .. } => "publish-api",
            Scenario::Resume { .. } => "resume",
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
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub id: String,
    pub title: String,
    pub target: TargetKind,
    pub topology: Topology,
    pub fsync: Fsync,
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
}

impl RunResult {
    fn new(spec: &RunSpec) -> Self {
        RunResult {
            id: spec.id.clone(),
            title: spec.title.clone(),
            target: spec.target,
            topology: spec.topology,
            fsync: spec.fsync,
            params: spec.scenario.clone(),
            ok: true,
            error: None,
            figures: BTreeMap::new(),
            latency: None,
            display: Vec::new(),
            notes: Vec::new(),
            elapsed_s: 0.0,
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
    let extra = extra_env(spec);
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
        Scenario::Fanout { conns, rate, duration_s, window, msg_bytes } => {
            fanout(ctx, spec, &servers, &mut res, *conns, *rate, secs(*duration_s), *window, *msg_bytes).await
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
    if let Scenario::Direct { users, .. } | Scenario::Resume { devices: users, .. } = spec.scenario {
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

async fn idle(
    ctx: &Ctx,
    _spec: &RunSpec,
    servers: &ServerSet,
    res: &mut RunResult,
    conns: usize,
    settle: Duration,
    hold: Duration,
) -> Result<()> {
    let mut fleet = Fleet::spawn(Fleet::workers_for(conns), ctx.worker_deadline).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = servers.rss_bytes()?;
    let ok = connect(&mut fleet, &device_spec(ctx, servers, conns), res).await?;
    tokio::time::sleep(settle).await;
    let cpu = CpuMeter::start(&servers.pids())?;
    let redis_cpu = servers.redis_meter();
    log(format!("  holding {ok} idle connections for {:.0} s", hold.as_secs_f64()));
    tokio::time::sleep(hold).await;
    let used = cpu.stop()?;
    redis_figure(res, redis_cpu);
    let rss1 = servers.rss_bytes()?;
    let fds: u64 = servers.pids().iter().map(|p| crate::sys::open_fds(*p)).sum();
    let t = fleet.tick();
    let per_conn = rss1.saturating_sub(rss0) as f64 / ok as f64;
    res.fig("rss_before_bytes", rss0 as f64);
    res.fig("rss_after_bytes", rss1 as f64);
    res.fig("rss_per_conn_bytes", per_conn);
    res.fig("idle_cpu_cores", used.cores());
    res.fig("idle_cpu_us", used.cpu_us as f64);
    res.fig("idle_window_s", used.wall_s);
    res.fig("server_fds", fds as f64);
    res.fig("lost", t.lost as f64);
    res.show("server RSS per connection", kib(per_conn));
    res.show(
        "server RSS total (before connections)",
        format!("{:.1} MiB ({:.1} MiB)", rss1 as f64 / 1048576.0, rss0 as f64 / 1048576.0),
    );
    res.show("server CPU while idle", format!("{:.2} % of a core ({:.1} s window)", used.cores() * 100.0, used.wall_s));
    res.show("connections opened per second", thousands(res.figure("connects_per_s").unwrap_or(0.0)));
    if t.lost > 0 || t.open != ok {
        res.fail(format!("{} connections lost while idle (open {} of {ok})", t.lost, t.open));
    }
    fleet.disconnect().await?;
    fleet.shutdown().await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn fanout(
    ctx: &Ctx,
    _spec: &RunSpec,
    servers: &ServerSet,
    res: &mut RunResult,
    conns: usize,
    rate: Option<f64>,
    duration: Duration,
    window: u64,
    size: usize,
) -> Result<()> {
    let mut fleet = Fleet::spawn(Fleet::workers_for(conns), ctx.worker_deadline).await?;
    let mut spec = device_spec(ctx, servers, conns);
    if servers.kind == TargetKind::Syncgate {
        spec.room = Some(ROOM.to_string());
    }
    let ok = connect(&mut fleet, &spec, res).await?;
    let mut publisher = Publisher::connect(servers, size).await?;
    // Warm-up: every device gets a few messages before measuring.
    let mut seq = 0u64;
    for _ in 0..3 {
        seq += 1;
        publisher.room(seq).await?;
    }
    if !fleet.wait_until(|t| t.received >= 3 * ok, Duration::from_secs(10), Duration::from_secs(60)).await {
        bail!("warm-up messages did not all arrive ({} of {})", fleet.tick().received, 3 * ok);
    }
    fleet.reset().await?;
    let pids = servers.pids();
    let cpu = CpuMeter::start(&pids)?;
    let redis_cpu = servers.redis_meter();
    let gen_cpu = CpuMeter::start(&generator_pids(&fleet))?;
    let t0 = tokio::time::Instant::now();
    let mut published = 0u64;
    match rate {
        Some(r) => {
            let n = (r * duration.as_secs_f64()).round().max(1.0) as u64;
            log(format!("  publishing {n} messages at {r} msg/s to {ok} connections"));
            for k in 0..n {
                tokio::time::sleep_until(t0 + Duration::from_secs_f64(k as f64 / r)).await;
                seq += 1;
                publisher.room(seq).await?;
                published += 1;
            }
        }
        None => {
            log(format!("  publishing as fast as {ok} connections receive (window {window}) for {duration:?}"));
            let mut stalled_since = tokio::time::Instant::now();
            let mut last_low = 0;
            while t0.elapsed() < duration {
                let low = fleet.tick().low;
                if low != last_low {
                    last_low = low;
                    stalled_since = tokio::time::Instant::now();
                }
                if seq >= low.saturating_add(window) {
                    if stalled_since.elapsed() > Duration::from_secs(10) {
                        bail!("delivery stalled at seq {low} (published {seq})");
                    }
                    tokio::time::sleep(Duration::from_micros(500)).await;
                    continue;
                }
                seq += 1;
                publisher.room(seq).await?;
                published += 1;
            }
        }
    }
    let publish_time = t0.elapsed();
    let expected = published * ok;
    let complete = fleet.wait_until(|t| t.received >= expected, Duration::from_secs(5), Duration::from_secs(120)).await;
    let wall = t0.elapsed();
    let used = cpu.stop()?;
    redis_figure(res, redis_cpu);
    let gen_used = gen_cpu.stop()?;
    let m = fleet.report().await?;
    let received = m.tick.received;
    let summary = m.latency.summary();
    res.fig("generator_cpu_cores", gen_used.cores());
    res.fig("published", published as f64);
    res.fig("publish_rate_per_s", published as f64 / publish_time.as_secs_f64());
    res.fig("expected", expected as f64);
    res.fig("delivered", received as f64);
    res.fig("deliveries_per_s", received as f64 / wall.as_secs_f64());
    res.fig("server_cpu_us", used.cpu_us as f64);
    res.fig("server_cpu_cores", used.cores());
    res.fig("cpu_us_per_delivery", used.cpu_us as f64 / received.max(1) as f64);
    res.fig("lost", m.tick.lost as f64);
    res.latency = Some(summary);
    res.show("messages published per second", format!("{:.1}", published as f64 / publish_time.as_secs_f64()));
    res.show("deliveries per second", thousands(received as f64 / wall.as_secs_f64()));
    res.show("server CPU per delivery", format!("{:.2} us", used.cpu_us as f64 / received.max(1) as f64));
    res.show("server CPU (load generator CPU)", format!("{:.2} ({:.2}) cores", used.cores(), gen_used.cores()));
    res.show("publish-to-deliver p50 / p95 / p99 / max", lat(&summary));
    if !complete || received != expected {
        res.fail(format!("delivered {received} of {expected}"));
    }
    if m.tick.lost > 0 {
        res.fail(format!("{} connections lost (close codes {})", m.tick.lost, close_codes(&m.close_codes)));
    }
    fleet.disconnect().await?;
    fleet.shutdown().await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn direct(
    ctx: &Ctx,
    _spec: &RunSpec,
    servers: &ServerSet,
    res: &mut RunResult,
    users: usize,
    rate: f64,
    duration: Duration,
    publishers: usize,
    size: usize,
) -> Result<()> {
    let mut fleet = Fleet::spawn(Fleet::workers_for(users), ctx.worker_deadline).await?;
    let mut spec = device_spec(ctx, servers, users);
    spec.client_ids = true;
    let ok = connect(&mut fleet, &spec, res).await?;
    if ok as usize != users {
        bail!("direct needs every user connected ({ok} of {users})");
    }
    // Warm-up: one message to each of the first users.
    let mut warm = Publisher::connect(servers, size).await?;
    let w = users.min(200);
    for u in 0..w {
        warm.user(u, 0).await?;
    }
    if !fleet.wait_until(|t| t.received >= w as u64, Duration::from_secs(10), Duration::from_secs(60)).await {
        bail!("warm-up messages did not all arrive");
    }
    fleet.reset().await?;
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let publishers = publishers.clamp(1, total as usize);
    log(format!("  publishing {total} messages to {users} users at {rate} msg/s over {publishers} connections"));
    let mut pubs = Vec::with_capacity(publishers);
    for _ in 0..publishers {
        pubs.push(Publisher::connect(servers, size).await?);
    }
    let cpu = CpuMeter::start(&servers.pids())?;
    let redis_cpu = servers.redis_meter();
    let gen_cpu = CpuMeter::start(&generator_pids(&fleet))?;
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (j, mut p) in pubs.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut k = j as u64;
            while k < total {
                tokio::time::sleep_until(t0 + Duration::from_secs_f64(k as f64 / rate)).await;
                p.user(k as usize % users, k + 1).await?;
                k += publishers as u64;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await.context("publisher task")??;
    }
    let publish_time = t0.elapsed();
    let complete = fleet.wait_until(|t| t.received >= total, Duration::from_secs(5), Duration::from_secs(120)).await;
    let wall = t0.elapsed();
    let used = cpu.stop()?;
    redis_figure(res, redis_cpu);
    let gen_used = gen_cpu.stop()?;
    let m = fleet.report().await?;
    let received = m.tick.received;
    let summary = m.latency.summary();
    res.fig("generator_cpu_cores", gen_used.cores());
    res.fig("published", total as f64);
    res.fig("publish_rate_per_s", total as f64 / publish_time.as_secs_f64());
    res.fig("delivered", received as f64);
    res.fig("deliveries_per_s", received as f64 / wall.as_secs_f64());
    res.fig("server_cpu_us", used.cpu_us as f64);
    res.fig("server_cpu_cores", used.cores());
    res.fig("cpu_us_per_delivery", used.cpu_us as f64 / received.max(1) as f64);
    res.fig("lost", m.tick.lost as f64);
    res.latency = Some(summary);
    res.show("deliveries per second (1 publish each)", thousands(received as f64 / wall.as_secs_f64()));
    res.show(
        "server CPU per delivery (incl. HTTP publish, store)",
        format!("{:.2} us", used.cpu_us as f64 / received.max(1) as f64),
    );
    res.show("server CPU (load generator CPU)", format!("{:.2} ({:.2}) cores", used.cores(), gen_used.cores()));
    res.show("publish-to-deliver p50 / p95 / p99 / max", lat(&summary));
    if !complete || received != total {
        res.fail(format!("delivered {received} of {total}"));
    }
    if m.tick.lost > 0 {
        res.fail(format!("{} connections lost (close codes {})", m.tick.lost, close_codes(&m.close_codes)));
    }
    fleet.disconnect().await?;
    fleet.shutdown().await;
    Ok(())
}

/// Publishes back to back on every connection until `until`; returns the connections,
/// (accepted, refused) counts and the request latencies.
async fn hammer(
    pubs: Vec<Publisher>,
    users: usize,
    until: tokio::time::Instant,
) -> Result<(Vec<Publisher>, u64, u64, Latency)> {
    let mut tasks = Vec::new();
    for (j, mut p) in pubs.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut lat = Latency::default();
            let (mut ok, mut refused) = (0u64, 0u64);
            let mut k = j;
            while tokio::time::Instant::now() < until {
                let start = Instant::now();
                match p.user(k % users, k as u64).await {
                    Ok(()) => ok += 1,
                    Err(e) if e.to_string().contains("HTTP") => refused += 1,
                    Err(e) => return Err(e),
                }
                lat.record_us(start.elapsed().as_micros() as u64);
                k += 7919; // spread over users
            }
            Ok::<_, anyhow::Error>((p, ok, refused, lat))
        }));
    }
    let mut back = Vec::new();
    let (mut ok, mut refused, mut lat) = (0, 0, Latency::default());
    for t in tasks {
        let (p, o, r, l) = t.await.context("publisher task")??;
        back.push(p);
        ok += o;
        refused += r;
        lat.merge(&l.export());
    }
    Ok((back, ok, refused, lat))
}

#[allow(clippy::too_many_arguments)]
async fn publish_api(
    spec: &RunSpec,
    servers: &ServerSet,
    res: &mut RunResult,
    clients: usize,
    users: usize,
    duration: Duration,
    warmup: Duration,
    size: usize,
    persist: bool,
) -> Result<()> {
    let mut pubs = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut p = Publisher::connect(servers, size).await?;
        p.transient = !persist;
        pubs.push(p);
    }
    let users = users.max(1);
    let (pubs, _, _, _) = hammer(pubs, users, tokio::time::Instant::now() + warmup).await?;
    log(format!("  {clients} clients publishing for {duration:?} (fsync {})", spec.fsync.as_str()));
    let cpu = CpuMeter::start(&servers.pids())?;
    let redis_cpu = servers.redis_meter();
    let gen_cpu = CpuMeter::start(&[std::process::id()])?;
    let t0 = Instant::now();
    let (_, ok, refused, latency) = hammer(pubs, users, tokio::time::Instant::now() + duration).await?;
    let wall = t0.elapsed().as_secs_f64();
    let used = cpu.stop()?;
    redis_figure(res, redis_cpu);
    let gen_used = gen_cpu.stop()?;
    res.fig("generator_cpu_cores", gen_used.cores());
    let summary = latency.summary();
    res.fig("accepted", ok as f64);
    res.fig("refused", refused as f64);
    res.fig("publishes_per_s", ok as f64 / wall);
    res.fig("server_cpu_cores", used.cores());
    res.fig("cpu_us_per_publish", used.cpu_us as f64 / ok.max(1) as f64);
    res.latency = Some(summary);
    res.show("publishes per second", thousands(ok as f64 / wall));
    res.show("request latency p50 / p95 / p99 / max", lat(&summary));
    res.show("server CPU per publish", format!("{:.1} us", used.cpu_us as f64 / ok.max(1) as f64));
    res.show("server CPU (load generator CPU)", format!("{:.2} ({:.2}) cores", used.cores(), gen_used.cores()));
    if refused > 0 {
        res.fail(format!("{refused} publishes refused"));
    }
    if ok == 0 {
        res.fail("no publish accepted".into());
    }
    Ok(())
}

async fn resume(
    ctx: &Ctx,
    _spec: &RunSpec,
    servers: &ServerSet,
    res: &mut RunResult,
    devices: usize,
    missed: u64,
    size: usize,
) -> Result<()> {
    if servers.kind != TargetKind::Syncgate {
        bail!("resume needs a store: syncgate only");
    }
    let mut fleet = Fleet::spawn(Fleet::workers_for(devices), ctx.worker_deadline).await?;
    let mut spec = device_spec(ctx, servers, devices);
    spec.client_ids = true;
    // First connection of each device: the server remembers its cursor (at the head).
    let ok = connect(&mut fleet, &spec, res).await?;
    if ok as usize != devices {
        bail!("resume needs every device connected once ({ok} of {devices})");
    }
    fleet.disconnect().await?;
    // While they are away, `missed` messages for each (batch publishes of 5,000 users).
    let t0 = Instant::now();
    let mut publishers = Vec::new();
    for _ in 0..4 {
        publishers.push(Publisher::connect(servers, size).await?);
    }
    let chunks: Vec<std::ops::Range<usize>> =
        (0..devices).step_by(5_000).map(|lo| lo..(lo + 5_000).min(devices)).collect();
    let mut tasks = Vec::new();
    for (j, mut p) in publishers.into_iter().enumerate() {
        let chunks = chunks.clone();
        tasks.push(tokio::spawn(async move {
            for k in 1..=missed {
                for (c, range) in chunks.iter().enumerate() {
                    if (c + k as usize) % 4 == j {
                        p.batch(range.clone(), k).await?;
                    }
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await.context("publisher task")??;
    }
    let stored = devices as u64 * missed;
    let store_s = t0.elapsed().as_secs_f64();
    log(format!("  stored {stored} messages for offline devices in {store_s:.2} s; reconnecting all at once"));
    // All devices come back at once.
    spec.expect_events = missed;
    spec.concurrency = ctx.connect_concurrency.max(512);
    let cpu = CpuMeter::start(&servers.pids())?;
    let redis_cpu = servers.redis_meter();
    let start_ns = unix_ns();
    let t1 = Instant::now();
    let c = fleet.connect(&spec, Duration::from_secs(600)).await?;
    if c.failed > 0 {
        res.fail(format!("{} reconnects failed: {:?}", c.failed, c.errors));
    }
    let reconnected = c.ok;
    let complete =
        fleet.wait_until(|t| t.caught_up >= reconnected, Duration::from_secs(10), Duration::from_secs(300)).await;
    let wall = t1.elapsed();
    let used = cpu.stop()?;
    redis_figure(res, redis_cpu);
    let m = fleet.report().await?;
    let done_ns = if complete { m.last_caught_up_ns.max(start_ns) } else { unix_ns() };
    let catch_up_s = (done_ns - start_ns) as f64 / 1e9;
    let replayed = m.tick.received;
    res.fig("devices", devices as f64);
    res.fig("missed_each", missed as f64);
    res.fig("stored_per_s", stored as f64 / store_s);
    res.fig("resumed_announced", c.resumed as f64);
    res.fig("replayed", replayed as f64);
    res.fig("catch_up_s", catch_up_s);
    res.fig("replayed_per_s", replayed as f64 / catch_up_s.max(1e-6));
    res.fig("server_cpu_cores", used.cores());
    res.fig("cpu_us_per_replayed", used.cpu_us as f64 / replayed.max(1) as f64);
    res.fig("window_s", wall.as_secs_f64());
    res.show("time until every device has caught up", format!("{catch_up_s:.2} s"));
    res.show("messages replayed per second", thousands(replayed as f64 / catch_up_s.max(1e-6)));
    res.show(
        "server CPU per replayed message (incl. reconnect)",
        format!("{:.2} us", used.cpu_us as f64 / replayed.max(1) as f64),
    );
    res.show("messages stored per second (batch publish)", thousands(stored as f64 / store_s));
    if !complete || m.tick.caught_up != devices as u64 {
        res.fail(format!("{} of {devices} devices caught up", m.tick.caught_up));
    }
    if replayed != stored {
        res.fail(format!("replayed {replayed} of {stored} messages"));
    }
    if c.resumed != stored {
        res.fail(format!("welcome frames announced {} of {stored} resumed messages", c.resumed));
    }
    if m.tick.lost > 0 {
        res.fail(format!("{} connections lost (close codes {})", m.tick.lost, close_codes(&m.close_codes)));
    }
    fleet.disconnect().await?;
    fleet.shutdown().await;
    Ok(())
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
