//! Smoke test of the benchmark harness: every scenario of the suite at tiny sizes (20
//! connections, about a second each, the soak 3 s) against the debug `syncgate` binary, so
//! the harness cannot rot. It checks that every run delivered everything it should (counts),
//! never how fast: timing assertions make CI flaky. The Node baseline is not part of it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The `syncgate` binary of the same profile as this test (`cargo test --workspace` builds
/// it); built on demand when missing (e.g. `cargo test -p syncgate-bench` alone).
fn syncgate_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SYNCGATE_BIN") {
        return PathBuf::from(p);
    }
    let bench = Path::new(env!("CARGO_BIN_EXE_syncgate-bench"));
    let bin = bench.with_file_name(format!("syncgate{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "syncgate", "--bin", "syncgate"]);
        if bench.parent().and_then(Path::file_name).is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("running cargo build -p syncgate");
        assert!(st.success(), "cargo build -p syncgate failed");
    }
    assert!(bin.is_file(), "syncgate binary not found at {}", bin.display());
    bin
}

#[test]
fn every_scenario_delivers_at_smoke_size() {
    let server = syncgate_binary();
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // The cluster runs need a redis-server (scripts/test installs one).
    let cluster =
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("redis-server").is_file()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_syncgate-bench"));
    cmd.args(["suite", "--smoke", "--no-node", "--worker-deadline-s", "120", "--name", "smoke"]);
    if cluster {
        cmd.arg("--cluster");
    }
    let run = cmd.arg("--server").arg(&server).arg("--out").arg(out.path()).output().expect("running syncgate-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    let json = std::fs::read_to_string(out.path().join("smoke.json"))
        .unwrap_or_else(|e| panic!("no results written ({e}); stderr:\n{stderr}"));
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let runs = report["runs"].as_array().unwrap();
    let ids: Vec<&str> = runs.iter().filter_map(|r| r["id"].as_str()).collect();
    for want in [
        "idle",
        "fanout-10",
        "fanout-10-pinned",
        "fanout-sat",
        "direct",
        "publish-api",
        "publish-api-durable",
        "publish-api-transient",
        "resume",
        "batch",
        "soak",
    ] {
        assert!(ids.contains(&want), "run {want} missing from {ids:?}");
    }
    for r in runs {
        let id = r["id"].as_str().unwrap_or("?");
        assert!(r["error"].is_null(), "run {id} failed: {}\nstderr:\n{stderr}", r["error"]);
        assert_eq!(r["ok"], true, "run {id} did not deliver everything: {}\nstderr:\n{stderr}", r["notes"]);
        let f = &r["figures"];
        match id {
            "idle" => assert_eq!(f["connections"], 20.0, "{id}: {f}"),
            "fanout-10" | "fanout-10-pinned" | "fanout-sat" | "cluster-fanout-10" => {
                assert!(f["published"].as_f64().unwrap() >= 1.0, "{id}: {f}");
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
                assert_eq!(r["pinned"], id == "fanout-10-pinned" && cpus >= 2, "{id}: pinned");
                assert_eq!(f["delivered"], f["expected"], "{id}: {f}");
            }
            "direct" | "cluster-direct" => assert_eq!(f["delivered"], f["published"], "{id}: {f}"),
            "resume" | "cluster-resume" => {
                assert_eq!(f["replayed"], 100.0, "{id}: {f}");
                assert_eq!(f["resumed_announced"], 100.0, "{id}: {f}");
            }
            "batch" | "cluster-batch" => {
                // One untimed batch, then 2 timed ones to all 20 users and 2 to 2 of them.
                assert_eq!(
                    (&f["accepted"], &f["batch_full_users"], &f["batch_tenth_users"]),
                    (&5.0.into(), &20.0.into(), &2.0.into()),
                    "{id}: {f}"
                );
            }
            "soak" => {
                // 20 devices for 3 s, 4 of the 10 odd ones closed and reopened each second:
                // every device ends with every message published to it, none twice.
                assert_eq!(f["connections"], 20.0, "{id}: {f}");
                assert!(f["churn_closed"].as_f64().unwrap() >= 4.0, "{id}: {f}");
                assert_eq!(f["churn_reopened"], f["churn_closed"], "{id}: {f}");
                assert!(f["published_user"].as_f64().unwrap() >= 1.0, "{id}: {f}");
                assert!(f["published_room"].as_f64().unwrap() >= 1.0, "{id}: {f}");
                assert_eq!(f["devices_complete"], 20.0, "{id}: {f}");
                for zero in ["gaps", "duplicates", "missing", "extra", "lost", "churn_failed"] {
                    assert_eq!(f[zero], 0.0, "{id}: {zero}: {f}");
                }
                assert!(r["samples"].as_array().unwrap().len() >= 2, "{id}: {}", r["samples"]);
            }
            _ => assert!(f["accepted"].as_f64().unwrap() >= 1.0, "{id}: {f}"),
        }
    }
    assert!(run.status.success(), "syncgate-bench exited with {}; stderr:\n{stderr}", run.status);
    assert!(out.path().join("smoke.md").is_file());
    eprintln!("smoke suite took {:.1} s", started.elapsed().as_secs_f64());
    assert!(started.elapsed() < Duration::from_secs(120));
}
