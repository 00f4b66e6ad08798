//! Fault paths through the simulated disk: a failed fdatasync poisons the WAL (fail-stop,
//! no further write is attempted), a full disk fails with a typed error and the log
//! reopens with every durable entry intact.

mod common;

use bytes::Bytes;
use common::{entries, entry, small_options};
use tally_wal::{
    Backend, GroupCommitOptions, PoisonCause, SimStorage, Tear, Wal, WalCore, WalError,
};

#[test]
fn failed_fsync_poisons_the_core_and_no_further_write_or_sync_is_attempted() {
    let disk = SimStorage::new();
    let mut wal = WalCore::open(disk.clone(), small_options()).unwrap();
    wal.append(&entries(1..=3, 1, 20)).unwrap();
    wal.write().unwrap();
    wal.sync().unwrap();
    wal.append(&entries(4..=6, 1, 20)).unwrap();
    wal.write().unwrap();
    disk.fail_next_syncs(1);
    let err = wal.sync().unwrap_err();
    assert!(
        matches!(
            err,
            WalError::Poisoned {
                cause: PoisonCause::SyncFailed,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("fail-stop"), "{err}");
    assert_eq!(
        wal.durable_index(),
        3,
        "nothing past the failed sync is durable"
    );
    let (writes, syncs) = (disk.write_calls(), disk.sync_calls());
    assert!(matches!(
        wal.append(&[entry(7, 1, 1)]),
        Err(WalError::Poisoned { .. })
    ));
    assert!(matches!(wal.write(), Err(WalError::Poisoned { .. })));
    assert!(
        matches!(wal.sync(), Err(WalError::Poisoned { .. })),
        "the sync is never retried"
    );
    assert!(matches!(
        wal.truncate_suffix(2),
        Err(WalError::Poisoned { .. })
    ));
    assert!(matches!(
        wal.compact_prefix(2),
        Err(WalError::Poisoned { .. })
    ));
    assert_eq!(
        (disk.write_calls(), disk.sync_calls()),
        (writes, syncs),
        "poisoned WAL touched the disk"
    );
    drop(wal);
    disk.crash(Tear::DiscardUnsynced);
    let wal = WalCore::open(disk, small_options()).unwrap();
    assert!(wal.last_index() >= 3);
    for index in 1..=3 {
        assert_eq!(wal.read(index).unwrap(), entry(index, 1, 20));
    }
}

#[test]
fn disk_full_during_segment_roll_fails_with_no_space_and_durable_entries_survive() {
    let disk = SimStorage::new();
    let mut wal = WalCore::open(disk.clone(), small_options()).unwrap();
    wal.append(&entries(1..=10, 1, 100)).unwrap();
    wal.write().unwrap();
    wal.sync().unwrap();
    // Room for the current segment only: the next roll cannot allocate.
    disk.set_space_limit(Some(disk.used_bytes() + 100));
    let mut result = Ok(());
    for index in 11..=200 {
        result = wal
            .append(&[entry(index, 1, 100)])
            .and_then(|()| wal.write())
            .and_then(|()| wal.sync().map(|_| ()));
        if result.is_err() {
            break;
        }
    }
    let err = result.unwrap_err();
    assert!(
        matches!(err, WalError::NoSpace { .. }),
        "expected NoSpace, got {err}"
    );
    assert!(err.to_string().contains("no space left"), "{err}");
    let durable = wal.durable_index();
    assert!(durable >= 10);
    assert!(matches!(
        wal.append(&[entry(wal.last_index() + 1, 1, 1)]),
        Err(WalError::Poisoned {
            cause: PoisonCause::WriteFailed,
            ..
        })
    ));
    drop(wal);
    // Reopen on the still-full disk (no crash), then after a crash: both keep every
    // durable entry.
    for crash in [false, true] {
        if crash {
            disk.crash(Tear::DiscardUnsynced);
        }
        let wal = WalCore::open(disk.clone(), small_options()).unwrap();
        assert!(wal.last_index() >= durable, "crash={crash}");
        for index in 1..=durable {
            assert_eq!(
                wal.read(index).unwrap(),
                entry(index, 1, 100),
                "crash={crash}"
            );
        }
    }
}

fn sim_wal(disk: &SimStorage) -> Wal<SimStorage> {
    let options = GroupCommitOptions {
        wal: small_options(),
        backend: Backend::Sync,
        ..GroupCommitOptions::default()
    };
    Wal::open_on(disk.clone(), options).unwrap()
}

#[test]
fn failed_fsync_in_group_commit_fails_every_waiter_and_stops_all_writes() {
    let disk = SimStorage::new();
    let wal = sim_wal(&disk);
    wal.append_assign(1, 0, &[Bytes::from_static(b"durable")])
        .unwrap()
        .wait()
        .unwrap();
    disk.fail_next_syncs(1);
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                for i in 0..20u8 {
                    match wal.append_assign(1, 0, &[Bytes::from(vec![thread, i])]) {
                        Ok(ticket) => outcomes.push(ticket.wait()),
                        Err(err) => outcomes.push(Err(err)),
                    }
                }
                outcomes
            })
        })
        .collect();
    let outcomes: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let failures = outcomes.iter().filter(|o| o.is_err()).count();
    assert!(failures > 0);
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            Err(WalError::Poisoned {
                cause: PoisonCause::SyncFailed,
                ..
            })
        )),
        "every append after the failed fsync fails with a fail-stop error: {outcomes:?}"
    );
    let (writes, syncs) = (disk.write_calls(), disk.sync_calls());
    assert!(matches!(
        wal.append_assign(1, 0, &[Bytes::from_static(b"x")]),
        Err(WalError::Poisoned { .. })
    ));
    assert!(matches!(wal.flush(), Err(WalError::Poisoned { .. })));
    assert_eq!(
        (disk.write_calls(), disk.sync_calls()),
        (writes, syncs),
        "no write or fsync after the failure"
    );
    assert_eq!(wal.durable_index(), 1);
}

#[test]
fn disk_full_in_group_commit_fails_tickets_with_no_space() {
    let disk = SimStorage::new();
    let wal = sim_wal(&disk);
    wal.append_assign(1, 0, &[Bytes::from(vec![1u8; 100])])
        .unwrap()
        .wait()
        .unwrap();
    disk.set_space_limit(Some(disk.used_bytes()));
    let mut first_error = None;
    for _ in 0..200 {
        let outcome = wal
            .append_assign(1, 0, &[Bytes::from(vec![2u8; 200])])
            .and_then(|t| t.wait());
        if let Err(err) = outcome {
            first_error = Some(err);
            break;
        }
    }
    let err = first_error.expect("the disk fills up");
    assert!(matches!(err, WalError::NoSpace { .. }), "{err}");
    let durable = wal.durable_index();
    drop(wal);
    disk.crash(Tear::DiscardUnsynced);
    disk.set_space_limit(None);
    let core = WalCore::open(disk, small_options()).unwrap();
    assert!(core.last_index() >= durable);
    assert_eq!(core.read(1).unwrap().payload, Bytes::from(vec![1u8; 100]));
}
