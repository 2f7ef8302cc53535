//! Spreading one large direct fan-out over several threads.
//!
//! A direct fan-out makes one system call per connection, and the thread that runs it (the
//! publisher's request, or a cluster node's broker reader) does nothing else until it ends.
//! On a host with more than one core the others would sit idle meanwhile, and the fan-out
//! would take as long as all its writes one after the other. So the hub keeps a few helper
//! threads (one fewer than the cores this process may run on, at most [`MAX_HELPERS`]): a
//! large direct fan-out is cut into chunks of [`CHUNK`] connections, the helpers are told of
//! it, and the fan-out's own thread and every helper that is free take chunks, in order,
//! until none is left. The fan-out's thread then waits for the chunks still being written
//! (each is short), so a fan-out has ended, every frame of it written or queued, when the
//! call returns, as when one thread writes it all: a later message of the same stream
//! cannot overtake it.
//!
//! A helper that is busy with something else, or not scheduled, costs the fan-out nothing
//! but the notice: its chunks are taken by the other threads. On one core (or a process
//! pinned to one) there are no helpers and a fan-out runs on its own thread, as before.
//!
//! Must never: block a fan-out on a helper that has not started a chunk, or lose a chunk's
//! count when its work panics (the panic is caught; the fan-out goes on).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, Thread};

use crate::streams::Conn;

use super::pace::each_prefetched;

/// Connections per chunk: large enough that taking a chunk (one atomic add) is noise next to
/// its system calls, small enough that the last chunks finish close together.
pub const CHUNK: usize = 64;

/// The most helper threads a hub starts, whatever the core count.
pub const MAX_HELPERS: usize = 7;

/// What a fan-out does for one connection; returns how many deliveries it counts (0 or 1).
pub type Op = Box<dyn Fn(&Conn) -> usize + Send + Sync>;

/// One fan-out being written by several threads.
struct Job {
    list: Vec<Arc<Conn>>,
    op: Op,
    /// Start of the next chunk nobody has taken.
    next: AtomicUsize,
    /// Connections whose chunk has ended.
    finished: AtomicUsize,
    /// The sum of what `op` returned.
    counted: AtomicUsize,
    /// The fan-out's own thread, woken when the last chunk ends.
    caller: Thread,
}

/// Marks a chunk ended when dropped, also when its work panicked.
struct Ending<'a> {
    job: &'a Job,
    len: usize,
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        let total = self.job.list.len();
        if self.job.finished.fetch_add(self.len, Ordering::AcqRel) + self.len == total {
            self.job.caller.unpark();
        }
    }
}

impl Job {
    /// Takes and writes chunks until none is left.
    fn work(&self) {
        let total = self.list.len();
        loop {
            let start = self.next.fetch_add(CHUNK, Ordering::Relaxed);
            if start >= total {
                return;
            }
            let end = (start + CHUNK).min(total);
            let _ending = Ending { job: self, len: end - start };
            let n = each_prefetched(&self.list[start..end], &self.op);
            self.counted.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// The helper threads of one hub. They end when it is dropped.
pub struct Spreader {
    helpers: Vec<Sender<Arc<Job>>>,
}

impl Spreader {
    /// A spreader with one helper fewer than the cores this process may run on.
    pub fn for_this_host() -> Self {
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores.saturating_sub(1).min(MAX_HELPERS))
    }

    /// A spreader with `helpers` helper threads (0: every fan-out runs on its own thread).
    pub fn new(helpers: usize) -> Self {
        let helpers = (0..helpers)
            .filter_map(|i| {
                let (tx, rx) = channel::<Arc<Job>>();
                let spawned = thread::Builder::new().name(format!("syncgate-fanout-{i}")).spawn(move || help(rx));
                match spawned {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not start a fan-out helper thread; fan-outs use fewer threads");
                        None
                    }
                }
            })
            .collect();
        Spreader { helpers }
    }

    /// How many helper threads there are.
    #[cfg(test)]
    pub fn helpers(&self) -> usize {
        self.helpers.len()
    }

    /// Calls `op` on every connection of `list`, on this thread and the free helpers, and
    /// returns the sum of what it returned once every call has returned.
    pub fn run(&self, list: Vec<Arc<Conn>>, op: Op) -> usize {
        if self.helpers.is_empty() || list.len() <= CHUNK {
            return each_prefetched(&list, &op);
        }
        let total = list.len();
        let job = Arc::new(Job {
            list,
            op,
            next: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            counted: AtomicUsize::new(0),
            caller: thread::current(),
        });
        // Only as many helpers as there are chunks beyond the first.
        let wanted = total.div_ceil(CHUNK) - 1;
        for h in self.helpers.iter().take(wanted) {
            let _ = h.send(job.clone());
        }
        job.work();
        while job.finished.load(Ordering::Acquire) < total {
            thread::park();
        }
        job.counted.load(Ordering::Relaxed)
    }
}

/// A helper thread: works on each fan-out it is told of until its hub is gone.
fn help(rx: Receiver<Arc<Job>>) {
    while let Ok(job) = rx.recv() {
        if catch_unwind(AssertUnwindSafe(|| job.work())).is_err() {
            tracing::error!("a fan-out helper's delivery panicked; the fan-out went on without it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::StreamPos;
    use std::collections::HashSet;
    use std::sync::Mutex;

    fn conns(n: u64) -> Vec<Arc<Conn>> {
        (0..n).map(|i| Arc::new(Conn::new(i, "u".into(), None, u64::MAX, 16, StreamPos::resume_from(0)))).collect()
    }

    #[test]
    fn every_connection_is_called_once_and_counted() {
        let s = Spreader::new(3);
        assert_eq!(s.helpers(), 3);
        for n in [0, 1, CHUNK as u64, CHUNK as u64 + 1, 1_000, 5_003] {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let seen2 = seen.clone();
            let counted = s.run(
                conns(n),
                Box::new(move |c| {
                    seen2.lock().unwrap().push(c.id);
                    usize::from(c.id % 3 != 0)
                }),
            );
            let mut ids = seen.lock().unwrap().clone();
            ids.sort_unstable();
            assert_eq!(ids, (0..n).collect::<Vec<_>>(), "each of {n} connections once");
            assert_eq!(counted, (0..n).filter(|i| i % 3 != 0).count(), "the sum over {n}");
        }
    }

    /// Runs a fan-out to 64 chunks whose calls each take a little while (so that the helpers
    /// start before the caller is done); returns how many threads made calls.
    fn threads_used(s: &Spreader) -> usize {
        let threads = Arc::new(Mutex::new(HashSet::new()));
        let t2 = threads.clone();
        let n = s.run(
            conns(64 * CHUNK as u64),
            Box::new(move |_| {
                t2.lock().unwrap().insert(thread::current().id());
                std::thread::sleep(std::time::Duration::from_micros(50));
                1
            }),
        );
        assert_eq!(n, 64 * CHUNK);
        threads.lock().map(|t| t.len()).unwrap()
    }

    #[test]
    fn a_large_fanout_runs_on_more_than_one_thread() {
        assert!(threads_used(&Spreader::new(2)) >= 2, "only one thread wrote");
    }

    #[test]
    fn without_helpers_everything_runs_on_the_callers_thread() {
        let s = Spreader::new(0);
        let me = thread::current().id();
        let n = s.run(conns(1_000), Box::new(move |_| usize::from(thread::current().id() == me)));
        assert_eq!(n, 1_000);
    }

    #[test]
    fn a_panicking_chunk_does_not_hang_the_fanout_and_helpers_go_on() {
        let s = Spreader::new(1);
        let me = thread::current().id();
        // On a helper, every call panics; on the caller's thread, none does. The fan-out must
        // still return (with what the caller counted), and the helper must serve the next one.
        let n = s.run(
            conns(40 * CHUNK as u64),
            Box::new(move |_| {
                if thread::current().id() != me {
                    panic!("helper");
                }
                std::thread::sleep(std::time::Duration::from_micros(20));
                1
            }),
        );
        assert!(n <= 40 * CHUNK && n.is_multiple_of(CHUNK), "{n}: whole chunks, counted by the caller");
        assert_eq!(threads_used(&s), 2, "the helper survived the panic");
    }
}
