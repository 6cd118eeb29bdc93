//! Operations against a real `herald serve` process: health, metrics, graceful shutdown and
//! restart, TLS, message size limit, origin check.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{cmd, eventually, user_token, Client, Node, CONFIG};
use futures_util::{SinkExt, StreamExt};
use herald::protocol::Format;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

async fn get(node: &Node, path: &str) -> (u16, String) {
    let response = reqwest::get(node.http(path)).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The value of a metric (summed over its label sets), if it is rendered at all.
fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value: f64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
        *found.get_or_insert(0.0) += value;
    }
    found
}

#[tokio::test]
async fn health_is_ok() {
    let node = Node::start(CONFIG);
    let (status, body) = get(&node, "/health").await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "ok");
}

/// History on, no join/leave: the only deliveries are the publications.
const METRICS_CONFIG: &str = r#"
[client]
token_hmac_secret = "test-secret"
[api]
key = "test-api-key"
[channels.default]
presence = true
history_size = 10
history_ttl = "300s"
force_recovery = true
allow_subscribe_for_client = true
[channels.namespaces.open]
allow_subscribe_for_client = true
"#;

#[tokio::test]
async fn metrics_count_connections_publications_and_commands() {
    let node = Node::start(METRICS_CONFIG);
    let mut client = Client::connected(&node, Format::Json, "m").await;
    let reply = client.call(cmd::subscribe("metered")).await;
    assert!(reply.error.is_none(), "{reply:?}");
    node.publish("metered", json!({"n": 1})).await;
    let publication = client.push().await.r#pub.expect("publication");
    assert_eq!(publication.offset, 1);

    let (status, text) = get(&node, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "herald_connections",
        "herald_publications_in_total",
        "herald_publications_out_total",
        "herald_bytes_out_total",
        "herald_command_duration_seconds_bucket",
    ] {
        assert!(metric(&text, name).is_some(), "{name} missing from /metrics:\n{text}");
    }
    assert_eq!(metric(&text, "herald_connections"), Some(1.0), "{text}");
    assert!(metric(&text, "herald_publications_in_total").unwrap() >= 1.0, "{text}");
    assert!(
        metric(&text, "herald_publications_out_total").unwrap() >= 1.0,
        "a delivered publication is not counted:\n{text}"
    );
    assert!(metric(&text, "herald_bytes_out_total").unwrap() > 0.0, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("herald_command_duration_seconds_bucket") && l.contains("subscribe")),
        "no subscribe latency:\n{text}"
    );

    // The connection gauge follows disconnects.
    client.close().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&get(&node, "/metrics").await.1, "herald_connections") == Some(0.0)
        })
        .await
    );
}

#[tokio::test]
async fn metrics_count_deliveries_on_channels_without_history() {
    let node = Node::start(METRICS_CONFIG);
    let mut a = Client::connected(&node, Format::Json, "a").await;
    let mut b = Client::connected(&node, Format::Protobuf, "b").await;
    for c in [&mut a, &mut b] {
        let reply = c.call(cmd::subscribe("open:fan")).await;
        assert!(reply.error.is_none(), "{reply:?}");
    }
    node.publish("open:fan", json!(1)).await;
    for c in [&mut a, &mut b] {
        assert!(c.push().await.r#pub.is_some());
    }
    let (_, text) = get(&node, "/metrics").await;
    assert_eq!(metric(&text, "herald_publications_in_total"), Some(1.0), "{text}");
    assert_eq!(metric(&text, "herald_publications_out_total"), Some(2.0), "{text}");
}

#[tokio::test]
async fn sigterm_closes_clients_with_3001_and_restart_keeps_history() {
    let mut node = Node::start(CONFIG);
    let mut json_client = Client::connected(&node, Format::Json, "1").await;
    let mut proto_client = Client::connected(&node, Format::Protobuf, "2").await;
    let mut epoch = String::new();
    for n in 1..=3 {
        let result = node.publish("durable", json!({"n": n})).await;
        assert_eq!(result["offset"], n);
        epoch = result["epoch"].as_str().unwrap().to_owned();
    }

    let (mut node, exited_ok) = tokio::task::spawn_blocking(move || {
        let ok = node.terminate();
        (node, ok)
    })
    .await
    .unwrap();
    assert!(exited_ok, "herald exited with an error:\n{}", node.log());
    assert_eq!(json_client.closed().await.0, 3001);
    assert_eq!(proto_client.closed().await.0, 3001);

    // Start again on the same storage (restart only spawns: the process is already gone).
    node.restart();
    let history = node.api("history", json!({"channel": "durable", "limit": -1})).await.1["result"].clone();
    let offsets: Vec<u64> = history["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("{history}"))
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 2, 3], "{history}");
    assert_eq!(history["publications"][2]["data"], json!({"n": 3}));
    assert_eq!(history["epoch"], epoch.as_str(), "{history}");
    let next = node.publish("durable", json!({"n": 4})).await;
    assert_eq!(next["offset"], 4);
    assert_eq!(next["epoch"], epoch.as_str());

    // A client recovers across the restart.
    let mut client = Client::connected(&node, Format::Json, "1").await;
    let reply = client
        .call(cmd::subscribe_with(herald::protocol::proto::SubscribeRequest {
            channel: "durable".into(),
            recover: true,
            epoch: epoch.clone(),
            offset: 3,
            ..Default::default()
        }))
        .await;
    let sub = reply.subscribe.unwrap_or_else(|| panic!("{:?}", reply.error));
    assert!(sub.recovered, "{sub:?}");
    assert_eq!(sub.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), [4]);

    // A second restart through the harness works too.
    drop(client);
    node.restart();
    let (status, body) = node.api("history", json!({"channel": "durable", "limit": 0})).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["offset"], 4, "{body}");
    assert_eq!(body["result"]["epoch"], epoch.as_str(), "{body}");
}

// ---------------------------------------------------------------------------------------------
// TLS

struct Tls {
    _dir: tempfile::TempDir,
    connector: tokio_rustls::TlsConnector,
    config: String,
}

/// A self-signed certificate for localhost/127.0.0.1, the config serving it, and a connector
/// trusting it.
fn tls_setup() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let config = format!(
        "{CONFIG}\n[http]\ntls_cert = {:?}\ntls_key = {:?}\n",
        cert_path.to_str().unwrap(),
        key_path.to_str().unwrap()
    );
    Tls {
        _dir: dir,
        connector: tokio_rustls::TlsConnector::from(Arc::new(client_config)),
        config,
    }
}

async fn tls_stream(node: &Node, tls: &Tls) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(node.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tls.connector.connect(name, tcp).await.expect("TLS handshake")
}

#[tokio::test]
async fn tls_serves_websocket_and_http() {
    let tls = tls_setup();
    let node = Node::start(&tls.config);

    // wss://: connect with a token and get a connect reply, then a publication.
    let stream = tls_stream(&node, &tls).await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/connection/websocket", stream)
        .await
        .expect("WebSocket handshake over TLS");
    let connect = json!({"id": 1, "connect": {"token": user_token("42")}});
    ws.send(Message::text(connect.to_string())).await.unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["id"], 1, "{reply}");
    assert!(
        reply["connect"]["client"].as_str().is_some_and(|c| !c.is_empty()),
        "{reply}"
    );
    ws.send(Message::text(
        json!({"id": 2, "subscribe": {"channel": "secure"}}).to_string(),
    ))
    .await
    .unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["id"], 2, "{reply}");
    assert!(reply.get("error").is_none(), "{reply}");

    // https:// health, as raw HTTP/1.1 over the TLS stream.
    let mut stream = tls_stream(&node, &tls).await;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("health over TLS timed out")
        .ok();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""status":"ok""#), "{response}");

    // A plain-text request to the TLS listener gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(node.http("/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP must not be served on a TLS listener"
    );
}

/// The next JSON reply on a raw WebSocket (skipping pings).
async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("nothing received")
            .expect("closed")
            .expect("WebSocket error");
        if let Message::Text(text) = message {
            for line in text.as_str().split('\n') {
                let value: Value = serde_json::from_str(line).unwrap();
                if value != json!({}) {
                    return value;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Limits and origin

#[tokio::test]
async fn an_oversized_message_closes_with_1009_and_others_keep_working() {
    let config = CONFIG.replacen("[client]\n", "[client]\nmax_message_size = 1024\n", 1);
    let node = Node::start(&config);
    let mut big = Client::connected(&node, Format::Json, "big").await;
    let mut other = Client::connected(&node, Format::Protobuf, "other").await;
    let reply = other.call(cmd::subscribe("open:after")).await;
    assert!(reply.error.is_none(), "{reply:?}");

    // Under the limit is fine.
    let reply = big.call(cmd::subscribe("open:small")).await;
    assert!(reply.error.is_none(), "{reply:?}");
    big.send_raw(Message::text("x".repeat(4096))).await;
    assert_eq!(big.closed().await.0, 1009);

    node.publish("open:after", json!({"still": "here"})).await;
    let publication = other.push().await.r#pub.expect("publication");
    assert_eq!(common::data_of(&publication), json!({"still": "here"}));
}

async fn handshake_with_origin(node: &Node, origin: &str) -> Result<u16, u16> {
    let mut request = node.ws_url().into_client_request().unwrap();
    request.headers_mut().insert("Origin", origin.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => Ok(response.status().as_u16()),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("handshake failed unexpectedly: {e}"),
    }
}

#[tokio::test]
async fn allowed_origins_are_enforced_at_the_handshake() {
    let config = CONFIG.replacen(
        "[client]\n",
        "[client]\nallowed_origins = [\"https://app.example.com\"]\n",
        1,
    );
    let node = Node::start(&config);
    assert_eq!(handshake_with_origin(&node, "https://evil.example.org").await, Err(403));
    assert_eq!(
        handshake_with_origin(&node, "https://app.example.com.evil.org").await,
        Err(403)
    );
    assert_eq!(handshake_with_origin(&node, "https://app.example.com").await, Ok(101));
    // Without an Origin header (a server or native client) the handshake is accepted.
    let _client = Client::connected(&node, Format::Json, "native").await;
}
