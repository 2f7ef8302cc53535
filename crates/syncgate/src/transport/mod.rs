//! The WebSocket transport: the HTTP upgrade at GET /ws (auth, limits, resume position)
//! and the per-connection task.
//!
//! We implement RFC 6455 ourselves (`codec`) on the raw TCP stream that hyper hands over
//! after the upgrade, rather than using tungstenite, to keep idle connections small: no
//! read buffer while no frame is in flight, no write buffer while nothing is queued, and
//! server frames encoded once per message and shared by every recipient. The trade-offs
//! are recorded in docs/architecture.md. The HTTP side of the handshake, including the
//! permessage-deflate negotiation, is in `handshake`; the compression itself in `deflate`.
//!
//! Must never: upgrade a request before auth and admission checks pass, or keep an
//! admitted connection in the hub when its upgrade fails.

pub mod codec;
mod conn;
pub mod deflate;
pub mod handshake;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpStream;

use crate::api::error::ApiError;
use crate::auth::AuthError;
use crate::config::PresenceFailure;
use crate::error::{Code, Error};
use crate::hub::{AdmitError, Conn, StreamPos};
use crate::metrics::KindLabels;
use crate::node::Node;
use crate::protocol;
use crate::session::Session;
use crate::store::{EventId, StreamKey};

#[derive(Deserialize)]
struct WsQuery {
    token: Option<String>,
    client_id: Option<String>,
    since: Option<String>,
    app_version: Option<String>,
}

fn refuse(node: &Node, reason: &'static str, err: Error) -> Response {
    node.metrics.connections_refused.get_or_create(&KindLabels { kind: reason }).inc();
    ApiError::from(err).into_response()
}

/// GET /ws
pub async fn upgrade(State(node): State<Arc<Node>>, req: Request) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let query = match crate::api::extract::parse_query::<WsQuery>(req.uri().query().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return refuse(&node, "bad_request", e),
    };
    if node.is_shutting_down() {
        return refuse(&node, "shutting_down", Error::unavailable("this node is shutting down; reconnect to another"));
    }
    // 1. Authentication.
    let token = query.token.clone().filter(|t| !t.is_empty()).or_else(|| bearer(req.headers())).unwrap_or_default();
    let claims = match node.auth.verify(&token) {
        Ok(c) => c,
        Err(e) => {
            let msg = match e {
                AuthError::Missing => "missing token: pass ?token= or Authorization: Bearer".to_string(),
                AuthError::Expired => "token expired".to_string(),
                other => other.to_string(),
            };
            return refuse(&node, "unauthorized", Error::unauthorized(msg));
        }
    };
    // 2. A WebSocket handshake at all?
    let key = match handshake::handshake_key(req.headers()) {
        Ok(k) => k,
        Err(handshake::Refusal::Invalid(e)) => return refuse(&node, "bad_request", e),
        Err(handshake::Refusal::Version(e)) => return handshake::upgrade_required(refuse(&node, "bad_request", e)),
    };
    let deflate = if node.cfg.compression.enabled { handshake::negotiate_deflate(req.headers()) } else { None };
    // 3. Identity of the device.
    if let Err(e) = node.check_name("user id", &claims.sub) {
        return refuse(&node, "bad_request", e);
    }
    let mut meta = match crate::meta::ConnMeta::at_upgrade(
        &node.instance_id,
        &node.cfg.server.trusted_proxies,
        req.headers(),
        query.app_version.as_deref(),
        peer,
        claims.meta.as_ref(),
        node.cfg.limits.max_name_bytes,
    ) {
        Ok(m) => m,
        Err(e) => return refuse(&node, "bad_request", Error::invalid(e)),
    };
    let client_id = match (&query.client_id, &claims.client_id) {
        (Some(q), Some(c)) if q != c => {
            return refuse(&node, "forbidden", Error::forbidden("client_id does not match the token's client_id claim"))
        }
        (Some(q), _) => Some(q.clone()),
        (None, c) => c.clone(),
    };
    if let Some(c) = &client_id {
        if let Err(e) = node.check_name("client_id", c) {
            return refuse(&node, "bad_request", e);
        }
    }
    // 3b. The app's connect proxy, when configured: it may refuse, or add rooms and meta.
    let app_version = meta.app_version.as_deref();
    let granted =
        match crate::webhooks::proxy::check(&node, req.headers(), app_version, meta.ip, &claims, client_id.as_deref())
            .await
        {
            Ok(g) => g,
            Err(e) => return refuse(&node, "connect_proxy", e),
        };
    // The proxy's meta extends the token's (its keys win), within the same bound.
    if let Some(extra) = &granted.meta {
        if let Err(e) = meta.extend(extra) {
            return refuse(&node, "connect_proxy", Error::unavailable(e));
        }
    }
    // 4. Admission limits that need no state change.
    if !node.hub.has_room() {
        return refuse(&node, "node_full", Error::unavailable("this node has reached its connection limit"));
    }
    // Across the deployment (the hub enforces the same limit atomically on this node).
    let across = match node.presence.user_connections(&claims.sub).await {
        Ok(n) => n,
        Err(e) => {
            node.metrics.dependency_failures.get_or_create(&KindLabels { kind: "presence_admission" }).inc();
            if node.cfg.limits.presence_failure == PresenceFailure::Closed {
                return refuse(&node, "presence_unavailable", e.into());
            }
            0
        }
    };
    if across.max(node.hub.user_connections(&claims.sub)) >= node.cfg.limits.max_connections_per_user {
        return refuse(&node, "user_full", Error::new(Code::RateLimitExceeded, AdmitError::UserFull.to_string()));
    }
    let user: Arc<str> = claims.sub.as_str().into();
    if let Err(r) = node.limits.ws_connect_user.check(&user, &node.metrics) {
        return ApiError::rate_limited(r, "too many connection attempts for this user").into_response();
    }
    // The client's address as the connection records it (`X-Forwarded-For` only from
    // `server.trusted_proxies`): behind a proxy, each client has its own budget.
    if let Some(ip) = meta.ip {
        if let Err(r) = node.limits.ws_connect_ip.check(&ip, &node.metrics) {
            return ApiError::rate_limited(r, "too many connection attempts from this address").into_response();
        }
    }
    // 5. Where the user stream starts for this connection.
    let start = match node.streams.user_start(&claims.sub, client_id.as_deref(), query.since.as_deref()).await {
        Ok(p) => p,
        Err(e) => return refuse(&node, "bad_request", e),
    };
    // 6. Admit, queue the welcome, answer 101.
    let conn_id = node.hub.next_conn_id();
    let conn = Arc::new(
        Conn::new(
            conn_id,
            user,
            client_id.as_deref().map(Into::into),
            claims.exp,
            node.cfg.limits.send_queue,
            StreamPos::resume_from(start.cursor),
        )
        .with_deflate(deflate.is_some()),
    );
    let _ = conn.meta.set(Box::new(meta));
    let mut welcome = json!({
        "op": "welcome",
        "conn_id": conn_id.to_string(),
        "user_id": claims.sub,
        "client_id": client_id,
        "instance_id": node.instance_id,
        "heartbeat_ms": node.cfg.heartbeat.interval.as_millis() as u64,
        "resumed": start.resumed,
        "epoch": node.epoch(),
        "position": EventId::format(node.epoch(), StreamKey::User(&claims.sub), start.cursor),
    });
    if start.trimmed > 0 {
        welcome["partial"] = json!(true);
        welcome["trimmed"] = json!(start.trimmed);
    }
    conn.reply(protocol::welcome(&welcome));
    if let Err(e) = node.hub.admit(conn.clone()) {
        let err = match e {
            AdmitError::NodeFull => Error::unavailable(e.to_string()),
            AdmitError::UserFull => Error::new(Code::RateLimitExceeded, e.to_string()),
        };
        return refuse(&node, "limit", err);
    }
    let Some(on_upgrade) = req.extensions().get::<hyper::upgrade::OnUpgrade>().cloned() else {
        node.hub.remove(&conn);
        return ApiError::from(Error::internal("connection cannot be upgraded")).into_response();
    };
    let info = node
        .events
        .tracks_connections()
        .then(|| crate::webhooks::ConnInfo::of(&node, &conn, req.headers(), granted.meta));
    let session = Session::new(node.clone(), conn.clone(), claims, granted.rooms);
    let fut = async move {
        let stream = match on_upgrade.await {
            Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => Some((parts.io.into_inner(), parts.read_buf)),
                Err(_) => None,
            },
            Err(_) => None,
        };
        let Some((stream, leftover)) = stream else {
            node.hub.remove(&conn);
            return;
        };
        let _ = stream.set_nodelay(true);
        if let Some(info) = info {
            node.events.connected(info);
        }
        let deflate = deflate.map(|_| deflate::Settings {
            min_bytes: node.cfg.compression.min_bytes,
            level: node.cfg.compression.level,
        });
        let c = conn::Connection::new(stream, leftover, session, node.cfg.limits.max_frame_bytes, deflate);
        // A task of its own: the upgrade task ends here and frees what it captured, and the
        // connection's task holds only the connection's state (640 bytes with tokio's task
        // header, measured with heaptrack). Tracked, so shutdown waits for it.
        node.tasks.spawn(c.run(node.hub.clone(), node.clone()));
    };
    tokio::spawn(fut);
    handshake::switching_protocols(&key, deflate)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).map(|t| t.trim().to_string())
}
