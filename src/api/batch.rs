//! `batch`: several commands in one request, answered `{"replies": [...]}` with one reply per
//! command, in command order: `{"<method>": result}` or `{"error": …}` (Centrifugo's
//! `BatchRequest` and `BatchResponse`).
//!
//! Every command is parsed before any runs: a malformed one refuses the whole batch (400) and
//! runs nothing, as Centrifugo's decoder does. A command that names no known method answers 104
//! and a `null` one 107, in their own slots.
//!
//! In order (the default), each command runs after the one before it, and consecutive publishes
//! go to the broker together, so that one group commit serves them all. With `parallel: true`
//! commands may run concurrently, up to [`PARALLEL_COMMANDS`] at a time; their replies still
//! come in command order.
//!
//! Bounded (issue 11): at most `api.max_batch_commands` commands (else 400 before any runs), and
//! replies are kept as JSON text, about `api.max_batch_reply_size` bytes of them: once over, the
//! commands not yet started are not run and each answers error 106.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::stream::{FuturesOrdered, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{nullable, publish, ApiError, Request};
use crate::broker::{Broker, PublishRequest};
use crate::protocol::ErrorCode;

/// Most commands of a parallel batch running at once. Past this, more concurrency only adds
/// replies held before they can be written in order; the store's group commit already serves
/// the publishes running together.
const PARALLEL_COMMANDS: usize = 64;

#[derive(Deserialize)]
pub struct Batch {
    #[serde(default, deserialize_with = "nullable")]
    commands: Vec<Option<BTreeMap<String, Box<RawValue>>>>,
    #[serde(default, deserialize_with = "nullable")]
    parallel: bool,
}

/// One command of a batch, parsed.
enum Step {
    Publish(PublishRequest),
    /// Any other method.
    Call(Request),
    /// Answered without running: an unknown method, a `null` command, or parameters the method
    /// refuses (an empty channel, bad base64). The method's metric label, and the error.
    Refused(&'static str, ErrorCode),
}

impl Step {
    fn method(&self) -> &'static str {
        match self {
            Self::Publish(_) => "publish",
            Self::Call(request) => request.method(),
            Self::Refused(method, _) => method,
        }
    }
}

/// Parses one command of a batch. A malformed command is an error that refuses the batch.
fn parse_step(command: Option<BTreeMap<String, Box<RawValue>>>) -> Result<Step, ApiError> {
    let Some(command) = command else {
        return Ok(Step::Refused("unknown", ErrorCode::BAD_REQUEST));
    };
    // A method given as `null` is absent, as in Centrifugo.
    let mut entries = command.into_iter().filter(|(_, params)| params.get() != "null");
    let (method, params) = match (entries.next(), entries.next()) {
        (None, _) => return Ok(Step::Refused("unknown", ErrorCode::METHOD_NOT_FOUND)),
        (Some(entry), None) => entry,
        (Some(_), Some(_)) => {
            return Err(ApiError::Malformed(
                "each batch command is an object with one method key".into(),
            ))
        }
    };
    if method == "batch" {
        return Err(ApiError::Malformed("batch inside batch".into()));
    }
    match Request::parse(&method, &params) {
        Ok(Request::Publish(request)) => Ok(Step::Publish(*request)),
        Ok(request) => Ok(Step::Call(request)),
        Err(ApiError::Code(code)) => Ok(Step::Refused(super::method_label(&method), code)),
        Err(ApiError::Malformed(message)) => Err(ApiError::Malformed(format!("{method}: {message}"))),
        Err(backend @ ApiError::Backend { .. }) => Err(backend),
    }
}

impl Batch {
    /// Parses every command as [`batch`] does before running any, up to the first malformed one.
    /// For the api_bodies fuzz target, which has no broker to run them.
    pub(crate) fn parse_commands(self) -> Result<usize, ApiError> {
        self.commands
            .into_iter()
            .map(parse_step)
            .try_fold(0, |n, step| step.map(|_| n + 1))
    }
}

/// Runs a batch; returns the whole answer's JSON, `{"replies": [...]}`.
pub async fn batch(broker: &Arc<Broker>, b: Batch) -> Result<Vec<u8>, ApiError> {
    let api = &broker.config().api;
    if b.commands.len() > api.max_batch_commands {
        return Err(ApiError::Malformed(format!(
            "batch of {} commands, over api.max_batch_commands ({})",
            b.commands.len(),
            api.max_batch_commands
        )));
    }
    let steps = b.commands.into_iter().map(parse_step).collect::<Result<Vec<_>, _>>()?;
    let mut replies = Replies::new(api.max_batch_reply_size);
    if b.parallel {
        run_parallel(broker, steps, &mut replies).await;
    } else {
        run_in_order(broker, steps, &mut replies).await;
    }
    Ok(replies.finish())
}

async fn run_in_order(broker: &Arc<Broker>, steps: Vec<Step>, replies: &mut Replies) {
    // Publishes not yet sent: a request, or the error of one that was refused.
    let mut publishes: Vec<Result<PublishRequest, ErrorCode>> = Vec::new();
    for step in steps {
        if replies.over_budget() {
            send_publishes(broker, &mut publishes, replies).await;
            replies.push_not_run();
            continue;
        }
        count(&step);
        match step {
            Step::Publish(request) => publishes.push(Ok(request)),
            Step::Refused(_, code) if !publishes.is_empty() => publishes.push(Err(code)),
            Step::Refused(_, code) => replies.push(&error_reply(code)),
            Step::Call(request) => {
                send_publishes(broker, &mut publishes, replies).await;
                replies.push(&call_reply(broker, request).await);
            }
        }
    }
    send_publishes(broker, &mut publishes, replies).await;
}

/// Runs up to [`PARALLEL_COMMANDS`] at once and writes each reply when those before it are
/// written. A command once started always runs to its end and its reply is written, so the
/// reply budget can be passed by the replies of the commands in flight.
async fn run_parallel(broker: &Arc<Broker>, steps: Vec<Step>, replies: &mut Replies) {
    let mut steps = steps.into_iter();
    let mut running = FuturesOrdered::new();
    loop {
        while running.len() < PARALLEL_COMMANDS && !replies.over_budget() {
            let Some(step) = steps.next() else { break };
            count(&step);
            running.push_back(step_reply(broker, step));
        }
        let Some(reply) = running.next().await else { break };
        replies.push(&reply);
    }
    for _ in steps {
        replies.push_not_run();
    }
}

fn count(step: &Step) {
    metrics::counter!("herald_api_requests_total", "method" => step.method()).increment(1);
}

async fn step_reply(broker: &Arc<Broker>, step: Step) -> Value {
    match step {
        Step::Publish(request) => publish::publish_reply(broker.publish(request).await),
        Step::Call(request) => call_reply(broker, request).await,
        Step::Refused(_, code) => error_reply(code),
    }
}

async fn call_reply(broker: &Arc<Broker>, request: Request) -> Value {
    let method = request.method();
    match request.run(broker).await {
        Ok(result) => json!({ method: result }),
        Err(ApiError::Code(code)) => error_reply(code),
        Err(ApiError::Backend { code, message }) => json!({ "error": { "code": code, "message": message } }),
        // Parameters were all checked before the batch ran.
        Err(ApiError::Malformed(message)) => {
            tracing::error!(method, %message, "batch command failed after its parameters were checked");
            error_reply(ErrorCode::INTERNAL)
        }
    }
}

fn error_reply(code: ErrorCode) -> Value {
    json!({ "error": super::error_json(code) })
}

/// Sends the queued publishes to the broker together and writes their replies in order.
async fn send_publishes(
    broker: &Arc<Broker>,
    publishes: &mut Vec<Result<PublishRequest, ErrorCode>>,
    replies: &mut Replies,
) {
    if publishes.is_empty() {
        return;
    }
    let mut requests = Vec::with_capacity(publishes.len());
    let refused: Vec<Option<ErrorCode>> = publishes
        .drain(..)
        .map(|publish| match publish {
            Ok(request) => {
                requests.push(request);
                None
            }
            Err(code) => Some(code),
        })
        .collect();
    let mut results = broker.publish_all(requests).await.into_iter();
    for refusal in refused {
        let reply = match refusal {
            Some(code) => error_reply(code),
            None => publish::publish_reply(results.next().expect("one result per request")),
        };
        replies.push(&reply);
    }
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

    /// The reply of a command not run: its reply could outgrow api.max_batch_reply_size.
    fn push_not_run(&mut self) {
        metrics::counter!("herald_limit_rejections_total", "limit" => "api_batch_reply").increment(1);
        self.push(&error_reply(ErrorCode::LIMIT_EXCEEDED));
    }

    fn over_budget(&self) -> bool {
        self.text.len() > self.budget
    }

    fn finish(mut self) -> Vec<u8> {
        self.text.extend_from_slice(b"]}");
        self.text
    }
}
