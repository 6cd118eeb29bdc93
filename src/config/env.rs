//! `HERALD_<SECTION>_<KEY>` environment overrides, merged into the TOML table before it is typed.
//!
//! `HERALD_CLIENT_PING_INTERVAL=10s` sets `client.ping_interval`;
//! `HERALD_CHANNELS_DEFAULT_PRESENCE=true` sets `channels.default.presence`;
//! `HERALD_CHANNELS_NAMESPACES_CHAT_HISTORY_SIZE=10` sets `channels.namespaces.chat.history_size`
//! (namespace names are lowercased). Values are TOML values (`true`, `10`, `["a","b"]`), or
//! strings when they do not parse as one.
//!
//! A variable under a config section (`HERALD_CLIENT_…`) that names no key is an error; other
//! `HERALD_…` variables (`HERALD_BIN` for a script) are not configuration and are left alone.

use super::ConfigError;

const PREFIX: &str = "HERALD_";
/// Longer names first: `http_stream_enabled` belongs to `http_stream`, not to `http`.
const SECTIONS: &[&str] = &[
    "http_stream",
    "sse",
    "uni_websocket",
    "uni_http_stream",
    "uni_sse",
    "demo",
    "http",
    "client",
    "api",
    "storage",
    "log",
    "cluster",
    "rpc",
];
/// Keys whose values are always strings, even when they look like numbers.
const STRING_KEYS: &[&str] = &[
    "token_hmac_secret",
    "key",
    "path",
    "listen",
    "tls_cert",
    "tls_key",
    "node_name",
    "secret",
    "bind",
    "advertise",
    "centrifuge_js",
    "endpoint",
];
/// Every namespace option: the env name's suffix is matched against these.
const CHANNEL_KEYS: &[&str] = &[
    "presence",
    "join_leave",
    "force_push_join_leave",
    "history_size",
    "history_ttl",
    "history_meta_ttl",
    "force_recovery",
    "allow_subscribe_for_client",
    "allow_subscribe_for_anonymous",
    "allow_publish_for_client",
    "allow_publish_for_anonymous",
    "allow_publish_for_subscriber",
    "allow_presence_for_client",
    "allow_presence_for_subscriber",
    "allow_presence_for_anonymous",
    "allow_history_for_client",
    "allow_history_for_subscriber",
    "allow_history_for_anonymous",
    "allow_user_limited_channels",
    "allow_tags_filter",
    "allowed_delta_types",
    "delta_publish",
    "force_recovery_mode",
    "auto_cache_recover",
    "subscribe_proxy_enabled",
    "publish_proxy_enabled",
    "sub_refresh_proxy_enabled",
];

/// The proxies' sections (`HERALD_CLIENT_PROXY_CONNECT_TIMEOUT` sets
/// `client.proxy.connect.timeout`); longer names first.
const PROXY_SECTIONS: &[(&str, &[&str])] = &[
    ("client_proxy_", &["connect", "refresh"]),
    ("channels_proxy_", &["sub_refresh", "subscribe", "publish"]),
];

/// Merges the `HERALD_…` variables into `table`. Returns which dotted key each variable set, so
/// an error about that key can name the variable.
pub(super) fn apply(table: &mut toml::Table, env: &[(String, String)]) -> Result<Vec<(String, String)>, ConfigError> {
    let mut problems = Vec::new();
    let mut applied = Vec::new();
    let mut vars: Vec<_> = env.iter().filter(|(k, _)| k.starts_with(PREFIX)).collect();
    vars.sort();
    for (name, raw) in vars {
        match key_path(&name[PREFIX.len()..].to_ascii_lowercase()) {
            Some(None) => {}
            Some(Some(path)) => {
                let leaf = path.last().expect("paths are never empty");
                let value = parse_value(leaf, raw);
                insert(table, &path, value);
                applied.push((path.join("."), name.clone()));
            }
            None => problems.push(format!("environment variable {name}: no such configuration key")),
        }
    }
    if problems.is_empty() {
        Ok(applied)
    } else {
        Err(ConfigError { problems })
    }
}

/// `None`: a variable under a config section that names no key (an error).
/// `Some(None)`: not a configuration variable. `Some(Some(path))`: the key it sets.
fn key_path(rest: &str) -> Option<Option<Vec<String>>> {
    for (prefix, proxies) in PROXY_SECTIONS {
        if let Some(tail) = rest.strip_prefix(prefix) {
            let (proxy, key) = proxies
                .iter()
                .find_map(|p| tail.strip_prefix(&format!("{p}_")).map(|key| (*p, key)))?;
            let section = prefix.split('_').next().expect("non-empty prefix");
            return Some(Some(vec![section.into(), "proxy".into(), proxy.into(), key.into()]));
        }
    }
    if let Some(rpc) = rest.strip_prefix("rpc_") {
        for section in ["proxy", "without_namespace"] {
            if let Some(key) = rpc.strip_prefix(&format!("{section}_")) {
                return Some(Some(vec!["rpc".into(), section.into(), key.into()]));
            }
        }
        let namespace = rpc.strip_prefix("namespaces_")?.strip_suffix("_proxy_enabled")?;
        let path = vec![
            "rpc".into(),
            "namespaces".into(),
            namespace.into(),
            "proxy_enabled".into(),
        ];
        return Some(Some(path));
    }
    if let Some(channels) = rest.strip_prefix("channels_") {
        if let Some(key) = channels.strip_prefix("default_") {
            return CHANNEL_KEYS
                .contains(&key)
                .then(|| Some(vec!["channels".into(), "default".into(), key.into()]));
        }
        let ns_and_key = channels.strip_prefix("namespaces_")?;
        let key = CHANNEL_KEYS
            .iter()
            .filter(|k| ns_and_key.ends_with(&format!("_{k}")))
            .max_by_key(|k| k.len())?;
        let namespace = &ns_and_key[..ns_and_key.len() - key.len() - 1];
        let path = vec!["channels".into(), "namespaces".into(), namespace.into(), (*key).into()];
        return Some(Some(path));
    }
    let Some((section, key)) = SECTIONS
        .iter()
        .find_map(|s| rest.strip_prefix(&format!("{s}_")).map(|key| (*s, key)))
    else {
        return Some(None);
    };
    // An unknown key inside a known section is reported by the typed model, naming the variable.
    Some(Some(vec![section.into(), key.into()]))
}

fn parse_value(key: &str, raw: &str) -> toml::Value {
    if STRING_KEYS.contains(&key) {
        return toml::Value::String(raw.to_owned());
    }
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn insert(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let (leaf, parents) = path.split_last().expect("paths are never empty");
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        current = entry.as_table_mut().expect("just made a table");
    }
    current.insert(leaf.clone(), value);
}
