//! `history` and `history_remove`.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::presence::Channel;
use super::{ApiError, ApiResult};
use crate::broker::Broker;

#[derive(Deserialize)]
pub struct History {
    channel: String,
    #[serde(default)]
    limit: i64,
    #[serde(default)]
    since: Option<Since>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
struct Since {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
}

pub async fn history(broker: &Arc<Broker>, h: History) -> ApiResult {
    let since = h.since.map(|s| (s.epoch, s.offset));
    let history = broker.history(&h.channel, h.limit, since, h.reverse).await?;
    let publications = serde_json::to_value(&history.publications).map_err(|e| ApiError::Malformed(e.to_string()))?;
    Ok(json!({ "publications": publications, "epoch": history.epoch, "offset": history.offset }))
}

pub async fn history_remove(broker: &Arc<Broker>, c: Channel) -> ApiResult {
    broker.remove_history(&c.channel).await?;
    Ok(json!({}))
}
