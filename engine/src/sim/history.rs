//! Client history and its linearizability check.
//!
//! The simulated state machine is a set of registers; every write stores a value no
//! other write uses, so each read names the one write it observed. Raft orders all
//! writes to a key by log index, so each operation gets a position in that order:
//! a write at log index `i` sits at `(i, 0)`, a read that observed it at `(i, 1)`
//! (after the write, before the next one); reads of the initial value sit at `(0, 1)`.
//!
//! The history is linearizable iff no operation that *completed before another was
//! invoked* has a larger position than it. (Sort operations by position, breaking ties
//! by real time: pairwise consistency makes that a valid linearization, because a
//! cycle would have to stay at one position and real-time order has no cycles.)
//! Every such pair (a, b) is known when b completes, since a completed earlier, so the
//! check runs incrementally at each completion. Writes whose outcome the client never
//! learned (timeouts, crashes) never complete: they constrain nothing, but reads may
//! observe them once committed.

use std::collections::HashMap;

/// Position of an operation in the per-key order: (log index of the write, 0 = the
/// write itself, 1 = a read that observed it).
pub type Position = (u64, u8);

/// What a client operation does to its register.
#[derive(Clone, Debug)]
pub enum OperationKind {
    /// Store `value` (unique across the run, never 0).
    Write {
        /// The value written.
        value: u64,
    },
    /// Read the register.
    Read,
}

/// One client operation.
#[derive(Clone, Debug)]
pub struct Operation {
    /// Index of the simulated client that issued it.
    pub client: usize,
    /// The register (key) it touches.
    pub key: u64,
    /// Write or read.
    pub kind: OperationKind,
    /// Simulated time of the invocation, in microseconds.
    pub invoked_at_us: u64,
    /// Simulated time the client learned the outcome, in microseconds; `None` while
    /// unknown (timed out, crashed).
    pub completed_at_us: Option<u64>,
    /// For a completed read: the value observed (0 = never written).
    pub read_value: Option<u64>,
    /// For a completed write: the log index it was committed at.
    pub write_index: Option<u64>,
}

/// All operations of a run, and the incremental checker.
#[derive(Debug, Default)]
pub struct History {
    /// Every operation invoked, indexed by the id [`History::invoke`] returned.
    pub operations: Vec<Operation>,
    /// Per key: (completion time, position) of every completed operation.
    completed_by_key: HashMap<u64, Vec<(u64, Position)>>,
    /// Log index at which each written value was committed (from applied entries).
    pub committed_write_index: HashMap<u64, u64>,
    /// The session of the request that first committed each value.
    write_sessions: HashMap<u64, Option<crate::kv::ClientSession>>,
    /// Every linearizability violation found, as a human-readable line; empty when the
    /// history is linearizable so far.
    pub violations: Vec<String>,
}

impl History {
    /// Records an operation invoked at `now_us` (simulated microseconds); returns its id
    /// for [`History::complete_write`] or [`History::complete_read`].
    pub fn invoke(&mut self, client: usize, key: u64, kind: OperationKind, now_us: u64) -> usize {
        self.operations.push(Operation {
            client,
            key,
            kind,
            invoked_at_us: now_us,
            completed_at_us: None,
            read_value: None,
            write_index: None,
        });
        self.operations.len() - 1
    }

    /// Records that a write was committed (applied) at `index`. The first index of a
    /// value is its position; a later entry with the same value is only allowed as the
    /// same client request resent (the state machine's session table makes it a no-op).
    pub fn note_committed_write(
        &mut self,
        value: u64,
        index: u64,
        session: Option<crate::kv::ClientSession>,
    ) {
        match self.committed_write_index.get(&value) {
            None => {
                self.committed_write_index.insert(value, index);
                self.write_sessions.insert(value, session);
            }
            Some(&first) if first == index => {}
            Some(&first) => {
                let same_request =
                    session.is_some() && self.write_sessions.get(&value) == Some(&session);
                if !same_request {
                    self.violations.push(format!(
                        "value {value} committed at two indexes {first} and {index} by different requests"
                    ));
                }
            }
        }
    }

    /// Records that write `op` committed at log `index`, learned at `now_us`, and checks it
    /// against every operation completed before it was invoked.
    pub fn complete_write(&mut self, op: usize, index: u64, now_us: u64) {
        self.operations[op].completed_at_us = Some(now_us);
        self.operations[op].write_index = Some(index);
        self.check_completion(op, (index, 0));
    }

    /// Records that read `op` returned `value` (0: the initial value) at `now_us`, and
    /// checks it; a value no write committed is a violation.
    pub fn complete_read(&mut self, op: usize, value: u64, now_us: u64) {
        self.operations[op].completed_at_us = Some(now_us);
        self.operations[op].read_value = Some(value);
        let position = if value == 0 {
            (0, 1)
        } else {
            match self.committed_write_index.get(&value) {
                Some(index) => (*index, 1),
                None => {
                    self.violations.push(format!(
                        "read {op} returned value {value}, which was never committed"
                    ));
                    return;
                }
            }
        };
        self.check_completion(op, position);
    }

    fn check_completion(&mut self, op: usize, position: Position) {
        let operation = &self.operations[op];
        let invoked_at_us = operation.invoked_at_us;
        let completed_at_us = operation.completed_at_us.unwrap_or(invoked_at_us);
        let key = operation.key;
        let completed = self.completed_by_key.entry(key).or_default();
        if let Some((earlier_completion, earlier_position)) = completed
            .iter()
            .find(|(completion, earlier)| *completion < invoked_at_us && *earlier > position)
        {
            let what = match operation.kind {
                OperationKind::Read => "stale read",
                OperationKind::Write { .. } => {
                    "write ordered before an operation that finished before it began"
                }
            };
            self.violations.push(format!(
                "Linearizability ({what}): operation {op} on key {key} invoked at {invoked_at_us}us has position \
                 {position:?}, but an operation completed at {earlier_completion}us has position {earlier_position:?}"
            ));
        }
        completed.push((completed_at_us, position));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_of_an_overwritten_value_after_the_overwrite_completed_is_stale() {
        let mut history = History::default();
        let w1 = history.invoke(0, 7, OperationKind::Write { value: 1 }, 0);
        history.note_committed_write(1, 5, None);
        history.complete_write(w1, 5, 10);
        let w2 = history.invoke(0, 7, OperationKind::Write { value: 2 }, 20);
        history.note_committed_write(2, 9, None);
        history.complete_write(w2, 9, 30);
        let read = history.invoke(1, 7, OperationKind::Read, 40);
        history.complete_read(read, 1, 50);
        assert_eq!(history.violations.len(), 1, "{:?}", history.violations);
    }

    #[test]
    fn read_concurrent_with_a_write_may_see_either_value() {
        let mut history = History::default();
        let w1 = history.invoke(0, 7, OperationKind::Write { value: 1 }, 0);
        history.note_committed_write(1, 5, None);
        history.complete_write(w1, 5, 10);
        let w2 = history.invoke(0, 7, OperationKind::Write { value: 2 }, 20);
        let old = history.invoke(1, 7, OperationKind::Read, 21);
        history.complete_read(old, 1, 25);
        history.note_committed_write(2, 9, None);
        let new = history.invoke(2, 7, OperationKind::Read, 22);
        history.complete_read(new, 2, 26);
        history.complete_write(w2, 9, 30);
        // A read invoked after `new` completed must not go back to value 1.
        let late = history.invoke(1, 7, OperationKind::Read, 27);
        history.complete_read(late, 2, 28);
        assert!(history.violations.is_empty(), "{:?}", history.violations);
        let back = history.invoke(1, 7, OperationKind::Read, 29);
        history.complete_read(back, 1, 31);
        assert_eq!(history.violations.len(), 1);
    }

    #[test]
    fn read_of_a_value_never_committed_is_a_violation() {
        let mut history = History::default();
        let read = history.invoke(1, 7, OperationKind::Read, 40);
        history.complete_read(read, 42, 50);
        assert_eq!(history.violations.len(), 1);
    }
}
