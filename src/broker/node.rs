//! Which node this is, and what it reports about itself (API `info`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The name of one node process. Random per process today (a UUID, as Centrifugo's node `uid`);
/// the cluster will name the sender of every inter-node message with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// A fresh id, different for every process.
    pub fn random() -> Self {
        Self(Arc::from(uuid::Uuid::new_v4().to_string()))
    }

    /// A node of a cluster, named by `cluster.node_name`.
    pub fn named(name: &str) -> Self {
        Self(Arc::from(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One node's figures, as API `info` lists them.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: NodeId,
    /// The host name.
    pub name: String,
    pub version: String,
    pub clients: usize,
    /// Distinct users among the clients.
    pub users: usize,
    /// Channels with at least one local subscriber.
    pub channels: usize,
    pub subscriptions: usize,
    pub uptime: Duration,
}

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "herald".into())
}
