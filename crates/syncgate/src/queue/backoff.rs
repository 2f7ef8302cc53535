//! Retry delays: exponential backoff with full jitter, between `queue.backoff_min` and
//! `queue.backoff_max`.
//!
//! Owns: the delay before attempt n+1. Must never: return less than the minimum or more
//! than the maximum (a hot loop, or a job parked for ever).

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The ceiling after `attempts` failed attempts: min * 2^(attempts-1), capped at max.
    pub fn ceiling(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(40);
        let ms = (self.min.as_millis() as u64).saturating_mul(1u64 << exp);
        Duration::from_millis(ms).clamp(self.min, self.max.max(self.min))
    }

    /// Full jitter: uniform in [min, ceiling(attempts)], so retries from many jobs that
    /// failed together spread out instead of hitting the endpoint again in step.
    pub fn delay(&self, attempts: u32) -> Duration {
        let lo = self.min.as_millis() as u64;
        let hi = self.ceiling(attempts).as_millis() as u64;
        Duration::from_millis(if hi > lo { rand::rng().random_range(lo..=hi) } else { lo })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_bounds() {
        let b = Backoff { min: Duration::from_millis(100), max: Duration::from_secs(2) };
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(30), Duration::from_secs(2));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(2));
        for n in 1..20 {
            let d = b.delay(n);
            assert!(d >= b.min && d <= b.ceiling(n), "{n}: {d:?}");
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let b = Backoff { min: Duration::from_millis(10), max: Duration::from_secs(60) };
        let ds: std::collections::HashSet<_> = (0..50).map(|_| b.delay(10)).collect();
        assert!(ds.len() > 10, "{ds:?}");
    }
}
