//! Listeners, TLS and HTTP serving. Knows nothing of channels: it accepts connections, speaks
//! HTTP/1.1 (and h2) on them, upgrades WebSocket requests and hands everything to the router.

pub mod coalesce;
pub mod tls;
pub mod websocket;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use coalesce::{CoalesceSwitch, Coalescing};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Accepts connections until `shutdown`, serving each with `app`.
/// `rate`: (connections per second, burst) accepted; the excess is closed at once.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    rate: Option<(u32, u32)>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut bucket = rate.map(|(rate, burst)| crate::limits::TokenBucket::new(rate, burst, std::time::Instant::now()));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Some(bucket) = &mut bucket {
            if !bucket.take(std::time::Instant::now()) {
                metrics::counter!("herald_limit_rejections_total", "limit" => "connection_rate").increment(1);
                drop(stream);
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            match tls {
                None => {
                    let switch = CoalesceSwitch::default();
                    let app = app.layer(axum::Extension(switch.clone()));
                    serve_connection(Coalescing::new(stream, switch), peer, app, shutdown).await
                }
                Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, peer, app, shutdown).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
}

async fn serve_connection<I>(io: I, peer: SocketAddr, app: Router, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::trace!(%peer, error = %e, "HTTP connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}
