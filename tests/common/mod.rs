//! The one test harness: start a real `herald serve` process on an ephemeral loopback port,
//! talk to it with real WebSocket clients (JSON or Protobuf) and the HTTP API.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herald::protocol::proto::{Command, Reply};
use herald::protocol::Format;
use prost::Message as _;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret";
pub const API_KEY: &str = "test-api-key";

/// A config most tests use: history, presence and join/leave on the default namespace.
pub const CONFIG: &str = r#"
[client]
token_hmac_secret = "test-secret"
[api]
key = "test-api-key"
[channels.default]
presence = true
join_leave = true
force_push_join_leave = true
history_size = 10
history_ttl = "300s"
force_recovery = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true
allow_user_limited_channels = true
[channels.namespaces.closed]
presence = true
history_size = 10
history_ttl = "300s"
[channels.namespaces.open]
allow_subscribe_for_client = true
allow_publish_for_client = true
allow_presence_for_client = true
[channels.namespaces.tiny]
history_size = 2
history_ttl = "300s"
force_recovery = true
allow_subscribe_for_client = true
allow_history_for_subscriber = true
"#;

/// The address a `herald serve` child (started with piped stdout) reports once it listens.
pub fn listen_address(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("herald listening on ") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    rx
}

/// A running `herald serve` child process; killed on drop.
pub struct Node {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    config: String,
    env: Vec<(String, String)>,
    /// The process's open-file limit (soft and hard), when a test sets one.
    open_files: Option<u64>,
}

impl Node {
    /// The server process's resident memory (`VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kb * 1024
    }

    pub fn start(config: &str) -> Node {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut node = Node {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            dir,
            config: config.to_owned(),
            env,
            open_files: None,
        };
        node.spawn();
        node
    }

    /// Starts a node whose process may open at most `open_files` descriptors.
    pub fn start_with_open_files(config: &str, open_files: u64) -> Node {
        let mut node = Node {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            dir: tempfile::tempdir().unwrap(),
            config: config.to_owned(),
            env: Vec::new(),
            open_files: Some(open_files),
        };
        node.spawn();
        node
    }

    /// The sum of a metric's series in `/metrics` (`name` is a prefix: labels included).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.http("/metrics")).await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// A plain TCP connection to the node from the loopback address `source` (127.0.0.0/8), so
    /// that a test can pose as another host.
    pub async fn tcp_from(&self, source: [u8; 4]) -> std::io::Result<TcpStream> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((source, 0)))?;
        socket.connect(self.addr).await
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("herald.toml")
    }

    pub fn storage_path(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        std::fs::write(self.config_path(), &self.config).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("herald.log"))
            .unwrap();
        let mut process = match self.open_files {
            // prlimit execs the server: the child's pid is the server's.
            Some(n) => {
                let mut p = Process::new("prlimit");
                p.arg(format!("--nofile={n}:{n}")).arg(env!("CARGO_BIN_EXE_herald"));
                p
            }
            None => Process::new(env!("CARGO_BIN_EXE_herald")),
        };
        let mut child = process
            .args(["serve", "--config"])
            .arg(self.config_path())
            .args(["--listen", "127.0.0.1:0"])
            .env("HERALD_STORAGE_PATH", self.storage_path())
            .env("RUST_LOG", "herald=debug")
            .envs(self.env.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawning herald");
        let addr = listen_address(&mut child)
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("herald did not start:\n{}", self.log()));
        self.addr = addr.parse().unwrap();
        self.child = Some(child);
    }

    /// The server's log so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("herald.log")).unwrap_or_default()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGTERM, and wait for the process to exit. Returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Process::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("herald did not exit after SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops gracefully and starts again on the same storage (the port changes).
    pub fn restart(&mut self) {
        assert!(self.terminate(), "herald exited with an error:\n{}", self.log());
        self.spawn();
    }

    /// Calls the server API with the test key; returns the HTTP status and the JSON body (or
    /// the text as a JSON string).
    pub async fn api(&self, method: &str, body: Value) -> (u16, Value) {
        self.api_with(method, body.to_string(), &[("X-API-Key", API_KEY)]).await
    }

    /// The whole history of a channel, as the numbers its publications carry in `field`.
    pub async fn history_numbers(&self, channel: &str, field: &str) -> Vec<u64> {
        let (status, body) = self.api("history", json!({"channel": channel, "limit": -1})).await;
        assert_eq!(status, 200, "{body}");
        body["result"]["publications"]
            .as_array()
            .unwrap_or_else(|| panic!("no publications in {body}"))
            .iter()
            .map(|p| p["data"][field].as_u64().unwrap())
            .collect()
    }

    pub async fn api_with(&self, method: &str, body: String, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(self.http(&format!("/api/{method}")))
            .body(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Publishes through the API and returns the result object.
    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        let (status, body) = self.api("publish", json!({"channel": channel, "data": data})).await;
        assert_eq!(status, 200, "{body}");
        body.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("publish failed: {body}"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn token(claims: Value) -> String {
    herald::auth::token::mint_hs256(SECRET, &claims)
}

pub fn user_token(user: &str) -> String {
    token(json!({ "sub": user }))
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A bystander subscribed to `channel` still gets a publication made through the API now.
pub async fn still_served(node: &Node, bystander: &mut Client, channel: &str) {
    let offset = node.publish(channel, json!({"alive": true})).await["offset"]
        .as_u64()
        .unwrap();
    loop {
        if let Some(p) = bystander.push().await.r#pub {
            if p.offset == offset {
                return;
            }
        }
    }
}

/// Polls `condition` until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol client over a real WebSocket.
pub struct Client {
    ws: Socket,
    pub format: Format,
    /// Pushes (and replies nobody waited for) in arrival order.
    inbox: VecDeque<Reply>,
    pub pings: usize,
    next_id: u32,
    pub closed: Option<(u16, String)>,
}

pub const WAIT: Duration = Duration::from_secs(5);

impl Client {
    pub async fn open(node: &Node, format: Format) -> Client {
        let url = match format {
            Format::Json => node.ws_url(),
            Format::Protobuf => node.ws_url(),
        };
        let mut request = url.into_client_request().unwrap();
        if format == Format::Protobuf {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", "centrifuge-protobuf".parse().unwrap());
        }
        let (ws, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("WebSocket handshake");
        if format == Format::Protobuf {
            assert_eq!(
                response.headers().get("sec-websocket-protocol").unwrap(),
                "centrifuge-protobuf"
            );
        }
        Client::over(ws, format)
    }

    pub fn over(ws: Socket, format: Format) -> Client {
        Client {
            ws,
            format,
            inbox: VecDeque::new(),
            pings: 0,
            next_id: 0,
            closed: None,
        }
    }

    /// Opens and connects with a token for `user`.
    pub async fn connected(node: &Node, format: Format, user: &str) -> Client {
        let mut client = Client::open(node, format).await;
        let reply = client.connect(&user_token(user)).await;
        assert!(reply.error.is_none(), "connect failed: {reply:?}");
        client
    }

    pub async fn connect(&mut self, token: &str) -> Reply {
        self.call(Command {
            connect: Some(herald::protocol::proto::ConnectRequest {
                token: token.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
    }

    pub fn encode(&self, command: &Command) -> Message {
        match self.format {
            Format::Json => Message::text(serde_json::to_string(command).unwrap()),
            Format::Protobuf => Message::binary(command.encode_length_delimited_to_vec()),
        }
    }

    pub async fn send(&mut self, command: &Command) {
        let message = self.encode(command);
        self.ws.send(message).await.unwrap();
    }

    /// Sends several commands in one WebSocket message.
    pub async fn send_frame(&mut self, commands: &[Command]) {
        let message = match self.format {
            Format::Json => Message::text(
                commands
                    .iter()
                    .map(|c| serde_json::to_string(c).unwrap())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            Format::Protobuf => Message::binary(
                commands
                    .iter()
                    .flat_map(|c| c.encode_length_delimited_to_vec())
                    .collect::<Vec<u8>>(),
            ),
        };
        self.ws.send(message).await.unwrap();
    }

    pub async fn send_raw(&mut self, message: Message) {
        let _ = self.ws.send(message).await;
    }

    /// The next WebSocket message as it arrived, control frames included; `None` at the end of
    /// the stream.
    pub async fn next_raw(&mut self) -> Option<Message> {
        match tokio::time::timeout(WAIT, self.ws.next()).await {
            Ok(Some(Ok(message))) => Some(message),
            Ok(Some(Err(_)) | None) => None,
            Err(_) => panic!("nothing received within {WAIT:?}"),
        }
    }

    /// Sends a command with the next id and waits for its reply; pushes go to the inbox.
    pub async fn call(&mut self, mut command: Command) -> Reply {
        self.next_id += 1;
        command.id = self.next_id;
        let id = command.id;
        self.send(&command).await;
        loop {
            if let Some(i) = self.inbox.iter().position(|r| r.id == id) {
                return self.inbox.remove(i).unwrap();
            }
            if !self.read_socket().await {
                panic!("closed while waiting for reply {id}: {:?}", self.closed);
            }
        }
    }

    /// The next reply or push: from the inbox, else from the socket. `None` when closed.
    async fn read(&mut self) -> Option<Reply> {
        loop {
            if let Some(reply) = self.inbox.pop_front() {
                return Some(reply);
            }
            if !self.read_socket().await {
                return None;
            }
        }
    }

    /// Reads one WebSocket message into the inbox (pings are counted, not kept). False when closed.
    async fn read_socket(&mut self) -> bool {
        loop {
            let message = match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(_))) | Ok(None) => return false,
                Err(_) => panic!("nothing received within {WAIT:?}"),
            };
            let replies: Vec<Reply> = match message {
                Message::Text(text) => {
                    assert_eq!(self.format, Format::Json, "text frame on a Protobuf connection");
                    text.as_str()
                        .split('\n')
                        .map(|line| serde_json::from_str(line).unwrap())
                        .collect()
                }
                Message::Binary(data) => {
                    assert_eq!(self.format, Format::Protobuf, "binary frame on a JSON connection");
                    let mut buf = data;
                    let mut out = Vec::new();
                    while !buf.is_empty() {
                        out.push(Reply::decode_length_delimited(&mut buf).unwrap());
                    }
                    out
                }
                Message::Close(frame) => {
                    self.closed = Some(
                        frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new())),
                    );
                    return false;
                }
                _ => continue,
            };
            for reply in replies {
                if reply.id == 0 && reply.push.is_none() {
                    self.pings += 1;
                } else {
                    self.inbox.push_back(reply);
                }
            }
            return true;
        }
    }

    /// The next push (from the inbox first).
    pub async fn push(&mut self) -> herald::protocol::proto::Push {
        let reply = match self.inbox.pop_front() {
            Some(r) => r,
            None => self
                .read()
                .await
                .unwrap_or_else(|| panic!("closed while waiting for a push: {:?}", self.closed)),
        };
        match reply.push {
            Some(push) => push,
            None => panic!(
                "expected a push, got a reply with id {} and error {:?}",
                reply.id, reply.error
            ),
        }
    }

    /// Waits until the server closes the connection; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        while self.closed.is_none() {
            if self.read().await.is_none() && self.closed.is_none() {
                return (1006, String::new());
            }
        }
        self.closed.clone().unwrap()
    }

    /// Whether nothing arrives within `wait` (pings aside).
    pub async fn silent_for(&mut self, wait: Duration) -> bool {
        if !self.inbox.is_empty() {
            return false;
        }
        match tokio::time::timeout(wait, self.ws.next()).await {
            Err(_) => true,
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "{}" => true,
            Ok(_) => false,
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Command builders.
pub mod checker;

pub mod cmd {
    use bytes::Bytes;
    use herald::protocol::proto::*;

    /// A connect command with id 1 (for sending raw, when the reply is not awaited by `call`).
    pub fn connect(token: &str) -> Command {
        Command::connect(1, token)
    }

    /// Without an id: `Client::call` gives it one.
    pub fn subscribe(channel: &str) -> Command {
        Command::subscribe(0, channel)
    }

    pub fn subscribe_with(request: SubscribeRequest) -> Command {
        Command {
            subscribe: Some(request),
            ..Default::default()
        }
    }

    pub fn unsubscribe(channel: &str) -> Command {
        Command {
            unsubscribe: Some(UnsubscribeRequest {
                channel: channel.into(),
            }),
            ..Default::default()
        }
    }

    pub fn publish(channel: &str, data: &str) -> Command {
        Command {
            publish: Some(PublishRequest {
                channel: channel.into(),
                data: Bytes::from(data.to_owned()),
            }),
            ..Default::default()
        }
    }

    pub fn presence(channel: &str) -> Command {
        Command {
            presence: Some(PresenceRequest {
                channel: channel.into(),
            }),
            ..Default::default()
        }
    }

    pub fn presence_stats(channel: &str) -> Command {
        Command {
            presence_stats: Some(PresenceStatsRequest {
                channel: channel.into(),
            }),
            ..Default::default()
        }
    }

    pub fn history(channel: &str, limit: i32, since: Option<(u64, &str)>, reverse: bool) -> Command {
        Command {
            history: Some(HistoryRequest {
                channel: channel.into(),
                limit,
                since: since.map(|(offset, epoch)| StreamPosition {
                    offset,
                    epoch: epoch.into(),
                }),
                reverse,
            }),
            ..Default::default()
        }
    }
}

/// Both wire formats, for tests that must hold in each.
pub const FORMATS: [Format; 2] = [Format::Json, Format::Protobuf];

pub fn data_of(publication: &herald::protocol::proto::Publication) -> Value {
    serde_json::from_slice(&publication.data).unwrap()
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

impl Client {
    /// The next reply or push, whatever it is.
    pub async fn push_or_reply(&mut self) -> Reply {
        self.read().await.unwrap_or_else(|| panic!("closed: {:?}", self.closed))
    }
}

impl Client {
    /// Reads frames until a ping arrives or `deadline` passes; returns false on a ping.
    pub async fn silent_for_ping(&mut self, deadline: tokio::time::Instant) -> bool {
        let before = self.pings;
        while self.pings == before {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return true;
            }
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "{}" => self.pings += 1,
                Ok(Some(Ok(Message::Binary(b)))) if b.as_ref() == [0] => self.pings += 1,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    self.closed = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    return true;
                }
                Ok(Some(Ok(_))) => {}
                _ => return true,
            }
        }
        false
    }
}

impl Node {
    /// Starts again on the same storage after `kill()`.
    pub fn restart_after_kill(&mut self) {
        assert!(self.child.is_none(), "kill() first");
        self.spawn();
    }
}

impl Client {
    /// The next reply or push, or `None` once the connection is closed.
    pub async fn push_or_reply_raw(&mut self) -> Option<Reply> {
        self.read().await
    }
}

impl Client {
    /// Subscribes and returns the result; panics with the error otherwise.
    pub async fn subscribed(&mut self, channel: &str) -> herald::protocol::proto::SubscribeResult {
        let reply = self.call(cmd::subscribe(channel)).await;
        match reply.subscribe {
            Some(result) => result,
            None => panic!("subscribe {channel} failed: {:?}", reply.error),
        }
    }

    /// Reads pushes until a publication arrives (skipping joins and leaves).
    pub async fn next_publication(&mut self) -> herald::protocol::proto::Publication {
        loop {
            if let Some(p) = self.push().await.r#pub {
                return p;
            }
        }
    }
}

/// The cluster secret the harness gives its nodes.
pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123456789";

/// A fresh loopback address for one node's inter-node listener: unique per test process (its
/// pid) and per node, so that tests running at once never share one, and per-address firewall
/// rules can tell nodes apart.
pub fn fresh_loopback() -> [u8; 4] {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    [
        127,
        (20 + pid % 200) as u8,
        ((pid / 200) % 200 + (n / 250)) as u8,
        (n % 250 + 2) as u8,
    ]
}

/// The inter-node port every harness node binds (each on its own address).
pub const CLUSTER_PORT: u16 = 7946;

/// N `herald serve` processes forming one cluster: node `i` is named `node{i}`, its inter-node
/// listener is on its own loopback address, and every node joins through node 0.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub addresses: Vec<SocketAddr>,
    base: String,
    extra: String,
}

impl Cluster {
    /// Starts `n` nodes on `config` (without a `[cluster]` section); `extra` is appended to
    /// each node's `[cluster]` section (timing keys). Does not wait for them to converge.
    pub fn start(n: usize, config: &str, extra: &str) -> Cluster {
        let addresses: Vec<SocketAddr> = (0..n)
            .map(|_| SocketAddr::from((fresh_loopback(), CLUSTER_PORT)))
            .collect();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            addresses,
            base: config.to_owned(),
            extra: extra.to_owned(),
        };
        for i in 0..n {
            let config = cluster.node_config(i, CLUSTER_SECRET);
            cluster.nodes.push(Node::start(&config));
        }
        cluster
    }

    /// Node `i`'s whole config, with `secret`. Node 0 has no seeds: it starts the replicated
    /// log; the others join through it.
    pub fn node_config(&self, i: usize, secret: &str) -> String {
        let seeds = if i == 0 {
            String::new()
        } else {
            format!("\"{}\"", self.addresses[0])
        };
        format!(
            "{}\n[cluster]\nnode_name = \"node{i}\"\nbind = \"{}\"\nseeds = [{seeds}]\nsecret = \"{secret}\"\n{}\n",
            self.base, self.addresses[i], self.extra
        )
    }

    /// Starts one more node (named `node{len}`) that joins through node 0.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        self.addresses.push(SocketAddr::from((fresh_loopback(), CLUSTER_PORT)));
        let config = self.node_config(i, CLUSTER_SECRET);
        self.nodes.push(Node::start(&config));
        i
    }

    /// Waits until every running node sees every other as alive with its link up, and knows
    /// as many interest entries as `remote_interest` says (per node, when given).
    pub async fn converged(&self, timeout: Duration) {
        let names: Vec<String> = (0..self.nodes.len()).map(|i| format!("node{i}")).collect();
        let ok = eventually(timeout, || async {
            self.nodes.iter().all(|node| {
                let status = node.cluster_status();
                names.iter().all(|name| {
                    status["members"].as_array().is_some_and(|members| {
                        members.iter().any(|m| {
                            m["name"] == name.as_str()
                                && m["state"] == "alive"
                                && (m["link_up"] == true || status["node"] == name.as_str())
                        })
                    })
                })
            })
        })
        .await;
        if !ok {
            let statuses: Vec<Value> = self.nodes.iter().map(|n| n.cluster_status()).collect();
            panic!("the cluster did not converge within {timeout:?}: {statuses:#?}");
        }
    }
}

impl Node {
    /// `herald cluster status --json` against this node; `null` when it does not answer.
    pub fn cluster_status(&self) -> Value {
        let output = Process::new(env!("CARGO_BIN_EXE_herald"))
            .args(["cluster", "status", "--json", "--config"])
            .arg(self.config_path())
            .output()
            .expect("running herald cluster status");
        serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
    }

    /// The state of member `name` as this node sees it ("alive", "suspect", "down"), if known.
    pub fn member_state(&self, name: &str) -> Option<String> {
        let status = self.cluster_status();
        status["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["state"].as_str().map(str::to_owned))
    }
}

impl Node {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Cluster {
    /// The index of the node that leads the replicated log, as the running nodes report it
    /// (a leader that any running node names and that says so itself).
    pub fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_running())
            .find(|(_, n)| n.cluster_status()["role"] == "leader")
            .map(|(i, _)| i)
    }

    /// Waits until some node leads and every running node names it, with `voters` voters.
    pub async fn leader_elected(&self, voters: usize, timeout: Duration) -> usize {
        let mut found = None;
        let ok = eventually(timeout, || {
            found = None;
            let statuses: Vec<(usize, Value)> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.is_running())
                .map(|(i, n)| (i, n.cluster_status()))
                .collect();
            let leader = statuses
                .iter()
                .find(|(_, s)| s["role"] == "leader")
                .map(|(i, s)| (*i, s.clone()));
            if let Some((i, status)) = leader {
                let name = format!("node{i}");
                let agreed = statuses.iter().all(|(_, s)| s["leader"] == name.as_str());
                if agreed && status["voters"].as_array().is_some_and(|v| v.len() == voters) {
                    found = Some(i);
                }
            }
            let done = found.is_some();
            async move { done }
        })
        .await;
        if !ok {
            let statuses: Vec<Value> = self
                .nodes
                .iter()
                .filter(|n| n.is_running())
                .map(|n| n.cluster_status())
                .collect();
            panic!("no leader with {voters} voters within {timeout:?}: {statuses:#?}");
        }
        found.unwrap()
    }
}
