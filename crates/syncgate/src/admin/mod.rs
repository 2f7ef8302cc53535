//! The admin web UI's security: sign-in sessions and CSRF checks. The pages themselves are
//! static assets compiled into the binary (`assets`); everything they show comes from the
//! HTTP API, which accepts an admin session wherever it accepts an API key.
//!
//! Owns: server-side sessions (random ids, expiry, a bound on how many are kept), the
//! session cookie (`sg_admin`, HttpOnly, SameSite=Strict, Path=/admin and Path=/api/v1), and
//! the CSRF rule for state-changing requests made with a session: the `X-CSRF-Token` header
//! must carry the session's token, and `Origin` (when the browser sends one) must be this
//! host's own.
//!
//! Must never: accept a session for a state-changing request without its CSRF token, keep
//! more than `admin.max_sessions` sessions, or log a session id or an admin key.

pub mod assets;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, Method};
use parking_lot::Mutex;

use crate::auth::constant_time_eq;
use crate::config::AdminConfig;
use crate::error::Error;

/// Name of the session cookie.
pub const COOKIE: &str = "sg_admin";
/// Header that carries the session's CSRF token on state-changing requests.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// One signed-in operator.
#[derive(Debug, Clone)]
pub struct Session {
    pub csrf: String,
    pub created: Instant,
    pub expires: Instant,
    /// Unix milliseconds of the expiry (for the UI).
    pub expires_at_ms: i64,
}

/// The sessions of this node (a sign-in is per node: behind a load balancer, use sticky
/// sessions for /admin, or sign in again).
pub struct Sessions {
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<String, Session>>,
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Sessions {
    pub fn new(cfg: &AdminConfig) -> Self {
        Sessions { ttl: cfg.session_ttl, max: cfg.max_sessions, map: Mutex::new(HashMap::new()) }
    }

    /// Starts a session: returns (session id, session).
    pub fn create(&self) -> (String, Session) {
        let now = Instant::now();
        let s = Session {
            csrf: random_hex(24),
            created: now,
            expires: now + self.ttl,
            expires_at_ms: crate::node::now_ms() + self.ttl.as_millis() as i64,
        };
        let id = random_hex(32);
        let mut map = self.map.lock();
        map.retain(|_, s| s.expires > now);
        while map.len() >= self.max {
            let Some(oldest) = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| k.clone()) else { break };
            map.remove(&oldest);
        }
        map.insert(id.clone(), s.clone());
        (id, s)
    }

    /// The live session with this id.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.map.lock();
        match map.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.map.lock().remove(id);
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Checks the session a request presents. `Ok(None)`: no session cookie at all (the
    /// caller may still present an API key). A state-changing method must also pass the CSRF
    /// rule. Returns the session id with the session.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<Option<(String, Session)>, Error> {
        let Some(id) = session_cookie(headers) else {
            return Ok(None);
        };
        let Some(s) = self.get(id) else {
            return Err(Error::unauthorized("the admin session has expired or is unknown; sign in again"));
        };
        if !is_safe(method) {
            check_origin(headers)?;
            let token = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
            if !constant_time_eq(token.as_bytes(), s.csrf.as_bytes()) {
                return Err(Error::forbidden("missing or wrong X-CSRF-Token for this admin session"));
            }
        }
        Ok(Some((id.to_string(), s)))
    }
}

fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The value of the `sg_admin` cookie, if the request has one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// A browser sends `Origin` on cross-origin requests and on same-origin POSTs: when present it
/// must name this host (the `Host` the request was sent to). `Sec-Fetch-Site`, when present,
/// must say the request came from this origin (or was typed by the user).
pub fn check_origin(headers: &HeaderMap) -> Result<(), Error> {
    let cross = || Err(Error::forbidden("cross-origin admin requests are refused"));
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return cross();
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let origin = origin.to_str().unwrap_or("");
    let own = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    if host.is_empty() || own != Some(host) {
        return cross();
    }
    Ok(())
}

/// `Set-Cookie` values that start a session (or, with `None`, end it), one per path.
pub fn set_cookies(id: Option<&str>, ttl: Duration) -> Vec<HeaderValue> {
    ["/admin", "/api/v1"]
        .iter()
        .filter_map(|path| {
            let v = match id {
                Some(id) => {
                    format!("{COOKIE}={id}; Path={path}; Max-Age={}; HttpOnly; SameSite=Strict", ttl.as_secs())
                }
                None => format!("{COOKIE}=; Path={path}; Max-Age=0; HttpOnly; SameSite=Strict"),
            };
            HeaderValue::from_str(&v).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max: usize) -> AdminConfig {
        AdminConfig { max_sessions: max, ..Default::default() }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn sessions_are_bounded_and_checked() {
        let s = Sessions::new(&cfg(2));
        let (a, _) = s.create();
        let (b, sb) = s.create();
        let (c, _) = s.create();
        assert!(s.get(&a).is_none(), "the oldest is forgotten past max_sessions");
        assert!(s.get(&b).is_some() && s.get(&c).is_some());
        let cookie = format!("other=1; {COOKIE}={b}");
        let get = headers(&[("cookie", &cookie)]);
        assert!(s.check(&Method::GET, &get).unwrap().is_some());
        assert!(s.check(&Method::POST, &get).is_err(), "no CSRF token");
        let ok = headers(&[("cookie", &cookie), ("x-csrf-token", &sb.csrf), ("host", "h:1"), ("origin", "http://h:1")]);
        assert!(s.check(&Method::POST, &ok).unwrap().is_some());
        let evil =
            headers(&[("cookie", &cookie), ("x-csrf-token", &sb.csrf), ("host", "h:1"), ("origin", "http://evil")]);
        assert!(s.check(&Method::POST, &evil).is_err());
        assert!(s.check(&Method::GET, &HeaderMap::new()).unwrap().is_none());
        let unknown = headers(&[("cookie", "sg_admin=nope")]);
        assert!(s.check(&Method::GET, &unknown).is_err());
    }
}
