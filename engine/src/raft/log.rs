//! The in-memory Raft log and its three watermarks.
//!
//! The core keeps the whole uncompacted log in memory; the runtime keeps the durable
//! copy (the WAL) in step with it by carrying out `Persist` actions. The log may start
//! after a snapshot: `start` names the last index/term the snapshot covers, and entries
//! begin at `start.last_index + 1`.

use super::types::{Entry, LogStart};

/// The log: a snapshot point plus the entries after it, and how far they are durable,
/// committed and applied.
#[derive(Clone, Debug)]
pub struct RaftLog {
    /// Everything up to and including `start.last_index` is compacted into a snapshot.
    pub(crate) start: LogStart,
    /// Entries `start.last_index + 1 ..= last_index()`.
    /// Invariant: `entries[k].index == start.last_index + 1 + k`; terms non-decreasing
    /// and `>= start.last_term`.
    pub(crate) entries: Vec<Entry>,
    /// Highest index known committed. Invariant: `start.last_index <= committed`;
    /// never decreases while the node runs; `committed <= last_index()` except that a
    /// follower never learns a commit index beyond the entries it verified.
    pub(crate) committed: u64,
    /// Highest index whose entry (exactly as held here) is durable on this node's disk.
    /// Invariant: `start.last_index <= persisted <= last_index()`; lowered on truncation.
    pub(crate) persisted: u64,
    /// Highest index handed to the runtime for applying.
    /// Invariant: `applied <= min(committed, persisted)`.
    pub(crate) applied: u64,
}

impl RaftLog {
    /// A log holding `entries` after `start`, all durable (as read back at startup).
    pub fn restore(start: LogStart, entries: Vec<Entry>) -> RaftLog {
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                start.last_index + 1 + offset as u64,
                "restored log entries must be contiguous"
            );
        }
        let last_index = start.last_index + entries.len() as u64;
        RaftLog {
            start,
            entries,
            committed: start.last_index,
            persisted: last_index,
            applied: start.last_index,
        }
    }

    pub fn first_index(&self) -> u64 {
        self.start.last_index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.start.last_index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.start.last_term, |entry| entry.term)
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn start(&self) -> LogStart {
        self.start
    }

    /// Term of the entry at `index`; `None` when compacted away (below the snapshot
    /// point) or beyond the end.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.start.last_index {
            return Some(self.start.last_term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.start.last_index {
            return None;
        }
        self.entries
            .get((index - self.start.last_index - 1) as usize)
    }

    /// All entries in `from..=last_index()`.
    pub fn entries_from(&self, from: u64) -> &[Entry] {
        let offset = from.saturating_sub(self.first_index()) as usize;
        &self.entries[offset.min(self.entries.len())..]
    }

    /// Entries from `from` on, at least one (when any exist) and then as many as fit in
    /// `max_bytes` and `max_count`.
    pub fn batch_from(&self, from: u64, max_bytes: u64, max_count: usize) -> Vec<Entry> {
        debug_assert!(from >= self.first_index(), "batch below the log start");
        let mut batch = Vec::new();
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

    /// Appends entries that continue the log exactly.
    pub fn append(&mut self, new_entries: &[Entry]) {
        for entry in new_entries {
            debug_assert_eq!(
                entry.index,
                self.last_index() + 1,
                "append must be contiguous"
            );
            debug_assert!(
                entry.term >= self.last_term(),
                "terms must not decrease along the log"
            );
            self.entries.push(entry.clone());
        }
    }

    /// Removes every entry at `from` and after. Never removes a committed entry: that
    /// would lose data, so this is a hard assert.
    pub fn truncate_from(&mut self, from: u64) {
        assert!(
            from > self.committed,
            "truncating committed entry {from} (committed {})",
            self.committed
        );
        debug_assert!(from > self.start.last_index);
        let keep = (from - self.first_index()) as usize;
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(from - 1);
    }

    /// Drops entries up to and including `through` (after a snapshot covers them).
    pub fn compact_through(&mut self, through: u64) {
        assert!(
            through <= self.applied,
            "compacting entries not yet applied"
        );
        if through <= self.start.last_index {
            return;
        }
        let Some(term) = self.term(through) else {
            return;
        };
        let drop = (through - self.start.last_index) as usize;
        self.entries.drain(..drop);
        self.start = LogStart {
            last_index: through,
            last_term: term,
        };
    }

    pub(crate) fn check_invariants(&self) {
        debug_assert!(
            self.start.last_index <= self.persisted && self.persisted <= self.last_index()
        );
        debug_assert!(self.start.last_index <= self.committed);
        debug_assert!(self.applied <= self.committed.min(self.persisted));
        debug_assert!(self
            .entries
            .first()
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
        RaftLog::restore(LogStart::default(), entries)
    }

    #[test]
    fn log_after_snapshot_starts_past_the_snapshot_point() {
        let start = LogStart {
            last_index: 100,
            last_term: 4,
        };
        let log = RaftLog::restore(start, vec![entry(101, 4), entry(102, 5)]);
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
    fn compaction_moves_the_start_point() {
        let mut log = log_with_terms(&[1, 2, 2]);
        log.committed = 3;
        log.applied = 2;
        log.compact_through(2);
        assert_eq!(log.first_index(), 3);
        assert_eq!(log.term(2), Some(2));
        assert_eq!(log.last_index(), 3);
    }
}
