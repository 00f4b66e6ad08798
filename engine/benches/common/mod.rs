//! What the KV benchmarks share: applying encoded requests the way the apply thread does.

use tally_engine::kv::KvStateMachine;
use tally_engine::state_machine::{CommittedEntry, StateMachine};

/// Applies `payloads` as entries 1, 2, ... in batches of 1,024 (an apply batch's size
/// under load), panicking on a state-machine error (a benchmark's setup must not fail).
pub fn apply_all(sm: &mut KvStateMachine, payloads: &[Vec<u8>]) {
    for (chunk_number, chunk) in payloads.chunks(1024).enumerate() {
        let entries: Vec<CommittedEntry<'_>> = chunk
            .iter()
            .enumerate()
            .map(|(i, payload)| CommittedEntry {
                index: (chunk_number * 1024 + i + 1) as u64,
                payload,
            })
            .collect();
        sm.apply(&entries).expect("applies");
    }
}
