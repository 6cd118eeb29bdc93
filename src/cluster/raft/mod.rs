//! The replicated log (issue 10, item 5): one openraft group whose voters sequence every
//! channel with history. Its log lives in sled beside the streams ([`log`]); its state machine
//! is the streams themselves ([`machine`]); its messages travel over the links ([`network`]).
//! openraft's API stays behind [`Replica`], since it changes between alphas.
//!
//! Who votes, and how the group forms and heals (see `docs/cluster.md`):
//! - the node without seeds whose store has never been in a group starts it, alone, unless a
//!   member says within `cluster.bootstrap_wait` that it is in one already;
//! - the leader adds live nodes as voters up to `cluster.replicas`, always to an odd number (1,
//!   3, 5…: an even group tolerates no more failures than the odd one below it); each is first a
//!   learner that catches up, then a voter;
//! - a voter gone (not a live member with that id) for `cluster.replace_dead_voter_after` is
//!   replaced by a live node that does not vote, the same way;
//! - a node's id is chosen at random with its store, so a node whose store was lost is a new
//!   member: it never votes with a log it no longer has;
//! - nodes beyond the voters are edge nodes, outside the group: they forward publishes and
//!   reads to the leader and receive deliveries by interest.

mod log;
pub mod machine;
mod network;
pub mod types;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver as _;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{ReadPolicy, ServerState};

use self::log::LogStore;
use self::machine::Machine;
use self::types::{Command, Herald, Member, Outcome};
use super::wire;
use super::Inner;
use crate::config::{ClusterConfig, Durability};
use crate::store::Store;

type Raft = openraft::Raft<Herald, Machine>;

/// Why a command was not applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// Not appended: this node does not lead (the leader's name, when known). Safe to retry.
    #[error("not the leader")]
    NotLeader(Option<String>),
    /// The replica failed, or the outcome is unknown.
    #[error("{0}")]
    Failed(String),
}

/// This node's replica of the log.
pub struct Replica {
    raft: Raft,
    id: u64,
    leading: Arc<AtomicBool>,
    /// The snapshot being received, piece by piece.
    incoming: parking_lot::Mutex<Assembly>,
}

/// A snapshot being received: its pieces in order. A piece at offset 0 starts a transfer
/// (replacing one left unfinished: a new leader, or the same one trying again); a piece that
/// does not follow what is held is refused, and the sender starts the snapshot again later.
#[derive(Default)]
struct Assembly {
    current: Option<(u64, Vec<u8>)>,
}

impl Assembly {
    fn add(&mut self, chunk: network::SnapshotChunk) -> Result<(), String> {
        if chunk.offset == 0 {
            self.current = Some((chunk.transfer, Vec::new()));
        }
        match self.current.as_mut() {
            Some((transfer, data)) if *transfer == chunk.transfer && data.len() as u64 == chunk.offset => {
                data.extend_from_slice(&chunk.data);
                Ok(())
            }
            other => Err(format!(
                "snapshot piece {}@{} does not follow what this node holds: {:?} (transfer, bytes)",
                chunk.transfer,
                chunk.offset,
                other.map(|(t, d)| (*t, d.len()))
            )),
        }
    }

    /// The whole snapshot `transfer`, if every one of its `length` bytes arrived.
    fn finish(&mut self, transfer: u64, length: u64) -> Result<Vec<u8>, String> {
        match self.current.take() {
            Some((t, data)) if t == transfer && data.len() as u64 == length => Ok(data),
            // An empty snapshot has no pieces.
            None if length == 0 => Ok(Vec::new()),
            other => Err(format!(
                "snapshot {transfer} of {length} bytes ended, but this node holds {:?} (transfer, bytes)",
                other.map(|(t, d)| (t, d.len()))
            )),
        }
    }
}

fn failed(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Replica {
    /// Opens the log in the store's database and starts the replica. The node without seeds
    /// whose store was never in a group starts the group, alone (see [`bootstrap`]).
    pub(crate) async fn start(
        inner: &Arc<Inner>,
        store: &Store,
        durability: Durability,
        cluster: &ClusterConfig,
    ) -> Result<Arc<Self>, String> {
        let log = LogStore::open(store.dir(), store.db(), durability)
            .map_err(failed)?
            .flushing(store.clone());
        let id = log.node_id().map_err(failed)?;
        let used = log.is_used();
        let election = cluster.election_timeout.as_millis() as u64;
        let config = openraft::Config {
            cluster_name: "herald".into(),
            heartbeat_interval: cluster.heartbeat_interval.as_millis() as u64,
            election_timeout_min: election,
            election_timeout_max: election + election / 2,
            enable_pre_vote: Some(true),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cluster.snapshot_entries),
            max_in_snapshot_log_to_keep: cluster.snapshot_entries / 5,
            ..Default::default()
        }
        .validate()
        .map_err(failed)?;
        let leading = Arc::new(AtomicBool::new(false));
        let machine = Machine::new(store.clone(), leading.clone());
        let network = network::Network {
            inner: Arc::downgrade(inner),
        };
        let raft = Raft::new(id, Arc::new(config), network, log, machine)
            .await
            .map_err(failed)?;
        let replica = Arc::new(Self {
            raft,
            id,
            leading,
            incoming: parking_lot::Mutex::new(Assembly::default()),
        });
        if cluster.seeds.is_empty() && !used {
            tokio::spawn(bootstrap(
                Arc::downgrade(inner),
                Arc::downgrade(&replica),
                cluster.node_name.clone(),
                cluster.bootstrap_wait,
            ));
        } else if !used {
            tracing::info!(
                raft_id = id,
                "cluster: waiting to be added to the replicated log by its leader"
            );
        }
        tokio::spawn(watch_leadership(Arc::downgrade(&replica)));
        Ok(replica)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether this replica is in a group: it knows a membership (as a voter or a learner).
    pub fn in_group(&self) -> bool {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let in_group = metrics.membership_config.membership().nodes().next().is_some();
        in_group
    }

    /// Whether this node leads (as far as it knows).
    pub fn leads(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    /// Whether this node leads and a majority acknowledged it within `within` (a leader cut
    /// off from its majority keeps believing it leads until it hears otherwise).
    pub fn leads_with_quorum(&self, within: Duration) -> bool {
        if !self.leads() {
            return false;
        }
        let metrics = self.raft.metrics().borrow_watched().clone();
        metrics
            .last_quorum_acked
            .as_ref()
            .is_some_and(|at| openraft::Instant::elapsed(&**at) < within)
    }

    /// The leader's name, as this node knows it.
    pub fn leader(&self) -> Option<String> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|m| m.name.clone())
    }

    /// Appends a command and waits until it is applied here (this node must lead), at most
    /// `timeout`: a leader cut off from its majority never commits, and its caller is told
    /// (the outcome is then unknown).
    pub async fn propose(&self, command: Command, timeout: Duration) -> Result<Outcome, ProposeError> {
        let started = Instant::now();
        let written = tokio::time::timeout(timeout, self.raft.client_write(command)).await;
        metrics::histogram!("herald_cluster_propose_duration_seconds").record(started.elapsed().as_secs_f64());
        let Ok(written) = written else {
            return Err(ProposeError::Failed(format!(
                "not committed within {timeout:?} (is this leader cut off from its majority?)"
            )));
        };
        match written {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(ProposeError::NotLeader(forward.leader_node.map(|m| m.name)))
            }
            Err(e) => Err(ProposeError::Failed(e.to_string())),
        }
    }

    /// Waits until a read here sees everything committed before the call (this node leads).
    pub async fn linearize(&self, timeout: Duration) -> Result<(), ProposeError> {
        if self.raft.ensure_linearizable(ReadPolicy::LeaseRead).await.is_ok() {
            return Ok(());
        }
        let Ok(confirmed) = tokio::time::timeout(timeout, self.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await
        else {
            return Err(ProposeError::Failed(format!(
                "leadership not confirmed within {timeout:?}"
            )));
        };
        match confirmed {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(openraft::errors::LinearizableReadError::ForwardToLeader(forward))) => {
                Err(ProposeError::NotLeader(forward.leader_node.map(|m| m.name)))
            }
            Err(e) => Err(ProposeError::Failed(e.to_string())),
        }
    }

    /// Answers a Raft message from a peer: the openraft answer, postcard-encoded.
    pub async fn handle(&self, rpc: wire::RaftRpc) -> Result<Vec<u8>, String> {
        fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
            postcard::from_bytes(body).map_err(failed)
        }
        fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, String> {
            postcard::to_stdvec(value).map_err(failed)
        }
        if rpc.target != self.id {
            return Err(format!(
                "this node's replica is {}, not {} (its store was replaced)",
                self.id, rpc.target
            ));
        }
        match rpc.kind {
            network::APPEND => {
                let started = Instant::now();
                let answer = encode(&self.raft.append_entries(decode(&rpc.body)?).await);
                metrics::histogram!("herald_cluster_raft_append_duration_seconds", "side" => "follower")
                    .record(started.elapsed().as_secs_f64());
                answer
            }
            network::VOTE => encode(&self.raft.vote(decode(&rpc.body)?).await),
            network::PRE_VOTE => encode(&self.raft.pre_vote(decode(&rpc.body)?).await),
            network::SNAPSHOT_CHUNK => {
                let chunk: network::SnapshotChunk = decode(&rpc.body)?;
                self.incoming.lock().add(chunk)?;
                metrics::counter!("herald_cluster_snapshot_chunks_total", "direction" => "in").increment(1);
                encode(&Ok::<(), RaftError<Herald>>(()))
            }
            network::SNAPSHOT_END => {
                let end: network::SnapshotEnd = decode(&rpc.body)?;
                let data = self.incoming.lock().finish(end.transfer, end.length)?;
                let snapshot = openraft::type_config::alias::SnapshotOf::<Herald, _> {
                    meta: end.meta,
                    snapshot: std::io::Cursor::new(data),
                };
                let result = self
                    .raft
                    .install_full_snapshot(end.vote, snapshot)
                    .await
                    .map_err(RaftError::<Herald>::Fatal);
                encode(&result)
            }
            network::TRANSFER => {
                let result = self
                    .raft
                    .handle_transfer_leader(decode(&rpc.body)?)
                    .await
                    .map_err(RaftError::<Herald>::Fatal);
                encode(&result)
            }
            other => Err(format!("unknown raft message kind {other}")),
        }
    }

    /// This node's part of `herald cluster status`.
    pub fn fill_status(&self, status: &mut wire::Status) {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let name_of = |id: &u64| membership.get_node(id).map(|m| m.name.clone());
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        status.raft_id = self.id;
        status.role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Follower if voters.contains(&self.id) => "follower",
            _ if membership.get_node(&self.id).is_some() => "learner",
            _ => "edge",
        }
        .to_owned();
        status.leader = metrics.current_leader.as_ref().and_then(name_of).unwrap_or_default();
        status.term = metrics.current_term;
        status.last_log_index = metrics.last_log_index.unwrap_or(0);
        status.committed = metrics.local_committed.as_ref().map_or(0, |l| l.index());
        status.applied = metrics.last_applied.as_ref().map_or(0, |l| l.index());
        status.voters = voters.iter().filter_map(name_of).collect();
        if let Some(replication) = &metrics.replication {
            let last = metrics.last_log_index.unwrap_or(0);
            for (id, matched) in replication.iter() {
                if let Some(name) = name_of(id) {
                    let at = matched.as_ref().map_or(0, |l| l.index());
                    status.replication_lag.insert(name, last.saturating_sub(at));
                }
            }
        }
    }

    /// Hands leadership to another voter (graceful leave) and waits briefly for it to move.
    pub async fn step_down(&self) {
        if !self.leads() {
            return;
        }
        let metrics = self.raft.metrics().borrow_watched().clone();
        // The voter most caught up (one that acknowledged the whole log is alive and ready).
        let last = metrics.last_log_index.unwrap_or(0);
        let matched = |id: &u64| {
            metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned())
                .flatten()
                .map_or(0, |l| l.index())
        };
        let target = metrics
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != self.id)
            .max_by_key(|id| (matched(id) >= last, matched(id)));
        if let Some(target) = target {
            if self.raft.trigger().transfer_leader(target).await.is_ok() {
                let deadline = Instant::now() + Duration::from_secs(2);
                while self.leads() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tracing::info!(moved = !self.leads(), "cluster: leadership handed over");
            }
        }
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }

    /// One step of voter management (on the leader only): grow the voters to
    /// `cluster.replicas` and replace voters gone for too long. `live` maps each live node's
    /// name (this one included) to its replica id; `missing` remembers since when each voter
    /// has been missing.
    pub(crate) async fn manage_voters(
        &self,
        replicas: usize,
        replace_after: Duration,
        live: &HashMap<String, u64>,
        missing: &mut HashMap<u64, Instant>,
    ) {
        if !self.leads() {
            missing.clear();
            return;
        }
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership().clone();
        // A membership change is in progress (joint configuration): wait for it.
        if membership.get_joint_config().len() > 1 {
            return;
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let live_ids: BTreeSet<u64> = live.values().copied().collect();
        let now = Instant::now();
        missing.retain(|id, _| voters.contains(id) && !live_ids.contains(id));
        for id in &voters {
            if !live_ids.contains(id) {
                missing.entry(*id).or_insert(now);
            }
        }
        let mut candidates: Vec<(&String, u64)> = live
            .iter()
            .filter(|(_, id)| !voters.contains(id))
            .map(|(name, id)| (name, *id))
            .collect();
        candidates.sort();
        let dead: Vec<u64> = missing
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= replace_after)
            .map(|(id, _)| *id)
            .collect();
        let mut target: BTreeSet<u64> = voters.clone();
        let mut added = Vec::new();
        let mut pool = candidates.into_iter();
        let mut replaced = Vec::new();
        // Replace the dead (only when a live node can take the place: removing a voter
        // without one would leave fewer voters, and a smaller majority of failures to bear)…
        for id in &dead {
            let Some((name, new)) = pool.next() else { break };
            target.remove(id);
            target.insert(new);
            added.push((name.clone(), new));
            replaced.push(*id);
        }
        // …then grow to `replicas`.
        while target.len() < replicas {
            let Some((name, id)) = pool.next() else { break };
            target.insert(id);
            added.push((name.clone(), id));
        }
        if target.len().is_multiple_of(2) && target.len() > voters.len() && added.len() > replaced.len() {
            // An even group tolerates no more failures than the odd one below it.
            if let Some((_, id)) = added.pop() {
                target.remove(&id);
            }
        }
        if target == voters || target.is_empty() {
            return;
        }
        for (name, id) in &added {
            tracing::info!(node = %name, raft_id = id, "cluster: adding a learner to the replicated log");
            if let Err(e) = self.raft.add_learner(*id, Member { name: name.clone() }, true).await {
                tracing::warn!(node = %name, error = %e, "cluster: could not add a learner");
                return;
            }
        }
        let names = |ids: &BTreeSet<u64>| -> Vec<String> {
            ids.iter()
                .map(|id| {
                    membership
                        .get_node(id)
                        .map(|m| m.name.clone())
                        .or_else(|| added.iter().find(|(_, a)| a == id).map(|(n, _)| n.clone()))
                        .unwrap_or_else(|| id.to_string())
                })
                .collect()
        };
        tracing::info!(from = ?names(&voters), to = ?names(&target), "cluster: changing the voters");
        match self.raft.change_membership(target.clone(), false).await {
            Ok(_) => {
                for id in &replaced {
                    missing.remove(id);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cluster: voter change failed"),
        }
    }
}

/// The bootstrap rule: a node without seeds whose store was never in a group starts a new
/// group, alone, unless within `wait` a peer's link says it is in one already. That peer's
/// group is then the cluster's (this node's store was lost, or it was started without seeds
/// beside a running cluster): this node waits to be added by its leader, as a node with seeds
/// does, rather than sequence streams a second time in a group of its own.
async fn bootstrap(inner: Weak<Inner>, replica: Weak<Replica>, name: String, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (Some(inner), Some(replica)) = (inner.upgrade(), replica.upgrade()) else {
            return;
        };
        if let Some(peer) = inner.saw_group.get() {
            tracing::warn!(
                peer = %peer,
                "cluster: this node has no seeds and a new store, but a member is in a replicated log already: \
                 not starting another; waiting to be added by its leader (give this node seeds)"
            );
            return;
        }
        if replica.in_group() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let members = BTreeMap::from([(replica.id, Member { name })]);
            match replica.raft.initialize(members).await {
                Ok(()) => tracing::info!(
                    raft_id = replica.id,
                    "cluster: started a new replicated log (this node has no seeds, and no member is in one)"
                ),
                Err(e) => tracing::warn!(error = %e, "cluster: could not start the replicated log"),
            }
            return;
        }
        drop((inner, replica));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Keeps `leading` in step with the replica's state.
async fn watch_leadership(replica: Weak<Replica>) {
    let Some(mut metrics) = replica.upgrade().map(|r| r.raft.metrics()) else {
        return;
    };
    loop {
        let state = metrics.borrow_and_update().state;
        let Some(r) = replica.upgrade() else { return };
        let leads = state == ServerState::Leader;
        if r.leading.swap(leads, Ordering::Relaxed) != leads {
            tracing::info!(
                leads,
                term = metrics.borrow_watched().current_term,
                "cluster: leadership changed"
            );
            metrics::gauge!("herald_cluster_raft_leader").set(if leads { 1.0 } else { 0.0 });
        }
        let m = metrics.borrow_watched().clone();
        metrics::gauge!("herald_cluster_raft_term").set(m.current_term as f64);
        let committed = m.local_committed.as_ref().map_or(0, |l| l.index());
        let applied = m.last_applied.as_ref().map_or(0, |l| l.index());
        metrics::gauge!("herald_cluster_raft_apply_lag").set(committed.saturating_sub(applied) as f64);
        metrics::gauge!("herald_cluster_raft_commit_lag")
            .set(m.last_log_index.unwrap_or(0).saturating_sub(committed) as f64);
        drop(r);
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::network::SnapshotChunk;
    use super::Assembly;

    fn chunk(transfer: u64, offset: u64, data: &[u8]) -> SnapshotChunk {
        SnapshotChunk {
            transfer,
            offset,
            data: data.to_vec(),
        }
    }

    #[test]
    fn a_snapshot_is_assembled_from_its_pieces_in_order() {
        let mut assembly = Assembly::default();
        assembly.add(chunk(7, 0, b"abc")).unwrap();
        assembly.add(chunk(7, 3, b"de")).unwrap();
        assert_eq!(assembly.finish(7, 5).unwrap(), b"abcde");
        // Nothing is left over for the next transfer; an empty snapshot has no pieces.
        assert_eq!(assembly.finish(8, 0).unwrap(), b"");
    }

    #[test]
    fn pieces_out_of_order_or_of_another_transfer_are_refused() {
        let mut assembly = Assembly::default();
        assert!(assembly.add(chunk(7, 3, b"de")).is_err(), "no start");
        assembly.add(chunk(7, 0, b"abc")).unwrap();
        assert!(assembly.add(chunk(7, 4, b"x")).is_err(), "a hole");
        assert!(
            assembly.add(chunk(7, 0, b"ab")).is_ok(),
            "the same transfer starting over"
        );
        assert!(assembly.add(chunk(8, 2, b"x")).is_err(), "another transfer, mid-way");
        // A short or foreign end installs nothing.
        assert!(assembly.finish(7, 5).is_err());
        assembly.add(chunk(9, 0, b"abc")).unwrap();
        assert!(assembly.finish(10, 3).is_err());
    }

    #[test]
    fn a_new_transfer_replaces_an_unfinished_one() {
        let mut assembly = Assembly::default();
        assembly.add(chunk(1, 0, b"old")).unwrap();
        assembly.add(chunk(2, 0, b"new")).unwrap();
        assert!(assembly.add(chunk(1, 3, b"x")).is_err());
        assert_eq!(assembly.finish(2, 3).unwrap(), b"new");
    }
}
