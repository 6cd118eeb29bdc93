//! The local hub: which sessions of this node are subscribed to which channel, and fan-out to
//! them.
//!
//! Sharded by channel name. A push is encoded at most once per format ([`Prepared`]) and the
//! same `Bytes` go to every session. Delivery never blocks: it hands the push to the session,
//! which queues it or, when the client is too slow, closes itself (3008). Delivery happens under
//! the channel's shard lock so every subscriber sees one order; no lock is held across `.await`.
//! The last unsubscribe removes the channel's entry.
//!
//! A subscription may hold a tags filter ([`filter`]). A publication is judged once per distinct
//! filter, not once per subscriber: the verdicts are kept in the [`Prepared`] that every
//! subscriber of the channel shares ([`Prepared::passes`]). Subscriptions without a filter never
//! look at them.
//!
//! Delta compression (fossil): a publication its publisher marked for it (`Publication.delta`)
//! is encoded as a delta against the channel's previous publication at most once, whoever the
//! subscribers are ([`Prepared::delta_bytes`]); the hub keeps that previous publication's data
//! per channel while such publications flow ([`Hub::broadcast`]). Each subscriber that negotiated
//! deltas gets the delta when it holds the previous publication and the delta is smaller, else
//! the full data.
//!
//! The hub reports a channel's first local subscriber and the loss of its last one
//! ([`Interest`]), under the shard lock, so per channel the reports come in the order the
//! changes happened. It knows subscriptions only through [`Deliver`]: it does not import the
//! session.

pub mod filter;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::protocol::codec::{encode_reply, Format};
use crate::protocol::proto::{ClientInfo, Join, Leave, Publication, Push, Reply};
use filter::TagsFilter;

const SHARDS: usize = 64;

/// Most tags-filter verdicts a [`Prepared`] keeps. A channel whose subscribers hold more distinct
/// filters than this has the rest evaluated per subscriber: past a few dozen entries, scanning
/// the list costs about what evaluating a bounded filter does.
const MAX_VERDICTS: usize = 32;

/// What a push is, which decides how a session filters it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushKind {
    /// A publication; `offset` is 0 for channels without history.
    Publication { epoch: Arc<str>, offset: u64 },
    /// Join or leave: only for subscribers that want them.
    JoinLeave,
}

/// A push to a channel's subscribers, encoded lazily once per format.
pub struct Prepared {
    pub kind: PushKind,
    reply: Reply,
    json: OnceLock<Bytes>,
    protobuf: OnceLock<Bytes>,
    /// Tags-filter verdicts on this publication, by filter id. Empty (and unallocated) unless a
    /// filtered subscriber asked. Uncontended: the hub delivers a push under its shard lock, and
    /// only a subscription finishing its setup replays one beside it.
    verdicts: Mutex<Vec<(u64, bool)>>,
    /// JSON for subscribers that negotiated deltas, when the full data goes: `data` as a JSON
    /// string, as the SDKs expect it while delta is on.
    json_full_as_string: OnceLock<Bytes>,
    /// For a publication marked for delta delivery.
    delta: Option<Box<DeltaParts>>,
}

/// The delta encodings of one publication, each made on first use.
#[derive(Default)]
struct DeltaParts {
    /// The data of the channel's previous publication (offset - 1), as the hub saw it; `None`
    /// when the hub did not see it.
    previous: OnceLock<Option<Bytes>>,
    /// The fossil delta from the previous data, when smaller than the data.
    delta: OnceLock<Option<Bytes>>,
    json: OnceLock<Option<Bytes>>,
    protobuf: OnceLock<Option<Bytes>>,
}

impl Prepared {
    fn new(kind: PushKind, push: Push) -> Arc<Self> {
        Arc::new(Self {
            kind,
            reply: Reply {
                push: Some(push),
                ..Default::default()
            },
            json: OnceLock::new(),
            protobuf: OnceLock::new(),
            verdicts: Mutex::new(Vec::new()),
            json_full_as_string: OnceLock::new(),
            delta: None,
        })
    }

    /// A publication prepared with its delta parts when its publisher marked it.
    fn new_publication(kind: PushKind, push: Push) -> Arc<Self> {
        let marked = push.r#pub.as_ref().is_some_and(|p| p.delta);
        let mut prepared = Self::new(kind, push);
        if marked {
            Arc::get_mut(&mut prepared).expect("just made").delta = Some(Box::default());
        }
        prepared
    }

    pub fn publication(channel: &str, epoch: Arc<str>, publication: Publication) -> Arc<Self> {
        let offset = publication.offset;
        Self::new_publication(
            PushKind::Publication { epoch, offset },
            Push {
                channel: channel.to_owned(),
                r#pub: Some(publication),
                ..Default::default()
            },
        )
    }

    pub fn join(channel: &str, info: ClientInfo) -> Arc<Self> {
        Self::new(
            PushKind::JoinLeave,
            Push {
                channel: channel.to_owned(),
                join: Some(Join { info: Some(info) }),
                ..Default::default()
            },
        )
    }

    pub fn leave(channel: &str, info: ClientInfo) -> Arc<Self> {
        Self::new(
            PushKind::JoinLeave,
            Push {
                channel: channel.to_owned(),
                leave: Some(Leave { info: Some(info) }),
                ..Default::default()
            },
        )
    }

    /// A push received from a peer node, as it was prepared there.
    pub fn from_push(push: Push, epoch: Arc<str>) -> Arc<Self> {
        let kind = match &push.r#pub {
            Some(publication) => PushKind::Publication {
                epoch,
                offset: publication.offset,
            },
            None => PushKind::JoinLeave,
        };
        Self::new_publication(kind, push)
    }

    /// The push itself (what a peer node is sent).
    pub fn push(&self) -> &Push {
        self.reply.push.as_ref().expect("a prepared push holds a push")
    }

    /// The stream epoch of a publication of a channel with history; empty otherwise.
    pub fn epoch(&self) -> &str {
        match &self.kind {
            PushKind::Publication { epoch, .. } => epoch,
            PushKind::JoinLeave => "",
        }
    }

    /// The encoded push in `format`, encoded on first use.
    pub fn bytes(&self, format: Format) -> &Bytes {
        let cell = match format {
            Format::Json => &self.json,
            Format::Protobuf => &self.protobuf,
        };
        cell.get_or_init(|| match &self.delta {
            // The mark travels with the push (to peers too) but is not the wire's `delta`,
            // which says "this data is a delta".
            Some(_) => self.encode_publication(format, None, false),
            None => encode_reply(format, &self.reply),
        })
    }

    /// The publication carried, if this is one (used to replay buffered pushes in order).
    pub fn publication_ref(&self) -> Option<&Publication> {
        self.reply.push.as_ref().and_then(|p| p.r#pub.as_ref())
    }

    /// Whether a subscriber with `filter` gets this push. Only publications are filtered (join
    /// and leave always pass). Each distinct filter is evaluated once per publication; the
    /// subscribers after the first read its verdict.
    pub fn passes(&self, filter: &TagsFilter) -> bool {
        let Some(publication) = self.publication_ref() else {
            return true;
        };
        let mut verdicts = self.verdicts.lock();
        if let Some(&(_, verdict)) = verdicts.iter().find(|(id, _)| *id == filter.id()) {
            return verdict;
        }
        let verdict = filter.matches(&publication.tags);
        if verdicts.len() < MAX_VERDICTS {
            verdicts.push((filter.id(), verdict));
        }
        verdict
    }
}

/// One local subscription as the hub sees it: where a channel's pushes go. A session's
/// subscription implements it (`session::Subscriber`); tests use recording ones.
pub trait Deliver: Send + Sync + 'static {
    /// The client the subscription belongs to: a channel has one subscription per client.
    fn client(&self) -> &Arc<str>;
    /// Takes one push of the channel, in the channel's order. Must never block or wait: queue
    /// it, or give up on the client (3008), and return. Whether it goes to the client (`false`:
    /// skipped, such as filtered out by a tags filter), for `herald_publications_out_total`.
    fn deliver(&self, push: &Arc<Prepared>) -> bool;
}

/// A change of this node's interest in a channel: its first local subscriber (0→1) or the
/// loss of its last (1→0). Peers hear of these transitions only, never of each subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Gained,
    Lost,
}

struct Member {
    subscriber: Box<dyn Deliver>,
    info: ClientInfo,
    visibility: Visibility,
}

/// How a subscription shows to the channel's other subscribers: in presence, and by join and
/// leave messages. The namespace's options, or a subscription's overrides (subscribe proxy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visibility {
    pub presence: bool,
    /// Its join was announced, so its leave is too.
    pub join_leave: bool,
}

impl Default for Visibility {
    fn default() -> Self {
        Self {
            presence: true,
            join_leave: true,
        }
    }
}

#[derive(Default)]
struct Shard {
    /// Channel → client id → member.
    channels: HashMap<Arc<str>, HashMap<Arc<str>, Member>>,
    /// Channel → the position and data of its last publication, kept for channels with local
    /// subscribers once a publication marked for delta delivery went through (the next one's
    /// delta is made against it).
    last: HashMap<Arc<str>, (Arc<str>, u64, Bytes)>,
}

/// Records `push` as the channel's last publication, and tells it the data of the one before
/// when that is its predecessor in the same stream.
fn remember_last(
    last: &mut HashMap<Arc<str>, (Arc<str>, u64, Bytes)>,
    channel: &str,
    epoch: &Arc<str>,
    offset: u64,
    push: &Prepared,
) {
    let data = push.publication_ref().map(|p| p.data.clone()).unwrap_or_default();
    let current = (epoch.clone(), offset, data);
    let previous = match last.get_mut(channel) {
        Some(slot) => Some(std::mem::replace(slot, current)),
        None => {
            last.insert(Arc::from(channel), current);
            None
        }
    };
    let previous = previous.filter(|(e, o, _)| e == epoch && o + 1 == offset);
    push.set_previous(previous.map(|(_, _, data)| data));
}

/// The node's index of local subscriptions.
pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
        }
    }
}

impl Hub {
    fn shard(&self, channel: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    /// Adds a subscription to a channel. When it is the channel's first local one,
    /// `on_interest(Gained)` runs under the shard lock (it must not block or call the hub).
    pub fn subscribe(
        &self,
        channel: &str,
        subscriber: impl Deliver,
        info: ClientInfo,
        on_interest: impl FnOnce(Interest),
    ) {
        self.subscribe_with(channel, subscriber, info, Visibility::default(), on_interest)
    }

    /// [`Hub::subscribe`] with how the subscription shows to others.
    pub fn subscribe_with(
        &self,
        channel: &str,
        subscriber: impl Deliver,
        info: ClientInfo,
        visibility: Visibility,
        on_interest: impl FnOnce(Interest),
    ) {
        let mut shard = self.shard(channel).lock();
        let first = !shard.channels.contains_key(channel);
        let members = shard.channels.entry(Arc::from(channel)).or_default();
        let client = subscriber.client().clone();
        members.insert(
            client,
            Member {
                subscriber: Box::new(subscriber),
                info,
                visibility,
            },
        );
        if first {
            on_interest(Interest::Gained);
        }
    }

    /// Removes a client's subscription to a channel. Returns its presence info and visibility if
    /// it was subscribed. When it was the channel's last local one, `on_interest(Lost)` runs
    /// under the shard lock (it must not block or call the hub).
    pub fn unsubscribe(
        &self,
        channel: &str,
        client: &str,
        on_interest: impl FnOnce(Interest),
    ) -> Option<(ClientInfo, Visibility)> {
        let mut shard = self.shard(channel).lock();
        let subscribers = shard.channels.get_mut(channel)?;
        let removed = subscribers.remove(client).map(|s| (s.info, s.visibility));
        if subscribers.is_empty() {
            shard.channels.remove(channel);
            shard.last.remove(channel);
            on_interest(Interest::Lost);
        }
        removed
    }

    /// Hands a push to every local subscriber of the channel. Returns how many got it.
    pub fn broadcast(&self, channel: &str, push: &Arc<Prepared>) -> usize {
        let mut guard = self.shard(channel).lock();
        let shard = &mut *guard;
        let Some(members) = shard.channels.get(channel) else {
            return 0;
        };
        if let PushKind::Publication { epoch, offset } = &push.kind {
            if *offset > 0 && (push.delta_marked() || shard.last.contains_key(channel)) {
                remember_last(&mut shard.last, channel, epoch, *offset, push);
            }
        }
        let mut sent = 0u64;
        for member in members.values() {
            sent += u64::from(member.subscriber.deliver(push));
        }
        if matches!(push.kind, PushKind::Publication { .. }) {
            metrics::counter!("herald_publications_out_total").increment(sent);
        }
        members.len()
    }

    /// Records the data of a channel's publication at `offset` (read from its history) as its
    /// last one, unless the hub already holds that or a later one of the same stream: a
    /// subscriber that recovered up to `offset` can then receive the next as a delta. Only for
    /// channels with local subscribers.
    pub fn seed_last(&self, channel: &str, epoch: &Arc<str>, offset: u64, data: Bytes) {
        let mut guard = self.shard(channel).lock();
        let shard = &mut *guard;
        if !shard.channels.contains_key(channel) {
            return;
        }
        match shard.last.get(channel) {
            Some((e, o, _)) if e == epoch && *o >= offset => {}
            Some((e, _, _)) if e != epoch => {}
            _ => {
                shard.last.insert(Arc::from(channel), (epoch.clone(), offset, data));
            }
        }
    }

    /// Presence: every local subscriber's info, by client id.
    pub fn presence(&self, channel: &str) -> HashMap<String, ClientInfo> {
        let shard = self.shard(channel).lock();
        shard
            .channels
            .get(channel)
            .map(|subs| {
                subs.iter()
                    .filter(|(_, s)| s.visibility.presence)
                    .map(|(id, s)| (id.to_string(), s.info.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// (clients, distinct users) subscribed to the channel.
    pub fn presence_stats(&self, channel: &str) -> (usize, usize) {
        let shard = self.shard(channel).lock();
        let Some(subs) = shard.channels.get(channel) else {
            return (0, 0);
        };
        let shown = || subs.values().filter(|s| s.visibility.presence);
        let users: std::collections::HashSet<&str> = shown().map(|s| s.info.user.as_str()).collect();
        (shown().count(), users.len())
    }

    /// Every channel with local subscribers and its number of subscribers.
    pub fn channels(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            out.extend(shard.channels.iter().map(|(name, subs)| (name.to_string(), subs.len())));
        }
        out
    }

    /// Total subscriptions on this node.
    pub fn num_subscriptions(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().channels.values().map(HashMap::len).sum::<usize>())
            .sum()
    }
}

impl Prepared {
    /// Whether the publisher marked this publication for delta delivery.
    pub fn delta_marked(&self) -> bool {
        self.delta.is_some()
    }

    /// The hub tells a marked publication the data of the channel's previous publication.
    fn set_previous(&self, previous: Option<Bytes>) {
        if let Some(parts) = &self.delta {
            let _ = parts.previous.set(previous);
        }
    }

    /// The encoded push for a subscriber that negotiated deltas: the delta when the publication
    /// is marked, the subscriber holds the previous publication (`holds_previous`) and the delta
    /// is smaller than the data; otherwise the full data (in JSON as a string).
    pub fn delta_bytes(&self, format: Format, holds_previous: bool) -> Bytes {
        if holds_previous {
            if let Some(delta) = self.delta_encoding(format) {
                return delta.clone();
            }
        }
        match format {
            Format::Protobuf => self.bytes(Format::Protobuf).clone(),
            Format::Json => self
                .json_full_as_string
                .get_or_init(|| {
                    let data = self.publication_ref().map(|p| p.data.clone()).unwrap_or_default();
                    self.encode_publication(Format::Json, Some(crate::delta::json_string(&data)), false)
                })
                .clone(),
        }
    }

    fn delta_encoding(&self, format: Format) -> Option<&Bytes> {
        let parts = self.delta.as_ref()?;
        let previous = parts.previous.get()?.as_ref()?;
        let delta = parts
            .delta
            .get_or_init(|| {
                let data = &self.publication_ref()?.data;
                crate::delta::smaller_delta(previous, data)
            })
            .as_ref()?;
        let cell = match format {
            Format::Json => &parts.json,
            Format::Protobuf => &parts.protobuf,
        };
        cell.get_or_init(|| {
            let data = match format {
                // The delta of two UTF-8 texts is UTF-8 (`encode_utf8`); one of binary data
                // cannot go in a JSON string: such subscribers get the full data.
                Format::Json => crate::delta::json_string_exact(delta)?,
                Format::Protobuf => delta.clone(),
            };
            Some(self.encode_publication(format, Some(data), true))
        })
        .as_ref()
    }

    /// This publication encoded with other `data` (or its own) and the wire's `delta` flag.
    fn encode_publication(&self, format: Format, data: Option<Bytes>, delta: bool) -> Bytes {
        let mut reply = self.reply.clone();
        if let Some(publication) = reply.push.as_mut().and_then(|p| p.r#pub.as_mut()) {
            if let Some(data) = data {
                publication.data = data;
            }
            publication.delta = delta;
        }
        encode_reply(format, &reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Client(Arc<str>);

    impl Deliver for Client {
        fn client(&self) -> &Arc<str> {
            &self.0
        }

        fn deliver(&self, _push: &Arc<Prepared>) -> bool {
            true
        }
    }

    fn client(id: &str) -> Client {
        Client(Arc::from(id))
    }

    /// A subscriber with a tags filter that counts what it is handed.
    struct Filtered {
        client: Arc<str>,
        filter: Arc<TagsFilter>,
        got: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Deliver for Filtered {
        fn client(&self) -> &Arc<str> {
            &self.client
        }

        fn deliver(&self, push: &Arc<Prepared>) -> bool {
            let passes = push.passes(&self.filter);
            if passes {
                self.got.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            passes
        }
    }

    fn team_filter(team: &str) -> Arc<TagsFilter> {
        let tree = crate::protocol::proto::FilterNode {
            key: "team".into(),
            cmp: "eq".into(),
            val: team.into(),
            ..Default::default()
        };
        TagsFilter::intern(&tree).unwrap()
    }

    fn tagged(team: &str) -> Arc<Prepared> {
        let publication = Publication {
            tags: [("team".to_owned(), team.to_owned())].into(),
            ..Default::default()
        };
        Prepared::publication("room", Arc::from(""), publication)
    }

    /// Subscribers with equal filters share one verdict per publication: it is computed once
    /// per distinct filter (the cache holds one entry each), not once per subscriber.
    #[test]
    fn a_publication_is_judged_once_per_distinct_filter() {
        let hub = Hub::default();
        let got = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for i in 0..100 {
            let team = if i % 2 == 0 { "eng" } else { "ops" };
            let subscriber = Filtered {
                client: Arc::from(format!("c{i}")),
                filter: team_filter(team),
                got: got.clone(),
            };
            hub.subscribe("room", subscriber, ClientInfo::default(), |_| {});
        }
        let push = tagged("eng");
        assert_eq!(hub.broadcast("room", &push), 100);
        assert_eq!(got.load(std::sync::atomic::Ordering::Relaxed), 50);
        assert_eq!(push.verdicts.lock().len(), 2, "two distinct filters, two evaluations");

        let join = Prepared::join("room", ClientInfo::default());
        hub.broadcast("room", &join);
        assert_eq!(
            got.load(std::sync::atomic::Ordering::Relaxed),
            150,
            "join and leave are not filtered"
        );
        assert!(join.verdicts.lock().is_empty());
    }

    /// Past [`MAX_VERDICTS`] distinct filters the rest are evaluated each time, still right.
    #[test]
    fn verdicts_beyond_the_cache_are_still_right() {
        let push = tagged("team7");
        let filters: Vec<_> = (0..MAX_VERDICTS + 10)
            .map(|i| team_filter(&format!("team{i}")))
            .collect();
        for _ in 0..2 {
            let passed: Vec<usize> = (0..filters.len()).filter(|&i| push.passes(&filters[i])).collect();
            assert_eq!(passed, vec![7]);
        }
        let late = team_filter("team7");
        assert!(push.passes(&late), "an equal filter is the same filter");
        assert_eq!(push.verdicts.lock().len(), MAX_VERDICTS);
    }

    /// Only the first subscriber and the loss of the last are reported, once each.
    #[test]
    fn interest_is_reported_on_transitions_only() {
        let hub = Hub::default();
        let changes = parking_lot::Mutex::new(Vec::new());
        let record = |change| changes.lock().push(change);
        hub.subscribe("room", client("a"), ClientInfo::default(), record);
        hub.subscribe("room", client("b"), ClientInfo::default(), record);
        hub.subscribe("other", client("a"), ClientInfo::default(), record);
        assert_eq!(*changes.lock(), vec![Interest::Gained, Interest::Gained]);
        assert!(hub.unsubscribe("room", "a", record).is_some());
        assert!(hub.unsubscribe("room", "nobody", record).is_none());
        assert_eq!(changes.lock().len(), 2, "room still has b");
        assert!(hub.unsubscribe("room", "b", record).is_some());
        assert_eq!(changes.lock().last(), Some(&Interest::Lost));
        assert!(hub.unsubscribe("room", "b", record).is_none(), "already gone");
        hub.subscribe("room", client("c"), ClientInfo::default(), record);
        assert_eq!(
            *changes.lock(),
            vec![Interest::Gained, Interest::Gained, Interest::Lost, Interest::Gained]
        );
        assert_eq!(hub.channels().len(), 2);
    }
}
