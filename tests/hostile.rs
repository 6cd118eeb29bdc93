//! Hostile clients against a real node: each attack gets its documented answer, a subscriber
//! connected before it keeps receiving, and the server's memory stays under a stated bound.
//! Attackers connect from other loopback addresses (127.0.0.2, …) to pose as other hosts.

mod common;

use std::time::{Duration, Instant};

use common::{still_served, Client, Node, API_KEY, CONFIG};
use herald::protocol::Format;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn with_http(extra: &str) -> String {
    format!("[http]\n{extra}\n{CONFIG}")
}

/// Whether the server closed `socket` within `within` (EOF or reset), reading and dropping
/// whatever it answered first.
async fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Reads an HTTP/1.1 response head and returns its status code.
async fn status_of(socket: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace().nth(1)?.parse().ok()
}

const MB: u64 = 1 << 20;

/// Reports the server's RSS after an attack against the figure before it, and holds it to a bound.
fn assert_rss_within(node: &Node, before: u64, bound: u64, what: &str) {
    let after = node.rss_bytes();
    println!("RSS {} KB before, {} KB after {what}", before / 1024, after / 1024);
    assert!(after < before + bound, "RSS grew from {before} to {after} after {what}");
}

/// Silent sockets, headers a byte at a time and idle keep-alive connections, from one host,
/// against a node allowed 512 open files: the caps refuse what exceeds one host's share at
/// accept, the timeouts close the rest, and everyone else is served all along.
#[tokio::test]
async fn silent_and_slow_sockets_are_bounded_and_others_are_served() {
    // The header timeout is long enough for 400 connects on a loaded machine: a held socket
    // closed by it before the last connect would free a slot, and fewer would be refused.
    let config = with_http("header_read_timeout = \"4s\"\nidle_timeout = \"8s\"");
    let node = Node::start_with_open_files(&config, 512);
    assert!(
        node.log().contains("max_pending_connections=256") && node.log().contains("max_pending_connections_per_ip=64"),
        "the caps follow the open-file limit:\n{}",
        node.log()
    );
    let mut bystander = Client::connected(&node, Format::Json, "calm").await;
    bystander.subscribed("calm").await;
    let rss_before = node.rss_bytes();

    // 400 silent sockets from one host: a quarter of the pending budget is held, the rest is
    // closed at once.
    let mut silent = Vec::new();
    let connecting = Instant::now();
    for _ in 0..400 {
        silent.push(node.tcp_from([127, 0, 0, 2]).await.expect("connect"));
    }
    // (Counted by the node: checking 400 sockets one by one would outlast the timeout.)
    let refused = node
        .metric("herald_limit_rejections_total{limit=\"pending_connections_per_ip\"}")
        .await;
    assert!(
        (300.0..=336.0).contains(&refused),
        "{refused} of 400 refused at accept (64 may be held); connecting took {:?}",
        connecting.elapsed()
    );
    // A slowloris from another host: a header byte every 300 ms.
    let mut slow = node.tcp_from([127, 0, 0, 3]).await.unwrap();
    let slow_started = Instant::now();
    let trickle = tokio::spawn(async move {
        for byte in b"POST /api/info HTTP/1.1\r\nHost: x\r\n".iter().cycle().take(100) {
            if slow.write_all(&[*byte]).await.is_err() {
                return (slow_started.elapsed(), true);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        (slow_started.elapsed(), false)
    });
    // An idle keep-alive connection after one answered request.
    let mut idle = node.tcp_from([127, 0, 0, 4]).await.unwrap();
    idle.write_all(
        format!("POST /api/info HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\nContent-Length: 2\r\n\r\n{{}}")
            .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(status_of(&mut idle, Duration::from_secs(5)).await, Some(200));
    let idle_since = Instant::now();

    // Meanwhile: the API answers, new WebSocket clients connect, the bystander receives.
    still_served(&node, &mut bystander, "calm").await;
    let mut newcomer = Client::connected(&node, Format::Protobuf, "new").await;
    newcomer.subscribed("calm").await;
    still_served(&node, &mut newcomer, "calm").await;

    // The held silent sockets are closed by the header-read timeout.
    for socket in &mut silent {
        assert!(
            closed_within(socket, Duration::from_secs(8)).await,
            "a silent socket was kept"
        );
    }
    // So is the slowloris, although it keeps sending.
    let (slow_for, cut) = trickle.await.unwrap();
    assert!(cut, "the slow sender was never cut off");
    assert!(
        slow_for < Duration::from_secs(10),
        "the slow sender was cut off only after {slow_for:?}"
    );
    // The idle connection outlives the header timeout (idle is its own, longer timeout) and is
    // then closed.
    let waited = idle_since.elapsed();
    if waited < Duration::from_secs(7) {
        tokio::time::sleep(Duration::from_secs(5).saturating_sub(waited)).await;
        assert!(
            !closed_within(&mut idle, Duration::from_millis(10)).await,
            "idle closed before idle_timeout"
        );
    }
    assert!(
        closed_within(&mut idle, Duration::from_secs(10)).await,
        "idle connection kept"
    );

    assert!(
        node.metric("herald_limit_rejections_total{limit=\"pending_connections_per_ip\"}")
            .await
            >= 300.0
    );
    assert!(node.metric("herald_http_timeouts_total{timeout=\"header_read\"}").await >= 64.0);
    assert!(node.metric("herald_http_timeouts_total{timeout=\"idle\"}").await >= 1.0);
    still_served(&node, &mut bystander, "calm").await;
    assert_rss_within(&node, rss_before, 32 * MB, "400 silent and slow sockets");
}

/// When the process runs out of file descriptors (here: unauthenticated WebSocket upgrades
/// holding them until they go stale), the accept loop backs off and logs once per interval,
/// the subscriber keeps receiving, and new clients get in once descriptors are free again.
#[tokio::test]
async fn out_of_file_descriptors_backs_off_quietly_and_recovers() {
    let config = CONFIG.replace("[client]\n", "[client]\nstale_close_delay = \"4s\"\n");
    let node = Node::start_with_open_files(&config, 256);
    let mut bystander = Client::connected(&node, Format::Json, "calm").await;
    bystander.subscribed("calm").await;
    let started = Instant::now();
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..300u32 {
        // Spread over hosts so that the per-address cap does not refuse them first.
        let host = [127, 0, 1, (i % 200) as u8 + 1];
        let upgrade = async {
            let stream = node.tcp_from(host).await.ok()?;
            tokio_tungstenite::client_async(node.ws_url(), stream).await.ok()
        };
        match tokio::time::timeout(Duration::from_millis(500), upgrade).await {
            Ok(Some((ws, _))) => held.push(ws),
            _ => refused += 1,
        }
        if refused == 3 {
            break;
        }
    }
    assert!(
        refused > 0,
        "the node never ran out of descriptors: {} held",
        held.len()
    );
    // Let the loop fail for a while, then count its reports.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reports = node.log().matches("accept failed").count();
    let failing_for = started.elapsed().as_secs() + 1;
    assert!(
        (1..=(failing_for / 10 + 2) as usize).contains(&reports),
        "{reports} accept-failure reports in {failing_for}s:\n{}",
        node.log()
    );
    // The stale upgrades are closed (3502), freeing descriptors: the node accepts again.
    let node_ref = &node;
    assert!(
        common::eventually(Duration::from_secs(20), || async move {
            let upgrade = tokio_tungstenite::connect_async(node_ref.ws_url());
            matches!(tokio::time::timeout(Duration::from_secs(1), upgrade).await, Ok(Ok(_)))
        })
        .await,
        "the node did not accept again:\n{}",
        node.log()
    );
    drop(held);
    still_served(&node, &mut bystander, "calm").await;
}

/// The API checks the key before it reads a body, refuses declared lengths over the limit
/// before reading, and times out a body that stalls.
#[tokio::test]
async fn api_bodies_are_not_read_before_the_key_and_not_waited_for_forever() {
    let config = with_http("body_read_timeout = \"2s\"");
    let node = Node::start(&config);
    let mut bystander = Client::connected(&node, Format::Json, "calm").await;
    bystander.subscribed("calm").await;
    let send_head = |key: &'static str, length: usize| {
        let node = &node;
        async move {
            let mut socket = node.tcp_from([127, 0, 0, 5]).await.unwrap();
            let head = format!(
                "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: {length}\r\n\r\n"
            );
            socket.write_all(head.as_bytes()).await.unwrap();
            socket
        }
    };
    // No body sent: the wrong key is answered at once.
    let mut socket = send_head("wrong", 1_000_000).await;
    assert_eq!(status_of(&mut socket, Duration::from_secs(1)).await, Some(401));
    // The right key and a declared length over api.max_body_size: 413 before any body.
    let mut socket = send_head(API_KEY, 2 << 20).await;
    assert_eq!(status_of(&mut socket, Duration::from_secs(1)).await, Some(413));
    // The right key, a body that stops half-way: 408 after http.body_read_timeout.
    let mut socket = send_head(API_KEY, 100).await;
    socket.write_all(b"{\"channel\":").await.unwrap();
    assert_eq!(status_of(&mut socket, Duration::from_secs(6)).await, Some(408));
    // A chunked body that grows past the limit: 413.
    let mut socket = node.tcp_from([127, 0, 0, 5]).await.unwrap();
    let head =
        format!("POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
    let mut status = None;
    for _ in 0..20 {
        if socket.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        if let Ok(s) = tokio::time::timeout(
            Duration::from_millis(20),
            status_of(&mut socket, Duration::from_secs(1)),
        )
        .await
        {
            status = s;
            break;
        }
    }
    if status.is_none() {
        status = status_of(&mut socket, Duration::from_secs(2)).await;
    }
    assert_eq!(status, Some(413));

    // 120 unauthenticated sockets, each declaring a 1 MB body and sending half of it: each is
    // answered 401 without its body being held (this pinned ~125 MB before).
    let rss_before = node.rss_bytes();
    let half = vec![b'x'; 512 * 1024];
    let mut sockets = Vec::new();
    for _ in 0..120 {
        let mut socket = send_head("wrong", 1 << 20).await;
        let _ = socket.write_all(&half).await;
        sockets.push(socket);
    }
    for socket in &mut sockets {
        assert_eq!(status_of(socket, Duration::from_secs(5)).await, Some(401));
    }
    assert_rss_within(&node, rss_before, 24 * MB, "120 unauthenticated half bodies");
    still_served(&node, &mut bystander, "calm").await;
}

/// Batches cannot amplify: a batch over `api.max_batch_commands` runs nothing (400), replies
/// past `api.max_batch_reply_size` are error 106 for the commands not run, four 1 MiB batches at
/// once leave the memory bounded, and made-up method names do not become metric series.
#[tokio::test]
async fn batch_amplification_and_method_names_are_bounded() {
    let config = CONFIG.replace("[api]\n", "[api]\nmax_batch_reply_size = 65536\n");
    let node = Node::start(&config);
    let mut bystander = Client::connected(&node, Format::Json, "calm").await;
    bystander.subscribed("calm").await;
    let batch_of = |commands: Vec<serde_json::Value>| serde_json::json!({ "commands": commands });

    // Over the command limit: refused whole, nothing published.
    let mut commands = vec![serde_json::json!({"publish": {"channel": "never", "data": {}}})];
    commands.extend((0..10_000).map(|_| serde_json::json!({"info": {}})));
    let (status, body) = node.api("batch", batch_of(commands)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.as_str().unwrap().contains("max_batch_commands"), "{body}");
    assert!(node.history_numbers("never", "n").await.is_empty());

    // Over the reply budget: what does not fit is not run and answers 106.
    let mut commands: Vec<_> = (0..2_000).map(|_| serde_json::json!({"info": {}})).collect();
    commands.push(serde_json::json!({"publish": {"channel": "late", "data": {"n": 1}}}));
    let (status, body) = node.api("batch", batch_of(commands)).await;
    assert_eq!(status, 200);
    let replies = body["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 2_001);
    assert!(replies[0]["info"]["nodes"].is_array(), "{}", replies[0]);
    assert_eq!(replies[2_000]["error"]["code"], 106, "{}", replies[2_000]);
    let run = replies.iter().filter(|r| r.get("info").is_some()).count();
    assert!(
        (100..1_000).contains(&run),
        "{run} info commands ran within 64 KiB of replies"
    );
    assert!(
        node.history_numbers("late", "n").await.is_empty(),
        "a command past the budget ran"
    );
    // The same in parallel: the commands in flight when the budget runs out still answer (64 at
    // most), the rest are not run.
    let mut commands: Vec<_> = (0..2_000).map(|_| serde_json::json!({"info": {}})).collect();
    commands.push(serde_json::json!({"publish": {"channel": "late", "data": {"n": 1}}}));
    let (status, body) = node
        .api("batch", serde_json::json!({ "commands": commands, "parallel": true }))
        .await;
    assert_eq!(status, 200);
    let replies = body["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 2_001);
    assert_eq!(replies[2_000]["error"]["code"], 106, "{}", replies[2_000]);
    let parallel_run = replies.iter().filter(|r| r.get("info").is_some()).count();
    assert!(
        // Info replies can differ by a byte or two between the runs (uptime).
        parallel_run + 10 >= run && parallel_run <= run + 64 + 10,
        "{parallel_run} info commands ran in parallel within 64 KiB of replies ({run} in order)"
    );
    assert!(replies[parallel_run..2_000].iter().all(|r| r["error"]["code"] == 106));
    assert!(node.history_numbers("late", "n").await.is_empty());

    // Four 1 MiB batches of `info` at once (this grew RSS by 870 MB): each holds at most
    // max_batch_commands commands, so the body is refused as too long, or its replies stop at
    // the budget.
    let rss_before = node.rss_bytes();
    let body = format!("{{\"commands\":[{}{{\"info\":{{}}}}]}}", "{\"info\":{}},".repeat(9_999));
    let big = format!(
        "{{\"commands\":[{}{{\"info\":{{}}}}]}}",
        "{\"info\":{}},".repeat(80_000)
    );
    assert!(big.len() < 1 << 20);
    let calls = (0..4).map(|i| {
        let body = if i % 2 == 0 { body.clone() } else { big.clone() };
        node.api_with("batch", body, &[("X-API-Key", API_KEY)])
    });
    for (i, (status, reply)) in futures_util::future::join_all(calls).await.into_iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(status, 200);
            assert_eq!(reply["replies"].as_array().unwrap().len(), 10_000);
        } else {
            assert_eq!(status, 400, "{reply}");
        }
    }
    assert_rss_within(&node, rss_before, 64 * MB, "four 1 MiB batches");

    // Made-up method names are all counted as `unknown`.
    for i in 0..50 {
        let (status, reply) = node.api(&format!("made-up-{i}"), serde_json::json!({})).await;
        assert_eq!(status, 404, "{reply}");
    }
    let metrics = reqwest::get(node.http("/metrics")).await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("made-up"), "a made-up method became a series");
    assert!(node.metric("herald_api_requests_total{method=\"unknown\"}").await >= 50.0);
    still_served(&node, &mut bystander, "calm").await;
}

/// A client that stops reading while its queue stays under `max_queue_bytes` (here 64 MiB, so
/// the queue limit never fires) is closed as slow once its socket has taken no byte for
/// `client.write_timeout`, and the server lets go of what was queued for it.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_by_the_write_timeout() {
    let config = CONFIG.replace(
        "[client]\n",
        "[client]\nmax_queue_bytes = 67108864\nwrite_timeout = \"2s\"\n",
    );
    let node = Node::start(&config);
    let mut bystander = Client::connected(&node, Format::Json, "calm").await;
    bystander.subscribed("calm").await;
    let mut deaf = Client::connected(&node, Format::Json, "deaf").await;
    deaf.subscribed("calm").await;
    let rss_before = node.rss_bytes();
    // 12 MiB of publications: more than loopback's socket buffers hold, far less than the queue
    // limit. The bystander reads them all; the deaf client none.
    let payload = "x".repeat(16 * 1024);
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        while seen < 768 {
            if bystander.push().await.r#pub.is_some() {
                seen += 1;
            }
        }
        bystander
    });
    for n in 0..768 {
        node.publish("calm", serde_json::json!({ "n": n, "pad": payload }))
            .await;
    }
    let mut bystander = reader.await.unwrap();
    let node_ref = &node;
    assert!(
        common::eventually(Duration::from_secs(15), || async move {
            node_ref.metric("herald_write_timeouts_total").await >= 1.0
        })
        .await,
        "the deaf client was never closed:\n{}",
        node.log()
    );
    assert!(node.metric("herald_disconnects_total{code=\"3008\"}").await >= 1.0);
    // What the kernel still holds reaches the deaf client, then the connection ends.
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        while deaf.next_raw().await.is_some() {}
    })
    .await;
    assert!(drained.is_ok(), "the deaf client's connection did not end");
    still_served(&node, &mut bystander, "calm").await;
    assert_rss_within(&node, rss_before, 32 * MB, "a non-reading client");
}

/// No single reply outgrows the client's queue (which would close it with 3008 and have the SDK
/// reconnect into the same reply): history pages are cut short, a too-large recovery answers
/// `recovered: false`, and a presence answer over the budget is error 106, all without closing.
#[tokio::test]
async fn replies_never_outgrow_the_queue() {
    let config = CONFIG
        .replace("[client]\n", "[client]\nmax_queue_bytes = 262144\n")
        .replace("[api]\n", "[api]\nmax_body_size = 65536\n")
        .replace(
            "history_size = 10\nhistory_ttl = \"300s\"\nforce_recovery = true",
            "history_size = 300\nhistory_ttl = \"300s\"\nforce_recovery = true",
        );
    let node = Node::start(&config);
    let mut client = Client::connected(&node, Format::Json, "reader").await;
    let first = client.subscribed("big").await;
    client.call(common::cmd::unsubscribe("big")).await;
    let pad = "x".repeat(8 * 1024);
    // In batches of 6 (48 KB, under api.max_body_size).
    for start in (0..300).step_by(6) {
        let publishes: Vec<_> = (start..start + 6)
            .map(|n| serde_json::json!({"publish": {"channel": "big", "data": {"n": n, "pad": pad}}}))
            .collect();
        let (status, body) = node.api("batch", serde_json::json!({ "commands": publishes })).await;
        assert_eq!(status, 200, "{body}");
    }

    // Recovery of all 300: not recovered, and the client stays connected.
    let recover = common::cmd::subscribe_with(herald::protocol::proto::SubscribeRequest {
        channel: "big".into(),
        recover: true,
        epoch: first.epoch.clone(),
        offset: first.offset,
        ..Default::default()
    });
    let result = client.call(recover).await.subscribe.expect("subscribed");
    assert!(
        result.was_recovering && !result.recovered && result.publications.is_empty(),
        "{result:?}"
    );
    assert_eq!(result.offset, 300);

    // History (as a subscriber now): 300 publications of 8 KB (2.4 MB) asked at once come in pages within the budget
    // (128 KB), and paging from the last offset gets them all, in order.
    let mut numbers = Vec::new();
    let mut since: Option<u64> = None;
    let mut pages = 0;
    while numbers.len() < 300 {
        let history = client
            .call(common::cmd::history(
                "big",
                300,
                since.map(|o| (o, first.epoch.as_str())),
                false,
            ))
            .await
            .history
            .expect("a history page");
        assert!(!history.publications.is_empty() && history.publications.len() < 300);
        for p in &history.publications {
            numbers.push(common::data_of(p)["n"].as_u64().unwrap());
        }
        since = history.publications.last().map(|p| p.offset);
        pages += 1;
    }
    assert_eq!(numbers, (0..300).collect::<Vec<_>>());
    assert!(pages >= 10, "{pages} pages");

    // Presence: 40 members with 4 KB of connection info each (160 KB > 128 KB): error 106.
    let info = serde_json::json!({ "bio": "y".repeat(4 * 1024) });
    let mut members = Vec::new();
    for i in 0..40 {
        let mut member = Client::open(&node, Format::Json).await;
        member
            .connect(&common::token(
                serde_json::json!({"sub": format!("u{i}"), "info": info}),
            ))
            .await;
        member.subscribed("crowd").await;
        members.push(member);
    }
    client.subscribed("crowd").await;
    let reply = client.call(common::cmd::presence("crowd")).await;
    assert_eq!(reply.error.map(|e| e.code), Some(106));
    assert!(client.silent_for(Duration::from_millis(200)).await || client.closed.is_none());
    assert!(client
        .call(common::cmd::presence_stats("crowd"))
        .await
        .presence_stats
        .is_some());
    assert!(node.metric("herald_slow_disconnects_total").await == 0.0);
}

/// Bytes of the files under `dir`.
fn disk_usage(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => disk_usage(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Subscribes (positioned and recovering) and history calls on 10,000 channel names that were
/// never published to create nothing: no stream on disk, no memory kept, after a restart too
/// (60k such subscribes grew RSS from 10 to 81 MB and the store by 22 MB before).
#[tokio::test]
async fn reading_fresh_channel_names_creates_nothing() {
    let mut node = Node::start(CONFIG);
    let mut bystander = Client::connected(&node, Format::Json, "calm").await;
    bystander.subscribed("calm").await;
    node.publish("calm", serde_json::json!({"warm": 1})).await;
    let _ = bystander.next_publication().await;
    let rss_before = node.rss_bytes();
    let disk_before = disk_usage(&node.storage_path());
    let mut churn = Client::connected(&node, Format::Protobuf, "churn").await;
    let mut id = 1000;
    for wave in 0..100 {
        // 50 positioned subscribes (half of them recovering) and their unsubscribes, in one frame.
        let mut commands = Vec::new();
        for i in 0..50 {
            let channel = format!("fresh-{wave}-{i}");
            commands.push(herald::protocol::proto::Command {
                id,
                ..common::cmd::subscribe_with(herald::protocol::proto::SubscribeRequest {
                    channel: channel.clone(),
                    recover: i % 2 == 0,
                    epoch: "made-up".into(),
                    offset: 7,
                    ..Default::default()
                })
            });
            commands.push(herald::protocol::proto::Command {
                id: id + 1,
                ..common::cmd::unsubscribe(&channel)
            });
            id += 2;
        }
        churn.send_frame(&commands).await;
        // And 50 API history reads of other fresh names, in one batch.
        let reads: Vec<_> = (0..50)
            .map(|i| serde_json::json!({"history": {"channel": format!("unread-{wave}-{i}"), "limit": 10}}))
            .collect();
        let (status, _) = node.api("batch", serde_json::json!({ "commands": reads })).await;
        assert_eq!(status, 200);
    }
    // Every subscribe answered with the empty position.
    let mut answered = 0;
    while answered < 5_000 {
        let reply = churn.push_or_reply().await;
        if let Some(result) = reply.subscribe {
            assert_eq!((result.epoch.as_str(), result.offset), ("", 0), "{result:?}");
            answered += 1;
        }
    }
    still_served(&node, &mut bystander, "calm").await;
    assert_rss_within(
        &node,
        rss_before,
        16 * MB,
        "5,000 subscribes and 5,000 history reads of fresh names",
    );
    let disk_after = disk_usage(&node.storage_path());
    println!("store {disk_before} B before, {disk_after} B after");
    assert!(
        disk_after < disk_before + MB,
        "the store grew from {disk_before} to {disk_after}"
    );
    // Nothing comes back after a restart either: the names still have no stream.
    node.restart();
    let (_, history) = node
        .api("history", serde_json::json!({"channel": "fresh-7-3", "limit": 1}))
        .await;
    assert_eq!(history["result"]["epoch"].as_str().unwrap_or(""), "", "{history}");
}
