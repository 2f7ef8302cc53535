//! The Redis store against real `redis-server` processes: the behavioural checks of the
//! embedded store's tests (numbering, paging, retention, cursors, idempotency, epoch, stats)
//! on a standalone server and on a three-master Redis Cluster, plus what only a networked
//! store has: an outage (kill -9, restart on the same port) and URL credentials.
//!
//! Each standalone test starts its own server; the cluster test runs every check on one
//! cluster, each with its own key prefix.

mod redis_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis_support::{RedisCluster, RedisServer, ServerOpts};
use syncgate::store::redis::{RedisMode, RedisOptions, RedisStore};
use syncgate::store::{IdemRecord, NewEvent, Page, Retention, Store, StoreError};

const DAY: Duration = Duration::from_secs(24 * 3600);
const DAY_MS: i64 = 24 * 3600 * 1000;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn options(url: &str, prefix: &str) -> RedisOptions {
    RedisOptions {
        key_prefix: prefix.to_string(),
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(2),
        op_timeout: Duration::from_secs(3),
        ..RedisOptions::new(url)
    }
}

async fn open(url: &str, prefix: &str) -> RedisStore {
    RedisStore::connect(options(url, prefix)).await.expect("connect the redis store")
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

fn seqs(page: &Page) -> Vec<u64> {
    page.events.iter().map(|e| e.seq).collect()
}

async fn redis_cmd<T: redis::FromRedisValue>(store: &RedisStore, cmd: &mut redis::Cmd) -> T {
    let mut conn = store.connection();
    cmd.query_async(&mut conn).await.expect("raw redis command")
}

// ---------------------------------------------------------------------------------------------
// The checks, each on its own key prefix.

async fn seqs_are_consecutive_across_batches_and_reopen(url: &str, prefix: &str) {
    let now = now_ms();
    {
        let s = open(url, prefix).await;
        assert_eq!(s.append_user(vec![ev("a", now, "1")]).await.unwrap(), vec![1]);
        // Several events to one stream in one call, interleaved with another stream.
        let got = s.append_user(vec![ev("a", now, "2"), ev("b", now, "x"), ev("a", now, "3")]).await.unwrap();
        assert_eq!(got, vec![2, 1, 3]);
        assert_eq!(s.append_user(vec![]).await.unwrap(), Vec::<u64>::new());
        s.close().await.unwrap();
    }
    let s = open(url, prefix).await;
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
    // Binary data, odd names (hash-tag braces, spaces, unicode) survive the round trip.
    let name = "we{ir}d }name ü";
    let mut odd = ev(name, now, "");
    odd.data = Bytes::from_static(b"\x00\xff{\"a\":1}\r\n");
    assert_eq!(s.append_user(vec![odd]).await.unwrap(), vec![1]);
    let page = s.read_user(name, 0, 10).await.unwrap();
    assert_eq!(page.events[0].data, Bytes::from_static(b"\x00\xff{\"a\":1}\r\n"));
}

async fn concurrent_appends_get_distinct_consecutive_seqs(url: &str, prefix: &str) {
    let s = Arc::new(open(url, prefix).await);
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
            let (t, i) = data.split_once(':').unwrap();
            let i: u64 = i.parse().unwrap();
            if let Some(prev) = last_i.insert(t.to_string(), i) {
                assert!(prev < i);
            }
        }
    }
    // A batch to many users at once: each stream numbered on its own, in input order.
    let batch: Vec<NewEvent> = (0..300).map(|i| ev(&format!("many{}", i % 100), now_ms(), "b")).collect();
    let got = s.append_user(batch).await.unwrap();
    assert_eq!(got, (0..300).map(|i| i / 100 + 1).collect::<Vec<u64>>());
}

async fn paging_with_after_and_limit(url: &str, prefix: &str) {
    let s = open(url, prefix).await;
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
    assert!(s.read_user("u", u64::MAX - 1, 10).await.unwrap().events.is_empty());
}

async fn trimming_by_len_and_age_keeps_head(url: &str, prefix: &str) {
    let s = open(url, prefix).await;
    let now = now_ms();
    let old = now - 10 * DAY_MS;
    s.append_user((0..10).map(|_| ev("len", now, "x")).collect()).await.unwrap();
    s.append_user((0..3).map(|_| ev("age", old, "old")).collect()).await.unwrap();
    s.append_user((0..2).map(|_| ev("age", now, "new")).collect()).await.unwrap();
    let retention = Retention { max_len: 4, max_age: DAY * 7, ..keep_all() };
    assert_eq!(s.sweep(&retention, now).await.unwrap(), 6 + 3);

    let page = s.read_user("len", 0, 100).await.unwrap();
    assert_eq!((seqs(&page), page.head, page.first), (vec![7, 8, 9, 10], 10, 7));
    let page = s.read_user("age", 0, 100).await.unwrap();
    assert_eq!((seqs(&page), page.head, page.first), (vec![4, 5], 5, 4));

    // Trimmed to empty: head stays, first is head + 1, numbering goes on.
    let later = now + 8 * DAY_MS;
    assert_eq!(s.sweep(&retention, later).await.unwrap(), 6);
    let page = s.read_user("age", 0, 100).await.unwrap();
    assert_eq!((page.events.len(), page.head, page.first), (0, 5, 6));
    assert_eq!(s.append_user(vec![ev("age", later, "again")]).await.unwrap(), vec![6]);

    // Appends apply the length limit of the last sweep at once.
    s.append_user((0..6).map(|_| ev("len", later, "y")).collect()).await.unwrap();
    let page = s.read_user("len", 0, 100).await.unwrap();
    assert_eq!((seqs(&page), page.head, page.first), (vec![13, 14, 15, 16], 16, 13));

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

async fn sweep_works_in_chunks_on_long_streams(url: &str, prefix: &str) {
    let s = open(url, prefix).await;
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

async fn per_event_ttl(url: &str, prefix: &str) {
    let s = open(url, prefix).await;
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
    // Rooms honour a ttl the same way.
    let mut r = ev("hall", now - 5000, "brief");
    r.ttl = Some(Duration::from_secs(1));
    s.append_room(r).await.unwrap();
    s.append_room(ev("hall", now, "stays")).await.unwrap();
    assert_eq!(s.sweep(&keep_all(), now).await.unwrap(), 1);
    let page = s.read_room("hall", 0, 10).await.unwrap();
    assert_eq!((seqs(&page), page.first, page.head), (vec![2], 2, 2));
}

async fn cursors_never_go_backwards_and_persist(url: &str, prefix: &str) {
    {
        let s = open(url, prefix).await;
        assert_eq!(s.cursor("u", "phone").await.unwrap(), None);
        assert_eq!(s.set_cursor("u", "phone", 5, 50).await.unwrap(), 5);
        assert_eq!(s.set_cursor("u", "phone", 3, 50).await.unwrap(), 5);
        assert_eq!(s.set_cursor("u", "phone", 9, 50).await.unwrap(), 9);
        assert_eq!(s.set_cursor("u", "laptop", 0, 50).await.unwrap(), 0);
        assert_eq!(s.cursor("u", "phone").await.unwrap(), Some(9));
        assert_eq!(s.cursor("u", "laptop").await.unwrap(), Some(0));
        assert_eq!(s.cursor("v", "phone").await.unwrap(), None);
        // Exact for seqs beyond what a double holds (Lua numbers are doubles).
        let big = u64::MAX - 1;
        assert_eq!(s.set_cursor("w", "c", big, 50).await.unwrap(), big);
        assert_eq!(s.set_cursor("w", "c", big - 1, 50).await.unwrap(), big);
        assert_eq!(s.set_cursor("w", "c", u64::MAX, 50).await.unwrap(), u64::MAX);
        s.close().await.unwrap();
    }
    let s = open(url, prefix).await;
    assert_eq!(s.cursor("u", "phone").await.unwrap(), Some(9));
    assert_eq!(s.stats().await.unwrap().cursors, 3);
    // Unused for longer than cursor_ttl: forgotten.
    let retention = Retention { cursor_ttl: DAY * 30, ..keep_all() };
    s.sweep(&retention, now_ms() + DAY_MS).await.unwrap();
    assert_eq!(s.stats().await.unwrap().cursors, 3);
    s.sweep(&retention, now_ms() + 31 * DAY_MS).await.unwrap();
    assert_eq!(s.cursor("u", "phone").await.unwrap(), None);
    assert_eq!(s.stats().await.unwrap().cursors, 0);
    // A cursor created after its user's were all forgotten is indexed again.
    s.set_cursor("u", "tablet", 2, 50).await.unwrap();
    s.sweep(&retention, now_ms() + 31 * DAY_MS).await.unwrap();
    assert_eq!(s.cursor("u", "tablet").await.unwrap(), None);
}

async fn cursor_read_touches_last_used(url: &str, prefix: &str) {
    let s = open(url, prefix).await;
    s.set_cursor("u", "c", 1, 50).await.unwrap();
    // Pretend the cursor was last used 10 days ago.
    let key = format!("{prefix}:{{u:u}}:c");
    let old = format!("1:{}", now_ms() - 10 * DAY_MS);
    redis_cmd::<()>(&s, redis::cmd("HSET").arg(&key).arg("c").arg(old)).await;
    assert_eq!(s.cursor("u", "c").await.unwrap(), Some(1)); // touches it
    let retention = Retention { cursor_ttl: DAY * 5, ..keep_all() };
    s.sweep(&retention, now_ms()).await.unwrap();
    assert_eq!(s.cursor("u", "c").await.unwrap(), Some(1));
}

async fn idempotency_claims_hold_a_key_until_answered_released_or_expired(url: &str, prefix: &str) {
    let s = Arc::new(open(url, prefix).await);
    let lease = Duration::from_secs(30);
    // Concurrent claims of one key: exactly one wins, the others see its claim.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move { s.idem_claim("c", 9, lease).await.unwrap() }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            None => won += 1,
            Some(held) => assert_eq!((held.request_hash, held.status), (9, 0), "in flight"),
        }
    }
    assert_eq!(won, 1, "one claim wins");
    let answer = IdemRecord { request_hash: 9, status: 202, body: Bytes::from_static(b"{\"id\":\"e.1\"}") };
    assert_eq!(s.idem_put("c", answer.clone()).await.unwrap(), None, "the answer replaces the claim");
    assert_eq!(s.idem_claim("c", 9, lease).await.unwrap(), Some(answer.clone()));
    s.idem_release("c").await.unwrap();
    assert_eq!(s.idem_get("c").await.unwrap(), Some(answer), "release keeps an answer");
    // Released: free at once; abandoned: free after the lease.
    assert_eq!(s.idem_claim("f", 1, lease).await.unwrap(), None);
    s.idem_release("f").await.unwrap();
    assert_eq!(s.idem_claim("f", 1, Duration::from_millis(200)).await.unwrap(), None);
    assert!(s.idem_claim("f", 1, lease).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.idem_claim("f", 1, lease).await.unwrap(), None, "the lease expired");
}

async fn idempotency_first_writer_wins_and_expires(url: &str, prefix: &str) {
    let s = open(url, prefix).await;
    let first = IdemRecord { request_hash: u64::MAX, status: 202, body: Bytes::from_static(b"{\"id\":\"e.1\"}") };
    let second = IdemRecord { request_hash: 7, status: 200, body: Bytes::from_static(b"{}") };
    assert_eq!(s.idem_get("k").await.unwrap(), None);
    assert_eq!(s.idem_put("k", first.clone()).await.unwrap(), None);
    assert_eq!(s.idem_put("k", second.clone()).await.unwrap(), Some(first.clone()));
    assert_eq!(s.idem_get("k").await.unwrap(), Some(first.clone()));
    assert_eq!(s.idem_put("other", second.clone()).await.unwrap(), None);
    let empty = IdemRecord { request_hash: 1, status: 204, body: Bytes::new() };
    assert_eq!(s.idem_put("empty", empty.clone()).await.unwrap(), None);
    assert_eq!(s.idem_get("empty").await.unwrap(), Some(empty));

    // Concurrent writers of one key: exactly one wins, everyone sees its record.
    let s = Arc::new(s);
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let s = s.clone();
        let rec = IdemRecord { request_hash: i, status: 202, body: Bytes::from(i.to_string()) };
        tasks.push(tokio::spawn(async move { (rec.clone(), s.idem_put("race", rec).await.unwrap()) }));
    }
    let mut winners = Vec::new();
    let mut seen = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (mine, None) => winners.push(mine),
            (_, Some(theirs)) => seen.push(theirs),
        }
    }
    assert_eq!(winners.len(), 1);
    assert!(seen.iter().all(|r| *r == winners[0]));

    // The ttl of the last sweep applies: an older record is absent and may be replaced; Redis
    // also drops the key by itself.
    let short = Retention { idempotency_ttl: Duration::from_millis(500), ..keep_all() };
    s.sweep(&short, now_ms()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(s.idem_get("k").await.unwrap(), None, "older than the new ttl");
    assert_eq!(s.idem_put("k", second.clone()).await.unwrap(), None);
    assert_eq!(s.idem_get("k").await.unwrap(), Some(second.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(s.idem_get("k").await.unwrap(), None);
    let exists: i64 = redis_cmd(&s, redis::cmd("EXISTS").arg(format!("{prefix}:idem:k"))).await;
    assert_eq!(exists, 0, "the record expires in Redis too");
}

async fn stats_count_messages_streams_age_and_cursors(url: &str, prefix: &str) {
    let s = open(url, prefix).await;
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
    assert!(st.oldest_age_ms.unwrap() < 60_000, "the sweep re-scored the trimmed stream");
    // Counters are shared: another node's store sees them.
    let other = open(url, prefix).await;
    assert_eq!(other.stats().await.unwrap().stored_messages, 2);
    let retention = Retention { max_age: Duration::ZERO, ..keep_all() };
    s.sweep(&retention, now + 1).await.unwrap();
    let st = s.stats().await.unwrap();
    assert_eq!((st.stored_messages, st.streams, st.oldest_age_ms), (0, 0, None));
}

async fn close_then_everything_is_closed(url: &str, prefix: &str) {
    let s = open(url, prefix).await;
    s.append_user(vec![ev("a", now_ms(), "kept")]).await.unwrap();
    s.close().await.unwrap();
    assert!(matches!(s.append_user(vec![ev("a", now_ms(), "x")]).await, Err(StoreError::Closed)));
    assert!(matches!(s.append_room(ev("r", now_ms(), "x")).await, Err(StoreError::Closed)));
    assert!(matches!(s.set_cursor("a", "c", 1, 50).await, Err(StoreError::Closed)));
    assert!(matches!(s.read_user("a", 0, 10).await, Err(StoreError::Closed)));
    assert!(matches!(s.stats().await, Err(StoreError::Closed)));
    s.close().await.unwrap(); // idempotent
    let again = open(url, prefix).await;
    assert_eq!(seqs(&again.read_user("a", 0, 10).await.unwrap()), vec![1]);
}

/// Last: it wipes the whole server.
async fn epoch_is_kept_and_new_after_wipe(url: &str, prefix: &str) {
    let s = open(url, prefix).await;
    let epoch = s.epoch().to_string();
    assert_eq!(epoch.len(), 8);
    assert!(epoch.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(open(url, prefix).await.epoch(), epoch);
    assert_ne!(open(url, &format!("{prefix}-other")).await.epoch(), epoch, "each prefix has its own");
    s.append_user(vec![ev("a", now_ms(), "x")]).await.unwrap();
    redis_cmd::<()>(&s, &mut redis::cmd("FLUSHALL")).await;
    // A node that keeps running on a wiped Redis refuses to go on numbering from 1 under
    // the old epoch: its next sweep notices, and it is unavailable until restarted.
    assert!(matches!(s.sweep(&keep_all(), now_ms()).await, Err(StoreError::Unavailable(_))));
    assert!(matches!(s.append_user(vec![ev("a", now_ms(), "x")]).await, Err(StoreError::Unavailable(_))));
    let fresh = open(url, prefix).await;
    assert_ne!(fresh.epoch(), epoch);
    assert_eq!(fresh.append_user(vec![ev("a", now_ms(), "x")]).await.unwrap(), vec![1]);
}

// ---------------------------------------------------------------------------------------------
// Standalone: one server per test.

macro_rules! standalone {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let server = RedisServer::start();
            super::$name(&server.url(), "sg").await;
        }
    )*};
}

mod standalone {
    use super::*;
    standalone!(
        seqs_are_consecutive_across_batches_and_reopen,
        concurrent_appends_get_distinct_consecutive_seqs,
        paging_with_after_and_limit,
        trimming_by_len_and_age_keeps_head,
        sweep_works_in_chunks_on_long_streams,
        per_event_ttl,
        cursors_never_go_backwards_and_persist,
        cursor_read_touches_last_used,
        idempotency_first_writer_wins_and_expires,
        idempotency_claims_hold_a_key_until_answered_released_or_expired,
        stats_count_messages_streams_age_and_cursors,
        close_then_everything_is_closed,
        epoch_is_kept_and_new_after_wipe,
    );
}

// ---------------------------------------------------------------------------------------------
// Cluster: the same checks on one three-master cluster.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_passes_the_same_checks() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let s = open(&url, "probe").await;
    assert!(s.is_cluster(), "detected from INFO cluster");
    // One seed is enough: the client learns the others from the cluster.
    let one = open(&cluster.nodes[1].url(), "probe").await;
    assert!(one.is_cluster());
    assert_eq!(one.epoch(), s.epoch());
    let p = |n: &str| format!("c-{n}");
    seqs_are_consecutive_across_batches_and_reopen(&url, &p("seqs")).await;
    concurrent_appends_get_distinct_consecutive_seqs(&url, &p("conc")).await;
    paging_with_after_and_limit(&url, &p("page")).await;
    trimming_by_len_and_age_keeps_head(&url, &p("trim")).await;
    sweep_works_in_chunks_on_long_streams(&url, &p("chunks")).await;
    per_event_ttl(&url, &p("ttl")).await;
    cursors_never_go_backwards_and_persist(&url, &p("cursors")).await;
    cursor_read_touches_last_used(&url, &p("touch")).await;
    idempotency_first_writer_wins_and_expires(&url, &p("idem")).await;
    idempotency_claims_hold_a_key_until_answered_released_or_expired(&url, &p("claim")).await;
    stats_count_messages_streams_age_and_cursors(&url, &p("stats")).await;
    close_then_everything_is_closed(&url, &p("close")).await;
    // The data really is spread: every master holds keys.
    for node in &cluster.nodes {
        let keys: u64 = node.cli(&["DBSIZE"]).trim().parse().unwrap();
        assert!(keys > 0, "node {} holds no key", node.port);
    }
    epoch_is_kept_and_new_after_wipe(&url, &p("epoch")).await;
}

// ---------------------------------------------------------------------------------------------
// What only a networked store has.

/// kill -9 of Redis: calls fail with `Unavailable` within the time limit instead of hanging;
/// after a restart on the same port (AOF, appendfsync always) the store works again and
/// everything it had answered is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_unavailable_then_recovers_with_answered_data() {
    let mut server = RedisServer::start_with(ServerOpts { appendonly: true, ..Default::default() });
    let s = open(&server.url(), "sg").await;
    let epoch = s.epoch().to_string();
    for i in 1..=20 {
        assert_eq!(s.append_user(vec![ev("a", now_ms(), "x")]).await.unwrap(), vec![i]);
    }
    s.set_cursor("a", "phone", 7, 50).await.unwrap();
    server.kill();
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), s.append_user(vec![ev("a", now_ms(), "x")])).await;
    assert!(matches!(r, Ok(Err(StoreError::Unavailable(_)))), "{r:?}");
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_user("a", 0, 10)).await;
    assert!(matches!(r, Ok(Err(StoreError::Unavailable(_)))), "{r:?}");
    assert!(matches!(s.health().await, Err(StoreError::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_secs(10));
    server.restart();
    // The connection comes back by itself (the first call may still see the old socket fail).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let seq = loop {
        match s.append_user(vec![ev("a", now_ms(), "after")]).await {
            Ok(v) => break v[0],
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "store did not recover: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(seq, 21, "numbering goes on after the restart");
    let page = s.read_user("a", 0, 100).await.unwrap();
    assert_eq!(seqs(&page), (1..=21).collect::<Vec<_>>());
    assert_eq!(s.cursor("a", "phone").await.unwrap(), Some(7));
    assert!(s.health().await.is_ok());
    assert_eq!(open(&server.url(), "sg").await.epoch(), epoch);
    s.sweep(&keep_all(), now_ms()).await.unwrap(); // the epoch key survived too
}

#[tokio::test]
async fn redis_down_at_start_is_unavailable() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let r = tokio::time::timeout(Duration::from_secs(10), RedisStore::connect(options(&url, "sg"))).await;
    assert!(matches!(r, Ok(Err(StoreError::Unavailable(_)))), "{:?}", r.map(|r| r.map(|_| ())));
}

#[tokio::test]
async fn url_credentials_apply() {
    let server = RedisServer::start_with(ServerOpts { password: Some("s3cret".into()), ..Default::default() });
    let s = open(&server.url(), "sg").await; // redis://:s3cret@127.0.0.1:PORT
    assert_eq!(s.append_user(vec![ev("a", now_ms(), "x")]).await.unwrap(), vec![1]);
    let wrong = format!("redis://:nope@127.0.0.1:{}", server.port);
    let r = RedisStore::connect(RedisOptions { mode: RedisMode::Standalone, ..options(&wrong, "sg") }).await;
    assert!(r.is_err());
    let none = format!("redis://127.0.0.1:{}", server.port);
    assert!(RedisStore::connect(RedisOptions { mode: RedisMode::Standalone, ..options(&none, "sg") }).await.is_err());
}

/// `rediss://` URLs connect over TLS (rustls), credentials included.
#[tokio::test]
async fn tls_urls_work() {
    let server =
        RedisServer::start_with(ServerOpts { tls: true, password: Some("s3cret".into()), ..Default::default() });
    assert!(server.url().starts_with("rediss://:s3cret@"));
    let s = open(&server.url(), "sg").await;
    assert_eq!(s.append_user(vec![ev("a", now_ms(), "over tls")]).await.unwrap(), vec![1]);
    assert_eq!(s.read_user("a", 0, 10).await.unwrap().events[0].data, Bytes::from_static(b"over tls"));
    assert!(server.cli(&["PING"]).contains("PONG"));
    // The plain protocol is refused by a TLS port.
    let plain = format!("redis://:s3cret@127.0.0.1:{}", server.port);
    assert!(RedisStore::connect(options(&plain, "sg")).await.is_err());
}
