//! The replicated log's types: its commands (what a Raft entry asks of the streams), their
//! outcomes, and the members' descriptions. They travel between nodes, postcard-encoded.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// Herald's Raft type configuration.
    pub Herald:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = Member,
);

/// A member of the Raft group as the others reach it: by node name, over the links.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
}

/// One replicated change of the streams. Everything the apply needs is in the command, so the
/// same log gives the same streams on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Publications, appended in this order.
    Publish(Vec<Entry>),
    /// Drops a channel's history; the stream starts `epoch`.
    RemoveHistory {
        channel: String,
        time_ms: i64,
        epoch: String,
    },
    /// Retention of one stream, judged at `now_ms`: (size, ttl in ms) for history, and the
    /// idle time after which the stream is forgotten.
    Trim {
        channel: String,
        history: Option<(usize, u64)>,
        meta_ttl_ms: u64,
        now_ms: i64,
    },
    /// Expiry of idempotency keys, judged at `now_ms`.
    ExpireIdempotency { now_ms: i64 },
    /// `Publish` whose entries carry versions (API publish `version`, `version_epoch`): one
    /// (version, version epoch) per entry, (0, "") for none. A variant of its own, last, so
    /// that logs and nodes that predate it read every other command as before.
    PublishVersioned(Vec<Entry>, Vec<(u64, String)>),
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Publish(entries) | Command::PublishVersioned(entries, _) => {
                write!(f, "publish({})", entries.len())
            }
            Command::RemoveHistory { channel, .. } => write!(f, "remove_history({channel})"),
            Command::Trim { channel, .. } => write!(f, "trim({channel})"),
            Command::ExpireIdempotency { .. } => f.write_str("expire_idempotency"),
        }
    }
}

/// One publication to append. Cheap to clone (the log keeps entries in memory and hands out
/// copies to the apply and to each follower's replication): the channel, the publication and
/// the epoch are shared. Encoded exactly as when they were a `String` and a `Vec<u8>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub channel: Arc<str>,
    /// The `herald.client.Publication`, protobuf-encoded (its offset is assigned at apply).
    pub publication: Bytes,
    /// (size, ttl in ms) when the channel keeps history.
    pub history: Option<(usize, u64)>,
    /// (key, window in ms).
    pub idempotency: Option<(String, u64)>,
    /// The entry's time, and the epoch a stream it starts gets.
    pub time_ms: i64,
    pub epoch: Arc<str>,
}

/// What applying a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    #[default]
    None,
    /// Per entry of a `Publish`: its position, or why it failed.
    Published(Vec<Result<Appended, String>>),
    /// The new position of a stream (`RemoveHistory`).
    Position { epoch: String, offset: u64 },
    /// Records removed (`Trim`, `ExpireIdempotency`).
    Count(usize),
    /// The apply failed (the store refused): the message.
    Failed(String),
}

/// Where a publication went; `duplicate` for a repeated idempotency key (the first position).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    pub epoch: String,
    pub offset: u64,
    pub duplicate: bool,
}

pub type LogId = openraft::type_config::alias::LogIdOf<Herald>;
pub type Vote = openraft::type_config::alias::VoteOf<Herald>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<Herald>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<Herald>;
pub type RaftEntry = openraft::type_config::alias::EntryOf<Herald>;

#[cfg(test)]
mod tests {
    use super::*;

    /// `Entry` as it was before its fields were shared: logs on disk and nodes of that version
    /// encode entries this way.
    #[derive(Debug, Serialize, Deserialize)]
    struct OwnedEntry {
        channel: String,
        publication: Vec<u8>,
        history: Option<(usize, u64)>,
        idempotency: Option<(String, u64)>,
        time_ms: i64,
        epoch: String,
    }

    #[derive(Debug, Serialize, Deserialize)]
    enum OwnedCommand {
        Publish(Vec<OwnedEntry>),
    }

    #[test]
    fn shared_entries_encode_exactly_as_owned_ones() {
        let publication: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        let owned = OwnedCommand::Publish(vec![OwnedEntry {
            channel: "news:ü".into(),
            publication: publication.clone(),
            history: Some((100, 600_000)),
            idempotency: Some(("key".into(), 300_000)),
            time_ms: 1_764_000_000_123,
            epoch: "e1".into(),
        }]);
        let shared = Command::Publish(vec![Entry {
            channel: Arc::from("news:ü"),
            publication: Bytes::from(publication),
            history: Some((100, 600_000)),
            idempotency: Some(("key".into(), 300_000)),
            time_ms: 1_764_000_000_123,
            epoch: Arc::from("e1"),
        }]);
        let old = postcard::to_stdvec(&owned).unwrap();
        assert_eq!(postcard::to_stdvec(&shared).unwrap(), old);
        let read: Command = postcard::from_bytes(&old).unwrap();
        assert_eq!(read, shared);
        let back: OwnedCommand = postcard::from_bytes(&postcard::to_stdvec(&read).unwrap()).unwrap();
        let OwnedCommand::Publish(entries) = back;
        assert_eq!(entries[0].publication.len(), 700);
    }
}
