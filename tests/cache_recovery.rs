//! Cache recovery mode (issue 12 item 5): a recovering subscribe to a namespace with
//! `force_recovery_mode = "cache"` gets only the channel's latest publication, its current
//! value; with `auto_cache_recover` every subscribe does.

mod common;

use common::{cmd, Client, Node, CONFIG};
use herald::protocol::proto::{SubscribeRequest, SubscribeResult};
use herald::protocol::Format;
use serde_json::{json, Value};

fn config() -> String {
    format!(
        "{CONFIG}
[channels.namespaces.cache]
history_size = 1
history_ttl = \"300s\"
force_recovery = true
force_recovery_mode = \"cache\"
allow_subscribe_for_client = true
[channels.namespaces.auto]
history_size = 1
history_ttl = \"300s\"
force_recovery = true
recovery_mode = \"cache\"
auto_cache_recover = true
allow_subscribe_for_client = true
"
    )
}

async fn subscribe(client: &mut Client, channel: &str, recover: Option<(&str, u64)>) -> SubscribeResult {
    let (recover, epoch, offset) = match recover {
        Some((epoch, offset)) => (true, epoch.to_owned(), offset),
        None => (false, String::new(), 0),
    };
    let reply = client
        .call(cmd::subscribe_with(SubscribeRequest {
            channel: channel.into(),
            recover,
            epoch,
            offset,
            ..Default::default()
        }))
        .await;
    match reply.subscribe {
        Some(result) => result,
        None => panic!("subscribe refused: {:?}", reply.error),
    }
}

fn data(result: &SubscribeResult) -> Vec<(u64, Value)> {
    result
        .publications
        .iter()
        .map(|p| (p.offset, serde_json::from_slice(&p.data).unwrap()))
        .collect()
}

#[tokio::test]
async fn a_recovering_subscribe_gets_the_latest_publication_only() {
    let node = Node::start(&config());
    let mut client = Client::connected(&node, Format::Json, "ann").await;
    // Nothing published yet: nothing to recover.
    let empty = subscribe(&mut client, "cache:price", Some(("", 0))).await;
    assert!(
        empty.was_recovering && !empty.recovered && empty.publications.is_empty(),
        "{empty:?}"
    );
    client.call(cmd::unsubscribe("cache:price")).await;

    let mut epoch = String::new();
    for price in [10, 11, 12] {
        epoch = node.publish("cache:price", json!({"price": price})).await["epoch"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    // As the SDKs ask with `since: {}`: no epoch, offset 0.
    let result = subscribe(&mut client, "cache:price", Some(("", 0))).await;
    assert!(result.was_recovering && result.recovered, "{result:?}");
    assert_eq!(data(&result), [(3, json!({"price": 12}))]);
    assert_eq!((result.epoch.as_str(), result.offset), (epoch.as_str(), 3));
    // Live publications follow without a gap.
    node.publish("cache:price", json!({"price": 13})).await;
    let push = client.push().await.r#pub.unwrap();
    assert_eq!(push.offset, 4);
    client.call(cmd::unsubscribe("cache:price")).await;

    // A client that holds the latest gets nothing more; one behind gets the latest only.
    let held = subscribe(&mut client, "cache:price", Some((&epoch, 4))).await;
    assert!(held.recovered && held.publications.is_empty(), "{held:?}");
    client.call(cmd::unsubscribe("cache:price")).await;
    for price in [14, 15] {
        node.publish("cache:price", json!({"price": price})).await;
    }
    let behind = subscribe(&mut client, "cache:price", Some((&epoch, 4))).await;
    assert_eq!(data(&behind), [(6, json!({"price": 15}))]);
    client.call(cmd::unsubscribe("cache:price")).await;

    // Without recovery asked (and no auto_cache_recover): no value.
    let plain = subscribe(&mut client, "cache:price", None).await;
    assert!(!plain.was_recovering && plain.publications.is_empty(), "{plain:?}");
}

#[tokio::test]
async fn auto_cache_recover_gives_every_subscriber_the_value() {
    let node = Node::start(&config());
    node.publish("auto:state", json!({"on": true})).await;
    for format in [Format::Json, Format::Protobuf] {
        let mut client = Client::connected(&node, format, "bo").await;
        let result = subscribe(&mut client, "auto:state", None).await;
        assert!(result.was_recovering && result.recovered, "{result:?}");
        assert_eq!(result.publications.len(), 1);
        assert_eq!(
            serde_json::from_slice::<Value>(&result.publications[0].data).unwrap(),
            json!({"on": true})
        );
    }
}

#[test]
fn cache_mode_needs_force_recovery() {
    let bad = "[channels.namespaces.x]\nhistory_size = 1\nhistory_ttl = \"60s\"\nforce_recovery_mode = \"cache\"\n";
    let error = herald::config::Config::from_toml(bad).unwrap_err().to_string();
    assert!(error.contains("force_recovery_mode"), "{error}");
    let unknown = "[channels.namespaces.x]\nforce_recovery_mode = \"memory\"\n";
    assert!(herald::config::Config::from_toml(unknown).is_err());
}
