//! syncgate-bench: the load generator and the standard benchmark suite.
//!
//! Map of the crate:
//! - `suite`: the standard runs (full and smoke sizes) and the targets they are checked against;
//! - `scenarios`: what each scenario (idle, fanout, direct, publish-api, resume, batch, soak) does
//!   and measures;
//! - `target`: the servers under test (syncgate, the Node `ws` baseline, cluster extension point);
//! - `fleet` / `worker` / `proto`: the generator split over worker processes (each holds at most
//!   9,500 sockets, the open-file cap being 20,000 per process), driven over stdin/stdout JSON lines;
//! - `http`: the publishers' keep-alive HTTP client; `token`: client JWTs; `hist`: latency
//!   histograms; `sys`: /proc readings and the open-file limit; `report`: JSON and markdown output.
//!
//! Everything runs on loopback, every wait is bounded, and every process it starts is stopped
//! before it exits (workers also exit by themselves when the coordinator goes away).

mod deflate_device;
mod device;
mod fleet;
mod hist;
mod http;
mod proto;
mod report;
mod scenarios;
mod suite;
mod sys;
mod target;
mod token;
mod webhooks;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::proto::TargetKind;
use crate::scenarios::{Ctx, RunSpec, Scenario};
use crate::suite::{Options, Size};
use crate::target::{Fsync, Programs, Topology};

#[derive(Parser)]
#[command(name = "syncgate-bench", version, about = "Load generator and benchmark suite for syncgate")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the standard suite and write <out>/<date>.json and .md.
    Suite(SuiteArgs),
    /// Run one scenario with the given sizes and print its figures as JSON.
    Run(RunArgs),
    /// Webhook deliveries per second, and the publish latency webhooks add (JSON).
    Webhooks(WebhooksArgs),
    /// (internal) A worker process of the generator, driven over stdin/stdout.
    #[command(hide = true)]
    Worker {
        #[arg(long, default_value_t = 1800)]
        deadline_s: u64,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// The syncgate binary under test (default: `syncgate` next to this binary).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Directory of the Node baseline (server.js, node_modules/ws).
    #[arg(long)]
    node_dir: Option<PathBuf>,
    /// Source addresses to spread device sockets over: 127.0.0.2 .. 127.0.0.(1+N).
    #[arg(long, default_value_t = 50)]
    source_ips: u8,
    /// Connection attempts in flight per worker process.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Drive an already running server at this URL (http://IP:PORT) instead of starting one;
    /// it must run with the bench's JWT secret and API key (see docs/performance.md). Its own
    /// settings apply: `--fsync` cannot change its `store.fsync` (the default, `always`).
    #[arg(long, requires = "pid")]
    url: Option<String>,
    /// Process id of the server given with --url, for the CPU and memory readings.
    #[arg(long)]
    pid: Option<u32>,
    /// Hard limit on any worker process's life, seconds.
    #[arg(long, default_value_t = 1800)]
    worker_deadline_s: u64,
    /// The embedded store's engine of the syncgate servers started (`store.engine`; default:
    /// the server's default, `auto`: lsm on the bench's new data dirs). Each result notes it when set.
    #[arg(long, value_enum)]
    store_engine: Option<EngineArg>,
}

#[derive(Clone, Copy, ValueEnum)]
enum EngineArg {
    Redb,
    Lsm,
}

#[derive(Args)]
struct SuiteArgs {
    #[command(flatten)]
    common: Common,
    /// Tiny sizes, ~1 s per run (the CI smoke test): proves the harness, measures nothing.
    #[arg(long)]
    smoke: bool,
    /// Skip the Node `ws` baseline.
    #[arg(long)]
    no_node: bool,
    /// Add the cluster runs (3 nodes + Redis); needs cluster mode in the server.
    #[arg(long)]
    cluster: bool,
    /// Only these run ids (comma-separated), e.g. idle,fanout-10.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write the results.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// File name (without extension); default: today's date (UTC).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Args)]
struct WebhooksArgs {
    #[command(flatten)]
    common: Common,
    /// Webhooks queued, then drained, for the deliveries-per-second figure.
    #[arg(long, default_value_t = 20_000)]
    events: u64,
    /// Timed publishes per latency run.
    #[arg(long, default_value_t = 3000)]
    samples: u64,
    /// Timed publishes per second, and the rate of each background load.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScenarioName {
    Idle,
    Fanout,
    Direct,
    PublishApi,
    Resume,
    Batch,
    Soak,
}

#[derive(Clone, Copy, ValueEnum)]
enum TargetArg {
    Syncgate,
    NodeWs,
}

#[derive(Clone, Copy, ValueEnum)]
enum FsyncArg {
    Never,
    Always,
}

#[derive(Args)]
struct RunArgs {
    scenario: ScenarioName,
    #[command(flatten)]
    common: Common,
    #[arg(long, value_enum, default_value = "syncgate")]
    target: TargetArg,
    /// Connections (idle, fanout, soak), users (direct, batch), devices (resume), clients (publish-api).
    #[arg(long, short = 'n', default_value_t = 1000)]
    conns: usize,
    /// Messages per second (fanout, direct; soak: to single users, default 200); fanout
    /// without it: saturation.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of publishing (fanout, direct, publish-api, soak) or of holding (idle).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Saturation fanout: messages not yet received by everyone, at most.
    #[arg(long, default_value_t = 64)]
    window: u64,
    /// Batch publishes timed at each size (batch).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Messages each device misses (resume).
    #[arg(long, default_value_t = 20)]
    missed: u64,
    /// Size of each message's data, bytes.
    #[arg(long, default_value_t = 100)]
    msg_bytes: usize,
    #[arg(long, value_enum, default_value = "never")]
    fsync: FsyncArg,
    /// publish-api: live-only messages (`"persist":false`), no store write.
    #[arg(long)]
    transient: bool,
    /// fanout: devices negotiate permessage-deflate (compression applies to messages of at
    /// least the server's `compression.min_bytes`, 1024 by default: pair with --msg-bytes).
    #[arg(long)]
    deflate: bool,
    /// Run against this many syncgate nodes sharing a Redis (cluster mode).
    #[arg(long)]
    cluster_nodes: Option<usize>,
    /// Pin the server to CPU 0 and the generator's workers to CPU 1.
    #[arg(long)]
    pin: bool,
    #[command(flatten)]
    soak: scenarios::SoakArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Worker { deadline_s } = cli.command {
        return match worker::main(Duration::from_secs(deadline_s)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("worker: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    sys::raise_nofile_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async move {
        match cli.command {
            Cmd::Suite(a) => run_suite(a).await,
            Cmd::Run(a) => run_one(a).await,
            Cmd::Webhooks(a) => {
                let ctx = ctx(&a.common, false)?;
                let o = webhooks::Options { events: a.events, samples: a.samples, rate: a.rate };
                let r = webhooks::run(&ctx.progs, o).await?;
                println!("{}", serde_json::to_string_pretty(&r)?);
                Ok(true)
            }
            Cmd::Worker { .. } => unreachable!(),
        }
    });
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn ctx(c: &Common, want_node: bool) -> Result<Ctx> {
    let exe = std::env::current_exe()?;
    let syncgate = match &c.server {
        Some(p) => p.clone(),
        None => exe.with_file_name("syncgate"),
    };
    let external = c.url.clone().zip(c.pid);
    if external.is_none() && !syncgate.is_file() {
        bail!("syncgate binary not found at {} (build it, or pass --server)", syncgate.display());
    }
    let node_dir = if want_node {
        let d =
            c.node_dir.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/node"));
        Some(d)
    } else {
        None
    };
    let limit = sys::raise_nofile_limit();
    if limit < 10_000 {
        scenarios::log(format!("warning: open-file limit is {limit}; large runs need `ulimit -n 20000`"));
    }
    Ok(Ctx {
        progs: Programs { syncgate, node_dir, redis_server: target::find_on_path("redis-server"), external },
        local_ips: (0..c.source_ips.max(1)).map(|i| format!("127.0.0.{}", 2 + u16::from(i))).collect(),
        connect_concurrency: c.connect_concurrency,
        worker_deadline: Duration::from_secs(c.worker_deadline_s),
        store_engine: c.store_engine.map(|e| match e {
            EngineArg::Redb => "redb",
            EngineArg::Lsm => "lsm",
        }),
    })
}

async fn run_suite(a: SuiteArgs) -> Result<bool> {
    let ctx = ctx(&a.common, !a.no_node)?;
    let mut node = !a.no_node;
    if let Some(dir) = &ctx.progs.node_dir {
        if node && !dir.join("node_modules").join("ws").exists() {
            scenarios::log(format!(
                "Node baseline skipped: {}/node_modules/ws missing (scripts/bench installs it)",
                dir.display()
            ));
            node = false;
        }
    }
    let size = if a.smoke { Size::Smoke } else { Size::Full };
    let mut plan = suite::plan(&Options { size, node, cluster: a.cluster });
    if !a.only.is_empty() {
        plan.retain(|r| a.only.contains(&r.id));
        if plan.is_empty() {
            bail!("--only matched no run");
        }
    }
    // What is under test, read before the runs (other work may change the tree meanwhile).
    let date = report::now_stamp();
    let git_commit = report::git_commit();
    let syncgate_version = report::version_of(&ctx.progs.syncgate, "--version");
    let mut results = Vec::new();
    for spec in &plan {
        results.push(scenarios::run(&ctx, spec).await);
    }
    let rep = report::SuiteReport {
        date,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        size,
        git_commit,
        syncgate_binary: ctx.progs.syncgate.display().to_string(),
        syncgate_version,
        node_version: if node { report::node_version() } else { None },
        machine: report::machine(),
        targets: suite::checks(&results),
        runs: results,
    };
    let name = a.name.clone().unwrap_or_else(|| rep.date[..10].to_string());
    let (json, md) = report::write(&rep, &a.out, &name)?;
    println!("{}", report::markdown(&rep));
    scenarios::log(format!("wrote {} and {}", json.display(), md.display()));
    Ok(rep.runs.iter().all(|r| r.ok && r.error.is_none()))
}

async fn run_one(a: RunArgs) -> Result<bool> {
    let target = match a.target {
        TargetArg::Syncgate => TargetKind::Syncgate,
        TargetArg::NodeWs => TargetKind::NodeWs,
    };
    let ctx = ctx(&a.common, target == TargetKind::NodeWs)?;
    let n = a.conns;
    let scenario = match a.scenario {
        ScenarioName::Idle => Scenario::Idle { conns: n, settle_ms: 3000, hold_s: a.duration },
        ScenarioName::Fanout => Scenario::Fanout {
            conns: n,
            rate: a.rate,
            duration_s: a.duration,
            window: a.window,
            msg_bytes: a.msg_bytes,
            deflate: a.deflate,
        },
        ScenarioName::Direct => Scenario::Direct {
            users: n,
            rate: a.rate.unwrap_or(1000.0),
            duration_s: a.duration,
            publishers: 8,
            msg_bytes: a.msg_bytes,
        },
        ScenarioName::PublishApi => Scenario::PublishApi {
            clients: n,
            users: 1000,
            duration_s: a.duration,
            warmup_s: 1.0,
            msg_bytes: a.msg_bytes,
            persist: !a.transient,
        },
        ScenarioName::Resume => Scenario::Resume { devices: n, missed: a.missed, msg_bytes: a.msg_bytes },
        ScenarioName::Batch => Scenario::Batch { users: n, rounds: a.rounds, msg_bytes: a.msg_bytes },
        ScenarioName::Soak => Scenario::Soak(a.soak.params(n, a.duration, a.rate, a.msg_bytes)),
    };
    if target == TargetKind::NodeWs && !scenario.node_can_run() {
        bail!("the Node baseline only runs idle, fanout and publish-api");
    }
    let spec = RunSpec {
        id: scenario.name().to_string(),
        title: format!("{} (ad hoc)", scenario.name()),
        target,
        topology: a.cluster_nodes.map_or(Topology::Single, |nodes| Topology::Cluster { nodes }),
        fsync: match a.fsync {
            FsyncArg::Never => Fsync::Never,
            FsyncArg::Always => Fsync::Always,
        },
        scenario,
        pinned: a.pin,
    };
    let mut r = scenarios::run(&ctx, &spec).await;
    if a.common.url.is_some() {
        // The bench cannot set a running server's store.fsync: its own settings apply.
        r.notes.push(
            "driven at --url: the server's own store.fsync applied, not --fsync (the fsync field is the flag's)".into(),
        );
    }
    println!("{}", serde_json::to_string_pretty(&r).context("encoding the result")?);
    for (k, v) in report::brief(&r) {
        eprintln!("  {k}: {v}");
    }
    Ok(r.ok && r.error.is_none())
}
