//! RFC 6455 and RFC 7692 conformance of `/ws`, byte by byte over raw TCP, organised like the
//! Autobahn testsuite's sections 1-7 and 12-13 (case numbers in comments). The server is
//! the real one (tests/common); the client writes exactly the frames each case describes.
//! Text messages are JSON pings (padded with spaces to the wanted length), since the
//! server answers those: a pong with the same ref shows a message was read intact.

mod common;
mod raw_ws;

use std::time::Duration;

use common::TestServer;
use raw_ws::*;
use tokio::io::AsyncReadExt;

async fn server() -> (TestServer, String) {
    let s = TestServer::start().await;
    let addr = s.base.trim_start_matches("http://").to_string();
    (s, addr)
}

async fn open(s: &TestServer, addr: &str) -> Raw {
    Raw::connect(addr, &s.token("alice", &[]), "").await
}

/// Runs each case on a fresh connection: send the bytes, expect a close with the code.
async fn fails_with(cases: &[(&str, Vec<u8>, u16)]) {
    let (s, addr) = server().await;
    for (name, bytes, code) in cases {
        let mut ws = open(&s, &addr).await;
        ws.send(bytes).await;
        let f = ws.next_close().await;
        assert_eq!(f.close_code(), Some(*code), "case {name}: {f:?}");
        ws.send(&fin(CLOSE, &f.payload[..2])).await;
        ws.expect_eof().await;
    }
}

// ---- Section 1: framing ------------------------------------------------------------

#[tokio::test]
async fn s1_text_and_binary_payload_lengths() {
    let (s, addr) = server().await;
    let mut ws = open(&s, &addr).await;
    // 1.1.1-1.1.8: text messages of 0 (refused as JSON, connection stays), 125, 126, 127,
    // 128, 65535 and 65536 bytes (limits.max_frame_bytes), also sent in small chunks (1.1.8).
    ws.send(&fin(TEXT, b"")).await;
    assert!(ws.next().await.text().contains("\"error\""));
    for len in [125, 126, 127, 128, 65535, 65536] {
        ws.send(&fin(TEXT, &ping_json(&format!("t{len}"), len))).await;
        let t = ws.next().await.text();
        assert!(t.contains(&format!("\"ref\":\"t{len}\"")), "{len}: {t}");
    }
    let mut chunked = Vec::new();
    chunked.extend(fin(TEXT, &ping_json("chunked", 65535)));
    ws.send_chunked(&chunked, 997).await;
    assert!(ws.next().await.text().contains("chunked"));
    // 1.2.1-1.2.8: binary messages are read (and refused by the protocol with an error frame).
    for len in [0, 125, 126, 65535] {
        ws.send(&fin(BINARY, &vec![0xfe; len])).await;
        assert!(ws.next().await.text().contains("invalid_frame"), "binary {len}");
    }
    ws.alive("after-binary").await;
}

#[tokio::test]
async fn s1_lengths_past_the_limit_and_malformed_lengths() {
    let mut top_bit = vec![0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0];
    top_bit.extend_from_slice(&[1, 2, 3, 4]);
    let mut non_minimal_16 = vec![0x81, 0x80 | 126, 0, 5];
    non_minimal_16.extend_from_slice(&[0, 0, 0, 0]);
    non_minimal_16.extend_from_slice(b"     ");
    let mut non_minimal_64 = vec![0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 5];
    non_minimal_64.extend_from_slice(&[0, 0, 0, 0]);
    let mut header_only = vec![0x82, 0x80 | 126];
    header_only.extend_from_slice(&65535u16.to_be_bytes());
    fails_with(&[
        ("64-bit length with the top bit set", top_bit, 1002),
        ("16-bit form for 5 bytes", non_minimal_16, 1002),
        ("64-bit form for 5 bytes", non_minimal_64, 1002),
        ("text over limits.max_frame_bytes", fin(TEXT, &ping_json("big", 65537)), 1009),
        ("unmasked client frame", vec![0x81, 0x02, b'{', b'}'], 1002),
    ])
    .await;
}

// ---- Section 2: pings and pongs ----------------------------------------------------

#[tokio::test]
async fn s2_pings_are_answered_with_their_payload() {
    let (s, addr) = server().await;
    let mut ws = open(&s, &addr).await;
    // 2.1 empty, 2.2 text, 2.3 binary, 2.4 125 bytes, 2.6 125 bytes sent byte by byte.
    let payloads: Vec<Vec<u8>> = vec![vec![], b"Hello, world!".to_vec(), vec![0x00, 0xff, 0xfe, 0xfd], vec![0xfe; 125]];
    for p in &payloads {
        ws.send(&fin(PING, p)).await;
        let f = ws.next().await;
        assert_eq!((f.opcode, &f.payload), (PONG, p));
    }
    ws.send_chunked(&fin(PING, &[b'x'; 125]), 1).await;
    assert_eq!(ws.next().await, Frame { fin: true, rsv: 0, opcode: PONG, payload: vec![b'x'; 125] });
    // 2.7, 2.8: unsolicited pongs are ignored. 2.9: a pong, then a ping: one pong back.
    ws.send(&fin(PONG, b"")).await;
    ws.send(&fin(PONG, b"unsolicited")).await;
    ws.send(&fin(PING, b"after")).await;
    assert_eq!(ws.next().await.payload, b"after");
    // 2.10, 2.11: ten pings in a row (also in one write) get ten pongs, in order.
    let mut burst = Vec::new();
    for i in 0..10u8 {
        burst.extend(fin(PING, &[b'0' + i]));
    }
    ws.send(&burst).await;
    for i in 0..10u8 {
        assert_eq!(ws.next().await.payload, vec![b'0' + i]);
    }
    ws.alive("s2").await;
}

#[tokio::test]
async fn s2_bad_pings() {
    let mut fragmented = frame(PING, b"a"); // FIN clear
    fragmented.extend(fin(CONT, b"b"));
    fails_with(&[
        ("2.5 ping of 126 bytes", fin(PING, &[b'x'; 126]), 1002),
        ("5.1 fragmented ping", fragmented, 1002),
        ("5.2 fragmented pong", frame(PONG, b"a"), 1002),
    ])
    .await;
}

// ---- Section 3: reserved bits ------------------------------------------------------

#[tokio::test]
async fn s3_reserved_bits_fail_without_an_extension() {
    let mut after_valid = fin(TEXT, &ping_json("ok", 40));
    after_valid.extend(frame(0x80 | 0x20 | TEXT, b"{}"));
    fails_with(&[
        ("3.1 RSV1 on text, deflate not negotiated", frame(0x80 | 0x40 | TEXT, b"{}"), 1002),
        ("3.2 RSV2 on text after a valid text", after_valid, 1002),
        ("3.3 RSV1+RSV2", frame(0x80 | 0x60 | TEXT, b"{}"), 1002),
        ("3.4 RSV3", frame(0x80 | 0x10 | TEXT, b"{}"), 1002),
        ("3.5 RSV1+RSV3 on binary", frame(0x80 | 0x50 | BINARY, b"\x00"), 1002),
        ("3.6 RSV2+RSV3 on ping", frame(0x80 | 0x30 | PING, b""), 1002),
        ("3.7 all RSV on close", frame(0x80 | 0x70 | CLOSE, b""), 1002),
    ])
    .await;
}

// ---- Section 4: opcodes ------------------------------------------------------------

#[tokio::test]
async fn s4_reserved_opcodes_fail() {
    let mut cases = Vec::new();
    // 4.1.1-4.1.5: non-control 3-7; 4.2.1-4.2.5: control 0xB-0xF (with and without payload).
    for (i, op) in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF].into_iter().enumerate() {
        let payload: &[u8] = if i % 2 == 0 { b"" } else { b"reserved" };
        cases.push(("reserved opcode", fin(op, payload), 1002));
    }
    fails_with(&cases).await;
}

// ---- Section 5: fragmentation ------------------------------------------------------

#[tokio::test]
async fn s5_fragmented_messages_with_control_frames_between() {
    let (s, addr) = server().await;
    let mut ws = open(&s, &addr).await;
    // 5.3, 5.4: a text message in two fragments (5.5: sent in separate writes).
    let msg = ping_json("frag2", 60);
    ws.send(&frame(TEXT, &msg[..20])).await;
    ws.send(&fin(CONT, &msg[20..])).await;
    assert!(ws.next().await.text().contains("frag2"));
    // 5.6-5.8: a ping between the fragments is answered first.
    let msg = ping_json("frag-ping", 60);
    let mut bytes = frame(TEXT, &msg[..10]);
    bytes.extend(fin(PING, b"between"));
    bytes.extend(fin(CONT, &msg[10..]));
    ws.send_chunked(&bytes, 3).await;
    assert_eq!(ws.next().await.payload, b"between");
    assert!(ws.next().await.text().contains("frag-ping"));
    // 5.19, 5.20: many fragments (some empty) with pings and a pong interleaved.
    let msg = ping_json("frag-many", 100);
    let mut bytes = frame(TEXT, b"");
    for (i, part) in msg.chunks(9).enumerate() {
        bytes.extend(frame(CONT, part));
        bytes.extend(fin(if i % 3 == 0 { PING } else { PONG }, &[i as u8]));
        bytes.extend(frame(CONT, b""));
    }
    bytes.extend(fin(CONT, b""));
    ws.send(&bytes).await;
    for i in (0..msg.chunks(9).count()).step_by(3) {
        assert_eq!(ws.next().await.payload, vec![i as u8]);
    }
    assert!(ws.next().await.text().contains("frag-many"));
    // Fragmented binary (5.x with binary) is read whole.
    ws.send(&frame(BINARY, b"\x01")).await;
    ws.send(&fin(CONT, b"\x02")).await;
    assert!(ws.next().await.text().contains("invalid_frame"));
    ws.alive("s5").await;
}

#[tokio::test]
async fn s5_bad_fragmentation() {
    let mut text_in_text = frame(TEXT, b"{");
    text_in_text.extend(fin(TEXT, b"{}"));
    let mut two_starts = frame(TEXT, b"{");
    two_starts.extend(frame(TEXT, b"}"));
    fails_with(&[
        ("5.9 continuation with FIN and no message", fin(CONT, b"{}"), 1002),
        ("5.10 continuation without FIN and no message", frame(CONT, b"{"), 1002),
        ("5.15 a new text message inside a fragmented one", text_in_text, 1002),
        ("5.18 two first fragments", two_starts, 1002),
    ])
    .await;
}

// ---- Section 6: UTF-8 --------------------------------------------------------------

#[tokio::test]
async fn s6_utf8_across_fragments() {
    let (s, addr) = server().await;
    let mut ws = open(&s, &addr).await;
    // 6.2.1-6.2.4: valid UTF-8 (2, 3 and 4 byte sequences) split inside code points.
    let reference = "κόσμε-€-𝄞";
    let msg = ping_json(reference, 60);
    for split in 1..msg.len() {
        ws.send(&frame(TEXT, &msg[..split])).await;
        ws.send(&fin(CONT, &msg[split..])).await;
        assert!(ws.next().await.text().contains(reference), "split at {split}");
    }
    // 6.1.1-6.1.3: empty fragments of a text message.
    ws.send(&frame(TEXT, b"")).await;
    ws.send(&frame(CONT, b"")).await;
    ws.send(&fin(CONT, &ping_json("empty-frags", 40))).await;
    assert!(ws.next().await.text().contains("empty-frags"));
}

#[tokio::test]
async fn s6_invalid_utf8_fails_with_1007() {
    let invalid: [&[u8]; 8] = [
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64", // 6.3.1 surrogate
        b"\xc0\xaf",                                                                         // 6.9.x overlong
        b"\xf8\x88\x80\x80",                                                                 // 6.7.x 5-byte form
        b"\xff",                                                                             // 6.8.x
        b"\xe0\x80\xaf",                                                                     // overlong 3-byte
        b"\xf4\x90\x80\x80",                                                                 // above U+10FFFF
        b"\xce", // truncated at the end of the message
        b"\x80", // lone continuation byte
    ];
    let mut cases = Vec::new();
    for bad in invalid {
        cases.push(("invalid UTF-8 in one frame", fin(TEXT, bad), 1007));
        // 6.4.x: the invalid sequence in a later fragment.
        let mut frags = frame(TEXT, b"{\"op\":");
        frags.extend(fin(CONT, bad));
        cases.push(("invalid UTF-8 in a fragment", frags, 1007));
    }
    fails_with(&cases).await;
}

// ---- Section 7: close handling -----------------------------------------------------

#[tokio::test]
async fn s7_client_close_is_echoed_and_tcp_closed_at_once() {
    let (s, addr) = server().await;
    // 7.1.1, 7.3.3, 7.7.1-7.7.13: valid codes are echoed.
    for code in [1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999] {
        let mut ws = open(&s, &addr).await;
        ws.send(&fin(CLOSE, &close_payload(code, b""))).await;
        assert_eq!(ws.next_close().await.close_code(), Some(code));
        ws.expect_eof().await;
    }
    // 7.3.1: an empty close is answered with an empty close.
    let mut ws = open(&s, &addr).await;
    ws.send(&fin(CLOSE, b"")).await;
    assert_eq!(ws.next_close().await.payload, Vec::<u8>::new());
    ws.expect_eof().await;
    // 7.3.4, 7.3.5: a reason of up to 123 bytes.
    let mut ws = open(&s, &addr).await;
    ws.send(&fin(CLOSE, &close_payload(1000, &[b'r'; 123]))).await;
    assert_eq!(ws.next_close().await.close_code(), Some(1000));
    ws.expect_eof().await;
    // 7.1.3-7.1.5: frames after the client's close get no answer but the close.
    let mut ws = open(&s, &addr).await;
    let mut bytes = fin(CLOSE, &close_payload(1000, b""));
    bytes.extend(fin(PING, b"late"));
    bytes.extend(fin(TEXT, &ping_json("late", 40)));
    ws.send(&bytes).await;
    assert_eq!(ws.read().await.map(|f| f.opcode), Some(CLOSE));
    ws.expect_eof().await;
}

#[tokio::test]
async fn s7_bad_close_frames() {
    let mut cases = vec![
        ("7.3.2 one-byte close payload", fin(CLOSE, b"\x03"), 1002),
        ("7.3.6 close payload of 126 bytes", fin(CLOSE, &close_payload(1000, &[b'r'; 124])), 1002),
        ("7.5.1 reason not UTF-8", fin(CLOSE, &close_payload(1000, b"\xce\xba\xe1\xbd\xb9\xed\xa0\x80")), 1007),
    ];
    // 7.9.1-7.9.13, 7.13.x: codes that must not appear on the wire.
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
        cases.push(("invalid close code", fin(CLOSE, &close_payload(code, b"")), 1002));
    }
    fails_with(&cases).await;
}

#[tokio::test]
async fn s7_server_close_ends_tcp_once_the_client_answers() {
    let (s, addr) = server().await;
    let mut ws = open(&s, &addr).await;
    let r = s.api.disconnect("alice").await.expect("disconnect");
    assert_eq!(r.status, 200, "{}", r.text);
    let f = ws.next_close().await;
    assert_eq!(f.close_code(), Some(4009));
    // The client echoes; the server has read it and closes TCP at once (it used to wait
    // two seconds for an EOF the client was waiting for in turn).
    ws.send(&fin(CLOSE, &close_payload(4009, b""))).await;
    ws.expect_eof().await;

    // A client that keeps sending data frames before its Close: they are dropped, and the
    // Close still ends TCP at once.
    let mut ws = open(&s, &addr).await;
    s.api.disconnect("alice").await.expect("disconnect");
    assert_eq!(ws.next_close().await.close_code(), Some(4009));
    let mut bytes = fin(TEXT, &ping_json("late", 40));
    bytes.extend(fin(PING, b"late"));
    bytes.extend(fin(CLOSE, &close_payload(4009, b"")));
    ws.send(&bytes).await;
    ws.expect_eof().await;

    // A protocol violation: close 1002, and TCP closed as soon as the client answers, even
    // though the server no longer reads frames.
    let mut ws = open(&s, &addr).await;
    ws.send(&fin(7, b"")).await;
    assert_eq!(ws.next_close().await.close_code(), Some(1002));
    ws.send(&fin(CLOSE, &close_payload(1002, b""))).await;
    ws.expect_eof().await;
}

// ---- The HTTP handshake ------------------------------------------------------------

#[tokio::test]
async fn handshake_with_another_version_gets_426() {
    let (s, addr) = server().await;
    let token = s.token("alice", &[]);
    for version in ["", "Sec-WebSocket-Version: 8\r\n", "Sec-WebSocket-Version: 14\r\n"] {
        let (status, head, mut body, mut stream) = http(&addr, &upgrade_request(&addr, &token, version)).await;
        assert_eq!(status, 426, "{version:?}: {head}");
        assert_eq!(header(&head, "sec-websocket-version"), Some("13"), "{head}");
        let len: usize = header(&head, "content-length").and_then(|l| l.parse().ok()).expect("content-length");
        while body.len() < len {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "EOF inside the body");
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON error body");
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
    }
}

// ---- Sections 12 and 13: permessage-deflate (RFC 7692) -----------------------------

const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Raw DEFLATE with a sync flush, tail removed (RFC 7692 section 7.2.1), as a client sends.
fn client_deflate(data: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::new(6), false);
    let mut out = Vec::with_capacity(data.len() + 1024);
    c.compress_vec(data, &mut out, flate2::FlushCompress::Sync).expect("compress");
    assert_eq!(c.total_in() as usize, data.len(), "one call compresses everything");
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn client_inflate(data: &[u8]) -> Vec<u8> {
    let mut d = flate2::Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 21);
    d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync).expect("server sent valid DEFLATE");
    out
}

async fn open_deflate(s: &TestServer, addr: &str, offer: &str) -> Raw {
    Raw::connect(addr, &s.token("alice", &[]), &format!("Sec-WebSocket-Extensions: {offer}\r\n")).await
}

#[tokio::test]
async fn s13_negotiation_answers() {
    let (s, addr) = server().await;
    // 13.1-13.2 (default offers of browsers, Node ws and Python websockets).
    for offer in [
        "permessage-deflate",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; client_max_window_bits=9",
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits",
        "permessage-deflate; unknown_param, permessage-deflate",
    ] {
        assert_eq!(open_deflate(&s, &addr, offer).await.extensions.as_deref(), Some(ANSWER), "{offer}");
    }
    // server_max_window_bits is echoed (it must be); only 15 is accepted, see docs/protocol.md.
    let ws = open_deflate(&s, &addr, "permessage-deflate; server_max_window_bits=15").await;
    assert_eq!(ws.extensions.as_deref(), Some(&*format!("{ANSWER}; server_max_window_bits=15")));
    for declined in [
        "permessage-deflate; server_max_window_bits=10",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; unknown_param",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "x-webkit-deflate-frame",
    ] {
        assert_eq!(open_deflate(&s, &addr, declined).await.extensions, None, "{declined}");
    }
    // compression.enabled: false answers no extension at all.
    let off = TestServer::with(|c| c.compression.enabled = false).await;
    let off_addr = off.base.trim_start_matches("http://").to_string();
    assert_eq!(open_deflate(&off, &off_addr, "permessage-deflate").await.extensions, None);
}

#[tokio::test]
async fn s12_server_messages_are_compressed_from_min_bytes() {
    let (s, addr) = server().await;
    let mut ws = open_deflate(&s, &addr, "permessage-deflate; client_max_window_bits").await;
    let mut plain = open(&s, &addr).await;
    // 12.1.x-12.2.x: messages of growing size; each arrives intact, compressed once it is
    // at least compression.min_bytes (1024) long, plain below.
    for size in [16usize, 500, 1024, 4096, 16384, 65536, 262144] {
        let data = "abc ".repeat(size / 4);
        common::publish(&s.api, "alice", "doc", serde_json::json!({ "text": data })).await;
        let f = ws.next().await;
        let p = plain.next().await;
        let text = if f.rsv == RSV1 { client_inflate(&f.payload) } else { f.payload.clone() };
        assert_eq!(text, p.payload, "size {size}: same message on both connections");
        let event: serde_json::Value = serde_json::from_slice(&text).expect("JSON event");
        assert_eq!(event["data"]["text"].as_str().map(str::len), Some(data.len()), "size {size}");
        assert_eq!(f.rsv == RSV1, p.payload.len() >= 1024, "size {size}: RSV1 {:#x} for {}", f.rsv, p.payload.len());
        if f.rsv == RSV1 {
            assert!(f.payload.len() < p.payload.len() / 4, "size {size}: compressed to {}", f.payload.len());
        }
        assert_eq!(p.rsv, 0);
    }
    // Replies and pongs go plain or compressed by the same rule.
    ws.alive("deflate-alive").await;
}

#[tokio::test]
async fn s12_compressed_client_messages() {
    let (s, addr) = server().await;
    let mut ws = open_deflate(&s, &addr, "permessage-deflate").await;
    // A compressed ping in one frame, and one in three fragments (RSV1 on the first only).
    let z = client_deflate(&ping_json("zipped", 3000));
    ws.send(&frame(0x80 | RSV1 | TEXT, &z)).await;
    assert!(ws.next().await.text().contains("zipped"));
    let z = client_deflate(&ping_json("zipped-frags", 5000));
    let (a, rest) = z.split_at(z.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    let mut bytes = frame(RSV1 | TEXT, a);
    bytes.extend(frame(CONT, b));
    bytes.extend(fin(PING, b"mid"));
    bytes.extend(fin(CONT, c));
    ws.send(&bytes).await;
    assert_eq!(ws.next().await.payload, b"mid");
    assert!(ws.next().await.text().contains("zipped-frags"));
    // Uncompressed messages stay allowed on a deflate connection.
    ws.alive("plain-on-deflate").await;
    // A compressed binary message is inflated too (and refused by the protocol).
    ws.send(&frame(0x80 | RSV1 | BINARY, &client_deflate(&[7u8; 2000]))).await;
    assert!(ws.next().await.text().contains("invalid_frame"));
}

#[tokio::test]
async fn s12_bad_compressed_client_messages() {
    let (s, addr) = server().await;
    let big = client_deflate(&ping_json("bomb", 65537)); // a few hundred bytes on the wire
    assert!(big.len() < 1000);
    let mut rsv1_cont = frame(RSV1 | TEXT, &client_deflate(b"{\"op\":"));
    rsv1_cont.extend(frame(0x80 | RSV1 | CONT, b"x"));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("inflates past limits.max_frame_bytes", frame(0x80 | RSV1 | TEXT, &big), 1009),
        ("RSV1 on a continuation frame", rsv1_cont, 1002),
        ("RSV1 on a ping", frame(0x80 | RSV1 | PING, b""), 1002),
        ("RSV1 on a close", frame(0x80 | RSV1 | CLOSE, &close_payload(1000, b"")), 1002),
        ("RSV2 with deflate negotiated", frame(0x80 | 0x20 | TEXT, b"{}"), 1002),
        ("corrupt DEFLATE data", frame(0x80 | RSV1 | TEXT, &[0xff; 16]), 1007),
        ("inflates to invalid UTF-8", frame(0x80 | RSV1 | TEXT, &client_deflate(b"\xff\xfe")), 1007),
    ];
    for (name, bytes, code) in cases {
        let mut ws = open_deflate(&s, &addr, "permessage-deflate").await;
        ws.send(&bytes).await;
        let f = ws.next_close().await;
        assert_eq!(f.close_code(), Some(code), "case {name}: {f:?}");
        ws.send(&fin(CLOSE, &f.payload[..2])).await;
        ws.expect_eof().await;
    }
}
