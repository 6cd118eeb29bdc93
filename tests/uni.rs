//! Unidirectional transports (issue 12 item 2): `uni_websocket`, `uni_http_stream` and
//! `uni_sse` against a real node, read the way a client without an SDK reads them.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{now, token, Node, CONFIG, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn config() -> String {
    let enabled = "[uni_websocket]\nenabled = true\n[uni_http_stream]\nenabled = true\n[uni_sse]\nenabled = true\n";
    // Pings every second with a pong timeout: unidirectional clients never answer, and must not
    // be closed for it.
    let client = "[client]\nping_interval = \"1s\"\npong_timeout = \"500ms\"\nsubscribe_to_personal_channel = true\n";
    format!("{}\n{enabled}", CONFIG.replace("[client]\n", client))
}

/// A connection token for `user` with server-side subscriptions to `channels`.
fn connect_request(user: &str, channels: &[&str]) -> Value {
    json!({"token": token(json!({"sub": user, "channels": channels, "iat": now()}))})
}

fn is_join_leave(push: &Value) -> bool {
    push.get("join").is_some() || push.get("leave").is_some()
}

/// One unidirectional stream: JSON lines or SSE events, each a bare push.
struct UniStream {
    response: reqwest::Response,
    buffer: BytesMut,
    sse: bool,
}

impl UniStream {
    async fn http_stream(node: &Node, request: &Value) -> UniStream {
        let response = reqwest::Client::new()
            .post(node.http("/connection/uni_http_stream"))
            .body(request.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        UniStream {
            response,
            buffer: BytesMut::new(),
            sse: false,
        }
    }

    async fn sse(node: &Node, request: &Value) -> UniStream {
        let response = reqwest::Client::new()
            .get(node.http("/connection/uni_sse"))
            .query(&[("cf_connect", request.to_string())])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        UniStream {
            response,
            buffer: BytesMut::new(),
            sse: true,
        }
    }

    /// The next push (pings included); `None` when the response ended.
    async fn next(&mut self) -> Option<Value> {
        loop {
            while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line = self.buffer.split_to(end + 1);
                let line = std::str::from_utf8(&line[..end]).unwrap().trim_end_matches('\r');
                let json = match self.sse {
                    true => match line.strip_prefix("data: ") {
                        Some(data) => data,
                        None => continue,
                    },
                    false => line,
                };
                return Some(serde_json::from_str(json).unwrap());
            }
            match tokio::time::timeout(WAIT, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(_) => return None,
                Err(_) => panic!("nothing on the stream for {WAIT:?}"),
            }
        }
    }

    /// The next push that is not a ping or a join/leave (the test config turns those on).
    async fn push(&mut self) -> Value {
        loop {
            let push = self.next().await.expect("the stream is open");
            if push != json!({}) && !is_join_leave(&push) {
                return push;
            }
        }
    }
}

/// Over each stream: a connect push naming the server-side subscriptions, then the channels'
/// publications as bare pushes; pings keep coming and, unanswered, close nothing.
#[tokio::test]
async fn uni_streams_receive_server_side_subscriptions() {
    let node = Node::start(&config());
    for sse in [false, true] {
        let request = connect_request("ann", &["news"]);
        let mut stream = match sse {
            true => UniStream::sse(&node, &request).await,
            false => UniStream::http_stream(&node, &request).await,
        };
        let connect = stream.push().await;
        let result = &connect["connect"];
        assert!(result["client"].is_string(), "{connect}");
        assert_eq!(result["pong"], Value::Null, "no pong expected: {connect}");
        assert!(
            result["subs"]["news"].is_object() && result["subs"]["#ann"].is_object(),
            "{connect}"
        );

        node.publish("news", json!({"headline": sse})).await;
        let push = stream.push().await;
        assert_eq!(push["channel"], "news", "{push}");
        assert_eq!(push["pub"]["data"], json!({"headline": sse}));

        // Three pings, unanswered, and the connection is still served.
        let mut pings = 0;
        while pings < 3 {
            if stream.next().await.expect("still open") == json!({}) {
                pings += 1;
            }
        }
        let (status, _) = node.api("subscribe", json!({"user": "ann", "channel": "later"})).await;
        assert_eq!(status, 200);
        let subscribed = stream.push().await;
        assert_eq!(subscribed["channel"], "later", "{subscribed}");
        assert!(subscribed["subscribe"].is_object(), "{subscribed}");
        node.publish("#ann", json!("personal")).await;
        let push = stream.push().await;
        assert_eq!(
            (push["channel"].as_str(), &push["pub"]["data"]),
            (Some("#ann"), &json!("personal"))
        );

        let (status, _) = node
            .api(
                "disconnect",
                json!({"user": "ann", "disconnect": {"code": 4000, "reason": "bye"}}),
            )
            .await;
        assert_eq!(status, 200);
        let push = stream.push().await;
        assert_eq!(push["disconnect"]["code"], 4000, "{push}");
        assert!(
            stream.next().await.is_none(),
            "the stream ends after the disconnect push"
        );
    }
}

/// A connect request naming a stream position recovers what was missed, in the connect push.
#[tokio::test]
async fn uni_connect_recovers_from_a_position() {
    let node = Node::start(&config());
    let first = node.publish("news", json!(1)).await;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    node.publish("news", json!(2)).await;
    node.publish("news", json!(3)).await;
    let mut request = connect_request("bea", &["news"]);
    request["subs"] = json!({"news": {"recover": true, "epoch": epoch, "offset": 1}});
    let mut stream = UniStream::http_stream(&node, &request).await;
    let connect = stream.push().await;
    let news = &connect["connect"]["subs"]["news"];
    assert_eq!(news["recovered"], true, "{connect}");
    let data: Vec<&Value> = news["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["data"])
        .collect();
    assert_eq!(data, [&json!(2), &json!(3)]);
}

/// uni_websocket: the connect request as the first message (or in the URL), bare pushes as
/// text messages, and a disconnect push before the close frame, which carries the code.
#[tokio::test]
async fn uni_websocket_receives_pushes() {
    let node = Node::start(&config());
    let url = node
        .ws_url()
        .replace("/connection/websocket", "/connection/uni_websocket");
    for in_url in [false, true] {
        let request = connect_request("cid", &["news"]);
        let target = match in_url {
            true => {
                let query: String = request
                    .to_string()
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                format!("{url}?cf_connect={query}")
            }
            false => url.clone(),
        };
        let (mut ws, _) = tokio_tungstenite::connect_async(target).await.unwrap();
        if !in_url {
            ws.send(Message::text(request.to_string())).await.unwrap();
        }
        let connect = next(&mut ws).await.unwrap();
        assert!(connect["connect"]["subs"]["news"].is_object(), "{connect}");
        node.publish("news", json!({"n": 1})).await;
        let push = next(&mut ws).await.unwrap();
        assert_eq!(
            (push["channel"].as_str(), &push["pub"]["data"]),
            (Some("news"), &json!({"n": 1}))
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (status, _) = node
            .api(
                "disconnect",
                json!({"user": "cid", "disconnect": {"code": 4001, "reason": "bye"}}),
            )
            .await;
        assert_eq!(status, 200);
        let push = next(&mut ws).await.unwrap();
        assert_eq!(push["disconnect"]["code"], 4001, "{push}");
        assert_eq!(next(&mut ws).await.unwrap_err(), Some(4001));
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next push that is not a ping or a join/leave, or the close frame's code.
async fn next(ws: &mut Socket) -> Result<Value, Option<u16>> {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        match message {
            Some(Ok(Message::Text(text))) if text.as_str() == "{}" => continue,
            Some(Ok(Message::Text(text))) => {
                let push: Value = serde_json::from_str(&text).unwrap();
                if !is_join_leave(&push) {
                    return Ok(push);
                }
            }
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
}

/// Off by default; a body that is not a ConnectRequest is 400.
#[tokio::test]
async fn uni_endpoints_refuse_what_they_cannot_serve() {
    let node = Node::start(&config());
    let http = reqwest::Client::new();
    let bad = http
        .post(node.http("/connection/uni_http_stream"))
        .body("[1,2,3]")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let off = Node::start(CONFIG);
    for path in [
        "/connection/uni_http_stream",
        "/connection/uni_sse",
        "/connection/uni_websocket",
    ] {
        assert_eq!(
            http.post(off.http(path)).body("{}").send().await.unwrap().status(),
            404,
            "{path}"
        );
    }
}
