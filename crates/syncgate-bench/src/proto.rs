//! The control protocol between the coordinator and its worker processes: one JSON object
//! per line, commands on the worker's stdin, events on its stdout (logs go to stderr).
//!
//! A worker runs each command to completion and answers with exactly one event, except
//! `Tick`, which it sends on its own every [`TICK_MS`] so the coordinator always knows how
//! far delivery has gone (flow control of the saturation runs, catch-up of resume).

use serde::{Deserialize, Serialize};

/// How often a worker reports its counters unasked.
pub const TICK_MS: u64 = 25;

/// What kind of server the devices talk to: the protocol differences the generator
/// adapts to (this is the Node baseline's adapter, on the generator side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// syncgate: welcome frame first, rooms joined with `{"op":"join"}`, publishes over
    /// `/api/v1/...`.
    Syncgate,
    /// bench/node/server.js: a plain `ws` broadcast server. No welcome, no rooms (every
    /// connection gets every message), publishes with `POST /publish`.
    NodeWs,
}

impl TargetKind {
    pub fn label(self) -> &'static str {
        match self {
            TargetKind::Syncgate => "syncgate",
            TargetKind::NodeWs => "node-ws",
        }
    }
}

/// Open `count` device connections, global indexes `first..first+count`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectSpec {
    pub kind: TargetKind,
    /// WebSocket base URLs (`http://host:port`); device `i` uses `urls[i % len]` (several
    /// URLs = a cluster's nodes).
    pub urls: Vec<String>,
    pub jwt_secret: String,
    pub first: usize,
    pub count: usize,
    /// Device `i` is user `{user_prefix}{i}`.
    pub user_prefix: String,
    /// Connect with `client_id=d-{i}` (a device with a durable cursor) instead of ephemeral.
    pub client_ids: bool,
    /// Join this room after the welcome (syncgate only).
    pub room: Option<String>,
    /// Source addresses: device `i` binds to `local_ips[i % len]`.
    pub local_ips: Vec<String>,
    /// Connection attempts in flight at once in this worker.
    pub concurrency: usize,
    /// Give up on a device after this long (per attempt).
    pub timeout_ms: u64,
    /// A device is "caught up" after this many events (resume); 0: not tracked.
    pub expect_events: u64,
    /// Negotiate permessage-deflate (syncgate only; see `deflate_device`).
    #[serde(default)]
    pub deflate: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    Connect(ConnectSpec),
    /// Zero the counters and the latency histogram (start of a measurement window).
    Reset,
    /// Answer with a `Report`.
    Report,
    /// Close every connection (WebSocket close, then drop).
    Disconnect,
    /// Soak devices (see `worker::soak`): how they connect (`count` and `first` unused).
    SoakSetup(ConnectSpec),
    /// Soak churn: close these devices gracefully (ack, then close), then open these
    /// (global indexes), resuming with their client id; answered with `SoakCycled`.
    SoakCycle {
        close: Vec<usize>,
        open: Vec<usize>,
    },
    /// Compare what the soak devices received with what was published; answered with
    /// `SoakChecked`.
    SoakCheck(SoakExpect),
    Exit,
}

/// What was published during a soak, for the final count (see `worker::soak`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakExpect {
    /// Publishes to user `u-{i}` alone, by global device index.
    pub user: Vec<u64>,
    /// Batch publishes to group `g`, i.e. users `g * group_size .. (g + 1) * group_size`.
    pub batch: Vec<u64>,
    pub group_size: usize,
    /// Room publishes (every device `i` with `soak_in_room(i)` joined the room).
    pub room: u64,
}

/// Whether soak device `i` joins the room: half of the stable devices and half of the
/// churning ones (`i % 4` is 0 or 1; churning devices are the odd ones).
pub fn soak_in_room(i: usize) -> bool {
    i % 4 < 2
}

/// Soak counters of one worker (all its devices, since the setup).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct SoakCounts {
    /// Events that skipped sequence numbers of their stream (sum of the numbers skipped).
    pub gaps: u64,
    /// Events whose sequence number was already seen (and acknowledged before a close).
    pub dups: u64,
    /// Events delivered after the device's last ack and before its close: the server
    /// sends them again on the next connection (at-least-once), so they are not counted
    /// as seen.
    pub redelivered: u64,
    /// Events replayed to resuming devices (user stream from the cursor, room from `since`).
    pub replayed_user: u64,
    pub replayed_room: u64,
    /// Events a device got from a stream it should not (a room it did not join).
    pub unexpected: u64,
    /// Graceful closes whose ack was not confirmed within the timeout.
    pub ack_timeouts: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    Ready {
        pid: u32,
    },
    Connected {
        ok: u64,
        failed: u64,
        /// Sum of the welcome frames' `resumed` counts.
        resumed: u64,
        /// A few distinct error messages, for the report.
        errors: Vec<String>,
        elapsed_ms: u64,
    },
    Tick(Tick),
    Report(Report),
    Done,
    SoakCycled {
        closed: u64,
        opened: u64,
        failed: u64,
        /// Sum of the welcome frames' `resumed` counts of the opened devices.
        resumed: u64,
        errors: Vec<String>,
        elapsed_ms: u64,
        counts: SoakCounts,
    },
    SoakChecked {
        counts: SoakCounts,
        devices: u64,
        /// Devices whose sequence numbers all reached what was published.
        complete: u64,
        /// Published events not (yet) seen, summed over devices.
        missing: u64,
        /// Sequence numbers seen beyond what was published.
        extra: u64,
        online: u64,
    },
    Error {
        message: String,
    },
}

/// Counters since the last `Reset`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Tick {
    /// Events received.
    pub received: u64,
    /// Lowest publish sequence number that every open connection has received (the
    /// flow-control mark of fanout runs); `u64::MAX` with no connection.
    pub low: u64,
    /// Devices that have received `expect_events` events.
    pub caught_up: u64,
    /// Connections open.
    pub open: u64,
    /// Connections the server closed (close frame or end of stream) since connecting.
    pub lost: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub tick: Tick,
    /// Publish-to-receive latency, (microseconds, count) pairs.
    pub latency: Vec<(u64, u64)>,
    /// Unix ns when the last device got caught up (resume).
    pub last_caught_up_ns: u64,
    /// Close codes the server sent, with counts.
    pub close_codes: Vec<(u16, u64)>,
    /// Bytes of the events' frames as they came off the wire (compressed or not).
    #[serde(default)]
    pub wire_bytes: u64,
}
