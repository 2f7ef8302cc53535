//! The syncgate client protocol v1 (JSON text frames): parsing client frames and encoding
//! server frames, each as a complete WebSocket frame in `Bytes`.
//!
//! Owns: the frame shapes of the contract ("Client WebSocket"). A second protocol (e.g.
//! Pusher Channels) would be a sibling module over the same hub.
//!
//! Must never: decide what a frame is allowed to do (that is the session's job), or encode
//! an event more than once per stream position.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::{Code, Error};
use crate::transport::codec;

/// A parsed client frame.
#[derive(Debug)]
pub enum ClientOp<'a> {
    Ping,
    Join { room: &'a str, since: Option<&'a str> },
    Leave { room: &'a str },
    Ack { id: &'a str },
    Publish { kind: &'a str, data: &'a RawValue, room: Option<&'a str> },
    Refresh { token: &'a str },
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow)]
    op: Option<&'a str>,
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
    #[serde(borrow)]
    room: Option<&'a str>,
    #[serde(borrow)]
    since: Option<&'a str>,
    #[serde(borrow)]
    id: Option<&'a str>,
    #[serde(rename = "type", borrow)]
    kind: Option<&'a str>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<&'a str>,
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
    let need = |v: Option<&'a str>, name: &str| v.ok_or_else(|| Error::invalid(format!("missing field `{name}`")));
    let op = match raw.op {
        None => Err(Error::new(Code::InvalidFrame, "missing field `op`")),
        Some("ping") => Ok(ClientOp::Ping),
        Some("join") => need(raw.room, "room").map(|room| ClientOp::Join { room, since: raw.since }),
        Some("leave") => need(raw.room, "room").map(|room| ClientOp::Leave { room }),
        Some("ack") => need(raw.id, "id").map(|id| ClientOp::Ack { id }),
        Some("publish") => match (raw.kind, raw.data) {
            (Some(kind), Some(data)) => Ok(ClientOp::Publish { kind, data, room: raw.room }),
            (None, _) => Err(Error::invalid("missing field `type`")),
            (_, None) => Err(Error::invalid("missing field `data`")),
        },
        Some("refresh") => need(raw.token, "token").map(|token| ClientOp::Refresh { token }),
        Some(other) => Err(Error::new(Code::UnknownOp, format!("unknown op {other:?}"))),
    };
    Parsed { reference: raw.reference, op }
}

/// Appends `s` as a JSON string.
fn push_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Encodes an event frame. `data` is raw, already validated JSON.
pub fn event(id: &str, stream: &str, kind: &str, data: &[u8], ts: i64) -> Bytes {
    let mut out = Vec::with_capacity(64 + id.len() + stream.len() + kind.len() + data.len());
    out.extend_from_slice(b"{\"op\":\"event\",\"id\":");
    push_str(&mut out, id);
    out.extend_from_slice(b",\"stream\":");
    push_str(&mut out, stream);
    out.extend_from_slice(b",\"type\":");
    push_str(&mut out, kind);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(data);
    out.extend_from_slice(b",\"ts\":");
    out.extend_from_slice(ts.to_string().as_bytes());
    out.push(b'}');
    codec::text(&out)
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
    codec::text(&out)
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
    codec::text(&out)
}

/// Encodes a pong.
pub fn pong(ts: i64, reference: Option<&RawValue>) -> Bytes {
    let v = match reference {
        Some(r) => format!("{{\"op\":\"pong\",\"ts\":{ts},\"ref\":{}}}", r.get()),
        None => format!("{{\"op\":\"pong\",\"ts\":{ts}}}"),
    };
    codec::text(v.as_bytes())
}

/// Encodes the welcome frame.
pub fn welcome(w: &serde_json::Value) -> Bytes {
    codec::text(w.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frame: &Bytes) -> serde_json::Value {
        let start = if frame[1] & 0x7f == 126 { 4 } else { 2 };
        serde_json::from_slice(&frame[start..]).unwrap()
    }

    #[test]
    fn parses_ops_and_errors() {
        assert!(matches!(parse(br#"{"op":"ping"}"#).op, Ok(ClientOp::Ping)));
        let p = parse(br#"{"op":"join","room":"a","since":"x.1","ref":7}"#);
        assert_eq!(p.reference.unwrap().get(), "7");
        assert!(matches!(p.op, Ok(ClientOp::Join { room: "a", since: Some("x.1") })));
        assert_eq!(parse(b"nope").op.unwrap_err().code, Code::InvalidFrame);
        assert_eq!(parse(br#"{"ref":1}"#).op.unwrap_err().code, Code::InvalidFrame);
        assert_eq!(parse(br#"{"op":"dance"}"#).op.unwrap_err().code, Code::UnknownOp);
        assert_eq!(parse(br#"{"op":"join"}"#).op.unwrap_err().code, Code::InvalidRequest);
        assert_eq!(parse(br#"{"op":"publish","type":"a"}"#).op.unwrap_err().code, Code::InvalidRequest);
        assert_eq!(parse(br#"{"op":"join","room":5}"#).op.unwrap_err().code, Code::InvalidFrame);
        assert!(matches!(parse(br#"{"op":"refresh","token":"t.k.n"}"#).op, Ok(ClientOp::Refresh { token: "t.k.n" })));
        assert_eq!(parse(br#"{"op":"refresh"}"#).op.unwrap_err().code, Code::InvalidRequest);
    }

    #[test]
    fn encodes_frames_as_json() {
        let e = payload(&event("ab.3", "user", "x\"y", br#"{"k":[1,2]}"#, 42));
        assert_eq!(
            e,
            serde_json::json!({"op":"event","id":"ab.3","stream":"user","type":"x\"y","data":{"k":[1,2]},"ts":42})
        );
        let r: Box<RawValue> = serde_json::from_str("\"r1\"").unwrap();
        let v = payload(&reply(&r, &[("id", serde_json::json!("ab.4"))]));
        assert_eq!(v, serde_json::json!({"op":"reply","ref":"r1","ok":true,"id":"ab.4"}));
        let v = payload(&error(&Error::forbidden("no"), Some(&r)));
        assert_eq!(v, serde_json::json!({"op":"error","code":"forbidden","message":"no","ref":"r1"}));
    }
}
