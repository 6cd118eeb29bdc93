//! Configuration: one typed model, loaded from a TOML file (or the embedded default), then
//! `HERALD_<SECTION>_<KEY>` environment variables, then command-line flags.
//!
//! Unknown keys are errors. Every problem is collected and reported with the key it concerns, so
//! `herald check-config` shows them all at once. Each subsystem receives its own section.

mod env;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The default configuration, embedded in the binary: `herald serve` with no flags runs on it.
/// Its secrets are for development only and say so.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/herald.toml");

/// Secrets in the embedded default config; serving with them logs a warning.
pub const DEV_SECRETS: &[&str] = &[
    "herald-dev-secret-DO-NOT-USE-IN-PRODUCTION",
    "herald-dev-api-key-DO-NOT-USE-IN-PRODUCTION",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Config {
    pub http: HttpConfig,
    pub client: ClientConfig,
    /// `[http_stream]`: the HTTP-streaming fallback (`POST /connection/http_stream`).
    pub http_stream: StreamTransportConfig,
    /// `[sse]`: the Server-Sent Events fallback (`GET|POST /connection/sse`).
    pub sse: StreamTransportConfig,
    /// `[uni_websocket]`: unidirectional WebSocket (`/connection/uni_websocket`).
    pub uni_websocket: UniWebSocketConfig,
    /// `[uni_http_stream]`: unidirectional HTTP-streaming (`POST /connection/uni_http_stream`).
    pub uni_http_stream: StreamTransportConfig,
    /// `[uni_sse]`: unidirectional SSE (`GET|POST /connection/uni_sse`).
    pub uni_sse: StreamTransportConfig,
    /// `[demo]`: the demo page at `/demo` (development only).
    pub demo: DemoConfig,
    pub api: ApiConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    pub channels: ChannelsConfig,
    /// `[rpc]`: client and API `rpc` calls, answered by the application backend through the RPC
    /// proxy (see docs/proxies.md).
    pub rpc: RpcConfig,
    /// Clustering; `None` (no `[cluster]` section): a single node, and nothing of the cluster runs.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: how this node finds the others and how they replicate (issue 10).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster (at most 255 bytes). Default: the host name.
    pub node_name: String,
    /// The inter-node listener (membership and links). Outgoing inter-node sockets bind to its
    /// address, so that per-address firewall rules match.
    pub bind: SocketAddr,
    /// The address other nodes reach this one at, when not `bind` (NAT, containers).
    pub advertise: Option<SocketAddr>,
    /// Inter-node addresses (`host:port`) of nodes to join through; empty: this node starts a
    /// cluster (or waits to be joined).
    pub seeds: Vec<String>,
    /// Shared secret keying every inter-node message's HMAC; at least 16 characters. Nodes with
    /// another secret cannot join, and nothing they send is acted upon.
    pub secret: Option<String>,
    /// Raft voters that sequence channels with history (R); a publish is acknowledged once a
    /// majority of them has it. Nodes beyond R are edge nodes.
    pub replicas: usize,
    /// SWIM: how often a member is probed, and how long a probe may take.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// SWIM: how long a suspected member has to refute before it is declared dead.
    #[serde(with = "humantime_serde")]
    pub suspect_timeout: Duration,
    /// Raft: leader heartbeats, and the shortest election timeout (the longest is 1.5 times it).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub election_timeout: Duration,
    /// How long a publish forwarded to the leader may wait (through an election); then error 100.
    #[serde(with = "humantime_serde")]
    pub forward_timeout: Duration,
    /// A voter declared dead for this long is replaced by a live edge node.
    #[serde(with = "humantime_serde")]
    pub replace_dead_voter_after: Duration,
    /// A node without seeds whose store was never in a group waits this long for a member
    /// already in one (it then waits to be added) before it starts a new group.
    #[serde(with = "humantime_serde")]
    pub bootstrap_wait: Duration,
    /// Inter-node messages are accepted within this much clock difference, and never twice.
    #[serde(with = "humantime_serde")]
    pub replay_window: Duration,
    /// The replicated log is compacted into a snapshot of the streams every this many entries;
    /// a fifth of them is kept after it, for followers slightly behind. A node further behind
    /// catches up from the snapshot.
    pub snapshot_entries: u64,
    /// A snapshot travels to a follower in pieces of this many bytes, each acknowledged before
    /// the next.
    pub snapshot_chunk_size: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_name: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
            bind: SocketAddr::from(([127, 0, 0, 1], 7946)),
            advertise: None,
            seeds: Vec::new(),
            secret: None,
            replicas: 3,
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(200),
            suspect_timeout: Duration::from_secs(3),
            heartbeat_interval: Duration::from_millis(150),
            election_timeout: Duration::from_millis(600),
            forward_timeout: Duration::from_secs(5),
            replace_dead_voter_after: Duration::from_secs(60),
            bootstrap_wait: Duration::from_secs(3),
            replay_window: Duration::from_secs(30),
            snapshot_entries: 50_000,
            snapshot_chunk_size: 1 << 20,
        }
    }
}

impl ClusterConfig {
    fn validate(&self, problems: &mut Vec<String>) {
        if self.node_name.is_empty() || self.node_name.len() > 255 {
            problems.push("key `cluster.node_name`: must be 1 to 255 bytes (default: the host name)".to_owned());
        }
        match self.secret.as_deref() {
            None => problems.push(
                "key `cluster.secret`: required with [cluster]: every inter-node message is authenticated with it"
                    .to_owned(),
            ),
            Some(secret) if secret.chars().count() < 16 => {
                problems.push("key `cluster.secret`: must be at least 16 characters".to_owned())
            }
            Some(_) => {}
        }
        for seed in &self.seeds {
            let valid = seed
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !valid {
                problems.push(format!("key `cluster.seeds`: `{seed}` is not host:port"));
            }
        }
        if self.snapshot_entries < 10 {
            problems.push("key `cluster.snapshot_entries`: must be at least 10".to_owned());
        }
        if !(1024..=16 << 20).contains(&self.snapshot_chunk_size) {
            problems.push("key `cluster.snapshot_chunk_size`: must be 1024 to 16777216 bytes".to_owned());
        }
        if self.replicas == 0 {
            problems.push("key `cluster.replicas`: must be at least 1".to_owned());
        }
        for (key, value) in [
            ("probe_interval", self.probe_interval),
            ("probe_timeout", self.probe_timeout),
            ("suspect_timeout", self.suspect_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("election_timeout", self.election_timeout),
            ("forward_timeout", self.forward_timeout),
            ("replace_dead_voter_after", self.replace_dead_voter_after),
            ("bootstrap_wait", self.bootstrap_wait),
            ("replay_window", self.replay_window),
        ] {
            if value.is_zero() {
                problems.push(format!("key `cluster.{key}`: must be greater than zero"));
            }
        }
        if self.probe_timeout >= self.probe_interval {
            problems.push("key `cluster.probe_timeout`: must be shorter than cluster.probe_interval".to_owned());
        }
        if self.heartbeat_interval * 2 > self.election_timeout {
            problems
                .push("key `cluster.election_timeout`: must be at least twice cluster.heartbeat_interval".to_owned());
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the one listener that serves WebSocket, the API, /health and /metrics.
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, the listener serves `https://` and `wss://`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Time a client has to send a request's headers, counted from the connection's accept (or
    /// from the first byte of a later request on a kept-alive connection), and to finish a TLS
    /// handshake. Past it the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a kept-alive HTTP connection may stay idle between requests.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time a client has to send a whole request body (API calls); past it the answer is 408.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Most connections that are not WebSockets (yet) held at once: handshakes, API calls and
    /// idle keep-alive connections. Beyond it new connections are closed at accept. Lowered at
    /// startup to half the process's open-file limit.
    pub max_pending_connections: usize,
    /// The same, per client address, so one host cannot hold them all. Lowered at startup to a
    /// quarter of the effective max_pending_connections.
    pub max_pending_connections_per_ip: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            tls_cert: None,
            tls_key: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            max_pending_connections: 4096,
            max_pending_connections_per_ip: 256,
        }
    }
}

/// `[http_stream]` and `[sse]`: the fallbacks the SDKs use where WebSocket is blocked. The
/// client's later commands arrive through `POST /emulation`, which is served while either is on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamTransportConfig {
    /// Off by default, as in the reference server.
    pub enabled: bool,
    /// Largest request body (the connect command, or one `/emulation` request) in bytes; a
    /// larger one is answered 413.
    pub max_request_body_size: usize,
}

impl Default for StreamTransportConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_request_body_size: 65536,
        }
    }
}

/// `[demo]`: the demo page, `GET /demo`. Development only: it hands out connection tokens for
/// any user (signed with `client.token_hmac_secret`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    pub enabled: bool,
    /// The npm `centrifuge` browser bundle the page runs (`dist/centrifuge.js` of the package).
    pub centrifuge_js: PathBuf,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            centrifuge_js: PathBuf::from("demo/node_modules/centrifuge/dist/centrifuge.js"),
        }
    }
}

/// `[uni_websocket]`: a WebSocket whose client sends one connect request and then only
/// receives. Its message size limit is `client.max_message_size`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UniWebSocketConfig {
    /// Off by default, as in the reference server.
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// HMAC secret for HS256/384/512 connection and subscription tokens.
    pub token_hmac_secret: Option<String>,
    /// PEM file with an RSA public key for RS256/384/512 tokens.
    pub token_rsa_public_key: Option<PathBuf>,
    /// PEM file with an ECDSA public key for ES256/384 tokens.
    pub token_ecdsa_public_key: Option<PathBuf>,
    /// Development only: connect without a token, subscribe, publish, presence and history on any channel.
    pub insecure: bool,
    /// Connect without a token as the anonymous user "".
    pub allow_anonymous: bool,
    /// Glob patterns (`*` wildcard) of accepted `Origin` headers; requests without Origin are accepted.
    pub allowed_origins: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// A client that has not sent `connect` by then is closed with 3502.
    #[serde(with = "humantime_serde")]
    pub stale_close_delay: Duration,
    /// Grace after a connection token's expiry before the connection is closed with 3005.
    #[serde(with = "humantime_serde")]
    pub expired_close_delay: Duration,
    /// On shutdown, clients are closed with 3001 at random moments within this window, so they do
    /// not all reconnect at once.
    #[serde(with = "humantime_serde")]
    pub shutdown_spread: Duration,
    /// Largest inbound WebSocket message in bytes; a larger one closes the connection with 1009.
    pub max_message_size: usize,
    /// Bytes a connection may have queued for sending; beyond it the client is slow (3008).
    /// One reply (a history page, a recovery, presence) may take at most half of it.
    pub max_queue_bytes: usize,
    /// A client whose socket takes no byte for this long while the server has data for it is
    /// slow too (3008): one that stops reading cannot hold its queue forever.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Subscribe every authenticated user to `#<user>` server-side.
    pub subscribe_to_personal_channel: bool,
    /// Most publications a `history` command returns.
    pub history_max_publication_limit: usize,
    /// Most publications a recovery may return; a bigger gap answers `recovered: false`.
    pub recovery_max_publication_limit: usize,
    /// Most channels one connection may be subscribed to: a client subscribe beyond it is error
    /// 106, server-side subscriptions beyond it close the connection with 3505.
    pub channel_limit: usize,
    /// Most connections of one (non-anonymous) user; another is closed with 3504. 0: no limit.
    pub user_connection_limit: usize,
    /// Most client connections the node holds; beyond it the WebSocket handshake gets 503.
    pub max_connections: usize,
    /// Commands per second one connection may send (0: no limit), with bursts up to
    /// `command_burst`. A command over the limit is answered with error 111; a client that goes on
    /// sending a burst's worth of rejected commands is closed with 3013.
    pub command_rate_limit: u32,
    pub command_burst: u32,
    /// New connections per second the listener accepts (0: no limit), with bursts up to
    /// `connection_burst`; excess connections are closed at once. Protects against reconnect storms.
    pub connection_rate_limit: u32,
    pub connection_burst: u32,
    /// `[client.proxy.connect]` and `[client.proxy.refresh]`: the application backend
    /// authenticates connections (docs/proxies.md).
    pub proxy: ClientProxies,
}

/// `[client.proxy]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientProxies {
    /// A connect without a token is decided by the backend.
    pub connect: ProxyConfig,
    /// Every expiring connection (from the connect proxy or a token) is refreshed by the
    /// backend instead of the client.
    pub refresh: ProxyConfig,
}

/// `[channels.proxy]`: the endpoints the namespaces' `*_proxy_enabled` options use.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelProxies {
    pub subscribe: ProxyConfig,
    pub publish: ProxyConfig,
    pub sub_refresh: ProxyConfig,
}

/// One proxy: where the backend is and how long it may take.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub enabled: bool,
    /// `http://` or `https://` URL the calls are POSTed to.
    pub endpoint: String,
    /// The whole call, waiting for a slot (`max_concurrency`) included; past it the client's
    /// command gets error 100.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Headers of the client's handshake request forwarded on every call (case-insensitive).
    pub http_headers: Vec<String>,
    /// Static headers added to every call.
    pub headers: BTreeMap<String, String>,
    /// Calls in flight at once; more wait for a slot, within `timeout`.
    pub max_concurrency: usize,
    /// Send payloads base64-encoded (`b64data`) always, for backends of binary (Protobuf)
    /// clients; by default they go as JSON (`data`) when they are JSON.
    pub binary_encoding: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: String::new(),
            timeout: Duration::from_secs(1),
            http_headers: Vec::new(),
            headers: BTreeMap::new(),
            max_concurrency: 256,
            binary_encoding: false,
        }
    }
}

impl ProxyConfig {
    fn validate(&self, key: &str, problems: &mut Vec<String>) {
        if !self.enabled {
            return;
        }
        let uri = self.endpoint.parse::<hyper::Uri>();
        let valid = uri
            .as_ref()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !valid {
            problems.push(format!(
                "key `{key}.endpoint`: an enabled proxy needs an http:// or https:// URL (got {:?})",
                self.endpoint
            ));
        }
        if self.timeout.is_zero() {
            problems.push(format!("key `{key}.timeout`: must be greater than zero"));
        }
        if self.max_concurrency == 0 {
            problems.push(format!("key `{key}.max_concurrency`: must be greater than zero"));
        }
        for name in &self.http_headers {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push(format!("key `{key}.http_headers`: {name:?} is not a header name"));
            }
        }
        for (name, value) in &self.headers {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || hyper::header::HeaderValue::from_str(value).is_err()
            {
                problems.push(format!("key `{key}.headers`: {name:?} is not a valid header"));
            }
        }
    }
}

/// `[rpc]`: which RPC methods the backend answers. A method `ns:name` belongs to the RPC
/// namespace `ns`; one without `:` to `without_namespace`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpcConfig {
    /// The backend endpoint of the namespaces that set `proxy_enabled`.
    pub proxy: ProxyConfig,
    pub without_namespace: RpcNamespace,
    pub namespaces: BTreeMap<String, RpcNamespace>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpcNamespace {
    /// Methods of this namespace go to `[rpc.proxy]`; without it they answer 108.
    pub proxy_enabled: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            token_hmac_secret: None,
            token_rsa_public_key: None,
            token_ecdsa_public_key: None,
            insecure: false,
            allow_anonymous: false,
            allowed_origins: Vec::new(),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            stale_close_delay: Duration::from_secs(10),
            expired_close_delay: Duration::from_secs(25),
            shutdown_spread: Duration::from_secs(1),
            max_message_size: 65536,
            max_queue_bytes: 4 << 20,
            write_timeout: Duration::from_secs(30),
            subscribe_to_personal_channel: false,
            history_max_publication_limit: 300,
            recovery_max_publication_limit: 300,
            channel_limit: 128,
            user_connection_limit: 0,
            max_connections: 100_000,
            command_rate_limit: 0,
            command_burst: 100,
            connection_rate_limit: 0,
            connection_burst: 1000,
            proxy: ClientProxies::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Key required in `X-API-Key` (or `Authorization: apikey <key>`). Without one every call is 401.
    pub key: Option<String>,
    /// Largest request body in bytes; a larger one is answered 413.
    pub max_body_size: usize,
    /// Most commands in one `batch`; a longer batch is answered 400 and runs nothing.
    pub max_batch_commands: usize,
    /// Most bytes of replies one `batch` may build; once over, its remaining commands are not
    /// run and answer error 106.
    pub max_batch_reply_size: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            key: None,
            max_body_size: 1 << 20,
            max_batch_commands: 10_000,
            max_batch_reply_size: 16 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory of the sled database holding the streams.
    pub path: PathBuf,
    /// When a publish is acknowledged: after its batch is flushed to disk, or after the in-memory
    /// append (then flushed every `flush_interval`).
    pub durability: Durability,
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// How long a publish's idempotency key is remembered (and its first result returned).
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// How often retention runs: trimming history by size and age, forgetting idle streams,
    /// expiring idempotency keys.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("herald-data"),
            durability: Durability::Flush,
            flush_interval: Duration::from_millis(100),
            idempotency_window: Duration::from_secs(300),
            retention_interval: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A publish is acknowledged once the batch holding it is on disk.
    #[default]
    Flush,
    /// A publish is acknowledged after the in-memory append; a crash may lose the last interval.
    Os,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`. The level comes from `RUST_LOG` (default `info`).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    /// `[channels.proxy.subscribe|publish|sub_refresh]`: the backend endpoints of the
    /// namespaces that enable them.
    pub proxy: ChannelProxies,
    /// Options of channels without a namespace (no `:` in the name).
    pub default: ChannelOptions,
    /// Options per namespace: channel `chat:room` belongs to namespace `chat`.
    pub namespaces: BTreeMap<String, ChannelOptions>,
}

/// What clients may do in one namespace. Everything is off unless enabled.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelOptions {
    pub presence: bool,
    pub join_leave: bool,
    pub force_push_join_leave: bool,
    /// Publications kept per channel; with `history_ttl`, enables history and recovery.
    pub history_size: usize,
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// How long an idle stream's position (epoch, offset) outlives its publications; after it the
    /// stream is forgotten and a later publish starts a new epoch.
    #[serde(with = "humantime_serde")]
    pub history_meta_ttl: Duration,
    /// Every subscription is positioned and recoverable.
    pub force_recovery: bool,
    pub allow_subscribe_for_client: bool,
    pub allow_subscribe_for_anonymous: bool,
    pub allow_publish_for_client: bool,
    /// The publish grants above cover the anonymous user too.
    pub allow_publish_for_anonymous: bool,
    pub allow_publish_for_subscriber: bool,
    pub allow_presence_for_client: bool,
    pub allow_presence_for_subscriber: bool,
    /// The presence grants above cover the anonymous user too.
    pub allow_presence_for_anonymous: bool,
    pub allow_history_for_client: bool,
    pub allow_history_for_subscriber: bool,
    /// The history grants above cover the anonymous user too.
    pub allow_history_for_anonymous: bool,
    /// Channels like `dialog#42,43` are open to the listed users only.
    pub allow_user_limited_channels: bool,
    /// Subscribers may send a tags filter (`tf`): they then receive only the publications whose
    /// tags match it.
    pub allow_tags_filter: bool,
    /// Delta compressions a subscriber may negotiate (`delta` on subscribe): `["fossil"]` or
    /// none. Needs history and positioned subscriptions (`force_recovery`).
    pub allowed_delta_types: Vec<String>,
    /// Every publication of the namespace may go out as a delta, as if published with
    /// `delta: true`.
    pub delta_publish: bool,
    /// What a recovering subscribe gets: `stream` (every missed publication) or `cache` (only
    /// the latest one: the channel as a key-value store). Also accepted as `recovery_mode`.
    #[serde(alias = "recovery_mode")]
    pub force_recovery_mode: RecoveryMode,
    /// In `cache` mode, every subscribe gets the latest publication, not only recovering ones.
    pub auto_cache_recover: bool,
    /// Client subscriptions without a token are decided by `[channels.proxy.subscribe]`.
    pub subscribe_proxy_enabled: bool,
    /// Client publications are decided (and may be rewritten) by `[channels.proxy.publish]`.
    pub publish_proxy_enabled: bool,
    /// Subscriptions the subscribe proxy gave an `expire_at` are refreshed by
    /// `[channels.proxy.sub_refresh]` instead of the client.
    pub sub_refresh_proxy_enabled: bool,
}

/// How a namespace recovers (`force_recovery_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecoveryMode {
    /// Every publication after the client's position.
    #[default]
    Stream,
    /// The latest publication only.
    Cache,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            presence: false,
            join_leave: false,
            force_push_join_leave: false,
            history_size: 0,
            history_ttl: Duration::ZERO,
            history_meta_ttl: Duration::from_secs(30 * 24 * 3600),
            force_recovery: false,
            allow_subscribe_for_client: false,
            allow_subscribe_for_anonymous: false,
            allow_publish_for_client: false,
            allow_publish_for_anonymous: false,
            allow_publish_for_subscriber: false,
            allow_presence_for_client: false,
            allow_presence_for_subscriber: false,
            allow_presence_for_anonymous: false,
            allow_history_for_client: false,
            allow_history_for_subscriber: false,
            allow_history_for_anonymous: false,
            allow_user_limited_channels: false,
            allow_tags_filter: false,
            allowed_delta_types: Vec::new(),
            delta_publish: false,
            force_recovery_mode: RecoveryMode::Stream,
            auto_cache_recover: false,
            subscribe_proxy_enabled: false,
            publish_proxy_enabled: false,
            sub_refresh_proxy_enabled: false,
        }
    }
}

/// Room for a reply's own fields around its largest publication.
const REPLY_MARGIN: usize = 1024;

impl ClientConfig {
    /// Most bytes one reply (history page, recovery, presence) may take: half the queue, so a
    /// reply never closes its client as slow by itself.
    pub fn reply_budget(&self) -> usize {
        self.max_queue_bytes / 2
    }
}

impl ChannelOptions {
    pub fn history_enabled(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }
}

/// Every problem found while loading, each naming its key.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }
}

/// Where the configuration comes from.
pub struct Sources<'a> {
    /// A TOML file, or `None` for the embedded default.
    pub file: Option<&'a Path>,
    /// Environment variables; only `HERALD_…` ones are read.
    pub env: Vec<(String, String)>,
    /// `--listen` flag.
    pub listen: Option<SocketAddr>,
}

impl Config {
    /// Loads and validates the configuration from its sources, later ones overriding earlier ones.
    pub fn load(sources: Sources<'_>) -> Result<Self, ConfigError> {
        let (text, origin) = match sources.file {
            Some(path) => (
                std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::one(format!("{}: cannot read: {e}", path.display())))?,
                path.display().to_string(),
            ),
            None => (DEFAULT_CONFIG.to_owned(), "embedded default config".to_owned()),
        };
        Self::from_text(&text, &origin, &sources.env, sources.listen)
    }

    /// Parses and validates configuration text, `origin` naming it in errors, with environment
    /// overrides and the `--listen` flag applied. Touches no file except to check that the key
    /// and certificate files it names exist: the config fuzz target calls it once per input.
    pub fn from_text(
        text: &str,
        origin: &str,
        env: &[(String, String)],
        listen: Option<SocketAddr>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::one(format!("{origin}: {e}")))?;
        let from_env = env::apply(&mut table, env)?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let inner = inner.trim();
            // Name the environment variable when it set (or misspelt) the key in question.
            let culprit = from_env.iter().find(|(key, _)| {
                let (parent, leaf) = key.rsplit_once('.').unwrap_or(("", key));
                *key == path || (parent == path && inner.contains(&format!("`{leaf}`")))
            });
            let origin = match culprit {
                Some((_, var)) => format!("environment variable {var}"),
                None => origin.to_owned(),
            };
            if path == "." {
                ConfigError::one(format!("{origin}: {inner}"))
            } else {
                ConfigError::one(format!("{origin}: key `{path}`: {inner}"))
            }
        })?;
        if let Some(listen) = listen {
            config.http.listen = listen;
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML string with no environment, for tests and tools.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_text(text, "config text", &[], None)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let c = &self.client;
        if !c.pong_timeout.is_zero() && c.ping_interval <= c.pong_timeout {
            problems.push("key `client.ping_interval`: must be longer than client.pong_timeout".to_owned());
        }
        if c.ping_interval.is_zero() {
            problems.push("key `client.ping_interval`: must be greater than zero".to_owned());
        }
        if c.max_message_size == 0 {
            problems.push("key `client.max_message_size`: must be greater than zero".to_owned());
        }
        if c.write_timeout.is_zero() {
            problems.push("key `client.write_timeout`: must be greater than zero".to_owned());
        }
        // One reply holding the largest publication a client or the API may send must fit the
        // reply budget (half the queue), or a subscriber could never recover or page past it.
        let largest = c.max_message_size.max(self.api.max_body_size);
        let needed = 2 * (largest + REPLY_MARGIN);
        if c.max_queue_bytes < needed {
            problems.push(format!(
                "key `client.max_queue_bytes`: must be at least {needed}: twice the largest publication \
                 (max of client.max_message_size and api.max_body_size, {largest}) plus {REPLY_MARGIN}, so \
                 that a reply holding it fits the reply budget (half the queue)"
            ));
        }
        if c.token_hmac_secret.as_deref() == Some("") {
            problems.push("key `client.token_hmac_secret`: must not be empty (remove it instead)".to_owned());
        }
        for (key, path) in [
            ("client.token_rsa_public_key", &c.token_rsa_public_key),
            ("client.token_ecdsa_public_key", &c.token_ecdsa_public_key),
            ("http.tls_cert", &self.http.tls_cert),
            ("http.tls_key", &self.http.tls_key),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    problems.push(format!("key `{key}`: file {} does not exist", path.display()));
                }
            }
        }
        let h = &self.http;
        for (key, value) in [
            ("http.header_read_timeout", h.header_read_timeout),
            ("http.idle_timeout", h.idle_timeout),
            ("http.body_read_timeout", h.body_read_timeout),
        ] {
            if value.is_zero() {
                problems.push(format!("key `{key}`: must be greater than zero"));
            }
        }
        if h.max_pending_connections == 0 {
            problems.push("key `http.max_pending_connections`: must be greater than zero".to_owned());
        }
        if h.max_pending_connections_per_ip == 0 || h.max_pending_connections_per_ip > h.max_pending_connections {
            problems.push(
                "key `http.max_pending_connections_per_ip`: must be between 1 and http.max_pending_connections"
                    .to_owned(),
            );
        }
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            problems.push("key `http.tls_cert`: http.tls_cert and http.tls_key must be set together".to_owned());
        }
        for (key, transport) in [
            ("http_stream", &self.http_stream),
            ("sse", &self.sse),
            ("uni_http_stream", &self.uni_http_stream),
            ("uni_sse", &self.uni_sse),
        ] {
            if transport.max_request_body_size == 0 {
                problems.push(format!("key `{key}.max_request_body_size`: must be greater than zero"));
            }
        }
        if self.api.max_batch_commands == 0 {
            problems.push("key `api.max_batch_commands`: must be greater than zero".to_owned());
        }
        if self.api.max_batch_reply_size == 0 {
            problems.push("key `api.max_batch_reply_size`: must be greater than zero".to_owned());
        }
        if self.api.key.as_deref() == Some("") {
            problems.push("key `api.key`: must not be empty (remove it to disable the API)".to_owned());
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate(&mut problems);
        }
        self.validate_proxies(&mut problems);
        check_options("channels.default", &self.channels.default, &mut problems);
        for (name, options) in &self.channels.namespaces {
            let valid = name.len() >= 2
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
            if !valid {
                problems.push(format!(
                    "key `channels.namespaces.{name}`: namespace names are 2 or more of [-a-zA-Z0-9_]"
                ));
            }
            check_options(&format!("channels.namespaces.{name}"), options, &mut problems);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    fn validate_proxies(&self, problems: &mut Vec<String>) {
        let (client, channels) = (&self.client.proxy, &self.channels.proxy);
        for (key, proxy) in [
            ("client.proxy.connect", &client.connect),
            ("client.proxy.refresh", &client.refresh),
            ("channels.proxy.subscribe", &channels.subscribe),
            ("channels.proxy.publish", &channels.publish),
            ("channels.proxy.sub_refresh", &channels.sub_refresh),
            ("rpc.proxy", &self.rpc.proxy),
        ] {
            proxy.validate(key, problems);
        }
        let namespaces = std::iter::once(("channels.default".to_owned(), &self.channels.default)).chain(
            self.channels
                .namespaces
                .iter()
                .map(|(name, options)| (format!("channels.namespaces.{name}"), options)),
        );
        for (key, options) in namespaces {
            for (option, on, proxy, section) in [
                (
                    "subscribe_proxy_enabled",
                    options.subscribe_proxy_enabled,
                    &channels.subscribe,
                    "subscribe",
                ),
                (
                    "publish_proxy_enabled",
                    options.publish_proxy_enabled,
                    &channels.publish,
                    "publish",
                ),
                (
                    "sub_refresh_proxy_enabled",
                    options.sub_refresh_proxy_enabled,
                    &channels.sub_refresh,
                    "sub_refresh",
                ),
            ] {
                if on && !proxy.enabled {
                    problems.push(format!(
                        "key `{key}.{option}`: needs [channels.proxy.{section}] with enabled = true and an endpoint"
                    ));
                }
            }
        }
        let rpc = std::iter::once(("rpc.without_namespace".to_owned(), &self.rpc.without_namespace)).chain(
            self.rpc
                .namespaces
                .iter()
                .map(|(name, ns)| (format!("rpc.namespaces.{name}"), ns)),
        );
        for (key, namespace) in rpc {
            if namespace.proxy_enabled && !self.rpc.proxy.enabled {
                problems.push(format!(
                    "key `{key}.proxy_enabled`: needs [rpc.proxy] with enabled = true and an endpoint"
                ));
            }
        }
        for name in self.rpc.namespaces.keys() {
            if name.is_empty() || name.contains(':') {
                problems.push(format!(
                    "key `rpc.namespaces.{name}`: an RPC namespace name is not empty and has no `:`"
                ));
            }
        }
    }

    /// The options of a namespace, `None` for an unknown namespace.
    pub fn namespace(&self, name: Option<&str>) -> Option<&ChannelOptions> {
        match name {
            None => Some(&self.channels.default),
            Some(ns) => self.channels.namespaces.get(ns),
        }
    }

    /// Whether the config still carries the embedded development secrets.
    pub fn uses_dev_secrets(&self) -> bool {
        [self.client.token_hmac_secret.as_deref(), self.api.key.as_deref()]
            .into_iter()
            .flatten()
            .any(|s| DEV_SECRETS.contains(&s))
    }
}

fn check_options(key: &str, options: &ChannelOptions, problems: &mut Vec<String>) {
    if (options.history_size > 0) == options.history_ttl.is_zero() {
        problems.push(format!(
            "key `{key}.history_size`: history needs both history_size and history_ttl greater than zero"
        ));
    }
    if options.history_enabled() && options.history_meta_ttl < options.history_ttl {
        problems.push(format!("key `{key}.history_meta_ttl`: must be at least history_ttl"));
    }
    if options.force_recovery && !options.history_enabled() {
        problems.push(format!(
            "key `{key}.force_recovery`: needs history (history_size and history_ttl)"
        ));
    }
    for delta in &options.allowed_delta_types {
        if delta != "fossil" {
            problems.push(format!(
                "key `{key}.allowed_delta_types`: unknown delta type {delta:?} (the one there is: \"fossil\")"
            ));
        }
    }
    if (options.force_recovery_mode == RecoveryMode::Cache || options.auto_cache_recover) && !options.force_recovery {
        problems.push(format!(
            "key `{key}.force_recovery_mode`: cache recovery needs force_recovery (with history)"
        ));
    }
    if options.auto_cache_recover && options.force_recovery_mode != RecoveryMode::Cache {
        problems.push(format!(
            "key `{key}.auto_cache_recover`: only with force_recovery_mode = \"cache\""
        ));
    }
    if !options.allowed_delta_types.is_empty() && !options.force_recovery {
        problems.push(format!(
            "key `{key}.allowed_delta_types`: deltas need positioned subscriptions (force_recovery, with history)"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_labelled() {
        let config = Config::load(Sources {
            file: None,
            env: Vec::new(),
            listen: None,
        })
        .unwrap();
        assert_eq!(config.http.listen, "127.0.0.1:8000".parse().unwrap());
        assert!(config.uses_dev_secrets());
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[client]\ntoken_hmac_secre = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("token_hmac_secre"), "{err}");
        let err = Config::from_toml("[channels.namespaces.chat]\npresense = true\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("channels.namespaces.chat") && err.contains("presense"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_named_and_all_collected() {
        let err = Config::from_toml(
            "[client]\nping_interval = \"5s\"\npong_timeout = \"8s\"\n[channels.namespaces.x]\nhistory_size = 10\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("client.ping_interval"), "{text}");
        assert!(text.contains("channels.namespaces.x"), "{text}");
        assert!(err.problems.len() >= 3, "{text}");
        let err = Config::from_toml("[client]\nping_interval = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("client.ping_interval"), "{err}");
    }

    #[test]
    fn the_queue_must_hold_a_reply_with_the_largest_publication() {
        // 1 MiB queue, 1 MiB API bodies: a recovery of one maximal publication could never fit.
        let err = Config::from_toml("[client]\nmax_queue_bytes = 1048576\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("client.max_queue_bytes") && err.contains("api.max_body_size"),
            "{err}"
        );
        let fits = "[client]\nmax_queue_bytes = 1048576\n[api]\nmax_body_size = 262144\n";
        assert_eq!(Config::from_toml(fits).unwrap().client.reply_budget(), 524288);
        // The embedded default satisfies it.
        let default = Config::from_toml(DEFAULT_CONFIG).unwrap();
        assert!(default.client.reply_budget() > default.api.max_body_size);
    }

    #[test]
    fn cluster_section_is_optional_and_checked() {
        assert!(Config::from_toml(DEFAULT_CONFIG).unwrap().cluster.is_none());
        let minimal = "[cluster]\nsecret = \"0123456789abcdef\"\nnode_name = \"n1\"\n";
        let cluster = Config::from_toml(minimal).unwrap().cluster.unwrap();
        assert_eq!((cluster.replicas, cluster.node_name.as_str()), (3, "n1"));
        assert_eq!(cluster.bootstrap_wait, Duration::from_secs(3));
        let err = Config::from_toml("[cluster]\nseeds = [\"127.0.0.2:7946\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster.secret"), "{err}");
        let err = Config::from_toml(
            "[cluster]\nsecret = \"short\"\nseeds = [\"nohost\"]\nreplicas = 0\nheartbeat_interval = \"1s\"\nelection_timeout = \"1s\"\nbogus = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bogus"), "unknown keys stay errors: {err}");
        let err = Config::from_toml(
            "[cluster]\nsecret = \"short\"\nseeds = [\"nohost\"]\nreplicas = 0\nheartbeat_interval = \"1s\"\nelection_timeout = \"1s\"\nsnapshot_chunk_size = 100\nbootstrap_wait = \"0s\"\n",
        )
        .unwrap_err();
        let text = err.to_string();
        for key in [
            "cluster.secret",
            "cluster.seeds",
            "cluster.replicas",
            "cluster.election_timeout",
            "cluster.snapshot_chunk_size",
            "cluster.bootstrap_wait",
        ] {
            assert!(text.contains(key), "{key} not named: {text}");
        }
        // From the environment too.
        let config = Config::load(Sources {
            file: None,
            env: vec![
                ("HERALD_CLUSTER_SECRET".into(), "0123456789abcdef".into()),
                ("HERALD_CLUSTER_NODE_NAME".into(), "42".into()),
                ("HERALD_CLUSTER_SEEDS".into(), "[\"127.0.0.2:7946\"]".into()),
            ],
            listen: None,
        })
        .unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!((cluster.node_name.as_str(), cluster.seeds.len()), ("42", 1));
    }

    #[test]
    fn env_and_flags_override_the_file() {
        let config = Config::load(Sources {
            file: None,
            env: vec![
                ("HERALD_CLIENT_INSECURE".into(), "true".into()),
                ("HERALD_STORAGE_PATH".into(), "/tmp/x".into()),
                ("HERALD_CHANNELS_NAMESPACES_CHAT_ROOMS_HISTORY_SIZE".into(), "5".into()),
                ("HERALD_CHANNELS_NAMESPACES_CHAT_ROOMS_HISTORY_TTL".into(), "1m".into()),
                ("HERALD_CLIENT_TOKEN_HMAC_SECRET".into(), "123456".into()),
                ("PATH".into(), "/bin".into()),
            ],
            listen: Some("127.0.0.1:9999".parse().unwrap()),
        })
        .unwrap();
        assert!(config.client.insecure);
        assert_eq!(config.storage.path, PathBuf::from("/tmp/x"));
        assert_eq!(config.channels.namespaces["chat_rooms"].history_size, 5);
        assert_eq!(config.client.token_hmac_secret.as_deref(), Some("123456"));
        assert_eq!(config.http.listen.port(), 9999);
    }

    #[test]
    fn proxies_are_checked_and_named() {
        let valid = "[client.proxy.connect]\nenabled = true\nendpoint = \"http://127.0.0.1:3000/connect\"\n\
            http_headers = [\"Cookie\"]\nheaders = { \"X-Secret\" = \"s\" }\n\
            [channels.proxy.subscribe]\nenabled = true\nendpoint = \"https://backend.example/sub\"\n\
            [channels.namespaces.room]\nsubscribe_proxy_enabled = true\n\
            [rpc.proxy]\nenabled = true\nendpoint = \"http://127.0.0.1:3000/rpc\"\n\
            [rpc.namespaces.app]\nproxy_enabled = true\n";
        let config = Config::from_toml(valid).unwrap();
        assert_eq!(config.client.proxy.connect.timeout, Duration::from_secs(1));
        assert!(config.channels.namespaces["room"].subscribe_proxy_enabled);
        assert!(config.rpc.namespaces["app"].proxy_enabled);
        let err = Config::from_toml(
            "[client.proxy.connect]\nenabled = true\nendpoint = \"ftp://x\"\ntimeout = \"0s\"\nhttp_headers = [\"bad header\"]\n\
             [client.proxy.refresh]\nenabled = true\nendpoint = \"\"\n\
             [channels.namespaces.room]\npublish_proxy_enabled = true\n\
             [channels.default]\nsub_refresh_proxy_enabled = true\n\
             [rpc.without_namespace]\nproxy_enabled = true\n",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "client.proxy.connect.endpoint",
            "client.proxy.connect.timeout",
            "client.proxy.connect.http_headers",
            "client.proxy.refresh.endpoint",
            "channels.namespaces.room.publish_proxy_enabled",
            "channels.default.sub_refresh_proxy_enabled",
            "rpc.without_namespace.proxy_enabled",
        ] {
            assert!(err.contains(key), "{key} not named: {err}");
        }
        let err = Config::from_toml("[client.proxy.connect]\nendpont = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("endpont"), "unknown keys stay errors: {err}");
        // From the environment too.
        let config = Config::load(Sources {
            file: None,
            env: vec![
                ("HERALD_CLIENT_PROXY_CONNECT_ENABLED".into(), "true".into()),
                (
                    "HERALD_CLIENT_PROXY_CONNECT_ENDPOINT".into(),
                    "http://127.0.0.1:1/c".into(),
                ),
                ("HERALD_CLIENT_PROXY_CONNECT_HTTP_HEADERS".into(), "[\"Cookie\"]".into()),
                ("HERALD_CHANNELS_PROXY_SUB_REFRESH_ENABLED".into(), "true".into()),
                (
                    "HERALD_CHANNELS_PROXY_SUB_REFRESH_ENDPOINT".into(),
                    "http://127.0.0.1:1/s".into(),
                ),
                (
                    "HERALD_CHANNELS_NAMESPACES_CHAT_SUB_REFRESH_PROXY_ENABLED".into(),
                    "true".into(),
                ),
                ("HERALD_RPC_PROXY_ENABLED".into(), "true".into()),
                ("HERALD_RPC_PROXY_ENDPOINT".into(), "http://127.0.0.1:1/r".into()),
                ("HERALD_RPC_NAMESPACES_APP_PROXY_ENABLED".into(), "true".into()),
            ],
            listen: None,
        })
        .unwrap();
        assert_eq!(config.client.proxy.connect.http_headers, ["Cookie"]);
        assert!(config.channels.proxy.sub_refresh.enabled);
        assert!(config.channels.namespaces["chat"].sub_refresh_proxy_enabled);
        assert!(config.rpc.namespaces["app"].proxy_enabled);
    }

    #[test]
    fn unknown_env_keys_are_errors() {
        let err = Config::load(Sources {
            file: None,
            env: vec![("HERALD_CLIENT_INSECUR".into(), "true".into())],
            listen: None,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("HERALD_CLIENT_INSECUR"), "{err}");
    }
}
