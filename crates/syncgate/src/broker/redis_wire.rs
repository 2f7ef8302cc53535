//! Envelope wire encoding of the Redis broker: what one pub/sub message carries.
//!
//! Must never: copy `data` when decoding (it is sliced out of the message), or decode a
//! message without the magic or with a truncated header.
//!
//! Envelope on the wire (big endian): the protocol-neutral event, not a WebSocket frame, so
//! each node encodes it for its own connections (plain, deflated, other protocols).
//!
//! | bytes | content |
//! |---|---|
//! | 2 | magic `S2` (format version 2) |
//! | 1 | target: 0 user, 1 room, 2 all, 3 disconnect, 4 all with a `where` filter, 5 disconnect one device, 6 disconnect one connection |
//! | 1 | flags: bit 0 = seq present, bit 1 = event present |
//! | 1 + n | origin instance id: length, bytes |
//! | 2 + n | user or room name: length, bytes (empty for all; for 4 the filter as JSON; for 5 `user\nclient_id`; for 6 `user\nnode\nconn_id`) |
//! | 8 | seq, if present |
//! | event, if present: | |
//! | 1 | stream: 0 user, 1 room (the target's name), 2 broadcast |
//! | 1 | priority: 0 high, 1 normal, 2 low |
//! | 8 | ts (unix ms, signed) |
//! | 2 + n | id: length, bytes |
//! | 2 + n | type: length, bytes |
//! | rest | data (raw JSON) |
//!
//! `Envelope::except` is not sent: it names a connection of the publishing node (connection ids
//! are per node), and that node delivers its own copy locally.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{Envelope, Target};
use crate::event::{Event, Priority, StreamName};
use crate::meta::Where;

const MAGIC: &[u8; 2] = b"S2";

#[derive(Debug)]
pub(super) struct Wire {
    pub(super) origin: Bytes,
    pub(super) env: Envelope,
}

pub(super) fn encode(origin: &str, env: &Envelope) -> Option<Bytes> {
    let owned;
    let (kind, name): (u8, &str) = match &env.target {
        Target::User(u) => (0, u),
        Target::Room(r) => (1, r),
        Target::All => (2, ""),
        Target::Disconnect(u) => (3, u),
        Target::AllWhere(w) => {
            owned = w.to_json().to_string();
            (4, owned.as_str())
        }
        // User ids and client ids cannot contain control characters.
        Target::DisconnectDevice(u, c) => {
            owned = format!("{u}\n{c}");
            (5, owned.as_str())
        }
        Target::DisconnectConn(u, node, id) => {
            owned = format!("{u}\n{node}\n{id}");
            (6, owned.as_str())
        }
    };
    let origin_len = u8::try_from(origin.len()).ok()?;
    let name_len = u16::try_from(name.len()).ok()?;
    let ev_len = env.event.as_ref().map_or(0, |e| 32 + e.id.len() + e.kind.len() + e.data.len());
    let mut b = BytesMut::with_capacity(16 + origin.len() + name.len() + ev_len);
    b.put_slice(MAGIC);
    b.put_u8(kind);
    b.put_u8(u8::from(env.seq.is_some()) | (u8::from(env.event.is_some()) << 1));
    b.put_u8(origin_len);
    b.put_slice(origin.as_bytes());
    b.put_u16(name_len);
    b.put_slice(name.as_bytes());
    if let Some(seq) = env.seq {
        b.put_u64(seq);
    }
    if let Some(e) = &env.event {
        b.put_u8(match e.stream {
            StreamName::User => 0,
            StreamName::Room(_) => 1,
            StreamName::Broadcast => 2,
        });
        b.put_u8(e.priority.code());
        b.put_i64(e.ts);
        b.put_u16(u16::try_from(e.id.len()).ok()?);
        b.put_slice(e.id.as_bytes());
        b.put_u16(u16::try_from(e.kind.len()).ok()?);
        b.put_slice(e.kind.as_bytes());
        b.put_slice(&e.data);
    }
    Some(b.freeze())
}

/// Decodes a message; the event's data is a slice of `buf` (no copy).
pub(super) fn decode(mut buf: Bytes) -> Option<Wire> {
    let take = |buf: &mut Bytes, n: usize| (buf.remaining() >= n).then(|| buf.split_to(n));
    let text = |b: Bytes| std::str::from_utf8(&b).ok().map(str::to_owned);
    if take(&mut buf, 2)?.as_ref() != MAGIC {
        return None;
    }
    let head = take(&mut buf, 3)?;
    let (kind, flags, origin_len) = (head[0], head[1], head[2] as usize);
    let origin = take(&mut buf, origin_len)?;
    let name_len = take(&mut buf, 2)?.get_u16() as usize;
    let name: Arc<str> = text(take(&mut buf, name_len)?)?.into();
    let seq = if flags & 1 == 1 { Some(take(&mut buf, 8)?.get_u64()) } else { None };
    let event = if flags & 2 == 2 {
        let mut h = take(&mut buf, 10)?;
        let stream = match h.get_u8() {
            0 => StreamName::User,
            1 => StreamName::Room(name.clone()),
            2 => StreamName::Broadcast,
            _ => return None,
        };
        let priority = Priority::from_code(h.get_u8());
        let ts = h.get_i64();
        let id_len = take(&mut buf, 2)?.get_u16() as usize;
        let id = text(take(&mut buf, id_len)?)?;
        let kind_len = take(&mut buf, 2)?.get_u16() as usize;
        let kind = text(take(&mut buf, kind_len)?)?;
        Some(Arc::new(Event::new(id, stream, &kind, buf, ts, priority)))
    } else {
        None
    };
    let target = match kind {
        0 => Target::User(name),
        1 => Target::Room(name),
        2 => Target::All,
        3 => Target::Disconnect(name),
        4 => Target::AllWhere(Arc::new(Where::parse(&serde_json::from_str(&name).ok()?).ok()?)),
        5 => {
            let (u, c) = name.split_once('\n')?;
            Target::DisconnectDevice(u.into(), c.into())
        }
        6 => {
            let mut parts = name.splitn(3, '\n');
            let (u, node, id) = (parts.next()?, parts.next()?, parts.next()?.parse().ok()?);
            Target::DisconnectConn(u.into(), node.into(), id)
        }
        _ => return None,
    };
    Some(Wire { origin, env: Envelope { target, seq, event, except: None } })
}
