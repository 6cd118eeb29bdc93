//! The HTTP server API: `POST /api/<method>` with a JSON body, authenticated by
//! `X-API-Key: <key>` or `Authorization: apikey <key>`.
//!
//! Replies are `200 {"result": …}` or `200 {"error": {"code", "message"}}`; with the header
//! `X-Herald-Error-Mode: transport` (or `X-Centrifugo-Error-Mode`) errors become HTTP statuses
//! (100→500, 102/104→404, 107/108→400, 112→416). A missing or wrong key is 401, a malformed
//! body 400 with a message. Each method lives in its own file and is listed in [`call`].

mod history;
mod presence;
mod publish;
mod server;
mod users;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
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

/// The methods, as metric labels: any other name counts as `unknown`, so that clients cannot
/// create metric series at will (issue 11).
const METHODS: &[&str] = &[
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
    "batch",
];

fn method_label(method: &str) -> &'static str {
    METHODS.iter().find(|m| **m == method).copied().unwrap_or("unknown")
}

/// Runs one API method other than `batch` (which [`handler`] runs, and which may not nest).
/// `batch` calls this for each of its commands.
pub async fn call(broker: &Arc<Broker>, method: &str, body: &RawValue) -> ApiResult {
    metrics::counter!("herald_api_requests_total", "method" => method_label(method)).increment(1);
    match method {
        "publish" => publish::publish(broker, params(body)?).await,
        "broadcast" => publish::broadcast(broker, params(body)?).await,
        "subscribe" => users::subscribe(broker, params(body)?).await,
        "unsubscribe" => users::unsubscribe(broker, params(body)?).await,
        "disconnect" => users::disconnect(broker, params(body)?).await,
        "refresh" => users::refresh(broker, params(body)?).await,
        "presence" => presence::presence(broker, params(body)?).await,
        "presence_stats" => presence::presence_stats(broker, params(body)?).await,
        "history" => history::history(broker, params(body)?).await,
        "history_remove" => history::history_remove(broker, params(body)?).await,
        "channels" => server::channels(broker, params(body)?).await,
        "info" => server::info(broker).await,
        "batch" => Err(ApiError::Malformed("batch inside batch".into())),
        _ => Err(ApiError::Code(ErrorCode::METHOD_NOT_FOUND)),
    }
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
        return (StatusCode::UNAUTHORIZED, "unauthorized: missing or wrong API key").into_response();
    }
    let body = match read_body(body, &headers, broker.config()).await {
        Ok(body) => body,
        Err(refusal) => return refusal,
    };
    let text = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        &body[..]
    };
    let body: &RawValue = match serde_json::from_slice(text) {
        Ok(raw) => raw,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("malformed body: {e}")).into_response(),
    };
    if !body.get().trim_start().starts_with('{') {
        return (StatusCode::BAD_REQUEST, "malformed body: expected a JSON object").into_response();
    }
    let transport_errors = ["x-herald-error-mode", "x-centrifugo-error-mode"].iter().any(|h| {
        headers
            .get(*h)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"transport"))
    });
    let outcome = if method == "batch" {
        metrics::counter!("herald_api_requests_total", "method" => "batch").increment(1);
        // A batch's replies are written as JSON text as they come (bounded by
        // api.max_batch_reply_size), never held as a tree.
        match params(body) {
            Ok(batch) => server::batch(&broker, batch).await,
            Err(e) => Err(e),
        }
    } else {
        call(&broker, &method, body)
            .await
            .map(|result| serde_json::to_vec(&result).expect("a JSON value serializes into memory"))
    };
    match outcome {
        Ok(result) => {
            let mut body = Vec::with_capacity(result.len() + 11);
            body.extend_from_slice(b"{\"result\":");
            body.extend_from_slice(&result);
            body.push(b'}');
            (
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        Err(ApiError::Malformed(message)) => (StatusCode::BAD_REQUEST, message).into_response(),
        Err(ApiError::Code(code)) if transport_errors => (
            status_of(code),
            serde_json::json!({"error": error_json(code)}).to_string(),
        )
            .into_response(),
        Err(ApiError::Code(code)) => json_response(StatusCode::OK, &serde_json::json!({ "error": error_json(code) })),
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

pub(crate) fn error_json(code: ErrorCode) -> Value {
    serde_json::json!({"code": code.code, "message": code.message})
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
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {limit} bytes (api.max_body_size)"),
        )
            .into_response()
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
        Ok(Err(e)) => Err((StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}")).into_response()),
        Err(_) => {
            metrics::counter!("herald_http_timeouts_total", "timeout" => "body_read").increment(1);
            Err((
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {:?} (http.body_read_timeout)",
                    config.http.body_read_timeout
                ),
            )
                .into_response())
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
