//! The client against tiny scripted servers (the real server is tested in its own crate).
// The handshake callback's error type is fixed by tungstenite.
#![allow(clippy::result_large_err)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use syncgate_client::tungstenite::handshake::server::{Request, Response};
use syncgate_client::tungstenite::protocol::frame::coding::CloseCode;
use syncgate_client::tungstenite::protocol::CloseFrame;
use syncgate_client::{Api, Device, DeviceOptions, Error, Frame, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;

const T: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<TcpStream>;

/// Accepts one WebSocket connection, sends a welcome, and runs `script` on it.
/// Reports the request URI, Authorization header and peer address.
async fn ws_server<F, Fut>(script: F) -> (String, oneshot::Receiver<(String, Option<String>, SocketAddr)>)
where
    F: FnOnce(Ws) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.unwrap();
        let mut seen = None;
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
            let auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned());
            seen = Some((req.uri().to_string(), auth));
            Ok(resp)
        })
        .await
        .unwrap();
        let (uri, auth) = seen.unwrap();
        let _ = tx.send((uri, auth, peer));
        let welcome = json!({"op":"welcome","conn_id":"c1","user_id":"u1","client_id":"d1",
            "instance_id":"n1","heartbeat_ms":30000,"resumed":0});
        ws.send(Message::text(welcome.to_string())).await.unwrap();
        script(ws).await;
    });
    (base, rx)
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(_) => panic!("closed"),
            _ => continue,
        }
    }
}

fn event(id: u32) -> Message {
    Message::text(
        json!({"op":"event","id":id.to_string(),"stream":"user","type":"t","data":{"n":id},"ts":1}).to_string(),
    )
}

#[tokio::test]
async fn connect_reads_welcome_and_sends_query() {
    let (base, seen) = ws_server(|_ws| async {}).await;
    let opts = DeviceOptions::new("tok").client_id("d 1").since("5-0");
    let (_dev, welcome) = Device::connect(&base, opts).await.unwrap();
    assert_eq!(welcome.conn_id, "c1");
    assert_eq!(welcome.client_id.as_deref(), Some("d1"));
    let (uri, auth, _) = seen.await.unwrap();
    assert_eq!(uri, "/ws?token=tok&client_id=d+1&since=5-0");
    assert_eq!(auth, None);
}

#[tokio::test]
async fn token_in_header_and_local_addr() {
    let (base, seen) = ws_server(|_ws| async {}).await;
    let opts = DeviceOptions::new("tok").token_in_header(true);
    let local = "127.0.0.2".parse().unwrap();
    let (dev, _) = Device::connect_with_local_addr(&base, opts, local).await.unwrap();
    assert_eq!(dev.local_addr().unwrap().ip(), local);
    let (uri, auth, peer) = seen.await.unwrap();
    assert_eq!(uri, "/ws");
    assert_eq!(auth.as_deref(), Some("Bearer tok"));
    assert_eq!(peer.ip(), local);
}

#[tokio::test]
async fn request_keeps_events_read_meanwhile() {
    let (base, _) = ws_server(|mut ws| async move {
        let join = next_json(&mut ws).await;
        assert_eq!(join["op"], "join");
        assert_eq!(join["room"], "r");
        ws.send(event(1)).await.unwrap();
        let err = json!({"op":"error","code":"x","message":"m","ref":"other"});
        ws.send(Message::text(err.to_string())).await.unwrap();
        ws.send(event(2)).await.unwrap();
        let reply = json!({"op":"reply","ref":join["ref"],"ok":true,"room":"r"});
        ws.send(Message::text(reply.to_string())).await.unwrap();
        ws.send(event(3)).await.unwrap();
        // ping answered by a pong without ref
        let ping = next_json(&mut ws).await;
        assert_eq!(ping["op"], "ping");
        ws.send(Message::text(r#"{"op":"pong","ts":7}"#)).await.unwrap();
        let _ = ws.next().await;
    })
    .await;
    let (mut dev, _) = Device::connect(&base, DeviceOptions::new("t")).await.unwrap();
    let reply = dev.join("r", None).await.unwrap().expect_reply().unwrap();
    assert_eq!(reply.rest["room"], "r");
    assert_eq!(dev.buffered(), 3);
    let ids: Vec<String> = dev.collect_events(3, T).await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(ids, ["1", "2", "3"]);
    assert!(matches!(dev.ping().await.unwrap(), Frame::Pong { ts: 7, .. }));
}

#[tokio::test]
async fn server_close_code_is_reported() {
    let (base, _) = ws_server(|mut ws| async move {
        let _ = next_json(&mut ws).await;
        let frame = CloseFrame { code: CloseCode::from(4009), reason: "bye".into() };
        ws.close(Some(frame)).await.unwrap();
        while ws.next().await.is_some() {}
    })
    .await;
    let (mut dev, _) = Device::connect(&base, DeviceOptions::new("t")).await.unwrap();
    dev.send_json(&json!({"op": "go"})).await.unwrap();
    match dev.recv().await {
        Err(Error::Closed { code, reason }) => {
            assert_eq!(code, Some(4009));
            assert_eq!(reason, "bye");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(dev.wait_closed(T).await.unwrap(), Some(4009));
    assert_eq!(dev.send_text("x").await.unwrap_err().close_code(), Some(4009));
}

#[tokio::test]
async fn client_close_and_timeouts() {
    let (tx, rx) = oneshot::channel();
    let (base, _) = ws_server(|mut ws| async move {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(cf))) => {
                    let _ = tx.send(cf.map(|f| u16::from(f.code)));
                    break;
                }
                Some(Ok(_)) => continue,
                _ => break,
            }
        }
        while ws.next().await.is_some() {}
    })
    .await;
    let (mut dev, _) = Device::connect(&base, DeviceOptions::new("t")).await.unwrap();
    let short = Duration::from_millis(50);
    assert!(dev.recv_timeout(short).await.unwrap().is_none());
    assert!(matches!(dev.next_event(short).await, Err(Error::Timeout)));
    assert!(matches!(dev.request(json!({"op":"ping"}), short).await, Err(Error::Timeout)));
    assert!(matches!(wait_closed_short(&mut dev).await, Err(Error::Timeout)));
    dev.close(1000).await.unwrap();
    assert_eq!(rx.await.unwrap(), Some(1000));
    assert!(dev.is_closed());
}

async fn wait_closed_short(dev: &mut Device) -> Result<Option<u16>, Error> {
    dev.wait_closed(Duration::from_millis(50)).await
}

/// Serves one raw HTTP exchange: returns the request text, answers `response`.
async fn http_server(response: &'static str) -> (String, oneshot::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tcp.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let len = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= head_end + 4 + len || n == 0 {
                    let _ = tx.send(text);
                    break;
                }
            }
        }
        tcp.write_all(response.as_bytes()).await.unwrap();
        let _ = tcp.shutdown().await;
    });
    (base, rx)
}

const REFUSAL: &str = "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
    content-length: 47\r\nconnection: close\r\n\r\n{\"error\":{\"code\":\"unauthorized\",\"message\":\"x\"}}";

#[tokio::test]
async fn refused_upgrade_gives_http_error_with_body() {
    let (base, _) = http_server(REFUSAL).await;
    let err = Device::connect(&base, DeviceOptions::new("")).await.unwrap_err();
    assert_eq!(err.http_status(), Some(401), "{err:?}");
    assert_eq!(err.http_error_code(), Some("unauthorized"));
}

#[tokio::test]
async fn api_sends_path_auth_headers_and_returns_non_2xx() {
    let (base, seen) = http_server(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 3\r\n\
         content-length: 46\r\nconnection: close\r\n\r\n{\"error\":{\"code\":\"rate_limit_exceeded\",\"m\":1}}",
    )
    .await;
    let api = Api::new(format!("{base}/"), "key");
    let resp = api.post_with_idempotency_key("/api/v1/rooms/a%20b/events", "k1", json!({"type":"t"})).await.unwrap();
    assert_eq!(resp.status, 429);
    assert_eq!(resp.error_code(), Some("rate_limit_exceeded"));
    assert_eq!(resp.header("retry-after"), Some("3"));
    let req = seen.await.unwrap().to_ascii_lowercase();
    assert!(req.starts_with("post /api/v1/rooms/a%20b/events http/1.1\r\n"), "{req}");
    assert!(req.contains("authorization: bearer key\r\n"));
    assert!(req.contains("idempotency-key: k1\r\n"));
    assert!(req.contains("content-type: application/json\r\n"));
    assert!(req.ends_with("{\"type\":\"t\"}"));
}

#[tokio::test]
async fn api_header_override_and_query() {
    let (base, seen) = http_server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let api = Api::new(&base, "key");
    let resp = api
        .request(syncgate_client::Method::GET, "/api/v1/offline/count?user_id=u", None, &[("X-API-Key", "other")])
        .await
        .unwrap();
    assert_eq!((resp.status, resp.text.as_str()), (200, "ok"));
    assert_eq!(resp.body, Value::Null);
    let req = seen.await.unwrap().to_ascii_lowercase();
    assert!(req.contains("x-api-key: other\r\n"));
    assert!(!req.contains("authorization"));
}
