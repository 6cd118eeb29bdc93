//! Wires the node together and runs it until shutdown.
//!
//! Startup: keys, store, hub, broker, listener — any failure is an error naming what failed.
//! Shutdown (the `shutdown` token): stop accepting, close every client with 3001 (they reconnect
//! and recover elsewhere or later), wait for the sessions briefly, flush the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::broker::{Broker, NodeId};
use crate::config::Config;
use crate::hub::Hub;
use crate::session::SessionContext;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Key(#[from] crate::auth::token::KeyError),
    #[error(transparent)]
    Tls(#[from] crate::transport::tls::TlsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot listen on {addr} (http.listen): {error}")]
    Listen { addr: SocketAddr, error: std::io::Error },
    #[error("cannot start the fan-out thread: {0}")]
    FanOut(std::io::Error),
}

/// Runs a node. `ready` is called with the bound address once clients can connect.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let metrics = crate::metrics::install();
    let config = Arc::new(config);
    let verifier = Verifier::from_config(&config.client)?;
    let c = &config.client;
    if !verifier.has_keys() && !c.insecure && !c.allow_anonymous && !c.proxy.connect.enabled {
        tracing::warn!(
            "no token key configured (client.token_hmac_secret, …) and no connect proxy: every connection will be refused"
        );
    }
    if config.uses_dev_secrets() {
        tracing::warn!("running with the DEVELOPMENT secrets of the embedded config: anyone can mint tokens and call the API; set your own for production");
    }
    let tls = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => Some(crate::transport::tls::acceptor(cert, key)?),
        _ => None,
    };

    // The store's commits reach subscribers through the broker's fan-out thread, off the writer
    // thread (see `broker::fanout`).
    let (commit_hook, commits) = crate::broker::commit_queue();
    // In a cluster the streams are a replica of the replicated log.
    let store = Store::open_with(
        &config.storage.path,
        config.storage.durability,
        config.storage.flush_interval,
        commit_hook,
        config.cluster.is_some(),
    )?;
    let replica_store = store.clone();
    let cluster_shutdown = CancellationToken::new();
    let node = match &config.cluster {
        Some(cluster) => NodeId::named(&cluster.node_name),
        None => NodeId::random(),
    };
    let broker = Arc::new(Broker::new(config.clone(), node, Arc::new(Hub::default()), store));
    // The cluster joins before clients are accepted, so that every interest change reaches it.
    if let Some(cluster_config) = &config.cluster {
        // The cluster stops after the clients are gone (see below), not with the listener.
        let cluster = crate::cluster::Cluster::start(cluster_config, cluster_shutdown.clone()).await?;
        broker.attach_cluster(cluster.clone());
        cluster.start_replica(&replica_store, config.storage.durability).await?;
        let checks = broker.clone();
        let checks_shutdown = cluster_shutdown.clone();
        tokio::spawn(async move { checks.run_position_checks(checks_shutdown).await });
    }
    drop(replica_store);
    broker.spawn_fan_out(commits).map_err(ServerError::FanOut)?;
    let retention = broker.clone();
    let retention_shutdown = shutdown.clone();
    tokio::spawn(async move { retention.run_retention(retention_shutdown).await });
    let session_ctx = Arc::new(SessionContext {
        broker: broker.clone(),
        verifier,
        config: config.clone(),
        shutdown: shutdown.clone(),
        connections: Arc::new(tokio::sync::Semaphore::new(config.client.max_connections)),
        sessions: TaskTracker::new(),
        emulated: broker.emulated().clone(),
    });
    let sessions = session_ctx.sessions.clone();

    let app = Router::new()
        .route(
            "/connection/websocket",
            any(crate::transport::websocket::handler).with_state(session_ctx.clone()),
        )
        // The fallbacks answer 404 unless [http_stream] / [sse] enable them.
        .route(
            "/connection/http_stream",
            any(crate::transport::emulation::http_stream).with_state(session_ctx.clone()),
        )
        .route(
            "/connection/sse",
            any(crate::transport::emulation::sse).with_state(session_ctx.clone()),
        )
        .route(
            "/connection/uni_http_stream",
            any(crate::transport::emulation::uni_http_stream).with_state(session_ctx.clone()),
        )
        .route(
            "/connection/uni_sse",
            any(crate::transport::emulation::uni_sse).with_state(session_ctx.clone()),
        )
        .route(
            "/connection/uni_websocket",
            any(crate::transport::websocket::uni_handler).with_state(session_ctx.clone()),
        )
        .route(
            "/demo",
            get(crate::transport::demo::page).with_state(session_ctx.clone()),
        )
        .route(
            "/demo/centrifuge.js",
            get(crate::transport::demo::bundle).with_state(session_ctx.clone()),
        )
        .route(
            "/demo/token",
            get(crate::transport::demo::token).with_state(session_ctx.clone()),
        )
        .route(
            "/emulation",
            any(crate::transport::emulation::emulation).with_state(session_ctx),
        )
        .route(
            "/api/{method}",
            // The handler reads the body itself, after checking the key (issue 11).
            post(crate::api::handler),
        )
        .route("/health", get(health))
        .route("/metrics", get(move || std::future::ready(metrics.render())))
        .with_state(broker.clone());

    let listener = TcpListener::bind(config.http.listen)
        .await
        .map_err(|error| ServerError::Listen {
            addr: config.http.listen,
            error,
        })?;
    let local = listener.local_addr().map_err(|error| ServerError::Listen {
        addr: config.http.listen,
        error,
    })?;
    let listening = listening(&config);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(address = %local, %scheme, storage = %config.storage.path.display(), "herald listening");
    ready(local);

    let tracker = TaskTracker::new();
    crate::transport::accept_loop(listener, tls, app, listening, shutdown.clone(), tracker.clone()).await;

    if let Some(cluster) = broker.cluster() {
        // Leadership moves first, so that publishes elsewhere keep going while this node's
        // clients move.
        cluster.step_down().await;
    }
    tracing::info!("shutting down: closing clients with 3001");
    tracker.close();
    sessions.close();
    // Sessions close with 3001, spread over client.shutdown_spread; wait for them, but not forever.
    let grace = config.client.shutdown_spread + Duration::from_secs(5);
    let drained = async {
        tracker.wait().await;
        sessions.wait().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("some connections did not close within {grace:?}");
    }
    if let Some(cluster) = broker.cluster() {
        // Leaves the membership (the others learn of it at once) and stops the links.
        cluster_shutdown.cancel();
        cluster.stop_replica().await;
    }
    match broker.close().await {
        Ok(()) => tracing::info!("store flushed"),
        Err(e) => tracing::error!(error = %e, "store flush failed at shutdown"),
    }
    Ok(())
}

/// The listener's limits. The open-file limit is first raised to its hard limit (as the Go
/// runtime does for its servers): a soft limit of 1024 is a common default that a node with
/// thousands of clients outgrows. The caps on pending connections then follow what is left.
fn listening(config: &Config) -> crate::transport::Listening {
    let open_files = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            None
        }
    };
    let http = &config.http;
    let (total, per_address) = crate::transport::admission::effective_caps(
        http.max_pending_connections,
        http.max_pending_connections_per_ip,
        open_files,
    );
    if (total, per_address) != (http.max_pending_connections, http.max_pending_connections_per_ip) {
        tracing::info!(
            open_files,
            max_pending_connections = total,
            max_pending_connections_per_ip = per_address,
            "pending-connection caps lowered to fit the open-file limit"
        );
    }
    crate::transport::Listening {
        rate: (config.client.connection_rate_limit > 0)
            .then_some((config.client.connection_rate_limit, config.client.connection_burst)),
        admission: crate::transport::admission::Admission::new(total, per_address),
        header_read_timeout: http.header_read_timeout,
        idle_timeout: http.idle_timeout,
    }
}

/// `/health`: 200 when the delivery path works (the store's writer answers and can flush and,
/// in a cluster, a leader of the replicated log is known and reachable), 503 with the reason
/// otherwise.
async fn health(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    if let Some(Err(reason)) = broker.cluster().map(|c| c.ready()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "error", "cluster": reason})),
        );
    }
    match tokio::time::timeout(Duration::from_secs(2), broker.flush()).await {
        Ok(Ok(())) => (StatusCode::OK, axum::Json(serde_json::json!({"status": "ok"}))),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "error", "store": e.to_string()})),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "error", "store": "writer not answering"})),
        ),
    }
}
