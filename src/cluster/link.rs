//! Links: the TCP connections that carry frames between nodes (see the module docs of
//! [`crate::cluster`]).
//!
//! On the wire, each frame is `length (u32, big-endian) | envelope`, the envelope's payload
//! being `link id (u64) | Frame (protobuf)`. The first frame is the dialer's `Hello`; its
//! envelope's nonce is the link id and passes the shared replay guard, so a recorded link
//! cannot be played back. Every later frame's nonce is its sequence number on the link (1, 2,
//! …, checked exactly) and it carries the link id, so frames cannot be replayed, reordered,
//! dropped or moved between links without the receiver closing the link.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

use super::envelope::{Kind, Rejected, Sealer};
use super::wire::{self, frame, request, response};
use super::{encode, now_ms, Inner, Peer};

/// The largest frame accepted once a link is authenticated (a delivery of the largest
/// publication fits many times over).
const MAX_FRAME: usize = 64 << 20;
/// The largest first frame (the hello): an unauthenticated sender gets no more than this.
const MAX_HELLO: usize = 4096;
/// How long a new connection has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A link that carries nothing for this long is dead (peers send a digest every second).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a write to a peer may stall before the link is dropped and dialed again.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Frames taken from the queue per write.
const FRAMES_PER_WRITE: usize = 256;

/// Seals the frames of one link, in order.
pub(super) struct Sealing {
    sealer: Sealer,
    sender: Arc<str>,
    link_id: u64,
    seq: u64,
}

impl Sealing {
    pub(super) fn new(sealer: Sealer, sender: Arc<str>) -> Self {
        Self {
            sealer,
            sender,
            link_id: rand::random(),
            seq: 0,
        }
    }

    /// Appends one framed envelope to `out`: the hello (nonce = link id) first, then frames
    /// numbered from 1.
    fn push(&mut self, frame: &[u8], out: &mut Vec<u8>) {
        let nonce = if self.seq == 0 { self.link_id } else { self.seq };
        self.seq += 1;
        let mut payload = Vec::with_capacity(8 + frame.len());
        payload.extend_from_slice(&self.link_id.to_be_bytes());
        payload.extend_from_slice(frame);
        let envelope = self.sealer.seal(Kind::Link, &self.sender, now_ms(), nonce, &payload);
        out.extend_from_slice(&(envelope.len() as u32).to_be_bytes());
        out.extend_from_slice(&envelope);
    }
}

/// Why a link was closed by its receiver.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("envelope rejected: {0}")]
    Rejected(Rejected),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("undecodable frame")]
    Decode,
    #[error("no hello, or a hello that does not fit")]
    Hello,
    #[error("silent for too long")]
    Idle,
}

fn rejected(reason: Rejected) -> LinkError {
    metrics::counter!("herald_cluster_rejected_envelopes_total", "reason" => reason.label()).increment(1);
    LinkError::Rejected(reason)
}

/// Opens the frames of one link, checking their order.
pub(super) struct Opening {
    sealer: Sealer,
    window_ms: u64,
    /// Set by the hello.
    sender: Option<Arc<str>>,
    link_id: u64,
    seq: u64,
}

impl Opening {
    pub(super) fn new(sealer: Sealer, window: Duration) -> Self {
        Self {
            sealer,
            window_ms: window.as_millis() as u64,
            sender: None,
            link_id: 0,
            seq: 0,
        }
    }

    /// Reads the next frame; `None` at a clean end of the stream.
    async fn read(
        &mut self,
        reader: &mut (impl AsyncRead + Unpin),
        buf: &mut Vec<u8>,
        guard: Option<&parking_lot::Mutex<super::envelope::ReplayGuard>>,
    ) -> Result<Option<wire::Frame>, LinkError> {
        let mut len = [0u8; 4];
        match reader.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_be_bytes(len) as usize;
        let limit = if self.sender.is_none() { MAX_HELLO } else { MAX_FRAME };
        if len > limit {
            return Err(LinkError::TooLarge(len));
        }
        buf.clear();
        // Grows with what arrives: a declared length costs nothing until the bytes come.
        (&mut *reader).take(len as u64).read_to_end(buf).await?;
        if buf.len() != len {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        metrics::counter!("herald_cluster_link_bytes_total", "direction" => "in").increment(len as u64 + 4);
        let opened = self.sealer.open(buf).map_err(rejected)?;
        if opened.kind != Kind::Link {
            return Err(rejected(Rejected::Malformed));
        }
        let now = now_ms();
        if opened.sent_at_ms.abs_diff(now) > self.window_ms {
            return Err(rejected(Rejected::Stale));
        }
        let nonce = super::envelope::nonce_of(buf);
        let (link_id, frame) = opened.payload.split_at_checked(8).ok_or(LinkError::Decode)?;
        let link_id = u64::from_be_bytes(link_id.try_into().expect("8 bytes"));
        match &self.sender {
            None => {
                if nonce != link_id {
                    return Err(LinkError::Hello);
                }
                if let Some(guard) = guard {
                    guard
                        .lock()
                        .check(opened.sender, opened.sent_at_ms, nonce, now)
                        .map_err(rejected)?;
                }
                self.sender = Some(Arc::from(opened.sender));
                self.link_id = link_id;
            }
            Some(sender) => {
                if link_id != self.link_id || nonce != self.seq || **sender != *opened.sender {
                    return Err(rejected(Rejected::Replay));
                }
            }
        }
        self.seq += 1;
        let frame = wire::Frame::decode(frame).map_err(|_| LinkError::Decode)?;
        metrics::counter!("herald_cluster_link_frames_total", "direction" => "in").increment(1);
        Ok(Some(frame))
    }
}

/// Dials `to` with the socket bound to this node's own address (so that per-address firewall
/// rules see the right source).
async fn dial(from: SocketAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if !from.ip().is_unspecified() && from.is_ipv4() == to.is_ipv4() {
        socket.bind(SocketAddr::new(from.ip(), 0))?;
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(to))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn write(stream: &mut (impl AsyncWrite + Unpin), buf: &[u8]) -> std::io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(buf))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    metrics::counter!("herald_cluster_link_bytes_total", "direction" => "out").increment(buf.len() as u64);
    Ok(())
}

/// Keeps this node's link to `peer` up while the peer is a member: dials, says hello, sends
/// this node's interest snapshot, then the queued frames in order. Dials again after a failure.
pub(super) async fn run_outgoing(inner: Arc<Inner>, peer: Arc<Peer>, mut queue: mpsc::UnboundedReceiver<Bytes>) {
    let mut backoff = Duration::from_millis(50);
    let mut failures = 0u32;
    loop {
        let dialed = tokio::select! {
            _ = peer.gone.cancelled() => return,
            dialed = dial(inner.config.bind, peer.addr) => dialed,
        };
        let stream = match dialed {
            Ok(stream) => stream,
            Err(e) => {
                failures += 1;
                if failures == 3 {
                    tracing::warn!(node = %peer.name, address = %peer.addr, error = %e, "cluster: cannot connect a link (retrying)");
                }
                tokio::select! {
                    _ = peer.gone.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        failures = 0;
        let mut sealing = Sealing::new(inner.sealer.clone(), inner.name.clone());
        let mut buf = Vec::new();
        let hello = encode(frame::Body::Hello(wire::Hello {
            node: inner.name.to_string(),
            generation: inner.generation,
            to: peer.name.to_string(),
            raft_id: inner.replica.get().map_or(0, |r| r.id()),
            in_group: inner.replica.get().is_some_and(|r| r.in_group()),
        }));
        sealing.push(&hello, &mut buf);
        {
            // What was queued for an earlier connection is stale; the snapshot taken under
            // the interest lock replaces its interest frames, and deliveries are at most once.
            let local = inner.local.lock();
            while let Ok(frame) = queue.try_recv() {
                peer.queued.fetch_sub(frame.len(), Ordering::Relaxed);
            }
            let snapshot = encode(frame::Body::InterestSnapshot(wire::InterestSnapshot {
                channels: local.snapshot(),
            }));
            sealing.push(&snapshot, &mut buf);
        }
        let (mut reader, mut stream) = stream.into_split();
        if let Err(e) = write(&mut stream, &buf).await {
            tracing::debug!(node = %peer.name, error = %e, "cluster: link failed at hello");
            continue;
        }
        peer.link_up.store(true, Ordering::Relaxed);
        inner.changes.notify_one();
        tracing::info!(node = %peer.name, "cluster: link up");
        let mut frames = Vec::with_capacity(FRAMES_PER_WRITE);
        let result: std::io::Result<()> = loop {
            let mut probe = [0u8; 1];
            let n = tokio::select! {
                _ = peer.gone.cancelled() => {
                    peer.link_up.store(false, Ordering::Relaxed);
                    inner.link_lost(&peer.name);
                    return;
                }
                // The peer never writes on this link: its end closing (the process died, the
                // connection was reset) shows here at once, not at the next failed write.
                closed = reader.read(&mut probe) => {
                    break Err(match closed {
                        Ok(_) => std::io::Error::from(std::io::ErrorKind::ConnectionReset),
                        Err(e) => e,
                    });
                }
                n = queue.recv_many(&mut frames, FRAMES_PER_WRITE) => n,
            };
            if n == 0 {
                return;
            }
            buf.clear();
            for frame in frames.drain(..) {
                peer.queued.fetch_sub(frame.len(), Ordering::Relaxed);
                sealing.push(&frame, &mut buf);
            }
            metrics::counter!("herald_cluster_link_frames_total", "direction" => "out").increment(n as u64);
            if let Err(e) = write(&mut stream, &buf).await {
                break Err(e);
            }
        };
        peer.link_up.store(false, Ordering::Relaxed);
        inner.link_lost(&peer.name);
        if let Err(e) = result {
            tracing::warn!(node = %peer.name, error = %e, "cluster: link lost (dialing again)");
        }
    }
}

/// Accepts links from peers (and `herald cluster status`) until shutdown.
pub(super) async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, from)) => {
                let _ = stream.set_nodelay(true);
                let inner = inner.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_incoming(&inner, stream).await {
                        tracing::debug!(%from, error = %e, "cluster: incoming link closed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_incoming(inner: &Arc<Inner>, stream: TcpStream) -> Result<(), LinkError> {
    let (mut reader, writer) = stream.into_split();
    let mut opening = Opening::new(inner.sealer.clone(), inner.config.replay_window);
    let mut buf = Vec::new();
    let first = tokio::time::timeout(HELLO_TIMEOUT, opening.read(&mut reader, &mut buf, Some(&inner.guard)))
        .await
        .map_err(|_| LinkError::Hello)??;
    let Some(wire::Frame {
        body: Some(frame::Body::Hello(hello)),
    }) = first
    else {
        return Err(LinkError::Hello);
    };
    if Some(hello.node.as_str()) != opening.sender.as_deref() {
        return Err(LinkError::Hello);
    }
    if hello.to.is_empty() {
        return serve_admin(inner, reader, writer, opening, buf).await;
    }
    if *hello.to != *inner.name {
        tracing::warn!(from = %hello.node, to = %hello.to, "cluster: a link for another node reached this one (stale address?)");
        return Err(LinkError::Hello);
    }
    let name: Arc<str> = Arc::from(hello.node.as_str());
    let generation = hello.generation;
    if hello.raft_id != 0 {
        inner.raft_ids.lock().insert(name.clone(), hello.raft_id);
    }
    if hello.in_group {
        inner.saw_group.get_or_init(|| name.clone());
    }
    // A peer's link (re)connected: what it had queued for an earlier connection is gone.
    inner.changes.notify_one();
    loop {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, opening.read(&mut reader, &mut buf, None)).await {
            Err(_) => return Err(LinkError::Idle),
            Ok(frame) => frame?,
        };
        let Some(wire::Frame { body: Some(body) }) = frame else {
            return Ok(());
        };
        dispatch(inner, &name, generation, body);
    }
}

/// Acts on one frame from the peer `name`.
fn dispatch(inner: &Arc<Inner>, name: &Arc<str>, generation: u64, body: frame::Body) {
    match body {
        frame::Body::Hello(_) => {}
        frame::Body::InterestSnapshot(snapshot) => {
            let mut remote = inner.remote.write();
            remote.replace(name, generation, snapshot.channels);
            metrics::gauge!("herald_cluster_interest_entries", "side" => "remote").set(remote.entries() as f64);
        }
        frame::Body::InterestDelta(delta) => {
            let mut remote = inner.remote.write();
            remote.apply(name, generation, &delta.gained, &delta.lost);
            metrics::gauge!("herald_cluster_interest_entries", "side" => "remote").set(remote.entries() as f64);
        }
        frame::Body::InterestDigest(digest) => {
            let knows = inner.replica.get().is_some_and(|r| r.leads() || r.leader().is_some());
            if !knows && !digest.leader.is_empty() && *digest.leader != *inner.name {
                *inner.leader_hint.lock() = Some(Arc::from(digest.leader.as_str()));
            }
            let digest = super::interest::Digest {
                count: digest.count,
                hash: digest.hash,
            };
            if !inner.remote.read().matches(name, generation, digest) {
                tracing::debug!(node = %name, "cluster: interest copy out of date, asking for a snapshot");
                metrics::counter!("herald_cluster_interest_resyncs_total").increment(1);
                if let Some(peer) = inner.peers.read().get(name) {
                    peer.send(encode(frame::Body::ResendInterest(wire::ResendInterest {})));
                }
            }
        }
        frame::Body::ResendInterest(_) => {
            // Under the interest lock, as for a link's first snapshot: ordered with the deltas.
            let local = inner.local.lock();
            if let Some(peer) = inner.peers.read().get(name) {
                peer.send(encode(frame::Body::InterestSnapshot(wire::InterestSnapshot {
                    channels: local.snapshot(),
                })));
            }
        }
        frame::Body::Deliver(deliver) => {
            if let (Some(push), Some(local)) = (deliver.push, inner.local_node()) {
                local.deliver(push, deliver.epoch);
            }
        }
        frame::Body::Request(request) => {
            let inner = inner.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let body = answer(&inner, request.body).await;
                if let Some(peer) = inner.peers.read().get(&name) {
                    peer.send(encode(frame::Body::Response(wire::Response {
                        id: request.id,
                        body: Some(body),
                    })));
                }
            });
        }
        frame::Body::Response(response) => {
            if let (Some((_, waiter)), Some(body)) = (inner.pending.lock().remove(&response.id), response.body) {
                let _ = waiter.send(body);
            }
        }
    }
}

async fn answer(inner: &Arc<Inner>, body: Option<request::Body>) -> response::Body {
    match body {
        None => response::Body::Error("empty request".to_owned()),
        Some(request::Body::Status(_)) => response::Body::Status(inner.status()),
        Some(request::Body::Raft(rpc)) => match inner.replica.get() {
            Some(replica) => match replica.handle(rpc).await {
                Ok(bytes) => response::Body::Raft(bytes.into()),
                Err(e) => response::Body::Error(e),
            },
            None => response::Body::Error("no replica yet".to_owned()),
        },
        Some(request::Body::Replicate(bytes)) => {
            let Some(replica) = inner.replica.get() else {
                return response::Body::NotLeader(String::new());
            };
            let command = match postcard::from_bytes(&bytes) {
                Ok(command) => command,
                Err(e) => return response::Body::Error(format!("undecodable command: {e}")),
            };
            match replica.propose(command, inner.config.forward_timeout).await {
                Ok(outcome) => match postcard::to_stdvec(&outcome) {
                    Ok(bytes) => response::Body::Outcome(bytes.into()),
                    Err(e) => response::Body::Error(e.to_string()),
                },
                Err(super::raft::ProposeError::NotLeader(leader)) => {
                    response::Body::NotLeader(leader.unwrap_or_default())
                }
                Err(super::raft::ProposeError::Failed(e)) => response::Body::Error(e),
            }
        }
        Some(request::Body::Stream(query)) => answer_stream(inner, query).await,
        Some(body) => match inner.local_node() {
            Some(local) => local.answer(body).await,
            None => response::Body::Error("node not ready".to_owned()),
        },
    }
}

/// An admin connection (`herald cluster status`): requests answered on the same connection.
async fn serve_admin(
    inner: &Arc<Inner>,
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut opening: Opening,
    mut buf: Vec<u8>,
) -> Result<(), LinkError> {
    let mut sealing = Sealing::new(inner.sealer.clone(), inner.name.clone());
    let mut out = Vec::new();
    // The answers' "hello" is an empty frame: it fixes the link id of this direction.
    sealing.push(&encode(frame::Body::ResendInterest(wire::ResendInterest {})), &mut out);
    loop {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, opening.read(&mut reader, &mut buf, None)).await {
            Err(_) => return Err(LinkError::Idle),
            Ok(frame) => frame?,
        };
        let Some(wire::Frame {
            body: Some(frame::Body::Request(request)),
        }) = frame
        else {
            return Ok(());
        };
        let body = answer(inner, request.body).await;
        sealing.push(
            &encode(frame::Body::Response(wire::Response {
                id: request.id,
                body: Some(body),
            })),
            &mut out,
        );
        write(&mut writer, &out).await?;
        out.clear();
    }
}

/// Asks the node at `address` one question as an admin client holding the cluster secret
/// (`herald cluster status`).
pub(super) async fn ask_as_admin(
    address: SocketAddr,
    secret: &str,
    window: Duration,
    body: request::Body,
) -> Result<response::Body, LinkError> {
    let sealer = Sealer::new(secret);
    let stream = dial(SocketAddr::from(([0, 0, 0, 0], 0)), address).await?;
    let (mut reader, mut writer) = stream.into_split();
    let mut sealing = Sealing::new(sealer.clone(), Arc::from(format!("admin-{}", std::process::id())));
    let mut out = Vec::new();
    let hello = encode(frame::Body::Hello(wire::Hello {
        node: sealing.sender.to_string(),
        generation: now_ms(),
        to: String::new(),
        raft_id: 0,
        in_group: false,
    }));
    sealing.push(&hello, &mut out);
    sealing.push(
        &encode(frame::Body::Request(wire::Request {
            id: 1,
            body: Some(body),
        })),
        &mut out,
    );
    write(&mut writer, &out).await?;
    let mut opening = Opening::new(sealer, window);
    let mut buf = Vec::new();
    // The node's opening frame, then the answer.
    for _ in 0..2 {
        let frame = tokio::time::timeout(super::REQUEST_TIMEOUT, opening.read(&mut reader, &mut buf, None))
            .await
            .map_err(|_| LinkError::Idle)??;
        match frame {
            Some(wire::Frame {
                body: Some(frame::Body::Response(response)),
            }) if response.id == 1 => return response.body.ok_or(LinkError::Decode),
            Some(_) => continue,
            None => break,
        }
    }
    Err(LinkError::Hello)
}

/// Answers a read of a stream if this node leads (after making sure it sees everything
/// committed), else names the leader.
pub(super) async fn answer_stream(inner: &Arc<Inner>, query: wire::StreamQuery) -> response::Body {
    let Some(replica) = inner.replica.get() else {
        return response::Body::NotLeader(String::new());
    };
    if !replica.leads() {
        return response::Body::NotLeader(replica.leader().unwrap_or_default());
    }
    match replica.linearize(inner.config.forward_timeout).await {
        Ok(()) => {}
        Err(super::raft::ProposeError::NotLeader(leader)) => {
            return response::Body::NotLeader(leader.unwrap_or_default())
        }
        Err(super::raft::ProposeError::Failed(e)) => return response::Body::Error(e),
    }
    match inner.local_node() {
        Some(local) => local.answer(request::Body::Stream(query)).await,
        None => response::Body::Error("node not ready".to_owned()),
    }
}
