//! The task of one WebSocket connection: reads client frames, writes queued frames with
//! vectored writes, and closes cleanly.
//!
//! Memory while idle is the point of this file: the task waits on socket readiness with no
//! read buffer (bytes are read into a stack buffer only when the socket is readable), the
//! decoder and the pending-write list are empty, and there is no per-connection timer
//! (heartbeats come from the hub's sweep). The futures of work an idle connection is not
//! doing (handling a frame, a catch-up read, closing) are boxed when they run, so the task's
//! state machine stays small (about 0.8 KB with the connection itself).
//!
//! Must never: buffer more than one incomplete client frame (bounded by max_frame_bytes),
//! or block the runtime.

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::codec::{self, Decoder, Incoming};
use super::deflate;
use crate::session::{CloseRequest, Session};

/// Frames written in one system call at most.
const MAX_IOV: usize = 64;
/// Bytes read per readiness event before other connections get a turn.
const READ_BUDGET: usize = 256 * 1024;
/// How long a server-initiated close waits for the client's Close frame or EOF.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub struct Connection {
    stream: TcpStream,
    decoder: Decoder,
    /// Frames taken from the outbox and not fully written yet; `offset` into the first.
    pending: Vec<Bytes>,
    offset: usize,
    session: Session,
    max_frame: usize,
    /// Set when permessage-deflate was negotiated.
    deflate: Option<deflate::Settings>,
}

enum Step {
    Continue,
    Close(CloseRequest),
    /// The peer went away (EOF or error): nothing more to send.
    Gone,
}

impl Connection {
    pub fn new(
        stream: TcpStream,
        leftover: Bytes,
        session: Session,
        max_frame: usize,
        deflate: Option<deflate::Settings>,
    ) -> Self {
        let mut decoder = Decoder::new(deflate.is_some());
        if !leftover.is_empty() {
            decoder.feed(&leftover);
        }
        Connection { stream, decoder, pending: Vec::new(), offset: 0, session, max_frame, deflate }
    }

    /// Until the hub fans out events with a deflated encoding cached per message, a
    /// connection that negotiated permessage-deflate compresses its own copy of the large
    /// text frames it takes from the outbox (`pending[from..]`).
    fn deflate_taken(&mut self, from: usize) {
        if let Some(settings) = &self.deflate {
            for f in &mut self.pending[from..] {
                *f = deflate::deflate_frame(std::mem::take(f), settings);
            }
        }
    }

    pub async fn run(mut self, hub: Arc<crate::hub::Hub>, node: Arc<crate::node::Node>) {
        let conn = self.session.conn.clone();
        let end = self.serve(&node).await;
        if let Some((code, reason)) = end {
            Box::pin(self.finish(code, reason)).await;
        }
        hub.remove(&conn);
    }

    /// Runs until the connection ends; returns the close to send, if any.
    async fn serve(&mut self, node: &Arc<crate::node::Node>) -> Option<CloseRequest> {
        let conn = self.session.conn.clone();
        loop {
            // Handle every complete frame already received.
            match self.process_input().await {
                Step::Continue => {}
                Step::Close(c) => return Some(c),
                Step::Gone => return None,
            }
            // Catch up from the store while the queue has room (bounded per turn).
            for _ in 0..4 {
                let Some((stream, after, room)) = conn.next_fill() else {
                    break;
                };
                if !Box::pin(node.fill(&conn, stream, after, room)).await {
                    break;
                }
            }
            if self.pending.is_empty() {
                let close = conn.take(&mut self.pending, MAX_IOV);
                self.deflate_taken(0);
                if let Some(reason) = close {
                    if self.pending.is_empty() {
                        return Some((reason.code, reason.reason));
                    }
                }
            }
            if !self.pending.is_empty() {
                match self.write_pending() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return None,
                }
                if self.pending.is_empty() {
                    continue; // look for more queued frames before sleeping
                }
            }
            let want_write = !self.pending.is_empty();
            tokio::select! {
                r = self.stream.readable() => {
                    if r.is_err() {
                        return None;
                    }
                    match self.read_available() {
                        Ok(true) => conn.touch(node.hub.clock()),
                        Ok(false) => {}
                        Err(_) => return None,
                    }
                }
                r = self.stream.writable(), if want_write => {
                    if r.is_err() {
                        return None;
                    }
                }
                _ = conn.notify.notified(), if !want_write => {}
            }
        }
    }

    /// Reads what the socket has (up to a budget) into the decoder. Ok(false) if nothing
    /// was there; Err on EOF or error.
    fn read_available(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 16 * 1024];
        let mut total = 0;
        loop {
            match self.stream.try_read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.decoder.feed(&buf[..n]);
                    total += n;
                    if total >= READ_BUDGET {
                        return Ok(true);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total > 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn process_input(&mut self) -> Step {
        loop {
            let msg = match self.decoder.next(self.max_frame) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.decoder.shrink();
                    return Step::Continue;
                }
                Err(v) => return Step::Close((v.code, v.reason)),
            };
            let close = match msg {
                // Boxed: the handling of a frame is a large future that an idle connection
                // must not carry in its task (see the module doc).
                Incoming::Text(t) => Box::pin(self.session.on_text(t)).await,
                Incoming::Binary(_) => self.session.on_binary(),
                Incoming::Ping(p) => {
                    self.session.conn.push(codec::encode(codec::OP_PONG, &p));
                    None
                }
                Incoming::Pong => None,
                Incoming::Close(code) => {
                    // Echo the client's close code (the decoder refused invalid ones), or an
                    // empty close for an empty one (RFC 6455 section 5.5.1), then close TCP
                    // at once: the server closes first (section 7.1.1).
                    let frame = match code {
                        Some(c) => codec::close_frame(c, ""),
                        None => codec::encode(codec::OP_CLOSE, &[]),
                    };
                    if Box::pin(self.write_all_now(&frame)).await.is_ok() {
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.stream).await;
                    }
                    return Step::Gone;
                }
            };
            if let Some(c) = close {
                return Step::Close(c);
            }
        }
    }

    /// Writes as much of `pending` as the socket takes without blocking, in one call.
    fn write_pending(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            let mut slices: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let n = self.pending.len().min(MAX_IOV);
            for (i, f) in self.pending[..n].iter().enumerate() {
                slices[i] = IoSlice::new(if i == 0 { &f[self.offset..] } else { f });
            }
            let mut written = self.stream.try_write_vectored(&slices[..n])?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let mut done = 0;
            while done < self.pending.len() {
                let left = self.pending[done].len() - self.offset;
                if written >= left {
                    written -= left;
                    self.offset = 0;
                    done += 1;
                } else {
                    self.offset += written;
                    break;
                }
            }
            self.pending.drain(..done);
        }
        self.pending = Vec::new(); // release the list's memory while idle
        Ok(())
    }

    async fn write_all_now(&mut self, frame: &Bytes) -> io::Result<()> {
        self.pending.push(frame.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.pending.is_empty() {
            match self.write_pending() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::timeout_at(deadline, self.stream.writable())
                        .await
                        .map_err(|_| io::ErrorKind::TimedOut)??;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends what is still pending and a close frame, then reads until the client's Close
    /// frame (or EOF, or `CLOSE_WAIT`) and closes TCP at once (RFC 6455 section 7.1.1).
    /// Data frames that arrive meanwhile are dropped; after a protocol violation the input
    /// cannot be framed any more, so it is only drained until EOF. The write side is shut
    /// down right after the Close frame, so a client that waits for the server to close TCP
    /// first sees it at once.
    async fn finish(&mut self, code: u16, reason: &str) {
        // Frames queued before the close (e.g. the error frames that led to it) go first.
        let conn = self.session.conn.clone();
        loop {
            let before = self.pending.len();
            conn.take(&mut self.pending, MAX_IOV);
            if self.pending.len() == before {
                break;
            }
            self.deflate_taken(before);
        }
        let frame = codec::close_frame(code, reason);
        if self.write_all_now(&frame).await.is_err() {
            return;
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.stream).await;
        let mut framed = code != codec::close::PROTOCOL && code != codec::close::INVALID_DATA;
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            let mut buf = [0u8; 1024];
            loop {
                while framed {
                    match self.decoder.next(self.max_frame) {
                        Ok(Some(Incoming::Close(_))) => return,
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => framed = false,
                    }
                }
                if self.stream.readable().await.is_err() {
                    return;
                }
                match self.stream.try_read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) if framed => self.decoder.feed(&buf[..n]),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }
}
