//! The unit of fan-out: a published message as the domain knows it (id, stream, type, data,
//! time, priority), not as one wire format encodes it.
//!
//! Each wire encoding (the JSON frame over WebSocket, the same deflated, later other
//! protocols) is made lazily, at most once per event, by the first connection that needs it,
//! and shared by every other recipient that uses the same encoding: the event keeps one slot
//! per encoding. Fan-out clones the `Arc<Event>`, never the payload.
//!
//! Must never: know how an encoding is made (the transport and protocol modules do that), or
//! copy `data` (it is the publisher's bytes, shared).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// Which stream an event belongs to, as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamName {
    /// The recipient's own user stream.
    User,
    /// A room's stream.
    Room(Arc<str>),
    /// A live-only message to everyone.
    Broadcast,
}

/// Message priority (contract: `high | normal | low`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    pub fn from_code(c: u8) -> Self {
        match c {
            0 => Priority::High,
            2 => Priority::Low,
            _ => Priority::Normal,
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }
}

/// The encodings an event can be cached in (one slot each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// A complete WebSocket text frame with the JSON event.
    WsText = 0,
    /// The same message compressed with permessage-deflate (RSV1 set).
    WsDeflate = 1,
}

const SLOTS: usize = 2;

/// A published message.
#[derive(Debug)]
pub struct Event {
    /// Opaque id (`EPOCH.TAG.SEQ` for persisted messages, `EPOCH.tN` for live-only ones).
    pub id: Box<str>,
    pub stream: StreamName,
    /// Message type.
    pub kind: Box<str>,
    /// Raw JSON of `data`, byte-exact as published.
    pub data: Bytes,
    /// Unix milliseconds at which the message was accepted.
    pub ts: i64,
    pub priority: Priority,
    encoded: [OnceLock<Bytes>; SLOTS],
}

impl Event {
    pub fn new(id: String, stream: StreamName, kind: &str, data: Bytes, ts: i64, priority: Priority) -> Self {
        Event { id: id.into_boxed_str(), stream, kind: kind.into(), data, ts, priority, encoded: Default::default() }
    }

    /// The event in `encoding`, made by `make` the first time it is asked for.
    pub fn encoded(&self, encoding: Encoding, make: impl FnOnce(&Event) -> Bytes) -> Bytes {
        self.encoded[encoding as usize].get_or_init(|| make(self)).clone()
    }

    /// Whether the event was already encoded that way (for tests and metrics).
    pub fn is_encoded(&self, encoding: Encoding) -> bool {
        self.encoded[encoding as usize].get().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_encoding_is_made_once() {
        let ev = Event::new("e.1".into(), StreamName::User, "t", Bytes::from_static(b"{}"), 1, Priority::Normal);
        let mut calls = 0;
        for _ in 0..3 {
            let b = ev.encoded(Encoding::WsText, |_| {
                calls += 1;
                Bytes::from_static(b"x")
            });
            assert_eq!(b, "x");
        }
        assert_eq!(calls, 1);
        assert!(!ev.is_encoded(Encoding::WsDeflate));
    }
}
