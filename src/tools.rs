//! `herald sub` and `herald publish`: small clients of a running node, for development and the
//! quickstart. They use the same protocol types as the server.

use std::time::Duration;

use anyhow::{bail, Context};
use axum::body::Body;
use futures_util::{SinkExt, StreamExt};
use herald::protocol::proto::{Command, Reply};
use tokio_tungstenite::tungstenite::Message;

/// Subscribes to `channel` and prints each publication's data as one JSON line, until `count`
/// publications (0 = forever) or `timeout` passes.
pub async fn sub(url: &str, token: &str, channel: &str, count: usize, timeout: Duration) -> anyhow::Result<()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let connect = Command::connect(1, token);
    let subscribe = Command::subscribe(2, channel);
    let frame = format!(
        "{}\n{}",
        serde_json::to_string(&connect)?,
        serde_json::to_string(&subscribe)?
    );
    ws.send(Message::text(frame)).await?;
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    while count == 0 || received < count {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("timed out waiting for publications")?;
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => bail!("server closed the connection: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("connection failed: {e}"),
            None => bail!("connection closed"),
        };
        for line in text.as_str().split('\n') {
            let reply: Reply = serde_json::from_str(line)?;
            if let Some(error) = reply.error {
                bail!(
                    "server answered command {} with error {} ({})",
                    reply.id,
                    error.code,
                    error.message
                );
            }
            if reply.id == 0 && reply.push.is_none() {
                ws.send(Message::text("{}")).await?; // pong
            }
            if reply.id == 2 {
                eprintln!("subscribed to {channel}");
            }
            if let Some(publication) = reply.push.and_then(|p| p.r#pub) {
                println!("{}", String::from_utf8_lossy(&publication.data));
                received += 1;
            }
        }
    }
    Ok(())
}

/// Publishes `data` (JSON) to `channel` through the server API and prints the result.
pub async fn publish(api: &str, key: &str, channel: &str, data: &str) -> anyhow::Result<()> {
    let data: serde_json::Value = serde_json::from_str(data).context("data must be JSON")?;
    let body = serde_json::json!({ "channel": channel, "data": data }).to_string();
    let uri: hyper::Uri = format!("{}/api/publish", api.trim_end_matches('/')).parse()?;
    let authority = uri.authority().context("the API URL needs a host")?.clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::post(uri)
        .header(hyper::header::HOST, authority.as_str())
        .header("X-API-Key", key)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let bytes = axum::body::to_bytes(Body::new(response.into_body()), 1 << 20).await?;
    if !status.is_success() {
        bail!("{status}: {}", String::from_utf8_lossy(&bytes));
    }
    println!("{}", String::from_utf8_lossy(&bytes));
    Ok(())
}
