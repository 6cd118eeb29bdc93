//! Methods that act on a user's live connections: `subscribe`, `unsubscribe`, `disconnect`,
//! `refresh`. The broker reaches the connections; these do not wait for the sessions.
//!
//! As in Centrifugo, `user` may be empty (it then names the anonymous connections) and `client`
//! narrows the call to one connection. `session` narrows it to the connection with that session
//! id, which Centrifugo gives only to unidirectional and emulated (HTTP-streaming, SSE)
//! connections; Herald's connections have none yet, so a call with a `session` reaches no
//! connection rather than all of the user's.

use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{nullable, ApiError, ApiResult};
use crate::broker::{Broker, UserTarget};
use crate::protocol::{DisconnectCode, ErrorCode};
use crate::proxy::messages;
use crate::session::SubscribeOptions;

/// Centrifugo's `SubscribeRequest`: a server-side subscription of the user's connections (or
/// one of them), with channel `info`, `data` for the `subscribe` push, an `expire_at` (then the
/// connection is closed with 3006), a `recover_since` position whose missed publications follow
/// the push, and channel option overrides (`override`).
#[derive(Deserialize)]
pub struct Subscribe {
    #[serde(default, deserialize_with = "nullable")]
    user: String,
    #[serde(default, deserialize_with = "nullable")]
    channel: String,
    #[serde(default, deserialize_with = "nullable")]
    client: String,
    #[serde(default, deserialize_with = "nullable")]
    session: String,
    #[serde(default, deserialize_with = "nullable")]
    expire_at: i64,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "nullable")]
    b64info: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "nullable")]
    b64data: String,
    #[serde(default)]
    recover_since: Option<super::history::StreamPosition>,
    #[serde(default)]
    r#override: Option<Override>,
}

/// `SubscribeOptionOverride`: each option as `{"value": bool}`.
#[derive(Deserialize)]
struct Override {
    #[serde(default)]
    presence: Option<BoolValue>,
    #[serde(default)]
    join_leave: Option<BoolValue>,
    #[serde(default)]
    force_recovery: Option<BoolValue>,
    #[serde(default)]
    force_positioning: Option<BoolValue>,
    #[serde(default)]
    force_push_join_leave: Option<BoolValue>,
}

#[derive(Deserialize)]
struct BoolValue {
    #[serde(default, deserialize_with = "nullable")]
    value: bool,
}

impl Subscribe {
    /// The subscription's options; `None` when it has none (a plain server-side subscribe).
    fn options(&self) -> Result<Option<SubscribeOptions>, ApiError> {
        let bytes = |json: &Option<Box<RawValue>>, b64: &str| {
            crate::proxy::messages::bytes_of(json, b64).map_err(|_| ApiError::Code(ErrorCode::BAD_REQUEST))
        };
        let flag = |v: &Option<BoolValue>| v.as_ref().map(|v| messages::BoolValue { value: v.value });
        let options = SubscribeOptions {
            info: bytes(&self.info, &self.b64info)?,
            data: bytes(&self.data, &self.b64data)?,
            expire_at: (self.expire_at > 0).then_some(self.expire_at),
            recover_since: self.recover_since.as_ref().map(|p| (p.epoch.clone(), p.offset)),
            overrides: self.r#override.as_ref().map(|o| messages::Overrides {
                presence: flag(&o.presence),
                join_leave: flag(&o.join_leave),
                force_push_join_leave: flag(&o.force_push_join_leave),
                force_recovery: flag(&o.force_recovery),
                force_positioning: flag(&o.force_positioning),
            }),
        };
        let plain = options.info.is_empty()
            && options.data.is_empty()
            && options.expire_at.is_none()
            && options.recover_since.is_none()
            && options.overrides.is_none();
        Ok((!plain).then_some(options))
    }
}

/// Centrifugo's `UnsubscribeRequest`.
#[derive(Deserialize)]
pub struct Unsubscribe {
    #[serde(default, deserialize_with = "nullable")]
    user: String,
    #[serde(default, deserialize_with = "nullable")]
    channel: String,
    #[serde(default, deserialize_with = "nullable")]
    client: String,
    #[serde(default, deserialize_with = "nullable")]
    session: String,
}

/// Centrifugo's `DisconnectRequest`.
#[derive(Deserialize)]
pub struct Disconnect {
    #[serde(default, deserialize_with = "nullable")]
    user: String,
    #[serde(default, deserialize_with = "nullable")]
    client: String,
    #[serde(default, deserialize_with = "nullable")]
    session: String,
    #[serde(default, deserialize_with = "nullable")]
    whitelist: Vec<String>,
    #[serde(default)]
    disconnect: Option<Code>,
}

#[derive(Deserialize)]
struct Code {
    #[serde(default, deserialize_with = "nullable")]
    code: u32,
    #[serde(default, deserialize_with = "nullable")]
    reason: String,
}

/// Centrifugo's `RefreshRequest`; `info` is the connections' new info, for what they do from
/// then on (publications, joins, later subscriptions).
#[derive(Deserialize)]
pub struct Refresh {
    #[serde(default, deserialize_with = "nullable")]
    user: String,
    #[serde(default, deserialize_with = "nullable")]
    client: String,
    #[serde(default, deserialize_with = "nullable")]
    session: String,
    #[serde(default, deserialize_with = "nullable")]
    expired: bool,
    #[serde(default, deserialize_with = "nullable")]
    expire_at: i64,
    #[serde(default)]
    info: Option<Box<RawValue>>,
}

fn empty() -> Value {
    json!({})
}

/// The connections a call reaches; `None` when it names a session (none has one yet).
fn target<'a>(user: &'a str, client: &'a str, session: &str) -> Option<UserTarget<'a>> {
    session.is_empty().then_some(UserTarget {
        user,
        client: Some(client).filter(|c| !c.is_empty()),
    })
}

/// `b64info` and `b64data` must be base64 when given (107 otherwise), as in Centrifugo.
fn check_base64(field: &str) -> Result<(), ApiError> {
    if field.is_empty() {
        return Ok(());
    }
    base64::engine::general_purpose::STANDARD
        .decode(field)
        .map(drop)
        .map_err(|_| ErrorCode::BAD_REQUEST.into())
}

pub async fn subscribe(broker: &Arc<Broker>, s: Subscribe) -> ApiResult {
    broker.options(&s.channel)?;
    check_base64(&s.b64data)?;
    check_base64(&s.b64info)?;
    let options = s.options()?;
    if let Some(target) = target(&s.user, &s.client, &s.session) {
        broker.subscribe_user(target, &s.channel, options).await?;
    }
    Ok(empty())
}

/// An empty channel is accepted and does nothing, as in Centrifugo (no subscription has it).
pub async fn unsubscribe(broker: &Arc<Broker>, u: Unsubscribe) -> ApiResult {
    if u.channel.is_empty() {
        return Ok(empty());
    }
    broker.options(&u.channel)?;
    if let Some(target) = target(&u.user, &u.client, &u.session) {
        broker.unsubscribe_user(target, &u.channel).await?;
    }
    Ok(empty())
}

/// Without `disconnect`, 3503 (force, no reconnect) as in Centrifugo. A custom code must be a
/// code the WebSocket close frame can carry for an application (3000–4999), else 107.
pub async fn disconnect(broker: &Arc<Broker>, d: Disconnect) -> ApiResult {
    let code = match d.disconnect {
        None => DisconnectCode::FORCE_DISCONNECT,
        Some(c) if (3000..=4999).contains(&c.code) => DisconnectCode::custom(c.code as u16, c.reason),
        Some(_) => return Err(ErrorCode::BAD_REQUEST.into()),
    };
    if let Some(target) = target(&d.user, &d.client, &d.session) {
        broker.disconnect_user(target, &d.whitelist, code).await?;
    }
    Ok(empty())
}

pub async fn refresh(broker: &Arc<Broker>, r: Refresh) -> ApiResult {
    let expire_at = Some(r.expire_at).filter(|at| *at > 0);
    if let Some(target) = target(&r.user, &r.client, &r.session) {
        let info = crate::proxy::messages::bytes_of(&r.info, "").unwrap_or_default();
        broker.refresh_user(target, r.expired, expire_at, info).await?;
    }
    Ok(empty())
}
