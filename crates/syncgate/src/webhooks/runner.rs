//! One webhook attempt: the signed POST of a `JobKind::Webhook` job, and what its answer
//! means for the queue.
//!
//! The job's payload is the event without its id (`{"type","ts","instance_id","data"}`);
//! the body sent is that object with `"id"` (the job id, also `webhook-id`) first, so every
//! retry of one event sends the same bytes and receivers dedupe by id.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{signature, Endpoint};
use crate::queue::{Job, Outcome, Runner};

pub struct WebhookRunner {
    pub http: reqwest::Client,
    pub endpoints: Arc<Vec<Endpoint>>,
}

/// The body of a webhook: `{"id":ID,` + the payload after its `{`.
pub fn body(id: &str, payload: &[u8]) -> Vec<u8> {
    let id = serde_json::to_string(id).unwrap_or_else(|_| "\"\"".into());
    let rest = payload.strip_prefix(b"{").unwrap_or(b"}");
    let mut b = Vec::with_capacity(payload.len() + id.len() + 8);
    b.extend_from_slice(b"{\"id\":");
    b.extend_from_slice(id.as_bytes());
    if rest != b"}" {
        b.push(b',');
    }
    b.extend_from_slice(rest);
    b
}

/// How an HTTP status classifies: 2xx done; 408, 429 and 5xx retried; other 4xx (and
/// anything else) permanent.
pub fn classify(status: u16, retry_after: Option<Duration>) -> Outcome {
    match status {
        200..=299 => Outcome::Done,
        408 | 429 | 500..=599 => Outcome::Retry { error: format!("HTTP {status}"), after: retry_after },
        _ => Outcome::Permanent { error: format!("HTTP {status}") },
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by webhook receivers in
/// practice and is ignored), capped by the caller.
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[async_trait]
impl Runner for WebhookRunner {
    async fn run(&self, job: &Job) -> Outcome {
        let Some(ep) = self.endpoints.iter().find(|e| e.name == job.endpoint) else {
            return Outcome::Permanent { error: format!("endpoint {:?} is no longer configured", job.endpoint) };
        };
        let body = body(&job.id, &job.payload);
        let ts = crate::queue::now_ms() / 1000;
        let sig = signature::sign(&ep.key, &job.id, ts, &body);
        let sent = self
            .http
            .post(&ep.url)
            .timeout(ep.timeout)
            .header("content-type", "application/json")
            .header("webhook-id", &job.id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp) => classify(resp.status().as_u16(), retry_after(resp.headers())),
            Err(e) if e.is_timeout() => {
                Outcome::Retry { error: format!("timed out after {:?}", ep.timeout), after: None }
            }
            Err(e) => Outcome::Retry { error: format!("request failed: {}", error_chain(&e)), after: None },
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_puts_the_id_first() {
        assert_eq!(body("job_1", br#"{"type":"x","data":{}}"#), br#"{"id":"job_1","type":"x","data":{}}"#);
        assert_eq!(body("job_1", b"{}"), br#"{"id":"job_1"}"#);
    }

    #[test]
    fn statuses_classify_as_the_contract_says() {
        assert_eq!(classify(204, None), Outcome::Done);
        for s in [408, 429, 500, 503] {
            assert!(matches!(classify(s, None), Outcome::Retry { .. }), "{s}");
        }
        for s in [400, 401, 404, 410, 301] {
            assert!(matches!(classify(s, None), Outcome::Permanent { .. }), "{s}");
        }
    }
}
