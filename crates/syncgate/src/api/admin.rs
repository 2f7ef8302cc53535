//! The admin session endpoints (sign in, who am I, sign out) and the operator views the admin
//! UI needs beyond the server API: a user's connections with their metadata, and a user's
//! stream (head, devices with cursor and lag, latest messages).
//!
//! Must never: start a session without a valid admin key, or answer a sign-in from another
//! origin.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiResult};
use super::extract::{ApiKey, JsonBody, Query};
use super::query::{events_json, page_limit};
use crate::admin::{self, Sessions};
use crate::error::Error;
use crate::node::Node;
use crate::store::StreamKey;

#[derive(Deserialize, ToSchema)]
pub struct SignIn {
    /// One of `admin.keys` (or the development admin key).
    pub key: String,
}

fn session_json(node: &Node, s: &admin::Session) -> Value {
    json!({"csrf_token": s.csrf, "expires_at": s.expires_at_ms, "instance_id": node.instance_id})
}

#[utoipa::path(post, path = "/api/v1/admin/session", tag = "admin", request_body = SignIn,
    responses((status = 200, description = "the session, and the session cookie", body = super::schemas::SessionAnswer),
        (status = 401, description = "wrong admin key"), (status = 403, description = "cross-origin sign-in"),
        (status = 429, description = "rate_limits.admin_sign_in exceeded for this address")))]
pub async fn sign_in(
    State(node): State<Arc<Node>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: axum::http::HeaderMap,
    body: JsonBody<SignIn>,
) -> ApiResult<Response> {
    admin::check_origin(&headers)?;
    if let Some(ip) = crate::meta::request_ip(&node.cfg.server.trusted_proxies, &headers, peer.map(|p| p.0 .0)) {
        node.limits
            .admin_sign_in
            .check(&ip, &node.metrics)
            .map_err(|r| ApiError::rate_limited(r, "too many sign-in attempts from this address"))?;
    }
    if !node.auth.has_admin_keys() {
        return Err(Error::unauthorized("the admin UI is disabled: set admin.keys").into());
    }
    if !node.auth.is_admin_key(&body.value.key) {
        tracing::warn!("admin sign-in refused: wrong key");
        return Err(Error::unauthorized("wrong admin key").into());
    }
    let (id, s) = sessions.create();
    let mut resp = Json(session_json(&node, &s)).into_response();
    for c in admin::set_cookies(Some(&id), sessions.ttl()) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[utoipa::path(get, path = "/api/v1/admin/session", tag = "admin",
    responses((status = 200, description = "the current session", body = super::schemas::SessionAnswer), (status = 401, description = "not signed in")))]
pub async fn session(
    State(node): State<Arc<Node>>,
    Extension(sessions): Extension<Arc<Sessions>>,
    method: axum::http::Method,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    match sessions.check(&method, &headers)? {
        Some((_, s)) => {
            let mut resp = Json(session_json(&node, &s)).into_response();
            resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
            Ok(resp)
        }
        None => Err(Error::unauthorized("not signed in").into()),
    }
}

#[utoipa::path(delete, path = "/api/v1/admin/session", tag = "admin",
    responses((status = 200, description = "signed out", body = super::schemas::SignedOutAnswer), (status = 401), (status = 403, description = "missing CSRF token")))]
pub async fn sign_out(
    Extension(sessions): Extension<Arc<Sessions>>,
    method: axum::http::Method,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let Some((id, _)) = sessions.check(&method, &headers)? else {
        return Err(Error::unauthorized("not signed in").into());
    };
    sessions.remove(&id);
    let mut resp = (StatusCode::OK, Json(json!({"signed_out": true}))).into_response();
    for c in admin::set_cookies(None, sessions.ttl()) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(resp)
}

#[utoipa::path(get, path = "/api/v1/users/{user_id}/connections", tag = "users", params(("user_id" = String, Path)),
    responses((status = 200, description = "{\"connections\":[{\"conn_id\",\"user_id\",\"client_id\",\"node\",\"ip\",\"user_agent\",\"app_version\",\"connected_at\",\"rooms\",\"meta\"}]}", body = super::schemas::ConnectionsAnswer),
        (status = 400), (status = 401)))]
pub async fn connections(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    node.check_name("user_id", &user)?;
    let list = node.presence.connections(&user).await?;
    Ok(Json(json!({"user_id": user, "connections": list})))
}

#[utoipa::path(get, path = "/api/v1/nodes", tag = "stats",
    responses((status = 200, description = "{\"nodes\":[{\"instance_id\",\"connections\",\"users\",\"rooms\",\"messages_in\",\"messages_out\",\"uptime_s\",\"updated_at\"}]}: every live node, in id order (in cluster mode the other nodes' figures are up to about a second old)", body = super::schemas::NodesAnswer),
        (status = 401), (status = 503)))]
pub async fn nodes(State(node): State<Arc<Node>>, _key: ApiKey) -> ApiResult<Json<Value>> {
    let me = crate::presence::NodeFigures::of(&node.hub, &node.instance_id);
    let list = node.presence.nodes(me).await?;
    Ok(Json(json!({"nodes": list})))
}

#[derive(Deserialize, IntoParams)]
pub struct StreamQuery {
    /// Latest messages to show (default 20, at most limits.max_page).
    pub limit: Option<usize>,
}

/// Devices listed per user on the stream view.
const MAX_DEVICES_SHOWN: usize = 200;

#[utoipa::path(get, path = "/api/v1/users/{user_id}/stream", tag = "users", params(("user_id" = String, Path), StreamQuery),
    responses((status = 200, description = "{\"user_id\",\"head\",\"first\",\"devices\":[{\"client_id\",\"cursor\",\"cursor_seq\",\"lag\",\"connected\"}] (connected: open connections of the device on any node),\"events\":[latest first]}", body = super::schemas::StreamAnswer),
        (status = 400), (status = 401)))]
pub async fn stream(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    Path(user): Path<String>,
    Query(q): Query<StreamQuery>,
) -> ApiResult<Json<Value>> {
    node.check_name("user_id", &user)?;
    // Without a limit: the latest 20 (fewer when `limits.max_page` is lower).
    let limit = match q.limit {
        Some(n) => page_limit(&node, Some(n))?,
        None => 20.min(node.cfg.limits.max_page),
    };
    let head = node.store.read_user(&user, u64::MAX, 0).await.map_err(ApiError::from)?;
    let after = head.head.saturating_sub(limit as u64).max(head.first.saturating_sub(1));
    let page = node.store.read_user(&user, after, limit).await?;
    let mut events = events_json(&node, StreamKey::User(&user), "user", &page.events);
    events.reverse();
    let open = node.presence.connections(&user).await?;
    let devices: Vec<Value> = node
        .store
        .cursors(&user, MAX_DEVICES_SHOWN)
        .await?
        .into_iter()
        .map(|(client, cursor)| {
            let connected = open.iter().filter(|c| c["client_id"].as_str() == Some(client.as_str())).count();
            json!({
                "client_id": client,
                "cursor": crate::store::EventId::format(node.epoch(), StreamKey::User(&user), cursor),
                "cursor_seq": cursor,
                "lag": head.head.saturating_sub(cursor),
                "connected": connected,
            })
        })
        .collect();
    Ok(Json(json!({
        "user_id": user,
        "head": head.head,
        "first": head.first,
        "devices": devices,
        "events": events,
    })))
}
