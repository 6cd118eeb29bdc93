//! Replicated streams (issue 10, item 5): channels with history sequenced by the Raft group,
//! under faults. Every scenario runs the checker (tests/common/checker.rs) over real SDK-like
//! WebSocket subscribers and API publishers on every node.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::checker::{self, history, publish, Addresses, Publishes, Subscriber};
use common::*;
use parking_lot::Mutex;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[client]
token_hmac_secret = "test-secret"
[api]
key = "test-api-key"
[channels.namespaces.hist]
history_size = 100000
history_ttl = "1h"
force_recovery = true
allow_subscribe_for_client = true
allow_history_for_client = true
allow_publish_for_client = true
"#;

/// Faster failure detection, a shorter wait for a leader, quick voter replacement.
const TIMING: &str =
    "probe_interval = \"200ms\"\nprobe_timeout = \"100ms\"\nsuspect_timeout = \"1s\"\nforward_timeout = \"4s\"";

const CONVERGE: Duration = Duration::from_secs(30);

/// These tests run one at a time: each starts several nodes whose elections and failure
/// detectors must not starve each other on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn addresses(cluster: &Cluster) -> Addresses {
    Arc::new(Mutex::new(
        cluster.nodes.iter().map(|n| n.is_running().then_some(n.addr)).collect(),
    ))
}

/// Waits until every subscriber got every acknowledged publication.
async fn caught_up(subscribers: &[Subscriber], publishes: &Mutex<Publishes>) {
    let publishes = publishes.lock().clone();
    if let Err(report) = checker::caught_up(subscribers, &publishes, CONVERGE).await {
        panic!("{report}");
    }
}

async fn verify(
    cluster: &Cluster,
    channel: &str,
    publishes: Mutex<Publishes>,
    subscribers: Vec<Subscriber>,
) -> Publishes {
    caught_up(&subscribers, &publishes).await;
    let mut histories = Vec::new();
    for node in cluster.nodes.iter().filter(|n| n.is_running()) {
        histories.push(history(node, channel).await);
    }
    let mut events = Vec::new();
    for s in subscribers {
        let name = s.name.clone();
        events.push((name, s.stop().await));
    }
    let publishes = publishes.into_inner();
    let problems = checker::check(&publishes, &histories, &events);
    assert!(
        problems.is_empty(),
        "checker found {} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    publishes
}

/// Scenario (a) for channels with history: subscribers on every node, publishers through
/// every node; one sequence, delivered once and in order everywhere; a repeated idempotency key
/// on another node returns the first position, and a stale version on another node is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_channels_are_sequenced_once_for_every_node() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, CONFIG, TIMING);
    cluster.converged(CONVERGE).await;
    cluster.leader_elected(3, CONVERGE).await;
    let addresses = addresses(&cluster);
    let channel = "hist:a";
    let subscribers: Vec<Subscriber> = (0..3)
        .map(|i| {
            Subscriber::spawn(
                &format!("sub{i}"),
                addresses.clone(),
                i,
                channel,
                user_token(&format!("u{i}")),
            )
        })
        .collect();
    // Every subscriber is in place (its first subscribe answered) before publishing.
    let ready = eventually(CONVERGE, || async {
        subscribers.iter().all(|s| !s.events.lock().is_empty())
    })
    .await;
    assert!(ready);
    let publishes = Mutex::new(Publishes::default());
    for round in 0..20 {
        for (i, node) in cluster.nodes.iter().enumerate() {
            assert!(publish(node.addr, channel, &format!("p{i}-{round}"), &publishes).await);
        }
    }
    // Idempotency across nodes: the repeat returns the first position.
    let first = node_publish(
        &cluster.nodes[0],
        json!({"channel": channel, "data": {"id": "once"}, "idempotency_key": "k1"}),
    )
    .await;
    let again = node_publish(
        &cluster.nodes[2],
        json!({"channel": channel, "data": {"id": "twice"}, "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(first, again);
    publishes.lock().acked.insert(
        "once".into(),
        (
            first["epoch"].as_str().unwrap().into(),
            first["offset"].as_u64().unwrap(),
        ),
    );
    // Versions across nodes: a version not above the last one, published through another
    // node, is dropped and answered with the stream's top (replicated as a versioned entry).
    let newer = node_publish(
        &cluster.nodes[1],
        json!({"channel": channel, "data": {"id": "v5"}, "version": 5, "version_epoch": "x"}),
    )
    .await;
    let stale = node_publish(
        &cluster.nodes[2],
        json!({"channel": channel, "data": {"id": "v4"}, "version": 4, "version_epoch": "x"}),
    )
    .await;
    assert_eq!(newer, stale);
    publishes.lock().acked.insert(
        "v5".into(),
        (
            newer["epoch"].as_str().unwrap().into(),
            newer["offset"].as_u64().unwrap(),
        ),
    );
    let publishes = verify(&cluster, channel, publishes, subscribers).await;
    let epochs: HashSet<&String> = publishes.acked.values().map(|(e, _)| e).collect();
    assert_eq!(epochs.len(), 1);
    let offsets: Vec<u64> = {
        let mut o: Vec<u64> = publishes.acked.values().map(|(_, o)| *o).collect();
        o.sort();
        o
    };
    assert_eq!(offsets, (1..=62).collect::<Vec<u64>>());
    // Where a history publish spends its time is measured: on the leader, proposals, log
    // writes and round trips to followers; on every node, applies; on followers, appends.
    let leader = cluster.leader().expect("a leader");
    for (node, metric) in [
        (leader, "herald_cluster_propose_duration_seconds_count"),
        (leader, "herald_cluster_log_write_duration_seconds_count"),
        (
            leader,
            "herald_cluster_raft_append_duration_seconds_count{side=\"leader\"}",
        ),
        (leader, "herald_cluster_apply_duration_seconds_count"),
        (
            (leader + 1) % 3,
            "herald_cluster_raft_append_duration_seconds_count{side=\"follower\"}",
        ),
        ((leader + 1) % 3, "herald_cluster_log_write_duration_seconds_count"),
        ((leader + 1) % 3, "herald_cluster_apply_duration_seconds_count"),
    ] {
        let count = cluster.nodes[node].metric(metric).await;
        assert!(count >= 1.0, "node {node}: {metric} is {count}");
    }
}

/// The last lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

async fn node_publish(node: &Node, body: Value) -> Value {
    let (status, reply) = node.api("publish", body).await;
    assert_eq!(status, 200, "{reply}");
    reply["result"].clone()
}

/// A positioned subscribe on a node that does not lead is answered only once the leader knows
/// of that node's interest: a publication made right after the answer is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_right_after_a_subscribe_on_a_follower_is_delivered() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, CONFIG, TIMING);
    cluster.converged(CONVERGE).await;
    let leader = cluster.leader_elected(3, CONVERGE).await;
    let follower = (leader + 1) % 3;
    let publisher = (leader + 2) % 3;
    let mut client = Client::connected(&cluster.nodes[follower], herald::protocol::Format::Json, "w").await;
    for i in 0..25 {
        let channel = format!("hist:window{i}");
        let reply = client
            .call(cmd::subscribe_with(herald::protocol::proto::SubscribeRequest {
                channel: channel.clone(),
                recoverable: true,
                positioned: true,
                ..Default::default()
            }))
            .await;
        assert!(reply.error.is_none(), "{:?}", reply.error);
        node_publish(
            &cluster.nodes[publisher],
            json!({"channel": channel, "data": {"id": i}}),
        )
        .await;
        let publication = client.next_publication().await;
        assert_eq!(publication.offset, 1, "round {i}");
        assert_eq!(data_of(&publication), json!({"id": i}));
    }
}

/// Scenario (b): the leader is killed (-9) again and again while every node publishes and
/// subscribers follow; each killed node comes back. No acknowledged publication is lost, no
/// position holds two payloads, subscribers see every gap signalled, and the epoch never
/// changes. Rounds: `HERALD_KILL_ROUNDS` (default 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kills_lose_no_acknowledged_publication_and_keep_the_epoch() {
    let _serial = SERIAL.lock().await;
    let rounds: usize = std::env::var("HERALD_KILL_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let mut cluster = Cluster::start(3, CONFIG, TIMING);
    cluster.converged(CONVERGE).await;
    cluster.leader_elected(3, CONVERGE).await;
    let addresses = addresses(&cluster);
    let channel = "hist:kills";
    let subscribers: Vec<Subscriber> = (0..3)
        .map(|i| {
            Subscriber::spawn(
                &format!("sub{i}"),
                addresses.clone(),
                i,
                channel,
                user_token(&format!("u{i}")),
            )
        })
        .collect();
    let publishes = Arc::new(Mutex::new(Publishes::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut publishers = Vec::new();
    for i in 0..3 {
        let (addresses, publishes, stop) = (addresses.clone(), publishes.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() && n < 100_000 {
                let address = addresses.lock()[i];
                match address {
                    Some(address) => {
                        publish(address, channel, &format!("p{i}-{n}"), &publishes).await;
                        n += 1;
                    }
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    let mut outages = Vec::new();
    for round in 0..rounds {
        let leader = cluster.leader_elected(3, CONVERGE).await;
        let acked_before = publishes.lock().acked.len();
        cluster.nodes[leader].kill();
        addresses.lock()[leader] = None;
        let killed = Instant::now();
        // Publishes are accepted again once a new leader is in place.
        let resumed = eventually(CONVERGE, || async { publishes.lock().acked.len() > acked_before + 3 }).await;
        assert!(resumed, "round {round}: no publish accepted after the kill");
        outages.push(killed.elapsed());
        cluster.nodes[leader].restart_after_kill();
        addresses.lock()[leader] = Some(cluster.nodes[leader].addr);
        cluster.converged(CONVERGE).await;
    }
    stop.cancel();
    for p in publishers {
        p.await.unwrap();
    }
    cluster.leader_elected(3, CONVERGE).await;
    let publishes = Arc::try_unwrap(publishes).map_err(|_| ()).unwrap();
    let acked = publishes.lock().acked.len();
    let publishes = verify(&cluster, channel, publishes, subscribers).await;
    let epochs: HashSet<&String> = publishes.acked.values().map(|(e, _)| e).collect();
    assert_eq!(epochs.len(), 1, "the epoch changed");
    outages.sort();
    eprintln!(
        "{rounds} leader kills: {acked} acknowledged publications, {} unknown; kill to publishes accepted again: median {:?}, max {:?}",
        publishes.unknown.len(),
        outages[outages.len() / 2],
        outages.last().unwrap()
    );
}

/// Scenario (e): a fourth node joins under load: it becomes an edge node (three voters stay),
/// its subscriber receives, and what is published through it is sequenced with the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_under_load_as_an_edge_node() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, CONFIG, TIMING);
    cluster.converged(CONVERGE).await;
    cluster.leader_elected(3, CONVERGE).await;
    let channel = "hist:join";
    let addresses = addresses(&cluster);
    let mut subscribers = vec![Subscriber::spawn(
        "sub0",
        addresses.clone(),
        0,
        channel,
        user_token("u0"),
    )];
    let publishes = Arc::new(Mutex::new(Publishes::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (addresses, publishes, stop) = (addresses.clone(), publishes.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() && n < 100_000 {
                let address = addresses.lock()[n % 3].unwrap();
                publish(address, channel, &format!("load-{n}"), &publishes).await;
                n += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let joined = Instant::now();
    let i = cluster.add_node();
    cluster.converged(CONVERGE).await;
    eprintln!("fourth node converged {:?} after it started", joined.elapsed());
    addresses.lock().push(Some(cluster.nodes[i].addr));
    subscribers.push(Subscriber::spawn(
        "sub3",
        addresses.clone(),
        3,
        channel,
        user_token("u3"),
    ));
    let ready = eventually(CONVERGE, || async { !subscribers[1].events.lock().is_empty() }).await;
    assert!(ready);
    for n in 0..20 {
        assert!(publish(cluster.nodes[i].addr, channel, &format!("edge-{n}"), &publishes).await);
    }
    stop.cancel();
    load.await.unwrap();
    let status = cluster.nodes[i].cluster_status();
    assert_eq!(status["role"], "edge", "{status:#}");
    let voters = cluster.nodes[0].cluster_status()["voters"].clone();
    assert_eq!(voters.as_array().unwrap().len(), 3, "{voters}");
    assert!(!voters.as_array().unwrap().contains(&json!("node3")));
    let publishes = Arc::try_unwrap(publishes).map_err(|_| ()).unwrap();
    verify(&cluster, channel, publishes, subscribers).await;
}

/// A full-cluster restart (SIGTERM on every node, then start them all): the group elects a
/// leader again from what the nodes stored, and the stream keeps its publications and epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cluster_restart_keeps_streams_and_epochs() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, CONFIG, TIMING);
    cluster.converged(CONVERGE).await;
    cluster.leader_elected(3, CONVERGE).await;
    let mut positions = BTreeMap::new();
    for n in 0..10 {
        let result = node_publish(
            &cluster.nodes[n % 3],
            json!({"channel": "hist:restart", "data": {"id": n.to_string()}}),
        )
        .await;
        positions.insert(n, (result["epoch"].clone(), result["offset"].clone()));
    }
    for node in &mut cluster.nodes {
        assert!(node.terminate(), "{}", node.log());
    }
    for node in &mut cluster.nodes {
        node.restart_after_kill();
    }
    cluster.converged(CONVERGE).await;
    cluster.leader_elected(3, CONVERGE).await;
    for node in &cluster.nodes {
        let history = history(node, "hist:restart").await;
        assert_eq!(history.len(), 10);
        for (epoch, offset, id) in history {
            let n: usize = id.parse().unwrap_or_else(|_| panic!("{id}"));
            let _ = n;
            let expected = positions.values().find(|(_, o)| o.as_u64() == Some(offset)).unwrap();
            assert_eq!(expected.0, epoch.as_str());
        }
    }
    let next = node_publish(
        &cluster.nodes[1],
        json!({"channel": "hist:restart", "data": {"id": 10}}),
    )
    .await;
    assert_eq!(next["offset"], 11);
    assert_eq!(next["epoch"], positions[&0].0);
}

/// Without a quorum, a publish to a channel with history waits `cluster.forward_timeout`,
/// then fails with 100 and a log line; `/health` answers 503 with the reason. Channels without
/// history keep working. Once a majority is back, publishes are accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_history_publishes_fail_with_100_and_health_says_why() {
    let _serial = SERIAL.lock().await;
    const CONFIG_PLAIN: &str = "[channels.namespaces.plain]\nallow_subscribe_for_client = true\n";
    let config = format!("{CONFIG}{CONFIG_PLAIN}");
    let timing = TIMING.replace("forward_timeout = \"4s\"", "forward_timeout = \"1s\"");
    let mut cluster = Cluster::start(3, &config, &timing);
    cluster.converged(CONVERGE).await;
    let leader = cluster.leader_elected(3, CONVERGE).await;
    let survivor = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    cluster.nodes[leader].kill();
    cluster.nodes[other].kill();
    let node = &cluster.nodes[survivor];
    let unhealthy = eventually(CONVERGE, || async {
        let response = reqwest::get(node.http("/health")).await.unwrap();
        response.status() == 503
    })
    .await;
    assert!(unhealthy, "health stayed 200 without a quorum");
    let health: Value = reqwest::get(node.http("/health")).await.unwrap().json().await.unwrap();
    assert!(health["cluster"].is_string(), "{health}");
    let started = Instant::now();
    let (status, reply) = node.api("publish", json!({"channel": "hist:q", "data": {}})).await;
    assert_eq!(status, 200);
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(node.log().contains("no leader of the replicated log"), "no log line");
    // Without history: no sequencer needed.
    let (_, reply) = node.api("publish", json!({"channel": "plain:q", "data": {}})).await;
    assert_eq!(reply["result"], json!({}), "{reply}");

    cluster.nodes[other].restart_after_kill();
    let back = eventually(CONVERGE, || async {
        let (_, reply) = cluster.nodes[survivor]
            .api("publish", json!({"channel": "hist:q", "data": {}}))
            .await;
        reply["result"]["offset"].is_u64()
    })
    .await;
    assert!(
        back,
        "publishes not accepted with a majority back\n--- survivor:\n{}\n--- restarted:\n{}",
        tail(&cluster.nodes[survivor].log()),
        tail(&cluster.nodes[other].log())
    );
}

/// A voter gone for `cluster.replace_dead_voter_after` is replaced by a live edge node (which
/// first catches up as a learner), so the group keeps three voters; the node, back with its
/// store lost, is a new member (a new id) and never votes with a log it no longer has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_gone_too_long_is_replaced_and_a_node_without_its_store_rejoins_as_new() {
    let _serial = SERIAL.lock().await;
    let timing = format!("{TIMING}\nreplace_dead_voter_after = \"2s\"");
    let mut cluster = Cluster::start(4, CONFIG, &timing);
    cluster.converged(CONVERGE).await;
    let leader = cluster.leader_elected(3, CONVERGE).await;
    for n in 0..5 {
        node_publish(
            &cluster.nodes[leader],
            json!({"channel": "hist:v", "data": {"id": format!("a{n}")}}),
        )
        .await;
    }
    let voters = |status: &Value| -> Vec<String> {
        let mut v: Vec<String> = status["voters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let before = voters(&cluster.nodes[leader].cluster_status());
    let edge = (0..4).find(|i| !before.contains(&format!("node{i}"))).unwrap();
    let gone = (0..4).find(|i| *i != leader && *i != edge).unwrap();
    let old_id = cluster.nodes[gone].cluster_status()["raft_id"].clone();
    cluster.nodes[gone].kill();
    let killed = Instant::now();
    let replaced = eventually(CONVERGE, || async {
        let Some(l) = cluster.leader() else { return false };
        let now = voters(&cluster.nodes[l].cluster_status());
        now.len() == 3 && now.contains(&format!("node{edge}")) && !now.contains(&format!("node{gone}"))
    })
    .await;
    assert!(
        replaced,
        "node{gone} was not replaced: {:#}",
        cluster.nodes[leader].cluster_status()
    );
    eprintln!(
        "voter replaced {:?} after its kill (replace_dead_voter_after = 2s)",
        killed.elapsed()
    );
    // The new voter holds the whole stream.
    let history = history(&cluster.nodes[edge], "hist:v").await;
    assert_eq!(history.len(), 5);

    // Back without its store: a new id, outside the voters.
    std::fs::remove_dir_all(cluster.nodes[gone].storage_path()).unwrap();
    cluster.nodes[gone].restart_after_kill();
    cluster.converged(CONVERGE).await;
    let status = cluster.nodes[gone].cluster_status();
    assert_ne!(status["raft_id"], old_id, "same id after losing the store");
    let l = cluster.leader_elected(3, CONVERGE).await;
    assert!(!voters(&cluster.nodes[l].cluster_status()).contains(&format!("node{gone}")));
    assert_eq!(status["role"], "edge", "{status:#}");
    // It serves clients: publishes through it are sequenced.
    let result = node_publish(
        &cluster.nodes[gone],
        json!({"channel": "hist:v", "data": {"id": "back"}}),
    )
    .await;
    assert_eq!(result["offset"], 6);
}

/// `history_remove`, retention and the forgetting of idle streams go through the log: every
/// node serves the same result, and the leader's clock decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_remove_and_retention_are_replicated() {
    let _serial = SERIAL.lock().await;
    let config = format!(
        "{CONFIG}[storage]\nretention_interval = \"200ms\"\n[channels.namespaces.brief]\nhistory_size = 3\nhistory_ttl = \"2s\"\nhistory_meta_ttl = \"2s\"\n"
    );
    let cluster = Cluster::start(3, &config, TIMING);
    cluster.converged(CONVERGE).await;
    cluster.leader_elected(3, CONVERGE).await;
    let first = node_publish(&cluster.nodes[0], json!({"channel": "hist:rm", "data": {"id": "a"}})).await;
    let (status, reply) = cluster.nodes[1]
        .api("history_remove", json!({"channel": "hist:rm"}))
        .await;
    assert_eq!(status, 200, "{reply}");
    let after = node_publish(&cluster.nodes[2], json!({"channel": "hist:rm", "data": {"id": "b"}})).await;
    assert_ne!(after["epoch"], first["epoch"], "history_remove starts a new epoch");
    assert_eq!(after["offset"], 1);
    for node in &cluster.nodes {
        assert_eq!(
            history(node, "hist:rm").await,
            vec![(after["epoch"].as_str().unwrap().to_owned(), 1, "b".to_owned())]
        );
    }
    // Size retention and the forgetting of an idle stream.
    for n in 0..5 {
        node_publish(
            &cluster.nodes[n % 3],
            json!({"channel": "brief:x", "data": {"id": format!("x{n}")}}),
        )
        .await;
    }
    for node in &cluster.nodes {
        let ids: Vec<String> = history(node, "brief:x")
            .await
            .into_iter()
            .map(|(_, _, id)| id)
            .collect();
        assert_eq!(ids, ["x2", "x3", "x4"]);
    }
    let forgotten = eventually(CONVERGE, || async {
        let (_, reply) = cluster.nodes[2]
            .api("history", json!({"channel": "brief:x", "limit": 0}))
            .await;
        reply["result"]["offset"].as_u64().unwrap_or(0) == 0
    })
    .await;
    assert!(forgotten, "the idle stream was not forgotten");
    // Every replica forgot it: a new publication starts a new stream at offset 1 wherever it
    // is read.
    let again = node_publish(&cluster.nodes[0], json!({"channel": "brief:x", "data": {"id": "y"}})).await;
    assert_eq!(again["offset"], 1);
}

/// A voter that comes back without its store before it was replaced is a new replica: it
/// refuses the messages meant for the replica it was (so it never votes with a log it no
/// longer has), the group keeps its quorum with the others, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_back_without_its_store_never_answers_for_its_old_replica() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, CONFIG, TIMING);
    cluster.converged(CONVERGE).await;
    let leader = cluster.leader_elected(3, CONVERGE).await;
    let publishes = Mutex::new(Publishes::default());
    for n in 0..10 {
        assert!(publish(cluster.nodes[n % 3].addr, "hist:lost", &format!("a{n}"), &publishes).await);
    }
    let gone = (leader + 1) % 3;
    let old_id = cluster.nodes[gone].cluster_status()["raft_id"].clone();
    cluster.nodes[gone].kill();
    std::fs::remove_dir_all(cluster.nodes[gone].storage_path()).unwrap();
    cluster.nodes[gone].restart_after_kill();
    cluster.converged(CONVERGE).await;
    let status = cluster.nodes[gone].cluster_status();
    assert_ne!(status["raft_id"], old_id);
    // It holds no log and takes no part in the group: the leader still counts the old id
    // among the voters (it is not replaced yet), and commits with the third node.
    for n in 0..10 {
        assert!(publish(cluster.nodes[n % 3].addr, "hist:lost", &format!("b{n}"), &publishes).await);
    }
    let status = cluster.nodes[gone].cluster_status();
    assert_eq!(status["role"], "edge", "{status:#}");
    assert_eq!(
        status["last_log_index"], 0,
        "the new replica got log entries: {status:#}"
    );
    let leader_status = cluster.nodes[leader].cluster_status();
    assert_eq!(leader_status["role"], "leader", "{leader_status:#}");
    // Every node serves the whole stream, the one without a store included (through the leader).
    let publishes = publishes.into_inner();
    assert_every_history_clean(&cluster, "hist:lost", &publishes).await;
}

/// Reads `channel`'s history from every node and runs the checker over it.
async fn assert_every_history_clean(cluster: &Cluster, channel: &str, publishes: &Publishes) {
    let mut histories = Vec::new();
    for node in &cluster.nodes {
        histories.push(history(node, channel).await);
    }
    let problems = checker::check(publishes, &histories, &[]);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The bootstrap rule: node 0 has no seeds and started the group. Killed, its store lost, and
/// started again, it finds members already in a group and waits to be added, rather than start
/// a second group that would sequence the same channels again (from offset 1, in an epoch of
/// its own) and answer history from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seedless_node_back_without_its_store_does_not_start_a_second_group() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, CONFIG, TIMING);
    cluster.converged(CONVERGE).await;
    cluster.leader_elected(3, CONVERGE).await;
    let publishes = Mutex::new(Publishes::default());
    for n in 0..10 {
        assert!(publish(cluster.nodes[n % 3].addr, "hist:seedless", &format!("a{n}"), &publishes).await);
    }
    let old_id = cluster.nodes[0].cluster_status()["raft_id"].clone();
    cluster.nodes[0].kill();
    std::fs::remove_dir_all(cluster.nodes[0].storage_path()).unwrap();
    let restarted = Instant::now();
    cluster.nodes[0].restart_after_kill();
    cluster.converged(CONVERGE).await;
    // Past `bootstrap_wait` (3 s): a node that was to start a group has started it by now.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(restarted.elapsed())).await;
    let status = cluster.nodes[0].cluster_status();
    assert_ne!(status["raft_id"], old_id);
    assert_eq!(status["role"], "edge", "{status:#}\n{}", tail(&cluster.nodes[0].log()));
    assert!(
        cluster.nodes[0].log().contains("not starting another"),
        "{}",
        tail(&cluster.nodes[0].log())
    );
    // Publishes through every node, node 0 included, are sequenced by the one group.
    for n in 0..10 {
        assert!(publish(cluster.nodes[n % 3].addr, "hist:seedless", &format!("b{n}"), &publishes).await);
    }
    let publishes = publishes.into_inner();
    assert_every_history_clean(&cluster, "hist:seedless", &publishes).await;
    let positions: BTreeSet<&(String, u64)> = publishes.acked.values().collect();
    let epochs: BTreeSet<&str> = positions.iter().map(|(epoch, _)| epoch.as_str()).collect();
    assert_eq!(epochs.len(), 1, "one sequence, one epoch: {positions:?}");
    assert_eq!(
        positions.iter().map(|(_, offset)| *offset).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<u64>>()
    );
}

/// A node that joins after the log was compacted catches up from a snapshot of the streams:
/// with `snapshot_entries = 20`, a voter is replaced once 300 entries were written, and the
/// replacement (which never saw the early entries) serves the whole stream, with the same
/// positions, once the old voters are gone. The snapshot (about 60 KB) travels in pieces of
/// 1 KiB (`snapshot_chunk_size`): many of them, assembled in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_voter_catches_up_from_a_snapshot() {
    let _serial = SERIAL.lock().await;
    let timing =
        format!("{TIMING}\nreplace_dead_voter_after = \"1s\"\nsnapshot_entries = 20\nsnapshot_chunk_size = 1024");
    let mut cluster = Cluster::start(3, CONFIG, &timing);
    cluster.converged(CONVERGE).await;
    let leader = cluster.leader_elected(3, CONVERGE).await;
    let publishes = Mutex::new(Publishes::default());
    for n in 0..300 {
        assert!(publish(cluster.nodes[leader].addr, "hist:snap", &format!("s{n}"), &publishes).await);
    }
    // A fourth node joins (edge), then a voter dies: the fourth replaces it, from a snapshot.
    let fourth = cluster.add_node();
    cluster.converged(CONVERGE).await;
    let gone = (leader + 1) % 3;
    cluster.nodes[gone].kill();
    let replaced = eventually(CONVERGE, || async {
        let status = cluster.nodes[leader].cluster_status();
        status["voters"]
            .as_array()
            .is_some_and(|v| v.contains(&json!(format!("node{fourth}"))) && !v.contains(&json!(format!("node{gone}"))))
    })
    .await;
    assert!(replaced, "{:#}", cluster.nodes[leader].cluster_status());
    // The replacement may become a voter before the leader's snapshot reaches it (the other two
    // voters are a majority meanwhile): the install follows shortly.
    let installed = eventually(CONVERGE, || async {
        cluster.nodes[fourth].log().contains("cluster: snapshot installed")
    })
    .await;
    assert!(
        installed,
        "the new voter did not catch up from a snapshot:\n{}",
        cluster.nodes[fourth].log()
    );
    let chunks = cluster.nodes[fourth]
        .metric("herald_cluster_snapshot_chunks_total{direction=\"in\"}")
        .await;
    assert!(chunks >= 10.0, "the snapshot came in {chunks} pieces of 1 KiB");
    // The fourth node now holds a majority with the third: the group lives on without the
    // nodes that saw the early entries as log entries, and both survivors applied the same.
    let third = (0..3).find(|i| *i != leader && *i != gone).unwrap();
    cluster.nodes[leader].kill();
    let new_leader = eventually(CONVERGE, || async {
        [third, fourth]
            .iter()
            .any(|i| cluster.nodes[*i].cluster_status()["role"] == "leader")
    })
    .await;
    assert!(new_leader, "no leader among the survivors");
    let caught_up = eventually(CONVERGE, || async {
        let (a, b) = (
            cluster.nodes[third].cluster_status(),
            cluster.nodes[fourth].cluster_status(),
        );
        a["applied"].as_u64().is_some_and(|x| x > 300) && a["applied"] == b["applied"]
    })
    .await;
    assert!(
        caught_up,
        "{:#} {:#}",
        cluster.nodes[third].cluster_status(),
        cluster.nodes[fourth].cluster_status()
    );
    let publishes = publishes.into_inner();
    let histories = vec![history(&cluster.nodes[fourth], "hist:snap").await];
    assert_eq!(histories[0].len(), 300);
    let problems = checker::check(&publishes, &histories, &[]);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
