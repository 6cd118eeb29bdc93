//! The state machine: Herald's streams. Applying a batch of committed entries is one
//! [`Store::apply_group`]: their changes and the log position they bring the store to are
//! written together, so after any crash the store says exactly which entries it holds, and
//! Raft applies the rest again. The same entries give the same streams on every node (the
//! entries carry their time and epochs).
//!
//! Only the leader hands what it applies to the fan-out (local subscribers and interested
//! peers); the others apply quietly, and their subscribers get the leader's deliveries over
//! the links. A node that becomes leader first delivers again what it applied quietly in the
//! last seconds (its predecessor may have died before delivering it); nodes skip positions
//! they already delivered. Should a delivery still be missed, the subscriber sees the gap at
//! the next publication and is told (2500), and its SDK recovers from history.

use std::collections::VecDeque;
use std::io::{self, Cursor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use super::types::{Appended, Command, Herald, LogId, Outcome, SnapshotMeta, StoredMembership};
use crate::protocol::proto::Publication;
use crate::store::{self, Committed, GroupOp, GroupOutcome, Idempotency, Retention, Stamp, Store};

/// The key, in the streams tree, of the last applied log id and membership.
pub const APPLIED: &[u8] = b"r";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    last: Option<LogId>,
    membership: StoredMembership,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// A publication applied while following, kept as it came in the entry: decoded only if this
/// node becomes leader while it is recent.
struct Quiet {
    channel: Arc<str>,
    epoch: Arc<str>,
    offset: u64,
    publication: bytes::Bytes,
}

impl Quiet {
    fn committed(self) -> Option<Committed> {
        let mut publication = Publication::decode(self.publication).ok()?;
        publication.offset = self.offset;
        Some(Committed {
            channel: self.channel,
            epoch: self.epoch,
            publication,
        })
    }
}

/// The last snapshot built or installed: its meta and its bytes.
type Snapshot = (SnapshotMeta, Vec<u8>);

/// Publications applied while following, kept for a while: a node that becomes leader
/// delivers them again, since its predecessor may have died before delivering them (receivers
/// skip what they already have).
const RECENT: usize = 4096;
const RECENT_FOR: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Machine {
    store: Store,
    /// Set while this node leads: only then does its apply deliver.
    leading: Arc<AtomicBool>,
    /// Whether the last apply delivered.
    delivered: Arc<AtomicBool>,
    recent: Arc<parking_lot::Mutex<VecDeque<(Instant, Quiet)>>>,
    current: Arc<parking_lot::Mutex<Option<Snapshot>>>,
    /// The last applied log id and membership, as applied: read from the store once, then
    /// kept here, since the store may still hold the last applies behind (unwritten).
    applied: Arc<parking_lot::Mutex<Option<Applied>>>,
}

impl Machine {
    pub fn new(store: Store, leading: Arc<AtomicBool>) -> Self {
        Self {
            store,
            leading,
            delivered: Arc::new(AtomicBool::new(false)),
            recent: Arc::new(parking_lot::Mutex::new(VecDeque::new())),
            current: Arc::new(parking_lot::Mutex::new(None)),
            applied: Arc::new(parking_lot::Mutex::new(None)),
        }
    }

    fn applied(&self) -> io::Result<Applied> {
        if let Some(applied) = self.applied.lock().clone() {
            return Ok(applied);
        }
        let applied = match self.store.record(APPLIED).map_err(io::Error::other)? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(invalid)?,
            None => Applied::default(),
        };
        *self.applied.lock() = Some(applied.clone());
        Ok(applied)
    }
}

/// The store operations of one command.
fn operations(command: &Command, ops: &mut Vec<GroupOp>) -> Result<(), String> {
    match command {
        Command::Publish(entries) => publish_operations(entries, &[], ops)?,
        Command::PublishVersioned(entries, versions) => publish_operations(entries, versions, ops)?,
        Command::RemoveHistory {
            channel,
            time_ms,
            epoch,
        } => ops.push(GroupOp::Reset {
            channel: Arc::from(channel.as_str()),
            stamp: Stamp {
                time_ms: *time_ms,
                epoch: Arc::from(epoch.as_str()),
            },
        }),
        Command::Trim {
            channel,
            history,
            meta_ttl_ms,
            now_ms,
        } => ops.push(GroupOp::Trim {
            channel: Arc::from(channel.as_str()),
            history: history.map(|(size, ttl)| Retention {
                size,
                ttl: Duration::from_millis(ttl),
            }),
            meta_ttl: Duration::from_millis(*meta_ttl_ms),
            now_ms: *now_ms,
        }),
        Command::ExpireIdempotency { now_ms } => ops.push(GroupOp::ExpireIdempotency { now_ms: *now_ms }),
    }
    Ok(())
}

/// One append per entry; `versions` holds (version, version epoch) per entry, (0, "") or
/// nothing for none.
fn publish_operations(
    entries: &[super::types::Entry],
    versions: &[(u64, String)],
    ops: &mut Vec<GroupOp>,
) -> Result<(), String> {
    let mut versions = versions.iter();
    for entry in entries {
        let version = versions
            .next()
            .filter(|(version, _)| *version > 0)
            .map(|(version, epoch)| store::Version {
                version: *version,
                epoch: epoch.clone(),
            });
        // From shared bytes: the publication's data is a slice of them, not a copy.
        let publication = Publication::decode(entry.publication.clone()).map_err(|e| e.to_string())?;
        ops.push(GroupOp::Append(Box::new(store::Append {
            channel: entry.channel.clone(),
            publication,
            history: entry.history.map(|(size, ttl)| Retention {
                size,
                ttl: Duration::from_millis(ttl),
            }),
            idempotency: entry.idempotency.as_ref().map(|(key, window)| Idempotency {
                key: key.clone(),
                window: Duration::from_millis(*window),
            }),
            version,
            stamp: Stamp {
                time_ms: entry.time_ms,
                epoch: entry.epoch.clone(),
            },
        })));
    }
    Ok(())
}

fn outcome(command: &Command, results: Vec<Result<GroupOutcome, store::StoreError>>) -> Outcome {
    match command {
        Command::Publish(_) | Command::PublishVersioned(..) => Outcome::Published(
            results
                .into_iter()
                .map(|r| match r {
                    Ok(GroupOutcome::Appended(a)) => Ok(Appended {
                        epoch: a.position.epoch.to_string(),
                        offset: a.position.offset,
                        duplicate: a.duplicate,
                    }),
                    Ok(other) => Err(format!("unexpected outcome {other:?}")),
                    Err(e) => Err(e.to_string()),
                })
                .collect(),
        ),
        Command::RemoveHistory { .. } => match results.into_iter().next() {
            Some(Ok(GroupOutcome::Position(p))) => Outcome::Position {
                epoch: p.epoch.to_string(),
                offset: p.offset,
            },
            Some(Err(e)) => Outcome::Failed(e.to_string()),
            _ => Outcome::Failed("no position".into()),
        },
        Command::Trim { .. } | Command::ExpireIdempotency { .. } => Outcome::Count(
            results
                .into_iter()
                .map(|r| match r {
                    Ok(GroupOutcome::Count(n)) => n,
                    _ => 0,
                })
                .sum(),
        ),
    }
}

/// Keeps, for a later leadership, the publications a quiet apply appended (in reverse order of
/// entries, each entry's publications in order reversed too: `quiet` is reversed once at the end).
fn remember(
    entries: Vec<super::types::Entry>,
    results: &[Result<GroupOutcome, store::StoreError>],
    quiet: &mut Vec<Quiet>,
) {
    for (entry, result) in entries.into_iter().zip(results).rev() {
        let Ok(GroupOutcome::Appended(appended)) = result else {
            continue;
        };
        if appended.duplicate || appended.position.offset == 0 {
            continue;
        }
        quiet.push(Quiet {
            channel: entry.channel,
            epoch: appended.position.epoch.clone(),
            offset: appended.position.offset,
            publication: entry.publication,
        });
    }
}

impl RaftSnapshotBuilder<Herald> for Machine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(
        &mut self,
    ) -> io::Result<openraft::type_config::alias::SnapshotOf<Herald, Cursor<Vec<u8>>>> {
        let records = self.store.dump().await.map_err(io::Error::other)?;
        let applied: Applied = match records.iter().find(|(k, _)| k.as_slice() == APPLIED) {
            Some((_, v)) => postcard::from_bytes(v).map_err(invalid)?,
            None => Applied::default(),
        };
        let data = postcard::to_stdvec(&records).map_err(invalid)?;
        let meta = SnapshotMeta {
            last_log_id: applied.last,
            last_membership: applied.membership,
        };
        *self.current.lock() = Some((meta.clone(), data.clone()));
        tracing::info!(bytes = data.len(), records = records.len(), "cluster: snapshot built");
        Ok(openraft::type_config::alias::SnapshotOf::<Herald, _> {
            meta,
            snapshot: Cursor::new(data),
        })
    }
}

impl RaftStateMachine<Herald> for Machine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let applied = self.applied()?;
        Ok((applied.last, applied.membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: futures_util::Stream<Item = io::Result<EntryResponder<Herald>>> + Unpin + OptionalSend,
    {
        let mut applied = self.applied()?;
        let mut ops = Vec::new();
        // Per entry: its command (if any), where its operations start, and who waits.
        let mut spans = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            applied.last = Some(entry.log_id);
            let start = ops.len();
            let command = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    None
                }
                EntryPayload::Normal(command) => {
                    if let Err(e) = operations(&command, &mut ops) {
                        // An entry no node can apply: the same on every node, so it is
                        // skipped everywhere (and its publisher told).
                        tracing::error!(error = %e, "cluster: an undecodable command was skipped");
                        ops.truncate(start);
                        spans.push((None, start, responder, Some(e)));
                        continue;
                    }
                    Some(command)
                }
            };
            spans.push((command, start, responder, None));
        }
        if spans.is_empty() {
            return Ok(());
        }
        let meta = vec![(APPLIED.to_vec(), postcard::to_stdvec(&applied).map_err(invalid)?)];
        // Kept before the store answers: on an error Raft stops using this state machine.
        *self.applied.lock() = Some(applied);
        let deliver = self.leading.load(Ordering::Relaxed);
        if deliver && !self.delivered.swap(true, Ordering::Relaxed) {
            // Just became leader: first deliver what was applied while following.
            let now = Instant::now();
            let recent: Vec<Quiet> = self
                .recent
                .lock()
                .drain(..)
                .filter(|(at, _)| now.duration_since(*at) < RECENT_FOR)
                .map(|(_, q)| q)
                .collect();
            let replay: Vec<Committed> = recent.into_iter().filter_map(Quiet::committed).collect();
            if !replay.is_empty() {
                tracing::info!(
                    publications = replay.len(),
                    "cluster: leading now; delivering again what was applied while following"
                );
                self.store.redeliver(replay).await.map_err(io::Error::other)?;
            }
        } else if !deliver {
            self.delivered.store(false, Ordering::Relaxed);
        }
        let started = Instant::now();
        let mut results = self
            .store
            .apply_group(ops, meta, deliver)
            .await
            .map_err(io::Error::other)?;
        metrics::histogram!("herald_cluster_apply_duration_seconds").record(started.elapsed().as_secs_f64());
        // Answer each entry with its slice of the results, from the last one backwards.
        let mut answers = Vec::with_capacity(spans.len());
        let mut quiet = Vec::new();
        for (mut command, start, responder, failed) in spans.into_iter().rev() {
            let mine = results.split_off(start.min(results.len()));
            if let (false, Some(Command::Publish(entries) | Command::PublishVersioned(entries, _))) =
                (deliver, command.as_mut())
            {
                // The outcome of a publish reads only the results: the entries can go.
                remember(std::mem::take(entries), &mine, &mut quiet);
            }
            let outcome = match (command, failed) {
                (_, Some(e)) => Outcome::Failed(e),
                (Some(command), None) => outcome(&command, mine),
                (None, None) => Outcome::None,
            };
            answers.push((responder, outcome));
        }
        for (responder, outcome) in answers.into_iter().rev() {
            if let Some(responder) = responder {
                responder.send(outcome);
            }
        }
        if !quiet.is_empty() {
            let now = Instant::now();
            let mut recent = self.recent.lock();
            // `quiet` holds the entries from the last one backwards.
            recent.extend(quiet.into_iter().rev().map(|c| (now, c)));
            while recent.len() > RECENT
                || recent
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) >= RECENT_FOR)
            {
                recent.pop_front();
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Self::SnapshotData) -> io::Result<()> {
        let data = snapshot.into_inner();
        let records: Vec<(Vec<u8>, Vec<u8>)> = postcard::from_bytes(&data).map_err(invalid)?;
        let count = records.len();
        self.store.install(records).await.map_err(io::Error::other)?;
        // The snapshot brought its own log position: read it again.
        *self.applied.lock() = None;
        *self.current.lock() = Some((meta.clone(), data));
        tracing::info!(records = count, last = ?meta.last_log_id, "cluster: snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<openraft::type_config::alias::SnapshotOf<Herald, Self::SnapshotData>>> {
        Ok(self
            .current
            .lock()
            .clone()
            .map(|(meta, data)| openraft::type_config::alias::SnapshotOf::<Herald, _> {
                meta,
                snapshot: Cursor::new(data),
            }))
    }
}
