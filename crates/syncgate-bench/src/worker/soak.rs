//! The soak scenario's devices, worker side: sessions that come and go (churn), each
//! device checking its streams' sequence numbers across its connections.
//!
//! The coordinator numbers each stream in the message's `data`: `u` (the n-th publish to
//! this user alone), `b` (the n-th batch publish to this user's group), `r` (the n-th room
//! publish). Each stream is published from one keep-alive connection, one request at a
//! time, so a device must see each one's numbers in order without gaps; a number seen
//! again is a duplicate.
//!
//! A device the coordinator closes first acknowledges its last user event and waits for
//! the reply, then closes. On its next connection (same `client_id`) the server replays
//! what came after that ack; events that arrived between the ack and the close are sent
//! again by design (at-least-once), so they are rolled back and counted as `redelivered`,
//! not as duplicates. Room members rejoin with `since` = the last room event id they saw,
//! so the room's history fills the time they were away.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use syncgate_client::{DeviceOptions, Frame, Message, WsStream};
use tokio::sync::{oneshot, watch};

use super::{number_after, State};
use crate::device::OpenError;
use crate::proto::{soak_in_room, ConnectSpec, Event, SoakCounts, SoakExpect};
use crate::token::Minter;

/// How long a closing device waits for its ack's reply (a 10-minute soak at load average
/// 8 to 10 saw replies later than 5 s). Without the reply it closes anyway: the server may
/// not have moved the cursor, so what it replays may come twice (counted as duplicates).
const ACK_WAIT: Duration = Duration::from_secs(30);

/// A user-stream event id, with the device's `user` and `batch` numbers as they were then.
type Mark = (String, u64, u64);

#[derive(Default)]
struct Device {
    /// Highest sequence number seen per stream (user alone, batch group, room).
    user: u64,
    batch: u64,
    room: u64,
    /// Id of the last user-stream event seen, with `user` and `batch` as they were then.
    last_user: Option<Mark>,
    last_room: Option<String>,
    online: bool,
    /// Asks the open session to close.
    close: Option<oneshot::Sender<()>>,
    /// Replayed events still to come in this session (not timed: they were published
    /// while the device was away).
    replay_user: u64,
    replay_room: u64,
}

struct Setup {
    spec: ConnectSpec,
    ips: Vec<IpAddr>,
    minter: Minter,
}

#[derive(Default)]
pub(super) struct Soak {
    setup: Option<Rc<Setup>>,
    devs: HashMap<usize, Device>,
    counts: SoakCounts,
}

pub(super) type Shared = Rc<RefCell<Soak>>;

/// Raises the number and reports whether it was the next one (`false`: seen already).
fn advance(last: &mut u64, n: u64, c: &mut SoakCounts) -> bool {
    if n <= *last {
        c.dups += 1;
        return false;
    }
    c.gaps += n - *last - 1;
    *last = n;
    true
}

/// The string value after `key` (e.g. `"id":"`), up to the next quote.
fn str_after<'a>(buf: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let start = buf.windows(key.len()).position(|w| w == key)? + key.len();
    let len = buf[start..].iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&buf[start..start + len]).ok()
}

impl Soak {
    pub(super) fn setup(&mut self, spec: ConnectSpec) -> Result<(), String> {
        let ips = spec.local_ips.iter().map(|s| s.parse()).collect::<Result<Vec<IpAddr>, _>>();
        let ips = ips.map_err(|e| format!("bad local ip: {e}"))?;
        if spec.urls.is_empty() {
            return Err("no server url".into());
        }
        let minter = Minter::new(&spec.jwt_secret, 6 * 3600, spec.room.iter().cloned().collect());
        self.setup = Some(Rc::new(Setup { spec, ips, minter }));
        self.devs.clear();
        self.counts = SoakCounts::default();
        Ok(())
    }

    /// Counts one server text frame of device `i`; returns it parsed unless it is an event.
    fn on_text(&mut self, st: &mut State, i: usize, text: &[u8]) -> Option<Frame> {
        const EVENT: &[u8] = b"\"op\":\"event\"";
        let data = text.windows(7).position(|w| w == b"\"data\":");
        let Some(data) = data.filter(|_| text.windows(EVENT.len()).any(|w| w == EVENT)) else {
            return Frame::parse(std::str::from_utf8(text).ok()?).ok();
        };
        st.received += 1;
        // The numbers are at the front of `data` (before the padding).
        let head = &text[..text.len().min(data + 80)];
        let key = |k: &[u8]| number_after(head, data, k);
        let id = str_after(text, b"\"id\":\"").unwrap_or_default();
        let (c, d) = (&mut self.counts, self.devs.entry(i).or_default());
        let replay = if let Some(r) = key(b"\"r\":") {
            if !soak_in_room(i) {
                c.unexpected += 1;
                return None;
            }
            if advance(&mut d.room, r, c) {
                d.last_room = Some(id.to_string());
            }
            let replay = d.replay_room > 0;
            d.replay_room = d.replay_room.saturating_sub(1);
            c.replayed_room += u64::from(replay);
            replay
        } else {
            let fresh = match (key(b"\"u\":"), key(b"\"b\":")) {
                (Some(u), _) => advance(&mut d.user, u, c),
                (None, Some(b)) => advance(&mut d.batch, b, c),
                (None, None) => {
                    c.unexpected += 1;
                    return None;
                }
            };
            if fresh {
                d.last_user = Some((id.to_string(), d.user, d.batch));
            }
            let replay = d.replay_user > 0;
            d.replay_user = d.replay_user.saturating_sub(1);
            c.replayed_user += u64::from(replay);
            replay
        };
        if !replay {
            if let Some(t) = key(b"\"t\":") {
                st.latency.record_us(crate::sys::unix_ns().saturating_sub(t) / 1000);
            }
        }
        None
    }

    /// After a confirmed ack of `acked`: what came after it will be replayed, so it is
    /// not counted as seen.
    fn roll_back(&mut self, i: usize, acked: Mark) {
        let d = self.devs.entry(i).or_default();
        self.counts.redelivered += (d.user - acked.1) + (d.batch - acked.2);
        d.user = acked.1;
        d.batch = acked.2;
        d.last_user = Some(acked);
    }
}

/// The next text frame; `Err(close code)` when the stream ended.
async fn next_text(ws: &mut WsStream) -> Result<Vec<u8>, Option<u16>> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_bytes().to_vec()),
            Some(Ok(Message::Close(cf))) => return Err(Some(cf.map_or(0, |f| u16::from(f.code)))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// Opens device `i`: welcome (its `resumed` count), then for room members a join with
/// `since` and its reply. Events that arrive meanwhile are counted.
async fn open(soak: &Shared, st: &Rc<RefCell<State>>, i: usize) -> Result<(WsStream, u64), OpenError> {
    let setup = soak.borrow().setup.clone().ok_or_else(|| OpenError::Other("soak not set up".into()))?;
    let spec = &setup.spec;
    let user = format!("{}{i}", spec.user_prefix);
    let token = setup.minter.token(&user).map_err(|e| OpenError::Other(e.to_string()))?;
    let opts = DeviceOptions::new(token).client_id(format!("d-{i}"));
    let url = &spec.urls[i % spec.urls.len()];
    let ip = setup.ips.get(i % setup.ips.len().max(1)).copied();
    let timeout = Duration::from_millis(spec.timeout_ms);
    let o = crate::device::open(url, &opts, ip, true, None, timeout).await?;
    let (mut ws, resumed) = (o.ws, o.welcome.map_or(0, |w| w.resumed));
    {
        let s = &mut *soak.borrow_mut();
        let d = s.devs.entry(i).or_default();
        (d.replay_user, d.replay_room) = (resumed, 0);
    }
    let Some(room) = spec.room.as_deref().filter(|_| soak_in_room(i)) else {
        return Ok((ws, resumed));
    };
    let since = soak.borrow().devs.get(&i).and_then(|d| d.last_room.clone());
    let mut join = serde_json::json!({"op": "join", "room": room, "ref": "j"});
    if let Some(s) = since {
        join["since"] = s.into();
    }
    let other = |e: String| OpenError::Other(e);
    ws.send(Message::text(join.to_string())).await.map_err(|e| other(e.to_string()))?;
    let room_before = soak.borrow().devs.get(&i).map_or(0, |d| d.room);
    let wait = async {
        loop {
            let text = next_text(&mut ws).await.map_err(|c| other(format!("closed while joining ({c:?})")))?;
            let frame = soak.borrow_mut().on_text(&mut st.borrow_mut(), i, &text);
            match frame {
                Some(Frame::Reply(r)) if r.reference.as_deref() == Some("j") => {
                    let n = r.rest.get("resumed").and_then(|v| v.as_u64()).unwrap_or(0);
                    return Ok::<_, OpenError>(n);
                }
                Some(Frame::Error(e)) => return Err(other(format!("join refused: {e:?}"))),
                _ => {}
            }
        }
    };
    let n = tokio::time::timeout(timeout, wait).await.map_err(|_| other("no join reply".into()))??;
    let s = &mut *soak.borrow_mut();
    let d = s.devs.entry(i).or_default();
    // History that arrived before the reply was not counted as replayed yet.
    let early = (d.room - room_before).min(n);
    s.counts.replayed_room += early;
    d.replay_room = n - early;
    Ok((ws, resumed + n))
}

/// Runs device `i`'s open connection until the coordinator closes it (ack first), a
/// Disconnect stops it, or the server ends it.
async fn session(
    mut ws: WsStream,
    i: usize,
    soak: Shared,
    st: Rc<RefCell<State>>,
    mut close: oneshot::Receiver<()>,
    mut stop: watch::Receiver<u64>,
) {
    let mut closing: Option<(Mark, tokio::time::Instant)> = None;
    let mut confirmed = false;
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let (code, by_server) = loop {
        let ack_deadline = closing.as_ref().map_or(far, |c| c.1);
        tokio::select! {
            m = next_text(&mut ws) => match m {
                Ok(text) => {
                    let frame = soak.borrow_mut().on_text(&mut st.borrow_mut(), i, &text);
                    if closing.is_some() && matches!(&frame, Some(f) if f.reference() == Some("a")) {
                        confirmed = frame.as_ref().is_some_and(Frame::is_ok);
                        break (None, false);
                    }
                }
                Err(code) => break (code, true),
            },
            r = &mut close, if closing.is_none() => {
                if r.is_err() {
                    continue;
                }
                let last = soak.borrow().devs.get(&i).and_then(|d| d.last_user.clone());
                let Some(last) = last else { break (None, false) };
                let ack = serde_json::json!({"op": "ack", "id": last.0, "ref": "a"});
                if ws.send(Message::text(ack.to_string())).await.is_err() {
                    break (None, true);
                }
                closing = Some((last, tokio::time::Instant::now() + ACK_WAIT));
            }
            _ = tokio::time::sleep_until(ack_deadline), if closing.is_some() => {
                soak.borrow_mut().counts.ack_timeouts += 1;
                break (None, false);
            }
            _ = stop.changed() => break (None, false),
        }
    };
    if !by_server {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
    let mut s = soak.borrow_mut();
    if let (true, Some((acked, _))) = (confirmed, closing) {
        s.roll_back(i, acked);
    }
    if let Some(d) = s.devs.get_mut(&i) {
        d.online = false;
        d.close = None;
    }
    let mut st = st.borrow_mut();
    st.open = st.open.saturating_sub(1);
    if by_server {
        st.lost += 1;
        *st.close_codes.entry(code.unwrap_or(0)).or_default() += 1;
    }
}

/// One churn step: closes `close` (and waits, bounded, until they are closed), then opens
/// `open` (those not open already).
pub(super) async fn cycle(
    soak: &Shared,
    st: &Rc<RefCell<State>>,
    stop: &watch::Receiver<u64>,
    close: Vec<usize>,
    open_: Vec<usize>,
) -> Event {
    let started = Instant::now();
    let Some(setup) = soak.borrow().setup.clone() else {
        return Event::Error { message: "soak not set up".into() };
    };
    let mut closed = 0;
    for i in &close {
        if let Some(tx) = soak.borrow_mut().devs.get_mut(i).and_then(|d| d.close.take()) {
            closed += u64::from(tx.send(()).is_ok());
        }
    }
    let until = Instant::now() + ACK_WAIT + Duration::from_secs(5);
    while close.iter().any(|i| soak.borrow().devs.get(i).is_some_and(|d| d.online)) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let todo: Vec<usize> = open_.into_iter().filter(|i| !soak.borrow().devs.get(i).is_some_and(|d| d.online)).collect();
    let results: Vec<Result<u64, String>> = futures_util::stream::iter(todo)
        .map(|i| {
            let (soak, st, stop) = (soak.clone(), st.clone(), stop.clone());
            async move {
                let mut last = String::new();
                for attempt in 0..3u64 {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                    match open(&soak, &st, i).await {
                        Ok((ws, resumed)) => {
                            let (tx, rx) = oneshot::channel();
                            let d = &mut soak.borrow_mut();
                            let d = d.devs.entry(i).or_default();
                            d.online = true;
                            d.close = Some(tx);
                            st.borrow_mut().open += 1;
                            // Only a Disconnect sent after this opened stops it (see recv_loop).
                            let mut stop = stop;
                            stop.borrow_and_update();
                            tokio::task::spawn_local(session(ws, i, soak.clone(), st.clone(), rx, stop));
                            return Ok(resumed);
                        }
                        Err(e @ OpenError::Refused(..)) => return Err(e.to_string()),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(last)
            }
        })
        .buffer_unordered(setup.spec.concurrency.max(1))
        .collect()
        .await;
    let (mut opened, mut resumed, mut errors) = (0, 0, Vec::<String>::new());
    for r in &results {
        match r {
            Ok(n) => {
                opened += 1;
                resumed += n;
            }
            Err(e) if errors.len() < 5 && !errors.contains(e) => errors.push(e.clone()),
            Err(_) => {}
        }
    }
    Event::SoakCycled {
        closed,
        opened,
        failed: results.len() as u64 - opened,
        resumed,
        errors,
        elapsed_ms: started.elapsed().as_millis() as u64,
        counts: soak.borrow().counts,
    }
}

/// Compares every device's sequence numbers with what was published.
pub(super) fn check(soak: &Shared, exp: &SoakExpect) -> Event {
    let s = soak.borrow();
    let (mut complete, mut missing, mut extra, mut online) = (0, 0, 0, 0);
    for (i, d) in &s.devs {
        let want_user = exp.user.get(*i).copied().unwrap_or(0);
        let want_batch = exp.batch.get(i / exp.group_size.max(1)).copied().unwrap_or(0);
        let want_room = if soak_in_room(*i) { exp.room } else { 0 };
        let pairs = [(d.user, want_user), (d.batch, want_batch), (d.room, want_room)];
        missing += pairs.iter().map(|(seen, want)| want.saturating_sub(*seen)).sum::<u64>();
        extra += pairs.iter().map(|(seen, want)| seen.saturating_sub(*want)).sum::<u64>();
        complete += u64::from(pairs.iter().all(|(seen, want)| seen == want));
        online += u64::from(d.online);
    }
    Event::SoakChecked { counts: s.counts, devices: s.devs.len() as u64, complete, missing, extra, online }
}
