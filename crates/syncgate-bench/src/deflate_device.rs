//! A generated device that negotiates permessage-deflate (RFC 7692), for fanout runs with
//! `--deflate`: the bytes on the wire and the server's CPU per delivery with compression.
//!
//! Why not tungstenite: it has no permessage-deflate support (0.28), and refuses frames with
//! RSV1 set. So this device speaks the little of RFC 6455 a receiving device needs: the
//! opening handshake with the extension offer, reading server frames (inflating compressed
//! messages with a fresh inflater each, as `server_no_context_takeover` allows), answering
//! pings, and sending masked join and close frames. It counts the bytes it reads.

use std::net::IpAddr;
use std::time::Duration;

use flate2::{Decompress, FlushDecompress};
use syncgate_client::{ws_url, DeviceOptions, Frame, Welcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::device::OpenError;

const READ_BUFFER: usize = 4 * 1024;
const OFFER: &str = "permessage-deflate; client_max_window_bits";

fn other(e: impl std::fmt::Display) -> OpenError {
    OpenError::Other(e.to_string())
}

/// What the next read brought.
pub enum Next {
    /// A text message (inflated) and the bytes its frame(s) took on the wire.
    Text(Vec<u8>, usize),
    Close(Option<u16>),
    Gone,
}

pub struct DeflateWs {
    stream: TcpStream,
    buf: Vec<u8>,
    /// A fragmented message: (compressed, payload so far, wire bytes so far).
    partial: Option<(bool, Vec<u8>, usize)>,
}

/// Opens a device on `base` offering permessage-deflate; fails if the server does not
/// accept it. Reads the welcome, joins `room` if given (events read meanwhile are returned).
pub async fn open(
    base: &str,
    opts: &DeviceOptions,
    local: Option<IpAddr>,
    room: Option<&str>,
    timeout: Duration,
) -> Result<(DeflateWs, Option<Welcome>, Vec<String>), OpenError> {
    let url = ws_url(base, opts).map_err(other)?;
    let setup = async {
        let uri: tokio_tungstenite::tungstenite::http::Uri = url.as_str().parse().map_err(other)?;
        let stream = crate::device::tcp(&uri, local).await?;
        let host = uri.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
        let path = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        let mut ws = DeflateWs { stream, buf: Vec::new(), partial: None };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: c3luY2dhdGUtYmVuY2gtMQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: {OFFER}\r\n\r\n"
        );
        ws.stream.write_all(req.as_bytes()).await.map_err(other)?;
        let head = ws.read_head().await?;
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if status != 101 {
            return Err(OpenError::Refused(status, head));
        }
        let negotiated = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("sec-websocket-extensions:") && l.contains("permessage-deflate")
        });
        if !negotiated {
            return Err(OpenError::Refused(101, "the server did not accept permessage-deflate".into()));
        }
        let welcome = match ws.next_frame().await? {
            Frame::Welcome(w) => Some(w),
            f => return Err(other(format!("expected welcome, got {f:?}"))),
        };
        let mut early = Vec::new();
        if let Some(room) = room {
            let join = serde_json::json!({"op": "join", "room": room, "ref": "j"});
            ws.send(0x1, join.to_string().as_bytes()).await.map_err(other)?;
            loop {
                match ws.next_frame().await? {
                    Frame::Reply(r) if r.reference.as_deref() == Some("j") => break,
                    Frame::Error(e) => return Err(other(format!("join refused: {e:?}"))),
                    Frame::Event(e) => early.push(format!("{{\"data\":{}}}", e.data)),
                    _ => {}
                }
            }
        }
        Ok((ws, welcome, early))
    };
    tokio::time::timeout(timeout, setup).await.map_err(|_| other(format!("no connection within {timeout:?}")))?
}

impl DeflateWs {
    async fn read_more(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; READ_BUFFER];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn read_head(&mut self) -> Result<String, OpenError> {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 4);
                return Ok(head);
            }
            if self.read_more().await.map_err(other)? == 0 {
                return Err(other("connection ended during the handshake"));
            }
        }
    }

    async fn next_frame(&mut self) -> Result<Frame, OpenError> {
        match self.next().await {
            Next::Text(t, _) => Frame::parse(&String::from_utf8_lossy(&t)).map_err(other),
            Next::Close(c) => Err(other(format!("closed by the server: {c:?}"))),
            Next::Gone => Err(other("connection ended")),
        }
    }

    /// Sends one masked client frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mask: [u8; 4] = rand_mask();
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out).await
    }

    /// Sends a close frame (1000) and waits briefly for the server's.
    pub async fn close(&mut self) {
        if self.send(0x8, &1000u16.to_be_bytes()).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while !matches!(self.next().await, Next::Gone) {}
            })
            .await;
        }
    }

    /// The next text message; pings are answered, other frames skipped.
    pub async fn next(&mut self) -> Next {
        loop {
            let Some((fin, rsv1, opcode, payload, wire)) = self.parse() else {
                match self.read_more().await {
                    Ok(0) | Err(_) => return Next::Gone,
                    Ok(_) => continue,
                }
            };
            match opcode {
                0x9 => {
                    let sent = self.send(0xA, &payload).await;
                    if sent.is_err() {
                        return Next::Gone;
                    }
                }
                0x8 => {
                    let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Next::Close(code);
                }
                0x0..=0x2 => {
                    let (compressed, mut so_far, mut wire_so_far) = match (opcode, self.partial.take()) {
                        (0x0, Some(p)) => p,
                        (0x0, None) => return Next::Gone,
                        _ => (rsv1, Vec::new(), 0),
                    };
                    so_far.extend_from_slice(&payload);
                    wire_so_far += wire;
                    if !fin {
                        self.partial = Some((compressed, so_far, wire_so_far));
                        continue;
                    }
                    if opcode == 0x2 {
                        continue;
                    }
                    let text = if compressed {
                        match inflate(&so_far) {
                            Some(t) => t,
                            None => return Next::Gone,
                        }
                    } else {
                        so_far
                    };
                    return Next::Text(text, wire_so_far);
                }
                _ => {}
            }
        }
    }

    /// One complete server frame from the buffer: (fin, rsv1, opcode, payload, wire bytes).
    fn parse(&mut self) -> Option<(bool, bool, u8, Vec<u8>, usize)> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let (len, start) = match b[1] & 0x7f {
            126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
            127 => (u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize, 10),
            n => (n as usize, 2),
        };
        let payload = b.get(start..start + len)?.to_vec();
        let (fin, rsv1, opcode) = (b[0] & 0x80 != 0, b[0] & 0x40 != 0, b[0] & 0x0f);
        self.buf.drain(..start + len);
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
        Some((fin, rsv1, opcode, payload, start + len))
    }
}

/// Inflates one message (RFC 7692 section 7.2.2: append 00 00 ff ff).
fn inflate(data: &[u8]) -> Option<Vec<u8>> {
    let mut d = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(data.len() * 4 + 64);
    let mut rest = &input[..];
    loop {
        let before = d.total_in();
        d.decompress_vec(rest, &mut out, FlushDecompress::Sync).ok()?;
        rest = &rest[(d.total_in() - before) as usize..];
        if rest.is_empty() && out.len() < out.capacity() {
            return Some(out);
        }
        out.reserve(out.capacity().max(1024));
    }
}

fn rand_mask() -> [u8; 4] {
    // Masks only need to be unpredictable to intermediaries; the bench talks to loopback.
    let n = crate::sys::unix_ns() as u32;
    n.to_le_bytes()
}
