//! Criterion benchmarks of the KV snapshot writer and restore (issue 15): a store of
//! 100,000 keys of 100-byte values (as `redis-benchmark -t set -d 100 -r 100000` leaves
//! it) with 1,000 client sessions, frozen and written through the `SnapshotWriter` the
//! runtime's snapshot thread uses, and restored from that file's bytes and through the
//! `SnapshotReader` a restarting node uses. The writer's part stops before `finish`
//! (fsync, rename): that is the disk's time, not the snapshot thread's CPU.

use std::hint::black_box;
use std::io::Write as _;

use bytes::Bytes;
mod common;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tally_engine::kv::{encode_request, ClientSession, Command, KvLimits, KvStateMachine};
use tally_engine::state_machine::StateMachine;
use tally_wal::{FsStorage, SnapshotHeader, SnapshotStore};

const KEYS: u64 = 100_000;
const VALUE_BYTES: usize = 100;
const SESSIONS: u64 = 1_000;

/// `KEYS` keys named as redis-benchmark names them, each set once by one of `SESSIONS`
/// clients in turn.
fn store() -> KvStateMachine {
    let limits = KvLimits::default();
    let mut sm = KvStateMachine::new(limits);
    let value = vec![b'x'; VALUE_BYTES];
    let payloads: Vec<Vec<u8>> = (0..KEYS)
        .map(|i| {
            let key = format!("key:{i:012}");
            let session = ClientSession {
                client_id: (i % SESSIONS + 1) * 0x9E37_79B9,
                sequence: i / SESSIONS + 1,
            };
            let set = Command::Set {
                key: key.as_bytes(),
                value: &value,
            };
            let mut payload = Vec::new();
            encode_request(Some(session), &set, &limits, &mut payload).expect("encodes");
            payload
        })
        .collect();
    common::apply_all(&mut sm, &payloads);
    assert_eq!(sm.len() as u64, KEYS);
    assert_eq!(sm.session_count() as u64, SESSIONS);
    sm
}

fn header(index: u64) -> SnapshotHeader {
    SnapshotHeader {
        index,
        term: 1,
        configuration: Bytes::from_static(b"voters=1,2,3"),
    }
}

fn kv_snapshot(c: &mut Criterion) {
    let sm = store();
    let dir = tempfile::tempdir_in(std::env::var_os("SNAPSHOT_BENCH_DIR").unwrap_or(".".into()))
        .expect("temp dir");
    let snapshots =
        SnapshotStore::new(FsStorage::new(dir.path()).expect("storage")).expect("store");
    let mut group = c.benchmark_group("kv_snapshot");
    group.sample_size(20);
    group.throughput(Throughput::Elements(KEYS));
    // The snapshot thread's CPU: serialize the frozen view, checksum it, write it to the
    // temp file (page cache). The writer is dropped (temp file removed) outside the timing.
    group.bench_function("write_100k", |b| {
        b.iter_batched(
            || {
                (
                    sm.snapshot(),
                    snapshots.begin(&header(KEYS)).expect("begins"),
                )
            },
            |(mut source, mut writer)| {
                source.write_to(&mut writer).expect("writes");
                writer.flush().expect("flushes");
                writer
            },
            BatchSize::PerIteration,
        )
    });
    let mut writer = snapshots.begin(&header(KEYS)).expect("begins");
    sm.snapshot().write_to(&mut writer).expect("writes");
    let info = writer.finish().expect("finishes");
    let file = snapshots.file_bytes(&info.name).expect("maps");
    let data_offset = tally_wal::snapshot::parse_layout(&info.name, &file)
        .expect("parses")
        .data_offset as usize;
    let data = file.slice(data_offset..file.len() - tally_wal::snapshot::SNAPSHOT_FOOTER_BYTES);
    // Parsing the KV stream alone, from memory.
    group.bench_function("restore_100k_from_memory", |b| {
        b.iter_with_large_drop(|| {
            let mut restored = KvStateMachine::new(KvLimits::default());
            restored.restore(&mut &data[..]).expect("restores");
            black_box(restored)
        })
    });
    // A restarting node's path: open (evicts the cached pages, maps), check, parse.
    group.bench_function("restore_100k_from_file", |b| {
        b.iter_with_large_drop(|| {
            let mut reader = snapshots.open(&info.name).expect("opens");
            let mut restored = KvStateMachine::new(KvLimits::default());
            restored.restore(&mut reader).expect("restores");
            black_box(restored)
        })
    });
    group.finish();
}

criterion_group!(benches, kv_snapshot);
criterion_main!(benches);
