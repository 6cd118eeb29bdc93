//! The writer's apply is deterministic: the same entries, applied to two fresh stores in
//! different batches, give byte-identical streams and the same commits (what a follower that
//! applies the leader's log must get).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use super::*;

/// One entry of the sequence both stores apply.
enum Entry {
    Append(Box<Append>),
    Reset(&'static str, Stamp),
}

fn stamp(time_ms: i64, epoch: &str) -> Stamp {
    Stamp {
        time_ms,
        epoch: Arc::from(epoch),
    }
}

fn append(channel: &str, data: &'static str, history: Option<usize>, key: Option<&str>, stamp: Stamp) -> Entry {
    Entry::Append(Box::new(Append {
        channel: Arc::from(channel),
        publication: Publication {
            data: Bytes::from_static(data.as_bytes()),
            ..Default::default()
        },
        history: history.map(|size| Retention {
            size,
            ttl: Duration::from_secs(3600),
        }),
        idempotency: key.map(|key| Idempotency {
            key: key.to_owned(),
            window: Duration::from_secs(60),
        }),
        version: None,
        stamp,
    }))
}

/// Appends to two channels with history (one trimmed by size as it goes), a repeated
/// idempotency key, a key on a channel without history, and a `history_remove` that starts a
/// new epoch, followed by more appends. Stamps are fixed: no clock, no RNG.
fn entries() -> Vec<Entry> {
    let mut out = Vec::new();
    for i in 0..5 {
        out.push(append("a", "a-before", Some(3), None, stamp(1_000 + i, "a-one")));
    }
    out.push(append("b", "b1", Some(10), Some("k1"), stamp(1_010, "b-one")));
    out.push(append("b", "b1 again", Some(10), Some("k1"), stamp(1_011, "b-other")));
    out.push(append("c", "no history", None, Some("k2"), stamp(1_012, "c-one")));
    out.push(Entry::Reset("a", stamp(1_020, "a-two")));
    for i in 0..2 {
        out.push(append("a", "a-after", Some(3), None, stamp(1_030 + i, "a-unused")));
    }
    out.push(append("b", "b2", Some(10), None, stamp(1_040, "b-unused")));
    out
}

fn open_recording(path: &std::path::Path) -> (Store, Arc<Mutex<Vec<Committed>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook_seen = seen.clone();
    let store = Store::open(
        path,
        Durability::Os,
        Duration::from_millis(50),
        Box::new(move |mut group: CommitGroup| hook_seen.lock().append(&mut group.commits)),
    )
    .unwrap();
    (store, seen)
}

/// Every record of the streams tree but the batch counter (which counts batches, and batching
/// is this node's business).
/// Every record of the streams tree, without the node's own durability bookkeeping: the batch
/// counter, and the batch numbers that stream positions and idempotency keys carry so that a
/// restart can undo a failed batch (`writer::undo_batch`). Those count this node's batches, which
/// group commit makes differ between nodes; everything else must be identical.
fn records(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    use prost::Message as _;
    store
        .tree
        .iter()
        .map(|item| item.unwrap())
        .filter(|(key, _)| key.as_ref() != writer::SEQ_KEY)
        .map(|(key, value)| {
            let value = match key.first() {
                Some(&keys::META) => {
                    let mut meta = records::StreamMeta::decode(value.as_ref()).unwrap();
                    (meta.batch, meta.top_before_batch) = (0, 0);
                    meta.encode_to_vec()
                }
                Some(&keys::IDEMPOTENCY) => {
                    let mut record = records::IdempotencyRecord::decode(value.as_ref()).unwrap();
                    record.batch = 0;
                    record.encode_to_vec()
                }
                _ => value.to_vec(),
            };
            (key.to_vec(), value)
        })
        .collect()
}

#[tokio::test]
async fn the_same_entries_give_the_same_streams_whatever_the_batches() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (store_one, commits_one) = open_recording(one.path());
    let (store_two, commits_two) = open_recording(two.path());

    // The first store applies each entry in a batch of its own...
    for entry in entries() {
        match entry {
            Entry::Append(a) => drop(store_one.append_entry(*a).await.unwrap()),
            Entry::Reset(channel, stamp) => drop(store_one.remove_history(channel, stamp).await.unwrap()),
        }
    }
    // ...the second queues the appends between resets together (group commit).
    let mut pending = Vec::new();
    for entry in entries() {
        match entry {
            Entry::Append(a) => pending.push(*a),
            Entry::Reset(channel, stamp) => {
                for result in store_two.append_all(std::mem::take(&mut pending)).await {
                    result.unwrap();
                }
                store_two.remove_history(channel, stamp).await.unwrap();
            }
        }
    }
    for result in store_two.append_all(pending).await {
        result.unwrap();
    }

    // ...and a third applies them as a follower of a replicated log does: one group per
    // entry, not delivered, so the writer keeps them behind and writes them together.
    let (three, _) = (tempfile::tempdir().unwrap(), ());
    let (store_three, _) = open_recording(three.path());
    for (index, entry) in entries().into_iter().enumerate() {
        let op = match entry {
            Entry::Append(a) => GroupOp::Append(a),
            Entry::Reset(channel, stamp) => GroupOp::Reset {
                channel: Arc::from(channel),
                stamp,
            },
        };
        let meta = vec![(b"r".to_vec(), (index as u64).to_be_bytes().to_vec())];
        for result in store_three.apply_group(vec![op], meta, false).await.unwrap() {
            result.unwrap();
        }
    }
    store_three.settle().await.unwrap();

    let records_one = records(&store_one);
    assert!(!records_one.is_empty());
    assert_eq!(records_one, records(&store_two), "the streams differ byte for byte");
    let mut records_three = records(&store_three);
    records_three.retain(|(key, _)| key.as_slice() != b"r");
    assert_eq!(records_one, records_three, "the streams written behind differ");
    let commits = |seen: &Mutex<Vec<Committed>>| -> Vec<(String, String, Publication)> {
        seen.lock()
            .iter()
            .map(|c| (c.channel.to_string(), c.epoch.to_string(), c.publication.clone()))
            .collect()
    };
    assert_eq!(commits(&commits_one), commits(&commits_two));

    // What the stamps decided: the reset's epoch, the entries' times; the repeated key appended
    // nothing, and size 3 kept the last three of the new epoch's offsets.
    let a = store_one.position("a").await.unwrap();
    assert_eq!((&*a.epoch, a.offset), ("a-two", 2));
    let b = store_one.position("b").await.unwrap();
    assert_eq!((&*b.epoch, b.offset), ("b-one", 2));
    let read = store_one
        .read(
            "a",
            &a,
            ReadRange {
                limit: 10,
                ..Default::default()
            },
            Retention {
                size: 3,
                ttl: Duration::from_secs(3600 * 24 * 365 * 100),
            },
        )
        .await
        .unwrap();
    let seen: Vec<(u64, i64)> = read
        .expect("the stream exists")
        .iter()
        .map(|p| (p.offset, p.time))
        .collect();
    assert_eq!(seen, vec![(1, 1_030), (2, 1_031)]);
}

#[tokio::test]
async fn a_reset_refuses_the_current_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_recording(dir.path());
    let Entry::Append(first) = append("a", "x", Some(3), None, stamp(1, "same")) else {
        unreachable!()
    };
    store.append_entry(*first).await.unwrap();
    assert!(store.remove_history("a", stamp(2, "same")).await.is_err());
    assert_eq!(store.position("a").await.unwrap().offset, 1, "nothing was removed");
}

/// A follower's appends: `count` of them to `channel` (history 100), from offset `first`,
/// whose data is their offset.
fn replicated(channel: &str, first: u64, count: u64) -> Vec<GroupOp> {
    (first..first + count)
        .map(|offset| {
            GroupOp::Append(Box::new(Append {
                channel: Arc::from(channel),
                publication: Publication {
                    data: Bytes::from(offset.to_string()),
                    ..Default::default()
                },
                history: Some(Retention {
                    size: 100,
                    ttl: Duration::from_secs(3600),
                }),
                idempotency: None,
                version: None,
                stamp: stamp(offset as i64, "hot-epoch"),
            }))
        })
        .collect()
}

/// The offsets of `channel`'s publications in the tree (as written, not behind).
fn offsets_written(store: &Store, channel: &str) -> Vec<u64> {
    store
        .tree
        .scan_prefix(keys::publication_prefix(channel))
        .keys()
        .map(|key| keys::offset_of(&key.unwrap()).unwrap())
        .collect()
}

/// Replicated appends are written behind: the writer answers them at once and writes several
/// groups together, and the publications of a hot stream that leave its history before that
/// write never reach the tree. Publications written before are still removed, a read sees
/// every append answered, and the log position comes with the streams it describes.
#[tokio::test]
async fn replicated_appends_written_behind_are_read_whole_and_trimmed_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_recording(dir.path());
    let log_position = |n: u64| vec![(b"r".to_vec(), n.to_be_bytes().to_vec())];
    for (n, first) in (1..=150).step_by(50).enumerate() {
        for result in store
            .apply_group(replicated("hot", first, 50), log_position(n as u64), false)
            .await
            .unwrap()
        {
            result.unwrap();
        }
    }
    // A read of the position goes through the writer, which writes first what is behind.
    let position = store.position("hot").await.unwrap();
    assert_eq!(position.offset, 150);
    assert_eq!(offsets_written(&store, "hot"), (51..=150).collect::<Vec<_>>());

    // 200 more: 151..=250 leave the history before they are written.
    for (n, first) in (151..=350).step_by(50).enumerate() {
        for result in store
            .apply_group(replicated("hot", first, 50), log_position(10 + n as u64), false)
            .await
            .unwrap()
        {
            result.unwrap();
        }
    }
    // A read straight after the appends were answered, at the position they reached.
    let top = Position {
        epoch: position.epoch.clone(),
        offset: 350,
    };
    let range = ReadRange {
        limit: 1_000,
        ..Default::default()
    };
    let retention = Retention {
        size: 100,
        ttl: Duration::from_secs(3600 * 24 * 365 * 100),
    };
    let read = store
        .read("hot", &top, range, retention)
        .await
        .unwrap()
        .expect("same epoch");
    let seen: Vec<(u64, String)> = read
        .iter()
        .map(|p| (p.offset, String::from_utf8_lossy(&p.data).into_owned()))
        .collect();
    let expected: Vec<(u64, String)> = (251..=350).map(|o| (o, o.to_string())).collect();
    assert_eq!(seen, expected);
    assert_eq!(offsets_written(&store, "hot"), (251..=350).collect::<Vec<_>>());
    assert_eq!(store.record(b"r").unwrap(), Some(13u64.to_be_bytes().to_vec()));
    assert_eq!(store.position("hot").await.unwrap(), top);
}

/// What is written behind is bounded by size as well as by time: large publications are written
/// once they add up to `MAX_BEHIND_BYTES`, however young.
#[tokio::test]
async fn what_is_written_behind_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_recording(dir.path());
    store.faults.ageless.store(true, std::sync::atomic::Ordering::Relaxed);
    let large = |first: u64| -> Vec<GroupOp> {
        (first..first + 8)
            .map(|offset| {
                GroupOp::Append(Box::new(Append {
                    channel: Arc::from("large"),
                    publication: Publication {
                        data: Bytes::from(vec![b'x'; 64 << 10]),
                        ..Default::default()
                    },
                    history: Some(Retention {
                        size: 1_000,
                        ttl: Duration::from_secs(3600),
                    }),
                    idempotency: None,
                    version: None,
                    stamp: stamp(offset as i64, "large-epoch"),
                }))
            })
            .collect()
    };
    let apply = |ops: Vec<GroupOp>| {
        let store = store.clone();
        async move {
            for result in store.apply_group(ops, Vec::new(), false).await.unwrap() {
                result.unwrap();
            }
        }
    };
    // 10 groups of 8 × 64 KiB: 5 MiB, held.
    for group in 0..10 {
        apply(large(1 + group * 8)).await;
    }
    assert!(offsets_written(&store, "large").is_empty(), "held behind");
    // 30 more: past 16 MiB, written without a read or a flush asking for it.
    for group in 10..40 {
        apply(large(1 + group * 8)).await;
    }
    let written = offsets_written(&store, "large");
    assert!(!written.is_empty(), "written once the bound was passed");
    assert_eq!(written, (1..=written.len() as u64).collect::<Vec<_>>());
    assert_eq!(store.position("large").await.unwrap().offset, 320);
}
