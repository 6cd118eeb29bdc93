//! The HTTP server API (`POST /api/<method>`) against a real `herald serve` process: auth, body
//! validation, every method's result shape, and its effect on live WebSocket clients.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use common::{cmd, eventually, user_token, Client, Node, API_KEY, CONFIG};
use herald::protocol::proto::Push;
use herald::protocol::Format;
use serde_json::{json, Value};

const TRANSPORT: (&str, &str) = ("X-Herald-Error-Mode", "transport");

/// Opens and connects a client; returns it with its client id.
async fn connect_with_id(node: &Node, format: Format, user: &str) -> (Client, String) {
    let mut client = Client::open(node, format).await;
    let reply = client.connect(&user_token(user)).await;
    assert!(reply.error.is_none(), "connect failed: {reply:?}");
    let id = reply.connect.expect("connect result").client;
    assert!(!id.is_empty());
    (client, id)
}

/// A connected client subscribed to `channel`.
async fn subscribed(node: &Node, format: Format, user: &str, channel: &str) -> Client {
    let mut client = Client::connected(node, format, user).await;
    let reply = client.call(cmd::subscribe(channel)).await;
    assert!(reply.error.is_none(), "subscribe to {channel} failed: {reply:?}");
    client
}

/// The next push that is not a join or leave.
async fn next_event(client: &mut Client) -> Push {
    loop {
        let push = client.push().await;
        if push.join.is_none() && push.leave.is_none() {
            return push;
        }
    }
}

async fn api_raw(node: &Node, method: &str, body: &str) -> (u16, Value) {
    node.api_with(method, body.to_owned(), &[("X-API-Key", API_KEY)]).await
}

/// Calls a method that must succeed; returns its `result`.
async fn ok(node: &Node, method: &str, body: Value) -> Value {
    let (status, reply) = node.api(method, body).await;
    assert_eq!(status, 200, "{method}: {reply}");
    reply
        .get("result")
        .cloned()
        .unwrap_or_else(|| panic!("{method} did not succeed: {reply}"))
}

/// Calls a method that must fail with a protocol error in the body; returns the error code.
async fn error_code(node: &Node, method: &str, body: Value) -> u64 {
    let (status, reply) = node.api(method, body).await;
    assert_eq!(status, 200, "{method}: {reply}");
    assert!(reply.get("result").is_none(), "{method}: {reply}");
    let message = reply["error"]["message"].as_str().unwrap_or("");
    assert!(!message.is_empty(), "error without a message: {reply}");
    reply["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("{method}: expected an error, got {reply}"))
}

fn offsets(history: &Value) -> Vec<u64> {
    history
        .get("publications")
        .and_then(Value::as_array)
        .map(|pubs| pubs.iter().map(|p| p["offset"].as_u64().unwrap()).collect())
        .unwrap_or_default()
}

fn datas(history: &Value) -> Vec<Value> {
    history
        .get("publications")
        .and_then(Value::as_array)
        .map(|pubs| pubs.iter().map(|p| p["data"].clone()).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Auth and body validation

#[tokio::test]
async fn api_key_is_required_and_accepted_in_both_headers() {
    let node = Node::start(CONFIG);
    let (status, body) = node.api_with("info", "{}".into(), &[]).await;
    assert_eq!(status, 401, "no key: {body}");
    let (status, body) = node.api_with("info", "{}".into(), &[("X-API-Key", "wrong")]).await;
    assert_eq!(status, 401, "wrong key: {body}");
    let (status, body) = node
        .api_with("info", "{}".into(), &[("Authorization", "apikey wrong")])
        .await;
    assert_eq!(status, 401, "wrong key in Authorization: {body}");
    let (status, body) = node
        .api_with("info", "{}".into(), &[("Authorization", &format!("Bearer {API_KEY}"))])
        .await;
    assert_eq!(status, 401, "not the apikey scheme: {body}");

    let (status, body) = node.api_with("info", "{}".into(), &[("X-API-Key", API_KEY)]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["result"]["nodes"].is_array(), "{body}");
    let (status, body) = node
        .api_with("info", "{}".into(), &[("Authorization", &format!("apikey {API_KEY}"))])
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["result"]["nodes"].is_array(), "{body}");
}

#[tokio::test]
async fn without_a_configured_key_every_call_is_unauthorized() {
    let config = r#"
[client]
token_hmac_secret = "test-secret"
[channels.default]
presence = true
"#;
    let node = Node::start(config);
    for method in ["info", "publish", "channels"] {
        let body = json!({"channel": "news", "data": {}}).to_string();
        let (status, reply) = node.api_with(method, body.clone(), &[("X-API-Key", API_KEY)]).await;
        assert_eq!(status, 401, "{method}: {reply}");
        let (status, reply) = node.api_with(method, body.clone(), &[("X-API-Key", "")]).await;
        assert_eq!(status, 401, "{method} with an empty key: {reply}");
        let (status, reply) = node.api_with(method, body, &[]).await;
        assert_eq!(status, 401, "{method} without a key: {reply}");
    }
}

#[tokio::test]
async fn malformed_bodies_are_400_with_a_message() {
    let node = Node::start(CONFIG);
    let cases = [
        ("publish", "{not json"),
        ("publish", r#"[{"channel": "news", "data": {}}]"#),
        ("publish", r#""just a string""#),
        ("publish", r#"{"channel": 5, "data": {}}"#),
        ("history", r#"{"channel": "news", "limit": "ten"}"#),
        ("disconnect", r#"{"user": ["42"]}"#),
        ("publish", r#"{"channel": "news", "data": {}, "version": -1}"#),
    ];
    for (method, body) in cases {
        let (status, reply) = api_raw(&node, method, body).await;
        assert_eq!(status, 400, "{method} {body}: {reply}");
        let message = reply
            .as_str()
            .unwrap_or_else(|| panic!("400 body is not text: {reply}"));
        assert!(!message.trim().is_empty(), "{method} {body}: empty 400 message");
    }
    // Bad base64 is a bad request in the body (107), as in Centrifugo, not a 400.
    let bad_base64 = json!({"channel": "news", "b64data": "***not base64***"});
    assert_eq!(error_code(&node, "publish", bad_base64).await, 107);
    // No history was written by any of them.
    let history = ok(&node, "history", json!({"channel": "news", "limit": -1})).await;
    assert_eq!(offsets(&history), Vec::<u64>::new());
    assert_eq!(history["offset"].as_u64().unwrap_or(0), 0, "{history}");

    // An empty body is an empty object: fine for `info`.
    let (status, reply) = api_raw(&node, "info", "").await;
    assert_eq!(status, 200, "{reply}");
    assert!(reply["result"]["nodes"].is_array(), "{reply}");
}

// ---------------------------------------------------------------------------------------------
// publish / broadcast

#[tokio::test]
async fn publish_returns_growing_offsets_with_a_stable_epoch() {
    let node = Node::start(CONFIG);
    let first = ok(&node, "publish", json!({"channel": "news", "data": {"n": 1}})).await;
    assert_eq!(first["offset"], 1, "{first}");
    let epoch = first["epoch"].as_str().expect("epoch").to_owned();
    assert!(!epoch.is_empty());
    for n in 2..=4u64 {
        let result = ok(&node, "publish", json!({"channel": "news", "data": {"n": n}})).await;
        assert_eq!(result["offset"], n, "{result}");
        assert_eq!(result["epoch"], epoch.as_str(), "{result}");
    }
    // Another channel has its own stream.
    let other = ok(&node, "publish", json!({"channel": "sport", "data": 1})).await;
    assert_eq!(other["offset"], 1, "{other}");
}

#[tokio::test]
async fn publish_without_history_returns_an_empty_result() {
    let node = Node::start(CONFIG);
    let mut client = subscribed(&node, Format::Json, "1", "open:lobby").await;
    let (status, body) = node
        .api("publish", json!({"channel": "open:lobby", "data": {"hi": true}}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"result": {}}));
    let push = next_event(&mut client).await;
    assert_eq!(push.channel, "open:lobby");
    let publication = push.r#pub.expect("publication");
    assert_eq!(publication.offset, 0);
    assert_eq!(common::data_of(&publication), json!({"hi": true}));
}

#[tokio::test]
async fn publish_errors_in_body_and_transport_mode() {
    let node = Node::start(CONFIG);
    let publish = json!({"channel": "nope:x", "data": {}});
    assert_eq!(error_code(&node, "publish", publish.clone()).await, 102);
    // An unknown method has no route, as in Centrifugo: 404 whatever the error mode.
    let (status, body) = node.api("no_such_method", json!({})).await;
    assert_eq!(status, 404, "{body}");

    let headers = [("X-API-Key", API_KEY), TRANSPORT];
    let (status, body) = node.api_with("publish", publish.to_string(), &headers).await;
    assert_eq!(status, 404, "unknown namespace in transport mode: {body}");
    let (status, body) = node.api_with("no_such_method", "{}".into(), &headers).await;
    assert_eq!(status, 404, "unknown method in transport mode: {body}");
    // A success is still 200 with a result in transport mode.
    let (status, body) = node
        .api_with("publish", json!({"channel": "news", "data": 1}).to_string(), &headers)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["offset"], 1, "{body}");
}

#[tokio::test]
async fn b64data_reaches_a_protobuf_subscriber_byte_exact() {
    let node = Node::start(CONFIG);
    let mut client = subscribed(&node, Format::Protobuf, "1", "bin").await;
    let bytes: Vec<u8> = vec![0, 1, 2, 0xff, 0xfe, b'\n', b'{', 0x80];
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let result = ok(&node, "publish", json!({"channel": "bin", "b64data": b64})).await;
    assert_eq!(result["offset"], 1, "{result}");
    let push = next_event(&mut client).await;
    assert_eq!(push.channel, "bin");
    let publication = push.r#pub.expect("publication");
    assert_eq!(&publication.data[..], &bytes[..]);
    assert_eq!(publication.offset, 1);
}

#[tokio::test]
async fn a_json_subscriber_receives_the_published_data_verbatim() {
    let node = Node::start(CONFIG);
    let mut client = subscribed(&node, Format::Json, "1", "verbatim").await;
    let data = r#"{"z":1, "a" : [true,null,"é\"x"], "n": 1.50}"#;
    let body = format!(r#"{{"channel": "verbatim", "data": {data}}}"#);
    let (status, reply) = api_raw(&node, "publish", &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["result"]["offset"], 1, "{reply}");
    let push = next_event(&mut client).await;
    let publication = push.r#pub.expect("publication");
    assert_eq!(std::str::from_utf8(&publication.data).unwrap(), data);
}

#[tokio::test]
async fn broadcast_publishes_to_every_channel() {
    let node = Node::start(CONFIG);
    let mut a = subscribed(&node, Format::Json, "1", "room-a").await;
    let mut b = subscribed(&node, Format::Protobuf, "2", "room-b").await;
    let result = ok(
        &node,
        "broadcast",
        json!({"channels": ["room-a", "room-b"], "data": {"all": 1}}),
    )
    .await;
    let responses = result["responses"].as_array().expect("responses");
    assert_eq!(responses.len(), 2, "{result}");
    for response in responses {
        assert_eq!(response["result"]["offset"], 1, "{result}");
        assert!(response["result"]["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    }
    for (client, channel) in [(&mut a, "room-a"), (&mut b, "room-b")] {
        let push = next_event(client).await;
        assert_eq!(push.channel, channel);
        assert_eq!(common::data_of(&push.r#pub.expect("publication")), json!({"all": 1}));
    }
    // One unknown channel fails in its own slot only.
    let result = ok(&node, "broadcast", json!({"channels": ["room-a", "nope:x"], "data": 2})).await;
    let responses = result["responses"].as_array().expect("responses");
    assert_eq!(responses[0]["result"]["offset"], 2, "{result}");
    assert_eq!(responses[1]["error"]["code"], 102, "{result}");
}

// ---------------------------------------------------------------------------------------------
// history

#[tokio::test]
async fn history_limit_since_and_reverse() {
    let node = Node::start(CONFIG);
    let mut epoch = String::new();
    for n in 1..=5 {
        epoch = node.publish("feed", json!({"n": n})).await["epoch"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    let history = |body: Value| ok(&node, "history", body);

    let oldest = history(json!({"channel": "feed", "limit": 2})).await;
    assert_eq!(offsets(&oldest), [1, 2], "{oldest}");
    assert_eq!(datas(&oldest), [json!({"n": 1}), json!({"n": 2})]);
    assert_eq!(oldest["epoch"], epoch.as_str());
    assert_eq!(oldest["offset"], 5);

    let after = history(json!({"channel": "feed", "limit": -1, "since": {"offset": 2, "epoch": epoch}})).await;
    assert_eq!(offsets(&after), [3, 4, 5], "{after}");
    let after_limited = history(json!({"channel": "feed", "limit": 1, "since": {"offset": 2, "epoch": epoch}})).await;
    assert_eq!(offsets(&after_limited), [3], "{after_limited}");

    let newest = history(json!({"channel": "feed", "limit": 2, "reverse": true})).await;
    assert_eq!(offsets(&newest), [5, 4], "{newest}");
    let before =
        history(json!({"channel": "feed", "limit": 2, "reverse": true, "since": {"offset": 4, "epoch": epoch}})).await;
    assert_eq!(offsets(&before), [3, 2], "{before}");

    let all = history(json!({"channel": "feed", "limit": -1})).await;
    assert_eq!(offsets(&all), [1, 2, 3, 4, 5], "{all}");

    let position = history(json!({"channel": "feed", "limit": 0})).await;
    assert_eq!(offsets(&position), Vec::<u64>::new(), "{position}");
    assert_eq!(position["offset"], 5, "{position}");
    assert_eq!(position["epoch"], epoch.as_str(), "{position}");
    let default_limit = history(json!({"channel": "feed"})).await;
    assert_eq!(
        offsets(&default_limit),
        Vec::<u64>::new(),
        "no limit means 0: {default_limit}"
    );

    // A position from another epoch is unrecoverable.
    let wrong = json!({"channel": "feed", "limit": -1, "since": {"offset": 2, "epoch": "not-the-epoch"}});
    assert_eq!(error_code(&node, "history", wrong.clone()).await, 112);
    let (status, body) = node
        .api_with("history", wrong.to_string(), &[("X-API-Key", API_KEY), TRANSPORT])
        .await;
    assert_eq!(status, 416, "{body}");

    // No history in this namespace.
    assert_eq!(
        error_code(&node, "history", json!({"channel": "open:x", "limit": -1})).await,
        108
    );
    assert_eq!(error_code(&node, "history", json!({"channel": "nope:x"})).await, 102);
}

#[tokio::test]
async fn history_remove_starts_a_new_epoch() {
    let node = Node::start(CONFIG);
    node.publish("gone", json!(1)).await;
    let before = node.publish("gone", json!(2)).await;
    assert_eq!(before["offset"], 2);
    assert_eq!(ok(&node, "history_remove", json!({"channel": "gone"})).await, json!({}));
    let history = ok(&node, "history", json!({"channel": "gone", "limit": -1})).await;
    assert_eq!(offsets(&history), Vec::<u64>::new(), "{history}");
    let after = node.publish("gone", json!(3)).await;
    assert_eq!(after["offset"], 1, "{after}");
    assert_ne!(after["epoch"], before["epoch"], "history_remove must change the epoch");
    assert_eq!(
        error_code(&node, "history_remove", json!({"channel": "open:x"})).await,
        108
    );
}

// ---------------------------------------------------------------------------------------------
// presence, channels, info

#[tokio::test]
async fn presence_and_stats_count_clients_and_users() {
    let node = Node::start(CONFIG);
    let (mut a, id_a) = connect_with_id(&node, Format::Json, "7").await;
    let (mut b, id_b) = connect_with_id(&node, Format::Protobuf, "7").await;
    for client in [&mut a, &mut b] {
        let reply = client.call(cmd::subscribe("lobby")).await;
        assert!(reply.error.is_none(), "{reply:?}");
    }
    let stats = ok(&node, "presence_stats", json!({"channel": "lobby"})).await;
    assert_eq!(stats, json!({"num_clients": 2, "num_users": 1}));

    let presence = ok(&node, "presence", json!({"channel": "lobby"})).await;
    let map = presence["presence"].as_object().unwrap_or_else(|| panic!("{presence}"));
    let ids: BTreeSet<&str> = map.keys().map(String::as_str).collect();
    assert_eq!(ids, BTreeSet::from([id_a.as_str(), id_b.as_str()]));
    for (id, info) in map {
        assert_eq!(info["user"], "7", "{presence}");
        assert_eq!(info["client"], id.as_str(), "{presence}");
    }

    // Leaving updates presence.
    b.close().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            node.api("presence_stats", json!({"channel": "lobby"})).await.1["result"]
                == json!({"num_clients": 1, "num_users": 1})
        })
        .await
    );

    // An empty channel has empty presence.
    let stats = ok(&node, "presence_stats", json!({"channel": "empty"})).await;
    assert_eq!(stats, json!({"num_clients": 0, "num_users": 0}));

    assert_eq!(error_code(&node, "presence", json!({"channel": "open:x"})).await, 108);
    assert_eq!(
        error_code(&node, "presence_stats", json!({"channel": "open:x"})).await,
        108
    );
    assert_eq!(error_code(&node, "presence", json!({"channel": "nope:x"})).await, 102);
    drop(a);
}

#[tokio::test]
async fn channels_lists_subscribed_channels_with_client_counts() {
    let node = Node::start(CONFIG);
    let _a1 = subscribed(&node, Format::Json, "1", "room-1").await;
    let _a2 = subscribed(&node, Format::Json, "2", "room-1").await;
    let _b = subscribed(&node, Format::Protobuf, "3", "room-2").await;
    let _c = subscribed(&node, Format::Json, "4", "open:hall").await;

    let all = ok(&node, "channels", json!({})).await;
    assert_eq!(
        all["channels"],
        json!({"room-1": {"num_clients": 2}, "room-2": {"num_clients": 1}, "open:hall": {"num_clients": 1}}),
        "{all}"
    );
    let rooms = ok(&node, "channels", json!({"pattern": "room-*"})).await;
    assert_eq!(
        rooms["channels"],
        json!({"room-1": {"num_clients": 2}, "room-2": {"num_clients": 1}}),
        "{rooms}"
    );
    let none = ok(&node, "channels", json!({"pattern": "zzz*"})).await;
    assert_eq!(none["channels"], json!({}), "{none}");
}

#[tokio::test]
async fn info_describes_the_node() {
    let node = Node::start(CONFIG);
    let _a = Client::connected(&node, Format::Json, "1").await;
    let _b = Client::connected(&node, Format::Protobuf, "2").await;
    let info = ok(&node, "info", json!({})).await;
    let nodes = info["nodes"].as_array().unwrap_or_else(|| panic!("{info}"));
    assert_eq!(nodes.len(), 1, "{info}");
    let me = &nodes[0];
    assert_eq!(me["num_clients"], 2, "{info}");
    assert_eq!(me["num_users"], 2, "{info}");
    assert!(me["version"].as_str().is_some_and(|v| !v.is_empty()), "{info}");
    assert!(me["uptime"].is_u64(), "{info}");
    assert!(me["uid"].as_str().is_some_and(|v| !v.is_empty()), "{info}");
}

// ---------------------------------------------------------------------------------------------
// batch

/// Runs a batch that must be answered 200 and returns its replies. The answer is
/// `{"replies": [...]}` and nothing else: no `result` around it, as Centrifugo answers (the
/// `cent` client reads `replies` at the top).
async fn batch(node: &Node, body: Value) -> Vec<Value> {
    let (status, answer) = node.api("batch", body).await;
    assert_eq!(status, 200, "{answer}");
    let keys: Vec<&String> = answer
        .as_object()
        .unwrap_or_else(|| panic!("{answer}"))
        .keys()
        .collect();
    assert_eq!(keys, ["replies"], "{answer}");
    answer["replies"].as_array().unwrap().clone()
}

/// The method key of a batch reply (`error` for an error).
fn reply_key(reply: &Value) -> &str {
    let keys: Vec<&String> = reply.as_object().unwrap_or_else(|| panic!("{reply}")).keys().collect();
    assert_eq!(keys.len(), 1, "a reply has one key: {reply}");
    keys[0]
}

#[tokio::test]
async fn batch_runs_commands_in_order_with_per_command_errors() {
    let node = Node::start(CONFIG);
    let _subscriber = subscribed(&node, Format::Json, "1", "batched").await;
    let body = json!({"commands": [
        {"publish": {"channel": "batched", "data": {"n": 1}}},
        {"presence_stats": {"channel": "batched"}},
        {"publish": {"channel": "nope:x", "data": {}}},
        {"publish": {"channel": "batched", "data": {"n": 2}}},
    ]});
    let replies = batch(&node, body).await;
    assert_eq!(replies.len(), 4, "{replies:?}");
    assert_eq!(replies[0]["publish"]["offset"], 1, "{replies:?}");
    assert!(replies[0]["publish"]["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(
        replies[1]["presence_stats"],
        json!({"num_clients": 1, "num_users": 1}),
        "{replies:?}"
    );
    assert_eq!(
        replies[2],
        json!({"error": {"code": 102, "message": "unknown channel"}})
    );
    assert_eq!(replies[3]["publish"]["offset"], 2, "{replies:?}");
}

/// Every method in one batch, each answered under its own key, in command order; what names no
/// method answers 104 ("not found") and a `null` command 107, in their own slots.
#[tokio::test]
async fn batch_answers_every_method_under_its_own_key() {
    let node = Node::start(CONFIG);
    let (_client, id) = connect_with_id(&node, Format::Json, "b").await;
    let body = json!({"commands": [
        {"publish": {"channel": "every", "data": {"n": 1}}},
        {"broadcast": {"channels": ["every", "every-2"], "data": {"n": 2}}},
        {"subscribe": {"user": "b", "channel": "every"}},
        {"history": {"channel": "every", "limit": -1}},
        {"presence": {"channel": "every"}},
        {"presence_stats": {"channel": "every"}},
        {"channels": {"pattern": "every*"}},
        {"info": {}},
        {"refresh": {"user": "b", "expire_at": 4_000_000_000u64}},
        {"unsubscribe": {"user": "b", "channel": "every"}},
        {"history_remove": {"channel": "every-2"}},
        {"rpc": {"method": "anything", "params": {"x": 1}}},
        {"nope": {}},
        null,
        {},
        {"disconnect": {"user": "b", "client": id}},
    ]});
    let replies = batch(&node, body).await;
    let keys: Vec<&str> = replies.iter().map(reply_key).collect();
    assert_eq!(
        keys,
        [
            "publish",
            "broadcast",
            "subscribe",
            "history",
            "presence",
            "presence_stats",
            "channels",
            "info",
            "refresh",
            "unsubscribe",
            "history_remove",
            "error",
            "error",
            "error",
            "error",
            "disconnect"
        ],
        "{replies:?}"
    );
    assert_eq!(replies[0]["publish"]["offset"], 1);
    let responses = &replies[1]["broadcast"]["responses"];
    assert_eq!(responses[0]["result"]["offset"], 2, "{responses}");
    assert_eq!(responses[1]["result"]["offset"], 1, "{responses}");
    assert_eq!(replies[2]["subscribe"], json!({}));
    assert_eq!(offsets(&replies[3]["history"]), [1, 2]);
    assert_eq!(replies[7]["info"]["nodes"].as_array().map(Vec::len), Some(1));
    let not_found = json!({"error": {"code": 104, "message": "not found"}});
    assert_eq!(
        replies[11],
        json!({"error": {"code": 108, "message": "not available"}}),
        "rpc: no proxy"
    );
    assert_eq!(replies[12], not_found, "an unknown method");
    assert_eq!(replies[13], json!({"error": {"code": 107, "message": "bad request"}}));
    assert_eq!(replies[14], not_found, "a command without a method");
    assert_eq!(replies[15]["disconnect"], json!({}));
}

/// A malformed command refuses the whole batch before any command runs (400), as Centrifugo's
/// decoder does; a command its method refuses (bad base64) answers in its own slot and the
/// others run.
#[tokio::test]
async fn batch_with_a_malformed_command_runs_nothing() {
    let node = Node::start(CONFIG);
    let body = json!({"commands": [
        {"publish": {"channel": "strict", "data": {"n": 1}}},
        {"publish": {"channel": 5, "data": {"n": 2}}},
    ]});
    let (status, reply) = node.api("batch", body).await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply.as_str().is_some_and(|m| m.starts_with("publish: ")), "{reply}");
    let (status, reply) = api_raw(
        &node,
        "batch",
        r#"{"commands": [{"publish": {"channel": "strict", "data": {"n": 1}}}, {"publish": {"channel": "strict", "data": 1e400}}]}"#,
    )
    .await;
    assert_eq!(status, 400, "I-JSON: {reply}");
    let history = ok(&node, "history", json!({"channel": "strict", "limit": -1})).await;
    assert_eq!(offsets(&history), Vec::<u64>::new(), "nothing ran: {history}");

    let body = json!({"commands": [
        {"publish": {"channel": "strict", "data": {"n": 5}}},
        {"publish": {"channel": "strict", "b64data": "not base64!"}},
        {"publish": {"channel": "strict", "data": {"n": 7}}},
    ]});
    let replies = batch(&node, body).await;
    assert_eq!(replies[1], json!({"error": {"code": 107, "message": "bad request"}}));
    assert_eq!(node.history_numbers("strict", "n").await, [5, 7]);
}

/// Publishes of a batch reach subscribers in the batch's order, across channels with and
/// without history.
#[tokio::test]
async fn batch_keeps_order_across_channels() {
    let node = Node::start(CONFIG);
    let mut client = subscribed(&node, Format::Json, "1", "mixed-history").await;
    client.call(cmd::subscribe("open:mixed")).await;
    let body = json!({"commands": [
        {"publish": {"channel": "mixed-history", "data": {"n": 1}}},
        {"publish": {"channel": "open:mixed", "data": {"n": 2}}},
        {"publish": {"channel": "mixed-history", "data": {"n": 3}}},
        {"publish": {"channel": "open:mixed", "data": {"n": 4}}},
    ]});
    batch(&node, body).await;
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let push = next_event(&mut client).await;
        if let Some(publication) = push.r#pub {
            let data: Value = serde_json::from_slice(&publication.data).unwrap();
            seen.push(data["n"].as_u64().unwrap());
        }
    }
    assert_eq!(seen, [1, 2, 3, 4]);
}

/// `parallel: true`: commands may run concurrently, yet every reply is in its command's slot,
/// and each channel's offsets are still contiguous from 1.
#[tokio::test]
async fn parallel_batch_answers_in_command_order() {
    let node = Node::start(CONFIG);
    let mut commands = Vec::new();
    for i in 0..300u64 {
        commands.push(match i % 5 {
            4 => json!({"presence_stats": {"channel": format!("par-{}", i % 3)}}),
            3 => json!({"history": {"channel": "nope:x"}}),
            _ => json!({"publish": {"channel": format!("par-{}", i % 3), "data": {"i": i}}}),
        });
    }
    let replies = batch(&node, json!({"commands": commands, "parallel": true})).await;
    assert_eq!(replies.len(), 300);
    let mut offsets_of: [Vec<u64>; 3] = Default::default();
    for (i, reply) in replies.iter().enumerate() {
        match i % 5 {
            4 => assert_eq!(reply_key(reply), "presence_stats", "{i}: {reply}"),
            3 => assert_eq!(reply["error"]["code"], 102, "{i}: {reply}"),
            _ => offsets_of[i % 3].push(reply["publish"]["offset"].as_u64().unwrap()),
        }
    }
    for (channel, mut offsets) in offsets_of.into_iter().enumerate() {
        offsets.sort_unstable();
        let expected: Vec<u64> = (1..=offsets.len() as u64).collect();
        assert_eq!(offsets, expected, "par-{channel}");
        // Each publication is stored once, whatever order the commands ran in.
        let mut numbers = node.history_numbers(&format!("par-{channel}"), "i").await;
        assert_eq!(numbers.len(), expected.len().min(10), "par-{channel}: history_size 10");
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), expected.len().min(10));
    }
}

// ---------------------------------------------------------------------------------------------
// Methods acting on live connections

#[tokio::test]
async fn disconnect_closes_every_connection_of_the_user_with_3503() {
    let node = Node::start(CONFIG);
    let mut a = Client::connected(&node, Format::Json, "bad").await;
    let mut b = Client::connected(&node, Format::Protobuf, "bad").await;
    let mut other = Client::connected(&node, Format::Json, "good").await;
    assert_eq!(ok(&node, "disconnect", json!({"user": "bad"})).await, json!({}));
    assert_eq!(a.closed().await.0, 3503);
    assert_eq!(b.closed().await.0, 3503);
    // Another user is untouched.
    let reply = other.call(cmd::subscribe("still-here")).await;
    assert!(reply.error.is_none(), "{reply:?}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            ok(&node, "info", json!({})).await["nodes"][0]["num_clients"] == 1
        })
        .await
    );
}

#[tokio::test]
async fn disconnect_with_a_custom_code_and_reason() {
    let node = Node::start(CONFIG);
    let mut client = Client::connected(&node, Format::Json, "u").await;
    ok(
        &node,
        "disconnect",
        json!({"user": "u", "disconnect": {"code": 4000, "reason": "x"}}),
    )
    .await;
    assert_eq!(client.closed().await, (4000, "x".to_owned()));
}

#[tokio::test]
async fn disconnect_whitelist_and_client_target_one_connection() {
    let node = Node::start(CONFIG);
    let (mut a, id_a) = connect_with_id(&node, Format::Json, "u").await;
    let (mut b, id_b) = connect_with_id(&node, Format::Protobuf, "u").await;
    let (mut c, id_c) = connect_with_id(&node, Format::Json, "u").await;

    // Whitelist spares a: b and c are closed.
    ok(&node, "disconnect", json!({"user": "u", "whitelist": [id_a]})).await;
    assert_eq!(b.closed().await.0, 3503);
    assert_eq!(c.closed().await.0, 3503);
    let reply = a.call(cmd::subscribe("alive")).await;
    assert!(reply.error.is_none(), "the whitelisted client must stay: {reply:?}");

    // `client` targets one connection only.
    let (mut d, id_d) = connect_with_id(&node, Format::Json, "u").await;
    ok(&node, "disconnect", json!({"user": "u", "client": id_d})).await;
    assert_eq!(d.closed().await.0, 3503);
    let reply = a.call(cmd::subscribe("alive-2")).await;
    assert!(reply.error.is_none(), "the other client must stay: {reply:?}");
    let presence = ok(&node, "presence", json!({"channel": "alive"})).await;
    let ids: Vec<&String> = presence["presence"].as_object().unwrap().keys().collect();
    assert_eq!(ids, [&id_a]);
    assert_ne!(id_b, id_c);
}

#[tokio::test]
async fn unsubscribe_sends_a_2000_push_and_clears_presence() {
    let node = Node::start(CONFIG);
    let (mut target, id_target) = connect_with_id(&node, Format::Json, "t").await;
    let (mut bystander, id_bystander) = connect_with_id(&node, Format::Protobuf, "b").await;
    for client in [&mut target, &mut bystander] {
        let reply = client.call(cmd::subscribe("stage")).await;
        assert!(reply.error.is_none(), "{reply:?}");
    }
    assert_eq!(
        ok(&node, "unsubscribe", json!({"user": "t", "channel": "stage"})).await,
        json!({})
    );
    let push = next_event(&mut target).await;
    assert_eq!(push.channel, "stage");
    let unsubscribe = push
        .unsubscribe
        .clone()
        .unwrap_or_else(|| panic!("expected unsubscribe: {push:?}"));
    assert_eq!(unsubscribe.code, 2000);

    let presence = ok(&node, "presence", json!({"channel": "stage"})).await;
    let ids: Vec<&String> = presence["presence"].as_object().unwrap().keys().collect();
    assert_eq!(ids, [&id_bystander], "{presence}");
    assert_ne!(id_target, id_bystander);

    // The unsubscribed client no longer receives publications; the bystander does.
    node.publish("stage", json!({"after": true})).await;
    let push = next_event(&mut bystander).await;
    assert_eq!(
        common::data_of(&push.r#pub.expect("publication")),
        json!({"after": true})
    );
    let reply = target.call(cmd::subscribe("open:elsewhere")).await;
    assert!(reply.error.is_none(), "{reply:?}");
    // The publication would have been queued before that reply; nothing arrived.
    assert!(
        target.silent_for(Duration::from_millis(200)).await,
        "the unsubscribed client still got something"
    );
}

#[tokio::test]
async fn server_side_subscribe_pushes_subscribe_then_publications() {
    let node = Node::start(CONFIG);
    let mut client = Client::connected(&node, Format::Json, "s").await;
    let mut proto_client = Client::connected(&node, Format::Protobuf, "s").await;
    // `closed` does not let clients subscribe themselves; the API can.
    let reply = client.call(cmd::subscribe("closed:vip")).await;
    assert_eq!(reply.error.expect("client subscribe refused").code, 103);
    assert_eq!(
        ok(&node, "subscribe", json!({"user": "s", "channel": "closed:vip"})).await,
        json!({})
    );
    for c in [&mut client, &mut proto_client] {
        let push = next_event(c).await;
        assert_eq!(push.channel, "closed:vip");
        assert!(push.subscribe.is_some(), "expected a subscribe push: {push:?}");
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            ok(&node, "presence_stats", json!({"channel": "closed:vip"})).await["num_clients"] == 2
        })
        .await
    );
    let result = node.publish("closed:vip", json!({"vip": 1})).await;
    assert_eq!(result["offset"], 1);
    for c in [&mut client, &mut proto_client] {
        let push = next_event(c).await;
        assert_eq!(push.channel, "closed:vip");
        let publication = push.r#pub.expect("publication");
        assert_eq!(common::data_of(&publication), json!({"vip": 1}));
    }
    // An unknown namespace is refused.
    assert_eq!(
        error_code(&node, "subscribe", json!({"user": "s", "channel": "nope:x"})).await,
        102
    );
}

#[tokio::test]
async fn server_side_subscribe_of_a_positioned_channel_reports_its_position() {
    let node = Node::start(CONFIG);
    let first = node.publish("positioned", json!(1)).await;
    node.publish("positioned", json!(2)).await;
    let mut client = Client::connected(&node, Format::Protobuf, "p").await;
    ok(&node, "subscribe", json!({"user": "p", "channel": "positioned"})).await;
    let push = next_event(&mut client).await;
    let subscribe = push.subscribe.expect("subscribe push");
    assert!(subscribe.positioned && subscribe.recoverable, "{subscribe:?}");
    assert_eq!(subscribe.offset, 2);
    assert_eq!(subscribe.epoch, first["epoch"].as_str().unwrap());
    node.publish("positioned", json!(3)).await;
    let publication = next_event(&mut client).await.r#pub.expect("publication");
    assert_eq!(publication.offset, 3);
}

/// A server-side subscribe takes Centrifugo's options: `data` rides on the subscribe push,
/// `recover_since` replays what was missed after it, `info` is the subscriber's channel info,
/// `override` hides it from presence, and `expire_at` closes the connection with 3006.
#[tokio::test]
async fn server_side_subscribe_takes_its_options() {
    let node = Node::start(CONFIG);
    let first = node.publish("positioned", json!(1)).await;
    node.publish("positioned", json!(2)).await;
    node.publish("positioned", json!(3)).await;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    let (mut client, id) = connect_with_id(&node, Format::Json, "o").await;
    let body = json!({
        "user": "o", "channel": "positioned", "data": {"hello": 1},
        "recover_since": {"epoch": epoch, "offset": 1},
        "override": {"presence": {"value": false}},
    });
    assert_eq!(ok(&node, "subscribe", body).await, json!({}));
    let push = next_event(&mut client).await;
    let subscribe = push.subscribe.expect("subscribe push");
    assert_eq!(
        serde_json::from_slice::<Value>(&subscribe.data).unwrap(),
        json!({"hello": 1})
    );
    assert_eq!(subscribe.offset, 3);
    for offset in [2, 3] {
        let publication = next_event(&mut client).await.r#pub.expect("recovered publication");
        assert_eq!(publication.offset, offset);
    }
    node.publish("positioned", json!(4)).await;
    assert_eq!(next_event(&mut client).await.r#pub.expect("live").offset, 4);
    let presence = ok(&node, "presence", json!({"channel": "positioned"})).await;
    assert_eq!(presence["presence"], json!({}), "hidden by the override");

    let body = json!({"user": "o", "channel": "closed:vip", "info": {"seat": 7}});
    ok(&node, "subscribe", body).await;
    assert!(next_event(&mut client).await.subscribe.is_some());
    let presence = ok(&node, "presence", json!({"channel": "closed:vip"})).await;
    assert_eq!(presence["presence"][&id]["chan_info"], json!({"seat": 7}), "{presence}");

    let expire_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let body = json!({"user": "o", "channel": "closed:brief", "expire_at": expire_at});
    ok(&node, "subscribe", body).await;
    assert_eq!(client.closed().await.0, 3006);
}

/// `refresh` with `info` gives the user's connections new connection info: what they do from
/// then on carries it (here the join of a later subscription).
#[tokio::test]
async fn refresh_info_is_the_connections_info_from_then_on() {
    let node = Node::start(CONFIG);
    let mut client = Client::connected(&node, Format::Json, "ri").await;
    let body = json!({"user": "ri", "expire_at": 4_000_000_000i64, "info": {"tier": "gold"}});
    assert_eq!(ok(&node, "refresh", body).await, json!({}));
    let reply = client.call(cmd::subscribe("after-refresh")).await;
    assert!(reply.error.is_none(), "{reply:?}");
    let join = loop {
        let push = client.push().await;
        if let Some(join) = push.join {
            break join;
        }
    };
    let info = join.info.expect("join info");
    assert_eq!(
        serde_json::from_slice::<Value>(&info.conn_info).unwrap(),
        json!({"tier": "gold"})
    );
}

#[tokio::test]
async fn refresh_expired_closes_with_3005() {
    let node = Node::start(CONFIG);
    let mut client = Client::connected(&node, Format::Json, "r").await;
    let mut other = Client::connected(&node, Format::Protobuf, "other").await;
    assert_eq!(
        ok(&node, "refresh", json!({"user": "r", "expired": true})).await,
        json!({})
    );
    assert_eq!(client.closed().await.0, 3005);
    let reply = other.call(cmd::subscribe("fine")).await;
    assert!(reply.error.is_none(), "{reply:?}");
}

// ---------------------------------------------------------------------------------------------
// Request and reply shapes, field by field against Centrifugo v6 (`internal/apiproto/api.proto`)

/// The keys of a JSON object, sorted.
fn keys_of(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// `rpc` is for the RPC proxy (issue 13); without one, an empty method is 107 and any other
/// 108, as for a client's rpc, and in transport mode both are 400.
#[tokio::test]
async fn rpc_answers_not_available_without_a_proxy() {
    let node = Node::start(CONFIG);
    let (status, reply) = node.api("rpc", json!({"method": "getUser", "params": {"id": 1}})).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply, json!({"error": {"code": 108, "message": "not available"}}));
    assert_eq!(error_code(&node, "rpc", json!({"params": [1]})).await, 107);
    let headers = [("X-API-Key", API_KEY), ("X-Centrifugo-Error-Mode", "transport")];
    let (status, _) = node.api_with("rpc", r#"{"method": "x"}"#.into(), &headers).await;
    assert_eq!(status, 400);
    let (status, _) = node.api_with("rpc", "{}".into(), &headers).await;
    assert_eq!(status, 400);
}

/// Publish takes every field of Centrifugo's PublishRequest: `delta`; `version` and
/// `version_epoch` (a publication not newer than the channel's last version is dropped and
/// answered with the stream's top); `null` is a field's zero value; `b64data` wins over `data`.
#[tokio::test]
async fn publish_takes_every_centrifugo_field() {
    let node = Node::start(CONFIG);
    let mut client = subscribed(&node, Format::Protobuf, "1", "fields").await;
    let body = json!({
        "channel": "fields", "data": {"n": 1}, "skip_history": null, "tags": null,
        "idempotency_key": null, "b64data": null, "delta": true, "version": 7, "version_epoch": "v1",
    });
    assert_eq!(ok(&node, "publish", body).await["offset"], 1);
    for (version, epoch) in [(7, "v1"), (6, ""), (3, "v1")] {
        let stale =
            json!({"channel": "fields", "data": {"stale": version}, "version": version, "version_epoch": epoch});
        assert_eq!(
            ok(&node, "publish", stale).await["offset"],
            1,
            "version {version} {epoch:?} dropped"
        );
    }
    let body = json!({"channel": "fields", "data": {"ignored": true}, "b64data": "AAEC", "tags": {"k": "v"}});
    assert_eq!(ok(&node, "publish", body).await["offset"], 2);
    let first = next_event(&mut client).await.r#pub.expect("publication");
    assert_eq!(common::data_of(&first), json!({"n": 1}));
    // The dropped ones never reach the subscriber.
    let second = next_event(&mut client).await.r#pub.expect("publication");
    assert_eq!(&second.data[..], [0, 1, 2]);
    assert_eq!(second.tags.get("k").map(String::as_str), Some("v"));
    let body = json!({"channels": ["fields"], "data": 1, "delta": false, "version": 0, "version_epoch": ""});
    let result = ok(&node, "broadcast", body).await;
    assert_eq!(result["responses"][0]["result"]["offset"], 3, "{result}");
    // A publication to a channel without history answers `{}`; one without data is 107.
    assert_eq!(
        ok(&node, "publish", json!({"channel": "open:x", "data": 1})).await,
        json!({})
    );
    assert_eq!(error_code(&node, "publish", json!({"channel": "fields"})).await, 107);
    assert_eq!(
        error_code(&node, "broadcast", json!({"channels": [], "data": 1})).await,
        107
    );
}

/// History publications carry exactly Centrifugo's API fields (`data`, `info`, `offset`, `tags`;
/// not the client protocol's `time`), with `info` as `{user, client}`; presence entries are
/// `{user, client}` too; the history result always has `publications`, `epoch` and `offset`.
#[tokio::test]
async fn history_and_presence_entries_have_centrifugo_fields_only() {
    let node = Node::start(CONFIG);
    let (mut client, id) = connect_with_id(&node, Format::Json, "writer").await;
    let reply = client.call(cmd::subscribe("shapes")).await;
    assert!(reply.error.is_none(), "{reply:?}");
    node.api(
        "publish",
        json!({"channel": "shapes", "data": {"api": 1}, "tags": {"t": "1"}}),
    )
    .await;
    let reply = client.call(cmd::publish("shapes", r#"{"client":2}"#)).await;
    assert!(reply.error.is_none(), "{reply:?}");

    let history = ok(&node, "history", json!({"channel": "shapes", "limit": -1})).await;
    assert_eq!(keys_of(&history), ["epoch", "offset", "publications"], "{history}");
    let publications = history["publications"].as_array().unwrap();
    assert_eq!(publications.len(), 2, "{history}");
    assert_eq!(keys_of(&publications[0]), ["data", "offset", "tags"], "{history}");
    assert_eq!(keys_of(&publications[1]), ["data", "info", "offset"], "{history}");
    assert_eq!(publications[1]["info"], json!({"user": "writer", "client": id}));

    let presence = ok(&node, "presence", json!({"channel": "shapes"})).await;
    assert_eq!(
        presence,
        json!({"presence": {id.clone(): {"user": "writer", "client": id}}})
    );

    let empty = ok(&node, "history", json!({"channel": "never-written"})).await;
    assert_eq!(empty, json!({"publications": [], "epoch": "", "offset": 0}));
    assert_eq!(error_code(&node, "history", json!({})).await, 107, "no channel");
    assert_eq!(error_code(&node, "presence", json!({"channel": null})).await, 107);
}

/// The user methods take every field of Centrifugo's requests. `session` names a session id,
/// which no Herald connection has yet: such a call reaches nobody. Unsubscribing from no channel
/// does nothing; an unknown namespace is 102; bad base64 is 107.
#[tokio::test]
async fn user_methods_take_every_centrifugo_field() {
    let node = Node::start(CONFIG);
    let (mut client, id) = connect_with_id(&node, Format::Json, "fields").await;
    let subscribe = json!({
        "user": "fields", "channel": "srv", "client": id, "session": null, "expire_at": 0,
        "info": {"role": "x"}, "b64info": null, "data": {"hello": 1}, "b64data": "",
        "recover_since": {"offset": 0, "epoch": ""},
        "override": {"presence": {"value": true}, "join_leave": null, "force_recovery": {"value": false}},
    });
    assert_eq!(ok(&node, "subscribe", subscribe).await, json!({}));
    let push = next_event(&mut client).await;
    assert_eq!(push.channel, "srv");
    assert!(push.subscribe.is_some(), "{push:?}");
    let bad = json!({"user": "fields", "channel": "srv", "b64info": "%%%"});
    assert_eq!(error_code(&node, "subscribe", bad).await, 107);
    let unknown = json!({"user": "fields", "channel": "nope:x"});
    assert_eq!(error_code(&node, "subscribe", unknown.clone()).await, 102);
    assert_eq!(error_code(&node, "unsubscribe", unknown).await, 102);
    assert_eq!(ok(&node, "unsubscribe", json!({"user": "fields"})).await, json!({}));

    // A session matches none of Herald's connections.
    for (method, body) in [
        (
            "unsubscribe",
            json!({"user": "fields", "channel": "srv", "session": "s1"}),
        ),
        ("refresh", json!({"user": "fields", "expired": true, "session": "s1"})),
        ("disconnect", json!({"user": "fields", "session": "s1"})),
    ] {
        assert_eq!(ok(&node, method, body).await, json!({}), "{method}");
    }
    let reply = client.call(cmd::subscribe("still-connected")).await;
    assert!(reply.error.is_none(), "{reply:?}");
    assert_eq!(
        ok(
            &node,
            "refresh",
            json!({"user": "fields", "client": id, "info": {"new": 1}, "expire_at": null})
        )
        .await,
        json!({})
    );
    let reply = client.call(cmd::subscribe("still-connected-2")).await;
    assert!(reply.error.is_none(), "{reply:?}");
    let disconnect =
        json!({"user": "fields", "client": id, "whitelist": null, "disconnect": {"code": 4001, "reason": "bye"}});
    assert_eq!(ok(&node, "disconnect", disconnect).await, json!({}));
    assert_eq!(client.closed().await, (4001, "bye".to_owned()));
    let out_of_range = json!({"user": "fields", "disconnect": {"code": 1000, "reason": ""}});
    assert_eq!(error_code(&node, "disconnect", out_of_range).await, 107);
}

// ---------------------------------------------------------------------------------------------
// Pipelining

/// One response taken off the front of `buf` when complete: (status, body).
fn take_response(buf: &mut Vec<u8>) -> Option<(u16, Value)> {
    let text = std::str::from_utf8(buf).ok()?;
    let head_end = text.find("\r\n\r\n")? + 4;
    let head = &text[..head_end];
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })?
        .parse()
        .ok()?;
    if buf.len() < head_end + length {
        return None;
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap();
    buf.drain(..head_end + length);
    Some((status, body))
}

/// Reads until `count` whole responses have arrived.
async fn read_responses(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, count: usize) -> Vec<(u16, Value)> {
    use tokio::io::AsyncReadExt;
    let mut responses = Vec::new();
    loop {
        while responses.len() < count {
            match take_response(buf) {
                Some(response) => responses.push(response),
                None => break,
            }
        }
        if responses.len() == count {
            return responses;
        }
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("responses stopped coming after {}", responses.len()))
            .unwrap();
        assert!(n > 0, "connection closed after {} responses", responses.len());
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Requests pipelined on one connection (sent before any answer) are all answered, in order,
/// and their publications delivered in order; a request sent after the answers is answered too
/// (responses held back while the pipeline is read are never left unflushed).
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    use tokio::io::AsyncWriteExt;
    let node = Node::start(CONFIG);
    let mut subscriber = subscribed(&node, Format::Json, "1", "piped").await;
    let mut stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let request = |n: usize| {
        let body = json!({"channel": "piped", "data": {"n": n}}).to_string();
        format!(
            "POST /api/publish HTTP/1.1\r\nhost: herald\r\nx-api-key: {API_KEY}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    const PIPELINED: usize = 200;
    let burst: String = (0..PIPELINED).map(request).collect();
    stream.write_all(burst.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let offsets: Vec<(u16, u64)> = read_responses(&mut stream, &mut buf, PIPELINED)
        .await
        .into_iter()
        .map(|(status, body)| (status, body["result"]["offset"].as_u64().unwrap_or(0)))
        .collect();
    let expected: Vec<(u16, u64)> = (1..=PIPELINED as u64).map(|o| (200, o)).collect();
    assert_eq!(offsets, expected);
    // The connection stays usable for one more, unpipelined, request.
    stream.write_all(request(PIPELINED).as_bytes()).await.unwrap();
    let last = read_responses(&mut stream, &mut buf, 1).await;
    assert_eq!(last[0].1["result"]["offset"], PIPELINED + 1);
    for n in 0..=PIPELINED {
        let publication = subscriber.next_publication().await;
        let data: Value = serde_json::from_slice(&publication.data).unwrap();
        assert_eq!(data["n"], n);
    }
}

/// Answers held while more input is waiting never wait for the client: a request followed by a
/// partial one is answered before the rest arrives, and a malformed request followed by more
/// bytes still gets its 400 before the connection closes.
#[tokio::test]
async fn answers_never_wait_for_the_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = Node::start(CONFIG);
    let body = json!({"channel": "halves", "data": {}}).to_string();
    let request = format!(
        "POST /api/publish HTTP/1.1\r\nhost: herald\r\nx-api-key: {API_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let (first_half, second_half) = request.split_at(request.len() / 2);
    let mut stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let mut buf = Vec::new();
    // Request 1 whole and half of request 2, together; then half of request 3 a moment later.
    stream
        .write_all(format!("{request}{first_half}").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let first = read_responses(&mut stream, &mut buf, 1).await;
    assert_eq!(first[0].0, 200);
    stream
        .write_all(format!("{second_half}{first_half}").as_bytes())
        .await
        .unwrap();
    let second = read_responses(&mut stream, &mut buf, 1).await;
    assert_eq!(second[0].1["result"]["offset"], 2);
    stream.write_all(second_half.as_bytes()).await.unwrap();
    let third = read_responses(&mut stream, &mut buf, 1).await;
    assert_eq!(third[0].1["result"]["offset"], 3);

    let mut stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    stream
        .write_all(b"NOT HTTP AT ALL\r\n\r\nand more bytes after it\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
}

/// Publication data must be I-JSON (RFC 7493), since subscribers get it as sent: numbers beyond a
/// double and lone UTF-16 surrogates are refused at publish (API: 400; a JSON client: 107), and
/// nothing of them is stored or delivered.
#[tokio::test]
async fn data_that_some_parsers_reject_is_refused_at_publish() {
    let node = Node::start(CONFIG);
    let mut subscriber = Client::connected(&node, Format::Json, "42").await;
    subscriber.subscribed("ijson").await;
    for bad in ["1e400", "{\"a\":-1e999}", "\"\\ud800\"", "[\"x\\udc00\"]"] {
        let body = format!("{{\"channel\":\"ijson\",\"data\":{bad}}}");
        let (status, reply) = node.api_with("publish", body, &[("X-API-Key", API_KEY)]).await;
        assert_eq!(status, 400, "{bad}: {reply}");
        assert!(reply.as_str().unwrap().contains("I-JSON"), "{reply}");
        let reply = subscriber.call(cmd::publish("ijson", bad)).await;
        assert_eq!(reply.error.map(|e| e.code), Some(107), "{bad}");
    }
    for good in ["1.5e300", "\"\\ud83d\\ude00\"", "{\"n\":1e-400}"] {
        let body = format!("{{\"channel\":\"ijson\",\"data\":{good}}}");
        let (status, reply) = node.api_with("publish", body, &[("X-API-Key", API_KEY)]).await;
        assert_eq!(status, 200, "{good}: {reply}");
        let publication = subscriber.next_publication().await;
        assert_eq!(std::str::from_utf8(&publication.data).unwrap(), good);
    }
    let (_, history) = node.api("history", json!({"channel": "ijson", "limit": -1})).await;
    let stored = history["result"]["publications"].as_array().unwrap().len();
    assert_eq!(stored, 3, "only the accepted three are stored: {history}");
}
