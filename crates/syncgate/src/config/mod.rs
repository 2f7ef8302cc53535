//! Configuration: the YAML file, environment overrides, defaults and validation.
//!
//! Owns: the `Config` tree (one struct per YAML section), loading it from a file plus
//! `SYNCGATE_*` variables, and checking it. The documented default config is
//! `default.yaml` beside this file; a test keeps it equal to `Config::default()`. This file
//! holds the sections, their defaults and the validation; `load.rs` reads the file and the
//! environment; `outbound.rs`, `push.rs` and `rate.rs` hold sections of their own.
//!
//! Must never: read configuration anywhere else, or start anything.

mod load;
mod outbound;
mod push;
mod rate;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use outbound::{ConnectProxy, OnError, PushConfig, QueueConfig, WebhookEndpoint, WebhooksConfig, WEBHOOK_EVENTS};
pub use push::{parse_allow_host, PushApns, PushFcm, PushProviders, PushWebPush, PushWebhook};
pub use rate::{duration, Rate, RateSetting};

use crate::store::embedded::{Engine, FsyncPolicy};

/// The documented default configuration (printed by `syncgate config default`).
pub const DEFAULT_YAML: &str = include_str!("default.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config is not valid YAML: {0}")]
    Yaml(String),
    #[error("config key `{path}`: {message}")]
    Key { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub rate_limits: RateLimits,
    pub heartbeat: Heartbeat,
    pub messages: Messages,
    pub rooms: Rooms,
    pub store: StoreConfig,
    pub redis: RedisConfig,
    pub log: LogConfig,
    pub webhooks: WebhooksConfig,
    pub queue: QueueConfig,
    pub push: PushConfig,
    pub compression: CompressionConfig,
    pub admin: AdminConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub instance_id: String,
    pub data_dir: PathBuf,
    pub cors_origins: Vec<String>,
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Peers (CIDRs or addresses) whose `X-Forwarded-For` is believed for a connection's ip.
    pub trusted_proxies: Vec<String>,
    /// How long a request body may take to arrive once its headers are in (then 408).
    #[serde(with = "duration")]
    pub body_timeout: Duration,
    /// Connections the kernel may hold fully open for the listener before it accepts them
    /// (`listen(2)`'s backlog; Linux caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            instance_id: String::new(),
            data_dir: PathBuf::from("./data"),
            cors_origins: vec!["*".into()],
            shutdown_grace: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            body_timeout: Duration::from_secs(30),
            listen_backlog: 4096,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub jwt_secret: String,
    pub jwt_public_keys: Vec<PublicKey>,
    pub issuer: String,
    pub audience: String,
    #[serde(with = "duration")]
    pub leeway: Duration,
    pub api_keys: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: String::new(),
            jwt_public_keys: Vec::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway: Duration::from_secs(5),
            api_keys: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKey {
    pub alg: KeyAlg,
    #[serde(default)]
    pub pem: String,
    #[serde(default)]
    pub pem_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum KeyAlg {
    RS256,
    ES256,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub send_queue: usize,
    pub max_rooms_per_connection: usize,
    pub max_name_bytes: usize,
    pub max_batch_users: usize,
    pub max_page: usize,
    /// Largest `len(data) x len(user_ids)` of one batch publish, in bytes (then 413).
    pub max_batch_bytes: usize,
    pub max_devices_per_user: usize,
    /// What the per-user connection limit does when presence cannot be read.
    pub presence_failure: PresenceFailure,
}

/// `limits.presence_failure`: refuse (503) or admit when the deployment-wide count is unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceFailure {
    #[default]
    Closed,
    Open,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 65536,
            max_body_bytes: 1 << 20,
            max_connections: 100_000,
            max_connections_per_user: 10,
            send_queue: 256,
            max_rooms_per_connection: 100,
            max_name_bytes: 128,
            max_batch_users: 10_000,
            max_page: 1000,
            max_batch_bytes: 64 << 20,
            max_devices_per_user: 50,
            presence_failure: PresenceFailure::Closed,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    pub ws_connect_per_user: RateSetting,
    pub ws_connect_per_ip: RateSetting,
    pub client_frames: RateSetting,
    pub client_frames_strikes: u32,
    pub api_per_user: RateSetting,
    pub api_per_key: RateSetting,
    /// Admin UI sign-in attempts per client address.
    pub admin_sign_in: RateSetting,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            ws_connect_per_user: RateSetting::new(10, Duration::from_secs(60), 10),
            ws_connect_per_ip: RateSetting::off(),
            client_frames: RateSetting::new(100, Duration::from_secs(1), 200),
            client_frames_strikes: 20,
            api_per_user: RateSetting::new(100, Duration::from_secs(60), 100),
            api_per_key: RateSetting::off(),
            admin_sign_in: RateSetting::new(10, Duration::from_secs(60), 10),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Heartbeat {
    #[serde(with = "duration")]
    pub interval: Duration,
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat { interval: Duration::from_secs(30), timeout: Duration::from_secs(90) }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Messages {
    pub allowed_types: Vec<String>,
    pub max_type_bytes: usize,
}

impl Default for Messages {
    fn default() -> Self {
        Messages { allowed_types: Vec::new(), max_type_bytes: 64 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rooms {
    pub client_publish: Vec<String>,
    pub history_size: u64,
    #[serde(with = "duration")]
    pub history_ttl: Duration,
}

impl Default for Rooms {
    fn default() -> Self {
        Rooms { client_publish: Vec::new(), history_size: 1000, history_ttl: Duration::from_secs(24 * 3600) }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Engine of the embedded store (single node): `auto` (the data dir's engine; `lsm` for
    /// a new one), `redb` or `lsm`.
    pub engine: Engine,
    pub fsync: FsyncPolicy,
    #[serde(with = "duration")]
    pub retention: Duration,
    pub max_stream_len: u64,
    #[serde(with = "duration")]
    pub cursor_ttl: Duration,
    #[serde(with = "duration")]
    pub idempotency_ttl: Duration,
    /// How long a claimed Idempotency-Key stays in flight if its request never finishes.
    #[serde(with = "duration")]
    pub idempotency_lease: Duration,
    #[serde(with = "duration")]
    pub sweep_interval: Duration,
    /// Memory the embedded store may use to cache its file's pages, in bytes.
    pub cache_bytes: usize,
}

/// Smallest `store.cache_bytes` (redb needs room for a few pages of every level).
pub const MIN_STORE_CACHE: usize = 1 << 20;

impl Default for StoreConfig {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        StoreConfig {
            engine: Engine::Auto,
            fsync: FsyncPolicy::Always,
            retention: Duration::from_secs(7 * DAY),
            max_stream_len: 10_000,
            cursor_ttl: Duration::from_secs(30 * DAY),
            idempotency_ttl: Duration::from_secs(DAY),
            idempotency_lease: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(60),
            cache_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    pub mode: crate::store::redis::RedisMode,
    pub key_prefix: String,
    #[serde(with = "duration")]
    pub presence_ttl: Duration,
    /// Replicas that must have a persisted publish before it is answered (`WAIT`); 0: none.
    pub wait_replicas: u32,
    /// How long that `WAIT` may take before the publish is answered 503.
    #[serde(with = "duration")]
    pub wait_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            mode: Default::default(),
            key_prefix: "sg".into(),
            presence_ttl: Duration::from_secs(30),
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Json }
    }
}

/// The admin web UI at /admin and the admin session it signs in with.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Keys operators sign in with. Empty: a development key is created under data_dir.
    pub keys: Vec<String>,
    /// Lifetime of a sign-in (the session cookie and its server-side record).
    #[serde(with = "duration")]
    pub session_ttl: Duration,
    /// Sessions kept at once; signing in past it forgets the oldest.
    pub max_sessions: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { keys: Vec::new(), session_ttl: Duration::from_secs(8 * 3600), max_sessions: 100 }
    }
}

/// permessage-deflate (RFC 7692) on WebSocket connections whose client offers it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    pub enabled: bool,
    pub min_bytes: usize,
    pub level: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig { enabled: true, min_bytes: 1024, level: 1 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Text,
}

impl Config {
    /// Checks relations between keys that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let key = |path: &str, message: String| Err(ConfigError::Key { path: path.into(), message });
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return key("server.listen", format!("{:?} is not an address like 127.0.0.1:8080", self.server.listen));
        }
        let l = &self.limits;
        for (name, v) in [
            ("limits.max_frame_bytes", l.max_frame_bytes),
            ("limits.max_body_bytes", l.max_body_bytes),
            ("limits.max_connections", l.max_connections),
            ("limits.max_connections_per_user", l.max_connections_per_user),
            ("limits.send_queue", l.send_queue),
            ("limits.max_rooms_per_connection", l.max_rooms_per_connection),
            ("limits.max_name_bytes", l.max_name_bytes),
            ("limits.max_batch_users", l.max_batch_users),
            ("limits.max_page", l.max_page),
            ("limits.max_batch_bytes", l.max_batch_bytes),
            ("limits.max_devices_per_user", l.max_devices_per_user),
            ("messages.max_type_bytes", self.messages.max_type_bytes),
        ] {
            if v == 0 {
                return key(name, "must be at least 1".into());
            }
        }
        if l.max_frame_bytes < 128 {
            return key("limits.max_frame_bytes", "must be at least 128".into());
        }
        if !(1..=65_535).contains(&self.server.listen_backlog) {
            return key("server.listen_backlog", format!("{} is not between 1 and 65535", self.server.listen_backlog));
        }
        if self.server.body_timeout.is_zero() {
            return key("server.body_timeout", "must be more than 0".into());
        }
        if self.heartbeat.interval.is_zero() {
            return key("heartbeat.interval", "must be more than 0".into());
        }
        if self.heartbeat.timeout <= self.heartbeat.interval {
            return key("heartbeat.timeout", "must be longer than heartbeat.interval".into());
        }
        if self.rate_limits.client_frames_strikes == 0 {
            return key("rate_limits.client_frames_strikes", "must be at least 1".into());
        }
        if self.store.sweep_interval.is_zero() {
            return key("store.sweep_interval", "must be more than 0".into());
        }
        if self.store.cache_bytes < MIN_STORE_CACHE {
            return key("store.cache_bytes", format!("must be at least {MIN_STORE_CACHE} (1 MiB)"));
        }
        if self.store.max_stream_len == 0 {
            return key("store.max_stream_len", "must be at least 1".into());
        }
        for (i, k) in self.auth.jwt_public_keys.iter().enumerate() {
            if k.pem.is_empty() == k.pem_file.is_none() {
                return key(&format!("auth.jwt_public_keys[{i}]"), "give exactly one of `pem` or `pem_file`".into());
            }
        }
        if let Err(message) = check_jwt_secret(&self.auth.jwt_secret) {
            return key("auth.jwt_secret", message);
        }
        if self.auth.api_keys.iter().any(|k| k.trim().len() < 8) {
            return key("auth.api_keys", "every API key must have at least 8 characters".into());
        }
        let url = &self.redis.url;
        if !url.is_empty()
            && !url.starts_with("redis://")
            && !url.starts_with("rediss://")
            && !crate::redis_conn::sentinel::SentinelSpec::matches(url)
        {
            return key(
                "redis.url",
                "must start with redis://, rediss://, redis+sentinel:// or rediss+sentinel://".into(),
            );
        }
        if crate::redis_conn::sentinel::SentinelSpec::matches(url) {
            if let Err(e) = crate::redis_conn::sentinel::SentinelSpec::parse(url, Duration::from_secs(1)) {
                return key("redis.url", e.to_string());
            }
        }
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(char::is_whitespace) {
            return key("redis.key_prefix", "must be a non-empty word".into());
        }
        if self.redis.presence_ttl < Duration::from_secs(3) {
            return key("redis.presence_ttl", "must be at least 3s".into());
        }
        if self.admin.keys.iter().any(|k| k.trim().len() < 16) {
            return key("admin.keys", "every admin key must have at least 16 characters".into());
        }
        if self.admin.session_ttl < Duration::from_secs(60) {
            return key("admin.session_ttl", "must be at least 1m".into());
        }
        if self.admin.max_sessions == 0 {
            return key("admin.max_sessions", "must be at least 1".into());
        }
        for p in &self.server.trusted_proxies {
            if crate::meta::parse_net(p).is_none() {
                return key("server.trusted_proxies", format!("{p:?} is not an address or CIDR like 10.0.0.0/8"));
            }
        }
        if self.compression.level > 9 {
            return key("compression.level", "must be 0 (no compression) to 9 (smallest)".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return key("log.level", format!("{e}"));
        }
        self.validate_outbound()?;
        self.validate_push()?;
        Ok(())
    }

    /// The default config as YAML (the documented file).
    pub fn default_yaml() -> &'static str {
        DEFAULT_YAML
    }
}

/// The shortest HS256 secret accepted, in bytes (RFC 7518 section 3.2: a key at least as
/// long as the hash output, 256 bits).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Refuses an HS256 secret too short to resist brute force. Empty means "no secret".
pub fn check_jwt_secret(secret: &str) -> Result<(), String> {
    if !secret.is_empty() && secret.len() < MIN_JWT_SECRET_BYTES {
        return Err(format!(
            "the HS256 secret has {} bytes; it needs at least {MIN_JWT_SECRET_BYTES} (generate one with `openssl rand -hex 32`)",
            secret.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn documented_default_equals_code_default() {
        let from_file = Config::from_yaml(DEFAULT_YAML).unwrap();
        let a = serde_yaml::to_string(&from_file).unwrap();
        let b = serde_yaml::to_string(&Config::default()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn env_overrides_file_and_short_names_work() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, "limits:\n  send_queue: 10\nserver:\n  listen: 127.0.0.1:1\n").unwrap();
        let c = Config::load_from(
            Some(&f),
            env(&[
                ("SYNCGATE_LISTEN", "0.0.0.0:9000"),
                ("SYNCGATE_LIMITS__SEND_QUEUE", "512"),
                ("SYNCGATE_API_KEY", "key-one-123, key-two-456"),
                ("SYNCGATE_RATE_LIMITS__CLIENT_FRAMES", "5/s burst 7"),
                ("SYNCGATE_INSTANCE_ID", "42"),
                ("SYNCGATE_JWT_SECRET", "12345678901234567890123456789012"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:9000");
        assert_eq!(c.limits.send_queue, 512);
        assert_eq!(c.auth.api_keys, vec!["key-one-123", "key-two-456"]);
        assert_eq!(c.rate_limits.client_frames.0.unwrap().burst.get(), 7);
        assert_eq!(c.server.instance_id, "42");
        assert_eq!(c.auth.jwt_secret, "12345678901234567890123456789012");
    }

    #[test]
    fn reports_first_bad_key_with_its_path() {
        let e = Config::from_yaml("limits:\n  send_queue: many\n").unwrap_err().to_string();
        assert!(e.contains("limits.send_queue"), "{e}");
        let e = Config::from_yaml("limits:\n  sendqueue: 3\n").unwrap_err().to_string();
        assert!(e.contains("limits") && e.contains("sendqueue"), "{e}");
        let e = Config::from_yaml("rate_limits:\n  client_frames: 10/day\n").unwrap_err().to_string();
        assert!(e.contains("rate_limits.client_frames"), "{e}");
        let e = Config::from_yaml("heartbeat:\n  interval: 30s\n  timeout: 10s\n").unwrap_err().to_string();
        assert!(e.contains("heartbeat.timeout"), "{e}");
        let e = Config::load_from(None, env(&[("SYNCGATE_LIMITS__MAX_FRAME_BYTES", "lots")])).unwrap_err().to_string();
        assert!(e.contains("limits.max_frame_bytes"), "{e}");
        let e = Config::load_from(None, env(&[("SYNCGATE_JWT_SECRET", "a")])).unwrap_err().to_string();
        assert!(e.contains("auth.jwt_secret") && e.contains("at least 32"), "{e}");
        let e = Config::load_from(None, env(&[("SYNCGATE_STORE__CACHE_BYTES", "4096")])).unwrap_err().to_string();
        assert!(e.contains("store.cache_bytes") && e.contains("1 MiB"), "{e}");
        let c = Config::load_from(None, env(&[("SYNCGATE_STORE__CACHE_BYTES", "1048576")])).unwrap();
        assert_eq!(c.store.cache_bytes, 1 << 20);
        let e = Config::from_yaml("server:\n  listen_backlog: 0\n").unwrap_err().to_string();
        assert!(e.contains("server.listen_backlog") && e.contains("between 1 and 65535"), "{e}");
        let c = Config::load_from(None, env(&[("SYNCGATE_SERVER__LISTEN_BACKLOG", "512")])).unwrap();
        assert_eq!(c.server.listen_backlog, 512);
        let e = Config::load_from(None, env(&[("SYNCGATE_NOPE", "1")])).unwrap_err().to_string();
        assert!(e.contains("SYNCGATE_NOPE"), "{e}");
    }

    #[test]
    fn compression_keys_are_read_and_checked() {
        let c = Config::load_from(None, env(&[("SYNCGATE_COMPRESSION__ENABLED", "false")])).unwrap();
        assert!(!c.compression.enabled);
        let c = Config::from_yaml("compression:\n  min_bytes: 0\n  level: 9\n").unwrap();
        assert_eq!((c.compression.min_bytes, c.compression.level), (0, 9));
        let e = Config::from_yaml("compression:\n  level: 10\n").unwrap_err().to_string();
        assert!(e.contains("compression.level"), "{e}");
    }

    #[test]
    fn music_example_config_is_valid() {
        let text = include_str!("../../../../examples/config/music-sync.yaml");
        let c = Config::from_yaml(text).unwrap();
        assert_eq!(c.messages.allowed_types.len(), 8);
    }
}
