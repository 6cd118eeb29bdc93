//! Streams, history, recovery and presence against a real node: offsets in order without gaps,
//! recovery all-or-nothing, epochs and offsets kept across a restart.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{cmd, eventually, token, Client, Node, CONFIG, FORMATS};
use herald::protocol::proto::{Command, ConnectRequest, SubscribeRequest};
use herald::protocol::Format;
use serde_json::json;

fn recover(channel: &str, epoch: &str, offset: u64) -> Command {
    cmd::subscribe_with(SubscribeRequest {
        channel: channel.into(),
        recover: true,
        epoch: epoch.into(),
        offset,
        ..Default::default()
    })
}

#[tokio::test]
async fn recovery_after_resubscribe_is_exact() {
    let node = Node::start(CONFIG);
    for format in FORMATS {
        let channel = format!("recover-{format:?}");
        let mut c = Client::connected(&node, format, "1").await;
        node.publish(&channel, json!({"n": 0})).await;
        let first = c.subscribed(&channel).await;
        assert_eq!(first.offset, 1);
        assert!(!first.recovered && !first.was_recovering);
        c.call(cmd::unsubscribe(&channel)).await;
        for n in 1..=3 {
            node.publish(&channel, json!({ "n": n })).await;
        }
        let result = c
            .call(recover(&channel, &first.epoch, first.offset))
            .await
            .subscribe
            .unwrap();
        assert!(result.recovered && result.was_recovering, "{result:?}");
        assert_eq!(result.epoch, first.epoch);
        let offsets: Vec<u64> = result.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![2, 3, 4]);
        assert_eq!(common::data_of(&result.publications[0]), json!({"n": 1}));
        // Live delivery continues after the recovered ones, without duplicates.
        node.publish(&channel, json!({"n": 4})).await;
        assert_eq!(c.next_publication().await.offset, 5);
    }
}

#[tokio::test]
async fn too_much_missed_is_not_recovered_and_live_continues() {
    let node = Node::start(CONFIG);
    for format in FORMATS {
        let channel = format!("tiny:{format:?}");
        let mut c = Client::connected(&node, format, "1").await;
        let first = c.subscribed(&channel).await;
        c.call(cmd::unsubscribe(&channel)).await;
        for n in 0..4 {
            node.publish(&channel, json!({ "n": n })).await;
        }
        let result = c
            .call(recover(&channel, &first.epoch, first.offset))
            .await
            .subscribe
            .unwrap();
        assert!(!result.recovered && result.was_recovering, "{result:?}");
        assert!(result.publications.is_empty(), "never a partial recovery");
        assert_eq!(result.offset, first.offset + 4);
        node.publish(&channel, json!({"n": 4})).await;
        assert_eq!(c.next_publication().await.offset, first.offset + 5);
        // A wrong epoch is not recovered either.
        c.call(cmd::unsubscribe(&channel)).await;
        let result = c
            .call(recover(&channel, "other-epoch", result.offset))
            .await
            .subscribe
            .unwrap();
        assert!(!result.recovered && result.was_recovering);
    }
}

#[tokio::test]
async fn reconnect_recovers_server_side_subscriptions() {
    let node = Node::start(CONFIG);
    for format in FORMATS {
        let channel = format!("feed-{format:?}");
        let connect_token = token(json!({"sub": "9", "channels": [channel]}));
        let mut c = Client::open(&node, format).await;
        let subs = c.connect(&connect_token).await.connect.unwrap().subs;
        let position = subs[&channel].clone();
        c.close().await;
        node.publish(&channel, json!({"missed": 1})).await;
        node.publish(&channel, json!({"missed": 2})).await;
        let mut c = Client::open(&node, format).await;
        let request = SubscribeRequest {
            recover: true,
            epoch: position.epoch.clone(),
            offset: position.offset,
            ..Default::default()
        };
        let reply = c
            .call(Command {
                connect: Some(ConnectRequest {
                    token: connect_token.clone(),
                    subs: HashMap::from([(channel.clone(), request)]),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        let result = &reply.connect.unwrap().subs[&channel];
        assert!(result.recovered && result.was_recovering, "{result:?}");
        assert_eq!(result.publications.len(), 2);
        assert_eq!(common::data_of(&result.publications[1]), json!({"missed": 2}));
    }
}

#[tokio::test]
async fn streams_survive_a_restart_with_the_same_epoch() {
    let mut node = Node::start(CONFIG);
    let mut epoch = String::new();
    for n in 1..=3 {
        let result = node.publish("durable", json!({ "n": n })).await;
        assert_eq!(result["offset"], n);
        epoch = result["epoch"].as_str().unwrap().to_owned();
    }
    node.restart();
    let (_, history) = node.api("history", json!({"channel": "durable", "limit": -1})).await;
    let history = &history["result"];
    assert_eq!(history["epoch"], epoch.as_str());
    assert_eq!(history["offset"], 3);
    let offsets: Vec<u64> = history["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![1, 2, 3]);
    // A client that saw offset 1 before the restart recovers the rest after it.
    let mut c = Client::connected(&node, Format::Json, "1").await;
    let result = c.call(recover("durable", &epoch, 1)).await.subscribe.unwrap();
    assert!(result.recovered);
    assert_eq!(result.publications.len(), 2);
    assert_eq!(node.publish("durable", json!({"n": 4})).await["offset"], 4);
}

#[tokio::test]
async fn acknowledged_publications_survive_sigkill() {
    let mut node = Node::start(CONFIG);
    let mut last = serde_json::Value::Null;
    for n in 1..=20 {
        last = node.publish("crash", json!({ "n": n })).await;
    }
    node.kill();
    node.restart_after_kill();
    let (_, history) = node.api("history", json!({"channel": "crash", "limit": -1})).await;
    assert_eq!(history["result"]["epoch"], last["epoch"]);
    assert_eq!(history["result"]["offset"], 20);
    assert_eq!(
        history["result"]["publications"].as_array().unwrap().len(),
        10,
        "history_size is 10"
    );
}

#[tokio::test]
async fn concurrent_publishers_are_delivered_in_offset_order() {
    let node = Node::start(CONFIG);
    let mut c = Client::connected(&node, Format::Protobuf, "1").await;
    c.subscribed("ordered").await;
    let node = std::sync::Arc::new(node);
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                node.publish("ordered", json!({ "w": worker, "i": i })).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for expected in 1..=200u64 {
        assert_eq!(c.next_publication().await.offset, expected);
    }
}

#[tokio::test]
async fn subscribing_while_publishing_loses_and_duplicates_nothing() {
    let config = CONFIG.replace("history_size = 10\n", "history_size = 1000\n");
    let node = std::sync::Arc::new(Node::start(&config));
    let first = node.publish("busy", json!({"n": 0})).await;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    let publisher = {
        let node = node.clone();
        tokio::spawn(async move {
            for n in 1..300 {
                node.publish("busy", json!({ "n": n })).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut c = Client::connected(&node, Format::Json, "1").await;
    let result = c.call(recover("busy", &epoch, 0)).await.subscribe.unwrap();
    assert!(result.recovered, "{result:?}");
    let mut seen: Vec<u64> = result.publications.iter().map(|p| p.offset).collect();
    publisher.await.unwrap();
    while seen.last() != Some(&300) {
        seen.push(c.next_publication().await.offset);
    }
    assert_eq!(seen, (1..=300).collect::<Vec<_>>());
}

#[tokio::test]
async fn history_limit_since_reverse() {
    let node = Node::start(CONFIG);
    for format in FORMATS {
        let channel = format!("hist-{format:?}");
        for n in 1..=5 {
            node.publish(&channel, json!({ "n": n })).await;
        }
        let mut c = Client::connected(&node, format, "1").await;
        c.subscribed(&channel).await;
        let offsets =
            |h: &herald::protocol::proto::HistoryResult| h.publications.iter().map(|p| p.offset).collect::<Vec<_>>();
        let h = c.call(cmd::history(&channel, 2, None, false)).await.history.unwrap();
        assert_eq!(offsets(&h), vec![1, 2]);
        assert_eq!(h.offset, 5);
        let epoch = h.epoch.clone();
        let h = c
            .call(cmd::history(&channel, -1, Some((2, &epoch)), false))
            .await
            .history
            .unwrap();
        assert_eq!(offsets(&h), vec![3, 4, 5]);
        let h = c.call(cmd::history(&channel, 2, None, true)).await.history.unwrap();
        assert_eq!(offsets(&h), vec![5, 4]);
        let h = c
            .call(cmd::history(&channel, -1, Some((4, &epoch)), true))
            .await
            .history
            .unwrap();
        assert_eq!(offsets(&h), vec![3, 2, 1]);
        let h = c.call(cmd::history(&channel, 0, None, false)).await.history.unwrap();
        assert!(h.publications.is_empty());
        assert_eq!((h.offset, h.epoch.as_str()), (5, epoch.as_str()));
        let h = c.call(cmd::history(&channel, -1, None, false)).await.history.unwrap();
        assert_eq!(offsets(&h), vec![1, 2, 3, 4, 5]);
        let wrong = c.call(cmd::history(&channel, 1, Some((1, "nope")), false)).await;
        assert_eq!(wrong.error.unwrap().code, 112);
    }
}

#[tokio::test]
async fn presence_and_join_leave_follow_live_connections() {
    let node = Node::start(CONFIG);
    for format in FORMATS {
        let channel = format!("lobby-{format:?}");
        let mut a = Client::connected(&node, format, "ann").await;
        a.subscribed(&channel).await;
        assert_eq!(a.push().await.join.unwrap().info.unwrap().user, "ann");
        let mut b = Client::connected(&node, format, "ann").await;
        b.subscribed(&channel).await;
        let join = a.push().await.join.unwrap().info.unwrap();
        assert_eq!(join.user, "ann");
        assert!(!join.client.is_empty());
        let stats = a.call(cmd::presence_stats(&channel)).await.presence_stats.unwrap();
        assert_eq!((stats.num_clients, stats.num_users), (2, 1));
        let presence = a.call(cmd::presence(&channel)).await.presence.unwrap().presence;
        assert!(presence.contains_key(&join.client));
        // Unsubscribe: a leave push, and the entry is gone.
        b.call(cmd::unsubscribe(&channel)).await;
        let leave = a.push().await.leave.unwrap().info.unwrap();
        assert_eq!(leave.client, join.client);
        let stats = a.call(cmd::presence_stats(&channel)).await.presence_stats.unwrap();
        assert_eq!(stats.num_clients, 1);
        // Disconnect: the same, without any command from the client.
        let mut c = Client::connected(&node, format, "cid").await;
        c.subscribed(&channel).await;
        assert_eq!(a.push().await.join.unwrap().info.unwrap().user, "cid");
        c.close().await;
        assert_eq!(a.push().await.leave.unwrap().info.unwrap().user, "cid");
        let node_ref = &node;
        let channel_ref = &channel;
        assert!(
            eventually(Duration::from_secs(2), || async move {
                let (_, v) = node_ref.api("presence_stats", json!({ "channel": channel_ref })).await;
                v["result"]["num_clients"] == 1
            })
            .await
        );
    }
}

#[tokio::test]
async fn reads_of_channels_never_published_to_store_nothing() {
    let mut node = Node::start(CONFIG);
    let fresh = |kind: &str, n: usize| format!("fresh-{kind}-{n}");
    let mut c = Client::connected(&node, Format::Json, "1").await;
    for n in 0..100 {
        // A positioned subscribe, a client history call, a recovering subscribe, an API history.
        let result = c.subscribed(&fresh("sub", n)).await;
        assert!(result.positioned && result.recoverable, "{result:?}");
        assert_eq!((result.epoch.as_str(), result.offset), ("", 0), "the empty position");
        let h = c.call(cmd::history(&fresh("sub", n), 10, None, false)).await;
        let h = h.history.unwrap_or_else(|| panic!("{:?}", h.error));
        assert!(h.publications.is_empty());
        assert_eq!((h.epoch.as_str(), h.offset), ("", 0));
        c.call(cmd::unsubscribe(&fresh("sub", n))).await;
        let result = c.call(recover(&fresh("recover", n), "", 0)).await.subscribe.unwrap();
        assert!(result.recovered, "nothing was missed: {result:?}");
        c.call(cmd::unsubscribe(&fresh("recover", n))).await;
        let (status, body) = node
            .api("history", json!({"channel": fresh("api", n), "limit": 10}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    c.close().await;
    node.restart();
    // Had any of those reads created a stream, it would answer with its epoch, here and after
    // the restart (history itself creates nothing).
    for n in 0..100 {
        for kind in ["sub", "recover", "api"] {
            let (_, body) = node
                .api("history", json!({"channel": fresh(kind, n), "limit": 0}))
                .await;
            assert_eq!(
                (&body["result"]["epoch"], &body["result"]["offset"]),
                (&json!(""), &json!(0)),
                "{kind} {n}: {body}"
            );
        }
    }
}

#[tokio::test]
async fn a_subscriber_to_a_channel_never_published_to_follows_its_first_publications() {
    let node = Node::start(CONFIG);
    for format in FORMATS {
        let channel = format!("first-{format:?}");
        let mut c = Client::connected(&node, format, "1").await;
        let told = c.subscribed(&channel).await;
        assert_eq!((told.epoch.as_str(), told.offset), ("", 0));
        // The first publication creates the stream with an epoch the subscriber was not told:
        // it is delivered, not taken for a gap (unsubscribe 2500).
        let epoch = node.publish(&channel, json!({"n": 1})).await["epoch"].clone();
        assert_ne!(epoch, json!(""));
        node.publish(&channel, json!({"n": 2})).await;
        for expected in 1..=2 {
            let publication = c.next_publication().await;
            assert_eq!(
                (publication.offset, common::data_of(&publication)),
                (expected, json!({ "n": expected }))
            );
        }
        c.close().await;
        node.publish(&channel, json!({"n": 3})).await;
        // An SDK recovers with the epoch it was told (empty) and the last offset it saw.
        let mut c = Client::connected(&node, format, "1").await;
        let result = c.call(recover(&channel, &told.epoch, 2)).await.subscribe.unwrap();
        assert!(result.recovered && result.was_recovering, "{result:?}");
        assert_eq!(json!(result.epoch), epoch);
        let offsets: Vec<u64> = result.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![3]);
        node.publish(&channel, json!({"n": 4})).await;
        assert_eq!(c.next_publication().await.offset, 4);
    }
}

#[tokio::test]
async fn history_and_recovery_at_offset_and_limit_extremes() {
    let node = Node::start(CONFIG);
    let channel = "extremes";
    let mut epoch = String::new();
    for n in 1..=5 {
        epoch = node.publish(channel, json!({ "n": n })).await["epoch"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    let all = vec![1, 2, 3, 4, 5];
    let newest_first = vec![5, 4, 3, 2, 1];
    for format in FORMATS {
        let mut c = Client::connected(&node, format, "1").await;
        c.subscribed(channel).await;
        let mut history = async |limit: i32, since: Option<u64>, reverse: bool| {
            let reply = c
                .call(cmd::history(
                    channel,
                    limit,
                    since.map(|o| (o, epoch.as_str())),
                    reverse,
                ))
                .await;
            match reply.history {
                Some(h) => {
                    assert_eq!((h.offset, h.epoch.as_str()), (5, epoch.as_str()));
                    Ok(h.publications.iter().map(|p| p.offset).collect::<Vec<_>>())
                }
                None => Err(reply.error.unwrap().code),
            }
        };
        // Nothing follows u64::MAX: it must not wrap around to the oldest publications.
        assert_eq!(history(-1, Some(u64::MAX), false).await, Ok(vec![]));
        assert_eq!(history(-1, Some(u64::MAX - 1), false).await, Ok(vec![]));
        assert_eq!(history(-1, Some(5), false).await, Ok(vec![]));
        assert_eq!(history(-1, Some(0), false).await, Ok(all.clone()));
        // Everything precedes u64::MAX; nothing precedes 1; "before 0" is not a position.
        assert_eq!(history(-1, Some(u64::MAX), true).await, Ok(newest_first.clone()));
        assert_eq!(history(2, Some(u64::MAX), true).await, Ok(vec![5, 4]));
        assert_eq!(history(-1, Some(1), true).await, Ok(vec![]));
        assert_eq!(history(-1, Some(0), true).await, Err(107));
        // Any negative limit is "as many as allowed"; huge ones are capped, not converted wrongly.
        for limit in [-1, i32::MIN, i32::MAX] {
            assert_eq!(history(limit, None, false).await, Ok(all.clone()), "limit {limit}");
            assert_eq!(
                history(limit, None, true).await,
                Ok(newest_first.clone()),
                "limit {limit}"
            );
        }
        assert_eq!(history(0, Some(u64::MAX), false).await, Ok(vec![]));
        // Recovery from a position past the stream's end is refused, not wrapped.
        c.call(cmd::unsubscribe(channel)).await;
        for offset in [u64::MAX, 6] {
            let result = c.call(recover(channel, &epoch, offset)).await.subscribe.unwrap();
            assert!(!result.recovered && result.publications.is_empty(), "{result:?}");
            assert_eq!(result.offset, 5);
            c.call(cmd::unsubscribe(channel)).await;
        }
    }
    // The API takes an i32 limit (Centrifugo's HistoryRequest) and a u64 offset.
    let api = async |body: serde_json::Value| {
        let (status, body) = node.api("history", body).await;
        match body["result"]["publications"].as_array() {
            Some(p) => Ok(p.iter().map(|p| p["offset"].as_u64().unwrap()).collect::<Vec<_>>()),
            None => Err((status, body)),
        }
    };
    let since = |offset: u64| json!({"offset": offset, "epoch": epoch});
    assert_eq!(
        api(json!({"channel": channel, "limit": -1, "since": since(u64::MAX)})).await,
        Ok(vec![])
    );
    assert_eq!(
        api(json!({"channel": channel, "limit": -1, "since": since(u64::MAX), "reverse": true})).await,
        Ok(newest_first.clone())
    );
    for limit in [i32::MIN, i32::MAX] {
        assert_eq!(api(json!({"channel": channel, "limit": limit})).await, Ok(all.clone()));
    }
    for limit in [i64::MIN, i64::MAX] {
        let refused = api(json!({"channel": channel, "limit": limit})).await;
        assert!(matches!(refused, Err((400, _))), "{refused:?}");
    }
    // Out of range for the field's type: a bad request, not a clamped or wrapped read.
    let too_big = r#"{"channel": "extremes", "limit": 1, "since": {"offset": 18446744073709551616}}"#;
    let (status, _) = node
        .api_with("history", too_big.into(), &[("X-API-Key", common::API_KEY)])
        .await;
    assert_eq!(status, 400);
}
