//! Unit tests of the Redis store's pure parts: key layout, answer decoding, error mapping.
//! The behaviour against real Redis servers is tested in `tests/redis_store.rs`.

use super::*;

/// The hash tag Redis Cluster uses to pick a key's slot.
fn hash_tag(key: &str) -> &str {
    match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    }
}

#[test]
fn keys_of_one_stream_share_a_slot_and_never_collide() {
    let keys = Keys { prefix: "sg".into() };
    for name in ["alice", "we{ir}d", "}x{", "", "a:b"] {
        for kind in [Kind::User, Kind::Room] {
            let [s, h, x] = keys.stream(kind, name);
            let tag = hash_tag(&s);
            assert_eq!(hash_tag(&h), tag);
            assert_eq!(hash_tag(&x), tag);
            if kind == Kind::User {
                assert_eq!(hash_tag(&keys.cursors(name)), tag);
            }
        }
    }
    assert_eq!(keys.stream(Kind::User, "alice")[0], "sg:{u:alice}:s");
    assert_ne!(keys.stream(Kind::User, "a}:s")[0], keys.stream(Kind::User, "a")[0]);
    assert_ne!(keys.stream(Kind::User, "a")[0], keys.stream(Kind::Room, "a")[0]);
    assert_eq!(keys.index(Kind::Room, 'x', 3), "sg:{i:3}:rx");
    assert!((0..INDEX_SHARDS).contains(&keys.shard(Kind::User, "alice")));
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

#[test]
fn decodes_entries_and_sweep_answers() {
    let entry = Value::Array(vec![
        bulk("17-0"),
        Value::Array(vec![
            bulk("t"),
            bulk("1700000000000"),
            bulk("x"),
            bulk("5"),
            bulk("k"),
            bulk("a.b"),
            bulk("d"),
            bulk("{}"),
        ]),
    ]);
    let e = decode_entry(entry).unwrap();
    assert_eq!((e.seq, e.ts, e.kind.as_str(), e.data.as_ref()), (17, 1_700_000_000_000, "a.b", &b"{}"[..]));
    assert!(decode_entry(Value::Array(vec![bulk("17-0"), Value::Array(vec![bulk("t"), bulk("1")])])).is_none());
    assert!(decode_entry(bulk("nope")).is_none());

    let swept = decode_swept(Value::Array(vec![
        Value::Int(3),
        Value::Int(2),
        bulk("1700000000000"),
        bulk("1.7000000001e+12"),
        Value::Int(1),
    ]))
    .unwrap();
    assert_eq!((swept.removed, swept.len, swept.oldest, swept.more), (3, 2, Some(1_700_000_000_000), true));
    assert_eq!(swept.min_expiry, Some(1_700_000_000_100));
    let empty = decode_swept(Value::Array(vec![Value::Int(0), Value::Int(0), Value::Nil, Value::Nil, Value::Int(0)]));
    let empty = empty.unwrap();
    assert_eq!((empty.oldest, empty.min_expiry, empty.more), (None, None, false));
    assert_eq!(id_seq(b"18446744073709551615-0"), Some(u64::MAX));
}

#[test]
fn connection_trouble_is_unavailable_and_bugs_are_internal() {
    let io = RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"));
    assert!(matches!(store_err("x", io), StoreError::Unavailable(_)));
    let script = RedisError::from((redis::ErrorKind::UnexpectedReturnType, "bad"));
    assert!(matches!(store_err("x", script), StoreError::Internal(_)));
}
