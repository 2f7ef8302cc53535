//! A client's session: what a connected device may do with the frames it sends.
//!
//! Owns: the handling of client operations (ping, join, leave, ack, publish, refresh), their
//! permission checks against the token's claims and the room config, and the per-connection
//! frame rate limit with its strike count. Where a join starts and what an ack means are
//! the `streams` module's rules.
//!
//! A frame is handled in two parts: what needs no I/O (parsing, the rate limit, ping, leave,
//! refresh) at once, on the connection's task; what needs the store or the broker (join,
//! ack, publish) as a `Later` future that owns what it needs, which the transport polls
//! beside its writes so a slow store call never stalls delivery.
//!
//! Must never: write to the socket (answers go through the connection's outbox), or let a
//! refused frame change anything.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use serde_json::value::RawValue;

use crate::auth::{pattern_matches, AuthError, Claims, RoomGrants};
use crate::close::{self, Close};
use crate::error::{Code, Error, Result};
use crate::hub::{Conn, StreamPos};
use crate::limits::FrameLimiter;
use crate::metrics::KindLabels;
use crate::node::{now_ms, Message, Node};
use crate::protocol::{self, ClientOp};
use crate::store::{EventId, StreamKey};
use crate::streams::Outgoing;

/// The close a session asks for.
pub type CloseRequest = Close;

/// The I/O part of a frame's handling, to be polled to completion by the transport.
pub type Later = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What the synchronous part of handling a frame decided.
pub enum Handled {
    Done,
    Close(Close),
    Later(Later),
}

pub struct Session {
    ops: Ops,
    /// Created on the first frame: most connections of a push gateway never send one.
    limiter: Option<Box<FrameLimiter>>,
    strikes: u32,
    /// Room patterns the connect proxy granted at the upgrade, added to every token's
    /// (the first and each `refresh`); none for most connections.
    proxy_rooms: Option<Box<[Box<str>]>>,
}

/// What the operations of a session need: cheap to clone into a `Later` future.
#[derive(Clone)]
struct Ops {
    node: Arc<Node>,
    conn: Arc<Conn>,
    /// The token's room patterns (the rest of its claims is not kept).
    grants: RoomGrants,
}

/// An operation that needs I/O, with what it needs owned.
enum Io {
    Join { room: String, since: Option<String> },
    Ack { id: String },
    Publish { kind: String, data: Bytes, room: Option<String> },
}

type Reply = Result<Vec<(&'static str, serde_json::Value)>>;

impl Session {
    /// A session for an admitted connection: its token's claims and the room patterns the
    /// connect proxy granted (`proxy_rooms`, empty without a proxy).
    pub fn new(node: Arc<Node>, conn: Arc<Conn>, claims: Claims, proxy_rooms: Vec<String>) -> Self {
        let proxy_rooms: Option<Box<[Box<str>]>> =
            (!proxy_rooms.is_empty()).then(|| proxy_rooms.into_iter().map(String::into_boxed_str).collect());
        let grants = with_rooms(claims, proxy_rooms.as_deref()).into_grants();
        Session { ops: Ops { node, conn, grants }, limiter: None, strikes: 0, proxy_rooms }
    }

    pub fn conn(&self) -> &Arc<Conn> {
        &self.ops.conn
    }

    /// Counts a data frame against the rate limit. `Err(Some(close))` when the connection
    /// has gone on flooding past the strike count.
    fn admit_frame(&mut self, reference: Option<&RawValue>) -> std::result::Result<(), Option<CloseRequest>> {
        self.ops.node.metrics.frames_in.inc();
        if self.over_limit()? {
            self.ops.send_error(&Error::new(Code::RateLimitExceeded, "too many frames; slow down"), reference);
            return Err(None);
        }
        Ok(())
    }

    /// Takes one frame from the rate limit: Ok(false) within it, Ok(true) over it (a strike),
    /// `Err(close)` once the strikes in a row reach `rate_limits.client_frames_strikes`.
    fn over_limit(&mut self) -> std::result::Result<bool, Option<CloseRequest>> {
        let node = &self.ops.node;
        if self.limiter.is_none() {
            self.limiter = node.limits.frame_limiter();
        }
        let Some(l) = &self.limiter else {
            return Ok(false);
        };
        if l.check().is_ok() {
            self.strikes = 0;
            return Ok(false);
        }
        node.metrics.rate_limited.get_or_create(&crate::metrics::LimitLabels { limiter: "client_frames" }).inc();
        self.strikes += 1;
        if self.strikes >= node.limits.frame_strikes {
            return Err(Some(Close::new(close::RATE_LIMITED, "rate limited")));
        }
        Ok(true)
    }

    /// A WebSocket ping: answered with a pong (RFC 6455 section 5.5.2), and counted toward
    /// `rate_limits.client_frames` like a data frame, so that a flood of pings is closed
    /// with 4029 after the strikes (a ping over the limit is still answered).
    pub fn on_ping(&mut self, payload: Bytes) -> Option<CloseRequest> {
        if let Err(close) = self.over_limit() {
            return close;
        }
        self.ops.conn.push(Outgoing::Pong(payload));
        None
    }

    /// A binary frame: not part of the protocol; refused, the connection stays.
    pub fn on_binary(&mut self) -> Option<CloseRequest> {
        if let Err(close) = self.admit_frame(None) {
            return close;
        }
        self.ops.send_error(
            &Error::new(Code::InvalidFrame, "binary frames are not supported; send JSON text frames"),
            None,
        );
        None
    }

    /// A text frame.
    pub fn on_text(&mut self, text: Bytes) -> Handled {
        let parsed = protocol::parse(&text);
        let reference = parsed.reference;
        if let Err(close) = self.admit_frame(reference) {
            return close.map_or(Handled::Done, Handled::Close);
        }
        let op = match parsed.op {
            Ok(op) => op,
            Err(e) => {
                self.ops.send_error(&e, reference);
                return Handled::Done;
            }
        };
        let io = match op {
            ClientOp::Ping => {
                self.ops.conn.reply(protocol::pong(now_ms(), reference));
                return Handled::Done;
            }
            ClientOp::Leave { room } => {
                let r = self.ops.leave(&room);
                self.ops.answer(r, reference);
                return Handled::Done;
            }
            ClientOp::Refresh { token } => {
                let r = self.refresh(&token);
                self.ops.answer(r, reference);
                return Handled::Done;
            }
            ClientOp::Join { room, since } => Io::Join { room: room.into(), since: since.map(Into::into) },
            ClientOp::Ack { id } => Io::Ack { id: id.into() },
            ClientOp::Publish { kind, data, room } => {
                // `data` is a slice of the frame: shared, not copied.
                let data = text.slice_ref(data.get().as_bytes());
                Io::Publish { kind: kind.into(), data, room: room.map(Into::into) }
            }
        };
        let ops = self.ops.clone();
        let reference = reference.map(|r| r.to_owned());
        Handled::Later(Box::pin(async move {
            let r = match io {
                Io::Join { room, since } => ops.join(&room, since.as_deref()).await,
                Io::Ack { id } => ops.ack(&id).await,
                Io::Publish { kind, data, room } => ops.publish(&kind, data, room.as_deref()).await,
            };
            ops.answer(r, reference.as_deref());
        }))
    }

    /// Renews the connection's token in place: same user (and device, if the token names
    /// one); the new expiry replaces the old one, the new claims apply to later joins.
    fn refresh(&mut self, token: &str) -> Reply {
        let claims = self.ops.node.auth.verify(token).map_err(|e| match e {
            AuthError::Expired => Error::unauthorized("token expired"),
            other => Error::unauthorized(other.to_string()),
        })?;
        if *claims.sub != *self.ops.conn.user {
            return Err(Error::forbidden("the new token is for another user"));
        }
        if let (Some(bound), Some(cid)) = (&claims.client_id, &self.ops.conn.client_id) {
            if **bound != **cid {
                return Err(Error::forbidden("the new token is for another client_id"));
            }
        }
        self.ops.conn.token_exp.store(claims.exp, Ordering::Relaxed);
        let exp = claims.exp;
        self.ops.grants = with_rooms(claims, self.proxy_rooms.as_deref()).into_grants();
        Ok(vec![("exp", json!(exp))])
    }
}

/// `claims` with the connect proxy's room patterns added to the token's.
fn with_rooms(mut claims: Claims, proxy_rooms: Option<&[Box<str>]>) -> Claims {
    claims.rooms.extend(proxy_rooms.unwrap_or_default().iter().map(|r| r.to_string()));
    claims
}

impl Ops {
    fn send_error(&self, err: &Error, reference: Option<&RawValue>) {
        self.node.metrics.client_errors.get_or_create(&KindLabels { kind: err.code.as_str() }).inc();
        self.conn.reply(protocol::error(err, reference));
    }

    /// Queues the reply (if the frame had a ref) or the error.
    fn answer(&self, r: Reply, reference: Option<&RawValue>) {
        match r {
            Ok(extra) => {
                if let Some(r) = reference {
                    self.conn.reply(protocol::reply(r, &extra));
                }
            }
            Err(e) => self.send_error(&e, reference),
        }
    }

    async fn join(&self, room: &str, since: Option<&str>) -> Reply {
        self.node.check_name("room", room)?;
        if !self.grants.may_join(&self.conn.user, room) {
            return Err(Error::forbidden(format!("the token does not allow room {room:?}")));
        }
        if self.conn.in_room(room) {
            return Ok(vec![("room", json!(room)), ("already", json!(true))]);
        }
        if self.conn.room_count() >= self.node.cfg.limits.max_rooms_per_connection {
            return Err(Error::forbidden(format!(
                "a connection may be in at most {} rooms",
                self.node.cfg.limits.max_rooms_per_connection
            )));
        }
        let start = self.node.streams.room_start(room, since).await?;
        if !self.node.hub.join(&self.conn, room, Some(StreamPos::resume_from(start.cursor))) {
            return Ok(vec![("room", json!(room)), ("already", json!(true))]);
        }
        // `position`: where this join started, valid as `since` on a later join (a client's
        // first checkpoint for the room, so a rejoin after zero events loses nothing).
        let position = EventId::format(self.node.epoch(), StreamKey::Room(room), start.cursor);
        Ok(vec![("room", json!(room)), ("resumed", json!(start.resumed)), ("position", json!(position))])
    }

    fn leave(&self, room: &str) -> Reply {
        if !self.node.hub.leave(&self.conn, room) {
            return Err(Error::not_found(format!("not in room {room:?}")));
        }
        Ok(vec![("room", json!(room))])
    }

    async fn ack(&self, id: &str) -> Reply {
        let Some(client_id) = &self.conn.client_id else {
            return Err(Error::invalid("ack needs a client id: connect with ?client_id="));
        };
        let cursor = self.node.streams.ack(&self.conn.user, client_id, id).await?;
        Ok(vec![("cursor", json!(cursor))])
    }

    async fn publish(&self, kind: &str, data: Bytes, room: Option<&str>) -> Reply {
        self.node.check_type(kind)?;
        let raw = data.clone();
        let msg =
            Message { kind, data, persist: true, ttl: None, priority: Default::default(), except: Some(self.conn.id) };
        let id = match room {
            None => {
                let user = self.conn.user.to_string();
                self.node.publish_users(std::slice::from_ref(&user), msg).await?.pop().unwrap_or_default()
            }
            Some(room) => {
                self.node.check_name("room", room)?;
                let allowed = self.node.cfg.rooms.client_publish.iter().any(|p| pattern_matches(p, room));
                if !allowed || !self.grants.may_join(&self.conn.user, room) {
                    return Err(Error::forbidden(format!("clients may not publish to room {room:?}")));
                }
                self.node.publish_room(room, msg).await?
            }
        };
        self.node.count_in("client", 1);
        let client = self.conn.client_id.as_deref();
        self.node.events.client_published(&self.conn.user, client, kind, room, &id, &raw);
        Ok(vec![("id", json!(id))])
    }
}
