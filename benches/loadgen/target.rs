//! The server under test, Herald or NATS, behind one interface: name a channel, subscribe a
//! connection to it, open a publisher.

use std::net::IpAddr;

use tokio_util::sync::CancellationToken;

use crate::progress::{Outcome, Receiver};
use crate::publisher::Publisher;
use crate::{api, herald, http_stream, nats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishVia {
    /// Herald's HTTP API, `POST /api/publish`, pipelined.
    Api,
    /// Client `publish` commands on a WebSocket connection (the namespace must allow it).
    Socket,
}

/// How the publisher reaches Herald's HTTP API.
#[derive(Debug, Clone)]
pub struct ApiAccess {
    pub url: String,
    pub key: String,
    pub connections: usize,
    /// Publishes per HTTP request (above 1: `/api/batch` calls).
    pub per_request: usize,
}

pub enum Target {
    Herald {
        client: herald::Client,
        /// Set: subscribers connect over HTTP-streaming instead of WebSocket.
        streams: Option<http_stream::Client>,
        namespace: String,
        via: PublishVia,
        api: Option<ApiAccess>,
    },
    Nats {
        client: nats::Client,
        namespace: String,
    },
}

pub enum Subscriber {
    Herald(herald::Subscriber),
    HeraldStream(http_stream::Subscriber),
    Nats(nats::Subscriber),
}

impl Target {
    /// The server's name for a scenario's channel: `ns:name` (a Herald namespace) or `ns.name`
    /// (a NATS subject).
    pub fn channel(&self, name: &str) -> String {
        match self {
            Self::Herald { namespace, .. } => format!("{namespace}:{name}"),
            Self::Nats { namespace, .. } => format!("{namespace}.{name}"),
        }
    }

    pub async fn subscribe(&self, channel: &str, source: Option<IpAddr>) -> anyhow::Result<Subscriber> {
        Ok(match self {
            Self::Herald {
                streams: Some(streams), ..
            } => Subscriber::HeraldStream(streams.subscribe(channel, source).await?),
            Self::Herald { client, .. } => Subscriber::Herald(client.subscribe(channel, source).await?),
            Self::Nats { client, .. } => Subscriber::Nats(client.subscribe(channel, source).await?),
        })
    }

    /// A publisher for `channels` (server names) with at most `inflight` unacknowledged messages
    /// per connection where the protocol acknowledges them.
    pub async fn publisher(&self, channels: Vec<String>, inflight: usize) -> anyhow::Result<Publisher> {
        Ok(match self {
            Self::Herald {
                via: PublishVia::Api,
                api,
                ..
            } => {
                let api = api
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("--publish-via api needs --api URL"))?;
                Publisher::HeraldApi(api::Publisher::connect(api, &channels, inflight).await?)
            }
            Self::Herald {
                via: PublishVia::Socket,
                client,
                ..
            } => Publisher::HeraldSocket(client.publisher(channels, inflight).await?),
            Self::Nats { client, .. } => Publisher::Nats(client.publisher(channels).await?),
        })
    }
}

impl Subscriber {
    pub async fn run(self, receiver: Receiver, stop: CancellationToken) -> Outcome {
        match self {
            Self::Herald(s) => s.run(receiver, stop).await,
            Self::HeraldStream(s) => s.run(receiver, stop).await,
            Self::Nats(s) => s.run(receiver, stop).await,
        }
    }
}
