//! The offline API: a device (with its user's JWT) or a backend (API key + `?user_id=`)
//! pulls stored messages, acknowledges them and counts what is left.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::error::ApiResult;
use super::extract::{JsonBody, OfflineCaller, Query};
use super::query::{events_json, page_limit, EventJson};
use crate::error::Error;
use crate::node::Node;
use crate::store::{EventId, StreamKey};

#[derive(Deserialize, IntoParams)]
pub struct MessagesQuery {
    /// Start after this device's cursor.
    pub client_id: Option<String>,
    /// Start after this id (overrides the cursor).
    pub since: Option<String>,
    pub limit: Option<usize>,
    /// With an API key: the user (read by the `OfflineCaller` extractor).
    #[allow(dead_code)]
    pub user_id: Option<String>,
}

/// The cursor of a known device; unknown client ids are an error, not a silent restart.
async fn known_cursor(node: &Node, user: &str, client_id: &str) -> Result<u64, Error> {
    node.check_name("client_id", client_id)?;
    node.streams.known_cursor(user, client_id).await
}

#[utoipa::path(get, path = "/api/v1/offline/messages", tag = "offline", params(MessagesQuery),
    responses((status = 200, description = "{\"events\":[..],\"next\",\"more\",\"trimmed\"}", body = super::schemas::MessagesAnswer), (status = 400), (status = 401), (status = 403), (status = 404), (status = 429)))]
pub async fn messages(
    State(node): State<Arc<Node>>,
    caller: OfflineCaller,
    Query(q): Query<MessagesQuery>,
) -> ApiResult<Response> {
    let key = StreamKey::User(&caller.user);
    let limit = page_limit(&node, q.limit)?;
    if let Some(c) = &q.client_id {
        // Checked even when `since` makes the cursor unneeded: one rule for every name.
        node.check_name("client_id", c)?;
        caller.check_client(c)?;
    }
    let after = match (&q.since, &q.client_id) {
        (Some(s), _) => EventId::parse(s, node.epoch(), key)?,
        (None, Some(c)) => known_cursor(&node, &caller.user, c).await?,
        (None, None) => 0,
    };
    let page = node.store.read_user(&caller.user, after, limit).await?;
    if after > page.head {
        return Err(Error::invalid("since is ahead of this user's stream").into());
    }
    let trimmed = page.first.saturating_sub(1).saturating_sub(after);
    let events = events_json(&node, key, "user", &page.events);
    let next = page.events.last().map(|e| EventId::format(node.epoch(), key, e.seq));
    let more = page.events.last().is_some_and(|e| e.seq < page.head);
    // Serialized as a struct, not through `json!`, so each `data` stays byte-exact.
    Ok(Json(MessagesPage { events, next, more, trimmed }).into_response())
}

#[derive(serde::Serialize)]
struct MessagesPage<'a> {
    events: Vec<EventJson<'a>>,
    next: Option<String>,
    more: bool,
    trimmed: u64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    pub client_id: String,
    pub id: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBatchBody {
    pub client_id: String,
    pub ids: Vec<String>,
}

async fn ack_to(node: &Node, user: &str, client_id: &str, seq: u64) -> ApiResult<Json<Value>> {
    node.check_name("client_id", client_id)?;
    let cursor = node.streams.ack_seq(user, client_id, seq).await?;
    Ok(Json(json!({"ok": true, "cursor": cursor})))
}

#[utoipa::path(post, path = "/api/v1/offline/ack", tag = "offline", request_body = AckBody,
    responses((status = 200, description = "{\"ok\":true,\"cursor\"}", body = super::schemas::AckAnswer), (status = 400), (status = 401), (status = 403), (status = 404)))]
pub async fn ack(
    State(node): State<Arc<Node>>,
    caller: OfflineCaller,
    body: JsonBody<AckBody>,
) -> ApiResult<Json<Value>> {
    let b = body.value;
    caller.check_client(&b.client_id)?;
    let seq = EventId::parse(&b.id, node.epoch(), StreamKey::User(&caller.user))?;
    ack_to(&node, &caller.user, &b.client_id, seq).await
}

#[utoipa::path(post, path = "/api/v1/offline/ack/batch", tag = "offline", request_body = AckBatchBody,
    responses((status = 200, description = "{\"ok\":true,\"cursor\"}; acks are cumulative, the highest id wins", body = super::schemas::AckAnswer), (status = 400), (status = 401), (status = 403), (status = 404)))]
pub async fn ack_batch(
    State(node): State<Arc<Node>>,
    caller: OfflineCaller,
    body: JsonBody<AckBatchBody>,
) -> ApiResult<Json<Value>> {
    let b = body.value;
    caller.check_client(&b.client_id)?;
    let max = node.cfg.limits.max_page;
    if b.ids.is_empty() || b.ids.len() > max {
        return Err(Error::invalid(format!("ids must have 1 to {max} entries")).into());
    }
    // Every id is checked before anything changes.
    let mut top = 0;
    for id in &b.ids {
        top = top.max(EventId::parse(id, node.epoch(), StreamKey::User(&caller.user))?);
    }
    ack_to(&node, &caller.user, &b.client_id, top).await
}

#[derive(Deserialize, IntoParams)]
pub struct CountQuery {
    pub client_id: Option<String>,
    /// With an API key: the user (read by the `OfflineCaller` extractor).
    #[allow(dead_code)]
    pub user_id: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/offline/count", tag = "offline", params(CountQuery),
    responses((status = 200, description = "{\"count\"}", body = super::schemas::CountAnswer), (status = 401), (status = 403), (status = 404)))]
pub async fn count(
    State(node): State<Arc<Node>>,
    caller: OfflineCaller,
    Query(q): Query<CountQuery>,
) -> ApiResult<Json<Value>> {
    let after = match &q.client_id {
        Some(c) => {
            caller.check_client(c)?;
            known_cursor(&node, &caller.user, c).await?
        }
        None => 0,
    };
    let page = node.store.read_user(&caller.user, u64::MAX, 0).await?;
    let count = page.head.saturating_sub(after.max(page.first.saturating_sub(1)));
    Ok(Json(json!({"count": count})))
}
