//! Rate limiters (GCRA, from the governor crate) for WebSocket connects, client frames, API
//! calls and admin sign-ins.
//!
//! Owns: one keyed limiter per configured `rate_limits.*` key, the per-connection frame
//! limiter, and the answer a refused caller gets (limit, remaining, retry-after).
//!
//! Must never: grow without bound: keyed state is swept by `sweep()` (called by the node's
//! housekeeping task), which forgets keys that are back at full capacity.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::{Rate, RateLimits, RateSetting};
use crate::metrics::{LimitLabels, Metrics};

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;
/// The limiter a connection carries for its frames.
pub type FrameLimiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// A refusal: what the caller is told (429 headers, or the error frame).
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    pub limit: u32,
    pub retry_after: Duration,
}

/// An accepted call: for X-RateLimit-* headers.
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    pub limit: u32,
    pub remaining: u32,
}

fn quota(r: &Rate) -> Quota {
    let period = (r.per / r.count.get()).max(Duration::from_nanos(1));
    Quota::with_period(period).unwrap_or(Quota::per_second(NonZeroU32::MIN)).allow_burst(r.burst)
}

/// A keyed limiter for one config key, or none when it is `off`.
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    name: &'static str,
    limiter: Option<(Keyed<K>, u32)>,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    fn new(name: &'static str, setting: &RateSetting) -> Self {
        KeyedLimit {
            name,
            limiter: setting.0.map(|r| {
                (RateLimiter::dashmap(quota(&r)).with_middleware::<StateInformationMiddleware>(), r.burst.get())
            }),
        }
    }

    /// Counts one call for `key`. `Ok(None)` when the limiter is off.
    pub fn check(&self, key: &K, metrics: &Metrics) -> Result<Option<Allowed>, Refused> {
        let Some((l, burst)) = &self.limiter else {
            return Ok(None);
        };
        match l.check_key(key) {
            Ok(snapshot) => Ok(Some(Allowed { limit: *burst, remaining: snapshot.remaining_burst_capacity() })),
            Err(not_until) => {
                metrics.rate_limited.get_or_create(&LimitLabels { limiter: self.name }).inc();
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(Refused { limit: *burst, retry_after: wait })
            }
        }
    }

    fn sweep(&self) {
        if let Some((l, _)) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys currently tracked (for tests and stats).
    pub fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, |(l, _)| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// All limiters of a node.
pub struct Limiters {
    pub ws_connect_user: KeyedLimit<Arc<str>>,
    pub ws_connect_ip: KeyedLimit<std::net::IpAddr>,
    pub api_user: KeyedLimit<Arc<str>>,
    pub api_key: KeyedLimit<Arc<str>>,
    pub admin_sign_in: KeyedLimit<std::net::IpAddr>,
    frame_quota: Option<Quota>,
    pub frame_strikes: u32,
}

impl Limiters {
    pub fn new(cfg: &RateLimits) -> Self {
        Limiters {
            ws_connect_user: KeyedLimit::new("ws_connect_per_user", &cfg.ws_connect_per_user),
            ws_connect_ip: KeyedLimit::new("ws_connect_per_ip", &cfg.ws_connect_per_ip),
            api_user: KeyedLimit::new("api_per_user", &cfg.api_per_user),
            api_key: KeyedLimit::new("api_per_key", &cfg.api_per_key),
            admin_sign_in: KeyedLimit::new("admin_sign_in", &cfg.admin_sign_in),
            frame_quota: cfg.client_frames.0.as_ref().map(quota),
            frame_strikes: cfg.client_frames_strikes,
        }
    }

    /// A fresh frame limiter for a connection (None when `client_frames` is off).
    pub fn frame_limiter(&self) -> Option<Box<FrameLimiter>> {
        self.frame_quota.map(|q| Box::new(RateLimiter::direct(q)))
    }

    /// Forgets keys that are back at full capacity.
    pub fn sweep(&self) {
        self.ws_connect_user.sweep();
        self.ws_connect_ip.sweep();
        self.api_user.sweep();
        self.api_key.sweep();
        self.admin_sign_in.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_limit_refuses_after_burst_and_reports_retry() {
        let m = Metrics::new();
        let l: KeyedLimit<Arc<str>> = KeyedLimit::new("t", &"2/min burst 2".parse().unwrap());
        let k: Arc<str> = "alice".into();
        assert_eq!(l.check(&k, &m).unwrap().unwrap().remaining, 1);
        assert_eq!(l.check(&k, &m).unwrap().unwrap().remaining, 0);
        let r = l.check(&k, &m).unwrap_err();
        assert_eq!(r.limit, 2);
        assert!(
            r.retry_after > Duration::from_secs(1) && r.retry_after <= Duration::from_secs(30),
            "{:?}",
            r.retry_after
        );
        // Another key has its own budget.
        assert!(l.check(&"bob".into(), &m).is_ok());
        let off: KeyedLimit<Arc<str>> = KeyedLimit::new("t", &RateSetting::off());
        assert!(off.check(&k, &m).unwrap().is_none());
    }
}
