//! The HTTP server API: `POST /api/<method>` with a JSON body, authenticated by
//! `X-API-Key: <key>` or `Authorization: apikey <key>`. Request and reply shapes are Centrifugo
//! v6's (`internal/apiproto/api.proto`), so its API clients (PyPI `cent`) work unchanged.
//!
//! Replies are `200 {"result": …}` or `200 {"error": {"code", "message"}}`, except `batch`, which
//! answers `200 {"replies": […]}` as Centrifugo does; with the header
//! `X-Herald-Error-Mode: transport` (or `X-Centrifugo-Error-Mode`) errors become HTTP statuses
//! (100→500, 102/104→404, 107/108→400, 112→416). A missing or wrong key is 401, an unknown
//! method 404, a malformed body 400 with a message. Like Centrifugo's decoder (Go's
//! `encoding/json`), parameters ignore unknown fields and read `null` as the field's zero value.
//! Each method lives in its own file and is listed in [`Request`].

mod batch;
mod history;
mod presence;
mod publish;
mod rpc;
mod server;
mod users;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::broker::{Broker, BrokerError};
use crate::protocol::ErrorCode;

/// Why an API call failed.
#[derive(Debug)]
pub enum ApiError {
    /// The body is not what the method takes: HTTP 400 with this message.
    Malformed(String),
    /// A protocol error in the reply body (or as a status in transport error mode).
    Code(ErrorCode),
    /// An error the application backend answered (RPC proxy), passed on as it is.
    Backend { code: u32, message: String },
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        Self::Code(e.code())
    }
}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        Self::Code(code)
    }
}

pub type ApiResult = Result<Value, ApiError>;

/// Decodes a method's parameters (kept raw until here so `data` stays byte-exact).
fn params<T: DeserializeOwned>(body: &RawValue) -> Result<T, ApiError> {
    serde_json::from_str(body.get()).map_err(|e| ApiError::Malformed(format!("invalid parameters: {e}")))
}

/// A parameter given as `null` is its zero value, as Centrifugo's decoder reads it (clients that
/// serialize unset fields as `null` work). Use with `#[serde(default)]` for a missing field.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// The method as a metric label: any name other than [`Request::METHODS`] counts as `unknown`,
/// so that clients cannot create metric series at will (issue 11).
fn method_label(method: &str) -> &'static str {
    Request::METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("unknown")
}

/// Runs one API method other than `batch` (which [`handler`] runs, and which may not nest).
pub async fn call(broker: &Arc<Broker>, method: &str, body: &RawValue) -> ApiResult {
    metrics::counter!("herald_api_requests_total", "method" => method_label(method)).increment(1);
    Request::parse(method, body)?.run(broker).await
}

/// One API call with its parameters decoded: everything a method checks before it reaches the
/// broker. Kept apart from [`Request::run`] so the api_bodies fuzz target can parse every
/// method's body without a broker.
pub enum Request {
    Publish(Box<crate::broker::PublishRequest>),
    Broadcast(Vec<crate::broker::PublishRequest>),
    Subscribe(users::Subscribe),
    Unsubscribe(users::Unsubscribe),
    Disconnect(users::Disconnect),
    Refresh(users::Refresh),
    Presence(presence::Channel),
    PresenceStats(presence::Channel),
    History(history::History),
    HistoryRemove(presence::Channel),
    Channels(server::Channels),
    Info,
    Rpc(rpc::Rpc),
    Batch(batch::Batch),
}

impl Request {
    /// Every method name [`Request::parse`] knows.
    pub const METHODS: &[&str] = &[
        "publish",
        "broadcast",
        "subscribe",
        "unsubscribe",
        "disconnect",
        "refresh",
        "presence",
        "presence_stats",
        "history",
        "history_remove",
        "channels",
        "info",
        "rpc",
        "batch",
    ];

    pub fn parse(method: &str, body: &RawValue) -> Result<Self, ApiError> {
        Ok(match method {
            "publish" => Self::Publish(Box::new(publish::publish_request(params(body)?)?)),
            "broadcast" => Self::Broadcast(publish::broadcast_requests(params(body)?)?),
            "subscribe" => Self::Subscribe(params(body)?),
            "unsubscribe" => Self::Unsubscribe(params(body)?),
            "disconnect" => Self::Disconnect(params(body)?),
            "refresh" => Self::Refresh(params(body)?),
            "presence" => Self::Presence(params(body)?),
            "presence_stats" => Self::PresenceStats(params(body)?),
            "history" => Self::History(params(body)?),
            "history_remove" => Self::HistoryRemove(params(body)?),
            "channels" => Self::Channels(params(body)?),
            "info" => Self::Info,
            "rpc" => Self::Rpc(params(body)?),
            "batch" => Self::Batch(params(body)?),
            _ => return Err(ApiError::Code(ErrorCode::METHOD_NOT_FOUND)),
        })
    }

    /// The method's name: the key of its reply in a batch.
    fn method(&self) -> &'static str {
        match self {
            Self::Publish(_) => "publish",
            Self::Broadcast(_) => "broadcast",
            Self::Subscribe(_) => "subscribe",
            Self::Unsubscribe(_) => "unsubscribe",
            Self::Disconnect(_) => "disconnect",
            Self::Refresh(_) => "refresh",
            Self::Presence(_) => "presence",
            Self::PresenceStats(_) => "presence_stats",
            Self::History(_) => "history",
            Self::HistoryRemove(_) => "history_remove",
            Self::Channels(_) => "channels",
            Self::Info => "info",
            Self::Rpc(_) => "rpc",
            Self::Batch(_) => "batch",
        }
    }

    async fn run(self, broker: &Arc<Broker>) -> ApiResult {
        match self {
            Self::Publish(p) => publish::publish(broker, *p).await,
            Self::Broadcast(b) => publish::broadcast(broker, b).await,
            Self::Subscribe(s) => users::subscribe(broker, s).await,
            Self::Unsubscribe(s) => users::unsubscribe(broker, s).await,
            Self::Disconnect(d) => users::disconnect(broker, d).await,
            Self::Refresh(r) => users::refresh(broker, r).await,
            Self::Presence(c) => presence::presence(broker, c).await,
            Self::PresenceStats(c) => presence::presence_stats(broker, c).await,
            Self::History(h) => history::history(broker, h).await,
            Self::HistoryRemove(c) => history::history_remove(broker, c).await,
            Self::Channels(c) => server::channels(broker, c).await,
            Self::Info => server::info(broker).await,
            Self::Rpc(r) => rpc::rpc(broker, r).await,
            // [`handler`] runs a batch itself (its replies are written as text); one never nests.
            Self::Batch(_) => Err(ApiError::Malformed("batch inside batch".into())),
        }
    }
}

/// The request body as the handler takes it: blank is `{}`, anything else must be one JSON
/// object. The error is the 400 answer's text.
pub fn body_of(body: &[u8]) -> Result<&RawValue, String> {
    let text = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    let raw: &RawValue = serde_json::from_slice(text).map_err(|e| format!("malformed body: {e}"))?;
    if !raw.get().trim_start().starts_with('{') {
        return Err("malformed body: expected a JSON object".into());
    }
    Ok(raw)
}

/// `POST /api/{method}`. The key is checked from the headers before a byte of the body is
/// read (401 at once), a declared `Content-Length` over `api.max_body_size` is refused (413)
/// before reading, and the body must arrive within `http.body_read_timeout` (408): an
/// unauthenticated or slow client cannot pin the node's memory (issue 11).
pub async fn handler(
    State(broker): State<Arc<Broker>>,
    Path(method): Path<String>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    if !authorized(&headers, broker.config().api.key.as_deref()) {
        return crate::transport::closing(
            (StatusCode::UNAUTHORIZED, "unauthorized: missing or wrong API key").into_response(),
        );
    }
    if !Request::METHODS.contains(&method.as_str()) {
        // Centrifugo has no route for it either: a 404, whatever the error mode.
        metrics::counter!("herald_api_requests_total", "method" => "unknown").increment(1);
        return (StatusCode::NOT_FOUND, "unknown API method").into_response();
    }
    let body = match read_body(body, &headers, broker.config()).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let body = match body_of(&body) {
        Ok(body) => body,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    let transport_errors = ["x-herald-error-mode", "x-centrifugo-error-mode"].iter().any(|h| {
        headers
            .get(*h)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"transport"))
    });
    // From the body read to the answer: what the caller waits for once it has sent the request.
    let started = std::time::Instant::now();
    let label = if method == "batch" {
        "batch"
    } else {
        method_label(&method)
    };
    let response = answer(&broker, &method, body, transport_errors).await;
    metrics::histogram!("herald_api_request_duration_seconds", "method" => label)
        .record(started.elapsed().as_secs_f64());
    response
}

async fn answer(broker: &Arc<Broker>, method: &str, body: &RawValue, transport_errors: bool) -> Response {
    if method == "batch" {
        metrics::counter!("herald_api_requests_total", "method" => "batch").increment(1);
        // A batch's replies are written as JSON text as they come (bounded by
        // api.max_batch_reply_size), never held as a tree; that text is the whole answer,
        // `{"replies": [...]}` with no `result` around it (Centrifugo's BatchResponse).
        let replies = match params(body) {
            Ok(request) => batch::batch(broker, request).await,
            Err(e) => Err(e),
        };
        return match replies {
            Ok(replies) => json_bytes(replies),
            Err(e) => failure(e, transport_errors),
        };
    }
    match call(broker, method, body).await {
        Ok(result) => {
            let result = serde_json::to_vec(&result).expect("a JSON value serializes into memory");
            let mut body = Vec::with_capacity(result.len() + 11);
            body.extend_from_slice(b"{\"result\":");
            body.extend_from_slice(&result);
            body.push(b'}');
            json_bytes(body)
        }
        Err(e) => failure(e, transport_errors),
    }
}

fn json_bytes(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// The answer to a call that failed: 400 with the message, or the error code in the body (or as
/// a status in transport error mode).
fn failure(error: ApiError, transport_errors: bool) -> Response {
    match error {
        ApiError::Malformed(message) => (StatusCode::BAD_REQUEST, message).into_response(),
        ApiError::Code(code) if transport_errors => (
            status_of(code),
            serde_json::json!({"error": error_json(code)}).to_string(),
        )
            .into_response(),
        ApiError::Code(code) => json_response(StatusCode::OK, &serde_json::json!({ "error": error_json(code) })),
        ApiError::Backend { code, message } => {
            let error = serde_json::json!({"error": {"code": code, "message": message}});
            match transport_errors {
                true => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
                false => json_response(StatusCode::OK, &error),
            }
        }
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// An error as the API writes it. Codes and messages are Centrifugo's API errors
/// (`apiproto/errors.go`); only 104 reads differently there than to clients ("not found", not
/// "method not found").
pub(crate) fn error_json(code: ErrorCode) -> Value {
    let message = match code {
        ErrorCode::METHOD_NOT_FOUND => "not found",
        _ => code.message,
    };
    serde_json::json!({"code": code.code, "message": message})
}

fn status_of(code: ErrorCode) -> StatusCode {
    match code.code {
        102 | 104 => StatusCode::NOT_FOUND,
        107 | 108 => StatusCode::BAD_REQUEST,
        112 => StatusCode::RANGE_NOT_SATISFIABLE,
        113 => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The whole request body, within `api.max_body_size` bytes and `http.body_read_timeout`.
async fn read_body(
    body: axum::body::Body,
    headers: &HeaderMap,
    config: &crate::config::Config,
) -> Result<Bytes, Response> {
    use http_body_util::BodyExt;
    let limit = config.api.max_body_size;
    let too_large = || {
        metrics::counter!("herald_limit_rejections_total", "limit" => "api_body").increment(1);
        crate::transport::closing(
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over {limit} bytes (api.max_body_size)"),
            )
                .into_response(),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(config.http.body_read_timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(crate::transport::closing(
            (StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}")).into_response(),
        )),
        Err(_) => {
            metrics::counter!("herald_http_timeouts_total", "timeout" => "body_read").increment(1);
            Err(crate::transport::closing(
                (
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "request body not received within {:?} (http.body_read_timeout)",
                        config.http.body_read_timeout
                    ),
                )
                    .into_response(),
            ))
        }
    }
}

fn authorized(headers: &HeaderMap, key: Option<&str>) -> bool {
    let Some(key) = key else { return false };
    let given = headers.get("x-api-key").and_then(|v| v.to_str().ok()).or_else(|| {
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("apikey "))
    });
    given.is_some_and(|given| constant_time_eq(given.trim().as_bytes(), key.as_bytes()))
}

/// Compares digests of the two, so that neither the position of the first difference nor the
/// key's length shows in the time taken.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_by_content_only() {
        assert!(constant_time_eq(b"secret-key", b"secret-key"));
        assert!(!constant_time_eq(b"secret-key", b"secret-kez"));
        assert!(!constant_time_eq(b"secret-key", b"secret-key-longer"));
        assert!(!constant_time_eq(b"", b"x"));
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "apikey k1".parse().unwrap());
        assert!(authorized(&headers, Some("k1")));
        assert!(!authorized(&headers, Some("k2")));
        assert!(!authorized(&headers, None));
    }
}

#[cfg(test)]
mod request_tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn bodies_are_one_json_object_or_blank() {
        assert_eq!(body_of(b" \n").unwrap().get(), "{}");
        assert_eq!(body_of(br#"{"channel":"a"}"#).unwrap().get(), r#"{"channel":"a"}"#);
        assert!(body_of(b"[1]").unwrap_err().contains("expected a JSON object"));
        assert!(body_of(b"{").unwrap_err().starts_with("malformed body"));
    }

    #[test]
    fn every_listed_method_parses_and_others_are_not_found() {
        for method in Request::METHODS {
            let result = Request::parse(method, &raw(r#"{"channel":"a","user":"u","commands":[]}"#));
            assert!(
                !matches!(result, Err(ApiError::Code(ErrorCode::METHOD_NOT_FOUND))),
                "{method}"
            );
        }
        assert!(matches!(
            Request::parse("nope", &raw("{}")),
            Err(ApiError::Code(ErrorCode::METHOD_NOT_FOUND))
        ));
        assert!(matches!(
            Request::parse("history", &raw(r#"{"channel":1}"#)),
            Err(ApiError::Malformed(_))
        ));
    }

    #[test]
    fn parameters_read_null_as_zero_and_ignore_unknown_fields() {
        let history = r#"{"channel":"a","limit":null,"since":null,"reverse":null,"extra":[1]}"#;
        assert!(matches!(
            Request::parse("history", &raw(history)),
            Ok(Request::History(_))
        ));
        let disconnect = r#"{"user":null,"client":null,"whitelist":null,"disconnect":null,"session":null}"#;
        assert!(matches!(
            Request::parse("disconnect", &raw(disconnect)),
            Ok(Request::Disconnect(_))
        ));
        // A missing `user` is the empty (anonymous) user, as in Centrifugo.
        assert!(matches!(
            Request::parse("unsubscribe", &raw("{}")),
            Ok(Request::Unsubscribe(_))
        ));
        let publish = r#"{"channel":"a","data":null,"tags":null,"skip_history":null,"delta":true,"version":3,"version_epoch":"e"}"#;
        match Request::parse("publish", &raw(publish)) {
            Ok(Request::Publish(request)) => assert_eq!(&request.data[..], b"null"),
            _ => panic!("publish with data null"),
        }
        // Wrong types are still refused.
        assert!(matches!(
            Request::parse("publish", &raw(r#"{"channel":"a","data":1,"version":"x"}"#)),
            Err(ApiError::Malformed(_))
        ));
    }

    #[test]
    fn b64data_wins_over_data_and_bad_base64_is_107() {
        match Request::parse("publish", &raw(r#"{"channel":"a","data":{"x":1},"b64data":"AAE="}"#)) {
            Ok(Request::Publish(request)) => assert_eq!(&request.data[..], [0, 1]),
            _ => panic!("publish with b64data"),
        }
        for method in ["publish", "broadcast"] {
            let body = r#"{"channel":"a","channels":["a"],"b64data":"not base64!"}"#;
            assert!(
                matches!(
                    Request::parse(method, &raw(body)),
                    Err(ApiError::Code(ErrorCode::BAD_REQUEST))
                ),
                "{method}"
            );
        }
    }

    #[test]
    fn batch_commands_parse_up_to_the_first_malformed_one() {
        let parse = |text: &str| match Request::parse("batch", &raw(text)) {
            Ok(Request::Batch(batch)) => batch.parse_commands().map_err(|e| match e {
                ApiError::Malformed(message) => message,
                ApiError::Code(code) => code.code.to_string(),
                ApiError::Backend { code, .. } => code.to_string(),
            }),
            _ => panic!("not a batch: {text}"),
        };
        // A refused publish, an unknown method, an empty or null command and bad base64 are
        // answers inside the batch, not failures.
        let ok = r#"{"commands":[{"publish":{"channel":"","data":1}},{"nope":{}},{},null,{"info":{}},
            {"publish":{"channel":"a","b64data":"%"}},{"info":null,"channels":{}}],"parallel":true}"#;
        assert_eq!(parse(ok), Ok(7));
        let nested = r#"{"commands":[{"info":{}},{"batch":{"commands":[]}}]}"#;
        assert_eq!(parse(nested).unwrap_err(), "batch inside batch");
        let two_keys = r#"{"commands":[{"info":{},"channels":{}}]}"#;
        assert!(parse(two_keys).unwrap_err().contains("one method key"));
        let bad = r#"{"commands":[{"history":{"channel":1}}]}"#;
        assert!(parse(bad).unwrap_err().starts_with("history: invalid parameters"));
    }
}
