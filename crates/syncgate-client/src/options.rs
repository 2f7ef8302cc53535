//! Connection options, the `/ws` URL and the TCP connect of a device.

use crate::error::{Error, Result};
use reqwest::Url;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// How to connect a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceOptions {
    /// The client JWT. An empty token sends no token at all (to test 401).
    pub token: String,
    /// `?client_id=`: the stable device id that owns a delivery cursor.
    pub client_id: Option<String>,
    /// `?since=`: resume the user stream after this id.
    pub since: Option<String>,
    /// Send the token as `Authorization: Bearer` instead of `?token=`.
    pub token_in_header: bool,
    /// Extra HTTP headers for the upgrade request (e.g. `X-Forwarded-For`, `Origin`).
    pub headers: Vec<(String, String)>,
    /// Limit for TCP connect + upgrade, and then again for the welcome frame.
    pub connect_timeout: Duration,
}

impl DeviceOptions {
    /// Options with this token, no client id, token in the query, 30 s connect timeout.
    pub fn new(token: impl Into<String>) -> Self {
        DeviceOptions {
            token: token.into(),
            client_id: None,
            since: None,
            token_in_header: false,
            headers: Vec::new(),
            connect_timeout: Duration::from_secs(30),
        }
    }

    /// Sets `client_id`.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// Sets `since`.
    pub fn since(mut self, since: impl Into<String>) -> Self {
        self.since = Some(since.into());
        self
    }

    /// Sends the token in the `Authorization` header (`true`) or the query (`false`).
    pub fn token_in_header(mut self, yes: bool) -> Self {
        self.token_in_header = yes;
        self
    }

    /// Adds an HTTP header to the upgrade request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
}

/// Builds the WebSocket URL `{base}/ws?token=..&client_id=..&since=..`.
///
/// `base` may be `http://`, `ws://` or have no scheme (`127.0.0.1:8080`); a path in it
/// is kept as a prefix. `https`/`wss` are refused: this client has no TLS backend.
/// The token is left out when `token_in_header` is set or the token is empty.
pub fn ws_url(base: &str, opts: &DeviceOptions) -> Result<Url> {
    let with_scheme;
    let base = if base.contains("://") {
        base
    } else {
        with_scheme = format!("ws://{base}");
        &with_scheme
    };
    let mut url = Url::parse(base).map_err(|e| Error::InvalidInput(format!("{base}: {e}")))?;
    match url.scheme() {
        "ws" => {}
        "http" => url.set_scheme("ws").map_err(|()| Error::InvalidInput(format!("{base}: cannot use as ws URL")))?,
        "https" | "wss" => return Err(Error::InvalidInput(format!("{base}: TLS is not supported by syncgate-client"))),
        other => return Err(Error::InvalidInput(format!("{base}: unsupported scheme {other}"))),
    }
    if url.host().is_none() {
        return Err(Error::InvalidInput(format!("{base}: no host")));
    }
    let path = format!("{}/ws", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    {
        let mut q = url.query_pairs_mut();
        if !opts.token_in_header && !opts.token.is_empty() {
            q.append_pair("token", &opts.token);
        }
        if let Some(c) = &opts.client_id {
            q.append_pair("client_id", c);
        }
        if let Some(s) = &opts.since {
            q.append_pair("since", s);
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    Ok(url)
}

pub(crate) fn header_value(v: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(v).map_err(|e| Error::InvalidInput(format!("header value {v:?}: {e}")))
}

/// Opens the TCP connection to the URL's host and port, optionally from `local`.
pub(crate) async fn tcp_connect(url: &Url, local: Option<IpAddr>) -> Result<TcpStream> {
    let port = url.port_or_known_default().ok_or_else(|| Error::InvalidInput(format!("{url}: no port")))?;
    let host = url.host_str().ok_or_else(|| Error::InvalidInput(format!("{url}: no host")))?;
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match literal.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port)).await?.collect(),
    };
    let mut last_err = None;
    for addr in addrs {
        let attempt = match local {
            None => TcpStream::connect(addr).await,
            Some(ip) if ip.is_ipv4() != addr.is_ipv4() => continue,
            Some(ip) => {
                let socket = if ip.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await
            }
        };
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) => last_err = Some(e),
        }
    }
    Err(match last_err {
        Some(e) => Error::Io(e),
        None => Error::InvalidInput(format!("{url}: no address of the local address's family")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> DeviceOptions {
        DeviceOptions::new("a.b-c_d")
    }

    #[test]
    fn url_from_http_and_ws_bases() {
        for base in ["http://127.0.0.1:8080", "http://127.0.0.1:8080/", "ws://127.0.0.1:8080", "127.0.0.1:8080"] {
            let u = ws_url(base, &opts()).unwrap();
            assert_eq!(u.as_str(), "ws://127.0.0.1:8080/ws?token=a.b-c_d", "{base}");
        }
    }

    #[test]
    fn url_keeps_prefix_and_encodes_values() {
        let o = opts().client_id("dev 1/é&x=y").since("17-0+1");
        let u = ws_url("http://localhost:9000/gw/", &o).unwrap();
        assert_eq!(u.path(), "/gw/ws");
        let pairs: Vec<(String, String)> = u.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            vec![
                ("token".into(), "a.b-c_d".into()),
                ("client_id".into(), "dev 1/é&x=y".into()),
                ("since".into(), "17-0+1".into()),
            ]
        );
        assert!(!u.as_str().contains("&x=y"));
    }

    #[test]
    fn url_without_token_in_query() {
        let u = ws_url("http://[::1]:8080", &opts().token_in_header(true)).unwrap();
        assert_eq!(u.as_str(), "ws://[::1]:8080/ws");
        let u = ws_url("http://h:1", &DeviceOptions::new("").client_id("c")).unwrap();
        assert_eq!(u.as_str(), "ws://h:1/ws?client_id=c");
    }

    #[test]
    fn url_rejects_tls_and_garbage() {
        for base in ["https://h", "wss://h", "ftp://h", "http://", "ws://:80"] {
            assert!(matches!(ws_url(base, &opts()), Err(Error::InvalidInput(_))), "{base}");
        }
    }
}
