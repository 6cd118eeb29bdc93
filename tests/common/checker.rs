//! The cluster checker (issue 10): records every acknowledged publish and every delivery, per
//! subscriber, while faults happen, then checks the anomalies that matter for an append-only
//! list per channel:
//! - an acknowledged publication missing from the history a node serves (lost ack);
//! - two payloads at one `(epoch, offset)`;
//! - offsets within a subscription that are not contiguous in one epoch, without a documented
//!   signal first (unsubscribe 2500, disconnect 3010, `recovered: false`);
//! - a delivery of a payload never published (phantom), or delivered twice (duplicate).
//!
//! Subscribers are real WebSocket clients (JSON protocol) that reconnect to another node when
//! theirs goes away and recover from the last position they saw, as the SDKs do.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::API_KEY;
use tokio_tungstenite::tungstenite::Message;

/// Where the nodes can be reached now: index → HTTP address (`None` while a node is down).
pub type Addresses = Arc<Mutex<Vec<Option<std::net::SocketAddr>>>>;

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A publication: its position and payload id.
    Delivered { epoch: String, offset: u64, id: String },
    /// A documented signal that positions may jump (2500, 3010, recovered:false).
    Signal(String),
    /// A (re)subscribe answered, positioned at (epoch, offset).
    Subscribed {
        epoch: String,
        offset: u64,
        recovered: bool,
    },
}

/// What publishers recorded.
#[derive(Debug, Default, Clone)]
pub struct Publishes {
    /// id → (epoch, offset) of acknowledged publishes.
    pub acked: BTreeMap<String, (String, u64)>,
    /// ids attempted but not acknowledged: they may or may not be in the log.
    pub unknown: HashSet<String>,
}

/// A subscriber that follows one channel across node failures.
pub struct Subscriber {
    pub name: String,
    pub events: Arc<Mutex<Vec<Event>>>,
    task: tokio::task::JoinHandle<()>,
    stop: tokio_util::sync::CancellationToken,
}

impl Subscriber {
    /// Starts following `channel` from node `first` (then the next live node after a failure).
    pub fn spawn(name: &str, addresses: Addresses, first: usize, channel: &str, token: String) -> Subscriber {
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(follow(
            addresses,
            first,
            channel.to_owned(),
            token,
            events.clone(),
            stop.clone(),
        ));
        Subscriber {
            name: name.to_owned(),
            events,
            task,
            stop,
        }
    }

    /// The payload ids delivered so far.
    pub fn delivered(&self) -> HashSet<String> {
        self.events
            .lock()
            .iter()
            .filter_map(|e| match e {
                Event::Delivered { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    /// The payload ids this subscriber must get: acknowledged after its first subscribe's
    /// position (a subscriber that came later is not owed what came before it).
    pub fn owed(&self, publishes: &Publishes) -> HashSet<String> {
        let first = self.events.lock().iter().find_map(|e| match e {
            Event::Subscribed { epoch, offset, .. } => Some((epoch.clone(), *offset)),
            _ => None,
        });
        let Some((first_epoch, first_offset)) = first else {
            return publishes.acked.keys().cloned().collect();
        };
        publishes
            .acked
            .iter()
            .filter(|(_, (epoch, offset))| first_epoch.is_empty() || *epoch != first_epoch || *offset > first_offset)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub async fn stop(self) -> Vec<Event> {
        self.stop.cancel();
        let _ = self.task.await;
        Arc::try_unwrap(self.events).map(|m| m.into_inner()).unwrap_or_default()
    }
}

/// Waits up to `timeout` until every subscriber got every acknowledged publication it is owed.
/// On failure, the report names each subscriber's missing ids with their acknowledged
/// positions, and its first and last events.
pub async fn caught_up(subscribers: &[Subscriber], publishes: &Publishes, timeout: Duration) -> Result<(), String> {
    let owed: Vec<HashSet<String>> = subscribers.iter().map(|s| s.owed(publishes)).collect();
    let ok = super::eventually(timeout, || async {
        subscribers
            .iter()
            .zip(&owed)
            .all(|(s, owed)| owed.is_subset(&s.delivered()))
    })
    .await;
    if ok {
        return Ok(());
    }
    let mut report = vec![format!(
        "subscribers did not get every acknowledged publication within {timeout:?}"
    )];
    for (s, owed) in subscribers.iter().zip(&owed) {
        let delivered = s.delivered();
        let mut missing: Vec<(&String, &(String, u64))> = owed
            .difference(&delivered)
            .filter_map(|id| publishes.acked.get(id).map(|at| (id, at)))
            .collect();
        if missing.is_empty() {
            continue;
        }
        missing.sort_by_key(|(_, (epoch, offset))| (epoch.clone(), *offset));
        let events = s.events.lock();
        let tail = events.len().saturating_sub(12);
        report.push(format!(
            "{} misses {} of {}: {:?}\n  first events: {:?}\n  last events: {:?}",
            s.name,
            missing.len(),
            owed.len(),
            &missing[..missing.len().min(12)],
            &events[..events.len().min(4)],
            &events[tail..]
        ));
    }
    Err(report.join("\n"))
}

async fn follow(
    addresses: Addresses,
    mut node: usize,
    channel: String,
    token: String,
    events: Arc<Mutex<Vec<Event>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut position: Option<(String, u64)> = None;
    while !stop.is_cancelled() {
        let address = {
            let addresses = addresses.lock();
            let n = addresses.len();
            let found = (0..n).map(|i| (node + i) % n).find(|i| addresses[*i].is_some());
            match found {
                Some(i) => {
                    node = i;
                    addresses[i]
                }
                None => None,
            }
        };
        let Some(address) = address else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = session(address, &channel, &token, &mut position, &events) => outcome,
        };
        if let Err(reason) = outcome {
            // The node went away (or refused): try the next one.
            let _ = reason;
            node += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One connection: subscribes (recovering from `position`) and records until it ends.
async fn session(
    address: std::net::SocketAddr,
    channel: &str,
    token: &str,
    position: &mut Option<(String, u64)>,
    events: &Mutex<Vec<Event>>,
) -> Result<(), String> {
    let url = format!("ws://{address}/connection/websocket");
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| "connect timeout".to_owned())?
        .map_err(|e| e.to_string())?;
    let send = |v: Value| Message::text(v.to_string());
    ws.send(send(json!({"id": 1, "connect": {"token": token}})))
        .await
        .map_err(|e| e.to_string())?;
    let subscribe = |ws_id: u32, position: &Option<(String, u64)>| {
        let mut request = json!({"channel": channel, "recoverable": true, "positioned": true});
        if let Some((epoch, offset)) = position {
            request["recover"] = json!(true);
            request["epoch"] = json!(epoch);
            request["offset"] = json!(offset);
        }
        send(json!({"id": ws_id, "subscribe": request}))
    };
    let mut next_id = 2;
    ws.send(subscribe(next_id, position)).await.map_err(|e| e.to_string())?;
    let mut subscribe_id = next_id;
    loop {
        let message = match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Err(_) => return Err("silent for 30 s".into()),
            Ok(None) => return Err("closed".into()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(m))) => m,
        };
        let text = match message {
            Message::Text(t) => t.to_string(),
            Message::Close(frame) => {
                if let Some(frame) = frame {
                    let code = u16::from(frame.code);
                    if code == 3010 || code == 2500 {
                        events.lock().push(Event::Signal(format!("disconnect {code}")));
                    }
                }
                return Err("closed".into());
            }
            _ => continue,
        };
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            let reply: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
            if reply.as_object().is_some_and(|o| o.is_empty()) {
                // Ping: answer with a pong.
                ws.send(send(json!({}))).await.map_err(|e| e.to_string())?;
                continue;
            }
            if reply["id"] == subscribe_id {
                if let Some(error) = reply.get("error") {
                    return Err(format!("subscribe refused: {error}"));
                }
                let result = &reply["subscribe"];
                let epoch = result["epoch"].as_str().unwrap_or_default().to_owned();
                let offset = result["offset"].as_u64().unwrap_or(0);
                let recovered = result["recovered"].as_bool().unwrap_or(false);
                let mut events = events.lock();
                if position.is_some() && !recovered {
                    events.push(Event::Signal("recovered:false".into()));
                }
                events.push(Event::Subscribed {
                    epoch: epoch.clone(),
                    offset,
                    recovered,
                });
                for publication in result["publications"].as_array().into_iter().flatten() {
                    record(&mut events, &epoch, publication, position);
                }
                *position = Some((epoch, offset));
                continue;
            }
            let Some(push) = reply.get("push") else { continue };
            if let Some(publication) = push.get("pub") {
                let epoch = position.as_ref().map(|p| p.0.clone()).unwrap_or_default();
                record(&mut events.lock(), &epoch, publication, position);
            } else if let Some(unsubscribe) = push.get("unsubscribe") {
                let code = unsubscribe["code"].as_u64().unwrap_or(0);
                events.lock().push(Event::Signal(format!("unsubscribe {code}")));
                next_id += 1;
                subscribe_id = next_id;
                ws.send(subscribe(next_id, position)).await.map_err(|e| e.to_string())?;
            } else if push.get("disconnect").is_some() {
                return Err("disconnect push".into());
            }
        }
    }
}

fn record(events: &mut Vec<Event>, epoch: &str, publication: &Value, position: &mut Option<(String, u64)>) {
    let offset = publication["offset"].as_u64().unwrap_or(0);
    let id = publication["data"]["id"].as_str().unwrap_or_default().to_owned();
    events.push(Event::Delivered {
        epoch: epoch.to_owned(),
        offset,
        id,
    });
    *position = Some((epoch.to_owned(), offset));
}

/// Publishes `{"id": …}` to `channel` through the API at `address`; records the outcome.
pub async fn publish(address: std::net::SocketAddr, channel: &str, id: &str, publishes: &Mutex<Publishes>) -> bool {
    let client = reqwest::Client::new();
    let sent = client
        .post(format!("http://{address}/api/publish"))
        .header("X-API-Key", API_KEY)
        .timeout(Duration::from_secs(10))
        .json(&json!({"channel": channel, "data": {"id": id}}))
        .send()
        .await;
    let reply: Option<Value> = match sent {
        Ok(response) => response.json().await.ok(),
        Err(_) => None,
    };
    let mut publishes = publishes.lock();
    match reply.as_ref().and_then(|r| r.get("result")) {
        Some(result) if result["epoch"].is_string() => {
            let position = (
                result["epoch"].as_str().unwrap().to_owned(),
                result["offset"].as_u64().unwrap(),
            );
            publishes.acked.insert(id.to_owned(), position);
            true
        }
        _ => {
            publishes.unknown.insert(id.to_owned());
            false
        }
    }
}

/// The whole history of `channel` as node `node` serves it, page by page.
pub async fn history(node: &super::Node, channel: &str) -> Vec<(String, u64, String)> {
    let mut all = Vec::new();
    let mut since: Option<(String, u64)> = None;
    loop {
        let mut body = json!({"channel": channel, "limit": 300});
        if let Some((epoch, offset)) = &since {
            body["since"] = json!({"epoch": epoch, "offset": offset});
        }
        let (status, reply) = node.api("history", body).await;
        assert_eq!(status, 200, "{reply}");
        let result = &reply["result"];
        let epoch = result["epoch"].as_str().unwrap_or_default().to_owned();
        let page = result["publications"].as_array().cloned().unwrap_or_default();
        for p in &page {
            all.push((
                epoch.clone(),
                p["offset"].as_u64().unwrap(),
                p["data"]["id"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        match page.last() {
            Some(last) if page.len() == 300 => since = Some((epoch, last["offset"].as_u64().unwrap())),
            _ => return all,
        }
    }
}

/// Checks everything recorded; returns the problems found (empty: clean), each with the
/// offending history.
pub fn check(
    publishes: &Publishes,
    histories: &[Vec<(String, u64, String)>],
    subscribers: &[(String, Vec<Event>)],
) -> Vec<String> {
    let mut problems = Vec::new();
    // Every position's payload, from acks, histories and deliveries: one payload per position.
    let mut at: HashMap<(String, u64), String> = HashMap::new();
    let mut claim = |epoch: &str, offset: u64, id: &str, source: &str, problems: &mut Vec<String>| {
        let key = (epoch.to_owned(), offset);
        match at.get(&key) {
            Some(existing) if existing != id => problems.push(format!(
                "two payloads at ({epoch}, {offset}): {existing} and {id} (seen in {source})"
            )),
            Some(_) => {}
            None => {
                at.insert(key, id.to_owned());
            }
        }
    };
    for (id, (epoch, offset)) in &publishes.acked {
        claim(epoch, *offset, id, "an ack", &mut problems);
    }
    for (node, history) in histories.iter().enumerate() {
        let ids: HashSet<&str> = history.iter().map(|(_, _, id)| id.as_str()).collect();
        for (epoch, offset, id) in history {
            claim(epoch, *offset, id, &format!("node {node}'s history"), &mut problems);
        }
        for (id, (epoch, offset)) in &publishes.acked {
            if !ids.contains(id.as_str()) {
                problems.push(format!(
                    "acknowledged {id} at ({epoch}, {offset}) is missing from node {node}'s history ({} entries)",
                    history.len()
                ));
            }
        }
        let mut seen = HashSet::new();
        for (_, offset, id) in history {
            if !seen.insert(id) {
                problems.push(format!("node {node}'s history holds {id} twice (offset {offset})"));
            }
        }
    }
    for (name, events) in subscribers {
        let mut last: Option<(String, u64)> = None;
        let mut delivered = HashSet::new();
        for (i, event) in events.iter().enumerate() {
            match event {
                Event::Signal(_) => last = None,
                Event::Subscribed {
                    epoch,
                    offset,
                    recovered,
                } => {
                    if !recovered {
                        last = Some((epoch.clone(), *offset));
                    }
                }
                Event::Delivered { epoch, offset, id } => {
                    // A subscriber positioned before the stream existed does not know its epoch
                    // (""): the epoch its publication was acknowledged in stands for it.
                    let epoch = match (epoch.is_empty(), publishes.acked.get(id)) {
                        (true, Some((acked, _))) => acked,
                        _ => epoch,
                    };
                    if !epoch.is_empty() {
                        claim(epoch, *offset, id, &format!("{name}'s deliveries"), &mut problems);
                    }
                    if !publishes.acked.contains_key(id) && !publishes.unknown.contains(id) {
                        problems.push(format!("{name} got {id}, which nobody published (phantom)"));
                    }
                    if !delivered.insert(id.clone()) {
                        problems.push(format!("{name} got {id} twice"));
                    }
                    if let Some((last_epoch, last_offset)) = &last {
                        let same_epoch = last_epoch == epoch || last_epoch.is_empty() || epoch.is_empty();
                        if !same_epoch || *offset != last_offset + 1 {
                            let from = i.saturating_sub(5);
                            problems.push(format!(
                                "{name}: ({epoch}, {offset}) after ({last_epoch}, {last_offset}) without a signal; events: {:?}",
                                &events[from..(i + 1).min(events.len())]
                            ));
                        }
                    }
                    last = Some((epoch.clone(), *offset));
                }
            }
        }
    }
    problems
}
