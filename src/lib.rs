//! Herald: a real-time messaging broker speaking the Centrifugo client protocol v2.
//!
//! The modules follow the path of a publication (see `docs/ARCHITECTURE.md`):
//!
//! - [`config`]: one typed model from TOML, `HERALD_…` environment variables and flags.
//! - [`transport`]: listeners, TLS, HTTP routing, the WebSocket upgrade. Knows nothing of channels.
//! - [`protocol`]: pure decode/encode of client frames (JSON and Protobuf) and every code.
//! - [`session`]: one client connection: its state machine, subscriptions, pings, bounded queue.
//! - [`auth`]: JWT verification and channel permission rules.
//! - [`delta`]: fossil deltas of publication data, for subscribers that negotiate `delta: "fossil"`.
//! - [`hub`]: the local index channel → sessions; fan-out encodes once per format.
//! - [`broker`]: the node's engine and the only way in for the API and sessions: publish (and
//!   the fan-out of commits, off the store's writer), subscribe with recovery, history, presence.
//!   Callers never assume which node owns a channel.
//! - [`store`]: the only code that touches sled: per-channel streams with offset and epoch.
//! - [`cluster`]: membership, links, interest routing and replication between nodes; idle
//!   without a `[cluster]` section.
//! - [`api`]: the HTTP server API on top of the broker.
//! - [`limits`]: token buckets for the rate limits.
//! - [`server`]: wires everything together and runs until shutdown.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod delta;
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod session;
pub mod store;
pub mod transport;

/// The version reported to clients and by `herald --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
