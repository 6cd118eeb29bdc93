//! The cluster (issue 10): real `herald serve` processes, each with its inter-node listener on
//! its own loopback address, joined through the first node. Membership, links, interest
//! routing and the cluster-wide server API.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use herald::protocol::Format;
use serde_json::{json, Value};

/// Channels without history (those are routed without a sequencer).
const CONFIG: &str = r#"
[client]
token_hmac_secret = "test-secret"
[api]
key = "test-api-key"
[channels.namespaces.chat]
presence = true
join_leave = true
force_push_join_leave = true
allow_subscribe_for_client = true
allow_publish_for_client = true
allow_presence_for_client = true
"#;

/// Faster failure detection than the defaults, for tests that kill nodes.
const FAST: &str = "probe_interval = \"200ms\"\nprobe_timeout = \"100ms\"\nsuspect_timeout = \"1s\"";

const CONVERGE: Duration = Duration::from_secs(20);

async fn api(node: &Node, method: &str, body: Value) -> Value {
    let (status, reply) = node.api(method, body).await;
    assert_eq!(status, 200, "{method}: {reply}");
    assert!(reply.get("error").is_none(), "{method}: {reply}");
    reply["result"].clone()
}

/// Waits until `node` knows `entries` interest entries from its peers.
async fn knows_interest(node: &Node, entries: u64) {
    let ok = eventually(CONVERGE, || async {
        node.cluster_status()["remote_interest"] == entries
    })
    .await;
    assert!(ok, "interest did not converge: {:#}", node.cluster_status());
}

/// Scenario (a) without history: subscribers on node 0; publications through node 2's API and
/// a client on node 1 reach each subscriber exactly once, each publisher's in its order; a
/// publication crosses to a node once, whatever its number of subscribers, and never to a node
/// without any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_cross_once_per_interested_node_in_order() {
    let cluster = Cluster::start(3, CONFIG, "");
    cluster.converged(CONVERGE).await;
    let [n0, n1, n2] = &cluster.nodes[..] else {
        unreachable!()
    };

    let mut alice = Client::connected(n0, Format::Json, "alice").await;
    let mut bob = Client::connected(n0, Format::Protobuf, "bob").await;
    alice.subscribed("chat:room").await;
    bob.subscribed("chat:room").await;
    knows_interest(n1, 1).await;
    knows_interest(n2, 1).await;

    let mut carol = Client::connected(n1, Format::Json, "carol").await;
    const EACH: u64 = 40;
    for i in 0..EACH {
        api(
            n2,
            "publish",
            json!({"channel": "chat:room", "data": {"from": "api", "i": i}}),
        )
        .await;
        let reply = carol
            .call(cmd::publish(
                "chat:room",
                &json!({"from": "client", "i": i}).to_string(),
            ))
            .await;
        assert!(reply.error.is_none(), "{:?}", reply.error);
    }
    for subscriber in [&mut alice, &mut bob] {
        let mut next = [0u64, 0u64];
        for _ in 0..2 * EACH {
            let data = data_of(&subscriber.next_publication().await);
            let source = usize::from(data["from"] == "client");
            assert_eq!(data["i"], next[source], "out of order or duplicated: {data}");
            next[source] += 1;
        }
        assert_eq!(next, [EACH, EACH]);
        assert!(
            subscriber.silent_for(Duration::from_millis(300)).await,
            "a duplicate arrived"
        );
    }
    // Each publishing node sent each publication once, to node 0 only.
    assert_eq!(n2.metric("herald_cluster_routed_total").await, EACH as f64);
    assert_eq!(n1.metric("herald_cluster_routed_total").await, EACH as f64);
    assert_eq!(n0.metric("herald_cluster_routed_total").await, 0.0);

    // Once node 0's last subscriber leaves, nothing crosses any more.
    alice.call(cmd::unsubscribe("chat:room")).await;
    bob.call(cmd::unsubscribe("chat:room")).await;
    knows_interest(n2, 0).await;
    api(n2, "publish", json!({"channel": "chat:room", "data": {}})).await;
    assert_eq!(n2.metric("herald_cluster_routed_total").await, EACH as f64);
}

/// Presence, presence_stats, join/leave, channels and info cover every node; user commands
/// reach connections on other nodes; a killed node's entries disappear (no ghosts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_api_and_presence_span_the_cluster() {
    let mut cluster = Cluster::start(3, CONFIG, FAST);
    cluster.converged(CONVERGE).await;

    let mut alice = Client::connected(&cluster.nodes[0], Format::Json, "alice").await;
    alice.subscribed("chat:room").await;
    let mut bob = Client::connected(&cluster.nodes[1], Format::Protobuf, "bob").await;
    bob.subscribed("chat:room").await;
    // Alice, on node 0, sees bob join on node 1.
    let join = loop {
        let push = alice.push().await;
        if let Some(join) = push.join {
            if join.info.as_ref().is_some_and(|i| i.user == "bob") {
                break join;
            }
        }
    };
    assert_eq!(join.info.unwrap().user, "bob");
    knows_interest(&cluster.nodes[2], 2).await;

    let n2 = &cluster.nodes[2];
    let presence = api(n2, "presence", json!({"channel": "chat:room"})).await;
    let users: HashSet<&str> = presence["presence"]
        .as_object()
        .unwrap()
        .values()
        .map(|i| i["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, HashSet::from(["alice", "bob"]));
    assert_eq!(
        api(n2, "presence_stats", json!({"channel": "chat:room"})).await,
        json!({"num_clients": 2, "num_users": 2})
    );
    assert_eq!(
        api(n2, "channels", json!({})).await["channels"]["chat:room"]["num_clients"],
        2
    );
    let info = api(n2, "info", json!({})).await;
    let mut names: Vec<&str> = info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["node0", "node1", "node2"]);
    // A client's own presence call on node 0 includes node 1's subscriber too.
    let reply = alice.call(cmd::presence("chat:room")).await;
    assert_eq!(reply.presence.unwrap().presence.len(), 2);

    // A disconnect through node 2 reaches alice on node 0.
    api(
        n2,
        "disconnect",
        json!({"user": "alice", "disconnect": {"code": 4501, "reason": "bye"}}),
    )
    .await;
    assert_eq!(alice.closed().await, (4501, "bye".to_owned()));
    // The leave crosses too.
    let leave = loop {
        if let Some(leave) = bob.push().await.leave {
            break leave;
        }
    };
    assert_eq!(leave.info.unwrap().user, "alice");

    // Kill node 1: once it is declared down, its subscriber is gone from presence.
    cluster.nodes[1].kill();
    let n0 = &cluster.nodes[0];
    let down = eventually(CONVERGE, || async {
        n0.member_state("node1").as_deref() == Some("down")
    })
    .await;
    assert!(down, "node1 not declared down: {:#}", n0.cluster_status());
    let presence = api(n0, "presence", json!({"channel": "chat:room"})).await;
    assert_eq!(presence["presence"], json!({}), "ghost presence");
    assert_eq!(api(n0, "channels", json!({})).await["channels"], json!({}));
    assert_eq!(api(n0, "info", json!({})).await["nodes"].as_array().unwrap().len(), 2);
}

/// A node that was killed comes back under the same name (a new generation): it rejoins, gets
/// links again, and publications reach its new subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rejoins_and_receives_again() {
    let mut cluster = Cluster::start(3, CONFIG, FAST);
    cluster.converged(CONVERGE).await;
    let before = cluster.nodes[0].cluster_status();
    cluster.nodes[1].kill();
    let n0 = &cluster.nodes[0];
    let down = eventually(CONVERGE, || async {
        n0.member_state("node1").as_deref() == Some("down")
    })
    .await;
    assert!(down, "node1 not declared down: {:#}", n0.cluster_status());

    cluster.nodes[1].restart_after_kill();
    cluster.converged(CONVERGE).await;
    let generation = |status: &Value| {
        status["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "node1")
            .map(|m| m["generation"].clone())
    };
    assert_ne!(
        generation(&before),
        generation(&cluster.nodes[0].cluster_status()),
        "the restarted node kept its generation"
    );

    let mut dave = Client::connected(&cluster.nodes[1], Format::Json, "dave").await;
    dave.subscribed("chat:news").await;
    knows_interest(&cluster.nodes[2], 1).await;
    api(
        &cluster.nodes[2],
        "publish",
        json!({"channel": "chat:news", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(data_of(&dave.next_publication().await), json!({"n": 1}));
}

/// Scenario (f): a process with the wrong secret cannot join, and nothing it sends is acted
/// upon; its envelopes are counted. Garbage on the membership and link ports is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_without_the_secret_cannot_join_or_inject() {
    let mut cluster = Cluster::start(2, CONFIG, FAST);
    cluster.converged(CONVERGE).await;
    let mut alice = Client::connected(&cluster.nodes[0], Format::Json, "alice").await;
    alice.subscribed("chat:room").await;

    // An intruder: same protocol, wrong secret, joining through node 0.
    cluster
        .addresses
        .push(std::net::SocketAddr::from((fresh_loopback(), CLUSTER_PORT)));
    let intruder_config = cluster.node_config(2, "not-the-cluster-secret-at-all");
    let intruder = Node::start(&intruder_config);
    // Garbage datagrams and a link that never says a valid hello.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..20u8 {
        udp.send_to(&[1, 1, 5, b'e', b'v', b'i', b'l', i], cluster.addresses[0])
            .unwrap();
    }
    let mut tcp = tokio::net::TcpStream::connect(cluster.addresses[0]).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &[0, 0, 0, 40, 1, 2, 3])
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &[7u8; 40]).await.unwrap();

    let n0 = &cluster.nodes[0];
    let rejected = eventually(CONVERGE, || async {
        n0.metric("herald_cluster_rejected_envelopes_total").await >= 20.0
    })
    .await;
    assert!(rejected, "garbage was not counted as rejected");
    // Give the intruder time to try (it announces every second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for node in &cluster.nodes {
        let status = node.cluster_status();
        let members = status["members"].as_array().unwrap();
        assert!(
            members.iter().all(|m| m["name"] != "node2"),
            "the intruder became a member: {status:#}"
        );
    }
    let alone = intruder.cluster_status();
    assert_eq!(alone["members"].as_array().unwrap().len(), 1, "{alone:#}");
    assert!(
        n0.metric("herald_cluster_rejected_envelopes_total{reason=\"mac\"")
            .await
            >= 1.0
    );
    // The cluster still works.
    api(
        &cluster.nodes[1],
        "publish",
        json!({"channel": "chat:room", "data": {"ok": true}}),
    )
    .await;
    assert_eq!(data_of(&alice.next_publication().await), json!({"ok": true}));
}

/// `herald cluster status` prints the members, their state and links, for people.
#[tokio::test]
async fn cluster_status_prints_members_and_links() {
    let cluster = Cluster::start(2, CONFIG, "");
    cluster.converged(CONVERGE).await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["cluster", "status", "--config"])
        .arg(cluster.nodes[1].config_path())
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("node node1 at "), "{text}");
    let line = text.lines().find(|l| l.trim_start().starts_with("node0")).expect(&text);
    assert!(line.contains("alive") && line.contains(" up "), "{text}");

    // Without a [cluster] section, or against a node that is not running: a clear error.
    let single = Node::start(CONFIG);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["cluster", "status", "--config"])
        .arg(single.config_path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no [cluster] section"));
}

/// `client.user_connection_limit` counts the user's connections on every node (best effort:
/// see docs/cluster.md for how exact it is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_connection_limit_holds_across_nodes() {
    let config = CONFIG.replace("[client]\n", "[client]\nuser_connection_limit = 2\n");
    let cluster = Cluster::start(2, &config, "");
    cluster.converged(CONVERGE).await;
    let _a = Client::connected(&cluster.nodes[0], Format::Json, "7").await;
    let b = Client::connected(&cluster.nodes[0], Format::Json, "7").await;
    let mut third = Client::open(&cluster.nodes[1], Format::Json).await;
    third.send(&cmd::connect(&user_token("7"))).await;
    assert_eq!(third.closed().await.0, 3504);
    // A closed connection on one node frees a slot on the other.
    b.close().await;
    let freed = eventually(CONVERGE, || async {
        let (_, info) = cluster.nodes[1].api("info", json!({})).await;
        info["result"]["nodes"].as_array().is_some_and(|nodes| {
            nodes
                .iter()
                .map(|n| n["num_clients"].as_u64().unwrap_or(0))
                .sum::<u64>()
                == 1
        })
    })
    .await;
    assert!(freed);
    let mut again = Client::open(&cluster.nodes[1], Format::Json).await;
    let reply = again.connect(&user_token("7")).await;
    assert!(
        reply.connect.is_some(),
        "the slot was not freed across nodes: {:?}",
        reply.error
    );
}
