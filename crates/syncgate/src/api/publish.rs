//! Publishing endpoints for backends: to users, to many users, to everyone, to a room;
//! with Idempotency-Key support.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::error::ApiResult;
use super::extract::{ApiKey, JsonBody, Path};
use crate::error::{Code, Error};
use crate::node::{Message, Node};
use crate::store::{IdemRecord, Store};

/// Message priority: carried in live event frames (`"priority"`, written when not normal);
/// delivery order is per stream regardless.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserEvent {
    /// Recipient user id.
    pub user_id: String,
    /// Message type (checked against `messages.allowed_types`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Any JSON value.
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    /// Keep in the user's durable stream (default true); false = live only.
    pub persist: Option<bool>,
    /// Drop from the stream after this many seconds (shorter than retention).
    pub ttl_s: Option<u64>,
    /// Carried in the live event frame; delivery order is per stream whatever the priority.
    pub priority: Option<Priority>,
    /// Publish this many seconds from now, through the outbound queue (answered with a job id).
    pub delay_s: Option<u64>,
    /// Publish at this unix time in ms, through the outbound queue (answered with a job id).
    pub deliver_at: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchEvent {
    pub user_ids: Vec<String>,
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    pub persist: Option<bool>,
    pub ttl_s: Option<u64>,
    /// Carried in the live event frame; delivery order is per stream whatever the priority.
    pub priority: Option<Priority>,
    /// As on POST /api/v1/events.
    pub delay_s: Option<u64>,
    /// As on POST /api/v1/events.
    pub deliver_at: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BroadcastEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    /// Carried in the live event frame; delivery order is per stream whatever the priority.
    pub priority: Option<Priority>,
    /// Only connections whose token `meta` (or `app_version`) has, for every key, that value
    /// or one of the listed values: `{"region": ["eu", "us"], "plan": "pro"}`.
    #[serde(rename = "where")]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Value>,
}

/// Largest `where` filter, in bytes of compact JSON.
pub const MAX_WHERE_BYTES: usize = 4096;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    /// Keep in the room's history (default true).
    pub persist: Option<bool>,
    pub ttl_s: Option<u64>,
    /// Carried in the live event frame; delivery order is per stream whatever the priority.
    pub priority: Option<Priority>,
    /// As on POST /api/v1/events.
    pub delay_s: Option<u64>,
    /// As on POST /api/v1/events.
    pub deliver_at: Option<i64>,
}

fn message<'a>(
    node: &Node,
    kind: &'a str,
    data: &RawValue,
    persist: Option<bool>,
    ttl_s: Option<u64>,
    priority: Option<Priority>,
) -> Result<Message<'a>, Error> {
    node.check_type(kind)?;
    if ttl_s == Some(0) {
        return Err(Error::invalid("ttl_s must be at least 1"));
    }
    Ok(Message {
        kind,
        data: Bytes::copy_from_slice(data.get().as_bytes()),
        persist: persist.unwrap_or(true),
        ttl: ttl_s.map(Duration::from_secs),
        priority: match priority.unwrap_or_default() {
            Priority::Low => crate::event::Priority::Low,
            Priority::Normal => crate::event::Priority::Normal,
            Priority::High => crate::event::Priority::High,
        },
        except: None,
    })
}

/// When a delayed publish is due (unix ms), or `None` to publish now (no delay, or a
/// `deliver_at` already past).
fn deliver_time(node: &Node, delay_s: Option<u64>, deliver_at: Option<i64>) -> Result<Option<i64>, Error> {
    let max = node.cfg.queue.max_delay;
    let now = crate::queue::now_ms();
    let at = match (delay_s, deliver_at) {
        (Some(_), Some(_)) => return Err(Error::invalid("give delay_s or deliver_at, not both")),
        (None, None) | (Some(0), None) => return Ok(None),
        (Some(d), None) => now.saturating_add(i64::try_from(d.saturating_mul(1000)).unwrap_or(i64::MAX)),
        (None, Some(at)) if at <= now => return Ok(None),
        (None, Some(at)) => at,
    };
    if at - now > max.as_millis() as i64 {
        return Err(Error::invalid(format!("a publish may be delayed by at most {}", humantime::format_duration(max))));
    }
    Ok(Some(at))
}

fn later(
    user_ids: Vec<String>,
    room: Option<String>,
    msg: &Message<'_>,
    data: &RawValue,
    ttl_s: Option<u64>,
) -> crate::delayed::DelayedPublish {
    crate::delayed::DelayedPublish {
        user_ids,
        room,
        kind: msg.kind.to_string(),
        data: data.to_owned(),
        persist: msg.persist,
        ttl_s,
        priority: Some(msg.priority.as_str().to_string()),
    }
}

/// Queues a delayed publish: 202 `{"job_id","deliver_at"}`.
async fn schedule(node: &Node, p: crate::delayed::DelayedPublish, at: i64) -> ApiResult<serde_json::Value> {
    let prio =
        p.priority.as_deref().and_then(crate::queue::Priority::of_publish).unwrap_or(crate::queue::Priority::Normal);
    let payload = serde_json::to_vec(&p).map_err(|e| Error::internal(e.to_string()))?;
    let job = crate::queue::NewJob::new(crate::queue::JobKind::Publish, crate::delayed::ENDPOINT, payload)
        .priority(prio)
        .not_before(at);
    let id = node.workers.enqueue(job).await.map_err(Error::from)?;
    Ok(json!({"job_id": id, "deliver_at": at}))
}

/// Runs `publish` under the request's Idempotency-Key, if it has one.
async fn idempotent<F>(
    node: &Node,
    key: &ApiKey,
    headers: &HeaderMap,
    route: &str,
    raw: &Bytes,
    publish: F,
) -> ApiResult<Response>
where
    F: std::future::Future<Output = ApiResult<serde_json::Value>>,
{
    let Some(idem) = headers.get("idempotency-key") else {
        let body = publish.await?;
        return Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response());
    };
    let idem = idem
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| Error::invalid("Idempotency-Key must be 1 to 255 visible ASCII characters"))?;
    let scope = idempotency_scope(&key.fingerprint, route, idem);
    let hash = request_hash(route, raw);
    let echo = HeaderValue::from_str(idem).unwrap_or(HeaderValue::from_static(""));
    // Claimed in the store, so exactly one of concurrent same-key requests runs, on any node.
    if let Some(rec) = node.store.idem_claim(&scope, hash, node.cfg.store.idempotency_lease).await? {
        return replay(rec, hash, echo);
    }
    let claim = Claim { node: node.store.clone(), scope: Some(scope) };
    let body = match publish.await {
        Ok(body) => body,
        Err(e) => {
            // A failed answer is not remembered: the caller may retry with the same key.
            claim.release().await;
            return Err(e);
        }
    };
    let bytes = Bytes::from(body.to_string());
    let record = IdemRecord { request_hash: hash, status: StatusCode::ACCEPTED.as_u16(), body: bytes.clone() };
    if let Err(e) = claim.answer(record).await {
        tracing::warn!(error = %e, "could not store idempotency key");
    }
    let mut resp = (StatusCode::ACCEPTED, [("content-type", "application/json")], bytes).into_response();
    resp.headers_mut().insert("idempotency-key", echo);
    Ok(resp)
}

/// A claimed Idempotency-Key: answered, released, or (request dropped midway, e.g. the
/// client went away) released in the background.
struct Claim {
    node: Arc<dyn Store>,
    scope: Option<String>,
}

impl Claim {
    async fn answer(mut self, record: IdemRecord) -> Result<(), crate::store::StoreError> {
        let Some(scope) = self.scope.take() else { return Ok(()) };
        self.node.idem_put(&scope, record).await.map(|_| ())
    }

    async fn release(mut self) {
        if let Some(scope) = self.scope.take() {
            if let Err(e) = self.node.idem_release(&scope).await {
                tracing::warn!(error = %e, "could not release an idempotency claim (it expires with its lease)");
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(scope) = self.scope.take() {
            let store = self.node.clone();
            tokio::spawn(async move {
                let _ = store.idem_release(&scope).await;
            });
        }
    }
}

fn replay(rec: IdemRecord, hash: u64, echo: HeaderValue) -> ApiResult<Response> {
    if rec.request_hash != hash {
        return Err(
            Error::new(Code::IdempotencyConflict, "this Idempotency-Key was used with another request body").into()
        );
    }
    if rec.status == 0 {
        let mut resp = super::error::ApiError::from(Error::new(
            Code::IdempotencyConflict,
            "a request with this Idempotency-Key is still in progress; retry to get its answer",
        ))
        .into_response();
        resp.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
        resp.headers_mut().insert("idempotency-key", echo);
        return Ok(resp);
    }
    let status = StatusCode::from_u16(rec.status).unwrap_or(StatusCode::ACCEPTED);
    let mut resp = (status, [("content-type", "application/json")], rec.body).into_response();
    resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp.headers_mut().insert("idempotency-key", echo);
    Ok(resp)
}

/// The store key of an Idempotency-Key: caller, route and key, each length-prefixed, so no
/// two different (route, key) pairs share a record (route `rooms/a:b` with key `K1` and
/// route `rooms/a` with key `b:K1` joined with `:` would).
fn idempotency_scope(fingerprint: &str, route: &str, key: &str) -> String {
    format!("{}:{fingerprint}:{}:{route}:{}:{key}", fingerprint.len(), route.len(), key.len())
}

/// A stable hash of the request (route and body), kept with the key.
fn request_hash(route: &str, raw: &[u8]) -> u64 {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(route.as_bytes());
    h.update([0]);
    h.update(raw);
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

#[utoipa::path(post, path = "/api/v1/events", tag = "publish", request_body = UserEvent,
    params(("Idempotency-Key" = Option<String>, Header, description = "replay-safe publishing")),
    responses((status = 202, description = "accepted; body {\"id\"}, or {\"job_id\",\"deliver_at\"} for a delayed publish", body = super::schemas::PublishAnswer), (status = 400), (status = 401), (status = 409), (status = 413), (status = 429), (status = 503)))]
pub async fn events(
    State(node): State<Arc<Node>>,
    key: ApiKey,
    headers: HeaderMap,
    body: JsonBody<UserEvent>,
) -> ApiResult<Response> {
    let b = &body.value;
    idempotent(&node, &key, &headers, "events", &body.raw, async {
        node.check_name("user_id", &b.user_id)?;
        let msg = message(&node, &b.kind, &b.data, b.persist, b.ttl_s, b.priority)?;
        if let Some(at) = deliver_time(&node, b.delay_s, b.deliver_at)? {
            let later = later(vec![b.user_id.clone()], None, &msg, &b.data, b.ttl_s);
            return schedule(&node, later, at).await;
        }
        let ids = node.publish_users(std::slice::from_ref(&b.user_id), msg).await?;
        node.count_in("api", 1);
        Ok(json!({"id": ids.into_iter().next()}))
    })
    .await
}

#[utoipa::path(post, path = "/api/v1/events/batch", tag = "publish", request_body = BatchEvent,
    params(("Idempotency-Key" = Option<String>, Header, description = "replay-safe publishing")),
    responses((status = 202, description = "accepted; body {\"ids\":{user_id:id}}, or {\"job_id\",\"deliver_at\"} for a delayed publish", body = super::schemas::BatchAnswer), (status = 400), (status = 401), (status = 409), (status = 413), (status = 429), (status = 503)))]
pub async fn batch(
    State(node): State<Arc<Node>>,
    key: ApiKey,
    headers: HeaderMap,
    body: JsonBody<BatchEvent>,
) -> ApiResult<Response> {
    let b = &body.value;
    idempotent(&node, &key, &headers, "batch", &body.raw, async {
        let max = node.cfg.limits.max_batch_users;
        if b.user_ids.is_empty() || b.user_ids.len() > max {
            return Err(Error::invalid(format!("user_ids must have 1 to {max} entries")).into());
        }
        let mut users = b.user_ids.clone();
        users.sort();
        users.dedup();
        // Each user's stream stores its own copy of data: cap what one request can write.
        let max_bytes = node.cfg.limits.max_batch_bytes;
        let total = b.data.get().len().saturating_mul(users.len());
        if total > max_bytes {
            return Err(Error::new(
                Code::PayloadTooLarge,
                format!(
                    "this batch would store {total} bytes (data size x {} users); the limit is limits.max_batch_bytes = {max_bytes}: send fewer users per batch or a smaller data",
                    users.len()
                ),
            )
            .into());
        }
        for u in &users {
            node.check_name("user_id", u)?;
        }
        let msg = message(&node, &b.kind, &b.data, b.persist, b.ttl_s, b.priority)?;
        if let Some(at) = deliver_time(&node, b.delay_s, b.deliver_at)? {
            let later = later(users.clone(), None, &msg, &b.data, b.ttl_s);
            return schedule(&node, later, at).await;
        }
        let ids = node.publish_users(&users, msg).await?;
        node.count_in("api", users.len() as u64);
        let map: BTreeMap<&String, String> = users.iter().zip(ids).collect();
        Ok(json!({"ids": map}))
    })
    .await
}

#[utoipa::path(post, path = "/api/v1/events/broadcast", tag = "publish", request_body = BroadcastEvent,
    params(("Idempotency-Key" = Option<String>, Header, description = "replay-safe publishing")),
    responses((status = 202, description = "accepted; body {\"id\"}", body = super::schemas::IdAnswer), (status = 400), (status = 401), (status = 409), (status = 413), (status = 429), (status = 503)))]
pub async fn broadcast(
    State(node): State<Arc<Node>>,
    key: ApiKey,
    headers: HeaderMap,
    body: JsonBody<BroadcastEvent>,
) -> ApiResult<Response> {
    let b = &body.value;
    idempotent(&node, &key, &headers, "broadcast", &body.raw, async {
        let mut msg = message(&node, &b.kind, &b.data, Some(false), None, b.priority)?;
        msg.persist = false;
        let filter = match &b.filter {
            None => crate::meta::Where::default(),
            Some(v) => {
                if v.to_string().len() > MAX_WHERE_BYTES {
                    return Err(Error::invalid(format!("where is larger than {MAX_WHERE_BYTES} bytes")).into());
                }
                crate::meta::Where::parse(v).map_err(Error::invalid)?
            }
        };
        let id = node.broadcast_where(msg, filter).await?;
        node.count_in("api", 1);
        Ok(json!({"id": id}))
    })
    .await
}

#[utoipa::path(post, path = "/api/v1/rooms/{room}/events", tag = "publish", request_body = RoomEvent,
    params(("room" = String, Path), ("Idempotency-Key" = Option<String>, Header, description = "replay-safe publishing")),
    responses((status = 202, description = "accepted; body {\"id\"}, or {\"job_id\",\"deliver_at\"} for a delayed publish", body = super::schemas::PublishAnswer), (status = 400), (status = 401), (status = 409), (status = 413), (status = 429), (status = 503)))]
pub async fn room_events(
    State(node): State<Arc<Node>>,
    key: ApiKey,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: JsonBody<RoomEvent>,
) -> ApiResult<Response> {
    let b = &body.value;
    let route = format!("rooms/{room}");
    idempotent(&node, &key, &headers, &route, &body.raw, async {
        node.check_name("room", &room)?;
        let msg = message(&node, &b.kind, &b.data, b.persist, b.ttl_s, b.priority)?;
        if let Some(at) = deliver_time(&node, b.delay_s, b.deliver_at)? {
            let later = later(Vec::new(), Some(room.clone()), &msg, &b.data, b.ttl_s);
            return schedule(&node, later, at).await;
        }
        let id = node.publish_room(&room, msg).await?;
        node.count_in("api", 1);
        Ok(json!({"id": id}))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::idempotency_scope;

    #[test]
    fn scopes_do_not_collide() {
        assert_ne!(idempotency_scope("fp", "rooms/a:b", "K1"), idempotency_scope("fp", "rooms/a", "b:K1"));
        assert_ne!(idempotency_scope("f:p", "r", "k"), idempotency_scope("f", "p:r", "k"));
        assert_eq!(idempotency_scope("fp", "events", "k"), idempotency_scope("fp", "events", "k"));
    }
}
