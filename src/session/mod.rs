//! One client connection.
//!
//! - [`SessionShared`]: the part other tasks may touch: the bounded outbound [`queue`], the
//!   subscription table the hub consults on delivery, and a control channel for server-initiated
//!   actions (API disconnect/unsubscribe/subscribe/refresh).
//! - [`connection`]: the task that owns the connection: reads and dispatches commands, runs
//!   timers (stale, ping/pong, token expiry), and cleans up.
//! - [`transport`]: the small trait WebSocket (and later SSE) implement.

pub mod commands;
pub mod connection;
pub mod emulated;
mod proxied;
pub mod queue;
pub mod subscribe;
pub mod transport;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::hub::filter::TagsFilter;
use crate::hub::{Deliver, Prepared, PushKind};
use crate::protocol::codec::{encode_reply, Format};
use crate::protocol::proto::Reply;
use crate::protocol::{DisconnectCode, UnsubscribeCode};
use queue::Outbound;

pub use connection::{run, SessionContext};

/// Server-initiated actions, handled by the connection's task.
#[derive(Debug)]
pub enum Control {
    Disconnect(DisconnectCode),
    Unsubscribe {
        channel: Arc<str>,
        code: UnsubscribeCode,
    },
    /// A gap broke this very subscription: unsubscribe it (2500) unless the client has since
    /// replaced it with a new subscription to the same channel, which must be left alone.
    Gap {
        channel: Arc<str>,
        subscription: SubscriptionHandle,
    },
    /// Server-side subscribe (API `subscribe`), with its options when it has some.
    Subscribe {
        channel: String,
        options: Option<Box<SubscribeOptions>>,
    },
    /// API `refresh`: new expiry (None = never) or expired now, and new connection info
    /// (empty: unchanged).
    Refresh {
        expired: bool,
        expire_at: Option<i64>,
        info: Bytes,
    },
}

/// What a session keeps of the request that opened it (for the proxies: docs/proxies.md).
#[derive(Debug, Default)]
pub struct Handshake {
    /// `websocket`, `http_stream`, `sse`, `uni_websocket`, `uni_http_stream` or `uni_sse`.
    pub transport: &'static str,
    /// The request's headers that some proxy forwards; none without proxies. Boxed, and only
    /// when there are any: every connection keeps its handshake for its whole life, and its
    /// task carries it in more than one place (idle memory per connection).
    headers: Option<Box<hyper::HeaderMap>>,
}

impl Handshake {
    pub fn new(transport: &'static str, headers: hyper::HeaderMap) -> Self {
        Self {
            transport,
            headers: (!headers.is_empty()).then(|| Box::new(headers)),
        }
    }

    /// The headers kept (see [`Handshake::headers_of`]).
    pub fn headers(&self) -> &hyper::HeaderMap {
        static NONE: std::sync::LazyLock<hyper::HeaderMap> = std::sync::LazyLock::new(hyper::HeaderMap::new);
        self.headers.as_deref().unwrap_or(&NONE)
    }

    pub fn headers_mut(&mut self) -> &mut hyper::HeaderMap {
        self.headers.get_or_insert_with(Default::default)
    }

    /// The headers of a handshake request worth keeping: those some proxy forwards.
    pub fn headers_of(ctx: &SessionContext, headers: &hyper::HeaderMap) -> hyper::HeaderMap {
        match ctx.broker.proxies() {
            Some(proxies) => proxies.capture(headers),
            None => hyper::HeaderMap::new(),
        }
    }
}

/// A server-side subscription's options (API `subscribe`).
#[derive(Debug, Default, Clone)]
pub struct SubscribeOptions {
    /// The subscriber's channel info (presence, join/leave, its publications).
    pub info: Bytes,
    /// Sent to the client in the `subscribe` push.
    pub data: Bytes,
    /// Unix seconds; at it the connection is closed with 3006 (a server-side subscription
    /// cannot be renewed by the client).
    pub expire_at: Option<i64>,
    /// `(epoch, offset)` to recover from: the missed publications follow the `subscribe` push.
    pub recover_since: Option<(String, u64)>,
    pub overrides: Option<crate::proxy::messages::Overrides>,
}

/// Names one subscription (not just its channel) in a [`Control`].
#[derive(Clone)]
pub struct SubscriptionHandle(pub(crate) Arc<Mutex<Subscription>>);

impl std::fmt::Debug for SubscriptionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubscriptionHandle({:p})", Arc::as_ptr(&self.0))
    }
}

/// Who a connected session is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    pub info: Bytes,
}

/// The shared half of a session.
pub struct SessionShared {
    pub id: Arc<str>,
    pub format: Format,
    /// Set at connect; its `info` may change on refresh.
    identity: Mutex<Option<Identity>>,
    queue: Outbound,
    /// The session's subscriptions. Each has its own lock, shared with the hub's [`Subscriber`]
    /// handle, so delivery goes straight to it without looking the channel up.
    subs: Mutex<HashMap<Arc<str>, Arc<Mutex<Subscription>>>>,
    /// Server-initiated actions waiting for the connection task, which `control_ready` wakes.
    /// Rare, so a plain vector: a channel would allocate a block per connection.
    controls: Mutex<Vec<Control>>,
    control_ready: Notify,
}

/// One channel subscription of a session, as the hub's delivery sees it.
pub(crate) struct Subscription {
    pub phase: Phase,
    /// Publications must arrive in offset order without gaps.
    pub positioned: bool,
    pub epoch: Arc<str>,
    /// Offset of the last publication sent (or the position the client holds).
    pub offset: u64,
    /// Receives join/leave pushes.
    pub join_leave: bool,
    /// Made by the server (token `channels`, personal channel, API): a gap is a disconnect.
    pub server_side: bool,
    /// Unix seconds when the subscription token expires, if it does.
    pub expires_at: Option<i64>,
    /// At `expires_at` the sub_refresh proxy is asked, instead of ending the subscription.
    pub refresh_by_proxy: bool,
    /// Only publications whose tags pass are sent. Those that do not still move `offset` on:
    /// they are part of the stream the client holds a position in, not a gap.
    pub tags_filter: Option<Arc<TagsFilter>>,
    /// Fossil delta negotiated (positioned subscriptions only).
    pub delta: DeltaState,
}

/// A subscription's delta compression.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DeltaState {
    /// Negotiated: publications go out as deltas when they can, and in JSON with `data` as a
    /// string.
    pub on: bool,
    /// The client holds the data of the publication at `offset` (it was sent in this
    /// subscription), so the next one may be a delta against it.
    pub holds_offset: bool,
}

pub(crate) enum Phase {
    /// The subscribe reply is not queued yet: pushes wait here, in order, their bytes held in
    /// the queue's budget ([`queue::Outbound::reserve`]) so that a flood during a slow setup is
    /// a slow client (3008), not unbounded memory.
    Subscribing(Buffered),
    Active,
    /// A gap was seen; the connection task is unsubscribing it.
    Broken,
}

/// Pushes buffered while subscribing, and the queue budget they hold.
#[derive(Default)]
pub(crate) struct Buffered {
    pub pushes: Vec<Arc<Prepared>>,
    pub bytes: usize,
}

enum Admit {
    Send,
    Skip,
    Gap,
}

impl Subscription {
    /// What to do with a push: send it, skip it (already sent, not wanted, or filtered out) or
    /// end the subscription (a gap). Publications move the position on even when filtered out.
    fn admit(&mut self, push: &Prepared) -> Admit {
        match self.admit_position(push) {
            Admit::Send if !wants(&self.tags_filter, push) => Admit::Skip,
            admit => admit,
        }
    }

    fn admit_position(&mut self, push: &Prepared) -> Admit {
        match &push.kind {
            PushKind::JoinLeave if self.join_leave => Admit::Send,
            PushKind::JoinLeave => Admit::Skip,
            PushKind::Publication { offset: 0, .. } => Admit::Send,
            PushKind::Publication { .. } if !self.positioned => Admit::Send,
            // Positioned on a stream that did not exist (empty epoch, offset 0): its first
            // publication creates it, and names the epoch that follows.
            PushKind::Publication { epoch, offset: 1 } if self.epoch.is_empty() && self.offset == 0 => {
                self.epoch = epoch.clone();
                self.offset = 1;
                Admit::Send
            }
            PushKind::Publication { epoch, offset } => {
                if **epoch != *self.epoch {
                    Admit::Gap
                } else if *offset <= self.offset {
                    // Already sent (recovered, or buffered while subscribing).
                    Admit::Skip
                } else if *offset != self.offset + 1 {
                    Admit::Gap
                } else {
                    self.offset = *offset;
                    Admit::Send
                }
            }
        }
    }
}

/// Whether a subscription with `filter` (if any) gets `push`.
fn wants(filter: &Option<Arc<TagsFilter>>, push: &Prepared) -> bool {
    filter.as_ref().is_none_or(|filter| push.passes(filter))
}

impl SessionShared {
    pub fn new(format: Format, max_queue_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            id: Arc::from(uuid::Uuid::new_v4().to_string()),
            format,
            identity: Mutex::new(None),
            queue: Outbound::new(max_queue_bytes),
            subs: Mutex::new(HashMap::new()),
            controls: Mutex::new(Vec::new()),
            control_ready: Notify::new(),
        })
    }

    /// Marks the session subscribed to `channel` (active, unpositioned) without the connection
    /// task: for benchmarks and tests of the hub, which need sessions but no sockets.
    #[doc(hidden)]
    pub fn subscribe_detached(self: &Arc<Self>, channel: &str) -> Subscriber {
        let subscription = Subscription {
            phase: Phase::Active,
            positioned: false,
            epoch: Arc::from(""),
            offset: 0,
            join_leave: false,
            server_side: false,
            expires_at: None,
            refresh_by_proxy: false,
            tags_filter: None,
            delta: Default::default(),
        };
        self.register(&mut self.subs.lock(), Arc::from(channel), subscription)
    }

    /// Adds a subscription to the session's table (`subs`, locked by the caller) and returns the
    /// handle the hub delivers through.
    pub(crate) fn register(
        self: &Arc<Self>,
        subs: &mut HashMap<Arc<str>, Arc<Mutex<Subscription>>>,
        channel: Arc<str>,
        subscription: Subscription,
    ) -> Subscriber {
        let subscription = Arc::new(Mutex::new(subscription));
        subs.insert(channel.clone(), subscription.clone());
        Subscriber {
            session: self.clone(),
            channel,
            subscription,
        }
    }

    /// The user, once connected.
    pub fn identity(&self) -> Option<Identity> {
        self.identity.lock().clone()
    }

    pub(crate) fn set_identity(&self, identity: Identity) {
        *self.identity.lock() = Some(identity);
    }

    /// A refresh's new connection info, for what the client does from now on (publications,
    /// joins, presence of later subscriptions).
    pub(crate) fn set_info(&self, info: Bytes) {
        if let Some(identity) = self.identity.lock().as_mut() {
            identity.info = info;
        }
    }

    pub fn queue(&self) -> &Outbound {
        &self.queue
    }

    /// Sends a server-initiated action to the connection's task. Never blocks.
    pub fn control(&self, control: Control) {
        self.controls.lock().push(control);
        self.control_ready.notify_one();
    }

    /// Queues a reply for the client.
    pub fn send_reply(&self, reply: &Reply) {
        self.queue.push(encode_reply(self.format, reply));
    }

    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.subs
            .lock()
            .get(channel)
            .is_some_and(|s| !matches!(s.lock().phase, Phase::Broken))
    }

    /// Whether `subscription` is (still) the session's subscription to `channel`.
    pub(crate) fn holds(&self, channel: &str, subscription: &SubscriptionHandle) -> bool {
        self.subs
            .lock()
            .get(channel)
            .is_some_and(|current| Arc::ptr_eq(current, &subscription.0))
    }

    pub fn subscribed_channels(&self) -> Vec<Arc<str>> {
        self.subs.lock().keys().cloned().collect()
    }
}

/// One subscription of one session, as the hub holds it: delivering to it takes its own lock
/// and nothing else of the session (no lookup by channel name on the fan-out path).
pub struct Subscriber {
    session: Arc<SessionShared>,
    channel: Arc<str>,
    subscription: Arc<Mutex<Subscription>>,
}

impl Subscriber {
    pub fn session(&self) -> &Arc<SessionShared> {
        &self.session
    }
}

impl Deliver for Subscriber {
    fn client(&self) -> &Arc<str> {
        &self.session.id
    }

    /// Called by the hub for every push to the channel. Never blocks.
    fn deliver(&self, push: &Arc<Prepared>) -> bool {
        let mut guard = self.subscription.lock();
        let sub = &mut *guard;
        match &mut sub.phase {
            Phase::Subscribing(buffer) => {
                // A publication the tags filter drops will not be sent, but a positioned
                // subscription needs it all the same, for its offset; it keeps its place in
                // the budget, as it keeps the push alive.
                let wanted = wants(&sub.tags_filter, push);
                if !sub.positioned && !wanted {
                    return false;
                }
                let size = push.bytes(self.session.format).len();
                // Over budget, the queue marks the client slow and the connection ends.
                if self.session.queue.reserve(size) {
                    buffer.bytes += size;
                    buffer.pushes.push(push.clone());
                }
                wanted
            }
            Phase::Broken => false,
            Phase::Active => self.session.deliver_to(&self.channel, sub, &self.subscription, push),
        }
    }
}

impl SessionShared {
    /// Waits until server-initiated actions are pending and takes them, in order.
    pub(crate) async fn next_controls(&self) -> Vec<Control> {
        loop {
            let pending = std::mem::take(&mut *self.controls.lock());
            if !pending.is_empty() {
                return pending;
            }
            // notify_one stores a permit when nobody waits: a push between the check and the
            // await is not lost.
            self.control_ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::proto::Publication;

    fn publication(offset: u64, size: usize) -> Arc<Prepared> {
        let data = Bytes::from(format!("\"{}\"", "x".repeat(size)));
        Prepared::publication(
            "ch",
            Arc::from("e"),
            Publication {
                offset,
                data,
                ..Default::default()
            },
        )
    }

    fn tagged(offset: u64, team: &str) -> Arc<Prepared> {
        Prepared::publication(
            "ch",
            Arc::from("e"),
            Publication {
                offset,
                data: Bytes::from_static(b"{}"),
                tags: [("team".to_owned(), team.to_owned())].into(),
                ..Default::default()
            },
        )
    }

    fn team_filter(team: &str) -> Option<Arc<TagsFilter>> {
        let tree = crate::protocol::proto::FilterNode {
            key: "team".into(),
            cmp: "eq".into(),
            val: team.into(),
            ..Default::default()
        };
        Some(TagsFilter::intern(&tree).unwrap())
    }

    /// The offsets of the publications queued for the client.
    fn queued_offsets(session: &SessionShared) -> Vec<u64> {
        let items = session.queue.try_take().map(|d| d.items).unwrap_or_default();
        items
            .iter()
            .map(|bytes| {
                let reply: Reply = serde_json::from_slice(bytes).unwrap();
                reply.push.unwrap().r#pub.unwrap().offset
            })
            .collect()
    }

    /// A positioned subscription with a tags filter is sent only what passes, yet its offset
    /// moves past every publication: what the filter drops is not a gap.
    #[tokio::test]
    async fn filtered_out_publications_move_the_position_on() {
        let session = SessionShared::new(Format::Json, 1 << 20);
        let subscriber = session.register(
            &mut session.subs.lock(),
            Arc::from("ch"),
            Subscription {
                phase: Phase::Active,
                positioned: true,
                epoch: Arc::from("e"),
                offset: 1,
                join_leave: false,
                server_side: false,
                expires_at: None,
                refresh_by_proxy: false,
                tags_filter: team_filter("eng"),
                delta: Default::default(),
            },
        );
        for (offset, team) in [(2, "ops"), (3, "eng"), (4, "ops"), (5, "ops"), (6, "eng")] {
            subscriber.deliver(&tagged(offset, team));
        }
        assert_eq!(queued_offsets(&session), vec![3, 6]);
        let sub = subscriber.subscription.lock();
        assert!(matches!(sub.phase, Phase::Active), "no gap");
        assert_eq!(sub.offset, 6);
        assert!(session.controls.lock().is_empty());
    }

    /// While subscribing, a positioned subscription keeps what its filter drops (for the
    /// offsets); an unpositioned one does not keep it at all.
    #[test]
    fn filtered_out_pushes_are_buffered_only_for_a_position() {
        let session = SessionShared::new(Format::Json, 1 << 20);
        let subscribing = |positioned| Subscription {
            phase: Phase::Subscribing(Buffered::default()),
            positioned,
            epoch: Arc::from(""),
            offset: 0,
            join_leave: false,
            server_side: false,
            expires_at: None,
            refresh_by_proxy: false,
            tags_filter: team_filter("eng"),
            delta: Default::default(),
        };
        let positioned = session.register(&mut session.subs.lock(), Arc::from("a"), subscribing(true));
        let unpositioned = session.register(&mut session.subs.lock(), Arc::from("b"), subscribing(false));
        for subscriber in [&positioned, &unpositioned] {
            subscriber.deliver(&tagged(1, "ops"));
            subscriber.deliver(&tagged(2, "eng"));
        }
        let buffered = |subscriber: &Subscriber| match &subscriber.subscription.lock().phase {
            Phase::Subscribing(buffer) => buffer.pushes.len(),
            _ => unreachable!(),
        };
        assert_eq!(buffered(&positioned), 2);
        assert_eq!(buffered(&unpositioned), 1);
    }

    /// A gap names the subscription that saw it: a new subscription to the same channel (an
    /// unsubscribe and a subscribe in the frame being handled) is not the one to end.
    #[tokio::test]
    async fn a_gap_names_its_own_subscription() {
        let session = SessionShared::new(Format::Json, 1 << 20);
        let positioned = || Subscription {
            phase: Phase::Active,
            positioned: true,
            epoch: Arc::from("e"),
            offset: 1,
            join_leave: false,
            server_side: false,
            expires_at: None,
            refresh_by_proxy: false,
            tags_filter: None,
            delta: Default::default(),
        };
        let old = session.register(&mut session.subs.lock(), Arc::from("ch"), positioned());
        old.deliver(&publication(3, 1));
        let controls = session.next_controls().await;
        let [Control::Gap { channel, subscription }] = &controls[..] else {
            panic!("{controls:?}");
        };
        assert_eq!(&**channel, "ch");
        assert!(session.holds("ch", subscription));
        // The client resubscribes before the control is handled.
        session.subs.lock().remove("ch");
        let new = session.register(&mut session.subs.lock(), Arc::from("ch"), positioned());
        assert!(
            !session.holds("ch", subscription),
            "the gap would end the new subscription"
        );
        assert!(session.holds("ch", &SubscriptionHandle(new.subscription.clone())));
    }

    /// A subscription still being set up buffers pushes within the queue's byte budget: a flood
    /// during a slow setup makes the client slow (3008) instead of growing without bound.
    #[tokio::test]
    async fn pushes_buffered_while_subscribing_count_against_the_queue() {
        let session = SessionShared::new(Format::Json, 10_000);
        let subscriber = session.register(
            &mut session.subs.lock(),
            Arc::from("ch"),
            Subscription {
                phase: Phase::Subscribing(Buffered::default()),
                positioned: false,
                epoch: Arc::from(""),
                offset: 0,
                join_leave: false,
                server_side: false,
                expires_at: None,
                refresh_by_proxy: false,
                tags_filter: None,
                delta: Default::default(),
            },
        );
        for offset in 1..=8 {
            subscriber.deliver(&publication(offset, 1_000));
        }
        assert!(!session.queue.closing().is_cancelled(), "8 KB buffered within 10 KB");
        for offset in 9..=12 {
            subscriber.deliver(&publication(offset, 1_000));
        }
        assert!(session.queue.closing().is_cancelled());
        assert_eq!(session.queue.drain().await.close, Some(DisconnectCode::SLOW));
        let Phase::Subscribing(buffer) = &subscriber.subscription.lock().phase else {
            panic!("still subscribing");
        };
        assert!(buffer.bytes <= 10_000 && buffer.pushes.len() < 12);
    }
}
