//! Request extractors: JSON bodies with the size limit and contract errors, API-key
//! callers (or an admin UI session, see `crate::admin`), and offline-API callers (a user's JWT or an API key acting for a user).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::RateSlot;
use crate::error::{Code, Error};
use crate::limits::Allowed;
use crate::node::Node;

/// A JSON body, parsed, with its raw bytes (for idempotency hashing).
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<T: DeserializeOwned> FromRequest<Arc<Node>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, node: &Arc<Node>) -> Result<Self, Self::Rejection> {
        let max = node.cfg.limits.max_body_bytes;
        let too_large = || Error::new(Code::PayloadTooLarge, format!("request body is larger than {max} bytes"));
        // A client that asked `Expect: 100-continue` is waiting for a go-ahead: it gets the
        // 413 without being asked to send anything.
        let drain_ok = !req.headers().contains_key(header::EXPECT);
        let budget = (max as u64).saturating_mul(DRAIN_FACTOR);
        if let Some(len) =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        {
            if len > max as u64 {
                if drain_ok && len <= budget {
                    drain(req.into_body(), budget).await;
                }
                return Err(too_large().into());
            }
        }
        // A body that trickles in must not hold the request (and its memory) for good.
        let timeout = node.cfg.server.body_timeout;
        let read = async {
            let mut body = req.into_body();
            let mut buf = BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| Error::invalid(format!("could not read the request body: {e}")))?;
                if let Some(data) = frame.data_ref() {
                    if buf.len() + data.len() > max {
                        if drain_ok {
                            drain(body, budget.saturating_sub((buf.len() + data.len()) as u64)).await;
                        }
                        return Err(too_large());
                    }
                    buf.extend_from_slice(data);
                }
            }
            Ok(buf.freeze())
        };
        let raw = match tokio::time::timeout(timeout, read).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::new(
                    Code::RequestTimeout,
                    format!("the request body did not arrive within server.body_timeout ({}s)", timeout.as_secs_f64()),
                )
                .into())
            }
        };
        let value = parse_json(&raw)?;
        Ok(JsonBody { value, raw })
    }
}

/// How long an over-limit body may keep arriving before its 413 is sent.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// How much of an over-limit body is read and dropped, in multiples of the limit.
const DRAIN_FACTOR: u64 = 4;

/// Reads and throws away the rest of an over-limit body (at most `budget` bytes, for at most
/// `DRAIN_TIME`) before the 413 is sent. A client that writes its whole body before reading
/// the answer (Python's urllib, many HTTP/1 clients) would otherwise be reset mid-upload
/// (EPIPE) and never see the 413. Bodies past 4 times `limits.max_body_bytes` are not drained:
/// they get the 413 at once and the connection is closed.
async fn drain(mut body: axum::body::Body, budget: u64) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > budget {
                break;
            }
        }
    })
    .await;
}

/// Parses a JSON body, with a plain message naming the field that is wrong (never the
/// parser's internals such as Rust type names).
pub fn parse_json<T: DeserializeOwned>(raw: &[u8]) -> Result<T, Error> {
    // The common case, a valid body, without tracking the path; a bad one is parsed again
    // with tracking for its message.
    if let Ok(v) = serde_json::from_slice(raw) {
        return Ok(v);
    }
    let syntax = |e: &serde_json::Error| {
        Error::invalid(format!("the body is not valid JSON (line {}, column {})", e.line(), e.column()))
    };
    let mut de = serde_json::Deserializer::from_slice(raw);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => Error::invalid(field_message(&path, &inner.to_string())),
            _ => syntax(&inner),
        }
    })?;
    de.end().map_err(|e| syntax(&e))?;
    Ok(value)
}

/// Turns serde's description of a data error into a plain one.
fn field_message(path: &str, serde_msg: &str) -> String {
    let quoted = |m: &str| m.split('`').nth(1).map(str::to_string);
    if serde_msg.starts_with("missing field") {
        let field = quoted(serde_msg).unwrap_or_default();
        return match path {
            "." | "" => format!("missing field `{field}`"),
            p => format!("missing field `{p}.{field}`"),
        };
    }
    if serde_msg.starts_with("unknown field") {
        let field = quoted(serde_msg).unwrap_or_default();
        return format!("unknown field `{field}`");
    }
    if serde_msg.starts_with("duplicate field") {
        return format!("field `{}` is given twice", quoted(serde_msg).unwrap_or_default());
    }
    match path {
        "." | "" => "the body must be a JSON object".to_string(),
        p => format!("field `{p}` has the wrong type or value"),
    }
}

/// A path parameter, refused with the contract's JSON error (not axum's text) when it does
/// not decode to UTF-8.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state).await.map(|p| Path(p.0)).map_err(|_| {
            Error::invalid("the URL path has a parameter that is not valid UTF-8 after percent-decoding").into()
        })
    }
}

/// A query string, refused with the contract's JSON error when it does not parse, or when
/// a percent-encoded component is not UTF-8.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query().unwrap_or("")).map(Query).map_err(Into::into)
    }
}

/// Parses a query string strictly (see [`crate::names::check_query`]).
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, Error> {
    crate::names::check_query(query)?;
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        if msg.starts_with("missing field") || msg.starts_with("duplicate field") || path == "." || path.is_empty() {
            let field = msg.split('`').nth(1).unwrap_or("?");
            Error::invalid(format!("query parameter `{field}` is missing or given twice"))
        } else {
            Error::invalid(format!("query parameter `{path}` has the wrong type or value"))
        }
    })
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k.trim());
    }
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).map(str::trim)
}

/// A backend authenticated with an API key.
pub struct ApiKey {
    /// A short fingerprint of the key (scopes idempotency keys; never the key itself).
    pub fingerprint: Arc<str>,
}

/// Hands the caller's rate-limit state to the middleware for X-RateLimit-* headers.
fn report(parts: &Parts, allowed: Option<Allowed>) {
    if let (Some(a), Some(slot)) = (allowed, parts.extensions.get::<RateSlot>()) {
        *slot.0.lock() = Some(a);
    }
}

impl FromRequestParts<Arc<Node>> for ApiKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, Self::Rejection> {
        let Some(key) = presented_key(&parts.headers) else {
            // An operator signed in to the admin UI may call the server API with the session.
            if let Some(sessions) = parts.extensions.get::<Arc<crate::admin::Sessions>>() {
                if sessions.check(&parts.method, &parts.headers)?.is_some() {
                    return Ok(ApiKey { fingerprint: Arc::from("admin") });
                }
            }
            return Err(Error::unauthorized("missing API key: send Authorization: Bearer KEY or X-API-Key").into());
        };
        let Some(fp) = node.auth.api_key_fingerprint(key) else {
            return Err(Error::unauthorized("invalid API key").into());
        };
        let allowed = node
            .limits
            .api_key
            .check(fp, &node.metrics)
            .map_err(|r| ApiError::rate_limited(r, "too many requests for this API key"))?;
        report(parts, allowed);
        Ok(ApiKey { fingerprint: fp.clone() })
    }
}

/// A caller of the offline API: a device with its user's JWT, or a backend with an API key
/// naming the user with `?user_id=`.
pub struct OfflineCaller {
    pub user: String,
    /// The device a token is bound to (its `client_id` claim), if any.
    pub bound_client: Option<String>,
}

impl OfflineCaller {
    /// A token bound to one device may only act for that device.
    pub fn check_client(&self, client_id: &str) -> Result<(), Error> {
        match &self.bound_client {
            Some(c) if c != client_id => Err(Error::forbidden("this token is bound to another client_id")),
            _ => Ok(()),
        }
    }
}

impl FromRequestParts<Arc<Node>> for OfflineCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, Self::Rejection> {
        let pairs = crate::names::query_pairs(parts.uri.query().unwrap_or(""))?;
        let query_user = pairs.into_iter().find(|(k, _)| k == "user_id").map(|(_, v)| v);
        OfflineCaller::authenticate(node, &parts.headers, &parts.extensions, query_user)
    }
}

impl OfflineCaller {
    /// Authenticates a device (user JWT) or a backend (API key) acting for `named_user`
    /// (from the query string, or a body's `user_id`); a user token may only name its own
    /// user.
    pub fn authenticate(
        node: &Node,
        headers: &HeaderMap,
        extensions: &axum::http::Extensions,
        named_user: Option<String>,
    ) -> Result<Self, ApiError> {
        let report = |allowed: Option<Allowed>| {
            if let (Some(a), Some(slot)) = (allowed, extensions.get::<RateSlot>()) {
                *slot.0.lock() = Some(a);
            }
        };
        let query_user = named_user;
        let Some(credential) = presented_key(headers) else {
            return Err(Error::unauthorized("missing credentials: a user token or an API key").into());
        };
        if let Some(fp) = node.auth.api_key_fingerprint(credential) {
            let Some(user) = query_user else {
                return Err(Error::invalid("an API key caller must name the user with user_id").into());
            };
            node.check_name("user_id", &user)?;
            let allowed = node
                .limits
                .api_key
                .check(fp, &node.metrics)
                .map_err(|r| ApiError::rate_limited(r, "too many requests for this API key"))?;
            report(allowed);
            return Ok(OfflineCaller { user, bound_client: None });
        }
        let claims = node.auth.verify(credential).map_err(|e| Error::unauthorized(e.to_string()))?;
        // The same rule as at /ws: a `sub` that is not a valid user id is refused.
        node.check_name("the token's sub (user id)", &claims.sub)?;
        if let Some(u) = query_user {
            if u != claims.sub {
                return Err(Error::forbidden("a user token can only read its own user's messages").into());
            }
        }
        let allowed = node
            .limits
            .api_user
            .check(&Arc::from(claims.sub.as_str()), &node.metrics)
            .map_err(|r| ApiError::rate_limited(r, "too many requests for this user"))?;
        report(allowed);
        Ok(OfflineCaller { user: claims.sub, bound_client: claims.client_id })
    }
}
