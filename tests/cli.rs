//! The `herald` binary's command line: `--version`, `check-config`, `token`, and `serve` start-up
//! failures.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{cmd, Client, Node, CONFIG, SECRET};
use herald::protocol::Format;
use serde_json::Value;

/// Runs the binary with a clean `HERALD_*` environment plus `env`; fails the test if it does not
/// exit within 10 s (a `serve` that should have failed would otherwise run forever).
fn herald(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("HERALD_")) {
        command.env_remove(key);
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().expect("spawning herald");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "herald {args:?} did not exit within 10 s\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts a clean failure: exit code 1, no panic, and `needles` all named on stderr.
fn assert_fails_naming(output: &Output, needles: &[&str]) {
    let err = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stderr: {err}\nstdout: {}",
        stdout(output)
    );
    for needle in needles {
        assert!(err.contains(needle), "stderr does not name {needle:?}: {err}");
    }
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(!err.to_lowercase().contains("backtrace"), "backtrace: {err}");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// --version, check-config

#[test]
fn version_prints_the_crate_version() {
    let output = herald(&["--version"], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    assert!(out.starts_with("herald"), "{out}");
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/config/herald.toml");
    let output = herald(&["check-config", file], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // The test harness's config is valid too.
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "test.toml", CONFIG);
    let output = herald(&["check-config", s(&file)], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn check_config_names_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bad.toml", "[client]\ntokn = 1\n");
    assert_fails_naming(&herald(&["check-config", s(&file)], &[]), &["tokn"]);
}

#[test]
fn check_config_names_a_bad_value() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bad.toml", "[client]\nping_interval = \"soon\"\n");
    assert_fails_naming(&herald(&["check-config", s(&file)], &[]), &["client.ping_interval"]);
}

#[test]
fn check_config_requires_history_ttl_with_history_size() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bad.toml", "[channels.default]\nhistory_size = 10\n");
    assert_fails_naming(
        &herald(&["check-config", s(&file)], &[]),
        &["channels.default.history_size"],
    );
    let file = write(
        dir.path(),
        "bad-ns.toml",
        "[channels.namespaces.chat]\nhistory_size = 10\n",
    );
    assert_fails_naming(
        &herald(&["check-config", s(&file)], &[]),
        &["channels.namespaces.chat.history_size"],
    );
}

#[test]
fn check_config_fails_on_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    assert_fails_naming(&herald(&["check-config", s(&missing)], &[]), &["nope.toml"]);
}

// ---------------------------------------------------------------------------------------------
// token

fn claims_of(token: &str) -> Value {
    let parts: Vec<&str> = token.trim().split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWT: {token}");
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[0])
        .expect("header is base64url");
    let header: Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(header["alg"], "HS256", "{header}");
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1])
        .expect("payload is base64url");
    serde_json::from_slice(&payload).unwrap()
}

fn token_config(dir: &Path) -> PathBuf {
    write(
        dir,
        "token.toml",
        &format!("[client]\ntoken_hmac_secret = \"{SECRET}\"\n"),
    )
}

fn mint(config: &Path, extra: &[&str]) -> String {
    let mut args = vec!["token", "--user", "42", "--config", s(config)];
    args.extend_from_slice(extra);
    let output = herald(&args, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let token = stdout(&output).trim().to_owned();
    assert!(!token.is_empty());
    token
}

#[test]
fn token_has_sub_and_an_exp_an_hour_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let config = token_config(dir.path());
    let claims = claims_of(&mint(&config, &[]));
    assert_eq!(claims["sub"], "42", "{claims}");
    let exp = claims["exp"].as_i64().unwrap_or_else(|| panic!("no exp: {claims}"));
    let ahead = exp - common::now();
    assert!((3540..=3660).contains(&ahead), "exp is {ahead}s ahead: {claims}");
    assert!(claims.get("channel").is_none(), "{claims}");

    let claims = claims_of(&mint(&config, &["--channel", "news"]));
    assert_eq!(claims["sub"], "42", "{claims}");
    assert_eq!(claims["channel"], "news", "{claims}");

    let claims = claims_of(&mint(&config, &["--ttl", "0"]));
    assert_eq!(claims["sub"], "42", "{claims}");
    assert!(claims.get("exp").is_none(), "--ttl 0 must not expire: {claims}");

    let claims = claims_of(&mint(&config, &["--ttl", "30m"]));
    let ahead = claims["exp"].as_i64().unwrap() - common::now();
    assert!((1740..=1860).contains(&ahead), "exp is {ahead}s ahead: {claims}");
}

#[test]
fn token_without_a_secret_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "nosecret.toml", "[client]\ninsecure = false\n");
    assert_fails_naming(
        &herald(&["token", "--user", "42", "--config", s(&config)], &[]),
        &["token_hmac_secret"],
    );
}

#[tokio::test]
async fn minted_tokens_are_accepted_by_a_node_with_the_same_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config = token_config(dir.path());
    let connection_token = mint(&config, &[]);
    let subscription_token = mint(&config, &["--channel", "closed:news"]);

    let node = Node::start(CONFIG);
    let mut client = Client::open(&node, Format::Json).await;
    let reply = client.connect(&connection_token).await;
    assert!(reply.error.is_none(), "{reply:?}");
    let connect = reply.connect.expect("connect result");
    assert!(!connect.client.is_empty());
    assert!(connect.expires && connect.ttl > 3500, "{connect:?}");

    // `closed` needs a subscription token; the minted one works.
    let reply = client.call(cmd::subscribe("closed:news")).await;
    assert_eq!(reply.error.expect("refused without a token").code, 103);
    let reply = client
        .call(cmd::subscribe_with(herald::protocol::proto::SubscribeRequest {
            channel: "closed:news".into(),
            token: subscription_token,
            ..Default::default()
        }))
        .await;
    assert!(reply.error.is_none(), "{reply:?}");
    let (status, body) = node
        .api("presence", serde_json::json!({"channel": "closed:news"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["presence"][&connect.client]["user"], "42", "{body}");

    // A token minted with another secret is refused.
    let other = write(dir.path(), "other.toml", "[client]\ntoken_hmac_secret = \"another\"\n");
    let forged = mint(&other, &[]);
    let mut client = Client::open(&node, Format::Json).await;
    client.send(&common::cmd::connect(&forged)).await;
    assert_eq!(client.closed().await.0, 3500);
}

// ---------------------------------------------------------------------------------------------
// serve start-up failures

#[test]
fn serve_with_an_invalid_config_exits_1_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bad.toml", "[client]\ntokn = 1\n");
    let output = herald(&["serve", "--config", s(&file), "--listen", "127.0.0.1:0"], &[]);
    assert_fails_naming(&output, &["tokn"]);
    assert!(!stdout(&output).contains("listening"), "{}", stdout(&output));

    let file = write(dir.path(), "bad2.toml", "[client]\nping_interval = \"soon\"\n");
    let output = herald(&["serve", "--config", s(&file), "--listen", "127.0.0.1:0"], &[]);
    assert_fails_naming(&output, &["client.ping_interval"]);
}

#[test]
fn serve_with_a_misspelt_env_var_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "ok.toml", CONFIG);
    let storage = dir.path().join("data");
    let output = herald(
        &["serve", "--config", s(&file), "--listen", "127.0.0.1:0"],
        &[("HERALD_CLIENT_INSECUR", "true"), ("HERALD_STORAGE_PATH", s(&storage))],
    );
    assert_fails_naming(&output, &["HERALD_CLIENT_INSECUR"]);
    // With the embedded default config as well.
    let output = herald(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("HERALD_CLIENT_INSECUR", "true"), ("HERALD_STORAGE_PATH", s(&storage))],
    );
    assert_fails_naming(&output, &["HERALD_CLIENT_INSECUR"]);
}

#[test]
fn serve_with_storage_path_on_a_regular_file_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = write(dir.path(), "i-am-a-file", "not a database");
    let config = format!("{CONFIG}\n[storage]\npath = {:?}\n", s(&not_a_dir));
    let file = write(dir.path(), "herald.toml", &config);
    let output = herald(&["serve", "--config", s(&file), "--listen", "127.0.0.1:0"], &[]);
    assert_fails_naming(&output, &[s(&not_a_dir)]);
    assert!(!stdout(&output).contains("listening"), "{}", stdout(&output));
    // The file is untouched.
    assert_eq!(std::fs::read_to_string(&not_a_dir).unwrap(), "not a database");
}
