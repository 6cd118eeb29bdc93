//! Node-level methods: `channels`, `info`, `batch`.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::{publish, ApiError, ApiResult, Request};
use crate::broker::{Broker, PublishRequest};
use crate::protocol::ErrorCode;

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
        let (method, request) = match parse_step(command)? {
            Step::Publish(publish) => {
                metrics::counter!("herald_api_requests_total", "method" => "publish").increment(1);
                publishes.push(publish);
                continue;
            }
            Step::Call(method, request) => (method, request),
        };
        send_publishes(broker, publishes, replies).await;
        metrics::counter!("herald_api_requests_total", "method" => method.clone()).increment(1);
        let result = match request {
            Ok(request) => request.run(broker).await,
            Err(code) => Err(ApiError::Code(code)),
        };
        let reply = match result {
            Ok(result) => json!({ method: result }),
            Err(ApiError::Code(code)) => json!({ "error": super::error_json(code) }),
            Err(ApiError::Malformed(message)) => return Err(ApiError::Malformed(format!("{method}: {message}"))),
        };
        replies.push(reply);
    }
    Ok(())
}

/// One command of a batch, parsed.
enum Step {
    /// A publish, to be sent together with the publishes next to it; or the error reply of one
    /// that was refused.
    Publish(Result<PublishRequest, Value>),
    /// Any other method, run on its own: its request, or the error code it answers.
    Call(String, Result<Request, ErrorCode>),
}

/// Parses one command of a batch. A malformed command is an error that ends the batch.
fn parse_step(command: std::collections::BTreeMap<String, Box<RawValue>>) -> Result<Step, ApiError> {
    let mut entries = command.into_iter();
    let (Some((method, params)), None) = (entries.next(), entries.next()) else {
        return Err(ApiError::Malformed(
            "each batch command is an object with one method key".into(),
        ));
    };
    let malformed = |message: String| ApiError::Malformed(format!("{method}: {message}"));
    if method == "publish" {
        return match super::params(&params).and_then(publish::publish_request) {
            Ok(request) => Ok(Step::Publish(Ok(request))),
            Err(ApiError::Code(code)) => Ok(Step::Publish(Err(json!({ "error": super::error_json(code) })))),
            Err(ApiError::Malformed(message)) => Err(malformed(message)),
        };
    }
    if method == "batch" {
        return Err(ApiError::Malformed("batch inside batch".into()));
    }
    match Request::parse(&method, &params) {
        Ok(request) => Ok(Step::Call(method, Ok(request))),
        Err(ApiError::Code(code)) => Ok(Step::Call(method, Err(code))),
        Err(ApiError::Malformed(message)) => Err(malformed(message)),
    }
}

impl Batch {
    /// Parses every command as [`batch`] does before running it, up to the first malformed one.
    /// For the api_bodies fuzz target, which has no broker to run them.
    pub(crate) fn parse_commands(self) -> Result<usize, ApiError> {
        self.commands
            .into_iter()
            .map(parse_step)
            .try_fold(0, |n, step| step.map(|_| n + 1))
    }
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

fn node_uid() -> &'static str {
    static UID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    UID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "herald".into())
}
