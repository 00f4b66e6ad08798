//! The leader's view of one follower: how far it matches, what is in flight to it,
//! and when it last answered (for check-quorum, leases and ReadIndex).

use std::collections::VecDeque;

/// How the leader currently replicates to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// The follower's position is unknown: at most one AppendEntries is outstanding
    /// (`probe_outstanding`), sent again only after an answer or on a heartbeat.
    Probe,
    /// The follower is known to match through `match_index`: AppendEntries are
    /// pipelined optimistically, bounded by messages and bytes in flight.
    Replicate,
    /// The follower needs entries that were compacted away (InstallSnapshot, reserved).
    Snapshot,
}

/// Replication progress of one peer, kept only while this node is leader.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be replicated (and durable) on the peer.
    /// Invariant: `match_index < next_index`; never decreases within a term.
    pub match_index: u64,
    /// Next index to send. Invariant: `match_index + 1 <= next_index <= last_index + 1`.
    pub next_index: u64,
    pub state: ReplicationState,
    /// In probe state: an AppendEntries was sent and not yet answered.
    pub probe_outstanding: bool,
    /// In replicate state: each AppendEntries in flight as (last index, size in bytes,
    /// tick sent). Invariant: indexes strictly increasing; `len() <= max_inflight_messages`.
    pub inflight: VecDeque<(u64, u64, u64)>,
    /// Sum of the sizes in `inflight`.
    pub inflight_bytes: u64,
    /// Answered at least once since the last check-quorum round.
    pub recent_active: bool,
    /// Highest `heartbeat_id` the peer echoed in this term.
    pub acked_heartbeat_id: u64,
    /// Highest `sent_at_tick` the peer echoed in this term (None: never answered).
    pub acked_sent_tick: Option<u64>,
}

impl Progress {
    pub fn new(next_index: u64) -> Progress {
        Progress {
            match_index: 0,
            next_index,
            state: ReplicationState::Probe,
            probe_outstanding: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            recent_active: false,
            acked_heartbeat_id: 0,
            acked_sent_tick: None,
        }
    }

    /// Forgets in-flight messages answered through `index`.
    pub fn free_inflight_through(&mut self, index: u64) {
        while let Some(&(last_index, size_bytes, _)) = self.inflight.front() {
            if last_index > index {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= size_bytes;
        }
    }

    pub fn become_probe(&mut self, next_index: u64) {
        self.state = ReplicationState::Probe;
        self.next_index = next_index.max(self.match_index + 1);
        self.probe_outstanding = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    pub fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_outstanding = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    pub fn check_invariants(&self) {
        debug_assert!(
            self.match_index < self.next_index,
            "match {} next {}",
            self.match_index,
            self.next_index
        );
        debug_assert_eq!(
            self.inflight.iter().map(|(_, size, _)| size).sum::<u64>(),
            self.inflight_bytes
        );
    }
}
