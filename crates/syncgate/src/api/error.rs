//! HTTP rendering of errors: `{"error":{"code","message"}}` with the contract's status,
//! and the rate-limit headers of a 429.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::{Code, Error};
use crate::limits::Refused;

#[derive(Debug)]
pub struct ApiError {
    pub err: Error,
    pub refused: Option<Refused>,
}

impl ApiError {
    pub fn rate_limited(r: Refused, message: &str) -> Self {
        ApiError { err: Error::new(Code::RateLimitExceeded, message), refused: Some(r) }
    }
}

/// Every module error that maps to a contract error maps to an HTTP answer.
impl<E: Into<Error>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError { err: e.into(), refused: None }
    }
}

/// The JSON error body.
pub fn body(err: &Error) -> serde_json::Value {
    json!({"error": {"code": err.code.as_str(), "message": err.message}})
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status: StatusCode = self.err.code.status();
        let mut resp = (status, Json(body(&self.err))).into_response();
        if let Some(r) = self.refused {
            let h = resp.headers_mut();
            let secs = r.retry_after.as_secs_f64().ceil().max(1.0) as u64;
            h.insert("retry-after", HeaderValue::from(secs));
            h.insert("x-ratelimit-limit", HeaderValue::from(r.limit));
            h.insert("x-ratelimit-remaining", HeaderValue::from(0u32));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// `{"error":{"code","message"}}`, as the OpenAPI document describes it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    #[schema(inline)]
    error: ErrorDetail,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ErrorDetail {
    /// One of the contract's error codes (invalid_request, unauthorized, ...).
    code: String,
    /// A plain sentence for people; may name the field that is wrong.
    message: String,
}

/// OpenAPI: every `/api/` operation documents the errors any such call can answer (a bad
/// path or query 400, credentials 401, rate limits 429, storage down 503; with a body also
/// 408 and 413), each with the `ErrorBody` schema, so contract tests hold answers to it.
pub struct ErrorResponses;

impl utoipa::Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        use utoipa::PartialSchema;
        let c = openapi.components.get_or_insert_with(Default::default);
        c.schemas.insert("ErrorBody".into(), ErrorBody::schema());
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                    )
                    .build(),
            )
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/api/") {
                continue;
            }
            for op in [&mut item.get, &mut item.post, &mut item.put, &mut item.delete].into_iter().flatten() {
                let mut common = vec![
                    ("400", "invalid_request: a bad path, query or body"),
                    ("401", "unauthorized: missing or invalid credentials"),
                    ("429", "rate_limit_exceeded (with Retry-After)"),
                    ("503", "service_unavailable: storage or broker unreachable"),
                ];
                if op.request_body.is_some() {
                    common.push(("408", "request_timeout: the body did not arrive within server.body_timeout"));
                    common.push(("413", "payload_too_large"));
                }
                let responses = &mut op.responses.responses;
                for (status, description) in common {
                    responses.entry(status.to_string()).or_insert_with(|| error(description));
                }
                for (status, r) in responses.iter_mut() {
                    let is_error = status.starts_with('4') || status.starts_with('5');
                    if let (true, RefOr::T(resp)) = (is_error, &*r) {
                        if resp.content.is_empty() {
                            let d = if resp.description.is_empty() { status.clone() } else { resp.description.clone() };
                            *r = error(&d);
                        }
                    }
                }
            }
        }
    }
}
