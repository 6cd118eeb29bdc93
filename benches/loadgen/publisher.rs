//! The publishing side, whatever the target: messages go out in batches (one write each) and
//! [`Publisher::finish`] waits until the server has acknowledged or processed all of them.

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{api, herald, nats};

/// One message to publish: the index of its channel in the publisher's channel list.
pub struct Outgoing {
    pub channel: usize,
    pub payload: Bytes,
}

pub enum Publisher {
    HeraldApi(api::Publisher),
    HeraldSocket(herald::Publisher),
    Nats(nats::Publisher),
}

impl Publisher {
    /// Writes a batch. Waits only while the in-flight limit is reached.
    pub async fn send(&mut self, batch: &[Outgoing]) -> anyhow::Result<()> {
        match self {
            Self::HeraldApi(p) => p.send(batch).await,
            Self::HeraldSocket(p) => p.send(batch).await,
            Self::Nats(p) => p.send(batch).await,
        }
    }

    /// Waits for every message sent to be acknowledged, until `deadline`.
    pub async fn finish(&mut self, deadline: Instant) -> Acks {
        match self {
            Self::HeraldApi(p) => p.finish(deadline).await,
            Self::HeraldSocket(p) => p.finish(deadline).await,
            Self::Nats(p) => p.finish(deadline).await,
        }
    }
}

/// Publish acknowledgements as counted by a publisher's reader task.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Acks {
    pub ok: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Set when the publisher's connection ended before the run did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed: Option<String>,
}

impl Acks {
    pub fn error(&mut self, message: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message());
        }
    }

    pub fn answered(&self) -> u64 {
        self.ok + self.errors
    }
}

/// Waits until `sent` messages are answered (or the reader gave up), until `deadline`.
pub async fn wait_for_acks(acks: &mut watch::Receiver<Acks>, sent: u64, deadline: Instant) -> Acks {
    let wait = acks.wait_for(|a| a.answered() >= sent || a.closed.is_some());
    let _ = tokio::time::timeout_at(deadline, wait).await;
    let mut result = acks.borrow().clone();
    if result.answered() < sent && result.closed.is_none() {
        result.closed = Some(format!(
            "{} of {sent} publishes unanswered at the deadline",
            sent - result.answered()
        ));
    }
    result
}
