//! The coordinator's side of the worker processes: spawns them (the bench binary again,
//! as `syncgate-bench worker`), splits connections over them, and merges what they report.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use crate::hist::Latency;
use crate::proto::{Command, ConnectSpec, Event, Tick};

/// Most sockets one worker process holds (the open-file cap is 20,000 per process).
pub const MAX_PER_WORKER: usize = 9_500;

struct Worker {
    pid: u32,
    child: Child,
    stdin: ChildStdin,
    events: mpsc::UnboundedReceiver<Event>,
    tick: Arc<Mutex<Option<Tick>>>,
}

pub struct Fleet {
    workers: Vec<Worker>,
}

/// What a connect over the whole fleet gave.
#[derive(Debug, Clone, Default)]
pub struct Connected {
    pub ok: u64,
    pub failed: u64,
    pub resumed: u64,
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

/// Merged reports of every worker.
pub struct Merged {
    pub tick: Tick,
    pub latency: Latency,
    pub last_caught_up_ns: u64,
    pub close_codes: Vec<(u16, u64)>,
    /// Bytes of event frames off the wire, all workers.
    pub wire_bytes: u64,
}

impl Fleet {
    /// Workers needed for `conns` connections: at least two (so the generator uses both
    /// cores and the multi-process path is always exercised), at most 9,500 sockets each.
    pub fn workers_for(conns: usize) -> usize {
        conns.div_ceil(MAX_PER_WORKER).max(2)
    }

    /// Spawns `n` workers; each exits by itself after `deadline`.
    pub async fn spawn(n: usize, deadline: Duration) -> Result<Fleet> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let mut workers = Vec::with_capacity(n);
        let cpu = crate::sys::pinned_cpu(crate::sys::Side::Generator);
        for _ in 0..n {
            let mut cmd = tokio::process::Command::new(&exe);
            if let Some(cpu) = cpu {
                // SAFETY: the closure only makes one async-signal-safe system call.
                unsafe {
                    cmd.pre_exec(move || crate::sys::pin_self(cpu));
                }
            }
            let mut child = cmd
                .arg("worker")
                .arg("--deadline-s")
                .arg(deadline.as_secs().to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("spawning a worker process")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let (tx, rx) = mpsc::unbounded_channel();
            let tick = Arc::new(Mutex::new(None));
            let t = tick.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<Event>(&line) {
                        Ok(Event::Tick(tk)) => *t.lock().unwrap_or_else(|p| p.into_inner()) = Some(tk),
                        Ok(ev) => {
                            if tx.send(ev).is_err() {
                                break;
                            }
                        }
                        Err(e) => eprintln!("worker sent an unreadable line ({e}): {line}"),
                    }
                }
            });
            workers.push(Worker { pid: 0, child, stdin, events: rx, tick });
        }
        let mut fleet = Fleet { workers };
        for w in &mut fleet.workers {
            match recv(w, Duration::from_secs(20)).await? {
                Event::Ready { pid } => w.pid = pid,
                other => bail!("worker did not start: {other:?}"),
            }
        }
        Ok(fleet)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.pid).collect()
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Sends `cmds[i]` to worker i and waits for every answer.
    pub async fn each(&mut self, cmds: Vec<Command>, wait: Duration) -> Result<Vec<Event>> {
        for (w, cmd) in self.workers.iter_mut().zip(&cmds) {
            let mut line = serde_json::to_string(cmd)?;
            line.push('\n');
            w.stdin.write_all(line.as_bytes()).await.context("writing to a worker")?;
            w.stdin.flush().await?;
        }
        let mut out = Vec::with_capacity(cmds.len());
        for w in self.workers.iter_mut().take(cmds.len()) {
            out.push(recv(w, wait).await?);
        }
        Ok(out)
    }

    async fn all(&mut self, cmd: Command, wait: Duration) -> Result<Vec<Event>> {
        let cmds = vec![cmd; self.workers.len()];
        self.each(cmds, wait).await
    }

    /// Opens `spec.count` connections (indexes from `spec.first`), split evenly over the
    /// workers. Waits at most `wait`.
    pub async fn connect(&mut self, spec: &ConnectSpec, wait: Duration) -> Result<Connected> {
        let n = self.workers.len();
        let mut cmds = Vec::with_capacity(n);
        for w in 0..n {
            let lo = spec.count * w / n;
            let hi = spec.count * (w + 1) / n;
            let mut s = spec.clone();
            s.first = spec.first + lo;
            s.count = hi - lo;
            cmds.push(Command::Connect(s));
        }
        let mut total = Connected::default();
        for ev in self.each(cmds, wait).await? {
            match ev {
                Event::Connected { ok, failed, resumed, errors, elapsed_ms } => {
                    total.ok += ok;
                    total.failed += failed;
                    total.resumed += resumed;
                    total.elapsed = total.elapsed.max(Duration::from_millis(elapsed_ms));
                    for e in errors {
                        if total.errors.len() < 5 && !total.errors.contains(&e) {
                            total.errors.push(e);
                        }
                    }
                }
                other => bail!("connect: unexpected answer {other:?}"),
            }
        }
        Ok(total)
    }

    pub async fn reset(&mut self) -> Result<()> {
        self.all(Command::Reset, Duration::from_secs(10)).await.map(|_| ())
    }

    /// Closes every connection (and waits, bounded, until they are closed).
    pub async fn disconnect(&mut self) -> Result<()> {
        self.all(Command::Disconnect, Duration::from_secs(30)).await.map(|_| ())
    }

    /// The latest counters, summed over workers (every worker sends one every 25 ms).
    pub fn tick(&self) -> Tick {
        let mut sum = Tick { low: u64::MAX, ..Tick::default() };
        for w in &self.workers {
            let t =
                w.tick.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or(Tick { low: u64::MAX, ..Tick::default() });
            sum.received += t.received;
            sum.low = sum.low.min(t.low);
            sum.caught_up += t.caught_up;
            sum.open += t.open;
            sum.lost += t.lost;
        }
        sum
    }

    /// Waits (polling the ticks) until `done(tick)` holds, or nothing has changed for
    /// `stall`, or `max` has passed. Returns whether `done` held.
    pub async fn wait_until(&self, done: impl Fn(&Tick) -> bool, stall: Duration, max: Duration) -> bool {
        let start = tokio::time::Instant::now();
        let mut last = self.tick();
        let mut changed = start;
        loop {
            let t = self.tick();
            if done(&t) {
                return true;
            }
            if t.received != last.received || t.caught_up != last.caught_up || t.open != last.open {
                changed = tokio::time::Instant::now();
                last = t;
            }
            if changed.elapsed() > stall || start.elapsed() > max {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Reports of every worker, merged.
    pub async fn report(&mut self) -> Result<Merged> {
        let mut m = Merged {
            tick: Tick { low: u64::MAX, ..Tick::default() },
            latency: Latency::default(),
            last_caught_up_ns: 0,
            close_codes: Vec::new(),
            wire_bytes: 0,
        };
        for ev in self.all(Command::Report, Duration::from_secs(10)).await? {
            let Event::Report(r) = ev else { bail!("report: unexpected answer {ev:?}") };
            m.tick.received += r.tick.received;
            m.tick.low = m.tick.low.min(r.tick.low);
            m.tick.caught_up += r.tick.caught_up;
            m.tick.open += r.tick.open;
            m.tick.lost += r.tick.lost;
            m.latency.merge(&r.latency);
            m.last_caught_up_ns = m.last_caught_up_ns.max(r.last_caught_up_ns);
            m.wire_bytes += r.wire_bytes;
            for (code, n) in r.close_codes {
                match m.close_codes.iter_mut().find(|(c, _)| *c == code) {
                    Some((_, k)) => *k += n,
                    None => m.close_codes.push((code, n)),
                }
            }
        }
        Ok(m)
    }

    /// Asks every worker to exit; kills those that do not within a few seconds.
    pub async fn shutdown(mut self) {
        for w in &mut self.workers {
            let _ = w.stdin.write_all(b"{\"cmd\":\"exit\"}\n").await;
            let _ = w.stdin.flush().await;
        }
        for w in &mut self.workers {
            if tokio::time::timeout(Duration::from_secs(5), w.child.wait()).await.is_err() {
                let _ = w.child.kill().await;
            }
        }
    }
}

async fn recv(w: &mut Worker, wait: Duration) -> Result<Event> {
    match tokio::time::timeout(wait, w.events.recv()).await {
        Err(_) => Err(anyhow!("worker {} did not answer within {wait:?}", w.pid)),
        Ok(None) => Err(anyhow!("worker {} exited", w.pid)),
        Ok(Some(Event::Error { message })) => Err(anyhow!("worker {}: {message}", w.pid)),
        Ok(Some(ev)) => Ok(ev),
    }
}
