//! Scenario (d) and graceful leave (issue 10, items 7): every node of a three-node cluster is
//! restarted in turn with SIGTERM while real SDK clients (npm `centrifuge`, through a TCP load
//! balancer in front of the live nodes) stay subscribed and publishers publish through every
//! live node. A node that leads hands leadership over first; its clients are closed with 3001,
//! reconnect to another node and recover: no gap, no signal, nothing lost. Also scenario (a)
//! with the same SDK client: subscribed on one node, it receives another node's API publishes
//! and a third node's client publishes once each, in order.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::checker::{self, publish, Addresses, Event, Publishes};
use common::*;
use parking_lot::Mutex;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[client]
token_hmac_secret = "test-secret"
shutdown_spread = "500ms"
[api]
key = "test-api-key"
[channels.namespaces.hist]
history_size = 100000
history_ttl = "1h"
force_recovery = true
allow_subscribe_for_client = true
"#;

const TIMING: &str =
    "probe_interval = \"200ms\"\nprobe_timeout = \"100ms\"\nsuspect_timeout = \"1s\"\nforward_timeout = \"4s\"";

const CONVERGE: Duration = Duration::from_secs(30);

/// The tests of this file run one at a time: the rolling restart's timing must not share the
/// machine with another cluster.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A TCP load balancer on 127.0.0.1: each new connection goes to the next live node.
async fn balancer(addresses: Addresses) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let live: Vec<std::net::SocketAddr> = addresses.lock().iter().flatten().copied().collect();
            if live.is_empty() {
                continue;
            }
            let target = live[next.fetch_add(1, Ordering::Relaxed) % live.len()];
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    address
}

/// An SDK client following `channel`: its events, as the checker reads them.
struct SdkFollower {
    name: String,
    child: std::process::Child,
    events: Arc<Mutex<Vec<Event>>>,
    raw: Arc<Mutex<Vec<Value>>>,
}

impl SdkFollower {
    fn spawn(name: &str, url: &str, channel: &str) -> SdkFollower {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/js/follow.mjs");
        let mut child = Process::new("node")
            .arg(script)
            .args([url, &user_token(name), channel])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (the test command installs the npm SDK with tests/sdk/run.sh install js)");
        let stdout = child.stdout.take().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (e, r) = (events.clone(), raw.clone());
        std::thread::spawn(move || {
            let mut epoch = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                r.lock().push(value.clone());
                let mut events = e.lock();
                match value["event"].as_str() {
                    Some("subscribed") => {
                        let recovered = value["recovered"] == true;
                        if value["wasRecovering"] == true && !recovered {
                            events.push(Event::Signal("recovered:false".into()));
                        }
                        epoch = value["epoch"].as_str().unwrap_or_default().to_owned();
                        events.push(Event::Subscribed {
                            epoch: epoch.clone(),
                            offset: value["offset"].as_u64().unwrap_or(0),
                            recovered,
                        });
                    }
                    Some("publication") => events.push(Event::Delivered {
                        epoch: epoch.clone(),
                        offset: value["offset"].as_u64().unwrap_or(0),
                        id: value["id"].as_str().unwrap_or_default().to_owned(),
                    }),
                    Some("subscribing") => {
                        let code = value["code"].as_u64().unwrap_or(0);
                        // 2500 (insufficient state) and 3010 are the documented gap signals.
                        if code == 2500 || code == 3010 {
                            events.push(Event::Signal(format!("subscribing {code}")));
                        }
                    }
                    _ => {}
                }
            }
        });
        SdkFollower {
            name: name.to_owned(),
            child,
            events,
            raw,
        }
    }

    fn delivered(&self) -> HashSet<String> {
        self.events
            .lock()
            .iter()
            .filter_map(|e| match e {
                Event::Delivered { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    fn subscribed_count(&self) -> usize {
        self.events
            .lock()
            .iter()
            .filter(|e| matches!(e, Event::Subscribed { .. }))
            .count()
    }

    fn stop(mut self) -> (String, Vec<Event>) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
        let events = self.events.lock().clone();
        (self.name, events)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_keeps_sdk_subscribers_contiguous() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(3, CONFIG, TIMING);
    cluster.converged(CONVERGE).await;
    cluster.leader_elected(3, CONVERGE).await;
    let addresses: Addresses = Arc::new(Mutex::new(cluster.nodes.iter().map(|n| Some(n.addr)).collect()));
    let balancer = balancer(addresses.clone()).await;
    let url = format!("ws://{balancer}/connection/websocket");
    let channel = "hist:rolling";
    // A first publication creates the stream, so that every follower knows its epoch.
    let publishes = Arc::new(Mutex::new(Publishes::default()));
    assert!(publish(cluster.nodes[0].addr, channel, "first", &publishes).await);
    let followers: Vec<SdkFollower> = (0..3)
        .map(|i| SdkFollower::spawn(&format!("sdk{i}"), &url, channel))
        .collect();
    let ready = eventually(CONVERGE, || async {
        followers.iter().all(|f| f.subscribed_count() > 0)
    })
    .await;
    assert!(ready, "SDK clients did not subscribe");

    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (addresses, publishes, stop) = (addresses.clone(), publishes.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.is_cancelled() && n < 100_000 {
                let live: Vec<std::net::SocketAddr> = addresses.lock().iter().flatten().copied().collect();
                publish(live[n % live.len()], channel, &format!("p{n}"), &publishes).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut handed_over = 0;
    // Leader last, so that leadership moves at least once on purpose.
    let leader = cluster.leader_elected(3, CONVERGE).await;
    let order: Vec<usize> = (0..3).filter(|i| *i != leader).chain([leader]).collect();
    for i in order {
        let was_leader = cluster.nodes[i].cluster_status()["role"] == "leader";
        addresses.lock()[i] = None;
        assert!(cluster.nodes[i].terminate(), "{}", cluster.nodes[i].log());
        if was_leader {
            assert!(
                cluster.nodes[i].log().contains("leadership handed over moved=true"),
                "the leader did not hand over:\n{}",
                cluster.nodes[i].log()
            );
            handed_over += 1;
        }
        cluster.nodes[i].restart_after_kill();
        addresses.lock()[i] = Some(cluster.nodes[i].addr);
        cluster.converged(CONVERGE).await;
        cluster.leader_elected(3, CONVERGE).await;
    }
    assert_eq!(handed_over, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    load.await.unwrap();

    let publishes = Arc::try_unwrap(publishes).map_err(|_| ()).unwrap().into_inner();
    let acked: HashSet<String> = publishes.acked.keys().filter(|id| *id != "first").cloned().collect();
    let caught_up = eventually(CONVERGE, || async {
        followers.iter().all(|f| acked.is_subset(&f.delivered()))
    })
    .await;
    if !caught_up {
        for f in &followers {
            let delivered = f.delivered();
            let missing: Vec<&String> = acked.difference(&delivered).take(10).collect();
            eprintln!(
                "{} misses {missing:?}; raw tail: {:?}",
                f.name,
                f.raw.lock().iter().rev().take(8).collect::<Vec<_>>()
            );
        }
        panic!("SDK clients did not get every acknowledged publication");
    }
    let events: Vec<(String, Vec<Event>)> = followers.into_iter().map(SdkFollower::stop).collect();
    for (name, events) in &events {
        let signals: Vec<&Event> = events.iter().filter(|e| matches!(e, Event::Signal(_))).collect();
        assert!(
            signals.is_empty(),
            "{name} saw a gap signal during graceful restarts: {signals:?}"
        );
        let reconnects = events.iter().filter(|e| matches!(e, Event::Subscribed { .. })).count();
        assert!(reconnects >= 2, "{name} never moved: {reconnects} subscribes");
    }
    for node in &cluster.nodes {
        let (_, reply) = node.api("history", json!({"channel": channel, "limit": 0})).await;
        assert!(reply["result"]["offset"].as_u64().unwrap() as usize >= publishes.acked.len());
    }
    let problems = checker::check(&publishes, &[], &events);
    assert!(problems.is_empty(), "checker: {}", problems.join("\n"));
    eprintln!(
        "rolling restart: {} acknowledged, {} not",
        publishes.acked.len(),
        publishes.unknown.len()
    );
}

/// Scenario (a) with the real SDK: an npm `centrifuge` client subscribed on node 0 receives
/// what node 2's API and a client on node 1 publish, each once and in its publisher's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_subscriber_gets_publications_from_other_nodes_once_and_in_order() {
    let _serial = SERIAL.lock().await;
    let config = format!(
        "{CONFIG}[channels.namespaces.chat]\nallow_subscribe_for_client = true\nallow_publish_for_client = true\n"
    );
    let cluster = Cluster::start(3, &config, TIMING);
    cluster.converged(CONVERGE).await;
    let [n0, n1, n2] = &cluster.nodes[..] else {
        unreachable!()
    };
    let channel = "chat:room";
    let follower = SdkFollower::spawn("alice", &n0.ws_url(), channel);
    assert!(
        eventually(CONVERGE, || async { follower.subscribed_count() > 0 }).await,
        "the SDK client did not subscribe"
    );
    // Node 0's interest has reached the publishing nodes.
    for node in [n1, n2] {
        let knows = eventually(CONVERGE, || async {
            node.metric("herald_cluster_interest_entries{side=\"remote\"}").await >= 1.0
        })
        .await;
        assert!(knows, "a node never learned node 0's interest");
    }
    let mut carol = Client::connected(n1, herald::protocol::Format::Json, "carol").await;
    const EACH: usize = 30;
    for i in 0..EACH {
        n2.publish(channel, json!({"id": format!("api-{i}")})).await;
        let reply = carol
            .call(cmd::publish(channel, &json!({"id": format!("client-{i}")}).to_string()))
            .await;
        assert!(reply.error.is_none(), "{:?}", reply.error);
    }
    let ids = |f: &SdkFollower| -> Vec<String> {
        f.raw
            .lock()
            .iter()
            .filter(|v| v["event"] == "publication")
            .map(|v| v["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    eventually(CONVERGE, || async { ids(&follower).len() >= 2 * EACH }).await;
    // Anything sent twice would arrive right behind.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = ids(&follower);
    assert_eq!(seen.len(), 2 * EACH, "delivered: {seen:?}");
    for source in ["api", "client"] {
        let from: Vec<&String> = seen.iter().filter(|id| id.starts_with(source)).collect();
        let expected: Vec<String> = (0..EACH).map(|i| format!("{source}-{i}")).collect();
        assert_eq!(
            from,
            expected.iter().collect::<Vec<_>>(),
            "{source}: out of order or missing"
        );
    }
    follower.stop();
}
