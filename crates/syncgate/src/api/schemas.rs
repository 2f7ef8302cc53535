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
    /// Bytes of the embedded store's block cache in use (engine `lsm` only).
    cache_bytes: Option<u64>,
    /// Bytes of written data the embedded store holds beside its cache: its memtables
    /// (engine `lsm` only).
    write_buffer_bytes: Option<u64>,
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

/// `{"id"}`, or for a delayed publish (`delay_s` / `deliver_at`) `{"job_id","deliver_at"}`.
#[derive(ToSchema)]
pub struct PublishAnswer {
    id: Option<String>,
    /// The queue job that publishes later (delayed publishes only).
    job_id: Option<String>,
    /// Unix milliseconds (delayed publishes only).
    deliver_at: Option<i64>,
}

/// `{"ids":{user_id:id}}`, or for a delayed publish `{"job_id","deliver_at"}`.
#[derive(ToSchema)]
pub struct BatchAnswer {
    ids: Option<BTreeMap<String, String>>,
    job_id: Option<String>,
    deliver_at: Option<i64>,
}

#[derive(ToSchema)]
pub struct QueueDepth {
    express: u64,
    urgent: u64,
    normal: u64,
}

#[derive(ToSchema)]
pub struct Circuit {
    endpoint: String,
    /// `closed`, `open` or `half_open`.
    state: String,
    /// Consecutive failed attempts.
    failures: u64,
}

#[derive(ToSchema)]
pub struct QueueStatsAnswer {
    /// Jobs due now, per priority.
    depth: QueueDepth,
    /// Jobs due later (delays, retry backoff).
    delayed: u64,
    /// Jobs leased to a worker.
    in_flight: u64,
    dead: u64,
    /// Age of the oldest live job, 0 when none.
    oldest_age_ms: i64,
    max_jobs: u64,
    /// Endpoints with failures since their last success, on the answering node.
    circuits: Vec<Circuit>,
}

#[derive(ToSchema)]
pub struct DeadLetter {
    id: String,
    /// `webhook`, `push`, `publish` or `undelivered`.
    kind: String,
    endpoint: String,
    /// `express`, `urgent` or `normal`.
    priority: String,
    attempts: u64,
    last_error: Option<String>,
    /// Unix milliseconds.
    created_at: i64,
    /// Unix milliseconds.
    failed_at: i64,
    /// The job's payload (JSON).
    #[schema(value_type = serde_json::Value)]
    payload: (),
}

#[derive(ToSchema)]
pub struct DeadAnswer {
    /// Newest failure first.
    jobs: Vec<DeadLetter>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct RetriedAnswer {
    retried: u64,
}

#[derive(ToSchema)]
pub struct DeletedAnswer {
    deleted: u64,
}

#[derive(ToSchema)]
pub struct RegisteredAnswer {
    ok: bool,
    client_id: String,
    /// `webpush`, `fcm` or `apns`.
    provider: String,
    /// Client ids dropped to stay within `push.max_devices_per_user`.
    replaced: Vec<String>,
}

#[derive(ToSchema)]
pub struct PushDevice {
    client_id: String,
    provider: String,
    /// FCM or APNs token; null for Web Push.
    token: Option<String>,
    /// `{"endpoint"}` for Web Push; null otherwise.
    #[schema(value_type = Option<serde_json::Value>)]
    subscription: (),
    /// Unix milliseconds.
    updated_at: i64,
}

#[derive(ToSchema)]
pub struct DevicesAnswer {
    devices: Vec<PushDevice>,
}

#[derive(ToSchema)]
pub struct OkAnswer {
    ok: bool,
}

/// One open connection and what it recorded at the upgrade.
#[derive(ToSchema)]
pub struct Connection {
    /// The connection's id on its node.
    conn_id: String,
    user_id: String,
    /// Null for an ephemeral connection.
    client_id: Option<String>,
    /// Instance id of the node holding it.
    node: String,
    ip: Option<String>,
    user_agent: Option<String>,
    app_version: Option<String>,
    /// Unix milliseconds.
    connected_at: i64,
    rooms: Vec<String>,
    /// The token's `meta` claim (`{}` without one).
    #[schema(value_type = Object)]
    meta: (),
}

#[derive(ToSchema)]
pub struct ConnectionsAnswer {
    user_id: String,
    /// Oldest first, across all nodes.
    connections: Vec<Connection>,
}

/// A device (client id) of a user's stream.
#[derive(ToSchema)]
pub struct StreamDevice {
    client_id: String,
    /// Id of the last message the device acknowledged (its position).
    cursor: String,
    cursor_seq: u64,
    /// Messages after the cursor.
    lag: u64,
    /// Open connections of the device, on any node.
    connected: u64,
}

#[derive(ToSchema)]
pub struct StreamAnswer {
    user_id: String,
    /// Position of the newest message (0: empty).
    head: u64,
    /// Position of the oldest message kept.
    first: u64,
    devices: Vec<StreamDevice>,
    /// Newest first.
    events: Vec<Event>,
}

/// One node's live figures.
#[derive(ToSchema)]
pub struct NodeFigures {
    instance_id: String,
    connections: u64,
    users: u64,
    rooms: u64,
    messages_in: u64,
    messages_out: u64,
    uptime_s: u64,
    /// Unix milliseconds at which the figures were taken.
    updated_at: i64,
}

#[derive(ToSchema)]
pub struct NodesAnswer {
    /// Every live node, in id order.
    nodes: Vec<NodeFigures>,
}

/// An admin session, as sign-in and GET /api/v1/admin/session answer it.
#[derive(ToSchema)]
pub struct SessionAnswer {
    /// Send it as `X-CSRF-Token` on state-changing requests made with the session.
    csrf_token: String,
    /// Unix milliseconds.
    expires_at: i64,
    instance_id: String,
}

#[derive(ToSchema)]
pub struct SignedOutAnswer {
    signed_out: bool,
}
