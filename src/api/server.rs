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
///
/// Bounded (issue 11): at most `api.max_batch_commands` commands (else 400 before any runs), and
/// replies are kept as JSON text, at most `api.max_batch_reply_size` bytes of them: once over,
/// the commands not yet run are not run and each answers error 106. Returns the result's JSON.
pub async fn batch(broker: &Arc<Broker>, b: Batch) -> Result<Vec<u8>, ApiError> {
    let api = &broker.config().api;
    if b.commands.len() > api.max_batch_commands {
        return Err(ApiError::Malformed(format!(
            "batch of {} commands, over api.max_batch_commands ({})",
            b.commands.len(),
            api.max_batch_commands
        )));
    }
    let mut replies = Replies::new(api.max_batch_reply_size);
    // Publishes not yet sent: a request, or the error reply of one that was refused.
    let mut publishes: Vec<Result<PublishRequest, Value>> = Vec::new();
    let outcome = run_commands(broker, b.commands, &mut publishes, &mut replies).await;
    // However the batch ends, the publishes queued before that point are carried out.
    send_publishes(broker, &mut publishes, &mut replies).await;
    outcome?;
    Ok(replies.finish())
}

/// The replies of a batch, as the JSON text of `{"replies": [...]}` being written.
struct Replies {
    text: Vec<u8>,
    count: usize,
    budget: usize,
}

impl Replies {
    fn new(budget: usize) -> Self {
        Self {
            text: b"{\"replies\":[".to_vec(),
            count: 0,
            budget,
        }
    }

    fn push(&mut self, reply: &Value) {
        if self.count > 0 {
            self.text.push(b',');
        }
        self.count += 1;
        serde_json::to_writer(&mut self.text, reply).expect("a JSON value serializes into memory");
    }

    fn over_budget(&self) -> bool {
        self.text.len() > self.budget
    }

    fn finish(mut self) -> Vec<u8> {
        self.text.extend_from_slice(b"]}");
        self.text
    }
}

async fn run_commands(
    broker: &Arc<Broker>,
    commands: Vec<std::collections::BTreeMap<String, Box<RawValue>>>,
    publishes: &mut Vec<Result<PublishRequest, Value>>,
    replies: &mut Replies,
) -> Result<(), ApiError> {
    let over_budget = json!({ "error": super::error_json(crate::protocol::ErrorCode::LIMIT_EXCEEDED) });
    for command in commands {
        if replies.over_budget() {
            // Not run: the reply would outgrow api.max_batch_reply_size.
            send_publishes(broker, publishes, replies).await;
            metrics::counter!("herald_limit_rejections_total", "limit" => "api_batch_reply").increment(1);
            replies.push(&over_budget);
            continue;
        }
        let (method, request) = match parse_step(command)? {
            Step::Publish(publish) => {
                metrics::counter!("herald_api_requests_total", "method" => "publish").increment(1);
                publishes.push(publish);
                continue;
            }
            Step::Call(method, request) => (method, request),
        };
        send_publishes(broker, publishes, replies).await;
        metrics::counter!("herald_api_requests_total", "method" => super::method_label(&method)).increment(1);
        let result = match request {
            Ok(request) => request.run(broker).await,
            Err(code) => Err(ApiError::Code(code)),
        };
        let reply = match result {
            Ok(result) => json!({ method: result }),
            Err(ApiError::Code(code)) => json!({ "error": super::error_json(code) }),
            Err(ApiError::Malformed(message)) => return Err(ApiError::Malformed(format!("{method}: {message}"))),
        };
        replies.push(&reply);
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
    replies: &mut Replies,
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
        let reply = reply.unwrap_or_else(|| publish::publish_reply(results.next().expect("one result per request")));
        replies.push(&reply);
    }
}
