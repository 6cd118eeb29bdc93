//! The broker's side of the cluster: what peers ask of this node ([`Local`]), and the merging
//! of their answers into presence, channels and info.
//!
//! Soft state (presence, channels, node figures) belongs to the node that holds the
//! connections, so a query asks every node that may have some and merges the answers. A peer
//! that does not answer within [`crate::cluster::REQUEST_TIMEOUT`] is left out of the answer,
//! logged and counted (`herald_cluster_partial_answers_total`): a slow node makes the answer
//! incomplete, never late. A node declared dead is not asked, so its entries disappear with it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;

use super::{retention, Broker, BrokerError, History, NodeId, NodeInfo, PublishResult, Recovery};
use crate::cluster::raft::types::{Command, Entry, Outcome};
use crate::cluster::wire::{self, request, response, stream_query, user_command};
use crate::cluster::{AskError, Cluster, Local};
use crate::hub::Prepared;
use crate::protocol::proto::{ClientInfo, Publication, Push};
use crate::protocol::ErrorCode;
use crate::session::emulated::Handover;
use crate::store::{Append, Position};

/// A peer's answer to an `/emulation` hand-over whose session stayed busy.
const BUSY: &str = "session busy";

/// The position check runs this long after a change of membership or links, once the links
/// are up again and deliveries in flight have landed.
const CHECK_AFTER_CHANGE: Duration = Duration::from_secs(1);
/// The position check also runs this often without any change.
const CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// Publications asked of the leader per channel and request, and requests per channel and check.
const CHECK_PAGE: i64 = 100;
const CHECK_PAGES: usize = 10;
/// How long a publication the leader has may take to arrive here before the position check
/// counts it as missed.
const IN_FLIGHT_GRACE: Duration = Duration::from_millis(250);
/// A check that could not ask the leader is tried again after this long.
const CHECK_RETRY: Duration = Duration::from_secs(2);

/// Why an `/emulation` request could not be handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmulationError {
    /// No node of that name (in the cluster, or this one).
    UnknownNode,
    /// The node holding the session did not answer.
    Unreachable,
}

impl Broker {
    /// Joins the node to its cluster: the cluster delivers peers' pushes and asks questions
    /// through this broker, and the broker routes and asks through the cluster. Done once,
    /// before clients are accepted.
    pub fn attach_cluster(self: &Arc<Self>, cluster: Arc<Cluster>) {
        let local: Arc<dyn Local> = self.clone();
        cluster.attach(Arc::downgrade(&local));
        let _ = self.cluster.set(cluster);
    }

    /// In a cluster, until `shutdown`: delivers the publications this node never received. A
    /// delivery can be lost with a link that reconnects or a member that is declared down and
    /// comes back, and no subscriber would know of a gap at the tail of a channel until its next
    /// publication (a gap before a later publication is seen by each subscription, 2500). So
    /// after every change of membership or links, and every [`CHECK_INTERVAL`], each channel
    /// with history that this node delivers to is compared with the leader's stream, and what is
    /// missing is read from the leader's history and delivered in order (subscribers skip what
    /// they already have). Counted in `herald_cluster_gap_publications_total`.
    pub async fn run_position_checks(&self, shutdown: tokio_util::sync::CancellationToken) {
        let Some(cluster) = self.cluster().cloned() else {
            return;
        };
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // Whether the last check could not ask the leader (none known yet, or unreachable):
        // then it is tried again soon, not at the next change or tick.
        let mut unfinished = false;
        loop {
            let retry = async {
                if unfinished {
                    tokio::time::sleep(CHECK_RETRY).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                _ = retry => {}
                _ = cluster.changed() => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(CHECK_AFTER_CHANGE) => {}
                    }
                }
            }
            unfinished = !self.check_positions(&cluster).await;
        }
    }

    /// One position check over every channel this node has delivered publications of. What
    /// the leader has beyond a channel's last delivered position may still be on its way here
    /// (a busy channel always has some in flight): the first page of every channel is asked
    /// first, then, after [`IN_FLIGHT_GRACE`], only what has still not arrived is delivered.
    ///
    /// Stops at the first channel the leader could not be asked about (a check made during an
    /// election would otherwise wait out the forward timeout once per channel); false then.
    async fn check_positions(&self, cluster: &Cluster) -> bool {
        let channels: Vec<(Arc<str>, Arc<str>, u64)> = self
            .delivered
            .lock()
            .iter()
            .map(|(channel, (epoch, offset))| (channel.clone(), epoch.clone(), *offset))
            .collect();
        let mut behind = Vec::new();
        let mut finished = true;
        for (channel, epoch, offset) in channels {
            match self.page_after(cluster, &channel, &epoch, offset).await {
                Ok(Some(page)) => behind.push((channel, epoch, page)),
                Ok(None) => {}
                Err(()) => {
                    finished = false;
                    break;
                }
            }
        }
        if behind.is_empty() {
            return finished;
        }
        tokio::time::sleep(IN_FLIGHT_GRACE).await;
        for (channel, epoch, mut page) in behind {
            let mut missed = 0u64;
            for pages in 1.. {
                let full = page.len() as i64 >= CHECK_PAGE;
                let last = page.last().map_or(0, |p| p.offset);
                missed += self.deliver_missed(&channel, &epoch, page);
                if !full || pages >= CHECK_PAGES {
                    break;
                }
                match self.page_after(cluster, &channel, &epoch, last).await {
                    Ok(Some(next)) => page = next,
                    Ok(None) => break,
                    Err(()) => {
                        finished = false;
                        break;
                    }
                }
            }
            if missed > 0 {
                metrics::counter!("herald_cluster_gap_publications_total").increment(missed);
                tracing::info!(channel = %channel, publications = missed, "cluster: delivered publications this node had missed, from the leader's history");
            }
        }
        finished
    }

    /// The leader's publications of `channel` after `offset` in `epoch` (at most [`CHECK_PAGE`]);
    /// `None` when there are none or the stream has another epoch (it was reset: its
    /// subscribers learn it from its next publication); an error when the leader could not be
    /// asked.
    async fn page_after(
        &self,
        cluster: &Cluster,
        channel: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<Option<Vec<Publication>>, ()> {
        let since = Some((epoch.to_owned(), offset));
        match history_on_leader(cluster, channel, CHECK_PAGE, since, false).await {
            Ok(page) if page.epoch == epoch && !page.publications.is_empty() => Ok(Some(page.publications)),
            Ok(_) => Ok(None),
            Err(BrokerError::Replicated(e)) => {
                tracing::debug!(channel = %channel, error = %e, "cluster: position check could not ask the leader");
                Err(())
            }
            // This channel's read failed (its position is gone, say): the others go on.
            Err(e) => {
                tracing::debug!(channel = %channel, error = %e, "cluster: position check failed");
                Ok(None)
            }
        }
    }

    /// Delivers, in order, the publications of `page` that this node has not delivered yet;
    /// how many.
    fn deliver_missed(&self, channel: &Arc<str>, epoch: &Arc<str>, page: Vec<Publication>) -> u64 {
        let mut missed = 0;
        for publication in page {
            let behind = self
                .delivered
                .lock()
                .get(channel)
                .is_some_and(|(e, last)| e == epoch && *last < publication.offset);
            if behind {
                missed += 1;
                let push = Prepared::publication(channel, epoch.clone(), publication);
                self.deliver_once(channel, &push);
            }
        }
        missed
    }

    /// Registers a connected session unless its user already has `limit` connections (0: no
    /// limit). In a cluster the user's connections on every node count: each live peer is asked
    /// (a peer that does not answer in time counts 0, and two connects racing on two nodes may
    /// both pass, so the limit can be exceeded by the connects in flight at once).
    pub async fn register_session(
        &self,
        user: &str,
        session: Arc<crate::session::SessionShared>,
        limit: usize,
    ) -> bool {
        let Some(cluster) = self.cluster.get().filter(|_| limit > 0) else {
            return self.sessions.add(user, session, limit);
        };
        let mut elsewhere = 0usize;
        for (_, answer) in cluster.ask_all(request::Body::UserConnections(user.to_owned())).await {
            match answer {
                Ok(response::Body::Count(n)) => elsewhere += n as usize,
                Ok(_) => {}
                Err(e) => partial("user connections", &e),
            }
        }
        if elsewhere >= limit {
            return false;
        }
        self.sessions.add(user, session, limit - elsewhere)
    }

    /// The cluster this node belongs to, if any.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }
}

impl Local for Broker {
    fn deliver(&self, push: Push, epoch: String) {
        let channel = push.channel.clone();
        let push = Prepared::from_push(push, Arc::from(epoch));
        // Local subscribers only: a peer's push is never routed on.
        self.deliver_once(&channel, &push);
    }

    fn answer(&self, request: request::Body) -> Pin<Box<dyn Future<Output = response::Body> + Send + '_>> {
        Box::pin(async move {
            match request {
                request::Body::Presence(channel) => response::Body::Presence(wire::Presence {
                    clients: self.hub.presence(&channel),
                }),
                request::Body::Channels(_) => response::Body::Channels(wire::Channels {
                    channels: self
                        .hub
                        .channels()
                        .into_iter()
                        .map(|(name, count)| (name, count as u64))
                        .collect(),
                }),
                request::Body::Info(_) => {
                    let info = self.local_info();
                    response::Body::Info(wire::NodeInfo {
                        id: info.id.to_string(),
                        name: info.name,
                        version: info.version,
                        clients: info.clients as u64,
                        users: info.users as u64,
                        channels: info.channels as u64,
                        subscriptions: info.subscriptions as u64,
                        uptime_ms: info.uptime.as_millis() as u64,
                    })
                }
                request::Body::UserCommand(command) => {
                    let client = (!command.client.is_empty()).then_some(command.client.as_str());
                    if let Some(action) = &command.action {
                        self.act_on_local_user(&command.user, client, action);
                    }
                    response::Body::Done(wire::Done {})
                }
                request::Body::Stream(query) => response::Body::Stream(self.answer_stream(query).await),
                request::Body::Emulation(emulation) => {
                    // Within the asker's wait for the answer.
                    let wait = self
                        .config
                        .http
                        .body_read_timeout
                        .min(crate::cluster::REQUEST_TIMEOUT / 2);
                    let handover = self
                        .emulated
                        .deliver(&emulation.session, emulation.data, emulation.binary, wait)
                        .await;
                    match handover {
                        Handover::Done => response::Body::Done(wire::Done {}),
                        Handover::Busy => response::Body::Error(BUSY.into()),
                    }
                }
                request::Body::UserConnections(user) => {
                    response::Body::Count(self.sessions.of_user(&user, None).len() as u64)
                }
                request::Body::Status(_) | request::Body::Raft(_) | request::Body::Replicate(_) => {
                    response::Body::Error("answered by the cluster".to_owned())
                }
            }
        })
    }
}

fn partial(what: &'static str, error: &AskError) {
    metrics::counter!("herald_cluster_partial_answers_total", "query" => what).increment(1);
    tracing::warn!(error = %error, "{what}: answer without this peer's part");
}

/// The presence entries of the peers that have subscribers of `channel`.
pub(super) async fn presence_of_peers(cluster: &Cluster, channel: &str) -> HashMap<String, ClientInfo> {
    let peers = cluster.interested(channel);
    let mut presence = HashMap::new();
    if peers.is_empty() {
        return presence;
    }
    for (_, answer) in cluster
        .ask_each(&peers, request::Body::Presence(channel.to_owned()))
        .await
    {
        match answer {
            Ok(response::Body::Presence(p)) => presence.extend(p.clients),
            Ok(_) => {}
            Err(e) => partial("presence", &e),
        }
    }
    presence
}

pub(super) async fn channels_of_peers(cluster: &Cluster) -> Vec<(String, usize)> {
    let mut channels = Vec::new();
    for (_, answer) in cluster.ask_all(request::Body::Channels(wire::ChannelsQuery {})).await {
        match answer {
            Ok(response::Body::Channels(c)) => {
                channels.extend(c.channels.into_iter().map(|(name, n)| (name, n as usize)))
            }
            Ok(_) => {}
            Err(e) => partial("channels", &e),
        }
    }
    channels
}

pub(super) async fn info_of_peers(cluster: &Cluster) -> Vec<NodeInfo> {
    let mut nodes = Vec::new();
    for (_, answer) in cluster.ask_all(request::Body::Info(wire::InfoQuery {})).await {
        match answer {
            Ok(response::Body::Info(info)) => nodes.push(NodeInfo {
                id: NodeId::named(&info.id),
                name: info.name,
                version: info.version,
                clients: info.clients as usize,
                users: info.users as usize,
                channels: info.channels as usize,
                subscriptions: info.subscriptions as usize,
                uptime: Duration::from_millis(info.uptime_ms),
            }),
            Ok(_) => {}
            Err(e) => partial("info", &e),
        }
    }
    nodes
}

/// Sends a user command to every peer (the user's connections may be anywhere).
pub(super) async fn user_command_to_peers(
    cluster: &Cluster,
    user: &str,
    client: Option<&str>,
    action: user_command::Action,
) {
    let command = wire::UserCommand {
        user: user.to_owned(),
        client: client.unwrap_or_default().to_owned(),
        action: Some(action),
    };
    for (_, answer) in cluster.ask_all(request::Body::UserCommand(command)).await {
        if let Err(e) = answer {
            partial("user command", &e);
        }
    }
}

impl Broker {
    /// Hands an `/emulation` request to the session it names: on this node, or forwarded over
    /// the cluster link to the node named in it, so that a load balancer without sticky
    /// sessions may send it anywhere.
    pub async fn hand_over_emulation(
        &self,
        node: &str,
        session: &str,
        data: bytes::Bytes,
        binary: bool,
    ) -> Result<Handover, EmulationError> {
        if node == self.node.as_str() {
            let wait = self.config.http.body_read_timeout;
            return Ok(self.emulated.deliver(session, data, binary, wait).await);
        }
        let cluster = self.cluster.get().ok_or(EmulationError::UnknownNode)?;
        let peer = cluster
            .peers()
            .into_iter()
            .find(|peer| &**peer == node)
            .ok_or(EmulationError::UnknownNode)?;
        let request = wire::Emulation {
            session: session.to_owned(),
            data,
            binary,
        };
        match cluster.ask(&peer, request::Body::Emulation(request)).await {
            Ok(response::Body::Done(_)) => Ok(Handover::Done),
            Ok(response::Body::Error(e)) if e == BUSY => Ok(Handover::Busy),
            Ok(_) | Err(_) => Err(EmulationError::Unreachable),
        }
    }

    /// Reads a stream from this node's store, for a peer (this node leads the log).
    async fn answer_stream(&self, query: wire::StreamQuery) -> wire::StreamAnswer {
        let channel = query.channel.as_str();
        let result = match query.query {
            Some(stream_query::Query::Position(_)) => self.local_position(channel).await.map(|p| wire::StreamAnswer {
                epoch: p.epoch.to_string(),
                offset: p.offset,
                ..Default::default()
            }),
            Some(stream_query::Query::History(h)) => {
                let since = h.has_since.then_some((h.since_epoch, h.since_offset));
                self.local_history(channel, h.limit, since, h.reverse)
                    .await
                    .map(|history| wire::StreamAnswer {
                        epoch: history.epoch,
                        offset: history.offset,
                        publications: history.publications,
                        ..Default::default()
                    })
            }
            Some(stream_query::Query::Recover(r)) => {
                let position = Position {
                    epoch: Arc::from(r.position_epoch.as_str()),
                    offset: r.position_offset,
                };
                match self.options(channel) {
                    Ok(options) => {
                        let options = options.clone();
                        self.local_recover(channel, &options, &r.epoch, r.offset, &position)
                            .await
                            .map(|recovery| wire::StreamAnswer {
                                publications: recovery.publications,
                                recovered: recovery.recovered,
                                ..Default::default()
                            })
                    }
                    Err(e) => Err(e),
                }
            }
            None => Err(BrokerError::BadRequest("empty stream query")),
        };
        result.unwrap_or_else(|e| wire::StreamAnswer {
            error_code: e.code().code,
            error: e.to_string(),
            ..Default::default()
        })
    }
}

/// A failed read's error, as the leader gave it.
fn read_error(answer: &wire::StreamAnswer) -> Option<BrokerError> {
    if answer.error_code == 0 {
        return None;
    }
    Some(match answer.error_code {
        c if c == ErrorCode::UNKNOWN_CHANNEL.code => BrokerError::UnknownChannel,
        c if c == ErrorCode::NOT_AVAILABLE.code => BrokerError::NotAvailable,
        c if c == ErrorCode::UNRECOVERABLE_POSITION.code => BrokerError::UnrecoverablePosition,
        c if c == ErrorCode::BAD_REQUEST.code => BrokerError::BadRequest("refused by the leader"),
        _ => BrokerError::Replicated(crate::cluster::ReplicateError::Failed(answer.error.clone())),
    })
}

async fn read(cluster: &Cluster, channel: &str, query: stream_query::Query) -> Result<wire::StreamAnswer, BrokerError> {
    let answer = cluster
        .read(wire::StreamQuery {
            channel: channel.to_owned(),
            query: Some(query),
        })
        .await?;
    match read_error(&answer) {
        Some(e) => Err(e),
        None => Ok(answer),
    }
}

pub(super) async fn position_on_leader(cluster: &Cluster, channel: &str) -> Result<Position, BrokerError> {
    let answer = read(cluster, channel, stream_query::Query::Position(wire::PositionQuery {})).await?;
    Ok(Position {
        epoch: Arc::from(answer.epoch.as_str()),
        offset: answer.offset,
    })
}

pub(super) async fn recover_on_leader(
    cluster: &Cluster,
    channel: &str,
    epoch: &str,
    offset: u64,
    position: &Position,
) -> Result<Recovery, BrokerError> {
    let query = wire::RecoverQuery {
        epoch: epoch.to_owned(),
        offset,
        position_epoch: position.epoch.to_string(),
        position_offset: position.offset,
    };
    let answer = read(cluster, channel, stream_query::Query::Recover(query)).await?;
    Ok(Recovery {
        publications: answer.publications,
        recovered: answer.recovered,
    })
}

pub(super) async fn history_on_leader(
    cluster: &Cluster,
    channel: &str,
    limit: i64,
    since: Option<(String, u64)>,
    reverse: bool,
) -> Result<History, BrokerError> {
    let (has_since, (since_epoch, since_offset)) = match since {
        Some(since) => (true, since),
        None => (false, (String::new(), 0)),
    };
    let query = wire::HistoryQuery {
        limit,
        has_since,
        since_epoch,
        since_offset,
        reverse,
    };
    let answer = read(cluster, channel, stream_query::Query::History(query)).await?;
    Ok(History {
        publications: answer.publications,
        epoch: answer.epoch,
        offset: answer.offset,
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Appends publications through the replicated log, as one entry; a result per append.
pub(super) async fn replicate_appends(
    cluster: &Cluster,
    appends: Vec<Append>,
) -> Vec<Result<PublishResult, BrokerError>> {
    let count = appends.len();
    let versions: Vec<(u64, String)> = appends
        .iter()
        .map(|a| {
            a.version
                .as_ref()
                .map_or((0, String::new()), |v| (v.version, v.epoch.clone()))
        })
        .collect();
    let entries = appends
        .into_iter()
        .map(|a| Entry {
            channel: a.channel,
            publication: a.publication.encode_to_vec().into(),
            history: a.history.map(|r| (r.size, millis(r.ttl))),
            idempotency: a.idempotency.map(|i| (i.key, millis(i.window))),
            time_ms: a.stamp.time_ms,
            epoch: a.stamp.epoch,
        })
        .collect();
    let failed = |e: BrokerError| (0..count).map(|_| Err(clone_error(&e))).collect();
    // Unversioned publishes keep the command every node understands.
    let command = match versions.iter().any(|(version, _)| *version > 0) {
        true => Command::PublishVersioned(entries, versions),
        false => Command::Publish(entries),
    };
    match cluster.replicate(command).await {
        Ok(Outcome::Published(results)) if results.len() == count => results
            .into_iter()
            .map(|r| match r {
                Ok(appended) => Ok(PublishResult {
                    offset: appended.offset,
                    epoch: appended.epoch,
                }),
                Err(e) => Err(BrokerError::Store(crate::store::StoreError::Failed(e))),
            })
            .collect(),
        Ok(Outcome::Failed(e)) => failed(BrokerError::Store(crate::store::StoreError::Failed(e))),
        Ok(other) => failed(BrokerError::Replicated(crate::cluster::ReplicateError::Failed(
            format!("unexpected outcome {other:?}"),
        ))),
        Err(e) => failed(BrokerError::Replicated(e)),
    }
}

fn clone_error(e: &BrokerError) -> BrokerError {
    match e {
        BrokerError::Replicated(r) => BrokerError::Replicated(r.clone()),
        other => BrokerError::Store(crate::store::StoreError::Failed(other.to_string())),
    }
}

/// Retention through the replicated log: the leader proposes each stream's trim (judged at
/// its time, so every replica removes the same records). Other nodes do nothing.
pub(super) async fn retain_replicated(broker: &Broker, cluster: &Cluster) -> Result<usize, BrokerError> {
    if !cluster.leads() {
        return Ok(0);
    }
    let now = crate::store::now_ms();
    let mut removed = 0;
    for channel in broker.store.channels().await? {
        let Ok(options) = broker.options(&channel) else {
            continue;
        };
        let history = options
            .history_enabled()
            .then(|| retention(options))
            .map(|r| (r.size, millis(r.ttl)));
        let command = Command::Trim {
            channel,
            history,
            meta_ttl_ms: millis(options.history_meta_ttl),
            now_ms: now,
        };
        if let Outcome::Count(n) = cluster.replicate(command).await? {
            removed += n;
        }
    }
    if let Outcome::Count(n) = cluster.replicate(Command::ExpireIdempotency { now_ms: now }).await? {
        removed += n;
    }
    metrics::counter!("herald_retention_removed_total").increment(removed as u64);
    Ok(removed)
}
