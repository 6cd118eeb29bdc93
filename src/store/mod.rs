//! Channel streams in sled: the only module that touches the database.
//!
//! A stream is the ordered log of one channel: offsets start at 1 and grow by 1 within an
//! **epoch**, a random string naming one incarnation of the stream. `(epoch, offset)` names exactly
//! one publication.
//!
//! Writes go through one writer thread ([`writer`]) that batches appends from every channel into
//! one sled batch (group commit): offsets are contiguous because the writer is the only
//! appender, and a publish never waits for an fsync of its own. Reads go to sled directly, bounded
//! by the position the writer reports, so they never see a half-applied batch.

pub mod keys;
mod seal;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::config::Durability;
use crate::protocol::proto::Publication;
use records::StreamMeta;

pub use writer::{Appended, CommitGroup, Committed, Idempotency, Version};

/// Messages of `proto/store.proto`.
#[allow(clippy::all, missing_docs)]
pub mod records {
    include!(concat!(env!("OUT_DIR"), "/herald.store.rs"));
}

/// The on-disk format version; a store of another version is refused at startup.
pub const FORMAT_VERSION: u32 = 1;
const VERSION_KEY: &[u8] = b"herald.format_version";
const STREAMS_TREE: &str = "streams";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store at {path}: {error}")]
    Open { path: PathBuf, error: String },
    #[error("store at {path} has format version {found}, this herald reads version {expected}")]
    Version {
        path: PathBuf,
        found: String,
        expected: u32,
    },
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in the store: {0}")]
    Corrupt(String),
    #[error("the store is shut down")]
    Closed,
    #[error("the store could not write to disk ({0}); it refuses to serve until herald restarts")]
    Failed(String),
    #[error(
        "store at {path} lost writes that were already durable: it holds batches up to {durable}, its seal says \
         {sealed}. The data file is damaged (torn or truncated); serving it would reuse stream offsets. Restore \
         it from a backup, or move it away to start empty"
    )]
    Lost { path: PathBuf, durable: u64, sealed: u64 },
}

/// Where a stream stands: its epoch and the offset of its last publication (0 when empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: Arc<str>,
    pub offset: u64,
}

impl Position {
    /// The position of a stream that does not exist: no epoch, offset 0. Its first publication
    /// creates it with a new epoch at offset 1, so a client told this position accepts that
    /// epoch (an empty epoch matches any, as in the reference protocol's recovery).
    pub fn none() -> Self {
        Self {
            epoch: Arc::from(""),
            offset: 0,
        }
    }

    /// Whether this is the position of a stream that does not exist.
    pub fn is_none(&self) -> bool {
        self.epoch.is_empty()
    }
}

/// How much history a channel keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub size: usize,
    pub ttl: Duration,
}

/// A history read.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadRange {
    /// Only publications after this offset.
    pub after: Option<u64>,
    /// Only publications before this offset.
    pub before: Option<u64>,
    /// At most this many publications.
    pub limit: usize,
    /// Newest first.
    pub reverse: bool,
}

/// What the entries that change streams carry besides their content: the time and the epoch a
/// stream gets if the entry starts one. Whoever creates the entry decides both (the broker today,
/// the Raft leader later); the writer's apply only reads them, never this node's clock or RNG,
/// so the same entries applied to two stores give byte-identical streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// Unix milliseconds: a publication's default time, a stream's last use, an idempotency
    /// key's start.
    pub time_ms: i64,
    /// The epoch of a stream this entry starts (a first append, a reset); unused otherwise.
    pub epoch: Arc<str>,
}

impl Stamp {
    /// Now on this node's clock, with a fresh random candidate epoch.
    pub fn now() -> Self {
        Self {
            time_ms: now_ms(),
            epoch: new_epoch().into(),
        }
    }
}

/// A fresh epoch: 8 random alphanumerics, enough that two incarnations of a stream never share one.
pub fn new_epoch() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(8)
        .map(char::from)
        .collect()
}

/// One append entry of [`Store::append_all`]; see [`Store::append`].
#[derive(Debug)]
pub struct Append {
    pub channel: Arc<str>,
    pub publication: Publication,
    pub history: Option<Retention>,
    pub idempotency: Option<Idempotency>,
    /// Appended only when newer than the stream's last version (channels with history).
    pub version: Option<Version>,
    pub stamp: Stamp,
}

impl Append {
    fn into_op(self, reply: oneshot::Sender<Result<Appended, StoreError>>) -> writer::Op {
        writer::Op::Append {
            channel: self.channel,
            publication: Box::new(self.publication),
            history: self.history,
            idempotency: self.idempotency,
            version: self.version,
            stamp: self.stamp,
            reply,
        }
    }
}

/// One operation of [`Store::apply_group`].
#[derive(Debug)]
pub enum GroupOp {
    Append(Box<Append>),
    /// Drops a stream's history; it starts the stamp's epoch.
    Reset {
        channel: Arc<str>,
        stamp: Stamp,
    },
    /// Retention of one stream, judged at `now_ms`.
    Trim {
        channel: Arc<str>,
        history: Option<Retention>,
        meta_ttl: Duration,
        now_ms: i64,
    },
    /// Expiry of idempotency keys, judged at `now_ms`.
    ExpireIdempotency {
        now_ms: i64,
    },
}

/// What one [`GroupOp`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupOutcome {
    Appended(Appended),
    Position(Position),
    Count(usize),
}

enum Answer {
    Appended(oneshot::Receiver<Result<Appended, StoreError>>),
    Position(oneshot::Receiver<Result<Position, StoreError>>),
    Count(oneshot::Receiver<Result<usize, StoreError>>),
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    dir: Arc<Path>,
    db: sled::Db,
    tree: sled::Tree,
    ops: mpsc::Sender<writer::Op>,
    /// Set by the writer when a batch could not be written: reads, which do not go through
    /// the writer, are refused too.
    failed: Arc<AtomicBool>,
    /// Set by the writer while replicated appends are answered but not yet in the tree: reads
    /// of the tree have it write them first ([`Store::settle`]).
    behind: Arc<AtomicBool>,
    #[cfg(test)]
    faults: Arc<writer::Faults>,
}

/// Called by the writer once per batch with the appends it made durable, in offset order per
/// channel (see [`CommitGroup`]). It runs on the writer thread: it must only hand the group on.
pub type CommitHook = Box<dyn FnMut(CommitGroup) + Send + 'static>;

impl Store {
    /// Opens (or creates) the store and starts its writer thread.
    pub fn open(
        path: &Path,
        durability: Durability,
        flush_interval: Duration,
        on_commit: CommitHook,
    ) -> Result<Self, StoreError> {
        Self::open_with(path, durability, flush_interval, on_commit, false)
    }

    /// [`Store::open`] for a store whose streams are a replica of a replicated log
    /// (`replicated`): after an unclean stop its epochs are kept, since the log, not this
    /// store, decides them (the lost tail is applied again from the log).
    pub fn open_with(
        path: &Path,
        durability: Durability,
        flush_interval: Duration,
        on_commit: CommitHook,
        replicated: bool,
    ) -> Result<Self, StoreError> {
        // A directory that already holds a database must come back with its format version;
        // otherwise sled recovered it as empty (a damaged log) and serving it would silently lose
        // every stream.
        let existed = path.join("db").metadata().is_ok_and(|m| m.len() > 0);
        let sealed = seal::read(path).map_err(|error| StoreError::Open {
            path: path.to_owned(),
            error,
        })?;
        // sled may panic on a torn file instead of returning an error: either way the operator
        // gets an error naming the path, never a crash and never a silently empty store.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sled::Config::new().path(path).open()));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(error)) => {
                return Err(StoreError::Open {
                    path: path.to_owned(),
                    error: error.to_string(),
                })
            }
            Err(panic) => {
                let reason = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unreadable store");
                return Err(StoreError::Open {
                    path: path.to_owned(),
                    error: format!("the store is damaged: {reason}"),
                });
            }
        };
        match db.get(VERSION_KEY)? {
            None if existed => {
                return Err(StoreError::Open {
                    path: path.to_owned(),
                    error: "the database exists but its herald format version is missing: the store is damaged \
                            or not a herald store (move it away to start empty)"
                        .into(),
                })
            }
            None => {
                db.insert(VERSION_KEY, FORMAT_VERSION.to_string().as_bytes())?;
                db.flush()?;
            }
            Some(found) if found.as_ref() == FORMAT_VERSION.to_string().as_bytes() => {}
            Some(found) => {
                return Err(StoreError::Version {
                    path: path.to_owned(),
                    found: String::from_utf8_lossy(&found).into_owned(),
                    expected: FORMAT_VERSION,
                })
            }
        }
        let tree = db.open_tree(STREAMS_TREE)?;
        let durable = match tree.get(writer::SEQ_KEY)? {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("batch sequence number".into()))?,
            ),
            None => 0,
        };
        if let Some(seal) = sealed {
            if seal.seq > durable {
                return Err(StoreError::Lost {
                    path: path.to_owned(),
                    durable,
                    sealed: seal.seq,
                });
            }
        }
        if let Some(batch) = sealed.and_then(|s| s.failed) {
            // The last run stopped after telling the callers of this batch that it failed.
            if durable >= batch {
                let undone = writer::undo_batch(&tree, batch)?;
                db.flush()?;
                tracing::warn!(path = %path.display(), batch, undone, "the last run stopped after a failed write that reached the disk: undone");
            } else {
                tracing::warn!(path = %path.display(), batch, "the last run stopped after a failed write; it never reached the disk");
            }
        }
        // No seal on an existing database counts as unclean: nothing witnesses how it stopped.
        let unclean = sealed.map_or(existed, |s| !s.clean);
        let renew_epochs = unclean && durability == Durability::Os && !replicated;
        if renew_epochs {
            tracing::warn!(path = %path.display(), "the last run did not shut down cleanly in os durability: streams start new epochs when next used");
        }
        // From now on the store is in use: a crash leaves the seal unclean.
        seal::write(
            path,
            seal::SealState {
                seq: durable,
                clean: false,
                failed: None,
            },
        )
        .map_err(|e| StoreError::Open {
            path: path.to_owned(),
            error: format!("writing {}: {e}", seal::path(path).display()),
        })?;
        let failed = Arc::new(AtomicBool::new(false));
        let behind = Arc::new(AtomicBool::new(false));
        #[cfg(test)]
        let faults = Arc::new(writer::Faults::default());
        let start = writer::Start {
            dir: path.to_owned(),
            seq: durable,
            renew_epochs,
            failed: failed.clone(),
            behind: behind.clone(),
            #[cfg(test)]
            faults: faults.clone(),
        };
        let ops = writer::spawn(db.clone(), tree.clone(), durability, flush_interval, on_commit, start);
        Ok(Self {
            dir: Arc::from(path),
            db,
            tree,
            ops,
            failed,
            behind,
            #[cfg(test)]
            faults,
        })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> writer::Op,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.ops.send(make(tx)).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends a publication (its offset is assigned here), stamped now on this node (see
    /// [`Store::append_entry`]).
    pub async fn append(
        &self,
        channel: &str,
        publication: Publication,
        history: Option<Retention>,
        idempotency: Option<Idempotency>,
    ) -> Result<Appended, StoreError> {
        self.append_entry(Append {
            channel: channel.into(),
            publication,
            history,
            idempotency,
            version: None,
            stamp: Stamp::now(),
        })
        .await
    }

    /// Appends one entry and returns its position once it is durable per the configured
    /// durability and its commit group has been released by the commit hook's consumer. Without
    /// `history` nothing is stored but the idempotency key; delivery goes through the commit
    /// hook either way. A repeated idempotency key within its window returns the first result
    /// and appends nothing.
    pub async fn append_entry(&self, append: Append) -> Result<Appended, StoreError> {
        self.call(|reply| append.into_op(reply)).await
    }

    /// Appends several publications, queued in order before waiting for any: one group commit
    /// (one flush in `flush` durability) can then serve them all, where appending them one after
    /// the other costs a flush each. Results come in the same order.
    pub async fn append_all(&self, appends: Vec<Append>) -> Vec<Result<Appended, StoreError>> {
        let mut answers = Vec::with_capacity(appends.len());
        for append in appends {
            let (tx, rx) = oneshot::channel();
            let queued = self.ops.send(append.into_op(tx)).await.is_ok();
            answers.push(queued.then_some(rx));
        }
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            let result = match answer {
                Some(rx) => rx.await.unwrap_or(Err(StoreError::Closed)),
                None => Err(StoreError::Closed),
            };
            results.push(result);
        }
        results
    }

    /// Removes what retention no longer keeps from one stream, and forgets the stream entirely
    /// when it has been idle for longer than `meta_ttl`. Returns how many records went.
    pub async fn trim(
        &self,
        channel: &str,
        history: Option<Retention>,
        meta_ttl: Duration,
    ) -> Result<usize, StoreError> {
        self.call(|reply| writer::Op::Trim {
            channel: channel.into(),
            history,
            meta_ttl,
            now_ms: now_ms(),
            reply,
        })
        .await
    }

    /// Removes idempotency keys whose window has passed.
    pub async fn expire_idempotency(&self) -> Result<usize, StoreError> {
        self.call(|reply| writer::Op::ExpireIdempotency {
            now_ms: now_ms(),
            reply,
        })
        .await
    }

    /// Refuses reads once the writer failed: what sled holds is then unknown.
    fn check_serving(&self) -> Result<(), StoreError> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(StoreError::Failed("an earlier write failed".into()));
        }
        Ok(())
    }

    /// Has the writer write what it holds behind, if anything (see `writer::Writer::apply`):
    /// afterwards the tree shows every operation answered so far.
    async fn settle(&self) -> Result<(), StoreError> {
        if self.behind.load(Ordering::Relaxed) {
            self.call(|reply| writer::Op::Settle { reply }).await?;
        }
        Ok(())
    }

    /// Every channel with a stream.
    pub async fn channels(&self) -> Result<Vec<String>, StoreError> {
        self.check_serving()?;
        self.settle().await?;
        let tree = self.tree.clone();
        tokio::task::spawn_blocking(move || {
            tree.scan_prefix([keys::META])
                .keys()
                .map(|k| k.map(|k| keys::channel_of_meta(&k).unwrap_or_default().to_owned()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(StoreError::from)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// The current position of a stream; [`Position::none`] when there is no stream. A read:
    /// nothing is stored for a stream that does not exist. It goes through the writer, so the
    /// position is durable and every append up to it has been handed to the commit hook.
    pub async fn position(&self, channel: &str) -> Result<Position, StoreError> {
        let stamp = Stamp::now();
        self.call(|reply| writer::Op::Position {
            channel: channel.into(),
            stamp,
            reply,
        })
        .await
    }

    /// Drops a stream's publications and starts the stamp's epoch, which must differ from the
    /// current one (offsets restart at 1).
    pub async fn remove_history(&self, channel: &str, stamp: Stamp) -> Result<Position, StoreError> {
        self.call(|reply| writer::Op::Reset {
            channel: channel.into(),
            stamp,
            reply,
        })
        .await
    }

    /// Applies operations together, with extra records, in one batch (see [`GroupOp`]): the
    /// entries of a replicated log and the log position they bring the store to. Appends are
    /// handed to the commit hook only when `deliver` is set. Answers each operation in order.
    pub async fn apply_group(
        &self,
        ops: Vec<GroupOp>,
        meta: Vec<(Vec<u8>, Vec<u8>)>,
        deliver: bool,
    ) -> Result<Vec<Result<GroupOutcome, StoreError>>, StoreError> {
        let mut inner = Vec::with_capacity(ops.len());
        let mut answers = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                GroupOp::Append(append) => {
                    let (tx, rx) = oneshot::channel();
                    inner.push((*append).into_op(tx));
                    answers.push(Answer::Appended(rx));
                }
                GroupOp::Reset { channel, stamp } => {
                    let (reply, rx) = oneshot::channel();
                    inner.push(writer::Op::Reset { channel, stamp, reply });
                    answers.push(Answer::Position(rx));
                }
                GroupOp::Trim {
                    channel,
                    history,
                    meta_ttl,
                    now_ms,
                } => {
                    let (reply, rx) = oneshot::channel();
                    inner.push(writer::Op::Trim {
                        channel,
                        history,
                        meta_ttl,
                        now_ms,
                        reply,
                    });
                    answers.push(Answer::Count(rx));
                }
                GroupOp::ExpireIdempotency { now_ms } => {
                    let (reply, rx) = oneshot::channel();
                    inner.push(writer::Op::ExpireIdempotency { now_ms, reply });
                    answers.push(Answer::Count(rx));
                }
            }
        }
        self.call(|reply| writer::Op::Group {
            ops: inner,
            meta,
            deliver,
            reply,
        })
        .await?;
        let mut outcomes = Vec::with_capacity(answers.len());
        for answer in answers {
            let outcome = match answer {
                Answer::Appended(rx) => rx.await.map(|r| r.map(GroupOutcome::Appended)),
                Answer::Position(rx) => rx.await.map(|r| r.map(GroupOutcome::Position)),
                Answer::Count(rx) => rx.await.map(|r| r.map(GroupOutcome::Count)),
            };
            outcomes.push(outcome.unwrap_or(Err(StoreError::Closed)));
        }
        Ok(outcomes)
    }

    /// A record of the streams tree written by [`Store::apply_group`] (`meta`), as it is now
    /// in the tree: the last groups of appends may still be held behind, unwritten.
    pub fn record(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.check_serving()?;
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    /// Hands publications appended earlier to the commit hook again, in order, after what is
    /// being applied now (a new leader delivering what it applied while following).
    pub async fn redeliver(&self, commits: Vec<Committed>) -> Result<(), StoreError> {
        self.ops
            .send(writer::Op::Redeliver { commits })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Every record of the streams (a replication snapshot), read between two batches.
    pub async fn dump(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.call(|reply| writer::Op::Dump { reply }).await
    }

    /// Replaces every stream with `records` (from [`Store::dump`] on another node), durably.
    pub async fn install(&self, records: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        self.call(|reply| writer::Op::Install { records, reply }).await
    }

    /// The database, for the other trees kept beside the streams (the replicated log's meta).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The store's directory (the replicated log keeps its files in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Flushes, marks the store cleanly shut down, and stops the writer: what follows fails.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.call(|reply| writer::Op::Close { reply }).await
    }

    /// Flushes everything appended so far to disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.call(|reply| writer::Op::Flush { reply }).await
    }

    /// Reads retained publications of a stream at `position` (from [`Store::position`]), never
    /// past its offset. Publications older than `retention` (by count or age) are not returned.
    ///
    /// `None` when the stream left `position.epoch` (history removed, or forgotten and started
    /// again) before the read finished: publication keys carry no epoch, so what was read may
    /// belong to the next epoch. Ask for the position again.
    pub async fn read(
        &self,
        channel: &str,
        position: &Position,
        range: ReadRange,
        retention: Retention,
    ) -> Result<Option<Vec<Publication>>, StoreError> {
        self.check_serving()?;
        self.settle().await?;
        let tree = self.tree.clone();
        let channel = channel.to_owned();
        let position = position.clone();
        tokio::task::spawn_blocking(move || read_range(&tree, &channel, &position, range, retention))
            .await
            .map_err(|_| StoreError::Closed)?
    }
}

fn read_range(
    tree: &sled::Tree,
    channel: &str,
    position: &Position,
    range: ReadRange,
    retention: Retention,
) -> Result<Option<Vec<Publication>>, StoreError> {
    let top = position.offset;
    let top = match range.before {
        Some(before) => top.min(before.saturating_sub(1)),
        None => top,
    };
    if range.limit == 0 || top == 0 {
        return Ok(Some(Vec::new()));
    }
    // Retained offsets are the newest `size` ones, younger than the ttl.
    let oldest_by_size = top.saturating_sub(retention.size as u64) + 1;
    // `after` comes from clients: nothing follows u64::MAX (an unchecked `+ 1` wrapped to the
    // oldest publications, issue 11).
    let Some(first_after) = range.after.map_or(Some(1), |a| a.checked_add(1)) else {
        return Ok(Some(Vec::new()));
    };
    let first = oldest_by_size.max(first_after);
    if first > top {
        return Ok(Some(Vec::new()));
    }
    let oldest_time = oldest_time(now_ms(), retention.ttl);
    let scan = tree.range(keys::publication(channel, first)..=keys::publication(channel, top));
    let decode = |item: sled::Result<(sled::IVec, sled::IVec)>| -> Result<Option<Publication>, StoreError> {
        let (key, value) = item?;
        let mut publication = Publication::decode(value.as_ref()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        publication.offset = keys::offset_of(&key).ok_or_else(|| StoreError::Corrupt("short key".into()))?;
        // The publisher's delta mark is for live delivery only.
        publication.delta = false;
        Ok((publication.time >= oldest_time).then_some(publication))
    };
    let mut out = Vec::new();
    if range.reverse {
        for item in scan.rev() {
            match decode(item)? {
                Some(p) => out.push(p),
                // Older entries are older still: the rest has expired too.
                None => break,
            }
            if out.len() == range.limit {
                break;
            }
        }
    } else {
        for item in scan {
            if let Some(p) = decode(item)? {
                out.push(p);
                if out.len() == range.limit {
                    break;
                }
            }
        }
    }
    // The position came from the writer before the scan. A history removal or a forget since
    // then writes the new stream position in the same atomic batch as (or a batch before) any
    // publication of the next epoch, and sled shows a batch whole: if the scan saw such a
    // publication, the stored position now names another epoch (epochs are never reused).
    let current = match tree.get(keys::meta(channel))? {
        Some(bytes) => StreamMeta::decode(bytes.as_ref()).ok().map(|m| m.epoch),
        None => None,
    };
    Ok((current.as_deref() == Some(&*position.epoch)).then_some(out))
}

/// Unix milliseconds before which a publication is older than `ttl` (a ttl beyond the clock's
/// range keeps everything rather than wrapping into the future).
fn oldest_time(now: i64, ttl: Duration) -> i64 {
    now.saturating_sub(millis(ttl))
}

/// A duration in milliseconds, saturating: durations from the config meet Unix times in
/// arithmetic that must not wrap.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod apply_tests;
#[cfg(test)]
mod tests;
