//! The local hub: which sessions of this node are subscribed to which channel, and fan-out to
//! them.
//!
//! Sharded by channel name. A push is encoded at most once per format ([`Prepared`]) and the
//! same `Bytes` go to every session. Delivery never blocks: it hands the push to the session,
//! which queues it or, when the client is too slow, closes itself (3008). Delivery happens under
//! the channel's shard lock so every subscriber sees one order; no lock is held across `.await`.
//! The last unsubscribe removes the channel's entry.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::protocol::codec::{encode_reply, Format};
use crate::protocol::proto::{ClientInfo, Join, Leave, Publication, Push, Reply};
use crate::session::Subscriber;

const SHARDS: usize = 64;

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
        })
    }

    pub fn publication(channel: &str, epoch: Arc<str>, publication: Publication) -> Arc<Self> {
        let offset = publication.offset;
        Self::new(
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

    /// The encoded push in `format`, encoded on first use.
    pub fn bytes(&self, format: Format) -> &Bytes {
        let cell = match format {
            Format::Json => &self.json,
            Format::Protobuf => &self.protobuf,
        };
        cell.get_or_init(|| encode_reply(format, &self.reply))
    }

    /// The publication carried, if this is one (used to replay buffered pushes in order).
    pub fn publication_ref(&self) -> Option<&Publication> {
        self.reply.push.as_ref().and_then(|p| p.r#pub.as_ref())
    }
}

struct Member {
    subscriber: Subscriber,
    info: ClientInfo,
}

#[derive(Default)]
struct Shard {
    /// Channel → client id → member.
    channels: HashMap<Arc<str>, HashMap<Arc<str>, Member>>,
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

    /// Adds a session's subscription to a channel. Returns true if it is the channel's first local
    /// subscriber.
    pub fn subscribe(&self, channel: &str, subscriber: Subscriber, info: ClientInfo) -> bool {
        let mut shard = self.shard(channel).lock();
        let first = !shard.channels.contains_key(channel);
        let members = shard.channels.entry(Arc::from(channel)).or_default();
        members.insert(subscriber.session().id.clone(), Member { subscriber, info });
        first
    }

    /// Removes a session from a channel. Returns its presence info if it was subscribed.
    pub fn unsubscribe(&self, channel: &str, client: &str) -> Option<ClientInfo> {
        let mut shard = self.shard(channel).lock();
        let subscribers = shard.channels.get_mut(channel)?;
        let removed = subscribers.remove(client).map(|s| s.info);
        if subscribers.is_empty() {
            shard.channels.remove(channel);
        }
        removed
    }

    /// Hands a push to every local subscriber of the channel. Returns how many got it.
    pub fn broadcast(&self, channel: &str, push: &Arc<Prepared>) -> usize {
        let shard = self.shard(channel).lock();
        let Some(members) = shard.channels.get(channel) else {
            return 0;
        };
        for member in members.values() {
            member.subscriber.deliver(push);
        }
        if matches!(push.kind, PushKind::Publication { .. }) {
            metrics::counter!("herald_publications_out_total").increment(members.len() as u64);
        }
        members.len()
    }

    /// Presence: every local subscriber's info, by client id.
    pub fn presence(&self, channel: &str) -> HashMap<String, ClientInfo> {
        let shard = self.shard(channel).lock();
        shard
            .channels
            .get(channel)
            .map(|subs| subs.iter().map(|(id, s)| (id.to_string(), s.info.clone())).collect())
            .unwrap_or_default()
    }

    /// (clients, distinct users) subscribed to the channel.
    pub fn presence_stats(&self, channel: &str) -> (usize, usize) {
        let shard = self.shard(channel).lock();
        let Some(subs) = shard.channels.get(channel) else {
            return (0, 0);
        };
        let users: std::collections::HashSet<&str> = subs.values().map(|s| s.info.user.as_str()).collect();
        (subs.len(), users.len())
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
