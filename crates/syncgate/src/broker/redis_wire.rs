//! Envelope wire encoding of the Redis broker: what one pub/sub message carries.
//!
//! Must never: change the frame bytes (they follow the header untouched, and decoding slices
//! them out of the message without a copy), or decode a message without the magic or with a
//! truncated header.
//!
//! Envelope on the wire (big endian), the frame bytes untouched after a small header:
//!
//! | bytes | content |
//! |---|---|
//! | 2 | magic `S1` (format version 1) |
//! | 1 | target: 0 user, 1 room, 2 all, 3 disconnect, 4 all with a `where` filter |
//! | 1 | flags: bit 0 = seq present |
//! | 1 + n | origin instance id: length, bytes |
//! | 2 + n | user or room name: length, bytes (empty for all; the filter as JSON for 4) |
//! | 8 | seq, if present |
//! | rest | the encoded WebSocket frame |
//!
//! `Envelope::except` is not sent: it names a connection of the publishing node (connection ids
//! are per node), and that node delivers its own copy locally.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use std::sync::Arc;

use super::{Envelope, Target};
use crate::hub::meta::Where;

const MAGIC: &[u8; 2] = b"S1";

#[derive(Debug)]
pub(super) struct Wire {
    pub(super) origin: Bytes,
    pub(super) env: Envelope,
}

pub(super) fn encode(origin: &str, env: &Envelope) -> Option<Bytes> {
    let filter;
    let (kind, name): (u8, &str) = match &env.target {
        Target::User(u) => (0, u),
        Target::Room(r) => (1, r),
        Target::All => (2, ""),
        Target::Disconnect(u) => (3, u),
        Target::AllWhere(w) => {
            filter = w.to_json().to_string();
            (4, filter.as_str())
        }
    };
    let origin_len = u8::try_from(origin.len()).ok()?;
    let name_len = u16::try_from(name.len()).ok()?;
    let mut b = BytesMut::with_capacity(16 + origin.len() + name.len() + env.frame.len());
    b.put_slice(MAGIC);
    b.put_u8(kind);
    b.put_u8(u8::from(env.seq.is_some()));
    b.put_u8(origin_len);
    b.put_slice(origin.as_bytes());
    b.put_u16(name_len);
    b.put_slice(name.as_bytes());
    if let Some(seq) = env.seq {
        b.put_u64(seq);
    }
    b.put_slice(&env.frame);
    Some(b.freeze())
}

/// Decodes a message; the frame is a slice of `buf` (no copy).
pub(super) fn decode(mut buf: Bytes) -> Option<Wire> {
    let take = |buf: &mut Bytes, n: usize| (buf.remaining() >= n).then(|| buf.split_to(n));
    if take(&mut buf, 2)?.as_ref() != MAGIC {
        return None;
    }
    let head = take(&mut buf, 3)?;
    let (kind, flags, origin_len) = (head[0], head[1], head[2] as usize);
    let origin = take(&mut buf, origin_len)?;
    let name_len = take(&mut buf, 2)?.get_u16() as usize;
    let name = std::str::from_utf8(&take(&mut buf, name_len)?).ok()?.to_owned();
    let seq = if flags & 1 == 1 { Some(take(&mut buf, 8)?.get_u64()) } else { None };
    let target = match kind {
        0 => Target::User(name.into()),
        1 => Target::Room(name.into()),
        2 => Target::All,
        3 => Target::Disconnect(name.into()),
        4 => Target::AllWhere(Arc::new(Where::parse(&serde_json::from_str(&name).ok()?).ok()?)),
        _ => return None,
    };
    Some(Wire { origin, env: Envelope { target, seq, frame: buf, except: None } })
}
