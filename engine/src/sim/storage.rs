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
        }
    }

    #[test]
    fn crash_keeps_synced_writes_and_at_most_a_prefix_of_unsynced_ones() {
        for seed in 0..50 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut storage = MemStorage::new();
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
