//! Node-level methods: `channels`, `info`, `batch`.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::{publish, ApiError, ApiResult};
use crate::broker::{Broker, PublishRequest};

#[derive(Deserialize)]
pub struct Channels {
    #[serde(default)]
    pattern: String,
}

#[derive(Deserialize)]
pub struct Batch {
    commands: Vec<std::collections::BTreeMap<String, Box<RawValue>>>,
}

pub async fn channels(broker: &Arc<Broker>, c: Channels) -> ApiResult {
    let channels: Map<String, Value> = broker
        .channels(&c.pattern)
        .await
        .into_iter()
        .map(|(name, clients)| (name, json!({ "num_clients": clients })))
        .collect();
    Ok(json!({ "channels": channels }))
}

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

/// Runs each command in order; each reply is `{"<method>": result}` or `{"error": …}`.
/// Consecutive publishes go to the broker together, in order, so that one group commit serves
/// them all. A malformed command ends the batch with an error; the commands before it have run.
pub async fn batch(broker: &Arc<Broker>, b: Batch) -> ApiResult {
    let mut replies = Vec::with_capacity(b.commands.len());
    // Publishes not yet sent: a request, or the error reply of one that was refused.
    let mut publishes: Vec<Result<PublishRequest, Value>> = Vec::new();
    let outcome = run_commands(broker, b.commands, &mut publishes, &mut replies).await;
    // However the batch ends, the publishes queued before that point are carried out.
    send_publishes(broker, &mut publishes, &mut replies).await;
    outcome?;
    Ok(json!({ "replies": replies }))
}

async fn run_commands(
    broker: &Arc<Broker>,
    commands: Vec<std::collections::BTreeMap<String, Box<RawValue>>>,
    publishes: &mut Vec<Result<PublishRequest, Value>>,
    replies: &mut Vec<Value>,
) -> Result<(), ApiError> {
    for command in commands {
        let mut entries = command.into_iter();
        let (Some((method, params)), None) = (entries.next(), entries.next()) else {
            return Err(ApiError::Malformed(
                "each batch command is an object with one method key".into(),
            ));
        };
        let malformed = |message: String| ApiError::Malformed(format!("{method}: {message}"));
        if method == "publish" {
            metrics::counter!("herald_api_requests_total", "method" => "publish").increment(1);
            match super::params(&params).and_then(publish::publish_request) {
                Ok(request) => publishes.push(Ok(request)),
                Err(ApiError::Code(code)) => publishes.push(Err(json!({ "error": super::error_json(code) }))),
                Err(ApiError::Malformed(message)) => return Err(malformed(message)),
            }
            continue;
        }
        send_publishes(broker, publishes, replies).await;
        if method == "batch" {
            return Err(ApiError::Malformed("batch inside batch".into()));
        }
        let reply = match super::call(broker, &method, &params).await {
            Ok(result) => json!({ method: result }),
            Err(ApiError::Code(code)) => json!({ "error": super::error_json(code) }),
            Err(ApiError::Malformed(message)) => return Err(malformed(message)),
        };
        replies.push(reply);
    }
    Ok(())
}

async fn send_publishes(
    broker: &Arc<Broker>,
    publishes: &mut Vec<Result<PublishRequest, Value>>,
    replies: &mut Vec<Value>,
) {
    if publishes.is_empty() {
        return;
    }
    let mut requests = Vec::with_capacity(publishes.len());
    let refused: Vec<Option<Value>> = publishes
        .drain(..)
        .map(|publish| match publish {
            Ok(request) => {
                requests.push(request);
                None
            }
            Err(reply) => Some(reply),
        })
        .collect();
    let mut results = broker.publish_all(requests).await.into_iter();
    for reply in refused {
        replies.push(reply.unwrap_or_else(|| publish::publish_reply(results.next().expect("one result per request"))));
    }
}
