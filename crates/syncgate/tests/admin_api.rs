//! The admin UI's HTTP side, over real sockets: sign-in (wrong key, cookie attributes,
//! disabled without keys, rate limit), the session standing in for an API key, the CSRF rule
//! for state-changing requests, sign-out, and the page served with its CSP.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;
use syncgate_client::{Api, ApiResponse};

const ADMIN_KEY: &str = "admin-key-for-tests-0123456789";

async fn admin_server() -> TestServer {
    TestServer::with(|c| c.admin.keys = vec![ADMIN_KEY.into()]).await
}

/// Signs in; returns the answer.
async fn sign_in(anon: &Api, key: &str, headers: &[(&str, &str)]) -> ApiResponse {
    anon.request(Method::POST, "/api/v1/admin/session", Some(json!({"key": key})), headers).await.unwrap()
}

/// The `sg_admin=ID` pair of a sign-in answer's cookies, and the CSRF token.
fn session_of(r: &ApiResponse) -> (String, String) {
    let cookie = r
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("sg_admin="))
        .expect("a session cookie");
    let pair = cookie.split(';').next().unwrap().to_string();
    (pair, r.body["csrf_token"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn sign_in_checks_the_key_and_sets_a_strict_http_only_cookie() {
    let s = admin_server().await;
    let anon = Api::unauthenticated(&s.base);
    let r = sign_in(&anon, "wrong-key-wrong-key-wrong", &[]).await;
    assert_eq!((r.status, r.error_code()), (401, Some("unauthorized")), "{}", r.text);
    assert!(r.headers.get("set-cookie").is_none());
    let r = sign_in(&anon, ADMIN_KEY, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let cookies: Vec<&str> = r.headers.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).collect();
    assert_eq!(cookies.len(), 2, "one per path: {cookies:?}");
    for c in &cookies {
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict"), "{c}");
    }
    assert!(cookies.iter().any(|c| c.contains("Path=/admin")) && cookies.iter().any(|c| c.contains("Path=/api/v1")));
    assert_eq!(r.body["instance_id"], s.node.instance_id.as_str());
    // The API key is no admin key, and a sign-in from another origin is refused.
    assert_eq!(sign_in(&anon, API_KEY, &[]).await.status, 401);
    let evil = [("origin", "http://evil.example")];
    assert_eq!(sign_in(&anon, ADMIN_KEY, &evil).await.status, 403);
    s.stop().await;
}

#[tokio::test]
async fn without_admin_keys_every_sign_in_is_refused() {
    let s = TestServer::start().await;
    let r = sign_in(&Api::unauthenticated(&s.base), "anything-anything-anything", &[]).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(r.text.contains("admin.keys"), "{}", r.text);
    s.stop().await;
}

#[tokio::test]
async fn the_session_acts_as_an_api_key_and_state_changes_need_the_csrf_token() {
    let s = admin_server().await;
    let anon = Api::unauthenticated(&s.base);
    let (cookie, csrf) = session_of(&sign_in(&anon, ADMIN_KEY, &[]).await);
    let (mut d, _) = s.device("alice", &[]).await;
    let origin = s.base.clone();
    let with = |extra: &[(&'static str, String)]| {
        let mut h = vec![("cookie", cookie.clone())];
        h.extend(extra.iter().cloned());
        h
    };
    let call = |method: Method, path: &'static str, headers: Vec<(&'static str, String)>| {
        let anon = &anon;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            anon.request(method, path, None, &h).await.unwrap()
        }
    };
    // Reads need only the cookie.
    let r = call(Method::GET, "/api/v1/stats", with(&[])).await;
    assert_eq!((r.status, r.body["connections"].as_u64()), (200, Some(1)), "{}", r.text);
    assert_eq!(call(Method::GET, "/api/v1/admin/session", with(&[])).await.body["csrf_token"], csrf.as_str());
    // A state change without the token, with a wrong one, or from another origin: 403, and
    // nothing happens.
    let disconnect = "/api/v1/users/alice/disconnect";
    for extra in [
        vec![("origin", origin.clone())],
        vec![("origin", origin.clone()), ("x-csrf-token", "nope".to_string())],
        vec![("origin", "http://evil.example".to_string()), ("x-csrf-token", csrf.clone())],
        vec![("sec-fetch-site", "cross-site".to_string()), ("x-csrf-token", csrf.clone())],
    ] {
        let r = call(Method::POST, disconnect, with(&extra)).await;
        assert_eq!((r.status, r.error_code()), (403, Some("forbidden")), "{extra:?}: {}", r.text);
    }
    assert!(d.ping().await.is_ok(), "still connected");
    // With the token from this origin: done.
    let ok = with(&[("origin", origin.clone()), ("x-csrf-token", csrf.clone())]);
    let r = call(Method::POST, disconnect, ok.clone()).await;
    assert_eq!((r.status, r.body["disconnected"].as_u64()), (200, Some(1)), "{}", r.text);
    assert_eq!(d.next_event(T).await.unwrap_err().close_code(), Some(4009));
    // Signed out, the cookie is worth nothing.
    assert_eq!(call(Method::DELETE, "/api/v1/admin/session", ok).await.status, 200);
    assert_eq!(call(Method::GET, "/api/v1/stats", with(&[])).await.status, 401);
    assert_eq!(call(Method::GET, "/api/v1/stats", vec![]).await.status, 401, "no cookie, no key");
    s.stop().await;
}

#[tokio::test]
async fn sign_in_attempts_are_rate_limited_per_address() {
    let s = TestServer::with(|c| {
        c.admin.keys = vec![ADMIN_KEY.into()];
        c.rate_limits.admin_sign_in = "3/min burst 3".parse().unwrap();
    })
    .await;
    let anon = Api::unauthenticated(&s.base);
    for _ in 0..3 {
        assert_eq!(sign_in(&anon, "wrong-key-wrong-key-wrong", &[]).await.status, 401);
    }
    let r = sign_in(&anon, ADMIN_KEY, &[]).await;
    assert_eq!((r.status, r.error_code()), (429, Some("rate_limit_exceeded")), "{}", r.text);
    assert!(r.headers.get("retry-after").is_some());
    let m = s.api.metrics().await.unwrap().text;
    assert!(m.contains("syncgate_rate_limited_total{limiter=\"admin_sign_in\"} 1"), "{m}");
    s.stop().await;
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_a_self_only_csp() {
    let s = admin_server().await;
    let anon = Api::unauthenticated(&s.base);
    for path in ["/admin", "/admin/assets/app.js", "/admin/assets/uplot.esm.js"] {
        let r = anon.request(Method::GET, path, None, &[]).await.unwrap();
        assert_eq!(r.status, 200, "{path}");
        let csp = r.headers.get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        let etag = r.headers.get("etag").and_then(|v| v.to_str().ok()).unwrap().to_string();
        let again = anon.request(Method::GET, path, None, &[("if-none-match", &etag)]).await.unwrap();
        assert_eq!(again.status, 304, "{path}");
    }
    assert!(anon.request(Method::GET, "/admin", None, &[]).await.unwrap().text.contains("type=\"password\""));
    let r = anon.request(Method::GET, "/admin/assets/../Cargo.toml", None, &[]).await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(anon.request(Method::GET, "/admin/assets/secret.json", None, &[]).await.unwrap().status, 404);
    s.stop().await;
}

/// The stream view shows the latest 20 events by default, fewer when `limits.max_page` is
/// lower (it was a 400 then), and refuses a `limit` over `max_page`.
#[tokio::test]
async fn the_stream_view_defaults_within_max_page() {
    let s = TestServer::with(|c| c.limits.max_page = 5).await;
    for n in 0..8 {
        publish(&s.api, "alice", "note", json!({"n": n})).await;
    }
    let r = s.api.request(Method::GET, "/api/v1/users/alice/stream", None, &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let ns: Vec<_> = r.body["events"].as_array().unwrap().iter().map(|e| e["data"]["n"].clone()).collect();
    assert_eq!(ns, [7, 6, 5, 4, 3].map(|n| json!(n)), "the latest five, newest first");
    let r = s.api.request(Method::GET, "/api/v1/users/alice/stream?limit=6", None, &[]).await.unwrap();
    assert_eq!(r.status, 400, "{}", r.text);
    s.stop().await;
}
