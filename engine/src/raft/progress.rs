//! The leader's view of one follower: how far it matches, what is in flight to it,
//! and when it last answered (for check-quorum, leases and ReadIndex).

use std::collections::VecDeque;

use super::snapshot::LocalSnapshot;

/// How the leader currently replicates to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// The follower's position is unknown: at most one AppendEntries is outstanding
    /// (`probe_outstanding`), sent again only after an answer or on a heartbeat.
    Probe,
    /// The follower is known to match through `match_index`: AppendEntries are
    /// pipelined optimistically, bounded by messages and bytes in flight.
    Replicate,
    /// The follower needs entries that were compacted away: it is sent a snapshot
    /// (`Progress::snapshot`) in chunks, and only heartbeats otherwise.
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
    /// Probe, replicate or snapshot: decides how much may be in flight to this peer.
    pub state: ReplicationState,
    /// In probe state: an AppendEntries was sent and not yet answered.
    pub probe_outstanding: bool,
    /// In replicate state: each AppendEntries in flight as (last index, size in bytes,
    /// tick sent). Invariant: indexes strictly increasing; `len() <= max_inflight_messages`.
    pub inflight: VecDeque<(u64, u64, u64)>,
    /// Sum of the sizes in `inflight`.
    pub inflight_bytes: u64,
    /// Tick at which the in-flight window last made progress (the match index
    /// advanced, or the window became non-empty): see [`Progress::is_stalled`].
    pub last_progress_tick: u64,
    /// Highest index ever sent to the peer in this term (to count resends).
    pub highest_sent_index: u64,
    /// How long the peer recently took to acknowledge entries (send to answer, in
    /// ticks): a decaying maximum of the samples, starting at one election timeout. An
    /// acknowledgement is presumed lost only once it is overdue by twice this.
    pub ack_latency_ticks: u64,
    /// Answered at least once since the last check-quorum round.
    pub recent_active: bool,
    /// Highest `heartbeat_id` the peer echoed in this term.
    pub acked_heartbeat_id: u64,
    /// Highest `sent_at_tick` the peer echoed in this term (None: never answered).
    pub acked_sent_tick: Option<u64>,
    /// In snapshot state: the transfer under way (None while the leader has no
    /// snapshot recent enough to send). Invariant: `Some` only in snapshot state.
    pub snapshot: Option<SnapshotTransfer>,
}

/// A snapshot being sent to one follower, with its own copy of the snapshot (a
/// reference-counted view), so that a newer local snapshot does not disturb it.
#[derive(Clone, Debug)]
pub struct SnapshotTransfer {
    /// The snapshot being sent (data and metadata), pinned for the whole transfer.
    pub snapshot: LocalSnapshot,
    /// The follower confirmed (durably) the bytes before this offset.
    /// Invariant: `acked_offset <= next_offset <= total`.
    pub acked_offset: u64,
    /// Next byte to send.
    pub next_offset: u64,
    /// The chunk with `done` went out (and `next_offset == total`).
    pub last_sent: bool,
    /// The follower refused a chunk and expects this offset: the next heartbeat round
    /// resends from there.
    pub resend_from: Option<u64>,
    /// Tick of the last answer (or the last (re)start): a window with no answer for
    /// `RaftConfig::snapshot_retry_ticks` is resent from `acked_offset`.
    pub last_activity_tick: u64,
}

impl SnapshotTransfer {
    /// A transfer of `snapshot` from offset 0, its last activity at `now_tick`.
    pub fn new(snapshot: LocalSnapshot, now_tick: u64) -> SnapshotTransfer {
        SnapshotTransfer {
            snapshot,
            acked_offset: 0,
            next_offset: 0,
            last_sent: false,
            resend_from: None,
            last_activity_tick: now_tick,
        }
    }

    /// Size of the snapshot data being sent, in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.snapshot.data.len() as u64
    }

    /// Goes back to `offset` (clamped to the snapshot) and resends from there.
    pub fn rewind(&mut self, offset: u64, now_tick: u64) {
        let offset = offset.min(self.total_bytes());
        self.acked_offset = offset;
        self.next_offset = offset;
        self.last_sent = false;
        self.last_activity_tick = now_tick;
    }

    /// Records the follower's confirmed offset (never beyond what was sent).
    pub fn acknowledge(&mut self, offset: u64, now_tick: u64) {
        self.acked_offset = self.acked_offset.max(offset.min(self.next_offset));
        self.last_activity_tick = now_tick;
    }

    /// Asserts the invariants written on the fields (offsets ordered and within the
    /// snapshot). Panics on a broken invariant in builds with debug assertions or the
    /// `invariants` feature (a bug in the core, never bad input); a no-op otherwise.
    pub fn check_invariants(&self) {
        invariant!(self.acked_offset <= self.next_offset);
        invariant!(self.next_offset <= self.total_bytes());
        invariant!(!self.last_sent || self.next_offset == self.total_bytes());
    }
}

impl Progress {
    /// A peer to replicate to from `next_index`; its acknowledgements are expected
    /// within `initial_ack_latency_ticks` until some were seen.
    pub fn new(next_index: u64, initial_ack_latency_ticks: u64) -> Progress {
        Progress {
            match_index: 0,
            next_index,
            state: ReplicationState::Probe,
            probe_outstanding: false,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            last_progress_tick: 0,
            highest_sent_index: 0,
            ack_latency_ticks: initial_ack_latency_ticks,
            recent_active: false,
            acked_heartbeat_id: 0,
            acked_sent_tick: None,
            snapshot: None,
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

    /// Records how long an acknowledgement took: the estimate jumps up to a slower
    /// sample and decays by an eighth per faster one.
    pub fn note_ack_latency(&mut self, sample_ticks: u64) {
        let decayed = self.ack_latency_ticks - self.ack_latency_ticks.div_ceil(8);
        self.ack_latency_ticks = decayed.max(sample_ticks);
    }

    /// Records an AppendEntries sent in replicate state. A window that was empty starts
    /// its progress clock now (an idle follower is never stalled).
    pub fn push_inflight(&mut self, last_index: u64, size_bytes: u64, now_tick: u64) {
        if self.inflight.is_empty() {
            self.last_progress_tick = now_tick;
        }
        self.inflight.push_back((last_index, size_bytes, now_tick));
        self.inflight_bytes += size_bytes;
    }

    /// In replicate state with messages in flight, and no progress for `stall_ticks`:
    /// something was lost (late acknowledgements advance the match index, so a slow
    /// follower is not stalled).
    pub fn is_stalled(&self, now_tick: u64, stall_ticks: u64) -> bool {
        self.state == ReplicationState::Replicate
            && !self.inflight.is_empty()
            && now_tick.saturating_sub(self.last_progress_tick) >= stall_ticks
    }

    /// Falls back to probing from `next_index` (never below `match_index + 1`): drops
    /// everything in flight and any snapshot transfer.
    pub fn become_probe(&mut self, next_index: u64) {
        self.state = ReplicationState::Probe;
        self.snapshot = None;
        self.next_index = next_index.max(self.match_index + 1);
        self.probe_outstanding = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    /// Starts pipelining from `match_index + 1`: used once the peer's position is known.
    pub fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.snapshot = None;
        self.next_index = self.match_index + 1;
        self.probe_outstanding = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    /// Sends the follower a snapshot (`transfer`, None when none is available yet);
    /// nothing else is in flight meanwhile but heartbeats.
    pub fn become_snapshot(&mut self, transfer: Option<SnapshotTransfer>) {
        self.state = ReplicationState::Snapshot;
        self.snapshot = transfer;
        self.probe_outstanding = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    /// Asserts the invariants written on the fields (`match_index < next_index`, in-flight
    /// byte accounting, a transfer only in snapshot state). Panics on a broken invariant in
    /// builds with debug assertions or the `invariants` feature; a no-op otherwise.
    pub fn check_invariants(&self) {
        invariant!(
            self.match_index < self.next_index,
            "match {} next {}",
            self.match_index,
            self.next_index
        );
        invariant!(
            self.inflight.iter().map(|(_, size, _)| size).sum::<u64>() == self.inflight_bytes
        );
        invariant!(self.snapshot.is_none() || self.state == ReplicationState::Snapshot);
        if let Some(transfer) = &self.snapshot {
            transfer.check_invariants();
        }
    }
}
