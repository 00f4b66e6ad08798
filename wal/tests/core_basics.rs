//! Scenarios of the synchronous core on the simulated disk and on real files.

mod common;

use bytes::Bytes;
use common::{entries, entry, small_options};
use tally_wal::{Entry, FsStorage, HardState, SimStorage, Tear, WalCore, WalError, WalOptions};

#[test]
fn appended_entries_are_readable_before_and_after_write_and_sync() {
    let disk = SimStorage::new();
    let mut wal = WalCore::open(disk.clone(), small_options()).unwrap();
    assert_eq!(
        (wal.first_index(), wal.last_index(), wal.durable_index()),
        (1, 0, 0)
    );
    let batch = entries(1..=5, 1, 40);
    wal.append(&batch).unwrap();
    assert_eq!(
        wal.read_range(1..6).unwrap(),
        batch,
        "staged entries readable"
    );
    assert_eq!(wal.durable_index(), 0);
    wal.write().unwrap();
    assert_eq!(
        wal.read_range(1..6).unwrap(),
        batch,
        "written entries readable"
    );
    assert_eq!(wal.durable_index(), 0, "written is not durable");
    assert_eq!(wal.sync().unwrap(), 5);
    assert_eq!(wal.term_at(3).unwrap(), 1);
    let collected: Vec<Entry> = wal.entries(2..4).collect::<Result<_, _>>().unwrap();
    assert_eq!(collected, batch[1..3].to_vec());
}

#[test]
fn append_rejects_gaps_out_of_order_terms_and_oversized_entries_without_changes() {
    let mut wal = WalCore::open(SimStorage::new(), small_options()).unwrap();
    wal.append(&entries(1..=3, 2, 10)).unwrap();
    assert!(matches!(
        wal.append(&[entry(5, 2, 1)]),
        Err(WalError::IndexGap {
            expected: 4,
            got: 5
        })
    ));
    assert!(matches!(
        wal.append(&[entry(4, 2, 1), entry(6, 2, 1)]),
        Err(WalError::OutOfOrder { index: 6, .. })
    ));
    assert!(matches!(
        wal.append(&[entry(4, 1, 1)]),
        Err(WalError::OutOfOrder { index: 4, .. })
    ));
    let too_big = Entry {
        index: 4,
        term: 2,
        kind: 0,
        payload: Bytes::from(vec![0u8; 1025]),
    };
    assert!(matches!(
        wal.append(&[too_big]),
        Err(WalError::EntryTooLarge {
            index: 4,
            size_bytes: 1025,
            max_bytes: 1024
        })
    ));
    assert_eq!(wal.last_index(), 3, "rejected appends change nothing");
    wal.append(&[entry(4, 2, 1)]).unwrap();
}

#[test]
fn hard_state_rejects_lower_term_and_second_vote_in_a_term() {
    let mut wal = WalCore::open(SimStorage::new(), small_options()).unwrap();
    wal.set_hard_state(HardState { term: 3, vote: 0 }).unwrap();
    wal.set_hard_state(HardState { term: 3, vote: 2 }).unwrap();
    assert!(matches!(
        wal.set_hard_state(HardState { term: 3, vote: 1 }),
        Err(WalError::HardStateRegression { .. })
    ));
    assert!(matches!(
        wal.set_hard_state(HardState { term: 2, vote: 0 }),
        Err(WalError::HardStateRegression { .. })
    ));
    wal.set_hard_state(HardState { term: 4, vote: 1 }).unwrap();
    assert_eq!(wal.durable_hard_state(), HardState::default());
    wal.write().unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.durable_hard_state(), HardState { term: 4, vote: 1 });
}

#[test]
fn hard_state_and_entries_become_durable_in_the_same_sync() {
    let disk = SimStorage::new();
    let mut wal = WalCore::open(disk.clone(), small_options()).unwrap();
    wal.set_hard_state(HardState { term: 7, vote: 3 }).unwrap();
    wal.append(&entries(1..=2, 7, 10)).unwrap();
    wal.write().unwrap();
    let syncs_before = disk.sync_calls();
    wal.sync().unwrap();
    assert_eq!(
        disk.sync_calls(),
        syncs_before + 1,
        "one fdatasync covers both"
    );
    drop(wal);
    disk.crash(Tear::DiscardUnsynced);
    let wal = WalCore::open(disk, small_options()).unwrap();
    assert_eq!(wal.hard_state(), HardState { term: 7, vote: 3 });
    assert_eq!(wal.last_index(), 2);
}

#[test]
fn truncated_entries_never_come_back_after_truncate_append_and_crash() {
    let disk = SimStorage::new();
    let mut wal = WalCore::open(disk.clone(), small_options()).unwrap();
    wal.append(&entries(1..=10, 1, 30)).unwrap();
    wal.write().unwrap();
    wal.sync().unwrap();
    wal.truncate_suffix(6).unwrap();
    assert_eq!(
        wal.durable_index(),
        5,
        "truncation lowers the durable index"
    );
    wal.append(&entries(6..=7, 2, 30)).unwrap();
    wal.write().unwrap();
    wal.sync().unwrap();
    drop(wal);
    disk.crash(Tear::DiscardUnsynced);
    let wal = WalCore::open(disk, small_options()).unwrap();
    assert_eq!(wal.last_index(), 7);
    assert_eq!(wal.read(6).unwrap(), entry(6, 2, 30));
    assert_eq!(wal.read(7).unwrap(), entry(7, 2, 30));
    assert_eq!(wal.read(5).unwrap(), entry(5, 1, 30));
}

#[test]
fn unsynced_truncation_is_lost_on_crash_and_old_entries_return() {
    let disk = SimStorage::new();
    let mut wal = WalCore::open(disk.clone(), small_options()).unwrap();
    wal.append(&entries(1..=4, 1, 30)).unwrap();
    wal.write().unwrap();
    wal.sync().unwrap();
    wal.truncate_suffix(2).unwrap();
    wal.write().unwrap();
    drop(wal);
    disk.crash(Tear::DiscardUnsynced);
    let wal = WalCore::open(disk, small_options()).unwrap();
    assert_eq!(
        wal.last_index(),
        4,
        "a truncation that was never synced does not happen"
    );
}

#[test]
fn segments_roll_and_compaction_keeps_hard_state_and_later_entries() {
    let disk = SimStorage::new();
    let mut wal = WalCore::open(disk.clone(), small_options()).unwrap();
    wal.set_hard_state(HardState { term: 5, vote: 2 }).unwrap();
    for i in 1..=100 {
        wal.append(&[entry(i, 5, 100)]).unwrap();
        wal.write().unwrap();
        wal.sync().unwrap();
    }
    let segments = wal.segment_count();
    assert!(
        segments >= 3,
        "100 entries of 100 bytes span several 4 KiB segments, got {segments}"
    );
    let removed = wal.compact_prefix(60).unwrap();
    assert!(removed >= 1);
    assert!(
        wal.first_index() <= 61,
        "entries above the compaction point stay"
    );
    assert!(wal.first_index() > 1);
    let first = wal.first_index();
    drop(wal);
    disk.crash(Tear::DiscardUnsynced);
    let wal = WalCore::open(disk, small_options()).unwrap();
    assert_eq!(wal.first_index(), first);
    assert_eq!(wal.last_index(), 100);
    assert_eq!(
        wal.hard_state(),
        HardState { term: 5, vote: 2 },
        "hard state survives deletion of the segment that first held it"
    );
    for i in first..=100 {
        assert_eq!(wal.read(i).unwrap(), entry(i, 5, 100));
    }
}

#[test]
fn reset_drops_everything_and_restarts_at_the_given_index() {
    let disk = SimStorage::new();
    let mut wal = WalCore::open(disk.clone(), small_options()).unwrap();
    wal.append(&entries(1..=30, 1, 100)).unwrap();
    wal.reset(1000).unwrap();
    wal.append(&entries(1000..=1001, 2, 10)).unwrap();
    wal.write().unwrap();
    wal.sync().unwrap();
    wal.compact_prefix(0).unwrap();
    assert_eq!(
        wal.segment_count(),
        1,
        "segments without live entries are removed"
    );
    drop(wal);
    disk.crash(Tear::DiscardUnsynced);
    let wal = WalCore::open(disk, small_options()).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (1000, 1001));
}

#[test]
fn a_second_open_of_a_locked_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    let first = WalCore::open(FsStorage::new(dir.path()).unwrap(), small_options()).unwrap();
    let second = WalCore::open(FsStorage::new(dir.path()).unwrap(), small_options());
    assert!(
        matches!(second, Err(WalError::Locked { .. })),
        "got {:?}",
        second.err()
    );
    drop(first);
    WalCore::open(FsStorage::new(dir.path()).unwrap(), small_options()).unwrap();
    let disk = SimStorage::new();
    let _held = WalCore::open(disk.clone(), small_options()).unwrap();
    assert!(matches!(
        WalCore::open(disk, small_options()),
        Err(WalError::Locked { .. })
    ));
}

#[test]
fn real_files_survive_reopen_with_sealed_segments_read_through_mmap() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions {
        segment_size_bytes: 64 * 1024,
        max_entry_size_bytes: 4096,
        ..WalOptions::default()
    };
    let mut wal = WalCore::open(FsStorage::new(dir.path()).unwrap(), options.clone()).unwrap();
    for chunk in 0..50u64 {
        wal.append(&entries(
            chunk * 20 + 1..=chunk * 20 + 20,
            1 + chunk / 10,
            200,
        ))
        .unwrap();
        wal.write().unwrap();
        wal.sync().unwrap();
    }
    assert!(wal.segment_count() > 2);
    assert_eq!(
        wal.read(1).unwrap(),
        entry(1, 1, 200),
        "sealed segment read"
    );
    drop(wal);
    let wal = WalCore::open(FsStorage::new(dir.path()).unwrap(), options).unwrap();
    assert!(wal.recovery_report().dropped.is_empty());
    assert_eq!(wal.last_index(), 1000);
    for i in (1..=1000).step_by(37) {
        assert_eq!(wal.read(i).unwrap(), entry(i, 1 + (i - 1) / 200, 200));
    }
    let names = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().into_string().unwrap())
        .collect::<Vec<_>>();
    assert!(
        names
            .iter()
            .any(|n| n == "00000000000000000001-00000000000000000001.wal"),
        "{names:?}"
    );
    for name in names.iter().filter(|n| n.ends_with(".wal")) {
        assert_eq!(
            std::fs::metadata(dir.path().join(name)).unwrap().len(),
            64 * 1024,
            "segments are preallocated"
        );
    }
}

#[test]
fn zero_filled_segments_are_fully_written_and_behave_like_preallocated_ones() {
    let disk = SimStorage::new();
    let options = WalOptions {
        zero_fill_segments: true,
        ..small_options()
    };
    let mut wal = WalCore::open(disk.clone(), options.clone()).unwrap();
    let writes_after_open = disk.write_calls();
    assert!(
        disk.bytes_written() >= 4096,
        "the first segment was zero-filled"
    );
    for i in 1..=60 {
        wal.append(&[entry(i, 1, 100)]).unwrap();
        wal.write().unwrap();
        wal.sync().unwrap();
    }
    assert!(wal.segment_count() >= 2);
    assert!(
        disk.write_calls() > writes_after_open + 60,
        "rolled segments were zero-filled too"
    );
    drop(wal);
    disk.crash(Tear::DiscardUnsynced);
    let wal = WalCore::open(disk, options).unwrap();
    assert_eq!(wal.last_index(), 60);
    assert!(wal.recovery_report().dropped.is_empty());
}

#[test]
fn entries_of_a_commit_in_flight_stay_readable_and_become_durable_on_finish() {
    let disk = SimStorage::new();
    let mut wal = WalCore::open(disk.clone(), small_options()).unwrap();
    wal.append(&entries(1..=3, 1, 50)).unwrap();
    wal.write().unwrap();
    wal.sync().unwrap();
    wal.set_hard_state(HardState { term: 2, vote: 1 }).unwrap();
    wal.append(&entries(4..=6, 2, 50)).unwrap();
    let commit = wal.begin_commit().unwrap().expect("something staged");
    // While the caller writes and syncs without the core: reads, terms and compaction work,
    // staging does not.
    assert_eq!(
        wal.read_range(1..7).unwrap(),
        [entries(1..=3, 1, 50), entries(4..=6, 2, 50)].concat()
    );
    assert_eq!(wal.term_at(5).unwrap(), 2);
    assert_eq!(wal.durable_index(), 3);
    assert!(
        wal.append(&[entry(7, 2, 1)]).is_err(),
        "no staging while a commit is in flight"
    );
    wal.compact_prefix(0).unwrap();
    commit
        .file
        .write_all_at(&[&commit.header, &commit.body], commit.offset)
        .unwrap();
    commit.file.sync_data().unwrap();
    assert_eq!(wal.finish_commit(Ok(())).unwrap(), 6);
    assert_eq!(wal.durable_hard_state(), HardState { term: 2, vote: 1 });
    assert_eq!(
        wal.read(5).unwrap(),
        entry(5, 2, 50),
        "read from the segment after finish"
    );
    wal.append(&[entry(7, 2, 1)]).unwrap();
    drop(wal);
    disk.crash(Tear::DiscardUnsynced);
    let wal = WalCore::open(disk, small_options()).unwrap();
    assert_eq!(wal.last_index(), 6);
    assert_eq!(wal.hard_state(), HardState { term: 2, vote: 1 });
}

#[test]
fn a_failed_commit_in_flight_poisons_the_core() {
    let mut wal = WalCore::open(SimStorage::new(), small_options()).unwrap();
    wal.append(&entries(1..=2, 1, 10)).unwrap();
    let _commit = wal.begin_commit().unwrap().expect("staged");
    let outcome = Err(tally_wal::BackendError::Sync(
        std::io::Error::from_raw_os_error(5),
    ));
    assert!(matches!(
        wal.finish_commit(outcome),
        Err(WalError::Poisoned { .. })
    ));
    assert!(matches!(wal.sync(), Err(WalError::Poisoned { .. })));
    assert_eq!(wal.durable_index(), 0);
}

fn encoded(entries: &[Entry]) -> Vec<u8> {
    let mut body = Vec::new();
    for e in entries {
        tally_wal::format::encode_entry(&mut body, e.index, e.term, e.kind, &e.payload);
    }
    body
}

fn commit_staged(wal: &mut WalCore<SimStorage>) {
    let commit = wal.begin_commit().unwrap().expect("something staged");
    commit
        .file
        .write_all_at(&[&commit.header, &commit.body], commit.offset)
        .unwrap();
    commit.file.sync_data().unwrap();
    drop(commit);
    wal.finish_commit(Ok(())).unwrap();
}

#[test]
fn a_batch_staged_by_value_writes_the_same_bytes_and_its_buffer_comes_back_after_commit() {
    let by_copy_disk = SimStorage::new();
    let by_value_disk = SimStorage::new();
    let mut by_copy = WalCore::open(by_copy_disk.clone(), small_options()).unwrap();
    let mut by_value = WalCore::open(by_value_disk.clone(), small_options()).unwrap();
    assert!(by_value.take_spare_buffer().is_empty());
    for (batch, range) in [(1u64, 1..=5u64), (2, 6..=9), (3, 10..=10)] {
        let body = encoded(&entries(range, batch, 40));
        by_copy.stage_encoded(&body).unwrap();
        commit_staged(&mut by_copy);
        let mut owned = body.clone();
        let allocation = owned.as_ptr();
        by_value.stage_encoded_owned(&mut owned).unwrap();
        assert!(
            owned.is_empty(),
            "the caller's buffer was taken, not copied"
        );
        commit_staged(&mut by_value);
        let spare = by_value.take_spare_buffer();
        assert!(spare.is_empty(), "the spare buffer comes back cleared");
        assert_eq!(
            spare.as_ptr(),
            allocation,
            "the committed batch's allocation is handed back for the next batch"
        );
    }
    assert_eq!(
        by_value.read_range(1..11).unwrap(),
        by_copy.read_range(1..11).unwrap()
    );
    drop((by_copy, by_value));
    by_copy_disk.crash(Tear::DiscardUnsynced);
    by_value_disk.crash(Tear::DiscardUnsynced);
    let by_copy = WalCore::open(by_copy_disk, small_options()).unwrap();
    let by_value = WalCore::open(by_value_disk, small_options()).unwrap();
    assert_eq!(by_value.last_index(), 10);
    assert_eq!(
        by_value.read_range(1..11).unwrap(),
        by_copy.read_range(1..11).unwrap()
    );
}
