//! RFC 6455 framing for the server side: decoding masked client frames, encoding unmasked
//! server frames.
//!
//! Written by hand (not tungstenite) for one reason: memory per idle connection. A decoder
//! here holds no buffer at all between frames (`BytesMut::new()` has no allocation); bytes
//! are buffered only while a frame is partially received. Server frames are encoded once
//! per published message and the same `Bytes` (header included) is written to every
//! recipient, since server-to-client frames are not masked.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::deflate;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close codes and the close type are the crate's one close vocabulary (a leaf module).
pub use crate::close;

/// A complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    Close(Option<u16>),
}

/// A framing violation: the connection must be closed with this code and reason.
pub type Violation = close::Close;

const fn violation(code: u16, reason: &'static str) -> Violation {
    close::Close::new(code, reason)
}

/// Whether a close code may appear in a Close frame (RFC 6455 section 7.4): the codes
/// defined for use on the wire (1000-1003, 1007-1011), those IANA registered since
/// (1012-1014), and the ranges for libraries and applications (3000-4999).
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Incremental decoder of client frames.
#[derive(Default)]
pub struct Decoder {
    /// Bytes received but not yet consumed (only non-empty while a frame is incomplete).
    /// It grows with the bytes received, never with the length a header declares.
    pub buf: BytesMut,
    /// A fragmented data message being reassembled (boxed: rare, and the decoder lives in
    /// every idle connection's task).
    partial: Option<Box<Partial>>,
    /// permessage-deflate was negotiated: RSV1 on a message's first frame means compressed.
    deflate: bool,
}

struct Partial {
    opcode: u8,
    compressed: bool,
    payload: BytesMut,
}

impl Decoder {
    /// A decoder for a connection; `deflate` says whether permessage-deflate was negotiated.
    pub fn new(deflate: bool) -> Self {
        Decoder { deflate, ..Decoder::default() }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Releases buffers that hold nothing, so an idle connection keeps no allocation.
    pub fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }

    /// Decodes the next complete message or control frame, or `Ok(None)` if more bytes are
    /// needed. `max` bounds a frame's payload and a reassembled (and inflated) message.
    pub fn next(&mut self, max: usize) -> Result<Option<Incoming>, Violation> {
        loop {
            let Some(Header { fin, rsv1, opcode, header_len, len, mask }) = parse_header(&self.buf)? else {
                return Ok(None);
            };
            let is_control = opcode & 0x8 != 0;
            if rsv1 && (!self.deflate || is_control || opcode == OP_CONT) {
                return Err(violation(close::PROTOCOL, "RSV1 set outside the first frame of a compressed message"));
            }
            if !is_control && len > max as u64 {
                return Err(violation(close::TOO_BIG, "frame too large"));
            }
            if let Some(p) = &self.partial {
                if !is_control && p.payload.len() as u64 + len > max as u64 {
                    return Err(violation(close::TOO_BIG, "message too large"));
                }
            }
            let total = header_len + len as usize;
            if self.buf.len() < total {
                return Ok(None);
            }
            self.buf.advance(header_len);
            let mut payload = self.buf.split_to(len as usize);
            unmask(&mut payload, mask);
            match opcode {
                OP_PING => return Ok(Some(Incoming::Ping(payload.freeze()))),
                OP_PONG => return Ok(Some(Incoming::Pong)),
                OP_CLOSE => {
                    let code = match payload.len() {
                        0 => None,
                        1 => return Err(violation(close::PROTOCOL, "bad close frame")),
                        _ => {
                            let code = u16::from_be_bytes([payload[0], payload[1]]);
                            if !valid_close_code(code) {
                                return Err(violation(close::PROTOCOL, "invalid close code"));
                            }
                            if std::str::from_utf8(&payload[2..]).is_err() {
                                return Err(violation(close::INVALID_DATA, "close reason is not UTF-8"));
                            }
                            Some(code)
                        }
                    };
                    return Ok(Some(Incoming::Close(code)));
                }
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(violation(close::PROTOCOL, "new message inside a fragmented one"));
                    }
                    if fin {
                        return finish(opcode, rsv1, payload, max).map(Some);
                    }
                    self.partial = Some(Box::new(Partial { opcode, compressed: rsv1, payload }));
                }
                OP_CONT => {
                    let Some(mut p) = self.partial.take() else {
                        return Err(violation(close::PROTOCOL, "continuation without a message"));
                    };
                    p.payload.extend_from_slice(&payload);
                    if fin {
                        return finish(p.opcode, p.compressed, p.payload, max).map(Some);
                    }
                    self.partial = Some(p);
                }
                _ => return Err(violation(close::PROTOCOL, "reserved opcode")),
            }
        }
    }
}

fn finish(opcode: u8, compressed: bool, payload: BytesMut, max: usize) -> Result<Incoming, Violation> {
    let payload = if compressed {
        match deflate::inflate(&payload, max) {
            Ok(p) => Bytes::from(p),
            Err(deflate::InflateError::TooBig) => return Err(violation(close::TOO_BIG, "message too large")),
            // RFC 7692 only says "fail the connection"; the payload is invalid data (1007).
            Err(deflate::InflateError::Corrupt) => return Err(violation(close::INVALID_DATA, "bad compressed data")),
        }
    } else {
        payload.freeze()
    };
    if opcode == OP_TEXT {
        if std::str::from_utf8(&payload).is_err() {
            return Err(violation(close::INVALID_DATA, "text frame is not UTF-8"));
        }
        Ok(Incoming::Text(payload))
    } else {
        Ok(Incoming::Binary(payload))
    }
}

/// A parsed client frame header.
struct Header {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    header_len: usize,
    len: u64,
    mask: [u8; 4],
}

/// Parses a frame header, or `Ok(None)` if more bytes are needed.
fn parse_header(buf: &[u8]) -> Result<Option<Header>, Violation> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 {
        return Err(violation(close::PROTOCOL, "reserved bits set (no extension was negotiated)"));
    }
    let opcode = b0 & 0x0F;
    if !matches!(opcode, OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG) {
        return Err(violation(close::PROTOCOL, "reserved opcode"));
    }
    if b1 & 0x80 == 0 {
        return Err(violation(close::PROTOCOL, "client frames must be masked"));
    }
    if opcode & 0x8 != 0 && (!fin || b1 & 0x7F > 125) {
        return Err(violation(close::PROTOCOL, "bad control frame"));
    }
    // RFC 6455 section 5.2: "the minimal number of bytes MUST be used to encode the
    // length" and the 64-bit form's most significant bit MUST be 0. A frame breaking
    // either is not well-formed, so the connection fails with 1002.
    let (len, mut pos) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let len = u16::from_be_bytes([buf[2], buf[3]]) as u64;
            if len < 126 {
                return Err(violation(close::PROTOCOL, "frame length not minimally encoded"));
            }
            (len, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(violation(close::PROTOCOL, "64-bit frame length with its top bit set"));
            }
            if len <= u16::MAX as u64 {
                return Err(violation(close::PROTOCOL, "frame length not minimally encoded"));
            }
            (len, 10)
        }
        n => (n as u64, 2),
    };
    if buf.len() < pos + 4 {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[pos..pos + 4]);
    pos += 4;
    Ok(Some(Header { fin, rsv1, opcode, header_len: pos, len, mask }))
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    // Word at a time: this runs on every client frame.
    let m = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ m;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Writes a server frame header (FIN set, `first` holding RSV bits and opcode) for a
/// payload of `len` bytes.
fn put_header(out: &mut BytesMut, first: u8, len: usize) {
    out.put_u8(0x80 | first);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// Encodes one complete, unmasked server frame.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    put_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    out.freeze()
}

/// Encodes one complete server frame whose payload is compressed (RSV1 set, RFC 7692).
pub fn encode_compressed(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    put_header(&mut out, 0x40 | opcode, payload.len());
    out.extend_from_slice(payload);
    out.freeze()
}

/// Encodes a text frame.
pub fn text(payload: &[u8]) -> Bytes {
    encode(OP_TEXT, payload)
}

/// Encodes a close frame with a code and a reason (cut to fit a control frame).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut reason = reason;
    while reason.len() > 123 {
        let mut cut = 123;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason = &reason[..cut];
    }
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(reason.as_bytes());
    encode(OP_CLOSE, &p)
}

/// The server's heartbeat ping (shared by every connection).
pub fn ping_frame() -> Bytes {
    Bytes::from_static(&[0x89, 0x00])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn decodes_byte_by_byte_and_releases_buffer() {
        let mut d = Decoder::default();
        let f = client_frame(true, OP_TEXT, b"{\"op\":\"ping\"}");
        for (i, b) in f.iter().enumerate() {
            d.feed(&[*b]);
            let r = d.next(1024).unwrap();
            if i + 1 < f.len() {
                assert!(r.is_none());
            } else {
                assert_eq!(r, Some(Incoming::Text(Bytes::from_static(b"{\"op\":\"ping\"}"))));
            }
        }
        d.shrink();
        assert_eq!(d.buf.capacity(), 0);
    }

    #[test]
    fn reassembles_fragments_with_control_frames_between() {
        let mut d = Decoder::default();
        d.feed(&client_frame(false, OP_TEXT, b"hel"));
        d.feed(&client_frame(true, OP_PING, b"x"));
        d.feed(&client_frame(true, OP_CONT, b"lo"));
        assert_eq!(d.next(100).unwrap(), Some(Incoming::Ping(Bytes::from_static(b"x"))));
        assert_eq!(d.next(100).unwrap(), Some(Incoming::Text(Bytes::from_static(b"hello"))));
        assert_eq!(d.next(100).unwrap(), None);
    }

    #[test]
    fn enforces_limits_before_buffering() {
        let mut d = Decoder::default();
        // Only the header of a 1 MiB frame: refused before its payload arrives.
        let f = client_frame(true, OP_TEXT, &vec![b'a'; 1 << 20]);
        d.feed(&f[..14]);
        assert_eq!(d.next(65536).unwrap_err().code, close::TOO_BIG);
        let mut d = Decoder::default();
        d.feed(&client_frame(false, OP_TEXT, &[b'a'; 60]));
        d.feed(&client_frame(true, OP_CONT, &[b'a'; 60]));
        assert_eq!(d.next(100).unwrap_err().code, close::TOO_BIG);
    }

    #[test]
    fn a_declared_length_reserves_nothing() {
        // A header announcing 60 KB (16-bit form) or 1 MB (64-bit form, a 14-byte header),
        // then a trickle of payload: the buffer holds what arrived, not what was announced.
        for (len, max) in [(60_000u64, 65536), (1_000_000, 1 << 20)] {
            let mut f = vec![0x82];
            if len <= 65535 {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                f.push(0x80 | 127);
                f.extend_from_slice(&len.to_be_bytes());
            }
            f.extend_from_slice(&[1, 2, 3, 4]);
            let mut d = Decoder::default();
            d.feed(&f);
            assert_eq!(d.next(max).unwrap(), Option::None);
            for _ in 0..10 {
                d.feed(&[0u8; 100]);
                assert_eq!(d.next(max).unwrap(), Option::None);
            }
            assert!(d.buf.capacity() < 4096, "{len}: capacity {}", d.buf.capacity());
        }
    }

    #[test]
    fn validates_close_frames() {
        for (code, ok) in [(1000, true), (1003, true), (1007, true), (1014, true), (3000, true), (4999, true)]
            .into_iter()
            .chain([(0, false), (999, false), (1004, false), (1005, false), (1006, false), (1015, false)])
            .chain([(1016, false), (2999, false), (5000, false), (65535, false)])
        {
            let mut d = Decoder::default();
            d.feed(&client_frame(true, OP_CLOSE, &u16::to_be_bytes(code)));
            match d.next(1024) {
                Ok(Some(Incoming::Close(Some(c)))) if ok => assert_eq!(c, code),
                Err(v) if !ok => assert_eq!(v.code, close::PROTOCOL, "{code}"),
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_bad_lengths() {
        let mut top_bit = vec![0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
        top_bit.extend_from_slice(&[0; 4]);
        let cases: Vec<Vec<u8>> = vec![
            top_bit,
            vec![0x82, 0x80 | 126, 0, 125, 0, 0, 0, 0], // 16-bit form for 125
            vec![0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0], // 64-bit form for 65535
            vec![0x89, 0x80 | 126, 0, 126, 0, 0, 0, 0], // ping over 125
        ];
        for bytes in cases {
            let mut d = Decoder::default();
            d.feed(&bytes);
            assert_eq!(d.next(1 << 20).unwrap_err().code, close::PROTOCOL, "{bytes:?}");
        }
    }

    #[test]
    fn inflates_compressed_messages_when_negotiated() {
        let text = "hello hello hello hello hello".repeat(40);
        let z = deflate::compress(text.as_bytes(), 6).unwrap();
        let mut f = client_frame(false, OP_TEXT, &z[..10]);
        f[0] |= 0x40;
        f.extend(client_frame(true, OP_CONT, &z[10..]));
        let mut d = Decoder::new(true);
        d.feed(&f);
        assert_eq!(d.next(4096).unwrap(), Some(Incoming::Text(Bytes::from(text.clone()))));
        // Over the cap once inflated: 1009.
        let mut d = Decoder::new(true);
        d.feed(&f);
        assert_eq!(d.next(1000).unwrap_err().code, close::TOO_BIG);
        // Without the extension, RSV1 is a protocol error; with it, not on a continuation.
        let mut d = Decoder::new(false);
        d.feed(&f);
        assert_eq!(d.next(4096).unwrap_err().code, close::PROTOCOL);
        let mut cont = client_frame(false, OP_TEXT, b"a");
        let mut c2 = client_frame(true, OP_CONT, b"b");
        c2[0] |= 0x40;
        cont.extend(c2);
        let mut d = Decoder::new(true);
        d.feed(&cont);
        assert_eq!(d.next(4096).unwrap_err().code, close::PROTOCOL);
        let mut ping = client_frame(true, OP_PING, b"a");
        ping[0] |= 0x40;
        let mut d = Decoder::new(true);
        d.feed(&ping);
        assert_eq!(d.next(4096).unwrap_err().code, close::PROTOCOL);
    }

    #[test]
    fn refuses_protocol_violations() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81, 0x00], close::PROTOCOL),                               // unmasked
            (vec![0xC1, 0x80, 0, 0, 0, 0], close::PROTOCOL),                   // RSV1 without deflate
            (vec![0x83, 0x80, 0, 0, 0, 0], close::PROTOCOL),                   // reserved opcode
            (client_frame(true, OP_CONT, b"x"), close::PROTOCOL),              // stray continuation
            (client_frame(false, OP_PING, b"x"), close::PROTOCOL),             // fragmented control
            (client_frame(true, OP_TEXT, &[0xff, 0xfe]), close::INVALID_DATA), // bad UTF-8
        ];
        for (bytes, code) in cases {
            let mut d = Decoder::default();
            d.feed(&bytes);
            assert_eq!(d.next(1024).unwrap_err().code, code, "{bytes:?}");
        }
    }

    #[test]
    fn encodes_lengths() {
        assert_eq!(&text(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let f = text(&[b'a'; 300]);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        let f = text(&vec![b'a'; 70000]);
        assert_eq!(f[1], 127);
        assert_eq!(f.len(), 70010);
        let c = close_frame(4008, &"x".repeat(500));
        assert_eq!(c.len(), 2 + 125);
        assert_eq!(&c[2..4], &4008u16.to_be_bytes());
    }
}
