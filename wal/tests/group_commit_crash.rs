//! Acknowledged means durable, through the threaded group-commit path: many appenders
//! run while the simulated disk loses power (tearing the unsynced tail at a seeded byte);
//! every append whose ticket resolved Ok before or after the crash must be recovered
//! with its exact payload, and nothing else may appear out of order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tally_wal::{Backend, GroupCommitOptions, SimStorage, Tear, Wal, WalCore, WalOptions};

fn options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 16 * 1024,
        max_entry_size_bytes: 1024,
        ..WalOptions::default()
    }
}

#[test]
fn every_acknowledged_append_survives_a_power_loss_during_concurrent_appends() {
    for seed in 0..6u64 {
        let disk = SimStorage::new();
        let wal_options = GroupCommitOptions {
            wal: options(),
            backend: Backend::Sync,
            max_pending_bytes: 4096,
            ..GroupCommitOptions::default()
        };
        let wal = Wal::open_on(disk.clone(), wal_options).expect("open");
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4u8)
            .map(|writer| {
                let wal = wal.clone();
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut acknowledged = Vec::new();
                    let mut seq = 0u32;
                    while !stop.load(Ordering::Relaxed) && seq < 2000 {
                        let payload = Bytes::from(format!(
                            "w{writer}-{seq}-{}",
                            "x".repeat((seq % 40) as usize)
                        ));
                        let Ok(ticket) =
                            wal.append_assign(1, writer, std::slice::from_ref(&payload))
                        else {
                            break;
                        };
                        let index = ticket.last_index();
                        match ticket.wait() {
                            Ok(_) => acknowledged.push((index, payload)),
                            Err(_) => break,
                        }
                        seq += 1;
                    }
                    acknowledged
                })
            })
            .collect();
        // Let some batches complete, then pull the plug while appends are in flight.
        while wal.durable_index() < 200 + seed * 50 {
            std::thread::yield_now();
        }
        disk.crash(Tear::Seeded(seed));
        stop.store(true, Ordering::Relaxed);
        let acknowledged: Vec<(u64, Bytes)> = writers
            .into_iter()
            .flat_map(|w| w.join().expect("writer"))
            .collect();
        drop(wal);
        let core = WalCore::open(disk, options()).expect("recovery after power loss");
        let max_acknowledged = acknowledged
            .iter()
            .map(|(index, _)| *index)
            .max()
            .expect("some appends acknowledged");
        assert!(
            core.last_index() >= max_acknowledged,
            "seed {seed}: acknowledged index {max_acknowledged} lost (recovered up to {})",
            core.last_index()
        );
        for (index, payload) in &acknowledged {
            assert_eq!(
                &core.read(*index).expect("read").payload,
                payload,
                "seed {seed}: acknowledged entry {index} differs"
            );
        }
        // Whatever was recovered beyond the acknowledged entries is well-formed.
        for index in 1..=core.last_index() {
            let entry = core.read(index).expect("read");
            assert!(
                entry.payload.starts_with(b"w"),
                "seed {seed}: garbage at {index}"
            );
        }
    }
}
