//! The cluster floor under the broker (issue 10; design in `docs/cluster.md` and
//! `../shared/CLUSTER.md`): membership, links, interest routing and, later, replication.
//! Nothing here runs when the config has no `[cluster]` section: single-node Herald pays one
//! `OnceLock` read per fan-out for it.
//!
//! - [`envelope`]: the authenticated, versioned envelope around every inter-node message.
//! - `membership`: SWIM (foca) over UDP on `cluster.bind`; members up and down drive links.
//! - `link`: one TCP connection from this node to each live member (same address as the
//!   membership socket), carrying everything this node sends to that member, in order: interest,
//!   deliveries, requests and answers. Each node dials its own links, so a pair of nodes has one
//!   link each way and neither waits for the other to connect.
//! - [`interest`]: which peers have subscribers of which channel, from their snapshots,
//!   deltas and digests.
//!
//! The cluster reaches the node's own subscribers and state only through [`Local`], which the
//! broker implements: it does not import the broker.

pub mod envelope;
pub mod interest;
mod link;
mod membership;
pub mod raft;
pub mod status;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{ClusterConfig, Durability};
use crate::protocol::proto::Push;
use crate::store::Store;
use envelope::{ReplayGuard, Sealer};
use raft::types::{Command, Outcome};
use raft::{ProposeError, Replica};

/// `proto/cluster.proto` imports the client protocol's messages (as `super::client`).
use crate::protocol::proto as client;

/// The inter-node messages (`proto/cluster.proto`).
#[allow(clippy::large_enum_variant)]
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/herald.cluster.rs"));
}

use wire::{frame, request, response};

/// Bytes of frames a peer's link may have queued; past it, frames for that peer are dropped
/// (and counted) rather than grow the node's memory while the peer is slow or unreachable.
const LINK_QUEUE_BYTES: usize = 64 << 20;

/// How long a request to a peer (presence, channels, info, user commands) may take before the
/// asker goes on without that peer's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What the cluster needs from the node it runs in (the broker implements it).
pub trait Local: Send + Sync + 'static {
    /// Hands a push from a peer to this node's own subscribers of its channel.
    fn deliver(&self, push: Push, epoch: String);
    /// Answers a peer's request from this node's own state.
    fn answer(&self, request: request::Body) -> Pin<Box<dyn Future<Output = response::Body> + Send + '_>>;
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot bind the inter-node listener on {addr} (cluster.bind): {error}")]
    Bind { addr: SocketAddr, error: std::io::Error },
    #[error("cannot start the replicated log: {0}")]
    Replica(String),
}

enum Attempt {
    Retry,
}

/// Where the leader is.
enum Target {
    Here(Arc<Replica>),
    Peer(Arc<str>),
}

/// A peer did not answer a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AskError {
    #[error("no link to {0}")]
    Unreachable(Arc<str>),
    #[error("{0} did not answer in time")]
    Timeout(Arc<str>),
    #[error("the link to {0} broke before it answered")]
    LinkLost(Arc<str>),
    #[error("{0} answered with an error: {1}")]
    Failed(Arc<str>, String),
}

/// Why a command or a read of the replicated log did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicateError {
    /// No leader could take it within `cluster.forward_timeout` (nothing was appended).
    #[error("no leader of the replicated log answered within {0:?} (no quorum?)")]
    NoLeader(Duration),
    /// It may or may not have been applied (the leader failed or went silent meanwhile).
    #[error("the replicated log failed: {0}")]
    Failed(String),
}

/// A request out to a peer: who was asked, and who waits for the answer.
type Waiting = (Arc<str>, oneshot::Sender<response::Body>);

/// This node's part of the cluster.
pub struct Cluster {
    inner: Arc<Inner>,
    /// The membership socket, until membership starts (after the replica, so that every link
    /// this node dials carries its replica id).
    membership: Mutex<Option<tokio::net::UdpSocket>>,
}

pub(crate) struct Inner {
    config: ClusterConfig,
    name: Arc<str>,
    /// This process's start (Unix ms): a restarted node is a new generation of the same name.
    generation: u64,
    /// The address peers reach this node at (membership datagrams and links).
    advertise: SocketAddr,
    sealer: Sealer,
    /// Replay guard for every envelope that is not a frame on an established link.
    guard: Mutex<ReplayGuard>,
    local_node: OnceLock<Weak<dyn Local>>,
    local: Mutex<interest::Local>,
    remote: RwLock<interest::Remote<Arc<Peer>>>,
    peers: RwLock<HashMap<Arc<str>, Arc<Peer>>>,
    /// Requests waiting for their answer: the peer asked, and the waiter.
    pending: Mutex<HashMap<u64, Waiting>>,
    next_request: AtomicU64,
    /// The membership view as last seen by the membership task (for `herald cluster status`).
    members: Mutex<Vec<wire::Member>>,
    shutdown: CancellationToken,
    /// This node's replica of the replicated log.
    replica: OnceLock<Arc<Replica>>,
    /// Each peer's replica id, from its links' hellos.
    raft_ids: Mutex<HashMap<Arc<str>, u64>>,
    /// The first peer whose hello said it is in a replicated group (see the bootstrap rule).
    saw_group: OnceLock<Arc<str>>,
    /// The leader's name as last heard from a peer (for a node that does not know it itself).
    leader_hint: Mutex<Option<Arc<str>>>,
    /// Signalled when a member comes or goes, a link (re)connects, or this node rejoins: events
    /// around which deliveries in flight may have been lost (see [`Cluster::changed`]).
    changes: tokio::sync::Notify,
}

/// A live member, as this node reaches it: the queue of its link.
pub(crate) struct Peer {
    name: Arc<str>,
    addr: SocketAddr,
    generation: u64,
    queue: mpsc::UnboundedSender<Bytes>,
    queued: AtomicUsize,
    link_up: AtomicBool,
    /// Ends the link task when the member goes away.
    gone: CancellationToken,
}

impl interest::Handle for Arc<Peer> {
    fn name(&self) -> &Arc<str> {
        &self.name
    }
}

impl Peer {
    /// Queues an encoded frame for the link; false (and counted) when the queue is full.
    fn send(&self, frame: Bytes) -> bool {
        let len = frame.len();
        if self.queued.fetch_add(len, Ordering::Relaxed) + len > LINK_QUEUE_BYTES {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            metrics::counter!("herald_cluster_link_dropped_total").increment(1);
            return false;
        }
        if self.queue.send(frame).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn encode(body: frame::Body) -> Bytes {
    Bytes::from(wire::Frame { body: Some(body) }.encode_to_vec())
}

impl Cluster {
    /// Binds the inter-node listener (UDP for membership, TCP for links, both on
    /// `cluster.bind`). Membership starts with [`Cluster::start_replica`]: the node then joins
    /// through its seeds, or waits to be joined, until `shutdown`, and then leaves.
    pub async fn start(config: &ClusterConfig, shutdown: CancellationToken) -> Result<Arc<Self>, ClusterError> {
        let bind_error = |error| ClusterError::Bind {
            addr: config.bind,
            error,
        };
        let tcp = tokio::net::TcpListener::bind(config.bind).await.map_err(bind_error)?;
        let bound = tcp.local_addr().map_err(bind_error)?;
        let udp = tokio::net::UdpSocket::bind(bound).await.map_err(bind_error)?;
        let advertise = config.advertise.unwrap_or(bound);
        let secret = config.secret.as_deref().unwrap_or_default();
        let inner = Arc::new(Inner {
            config: config.clone(),
            name: Arc::from(config.node_name.as_str()),
            generation: now_ms(),
            advertise,
            sealer: Sealer::new(secret),
            guard: Mutex::new(ReplayGuard::new(config.replay_window)),
            local_node: OnceLock::new(),
            local: Mutex::new(interest::Local::default()),
            remote: RwLock::new(interest::Remote::default()),
            peers: RwLock::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            members: Mutex::new(Vec::new()),
            shutdown: shutdown.clone(),
            replica: OnceLock::new(),
            raft_ids: Mutex::new(HashMap::new()),
            saw_group: OnceLock::new(),
            leader_hint: Mutex::new(None),
            changes: tokio::sync::Notify::new(),
        });
        tracing::info!(node = %inner.name, address = %advertise, seeds = ?config.seeds, "cluster: inter-node listener bound");
        tokio::spawn(link::accept_loop(inner.clone(), tcp));
        tokio::spawn(digest_loop(inner.clone()));
        Ok(Arc::new(Self {
            inner,
            membership: Mutex::new(Some(udp)),
        }))
    }

    /// Connects the cluster to the node it serves (done once, before clients are accepted).
    pub fn attach(&self, local: Weak<dyn Local>) {
        let _ = self.inner.local_node.set(local);
    }

    /// Starts this node's replica of the log over `store` (opened as a replica) and the task
    /// that manages the voters. Done once at startup.
    pub async fn start_replica(&self, store: &Store, durability: Durability) -> Result<(), ClusterError> {
        let replica = Replica::start(&self.inner, store, durability, &self.inner.config)
            .await
            .map_err(ClusterError::Replica)?;
        let _ = self.inner.replica.set(replica);
        tokio::spawn(manage_voters(self.inner.clone()));
        if let Some(udp) = self.membership.lock().take() {
            tokio::spawn(membership::run(self.inner.clone(), udp));
        }
        Ok(())
    }

    /// Waits for the next change of membership or links (a member up or down, a link
    /// connected, this node rejoined). A change that happened while nobody waited is reported to
    /// the next waiter.
    pub async fn changed(&self) {
        self.inner.changes.notified().await
    }

    /// Whether this node leads the replicated log.
    pub fn leads(&self) -> bool {
        self.inner.replica.get().is_some_and(|r| r.leads())
    }

    /// Appends a command to the replicated log through its leader (this node or the one it
    /// forwards to), waiting through an election up to `cluster.forward_timeout`.
    pub async fn replicate(&self, command: Command) -> Result<Outcome, ReplicateError> {
        let timeout = self.inner.config.forward_timeout;
        let deadline = Instant::now() + timeout;
        // Encoded once, and only if the leader is another node.
        let mut bytes: Option<Vec<u8>> = None;
        loop {
            let attempt = match self.inner.leader_target() {
                None => Attempt::Retry,
                Some(Target::Here(replica)) => match replica
                    .propose(command.clone(), deadline.saturating_duration_since(Instant::now()))
                    .await
                {
                    Ok(outcome) => return Ok(outcome),
                    Err(ProposeError::NotLeader(leader)) => self.inner.hint(leader),
                    Err(ProposeError::Failed(e)) => return Err(ReplicateError::Failed(e)),
                },
                Some(Target::Peer(peer)) => {
                    let body = match &bytes {
                        Some(body) => body.clone(),
                        None => {
                            let body =
                                postcard::to_stdvec(&command).map_err(|e| ReplicateError::Failed(e.to_string()))?;
                            bytes.insert(body).clone()
                        }
                    };
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self
                        .inner
                        .ask_within(&peer, request::Body::Replicate(body.into()), left)
                        .await
                    {
                        Ok(response::Body::Outcome(outcome)) => {
                            metrics::counter!("herald_cluster_forwarded_total").increment(1);
                            return postcard::from_bytes(&outcome).map_err(|e| ReplicateError::Failed(e.to_string()));
                        }
                        Ok(response::Body::NotLeader(leader)) => {
                            self.inner.hint((!leader.is_empty()).then_some(leader))
                        }
                        Ok(other) => return Err(ReplicateError::Failed(format!("unexpected answer {other:?}"))),
                        // Never sent: safe to try again.
                        Err(AskError::Unreachable(_)) => {
                            self.inner.hint(None);
                            Attempt::Retry
                        }
                        Err(e) => return Err(ReplicateError::Failed(e.to_string())),
                    }
                }
            };
            let Attempt::Retry = attempt;
            if Instant::now() >= deadline {
                tracing::error!(timeout = ?timeout, "cluster: no leader of the replicated log took a command in time; answering 100");
                metrics::counter!("herald_cluster_no_leader_total").increment(1);
                return Err(ReplicateError::NoLeader(timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reads a stream on the leader (linearizable: it sees every acknowledged publication),
    /// here or through the link to it.
    pub async fn read(&self, query: wire::StreamQuery) -> Result<wire::StreamAnswer, ReplicateError> {
        let timeout = self.inner.config.forward_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            let body = match self.inner.leader_target() {
                None => None,
                Some(Target::Here(_)) => Some(link::answer_stream(&self.inner, query.clone()).await),
                Some(Target::Peer(peer)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self
                        .inner
                        .ask_within(&peer, request::Body::Stream(query.clone()), left)
                        .await
                    {
                        Ok(body) => Some(body),
                        Err(AskError::Unreachable(_)) => {
                            self.inner.hint(None);
                            None
                        }
                        Err(e) => return Err(ReplicateError::Failed(e.to_string())),
                    }
                }
            };
            match body {
                Some(response::Body::Stream(answer)) => return Ok(answer),
                Some(response::Body::NotLeader(leader)) => {
                    self.inner.hint((!leader.is_empty()).then_some(leader));
                }
                Some(response::Body::Error(e)) => return Err(ReplicateError::Failed(e)),
                Some(other) => return Err(ReplicateError::Failed(format!("unexpected answer {other:?}"))),
                None => {}
            }
            if Instant::now() >= deadline {
                tracing::error!(timeout = ?timeout, "cluster: no leader of the replicated log answered a read in time; answering 100");
                metrics::counter!("herald_cluster_no_leader_total").increment(1);
                return Err(ReplicateError::NoLeader(timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether this node can take publishes on channels with history now: a leader is known
    /// and reachable. `Err` says why not (for `/health`).
    pub fn ready(&self) -> Result<(), String> {
        match self.inner.leader_target() {
            Some(Target::Here(replica)) => {
                let within = self.inner.config.election_timeout * 2;
                if replica.leads_with_quorum(within) {
                    Ok(())
                } else {
                    Err(format!(
                        "this node leads but no majority acknowledged it for {within:?}"
                    ))
                }
            }
            Some(Target::Peer(peer)) => {
                let up = self
                    .inner
                    .peers
                    .read()
                    .get(&peer)
                    .is_some_and(|p| p.link_up.load(Ordering::Relaxed));
                if up {
                    Ok(())
                } else {
                    Err(format!("no link to the leader ({peer})"))
                }
            }
            None => Err("no leader of the replicated log is known".into()),
        }
    }

    /// Graceful leave, first step: hands leadership to another voter if this node leads.
    pub async fn step_down(&self) {
        if let Some(replica) = self.inner.replica.get() {
            replica.step_down().await;
        }
    }

    /// Stops the replica (after the store's last use).
    pub async fn stop_replica(&self) {
        if let Some(replica) = self.inner.replica.get() {
            replica.shutdown().await;
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.inner.name
    }

    /// This node's interest in a channel changed (its first local subscriber, or its last one
    /// gone). Called under the hub's shard lock, so per channel in order; never blocks.
    pub fn interest_changed(&self, channel: &str, gained: bool) {
        let mut local = self.inner.local.lock();
        if !local.apply(channel, gained) {
            return;
        }
        metrics::gauge!("herald_cluster_interest_entries", "side" => "local").set(local.len() as f64);
        let delta = if gained {
            wire::InterestDelta {
                gained: vec![channel.to_owned()],
                lost: Vec::new(),
            }
        } else {
            wire::InterestDelta {
                gained: Vec::new(),
                lost: vec![channel.to_owned()],
            }
        };
        let frame = encode(frame::Body::InterestDelta(delta));
        // Under the `local` lock: a link that (re)starts takes its snapshot under it too, so
        // every change is either in its snapshot or queued after it.
        for peer in self.inner.peers.read().values() {
            peer.send(frame.clone());
        }
    }

    /// Sends a push to every peer with subscribers of its channel, once per peer. Callers
    /// route one channel's pushes in that channel's order, and each link keeps it.
    pub fn route(&self, channel: &str, push: &Push, epoch: &str) {
        let remote = self.inner.remote.read();
        let Some(peers) = remote.route(channel) else { return };
        let frame = encode(frame::Body::Deliver(wire::Deliver {
            push: Some(push.clone()),
            epoch: epoch.to_owned(),
        }));
        for peer in peers {
            peer.send(frame.clone());
        }
        metrics::counter!("herald_cluster_routed_total").increment(peers.len() as u64);
    }

    /// The live peers (not this node), by name.
    pub fn peers(&self) -> Vec<Arc<str>> {
        self.inner.peers.read().keys().cloned().collect()
    }

    /// The peers known to have subscribers of `channel`.
    pub fn interested(&self, channel: &str) -> Vec<Arc<str>> {
        self.inner.remote.read().interested(channel)
    }

    /// Asks one peer; waits for its answer up to [`REQUEST_TIMEOUT`].
    pub async fn ask(&self, peer: &Arc<str>, body: request::Body) -> Result<response::Body, AskError> {
        self.inner.ask(peer, body).await
    }

    /// Asks every live peer at once; answers in no particular order, with the peer's name.
    pub async fn ask_all(&self, body: request::Body) -> Vec<(Arc<str>, Result<response::Body, AskError>)> {
        let peers = self.peers();
        self.ask_each(&peers, body).await
    }

    /// Asks the given peers at once.
    pub async fn ask_each(
        &self,
        peers: &[Arc<str>],
        body: request::Body,
    ) -> Vec<(Arc<str>, Result<response::Body, AskError>)> {
        let asks = peers.iter().map(|peer| {
            let body = body.clone();
            async move { (peer.clone(), self.inner.ask(peer, body).await) }
        });
        futures_util::future::join_all(asks).await
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> wire::Status {
        self.inner.status()
    }
}

impl Inner {
    fn local_node(&self) -> Option<Arc<dyn Local>> {
        self.local_node.get().and_then(Weak::upgrade)
    }

    /// Where to send a command or a read: this node if it leads, else the leader it knows of,
    /// else the last hint, else any live peer (which redirects).
    fn leader_target(&self) -> Option<Target> {
        let replica = self.replica.get()?;
        if replica.leads() {
            return Some(Target::Here(replica.clone()));
        }
        if let Some(leader) = replica.leader() {
            if *leader != *self.name {
                return Some(Target::Peer(Arc::from(leader)));
            }
        }
        if let Some(hint) = self.leader_hint.lock().clone() {
            if self.peers.read().contains_key(&hint) {
                return Some(Target::Peer(hint));
            }
        }
        let peers = self.peers.read();
        let mut names: Vec<&Arc<str>> = peers.keys().collect();
        names.sort();
        names.first().map(|p| Target::Peer((*p).clone()))
    }

    /// Notes who leads, as a peer said; `None` forgets the hint.
    fn hint(&self, leader: Option<String>) -> Attempt {
        *self.leader_hint.lock() = leader.map(Arc::from);
        Attempt::Retry
    }

    async fn ask(&self, peer: &Arc<str>, body: request::Body) -> Result<response::Body, AskError> {
        self.ask_within(peer, body, REQUEST_TIMEOUT).await
    }

    async fn ask_within(
        &self,
        peer: &Arc<str>,
        body: request::Body,
        timeout: Duration,
    ) -> Result<response::Body, AskError> {
        let Some(link) = self.peers.read().get(peer).cloned() else {
            return Err(AskError::Unreachable(peer.clone()));
        };
        // A request queued for a link that is down would wait out its whole timeout.
        if !link.link_up.load(Ordering::Relaxed) {
            return Err(AskError::Unreachable(peer.clone()));
        }
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, (peer.clone(), tx));
        let frame = encode(frame::Body::Request(wire::Request { id, body: Some(body) }));
        if !link.send(frame) {
            self.pending.lock().remove(&id);
            return Err(AskError::Unreachable(peer.clone()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(response::Body::Error(error))) => Err(AskError::Failed(peer.clone(), error)),
            Ok(Ok(body)) => Ok(body),
            // The link to the peer broke while the request was out (see `link_lost`).
            Ok(Err(_)) => Err(AskError::LinkLost(peer.clone())),
            Err(_) => {
                self.pending.lock().remove(&id);
                Err(AskError::Timeout(peer.clone()))
            }
        }
    }

    /// The link to `peer` broke: requests waiting for its answers end now ([`AskError::LinkLost`])
    /// rather than at their timeout. Whether the peer acted on them is unknown.
    fn link_lost(&self, peer: &str) {
        self.pending.lock().retain(|_, (asked, _)| &**asked != peer);
    }

    /// A member came up (or was renamed to a new generation): it gets a link.
    fn member_up(self: &Arc<Self>, name: Arc<str>, addr: SocketAddr, generation: u64) {
        if name == self.name {
            if generation != self.generation {
                tracing::error!(node = %name, %addr, "cluster: another node uses this node's name (cluster.node_name must be unique)");
            }
            return;
        }
        let mut peers = self.peers.write();
        if let Some(existing) = peers.get(&name) {
            if existing.generation == generation && existing.addr == addr {
                return;
            }
            existing.gone.cancel();
        }
        let (queue, rx) = mpsc::unbounded_channel();
        let peer = Arc::new(Peer {
            name: name.clone(),
            addr,
            generation,
            queue,
            queued: AtomicUsize::new(0),
            link_up: AtomicBool::new(false),
            gone: self.shutdown.child_token(),
        });
        peers.insert(name.clone(), peer.clone());
        self.remote.write().attach(peer.clone());
        metrics::gauge!("herald_cluster_peers").set(peers.len() as f64);
        drop(peers);
        tracing::info!(node = %name, %addr, generation, "cluster: member up");
        tokio::spawn(link::run_outgoing(self.clone(), peer, rx));
        self.changes.notify_one();
    }

    /// A member went down or left: its link ends and what it had told this node is forgotten.
    fn member_down(&self, name: &str, generation: u64) {
        let mut peers = self.peers.write();
        let Some(peer) = peers.get(name) else { return };
        if peer.generation != generation {
            return;
        }
        peer.gone.cancel();
        peers.remove(name);
        metrics::gauge!("herald_cluster_peers").set(peers.len() as f64);
        drop(peers);
        let mut remote = self.remote.write();
        remote.forget(name);
        metrics::gauge!("herald_cluster_interest_entries", "side" => "remote").set(remote.entries() as f64);
        tracing::info!(node = %name, generation, "cluster: member down");
        self.changes.notify_one();
    }

    fn status(&self) -> wire::Status {
        let peers = self.peers.read();
        let mut members = vec![wire::Member {
            name: self.name.to_string(),
            address: self.advertise.to_string(),
            state: "alive".to_owned(),
            incarnation: 0,
            generation: self.generation,
            link_up: false,
            link_queued: 0,
        }];
        members.extend(self.members.lock().iter().cloned());
        for member in &mut members {
            if let Some(peer) = peers.get(member.name.as_str()) {
                member.link_up = peer.link_up.load(Ordering::Relaxed);
                member.link_queued = peer.queued.load(Ordering::Relaxed) as u64;
            }
        }
        let mut status = wire::Status {
            node: self.name.to_string(),
            generation: self.generation,
            address: self.advertise.to_string(),
            members,
            local_interest: self.local.lock().len() as u64,
            remote_interest: self.remote.read().entries() as u64,
            ..Default::default()
        };
        if let Some(replica) = self.replica.get() {
            replica.fill_status(&mut status);
        }
        if status.leader.is_empty() {
            // Outside the group: the leader as the peers say.
            status.leader = self.leader_hint.lock().as_deref().unwrap_or_default().to_owned();
        }
        status
    }
}

/// How often each node sends its interest digest to every peer.
const DIGEST_INTERVAL: Duration = Duration::from_secs(1);

/// Anti-entropy: every peer hears this node's interest digest now and then, and asks for a
/// snapshot when its copy differs.
async fn digest_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(DIGEST_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let leader = match inner.replica.get() {
            Some(replica) if replica.leads() => inner.name.to_string(),
            Some(replica) => replica.leader().unwrap_or_default(),
            None => String::new(),
        };
        let local = inner.local.lock();
        let digest = local.digest();
        let frame = encode(frame::Body::InterestDigest(wire::InterestDigest {
            count: digest.count,
            hash: digest.hash,
            leader,
        }));
        for peer in inner.peers.read().values() {
            peer.send(frame.clone());
        }
    }
}

/// How often the leader reviews the voters.
const MANAGE_INTERVAL: Duration = Duration::from_millis(500);

/// On the leader: grows the voters to `cluster.replicas` and replaces voters gone for too
/// long (see [`raft`]).
async fn manage_voters(inner: Arc<Inner>) {
    let mut missing = HashMap::new();
    let mut tick = tokio::time::interval(MANAGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(replica) = inner.replica.get().cloned() else {
            continue;
        };
        let mut live: HashMap<String, u64> = HashMap::new();
        live.insert(inner.name.to_string(), replica.id());
        {
            let peers = inner.peers.read();
            let ids = inner.raft_ids.lock();
            for name in peers.keys() {
                if let Some(id) = ids.get(name) {
                    live.insert(name.to_string(), *id);
                }
            }
        }
        replica
            .manage_voters(
                inner.config.replicas,
                inner.config.replace_dead_voter_after,
                &live,
                &mut missing,
            )
            .await;
    }
}
