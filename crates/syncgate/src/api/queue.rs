//! The queue API for backends and operators: stats, and the dead-letter queue (list, retry
//! one, retry all, delete).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::IntoParams;

use super::error::ApiResult;
use super::extract::{ApiKey, Query};
use crate::error::Error;
use crate::node::Node;
use crate::queue::{now_ms, DeadFilter, JobKind, Priority, QueueError};

impl From<QueueError> for Error {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Full { .. } => Error::unavailable(e.to_string()),
            QueueError::BadCursor => Error::invalid("cursor is not one a page of this list handed out"),
            QueueError::Unavailable(_) => {
                tracing::warn!(error = %e, "outbound queue unavailable");
                Error::unavailable("the outbound queue is unavailable; retry later")
            }
            QueueError::Internal(_) => {
                tracing::error!(error = %e, "outbound queue error");
                Error::internal("internal outbound queue error")
            }
        }
    }
}

#[utoipa::path(get, path = "/api/v1/queue/stats", tag = "queue", operation_id = "queue_stats",
    responses((status = 200, description = "{\"depth\":{\"express\",\"urgent\",\"normal\"},\"delayed\",\"in_flight\",\"dead\",\"oldest_age_ms\",\"max_jobs\",\"circuits\":[{\"endpoint\",\"state\",\"failures\"}]}", body = super::schemas::QueueStatsAnswer), (status = 401), (status = 503)))]
pub async fn stats(State(node): State<Arc<Node>>, _key: ApiKey) -> ApiResult<Json<Value>> {
    let s = node.workers.queue().stats().await?;
    node.workers.set_gauges(&s);
    let circuits: Vec<Value> = node
        .workers
        .breakers
        .snapshot(now_ms())
        .into_iter()
        .map(|(endpoint, state, failures)| json!({"endpoint": endpoint, "state": state, "failures": failures}))
        .collect();
    Ok(Json(json!({
        "depth": {
            "express": s.ready.get(Priority::Express),
            "urgent": s.ready.get(Priority::Urgent),
            "normal": s.ready.get(Priority::Normal),
        },
        "delayed": s.delayed,
        "in_flight": s.in_flight,
        "dead": s.dead,
        "oldest_age_ms": s.oldest_age_ms,
        "max_jobs": node.cfg.queue.max_jobs,
        "circuits": circuits,
    })))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeadQuery {
    /// At most this many (default 100, at most limits.max_page).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/queue/dead", tag = "queue", params(DeadQuery),
    responses((status = 200, description = "{\"jobs\":[{\"id\",\"kind\",\"endpoint\",\"priority\",\"attempts\",\"last_error\",\"created_at\",\"failed_at\",\"payload\"}],\"next_cursor\"}, newest failure first", body = super::schemas::DeadAnswer), (status = 400), (status = 401)))]
pub async fn dead(State(node): State<Arc<Node>>, _key: ApiKey, Query(q): Query<DeadQuery>) -> ApiResult<Json<Value>> {
    let max = node.cfg.limits.max_page;
    let limit = q.limit.unwrap_or(100.min(max));
    if limit == 0 || limit > max {
        return Err(Error::invalid(format!("limit must be 1 to {max}")).into());
    }
    let page = node.workers.queue().dead(limit, q.cursor.as_deref()).await?;
    let jobs: Vec<Value> = page
        .jobs
        .into_iter()
        .map(|d| {
            let payload: Value = serde_json::from_slice(&d.job.payload).unwrap_or(Value::Null);
            json!({
                "id": d.job.id, "kind": d.job.kind, "endpoint": d.job.endpoint, "priority": d.job.priority,
                "attempts": d.job.attempts, "last_error": d.job.last_error, "created_at": d.job.created_at,
                "failed_at": d.failed_at, "payload": payload,
            })
        })
        .collect();
    Ok(Json(json!({"jobs": jobs, "next_cursor": page.next_cursor})))
}

#[utoipa::path(post, path = "/api/v1/queue/dead/{id}/retry", tag = "queue", params(("id" = String, Path)),
    responses((status = 200, description = "{\"retried\":1}; queued again, due now, with fresh attempts", body = super::schemas::RetriedAnswer), (status = 401), (status = 404), (status = 503)))]
pub async fn retry_one(State(node): State<Arc<Node>>, _key: ApiKey, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let retried = node.workers.queue().retry_dead(&id).await.map_err(|e| match e {
        QueueError::Full { .. } => Error::unavailable(format!("{e}: dead letter {id:?} is kept; retry it later")),
        e => e.into(),
    })?;
    if !retried {
        return Err(Error::not_found(format!("no dead letter {id:?}")).into());
    }
    node.workers.wake();
    Ok(Json(json!({"retried": 1})))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RetryAllQuery {
    /// Only jobs of this kind (webhook, push, publish, undelivered).
    pub kind: Option<String>,
    /// Only jobs for this endpoint.
    pub endpoint: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/queue/dead/retry", tag = "queue", params(RetryAllQuery),
    responses((status = 200, description = "{\"retried\":n}", body = super::schemas::RetriedAnswer), (status = 400), (status = 401), (status = 503)))]
pub async fn retry_all(
    State(node): State<Arc<Node>>,
    _key: ApiKey,
    Query(q): Query<RetryAllQuery>,
) -> ApiResult<Json<Value>> {
    let kind = match q.kind.as_deref() {
        None => None,
        Some(k) => Some(JobKind::parse(k).ok_or_else(|| Error::invalid(format!("unknown kind {k:?}")))?),
    };
    let n =
        node.workers.queue().retry_dead_all(&DeadFilter { kind, endpoint: q.endpoint }).await.map_err(|e| match e {
            QueueError::Full { .. } => Error::unavailable(format!("{e}: no dead letter was retried; retry later")),
            e => e.into(),
        })?;
    node.workers.wake();
    Ok(Json(json!({"retried": n})))
}

#[utoipa::path(delete, path = "/api/v1/queue/dead/{id}", tag = "queue", params(("id" = String, Path)),
    responses((status = 200, description = "{\"deleted\":1}", body = super::schemas::DeletedAnswer), (status = 401), (status = 404)))]
pub async fn delete(State(node): State<Arc<Node>>, _key: ApiKey, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    if !node.workers.queue().delete_dead(&id).await? {
        return Err(Error::not_found(format!("no dead letter {id:?}")).into());
    }
    Ok(Json(json!({"deleted": 1})))
}
