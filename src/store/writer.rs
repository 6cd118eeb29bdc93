//! The single writer: every mutation of the streams tree happens on this thread.
//!
//! It takes all queued operations at once, applies them as one sled batch, flushes (in `flush`
//! durability) and only then answers the callers and reports each append to the commit hook, in
//! the order the offsets were assigned. Offsets are contiguous within an epoch because nothing
//! else assigns them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};

use super::records::StreamMeta;
use super::{keys, now_ms, CommitHook, Position, Retention, StoreError};
use crate::config::Durability;
use crate::protocol::proto::Publication;

/// Most operations folded into one batch; bounds the latency of the first one in it.
const MAX_BATCH: usize = 4096;
/// Operations waiting for the writer; senders wait when it is full (backpressure on publishers).
const QUEUE: usize = 16 * 1024;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) enum Op {
    Append {
        channel: Arc<str>,
        publication: Box<Publication>,
        retention: Retention,
        reply: Reply<Position>,
    },
    Position {
        channel: Arc<str>,
        reply: Reply<Position>,
    },
    Reset {
        channel: Arc<str>,
        reply: Reply<Position>,
    },
    Flush {
        reply: Reply<()>,
    },
}

/// An append that is durable, handed to the commit hook.
#[derive(Debug, Clone)]
pub struct Committed {
    pub channel: Arc<str>,
    pub epoch: Arc<str>,
    /// The publication with its offset set.
    pub publication: Publication,
}

struct Writer {
    db: sled::Db,
    tree: sled::Tree,
    durability: Durability,
    /// Positions of the streams touched so far; the source of truth for offsets.
    streams: HashMap<Arc<str>, StreamMeta>,
    on_commit: CommitHook,
}

pub(super) fn spawn(
    db: sled::Db,
    tree: sled::Tree,
    durability: Durability,
    flush_interval: Duration,
    on_commit: CommitHook,
) -> mpsc::Sender<Op> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let writer = Writer {
        db,
        tree,
        durability,
        streams: HashMap::new(),
        on_commit,
    };
    std::thread::Builder::new()
        .name("herald-store-writer".into())
        .spawn(move || writer.run(rx, flush_interval))
        .expect("spawning the store writer thread");
    tx
}

/// What to tell whom once the batch is applied.
enum Done {
    Append(Reply<Position>, Box<Committed>),
    Position(Reply<Position>, Position),
    Flush(Reply<()>),
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Op>, flush_interval: Duration) {
        let mut ops = Vec::with_capacity(MAX_BATCH);
        let mut dirty_since: Option<Instant> = None;
        loop {
            // In `os` durability, wake up to flush what is pending even when no op arrives.
            let first = match dirty_since {
                Some(since) => {
                    let wait = flush_interval.saturating_sub(since.elapsed());
                    match recv_timeout(&mut rx, wait) {
                        Received::Op(op) => Some(op),
                        Received::Timeout => None,
                        Received::Closed => break,
                    }
                }
                None => match rx.blocking_recv() {
                    Some(op) => Some(op),
                    None => break,
                },
            };
            if let Some(op) = first {
                ops.push(op);
                while ops.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(op) => ops.push(op),
                        Err(_) => break,
                    }
                }
                let wrote = self.apply(&mut ops);
                if wrote && self.durability == Durability::Os && dirty_since.is_none() {
                    dirty_since = Some(Instant::now());
                }
            }
            if dirty_since.is_some_and(|since| since.elapsed() >= flush_interval) {
                if let Err(e) = self.db.flush() {
                    tracing::error!(error = %e, "periodic store flush failed");
                }
                dirty_since = None;
            }
        }
        if let Err(e) = self.db.flush() {
            tracing::error!(error = %e, "final store flush failed");
        }
    }

    /// Applies one batch of operations; returns whether anything was written.
    fn apply(&mut self, ops: &mut Vec<Op>) -> bool {
        let mut batch = sled::Batch::default();
        let mut done = Vec::with_capacity(ops.len());
        let mut wrote = false;
        let mut flush_requested = false;
        let mut failed: Option<StoreError> = None;
        for op in ops.drain(..) {
            match self.stage(op, &mut batch, &mut wrote, &mut flush_requested) {
                Ok(d) => done.push(d),
                Err((e, reply)) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if wrote {
            if let Err(e) = self.tree.apply_batch(batch) {
                failed = Some(e.into());
            }
        }
        if failed.is_none() && (flush_requested || (wrote && self.durability == Durability::Flush)) {
            if let Err(e) = self.db.flush() {
                failed = Some(e.into());
            }
        }
        if let Some(e) = failed {
            // Nothing of this batch is acknowledged; forget the positions it advanced so they are
            // reloaded from disk.
            tracing::error!(error = %e, "store batch failed");
            self.streams.clear();
            for d in done {
                let err = || StoreError::Corrupt(format!("batch failed: {e}"));
                match d {
                    Done::Append(reply, _) | Done::Position(reply, _) => {
                        let _ = reply.send(Err(err()));
                    }
                    Done::Flush(reply) => {
                        let _ = reply.send(Err(err()));
                    }
                }
            }
            return false;
        }
        for d in done {
            match d {
                Done::Append(reply, committed) => {
                    let position = Position {
                        epoch: committed.epoch.clone(),
                        offset: committed.publication.offset,
                    };
                    (self.on_commit)(*committed);
                    let _ = reply.send(Ok(position));
                }
                Done::Position(reply, position) => {
                    let _ = reply.send(Ok(position));
                }
                Done::Flush(reply) => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
        wrote
    }

    #[allow(clippy::result_large_err)]
    fn stage(
        &mut self,
        op: Op,
        batch: &mut sled::Batch,
        wrote: &mut bool,
        flush_requested: &mut bool,
    ) -> Result<Done, (StoreError, Reply<Position>)> {
        match op {
            Op::Append {
                channel,
                mut publication,
                retention,
                reply,
            } => {
                let meta = match self.meta(&channel, batch, wrote) {
                    Ok(m) => m,
                    Err(e) => return Err((e, reply)),
                };
                meta.top_offset += 1;
                meta.updated_at_ms = now_ms();
                let offset = meta.top_offset;
                let epoch: Arc<str> = meta.epoch.as_str().into();
                let meta_bytes = meta.encode_to_vec();
                publication.offset = 0; // the key holds the offset
                if publication.time == 0 {
                    publication.time = now_ms();
                }
                batch.insert(keys::publication(&channel, offset), publication.encode_to_vec());
                batch.insert(keys::meta(&channel), meta_bytes);
                if offset > retention.size as u64 {
                    batch.remove(keys::publication(&channel, offset - retention.size as u64));
                }
                *wrote = true;
                publication.offset = offset;
                Ok(Done::Append(
                    reply,
                    Box::new(Committed {
                        channel,
                        epoch,
                        publication: *publication,
                    }),
                ))
            }
            Op::Position { channel, reply } => match self.meta(&channel, batch, wrote) {
                Ok(meta) => {
                    let position = Position {
                        epoch: meta.epoch.as_str().into(),
                        offset: meta.top_offset,
                    };
                    Ok(Done::Position(reply, position))
                }
                Err(e) => Err((e, reply)),
            },
            Op::Reset { channel, reply } => {
                let prefix = keys::publication_prefix(&channel);
                for item in self.tree.scan_prefix(&prefix).keys() {
                    match item {
                        Ok(key) => batch.remove(key),
                        Err(e) => return Err((e.into(), reply)),
                    }
                }
                let meta = StreamMeta {
                    epoch: new_epoch(),
                    top_offset: 0,
                    updated_at_ms: now_ms(),
                };
                batch.insert(keys::meta(&channel), meta.encode_to_vec());
                let position = Position {
                    epoch: meta.epoch.as_str().into(),
                    offset: 0,
                };
                tracing::info!(channel = %channel, epoch = %meta.epoch, "history removed, new epoch");
                self.streams.insert(channel, meta);
                *wrote = true;
                Ok(Done::Position(reply, position))
            }
            Op::Flush { reply } => {
                *flush_requested = true;
                Ok(Done::Flush(reply))
            }
        }
    }

    /// The position of a stream: cached, else read from disk, else a new stream.
    fn meta(
        &mut self,
        channel: &Arc<str>,
        batch: &mut sled::Batch,
        wrote: &mut bool,
    ) -> Result<&mut StreamMeta, StoreError> {
        if !self.streams.contains_key(channel) {
            let meta = match self.tree.get(keys::meta(channel))? {
                Some(bytes) => StreamMeta::decode(bytes.as_ref())
                    .map_err(|e| StoreError::Corrupt(format!("stream meta of {channel}: {e}")))?,
                None => {
                    let meta = StreamMeta {
                        epoch: new_epoch(),
                        top_offset: 0,
                        updated_at_ms: now_ms(),
                    };
                    batch.insert(keys::meta(channel), meta.encode_to_vec());
                    *wrote = true;
                    meta
                }
            };
            self.streams.insert(channel.clone(), meta);
        }
        Ok(self.streams.get_mut(channel).expect("inserted above"))
    }
}

enum Received {
    Op(Op),
    Timeout,
    Closed,
}

fn recv_timeout(rx: &mut mpsc::Receiver<Op>, wait: Duration) -> Received {
    let deadline = Instant::now() + wait;
    loop {
        match rx.try_recv() {
            Ok(op) => return Received::Op(op),
            Err(mpsc::error::TryRecvError::Disconnected) => return Received::Closed,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if Instant::now() >= deadline {
            return Received::Timeout;
        }
        std::thread::sleep(Duration::from_millis(1).min(deadline - Instant::now()));
    }
}

/// A fresh epoch: 8 random alphanumerics, enough that two incarnations of a stream never share one.
fn new_epoch() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(8)
        .map(char::from)
        .collect()
}
