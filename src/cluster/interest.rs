//! Interest: which nodes have local subscribers of which channels (NATS-style route interest).
//!
//! A node tells every peer of its own changes only: a channel's first local subscriber (0→1)
//! and the loss of its last (1→0), never each subscriber. A link starts with the whole set
//! (a snapshot), and a periodic [`Digest`] lets the receiver find drift and ask for a snapshot.
//!
//! [`Remote`] is what this node learned from its peers: per peer its channels, and per channel
//! the peers a publication must reach (each once, whatever their number of subscribers).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A stable 64-bit hash of a channel name (FNV-1a): the same on every node and build, unlike
/// the standard library's hasher.
pub fn channel_hash(channel: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in channel.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// An order-independent summary of a set of channels: its size and the XOR of its members'
/// hashes, updated in O(1) per change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest {
    pub count: u64,
    pub hash: u64,
}

impl Digest {
    pub fn add(&mut self, channel: &str) {
        self.count += 1;
        self.hash ^= channel_hash(channel);
    }

    pub fn remove(&mut self, channel: &str) {
        self.count = self.count.saturating_sub(1);
        self.hash ^= channel_hash(channel);
    }

    pub fn of<'a>(channels: impl IntoIterator<Item = &'a Arc<str>>) -> Self {
        let mut digest = Self::default();
        for channel in channels {
            digest.add(channel);
        }
        digest
    }
}

/// This node's own interest.
#[derive(Debug, Default)]
pub struct Local {
    channels: HashSet<Arc<str>>,
    digest: Digest,
}

impl Local {
    /// Applies a change; false when it changes nothing (a repeated report).
    pub fn apply(&mut self, channel: &str, gained: bool) -> bool {
        let changed = if gained {
            self.channels.insert(Arc::from(channel))
        } else {
            self.channels.remove(channel)
        };
        if changed {
            if gained {
                self.digest.add(channel);
            } else {
                self.digest.remove(channel);
            }
        }
        changed
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.channels.iter().map(|c| c.to_string()).collect()
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

/// What this node knows of its peers' interest, and the routes that follow from it.
#[derive(Debug)]
pub struct Remote<P> {
    peers: HashMap<Arc<str>, PeerInterest>,
    routes: HashMap<Arc<str>, Vec<P>>,
    /// The handle used to reach each peer that is currently a member.
    handles: HashMap<Arc<str>, P>,
}

impl<P> Default for Remote<P> {
    fn default() -> Self {
        Self {
            peers: HashMap::new(),
            routes: HashMap::new(),
            handles: HashMap::new(),
        }
    }
}

#[derive(Debug, Default)]
struct PeerInterest {
    /// The process generation the set belongs to: a restarted peer's old set is dropped.
    generation: u64,
    channels: HashSet<Arc<str>>,
    digest: Digest,
}

/// A handle to a peer that routes can hold; compared by the peer's name.
pub trait Handle: Clone {
    fn name(&self) -> &Arc<str>;
}

impl<P: Handle> Remote<P> {
    /// The peers with interest in `channel`.
    pub fn route(&self, channel: &str) -> Option<&[P]> {
        self.routes.get(channel).map(Vec::as_slice)
    }

    /// Makes `peer` reachable: its known channels get routes to it.
    pub fn attach(&mut self, peer: P) {
        let name = peer.name().clone();
        self.detach(&name);
        if let Some(interest) = self.peers.get(&name) {
            for channel in &interest.channels {
                self.routes.entry(channel.clone()).or_default().push(peer.clone());
            }
        }
        self.handles.insert(name, peer);
    }

    /// Makes a peer unreachable (no longer a member): no route leads to it. Its interest is
    /// forgotten as well, since a member that comes back sends a new snapshot.
    pub fn detach(&mut self, name: &str) {
        if self.handles.remove(name).is_none() {
            return;
        }
        if let Some(interest) = self.peers.get(name) {
            for channel in &interest.channels {
                remove_route(&mut self.routes, channel, name);
            }
        }
    }

    /// Forgets everything of a peer (declared dead).
    pub fn forget(&mut self, name: &str) {
        self.detach(name);
        self.peers.remove(name);
    }

    /// Replaces a peer's whole interest (a snapshot).
    pub fn replace(&mut self, name: &Arc<str>, generation: u64, channels: Vec<String>) {
        let old = self.peers.remove(name).unwrap_or_default();
        let handle = self.handles.get(name).cloned();
        let new: HashSet<Arc<str>> = channels.into_iter().map(Arc::from).collect();
        if let Some(handle) = &handle {
            for channel in old.channels.difference(&new) {
                remove_route(&mut self.routes, channel, name);
            }
            for channel in new.difference(&old.channels) {
                self.routes.entry(channel.clone()).or_default().push(handle.clone());
            }
        }
        let digest = Digest::of(&new);
        self.peers.insert(
            name.clone(),
            PeerInterest {
                generation,
                channels: new,
                digest,
            },
        );
    }

    /// Applies a peer's changes, in order. A delta from another generation than the known one
    /// is ignored (the link that carries the new generation starts with a snapshot).
    pub fn apply(&mut self, name: &Arc<str>, generation: u64, gained: &[String], lost: &[String]) {
        let Some(interest) = self.peers.get_mut(name) else {
            return;
        };
        if interest.generation != generation {
            return;
        }
        let handle = self.handles.get(name);
        for channel in gained {
            if interest.channels.insert(Arc::from(channel.as_str())) {
                interest.digest.add(channel);
                if let Some(handle) = handle {
                    self.routes
                        .entry(Arc::from(channel.as_str()))
                        .or_default()
                        .push(handle.clone());
                }
            }
        }
        for channel in lost {
            if interest.channels.remove(channel.as_str()) {
                interest.digest.remove(channel);
                if handle.is_some() {
                    remove_route(&mut self.routes, channel, name);
                }
            }
        }
    }

    /// Whether this node's copy of a peer's interest matches the peer's digest.
    pub fn matches(&self, name: &str, generation: u64, digest: Digest) -> bool {
        self.peers
            .get(name)
            .is_some_and(|p| p.generation == generation && p.digest == digest)
    }

    /// The peers known to have local subscribers of `channel`, by name.
    pub fn interested(&self, channel: &str) -> Vec<Arc<str>> {
        self.peers
            .iter()
            .filter(|(_, p)| p.channels.contains(channel))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Interest entries known (peer × channel).
    pub fn entries(&self) -> usize {
        self.peers.values().map(|p| p.channels.len()).sum()
    }
}

fn remove_route<P: Handle>(routes: &mut HashMap<Arc<str>, Vec<P>>, channel: &str, name: &str) {
    if let Some(peers) = routes.get_mut(channel) {
        peers.retain(|p| &**p.name() != name);
        if peers.is_empty() {
            routes.remove(channel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Peer(Arc<str>);

    impl Handle for Peer {
        fn name(&self) -> &Arc<str> {
            &self.0
        }
    }

    fn names(route: Option<&[Peer]>) -> Vec<String> {
        let mut names: Vec<String> = route.unwrap_or_default().iter().map(|p| p.0.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn digest_follows_changes_in_any_order() {
        let mut local = Local::default();
        assert!(local.apply("a", true));
        assert!(local.apply("b", true));
        assert!(!local.apply("a", true), "a repeated gain changes nothing");
        let a_then_b = local.digest();
        let mut other = Local::default();
        other.apply("b", true);
        other.apply("c", true);
        other.apply("a", true);
        other.apply("c", false);
        assert_eq!(other.digest(), a_then_b);
        assert!(local.apply("a", false));
        assert_ne!(local.digest(), a_then_b);
        assert_eq!(local.digest(), Digest::of(&[Arc::from("b")]));
        assert_eq!(channel_hash("chat:1"), channel_hash("chat:1"));
        assert_ne!(channel_hash("chat:1"), channel_hash("chat:2"));
    }

    #[test]
    fn routes_follow_snapshots_deltas_and_membership() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut remote = Remote::<Peer>::default();
        // Interest may arrive before the peer is known as a member: kept, not routed.
        remote.replace(&a, 1, vec!["x".into(), "y".into()]);
        assert!(remote.route("x").is_none());
        remote.attach(Peer(a.clone()));
        remote.attach(Peer(b.clone()));
        remote.replace(&b, 7, vec!["x".into()]);
        assert_eq!(names(remote.route("x")), ["a", "b"]);
        assert_eq!(names(remote.route("y")), ["a"]);

        remote.apply(&a, 1, &["z".into()], &["x".into()]);
        assert_eq!(names(remote.route("x")), ["b"]);
        assert_eq!(names(remote.route("z")), ["a"]);
        // A delta of an older generation is ignored.
        remote.apply(&b, 6, &["old".into()], &["x".into()]);
        assert_eq!(names(remote.route("x")), ["b"]);
        assert!(remote.route("old").is_none());

        let digest = Digest::of(&[Arc::from("y"), Arc::from("z")]);
        assert!(remote.matches("a", 1, digest));
        assert!(!remote.matches("a", 2, digest));
        assert!(!remote.matches("b", 7, digest));

        // A new snapshot replaces the set: routes removed and added.
        remote.replace(&a, 2, vec!["x".into()]);
        assert_eq!(names(remote.route("x")), ["a", "b"]);
        assert!(remote.route("y").is_none() && remote.route("z").is_none());
        assert_eq!(remote.entries(), 2);

        remote.forget("b");
        assert_eq!(names(remote.route("x")), ["a"]);
        remote.detach("a");
        assert!(remote.route("x").is_none());
        assert_eq!(remote.interested("x"), vec![a.clone()]);
        remote.attach(Peer(a));
        assert_eq!(names(remote.route("x")), ["a"]);
    }
}
