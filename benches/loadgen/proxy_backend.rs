//! `herald-loadgen proxy-backend`: an application backend for Herald's connect proxy
//! (docs/proxies.md) that lets every connection in, so that a benchmark of connects through the
//! proxy measures Herald's side (its HTTP client pool, the request it builds, one round trip)
//! and as little of the backend as possible. It reads each request's body, so that Herald's
//! keep-alive connection can carry the next call, but decodes none of it: every `POST` gets
//! `{"result":{"user":"loadgen-<n>"}}`, `n` counting the calls (a user per connection, as a real
//! backend would give). It runs until killed; `scripts/bench-proxy.sh` starts and stops it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;

#[derive(clap::Parser, Debug)]
#[command(
    name = "proxy-backend",
    bin_name = "herald-loadgen proxy-backend",
    about = "A connect-proxy backend that answers every POST with a new user"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18900")]
    listen: SocketAddr,
}

pub async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?
        // A reply is one small write: no reason for Nagle to hold it back.
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    let calls = Arc::new(AtomicU64::new(0));
    // Every path: the endpoint is whatever Herald's config names.
    let app = Router::new().fallback(post(connect)).with_state(calls);
    eprintln!("proxy backend listening on {}", args.listen);
    axum::serve(listener, app).await.context("serving")
}

async fn connect(State(calls): State<Arc<AtomicU64>>, _body: Bytes) -> impl IntoResponse {
    let n = calls.fetch_add(1, Ordering::Relaxed);
    (
        [(CONTENT_TYPE, "application/json")],
        format!(r#"{{"result":{{"user":"loadgen-{n}"}}}}"#),
    )
}
