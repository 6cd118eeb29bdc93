//! `herald-loadgen`: load scenarios against Herald (Centrifugo protocol v2 over WebSocket, or
//! subscribers over HTTP-streaming) and, for comparison, NATS over WebSocket. Prints one JSON
//! object per run on stdout and a summary on stderr. `benches/compare` runs it against both
//! servers; `docs/benchmarks.md` shows results.
//!
//! Modules, from the scenario down to the wire:
//! - [`run`]: every scenario as a [`run::Workload`], driven through connect → publish → drain.
//! - [`target`]: the server under test behind one interface; [`herald`], [`nats`] and [`api`]
//!   (Herald's HTTP publish API, pipelined) speak the protocols; [`http_stream`] subscribes
//!   over Herald's HTTP-streaming fallback; [`ws`] opens connections.
//! - [`publisher`]: batches out, acknowledgements back.
//! - [`progress`], [`tally`]: what subscribers count (losses, duplicates, reordering, latency).
//! - [`payload`]: the sequence number and timestamp each message carries.
//! - [`report`], [`procfs`]: results, server RSS and CPU from `/proc`.
//!
//! `herald-loadgen proxy-backend` is no scenario but a server: the application backend of
//! Herald's connect proxy for benchmarks ([`proxy_backend`]; `scripts/bench-proxy.sh`).
#![forbid(unsafe_code)]

mod api;
mod herald;
mod http_stream;
mod nats;
mod payload;
mod procfs;
mod progress;
mod proxy_backend;
mod publisher;
mod report;
mod run;
mod tally;
mod target;
mod ws;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::herald::protocol::Format;
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::future::{FutureExt, LocalBoxFuture};

use crate::run::{Options, Workload};
use crate::target::{ApiAccess, PublishVia, Target};

#[derive(Parser, Debug)]
#[command(
    name = "herald-loadgen",
    about = "Load scenarios against Herald or NATS over WebSocket",
    after_help = "`herald-loadgen proxy-backend --listen ADDR` serves a connect-proxy backend instead \
                  (see `herald-loadgen proxy-backend --help`)."
)]
struct Cli {
    /// The server under test.
    #[arg(long, value_enum)]
    target: TargetKind,
    /// WebSocket URL: ws://127.0.0.1:8000/connection/websocket (Herald) or ws://127.0.0.1:8080 (NATS).
    #[arg(long)]
    url: String,
    /// Herald's HTTP base URL for --publish-via api, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    api: Option<String>,
    #[arg(long, default_value = "")]
    api_key: String,
    /// Pipelined HTTP connections the API publisher spreads batches over. More than one may
    /// reorder publications across connections.
    #[arg(long, default_value_t = 1)]
    api_connections: usize,
    /// Publishes per HTTP request: above 1, each request is one `/api/batch` call carrying up to
    /// this many publish commands (which Herald appends together: one group commit for all).
    #[arg(long, default_value_t = 1)]
    api_batch: usize,
    /// HMAC secret to mint the HS256 connection token with (Herald).
    #[arg(long)]
    token_secret: Option<String>,
    /// Herald: connect without a token, so that the node's connect proxy decides (or
    /// `client.allow_anonymous` lets the connection in without a user).
    #[arg(long, conflicts_with = "token_secret")]
    anonymous: bool,
    /// Herald's wire format.
    #[arg(long, value_enum, default_value = "json")]
    format: WireFormat,
    /// How Herald subscribers connect: WebSocket, or HTTP-streaming (`POST
    /// /connection/http_stream` to --url's host and port, pongs through `POST /emulation`; the
    /// node needs `[http_stream] enabled = true`). Publishers are not affected.
    #[arg(long, value_enum, default_value = "websocket")]
    subscriber_transport: SubscriberTransport,
    #[arg(long, value_enum, default_value = "api")]
    publish_via: PublishVia,
    /// Herald namespace (channels `NS:name`) or NATS subject prefix (`NS.name`).
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// The run stops by itself after this many seconds, whatever happens.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Seconds without a delivery after which the run stops waiting for the rest (counted lost).
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Server process to read RSS and CPU time of (/proc/PID).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Free text copied into the JSON result.
    #[arg(long)]
    label: Option<String>,
    /// Most messages in flight (published, not yet delivered to all their subscribers).
    #[arg(long, default_value_t = 256)]
    window: u64,
    /// Most messages per write (one WebSocket frame or one burst of HTTP requests).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Most unacknowledged publishes per publisher connection (Herald API and socket).
    #[arg(long, default_value_t = 512)]
    inflight: usize,
    /// WebSocket handshakes in progress at once.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Connections per loopback source address before moving on to 127.0.0.2, 127.0.0.3, …
    #[arg(long, default_value_t = 25_000)]
    connections_per_source_address: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    Herald,
    Nats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WireFormat {
    Json,
    Protobuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SubscriberTransport {
    Websocket,
    #[value(name = "http_stream", alias = "http-stream")]
    HttpStream,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// S subscribers on one channel, one publisher, M messages of B bytes: deliveries/s.
    Fanout {
        #[arg(long)]
        subscribers: usize,
        #[arg(long)]
        messages: u64,
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Messages per second (default: as fast as the delivery window allows).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// N channels with one subscriber each, messages published round-robin.
    Channels {
        #[arg(long)]
        channels: usize,
        #[arg(long)]
        messages: u64,
        #[arg(long, default_value_t = 128)]
        size: usize,
        #[arg(long)]
        rate: Option<f64>,
    },
    /// A fixed publish rate to S subscribers of one channel: latency percentiles.
    Latency {
        /// Messages per second.
        #[arg(long)]
        rate: f64,
        /// Seconds of publishing.
        #[arg(long)]
        duration: f64,
        #[arg(long)]
        subscribers: usize,
        #[arg(long, default_value_t = 128)]
        size: usize,
    },
    /// C connections each subscribed to its own channel: server RSS per connection; then one
    /// message per channel to check they all still deliver.
    Idle {
        #[arg(long)]
        connections: usize,
        /// Seconds to hold the connections before publishing (RSS is read after --settle).
        #[arg(long, default_value_t = 5.0)]
        hold: f64,
    },
}

impl Scenario {
    fn workload(&self, window: u64) -> Workload {
        let base = Workload {
            scenario: "",
            channel_prefix: "",
            channels: 1,
            subscribers_per_channel: 1,
            messages: 0,
            size: 128,
            rate: None,
            window: Some(window),
            latency: false,
            hold: None,
        };
        match *self {
            Self::Fanout {
                subscribers,
                messages,
                size,
                rate,
            } => Workload {
                scenario: "fanout",
                channel_prefix: "fanout",
                subscribers_per_channel: subscribers,
                messages,
                size,
                rate,
                ..base
            },
            Self::Channels {
                channels,
                messages,
                size,
                rate,
            } => Workload {
                scenario: "channels",
                channel_prefix: "c",
                channels,
                messages,
                size,
                rate,
                ..base
            },
            Self::Latency {
                rate,
                duration,
                subscribers,
                size,
            } => Workload {
                scenario: "latency",
                channel_prefix: "latency",
                subscribers_per_channel: subscribers,
                messages: (rate * duration).round() as u64,
                size,
                rate: Some(rate),
                // Open loop: the schedule, not the server, sets the pace.
                window: None,
                latency: true,
                ..base
            },
            Self::Idle { connections, hold } => Workload {
                scenario: "idle",
                channel_prefix: "idle",
                channels: connections,
                messages: connections as u64,
                size: 64,
                hold: Some(Duration::from_secs_f64(hold)),
                ..base
            },
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The backend takes none of a run's options, so it is parsed apart rather than as a scenario
    // under the run's required `--target` and `--url`.
    let job: LocalBoxFuture<'static, anyhow::Result<()>> = if args.get(1).is_some_and(|a| a == "proxy-backend") {
        proxy_backend::serve(proxy_backend::Args::parse_from(&args[1..])).boxed_local()
    } else {
        run(Cli::parse_from(&args)).boxed_local()
    };
    // The load generator is pinned to its own core(s) by the compare script: one worker per core
    // it may run on.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(job) {
        Ok(()) => {
            // Tens of thousands of sockets close with the process; no need to wait for each task.
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("herald-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let workload = cli.scenario.workload(cli.window);
    if let Some(limit) = procfs::open_files_limit() {
        let needed = workload.subscribers() as u64 + 64;
        if needed > limit {
            eprintln!("warning: {needed} file descriptors needed, the limit is {limit} (raise it with `ulimit -n`)");
        }
    }
    let format = match cli.format {
        WireFormat::Json => Format::Json,
        WireFormat::Protobuf => Format::Protobuf,
    };
    let target = match cli.target {
        TargetKind::Herald => {
            let token = if cli.anonymous {
                String::new()
            } else {
                let secret = cli
                    .token_secret
                    .as_deref()
                    .context("--target herald needs --token-secret to mint a connection token (or --anonymous)")?;
                let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 24 * 3600;
                ::herald::auth::token::mint_hs256(secret, &serde_json::json!({"sub": "loadgen", "exp": exp}))
            };
            let streams = match cli.subscriber_transport {
                SubscriberTransport::Websocket => None,
                SubscriberTransport::HttpStream => {
                    Some(http_stream::Client::new(&cli.url, token.clone(), format).await?)
                }
            };
            Target::Herald {
                client: herald::Client::new(&cli.url, token, format).await?,
                streams,
                namespace: cli.namespace.clone(),
                via: cli.publish_via,
                api: cli.api.clone().map(|url| ApiAccess {
                    url,
                    key: cli.api_key.clone(),
                    connections: cli.api_connections,
                    per_request: cli.api_batch.max(1),
                }),
            }
        }
        TargetKind::Nats if cli.subscriber_transport != SubscriberTransport::Websocket => {
            anyhow::bail!("--subscriber-transport http_stream is for --target herald")
        }
        TargetKind::Nats => Target::Nats {
            client: nats::Client::new(&cli.url).await?,
            namespace: cli.namespace.clone(),
        },
    };
    let options = Options {
        timeout: Duration::from_secs_f64(cli.timeout),
        settle: Duration::from_secs_f64(cli.settle),
        server_pid: cli.server_pid,
        batch: cli.batch.max(1),
        inflight: cli.inflight.max(cli.batch.max(1)),
        connect_concurrency: cli.connect_concurrency,
        connections_per_source_address: cli.connections_per_source_address,
    };
    // `run` bounds every wait by the timeout; this is the backstop should one be missed.
    let backstop = options.timeout + Duration::from_secs(30);
    let mut report = tokio::time::timeout(backstop, run::run(Arc::new(target), &workload, &options))
        .await
        .context("the run overran its timeout")?;
    report.label = cli.label;
    report.namespace = cli.namespace;
    match cli.target {
        TargetKind::Herald => {
            report.target = "herald".into();
            report.format = format!("{:?}", cli.format).to_lowercase();
            report.publish_via = format!("{:?}", cli.publish_via).to_lowercase();
            report.subscriber_transport = match cli.subscriber_transport {
                SubscriberTransport::Websocket => "websocket",
                SubscriberTransport::HttpStream => "http_stream",
            }
            .into();
        }
        TargetKind::Nats => {
            report.target = "nats".into();
            report.format = "nats".into();
            report.publish_via = "socket".into();
            report.subscriber_transport = "websocket".into();
        }
    }
    println!("{}", serde_json::to_string(&report)?);
    eprint!("{}", report.summary());
    if !report.is_clean() {
        eprintln!("  (not clean: see lost/duplicates/reordered/errors above)");
    }
    Ok(())
}
