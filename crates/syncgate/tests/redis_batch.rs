//! Batch appends on a standalone Redis, where one script takes up to 128 streams and
//! several pipelines are in flight: every stream still gets consecutive numbers in input
//! order, a stream that appears several times in one batch too, and a stream whose head key
//! was lost (evicted, deleted) is never numbered below what it already gave out.

mod redis_support;

use std::time::Duration;

use bytes::Bytes;
use redis_support::RedisServer;
use syncgate::store::redis::{RedisOptions, RedisStore};
use syncgate::store::{NewEvent, Store};

fn ev(stream: &str, data: &str) -> NewEvent {
    NewEvent { stream: stream.into(), kind: "t".into(), data: Bytes::from(data.to_string()), ts: 1, ttl: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_batches_number_every_stream_and_survive_a_lost_head_key() {
    let server = RedisServer::start();
    let opts = RedisOptions { op_timeout: Duration::from_secs(10), ..RedisOptions::new(server.url()) };
    let s = RedisStore::connect(opts).await.unwrap();
    // 3,000 streams (24 scripts of 128, in 2 pipelines); "dup" three times among them.
    let mut batch: Vec<NewEvent> = (0..3000).map(|i| ev(&format!("u{i}"), "a")).collect();
    for at in [0, 1500, 2999] {
        batch.insert(at, ev("dup", &format!("d{at}")));
    }
    let seqs = s.append_user(batch.clone()).await.unwrap();
    for (e, seq) in batch.iter().zip(&seqs) {
        if e.stream != "dup" {
            assert_eq!(*seq, 1, "{}", e.stream);
        }
    }
    let dups: Vec<u64> = batch.iter().zip(&seqs).filter(|(e, _)| e.stream == "dup").map(|(_, s)| *s).collect();
    assert_eq!(dups, vec![1, 2, 3]);
    let page = s.read_user("dup", 0, 10).await.unwrap();
    let data: Vec<&[u8]> = page.events.iter().map(|e| e.data.as_ref()).collect();
    assert_eq!(data, [&b"d0"[..], b"d1500", b"d2999"]);
    // Second batch: numbering goes on in every stream.
    let again = s.append_user((0..3000).map(|i| ev(&format!("u{i}"), "b")).collect()).await.unwrap();
    assert!(again.iter().all(|&seq| seq == 2));
    assert_eq!(s.read_user("u2999", 0, 10).await.unwrap().head, 2);

    // The head key of "dup" is lost; its stream is trimmed to empty but remembers its last id.
    server.cli(&["DEL", "sg:{u:dup}:h"]);
    server.cli(&["XTRIM", "sg:{u:dup}:s", "MAXLEN", "0"]);
    let next = s.append_user(vec![ev("dup", "x"), ev("u0", "c")]).await.unwrap();
    assert_eq!(next, vec![4, 3]);
    assert_eq!(s.read_user("dup", 0, 10).await.unwrap().head, 4);
}
