//! The publish-path scenarios: `publish-api` (keep-alive HTTP clients publishing back to
//! back, nobody connected), `resume` (offline devices reconnecting at once and replaying
//! what they missed from the store) and `batch` (one batch publish to many users at a time).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{close_codes, connect, device_spec, lat, log, redis_figure, thousands, Ctx, Publisher, RunResult, RunSpec};
use crate::fleet::Fleet;
use crate::hist::Latency;
use crate::proto::TargetKind;
use crate::sys::{unix_ns, CpuMeter};
use crate::target::ServerSet;

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
pub(super) async fn publish_api(
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

pub(super) async fn resume(
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

/// Times `rounds` batch publishes to `users` users, one after the other on one connection,
/// then as many to a tenth of them.
pub(super) async fn batch_api(
    servers: &ServerSet,
    res: &mut RunResult,
    users: usize,
    rounds: usize,
    size: usize,
) -> Result<()> {
    if servers.kind != TargetKind::Syncgate {
        bail!("batch publishes: syncgate only");
    }
    let mut p = Publisher::connect(servers, size).await?;
    // Warm-up: every user's stream exists before the timed rounds (its first append differs).
    p.batch(0..users, 0).await?;
    let small = (users / 10).max(1);
    let cpu = CpuMeter::start(&servers.pids())?;
    let redis_cpu = servers.redis_meter();
    let mut times = Vec::new();
    for (n, label) in [(users, "full"), (small, "tenth")] {
        let mut lat = Latency::default();
        for k in 0..rounds.max(1) {
            let start = Instant::now();
            p.batch(0..n, 1 + k as u64).await?;
            lat.record_us(start.elapsed().as_micros() as u64);
        }
        let s = lat.summary();
        res.fig(&format!("batch_{label}_users"), n as f64);
        res.fig(&format!("batch_{label}_p50_ms"), s.p50_ms);
        res.fig(&format!("batch_{label}_max_ms"), s.max_ms);
        times.push((n, s));
    }
    let used = cpu.stop()?;
    redis_figure(res, redis_cpu);
    let total_users = (users + small) * rounds.max(1);
    // Every batch above was answered 202 (`Publisher::batch` fails the run otherwise).
    res.fig("accepted", (1 + 2 * rounds.max(1)) as f64);
    res.fig("server_cpu_us_per_recipient", used.cpu_us as f64 / total_users as f64);
    for (n, s) in &times {
        res.show(
            &format!("one batch publish to {} users: p50 / max", thousands(*n as f64)),
            format!("{:.1} / {:.1} ms", s.p50_ms, s.max_ms),
        );
    }
    let (big, tenth) = (times[0].1.p50_ms, times[1].1.p50_ms);
    res.fig("batch_growth", big / tenth.max(1e-3));
    res.show("growth from a tenth of the users to all (10 = linear)", format!("{:.1}x", big / tenth.max(1e-3)));
    res.show("server CPU per recipient", format!("{:.2} us", used.cpu_us as f64 / total_users as f64));
    Ok(())
}
