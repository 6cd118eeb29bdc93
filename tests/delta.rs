//! Fossil delta compression (issue 12 item 3) against a real node: negotiation, deltas only
//! for marked publications and only when smaller, JSON data as a string while delta is on,
//! recovery delta-chained, subscribers without delta unaffected, and the bytes it saves.

mod common;

use common::{cmd, Client, Node, CONFIG};
use herald::delta::fossil;
use herald::protocol::proto::{Publication, SubscribeRequest};
use herald::protocol::Format;
use serde_json::{json, Value};

fn config() -> String {
    format!(
        "{CONFIG}
[channels.namespaces.doc]
history_size = 200
history_ttl = \"300s\"
force_recovery = true
allow_subscribe_for_client = true
allowed_delta_types = [\"fossil\"]
delta_publish = true
[channels.namespaces.flagged]
history_size = 200
history_ttl = \"300s\"
force_recovery = true
allow_subscribe_for_client = true
allowed_delta_types = [\"fossil\"]
[channels.namespaces.nodelta]
history_size = 200
history_ttl = \"300s\"
force_recovery = true
allow_subscribe_for_client = true
"
    )
}

/// A 2 KB JSON document whose `version` field changes.
fn document(version: u64) -> Value {
    let items: Vec<Value> = (0..40)
        .map(|i| json!({"id": i, "name": format!("item number {i}"), "price": i * 7}))
        .collect();
    json!({"version": version, "title": "inventory", "items": items})
}

fn subscribe(channel: &str, delta: bool) -> herald::protocol::proto::Command {
    cmd::subscribe_with(SubscribeRequest {
        channel: channel.into(),
        delta: if delta { "fossil".into() } else { String::new() },
        ..Default::default()
    })
}

/// What a subscriber with delta on holds after each publication, applying deltas as the SDKs
/// do; and whether each one came as a delta.
struct Applier {
    format: Format,
    previous: Option<Vec<u8>>,
}

impl Applier {
    fn new(format: Format) -> Self {
        Self { format, previous: None }
    }

    fn apply(&mut self, publication: &Publication) -> Vec<u8> {
        let data = match self.format {
            // While delta is on, JSON data is always a string.
            Format::Json => serde_json::from_slice::<String>(&publication.data)
                .unwrap_or_else(|e| panic!("data is not a JSON string ({e}): {:?}", publication.data))
                .into_bytes(),
            Format::Protobuf => publication.data.to_vec(),
        };
        let full = if publication.delta {
            let previous = self.previous.as_ref().expect("a delta comes after a full publication");
            fossil::apply(previous, &data).expect("a valid delta")
        } else {
            data
        };
        self.previous = Some(full.clone());
        full
    }
}

fn parsed(data: &[u8]) -> Value {
    serde_json::from_slice(data).unwrap()
}

/// Live: the first publication in full, the next ones as deltas; a subscriber without delta on
/// the same channel gets the documents as they are.
#[tokio::test]
async fn subscribers_with_delta_get_deltas_and_the_others_full_data() {
    let node = Node::start(&config());
    for format in [Format::Json, Format::Protobuf] {
        let channel = format!("doc:live-{format:?}");
        let mut with = Client::connected(&node, format, "alice").await;
        let reply = with.call(subscribe(&channel, true)).await;
        assert!(reply.subscribe.as_ref().unwrap().delta, "delta negotiated: {reply:?}");
        let mut without = Client::connected(&node, format, "bob").await;
        let reply = without.call(subscribe(&channel, false)).await;
        assert!(!reply.subscribe.unwrap().delta);

        let mut applier = Applier::new(format);
        for version in 1..=5 {
            node.publish(&channel, document(version)).await;
            let publication = with.push().await.r#pub.expect("a publication");
            assert_eq!(publication.delta, version > 1, "version {version}");
            if version > 1 {
                assert!(
                    publication.data.len() < 200,
                    "a small delta: {} bytes",
                    publication.data.len()
                );
            }
            assert_eq!(parsed(&applier.apply(&publication)), document(version));
            let plain = without.push().await.r#pub.expect("a publication");
            assert!(!plain.delta);
            assert_eq!(parsed(&plain.data), document(version));
        }
    }
}

/// A publication whose delta would not be smaller (a whole new document) goes in full; the one
/// after it is a delta again, against it.
#[tokio::test]
async fn the_full_data_goes_when_a_delta_is_not_smaller() {
    let node = Node::start(&config());
    let mut client = Client::connected(&node, Format::Json, "carl").await;
    client.call(subscribe("doc:jumps", true)).await;
    let mut applier = Applier::new(Format::Json);
    let unrelated = json!({"something": "else entirely", "n": [1, 2, 3]});
    for (data, delta) in [
        (document(1), false),
        (unrelated.clone(), false),
        (json!({"something": "else entirely", "n": [1, 2, 4]}), false),
        (document(2), false),
        (document(3), true),
    ] {
        node.publish("doc:jumps", data.clone()).await;
        let publication = client.push().await.r#pub.unwrap();
        assert_eq!(parsed(&applier.apply(&publication)), data);
        if delta {
            assert!(publication.delta);
        }
    }
}

/// Without `delta_publish`, only publications published with `delta: true` go as deltas.
#[tokio::test]
async fn the_publisher_marks_publications_for_delta() {
    let node = Node::start(&config());
    let mut client = Client::connected(&node, Format::Protobuf, "dina").await;
    client.call(subscribe("flagged:x", true)).await;
    let mut applier = Applier::new(Format::Protobuf);
    for (version, marked) in [(1, true), (2, false), (3, true), (4, true)] {
        let (status, body) = node
            .api(
                "publish",
                json!({"channel": "flagged:x", "data": document(version), "delta": marked}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let publication = client.push().await.r#pub.unwrap();
        assert_eq!(publication.delta, marked && version > 1, "version {version}");
        assert_eq!(parsed(&applier.apply(&publication)), document(version));
    }
}

/// A namespace without allowed_delta_types does not negotiate: full data as it is.
#[tokio::test]
async fn a_namespace_without_delta_does_not_negotiate_it() {
    let node = Node::start(&config());
    let mut client = Client::connected(&node, Format::Json, "ed").await;
    let reply = client.call(subscribe("nodelta:x", true)).await;
    assert!(!reply.subscribe.unwrap().delta);
    node.publish("nodelta:x", document(1)).await;
    node.publish("nodelta:x", document(2)).await;
    for version in 1..=2 {
        let publication = client.push().await.r#pub.unwrap();
        assert!(!publication.delta);
        assert_eq!(parsed(&publication.data), document(version));
    }
}

/// Recovered publications come delta-chained (the first in full), and live ones continue the
/// chain from the last recovered one.
#[tokio::test]
async fn recovery_is_delta_chained_and_live_continues_it() {
    let node = Node::start(&config());
    let first = node.publish("doc:rec", document(1)).await;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    for version in 2..=4 {
        node.publish("doc:rec", document(version)).await;
    }
    let mut top = 4;
    for format in [Format::Json, Format::Protobuf] {
        let mut client = Client::connected(&node, format, "fay").await;
        let reply = client
            .call(cmd::subscribe_with(SubscribeRequest {
                channel: "doc:rec".into(),
                delta: "fossil".into(),
                recover: true,
                epoch: epoch.clone(),
                offset: 1,
                ..Default::default()
            }))
            .await;
        let result = reply.subscribe.unwrap();
        assert!(result.recovered && result.delta, "{result:?}");
        // Versions 2..=top: the first in full, then deltas.
        let flags: Vec<bool> = result.publications.iter().map(|p| p.delta).collect();
        let expected: Vec<bool> = (2..=top).map(|version| version > 2).collect();
        assert_eq!(flags, expected);
        let mut applier = Applier::new(format);
        for (publication, version) in result.publications.iter().zip(2..) {
            assert_eq!(parsed(&applier.apply(publication)), document(version));
        }
        top += 1;
        node.publish("doc:rec", document(top)).await;
        let live = client.push().await.r#pub.unwrap();
        assert!(live.delta, "live continues the recovered chain");
        assert_eq!(parsed(&applier.apply(&live)), document(top));
        client.call(cmd::unsubscribe("doc:rec")).await;
    }
    // History reads are never deltas.
    let (_, history) = node.api("history", json!({"channel": "doc:rec", "limit": -1})).await;
    let publications = history["result"]["publications"].as_array().unwrap();
    assert_eq!(publications.len() as u64, top);
    assert!(publications
        .iter()
        .all(|p| p.get("delta").is_none() && p["data"].is_object()));
}

/// The figure for the note: bytes sent to one subscriber for 100 publications of a 2 KB JSON
/// document changing one field, with delta and without, measured on the node's own counter.
#[tokio::test]
async fn delta_saves_bytes_on_the_wire() {
    let node = Node::start(&config());
    let mut sent = Vec::new();
    for delta in [true, false] {
        let channel = format!("doc:bytes-{delta}");
        let mut client = Client::connected(&node, Format::Json, "gil").await;
        client.call(subscribe(&channel, delta)).await;
        let before = node.metric("herald_bytes_out_total").await;
        for version in 1..=100 {
            node.publish(&channel, document(version)).await;
            client.push().await;
        }
        sent.push(node.metric("herald_bytes_out_total").await - before);
        client.close().await;
    }
    let (with, without) = (sent[0], sent[1]);
    eprintln!(
        "100 publications of a {} byte JSON document changing one field: {with} bytes with delta, {without} without ({:.1}x fewer)",
        document(1).to_string().len(),
        without / with
    );
    assert!(
        with * 5.0 < without,
        "delta must save most of the bytes: {with} vs {without}"
    );
}
