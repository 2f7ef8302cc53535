//! The live-delivery scenarios: `idle` (connections held, memory and idle CPU), `fanout`
//! (one room, every device receives every publish) and `direct` (one publish per user,
//! round-robin), all measured on connected devices.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{
    close_codes, connect, device_spec, generator_pids, kib, lat, log, redis_figure, thousands, Ctx, Publisher,
    RunResult, RunSpec, ROOM,
};
use crate::fleet::Fleet;
use crate::proto::TargetKind;
use crate::sys::CpuMeter;
use crate::target::ServerSet;

pub(super) async fn idle(
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
pub(super) async fn fanout(
    ctx: &Ctx,
    _spec: &RunSpec,
    servers: &ServerSet,
    res: &mut RunResult,
    conns: usize,
    rate: Option<f64>,
    duration: Duration,
    (window, size, deflate): (u64, usize, bool),
) -> Result<()> {
    let mut fleet = Fleet::spawn(Fleet::workers_for(conns), ctx.worker_deadline).await?;
    let mut spec = device_spec(ctx, servers, conns);
    if servers.kind == TargetKind::Syncgate {
        spec.room = Some(ROOM.to_string());
        spec.deflate = deflate;
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
    res.fig("user_cpu_us_per_delivery", used.user_us as f64 / received.max(1) as f64);
    res.fig("lost", m.tick.lost as f64);
    res.fig("wire_bytes_per_delivery", m.wire_bytes as f64 / received.max(1) as f64);
    res.latency = Some(summary);
    res.show("messages published per second", format!("{:.1}", published as f64 / publish_time.as_secs_f64()));
    let wire = m.wire_bytes as f64 / received.max(1) as f64;
    res.show(
        "bytes on the wire per delivery",
        format!("{wire:.0}{}", if deflate { " (permessage-deflate)" } else { "" }),
    );
    res.show("deliveries per second", thousands(received as f64 / wall.as_secs_f64()));
    res.show("server CPU per delivery", format!("{:.2} us", used.cpu_us as f64 / received.max(1) as f64));
    res.show("of which user space", format!("{:.2} us", used.user_us as f64 / received.max(1) as f64));
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
pub(super) async fn direct(
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
