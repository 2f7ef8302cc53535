//! Client of the HTTP API (backends with an API key, devices with their JWT).

use crate::error::{Error, Result};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

/// An HTTP answer. Non-2xx statuses are answers too, not errors.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body parsed as JSON, or `Null` when empty or not JSON.
    pub body: Value,
    /// The body as text (e.g. for `/metrics`).
    pub text: String,
}

impl ApiResponse {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A response header as text, if present and valid.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `error.code` of an error body (`{"error":{"code","message"}}`).
    pub fn error_code(&self) -> Option<&str> {
        self.body.pointer("/error/code").and_then(Value::as_str)
    }
}

/// Client of the syncgate HTTP API.
///
/// Cheap to clone (the `reqwest::Client` inside is shared). Every call sends the
/// configured `Authorization: Bearer ...` unless the call's own headers carry
/// `Authorization` or `X-API-Key`.
#[derive(Debug, Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    auth: Option<String>,
}

impl Api {
    /// A backend client authenticated with an API key. `base_url` like
    /// `http://127.0.0.1:8080` (a path prefix is kept).
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Api {
        Api::build(default_client(), base_url.into(), Some(api_key.into()))
    }

    /// Like [`Api::new`], with a given `reqwest::Client`.
    pub fn with_client(client: reqwest::Client, base_url: impl Into<String>, api_key: impl Into<String>) -> Api {
        Api::build(client, base_url.into(), Some(api_key.into()))
    }

    /// A device-side client authenticated with the user's JWT (offline API).
    pub fn with_token(base_url: impl Into<String>, jwt: impl Into<String>) -> Api {
        Api::build(default_client(), base_url.into(), Some(jwt.into()))
    }

    /// A client that sends no credentials (for `/health`, or to test 401).
    pub fn unauthenticated(base_url: impl Into<String>) -> Api {
        Api::build(default_client(), base_url.into(), None)
    }

    fn build(client: reqwest::Client, base: String, secret: Option<String>) -> Api {
        Api { client, base: base.trim_end_matches('/').to_owned(), auth: secret.map(|s| format!("Bearer {s}")) }
    }

    /// The base URL, without trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The underlying `reqwest::Client`.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `method path` with an optional JSON body and extra headers.
    /// `path` starts with `/` and may carry an (already encoded) query string.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Result<ApiResponse> {
        self.request_raw(method, path, body.map(|b| b.to_string().into_bytes()), headers).await
    }

    /// Sends raw body bytes (invalid JSON, oversized bodies...). The content type is
    /// `application/json` unless `headers` set one.
    pub async fn request_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<ApiResponse> {
        let url = format!("{}{}", self.base, path);
        let mut map = HeaderMap::new();
        let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        if let Some(auth) = &self.auth {
            if !has("authorization") && !has("x-api-key") {
                map.insert(AUTHORIZATION, header_value(auth)?);
            }
        }
        if body.is_some() && !has("content-type") {
            map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| Error::InvalidInput(format!("header {name}: {e}")))?;
            map.append(name, header_value(value)?);
        }
        let mut req = self.client.request(method, url).headers(map);
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(ApiResponse { status, headers, body, text })
    }

    async fn get(&self, path: &str) -> Result<ApiResponse> {
        self.request(Method::GET, path, None, &[]).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<ApiResponse> {
        self.request(Method::POST, path, Some(body), &[]).await
    }

    /// `POST path` with an `Idempotency-Key` header.
    pub async fn post_with_idempotency_key(&self, path: &str, key: &str, body: Value) -> Result<ApiResponse> {
        self.request(Method::POST, path, Some(body), &[("Idempotency-Key", key)]).await
    }

    /// `POST /api/v1/events` with `{"user_id","type","data"}`.
    pub async fn publish_user(&self, user_id: &str, kind: &str, data: Value) -> Result<ApiResponse> {
        self.publish(json!({"user_id": user_id, "type": kind, "data": data})).await
    }

    /// `POST /api/v1/events` with a full body (`persist`, `ttl_s`, `priority`...).
    pub async fn publish(&self, body: Value) -> Result<ApiResponse> {
        self.post("/api/v1/events", body).await
    }

    /// `POST /api/v1/events/batch` (`{"user_ids":[..],"type","data",...}`).
    pub async fn publish_batch(&self, body: Value) -> Result<ApiResponse> {
        self.post("/api/v1/events/batch", body).await
    }

    /// `POST /api/v1/events/broadcast` (`{"type","data"}`).
    pub async fn broadcast(&self, body: Value) -> Result<ApiResponse> {
        self.post("/api/v1/events/broadcast", body).await
    }

    /// `POST /api/v1/rooms/{room}/events` (`{"type","data","persist"?}`).
    pub async fn publish_room(&self, room: &str, body: Value) -> Result<ApiResponse> {
        self.post(&format!("/api/v1/rooms/{}/events", segment(room)), body).await
    }

    /// `GET /api/v1/rooms/{room}/presence`.
    pub async fn presence(&self, room: &str) -> Result<ApiResponse> {
        self.get(&format!("/api/v1/rooms/{}/presence", segment(room))).await
    }

    /// `GET /api/v1/rooms/{room}/history?since=&limit=`.
    pub async fn room_history(&self, room: &str, since: Option<&str>, limit: Option<u32>) -> Result<ApiResponse> {
        let limit = limit.map(|l| l.to_string());
        let q = query(&[("since", since), ("limit", limit.as_deref())]);
        self.get(&format!("/api/v1/rooms/{}/history{q}", segment(room))).await
    }

    /// `GET /api/v1/users/{user_id}/online`.
    pub async fn user_online(&self, user_id: &str) -> Result<ApiResponse> {
        self.get(&format!("/api/v1/users/{}/online", segment(user_id))).await
    }

    /// `POST /api/v1/users/{user_id}/disconnect` (no body).
    pub async fn disconnect(&self, user_id: &str) -> Result<ApiResponse> {
        let path = format!("/api/v1/users/{}/disconnect", segment(user_id));
        self.request(Method::POST, &path, None, &[]).await
    }

    /// `GET /api/v1/online-users?limit=&cursor=`.
    pub async fn online_users(&self, limit: Option<u32>, cursor: Option<&str>) -> Result<ApiResponse> {
        let limit = limit.map(|l| l.to_string());
        let q = query(&[("limit", limit.as_deref()), ("cursor", cursor)]);
        self.get(&format!("/api/v1/online-users{q}")).await
    }

    /// `GET /api/v1/stats`.
    pub async fn stats(&self) -> Result<ApiResponse> {
        self.get("/api/v1/stats").await
    }

    /// `GET /api/v1/stats/pubsub`.
    pub async fn pubsub_stats(&self) -> Result<ApiResponse> {
        self.get("/api/v1/stats/pubsub").await
    }

    /// `GET /api/v1/offline/stats`.
    pub async fn offline_stats(&self) -> Result<ApiResponse> {
        self.get("/api/v1/offline/stats").await
    }

    /// `GET /api/v1/offline/messages?user_id=&client_id=&since=&limit=`.
    /// `user_id` is for backends (API key); devices (JWT) pass `None`.
    pub async fn offline_messages(
        &self,
        user_id: Option<&str>,
        client_id: Option<&str>,
        since: Option<&str>,
        limit: Option<u32>,
    ) -> Result<ApiResponse> {
        let limit = limit.map(|l| l.to_string());
        let q = query(&[("user_id", user_id), ("client_id", client_id), ("since", since), ("limit", limit.as_deref())]);
        self.get(&format!("/api/v1/offline/messages{q}")).await
    }

    /// `POST /api/v1/offline/ack?user_id=` with `{"client_id","id"}`.
    pub async fn offline_ack(&self, user_id: Option<&str>, client_id: &str, id: &str) -> Result<ApiResponse> {
        let q = query(&[("user_id", user_id)]);
        let body = json!({"client_id": client_id, "id": id});
        self.post(&format!("/api/v1/offline/ack{q}"), body).await
    }

    /// `POST /api/v1/offline/ack/batch?user_id=` with `{"client_id","ids":[..]}`.
    pub async fn offline_ack_batch(&self, user_id: Option<&str>, client_id: &str, ids: &[&str]) -> Result<ApiResponse> {
        let q = query(&[("user_id", user_id)]);
        let body = json!({"client_id": client_id, "ids": ids});
        self.post(&format!("/api/v1/offline/ack/batch{q}"), body).await
    }

    /// `GET /api/v1/offline/count?user_id=&client_id=`.
    pub async fn offline_count(&self, user_id: Option<&str>, client_id: Option<&str>) -> Result<ApiResponse> {
        let q = query(&[("user_id", user_id), ("client_id", client_id)]);
        self.get(&format!("/api/v1/offline/count{q}")).await
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<ApiResponse> {
        self.get("/health").await
    }

    /// `GET /ready`.
    pub async fn ready(&self) -> Result<ApiResponse> {
        self.get("/ready").await
    }

    /// `GET /metrics` (Prometheus text: read [`ApiResponse::text`]).
    pub async fn metrics(&self) -> Result<ApiResponse> {
        self.get("/metrics").await
    }

    /// `GET /openapi.json`.
    pub async fn openapi(&self) -> Result<ApiResponse> {
        self.get("/openapi.json").await
    }
}

fn default_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap_or_default()
}

fn header_value(v: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(v).map_err(|e| Error::InvalidInput(format!("header value: {e}")))
}

/// Percent-encodes one path segment (keeps unreserved characters and `:`/`@`).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?k=v&...` from the pairs that have a value (empty string when none).
fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            out.push(if out.is_empty() { '?' } else { '&' });
            out.push_str(k);
            out.push('=');
            out.push_str(&segment(v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_path_segments() {
        assert_eq!(segment("school:1"), "school:1");
        assert_eq!(segment("a b/c?d#é"), "a%20b%2Fc%3Fd%23%C3%A9");
        assert_eq!(segment("x+y&z=1"), "x%2By%26z%3D1");
    }

    #[test]
    fn builds_queries_from_present_values() {
        assert_eq!(query(&[("a", None)]), "");
        assert_eq!(query(&[("since", Some("1-0")), ("x", None), ("limit", Some("5"))]), "?since=1-0&limit=5");
        assert_eq!(query(&[("cursor", Some("a&b"))]), "?cursor=a%26b");
    }

    #[test]
    fn trims_base_and_builds_auth() {
        let api = Api::new("http://h:1/", "k");
        assert_eq!(api.base_url(), "http://h:1");
        assert_eq!(api.auth.as_deref(), Some("Bearer k"));
        assert!(Api::unauthenticated("http://h:1").auth.is_none());
    }
}
