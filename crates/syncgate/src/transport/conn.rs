//! The task of one WebSocket connection: reads client frames, writes queued items with
//! vectored writes, and closes cleanly.
//!
//! Memory while idle is the point of this file: the task waits on socket readiness with no
//! read buffer (bytes are read into a stack buffer only when the socket is readable), the
//! decoder and the pending-write list are empty, and there is no per-connection timer
//! (heartbeats come from the hub's sweep). The futures of work an idle connection is not
//! doing (handling a frame, a catch-up read, closing) are boxed when they run, so the task's
//! state machine stays small.
//!
//! Writing never waits for the handling of a client frame or for a catch-up read: both run
//! as futures polled beside the socket, so a store call does not stall queued writes. Client
//! frames are handled one at a time, in order; while one is being handled, the socket is not
//! read (TCP pushes back on the client).
//!
//! When nothing is queued and this task holds nothing unwritten, delivery paths (a user's
//! stream, fan-outs, replies; see `hub::pace` for when a large fan-out does) write into the
//! socket themselves (`Socket`, the outbox's `Direct`): a device that keeps up gets each
//! event with one system call and this task is not woken. The task takes over (and direct
//! writes wait) whenever the socket is full or items are queued, and for good once it closes.
//!
//! Events are turned into bytes here, at write time, in the encoding this connection
//! negotiated; each event caches each encoding, so it is encoded once for all recipients.
//!
//! Must never: buffer more than one incomplete client frame (bounded by max_frame_bytes),
//! block the runtime, or keep a socket whose close cannot be written for longer than
//! `CLOSE_WRITE_BOUND` (a peer that stopped reading would pin it for good).

use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::codec::{self, Decoder, Incoming};
use super::deflate;
use crate::close::{self, Close};
use crate::event::Encoding;
use crate::hub::{Conn, Outgoing};
use crate::node::Node;
use crate::protocol;
use crate::session::{Handled, Later, Session};
use crate::streams::outbox::{Direct, Sent};

/// Frames written in one system call at most.
const MAX_IOV: usize = 64;
/// Bytes read per readiness event before other connections get a turn.
const READ_BUDGET: usize = 256 * 1024;
/// How long a connection that must close may take to get its pending bytes and close frame
/// out before the socket is dropped.
const CLOSE_WRITE_BOUND: Duration = Duration::from_secs(5);
/// How long a server-initiated close waits for the client's Close frame or EOF.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

type Filling = Pin<Box<dyn Future<Output = bool> + Send>>;

pub struct Connection {
    io: Io,
    session: Session,
}

/// The socket side: the stream, the decoder, and what is being written.
struct Io {
    /// The socket, shared with the outbox's direct writes while the connection is open.
    sock: Arc<Socket>,
    decoder: Decoder,
    /// Frames taken from the outbox and not fully written yet; `offset` into the first.
    pending: Vec<Bytes>,
    offset: usize,
    max_frame: usize,
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
        let fd = stream.as_raw_fd();
        let sock = Arc::new(Socket { stream, fd, deflate });
        Connection { io: Io { sock, decoder, pending: Vec::new(), offset: 0, max_frame }, session }
    }

    /// The connection's task. Not an `async fn`: one would move its arguments into locals
    /// of its state machine and keep both copies (rust-lang/rust#62958), which here was about
    /// 200 bytes of every idle connection's task; the block below uses `self` in place.
    #[allow(clippy::manual_async_fn)] // on purpose, see above
    pub fn run(mut self, hub: Arc<crate::hub::Hub>, node: Arc<Node>) -> impl Future<Output = ()> + Send {
        async move {
            let conn = self.session.conn().clone();
            conn.set_direct(self.io.sock.clone());
            let end = serve(&mut self.io, &mut self.session, &node).await;
            let code = end.as_ref().map(|c| c.code);
            conn.stop_direct();
            if let Some(c) = end {
                Box::pin(self.io.finish(&conn, c)).await;
            }
            hub.remove(&conn);
            node.events.disconnected(conn.id, code);
        }
    }
}

/// What the decoder's next message asks for, when no frame is being handled.
enum Input {
    /// Nothing (more) to do until more bytes arrive.
    Idle,
    /// A text message whose handling needs I/O.
    Later(Later),
    Close(Close),
    /// The peer went away or closed: nothing more to send.
    Gone,
}

/// Runs until the connection ends; returns the close to send, if any.
async fn serve(io: &mut Io, session: &mut Session, node: &Arc<Node>) -> Option<Close> {
    let conn = session.conn().clone();
    let mut handling: Option<Later> = None;
    let mut filling: Option<Filling> = None;
    // Boxed, and only while a close is blocked: an idle connection's task holds no timer.
    let mut close_deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    // The first catch-up read runs before anything is written: when the device reads its
    // welcome, the stream is live (or the replay is queued behind the welcome), so an event
    // published right after the welcome is delivered live, not by a second read.
    if let Some((stream, after, room)) = conn.next_fill() {
        Box::pin(node.streams.fill(&conn, stream, after, room)).await;
    }
    loop {
        // Start handling the next complete client message, if none is being handled.
        if handling.is_none() {
            match io.next_input(session).await {
                Input::Idle => {}
                Input::Later(f) => handling = Some(f),
                Input::Close(c) => return Some(c),
                Input::Gone => return None,
            }
        }
        // Catch up from the store while the queue has room (one read at a time).
        if filling.is_none() {
            if let Some((stream, after, room)) = conn.next_fill() {
                let (node, c) = (node.clone(), conn.clone());
                filling = Some(Box::pin(async move { node.streams.fill(&c, stream, after, room).await }));
            }
        }
        if io.pending.is_empty() {
            if let Some(c) = io.take(&conn) {
                return Some(c);
            }
        }
        if !io.pending.is_empty() {
            match io.write_pending() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
            if io.pending.is_empty() {
                conn.write_done();
                continue; // look for more queued items before sleeping
            }
            // Blocked on a full socket: if the connection must close, bound the wait.
            if close_deadline.is_none() && conn.closing().is_some() {
                close_deadline = Some(Box::pin(tokio::time::sleep(CLOSE_WRITE_BOUND)));
            }
        }
        let want_write = !io.pending.is_empty();
        let want_read = handling.is_none();
        // Readiness through `poll_*_ready`, not `readable()`/`writable()`: they keep this
        // task's waker in the socket's own slot, replacing the one hyper's connection task
        // left there after the upgrade (which otherwise kept that finished task's 1 KiB
        // allocation alive for the connection's whole life), and their futures hold no
        // waiter node.
        tokio::select! {
            r = std::future::poll_fn(|cx| io.sock.stream.poll_read_ready(cx)), if want_read => {
                if r.is_err() {
                    return None;
                }
                match io.read_available() {
                    Ok(true) => conn.touch(node.hub.clock()),
                    Ok(false) => {}
                    Err(_) => return None,
                }
            }
            r = std::future::poll_fn(|cx| io.sock.stream.poll_write_ready(cx)), if want_write => {
                if r.is_err() {
                    return None;
                }
            }
            _ = conn.notify.notified(), if !want_write => {}
            () = async { handling.as_mut().expect("guarded").await }, if handling.is_some() => {
                handling = None;
            }
            ok = async { filling.as_mut().expect("guarded").await }, if filling.is_some() => {
                filling = None;
                if !ok {
                    // The store failed: try again after a pause, not in a tight loop.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            () = async { close_deadline.as_mut().expect("guarded").await }, if close_deadline.is_some() => {
                node.metrics.slow_consumer_closes.inc();
                return None; // the peer does not read: drop the socket
            }
        }
    }
}

impl Io {
    /// Decodes client messages until one needs I/O to be handled or none is complete; the
    /// rest (control frames, frames the session answers at once) are handled here.
    async fn next_input(&mut self, session: &mut Session) -> Input {
        loop {
            let msg = match self.decoder.next(self.max_frame) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.decoder.shrink();
                    return Input::Idle;
                }
                Err(v) => return Input::Close(v),
            };
            match msg {
                Incoming::Text(t) => match session.on_text(t) {
                    Handled::Done => {}
                    Handled::Close(c) => return Input::Close(c),
                    Handled::Later(f) => return Input::Later(f),
                },
                Incoming::Binary(_) => {
                    if let Some(c) = session.on_binary() {
                        return Input::Close(c);
                    }
                }
                Incoming::Ping(p) => {
                    if let Some(c) = session.on_ping(p) {
                        return Input::Close(c);
                    }
                }
                Incoming::Pong => {}
                Incoming::Close(code) => {
                    // Echo the client's close code (the decoder refused invalid ones), or an
                    // empty close for an empty one (RFC 6455 section 5.5.1), then close TCP
                    // at once: the server closes first (section 7.1.1).
                    let frame = match code {
                        Some(c) => codec::close_frame(c, ""),
                        None => codec::encode(codec::OP_CLOSE, &[]),
                    };
                    session.conn().stop_direct();
                    if Box::pin(self.write_all_now(&frame)).await.is_ok() {
                        self.shutdown_write();
                    }
                    return Input::Gone;
                }
            }
        }
    }

    /// Takes queued items from the outbox and encodes them into `pending`. Returns the close
    /// to send once nothing is queued before it.
    fn take(&mut self, conn: &Conn) -> Option<Close> {
        let mut items = Vec::new();
        let close = conn.take(&mut items, MAX_IOV);
        let deflate = self.sock.deflate.as_ref();
        self.pending.extend(items.iter().map(|i| wire(i, deflate)));
        if self.pending.is_empty() {
            close
        } else {
            None
        }
    }

    /// Reads what the socket has (up to a budget) into the decoder. Ok(false) if nothing
    /// was there; Err on EOF or error.
    fn read_available(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 16 * 1024];
        let mut total = 0;
        loop {
            match self.sock.stream.try_read(&mut buf) {
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

    /// Writes as much of `pending` as the socket takes without blocking, in one call.
    fn write_pending(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            let mut slices: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let n = self.pending.len().min(MAX_IOV);
            for (i, f) in self.pending[..n].iter().enumerate() {
                slices[i] = IoSlice::new(if i == 0 { &f[self.offset..] } else { f });
            }
            let mut written = self.sock.stream.try_write_vectored(&slices[..n])?;
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

    /// Writes `frame` after what is pending, waiting for the socket at most
    /// `CLOSE_WRITE_BOUND` in all.
    async fn write_all_now(&mut self, frame: &Bytes) -> io::Result<()> {
        self.pending.push(frame.clone());
        let deadline = tokio::time::Instant::now() + CLOSE_WRITE_BOUND;
        while !self.pending.is_empty() {
            match self.write_pending() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::timeout_at(deadline, self.sock.stream.writable())
                        .await
                        .map_err(|_| io::ErrorKind::TimedOut)??;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Half-closes the socket: the peer reads EOF after what was written.
    fn shutdown_write(&self) {
        let _ = socket2::SockRef::from(&self.sock.stream).shutdown(std::net::Shutdown::Write);
    }

    /// Sends what is still queued (unless the close drops it) and a close frame, shuts the
    /// write side down, then reads until the client's Close frame (or EOF, or `CLOSE_WAIT`)
    /// and closes TCP at once (RFC 6455 section 7.1.1). Data frames that arrive meanwhile
    /// are dropped; after a protocol violation the input cannot be framed any more, so it is
    /// only drained until EOF.
    async fn finish(&mut self, conn: &Conn, c: Close) {
        // Items queued before the close (e.g. the error frames that led to it) go first. A
        // close that drops the queue left in it at most the rest of a frame a direct write
        // began, which must be completed before the close frame.
        loop {
            let before = self.pending.len();
            self.take(conn);
            if self.pending.len() == before {
                break;
            }
        }
        let frame = codec::close_frame(c.code, c.reason);
        if self.write_all_now(&frame).await.is_err() {
            return;
        }
        self.shutdown_write();
        let mut framed = c.code != close::PROTOCOL && c.code != close::INVALID_DATA;
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
                if self.sock.stream.readable().await.is_err() {
                    return;
                }
                match self.sock.stream.try_read(&mut buf) {
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

/// The bytes of one queued item on a connection (`deflate`: it negotiated permessage-deflate
/// with these settings, which are the node's, so the deflated form of an event is the same
/// for every such connection and is cached in the event).
fn wire(item: &Outgoing, deflate: Option<&deflate::Settings>) -> Bytes {
    match (item, deflate) {
        (Outgoing::Event(ev), None) => ev.encoded(Encoding::WsText, |e| codec::text(&protocol::event(e))),
        (Outgoing::Event(ev), Some(s)) => {
            ev.encoded(Encoding::WsDeflate, |e| deflate::text_frame(&protocol::event(e), s))
        }
        (Outgoing::Reply(msg), Some(s)) => deflate::text_frame(msg, s),
        (Outgoing::Reply(msg), None) => codec::text(msg),
        (Outgoing::Ping, _) => codec::ping_frame(),
        (Outgoing::Pong(p), _) => codec::encode(codec::OP_PONG, p),
        (Outgoing::Raw(b), _) => b.clone(),
    }
}

/// The socket, as the connection's task and the delivery paths' direct writes use it.
struct Socket {
    stream: TcpStream,
    /// `stream`'s descriptor, kept here so that a direct write reads no more than this
    /// struct: it goes to the kernel without tokio's readiness check, whose state lives in
    /// another allocation (one cache miss less per delivery in a large fan-out). Bypassing
    /// tokio is sound: `stream` owns the descriptor for as long as this struct lives, and
    /// a write that would block leaves tokio's readiness as it was, so the task, which
    /// always writes through tokio, just finds out on its own next write.
    fd: RawFd,
    /// Set when permessage-deflate was negotiated.
    deflate: Option<deflate::Settings>,
}

impl Direct for Socket {
    fn try_send(&self, item: &Outgoing) -> Sent {
        let bytes = wire(item, self.deflate.as_ref());
        loop {
            // SAFETY: `fd` is open while `self.stream` lives, and the buffer is `bytes`.
            let n = unsafe {
                libc::send(self.fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            };
            return match n {
                n if n as usize == bytes.len() => Sent::All,
                n if n > 0 => Sent::Part(bytes.slice(n as usize..)),
                0 => Sent::Nothing,
                _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => continue,
                // Would block, or failed: the task finds out when it writes.
                _ => Sent::Nothing,
            };
        }
    }
}
