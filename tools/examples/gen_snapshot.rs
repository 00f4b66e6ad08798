//! Writes a large KV snapshot file and times the snapshot paths (not part of the CLI).
//!
//! `cargo run --release -p tally-tools --example gen_snapshot -- DIR KEYS [VALUE_BYTES]`
//! fills a `KvStateMachine` with KEYS keys (MSET batches), then measures, on real files
//! in DIR: serializing a frozen view through `SnapshotStore::begin` … `finish` (footer,
//! fdatasync, rename, directory fsync), `verify` (full CRC over a read-only map), and
//! `open` + `KvStateMachine::restore` (CRC checked by the reader and by the KV stream).

use std::io::BufWriter;
use std::time::Instant;

use bytes::Bytes;
use tally_engine::kv::{encode_request, Command, KvLimits, KvStateMachine};
use tally_engine::state_machine::{CommittedEntry, StateMachine};
use tally_wal::{FsStorage, SnapshotHeader, SnapshotStore};

fn fill(keys: u64, value_bytes: usize) -> Result<KvStateMachine, Box<dyn std::error::Error>> {
    let mut sm = KvStateMachine::default();
    let value = vec![b'v'; value_bytes];
    let names: Vec<Vec<u8>> = (0..keys)
        .map(|k| format!("key:{k:012}").into_bytes())
        .collect();
    for (index, chunk) in (1..).zip(names.chunks(1000)) {
        let pairs = chunk.iter().map(|k| (&k[..], &value[..])).collect();
        let mut payload = Vec::new();
        encode_request(
            None,
            &Command::MSet { pairs },
            &KvLimits::default(),
            &mut payload,
        )?;
        sm.apply(&[CommittedEntry {
            index,
            payload: &payload,
        }])?;
    }
    Ok(sm)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: gen_snapshot DIR KEYS [VALUE_BYTES]".into());
    }
    let keys: u64 = args[2].parse()?;
    let value_bytes: usize = args.get(3).map_or(Ok(100), |a| a.parse())?;
    let sm = fill(keys, value_bytes)?;
    let store = SnapshotStore::new(FsStorage::new(&args[1])?)?;

    // The state machine's own serialization cost (sorting keys, encoding), no file.
    let started = Instant::now();
    sm.snapshot()
        .write_to(&mut BufWriter::new(std::io::sink()))?;
    let serialize_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut writer = store.begin(&SnapshotHeader {
        index: sm.applied_index(),
        term: 1,
        configuration: Bytes::new(),
    })?;
    sm.snapshot().write_to(&mut BufWriter::new(&mut writer))?;
    let info = writer.finish()?;
    let write_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    store.verify(&info.name)?;
    let verify_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut restored = KvStateMachine::default();
    restored.restore(&mut store.open(&info.name)?)?;
    let restore_s = started.elapsed().as_secs_f64();
    assert_eq!(restored.len(), sm.len());

    let mib = info.size_bytes as f64 / (1 << 20) as f64;
    println!(
        "{}: {keys} keys x {value_bytes} B values, {:.1} MiB",
        info.name, mib
    );
    println!(
        "serialize to a sink {serialize_s:.3} s ({:.0} MiB/s)",
        mib / serialize_s
    );
    println!(
        "write+finish {write_s:.3} s ({:.0} MiB/s), verify {verify_s:.3} s ({:.0} MiB/s), open+restore {restore_s:.3} s ({:.0} MiB/s)",
        mib / write_s,
        mib / verify_s,
        mib / restore_s
    );
    Ok(())
}
