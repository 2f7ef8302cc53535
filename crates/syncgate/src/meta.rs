//! Connection metadata and targeting: what a connection records about the device behind it (address, user
//! agent, app version, when it connected, the token's `meta` claim), for the connections API,
//! the admin UI, and `where` filters on broadcasts.
//!
//! Owns: `ConnMeta` (set once at the upgrade, read-only afterwards), the client address rule
//! (`X-Forwarded-For` only from `server.trusted_proxies`), the `meta` claim size rule, and
//! `Where` (a broadcast filter parsed once per message and matched against each connection
//! without allocating).
//!
//! Must never: believe `X-Forwarded-For` from a peer that is not a trusted proxy, or keep a
//! `meta` claim over `MAX_META_BYTES`.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use serde_json::{Map, Value};

/// Largest `meta` claim a token may carry, in bytes of compact JSON.
pub const MAX_META_BYTES: usize = 1024;

/// What a connection recorded at its upgrade (boxed strings: one is kept per connection).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnMeta {
    pub node: Box<str>,
    pub ip: Option<IpAddr>,
    pub user_agent: Option<Box<str>>,
    pub app_version: Option<Box<str>>,
    /// Unix milliseconds.
    pub connected_at: i64,
    /// The token's `meta` claim (a JSON object), empty when it had none.
    pub meta: Map<String, Value>,
}

impl ConnMeta {
    /// One connection as the connections API shows it: identity, this metadata, and rooms.
    pub fn to_json(&self, conn_id: u64, user: &str, client_id: Option<&str>, rooms: &[std::sync::Arc<str>]) -> Value {
        serde_json::json!({
            "conn_id": conn_id.to_string(),
            "user_id": user,
            "client_id": client_id,
            "node": self.node,
            "ip": self.ip.map(|ip| ip.to_string()),
            "user_agent": self.user_agent,
            "app_version": self.app_version,
            "connected_at": self.connected_at,
            "rooms": rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            "meta": Value::Object(self.meta.clone()),
        })
    }
}

/// Longest user agent kept (longer ones are cut at a character boundary).
const MAX_USER_AGENT: usize = 256;

impl ConnMeta {
    /// Records a device at its upgrade: address (see `client_ip`), user agent, app version
    /// (`?app_version=`, else `X-App-Version`), and the token's `meta` claim (checked by
    /// `check_meta`). Errors are the reason to refuse the upgrade with 400.
    pub fn at_upgrade(
        node: &str,
        trusted_proxies: &[String],
        headers: &axum::http::HeaderMap,
        app_version_query: Option<&str>,
        peer: Option<SocketAddr>,
        meta_claim: Option<&Value>,
        max_name_bytes: usize,
    ) -> Result<ConnMeta, String> {
        let meta = check_meta(meta_claim)?;
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let app_version =
            app_version_query.or_else(|| header("x-app-version")).filter(|v| !v.is_empty()).map(str::to_string);
        if let Some(v) = &app_version {
            if v.len() > max_name_bytes || v.chars().any(char::is_control) {
                return Err(format!("app_version must be 1 to {max_name_bytes} bytes without control characters"));
            }
        }
        let user_agent = header("user-agent").map(|ua| {
            let mut end = ua.len().min(MAX_USER_AGENT);
            while !ua.is_char_boundary(end) {
                end -= 1;
            }
            ua[..end].into()
        });
        Ok(ConnMeta {
            node: node.into(),
            ip: request_ip(trusted_proxies, headers, peer),
            user_agent,
            app_version: app_version.map(String::into_boxed_str),
            connected_at: crate::node::now_ms(),
            meta,
        })
    }
}

/// A trusted proxy: an address or a CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net(ipnet::IpNet);

/// Parses `10.0.0.0/8`, `::1/128` or a bare address.
pub fn parse_net(s: &str) -> Option<Net> {
    let s = s.trim();
    if let Ok(n) = s.parse::<ipnet::IpNet>() {
        return Some(Net(n.trunc()));
    }
    s.parse::<IpAddr>().ok().map(|a| Net(ipnet::IpNet::from(a)))
}

/// The address of the client behind a request: see `client_ip`.
pub fn request_ip(
    trusted_proxies: &[String],
    headers: &axum::http::HeaderMap,
    peer: Option<SocketAddr>,
) -> Option<IpAddr> {
    let trusted: Vec<Net> = trusted_proxies.iter().filter_map(|p| parse_net(p)).collect();
    client_ip(peer, headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).map(str::trim), &trusted)
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy (entries left of it could be
/// written by the client).
pub fn client_ip(peer: Option<SocketAddr>, forwarded_for: Option<&str>, trusted: &[Net]) -> Option<IpAddr> {
    let peer = peer?.ip();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.0.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let Some(header) = forwarded_for else {
        return Some(peer);
    };
    let mut last = peer;
    for part in header.rsplit(',') {
        match part.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => last = ip,
            Ok(ip) => return Some(ip),
            Err(_) => break,
        }
    }
    Some(last)
}

/// Checks a `meta` claim: absent is fine, else a JSON object of at most `MAX_META_BYTES`.
impl ConnMeta {
    /// Adds the connect proxy's meta keys (they replace the token's of the same name); the
    /// result must stay within `MAX_META_BYTES`, else nothing changes.
    pub fn extend(&mut self, extra: &Map<String, Value>) -> Result<(), String> {
        let mut merged = self.meta.clone();
        merged.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        let len = serde_json::to_vec(&merged).map(|v| v.len()).unwrap_or(usize::MAX);
        if len > MAX_META_BYTES {
            return Err(format!(
                "the connect proxy's meta makes the connection's meta {len} bytes; at most {MAX_META_BYTES} are allowed"
            ));
        }
        self.meta = merged;
        Ok(())
    }
}

pub fn check_meta(meta: Option<&Value>) -> Result<Map<String, Value>, String> {
    match meta {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => {
            let len = serde_json::to_vec(m).map(|v| v.len()).unwrap_or(usize::MAX);
            if len > MAX_META_BYTES {
                Err(format!("the token's meta claim is {len} bytes; at most {MAX_META_BYTES} are allowed"))
            } else {
                Ok(m.clone())
            }
        }
        Some(_) => Err("the token's meta claim must be a JSON object".into()),
    }
}

/// A broadcast filter: for every key, the connection's `meta` value (or its `app_version` for
/// the key `app_version`) must equal the given value or one of the given values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Where {
    terms: Vec<(String, Vec<Value>)>,
}

impl Where {
    /// Parses `{KEY: VALUE | [VALUES]}`. An empty object matches everyone.
    pub fn parse(v: &Value) -> Result<Where, String> {
        let Value::Object(m) = v else {
            return Err("where must be an object of {key: value or [values]}".into());
        };
        let mut terms = Vec::with_capacity(m.len());
        for (k, v) in m {
            let values = match v {
                Value::Array(a) if a.is_empty() => return Err(format!("where.{k} is an empty list")),
                Value::Array(a) => a.clone(),
                Value::Object(_) => return Err(format!("where.{k} must be a value or a list of values")),
                other => vec![other.clone()],
            };
            terms.push((k.clone(), values));
        }
        Ok(Where { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The filter as JSON again (to carry it to other nodes).
    pub fn to_json(&self) -> Value {
        Value::Object(self.terms.iter().map(|(k, v)| (k.clone(), Value::Array(v.clone()))).collect())
    }

    /// Whether a connection with this metadata passes. Allocates nothing.
    pub fn matches(&self, meta: &ConnMeta) -> bool {
        self.matches_parts(&meta.meta, meta.app_version.as_deref())
    }

    /// `matches` on the parts: a connection's `meta` object and its app version.
    pub fn matches_parts(&self, meta: &Map<String, Value>, app_version: Option<&str>) -> bool {
        self.terms.iter().all(|(key, values)| {
            let have = match meta.get(key) {
                Some(v) => Some(v),
                None if key == "app_version" => None,
                None => return false,
            };
            match have {
                Some(v) => values.contains(v),
                None => app_version.is_some_and(|a| values.iter().any(|v| v.as_str() == Some(a))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nets(v: &[&str]) -> Vec<Net> {
        v.iter().map(|s| parse_net(s).unwrap()).collect()
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let peer: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let xff = Some("203.0.113.9, 10.0.0.7");
        assert_eq!(client_ip(Some(peer), xff, &[]), Some(peer.ip()));
        let t = nets(&["10.0.0.0/8"]);
        assert_eq!(client_ip(Some(peer), xff, &t), "203.0.113.9".parse().ok());
        // A client-written entry left of the first untrusted one is not believed.
        assert_eq!(client_ip(Some(peer), Some("1.1.1.1, 203.0.113.9"), &t), "203.0.113.9".parse().ok());
        assert_eq!(client_ip(Some(peer), Some("garbage"), &t), Some(peer.ip()));
        assert!(parse_net("10.0.0.0/33").is_none());
        assert!(parse_net("::1").is_some());
    }

    #[test]
    fn meta_claim_size_and_shape() {
        assert!(check_meta(None).unwrap().is_empty());
        assert_eq!(check_meta(Some(&json!({"region": "eu"}))).unwrap()["region"], "eu");
        assert!(check_meta(Some(&json!([1]))).is_err());
        assert!(check_meta(Some(&json!({"x": "y".repeat(1100)}))).is_err());
    }

    #[test]
    fn where_matches_values_lists_and_app_version() {
        let mut m = ConnMeta { app_version: Some("2.1".into()), ..Default::default() };
        m.meta.insert("region".into(), json!("eu"));
        m.meta.insert("tier".into(), json!(2));
        let w = |v: Value| Where::parse(&v).unwrap();
        assert!(w(json!({})).matches(&m));
        assert!(w(json!({"region": "eu"})).matches(&m));
        assert!(w(json!({"region": ["us", "eu"], "tier": 2})).matches(&m));
        assert!(!w(json!({"region": "us"})).matches(&m));
        assert!(!w(json!({"plan": "pro"})).matches(&m));
        assert!(w(json!({"app_version": ["2.0", "2.1"]})).matches(&m));
        assert!(!w(json!({"app_version": "3.0"})).matches(&m));
        assert!(Where::parse(&json!({"a": []})).is_err());
        assert!(Where::parse(&json!([1])).is_err());
        assert_eq!(Where::parse(&w(json!({"a": 1})).to_json()).unwrap(), w(json!({"a": [1]})));
    }
}
