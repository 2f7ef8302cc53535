//! The connection to Redis, for the store, the broker and presence: one type for a
//! standalone server (a `ConnectionManager`, which reconnects by itself), a Redis Cluster
//! (a `ClusterConnection`, which follows the slot map) and a master found through Redis
//! Sentinel (`sentinel::SentinelConn`, which follows a failover), parsed from one URL setting.
//!
//! Owns: URL parsing (`redis://`, `rediss://`, comma-separated cluster seeds,
//! `redis+sentinel://`), cluster detection, and which errors mean "Redis cannot serve now".
//!
//! Must never: wait without a time limit (every connection has connect and response
//! timeouts; callers add an overall one), or drop the URL's credentials or TLS settings.

pub mod sentinel;

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Value};
use sentinel::{SentinelConn, SentinelSpec};

/// Whether the URL names a standalone server or a Redis Cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// Ask the server (`INFO cluster`): cluster mode if `cluster_enabled:1`.
    #[default]
    Auto,
    Standalone,
    Cluster,
}

/// A multiplexed connection to a standalone server (reconnecting by itself) or to a cluster.
/// Cheap to clone; concurrent requests on it are pipelined on the socket.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConn),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
            RedisConn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
            RedisConn::Sentinel(c) => c.get_db(),
        }
    }
}

/// The parsed URL(s) and whether they name a cluster (or, for Sentinel, where the sentinels are).
#[derive(Clone)]
pub struct Endpoint {
    /// The cluster seeds, or the one standalone server (empty with Sentinel).
    pub nodes: Vec<ConnectionInfo>,
    pub cluster: bool,
    pub sentinel: Option<SentinelSpec>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

impl Endpoint {
    /// Parses `url` (comma-separated for several cluster seeds) and, with `RedisMode::Auto`,
    /// asks the first node whether it is part of a cluster.
    pub async fn resolve(
        url: &str,
        mode: RedisMode,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Self, RedisError> {
        if SentinelSpec::matches(url) {
            if mode == RedisMode::Cluster {
                return Err(RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "a redis+sentinel:// URL names a standalone master, not a Redis Cluster",
                )));
            }
            let spec = SentinelSpec::parse(url, connect_timeout + response_timeout)?;
            return Ok(Endpoint {
                nodes: Vec::new(),
                cluster: false,
                sentinel: Some(spec),
                connect_timeout,
                response_timeout,
            });
        }
        let nodes = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| u.into_connection_info())
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = nodes.first() else {
            return Err(RedisError::from((redis::ErrorKind::InvalidClientConfig, "empty Redis URL")));
        };
        let cluster = match mode {
            RedisMode::Standalone => false,
            RedisMode::Cluster => true,
            RedisMode::Auto => {
                let client = redis::Client::open(first.clone())?;
                let cfg = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(response_timeout));
                let mut c = client.get_multiplexed_async_connection_with_config(&cfg).await?;
                let info: String = redis::cmd("INFO").arg("cluster").query_async(&mut c).await?;
                info.lines().any(|l| l.trim() == "cluster_enabled:1")
            }
        };
        if !cluster && nodes.len() > 1 {
            return Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "several Redis URLs are only allowed for a Redis Cluster",
            )));
        }
        Ok(Endpoint { nodes, cluster, sentinel: None, connect_timeout, response_timeout })
    }

    /// Where the standalone server is now: the URL's, or the master the sentinels name.
    pub async fn master(&self) -> Result<ConnectionInfo, RedisError> {
        match (&self.sentinel, self.nodes.first()) {
            (Some(spec), _) => spec.master().await,
            (None, Some(n)) => Ok(n.clone()),
            (None, None) => Err(RedisError::from((redis::ErrorKind::InvalidClientConfig, "empty Redis URL"))),
        }
    }

    /// Opens a command connection (RESP2, reconnecting on its own).
    pub async fn connect(&self) -> Result<RedisConn, RedisError> {
        if self.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(self.nodes.clone())
                .connection_timeout(self.connect_timeout)
                .response_timeout(self.response_timeout)
                .retries(2)
                .build()?;
            Ok(RedisConn::Cluster(client.get_async_connection().await?))
        } else {
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(self.response_timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            if let Some(spec) = &self.sentinel {
                return Ok(RedisConn::Sentinel(SentinelConn::connect(spec.clone(), cfg).await?));
            }
            let client = redis::Client::open(self.master().await?)?;
            Ok(RedisConn::Single(ConnectionManager::new_with_config(client, cfg).await?))
        }
    }
}

/// Whether an error means "Redis cannot be reached or cannot serve now" (retry later, 503)
/// rather than a bug or a refused command.
pub fn is_unavailable(e: &RedisError) -> bool {
    use redis::{ErrorKind as K, ServerErrorKind as S};
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return true;
    }
    match e.kind() {
        K::Io | K::ClusterConnectionNotFound | K::AuthenticationFailed => true,
        K::Server(s) => {
            matches!(s, S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown | S::ReadOnly | S::Moved | S::Ask)
        }
        // Codes redis-rs does not name: OOM (maxmemory reached), BUSY (a script runs too
        // long), NOREPLICAS.
        K::Extension => matches!(e.code(), Some("OOM" | "BUSY" | "NOREPLICAS" | "LOADING")),
        _ => false,
    }
}
