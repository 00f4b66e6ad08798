//! Safety invariants checked after every simulator step.
//!
//! The checker never trusts a node's own bookkeeping: it mirrors each node's log from
//! the persist actions the node emits (the core's log is exactly the concatenation of
//! those actions), summarises each prefix with a hash chain, and compares nodes through
//! these hashes. Equal prefix hashes at an index mean equal logs up to that index, so
//! Log Matching, Leader Completeness and State Machine Safety cost O(1) per entry.

use std::collections::HashMap;

use crate::raft::{Entry, NodeId, PersistAction, Role};

/// One log position as the checker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MirroredEntry {
    /// Term of the entry.
    pub term: u64,
    /// Hash of the whole log prefix through this entry.
    pub prefix_hash: u64,
}

/// A node's log as reconstructed from its persist actions. Index 1 is `entries[0]`.
#[derive(Clone, Debug, Default)]
pub struct LogMirror {
    /// Mirrored entries; `entries[i]` is log index `i + 1`.
    pub entries: Vec<MirroredEntry>,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hash of one entry's content (term, kind, data).
pub fn entry_hash(entry: &Entry) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in entry.data.iter() {
        hash = (hash ^ *byte as u64).wrapping_mul(0x100_0000_01b3);
    }
    mix(hash ^ mix(entry.term) ^ (entry.kind.as_u8() as u64) << 56)
}

impl LogMirror {
    /// Index of the last mirrored entry (0 for an empty log).
    pub fn last_index(&self) -> u64 {
        self.entries.len() as u64
    }

    /// The mirrored entry at `index`; `None` for index 0 or beyond the end.
    pub fn get(&self, index: u64) -> Option<MirroredEntry> {
        if index == 0 {
            return None;
        }
        self.entries.get(index as usize - 1).copied()
    }

    fn push(&mut self, entry: &Entry) -> MirroredEntry {
        assert_eq!(
            entry.index,
            self.last_index() + 1,
            "mirror: persist action leaves a gap"
        );
        let previous = self.entries.last().map_or(0, |e| e.prefix_hash);
        let mirrored = MirroredEntry {
            term: entry.term,
            prefix_hash: mix(previous ^ entry_hash(entry)),
        };
        self.entries.push(mirrored);
        mirrored
    }
}

/// Cluster-wide facts the invariants compare against.
#[derive(Debug, Default)]
pub struct Checker {
    /// Log Matching: the prefix hash every node must have at (index, term).
    prefix_at: HashMap<(u64, u64), u64>,
    /// Election Safety: the leader of each term.
    leader_of_term: HashMap<u64, NodeId>,
    /// Entries known committed, by index - 1, with the term of the leader that first
    /// committed them.
    committed: Vec<(MirroredEntry, u64)>,
    /// State Machine Safety: what was applied at each index (by index - 1).
    applied: Vec<u64>,
    /// Every Raft safety property found broken, as a human-readable line; empty in a correct
    /// run (the simulator reports them with the history's violations).
    pub violations: Vec<String>,
}

/// What the checker remembers about one node between steps.
#[derive(Clone, Debug, Default)]
pub struct NodeWatch {
    /// The node's durable log, rebuilt from its persist actions.
    pub mirror: LogMirror,
    /// Commit index last seen (reset by a crash).
    pub commit_index: u64,
    /// While leader: (term, last index, prefix hash there) last seen.
    pub leader_view: Option<(u64, u64, u64)>,
}

impl Checker {
    fn violation(&mut self, text: String) {
        self.violations.push(text);
    }

    /// Replaces a node's mirror below `through` with the committed entries a snapshot
    /// covers (a snapshot only ever holds committed entries: anything else is a
    /// violation).
    fn rebase(&mut self, node: NodeId, watch: &mut NodeWatch, through: u64) {
        if through as usize > self.committed.len() {
            self.violation(format!(
                "node {node} holds a snapshot through {through}, beyond everything committed ({})",
                self.committed.len()
            ));
            return;
        }
        watch.mirror.entries = self.committed[..through as usize]
            .iter()
            .map(|(mirrored, _)| *mirrored)
            .collect();
    }

    /// Mirrors a persist action and checks Log Matching for the new entries.
    pub fn on_persist(&mut self, node: NodeId, watch: &mut NodeWatch, action: &PersistAction) {
        if let Some(start) = action.reset_log {
            // The log now starts after a snapshot point: what precedes it is the
            // committed prefix.
            self.rebase(node, watch, start.last_index);
        }
        if let Some(from) = action.truncate_from {
            watch
                .mirror
                .entries
                .truncate(from.saturating_sub(1) as usize);
        }
        for entry in &action.entries {
            let mirrored = watch.mirror.push(entry);
            self.check_log_matching(node, entry.index, mirrored);
        }
    }

    /// Rebuilds a restarted node's mirror from the snapshot it restarted from (its
    /// index, 0 for none) and the entries it recovered after it.
    pub fn on_restart(
        &mut self,
        node: NodeId,
        watch: &mut NodeWatch,
        snapshot_index: u64,
        entries: &[Entry],
    ) {
        watch.mirror = LogMirror::default();
        watch.commit_index = 0;
        watch.leader_view = None;
        self.rebase(node, watch, snapshot_index);
        for entry in entries.iter().filter(|entry| entry.index > snapshot_index) {
            let mirrored = watch.mirror.push(entry);
            self.check_log_matching(node, entry.index, mirrored);
        }
    }

    fn check_log_matching(&mut self, node: NodeId, index: u64, mirrored: MirroredEntry) {
        match self.prefix_at.get(&(index, mirrored.term)) {
            Some(expected) if *expected != mirrored.prefix_hash => self.violation(format!(
                "Log Matching: node {node} has entry {index} of term {} with a different log prefix than another node",
                mirrored.term
            )),
            Some(_) => {}
            None => {
                self.prefix_at.insert((index, mirrored.term), mirrored.prefix_hash);
            }
        }
    }

    /// Checks a node after it handled an input.
    pub fn after_step(
        &mut self,
        node: NodeId,
        watch: &mut NodeWatch,
        role: Role,
        term: u64,
        commit_index: u64,
    ) {
        // Commit index never decreases on a node that did not crash.
        if commit_index < watch.commit_index {
            self.violation(format!(
                "commit index of node {node} went back from {} to {commit_index} without a crash",
                watch.commit_index
            ));
        }
        // Newly committed entries agree with everything known committed.
        if commit_index > watch.commit_index {
            if commit_index > watch.mirror.last_index() {
                self.violation(format!(
                    "node {node} committed through {commit_index} but holds only {} entries",
                    watch.mirror.last_index()
                ));
                return;
            }
            for index in watch.commit_index + 1..=commit_index {
                let Some(mirrored) = watch.mirror.get(index) else {
                    continue;
                };
                match self.committed.get(index as usize - 1) {
                    Some((known, _)) if known.prefix_hash != mirrored.prefix_hash => {
                        self.violation(format!(
                            "State Machine Safety: node {node} committed a different entry at index {index} \
                             (term {} vs term {} committed before)",
                            mirrored.term, known.term
                        ));
                        return;
                    }
                    Some(_) => {}
                    None => self.committed.push((mirrored, term)),
                }
            }
            watch.commit_index = commit_index;
        }
        if role == Role::Leader {
            let first_time =
                !matches!(watch.leader_view, Some((seen_term, _, _)) if seen_term == term);
            if first_time {
                // Election Safety.
                if let Some(other) = self.leader_of_term.insert(term, node) {
                    if other != node {
                        self.violation(format!(
                            "Election Safety: nodes {other} and {node} both leaders of term {term}"
                        ));
                    }
                }
                // Leader Completeness: everything committed in earlier terms is here.
                let covered = self
                    .committed
                    .iter()
                    .rposition(|(_, commit_term)| *commit_term < term);
                if let Some(position) = covered {
                    let index = position as u64 + 1;
                    let expected = self.committed[position].0.prefix_hash;
                    if watch.mirror.get(index).map(|e| e.prefix_hash) != Some(expected) {
                        self.violation(format!(
                            "Leader Completeness: node {node} became leader of term {term} without committed entry {index}"
                        ));
                    }
                }
            } else if let Some((_, last_index, prefix_hash)) = watch.leader_view {
                // Leader Append-Only: a leader never removes or rewrites its entries.
                if watch.mirror.get(last_index).map(|e| e.prefix_hash) != Some(prefix_hash) {
                    self.violation(format!(
                        "Leader Append-Only: leader {node} of term {term} changed or removed entry {last_index}"
                    ));
                }
            }
            let last_index = watch.mirror.last_index();
            let prefix_hash = watch.mirror.get(last_index).map_or(0, |e| e.prefix_hash);
            watch.leader_view = Some((term, last_index, prefix_hash));
        } else {
            watch.leader_view = None;
        }
    }

    /// State Machine Safety at the application level: the same entry is applied at
    /// each index on every node.
    pub fn on_apply(&mut self, node: NodeId, entry: &Entry) {
        let hash = entry_hash(entry);
        let position = entry.index as usize - 1;
        if position < self.applied.len() {
            if self.applied[position] != hash {
                self.violation(format!(
                    "State Machine Safety: node {node} applied a different entry at index {} (term {})",
                    entry.index, entry.term
                ));
            }
        } else if position == self.applied.len() {
            self.applied.push(hash);
        } else {
            self.violation(format!(
                "node {node} applied index {} before index {}",
                entry.index,
                self.applied.len() + 1
            ));
        }
    }

    /// Highest index any node reported committed.
    pub fn committed_len(&self) -> u64 {
        self.committed.len() as u64
    }

    /// The leader the checker saw for `term`; `None` when no node led it.
    pub fn leader_of_term(&self, term: u64) -> Option<NodeId> {
        self.leader_of_term.get(&term).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::EntryKind;
    use bytes::Bytes;

    fn entry(index: u64, term: u64, data: &'static str) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data: Bytes::from_static(data.as_bytes()),
        }
    }

    fn persist(entries: Vec<Entry>, truncate_from: Option<u64>) -> PersistAction {
        PersistAction {
            seq: 1,
            hard_state: None,
            truncate_from,
            entries,
            snapshot: None,
            reset_log: None,
        }
    }

    #[test]
    fn two_leaders_in_one_term_are_reported() {
        let mut checker = Checker::default();
        let (mut a, mut b) = (NodeWatch::default(), NodeWatch::default());
        checker.after_step(1, &mut a, Role::Leader, 3, 0);
        checker.after_step(2, &mut b, Role::Leader, 3, 0);
        assert!(
            checker.violations[0].contains("Election Safety"),
            "{:?}",
            checker.violations
        );
    }

    #[test]
    fn same_index_and_term_with_different_prefix_breaks_log_matching() {
        let mut checker = Checker::default();
        let (mut a, mut b) = (NodeWatch::default(), NodeWatch::default());
        checker.on_persist(
            1,
            &mut a,
            &persist(vec![entry(1, 1, "x"), entry(2, 2, "y")], None),
        );
        checker.on_persist(
            2,
            &mut b,
            &persist(vec![entry(1, 1, "other"), entry(2, 2, "y")], None),
        );
        assert!(
            checker
                .violations
                .iter()
                .any(|v| v.contains("Log Matching")),
            "{:?}",
            checker.violations
        );
    }

    #[test]
    fn committed_entry_missing_from_a_later_leader_is_reported() {
        let mut checker = Checker::default();
        let (mut a, mut b) = (NodeWatch::default(), NodeWatch::default());
        checker.on_persist(1, &mut a, &persist(vec![entry(1, 1, "x")], None));
        checker.after_step(1, &mut a, Role::Leader, 1, 1);
        checker.on_persist(2, &mut b, &persist(vec![entry(1, 2, "y")], None));
        checker.after_step(2, &mut b, Role::Leader, 2, 0);
        assert!(
            checker
                .violations
                .iter()
                .any(|v| v.contains("Leader Completeness")),
            "{:?}",
            checker.violations
        );
    }

    #[test]
    fn commit_index_going_back_and_divergent_commits_are_reported() {
        let mut checker = Checker::default();
        let (mut a, mut b) = (NodeWatch::default(), NodeWatch::default());
        checker.on_persist(
            1,
            &mut a,
            &persist(vec![entry(1, 1, "x"), entry(2, 1, "y")], None),
        );
        checker.after_step(1, &mut a, Role::Follower, 1, 2);
        checker.after_step(1, &mut a, Role::Follower, 1, 1);
        assert!(
            checker.violations.iter().any(|v| v.contains("went back")),
            "{:?}",
            checker.violations
        );
        checker.on_persist(
            2,
            &mut b,
            &persist(vec![entry(1, 1, "x"), entry(2, 3, "z")], None),
        );
        checker.after_step(2, &mut b, Role::Follower, 3, 2);
        assert!(
            checker
                .violations
                .iter()
                .any(|v| v.contains("State Machine Safety")),
            "{:?}",
            checker.violations
        );
    }

    #[test]
    fn leader_rewriting_its_log_breaks_append_only() {
        let mut checker = Checker::default();
        let mut a = NodeWatch::default();
        checker.on_persist(
            1,
            &mut a,
            &persist(vec![entry(1, 1, "x"), entry(2, 1, "y")], None),
        );
        checker.after_step(1, &mut a, Role::Leader, 1, 0);
        checker.on_persist(1, &mut a, &persist(vec![entry(2, 1, "rewritten")], Some(2)));
        checker.after_step(1, &mut a, Role::Leader, 1, 0);
        assert!(
            checker.violations.iter().any(|v| v.contains("Append-Only")),
            "{:?}",
            checker.violations
        );
    }

    #[test]
    fn different_entries_applied_at_one_index_are_reported() {
        let mut checker = Checker::default();
        checker.on_apply(1, &entry(1, 1, "x"));
        checker.on_apply(2, &entry(1, 1, "y"));
        assert!(checker
            .violations
            .iter()
            .any(|v| v.contains("State Machine Safety")));
    }
}
