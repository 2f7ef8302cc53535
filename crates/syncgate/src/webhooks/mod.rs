//! Webhooks: events of the gateway (user.online / user.offline, connect / disconnect,
//! client.message, message.undelivered) POSTed to the app's endpoints through the outbound
//! queue, signed as Standard Webhooks says; and the connect proxy.
//!
//! Owns: which events exist and their payloads (`Events`, the hooks the node calls), the
//! signed POST of one job (`runner`), the once-per-user online/offline logic with its
//! grace (`online`), the undelivered check, and the connect proxy (`proxy`).
//!
//! Must never: make a caller on the delivery path wait for an endpoint (hooks only enqueue),
//! send an event to an endpoint that did not ask for it, or sign with anything but the
//! endpoint's own key.

pub mod checks;
pub mod online;
pub mod proxy;
pub mod runner;
pub mod signature;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::RwLock;
use serde::Serialize;
use serde_json::json;

use crate::config::Config;
use crate::presence::Presence;
use crate::queue::{now_ms, JobKind, NewJob, Priority, Workers};
use online::OnlineMarks;

/// A persisted user message that no device acked within `push.delay` while none was
/// connected: the payload of `message.undelivered`, and what push providers get.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Undelivered {
    pub user_id: String,
    /// The event's id in the user's stream.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The event's `data`.
    pub data: serde_json::Value,
    /// `high`, `normal` or `low`, as published.
    pub priority: String,
    /// Unix ms when it was published.
    pub ts: i64,
    /// The message's `ttl_s`, if it had one (push providers keep it no longer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
}

/// Told about every undelivered message (the push module registers one with
/// `Events::on_undelivered`, and typically enqueues `JobKind::Push` jobs from it). Called
/// from the queue worker, so it may await; an error makes the check run again later.
#[async_trait]
pub trait UndeliveredHook: Send + Sync {
    async fn undelivered(&self, msg: &Undelivered) -> Result<(), String>;
}

/// A configured endpoint, with its key decoded.
#[derive(Clone)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
    pub key: Vec<u8>,
    /// Empty: every event.
    pub events: Vec<String>,
    pub timeout: Duration,
}

impl Endpoint {
    fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

/// What webhooks say about a connection (connect, disconnect).
#[derive(Debug, Clone, Serialize)]
pub struct ConnInfo {
    pub conn_id: String,
    pub user_id: String,
    pub client_id: Option<String>,
    pub node: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub app_version: Option<String>,
    pub connected_at: i64,
    /// Meta the connect proxy added, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ConnInfo {
    /// What the connect and disconnect events say of `conn`; its address and app version are
    /// the ones its metadata took from the upgrade request (`ConnMeta::at_upgrade`: the
    /// address honours `server.trusted_proxies`, as the connections API shows it).
    pub fn of(
        node: &crate::node::Node,
        conn: &crate::hub::Conn,
        headers: &axum::http::HeaderMap,
        meta: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> ConnInfo {
        let ua = headers.get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok());
        let recorded = conn.meta.get();
        let app_version = hook_app_version(recorded.and_then(|m| m.app_version.as_deref()));
        ConnInfo {
            conn_id: conn.id.to_string(),
            user_id: conn.user.to_string(),
            client_id: conn.client_id.as_deref().map(str::to_string),
            node: node.instance_id.clone(),
            ip: recorded.and_then(|m| m.ip).map(|ip| ip.to_string()),
            user_agent: ua.map(str::to_string),
            app_version: app_version.map(str::to_string),
            connected_at: now_ms(),
            meta,
        }
    }
}

/// A connection's app version as the app's hooks get it (connect proxy, connect and
/// disconnect events): the one its metadata took from the upgrade request
/// (`ConnMeta::at_upgrade`), when it is at most 64 bytes.
pub fn hook_app_version(meta_app_version: Option<&str>) -> Option<&str> {
    meta_app_version.filter(|v| v.len() <= 64)
}

/// The gateway's events, turned into webhook jobs. Cheap when no endpoint is configured:
/// every hook returns at once.
pub struct Events {
    pub endpoints: Arc<Vec<Endpoint>>,
    workers: Arc<Workers>,
    presence: Arc<dyn Presence>,
    online: Arc<dyn OnlineMarks>,
    instance_id: String,
    client_message_types: Vec<String>,
    offline_grace: Duration,
    undelivered_delay: Duration,
    /// Connections this node announced, for their disconnect (only while some endpoint
    /// wants connect, disconnect or presence events; one entry per open connection).
    conns: DashMap<u64, ConnInfo>,
    track: bool,
    presence_events: bool,
    hooks: RwLock<Vec<Arc<dyn UndeliveredHook>>>,
    /// The user streams' store: an undelivered check reads the devices' cursors (acks).
    store: Arc<dyn crate::store::Store>,
    /// Device cursors kept per user (`limits.max_devices_per_user`): all of them are read.
    max_devices: usize,
    pub http: reqwest::Client,
}

impl Events {
    pub fn new(
        cfg: &Config,
        instance_id: &str,
        workers: Arc<Workers>,
        presence: Arc<dyn Presence>,
        online: Arc<dyn OnlineMarks>,
        store: Arc<dyn crate::store::Store>,
    ) -> Events {
        let endpoints: Vec<Endpoint> = cfg
            .webhooks
            .endpoints
            .iter()
            .map(|e| Endpoint {
                name: e.name.clone(),
                url: e.url.clone(),
                // Checked by config validation; an endpoint that fails here signs nothing.
                key: signature::decode_secret(&e.secret).unwrap_or_default(),
                events: e.events.clone(),
                timeout: e.timeout,
            })
            .filter(|e| !e.key.is_empty())
            .collect();
        let any = |ev: &[&str]| endpoints.iter().any(|e| ev.iter().any(|x| e.wants(x)));
        let presence_events = any(&["user.online", "user.offline"]);
        let track = presence_events || any(&["connect", "disconnect"]);
        Events {
            endpoints: Arc::new(endpoints),
            workers,
            presence,
            online,
            instance_id: instance_id.to_string(),
            client_message_types: cfg.webhooks.client_message_types.clone(),
            offline_grace: cfg.webhooks.offline_grace,
            undelivered_delay: cfg.push.delay,
            conns: DashMap::new(),
            track,
            presence_events,
            hooks: RwLock::new(Vec::new()),
            store,
            max_devices: cfg.limits.max_devices_per_user,
            // Redirects are not followed: a signed webhook (or a connect check) goes to the
            // configured URL only; a 3xx is an answer like any other.
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("syncgate/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
        }
    }

    pub fn workers(&self) -> &Arc<Workers> {
        &self.workers
    }

    /// Adds a hook told about every undelivered message (push providers).
    pub fn on_undelivered(&self, hook: Arc<dyn UndeliveredHook>) {
        self.hooks.write().push(hook);
    }

    pub(crate) fn undelivered_hooks(&self) -> Vec<Arc<dyn UndeliveredHook>> {
        self.hooks.read().clone()
    }

    fn wanted(&self, event: &str) -> bool {
        self.endpoints.iter().any(|e| e.wants(event))
    }

    /// Enqueues `event` for every endpoint that wants it. Errors (queue full) are logged:
    /// an event hook never fails the operation that caused it.
    pub async fn emit(&self, event: &str, data: serde_json::Value, priority: Priority) {
        let payload = json!({"type": event, "ts": now_ms(), "instance_id": self.instance_id, "data": data});
        let payload = bytes::Bytes::from(payload.to_string());
        for ep in self.endpoints.iter().filter(|e| e.wants(event)) {
            let job = NewJob::new(JobKind::Webhook, ep.name.clone(), payload.clone()).priority(priority);
            if let Err(e) = self.workers.enqueue(job).await {
                tracing::warn!(error = %e, event, endpoint = %ep.name, "webhook not queued");
            }
        }
    }

    fn spawn_emit(self: &Arc<Self>, event: &'static str, data: serde_json::Value, priority: Priority) {
        let me = self.clone();
        tokio::spawn(async move { me.emit(event, data, priority).await });
    }

    /// Whether [`Events::connected`] does anything: connect or disconnect events or presence
    /// events are configured. Without them nothing is built per connection for them.
    pub fn tracks_connections(&self) -> bool {
        self.track
    }

    /// A connection was admitted and upgraded on this node.
    pub fn connected(self: &Arc<Self>, info: ConnInfo) {
        if !self.track {
            return;
        }
        let id: u64 = info.conn_id.parse().unwrap_or(0);
        if self.wanted("connect") {
            self.spawn_emit("connect", json!(info), Priority::Express);
        }
        let user = info.user_id.clone();
        self.conns.insert(id, info);
        if self.presence_events {
            let me = self.clone();
            tokio::spawn(async move {
                match me.online.mark(&user).await {
                    Ok(true) => me.emit("user.online", json!({"user_id": user}), Priority::Express).await,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "online mark failed; user.online not sent"),
                }
            });
        }
    }

    /// A connection of this node is gone.
    pub fn disconnected(self: &Arc<Self>, conn_id: u64, code: Option<u16>) {
        let Some((_, info)) = self.conns.remove(&conn_id) else { return };
        if self.wanted("disconnect") {
            let mut data = json!(info);
            data["disconnected_at"] = json!(now_ms());
            data["code"] = json!(code);
            self.spawn_emit("disconnect", data, Priority::Express);
        }
        if self.presence_events {
            // Whether this was the user's last connection anywhere is decided after the
            // grace, by whichever node runs the check.
            let payload = json!({"check": "offline", "user_id": info.user_id}).to_string();
            let job = NewJob::new(JobKind::Undelivered, "offline-check", payload)
                .priority(Priority::Express)
                .not_before(now_ms() + self.offline_grace.as_millis() as i64);
            let w = self.workers.clone();
            tokio::spawn(async move {
                if let Err(e) = w.enqueue(job).await {
                    tracing::warn!(error = %e, "offline check not queued");
                }
            });
        }
    }

    /// A client published `kind` (to its own stream, or to `room`).
    pub fn client_published(
        self: &Arc<Self>,
        user: &str,
        client_id: Option<&str>,
        kind: &str,
        room: Option<&str>,
        id: &str,
        data: &[u8],
    ) {
        if !self.wanted("client.message")
            || !self.client_message_types.iter().any(|p| crate::auth::pattern_matches(p, kind))
        {
            return;
        }
        let data: serde_json::Value = serde_json::from_slice(data).unwrap_or(serde_json::Value::Null);
        let body = json!({"user_id": user, "client_id": client_id, "room": room, "id": id, "message_type": kind, "message": data});
        self.spawn_emit("client.message", body, Priority::Normal);
    }

    /// Persisted messages were appended to these users' streams: for each user with no
    /// connection anywhere, a check `push.delay` later whether it is still undelivered.
    pub fn persisted_to_users(
        self: &Arc<Self>,
        users: &[String],
        ids: &[String],
        msg: &crate::node::Message<'_>,
        ts: i64,
    ) {
        if !self.wanted("message.undelivered") && self.hooks.read().is_empty() {
            return;
        }
        let me = self.clone();
        let users: Vec<(String, String)> = users.iter().cloned().zip(ids.iter().cloned()).collect();
        let kind = msg.kind.to_string();
        let data = msg.data.clone();
        let priority = msg.priority.as_str().to_string();
        let ttl = msg.ttl;
        tokio::spawn(async move {
            let at = now_ms() + me.undelivered_delay.as_millis() as i64;
            let qp = Priority::of_publish(&priority).unwrap_or(Priority::Normal);
            for (user, id) in users {
                if me.presence.user_connections(&user).await.unwrap_or(0) > 0 {
                    continue;
                }
                let data = serde_json::from_slice(&data).unwrap_or(serde_json::Value::Null);
                let ttl_s = ttl.map(|t| t.as_secs());
                let u =
                    Undelivered { user_id: user, id, kind: kind.clone(), data, priority: priority.clone(), ts, ttl_s };
                let payload = json!({"check": "undelivered", "message": u}).to_string();
                let job = NewJob::new(JobKind::Undelivered, "undelivered-check", payload).priority(qp).not_before(at);
                if let Err(e) = me.workers.enqueue(job).await {
                    tracing::warn!(error = %e, "undelivered check not queued");
                }
            }
        });
    }

    /// Whether a device of the message's user has acked it (its cursor is at or past the
    /// message): then it was delivered, whatever the user's connections are now.
    pub(crate) async fn acked(&self, msg: &Undelivered) -> Result<bool, String> {
        let key = crate::store::StreamKey::User(&msg.user_id);
        // An id of another epoch is of a store since reset: no device can have acked it.
        let Ok(seq) = crate::store::EventId::parse(&msg.id, self.store.epoch(), key) else { return Ok(false) };
        let cursors = self.store.cursors(&msg.user_id, self.max_devices).await.map_err(|e| e.to_string())?;
        Ok(cursors.iter().any(|(_, c)| *c >= seq))
    }

    pub(crate) fn presence(&self) -> &Arc<dyn Presence> {
        &self.presence
    }

    pub(crate) fn online(&self) -> &Arc<dyn OnlineMarks> {
        &self.online
    }
}

/// Registers the webhook and check runners with the node's workers.
pub fn install(node: &Arc<crate::node::Node>) {
    let ev = &node.events;
    let runner = runner::WebhookRunner { http: ev.http.clone(), endpoints: ev.endpoints.clone() };
    node.workers.register(JobKind::Webhook, Arc::new(runner));
    node.workers.register(JobKind::Undelivered, Arc::new(checks::CheckRunner { events: Arc::downgrade(ev) }));
}
