//! The config loader: TOML text with `HERALD_…` environment overrides, parsed and validated as
//! `herald serve` does; what validation promises is checked on every accepted config.
//!
//! Input: TOML text; after a NUL byte, one `KEY=VALUE` line per variable, read as
//! `HERALD_KEY=VALUE`.
#![no_main]

use herald::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (toml, env) = text.split_once('\0').unwrap_or((&text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .map(|line| {
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            (format!("HERALD_{key}"), value.to_owned())
        })
        .collect();
    let Ok(config) = Config::from_text(toml, "fuzz input", &env, None) else {
        return;
    };
    let client = &config.client;
    assert!(!client.ping_interval.is_zero());
    assert!(client.pong_timeout.is_zero() || client.ping_interval > client.pong_timeout);
    assert!(client.max_message_size > 0 && client.max_queue_bytes >= client.max_message_size);
    assert_ne!(client.token_hmac_secret.as_deref(), Some(""));
    assert_ne!(config.api.key.as_deref(), Some(""));
    let namespaces = config
        .channels
        .namespaces
        .iter()
        .map(|(name, options)| (Some(name.as_str()), options));
    for (name, options) in std::iter::once((None, &config.channels.default)).chain(namespaces) {
        assert!(config.namespace(name).is_some());
        if options.history_enabled() {
            assert!(options.history_meta_ttl >= options.history_ttl);
        }
        assert!(!options.force_recovery || options.history_enabled());
    }
    config.uses_dev_secrets();
});
