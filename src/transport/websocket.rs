//! The WebSocket endpoint `/connection/websocket`: handshake (format selection, origin check),
//! then a [`Transport`] over tokio-tungstenite for the session.
//!
//! Format: Protobuf when the client offers the `centrifuge-protobuf` subprotocol (echoed back) or
//! asks `?format=protobuf` / `?cf_protocol=protobuf`; JSON otherwise, including when the
//! `Sec-WebSocket-Protocol` header is present but empty (the Python SDK sends that).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::broker::glob_match;
use crate::protocol::codec::Format;
use crate::protocol::DisconnectCode;
use crate::session::transport::{Incoming, Transport};
use crate::session::{self, SessionContext};

const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";
const JSON_SUBPROTOCOL: &str = "centrifuge-json";

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The upgrade handler.
pub async fn handler(State(ctx): State<Arc<SessionContext>>, mut request: Request) -> Response {
    let headers = request.headers();
    let is_upgrade =
        header_has(headers, header::CONNECTION, "upgrade") && header_has(headers, header::UPGRADE, "websocket");
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade").into_response();
    };
    if !is_upgrade || headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        return (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade (version 13)").into_response();
    }
    if !origin_allowed(headers, &ctx.config.client.allowed_origins) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
        metrics::counter!("herald_limit_rejections_total", "limit" => "max_connections").increment(1);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    let (format, subprotocol) = select_format(headers, request.uri().query().unwrap_or(""));
    let on_upgrade = hyper::upgrade::on(&mut request);
    let limit = ctx.config.client.max_message_size;
    let sessions = ctx.sessions.clone();
    let task = async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        // Small per-socket buffers: tungstenite's defaults (128 KiB each way) would dominate the
        // memory of an idle connection (measured 145 KB per connection with them, 7 KB without;
        // issue 5). Reads grow past 1 KiB when a frame needs it. The session already joins queued
        // replies into one frame, so writes need no extra buffering.
        let config = WebSocketConfig::default()
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit))
            .read_buffer_size(1024)
            .write_buffer_size(0);
        let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        let (sink, stream) = socket.split();
        let incoming = stream.filter_map(|item| std::future::ready(incoming_of(item)));
        session::run(ctx, format, WebSocketTransport { sink, format }, Box::pin(incoming)).await;
        drop(permit);
    };
    sessions.spawn(task);

    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(p) = subprotocol {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    response.body(Body::empty()).expect("static headers are valid")
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The connection's format and the subprotocol to echo, if any.
pub fn select_format(headers: &HeaderMap, query: &str) -> (Format, Option<&'static str>) {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    if offered.iter().any(|p| p == PROTOBUF_SUBPROTOCOL) {
        return (Format::Protobuf, Some(PROTOBUF_SUBPROTOCOL));
    }
    let query_protobuf = query
        .split('&')
        .any(|pair| matches!(pair, "format=protobuf" | "cf_protocol=protobuf"));
    let echo_json = offered
        .iter()
        .any(|p| p == JSON_SUBPROTOCOL)
        .then_some(JSON_SUBPROTOCOL);
    if query_protobuf {
        return (Format::Protobuf, None);
    }
    (Format::Json, echo_json)
}

/// Browsers send `Origin`; servers and native apps usually do not and are always accepted.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    if allowed.is_empty() {
        // Same-host check: the page was served by the host it connects to.
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        return !host.is_empty() && origin_host.eq_ignore_ascii_case(host);
    }
    allowed.iter().any(|pattern| glob_match(pattern, origin))
}

fn incoming_of(item: Result<Message, tungstenite::Error>) -> Option<Incoming> {
    match item {
        Ok(Message::Text(text)) => Some(Incoming::Message {
            data: Bytes::from(text),
            binary: false,
        }),
        Ok(Message::Binary(data)) => Some(Incoming::Message { data, binary: true }),
        Ok(Message::Close(_)) => Some(Incoming::Closed),
        // Control frames: tungstenite answers pings itself.
        Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => None,
        Err(tungstenite::Error::Capacity(_)) => Some(Incoming::TooLarge),
        Err(_) => Some(Incoming::Closed),
    }
}

struct WebSocketTransport {
    sink: SplitSink<Socket, Message>,
    format: Format,
}

impl Transport for WebSocketTransport {
    async fn send(&mut self, payload: Bytes) -> std::io::Result<()> {
        let message = match self.format {
            Format::Protobuf => Message::Binary(payload),
            Format::Json => Message::Text(
                tungstenite::Utf8Bytes::try_from(payload)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            ),
        };
        self.sink.send(message).await.map_err(std::io::Error::other)
    }

    async fn close(&mut self, code: &DisconnectCode) {
        // Close reasons must fit a control frame (125 bytes with the code).
        let mut reason = code.reason.to_string();
        while reason.len() > 120 {
            reason.pop();
        }
        let frame = CloseFrame {
            code: CloseCode::from(code.code),
            reason: reason.into(),
        };
        let _ = self.sink.send(Message::Close(Some(frame))).await;
        let _ = self.sink.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn format_selection() {
        assert_eq!(select_format(&headers(&[]), ""), (Format::Json, None));
        assert_eq!(
            select_format(&headers(&[("sec-websocket-protocol", "")]), ""),
            (Format::Json, None)
        );
        assert_eq!(
            select_format(&headers(&[("sec-websocket-protocol", "centrifuge-protobuf")]), ""),
            (Format::Protobuf, Some("centrifuge-protobuf"))
        );
        assert_eq!(
            select_format(&headers(&[]), "format=protobuf"),
            (Format::Protobuf, None)
        );
        assert_eq!(
            select_format(&headers(&[]), "x=1&cf_protocol=protobuf"),
            (Format::Protobuf, None)
        );
    }

    #[test]
    fn origins() {
        assert!(origin_allowed(&headers(&[]), &[]));
        assert!(origin_allowed(
            &headers(&[("origin", "http://a.test:8000"), ("host", "a.test:8000")]),
            &[]
        ));
        assert!(!origin_allowed(
            &headers(&[("origin", "http://evil.test"), ("host", "a.test:8000")]),
            &[]
        ));
        let allowed = vec!["https://*.example.com".to_owned()];
        assert!(origin_allowed(
            &headers(&[("origin", "https://app.example.com")]),
            &allowed
        ));
        assert!(!origin_allowed(
            &headers(&[("origin", "https://example.org")]),
            &allowed
        ));
    }
}
