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

pub use codec::{DecodeError, Format};
pub use codes::{DisconnectCode, ErrorCode, UnsubscribeCode};
