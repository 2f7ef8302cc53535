//! Latency histograms: recorded in microseconds in each worker process, sent to the
//! coordinator as (value, count) pairs and merged there.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency recorded (larger values are clamped): 10 minutes.
const MAX_US: u64 = 600_000_000;

pub struct Latency {
    h: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency { h: Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds") }
    }
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn record_us(&mut self, us: u64) {
        let _ = self.h.record(us.clamp(1, MAX_US));
    }

    pub fn reset(&mut self) {
        self.h.reset();
    }

    /// The recorded values as (value in us, count) pairs.
    pub fn export(&self) -> Vec<(u64, u64)> {
        self.h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
    }

    pub fn merge(&mut self, pairs: &[(u64, u64)]) {
        for (v, n) in pairs {
            let _ = self.h.record_n((*v).clamp(1, MAX_US), *n);
        }
    }

    pub fn summary(&self) -> Summary {
        if self.h.is_empty() {
            return Summary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Summary {
            count: self.h.len(),
            p50_ms: ms(self.h.value_at_quantile(0.50)),
            p95_ms: ms(self.h.value_at_quantile(0.95)),
            p99_ms: ms(self.h.value_at_quantile(0.99)),
            max_ms: ms(self.h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_percentiles() {
        let mut a = Latency::default();
        for us in 1..=1000 {
            a.record_us(us * 10);
        }
        let mut b = Latency::default();
        b.merge(&a.export());
        let (sa, sb) = (a.summary(), b.summary());
        assert_eq!(sa.count, 1000);
        assert_eq!(sb.count, 1000);
        assert!((sa.p99_ms - sb.p99_ms).abs() < 0.05, "{sa:?} {sb:?}");
        assert!((sb.p50_ms - 5.0).abs() < 0.05, "{sb:?}");
    }
}
