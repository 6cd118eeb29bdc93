//! Client commands: decoding a frame, dispatching each command, and one handler per command.
//! Handlers return their result or a [`Failure`]; errors become error replies and disconnects
//! become close codes here, in one place.

use std::time::Instant;

use bytes::Bytes;

use super::connection::{ttl_of, Connected, Connection, State};
use super::subscribe::Setup;
use super::Identity;
use crate::auth::{rules, ChannelName, TokenError};
use crate::broker::{BrokerError, PublishRequest};
use crate::protocol::codec::{decode_commands, Format};
use crate::protocol::proto::{self, Command, Reply};
use crate::protocol::{DisconnectCode, ErrorCode};

/// Why a command did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Answer with an error reply; the connection stays.
    Error(ErrorCode),
    /// Answer with this error, as the application backend gave it (a proxy's `error`).
    Reply(proto::Error),
    /// Close the connection.
    Disconnect(DisconnectCode),
}

impl From<ErrorCode> for Failure {
    fn from(code: ErrorCode) -> Self {
        Self::Error(code)
    }
}

impl From<BrokerError> for Failure {
    fn from(e: BrokerError) -> Self {
        Self::Error(e.code())
    }
}

/// What a handler leaves to send.
enum Answer {
    Reply(Box<Reply>),
    /// The handler queued its reply itself (ordering with buffered pushes).
    Sent,
}

impl Connection {
    pub(crate) async fn handle_message(&mut self, data: Bytes, binary: bool) -> Result<(), DisconnectCode> {
        metrics::counter!("herald_bytes_in_total").increment(data.len() as u64);
        if binary != (self.shared.format == Format::Protobuf) {
            return Err(DisconnectCode::INAPPROPRIATE_PROTOCOL);
        }
        let limit = self.ctx.config.client.max_message_size;
        let commands = decode_commands(self.shared.format, &data, limit).map_err(|e| {
            tracing::debug!(client = %self.shared.id, error = %e, "undecodable frame");
            DisconnectCode::BAD_REQUEST
        })?;
        // Consecutive publishes are checked one by one, then published together: those to
        // channels with history share one group commit instead of one flush each.
        let mut publishes = Vec::new();
        for command in commands {
            if is_publish(&command) {
                publishes.push(command);
                continue;
            }
            self.handle_publishes(std::mem::take(&mut publishes)).await?;
            self.handle_command(command).await?;
        }
        self.handle_publishes(publishes).await
    }

    async fn handle_command(&mut self, command: Command) -> Result<(), DisconnectCode> {
        let id = command.id;
        if !self.admit(&command)? {
            return Ok(());
        }
        let started = Instant::now();
        let (name, outcome) = self.dispatch(id, command).await;
        self.answer(id, name, started, outcome)
    }

    /// Publish commands of one frame, in order; see `handle_message`.
    async fn handle_publishes(&mut self, commands: Vec<Command>) -> Result<(), DisconnectCode> {
        if commands.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        // Per command: its outcome, or `None` while it is with the broker.
        let mut outcomes: Vec<(u32, Option<Failure>)> = Vec::with_capacity(commands.len());
        let mut requests = Vec::with_capacity(commands.len());
        let mut ended = None;
        for command in commands {
            let id = command.id;
            match self.admit(&command) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(code) => {
                    ended = Some(code);
                    break;
                }
            }
            let request = command.publish.expect("is_publish");
            match self.publish_request(request).await {
                Ok(request) => {
                    requests.push(request);
                    outcomes.push((id, None));
                }
                Err(failure) => {
                    let disconnect = matches!(failure, Failure::Disconnect(_));
                    outcomes.push((id, Some(failure)));
                    if disconnect {
                        break;
                    }
                }
            }
        }
        let mut published = self.ctx.broker.publish_all(requests).await.into_iter();
        for (id, failure) in outcomes {
            let outcome = match failure {
                Some(failure) => Err(failure),
                None => match published.next().expect("one result per request") {
                    Ok(_) => Ok(Answer::Reply(Box::new(Reply {
                        publish: Some(Default::default()),
                        ..Default::default()
                    }))),
                    Err(e) => Err(e.into()),
                },
            };
            self.answer(id, "publish", started, outcome)?;
        }
        ended.map_or(Ok(()), Err)
    }

    /// Whether a command goes on to its handler: a pong is handled here, a command over the rate
    /// limit is answered 111, and before `connect` nothing else is allowed.
    fn admit(&mut self, command: &Command) -> Result<bool, DisconnectCode> {
        let id = command.id;
        if id == 0 && command.send.is_none() {
            self.on_pong()?;
            return Ok(false);
        }
        if let Some(bucket) = &mut self.rate {
            if !bucket.take(std::time::Instant::now()) {
                // Over the limit: answer 111 so a well-behaved SDK backs off; a client that keeps
                // flooding for a whole burst is closed.
                self.rejected += 1;
                metrics::counter!("herald_limit_rejections_total", "limit" => "command_rate").increment(1);
                if self.rejected > self.ctx.config.client.command_burst.max(1) {
                    return Err(DisconnectCode::TOO_MANY_REQUESTS);
                }
                let error = ErrorCode::TOO_MANY_REQUESTS.to_proto();
                self.shared.send_reply(&Reply {
                    id,
                    error: Some(error),
                    ..Default::default()
                });
                return Ok(false);
            }
            self.rejected = 0;
        }
        if !matches!(self.state, State::Connected(_)) && command.connect.is_none() {
            return Err(DisconnectCode::BAD_REQUEST);
        }
        Ok(true)
    }

    /// Queues a handler's reply (or error) and records the command's duration.
    fn answer(
        &mut self,
        id: u32,
        name: &'static str,
        started: Instant,
        outcome: Result<Answer, Failure>,
    ) -> Result<(), DisconnectCode> {
        metrics::histogram!("herald_command_duration_seconds", "command" => name)
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Answer::Reply(reply)) => {
                let mut reply = *reply;
                reply.id = id;
                self.shared.send_reply(&reply);
                Ok(())
            }
            Ok(Answer::Sent) => Ok(()),
            Err(Failure::Error(code)) => {
                metrics::counter!("herald_command_errors_total", "code" => code.code.to_string()).increment(1);
                self.shared.send_reply(&Reply {
                    id,
                    error: Some(code.to_proto()),
                    ..Default::default()
                });
                Ok(())
            }
            Err(Failure::Reply(error)) => {
                metrics::counter!("herald_command_errors_total", "code" => error.code.to_string()).increment(1);
                self.shared.send_reply(&Reply {
                    id,
                    error: Some(error),
                    ..Default::default()
                });
                Ok(())
            }
            Err(Failure::Disconnect(code)) => Err(code),
        }
    }

    async fn dispatch(&mut self, id: u32, c: Command) -> (&'static str, Result<Answer, Failure>) {
        if let Some(req) = c.connect {
            return ("connect", self.connect(id, req).await.map(|()| Answer::Sent));
        }
        if let Some(req) = c.subscribe {
            return ("subscribe", self.subscribe(id, req).await.map(|()| Answer::Sent));
        }
        let answer = |r: Reply| Answer::Reply(Box::new(r));
        if let Some(req) = c.unsubscribe {
            self.drop_subscription(&req.channel);
            return (
                "unsubscribe",
                Ok(answer(Reply {
                    unsubscribe: Some(Default::default()),
                    ..Default::default()
                })),
            );
        }
        // `publish` never gets here: `handle_message` sends it to `handle_publishes`.
        if let Some(req) = c.presence {
            let result = self.presence(req).await;
            return (
                "presence",
                result.map(|p| {
                    answer(Reply {
                        presence: Some(p),
                        ..Default::default()
                    })
                }),
            );
        }
        if let Some(req) = c.presence_stats {
            let result = self.presence_stats(req).await;
            return (
                "presence_stats",
                result.map(|p| {
                    answer(Reply {
                        presence_stats: Some(p),
                        ..Default::default()
                    })
                }),
            );
        }
        if let Some(req) = c.history {
            let result = self.history(req).await;
            return (
                "history",
                result.map(|h| {
                    answer(Reply {
                        history: Some(h),
                        ..Default::default()
                    })
                }),
            );
        }
        if let Some(req) = c.refresh {
            let result = self.refresh(req);
            return (
                "refresh",
                result.map(|r| {
                    answer(Reply {
                        refresh: Some(r),
                        ..Default::default()
                    })
                }),
            );
        }
        if let Some(req) = c.sub_refresh {
            let result = self.sub_refresh(req);
            return (
                "sub_refresh",
                result.map(|r| {
                    answer(Reply {
                        sub_refresh: Some(r),
                        ..Default::default()
                    })
                }),
            );
        }
        if c.ping.is_some() {
            return (
                "ping",
                Ok(answer(Reply {
                    ping: Some(Default::default()),
                    ..Default::default()
                })),
            );
        }
        if let Some(req) = c.rpc {
            let result = self.rpc(req).await;
            return (
                "rpc",
                result.map(|r| {
                    answer(Reply {
                        rpc: Some(r),
                        ..Default::default()
                    })
                }),
            );
        }
        if c.send.is_some() {
            // Asynchronous messages need an application handler, which Herald does not have.
            return ("send", Err(Failure::Disconnect(DisconnectCode::NOT_AVAILABLE)));
        }
        ("unknown", Err(Failure::Disconnect(DisconnectCode::BAD_REQUEST)))
    }

    fn on_pong(&mut self) -> Result<(), DisconnectCode> {
        match &mut self.state {
            State::Connected(c) if c.pong_due.is_some() => {
                c.pong_due = None;
                Ok(())
            }
            // A pong nobody asked for, or an empty command before connect.
            _ => Err(DisconnectCode::BAD_REQUEST),
        }
    }

    async fn connect(&mut self, id: u32, req: proto::ConnectRequest) -> Result<(), Failure> {
        if matches!(self.state, State::Connected(_)) {
            return Err(Failure::Disconnect(DisconnectCode::BAD_REQUEST));
        }
        let ctx = self.ctx.clone();
        let client = &ctx.config.client;
        let proxies = ctx.broker.proxies();
        let connect_proxy = proxies.and_then(|p| p.connect.as_ref());
        let mut granted = None;
        let claims = if let (true, Some(proxy)) = (req.token.is_empty(), connect_proxy) {
            let proxied = self.connect_by_proxy(proxy, &req).await?;
            let claims = proxied.claims.clone();
            granted = Some(proxied);
            claims
        } else if req.token.is_empty() {
            if !(client.insecure || client.allow_anonymous) {
                return Err(Failure::Disconnect(DisconnectCode::BAD_REQUEST));
            }
            Default::default()
        } else {
            match self.ctx.verifier.verify_connect(&req.token) {
                Ok(claims) => claims,
                Err(TokenError::Expired) => return Err(ErrorCode::TOKEN_EXPIRED.into()),
                Err(TokenError::Invalid(reason)) => {
                    tracing::debug!(%reason, "invalid connection token");
                    return Err(Failure::Disconnect(DisconnectCode::INVALID_TOKEN));
                }
            }
        };
        self.shared.set_identity(Identity {
            user: claims.user.clone(),
            info: claims.info.clone(),
        });
        let limit = if claims.user.is_empty() {
            0
        } else {
            client.user_connection_limit
        };
        if !self
            .ctx
            .broker
            .register_session(&claims.user, self.shared.clone(), limit)
            .await
        {
            metrics::counter!("herald_limit_rejections_total", "limit" => "user_connections").increment(1);
            return Err(Failure::Disconnect(DisconnectCode::CONNECTION_LIMIT));
        }
        let now = tokio::time::Instant::now();
        // With the refresh proxy, every connection is refreshed by the backend, not the client.
        let refresh_by_proxy = proxies.is_some_and(|p| p.refresh.is_some());
        self.state = State::Connected(Connected {
            user: claims.user.clone(),
            expires_at: claims.expires_at,
            refresh_by_proxy,
            next_ping_at: now + self.ctx.config.client.ping_interval,
            pong_due: None,
        });

        let mut channels = claims.channels;
        if client.subscribe_to_personal_channel && !claims.user.is_empty() {
            channels.push(crate::auth::channel::personal_channel(&claims.user));
        }
        let (data, server_subs) = match granted {
            Some(granted) => (granted.data, granted.subs),
            None => Default::default(),
        };
        let (subs, readies) = self
            .connect_subscriptions(channels, &req.subs, &server_subs)
            .await
            .map_err(Failure::Disconnect)?;
        let client = &self.ctx.config.client;
        let client_refreshes = claims.expires_at.filter(|_| !refresh_by_proxy);
        let result = proto::ConnectResult {
            client: self.shared.id.to_string(),
            version: crate::VERSION.to_owned(),
            expires: client_refreshes.is_some(),
            ttl: client_refreshes.map_or(0, ttl_of),
            data,
            subs,
            ping: client.ping_interval.as_secs().max(1) as u32,
            pong: self.expects_pongs,
            // Emulated transports address their later commands with these.
            session: self.emulation.as_deref().unwrap_or_default().to_owned(),
            node: match &self.emulation {
                Some(_) => self.ctx.broker.node_id().to_string(),
                None => String::new(),
            },
            ..Default::default()
        };
        self.activate(
            &Reply {
                id,
                connect: Some(result),
                ..Default::default()
            },
            readies,
        );
        Ok(())
    }

    fn asker(&self, channel: &str) -> rules::Asker<'_> {
        rules::Asker {
            user: self.user(),
            insecure: self.ctx.config.client.insecure,
            subscribed: self.shared.is_subscribed(channel),
        }
    }

    async fn subscribe(&mut self, id: u32, req: proto::SubscribeRequest) -> Result<(), Failure> {
        let broker = self.ctx.broker.clone();
        let options = broker.options(&req.channel)?;
        let name = ChannelName::parse(&req.channel)?;
        let proxy = match options.subscribe_proxy_enabled {
            true => broker.proxies().and_then(|p| p.subscribe.as_ref()),
            false => None,
        };
        let mut overridden = None;
        let mut data = Bytes::new();
        let (chan_info, expires_at) = if let (true, Some(proxy)) = (req.token.is_empty(), proxy) {
            // Private channels still need a token; the backend decides the rest.
            if name.private && !self.ctx.config.client.insecure {
                return Err(ErrorCode::PERMISSION_DENIED.into());
            }
            let granted = self.subscribe_by_proxy(proxy, &req).await?;
            overridden = super::proxied::overridden(options, &granted.overrides);
            data = granted.data;
            (granted.info, granted.expires_at)
        } else if req.token.is_empty() {
            rules::subscribe(options, &name, self.asker(&req.channel))?;
            (Bytes::new(), None)
        } else {
            match self.ctx.verifier.verify_subscribe(&req.token) {
                Ok(claims) => {
                    let wrong_client = claims.client.as_deref().is_some_and(|c| c != &*self.shared.id);
                    if claims.channel != req.channel || claims.user != self.user() || wrong_client {
                        return Err(Failure::Disconnect(DisconnectCode::INVALID_TOKEN));
                    }
                    (claims.info, claims.expires_at)
                }
                Err(TokenError::Expired) => return Err(ErrorCode::TOKEN_EXPIRED.into()),
                Err(TokenError::Invalid(_)) => return Err(ErrorCode::PERMISSION_DENIED.into()),
            }
        };
        let tags_filter = super::subscribe::requested_tags_filter(options, &req)?;
        let refresh_by_proxy =
            options.sub_refresh_proxy_enabled && broker.proxies().is_some_and(|p| p.sub_refresh.is_some());
        let options = overridden.as_ref().unwrap_or(options);
        let setup = Setup {
            channel: &req.channel,
            options,
            recover: req.recover.then(|| (req.epoch.clone(), req.offset)),
            server_side: false,
            join_leave_requested: req.join_leave,
            chan_info,
            expires_at,
            refresh_by_proxy,
            delta: req.delta == "fossil",
        };
        let (mut result, ready) = self.setup_filtered_subscription(setup, tags_filter).await?;
        result.data = data;
        self.activate(
            &Reply {
                id,
                subscribe: Some(result),
                ..Default::default()
            },
            vec![ready],
        );
        Ok(())
    }

    /// A client's publish, checked: the channel exists and the client may publish to it (the
    /// namespace's rules, or the publish proxy, which may also rewrite it).
    async fn publish_request(&self, req: proto::PublishRequest) -> Result<PublishRequest, Failure> {
        let options = self.ctx.broker.options(&req.channel)?;
        // JSON data goes to subscribers as it came: refuse what some of their parsers would.
        if self.shared.format == crate::protocol::Format::Json
            && crate::protocol::json::check_interoperable(&req.data).is_err()
        {
            return Err(ErrorCode::BAD_REQUEST.into());
        }
        let proxy = match options.publish_proxy_enabled {
            true => self.ctx.broker.proxies().and_then(|p| p.publish.as_ref()),
            false => None,
        };
        if proxy.is_none() {
            rules::publish(options, self.asker(&req.channel))?;
        }
        let identity = self.shared.identity();
        let info = identity.map(|i| proto::ClientInfo {
            user: i.user,
            client: self.shared.id.to_string(),
            conn_info: i.info,
            chan_info: Bytes::new(),
        });
        let mut request = PublishRequest {
            channel: req.channel,
            data: req.data,
            info,
            ..Default::default()
        };
        if let Some(proxy) = proxy {
            self.publish_by_proxy(proxy, &mut request).await?;
        }
        Ok(request)
    }

    async fn presence(&self, req: proto::PresenceRequest) -> Result<proto::PresenceResult, Failure> {
        let broker = &self.ctx.broker;
        rules::presence(broker.options(&req.channel)?, self.asker(&req.channel))?;
        let presence = broker.presence(&req.channel).await?;
        // A reply that could not fit the client's queue would close it (3008) and the SDK would
        // reconnect into the same reply: answer 106 instead (issue 11).
        let size: usize = presence
            .iter()
            .map(|(client, info)| client.len() + prost::Message::encoded_len(info) + REPLY_OVERHEAD)
            .sum();
        if size > self.ctx.config.client.reply_budget() {
            metrics::counter!("herald_limit_rejections_total", "limit" => "reply_size").increment(1);
            return Err(ErrorCode::LIMIT_EXCEEDED.into());
        }
        Ok(proto::PresenceResult { presence })
    }

    async fn presence_stats(&self, req: proto::PresenceStatsRequest) -> Result<proto::PresenceStatsResult, Failure> {
        let broker = &self.ctx.broker;
        rules::presence(broker.options(&req.channel)?, self.asker(&req.channel))?;
        let (clients, users) = broker.presence_stats(&req.channel).await?;
        Ok(proto::PresenceStatsResult {
            num_clients: clients as u32,
            num_users: users as u32,
        })
    }

    async fn history(&self, req: proto::HistoryRequest) -> Result<proto::HistoryResult, Failure> {
        let broker = self.ctx.broker.clone();
        rules::history(broker.options(&req.channel)?, self.asker(&req.channel))?;
        let since = req.since.map(|s| (s.epoch, s.offset));
        let mut history = broker
            .history(&req.channel, req.limit.into(), since, req.reverse)
            .await?;
        // A shorter page rather than a reply the client's queue cannot hold (the client asks
        // for the next page from the last offset it got).
        let fitting = fitting_publications(&history.publications, self.ctx.config.client.reply_budget());
        if fitting < history.publications.len() {
            metrics::counter!("herald_limit_rejections_total", "limit" => "reply_size").increment(1);
            history.publications.truncate(fitting);
        }
        Ok(proto::HistoryResult {
            publications: history.publications,
            epoch: history.epoch,
            offset: history.offset,
        })
    }

    fn refresh(&mut self, req: proto::RefreshRequest) -> Result<proto::RefreshResult, Failure> {
        let claims = match self.ctx.verifier.verify_connect(&req.token) {
            Ok(claims) => claims,
            Err(TokenError::Expired) => return Err(ErrorCode::TOKEN_EXPIRED.into()),
            Err(TokenError::Invalid(_)) => return Err(Failure::Disconnect(DisconnectCode::INVALID_TOKEN)),
        };
        let State::Connected(c) = &mut self.state else {
            return Err(Failure::Disconnect(DisconnectCode::BAD_REQUEST));
        };
        if claims.user != c.user {
            return Err(Failure::Disconnect(DisconnectCode::INVALID_TOKEN));
        }
        c.expires_at = claims.expires_at;
        if !claims.info.is_empty() {
            self.shared.set_info(claims.info);
        }
        Ok(proto::RefreshResult {
            client: self.shared.id.to_string(),
            version: crate::VERSION.to_owned(),
            expires: claims.expires_at.is_some(),
            ttl: claims.expires_at.map_or(0, ttl_of),
        })
    }

    fn sub_refresh(&mut self, req: proto::SubRefreshRequest) -> Result<proto::SubRefreshResult, Failure> {
        let claims = match self.ctx.verifier.verify_subscribe(&req.token) {
            Ok(claims) => claims,
            Err(TokenError::Expired) => return Err(ErrorCode::TOKEN_EXPIRED.into()),
            Err(TokenError::Invalid(_)) => return Err(Failure::Disconnect(DisconnectCode::INVALID_TOKEN)),
        };
        if claims.channel != req.channel || claims.user != self.user() {
            return Err(Failure::Disconnect(DisconnectCode::INVALID_TOKEN));
        }
        let Some(subscription) = self.shared.subs.lock().get(req.channel.as_str()).cloned() else {
            return Err(ErrorCode::BAD_REQUEST.into());
        };
        subscription.lock().expires_at = claims.expires_at;
        Ok(proto::SubRefreshResult {
            expires: claims.expires_at.is_some(),
            ttl: claims.expires_at.map_or(0, ttl_of),
        })
    }
}

/// Bytes a reply spends around each entry beyond its encoded fields (JSON field names, ids):
/// generous, so that estimates err on the safe side for both formats.
pub(crate) const REPLY_OVERHEAD: usize = 96;

/// How many of `publications`, from the first, fit in `budget` bytes of reply (at least one,
/// which the config guarantees fits: see `ClientConfig::reply_budget`).
pub(crate) fn fitting_publications(publications: &[proto::Publication], budget: usize) -> usize {
    let mut used = 0;
    for (i, publication) in publications.iter().enumerate() {
        used += prost::Message::encoded_len(publication) + REPLY_OVERHEAD;
        if used > budget {
            return i.max(1);
        }
    }
    publications.len()
}

/// A publish command: one that `dispatch`, which tries connect, subscribe and unsubscribe
/// first, would otherwise have taken for a publish.
fn is_publish(c: &Command) -> bool {
    c.publish.is_some() && c.connect.is_none() && c.subscribe.is_none() && c.unsubscribe.is_none()
}
