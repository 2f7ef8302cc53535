//! A receiving HTTP server that plays the app backend in webhook tests: it checks each
//! request's Standard Webhooks signature, answers with the statuses it is told to (a
//! script, then a default), optionally after a delay, and records what it got.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::Value;
use syncgate::webhooks::signature;

/// The secret every test endpoint uses (the Standard Webhooks example key).
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Debug, Clone)]
pub struct Hit {
    pub id: String,
    pub body: Value,
    pub status: u16,
    pub at: Instant,
    pub path: String,
    /// The body as received, and the signature headers (for verifiers written elsewhere).
    pub raw: Bytes,
    pub timestamp: String,
    pub signature: String,
}

impl Hit {
    pub fn kind(&self) -> &str {
        self.body["type"].as_str().unwrap_or("")
    }
}

#[derive(Default)]
pub struct Behaviour {
    /// Statuses to answer first, in order; then `default`.
    pub script: VecDeque<u16>,
    pub default: u16,
    pub delay: Duration,
    /// Body of a 200 answer (the connect proxy reads it).
    pub answer: Option<Value>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub hits: Arc<Mutex<Vec<Hit>>>,
    /// Every signed request as it arrived, before any delay (status 0): what a sender that
    /// died mid-request had sent.
    pub arrivals: Arc<Mutex<Vec<Hit>>>,
    /// Requests whose signature did not verify (must stay empty).
    pub bad: Arc<Mutex<Vec<String>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct St {
    hits: Arc<Mutex<Vec<Hit>>>,
    arrivals: Arc<Mutex<Vec<Hit>>>,
    bad: Arc<Mutex<Vec<String>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    key: Vec<u8>,
}

async fn handle(State(st): State<St>, uri: axum::http::Uri, headers: HeaderMap, body: Bytes) -> Response {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let id = h("webhook-id");
    let path = uri.path().to_string();
    if path != "/proxy" {
        let ts: i64 = h("webhook-timestamp").parse().unwrap_or(0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let ok = signature::verify(&st.key, &id, ts, &body, &h("webhook-signature")) && (now - ts).abs() < 300;
        if !ok {
            st.bad.lock().push(String::from_utf8_lossy(&body).into_owned());
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (timestamp, signature) = (h("webhook-timestamp"), h("webhook-signature"));
    let hit = Hit { id, body: parsed, status: 0, at: Instant::now(), path, raw: body, timestamp, signature };
    st.arrivals.lock().push(hit.clone());
    let (status, delay, answer) = {
        let mut b = st.behaviour.lock();
        let s = b.script.pop_front().unwrap_or(b.default);
        (s, b.delay, b.answer.clone())
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    st.hits.lock().push(Hit { status, at: Instant::now(), ..hit });
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    match answer {
        Some(a) if status == 200 => (code, axum::Json(a)).into_response(),
        // A redirect names a path on this receiver (a client that follows it comes back).
        _ if code.is_redirection() => (code, [("location", "/redirected")]).into_response(),
        _ => code.into_response(),
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(Mutex::new(Behaviour { default: 200, ..Default::default() }));
        let st = St {
            hits: hits.clone(),
            arrivals: arrivals.clone(),
            bad: bad.clone(),
            behaviour: behaviour.clone(),
            key: signature::decode_secret(SECRET).unwrap(),
        };
        let app = axum::Router::new().fallback(handle).with_state(st);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, hits, arrivals, bad, behaviour, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.behaviour.lock());
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().clone()
    }

    /// Hits of one event type answered with 2xx.
    pub fn delivered(&self, kind: &str) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.kind() == kind && (200..300).contains(&h.status)).collect()
    }

    /// Waits (up to `within`) until `f` holds for the hits.
    pub async fn wait(&self, within: Duration, what: &str, f: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let end = Instant::now() + within;
        loop {
            let hits = self.hits();
            if f(&hits) {
                assert!(self.bad.lock().is_empty(), "badly signed requests: {:?}", self.bad.lock());
                return hits;
            }
            if Instant::now() > end {
                panic!(
                    "{what}: not reached in {within:?}; hits: {:#?}",
                    hits.iter().map(|h| (&h.id, h.kind(), h.status)).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An endpoint config entry pointing at the receiver.
pub fn endpoint(url: &str, events: &[&str]) -> syncgate::config::WebhookEndpoint {
    syncgate::config::WebhookEndpoint {
        name: "app".into(),
        url: url.into(),
        secret: SECRET.into(),
        events: events.iter().map(|s| s.to_string()).collect(),
        timeout: Duration::from_secs(5),
    }
}
