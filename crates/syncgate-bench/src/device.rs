//! How a generated device connects: the client crate's URL and frame types, on a
//! WebSocket configured for many small messages.
//!
//! Why not `syncgate_client::Device` itself: its WebSocket uses tungstenite's default
//! 128 KiB read buffer, which tungstenite zero-fills before every socket read. With one
//! small frame per read (the fanout case), that memset was 47% of a worker's CPU
//! (`perf record` of a worker during a 5,000-connection fanout), and the generator shares
//! the machine with the server under test. So the devices here open the same `/ws` URL
//! (`syncgate_client::ws_url`), parse the same frames (`syncgate_client::Frame`), and
//! differ only in a 4 KiB read buffer.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use syncgate_client::{ws_url, DeviceOptions, Frame, Welcome, WsStream};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// Why a device could not connect.
#[derive(Debug)]
pub enum OpenError {
    /// The server answered the upgrade with this status: retrying will not help.
    Refused(u16, String),
    /// Anything else (connect, timeout, protocol): worth a retry.
    Other(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Refused(s, body) => write!(f, "HTTP {s}: {body}"),
            OpenError::Other(e) => f.write_str(e),
        }
    }
}

fn other(e: impl std::fmt::Display) -> OpenError {
    OpenError::Other(e.to_string())
}

/// Read chunk of each device socket (see the module doc).
const READ_BUFFER: usize = 4 * 1024;

pub(crate) async fn tcp(url: &tungstenite::http::Uri, local: Option<IpAddr>) -> Result<TcpStream, OpenError> {
    let host = url.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host.parse().map_err(|_| other(format!("{host}: the bench connects to IP literals only")))?;
    let addr = SocketAddr::new(ip, url.port_u16().unwrap_or(80));
    let stream = match local {
        None => TcpStream::connect(addr).await.map_err(other)?,
        Some(l) => {
            let s = if l.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(other)?;
            s.bind(SocketAddr::new(l, 0)).map_err(|e| other(format!("bind {l}: {e}")))?;
            s.connect(addr).await.map_err(other)?
        }
    };
    stream.set_nodelay(true).map_err(other)?;
    Ok(stream)
}

/// Reads the next text frame's parsed form.
async fn next_frame(ws: &mut WsStream) -> Result<Frame, OpenError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Frame::parse(t.as_str()).map_err(other),
            Some(Ok(Message::Close(c))) => return Err(other(format!("closed by the server: {c:?}"))),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(other(e)),
            None => return Err(other("connection ended")),
        }
    }
}

/// What a connected device has: the stream, the welcome (syncgate), and the raw text of
/// events that arrived while it waited for a reply.
pub struct Opened {
    pub ws: WsStream,
    pub welcome: Option<Welcome>,
    pub early: Vec<String>,
}

/// Opens a device connection to `base`, bound to `local`. With `welcome`, reads the
/// welcome frame first; with `room`, joins it and waits for the reply.
pub async fn open(
    base: &str,
    opts: &DeviceOptions,
    local: Option<IpAddr>,
    welcome: bool,
    room: Option<&str>,
    timeout: Duration,
) -> Result<Opened, OpenError> {
    let url = ws_url(base, opts).map_err(other)?;
    let setup = async {
        let uri: tungstenite::http::Uri = url.as_str().parse().map_err(other)?;
        let stream = tcp(&uri, local).await?;
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config)).await.map_err(
            |e| match e {
                tungstenite::Error::Http(resp) => {
                    let body =
                        resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                    OpenError::Refused(resp.status().as_u16(), body)
                }
                e => other(e),
            },
        )?;
        let mut opened = Opened { ws, welcome: None, early: Vec::new() };
        if welcome {
            match next_frame(&mut opened.ws).await? {
                Frame::Welcome(w) => opened.welcome = Some(w),
                f => return Err(other(format!("expected welcome, got {f:?}"))),
            }
        }
        if let Some(room) = room {
            let join = serde_json::json!({"op": "join", "room": room, "ref": "j"});
            opened.ws.send(Message::text(join.to_string())).await.map_err(other)?;
            loop {
                match next_frame(&mut opened.ws).await? {
                    Frame::Reply(r) if r.reference.as_deref() == Some("j") => break,
                    Frame::Error(e) => return Err(other(format!("join refused: {e:?}"))),
                    Frame::Event(e) => opened.early.push(format!("{{\"data\":{}}}", e.data)),
                    _ => {}
                }
            }
        }
        Ok(opened)
    };
    tokio::time::timeout(timeout, setup).await.map_err(|_| other(format!("no connection within {timeout:?}")))?
}
