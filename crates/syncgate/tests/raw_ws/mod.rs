//! A byte-level WebSocket client for the conformance suite: it writes exactly the frames a
//! test builds (valid or not) to a TcpStream and parses what the server sends back.
#![allow(dead_code)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound for anything the server should do "at once" on a loaded machine.
pub const PROMPT: Duration = Duration::from_millis(500);
const WAIT: Duration = Duration::from_secs(5);

pub const CONT: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;
pub const RSV1: u8 = 0x40;

/// A frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
    pub fn text(&self) -> String {
        String::from_utf8(self.payload.clone()).expect("server text is UTF-8")
    }
}

/// Builds a masked client frame. `first` holds FIN/RSV bits and the opcode as they go on
/// the wire (e.g. `0x80 | TEXT`).
pub fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x9a, 0x12, 0x7c, 0xe3];
    let mut out = vec![first];
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
    out
}

/// A final frame of `opcode`.
pub fn fin(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(0x80 | opcode, payload)
}

/// A close frame payload: code and reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// A JSON ping of exactly `len` bytes (padded with spaces) carrying `ref`.
pub fn ping_json(reference: &str, len: usize) -> Vec<u8> {
    let mut s = format!("{{\"op\":\"ping\",\"ref\":\"{reference}\"}}").into_bytes();
    assert!(s.len() <= len, "ping_json: {len} is too short");
    s.resize(len, b' ');
    s
}

pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The handshake answer's Sec-WebSocket-Extensions, if any.
    pub extensions: Option<String>,
}

/// Sends an HTTP request to `addr` and returns (status, lowercase head, body so far).
pub async fn http(addr: &str, request: &str) -> (u16, String, Vec<u8>, TcpStream) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write request");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk)).await.expect("answer in time").expect("read");
        assert!(n > 0, "EOF before the end of the HTTP head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status code");
    (status, head, buf[head_end + 4..].to_vec(), s)
}

/// The value of a header in a lowercased head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(str::trim))
}

/// An upgrade request for /ws with `extra` header lines (each ending in \r\n).
pub fn upgrade_request(addr: &str, token: &str, extra: &str) -> String {
    format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

impl Raw {
    /// Opens a WebSocket with `extra` handshake headers and reads the welcome frame.
    pub async fn connect(addr: &str, token: &str, extra: &str) -> Raw {
        let req = upgrade_request(addr, token, &format!("Sec-WebSocket-Version: 13\r\n{extra}"));
        let (status, head, rest, stream) = http(addr, &req).await;
        assert_eq!(status, 101, "{head}");
        assert_eq!(header(&head, "sec-websocket-accept"), Some("s3pplmbitxaq9kygzzhzrbk+xoo="));
        let extensions = header(&head, "sec-websocket-extensions").map(str::to_string);
        let mut raw = Raw { stream, buf: rest, extensions };
        let welcome = raw.read().await.expect("welcome frame");
        assert!(welcome.text().contains("\"welcome\""), "{welcome:?}");
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        // The server may already have closed; later reads observe it.
        let _ = self.stream.write_all(bytes).await;
    }

    /// Sends bytes in chunks of `n` with a flush between them.
    pub async fn send_chunked(&mut self, bytes: &[u8], n: usize) {
        for c in bytes.chunks(n) {
            self.send(c).await;
            let _ = self.stream.flush().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The next server frame, or None on EOF or a reset.
    pub async fn read(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, self.read_inner()).await.expect("a server frame or EOF within 5 s")
    }

    async fn read_inner(&mut self) -> Option<Frame> {
        loop {
            if let Some((f, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(f);
            }
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame that is not a server heartbeat ping.
    pub async fn next(&mut self) -> Frame {
        loop {
            let f = self.read().await.expect("a frame, not EOF");
            if !(f.opcode == PING && f.payload.is_empty()) {
                return f;
            }
        }
    }

    /// Sends a JSON ping with `ref` and expects its pong (the connection is alive and the
    /// server read everything before it).
    pub async fn alive(&mut self, reference: &str) {
        self.send(&fin(TEXT, &ping_json(reference, 30 + reference.len()))).await;
        let f = self.next().await;
        assert_eq!(f.opcode, TEXT, "{f:?}");
        let t = f.text();
        assert!(t.contains("\"pong\"") && t.contains(&format!("\"ref\":\"{reference}\"")), "{t}");
    }

    /// Expects the server to fail the connection with `code`: a Close frame with it, then
    /// TCP closed once the client answers.
    pub async fn expect_close(&mut self, code: u16) {
        let f = self.next_close().await;
        assert_eq!(f.close_code(), Some(code), "close frame {f:?}");
        self.send(&fin(CLOSE, &f.payload[..2])).await;
        self.expect_eof().await;
    }

    /// Skips frames until a Close frame.
    pub async fn next_close(&mut self) -> Frame {
        loop {
            let f = self.read().await.expect("a close frame, not EOF");
            if f.opcode == CLOSE {
                return f;
            }
        }
    }

    /// Expects TCP to be closed by the server within `PROMPT`.
    pub async fn expect_eof(&mut self) {
        let start = tokio::time::Instant::now();
        let got = tokio::time::timeout(PROMPT, self.read_inner()).await;
        match got {
            Ok(None) => {}
            Ok(Some(f)) => panic!("expected TCP close, got {f:?}"),
            Err(_) => panic!("TCP still open {:?} after the close handshake", start.elapsed()),
        }
    }
}

/// Parses one unmasked server frame: (frame, bytes used).
fn parse(b: &[u8]) -> Option<(Frame, usize)> {
    if b.len() < 2 {
        return None;
    }
    assert_eq!(b[1] & 0x80, 0, "server frames are never masked");
    let (len, start) = match b[1] & 0x7f {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => (u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let payload = b.get(start..start + len)?.to_vec();
    Some((Frame { fin: b[0] & 0x80 != 0, rsv: b[0] & 0x70, opcode: b[0] & 0x0f, payload }, start + len))
}
