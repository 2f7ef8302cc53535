//! The connection loop of a [`crate::Client`]: connect with `since` = the last handled user
//! event, keep the welcome's `position` as the first checkpoint, rejoin rooms with their
//! checkpoints, forward events, answer requests, ping and watch the heartbeat, renew the
//! token with `refresh` before `exp`, send batched acks, and reconnect with backoff (at
//! once on 1001 and 4001).
//!
//! Must never: block on the application (events go through a bounded channel), or send a
//! request whose caller already gave up.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};

use crate::client::{ClientBuilder, Shared, State, TokenSource};
use crate::error::{Error, Result};
use crate::frame::{Event, Frame, Reply};
use crate::{Device, DeviceOptions};

pub(crate) enum Cmd {
    Join { room: String, since: Option<String>, reply: oneshot::Sender<Result<Reply>> },
    Leave { room: String, reply: oneshot::Sender<Result<Reply>> },
    Publish { kind: String, data: Value, room: Option<String>, reply: oneshot::Sender<Result<Reply>> },
    Close(oneshot::Sender<()>),
}

enum Pending {
    Join(String),
    Request(oneshot::Sender<Result<Reply>>),
    Refresh(String),
}

/// How a connection ended.
enum End {
    Stop,
    Retry { at_once: bool, new_token: bool },
}

struct Task {
    cfg: ClientBuilder,
    token_src: TokenSource,
    token: Option<(String, Option<u64>)>,
    shared: Arc<Shared>,
    cmds: mpsc::Receiver<Cmd>,
    events: mpsc::Sender<(u64, Event)>,
    state: watch::Sender<State>,
    rooms: BTreeSet<String>,
    join_waiters: HashMap<String, Vec<oneshot::Sender<Result<Reply>>>>,
    deferred: Vec<Cmd>,
    gen: u64,
}

pub(crate) async fn run(
    cfg: ClientBuilder,
    token_src: TokenSource,
    shared: Arc<Shared>,
    cmds: mpsc::Receiver<Cmd>,
    events: mpsc::Sender<(u64, Event)>,
    state: watch::Sender<State>,
) {
    let mut t = Task {
        cfg,
        token_src,
        token: None,
        shared,
        cmds,
        events,
        state,
        rooms: BTreeSet::new(),
        join_waiters: HashMap::new(),
        deferred: Vec::new(),
        gen: 0,
    };
    let mut attempt: u32 = 0;
    let mut new_token = false;
    loop {
        t.state.send_replace(State::Connecting);
        t.gen += 1;
        let end = t.connection(&mut attempt, new_token).await;
        t.state.send_replace(State::Disconnected);
        let delay = match end {
            End::Stop => return,
            End::Retry { at_once, new_token: n } => {
                new_token = n;
                if at_once {
                    attempt = 0;
                    Duration::ZERO
                } else {
                    let d = backoff(attempt, t.cfg.min_delay, t.cfg.max_delay);
                    attempt = attempt.saturating_add(1);
                    d
                }
            }
        };
        if t.wait(delay).await {
            return;
        }
    }
}

/// Full jitter between `min` and `min(max, min * 2^(attempt+1))`.
pub(crate) fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let cap = min.saturating_mul(2u32.saturating_pow(attempt.saturating_add(1).min(30))).min(max);
    let span = cap.saturating_sub(min).as_millis() as u64;
    // Jitter from the clock's nanoseconds: no extra dependency for a uniform-enough pick.
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let pick = if span == 0 { 0 } else { u64::from(nanos) % (span + 1) };
    min + Duration::from_millis(pick)
}

impl Task {
    /// Sleeps `d` while answering commands; true when the client was closed meanwhile.
    async fn wait(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                _ = sleep_until(until) => return false,
                cmd = self.cmds.recv() => match cmd {
                    None => return true,
                    Some(Cmd::Close(done)) => { let _ = done.send(()); return true; }
                    Some(cmd) => self.offline_cmd(cmd),
                }
            }
        }
    }

    /// A command while disconnected: rooms are remembered, requests wait for the connection.
    fn offline_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Join { room, since, reply } => {
                self.remember_join(&room, since);
                self.join_waiters.entry(room).or_default().push(reply);
            }
            other => self.deferred.push(other),
        }
    }

    fn remember_join(&mut self, room: &str, since: Option<String>) {
        if let Some(s) = since {
            let _ = self.shared.store.save(&self.shared.key(&format!("room:{room}")), &s);
        }
        self.rooms.insert(room.to_string());
    }

    /// A new token from the source, not yet cached (a refresh caches it once accepted).
    async fn fetch_token(&self) -> std::result::Result<String, String> {
        match &self.token_src {
            TokenSource::Static(s) => Ok(s.clone()),
            TokenSource::Source(f) => f().await,
        }
    }

    async fn current_token(&mut self, renew: bool) -> std::result::Result<String, String> {
        let f = match &self.token_src {
            TokenSource::Static(s) => return Ok(s.clone()),
            TokenSource::Source(f) => f.clone(),
        };
        let now = unix_now();
        let expired = matches!(self.token, Some((_, Some(exp))) if exp <= now);
        if renew || expired || self.token.is_none() {
            let v = f().await?;
            let exp = jwt_exp(&v);
            self.token = Some((v, exp));
        }
        Ok(self.token.as_ref().map(|t| t.0.clone()).unwrap_or_default())
    }

    async fn connection(&mut self, attempt: &mut u32, renew: bool) -> End {
        let dynamic = matches!(self.token_src, TokenSource::Source(_));
        let token = match self.current_token(renew).await {
            Ok(t) => t,
            Err(_) => return End::Retry { at_once: false, new_token: true },
        };
        let mut opts = DeviceOptions::new(token);
        if let Some(c) = &self.shared.client_id {
            opts = opts.client_id(c.clone());
        }
        let since = self.shared.checkpoint("user");
        if let Some(s) = &since {
            opts = opts.since(s.clone());
        }
        let (mut dev, welcome) = match Device::connect(&self.cfg.base_url, opts).await {
            Ok(x) => x,
            Err(Error::Http { status: 400, .. }) if since.is_some() => {
                // The checkpoint is unusable (another epoch: the store was reset); start over.
                let _ = self.shared.store.remove(&self.shared.key("user"));
                return End::Retry { at_once: false, new_token: false };
            }
            Err(_) => return End::Retry { at_once: false, new_token: dynamic },
        };
        *attempt = 0;
        if since.is_none() {
            if let Some(p) = welcome.extra.get("position").and_then(Value::as_str) {
                let _ = self.shared.store.save(&self.shared.key("user"), p);
            }
        }
        self.state.send_replace(State::Connected);
        let mut pending: HashMap<String, Pending> = HashMap::new();
        let mut next_ref: u64 = 0;
        let mut refs = move || {
            next_ref += 1;
            format!("r{next_ref}")
        };
        let rooms: Vec<String> = self.rooms.iter().cloned().collect();
        for room in rooms {
            let r = refs();
            if self.send_join(&mut dev, &room, &r).await.is_err() {
                return End::Retry { at_once: false, new_token: false };
            }
            pending.insert(r, Pending::Join(room));
        }
        for cmd in std::mem::take(&mut self.deferred) {
            let r = refs();
            match self.request(&mut dev, cmd, &r).await {
                Ok(Some(p)) => {
                    pending.insert(r, p);
                }
                Ok(None) => {}
                Err(end) => return end,
            }
        }
        let hb = Duration::from_millis(welcome.heartbeat_ms.max(100));
        let dead_after = self.cfg.heartbeat_timeout.unwrap_or(hb * 2);
        let mut ping = tokio::time::interval(hb.min(dead_after / 2));
        let mut ack_tick = tokio::time::interval(self.cfg.ack_delay);
        let mut last_heard = Instant::now();
        let mut refresh_at = self.refresh_deadline();
        let gen = self.gen;
        let end = loop {
            tokio::select! {
                frame = dev.recv() => {
                    last_heard = Instant::now();
                    match frame {
                        Ok(Frame::Event(ev)) => {
                            if self.events.send((gen, ev)).await.is_err() {
                                break End::Stop; // the Client was dropped
                            }
                            // Waiting on a slow application is not silence from the server.
                            last_heard = Instant::now();
                        }
                        Ok(Frame::Reply(r)) => {
                            if let Some(p) = r.reference.clone().and_then(|x| pending.remove(&x)) {
                                if let Some(at) = self.on_answer(p, Ok(r)) { refresh_at = at; }
                            }
                        }
                        Ok(Frame::Error(e)) => {
                            if let Some(p) = e.reference.clone().and_then(|x| pending.remove(&x)) {
                                let err = Error::Refused(e);
                                if let Some(at) = self.on_answer(p, Err(err)) { refresh_at = at; }
                            }
                        }
                        Ok(_) => {}
                        Err(Error::Closed { code, .. }) => break End::Retry {
                            at_once: matches!(code, Some(1001) | Some(4001)),
                            new_token: dynamic && code == Some(4001),
                        },
                        Err(Error::Protocol { .. }) => {}
                        Err(_) => break End::Retry { at_once: false, new_token: false },
                    }
                }
                cmd = self.cmds.recv() => match cmd {
                    None => { let _ = dev.close(1000).await; break End::Stop; }
                    Some(Cmd::Close(done)) => {
                        self.flush_ack(&mut dev).await;
                        let _ = dev.close(1000).await;
                        let _ = done.send(());
                        break End::Stop;
                    }
                    Some(cmd) => {
                        let r = refs();
                        match self.request(&mut dev, cmd, &r).await {
                            Ok(Some(p)) => { pending.insert(r, p); }
                            Ok(None) => {}
                            Err(end) => break end,
                        }
                    }
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > dead_after {
                        break End::Retry { at_once: false, new_token: false }; // dead socket: drop it
                    }
                    if dev.send_json(&json!({"op": "ping"})).await.is_err() {
                        break End::Retry { at_once: false, new_token: false };
                    }
                }
                _ = ack_tick.tick() => self.flush_ack(&mut dev).await,
                _ = self.shared.ack_now.notified() => self.flush_ack(&mut dev).await,
                _ = self.shared.fail.notified() => {
                    if self.shared.failed_gen.load(Ordering::Acquire) >= gen {
                        let _ = dev.close(4000).await;
                        break End::Retry { at_once: false, new_token: false };
                    }
                }
                _ = sleep_until(refresh_at.unwrap_or_else(far_future)), if refresh_at.is_some() => {
                    refresh_at = None;
                    if let Ok(tok) = self.fetch_token().await {
                        let r = refs();
                        if dev.send_json(&json!({"op": "refresh", "token": tok, "ref": r})).await.is_err() {
                            break End::Retry { at_once: false, new_token: false };
                        }
                        pending.insert(r, Pending::Refresh(tok));
                    }
                }
            }
        };
        for (_, p) in pending {
            match p {
                Pending::Request(tx) => {
                    let _ = tx.send(Err(Error::Closed { code: None, reason: "disconnected".into() }));
                }
                Pending::Join(_) | Pending::Refresh(_) => {}
            }
        }
        end
    }

    async fn send_join(&mut self, dev: &mut Device, room: &str, r: &str) -> Result<()> {
        let mut frame = json!({"op": "join", "room": room, "ref": r});
        if let Some(s) = self.shared.checkpoint(&format!("room:{room}")) {
            frame["since"] = json!(s);
        }
        dev.send_json(&frame).await
    }

    /// Sends a command's frame; the pending entry to keep for its answer.
    async fn request(&mut self, dev: &mut Device, cmd: Cmd, r: &str) -> std::result::Result<Option<Pending>, End> {
        let retry = End::Retry { at_once: false, new_token: false };
        match cmd {
            Cmd::Join { room, since, reply } => {
                self.remember_join(&room, since);
                self.join_waiters.entry(room.clone()).or_default().push(reply);
                self.send_join(dev, &room, r).await.map_err(|_| retry)?;
                Ok(Some(Pending::Join(room)))
            }
            Cmd::Leave { room, reply } => {
                if reply.is_closed() {
                    return Ok(None);
                }
                self.rooms.remove(&room);
                let _ = self.shared.store.remove(&self.shared.key(&format!("room:{room}")));
                dev.send_json(&json!({"op": "leave", "room": room, "ref": r})).await.map_err(|_| retry)?;
                Ok(Some(Pending::Request(reply)))
            }
            Cmd::Publish { kind, data, room, reply } => {
                if reply.is_closed() {
                    return Ok(None); // the caller timed out: do not publish behind its back
                }
                let mut frame = json!({"op": "publish", "type": kind, "data": data, "ref": r});
                if let Some(room) = room {
                    frame["room"] = json!(room);
                }
                dev.send_json(&frame).await.map_err(|_| retry)?;
                Ok(Some(Pending::Request(reply)))
            }
            Cmd::Close(done) => {
                let _ = done.send(());
                Err(End::Stop)
            }
        }
    }

    /// Handles the answer to a pending frame; a new refresh deadline after a refresh.
    fn on_answer(&mut self, p: Pending, answer: Result<Reply>) -> Option<Option<Instant>> {
        match p {
            Pending::Request(tx) => {
                let _ = tx.send(answer);
                None
            }
            Pending::Join(room) => {
                if let Ok(r) = &answer {
                    let key = self.shared.key(&format!("room:{room}"));
                    if self.shared.checkpoint(&format!("room:{room}")).is_none() {
                        if let Some(pos) = r.rest.get("position").and_then(Value::as_str) {
                            let _ = self.shared.store.save(&key, pos);
                        }
                    }
                }
                let waiters = self.join_waiters.remove(&room).unwrap_or_default();
                let mut answer = Some(answer);
                for (i, tx) in waiters.into_iter().enumerate() {
                    let a = if i == 0 { answer.take() } else { None };
                    let _ = tx.send(a.unwrap_or_else(|| {
                        Ok(Reply {
                            reference: None,
                            ok: true,
                            rest: [("room".to_string(), json!(room))].into_iter().collect(),
                        })
                    }));
                }
                None
            }
            Pending::Refresh(tok) => {
                if let Ok(r) = answer {
                    let exp = r.rest.get("exp").and_then(Value::as_u64).or_else(|| jwt_exp(&tok));
                    self.token = Some((tok, exp));
                }
                Some(self.refresh_deadline())
            }
        }
    }

    /// When to renew a function-sourced token: 60 s before `exp`, or at 80% of what is left.
    fn refresh_deadline(&self) -> Option<Instant> {
        if !matches!(self.token_src, TokenSource::Source(_)) {
            return None;
        }
        let exp = self.token.as_ref()?.1?;
        let left_ms = exp.saturating_mul(1000).saturating_sub(unix_now_ms());
        let wait = (left_ms * 4 / 5).max(left_ms.saturating_sub(60_000));
        Some(Instant::now() + Duration::from_millis(wait))
    }

    async fn flush_ack(&mut self, dev: &mut Device) {
        let id = {
            let mut a = self.shared.ack.lock().unwrap_or_else(|p| p.into_inner());
            a.1 = 0;
            a.0.take()
        };
        if let Some(id) = id {
            if dev.send_json(&json!({"op": "ack", "id": id})).await.is_err() {
                let mut a = self.shared.ack.lock().unwrap_or_else(|p| p.into_inner());
                a.0.get_or_insert(id); // sent on the next connection
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

pub(crate) fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A JWT's `exp` claim (unix seconds), read without verifying: only to plan the renewal.
fn jwt_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?.get("exp")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(5000));
        for attempt in 0..40 {
            let d = backoff(attempt, min, max);
            assert!(d >= min && d <= max, "{d:?}");
            assert!(d <= min * 2u32.pow(attempt.min(10) + 1), "{d:?} at {attempt}");
        }
    }
}
