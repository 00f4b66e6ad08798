//! The simulator's per-node disk: the real `tally-wal` log over `tally-wal`'s
//! fault-injecting in-memory disk, behind the driver's [`LogWriter`] seam.
//!
//! The node driver turns persist actions into WAL operations exactly as in production;
//! here they are staged into a `WalCore`, written when the node's turn ends and made
//! durable when the simulated fsync completes. A crash tears the last unsynced write at
//! an arbitrary byte, and the restarting node reads the log back through real recovery.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::driver::LogWriter;
use crate::raft::{Entry, HardState};

/// What a restarted node is rebuilt from.
#[derive(Clone, Debug, Default)]
pub struct RecoveredState {
    /// Term and vote as last made durable.
    pub hard_state: HardState,
    /// The durable log entries, in index order.
    pub entries: Vec<Entry>,
}

/// A node's disk as the real `tally-wal` log over `tally-wal`'s fault-injecting
/// in-memory disk: the simulator then exercises the production encoding, recovery,
/// truncation records and hard-state records, and a crash tears the last unsynced
/// write at an arbitrary byte exactly as a power cut would.
///
/// One persist action is staged as one WAL batch (hard state, truncation, entries) and
/// written with one `write`; `sync` is one fdatasync of everything written so far (a
/// real disk may make more durable than was asked: that is allowed).
pub struct WalStorage {
    disk: tally_wal::SimStorage,
    /// `None` only transiently while reopening after a crash.
    log: Option<tally_wal::WalCore<tally_wal::SimStorage>>,
    /// Operations staged so far (tickets are their numbers). Invariant:
    /// `durable_ops <= written_ops <= staged_ops`; all three restart at 0 on a crash.
    staged_ops: u64,
    written_ops: u64,
    durable_ops: u64,
    /// Room of the log (see `LogWriter::has_room`): at most this many operations not
    /// yet durable, like the runtime WAL's pending buffer behind a slow fsync; any
    /// operation fits while none is waiting.
    max_unsynced_ops: u64,
}

impl WalStorage {
    /// A fresh, empty disk with small segments so rolls and multi-segment recovery
    /// happen in short simulations.
    pub fn new() -> WalStorage {
        let disk = tally_wal::SimStorage::new();
        let log = Self::open(&disk);
        WalStorage {
            disk,
            log: Some(log),
            staged_ops: 0,
            written_ops: 0,
            durable_ops: 0,
            max_unsynced_ops: u64::MAX,
        }
    }

    /// Bounds the operations not yet durable (the driver then defers the rest).
    pub fn with_max_unsynced_ops(mut self, max_unsynced_ops: u64) -> WalStorage {
        self.max_unsynced_ops = max_unsynced_ops.max(1);
        self
    }

    fn options() -> tally_wal::WalOptions {
        tally_wal::WalOptions {
            segment_size_bytes: 256 << 10,
            max_entry_size_bytes: 16 << 10,
            ..Default::default()
        }
    }

    fn open(disk: &tally_wal::SimStorage) -> tally_wal::WalCore<tally_wal::SimStorage> {
        // The simulated disk injects no I/O errors, so a failure here is a WAL bug
        // (e.g. recovery refusing a log that only ever saw crashes): stop loudly.
        match tally_wal::WalCore::open(disk.clone(), Self::options()) {
            Ok(log) => log,
            Err(error) => panic!("the WAL did not recover a crash-only disk: {error}"),
        }
    }

    fn log(&mut self) -> &mut tally_wal::WalCore<tally_wal::SimStorage> {
        match self.log.as_mut() {
            Some(log) => log,
            None => unreachable!("the log is reopened before crash() returns"),
        }
    }
}

impl Default for WalStorage {
    fn default() -> Self {
        WalStorage::new()
    }
}

/// The WAL rejects only what Raft never does (gaps, term regressions, vote changes
/// within a term) and the simulated disk injects no I/O errors: a failure is a bug,
/// reported loudly (the simulator counts a panic as a violation of its seed).
fn expect_wal<T>(result: tally_wal::Result<T>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("the simulated WAL refused {what}: {error}"),
    }
}

impl WalStorage {
    fn staged(&mut self) -> u64 {
        self.staged_ops += 1;
        self.staged_ops
    }

    /// A handle to the node's simulated disk (snapshot files live beside the WAL).
    pub fn disk(&self) -> tally_wal::SimStorage {
        self.disk.clone()
    }

    /// First index the recovered log holds.
    pub fn first_index(&self) -> u64 {
        match self.log.as_ref() {
            Some(log) => log.first_index(),
            None => unreachable!("the log is reopened before crash() returns"),
        }
    }

    /// Deletes whole WAL segments whose entries are all `<= up_to_index`. The WAL
    /// writes and syncs everything pending first, so every staged operation is durable
    /// afterwards (a disk may make more durable than was asked).
    pub fn compact_prefix(&mut self, up_to_index: u64) -> tally_wal::Result<()> {
        self.log().compact_prefix(up_to_index)?;
        self.written_ops = self.staged_ops;
        self.durable_ops = self.staged_ops;
        Ok(())
    }

    /// Whether operations were staged since the last write.
    pub fn has_unwritten(&self) -> bool {
        self.staged_ops > self.written_ops
    }

    /// Writes everything staged (one WAL batch, not yet durable); returns the highest
    /// operation the next fsync will cover.
    pub fn write_staged(&mut self) -> u64 {
        expect_wal(self.log().write(), "a write");
        self.written_ops = self.staged_ops;
        self.written_ops
    }

    /// One fdatasync of everything written so far (a real disk may make more durable
    /// than was asked: that is allowed).
    pub fn sync_written(&mut self) {
        let written = self.written_ops;
        expect_wal(self.log().sync(), "an fdatasync");
        self.durable_ops = self.durable_ops.max(written);
    }

    /// The node crashed: drop the open log (its in-memory state dies with the process),
    /// tear the disk, then recover the way a restarting node does.
    pub fn crash(&mut self, rng: &mut ChaCha8Rng) {
        self.log = None;
        self.disk.crash(tally_wal::Tear::Seeded(rng.gen()));
        self.log = Some(Self::open(&self.disk));
        self.staged_ops = 0;
        self.written_ops = 0;
        self.durable_ops = 0;
    }

    /// The durable state, as a restarting node reads it.
    pub fn recover(&self) -> RecoveredState {
        let Some(log) = self.log.as_ref() else {
            unreachable!("the log is reopened before crash() returns")
        };
        let durable = log.durable_hard_state();
        let hard_state = HardState {
            term: durable.term,
            voted_for: (durable.vote != 0).then_some(durable.vote),
        };
        let range = log.first_index()..log.last_index() + 1;
        let entries = expect_wal(log.read_range(range), "reading back the recovered log");
        let entries = entries
            .into_iter()
            .map(|entry| Entry {
                index: entry.index,
                term: entry.term,
                kind: match crate::raft::EntryKind::from_u8(entry.kind) {
                    Some(kind) => kind,
                    None => panic!(
                        "entry {} has a kind no one wrote: {}",
                        entry.index, entry.kind
                    ),
                },
                data: entry.payload,
            })
            .collect();
        RecoveredState {
            hard_state,
            entries,
        }
    }
}

impl LogWriter for WalStorage {
    type Ticket = u64;

    fn set_hard_state(&mut self, hard_state: tally_wal::HardState) -> tally_wal::Result<u64> {
        self.log().set_hard_state(hard_state)?;
        Ok(self.staged())
    }

    fn truncate_suffix(&mut self, from_index: u64) -> tally_wal::Result<u64> {
        self.log().truncate_suffix(from_index)?;
        Ok(self.staged())
    }

    fn append(&mut self, entries: &[tally_wal::Entry]) -> tally_wal::Result<u64> {
        self.log().append(entries)?;
        Ok(self.staged())
    }

    fn reset(&mut self, next_index: u64) -> tally_wal::Result<u64> {
        self.log().reset(next_index)?;
        Ok(self.staged())
    }

    fn barrier(&mut self) -> tally_wal::Result<u64> {
        Ok(self.staged())
    }

    fn max_append_bytes(&self) -> usize {
        usize::MAX
    }

    fn has_room(&self, _bytes: usize, _entries: usize) -> bool {
        let unsynced = self.staged_ops - self.durable_ops;
        unsynced == 0 || unsynced < self.max_unsynced_ops
    }

    fn is_durable(&self, ticket: &u64) -> bool {
        *ticket <= self.durable_ops
    }

    fn finish(&mut self, _ticket: u64) -> tally_wal::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn entries(term: u64, first: u64, n: u64) -> Vec<tally_wal::Entry> {
        (first..first + n)
            .map(|index| tally_wal::Entry {
                index,
                term,
                kind: crate::raft::EntryKind::Normal.as_u8(),
                payload: bytes::Bytes::new(),
            })
            .collect()
    }

    fn hard(term: u64) -> tally_wal::HardState {
        tally_wal::HardState { term, vote: 0 }
    }

    #[test]
    fn crash_keeps_synced_writes_and_at_most_a_prefix_of_unsynced_ones() {
        for seed in 0..50 {
            let mut storage = WalStorage::new();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            storage.set_hard_state(hard(1)).expect("hard state");
            storage.append(&entries(1, 1, 3)).expect("append");
            storage.write_staged();
            storage.sync_written();
            storage.set_hard_state(hard(2)).expect("hard state");
            storage.append(&entries(2, 4, 2)).expect("append");
            storage.write_staged();
            storage.set_hard_state(hard(3)).expect("hard state");
            storage.truncate_suffix(3).expect("truncate");
            storage.append(&entries(3, 3, 1)).expect("append");
            storage.write_staged();
            storage.crash(&mut rng);
            let recovered = storage.recover();
            let terms: Vec<u64> = recovered.entries.iter().map(|e| e.term).collect();
            // Synced prefix always there; then nothing, the second batch, or both.
            assert!(
                terms == [1, 1, 1] || terms == [1, 1, 1, 2, 2] || terms == [1, 1, 3],
                "seed {seed}: recovered {terms:?}"
            );
            assert_eq!(recovered.hard_state.term, *terms.last().unwrap_or(&0));
        }
    }

    #[test]
    fn tickets_become_durable_only_after_the_fsync_that_covers_them() {
        let mut storage = WalStorage::new();
        let first = storage.append(&entries(1, 1, 2)).expect("append");
        assert!(!storage.is_durable(&first));
        storage.write_staged();
        assert!(!storage.is_durable(&first), "written is not durable");
        let second = storage.append(&entries(1, 3, 1)).expect("append");
        storage.sync_written();
        assert!(storage.is_durable(&first));
        assert!(!storage.is_durable(&second), "staged after the write");
    }

    #[test]
    fn room_is_bounded_by_operations_not_yet_durable() {
        let mut storage = WalStorage::new().with_max_unsynced_ops(2);
        assert!(
            storage.has_room(1 << 30, 1 << 20),
            "an idle log takes anything"
        );
        storage.append(&entries(1, 1, 1)).expect("append");
        assert!(storage.has_room(0, 1));
        storage.append(&entries(1, 2, 1)).expect("append");
        assert!(!storage.has_room(0, 1), "two operations wait for the disk");
        storage.write_staged();
        assert!(!storage.has_room(0, 1), "written is not durable");
        storage.sync_written();
        assert!(storage.has_room(0, 1));
    }
}
