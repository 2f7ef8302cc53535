//! [`Client`]: a device that stays connected. Reconnects with backoff, resumes every stream
//! after its last handled event, renews its token, rejoins its rooms, and hands each
//! persisted event to the application at least once, in stream order, acknowledging it only
//! after the application said it was processed ([`Delivery::done`]).
//!
//! Owns: the application-facing half (builder, [`Delivery`], requests); the connection
//! loop is in `client_task`. Must never: hand over again an event whose delivery was
//! done, move a checkpoint past an event whose delivery was dropped undone, or take a
//! transient event's id (`EPOCH.tN`) as a checkpoint, `since` or ack.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::client_task::{self, Cmd};
use crate::cursor::{is_handled, is_transient, CursorStore, MemoryCursorStore};
use crate::error::{Error, Result};
use crate::frame::{Event, Reply};

/// A function that returns a fresh token; called before `exp` (renewed in place with the
/// `refresh` op), on 4001, and after a refused connect.
pub type TokenFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = std::result::Result<String, String>> + Send>> + Send + Sync>;

/// Where the client gets its token.
#[derive(Clone)]
pub enum TokenSource {
    Static(String),
    Source(TokenFn),
}

/// The connection state, as a [`watch`] channel shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Connecting,
    Connected,
    Disconnected,
}

/// Settings of a [`Client`]; see [`Client::builder`].
pub struct ClientBuilder {
    pub(crate) base_url: String,
    pub(crate) token: Option<TokenSource>,
    pub(crate) client_id: Option<String>,
    pub(crate) store: Option<Arc<dyn CursorStore>>,
    pub(crate) min_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) heartbeat_timeout: Option<Duration>,
    pub(crate) ack_delay: Duration,
    pub(crate) ack_batch: usize,
}

impl ClientBuilder {
    /// A JWT used for every connection.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(TokenSource::Static(token.into()));
        self
    }

    /// An async function returning a JWT (or an error text).
    pub fn token_source<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<String, String>> + Send + 'static,
    {
        self.token = Some(TokenSource::Source(Arc::new(move || Box::pin(f()))));
        self
    }

    /// The device's stable id: it owns a server-side cursor and names the checkpoints.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// Checkpoint storage (default: [`MemoryCursorStore`]).
    pub fn storage(mut self, store: Arc<dyn CursorStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Backoff bounds between reconnect attempts (default 500 ms and 20 s).
    pub fn reconnect_delays(mut self, min: Duration, max: Duration) -> Self {
        self.min_delay = min;
        self.max_delay = max.max(min);
        self
    }

    /// How long `join`/`leave`/`publish` wait for the connection and the answer (default 10 s).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// A connection that hears nothing this long is dropped (default 2 x `heartbeat_ms`).
    pub fn heartbeat_timeout(mut self, d: Duration) -> Self {
        self.heartbeat_timeout = Some(d);
        self
    }

    /// Acks are sent at most `delay` after an event was done, or after `batch` events.
    pub fn ack_batching(mut self, delay: Duration, batch: usize) -> Self {
        self.ack_delay = delay;
        self.ack_batch = batch.max(1);
        self
    }

    /// Starts the client (a background task on the current Tokio runtime).
    pub fn connect(self) -> Result<Client> {
        let token =
            self.token.clone().ok_or_else(|| Error::InvalidInput("a token or token source is needed".into()))?;
        let store = self.store.clone().unwrap_or_else(|| Arc::new(MemoryCursorStore::new()));
        let shared = Arc::new(Shared {
            store,
            client_id: self.client_id.clone(),
            failed_gen: AtomicU64::new(0),
            fail: Notify::new(),
            ack: Mutex::new((None, 0)),
            ack_now: Notify::new(),
            ack_batch: self.ack_batch,
        });
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(256);
        let (state_tx, state_rx) = watch::channel(State::Disconnected);
        let request_timeout = self.request_timeout;
        tokio::spawn(client_task::run(self, token, shared.clone(), cmd_rx, ev_tx, state_tx));
        Ok(Client { cmd: cmd_tx, events: ev_rx, shared, state: state_rx, request_timeout })
    }
}

/// State shared by the client's handle, its deliveries and its connection task.
pub(crate) struct Shared {
    pub store: Arc<dyn CursorStore>,
    pub client_id: Option<String>,
    /// Deliveries of this connection generation and older are stale (one was dropped undone).
    pub failed_gen: AtomicU64,
    pub fail: Notify,
    /// The id to ack next and how many events it covers.
    pub ack: Mutex<(Option<String>, usize)>,
    pub ack_now: Notify,
    ack_batch: usize,
}

impl Shared {
    pub fn key(&self, stream: &str) -> String {
        format!("syncgate:{}:{stream}", self.client_id.as_deref().unwrap_or("-"))
    }

    /// The stream's checkpoint; a transient id (earlier versions of this crate saved them)
    /// counts as none.
    pub fn checkpoint(&self, stream: &str) -> Option<String> {
        self.store.load(&self.key(stream)).ok().flatten().filter(|id| !is_transient(id))
    }

    fn mark_done(&self, ev: &Event) -> Result<()> {
        if is_transient(&ev.id) {
            return Ok(()); // in no stream: neither a checkpoint nor acked
        }
        let key = self.key(&ev.stream);
        if !is_handled(&ev.id, self.checkpoint(&ev.stream).as_deref()) {
            self.store.save(&key, &ev.id)?;
        }
        if ev.stream == "user" && self.client_id.is_some() {
            let mut a = self.ack.lock().unwrap_or_else(|p| p.into_inner());
            a.0 = Some(ev.id.clone());
            a.1 += 1;
            if a.1 >= self.ack_batch {
                self.ack_now.notify_one();
            }
        }
        Ok(())
    }
}

/// A device connection that reconnects and resumes by itself.
///
/// ```no_run
/// # async fn run() -> Result<(), syncgate_client::Error> {
/// use std::sync::Arc;
/// use syncgate_client::{Client, FileCursorStore};
/// let mut client = Client::builder("http://127.0.0.1:8080")
///     .token_source(|| async { Ok::<_, String>("JWT".to_string()) })
///     .client_id("laptop-1")
///     .storage(Arc::new(FileCursorStore::open("cursors.json")?))
///     .connect()?;
/// client.join("school:1", None).await?;
/// while let Some(delivery) = client.next().await {
///     println!("{} {}", delivery.kind, delivery.data); // process (save) it ...
///     delivery.done()?; // ... then mark it done: checkpointed and acked
/// }
/// # Ok(()) }
/// ```
pub struct Client {
    cmd: mpsc::Sender<Cmd>,
    events: mpsc::Receiver<(u64, Event)>,
    shared: Arc<Shared>,
    state: watch::Receiver<State>,
    request_timeout: Duration,
}

impl Client {
    /// `base_url` is the server's `http://HOST:PORT` (or `ws://`).
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            token: None,
            client_id: None,
            store: None,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
            request_timeout: Duration::from_secs(10),
            heartbeat_timeout: None,
            ack_delay: Duration::from_millis(250),
            ack_batch: 50,
        }
    }

    /// The next event not yet handled, in stream order; `None` once the client is closed.
    /// Handle deliveries one at a time: call [`Delivery::done`] when it is processed.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            let (gen, event) = self.events.recv().await?;
            if gen <= self.shared.failed_gen.load(Ordering::Acquire) {
                continue; // after a dropped delivery: it comes again, from a new connection
            }
            let persisted = (event.stream == "user" || event.stream.starts_with("room:")) && !is_transient(&event.id);
            if persisted && is_handled(&event.id, self.shared.checkpoint(&event.stream).as_deref()) {
                continue;
            }
            return Some(Delivery { event, gen, shared: self.shared.clone(), finished: false });
        }
    }

    /// Watches the connection state.
    pub fn state(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// Waits until connected (at most the request timeout).
    pub async fn connected(&self) -> Result<()> {
        let mut s = self.state.clone();
        let ok =
            tokio::time::timeout(self.request_timeout, async { s.wait_for(|s| *s == State::Connected).await.is_ok() })
                .await
                .map_err(|_| Error::Timeout)?;
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidInput("the client is closed".into()))
        }
    }

    /// Joins `room` now and after every reconnect, resuming after the last handled room
    /// event (or after `since`, when given; a transient event's id is refused).
    pub async fn join(&self, room: &str, since: Option<&str>) -> Result<Reply> {
        if let Some(s) = since.filter(|s| is_transient(s)) {
            return Err(Error::InvalidInput(format!("since {s} is a transient event's id: it is in no stream")));
        }
        let (tx, rx) = oneshot::channel();
        self.call(Cmd::Join { room: room.into(), since: since.map(Into::into), reply: tx }, rx).await
    }

    pub async fn leave(&self, room: &str) -> Result<Reply> {
        let (tx, rx) = oneshot::channel();
        self.call(Cmd::Leave { room: room.into(), reply: tx }, rx).await
    }

    /// Publishes to the user's own stream (their other devices), or to `room`; returns the id.
    pub async fn publish(&self, kind: &str, data: Value, room: Option<&str>) -> Result<String> {
        let (tx, rx) = oneshot::channel();
        let r = self.call(Cmd::Publish { kind: kind.into(), data, room: room.map(Into::into), reply: tx }, rx).await?;
        Ok(r.rest.get("id").and_then(Value::as_str).unwrap_or_default().to_string())
    }

    /// Sends the pending ack, closes with 1000 and stops reconnecting.
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Close(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    async fn call(&self, cmd: Cmd, rx: oneshot::Receiver<Result<Reply>>) -> Result<Reply> {
        self.cmd.send(cmd).await.map_err(|_| Error::InvalidInput("the client is closed".into()))?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Closed { code: None, reason: "client stopped".into() }),
            Err(_) => Err(Error::Timeout),
        }
    }
}

/// One event handed to the application. Call [`done`](Delivery::done) once it is processed:
/// its id becomes the stream's checkpoint and is acked (not a transient event's: those are
/// in no stream). Dropped without `done` (e.g. on an
/// error), the event is not acked and comes again after a reconnect.
pub struct Delivery {
    event: Event,
    gen: u64,
    shared: Arc<Shared>,
    finished: bool,
}

impl Delivery {
    pub fn done(mut self) -> Result<()> {
        self.finished = true;
        self.shared.mark_done(&self.event)
    }
}

impl std::ops::Deref for Delivery {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.failed_gen.fetch_max(self.gen, Ordering::AcqRel);
            self.shared.fail.notify_one();
        }
    }
}
