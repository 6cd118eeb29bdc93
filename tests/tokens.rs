//! RS256 and ES256 tokens with PEM public keys from the config, next to the HS256 secret.

mod common;

use common::{cmd, Client, Node, FORMATS};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

fn config() -> String {
    format!(
        r#"
[client]
token_hmac_secret = "test-secret"
token_rsa_public_key = "{}"
token_ecdsa_public_key = "{}"
[api]
key = "test-api-key"
[channels.namespaces.closed]
presence = true
"#,
        fixture("jwt-rsa.pub.pem"),
        fixture("jwt-ec.pub.pem")
    )
}

#[tokio::test]
async fn rs256_and_es256_connection_and_subscription_tokens() {
    let node = Node::start(&config());
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(fixture("jwt-rsa.key.pem")).unwrap()).unwrap();
    let ec = EncodingKey::from_ec_pem(&std::fs::read(fixture("jwt-ec.key.pem")).unwrap()).unwrap();
    for format in FORMATS {
        for (alg, key) in [
            (Algorithm::RS256, &rsa),
            (Algorithm::RS512, &rsa),
            (Algorithm::ES256, &ec),
        ] {
            let mut client = Client::open(&node, format).await;
            let reply = client
                .connect(&sign(
                    alg,
                    key,
                    json!({"sub": "42", "info": {"alg": format!("{alg:?}")}}),
                ))
                .await;
            assert!(reply.connect.is_some(), "{alg:?}: {reply:?}");
            // A subscription token signed the same way opens a namespace that grants nothing.
            let token = sign(alg, key, json!({"sub": "42", "channel": "closed:x"}));
            let subscribe = cmd::subscribe_with(herald::protocol::proto::SubscribeRequest {
                channel: "closed:x".into(),
                token,
                ..Default::default()
            });
            assert!(client.call(subscribe).await.error.is_none(), "{alg:?}");
        }
    }
}

#[tokio::test]
async fn tokens_signed_by_other_keys_are_invalid() {
    let node = Node::start(&config());
    // An ES256 token signed by a key that is not the configured one.
    let other = rcgen::KeyPair::generate().unwrap();
    let other_key = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
    let mut client = Client::open(&node, herald::protocol::Format::Json).await;
    client
        .send(&common::cmd::connect(&sign(
            Algorithm::ES256,
            &other_key,
            json!({"sub": "1"}),
        )))
        .await;
    assert_eq!(client.closed().await.0, 3500);
    // An RS256 token whose header claims HS256 with the RSA public key as the secret (the classic
    // algorithm confusion attack) is refused.
    let public_pem = std::fs::read(fixture("jwt-rsa.pub.pem")).unwrap();
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        json!({"sub": "1"}),
    );
    let mut client = Client::open(&node, herald::protocol::Format::Json).await;
    client.send(&common::cmd::connect(&confused)).await;
    assert_eq!(client.closed().await.0, 3500);
}

#[tokio::test]
async fn an_unreadable_key_file_is_a_startup_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a pem").unwrap();
    let file = dir.path().join("herald.toml");
    std::fs::write(
        &file,
        format!("[client]\ntoken_rsa_public_key = \"{}\"\n", bad.display()),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("client.token_rsa_public_key"), "{stderr}");
}

/// Expiry times are the client's (signed) input: one near i64::MIN is long past, so the
/// connection expires (3005 after `expired_close_delay`) instead of overflowing into a
/// connection that never expires; one near i64::MAX is accepted as far ahead; and a token
/// listing thousands of unknown channels is logged once, not once per channel.
#[tokio::test]
async fn extreme_expiry_times_and_unknown_channels_in_tokens() {
    let config = common::CONFIG.replace("[client]\n", "[client]\nexpired_close_delay = \"1s\"\n");
    let node = Node::start(&config);
    for format in FORMATS {
        let mut past = Client::open(&node, format).await;
        let reply = past
            .connect(&common::token(json!({"sub": "1", "expire_at": i64::MIN + 1})))
            .await;
        let result = reply.connect.expect("connected until the grace ends");
        assert!(result.expires && result.ttl >= 1, "{result:?}");
        assert_eq!(past.closed().await.0, 3005);

        let mut far = Client::open(&node, format).await;
        let result = far
            .connect(&common::token(json!({"sub": "2", "expire_at": i64::MAX})))
            .await
            .connect
            .expect("connected");
        assert!(result.expires && result.ttl > 1_000_000, "{result:?}");
        assert!(far.call(cmd::subscribe("room")).await.error.is_none());
    }
    let channels: Vec<String> = (0..2000).map(|i| format!("nowhere{i}:x")).collect();
    let mut many = Client::open(&node, herald::protocol::Format::Json).await;
    let result = many
        .connect(&common::token(json!({"sub": "3", "channels": channels})))
        .await
        .connect
        .expect("connected");
    assert!(result.subs.is_empty());
    let log = node.log();
    assert_eq!(log.matches("unknown channels skipped").count(), 1, "{log}");
    assert!(!log.contains("nowhere1999"), "every channel was logged");
}
