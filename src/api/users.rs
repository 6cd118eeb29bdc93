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

/// Centrifugo's `SubscribeRequest`. Only `channel`, `user`, `client` and `session` act today;
/// the other fields are checked as Centrifugo checks them and not yet applied: a server-side
/// subscription gets no channel info (`info`, `b64info`), no data in its `subscribe` push
/// (`data`, `b64data`), no expiry (`expire_at`), no recovery (`recover_since`) and the
/// namespace's options (`override`). They need the session's server-side subscribe to take
/// them (issue 12, item 6).
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
    #[allow(dead_code)]
    expire_at: i64,
    #[serde(default)]
    #[allow(dead_code)]
    info: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "nullable")]
    b64info: String,
    #[serde(default)]
    #[allow(dead_code)]
    data: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "nullable")]
    b64data: String,
    #[serde(default)]
    #[allow(dead_code)]
    recover_since: Option<super::history::StreamPosition>,
    #[serde(default)]
    #[allow(dead_code)]
    r#override: Option<Override>,
}

/// `SubscribeOptionOverride`: each option as `{"value": bool}`.
#[derive(Deserialize)]
#[allow(dead_code)]
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
#[allow(dead_code)]
struct BoolValue {
    #[serde(default, deserialize_with = "nullable")]
    value: bool,
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

/// Centrifugo's `RefreshRequest`. `info` (new connection info) is checked and not yet
/// applied: it needs the session to take it (issue 12, item 6).
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
    #[allow(dead_code)]
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
    if let Some(target) = target(&s.user, &s.client, &s.session) {
        broker.subscribe_user(target, &s.channel).await?;
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
        broker.refresh_user(target, r.expired, expire_at).await?;
    }
    Ok(empty())
}
