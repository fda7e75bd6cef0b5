//! Micro-benchmarks of the delivery path: decoding a client frame, encoding a publication push,
//! and the hub fanning one encoded message out to 1,000 subscriber queues (then each queue
//! coalescing what it holds into a frame). `cargo bench --bench delivery`; under `cargo test`
//! each runs once, as a check that it still works.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use switchboard::hub::Hub;
use switchboard::protocol::{decode_frame, EncodedPush, Publication, Push, PushBody, Reply};
use switchboard::queue::ClientQueue;

fn codec(c: &mut Criterion) {
    let frame = r#"{"id":7,"publish":{"channel":"bench-0","data":{"bs":12345,"bw":0,"bt":987654321,"bp":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}}"#;
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode publish command", |b| {
        b.iter(|| decode_frame(std::hint::black_box(frame)).count())
    });
    let data: Arc<serde_json::value::RawValue> = serde_json::value::RawValue::from_string(
        r#"{"bs":12345,"bw":0,"bt":987654321,"bp":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#
            .to_string(),
    )
    .unwrap()
    .into();
    let publication = Arc::new(Publication {
        offset: 42,
        ..Publication::new(data)
    });
    group.bench_function("encode publication push", |b| {
        b.iter(|| {
            Reply::push(Push {
                channel: "bench-0".to_string(),
                body: PushBody::Publication(publication.clone()),
            })
            .encode()
        })
    });
    group.bench_function("encode publication push (protobuf)", |b| {
        b.iter(|| {
            Reply::push(Push {
                channel: "bench-0".to_string(),
                body: PushBody::Publication(publication.clone()),
            })
            .encode_protobuf()
        })
    });
    group.finish();
}

fn fanout(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 1000;
    // A payload that makes the push about 190 bytes of JSON.
    let publication = Arc::new(Publication::new(
        serde_json::value::RawValue::from_string(format!("\"{}\"", "x".repeat(150)))
            .unwrap()
            .into(),
    ));
    let mut group = c.benchmark_group("hub");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    group.bench_function("deliver to 1000 subscribers and drain", |b| {
        b.iter_batched(
            || {
                let hub = Hub::default();
                let queues: Vec<_> = (0..SUBSCRIBERS)
                    .map(|i| {
                        let q = Arc::new(ClientQueue::new(1 << 20));
                        hub.subscribe("c", i as u64, &q, false, false);
                        hub.activate("c", i as u64, None, 0);
                        q
                    })
                    .collect();
                (hub, queues)
            },
            |(hub, queues)| {
                for offset in 1..=3 {
                    // The path a publication takes (plain JSON subscribers: the push encoded
                    // once, then one handle of the same bytes each).
                    let publication = Arc::new(Publication {
                        offset,
                        ..(*publication).clone()
                    });
                    let message = EncodedPush::new(Push {
                        channel: "c".to_string(),
                        body: PushBody::Publication(publication.clone()),
                    });
                    hub.deliver_publication("c", &publication, &message);
                }
                // What each connection task does on wake-up: take everything as one frame.
                runtime.block_on(async {
                    for q in &queues {
                        std::hint::black_box(q.next().await);
                    }
                });
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, codec, fanout);
criterion_main!(benches);
