//! HTTP proxies (docs/proxies.md): a real backend, an axum server on loopback that records every
//! call, decides the connects, subscriptions, publications, RPCs and refreshes of a real node.
//! Clients are raw JSON WebSocket clients that send a `Cookie` on the upgrade and no token: the
//! backend, not a JWT, says who they are.

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use common::{eventually, now, token, user_token, Node, API_KEY, SECRET, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

// ---------------------------------------------------------------------------------------------
// The backend

/// One call the backend received.
#[derive(Clone, Debug)]
struct Call {
    path: String,
    headers: HeaderMap,
    /// The JSON body (a body that is not JSON is kept as a JSON string).
    body: Value,
    /// When it arrived.
    at: Instant,
}

impl Call {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `session` cookie the client sent on its handshake, as the proxy forwarded it.
    fn session(&self) -> Option<&str> {
        self.header("cookie")?
            .split(';')
            .find_map(|pair| pair.trim().strip_prefix("session="))
    }
}

/// What the backend answers to one call.
struct Answer {
    status: u16,
    body: Value,
    delay: Duration,
}

impl Answer {
    fn result(result: Value) -> Answer {
        Answer {
            status: 200,
            body: json!({ "result": result }),
            delay: Duration::ZERO,
        }
    }

    fn error(code: u32, message: &str) -> Answer {
        Answer {
            body: json!({"error": {"code": code, "message": message}}),
            ..Answer::result(Value::Null)
        }
    }

    fn disconnect(code: u32, reason: &str) -> Answer {
        Answer {
            body: json!({"disconnect": {"code": code, "reason": reason}}),
            ..Answer::result(Value::Null)
        }
    }

    fn after(self, delay: Duration) -> Answer {
        Answer { delay, ..self }
    }
}

type Handler = Arc<dyn Fn(&Call) -> Answer + Send + Sync>;

/// An application backend on `127.0.0.1:0`: every POST, whatever its path, is recorded and
/// answered by the test's handler.
struct Backend {
    addr: std::net::SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(handler: impl Fn(&Call) -> Answer + Send + Sync + 'static) -> Backend {
        let handler: Handler = Arc::new(handler);
        let calls = Arc::new(Mutex::new(Vec::new()));
        let recorded = calls.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let (handler, recorded) = (handler.clone(), recorded.clone());
            async move {
                let body = serde_json::from_slice(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
                let call = Call {
                    path: uri.path().to_owned(),
                    headers,
                    body,
                    at: Instant::now(),
                };
                let answer = handler(&call);
                recorded.lock().unwrap().push(call);
                tokio::time::sleep(answer.delay).await;
                (
                    StatusCode::from_u16(answer.status).unwrap(),
                    [(header::CONTENT_TYPE, "application/json")],
                    answer.body.to_string(),
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Backend { addr, calls, server }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The calls made to `path` so far, in arrival order.
    fn calls(&self, path: &str) -> Vec<Call> {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.path == path).cloned().collect()
    }

    /// Waits (at most 15 s) until `path` has had `n` calls; returns them.
    async fn wait_calls(&self, path: &str, n: usize) -> Vec<Call> {
        let arrived = eventually(Duration::from_secs(15), || async { self.calls(path).len() >= n }).await;
        assert!(arrived, "{path} had {} calls, not {n}", self.calls(path).len());
        self.calls(path)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A URL where nothing listens: a port the OS just gave and took back.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/connect")
}

/// `max_concurrency` bounds the calls in flight: with one slot, concurrent connects reach the
/// backend one after another (each after the previous answer), and all are served within the
/// timeout, which counts the wait for the slot.
#[tokio::test]
async fn max_concurrency_queues_calls_within_the_timeout() {
    let delay = Duration::from_millis(400);
    let backend = Backend::start(move |_| Answer::result(json!({"user": "queued"})).after(delay)).await;
    let connect = format!(
        "[client.proxy.connect]\nenabled = true\nendpoint = \"{}\"\ntimeout = \"5s\"\nmax_concurrency = 1\n",
        backend.url("/connect")
    );
    let node = Node::start(&node_config("", &[connect, OPEN_DEFAULT.into()]));
    let mut connects = Vec::new();
    for _ in 0..3 {
        let url = node.ws_url();
        connects.push(tokio::spawn(async move {
            let mut client = Ws::open_url(&url, &[]).await;
            client.call(json!({"connect": {}})).await
        }));
    }
    for connect in connects {
        let reply = connect.await.unwrap();
        assert_eq!(reply["connect"]["client"].as_str().map(str::len), Some(36), "{reply}");
    }
    let calls = backend.calls("/connect");
    assert_eq!(calls.len(), 3);
    for pair in calls.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        // Each call starts only once the previous one's answer (sent `delay` after it arrived)
        // came back.
        assert!(
            gap >= delay - Duration::from_millis(50),
            "calls {gap:?} apart: not one at a time"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Config

/// One enabled proxy section, forwarding the client's cookie, plus `extra` keys.
fn proxy(section: &str, endpoint: &str, extra: &str) -> String {
    format!(
        "[{section}]\nenabled = true\nendpoint = \"{endpoint}\"\ntimeout = \"5s\"\nhttp_headers = [\"Cookie\"]\n{extra}\n"
    )
}

/// A node config: the test secret and API key, `client_keys` in `[client]`, then `sections`.
fn node_config(client_keys: &str, sections: &[String]) -> String {
    format!(
        "[client]\ntoken_hmac_secret = \"{SECRET}\"\n{client_keys}\n[api]\nkey = \"{API_KEY}\"\n{}",
        sections.join("\n")
    )
}

/// A default namespace clients may use freely, with presence.
const OPEN_DEFAULT: &str = "[channels.default]
presence = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
";

/// The value of the series of `name` whose labels include `labels` (summed; 0 when absent).
async fn metric(node: &Node, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = reqwest::get(node.http("/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labelled) = series.split_once('{').unwrap_or((series, ""));
            let wanted = metric == name && labels.iter().all(|(k, v)| labelled.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// The client

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A JSON-protocol WebSocket client that sends chosen handshake headers and keeps every text
/// frame it receives (so a test can say what never reached the client).
struct Ws {
    socket: Socket,
    frames: Vec<String>,
    /// Replies and pushes not taken yet, in arrival order (pings are dropped).
    inbox: VecDeque<Value>,
    next_id: u64,
    closed: Option<(u16, String)>,
}

impl Ws {
    async fn open(node: &Node, headers: &[(&str, &str)]) -> Ws {
        Ws::open_url(&node.ws_url(), headers).await
    }

    async fn open_url(url: &str, headers: &[(&str, &str)]) -> Ws {
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName = name.parse().unwrap();
            request.headers_mut().insert(name, value.parse().unwrap());
        }
        let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("handshake within WAIT")
            .expect("WebSocket handshake");
        Ws {
            socket,
            frames: Vec::new(),
            inbox: VecDeque::new(),
            next_id: 0,
            closed: None,
        }
    }

    /// A client whose handshake carries `Cookie: session=<session>`.
    async fn with_session(node: &Node, session: &str) -> Ws {
        Ws::open(node, &[("Cookie", &format!("session={session}"))]).await
    }

    /// Sends `command` (`{"connect": {...}}` etc.) with the next id; returns the id.
    async fn send(&mut self, mut command: Value) -> u64 {
        self.next_id += 1;
        command["id"] = json!(self.next_id);
        self.socket.send(Message::text(command.to_string())).await.unwrap();
        self.next_id
    }

    /// The reply to command `id`, waiting at most WAIT for each frame.
    async fn reply(&mut self, id: u64) -> Value {
        loop {
            if let Some(i) = self.inbox.iter().position(|r| r["id"] == id) {
                return self.inbox.remove(i).unwrap();
            }
            if !self.read(Instant::now() + WAIT).await {
                panic!("closed {:?} while waiting for reply {id}", self.closed);
            }
        }
    }

    async fn call(&mut self, command: Value) -> Value {
        let id = self.send(command).await;
        self.reply(id).await
    }

    /// Connects and returns the `connect` result; panics with the reply otherwise.
    async fn connected(&mut self, request: Value) -> Value {
        let reply = self.call(json!({ "connect": request })).await;
        assert!(reply["error"].is_null(), "connect failed: {reply}");
        reply["connect"].clone()
    }

    /// The error code of a reply (`None` for success).
    fn code(reply: &Value) -> Option<u64> {
        reply["error"]["code"].as_u64()
    }

    /// The next push (the object under `push`), arriving before `deadline`.
    async fn push_before(&mut self, deadline: Instant) -> Value {
        loop {
            if let Some(i) = self.inbox.iter().position(|r| r.get("push").is_some()) {
                return self.inbox.remove(i).unwrap()["push"].take();
            }
            if !self.read(deadline).await {
                panic!("closed {:?} while waiting for a push", self.closed);
            }
        }
    }

    /// The next publication on `channel` (other pushes are skipped).
    async fn publication(&mut self, channel: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut push = self.push_before(deadline).await;
            if push["channel"] == channel && push.get("pub").is_some() {
                return push["pub"].take();
            }
        }
    }

    /// Waits until the server closes the connection (at most `within`); the close code and reason.
    async fn closed(&mut self, within: Duration) -> (u16, String) {
        let deadline = Instant::now() + within;
        while self.read(deadline).await {}
        self.closed.clone().unwrap()
    }

    /// Whether any frame received so far contains `needle`.
    fn saw(&self, needle: &str) -> bool {
        self.frames.iter().any(|f| f.contains(needle))
    }

    /// Reads one WebSocket message into the inbox. False once the connection is closed; panics
    /// when nothing arrives before `deadline`.
    async fn read(&mut self, deadline: Instant) -> bool {
        if self.closed.is_some() {
            return false;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = match tokio::time::timeout(left, self.socket.next()).await {
                Err(_) => panic!("nothing received in time; frames so far: {:?}", self.frames),
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(_)) | None) => {
                    self.closed = Some((1006, String::new()));
                    return false;
                }
            };
            match message {
                Message::Text(text) => {
                    self.frames.push(text.to_string());
                    for line in text.as_str().split('\n') {
                        let value: Value = serde_json::from_str(line).unwrap();
                        if value != json!({}) {
                            self.inbox.push_back(value);
                        }
                    }
                    return true;
                }
                Message::Close(frame) => {
                    let frame = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    self.closed = Some(frame.unwrap_or((1005, String::new())));
                    return false;
                }
                _ => continue,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connect

/// The whole cookie-session flow with no JWT anywhere: the backend gets exactly the headers the
/// config lists plus its static ones, the connect request's fields, and its result's user, info
/// and data reach the client. A connect with a token never calls the backend.
#[tokio::test]
async fn cookie_authenticates_through_the_connect_proxy_without_a_token() {
    let backend = Backend::start(|call| match call.session() {
        Some("alice-cookie") => Answer::result(json!({
            "user": "alice",
            "info": {"name": "Alice"},
            "data": {"welcome": "alice"},
        })),
        _ => Answer::error(401, "no session"),
    })
    .await;
    let connect = format!(
        "[client.proxy.connect]\nenabled = true\nendpoint = \"{}\"\ntimeout = \"5s\"\n\
         http_headers = [\"cookie\", \"Authorization\"]\nheaders = {{ \"X-Herald-Secret\" = \"s3cret\" }}\n",
        backend.url("/connect")
    );
    let node = Node::start(&node_config("", &[connect, OPEN_DEFAULT.into()]));

    let mut alice = Ws::open(
        &node,
        &[("Cookie", "session=alice-cookie"), ("X-Secret", "do-not-forward")],
    )
    .await;
    let result = alice
        .connected(json!({"name": "proxy-test", "version": "1.2.3", "data": {"hello": "backend"}}))
        .await;
    assert_eq!(result["data"], json!({"welcome": "alice"}), "{result}");
    let client = result["client"].as_str().expect("a client id").to_owned();

    let calls = backend.calls("/connect");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    // Forwarded: the listed handshake header (listed in lower case, sent as `Cookie`) and the
    // static one. Not forwarded: an unlisted header, the handshake's own headers, and a listed
    // header the client did not send.
    assert_eq!(
        call.header("cookie"),
        Some("session=alice-cookie"),
        "{:?}",
        call.headers
    );
    assert_eq!(call.header("x-herald-secret"), Some("s3cret"), "{:?}", call.headers);
    for absent in [
        "x-secret",
        "authorization",
        "sec-websocket-key",
        "sec-websocket-version",
        "upgrade",
    ] {
        assert_eq!(call.header(absent), None, "{absent} forwarded: {:?}", call.headers);
    }
    assert!(call
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json")));
    let body = &call.body;
    assert_eq!(body["client"], client.as_str(), "{body}");
    assert_eq!(body["transport"], "websocket", "{body}");
    assert_eq!(body["protocol"], "json", "{body}");
    assert_eq!(body["encoding"], "json", "{body}");
    assert_eq!(body["name"], "proxy-test", "{body}");
    assert_eq!(body["version"], "1.2.3", "{body}");
    assert_eq!(body["data"], json!({"hello": "backend"}), "{body}");

    // The backend's user and info are the connection's: presence shows them.
    let reply = alice.call(json!({"subscribe": {"channel": "room"}})).await;
    assert_eq!(Ws::code(&reply), None, "{reply}");
    let reply = alice.call(json!({"presence": {"channel": "room"}})).await;
    let entry = &reply["presence"]["presence"][&client];
    assert_eq!(entry["user"], "alice", "{reply}");
    assert_eq!(entry["conn_info"], json!({"name": "Alice"}), "{reply}");

    // A client without the cookie is refused by the backend, not let in anonymously.
    let mut stranger = Ws::open(&node, &[]).await;
    let reply = stranger.call(json!({"connect": {}})).await;
    assert_eq!(Ws::code(&reply), Some(401), "{reply}");

    // A token authenticates without the backend.
    let mut bob = Ws::open(&node, &[("Cookie", "session=alice-cookie")]).await;
    bob.connected(json!({"token": user_token("bob")})).await;
    assert_eq!(
        backend.calls("/connect").len(),
        2,
        "only alice's and the stranger's connects"
    );
}

/// The backend's `error` is the connect command's error; its `disconnect` closes the WebSocket
/// with its code and reason; `user: ""` lets the client in as anonymous; a reply with no
/// decision gives no credentials (3501).
#[tokio::test]
async fn connect_proxy_error_and_disconnect_reach_the_client() {
    let backend = Backend::start(|call| match call.session() {
        Some("banned") => Answer::disconnect(4501, "banned"),
        // Let in, as the anonymous user.
        Some("guest") => Answer::result(json!({"user": ""})),
        // No decision at all: no credentials.
        Some("mute") => Answer {
            body: json!({}),
            ..Answer::result(Value::Null)
        },
        _ => Answer::error(403, "session expired"),
    })
    .await;
    let node = Node::start(&node_config(
        "",
        &[proxy("client.proxy.connect", &backend.url("/connect"), "")],
    ));

    let mut expired = Ws::with_session(&node, "stale").await;
    let reply = expired.call(json!({"connect": {}})).await;
    assert_eq!(reply["error"]["code"], 403, "{reply}");
    assert_eq!(reply["error"]["message"], "session expired", "{reply}");

    let mut banned = Ws::with_session(&node, "banned").await;
    banned.send(json!({"connect": {}})).await;
    assert_eq!(banned.closed(WAIT).await, (4501, "banned".to_owned()));
    assert!(
        banned.inbox.iter().all(|r| r.get("connect").is_none()),
        "{:?}",
        banned.frames
    );

    let mut guest = Ws::with_session(&node, "guest").await;
    let reply = guest.call(json!({"connect": {}})).await;
    assert_eq!(Ws::code(&reply), None, "{reply}");
    assert_eq!(reply["connect"]["client"].as_str().map(str::len), Some(36), "{reply}");

    let mut mute = Ws::with_session(&node, "mute").await;
    mute.send(json!({"connect": {}})).await;
    assert_eq!(mute.closed(WAIT).await.0, 3501);
}

/// The connect result's `channels` and `subs` are server-side subscriptions; its `meta` goes to
/// every later proxy call of the connection and never to the client.
#[tokio::test]
async fn connect_result_subscribes_the_client_and_keeps_meta_on_the_server() {
    const MARKER: &str = "meta-marker-7f3a";
    let backend = Backend::start(|call| match call.path.as_str() {
        "/connect" => Answer::result(json!({
            "user": "carol",
            "channels": ["news"],
            "subs": {"alerts": {"data": {"sub": "alerts"}}},
            "meta": {"tenant": MARKER},
        })),
        "/rpc" => Answer::result(json!({"data": {"pong": true}})),
        _ => Answer::result(json!({})),
    })
    .await;
    let node = Node::start(&node_config(
        "",
        &[
            proxy("client.proxy.connect", &backend.url("/connect"), ""),
            proxy("channels.proxy.subscribe", &backend.url("/subscribe"), ""),
            proxy("channels.proxy.publish", &backend.url("/publish"), ""),
            proxy("rpc.proxy", &backend.url("/rpc"), ""),
            "[channels.namespaces.proxied]\nsubscribe_proxy_enabled = true\npublish_proxy_enabled = true\n".into(),
            "[rpc.namespaces.ns]\nproxy_enabled = true\n".into(),
        ],
    ));

    let mut carol = Ws::with_session(&node, "carol").await;
    let result = carol.connected(json!({})).await;
    let subs = &result["subs"];
    assert!(subs["news"].is_object(), "{result}");
    assert_eq!(subs["alerts"]["data"], json!({"sub": "alerts"}), "{result}");

    // Publications reach both channels without a subscribe command.
    node.publish("news", json!({"headline": 1})).await;
    assert_eq!(carol.publication("news").await["data"], json!({"headline": 1}));
    node.publish("alerts", json!({"alert": 2})).await;
    assert_eq!(carol.publication("alerts").await["data"], json!({"alert": 2}));

    // Later proxy calls carry the meta and the user.
    let reply = carol.call(json!({"subscribe": {"channel": "proxied:room"}})).await;
    assert_eq!(Ws::code(&reply), None, "{reply}");
    let reply = carol
        .call(json!({"publish": {"channel": "proxied:room", "data": {"n": 1}}}))
        .await;
    assert_eq!(Ws::code(&reply), None, "{reply}");
    carol.publication("proxied:room").await;
    let reply = carol.call(json!({"rpc": {"method": "ns:ping", "data": {}}})).await;
    assert_eq!(reply["rpc"]["data"], json!({"pong": true}), "{reply}");
    for path in ["/subscribe", "/publish", "/rpc"] {
        let calls = backend.calls(path);
        assert_eq!(calls.len(), 1, "{path}");
        assert_eq!(
            calls[0].body["meta"],
            json!({"tenant": MARKER}),
            "{path}: {}",
            calls[0].body
        );
        assert_eq!(calls[0].body["user"], "carol", "{path}: {}", calls[0].body);
    }

    assert!(!carol.saw(MARKER), "meta reached the client: {:?}", carol.frames);
    assert!(!carol.saw("\"meta\""), "meta reached the client: {:?}", carol.frames);
}

// ---------------------------------------------------------------------------------------------
// Subscribe and publish

/// In a namespace with `subscribe_proxy_enabled` the backend decides client subscriptions (the
/// namespace itself allows none), its `info` is the subscriber's chan_info, its `data` reaches
/// the subscribe result, its `override` changes presence and join/leave for that subscription;
/// a subscription token is checked without the backend.
#[tokio::test]
async fn subscribe_proxy_decides_and_shapes_client_subscriptions() {
    let backend = Backend::start(|call| match call.path.as_str() {
        "/connect" => {
            let user = call.session().unwrap_or_default().to_owned();
            Answer::result(json!({"user": user, "info": {"name": user}, "meta": {"seat": 7}}))
        }
        _ => match call.body["channel"].as_str().unwrap_or_default() {
            "guarded:open" => Answer::result(json!({"info": {"role": "reader"}, "data": {"motd": "hi"}})),
            "guarded:secret" => Answer::error(403, "not yours"),
            "guarded:hidden" => Answer::result(json!({"override": {"presence": {"value": false}}})),
            "guarded:chatty" => Answer::result(json!({
                "override": {"join_leave": {"value": true}, "force_push_join_leave": {"value": true}}
            })),
            _ => Answer::error(404, "no such room"),
        },
    })
    .await;
    let node = Node::start(&node_config(
        "",
        &[
            proxy("client.proxy.connect", &backend.url("/connect"), ""),
            proxy("channels.proxy.subscribe", &backend.url("/subscribe"), ""),
            "[channels.namespaces.guarded]\nsubscribe_proxy_enabled = true\npresence = true\n\
             allow_presence_for_subscriber = true\n"
                .into(),
        ],
    ));
    let mut dave = Ws::with_session(&node, "dave").await;
    let dave_id = dave.connected(json!({})).await["client"].as_str().unwrap().to_owned();

    // Allowed, with data for the client and info for everyone.
    let reply = dave
        .call(json!({"subscribe": {"channel": "guarded:open", "data": {"want": "news"}}}))
        .await;
    assert_eq!(Ws::code(&reply), None, "{reply}");
    assert_eq!(reply["subscribe"]["data"], json!({"motd": "hi"}), "{reply}");
    let calls = backend.calls("/subscribe");
    let body = &calls[0].body;
    assert_eq!(body["channel"], "guarded:open", "{body}");
    assert_eq!(body["user"], "dave", "{body}");
    assert_eq!(body["client"], dave_id.as_str(), "{body}");
    assert_eq!(body["data"], json!({"want": "news"}), "{body}");
    assert_eq!(body["meta"], json!({"seat": 7}), "{body}");
    assert_eq!(
        (&body["transport"], &body["protocol"]),
        (&json!("websocket"), &json!("json"))
    );
    assert_eq!(calls[0].header("cookie"), Some("session=dave"));
    let reply = dave.call(json!({"presence": {"channel": "guarded:open"}})).await;
    let entry = &reply["presence"]["presence"][&dave_id];
    assert_eq!(entry["chan_info"], json!({"role": "reader"}), "{reply}");
    assert_eq!(entry["conn_info"], json!({"name": "dave"}), "{reply}");

    // Refused with the backend's error.
    let reply = dave.call(json!({"subscribe": {"channel": "guarded:secret"}})).await;
    assert_eq!(reply["error"], json!({"code": 403, "message": "not yours"}), "{reply}");

    // Override: presence off for this subscription.
    let reply = dave.call(json!({"subscribe": {"channel": "guarded:hidden"}})).await;
    assert_eq!(Ws::code(&reply), None, "{reply}");
    let reply = dave.call(json!({"presence": {"channel": "guarded:hidden"}})).await;
    assert_eq!(Ws::code(&reply), None, "{reply}");
    assert!(reply["presence"]["presence"].get(&dave_id).is_none(), "{reply}");

    // Override: join/leave on (the namespace has it off), pushed to these subscribers.
    let reply = dave.call(json!({"subscribe": {"channel": "guarded:chatty"}})).await;
    assert_eq!(Ws::code(&reply), None, "{reply}");
    let mut erin = Ws::with_session(&node, "erin").await;
    erin.connected(json!({})).await;
    let reply = erin.call(json!({"subscribe": {"channel": "guarded:chatty"}})).await;
    assert_eq!(Ws::code(&reply), None, "{reply}");
    let deadline = Instant::now() + WAIT;
    let join = loop {
        let push = dave.push_before(deadline).await;
        // Dave's own join comes first (every subscriber gets it, the joiner too).
        if push["channel"] == "guarded:chatty" && push["join"]["info"]["user"] == "erin" {
            break push;
        }
    };
    assert_eq!(
        join["join"]["info"]["client"].as_str().map(str::len),
        Some(36),
        "{join}"
    );

    // A subscription token is checked as usual; the backend is not asked.
    let calls_before = backend.calls("/subscribe").len();
    let channel_token = token(json!({"sub": "dave", "channel": "guarded:tokened"}));
    let reply = dave
        .call(json!({"subscribe": {"channel": "guarded:tokened", "token": channel_token}}))
        .await;
    assert_eq!(Ws::code(&reply), None, "{reply}");
    assert_eq!(backend.calls("/subscribe").len(), calls_before);
}

/// The publish proxy replaces the namespace's publish rules: its `data` is what subscribers get,
/// its error is the publisher's, and `skip_history` keeps a publication out of history.
#[tokio::test]
async fn publish_proxy_rewrites_refuses_and_skips_history() {
    let backend = Backend::start(|call| match call.body["data"]["text"].as_str() {
        Some("hello") => Answer::result(json!({"data": {"text": "HELLO", "checked": true}})),
        Some("spam") => Answer::error(1000, "spam"),
        // Tagged, and made idempotent by the backend: a second one is the first's repeat.
        Some("once") => Answer::result(json!({"tags": {"origin": "backend"}, "idempotency_key": "once-key"})),
        _ => Answer::result(json!({"skip_history": true})),
    })
    .await;
    let node = Node::start(&node_config(
        "",
        &[
            proxy("channels.proxy.publish", &backend.url("/publish"), ""),
            "[channels.namespaces.chat]\npublish_proxy_enabled = true\nallow_subscribe_for_client = true\n\
             history_size = 10\nhistory_ttl = \"300s\"\n"
                .into(),
        ],
    ));
    let mut subscriber = Ws::open(&node, &[]).await;
    subscriber.connected(json!({"token": user_token("sam")})).await;
    let reply = subscriber.call(json!({"subscribe": {"channel": "chat:room"}})).await;
    assert_eq!(Ws::code(&reply), None, "{reply}");
    // The publisher is not subscribed: only the backend lets it publish.
    let mut publisher = Ws::open(&node, &[]).await;
    publisher.connected(json!({"token": user_token("pat")})).await;

    let reply = publisher
        .call(json!({"publish": {"channel": "chat:room", "data": {"text": "hello"}}}))
        .await;
    assert_eq!(Ws::code(&reply), None, "{reply}");
    assert_eq!(
        subscriber.publication("chat:room").await["data"],
        json!({"text": "HELLO", "checked": true})
    );
    let body = &backend.calls("/publish")[0].body;
    assert_eq!(
        (&body["user"], &body["channel"], &body["data"]),
        (&json!("pat"), &json!("chat:room"), &json!({"text": "hello"})),
        "{body}"
    );

    let reply = publisher
        .call(json!({"publish": {"channel": "chat:room", "data": {"text": "spam"}}}))
        .await;
    assert_eq!(reply["error"], json!({"code": 1000, "message": "spam"}), "{reply}");

    let reply = publisher
        .call(json!({"publish": {"channel": "chat:room", "data": {"text": "ephemeral"}}}))
        .await;
    assert_eq!(Ws::code(&reply), None, "{reply}");
    // The refused publication never arrives: the next one is the skipped-history one.
    assert_eq!(
        subscriber.publication("chat:room").await["data"],
        json!({"text": "ephemeral"})
    );

    let mut offsets = Vec::new();
    for _ in 0..2 {
        let reply = publisher
            .call(json!({"publish": {"channel": "chat:room", "data": {"text": "once"}}}))
            .await;
        assert_eq!(Ws::code(&reply), None, "{reply}");
        let (_, history) = node.api("history", json!({"channel": "chat:room", "limit": 0})).await;
        offsets.push(history["result"]["offset"].clone());
    }
    assert_eq!(
        offsets[0], offsets[1],
        "the repeat of the backend's idempotency key is not appended"
    );
    let tagged = subscriber.publication("chat:room").await;
    assert_eq!(tagged["data"], json!({"text": "once"}));
    assert_eq!(tagged["tags"], json!({"origin": "backend"}), "{tagged}");

    let (status, history) = node.api("history", json!({"channel": "chat:room", "limit": -1})).await;
    assert_eq!(status, 200, "{history}");
    let data: Vec<&Value> = history["result"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("{history}"))
        .iter()
        .map(|p| &p["data"])
        .collect();
    assert_eq!(
        data,
        [&json!({"text": "HELLO", "checked": true}), &json!({"text": "once"})],
        "{history}"
    );
}

// ---------------------------------------------------------------------------------------------
// RPC

/// `ns:` methods go to `[rpc.proxy]` from a client and from the server API; a method of a
/// namespace without a proxy is 108, of an unknown namespace 104, and neither reaches the backend.
#[tokio::test]
async fn rpc_goes_to_the_proxy_of_its_namespace() {
    let backend = Backend::start(|call| match call.body["method"].as_str() {
        Some("ns:fail") => Answer::error(1001, "nope"),
        _ => Answer::result(json!({"data": {"echo": call.body["data"], "method": call.body["method"]}})),
    })
    .await;
    let node = Node::start(&node_config(
        "",
        &[
            proxy("rpc.proxy", &backend.url("/rpc"), ""),
            "[rpc.without_namespace]\nproxy_enabled = false\n[rpc.namespaces.ns]\nproxy_enabled = true\n\
             [rpc.namespaces.plain]\nproxy_enabled = false\n"
                .into(),
        ],
    ));
    let mut client = Ws::open(&node, &[]).await;
    let client_id = client.connected(json!({"token": user_token("erin")})).await["client"]
        .as_str()
        .unwrap()
        .to_owned();

    let reply = client
        .call(json!({"rpc": {"method": "ns:echo", "data": {"n": 1}}}))
        .await;
    assert_eq!(
        reply["rpc"]["data"],
        json!({"echo": {"n": 1}, "method": "ns:echo"}),
        "{reply}"
    );
    let body = &backend.calls("/rpc")[0].body;
    assert_eq!(body["user"], "erin", "{body}");
    assert_eq!(body["client"], client_id.as_str(), "{body}");
    assert_eq!(body["method"], "ns:echo", "{body}");
    assert_eq!(body["data"], json!({"n": 1}), "{body}");

    let reply = client.call(json!({"rpc": {"method": "ns:fail", "data": {}}})).await;
    assert_eq!(reply["error"], json!({"code": 1001, "message": "nope"}), "{reply}");
    for (method, code) in [("echo", 108), ("plain:echo", 108), ("nowhere:echo", 104)] {
        let reply = client.call(json!({"rpc": {"method": method, "data": {}}})).await;
        assert_eq!(Ws::code(&reply), Some(code), "{method}: {reply}");
    }
    assert_eq!(backend.calls("/rpc").len(), 2, "only ns: methods reach the backend");

    let (status, body) = node.api("rpc", json!({"method": "ns:echo", "params": {"p": 2}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"result": {"data": {"echo": {"p": 2}, "method": "ns:echo"}}})
    );
    let calls = backend.calls("/rpc");
    let body = &calls.last().unwrap().body;
    assert_eq!(body["data"], json!({"p": 2}), "{body}");
    assert_eq!(body["user"].as_str().unwrap_or_default(), "", "{body}");
    assert_eq!(body["client"].as_str().unwrap_or_default(), "", "{body}");
}

// ---------------------------------------------------------------------------------------------
// Refresh

/// A connection the connect proxy gave an `expire_at` is refreshed by the backend, not the
/// client: the first refresh extends it past its first expiry, the second says expired (3005).
#[tokio::test]
async fn refresh_proxy_extends_then_expires_a_connection() {
    let refreshes = AtomicUsize::new(0);
    let backend = Backend::start(move |call| match call.path.as_str() {
        "/connect" => Answer::result(json!({
            "user": "fay", "expire_at": now() + 2, "channels": ["ticks"], "meta": {"m": "fay-meta"}
        })),
        _ => match refreshes.fetch_add(1, Ordering::SeqCst) {
            0 => Answer::result(json!({"expire_at": now() + 3})),
            _ => Answer::result(json!({"expired": true})),
        },
    })
    .await;
    let node = Node::start(&node_config(
        "expired_close_delay = \"1s\"",
        &[
            proxy("client.proxy.connect", &backend.url("/connect"), ""),
            proxy("client.proxy.refresh", &backend.url("/refresh"), ""),
        ],
    ));
    let mut fay = Ws::with_session(&node, "fay").await;
    let result = fay.connected(json!({})).await;
    // The server refreshes: the client is not told to.
    assert_ne!(result["expires"], true, "{result}");
    assert_eq!(result["ttl"].as_u64().unwrap_or(0), 0, "{result}");
    let client = result["client"].as_str().unwrap().to_owned();

    let first = backend.wait_calls("/refresh", 1).await;
    let body = &first[0].body;
    assert_eq!(
        (&body["client"], &body["user"], &body["meta"]),
        (&json!(client), &json!("fay"), &json!({"m": "fay-meta"})),
        "{body}"
    );
    assert_eq!(first[0].header("cookie"), Some("session=fay"));
    // Past its first expiry, the connection is still served.
    node.publish("ticks", json!({"tick": 1})).await;
    assert_eq!(fay.publication("ticks").await["data"], json!({"tick": 1}));

    assert_eq!(fay.closed(Duration::from_secs(20)).await.0, 3005, "{:?}", fay.frames);
    assert_eq!(backend.calls("/refresh").len(), 2);
}

/// A subscription the subscribe proxy gave an `expire_at` is refreshed by the backend: the first
/// sub_refresh extends it, the second ends it with unsubscribe 2501; the connection stays.
#[tokio::test]
async fn sub_refresh_proxy_extends_then_ends_a_subscription() {
    let refreshes = AtomicUsize::new(0);
    let backend = Backend::start(move |call| match call.path.as_str() {
        "/subscribe" => Answer::result(json!({"expire_at": now() + 2})),
        _ => match refreshes.fetch_add(1, Ordering::SeqCst) {
            0 => Answer::result(json!({"expire_at": now() + 3})),
            _ => Answer::result(json!({"expired": true})),
        },
    })
    .await;
    let node = Node::start(&node_config(
        "",
        &[
            proxy("channels.proxy.subscribe", &backend.url("/subscribe"), ""),
            proxy("channels.proxy.sub_refresh", &backend.url("/sub_refresh"), ""),
            OPEN_DEFAULT.into(),
            "[channels.namespaces.timed]\nsubscribe_proxy_enabled = true\nsub_refresh_proxy_enabled = true\n".into(),
        ],
    ));
    let mut gus = Ws::open(&node, &[("Cookie", "session=gus")]).await;
    gus.connected(json!({"token": user_token("gus")})).await;
    let reply = gus.call(json!({"subscribe": {"channel": "timed:a"}})).await;
    assert_eq!(Ws::code(&reply), None, "{reply}");
    assert_ne!(reply["subscribe"]["expires"], true, "the server refreshes: {reply}");

    let first = backend.wait_calls("/sub_refresh", 1).await;
    let body = &first[0].body;
    assert_eq!(
        (&body["user"], &body["channel"]),
        (&json!("gus"), &json!("timed:a")),
        "{body}"
    );
    node.publish("timed:a", json!({"still": "here"})).await;
    assert_eq!(gus.publication("timed:a").await["data"], json!({"still": "here"}));

    let deadline = Instant::now() + Duration::from_secs(20);
    let unsubscribe = loop {
        let push = gus.push_before(deadline).await;
        if push.get("unsubscribe").is_some() {
            break push;
        }
    };
    assert_eq!(unsubscribe["channel"], "timed:a", "{unsubscribe}");
    assert_eq!(unsubscribe["unsubscribe"]["code"], 2501, "{unsubscribe}");
    assert_eq!(backend.calls("/sub_refresh").len(), 2);
    let reply = gus.call(json!({"subscribe": {"channel": "lobby"}})).await;
    assert_eq!(Ws::code(&reply), None, "the connection stays: {reply}");
}

// ---------------------------------------------------------------------------------------------
// Failures

/// An endpoint nobody listens on: error 100 at once (not after the timeout), counted as
/// `unreachable`.
#[tokio::test]
async fn unreachable_backend_is_error_100_at_once() {
    let node = Node::start(&node_config("", &[proxy("client.proxy.connect", &dead_endpoint(), "")]));
    let mut client = Ws::with_session(&node, "anyone").await;
    let started = Instant::now();
    let reply = client.call(json!({"connect": {}})).await;
    assert_eq!(Ws::code(&reply), Some(100), "{reply}");
    // The timeout is 5 s; a refused loopback connection is known at once.
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    let errors = metric(
        &node,
        "herald_proxy_errors_total",
        &[("proxy", "connect"), ("reason", "unreachable")],
    )
    .await;
    assert!(errors >= 1.0, "{errors}");
}

/// A backend slower than `timeout`: error 100 after about the timeout, counted and logged (at
/// most once a second), while a token client on the same node is served as usual.
#[tokio::test]
async fn slow_backend_times_out_without_holding_up_other_clients() {
    let backend = Backend::start(|_| Answer::result(json!({"user": "late"})).after(Duration::from_secs(3))).await;
    let connect = format!(
        "[client.proxy.connect]\nenabled = true\nendpoint = \"{}\"\ntimeout = \"300ms\"\nhttp_headers = [\"Cookie\"]\n",
        backend.url("/connect")
    );
    let node = Node::start(&node_config("", &[connect, OPEN_DEFAULT.into()]));
    let started = Instant::now();

    // A new cookie connect every 100 ms until the token client is done, so that some are always
    // waiting on the backend meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let slow_connects = tokio::spawn({
        let (url, stop) = (node.ws_url(), stop.clone());
        async move {
            let mut connects = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let url = url.clone();
                connects.push(tokio::spawn(async move {
                    let mut client = Ws::open_url(&url, &[("Cookie", "session=slow")]).await;
                    let sent = Instant::now();
                    let reply = client.call(json!({"connect": {}})).await;
                    (reply, sent.elapsed())
                }));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut replies = Vec::new();
            for connect in connects {
                replies.push(connect.await.unwrap());
            }
            replies
        }
    });
    backend.wait_calls("/connect", 1).await;

    let mut bystander = Ws::open(&node, &[]).await;
    bystander.connected(json!({"token": user_token("quick")})).await;
    let reply = bystander.call(json!({"subscribe": {"channel": "room"}})).await;
    assert_eq!(Ws::code(&reply), None, "{reply}");
    node.publish("room", json!({"served": true})).await;
    assert_eq!(bystander.publication("room").await["data"], json!({"served": true}));
    stop.store(true, Ordering::SeqCst);

    let replies = slow_connects.await.unwrap();
    assert!(!replies.is_empty());
    for (reply, elapsed) in &replies {
        assert_eq!(Ws::code(reply), Some(100), "{reply}");
        // The backend answers after 3 s; the 300 ms timeout answers long before.
        assert!(*elapsed < Duration::from_millis(2500), "answered after {elapsed:?}");
    }
    let timeouts = metric(
        &node,
        "herald_proxy_errors_total",
        &[("proxy", "connect"), ("reason", "timeout")],
    )
    .await;
    assert!(
        timeouts >= replies.len() as f64,
        "{timeouts} timeouts for {} connects",
        replies.len()
    );
    let calls = metric(&node, "herald_proxy_calls_total", &[("proxy", "connect")]).await;
    assert!(
        calls >= replies.len() as f64,
        "{calls} calls for {} connects",
        replies.len()
    );
    let durations = metric(&node, "herald_proxy_duration_seconds_count", &[("proxy", "connect")]).await;
    assert!(durations >= 1.0, "{durations}");
    // Logged at warn, at most once a second.
    let log = node.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("proxy"))
        .count();
    let seconds = started.elapsed().as_secs() as usize;
    assert!(
        (1..=seconds + 2).contains(&warnings),
        "{warnings} warnings in {seconds} s:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Config

/// `herald check-config` on `text`: the exit code and stderr.
fn check_config(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herald.toml");
    std::fs::write(&file, text).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .arg("check-config")
        .arg(&file)
        .stdin(std::process::Stdio::null());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("HERALD_")) {
        command.env_remove(key);
    }
    let output = command.output().expect("running herald check-config");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A namespace using a proxy whose section is not enabled, and an enabled proxy without an
/// endpoint, are config errors naming their keys; the same config made whole passes.
#[test]
fn check_config_names_misconfigured_proxies() {
    let broken = "[client.proxy.connect]\nenabled = true\n\
                  [channels.namespaces.guarded]\nsubscribe_proxy_enabled = true\n\
                  [rpc.namespaces.ns]\nproxy_enabled = true\n";
    let (code, stderr) = check_config(broken);
    assert_eq!(code, Some(1), "{stderr}");
    for key in [
        "client.proxy.connect.endpoint",
        "channels.namespaces.guarded.subscribe_proxy_enabled",
        "rpc.namespaces.ns.proxy_enabled",
    ] {
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");

    let whole = format!(
        "{broken}{}{}",
        proxy("channels.proxy.subscribe", "http://127.0.0.1:9/subscribe", ""),
        proxy("rpc.proxy", "http://127.0.0.1:9/rpc", "")
    )
    .replace(
        "[client.proxy.connect]\nenabled = true\n",
        "[client.proxy.connect]\nenabled = true\nendpoint = \"https://auth.example/connect\"\n",
    );
    let (code, stderr) = check_config(&whole);
    assert_eq!(code, Some(0), "{stderr}\n{whole}");
}
