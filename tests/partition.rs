//! Scenario (c) of issue 10: the leader is partitioned away from the others with nftables rules
//! between the nodes' own loopback addresses, then healed. The minority side accepts no
//! publish on a channel with history, the majority goes on, nobody writes two payloads at one
//! position, and everything converges after the heal.
//!
//! Needs `nft` and the right to use it (root): the README's test command installs `nftables`
//! when it is missing. The rules live in a table of their own, removed when the test ends,
//! however it ends.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::process::Command as Process;
use std::sync::Arc;
use std::time::Duration;

use common::checker::{self, history, publish, Addresses, Publishes, Subscriber};
use common::*;
use parking_lot::Mutex;

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
"#;

const TIMING: &str =
    "probe_interval = \"200ms\"\nprobe_timeout = \"100ms\"\nsuspect_timeout = \"1s\"\nforward_timeout = \"2s\"";

const CONVERGE: Duration = Duration::from_secs(30);

/// One scenario at a time: each starts a cluster and owns this process's nftables table.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// nftables rules that drop traffic between pairs of addresses, in both directions; removed
/// on drop.
struct Partition {
    table: String,
}

fn nft(args: &[&str]) {
    let output = Process::new("nft")
        .args(args)
        .output()
        .expect("running nft (the test command installs the nftables package)");
    assert!(
        output.status.success(),
        "nft {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Partition {
    fn cut(pairs: &[(IpAddr, IpAddr)]) -> Partition {
        let table = format!("herald_test_{}", std::process::id());
        nft(&["add", "table", "inet", &table]);
        let partition = Partition { table };
        nft(&[
            "add",
            "chain",
            "inet",
            &partition.table,
            "out",
            "{ type filter hook output priority 0 ; policy accept ; }",
        ]);
        for (a, b) in pairs {
            for (from, to) in [(a, b), (b, a)] {
                let rule = format!("ip saddr {from} ip daddr {to} drop");
                let mut args = vec!["add", "rule", "inet", partition.table.as_str(), "out"];
                args.extend(rule.split(' '));
                nft(&args);
            }
        }
        partition
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Process::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

/// Starts a subscriber of `channel` on each of `nodes` and waits until each is subscribed.
async fn follow(cluster: &Cluster, nodes: &[usize], channel: &str) -> Vec<Subscriber> {
    let addresses: Addresses = Arc::new(Mutex::new(cluster.nodes.iter().map(|n| Some(n.addr)).collect()));
    let subscribers: Vec<Subscriber> = nodes
        .iter()
        .map(|i| Subscriber::spawn(&format!("sub{i}"), addresses.clone(), *i, channel, user_token("u")))
        .collect();
    let ready = eventually(CONVERGE, || async {
        subscribers.iter().all(|s| !s.events.lock().is_empty())
    })
    .await;
    assert!(ready, "the subscribers were not all subscribed");
    subscribers
}

/// Each node's cluster log lines (membership, links, leadership, position checks), for a failure.
fn print_cluster_logs(cluster: &Cluster) {
    for (i, node) in cluster.nodes.iter().enumerate() {
        let log = node.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("cluster:")).collect();
        eprintln!("--- node{i} ---\n{}", lines.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_accepts_nothing_and_everything_converges_after_the_heal() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, CONFIG, TIMING);
    cluster.converged(CONVERGE).await;
    let leader = cluster.leader_elected(3, CONVERGE).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let channel = "hist:split";
    // Subscribers on the majority side (the minority's clients cannot be served history).
    let subscribers = follow(&cluster, &others, channel).await;
    let publishes = Mutex::new(Publishes::default());
    for n in 0..10 {
        assert!(publish(cluster.nodes[n % 3].addr, channel, &format!("before-{n}"), &publishes).await);
    }

    let ip = |i: usize| cluster.addresses[i].ip();
    let partition = Partition::cut(&[(ip(leader), ip(others[0])), (ip(leader), ip(others[1]))]);
    // The majority elects a leader of its own and takes publishes.
    let mut n = 0;
    let majority_leads = eventually(CONVERGE, || {
        n += 1;
        let address = cluster.nodes[others[n % 2]].addr;
        let publishes = &publishes;
        async move { publish(address, channel, &format!("majority-{n}"), publishes).await }
    })
    .await;
    assert!(majority_leads, "the majority side did not take publishes");
    // The old leader, cut off, acknowledges nothing.
    for n in 0..3 {
        let id = format!("minority-{n}");
        let acked = publish(cluster.nodes[leader].addr, channel, &id, &publishes).await;
        assert!(!acked, "the minority side acknowledged {id}");
    }
    for n in 0..10 {
        publish(
            cluster.nodes[others[n % 2]].addr,
            channel,
            &format!("during-{n}"),
            &publishes,
        )
        .await;
    }

    drop(partition);
    cluster.converged(CONVERGE).await;
    let new_leader = cluster.leader_elected(3, CONVERGE).await;
    for n in 0..10 {
        assert!(publish(cluster.nodes[n % 3].addr, channel, &format!("after-{n}"), &publishes).await);
    }
    let _ = new_leader;

    let publishes = publishes.into_inner();
    let acked: HashSet<String> = publishes.acked.keys().cloned().collect();
    if let Err(report) = checker::caught_up(&subscribers, &publishes, CONVERGE).await {
        print_cluster_logs(&cluster);
        panic!("{report}");
    }
    let mut histories = Vec::new();
    for node in &cluster.nodes {
        histories.push(history(node, channel).await);
    }
    assert!(
        histories.windows(2).all(|w| w[0] == w[1]),
        "the nodes serve different histories"
    );
    let mut events = Vec::new();
    for s in subscribers {
        events.push((s.name.clone(), s.stop().await));
    }
    let problems = checker::check(&publishes, &histories, &events);
    assert!(problems.is_empty(), "checker: {}", problems.join("\n"));
    let epochs: HashSet<&String> = publishes.acked.values().map(|(e, _)| e).collect();
    assert_eq!(epochs.len(), 1);
    assert!(acked.iter().all(|id| !id.starts_with("minority")));
}

/// A follower cut off from both other nodes misses the publications made meanwhile (the
/// others declare it down, and its links and what they carried are gone). After the heal, its
/// subscribers get every one of them, in order, although nothing is published after the heal:
/// the follower compares its channels with the leader's streams and delivers what it missed
/// from the leader's history (`herald_cluster_gap_publications_total`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_gets_what_it_missed_after_the_heal() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, CONFIG, TIMING);
    cluster.converged(CONVERGE).await;
    let leader = cluster.leader_elected(3, CONVERGE).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (cut, peer) = (others[0], others[1]);
    let channel = "hist:cutoff";
    let subscribers = follow(&cluster, &[cut, peer], channel).await;
    let publishes = Mutex::new(Publishes::default());
    for n in 0..5 {
        assert!(publish(cluster.nodes[leader].addr, channel, &format!("before-{n}"), &publishes).await);
    }
    let delivered = eventually(CONVERGE, || async {
        subscribers.iter().all(|s| s.delivered().len() == 5)
    })
    .await;
    assert!(delivered, "the first publications reach both nodes");

    let ip = |i: usize| cluster.addresses[i].ip();
    let partition = Partition::cut(&[(ip(cut), ip(leader)), (ip(cut), ip(peer))]);
    // Down, not only suspect: the leader then has no link to it and routes nothing its way.
    let cut_name = format!("node{cut}");
    let declared_down = eventually(CONVERGE, || async {
        let status = cluster.nodes[leader].cluster_status();
        let members = status["members"].as_array().cloned().unwrap_or_default();
        !members.is_empty()
            && !members
                .iter()
                .any(|m| m["name"] == cut_name.as_str() && (m["state"] == "alive" || m["state"] == "suspect"))
    })
    .await;
    assert!(declared_down, "{:#}", cluster.nodes[leader].cluster_status());
    // The majority goes on without the follower.
    for n in 0..10 {
        assert!(publish(cluster.nodes[leader].addr, channel, &format!("during-{n}"), &publishes).await);
    }
    assert!(
        !subscribers[0].delivered().iter().any(|id| id.starts_with("during")),
        "the cut-off follower received publications through the partition"
    );

    drop(partition);
    cluster.converged(CONVERGE).await;
    // Nothing is published after the heal.
    let publishes = publishes.into_inner();
    if let Err(report) = checker::caught_up(&subscribers, &publishes, CONVERGE).await {
        print_cluster_logs(&cluster);
        panic!("{report}");
    }
    let filled = cluster.nodes[cut].metric("herald_cluster_gap_publications_total").await;
    if filled != 10.0 {
        print_cluster_logs(&cluster);
        panic!(
            "the follower delivered {filled} publications from the leader's history, not 10; its subscriber saw {:?}",
            subscribers[0].events.lock()
        );
    }
    let mut histories = Vec::new();
    for node in &cluster.nodes {
        histories.push(history(node, channel).await);
    }
    let mut events = Vec::new();
    for s in subscribers {
        events.push((s.name.clone(), s.stop().await));
    }
    let problems = checker::check(&publishes, &histories, &events);
    assert!(problems.is_empty(), "checker: {}", problems.join("\n"));
}
