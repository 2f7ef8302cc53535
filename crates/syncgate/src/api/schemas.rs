//! Shapes of the HTTP API's success answers, for the OpenAPI document (`/openapi.json`).
//!
//! Owns: the documented body of every 2xx answer. The handlers build these bodies; the
//! contract tests (`scripts/test.d/contract.sh`, schemathesis) hold each answer to its
//! shape here, so a handler and its description cannot drift apart unnoticed.
//!
//! Must never: be used to build answers (they are descriptions, not the serializers), or
//! forbid extra fields (answers may gain fields).
#![allow(dead_code)]

use std::collections::BTreeMap;

use utoipa::ToSchema;

/// `{"id"}`: the id of the published message (a stream id, or `EPOCH.tN` when live only).
#[derive(ToSchema)]
pub struct IdAnswer {
    id: String,
}

/// `{"ids":{user_id:id}}`: one id per (distinct) user.
#[derive(ToSchema)]
pub struct IdsAnswer {
    ids: BTreeMap<String, String>,
}

/// An event, as in WebSocket event frames; `data` byte-exact as published.
#[derive(ToSchema)]
pub struct Event {
    id: String,
    /// `user` or `room:NAME`.
    stream: String,
    #[schema(rename = "type")]
    kind: String,
    /// Any JSON value.
    #[schema(value_type = serde_json::Value)]
    data: (),
    /// Unix milliseconds.
    ts: i64,
}

#[derive(ToSchema)]
pub struct HistoryAnswer {
    events: Vec<Event>,
}

#[derive(ToSchema)]
pub struct MessagesAnswer {
    events: Vec<Event>,
    /// Id of the last event returned; null when none.
    next: Option<String>,
    /// Whether the stream has more after `next`.
    more: bool,
    /// Messages after the start point that retention already removed.
    trimmed: u64,
}

#[derive(ToSchema)]
pub struct AckAnswer {
    ok: bool,
    /// The device's cursor after the ack.
    cursor: String,
}

#[derive(ToSchema)]
pub struct CountAnswer {
    count: u64,
}

#[derive(ToSchema)]
pub struct PresenceAnswer {
    room: String,
    users: Vec<String>,
    connections: u64,
}

#[derive(ToSchema)]
pub struct OnlineAnswer {
    user_id: String,
    online: bool,
    connections: u64,
}

#[derive(ToSchema)]
pub struct DisconnectAnswer {
    /// Connections closed on this node.
    disconnected: u64,
}

#[derive(ToSchema)]
pub struct OnlineUsersAnswer {
    users: Vec<String>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct StatsAnswer {
    instance_id: String,
    connections: u64,
    users: u64,
    rooms: u64,
    messages_in: u64,
    messages_out: u64,
    uptime_s: u64,
}

#[derive(ToSchema)]
pub struct PubsubStatsAnswer {
    /// `memory` (one node) or the Redis mode.
    mode: String,
    published: u64,
    received: u64,
    dropped_own: u64,
    failed: u64,
    reconnects: u64,
}

#[derive(ToSchema)]
pub struct OfflineStatsAnswer {
    stored_messages: u64,
    streams: u64,
    /// Null when nothing is stored.
    oldest_age_ms: Option<u64>,
    cursors: u64,
}

#[derive(ToSchema)]
pub struct HealthAnswer {
    /// `healthy`.
    status: String,
    instance_id: String,
    /// Unix milliseconds.
    timestamp: i64,
}

#[derive(ToSchema)]
pub struct ReadyAnswer {
    /// `ready`, or `not_ready` (503).
    status: String,
    instance_id: String,
    /// Why not ready (503 only).
    reason: Option<String>,
}
