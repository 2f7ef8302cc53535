//! When a large fan-out writes its frames itself and when it queues them for the
//! connections' tasks.
//!
//! Writing a frame straight into an idle socket from the fan-out loop costs one system call
//! and no task wake-up; queuing it costs a wake-up, a task poll and, when the task runs, one
//! system call for everything that piled up. When a room's messages are far apart nothing
//! piles up, so direct writes win (measured: 7-8 against 11-12 us of server CPU per
//! delivery, 5k connections at 10 msg/s); when they come close together, a task that runs
//! late writes several frames in one call, so queuing wins. (A large direct fan-out runs on
//! the publisher's thread, which waits for it, and the hub's helper threads: `spread.rs`. All
//! times here are wall-clock times of the whole fan-out.) The rule: a fan-out of [`LARGE`]
//! connections or more goes direct only if
//! - the stream's large fan-outs have come, on average, at least 5/4 of the time a direct
//!   fan-out to this many connections is expected to take apart (so its direct fan-outs keep
//!   the threads that write them at most four fifths busy; the average is over the last few
//!   intervals, each counted as at most twice that bound, so one long pause does not hide a
//!   burst after it),
//! - no direct fan-out of the stream is running (two would contend for the same sockets;
//!   the second one queues), and
//! - the expected time is at most [`MAX_DIRECT_NS`]: the thread that runs a fan-out (the
//!   publisher's request, or a cluster node's broker reader) does nothing else meanwhile,
//!   so a fan-out too large to write in that time always queues.
//!
//! The expected cost per connection is learned from the direct fan-outs themselves. So that
//! a stream which measured slow once (the host was busy for a moment) does not queue for as
//! long as its rate stays the same, a fan-out that would queue only because of that cost goes
//! direct anyway when the stream's last direct one ended [`PROBE_EVERY_NS`] ago or more, and
//! it is expected to take at most four times [`MAX_DIRECT_NS`]: it measures again.
//!
//! Must never: block, or take a lock: two fan-outs of one room may run at once on two threads
//! (each connection's own lock keeps its frames whole).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::streams::Conn;

/// Fan-outs to fewer connections always write directly into idle sockets.
pub const LARGE: usize = 256;

/// The longest a direct fan-out is expected to take, ns.
pub const MAX_DIRECT_NS: u64 = 100_000_000;

/// How long after a stream's last direct fan-out one goes direct again to measure the cost
/// anew, however it was expected to do, ns.
pub const PROBE_EVERY_NS: u64 = 10_000_000_000;

/// A measuring fan-out is made only when it is expected to take at most this long, ns.
const MAX_PROBE_NS: u64 = 4 * MAX_DIRECT_NS;

/// What one direct delivery is assumed to cost before any has been measured, ns.
const FIRST_GUESS_NS: u64 = 4_000;

/// The pacing state of one stream (a room, or broadcasts to everyone).
#[derive(Debug)]
pub struct Pace {
    /// Clock (ns) when the stream's last large fan-out started; 0 before the first.
    last_start: AtomicU64,
    /// Average time between the stream's large fan-outs, ns (u64::MAX before there are two).
    interval_ns: AtomicU64,
    /// Clock (ns) until which a direct fan-out of the stream is expected to run.
    direct_until: AtomicU64,
    /// Learned cost of one direct delivery, ns.
    per_conn_ns: AtomicU64,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            last_start: AtomicU64::new(0),
            interval_ns: AtomicU64::new(u64::MAX),
            direct_until: AtomicU64::new(0),
            per_conn_ns: AtomicU64::new(FIRST_GUESS_NS),
        }
    }
}

impl Pace {
    /// Whether a fan-out to `n` connections starting at `now` (ns, > 0) should write
    /// directly. A direct one marks the stream until its expected end, so that a fan-out of
    /// the same stream starting meanwhile on another thread queues.
    pub fn start(&self, now: u64, n: usize) -> bool {
        if n < LARGE {
            return true;
        }
        let expected = self.per_conn_ns.load(Ordering::Relaxed).saturating_mul(n as u64);
        let bound = expected.saturating_mul(5) / 4;
        // Concurrent fan-outs may interleave these updates; the average only steers.
        let last = self.last_start.swap(now, Ordering::Relaxed);
        let mut interval = self.interval_ns.load(Ordering::Relaxed);
        if last != 0 {
            let sample = now.saturating_sub(last).min(bound.saturating_mul(2));
            interval = if interval == u64::MAX { sample } else { (interval / 4) * 3 + sample / 4 };
            self.interval_ns.store(interval, Ordering::Relaxed);
        }
        let until = self.direct_until.load(Ordering::Relaxed);
        if now < until {
            return false;
        }
        if expected > MAX_DIRECT_NS || interval < bound {
            let measure_again = expected <= MAX_PROBE_NS && now.saturating_sub(until) >= PROBE_EVERY_NS;
            if !measure_again {
                return false;
            }
        }
        // Several threads may get here at once; the one that moves `direct_until` wins.
        self.direct_until.compare_exchange(until, now + expected, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Records the end of a direct fan-out to `n` connections that started at `start` (ns).
    pub fn end_direct(&self, start: u64, end: u64, n: usize) {
        if n < LARGE {
            return;
        }
        let measured = (end.saturating_sub(start) / n as u64).max(1);
        let old = self.per_conn_ns.load(Ordering::Relaxed);
        self.per_conn_ns.store((old * 3 + measured) / 4, Ordering::Relaxed);
        self.direct_until.store(end, Ordering::Release);
    }
}

/// Calls `f` on each connection of `list` in turn and sums what it returns, asking the CPU
/// for the state `f` locks a few connections ahead: a large fan-out walks thousands of
/// connections whose state is not in the cache, and without this each one waits for memory.
pub fn each_prefetched(list: &[Arc<Conn>], mut f: impl FnMut(&Conn) -> usize) -> usize {
    const AHEAD: usize = 8;
    let mut n = 0;
    for (i, c) in list.iter().enumerate() {
        if let Some(next) = list.get(i + AHEAD) {
            prefetch(&next.out);
        }
        n += f(c);
    }
    n
}

/// A hint to load `what`'s first cache line; nothing on CPUs without one.
#[inline(always)]
fn prefetch<T>(what: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch of a valid reference's address; it reads nothing architecturally.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((what as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = what;
}

#[cfg(test)]
impl Pace {
    /// Makes the stream look busy: its fan-outs came back to back.
    pub fn make_busy(&self) {
        self.interval_ns.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Runs fan-outs to `n` connections every `every` ns from `t`, each direct one taking
    /// `takes` ns; returns how many went direct and the time after the last.
    fn run(p: &Pace, mut t: u64, count: usize, every: u64, n: usize, takes: u64) -> (usize, u64) {
        let mut direct = 0;
        for _ in 0..count {
            if p.start(t, n) {
                direct += 1;
                p.end_direct(t, t + takes, n);
            }
            t += every;
        }
        (direct, t)
    }

    #[test]
    fn small_fanouts_always_write_directly() {
        let p = Pace::default();
        let (direct, _) = run(&p, MS, 50, 1, LARGE - 1, 1);
        assert_eq!(direct, 50);
    }

    #[test]
    fn a_quiet_room_writes_directly_a_busy_one_queues() {
        let p = Pace::default();
        // A direct fan-out to 5,000 connections takes 25 ms (5 us a connection); at 10
        // messages a second, every one is direct.
        let n = 5_000;
        let (direct, t) = run(&p, MS, 20, 100 * MS, n, 25 * MS);
        assert_eq!(direct, 20);
        // A fan-out of the same room starting while a direct one runs queues.
        assert!(p.start(t, n));
        assert!(!p.start(t + MS, n));
        p.end_direct(t, t + 25 * MS, n);
        // 100 messages a second (10 ms apart, under the 25 ms a direct one takes): after
        // the first few, all queue.
        let (direct, t) = run(&p, t + 100 * MS, 40, 10 * MS, n, 25 * MS);
        assert!(direct <= 3, "{direct}");
        // Back to 10 a second: direct again after a few.
        let (direct, t) = run(&p, t + 100 * MS, 20, 100 * MS, n, 25 * MS);
        assert!(direct >= 16, "{direct}");
        // Bursts with long pauses between (a publisher that waits for its readers): the
        // pauses do not make the bursts direct.
        let mut t = t;
        let mut direct = 0;
        for _ in 0..10 {
            let (d, after) = run(&p, t, 16, MS, n, 25 * MS);
            direct += d;
            t = after + 2_000 * MS;
        }
        assert!(direct <= 12, "{direct} of 160");
    }

    #[test]
    fn the_learned_cost_sets_how_far_apart_is_far_enough() {
        let p = Pace::default();
        let n = 1_000;
        // 40 us a connection: a direct fan-out takes 40 ms; 60 ms apart is enough...
        let (direct, t) = run(&p, MS, 30, 60 * MS, n, 40 * MS);
        assert!(direct >= 25, "{direct}");
        // ...45 ms apart is not (40 x 5/4 = 50).
        let (direct, _) = run(&p, t, 30, 45 * MS, n, 40 * MS);
        assert!(direct <= 5, "{direct}");
    }

    #[test]
    fn a_stream_that_measured_slow_once_is_measured_again() {
        let p = Pace::default();
        let n = 19_000;
        // The first direct fan-out took 400 ms (21 us a connection: the host was busy): the
        // learned cost now expects about 157 ms, over the bound.
        assert!(p.start(MS, n));
        p.end_direct(MS, 401 * MS, n);
        // One a second, each direct one taking 76 ms (4 us a connection) from now on.
        let mut t = 1_001 * MS;
        let mut direct = Vec::new();
        for _ in 0..70 {
            let d = p.start(t, n);
            if d {
                p.end_direct(t, t + 76 * MS, n);
            }
            direct.push(d);
            t += 1_000 * MS;
        }
        assert!(!direct[..9].iter().any(|d| *d), "queued until the first measurement: {direct:?}");
        let probes = direct[..40].iter().filter(|d| **d).count();
        assert!((2..=5).contains(&probes), "one measurement every 10 s: {direct:?}");
        assert!(direct[60..].iter().all(|d| *d), "direct again once measured: {direct:?}");
    }

    #[test]
    fn a_fanout_expected_to_take_too_long_queues() {
        let p = Pace::default();
        let (direct, t) = run(&p, MS, 20, 1_000 * MS, 5_000, 25 * MS); // 5 us a connection
        assert_eq!(direct, 20);
        let (direct, t) = run(&p, t, 5, 1_000 * MS, 19_000, 95 * MS);
        assert!(direct >= 3, "95 ms is under the limit: {direct}");
        let (direct, _) = run(&p, t, 5, 1_000 * MS, 21_000, 105 * MS);
        assert_eq!(direct, 0, "105 ms is over the limit however quiet the room is");
    }
}
