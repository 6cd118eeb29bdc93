//! The Raft log in sled, beside the streams: two trees of the store's database. Entries are
//! keyed by their index (big-endian, so they sort in order) and postcard-encoded; the vote, the
//! last purged log id and this node's id live in a small meta tree.
//!
//! An append is acknowledged to Raft (`IOFlushed`) once it is on disk in `flush` durability,
//! once it is in sled in `os` durability (documented: a machine crash, not a process crash, may
//! then lose entries this node acknowledged, and a majority of machines crashing at once could
//! lose a committed entry). The vote is always flushed before it counts. The log's flush covers
//! the whole database, the streams' latest applies included.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::entry::RaftEntry as _;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::types::{Herald, LogId, RaftEntry, Vote};
use crate::config::Durability;

const LOG_TREE: &str = "raft_log";
const META_TREE: &str = "raft_meta";
const VOTE: &[u8] = b"vote";
const PURGED: &[u8] = b"purged";
const NODE_ID: &[u8] = b"node_id";

#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    durability: Durability,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn encode<T: serde::Serialize>(value: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl LogStore {
    pub fn open(db: &sled::Db, durability: Durability) -> io::Result<Self> {
        Ok(Self {
            db: db.clone(),
            log: db.open_tree(LOG_TREE).map_err(other)?,
            meta: db.open_tree(META_TREE).map_err(other)?,
            durability,
        })
    }

    /// This node's id in the group: chosen at random the first time the store is used, and
    /// kept with it. A node whose store is lost is a new member.
    pub fn node_id(&self) -> io::Result<u64> {
        if let Some(bytes) = self.meta.get(NODE_ID).map_err(other)? {
            let bytes: [u8; 8] = bytes.as_ref().try_into().map_err(other)?;
            return Ok(u64::from_be_bytes(bytes));
        }
        // Never 0: ids read as "none" elsewhere.
        let id = rand::random::<u64>().max(1);
        self.meta.insert(NODE_ID, &id.to_be_bytes()).map_err(other)?;
        self.db.flush().map_err(other)?;
        Ok(id)
    }

    /// Whether this node has ever been part of a group (a vote or a log entry).
    pub fn is_used(&self) -> io::Result<bool> {
        Ok(self.meta.get(VOTE).map_err(other)?.is_some() || !self.log.is_empty())
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.meta.get(key).map_err(other)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn flush(&self) -> io::Result<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush().map(|_| ()))
            .await
            .map_err(other)?
            .map_err(other)
    }
}

impl RaftLogReader<Herald> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<RaftEntry>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        for item in self.log.range(start.to_be_bytes()..) {
            let (key, value) = item.map_err(other)?;
            let index = u64::from_be_bytes(key.as_ref().try_into().map_err(other)?);
            if !range.contains(&index) {
                break;
            }
            entries.push(decode(&value)?);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.get_meta(VOTE)
    }
}

impl RaftLogStorage<Herald> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<Herald>> {
        let last_purged_log_id: Option<LogId> = self.get_meta(PURGED)?;
        let last = match self.log.last().map_err(other)? {
            Some((_, value)) => Some(decode::<RaftEntry>(&value)?.log_id()),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.meta.insert(VOTE, encode(vote)?).map_err(other)?;
        self.flush().await
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<Herald>) -> io::Result<()>
    where
        I: IntoIterator<Item = RaftEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&entry.index().to_be_bytes(), encode(&entry)?);
        }
        self.log.apply_batch(batch).map_err(other)?;
        if self.durability == Durability::Flush {
            let db = self.db.clone();
            tokio::task::spawn_blocking(move || {
                let result = db.flush().map(|_| ()).map_err(other);
                callback.io_completed(result);
            });
        } else {
            callback.io_completed(Ok(()));
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        let mut batch = sled::Batch::default();
        for key in self.log.range(from.to_be_bytes()..).keys() {
            batch.remove(key.map_err(other)?);
        }
        self.log.apply_batch(batch).map_err(other)?;
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        self.meta.insert(PURGED, encode(&log_id)?).map_err(other)?;
        let mut batch = sled::Batch::default();
        for key in self.log.range(..=log_id.index().to_be_bytes()).keys() {
            batch.remove(key.map_err(other)?);
        }
        self.log.apply_batch(batch).map_err(other)?;
        self.flush().await
    }
}
