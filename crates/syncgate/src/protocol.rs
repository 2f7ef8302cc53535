//! The syncgate client protocol v1 (JSON text messages): parsing client messages and
//! serializing server messages.
//!
//! Owns: the message shapes of the contract ("Client WebSocket"). It produces JSON text; the
//! transport frames it (and compresses it where negotiated). A second protocol (e.g. Pusher
//! Channels) would be a sibling module over the same hub and the same `Event`s.
//!
//! Must never: decide what a message is allowed to do (that is the session's job), or know
//! the WebSocket framing.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{Code, Error};
use crate::event::{Event, Priority, StreamName};

/// A parsed client frame. Strings are borrowed from the frame unless they contain JSON
/// escapes (`"caf\u00e9"`, `"a\/b"`), which are decoded.
#[derive(Debug)]
pub enum ClientOp<'a> {
    Ping,
    Join { room: Cow<'a, str>, since: Option<Cow<'a, str>> },
    Leave { room: Cow<'a, str> },
    Ack { id: Cow<'a, str> },
    Publish { kind: Cow<'a, str>, data: &'a RawValue, room: Option<Cow<'a, str>> },
    Refresh { token: Cow<'a, str> },
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow)]
    since: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RefOnly<'a> {
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
}

/// A client frame: its `ref` (echoed in the answer, as given) and the operation, or the
/// error to answer with.
pub struct Parsed<'a> {
    pub reference: Option<&'a RawValue>,
    pub op: Result<ClientOp<'a>, Error>,
}

/// Parses one text frame.
pub fn parse<'a>(text: &'a [u8]) -> Parsed<'a> {
    // serde reads a struct from a JSON array too (fields by position): only objects are frames.
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Parsed { reference: None, op: Err(Error::new(Code::InvalidFrame, "frame is not a JSON object")) };
    }
    let raw: RawFrame<'a> = match serde_json::from_slice(text) {
        Ok(r) => r,
        Err(e) => {
            let msg = if e.is_data() {
                format!("frame fields have the wrong type: {e}")
            } else {
                format!("frame is not a JSON object: {e}")
            };
            // Keep the ref if the frame is an object with one, so the client can match the error.
            let reference = serde_json::from_slice::<RefOnly>(text).ok().and_then(|r| r.reference);
            return Parsed { reference, op: Err(Error::new(Code::InvalidFrame, msg)) };
        }
    };
    let need = |v: Option<Cow<'a, str>>, name: &str| v.ok_or_else(|| Error::invalid(format!("missing field `{name}`")));
    let op = match raw.op.as_deref() {
        None => Err(Error::new(Code::InvalidFrame, "missing field `op`")),
        Some("ping") => Ok(ClientOp::Ping),
        Some("join") => need(raw.room, "room").map(|room| ClientOp::Join { room, since: raw.since }),
        Some("leave") => need(raw.room, "room").map(|room| ClientOp::Leave { room }),
        Some("ack") => need(raw.id, "id").map(|id| ClientOp::Ack { id }),
        Some("refresh") => need(raw.token, "token").map(|token| ClientOp::Refresh { token }),
        Some("publish") => match (raw.kind, raw.data) {
            (Some(kind), Some(data)) => Ok(ClientOp::Publish { kind, data, room: raw.room }),
            (None, _) => Err(Error::invalid("missing field `type`")),
            (_, None) => Err(Error::invalid("missing field `data`")),
        },
        Some(other) => Err(Error::new(Code::UnknownOp, format!("unknown op {other:?}"))),
    };
    Parsed { reference: raw.reference, op }
}

/// Appends `s` as a JSON string.
fn push_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends an event message (JSON text) to `out`. `data` is raw, already validated JSON and
/// is copied as is; `priority` is written only when it is not `normal`.
pub fn write_event(out: &mut Vec<u8>, ev: &Event) {
    out.reserve(80 + ev.id.len() + ev.kind.len() + ev.data.len());
    out.extend_from_slice(b"{\"op\":\"event\",\"id\":");
    push_str(out, &ev.id);
    out.extend_from_slice(b",\"stream\":");
    match &ev.stream {
        StreamName::User => out.extend_from_slice(b"\"user\""),
        StreamName::Broadcast => out.extend_from_slice(b"\"broadcast\""),
        StreamName::Room(r) => push_str(out, &format!("room:{r}")),
    }
    out.extend_from_slice(b",\"type\":");
    push_str(out, &ev.kind);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(&ev.data);
    out.extend_from_slice(b",\"ts\":");
    out.extend_from_slice(ev.ts.to_string().as_bytes());
    if ev.priority != Priority::Normal {
        out.extend_from_slice(b",\"priority\":\"");
        out.extend_from_slice(ev.priority.as_str().as_bytes());
        out.push(b'"');
    }
    out.push(b'}');
}

/// An event message as JSON text.
pub fn event(ev: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    write_event(&mut out, ev);
    out
}

/// Encodes a success reply to a frame that had a `ref` (`extra` is a JSON object's members).
pub fn reply(reference: &RawValue, extra: &[(&str, serde_json::Value)]) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"op\":\"reply\",\"ref\":");
    out.extend_from_slice(reference.get().as_bytes());
    out.extend_from_slice(b",\"ok\":true");
    for (k, v) in extra {
        out.push(b',');
        push_str(&mut out, k);
        out.push(b':');
        let _ = serde_json::to_writer(&mut out, v);
    }
    out.push(b'}');
    out.into()
}

/// Encodes an error frame.
pub fn error(err: &Error, reference: Option<&RawValue>) -> Bytes {
    let mut out = Vec::with_capacity(64 + err.message.len());
    out.extend_from_slice(b"{\"op\":\"error\",\"code\":");
    push_str(&mut out, err.code.as_str());
    out.extend_from_slice(b",\"message\":");
    push_str(&mut out, &err.message);
    if let Some(r) = reference {
        out.extend_from_slice(b",\"ref\":");
        out.extend_from_slice(r.get().as_bytes());
    }
    out.push(b'}');
    out.into()
}

/// Encodes a pong.
pub fn pong(ts: i64, reference: Option<&RawValue>) -> Bytes {
    let v = match reference {
        Some(r) => format!("{{\"op\":\"pong\",\"ts\":{ts},\"ref\":{}}}", r.get()),
        None => format!("{{\"op\":\"pong\",\"ts\":{ts}}}"),
    };
    v.into()
}

/// Encodes the welcome frame.
pub fn welcome(w: &serde_json::Value) -> Bytes {
    w.to_string().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(msg: &[u8]) -> serde_json::Value {
        serde_json::from_slice(msg).unwrap()
    }

    #[test]
    fn parses_ops_and_errors() {
        assert!(matches!(parse(br#"{"op":"ping"}"#).op, Ok(ClientOp::Ping)));
        let p = parse(br#"{"op":"join","room":"a","since":"x.1","ref":7}"#);
        assert_eq!(p.reference.unwrap().get(), "7");
        assert!(matches!(p.op, Ok(ClientOp::Join { room, since: Some(since) }) if room == "a" && since == "x.1"));
        assert_eq!(parse(b"nope").op.unwrap_err().code, Code::InvalidFrame);
        assert_eq!(parse(br#"{"ref":1}"#).op.unwrap_err().code, Code::InvalidFrame);
        assert_eq!(parse(br#"{"op":"dance"}"#).op.unwrap_err().code, Code::UnknownOp);
        assert_eq!(parse(br#"{"op":"join"}"#).op.unwrap_err().code, Code::InvalidRequest);
        assert_eq!(parse(br#"{"op":"publish","type":"a"}"#).op.unwrap_err().code, Code::InvalidRequest);
        assert_eq!(parse(br#"{"op":"join","room":5}"#).op.unwrap_err().code, Code::InvalidFrame);
        // An array is not a frame, even one whose elements line up with the fields.
        let arr = parse(br#" ["ping",null,null,null,null,null,null,null]"#);
        assert_eq!(arr.op.unwrap_err().code, Code::InvalidFrame);
        assert!(matches!(parse(b" \n{\"op\":\"ping\"}").op, Ok(ClientOp::Ping)), "leading whitespace is fine");
    }

    #[test]
    fn escaped_strings_are_decoded_not_refused() {
        let p = parse(br#"{"op":"join","room":"caf\u00e9","since":"a\/b"}"#);
        assert!(matches!(p.op, Ok(ClientOp::Join { room, since: Some(s) }) if room == "café" && s == "a/b"));
        let p = parse(br#"{"op":"publish","type":"a\/b","data":{"x":"\u0041"},"room":"r\u00f6"}"#);
        match p.op {
            Ok(ClientOp::Publish { kind, data, room }) => {
                assert_eq!(kind, "a/b");
                assert_eq!(data.get(), r#"{"x":"\u0041"}"#, "data stays byte-exact");
                assert_eq!(room.as_deref(), Some("rö"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(br#"{"op":"\u0070ing"}"#).op, Ok(ClientOp::Ping)));
        assert!(matches!(parse(br#"{"op":"ack","id":"e.\u0031"}"#).op, Ok(ClientOp::Ack { id }) if id == "e.1"));
    }

    #[test]
    fn encodes_frames_as_json() {
        let ev = Event::new(
            "ab.3".into(),
            StreamName::User,
            "x\"y",
            Bytes::from_static(br#"{"k":[1,2]}"#),
            42,
            Priority::Normal,
        );
        assert_eq!(
            payload(&event(&ev)),
            serde_json::json!({"op":"event","id":"ab.3","stream":"user","type":"x\"y","data":{"k":[1,2]},"ts":42})
        );
        let ev =
            Event::new("r.1".into(), StreamName::Room("a\"b".into()), "t", Bytes::from_static(b"1"), 7, Priority::High);
        assert_eq!(
            payload(&event(&ev)),
            serde_json::json!({"op":"event","id":"r.1","stream":"room:a\"b","type":"t","data":1,"ts":7,"priority":"high"})
        );
        let r: Box<RawValue> = serde_json::from_str("\"r1\"").unwrap();
        let v = payload(&reply(&r, &[("id", serde_json::json!("ab.4"))]));
        assert_eq!(v, serde_json::json!({"op":"reply","ref":"r1","ok":true,"id":"ab.4"}));
        let v = payload(&error(&Error::forbidden("no"), Some(&r)));
        assert_eq!(v, serde_json::json!({"op":"error","code":"forbidden","message":"no","ref":"r1"}));
    }
}
