//! Benchmark of the embedded store: persisted appends per second with `FsyncPolicy::Always`
//! from concurrent publishers (one event per call, so group commit is what batches them),
//! then read speed of a 100k-event stream in pages of 500.
//!
//!     cargo run --release --example store_bench [-- DIR]
//!
//! DIR (default: a new temporary dir) must be on the disk you want to measure: a tmpfs makes
//! fsync free. Tune with STORE_BENCH_PUBLISHERS (64), STORE_BENCH_SECS (5) and
//! STORE_BENCH_FSYNC (always; `never` shows the cost of fsync by difference) and
//! STORE_BENCH_ENGINE (lsm; `redb` for the B-tree engine).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use syncgate::store::embedded::{EmbeddedOptions, EmbeddedStore, Engine, FsyncPolicy};
use syncgate::store::{NewEvent, Store, StoreError};

const READ_EVENTS: u64 = 100_000;
const PAGE: usize = 500;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn event(stream: String, i: u64) -> NewEvent {
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let data = format!(r#"{{"playlist_id":"pl-{i}","name":"Road trip","tracks":["t1","t2","t3"],"rev":{i}}}"#);
    NewEvent { stream, kind: "playlist.updated".into(), data: Bytes::from(data), ts, ttl: None }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let dir = std::env::args().nth(1).map_or_else(|| tmp.path().to_path_buf(), Into::into);
    let publishers = env_or("STORE_BENCH_PUBLISHERS", 64);
    let secs = env_or("STORE_BENCH_SECS", 5);
    let fsync = match std::env::var("STORE_BENCH_FSYNC").as_deref() {
        Ok("never") => FsyncPolicy::Never,
        _ => FsyncPolicy::Always,
    };
    let engine = match std::env::var("STORE_BENCH_ENGINE").as_deref() {
        Ok("redb") => Engine::Redb,
        _ => Engine::Lsm,
    };
    println!("store_bench: dir {}, engine {engine:?}, fsync {fsync:?}", dir.display());

    // 1. Persisted appends: every answer means the event was fsynced.
    let store = Arc::new(EmbeddedStore::open(EmbeddedOptions {
        engine,
        fsync,
        max_batch: 1024,
        ..EmbeddedOptions::new(dir.join("appends"))
    })?);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let (store, stop) = (store.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                store.append_user(vec![event(format!("user-{}", (p * 7919 + i) % 1000), i)]).await?;
                latencies.push(t.elapsed());
                i += 1;
            }
            Ok::<_, StoreError>(latencies)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let stats = store.stats().await?;
    store.close().await?;
    println!(
        "appends (fsync {fsync:?}, {publishers} publishers, 1 event/call): {} in {elapsed:.1} s = {:.0} appends/s; \
         latency p50 {:.2} ms, p99 {:.2} ms; stored {}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        stats.stored_messages,
    );

    // 2. Reads: one 100k-event stream, written in big batches, read in pages of 500.
    let store = EmbeddedStore::open(EmbeddedOptions {
        engine,
        fsync: FsyncPolicy::Never,
        max_batch: 4096,
        ..EmbeddedOptions::new(dir.join("reads"))
    })?;
    for chunk in 0..READ_EVENTS / 1000 {
        store.append_user((0..1000).map(|i| event("reader".into(), chunk * 1000 + i)).collect()).await?;
    }
    let started = Instant::now();
    let (mut after, mut read) = (0, 0u64);
    loop {
        let page = store.read_user("reader", after, PAGE).await?;
        let Some(last) = page.events.last() else {
            break;
        };
        after = last.seq;
        read += page.events.len() as u64;
    }
    let elapsed = started.elapsed().as_secs_f64();
    store.close().await?;
    println!(
        "reads ({READ_EVENTS}-event stream, pages of {PAGE}): {read} events in {:.3} s = {:.0} events/s",
        elapsed,
        read as f64 / elapsed
    );
    Ok(())
}
