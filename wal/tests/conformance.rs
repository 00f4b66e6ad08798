//! One contract, two I/O backends: every scenario here runs against the pwritev backend
//! and the io_uring backend over real files (the io_uring runs are skipped with a notice
//! only if the kernel refuses to create a ring).

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{entries, entry};
use tally_wal::{
    Backend, GroupCommitOptions, HardState, UringBackend, Wal, WalCore, WalError, WalOptions,
};

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn options(backend: Backend, segment_size_bytes: u64) -> GroupCommitOptions {
    GroupCommitOptions {
        wal: WalOptions {
            segment_size_bytes,
            max_entry_size_bytes: 16 * 1024,
            ..WalOptions::default()
        },
        backend,
        max_pending_bytes: 64 * 1024,
        max_pending_entries: 512,
        durable_subscriber: None,
        emulated_sync_delay: None,
    }
}

fn available(backend: Backend) -> bool {
    if backend == Backend::Uring {
        if let Err(err) = UringBackend::new() {
            println!("NOTICE: skipping io_uring conformance run: kernel refused a ring ({err})");
            return false;
        }
    }
    true
}

fn reopen_core(dir: &Path) -> WalCore<tally_wal::FsStorage> {
    WalCore::open(
        tally_wal::FsStorage::new(dir).expect("dir"),
        WalOptions {
            segment_size_bytes: 256 * 1024,
            max_entry_size_bytes: 16 * 1024,
            ..WalOptions::default()
        },
    )
    .expect("reopen")
}

fn concurrent_appenders_get_unique_contiguous_durable_indexes(backend: Backend) {
    if !available(backend) {
        return;
    }
    let dir = temp_dir();
    let wal = Wal::open(dir.path(), options(backend, 256 * 1024)).expect("open");
    let expected_backend = if backend == Backend::Uring {
        "uring"
    } else {
        "sync"
    };
    assert_eq!(wal.backend_name(), expected_backend);
    const THREADS: u32 = 8;
    const APPENDS: u32 = 150;
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let mut tickets = Vec::new();
                for seq in 0..APPENDS {
                    let payloads: Vec<Bytes> = (0..1 + seq % 3)
                        .map(|part| Bytes::from(format!("{thread}:{seq}:{part}")))
                        .collect();
                    tickets.push(wal.append_assign(1, 0, &payloads).expect("append"));
                    if seq % 16 == 0 {
                        // Mix in a blocking caller.
                        tickets.pop().expect("ticket").wait().expect("durable");
                    }
                }
                tickets
                    .into_iter()
                    .map(|t| t.wait().expect("durable"))
                    .max()
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("thread");
    }
    let total: u64 = (0..APPENDS).map(|seq| 1 + (seq % 3) as u64).sum::<u64>() * THREADS as u64;
    assert_eq!(
        wal.durable_index(),
        total,
        "every entry durable, indexes contiguous"
    );
    let stats = wal.stats();
    assert_eq!(stats.entries, total);
    assert!(stats.batches >= 1 && stats.batches <= total);
    assert_eq!(stats.emulated_sync_delay_us, 0, "no emulation unless asked");
    // Every payload exactly once, and each thread's appends in index order.
    let mut seen = HashSet::new();
    let mut last_seq_per_thread = vec![None::<(u32, u32)>; THREADS as usize];
    for index in 1..=total {
        let entry = wal.read(index).expect("read");
        let text = String::from_utf8(entry.payload.to_vec()).expect("utf8");
        assert!(seen.insert(text.clone()), "duplicate payload {text}");
        let parts: Vec<u32> = text
            .split(':')
            .map(|p| p.parse().expect("number"))
            .collect();
        let position = (parts[1], parts[2]);
        let previous = last_seq_per_thread[parts[0] as usize].replace(position);
        assert!(
            previous < Some(position),
            "thread {} appends out of order at {index}",
            parts[0]
        );
    }
    assert_eq!(seen.len() as u64, total);
    drop(wal);
    let core = reopen_core(dir.path());
    assert_eq!(core.last_index(), total, "all durable entries recovered");
}

fn caller_indexed_appends_truncation_and_hard_state_survive_reopen(backend: Backend) {
    if !available(backend) {
        return;
    }
    let dir = temp_dir();
    let (sender, receiver) = crossbeam_channel::unbounded();
    let mut opts = options(backend, 256 * 1024);
    opts.durable_subscriber = Some(sender);
    let wal = Wal::open(dir.path(), opts).expect("open");
    wal.set_hard_state(HardState { term: 2, vote: 1 })
        .expect("hs");
    wal.append(&entries(1..=10, 2, 50))
        .expect("append")
        .wait()
        .expect("durable");
    assert!(matches!(
        wal.append(&entries(12..=12, 2, 1)),
        Err(WalError::IndexGap {
            expected: 11,
            got: 12
        })
    ));
    assert!(matches!(
        wal.append(&entries(11..=11, 1, 1)),
        Err(WalError::OutOfOrder { index: 11, .. })
    ));
    assert!(matches!(
        wal.set_hard_state(HardState { term: 2, vote: 3 }),
        Err(WalError::HardStateRegression { .. })
    ));
    // A follower drops a conflicting suffix and appends the leader's entries, with the
    // new term, in one ordered sequence.
    let doomed = wal.append(&entries(11..=12, 2, 50)).expect("append");
    wal.set_hard_state(HardState { term: 3, vote: 2 })
        .expect("hs");
    wal.truncate_suffix(8).expect("truncate");
    let ticket = wal.append(&entries(8..=9, 3, 60)).expect("append");
    let untouched = wal.barrier().expect("barrier");
    assert_eq!(
        untouched.wait().expect("barrier resolves"),
        9,
        "a barrier after the truncation is not truncated"
    );
    assert!(
        matches!(doomed.wait(), Err(WalError::Truncated { index: 12 })),
        "a ticket whose entries were truncated never reports success"
    );
    assert_eq!(ticket.wait().expect("durable"), 9);
    assert_eq!(wal.durable_hard_state(), HardState { term: 3, vote: 2 });
    let published: Vec<u64> = receiver.try_iter().collect();
    assert_eq!(
        published.last(),
        Some(&9),
        "subscriber sees the durable index: {published:?}"
    );
    drop(wal);
    let core = reopen_core(dir.path());
    assert_eq!(core.last_index(), 9);
    assert_eq!(core.hard_state(), HardState { term: 3, vote: 2 });
    assert_eq!(core.read(7).expect("read"), entry(7, 2, 50));
    assert_eq!(core.read(8).expect("read"), entry(8, 3, 60));
}

fn batches_roll_across_segments_and_large_entries_round_trip(backend: Backend) {
    if !available(backend) {
        return;
    }
    let dir = temp_dir();
    let wal = Wal::open(dir.path(), options(backend, 64 * 1024)).expect("open");
    let mut expected = Vec::new();
    for round in 0..40u64 {
        let payloads: Vec<Bytes> = (0..4)
            .map(|i| {
                common::payload_for(round * 4 + i + 1, 1, 1000 + (round as usize * 331) % 15000)
            })
            .collect();
        expected.extend(payloads.iter().cloned());
        wal.append_assign(1, 7, &payloads).expect("append");
    }
    let durable = wal.flush().expect("flush");
    assert_eq!(durable, 160);
    for (position, payload) in expected.iter().enumerate() {
        let read = wal.read(position as u64 + 1).expect("read");
        assert_eq!(&read.payload, payload);
        assert_eq!(read.kind, 7);
    }
    let too_big = Bytes::from(vec![0u8; 16 * 1024 + 1]);
    assert!(matches!(
        wal.append_assign(1, 0, &[too_big]),
        Err(WalError::EntryTooLarge { .. })
    ));
    let removed = wal.compact_prefix(100).expect("compact");
    assert!(removed >= 1, "several 64 KiB segments were written");
    let first = wal.first_index();
    assert!(first > 1 && first <= 101);
    drop(wal);
    let core = WalCore::open(
        tally_wal::FsStorage::new(dir.path()).expect("dir"),
        WalOptions {
            segment_size_bytes: 64 * 1024,
            max_entry_size_bytes: 16 * 1024,
            ..WalOptions::default()
        },
    )
    .expect("reopen");
    assert_eq!((core.first_index(), core.last_index()), (first, 160));
    for index in first..=160 {
        assert_eq!(
            core.read(index).expect("read").payload,
            expected[index as usize - 1]
        );
    }
}

fn a_locked_directory_cannot_be_opened_twice(backend: Backend) {
    if !available(backend) {
        return;
    }
    let dir = temp_dir();
    let wal = Wal::open(dir.path(), options(backend, 64 * 1024)).expect("open");
    assert!(matches!(
        Wal::open(dir.path(), options(backend, 64 * 1024)),
        Err(WalError::Locked { .. })
    ));
    drop(wal);
    Wal::open(dir.path(), options(backend, 64 * 1024)).expect("reopen after close");
}

fn each_synced_batch_waits_at_least_the_emulated_sync_delay(backend: Backend) {
    if !available(backend) {
        return;
    }
    const DELAY: Duration = Duration::from_millis(15);
    const BATCHES: u32 = 5;
    let dir = temp_dir();
    let wal = Wal::open(
        dir.path(),
        GroupCommitOptions {
            emulated_sync_delay: Some(DELAY),
            ..options(backend, 256 * 1024)
        },
    )
    .expect("open");
    assert_eq!(wal.emulated_sync_delay(), Some(DELAY));
    let started = Instant::now();
    for seq in 0..BATCHES {
        // One blocking caller: every append is its own batch and its own fdatasync.
        let durable = wal
            .append_assign(1, 0, &[Bytes::from(format!("entry {seq}"))])
            .expect("append")
            .wait()
            .expect("durable");
        assert_eq!(durable, u64::from(seq) + 1);
    }
    let elapsed = started.elapsed();
    // A lower bound only: a slow machine can take longer, never shorter.
    assert!(
        elapsed >= DELAY * BATCHES,
        "{BATCHES} synced batches took {elapsed:?}, less than {BATCHES} x {DELAY:?}"
    );
    let stats = wal.stats();
    assert_eq!(stats.batches, u64::from(BATCHES));
    assert_eq!(stats.emulated_sync_delay_us, DELAY.as_micros() as u64);
    assert!(
        stats.fsync_total_us >= stats.emulated_sync_delay_us * u64::from(BATCHES),
        "the recorded fsync latency includes the emulated delay: {stats:?}"
    );
    drop(wal);
    assert_eq!(reopen_core(dir.path()).last_index(), u64::from(BATCHES));
}

fn batching_keeps_growing_while_the_emulated_delay_holds_the_writer(backend: Backend) {
    if !available(backend) {
        return;
    }
    const THREADS: u64 = 16;
    const APPENDS_PER_THREAD: u64 = 12;
    let dir = temp_dir();
    let wal = Wal::open(
        dir.path(),
        GroupCommitOptions {
            emulated_sync_delay: Some(Duration::from_millis(20)),
            ..options(backend, 256 * 1024)
        },
    )
    .expect("open");
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                for seq in 0..APPENDS_PER_THREAD {
                    // Blocking callers: one append outstanding per thread.
                    wal.append_assign(1, 0, &[Bytes::from(format!("{thread}:{seq}"))])
                        .expect("append")
                        .wait()
                        .expect("durable");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("appender thread");
    }
    let entries = THREADS * APPENDS_PER_THREAD;
    assert_eq!(wal.durable_index(), entries);
    let stats = wal.stats();
    assert_eq!(stats.entries, entries);
    // While the writer sleeps, the other appenders queue into the next batch: far fewer
    // fdatasyncs than entries (one per entry would mean group commit stopped working).
    assert!(
        stats.batches * 2 <= entries,
        "{} fsyncs for {entries} entries from {THREADS} concurrent appenders",
        stats.batches
    );
}

fn has_room_says_no_while_the_pending_buffer_is_full_and_yes_once_the_writer_takes_it(
    backend: Backend,
) {
    if !available(backend) {
        return;
    }
    let dir = temp_dir();
    let wal = Wal::open(
        dir.path(),
        GroupCommitOptions {
            emulated_sync_delay: Some(Duration::from_millis(200)),
            ..options(backend, 1024 * 1024)
        },
    )
    .expect("open");
    let payload = Bytes::from(vec![7u8; 8 * 1024]);
    let entry_bytes = tally_wal::ENTRY_RECORD_HEADER_LEN + payload.len();
    assert!(wal.has_room(entry_bytes, 1), "an idle WAL has room");
    // A non-blocking appender: asks first, never calls append without room. The
    // writer holds at most one batch in its (emulated) fsync meanwhile, so the 64 KiB
    // buffer fills within a few dozen appends.
    let mut tickets = Vec::new();
    let mut index = 1;
    while index <= 64 && wal.has_room(entry_bytes, 1) {
        let entry = tally_wal::Entry {
            index,
            term: 1,
            kind: 0,
            payload: payload.clone(),
        };
        tickets.push(wal.append(&[entry]).expect("append with room"));
        index += 1;
    }
    assert!(
        !wal.has_room(entry_bytes, 1),
        "the buffer filled up ({} appends)",
        index - 1
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !wal.has_room(entry_bytes, 1) {
        assert!(
            Instant::now() < deadline,
            "the writer never took the full buffer"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for ticket in tickets {
        ticket.wait().expect("durable");
    }
    assert_eq!(wal.durable_index(), index - 1);
}

macro_rules! conformance_suite {
    ($module:ident, $backend:expr) => {
        mod $module {
            #[test]
            fn concurrent_appenders_get_unique_contiguous_durable_indexes() {
                super::concurrent_appenders_get_unique_contiguous_durable_indexes($backend);
            }
            #[test]
            fn caller_indexed_appends_truncation_and_hard_state_survive_reopen() {
                super::caller_indexed_appends_truncation_and_hard_state_survive_reopen($backend);
            }
            #[test]
            fn batches_roll_across_segments_and_large_entries_round_trip() {
                super::batches_roll_across_segments_and_large_entries_round_trip($backend);
            }
            #[test]
            fn each_synced_batch_waits_at_least_the_emulated_sync_delay() {
                super::each_synced_batch_waits_at_least_the_emulated_sync_delay($backend);
            }
            #[test]
            fn batching_keeps_growing_while_the_emulated_delay_holds_the_writer() {
                super::batching_keeps_growing_while_the_emulated_delay_holds_the_writer($backend);
            }
            #[test]
            fn has_room_says_no_while_the_pending_buffer_is_full_and_yes_once_the_writer_takes_it() {
                super::has_room_says_no_while_the_pending_buffer_is_full_and_yes_once_the_writer_takes_it($backend);
            }
            #[test]
            fn a_locked_directory_cannot_be_opened_twice() {
                super::a_locked_directory_cannot_be_opened_twice($backend);
            }
        }
    };
}

conformance_suite!(pwritev_backend, tally_wal::Backend::Sync);
conformance_suite!(io_uring_backend, tally_wal::Backend::Uring);
