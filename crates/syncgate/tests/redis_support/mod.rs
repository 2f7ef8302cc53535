//! Real Redis servers for tests: isolated `redis-server` processes on free loopback ports, each
//! with its own temp dir, killed when dropped (and when the test process dies: PDEATHSIG), plus
//! a three-master Redis Cluster. Never touches a Redis the machine already runs.
//!
//! Needs `redis-server` and `redis-cli` (7.0+) on the PATH; `scripts/test` installs them.
//! Used by `tests/redis_store.rs` and, through `#[path]`, by the broker's unit tests.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a server is started.
#[derive(Clone, Debug, Default)]
pub struct ServerOpts {
    /// AOF with `appendfsync always`: what was answered survives a SIGKILL.
    pub appendonly: bool,
    pub cluster: bool,
    /// `requirepass`, for tests of URL credentials.
    pub password: Option<String>,
    /// TLS only (no plain port), with a self-signed certificate made by `openssl`.
    pub tls: bool,
}

/// One `redis-server` process.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    opts: ServerOpts,
}

fn binary(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/bin", "/usr/local/bin"]) {
        let p = PathBuf::from(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found: install Redis 7 (apt-get install redis-server), or run scripts/test which does");
}

/// A port that is free now, with its cluster bus port (port + 10000) free too.
fn free_port() -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = l.local_addr().unwrap().port();
        if port > 55_000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair found");
}

impl RedisServer {
    /// A standalone server without persistence.
    pub fn start() -> Self {
        Self::start_with(ServerOpts::default())
    }

    pub fn start_with(opts: ServerOpts) -> Self {
        for attempt in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir for redis");
            let mut s = RedisServer { child: None, port: free_port(), dir, opts: opts.clone() };
            if s.spawn() {
                return s;
            }
            eprintln!("redis-server did not start on port {} (attempt {attempt}), retrying", s.port);
        }
        panic!("redis-server would not start");
    }

    /// Starts the process on `self.port` and waits for PING; false if it died or timed out.
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new(binary("redis-server"));
        if self.opts.tls {
            let (cert, key) = (self.dir.path().join("tls.crt"), self.dir.path().join("tls.key"));
            if !cert.exists() {
                let ok = Command::new(binary("openssl"))
                    .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
                    .arg("-keyout")
                    .arg(&key)
                    .arg("-out")
                    .arg(&cert)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("run openssl");
                assert!(ok.success(), "openssl could not make a test certificate");
            }
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string(), "--tls-auth-clients", "no"]);
            cmd.arg("--tls-cert-file").arg(&cert).arg("--tls-key-file").arg(&key).arg("--tls-ca-cert-file").arg(&cert);
        } else {
            cmd.arg("--port").arg(self.port.to_string());
        }
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", "redis.log"]);
        if self.opts.appendonly {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if self.opts.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
            cmd.args(["--cluster-node-timeout", "2000"]);
        }
        if let Some(p) = &self.opts.password {
            cmd.args(["--requirepass", p]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // The server dies with the thread that started it (the test), even on a panic abort.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawn redis-server"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false; // exited: port taken?
            }
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends one inline command over a fresh TCP connection; true on a `+PONG`-like answer.
    /// (With TLS: true once the port accepts connections.)
    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_millis(200))
        else {
            return false;
        };
        if self.opts.tls {
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let auth = self.opts.password.as_ref().map(|p| format!("AUTH {p}\r\n")).unwrap_or_default();
        if s.write_all(format!("{auth}PING\r\n").as_bytes()).is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.ends_with(b"PONG\r\n") || got.starts_with(b"-") && got.ends_with(b"\r\n") {
                break;
            }
        }
        got.ends_with(b"PONG\r\n")
    }

    /// `redis://127.0.0.1:PORT` (with the password when one is set).
    /// With TLS: `rediss://127.0.0.1:PORT/#insecure` (the test certificate is self-signed).
    pub fn url(&self) -> String {
        let auth = self.opts.password.as_ref().map(|p| format!(":{p}@")).unwrap_or_default();
        if self.opts.tls {
            format!("rediss://{auth}127.0.0.1:{}/#insecure", self.port)
        } else {
            format!("redis://{auth}127.0.0.1:{}", self.port)
        }
    }

    /// SIGKILL: no shutdown, no save.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and dir (keeps the AOF if enabled).
    pub fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            self.kill();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server would not restart on port {}", self.port);
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(binary("redis-cli"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(p) = &self.opts.password {
            cmd.args(["--no-auth-warning", "-a", p]);
        }
        if self.opts.tls {
            cmd.args(["--tls", "--insecure"]);
        }
        let out = cmd.args(args).output().expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters (no replicas), slots spread by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> =
            (0..3).map(|_| RedisServer::start_with(ServerOpts { cluster: true, ..Default::default() })).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new(binary("redis-cli"))
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = nodes.iter().all(|n| {
                let info = n.cli(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            });
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "cluster did not reach cluster_state:ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Every node must know every other one before clients fetch the slot map.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "NODES"]).lines().filter(|l| l.contains("connected")).count() == 3)
        {
            assert!(Instant::now() < deadline, "cluster nodes did not meet");
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisCluster { nodes }
    }

    /// The seed URLs, comma-separated (the form `RedisOptions::url` takes for a cluster).
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }
}

/// One `redis-server --sentinel` process watching a master named `name`.
pub struct SentinelProc {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl SentinelProc {
    fn start(name: &str, master_port: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for sentinel");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        let text = format!(
            "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {}\nlogfile sentinel.log\n\
             sentinel monitor {name} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 5000\n\
             sentinel parallel-syncs {name} 1\n",
            dir.path().display()
        );
        std::fs::write(&conf, text).expect("write sentinel.conf");
        let mut cmd = Command::new(binary("redis-server"));
        cmd.arg(&conf).arg("--sentinel").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn redis-server --sentinel");
        SentinelProc { child: Some(child), port, _dir: dir }
    }

    /// `SENTINEL master NAME` as field -> value.
    pub fn master_info(&self, name: &str) -> std::collections::HashMap<String, String> {
        let out = Command::new(binary("redis-cli"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "SENTINEL", "master", name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = out.lines().collect();
        lines.chunks(2).filter_map(|kv| Some((kv.first()?.to_string(), kv.get(1)?.to_string()))).collect()
    }
}

impl Drop for SentinelProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One master, one replica, three sentinels (quorum 2, down after 1 s), ready to fail over.
pub struct SentinelSetup {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<SentinelProc>,
    pub name: String,
}

impl SentinelSetup {
    pub fn start() -> Self {
        let name = "mymaster".to_string();
        let master = RedisServer::start_with(ServerOpts { appendonly: true, ..Default::default() });
        let replica = RedisServer::start_with(ServerOpts { appendonly: true, ..Default::default() });
        let ok = replica.cli(&["REPLICAOF", "127.0.0.1", &master.port.to_string()]);
        assert!(ok.contains("OK"), "REPLICAOF: {ok}");
        let sentinels: Vec<SentinelProc> = (0..3).map(|_| SentinelProc::start(&name, master.port)).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = sentinels.iter().all(|s| {
                let m = s.master_info(&name);
                m.get("num-slaves").map(String::as_str) == Some("1")
                    && m.get("num-other-sentinels").map(String::as_str) == Some("2")
            });
            let synced = replica.cli(&["INFO", "replication"]).contains("master_link_status:up");
            if ready && synced {
                break;
            }
            assert!(Instant::now() < deadline, "sentinels did not see the replica and each other in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        SentinelSetup { master, replica, sentinels, name }
    }

    /// `redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/mymaster`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        format!("redis+sentinel://{}/{}", hosts.join(","), self.name)
    }

    /// The port the sentinels name as master now.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| s.master_info(&self.name).get("port")?.parse().ok())
    }
}
