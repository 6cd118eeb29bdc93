//! Subscribing: client subscriptions, server-side subscriptions (token `channels`, personal
//! channel, API), recovery, and the hand-over from "subscribing" to "active".
//!
//! While a subscription is being set up, the hub already delivers to it and the pushes wait in
//! its buffer; [`Connection::activate`] then queues the reply first and the buffered pushes after
//! it, skipping those the reply already covers. No publication is lost or sent twice in between.

use std::mem;
use std::sync::Arc;

use bytes::Bytes;

use super::connection::{ttl_of, Connection, State, SubResults};
use super::{Phase, Subscription};
use crate::config::ChannelOptions;
use crate::hub::filter::TagsFilter;
use crate::protocol::proto::{self, ClientInfo, Push, Reply, SubscribeResult};
use crate::protocol::{DisconnectCode, ErrorCode, UnsubscribeCode};
use crate::session::commands::Failure;

/// How to set up one subscription.
pub(crate) struct Setup<'a> {
    pub channel: &'a str,
    pub options: &'a ChannelOptions,
    /// `(epoch, offset)` the client last saw, when it asks to recover.
    pub recover: Option<(String, u64)>,
    pub server_side: bool,
    pub join_leave_requested: bool,
    pub chan_info: Bytes,
    pub expires_at: Option<i64>,
    /// The sub_refresh proxy, not the client, refreshes it at `expires_at`.
    pub refresh_by_proxy: bool,
    /// The client asked for fossil deltas (`delta: "fossil"`).
    pub delta: bool,
}

/// A subscription set up and waiting for [`Connection::activate`].
pub(crate) struct Ready {
    channel: Arc<str>,
    epoch: Arc<str>,
    offset: u64,
    /// The reply carries the publication at `offset` (recovered), which a delta may follow.
    holds_offset: bool,
}

impl Connection {
    fn client_info(&self, chan_info: Bytes) -> ClientInfo {
        let identity = self.shared.identity().unwrap_or_else(|| super::Identity {
            user: String::new(),
            info: Bytes::new(),
        });
        ClientInfo {
            user: identity.user,
            client: self.shared.id.to_string(),
            conn_info: identity.info,
            chan_info,
        }
    }

    /// Registers the subscription (buffering pushes), finds its position and recovers.
    pub(crate) async fn setup_subscription(&mut self, setup: Setup<'_>) -> Result<(SubscribeResult, Ready), Failure> {
        self.setup_filtered_subscription(setup, None).await
    }

    /// [`Self::setup_subscription`] for a client subscription that asked for a tags filter (see
    /// [`requested_tags_filter`]): only the publications that pass it are sent, live or
    /// recovered.
    pub(crate) async fn setup_filtered_subscription(
        &mut self,
        setup: Setup<'_>,
        tags_filter: Option<Arc<TagsFilter>>,
    ) -> Result<(SubscribeResult, Ready), Failure> {
        let channel: Arc<str> = Arc::from(setup.channel);
        let options = setup.options;
        let positioned = options.force_recovery && options.history_enabled();
        // Deltas need the position (each is against the publication before it): the reference
        // server's conditions (history, positioning or recovery, no tags filter).
        let delta = setup.delta
            && positioned
            && tags_filter.is_none()
            && options.allowed_delta_types.iter().any(|t| t == "fossil");
        let subscriber = {
            let mut subs = self.shared.subs.lock();
            if subs.contains_key(&channel) {
                return Err(ErrorCode::ALREADY_SUBSCRIBED.into());
            }
            if subs.len() >= self.ctx.config.client.channel_limit {
                metrics::counter!("herald_limit_rejections_total", "limit" => "channel").increment(1);
                return Err(if setup.server_side {
                    Failure::Disconnect(DisconnectCode::CHANNEL_LIMIT)
                } else {
                    ErrorCode::LIMIT_EXCEEDED.into()
                });
            }
            let subscription = Subscription {
                phase: Phase::Subscribing(Default::default()),
                positioned,
                epoch: Arc::from(""),
                offset: 0,
                join_leave: options.join_leave && (options.force_push_join_leave || setup.join_leave_requested),
                server_side: setup.server_side,
                expires_at: setup.expires_at,
                refresh_by_proxy: setup.refresh_by_proxy,
                tags_filter: tags_filter.clone(),
                delta: super::DeltaState {
                    on: delta,
                    holds_offset: false,
                },
            };
            self.shared.register(&mut subs, channel.clone(), subscription)
        };
        metrics::gauge!("herald_subscriptions").increment(1.0);
        let info = self.client_info(setup.chan_info);
        // With the subscription's overrides (presence, join and leave), if any.
        self.ctx.broker.join(&channel, options, subscriber, info);

        let mut result = SubscribeResult {
            delta,
            ..Default::default()
        };
        let mut ready = Ready {
            channel: channel.clone(),
            epoch: Arc::from(""),
            offset: 0,
            holds_offset: false,
        };
        if let Some(exp) = setup.expires_at.filter(|_| !setup.refresh_by_proxy) {
            result.expires = true;
            result.ttl = ttl_of(exp);
        }
        if !positioned {
            return Ok((result, ready));
        }
        let broker = self.ctx.broker.clone();
        let position = match broker.position(&channel).await {
            Ok(p) => p,
            Err(e) => {
                self.drop_subscription(&channel);
                return Err(e.into());
            }
        };
        result.recoverable = true;
        result.positioned = true;
        result.epoch = position.epoch.to_string();
        result.offset = position.offset;
        ready.epoch = position.epoch.clone();
        ready.offset = position.offset;
        let cache = options.force_recovery_mode == crate::config::RecoveryMode::Cache;
        if cache && (setup.recover.is_some() || options.auto_cache_recover) {
            // The channel's current value: its latest publication, unless the client holds it.
            result.was_recovering = true;
            // A client holds a value only in an existing stream: an empty channel has none to
            // give, which is "not recovered" (the application loads its state another way).
            let held = setup
                .recover
                .filter(|(epoch, offset)| !epoch.is_empty() && *epoch == *position.epoch && *offset > 0)
                .map(|(_, offset)| offset);
            match broker.history(&channel, 1, None, true).await {
                Ok(history) => {
                    let latest = history
                        .publications
                        .into_iter()
                        .next()
                        .filter(|p| tags_filter.as_ref().is_none_or(|f| f.matches(&p.tags)));
                    result.recovered = latest.is_some() || held == Some(position.offset);
                    if let Some(latest) = latest.filter(|p| held.is_none_or(|o| p.offset > o)) {
                        ready.holds_offset = latest.offset == position.offset;
                        let mut publications = vec![latest];
                        if delta {
                            chain_deltas(&mut publications, self.shared.format);
                        }
                        result.publications = publications;
                    }
                }
                Err(e) => {
                    self.drop_subscription(&channel);
                    return Err(e.into());
                }
            }
        } else if let Some((epoch, offset)) = setup.recover {
            result.was_recovering = true;
            match broker.recover(&channel, options, &epoch, offset, &position).await {
                Ok(recovery) => {
                    let budget = self.ctx.config.client.reply_budget();
                    let mut publications = recovery.publications;
                    // As live: what the filter drops is left out; the client's position still
                    // moves past it, to the stream top the result carries.
                    if let Some(filter) = &tags_filter {
                        publications.retain(|p| filter.matches(&p.tags));
                    }
                    if super::commands::fitting_publications(&publications, budget) < publications.len() {
                        // Never a partial recovery: too much to replay within the reply budget
                        // is "not recovered" (the client reloads), not a reply that would close
                        // it as slow (issue 11).
                        metrics::counter!("herald_limit_rejections_total", "limit" => "reply_size").increment(1);
                        result.recovered = false;
                    } else {
                        result.recovered = recovery.recovered;
                        ready.holds_offset = publications.last().is_some_and(|p| p.offset == position.offset);
                        if delta {
                            if let Some(last) = publications.last().filter(|_| ready.holds_offset) {
                                broker.recovered_last(&channel, &position.epoch, last.offset, last.data.clone());
                            }
                            chain_deltas(&mut publications, self.shared.format);
                        }
                        result.publications = publications;
                    }
                }
                Err(e) => {
                    self.drop_subscription(&channel);
                    return Err(e.into());
                }
            }
        }
        Ok((result, ready))
    }

    /// Queues `reply`, then makes the subscriptions active and releases what they buffered.
    pub(crate) fn activate(&self, reply: &Reply, ready: Vec<Ready>) {
        self.activate_after(std::slice::from_ref(reply), ready)
    }

    /// [`Self::activate`] after several replies, in order.
    pub(crate) fn activate_after(&self, replies: &[Reply], ready: Vec<Ready>) {
        // Until a subscription is active the hub only buffers its pushes, so the replies are
        // queued before any of them.
        for reply in replies {
            self.shared.send_reply(reply);
        }
        for r in ready {
            let Some(subscription) = self.shared.subs.lock().get(&r.channel).cloned() else {
                continue;
            };
            // Under the subscription's lock: a delivery racing with this one waits, then comes
            // after the buffered pushes.
            let mut sub = subscription.lock();
            let Phase::Subscribing(buffer) = mem::replace(&mut sub.phase, Phase::Active) else {
                continue;
            };
            sub.epoch = r.epoch;
            sub.offset = r.offset;
            sub.delta.holds_offset = r.holds_offset;
            self.shared.queue().release(buffer.bytes);
            for push in buffer.pushes {
                self.shared.deliver_to(&r.channel, &mut sub, &subscription, &push);
            }
        }
    }

    /// Removes a subscription without telling the client (it asked, or setup failed).
    pub(crate) fn drop_subscription(&self, channel: &str) -> bool {
        let removed = self.shared.subs.lock().remove(channel);
        if let Some(subscription) = &removed {
            // Deliveries racing with the hub's removal below are dropped, not judged: a gap
            // seen now must not end a later subscription to the same channel.
            let previous = std::mem::replace(&mut subscription.lock().phase, Phase::Broken);
            if let Phase::Subscribing(buffer) = previous {
                self.shared.queue().release(buffer.bytes);
            }
            metrics::gauge!("herald_subscriptions").decrement(1.0);
            self.ctx.broker.leave(channel, &self.shared.id);
        }
        removed.is_some()
    }

    /// Ends the subscription that saw a gap (2500), if it is still the channel's subscription.
    pub(crate) fn unsubscribe_after_gap(&self, channel: &str, broken: &super::SubscriptionHandle) {
        if self.shared.holds(channel, broken) {
            self.unsubscribe_with_push(channel, UnsubscribeCode::INSUFFICIENT_STATE);
        }
    }

    /// Ends a subscription on the server's initiative and tells the client with an unsubscribe push.
    pub(crate) fn unsubscribe_with_push(&self, channel: &str, code: UnsubscribeCode) {
        if self.drop_subscription(channel) {
            self.shared.send_reply(&Reply {
                push: Some(Push {
                    channel: channel.to_owned(),
                    unsubscribe: Some(proto::Unsubscribe {
                        code: code.code,
                        reason: code.reason.to_owned(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }

    /// Subscriptions made at connect: the token's `channels` and the personal channel.
    /// `positions` are what the client sent in `connect.subs` to recover them.
    pub(crate) async fn connect_subscriptions(
        &mut self,
        channels: Vec<String>,
        positions: &std::collections::HashMap<String, proto::SubscribeRequest>,
        granted: &std::collections::HashMap<String, super::proxied::ServerSubscription>,
    ) -> Result<(SubResults, Vec<Ready>), DisconnectCode> {
        let mut results = SubResults::new();
        let mut readies = Vec::new();
        let broker = self.ctx.broker.clone();
        // Channels skipped, reported in one line per connect: a token may list thousands.
        let mut unknown = Skipped::default();
        let mut failed = Skipped::default();
        for channel in channels {
            let Ok(options) = broker.options(&channel) else {
                unknown.add(channel, 0);
                continue;
            };
            let recover = positions
                .get(&channel)
                .filter(|p| p.recover)
                .map(|p| (p.epoch.clone(), p.offset));
            // The connect proxy's options for it (`subs`), if any.
            let extra = granted.get(&channel);
            let overridden = extra.and_then(|e| super::proxied::overridden(options, &e.overrides));
            let setup = Setup {
                channel: &channel,
                options: overridden.as_ref().unwrap_or(options),
                recover,
                server_side: true,
                join_leave_requested: false,
                chan_info: extra.map(|e| e.info.clone()).unwrap_or_default(),
                expires_at: None,
                refresh_by_proxy: false,
                delta: false,
            };
            match self.setup_subscription(setup).await {
                Ok((mut result, ready)) => {
                    if let Some(extra) = extra {
                        result.data = extra.data.clone();
                    }
                    results.insert(channel, result);
                    readies.push(ready);
                }
                Err(Failure::Disconnect(code)) => return Err(code),
                Err(Failure::Error(e)) => failed.add(channel, e.code),
                Err(Failure::Reply(e)) => failed.add(channel, e.code),
            }
        }
        if unknown.count > 0 {
            tracing::warn!(count = unknown.count, first = ?unknown.first, "server-side subscriptions to unknown channels skipped");
        }
        if failed.count > 0 {
            tracing::warn!(count = failed.count, first = ?failed.first, "server-side subscriptions failed");
        }
        Ok((results, readies))
    }

    /// API `subscribe`: a server-side subscription of a live connection, announced with a
    /// `subscribe` push (carrying `data`), followed by what it recovered (`recover_since`).
    pub(crate) async fn server_subscribe(
        &mut self,
        channel: &str,
        extra: super::SubscribeOptions,
    ) -> Result<(), DisconnectCode> {
        if !matches!(self.state, State::Connected(_)) || self.shared.is_subscribed(channel) {
            return Ok(());
        }
        let broker = self.ctx.broker.clone();
        let Ok(options) = broker.options(channel) else {
            return Ok(());
        };
        let overridden = super::proxied::overridden(options, &extra.overrides);
        let setup = Setup {
            channel,
            options: overridden.as_ref().unwrap_or(options),
            recover: extra.recover_since,
            server_side: true,
            join_leave_requested: false,
            chan_info: extra.info,
            expires_at: extra.expire_at,
            refresh_by_proxy: false,
            delta: false,
        };
        match self.setup_subscription(setup).await {
            Ok((result, ready)) => {
                let push = |push: Push| Reply {
                    push: Some(push),
                    ..Default::default()
                };
                let mut replies = vec![push(Push {
                    channel: channel.to_owned(),
                    subscribe: Some(proto::Subscribe {
                        recoverable: result.recoverable,
                        epoch: result.epoch,
                        offset: result.offset,
                        positioned: result.positioned,
                        data: extra.data,
                    }),
                    ..Default::default()
                })];
                replies.extend(result.publications.into_iter().map(|publication| {
                    push(Push {
                        channel: channel.to_owned(),
                        r#pub: Some(publication),
                        ..Default::default()
                    })
                }));
                self.activate_after(&replies, vec![ready]);
                Ok(())
            }
            Err(Failure::Disconnect(code)) => Err(code),
            Err(Failure::Error(_) | Failure::Reply(_)) => Ok(()),
        }
    }

    pub(crate) fn earliest_subscription_expiry(&self) -> Option<i64> {
        self.shared
            .subs
            .lock()
            .values()
            .filter_map(|s| s.lock().expires_at)
            .min()
    }
}

impl super::SessionShared {
    /// Delivers one push to one subscription whose lock the caller holds; whether it was
    /// queued for the client. `sub` is `handle`, locked by the caller.
    pub(crate) fn deliver_to(
        &self,
        channel: &str,
        sub: &mut Subscription,
        handle: &Arc<parking_lot::Mutex<Subscription>>,
        push: &Arc<crate::hub::Prepared>,
    ) -> bool {
        let before = sub.offset;
        match sub.admit(push) {
            super::Admit::Send if sub.delta.on && push.publication_ref().is_some() => {
                // A delta only against what this client holds: the publication right before.
                let holds_previous = sub.delta.holds_offset
                    && matches!(push.kind, crate::hub::PushKind::Publication { offset, .. } if offset == before + 1);
                sub.delta.holds_offset = true;
                self.queue.push(push.delta_bytes(self.format, holds_previous));
                true
            }
            super::Admit::Send => {
                self.queue.push(push.bytes(self.format).clone());
                true
            }
            super::Admit::Skip => false,
            super::Admit::Gap => {
                sub.phase = Phase::Broken;
                metrics::counter!("herald_stream_gaps_total").increment(1);
                if sub.server_side {
                    self.queue.close(DisconnectCode::INSUFFICIENT_STATE);
                } else {
                    self.control(super::Control::Gap {
                        channel: Arc::from(channel),
                        subscription: super::SubscriptionHandle(handle.clone()),
                    });
                }
                false
            }
        }
    }
}

/// The tags filter a client's subscribe asks for (`tf`), checked. As the reference server
/// (centrifuge `client.go`, `subscribeCmd`), a filter where the channel's namespace does not
/// `allow_tags_filter`, or an invalid one, is answered 107. So is a filter together with a
/// `delta`: the two are exclusive (centrifugal.dev, "Channel publication filtering"; the SDKs
/// refuse to send both), since a delta is against the previous publication, which the filter
/// may have withheld from this client.
pub fn requested_tags_filter(
    options: &ChannelOptions,
    request: &proto::SubscribeRequest,
) -> Result<Option<Arc<TagsFilter>>, ErrorCode> {
    let Some(tree) = &request.tf else {
        return Ok(None);
    };
    if !options.allow_tags_filter {
        tracing::debug!(channel = %request.channel, "tags filter not allowed");
        return Err(ErrorCode::BAD_REQUEST);
    }
    if !request.delta.is_empty() {
        tracing::debug!(channel = %request.channel, "tags filter together with delta");
        return Err(ErrorCode::BAD_REQUEST);
    }
    match TagsFilter::intern(tree) {
        Ok(filter) => Ok(Some(filter)),
        Err(e) => {
            tracing::debug!(channel = %request.channel, error = %e, "invalid tags filter");
            Err(ErrorCode::BAD_REQUEST)
        }
    }
}

/// Channels a connect skipped: how many, and the first few with their error codes, for one
/// log line.
#[derive(Default)]
struct Skipped {
    count: usize,
    first: Vec<(String, u32)>,
}

impl Skipped {
    const SHOWN: usize = 5;

    fn add(&mut self, channel: String, code: u32) {
        self.count += 1;
        if self.first.len() < Self::SHOWN {
            self.first.push((channel, code));
        }
    }
}

/// Recovered publications for a subscriber with delta on: the first in full, each next one as
/// a delta against the one before when that is smaller, and in JSON every `data` as a string.
fn chain_deltas(publications: &mut [proto::Publication], format: crate::protocol::codec::Format) {
    use crate::protocol::codec::Format;
    let mut previous: Option<Bytes> = None;
    for publication in publications.iter_mut() {
        let data = publication.data.clone();
        let delta = previous
            .as_ref()
            .and_then(|previous| crate::delta::smaller_delta(previous, &data))
            .and_then(|delta| match format {
                Format::Json => crate::delta::json_string_exact(&delta),
                Format::Protobuf => Some(delta),
            });
        match delta {
            Some(delta) => {
                publication.data = delta;
                publication.delta = true;
            }
            None if format == Format::Json => publication.data = crate::delta::json_string(&data),
            None => {}
        }
        previous = Some(data);
    }
}
