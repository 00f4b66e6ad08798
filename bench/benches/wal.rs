//! Criterion micro-benchmarks of the WAL hot paths: record encoding, CRC-32 checksums,
//! and append+write+sync through the synchronous core on the simulated disk (no device
//! latency, so it measures the CPU cost per entry).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tally_wal::format::{self, BatchHeader};
use tally_wal::{Entry, SimStorage, WalCore, WalOptions};

fn encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_entry");
    for size in [128usize, 4096] {
        let payload = vec![7u8; size];
        group.throughput(Throughput::Elements(64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            let mut body = Vec::with_capacity(64 * (size + 32));
            b.iter(|| {
                body.clear();
                for index in 0..64u64 {
                    format::encode_entry(&mut body, index, 3, 0, black_box(payload));
                }
                black_box(body.len())
            })
        });
    }
    group.finish();
}

fn checksums(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_crc32");
    for size in [128usize, 4096, 64 * 1024, 1 << 20] {
        let body = vec![0x5Au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| {
                let fields = BatchHeader {
                    body_len: body.len() as u32,
                    record_count: 1,
                    first_index: 1,
                    entry_count: 1,
                };
                black_box(format::encode_batch_header(9, fields, &[black_box(body)]))
            })
        });
    }
    group.finish();
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("core_append_write_sync_sim");
    group.sample_size(20);
    for size in [128usize, 4096] {
        group.throughput(Throughput::Elements(256));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            let options = WalOptions {
                segment_size_bytes: 8 << 20,
                max_entry_size_bytes: 64 * 1024,
                ..WalOptions::default()
            };
            let mut wal = WalCore::open(SimStorage::new(), options).expect("open");
            let payload = Bytes::from(vec![1u8; size]);
            b.iter(|| {
                let first = wal.last_index() + 1;
                let entries: Vec<Entry> = (first..first + 256)
                    .map(|index| Entry {
                        index,
                        term: 1,
                        kind: 0,
                        payload: payload.clone(),
                    })
                    .collect();
                wal.append(&entries).expect("append");
                wal.write().expect("write");
                wal.sync().expect("sync");
                // Keep the simulated disk small.
                wal.compact_prefix(wal.last_index()).expect("compact");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encoding, checksums, append);
criterion_main!(benches);
