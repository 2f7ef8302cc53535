// Tests of the embedded store: numbering, paging, retention, cursors, idempotency, epoch,
// stats, shutdown and crash recovery (a child process killed with SIGKILL). Included once
// per engine: `ENGINE` is the engine under test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{now_ms, EmbeddedOptions, EmbeddedStore, FsyncPolicy};
use crate::store::{IdemRecord, NewEvent, Retention, Store, StoreError};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn opts(dir: &Path, fsync: FsyncPolicy) -> EmbeddedOptions {
    EmbeddedOptions { dir: dir.to_path_buf(), engine: ENGINE, fsync, ..EmbeddedOptions::new(dir) }
}

fn open(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open(opts(dir, FsyncPolicy::Never)).expect("open store")
}

fn ev(stream: &str, ts: i64, data: &str) -> NewEvent {
    NewEvent {
        stream: stream.to_string(),
        kind: "playlist.updated".to_string(),
        data: Bytes::from(data.to_string()),
        ts,
        ttl: None,
    }
}

/// Retention that removes nothing unless a test lowers a field.
fn keep_all() -> Retention {
    Retention {
        max_age: DAY * 3650,
        max_len: u64::MAX,
        room_max_len: u64::MAX,
        room_max_age: DAY * 3650,
        cursor_ttl: DAY * 3650,
        idempotency_ttl: DAY * 3650,
    }
}

fn seqs(page: &crate::store::Page) -> Vec<u64> {
    page.events.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn seqs_are_consecutive_across_batches_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    {
        let s = open(dir.path());
        assert_eq!(s.append_user(vec![ev("a", now, "1")]).await.unwrap(), vec![1]);
        // Several events to one stream in one call, interleaved with another stream.
        let got = s.append_user(vec![ev("a", now, "2"), ev("b", now, "x"), ev("a", now, "3")]).await.unwrap();
        assert_eq!(got, vec![2, 1, 3]);
        assert_eq!(s.append_user(vec![]).await.unwrap(), Vec::<u64>::new());
        s.close().await.unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.append_user(vec![ev("a", now, "4")]).await.unwrap(), vec![4]);
    let page = s.read_user("a", 0, 100).await.unwrap();
    assert_eq!(seqs(&page), vec![1, 2, 3, 4]);
    let data: Vec<_> = page.events.iter().map(|e| e.data.clone()).collect();
    assert_eq!(data, ["1", "2", "3", "4"].map(|s| Bytes::from_static(s.as_bytes())));
    assert_eq!(page.events[0].kind, "playlist.updated");
    assert_eq!(page.events[0].ts, now);
    assert_eq!((page.head, page.first), (4, 1));
    // Rooms are numbered on their own.
    assert_eq!(s.append_room(ev("a", now, "r")).await.unwrap(), 1);
    assert_eq!(s.append_room(ev("a", now, "r")).await.unwrap(), 2);
    assert_eq!(seqs(&s.read_room("a", 0, 10).await.unwrap()), vec![1, 2]);
    // A stream never written.
    let page = s.read_user("nobody", 0, 10).await.unwrap();
    assert_eq!((page.events.len(), page.head, page.first), (0, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_distinct_consecutive_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(EmbeddedStore::open(opts(dir.path(), FsyncPolicy::Always)).unwrap());
    let mut tasks = Vec::new();
    for t in 0..50 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("user{}", t % 5);
            let mut got = Vec::new();
            for i in 0..20 {
                let seq = s.append_user(vec![ev(&user, now_ms(), &format!("{t}:{i}"))]).await.unwrap()[0];
                got.push((user.clone(), seq, format!("{t}:{i}")));
            }
            got
        }));
    }
    let mut by_user: HashMap<String, HashMap<u64, String>> = HashMap::new();
    for task in tasks {
        for (user, seq, data) in task.await.unwrap() {
            assert!(by_user.entry(user).or_default().insert(seq, data).is_none(), "duplicate seq");
        }
    }
    for (user, answered) in &by_user {
        let page = s.read_user(user, 0, 1000).await.unwrap();
        assert_eq!(seqs(&page), (1..=200).collect::<Vec<_>>());
        assert_eq!(page.head, 200);
        let mut last_i: HashMap<String, u64> = HashMap::new();
        for e in &page.events {
            let data = std::str::from_utf8(&e.data).unwrap();
            assert_eq!(answered[&e.seq], data, "seq answered for another event");
            // Each task awaited its appends one by one, so its events are in its order.
            let (t, i) = data.split_once(':').unwrap();
            let i: u64 = i.parse().unwrap();
            if let Some(prev) = last_i.insert(t.to_string(), i) {
                assert!(prev < i);
            }
        }
    }
}

#[tokio::test]
async fn paging_with_after_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let evs = (0..25).map(|i| ev("u", now_ms(), &i.to_string())).collect();
    s.append_user(evs).await.unwrap();
    let mut after = 0;
    let mut all = Vec::new();
    loop {
        let page = s.read_user("u", after, 10).await.unwrap();
        assert!(page.events.len() <= 10);
        assert_eq!((page.head, page.first), (25, 1));
        let Some(last) = page.events.last() else {
            break;
        };
        after = last.seq;
        all.extend(seqs(&page));
    }
    assert_eq!(all, (1..=25).collect::<Vec<_>>());
    assert_eq!(seqs(&s.read_user("u", 20, 100).await.unwrap()), vec![21, 22, 23, 24, 25]);
    assert!(s.read_user("u", 3, 0).await.unwrap().events.is_empty());
    assert!(s.read_user("u", u64::MAX, 10).await.unwrap().events.is_empty());
}

#[tokio::test]
async fn trimming_by_len_and_age_keeps_head() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let now = now_ms();
    let old = now - 10 * DAY.as_millis() as i64;
    // Stream "len": 10 recent events, keep 4.
    s.append_user((0..10).map(|_| ev("len", now, "x")).collect()).await.unwrap();
    // Stream "age": 3 old then 2 recent events.
    s.append_user((0..3).map(|_| ev("age", old, "old")).collect()).await.unwrap();
    s.append_user((0..2).map(|_| ev("age", now, "new")).collect()).await.unwrap();
    let retention = Retention { max_len: 4, max_age: DAY * 7, ..keep_all() };
    assert_eq!(s.sweep(&retention, now).await.unwrap(), 6 + 3);

    let page = s.read_user("len", 0, 100).await.unwrap();
    assert_eq!((seqs(&page), page.head, page.first), (vec![7, 8, 9, 10], 10, 7));
    let page = s.read_user("age", 0, 100).await.unwrap();
    assert_eq!((seqs(&page), page.head, page.first), (vec![4, 5], 5, 4));

    // Trimmed to empty: head stays, first is head + 1, numbering goes on.
    let later = now + 8 * DAY.as_millis() as i64;
    assert_eq!(s.sweep(&retention, later).await.unwrap(), 6);
    let page = s.read_user("age", 0, 100).await.unwrap();
    assert_eq!((page.events.len(), page.head, page.first), (0, 5, 6));
    assert_eq!(s.append_user(vec![ev("age", later, "again")]).await.unwrap(), vec![6]);

    // Rooms: history bounded by length and age.
    for _ in 0..5 {
        s.append_room(ev("lobby", old, "r")).await.unwrap();
    }
    s.append_room(ev("lobby", now, "r")).await.unwrap();
    s.append_room(ev("lobby", now, "r")).await.unwrap();
    let rooms = Retention { room_max_len: 3, room_max_age: DAY * 7, ..keep_all() };
    assert_eq!(s.sweep(&rooms, now).await.unwrap(), 5);
    let page = s.read_room("lobby", 0, 100).await.unwrap();
    assert_eq!((seqs(&page), page.head, page.first), (vec![6, 7], 7, 6));
}

#[tokio::test]
async fn sweep_works_in_chunks_on_long_streams() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let now = now_ms();
    for _ in 0..3 {
        s.append_user((0..1000).map(|_| ev("big", now, "x")).collect()).await.unwrap();
    }
    let retention = Retention { max_len: 100, ..keep_all() };
    assert_eq!(s.sweep(&retention, now).await.unwrap(), 2900);
    let page = s.read_user("big", 0, 1000).await.unwrap();
    assert_eq!((page.events.len(), page.first, page.head), (100, 2901, 3000));
    let all_old = Retention { max_age: Duration::ZERO, ..keep_all() };
    assert_eq!(s.sweep(&all_old, now + 1).await.unwrap(), 100);
    assert_eq!(s.stats().await.unwrap().stored_messages, 0);
}

#[tokio::test]
async fn per_event_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let now = now_ms();
    let mut short = ev("u", now - 5000, "short");
    short.ttl = Some(Duration::from_secs(1));
    let mut long = ev("u", now - 5000, "long");
    long.ttl = Some(Duration::from_secs(3600));
    s.append_user(vec![short, ev("u", now - 5000, "forever"), long]).await.unwrap();
    assert_eq!(s.sweep(&keep_all(), now).await.unwrap(), 1);
    let page = s.read_user("u", 0, 10).await.unwrap();
    assert_eq!((seqs(&page), page.first, page.head), (vec![2, 3], 2, 3));
    assert_eq!(s.sweep(&keep_all(), now + 3_600_000).await.unwrap(), 1);
    assert_eq!(seqs(&s.read_user("u", 0, 10).await.unwrap()), vec![2]);
}

#[tokio::test]
async fn cursors_never_go_backwards_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = EmbeddedStore::open(opts(dir.path(), FsyncPolicy::Always)).unwrap();
        assert_eq!(s.cursor("u", "phone").await.unwrap(), None);
        assert_eq!(s.set_cursor("u", "phone", 5, 50).await.unwrap(), 5);
        assert_eq!(s.set_cursor("u", "phone", 3, 50).await.unwrap(), 5);
        assert_eq!(s.set_cursor("u", "phone", 9, 50).await.unwrap(), 9);
        assert_eq!(s.set_cursor("u", "laptop", 0, 50).await.unwrap(), 0);
        assert_eq!(s.cursor("u", "phone").await.unwrap(), Some(9));
        assert_eq!(s.cursor("u", "laptop").await.unwrap(), Some(0));
        assert_eq!(s.cursor("v", "phone").await.unwrap(), None);
    }
    let s = open(dir.path());
    assert_eq!(s.cursor("u", "phone").await.unwrap(), Some(9));
    assert_eq!(s.stats().await.unwrap().cursors, 2);
    // Unused for longer than cursor_ttl: forgotten.
    let retention = Retention { cursor_ttl: DAY * 30, ..keep_all() };
    s.sweep(&retention, now_ms() + DAY.as_millis() as i64).await.unwrap();
    assert_eq!(s.stats().await.unwrap().cursors, 2);
    s.sweep(&retention, now_ms() + 31 * DAY.as_millis() as i64).await.unwrap();
    assert_eq!(s.cursor("u", "phone").await.unwrap(), None);
    assert_eq!(s.stats().await.unwrap().cursors, 0);
}

/// Sets user `u`'s cursor of `client` to `seq`, as if last used `days` days ago.
async fn last_used_days_ago(s: &EmbeddedStore, client: &str, seq: u64, days: u32) {
    s.write(|reply| super::writer::Req::SetCursor {
        user: "u".into(),
        client: client.into(),
        seq,
        now: now_ms() - (DAY * days).as_millis() as i64,
        max_devices: 50,
        reply,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn cursor_read_touches_last_used() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.set_cursor("u", "c", 1, 50).await.unwrap();
    last_used_days_ago(&s, "c", 1, 10).await;
    assert_eq!(s.cursor("u", "c").await.unwrap(), Some(1)); // queues a touch
    s.set_cursor("u", "other", 1, 50).await.unwrap(); // a write behind the touch: it is applied
    let retention = Retention { cursor_ttl: DAY * 5, ..keep_all() };
    s.sweep(&retention, now_ms()).await.unwrap();
    assert_eq!(s.cursor("u", "c").await.unwrap(), Some(1));
}

/// `head_and_cursor` answers what `read_user(.., u64::MAX, 0)` and `cursor` answer, in one
/// read, and touches the cursor as `cursor` does.
#[tokio::test]
async fn head_and_cursor_is_one_read_of_both() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (head, cursor) = s.head_and_cursor("u", Some("phone")).await.unwrap();
    assert_eq!((head.head, head.first, head.events.len(), cursor), (0, 1, 0, None));
    s.append_user((0..3).map(|i| ev("u", 1_000 + i, "x")).collect()).await.unwrap();
    s.set_cursor("u", "phone", 2, 50).await.unwrap();
    let (head, cursor) = s.head_and_cursor("u", Some("phone")).await.unwrap();
    let alone = s.read_user("u", u64::MAX, 0).await.unwrap();
    assert_eq!((head.head, head.first, head.events.len()), (alone.head, alone.first, 0));
    assert_eq!((head.head, cursor), (3, Some(2)));
    assert_eq!(s.head_and_cursor("u", Some("laptop")).await.unwrap().1, None);
    assert_eq!(s.head_and_cursor("u", None).await.unwrap().1, None);
    // A cursor last used 10 days ago is touched by the read, so a 5-day sweep keeps it.
    last_used_days_ago(&s, "phone", 2, 10).await;
    assert_eq!(s.head_and_cursor("u", Some("phone")).await.unwrap().1, Some(2)); // queues a touch
    s.set_cursor("u", "other", 1, 50).await.unwrap(); // a write behind the touch: it is applied
    s.sweep(&Retention { cursor_ttl: DAY * 5, ..keep_all() }, now_ms()).await.unwrap();
    assert_eq!(s.cursor("u", "phone").await.unwrap(), Some(2));
}

#[tokio::test]
async fn idempotency_claims_hold_a_key_until_answered_released_or_expired() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let lease = Duration::from_secs(30);
    assert_eq!(s.idem_claim("k", 42, lease).await.unwrap(), None, "the first claim wins");
    let held = s.idem_claim("k", 42, lease).await.unwrap().expect("the key is held");
    assert_eq!((held.request_hash, held.status), (42, 0), "in flight");
    // The answer replaces the claim; later claims get the answer.
    let answer = IdemRecord { request_hash: 42, status: 202, body: Bytes::from_static(b"{\"id\":\"e.1\"}") };
    assert_eq!(s.idem_put("k", answer.clone()).await.unwrap(), None);
    assert_eq!(s.idem_claim("k", 42, lease).await.unwrap(), Some(answer.clone()));
    s.idem_release("k").await.unwrap();
    assert_eq!(s.idem_get("k").await.unwrap(), Some(answer), "release keeps an answer");
    // A released claim frees the key at once; an abandoned one after its lease.
    assert_eq!(s.idem_claim("f", 1, lease).await.unwrap(), None);
    s.idem_release("f").await.unwrap();
    assert_eq!(s.idem_claim("f", 1, Duration::from_millis(50)).await.unwrap(), None);
    assert!(s.idem_claim("f", 1, lease).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(s.idem_claim("f", 1, lease).await.unwrap(), None, "the lease expired");
}

#[tokio::test]
async fn idempotency_first_writer_wins_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let first = IdemRecord { request_hash: 42, status: 202, body: Bytes::from_static(b"{\"id\":\"e.1\"}") };
    let second = IdemRecord { request_hash: 7, status: 200, body: Bytes::from_static(b"{}") };
    assert_eq!(s.idem_get("k").await.unwrap(), None);
    assert_eq!(s.idem_put("k", first.clone()).await.unwrap(), None);
    assert_eq!(s.idem_put("k", second.clone()).await.unwrap(), Some(first.clone()));
    assert_eq!(s.idem_get("k").await.unwrap(), Some(first.clone()));
    assert_eq!(s.idem_put("other", second.clone()).await.unwrap(), None);

    let retention = Retention { idempotency_ttl: DAY, ..keep_all() };
    s.sweep(&retention, now_ms() + 3_600_000).await.unwrap();
    assert_eq!(s.idem_get("k").await.unwrap(), Some(first));
    s.sweep(&retention, now_ms() + 25 * 3_600_000).await.unwrap();
    assert_eq!(s.idem_get("k").await.unwrap(), None);
    assert_eq!(s.idem_put("k", second.clone()).await.unwrap(), None);
    assert_eq!(s.idem_get("k").await.unwrap(), Some(second.clone()));

    // Past the ttl of the last sweep but not yet swept: treated as absent, replaced.
    let short = Retention { idempotency_ttl: Duration::from_millis(1), ..keep_all() };
    s.sweep(&short, now_ms() - 60_000).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(s.idem_get("k").await.unwrap(), None);
    let third = IdemRecord { request_hash: 3, status: 201, body: Bytes::new() };
    assert_eq!(s.idem_put("k", third).await.unwrap(), None);
}

#[tokio::test]
async fn epoch_is_kept_and_new_after_wipe() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let epoch = s.epoch().to_string();
    assert_eq!(epoch.len(), 8);
    assert!(epoch.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    s.close().await.unwrap();
    drop(s);
    assert_eq!(open(dir.path()).epoch(), epoch);
    std::fs::remove_dir_all(dir.path()).unwrap();
    let s = open(dir.path());
    assert_ne!(s.epoch(), epoch);
}

/// Group commits of appends only and groups that mix in cursor writes and reads (which must
/// see the group's own writes) leave the same store: every seq once and in order, the
/// highest cursor, exact counts and age entries, also after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_and_append_only_groups_agree() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(EmbeddedStore::open(opts(dir.path(), FsyncPolicy::Never)).unwrap());
    let old = now_ms() - 60_000;
    let mut tasks = Vec::new();
    for t in 0..24u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..30u64 {
                let user = format!("m{}", (t + i) % 4);
                let seq = s.append_user(vec![ev(&user, old, "x"), ev(&format!("solo{t}"), old, "y")]).await.unwrap();
                if t % 3 == 0 {
                    // Two writes of one cursor key, and a read, in what is often one group.
                    let (a, b) = tokio::join!(
                        s.set_cursor(&user, "phone", seq[0], 50),
                        s.set_cursor(&user, "phone", seq[0].saturating_sub(1), 50)
                    );
                    assert!(a.unwrap() >= seq[0] && b.unwrap() >= seq[0]);
                    assert!(s.cursor(&user, "phone").await.unwrap().unwrap() >= seq[0]);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let check = |s: Arc<EmbeddedStore>| async move {
        for u in 0..4 {
            let page = s.read_user(&format!("m{u}"), 0, 1000).await.unwrap();
            assert_eq!(seqs(&page), (1..=180).collect::<Vec<_>>(), "user m{u}");
            assert_eq!((page.head, page.first), (180, 1));
            let cursor = s.cursor(&format!("m{u}"), "phone").await.unwrap().unwrap();
            assert!(cursor <= 180 && cursor > 0, "cursor {cursor}");
        }
        for t in 0..24 {
            assert_eq!(s.read_user(&format!("solo{t}"), 0, 100).await.unwrap().head, 30);
        }
        let st = s.stats().await.unwrap();
        assert_eq!((st.stored_messages, st.streams, st.cursors), (4 * 180 + 24 * 30, 28, 4));
        assert!(st.oldest_age_ms.unwrap() >= 60_000);
    };
    check(s.clone()).await;
    Arc::try_unwrap(s).ok().unwrap().close().await.unwrap();
    let s = Arc::new(EmbeddedStore::open(opts(dir.path(), FsyncPolicy::Never)).unwrap());
    check(s.clone()).await;
    // Every stream got its age entry: a sweep by age empties them all.
    let retention = Retention { max_age: Duration::from_secs(30), ..keep_all() };
    while s.sweep(&retention, now_ms()).await.unwrap() > 0 {}
    let st = s.stats().await.unwrap();
    assert_eq!((st.stored_messages, st.streams, st.oldest_age_ms), (0, 0, None));
}

#[tokio::test]
async fn stats_count_messages_streams_age_and_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let st = s.stats().await.unwrap();
    assert_eq!((st.stored_messages, st.streams, st.oldest_age_ms, st.cursors), (0, 0, None, 0));
    let now = now_ms();
    s.append_user(vec![ev("a", now - 60_000, "x"), ev("a", now, "x"), ev("b", now, "x")]).await.unwrap();
    s.append_room(ev("lobby", now - 3_600_000, "r")).await.unwrap(); // rooms are not counted
    s.set_cursor("a", "c1", 1, 50).await.unwrap();
    let st = s.stats().await.unwrap();
    assert_eq!((st.stored_messages, st.streams, st.cursors), (3, 2, 1));
    let age = st.oldest_age_ms.unwrap();
    assert!((60_000..120_000).contains(&age), "age {age}");
    let retention = Retention { max_len: 1, ..keep_all() };
    assert_eq!(s.sweep(&retention, now).await.unwrap(), 1);
    let st = s.stats().await.unwrap();
    assert_eq!((st.stored_messages, st.streams), (2, 2));
    let retention = Retention { max_age: Duration::ZERO, ..keep_all() };
    s.sweep(&retention, now + 1).await.unwrap();
    let st = s.stats().await.unwrap();
    assert_eq!((st.stored_messages, st.streams, st.oldest_age_ms), (0, 0, None));
}

#[tokio::test]
async fn close_then_everything_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.append_user(vec![ev("a", now_ms(), "kept")]).await.unwrap();
    s.close().await.unwrap();
    assert!(matches!(s.append_user(vec![ev("a", now_ms(), "x")]).await, Err(StoreError::Closed)));
    assert!(matches!(s.append_room(ev("r", now_ms(), "x")).await, Err(StoreError::Closed)));
    assert!(matches!(s.set_cursor("a", "c", 1, 50).await, Err(StoreError::Closed)));
    assert!(matches!(s.read_user("a", 0, 10).await, Err(StoreError::Closed)));
    assert!(matches!(s.stats().await, Err(StoreError::Closed)));
    s.close().await.unwrap(); // idempotent
                              // The file is released: the store reopens while the closed handle still exists, and
                              // `FsyncPolicy::Never` writes were made durable by close.
    let again = open(dir.path());
    assert_eq!(seqs(&again.read_user("a", 0, 10).await.unwrap()), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_queued_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path()));
    let mut tasks = Vec::new();
    for t in 0..20 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move { s.append_user(vec![ev(&format!("u{t}"), now_ms(), "x")]).await }));
    }
    tokio::task::yield_now().await;
    s.close().await.unwrap();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert!(matches!(e, StoreError::Closed), "{e}"),
        }
    }
    let again = open(dir.path());
    assert_eq!(again.stats().await.unwrap().stored_messages, ok);
}

#[tokio::test]
async fn dropped_without_close_keeps_answered_appends() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(opts(dir.path(), FsyncPolicy::Always)).unwrap();
    for i in 0..50 {
        assert_eq!(s.append_user(vec![ev("a", now_ms(), "x")]).await.unwrap(), vec![i + 1]);
    }
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.read_user("a", 0, 100).await.unwrap().events.len(), 50);
}

#[test]
fn fsync_policy_reads_snake_case() {
    use serde::de::{value::Error, IntoDeserializer};
    use serde::Deserialize;
    let parse = |s: &str| FsyncPolicy::deserialize(IntoDeserializer::<Error>::into_deserializer(s));
    assert_eq!(parse("always").unwrap(), FsyncPolicy::Always);
    assert_eq!(parse("never").unwrap(), FsyncPolicy::Never);
    assert!(parse("sometimes").is_err());
}

const CRASH_CHILD_DIR: &str = "SYNCGATE_STORE_CRASH_CHILD_DIR";
const CRASH_CHILD_NEVER: &str = "SYNCGATE_STORE_CRASH_CHILD_FSYNC_NEVER";

/// Runs only as the child of `killed_process_keeps_answered_appends`: appends from several
/// tasks (with `FsyncPolicy::Always`, or `Never` if `CRASH_CHILD_NEVER` is set) and prints
/// every answered seq, until it is killed.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let fsync = if std::env::var_os(CRASH_CHILD_NEVER).is_some() { FsyncPolicy::Never } else { FsyncPolicy::Always };
        let s = Arc::new(EmbeddedStore::open(opts(Path::new(&dir), fsync)).unwrap());
        for t in 0..8 {
            let s = s.clone();
            tokio::spawn(async move {
                let user = format!("u{}", t % 4);
                loop {
                    let seq = s.append_user(vec![ev(&user, now_ms(), "x")]).await.unwrap()[0];
                    println!("ACK {user} {seq}");
                }
            });
        }
        tokio::time::sleep(Duration::from_secs(60)).await; // bounded if nobody kills it
    });
}

#[test]
fn killed_process_keeps_answered_appends() {
    kill_child_and_check(false);
}

/// With fsync never, the lsm engine still hands every commit's journal to the OS before
/// answering, so a killed process loses nothing answered (redb's non-durable commits are
/// lost to a crash of the process too, as documented for `FsyncPolicy::Never`).
#[test]
fn killed_process_keeps_answered_appends_with_fsync_never_on_lsm() {
    if ENGINE == super::Engine::Lsm {
        kill_child_and_check(true);
    }
}

fn kill_child_and_check(fsync_never: bool) {
    let dir = tempfile::tempdir().unwrap();
    let module = module_path!().split_once("::").map_or(module_path!(), |(_, m)| m);
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    if fsync_never {
        cmd.env(CRASH_CHILD_NEVER, "1");
    }
    let mut child = cmd
        .args([&format!("{module}::crash_child"), "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut count = 0;
    while count < 400 {
        let Some(line) = lines.next() else { break };
        if let Some((user, seq)) = line.unwrap().strip_prefix("ACK ").and_then(|l| l.split_once(' ')) {
            let seq: u64 = seq.parse().unwrap();
            let max = acked.entry(user.to_string()).or_default();
            *max = (*max).max(seq);
            count += 1;
        }
    }
    child.kill().unwrap(); // SIGKILL: no close, no drop, no flush
    child.wait().unwrap();
    for line in lines.map_while(Result::ok) {
        // Answers printed before the kill count too.
        if let Some((user, seq)) = line.strip_prefix("ACK ").and_then(|l| l.split_once(' ')) {
            let max = acked.entry(user.to_string()).or_default();
            *max = (*max).max(seq.parse().unwrap());
        }
    }
    assert!(count >= 400, "the child answered only {count} appends");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = open(dir.path());
        for (user, max) in &acked {
            let page = s.read_user(user, 0, 100_000).await.unwrap();
            assert!(page.head >= *max, "{user}: answered {max}, head {}", page.head);
            assert_eq!(seqs(&page), (1..=page.head).collect::<Vec<_>>(), "{user}: gap");
        }
    });
}

#[tokio::test]
async fn a_writer_panic_does_not_hang_callers() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert_eq!(s.append_user(vec![ev("a", now_ms(), "x")]).await.unwrap(), vec![1]);
    let limit = Duration::from_secs(10);
    let panicked = tokio::time::timeout(limit, s.write(super::writer::Req::Panic)).await.unwrap();
    assert!(matches!(panicked, Err(StoreError::Unavailable(_))), "{panicked:?}");
    let after = tokio::time::timeout(limit, s.append_user(vec![ev("a", now_ms(), "x")])).await.unwrap();
    assert!(matches!(after, Err(StoreError::Unavailable(_))), "{after:?}");
    assert!(s.read_user("a", 0, 10).await.is_ok()); // reads still work
}

#[tokio::test]
async fn a_data_dir_of_the_other_engine_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = if ENGINE == super::Engine::Lsm { super::Engine::Redb } else { super::Engine::Lsm };
    let s = EmbeddedStore::open(EmbeddedOptions { engine: other, ..opts(dir.path(), FsyncPolicy::Never) }).unwrap();
    s.append_user(vec![ev("a", now_ms(), "kept")]).await.unwrap();
    s.close().await.unwrap();
    drop(s);
    let e = EmbeddedStore::open(opts(dir.path(), FsyncPolicy::Never)).err().expect("refused");
    assert!(e.to_string().contains("store.engine"), "{e}");
    // Nothing was created beside the other engine's data, which still opens with its stream.
    let s = EmbeddedStore::open(EmbeddedOptions { engine: other, ..opts(dir.path(), FsyncPolicy::Never) }).unwrap();
    assert_eq!(seqs(&s.read_user("a", 0, 10).await.unwrap()), vec![1]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[tokio::test]
async fn auto_opens_the_engine_of_the_data_dir_and_lsm_for_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.append_user(vec![ev("a", now_ms(), "kept")]).await.unwrap();
    s.close().await.unwrap();
    drop(s);
    let auto = || EmbeddedOptions { engine: super::Engine::Auto, ..opts(dir.path(), FsyncPolicy::Never) };
    assert_eq!(super::Engine::Auto.resolve(dir.path()), ENGINE);
    let s = EmbeddedStore::open(auto()).unwrap();
    assert_eq!(seqs(&s.read_user("a", 0, 10).await.unwrap()), vec![1]);
    assert_eq!(s.append_user(vec![ev("a", now_ms(), "next")]).await.unwrap(), vec![2]);
    s.close().await.unwrap();
    drop(s);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no second store beside the first");
    // A new data dir gets lsm.
    let fresh = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(EmbeddedOptions { engine: super::Engine::Auto, ..opts(fresh.path(), FsyncPolicy::Never) })
        .unwrap();
    s.close().await.unwrap();
    drop(s);
    assert!(fresh.path().join(super::LSM_DIR_NAME).is_dir());
    assert!(!fresh.path().join(super::FILE_NAME).exists());
    // Both engines' data in one dir: auto refuses rather than guess.
    std::fs::write(fresh.path().join(super::FILE_NAME), b"").unwrap();
    let e = EmbeddedStore::open(EmbeddedOptions { engine: super::Engine::Auto, ..opts(fresh.path(), FsyncPolicy::Never) })
        .err()
        .expect("refused");
    assert!(e.to_string().contains("store.engine is auto"), "{e}");
}

#[tokio::test]
async fn memory_outside_the_cache_stays_bounded_while_writing_much_more() {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(opts(dir.path(), FsyncPolicy::Never)).unwrap();
    // 128 MiB of events over 64 streams, in batches of 64 events of 4 KiB. The bound is six
    // memtables: the writer waits for flushes while the write buffer is above five, and one
    // more holds the group let in last and the other keyspaces; with fjall's default memtable
    // (64 MiB) the events' active one alone would exceed it. Without the writer's wait the
    // bound was passed when the machine was busy: fjall rotates a full memtable when its
    // worker threads, busy flushing, get to it.
    let data = "x".repeat(4096);
    let (mut most, bound) = (0, super::lsm::WRITE_BUFFER_BYTES + super::lsm::MEMTABLE_BYTES);
    for round in 0..512 {
        let evs = (0..64).map(|i| ev(&format!("u{i}"), now_ms(), &data)).collect();
        s.append_user(evs).await.unwrap();
        most = most.max(s.memory().map_or(0, |m| m.1));
        assert!(most <= bound, "round {round}: {most} bytes of memtables, bound {bound}");
    }
    if ENGINE == super::Engine::Lsm {
        // The memtables did fill, and were flushed on the way: far below the 128 MiB written.
        assert!(most >= super::lsm::MEMTABLE_BYTES / 2, "{most}");
        let stats = s.stats().await.unwrap();
        assert!(stats.write_buffer_bytes.is_some_and(|b| b <= bound), "{stats:?}");
        assert!(stats.cache_bytes.is_some_and(|b| b <= 64 << 20), "{stats:?}");
    } else {
        assert_eq!(most, 0);
        assert!(s.stats().await.unwrap().write_buffer_bytes.is_none());
    }
    assert_eq!(s.read_user("u7", 0, 1000).await.unwrap().events.len(), 512);
}
