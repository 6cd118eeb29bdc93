//! The single writer: every mutation of the streams tree happens on this thread.
//!
//! It takes all queued operations at once, applies them as one sled batch, flushes (in `flush`
//! durability) and only then answers the callers and hands the batch's appends to the commit
//! hook as one [`CommitGroup`], in the order the offsets were assigned (the group answers the
//! publishers once its consumer has delivered it). Offsets are contiguous within an epoch because
//! nothing else assigns them; idempotency keys are checked and recorded here for the same reason.
//! The apply is deterministic: time and new epochs come from each entry's [`Stamp`].
//!
//! A replicated log's appends are the exception to "write, then answer": they are durable in
//! the log already, so they are answered at once and written behind, several batches together
//! (see [`Writer::apply`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::records::{IdempotencyRecord, StreamMeta};
use super::{keys, millis, oldest_time, CommitHook, Position, Retention, Stamp, StoreError};
use crate::config::Durability;
use crate::protocol::proto::Publication;

/// Most operations folded into one batch; bounds the latency of the first one in it.
const MAX_BATCH: usize = 4096;
/// Operations waiting for the writer; senders wait when it is full (backpressure on publishers).
const QUEUE: usize = 16 * 1024;
/// How long replicated appends may stay written behind, how many, and how many bytes of
/// publications (see [`Writer::apply`]).
const WRITE_BEHIND: Duration = Duration::from_millis(50);
const MAX_BEHIND: usize = 16 * 1024;
const MAX_BEHIND_BYTES: usize = 16 << 20;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// An idempotency key and how long it holds.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub window: Duration,
}

/// A publication's version (API publish `version`, `version_epoch`): it is appended only when
/// above the stream's last one, or in another version epoch (an empty epoch matches any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub version: u64,
    pub epoch: String,
}

/// The answer to an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub position: Position,
    /// The idempotency key was seen within its window (`position` is the first publish's), or
    /// the version was not newer (`position` is the stream's top): nothing was appended or
    /// delivered.
    pub duplicate: bool,
}

pub(super) enum Op {
    Append {
        channel: Arc<str>,
        publication: Box<Publication>,
        /// `None` for a channel without history: nothing is stored but the idempotency key, and
        /// delivery still goes through the commit hook.
        history: Option<Retention>,
        idempotency: Option<Idempotency>,
        version: Option<Version>,
        stamp: Stamp,
        reply: Reply<Appended>,
    },
    Position {
        channel: Arc<str>,
        /// Starts the stream if there is none.
        stamp: Stamp,
        reply: Reply<Position>,
    },
    Reset {
        channel: Arc<str>,
        stamp: Stamp,
        reply: Reply<Position>,
    },
    Trim {
        channel: Arc<str>,
        history: Option<Retention>,
        meta_ttl: Duration,
        /// The time retention is judged at (Unix ms): the entry's, when replicated.
        now_ms: i64,
        reply: Reply<usize>,
    },
    ExpireIdempotency {
        now_ms: i64,
        reply: Reply<usize>,
    },
    /// Operations applied together in one batch with extra records (`meta`): a replicated
    /// log's entries and the log position they bring the store to, durable together or not at
    /// all. Appends are handed to the commit hook only when `deliver` is set (the node that
    /// delivers them); otherwise they are answered as soon as the batch is applied. A group
    /// does not wait for a flush of its own, and a group of appends is written behind (see
    /// [`Writer::apply`]): the replicated log is the durable record, and after a crash
    /// whatever the store lost is applied again from it (the log flushes the store, through
    /// [`Op::Flush`], before it purges entries).
    Group {
        ops: Vec<Op>,
        meta: Vec<(Vec<u8>, Vec<u8>)>,
        deliver: bool,
        reply: Reply<()>,
    },
    /// Hands publications appended earlier to the commit hook again, in this order, after
    /// the batch's own (a new leader delivering what it applied while following).
    Redeliver {
        commits: Vec<Committed>,
    },
    /// Every record of the streams tree but the writer's own (a replication snapshot), read
    /// between two batches.
    Dump {
        reply: Reply<Vec<(Vec<u8>, Vec<u8>)>>,
    },
    /// Replaces every record of the streams tree with `records` (a replication snapshot), and
    /// makes it durable.
    Install {
        records: Vec<(Vec<u8>, Vec<u8>)>,
        reply: Reply<()>,
    },
    Flush {
        reply: Reply<()>,
    },
    /// Writes what is written behind (see [`Writer::apply`]), without a flush: the tree then
    /// shows every operation answered before.
    Settle {
        reply: Reply<()>,
    },
    /// Flush, seal as cleanly shut down, and stop: later operations fail with `Closed`.
    Close {
        reply: Reply<()>,
    },
}

/// An append that is durable, handed to the commit hook.
#[derive(Debug, Clone)]
pub struct Committed {
    pub channel: Arc<str>,
    /// Empty for channels without history.
    pub epoch: Arc<str>,
    /// The publication with its offset set (0 without history).
    pub publication: Publication,
}

/// The appends that one batch made durable, in the order the writer assigned their offsets
/// (so in offset order within each channel), handed to the commit hook in one piece.
///
/// The group holds its publishers' answers and sends them when it is dropped: whoever consumes
/// the group delivers `commits` first and drops it after, so a publish reply never overtakes the
/// delivery of its own publication, nor of anything committed before it. A consumer that drops
/// the group unread still answers them (the appends are durable either way).
pub struct CommitGroup {
    /// Take them (`std::mem::take`) to deliver them; the answers stay in the group.
    pub commits: Vec<Committed>,
    acks: Vec<(Reply<Appended>, Position)>,
}

impl Drop for CommitGroup {
    fn drop(&mut self) {
        for (reply, position) in self.acks.drain(..) {
            let _ = reply.send(Ok(Appended {
                position,
                duplicate: false,
            }));
        }
    }
}

struct Writer {
    db: sled::Db,
    tree: sled::Tree,
    durability: Durability,
    /// Positions of the streams touched so far; the source of truth for offsets.
    streams: HashMap<Arc<str>, StreamMeta>,
    on_commit: CommitHook,
    /// Directory of the store, where the seal lives.
    dir: std::path::PathBuf,
    /// Sequence number of the last batch applied, and of the last one recorded in the seal.
    seq: u64,
    sealed: u64,
    sealed_at: Instant,
    /// `os` durability after an unclean shutdown: the last run may have acknowledged and
    /// delivered publications that never reached the disk, so every stream starts a new epoch
    /// the first time it is used; otherwise a new publication could take a lost one's offset.
    renew_epochs: bool,
    renewed: HashSet<Arc<str>>,
    /// Set once a batch could not be written: from then on nothing is served (see `fail`).
    /// Shared with the store's readers.
    failed: Arc<AtomicBool>,
    /// Replicated appends answered but not yet written, since when (see [`Writer::apply`]);
    /// `behind` tells the store's readers (shared).
    pending: Option<Staging>,
    behind_since: Option<Instant>,
    behind: Arc<AtomicBool>,
    #[cfg(test)]
    faults: Arc<Faults>,
}

/// Failures a test can inject into the writer.
#[cfg(test)]
#[derive(Default)]
pub(super) struct Faults {
    /// The next flush reports an error after sled has flushed: the worst case, a batch that
    /// reached the disk although its callers are told it failed.
    pub fail_next_flush: AtomicBool,
    /// What is written behind is never too old: only the count and size bounds write it.
    pub ageless: AtomicBool,
}

/// The key, in the streams tree, of the last batch's sequence number (see `seal`).
pub(super) const SEQ_KEY: &[u8] = b"s";
/// The seal is rewritten at most this often; lagging behind sled is harmless.
const SEAL_INTERVAL: Duration = Duration::from_millis(100);

/// How the writer starts.
pub(super) struct Start {
    pub dir: std::path::PathBuf,
    pub seq: u64,
    pub renew_epochs: bool,
    pub failed: Arc<AtomicBool>,
    pub behind: Arc<AtomicBool>,
    #[cfg(test)]
    pub faults: Arc<Faults>,
}

pub(super) fn spawn(
    db: sled::Db,
    tree: sled::Tree,
    durability: Durability,
    flush_interval: Duration,
    on_commit: CommitHook,
    start: Start,
) -> mpsc::Sender<Op> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let writer = Writer {
        db,
        tree,
        durability,
        streams: HashMap::new(),
        on_commit,
        dir: start.dir,
        seq: start.seq,
        sealed: start.seq,
        sealed_at: Instant::now(),
        renew_epochs: start.renew_epochs,
        renewed: HashSet::new(),
        failed: start.failed,
        pending: None,
        behind_since: None,
        behind: start.behind,
        #[cfg(test)]
        faults: start.faults,
    };
    std::thread::Builder::new()
        .name("herald-store-writer".into())
        .spawn(move || writer.run(rx, flush_interval))
        .expect("spawning the store writer thread");
    tx
}

/// What to tell whom once the batch is applied.
enum Done {
    Append(Reply<Appended>, Box<Committed>),
    /// An append of a group that is not delivered from here.
    Quiet(Reply<Appended>, Position),
    Unit(Reply<()>),
    Records(Reply<Vec<(Vec<u8>, Vec<u8>)>>, Vec<(Vec<u8>, Vec<u8>)>),
    Redeliver(Vec<Committed>),
    Duplicate(Reply<Appended>, Position),
    Position(Reply<Position>, Position),
    Count(Reply<usize>, usize),
    Flush(Reply<()>),
}

impl Op {
    /// Whether the operation may join a batch written behind: replicated appends (and
    /// deliveries again of what was applied), which read nothing the batch would hide.
    fn may_wait(&self) -> bool {
        match self {
            Op::Group { ops, .. } => ops.iter().all(|op| matches!(op, Op::Append { .. })),
            Op::Redeliver { .. } => true,
            _ => false,
        }
    }

    /// Answers the operation with `error` without doing it.
    fn refuse(self, error: StoreError) {
        match self {
            Op::Append { reply, .. } => drop(reply.send(Err(error))),
            Op::Position { reply, .. } | Op::Reset { reply, .. } => drop(reply.send(Err(error))),
            Op::Trim { reply, .. } | Op::ExpireIdempotency { reply, .. } => drop(reply.send(Err(error))),
            Op::Flush { reply } | Op::Close { reply } | Op::Settle { reply } => drop(reply.send(Err(error))),
            Op::Group { ops, reply, .. } => {
                for op in ops {
                    op.refuse(StoreError::Failed(error.to_string()));
                }
                drop(reply.send(Err(error)))
            }
            Op::Dump { reply } => drop(reply.send(Err(error))),
            Op::Install { reply, .. } => drop(reply.send(Err(error))),
            Op::Redeliver { .. } => {}
        }
    }
}

impl Done {
    fn fail(self, error: &str) {
        let err = || StoreError::Failed(error.to_owned());
        match self {
            Done::Append(r, _) | Done::Duplicate(r, _) | Done::Quiet(r, _) => drop(r.send(Err(err()))),
            Done::Unit(r) => drop(r.send(Err(err()))),
            Done::Records(r, _) => drop(r.send(Err(err()))),
            Done::Redeliver(_) => {}
            Done::Position(r, _) => drop(r.send(Err(err()))),
            Done::Count(r, _) => drop(r.send(Err(err()))),
            Done::Flush(r) => drop(r.send(Err(err()))),
        }
    }
}

/// The records a batch writes (`None`: removed), applied as one sled batch.
#[derive(Default)]
struct Writes(HashMap<Vec<u8>, Option<Vec<u8>>>);

impl Writes {
    fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.0.insert(key.into(), Some(value.into()));
    }

    fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.0.insert(key.into(), None);
    }

    /// Drops the write of a record that is not in the tree: it was inserted by this batch and
    /// is removed again before the batch is written (a hot stream's publications that leave
    /// its history within one batch never reach the disk).
    fn unwrite(&mut self, key: &[u8]) {
        self.0.remove(key);
    }

    fn into_batch(self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (key, value) in self.0 {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        batch
    }
}

/// State of the batch being built.
#[derive(Default)]
struct Staging {
    batch: Writes,
    /// Per stream, the first offset this batch appended while nothing else of the batch had
    /// touched the stream's publications: records from there on are in the batch only, not in
    /// the tree. `u64::MAX` once the batch removed publications another way (a purge, a trim),
    /// so that no record is taken for fresh.
    fresh: HashMap<Arc<str>, u64>,
    /// Appends staged, and the bytes of their publications (bound what a batch written behind
    /// holds).
    appends: usize,
    bytes: usize,
    /// The batch replaces the streams (a snapshot): no record is fresh.
    installed: bool,
    wrote: bool,
    flush_requested: bool,
    /// Idempotency keys recorded in this batch (not yet visible in the tree).
    idempotency: HashMap<Vec<u8>, Position>,
    /// Streams forgotten in this batch: a later append starts them afresh.
    forgotten: HashSet<Arc<str>>,
    /// Streams appended to in this batch: their position is encoded once, from the cache, when
    /// the batch is written ([`Writer::write_staged`]), not once per append.
    positions: HashSet<Arc<str>>,
    /// What the operations inside groups answer (see `Op::Group`).
    group_done: Vec<Done>,
    /// Every write of this batch comes from groups (no flush of its own needed).
    only_groups: bool,
}

impl Staging {
    /// A new batch for `ops`.
    fn for_ops(ops: &[Op]) -> Self {
        Staging {
            only_groups: ops.iter().any(|op| matches!(op, Op::Group { .. }))
                && !ops.iter().any(|op| {
                    matches!(
                        op,
                        Op::Append { .. }
                            | Op::Reset { .. }
                            | Op::Trim { .. }
                            | Op::ExpireIdempotency { .. }
                            | Op::Install { .. }
                    )
                }),
            ..Default::default()
        }
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Op>, flush_interval: Duration) {
        // A small runtime of the writer's own, only to wait on the queue with a timeout.
        let waiter = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("building the store writer's timer");
        let mut ops = Vec::with_capacity(MAX_BATCH);
        let mut dirty_since: Option<Instant> = None;
        let mut closing: Option<Reply<()>> = None;
        loop {
            // In `os` durability, wake up to flush what is pending even when no op arrives;
            // wake up to write what is behind.
            let wake = [
                dirty_since.map(|since| since + flush_interval),
                self.behind_since.map(|since| since + WRITE_BEHIND),
            ]
            .into_iter()
            .flatten()
            .min();
            let first = match wake {
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    match waiter.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                        Ok(Some(op)) => Some(op),
                        Ok(None) => break,
                        Err(_) => None,
                    }
                }
                None => match rx.blocking_recv() {
                    Some(op) => Some(op),
                    None => break,
                },
            };
            let first = match first {
                Some(Op::Close { reply }) => {
                    closing = Some(reply);
                    None
                }
                other => other,
            };
            if let Some(op) = first {
                ops.push(op);
                while ops.len() < MAX_BATCH {
                    match rx.try_recv() {
                        // A close waits for the next turn, after what was queued before it.
                        Ok(Op::Close { reply }) => {
                            closing = Some(reply);
                            break;
                        }
                        Ok(op) => ops.push(op),
                        Err(_) => break,
                    }
                }
                let wrote = self.apply(&mut ops);
                if wrote && self.durability == Durability::Os && dirty_since.is_none() {
                    dirty_since = Some(Instant::now());
                }
            }
            if let Some(reply) = closing.take() {
                let result = if self.shut_down() {
                    Ok(())
                } else {
                    Err(StoreError::Failed("the final flush failed, or an earlier write".into()))
                };
                let _ = reply.send(result);
                return;
            }
            if self.behind_too_long() {
                let wrote = self.pending.take().map(|pending| self.write_behind(pending));
                if matches!(wrote, Some(Ok(true))) && self.durability == Durability::Os && dirty_since.is_none() {
                    dirty_since = Some(Instant::now());
                }
            }
            if dirty_since.is_some_and(|since| since.elapsed() >= flush_interval) {
                match self.flush() {
                    Ok(()) => self.seal(false, false),
                    // Every batch applied was already answered (`os` durability).
                    Err(e) => self.fail(&e, None),
                }
                dirty_since = None;
            }
        }
        // The queue is closed: every handle is gone.
        self.shut_down();
    }

    /// Flushes and seals the store as cleanly shut down; false if the flush failed or the
    /// store had failed before (its seal then stays unclean, see `fail`).
    fn shut_down(&mut self) -> bool {
        if self.failed.load(Ordering::Relaxed) || !self.catch_up() {
            return false;
        }
        match self.flush() {
            Ok(()) => {
                self.seal(true, true);
                true
            }
            Err(e) => {
                self.fail(&e, None);
                false
            }
        }
    }

    /// Makes every batch applied so far durable.
    fn flush(&self) -> Result<(), StoreError> {
        metrics::counter!("herald_store_flushes_total").increment(1);
        let started = std::time::Instant::now();
        self.db.flush()?;
        metrics::histogram!("herald_store_flush_duration_seconds").record(started.elapsed().as_secs_f64());
        #[cfg(test)]
        if self.faults.fail_next_flush.swap(false, Ordering::Relaxed) {
            return Err(StoreError::Sled(sled::Error::Io(std::io::Error::other(
                "injected flush failure",
            ))));
        }
        Ok(())
    }

    /// Stops serving after a batch could not be written or flushed: what sled holds is then
    /// unknown (the batch may or may not reach the disk; sled itself refuses further work after
    /// an I/O error, and a later successful fsync would not prove the earlier data durable).
    /// Every later operation, read or write, is refused, `/health` answers 503, and the seal
    /// stays unclean. `unanswered` is the batch whose callers were told it failed: the seal
    /// records it, and the next start undoes it if it reached the disk, so a caller's retry
    /// appends it once. In `os` durability the unclean seal also renews every epoch.
    fn fail(&mut self, error: &StoreError, unanswered: Option<u64>) {
        tracing::error!(error = %error, "the store could not write: it refuses to serve until herald restarts");
        metrics::counter!("herald_store_failures_total").increment(1);
        self.failed.store(true, Ordering::Relaxed);
        let state = super::seal::SealState {
            seq: self.sealed,
            clean: false,
            failed: unanswered,
        };
        if let Err(e) = super::seal::write(&self.dir, state) {
            tracing::error!(error = %e, "recording the failed batch in the store seal failed");
        }
    }

    /// Records in the seal that every batch so far is durable (call right after a flush).
    fn seal(&mut self, clean: bool, force: bool) {
        if !force && (self.sealed == self.seq || self.sealed_at.elapsed() < SEAL_INTERVAL) {
            return;
        }
        let state = super::seal::SealState {
            seq: self.seq,
            clean,
            failed: None,
        };
        match super::seal::write(&self.dir, state) {
            Ok(()) => {
                self.sealed = self.seq;
                self.sealed_at = Instant::now();
            }
            Err(e) => tracing::error!(error = %e, "writing the store seal failed"),
        }
    }

    /// Applies one batch of operations; returns whether anything was written.
    ///
    /// A batch of nothing but replicated groups of appends is written behind: it is answered
    /// at once and kept, and the next such batches join it, so that a hot stream's records are
    /// written once per [`WRITE_BEHIND`] rather than once per batch (publications that leave
    /// the history meanwhile are never written at all). This is safe because the replicated
    /// log, not the store, is the durable record of those entries: the store's log position is
    /// written in the same sled batch as their changes, so after a crash the store is at an
    /// earlier position and the log applies the rest again, and the log purges no entry before
    /// [`Op::Flush`], which writes what is behind first. Any other operation writes what is
    /// behind before it is staged, so reads through the writer, and reads of the tree after
    /// [`Op::Settle`], see everything applied.
    fn apply(&mut self, ops: &mut Vec<Op>) -> bool {
        if self.failed.load(Ordering::Relaxed) {
            for op in ops.drain(..) {
                op.refuse(StoreError::Failed("an earlier write failed".into()));
            }
            return false;
        }
        let may_wait = ops.iter().all(Op::may_wait);
        let mut wrote_behind = false;
        let mut staging = match self.pending.take() {
            Some(pending) if may_wait => pending,
            Some(pending) => {
                match self.write_behind(pending) {
                    Ok(wrote) => wrote_behind = wrote,
                    Err(e) => {
                        for op in ops.drain(..) {
                            op.refuse(StoreError::Failed(e.to_string()));
                        }
                        return false;
                    }
                }
                Staging::for_ops(ops)
            }
            None => Staging::for_ops(ops),
        };
        let mut done = Vec::with_capacity(ops.len());
        for op in ops.drain(..) {
            if let Some(d) = self.stage(op, &mut staging) {
                // A group's own answer comes after its operations'.
                done.append(&mut staging.group_done);
                done.push(d);
            }
        }
        if may_wait
            && staging.wrote
            && !self.behind_too_long()
            && staging.appends < MAX_BEHIND
            && staging.bytes < MAX_BEHIND_BYTES
        {
            self.behind_since.get_or_insert_with(Instant::now);
            self.behind.store(true, Ordering::Relaxed);
            self.pending = Some(staging);
            self.answer(done);
            return wrote_behind;
        }
        self.behind_since = None;
        self.behind.store(false, Ordering::Relaxed);
        let wrote = staging.wrote;
        let (flush_requested, only_groups) = (staging.flush_requested, staging.only_groups);
        let mut failed: Option<StoreError> = None;
        if wrote {
            if let Err(e) = self.write_staged(staging) {
                failed = Some(e.into());
            }
        }
        let must_flush = flush_requested || (wrote && self.durability == Durability::Flush && !only_groups);
        if failed.is_none() && must_flush {
            if let Err(e) = self.flush() {
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            // Nothing of this batch is acknowledged, yet it may be in sled's tree and reach the
            // disk: serving on would build on it (a retried publish appended twice, issue 11).
            // Groups are not undone: their log position is in the same batch, so the store
            // holds them all with it or none, and the replicated log applies them again.
            self.fail(&e, (wrote && !only_groups).then_some(self.seq));
            let text = e.to_string();
            done.into_iter().for_each(|d| d.fail(&text));
            return false;
        }
        if must_flush && wrote {
            self.seal(false, false);
        }
        self.answer(done);
        wrote || wrote_behind
    }

    /// Writes the batch kept behind (see [`Writer::apply`]); its operations were answered.
    /// Whether anything was written.
    fn write_behind(&mut self, staging: Staging) -> Result<bool, StoreError> {
        self.behind_since = None;
        self.behind.store(false, Ordering::Relaxed);
        if !staging.wrote {
            return Ok(false);
        }
        match self.write_staged(staging) {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = StoreError::from(e);
                self.fail(&e, None);
                Err(e)
            }
        }
    }

    /// Whether what is written behind has waited its [`WRITE_BEHIND`] (never, in tests that
    /// bound it by count and size only).
    fn behind_too_long(&self) -> bool {
        #[cfg(test)]
        if self.faults.ageless.load(Ordering::Relaxed) {
            return false;
        }
        self.behind_since.is_some_and(|since| since.elapsed() >= WRITE_BEHIND)
    }

    /// Writes a staged batch as the next one in sequence, with the position of every stream it
    /// appended to as the cache holds it now (after all of the batch's operations; a stream no
    /// longer cached was forgotten or replaced by a snapshot later in the batch, which wrote
    /// what it left).
    fn write_staged(&mut self, staging: Staging) -> Result<(), sled::Error> {
        metrics::counter!("herald_store_batches_total").increment(1);
        self.seq += 1;
        let Staging {
            mut batch, positions, ..
        } = staging;
        for channel in positions {
            if let Some(meta) = self.streams.get(&channel) {
                batch.insert(keys::meta(&channel), meta.encode_to_vec());
            }
        }
        batch.insert(SEQ_KEY, self.seq.to_be_bytes());
        self.tree.apply_batch(batch.into_batch())
    }

    /// Writes what is behind, if anything; false if that failed.
    fn catch_up(&mut self) -> bool {
        match self.pending.take() {
            Some(pending) => self.write_behind(pending).is_ok(),
            None => true,
        }
    }

    /// Answers the operations of a batch that was applied (or is kept behind), and hands its
    /// appends to the commit hook.
    fn answer(&mut self, done: Vec<Done>) {
        let mut group = CommitGroup {
            commits: Vec::new(),
            acks: Vec::new(),
        };
        for d in done {
            match d {
                Done::Append(reply, committed) => {
                    let position = Position {
                        epoch: committed.epoch.clone(),
                        offset: committed.publication.offset,
                    };
                    group.commits.push(*committed);
                    group.acks.push((reply, position));
                }
                Done::Duplicate(reply, position) => {
                    metrics::counter!("herald_idempotent_duplicates_total").increment(1);
                    let _ = reply.send(Ok(Appended {
                        position,
                        duplicate: true,
                    }));
                }
                Done::Quiet(reply, position) => {
                    let _ = reply.send(Ok(Appended {
                        position,
                        duplicate: false,
                    }));
                }
                Done::Position(reply, position) => drop(reply.send(Ok(position))),
                Done::Count(reply, n) => drop(reply.send(Ok(n))),
                Done::Flush(reply) | Done::Unit(reply) => drop(reply.send(Ok(()))),
                Done::Records(reply, records) => drop(reply.send(Ok(records))),
                Done::Redeliver(commits) => group.commits.extend(commits),
            }
        }
        // The hook only queues the group (see `broker::fanout`): delivery and the publishers'
        // answers happen off this thread, so fan-out width does not add to group commit.
        if !group.commits.is_empty() {
            (self.on_commit)(group);
        }
    }

    /// Stages one operation; answers it at once (and returns `None`) when it fails.
    fn stage(&mut self, op: Op, s: &mut Staging) -> Option<Done> {
        match op {
            Op::Append {
                channel,
                publication,
                history,
                idempotency,
                version,
                stamp,
                reply,
            } => match self.stage_append(
                super::Append {
                    channel,
                    publication: *publication,
                    history,
                    idempotency,
                    version,
                    stamp,
                },
                s,
            ) {
                Ok(Ok(committed)) => Some(Done::Append(reply, Box::new(committed))),
                Ok(Err(first)) => Some(Done::Duplicate(reply, first)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                    None
                }
            },
            // A read: a stream that does not exist is not created (issue 11: subscribes and
            // history calls to fresh names grew the store and the writer's cache without bound).
            // The stamp serves only when an existing stream must start a new epoch (os
            // durability after a crash, an unreadable position).
            Op::Position { channel, stamp, reply } => match self.existing(&channel, &stamp, s) {
                Ok(meta) => Some(Done::Position(
                    reply,
                    meta.map_or_else(Position::none, |meta| Position {
                        epoch: meta.epoch.as_str().into(),
                        offset: meta.top_offset,
                    }),
                )),
                Err(e) => {
                    let _ = reply.send(Err(e));
                    None
                }
            },
            Op::Reset { channel, stamp, reply } => match self.reset(&channel, &stamp, s) {
                Ok(position) => {
                    tracing::info!(channel = %channel, epoch = %position.epoch, "history removed, new epoch");
                    Some(Done::Position(reply, position))
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                    None
                }
            },
            Op::Trim {
                channel,
                history,
                meta_ttl,
                now_ms,
                reply,
            } => match self.trim(&channel, history, meta_ttl, now_ms, s) {
                Ok(n) => Some(Done::Count(reply, n)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                    None
                }
            },
            Op::ExpireIdempotency { now_ms, reply } => match self.expire_idempotency(now_ms, s) {
                Ok(n) => Some(Done::Count(reply, n)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                    None
                }
            },
            Op::Flush { reply } | Op::Close { reply } => {
                s.flush_requested = true;
                Some(Done::Flush(reply))
            }
            // What is behind was written before this batch was staged.
            Op::Settle { reply } => Some(Done::Unit(reply)),
            Op::Group {
                ops,
                meta,
                deliver,
                reply,
            } => {
                for op in ops {
                    match self.stage(op, s) {
                        Some(Done::Append(reply, committed)) if !deliver => {
                            let position = Position {
                                epoch: committed.epoch.clone(),
                                offset: committed.publication.offset,
                            };
                            s.group_done.push(Done::Quiet(reply, position));
                        }
                        Some(done) => s.group_done.push(done),
                        None => {}
                    }
                }
                for (key, value) in meta {
                    s.batch.insert(key, value);
                }
                s.wrote = true;
                Some(Done::Unit(reply))
            }
            Op::Redeliver { commits } => Some(Done::Redeliver(commits)),
            Op::Dump { reply } => {
                let records = self
                    .tree
                    .iter()
                    .filter(|item| item.as_ref().map_or(true, |(key, _)| key.as_ref() != SEQ_KEY))
                    .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())))
                    .collect::<Result<Vec<_>, _>>();
                match records {
                    Ok(records) => Some(Done::Records(reply, records)),
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                        None
                    }
                }
            }
            Op::Install { records, reply } => match self.install(records, s) {
                Ok(()) => Some(Done::Unit(reply)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                    None
                }
            },
        }
    }

    /// Stages the replacement of every record (but the writer's own) with `records`.
    fn install(&mut self, records: Vec<(Vec<u8>, Vec<u8>)>, s: &mut Staging) -> Result<(), StoreError> {
        let keep: HashSet<&[u8]> = records.iter().map(|(k, _)| k.as_slice()).collect();
        for key in self.tree.iter().keys() {
            let key = key?;
            if key.as_ref() != SEQ_KEY && !keep.contains(key.as_ref()) {
                s.batch.remove(key.to_vec());
            }
        }
        for (key, value) in records {
            s.batch.insert(key, value);
        }
        self.streams.clear();
        self.renewed.clear();
        s.installed = true;
        s.wrote = true;
        s.flush_requested = true;
        Ok(())
    }

    /// `Ok(Ok(_))`: appended; `Ok(Err(position))`: a repeat of an idempotency key (its first
    /// position), or a version not above the stream's (its top).
    ///
    /// Deterministic: the time and a new stream's epoch come from `stamp`, never from this
    /// node's clock or RNG, so the same entries applied to two stores give the same streams.
    fn stage_append(
        &mut self,
        append: super::Append,
        s: &mut Staging,
    ) -> Result<Result<Committed, Position>, StoreError> {
        let super::Append {
            channel,
            mut publication,
            history,
            idempotency,
            version,
            stamp,
        } = append;
        let stamp = &stamp;
        let now = stamp.time_ms;
        let idempotency_key = idempotency.as_ref().map(|i| keys::idempotency(&channel, &i.key));
        if let Some(key) = &idempotency_key {
            if let Some(first) = s.idempotency.get(key) {
                return Ok(Err(first.clone()));
            }
            if let Some(bytes) = self.tree.get(key)? {
                let record = IdempotencyRecord::decode(bytes.as_ref())
                    .map_err(|e| StoreError::Corrupt(format!("idempotency record of {channel}: {e}")))?;
                if record.expires_at_ms > now {
                    return Ok(Err(Position {
                        epoch: record.epoch.into(),
                        offset: record.offset,
                    }));
                }
            }
        }
        if publication.time == 0 {
            publication.time = now;
        }
        let position = match history {
            Some(retention) => {
                let batch = self.seq + 1;
                let meta = self.meta(&channel, stamp, s)?;
                let version = version.filter(|v| v.version > 0);
                if let Some(v) = &version {
                    let same_epoch = v.epoch.is_empty() || v.epoch == meta.version_epoch;
                    if same_epoch && v.version <= meta.version {
                        return Ok(Err(Position {
                            epoch: meta.epoch.as_str().into(),
                            offset: meta.top_offset,
                        }));
                    }
                }
                if meta.batch != batch {
                    // What a restart restores if this batch fails (see `undo_batch`).
                    meta.batch = batch;
                    meta.top_before_batch = meta.top_offset;
                    meta.version_before_batch = meta.version;
                    meta.version_epoch_before_batch.clone_from(&meta.version_epoch);
                }
                if let Some(v) = version {
                    meta.version = v.version;
                    meta.version_epoch = v.epoch;
                }
                let fresh_from = match s.installed {
                    true => u64::MAX,
                    false => *s.fresh.entry(channel.clone()).or_insert(meta.top_offset + 1),
                };
                meta.top_offset += 1;
                meta.updated_at_ms = now;
                let position = Position {
                    epoch: meta.epoch.as_str().into(),
                    offset: meta.top_offset,
                };
                publication.offset = 0; // the key holds the offset
                let encoded = publication.encode_to_vec();
                s.bytes += encoded.len();
                s.batch.insert(keys::publication(&channel, position.offset), encoded);
                if !s.positions.contains(&channel) {
                    s.positions.insert(channel.clone());
                }
                if position.offset > retention.size as u64 {
                    let leaving = position.offset - retention.size as u64;
                    let key = keys::publication(&channel, leaving);
                    if leaving >= fresh_from {
                        s.batch.unwrite(&key);
                    } else {
                        s.batch.remove(key);
                    }
                }
                s.appends += 1;
                s.wrote = true;
                position
            }
            None => Position {
                epoch: Arc::from(""),
                offset: 0,
            },
        };
        if let (Some(key), Some(i)) = (idempotency_key, idempotency) {
            let record = IdempotencyRecord {
                epoch: position.epoch.to_string(),
                offset: position.offset,
                expires_at_ms: now.saturating_add(millis(i.window)),
                batch: self.seq + 1,
            };
            s.batch.insert(key.clone(), record.encode_to_vec());
            s.idempotency.insert(key, position.clone());
            s.wrote = true;
        }
        publication.offset = position.offset;
        Ok(Ok(Committed {
            channel,
            epoch: position.epoch,
            publication,
        }))
    }

    /// Drops every publication of a stream and starts the stamp's epoch at offset 0.
    fn reset(&mut self, channel: &Arc<str>, stamp: &Stamp, s: &mut Staging) -> Result<Position, StoreError> {
        // Offsets restart at 1: under the same epoch they would name two publications.
        let current = match self.streams.get(channel) {
            Some(meta) => Some(meta.epoch.clone()),
            None if s.forgotten.contains(channel) => None,
            None => match self.tree.get(keys::meta(channel))? {
                Some(bytes) => StreamMeta::decode(bytes.as_ref()).ok().map(|m| m.epoch),
                None => None,
            },
        };
        if current.as_deref() == Some(&*stamp.epoch) {
            return Err(StoreError::Corrupt(format!(
                "a reset of {channel} must start a new epoch, got the current one"
            )));
        }
        self.purge_publications(channel, s)?;
        let meta = self.new_stream(channel, stamp, s);
        let position = Position {
            epoch: meta.epoch.as_str().into(),
            offset: 0,
        };
        self.streams.insert(channel.clone(), meta);
        Ok(position)
    }

    /// Stages the removal of every publication of a stream; returns how many.
    fn purge_publications(&self, channel: &Arc<str>, s: &mut Staging) -> Result<usize, StoreError> {
        s.fresh.insert(channel.clone(), u64::MAX);
        let mut removed = 0;
        for key in self.tree.scan_prefix(keys::publication_prefix(channel)).keys() {
            s.batch.remove(key?.to_vec());
            removed += 1;
        }
        s.wrote |= removed > 0;
        Ok(removed)
    }

    /// Removes what retention no longer keeps; forgets a stream idle for longer than `meta_ttl`.
    fn trim(
        &mut self,
        channel: &Arc<str>,
        history: Option<Retention>,
        meta_ttl: Duration,
        now: i64,
        s: &mut Staging,
    ) -> Result<usize, StoreError> {
        let meta = match self.streams.get(channel) {
            Some(m) => m.clone(),
            None => match self.tree.get(keys::meta(channel))? {
                Some(bytes) => match StreamMeta::decode(bytes.as_ref()) {
                    Ok(m) => m,
                    Err(_) => return Ok(0), // left for `meta` to report when the stream is used
                },
                None => return Ok(0),
            },
        };
        let prefix = keys::publication_prefix(channel);
        s.fresh.insert(channel.clone(), u64::MAX);
        let mut removed = 0;
        if now.saturating_sub(meta.updated_at_ms) > millis(meta_ttl) {
            removed += self.purge_publications(channel, s)?;
            s.batch.remove(keys::meta(channel));
            s.wrote = true;
            self.streams.remove(channel);
            s.forgotten.insert(channel.clone());
            tracing::debug!(channel = %channel, "idle stream forgotten (history_meta_ttl)");
            return Ok(removed + 1);
        }
        let (keep_from, oldest_time) = match history {
            Some(r) => (
                meta.top_offset.saturating_sub(r.size as u64) + 1,
                oldest_time(now, r.ttl),
            ),
            None => (u64::MAX, i64::MAX),
        };
        for item in self.tree.scan_prefix(&prefix) {
            let (key, value) = item?;
            let offset = keys::offset_of(&key).unwrap_or(0);
            let expired =
                offset < keep_from || Publication::decode(value.as_ref()).map_or(true, |p| p.time < oldest_time);
            if !expired {
                // Publications are in time order: the rest is younger.
                break;
            }
            s.batch.remove(key.to_vec());
            removed += 1;
        }
        if removed > 0 {
            s.wrote = true;
        }
        Ok(removed)
    }

    fn expire_idempotency(&mut self, now: i64, s: &mut Staging) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.tree.scan_prefix([keys::IDEMPOTENCY]) {
            let (key, value) = item?;
            let expired = IdempotencyRecord::decode(value.as_ref()).map_or(true, |r| r.expires_at_ms <= now);
            if expired && !s.idempotency.contains_key(key.as_ref()) {
                s.batch.remove(key.to_vec());
                removed += 1;
            }
        }
        if removed > 0 {
            s.wrote = true;
        }
        Ok(removed)
    }

    /// The position of a stream: cached, else read from disk, else a new stream (in the
    /// stamp's epoch).
    fn meta(&mut self, channel: &Arc<str>, stamp: &Stamp, s: &mut Staging) -> Result<&mut StreamMeta, StoreError> {
        if self.existing(channel, stamp, s)?.is_none() {
            let meta = self.new_stream(channel, stamp, s);
            self.streams.insert(channel.clone(), meta);
        }
        Ok(self.streams.get_mut(channel).expect("inserted above"))
    }

    /// The position of a stream that exists: cached, else read from disk (and cached). `None`
    /// when there is no stream; nothing is created then. `stamp` gives the new epoch when an
    /// existing stream must be renewed.
    fn existing(
        &mut self,
        channel: &Arc<str>,
        stamp: &Stamp,
        s: &mut Staging,
    ) -> Result<Option<&mut StreamMeta>, StoreError> {
        if !self.streams.contains_key(channel) {
            let stored = if s.forgotten.contains(channel) {
                None
            } else {
                self.tree.get(keys::meta(channel))?
            };
            let Some(bytes) = stored else {
                return Ok(None);
            };
            let meta = match StreamMeta::decode(bytes.as_ref()) {
                Ok(_) if self.renew_epochs && self.renewed.insert(channel.clone()) => {
                    tracing::info!(channel = %channel, "unclean shutdown in os durability: stream starts a new epoch");
                    metrics::counter!("herald_streams_renewed_total").increment(1);
                    self.purge_publications(channel, s)?;
                    self.new_stream(channel, stamp, s)
                }
                Ok(meta) => meta,
                Err(e) => {
                    // The position is unreadable: the stream is lost. Start a new epoch (so no
                    // client mistakes new offsets for old ones) and drop what it held.
                    tracing::error!(channel = %channel, error = %e, "stream position unreadable: stream lost, starting a new epoch");
                    metrics::counter!("herald_streams_lost_total").increment(1);
                    self.purge_publications(channel, s)?;
                    self.new_stream(channel, stamp, s)
                }
            };
            self.streams.insert(channel.clone(), meta);
        }
        Ok(self.streams.get_mut(channel))
    }

    fn new_stream(&self, channel: &Arc<str>, stamp: &Stamp, s: &mut Staging) -> StreamMeta {
        let meta = StreamMeta {
            epoch: stamp.epoch.to_string(),
            updated_at_ms: stamp.time_ms,
            batch: self.seq + 1,
            ..Default::default()
        };
        s.batch.insert(keys::meta(channel), meta.encode_to_vec());
        s.wrote = true;
        s.forgotten.remove(channel);
        meta
    }
}

/// Undoes batch `batch`, whose callers were told it failed, in a store that holds it (at
/// startup, before the writer runs): streams it appended to go back to the offset they had
/// before it, and the idempotency keys it recorded are removed, so a retried publish is
/// appended once. Offsets are reused safely: nothing of that batch was ever served (not
/// answered, not delivered, and reads stop at positions the writer answered). A publication that
/// batch trimmed by count stays removed: a recovery reaching back to it answers
/// `recovered: false`. Returns how many records were undone.
pub(super) fn undo_batch(tree: &sled::Tree, batch: u64) -> Result<usize, StoreError> {
    let mut undo = sled::Batch::default();
    let mut undone = 0;
    for item in tree.scan_prefix([keys::META]) {
        let (key, value) = item?;
        // An unreadable position is left for `existing` to report when the stream is used.
        let Ok(mut meta) = StreamMeta::decode(value.as_ref()) else {
            continue;
        };
        let Some(channel) = keys::channel_of_meta(&key) else {
            continue;
        };
        if meta.batch != batch {
            continue;
        }
        for offset in meta.top_before_batch + 1..=meta.top_offset {
            undo.remove(keys::publication(channel, offset));
        }
        meta.top_offset = meta.top_before_batch;
        meta.version = meta.version_before_batch;
        meta.version_epoch = std::mem::take(&mut meta.version_epoch_before_batch);
        undo.insert(key, meta.encode_to_vec());
        undone += 1;
    }
    for item in tree.scan_prefix([keys::IDEMPOTENCY]) {
        let (key, value) = item?;
        if IdempotencyRecord::decode(value.as_ref()).is_ok_and(|r| r.batch == batch) {
            undo.remove(key);
            undone += 1;
        }
    }
    tree.apply_batch(undo)?;
    Ok(undone)
}
