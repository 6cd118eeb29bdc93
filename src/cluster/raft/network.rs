//! Raft's messages between nodes, carried by the links as requests (`RaftRpc`): each is the
//! openraft request, postcard-encoded, answered by the target node's replica.
//!
//! A snapshot travels in pieces of `cluster.snapshot_chunk_size` bytes (`SNAPSHOT_CHUNK`, each
//! acknowledged before the next is sent), then a `SNAPSHOT_END` that carries the vote and the
//! snapshot's meta and installs it: no single frame holds a whole snapshot, so its size is not
//! bounded by the link's frame limit.

use std::future::Future;
use std::io::Cursor;
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::errors::{NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::OptionalSend;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{Herald, Member, Vote};
use crate::cluster::wire::{self, request, response};
use crate::cluster::Inner;

pub const APPEND: u32 = 1;
pub const VOTE: u32 = 2;
pub const PRE_VOTE: u32 = 3;
// 4 carried a whole snapshot in one message; no longer sent or accepted.
pub const TRANSFER: u32 = 5;
/// A piece of a snapshot: `SnapshotChunk`.
pub const SNAPSHOT_CHUNK: u32 = 6;
/// The end of a snapshot: `SnapshotEnd`; the receiver installs what it assembled.
pub const SNAPSHOT_END: u32 = 7;

/// A piece of the snapshot `transfer`, at `offset` bytes from its start.
#[derive(Serialize, serde::Deserialize)]
pub struct SnapshotChunk {
    pub transfer: u64,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// The end of the snapshot `transfer`: `length` bytes in all.
#[derive(Serialize, serde::Deserialize)]
pub struct SnapshotEnd {
    pub transfer: u64,
    pub length: u64,
    pub vote: Vote,
    pub meta: super::types::SnapshotMeta,
}

/// Makes a client per target node.
pub struct Network {
    pub(crate) inner: Weak<Inner>,
}

impl RaftNetworkFactory<Herald> for Network {
    type Network = Client;

    async fn new_client(&mut self, target: u64, node: &Member) -> Client {
        Client {
            inner: self.inner.clone(),
            name: Arc::from(node.name.as_str()),
            target,
        }
    }
}

pub struct Client {
    inner: Weak<Inner>,
    name: Arc<str>,
    target: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct LinkFailure(String);

impl Client {
    async fn call<Req, Resp>(&self, kind: u32, req: &Req, timeout: Duration) -> Result<Resp, RPCError<Herald>>
    where
        Req: Serialize,
        Result<Resp, RaftError<Herald>>: DeserializeOwned,
    {
        let unreachable = |e: String| RPCError::Unreachable(Unreachable::new(&LinkFailure(e)));
        let Some(inner) = self.inner.upgrade() else {
            return Err(unreachable("shutting down".into()));
        };
        let body = postcard::to_stdvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = inner
            .ask_within(
                &self.name,
                request::Body::Raft(wire::RaftRpc {
                    kind,
                    body: body.into(),
                    target: self.target,
                }),
                timeout,
            )
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let response::Body::Raft(bytes) = answer else {
            return Err(unreachable(format!("unexpected answer from {}", self.name)));
        };
        let result: Result<Resp, RaftError<Herald>> =
            postcard::from_bytes(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetworkV2<Herald> for Client {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Herald>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<Herald>, RPCError<Herald>> {
        let started = std::time::Instant::now();
        let answer = self.call(APPEND, &rpc, option.hard_ttl()).await;
        metrics::histogram!("herald_cluster_raft_append_duration_seconds", "side" => "leader")
            .record(started.elapsed().as_secs_f64());
        answer
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<Herald>,
        option: RPCOption,
    ) -> Result<VoteResponse<Herald>, RPCError<Herald>> {
        self.call(VOTE, &rpc, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<Herald>,
        option: RPCOption,
    ) -> Result<VoteResponse<Herald>, RPCError<Herald>> {
        self.call(PRE_VOTE, &rpc, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::type_config::alias::SnapshotOf<Herald, Self::SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<Herald>, StreamingError<Herald>> {
        let chunk_size = match self.inner.upgrade() {
            Some(inner) => inner.config.snapshot_chunk_size.max(1),
            None => {
                return Err(StreamingError::Unreachable(Unreachable::new(&LinkFailure(
                    "shutting down".into(),
                ))))
            }
        };
        let data = snapshot.snapshot.into_inner();
        let transfer = rand::random::<u64>();
        // Each piece gets the whole per-message time; the snapshot as a whole has no deadline
        // but the replication's own cancellation.
        let timeout = option.hard_ttl().max(Duration::from_secs(30));
        let send = async {
            for (n, piece) in data.chunks(chunk_size).enumerate() {
                let chunk = SnapshotChunk {
                    transfer,
                    offset: (n * chunk_size) as u64,
                    data: piece.to_vec(),
                };
                let () = self.call(SNAPSHOT_CHUNK, &chunk, timeout).await?;
                metrics::counter!("herald_cluster_snapshot_chunks_total", "direction" => "out").increment(1);
            }
            let end = SnapshotEnd {
                transfer,
                length: data.len() as u64,
                vote,
                meta: snapshot.meta,
            };
            self.call::<_, SnapshotResponse<Herald>>(SNAPSHOT_END, &end, timeout)
                .await
        };
        tokio::pin!(cancel);
        tokio::select! {
            closed = &mut cancel => Err(StreamingError::Closed(closed)),
            result = send => {
                if result.is_ok() {
                    tracing::info!(peer = %self.name, bytes = data.len(), chunk_size, "cluster: snapshot sent");
                }
                Ok(result?)
            }
        }
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<Herald>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<Herald>, RPCError<Herald>> {
        self.call(TRANSFER, &rpc, option.hard_ttl()).await
    }
}
