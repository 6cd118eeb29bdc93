use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use super::*;

fn retention(size: usize) -> Retention {
    Retention {
        size,
        ttl: Duration::from_secs(3600),
    }
}

fn publication(data: &'static str) -> Publication {
    Publication {
        data: Bytes::from_static(data.as_bytes()),
        ..Default::default()
    }
}

fn open(path: &Path) -> (Store, Arc<Mutex<Vec<Committed>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook_seen = seen.clone();
    let store = Store::open(
        path,
        Durability::Flush,
        Duration::from_millis(50),
        Box::new(move |mut group: CommitGroup| hook_seen.lock().append(&mut group.commits)),
    )
    .unwrap();
    (store, seen)
}

/// Opening the store at `path` fails with an error that names the path and says `why`.
fn assert_refused(path: &Path, why: &str) {
    let err = Store::open(path, Durability::Flush, Duration::from_millis(50), Box::new(|_| {}))
        .err()
        .expect("the store was opened");
    let text = err.to_string();
    assert!(
        text.contains(why) && text.contains(&path.display().to_string()),
        "{text}"
    );
}
#[tokio::test]
async fn offsets_are_contiguous_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let epoch;
    {
        let (store, seen) = open(dir.path());
        let mut handles = Vec::new();
        for _ in 0..50 {
            let store = store.clone();
            handles.push(tokio::spawn(async move {
                store
                    .append("news", publication("1"), Some(retention(100)), None)
                    .await
                    .unwrap()
                    .position
            }));
        }
        let mut offsets: Vec<u64> = Vec::new();
        for h in handles {
            offsets.push(h.await.unwrap().offset);
        }
        offsets.sort();
        assert_eq!(offsets, (1..=50).collect::<Vec<_>>());
        let hooked: Vec<u64> = seen.lock().iter().map(|c| c.publication.offset).collect();
        assert_eq!(
            hooked,
            (1..=50).collect::<Vec<_>>(),
            "the hook sees appends in offset order"
        );
        epoch = store.position("news").await.unwrap().epoch;
    }
    // sled allows one open handle per path; the writer thread drops it once the channel closes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (store, _) = open(dir.path());
    let position = store.position("news").await.unwrap();
    assert_eq!(position, Position { epoch, offset: 50 });
    let next = store
        .append("news", publication("2"), Some(retention(100)), None)
        .await
        .unwrap()
        .position;
    assert_eq!(next.offset, 51);
}

#[tokio::test]
async fn read_honours_size_limit_after_and_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    for _ in 0..10 {
        store
            .append("c", publication("{}"), Some(retention(4)), None)
            .await
            .unwrap();
    }
    let pos = store.position("c").await.unwrap();
    let offsets = |v: Vec<Publication>| v.iter().map(|p| p.offset).collect::<Vec<_>>();
    let all = store
        .read(
            "c",
            &pos,
            ReadRange {
                limit: 100,
                ..Default::default()
            },
            retention(4),
        )
        .await
        .unwrap()
        .expect("the stream kept its epoch");
    assert_eq!(offsets(all), vec![7, 8, 9, 10]);
    let two = store
        .read(
            "c",
            &pos,
            ReadRange {
                limit: 2,
                ..Default::default()
            },
            retention(4),
        )
        .await
        .unwrap()
        .expect("the stream kept its epoch");
    assert_eq!(offsets(two), vec![7, 8]);
    let after = store
        .read(
            "c",
            &pos,
            ReadRange {
                after: Some(8),
                limit: 100,
                ..Default::default()
            },
            retention(4),
        )
        .await
        .unwrap()
        .expect("the stream kept its epoch");
    assert_eq!(offsets(after), vec![9, 10]);
    let rev = store
        .read(
            "c",
            &pos,
            ReadRange {
                limit: 3,
                reverse: true,
                ..Default::default()
            },
            retention(4),
        )
        .await
        .unwrap()
        .expect("the stream kept its epoch");
    assert_eq!(offsets(rev), vec![10, 9, 8]);
    let before = store
        .read(
            "c",
            &pos,
            ReadRange {
                before: Some(9),
                limit: 100,
                reverse: true,
                ..Default::default()
            },
            retention(4),
        )
        .await
        .unwrap()
        .expect("the stream kept its epoch");
    assert_eq!(offsets(before), vec![8, 7]);
    // Size trimming removed the old keys from disk, not just from reads.
    assert_eq!(store.tree.scan_prefix(keys::publication_prefix("c")).count(), 4);
}

#[tokio::test]
async fn expired_publications_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let mut old = publication("{}");
    old.time = now_ms() - 10_000;
    store.append("c", old, Some(retention(10)), None).await.unwrap();
    store
        .append("c", publication("{}"), Some(retention(10)), None)
        .await
        .unwrap();
    let pos = store.position("c").await.unwrap();
    let short = Retention {
        size: 10,
        ttl: Duration::from_secs(5),
    };
    let got = store
        .read(
            "c",
            &pos,
            ReadRange {
                limit: 10,
                ..Default::default()
            },
            short,
        )
        .await
        .unwrap()
        .expect("the stream kept its epoch");
    assert_eq!(got.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![2]);
}

#[tokio::test]
async fn remove_history_starts_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let first = store
        .append("c", publication("{}"), Some(retention(10)), None)
        .await
        .unwrap()
        .position;
    let reset = store.remove_history("c", Stamp::now()).await.unwrap();
    assert_ne!(reset.epoch, first.epoch);
    assert_eq!(reset.offset, 0);
    let next = store
        .append("c", publication("{}"), Some(retention(10)), None)
        .await
        .unwrap()
        .position;
    assert_eq!(
        next,
        Position {
            epoch: reset.epoch,
            offset: 1
        }
    );
}

#[tokio::test]
async fn unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(VERSION_KEY, b"99".as_slice()).unwrap();
        db.flush().unwrap();
    }
    assert_refused(dir.path(), "99");
}

#[tokio::test]
async fn idempotency_keys_return_the_first_result_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let key = || {
        Some(Idempotency {
            key: "k1".into(),
            window: Duration::from_secs(60),
        })
    };
    {
        let (store, seen) = open(dir.path());
        let first = store
            .append("c", publication("1"), Some(retention(10)), key())
            .await
            .unwrap();
        assert!(!first.duplicate);
        let again = store
            .append("c", publication("2"), Some(retention(10)), key())
            .await
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(again.position, first.position);
        // Two repeats in one batch are caught too.
        let (a, b) = tokio::join!(
            store.append(
                "c",
                publication("3"),
                Some(retention(10)),
                Some(Idempotency {
                    key: "k2".into(),
                    window: Duration::from_secs(60)
                })
            ),
            store.append(
                "c",
                publication("4"),
                Some(retention(10)),
                Some(Idempotency {
                    key: "k2".into(),
                    window: Duration::from_secs(60)
                })
            ),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.position, b.position);
        assert!(a.duplicate != b.duplicate);
        assert_eq!(seen.lock().len(), 2, "repeats are not delivered");
        // The same key on another channel is another key.
        let other = store
            .append("d", publication("5"), Some(retention(10)), key())
            .await
            .unwrap();
        assert!(!other.duplicate);
        // Without history the key is still remembered.
        let plain = store.append("e", publication("6"), None, key()).await.unwrap();
        assert_eq!((plain.duplicate, plain.position.offset), (false, 0));
        assert!(
            store
                .append("e", publication("7"), None, key())
                .await
                .unwrap()
                .duplicate
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (store, _) = open(dir.path());
    let again = store
        .append("c", publication("8"), Some(retention(10)), key())
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.position.offset, 1);
}

/// A publication with a version is appended only when its version is above the stream's last
/// one in the same version epoch (an empty epoch matches any); a dropped one answers the
/// stream's top and is not delivered. The versions survive a reopen.
#[tokio::test]
async fn versions_drop_publications_that_are_not_newer() {
    let dir = tempfile::tempdir().unwrap();
    let versioned = |data: &'static str, version: u64, epoch: &str| Append {
        channel: Arc::from("v"),
        publication: publication(data),
        history: Some(retention(10)),
        idempotency: None,
        version: Some(Version {
            version,
            epoch: epoch.to_owned(),
        }),
        stamp: Stamp::now(),
    };
    {
        let (store, seen) = open(dir.path());
        let mut outcomes = Vec::new();
        for (data, version, epoch) in [
            ("a", 5, "e1"),
            ("b", 5, "e1"), // not newer: dropped
            ("c", 4, ""),   // an empty epoch matches any: dropped
            ("d", 6, ""),   // newer
            ("e", 1, "e2"), // another epoch: the count starts over
            ("f", 1, "e2"), // dropped
            ("g", 2, "e2"), // newer
        ] {
            let appended = store.append_entry(versioned(data, version, epoch)).await.unwrap();
            outcomes.push((appended.duplicate, appended.position.offset));
        }
        assert_eq!(
            outcomes,
            [
                (false, 1),
                (true, 1),
                (true, 1),
                (false, 2),
                (false, 3),
                (true, 3),
                (false, 4)
            ]
        );
        assert_eq!(seen.lock().len(), 4, "dropped publications are not delivered");
        // Without a version nothing is compared.
        let plain = store
            .append("v", publication("h"), Some(retention(10)), None)
            .await
            .unwrap();
        assert_eq!((plain.duplicate, plain.position.offset), (false, 5));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (store, _) = open(dir.path());
    let again = store.append_entry(versioned("i", 2, "e2")).await.unwrap();
    assert_eq!(
        (again.duplicate, again.position.offset),
        (true, 5),
        "the version survives a reopen"
    );
    let newer = store.append_entry(versioned("j", 3, "e2")).await.unwrap();
    assert_eq!((newer.duplicate, newer.position.offset), (false, 6));
}

#[tokio::test]
async fn expired_idempotency_keys_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let short = || {
        Some(Idempotency {
            key: "k".into(),
            window: Duration::from_millis(50),
        })
    };
    store
        .append("c", publication("1"), Some(retention(10)), short())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.expire_idempotency().await.unwrap(), 1);
    let next = store
        .append("c", publication("2"), Some(retention(10)), short())
        .await
        .unwrap();
    assert_eq!((next.duplicate, next.position.offset), (false, 2));
}

#[tokio::test]
async fn trim_by_age_and_forget_idle_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let mut old = publication("{}");
    old.time = now_ms() - 60_000;
    store.append("c", old.clone(), Some(retention(10)), None).await.unwrap();
    store.append("c", old, Some(retention(10)), None).await.unwrap();
    store
        .append("c", publication("{}"), Some(retention(10)), None)
        .await
        .unwrap();
    let short = Retention {
        size: 10,
        ttl: Duration::from_secs(30),
    };
    assert_eq!(
        store.trim("c", Some(short), Duration::from_secs(3600)).await.unwrap(),
        2
    );
    assert_eq!(store.tree.scan_prefix(keys::publication_prefix("c")).count(), 1);
    let epoch = store.position("c").await.unwrap().epoch;
    // Idle longer than the meta ttl: the stream is forgotten and starts over in a new epoch.
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.trim("c", Some(short), Duration::from_millis(1)).await.unwrap();
    assert_eq!(store.channels().await.unwrap(), Vec::<String>::new());
    let fresh = store
        .append("c", publication("{}"), Some(retention(10)), None)
        .await
        .unwrap()
        .position;
    assert_eq!(fresh.offset, 1);
    assert_ne!(fresh.epoch, epoch);
}

#[tokio::test]
async fn an_unreadable_stream_position_starts_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path());
        store
            .append("c", publication("{}"), Some(retention(10)), None)
            .await
            .unwrap();
        store
            .tree
            .insert(keys::meta("c"), &b"\xff\xff\xff garbage"[..])
            .unwrap();
        store.tree.flush().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (store, _) = open(dir.path());
    let position = store
        .append("c", publication("{}"), Some(retention(10)), None)
        .await
        .unwrap()
        .position;
    assert_eq!(position.offset, 1, "the lost stream restarts in a new epoch");
    assert_eq!(
        store.tree.scan_prefix(keys::publication_prefix("c")).count(),
        1,
        "old publications are dropped"
    );
}

#[tokio::test]
async fn a_database_without_a_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"something", b"else".as_slice()).unwrap();
        db.flush().unwrap();
    }
    assert_refused(dir.path(), "format version is missing");
}

#[tokio::test]
async fn os_durability_flushes_in_the_background_and_renews_epochs_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let open_os = |path: &Path| Store::open(path, Durability::Os, Duration::from_millis(20), Box::new(|_| {})).unwrap();
    let epoch = {
        let store = open_os(dir.path());
        let first = store
            .append("c", publication("1"), Some(retention(10)), None)
            .await
            .unwrap()
            .position;
        // Idle longer than the flush interval, then more: the writer keeps serving.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let second = store
            .append("c", publication("2"), Some(retention(10)), None)
            .await
            .unwrap()
            .position;
        assert_eq!((second.offset, &second.epoch), (2, &first.epoch));
        store.close().await.unwrap();
        first.epoch
    };
    // A clean close keeps the epoch.
    tokio::time::sleep(Duration::from_millis(100)).await;
    {
        let store = open_os(dir.path());
        assert_eq!(
            store.position("c").await.unwrap(),
            Position {
                epoch: epoch.clone(),
                offset: 2
            }
        );
        // No close: as after a crash, the seal stays unclean.
        store.flush().await.unwrap();
    }
    // The writer thread's final flush on drop seals it clean; wait for it (a fixed sleep lost
    // the race on a loaded machine), then make it unclean as a crash would.
    for _ in 0..100 {
        if seal::read(dir.path()).unwrap().unwrap().clean {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    seal::write(
        dir.path(),
        seal::SealState {
            seq: seal::read(dir.path()).unwrap().unwrap().seq,
            clean: false,
            failed: None,
        },
    )
    .unwrap();
    let store = open_os(dir.path());
    let renewed = store.position("c").await.unwrap();
    assert_ne!(
        renewed.epoch, epoch,
        "after an unclean stop in os durability the stream starts a new epoch"
    );
    assert_eq!(renewed.offset, 0);
}

#[tokio::test]
async fn a_store_behind_its_seal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path());
        store
            .append("c", publication("1"), Some(retention(10)), None)
            .await
            .unwrap();
        store.close().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sealed = seal::read(dir.path()).unwrap().unwrap();
    assert!(sealed.clean);
    // The seal witnesses more batches than sled holds: sled lost durable writes.
    seal::write(
        dir.path(),
        seal::SealState {
            seq: sealed.seq + 5,
            clean: true,
            failed: None,
        },
    )
    .unwrap();
    assert_refused(dir.path(), "lost writes");
}

#[tokio::test]
async fn the_position_of_a_stream_that_does_not_exist_is_empty_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    for n in 0..100 {
        assert_eq!(store.position(&format!("fresh-{n}")).await.unwrap(), Position::none());
    }
    store.flush().await.unwrap();
    assert_eq!(store.channels().await.unwrap(), Vec::<String>::new());
    assert_eq!(store.tree.scan_prefix([keys::META]).count(), 0);
    // The first append creates the stream, in a new epoch.
    let first = store
        .append("fresh-0", publication("1"), Some(retention(10)), None)
        .await
        .unwrap()
        .position;
    assert!(!first.is_none());
    assert_eq!(first.offset, 1);
    assert_eq!(store.position("fresh-0").await.unwrap(), first);
    assert_eq!(store.channels().await.unwrap(), vec!["fresh-0".to_owned()]);
}

#[tokio::test]
async fn reads_at_offset_extremes_do_not_wrap() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    for _ in 0..3 {
        store
            .append("c", publication("{}"), Some(retention(10)), None)
            .await
            .unwrap();
    }
    let pos = store.position("c").await.unwrap();
    let read = |after: Option<u64>, before: Option<u64>, reverse: bool| {
        let (store, pos) = (store.clone(), pos.clone());
        async move {
            let range = ReadRange {
                after,
                before,
                limit: usize::MAX,
                reverse,
            };
            let read = store
                .read("c", &pos, range, retention(10))
                .await
                .unwrap()
                .expect("the stream kept its epoch");
            read.iter().map(|p| p.offset).collect::<Vec<_>>()
        }
    };
    assert_eq!(read(Some(u64::MAX), None, false).await, Vec::<u64>::new());
    assert_eq!(read(Some(u64::MAX), None, true).await, Vec::<u64>::new());
    assert_eq!(read(None, Some(u64::MAX), true).await, vec![3, 2, 1]);
    assert_eq!(read(None, Some(0), true).await, Vec::<u64>::new());
    assert_eq!(read(None, Some(1), false).await, Vec::<u64>::new());
    assert_eq!(read(Some(0), Some(u64::MAX), false).await, vec![1, 2, 3]);
}

#[tokio::test]
async fn a_read_does_not_label_the_next_epochs_publications_with_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path());
    let all = ReadRange {
        limit: 100,
        ..Default::default()
    };
    for _ in 0..3 {
        store
            .append("c", publication("old"), Some(retention(10)), None)
            .await
            .unwrap();
    }
    // History and recovery take the position, then read: between the two steps, the history
    // is removed and the next epoch gets publications under the same offsets.
    let old = store.position("c").await.unwrap();
    store.remove_history("c", Stamp::now()).await.unwrap();
    for _ in 0..3 {
        store
            .append("c", publication("new"), Some(retention(10)), None)
            .await
            .unwrap();
    }
    assert_eq!(store.read("c", &old, all, retention(10)).await.unwrap(), None);
    let new = store.position("c").await.unwrap();
    let read = store.read("c", &new, all, retention(10)).await.unwrap().unwrap();
    assert!(read.iter().all(|p| p.data == "new"), "{read:?}");
    // The same when the stream is forgotten (history_meta_ttl) and starts again.
    tokio::time::sleep(Duration::from_millis(20)).await;
    store
        .trim("c", Some(retention(10)), Duration::from_millis(1))
        .await
        .unwrap();
    store
        .append("c", publication("newer"), Some(retention(10)), None)
        .await
        .unwrap();
    assert_eq!(store.read("c", &new, all, retention(10)).await.unwrap(), None);
    // Forgotten and not started again: nothing to read under the old epoch either.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let newer = store.position("c").await.unwrap();
    store
        .trim("c", Some(retention(10)), Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(store.read("c", &newer, all, retention(10)).await.unwrap(), None);
}

#[tokio::test]
async fn after_a_failed_flush_the_store_refuses_to_serve_and_a_restart_undoes_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let history = |store: &Store| {
        let store = store.clone();
        async move {
            let position = store.position("c").await.unwrap();
            let range = ReadRange {
                limit: 100,
                ..Default::default()
            };
            let read = store.read("c", &position, range, retention(10)).await.unwrap().unwrap();
            let data: Vec<String> = read
                .iter()
                .map(|p| String::from_utf8_lossy(&p.data).into_owned())
                .collect();
            (position, data)
        }
    };
    let key = || {
        Some(Idempotency {
            key: "k".into(),
            window: Duration::from_secs(60),
        })
    };
    let epoch;
    {
        let (store, seen) = open(dir.path());
        store
            .append("c", publication("1"), Some(retention(10)), None)
            .await
            .unwrap();
        // The batch of "2" reaches sled (and the disk), but its flush reports an error.
        store.faults.fail_next_flush.store(true, Ordering::Relaxed);
        let failed = store.append("c", publication("2"), Some(retention(10)), None).await;
        assert!(matches!(failed, Err(StoreError::Failed(_))), "{failed:?}");
        // The publisher retries: refused, as is everything else until the state is known.
        let retry = store.append("c", publication("2"), Some(retention(10)), None).await;
        assert!(matches!(retry, Err(StoreError::Failed(_))), "{retry:?}");
        assert!(store.position("c").await.is_err());
        let position = Position::none();
        assert!(store
            .read("c", &position, ReadRange::default(), retention(10))
            .await
            .is_err());
        assert!(store.channels().await.is_err());
        assert!(store.flush().await.is_err(), "/health answers 503");
        assert!(store.remove_history("c", Stamp::now()).await.is_err());
        assert!(store.close().await.is_err(), "not sealed clean");
        assert_eq!(seen.lock().len(), 1, "the failed publication was not delivered");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sealed = seal::read(dir.path()).unwrap().unwrap();
    assert!(!sealed.clean && sealed.failed.is_some(), "{sealed:?}");
    {
        // The restart undoes the failed batch: the retry appends "2" once, at the offset the
        // failed attempt would have had (nobody saw it).
        let (store, _) = open(dir.path());
        assert_eq!(seal::read(dir.path()).unwrap().unwrap().failed, None);
        let (position, data) = history(&store).await;
        assert_eq!((position.offset, data), (1, vec!["1".to_owned()]));
        epoch = position.epoch;
        let retry = store
            .append("c", publication("2"), Some(retention(10)), None)
            .await
            .unwrap();
        assert_eq!(
            retry.position,
            Position {
                epoch: epoch.clone(),
                offset: 2
            }
        );
        assert_eq!(history(&store).await.1, vec!["1", "2"]);
        // A failed publish with an idempotency key: its key is undone with it, so the retry
        // publishes instead of answering with a publication that no longer exists.
        store.faults.fail_next_flush.store(true, Ordering::Relaxed);
        assert!(store
            .append("c", publication("3"), Some(retention(10)), key())
            .await
            .is_err());
        assert!(store.close().await.is_err());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (store, seen) = open(dir.path());
    let retry = store
        .append("c", publication("3"), Some(retention(10)), key())
        .await
        .unwrap();
    assert!(!retry.duplicate);
    assert_eq!(retry.position, Position { epoch, offset: 3 });
    assert_eq!(seen.lock().len(), 1, "delivered once");
    assert_eq!(history(&store).await.1, vec!["1", "2", "3"]);
    let again = store
        .append("c", publication("3"), Some(retention(10)), key())
        .await
        .unwrap();
    assert!(again.duplicate);
    // A failed publish with a version: the stream's version is undone with it, so the retry
    // with the same version publishes instead of being dropped as not newer.
    let versioned = |data: &'static str| Append {
        channel: Arc::from("c"),
        publication: publication(data),
        history: Some(retention(10)),
        idempotency: None,
        version: Some(Version {
            version: 7,
            epoch: "v".into(),
        }),
        stamp: Stamp::now(),
    };
    store.faults.fail_next_flush.store(true, Ordering::Relaxed);
    assert!(store.append_entry(versioned("4")).await.is_err());
    assert!(store.close().await.is_err());
    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (store, _) = open(dir.path());
    let retry = store.append_entry(versioned("4")).await.unwrap();
    assert_eq!((retry.duplicate, retry.position.offset), (false, 4));
    assert!(store.append_entry(versioned("4")).await.unwrap().duplicate);
}
