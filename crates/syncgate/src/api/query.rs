//! Read endpoints for backends: presence, room history, online users, stats; and the
//! disconnect command.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use utoipa::IntoParams;

use super::error::ApiResult;
use super::extract::{ApiKey, Path, Query};
use crate::error::Error;
use crate::node::Node;
use crate::store::{EventId, StoredEvent, StreamKey};

/// A stored event as the contract's event object, with `data` exactly as published.
#[derive(serde::Serialize)]
pub struct EventJson<'a> {
    pub id: String,
    pub stream: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub data: &'a RawValue,
    pub ts: i64,
}

/// Renders stored events as the contract's event objects. `data` is the stored raw JSON,
/// byte for byte (never re-serialized through a JSON value, which would change duplicate
/// keys, big integers, long decimals, `-0` or lone surrogate escapes).
pub fn events_json<'a>(
    node: &Node,
    key: StreamKey<'_>,
    label: &'a str,
    events: &'a [StoredEvent],
) -> Vec<EventJson<'a>> {
    events
        .iter()
        .map(|e| {
            // Stored data was validated as JSON at publish; anything else renders as null.
            let data = std::str::from_utf8(&e.data).ok().and_then(|t| serde_json::from_str::<&RawValue>(t).ok());
            EventJson {
                id: EventId::format(node.epoch(), key, e.seq),
                stream: label,
                kind: &e.kind,
                data: data.unwrap_or(RawValue::NULL),
                ts: e.ts,
            }
        })
        .collect()
}

#[derive(serde::Serialize)]
struct EventsPage<'a> {
    events: Vec<EventJson<'a>>,
}

#[derive(Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// Return events after this id.
    pub since: Option<String>,
    /// At most this many (default 100, at most limits.max_page).
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/rooms/{room}/presence", tag = "rooms", params(("room" = String, Path)),
    responses((status = 200, description = "{\"room\",\"users\",\"connections\"}", body = super::schemas::PresenceAnswer), (status = 401)))]
pub async fn presence(State(node): State<Arc<Node>>, _key: ApiKey, Path(room): Path<String>) -> ApiResult<Json<Value>> {
    node.check_name("room", &room)?;
    let p = node.presence.room(&room).await?;
    Ok(Json(json!({"room": room, "users": p.users, "connections": p.connections})))
}

#[utoipa::path(get, path = "/api/v1/rooms/{room}/history", tag = "rooms", params(("room" = String, Path), HistoryQuery),
    responses((status = 200, description = "{\"events\":[..]}", body = super::schemas::HistoryAnswer), (status = 400), (status = 401)))]
pub async fn history(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    Path(room): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Response> {
    node.check_name("room", &room)?;
    let key = StreamKey::Room(&room);
    let after = match &q.since {
        Some(s) => EventId::parse(s, node.epoch(), key)?,
        None => 0,
    };
    let limit = page_limit(&node, q.limit)?;
    let page = node.store.read_room(&room, after, limit).await?;
    if after > page.head {
        return Err(Error::invalid("since is ahead of the room's history").into());
    }
    let label = format!("room:{room}");
    let events = events_json(&node, key, &label, &page.events);
    Ok(Json(EventsPage { events }).into_response())
}

pub fn page_limit(node: &Node, limit: Option<usize>) -> Result<usize, Error> {
    let max = node.cfg.limits.max_page;
    match limit {
        None => Ok(100.min(max)),
        Some(n) if n >= 1 && n <= max => Ok(n),
        Some(_) => Err(Error::invalid(format!("limit must be 1 to {max}"))),
    }
}

#[utoipa::path(get, path = "/api/v1/users/{user_id}/online", tag = "users", params(("user_id" = String, Path)),
    responses((status = 200, description = "{\"user_id\",\"online\",\"connections\"}", body = super::schemas::OnlineAnswer), (status = 401)))]
pub async fn user_online(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    Path(user): Path<String>,
) -> ApiResult<Json<Value>> {
    node.check_name("user_id", &user)?;
    let n = node.presence.user_connections(&user).await?;
    Ok(Json(json!({"user_id": user, "online": n > 0, "connections": n})))
}

#[derive(Deserialize, IntoParams)]
pub struct DisconnectQuery {
    /// Close only this device (its client id); absent: every device of the user.
    pub client_id: Option<String>,
    /// Close only this connection (a `conn_id` of the connections API; needs `node`).
    pub conn_id: Option<u64>,
    /// The node of `conn_id` (its `node` in the connections API).
    pub node: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/users/{user_id}/disconnect", tag = "users", params(("user_id" = String, Path), DisconnectQuery),
    responses((status = 200, description = "{\"disconnected\":n} (closed on this node; the other nodes close theirs)", body = super::schemas::DisconnectAnswer), (status = 401), (status = 503, description = "the broker cannot reach the other nodes")))]
pub async fn disconnect(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    Path(user): Path<String>,
    Query(q): Query<DisconnectQuery>,
) -> ApiResult<Json<Value>> {
    node.check_name("user_id", &user)?;
    let n = match (&q.client_id, q.conn_id, &q.node) {
        (Some(c), None, None) => {
            node.check_name("client_id", c)?;
            node.disconnect_device(&user, c).await?
        }
        (None, Some(id), Some(at)) => {
            node.check_name("node", at)?;
            node.disconnect_conn(&user, at, id).await?
        }
        (None, None, None) => node.disconnect_user(&user).await?,
        _ => return Err(Error::invalid("give client_id, or conn_id with node, or neither").into()),
    };
    Ok(Json(json!({"disconnected": n})))
}

#[derive(Deserialize, IntoParams)]
pub struct OnlineQuery {
    /// Page size (default 100, at most limits.max_page).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/online-users", tag = "users", params(OnlineQuery),
    responses((status = 200, description = "{\"users\":[..],\"next_cursor\"}", body = super::schemas::OnlineUsersAnswer), (status = 400), (status = 401)))]
pub async fn online_users(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    Query(q): Query<OnlineQuery>,
) -> ApiResult<Json<Value>> {
    let limit = page_limit(&node, q.limit)?;
    let (users, next) = node.presence.online_users(q.cursor.as_deref(), limit).await?;
    Ok(Json(json!({"users": users, "next_cursor": next})))
}

#[utoipa::path(get, path = "/api/v1/stats", tag = "stats",
    responses((status = 200, description = "connections, users, rooms, messages in/out, instance_id, uptime", body = super::schemas::StatsAnswer), (status = 401)))]
pub async fn stats(State(node): State<Arc<Node>>, _key: ApiKey) -> ApiResult<Json<Value>> {
    let (connections, users, rooms) = node.hub.counts();
    let m = &node.metrics;
    Ok(Json(json!({
        "instance_id": node.instance_id,
        "connections": connections,
        "users": users,
        "rooms": rooms,
        "messages_in": m.messages_in_total(),
        "messages_out": m.messages_out.get(),
        "slow_consumer_closes": m.slow_consumer_closes.get(),
        "uptime_s": node.started.elapsed().as_secs(),
    })))
}

#[utoipa::path(get, path = "/api/v1/stats/pubsub", tag = "stats",
    responses((status = 200, description = "published, received, dropped_own, failed, reconnects", body = super::schemas::PubsubStatsAnswer), (status = 401)))]
pub async fn pubsub_stats(State(node): State<Arc<Node>>, _key: ApiKey) -> ApiResult<Json<Value>> {
    Ok(Json(serde_json::to_value(node.broker.stats()).unwrap_or(Value::Null)))
}

#[utoipa::path(get, path = "/api/v1/offline/stats", tag = "offline",
    responses((status = 200, description = "stored_messages, streams, oldest_age_ms, cursors", body = super::schemas::OfflineStatsAnswer), (status = 401)))]
pub async fn offline_stats(State(node): State<Arc<Node>>, _key: ApiKey) -> ApiResult<Json<Value>> {
    let s = node.store.stats().await?;
    Ok(Json(serde_json::to_value(s).unwrap_or(Value::Null)))
}
