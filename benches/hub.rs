//! Hub fan-out: one publication handed to N local sessions (encoded once per format, queued on
//! each). `cargo bench --bench hub`.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::hub::{Hub, Prepared};
use herald::protocol::codec::Format;
use herald::protocol::proto::{ClientInfo, Publication};
use herald::session::SessionShared;

fn fan_out(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("hub_fan_out");
    for sessions in [100usize, 1000, 10_000] {
        let hub = Hub::default();
        let mut shared = Vec::with_capacity(sessions);
        for i in 0..sessions {
            // Half the sessions in each format, as mixed clients would be.
            let format = if i % 2 == 0 { Format::Json } else { Format::Protobuf };
            let session = SessionShared::new(format, usize::MAX / 2);
            let subscriber = session.subscribe_detached("room");
            hub.subscribe("room", subscriber, ClientInfo::default(), |_| {});
            shared.push(session);
        }
        group.throughput(Throughput::Elements(sessions as u64));
        group.bench_with_input(BenchmarkId::from_parameter(sessions), &sessions, |b, _| {
            b.iter(|| {
                let publication = Publication {
                    data: Bytes::from_static(b"{\"text\":\"hello\"}"),
                    ..Default::default()
                };
                let push = Prepared::publication("room", Arc::from(""), publication);
                hub.broadcast("room", &push);
            });
            // Empty the queues so memory stays flat between samples.
            runtime.block_on(async {
                for session in &shared {
                    session.queue().drain().await;
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
