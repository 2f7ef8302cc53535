//! The `syncgate` command: run a node, mint tokens, check configs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use syncgate::auth::Auth;
use syncgate::config::{Config, LogFormat};
use syncgate::server::{effective_credentials, Server};

#[derive(Parser)]
#[command(name = "syncgate", version, about = "Real-time sync and push gateway", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (the default when no subcommand is given).
    Serve {
        /// YAML config file (or SYNCGATE_CONFIG).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a client JWT signed with the configured secret.
    Token {
        /// User id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// Rooms the user may join, comma-separated (exact names or `prefix*`).
        #[arg(long, value_delimiter = ',')]
        rooms: Vec<String>,
        /// Lifetime, e.g. 1h, 30m, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// Bind the token to one device's client id.
        #[arg(long)]
        client: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate or print configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Check a config (file plus environment); reports the first bad key with its path.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the documented default config.
    Default,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    syncgate::config::duration::parse(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Serve { config } => serve(config),
        Command::Token { user, rooms, ttl, client, config } => token(config, &user, &rooms, ttl, client.as_deref()),
        Command::Config { action: ConfigAction::Default } => {
            print!("{}", Config::default_yaml());
            ExitCode::SUCCESS
        }
        Command::Config { action: ConfigAction::Check { config } } => match Config::load(config.as_deref()) {
            Ok(_) => {
                println!("config ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn load(config: Option<PathBuf>) -> Result<Config, ExitCode> {
    Config::load(config.as_deref()).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn token(config: Option<PathBuf>, user: &str, rooms: &[String], ttl: Duration, client: Option<&str>) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = effective_credentials(&cfg)
        .map_err(|e| e.to_string())
        .and_then(|(secret, keys, _)| Auth::new(&cfg.auth, &secret, &keys).map_err(|e| e.to_string()))
        .and_then(|auth| auth.mint(user, rooms, ttl, client).map_err(|e| e.to_string()));
    match result {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn init_logs(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level).unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => b.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => b.init(),
    }
}

fn serve(config: Option<PathBuf>) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logs(&cfg);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let server = match Server::build(cfg).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = server.local_addr();
        if let Some((dev, created)) = &server.dev {
            eprintln!("WARNING: development mode: no JWT secret or API key configured; using the ones in {}/dev-secrets.json", server.node.cfg.server.data_dir.display());
            if *created {
                eprintln!("  created development API key: {}", dev.api_key);
                if server.node.cfg.admin.keys.is_empty() {
                    eprintln!("  created development admin key (sign in at http://{addr}/admin): {}", dev.admin_key);
                }
                eprintln!("  (mint a client token with: syncgate token --user alice)");
            }
        }
        tracing::info!(listen = %addr, instance_id = %server.node.instance_id, epoch = %server.node.epoch(), "syncgate listening");
        eprintln!("syncgate listening on http://{addr} (WebSocket: ws://{addr}/ws)");
        match server.run(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error during shutdown: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
