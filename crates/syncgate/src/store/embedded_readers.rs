//! The embedded store's reader threads: a fixed pool that runs read transactions, fed by one
//! queue.
//!
//! Why not tokio's blocking pool: it starts another thread for every read that finds no idle
//! one, so a burst of reads (5,000 devices reconnecting at once, each reading its stream head,
//! its cursor and what it missed) ran on about 200 threads that spent their time in context
//! switches (`finish_task_switch` was 22 % of the server's samples). A fixed pool of about
//! one thread per core keeps taking reads off the queue without sleeping while there are any.
//!
//! Must never: lose a caller's answer silently (a read that panics drops its answer channel,
//! and the caller gets an error), or keep running after the store is dropped (the threads end
//! when the queue's sender goes).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

pub(super) struct Readers {
    queue: mpsc::Sender<Job>,
}

impl Readers {
    /// Starts `n` reader threads (at least one).
    pub fn start(n: usize) -> std::io::Result<Readers> {
        let (queue, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("syncgate-read-{i}")).spawn(move || loop {
                // The lock is held only while waiting for the next job, not while running it.
                let job = match rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                match job {
                    Ok(job) => {
                        let _ = catch_unwind(AssertUnwindSafe(job));
                    }
                    Err(_) => return, // the store is gone
                }
            })?;
        }
        Ok(Readers { queue })
    }

    /// How many reader threads a machine with `cores` cores gets.
    pub fn threads_for(cores: usize) -> usize {
        cores.clamp(2, 8)
    }

    /// Runs `f` on a reader thread; the answer arrives on the returned channel (closed without
    /// one if `f` panicked or the pool is gone).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        let _ = self.queue.send(Box::new(move || {
            let _ = tx.send(f());
        }));
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_run_on_the_pool_and_a_panic_answers_with_an_error() {
        let r = Readers::start(2).unwrap();
        let name = r.run(|| std::thread::current().name().unwrap_or("").to_string()).await.unwrap();
        assert!(name.starts_with("syncgate-read-"), "{name}");
        assert!(r.run(|| -> u32 { panic!("boom") }).await.is_err());
        // Both threads still serve after the panic.
        let answers: Vec<_> = (0..64u32).map(|i| r.run(move || i * 2)).collect();
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(a.await.unwrap(), i as u32 * 2);
        }
    }
}
