//! Server-to-client frames of the WebSocket protocol, parsed by their `op`.

use crate::error::Error;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// The first frame of every connection (`op: "welcome"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Welcome {
    /// Id of this connection.
    #[serde(deserialize_with = "string_or_number")]
    pub conn_id: String,
    /// User id (the token's `sub`).
    pub user_id: String,
    /// The `client_id` given at connect, if any.
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub client_id: Option<String>,
    /// Id of the node that holds the connection.
    pub instance_id: String,
    /// Server heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
    /// How many stored messages follow this frame.
    pub resumed: u64,
    /// Any further fields (without `op`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A message delivered to the client (`op: "event"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Event {
    /// Message id; grows within a stream.
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    /// `user` or `room:NAME`.
    pub stream: String,
    /// The message type (JSON field `type`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The payload.
    #[serde(default)]
    pub data: Value,
    /// Unix time in milliseconds.
    pub ts: i64,
    /// `high` or `low` when the message was published with that priority; absent for `normal`.
    #[serde(default)]
    pub priority: Option<String>,
}

impl Event {
    /// The room name when the event came from a room stream (`room:NAME`).
    pub fn room(&self) -> Option<&str> {
        self.stream.strip_prefix("room:")
    }
}

/// A success reply to a client frame (`op: "reply"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Reply {
    /// The `ref` of the client frame this answers (JSON field `ref`).
    #[serde(rename = "ref", default, deserialize_with = "opt_string_or_number")]
    pub reference: Option<String>,
    /// Always `true` per the contract.
    pub ok: bool,
    /// All other fields of the reply (without `op`).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A refused client frame (`op: "error"`); the connection stays open.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ErrorFrame {
    /// Error code, e.g. `forbidden`, `invalid_frame`, `rate_limit_exceeded`.
    pub code: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// The `ref` of the refused frame, when it had one (JSON field `ref`).
    #[serde(rename = "ref", default, deserialize_with = "opt_string_or_number")]
    pub reference: Option<String>,
}

/// One server text frame, by its `op`.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `op: "event"`.
    Event(Event),
    /// `op: "reply"`.
    Reply(Reply),
    /// `op: "error"`.
    Error(ErrorFrame),
    /// `op: "pong"`, the answer to a ping.
    Pong {
        /// Server time, unix ms.
        ts: i64,
        /// The ping's `ref`, when the server echoed it.
        reference: Option<String>,
    },
    /// `op: "welcome"` (normally consumed by [`crate::Device::connect`]).
    Welcome(Welcome),
    /// Any other `op`, kept as the raw JSON object.
    Other(Value),
}

#[derive(Deserialize)]
struct PongFields {
    ts: i64,
    #[serde(rename = "ref", default, deserialize_with = "opt_string_or_number")]
    reference: Option<String>,
}

impl Frame {
    /// Parses a server text frame.
    ///
    /// Fails with [`Error::Protocol`] when the text is not a JSON object with a string
    /// `op`, or when a known `op` lacks a required field. Unknown ops give
    /// [`Frame::Other`].
    pub fn parse(text: &str) -> Result<Frame, Error> {
        let value: Value = serde_json::from_str(text).map_err(|e| protocol(text, e))?;
        Frame::from_value(value)
    }

    /// Like [`Frame::parse`], from an already parsed JSON value.
    pub fn from_value(value: Value) -> Result<Frame, Error> {
        let op = match value.get("op") {
            Some(Value::String(op)) => op.as_str(),
            _ => return Err(protocol(&value, "missing or non-string \"op\"")),
        };
        let bad = |e: serde_json::Error| protocol(&value, e);
        Ok(match op {
            "event" => Frame::Event(Event::deserialize(&value).map_err(bad)?),
            "reply" => {
                let mut reply = Reply::deserialize(&value).map_err(bad)?;
                reply.rest.remove("op");
                Frame::Reply(reply)
            }
            "error" => Frame::Error(ErrorFrame::deserialize(&value).map_err(bad)?),
            "pong" => {
                let p = PongFields::deserialize(&value).map_err(bad)?;
                Frame::Pong { ts: p.ts, reference: p.reference }
            }
            "welcome" => {
                let mut welcome = Welcome::deserialize(&value).map_err(bad)?;
                welcome.extra.remove("op");
                Frame::Welcome(welcome)
            }
            _ => Frame::Other(value),
        })
    }

    /// The frame's `op` (`"event"`, `"reply"`, ...; for [`Frame::Other`] the raw op).
    pub fn op(&self) -> &str {
        match self {
            Frame::Event(_) => "event",
            Frame::Reply(_) => "reply",
            Frame::Error(_) => "error",
            Frame::Pong { .. } => "pong",
            Frame::Welcome(_) => "welcome",
            Frame::Other(v) => v.get("op").and_then(Value::as_str).unwrap_or(""),
        }
    }

    /// The `ref` the frame carries, if any.
    pub fn reference(&self) -> Option<&str> {
        match self {
            Frame::Reply(r) => r.reference.as_deref(),
            Frame::Error(e) => e.reference.as_deref(),
            Frame::Pong { reference, .. } => reference.as_deref(),
            Frame::Other(v) => v.get("ref").and_then(Value::as_str),
            Frame::Event(_) | Frame::Welcome(_) => None,
        }
    }

    /// `true` for a reply with `ok: true`, or a pong.
    pub fn is_ok(&self) -> bool {
        match self {
            Frame::Reply(r) => r.ok,
            Frame::Pong { .. } => true,
            _ => false,
        }
    }

    /// The event, if this is one.
    pub fn into_event(self) -> Option<Event> {
        match self {
            Frame::Event(e) => Some(e),
            _ => None,
        }
    }

    /// The reply, or [`Error::UnexpectedFrame`] with this frame.
    pub fn expect_reply(self) -> Result<Reply, Error> {
        match self {
            Frame::Reply(r) => Ok(r),
            other => Err(Error::UnexpectedFrame(Box::new(other))),
        }
    }

    /// The error frame, or [`Error::UnexpectedFrame`] with this frame.
    pub fn expect_error(self) -> Result<ErrorFrame, Error> {
        match self {
            Frame::Error(e) => Ok(e),
            other => Err(Error::UnexpectedFrame(Box::new(other))),
        }
    }

    /// The error code, if this is an error frame.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Frame::Error(e) => Some(&e.code),
            _ => None,
        }
    }
}

fn protocol(raw: impl ToString, reason: impl ToString) -> Error {
    let mut raw = raw.to_string();
    if raw.len() > 1024 {
        let mut cut = 1024;
        while !raw.is_char_boundary(cut) {
            cut -= 1;
        }
        raw.truncate(cut);
        raw.push('…');
    }
    Error::Protocol { reason: reason.to_string(), raw }
}

/// Accepts a JSON string or number as a `String` (ids are opaque to clients).
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!("expected a string or number, got {other}"))),
    }
}

fn opt_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        other => Err(serde::de::Error::custom(format!("expected a string, number or null, got {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_welcome_and_keeps_extra_fields() {
        let f = Frame::parse(
            r#"{"op":"welcome","conn_id":"c1","user_id":"u1","client_id":null,
                "instance_id":"n1","heartbeat_ms":30000,"resumed":3,"cursor":"9"}"#,
        )
        .unwrap();
        let Frame::Welcome(w) = f else { panic!("not a welcome: {f:?}") };
        assert_eq!(w.conn_id, "c1");
        assert_eq!(w.client_id, None);
        assert_eq!(w.heartbeat_ms, 30000);
        assert_eq!(w.resumed, 3);
        assert_eq!(w.extra.get("cursor"), Some(&json!("9")));
        assert!(!w.extra.contains_key("op"));
    }

    #[test]
    fn parses_event_with_type_rename_and_numeric_id() {
        let f = Frame::parse(r#"{"op":"event","id":17,"stream":"room:school:1","type":"chat","data":{"a":1},"ts":5}"#)
            .unwrap();
        let e = f.into_event().unwrap();
        assert_eq!(e.id, "17");
        assert_eq!(e.kind, "chat");
        assert_eq!(e.room(), Some("school:1"));
        assert_eq!(e.data, json!({"a":1}));
        assert_eq!(e.priority, None);
        let f =
            Frame::parse(r#"{"op":"event","id":"e.1.2","stream":"user","type":"t","data":1,"ts":5,"priority":"high"}"#);
        assert_eq!(f.unwrap().into_event().unwrap().priority.as_deref(), Some("high"));
    }

    #[test]
    fn parses_reply_error_pong_with_refs() {
        let r = Frame::parse(r#"{"op":"reply","ref":"r1","ok":true,"room":"x"}"#).unwrap();
        assert_eq!(r.reference(), Some("r1"));
        assert!(r.is_ok());
        let reply = r.expect_reply().unwrap();
        assert_eq!(reply.rest.get("room"), Some(&json!("x")));
        assert!(!reply.rest.contains_key("op") && !reply.rest.contains_key("ref"));

        let e = Frame::parse(r#"{"op":"error","code":"forbidden","message":"no","ref":"r2"}"#).unwrap();
        assert_eq!(e.error_code(), Some("forbidden"));
        assert_eq!(e.reference(), Some("r2"));

        let e = Frame::parse(r#"{"op":"error","code":"invalid_frame","message":"bad"}"#).unwrap();
        assert_eq!(e.reference(), None);

        let p = Frame::parse(r#"{"op":"pong","ts":12,"ref":"r3"}"#).unwrap();
        assert_eq!(p, Frame::Pong { ts: 12, reference: Some("r3".into()) });
    }

    #[test]
    fn unknown_op_is_other() {
        let f = Frame::parse(r#"{"op":"hello","x":1}"#).unwrap();
        assert_eq!(f.op(), "hello");
        assert!(matches!(f, Frame::Other(_)));
    }

    #[test]
    fn rejects_invalid_frames() {
        for text in [
            "not json",
            "[1,2]",
            r#"{"no_op":1}"#,
            r#"{"op":5}"#,
            r#"{"op":"event","id":"1","stream":"user"}"#,
            r#"{"op":"error","message":"no code"}"#,
            r#"{"op":"welcome","conn_id":{},"user_id":"u","instance_id":"n","heartbeat_ms":1,"resumed":0}"#,
        ] {
            assert!(matches!(Frame::parse(text), Err(Error::Protocol { .. })), "accepted {text}");
        }
    }

    #[test]
    fn protocol_error_truncates_on_char_boundary() {
        let long = "é".repeat(2000);
        let Error::Protocol { raw, .. } = protocol(&long, "x") else { unreachable!() };
        assert!(raw.len() <= 1024 + '…'.len_utf8());
    }
}
