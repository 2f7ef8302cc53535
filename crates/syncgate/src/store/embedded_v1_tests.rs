//! A data dir written in format 1 (per-event time index, two-field heads) opens with this
//! build: it is converted in place, keeps every event, head, counter and the epoch, and its
//! age retention works from the new index.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use redb::{Database, ReadableTableMetadata, TableHandle};

use super::{encode_event, EmbeddedOptions, EmbeddedStore, FsyncPolicy, COUNTERS, C_MESSAGES, C_STREAMS, FILE_NAME};
use super::{now_ms, META, NO_EXPIRY, ROOM, USER};
use crate::store::{NewEvent, Retention, Store};

const DAY: i64 = 24 * 3600 * 1000;

fn ev(stream: &str, ts: i64) -> NewEvent {
    NewEvent { stream: stream.into(), kind: "t".into(), data: Bytes::from_static(b"{}"), ts, ttl: None }
}

/// Writes what a format 1 build left: user "a" with seqs 1..=3 (two of them 10 days old),
/// user "b" trimmed to empty at head 7, room "lobby" with one event.
fn write_v1(dir: &Path, now: i64) {
    let db = Database::create(dir.join(FILE_NAME)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("epoch", "0badcafe").unwrap();
        meta.insert("format", "1").unwrap();
        for (kind, stream, events, head) in [
            (&USER, "a", vec![(1, now - 10 * DAY), (2, now - 10 * DAY), (3, now)], (3, 3)),
            (&ROOM, "lobby", vec![(1, now)], (1, 1)),
        ] {
            let mut t = txn.open_table(kind.events).unwrap();
            let mut by_time = txn.open_table(kind.v1_by_time).unwrap();
            for (seq, ts) in events {
                t.insert((stream, seq), encode_event(&ev(stream, ts), NO_EXPIRY).as_slice()).unwrap();
                by_time.insert((ts, stream, seq), ()).unwrap();
            }
            txn.open_table(kind.v1_heads).unwrap().insert(stream, head).unwrap();
        }
        txn.open_table(USER.v1_heads).unwrap().insert("b", (7, 0)).unwrap();
        let mut counters = txn.open_table(COUNTERS).unwrap();
        counters.insert(C_MESSAGES, 3).unwrap();
        counters.insert(C_STREAMS, 1).unwrap();
    }
    txn.commit().unwrap();
}

#[tokio::test]
async fn a_format_1_file_is_converted_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    write_v1(dir.path(), now);
    let s = EmbeddedStore::open(EmbeddedOptions::new(dir.path())).unwrap();
    assert_eq!(s.epoch(), "0badcafe");
    let a = s.read_user("a", 0, 10).await.unwrap();
    assert_eq!((a.events.iter().map(|e| e.seq).collect::<Vec<_>>(), a.head, a.first), (vec![1, 2, 3], 3, 1));
    let b = s.read_user("b", 0, 10).await.unwrap();
    assert_eq!((b.events.len(), b.head, b.first), (0, 7, 8));
    assert_eq!(s.read_room("lobby", 0, 10).await.unwrap().head, 1);
    let st = s.stats().await.unwrap();
    assert_eq!((st.stored_messages, st.streams), (3, 1));
    assert!(st.oldest_age_ms.unwrap() >= 10 * DAY as u64, "{st:?}");
    // Numbering goes on; age retention finds the old events through the new index.
    assert_eq!(s.append_user(vec![ev("b", now)]).await.unwrap(), vec![8]);
    let week = Duration::from_secs(7 * 24 * 3600);
    let retention = Retention {
        max_age: week,
        max_len: u64::MAX,
        room_max_len: u64::MAX,
        room_max_age: week,
        cursor_ttl: week,
        idempotency_ttl: week,
    };
    assert_eq!(s.sweep(&retention, now).await.unwrap(), 2);
    let a = s.read_user("a", 0, 10).await.unwrap();
    assert_eq!((a.events.len(), a.first, a.head), (1, 3, 3));
    assert!(s.stats().await.unwrap().oldest_age_ms.unwrap() < DAY as u64);
    s.close().await.unwrap();
    drop(s);

    // The old tables are gone; the file reopens as format 2.
    {
        let db = Database::open(dir.path().join(FILE_NAME)).unwrap();
        let rtx = db.begin_read().unwrap();
        let names: Vec<String> = rtx.list_tables().unwrap().map(|t| t.name().to_string()).collect();
        for old in ["user_heads", "room_heads", "user_by_time", "room_by_time"] {
            assert!(!names.iter().any(|n| n == old), "{old} left in {names:?}");
        }
        assert_eq!(rtx.open_table(USER.age).unwrap().len().unwrap(), 2); // "a" and "b"
    }
    let s =
        EmbeddedStore::open(EmbeddedOptions { fsync: FsyncPolicy::Never, ..EmbeddedOptions::new(dir.path()) }).unwrap();
    assert_eq!(s.read_user("b", 0, 10).await.unwrap().head, 8);
}

#[test]
fn an_unknown_format_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("format", "9").unwrap();
        txn.commit().unwrap();
    }
    let err = EmbeddedStore::open(EmbeddedOptions::new(dir.path())).err().expect("refused").to_string();
    assert!(err.contains("has format 9"), "{err}");
}
