//! Rust client for syncgate, the real-time sync/push gateway.
//!
//! Three parts, following the external contract:
//!
//! - [`Client`]: a device that stays connected: reconnects with backoff, resumes from its
//!   checkpoints ([`CursorStore`]: memory or file), renews its token with `refresh`,
//!   rejoins rooms, and hands each event over at least once, in stream order, acked after
//!   the application marks its [`Delivery`] done.
//! - [`Device`]: one WebSocket connection of a device (`GET /ws`): welcome, events,
//!   request/reply frames (`ping`, `join`, `leave`, `ack`, `publish`), close codes.
//! - [`Api`]: the HTTP API for backends (API key) and the device-side offline API (JWT).
//!   Non-2xx answers are returned as [`ApiResponse`]s, not errors, so callers can check
//!   status codes.
//!
//! The client speaks plain `ws://`/`http://` only (no TLS backend).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use serde_json::json;
//! use syncgate_client::{Api, Device, DeviceOptions, Frame};
//!
//! # async fn run(jwt: String) -> Result<(), syncgate_client::Error> {
//! let base = "http://127.0.0.1:8080";
//! let (mut phone, welcome) =
//!     Device::connect(base, DeviceOptions::new(jwt).client_id("phone-1")).await?;
//! println!("connected as {} on {}", welcome.user_id, welcome.instance_id);
//!
//! // Join a room the token allows; events read meanwhile are kept for later reads.
//! let reply = phone.join("school:1", None).await?;
//! assert!(matches!(reply, Frame::Reply(_)));
//!
//! // A backend publishes to the user; the device receives it and acks it.
//! let api = Api::new(base, "my-api-key");
//! let resp = api.publish_user(&welcome.user_id, "note", json!({"text": "hi"})).await?;
//! assert_eq!(resp.status, 202);
//! let event = phone.next_event(Duration::from_secs(5)).await?;
//! assert_eq!(event.kind, "note");
//! phone.ack(&event.id).await?;
//!
//! phone.close(1000).await?;
//! # Ok(())
//! # }
//! ```

mod api;
mod client;
mod client_task;
mod cursor;
mod device;
mod error;
mod frame;
mod options;

pub use api::{Api, ApiResponse};
pub use client::{Client, ClientBuilder, Delivery, State, TokenFn, TokenSource};
pub use cursor::{CursorStore, FileCursorStore, MemoryCursorStore};
pub use device::{Device, WsStream, DEFAULT_BUFFER_CAPACITY, DEFAULT_REQUEST_TIMEOUT, MAX_MESSAGE_BYTES};
pub use error::{Error, Result};
pub use frame::{ErrorFrame, Event, Frame, Reply, Welcome};
pub use options::{ws_url, DeviceOptions};

/// HTTP method type used by [`Api::request`].
pub use reqwest::Method;
/// Re-export for building raw messages (close frames, pings).
pub use tokio_tungstenite::tungstenite;
/// WebSocket message type used by [`Device::send_raw`].
pub use tokio_tungstenite::tungstenite::Message;
