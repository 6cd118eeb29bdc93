//! Protocol codec: encoding a publication push and decoding client frames, in both formats.
//! `cargo bench --bench protocol`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::protocol::codec::{decode_commands, encode_reply, Format};
use herald::protocol::proto::{ClientInfo, Command, Publication, PublishRequest, Push, Reply};
use prost::Message;

fn publication_reply(size: usize) -> Reply {
    let payload = format!("{{\"text\":\"{}\"}}", "x".repeat(size));
    Reply {
        push: Some(Push {
            channel: "chat:lobby".into(),
            r#pub: Some(Publication {
                data: Bytes::from(payload),
                offset: 123_456,
                info: Some(ClientInfo {
                    user: "42".into(),
                    client: "c0ffee".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_publication");
    for size in [64, 1024] {
        let reply = publication_reply(size);
        group.throughput(Throughput::Elements(1));
        for format in [Format::Json, Format::Protobuf] {
            group.bench_with_input(BenchmarkId::new(format!("{format:?}"), size), &reply, |b, reply| {
                b.iter(|| encode_reply(format, reply))
            });
        }
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let commands: Vec<Command> = (1..=10)
        .map(|id| Command {
            id,
            publish: Some(PublishRequest {
                channel: "chat:lobby".into(),
                data: Bytes::from_static(b"{\"text\":\"hello\"}"),
            }),
            ..Default::default()
        })
        .collect();
    let json = commands
        .iter()
        .map(|c| serde_json::to_string(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let mut protobuf = Vec::new();
    for command in &commands {
        command.encode_length_delimited(&mut protobuf).unwrap();
    }
    let mut group = c.benchmark_group("decode_frame_of_10_commands");
    group.throughput(Throughput::Elements(10));
    group.bench_function("Json", |b| {
        b.iter(|| decode_commands(Format::Json, json.as_bytes(), 1 << 20).unwrap())
    });
    group.bench_function("Protobuf", |b| {
        b.iter(|| decode_commands(Format::Protobuf, &protobuf, 1 << 20).unwrap())
    });
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
