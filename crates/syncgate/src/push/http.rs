//! The HTTP side shared by the push providers: the clients (rustls, with `push.ca_file`'s
//! extra roots; one HTTP/2-only client for APNs; one for Web Push endpoints whose resolver
//! keeps public addresses only, see `guard.rs`) and the reading of an answer that every
//! provider shares (`Retry-After`, which statuses are worth a retry).
//!
//! Must never: follow redirects (providers do not redirect, and a redirect could lead a
//! Web Push send past the endpoint rule), or wait for an answer past `push.timeout`.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use super::{PushError, Sent};
use crate::config::PushConfig;

/// Largest provider answer read (errors are small JSON documents).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct Clients {
    /// HTTP/1.1 or HTTP/2 as the server offers (Web Push services, FCM, OAuth2).
    pub any: reqwest::Client,
    /// HTTP/2 only (APNs refuses HTTP/1.1).
    pub h2: reqwest::Client,
    /// Like `any`, but host names resolve to public addresses only (`guard::PublicOnly`):
    /// Web Push endpoints on hosts not in `allow_hosts`.
    pub public: reqwest::Client,
}

impl Clients {
    pub fn new(cfg: &PushConfig) -> Result<Self, PushError> {
        let roots = if cfg.ca_file.is_empty() {
            Vec::new()
        } else {
            let pem = std::fs::read(&cfg.ca_file)
                .map_err(|e| PushError::Client(format!("push.ca_file {}: {e}", cfg.ca_file)))?;
            reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| PushError::Client(format!("push.ca_file {}: {e}", cfg.ca_file)))?
        };
        let build = |h2: bool, public_only: bool| {
            let mut b = reqwest::Client::builder()
                .use_rustls_tls()
                .timeout(cfg.timeout)
                .connect_timeout(cfg.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("syncgate/", env!("CARGO_PKG_VERSION")));
            for r in &roots {
                b = b.add_root_certificate(r.clone());
            }
            if h2 {
                b = b.http2_prior_knowledge();
            }
            if public_only {
                b = b.dns_resolver(std::sync::Arc::new(super::guard::PublicOnly));
            }
            b.build().map_err(|e| PushError::Client(e.to_string()))
        };
        Ok(Clients { any: build(false, false)?, h2: build(true, false)?, public: build(false, true)? })
    }
}

/// `Retry-After` as seconds or an HTTP date, capped at one hour.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let d = match v.parse::<u64>() {
        Ok(s) => Duration::from_secs(s),
        Err(_) => httpdate::parse_http_date(v).ok()?.duration_since(SystemTime::now()).unwrap_or_default(),
    };
    Some(d.min(Duration::from_secs(3600)))
}

/// The generic reading of an answer: 2xx delivered, 404/410 gone, 408/429/5xx retry
/// (after `Retry-After`), any other 4xx failed for good. Providers refine it from the body.
pub fn classify(status: StatusCode, headers: &HeaderMap, detail: &str) -> Sent {
    let reason = if detail.is_empty() { status.to_string() } else { format!("{status}: {detail}") };
    match status.as_u16() {
        200..=299 => Sent::Delivered,
        404 | 410 => Sent::Gone(reason),
        408 | 429 | 500..=599 => Sent::Retry { after: retry_after(headers), reason },
        _ => Sent::Failed(reason),
    }
}

/// A request that got no answer (connect error, timeout, reset): worth a retry.
pub fn transport_error(e: &reqwest::Error) -> Sent {
    Sent::Retry { after: None, reason: format!("request failed: {e}") }
}

/// Reads at most `MAX_ANSWER_BYTES` of an answer's body, as text.
pub async fn body_text(mut resp: reqwest::Response) -> String {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX_ANSWER_BYTES.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= MAX_ANSWER_BYTES {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_like_providers_mean_them() {
        let mut h = HeaderMap::new();
        assert_eq!(classify(StatusCode::CREATED, &h, ""), Sent::Delivered);
        assert!(matches!(classify(StatusCode::GONE, &h, ""), Sent::Gone(_)));
        assert!(matches!(classify(StatusCode::NOT_FOUND, &h, ""), Sent::Gone(_)));
        assert!(matches!(classify(StatusCode::BAD_REQUEST, &h, ""), Sent::Failed(_)));
        assert!(matches!(classify(StatusCode::SERVICE_UNAVAILABLE, &h, ""), Sent::Retry { after: None, .. }));
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h, ""),
            Sent::Retry { after: Some(d), .. } if d == Duration::from_secs(7)
        ));
        h.insert(reqwest::header::RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
    }
}
