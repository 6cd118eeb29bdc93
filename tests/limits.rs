//! Limits and backpressure: each limit answers with its documented code, counts in a metric,
//! and leaves the node serving everyone else.

mod common;

use std::time::Duration;

use common::{cmd, still_served, token, Client, Node, CONFIG};
use herald::protocol::proto::Command;
use herald::protocol::Format;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

fn with_client(extra: &str) -> String {
    CONFIG.replace("[client]\n", &format!("[client]\n{extra}\n"))
}

#[tokio::test]
async fn channel_limit() {
    let node = Node::start(&with_client("channel_limit = 2"));
    let mut c = Client::connected(&node, Format::Json, "1").await;
    assert!(c.call(cmd::subscribe("a")).await.error.is_none());
    assert!(c.call(cmd::subscribe("b")).await.error.is_none());
    assert_eq!(c.call(cmd::subscribe("c")).await.error.unwrap().code, 106);
    // Unsubscribing frees a slot.
    c.call(cmd::unsubscribe("a")).await;
    assert!(c.call(cmd::subscribe("c")).await.error.is_none());
    // Server-side subscriptions over the limit close the connection with 3505.
    let mut s = Client::open(&node, Format::Protobuf).await;
    s.send(&Command {
        id: 1,
        ..common::cmd::connect(&token(json!({"sub": "2", "channels": ["x", "y", "z"]})))
    })
    .await;
    assert_eq!(s.closed().await.0, 3505);
    assert!(node.metric("herald_limit_rejections_total{limit=\"channel\"}").await >= 2.0);
}

#[tokio::test]
async fn user_connection_limit() {
    let node = Node::start(&with_client("user_connection_limit = 2"));
    let _a = Client::connected(&node, Format::Json, "7").await;
    let b = Client::connected(&node, Format::Json, "7").await;
    let mut third = Client::open(&node, Format::Json).await;
    third
        .send(&Command {
            id: 1,
            ..common::cmd::connect(&common::user_token("7"))
        })
        .await;
    assert_eq!(third.closed().await.0, 3504);
    // Another user is not affected; a closed connection frees a slot.
    let _other = Client::connected(&node, Format::Json, "8").await;
    b.close().await;
    let node_ref = &node;
    assert!(
        common::eventually(Duration::from_secs(3), || async move {
            let mut c = Client::open(node_ref, Format::Json).await;
            c.connect(&common::user_token("7")).await;
            c.silent_for(Duration::from_millis(100)).await && c.closed.is_none()
        })
        .await
    );
}

#[tokio::test]
async fn command_flood_gets_111_then_3013_and_others_are_served() {
    let node = Node::start(&with_client("command_rate_limit = 20\ncommand_burst = 10"));
    let mut bystander = Client::connected(&node, Format::Json, "calm").await;
    bystander.call(cmd::subscribe("calm")).await;
    let mut flood = Client::connected(&node, Format::Json, "flood").await;
    // Send far more than the burst in one frame without waiting for replies.
    let frame: Vec<String> = (0..60)
        .map(|i| {
            let mut c = cmd::presence_stats("x");
            c.id = 100 + i;
            serde_json::to_string(&c).unwrap()
        })
        .collect();
    flood.send_raw(Message::text(frame.join("\n"))).await;
    let mut rejected = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), flood.push_or_reply_raw())
            .await
            .unwrap()
        {
            Some(reply) if reply.error.as_ref().is_some_and(|e| e.code == 111) => {
                assert!(reply.error.unwrap().temporary);
                rejected += 1;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(rejected >= 5, "only {rejected} rejections");
    assert_eq!(flood.closed.as_ref().unwrap().0, 3013);
    still_served(&node, &mut bystander, "calm").await;
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_closed_as_slow_and_others_keep_up() {
    let config = with_client("max_message_size = 16384\nmax_queue_bytes = 131072")
        .replace("[api]\n", "[api]\nmax_body_size = 49152\n");
    let node = Node::start(&config);
    let mut reader = Client::connected(&node, Format::Json, "reader").await;
    reader.call(cmd::subscribe("firehose")).await;
    let mut sleeper = Client::connected(&node, Format::Json, "sleeper").await;
    sleeper.call(cmd::subscribe("firehose")).await;
    // The sleeper now reads nothing. Publish well over its queue plus the loopback socket
    // buffers (several MB with autotuning): up to 40 MB, stopping as soon as it is closed.
    let payload = "x".repeat(40 * 1024);
    let mut last = 0;
    for i in 0..1000 {
        last = node.publish("firehose", json!({ "p": payload })).await["offset"]
            .as_u64()
            .unwrap();
        // The reader keeps up.
        loop {
            if let Some(p) = reader.push().await.r#pub {
                assert_eq!(p.offset, last);
                break;
            }
        }
        if i % 20 == 19 && node.metric("herald_slow_disconnects_total").await >= 1.0 {
            break;
        }
    }
    assert!(
        node.metric("herald_slow_disconnects_total").await >= 1.0,
        "the sleeper was never closed"
    );
    // The sleeper finds its connection closed: after what was already in flight, either the 3008
    // frame or a reset when the server gave up writing to it.
    let (code, _) = sleeper.closed().await;
    assert!(code == 3008 || code == 1006, "closed with {code}");
    assert!(last < 1000);
}

#[tokio::test]
async fn connection_rate_limit_sheds_a_storm() {
    let node = Node::start(&with_client("connection_rate_limit = 5\nconnection_burst = 5"));
    let mut opened = 0;
    let mut refused = 0;
    for _ in 0..40 {
        match tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(node.ws_url())).await {
            Ok(Ok(_)) => opened += 1,
            _ => refused += 1,
        }
    }
    assert!((5..40).contains(&opened), "opened {opened}, refused {refused}");
    // After the storm the node accepts again (the metrics request is a connection too).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        node.metric("herald_limit_rejections_total{limit=\"connection_rate\"}")
            .await
            >= 1.0
    );
    let mut c = Client::connected(&node, Format::Json, "after").await;
    assert!(c.call(cmd::subscribe("after")).await.error.is_none());
}

#[tokio::test]
async fn max_connections_answers_503() {
    let node = Node::start(&with_client("max_connections = 3"));
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(Client::connected(&node, Format::Json, &i.to_string()).await);
    }
    let err = tokio_tungstenite::connect_async(node.ws_url()).await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    held.pop().unwrap().close().await;
    let node_ref = &node;
    assert!(
        common::eventually(Duration::from_secs(3), || async move {
            tokio_tungstenite::connect_async(node_ref.ws_url()).await.is_ok()
        })
        .await
    );
}

#[tokio::test]
async fn api_body_limit_is_413() {
    let node = Node::start(&CONFIG.replace("[api]\n", "[api]\nmax_body_size = 1024\n"));
    let big = json!({"channel": "x", "data": {"p": "y".repeat(4096)}}).to_string();
    let (status, _) = node.api_with("publish", big, &[("X-API-Key", common::API_KEY)]).await;
    assert_eq!(status, 413);
    let (status, _) = node.api("publish", json!({"channel": "x", "data": {}})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn thousands_of_idle_connections_do_not_starve_a_subscriber() {
    // The stale delay is long enough that no held socket is closed while the 3000 are opened,
    // even on a loaded machine (15 s was seen with other builds running): otherwise freed slots
    // would let more than 2000 in.
    let node = Node::start(&with_client("max_connections = 2000\nstale_close_delay = \"30s\""));
    let started = std::time::Instant::now();
    let mut bystander = Client::connected(&node, Format::Protobuf, "calm").await;
    bystander.subscribed("calm").await;
    // 3000 sockets that upgrade and then say nothing: 2000 are held until they go stale, the rest
    // are refused at the handshake.
    let mut held = Vec::new();
    let mut refused = 0;
    for wave in 0..15 {
        let opens: Vec<_> = (0..200)
            .map(|_| tokio_tungstenite::connect_async(node.ws_url()))
            .collect();
        for result in futures_util::future::join_all(opens).await {
            match result {
                Ok((ws, _)) => held.push(ws),
                Err(_) => refused += 1,
            }
        }
        // The subscriber is served all along.
        if wave % 5 == 4 {
            still_served(&node, &mut bystander, "calm").await;
        }
    }
    let opened_in = started.elapsed();
    assert!(
        held.len() < 2000,
        "held {} (the subscriber holds one slot), opened in {opened_in:?}",
        held.len()
    );
    assert!(refused >= 1000, "refused {refused}, opened in {opened_in:?}");
    assert_eq!(reqwest::get(node.http("/health")).await.unwrap().status(), 200);
    // Idle sockets that never connect are closed as stale, freeing their slots.
    let node_ref = &node;
    assert!(
        common::eventually(Duration::from_secs(50), || async move {
            tokio_tungstenite::connect_async(node_ref.ws_url()).await.is_ok()
        })
        .await
    );
    still_served(&node, &mut bystander, "calm").await;
}

#[tokio::test]
async fn recovery_is_capped() {
    let node = Node::start(&with_client("recovery_max_publication_limit = 5"));
    let mut c = Client::connected(&node, Format::Json, "1").await;
    let first = c.subscribed("capped").await;
    c.call(cmd::unsubscribe("capped")).await;
    let recover = |offset: u64| {
        cmd::subscribe_with(herald::protocol::proto::SubscribeRequest {
            channel: "capped".into(),
            recover: true,
            epoch: first.epoch.clone(),
            offset,
            ..Default::default()
        })
    };
    for n in 0..6 {
        node.publish("capped", json!({ "n": n })).await;
    }
    // Six missed, the cap is five: not recovered, nothing replayed.
    let result = c.call(recover(0)).await.subscribe.unwrap();
    assert!(!result.recovered && result.publications.is_empty());
    c.call(cmd::unsubscribe("capped")).await;
    // Five missed: recovered.
    let result = c.call(recover(1)).await.subscribe.unwrap();
    assert!(result.recovered);
    assert_eq!(result.publications.len(), 5);
}

/// A client that sends WebSocket pings and reads nothing owes itself ~50 MB of pongs: the server
/// keeps only a few KB of them waiting (its memory does not follow the flood), and the connection
/// stays whole: once the client reads again, a publication arrives intact.
#[tokio::test]
async fn ping_flood_without_reading_stays_bounded() {
    let node = Node::start(CONFIG);
    let mut client = Client::connected(&node, Format::Json, "flood").await;
    client.subscribed("after-the-flood").await;
    let before = node.rss_bytes();
    let payload = vec![b'p'; 125];
    for _ in 0..400_000 {
        client.send_raw(Message::Ping(payload.clone().into())).await;
    }
    // Let the server read what is still in flight.
    let mut peak = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(node.rss_bytes());
    }
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "the server grew by {} MB during the flood",
        grown >> 20
    );
    node.publish("after-the-flood", json!({"still": "here"})).await;
    let mut pongs = 0;
    loop {
        match client.next_raw().await.expect("the connection is still open") {
            Message::Pong(_) => pongs += 1,
            Message::Text(text) if text.as_str().contains("after-the-flood") => break,
            Message::Text(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        pongs < 400_000,
        "every ping was answered although the client did not read"
    );
}
