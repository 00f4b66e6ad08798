//! Plain data types shared by the Raft core, its log and its messages.
//!
//! These types carry no behaviour beyond small helpers: the runtime persists them,
//! the wire codec encodes them, and the simulator inspects them.

use bytes::Bytes;

/// Identifier of a cluster member. Zero is reserved as "nobody" on the wire; the
/// core never assigns it to a node.
pub type NodeId = u64;

/// What a log entry carries. Encodable as a `u8` so the runtime can store it in the
/// WAL's `kind` byte without a translation table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A client command, handed to the state machine when committed.
    Normal,
    /// The empty entry a new leader appends so that an entry of its own term gets
    /// committed (Raft §5.4.2, §8). Skipped by the state machine.
    Noop,
    /// A membership change: the data is an encoded [`crate::raft::Configuration`].
    Config,
}

impl EntryKind {
    /// The byte this kind is stored as.
    pub fn as_u8(self) -> u8 {
        match self {
            EntryKind::Normal => 0,
            EntryKind::Noop => 1,
            EntryKind::Config => 2,
        }
    }

    /// Decodes a stored kind byte; `None` for a byte no version of Tally writes.
    pub fn from_u8(byte: u8) -> Option<EntryKind> {
        match byte {
            0 => Some(EntryKind::Normal),
            1 => Some(EntryKind::Noop),
            2 => Some(EntryKind::Config),
            _ => None,
        }
    }
}

/// One replicated log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log, starting at 1. Invariant: unique and contiguous in a log.
    pub index: u64,
    /// Term of the leader that created the entry. Invariant: non-decreasing with index.
    pub term: u64,
    /// Whether the entry is a client command, a leader's no-op or a membership change;
    /// decides what the state machine is handed when the entry commits.
    pub kind: EntryKind,
    /// The payload: the client command for [`EntryKind::Normal`], empty for
    /// [`EntryKind::Noop`], an encoded [`crate::raft::Configuration`] for
    /// [`EntryKind::Config`]. Shared (reference-counted), so cloning an entry copies no bytes.
    pub data: Bytes,
}

impl Entry {
    /// Bytes this entry costs on the wire and in in-flight accounting (payload plus a
    /// fixed header estimate), used for batching and flow control.
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// Header estimate per entry (index, term, kind, length) for byte budgets.
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

/// State that must be durable before the node answers anything that depends on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Latest term this node has seen. Invariant: never decreases across restarts.
    pub term: u64,
    /// Candidate this node voted for in `term`, if any. Invariant: at most one per term.
    pub voted_for: Option<NodeId>,
}

/// The point the log starts after: everything up to and including `last_index` lives
/// in a snapshot (or nowhere, for a fresh log: index 0, term 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStart {
    /// Last log index the snapshot covers; the first entry of the log is `last_index + 1`.
    pub last_index: u64,
    /// Term of the entry at `last_index` (needed for the AppendEntries consistency check
    /// of the first retained entry).
    pub last_term: u64,
}

/// Role of a node in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Accepts entries from a leader and votes; the initial role of every voter.
    Follower,
    /// Running a pre-vote round: term not yet incremented (thesis §9.6).
    PreCandidate,
    /// Incremented its term and asks the voters for their votes (Raft §5.2).
    Candidate,
    /// Accepts proposals and replicates the log; at most one per term.
    Leader,
    /// A non-voting member receiving the log (not yet reachable: needs config changes).
    Learner,
}
