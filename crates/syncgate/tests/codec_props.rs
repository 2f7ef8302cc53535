//! Property tests of the RFC 6455 decoder (transport::codec): arbitrary input in arbitrary
//! chunks never panics and never buffers past the frame limit; client frames (masked,
//! fragmented, compressed, with control frames between) round-trip.

use proptest::prelude::*;
use syncgate::transport::codec::{Decoder, Incoming, OP_BINARY, OP_CONT, OP_PING, OP_TEXT};
use syncgate::transport::deflate;

/// Splits `bytes` at the given cut points (taken modulo the length).
fn chunks<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    if bytes.is_empty() {
        return vec![bytes];
    }
    let mut points: Vec<usize> = cuts.iter().map(|c| c % bytes.len()).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![first];
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_input_never_panics_or_overbuffers(
        data in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
        max in 128usize..2048,
        deflate in any::<bool>(),
    ) {
        let mut d = Decoder::new(deflate);
        let mut largest_chunk = 0;
        'feed: for c in chunks(&data, &cuts) {
            largest_chunk = largest_chunk.max(c.len());
            d.feed(c);
            loop {
                match d.next(max) {
                    Ok(Some(Incoming::Text(t))) => prop_assert!(t.len() <= max && std::str::from_utf8(&t).is_ok()),
                    Ok(Some(Incoming::Binary(b))) => prop_assert!(b.len() <= max),
                    Ok(Some(Incoming::Ping(p))) => prop_assert!(p.len() <= 125),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
            d.shrink();
            // What stays buffered is at most one incomplete frame (header and payload under
            // `max`) plus the last chunk; the capacity grows with it, not with declared lengths.
            prop_assert!(d.buf.len() <= 14 + max + largest_chunk, "len {}", d.buf.len());
            prop_assert!(d.buf.capacity() <= 2 * (14 + max + largest_chunk) + 64, "capacity {}", d.buf.capacity());
        }
    }

    #[test]
    fn arbitrary_frame_sequences_never_panic(
        frames in prop::collection::vec(
            (prop::sample::select(vec![0x00u8, 0x80, 0x01, 0x81, 0x02, 0x82, 0x41, 0xC1, 0xC0, 0x88, 0x89, 0x8A, 0x09]),
             prop::collection::vec(any::<u8>(), 0..300)),
            0..12),
        flip in prop::option::of((any::<usize>(), any::<u8>())),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        max in 128usize..1024,
    ) {
        let mut wire = Vec::new();
        for (first, payload) in &frames {
            wire.extend(client_frame(*first, payload, [1, 2, 3, 4]));
        }
        if let (Some((at, x)), false) = (flip, wire.is_empty()) {
            let n = wire.len();
            wire[at % n] ^= x;
        }
        let mut d = Decoder::new(true);
        'feed: for c in chunks(&wire, &cuts) {
            d.feed(c);
            loop {
                match d.next(max) {
                    Ok(Some(Incoming::Text(t))) => prop_assert!(t.len() <= max),
                    Ok(Some(Incoming::Binary(b))) => prop_assert!(b.len() <= max),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(v) => {
                        prop_assert!(matches!(v.code, 1002 | 1007 | 1009), "{:?}", v);
                        break 'feed;
                    }
                }
            }
            prop_assert!(d.buf.len() <= wire.len());
        }
    }

    #[test]
    fn client_frames_round_trip(
        text in any::<bool>(),
        compressed in any::<bool>(),
        body in prop::collection::vec(any::<u8>(), 0..3000),
        words in "[a-zé€𝄞 ]{0,600}",
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        wire_cuts in prop::collection::vec(any::<usize>(), 0..12),
        mask in any::<[u8; 4]>(),
        ping_after in prop::option::of(any::<usize>()),
    ) {
        let payload = if text { words.into_bytes() } else { body };
        let opcode = if text { OP_TEXT } else { OP_BINARY };
        let on_wire = if compressed { deflate::compress(&payload, 1).unwrap() } else { payload.clone() };
        let parts = chunks(&on_wire, &cuts);
        let mut wire = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let fin = if i + 1 == parts.len() { 0x80 } else { 0 };
            let op = if i == 0 { opcode } else { OP_CONT };
            let rsv1 = if i == 0 && compressed { 0x40 } else { 0 };
            wire.extend(client_frame(fin | rsv1 | op, part, mask));
            if ping_after.map(|p| p % parts.len()) == Some(i) && i + 1 < parts.len() {
                wire.extend(client_frame(0x80 | OP_PING, b"between", mask));
            }
        }
        let mut d = Decoder::new(compressed);
        let mut got = Vec::new();
        for c in chunks(&wire, &wire_cuts) {
            d.feed(c);
            while let Some(m) = d.next(1 << 16).expect("valid frames") {
                got.push(m);
            }
        }
        let message = if text { Incoming::Text(payload.into()) } else { Incoming::Binary(payload.into()) };
        match got.as_slice() {
            [m] => prop_assert_eq!(m, &message),
            [Incoming::Ping(p), m] => {
                prop_assert_eq!(&p[..], b"between");
                prop_assert_eq!(m, &message);
            }
            other => prop_assert!(false, "decoded {:?}", other),
        }
        prop_assert!(d.buf.is_empty());
    }
}
