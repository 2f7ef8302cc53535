//! A worker process: holds up to ~9,500 device connections (the open-file cap is 20,000
//! per process, so one process cannot hold a whole run) and counts what they receive.
//!
//! Runs on a single-threaded tokio runtime: the machine is small and shared with the server
//! under test, and one thread per worker keeps the generator's own cost low and even.
//! Commands come on stdin, answers and ticks go to stdout (see `proto`). The worker exits
//! when stdin closes (the coordinator is gone) or when its deadline passes, whatever it is
//! doing: nothing outlives a run.
//!
//! The soak scenario's devices, which come and go and check sequence numbers, are in `soak`.

mod soak;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use syncgate_client::{DeviceOptions, Message, WsStream};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

use crate::deflate_device::{self, DeflateWs, Next};
use crate::device::OpenError;
use crate::hist::Latency;
use crate::proto::{Command, ConnectSpec, Event, Report, TargetKind, Tick, TICK_MS};
use crate::token::Minter;

/// Entry point of `syncgate-bench worker`.
pub fn main(deadline: Duration) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(deadline))
}

fn send(ev: &Event) {
    let line = serde_json::to_string(ev).unwrap_or_else(|e| format!("{{\"ev\":\"error\",\"message\":\"{e}\"}}"));
    let mut out = std::io::stdout().lock();
    // The coordinator gone means there is nobody left to work for.
    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
        std::process::exit(0);
    }
}

#[derive(Default)]
struct State {
    /// Incremented by every Connect: tasks of an earlier set stop counting.
    generation: u64,
    received: u64,
    last_seq: Vec<u64>,
    alive: Vec<bool>,
    counts: Vec<u64>,
    expect: u64,
    caught_up: u64,
    last_caught_up_ns: u64,
    latency: Latency,
    open: u64,
    lost: u64,
    close_codes: BTreeMap<u16, u64>,
    /// Bytes of event frames received since the last reset.
    wire_bytes: u64,
}

impl State {
    fn tick(&self) -> Tick {
        let low = self.last_seq.iter().zip(&self.alive).filter(|(_, a)| **a).map(|(s, _)| *s).min().unwrap_or(u64::MAX);
        Tick { received: self.received, low, caught_up: self.caught_up, open: self.open, lost: self.lost }
    }

    fn on_event(&mut self, generation: u64, idx: usize, text: &[u8]) {
        if generation != self.generation {
            return;
        }
        self.received += 1;
        let now = crate::sys::unix_ns();
        let (t, s) = stamp(text);
        if let Some(t) = t {
            self.latency.record_us(now.saturating_sub(t) / 1000);
        }
        if let (Some(s), Some(last)) = (s, self.last_seq.get_mut(idx)) {
            *last = (*last).max(s);
        }
        if let Some(c) = self.counts.get_mut(idx) {
            *c += 1;
            if self.expect > 0 && *c == self.expect {
                self.caught_up += 1;
                self.last_caught_up_ns = now;
            }
        }
    }

    fn on_end(&mut self, generation: u64, idx: usize, code: Option<u16>, by_server: bool) {
        if generation != self.generation {
            return;
        }
        self.open = self.open.saturating_sub(1);
        if let Some(a) = self.alive.get_mut(idx) {
            *a = false;
        }
        if by_server {
            self.lost += 1;
            *self.close_codes.entry(code.unwrap_or(0)).or_default() += 1;
        }
    }
}

/// Finds `"key":` in `buf` at or after `from` and parses the unsigned integer after it.
fn number_after(buf: &[u8], from: usize, key: &[u8]) -> Option<u64> {
    let pos = buf.get(from..)?.windows(key.len()).position(|w| w == key)? + from + key.len();
    let digits = buf[pos..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&buf[pos..pos + digits]).ok()?.parse().ok()
}

/// The publish time (`t`, unix ns) and sequence number (`s`) the suite puts in each
/// message's `data`. Scans the raw frame instead of parsing it: the generator shares the
/// machine with the server, so its own cost per message is kept small.
pub fn stamp(text: &[u8]) -> (Option<u64>, Option<u64>) {
    let Some(data) = text.windows(7).position(|w| w == b"\"data\":") else {
        return (None, None);
    };
    (number_after(text, data, b"\"t\":"), number_after(text, data, b"\"s\":"))
}

async fn run(deadline: Duration) -> Result<()> {
    tokio::task::spawn_local(async move {
        tokio::time::sleep(deadline).await;
        eprintln!("syncgate-bench worker {}: deadline of {deadline:?} reached, exiting", std::process::id());
        std::process::exit(3);
    });
    let state = Rc::new(RefCell::new(State::default()));
    let soak = soak::Shared::default();
    let (stop_tx, stop_rx) = watch::channel(0u64);
    send(&Event::Ready { pid: std::process::id() });
    {
        let state = state.clone();
        tokio::task::spawn_local(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(TICK_MS));
            loop {
                iv.tick().await;
                let t = state.borrow().tick();
                send(&Event::Tick(t));
            }
        });
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.context("reading commands")? {
        if line.trim().is_empty() {
            continue;
        }
        let cmd: Command = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(e) => {
                send(&Event::Error { message: format!("bad command: {e}") });
                continue;
            }
        };
        match cmd {
            Command::Connect(spec) => {
                let ev = connect_all(spec, &state, &stop_rx).await;
                send(&ev);
            }
            Command::Reset => {
                let mut s = state.borrow_mut();
                s.received = 0;
                s.caught_up = 0;
                s.last_caught_up_ns = 0;
                s.latency.reset();
                s.wire_bytes = 0;
                s.counts.iter_mut().for_each(|c| *c = 0);
                drop(s);
                send(&Event::Done);
            }
            Command::Report => {
                let s = state.borrow();
                send(&Event::Report(Report {
                    tick: s.tick(),
                    latency: s.latency.export(),
                    last_caught_up_ns: s.last_caught_up_ns,
                    close_codes: s.close_codes.iter().map(|(c, n)| (*c, *n)).collect(),
                    wire_bytes: s.wire_bytes,
                }));
            }
            Command::Disconnect => {
                stop_tx.send_modify(|g| *g += 1);
                let until = Instant::now() + Duration::from_secs(10);
                while state.borrow().open > 0 && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                send(&Event::Done);
            }
            Command::SoakSetup(spec) => match soak.borrow_mut().setup(spec) {
                Ok(()) => send(&Event::Done),
                Err(message) => send(&Event::Error { message }),
            },
            Command::SoakCycle { close, open } => send(&soak::cycle(&soak, &state, &stop_rx, close, open).await),
            Command::SoakCheck(expect) => send(&soak::check(&soak, &expect)),
            Command::Exit => break,
        }
    }
    // stdin closed or Exit: the kernel closes whatever is still open.
    std::process::exit(0);
}

async fn connect_all(spec: ConnectSpec, state: &Rc<RefCell<State>>, stop: &watch::Receiver<u64>) -> Event {
    let started = Instant::now();
    let ips: Vec<IpAddr> = match spec.local_ips.iter().map(|s| s.parse()).collect::<Result<_, _>>() {
        Ok(v) => v,
        Err(e) => return Event::Error { message: format!("bad local ip: {e}") },
    };
    if spec.urls.is_empty() {
        return Event::Error { message: "no server url".into() };
    }
    let generation = {
        let mut s = state.borrow_mut();
        s.generation += 1;
        s.last_seq = vec![0; spec.count];
        s.alive = vec![false; spec.count];
        s.counts = vec![0; spec.count];
        s.expect = spec.expect_events;
        s.caught_up = 0;
        s.last_caught_up_ns = 0;
        s.received = 0;
        s.open = 0;
        s.lost = 0;
        s.close_codes.clear();
        s.latency.reset();
        s.generation
    };
    let rooms = spec.room.iter().cloned().collect();
    let minter = Rc::new(Minter::new(&spec.jwt_secret, 6 * 3600, rooms));
    let spec = Rc::new(spec);
    let ips = Rc::new(ips);
    let results: Vec<Result<u64, String>> = futures_util::stream::iter(0..spec.count)
        .map(|j| {
            let (spec, ips, minter, state, stop) =
                (spec.clone(), ips.clone(), minter.clone(), state.clone(), stop.clone());
            async move {
                let i = spec.first + j;
                let mut last = String::new();
                for attempt in 0..3u64 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                    match open_one(&spec, i, &ips, &minter).await {
                        Ok((ws, resumed, early)) => {
                            {
                                let mut s = state.borrow_mut();
                                s.open += 1;
                                s.alive[j] = true;
                                for text in early {
                                    s.on_event(generation, j, text.as_bytes());
                                }
                            }
                            // Only a Disconnect sent after this connection opened stops it: the
                            // receiver is a clone of one that has not seen earlier ones. Marked
                            // here, not in the task, which may first run after the next command.
                            let mut stop = stop;
                            stop.borrow_and_update();
                            tokio::task::spawn_local(recv_loop(ws, j, generation, state, stop));
                            return Ok(resumed);
                        }
                        // A refusal (401, 429, 503...) will not get better by retrying.
                        Err(e @ OpenError::Refused(..)) => return Err(e.to_string()),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(last)
            }
        })
        .buffer_unordered(spec.concurrency.max(1))
        .collect()
        .await;
    let mut ok = 0;
    let mut resumed = 0;
    let mut errors: Vec<String> = Vec::new();
    for r in &results {
        match r {
            Ok(n) => {
                ok += 1;
                resumed += n;
            }
            Err(e) => {
                if errors.len() < 5 && !errors.contains(e) {
                    errors.push(e.clone());
                }
            }
        }
    }
    Event::Connected {
        ok,
        failed: results.len() as u64 - ok,
        resumed,
        errors,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

/// Opens device `i` (see `device`). Returns the stream, the welcome's `resumed` count,
/// and events read ahead while waiting for the join reply.
async fn open_one(
    spec: &ConnectSpec,
    i: usize,
    ips: &[IpAddr],
    minter: &Minter,
) -> Result<(Dev, u64, Vec<String>), OpenError> {
    let user = format!("{}{i}", spec.user_prefix);
    let token = minter.token(&user).map_err(|e| OpenError::Other(e.to_string()))?;
    let mut opts = DeviceOptions::new(token);
    if spec.client_ids {
        opts = opts.client_id(format!("d-{i}"));
    }
    let url = &spec.urls[i % spec.urls.len()];
    let ip = ips.get(i % ips.len().max(1)).copied();
    let timeout = Duration::from_millis(spec.timeout_ms);
    if spec.deflate && spec.kind == TargetKind::Syncgate {
        let (ws, welcome, early) = deflate_device::open(url, &opts, ip, spec.room.as_deref(), timeout).await?;
        return Ok((Dev::Deflate(Box::new(ws)), welcome.map_or(0, |w| w.resumed), early));
    }
    let o = match spec.kind {
        TargetKind::NodeWs => crate::device::open(url, &opts, ip, false, None, timeout).await?,
        TargetKind::Syncgate => crate::device::open(url, &opts, ip, true, spec.room.as_deref(), timeout).await?,
    };
    Ok((Dev::Plain(o.ws), o.welcome.map_or(0, |w| w.resumed), o.early))
}

/// A device's connection: tungstenite, or the permessage-deflate device (boxed, so the
/// common plain device stays one allocation).
#[allow(clippy::large_enum_variant)]
enum Dev {
    Plain(WsStream),
    Deflate(Box<DeflateWs>),
}

impl Dev {
    async fn next(&mut self) -> Next {
        match self {
            Dev::Plain(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let n = t.len();
                        let header = if n < 126 {
                            2
                        } else if n <= 65535 {
                            4
                        } else {
                            10
                        };
                        return Next::Text(t.as_bytes().to_vec(), n + header);
                    }
                    Some(Ok(Message::Close(cf))) => return Next::Close(cf.map(|f| u16::from(f.code))),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Next::Gone,
                }
            },
            Dev::Deflate(ws) => ws.next().await,
        }
    }

    async fn close(&mut self) {
        match self {
            Dev::Plain(ws) => {
                let _ = ws.close(None).await;
            }
            Dev::Deflate(ws) => ws.close().await,
        }
    }
}

async fn recv_loop(
    mut ws: Dev,
    idx: usize,
    generation: u64,
    state: Rc<RefCell<State>>,
    mut stop: watch::Receiver<u64>,
) {
    let (code, by_server) = loop {
        tokio::select! {
            m = ws.next() => match m {
                Next::Text(t, wire) => {
                    let mut s = state.borrow_mut();
                    s.wire_bytes += wire as u64;
                    s.on_event(generation, idx, &t);
                }
                Next::Close(code) => break (code, true),
                Next::Gone => break (None, true),
            },
            _ = stop.changed() => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close()).await;
                break (None, false);
            }
        }
    };
    state.borrow_mut().on_end(generation, idx, code, by_server);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_reads_data_fields() {
        let f = br#"{"op":"event","id":"e.r.7","stream":"room:bench","type":"bench","data":{"t":1763784000123456789,"s":42,"p":"xx"},"ts":1}"#;
        assert_eq!(stamp(f), (Some(1763784000123456789), Some(42)));
        assert_eq!(stamp(br#"{"op":"pong","ts":5}"#), (None, None));
        assert_eq!(stamp(br#"{"data":{"x":1}}"#), (None, None));
    }
}
