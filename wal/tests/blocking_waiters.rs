//! Many blocking callers on one `Wal`: each parked waiter is woken by the batch that
//! satisfies it (never left parked, including callers queued behind a batch in flight,
//! which sleep on the other futex word), a failed fsync reaches every parked caller and
//! nothing is written or synced after it, and a caller's return means its own entries
//! are durable.
//!
//! The simulated disk plus an emulated sync delay keeps each batch in flight long enough
//! for dozens of callers to be parked at once, which is the path these tests exercise.

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use bytes::Bytes;
use tally_wal::{Backend, GroupCommitOptions, PoisonCause, SimStorage, Wal, WalError, WalOptions};

/// Generous bound for "nobody hangs" on a slow, shared machine.
const HANG_DEADLINE: Duration = Duration::from_secs(120);

fn slow_sim_wal(disk: &SimStorage) -> Wal<SimStorage> {
    let options = GroupCommitOptions {
        wal: WalOptions {
            segment_size_bytes: 1 << 20,
            max_entry_size_bytes: 1024,
            ..WalOptions::default()
        },
        backend: Backend::Sync,
        emulated_sync_delay: Some(Duration::from_millis(2)),
        ..GroupCommitOptions::default()
    };
    Wal::open_on(disk.clone(), options).unwrap()
}

/// Collects one result per caller thread, failing the test instead of hanging.
fn collect<T>(receiver: &mpsc::Receiver<T>, callers: usize) -> Vec<T> {
    (0..callers)
        .map(|caller| {
            receiver
                .recv_timeout(HANG_DEADLINE)
                .unwrap_or_else(|_| panic!("caller {caller} of {callers} never returned"))
        })
        .collect()
}

#[test]
fn sixty_four_blocking_callers_see_a_failed_fsync_and_none_hangs() {
    let disk = SimStorage::new();
    let wal = slow_sim_wal(&disk);
    let callers = 64;
    let start = Arc::new(Barrier::new(callers + 1));
    let (sender, receiver) = mpsc::channel();
    for caller in 0..callers {
        let (wal, start, sender) = (wal.clone(), Arc::clone(&start), sender.clone());
        std::thread::spawn(move || {
            start.wait();
            let payload = [Bytes::from(vec![caller as u8; 16])];
            let mut durable_appends = 0u64;
            // Half wait on their ticket, half on the durable index: both park.
            let error = loop {
                let outcome = wal.append_assign(1, 0, &payload).and_then(|ticket| {
                    if caller % 2 == 0 {
                        ticket.wait()
                    } else {
                        wal.wait_durable(ticket.last_index())
                    }
                });
                match outcome {
                    Ok(_) => durable_appends += 1,
                    Err(err) => break err,
                }
            };
            let _ = sender.send((durable_appends, error));
        });
    }
    start.wait();
    // Let the callers reach steady state (batches of parked callers), then fail a sync.
    let deadline = std::time::Instant::now() + HANG_DEADLINE;
    while wal.stats().batches < 20 {
        assert!(std::time::Instant::now() < deadline, "no batches written");
        std::thread::sleep(Duration::from_millis(5));
    }
    disk.fail_next_syncs(1);
    let outcomes = collect(&receiver, callers);
    for (durable_appends, error) in &outcomes {
        assert!(
            matches!(
                error,
                WalError::Poisoned {
                    cause: PoisonCause::SyncFailed,
                    ..
                }
            ),
            "every caller fails with the fail-stop error, got {error:?} after {durable_appends} appends"
        );
    }
    assert!(
        wal.stats().entries_per_fsync() > 1.0,
        "callers were grouped"
    );
    // Fail-stop: after the failed fsync nothing is written or synced again.
    let calls = (disk.write_calls(), disk.sync_calls());
    assert!(matches!(wal.flush(), Err(WalError::Poisoned { .. })));
    assert!(wal
        .append_assign(1, 0, &[Bytes::from_static(b"late")])
        .is_err());
    assert_eq!((disk.write_calls(), disk.sync_calls()), calls, "no retry");
}

#[test]
fn callers_queued_behind_a_batch_in_flight_return_only_after_their_own_batch() {
    let disk = SimStorage::new();
    let wal = slow_sim_wal(&disk);
    for round in 0..10 {
        // The first caller's batch is in flight (its write issued, the emulated sync
        // delay running) when the other callers queue: theirs is the next batch, whose
        // waiters sleep on the other futex word.
        let writes_before = disk.write_calls();
        let first = wal
            .append_assign(1, 0, &[Bytes::from_static(b"first")])
            .unwrap();
        let first_index = first.last_index();
        let deadline = std::time::Instant::now() + HANG_DEADLINE;
        while disk.write_calls() == writes_before {
            assert!(std::time::Instant::now() < deadline, "batch never written");
            std::thread::yield_now();
        }
        let (sender, receiver) = mpsc::channel();
        for _ in 0..8 {
            let (wal, sender) = (wal.clone(), sender.clone());
            std::thread::spawn(move || {
                let ticket = wal
                    .append_assign(1, 0, &[Bytes::from_static(b"behind")])
                    .unwrap();
                let index = ticket.last_index();
                let _ = sender.send((index, ticket.wait(), wal.durable_index()));
            });
        }
        assert!(first.wait().unwrap() >= first_index);
        for (index, outcome, durable_after) in collect(&receiver, 8) {
            let durable = outcome.unwrap();
            assert!(
                durable >= index && durable_after >= index,
                "round {round}: entry {index} returned at durable index {durable}"
            );
            assert!(
                index > first_index,
                "round {round}: queued behind the first"
            );
        }
    }
    assert_eq!(wal.flush().unwrap(), 90);
}

#[test]
fn blocking_callers_return_only_once_their_own_entries_are_durable() {
    let disk = SimStorage::new();
    let wal = slow_sim_wal(&disk);
    let callers = 32;
    let rounds = 20;
    let start = Arc::new(Barrier::new(callers));
    let (sender, receiver) = mpsc::channel();
    for caller in 0..callers {
        let (wal, start, sender) = (wal.clone(), Arc::clone(&start), sender.clone());
        std::thread::spawn(move || {
            start.wait();
            let payload = [Bytes::from(vec![caller as u8; 16])];
            let mut violations = Vec::new();
            for _ in 0..rounds {
                // Two tickets: the later one resolving implies the earlier one did.
                let first = wal.append_assign(1, 0, &payload).unwrap();
                let second = wal.append_assign(1, 0, &payload).unwrap();
                let first_index = first.last_index();
                let second_index = second.last_index();
                let durable = second.wait().unwrap();
                if durable < second_index || wal.durable_index() < second_index {
                    violations.push(format!("returned {durable} before {second_index}"));
                }
                if !first.is_ready() || first.wait().unwrap() < first_index {
                    violations.push(format!("{first_index} unresolved after {second_index}"));
                }
                // A waiter on an index still in flight is parked, then woken by its batch.
                let third = wal.append_assign(1, 0, &payload).unwrap().last_index();
                let durable = wal.wait_durable(third).unwrap();
                if durable < third {
                    violations.push(format!("wait_durable({third}) returned {durable}"));
                }
            }
            let _ = sender.send(violations);
        });
    }
    let violations: Vec<String> = collect(&receiver, callers).concat();
    assert!(violations.is_empty(), "{violations:?}");
    let durable = wal.flush().unwrap();
    assert_eq!(durable, (callers * rounds * 3) as u64);
    assert!(
        wal.stats().entries_per_fsync() > 1.0,
        "callers were grouped"
    );
}

#[test]
fn a_caller_waiting_for_an_index_nobody_writes_is_woken_by_a_later_failure() {
    let disk = SimStorage::new();
    let wal = slow_sim_wal(&disk);
    let (sender, receiver) = mpsc::channel();
    let waiter = wal.clone();
    std::thread::spawn(move || {
        let _ = sender.send(waiter.wait_durable(1_000));
    });
    // Batches that do not reach the waiter's index must leave it parked.
    for _ in 0..5 {
        wal.append_assign(1, 0, &[Bytes::from_static(b"x")])
            .unwrap()
            .wait()
            .unwrap();
    }
    assert!(
        receiver.try_recv().is_err(),
        "woken before its index was durable"
    );
    disk.fail_next_syncs(1);
    let ticket = wal
        .append_assign(1, 0, &[Bytes::from_static(b"y")])
        .unwrap();
    assert!(matches!(ticket.wait(), Err(WalError::Poisoned { .. })));
    let outcome = receiver
        .recv_timeout(HANG_DEADLINE)
        .expect("the parked waiter never saw the failure");
    assert!(
        matches!(
            outcome,
            Err(WalError::Poisoned {
                cause: PoisonCause::SyncFailed,
                ..
            })
        ),
        "{outcome:?}"
    );
}

#[test]
fn a_woken_caller_that_never_appends_again_does_not_hold_back_the_next_batch() {
    let disk = SimStorage::new();
    let wal = slow_sim_wal(&disk);
    for round in 0..20u8 {
        // Two callers parked on one batch are woken; the writer then expects two new
        // operations, but only one non-blocking append (the raft thread's way) follows.
        // Its ticket must still resolve.
        let ticket = wal
            .append_assign(1, 0, &[Bytes::from(vec![round])])
            .unwrap();
        let index = ticket.last_index();
        let other = wal.clone();
        let second_waiter = std::thread::spawn(move || other.wait_durable(index));
        ticket.wait().unwrap();
        second_waiter.join().unwrap().unwrap();
        let ticket = wal
            .append_assign(1, 0, &[Bytes::from(vec![round, 1])])
            .unwrap();
        let deadline = std::time::Instant::now() + HANG_DEADLINE;
        while !ticket.is_ready() {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the batch after a woken caller never started"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        assert_eq!(ticket.wait().unwrap(), u64::from(round) * 2 + 2);
    }
}
