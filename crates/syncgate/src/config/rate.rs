//! Parsing of rate-limit and duration values written in the config (`100/s burst 200`,
//! `10/min`, `off`; `30s`, `7d`).

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A rate limit: `count` events per `per`, with bursts up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
    pub burst: NonZeroU32,
}

/// A configured rate, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateSetting(pub Option<Rate>);

impl RateSetting {
    pub fn off() -> Self {
        RateSetting(None)
    }

    /// `count` per `per` with a burst of `burst` (all non-zero).
    pub fn new(count: u32, per: Duration, burst: u32) -> Self {
        RateSetting(Some(Rate {
            count: NonZeroU32::new(count.max(1)).unwrap_or(NonZeroU32::MIN),
            per,
            burst: NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN),
        }))
    }
}

impl FromStr for RateSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(RateSetting(None));
        }
        let bad = || {
            format!("invalid rate {s:?}: expected `N/s`, `N/min` or `N/h`, optionally followed by `burst M`, or `off`")
        };
        let mut words = s.split_whitespace();
        let head = words.next().ok_or_else(bad)?;
        let (n, unit) = head.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" => Duration::from_secs(1),
            "m" | "min" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        let burst = match (words.next(), words.next(), words.next()) {
            (None, None, None) => count,
            (Some("burst"), Some(m), None) => m.parse().map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        let count = NonZeroU32::new(count)
            .ok_or_else(|| format!("invalid rate {s:?}: the count must be at least 1 (use `off` to disable)"))?;
        let burst = NonZeroU32::new(burst).ok_or_else(|| format!("invalid rate {s:?}: burst must be at least 1"))?;
        Ok(RateSetting(Some(Rate { count, per, burst })))
    }
}

impl fmt::Display for RateSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => write!(f, "off"),
            Some(r) => {
                let unit = match r.per.as_secs() {
                    1 => "s",
                    60 => "min",
                    _ => "h",
                };
                write!(f, "{}/{} burst {}", r.count, unit, r.burst)
            }
        }
    }
}

impl<'de> Deserialize<'de> for RateSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for RateSetting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Serde helpers for durations written as `30s`, `5m`, `7d`.
pub mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*v))
    }

    pub fn parse(s: &str) -> Result<Duration, String> {
        humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e} (write e.g. 30s, 5m, 7d)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        let r: RateSetting = "100/s burst 200".parse().unwrap();
        let r = r.0.unwrap();
        assert_eq!((r.count.get(), r.per, r.burst.get()), (100, Duration::from_secs(1), 200));
        let r: RateSetting = "10/min".parse().unwrap();
        assert_eq!(r.0.unwrap().burst.get(), 10);
        assert_eq!("off".parse::<RateSetting>().unwrap(), RateSetting::off());
        for bad in ["", "10", "10/day", "x/s", "0/s", "10/s burst", "10/s burst 0", "10/s flood 3"] {
            assert!(bad.parse::<RateSetting>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn rate_round_trips() {
        for s in ["100/s burst 200", "10/min burst 10", "5/h burst 1", "off"] {
            let r: RateSetting = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
        }
    }
}
