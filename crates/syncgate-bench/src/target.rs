//! The servers under test: started fresh for every run (clean memory, clean CPU counters,
//! empty store), measured through /proc, stopped at the end.
//!
//! A [`ServerSet`] is what a run talks to: one syncgate node today, or the Node.js `ws`
//! baseline. Cluster mode is the extension point: [`Topology::Cluster`] starts a Redis and
//! several nodes pointed at it; devices are spread over the nodes' URLs, publishes go to
//! the first node, and CPU and memory are summed over the nodes.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::proto::TargetKind;

/// The HS256 secret and API key every server under test runs with.
pub const JWT_SECRET: &str = "syncgate-bench-jwt-secret-not-for-production";
pub const API_KEY: &str = "sk_bench_0123456789";

/// The store's fsync policy for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    Never,
    Always,
}

impl Fsync {
    pub fn as_str(self) -> &'static str {
        match self {
            Fsync::Never => "never",
            Fsync::Always => "always",
        }
    }
}

/// How many syncgate nodes a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum Topology {
    Single,
    /// `nodes` syncgate nodes sharing one Redis (SYNCGATE_REDIS_URL).
    Cluster {
        nodes: usize,
    },
}

/// One process under test, with its output kept (last lines) for error messages.
pub struct Proc {
    pub name: String,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    child: Child,
    log: Arc<Mutex<VecDeque<String>>>,
    _data: Option<tempfile::TempDir>,
}

/// Where to find the programs under test.
#[derive(Debug, Clone)]
pub struct Programs {
    pub syncgate: PathBuf,
    /// bench/node (server.js and node_modules/ws), when the Node baseline is wanted.
    pub node_dir: Option<PathBuf>,
    pub redis_server: Option<PathBuf>,
    /// Drive an already running server instead (`http://IP:PORT`, and its pid for the
    /// /proc readings); it must use the bench credentials (`JWT_SECRET`, `API_KEY`).
    pub external: Option<(String, u32)>,
}

fn keep_lines(
    r: impl Read + Send + 'static,
    log: Arc<Mutex<VecDeque<String>>>,
    found: std::sync::mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if let Some(i) = line.find("listening on http://") {
                let rest = &line[i + "listening on ".len()..];
                let url: String = rest.chars().take_while(|c| !c.is_whitespace() && *c != '"' && *c != ')').collect();
                let _ = found.send(url.trim_end_matches('/').to_string());
            }
            let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
            if l.len() >= 50 {
                l.pop_front();
            }
            l.push_back(line);
        }
    });
}

impl Proc {
    /// Starts `cmd` and waits until it prints `listening on http://ADDR`.
    fn spawn(name: &str, mut cmd: Command, data: Option<tempfile::TempDir>) -> Result<Proc> {
        if let Some(cpu) = crate::sys::pinned_cpu(crate::sys::Side::Server) {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure only makes one async-signal-safe system call.
            unsafe {
                cmd.pre_exec(move || crate::sys::pin_self(cpu));
            }
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(out) = child.stdout.take() {
            keep_lines(out, log.clone(), tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            keep_lines(err, log.clone(), tx);
        }
        let pid = child.id();
        let mut p = Proc { name: name.to_string(), pid, base: String::new(), child, log, _data: data };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => p.base = url,
            Err(_) => {
                let tail = p.log_tail();
                p.kill();
                bail!("{name} did not report its address within 30 s; its output:\n{tail}");
            }
        }
        Ok(p)
    }

    /// A syncgate node with a fresh data dir, the bench credentials, rate limits off.
    pub fn syncgate(progs: &Programs, fsync: Fsync, instance: &str, extra: &[(String, String)]) -> Result<Proc> {
        let data = tempfile::Builder::new().prefix("syncgate-bench-").tempdir()?;
        let mut cmd = Command::new(&progs.syncgate);
        cmd.arg("serve");
        // Stray SYNCGATE_* variables of the caller's shell would change the server under
        // test (and unknown ones are refused): start from none.
        for (k, _) in std::env::vars() {
            if k.starts_with("SYNCGATE_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("SYNCGATE_LISTEN", "127.0.0.1:0")
            .env("SYNCGATE_DATA_DIR", data.path())
            .env("SYNCGATE_JWT_SECRET", JWT_SECRET)
            .env("SYNCGATE_API_KEY", API_KEY)
            .env("SYNCGATE_INSTANCE_ID", instance)
            .env("SYNCGATE_LOG", "warn")
            .env("SYNCGATE_STORE__FSYNC", fsync.as_str())
            .env("SYNCGATE_RATE_LIMITS__WS_CONNECT_PER_USER", "off")
            .env("SYNCGATE_RATE_LIMITS__CLIENT_FRAMES", "off")
            .env("SYNCGATE_RATE_LIMITS__API_PER_KEY", "off");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Proc::spawn(&format!("syncgate {instance}"), cmd, Some(data))
    }

    /// The Node.js `ws` baseline (bench/node/server.js).
    pub fn node(node_dir: &Path) -> Result<Proc> {
        if !node_dir.join("node_modules").join("ws").exists() {
            bail!("{}: node_modules/ws missing (run `npm ci` there; scripts/bench does)", node_dir.display());
        }
        let mut cmd = Command::new("node");
        cmd.arg("server.js").current_dir(node_dir).env("PORT", "0");
        Proc::spawn("node-ws", cmd, None)
    }

    /// A throwaway Redis on a free port (cluster runs).
    pub fn redis(bin: &Path) -> Result<Proc> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = Command::new(bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Proc {
            name: "redis".into(),
            pid: child.id(),
            base: format!("redis://127.0.0.1:{port}"),
            child,
            log: Arc::default(),
            _data: None,
        })
    }

    pub fn log_tail(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns the exit status if it exited by itself.
    pub fn stop(mut self, grace: Duration) -> Option<ExitStatus> {
        crate::sys::terminate(self.pid);
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    eprintln!("{} did not stop within {grace:?}: killing it", self.name);
                    self.kill();
                    return None;
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// The processes a run talks to.
pub struct ServerSet {
    pub kind: TargetKind,
    pub nodes: Vec<Proc>,
    pub redis: Option<Proc>,
    /// An already running server (see `Programs::external`), not started nor stopped here.
    pub external: Option<(String, u32)>,
}

impl ServerSet {
    pub fn start(
        progs: &Programs,
        kind: TargetKind,
        topology: Topology,
        fsync: Fsync,
        extra: &[(String, String)],
    ) -> Result<ServerSet> {
        if let Some(ext) = &progs.external {
            return Ok(ServerSet { kind, nodes: Vec::new(), redis: None, external: Some(ext.clone()) });
        }
        match (kind, topology) {
            (TargetKind::NodeWs, Topology::Single) => {
                let dir = progs.node_dir.as_deref().ok_or_else(|| anyhow!("no --node-dir for the Node baseline"))?;
                Ok(ServerSet { kind, nodes: vec![Proc::node(dir)?], redis: None, external: None })
            }
            (TargetKind::NodeWs, Topology::Cluster { .. }) => bail!("the Node baseline has no cluster mode"),
            (TargetKind::Syncgate, Topology::Single) => {
                let node = Proc::syncgate(progs, fsync, "bench-1", extra)?;
                Ok(ServerSet { kind, nodes: vec![node], redis: None, external: None })
            }
            (TargetKind::Syncgate, Topology::Cluster { nodes }) => {
                let bin = progs.redis_server.as_deref().ok_or_else(|| anyhow!("redis-server not found"))?;
                let redis = Proc::redis(bin)?;
                let mut env = extra.to_vec();
                env.push(("SYNCGATE_REDIS_URL".into(), redis.base.clone()));
                let mut procs = Vec::with_capacity(nodes);
                for i in 1..=nodes {
                    procs.push(Proc::syncgate(progs, fsync, &format!("bench-{i}"), &env)?);
                }
                Ok(ServerSet { kind, nodes: procs, redis: Some(redis), external: None })
            }
        }
    }

    /// The URLs devices connect to (spread round-robin).
    pub fn urls(&self) -> Vec<String> {
        match &self.external {
            Some((url, _)) => vec![url.clone()],
            None => self.nodes.iter().map(|p| p.base.clone()).collect(),
        }
    }

    /// Where publishes go.
    pub fn publish_base(&self) -> &str {
        match &self.external {
            Some((url, _)) => url,
            None => &self.nodes[0].base,
        }
    }

    /// The processes whose CPU and memory a run reports (not Redis).
    pub fn pids(&self) -> Vec<u32> {
        match &self.external {
            Some((_, pid)) => vec![*pid],
            None => self.nodes.iter().map(|p| p.pid).collect(),
        }
    }

    pub fn rss_bytes(&self) -> Result<u64> {
        self.pids().iter().map(|p| crate::sys::rss_bytes(*p)).sum()
    }

    /// A CPU meter on the Redis of a cluster run.
    pub fn redis_meter(&self) -> Option<crate::sys::CpuMeter> {
        self.redis.as_ref().and_then(|r| crate::sys::CpuMeter::start(&[r.pid]).ok())
    }

    /// The last lines the first node printed (for error reports).
    pub fn log_tail(&self) -> String {
        self.nodes.first().map(Proc::log_tail).unwrap_or_default()
    }

    /// Fails with the server's last output if a node has died.
    pub fn check_alive(&mut self) -> Result<()> {
        for p in &mut self.nodes {
            if !p.is_running() {
                bail!("{} exited during the run; its output:\n{}", p.name, p.log_tail());
            }
        }
        Ok(())
    }

    /// Stops every process (SIGTERM, bounded wait, then SIGKILL).
    pub fn stop(self) {
        for p in self.nodes {
            let name = p.name.clone();
            match p.stop(Duration::from_secs(20)) {
                Some(st) if !st.success() => eprintln!("{name} exited with {st}"),
                _ => {}
            }
        }
        if let Some(r) = self.redis {
            r.stop(Duration::from_secs(5));
        }
    }
}

/// `redis-server` on PATH, if any.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}
