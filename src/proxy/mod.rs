//! Proxies: the application backend decides connects, subscriptions, publications, RPCs and
//! refreshes, over HTTP with the reference server's JSON (see docs/proxies.md).
//!
//! - [`Proxies`]: the node's configured proxies, built once from the config; `None` in the
//!   session context when no proxy is enabled, so that nothing of this runs then.
//! - [`Proxy::call`]: one bounded call (timeout, concurrency slots), its metrics and its
//!   outcome: the backend's decision ([`Decision`]) or why there is none ([`ProxyFailure`]).
//! - [`messages`]: the request and result bodies.

pub mod messages;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::config::{Config, ProxyConfig};

/// Largest reply body read from a backend.
const MAX_REPLY_BYTES: usize = 16 << 20;
/// Idle keep-alive connections to a backend are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Failure log lines per proxy: at most one per this interval (the rest are counted).
const LOG_INTERVAL: Duration = Duration::from_secs(1);

type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The keep-alive HTTP client pool every proxy of the node shares.
#[derive(Clone)]
struct HttpClient(Client<HttpsConnector, Full<Bytes>>);

impl HttpClient {
    fn new() -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
            .expect("the ring provider supports the default protocol versions")
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Self(client)
    }
}

/// Which proxy a call goes to; the metrics' `proxy` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Refresh,
    Subscribe,
    Publish,
    SubRefresh,
    Rpc,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Refresh => "refresh",
            Kind::Subscribe => "subscribe",
            Kind::Publish => "publish",
            Kind::SubRefresh => "sub_refresh",
            Kind::Rpc => "rpc",
        }
    }
}

/// The node's proxies (only the enabled ones).
pub struct Proxies {
    pub connect: Option<Proxy>,
    pub refresh: Option<Proxy>,
    pub subscribe: Option<Proxy>,
    pub publish: Option<Proxy>,
    pub sub_refresh: Option<Proxy>,
    pub rpc: Option<Proxy>,
    /// Every header name some proxy forwards: what a handshake keeps of its request.
    forwarded: Vec<HeaderName>,
}

impl Proxies {
    /// The configured proxies, or `None` when none is enabled.
    pub fn from_config(config: &Config) -> Option<Arc<Self>> {
        let (client_proxies, channel_proxies) = (&config.client.proxy, &config.channels.proxy);
        let any = [
            &client_proxies.connect,
            &client_proxies.refresh,
            &channel_proxies.subscribe,
            &channel_proxies.publish,
            &channel_proxies.sub_refresh,
            &config.rpc.proxy,
        ]
        .iter()
        .any(|p| p.enabled);
        if !any {
            return None;
        }
        let client = HttpClient::new();
        let build = |kind, proxy: &ProxyConfig| proxy.enabled.then(|| Proxy::new(kind, proxy, client.clone()));
        let proxies = Self {
            connect: build(Kind::Connect, &config.client.proxy.connect),
            refresh: build(Kind::Refresh, &config.client.proxy.refresh),
            subscribe: build(Kind::Subscribe, &config.channels.proxy.subscribe),
            publish: build(Kind::Publish, &config.channels.proxy.publish),
            sub_refresh: build(Kind::SubRefresh, &config.channels.proxy.sub_refresh),
            rpc: build(Kind::Rpc, &config.rpc.proxy),
            forwarded: Vec::new(),
        };
        let all = [
            &proxies.connect,
            &proxies.refresh,
            &proxies.subscribe,
            &proxies.publish,
            &proxies.sub_refresh,
            &proxies.rpc,
        ];
        let mut forwarded: Vec<HeaderName> = all
            .iter()
            .filter_map(|p| p.as_ref())
            .flat_map(|p| p.forward.iter().cloned())
            .collect();
        forwarded.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        forwarded.dedup();
        Some(Arc::new(Self { forwarded, ..proxies }))
    }

    /// The headers of a client's handshake request that some proxy forwards (the rest is not
    /// kept with the connection).
    pub fn capture(&self, headers: &HeaderMap) -> HeaderMap {
        let mut kept = HeaderMap::new();
        for name in &self.forwarded {
            for value in headers.get_all(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        kept
    }

    /// Adds the headers a client sent in its connect command (`ConnectRequest.headers`, for
    /// clients such as browsers that cannot set handshake headers) to those of its handshake.
    /// Only names some proxy forwards are kept, and a real handshake header is never replaced.
    pub fn add_emulated(&self, headers: &mut HeaderMap, emulated: &std::collections::HashMap<String, String>) {
        for (name, value) in emulated {
            let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) else {
                continue;
            };
            if self.forwarded.contains(&name) && !headers.contains_key(&name) {
                headers.insert(name, value);
            }
        }
    }
}

/// The RPC proxy serving `method`: by its namespace (the part before the first `:`), or that
/// of the methods without one. 107 for an empty method, 104 for an unknown namespace, 108 where
/// no proxy serves it.
pub fn rpc_proxy<'a>(
    config: &Config,
    proxies: Option<&'a Arc<Proxies>>,
    method: &str,
) -> Result<&'a Proxy, crate::protocol::ErrorCode> {
    use crate::protocol::ErrorCode;
    if method.is_empty() {
        return Err(ErrorCode::BAD_REQUEST);
    }
    let rpc = &config.rpc;
    let namespace = match method.split_once(':') {
        Some((name, _)) => rpc.namespaces.get(name).ok_or(ErrorCode::METHOD_NOT_FOUND)?,
        None => &rpc.without_namespace,
    };
    match proxies.and_then(|p| p.rpc.as_ref()) {
        Some(proxy) if namespace.proxy_enabled => Ok(proxy),
        _ => Err(ErrorCode::NOT_AVAILABLE),
    }
}

/// One configured proxy.
pub struct Proxy {
    kind: Kind,
    endpoint: Uri,
    timeout: Duration,
    /// Handshake headers forwarded.
    forward: Vec<HeaderName>,
    /// Static headers.
    headers: HeaderMap,
    slots: Semaphore,
    client: HttpClient,
    log: LogLimiter,
    /// Payloads always go base64-encoded (`b64data`, `"encoding": "binary"`).
    pub binary_encoding: bool,
}

/// Why a call brought no decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyFailure {
    /// No answer within the proxy's timeout.
    Timeout,
    /// The endpoint could not be reached (or the connection broke).
    Unreachable,
    /// A status other than 200.
    Status(u16),
    /// A body that is not one of the three reply shapes.
    Invalid,
}

impl ProxyFailure {
    fn reason(self) -> &'static str {
        match self {
            ProxyFailure::Timeout => "timeout",
            ProxyFailure::Unreachable => "unreachable",
            ProxyFailure::Status(_) => "status",
            ProxyFailure::Invalid => "invalid",
        }
    }
}

/// What the backend decided.
#[derive(Debug)]
pub enum Decision<T> {
    /// Go on, with these fields.
    Result(T),
    /// A reply with none of the three (`{}`): each proxy says what that means.
    Empty,
    /// Answer the client's command with this error.
    Error {
        code: u32,
        message: String,
        temporary: bool,
    },
    /// Close the connection with this code.
    Disconnect { code: u16, reason: String },
}

/// The reply body: exactly one of the three is expected.
#[derive(Deserialize)]
#[serde(bound = "T: DeserializeOwned")]
struct Reply<T> {
    #[serde(default)]
    result: Option<T>,
    #[serde(default)]
    error: Option<ReplyError>,
    #[serde(default)]
    disconnect: Option<ReplyDisconnect>,
}

#[derive(Deserialize)]
struct ReplyError {
    code: u32,
    #[serde(default)]
    message: String,
    #[serde(default)]
    temporary: bool,
}

#[derive(Deserialize)]
struct ReplyDisconnect {
    code: u16,
    #[serde(default)]
    reason: String,
}

impl Proxy {
    fn new(kind: Kind, config: &ProxyConfig, client: HttpClient) -> Self {
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            // Validated with the config.
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                headers.insert(name, value);
            }
        }
        Self {
            kind,
            endpoint: config.endpoint.parse().expect("validated with the config"),
            timeout: config.timeout,
            forward: config
                .http_headers
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
            headers,
            slots: Semaphore::new(config.max_concurrency),
            client,
            log: LogLimiter::default(),
            binary_encoding: config.binary_encoding,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Calls the backend with `body`, forwarding the configured ones of `client_headers`.
    /// Never takes longer than the proxy's timeout.
    pub async fn call<T: DeserializeOwned>(
        &self,
        body: &impl Serialize,
        client_headers: &HeaderMap,
    ) -> Result<Decision<T>, ProxyFailure> {
        let label = self.kind.name();
        metrics::counter!("herald_proxy_calls_total", "proxy" => label).increment(1);
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.timeout, self.exchange(body, client_headers)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(ProxyFailure::Timeout),
        };
        metrics::histogram!("herald_proxy_duration_seconds", "proxy" => label).record(started.elapsed().as_secs_f64());
        if let Err(failure) = &outcome {
            metrics::counter!("herald_proxy_errors_total", "proxy" => label, "reason" => failure.reason()).increment(1);
            if let Some(suppressed) = self.log.admit() {
                tracing::warn!(
                    proxy = label,
                    endpoint = %self.endpoint,
                    failure = ?failure,
                    suppressed,
                    "proxy call failed: the client's command gets error 100"
                );
            }
        }
        outcome
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        body: &impl Serialize,
        client_headers: &HeaderMap,
    ) -> Result<Decision<T>, ProxyFailure> {
        let body = serde_json::to_vec(body).expect("proxy requests serialize");
        let _slot = self.slots.acquire().await.expect("the semaphore is never closed");
        let mut request = Request::post(self.endpoint.clone())
            .body(Full::new(Bytes::from(body)))
            .expect("a parsed URI and a POST make a request");
        // Static headers first; the client's (those forwarded) replace them.
        let headers = request.headers_mut();
        headers.clone_from(&self.headers);
        for name in &self.forward {
            let mut values = client_headers.get_all(name).iter();
            if let Some(first) = values.next() {
                headers.insert(name.clone(), first.clone());
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let response = self.client.0.request(request).await.map_err(|e| {
            tracing::debug!(proxy = self.kind.name(), error = %e, "proxy request failed");
            ProxyFailure::Unreachable
        })?;
        if response.status() != StatusCode::OK {
            return Err(ProxyFailure::Status(response.status().as_u16()));
        }
        let bytes = Limited::new(response.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|_| ProxyFailure::Unreachable)?
            .to_bytes();
        decode_reply(&bytes).inspect_err(|_| {
            tracing::debug!(proxy = self.kind.name(), "proxy reply not understood");
        })
    }
}

/// A reply body as the backend's decision: `disconnect` first, then `error`, then `result`;
/// none of them is [`Decision::Empty`]; a body that is not such an object is
/// [`ProxyFailure::Invalid`]. (Also the `proxy_replies` fuzz target's entry.)
pub fn decode_reply<T: DeserializeOwned>(bytes: &[u8]) -> Result<Decision<T>, ProxyFailure> {
    let reply: Reply<T> = serde_json::from_slice(bytes).map_err(|_| ProxyFailure::Invalid)?;
    Ok(match reply {
        Reply {
            disconnect: Some(d), ..
        } => Decision::Disconnect {
            code: d.code,
            reason: d.reason,
        },
        Reply { error: Some(e), .. } => Decision::Error {
            code: e.code,
            message: e.message,
            temporary: e.temporary,
        },
        Reply { result: Some(r), .. } => Decision::Result(r),
        _ => Decision::Empty,
    })
}

/// Admits one log line per [`LOG_INTERVAL`], counting the others.
#[derive(Default)]
struct LogLimiter {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// `Some(lines suppressed since the last one)` when a line may be logged now.
    fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock();
        if last.is_some_and(|at| now.duration_since(at) < LOG_INTERVAL) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}
