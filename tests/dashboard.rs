//! The operator dashboard (`docs/grafana/herald.json`) against real nodes: every metric its
//! queries name must be on `/metrics` once traffic has made the lazily registered series
//! appear, so renaming a metric without the dashboard fails here. The node's own metrics are
//! checked on one node, the `herald_cluster_*` ones on a two-node cluster.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::*;
use herald::protocol::Format;
use serde_json::{json, Value};

const DASHBOARD: &str = include_str!("../docs/grafana/herald.json");

/// Dashboard metrics that only a failure or an overload produces (a disk error, a full link
/// queue, megabytes a client does not read), too costly or impossible to cause here. For these
/// the test checks that the source still emits the name, which a rename fails as well.
const FAILURE_ONLY: [(&str, &str); 8] = [
    (
        "herald_slow_disconnects_total",
        "a client that reads nothing for megabytes",
    ),
    (
        "herald_write_timeouts_total",
        "a socket that takes no byte for client.write_timeout",
    ),
    ("herald_stream_gaps_total", "a subscriber that falls behind its stream"),
    ("herald_accept_errors_total", "accept failing (the open-file limit)"),
    ("herald_store_failures_total", "a disk error"),
    ("herald_streams_lost_total", "an unreadable stream position on disk"),
    ("herald_cluster_link_dropped_total", "64 MiB queued for one peer"),
    (
        "herald_cluster_interest_resyncs_total",
        "a peer's interest copy going out of date",
    ),
];

const CLUSTER_PREFIX: &str = "herald_cluster_";

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("docs/grafana/herald.json is JSON")
}

/// Every `expr` of the dashboard, wherever it is (rows nest their panels when collapsed).
fn exprs(value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect_exprs(value, &mut out);
    out
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// PromQL words that are not metric names: keywords, and aggregations (which may be followed by
/// `by (…)` before their parenthesis).
const KEYWORDS: [&str; 26] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "topk",
    "bottomk",
    "group",
    "stddev",
    "stdvar",
    "count_values",
    "quantile",
];
/// Keywords followed by a list of label names in parentheses.
const LABEL_LISTS: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The vector selectors of a PromQL expression: each metric name with the text of its label
/// matchers (empty without braces). A selector without a name (`{__name__=~"…"}`) has the
/// empty name. Strings, ranges (`[5m]`), numbers, Grafana variables, functions, keywords and
/// the label lists of `by (…)` and the like are skipped.
fn selectors(expr: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            let end = closing(&chars, i, '{', '}');
            out.push((String::new(), chars[i + 1..end].iter().collect()));
            i = end + 1;
        } else if c == '[' {
            i = closing(&chars, i, '[', ']') + 1;
        } else if c == '$' {
            // A Grafana variable: `$name` or `${name}`.
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = closing(&chars, i, '{', '}') + 1;
            } else {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A number or a duration (`0.99`, `1e3`, `5m`).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let followed_by = chars.get(next).copied();
            if LABEL_LISTS.contains(&word.as_str()) {
                if followed_by == Some('(') {
                    i = closing(&chars, next, '(', ')') + 1;
                }
            } else if KEYWORDS.contains(&word.as_str()) || followed_by == Some('(') {
                // A keyword, an aggregation or a function.
            } else if followed_by == Some('{') {
                let end = closing(&chars, next, '{', '}');
                out.push((word, chars[next + 1..end].iter().collect()));
                i = end + 1;
            } else {
                out.push((word, String::new()));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The index just past the string literal that starts at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    panic!("unterminated string in {:?}", chars.iter().collect::<String>())
}

/// The index of the bracket that closes the one at `open_at` (string literals skipped).
fn closing(chars: &[char], open_at: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut i = open_at;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(chars, i);
            continue;
        }
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return i;
            }
        }
        i += 1;
    }
    panic!("unbalanced {open}{close} in {:?}", chars.iter().collect::<String>())
}

/// The metric names the dashboard's queries use.
fn dashboard_metrics() -> BTreeSet<String> {
    exprs(&dashboard())
        .iter()
        .flat_map(|expr| selectors(expr))
        .map(|(name, _)| name)
        .collect()
}

/// The sample names on a `/metrics` page (histograms as their `_bucket`, `_sum` and `_count`
/// series, as Prometheus stores them and queries name them).
fn exported(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

async fn scrape(node: &Node) -> String {
    let response = reqwest::get(node.http("/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// Waits until every metric in `wanted` is on the pages of `nodes` (any of them); panics
/// naming the missing ones.
async fn all_exported(nodes: &[&Node], wanted: &BTreeSet<String>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen = BTreeSet::new();
        for node in nodes {
            seen.extend(exported(&scrape(node).await));
        }
        let missing: Vec<&String> = wanted.difference(&seen).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard queries metrics that /metrics does not export: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_failure_only(name: &str) -> bool {
    FAILURE_ONLY.iter().any(|(n, _)| *n == name)
}

#[test]
fn selectors_are_read_from_promql() {
    let names = |expr: &str| -> Vec<String> { selectors(expr).into_iter().map(|(n, _)| n).collect() };
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, command) (rate(herald_command_duration_seconds_bucket{instance=~"$instance", code!="a} b"}[$__rate_interval])))"#
        ),
        ["herald_command_duration_seconds_bucket"]
    );
    assert_eq!(
        names("sum without (x) (a_total offset 1h) / ignoring(y) group_left(z) 1e3 * b:rate5m[5m:1m] > bool 0.5"),
        ["a_total", "b:rate5m"]
    );
    assert_eq!(
        names(r#"max(${x}) + topk($k, up) or count({__name__=~"h.+"})"#),
        ["up", ""]
    );
    assert_eq!(
        selectors(r#"sum(herald_connections{job=~"$job"})"#),
        [("herald_connections".to_owned(), r#"job=~"$job""#.to_owned())]
    );
}

/// The dashboard imports and provisions as is: a Prometheus datasource variable that every
/// query uses, `job` and `instance` variables that every selector filters on, unique panel ids.
#[test]
fn dashboard_is_self_contained() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    assert_eq!(variable("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(variable("DS_PROMETHEUS")["query"], "prometheus");
    for name in ["job", "instance"] {
        let v = variable(name);
        assert_eq!(v["type"], "query", "{v}");
        assert_eq!(v["datasource"]["uid"], "${DS_PROMETHEUS}", "{v}");
        let query = v["query"]["query"].as_str().expect("query variable text");
        // Any Herald series carries the labels, so no particular metric needs to exist yet.
        assert!(
            query.starts_with(r#"label_values({__name__=~"herald_.+""#) && query.ends_with(&format!(", {name})")),
            "{query}"
        );
    }

    let mut panels = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = stack.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested);
        }
        panels.push(panel);
    }
    let ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().expect("panel id")).collect();
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "duplicate panel ids"
    );
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = &panel["title"];
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        assert!(panel["gridPos"]["w"].as_u64().is_some(), "{title}: no gridPos");
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{title}: no expr"));
            let found = selectors(expr);
            assert!(!found.is_empty(), "{title}: no metric in {expr}");
            for (name, matchers) in found {
                assert!(name.starts_with("herald_"), "{title}: {name:?} in {expr}");
                for filter in [r#"job=~"$job""#, r#"instance=~"$instance""#] {
                    assert!(matchers.contains(filter), "{title}: {name} without {filter} in {expr}");
                }
            }
        }
    }
}

/// The metrics that only failures produce are still emitted under these names by the source,
/// and are still on the dashboard (else they leave this list).
#[test]
fn failure_only_metrics_are_emitted_by_the_source() {
    let on_dashboard = dashboard_metrics();
    let mut source = String::new();
    read_sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut source);
    let source: String = source.chars().filter(|c| !c.is_whitespace()).collect();
    for (name, cause) in FAILURE_ONLY {
        assert!(on_dashboard.contains(name), "{name} is no longer on the dashboard");
        let emitted = ["counter", "gauge", "histogram"]
            .iter()
            .any(|kind| source.contains(&format!("metrics::{kind}!(\"{name}\"")));
        assert!(emitted, "{name} ({cause}) is not emitted by src/ under this name");
    }
}

fn read_sources(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// One node with a short header timeout, fast retention and os durability (so that an
/// unclean stop renews a stream), and a channel limit of 4.
fn single_node_config() -> String {
    format!(
        "{}\n[http]\nheader_read_timeout = \"1s\"\n[storage]\ndurability = \"os\"\nretention_interval = \"200ms\"\n",
        CONFIG.replacen("[client]\n", "[client]\nchannel_limit = 4\n", 1)
    )
}

#[tokio::test]
async fn the_node_metrics_of_the_dashboard_are_exported() {
    let wanted: BTreeSet<String> = dashboard_metrics()
        .into_iter()
        .filter(|name| !name.starts_with(CLUSTER_PREFIX) && !is_failure_only(name))
        .collect();
    assert!(wanted.contains("herald_command_duration_seconds_bucket"), "{wanted:?}");

    let mut node = Node::start(&single_node_config());
    // An unclean stop once the stream is on disk: its next publish starts a new epoch.
    node.publish("renewed", json!(1)).await;
    let flushed = eventually(WAIT, || async {
        node.metric("herald_store_flushes_total").await >= 1.0
    })
    .await;
    assert!(flushed, "no store flush");
    node.kill();
    node.restart_after_kill();
    node.publish("renewed", json!(2)).await;

    // A subscriber that gets publications, one command error, one limit rejection.
    let mut watcher = Client::connected(&node, Format::Json, "watcher").await;
    watcher.subscribed("news").await;
    watcher.subscribed("open:feed").await;
    node.publish("news", json!({"n": 1})).await;
    node.publish("open:feed", json!({"n": 2})).await;
    for _ in 0..2 {
        watcher.next_publication().await;
    }
    let denied = watcher.call(cmd::subscribe("closed:secret")).await;
    assert!(denied.error.is_some(), "{denied:?}");
    let mut greedy = Client::connected(&node, Format::Protobuf, "greedy").await;
    for i in 0..4 {
        greedy.subscribed(&format!("open:c{i}")).await;
    }
    let refused = greedy.call(cmd::subscribe("open:c4")).await;
    assert_eq!(refused.error.map(|e| e.code), Some(106));

    // Retention trims tiny:trim (history_size 2); a repeated idempotency key; a few methods.
    for n in 0..4 {
        node.publish("tiny:trim", json!(n)).await;
    }
    for _ in 0..2 {
        let (status, body) = node
            .api(
                "publish",
                json!({"channel": "once", "data": {}, "idempotency_key": "k1"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for (method, body) in [
        ("history", json!({"channel": "news", "limit": 1})),
        ("presence", json!({"channel": "news"})),
        ("info", json!({})),
    ] {
        let (status, reply) = node.api(method, body).await;
        assert_eq!(status, 200, "{method}: {reply}");
    }

    // A disconnect with a code, through the API.
    let mut leaver = Client::connected(&node, Format::Json, "leaver").await;
    let (status, body) = node.api("disconnect", json!({"user": "leaver"})).await;
    assert_eq!(status, 200, "{body}");
    leaver.closed().await;

    // A socket that never sends its headers: closed by http.header_read_timeout.
    let _silent = tokio::net::TcpStream::connect(node.addr).await.unwrap();

    all_exported(&[&node], &wanted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_metrics_of_the_dashboard_are_exported() {
    let cluster_metrics: BTreeSet<String> = dashboard_metrics()
        .into_iter()
        .filter(|name| name.starts_with(CLUSTER_PREFIX))
        .collect();
    let wanted: BTreeSet<String> = cluster_metrics
        .iter()
        .filter(|n| !is_failure_only(n))
        .cloned()
        .collect();
    assert!(wanted.contains("herald_cluster_raft_leader"), "{wanted:?}");
    let during_outage: BTreeSet<String> = ["herald_cluster_no_leader_total", "herald_cluster_partial_answers_total"]
        .map(String::from)
        .into();
    assert!(during_outage.is_subset(&wanted), "{wanted:?}");

    let converge = Duration::from_secs(20);
    let mut cluster = Cluster::start(2, CONFIG, "forward_timeout = \"1s\"");
    cluster.converged(converge).await;
    // Two nodes are one voter (an even group tolerates no more failures) and one edge node.
    let leader = cluster.leader_elected(1, converge).await;
    let follower = 1 - leader;

    // Interest on the leader's node; a publication routed to it and one forwarded to it by the
    // edge node.
    let mut subscriber = Client::connected(&cluster.nodes[leader], Format::Json, "sub").await;
    subscriber.subscribed("open:room").await;
    let knows = eventually(converge, || async {
        cluster.nodes[follower].cluster_status()["remote_interest"] == 1
    })
    .await;
    assert!(knows, "interest did not reach the follower");
    cluster.nodes[follower]
        .publish("open:room", json!({"routed": true}))
        .await;
    subscriber.next_publication().await;
    cluster.nodes[follower]
        .publish("news", json!({"forwarded": true}))
        .await;
    // A datagram without the cluster's envelope.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(&[0xff, 1, 2, 3], cluster.addresses[follower]).unwrap();

    let healthy: BTreeSet<String> = wanted.difference(&during_outage).cloned().collect();
    all_exported(&[&cluster.nodes[0], &cluster.nodes[1]], &healthy).await;

    // The leader gone: cluster-wide queries miss its part until it is declared down, and no
    // leader takes a publication to a channel with history.
    cluster.nodes[leader].kill();
    let survivor = &cluster.nodes[follower];
    let partial = eventually(converge, || async {
        survivor.api("info", json!({})).await;
        survivor.metric("herald_cluster_partial_answers_total").await >= 1.0
    })
    .await;
    assert!(partial, "no partial answer while the leader was gone");
    let (_, reply) = survivor.api("publish", json!({"channel": "news", "data": {}})).await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    all_exported(&[survivor], &during_outage).await;
}
