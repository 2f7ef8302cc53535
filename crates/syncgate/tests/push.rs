//! Push providers against local stand-ins that check each request the way the real service
//! does (FCM, APNs and browser push services cannot be reached from here; the Web Push ones
//! are in push_webpush.rs): the FCM server verifies the OAuth2 assertion with the service account's
//! public key and reads the v1 message; the APNs server is HTTPS + HTTP/2 only and verifies
//! the ES256 provider token and the headers. Gone tokens, retries and failures come from
//! answers the stand-ins are told to give.

mod common;
mod push_support;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use push_support::webpush::{browser, webpush_config, webpush_fixture};
use push_support::{event, job, push_with};
use push_support::{now, p256_key, refuse, Log, Plan, TestCert, TlsServer};
use serde_json::{json, Value};
use syncgate::config::{PushApns, PushFcm};
use syncgate::push::{Devices, Priority, Provider, Registration, Sent};

// ---------------------------------------------------------------- FCM HTTP v1

#[derive(Clone)]
struct FcmService {
    /// The service account's public key, as Google keeps it.
    public_pem: String,
    client_email: String,
    token_uri: Arc<parking_lot::Mutex<String>>,
    tokens_issued: Log<String>,
    messages: Log<Value>,
    plan: Plan,
}

fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            let mut out = Vec::new();
            let b = v.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' && i + 2 < b.len() {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
                    out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                    i += 3;
                } else {
                    out.push(if b[i] == b'+' { b' ' } else { b[i] });
                    i += 1;
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        })
    })
}

async fn fcm_token(State(s): State<FcmService>, headers: HeaderMap, body: String) -> Response {
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/x-www-form-urlencoded") {
        return refuse(StatusCode::BAD_REQUEST, "form body expected");
    }
    if form_value(&body, "grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return refuse(StatusCode::BAD_REQUEST, r#"{"error":"unsupported_grant_type"}"#);
    }
    let Some(assertion) = form_value(&body, "assertion") else {
        return refuse(StatusCode::BAD_REQUEST, r#"{"error":"invalid_request"}"#);
    };
    let key = DecodingKey::from_rsa_pem(s.public_pem.as_bytes()).expect("public key");
    let mut v = Validation::new(Algorithm::RS256);
    let token_uri = s.token_uri.lock().clone();
    v.set_audience(&[&token_uri]);
    v.set_issuer(&[&s.client_email]);
    v.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let claims = match jsonwebtoken::decode::<Value>(&assertion, &key, &v) {
        Ok(d) => d.claims,
        Err(e) => {
            return refuse(StatusCode::BAD_REQUEST, format!(r#"{{"error":"invalid_grant","error_description":"{e}"}}"#))
        }
    };
    if claims["scope"] != json!("https://www.googleapis.com/auth/firebase.messaging") {
        return refuse(StatusCode::BAD_REQUEST, r#"{"error":"invalid_scope"}"#);
    }
    let (iat, exp) = (claims["iat"].as_u64().unwrap_or(0), claims["exp"].as_u64().unwrap_or(0));
    if exp <= iat || exp - iat > 3600 {
        return refuse(StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant","error_description":"exp"}"#);
    }
    let token = format!("ya29.test-{}", s.tokens_issued.len() + 1);
    s.tokens_issued.add(token.clone());
    axum::Json(json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})).into_response()
}

async fn fcm_send(
    State(s): State<FcmService>,
    Path((project, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    let issued = s.tokens_issued.all();
    if !bearer.strip_prefix("Bearer ").is_some_and(|t| issued.iter().any(|i| i == t)) {
        return refuse(StatusCode::UNAUTHORIZED, r#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#);
    }
    if project != "demo-project" || method != "messages:send" {
        return refuse(StatusCode::NOT_FOUND, "unknown project");
    }
    let Ok(m) = serde_json::from_str::<Value>(&body) else { return refuse(StatusCode::BAD_REQUEST, "not JSON") };
    let msg = &m["message"];
    // v1: exactly one target; data values are strings; android.priority is HIGH or NORMAL.
    if !msg["token"].is_string() || !msg["data"].as_object().is_some_and(|d| d.values().all(Value::is_string)) {
        return refuse(StatusCode::BAD_REQUEST, r#"{"error":{"code":400,"status":"INVALID_ARGUMENT"}}"#);
    }
    if !["HIGH", "NORMAL"].contains(&msg["android"]["priority"].as_str().unwrap_or("")) {
        return refuse(StatusCode::BAD_REQUEST, r#"{"error":{"code":400,"status":"INVALID_ARGUMENT"}}"#);
    }
    s.messages.add(m.clone());
    match s.plan.next() {
        Some((st, h, b)) => (st, h, b).into_response(),
        None => axum::Json(json!({"name": "projects/demo-project/messages/0:1"})).into_response(),
    }
}

#[tokio::test]
async fn fcm_gets_an_oauth2_token_from_the_service_account_and_sends_v1_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = TestCert::new(tmp.path());
    let rsa_key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let svc = FcmService {
        public_pem: rsa_key.to_public_key().to_public_key_pem(rsa::pkcs8::LineEnding::LF).unwrap(),
        client_email: "push@demo-project.iam.gserviceaccount.com".into(),
        token_uri: Default::default(),
        tokens_issued: Log::default(),
        messages: Log::default(),
        plan: Plan::default(),
    };
    let router = Router::new()
        .route("/token", post(fcm_token))
        .route("/v1/projects/{project}/{method}", post(fcm_send))
        .with_state(svc.clone());
    let server = TlsServer::start(&cert, router, false).await;
    *svc.token_uri.lock() = format!("{}/token", server.url());
    let sa = json!({
        "type": "service_account", "project_id": "demo-project", "private_key_id": "k1",
        "private_key": rsa_key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).unwrap().to_string(),
        "client_email": svc.client_email, "token_uri": format!("{}/token", server.url()),
    });
    let sa_file = tmp.path().join("service-account.json");
    std::fs::write(&sa_file, sa.to_string()).unwrap();
    let (push, devices) = push_with(tmp.path(), &cert, |c| {
        c.providers.fcm = Some(PushFcm { service_account_file: sa_file.display().to_string(), endpoint: server.url() })
    });
    let reg = |c: &str, t: &str| Registration {
        client_id: c.into(),
        provider: Provider::Fcm,
        token: Some(t.into()),
        subscription: None,
        updated_at: 1,
    };
    devices.put("alice", reg("phone", "fcm-token-1"), 10).await.unwrap();

    for (p, android) in [(Priority::High, "HIGH"), (Priority::Normal, "NORMAL"), (Priority::Low, "NORMAL")] {
        let sent = push.deliver(&job("phone", Provider::Fcm, event(p, json!({"n": 1})))).await;
        assert_eq!(sent, Sent::Delivered);
        let m = svc.messages.all().pop().unwrap();
        assert_eq!(m["message"]["token"], "fcm-token-1");
        assert_eq!(m["message"]["android"]["priority"], android);
        assert_eq!(m["message"]["android"]["ttl"], "86400s");
        assert_eq!(m["message"]["data"]["type"], "chat.message");
        assert_eq!(m["message"]["data"]["id"], "e1.abcdef.7");
        assert_eq!(
            serde_json::from_str::<Value>(m["message"]["data"]["data"].as_str().unwrap()).unwrap(),
            json!({"n": 1})
        );
    }
    assert_eq!(svc.tokens_issued.len(), 1, "the access token is cached until it expires");

    // A 401 drops the cached token: the retry exchanges a new assertion.
    let j = job("phone", Provider::Fcm, event(Priority::Normal, json!(1)));
    svc.plan.push(401, &[], r#"{"error":{"code":401,"message":"expired","status":"UNAUTHENTICATED"}}"#);
    assert!(matches!(push.deliver(&j).await, Sent::Retry { .. }));
    assert_eq!(push.deliver(&j).await, Sent::Delivered);
    assert_eq!(svc.tokens_issued.len(), 2);

    svc.plan.push(503, &[("retry-after", "3")], r#"{"error":{"code":503,"status":"UNAVAILABLE"}}"#);
    assert!(matches!(push.deliver(&j).await, Sent::Retry { after: Some(d), .. } if d == Duration::from_secs(3)));
    svc.plan.push(400, &[], r#"{"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}"#);
    assert!(matches!(push.deliver(&j).await, Sent::Failed(_)));
    svc.plan.push(
        404,
        &[],
        r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#,
    );
    assert!(matches!(push.deliver(&j).await, Sent::Gone(r) if r.contains("UNREGISTERED")));
    assert!(devices.get("alice", "phone").await.unwrap().is_none(), "an UNREGISTERED token is removed");

    // A device that registered a new token since the send keeps it when the old one is gone.
    devices.put("alice", reg("tablet", "new"), 10).await.unwrap();
    assert!(!devices.remove_if("alice", "tablet", "old").await.unwrap());
    assert!(devices.get("alice", "tablet").await.unwrap().is_some());
}

// ---------------------------------------------------------------- APNs

#[derive(Clone)]
struct ApnsService {
    public_pem: String,
    key_id: String,
    team_id: String,
    topic: String,
    got: Log<(String, HeaderMap, Value)>,
    plan: Plan,
}

async fn apns_send(State(s): State<ApnsService>, Path(token): Path<String>, req: axum::extract::Request) -> Response {
    if req.version() != Version::HTTP_2 {
        return refuse(StatusCode::HTTP_VERSION_NOT_SUPPORTED, "APNs is HTTP/2 only");
    }
    let headers = req.headers().clone();
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let apns_err = |status: StatusCode, reason: &str| (status, axum::Json(json!({"reason": reason}))).into_response();
    let auth = h("authorization");
    let Some(jwt) = auth.strip_prefix("bearer ") else {
        return apns_err(StatusCode::FORBIDDEN, "MissingProviderToken");
    };
    let Ok(header) = jsonwebtoken::decode_header(jwt) else {
        return apns_err(StatusCode::FORBIDDEN, "InvalidProviderToken");
    };
    if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(s.key_id.as_str()) {
        return apns_err(StatusCode::FORBIDDEN, "InvalidProviderToken");
    }
    let key = DecodingKey::from_ec_pem(s.public_pem.as_bytes()).expect("key");
    let mut v = Validation::new(Algorithm::ES256);
    v.validate_exp = false;
    v.set_required_spec_claims::<&str>(&[]);
    v.set_issuer(&[&s.team_id]);
    let claims = match jsonwebtoken::decode::<Value>(jwt, &key, &v) {
        Ok(d) => d.claims,
        Err(_) => return apns_err(StatusCode::FORBIDDEN, "InvalidProviderToken"),
    };
    let iat = claims["iat"].as_u64().unwrap_or(0);
    if iat + 3600 < now() || iat > now() + 60 {
        return apns_err(StatusCode::FORBIDDEN, "ExpiredProviderToken");
    }
    if h("apns-topic") != s.topic {
        return apns_err(StatusCode::BAD_REQUEST, "TopicDisallowed");
    }
    if !["alert", "background"].contains(&h("apns-push-type").as_str()) {
        return apns_err(StatusCode::BAD_REQUEST, "InvalidPushType");
    }
    if !["10", "5", "1"].contains(&h("apns-priority").as_str()) {
        return apns_err(StatusCode::BAD_REQUEST, "BadPriority");
    }
    if h("apns-expiration").parse::<u64>().is_err() {
        return apns_err(StatusCode::BAD_REQUEST, "BadExpirationDate");
    }
    if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return apns_err(StatusCode::BAD_REQUEST, "BadDeviceToken");
    }
    let Ok(body) = axum::body::to_bytes(req.into_body(), 8192).await else {
        return apns_err(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    };
    if body.len() > 4096 {
        return apns_err(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    }
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return apns_err(StatusCode::BAD_REQUEST, "BadPayload");
    };
    if !json["aps"].is_object() {
        return apns_err(StatusCode::BAD_REQUEST, "PayloadEmpty");
    }
    s.got.add((token, headers, json));
    match s.plan.next() {
        Some((st, h, b)) => (st, h, b).into_response(),
        None => (StatusCode::OK, [("apns-id", "0e2b2a34-0000-4000-8000-000000000001")]).into_response(),
    }
}

#[tokio::test]
async fn apns_sends_over_http2_with_an_es256_provider_token_and_its_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = TestCert::new(tmp.path());
    let key = p256_key();
    let key_file = tmp.path().join("AuthKey_TESTKEY123.p8");
    std::fs::write(&key_file, key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
    let svc = ApnsService {
        public_pem: key.public_key().to_public_key_pem(LineEnding::LF).unwrap(),
        key_id: "TESTKEY123".into(),
        team_id: "TEAM123456".into(),
        topic: "com.example.app".into(),
        got: Log::default(),
        plan: Plan::default(),
    };
    let router = Router::new().route("/3/device/{token}", post(apns_send)).with_state(svc.clone());
    let server = TlsServer::start(&cert, router, true).await;
    let (push, devices) = push_with(tmp.path(), &cert, |c| {
        c.providers.apns = Some(PushApns {
            key_file: key_file.display().to_string(),
            key_id: "TESTKEY123".into(),
            team_id: "TEAM123456".into(),
            topic: "com.example.app".into(),
            endpoint: server.url(),
        })
    });
    let reg = |c: &str, t: &str| Registration {
        client_id: c.into(),
        provider: Provider::Apns,
        token: Some(t.into()),
        subscription: None,
        updated_at: 1,
    };
    devices.put("alice", reg("iphone", "a1b2c3d4"), 10).await.unwrap();

    for (p, prio) in [(Priority::High, "10"), (Priority::Normal, "5"), (Priority::Low, "5")] {
        let sent = push.deliver(&job("iphone", Provider::Apns, event(p, json!({"n": 2})))).await;
        assert_eq!(sent, Sent::Delivered);
        let (token, h, body) = svc.got.all().pop().unwrap();
        assert_eq!(token, "a1b2c3d4");
        assert_eq!(h["apns-priority"], prio);
        assert_eq!(h["apns-push-type"], "alert");
        let exp: u64 = h["apns-expiration"].to_str().unwrap().parse().unwrap();
        assert!(exp >= now() + 24 * 3600 - 60 && exp <= now() + 24 * 3600 + 60, "apns-expiration is now + push.ttl");
        assert_eq!(body["syncgate"]["data"], json!({"n": 2}));
        assert_eq!(body["syncgate"]["priority"], p.as_str());
    }
    let tokens: std::collections::HashSet<String> =
        svc.got.all().iter().map(|(_, h, _)| h["authorization"].to_str().unwrap().to_string()).collect();
    assert_eq!(tokens.len(), 1, "one provider token is reused (Apple throttles renewing it)");

    let j = job("iphone", Provider::Apns, event(Priority::Normal, json!(1)));
    svc.plan.push(429, &[], r#"{"reason":"TooManyRequests"}"#);
    assert!(matches!(push.deliver(&j).await, Sent::Retry { .. }));
    svc.plan.push(500, &[], r#"{"reason":"InternalServerError"}"#);
    assert!(matches!(push.deliver(&j).await, Sent::Retry { .. }));
    svc.plan.push(400, &[], r#"{"reason":"PayloadEmpty"}"#);
    assert!(matches!(push.deliver(&j).await, Sent::Failed(_)));
    svc.plan.push(410, &[], r#"{"reason":"Unregistered","timestamp":1700000000000}"#);
    assert!(matches!(push.deliver(&j).await, Sent::Gone(r) if r.contains("Unregistered")));
    assert!(devices.get("alice", "iphone").await.unwrap().is_none(), "an Unregistered token is removed");

    devices.put("alice", reg("ipad", "ffff"), 10).await.unwrap();
    svc.plan.push(400, &[], r#"{"reason":"BadDeviceToken"}"#);
    let j = job("ipad", Provider::Apns, event(Priority::High, json!(1)));
    assert!(matches!(push.deliver(&j).await, Sent::Gone(r) if r.contains("BadDeviceToken")));
    assert!(devices.get("alice", "ipad").await.unwrap().is_none(), "a BadDeviceToken registration is removed");
}

// ---------------------------------------------------------------- through the outbound queue

#[tokio::test]
async fn undelivered_messages_are_pushed_through_the_queue_with_retries_dead_letters_and_gone_removal() {
    use syncgate::push::runner::{PushHook, PushRunner};
    use syncgate::queue::embedded::{EmbeddedQueue, EmbeddedQueueOptions};
    use syncgate::queue::metrics::QueueMetrics;
    use syncgate::queue::{JobKind, Queue, Workers};
    use syncgate::webhooks::{Undelivered, UndeliveredHook};

    let tmp = tempfile::tempdir().unwrap();
    let cert = TestCert::new(tmp.path());
    let fx = webpush_fixture(tmp.path(), &cert).await;
    let (push, devices) = push_with(tmp.path(), &cert, |c| webpush_config(c, &fx));
    let push = Arc::new(push);
    devices.put("alice", browser(&fx.sub), 10).await.unwrap();

    let qcfg = syncgate::config::QueueConfig {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        max_attempts: 4,
        poll_interval: Duration::from_millis(20),
        ..Default::default()
    };
    let opts =
        EmbeddedQueueOptions { max_jobs: 1000, max_dead: 100, fsync: syncgate::store::embedded::FsyncPolicy::Never };
    let queue: Arc<dyn Queue> = Arc::new(EmbeddedQueue::open(tmp.path(), opts).unwrap());
    let workers = Workers::new(queue.clone(), &qcfg, Arc::new(QueueMetrics::default()));
    workers.register(JobKind::Push, Arc::new(PushRunner::new(push.clone())));
    let stop = tokio_util::sync::CancellationToken::new();
    let _w = workers.spawn(stop.clone(), Duration::from_secs(2));
    let hook = PushHook::new(push.clone(), workers.clone());

    let undelivered = |id: &str, priority: &str| Undelivered {
        user_id: "alice".into(),
        id: id.into(),
        kind: "chat.message".into(),
        data: json!({"text": "hi"}),
        priority: priority.into(),
        ts: 1_700_000_000_000,
        ttl_s: None,
    };
    let wait = |what: &'static str, f: Box<dyn Fn() -> bool + Send>| async move {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("not reached in 10 s: {what}");
    };
    let settled = |q: Arc<dyn Queue>| async move {
        for _ in 0..500 {
            let s = q.stats().await.unwrap();
            if s.ready.total() + s.delayed + s.in_flight == 0 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("queue did not settle");
    };

    // Two 503s, then accepted: the third attempt delivers it, once.
    fx.plan.push(503, &[], "");
    fx.plan.push(503, &[], "");
    hook.undelivered(&undelivered("e1.abcdef.1", "high")).await.unwrap();
    let got = fx.got.clone();
    wait("delivered after retries", Box::new(move || got.len() == 3)).await;
    let s = settled(queue.clone()).await;
    assert_eq!(s.dead, 0);
    let (_, urgency, body) = fx.got.all().pop().unwrap();
    assert_eq!((urgency.as_str(), body["id"].as_str()), ("high", Some("e1.abcdef.1")));

    // A permanent refusal is dead-lettered at once, with the push job as its payload.
    fx.plan.push(400, &[], "malformed");
    hook.undelivered(&undelivered("e1.abcdef.2", "normal")).await.unwrap();
    let s = settled(queue.clone()).await;
    assert_eq!(s.dead, 1);
    let dead = queue.dead(10, None).await.unwrap().jobs.remove(0);
    assert_eq!(dead.job.kind, JobKind::Push);
    assert_eq!(dead.job.endpoint, "webpush:127.0.0.1");
    assert_eq!(dead.job.attempts, 1);
    let payload: Value = serde_json::from_slice(&dead.job.payload).unwrap();
    assert_eq!(
        (payload["client_id"].as_str(), payload["event"]["id"].as_str()),
        (Some("browser"), Some("e1.abcdef.2"))
    );

    // Gone: the job is done and the registration removed; later messages make no jobs.
    fx.plan.push(410, &[], "");
    hook.undelivered(&undelivered("e1.abcdef.3", "low")).await.unwrap();
    let d = devices.clone();
    settled(queue.clone()).await;
    assert!(d.get("alice", "browser").await.unwrap().is_none());
    assert!(push
        .enqueue_for(&workers, "alice", &syncgate::push::runner::event_of(&undelivered("x", "low")))
        .await
        .unwrap()
        .is_empty());
    stop.cancel();
}

// ---------------------------------------------------------------- a real node

#[tokio::test]
async fn a_node_pushes_an_undelivered_message_to_a_registered_browser_and_not_to_a_connected_user() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = TestCert::new(tmp.path());
    let fx = webpush_fixture(tmp.path(), &cert).await;
    let s = common::TestServer::with(|c| {
        webpush_config(&mut c.push, &fx);
        c.push.ca_file = cert.pem_file.display().to_string();
        c.push.delay = Duration::from_millis(300);
        c.queue.poll_interval = Duration::from_millis(50);
    })
    .await;
    let reg = json!({"user_id": "alice", "client_id": "browser", "provider": "webpush", "subscription": fx.sub});
    let r = s.api.request(syncgate_client::Method::POST, "/api/v1/push/devices", Some(reg), &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let body =
        json!({"user_id": "alice", "type": "chat.message", "data": {"text": "hi"}, "priority": "high", "ttl_s": 60});
    let r = s.api.publish(body).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    let got = fx.got.clone();
    common::eventually(move || got.len() == 1).await;
    let (ttl, urgency, payload) = fx.got.all().remove(0);
    assert_eq!((ttl, urgency.as_str()), (60, "high"), "the message's ttl_s and priority");
    assert_eq!((&payload["id"], &payload["data"]), (&r.body["id"], &json!({"text": "hi"})));
    // A user with a device connected gets no push.
    let (_d, _) = s.device("alice", &[]).await;
    common::publish(&s.api, "alice", "chat.message", json!({"text": "there?"})).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(fx.got.len(), 1, "pushed although a device was connected");
    s.stop().await;
}
