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
    pub api: ApiConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    pub channels: ChannelsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the one listener that serves WebSocket, the API, /health and /metrics.
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, the listener serves `https://` and `wss://`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            tls_cert: None,
            tls_key: None,
        }
    }
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
    pub max_queue_bytes: usize,
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
            max_queue_bytes: 1 << 20,
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
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            key: None,
            max_body_size: 1 << 20,
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
    pub allow_publish_for_anonymous: bool,
    pub allow_publish_for_subscriber: bool,
    pub allow_presence_for_client: bool,
    pub allow_presence_for_subscriber: bool,
    pub allow_history_for_client: bool,
    pub allow_history_for_subscriber: bool,
    /// Channels like `dialog#42,43` are open to the listed users only.
    pub allow_user_limited_channels: bool,
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
            allow_history_for_client: false,
            allow_history_for_subscriber: false,
            allow_user_limited_channels: false,
        }
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
        if c.max_queue_bytes < c.max_message_size {
            problems.push("key `client.max_queue_bytes`: must be at least client.max_message_size".to_owned());
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
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            problems.push("key `http.tls_cert`: http.tls_cert and http.tls_key must be set together".to_owned());
        }
        if self.api.key.as_deref() == Some("") {
            problems.push("key `api.key`: must not be empty (remove it to disable the API)".to_owned());
        }
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
