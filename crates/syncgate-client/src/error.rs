//! The crate's error type.

use crate::frame::Frame;
use tokio_tungstenite::tungstenite;

/// Everything that can go wrong in this crate.
///
/// HTTP API calls ([`crate::Api`]) do not fail on non-2xx answers: those come back as
/// an [`crate::ApiResponse`] with the status. Only transport problems are errors there.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the WebSocket upgrade with an HTTP status (401, 429, 503, ...).
    /// `body` is the JSON error body (`{"error":{"code","message"}}`), or `Null` when the
    /// body was empty or not JSON. Only the body bytes that arrived together with the
    /// response head are seen (tungstenite reads no further); servers that write head
    /// and small body at once, as hyper does, are fine.
    #[error("upgrade refused with HTTP {status}: {body}")]
    Http {
        /// HTTP status code of the refusal.
        status: u16,
        /// Parsed JSON body, or `Null`.
        body: serde_json::Value,
    },

    /// The connection is closed. `code` is the close code the server sent
    /// (1000, 1001, 1009, 4001, 4008, 4009, 4029, ...), or `None` when the connection
    /// ended without a close frame (or the close frame had no code).
    #[error("connection closed (code {code:?}, reason {reason:?})")]
    Closed {
        /// Close code from the server's close frame, if any.
        code: Option<u16>,
        /// Close reason text (may be empty).
        reason: String,
    },

    /// Nothing (or not the awaited frame) arrived in time.
    #[error("timed out")]
    Timeout,

    /// The server sent something that is not a valid frame of the contract:
    /// not JSON, not an object, a binary frame, or a known `op` with missing or
    /// mistyped fields.
    #[error("invalid frame from server ({reason}): {raw}")]
    Protocol {
        /// What is wrong with it.
        reason: String,
        /// The frame as received (text, or a description for binary frames).
        raw: String,
    },

    /// A well-formed frame arrived where another was required
    /// (e.g. the first frame after connecting was not `welcome`).
    #[error("unexpected frame: {0:?}")]
    UnexpectedFrame(Box<Frame>),

    /// A caller error: bad base URL, unsupported scheme, a request frame that is not a
    /// JSON object, an invalid header.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// TCP-level failure (connect, bind, DNS).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// WebSocket protocol or transport failure reported by tungstenite.
    #[error("WebSocket error: {0}")]
    WebSocket(#[source] Box<tungstenite::Error>),

    /// The server refused a request frame of a [`crate::Client`] with an error frame
    /// (`forbidden`, `not_found`, `invalid_message_type`, ...); the connection stays open.
    #[error("refused by the server: {} ({})", .0.code, .0.message)]
    Refused(crate::frame::ErrorFrame),

    /// HTTP transport failure reported by reqwest (connection refused, timeout, ...).
    #[error("HTTP client error: {0}")]
    Request(#[from] reqwest::Error),
}

impl Error {
    /// The close code when this is [`Error::Closed`].
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Error::Closed { code, .. } => *code,
            _ => None,
        }
    }

    /// The HTTP status when this is [`Error::Http`] (a refused upgrade).
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The contract's error code of an [`Error::Refused`] frame.
    pub fn refused_code(&self) -> Option<&str> {
        match self {
            Error::Refused(f) => Some(&f.code),
            _ => None,
        }
    }

    /// `error.code` of the JSON body when this is [`Error::Http`].
    pub fn http_error_code(&self) -> Option<&str> {
        match self {
            Error::Http { body, .. } => body.pointer("/error/code").and_then(|c| c.as_str()),
            _ => None,
        }
    }
}

impl From<tungstenite::Error> for Error {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Http(resp) => {
                let status = resp.status().as_u16();
                let chunked = resp
                    .headers()
                    .get("transfer-encoding")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
                let body =
                    resp.body().as_deref().map(|b| parse_refusal_body(b, chunked)).unwrap_or(serde_json::Value::Null);
                Error::Http { status, body }
            }
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                Error::Closed { code: None, reason: String::new() }
            }
            tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
                Error::Closed { code: None, reason: "connection ended without a close frame".into() }
            }
            tungstenite::Error::Io(io) if is_disconnect(&io) => Error::Closed { code: None, reason: io.to_string() },
            tungstenite::Error::Io(io) => Error::Io(io),
            other => Error::WebSocket(Box::new(other)),
        }
    }
}

fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof)
}

/// Parses the body of a refused upgrade, as far as tungstenite read it (the bytes that
/// came with the response head). Handles chunked encoding; `Null` if it is not JSON.
fn parse_refusal_body(bytes: &[u8], chunked: bool) -> serde_json::Value {
    if let Ok(v) = serde_json::from_slice(bytes) {
        return v;
    }
    if chunked {
        if let Some(v) = dechunk(bytes).and_then(|b| serde_json::from_slice(&b).ok()) {
            return v;
        }
    }
    serde_json::Value::Null
}

/// Decodes an HTTP/1.1 chunked body (best effort: stops at the last complete chunk).
fn dechunk(mut bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = bytes.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&bytes[..line_end]).ok()?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        bytes = &bytes[line_end + 2..];
        if size == 0 || bytes.len() < size {
            return Some(out);
        }
        out.extend_from_slice(&bytes[..size]);
        bytes = bytes.get(size + 2..).unwrap_or(&[]);
        if bytes.is_empty() {
            return Some(out);
        }
    }
}

/// Shorthand for `Result<T, syncgate_client::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refusal_body_plain_and_chunked() {
        let plain = br#"{"error":{"code":"unauthorized","message":"m"}}"#;
        assert_eq!(parse_refusal_body(plain, false)["error"]["code"], json!("unauthorized"));
        let chunked = b"18\r\n{\"error\":{\"code\":\"forbid\r\n7\r\nden\"}}\n\r\n0\r\n\r\n";
        assert_eq!(parse_refusal_body(chunked, true), json!({"error":{"code":"forbidden"}}));
        assert_eq!(parse_refusal_body(b"", false), serde_json::Value::Null);
        assert_eq!(parse_refusal_body(b"oops", true), serde_json::Value::Null);
    }

    #[test]
    fn tungstenite_errors_map_to_closed() {
        let e = Error::from(tungstenite::Error::ConnectionClosed);
        assert!(matches!(e, Error::Closed { code: None, .. }));
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(matches!(Error::from(tungstenite::Error::Io(io)), Error::Closed { .. }));
    }
}
