//! The `Queue` conformance suite, run on each implementation: the embedded store (redb) and
//! Redis (a real `redis-server` on a free port, and a three-master Redis Cluster).

mod common;
#[path = "redis_support/mod.rs"]
mod redis_support;

use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use reqwest::Method;
use syncgate::queue::embedded::{EmbeddedQueue, EmbeddedQueueOptions};
use syncgate::queue::redis::RedisQueue;
use syncgate::queue::{now_ms, DeadFilter, DeadJob, Job, JobKind, NewJob, Priority, Queue, QueueError};
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

/// A retry refused because the queue is full (max_jobs 2) changes nothing: the dead letter
/// stays, as it was. Retry all queues as many as fit, oldest failure first.
async fn retry_when_full(q: &dyn Queue) {
    let mut dead_ids = Vec::new();
    for n in 0..3 {
        q.enqueue(job("z", 200 + n)).await.unwrap();
        let j = q.claim(1, LEASE).await.unwrap().remove(0);
        tokio::time::sleep(Duration::from_millis(3)).await;
        q.bury(&j, &format!("HTTP 41{n}")).await.unwrap();
        dead_ids.push(j.id);
    }
    let filler = [q.enqueue(job("f", 1)).await.unwrap(), q.enqueue(job("f", 2)).await.unwrap()];
    assert!(matches!(q.enqueue(job("f", 3)).await, Err(QueueError::Full { max: 2 })));
    let before = dead_and_live(q).await;
    assert_eq!((before.0.len(), before.1), (3, 2));

    assert!(matches!(q.retry_dead(&dead_ids[0]).await, Err(QueueError::Full { max: 2 })));
    assert_eq!(dead_and_live(q).await, before, "a refused retry changes nothing");
    assert!(!q.retry_dead("job_nope").await.unwrap(), "an unknown id is still not found");
    assert!(matches!(q.retry_dead_all(&DeadFilter::default()).await, Err(QueueError::Full { max: 2 })));
    assert_eq!(dead_and_live(q).await, before, "a refused retry all changes nothing");
    let none = DeadFilter { endpoint: Some("nobody".into()), ..Default::default() };
    assert_eq!(q.retry_dead_all(&none).await.unwrap(), 0, "nothing matches: nothing to refuse");

    // Room for one: retry all takes the oldest failure, the others stay as they were.
    let done = |id: &str| Job { id: id.to_string(), ..job("f", 0).into_job(0) };
    q.complete(&done(&filler[0])).await.unwrap();
    assert_eq!(q.retry_dead_all(&DeadFilter::default()).await.unwrap(), 1);
    let left: Vec<DeadJob> = q.dead(10, None).await.unwrap().jobs;
    assert_eq!(left, before.0[..2].to_vec(), "the two newest failures are still dead letters");
    assert!(matches!(q.retry_dead(&dead_ids[1]).await, Err(QueueError::Full { max: 2 })));
    assert_eq!(q.dead(10, None).await.unwrap().jobs, left);

    // Room again: the retry works, fresh attempts, same id.
    q.complete(&done(&filler[1])).await.unwrap();
    assert!(q.retry_dead(&dead_ids[1]).await.unwrap());
    let got = q.claim(10, LEASE).await.unwrap();
    let mut ids: Vec<&str> = got.iter().map(|j| j.id.as_str()).collect();
    ids.sort();
    let mut want = [dead_ids[0].as_str(), dead_ids[1].as_str()];
    want.sort();
    assert_eq!(ids, want);
    assert!(got.iter().all(|j| j.attempts == 1));
    let s = q.stats().await.unwrap();
    assert_eq!((s.dead, s.in_flight), (1, 2), "{s:?}");
}

/// The dead letters, newest failure first, and the number of live jobs.
async fn dead_and_live(q: &dyn Queue) -> (Vec<DeadJob>, u64) {
    let s = q.stats().await.unwrap();
    (q.dead(10, None).await.unwrap().jobs, s.ready.total() + s.delayed + s.in_flight)
}

#[tokio::test]
async fn embedded_retry_when_full_keeps_the_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedQueueOptions { max_jobs: 2, max_dead: 100, fsync: FsyncPolicy::Never };
    retry_when_full(&EmbeddedQueue::open(dir.path(), opts).unwrap()).await;
}

/// Over the API: a full queue answers 503 `service_unavailable` to a retry, and the dead
/// letter is still listed.
#[tokio::test]
async fn api_retry_when_full_is_503_and_keeps_the_dead_letter() {
    let s = TestServer::with(|c| c.queue.max_jobs = 2).await;
    let q = s.node.workers.queue().clone();
    // A webhook for an endpoint that is not configured is dead-lettered at its first attempt.
    let id = q.enqueue(job("gone", 1)).await.unwrap();
    s.node.workers.wake();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while q.stats().await.unwrap().dead == 0 {
        assert!(std::time::Instant::now() < end, "no dead letter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let later = now_ms() + 3_600_000;
    let filler = q.enqueue(job("gone", 2).not_before(later)).await.unwrap();
    q.enqueue(job("gone", 3).not_before(later)).await.unwrap();
    let list = || s.api.request(Method::GET, "/api/v1/queue/dead", None, &[]);
    let before = list().await.unwrap().body;
    assert_eq!(before["jobs"][0]["id"], id.as_str());

    let r = s.api.request(Method::POST, &format!("/api/v1/queue/dead/{id}/retry"), None, &[]).await.unwrap();
    assert_eq!((r.status, r.error_code()), (503, Some("service_unavailable")), "{}", r.body);
    assert_eq!(list().await.unwrap().body, before, "the dead letter is kept as it was");
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("full") && msg.contains("kept"), "{msg}");
    let r = s.api.request(Method::POST, "/api/v1/queue/dead/retry", None, &[]).await.unwrap();
    assert_eq!((r.status, r.error_code()), (503, Some("service_unavailable")), "{}", r.body);
    assert_eq!(list().await.unwrap().body, before);

    // Room for one (`complete` goes by id).
    q.complete(&Job { id: filler, ..job("gone", 2).into_job(0) }).await.unwrap();
    let r = s.api.request(Method::POST, &format!("/api/v1/queue/dead/{id}/retry"), None, &[]).await.unwrap();
    assert_eq!((r.status, r.body["retried"].as_u64()), (200, Some(1)), "{}", r.body);
    s.stop().await;
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
    retry_when_full(&redis_queue(&server.url(), "t3", 2, 100).await).await;
}

#[tokio::test]
async fn redis_cluster_queue_conforms() {
    let cluster = redis_support::RedisCluster::start();
    let q: Arc<dyn Queue> = Arc::new(redis_queue(&cluster.url(), "t1", 10, 100).await);
    conformance(q, None).await;
    retry_when_full(&redis_queue(&cluster.url(), "t3", 2, 100).await).await;
}
