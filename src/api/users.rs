//! Methods that act on a user's live connections: `subscribe`, `unsubscribe`, `disconnect`,
//! `refresh`. The broker reaches the connections; these do not wait for the sessions.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::ApiResult;
use crate::broker::{Broker, UserTarget};
use crate::protocol::{DisconnectCode, ErrorCode};

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

fn target<'a>(user: &'a str, client: &'a Option<String>) -> UserTarget<'a> {
    UserTarget {
        user,
        client: client.as_deref(),
    }
}

pub async fn subscribe(broker: &Arc<Broker>, s: Subscription) -> ApiResult {
    broker.subscribe_user(target(&s.user, &s.client), &s.channel).await?;
    Ok(empty())
}

pub async fn unsubscribe(broker: &Arc<Broker>, s: Subscription) -> ApiResult {
    broker.unsubscribe_user(target(&s.user, &s.client), &s.channel).await?;
    Ok(empty())
}

pub async fn disconnect(broker: &Arc<Broker>, d: Disconnect) -> ApiResult {
    let code = match d.disconnect {
        None => DisconnectCode::FORCE_DISCONNECT,
        Some(c) if (3000..=4999).contains(&c.code) => DisconnectCode::custom(c.code, c.reason),
        Some(_) => return Err(ErrorCode::BAD_REQUEST.into()),
    };
    broker
        .disconnect_user(target(&d.user, &d.client), &d.whitelist, code)
        .await?;
    Ok(empty())
}

pub async fn refresh(broker: &Arc<Broker>, r: Refresh) -> ApiResult {
    let expire_at = r.expire_at.filter(|at| *at > 0);
    broker
        .refresh_user(target(&r.user, &r.client), r.expired, expire_at)
        .await?;
    Ok(empty())
}
