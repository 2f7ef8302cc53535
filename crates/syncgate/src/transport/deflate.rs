//! permessage-deflate (RFC 7692) payload transforms: inflating a compressed client message
//! with its output capped, and compressing a server text message into a complete frame.
//!
//! Both directions run with no context takeover (the handshake always answers
//! `server_no_context_takeover; client_no_context_takeover`), so every message is
//! compressed or inflated by a compressor created for it and dropped right after: a
//! connection holds no compression state between messages, and a compressed server frame
//! is the same bytes for every recipient that negotiated the extension, so it is made once
//! per message. The shared frame uses the full 32 KiB window (15 bits), which is why the
//! handshake declines offers that restrict `server_max_window_bits` below 15.
//!
//! Must never: keep an inflater or deflater between messages, or let an inflated message
//! grow past the cap it is given.

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::codec;

/// The four bytes a sender removes from the end of each compressed message (RFC 7692
/// section 7.2.1) and a receiver appends before inflating (section 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// How server messages are compressed (config section `compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Messages shorter than this are sent uncompressed.
    pub min_bytes: usize,
    /// zlib level, 0 (store) to 9 (smallest).
    pub level: u32,
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// The inflated message would be longer than the cap.
    TooBig,
    /// The bytes are not a valid DEFLATE stream.
    Corrupt,
}

/// Inflates one compressed message (its frames' payloads concatenated), refusing to
/// produce more than `max` bytes. Memory grows with the output, never past `max + 1`.
pub fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    let cap = max.saturating_add(1);
    let mut d = Decompress::new(false);
    let mut out: Vec<u8> = Vec::with_capacity(compressed.len().saturating_mul(2).clamp(64, cap));
    for chunk in [compressed, &TAIL[..]] {
        let mut input = chunk;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= cap {
                    return Err(InflateError::TooBig);
                }
                let grow = out.len().max(4096).min(cap - out.len());
                out.reserve_exact(grow);
            }
            let (in_before, out_before) = (d.total_in(), out.len());
            let status = d.decompress_vec(input, &mut out, FlushDecompress::Sync).map_err(|_| InflateError::Corrupt)?;
            if out.len() > max {
                return Err(InflateError::TooBig);
            }
            let consumed = (d.total_in() - in_before) as usize;
            input = &input[consumed..];
            if status == Status::StreamEnd {
                // A final block ends the message; whatever follows it is ignored.
                return Ok(out);
            }
            let room_left = out.len() < out.capacity();
            if input.is_empty() && room_left {
                break;
            }
            if consumed == 0 && out.len() == out_before && room_left {
                return Err(InflateError::Corrupt);
            }
        }
    }
    Ok(out)
}

/// Compresses a message with a fresh raw-DEFLATE compressor and strips the sync-flush
/// tail, as RFC 7692 section 7.2.1 describes. None if the compressor fails.
pub fn compress(payload: &[u8], level: u32) -> Option<Vec<u8>> {
    let mut c = Compress::new_with_window_bits(Compression::new(level.min(9)), false, 15);
    let mut out: Vec<u8> = Vec::with_capacity(payload.len() / 2 + 64);
    let mut input = payload;
    loop {
        let before = c.total_in();
        c.compress_vec(input, &mut out, FlushCompress::Sync).ok()?;
        input = &input[(c.total_in() - before) as usize..];
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    Some(out)
}

/// A complete server text frame for `payload`: compressed with RSV1 set when the payload
/// is at least `min_bytes` long and compression makes it smaller, else the plain frame
/// (the same bytes as `codec::text`). Meant to be made once per message and shared by
/// every recipient that negotiated permessage-deflate.
pub fn text_frame(payload: &[u8], settings: &Settings) -> Bytes {
    if payload.len() >= settings.min_bytes {
        if let Some(z) = compress(payload, settings.level) {
            if z.len() < payload.len() {
                return codec::encode_compressed(codec::OP_TEXT, &z);
            }
        }
    }
    codec::text(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(n: usize) -> Vec<u8> {
        let mut s = String::new();
        let mut i = 0;
        while s.len() < n {
            s.push_str(&format!("{{\"op\":\"event\",\"id\":\"{i}\",\"data\":{{\"k\":\"value {i}\"}}}},"));
            i += 1;
        }
        s.truncate(n);
        s.into_bytes()
    }

    #[test]
    fn round_trips_and_strips_the_tail() {
        for n in [0, 1, 100, 5000, 200_000] {
            let p = doc(n);
            let z = compress(&p, 1).unwrap();
            assert!(!z.ends_with(&TAIL));
            assert_eq!(inflate(&z, 1 << 20).unwrap(), p, "{n}");
        }
    }

    #[test]
    fn inflate_is_capped() {
        let p = vec![b'a'; 100_000];
        let z = compress(&p, 6).unwrap();
        assert!(z.len() < 1000);
        assert_eq!(inflate(&z, 99_999), Err(InflateError::TooBig));
        assert_eq!(inflate(&z, 100_000).unwrap().len(), 100_000);
    }

    #[test]
    fn corrupt_input_is_refused() {
        assert_eq!(inflate(&[0xff, 0xff, 0xff, 0xff, 0x00], 1000), Err(InflateError::Corrupt));
    }

    #[test]
    fn text_frame_compresses_only_what_shrinks() {
        let s = Settings { min_bytes: 1024, level: 1 };
        let small = doc(500);
        assert_eq!(text_frame(&small, &s), codec::text(&small));
        let big = doc(4000);
        let f = text_frame(&big, &s);
        assert_eq!(f[0], 0xC1, "FIN, RSV1, text");
        assert!(f.len() < big.len() / 2);
        let mut x = 0x2545_f491_u32;
        let random: Vec<u8> = (0..4000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert_eq!(text_frame(&random, &s)[0], 0x81);
    }
}
