//! Node-level methods: `channels`, `info`, `batch`.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::{ApiError, ApiResult};
use crate::broker::Broker;

#[derive(Deserialize)]
pub struct Channels {
    #[serde(default)]
    pattern: String,
}

#[derive(Deserialize)]
pub struct Batch {
    commands: Vec<std::collections::BTreeMap<String, Box<RawValue>>>,
}

pub fn channels(broker: &Arc<Broker>, c: Channels) -> ApiResult {
    let channels: Map<String, Value> = broker
        .channels(&c.pattern)
        .into_iter()
        .map(|(name, clients)| (name, json!({ "num_clients": clients })))
        .collect();
    Ok(json!({ "channels": channels }))
}

pub fn info(broker: &Arc<Broker>) -> ApiResult {
    let (clients, users) = broker.sessions().counts();
    let channels = broker.hub().channels();
    Ok(json!({
        "nodes": [{
            "uid": node_uid(),
            "name": hostname(),
            "version": crate::VERSION,
            "num_clients": clients,
            "num_users": users,
            "num_channels": channels.len(),
            "num_subs": broker.hub().num_subscriptions(),
            "uptime": broker.uptime().as_secs(),
        }]
    }))
}

/// Runs each command in order; each reply is `{"<method>": result}` or `{"error": …}`.
pub async fn batch(broker: &Arc<Broker>, b: Batch) -> ApiResult {
    let mut replies = Vec::with_capacity(b.commands.len());
    for command in b.commands {
        let mut entries = command.into_iter();
        let (Some((method, params)), None) = (entries.next(), entries.next()) else {
            return Err(ApiError::Malformed(
                "each batch command is an object with one method key".into(),
            ));
        };
        if method == "batch" {
            return Err(ApiError::Malformed("batch inside batch".into()));
        }
        let reply = match super::call(broker, &method, &params).await {
            Ok(result) => json!({ method: result }),
            Err(ApiError::Code(code)) => json!({ "error": super::error_json(code) }),
            Err(ApiError::Malformed(message)) => return Err(ApiError::Malformed(format!("{method}: {message}"))),
        };
        replies.push(reply);
    }
    Ok(json!({ "replies": replies }))
}

fn node_uid() -> &'static str {
    static UID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    UID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "herald".into())
}
