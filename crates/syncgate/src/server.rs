//! Running a node: building it from the config, the accept loop (hyper HTTP/1 with
//! upgrades, so /ws and the API share one port), and graceful shutdown.
//!
//! Owns: start-up (data dir 0700, development secrets 0600, store, broker), the listener, and the
//! shutdown sequence: stop accepting, mark not ready, close WebSockets with 1001 after
//! flushing what is queued, finish in-flight HTTP requests, close the store.
//!
//! Must never: exit before the store is closed, or wait for stragglers past the grace time.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::auth::Auth;
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::{RedisBroker, RedisBrokerOptions, Resubscribed};
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::node::{Backends, Node};
use crate::presence::local::LocalPresence;
use crate::presence::redis::RedisPresence;
use crate::queue::embedded::{EmbeddedQueue, EmbeddedQueueOptions};
use crate::queue::redis::RedisQueue;
use crate::store::embedded::{EmbeddedOptions, EmbeddedStore, Engine};
use crate::store::redis::{RedisOptions, RedisStore};
use crate::webhooks::online::{LocalMarks, RedisMarks};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("data dir {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("redis: {0}")]
    Redis(String),
    #[error("outbound queue: {0}")]
    Queue(String),
    #[error("{0}")]
    Push(#[from] crate::push::PushError),
    #[error("{0}")]
    Insecure(String),
}

/// Development credentials, created under the data dir when the config has none.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct DevSecrets {
    pub jwt_secret: String,
    pub api_key: String,
    /// Admin UI key (added to files written before the admin UI existed).
    #[serde(default)]
    pub admin_key: String,
}

fn random_token(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Loads (or creates and announces) the development secrets. Returns (secrets, created).
/// Refuses a secrets file that group or others can read: anyone who can read it can mint
/// tokens for any user and call the server API.
pub fn dev_secrets(data_dir: &Path) -> Result<(DevSecrets, bool), ServerError> {
    let path = data_dir.join("dev-secrets.json");
    let dd = |source| ServerError::DataDir { path: data_dir.display().to_string(), source };
    let save = |s: &DevSecrets| {
        let text = serde_json::to_string_pretty(s).unwrap_or_default();
        write_private(&path, text.as_bytes()).map_err(dd)
    };
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(s) = serde_json::from_str::<DevSecrets>(&text) {
            check_private(&path)?;
            if !s.admin_key.is_empty() {
                return Ok((s, false));
            }
            // Written before the admin UI existed: add its key, keep the others.
            let s = DevSecrets { admin_key: format!("ak_dev_{}", random_token(16)), ..s };
            save(&s)?;
            return Ok((s, true));
        }
    }
    create_private_dir(data_dir).map_err(dd)?;
    let s = DevSecrets {
        jwt_secret: random_token(32),
        api_key: format!("sk_dev_{}", random_token(16)),
        admin_key: format!("ak_dev_{}", random_token(16)),
    };
    save(&s)?;
    Ok((s, true))
}

/// Creates `dir` (and its parents) readable by this user only (0700 on Unix). An existing
/// directory keeps its mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Writes a file created readable by this user only (0600 on Unix), never world-readable
/// even for an instant.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    f.sync_all()
}

/// Refuses a secrets file readable or writable by group or others.
fn check_private(path: &Path) -> Result<(), ServerError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|source| ServerError::DataDir { path: path.display().to_string(), source })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(ServerError::Insecure(format!(
                "{} is accessible to other users (mode {:o}); it holds the development JWT secret and API key. Fix it with: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            )));
        }
    }
    let _ = path;
    Ok(())
}

/// Creates an embedded database file 0600 before it is opened (an empty file is a new
/// database), and tightens one that group or others can read.
fn private_store_file(dir: &Path, name: &str) -> std::io::Result<()> {
    let path = dir.join(name);
    if !path.exists() {
        write_private(&path, b"")?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "store file was readable by other users; setting it to 0600");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// Development secrets in use, and whether they were created just now.
pub type DevInUse = Option<(DevSecrets, bool)>;

/// The effective (jwt secret, api keys), using development ones where the config has none.
pub fn effective_credentials(cfg: &Config) -> Result<(String, Vec<String>, DevInUse), ServerError> {
    let needs_secret = cfg.auth.jwt_secret.is_empty() && cfg.auth.jwt_public_keys.is_empty();
    let needs_key = cfg.auth.api_keys.is_empty();
    if !needs_secret && !needs_key {
        return Ok((cfg.auth.jwt_secret.clone(), cfg.auth.api_keys.clone(), None));
    }
    let (dev, created) = dev_secrets(&cfg.server.data_dir)?;
    let secret = if needs_secret { dev.jwt_secret.clone() } else { cfg.auth.jwt_secret.clone() };
    let keys = if needs_key { vec![dev.api_key.clone()] } else { cfg.auth.api_keys.clone() };
    Ok((secret, keys, Some((dev, created))))
}

/// The admin keys in effect: `admin.keys`, else the development one when the node runs in
/// development mode, else none (the admin UI then refuses every sign-in).
pub fn effective_admin_keys(cfg: &Config, dev: &DevInUse) -> Vec<String> {
    if !cfg.admin.keys.is_empty() {
        return cfg.admin.keys.clone();
    }
    dev.as_ref().map(|(d, _)| vec![d.admin_key.clone()]).unwrap_or_default()
}

pub fn instance_id(cfg: &Config) -> String {
    if !cfg.server.instance_id.is_empty() {
        return cfg.server.instance_id.clone();
    }
    let host = hostname::get().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "syncgate".into());
    format!("{host}-{}", &random_token(3))
}

/// One node on the embedded store: everything in this process.
fn single_node(cfg: &Config, hub: &Arc<Hub>, metrics: &Metrics) -> Result<Backends, ServerError> {
    let dir = cfg.server.data_dir.clone();
    let dd = |source| ServerError::DataDir { path: dir.display().to_string(), source };
    create_private_dir(&dir).map_err(dd)?;
    for name in [crate::queue::embedded::FILE_NAME, crate::push::devices_embedded::FILE_NAME] {
        private_store_file(&dir, name).map_err(dd)?;
    }
    // Before creating anything of this engine's: a data dir of the other engine is refused.
    crate::store::embedded::refuse_other_engine(&dir, cfg.store.engine)?;
    let engine = cfg.store.engine.resolve(&dir);
    match engine {
        Engine::Redb => private_store_file(&dir, crate::store::embedded::FILE_NAME).map_err(dd)?,
        // fjall creates its files with the process's umask: the directory keeps others out.
        _ => create_private_dir(&dir.join(crate::store::embedded::LSM_DIR_NAME)).map_err(dd)?,
    }
    tracing::info!(engine = engine.name(), setting = cfg.store.engine.name(), "embedded store engine");
    let q = &cfg.queue;
    let qopts = EmbeddedQueueOptions { max_jobs: q.max_jobs, max_dead: q.max_dead, fsync: cfg.store.fsync };
    let queue = EmbeddedQueue::open(&dir, qopts).map_err(|e| ServerError::Queue(e.to_string()))?;
    let store = EmbeddedStore::open_with_metrics(
        EmbeddedOptions {
            dir: dir.clone(),
            engine,
            fsync: cfg.store.fsync,
            max_batch: 1024,
            cache_bytes: cfg.store.cache_bytes,
        },
        metrics.store.clone(),
    )?;
    let devices = Arc::new(crate::push::devices_embedded::EmbeddedDevices::open(&dir)?);
    Ok(Backends {
        push: Arc::new(crate::push::Push::new(&cfg.push, devices, metrics.push.clone())?),
        store: Arc::new(store),
        broker: Arc::new(MemoryBroker::new(hub.clone())),
        presence: Arc::new(LocalPresence::new(hub.clone())),
        queue: Arc::new(queue),
        online: Arc::new(LocalMarks::default()),
    })
}

/// Cluster mode: streams, fan-out and presence on Redis.
async fn cluster(
    cfg: &Config,
    hub: &Arc<Hub>,
    instance: &str,
    stop: &CancellationToken,
    metrics: &Metrics,
) -> Result<Backends, ServerError> {
    let r = &cfg.redis;
    let redis_err = |e: &dyn std::fmt::Display| ServerError::Redis(e.to_string());
    let mut opts = RedisOptions::new(&r.url);
    opts.mode = r.mode;
    opts.key_prefix = r.key_prefix.clone();
    opts.max_len = cfg.store.max_stream_len;
    opts.room_max_len = cfg.rooms.history_size;
    opts.idempotency_ttl = cfg.store.idempotency_ttl;
    opts.wait_replicas = r.wait_replicas;
    opts.wait_timeout = r.wait_timeout;
    let store = RedisStore::connect(opts).await?;
    let mut bopts = RedisBrokerOptions::new(&r.url);
    bopts.mode = r.mode;
    // Deployments sharing a Redis must not hear each other's channels either.
    if r.key_prefix != "sg" {
        bopts.channel_prefix = format!("{}:sync", r.key_prefix);
    }
    let broker = RedisBroker::connect_with(bopts, instance, hub.clone()).await.map_err(|e| redis_err(&e))?;
    // A message published while a subscription was not yet (or no longer) in place never
    // arrives over pub/sub: the affected connections read their streams from the store.
    let h = hub.clone();
    broker.on_resubscribed(Box::new(move |what| match what {
        Resubscribed::User(u) => h.recheck_user(&u),
        Resubscribed::Room(room) => h.recheck_room(&room),
        Resubscribed::Everything => h.recheck_all(),
    }));
    let presence = Arc::new(RedisPresence::new(store.connection(), &r.key_prefix, instance));
    presence.spawn(hub.clone(), r.presence_ttl, stop.clone());
    tracing::info!(cluster = store.is_cluster(), sharded_pubsub = broker.is_sharded(), "cluster mode on Redis");
    let queue = RedisQueue::new(store.connection(), &r.key_prefix, cfg.queue.max_jobs, cfg.queue.max_dead);
    let online = RedisMarks::new(store.connection(), &r.key_prefix);
    let devices = Arc::new(crate::push::devices_redis::RedisDevices::new(store.connection(), &r.key_prefix));
    let push = Arc::new(crate::push::Push::new(&cfg.push, devices, metrics.push.clone())?);
    Ok(Backends {
        store: Arc::new(store),
        broker: Arc::new(broker),
        presence,
        queue: Arc::new(queue),
        online: Arc::new(online),
        push,
    })
}

/// Binds `addr` and listens with `backlog` (tokio's own `bind` listens with 128: a few
/// hundred devices reconnecting at once would overflow it, and the kernel drops their
/// SYNs, which the clients only retry after a second).
pub fn listen(addr: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let addr: SocketAddr =
        addr.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// A bound, ready-to-run node.
pub struct Server {
    pub node: Arc<Node>,
    listener: TcpListener,
    /// Stops background tasks started at build time (presence refresh).
    background: CancellationToken,
    /// Development credentials, when they are in use (for the start-up banner).
    pub dev: DevInUse,
}

impl Server {
    pub async fn build(cfg: Config) -> Result<Server, ServerError> {
        let cfg = Arc::new(cfg);
        let (secret, keys, dev) = effective_credentials(&cfg)?;
        let auth = Auth::new(&cfg.auth, &secret, &keys)?.with_admin_keys(&effective_admin_keys(&cfg, &dev));
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(cfg.limits.max_connections, cfg.limits.max_connections_per_user, metrics.clone()));
        let instance = instance_id(&cfg);
        hub.set_instance(&instance);
        let background = CancellationToken::new();
        let backends = if cfg.redis.url.is_empty() {
            single_node(&cfg, &hub, &metrics)?
        } else {
            cluster(&cfg, &hub, &instance, &background, &metrics).await?
        };
        let listener = listen(&cfg.server.listen, cfg.server.listen_backlog)
            .map_err(|source| ServerError::Listen { addr: cfg.server.listen.clone(), source })?;
        let node = Arc::new(Node::new(cfg.clone(), instance, hub, backends, auth, metrics));
        crate::webhooks::install(&node);
        crate::delayed::install(&node);
        crate::push::runner::install(&node);
        Ok(Server { node, listener, background, dev })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn run(self, signal: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server { node, listener, background, .. } = self;
        let shutdown = CancellationToken::new();
        node.spawn_housekeeping(shutdown.clone());
        let queue_stop = CancellationToken::new();
        let workers = node.workers.spawn(queue_stop.clone(), node.cfg.server.shutdown_grace);
        let router = crate::api::router(node.clone());
        let tracker = TaskTracker::new();
        let http_stop = CancellationToken::new();
        tokio::pin!(signal);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut signal => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let router = router.clone();
            let stop = http_stop.clone();
            tracker.spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    router.clone().oneshot(req)
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades();
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
        drop(listener);
        tracing::info!("shutting down: closing connections");
        node.begin_shutdown();
        node.hub.close_all(crate::close::SHUTDOWN);
        http_stop.cancel();
        tracker.close();
        node.tasks.close();
        let grace = node.cfg.server.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            tracker.wait().await;
            node.tasks.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(left = node.hub.counts().0, "shutdown grace time over; dropping the rest");
        }
        shutdown.cancel();
        queue_stop.cancel();
        let _ = workers.await;
        if let Err(e) = node.workers.queue().close().await {
            tracing::warn!(error = %e, "closing the outbound queue failed");
        }
        background.cancel();
        node.store.close().await?;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// How many of `tries` connections complete their handshake against a listener of
    /// `backlog` that never accepts.
    async fn completed(backlog: u32, tries: usize) -> usize {
        let listener = super::listen("127.0.0.1:0", backlog).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut open = Vec::new();
        for _ in 0..tries {
            let connect = tokio::net::TcpStream::connect(addr);
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
                open.push(s);
            }
        }
        open.len()
    }

    /// The backlog asked for is the one the kernel applies: with nothing accepting, a
    /// listener of backlog 2 takes about that many connections and drops the next SYNs,
    /// one of 64 takes them all.
    #[tokio::test]
    async fn listen_applies_the_backlog() {
        let small = completed(2, 8).await;
        assert!((1..=4).contains(&small), "backlog 2 completed {small} of 8 handshakes");
        assert_eq!(completed(64, 8).await, 8);
    }

    #[test]
    fn listen_refuses_a_bad_address() {
        let e = super::listen("localhost:80", 16).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    }
}
