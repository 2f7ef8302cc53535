//! The contract's error codes, and their mapping to HTTP statuses, in one place.
//!
//! Owns: `Code` (the strings clients see in error frames and HTTP bodies) and `Error`
//! (a code plus a human message). Every module's own error converts into `Error` here.
//!
//! Must never: leak internal details (paths, Redis replies) into messages of `internal`.

use std::fmt;

use axum::http::StatusCode;

use crate::store::{IdError, StoreError};

/// Error codes of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidRequest,
    InvalidFrame,
    UnknownOp,
    InvalidMessageType,
    Forbidden,
    NotFound,
    RateLimitExceeded,
    PayloadTooLarge,
    Unauthorized,
    IdempotencyConflict,
    ServiceUnavailable,
    Internal,
    /// A request body that did not arrive within `server.body_timeout` (HTTP 408).
    RequestTimeout,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidRequest => "invalid_request",
            Code::InvalidFrame => "invalid_frame",
            Code::UnknownOp => "unknown_op",
            Code::InvalidMessageType => "invalid_message_type",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::RateLimitExceeded => "rate_limit_exceeded",
            Code::PayloadTooLarge => "payload_too_large",
            Code::Unauthorized => "unauthorized",
            Code::IdempotencyConflict => "idempotency_conflict",
            Code::ServiceUnavailable => "service_unavailable",
            Code::Internal => "internal",
            Code::RequestTimeout => "request_timeout",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidRequest | Code::InvalidFrame | Code::UnknownOp | Code::InvalidMessageType => {
                StatusCode::BAD_REQUEST
            }
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::IdempotencyConflict => StatusCode::CONFLICT,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::RateLimitExceeded => StatusCode::TOO_MANY_REQUESTS,
            Code::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as a client sees it: a code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: Code,
    pub message: String,
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error { code, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidRequest, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthorized, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::ServiceUnavailable, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::Closed => {
                tracing::warn!(error = %e, "store unavailable");
                Error::unavailable("storage is unavailable; retry later")
            }
            StoreError::Internal(_) => {
                tracing::error!(error = %e, "store error");
                Error::internal("internal storage error")
            }
        }
    }
}

impl From<IdError> for Error {
    fn from(e: IdError) -> Self {
        Error::invalid(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
