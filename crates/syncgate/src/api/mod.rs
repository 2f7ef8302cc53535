//! The HTTP side of a node: the server API for backends, the offline API for devices,
//! operations endpoints, and the WebSocket upgrade route, on one router.
//!
//! Owns: routing, the request middleware (X-Request-Id, JSON request logs, per-route
//! metrics, rate-limit headers), CORS, and the OpenAPI document (`/openapi.json`, built from
//! the handlers' annotations; a test checks every route is in it).
//!
//! Must never: publish or read anything except through the node, or answer an error in
//! another shape than `{"error":{"code","message"}}`.

mod admin;
mod cors;
pub mod error;
pub mod extract;
mod offline;
mod publish;
mod push;
mod query;
mod queue;
mod schemas;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;
use utoipa::OpenApi;

use crate::error::Error;
use crate::metrics::HttpLabels;
use crate::node::Node;
use error::ErrorResponses;

#[derive(OpenApi)]
#[openapi(
    info(title = "syncgate HTTP API", description = "Server API for backends, offline API for devices, operations endpoints. See docs/http-api.md."),
    paths(
        publish::events, publish::batch, publish::broadcast, publish::room_events,
        query::presence, query::history, query::user_online, query::disconnect, query::online_users,
        query::stats, query::pubsub_stats, query::offline_stats,
        offline::messages, offline::ack, offline::ack_batch, offline::count,
        queue::stats, queue::dead, queue::retry_one, queue::retry_all, queue::delete,
        push::register, push::list, push::unregister,
        health, ready, metrics, openapi_json,
        admin::sign_in, admin::session, admin::sign_out, admin::connections, admin::stream, admin::nodes,
        crate::admin::assets::index, crate::admin::assets::asset,
    ),
    components(schemas(publish::UserEvent, publish::BatchEvent, publish::BroadcastEvent, publish::RoomEvent, publish::Priority, offline::AckBody, offline::AckBatchBody, push::RegisterBody, crate::push::Provider, crate::push::Subscription, crate::push::SubscriptionKeys, admin::SignIn)),
    modifiers(&SecurityAddon, &ErrorResponses),
)]
pub struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route of the router, as (method, OpenAPI path). `/ws` is documented in
/// docs/protocol.md, not in OpenAPI (it is not a REST call).
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/v1/events"),
    ("post", "/api/v1/events/batch"),
    ("post", "/api/v1/events/broadcast"),
    ("post", "/api/v1/rooms/{room}/events"),
    ("get", "/api/v1/rooms/{room}/presence"),
    ("get", "/api/v1/rooms/{room}/history"),
    ("get", "/api/v1/users/{user_id}/online"),
    ("post", "/api/v1/users/{user_id}/disconnect"),
    ("get", "/api/v1/online-users"),
    ("get", "/api/v1/stats"),
    ("get", "/api/v1/stats/pubsub"),
    ("get", "/api/v1/offline/stats"),
    ("get", "/api/v1/offline/messages"),
    ("post", "/api/v1/offline/ack"),
    ("post", "/api/v1/offline/ack/batch"),
    ("get", "/api/v1/offline/count"),
    ("get", "/api/v1/queue/stats"),
    ("get", "/api/v1/queue/dead"),
    ("post", "/api/v1/queue/dead/{id}/retry"),
    ("post", "/api/v1/queue/dead/retry"),
    ("delete", "/api/v1/queue/dead/{id}"),
    ("post", "/api/v1/push/devices"),
    ("get", "/api/v1/push/devices"),
    ("delete", "/api/v1/push/devices/{client_id}"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("post", "/api/v1/admin/session"),
    ("get", "/api/v1/admin/session"),
    ("delete", "/api/v1/admin/session"),
    ("get", "/api/v1/users/{user_id}/connections"),
    ("get", "/api/v1/users/{user_id}/stream"),
    ("get", "/api/v1/nodes"),
    ("get", "/admin"),
    ("get", "/admin/assets/{file}"),
];

pub fn router(node: Arc<Node>) -> Router {
    let api = Router::new()
        .route("/api/v1/events", post(publish::events))
        .route("/api/v1/events/batch", post(publish::batch))
        .route("/api/v1/events/broadcast", post(publish::broadcast))
        .route("/api/v1/rooms/{room}/events", post(publish::room_events))
        .route("/api/v1/rooms/{room}/presence", get(query::presence))
        .route("/api/v1/rooms/{room}/history", get(query::history))
        .route("/api/v1/users/{user_id}/online", get(query::user_online))
        .route("/api/v1/users/{user_id}/disconnect", post(query::disconnect))
        .route("/api/v1/online-users", get(query::online_users))
        .route("/api/v1/stats", get(query::stats))
        .route("/api/v1/stats/pubsub", get(query::pubsub_stats))
        .route("/api/v1/offline/stats", get(query::offline_stats))
        .route("/api/v1/offline/messages", get(offline::messages))
        .route("/api/v1/offline/ack", post(offline::ack))
        .route("/api/v1/offline/ack/batch", post(offline::ack_batch))
        .route("/api/v1/offline/count", get(offline::count))
        .route("/api/v1/queue/stats", get(queue::stats))
        .route("/api/v1/queue/dead", get(queue::dead))
        .route("/api/v1/queue/dead/retry", post(queue::retry_all))
        .route("/api/v1/queue/dead/{id}/retry", post(queue::retry_one))
        .route("/api/v1/queue/dead/{id}", delete(queue::delete))
        .route("/api/v1/push/devices", post(push::register).get(push::list))
        .route("/api/v1/push/devices/{client_id}", delete(push::unregister))
        .route("/api/v1/users/{user_id}/connections", get(admin::connections))
        .route("/api/v1/users/{user_id}/stream", get(admin::stream))
        .route("/api/v1/nodes", get(admin::nodes));
    // The admin UI and its session. CORS (below) lets no other origin read a credentialed
    // answer or send X-CSRF-Token, and the session cookie is SameSite=Strict.
    let admin = Router::new()
        .route("/api/v1/admin/session", get(admin::session).post(admin::sign_in).delete(admin::sign_out))
        .route("/admin", get(crate::admin::assets::index))
        .route("/admin/assets/{file}", get(crate::admin::assets::asset));
    let front = Arc::new(Front {
        node: node.clone(),
        cors: cors::Cors::new(&node.cfg.server.cors_origins),
        sessions: Arc::new(crate::admin::Sessions::new(&node.cfg.admin)),
    });
    Router::new()
        .merge(api)
        .merge(admin)
        .route("/ws", get(crate::transport::upgrade))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // One middleware, outside the routes' method fallbacks, so a preflight (OPTIONS) to
        // any route is answered by CORS instead of 405. (Each layer on the router is cloned
        // for every request, hence one.)
        .layer(middleware::from_fn_with_state(front, observe))
        .with_state(node)
}

/// What the request middleware needs: the node, CORS, the admin UI's sessions.
struct Front {
    node: Arc<Node>,
    cors: cors::Cors,
    sessions: Arc<crate::admin::Sessions>,
}

/// Slot the auth extractors fill with the caller's rate-limit state, for response headers.
#[derive(Clone, Default)]
pub struct RateSlot(pub Arc<parking_lot::Mutex<Option<crate::limits::Allowed>>>);

/// Request id, JSON request log, metrics by route and status, rate-limit headers, CORS.
async fn observe(State(front): State<Arc<Front>>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let node = &front.node;
    let request_id = match req.headers().get("x-request-id") {
        Some(v) if !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(u8::is_ascii_graphic) => v.clone(),
        _ => {
            // A random (v4) UUID from the thread's RNG: `Uuid::new_v4` asks the kernel each time.
            let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
            let mut buf = uuid::Uuid::encode_buffer();
            HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf)).unwrap_or(HeaderValue::from_static("-"))
        }
    };
    let route =
        req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let allow_origin = front.cors.allow_origin(req.headers());
    let slot = RateSlot::default();
    let mut resp = if cors::Cors::is_preflight(&method, req.headers()) {
        front.cors.preflight(allow_origin)
    } else {
        req.extensions_mut().insert(slot.clone());
        req.extensions_mut().insert(front.sessions.clone());
        let mut resp = next.run(req).await;
        front.cors.decorate(resp.headers_mut(), allow_origin);
        resp
    };
    let status = resp.status().as_u16();
    let h = resp.headers_mut();
    h.insert("x-request-id", request_id.clone());
    if let Some(a) = *slot.0.lock() {
        h.entry("x-ratelimit-limit").or_insert(HeaderValue::from(a.limit));
        h.entry("x-ratelimit-remaining").or_insert(HeaderValue::from(a.remaining));
    }
    if route != "/ws" || status != 101 {
        tracing::info!(
            request_id = request_id.to_str().unwrap_or_default(),
            method = method_label(&method),
            route,
            status,
            latency_us = start.elapsed().as_micros() as u64,
            "http"
        );
    }
    node.metrics.http_requests.get_or_create(&HttpLabels { route, method: method_label(&method), status }).inc();
    resp
}

/// The metrics label of a request method: the standard methods by name, any other (a caller
/// can send any token as a method) folded into `other`, so callers cannot grow /metrics.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

async fn method_not_allowed() -> Response {
    let err = Error::new(crate::error::Code::InvalidRequest, "method not allowed on this route");
    (StatusCode::METHOD_NOT_ALLOWED, Json(error::body(&err))).into_response()
}

async fn not_found() -> Response {
    error::ApiError::from(Error::not_found("no such route")).into_response()
}

#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, description = "{\"status\":\"healthy\",\"instance_id\",\"timestamp\"}", body = schemas::HealthAnswer)))]
pub async fn health(State(node): State<Arc<Node>>) -> Json<serde_json::Value> {
    Json(json!({"status": "healthy", "instance_id": node.instance_id, "timestamp": crate::node::now_ms()}))
}

#[utoipa::path(get, path = "/ready", tag = "operations", responses((status = 200, description = "ready", body = schemas::ReadyAnswer), (status = 503, description = "not ready", body = schemas::ReadyAnswer)))]
pub async fn ready(State(node): State<Arc<Node>>) -> Response {
    let store_ok =
        tokio::time::timeout(std::time::Duration::from_secs(2), node.store.health()).await.is_ok_and(|r| r.is_ok());
    if node.is_ready() && store_ok {
        Json(json!({"status": "ready", "instance_id": node.instance_id})).into_response()
    } else {
        let reason = if node.is_shutting_down() { "shutting down" } else { "a dependency is unreachable" };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason, "instance_id": node.instance_id})),
        )
            .into_response()
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(node): State<Arc<Node>>) -> Response {
    if let Some((cache, buffer)) = node.store.memory() {
        node.metrics.store_cache_bytes.set(i64::try_from(cache).unwrap_or(i64::MAX));
        node.metrics.store_write_buffer_bytes.set(i64::try_from(buffer).unwrap_or(i64::MAX));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], node.metrics.render()).into_response()
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "this document")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
