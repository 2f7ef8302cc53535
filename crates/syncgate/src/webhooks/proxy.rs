//! The connect proxy: a synchronous POST to the app before a WebSocket upgrade, whose
//! answer admits (and may extend the token's rooms and meta) or refuses the connection.
//!
//! Owns: the request body, the answer's meaning and `on_error`. Must never: admit on an
//! answer it does not understand unless `on_error: allow` says so, or wait past its timeout.

use serde::{Deserialize, Serialize};

use crate::config::{ConnectProxy, OnError};

#[derive(Debug, Serialize)]
pub struct ProxyRequest<'a> {
    pub user_id: &'a str,
    pub client_id: Option<&'a str>,
    pub ip: Option<String>,
    pub user_agent: Option<&'a str>,
    pub app_version: Option<&'a str>,
    /// The token's claims as verified.
    pub claims: serde_json::Value,
}

#[derive(Debug, Deserialize, Default)]
struct Answer {
    allow: bool,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    meta: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What the proxy decided.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Admit, adding these room patterns and meta keys to the token's.
    Allow { rooms: Vec<String>, meta: Option<serde_json::Map<String, serde_json::Value>> },
    /// Refuse with 403.
    Refuse,
    /// The proxy failed and `on_error: reject`: refuse with 503.
    Failed(String),
}

pub async fn ask(http: &reqwest::Client, cfg: &ConnectProxy, req: &ProxyRequest<'_>) -> Decision {
    let failed = |why: String| match cfg.on_error {
        OnError::Allow => {
            tracing::warn!(error = %why, "connect proxy failed; admitting (on_error: allow)");
            Decision::Allow { rooms: Vec::new(), meta: None }
        }
        OnError::Reject => Decision::Failed(why),
    };
    let sent = http.post(&cfg.url).timeout(cfg.timeout).json(req).send().await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return failed(format!("no answer within {:?}", cfg.timeout)),
        Err(e) => return failed(format!("request failed: {e}")),
    };
    match resp.status().as_u16() {
        200 => {}
        403 => return Decision::Refuse,
        s => return failed(format!("answered HTTP {s}")),
    }
    match resp.json::<Answer>().await {
        Ok(a) if a.allow => Decision::Allow { rooms: a.rooms, meta: a.meta },
        Ok(_) => Decision::Refuse,
        Err(e) => failed(format!("answer is not {{\"allow\":...}}: {e}")),
    }
}

/// What the connect proxy added to an admitted connection, on top of its token.
#[derive(Debug, Default)]
pub struct Granted {
    /// Room patterns the connection may join besides the token's (kept across `refresh`).
    pub rooms: Vec<String>,
    /// Meta keys added to the token's `meta` claim (its keys win).
    pub meta: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Runs the connect proxy for an upgrade request, if one is configured: what it granted, or
/// the error to answer (403 refused, 503 proxy failed with `on_error: reject`). Without a
/// proxy, nothing is granted.
pub async fn check(
    node: &crate::node::Node,
    h: &axum::http::HeaderMap,
    app_version: Option<&str>,
    ip: Option<std::net::IpAddr>,
    claims: &crate::auth::Claims,
    client_id: Option<&str>,
) -> Result<Granted, crate::error::Error> {
    let cfg = &node.cfg.webhooks.connect_proxy;
    if cfg.url.is_empty() {
        return Ok(Granted::default());
    }
    let ua = h.get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok());
    let body = ProxyRequest {
        user_id: &claims.sub,
        client_id,
        ip: ip.map(|ip| ip.to_string()),
        user_agent: ua,
        app_version: super::hook_app_version(app_version),
        claims: serde_json::to_value(claims).unwrap_or_default(),
    };
    match ask(&node.events.http, cfg, &body).await {
        Decision::Allow { rooms, meta } => Ok(Granted { rooms, meta }),
        Decision::Refuse => Err(crate::error::Error::forbidden("the connection was refused by the app")),
        Decision::Failed(why) => {
            tracing::warn!(error = %why, "connect proxy failed; refusing (on_error: reject)");
            Err(crate::error::Error::unavailable("the app's connect check is unavailable; retry later"))
        }
    }
}
