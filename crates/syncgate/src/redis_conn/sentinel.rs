//! Redis Sentinel: `redis+sentinel://` URLs, finding the master through the sentinels, and a
//! command connection that follows a failover.
//!
//! Why a follower of our own: redis-rs's `SentinelClient` finds the master once per
//! connection it opens, and its `ConnectionManager` reconnects to the address it was built
//! with, so after a failover it keeps knocking at the old master (dead, or a read-only
//! replica). `SentinelConn` keeps a `ConnectionManager` to the current master and a task that
//! asks the sentinels where the master is (every `POLL`, and at once when a command fails for
//! a connection reason) and swaps in a connection to the new one when it moved.
//!
//! Must never: hold a lock across an await, or send a command to an address the sentinels do
//! not name as the master (each lookup checks `ROLE` on the master it names).

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::RwLock;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, TlsMode, Value};
use tokio::sync::Notify;

/// How often the follower asks the sentinels where the master is.
const POLL: Duration = Duration::from_millis(500);

fn invalid(msg: impl Into<String>) -> RedisError {
    RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad redis+sentinel URL", msg.into()))
}

/// A parsed `redis+sentinel://[user:password@]HOST:PORT,HOST:PORT/MASTER_NAME[/DB][#insecure]`
/// (`rediss+sentinel://` for TLS, to the sentinels and the master alike). The credentials
/// and db are the master's (and its replicas'); the sentinels are reached without them.
#[derive(Clone)]
pub struct SentinelSpec {
    sentinels: Vec<ConnectionInfo>,
    pub master_name: String,
    node: SentinelNodeConnectionInfo,
    timeout: Duration,
}

impl SentinelSpec {
    /// Whether `url` is a Sentinel URL.
    pub fn matches(url: &str) -> bool {
        url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://")
    }

    pub fn parse(url: &str, timeout: Duration) -> Result<Self, RedisError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("rediss+sentinel://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("redis+sentinel://") {
            (false, r)
        } else {
            return Err(invalid("must start with redis+sentinel:// or rediss+sentinel://"));
        };
        let (rest, fragment) = rest.split_once('#').map_or((rest, None), |(a, b)| (a, Some(b)));
        let (rest, query) = rest.split_once('?').map_or((rest, None), |(a, b)| (a, Some(b)));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = authority.rsplit_once('@').map_or((None, authority), |(u, h)| (Some(u), h));
        let (master_name, db) = path.split_once('/').unwrap_or((path, ""));
        if master_name.is_empty() {
            return Err(invalid("the path must name the master: redis+sentinel://HOST:PORT,.../MASTER_NAME"));
        }
        let scheme = if tls { "rediss" } else { "redis" };
        let suffix = |with_auth: bool, db: &str| {
            let mut u = String::new();
            if with_auth {
                if let Some(ui) = userinfo {
                    u.push_str(ui);
                    u.push('@');
                }
            }
            (
                u,
                format!(
                    "/{db}{}{}",
                    query.map(|q| format!("?{q}")).unwrap_or_default(),
                    fragment.map(|f| format!("#{f}")).unwrap_or_default()
                ),
            )
        };
        let mut sentinels = Vec::new();
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let (_, tail) = suffix(false, "");
            sentinels.push(format!("{scheme}://{host}{tail}").into_connection_info()?);
        }
        let Some(first) = hosts.split(',').map(str::trim).find(|h| !h.is_empty()) else {
            return Err(invalid("no sentinel address"));
        };
        // The master's settings (credentials, db, TLS) as a redis:// URL would give them.
        let (auth, tail) = suffix(true, db);
        let template = format!("{scheme}://{auth}{first}{tail}").into_connection_info()?;
        let mut node =
            SentinelNodeConnectionInfo::default().set_redis_connection_info(template.redis_settings().clone());
        if let redis::ConnectionAddr::TcpTls { insecure, .. } = template.addr() {
            node = node.set_tls_mode(if *insecure { TlsMode::Insecure } else { TlsMode::Secure });
        }
        Ok(SentinelSpec { sentinels, master_name: master_name.to_string(), node, timeout })
    }

    /// Asks the sentinels (in order) for the master, and checks with `ROLE` that it is one.
    pub async fn master(&self) -> Result<ConnectionInfo, RedisError> {
        let mut sentinel = Sentinel::build(self.sentinels.clone())?;
        let found = tokio::time::timeout(self.timeout, sentinel.async_master_for(&self.master_name, Some(&self.node)));
        match found.await {
            Ok(client) => Ok(client?.get_connection_info().clone()),
            Err(_) => Err(RedisError::from((redis::ErrorKind::Io, "no sentinel named the master in time"))),
        }
    }
}

/// What a `SentinelConn` and its follower task share.
struct Shared {
    current: RwLock<(String, ConnectionManager)>,
    kick: Notify,
    db: i64,
}

/// A command connection to whichever server the sentinels name as master. Cheap to clone.
#[derive(Clone)]
pub struct SentinelConn {
    shared: Arc<Shared>,
}

impl SentinelConn {
    /// Finds the master, connects, and starts the follower (which ends with the last clone).
    pub async fn connect(spec: SentinelSpec, cfg: ConnectionManagerConfig) -> Result<Self, RedisError> {
        let info = spec.master().await?;
        let addr = info.addr().to_string();
        let db = info.redis_settings().db();
        let manager = ConnectionManager::new_with_config(redis::Client::open(info)?, cfg.clone()).await?;
        let shared = Arc::new(Shared { current: RwLock::new((addr, manager)), kick: Notify::new(), db });
        tokio::spawn(follow(Arc::downgrade(&shared), spec, cfg));
        Ok(SentinelConn { shared })
    }

    fn current(&self) -> ConnectionManager {
        self.shared.current.read().1.clone()
    }

    /// A failure that may mean the master moved: look again now.
    fn suspect(&self, e: &RedisError) {
        if super::is_unavailable(e) {
            self.shared.kick.notify_one();
        }
    }
}

/// Follows the master until every `SentinelConn` is gone.
async fn follow(shared: Weak<Shared>, spec: SentinelSpec, cfg: ConnectionManagerConfig) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let kicked = async {
            tokio::select! {
                _ = s.kick.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        };
        kicked.await;
        let known = s.current.read().0.clone();
        drop(s);
        let info = match spec.master().await {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!(error = %e, master = %spec.master_name, "sentinel lookup failed");
                continue;
            }
        };
        let addr = info.addr().to_string();
        if addr == known {
            continue;
        }
        let client = match redis::Client::open(info) {
            Ok(c) => c,
            Err(_) => continue,
        };
        match ConnectionManager::new_with_config(client, cfg.clone()).await {
            Ok(manager) => {
                let Some(s) = shared.upgrade() else { return };
                tracing::warn!(from = %known, to = %addr, master = %spec.master_name, "redis sentinel: following the new master");
                *s.current.write() = (addr, manager);
            }
            Err(e) => tracing::warn!(error = %e, to = %addr, "redis sentinel: cannot connect to the new master yet"),
        }
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut c = self.current();
        Box::pin(async move {
            let r = c.req_packed_command(cmd).await;
            if let Err(e) = &r {
                self.suspect(e);
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut c = self.current();
        Box::pin(async move {
            let r = c.req_packed_commands(cmd, offset, count).await;
            if let Err(e) = &r {
                self.suspect(e);
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.shared.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let t = Duration::from_secs(1);
        let s = SentinelSpec::parse("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26380/mymaster/2", t).unwrap();
        assert_eq!(s.master_name, "mymaster");
        assert_eq!(s.sentinels.len(), 2);
        assert_eq!(s.sentinels[1].addr().to_string(), "10.0.0.2:26380");
        assert_eq!(s.sentinels[0].redis_settings().password(), None, "sentinels without the master's password");
        let tls = SentinelSpec::parse("rediss+sentinel://h:26379/m#insecure", t).unwrap();
        assert!(matches!(tls.sentinels[0].addr(), redis::ConnectionAddr::TcpTls { insecure: true, .. }));
        assert!(SentinelSpec::parse("redis+sentinel://h:26379/", t).is_err(), "no master name");
        assert!(SentinelSpec::parse("redis+sentinel:///m", t).is_err(), "no sentinel");
        assert!(SentinelSpec::matches("redis+sentinel://h/m") && !SentinelSpec::matches("redis://h"));
    }
}
