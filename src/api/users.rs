//! Methods that act on a user's live connections: `subscribe`, `unsubscribe`, `disconnect`,
//! `refresh`. They reach the connections through the broker's registry and the sessions'
//! control channels; they do not wait for the sessions.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::ApiResult;
use crate::broker::Broker;
use crate::protocol::{DisconnectCode, ErrorCode, UnsubscribeCode};
use crate::session::Control;

#[derive(Deserialize)]
pub struct Subscription {
    user: String,
    channel: String,
    #[serde(default)]
    client: Option<String>,
}

#[derive(Deserialize)]
pub struct Disconnect {
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    whitelist: Vec<String>,
    #[serde(default)]
    disconnect: Option<Code>,
}

#[derive(Deserialize)]
struct Code {
    code: u16,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
pub struct Refresh {
    user: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    expired: bool,
    #[serde(default)]
    expire_at: Option<i64>,
}

fn empty() -> Value {
    json!({})
}

pub fn subscribe(broker: &Arc<Broker>, s: Subscription) -> ApiResult {
    broker.options(&s.channel)?;
    for session in broker.sessions().of_user(&s.user, s.client.as_deref()) {
        session.control(Control::Subscribe {
            channel: s.channel.clone(),
        });
    }
    Ok(empty())
}

pub fn unsubscribe(broker: &Arc<Broker>, s: Subscription) -> ApiResult {
    if s.channel.is_empty() {
        return Err(ErrorCode::BAD_REQUEST.into());
    }
    for session in broker.sessions().of_user(&s.user, s.client.as_deref()) {
        session.control(Control::Unsubscribe {
            channel: Arc::from(s.channel.as_str()),
            code: UnsubscribeCode::SERVER,
        });
    }
    Ok(empty())
}

pub fn disconnect(broker: &Arc<Broker>, d: Disconnect) -> ApiResult {
    let code = match d.disconnect {
        None => DisconnectCode::FORCE_DISCONNECT,
        Some(c) if (3000..=4999).contains(&c.code) => DisconnectCode::custom(c.code, c.reason),
        Some(_) => return Err(ErrorCode::BAD_REQUEST.into()),
    };
    for session in broker.sessions().of_user(&d.user, d.client.as_deref()) {
        if !d.whitelist.iter().any(|w| **w == *session.id) {
            session.control(Control::Disconnect(code.clone()));
        }
    }
    Ok(empty())
}

pub fn refresh(broker: &Arc<Broker>, r: Refresh) -> ApiResult {
    for session in broker.sessions().of_user(&r.user, r.client.as_deref()) {
        session.control(Control::Refresh {
            expired: r.expired,
            expire_at: r.expire_at.filter(|at| *at > 0),
        });
    }
    Ok(empty())
}
