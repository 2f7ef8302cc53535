//! Security and bad input (issue 13): each test here failed on the code the audit found,
//! and shows the fix holds over real sockets.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use syncgate_client::{Api, Device, DeviceOptions, Method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn assert_json_error(r: &syncgate_client::ApiResponse, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {} {}", r.status, r.text);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "{what}: content-type {ct:?}: {}", r.text);
    let msg = r.body["error"]["message"].as_str().unwrap_or_else(|| panic!("{what}: no error.message: {}", r.text));
    assert!(r.body["error"]["code"].is_string(), "{what}: {}", r.text);
    for leak in ["unknown variant", "expected struct", "Failed to deserialize", "expected one of", "invalid type:"] {
        assert!(!msg.contains(leak), "{what}: message leaks library internals: {msg}");
    }
}

#[tokio::test]
async fn unknown_methods_and_unmatched_routes_fold_into_one_metrics_label() {
    let s = TestServer::start().await;
    for i in 0..30 {
        let m = Method::from_bytes(format!("BREW{i}").as_bytes()).unwrap();
        let _ = s.api.request(m, "/health", None, &[]).await.unwrap();
        let _ = s.api.request(Method::GET, &format!("/no/such/route/{i}"), None, &[]).await.unwrap();
    }
    let text = s.api.metrics().await.unwrap().text;
    assert!(!text.contains("BREW"), "a caller-chosen method became a label");
    assert!(!text.contains("/no/such/route"), "a caller-chosen path became a label");
    assert!(text.contains("method=\"other\""), "{text}");
    assert!(text.contains("route=\"unmatched\""), "{text}");
    let lines = text.lines().filter(|l| l.starts_with("syncgate_http_requests_total")).count();
    assert!(lines < 10, "{lines} http_requests series after 60 distinct requests");
    s.stop().await;
}

/// A payload a JSON value would change: duplicate keys, a big integer, a long decimal, -0,
/// a lone surrogate escape and deep nesting.
fn tricky_data() -> String {
    let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    format!(
        r#"{{"a":1,"a":2,"big":123456789012345678901234567890,"dec":0.10000000000000000000000000000001,"neg":-0,"s":"\ud800","e":"caf\u00e9","deep":{deep}}}"#
    )
}

#[tokio::test]
async fn offline_api_and_room_history_return_data_byte_exact() {
    let s = TestServer::start().await;
    let data = tricky_data();
    let body = format!(r#"{{"user_id":"alice","type":"t","data":{data}}}"#);
    let r = s.api.request_raw(Method::POST, "/api/v1/events", Some(body.into_bytes()), &[]).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    let body = format!(r#"{{"type":"t","data":{data}}}"#);
    let r = s.api.request_raw(Method::POST, "/api/v1/rooms/lobby/events", Some(body.into_bytes()), &[]).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text);

    let r = s.api.request(Method::GET, "/api/v1/offline/messages?user_id=alice", None, &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains(&format!(r#""data":{data}"#)), "offline data changed: {}", r.text);
    let r = s.api.room_history("lobby", None, None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains(&format!(r#""data":{data}"#)), "history data changed: {}", r.text);
    s.stop().await;
}

async fn raw_http(base: &str, request: &[u8], wait: Duration) -> String {
    let addr = base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut chunk = [0u8; 4096];
        loop {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.ends_with(b"}") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn a_trickling_body_is_answered_408_after_body_timeout() {
    let s = TestServer::with(|c| c.server.body_timeout = Duration::from_secs(1)).await;
    let req = format!(
        "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    // Generous: the answer is due after 1 s; a loaded machine may take longer.
    let answer = raw_http(&s.base, req.as_bytes(), Duration::from_secs(20)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/json") && answer.contains("request_timeout"), "{answer}");
    s.stop().await;
}

#[tokio::test]
async fn cors_preflight_is_answered_for_configured_origins_only() {
    let s = TestServer::with(|c| c.server.cors_origins = vec!["https://app.example".into()]).await;
    let anon = Api::unauthenticated(&s.base);
    let preflight = |origin: &'static str| {
        let anon = &anon;
        async move {
            anon.request(
                Method::OPTIONS,
                "/api/v1/offline/messages",
                None,
                &[
                    ("Origin", origin),
                    ("Access-Control-Request-Method", "GET"),
                    ("Access-Control-Request-Headers", "authorization"),
                ],
            )
            .await
            .unwrap()
        }
    };
    let r = preflight("https://app.example").await;
    assert_eq!(r.status, 204, "{} {:?}", r.text, r.headers);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example"));
    let allowed = r.header("access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
    for h in ["authorization", "content-type", "idempotency-key", "x-api-key"] {
        assert!(allowed.contains(h), "{h} not allowed: {allowed}");
    }
    let methods = r.header("access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains("GET") && methods.contains("POST"), "{methods}");
    // Also for a POST-only route.
    let r = anon
        .request(
            Method::OPTIONS,
            "/api/v1/offline/ack",
            None,
            &[("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text);
    let r = preflight("https://evil.example").await;
    assert!(r.header("access-control-allow-origin").is_none(), "{:?}", r.headers);
    // A plain request from the allowed origin carries the header too.
    let r = s.api.request(Method::GET, "/api/v1/stats", None, &[("Origin", "https://app.example")]).await.unwrap();
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example"));
    s.stop().await;
}

#[tokio::test]
async fn cors_by_default_allows_any_origin_without_credentials() {
    let s = TestServer::start().await;
    let anon = Api::unauthenticated(&s.base);
    // A preflight to a path no route has is answered too, never 404 or 405.
    let r = anon
        .request(
            Method::OPTIONS,
            "/api/v1/no-such-route",
            None,
            &[("Origin", "https://any.example"), ("Access-Control-Request-Method", "POST")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{} {:?}", r.text, r.headers);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert!(r.header("access-control-allow-credentials").is_none());
    assert!(r.header("x-request-id").is_some_and(|v| v.len() == 36), "{:?}", r.headers);
    // A plain answer exposes the headers a browser script may read, and varies by origin.
    let r = s.api.request(Method::GET, "/api/v1/stats", None, &[("Origin", "https://any.example")]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.header("access-control-expose-headers").unwrap_or_default().contains("x-request-id"));
    assert!(r.header("vary").unwrap_or_default().contains("origin"));
    // A plain OPTIONS (no Access-Control-Request-Method) is no preflight: the route says 405.
    let r = anon.request(Method::OPTIONS, "/api/v1/stats", None, &[]).await.unwrap();
    assert_eq!(r.status, 405, "{}", r.text);
    s.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn data_dir_store_and_dev_secrets_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut cfg = test_config(&dir);
    cfg.auth.jwt_secret.clear();
    cfg.auth.api_keys.clear();
    let server = syncgate::server::Server::build(cfg.clone()).await.expect("builds");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "data dir");
    // A new data dir gets the lsm engine: its directory keeps others out of fjall's files.
    assert_eq!(mode(&dir.join("syncgate.lsm")), 0o700, "store directory");
    assert!(!dir.join("syncgate.redb").exists());
    for name in ["outbound.redb", "push.redb", "dev-secrets.json"] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    server.node.store.close().await.unwrap();
    drop(server);
    // On the redb engine the store is one file, 0600.
    let redb_dir = tmp.path().join("data-redb");
    let mut redb_cfg = test_config(&redb_dir);
    redb_cfg.store.engine = syncgate::store::embedded::Engine::Redb;
    let server = syncgate::server::Server::build(redb_cfg).await.expect("builds");
    assert_eq!(mode(&redb_dir.join("syncgate.redb")), 0o600, "store file");
    server.node.store.close().await.unwrap();
    drop(server);
    std::fs::set_permissions(dir.join("dev-secrets.json"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = syncgate::server::Server::build(cfg).await.err().expect("refuses a readable dev-secrets.json");
    let msg = err.to_string();
    assert!(msg.contains("dev-secrets.json") && msg.contains("chmod 600"), "{msg}");
}

#[tokio::test]
async fn idempotency_scopes_do_not_collide_across_rooms_and_keys() {
    let s = TestServer::start().await;
    let body = json!({"type": "t", "data": 1});
    let r1 = s.api.post_with_idempotency_key("/api/v1/rooms/a:b/events", "K1", body.clone()).await.unwrap();
    assert_eq!(r1.status, 202, "{}", r1.text);
    let r2 = s.api.post_with_idempotency_key("/api/v1/rooms/a/events", "b:K1", body.clone()).await.unwrap();
    assert_eq!(r2.status, 202, "{}", r2.text);
    assert!(r2.header("idempotent-replayed").is_none(), "room a replayed room a:b's answer");
    assert_ne!(r1.body["id"], r2.body["id"]);
    let h = s.api.room_history("a", None, None).await.unwrap();
    assert_eq!(h.body["events"].as_array().map(Vec::len), Some(1), "{}", h.text);
    // The same key on the same route still replays.
    let r3 = s.api.post_with_idempotency_key("/api/v1/rooms/a/events", "b:K1", body).await.unwrap();
    assert_eq!(r3.header("idempotent-replayed"), Some("true"));
    s.stop().await;
}

#[tokio::test]
async fn every_error_is_contract_json_with_a_plain_message() {
    let s = TestServer::start().await;
    let post = |path: &'static str, body: &'static str| {
        let api = &s.api;
        async move { api.request_raw(Method::POST, path, Some(body.as_bytes().to_vec()), &[]).await.unwrap() }
    };
    let r = post("/api/v1/events", r#"{"user_id":"a","type":"t","data":1,"priority":"none"}"#).await;
    assert_json_error(&r, 400, "bad enum");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("priority"), "{}", r.text);
    assert_json_error(&post("/api/v1/events", r#""just a string""#).await, 400, "not an object");
    assert_json_error(&post("/api/v1/events", r#"{"user_id":7,"type":"t","data":1}"#).await, 400, "wrong type");
    let r = post("/api/v1/events", r#"{"type":"t","data":1}"#).await;
    assert_json_error(&r, 400, "missing field");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("user_id"), "{}", r.text);
    assert_json_error(&post("/api/v1/events", r#"{"user_id":"a","#).await, 400, "truncated");
    assert_json_error(&post("/api/v1/events", r#"{"user_id":"a","type":"t","data":1} x"#).await, 400, "trailing");
    let get = |path: &'static str| {
        let api = &s.api;
        async move { api.request(Method::GET, path, None, &[]).await.unwrap() }
    };
    assert_json_error(&get("/api/v1/online-users?limit=abc").await, 400, "bad query");
    assert_json_error(&get("/api/v1/rooms/%FF/history").await, 400, "bad percent-encoding in path");
    assert_json_error(&get("/api/v1/rooms/lobby/history?since=%FF").await, 400, "bad percent-encoding in query");
    assert_json_error(&get("/no/such/route").await, 404, "unmatched route");
    let r = s.api.request(Method::DELETE, "/api/v1/events", None, &[]).await.unwrap();
    assert_json_error(&r, 405, "method not allowed");
    let r = s.api.request(Method::PUT, "/health", None, &[]).await.unwrap();
    assert_json_error(&r, 405, "method not allowed on an operations route");
    s.stop().await;
}

#[tokio::test]
async fn names_follow_one_rule_everywhere() {
    let s = TestServer::start().await;
    // Invalid UTF-8 after percent-decoding is refused, never turned into U+FFFD.
    let token = s.token("alice", &[]);
    let dev = Api::with_token(&s.base, token.clone());
    for raw in ["%FF", "%FE"] {
        let r =
            dev.request(Method::GET, &format!("/api/v1/offline/messages?client_id={raw}"), None, &[]).await.unwrap();
        assert_json_error(&r, 400, raw);
        let upgrade = format!(
            "GET /ws?token={token}&client_id={raw} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        let answer = raw_http(&s.base, upgrade.as_bytes(), Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "/ws client_id={raw}: {answer}");
    }
    // A `sub` with a newline: refused by the offline API as at /ws.
    let bad = s.token("a\nb", &[]);
    let r = Api::with_token(&s.base, bad.clone()).offline_count(None, None).await.unwrap();
    assert_json_error(&r, 400, "sub with a newline");
    match Device::connect(&s.base, DeviceOptions::new(bad)).await {
        Ok(_) => panic!("a sub with a newline was admitted at /ws"),
        Err(e) => assert_eq!(e.http_status(), Some(400), "{e}"),
    }
    // JSON escapes in HTTP bodies are accepted, and mean what they say.
    let body = r#"{"user_id":"caf\u00e9","type":"a\/b","data":{}}"#;
    let r = s.api.request_raw(Method::POST, "/api/v1/events", Some(body.as_bytes().to_vec()), &[]).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    let r = s.api.request(Method::GET, "/api/v1/offline/messages?user_id=caf%C3%A9", None, &[]).await.unwrap();
    assert_eq!(r.body["events"][0]["type"], "a/b", "{}", r.text);
    s.stop().await;
}

#[tokio::test]
async fn a_batch_over_max_batch_bytes_is_413_and_stores_nothing() {
    let s = TestServer::with(|c| c.limits.max_batch_bytes = 1000).await;
    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let data = "x".repeat(98); // 100 bytes of JSON with the quotes
    let r = s.api.publish_batch(json!({"user_ids": users, "type": "t", "data": data})).await.unwrap();
    assert_json_error(&r, 413, "batch too large");
    assert_eq!(r.error_code(), Some("payload_too_large"));
    assert!(r.body["error"]["message"].as_str().unwrap().contains("max_batch_bytes"), "{}", r.text);
    let c = s.api.offline_count(Some("u0"), None).await.unwrap();
    assert_eq!(c.body["count"], 0, "{}", c.text);
    let r = s.api.publish_batch(json!({"user_ids": &users[..5], "type": "t", "data": data})).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text);
    s.stop().await;
}

#[tokio::test]
async fn rejoining_a_joined_room_at_the_room_cap_is_ok_already() {
    let s = TestServer::with(|c| c.limits.max_rooms_per_connection = 1).await;
    let (mut d, _) = s.device("alice", &["r*"]).await;
    d.join("r1", None).await.unwrap().expect_reply().unwrap();
    let again = d.join("r1", None).await.unwrap().expect_reply().expect("rejoin answered ok");
    assert_eq!(again.rest["already"], true);
    assert_eq!(d.join("r2", None).await.unwrap().error_code(), Some("forbidden"));
    s.stop().await;
}

#[tokio::test]
async fn openapi_documents_the_answers_of_every_api_route() {
    let s = TestServer::start().await;
    let spec = s.api.openapi().await.unwrap().body;
    assert!(spec["components"]["schemas"]["ErrorBody"].is_object());
    let paths = spec["paths"].as_object().unwrap();
    for (path, item) in paths.iter().filter(|(p, _)| p.starts_with("/api/")) {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            let mut must = vec!["400", "401", "429", "503"];
            if op.get("requestBody").is_some() {
                must.extend(["408", "413"]);
            }
            let ok = responses.iter().find(|(st, _)| st.starts_with('2')).expect("a success answer");
            assert!(ok.1["content"]["application/json"]["schema"].is_object(), "{method} {path}: no success schema");
            for status in must {
                let schema = &responses[status]["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {status}");
            }
        }
    }
    s.stop().await;
}
