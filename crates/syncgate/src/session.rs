//! A client's session: what a connected device may do with the frames it sends.
//!
//! Owns: the handling of client operations (ping, join, leave, ack, publish, refresh), their
//! permission checks against the token's claims and the room config, and the per-connection
//! frame rate limit with its strike count.
//!
//! Must never: write to the socket (answers go through the connection's outbox), or let a
//! refused frame change anything.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use serde_json::value::RawValue;

use crate::auth::{pattern_matches, Claims};
use crate::error::{Code, Error, Result};
use crate::hub::{Conn, StreamPos};
use crate::limits::FrameLimiter;
use crate::metrics::KindLabels;
use crate::node::{now_ms, Message, Node};
use crate::protocol::{self, ClientOp};
use crate::store::{EventId, StreamKey};
use crate::transport::codec::close;

/// The close a session asks for.
pub type CloseRequest = (u16, &'static str);

pub struct Session {
    node: Arc<Node>,
    pub conn: Arc<Conn>,
    claims: Claims,
    /// Created on the first frame: most connections of a push gateway never send one.
    limiter: Option<Box<FrameLimiter>>,
    strikes: u32,
}

impl Session {
    pub fn new(node: Arc<Node>, conn: Arc<Conn>, claims: Claims) -> Self {
        Session { node, conn, claims, limiter: None, strikes: 0 }
    }

    /// Counts a data frame against the rate limit. `Err(Some(close))` when the connection
    /// has gone on flooding past the strike count.
    fn admit_frame(&mut self, reference: Option<&RawValue>) -> std::result::Result<(), Option<CloseRequest>> {
        self.node.metrics.frames_in.inc();
        if self.limiter.is_none() {
            self.limiter = self.node.limits.frame_limiter();
        }
        let Some(l) = &self.limiter else {
            return Ok(());
        };
        if l.check().is_ok() {
            self.strikes = 0;
            return Ok(());
        }
        self.node.metrics.rate_limited.get_or_create(&crate::metrics::LimitLabels { limiter: "client_frames" }).inc();
        self.strikes += 1;
        if self.strikes >= self.node.limits.frame_strikes {
            return Err(Some((close::RATE_LIMITED, "rate limited")));
        }
        self.send_error(&Error::new(Code::RateLimitExceeded, "too many frames; slow down"), reference);
        Err(None)
    }

    fn send_error(&self, err: &Error, reference: Option<&RawValue>) {
        self.node.metrics.client_errors.get_or_create(&KindLabels { kind: err.code.as_str() }).inc();
        self.conn.push(protocol::error(err, reference));
    }

    /// A binary frame: not part of the protocol; refused, the connection stays.
    pub fn on_binary(&mut self) -> Option<CloseRequest> {
        if let Err(close) = self.admit_frame(None) {
            return close;
        }
        self.send_error(
            &Error::new(Code::InvalidFrame, "binary frames are not supported; send JSON text frames"),
            None,
        );
        None
    }

    /// A text frame.
    pub async fn on_text(&mut self, text: Bytes) -> Option<CloseRequest> {
        let parsed = protocol::parse(&text);
        let reference = parsed.reference;
        if let Err(close) = self.admit_frame(reference) {
            return close;
        }
        let op = match parsed.op {
            Ok(op) => op,
            Err(e) => {
                self.send_error(&e, reference);
                return None;
            }
        };
        let result = match op {
            ClientOp::Ping => {
                self.conn.push(protocol::pong(now_ms(), reference));
                return None;
            }
            ClientOp::Join { room, since } => self.join(room, since).await,
            ClientOp::Leave { room } => self.leave(room),
            ClientOp::Ack { id } => self.ack(id).await,
            ClientOp::Publish { kind, data, room } => self.publish(kind, data, room).await,
            ClientOp::Refresh { token } => self.refresh(token),
        };
        match result {
            Ok(extra) => {
                if let Some(r) = reference {
                    self.conn.push(protocol::reply(r, &extra));
                }
            }
            Err(e) => self.send_error(&e, reference),
        }
        None
    }

    async fn join(&self, room: &str, since: Option<&str>) -> Result<Vec<(&'static str, serde_json::Value)>> {
        self.node.check_name("room", room)?;
        if !self.claims.may_join(room) {
            return Err(Error::forbidden(format!("the token does not allow room {room:?}")));
        }
        if self.conn.room_count() >= self.node.cfg.limits.max_rooms_per_connection {
            return Err(Error::forbidden(format!(
                "a connection may be in at most {} rooms",
                self.node.cfg.limits.max_rooms_per_connection
            )));
        }
        let head = self.node.store.read_room(room, u64::MAX, 0).await?;
        let start = match since {
            Some(s) => {
                let seq = EventId::parse(s, self.node.epoch(), StreamKey::Room(room))?;
                if seq > head.head {
                    return Err(Error::invalid(format!("since {s:?} is ahead of the room's history")));
                }
                seq
            }
            None => head.head,
        };
        let resumed = head.head - start.max(head.first.saturating_sub(1)).min(head.head);
        if !self.node.hub.join(&self.conn, room, Some(StreamPos::resume_from(start))) {
            return Ok(vec![("room", json!(room)), ("already", json!(true))]);
        }
        // `position`: where this join started, valid as `since` on a later join (a client's
        // first checkpoint for the room, so a rejoin after zero events loses nothing).
        let position = EventId::format(self.node.epoch(), StreamKey::Room(room), start);
        Ok(vec![("room", json!(room)), ("resumed", json!(resumed)), ("position", json!(position))])
    }

    fn leave(&self, room: &str) -> Result<Vec<(&'static str, serde_json::Value)>> {
        if !self.node.hub.leave(&self.conn, room) {
            return Err(Error::not_found(format!("not in room {room:?}")));
        }
        Ok(vec![("room", json!(room))])
    }

    async fn ack(&self, id: &str) -> Result<Vec<(&'static str, serde_json::Value)>> {
        let Some(client_id) = &self.conn.client_id else {
            return Err(Error::invalid("ack needs a client id: connect with ?client_id="));
        };
        let seq = EventId::parse(id, self.node.epoch(), StreamKey::User(&self.conn.user))?;
        let head = self.node.store.read_user(&self.conn.user, u64::MAX, 0).await?.head;
        if seq > head {
            return Err(Error::invalid(format!("id {id:?} is ahead of this user's stream")));
        }
        let cursor = self.node.store.set_cursor(&self.conn.user, client_id, seq).await?;
        Ok(vec![("cursor", json!(EventId::format(self.node.epoch(), StreamKey::User(&self.conn.user), cursor)))])
    }

    async fn publish(
        &self,
        kind: &str,
        data: &RawValue,
        room: Option<&str>,
    ) -> Result<Vec<(&'static str, serde_json::Value)>> {
        self.node.check_type(kind)?;
        let msg = Message {
            kind,
            data: Bytes::copy_from_slice(data.get().as_bytes()),
            persist: true,
            ttl: None,
            except: Some(self.conn.id),
        };
        let id = match room {
            None => {
                let user = self.conn.user.to_string();
                self.node.publish_users(std::slice::from_ref(&user), msg).await?.pop().unwrap_or_default()
            }
            Some(room) => {
                self.node.check_name("room", room)?;
                let allowed = self.node.cfg.rooms.client_publish.iter().any(|p| pattern_matches(p, room));
                if !allowed || !self.claims.may_join(room) {
                    return Err(Error::forbidden(format!("clients may not publish to room {room:?}")));
                }
                self.node.publish_room(room, msg).await?
            }
        };
        self.node.count_in("client", 1);
        Ok(vec![("id", json!(id))])
    }

    /// Renews the connection's token in place: the new token must be valid and for the same
    /// user (and the same client id, when it names one); its claims replace the old ones.
    fn refresh(&mut self, token: &str) -> Result<Vec<(&'static str, serde_json::Value)>> {
        let claims = self.node.auth.verify(token).map_err(|e| Error::unauthorized(format!("refresh refused: {e}")))?;
        if claims.sub != self.claims.sub {
            return Err(Error::forbidden("the new token is for another user"));
        }
        if let Some(c) = &claims.client_id {
            if self.conn.client_id.as_deref() != Some(c.as_str()) {
                return Err(Error::forbidden("the new token is for another client_id"));
            }
        }
        self.conn.token_exp.store(claims.exp, std::sync::atomic::Ordering::Relaxed);
        let exp = claims.exp;
        self.claims = claims;
        Ok(vec![("exp", json!(exp))])
    }
}
