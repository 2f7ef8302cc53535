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
