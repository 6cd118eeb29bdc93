//! Who may hold a socket before it is a WebSocket: caps on the connections that are still
//! plain HTTP (handshakes, API calls, idle keep-alive), in all and per source address, and the
//! accept loop's back-off when the process is out of file descriptors.
//!
//! Why: a host with no credentials can open sockets and say nothing. Each one holds a file
//! descriptor; a few hundred of them used to stop a node with a low open-file limit from
//! accepting anyone (issue 11). The per-address cap keeps one host from taking the whole budget;
//! the timeouts in [`super::watchdog`] bound how long any of them is held.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The gauge of connections holding a slot (plain HTTP: handshakes, API calls, idle keep-alive).
const PENDING: &str = "herald_http_pending_connections";

/// Caps on connections that are not (yet) WebSockets.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_address: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `http.max_pending_connections` reached.
    Total,
    /// `http.max_pending_connections_per_ip` reached for this source address.
    PerAddress,
}

impl Refusal {
    /// The `limit` label of `herald_limit_rejections_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Total => "pending_connections",
            Refusal::PerAddress => "pending_connections_per_ip",
        }
    }
}

impl Admission {
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: max_total.max(1),
            max_per_address: max_per_address.max(1),
            held: Mutex::default(),
        })
    }

    /// Takes a slot for a connection from `address`, released when the returned [`Slot`] drops
    /// (the connection closed or became a WebSocket).
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Slot, Refusal> {
        let mut held = self.held.lock();
        let from_address = held.per_address.get(&address).copied().unwrap_or(0);
        if from_address >= self.max_per_address {
            return Err(Refusal::PerAddress);
        }
        if held.total >= self.max_total {
            return Err(Refusal::Total);
        }
        held.total += 1;
        held.per_address.insert(address, from_address + 1);
        metrics::gauge!(PENDING).set(held.total as f64);
        Ok(Slot {
            admission: self.clone(),
            address,
        })
    }

    /// Connections holding a slot now.
    pub fn held(&self) -> usize {
        self.held.lock().total
    }
}

/// A connection's place among the pending ones.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.admission.held.lock();
        held.total -= 1;
        metrics::gauge!(PENDING).set(held.total as f64);
        if let Some(count) = held.per_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                // The last connection of an address removes its entry: the map holds only
                // addresses with live connections.
                held.per_address.remove(&self.address);
            }
        }
    }
}

/// The effective caps for a process that may open `open_files` descriptors: pending sockets may
/// take at most half of them (the rest serve WebSocket clients, the store and the listener),
/// and one address at most a quarter of the pending budget, so one host never holds all of it.
pub fn effective_caps(max_total: usize, max_per_address: usize, open_files: Option<u64>) -> (usize, usize) {
    let total = match open_files {
        Some(limit) => max_total.min(usize::try_from(limit / 2).unwrap_or(usize::MAX)).max(1),
        None => max_total.max(1),
    };
    let per_address = max_per_address.min((total / 4).max(1)).max(1);
    (total, per_address)
}

/// Back-off of the accept loop after errors (EMFILE, ENFILE, ENOBUFS…): the delay doubles from
/// 5 ms to 1 s while errors continue, and the log gets one line per `LOG_INTERVAL` with the
/// count, instead of one line per failed accept.
#[derive(Debug)]
pub struct AcceptBackoff {
    delay: Duration,
    failures: u64,
    last_log: Option<Instant>,
}

const FIRST_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_secs(1);
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self {
            delay: FIRST_DELAY,
            failures: 0,
            last_log: None,
        }
    }
}

/// What to do after a failed accept.
#[derive(Debug, PartialEq, Eq)]
pub struct AfterError {
    pub wait: Duration,
    /// Failures to report now (this one included), or `None` to stay quiet.
    pub report: Option<u64>,
}

impl AcceptBackoff {
    pub fn failed(&mut self, now: Instant) -> AfterError {
        self.failures += 1;
        let wait = self.delay;
        self.delay = (self.delay * 2).min(MAX_DELAY);
        let due = self
            .last_log
            .is_none_or(|last| now.saturating_duration_since(last) >= LOG_INTERVAL);
        let report = due.then(|| {
            self.last_log = Some(now);
            std::mem::take(&mut self.failures)
        });
        AfterError { wait, report }
    }

    /// An accept worked: the next error starts from the shortest delay again.
    pub fn succeeded(&mut self) {
        self.delay = FIRST_DELAY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn caps_per_address_and_in_total_and_slots_come_back() {
        let admission = Admission::new(5, 2);
        let a1 = admission.admit(ip(2)).unwrap();
        let _a2 = admission.admit(ip(2)).unwrap();
        assert_eq!(admission.admit(ip(2)).unwrap_err(), Refusal::PerAddress);
        let _b: Vec<_> = (0..2).map(|_| admission.admit(ip(3)).unwrap()).collect();
        let _c = admission.admit(ip(4)).unwrap();
        assert_eq!(admission.admit(ip(5)).unwrap_err(), Refusal::Total);
        assert_eq!(admission.held(), 5);
        drop(a1);
        assert_eq!(admission.held(), 4);
        let _a3 = admission.admit(ip(2)).unwrap();
        // Entries of addresses without connections are removed.
        drop(_c);
        assert!(!admission.held.lock().per_address.contains_key(&ip(4)));
    }

    #[test]
    fn caps_follow_the_open_file_limit() {
        assert_eq!(effective_caps(4096, 256, Some(20_000)), (4096, 256));
        assert_eq!(effective_caps(4096, 256, Some(512)), (256, 64));
        assert_eq!(effective_caps(4096, 256, None), (4096, 256));
        assert_eq!(effective_caps(10, 256, Some(1)), (1, 1));
    }

    #[test]
    fn accept_errors_back_off_and_log_once_per_interval() {
        let start = Instant::now();
        let mut backoff = AcceptBackoff::default();
        let first = backoff.failed(start);
        assert_eq!(first.report, Some(1));
        assert_eq!(first.wait, FIRST_DELAY);
        let mut waits = vec![first.wait];
        let mut quiet = 0;
        for i in 1..60u32 {
            let after = backoff.failed(start + Duration::from_millis(u64::from(i) * 100));
            assert!(after.report.is_none(), "error {i} logged again within the interval");
            waits.push(after.wait);
            quiet += 1;
        }
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().unwrap(), MAX_DELAY);
        // Once the interval has passed, one line reports everything since the last one.
        let later = backoff.failed(start + LOG_INTERVAL);
        assert_eq!(later.report, Some(quiet + 1));
        backoff.succeeded();
        assert_eq!(backoff.failed(start + LOG_INTERVAL).wait, FIRST_DELAY);
    }
}
