//! The Web Push stand-in: a push service on loopback HTTPS that checks each request the way
//! a browser vendor's service does (VAPID, RFC 8291 payload encryption) and records the
//! decrypted payloads, for the provider test and the end-to-end push test.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::Value;
use syncgate::config::{PushConfig, PushWebPush};
use syncgate::push::{Provider, Registration, Subscription};

use super::{now, p256_key, refuse, reply, Log, Plan, TestCert, TlsServer};

#[derive(Clone)]
pub struct WebPushService {
    pub ua_secret: p256::SecretKey,
    pub auth: [u8; 16],
    /// The applicationServerKey the subscription was made with.
    pub app_server_key: String,
    pub origin: String,
    pub got: Log<(u64, String, Value)>,
    pub plan: Plan,
}

pub async fn webpush_endpoint(State(s): State<WebPushService>, headers: HeaderMap, body: Bytes) -> Response {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if h("content-encoding") != "aes128gcm" {
        return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "content-encoding must be aes128gcm");
    }
    let Ok(ttl) = h("ttl").parse::<u64>() else { return refuse(StatusCode::BAD_REQUEST, "TTL header required") };
    let urgency = h("urgency");
    if !["very-low", "low", "normal", "high"].contains(&urgency.as_str()) {
        return refuse(StatusCode::BAD_REQUEST, "bad Urgency");
    }
    // RFC 8292: Authorization: vapid t=JWT, k=PUBLIC KEY
    let auth = h("authorization");
    let Some(rest) = auth.strip_prefix("vapid ") else { return refuse(StatusCode::UNAUTHORIZED, "not vapid") };
    let mut t = "";
    let mut k = "";
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("t=") {
            t = v;
        } else if let Some(v) = part.strip_prefix("k=") {
            k = v;
        }
    }
    if k != s.app_server_key {
        return refuse(StatusCode::FORBIDDEN, "k is not the subscription's applicationServerKey");
    }
    let Ok(point) = URL_SAFE_NO_PAD.decode(k) else { return refuse(StatusCode::UNAUTHORIZED, "k not base64url") };
    if point.len() != 65 || point[0] != 4 {
        return refuse(StatusCode::UNAUTHORIZED, "k is not an uncompressed P-256 point");
    }
    let key =
        DecodingKey::from_ec_components(&URL_SAFE_NO_PAD.encode(&point[1..33]), &URL_SAFE_NO_PAD.encode(&point[33..]))
            .expect("key");
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[&s.origin]);
    v.set_required_spec_claims(&["exp", "aud", "sub"]);
    let claims = match jsonwebtoken::decode::<Value>(t, &key, &v) {
        Ok(d) => d.claims,
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, format!("VAPID token: {e}")),
    };
    if claims["exp"].as_u64().unwrap_or(0) > now() + 24 * 3600 {
        return refuse(StatusCode::UNAUTHORIZED, "VAPID exp more than 24h ahead");
    }
    if !claims["sub"].as_str().unwrap_or("").starts_with("mailto:") {
        return refuse(StatusCode::UNAUTHORIZED, "VAPID sub must be a contact");
    }
    if body.len() > 4096 {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "record over 4096 bytes");
    }
    let auth = web_push_native::Auth::clone_from_slice(&s.auth);
    let plain = match web_push_native::decrypt(body.to_vec(), &s.ua_secret, &auth) {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("cannot decrypt: {e}")),
    };
    let Ok(json) = serde_json::from_slice::<Value>(&plain) else { return refuse(StatusCode::BAD_REQUEST, "not JSON") };
    s.got.add((ttl, urgency, json));
    reply(&s.plan, StatusCode::CREATED)
}

/// A Web Push stand-in with one subscription, and the VAPID key file of the app server.
pub struct WebPushFixture {
    pub _server: TlsServer,
    pub vapid_file: std::path::PathBuf,
    pub got: Log<(u64, String, Value)>,
    pub plan: Plan,
    pub sub: Subscription,
}

pub async fn webpush_fixture(dir: &std::path::Path, cert: &TestCert) -> WebPushFixture {
    let vapid = p256_key();
    let vapid_file = dir.join("vapid.pem");
    std::fs::write(&vapid_file, vapid.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
    let app_server_key = URL_SAFE_NO_PAD.encode(vapid.public_key().to_encoded_point(false).as_bytes());
    let ua_secret = p256_key();
    let auth: [u8; 16] = rand::random();
    let svc = WebPushService {
        ua_secret: ua_secret.clone(),
        auth,
        app_server_key,
        origin: String::new(),
        got: Log::default(),
        plan: Plan::default(),
    };
    let (got, plan) = (svc.got.clone(), svc.plan.clone());
    // The VAPID audience is the server's origin, known once it listens.
    let origin_cell = Arc::new(parking_lot::Mutex::new(String::new()));
    let oc = origin_cell.clone();
    let router = Router::new().route(
        "/wp/{id}",
        post(move |_: Path<String>, headers: HeaderMap, body: Bytes| {
            let mut st = svc.clone();
            st.origin = oc.lock().clone();
            async move { webpush_endpoint(State(st), headers, body).await }
        }),
    );
    let server = TlsServer::start(cert, router, false).await;
    *origin_cell.lock() = server.url();
    let sub = Subscription {
        endpoint: format!("{}/wp/sub-1", server.url()),
        keys: syncgate::push::SubscriptionKeys {
            p256dh: URL_SAFE_NO_PAD.encode(ua_secret.public_key().to_encoded_point(false).as_bytes()),
            auth: URL_SAFE_NO_PAD.encode(auth),
        },
    };
    WebPushFixture { _server: server, vapid_file, got, plan, sub }
}

/// Web Push with the fixture's VAPID key. The stand-in listens on loopback, which the
/// endpoint rule refuses, so it is listed in `allow_hosts` (as `127.0.0.1:PORT`), as an
/// operator lists a push service on a private network.
pub fn webpush_config(c: &mut PushConfig, f: &WebPushFixture) {
    c.providers.webpush = Some(PushWebPush {
        vapid_private_key_file: f.vapid_file.display().to_string(),
        subject: "mailto:ops@example.com".into(),
        allow_hosts: vec![f._server.addr.to_string()],
    });
}

pub fn browser(sub: &Subscription) -> Registration {
    Registration {
        client_id: "browser".into(),
        provider: Provider::Webpush,
        token: None,
        subscription: Some(sub.clone()),
        updated_at: 1,
    }
}
