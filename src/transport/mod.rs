//! Listeners, TLS and HTTP serving. Knows nothing of channels: it accepts connections, speaks
//! HTTP/1.1 (and h2) on them, upgrades WebSocket requests and hands everything to the router.

pub mod admission;
pub mod coalesce;
pub mod demo;
pub mod emulation;
pub mod tls;
pub mod uni;
pub mod watchdog;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use admission::{AcceptBackoff, Admission};
use axum::Router;
use coalesce::{CoalesceSwitch, Coalescing};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use watchdog::{Activity, Counted, RequestGuard, Watch};

/// How the listener treats connections before they are WebSockets.
#[derive(Debug, Clone)]
pub struct Listening {
    /// (connections per second, burst) accepted; the excess is closed at once.
    pub rate: Option<(u32, u32)>,
    /// Caps on connections that are still plain HTTP.
    pub admission: Arc<Admission>,
    /// Time to send a request's headers (and to finish a TLS handshake).
    pub header_read_timeout: Duration,
    /// Time a kept-alive connection may stay idle between requests.
    pub idle_timeout: Duration,
}

/// Accepts connections until `shutdown`, serving each with `app`.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    listening: Listening,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut bucket = listening
        .rate
        .map(|(rate, burst)| crate::limits::TokenBucket::new(rate, burst, Instant::now()));
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    backoff.succeeded();
                    a
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, and say so once per
                    // interval rather than once per failure.
                    metrics::counter!("herald_accept_errors_total").increment(1);
                    let after = backoff.failed(Instant::now());
                    if let Some(failures) = after.report {
                        tracing::warn!(error = %e, failures, "accept failed (counting failures since the last report, at most one report per {:?})", admission::LOG_INTERVAL);
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(after.wait) => continue,
                    }
                }
            },
        };
        if let Some(bucket) = &mut bucket {
            if !bucket.take(Instant::now()) {
                metrics::counter!("herald_limit_rejections_total", "limit" => "connection_rate").increment(1);
                drop(stream);
                continue;
            }
        }
        let slot = match listening.admission.admit(peer.ip()) {
            Ok(slot) => Arc::new(Mutex::new(Some(slot))),
            Err(refusal) => {
                metrics::counter!("herald_limit_rejections_total", "limit" => refusal.label()).increment(1);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        let listening = listening.clone();
        tracker.spawn(async move {
            let accepted = Instant::now();
            match tls {
                None => {
                    let switch = CoalesceSwitch::default();
                    let app = app.layer(axum::Extension(switch.clone()));
                    let io = Coalescing::new(stream, switch);
                    serve_connection(io, peer, accepted, app, &listening, &slot, shutdown).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(listening.header_read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, accepted, app, &listening, &slot, shutdown).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => {
                            metrics::counter!("herald_http_timeouts_total", "timeout" => "tls_handshake").increment(1);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
            }
            // The slot is held until the connection closes, is handed over as a WebSocket
            // (hyper's connection future ends at the upgrade) or carries a session
            // ([`LongLived::begin`]).
            drop(slot);
        });
    }
}

/// Marks a response given before its request's body was read (refused for its size, its pace
/// or its credentials): the connection closes after it, so the client does not send its next
/// request on a connection that still carries the unread body (it would fail as an incomplete
/// message).
pub fn closing(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// In every request's extensions: lets a handler whose response outlives the request (an
/// HTTP-streaming or SSE session) make its connection a client connection.
#[derive(Clone)]
pub struct LongLived {
    activity: Arc<Activity>,
    slot: Arc<Mutex<Option<admission::Slot>>>,
}

impl LongLived {
    /// Gives the connection's pending-connection slot back (the session counts against
    /// `client.max_connections` instead) and keeps the connection busy, out of reach of the idle
    /// timeout, until the returned guard drops.
    pub fn begin(&self) -> RequestGuard {
        self.slot.lock().take();
        self.activity.request()
    }
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    accepted: Instant,
    app: Router,
    listening: &Listening,
    slot: &Arc<Mutex<Option<admission::Slot>>>,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let io = Counted::new(io, activity.clone());
    let counting = activity.clone();
    let long_lived = LongLived {
        activity: activity.clone(),
        slot: slot.clone(),
    };
    let service = tower::service_fn(move |mut request: axum::extract::Request<hyper::body::Incoming>| {
        let guard = counting.request();
        request.extensions_mut().insert(long_lived.clone());
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await;
            drop(guard);
            response
        }
    });
    let service = TowerToHyperService::new(service);
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut watch = Watch::new(accepted, listening.header_read_timeout, listening.idle_timeout);
    let mut ticks = tokio::time::interval_at((accepted + watch.tick()).into(), watch.tick());
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::trace!(%peer, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                return;
            }
            _ = ticks.tick() => {
                if let Some(expired) = watch.observe(activity.counts(), Instant::now()) {
                    metrics::counter!("herald_http_timeouts_total", "timeout" => expired.label()).increment(1);
                    tracing::trace!(%peer, timeout = expired.label(), "closing an HTTP connection");
                    // Dropping the connection closes the socket.
                    return;
                }
            }
        }
    }
}
