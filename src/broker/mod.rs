//! The node's engine: the one API that sessions, the HTTP API and (later) cluster links call.
//!
//! Promises:
//! - A publish that returns `Ok` on a channel with history is appended to its stream and durable
//!   per `storage.durability`; its `(epoch, offset)` names it and nothing else, ever.
//! - Per channel, subscribers receive publications in offset order; a subscriber that cannot be
//!   kept contiguous is told (unsubscribe 2500 / disconnect 3010), never silently skipped.
//! - Presence belongs to live subscriptions: an entry disappears with its connection.
//!
//! Callers never assume the channel's owner is this node: today it always is; the cluster will
//! route inside these methods without changing their signatures. The HTTP API and sessions reach
//! the hub, the store and other sessions only through these methods.
//!
//! - [`fanout`]: the one way a push reaches subscribers, and the step from store commits to it.
//! - [`users`]: server-API calls that target a user's connections.
//! - [`node`]: this node's id and figures.
//! - [`registry`]: the node's connected sessions.
//! - `nodes`: the broker's side of the cluster: what peers ask of this node, and the merging of
//!   their answers into presence, channels and info.

pub mod fanout;
mod node;
mod nodes;
mod registry;
mod users;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;

use crate::auth::ChannelName;
use crate::config::{ChannelOptions, Config};
use crate::hub::{Deliver, Hub, Interest, Prepared};
use crate::protocol::proto::{ClientInfo, Publication};
use crate::protocol::ErrorCode;
use crate::store::{Append, Appended, Idempotency, Position, ReadRange, Retention, Stamp, Store, StoreError};

pub use fanout::{commit_queue, CommitQueue};
pub use node::{NodeId, NodeInfo};
pub use nodes::EmulationError;
pub use registry::Registry;
pub use users::UserTarget;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("unknown channel")]
    UnknownChannel,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("not available")]
    NotAvailable,
    #[error("unrecoverable position")]
    UnrecoverablePosition,
    /// The stream changed epoch during every attempt to read it (history removed again and
    /// again): a temporary error, the client may retry.
    #[error("the stream kept changing while it was read")]
    StreamChanging,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The replicated log could not take or answer the call (no quorum, leader lost).
    #[error("{0}")]
    Replicated(#[from] crate::cluster::ReplicateError),
}

impl BrokerError {
    /// The protocol code for this error: the one place broker errors become codes.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownChannel => ErrorCode::UNKNOWN_CHANNEL,
            Self::BadRequest(_) => ErrorCode::BAD_REQUEST,
            Self::NotAvailable => ErrorCode::NOT_AVAILABLE,
            Self::UnrecoverablePosition => ErrorCode::UNRECOVERABLE_POSITION,
            Self::StreamChanging => ErrorCode::INTERNAL,
            Self::Store(e) => {
                tracing::error!(error = %e, "store error");
                ErrorCode::INTERNAL
            }
            // Logged where it happened (the cluster names the cause once).
            Self::Replicated(_) => ErrorCode::INTERNAL,
        }
    }
}

impl From<ErrorCode> for BrokerError {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::UNKNOWN_CHANNEL => Self::UnknownChannel,
            ErrorCode::NOT_AVAILABLE => Self::NotAvailable,
            _ => Self::BadRequest("invalid channel"),
        }
    }
}

/// What to publish.
#[derive(Debug, Clone, Default)]
pub struct PublishRequest {
    pub channel: String,
    pub data: Bytes,
    /// The publishing client, for client publications.
    pub info: Option<ClientInfo>,
    pub tags: HashMap<String, String>,
    pub skip_history: bool,
    /// A repeat within `storage.idempotency_window` returns the first result, delivers nothing.
    pub idempotency_key: Option<String>,
    /// May go out as a fossil delta to subscribers that negotiated one (API `delta`).
    pub delta: bool,
    /// Appended only when newer than the channel's last version (API `version`; channels with
    /// history only, as in the reference server).
    pub version: Option<crate::store::Version>,
}

/// A publication's position; empty for channels without history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishResult {
    pub offset: u64,
    pub epoch: String,
}

/// Where one publication goes (see [`Broker::route`]).
enum Route {
    Append(Box<Append>),
    Deliver(String, Arc<Prepared>),
}

/// The answer to a publish that went through the store (for a repeated idempotency key, the
/// first publish's position).
fn published(appended: Appended) -> PublishResult {
    PublishResult {
        offset: appended.position.offset,
        epoch: appended.position.epoch.to_string(),
    }
}

/// How often `history` reads a stream that changes epoch under it before giving up.
const HISTORY_ATTEMPTS: usize = 3;

/// A page of history and the stream's current position.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub publications: Vec<Publication>,
    pub epoch: String,
    pub offset: u64,
}

/// The result of a recovery attempt.
pub struct Recovery {
    pub publications: Vec<Publication>,
    pub recovered: bool,
}

/// A stream's (epoch, offset).
type StreamPosition = (Arc<str>, u64);

pub struct Broker {
    config: Arc<Config>,
    node: NodeId,
    hub: Arc<Hub>,
    store: Store,
    sessions: Registry,
    started: Instant,
    /// Set once at startup when the config has `[cluster]`.
    cluster: OnceLock<Arc<crate::cluster::Cluster>>,
    /// The application backend's proxies, when some are configured (docs/proxies.md).
    proxies: Option<Arc<crate::proxy::Proxies>>,
    /// This node's HTTP-streaming and SSE sessions, which `/emulation` requests reach, also
    /// from peers.
    emulated: Arc<crate::session::emulated::EmulatedSessions>,
    /// In a cluster: the last position of each channel with history handed to local
    /// subscribers (see [`Broker::deliver_once`]).
    delivered: parking_lot::Mutex<HashMap<Arc<str>, StreamPosition>>,
}

impl Broker {
    /// A broker over `store`, whose commit hook must feed the queue given to
    /// [`Broker::spawn_fan_out`] (see [`commit_queue`]).
    pub fn new(config: Arc<Config>, node: NodeId, hub: Arc<Hub>, store: Store) -> Self {
        let proxies = crate::proxy::Proxies::from_config(&config);
        Self {
            config,
            node,
            hub,
            store,
            sessions: Registry::default(),
            started: Instant::now(),
            cluster: OnceLock::new(),
            proxies,
            emulated: Default::default(),
            delivered: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// This node's emulated sessions (see [`Broker::hand_over_emulation`]).
    pub fn emulated(&self) -> &Arc<crate::session::emulated::EmulatedSessions> {
        &self.emulated
    }

    /// The proxies to the application backend; `None` when none is enabled.
    pub fn proxies(&self) -> Option<&Arc<crate::proxy::Proxies>> {
        self.proxies.as_ref()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node
    }

    /// The node's connected sessions, for sessions to register themselves.
    pub(crate) fn sessions(&self) -> &Registry {
        &self.sessions
    }

    /// The options of the channel's namespace; 102 for an unknown namespace, 107 for a bad name.
    pub fn options(&self, channel: &str) -> Result<&ChannelOptions, BrokerError> {
        let name = ChannelName::parse(channel).map_err(|_| BrokerError::BadRequest("invalid channel name"))?;
        self.config.namespace(name.namespace).ok_or(BrokerError::UnknownChannel)
    }

    /// Publishes to a channel: appended to its stream when it keeps history, then delivered to
    /// every subscriber.
    pub async fn publish(&self, request: PublishRequest) -> Result<PublishResult, BrokerError> {
        match self.route(request)? {
            Route::Append(a) => match self.cluster.get() {
                Some(cluster) => {
                    let mut results = nodes::replicate_appends(cluster, vec![*a]).await;
                    results.pop().unwrap_or(Err(BrokerError::StreamChanging))
                }
                None => Ok(published(self.store.append_entry(*a).await?)),
            },
            Route::Deliver(channel, push) => {
                self.deliver(&channel, push);
                Ok(PublishResult::default())
            }
        }
    }

    /// Publishes several requests in order, as [`Broker::publish`] would one after the other,
    /// but appends are queued to the store together so that one group commit serves them all
    /// (a broadcast to many channels with history costs one flush, not one per channel).
    /// Results come in the same order.
    pub async fn publish_all(&self, requests: Vec<PublishRequest>) -> Vec<Result<PublishResult, BrokerError>> {
        let mut results: Vec<Option<Result<PublishResult, BrokerError>>> = Vec::with_capacity(requests.len());
        // Appends queued but not yet sent to the store, with their index in `results`.
        let mut appends: Vec<(usize, Append)> = Vec::new();
        for request in requests {
            let index = results.len();
            results.push(None);
            match self.route(request) {
                Err(e) => results[index] = Some(Err(e)),
                Ok(Route::Append(append)) => appends.push((index, *append)),
                Ok(Route::Deliver(channel, push)) => {
                    // What is pending is committed (and delivered) first: subscribers see the
                    // requests' order across channels too.
                    self.append_pending(&mut appends, &mut results).await;
                    self.deliver(&channel, push);
                    results[index] = Some(Ok(PublishResult::default()));
                }
            }
        }
        self.append_pending(&mut appends, &mut results).await;
        results
            .into_iter()
            .map(|r| r.expect("every request has a result"))
            .collect()
    }

    async fn append_pending(
        &self,
        appends: &mut Vec<(usize, Append)>,
        results: &mut [Option<Result<PublishResult, BrokerError>>],
    ) {
        if appends.is_empty() {
            return;
        }
        let (indices, batch): (Vec<usize>, Vec<Append>) = std::mem::take(appends).into_iter().unzip();
        if let Some(cluster) = self.cluster.get() {
            // One entry of the replicated log for them all.
            for (index, result) in indices.into_iter().zip(nodes::replicate_appends(cluster, batch).await) {
                results[index] = Some(result);
            }
            return;
        }
        for (index, result) in indices.into_iter().zip(self.store.append_all(batch).await) {
            results[index] = Some(result.map(published).map_err(BrokerError::from));
        }
    }

    /// Where a publication goes: through the store (history or an idempotency key; delivery
    /// then happens in [`Broker::spawn_fan_out`], in offset order, once durable), or straight to
    /// the subscribers.
    fn route(&self, request: PublishRequest) -> Result<Route, BrokerError> {
        let options = self.options(&request.channel)?;
        metrics::counter!("herald_publications_in_total").increment(1);
        // The broker decides the entry's time and the epoch it starts a stream with; the store
        // only applies them (the same entry gives the same stream anywhere).
        let stamp = Stamp::now();
        let publication = Publication {
            data: request.data,
            info: request.info,
            tags: request.tags,
            time: stamp.time_ms,
            // Read by the fan-out only (the hub's delta encodings); history reads clear it.
            delta: request.delta || options.delta_publish,
            ..Default::default()
        };
        let history = (options.history_enabled() && !request.skip_history).then(|| retention(options));
        let idempotency = request
            .idempotency_key
            .filter(|k| !k.is_empty())
            .map(|key| Idempotency {
                key,
                window: self.config.storage.idempotency_window,
            });
        if history.is_some() || idempotency.is_some() {
            return Ok(Route::Append(Box::new(Append {
                channel: Arc::from(request.channel),
                publication,
                version: request.version.filter(|_| history.is_some()),
                history,
                idempotency,
                stamp,
            })));
        }
        let push = Prepared::publication(&request.channel, Arc::from(""), publication);
        Ok(Route::Deliver(request.channel, push))
    }

    /// Delivers a push that does not go through a stream (a publication without history,
    /// join, leave), in the caller's order.
    pub fn deliver(&self, channel: &str, push: Arc<Prepared>) {
        self.fan_out(channel, &push);
    }

    /// The current position of a channel's stream; [`Position::none`] when it has none (a
    /// read never creates a stream).
    pub async fn position(&self, channel: &str) -> Result<Position, BrokerError> {
        if let Some(cluster) = self.cluster.get() {
            return nodes::position_on_leader(cluster, channel).await;
        }
        self.local_position(channel).await
    }

    async fn local_position(&self, channel: &str) -> Result<Position, BrokerError> {
        Ok(self.store.position(channel).await?)
    }

    /// What a client that last saw `(epoch, offset)` missed, if all of it is still retained:
    /// all or nothing, never a partial recovery.
    pub async fn recover(
        &self,
        channel: &str,
        options: &ChannelOptions,
        epoch: &str,
        offset: u64,
        position: &Position,
    ) -> Result<Recovery, BrokerError> {
        if let Some(cluster) = self.cluster.get() {
            return nodes::recover_on_leader(cluster, channel, epoch, offset, position).await;
        }
        self.local_recover(channel, options, epoch, offset, position).await
    }

    async fn local_recover(
        &self,
        channel: &str,
        options: &ChannelOptions,
        epoch: &str,
        offset: u64,
        position: &Position,
    ) -> Result<Recovery, BrokerError> {
        let not_recovered = Ok(Recovery {
            publications: Vec::new(),
            recovered: false,
        });
        if !epoch.is_empty() && epoch != &*position.epoch {
            return not_recovered;
        }
        if offset > position.offset {
            return not_recovered;
        }
        let missed = position.offset - offset;
        if missed == 0 {
            return Ok(Recovery {
                publications: Vec::new(),
                recovered: true,
            });
        }
        if missed > self.config.client.recovery_max_publication_limit as u64 {
            return not_recovered;
        }
        let range = ReadRange {
            after: Some(offset),
            limit: missed as usize,
            ..Default::default()
        };
        let Some(publications) = self.store.read(channel, position, range, retention(options)).await? else {
            // The stream left the epoch `position` names while it was read: the subscriber,
            // positioned there, learns of the change from its first live publication (2500).
            return not_recovered;
        };
        let contiguous = publications.len() as u64 == missed
            && publications.first().is_some_and(|p| p.offset == offset + 1)
            && publications.last().is_some_and(|p| p.offset == position.offset);
        if contiguous {
            Ok(Recovery {
                publications,
                recovered: true,
            })
        } else {
            not_recovered
        }
    }

    /// History of a channel. `limit` 0 returns only the position, negative means "as many as
    /// allowed"; `since` continues after (or, reversed, before) a position of the same epoch.
    pub async fn history(
        &self,
        channel: &str,
        limit: i64,
        since: Option<(String, u64)>,
        reverse: bool,
    ) -> Result<History, BrokerError> {
        let options = self.options(channel)?;
        if !options.history_enabled() {
            return Err(BrokerError::NotAvailable);
        }
        if let Some(cluster) = self.cluster.get() {
            return nodes::history_on_leader(cluster, channel, limit, since, reverse).await;
        }
        self.local_history(channel, limit, since, reverse).await
    }

    async fn local_history(
        &self,
        channel: &str,
        limit: i64,
        since: Option<(String, u64)>,
        reverse: bool,
    ) -> Result<History, BrokerError> {
        let options = self.options(channel)?;
        let max = self.config.client.history_max_publication_limit;
        // `limit` comes from clients: negative (down to i64::MIN) means the maximum, and no
        // positive value converts past it.
        let limit = match limit {
            0 => 0,
            l if l < 0 => max,
            l => usize::try_from(l).unwrap_or(usize::MAX).min(max),
        };
        // The position and the publications are read in two steps: when the stream changes
        // epoch in between, read both again rather than label the next epoch's publications
        // with this one.
        for _ in 0..HISTORY_ATTEMPTS {
            let position = self.store.position(channel).await?;
            let mut range = ReadRange {
                limit,
                reverse,
                ..Default::default()
            };
            if let Some((epoch, offset)) = &since {
                if !epoch.is_empty() && *epoch != *position.epoch {
                    return Err(BrokerError::UnrecoverablePosition);
                }
                if reverse {
                    if *offset == 0 {
                        return Err(BrokerError::BadRequest("reverse history since offset 0"));
                    }
                    range.before = Some(*offset);
                } else {
                    range.after = Some(*offset);
                }
            }
            if let Some(publications) = self.store.read(channel, &position, range, retention(options)).await? {
                return Ok(History {
                    publications,
                    epoch: position.epoch.to_string(),
                    offset: position.offset,
                });
            }
        }
        Err(BrokerError::StreamChanging)
    }

    /// Drops a channel's history; its stream starts a new epoch.
    pub async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let options = self.options(channel)?;
        if !options.history_enabled() {
            return Err(BrokerError::NotAvailable);
        }
        // A fresh epoch, decided here like an append's.
        let stamp = Stamp::now();
        if let Some(cluster) = self.cluster.get() {
            let command = crate::cluster::raft::types::Command::RemoveHistory {
                channel: channel.to_owned(),
                time_ms: stamp.time_ms,
                epoch: stamp.epoch.to_string(),
            };
            return match cluster.replicate(command).await? {
                crate::cluster::raft::types::Outcome::Failed(e) => Err(BrokerError::Store(StoreError::Failed(e))),
                _ => Ok(()),
            };
        }
        self.store.remove_history(channel, stamp).await?;
        Ok(())
    }

    /// Adds a subscription to a channel and announces the join when the namespace wants it.
    pub fn join(&self, channel: &str, options: &ChannelOptions, subscriber: impl Deliver, info: ClientInfo) {
        let visibility = crate::hub::Visibility {
            presence: options.presence,
            join_leave: options.join_leave,
        };
        self.hub
            .subscribe_with(channel, subscriber, info.clone(), visibility, |change| {
                self.interest_changed(channel, change)
            });
        if options.join_leave {
            self.deliver(channel, Prepared::join(channel, info));
        }
    }

    /// Tells the hub the data of a channel's publication at `offset`, which a subscriber with
    /// delta on just recovered: the next publication can then go to it as a delta (see
    /// [`Hub::seed_last`]).
    pub fn recovered_last(&self, channel: &str, epoch: &Arc<str>, offset: u64, data: bytes::Bytes) {
        self.hub.seed_last(channel, epoch, offset, data);
    }

    /// Removes a client from a channel and announces the leave when its join was announced.
    pub fn leave(&self, channel: &str, client: &str) {
        let left = self
            .hub
            .unsubscribe(channel, client, |change| self.interest_changed(channel, change));
        // Announced when its join was (the namespace's option, or the subscription's override).
        if let Some((info, visibility)) = left {
            if visibility.join_leave {
                self.deliver(channel, Prepared::leave(channel, info));
            }
        }
    }

    /// The one place where this node's interest in a channel changes (its first local
    /// subscriber, or its last gone). Nothing listens without a cluster; the cluster will tell
    /// its peers here. Runs under the hub's shard lock, so per channel the changes arrive in the
    /// order they happened: it must not block or call the hub.
    #[inline]
    fn interest_changed(&self, channel: &str, change: Interest) {
        if let Some(cluster) = self.cluster.get() {
            if change == Interest::Lost {
                self.delivered.lock().remove(channel);
            }
            cluster.interest_changed(channel, change == Interest::Gained);
        }
    }

    /// Who is subscribed to a channel, by client id, on every node. 108 when the namespace
    /// keeps no presence.
    pub async fn presence(&self, channel: &str) -> Result<HashMap<String, ClientInfo>, BrokerError> {
        if !self.options(channel)?.presence {
            return Err(BrokerError::NotAvailable);
        }
        let mut presence = self.hub.presence(channel);
        if let Some(cluster) = self.cluster.get() {
            presence.extend(nodes::presence_of_peers(cluster, channel).await);
        }
        Ok(presence)
    }

    /// (clients, distinct users) subscribed to a channel on every node. 108 when the namespace
    /// keeps no presence.
    pub async fn presence_stats(&self, channel: &str) -> Result<(usize, usize), BrokerError> {
        if !self.options(channel)?.presence {
            return Err(BrokerError::NotAvailable);
        }
        let Some(cluster) = self.cluster.get() else {
            return Ok(self.hub.presence_stats(channel));
        };
        let mut presence = self.hub.presence(channel);
        presence.extend(nodes::presence_of_peers(cluster, channel).await);
        let users: std::collections::HashSet<&str> = presence.values().map(|info| info.user.as_str()).collect();
        Ok((presence.len(), users.len()))
    }

    /// Channels with subscribers on any node and their number, filtered by a glob pattern
    /// (`*` wildcard).
    pub async fn channels(&self, pattern: &str) -> Vec<(String, usize)> {
        let mut channels: HashMap<String, usize> = self.hub.channels().into_iter().collect();
        if let Some(cluster) = self.cluster.get() {
            for (channel, count) in nodes::channels_of_peers(cluster).await {
                *channels.entry(channel).or_default() += count;
            }
        }
        channels
            .into_iter()
            .filter(|(name, _)| pattern.is_empty() || glob_match(pattern, name))
            .collect()
    }

    /// Every node's figures (API `info`): this node's, then each live peer's.
    pub async fn info(&self) -> Vec<NodeInfo> {
        let mut nodes = vec![self.local_info()];
        if let Some(cluster) = self.cluster.get() {
            nodes.extend(nodes::info_of_peers(cluster).await);
        }
        nodes
    }

    fn local_info(&self) -> NodeInfo {
        let (clients, users) = self.sessions.counts();
        NodeInfo {
            id: self.node.clone(),
            name: match self.cluster.get() {
                Some(cluster) => cluster.name().to_string(),
                None => node::hostname(),
            },
            version: crate::VERSION.to_owned(),
            clients,
            users,
            channels: self.hub.channels().len(),
            subscriptions: self.hub.num_subscriptions(),
            uptime: self.started.elapsed(),
        }
    }

    /// Flushes the store (`/health` uses it to prove the writer is alive).
    pub async fn flush(&self) -> Result<(), BrokerError> {
        Ok(self.store.flush().await?)
    }

    /// Flushes and closes the store (shutdown): it is sealed as cleanly shut down.
    pub async fn close(&self) -> Result<(), BrokerError> {
        Ok(self.store.close().await?)
    }

    /// One retention pass: trims every stream by its namespace's size and age, forgets streams
    /// idle past `history_meta_ttl`, and expires idempotency keys. Streams of namespaces no
    /// longer configured are left alone (a config mistake must not erase data).
    pub async fn retain(&self) -> Result<usize, BrokerError> {
        if let Some(cluster) = self.cluster.get() {
            return nodes::retain_replicated(self, cluster).await;
        }
        let mut removed = 0;
        for channel in self.store.channels().await? {
            let Ok(options) = self.options(&channel) else { continue };
            let history = options.history_enabled().then(|| retention(options));
            removed += self.store.trim(&channel, history, options.history_meta_ttl).await?;
        }
        removed += self.store.expire_idempotency().await?;
        metrics::counter!("herald_retention_removed_total").increment(removed as u64);
        Ok(removed)
    }

    /// Runs [`Broker::retain`] every `storage.retention_interval` until `shutdown`.
    pub async fn run_retention(&self, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(self.config.storage.retention_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.retain().await {
                Ok(n) if n > 0 => tracing::debug!(removed = n, "retention pass"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "retention pass failed"),
            }
        }
    }
}

fn retention(options: &ChannelOptions) -> Retention {
    Retention {
        size: options.history_size,
        ttl: options.history_ttl,
    }
}

/// Glob matching with `*` (any run of characters) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("chat:*", "chat:room"));
        assert!(!glob_match("chat:*", "news"));
        assert!(glob_match("https://*.example.com", "https://app.example.com"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "abbc"));
    }
}
