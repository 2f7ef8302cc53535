//! A minimal keep-alive HTTP/1.1 client for the publishers.
//!
//! Written by hand rather than using the client crate's `Api` (reqwest) because the
//! publish-api run drives tens of thousands of requests per second from the same two cores
//! as the server under test: a pre-formatted request and a head parser cost a few
//! microseconds per request, a general client several times that, and every microsecond the
//! generator spends is taken from the server. It speaks only what the suite needs: POST with
//! a JSON body (and GET), responses with Content-Length.

use std::net::SocketAddr;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection.
pub struct HttpConn {
    stream: TcpStream,
    host: String,
    auth: Option<String>,
    req: Vec<u8>,
    buf: Vec<u8>,
}

/// A response: status and body.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `http://host:port[/...]` to a socket address (the suite only talks to IP literals).
pub fn addr_of(base: &str) -> Result<SocketAddr> {
    let rest = base.strip_prefix("http://").unwrap_or(base);
    let hostport = rest.split('/').next().unwrap_or(rest);
    hostport.parse().with_context(|| format!("{base}: expected http://IP:PORT"))
}

impl HttpConn {
    /// Connects to `base` (`http://IP:PORT`); `auth` is sent as `Authorization: Bearer`.
    pub async fn connect(base: &str, auth: Option<&str>) -> Result<HttpConn> {
        let addr = addr_of(base)?;
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            host: addr.to_string(),
            auth: auth.map(|a| format!("Bearer {a}")),
            req: Vec::with_capacity(512),
            buf: Vec::with_capacity(4096),
        })
    }

    /// POSTs a JSON body and reads the whole response.
    pub async fn post(&mut self, path: &str, body: &[u8]) -> Result<Response> {
        self.request("POST", path, body).await
    }

    /// GETs `path` and reads the whole response.
    pub async fn get(&mut self, path: &str) -> Result<Response> {
        self.request("GET", path, b"").await
    }

    async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Response> {
        self.req.clear();
        self.req.extend_from_slice(method.as_bytes());
        self.req.push(b' ');
        self.req.extend_from_slice(path.as_bytes());
        self.req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.req.extend_from_slice(self.host.as_bytes());
        if let Some(a) = &self.auth {
            self.req.extend_from_slice(b"\r\nAuthorization: ");
            self.req.extend_from_slice(a.as_bytes());
        }
        self.req.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
        self.req.extend_from_slice(body.len().to_string().as_bytes());
        self.req.extend_from_slice(b"\r\n\r\n");
        self.req.extend_from_slice(body);
        self.stream.write_all(&self.req).await.context("sending a request")?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> Result<Response> {
        loop {
            if let Some(r) = self.parse()? {
                return Ok(r);
            }
            if self.buf.len() > 1 << 20 {
                bail!("response larger than 1 MiB");
            }
            let n = self.stream.read_buf(&mut self.buf).await.context("reading a response")?;
            if n == 0 {
                bail!("server closed the connection");
            }
        }
    }

    /// A complete response from the front of the buffer, if there is one.
    fn parse(&mut self) -> Result<Option<Response>> {
        let Some(head_end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| anyhow!("response head is not text"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
        let mut len = 0usize;
        for l in lines {
            let Some((name, value)) = l.split_once(':') else { continue };
            if name.eq_ignore_ascii_case("content-length") {
                len = value.trim().parse().map_err(|_| anyhow!("bad content-length {value:?}"))?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("chunked responses are not supported by the bench client");
            }
        }
        let total = head_end + 4 + len;
        if self.buf.len() < total {
            return Ok(None);
        }
        let body = self.buf[head_end + 4..total].to_vec();
        self.buf.drain(..total);
        Ok(Some(Response { status, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_parsing() {
        assert_eq!(addr_of("http://127.0.0.1:8080").unwrap().port(), 8080);
        assert_eq!(addr_of("http://127.0.0.1:9/x").unwrap().port(), 9);
        assert!(addr_of("http://localhost:1").is_err());
    }
}
