//! The soak's readings of the server, every `sample_s`, and the figures made of them:
//! RSS, open fds and threads from /proc, the connections gauge from `/metrics` (the
//! server exports no tokio task count, so there is none here), deliveries and publishes
//! per second, the machine's load average.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::super::{log, thousands, RunResult};
use crate::fleet::Fleet;
use crate::http::HttpConn;
use crate::sys::{load_average, open_fds, threads};
use crate::target::ServerSet;

/// One reading of the server.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// Seconds since the soak began (after the connects).
    pub t_s: f64,
    pub rss_bytes: u64,
    /// Entries of /proc/PID/fd.
    pub fds: u64,
    pub threads: u64,
    /// `syncgate_websocket_connections` from /metrics.
    pub connections: f64,
    /// The embedded store's block cache in use plus its memtables (`syncgate_store_cache_bytes`
    /// + `syncgate_store_write_buffer_bytes`; 0 when the server reports neither).
    pub store_bytes: u64,
    /// Connections the devices have open.
    pub devices_open: u64,
    /// Since the previous sample.
    pub deliveries_per_s: f64,
    pub publishes_per_s: f64,
    /// 1-minute load average of the machine.
    pub load_average: f64,
}

/// The sum of a metric's samples (all label sets) in a Prometheus text page.
fn metric(page: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// What the next sample's rates are computed from: the last sample, events received and
/// publishes made by then.
pub type Mark = (Sample, u64, u64);

/// Reads the server's figures and prints them on one line.
pub async fn sample(
    servers: &ServerSet,
    fleet: &Fleet,
    t0: Instant,
    prev: Option<Mark>,
    published: u64,
) -> Result<Mark> {
    // A new connection each time: the server closes idle keep-alive connections.
    let mut http = HttpConn::connect(servers.publish_base(), None).await?;
    let page = http.get("/metrics").await.context("GET /metrics")?;
    let page = String::from_utf8_lossy(&page.body);
    let pids = servers.pids();
    // Ticks come every TICK_MS: let them catch up with the churn cycle that just ended.
    tokio::time::sleep(Duration::from_millis(2 * crate::proto::TICK_MS)).await;
    let tick = fleet.tick();
    let t_s = t0.elapsed().as_secs_f64();
    let rate = |now: u64, before: Option<(u64, f64)>| match before {
        Some((b, since)) if t_s > since => now.saturating_sub(b) as f64 / (t_s - since),
        _ => 0.0,
    };
    let s = Sample {
        t_s,
        rss_bytes: servers.rss_bytes()?,
        fds: pids.iter().map(|p| open_fds(*p)).sum(),
        threads: pids.iter().map(|p| threads(*p)).sum(),
        connections: metric(&page, "syncgate_websocket_connections").unwrap_or(f64::NAN),
        store_bytes: ["syncgate_store_cache_bytes", "syncgate_store_write_buffer_bytes"]
            .iter()
            .map(|m| metric(&page, m).unwrap_or(0.0) as u64)
            .sum(),
        devices_open: tick.open,
        deliveries_per_s: rate(tick.received, prev.map(|p| (p.1, p.0.t_s))),
        publishes_per_s: rate(published, prev.map(|p| (p.2, p.0.t_s))),
        load_average: load_average(),
    };
    log(format!(
        "  soak t={:.0}s rss={:.1} MiB (store cache and memtables {:.1}) fds={} threads={} connections={} \
         (devices {}) deliveries/s={:.0} publishes/s={:.1} load={:.2}",
        s.t_s,
        s.rss_bytes as f64 / 1048576.0,
        s.store_bytes as f64 / 1048576.0,
        s.fds,
        s.threads,
        s.connections,
        s.devices_open,
        s.deliveries_per_s,
        s.publishes_per_s,
        s.load_average
    ));
    Ok((s, tick.received, published))
}

/// Memory, fd and thread figures: first, second (the baseline of growth: the first is
/// taken before any churn or publish), last and max.
pub fn record(res: &mut RunResult, samples: &[Sample]) {
    let Some(first) = samples.first().copied() else { return };
    let second = samples.get(1).copied().unwrap_or(first);
    let last = samples.last().copied().unwrap_or(first);
    let rss_max = samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0);
    let growth = (last.rss_bytes as f64 - second.rss_bytes as f64) / second.rss_bytes.max(1) as f64 * 100.0;
    let minutes = (last.t_s - second.t_s) / 60.0;
    let per_min = if minutes > 0.0 { growth / minutes } else { 0.0 };
    let late = late_growth_pct(samples);
    // The same without the store's bounded cache and memtables, which fill during the first
    // minutes: what is left is the connections, the hub and the allocator's own.
    let outside: Vec<Sample> =
        samples.iter().map(|s| Sample { rss_bytes: s.rss_bytes.saturating_sub(s.store_bytes), ..*s }).collect();
    let late_outside = late_growth_pct(&outside);
    let fd_gap = (last.fds as f64 - last.connections) / last.connections.max(1.0) * 100.0;
    let load_max = samples.iter().map(|s| s.load_average).fold(0.0, f64::max);
    for (k, v) in [
        ("rss_first_bytes", first.rss_bytes as f64),
        ("rss_second_bytes", second.rss_bytes as f64),
        ("rss_last_bytes", last.rss_bytes as f64),
        ("rss_max_bytes", rss_max as f64),
        ("rss_growth_pct", growth),
        ("rss_growth_pct_per_min", per_min),
        ("rss_late_growth_pct", late),
        ("rss_outside_store_late_growth_pct", late_outside),
        ("store_bytes_last", last.store_bytes as f64),
        ("fds_first", first.fds as f64),
        ("fds_last", last.fds as f64),
        ("fds_max", samples.iter().map(|s| s.fds).max().unwrap_or(0) as f64),
        ("fds_minus_connections_pct", fd_gap),
        ("server_connections_last", last.connections),
        ("threads_first", first.threads as f64),
        ("threads_last", last.threads as f64),
        ("threads_max", samples.iter().map(|s| s.threads).max().unwrap_or(0) as f64),
        ("samples", samples.len() as f64),
        ("load_average_max", load_max),
    ] {
        res.fig(k, v);
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    res.show(
        "server RSS first / 2nd / last / max sample",
        format!(
            "{:.1} / {:.1} / {:.1} / {:.1} MiB",
            mib(first.rss_bytes),
            mib(second.rss_bytes),
            mib(last.rss_bytes),
            mib(rss_max)
        ),
    );
    res.show("server RSS growth, 2nd sample to last", format!("{growth:+.2} % ({per_min:+.3} %/min)"));
    res.show("server RSS growth over the second half of the window", format!("{late:+.2} %"));
    if samples.iter().any(|s| s.store_bytes > 0) {
        res.show(
            "store cache and memtables first / 2nd / last (engine lsm)",
            format!(
                "{:.1} / {:.1} / {:.1} MiB",
                mib(first.store_bytes),
                mib(second.store_bytes),
                mib(last.store_bytes)
            ),
        );
        res.show("server RSS less those, growth over the second half", format!("{late_outside:+.2} %"));
    }
    res.show(
        "server open fds first / last (connections)",
        format!("{} / {} ({})", thousands(first.fds as f64), thousands(last.fds as f64), thousands(last.connections)),
    );
    res.show("server threads first / last", format!("{} / {}", first.threads, last.threads));
    res.show("load average (1 min), max of the samples", format!("{load_max:.2}"));
}

/// RSS growth from the sample at the middle of the window to the last, in percent: unlike
/// the growth from the 2nd sample, it leaves out the warm-up of bounded caches (the store's
/// page cache fills in the first minutes), so a leak shows here and a warm-up does not.
/// The middle sample is the one nearest the middle (the later one of two as near): samples
/// come a few milliseconds late, and the first one at or after the middle could be a whole
/// interval later.
pub fn late_growth_pct(samples: &[Sample]) -> f64 {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else { return 0.0 };
    let mid_t = first.t_s + (last.t_s - first.t_s) / 2.0;
    let distance = |s: &Sample| (s.t_s - mid_t).abs();
    let mid = samples.iter().fold(last, |best, s| if distance(s) <= distance(best) { s } else { best });
    (last.rss_bytes as f64 - mid.rss_bytes as f64) / mid.rss_bytes.max(1) as f64 * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_growth_leaves_out_the_warm_up() {
        let at = |t_s: f64, mib: u64| Sample { t_s, rss_bytes: mib << 20, ..Sample::default() };
        // Warm-up to 140 MiB, then flat: the late growth is 0, the growth from the 2nd is not.
        let warm: Vec<Sample> =
            [100, 110, 130, 140, 140, 140, 140].iter().enumerate().map(|(i, &m)| at(i as f64 * 60.0, m)).collect();
        assert_eq!(late_growth_pct(&warm), 0.0);
        // A steady leak shows in the second half: from the sample at minute 3 (130 MiB) to 150.
        let leak: Vec<Sample> =
            [100, 110, 120, 130, 140, 150].iter().enumerate().map(|(i, &m)| at(i as f64 * 60.0, m)).collect();
        let want = (150.0 - 130.0) / 130.0 * 100.0;
        assert!((late_growth_pct(&leak) - want).abs() < 1e-9, "{}", late_growth_pct(&leak));
        assert_eq!(late_growth_pct(&[]), 0.0);
        // Samples a little late (as a real run takes them): the middle of 0.05 .. 600.93 is
        // 300.49, and the sample at 300.32 (110 MiB) is the middle one, not the one at 360.4.
        let late: Vec<Sample> = [(0.05, 60), (240.3, 100), (300.32, 110), (360.4, 140), (600.93, 165)]
            .iter()
            .map(|&(t, m)| at(t, m))
            .collect();
        let want = (165.0 - 110.0) / 110.0 * 100.0;
        assert!((late_growth_pct(&late) - want).abs() < 1e-9, "{}", late_growth_pct(&late));
    }

    #[test]
    fn metric_sums_label_sets_and_skips_longer_names() {
        let page = "# HELP x\nsyncgate_websocket_connections 19000\n\
                    syncgate_websocket_connections_accepted_total 25000\n\
                    syncgate_messages_in_total{kind=\"api\"} 5\nsyncgate_messages_in_total{kind=\"client\"} 2\n";
        assert_eq!(metric(page, "syncgate_websocket_connections"), Some(19000.0));
        assert_eq!(metric(page, "syncgate_messages_in_total"), Some(7.0));
        assert_eq!(metric(page, "syncgate_nothing"), None);
    }
}
