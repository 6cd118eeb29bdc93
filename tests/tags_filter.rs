//! The subscribe tags filter (`tf`) against a real node: each subscriber gets exactly the
//! publications whose tags pass its filter, in both formats; a filter is refused (107) where the
//! namespace does not allow it or when it is invalid; and a positioned subscription moves past
//! what its filter drops without seeing a gap, live and in recovery.

mod common;

use std::collections::HashMap;

use common::{cmd, Client, Node, FORMATS};
use herald::protocol::proto::{Command, FilterNode, Publication, SubscribeRequest, SubscribeResult};
use herald::protocol::Format;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[client]
token_hmac_secret = "test-secret"
[api]
key = "test-api-key"
[channels.default]
allow_subscribe_for_client = true
[channels.namespaces.filtered]
allow_subscribe_for_client = true
allow_tags_filter = true
[channels.namespaces.stream]
allow_subscribe_for_client = true
allow_tags_filter = true
history_size = 100
history_ttl = "300s"
force_recovery = true
join_leave = true
force_push_join_leave = true
"#;

fn leaf(key: &str, cmp: &str, val: &str) -> FilterNode {
    FilterNode {
        key: key.into(),
        cmp: cmp.into(),
        val: val.into(),
        ..Default::default()
    }
}

fn team(name: &str) -> FilterNode {
    leaf("team", "eq", name)
}

fn subscribe_filtered(channel: &str, tf: FilterNode) -> Command {
    cmd::subscribe_with(SubscribeRequest {
        channel: channel.into(),
        tf: Some(tf),
        ..Default::default()
    })
}

async fn subscribed_filtered(client: &mut Client, channel: &str, tf: FilterNode) -> SubscribeResult {
    let reply = client.call(subscribe_filtered(channel, tf)).await;
    reply
        .subscribe
        .unwrap_or_else(|| panic!("subscribe {channel} failed: {:?}", reply.error))
}

/// Publishes `{"n": n}` with `tags` through the API; returns the offset.
async fn publish(node: &Node, channel: &str, n: u64, tags: Value) -> u64 {
    let (status, body) = node
        .api("publish", json!({"channel": channel, "data": {"n": n}, "tags": tags}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["result"]["offset"].as_u64().unwrap_or(0)
}

fn n_of(publication: &Publication) -> u64 {
    common::data_of(publication)["n"].as_u64().unwrap()
}

/// The `n` of each publication a client receives up to and including `last`; fails on any
/// unsubscribe push (a gap would end the subscription with one).
async fn received_until(client: &mut Client, last: u64) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        let push = client.push().await;
        assert!(push.unsubscribe.is_none(), "unsubscribed: {push:?}");
        if let Some(publication) = push.r#pub {
            let n = n_of(&publication);
            got.push(n);
            if n == last {
                return got;
            }
        }
    }
}

/// Subscribers with different filters, in both formats on one channel, each get exactly what
/// their filter passes; a subscriber without a filter gets everything.
#[tokio::test]
async fn each_subscriber_gets_what_its_filter_passes() {
    let node = Node::start(CONFIG);
    let channel = "filtered:prices";
    let filters = [
        ("eng", Some(team("eng"))),
        (
            "big in eu or us",
            Some(FilterNode {
                op: "and".into(),
                nodes: vec![
                    leaf("price", "gt", "100"),
                    FilterNode {
                        key: "region".into(),
                        cmp: "in".into(),
                        vals: vec!["eu".into(), "us".into()],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
        ),
        (
            "not ops",
            Some(FilterNode {
                op: "not".into(),
                nodes: vec![team("ops")],
                ..Default::default()
            }),
        ),
        ("no filter", None),
    ];
    let mut clients = Vec::new();
    for format in FORMATS {
        for (name, filter) in &filters {
            let mut client = Client::connected(&node, format, "1").await;
            match filter {
                Some(tf) => subscribed_filtered(&mut client, channel, tf.clone()).await,
                None => client.subscribed(channel).await,
            };
            clients.push((format, *name, client));
        }
    }
    let publications = [
        json!({"team": "eng", "price": "50", "region": "eu"}),
        json!({"team": "ops", "price": "150", "region": "us"}),
        json!({"team": "eng", "price": "1000", "region": "asia"}),
        json!({}),
        json!({"team": "sales", "price": "99.99", "region": "eu"}),
        json!({"price": "100.5", "region": "eu"}),
    ];
    for (n, tags) in publications.iter().enumerate() {
        publish(&node, channel, n as u64, tags.clone()).await;
    }
    // A last publication every filter passes ends each client's list.
    let last = publications.len() as u64;
    publish(
        &node,
        channel,
        last,
        json!({"team": "eng", "price": "101", "region": "us"}),
    )
    .await;
    let expected: HashMap<&str, Vec<u64>> = [
        ("eng", vec![0, 2, last]),
        ("big in eu or us", vec![1, 5, last]),
        ("not ops", vec![0, 2, 3, 4, 5, last]),
        ("no filter", vec![0, 1, 2, 3, 4, 5, last]),
    ]
    .into();
    for (format, name, client) in &mut clients {
        assert_eq!(
            received_until(client, last).await,
            expected[name],
            "{name} over {format:?}"
        );
    }
    // Deliveries count what went out, not what the filters held back.
    let delivered: usize = expected.values().map(Vec::len).sum::<usize>() * FORMATS.len();
    assert_eq!(node.metric("herald_publications_out_total").await, delivered as f64);
}

/// The JSON the SDK sends (`tf` as a plain object) decodes as the filter.
#[tokio::test]
async fn a_filter_in_sdk_json_is_understood() {
    let node = Node::start(CONFIG);
    let mut client = Client::connected(&node, Format::Json, "1").await;
    client
        .send_raw(tokio_tungstenite::tungstenite::Message::text(
            r#"{"id":7,"subscribe":{"channel":"filtered:raw","tf":{"op":"or","nodes":[{"key":"team","cmp":"eq","val":"eng"},{"key":"price","cmp":"lte","val":"10"}]}}}"#,
        ))
        .await;
    let reply = client.push_or_reply().await;
    assert_eq!(reply.id, 7);
    assert!(reply.subscribe.is_some(), "{reply:?}");
    publish(&node, "filtered:raw", 0, json!({"team": "ops", "price": "11"})).await;
    publish(&node, "filtered:raw", 1, json!({"team": "ops", "price": "9.5"})).await;
    publish(&node, "filtered:raw", 2, json!({"team": "eng"})).await;
    assert_eq!(received_until(&mut client, 2).await, vec![1, 2]);
}

/// 107 for a filter where the namespace does not allow one, an invalid or oversized filter,
/// and a filter with a delta; the connection stays and can subscribe without one.
#[tokio::test]
async fn a_filter_is_refused_where_not_allowed_or_invalid() {
    let node = Node::start(CONFIG);
    let mut deep = team("eng");
    for _ in 0..herald::hub::filter::MAX_DEPTH {
        deep = FilterNode {
            op: "not".into(),
            nodes: vec![deep],
            ..Default::default()
        };
    }
    for format in FORMATS {
        let mut client = Client::connected(&node, format, "1").await;
        let refused = [
            ("news", team("eng"), ""),
            ("filtered:a", leaf("team", "like", "eng"), ""),
            ("filtered:a", leaf("team", "eq", ""), ""),
            (
                "filtered:a",
                FilterNode {
                    op: "xor".into(),
                    nodes: vec![team("eng")],
                    ..Default::default()
                },
                "",
            ),
            ("filtered:a", deep.clone(), ""),
            ("filtered:a", team("eng"), "fossil"),
        ];
        for (channel, tf, delta) in refused {
            let reply = client
                .call(cmd::subscribe_with(SubscribeRequest {
                    channel: channel.into(),
                    tf: Some(tf.clone()),
                    delta: delta.into(),
                    ..Default::default()
                }))
                .await;
            let error = reply.error.unwrap_or_else(|| panic!("{tf:?} on {channel} accepted"));
            assert_eq!(error.code, 107, "{tf:?} on {channel} over {format:?}");
        }
        client.subscribed("news").await;
        subscribed_filtered(&mut client, "filtered:a", team("eng")).await;
    }
}

/// A positioned subscription with a filter: what the filter drops moves its position on (no
/// gap, no unsubscribe), join and leave still arrive, and recovery replays only what passes
/// and continues live without a gap.
#[tokio::test]
async fn a_positioned_filtered_subscription_recovers_without_gaps() {
    let node = Node::start(CONFIG);
    for format in FORMATS {
        let channel = format!("stream:{format:?}");
        // The stream exists (it has an epoch) before the subscription.
        publish(&node, &channel, 1, json!({"team": "ops"})).await;
        let mut client = Client::connected(&node, format, "1").await;
        let first = subscribed_filtered(&mut client, &channel, team("eng")).await;
        assert!(first.positioned && first.recoverable, "{first:?}");
        assert_eq!(first.offset, 1);
        for (n, team) in [(2, "eng"), (3, "ops"), (4, "ops"), (5, "eng")] {
            assert_eq!(publish(&node, &channel, n, json!({ "team": team })).await, n);
        }
        assert_eq!(received_until(&mut client, 5).await, vec![2, 5]);

        // Join and leave are not filtered.
        let mut other = Client::connected(&node, format, "2").await;
        other.subscribed(&channel).await;
        let join = client.push().await;
        assert_eq!(join.join.expect("a join push").info.unwrap().user, "2");

        // Away while the filter drops 6 and 8 and passes 7; back with recovery from 5.
        client.call(cmd::unsubscribe(&channel)).await;
        for (n, team) in [(6, "ops"), (7, "eng"), (8, "ops")] {
            publish(&node, &channel, n, json!({ "team": team })).await;
        }
        let result = client
            .call(cmd::subscribe_with(SubscribeRequest {
                channel: channel.clone(),
                recover: true,
                epoch: first.epoch.clone(),
                offset: 5,
                tf: Some(team("eng")),
                ..Default::default()
            }))
            .await
            .subscribe
            .unwrap();
        assert!(result.recovered && result.was_recovering, "{result:?}");
        let recovered: Vec<(u64, u64)> = result.publications.iter().map(|p| (p.offset, n_of(p))).collect();
        assert_eq!(recovered, vec![(7, 7)]);
        assert_eq!(result.offset, 8, "the position includes what was dropped");

        // Live again right after the dropped 8, and later after more dropped ones.
        for (n, team) in [(9, "eng"), (10, "ops"), (11, "ops"), (12, "eng")] {
            publish(&node, &channel, n, json!({ "team": team })).await;
        }
        other.call(cmd::unsubscribe(&channel)).await;
        assert_eq!(received_until(&mut client, 12).await, vec![9, 12]);
        let leave = client.push().await;
        assert_eq!(leave.leave.expect("a leave push").info.unwrap().user, "2");
        // Still subscribed: nothing else arrived (no unsubscribe for a gap).
        assert!(client.silent_for(std::time::Duration::from_millis(200)).await);
    }
}
