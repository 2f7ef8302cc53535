//! Push registrations: the HTTP API on a real node (devices with their JWT, backends with an
//! API key and `user_id`, every refusal with the contract's error and no change, the
//! per-user bound, durability across a restart), and the `Devices` behaviour on both
//! implementations (redb, and Redis on a `redis-server` of the test's own).

mod common;
#[path = "redis_support/mod.rs"]
mod redis_support;

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::TestServer;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::{json, Value};
use syncgate::config::{Config, PushApns, PushWebPush};
use syncgate::push::devices_embedded::EmbeddedDevices;
use syncgate::push::devices_redis::RedisDevices;
use syncgate::push::{Devices, Provider, Registration};
use syncgate_client::{Api, Method};

fn key_files(dir: &std::path::Path) -> (String, String) {
    let k = p256::SecretKey::random(&mut rsa::rand_core::OsRng);
    let pem = k.to_pkcs8_pem(LineEnding::LF).unwrap();
    let (vapid, p8) = (dir.join("vapid.pem"), dir.join("AuthKey.p8"));
    std::fs::write(&vapid, pem.as_bytes()).unwrap();
    std::fs::write(&p8, pem.as_bytes()).unwrap();
    (vapid.display().to_string(), p8.display().to_string())
}

fn providers(c: &mut Config, vapid: String, p8: String, max: usize) {
    c.push.max_devices_per_user = max;
    c.push.providers.webpush = Some(PushWebPush {
        vapid_private_key_file: vapid,
        subject: "mailto:ops@example.com".into(),
        allow_hosts: Vec::new(),
    });
    c.push.providers.apns = Some(PushApns {
        key_file: p8,
        key_id: "KEY1234567".into(),
        team_id: "TEAM123456".into(),
        topic: "com.example.app".into(),
        endpoint: "https://127.0.0.1:9".into(),
    });
}

fn subscription() -> Value {
    subscription_at("https://push.example.net/w/abc")
}

fn subscription_at(endpoint: &str) -> Value {
    let ua = p256::SecretKey::random(&mut rsa::rand_core::OsRng);
    json!({
        "endpoint": endpoint,
        "keys": {
            "p256dh": URL_SAFE_NO_PAD.encode(ua.public_key().to_encoded_point(false).as_bytes()),
            "auth": URL_SAFE_NO_PAD.encode([7u8; 16]),
        }
    })
}

async fn post(api: &Api, body: Value) -> syncgate_client::ApiResponse {
    api.request(Method::POST, "/api/v1/push/devices", Some(body), &[]).await.unwrap()
}

async fn list(api: &Api, q: &str) -> Vec<String> {
    let r = api.request(Method::GET, &format!("/api/v1/push/devices{q}"), None, &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["devices"].as_array().unwrap().iter().map(|d| d["client_id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn devices_register_list_and_unregister_with_a_jwt_or_an_api_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (vapid, p8) = key_files(tmp.path());
    let data = tmp.path().join("data");
    let (v2, p2) = (vapid.clone(), p8.clone());
    let s = TestServer::start_in(&data, |c| providers(c, vapid, p8, 3)).await;
    let alice = Api::with_token(&s.base, s.token("alice", &[]));

    let r = post(&alice, json!({"client_id": "iphone", "provider": "apns", "token": "a1b2c3"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({"ok": true, "client_id": "iphone", "provider": "apns", "replaced": []}));
    let r = post(&alice, json!({"client_id": "browser", "provider": "webpush", "subscription": subscription()})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A backend names the user in the body (or the query).
    let r = post(&s.api, json!({"user_id": "bob", "client_id": "ipad", "provider": "apns", "token": "ff00"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(list(&alice, "").await, ["browser", "iphone"]);
    assert_eq!(list(&s.api, "?user_id=bob").await, ["ipad"]);
    // Registering again replaces the address, not adds a device.
    let r = post(&alice, json!({"client_id": "iphone", "provider": "apns", "token": "a1b2c4"})).await;
    assert_eq!(r.status, 200);
    assert_eq!(s.node.push.devices.get("alice", "iphone").await.unwrap().unwrap().token.as_deref(), Some("a1b2c4"));

    // Refusals: the contract's error, nothing changed.
    let bound =
        Api::with_token(&s.base, s.node.auth.mint("alice", &[], Duration::from_secs(60), Some("iphone")).unwrap());
    let cases: Vec<(&Api, Value, u16, &str)> = vec![
        (&alice, json!({"client_id": "x", "provider": "fcm", "token": "t"}), 400, "invalid_request"),
        (&alice, json!({"client_id": "x", "provider": "sms", "token": "t"}), 400, "invalid_request"),
        (&alice, json!({"client_id": "x", "provider": "apns", "token": "not hex"}), 400, "invalid_request"),
        (&alice, json!({"client_id": "x", "provider": "apns"}), 400, "invalid_request"),
        (&alice, json!({"client_id": "x", "provider": "webpush", "token": "t"}), 400, "invalid_request"),
        (
            &alice,
            json!({"client_id": "x", "provider": "webpush", "subscription": {"endpoint": "https://p.example/w", "keys": {"p256dh": "AAAA", "auth": "AAAA"}}}),
            400,
            "invalid_request",
        ),
        (
            &alice,
            json!({"client_id": "x", "provider": "webpush", "subscription": {"endpoint": "ftp://p", "keys": {"p256dh": "A", "auth": "A"}}}),
            400,
            "invalid_request",
        ),
        (&alice, json!({"client_id": "x", "provider": "apns", "token": "ab", "extra": 1}), 400, "invalid_request"),
        (&alice, json!({"client_id": "", "provider": "apns", "token": "ab"}), 400, "invalid_request"),
        (&alice, json!({"client_id": "x", "provider": "apns", "token": "ab", "user_id": "bob"}), 403, "forbidden"),
        (&bound, json!({"client_id": "other", "provider": "apns", "token": "ab"}), 403, "forbidden"),
        (&s.api, json!({"client_id": "x", "provider": "apns", "token": "ab"}), 400, "invalid_request"),
    ];
    for (api, body, status, code) in cases {
        let r = post(api, body.clone()).await;
        assert_eq!((r.status, r.error_code()), (status, Some(code)), "{body}: {}", r.text);
    }
    // Web Push endpoints: https to a public host; no private or loopback address (SSRF),
    // whatever form the URL gives it, unless push.providers.webpush.allow_hosts lists it.
    for (endpoint, why) in [
        ("http://127.0.0.1/w/1", "https"),
        ("https://127.0.0.1/w/1", "127.0.0.1 is not a public address"),
        ("https://10.0.0.1/w/1", "10.0.0.1 is not a public address"),
        ("https://[::1]/w/1", "::1 is not a public address"),
        ("https://localhost/w/1", "localhost"),
        ("https://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("https://[::ffff:192.168.0.1]/w/1", "not a public address"),
        ("https://0x7f.1/w/1", "127.0.0.1"),
        ("https://100.64.0.1:8443/w/1", "100.64.0.1"),
        ("http://push.example.net/w/1", "https"),
        ("https://user:secret@push.example.net/w/1", "user name"),
    ] {
        let body = json!({"client_id": "x", "provider": "webpush", "subscription": subscription_at(endpoint)});
        let r = post(&alice, body).await;
        assert_eq!((r.status, r.error_code()), (400, Some("invalid_request")), "{endpoint}: {}", r.text);
        assert!(r.text.contains(why), "{endpoint}: {}", r.text);
    }
    let r = post(&Api::unauthenticated(&s.base), json!({"client_id": "x", "provider": "apns", "token": "ab"})).await;
    assert_eq!((r.status, r.error_code()), (401, Some("unauthorized")));
    let r = alice.request_raw(Method::POST, "/api/v1/push/devices", Some(b"{nope".to_vec()), &[]).await.unwrap();
    assert_eq!((r.status, r.error_code()), (400, Some("invalid_request")));
    assert_eq!(list(&alice, "").await, ["browser", "iphone"], "refused registrations change nothing");

    // Bound per user: a new client id past push.max_devices_per_user replaces the least
    // recently updated registration.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = post(&alice, json!({"client_id": "watch", "provider": "apns", "token": "0a"})).await;
    assert_eq!(r.body["replaced"], json!([]));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = post(&alice, json!({"client_id": "mac", "provider": "apns", "token": "0b"})).await;
    assert_eq!(r.body["replaced"], json!(["browser"]), "{}", r.text);
    assert_eq!(list(&alice, "").await, ["iphone", "mac", "watch"]);

    // Unregister; a second time is 404; a bound token only for its own device.
    let del = |api: &Api, c: &str| {
        let (api, path) = (api.clone(), format!("/api/v1/push/devices/{c}"));
        async move { api.request(Method::DELETE, &path, None, &[]).await.unwrap() }
    };
    assert_eq!(del(&bound, "mac").await.status, 403);
    assert_eq!(del(&alice, "mac").await.status, 200);
    let r = del(&alice, "mac").await;
    assert_eq!((r.status, r.error_code()), (404, Some("not_found")));
    let r = s.api.request(Method::DELETE, "/api/v1/push/devices/ipad?user_id=bob", None, &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(list(&s.api, "?user_id=bob").await.is_empty());

    // Registrations are durable.
    s.stop().await;
    let s = TestServer::start_in(&data, |c| providers(c, v2, p2, 3)).await;
    let alice = Api::with_token(&s.base, s.token("alice", &[]));
    assert_eq!(list(&alice, "").await, ["iphone", "watch"]);
    s.stop().await;
}

#[tokio::test]
async fn private_webpush_hosts_register_only_when_allow_hosts_lists_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (vapid, p8) = key_files(tmp.path());
    let s = TestServer::with(|c| {
        providers(c, vapid, p8, 20);
        c.push.providers.webpush.as_mut().unwrap().allow_hosts =
            ["127.0.0.1", "10.0.0.1:8443", "[::1]", "localhost"].map(String::from).to_vec();
    })
    .await;
    let alice = Api::with_token(&s.base, s.token("alice", &[]));
    let allowed = [
        ("a", "http://127.0.0.1/w/1"),
        ("b", "https://127.0.0.1:9443/w/1"),
        ("c", "https://10.0.0.1:8443/w/1"),
        ("d", "http://10.0.0.1:8443/w/1"),
        ("e", "https://[::1]/w/1"),
        ("f", "https://localhost/w/1"),
        ("g", "https://push.example.net/w/1"),
    ];
    for (client, endpoint) in allowed {
        let r = post(
            &alice,
            json!({"client_id": client, "provider": "webpush", "subscription": subscription_at(endpoint)}),
        )
        .await;
        assert_eq!(r.status, 200, "{endpoint}: {}", r.text);
    }
    // Not listed (another port, another address): refused as before.
    for endpoint in ["https://10.0.0.1/w/1", "https://10.0.0.2:8443/w/1", "https://[::2]/w/1", "https://u@127.0.0.1/w"]
    {
        let r =
            post(&alice, json!({"client_id": "z", "provider": "webpush", "subscription": subscription_at(endpoint)}))
                .await;
        assert_eq!((r.status, r.error_code()), (400, Some("invalid_request")), "{endpoint}: {}", r.text);
    }
    assert_eq!(list(&alice, "").await, ["a", "b", "c", "d", "e", "f", "g"]);
    s.stop().await;
}

fn reg(client: &str, token: &str, at: i64) -> Registration {
    Registration {
        client_id: client.into(),
        provider: Provider::Fcm,
        token: Some(token.into()),
        subscription: None,
        updated_at: at,
    }
}

/// The same checks on each implementation.
async fn devices_behave(d: Arc<dyn Devices>) {
    assert!(d.put("u1", reg("a", "ta", 10), 3).await.unwrap().is_empty());
    assert!(d.put("u1", reg("b", "tb", 5), 3).await.unwrap().is_empty());
    assert!(d.put("u1", reg("c", "tc", 20), 3).await.unwrap().is_empty());
    assert!(d.put("u2", reg("a", "other", 1), 3).await.unwrap().is_empty());
    // Full: the least recently updated other registration makes room; replacing one does not.
    assert_eq!(d.put("u1", reg("d", "td", 30), 3).await.unwrap(), ["b"]);
    assert!(d.put("u1", reg("a", "ta2", 40), 3).await.unwrap().is_empty());
    let ids: Vec<String> = d.list("u1").await.unwrap().into_iter().map(|r| r.client_id).collect();
    assert_eq!(ids, ["a", "c", "d"]);
    assert_eq!(d.get("u1", "a").await.unwrap().unwrap().token.as_deref(), Some("ta2"));
    assert_eq!(d.get("u2", "a").await.unwrap().unwrap().token.as_deref(), Some("other"), "users are apart");
    assert!(d.get("u1", "b").await.unwrap().is_none());
    // remove_if compares the address first.
    assert!(!d.remove_if("u1", "a", "ta").await.unwrap());
    assert!(d.remove_if("u1", "a", "ta2").await.unwrap());
    assert!(d.get("u1", "a").await.unwrap().is_none());
    assert!(d.remove("u1", "c").await.unwrap());
    assert!(!d.remove("u1", "c").await.unwrap());
    assert_eq!(d.list("u1").await.unwrap().len(), 1);
    assert!(d.list("nobody").await.unwrap().is_empty());
}

#[tokio::test]
async fn embedded_devices_keep_the_bound_and_compare_before_removing() {
    let tmp = tempfile::tempdir().unwrap();
    devices_behave(Arc::new(EmbeddedDevices::open(tmp.path()).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_devices_keep_the_bound_and_compare_before_removing() {
    let server = redis_support::RedisServer::start();
    let mut opts = syncgate::store::redis::RedisOptions::new(server.url());
    opts.key_prefix = "pt".into();
    let store = syncgate::store::redis::RedisStore::connect(opts).await.unwrap();
    devices_behave(Arc::new(RedisDevices::new(store.connection(), "pt"))).await;
}
