//! The client protocol on the wire, in both formats: framing, connect, codes, malformed input.

mod common;

use std::time::Duration;

use common::{cmd, token, user_token, Client, Node, CONFIG, FORMATS};
use futures_util::{SinkExt, StreamExt};
use herald::protocol::proto::{Command, ConnectRequest, RpcRequest, SendRequest};
use herald::protocol::Format;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
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
        assert!(sub.recoverable && sub.positioned && !sub.epoch.is_empty());
        assert_eq!(sub.offset, 0);
        // The subscriber's own join push arrives first.
        assert_eq!(client.push().await.join.unwrap().info.unwrap().user, "1");
        let result = node.publish(&channel, json!({"n": 1})).await;
        assert_eq!(result["offset"], 1);
        assert_eq!(result["epoch"], sub.epoch.as_str());
        let push = client.push().await;
        assert_eq!(push.channel, channel);
        let publication = push.r#pub.unwrap();
        assert_eq!(publication.offset, 1);
        assert_eq!(common::data_of(&publication), json!({"n": 1}));
    }
}
