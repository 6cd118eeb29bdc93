//! Authentication and authorization: connection and subscription JWTs, and the channel rules
//! (namespaces, `#` user-limited channels, `$` private channels, per-namespace permissions).
//!
//! Decisions are plain functions of their inputs; nothing here does I/O after startup.

pub mod channel;
pub mod rules;
pub mod token;

pub use channel::ChannelName;
pub use token::{ConnectClaims, SubscribeClaims, TokenError, Verifier};
