//! The commands the application backend decides through its proxies (docs/proxies.md): the
//! session builds each request from what it knows of the connection, and turns the backend's
//! decision into the command's outcome. A proxy failure (timeout, unreachable, bad reply) is
//! error 100, temporary: the SDKs retry.

use std::collections::HashMap;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::commands::Failure;
use super::connection::{Connection, State};
use crate::auth::ConnectClaims;
use crate::broker::PublishRequest;
use crate::config::ChannelOptions;
use crate::protocol::proto;
use crate::protocol::{DisconnectCode, ErrorCode, Format, UnsubscribeCode};
use crate::proxy::messages::{self, bytes_of, Base, Caller, Overrides, Payload};
use crate::proxy::{Decision, Proxy};

/// A failed refresh call is tried again this much later (the reference server's delay); the
/// connection or subscription stays meanwhile.
const REFRESH_RETRY_SECS: i64 = 60;

/// What the connect proxy granted, beyond the token-like claims.
pub(crate) struct ProxiedConnect {
    pub claims: ConnectClaims,
    /// `ConnectResult.data` for the client.
    pub data: Bytes,
    /// Options of server-side subscriptions (`subs`).
    pub subs: HashMap<String, ServerSubscription>,
}

/// A server-side subscription's options from the connect proxy.
#[derive(Default)]
pub(crate) struct ServerSubscription {
    pub info: Bytes,
    pub data: Bytes,
    pub overrides: Option<Overrides>,
}

/// What the subscribe proxy granted.
pub(crate) struct ProxiedSubscribe {
    pub info: Bytes,
    pub data: Bytes,
    pub overrides: Option<Overrides>,
    pub expires_at: Option<i64>,
}

impl Connection {
    /// The base of every request of this connection, for a payload.
    fn base<'a>(&'a self, payload: &Payload<'_>) -> Base<'a> {
        Base::new(&self.shared.id, self.handshake.transport, self.shared.format, payload)
    }

    fn caller(&self) -> Caller<'_> {
        Caller {
            user: self.user(),
            meta: self.meta.as_deref(),
        }
    }

    /// Calls `proxy`; a failure (no decision) is error 100.
    async fn ask<T: DeserializeOwned>(&self, proxy: &Proxy, body: &impl Serialize) -> Result<Decision<T>, Failure> {
        proxy
            .call(body, self.handshake.headers())
            .await
            .map_err(|_| Failure::Error(ErrorCode::INTERNAL))
    }

    /// Bytes for the client from a result's JSON or base64 field: a JSON client can only be
    /// sent JSON.
    fn client_bytes(
        &self,
        proxy: &Proxy,
        json: &Option<Box<serde_json::value::RawValue>>,
        b64: &str,
    ) -> Result<Bytes, Failure> {
        let bytes = bytes_of(json, b64).map_err(|_| invalid_reply(proxy, "base64 field does not decode"))?;
        if self.shared.format == Format::Json
            && !bytes.is_empty()
            && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err()
        {
            return Err(invalid_reply(proxy, "binary data for a JSON client"));
        }
        Ok(bytes)
    }

    /// A connect without a token, decided by the connect proxy.
    pub(crate) async fn connect_by_proxy(
        &mut self,
        proxy: &Proxy,
        req: &proto::ConnectRequest,
    ) -> Result<ProxiedConnect, Failure> {
        let proxies = self.ctx.broker.proxies().expect("a proxy is configured").clone();
        proxies.add_emulated(self.handshake.headers_mut(), &req.headers);
        let payload = Payload::of(&req.data, proxy.binary_encoding);
        let channels: Vec<String> = req.subs.keys().cloned().collect();
        let body = messages::ConnectRequest {
            base: self.base(&payload),
            name: &req.name,
            version: &req.version,
            payload,
            channels: &channels,
        };
        let result: messages::ConnectResult = match self.ask(proxy, &body).await? {
            Decision::Result(result) => result,
            // No credentials given: the reference server's answer.
            Decision::Empty => return Err(Failure::Disconnect(DisconnectCode::BAD_REQUEST)),
            decision => return Err(refusal(decision)),
        };
        let expires_at = (result.expire_at > 0).then_some(result.expire_at);
        if expires_at.is_some_and(|exp| exp <= crate::store::now_ms() / 1000) {
            return Err(ErrorCode::EXPIRED.into());
        }
        let info =
            bytes_of(&result.info, &result.b64info).map_err(|_| invalid_reply(proxy, "b64info does not decode"))?;
        let data = self.client_bytes(proxy, &result.data, &result.b64data)?;
        let mut subs = HashMap::with_capacity(result.subs.len());
        for (channel, options) in result.subs {
            let info = bytes_of(&options.info, &options.b64info)
                .map_err(|_| invalid_reply(proxy, "b64info does not decode"))?;
            let data = self.client_bytes(proxy, &options.data, &options.b64data)?;
            subs.insert(
                channel,
                ServerSubscription {
                    info,
                    data,
                    overrides: options.overrides,
                },
            );
        }
        let mut channels = result.channels;
        channels.extend(
            subs.keys()
                .filter(|c| !channels.contains(c))
                .cloned()
                .collect::<Vec<_>>(),
        );
        self.meta = result.meta.filter(|m| m.get() != "null");
        Ok(ProxiedConnect {
            claims: ConnectClaims {
                user: result.user,
                expires_at,
                info,
                channels,
            },
            data,
            subs,
        })
    }

    /// The connection reached its expiry and the refresh proxy decides whether it goes on.
    /// A call that fails is tried again [`REFRESH_RETRY_SECS`] later.
    pub(crate) async fn refresh_by_proxy(&mut self) -> Result<(), DisconnectCode> {
        let Some(proxies) = self.ctx.broker.proxies().cloned() else {
            return Ok(());
        };
        let Some(proxy) = &proxies.refresh else {
            return Ok(());
        };
        let body = messages::RefreshRequest {
            base: self.base(&Payload::default()),
            caller: self.caller(),
        };
        let now = crate::store::now_ms() / 1000;
        let decision = proxy
            .call::<messages::RefreshResult>(&body, self.handshake.headers())
            .await;
        let expires_at = match decision {
            Err(_) => now + REFRESH_RETRY_SECS,
            Ok(Decision::Disconnect { code, reason }) => return Err(DisconnectCode::custom(code, reason)),
            // An error or no result: the backend does not extend the connection.
            Ok(Decision::Error { .. } | Decision::Empty) => return Err(DisconnectCode::EXPIRED),
            Ok(Decision::Result(result)) => {
                // A refresh that gives no future expiry ends the connection too.
                if result.expired || result.expire_at <= now {
                    return Err(DisconnectCode::EXPIRED);
                }
                if let Some(meta) = result.meta.filter(|m| m.get() != "null") {
                    self.meta = Some(meta);
                }
                match bytes_of(&result.info, &result.b64info) {
                    Ok(info) if !info.is_empty() => self.shared.set_info(info),
                    Ok(_) => {}
                    Err(_) => tracing::warn!(proxy = "refresh", "b64info does not decode: info left as it was"),
                }
                result.expire_at
            }
        };
        if let State::Connected(c) = &mut self.state {
            c.expires_at = Some(expires_at);
        }
        Ok(())
    }

    /// A client subscription without a token, decided by the subscribe proxy.
    pub(crate) async fn subscribe_by_proxy(
        &self,
        proxy: &Proxy,
        req: &proto::SubscribeRequest,
    ) -> Result<ProxiedSubscribe, Failure> {
        let payload = Payload::of(&req.data, proxy.binary_encoding);
        let body = messages::SubscribeRequest {
            base: self.base(&payload),
            caller: self.caller(),
            channel: &req.channel,
            token: &req.token,
            payload,
        };
        let result: messages::SubscribeResult = match self.ask(proxy, &body).await? {
            Decision::Result(result) => result,
            // Allowed, with the namespace's options.
            Decision::Empty => Default::default(),
            decision => return Err(refusal(decision)),
        };
        Ok(ProxiedSubscribe {
            info: bytes_of(&result.info, &result.b64info)
                .map_err(|_| invalid_reply(proxy, "b64info does not decode"))?,
            data: self.client_bytes(proxy, &result.data, &result.b64data)?,
            overrides: result.overrides,
            expires_at: (result.expire_at > 0).then_some(result.expire_at),
        })
    }

    /// A client publication decided (and possibly rewritten) by the publish proxy.
    pub(crate) async fn publish_by_proxy(&self, proxy: &Proxy, request: &mut PublishRequest) -> Result<(), Failure> {
        let payload = Payload::of(&request.data, proxy.binary_encoding);
        let body = messages::PublishRequest {
            base: self.base(&payload),
            caller: self.caller(),
            channel: &request.channel,
            payload,
        };
        let result: messages::PublishResult = match self.ask(proxy, &body).await? {
            Decision::Result(result) => result,
            Decision::Empty => return Ok(()),
            decision => return Err(refusal(decision)),
        };
        // Here `data` wins over `b64data`, as in the reference server's publish proxy.
        let data = match &result.data {
            Some(raw) if raw.get() != "null" => Some(self.client_bytes(proxy, &result.data, "")?),
            _ if !result.b64data.is_empty() => Some(self.client_bytes(proxy, &None, &result.b64data)?),
            _ => None,
        };
        if let Some(data) = data {
            request.data = data;
        }
        request.skip_history |= result.skip_history;
        if !result.tags.is_empty() {
            request.tags = result.tags;
        }
        if !result.idempotency_key.is_empty() {
            request.idempotency_key = Some(result.idempotency_key);
        }
        request.delta |= result.delta;
        Ok(())
    }

    /// A client's `rpc`: to the RPC proxy of the method's namespace.
    pub(crate) async fn rpc(&self, req: proto::RpcRequest) -> Result<proto::RpcResult, Failure> {
        let proxy = crate::proxy::rpc_proxy(self.ctx.broker.config(), self.ctx.broker.proxies(), &req.method)?;
        let payload = Payload::of(&req.data, proxy.binary_encoding);
        let body = messages::RpcRequest {
            base: self.base(&payload),
            caller: self.caller(),
            method: &req.method,
            payload,
        };
        let result: messages::RpcResult = match self.ask(proxy, &body).await? {
            Decision::Result(result) => result,
            Decision::Empty => Default::default(),
            decision => return Err(refusal(decision)),
        };
        Ok(proto::RpcResult {
            data: self.client_bytes(proxy, &result.data, &result.b64data)?,
        })
    }

    /// Subscriptions whose expiry passed: those of namespaces with the sub_refresh proxy are
    /// refreshed by it, the others end (2501: the SDK resubscribes with a fresh token), and an
    /// expired server-side one closes the connection (3006).
    pub(crate) async fn expire_subscriptions(&mut self) -> Result<(), DisconnectCode> {
        let now = crate::store::now_ms() / 1000;
        let expired: Vec<(std::sync::Arc<str>, bool, bool)> = self
            .shared
            .subs
            .lock()
            .iter()
            .filter_map(|(channel, s)| {
                let s = s.lock();
                s.expires_at
                    .is_some_and(|exp| exp <= now)
                    .then(|| (channel.clone(), s.refresh_by_proxy, s.server_side))
            })
            .collect();
        for (channel, by_proxy, server_side) in expired {
            if server_side && !by_proxy {
                // The client cannot renew a subscription it did not make: it reconnects.
                return Err(DisconnectCode::SUBSCRIPTION_EXPIRED);
            }
            if !by_proxy {
                self.unsubscribe_with_push(&channel, UnsubscribeCode::EXPIRED);
                continue;
            }
            match self.sub_refresh_by_proxy(&channel, now).await? {
                Some(expires_at) => {
                    if let Some(subscription) = self.shared.subs.lock().get(&channel) {
                        subscription.lock().expires_at = expires_at;
                    }
                }
                None => self.unsubscribe_with_push(&channel, UnsubscribeCode::EXPIRED),
            }
        }
        Ok(())
    }

    /// Asks the sub_refresh proxy about `channel`: `Some(new expiry)` (`None` inside: never
    /// again) to go on, `None` when the subscription ends.
    async fn sub_refresh_by_proxy(&self, channel: &str, now: i64) -> Result<Option<Option<i64>>, DisconnectCode> {
        let Some(proxy) = self.ctx.broker.proxies().and_then(|p| p.sub_refresh.as_ref()) else {
            return Ok(None);
        };
        let body = messages::SubRefreshRequest {
            base: self.base(&Payload::default()),
            caller: self.caller(),
            channel,
        };
        match proxy
            .call::<messages::RefreshResult>(&body, self.handshake.headers())
            .await
        {
            Err(_) => Ok(Some(Some(now + REFRESH_RETRY_SECS))),
            Ok(Decision::Disconnect { code, reason }) => Err(DisconnectCode::custom(code, reason)),
            Ok(Decision::Error { .. } | Decision::Empty) => Ok(None),
            // An expiry already past would be asked about again at once: it ends it too.
            Ok(Decision::Result(result)) if result.expired || (result.expire_at > 0 && result.expire_at <= now) => {
                Ok(None)
            }
            // 0: no further expiry.
            Ok(Decision::Result(result)) => Ok(Some((result.expire_at > 0).then_some(result.expire_at))),
        }
    }
}

/// A namespace's options with a subscription's overrides applied.
pub(crate) fn overridden(options: &ChannelOptions, overrides: &Option<Overrides>) -> Option<ChannelOptions> {
    overrides.as_ref().map(|o| o.apply(options))
}

/// The backend's refusal as the command's outcome.
fn refusal<T>(decision: Decision<T>) -> Failure {
    match decision {
        Decision::Error {
            code,
            message,
            temporary,
        } => Failure::Reply(proto::Error {
            code,
            message,
            temporary,
        }),
        Decision::Disconnect { code, reason } => Failure::Disconnect(DisconnectCode::custom(code, reason)),
        Decision::Result(_) | Decision::Empty => unreachable!("only refusals are passed"),
    }
}

/// A reply whose fields cannot be used: a proxy failure like any other (error 100).
fn invalid_reply(proxy: &Proxy, why: &'static str) -> Failure {
    let name = proxy.kind().name();
    metrics::counter!("herald_proxy_errors_total", "proxy" => name, "reason" => "invalid").increment(1);
    tracing::warn!(
        proxy = name,
        why,
        "proxy reply not usable: the client's command gets error 100"
    );
    Failure::Error(ErrorCode::INTERNAL)
}
