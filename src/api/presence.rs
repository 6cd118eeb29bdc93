//! `presence` and `presence_stats`.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiResult};
use crate::broker::Broker;

#[derive(Deserialize)]
pub struct Channel {
    pub channel: String,
}

pub async fn presence(broker: &Arc<Broker>, c: Channel) -> ApiResult {
    let presence = broker.presence(&c.channel).await?;
    serde_json::to_value(crate::protocol::proto::PresenceResult { presence })
        .map_err(|e| ApiError::Malformed(e.to_string()))
}

pub async fn presence_stats(broker: &Arc<Broker>, c: Channel) -> ApiResult {
    let (clients, users) = broker.presence_stats(&c.channel).await?;
    Ok(json!({ "num_clients": clients, "num_users": users }))
}
