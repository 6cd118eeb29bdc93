//! The Raft log: an append-only write-ahead log in files of its own (`raft-log`, in
//! `<storage.path>/raft-log`), beside the streams. Entries are written once, in order, and
//! synced by a worker thread that groups the syncs of appends made close together; the entries
//! not yet applied everywhere are served from memory (the crate's payload cache), so the state
//! machine and the replication to followers do not read them back from disk. This node's id
//! stays in the store's database (a small meta tree).
//!
//! An append is acknowledged to Raft (`IOFlushed`) once it is synced in `flush` durability,
//! once it is written to the operating system in `os` durability (documented: a machine
//! crash, not a process crash, may then lose entries this node acknowledged, and a majority of
//! machines crashing at once could lose a committed entry). The vote is always synced before it
//! counts.
//!
//! The streams (the state machine) are not synced when an entry is applied: after a crash the
//! store comes back at a consistent point (its last applied log id is written with each
//! apply), and Raft applies the rest again from this log. So the log must keep every entry the
//! store may have lost: before entries are purged, the store is flushed.
//!
//! Logs written by earlier versions, in two trees of the store's database, are moved into the
//! log files the first time the node starts with this one ([`LogStore::open`]).
//!
//! The database and the log files must stay together: a voter that lost its log but kept its
//! replica id could vote again in a term it already voted in, or be counted for entries it no
//! longer holds. So the id is kept in both (in the log as its user data), the database records
//! that the log was used before the log is first written, and [`LogStore::node_id`] refuses a
//! store whose two halves do not match.

use std::fmt::Debug;
use std::io::{self, Read, Write};
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::entry::RaftEntry as _;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend, RaftLogReader};
use raft_log::api::raft_log_writer::RaftLogWriter as _;
use raft_log::codeq::{Decode, Encode};

use super::types::{Command, Herald, LogId, RaftEntry, Vote};
use crate::config::Durability;

/// The log's directory inside the store's.
pub const DIR: &str = "raft-log";
/// Trees of the database: this node's id (and, in earlier versions, the vote); the log of
/// earlier versions.
const META_TREE: &str = "raft_meta";
const LEGACY_LOG_TREE: &str = "raft_log";
const VOTE: &[u8] = b"vote";
const PURGED: &[u8] = b"purged";
const NODE_ID: &[u8] = b"node_id";
/// Set in the database before the log is first written (a vote or an entry).
const LOG_USED: &[u8] = b"log_used";
/// A log file is closed, and a new one started, past this size; a closed file is deleted once
/// every entry in it is purged, and its entries may then leave the memory cache.
const CHUNK_BYTES: usize = 64 << 20;
/// At most this much of the log is kept in memory beyond the open file (entries of the open
/// file always are: see [`CHUNK_BYTES`]).
const CACHE_BYTES: usize = 64 << 20;
/// How long the log's writer waits for more appends before it syncs what it has. None: Raft
/// already hands the log every entry that is ready in one append, and an append waits for its
/// sync (the crate's default, 1 ms, cost a tenth of the replicated publish rate on one
/// connection).
const SYNC_GATHER: std::time::Duration = std::time::Duration::ZERO;
/// The largest encoded value the log accepts to read back: a length beyond it is damage.
const MAX_VALUE: usize = 256 << 20;

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// A value in the log files: postcard, after its length (u32, big-endian). The log's records
/// carry a checksum of their own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Coded<T>(pub T);

impl<T: serde::Serialize> Encode for Coded<T> {
    fn encode<W: Write>(&self, mut w: W) -> io::Result<usize> {
        let bytes = postcard::to_stdvec(&self.0).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let length = u32::try_from(bytes.len()).map_err(other)?;
        w.write_all(&length.to_be_bytes())?;
        w.write_all(&bytes)?;
        Ok(4 + bytes.len())
    }
}

impl<T: serde::de::DeserializeOwned> Decode for Coded<T> {
    fn decode<R: Read>(mut r: R) -> io::Result<Self> {
        let mut length = [0u8; 4];
        r.read_exact(&mut length)?;
        let length = u32::from_be_bytes(length) as usize;
        if length > MAX_VALUE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a log value of {length} bytes: the log is damaged"),
            ));
        }
        let mut bytes = vec![0; length];
        r.read_exact(&mut bytes)?;
        postcard::from_bytes(&bytes)
            .map(Coded)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// The log's types for `raft-log`: openraft's log ids, votes and entries (the whole entry is
/// the payload, so a read hands openraft back what it appended).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Types;

impl raft_log::Types for Types {
    type LogId = Coded<LogId>;
    type LogPayload = Coded<RaftEntry>;
    type Vote = Coded<Vote>;
    type Callback = Done;
    /// This node's replica id.
    type UserData = Coded<u64>;

    fn log_index(log_id: &Self::LogId) -> u64 {
        log_id.0.index()
    }

    fn payload_size(payload: &Self::LogPayload) -> u64 {
        let body = match &payload.0.payload {
            EntryPayload::Normal(Command::Publish(entries) | Command::PublishVersioned(entries, _)) => entries
                .iter()
                .map(|e| e.publication.len() + e.channel.len() + e.epoch.len() + 48)
                .sum(),
            _ => 0,
        };
        (body + 64) as u64
    }
}

/// Who is told when a write reached the disk: Raft, or a caller waiting for it (a task, or a
/// thread that blocks).
pub enum Done {
    /// Raft, and when the append was handed to the log.
    Raft(IOFlushed<Herald>, std::time::Instant),
    Wait(tokio::sync::oneshot::Sender<io::Result<()>>),
    Block(std::sync::mpsc::SyncSender<io::Result<()>>),
}

impl raft_log::Callback for Done {
    fn send(self, result: io::Result<()>) {
        match self {
            Done::Raft(flushed, since) => {
                metrics::histogram!("herald_cluster_log_write_duration_seconds").record(since.elapsed().as_secs_f64());
                flushed.io_completed(result)
            }
            Done::Wait(tx) => {
                let _ = tx.send(result);
            }
            Done::Block(tx) => {
                let _ = std::sync::mpsc::SyncSender::send(&tx, result);
            }
        }
    }
}

type Wal = raft_log::RaftLog<Types>;

#[derive(Clone)]
pub struct LogStore {
    wal: Arc<parking_lot::RwLock<Wal>>,
    /// Whether the database says the log was used ([`LOG_USED`]).
    marked: Arc<std::sync::atomic::AtomicBool>,
    /// The streams' database, and the store that writes it: flushed before entries are
    /// purged (through the store when there is one, which writes first what it holds behind).
    db: sled::Db,
    streams: Option<crate::store::Store>,
    meta: sled::Tree,
    durability: Durability,
}

impl LogStore {
    /// Opens the log in `<dir>/raft-log` (creating it), beside the streams of `db`; moves a
    /// log written by an earlier version out of `db` first.
    pub fn open(dir: &Path, db: &sled::Db, durability: Durability) -> io::Result<Self> {
        let path = dir.join(DIR);
        std::fs::create_dir_all(&path)?;
        let path = path
            .to_str()
            .ok_or_else(|| other(format!("the store's path is not UTF-8: {}", path.display())))?;
        let mut config = raft_log::Config::new(path);
        config.wal.chunk_max_size = Some(CHUNK_BYTES);
        config.wal.flush_batch_wait = Some(SYNC_GATHER);
        config.log_cache_capacity = Some(CACHE_BYTES);
        let wal = Wal::open(Arc::new(config)).map_err(|e| other(format!("opening the raft log in {path}: {e}")))?;
        let meta = db.open_tree(META_TREE).map_err(other)?;
        let marked = meta.get(LOG_USED).map_err(other)?.is_some();
        let store = Self {
            wal: Arc::new(parking_lot::RwLock::new(wal)),
            marked: Arc::new(std::sync::atomic::AtomicBool::new(marked)),
            db: db.clone(),
            streams: None,
            meta,
            durability,
        };
        store.move_legacy_log()?;
        Ok(store)
    }

    /// This node's id in the group: chosen at random the first time the store is used, and
    /// kept with it, in the database and in the log. A node whose store is lost is a new
    /// member. A store whose database and log do not belong together is refused, with what to
    /// do: a half that shows use beside a missing other half means a lost log (or lost streams).
    /// A half missing beside an unused other half is a first start cut short, and is completed.
    pub fn node_id(&self) -> io::Result<u64> {
        let in_db = self.stored_id()?;
        let in_log = self.wal.read().log_state().user_data.as_ref().map(|id| id.0);
        let log_used = self.is_used();
        if log_used {
            self.mark_used()?;
        }
        let move_away = "move the whole store directory away (the node then rejoins as a new replica)";
        let id = match (in_db, in_log) {
            (Some(db), Some(log)) if db == log => return Ok(db),
            (Some(db), Some(log)) => {
                return Err(other(format!(
                    "the store's database belongs to replica {db} and its raft log ({DIR}) to replica {log}: \
                     they are not one store; {move_away}"
                )))
            }
            (None, Some(log)) if log_used => {
                return Err(other(format!(
                    "the raft log ({DIR}) of replica {log} is used, but the store's database has no replica id: \
                     the streams were lost or replaced; {move_away}"
                )))
            }
            (Some(db), None) if self.marked.load(Ordering::Relaxed) => {
                return Err(other(format!(
                    "the store's database belongs to replica {db}, whose raft log was used, but the log ({DIR}) \
                     is missing or empty: this node could vote or count for entries it no longer holds; {move_away}"
                )))
            }
            (Some(id), None) | (None, Some(id)) => id,
            // Never 0: ids read as "none" elsewhere.
            (None, None) => rand::random::<u64>().max(1),
        };
        // The log first: a start cut short after it finds an unused log with the id, and
        // completes the database.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        {
            let mut wal = self.wal.write();
            wal.save_user_data(Some(Coded(id)))?;
            wal.flush(true, Some(Done::Block(tx)))?;
        }
        rx.recv().map_err(|_| other("the raft log's writer stopped"))??;
        self.meta.insert(NODE_ID, &id.to_be_bytes()).map_err(other)?;
        self.db.flush().map_err(other)?;
        Ok(id)
    }

    /// The replica id the database holds, if any.
    fn stored_id(&self) -> io::Result<Option<u64>> {
        match self.meta.get(NODE_ID).map_err(other)? {
            Some(bytes) => Ok(Some(u64::from_be_bytes(bytes.as_ref().try_into().map_err(other)?))),
            None => Ok(None),
        }
    }

    /// Records in the database, durably, that the log is used: once, before its first write.
    fn mark_used(&self) -> io::Result<()> {
        if self.marked.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.meta.insert(LOG_USED, b"1".as_slice()).map_err(other)?;
        self.db.flush().map_err(other)?;
        self.marked.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Whether this node has ever been part of a group (a vote or a log entry).
    pub fn is_used(&self) -> bool {
        let wal = self.wal.read();
        let state = wal.log_state();
        state.vote().is_some() || state.last().is_some() || state.purged().is_some()
    }

    /// Hands the log's pending writes to its worker, and waits until they are on disk
    /// (`sync`) or written to the operating system.
    async fn flush(&self, sync: bool) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.wal.write().flush(sync, Some(Done::Wait(tx)))?;
        rx.await.map_err(|_| other("the raft log's writer stopped"))?
    }

    /// Flushes the streams through `store` before entries are purged (see [`LogStore::purge`]):
    /// its writer may hold applied entries behind, unwritten.
    pub fn flushing(mut self, store: crate::store::Store) -> Self {
        self.streams = Some(store);
        self
    }

    /// Moves a log kept in the database by an earlier version (its vote, its purge point and
    /// its entries) into the log files, durably, then removes it from the database. A move
    /// cut short is done again at the next start: the files are written over only while they
    /// hold nothing.
    fn move_legacy_log(&self) -> io::Result<()> {
        let legacy = self.db.open_tree(LEGACY_LOG_TREE).map_err(other)?;
        let vote = self.meta.get(VOTE).map_err(other)?;
        let purged = self.meta.get(PURGED).map_err(other)?;
        if legacy.is_empty() && vote.is_none() && purged.is_none() {
            return Ok(());
        }
        let decode_err = |e: postcard::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        if !self.is_used() {
            let mut entries = 0;
            self.mark_used()?;
            let id = self.stored_id()?;
            {
                let mut wal = self.wal.write();
                wal.save_user_data(id.map(Coded))?;
                if let Some(vote) = &vote {
                    wal.save_vote(Coded(postcard::from_bytes::<Vote>(vote).map_err(decode_err)?))?;
                }
                if let Some(purged) = &purged {
                    wal.purge(Coded(postcard::from_bytes::<LogId>(purged).map_err(decode_err)?))?;
                }
                for item in legacy.iter() {
                    let (_, value) = item.map_err(other)?;
                    let entry: RaftEntry = postcard::from_bytes(&value).map_err(decode_err)?;
                    wal.append([(Coded(entry.log_id()), Coded(entry))])?;
                    entries += 1;
                }
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                wal.flush(true, Some(Done::Block(tx)))?;
                drop(wal);
                rx.recv().map_err(|_| other("the raft log's writer stopped"))??;
            }
            tracing::info!(
                entries,
                "cluster: moved the replicated log out of the database into its own files"
            );
        }
        legacy.clear().map_err(other)?;
        self.meta.remove(VOTE).map_err(other)?;
        self.meta.remove(PURGED).map_err(other)?;
        self.db.flush().map_err(other)?;
        Ok(())
    }
}

impl RaftLogReader<Herald> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<RaftEntry>> {
        let from = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(x) => x.saturating_add(1),
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        let wal = self.wal.read();
        wal.read(from, to).map(|item| item.map(|(_, entry)| entry.0)).collect()
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(self.wal.read().log_state().vote().map(|v| v.0))
    }
}

impl RaftLogStorage<Herald> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<Herald>> {
        let wal = self.wal.read();
        let state = wal.log_state();
        let last_purged_log_id = state.purged().map(|id| id.0);
        Ok(LogState {
            last_log_id: state.last().map(|id| id.0).or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.mark_used()?;
        self.wal.write().save_vote(Coded(*vote))?;
        self.flush(true).await
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<Herald>) -> io::Result<()>
    where
        I: IntoIterator<Item = RaftEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.mark_used()?;
        let mut wal = self.wal.write();
        wal.append(entries.into_iter().map(|entry| (Coded(entry.log_id()), Coded(entry))))?;
        wal.flush(
            self.durability == Durability::Flush,
            Some(Done::Raft(callback, std::time::Instant::now())),
        )
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        self.wal.write().truncate(from)?;
        self.flush(true).await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // The entries go; what they made of the streams must be on disk first.
        match &self.streams {
            Some(store) => store.flush().await.map_err(other)?,
            None => {
                let db = self.db.clone();
                tokio::task::spawn_blocking(move || db.flush())
                    .await
                    .map_err(other)?
                    .map_err(other)?;
            }
        }
        self.wal.write().purge(Coded(log_id))?;
        self.flush(true).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry as _;
    use openraft::storage::{IOFlushed, RaftLogStorage};
    use openraft::RaftLogReader;

    use super::*;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(
            openraft::type_config::alias::CommittedLeaderIdOf::<Herald> { term, node_id: 1 },
            index,
        )
    }

    fn entry(index: u64) -> RaftEntry {
        entry_of(2, index)
    }

    fn entry_of(term: u64, index: u64) -> RaftEntry {
        RaftEntry::new_normal(log_id(term, index), Command::ExpireIdempotency { now_ms: index as i64 })
    }

    async fn append(log: &mut LogStore, entries: Vec<RaftEntry>) {
        let (tx, rx) = <Herald as openraft::type_config::TypeConfigExt>::oneshot();
        log.append(entries, IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
    }

    async fn indexes(log: &mut LogStore) -> Vec<u64> {
        log.try_get_log_entries(0..u64::MAX)
            .await
            .unwrap()
            .iter()
            .map(|e| e.index())
            .collect()
    }

    fn open(dir: &Path) -> (sled::Db, LogStore) {
        let db = sled::open(dir.join("db")).unwrap();
        let log = LogStore::open(dir, &db, Durability::Flush).unwrap();
        (db, log)
    }

    #[tokio::test]
    async fn entries_the_vote_and_the_purge_point_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let vote = Vote::new(2, 1);
        {
            let (_db, mut log) = open(dir.path());
            assert!(!log.is_used());
            log.save_vote(&vote).await.unwrap();
            append(&mut log, (1..=6).map(entry).collect()).await;
            log.truncate_after(Some(log_id(2, 4))).await.unwrap();
            log.purge(log_id(2, 2)).await.unwrap();
            assert_eq!(indexes(&mut log).await, vec![3, 4]);
        }
        let (_db, mut log) = open(dir.path());
        assert!(log.is_used());
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 2)));
        assert_eq!(state.last_log_id, Some(log_id(2, 4)));
        let entries = log.try_get_log_entries(3..=4).await.unwrap();
        assert_eq!(entries, vec![entry(3), entry(4)]);
        // A range past the end reads what there is.
        assert_eq!(log.try_get_log_entries(4..10).await.unwrap(), vec![entry(4)]);
    }

    #[tokio::test]
    async fn a_purge_beyond_the_last_entry_empties_the_log_and_keeps_its_position() {
        // What installing a snapshot does: the log restarts after the snapshot's last entry.
        let dir = tempfile::tempdir().unwrap();
        {
            let (_db, mut log) = open(dir.path());
            append(&mut log, (1..=3).map(entry).collect()).await;
            log.purge(log_id(3, 10)).await.unwrap();
        }
        let (_db, mut log) = open(dir.path());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(3, 10)));
        assert_eq!(state.last_log_id, Some(log_id(3, 10)));
        assert!(indexes(&mut log).await.is_empty());
        append(&mut log, vec![entry_of(3, 11)]).await;
        assert_eq!(indexes(&mut log).await, vec![11]);
    }

    #[tokio::test]
    async fn a_log_kept_in_the_database_by_an_earlier_version_is_moved_into_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let vote = Vote::new(2, 1);
        {
            // What earlier versions wrote: postcard values, entries keyed by their index.
            let db = sled::open(dir.path().join("db")).unwrap();
            let meta = db.open_tree(META_TREE).unwrap();
            meta.insert(NODE_ID, &42u64.to_be_bytes()).unwrap();
            meta.insert(VOTE, postcard::to_stdvec(&vote).unwrap()).unwrap();
            meta.insert(PURGED, postcard::to_stdvec(&log_id(2, 2)).unwrap())
                .unwrap();
            let legacy = db.open_tree(LEGACY_LOG_TREE).unwrap();
            for index in 3..=5u64 {
                legacy
                    .insert(index.to_be_bytes(), postcard::to_stdvec(&entry(index)).unwrap())
                    .unwrap();
            }
            db.flush().unwrap();
        }
        for _ in 0..2 {
            // Moved once; the second start finds it moved.
            let (db, mut log) = open(dir.path());
            assert_eq!(log.node_id().unwrap(), 42, "the node keeps its id");
            assert!(log.is_used());
            assert_eq!(log.read_vote().await.unwrap(), Some(vote));
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, Some(log_id(2, 2)));
            assert_eq!(state.last_log_id, Some(log_id(2, 5)));
            assert_eq!(indexes(&mut log).await, vec![3, 4, 5]);
            assert!(db.open_tree(LEGACY_LOG_TREE).unwrap().is_empty());
            assert!(db.open_tree(META_TREE).unwrap().get(VOTE).unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn the_replica_id_is_kept_by_both_halves_of_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let (_db, log) = open(dir.path());
            log.node_id().unwrap()
        };
        let (_db, log) = open(dir.path());
        assert_eq!(log.node_id().unwrap(), id);
        assert_eq!(log.wal.read().log_state().user_data, Some(Coded(id)));
    }

    #[tokio::test]
    async fn a_store_whose_raft_log_was_lost_after_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_db, mut log) = open(dir.path());
            log.node_id().unwrap();
            append(&mut log, vec![entry(1)]).await;
        }
        std::fs::remove_dir_all(dir.path().join(DIR)).unwrap();
        let (_db, log) = open(dir.path());
        let error = log.node_id().unwrap_err().to_string();
        assert!(
            error.contains("missing or empty") && error.contains("move the whole store"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_used_raft_log_beside_a_lost_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_db, mut log) = open(dir.path());
            log.node_id().unwrap();
            log.save_vote(&Vote::new(1, 1)).await.unwrap();
        }
        std::fs::remove_dir_all(dir.path().join("db")).unwrap();
        let (_db, log) = open(dir.path());
        let error = log.node_id().unwrap_err().to_string();
        assert!(error.contains("no replica id"), "{error}");
    }

    #[tokio::test]
    async fn a_first_start_cut_short_is_completed() {
        // The id reached the log, not the database, and the log was never used: a crash in
        // the first start. The next start keeps that id.
        let dir = tempfile::tempdir().unwrap();
        {
            let (_db, log) = open(dir.path());
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let mut wal = log.wal.write();
            wal.save_user_data(Some(Coded(77))).unwrap();
            wal.flush(true, Some(Done::Block(tx))).unwrap();
            drop(wal);
            rx.recv().unwrap().unwrap();
        }
        let (_db, log) = open(dir.path());
        assert_eq!(log.node_id().unwrap(), 77);
        let (_db2, log) = {
            drop(log);
            drop(_db);
            open(dir.path())
        };
        assert_eq!(log.node_id().unwrap(), 77);
    }
}
