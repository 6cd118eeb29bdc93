//! The client protocol on the wire, in both formats: framing, connect, codes, malformed input.

mod common;

use std::time::Duration;

use common::{cmd, token, user_token, Client, Node, CONFIG, FORMATS};
use futures_util::{SinkExt, StreamExt};
use herald::protocol::proto::{Command, RpcRequest, SendRequest};
use herald::protocol::Format;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn json_connect_reply_has_the_documented_shape() {
    let node = Node::start(CONFIG);
    let mut client = Client::open(&node, Format::Json).await;
    let frame =
        json!({"id": 1, "connect": {"token": user_token("42"), "name": "js", "version": "5.0.0", "data": {"x": 1}}});
    client.send_raw(Message::text(frame.to_string())).await;
    let connect = client.push_or_reply().await;
    let value: Value = serde_json::to_value(&connect).unwrap();
    assert_eq!(value["id"], 1);
    assert!(!value["connect"]["client"].as_str().unwrap().is_empty());
    assert!(!value["connect"]["version"].as_str().unwrap().is_empty());
    assert_eq!(value["connect"]["ping"], 25);
    assert_eq!(value["connect"]["pong"], true);
    assert!(
        value["connect"].get("expires").is_none(),
        "a token without exp never expires"
    );
}

#[tokio::test]
async fn publications_flow_in_both_formats() {
    let node = Node::start(CONFIG);
    for format in FORMATS {
        let mut client = Client::connected(&node, format, "1").await;
        let channel = format!("flow-{format:?}");
        let reply = client.call(cmd::subscribe(&channel)).await;
        let sub = reply.subscribe.expect("subscribe result");
        // A channel never published to has no stream yet: the empty position.
        assert!(sub.recoverable && sub.positioned && sub.epoch.is_empty());
        assert_eq!(sub.offset, 0);
        // The subscriber's own join push arrives first.
        assert_eq!(client.push().await.join.unwrap().info.unwrap().user, "1");
        let result = node.publish(&channel, json!({"n": 1})).await;
        assert_eq!(result["offset"], 1);
        assert!(result["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{result}");
        let push = client.push().await;
        assert_eq!(push.channel, channel);
        let publication = push.r#pub.unwrap();
        assert_eq!(publication.offset, 1);
        assert_eq!(common::data_of(&publication), json!({"n": 1}));
    }
}

#[tokio::test]
async fn several_commands_in_one_frame_both_formats() {
    let node = Node::start(CONFIG);
    for format in FORMATS {
        let mut client = Client::open(&node, format).await;
        let connect = Command::connect(1, &user_token("7"));
        let subscribe = Command::subscribe(2, "batch-frame");
        let mut unsubscribe = cmd::unsubscribe("batch-frame");
        unsubscribe.id = 3;
        let frame = match format {
            Format::Json => Message::text(
                [&connect, &subscribe, &unsubscribe]
                    .iter()
                    .map(|c| serde_json::to_string(c).unwrap())
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            Format::Protobuf => {
                let mut buf = Vec::new();
                for c in [&connect, &subscribe, &unsubscribe] {
                    prost::Message::encode_length_delimited(c, &mut buf).unwrap();
                }
                Message::binary(buf)
            }
        };
        client.send_raw(frame).await;
        let mut ids = Vec::new();
        while ids.len() < 3 {
            let reply = client.push_or_reply().await;
            if reply.id > 0 {
                assert!(reply.error.is_none(), "{reply:?}");
                ids.push(reply.id);
            }
        }
        assert_eq!(ids, vec![1, 2, 3]);
    }
}

#[tokio::test]
async fn empty_results_are_present_in_json() {
    let node = Node::start(CONFIG);
    let mut client = Client::connected(&node, Format::Json, "1").await;
    // Unsubscribing a channel that is not subscribed succeeds with an empty result.
    let reply = client.call(cmd::unsubscribe("never-subscribed")).await;
    let value = serde_json::to_value(&reply).unwrap();
    assert_eq!(value, json!({"id": reply.id, "unsubscribe": {}}));
    client.call(cmd::subscribe("counted")).await;
    let stats = client.call(cmd::presence_stats("counted")).await;

    assert_eq!(
        serde_json::to_value(&stats).unwrap()["presence_stats"],
        json!({"num_clients": 1, "num_users": 1})
    );
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let node = Node::start(CONFIG);
    let mut client = Client::open(&node, Format::Json).await;
    let frame = json!({"id": 1, "connect": {"token": user_token("1"), "future_field": [1, 2]}, "another": true});
    client.send_raw(Message::text(frame.to_string())).await;
    let reply = client.push_or_reply().await;
    assert!(reply.connect.is_some(), "{reply:?}");
}

/// Sends `frame` on a fresh connection and returns the close code; another connected client
/// keeps receiving publications afterwards.
async fn close_code_for(node: &Node, format: Format, connect_first: bool, frame: Message) -> u16 {
    let mut bystander = Client::connected(node, Format::Json, "bystander").await;
    bystander.call(cmd::subscribe("bystander-channel")).await;
    let mut client = if connect_first {
        Client::connected(node, format, "1").await
    } else {
        Client::open(node, format).await
    };
    client.send_raw(frame).await;
    let (code, _) = client.closed().await;
    let offset = node.publish("bystander-channel", json!({"still": "serving"})).await["offset"].clone();
    loop {
        let push = bystander.push().await;
        if let Some(publication) = push.r#pub {
            assert_eq!(json!(publication.offset), offset);
            break;
        }
    }
    code
}

#[tokio::test]
async fn malformed_input_gets_the_documented_codes_and_others_keep_being_served() {
    let node = Node::start(CONFIG);
    // Bad JSON.
    assert_eq!(
        close_code_for(&node, Format::Json, true, Message::text("{\"id\":1,")).await,
        3501
    );
    // A JSON field of the wrong type.
    assert_eq!(
        close_code_for(&node, Format::Json, true, Message::text("{\"id\":\"one\"}")).await,
        3501
    );
    // Truncated varint and truncated body in Protobuf.
    assert_eq!(
        close_code_for(&node, Format::Protobuf, true, Message::binary(vec![0xff, 0xff])).await,
        3501
    );
    assert_eq!(
        close_code_for(&node, Format::Protobuf, true, Message::binary(vec![10, 1, 2])).await,
        3501
    );
    // Binary frame on a JSON connection, text on a Protobuf one.
    assert_eq!(
        close_code_for(&node, Format::Json, true, Message::binary(vec![1, 2, 3])).await,
        3506
    );
    assert_eq!(
        close_code_for(&node, Format::Protobuf, true, Message::text("{}")).await,
        3506
    );
    // A first command that is not connect.
    let publish = serde_json::to_string(&cmd::publish("x", "{}")).unwrap();
    assert_eq!(
        close_code_for(&node, Format::Json, false, Message::text(publish)).await,
        3501
    );
    // Oversized message (default limit 64 KiB).
    let big = format!(
        "{{\"id\":5,\"publish\":{{\"channel\":\"x\",\"data\":\"{}\"}}}}",
        "a".repeat(70 * 1024)
    );
    assert_eq!(
        close_code_for(&node, Format::Json, true, Message::text(big)).await,
        1009
    );
    // A command with no request in it.
    assert_eq!(
        close_code_for(&node, Format::Json, true, Message::text("{\"id\":9}")).await,
        3501
    );
}

#[tokio::test]
async fn connection_token_outcomes() {
    let node = Node::start(CONFIG);
    for format in FORMATS {
        // Not a JWT → 3500.
        let mut client = Client::open(&node, format).await;
        client.send(&common::cmd::connect("not-a-jwt")).await;
        assert_eq!(client.closed().await.0, 3500);
        // Wrong signature → 3500.
        let forged = herald::auth::token::mint_hs256("other-secret", &json!({"sub": "1"}));
        let mut client = Client::open(&node, format).await;
        client.send(&common::cmd::connect(&forged)).await;
        assert_eq!(client.closed().await.0, 3500);
        // No token without anonymous/insecure → 3501.
        let mut client = Client::open(&node, format).await;
        client.send(&common::cmd::connect("")).await;
        assert_eq!(client.closed().await.0, 3501);
        // Expired → error 109, the connection stays and a fresh token then connects.
        let mut client = Client::open(&node, format).await;
        let reply = client
            .connect(&token(json!({"sub": "1", "exp": common::now() - 5})))
            .await;
        assert_eq!(reply.error.unwrap().code, 109);
        let reply = client.connect(&user_token("1")).await;
        assert!(reply.connect.is_some(), "{reply:?}");
        // A token with only iat is the anonymous user.
        let mut client = Client::open(&node, format).await;
        let reply = client.connect(&token(json!({"iat": common::now()}))).await;
        assert!(reply.connect.is_some());
        // Connecting twice is a protocol error.
        let mut twice = Client::connected(&node, format, "1").await;
        twice
            .send(&Command {
                id: 50,
                ..common::cmd::connect(&user_token("1"))
            })
            .await;
        assert_eq!(twice.closed().await.0, 3501);
    }
}

#[tokio::test]
async fn rpc_is_not_available_and_send_is_refused() {
    let node = Node::start(CONFIG);
    for format in FORMATS {
        let mut client = Client::connected(&node, format, "1").await;
        let reply = client
            .call(Command {
                rpc: Some(RpcRequest {
                    method: "m".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        assert_eq!(reply.error.unwrap().code, 108);
        client
            .send(&Command {
                send: Some(SendRequest { data: "{}".into() }),
                ..Default::default()
            })
            .await;
        assert_eq!(client.closed().await.0, 3508);
    }
}

#[tokio::test]
async fn stale_connections_are_closed() {
    let node = Node::start(
        &format!("{CONFIG}\n[client.x]\n")
            .replace("[client.x]\n", "")
            .replace("[client]\n", "[client]\nstale_close_delay = \"300ms\"\n"),
    );
    let mut client = Client::open(&node, Format::Json).await;
    assert_eq!(client.closed().await.0, 3502);
}

#[tokio::test]
async fn pings_pongs_and_no_pong() {
    let config = CONFIG.replace(
        "[client]\n",
        "[client]\nping_interval = \"400ms\"\npong_timeout = \"300ms\"\n",
    );
    let node = Node::start(&config);
    for format in FORMATS {
        // A client that answers every ping stays connected through several of them.
        let mut client = Client::connected(&node, format, "1").await;
        let pong = Command::default();
        let mut answered = 0;
        while answered < 3 {
            let before = client.pings;
            assert!(!client.silent_for(Duration::from_millis(50)).await || client.pings >= before);
            // Read until a ping arrives, then pong.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while client.pings == before && client.silent_for_ping(deadline).await {}
            client.send(&pong).await;
            answered += 1;
        }
        assert!(client.closed.is_none());
        // A client that never answers is closed with 3012.
        let mut silent = Client::connected(&node, format, "2").await;
        assert_eq!(silent.closed().await.0, 3012);
        // A pong nobody asked for is a protocol error.
        let mut eager = Client::connected(&node, format, "3").await;
        eager.send(&pong).await;
        assert_eq!(eager.closed().await.0, 3501);
    }
}

#[tokio::test]
async fn expiring_connection_refreshes_or_is_closed() {
    let config = CONFIG.replace("[client]\n", "[client]\nexpired_close_delay = \"0s\"\n");
    let node = Node::start(&config);
    for format in FORMATS {
        let mut client = Client::open(&node, format).await;
        let reply = client
            .connect(&token(json!({"sub": "5", "exp": common::now() + 2})))
            .await;
        let result = reply.connect.unwrap();
        assert!(result.expires);
        assert!(result.ttl >= 1 && result.ttl <= 2, "ttl {}", result.ttl);
        // Refresh with a longer-lived token: the connection outlives the first expiry.
        let refreshed = client
            .call(Command {
                refresh: Some(herald::protocol::proto::RefreshRequest {
                    token: token(json!({"sub": "5", "exp": common::now() + 60})),
                }),
                ..Default::default()
            })
            .await
            .refresh
            .unwrap();
        assert!(refreshed.expires && refreshed.ttl > 50);
        assert!(
            client.silent_for(Duration::from_secs(3)).await,
            "refreshed connection stays open"
        );
        // A refresh token for another user is an invalid token.
        client
            .send(&Command {
                id: 99,
                refresh: Some(herald::protocol::proto::RefreshRequest { token: user_token("6") }),
                ..Default::default()
            })
            .await;
        assert_eq!(client.closed().await.0, 3500);
        // Without refresh the connection is closed with 3005 once expired.
        let mut lazy = Client::open(&node, format).await;
        lazy.connect(&token(json!({"sub": "5", "exp": common::now() + 1})))
            .await;
        assert_eq!(lazy.closed().await.0, 3005);
    }
}

#[tokio::test]
async fn subprotocol_and_query_select_the_format() {
    let node = Node::start(CONFIG);
    // An empty Sec-WebSocket-Protocol header (the Python SDK sends one) means JSON, not echoed.
    // Handshake by hand: client libraries refuse to send that header themselves.
    let mut tcp = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let handshake = format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: \r\n\r\n",
        node.addr
    );
    tokio::io::AsyncWriteExt::write_all(&mut tcp, handshake.as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-protocol"), "{head}");
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    let mut ws = ws;
    ws.send(Message::text(
        serde_json::to_string(&common::cmd::connect(&user_token("1"))).unwrap(),
    ))
    .await
    .unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Text(text) => assert!(text.as_str().contains("\"connect\"")),
        other => panic!("expected a JSON text frame, got {other:?}"),
    }
    // ?format=protobuf selects Protobuf without a subprotocol.
    let url = format!("{}?format=protobuf", node.ws_url());
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut client = Client::over(ws, Format::Protobuf);
    let reply = client.connect(&user_token("1")).await;
    assert!(reply.connect.is_some());
}

/// Frames of every length encoding (7, 16 and 64 bits), pings answered with pongs between whole
/// frames, and a client's close answered with exactly one close frame.
#[tokio::test]
async fn websocket_framing_and_control_frames() {
    let node = Node::start(CONFIG);
    for format in FORMATS {
        let channel = format!("frames-{format:?}");
        let mut client = Client::connected(&node, format, "1").await;
        client.subscribed(&channel).await;
        for size in [10, 1_000, 100_000] {
            let text = "x".repeat(size);
            node.publish(&channel, json!({ "text": text })).await;
            let publication = client.next_publication().await;
            let data: Value = serde_json::from_slice(&publication.data).unwrap();
            assert_eq!(data["text"].as_str().map(str::len), Some(size), "{format:?}");
        }

        // A ping while publications are flowing: answered with its payload, and every
        // publication still arrives whole and in order.
        let publishes = async {
            for n in 0..50 {
                node.publish(&channel, json!({ "n": n })).await;
            }
        };
        let ping = async {
            client.send_raw(Message::Ping("are you there".into())).await;
            let mut pong = None;
            let mut next = 0;
            while pong.is_none() || next < 50 {
                match client.next_raw().await.expect("open") {
                    Message::Pong(payload) => pong = Some(payload),
                    Message::Text(text) => {
                        for line in text.as_str().split('\n') {
                            let reply: Value = serde_json::from_str(line).unwrap();
                            assert_eq!(reply["push"]["pub"]["data"]["n"], next);
                            next += 1;
                        }
                    }
                    Message::Binary(mut data) => {
                        while !data.is_empty() {
                            use prost::Message as _;
                            let reply = herald::protocol::proto::Reply::decode_length_delimited(&mut data).unwrap();
                            let publication = reply.push.unwrap().r#pub.unwrap();
                            let value: Value = serde_json::from_slice(&publication.data).unwrap();
                            assert_eq!(value["n"], next);
                            next += 1;
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            pong
        };
        let ((), pong) = tokio::join!(publishes, ping);
        assert_eq!(pong.as_deref(), Some(&b"are you there"[..]));

        // The client closes: one close frame comes back, then the stream ends.
        client
            .send_raw(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            })))
            .await;
        let mut closes = 0;
        while let Some(message) = client.next_raw().await {
            match message {
                Message::Close(frame) => {
                    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1000));
                    closes += 1;
                }
                other => panic!("after the close handshake: {other:?}"),
            }
        }
        assert_eq!(closes, 1, "{format:?}");
    }
}

/// A client that breaks the WebSocket framing is told so with RFC 6455's codes (1002 protocol
/// error, 1007 invalid UTF-8, 1009 too big), not 3000 "reconnect", and a bystander is served.
#[tokio::test]
async fn websocket_violations_close_with_rfc_codes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = Node::start(CONFIG);
    let mut bystander = Client::connected(&node, Format::Json, "calm").await;
    bystander.subscribed("calm").await;

    /// A masked client frame (mask key 0: the payload is sent as is).
    fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mut out = vec![first, payload.len() as u8 | if masked { 0x80 } else { 0 }];
        if masked {
            out.extend_from_slice(&[0, 0, 0, 0]);
        }
        out.extend_from_slice(payload);
        out
    }
    async fn close_code_after(node: &Node, bytes: Vec<u8>) -> Option<u16> {
        let mut socket = tokio::net::TcpStream::connect(node.addr).await.unwrap();
        let head = format!(
            "GET /connection/websocket HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            node.addr
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let response_end = loop {
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(n > 0, "no handshake answer");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        assert!(buf.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&buf));
        buf.drain(..response_end);
        socket.write_all(&bytes).await.unwrap();
        // Server frames are unmasked; find the close frame (opcode 8) among them.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            while buf.len() >= 2 {
                let (opcode, len) = (buf[0] & 0x0f, usize::from(buf[1] & 0x7f));
                let (header, len) = match len {
                    126 if buf.len() >= 4 => (4, usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
                    126 | 127 => break,
                    n => (2, n),
                };
                if buf.len() < header + len {
                    break;
                }
                if opcode == 8 {
                    return (len >= 2).then(|| u16::from_be_bytes([buf[header], buf[header + 1]]));
                }
                buf.drain(..header + len);
            }
            match tokio::time::timeout_at(deadline, socket.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    let connect = br#"{"id":1,"connect":{}}"#;
    let cases: [(&str, Vec<u8>, u16); 7] = [
        ("reserved bit", frame(0x80 | 0x40 | 0x1, connect, true), 1002),
        ("unmasked client frame", frame(0x81, connect, false), 1002),
        ("reserved data opcode", frame(0x80 | 0x3, b"x", true), 1002),
        ("reserved control opcode", frame(0x80 | 0xB, b"", true), 1002),
        ("fragmented ping", frame(0x9, b"x", true), 1002),
        ("continuation without a start", frame(0x80, b"x", true), 1002),
        (
            "text that is not UTF-8",
            frame(0x81, &[0x7b, 0xff, 0xfe, 0x7d], true),
            1007,
        ),
    ];
    for (what, bytes, expected) in cases {
        assert_eq!(close_code_after(&node, bytes).await, Some(expected), "{what}");
    }
    common::still_served(&node, &mut bystander, "calm").await;
}
