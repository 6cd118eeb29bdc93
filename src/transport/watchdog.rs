//! Timeouts of one HTTP connection until it becomes a WebSocket: how long a client may take to
//! send a request's headers (`http.header_read_timeout`) and how long a kept-alive connection
//! may sit idle between requests (`http.idle_timeout`). Request bodies are bounded by the
//! handlers that read them (`http.body_read_timeout`).
//!
//! hyper runs here without a timer, so it has no timeouts of its own. Rather than one timer per
//! read, the connection counts the bytes it reads and the requests it starts and finishes
//! ([`Activity`]), and a ticker looks at those counts a few times per timeout ([`Watch`], a pure
//! function of counts and instants). The cost on the read path is one relaxed atomic add.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a connection has done so far, counted by its reader and its service.
#[derive(Debug, Default)]
pub struct Activity {
    bytes_read: AtomicU64,
    requests_started: AtomicU64,
    requests_done: AtomicU64,
}

/// A snapshot of [`Activity`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub bytes_read: u64,
    pub requests_started: u64,
    pub requests_done: u64,
}

impl Activity {
    pub fn counts(&self) -> Counts {
        // `done` first: a request that finishes between the loads is then seen as in flight,
        // never as finished before it started.
        let requests_done = self.requests_done.load(Ordering::Acquire);
        Counts {
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            requests_started: self.requests_started.load(Ordering::Acquire),
            requests_done,
        }
    }

    /// Marks a request as being handled until the guard drops.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.requests_started.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }
}

pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.requests_done.fetch_add(1, Ordering::AcqRel);
    }
}

/// Which timeout ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// The client did not finish sending a request's headers in time (also: a new connection
    /// that sends nothing).
    Headers,
    /// A kept-alive connection stayed idle between requests.
    Idle,
}

impl Expired {
    pub fn label(self) -> &'static str {
        match self {
            Expired::Headers => "header_read",
            Expired::Idle => "idle",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request's headers since then.
    Headers(Instant),
    /// A request is being handled (its body read is the handler's to bound).
    Busy,
    /// Idle between requests since then.
    Idle(Instant),
}

/// The timeouts of one connection, decided from successive [`Counts`].
#[derive(Debug)]
pub struct Watch {
    phase: Phase,
    last: Counts,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Watch {
    /// A connection accepted at `accepted`: it owes its first request's headers.
    pub fn new(accepted: Instant, header_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            phase: Phase::Headers(accepted),
            last: Counts::default(),
            header_timeout,
            idle_timeout,
        }
    }

    /// How often to look: a quarter of the shorter timeout, so a timeout fires at most a
    /// quarter late.
    pub fn tick(&self) -> Duration {
        (self.header_timeout.min(self.idle_timeout) / 4).max(Duration::from_millis(10))
    }

    /// Looks at the counts at `now`; `Some` when the connection is to be closed.
    pub fn observe(&mut self, counts: Counts, now: Instant) -> Option<Expired> {
        let in_flight = counts.requests_started > counts.requests_done;
        if in_flight {
            self.phase = Phase::Busy;
        } else if counts.requests_done != self.last.requests_done || matches!(self.phase, Phase::Busy) {
            // A request finished since the last look: idle from now.
            self.phase = Phase::Idle(now);
        } else if counts.bytes_read != self.last.bytes_read {
            if let Phase::Idle(_) = self.phase {
                // The first bytes of the next request: its headers are due.
                self.phase = Phase::Headers(now);
            }
        }
        self.last = counts;
        match self.phase {
            Phase::Headers(since) if now.saturating_duration_since(since) >= self.header_timeout => {
                Some(Expired::Headers)
            }
            Phase::Idle(since) if now.saturating_duration_since(since) >= self.idle_timeout => Some(Expired::Idle),
            _ => None,
        }
    }
}

/// A socket that counts what it reads into an [`Activity`].
pub struct Counted<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I> Counted<I> {
    pub fn new(inner: I, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.activity.bytes_read.fetch_add(read as u64, Ordering::Relaxed);
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    fn counts(bytes_read: u64, requests_started: u64, requests_done: u64) -> Counts {
        Counts {
            bytes_read,
            requests_started,
            requests_done,
        }
    }

    #[test]
    fn a_silent_connection_owes_headers_from_accept() {
        let t0 = Instant::now();
        let mut watch = Watch::new(t0, HEADER, IDLE);
        assert_eq!(watch.observe(counts(0, 0, 0), t0 + Duration::from_secs(9)), None);
        assert_eq!(watch.observe(counts(0, 0, 0), t0 + HEADER), Some(Expired::Headers));
    }

    #[test]
    fn headers_sent_one_byte_at_a_time_still_expire() {
        let t0 = Instant::now();
        let mut watch = Watch::new(t0, HEADER, IDLE);
        for second in 1..10 {
            assert_eq!(
                watch.observe(counts(second, 0, 0), t0 + Duration::from_secs(second)),
                None
            );
        }
        assert_eq!(watch.observe(counts(11, 0, 0), t0 + HEADER), Some(Expired::Headers));
    }

    #[test]
    fn idle_keep_alive_gets_the_longer_timeout_then_headers_are_due_again() {
        let t0 = Instant::now();
        let mut watch = Watch::new(t0, HEADER, IDLE);
        // A request came and went within the first tick.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(watch.observe(counts(100, 1, 1), t1), None);
        assert_eq!(watch.observe(counts(100, 1, 1), t1 + Duration::from_secs(59)), None);
        assert_eq!(watch.observe(counts(100, 1, 1), t1 + IDLE), Some(Expired::Idle));
        // Same, but the client starts a next request and stalls in its headers.
        let mut watch = Watch::new(t0, HEADER, IDLE);
        assert_eq!(watch.observe(counts(100, 1, 1), t1), None);
        let t2 = t1 + Duration::from_secs(30);
        assert_eq!(watch.observe(counts(103, 1, 1), t2), None);
        assert_eq!(watch.observe(counts(103, 1, 1), t2 + HEADER), Some(Expired::Headers));
    }

    #[test]
    fn a_request_in_flight_never_expires_here() {
        let t0 = Instant::now();
        let mut watch = Watch::new(t0, HEADER, IDLE);
        assert_eq!(watch.observe(counts(100, 1, 0), t0 + Duration::from_secs(1)), None);
        assert_eq!(watch.observe(counts(100, 1, 0), t0 + Duration::from_secs(600)), None);
        // Done: idle from the moment it is seen done.
        let done = t0 + Duration::from_secs(601);
        assert_eq!(watch.observe(counts(100, 1, 1), done), None);
        assert_eq!(watch.observe(counts(100, 1, 1), done + IDLE), Some(Expired::Idle));
    }

    #[test]
    fn ticks_are_a_quarter_of_the_shorter_timeout() {
        let watch = Watch::new(Instant::now(), HEADER, IDLE);
        assert_eq!(watch.tick(), Duration::from_millis(2500));
    }
}
