//! Snapshot store scenarios: round trips on real and simulated disks, the receive path,
//! retention, temp-file cleanup, restart selection, and a WAL sharing the directory.

use std::io::{Read, Write};

use bytes::Bytes;
use tally_wal::snapshot::{snapshot_file_name, SNAPSHOT_TEMP_SUFFIX, WRITEBACK_CHUNK_BYTES};
use tally_wal::{
    Entry, FsStorage, SimStorage, SnapshotError, SnapshotHeader, SnapshotStore, Storage, WalCore,
    WalOptions,
};

fn data_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn header(index: u64, term: u64) -> SnapshotHeader {
    SnapshotHeader {
        index,
        term,
        configuration: Bytes::from(format!("voters 1 2 3 at {index}")),
    }
}

fn write_snapshot<S: Storage>(store: &SnapshotStore<S>, index: u64, term: u64, data: &[u8]) {
    let mut writer = store.begin(&header(index, term)).expect("begin");
    for chunk in data.chunks(777) {
        writer.write_all(chunk).expect("write");
    }
    let info = writer.finish().expect("finish");
    assert_eq!(info.name, snapshot_file_name(index, term));
}

fn read_all<S: Storage>(store: &SnapshotStore<S>, name: &str) -> (SnapshotHeader, Vec<u8>) {
    let mut reader = store.open(name).expect("open");
    let mut out = Vec::new();
    reader.read_to_end(&mut out).expect("read to end");
    (reader.header().clone(), out)
}

fn round_trip<S: Storage + Clone>(storage: S) {
    let store = SnapshotStore::new(storage.clone()).expect("store");
    assert!(store.list().expect("list").is_empty());
    let data = data_bytes(300_000, 1);
    write_snapshot(&store, 120, 3, &data);
    write_snapshot(&store, 7, 1, b"");

    let listed = store.list().expect("list");
    let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [snapshot_file_name(120, 3), snapshot_file_name(7, 1)],
        "newest first"
    );
    assert_eq!((listed[0].index, listed[0].term), (120, 3));
    let (got_header, got_data) = read_all(&store, &listed[0].name);
    assert_eq!(got_header, header(120, 3));
    assert_eq!(got_data, data);
    assert_eq!(
        store.verify(&listed[0].name).expect("verify"),
        header(120, 3)
    );
    let (_, empty) = read_all(&store, &listed[1].name);
    assert!(empty.is_empty());

    let bytes = store.file_bytes(&listed[0].name).expect("file bytes");
    assert_eq!(bytes.len() as u64, listed[0].size_bytes);

    // A reopened store sees the same files.
    let reopened = SnapshotStore::new(storage).expect("reopen");
    assert_eq!(reopened.list().expect("list"), listed);
}

#[test]
fn round_trip_on_real_files_lists_newest_first_and_reads_back_every_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    round_trip(FsStorage::new(dir.path()).expect("fs"));
}

#[test]
fn round_trip_on_the_simulated_disk_lists_newest_first_and_reads_back_every_byte() {
    round_trip(SimStorage::new());
}

#[test]
fn retain_newest_keeps_the_two_highest_indexes() {
    let store = SnapshotStore::new(SimStorage::new()).expect("store");
    for index in [10, 30, 20, 40] {
        write_snapshot(&store, index, 2, b"x");
    }
    let removed = store.retain_newest(2).expect("retain");
    assert_eq!(
        removed,
        [snapshot_file_name(20, 2), snapshot_file_name(10, 2)]
    );
    let left: Vec<u64> = store
        .list()
        .expect("list")
        .iter()
        .map(|i| i.index)
        .collect();
    assert_eq!(left, [40, 30]);
}

#[test]
fn unfinished_writer_is_invisible_and_dropping_it_removes_the_temp_file() {
    let sim = SimStorage::new();
    let store = SnapshotStore::new(sim.clone()).expect("store");
    let mut writer = store.begin(&header(5, 1)).expect("begin");
    writer.write_all(&data_bytes(1000, 2)).expect("write");
    writer.flush().expect("flush");
    let temp = writer.temp_name().to_string();
    assert!(temp.ends_with(SNAPSHOT_TEMP_SUFFIX));
    assert!(sim.list().expect("list").contains(&temp));
    assert!(store.list().expect("list").is_empty());
    drop(writer);
    assert!(!sim.list().expect("list").contains(&temp));
}

#[test]
fn opening_the_store_deletes_leftover_temp_files_only() {
    let sim = SimStorage::new();
    for name in ["receive-3.snap.tmp", "snapshot-x.snap.tmp", "other.txt"] {
        sim.create(name).expect("create");
    }
    sim.sync_dir().expect("sync dir");
    let _store = SnapshotStore::new(sim.clone()).expect("store");
    assert_eq!(sim.list().expect("list"), ["other.txt"]);
    sim.crash(tally_wal::Tear::DiscardUnsynced);
    assert_eq!(
        sim.list().expect("list"),
        ["other.txt"],
        "the deletions were made durable"
    );
}

fn sent_file(index: u64, term: u64, data: &[u8]) -> Bytes {
    let leader = SnapshotStore::new(SimStorage::new()).expect("leader store");
    write_snapshot(&leader, index, term, data);
    leader
        .file_bytes(&snapshot_file_name(index, term))
        .expect("file bytes")
}

#[test]
fn received_chunks_install_as_the_senders_snapshot() {
    let data = data_bytes(50_000, 3);
    let file = sent_file(900, 7, &data);
    let follower = SnapshotStore::new(SimStorage::new()).expect("store");
    let mut receiver = follower.begin_receive(file.len() as u64).expect("receive");
    for (i, chunk) in file.chunks(4096).enumerate() {
        receiver.append(i as u64 * 4096, chunk).expect("append");
    }
    let info = receiver.install().expect("install");
    assert_eq!((info.index, info.term), (900, 7));
    assert_eq!(info.size_bytes, file.len() as u64);
    assert_eq!(follower.list().expect("list"), std::slice::from_ref(&info));
    assert_eq!(read_all(&follower, &info.name).1, data);
}

#[test]
fn receiver_refuses_out_of_order_and_oversized_chunks_and_early_install() {
    let file = sent_file(9, 1, b"abc");
    let total = file.len() as u64;
    let store = SnapshotStore::new(SimStorage::new()).expect("store");
    let mut receiver = store.begin_receive(total).expect("receive");
    assert!(matches!(
        receiver.append(1, &file[1..]),
        Err(SnapshotError::UnexpectedOffset {
            expected: 0,
            got: 1,
            ..
        })
    ));
    let mut too_long = file.to_vec();
    too_long.push(0);
    assert!(matches!(
        receiver.append(0, &too_long),
        Err(SnapshotError::ChunkBeyondTotal { .. })
    ));
    receiver.append(0, &file[..10]).expect("append");
    assert!(matches!(
        receiver.install(),
        Err(SnapshotError::Incomplete {
            received_bytes: 10,
            ..
        })
    ));
    assert!(matches!(
        store.begin_receive(3),
        Err(SnapshotError::Corrupt { .. })
    ));
    assert!(matches!(
        store.begin_receive(u64::MAX),
        Err(SnapshotError::TooLarge { .. })
    ));
}

#[test]
fn receiver_with_a_damaged_file_names_the_problem_and_leaves_nothing_behind() {
    let sim = SimStorage::new();
    let store = SnapshotStore::new(sim.clone()).expect("store");
    let mut file = sent_file(9, 1, &data_bytes(2000, 4)).to_vec();
    file[1000] ^= 0x10;
    let mut receiver = store.begin_receive(file.len() as u64).expect("receive");
    receiver.append(0, &file).expect("append");
    let err = receiver.install().expect_err("damaged");
    assert!(
        err.to_string().contains("checksum mismatch"),
        "error names the problem: {err}"
    );
    assert!(sim.list().expect("list").is_empty(), "temp file deleted");

    let mut dropped = store.begin_receive(file.len() as u64).expect("receive");
    dropped.append(0, &file[..100]).expect("append");
    drop(dropped);
    assert!(sim.list().expect("list").is_empty());
}

#[test]
fn fsync_failure_poisons_the_store_and_nothing_is_retried() {
    let sim = SimStorage::new();
    let store = SnapshotStore::new(sim.clone()).expect("store");
    let mut writer = store.begin(&header(3, 1)).expect("begin");
    writer.write_all(b"data").expect("write");
    sim.fail_next_syncs(1);
    let syncs_before = sim.sync_calls();
    assert!(matches!(
        writer.finish(),
        Err(SnapshotError::Poisoned { .. })
    ));
    assert_eq!(sim.sync_calls(), syncs_before + 1, "one fsync, no retry");
    assert!(matches!(
        store.begin(&header(4, 1)),
        Err(SnapshotError::Poisoned { .. })
    ));
    assert!(store.list().expect("list").is_empty());
}

// --- select_for_restart ----------------------------------------------------------------

fn store_with(indexes: &[u64]) -> (SimStorage, SnapshotStore<SimStorage>) {
    let sim = SimStorage::new();
    let store = SnapshotStore::new(sim.clone()).expect("store");
    for &index in indexes {
        write_snapshot(&store, index, 1, &data_bytes(100, index));
    }
    (sim, store)
}

fn damage(sim: &SimStorage, index: u64) {
    let name = snapshot_file_name(index, 1);
    let byte = sim.file_contents(&name).expect("exists")[60];
    sim.corrupt(&name, 60, &[byte ^ 1]).expect("corrupt");
}

#[test]
fn restart_picks_the_newest_valid_snapshot() {
    let (_sim, store) = store_with(&[10, 20]);
    let chosen = store.select_for_restart(15).expect("select").expect("some");
    assert_eq!(chosen.index, 20);
}

#[test]
fn restart_with_no_snapshot_files_selects_none() {
    let (_sim, store) = store_with(&[]);
    assert_eq!(store.select_for_restart(1).expect("select"), None);
}

#[test]
fn restart_with_corrupt_newest_and_a_covering_log_falls_back_to_the_previous() {
    let (sim, store) = store_with(&[10, 20]);
    damage(&sim, 20);
    let chosen = store.select_for_restart(11).expect("select").expect("some");
    assert_eq!(chosen.index, 10);
}

#[test]
fn restart_with_corrupt_newest_and_a_log_gap_names_the_corrupt_file() {
    let (sim, store) = store_with(&[10, 20]);
    damage(&sim, 20);
    let err = store.select_for_restart(12).expect_err("gap");
    match &err {
        SnapshotError::NoUsableSnapshot {
            file,
            wal_first_index,
            ..
        } => {
            assert_eq!(file, &snapshot_file_name(20, 1));
            assert_eq!(*wal_first_index, 12);
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn restart_with_only_a_corrupt_snapshot_is_an_error() {
    let (sim, store) = store_with(&[10]);
    damage(&sim, 10);
    let err = store.select_for_restart(1).expect_err("corrupt");
    assert!(
        err.to_string().contains(&snapshot_file_name(10, 1)),
        "{err}"
    );
}

// --- the WAL in the same directory -----------------------------------------------------

fn wal_options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 4096,
        max_entry_size_bytes: 1024,
        ..WalOptions::default()
    }
}

fn entry(index: u64) -> Entry {
    Entry {
        index,
        term: 1,
        kind: 0,
        payload: Bytes::from(vec![index as u8; 100]),
    }
}

#[test]
fn wal_recovery_ignores_snapshot_files_and_snapshot_temp_files_in_its_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = FsStorage::new(dir.path()).expect("fs");
    let store = SnapshotStore::new(fs.clone()).expect("store");
    write_snapshot(&store, 5, 1, b"state");
    let mut leftover = store.begin(&header(9, 1)).expect("begin");
    leftover.write_all(b"partial").expect("write");
    leftover.flush().expect("flush");
    std::mem::forget(leftover); // as if the process died mid-write

    let mut wal = WalCore::open(fs.clone(), wal_options()).expect("open wal");
    let entries: Vec<Entry> = (1..=40).map(entry).collect();
    wal.append(&entries).expect("append");
    wal.write().expect("write");
    wal.sync().expect("sync");
    drop(wal);

    let wal = WalCore::open(fs.clone(), wal_options()).expect("reopen wal");
    assert_eq!(wal.last_index(), 40);
    assert!(wal.recovery_report().dropped.is_empty());
    drop(wal);
    let store = SnapshotStore::new(fs).expect("store");
    assert_eq!(store.list().expect("list").len(), 1);
}

#[test]
fn store_writer_reader_and_receiver_can_move_to_other_threads() {
    fn assert_send<T: Send>() {}
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SnapshotStore<FsStorage>>();
    assert_send::<tally_wal::SnapshotWriter<FsStorage>>();
    assert_send::<tally_wal::SnapshotReader>();
    assert_send::<tally_wal::SnapshotReceiver<SimStorage>>();

    let store = SnapshotStore::new(SimStorage::new()).expect("store");
    let background = store.clone();
    std::thread::spawn(move || write_snapshot(&background, 3, 1, b"from another thread"))
        .join()
        .expect("join");
    assert_eq!(
        read_all(&store, &snapshot_file_name(3, 1)).1,
        b"from another thread"
    );
}

#[test]
fn the_whole_file_crc_a_finished_writer_reports_is_the_crc_of_the_file_it_wrote() {
    for (len, seed) in [
        (0usize, 1u64),
        (1, 2),
        (4095, 3),
        (300_000, 4),
        (1 << 20, 5),
    ] {
        let disk = SimStorage::new();
        let store = SnapshotStore::new(disk.clone()).unwrap();
        let mut writer = store.begin(&header(7, 2)).unwrap();
        // Small writes go through the buffer, a large one straight to the file.
        let data = data_bytes(len, seed);
        let (small, large) = data.split_at(len.min(1000));
        writer.write_all(small).unwrap();
        writer.write_all(large).unwrap();
        let (info, file_crc32) = writer.finish_with_file_crc32().unwrap();
        let bytes = store.file_bytes(&info.name).unwrap();
        assert_eq!(bytes.len() as u64, info.size_bytes);
        assert_eq!(file_crc32, crc32fast::hash(&bytes), "{len} bytes of data");
    }
}

#[test]
fn a_large_snapshot_reaches_the_device_one_chunk_at_a_time_and_still_round_trips() {
    let storage = SimStorage::new();
    let store = SnapshotStore::new(storage.clone()).expect("store");
    let chunk = WRITEBACK_CHUNK_BYTES as usize;
    let data = data_bytes(5 * chunk + 12_345, 9);
    let mut writer = store.begin(&header(40, 2)).expect("begin");
    let mut written = 0u64;
    for piece in data.chunks(100_003) {
        writer.write_all(piece).expect("write");
        written += piece.len() as u64;
        // Whatever was written so far, the ranges started and not yet waited for stay
        // below two chunks: one being written, one being filled.
        let backs = storage.write_backs();
        let started: u64 = backs.iter().filter(|b| !b.2).map(|b| b.1).sum();
        let waited: u64 = backs.iter().filter(|b| b.2).map(|b| b.1).sum();
        assert!(started - waited <= 2 * WRITEBACK_CHUNK_BYTES, "{backs:?}");
        assert!(
            started <= written + 4096,
            "nothing is written back before it is written"
        );
    }
    writer.finish().expect("finish");
    let backs = storage.write_backs();
    let starts: Vec<(u64, u64)> = backs.iter().filter(|b| !b.2).map(|b| (b.0, b.1)).collect();
    let waits: Vec<(u64, u64)> = backs.iter().filter(|b| b.2).map(|b| (b.0, b.1)).collect();
    assert!(
        starts.len() >= 5,
        "a chunk is started every {chunk} bytes: {backs:?}"
    );
    // Started ranges tile the file from 0 with no gap, and each wait is for the range
    // started just before (in that order).
    let mut next = 0;
    for &(offset, len) in &starts {
        assert_eq!(offset, next, "{backs:?}");
        assert!(len >= WRITEBACK_CHUNK_BYTES);
        next = offset + len;
    }
    assert_eq!(waits, starts[..waits.len()].to_vec());
    assert_eq!(waits.len(), starts.len() - 1);
    let (read_header, read_data) = read_all(&store, &snapshot_file_name(40, 2));
    assert_eq!(read_header, header(40, 2));
    assert_eq!(read_data, data);
}

#[test]
fn a_writeback_error_fails_the_snapshot_and_it_is_never_listed() {
    let storage = SimStorage::new();
    let store = SnapshotStore::new(storage.clone()).expect("store");
    let data = data_bytes(3 * WRITEBACK_CHUNK_BYTES as usize, 4);
    storage.fail_next_write_backs(1);
    let mut writer = store.begin(&header(9, 1)).expect("begin");
    let outcome = data
        .chunks(65_536)
        .try_for_each(|piece| writer.write_all(piece));
    assert!(
        outcome.is_err(),
        "the device's writeback error reaches the writer"
    );
    assert!(
        writer.finish().is_err(),
        "a failed snapshot is never finished"
    );
    assert!(store.list().expect("list").is_empty());
}

#[test]
fn a_snapshot_of_several_writeback_chunks_round_trips_on_real_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::new(FsStorage::new(dir.path()).expect("fs")).expect("store");
    let data = data_bytes(3 * WRITEBACK_CHUNK_BYTES as usize + 77, 5);
    write_snapshot(&store, 300, 4, &data);
    let (read_header, read_data) = read_all(&store, &snapshot_file_name(300, 4));
    assert_eq!(read_header, header(300, 4));
    assert_eq!(read_data, data);
}
