//! Store append throughput against raw sled on the same machine, in the same run
//! (issue "streams that survive crashes and overload"). `cargo bench --bench store`.
//!
//! - `store_append/flush` and `store_append/os`: `APPENDS` appends with history from `TASKS`
//!   concurrent tasks over `CHANNELS` channels, through the single-writer group commit.
//! - `sled_raw/batch_insert_flush`: the same number of records of the same size, written by one
//!   thread with `apply_batch` in batches of the size the store's writer actually formed in
//!   `store_append/flush` (read from its metrics), each batch followed by `db.flush()`: what group
//!   commit costs at best.
//! - `sled_raw/insert_flush_each`: one insert and one flush per record, what a naive per-publish
//!   fsync costs (fewer records: it is slow).
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) criterion runs each benchmark once.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herald::config::Durability;
use herald::protocol::proto::Publication;
use herald::store::{Retention, Store};
use prost::Message;

const APPENDS: usize = 1000;
const TASKS: usize = 64;
const CHANNELS: usize = 16;
const PAYLOAD: usize = 200;
/// Publications each channel keeps: the store trims as it appends, so its size stays flat.
const HISTORY: usize = 1000;
const FLUSH_EACH_RECORDS: usize = 100;

fn publication() -> Publication {
    Publication {
        data: Bytes::from(vec![b'x'; PAYLOAD]),
        ..Default::default()
    }
}

fn channel(i: usize) -> String {
    format!("bench:{}", i % CHANNELS)
}

/// Appends counted across all iterations, to relate them to the writer's batch counter.
static APPENDED: AtomicU64 = AtomicU64::new(0);

/// `APPENDS` appends from `TASKS` concurrent tasks.
async fn append_burst(store: &Store) {
    let retention = Retention {
        size: HISTORY,
        ttl: Duration::from_secs(3600),
    };
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in (task..APPENDS).step_by(TASKS) {
                    store
                        .append(&channel(i), publication(), Some(retention), None)
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    APPENDED.fetch_add(APPENDS as u64, Ordering::Relaxed);
}

/// The value of an unlabelled counter in the Prometheus text (0 before it is first incremented).
fn counter(metrics: &metrics_exporter_prometheus::PrometheusHandle, name: &str) -> u64 {
    metrics
        .render()
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .unwrap_or(0.0) as u64
}

fn open_store(path: &Path, durability: Durability) -> Store {
    Store::open(path, durability, Duration::from_millis(100), Box::new(|_| {})).expect("opening the store")
}

/// Benchmarks the store in one durability; returns the average number of appends per batch.
fn store_append(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
    durability: Durability,
    name: &str,
) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = runtime.block_on(async { open_store(dir.path(), durability) });
    let (appended, batches) = (
        APPENDED.load(Ordering::Relaxed),
        counter(metrics, "herald_store_batches_total"),
    );
    let mut group = c.benchmark_group("store_append");
    group.throughput(Throughput::Elements(APPENDS as u64));
    group.bench_function(name, |b| b.to_async(runtime).iter(|| append_burst(&store)));
    group.finish();
    let appended = APPENDED.load(Ordering::Relaxed) - appended;
    let batches = counter(metrics, "herald_store_batches_total") - batches;
    let per_batch = appended as f64 / batches.max(1) as f64;
    eprintln!("store_append/{name}: {appended} appends in {batches} batches, {per_batch:.1} appends per batch");
    drop(store);
    per_batch
}

/// Raw sled: `APPENDS` records of the store's record size, in batches of `per_batch`, each
/// batch flushed; and one record per flush.
fn sled_raw(c: &mut Criterion, per_batch: usize) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).open().unwrap();
    let tree = db.open_tree("streams").unwrap();
    let template = publication().encode_to_vec();
    // sled skips an insert of the value a key already holds: every record must differ.
    let value = |i: u64| {
        let mut value = template.clone();
        value[..8].copy_from_slice(&i.to_be_bytes());
        value
    };
    // Keys cycle through the same space as the store's retained offsets, so the tree stays as
    // large as the store's.
    let key = |i: u64| {
        let channel = channel(i as usize);
        let mut key = vec![b'p', channel.len() as u8];
        key.extend_from_slice(channel.as_bytes());
        key.extend_from_slice(&(i / CHANNELS as u64 % HISTORY as u64).to_be_bytes());
        key
    };
    let mut next = 0u64;
    let mut group = c.benchmark_group("sled_raw");
    group.throughput(Throughput::Elements(APPENDS as u64));
    group.bench_function("batch_insert_flush", |b| {
        b.iter(|| {
            let mut written = 0;
            while written < APPENDS {
                let mut batch = sled::Batch::default();
                for _ in 0..per_batch.min(APPENDS - written) {
                    batch.insert(key(next), value(next));
                    next += 1;
                    written += 1;
                }
                tree.apply_batch(batch).unwrap();
                db.flush().unwrap();
            }
        })
    });
    group.throughput(Throughput::Elements(FLUSH_EACH_RECORDS as u64));
    group.bench_function("insert_flush_each", |b| {
        b.iter(|| {
            for _ in 0..FLUSH_EACH_RECORDS {
                tree.insert(key(next), value(next)).unwrap();
                next += 1;
                db.flush().unwrap();
            }
        })
    });
    group.finish();
}

fn store_vs_sled(c: &mut Criterion) {
    let metrics = herald::metrics::install();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let per_batch = store_append(c, &runtime, &metrics, Durability::Flush, "flush");
    store_append(c, &runtime, &metrics, Durability::Os, "os");
    // The baseline writes batches of the size group commit formed under this load.
    let per_batch = (per_batch.round() as usize).clamp(1, APPENDS);
    eprintln!("sled_raw/batch_insert_flush: batches of {per_batch} records");
    sled_raw(c, per_batch);
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = config();
    targets = store_vs_sled
}
criterion_main!(benches);
