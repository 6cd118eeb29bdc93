//! The client protocol: Centrifugo protocol v2 frames decoded into one set of Rust types and encoded
//! back, in JSON or Protobuf. Pure: no I/O, no clocks, no channels; everything here can be fuzzed.
//!
//! - [`proto`]: the messages of `proto/client.proto` (prost + serde).
//! - [`codec`]: splitting a WebSocket message into commands and joining replies into one message.
//! - [`codes`]: every error, unsubscribe and disconnect code the server may send.
//! - [`json`]: the serde helpers that make the prost types speak Centrifugo's JSON.

pub mod codec;
pub mod codes;
pub mod json;

/// Messages of `proto/client.proto`, generated at build time.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/herald.client.rs"));
}

impl proto::Command {
    /// `connect` with a token (the client side: `herald sub`, the load generator, tests).
    pub fn connect(id: u32, token: &str) -> Self {
        Self {
            id,
            connect: Some(proto::ConnectRequest {
                token: token.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `subscribe` to a channel, with nothing else asked.
    pub fn subscribe(id: u32, channel: &str) -> Self {
        Self {
            id,
            subscribe: Some(proto::SubscribeRequest {
                channel: channel.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

pub use codec::{DecodeError, Format};
pub use codes::{DisconnectCode, ErrorCode, UnsubscribeCode};
