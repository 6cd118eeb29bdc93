//! The result of a run: one JSON object on stdout (read by `benches/compare` and
//! `benches/plot.py`) and a summary for people on stderr.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procfs::CpuUsage;
use crate::progress::Ending;
use crate::publisher::Acks;
use crate::run::Workload;
use crate::tally::Totals;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub label: Option<String>,
    pub target: String,
    pub scenario: String,
    /// Herald's wire format (`json`/`protobuf`); `nats` for NATS.
    pub format: String,
    pub publish_via: String,
    /// How subscribers connected: `websocket` or `http_stream` (Herald's HTTP-streaming).
    pub subscriber_transport: String,
    pub namespace: String,
    pub subscribers: usize,
    pub channels: usize,
    pub messages: u64,
    pub size: usize,
    pub rate: Option<f64>,
    pub window: Option<u64>,

    pub connected: usize,
    pub connect_failures: usize,
    pub connect_secs: f64,
    /// `connected / connect_secs`: WebSocket handshake, `connect` and `subscribe` of every
    /// subscriber, `--connect-concurrency` of them at a time.
    pub connects_per_sec: f64,
    /// CPU over the same interval (shares of one core).
    pub connect_cpu: CpuUsage,

    pub published: u64,
    pub publish_secs: f64,
    /// Largest delay of a publish behind its rate schedule (0 without `--rate`).
    pub publish_lag_max_ms: f64,
    pub acks: Acks,

    /// Distinct deliveries (duplicates excluded).
    pub deliveries: u64,
    /// From the first publish to the last delivery.
    pub delivery_secs: f64,
    pub deliveries_per_sec: f64,
    pub messages_per_sec: f64,
    /// WebSocket messages (HTTP-streaming: response chunks) that carried publications, and
    /// publications per such message: how much the server batches its writes.
    pub frames: u64,
    pub deliveries_per_frame: f64,
    #[serde(flatten)]
    pub totals: Totals,
    pub endings: Endings,
    pub latency_us: Option<Latency>,
    pub memory: Option<Memory>,
    /// Share of one core used from the first publish to the end of the run.
    pub client_cpu: Option<f64>,
    pub server_cpu: Option<f64>,
    /// Every other process of the machine over the same interval: competing load.
    pub others_cpu: Option<f64>,

    /// Deliveries stopped arriving before everything was delivered.
    pub stalled: bool,
    pub timed_out: bool,
    pub error: Option<String>,
    pub elapsed_secs: f64,
}

impl Report {
    pub fn new(workload: &Workload) -> Self {
        Self {
            scenario: workload.scenario.into(),
            subscribers: workload.subscribers(),
            channels: workload.channels,
            messages: workload.messages,
            size: workload.size,
            rate: workload.rate,
            window: workload.window,
            ..Default::default()
        }
    }

    /// Whether every expected delivery arrived exactly once, in order, with no publish error.
    pub fn is_clean(&self) -> bool {
        let t = &self.totals;
        t.lost + t.duplicates + t.reordered + t.unexpected + self.acks.errors == 0
            && self.error.is_none()
            && self.connect_failures == 0
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        let t = &self.totals;
        let _ = writeln!(
            s,
            "{} {} ({} over {}, publish via {}){}",
            self.target,
            self.scenario,
            self.format,
            self.subscriber_transport,
            self.publish_via,
            self.label.as_deref().map(|l| format!(" [{l}]")).unwrap_or_default()
        );
        let cpu = |c: Option<f64>| c.map_or("?".into(), |c| format!("{:.0}%", c * 100.0));
        let _ = writeln!(
            s,
            "  subscribers {} on {} channels: {} connected in {:.2}s ({:.0}/s; cpu server {}, load generator {}, \
             other processes {}), {} failed",
            self.subscribers,
            self.channels,
            self.connected,
            self.connect_secs,
            self.connects_per_sec,
            cpu(self.connect_cpu.server),
            cpu(self.connect_cpu.client),
            cpu(self.connect_cpu.others),
            self.connect_failures
        );
        let _ = writeln!(
            s,
            "  published {} of {} × {} B in {:.2}s (acks ok {}, errors {}){}",
            self.published,
            self.messages,
            self.size,
            self.publish_secs,
            self.acks.ok,
            self.acks.errors,
            self.acks
                .first_error
                .as_deref()
                .map(|e| format!(", first: {e}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "  delivered {} of {} in {:.2}s: {:.0} deliveries/s, {:.0} messages/s, {:.1} per {}",
            self.deliveries,
            t.expected,
            self.delivery_secs,
            self.deliveries_per_sec,
            self.messages_per_sec,
            self.deliveries_per_frame,
            if self.subscriber_transport == "http_stream" {
                "stream chunk"
            } else {
                "WebSocket message"
            }
        );
        let _ = writeln!(
            s,
            "  lost {}, duplicates {}, reordered {}, unexpected {}; complete subscribers {}/{}",
            t.lost, t.duplicates, t.reordered, t.unexpected, t.complete_subscribers, t.subscribers
        );
        if let Some(l) = &self.latency_us {
            let _ = writeln!(
                s,
                "  latency µs: p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  (n={}, publish lag max {:.1} ms)",
                l.p50, l.p90, l.p99, l.p999, l.max, l.count, self.publish_lag_max_ms
            );
        }
        if let Some(m) = &self.memory {
            let _ = writeln!(
                s,
                "  server RSS {} → {} MiB: {} bytes per connection",
                m.rss_before
                    .map_or("?".into(), |b| format!("{:.1}", b as f64 / 1048576.0)),
                m.rss_after
                    .map_or("?".into(), |b| format!("{:.1}", b as f64 / 1048576.0)),
                m.per_connection_bytes.map_or("?".into(), |b| format!("{b:.0}"))
            );
        }
        let _ = writeln!(
            s,
            "  cpu (% of one core): server {}, load generator {}, other processes {}",
            cpu(self.server_cpu),
            cpu(self.client_cpu),
            cpu(self.others_cpu)
        );
        let _ = writeln!(s, "  connections ended: {}", self.endings.describe());
        if self.stalled || self.timed_out || self.error.is_some() {
            let _ = writeln!(
                s,
                "  !! stalled {} timed out {} error {}",
                self.stalled,
                self.timed_out,
                self.error.as_deref().unwrap_or("-")
            );
        }
        s
    }
}

/// How the subscribers' connections ended.
#[derive(Debug, Default, Serialize)]
pub struct Endings {
    /// Stopped by the run, as they should be.
    pub stopped: usize,
    /// Closed by the server, by "code reason".
    pub closed: BTreeMap<String, usize>,
    pub failed: usize,
    /// The first few failure messages.
    pub failures: Vec<String>,
}

impl Endings {
    pub fn add(&mut self, ending: &Ending) {
        match ending {
            Ending::Stopped => self.stopped += 1,
            Ending::Closed { code, reason } => *self.closed.entry(format!("{code} {reason}")).or_default() += 1,
            Ending::Failed(e) => {
                self.failed += 1;
                if self.failures.len() < 3 {
                    self.failures.push(e.clone());
                }
            }
        }
    }

    fn describe(&self) -> String {
        let mut s = format!("{} stopped by the run", self.stopped);
        for (why, n) in &self.closed {
            let _ = write!(s, ", {n} closed ({why})");
        }
        if self.failed > 0 {
            let _ = write!(s, ", {} failed: {}", self.failed, self.failures.join(" | "));
        }
        s
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(ns: &Histogram<u64>) -> Self {
        let us = |v: u64| v as f64 / 1e3;
        Self {
            count: ns.len(),
            mean: ns.mean() / 1e3,
            p50: us(ns.value_at_quantile(0.50)),
            p90: us(ns.value_at_quantile(0.90)),
            p99: us(ns.value_at_quantile(0.99)),
            p999: us(ns.value_at_quantile(0.999)),
            max: us(ns.max()),
        }
    }
}

/// Server memory of the `idle` scenario.
#[derive(Debug, Serialize)]
pub struct Memory {
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    pub per_connection_bytes: Option<f64>,
}

impl Memory {
    pub fn new(rss_before: Option<u64>, rss_after: Option<u64>, connections: usize) -> Self {
        let per_connection_bytes = match (rss_before, rss_after) {
            (Some(b), Some(a)) if connections > 0 => Some((a as f64 - b as f64) / connections as f64),
            _ => None,
        };
        Self {
            rss_before,
            rss_after,
            per_connection_bytes,
        }
    }
}
