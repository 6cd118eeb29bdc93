//! HTTP-streaming and SSE fallbacks with `/emulation` (issue 12 item 1), against a real node
//! over loopback with a plain HTTP client: what an SDK sees when WebSocket is blocked.

mod common;

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use common::{user_token, Node, CONFIG, WAIT};
use herald::protocol::proto::{Command, ConnectRequest, EmulationRequest, PublishRequest, Reply, SubscribeRequest};
use prost::Message as _;
use serde_json::{json, Value};

fn config(extra: &str) -> String {
    format!("{CONFIG}\n[http_stream]\nenabled = true\n[sse]\nenabled = true\n{extra}")
}

/// One streaming response, read as the SDK reads it.
struct Stream {
    response: reqwest::Response,
    buffer: BytesMut,
    kind: Kind,
    /// From the connect reply.
    session: String,
    node: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Json,
    Protobuf,
    Sse,
}

impl Stream {
    async fn http_stream(node: &Node, kind: Kind, connect: Command) -> Stream {
        let (content_type, body) = match kind {
            Kind::Protobuf => ("application/octet-stream", connect.encode_length_delimited_to_vec()),
            _ => ("application/json", serde_json::to_vec(&connect).unwrap()),
        };
        let response = reqwest::Client::new()
            .post(node.http("/connection/http_stream"))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        Stream::opened(response, kind).await
    }

    async fn sse(node: &Node, connect: Command) -> Stream {
        let query = serde_json::to_string(&connect).unwrap();
        let response = reqwest::Client::new()
            .get(node.http("/connection/sse"))
            .query(&[("cf_connect", query)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream; charset=utf-8");
        Stream::opened(response, Kind::Sse).await
    }

    async fn opened(response: reqwest::Response, kind: Kind) -> Stream {
        let mut stream = Stream {
            response,
            buffer: BytesMut::new(),
            kind,
            session: String::new(),
            node: String::new(),
        };
        let reply = stream.next().await.expect("a connect reply");
        let Some(connect) = reply.connect.clone() else {
            panic!("not a connect reply: {reply:?}");
        };
        assert!(!connect.session.is_empty() && !connect.node.is_empty());
        assert_ne!(connect.session, connect.client, "the session id is not the client id");
        stream.session = connect.session;
        stream.node = connect.node;
        stream
    }

    /// The next reply or push; `None` when the response ended.
    async fn next(&mut self) -> Option<Reply> {
        loop {
            if let Some(reply) = self.parse() {
                return Some(reply);
            }
            match tokio::time::timeout(WAIT, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(Ok(None)) | Ok(Err(_)) => return None,
                Err(_) => panic!("nothing on the stream for {WAIT:?}"),
            }
        }
    }

    /// The next message that is not a ping.
    async fn next_message(&mut self) -> Option<Reply> {
        loop {
            let reply = self.next().await?;
            if reply != Reply::default() {
                return Some(reply);
            }
        }
    }

    fn parse(&mut self) -> Option<Reply> {
        match self.kind {
            Kind::Protobuf => {
                let mut peek = &self.buffer[..];
                let len = prost::encoding::decode_varint(&mut peek).ok()? as usize;
                let prefix = self.buffer.len() - peek.len();
                if peek.len() < len {
                    return None;
                }
                self.buffer.advance(prefix);
                let message = self.buffer.split_to(len);
                Some(Reply::decode(&message[..]).unwrap())
            }
            Kind::Json => {
                let end = self.buffer.iter().position(|&b| b == b'\n')?;
                let line = self.buffer.split_to(end + 1);
                Some(serde_json::from_slice(&line[..end]).unwrap())
            }
            Kind::Sse => loop {
                let end = self.buffer.iter().position(|&b| b == b'\n')?;
                let line = self.buffer.split_to(end + 1);
                let line = std::str::from_utf8(&line[..end]).unwrap().trim_end_matches('\r');
                if let Some(data) = line.strip_prefix("data: ") {
                    return Some(serde_json::from_str(data).unwrap());
                }
                // Blank lines end events; the stream opens with one.
                assert!(line.is_empty(), "unexpected SSE line {line:?}");
            },
        }
    }

    /// Sends commands the way the SDK does, through `/emulation`; returns the HTTP status.
    async fn send(&self, node: &Node, commands: &[Command]) -> u16 {
        let request = reqwest::Client::new().post(node.http("/emulation"));
        let request = match self.kind {
            Kind::Protobuf => {
                let mut data = Vec::new();
                for command in commands {
                    command.encode_length_delimited(&mut data).unwrap();
                }
                let body = EmulationRequest {
                    node: self.node.clone(),
                    session: self.session.clone(),
                    data: Bytes::from(data),
                };
                request
                    .header("Content-Type", "application/octet-stream")
                    .body(body.encode_to_vec())
            }
            _ => {
                let data: Vec<String> = commands.iter().map(|c| serde_json::to_string(c).unwrap()).collect();
                let body = json!({"session": self.session, "node": self.node, "data": data.join("\n")});
                request
                    .header("Content-Type", "application/json")
                    .body(body.to_string())
            }
        };
        request.send().await.unwrap().status().as_u16()
    }
}

fn connect(user: &str) -> Command {
    Command {
        id: 1,
        connect: Some(ConnectRequest {
            token: user_token(user),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn subscribe(id: u32, channel: &str) -> Command {
    Command {
        id,
        subscribe: Some(SubscribeRequest {
            channel: channel.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn publish(id: u32, channel: &str, data: &[u8]) -> Command {
    Command {
        id,
        publish: Some(PublishRequest {
            channel: channel.into(),
            data: Bytes::copy_from_slice(data),
        }),
        ..Default::default()
    }
}

/// Each transport and format: connect, subscribe and publish through `/emulation`, receive
/// the subscriber's own publication and one from the API on the stream, in order.
#[tokio::test]
async fn every_fallback_carries_a_whole_session() {
    let node = Node::start(&config(""));
    for kind in [Kind::Json, Kind::Protobuf, Kind::Sse] {
        let mut stream = match kind {
            Kind::Sse => Stream::sse(&node, connect("alice")).await,
            _ => Stream::http_stream(&node, kind, connect("alice")).await,
        };
        let channel = format!("room-{}", kind as u8);
        let data: &[u8] = match kind {
            Kind::Protobuf => b"from the client",
            _ => br#"{"from":"client"}"#,
        };
        assert_eq!(
            stream
                .send(&node, &[subscribe(2, &channel), publish(3, &channel, data)])
                .await,
            204
        );
        // The replies to both commands, and the subscriber's own publication (join pushes
        // come along too).
        let mut replies: Vec<Reply> = Vec::new();
        let done = |replies: &[Reply]| {
            [2, 3].iter().all(|id| replies.iter().any(|r| r.id == *id))
                && replies
                    .iter()
                    .any(|r| r.push.as_ref().is_some_and(|p| p.r#pub.is_some()))
        };
        while !done(&replies) {
            replies.push(stream.next_message().await.expect("the stream stays open"));
        }
        let subscribed = replies.iter().find(|r| r.id == 2).unwrap();
        assert!(subscribed.subscribe.is_some(), "{subscribed:?}");
        let published = replies.iter().find(|r| r.id == 3).unwrap();
        assert!(published.error.is_none(), "{published:?}");
        let push = replies.iter().find_map(|r| r.push.as_ref()?.r#pub.as_ref()).unwrap();
        assert_eq!(&push.data[..], data);

        node.publish(&channel, json!({"from": "api"})).await;
        let push = loop {
            let push = stream.next_message().await.unwrap().push.expect("a push");
            if push.r#pub.is_some() {
                break push;
            }
        };
        assert_eq!(push.channel, channel);
        let data = push.r#pub.unwrap().data;
        match kind {
            Kind::Protobuf => assert_eq!(serde_json::from_slice::<Value>(&data).unwrap(), json!({"from": "api"})),
            _ => assert_eq!(&data[..], br#"{"from":"api"}"#),
        }
    }
}

/// A server-side disconnect reaches a stream as a disconnect push, and then the response ends
/// (a stream has no close code); the session is gone from the node.
#[tokio::test]
async fn a_disconnect_is_a_push_and_then_the_end_of_the_stream() {
    let node = Node::start(&config(""));
    for kind in [Kind::Json, Kind::Protobuf, Kind::Sse] {
        let mut stream = match kind {
            Kind::Sse => Stream::sse(&node, connect("bob")).await,
            _ => Stream::http_stream(&node, kind, connect("bob")).await,
        };
        let (status, body) = node
            .api(
                "disconnect",
                json!({"user": "bob", "disconnect": {"code": 4501, "reason": "go away"}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let push = stream.next_message().await.expect("a disconnect push").push.unwrap();
        let disconnect = push.disconnect.expect("a disconnect push");
        assert_eq!((disconnect.code, disconnect.reason.as_str()), (4501, "go away"));
        assert!(stream.next().await.is_none(), "the response ends after the push");
        // Later commands for the session are accepted and dropped.
        assert_eq!(stream.send(&node, &[subscribe(5, "x")]).await, 204);
    }
}

/// A client that stops answering pings is closed with 3012, told by a push; pongs sent through
/// `/emulation` keep it connected.
#[tokio::test]
async fn pongs_arrive_through_emulation() {
    // A ping every second, each to be answered within half of it.
    let node = Node::start(&config("").replace(
        "[client]\n",
        "[client]\nping_interval = \"1s\"\npong_timeout = \"500ms\"\n",
    ));
    let mut answering = Stream::http_stream(&node, Kind::Json, connect("carol")).await;
    let mut silent = Stream::http_stream(&node, Kind::Json, connect("dave")).await;
    for _ in 0..3 {
        assert_eq!(answering.next().await.expect("a ping"), Reply::default());
        assert_eq!(answering.send(&node, &[Command::default()]).await, 204);
    }
    let push = silent.next_message().await.expect("a disconnect push").push.unwrap();
    assert_eq!(push.disconnect.unwrap().code, 3012);
    assert!(silent.next().await.is_none());
    assert_eq!(answering.send(&node, &[subscribe(2, "still-here")]).await, 204);
    let reply = answering.next_message().await.unwrap();
    assert!(reply.subscribe.is_some(), "{reply:?}");
}

/// CORS by client.allowed_origins (preflight included), the enable keys, body limits, and the
/// answers of `/emulation` to bodies it cannot use.
#[tokio::test]
async fn endpoints_answer_bad_requests_clearly() {
    let node =
        Node::start(&config("").replace("[client]\n", "[client]\nallowed_origins = [\"https://app.example\"]\n"));
    let http = reqwest::Client::new();

    let preflight = http
        .request(reqwest::Method::OPTIONS, node.http("/connection/http_stream"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "https://app.example");
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert_eq!(headers["access-control-allow-headers"], "content-type");
    assert!(headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));

    let refused = http
        .post(node.http("/connection/http_stream"))
        .header("Origin", "https://evil.example")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    let too_big = http
        .post(node.http("/connection/http_stream"))
        .body(vec![b' '; 70_000])
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    // The body was left unread: the connection closes, and the client's next request goes on a
    // new one instead of failing on this one.
    assert_eq!(too_big.headers()["connection"], "close");
    assert_eq!(
        http.get(node.http("/connection/sse")).send().await.unwrap().status(),
        400
    );
    assert_eq!(
        http.get(node.http("/connection/http_stream"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );

    let emulation = |body: &'static str| http.post(node.http("/emulation")).body(body).send();
    assert_eq!(emulation("not json").await.unwrap().status(), 400);
    assert_eq!(
        emulation(r#"{"session":"s","node":"another-node","data":"{}"}"#)
            .await
            .unwrap()
            .status(),
        404
    );
    let stream = Stream::http_stream(&node, Kind::Json, connect("erin")).await;
    let unknown = json!({"session": "no-such-session", "node": stream.node, "data": "{}"});
    let status = http
        .post(node.http("/emulation"))
        .body(unknown.to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204, "an unknown session on this node is not an error");

    // Off by default.
    let off = Node::start(CONFIG);
    for path in ["/connection/http_stream", "/connection/sse", "/emulation"] {
        let status = http.post(off.http(path)).body("{}").send().await.unwrap().status();
        assert_eq!(status, 404, "{path}");
    }
}

/// Streaming sessions are client connections, not pending HTTP ones: many of them from one
/// address do not take the per-address cap of pending connections, and stay open past the
/// idle timeout. Each one is in the registry until its client goes away.
#[tokio::test]
async fn streaming_sessions_outlive_the_http_limits() {
    // 12 sessions from one address, against a per-address cap of 4 (a quarter of 16).
    let node = Node::start(&config(
        "[http]\nmax_pending_connections = 16\nmax_pending_connections_per_ip = 4\nidle_timeout = \"1s\"\n",
    ));
    let mut streams = Vec::new();
    for i in 0..12 {
        streams.push(Stream::http_stream(&node, Kind::Json, connect(&format!("user-{i}"))).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(node.metric("herald_connections").await, 12.0);
    // Streaming sessions hold no pending slot: only the metrics request itself does, once the
    // node has seen the previous one closed.
    let no_slots = common::eventually(WAIT, || async {
        node.metric("herald_http_pending_connections").await <= 1.0
    })
    .await;
    assert!(
        no_slots,
        "pending connections: {}",
        node.metric("herald_http_pending_connections").await
    );
    for stream in &mut streams {
        assert_eq!(stream.send(&node, &[subscribe(2, "crowd")]).await, 204);
        let reply = stream.next_message().await.expect("still open after the idle timeout");
        assert!(reply.subscribe.is_some(), "{reply:?}");
    }
    // Each send above was a short request on a connection of its own, which the client closed:
    // wait for the node to see them all closed before the API calls take slots of their own.
    let released = common::eventually(WAIT, || async {
        node.metric("herald_http_pending_connections").await <= 1.0
    })
    .await;
    assert!(released, "closed requests release their slots");
    let (status, presence) = node.api("presence_stats", json!({"channel": "crowd"})).await;
    assert_eq!(status, 200);
    assert_eq!(presence["result"]["num_clients"], 12);
    // Clients going away end their sessions.
    streams.truncate(2);
    let gone = common::eventually(WAIT, || async {
        let (_, presence) = node.api("presence_stats", json!({"channel": "crowd"})).await;
        presence["result"]["num_clients"] == 2
    })
    .await;
    assert!(gone, "sessions of closed responses must end");
}

/// The demo page is off unless `[demo]` enables it; on, it serves the page, the bundle from
/// `demo.centrifuge_js` (a clear 404 when npm has not installed it) and tokens that connect.
#[tokio::test]
async fn the_demo_page_is_off_by_default() {
    let http = reqwest::Client::new();
    let off = Node::start(CONFIG);
    for path in ["/demo", "/demo/centrifuge.js", "/demo/token?user=a"] {
        assert_eq!(http.get(off.http(path)).send().await.unwrap().status(), 404, "{path}");
    }
    let on = Node::start(&config(
        "[demo]\nenabled = true\ncentrifuge_js = \"/nonexistent/centrifuge.js\"\n",
    ));
    let page = http.get(on.http("/demo")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/demo/centrifuge.js"));
    let bundle = http.get(on.http("/demo/centrifuge.js")).send().await.unwrap();
    assert_eq!(bundle.status(), 404);
    assert!(bundle.text().await.unwrap().contains("demo.centrifuge_js"));
    let token: Value = http
        .get(on.http("/demo/token?user=zoe"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut client = common::Client::open(&on, herald::protocol::Format::Json).await;
    let reply = client.connect(token["token"].as_str().unwrap()).await;
    assert!(reply.connect.is_some(), "{reply:?}");
}

/// In a cluster, `/emulation` may reach any node (a load balancer without sticky sessions): the
/// node that gets it forwards the commands over the cluster link to the node named in the
/// request, whose session answers on its stream. A node name that no member has is 404.
#[tokio::test]
async fn emulation_requests_reach_their_session_through_any_node() {
    let fast = "probe_interval = \"200ms\"\nprobe_timeout = \"100ms\"\nsuspect_timeout = \"1s\"";
    let cluster = common::Cluster::start(2, &config(""), fast);
    cluster.converged(Duration::from_secs(20)).await;
    let (home, other) = (&cluster.nodes[0], &cluster.nodes[1]);
    for kind in [Kind::Json, Kind::Protobuf, Kind::Sse] {
        let mut stream = match kind {
            Kind::Sse => Stream::sse(home, connect("alice")).await,
            _ => Stream::http_stream(home, kind, connect("alice")).await,
        };
        assert_eq!(stream.node, "node0");
        let channel = format!("forwarded-{}", kind as u8);
        // Sent to the other node, which holds no such session.
        assert_eq!(stream.send(other, &[subscribe(2, &channel)]).await, 204);
        let reply = loop {
            let reply = stream.next_message().await.expect("the stream stays open");
            if reply.id == 2 {
                break reply;
            }
        };
        assert!(reply.subscribe.is_some() && reply.error.is_none(), "{reply:?}");
        other.publish(&channel, json!({"via": "node1"})).await;
        let push = loop {
            let push = stream.next_message().await.unwrap().push.expect("a push");
            if push.r#pub.is_some() {
                break push;
            }
        };
        assert_eq!(push.channel, channel);
        stream.node = "node9".into();
        assert_eq!(stream.send(other, &[subscribe(3, "elsewhere")]).await, 404);
    }
}
