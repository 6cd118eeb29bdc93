//! The task that owns one connection: a plain state machine (connecting → connected → closing)
//! driven by three inputs: client frames, server control messages, and timers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::transport::{Incoming, Transport};
use super::{Control, SessionShared};
use crate::auth::Verifier;
use crate::broker::Broker;
use crate::config::Config;
use crate::limits::TokenBucket;
use crate::protocol::codec::{ping, Format};
use crate::protocol::DisconnectCode;

/// What every session of the node shares.
pub struct SessionContext {
    pub broker: Arc<Broker>,
    pub verifier: Verifier,
    pub config: Arc<Config>,
    pub shutdown: CancellationToken,
    /// One permit per client connection (`client.max_connections`).
    pub connections: Arc<tokio::sync::Semaphore>,
    /// Every session task, so shutdown can wait for their close frames.
    pub sessions: tokio_util::task::TaskTracker,
    /// HTTP-streaming and SSE sessions, where `POST /emulation` finds them.
    pub emulated: Arc<super::emulated::EmulatedSessions>,
}

/// Where the connection is in its life.
pub(crate) enum State {
    /// Waiting for `connect`; closed as stale after `stale_close_delay`.
    Connecting {
        stale_at: Instant,
    },
    Connected(Connected),
}

pub(crate) struct Connected {
    pub user: String,
    /// Unix seconds when the connection's credentials expire.
    pub expires_at: Option<i64>,
    /// At `expires_at` the refresh proxy is asked (no grace), instead of closing the
    /// connection unless the client refreshed it.
    pub refresh_by_proxy: bool,
    pub next_ping_at: Instant,
    /// Set while a ping awaits its pong.
    pub pong_due: Option<Instant>,
}

/// The connection task's own state; only this task touches it.
pub struct Connection {
    pub(crate) ctx: Arc<SessionContext>,
    pub(crate) shared: Arc<SessionShared>,
    pub(crate) state: State,
    /// `client.command_rate_limit`, if set.
    pub(crate) rate: Option<TokenBucket>,
    /// Commands rejected by the rate limit since the last accepted one.
    pub(crate) rejected: u32,
    /// The session id of an emulated transport ([`Transport::emulation_session`]).
    pub(crate) emulation: Option<Arc<str>>,
    /// Pongs are expected: `client.pong_timeout` is set and the transport can answer
    /// ([`Transport::answers_pings`]).
    pub(crate) expects_pongs: bool,
    /// The transport's name and the handshake headers the proxies forward.
    pub(crate) handshake: super::Handshake,
    /// The connect proxy's `meta`: sent on every later proxy call, never to the client.
    pub(crate) meta: Option<Box<serde_json::value::RawValue>>,
}

/// Runs a session over a transport until either side ends it.
///
/// Not an `async fn`: an async fn keeps its arguments in its future for its whole life, and
/// the transport (moved to the writer task) and the handshake (moved into the connection)
/// would then take room twice in every connection's task (idle memory per connection). The
/// writer task is spawned here, when the session is set up.
pub fn run<T, S>(
    ctx: Arc<SessionContext>,
    format: Format,
    transport: T,
    mut incoming: S,
    handshake: super::Handshake,
) -> impl std::future::Future<Output = ()> + Send
where
    T: Transport,
    S: Stream<Item = Incoming> + Unpin + Send,
{
    let shared = SessionShared::new(format, ctx.config.client.max_queue_bytes);
    let emulation = transport.emulation_session();
    let expects_pongs = transport.answers_pings() && !ctx.config.client.pong_timeout.is_zero();
    let mut writer = tokio::spawn(write_loop(shared.clone(), transport));
    let stale_at = Instant::now() + ctx.config.client.stale_close_delay;
    let client = &ctx.config.client;
    let rate = (client.command_rate_limit > 0).then(|| {
        TokenBucket::new(
            client.command_rate_limit,
            client.command_burst,
            std::time::Instant::now(),
        )
    });
    let mut connection = Connection {
        ctx,
        shared,
        state: State::Connecting { stale_at },
        rate,
        rejected: 0,
        emulation,
        expects_pongs,
        handshake,
        meta: None,
    };
    async move {
        // Command handling is boxed inside `serve`: its futures are large (several KB) and
        // live only while a command runs, so an idle connection does not carry them (issue 5:
        // memory per idle connection).
        let code = connection.serve(&mut incoming).await;
        connection
            .shared
            .queue()
            .close(code.unwrap_or(DisconnectCode::CONNECTION_CLOSED));
        connection.cleanup();
        // Let the writer send what is queued and the close frame, but not forever.
        if tokio::time::timeout(Duration::from_secs(2), &mut writer).await.is_err() {
            writer.abort();
        }
    }
}

/// How many scheduling turns a writer waits for more output before writing (see
/// `Outbound::drain_coalesced`).
const WRITE_COALESCE_ROUNDS: usize = 4;

async fn write_loop<T: Transport>(shared: Arc<SessionShared>, mut transport: T) {
    loop {
        let own_output = transport.own_output();
        let drained = tokio::select! {
            biased;
            drained = shared.queue().drain_coalesced(WRITE_COALESCE_ROUNDS) => drained,
            // Whatever is queued goes along, so a client that keeps pinging does not hold
            // back its own data.
            () = own_output => shared.queue().try_take().unwrap_or_default(),
        };
        let bytes: usize = drained.items.iter().map(Bytes::len).sum();
        if let Err(e) = transport.send(&drained.items).await {
            if e.kind() == std::io::ErrorKind::TimedOut {
                // The client takes no bytes (client.write_timeout): slow, as if its queue had
                // overflowed. The close frame cannot get through a full socket either.
                metrics::counter!("herald_slow_disconnects_total").increment(1);
                metrics::counter!("herald_write_timeouts_total").increment(1);
                let code = DisconnectCode::SLOW.code.to_string();
                metrics::counter!("herald_disconnects_total", "code" => code).increment(1);
                shared.queue().close(DisconnectCode::SLOW);
            } else {
                shared.queue().close(DisconnectCode::WRITE_ERROR);
            }
            return;
        }
        metrics::counter!("herald_bytes_out_total").increment(bytes as u64);
        if let Some(code) = drained.close {
            metrics::counter!("herald_disconnects_total", "code" => code.code.to_string()).increment(1);
            // Boxed: the close runs once, and inline its future would take room in every
            // connection's writer task for its whole life (idle memory per connection).
            let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), transport.close(&code))).await;
            return;
        }
    }
}

impl Connection {
    /// Returns the code to close with, or `None` when the client went away or the close was
    /// already decided elsewhere (slow consumer, stream gap).
    async fn serve<S>(&mut self, incoming: &mut S) -> Option<DisconnectCode>
    where
        S: Stream<Item = Incoming> + Unpin + Send,
    {
        let closing = self.shared.queue().closing().clone();
        let shared = self.shared.clone();
        let shutdown = self.ctx.shutdown.clone();
        loop {
            let deadline = self.next_deadline();
            let outcome = tokio::select! {
                biased;
                _ = closing.cancelled() => return None,
                _ = shutdown.cancelled() => {
                    // Spread the closes so a node's clients do not all reconnect at the same instant.
                    let spread = self.ctx.config.client.shutdown_spread;
                    let jitter = spread.mul_f64(rand::random::<f64>());
                    tokio::time::sleep(jitter).await;
                    Err(DisconnectCode::SHUTDOWN)
                }
                controls = shared.next_controls() => Box::pin(self.handle_controls(controls)).await,
                item = incoming.next() => match item {
                    Some(Incoming::Message { data, binary }) => Box::pin(self.handle_message(data, binary)).await,
                    Some(Incoming::Violation(code)) => Err(code),
                    Some(Incoming::Closed) | None => return None,
                },
                _ = tokio::time::sleep_until(deadline) => Box::pin(self.on_timer(Instant::now())).await,
            };
            if let Err(code) = outcome {
                return Some(code);
            }
        }
    }

    /// The earliest moment a timer needs attention.
    fn next_deadline(&self) -> Instant {
        match &self.state {
            State::Connecting { stale_at } => *stale_at,
            State::Connected(c) => {
                let mut at = c.pong_due.map_or(c.next_ping_at, |due| due.min(c.next_ping_at));
                let grace = match c.refresh_by_proxy {
                    true => Duration::ZERO,
                    false => self.ctx.config.client.expired_close_delay,
                };
                if let Some(exp) = c.expires_at {
                    at = at.min(instant_of(exp) + grace);
                }
                if let Some(exp) = self.earliest_subscription_expiry() {
                    at = at.min(instant_of(exp));
                }
                at
            }
        }
    }

    async fn on_timer(&mut self, now: Instant) -> Result<(), DisconnectCode> {
        let client = &self.ctx.config.client;
        let mut refresh = false;
        match &mut self.state {
            State::Connecting { stale_at } => {
                if now >= *stale_at {
                    return Err(DisconnectCode::STALE);
                }
            }
            State::Connected(c) => {
                if c.pong_due.is_some_and(|due| now >= due) {
                    return Err(DisconnectCode::NO_PONG);
                }
                if now >= c.next_ping_at {
                    self.shared.queue().push(ping(self.shared.format));
                    c.next_ping_at = now + client.ping_interval;
                    if self.expects_pongs {
                        c.pong_due = Some(now + client.pong_timeout);
                    }
                }
                if c.refresh_by_proxy {
                    refresh = c.expires_at.is_some_and(|exp| now >= instant_of(exp));
                } else if c
                    .expires_at
                    .is_some_and(|exp| now >= instant_of(exp) + client.expired_close_delay)
                {
                    return Err(DisconnectCode::EXPIRED);
                }
            }
        }
        if refresh {
            self.refresh_by_proxy().await?;
        }
        self.expire_subscriptions().await
    }

    async fn handle_controls(&mut self, controls: Vec<Control>) -> Result<(), DisconnectCode> {
        for control in controls {
            self.handle_control(control).await?;
        }
        Ok(())
    }

    async fn handle_control(&mut self, control: Control) -> Result<(), DisconnectCode> {
        match control {
            Control::Disconnect(code) => Err(code),
            Control::Unsubscribe { channel, code } => {
                self.unsubscribe_with_push(&channel, code);
                Ok(())
            }
            Control::Gap { channel, subscription } => {
                self.unsubscribe_after_gap(&channel, &subscription);
                Ok(())
            }
            Control::Subscribe { channel, options } => {
                let options = options.map(|o| *o).unwrap_or_default();
                self.server_subscribe(&channel, options).await
            }
            Control::Refresh {
                expired,
                expire_at,
                info,
            } => {
                if expired {
                    return Err(DisconnectCode::EXPIRED);
                }
                if !info.is_empty() {
                    self.shared.set_info(info);
                }
                if let State::Connected(c) = &mut self.state {
                    c.expires_at = expire_at;
                }
                Ok(())
            }
        }
    }

    /// Leaves every channel and the registry. Presence and join/leave stay truthful: nothing of
    /// a closed connection remains.
    fn cleanup(&mut self) {
        let broker = &self.ctx.broker;
        let channels: Vec<_> = self.shared.subs.lock().drain().map(|(channel, _)| channel).collect();
        for channel in &channels {
            broker.leave(channel, &self.shared.id);
        }
        metrics::gauge!("herald_subscriptions").decrement(channels.len() as f64);
        if let State::Connected(c) = &self.state {
            broker.sessions().remove(&c.user, &self.shared.id);
        }
    }

    pub(crate) fn user(&self) -> &str {
        match &self.state {
            State::Connected(c) => &c.user,
            State::Connecting { .. } => "",
        }
    }
}

/// The `Instant` of a Unix time in seconds (in the past if it has passed).
///
/// Token claims choose `unix_seconds`, so any `i64` arrives here: the arithmetic saturates
/// (a signed `expire_at` of i64::MIN overflowed it, through the token fuzz target).
pub(crate) fn instant_of(unix_seconds: i64) -> Instant {
    instant_at(unix_seconds, crate::store::now_ms(), Instant::now())
}

/// The longest a connection or subscription may be scheduled ahead: any later expiry is as good
/// as never, and `Instant` arithmetic beyond it could overflow.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// [`instant_of`] with the clocks given. Client-supplied times (a token's `expire_at`, an API
/// `refresh`) may be anywhere in i64: saturating arithmetic, so that a time near i64::MIN is "long
/// ago" (expired, never "in the far future" by wrapping) and one near i64::MAX is "far ahead".
fn instant_at(unix_seconds: i64, now_ms: i64, now: Instant) -> Instant {
    let delta_ms = unix_seconds.saturating_mul(1000).saturating_sub(now_ms);
    let delta = Duration::from_millis(delta_ms.unsigned_abs()).min(FAR_FUTURE);
    if delta_ms <= 0 {
        now.checked_sub(delta).unwrap_or(now)
    } else {
        now + delta
    }
}

/// Seconds from now until a Unix time, at least 1 (the protocol's `ttl`).
pub(crate) fn ttl_of(unix_seconds: i64) -> u32 {
    let left = unix_seconds.saturating_sub(crate::store::now_ms() / 1000);
    left.clamp(1, u32::MAX as i64) as u32
}

/// Builds `ConnectResult.subs` and similar maps.
pub(crate) type SubResults = HashMap<String, crate::protocol::proto::SubscribeResult>;

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn client_supplied_times_saturate() {
        let now = Instant::now();
        let now_ms = 1_700_000_000_000;
        // Long ago, however far: due now (or earlier), never wrapped into the future.
        for t in [i64::MIN, i64::MIN + 1, -1, 0, 1_600_000_000] {
            assert!(instant_at(t, now_ms, now) <= now, "{t}");
        }
        // Ahead: capped, never an overflow.
        assert_eq!(instant_at(i64::MAX, now_ms, now), now + FAR_FUTURE);
        assert_eq!(instant_at(1_700_000_060, now_ms, now), now + Duration::from_secs(60));
        // An expiry's grace is added without overflow.
        let _ = instant_at(i64::MAX, now_ms, now) + Duration::from_secs(3600);
        assert_eq!(ttl_of(i64::MIN), 1);
        assert_eq!(ttl_of(i64::MAX), u32::MAX);
    }
}
