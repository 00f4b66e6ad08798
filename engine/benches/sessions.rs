//! Criterion benchmarks of the KV session table (issue 15): what a snapshot costs the
//! apply thread now that the table is a std hash map (`snapshot()` copies the session
//! records, O(sessions)), at the default bound of 65,536 sessions, and what the writer
//! then spends sorting and serializing them on its own thread; and the apply cost of
//! one SET with a session, the path every write of every replica takes.

use std::hint::black_box;

mod common;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tally_engine::kv::{encode_request, ClientSession, Command, KvLimits, KvStateMachine};
use tally_engine::state_machine::{CommittedEntry, StateMachine};

/// A store of one key whose session table is full: `sessions` clients, one SET each.
fn store_with_sessions(sessions: u64) -> KvStateMachine {
    let limits = KvLimits::default();
    let mut sm = KvStateMachine::new(limits);
    let set = Command::Set {
        key: b"k",
        value: b"v",
    };
    let payloads: Vec<Vec<u8>> = (1..=sessions)
        .map(|client_id| {
            let mut payload = Vec::new();
            let session = ClientSession {
                client_id: client_id * 0x9E37_79B9,
                sequence: 1,
            };
            encode_request(Some(session), &set, &limits, &mut payload).expect("encodes");
            payload
        })
        .collect();
    common::apply_all(&mut sm, &payloads);
    assert_eq!(sm.session_count() as u64, sessions);
    sm
}

fn snapshot(c: &mut Criterion) {
    let sessions = KvLimits::default().max_sessions as u64;
    // Built on first use, so that running only the apply benchmark skips it.
    let store = std::cell::OnceCell::new();
    let mut group = c.benchmark_group("session_snapshot");
    group.sample_size(20);
    group.throughput(Throughput::Elements(sessions));
    // The apply thread's part; the copy is dropped by the writer, outside the timing.
    group.bench_function("take_65536", |b| {
        let sm = store.get_or_init(|| store_with_sessions(sessions));
        b.iter_with_large_drop(|| black_box(sm.snapshot()))
    });
    // The snapshot writer's part: sort by client id and serialize.
    group.bench_function("write_65536", |b| {
        let sm = store.get_or_init(|| store_with_sessions(sessions));
        b.iter_batched(
            || (sm.snapshot(), Vec::with_capacity(4 << 20)),
            |(mut source, mut out)| {
                source.write_to(&mut out).expect("writes");
                out
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn apply(c: &mut Criterion) {
    let limits = KvLimits::default();
    let mut group = c.benchmark_group("session_apply");
    group.throughput(Throughput::Elements(1));
    // 50 clients in turn, as at `redis-benchmark -c 50`: one record per SET.
    let mut sm = KvStateMachine::new(limits);
    let mut index = 0u64;
    let value = [b'v'; 100];
    let set = Command::Set {
        key: b"key:000001",
        value: &value,
    };
    let mut payload = Vec::new();
    group.bench_function("set_50_clients", |b| {
        b.iter(|| {
            index += 1;
            let session = ClientSession {
                client_id: 1 + index % 50,
                sequence: 1 + index / 50,
            };
            payload.clear();
            encode_request(Some(session), &set, &limits, &mut payload).expect("encodes");
            let entry = CommittedEntry {
                index,
                payload: &payload,
            };
            black_box(sm.apply(&[entry]).expect("applies"))
        })
    });
    group.finish();
}

criterion_group!(benches, snapshot, apply);
criterion_main!(benches);
