//! The outbound queue of one connection, bounded in bytes.
//!
//! Producers (command replies, the hub's fan-out) never wait: a push that would exceed the bound
//! marks the client slow (3008) and drops what is queued. One writer task drains everything queued
//! at once and writes it as one WebSocket message.

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::protocol::DisconnectCode;

pub struct Outbound {
    state: Mutex<State>,
    notify: Notify,
    limit: usize,
    /// Cancelled as soon as the connection must end, whoever decided it.
    closing: CancellationToken,
}

#[derive(Default)]
struct State {
    items: Vec<Bytes>,
    bytes: usize,
    /// Budget held for pushes waiting elsewhere to be queued: those buffered by subscriptions
    /// being set up. They count against the limit like queued bytes (issue 11).
    reserved: usize,
    close: Option<DisconnectCode>,
}

/// What the writer takes in one go.
#[derive(Default)]
pub struct Drained {
    pub items: Vec<Bytes>,
    pub close: Option<DisconnectCode>,
}

impl Outbound {
    pub fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            limit,
            closing: CancellationToken::new(),
        }
    }

    /// Queues one encoded reply or push. Returns false if the connection is closing (or just
    /// became slow because of this push).
    pub fn push(&self, bytes: Bytes) -> bool {
        let mut state = self.state.lock();
        if state.close.is_some() {
            return false;
        }
        if state.bytes + state.reserved + bytes.len() > self.limit {
            self.overflow(state);
            return false;
        }
        state.bytes += bytes.len();
        state.items.push(bytes);
        // Only the first item after the writer's last take wakes it: it takes everything queued.
        let wake = state.items.len() == 1;
        drop(state);
        if wake {
            self.notify.notify_one();
        }
        true
    }

    /// A slow client loses its queue, not the server its memory.
    fn overflow(&self, mut state: parking_lot::MutexGuard<'_, State>) {
        state.items.clear();
        state.bytes = 0;
        state.close = Some(DisconnectCode::SLOW);
        drop(state);
        metrics::counter!("herald_slow_disconnects_total").increment(1);
        self.closing.cancel();
        self.notify.notify_one();
    }

    /// Holds `bytes` of the budget for a push buffered outside the queue. Returns false, and
    /// marks the client slow, when that would exceed the limit (or the connection is closing).
    pub fn reserve(&self, bytes: usize) -> bool {
        let mut state = self.state.lock();
        if state.close.is_some() {
            return false;
        }
        if state.bytes + state.reserved + bytes > self.limit {
            self.overflow(state);
            return false;
        }
        state.reserved += bytes;
        true
    }

    /// Gives back budget held by [`Outbound::reserve`] (the pushes are queued or dropped).
    pub fn release(&self, bytes: usize) {
        let mut state = self.state.lock();
        state.reserved = state.reserved.saturating_sub(bytes);
    }

    /// Asks for the connection to close with `code` once what is queued has been written.
    /// The first code wins.
    pub fn close(&self, code: DisconnectCode) {
        let mut state = self.state.lock();
        if state.close.is_none() {
            state.close = Some(code);
        }
        drop(state);
        self.closing.cancel();
        self.notify.notify_one();
    }

    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Waits for something to write (or a close) and takes all of it.
    pub async fn drain(&self) -> Drained {
        self.drain_coalesced(0).await
    }

    /// Like [`Outbound::drain`], but first lets the producers that are ready run, as long as they
    /// keep adding (at most `rounds` times), so that one write carries more. Under load a frame
    /// then holds many publications instead of one per scheduling turn (issue 5: at 100
    /// subscribers each frame held 16); when nothing more comes it costs one yield.
    pub async fn drain_coalesced(&self, rounds: usize) -> Drained {
        loop {
            let mut last = self.growing();
            for _ in 0..rounds {
                if last == 0 {
                    break;
                }
                tokio::task::yield_now().await;
                let now = self.growing();
                if now == last {
                    break;
                }
                last = now;
            }
            if let Some(drained) = self.try_take() {
                return drained;
            }
            // notify_one stores a permit when nobody waits, so a push between the check and
            // this await is not lost.
            self.notify.notified().await;
        }
    }

    /// Bytes queued, or 0 once a close is decided (nothing is worth waiting for then).
    fn growing(&self) -> usize {
        let state = self.state.lock();
        if state.close.is_some() {
            0
        } else {
            state.bytes
        }
    }

    /// What is queued (or a close), without waiting.
    pub fn try_take(&self) -> Option<Drained> {
        let mut state = self.state.lock();
        if state.items.is_empty() && state.close.is_none() {
            return None;
        }
        state.bytes = 0;
        Some(Drained {
            items: std::mem::take(&mut state.items),
            close: state.close.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_marks_slow_and_drops_the_queue() {
        let q = Outbound::new(10);
        assert!(q.push(Bytes::from_static(b"12345")));
        assert!(q.push(Bytes::from_static(b"12345")));
        assert!(!q.push(Bytes::from_static(b"1")));
        assert!(q.closing().is_cancelled());
        let drained = q.drain().await;
        assert!(drained.items.is_empty());
        assert_eq!(drained.close, Some(DisconnectCode::SLOW));
        assert!(!q.push(Bytes::from_static(b"1")), "nothing is queued after close");
    }

    #[tokio::test]
    async fn reserved_bytes_count_against_the_limit() {
        let q = Outbound::new(10);
        assert!(q.reserve(6));
        assert!(q.push(Bytes::from_static(b"1234")));
        // Taking what is queued does not give back what is reserved.
        assert_eq!(q.try_take().unwrap().items.len(), 1);
        assert!(q.push(Bytes::from_static(b"1234")));
        assert!(!q.reserve(1), "6 reserved + 4 queued + 1 > 10");
        assert_eq!(q.drain().await.close, Some(DisconnectCode::SLOW));
        let q = Outbound::new(10);
        assert!(q.reserve(8));
        q.release(8);
        assert!(q.push(Bytes::from_static(b"1234567890")));
    }

    #[tokio::test]
    async fn close_keeps_what_is_queued() {
        let q = Outbound::new(100);
        q.push(Bytes::from_static(b"a"));
        q.close(DisconnectCode::SHUTDOWN);
        q.close(DisconnectCode::NO_PONG);
        let drained = q.drain().await;
        assert_eq!(drained.items.len(), 1);
        assert_eq!(drained.close, Some(DisconnectCode::SHUTDOWN));
    }
}
