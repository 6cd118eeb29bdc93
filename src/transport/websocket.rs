//! The WebSocket endpoint `/connection/websocket`: handshake (format selection, origin check),
//! then a [`Transport`] over tokio-tungstenite for the session.
//!
//! Format: Protobuf when the client offers the `centrifuge-protobuf` subprotocol (echoed back) or
//! asks `?format=protobuf` / `?cf_protocol=protobuf`; JSON otherwise, including when the
//! `Sec-WebSocket-Protocol` header is present but empty (the Python SDK sends that).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::broker::glob_match;
use crate::protocol::codec::{join_into, joined_len, Format};
use crate::protocol::DisconnectCode;
use crate::session::transport::{Incoming, Transport};
use crate::session::{self, Handshake, SessionContext};

const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";
const JSON_SUBPROTOCOL: &str = "centrifuge-json";

type Io = TokioIo<hyper::upgrade::Upgraded>;

/// The upgrade handler.
pub async fn handler(State(ctx): State<Arc<SessionContext>>, request: Request) -> Response {
    upgrade(ctx, request, false)
}

/// `/connection/uni_websocket`: the client sends one JSON `ConnectRequest` (its first message, or
/// the `cf_connect` query parameter) and then only receives bare pushes ([`super::uni`]).
pub async fn uni_handler(State(ctx): State<Arc<SessionContext>>, request: Request) -> Response {
    if !ctx.config.uni_websocket.enabled {
        return (StatusCode::NOT_FOUND, "uni_websocket is not enabled").into_response();
    }
    upgrade(ctx, request, true)
}

fn upgrade(ctx: Arc<SessionContext>, mut request: Request, uni: bool) -> Response {
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
    let (format, subprotocol) = match uni {
        // JSON only.
        true => (Format::Json, None),
        false => select_format(headers, request.uri().query().unwrap_or("")),
    };
    // A unidirectional client may put its connect request in the URL instead of a message.
    let mut uni_connect = None;
    if uni {
        let query = axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(request.uri());
        if let Some(connect) = query
            .ok()
            .and_then(|axum::extract::Query(mut q)| q.remove("cf_connect"))
        {
            match super::uni::connect_command(connect.as_bytes()) {
                Some(command) => uni_connect = Some(command),
                None => return (StatusCode::BAD_REQUEST, "cf_connect must be a JSON ConnectRequest").into_response(),
            }
        }
    }
    // The session's frames must not wait behind the HTTP connection's write coalescing.
    if let Some(switch) = request.extensions().get::<crate::transport::coalesce::CoalesceSwitch>() {
        switch.stop();
    }
    let handshake = Handshake::new(
        if uni { "uni_websocket" } else { "websocket" },
        Handshake::headers_of(&ctx, request.headers()),
    );
    let on_upgrade = hyper::upgrade::on(&mut request);
    let sessions = ctx.sessions.clone();
    let upgrade = Box::new(Upgrade {
        limit: ctx.config.client.max_message_size,
        write_timeout: ctx.config.client.write_timeout,
        ctx,
        format,
        uni,
        uni_connect,
        handshake,
    });
    let task = async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        upgrade.session(upgraded).await.await;
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

/// What a WebSocket session needs once its connection is upgraded. Boxed, and taken apart
/// when the session starts: captured one by one, each would keep its room in the connection's
/// task for the connection's whole life (idle memory per connection).
struct Upgrade {
    ctx: Arc<SessionContext>,
    format: Format,
    uni: bool,
    /// A unidirectional client's connect request from the URL.
    uni_connect: Option<Bytes>,
    handshake: Handshake,
    limit: usize,
    write_timeout: std::time::Duration,
}

impl Upgrade {
    /// The session over the upgraded connection, ready to run.
    async fn session(
        self: Box<Self>,
        upgraded: hyper::upgrade::Upgraded,
    ) -> impl std::future::Future<Output = ()> + Send {
        let Upgrade {
            ctx,
            format,
            uni,
            uni_connect,
            handshake,
            limit,
            write_timeout,
        } = *self;
        let (read, write) = tokio::io::split(TokioIo::new(upgraded));
        let own = Arc::new(OwnOutput::default());
        let reader = ReadSide { read, own: own.clone() };
        let socket = WebSocketStream::from_raw_socket(reader, Role::Server, Some(reader_config(limit))).await;
        let peer_closed = own.clone();
        let incoming = socket.filter_map(move |item| std::future::ready(incoming_of(item, &peer_closed)));
        let transport = WebSocketTransport {
            write,
            own,
            format,
            write_timeout,
            uni,
        };
        match uni {
            true => {
                let incoming = Box::pin(uni_incoming(incoming, uni_connect));
                futures_util::future::Either::Left(session::run(ctx, format, transport, incoming, handshake))
            }
            false => {
                futures_util::future::Either::Right(session::run(ctx, format, transport, Box::pin(incoming), handshake))
            }
        }
    }
}

/// A unidirectional client's input as the session reads it: its connect request (from the URL,
/// or its first message) as a connect command; anything it sends later is ignored. A first
/// message that is not a connect request closes the connection (3501 bad request).
fn uni_incoming(
    incoming: impl futures_util::Stream<Item = Incoming> + Send + Unpin,
    from_url: Option<Bytes>,
) -> impl futures_util::Stream<Item = Incoming> + Send {
    let connected = from_url.is_some();
    let first = futures_util::stream::iter(from_url.map(|data| Incoming::Message { data, binary: false }));
    let rest = incoming.scan(connected, |connected, item| {
        let item = match item {
            Incoming::Message { .. } if *connected => None,
            Incoming::Message { data, binary: false } => {
                *connected = true;
                Some(match super::uni::connect_command(&data) {
                    Some(data) => Incoming::Message { data, binary: false },
                    None => Incoming::Violation(crate::protocol::DisconnectCode::BAD_REQUEST),
                })
            }
            Incoming::Message { binary: true, .. } => {
                Some(Incoming::Violation(crate::protocol::DisconnectCode::BAD_REQUEST))
            }
            other => Some(other),
        };
        std::future::ready(Some(item))
    });
    first.chain(rest.filter_map(std::future::ready))
}

/// How tungstenite reads a client's frames: messages and frames up to the client message limit.
/// The websocket_frames fuzz target reads with this same configuration.
pub(crate) fn reader_config(limit: usize) -> WebSocketConfig {
    // Small per-socket buffers: tungstenite's defaults (128 KiB each way) would dominate the
    // memory of an idle connection (measured 145 KB per connection with them, 7 KB without;
    // issue 5). Reads grow past 1 KiB when a frame needs it. tungstenite only reads: the
    // session's frames are written by `WebSocketTransport`.
    WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
        .read_buffer_size(1024)
        .write_buffer_size(0)
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
pub(crate) fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
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

fn incoming_of(item: Result<Message, tungstenite::Error>, own: &OwnOutput) -> Option<Incoming> {
    match item {
        Ok(Message::Text(text)) => Some(Incoming::Message {
            data: Bytes::from(text),
            binary: false,
        }),
        Ok(Message::Binary(data)) => Some(Incoming::Message { data, binary: true }),
        Ok(Message::Close(frame)) => {
            // The writer answers it, echoing the code (RFC 6455 §5.5.1).
            *own.peer_close.lock() = Some(frame.map(|f| u16::from(f.code)));
            Some(Incoming::Closed)
        }
        // Control frames: tungstenite answers pings itself.
        Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => None,
        Err(e) => Some(violation_of(&e).map_or(Incoming::Closed, Incoming::Violation)),
    }
}

/// The close code for a client that broke the WebSocket framing (RFC 6455 §7.4.1), so that it
/// is told what it did rather than "connection closed, reconnect"; `None` where the connection
/// simply ended.
fn violation_of(error: &tungstenite::Error) -> Option<DisconnectCode> {
    use tungstenite::error::ProtocolError;
    match error {
        tungstenite::Error::Capacity(_) => Some(DisconnectCode::WS_MESSAGE_TOO_BIG),
        tungstenite::Error::Utf8(_) => Some(DisconnectCode::WS_INVALID_DATA),
        tungstenite::Error::Protocol(
            ProtocolError::ResetWithoutClosingHandshake
            | ProtocolError::SendAfterClosing
            | ProtocolError::ReceivedAfterClosing,
        ) => None,
        tungstenite::Error::Protocol(_) | tungstenite::Error::AttackAttempt => Some(DisconnectCode::WS_PROTOCOL_ERROR),
        _ => None,
    }
}

/// Bytes tungstenite wrote (pongs), waiting for the writer, which sends them between its own
/// frames.
#[derive(Default)]
struct OwnOutput {
    bytes: Mutex<Vec<u8>>,
    ready: Arc<Notify>,
    /// The client sent a close frame (with this code, if any). The writer answers it; from then
    /// on tungstenite's output is dropped, so only one close frame goes back.
    peer_close: Mutex<Option<Option<u16>>>,
}

/// The socket as tungstenite sees it: it reads the client's frames, and what it writes is
/// handed to [`OwnOutput`] instead of the socket, so one writer owns the write half and frames
/// never interleave.
struct ReadSide<R = ReadHalf<Io>> {
    read: R,
    own: Arc<OwnOutput>,
}

impl<R: AsyncRead + Unpin> AsyncRead for ReadSide<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReadSide<R> {
    /// tungstenite writes whole frames (pongs) in one call, as every call is accepted whole, so
    /// what waits is always whole pongs. Past `MAX_OWN_OUTPUT` bytes waiting (a client that
    /// pings faster than it reads) the older ones are dropped: RFC 6455 §5.5.3 lets a server
    /// answer only the latest ping.
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.own.peer_close.lock().is_none() && buf.len() <= MAX_OWN_OUTPUT {
            let mut bytes = self.own.bytes.lock();
            if bytes.len() + buf.len() > MAX_OWN_OUTPUT {
                bytes.clear();
            }
            bytes.extend_from_slice(buf);
            drop(bytes);
            self.own.ready.notify_one();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What a session would receive from a client that sent `bytes` after the handshake and then
/// closed the socket: tungstenite reads them as [`handler`] sets it up (server role,
/// [`reader_config`], [`ReadSide`]) and each item is mapped by [`incoming_of`]. Reading stops
/// where the session stops. Also returns the bytes tungstenite left for the writer (pongs).
/// The websocket_frames fuzz target's entry point.
pub(crate) async fn read_client_bytes(bytes: &[u8], limit: usize) -> (Vec<Incoming>, Vec<u8>) {
    let own = Arc::new(OwnOutput::default());
    let reader = ReadSide {
        read: bytes,
        own: own.clone(),
    };
    let mut socket = WebSocketStream::from_raw_socket(reader, Role::Server, Some(reader_config(limit))).await;
    let mut incoming = Vec::new();
    while let Some(item) = socket.next().await {
        let Some(event) = incoming_of(item, &own) else { continue };
        let last = !matches!(event, Incoming::Message { .. });
        incoming.push(event);
        if last {
            break;
        }
    }
    let own_output = std::mem::take(&mut *own.bytes.lock());
    (incoming, own_output)
}

/// Writes the session's frames straight to the socket: the queued replies are copied once, into
/// the frame, with no UTF-8 re-validation (the JSON encoder only produces valid text).
struct WebSocketTransport {
    write: WriteHalf<Io>,
    own: Arc<OwnOutput>,
    format: Format,
    /// `client.write_timeout`: longest wait for the socket to take any byte.
    write_timeout: std::time::Duration,
    /// Unidirectional: the client receives bare pushes, and a disconnect push before the close.
    uni: bool,
}

impl WebSocketTransport {
    async fn write_own_output(&mut self) -> std::io::Result<()> {
        let own = std::mem::take(&mut *self.own.bytes.lock());
        self.write_all(&own).await
    }

    /// Writes all of `bytes`, failing with `TimedOut` when the socket takes no byte for
    /// `write_timeout`: a client that stops reading (even one that still answers pings) ends
    /// instead of holding its queue forever (issue 11). A slow reader that keeps taking bytes
    /// is not cut, however long the frame.
    async fn write_all(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            match within(self.write_timeout, self.write.write(bytes)).await {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Unidirectional: one text message per push.
    async fn send_pushes(&mut self, replies: &[Bytes]) -> std::io::Result<()> {
        let mut frames = Vec::new();
        for push in replies.iter().filter_map(super::uni::push_of) {
            put_header(&mut frames, OPCODE_TEXT, push.len());
            frames.extend_from_slice(&push);
        }
        self.write_all(&frames).await?;
        self.flush().await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        within(self.write_timeout, self.write.flush()).await
    }
}

/// Runs a socket operation, failing with `TimedOut` if it does not complete within `limit`.
/// The timer starts only when the operation does not complete at once, and is boxed: inline,
/// it would take room in every connection's writer task for its whole life (idle memory per
/// connection), and most writes never need it.
async fn within<T>(
    limit: std::time::Duration,
    operation: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    let mut operation = std::pin::pin!(operation);
    if let Some(result) = operation.as_mut().now_or_never() {
        return result;
    }
    match Box::pin(tokio::time::timeout(limit, operation)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

impl Transport for WebSocketTransport {
    async fn send(&mut self, replies: &[Bytes]) -> std::io::Result<()> {
        self.write_own_output().await?;
        if replies.is_empty() {
            // TLS may hold what was written until flushed.
            return self.flush().await;
        }
        if self.uni {
            return self.send_pushes(replies).await;
        }
        let opcode = match self.format {
            Format::Json => OPCODE_TEXT,
            Format::Protobuf => OPCODE_BINARY,
        };
        let len = joined_len(self.format, replies);
        // One copy, into the frame (a gathering write of the replies where they lie was measured
        // 10 % slower at 100 subscribers: the kernel's cost per slice exceeds the copy).
        let mut frame = Vec::with_capacity(MAX_HEADER + len);
        put_header(&mut frame, opcode, len);
        join_into(self.format, replies, &mut frame);
        self.write_all(&frame).await?;
        self.flush().await
    }

    fn own_output(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let ready = self.own.ready.clone();
        async move { ready.notified().await }
    }

    fn answers_pings(&self) -> bool {
        !self.uni
    }

    async fn close(&mut self, code: &DisconnectCode) {
        let _ = self.write_own_output().await;
        if self.uni {
            // A unidirectional client may not read close codes: it is told with a push too.
            let _ = self.send_pushes(&[disconnect_push(code)]).await;
        }
        let peer_close = *self.own.peer_close.lock();
        let frame = match peer_close {
            None => close_frame(Some(code.code), &code.reason),
            Some(echo) => close_frame(echo, ""),
        };
        let _ = self.write.write_all(&frame).await;
        let _ = self.write.shutdown().await;
    }
}

/// The disconnect push that tells a unidirectional client why it is closed, encoded. Built
/// outside the async `close`: a `Reply` held across an await would sit in every connection's
/// writer task for its whole life (about 1 KB each; idle memory per connection).
fn disconnect_push(code: &DisconnectCode) -> Bytes {
    let push = crate::protocol::proto::Reply {
        push: Some(crate::protocol::proto::Push {
            disconnect: Some(crate::protocol::proto::Disconnect {
                code: u32::from(code.code),
                reason: code.reason.to_string(),
                reconnect: code.reconnect(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    crate::protocol::codec::encode_reply(Format::Json, &push)
}

/// A close frame; a control frame's payload is at most 125 bytes, so the reason is cut to 123.
pub(crate) fn close_frame(code: Option<u16>, reason: &str) -> Vec<u8> {
    let mut frame = Vec::with_capacity(MAX_HEADER + 125);
    let Some(code) = code else {
        put_header(&mut frame, OPCODE_CLOSE, 0);
        return frame;
    };
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    put_header(&mut frame, OPCODE_CLOSE, 2 + end);
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(&reason.as_bytes()[..end]);
    frame
}

/// Most bytes of pongs waiting for the writer.
const MAX_OWN_OUTPUT: usize = 4096;

pub(crate) const OPCODE_TEXT: u8 = 0x1;
pub(crate) const OPCODE_BINARY: u8 = 0x2;
pub(crate) const OPCODE_CLOSE: u8 = 0x8;
const MAX_HEADER: usize = 10;

/// The header of an unmasked, final frame (RFC 6455 §5.2), as a server sends them.
pub(crate) fn put_header(buf: &mut Vec<u8>, opcode: u8, len: usize) {
    buf.push(0x80 | opcode);
    if len < 126 {
        buf.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        buf.push(126);
        buf.extend_from_slice(&short.to_be_bytes());
    } else {
        buf.push(127);
        buf.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    /// What tungstenite (as a client would) reads from a header: (header, payload length, bytes used).
    fn parsed(bytes: &[u8]) -> (FrameHeader, u64, u64) {
        let mut cursor = std::io::Cursor::new(bytes);
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().expect("a whole header");
        (header, len, cursor.position())
    }

    #[test]
    fn headers_at_every_length_boundary_read_back() {
        for (len, header_len) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10), (1 << 33, 10)] {
            let mut buf = Vec::new();
            put_header(&mut buf, OPCODE_BINARY, len);
            let (header, read_len, used) = parsed(&buf);
            assert_eq!((read_len, used), (len as u64, header_len), "length {len}");
            assert!(header.is_final && header.mask.is_none() && !header.rsv1);
            assert_eq!(header.opcode, OpCode::Data(Data::Binary));
        }
        let mut buf = Vec::new();
        put_header(&mut buf, OPCODE_TEXT, 3);
        assert_eq!(parsed(&buf).0.opcode, OpCode::Data(Data::Text));
    }

    #[test]
    fn close_frames_fit_a_control_frame() {
        let frame = close_frame(Some(3001), "shutdown");
        let (header, len, used) = parsed(&frame);
        assert_eq!(header.opcode, OpCode::Control(Control::Close));
        assert_eq!(&frame[used as usize..], b"\x0b\xb9shutdown");
        assert_eq!(len, 10);
        // A long reason is cut to 123 bytes, on a character boundary.
        let long = "é".repeat(100);
        let frame = close_frame(Some(4000), &long);
        let (_, len, used) = parsed(&frame);
        assert!(len <= 125);
        assert!(std::str::from_utf8(&frame[used as usize + 2..]).is_ok());
        assert_eq!(len, 2 + 122);
        // An empty close answers a close without a code.
        assert_eq!(close_frame(None, "ignored"), [0x88, 0]);
    }

    /// A client frame, final, masked as RFC 6455 requires of clients.
    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let key = [1, 2, 3, 4];
        let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        frame
    }

    #[tokio::test]
    async fn client_bytes_are_read_as_the_session_reads_them() {
        let mut bytes = masked(0x9, b"hi");
        bytes.extend(masked(0x1, b"{}"));
        bytes.extend(masked(0x2, &[0; 20]));
        let (incoming, own) = read_client_bytes(&bytes, 10).await;
        assert!(matches!(&incoming[0], Incoming::Message { data, binary: false } if &data[..] == b"{}"));
        // Over the limit: the session is told, and reading stops there.
        assert!(
            matches!(incoming[1..], [Incoming::Violation(DisconnectCode { code: 1009, .. })]),
            "{incoming:?}"
        );
        assert_eq!(own, [0x8a, 2, b'h', b'i'], "the ping is answered");
        // A client frame without a mask breaks the protocol: the connection ends with 1002.
        let (incoming, _) = read_client_bytes(&[0x81, 2, b'{', b'}'], 10).await;
        assert!(
            matches!(incoming[..], [Incoming::Violation(DisconnectCode { code: 1002, .. })]),
            "{incoming:?}"
        );
    }

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
