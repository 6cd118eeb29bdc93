//! What a session needs from its transport: a way to send a frame and to close with a code, and
//! a stream of incoming frames. WebSocket implements it in `crate::transport::websocket`; tests
//! and, later, SSE can bring their own.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::DisconnectCode;

/// One event read from the client.
#[derive(Debug)]
pub enum Incoming {
    /// A whole message: text (JSON) or binary (Protobuf).
    Message { data: Bytes, binary: bool },
    /// The client broke the transport's rules (a message over the size limit, a malformed
    /// frame): the connection is closed with this code.
    Violation(DisconnectCode),
    /// The client closed the connection, or it broke.
    Closed,
}

pub trait Transport: Send + 'static {
    /// Writes one frame holding the encoded replies, after anything the transport has to send
    /// of its own (see [`Transport::own_output`]). With no replies, writes only the latter.
    fn send(&mut self, replies: &[Bytes]) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Resolves when the transport has output of its own waiting (a WebSocket pong answering a
    /// client's ping); the writer then calls `send(&[])`. May resolve spuriously.
    fn own_output(&self) -> impl Future<Output = ()> + Send + 'static;
    /// Ends the connection with a code the SDK understands.
    fn close(&mut self, code: &DisconnectCode) -> impl Future<Output = ()> + Send;
    /// The id the client names in its later requests when the transport cannot carry them
    /// itself (HTTP-streaming and SSE: `POST /emulation`); the connect result tells it, with
    /// the node's name. `None` for a socket.
    fn emulation_session(&self) -> Option<Arc<str>> {
        None
    }
    /// Whether the client can answer the server's pings. Unidirectional transports cannot: the
    /// pings still go out (the client may watch for them), but no pong is expected.
    fn answers_pings(&self) -> bool {
        true
    }
}
