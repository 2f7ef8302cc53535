//! syncgate: a real-time sync and push gateway.
//!
//! Devices hold one WebSocket each; backends publish over HTTP to a user (all of their
//! devices), many users, a room, or everyone. Persisted messages go to a durable per-user
//! stream and are replayed to a device that comes back, once and in order.
//!
//! The map of the crate, from the outside in:
//!
//! - [`server`]: start-up, the accept loop (HTTP/1 with upgrades), graceful shutdown.
//! - [`admin`]: the admin web UI at `/admin` (assets in the binary, sessions, CSRF).
//! - [`api`]: the HTTP API (server API for backends, offline API for devices, operations).
//! - [`transport`]: the WebSocket upgrade at `/ws`, RFC 6455 framing ([`transport::codec`]),
//!   and the task of each connection.
//! - [`protocol`]: the client protocol's frames (JSON), parsed and encoded.
//! - [`session`]: what a connected client may do with the frames it sends.
//! - [`node`]: the publish paths and catch-up reads, wiring everything below together.
//! - [`streams`]: every delivery rule: where a stream starts, what an ack means, catch-up
//!   reads, and each connection's bounded outbox with its flow control.
//! - [`hub`]: local connections, users, rooms; delivery of events (the broker's `Local`).
//! - [`event`]: the unit of fan-out, protocol-neutral, encoded lazily once per encoding.
//! - [`broker`]: fan-out between nodes (`Broker` trait; in-memory for one node).
//! - [`presence`]: who is online and in which rooms, across the deployment.
//! - [`redis_conn`]: the shared connection to Redis (standalone, Cluster or Sentinel) for
//!   the store, the broker and presence in cluster mode.
//! - [`store`]: durable user streams, room history, cursors, idempotency (`Store` trait;
//!   embedded redb for one node).
//! - [`meta`]: what a connection records (address, app version, the token's `meta`) and
//!   the `where` filter of broadcasts.
//! - [`push`]: push registrations and providers (Web Push, FCM, APNs) for devices that
//!   are not connected.
//! - [`queue`]: the durable outbound job queue (webhooks, push sends, delayed publishes),
//!   its workers, retries, circuit breakers and dead letters (`Queue` trait; embedded, Redis).
//! - [`delayed`]: publishes with `delay_s` / `deliver_at`, run as queue jobs.
//! - [`webhooks`]: the gateway's events to the app (Standard Webhooks), the connect proxy.
//! - [`auth`], [`limits`], [`metrics`], [`config`], [`error`], [`close`]: the cross-cutting
//!   parts; [`names`]: the one rule for user ids, client ids and room names.

pub mod admin;
pub mod api;
pub mod auth;
pub mod broker;
pub mod close;
pub mod config;
pub mod delayed;
pub mod error;
pub mod event;
pub mod hub;
pub mod limits;
pub mod meta;
pub mod metrics;
pub mod names;
pub mod node;
pub mod presence;
pub mod protocol;
pub mod push;
pub mod queue;
pub mod redis_conn;
pub mod server;
pub mod session;
pub mod store;
pub mod streams;
pub mod transport;
pub mod webhooks;
