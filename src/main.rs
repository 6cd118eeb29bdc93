//! The `herald` command line.

mod tools;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald::config::{Config, LogFormat, Sources};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Real-time messaging broker (Centrifugo protocol v2)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. With no flags: the embedded default config, on 127.0.0.1:8000.
    Serve {
        /// TOML config file (default: the embedded config/herald.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address, overriding http.listen.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Validate a config file; exits 1 naming every bad key.
    CheckConfig { file: PathBuf },
    /// Print an HS256 connection token, or a subscription token with --channel.
    Token {
        #[arg(long)]
        user: String,
        /// Make a subscription token for this channel.
        #[arg(long)]
        channel: Option<String>,
        /// Lifetime, e.g. 1h, 30m; 0 for a token that never expires.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Subscribe to a channel of a running node and print each publication's data.
    Sub {
        channel: String,
        /// WebSocket endpoint.
        #[arg(long, default_value = "ws://127.0.0.1:8000/connection/websocket")]
        url: String,
        /// User to connect as (the token is minted with the config's HMAC secret).
        #[arg(long, default_value = "herald-cli")]
        user: String,
        /// Exit after this many publications (0: never).
        #[arg(long, default_value_t = 0)]
        count: usize,
        /// Give up after this long.
        #[arg(long, default_value = "1h")]
        timeout: humantime::Duration,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Cluster operations against the running node a config describes.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Publish JSON data to a channel through a running node's server API.
    Publish {
        channel: String,
        /// JSON data, e.g. '{"text":"hi"}'.
        data: String,
        /// Base URL of the node's HTTP listener.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        api: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Print the node's members (name, address, state, incarnation), links and interest.
    /// Asks the node over its inter-node listener, authenticated with `cluster.secret`.
    Status {
        /// The node's config file (its [cluster] section says where to ask and the secret).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn env_vars() -> Vec<(String, String)> {
    std::env::vars().collect()
}

fn load(file: Option<&PathBuf>, listen: Option<SocketAddr>) -> anyhow::Result<Config> {
    Config::load(Sources {
        file: file.map(|p| p.as_path()),
        env: env_vars(),
        listen,
    })
    .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))
}

/// The HMAC secret tokens are minted with, from the config.
fn hmac_secret(file: Option<&PathBuf>) -> anyhow::Result<String> {
    load(file, None)?
        .client
        .token_hmac_secret
        .context("client.token_hmac_secret is not set in the config")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, listen } => {
            let config = load(config.as_ref(), listen)?;
            init_tracing(config.log.format);
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(serve(config))
        }
        Command::CheckConfig { file } => {
            let config = load(Some(&file), None)?;
            herald::auth::Verifier::from_config(&config.client)
                .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
            if let (Some(cert), Some(key)) = (&config.http.tls_cert, &config.http.tls_key) {
                herald::transport::tls::acceptor(cert, key)
                    .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
            }
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Token {
            user,
            channel,
            ttl,
            config,
        } => {
            let secret = hmac_secret(config.as_ref())?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let mut claims = serde_json::json!({ "sub": user, "iat": now });
            let ttl: Duration = ttl.into();
            if !ttl.is_zero() {
                claims["exp"] = (now + ttl.as_secs()).into();
            }
            if let Some(channel) = channel {
                claims["channel"] = channel.into();
            }
            println!("{}", herald::auth::token::mint_hs256(&secret, &claims));
            Ok(())
        }
        Command::Sub {
            channel,
            url,
            user,
            count,
            timeout,
            config,
        } => {
            let secret = hmac_secret(config.as_ref())?;
            let token = herald::auth::token::mint_hs256(&secret, &serde_json::json!({ "sub": user }));
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(tools::sub(&url, &token, &channel, count, timeout.into()))
        }
        Command::Cluster {
            command: ClusterCommand::Status { config, json },
        } => {
            let config = load(config.as_ref(), None)?;
            let cluster = config
                .cluster
                .context("the config has no [cluster] section: this node runs alone")?;
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let status = runtime
                .block_on(herald::cluster::status::query(&cluster))
                .map_err(|e| anyhow::anyhow!(e))?;
            if json {
                println!("{}", herald::cluster::status::to_json(&status));
            } else {
                print!("{}", herald::cluster::status::render(&status));
            }
            Ok(())
        }
        Command::Publish {
            channel,
            data,
            api,
            config,
        } => {
            let config = load(config.as_ref(), None)?;
            let key = config.api.key.context("api.key is not set in the config")?;
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(tools::publish(&api, &key, &channel, &data))
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signal.cancel();
    });
    herald::server::run(config, shutdown, |addr| {
        // A stable line for scripts and tests to wait on.
        println!("herald listening on {addr}");
    })
    .await?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // openraft narrates every election at info: its warnings are what operators need.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a log file or journald gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
