//! Node-level methods: `channels`, `info`.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{nullable, ApiResult};
use crate::broker::Broker;

/// Centrifugo's `ChannelsRequest`: a glob `pattern`, empty for every channel.
#[derive(Deserialize)]
pub struct Channels {
    #[serde(default, deserialize_with = "nullable")]
    pattern: String,
}

/// `{channels: {name: {num_clients}}}`: the channels with subscribers on any node.
pub async fn channels(broker: &Arc<Broker>, c: Channels) -> ApiResult {
    let channels: Map<String, Value> = broker
        .channels(&c.pattern)
        .await
        .into_iter()
        .map(|(name, clients)| (name, json!({ "num_clients": clients })))
        .collect();
    Ok(json!({ "channels": channels }))
}

/// `{nodes: [...]}`, one entry per node with Centrifugo's `NodeResult` fields (no `metrics` or
/// `process`, which Centrifugo leaves out too unless it collects metrics).
pub async fn info(broker: &Arc<Broker>) -> ApiResult {
    let nodes: Vec<Value> = broker
        .info()
        .await
        .into_iter()
        .map(|node| {
            json!({
                "uid": node.id.as_str(),
                "name": node.name,
                "version": node.version,
                "num_clients": node.clients,
                "num_users": node.users,
                "num_channels": node.channels,
                "num_subs": node.subscriptions,
                "uptime": node.uptime.as_secs(),
            })
        })
        .collect();
    Ok(json!({ "nodes": nodes }))
}
