//! The interface between Tally's replicated log and the database built on it.
//!
//! A database builder implements [`StateMachine`]; Tally's node runtime drives it from a
//! single apply thread. Raft guarantees that every replica sees the same committed entries
//! in the same order; this trait is where that order becomes state. Everything here is
//! synchronous and free of threads and clocks so that the deterministic simulator can
//! drive the very same implementation as production.
//!
//! # Contract
//!
//! * **Determinism.** [`StateMachine::apply`] must depend only on the state built by
//!   earlier entries (or a restored snapshot) and on the entries themselves: no clocks, no
//!   randomness, no environment, no iteration over hash maps with per-process seeds that
//!   leaks into results. Two replicas that applied the same entries must hold equal state
//!   and must have returned equal responses. Configuration that influences results (such
//!   as a session-table bound) must be identical on every replica.
//! * **Order and indices.** Entries arrive in strictly increasing log index order, across
//!   batches too. Indices may have gaps: the runtime passes only entries that carry an
//!   application command; entries internal to Raft (a new leader's no-op, membership
//!   changes) are not passed. An implementation must refuse (with
//!   [`StateMachineError::IndexNotIncreasing`]) an entry whose index is not above
//!   [`StateMachine::applied_index`]: applying an entry twice would silently corrupt state.
//! * **Applied index bookkeeping.** `applied_index()` is the index of the last entry this
//!   state reflects (0 for the empty initial state). It is part of every snapshot and is
//!   returned by [`StateMachine::restore`], so a restarted node knows where to resume
//!   replaying the log. The entry at that index is committed, so the runtime can always
//!   look up its term in the log or in the snapshot metadata it wrote alongside.
//! * **Responses.** `apply` returns exactly one response per entry, in entry order. A
//!   command that fails by the rules of the database (say, incrementing a non-number) is a
//!   *response*, not an `Err`: it is deterministic and every replica produces it. An `Err`
//!   from `apply` means the state machine cannot continue (for example a disk-backed state
//!   machine hit an I/O error); the runtime stops the node (fail-stop), because replicas
//!   would otherwise diverge.
//! * **Snapshots while writes continue.** [`StateMachine::snapshot`] is called on the
//!   apply thread between batches and must be cheap (O(1) or close to it): it returns a
//!   [`SnapshotSource`] that a background thread serializes from a frozen point-in-time
//!   view while the apply thread keeps applying. Persistent (structural-sharing) maps make
//!   this a pointer copy; the KV store freezes its copy-on-write shards.
//! * **Restore is all-or-nothing.** [`StateMachine::restore`] either replaces the whole
//!   state (data, sessions, applied index) with the snapshot's, or fails with a typed error
//!   and leaves the current state untouched.
//! * **Reads.** [`StateMachine::query`] answers a read-only request from the current state
//!   without going through the log. Linearizability (lease or ReadIndex, and waiting until
//!   `applied_index()` reaches the read index) is the runtime's job, not the state
//!   machine's.

use std::io::{Read, Write};

/// One committed log entry handed to [`StateMachine::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommittedEntry<'a> {
    /// The entry's Raft log index. Invariant: strictly greater than the index of every
    /// entry applied before it.
    pub index: u64,
    /// The command bytes exactly as proposed by the client layer.
    pub payload: &'a [u8],
}

/// Errors a state machine reports to the runtime. All of them are fatal for `apply` (the
/// node stops) and fail the operation for `snapshot`/`restore`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateMachineError {
    /// An entry was offered whose index does not follow the applied index. This is a
    /// runtime bug: applying it could apply an entry twice.
    #[error("entry index {got} is not above the applied index {applied_index}")]
    IndexNotIncreasing {
        /// The index the state machine had already applied.
        applied_index: u64,
        /// The offending entry's index.
        got: u64,
    },
    /// Reading or writing snapshot bytes failed.
    #[error("snapshot I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The snapshot stream is not one this state machine wrote, or it is damaged.
    #[error("snapshot is corrupt: {reason}")]
    CorruptSnapshot {
        /// What check failed, in words.
        reason: String,
    },
    /// The snapshot was written by a format version this build does not read.
    #[error("snapshot format version {found} is not supported (this build reads {supported})")]
    UnsupportedSnapshotVersion {
        /// Version found in the stream.
        found: u8,
        /// Version this build reads.
        supported: u8,
    },
    /// A length or count in the snapshot exceeds the configured bound; nothing of that
    /// size was allocated.
    #[error("snapshot {what} of {found} exceeds the limit of {limit}")]
    SnapshotLimitExceeded {
        /// Which length or count.
        what: &'static str,
        /// The value found in the stream.
        found: u64,
        /// The configured bound.
        limit: u64,
    },
    /// An implementation-specific fatal failure (for example, a disk-backed state machine
    /// failed to persist an applied batch).
    #[error("state machine failed: {0}")]
    Fatal(String),
}

/// A frozen point-in-time view of a state machine that can be serialized on another
/// thread while the state machine keeps applying entries.
pub trait SnapshotSource: Send {
    /// The index of the last entry reflected in this view.
    fn applied_index(&self) -> u64;

    /// Writes the whole view to `out` in the format [`StateMachine::restore`] reads and
    /// returns the number of bytes written. The caller buffers `out` if it wants to.
    fn write_to(&mut self, out: &mut dyn Write) -> Result<u64, StateMachineError>;
}

/// The replicated state a database builder plugs into Tally. See the module docs for the
/// contract every implementation must keep.
pub trait StateMachine: Send {
    /// What one applied entry or one query produces; sent back to the waiting client.
    type Response: Send + 'static;

    /// Applies a batch of committed entries in order and returns one response per entry.
    ///
    /// On `Ok`, `applied_index()` equals the last entry's index (unchanged for an empty
    /// batch). On `Err`, the node must stop: the state may be partially updated.
    fn apply(
        &mut self,
        entries: &[CommittedEntry<'_>],
    ) -> Result<Vec<Self::Response>, StateMachineError>;

    /// Answers a read-only request from the current state, without touching the log.
    fn query(&self, request: &[u8]) -> Self::Response;

    /// The index of the last applied entry (0 before any entry was applied).
    fn applied_index(&self) -> u64;

    /// Captures a consistent point-in-time view for a background snapshot writer. Must be
    /// cheap: it runs on the apply thread.
    fn snapshot(&self) -> Box<dyn SnapshotSource>;

    /// Replaces the whole state with the snapshot read from `input` and returns the
    /// snapshot's applied index. On error the current state is left untouched.
    fn restore(&mut self, input: &mut dyn Read) -> Result<u64, StateMachineError>;

    /// A view that client threads may answer reads from themselves (lease reads off the
    /// raft and apply threads, `driver::lease`), or `None` (the default: every read goes
    /// through the apply thread). It must reflect at least every entry applied when it
    /// was made: a frozen copy, or (the KV store's) a handle on the live state that
    /// reads between entries. Must be cheap: it runs on the apply thread.
    fn read_view(&self) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        None
    }
}
