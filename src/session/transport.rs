//! What a session needs from its transport: a way to send a frame and to close with a code, and
//! a stream of incoming frames. WebSocket implements it in `crate::transport::websocket`; tests
//! and, later, SSE can bring their own.

use std::future::Future;

use bytes::Bytes;

use crate::protocol::DisconnectCode;

/// One event read from the client.
#[derive(Debug)]
pub enum Incoming {
    /// A whole message: text (JSON) or binary (Protobuf).
    Message { data: Bytes, binary: bool },
    /// The client sent a message over the size limit.
    TooLarge,
    /// The client closed the connection, or it broke.
    Closed,
}

pub trait Transport: Send + 'static {
    /// Writes one frame holding one or more encoded replies.
    fn send(&mut self, payload: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Ends the connection with a code the SDK understands.
    fn close(&mut self, code: &DisconnectCode) -> impl Future<Output = ()> + Send;
}
