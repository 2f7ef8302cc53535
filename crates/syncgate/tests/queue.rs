//! The `Queue` conformance suite, run on each implementation: the embedded store (redb) and
//! Redis (a real `redis-server` on a free port, and a three-master Redis Cluster).

#[path = "redis_support/mod.rs"]
mod redis_support;

use std::sync::Arc;
use std::time::Duration;

use syncgate::queue::embedded::{EmbeddedQueue, EmbeddedQueueOptions};
use syncgate::queue::redis::RedisQueue;
use syncgate::queue::{now_ms, DeadFilter, JobKind, NewJob, Priority, Queue, QueueError};
use syncgate::store::embedded::FsyncPolicy;
use syncgate::store::redis::{RedisOptions, RedisStore};

const LEASE: Duration = Duration::from_secs(30);

fn job(endpoint: &str, n: u32) -> NewJob {
    NewJob::new(JobKind::Webhook, endpoint, format!(r#"{{"n":{n}}}"#))
}

async fn conformance(q: Arc<dyn Queue>, reopen: Option<Box<dyn Fn() -> Arc<dyn Queue>>>) {
    // Priorities: express before urgent before normal, and FIFO by due time within one.
    let n1 = q.enqueue(job("a", 1)).await.unwrap();
    let u1 = q.enqueue(job("a", 2).priority(Priority::Urgent)).await.unwrap();
    let e1 = q.enqueue(job("a", 3).priority(Priority::Express)).await.unwrap();
    let n2 = q.enqueue(job("a", 4)).await.unwrap();
    let later = q.enqueue(job("a", 5).not_before(now_ms() + 400)).await.unwrap();
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready.express, s.ready.urgent, s.ready.normal, s.delayed), (1, 1, 2, 1), "{s:?}");
    let got = q.claim(10, LEASE).await.unwrap();
    let ids: Vec<&str> = got.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, [e1.as_str(), u1.as_str(), n1.as_str(), n2.as_str()]);
    assert!(got.iter().all(|j| j.attempts == 1));
    assert_eq!(got[0].payload.as_ref(), br#"{"n":3}"#);
    assert_eq!(q.stats().await.unwrap().in_flight, 4);
    // Nothing else is due; the delayed job comes when its time has come.
    assert!(q.claim(10, LEASE).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(450)).await;
    let d = q.claim(10, LEASE).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].id, later);
    for j in got.iter().chain(&d) {
        q.complete(j).await.unwrap();
    }
    let s = q.stats().await.unwrap();
    assert_eq!((s.ready.total(), s.delayed, s.in_flight), (0, 0, 0), "{s:?}");

    // Reschedule: error recorded, attempts kept or refunded.
    let id = q.enqueue(job("b", 6)).await.unwrap();
    let j = q.claim(1, LEASE).await.unwrap().remove(0);
    q.reschedule(&j, now_ms(), Some("503 from endpoint"), false).await.unwrap();
    let j = q.claim(1, LEASE).await.unwrap().remove(0);
    assert_eq!((j.id.as_str(), j.attempts, j.last_error.as_deref()), (id.as_str(), 2, Some("503 from endpoint")));
    q.reschedule(&j, now_ms(), None, true).await.unwrap();
    let j = q.claim(1, LEASE).await.unwrap().remove(0);
    assert_eq!(j.attempts, 2, "the refunded attempt is not counted");

    // A lease that runs out makes the job due again, same id, one more attempt.
    let short = Duration::from_millis(200);
    q.reschedule(&j, now_ms(), None, true).await.unwrap();
    let j = q.claim(1, short).await.unwrap().remove(0);
    assert!(q.claim(1, short).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = q.claim(1, LEASE).await.unwrap().remove(0);
    assert_eq!((again.id.as_str(), again.attempts), (j.id.as_str(), j.attempts + 1));

    // Dead letters: listed newest first with error and attempts, paged, retried, deleted.
    q.bury(&again, "404 Not Found").await.unwrap();
    let mut dead_ids = vec![again.id.clone()];
    for n in 0..4 {
        q.enqueue(job(if n % 2 == 0 { "c" } else { "d" }, 10 + n)).await.unwrap();
        let j = q.claim(1, LEASE).await.unwrap().remove(0);
        tokio::time::sleep(Duration::from_millis(3)).await;
        q.bury(&j, &format!("failed {n}")).await.unwrap();
        dead_ids.push(j.id);
    }
    let s = q.stats().await.unwrap();
    assert_eq!((s.dead, s.in_flight, s.ready.total()), (5, 0, 0), "{s:?}");
    let p1 = q.dead(2, None).await.unwrap();
    assert_eq!(p1.jobs.len(), 2);
    assert_eq!(p1.jobs[0].job.id, dead_ids[4]);
    assert_eq!(p1.jobs[0].job.last_error.as_deref(), Some("failed 3"));
    assert_eq!(p1.jobs[0].job.attempts, 1);
    assert_eq!(p1.jobs[0].job.payload.as_ref(), br#"{"n":13}"#);
    let p2 = q.dead(2, p1.next_cursor.as_deref()).await.unwrap();
    let p3 = q.dead(2, p2.next_cursor.as_deref()).await.unwrap();
    let all: Vec<String> = [p1.jobs, p2.jobs, p3.jobs].concat().into_iter().map(|d| d.job.id).collect();
    assert_eq!(all, dead_ids.iter().rev().cloned().collect::<Vec<_>>());
    assert!(p3.next_cursor.is_none());
    assert!(matches!(q.dead(2, Some("nonsense")).await, Err(QueueError::BadCursor)));

    assert!(q.retry_dead(&dead_ids[0]).await.unwrap());
    assert!(!q.retry_dead(&dead_ids[0]).await.unwrap());
    let j = q.claim(1, LEASE).await.unwrap().remove(0);
    assert_eq!((j.id.as_str(), j.attempts), (dead_ids[0].as_str(), 1), "fresh attempts, same id");
    q.complete(&j).await.unwrap();
    let filter = DeadFilter { endpoint: Some("c".into()), ..Default::default() };
    assert_eq!(q.retry_dead_all(&filter).await.unwrap(), 2);
    assert!(q.delete_dead(&dead_ids[2]).await.unwrap());
    assert!(!q.delete_dead(&dead_ids[2]).await.unwrap());
    let s = q.stats().await.unwrap();
    assert_eq!((s.dead, s.ready.normal), (1, 2), "{s:?}");
    assert!(s.oldest_age_ms >= 0);

    // Bounded: past max_jobs (10 in these tests) an enqueue is refused.
    let mut n = 2;
    while n < 10 {
        q.enqueue(job("e", 100 + n)).await.unwrap();
        n += 1;
    }
    assert!(matches!(q.enqueue(job("e", 999)).await, Err(QueueError::Full { max: 10 })));

    // Durable: jobs, leases and dead letters survive a reopen.
    if let Some(reopen) = reopen {
        let claimed = q.claim(1, short).await.unwrap().remove(0);
        drop(q);
        let q = reopen();
        let s = q.stats().await.unwrap();
        assert_eq!((s.ready.normal + s.in_flight, s.dead), (10, 1), "{s:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let all = q.claim(20, LEASE).await.unwrap();
        assert_eq!(all.len(), 10);
        assert!(all.iter().any(|j| j.id == claimed.id && j.attempts == 2));
    }
}

#[tokio::test]
async fn embedded_queue_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let opts = EmbeddedQueueOptions { max_jobs: 10, max_dead: 100, fsync: FsyncPolicy::Always };
    let q: Arc<dyn Queue> = Arc::new(EmbeddedQueue::open(&path, opts.clone()).unwrap());
    let reopen = Box::new(move || {
        // The writer thread of the dropped queue lets go of the file shortly after.
        for _ in 0..100 {
            if let Ok(q) = EmbeddedQueue::open(&path, opts.clone()) {
                return Arc::new(q) as Arc<dyn Queue>;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("queue did not reopen");
    });
    conformance(q, Some(reopen)).await;
}

#[tokio::test]
async fn embedded_dead_letters_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let q =
        EmbeddedQueue::open(dir.path(), EmbeddedQueueOptions { max_jobs: 100, max_dead: 3, fsync: FsyncPolicy::Never })
            .unwrap();
    dead_bounded(&q).await;
}

async fn dead_bounded(q: &dyn Queue) {
    let mut ids = Vec::new();
    for n in 0..5 {
        q.enqueue(job("x", n)).await.unwrap();
        let j = q.claim(1, LEASE).await.unwrap();
        assert_eq!(j.len(), 1, "{n}: {:?}", q.stats().await);
        let j = j.into_iter().next().unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
        q.bury(&j, "gone").await.unwrap();
        ids.push(j.id);
    }
    let page = q.dead(10, None).await.unwrap();
    let kept: Vec<String> = page.jobs.into_iter().map(|d| d.job.id).collect();
    assert_eq!(kept, vec![ids[4].clone(), ids[3].clone(), ids[2].clone()], "the oldest are dropped");
    assert_eq!(q.stats().await.unwrap().dead, 3);
}

async fn redis_queue(url: &str, prefix: &str, max_jobs: u64, max_dead: u64) -> RedisQueue {
    let store =
        RedisStore::connect(RedisOptions { key_prefix: prefix.into(), ..RedisOptions::new(url) }).await.unwrap();
    RedisQueue::new(store.connection(), prefix, max_jobs, max_dead)
}

#[tokio::test]
async fn redis_queue_conforms() {
    let server = redis_support::RedisServer::start();
    let q: Arc<dyn Queue> = Arc::new(redis_queue(&server.url(), "t1", 10, 100).await);
    conformance(q, None).await;
    dead_bounded(&redis_queue(&server.url(), "t2", 100, 3).await).await;
}

#[tokio::test]
async fn redis_cluster_queue_conforms() {
    let cluster = redis_support::RedisCluster::start();
    let q: Arc<dyn Queue> = Arc::new(redis_queue(&cluster.url(), "t1", 10, 100).await);
    conformance(q, None).await;
}
