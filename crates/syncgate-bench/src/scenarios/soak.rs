//! The `soak` scenario: many device connections held for a long time while devices come
//! and go (churn) and a modest mix of publishes flows, sampling the server's memory, open
//! files and threads every `sample_s` to show whether they stay flat.
//!
//! - Devices: `conns`, each its own user `u-i` with client id `d-i`. The even ones stay
//!   connected the whole run; the odd ones churn: every second `churn` of them close (after
//!   acknowledging their last user event) and the ones closed the second before come back
//!   with the same client id, so the server replays what they missed. Half of each kind
//!   (`proto::soak_in_room`) is in one room; churning members rejoin it with `since`.
//! - Publishes, each stream from one keep-alive connection, one request at a time (so its
//!   numbers arrive in order): `user_rate`/s to single users (persisted, spread over 4
//!   connections by user), `batch_rate`/s batch publishes to groups of `batch_users`
//!   consecutive users (round-robin), `room_rate`/s to the room.
//! - Devices check every stream's sequence numbers (see `worker::soak`): gaps, duplicates,
//!   and at the end, once everyone is back, that each device saw every message published
//!   to it.
//! - Every `sample_s`: server RSS, open fds (`/proc/PID/fd`), threads (`/proc/PID/status`),
//!   the `syncgate_websocket_connections` gauge of `/metrics` (the server exports no tokio
//!   task count), deliveries and publishes per second, the load average.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod samples;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{device_spec, lat, log, thousands, Ctx, Publisher, RunResult};
use crate::fleet::Fleet;
use crate::proto::{soak_in_room, Command, Event, SoakCounts, SoakExpect, TargetKind};
use crate::sys::unix_ns;
use crate::target::ServerSet;
use samples::sample;
pub use samples::Sample;

/// The soak's room.
const ROOM: &str = "soak";
/// Connections the single-user publishes are spread over (by user).
const USER_PUBLISHERS: usize = 4;

/// Sizes and rates of a soak run.
#[derive(Debug, Clone, Serialize)]
pub struct SoakParams {
    pub conns: usize,
    pub duration_s: f64,
    /// Devices closed (and as many reopened) per second.
    pub churn: usize,
    pub sample_s: f64,
    pub user_rate: f64,
    pub room_rate: f64,
    pub batch_rate: f64,
    pub batch_users: usize,
    pub msg_bytes: usize,
}

/// `syncgate-bench run soak` options beyond the common ones.
#[derive(clap::Args, Clone)]
pub struct SoakArgs {
    /// soak: devices closed, and as many reopened with their client id, per second.
    #[arg(long, default_value_t = 100)]
    churn: usize,
    /// soak: seconds between samples of the server's RSS, fds and threads.
    #[arg(long, default_value_t = 60.0)]
    sample_s: f64,
    /// soak: room publishes per second.
    #[arg(long, default_value_t = 2.0)]
    room_rate: f64,
    /// soak: batch publishes per second.
    #[arg(long, default_value_t = 1.0)]
    batch_rate: f64,
    /// soak: users per batch publish.
    #[arg(long, default_value_t = 500)]
    batch_users: usize,
}

impl SoakArgs {
    /// The run's parameters; `rate` is the single-user publish rate (default 200/s).
    pub fn params(&self, conns: usize, duration_s: f64, rate: Option<f64>, msg_bytes: usize) -> SoakParams {
        SoakParams {
            conns,
            duration_s,
            churn: self.churn,
            sample_s: self.sample_s,
            user_rate: rate.unwrap_or(200.0),
            room_rate: self.room_rate,
            batch_rate: self.batch_rate,
            batch_users: self.batch_users.max(1),
            msg_bytes,
        }
    }
}

/// The `data` of the n-th message of stream `key` (`u`, `b` or `r`), padded to `size`.
fn data(key: char, n: u64, size: usize) -> String {
    let head = format!("{{\"t\":{},\"{key}\":{n},\"p\":\"", unix_ns());
    format!("{head}{}\"}}", "x".repeat(size.saturating_sub(head.len() + 2)))
}

/// xorshift64: a cheap spread of users without a dependency.
fn next_rand(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Publishes `rate`/s until `until` on one connection, one request at a time; `body(k)`
/// is the k-th request (from 0) as (path, JSON). A server slower than `rate` gets fewer:
/// nothing is sent after `until`.
async fn paced(
    mut p: Publisher,
    rate: f64,
    until: tokio::time::Instant,
    published: Arc<AtomicU64>,
    mut body: impl FnMut(u64) -> (String, String),
) -> Result<()> {
    if rate <= 0.0 {
        return Ok(());
    }
    let t0 = tokio::time::Instant::now();
    for k in 0u64.. {
        let at = t0 + Duration::from_secs_f64(k as f64 / rate);
        if at >= until || tokio::time::Instant::now() >= until {
            break;
        }
        tokio::time::sleep_until(at).await;
        let (path, json) = body(k);
        p.send(&path, json).await?;
        published.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// The fleet, with which worker holds which devices (contiguous ranges).
struct Devices {
    fleet: Fleet,
    bounds: Vec<usize>,
}

impl Devices {
    fn owner(&self, i: usize) -> usize {
        self.bounds.partition_point(|b| *b <= i) - 1
    }

    /// Sends each worker its part of `close` and `open`; sums the answers.
    async fn cycle(&mut self, close: &[usize], open: &[usize], wait: Duration) -> Result<Cycled> {
        let w = self.fleet.worker_count();
        let (mut c, mut o) = (vec![Vec::new(); w], vec![Vec::new(); w]);
        close.iter().for_each(|i| c[self.owner(*i)].push(*i));
        open.iter().for_each(|i| o[self.owner(*i)].push(*i));
        let cmds = c.into_iter().zip(o).map(|(close, open)| Command::SoakCycle { close, open }).collect();
        let mut sum = Cycled::default();
        for ev in self.fleet.each(cmds, wait).await? {
            let Event::SoakCycled { closed, opened, failed, resumed, errors, elapsed_ms, counts } = ev else {
                bail!("soak cycle: unexpected answer {ev:?}");
            };
            sum.closed += closed;
            sum.opened += opened;
            sum.failed += failed;
            sum.resumed += resumed;
            sum.elapsed_ms = sum.elapsed_ms.max(elapsed_ms);
            for e in errors {
                if sum.errors.len() < 5 && !sum.errors.contains(&e) {
                    sum.errors.push(e);
                }
            }
            sum.counts = add(sum.counts, counts);
        }
        Ok(sum)
    }
}

#[derive(Default)]
struct Cycled {
    closed: u64,
    opened: u64,
    failed: u64,
    resumed: u64,
    elapsed_ms: u64,
    errors: Vec<String>,
    counts: SoakCounts,
}

fn add(a: SoakCounts, b: SoakCounts) -> SoakCounts {
    SoakCounts {
        gaps: a.gaps + b.gaps,
        dups: a.dups + b.dups,
        redelivered: a.redelivered + b.redelivered,
        replayed_user: a.replayed_user + b.replayed_user,
        replayed_room: a.replayed_room + b.replayed_room,
        unexpected: a.unexpected + b.unexpected,
        ack_timeouts: a.ack_timeouts + b.ack_timeouts,
    }
}

pub(super) async fn soak(ctx: &Ctx, servers: &ServerSet, res: &mut RunResult, p: &SoakParams) -> Result<()> {
    if servers.kind != TargetKind::Syncgate {
        bail!("soak needs client ids and a store: syncgate only");
    }
    let n = p.conns;
    // Workers outlive the soak by a margin whatever --worker-deadline-s says.
    let deadline = ctx.worker_deadline.max(Duration::from_secs_f64(p.duration_s + 900.0));
    let fleet = Fleet::spawn(Fleet::workers_for(n), deadline).await?;
    let w = fleet.worker_count();
    let mut devs = Devices { fleet, bounds: (0..=w).map(|k| n * k / w).collect() };
    let mut spec = device_spec(ctx, servers, n);
    spec.client_ids = true;
    spec.room = Some(ROOM.to_string());
    devs.fleet.each(vec![Command::SoakSetup(spec); w], Duration::from_secs(10)).await?;
    let all: Vec<usize> = (0..n).collect();
    let c = devs.cycle(&[], &all, Duration::from_secs(600)).await?;
    log(format!("  {} devices connected ({} failed) in {:.1} s", c.opened, c.failed, c.elapsed_ms as f64 / 1e3));
    res.fig("connections", c.opened as f64);
    res.fig("connects_per_s", c.opened as f64 / (c.elapsed_ms.max(1) as f64 / 1e3));
    if c.failed > 0 {
        bail!("{} of {n} devices could not connect: {:?}", c.failed, c.errors);
    }
    // Every room member sees one room message before anyone churns, so each has an id to
    // rejoin from.
    let mut room_pub = Publisher::connect(servers, p.msg_bytes).await?;
    let room_path = format!("/api/v1/rooms/{ROOM}/events");
    room_pub.send(&room_path, format!("{{\"type\":\"soak\",\"data\":{}}}", data('r', 1, p.msg_bytes))).await?;
    let members = (0..n).filter(|i| soak_in_room(*i)).count() as u64;
    if !devs.fleet.wait_until(|t| t.received >= members, Duration::from_secs(10), Duration::from_secs(60)).await {
        bail!("the first room message reached {} of {members} members", devs.fleet.tick().received);
    }

    let t0 = Instant::now();
    let published = Arc::new(AtomicU64::new(1));
    let s0 = sample(servers, &devs.fleet, t0, None, 1).await?;
    let mut samples = vec![s0.0];
    let mut prev = Some(s0);
    let until = tokio::time::Instant::now() + Duration::from_secs_f64(p.duration_s);
    let (user_rate, batch_rate, room_rate) = (p.user_rate, p.batch_rate, p.room_rate);

    // The publishers: single users (by user over 4 connections), batches, the room.
    let mut users = Vec::new();
    for j in 0..USER_PUBLISHERS.min(n) {
        let conn = Publisher::connect(servers, p.msg_bytes).await?;
        let (size, stride, pubd) = (p.msg_bytes, USER_PUBLISHERS.min(n), published.clone());
        users.push(tokio::spawn(async move {
            let mut counts = vec![0u64; n];
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ j as u64;
            let mine = (n - j).div_ceil(stride) as u64;
            paced(conn, user_rate / stride as f64, until, pubd, |_| {
                let u = j + stride * (next_rand(&mut x) % mine) as usize;
                counts[u] += 1;
                let body =
                    format!("{{\"user_id\":\"u-{u}\",\"type\":\"soak\",\"data\":{}}}", data('u', counts[u], size));
                ("/api/v1/events".to_string(), body)
            })
            .await?;
            Ok::<_, anyhow::Error>(counts)
        }));
    }
    let groups = n.div_ceil(p.batch_users);
    let batch = {
        let conn = Publisher::connect(servers, p.msg_bytes).await?;
        let (size, per, pubd) = (p.msg_bytes, p.batch_users, published.clone());
        tokio::spawn(async move {
            let mut counts = vec![0u64; groups];
            paced(conn, batch_rate, until, pubd, |k| {
                let g = k as usize % groups;
                counts[g] += 1;
                let ids: Vec<String> = (g * per..((g + 1) * per).min(n)).map(|u| format!("\"u-{u}\"")).collect();
                let body = format!(
                    "{{\"user_ids\":[{}],\"type\":\"soak\",\"data\":{}}}",
                    ids.join(","),
                    data('b', counts[g], size)
                );
                ("/api/v1/events/batch".to_string(), body)
            })
            .await?;
            Ok::<_, anyhow::Error>(counts)
        })
    };
    let room = {
        let (size, pubd, path) = (p.msg_bytes, published.clone(), room_path.clone());
        tokio::spawn(async move {
            let mut last = 1u64;
            paced(room_pub, room_rate, until, pubd, |k| {
                last = k + 2;
                (path.clone(), format!("{{\"type\":\"soak\",\"data\":{}}}", data('r', last, size)))
            })
            .await?;
            Ok::<_, anyhow::Error>(last)
        })
    };

    // Churn: the odd devices, in a scattered order, `churn` a second; each batch comes back
    // one second after it left.
    let mut pool: Vec<usize> = (1..n).step_by(2).collect();
    pool.sort_by_key(|i| {
        let mut x = *i as u64 + 1;
        next_rand(&mut x)
    });
    let per_cycle = p.churn.min(pool.len());
    log(format!(
        "  soak for {:.0} s: churn {per_cycle}/s of {} devices, {}/s to users, {}/s batches of {}, {}/s to the room \
         ({members} members)",
        p.duration_s,
        pool.len(),
        p.user_rate,
        p.batch_rate,
        p.batch_users,
        p.room_rate
    ));
    let mut away: Vec<usize> = Vec::new();
    let (mut next, mut churned, mut reopened, mut failed, mut slowest) = (0usize, 0u64, 0u64, 0u64, 0u64);
    let (mut resumed, mut errors) = (0u64, Vec::<String>::new());
    let mut iv = tokio::time::interval(Duration::from_secs(1));
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_sample = t0 + Duration::from_secs_f64(p.sample_s.max(0.1));
    loop {
        iv.tick().await;
        if tokio::time::Instant::now() >= until {
            break;
        }
        if per_cycle > 0 {
            let leave: Vec<usize> = (0..per_cycle).map(|k| pool[(next + k) % pool.len()]).collect();
            next = (next + per_cycle) % pool.len();
            let c = devs.cycle(&leave, &away, Duration::from_secs(60)).await?;
            (churned, reopened, failed) = (churned + c.closed, reopened + c.opened, failed + c.failed);
            (resumed, slowest) = (resumed + c.resumed, slowest.max(c.elapsed_ms));
            for e in c.errors {
                if errors.len() < 5 && !errors.contains(&e) {
                    errors.push(e);
                }
            }
            away = leave;
        }
        if Instant::now() >= next_sample {
            let s = sample(servers, &devs.fleet, t0, prev, published.load(Ordering::Relaxed)).await?;
            samples.push(s.0);
            prev = Some(s);
            next_sample += Duration::from_secs_f64(p.sample_s.max(0.1));
        }
    }
    // The last sample closes the soak window (unless one was just taken).
    if samples.last().is_some_and(|s| t0.elapsed().as_secs_f64() - s.t_s > 0.5) {
        samples.push(sample(servers, &devs.fleet, t0, prev, published.load(Ordering::Relaxed)).await?.0);
    }

    // Publishing has ended; everyone comes back, then every device's numbers are compared
    // with what was published.
    let mut expect = SoakExpect { user: vec![0; n], batch: Vec::new(), group_size: p.batch_users, room: 0 };
    for t in users {
        for (u, k) in t.await.context("user publisher")??.into_iter().enumerate() {
            expect.user[u] += k;
        }
    }
    expect.batch = batch.await.context("batch publisher")??;
    expect.room = room.await.context("room publisher")??;
    let c = devs.cycle(&[], &all, Duration::from_secs(120)).await?;
    (reopened, failed, resumed) = (reopened + c.opened, failed + c.failed, resumed + c.resumed);
    let check_until = Instant::now() + Duration::from_secs(60);
    let (checked, missing) = loop {
        let cmds = vec![Command::SoakCheck(expect.clone()); w];
        let mut sum = (SoakCounts::default(), 0u64, 0u64, 0u64, 0u64, 0u64);
        for ev in devs.fleet.each(cmds, Duration::from_secs(30)).await? {
            let Event::SoakChecked { counts, devices, complete, missing, extra, online } = ev else {
                bail!("soak check: unexpected answer {ev:?}");
            };
            sum =
                (add(sum.0, counts), sum.1 + devices, sum.2 + complete, sum.3 + missing, sum.4 + extra, sum.5 + online);
        }
        if sum.3 == 0 || Instant::now() > check_until {
            break (sum, sum.3);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (counts, devices, complete, _, extra, online) = checked;
    let m = devs.fleet.report().await?;
    let wall = t0.elapsed().as_secs_f64();
    let user_total: u64 = expect.user.iter().sum();
    let batch_total: u64 = expect.batch.iter().sum();

    let mean = |f: fn(&Sample) -> f64| samples.iter().skip(1).map(f).sum::<f64>() / (samples.len() - 1).max(1) as f64;
    for (k, v) in [
        ("churn_closed", churned as f64),
        ("churn_reopened", reopened as f64),
        ("churn_failed", failed as f64),
        ("slowest_cycle_ms", slowest as f64),
        ("resumed_announced", resumed as f64),
        ("replayed_user", counts.replayed_user as f64),
        ("replayed_room", counts.replayed_room as f64),
        ("redelivered", counts.redelivered as f64),
        ("gaps", counts.gaps as f64),
        ("duplicates", counts.dups as f64),
        ("unexpected", counts.unexpected as f64),
        ("ack_timeouts", counts.ack_timeouts as f64),
        ("missing", missing as f64),
        ("extra", extra as f64),
        ("devices_complete", complete as f64),
        ("lost", m.tick.lost as f64),
        ("published_user", user_total as f64),
        ("published_batch", batch_total as f64),
        ("published_room", expect.room as f64),
        ("publishes_per_s", mean(|s| s.publishes_per_s)),
        ("deliveries_per_s", mean(|s| s.deliveries_per_s)),
        ("delivered", m.tick.received as f64),
        ("window_s", wall),
    ] {
        res.fig(k, v);
    }
    samples::record(res, &samples);
    res.show(
        "churn: devices closed / reopened (failed), resumed",
        format!(
            "{} / {} ({failed}), {} messages",
            thousands(churned as f64),
            thousands(reopened as f64),
            thousands(resumed as f64)
        ),
    );
    res.show(
        "published: to users / batches / room (per second)",
        format!(
            "{} / {} / {} ({:.1}/s)",
            thousands(user_total as f64),
            batch_total,
            expect.room,
            mean(|s| s.publishes_per_s)
        ),
    );
    res.show("deliveries per second", thousands(mean(|s| s.deliveries_per_s)));
    res.show(
        "gaps / duplicates / missing at the end / connections lost",
        format!("{} / {} / {missing} / {}", counts.gaps, counts.dups, m.tick.lost),
    );
    res.show("publish-to-deliver p50 / p95 / p99 / max (live)", lat(&m.latency.summary()));
    res.latency = Some(m.latency.summary());
    res.samples = samples;
    for (bad, what) in [
        (counts.gaps, "sequence numbers skipped"),
        (counts.dups, "duplicates"),
        (missing, "messages missing at the end"),
        (extra, "sequence numbers beyond what was published"),
        (counts.unexpected, "events from a stream the device had not joined"),
        (counts.ack_timeouts, "acks not answered within 30 s"),
        (m.tick.lost, "connections closed by the server"),
        (failed, "reopens that failed"),
    ] {
        if bad > 0 {
            res.fail(format!("{bad} {what}"));
        }
    }
    if !errors.is_empty() {
        res.notes.push(format!("reopen errors: {errors:?}"));
    }
    if online != devices || devices != n as u64 {
        res.fail(format!("{online} of {n} devices online at the end ({devices} known)"));
    }
    devs.fleet.disconnect().await?;
    devs.fleet.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_carries_the_stream_number_at_the_asked_size() {
        let d = data('u', 42, 100);
        assert_eq!(d.len(), 100);
        let v: serde_json::Value = serde_json::from_str(&d).unwrap();
        assert_eq!((v["u"].as_u64(), v["t"].as_u64().is_some()), (Some(42), true));
        let (mut a, mut b) = (1u64, 1u64);
        assert_eq!(next_rand(&mut a), next_rand(&mut b));
        assert_ne!(next_rand(&mut a), 1);
    }
}
