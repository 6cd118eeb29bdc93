//! The fallbacks for clients that cannot open a WebSocket: HTTP-streaming
//! (`POST /connection/http_stream`) and Server-Sent Events (`GET|POST /connection/sse`), with
//! the client's later commands arriving through `POST /emulation`.
//!
//! A stream request carries the connect command (its body, or SSE's `cf_connect` query
//! parameter) and its response carries every reply and push of the session, framed for the
//! transport: JSON lines or varint-delimited Protobuf for HTTP-streaming, `data:` events for
//! SSE. The connect result names the session (a random id, not the client id) and this node;
//! the SDK then sends each later command batch as `{"session", "node", "data"}` to
//! `/emulation`, which feeds it to the session as if read from a socket.
//!
//! The session is the same one WebSocket clients get ([`session::run`]); only the framing and
//! the close differ. A stream cannot carry a close code, so a disconnect push goes first.
//!
//! The unidirectional streams (`POST /connection/uni_http_stream`, `GET|POST
//! /connection/uni_sse`) are served here too: the same responses, carrying bare pushes
//! ([`super::uni`]), and no `/emulation`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use prost::Message as _;
use tokio::sync::mpsc;

use super::websocket::origin_allowed;
use crate::broker::EmulationError;
use crate::protocol::codec::{encode_reply, join_into, joined_len, Format};
use crate::protocol::proto::{Disconnect, EmulationRequest, Push, Reply};
use crate::protocol::DisconnectCode;
use crate::session::emulated::Handover;
use crate::session::transport::{Incoming, Transport};
use crate::session::{self, Handshake, SessionContext};

/// Commands `/emulation` may hold for one session while it handles earlier ones; past them
/// the request waits (up to `http.body_read_timeout`).
const INBOUND_DEPTH: usize = 16;

/// How the session's output is framed on the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// HTTP-streaming, JSON: one reply per line.
    JsonLines,
    /// HTTP-streaming, Protobuf: varint-delimited replies.
    Protobuf,
    /// SSE: `data:` lines, one event per batch of replies.
    EventStream,
}

impl Framing {
    fn format(self) -> Format {
        match self {
            Framing::Protobuf => Format::Protobuf,
            Framing::JsonLines | Framing::EventStream => Format::Json,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Framing::JsonLines => "application/json",
            Framing::Protobuf => "application/octet-stream",
            Framing::EventStream => "text/event-stream; charset=utf-8",
        }
    }

    /// One chunk of the response holding `replies`.
    fn frame(self, replies: &[Bytes]) -> Bytes {
        match self {
            Framing::Protobuf => {
                let mut chunk = BytesMut::with_capacity(joined_len(Format::Protobuf, replies));
                join_into(Format::Protobuf, replies, &mut chunk);
                chunk.freeze()
            }
            Framing::JsonLines => {
                let mut chunk = BytesMut::with_capacity(joined_len(Format::Json, replies) + 1);
                join_into(Format::Json, replies, &mut chunk);
                chunk.put_u8(b'\n');
                chunk.freeze()
            }
            Framing::EventStream => {
                // JSON replies hold no raw newline: each is one `data:` line, and the event's
                // data is the replies joined by `\n`, as the SDK reads them.
                let len = replies.iter().map(|r| r.len() + 7).sum::<usize>() + 1;
                let mut chunk = BytesMut::with_capacity(len);
                for reply in replies {
                    chunk.put_slice(b"data: ");
                    chunk.put_slice(reply);
                    chunk.put_u8(b'\n');
                }
                chunk.put_u8(b'\n');
                chunk.freeze()
            }
        }
    }
}

/// The session's side of a streaming response: each `send` becomes one chunk of the body.
struct StreamTransport {
    chunks: Option<mpsc::Sender<Bytes>>,
    framing: Framing,
    /// Unidirectional: the client receives bare pushes ([`super::uni::push_of`]).
    uni: bool,
    session: Arc<str>,
    /// `client.write_timeout`: longest wait for the response to take a chunk.
    write_timeout: Duration,
    /// Keeps the HTTP connection counted as a client connection while the session lives.
    _connection: Option<super::watchdog::RequestGuard>,
}

impl StreamTransport {
    async fn write(&mut self, chunk: Bytes) -> std::io::Result<()> {
        let Some(chunks) = &self.chunks else {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        };
        // Most chunks find room at once: no timer then (arming one per chunk showed in profiles).
        let chunk = match chunks.try_send(chunk) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(std::io::ErrorKind::BrokenPipe.into()),
            Err(mpsc::error::TrySendError::Full(chunk)) => chunk,
        };
        match tokio::time::timeout(self.write_timeout, chunks.send(chunk)).await {
            Ok(Ok(())) => Ok(()),
            // The response is gone: the client went away.
            Ok(Err(_)) => Err(std::io::ErrorKind::BrokenPipe.into()),
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

impl Transport for StreamTransport {
    async fn send(&mut self, replies: &[Bytes]) -> std::io::Result<()> {
        if replies.is_empty() {
            return Ok(());
        }
        let chunk = if self.uni {
            let pushes: Vec<Bytes> = replies.iter().filter_map(super::uni::push_of).collect();
            if pushes.is_empty() {
                return Ok(());
            }
            self.framing.frame(&pushes)
        } else {
            self.framing.frame(replies)
        };
        self.write(chunk).await
    }

    fn own_output(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        std::future::pending()
    }

    /// A stream has no close code: the client learns it from a disconnect push, then the
    /// response ends.
    async fn close(&mut self, code: &DisconnectCode) {
        let push = Reply {
            push: Some(Push {
                disconnect: Some(Disconnect {
                    code: u32::from(code.code),
                    reason: code.reason.to_string(),
                    reconnect: code.reconnect(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut encoded = encode_reply(self.framing.format(), &push);
        if self.uni {
            encoded = super::uni::push_of(&encoded).expect("a push reply");
        }
        let chunk = self.framing.frame(&[encoded]);
        let _ = self.write(chunk).await;
        self.chunks = None;
    }

    fn emulation_session(&self) -> Option<Arc<str>> {
        Some(self.session.clone())
    }

    fn answers_pings(&self) -> bool {
        !self.uni
    }
}

/// `POST /connection/http_stream`: the body is the connect command (JSON lines, or
/// varint-delimited Protobuf with `Content-Type: application/octet-stream`).
pub async fn http_stream(State(ctx): State<Arc<SessionContext>>, request: Request) -> Response {
    let origin = match cors(&ctx, request.headers()) {
        Ok(origin) => origin,
        Err(refused) => return refused.into_response(),
    };
    if !ctx.config.http_stream.enabled {
        return with_cors(
            (StatusCode::NOT_FOUND, "http_stream is not enabled").into_response(),
            origin,
        );
    }
    if request.method() == Method::OPTIONS {
        return preflight(request.headers(), origin);
    }
    if request.method() != Method::POST {
        return with_cors((StatusCode::METHOD_NOT_ALLOWED, "POST only").into_response(), origin);
    }
    let framing = if content_type_is(request.headers(), "application/octet-stream") {
        Framing::Protobuf
    } else {
        Framing::JsonLines
    };
    let limit = ctx.config.http_stream.max_request_body_size;
    let long_lived = long_lived_of(&request);
    let headers = Handshake::headers_of(&ctx, request.headers());
    let response = match read_body(&ctx, request, limit).await {
        Ok(connect) => open(ctx, framing, false, connect, long_lived, headers),
        Err(refused) => refused,
    };
    with_cors(response, origin)
}

/// `GET /connection/sse?cf_connect=<json>` or `POST /connection/sse` with the connect command
/// as the body. JSON only.
pub async fn sse(State(ctx): State<Arc<SessionContext>>, request: Request) -> Response {
    let origin = match cors(&ctx, request.headers()) {
        Ok(origin) => origin,
        Err(refused) => return refused.into_response(),
    };
    if !ctx.config.sse.enabled {
        return with_cors((StatusCode::NOT_FOUND, "sse is not enabled").into_response(), origin);
    }
    let response = match *request.method() {
        Method::OPTIONS => return preflight(request.headers(), origin),
        Method::GET => {
            let query = Query::<HashMap<String, String>>::try_from_uri(request.uri());
            let connect = query.ok().and_then(|Query(mut q)| q.remove("cf_connect"));
            match connect {
                Some(connect) if connect.len() <= ctx.config.sse.max_request_body_size => {
                    let long_lived = long_lived_of(&request);
                    let headers = Handshake::headers_of(&ctx, request.headers());
                    open(
                        ctx,
                        Framing::EventStream,
                        false,
                        Bytes::from(connect),
                        long_lived,
                        headers,
                    )
                }
                Some(_) => (StatusCode::PAYLOAD_TOO_LARGE, "cf_connect too large").into_response(),
                None => (StatusCode::BAD_REQUEST, "cf_connect query parameter required").into_response(),
            }
        }
        Method::POST => {
            let limit = ctx.config.sse.max_request_body_size;
            let long_lived = long_lived_of(&request);
            let headers = Handshake::headers_of(&ctx, request.headers());
            match read_body(&ctx, request, limit).await {
                Ok(connect) => open(ctx, Framing::EventStream, false, connect, long_lived, headers),
                Err(refused) => refused,
            }
        }
        _ => (StatusCode::METHOD_NOT_ALLOWED, "GET or POST only").into_response(),
    };
    with_cors(response, origin)
}

/// `POST /connection/uni_http_stream`: the body is a JSON `ConnectRequest`; the response is
/// one JSON push per line.
pub async fn uni_http_stream(State(ctx): State<Arc<SessionContext>>, request: Request) -> Response {
    let origin = match cors(&ctx, request.headers()) {
        Ok(origin) => origin,
        Err(refused) => return refused.into_response(),
    };
    if !ctx.config.uni_http_stream.enabled {
        return with_cors(
            (StatusCode::NOT_FOUND, "uni_http_stream is not enabled").into_response(),
            origin,
        );
    }
    if request.method() == Method::OPTIONS {
        return preflight(request.headers(), origin);
    }
    if request.method() != Method::POST {
        return with_cors((StatusCode::METHOD_NOT_ALLOWED, "POST only").into_response(), origin);
    }
    let limit = ctx.config.uni_http_stream.max_request_body_size;
    let long_lived = long_lived_of(&request);
    let headers = Handshake::headers_of(&ctx, request.headers());
    let response = match read_body(&ctx, request, limit).await {
        Ok(body) => open_uni(ctx, Framing::JsonLines, &body, long_lived, headers),
        Err(refused) => refused,
    };
    with_cors(response, origin)
}

/// `GET /connection/uni_sse?cf_connect=<ConnectRequest JSON>`, or `POST` with it as the body;
/// each push is one `data:` event.
pub async fn uni_sse(State(ctx): State<Arc<SessionContext>>, request: Request) -> Response {
    let origin = match cors(&ctx, request.headers()) {
        Ok(origin) => origin,
        Err(refused) => return refused.into_response(),
    };
    if !ctx.config.uni_sse.enabled {
        return with_cors(
            (StatusCode::NOT_FOUND, "uni_sse is not enabled").into_response(),
            origin,
        );
    }
    let limit = ctx.config.uni_sse.max_request_body_size;
    let response = match *request.method() {
        Method::OPTIONS => return preflight(request.headers(), origin),
        Method::GET => {
            let query = Query::<HashMap<String, String>>::try_from_uri(request.uri());
            // No cf_connect: a request without a token (anonymous, or refused by the session).
            let connect = query
                .ok()
                .and_then(|Query(mut q)| q.remove("cf_connect"))
                .unwrap_or_default();
            if connect.len() > limit {
                (StatusCode::PAYLOAD_TOO_LARGE, "cf_connect too large").into_response()
            } else {
                let long_lived = long_lived_of(&request);
                let headers = Handshake::headers_of(&ctx, request.headers());
                open_uni(ctx, Framing::EventStream, connect.as_bytes(), long_lived, headers)
            }
        }
        Method::POST => {
            let long_lived = long_lived_of(&request);
            let headers = Handshake::headers_of(&ctx, request.headers());
            match read_body(&ctx, request, limit).await {
                Ok(body) => open_uni(ctx, Framing::EventStream, &body, long_lived, headers),
                Err(refused) => refused,
            }
        }
        _ => (StatusCode::METHOD_NOT_ALLOWED, "GET or POST only").into_response(),
    };
    with_cors(response, origin)
}

fn open_uni(
    ctx: Arc<SessionContext>,
    framing: Framing,
    request: &[u8],
    long_lived: Option<super::LongLived>,
    headers: HeaderMap,
) -> Response {
    match super::uni::connect_command(request) {
        Some(connect) => open(ctx, framing, true, connect, long_lived, headers),
        None => (StatusCode::BAD_REQUEST, "the body must be a JSON ConnectRequest").into_response(),
    }
}

/// `POST /emulation`: a later command batch of an emulated session,
/// `{"session", "node", "data"}` (JSON, `data` a string holding the commands) or an
/// `EmulationRequest` (Protobuf, `Content-Type: application/octet-stream`).
/// 204 when handed over (an unknown session on this node too, as in the reference server, so
/// that a client whose session just ended learns it from its stream); 404 for another node.
pub async fn emulation(State(ctx): State<Arc<SessionContext>>, request: Request) -> Response {
    let origin = match cors(&ctx, request.headers()) {
        Ok(origin) => origin,
        Err(refused) => return refused.into_response(),
    };
    if !(ctx.config.http_stream.enabled || ctx.config.sse.enabled) {
        return with_cors(
            (StatusCode::NOT_FOUND, "no emulated transport is enabled").into_response(),
            origin,
        );
    }
    if request.method() == Method::OPTIONS {
        return preflight(request.headers(), origin);
    }
    if request.method() != Method::POST {
        return with_cors((StatusCode::METHOD_NOT_ALLOWED, "POST only").into_response(), origin);
    }
    let protobuf = content_type_is(request.headers(), "application/octet-stream");
    let limit = ctx
        .config
        .http_stream
        .max_request_body_size
        .max(ctx.config.sse.max_request_body_size);
    let body = match read_body(&ctx, request, limit).await {
        Ok(body) => body,
        Err(refused) => return with_cors(refused, origin),
    };
    let Some(decoded) = decode_emulation(&body, protobuf) else {
        return with_cors(
            (StatusCode::BAD_REQUEST, "malformed emulation request").into_response(),
            origin,
        );
    };
    let handover = ctx
        .broker
        .hand_over_emulation(&decoded.node, &decoded.session, decoded.data, protobuf)
        .await;
    let response = match handover {
        Ok(Handover::Done) => StatusCode::NO_CONTENT.into_response(),
        Ok(Handover::Busy) => (StatusCode::SERVICE_UNAVAILABLE, "session busy").into_response(),
        Err(EmulationError::UnknownNode) => (StatusCode::NOT_FOUND, "unknown node").into_response(),
        Err(EmulationError::Unreachable) => (StatusCode::SERVICE_UNAVAILABLE, "node unreachable").into_response(),
    };
    with_cors(response, origin)
}

/// An `/emulation` body, decoded.
struct Emulated {
    node: String,
    session: String,
    data: Bytes,
}

fn decode_emulation(body: &[u8], protobuf: bool) -> Option<Emulated> {
    if protobuf {
        let request = EmulationRequest::decode(body).ok()?;
        return Some(Emulated {
            node: request.node,
            session: request.session,
            data: request.data,
        });
    }
    #[derive(serde::Deserialize)]
    struct JsonRequest {
        node: String,
        session: String,
        data: Box<serde_json::value::RawValue>,
    }
    let request: JsonRequest = serde_json::from_slice(body).ok()?;
    // The SDK sends the commands as a JSON string; a command object as such is taken too.
    let data = match serde_json::from_str::<String>(request.data.get()) {
        Ok(text) => Bytes::from(text),
        Err(_) => Bytes::copy_from_slice(request.data.get().as_bytes()),
    };
    Some(Emulated {
        node: request.node,
        session: request.session,
        data,
    })
}

/// Starts a session whose output is the returned response's body.
/// Unidirectional sessions (`uni`) are not registered for `/emulation`: their client sends
/// nothing more.
fn open(
    ctx: Arc<SessionContext>,
    framing: Framing,
    uni: bool,
    connect: Bytes,
    long_lived: Option<super::LongLived>,
    headers: HeaderMap,
) -> Response {
    let transport = match (uni, framing) {
        (false, Framing::EventStream) => "sse",
        (false, _) => "http_stream",
        (true, Framing::EventStream) => "uni_sse",
        (true, _) => "uni_http_stream",
    };
    let handshake = Handshake::new(transport, headers);
    let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
        metrics::counter!("herald_limit_rejections_total", "limit" => "max_connections").increment(1);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    let session: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());
    let (chunks, body) = mpsc::channel::<Bytes>(1);
    let (inbound, incoming) = mpsc::channel::<Incoming>(INBOUND_DEPTH);
    let transport = StreamTransport {
        chunks: Some(chunks.clone()),
        framing,
        uni,
        session: session.clone(),
        write_timeout: ctx.config.client.write_timeout,
        _connection: long_lived.map(|l| l.begin()),
    };
    // The connect command first, then whatever `/emulation` brings; the client going away (the
    // response dropped) ends the session.
    let first = Incoming::Message {
        data: connect,
        binary: framing == Framing::Protobuf,
    };
    let gone = async move {
        chunks.closed().await;
        Incoming::Closed
    };
    let incoming = futures_util::stream::select(
        futures_util::stream::once(std::future::ready(first)).chain(receiver_stream(incoming)),
        futures_util::stream::once(gone),
    );
    let registered = (!uni).then(|| ctx.emulated.insert(session, inbound));
    let format = framing.format();
    let sessions = ctx.sessions.clone();
    sessions.spawn(async move {
        session::run(ctx, format, transport, Box::pin(incoming), handshake).await;
        drop(registered);
        drop(permit);
    });

    // SSE opens with an empty line, so that proxies and the browser see the stream start.
    let opening = (framing == Framing::EventStream).then(|| Bytes::from_static(b"\r\n"));
    let chunks = futures_util::stream::iter(opening)
        .chain(receiver_stream(body))
        .map(Ok::<_, std::convert::Infallible>);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, framing.content_type())
        .header(
            header::CACHE_CONTROL,
            "private, no-cache, no-store, must-revalidate, max-age=0",
        )
        .header(header::PRAGMA, "no-cache")
        .header(header::EXPIRES, "0")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(chunks))
        .expect("static headers are valid")
}

fn receiver_stream<T: Send + 'static>(receiver: mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

/// Reads a request body of at most `limit` bytes within `http.body_read_timeout`: 413 when it
/// declares or sends more, 408 when it is too slow, 400 when it breaks.
async fn read_body(ctx: &SessionContext, request: Request, limit: usize) -> Result<Bytes, Response> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(super::closing(
            (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response(),
        ));
    }
    let body = http_body_util::Limited::new(request.into_body(), limit);
    match tokio::time::timeout(ctx.config.http.body_read_timeout, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(super::closing(
            (StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response(),
        )),
        Ok(Err(_)) => Err(super::closing(
            (StatusCode::BAD_REQUEST, "request body could not be read").into_response(),
        )),
        Err(_) => {
            metrics::counter!("herald_http_timeouts_total", "timeout" => "body_read").increment(1);
            Err(super::closing(
                (StatusCode::REQUEST_TIMEOUT, "request body too slow").into_response(),
            ))
        }
    }
}

/// The handle that makes the request's connection a client connection. Its writes go out as
/// they come from then on: the session's chunks must not wait behind write coalescing.
fn long_lived_of(request: &Request) -> Option<super::LongLived> {
    if let Some(switch) = request.extensions().get::<super::coalesce::CoalesceSwitch>() {
        switch.stop();
    }
    request.extensions().get::<super::LongLived>().cloned()
}

fn content_type_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

/// CORS, by `client.allowed_origins` as for WebSocket: a request from a refused origin gets
/// 403; an allowed one has its origin echoed (credentials allowed).
fn cors(ctx: &SessionContext, headers: &HeaderMap) -> Result<Option<HeaderValue>, (StatusCode, &'static str)> {
    if !origin_allowed(headers, &ctx.config.client.allowed_origins) {
        return Err((StatusCode::FORBIDDEN, "origin not allowed"));
    }
    Ok(headers.get(header::ORIGIN).cloned())
}

fn with_cors(mut response: Response, origin: Option<HeaderValue>) -> Response {
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// An `OPTIONS` preflight: 204 allowing the methods and the headers asked for.
fn preflight(headers: &HeaderMap, origin: Option<HeaderValue>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let out = response.headers_mut();
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    out.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    with_cors(response, origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_match_each_transport() {
        let replies = [Bytes::from_static(b"{\"id\":1}"), Bytes::from_static(b"{}")];
        assert_eq!(&Framing::JsonLines.frame(&replies)[..], b"{\"id\":1}\n{}\n");
        assert_eq!(
            &Framing::EventStream.frame(&replies)[..],
            b"data: {\"id\":1}\ndata: {}\n\n"
        );
        let protobuf = [Bytes::from_static(&[2, 8, 1]), Bytes::from_static(&[0])];
        assert_eq!(&Framing::Protobuf.frame(&protobuf)[..], &[2, 8, 1, 0]);
    }

    #[test]
    fn emulation_bodies_decode_in_both_formats() {
        let json = br#"{"session":"s1","node":"n1","data":"{\"id\":2,\"subscribe\":{\"channel\":\"a\"}}\n{}"}"#;
        let decoded = decode_emulation(json, false).expect("valid");
        assert_eq!((decoded.node.as_str(), decoded.session.as_str()), ("n1", "s1"));
        assert_eq!(&decoded.data[..], b"{\"id\":2,\"subscribe\":{\"channel\":\"a\"}}\n{}");
        let protobuf = EmulationRequest {
            node: "n1".into(),
            session: "s1".into(),
            data: Bytes::from_static(&[0]),
        }
        .encode_to_vec();
        let decoded = decode_emulation(&protobuf, true).expect("valid");
        assert_eq!(&decoded.data[..], &[0]);
        assert!(decode_emulation(b"{\"session\":1}", false).is_none());
        assert!(decode_emulation(b"not json", false).is_none());
        assert!(decode_emulation(&[0xff, 0xff], true).is_none());
    }
}
