//! One device's WebSocket connection (`GET /ws`).

use crate::error::{Error, Result};
use crate::frame::{Event, Frame, Welcome};
use crate::options::{header_value, tcp_connect, ws_url, DeviceOptions};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderName};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The underlying WebSocket stream of a [`Device`] (plain TCP; no TLS).
pub type WsStream = WebSocketStream<TcpStream>;

/// Largest message/frame the client accepts, so that it never refuses what a server
/// sends (the server's own limit is what tests exercise).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Default bound of the buffer of frames set aside by [`Device::request`].
pub const DEFAULT_BUFFER_CAPACITY: usize = 10_000;

/// Default time allowed for the helpers ([`Device::ping`], [`Device::join`], ...) to
/// get their answer.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One WebSocket connection of a device.
///
/// Reading is pull-based: call [`recv`](Device::recv), [`next_event`](Device::next_event)
/// or [`request`](Device::request). WebSocket pings are answered by tungstenite while
/// reading. Frames that [`request`](Device::request) reads past while waiting for its
/// answer are kept (bounded) and returned first by later reads.
#[derive(Debug)]
pub struct Device {
    ws: WsStream,
    buffer: VecDeque<Frame>,
    buffer_capacity: usize,
    dropped: u64,
    next_ref: u64,
    request_timeout: Duration,
    closed: Option<(Option<u16>, String)>,
}

impl Device {
    /// Connects and reads the `welcome` frame.
    ///
    /// A refused upgrade gives [`Error::Http`]; a first frame other than `welcome` gives
    /// [`Error::UnexpectedFrame`]; a close before it gives [`Error::Closed`].
    pub async fn connect(base_url: &str, opts: DeviceOptions) -> Result<(Device, Welcome)> {
        let wait = opts.connect_timeout;
        Self::open(base_url, &opts, None).await?.read_welcome(wait).await
    }

    /// Connects without waiting for the `welcome` frame (it is the first frame read).
    pub async fn connect_raw(base_url: &str, opts: DeviceOptions) -> Result<Device> {
        Self::open(base_url, &opts, None).await
    }

    /// Like [`connect`](Device::connect), with the TCP socket bound to `local_ip` as
    /// source address (to spread many sockets over 127.0.0.x).
    pub async fn connect_with_local_addr(
        base_url: &str,
        opts: DeviceOptions,
        local_ip: IpAddr,
    ) -> Result<(Device, Welcome)> {
        let wait = opts.connect_timeout;
        Self::open(base_url, &opts, Some(local_ip)).await?.read_welcome(wait).await
    }

    /// Like [`connect_raw`](Device::connect_raw), bound to `local_ip`.
    pub async fn connect_raw_with_local_addr(base_url: &str, opts: DeviceOptions, local_ip: IpAddr) -> Result<Device> {
        Self::open(base_url, &opts, Some(local_ip)).await
    }

    async fn open(base: &str, opts: &DeviceOptions, local: Option<IpAddr>) -> Result<Device> {
        let url = ws_url(base, opts)?;
        let mut request = url.as_str().into_client_request()?;
        let headers = request.headers_mut();
        if opts.token_in_header && !opts.token.is_empty() {
            headers.insert(header::AUTHORIZATION, header_value(&format!("Bearer {}", opts.token))?);
        }
        for (name, value) in &opts.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| Error::InvalidInput(format!("header {name}: {e}")))?;
            headers.append(name, header_value(value)?);
        }
        // tungstenite's default 128 KiB read buffer is zero-filled before every socket read;
        // 8 KiB is plenty for a device and keeps many-device load generators cheap.
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let setup = async {
            let tcp = tcp_connect(&url, local).await?;
            tcp.set_nodelay(true)?;
            let (ws, _resp) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config)).await?;
            Ok::<_, Error>(ws)
        };
        let ws = timeout(opts.connect_timeout, setup).await.map_err(|_| Error::Timeout)??;
        Ok(Device {
            ws,
            buffer: VecDeque::new(),
            buffer_capacity: DEFAULT_BUFFER_CAPACITY,
            dropped: 0,
            next_ref: 0,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            closed: None,
        })
    }

    async fn read_welcome(mut self, wait: Duration) -> Result<(Device, Welcome)> {
        match self.recv_timeout(wait).await? {
            Some(Frame::Welcome(w)) => Ok((self, w)),
            Some(other) => Err(Error::UnexpectedFrame(Box::new(other))),
            None => Err(Error::Timeout),
        }
    }

    /// Sets the bound of the set-aside buffer (oldest frames are dropped beyond it).
    pub fn set_buffer_capacity(&mut self, capacity: usize) {
        self.buffer_capacity = capacity.max(1);
    }

    /// Sets the timeout of the helpers ([`ping`](Device::ping), [`join`](Device::join), ...).
    pub fn set_request_timeout(&mut self, d: Duration) {
        self.request_timeout = d;
    }

    /// Number of frames set aside by [`request`](Device::request) and not yet read.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Number of set-aside frames dropped because the buffer was full.
    pub fn dropped_frames(&self) -> u64 {
        self.dropped
    }

    /// Local address of the TCP socket.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.ws.get_ref().local_addr()?)
    }

    /// Whether a close (or the end of the connection) has been seen.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Gives up the wrapper and returns the raw stream (set-aside frames are lost).
    pub fn into_inner(self) -> WsStream {
        self.ws
    }

    /// The next server frame: set-aside frames first, then the socket.
    ///
    /// WebSocket ping/pong frames are skipped. A server close gives [`Error::Closed`]
    /// (and so does every later call); a binary or malformed frame gives
    /// [`Error::Protocol`].
    pub async fn recv(&mut self) -> Result<Frame> {
        if let Some(f) = self.buffer.pop_front() {
            return Ok(f);
        }
        self.read_frame().await
    }

    /// Like [`recv`](Device::recv), waiting at most `d`; `Ok(None)` on timeout.
    pub async fn recv_timeout(&mut self, d: Duration) -> Result<Option<Frame>> {
        if let Some(f) = self.buffer.pop_front() {
            return Ok(Some(f));
        }
        match timeout(d, self.read_frame()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The next event within `d`, skipping (and discarding) other frames;
    /// `Ok(None)` on timeout. Handy to check that nothing arrives.
    pub async fn try_next_event(&mut self, d: Duration) -> Result<Option<Event>> {
        let deadline = Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_timeout(left).await? {
                Some(Frame::Event(e)) => return Ok(Some(e)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }

    /// The next event within `d`, skipping other frames; [`Error::Timeout`] if none.
    pub async fn next_event(&mut self, d: Duration) -> Result<Event> {
        self.try_next_event(d).await?.ok_or(Error::Timeout)
    }

    /// Up to `n` events, each waited for at most `d` (stops early on timeout).
    pub async fn collect_events(&mut self, n: usize, d: Duration) -> Result<Vec<Event>> {
        let mut out = Vec::with_capacity(n.min(1024));
        while out.len() < n {
            match self.try_next_event(d).await? {
                Some(e) => out.push(e),
                None => break,
            }
        }
        Ok(out)
    }

    /// Sends `frame` (a JSON object) with a `ref` and returns the frame that answers it
    /// (reply, error, pong, ...), waiting at most `d` ([`Error::Timeout`] otherwise).
    ///
    /// A `ref` already in the frame (string or number) is kept; otherwise a fresh one is
    /// set. For a `ping`, a `pong` without `ref` also counts as the answer. Other frames
    /// read meanwhile are set aside for later reads.
    pub async fn request(&mut self, mut frame: Value, d: Duration) -> Result<Frame> {
        let obj =
            frame.as_object_mut().ok_or_else(|| Error::InvalidInput("a request frame must be a JSON object".into()))?;
        let reference = match obj.get("ref") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                self.next_ref += 1;
                let r = format!("r{}", self.next_ref);
                obj.insert("ref".into(), Value::String(r.clone()));
                r
            }
        };
        let is_ping = obj.get("op").and_then(Value::as_str) == Some("ping");
        self.send_json(&frame).await?;
        let deadline = Instant::now() + d;
        loop {
            let f = timeout_at(deadline, self.read_frame()).await.map_err(|_| Error::Timeout)??;
            let answers = f.reference() == Some(reference.as_str())
                || (is_ping && matches!(f, Frame::Pong { reference: None, .. }));
            if answers {
                return Ok(f);
            }
            if self.buffer.len() >= self.buffer_capacity {
                self.buffer.pop_front();
                self.dropped += 1;
            }
            self.buffer.push_back(f);
        }
    }

    /// `{"op":"ping"}`; the answer is normally [`Frame::Pong`].
    pub async fn ping(&mut self) -> Result<Frame> {
        let d = self.request_timeout;
        self.request(json!({"op": "ping"}), d).await
    }

    /// `{"op":"join","room","since"?}`. Replayed history follows the reply as events.
    pub async fn join(&mut self, room: &str, since: Option<&str>) -> Result<Frame> {
        let mut frame = json!({"op": "join", "room": room});
        if let Some(s) = since {
            frame["since"] = json!(s);
        }
        let d = self.request_timeout;
        self.request(frame, d).await
    }

    /// `{"op":"leave","room"}`.
    pub async fn leave(&mut self, room: &str) -> Result<Frame> {
        let d = self.request_timeout;
        self.request(json!({"op": "leave", "room": room}), d).await
    }

    /// `{"op":"ack","id"}`: everything in the user stream up to `id` is delivered.
    pub async fn ack(&mut self, id: &str) -> Result<Frame> {
        let d = self.request_timeout;
        self.request(json!({"op": "ack", "id": id}), d).await
    }

    /// `{"op":"publish","type","data","room"?}`: to the own user stream, or to `room`.
    pub async fn publish(&mut self, kind: &str, data: Value, room: Option<&str>) -> Result<Frame> {
        let mut frame = json!({"op": "publish", "type": kind, "data": data});
        if let Some(r) = room {
            frame["room"] = json!(r);
        }
        let d = self.request_timeout;
        self.request(frame, d).await
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, frame: &Value) -> Result<()> {
        self.send_raw(Message::text(frame.to_string())).await
    }

    /// Sends a text frame as is (e.g. invalid JSON, for tests).
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.send_raw(Message::text(text.to_owned())).await
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: Vec<u8>) -> Result<()> {
        self.send_raw(Message::binary(data)).await
    }

    /// Sends any WebSocket message.
    pub async fn send_raw(&mut self, msg: Message) -> Result<()> {
        if let Some((code, reason)) = &self.closed {
            return Err(Error::Closed { code: *code, reason: reason.clone() });
        }
        self.ws.send(msg).await.map_err(|e| self.note_error(e.into()))
    }

    /// Closes the connection with `code` and waits (at most 2 s) for the server's
    /// close frame. Closing an already closed connection is a no-op.
    pub async fn close(&mut self, code: u16) -> Result<()> {
        if self.closed.is_some() {
            return Ok(());
        }
        let frame = CloseFrame { code: CloseCode::from(code), reason: "".into() };
        if let Err(e) = self.ws.close(Some(frame)).await {
            return match self.note_error(e.into()) {
                Error::Closed { .. } => Ok(()),
                e => Err(e),
            };
        }
        let drain = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(cf))) => return cf.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return None,
                }
            }
        };
        let echoed = timeout(Duration::from_secs(2), drain).await.ok().flatten();
        self.closed = Some((echoed.or(Some(code)), String::new()));
        Ok(())
    }

    /// Reads (and discards) frames until the server closes, at most `d`.
    ///
    /// Returns the close code, or `None` when the connection ended without one;
    /// [`Error::Timeout`] if it is still open after `d`. Malformed frames are skipped.
    pub async fn wait_closed(&mut self, d: Duration) -> Result<Option<u16>> {
        self.buffer.clear();
        let deadline = Instant::now() + d;
        loop {
            match timeout_at(deadline, self.read_frame()).await {
                Err(_) => return Err(Error::Timeout),
                Ok(Ok(_)) | Ok(Err(Error::Protocol { .. })) => continue,
                Ok(Err(Error::Closed { code, .. })) => return Ok(code),
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    /// Reads the next text frame from the socket (not the buffer). Cancel-safe.
    async fn read_frame(&mut self) -> Result<Frame> {
        loop {
            if let Some((code, reason)) = &self.closed {
                return Err(Error::Closed { code: *code, reason: reason.clone() });
            }
            let msg = match self.ws.next().await {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => return Err(self.note_error(e.into())),
                None => {
                    self.closed.get_or_insert((None, String::new()));
                    continue;
                }
            };
            match msg {
                Message::Text(text) => return Frame::parse(text.as_str()),
                Message::Binary(data) => {
                    return Err(Error::Protocol {
                        reason: "binary frame from server".into(),
                        raw: format!("{} bytes", data.len()),
                    })
                }
                Message::Close(cf) => {
                    let (code, reason) = match cf {
                        Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_owned()),
                        None => (None, String::new()),
                    };
                    self.closed = Some((code, reason));
                    // Send our close reply now rather than on some later write.
                    let _ = timeout(Duration::from_secs(1), self.ws.flush()).await;
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Records a close seen as an error, and reports the stored close code if any.
    fn note_error(&mut self, e: Error) -> Error {
        match e {
            Error::Closed { code, reason } => {
                let (code, reason) = self.closed.get_or_insert((code, reason)).clone();
                Error::Closed { code, reason }
            }
            other => other,
        }
    }
}
