//! The in-memory Raft log and its three watermarks.
//!
//! The core keeps the uncompacted part of the log in memory; the runtime keeps the
//! durable copy (the WAL) in step with it by carrying out `Persist` actions. The log
//! starts after a snapshot point: `start` names the last index/term the snapshot
//! covers, and entries begin at `start.last_index + 1`. Compaction moves `start` up
//! and frees the entries below it, so memory follows the retained window, not the
//! history.
//!
//! Why the fields are private: every watermark changes only through a method that
//! checks the invariants written on it (`commit_to`, `persist_to`, `take_committed`,
//! `truncate_from`, `compact_to`, `install_snapshot`, `snapshot_restored`).

use std::collections::VecDeque;

use super::node::CoreError;
use super::types::{Entry, LogStart};

/// The log: a snapshot point plus the entries after it, and how far they are durable,
/// committed and applied.
#[derive(Clone, Debug)]
pub struct RaftLog {
    /// Everything up to and including `start.last_index` is compacted into a snapshot.
    start: LogStart,
    /// Entries `start.last_index + 1 ..= last_index()`.
    /// Invariant: `entries[k].index == start.last_index + 1 + k`; terms non-decreasing
    /// and `>= start.last_term`.
    entries: VecDeque<Entry>,
    /// Highest index known committed. Invariant: `start.last_index <= committed`;
    /// never decreases while the node runs; `committed <= last_index()`.
    committed: u64,
    /// Highest index whose entry (exactly as held here) is durable on this node's disk.
    /// Invariant: `persisted <= last_index()`; `start.last_index <= persisted` unless a
    /// snapshot install is pending (then the snapshot covers the gap once durable);
    /// lowered on truncation.
    persisted: u64,
    /// Highest index handed to the runtime for applying.
    /// Invariant: `applied <= min(committed, persisted)`; `start.last_index <= applied`
    /// unless a snapshot install is pending (then `applied < start.last_index`).
    applied: u64,
    /// A received snapshot replaced the log's start point in memory, and the state
    /// machine was not restored from it yet: no entry is handed out for applying while
    /// set (they follow the snapshot, which must be restored first).
    restore_pending: bool,
}

/// Shrink the entry buffer when its capacity exceeds this multiple of its length
/// (and `MIN_SHRINK_CAPACITY`): compaction then really returns memory, amortised O(1)
/// per entry.
const SHRINK_FACTOR: usize = 4;
const MIN_SHRINK_CAPACITY: usize = 1024;

impl RaftLog {
    /// A log holding `entries` after `start`, all durable (as read back at startup).
    /// Refuses entries that are not contiguous after `start` or whose terms decrease.
    pub fn restore(start: LogStart, entries: Vec<Entry>) -> Result<RaftLog, CoreError> {
        let mut previous_term = start.last_term;
        for (expected_index, entry) in (start.last_index + 1..).zip(entries.iter()) {
            if entry.index != expected_index {
                return Err(CoreError::LogNotContiguous {
                    expected_index,
                    found_index: entry.index,
                });
            }
            if entry.term < previous_term {
                return Err(CoreError::TermRegression {
                    index: entry.index,
                    term: entry.term,
                    previous_term,
                });
            }
            previous_term = entry.term;
        }
        let last_index = start.last_index + entries.len() as u64;
        Ok(RaftLog {
            start,
            entries: entries.into(),
            committed: start.last_index,
            persisted: last_index,
            applied: start.last_index,
            restore_pending: false,
        })
    }

    /// The log of a brand-new node: nothing in it.
    pub fn empty() -> RaftLog {
        RaftLog {
            start: LogStart::default(),
            entries: VecDeque::new(),
            committed: 0,
            persisted: 0,
            applied: 0,
            restore_pending: false,
        }
    }

    /// Index of the first entry held in memory: one past the snapshot point (even when the
    /// log holds no entry).
    pub fn first_index(&self) -> u64 {
        self.start.last_index + 1
    }

    /// Index of the last entry; the snapshot point when the log holds no entry.
    pub fn last_index(&self) -> u64 {
        self.start.last_index + self.entries.len() as u64
    }

    /// Term of the last entry; the snapshot point's term when the log holds no entry.
    pub fn last_term(&self) -> u64 {
        self.entries
            .back()
            .map_or(self.start.last_term, |entry| entry.term)
    }

    /// Highest index known committed (never decreases while the node runs).
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Highest index durable on this node's disk (lowered when a conflicting suffix is
    /// truncated).
    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    /// Highest index handed to the runtime for applying; at most
    /// `min(committed(), persisted())`.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The snapshot point the log starts after.
    pub fn start(&self) -> LogStart {
        self.start
    }

    /// Entries held in memory (after the snapshot point).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held in memory (everything is in the snapshot, or the log is new).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether an installed snapshot still waits for its state-machine restore.
    pub fn restore_pending(&self) -> bool {
        self.restore_pending
    }

    /// Term of the entry at `index`; `None` when compacted away (below the snapshot
    /// point) or beyond the end.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.start.last_index {
            return Some(self.start.last_term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    /// The entry at `index`; `None` when it was compacted into the snapshot or lies beyond
    /// [`RaftLog::last_index`].
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.start.last_index {
            return None;
        }
        let offset = usize::try_from(index - self.start.last_index - 1).ok()?;
        self.entries.get(offset)
    }

    /// All entries in `from..=last_index()` (from the first index when `from` is below).
    pub fn entries_from(&self, from: u64) -> impl ExactSizeIterator<Item = &Entry> {
        let offset = from
            .saturating_sub(self.first_index())
            .min(self.entries.len() as u64);
        self.entries.range(offset as usize..)
    }

    /// Entries from `from` on, at least one (when any exist) and then as many as fit in
    /// `max_bytes` and `max_count`.
    pub fn batch_from(&self, from: u64, max_bytes: u64, max_count: usize) -> Vec<Entry> {
        invariant!(from >= self.first_index(), "batch below the log start");
        let available = self.entries_from(from).len();
        let mut batch = Vec::with_capacity(available.min(max_count));
        let mut size_bytes = 0;
        for entry in self.entries_from(from) {
            if !batch.is_empty()
                && (size_bytes + entry.size_bytes() > max_bytes || batch.len() >= max_count)
            {
                break;
            }
            size_bytes += entry.size_bytes();
            batch.push(entry.clone());
        }
        batch
    }

    /// Raft's election restriction (§5.4.1): a candidate's log is at least as up to date
    /// as ours when its last term is higher, or equal with an index at least ours.
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// First index holding `term`, scanning back from `from` (the XIndex hint).
    pub fn first_index_of_term_at(&self, term: u64, from: u64) -> u64 {
        let mut index = from;
        while index > self.first_index() && self.term(index - 1) == Some(term) {
            index -= 1;
        }
        index
    }

    /// Last index holding `term`, if this log has any entry of that term.
    pub fn last_index_of_term(&self, term: u64) -> Option<u64> {
        self.entries
            .iter()
            .rev()
            .find(|entry| entry.term == term)
            .map(|entry| entry.index)
    }

    /// Appends entries that continue the log exactly (callers validated them).
    pub fn append(&mut self, new_entries: &[Entry]) {
        for entry in new_entries {
            invariant!(
                entry.index == self.last_index() + 1,
                "append must be contiguous: {} after {}",
                entry.index,
                self.last_index()
            );
            invariant!(
                entry.term >= self.last_term(),
                "terms must not decrease along the log"
            );
            self.entries.push_back(entry.clone());
        }
    }

    /// Raises the commit index to `index` (never lowers it).
    pub fn commit_to(&mut self, index: u64) {
        invariant!(
            index <= self.last_index(),
            "committing {index} beyond the last index {}",
            self.last_index()
        );
        self.committed = self.committed.max(index);
    }

    /// Records that the log is durable through `index` (never lowers it).
    pub fn persist_to(&mut self, index: u64) {
        invariant!(
            index <= self.last_index(),
            "persisted {index} beyond the last index {}",
            self.last_index()
        );
        self.persisted = self.persisted.max(index);
    }

    /// The entries that became ready for applying (committed and durable, through
    /// `min(committed, persisted)`), marking them applied. None while a snapshot
    /// restore is pending.
    pub fn take_committed(&mut self) -> Vec<Entry> {
        let through = self.committed.min(self.persisted);
        if self.restore_pending || through <= self.applied {
            return Vec::new();
        }
        let from = self.applied + 1;
        let batch: Vec<Entry> = self
            .entries_from(from)
            .take((through - self.applied) as usize)
            .cloned()
            .collect();
        invariant!(
            batch.first().is_some_and(|entry| entry.index == from),
            "entries to apply must start right after the applied index {}",
            self.applied
        );
        self.applied = through;
        batch
    }

    /// Removes every entry at `from` and after. Never removes a committed entry: that
    /// would lose data, so this is a hard assert.
    pub fn truncate_from(&mut self, from: u64) {
        assert!(
            from > self.committed,
            "truncating committed entry {from} (committed {})",
            self.committed
        );
        invariant!(from > self.start.last_index);
        let keep = (from - self.first_index()) as usize;
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(from - 1);
    }

    /// Drops entries up to and including `through` (a snapshot covers them; they were
    /// applied). Returns false (and does nothing) when `through` is at or below the
    /// start or beyond the log.
    pub fn compact_to(&mut self, through: u64) -> bool {
        assert!(
            through <= self.applied,
            "compacting entry {through} not yet applied ({})",
            self.applied
        );
        let Some(term) = self.term(through) else {
            return false;
        };
        if through <= self.start.last_index {
            return false;
        }
        self.drop_prefix(through, term);
        true
    }

    fn drop_prefix(&mut self, through: u64, term: u64) {
        let drop = (through - self.start.last_index) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.start = LogStart {
            last_index: through,
            last_term: term,
        };
        let capacity = self.entries.capacity();
        if capacity > MIN_SHRINK_CAPACITY && capacity > SHRINK_FACTOR * self.entries.len() {
            self.entries.shrink_to(2 * self.entries.len());
        }
    }

    /// Replaces the log's start by a received snapshot's point (Raft Figure 13, rules
    /// 6 and 7): when the log holds `point` itself, the entries after it are kept;
    /// otherwise the whole log is discarded. Returns whether the suffix was kept.
    /// The snapshot must be above the commit index (else there is nothing to install).
    pub fn install_snapshot(&mut self, point: LogStart) -> bool {
        invariant!(
            point.last_index > self.committed,
            "installing snapshot {} at or below the commit index {}",
            point.last_index,
            self.committed
        );
        let kept = self.term(point.last_index) == Some(point.last_term);
        if kept {
            self.drop_prefix(point.last_index, point.last_term);
        } else {
            // Entries above the commit index may differ from the snapshot's history:
            // whatever durable copy they have no longer vouches for this log.
            self.persisted = self.persisted.min(self.committed);
            self.entries = VecDeque::new();
            self.start = point;
        }
        self.committed = point.last_index;
        self.restore_pending = true;
        kept
    }

    /// The state machine is being restored from the snapshot at the start point:
    /// entries after it may be handed out again.
    pub fn snapshot_restored(&mut self) {
        invariant!(self.restore_pending, "no snapshot restore was pending");
        invariant!(
            self.persisted >= self.start.last_index,
            "restoring a snapshot that is not durable"
        );
        self.applied = self.start.last_index;
        self.restore_pending = false;
    }

    pub(crate) fn check_invariants(&self) {
        invariant!(self.persisted <= self.last_index());
        invariant!(self.start.last_index <= self.committed && self.committed <= self.last_index());
        invariant!(self.applied <= self.committed.min(self.persisted));
        if self.restore_pending {
            invariant!(self.applied < self.start.last_index);
        } else {
            invariant!(self.start.last_index <= self.persisted);
            invariant!(self.start.last_index <= self.applied);
        }
        invariant!(self
            .entries
            .front()
            .iter()
            .all(|entry| entry.index == self.first_index()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::EntryKind;
    use bytes::Bytes;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data: Bytes::from(vec![index as u8; 10]),
        }
    }

    fn log_with_terms(terms: &[u64]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(k, term)| entry(k as u64 + 1, *term))
            .collect();
        RaftLog::restore(LogStart::default(), entries).expect("valid log")
    }

    #[test]
    fn log_after_snapshot_starts_past_the_snapshot_point() {
        let start = LogStart {
            last_index: 100,
            last_term: 4,
        };
        let log = RaftLog::restore(start, vec![entry(101, 4), entry(102, 5)]).expect("valid");
        assert_eq!(log.first_index(), 101);
        assert_eq!(log.last_index(), 102);
        assert_eq!(log.term(100), Some(4));
        assert_eq!(log.term(99), None);
        assert_eq!(log.term(103), None);
        assert_eq!(log.committed(), 100);
    }

    #[test]
    fn election_restriction_compares_last_term_then_length() {
        let log = log_with_terms(&[1, 1, 2]);
        assert!(log.is_up_to_date(1, 3));
        assert!(log.is_up_to_date(3, 2));
        assert!(!log.is_up_to_date(2, 2));
        assert!(!log.is_up_to_date(10, 1));
    }

    #[test]
    fn truncation_lowers_the_persisted_watermark() {
        let mut log = log_with_terms(&[1, 1, 2, 2]);
        assert_eq!(log.persisted(), 4);
        log.truncate_from(3);
        assert_eq!(log.last_index(), 2);
        assert_eq!(log.persisted(), 2);
    }

    #[test]
    #[should_panic(expected = "truncating committed entry")]
    fn truncating_a_committed_entry_panics() {
        let mut log = log_with_terms(&[1, 1, 2]);
        log.committed = 2;
        log.truncate_from(2);
    }

    #[test]
    fn term_hints_find_term_boundaries() {
        let log = log_with_terms(&[1, 1, 3, 3, 3, 4]);
        assert_eq!(log.first_index_of_term_at(3, 5), 3);
        assert_eq!(log.last_index_of_term(3), Some(5));
        assert_eq!(log.last_index_of_term(2), None);
    }

    #[test]
    fn batch_respects_byte_limit_but_sends_at_least_one_entry() {
        let log = log_with_terms(&[1, 1, 1, 1]);
        let one = entry(1, 1).size_bytes();
        assert_eq!(log.batch_from(1, one * 2, 100).len(), 2);
        assert_eq!(log.batch_from(1, 1, 100).len(), 1);
        assert_eq!(log.batch_from(2, u64::MAX, 2).len(), 2);
    }

    #[test]
    fn compaction_returns_the_memory_of_dropped_entries() {
        let mut log = log_with_terms(&[1; 10_000]);
        log.committed = 10_000;
        log.applied = 10_000;
        let capacity_before = log.entries.capacity();
        assert!(log.compact_to(9_900));
        assert_eq!(log.len(), 100);
        assert!(
            log.entries.capacity() < capacity_before / 10,
            "capacity {} kept after compaction",
            log.entries.capacity()
        );
        assert_eq!(log.entry(9_901).map(|e| e.index), Some(9_901));
    }

    #[test]
    fn installing_a_snapshot_the_log_contradicts_discards_it_and_caps_persisted() {
        let mut log = log_with_terms(&[1, 1, 2, 2]);
        log.committed = 1;
        log.applied = 1;
        let kept = log.install_snapshot(LogStart {
            last_index: 3,
            last_term: 3,
        });
        assert!(!kept);
        assert!(log.is_empty());
        assert_eq!(
            log.persisted(),
            1,
            "durable entries no longer vouch past the commit"
        );
        assert_eq!(log.committed(), 3);
        assert!(
            log.take_committed().is_empty(),
            "entries handed out before the restore"
        );
        log.check_invariants();
        log.persist_to(3);
        log.snapshot_restored();
        assert_eq!(log.applied(), 3);
        log.check_invariants();
    }

    #[test]
    fn compaction_moves_the_start_point() {
        let mut log = log_with_terms(&[1, 2, 2]);
        log.committed = 3;
        log.applied = 2;
        assert!(log.compact_to(2));
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.term(2), Some(2));
        assert_eq!(log.last_index(), 3);
    }
}
