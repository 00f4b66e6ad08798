//! The simulator's per-node durable storage, behind a small seam.
//!
//! [`SimStorage`] is what the simulator needs from a node's disk: accept persist
//! actions (written, not yet durable), make them durable up to a sequence number
//! (fsync), lose what was not synced on a crash, and give back the durable state on
//! restart. [`MemStorage`] implements it in memory; a WAL-backed implementation over
//! `tally-wal`'s fault-injecting disk plugs in here without touching the simulator.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::raft::{Entry, HardState, PersistAction};

/// What a restarted node is rebuilt from.
#[derive(Clone, Debug, Default)]
pub struct RecoveredState {
    pub hard_state: HardState,
    pub entries: Vec<Entry>,
}

/// A node's disk as the simulator sees it.
pub trait SimStorage {
    /// Writes an action (not yet durable). Actions arrive in sequence order.
    fn write(&mut self, action: &PersistAction);
    /// Makes every written action with `seq <= through_seq` durable.
    fn sync(&mut self, through_seq: u64);
    /// The node crashed: written-but-unsynced actions are lost, except that an
    /// arbitrary prefix of them may have reached the disk anyway.
    fn crash(&mut self, rng: &mut ChaCha8Rng);
    /// The durable state, as a restarting node reads it.
    fn recover(&self) -> RecoveredState;
}

/// In-memory storage with a durable/unsynced split.
#[derive(Debug, Default)]
pub struct MemStorage {
    durable: RecoveredState,
    /// Written but not synced, in sequence order.
    unsynced: Vec<PersistAction>,
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    fn make_durable(durable: &mut RecoveredState, action: &PersistAction) {
        if let Some(hard_state) = action.hard_state {
            durable.hard_state = hard_state;
        }
        if let Some(from) = action.truncate_from {
            durable.entries.retain(|entry| entry.index < from);
        }
        for entry in &action.entries {
            let expected = durable.entries.last().map_or(1, |last| last.index + 1);
            assert_eq!(
                entry.index, expected,
                "persist action leaves a gap in the durable log"
            );
            durable.entries.push(entry.clone());
        }
    }
}

impl SimStorage for MemStorage {
    fn write(&mut self, action: &PersistAction) {
        debug_assert!(self.unsynced.iter().all(|earlier| earlier.seq < action.seq));
        self.unsynced.push(action.clone());
    }

    fn sync(&mut self, through_seq: u64) {
        let n_done = self
            .unsynced
            .iter()
            .take_while(|action| action.seq <= through_seq)
            .count();
        for action in self.unsynced.drain(..n_done) {
            MemStorage::make_durable(&mut self.durable, &action);
        }
    }

    fn crash(&mut self, rng: &mut ChaCha8Rng) {
        // A prefix of unsynced writes may have been flushed by the OS anyway.
        let mut survivors = 0;
        while survivors < self.unsynced.len() && rng.gen_bool(0.5) {
            survivors += 1;
        }
        for action in self.unsynced.drain(..).take(survivors) {
            MemStorage::make_durable(&mut self.durable, &action);
        }
    }

    fn recover(&self) -> RecoveredState {
        self.durable.clone()
    }
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
        }
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
/// within a term); a rejection is a core bug, reported with the action.
fn expect_wal<T>(result: tally_wal::Result<T>, action: &PersistAction) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("the WAL refused persist action {}: {error}", action.seq),
    }
}

impl SimStorage for WalStorage {
    fn write(&mut self, action: &PersistAction) {
        let log = self.log();
        if let Some(hard_state) = action.hard_state {
            let stored = tally_wal::HardState {
                term: hard_state.term,
                vote: hard_state.voted_for.unwrap_or(0),
            };
            expect_wal(log.set_hard_state(stored), action);
        }
        if let Some(from) = action.truncate_from {
            expect_wal(log.truncate_suffix(from), action);
        }
        if !action.entries.is_empty() {
            let entries: Vec<tally_wal::Entry> = action
                .entries
                .iter()
                .map(|entry| tally_wal::Entry {
                    index: entry.index,
                    term: entry.term,
                    kind: entry.kind.as_u8(),
                    payload: entry.data.clone(),
                })
                .collect();
            expect_wal(log.append(&entries), action);
        }
        expect_wal(log.write(), action);
    }

    fn sync(&mut self, _through_seq: u64) {
        let log = self.log();
        if let Err(error) = log.sync() {
            panic!("fdatasync failed on a disk that injects no faults: {error}");
        }
    }

    fn crash(&mut self, rng: &mut ChaCha8Rng) {
        // Drop the open log first (its in-memory state dies with the process), tear
        // the disk, then recover the way a restarting node does.
        self.log = None;
        self.disk.crash(tally_wal::Tear::Seeded(rng.gen()));
        self.log = Some(Self::open(&self.disk));
    }

    fn recover(&self) -> RecoveredState {
        let Some(log) = self.log.as_ref() else {
            unreachable!("the log is reopened before crash() returns")
        };
        let durable = log.durable_hard_state();
        let hard_state = HardState {
            term: durable.term,
            voted_for: (durable.vote != 0).then_some(durable.vote),
        };
        let range = log.first_index()..log.last_index() + 1;
        let entries = match log.read_range(range) {
            Ok(entries) => entries,
            Err(error) => panic!("reading back the recovered WAL failed: {error}"),
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::EntryKind;
    use bytes::Bytes;
    use rand::SeedableRng;

    fn action(seq: u64, first: u64, n: u64, truncate_from: Option<u64>) -> PersistAction {
        let entries = (first..first + n)
            .map(|index| Entry {
                index,
                term: seq,
                kind: EntryKind::Normal,
                data: Bytes::new(),
            })
            .collect();
        PersistAction {
            seq,
            hard_state: Some(HardState {
                term: seq,
                voted_for: None,
            }),
            truncate_from,
            entries,
            snapshot: None,
            reset_log: None,
        }
    }

    #[test]
    fn crash_keeps_synced_writes_and_at_most_a_prefix_of_unsynced_ones() {
        for seed in 0..50 {
            check_crash_model(seed, &mut MemStorage::new());
            check_crash_model(seed, &mut WalStorage::new());
        }
    }

    fn check_crash_model(seed: u64, storage: &mut dyn SimStorage) {
        {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            storage.write(&action(1, 1, 3, None));
            storage.sync(1);
            storage.write(&action(2, 4, 2, None));
            storage.write(&action(3, 3, 1, Some(3)));
            storage.crash(&mut rng);
            let recovered = storage.recover();
            let terms: Vec<u64> = recovered.entries.iter().map(|e| e.term).collect();
            // Synced prefix always there; then nothing, action 2, or actions 2 and 3.
            assert!(
                terms == [1, 1, 1] || terms == [1, 1, 1, 2, 2] || terms == [1, 1, 3],
                "seed {seed}: recovered {terms:?}"
            );
            assert_eq!(recovered.hard_state.term, *terms.last().unwrap_or(&0));
        }
    }
}
