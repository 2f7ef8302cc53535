//! Circuit breakers, one per endpoint: after `queue.breaker_failures` consecutive failed
//! attempts the circuit opens and jobs for that endpoint wait; after
//! `queue.breaker_cooldown` one probe goes through (half-open); its success closes the
//! circuit, its failure opens it again for another cooldown.
//!
//! Owns: the state of each endpoint's circuit on this node. Must never: let more than one
//! probe through while half-open, or count a job that was held back as a failure.
//!
//! Breakers are per node (each node learns an endpoint's health from its own attempts);
//! endpoints are names from the config and push providers, so the map stays small.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;

/// What the breaker says about an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead (closed, or this is the half-open probe).
    Yes,
    /// Wait until this unix ms.
    No { until_ms: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// 0 closed, 1 half-open, 2 open: the value of `syncgate_queue_circuit_state`.
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Circuit {
    failures: u32,
    /// Open until this unix ms (0 = not open).
    open_until: i64,
    /// A half-open probe is running.
    probing: bool,
}

pub struct Breakers {
    failures: u32,
    cooldown_ms: i64,
    circuits: Mutex<HashMap<String, Circuit>>,
}

/// How long a job held back by a probe in flight waits before it asks again.
const PROBE_WAIT_MS: i64 = 250;

impl Breakers {
    pub fn new(failures: u32, cooldown: Duration) -> Self {
        Breakers { failures: failures.max(1), cooldown_ms: cooldown.as_millis() as i64, circuits: Mutex::default() }
    }

    pub fn admit(&self, endpoint: &str, now_ms: i64) -> Admit {
        let mut map = self.circuits.lock();
        let Some(c) = map.get_mut(endpoint) else { return Admit::Yes };
        if c.open_until == 0 {
            return Admit::Yes;
        }
        if now_ms < c.open_until {
            return Admit::No { until_ms: c.open_until };
        }
        if c.probing {
            return Admit::No { until_ms: now_ms + PROBE_WAIT_MS };
        }
        c.probing = true;
        Admit::Yes
    }

    pub fn success(&self, endpoint: &str) {
        self.circuits.lock().remove(endpoint);
    }

    pub fn failure(&self, endpoint: &str, now_ms: i64) {
        let mut map = self.circuits.lock();
        let c = map.entry(endpoint.to_string()).or_default();
        c.failures = c.failures.saturating_add(1);
        if c.probing || c.failures >= self.failures {
            c.open_until = now_ms + self.cooldown_ms;
            c.probing = false;
        }
    }

    pub fn state(&self, endpoint: &str, now_ms: i64) -> State {
        match self.circuits.lock().get(endpoint) {
            None => State::Closed,
            Some(c) if c.open_until == 0 => State::Closed,
            Some(c) if c.probing || now_ms >= c.open_until => State::HalfOpen,
            Some(_) => State::Open,
        }
    }

    /// Every endpoint with a circuit that is not plainly closed, and those with failures.
    pub fn snapshot(&self, now_ms: i64) -> Vec<(String, State, u32)> {
        let map = self.circuits.lock();
        let mut v: Vec<_> = map
            .iter()
            .map(|(e, c)| {
                let s = if c.open_until == 0 {
                    State::Closed
                } else if c.probing || now_ms >= c.open_until {
                    State::HalfOpen
                } else {
                    State::Open
                };
                (e.clone(), s, c.failures)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_half_opens_and_closes() {
        let b = Breakers::new(3, Duration::from_millis(1000));
        for _ in 0..2 {
            b.failure("e", 0);
        }
        assert_eq!(b.admit("e", 0), Admit::Yes);
        b.failure("e", 0);
        assert_eq!(b.state("e", 10), State::Open);
        assert_eq!(b.admit("e", 10), Admit::No { until_ms: 1000 });
        assert_eq!(b.admit("other", 10), Admit::Yes);
        // Cooldown over: one probe, the others wait.
        assert_eq!(b.admit("e", 1000), Admit::Yes);
        assert!(matches!(b.admit("e", 1000), Admit::No { .. }));
        assert_eq!(b.state("e", 1000), State::HalfOpen);
        // The probe fails: open again for a cooldown.
        b.failure("e", 1100);
        assert_eq!(b.admit("e", 1200), Admit::No { until_ms: 2100 });
        assert_eq!(b.admit("e", 2100), Admit::Yes);
        b.success("e");
        assert_eq!(b.state("e", 2100), State::Closed);
        assert_eq!(b.admit("e", 2100), Admit::Yes);
    }
}
