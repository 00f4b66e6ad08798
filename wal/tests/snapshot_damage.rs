//! Every single-bit flip of every byte, and truncation at every length, of a snapshot
//! file is detected by `verify` and by `open` + read to the end (and by the receive
//! path), and never panics.

use std::io::{Read, Write};

use bytes::Bytes;
use tally_wal::snapshot::{snapshot_file_name, verify_bytes};
use tally_wal::{SimStorage, SnapshotHeader, SnapshotStore, Storage};

const NAME_INDEX: u64 = 42;
const NAME_TERM: u64 = 3;

/// A snapshot file holding `data` in a fresh store: (disk, store, file name, file bytes).
fn written(
    data: &[u8],
    configuration: &'static [u8],
) -> (SimStorage, SnapshotStore<SimStorage>, String, Vec<u8>) {
    let sim = SimStorage::new();
    let store = SnapshotStore::new(sim.clone()).expect("store");
    let mut writer = store
        .begin(&SnapshotHeader {
            index: NAME_INDEX,
            term: NAME_TERM,
            configuration: Bytes::from_static(configuration),
        })
        .expect("begin");
    writer.write_all(data).expect("write");
    let info = writer.finish().expect("finish");
    let bytes = sim.file_contents(&info.name).expect("file");
    (sim, store, info.name, bytes)
}

fn original() -> Vec<u8> {
    written(&(0..120u8).collect::<Vec<u8>>(), b"\x01\x02\x03voters").3
}

/// Replaces the snapshot file's contents durably.
fn put_file(sim: &SimStorage, name: &str, bytes: &[u8]) {
    let _ = sim.remove(name);
    let file = sim.create(name).expect("create");
    file.write_all_at(&[bytes], 0).expect("write");
    file.sync_data().expect("sync");
    sim.sync_dir().expect("sync dir");
}

/// Asserts that every way of reading `bytes` as the snapshot file reports damage.
fn assert_detected(store: &SnapshotStore<SimStorage>, sim: &SimStorage, bytes: &[u8], what: &str) {
    let name = snapshot_file_name(NAME_INDEX, NAME_TERM);
    put_file(sim, &name, bytes);
    assert!(store.verify(&name).is_err(), "verify missed {what}");
    if let Ok(mut reader) = store.open(&name) {
        let mut out = Vec::new();
        assert!(
            reader.read_to_end(&mut out).is_err(),
            "open + read_to_end missed {what}"
        );
        let mut reader = store.open(&name).expect("open again");
        let mut exact = vec![0u8; reader.data_len_bytes() as usize];
        assert!(
            reader.read_exact(&mut exact).is_err(),
            "reading exactly the data length missed {what}"
        );
    }
    let mut receiver = store.begin_receive(bytes.len() as u64).ok();
    if let Some(mut receiver) = receiver.take() {
        receiver.append(0, bytes).expect("append");
        assert!(receiver.install().is_err(), "install missed {what}");
    }
}

#[test]
fn every_single_bit_flip_of_a_snapshot_file_is_detected() {
    let original = original();
    let sim = SimStorage::new();
    let store = SnapshotStore::new(sim.clone()).expect("store");
    for offset in 0..original.len() {
        for bit in 0..8 {
            let mut damaged = original.clone();
            damaged[offset] ^= 1 << bit;
            assert_detected(
                &store,
                &sim,
                &damaged,
                &format!("bit {bit} of byte {offset}"),
            );
        }
    }
    // The undamaged file still passes every check.
    let name = snapshot_file_name(NAME_INDEX, NAME_TERM);
    put_file(&sim, &name, &original);
    store.verify(&name).expect("original verifies");
    let mut out = Vec::new();
    store
        .open(&name)
        .expect("open")
        .read_to_end(&mut out)
        .expect("read");
    assert_eq!(out, (0..120u8).collect::<Vec<u8>>());
}

#[test]
fn truncation_at_every_length_is_detected() {
    let original = original();
    let sim = SimStorage::new();
    let store = SnapshotStore::new(sim.clone()).expect("store");
    for len in 0..original.len() {
        assert_detected(
            &store,
            &sim,
            &original[..len],
            &format!("truncation to {len}"),
        );
    }
}

#[test]
fn extra_bytes_after_the_footer_are_detected() {
    let mut longer = original();
    longer.extend_from_slice(&[0; 16]);
    let sim = SimStorage::new();
    let store = SnapshotStore::new(sim.clone()).expect("store");
    assert_detected(&store, &sim, &longer, "16 trailing zero bytes");
}

#[test]
fn a_valid_file_under_another_snapshots_name_is_detected() {
    let original = original();
    let err = verify_bytes(&snapshot_file_name(NAME_INDEX + 1, NAME_TERM), &original)
        .expect_err("name mismatch");
    assert!(err.to_string().contains("the name says index 43"), "{err}");
}

#[test]
fn arbitrary_bytes_never_panic_and_never_verify() {
    let mut x: u64 = 0x1234_5678;
    for len in [0usize, 1, 39, 40, 56, 57, 100, 1000] {
        for _ in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            assert!(verify_bytes("random.snap", &bytes).is_err());
        }
    }
}

/// Reads `reader` to its end in `piece`-byte reads (as a state machine reads field by
/// field); returns the bytes, or the error of the read that failed and the bytes before.
fn read_in_pieces(reader: &mut impl Read, piece: usize) -> (Vec<u8>, Option<std::io::Error>) {
    let mut out = Vec::new();
    let mut buffer = vec![0u8; piece];
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buffer[..n]),
            Err(error) => return (out, Some(error)),
        }
    }
}

#[test]
fn damage_anywhere_in_a_large_file_read_in_small_pieces_fails_only_the_last_read() {
    // Data several times the reader's hashing piece (64 KiB), read 7 bytes at a time.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let (sim, store, name, original) = written(&data, b"voters");
    let data_offset = original.len() - 16 - data.len();
    let (read, error) = read_in_pieces(&mut store.open(&name).expect("open"), 7);
    assert!(error.is_none(), "the undamaged file reads: {error:?}");
    assert_eq!(read, data);
    let last = data.len() - 1;
    for at in [
        0,
        1,
        (64 << 10) - 1,
        64 << 10,
        (64 << 10) + 1,
        131_072,
        last - 1,
        last,
    ] {
        let mut damaged = original.clone();
        damaged[data_offset + at] ^= 0x40;
        put_file(&sim, &name, &damaged);
        let (read, error) = read_in_pieces(&mut store.open(&name).expect("open"), 7);
        let error = error.unwrap_or_else(|| panic!("damage at data byte {at} not detected"));
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        // Every byte but those of the failing read was handed out; the last never was.
        assert!(
            read.len() < data.len() && read.len() + 7 >= data.len(),
            "{at}"
        );
    }
}
