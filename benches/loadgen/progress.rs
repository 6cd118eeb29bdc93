//! What subscriber tasks share with the run: counters the publisher paces itself on, and the
//! receive side of one subscriber ([`Receiver`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::payload::Stamp;
use crate::tally::Tally;

/// Shared by every task of a run.
pub struct Progress {
    /// The clock origin of payload timestamps.
    pub start: Instant,
    delivered: AtomicU64,
    /// WebSocket messages (or stream chunks) that carried at least one publication.
    frames: AtomicU64,
    complete: AtomicUsize,
    connected: AtomicUsize,
    failed: AtomicUsize,
    publisher_waiting: AtomicBool,
    wake: Notify,
    /// Latencies in nanoseconds, when the scenario measures them.
    pub latency: Option<Mutex<Histogram<u64>>>,
}

impl Progress {
    pub fn new(measure_latency: bool) -> Arc<Self> {
        let latency = measure_latency.then(|| {
            // 1 ns .. 10 min at 3 significant digits: one histogram for the whole run.
            Mutex::new(Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds"))
        });
        Arc::new(Self {
            start: Instant::now(),
            delivered: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            complete: AtomicUsize::new(0),
            connected: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            publisher_waiting: AtomicBool::new(false),
            wake: Notify::new(),
            latency,
        })
    }

    /// Nanoseconds since the run started: the timestamp a payload carries.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Relaxed)
    }

    pub fn frames(&self) -> u64 {
        self.frames.load(Relaxed)
    }

    pub fn complete_subscribers(&self) -> usize {
        self.complete.load(Relaxed)
    }

    /// Subscribers that are (connected and subscribed, failed to).
    pub fn connections(&self) -> (usize, usize) {
        (self.connected.load(Relaxed), self.failed.load(Relaxed))
    }

    pub fn subscriber_ready(&self) {
        self.connected.fetch_add(1, Relaxed);
    }

    pub fn subscriber_failed(&self) {
        self.failed.fetch_add(1, Relaxed);
    }

    /// Waits until `ready()` holds, a delivery arrives, or `poll` passes, whichever is first:
    /// the publisher's way of waiting for its window to open without spinning.
    pub async fn wait_for_deliveries(&self, ready: impl Fn(u64) -> bool, poll: Duration) {
        let notified = self.wake.notified();
        self.publisher_waiting.store(true, Relaxed);
        if !ready(self.delivered()) {
            let _ = tokio::time::timeout(poll, notified).await;
        }
        self.publisher_waiting.store(false, Relaxed);
    }

    fn add_deliveries(&self, count: u64, completed: bool) {
        self.delivered.fetch_add(count, Relaxed);
        self.frames.fetch_add(1, Relaxed);
        if completed {
            self.complete.fetch_add(1, Relaxed);
        }
        if self.publisher_waiting.load(Relaxed) {
            self.wake.notify_one();
        }
    }
}

/// The receive side of one subscriber: it owns the subscriber's tally and reports to the run.
pub struct Receiver {
    pub tally: Tally,
    progress: Arc<Progress>,
    stamps: Vec<Stamp>,
}

impl Receiver {
    pub fn new(tally: Tally, progress: Arc<Progress>) -> Self {
        Self {
            tally,
            progress,
            stamps: Vec::new(),
        }
    }

    /// Collects the stamp of one publication found in the current server message.
    pub fn push(&mut self, stamp: Stamp) {
        self.stamps.push(stamp);
    }

    /// Accounts for the publications of one server message: they all arrived now.
    pub fn flush(&mut self) {
        if self.stamps.is_empty() {
            return;
        }
        let at = Instant::now();
        let mut completed = false;
        for stamp in &self.stamps {
            completed |= self.tally.record(stamp.seq, at);
        }
        if let Some(latency) = &self.progress.latency {
            let now = at.duration_since(self.progress.start).as_nanos() as u64;
            let mut histogram = latency.lock();
            for stamp in &self.stamps {
                histogram.saturating_record(now.saturating_sub(stamp.sent_ns).max(1));
            }
        }
        self.progress.add_deliveries(self.stamps.len() as u64, completed);
        self.stamps.clear();
    }
}

/// How a subscriber's connection ended.
#[derive(Debug, Clone)]
pub enum Ending {
    /// The run stopped it.
    Stopped,
    /// The server closed it (WebSocket close code and reason), or dropped the TCP connection.
    Closed { code: u16, reason: String },
    /// Connecting, subscribing or reading failed.
    Failed(String),
}

impl Ending {
    /// The server's close frame (1005 when it carried no code).
    pub fn closed(frame: Option<CloseFrame>) -> Self {
        match frame {
            Some(f) => Self::Closed {
                code: f.code.into(),
                reason: f.reason.to_string(),
            },
            None => Self::Closed {
                code: 1005,
                reason: String::new(),
            },
        }
    }

    /// The TCP connection ended without a close frame.
    pub fn dropped() -> Self {
        Self::Closed {
            code: 1006,
            reason: "connection dropped".into(),
        }
    }
}

pub struct Outcome {
    pub tally: Tally,
    pub ending: Ending,
}
