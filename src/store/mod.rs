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
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::config::Durability;
use crate::protocol::proto::Publication;

pub use writer::{Appended, Committed, Idempotency};

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

/// One append of [`Store::append_all`]; see [`Store::append`].
#[derive(Debug)]
pub struct Append {
    pub channel: Arc<str>,
    pub publication: Publication,
    pub history: Option<Retention>,
    pub idempotency: Option<Idempotency>,
}

impl Append {
    fn into_op(self, reply: oneshot::Sender<Result<Appended, StoreError>>) -> writer::Op {
        writer::Op::Append {
            channel: self.channel,
            publication: Box::new(self.publication),
            history: self.history,
            idempotency: self.idempotency,
            reply,
        }
    }
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    tree: sled::Tree,
    ops: mpsc::Sender<writer::Op>,
}

/// Called by the writer, in offset order per channel, for every durable append.
pub type CommitHook = Box<dyn Fn(Committed) + Send + 'static>;

impl Store {
    /// Opens (or creates) the store and starts its writer thread.
    pub fn open(
        path: &Path,
        durability: Durability,
        flush_interval: Duration,
        on_commit: CommitHook,
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
        // No seal on an existing database counts as unclean: nothing witnesses how it stopped.
        let unclean = sealed.map_or(existed, |s| !s.clean);
        let renew_epochs = unclean && durability == Durability::Os;
        if renew_epochs {
            tracing::warn!(path = %path.display(), "the last run did not shut down cleanly in os durability: streams start new epochs when next used");
        }
        // From now on the store is in use: a crash leaves the seal unclean.
        seal::write(
            path,
            seal::SealState {
                seq: durable,
                clean: false,
            },
        )
        .map_err(|e| StoreError::Open {
            path: path.to_owned(),
            error: format!("writing {}: {e}", seal::path(path).display()),
        })?;
        let start = writer::Start {
            dir: path.to_owned(),
            seq: durable,
            renew_epochs,
        };
        let ops = writer::spawn(db, tree.clone(), durability, flush_interval, on_commit, start);
        Ok(Self { tree, ops })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> writer::Op,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.ops.send(make(tx)).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends a publication (its offset is assigned here) and returns its position once it is
    /// durable per the configured durability. Without `history` nothing is stored but the
    /// idempotency key; delivery goes through the commit hook either way. A repeated
    /// idempotency key within its window returns the first result and appends nothing.
    pub async fn append(
        &self,
        channel: &str,
        publication: Publication,
        history: Option<Retention>,
        idempotency: Option<Idempotency>,
    ) -> Result<Appended, StoreError> {
        let append = Append {
            channel: channel.into(),
            publication,
            history,
            idempotency,
        };
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
            reply,
        })
        .await
    }

    /// Removes idempotency keys whose window has passed.
    pub async fn expire_idempotency(&self) -> Result<usize, StoreError> {
        self.call(|reply| writer::Op::ExpireIdempotency { reply }).await
    }

    /// Every channel with a stream.
    pub async fn channels(&self) -> Result<Vec<String>, StoreError> {
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

    /// The current position of a stream, starting a new stream (new epoch, offset 0) if there is none.
    pub async fn position(&self, channel: &str) -> Result<Position, StoreError> {
        self.call(|reply| writer::Op::Position {
            channel: channel.into(),
            reply,
        })
        .await
    }

    /// Drops a stream's publications and starts a new epoch.
    pub async fn remove_history(&self, channel: &str) -> Result<Position, StoreError> {
        self.call(|reply| writer::Op::Reset {
            channel: channel.into(),
            reply,
        })
        .await
    }

    /// Flushes, marks the store cleanly shut down, and stops the writer: what follows fails.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.call(|reply| writer::Op::Close { reply }).await
    }

    /// Flushes everything appended so far to disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.call(|reply| writer::Op::Flush { reply }).await
    }

    /// Reads retained publications of a stream, never past `position.offset`. Publications older
    /// than `retention` (by count or age) are not returned.
    pub async fn read(
        &self,
        channel: &str,
        position: &Position,
        range: ReadRange,
        retention: Retention,
    ) -> Result<Vec<Publication>, StoreError> {
        let tree = self.tree.clone();
        let channel = channel.to_owned();
        let top = position.offset;
        tokio::task::spawn_blocking(move || read_range(&tree, &channel, top, range, retention))
            .await
            .map_err(|_| StoreError::Closed)?
    }
}

fn read_range(
    tree: &sled::Tree,
    channel: &str,
    top: u64,
    range: ReadRange,
    retention: Retention,
) -> Result<Vec<Publication>, StoreError> {
    let top = match range.before {
        Some(before) => top.min(before.saturating_sub(1)),
        None => top,
    };
    if range.limit == 0 || top == 0 {
        return Ok(Vec::new());
    }
    // Retained offsets are the newest `size` ones, younger than the ttl.
    let oldest_by_size = top.saturating_sub(retention.size as u64) + 1;
    let first = oldest_by_size.max(range.after.map_or(1, |a| a + 1));
    if first > top {
        return Ok(Vec::new());
    }
    let oldest_time = now_ms() - retention.ttl.as_millis() as i64;
    let scan = tree.range(keys::publication(channel, first)..=keys::publication(channel, top));
    let decode = |item: sled::Result<(sled::IVec, sled::IVec)>| -> Result<Option<Publication>, StoreError> {
        let (key, value) = item?;
        let mut publication = Publication::decode(value.as_ref()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        publication.offset = keys::offset_of(&key).ok_or_else(|| StoreError::Corrupt("short key".into()))?;
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
    Ok(out)
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests;
