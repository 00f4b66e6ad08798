//! Messages between Raft nodes.
//!
//! Plain structs with public fields so the wire codec (tally-net) can encode them
//! without knowing the core. Every message carries the sender's term; the core handles
//! term changes uniformly before looking at the body.

use bytes::Bytes;

use super::snapshot::SnapshotMeta;
use super::types::{Entry, NodeId};

/// A message from one node to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's current term. For `PreVote` it is the term the sender *would*
    /// campaign in (its term + 1); for a granted `PreVoteResponse` it echoes that term.
    pub term: u64,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    AppendEntries(AppendEntries),
    AppendEntriesResponse(AppendEntriesResponse),
    RequestVote(RequestVote),
    RequestVoteResponse(VoteResponse),
    PreVote(RequestVote),
    PreVoteResponse(VoteResponse),
    /// Sent by a leader to the target of a leadership transfer: start an election now,
    /// skipping pre-vote.
    TimeoutNow,
    /// Snapshot transfer for followers whose next entry was compacted away.
    InstallSnapshot(InstallSnapshot),
    InstallSnapshotResponse(InstallSnapshotResponse),
}

/// Replicates entries (possibly none: a heartbeat) after `prev_log_index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntries {
    pub prev_log_index: u64,
    pub prev_log_term: u64,
    pub entries: Vec<Entry>,
    pub leader_commit: u64,
    /// The leader's heartbeat counter when it sent this message, echoed in the reply.
    /// A reply echoing an id at least a ReadIndex request's id proves the sender was
    /// still leader after that request arrived.
    pub heartbeat_id: u64,
    /// The leader's tick count when it sent this message, echoed in the reply; the
    /// leader's lease is measured from the oldest send time a quorum acknowledged.
    pub sent_at_tick: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntriesResponse {
    pub success: bool,
    /// On success: the follower's log matches the leader's through this index and is
    /// durable through it.
    pub match_index: u64,
    /// The `prev_log_index` of the request this answers (lets the leader discard stale
    /// rejections).
    pub rejected_prev_index: u64,
    /// On failure: where the logs may diverge (fast backup).
    pub conflict: Option<ConflictHint>,
    pub heartbeat_id: u64,
    pub sent_at_tick: u64,
}

/// Fast-backup hint of a rejected AppendEntries (the 6.824 XTerm/XIndex/XLen scheme).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConflictHint {
    /// Term of the follower's entry at `prev_log_index`; `None` when its log is shorter.
    pub conflict_term: Option<u64>,
    /// First index the follower holds with `conflict_term` (meaningful with a term).
    pub first_index_of_conflict_term: u64,
    /// The follower's last log index.
    pub last_log_index: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestVote {
    pub last_log_index: u64,
    pub last_log_term: u64,
    /// Set when the election was triggered by `TimeoutNow`: voters then disregard the
    /// fact that they recently heard from the (transferring) leader.
    pub leadership_transfer: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteResponse {
    pub granted: bool,
}

/// One chunk of the leader's newest snapshot, for a follower whose next entry was
/// compacted away. Chunks of one transfer share `meta`, `total_bytes` and `checksum`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallSnapshot {
    /// Last included index and term, and the configuration at that index.
    pub meta: SnapshotMeta,
    /// Size of the whole snapshot.
    pub total_bytes: u64,
    /// CRC-32 (crc32fast) of the whole snapshot.
    pub checksum: u32,
    /// Byte offset of `data` in the snapshot.
    pub offset: u64,
    pub data: Bytes,
    /// The last chunk: `offset + data.len() == total_bytes`.
    pub done: bool,
}

/// A follower's answer to an `InstallSnapshot` chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstallSnapshotResponse {
    /// `meta.index` of the chunk answered.
    pub snapshot_index: u64,
    /// The offset the follower expects next (what it holds durably when accepted).
    pub next_offset: u64,
    /// The follower's state covers `snapshot_index` durably (installed, or its log
    /// already held it): the leader continues with AppendEntries after it.
    pub installed: bool,
    /// The chunk was refused (wrong offset, or the whole snapshot failed its
    /// checksum and `next_offset` is 0): resend from `next_offset`.
    pub rejected: bool,
}

impl MessageBody {
    /// Short name for traces and statistics.
    pub fn kind_name(&self) -> &'static str {
        match self {
            MessageBody::AppendEntries(append) if append.entries.is_empty() => "Heartbeat",
            MessageBody::AppendEntries(_) => "AppendEntries",
            MessageBody::AppendEntriesResponse(_) => "AppendEntriesResponse",
            MessageBody::RequestVote(_) => "RequestVote",
            MessageBody::RequestVoteResponse(_) => "RequestVoteResponse",
            MessageBody::PreVote(_) => "PreVote",
            MessageBody::PreVoteResponse(_) => "PreVoteResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::InstallSnapshot(_) => "InstallSnapshot",
            MessageBody::InstallSnapshotResponse(_) => "InstallSnapshotResponse",
        }
    }

    /// Payload bytes of the entries carried (0 for everything but AppendEntries).
    pub fn payload_bytes(&self) -> u64 {
        match self {
            MessageBody::AppendEntries(append) => append
                .entries
                .iter()
                .map(|entry| entry.data.len() as u64)
                .sum(),
            _ => 0,
        }
    }

    /// Estimated encoded size: fixed header plus entries.
    pub fn size_bytes(&self) -> u64 {
        const HEADER_BYTES: u64 = 64;
        match self {
            MessageBody::AppendEntries(append) => {
                HEADER_BYTES + append.entries.iter().map(Entry::size_bytes).sum::<u64>()
            }
            MessageBody::InstallSnapshot(snapshot) => HEADER_BYTES + snapshot.data.len() as u64,
            _ => HEADER_BYTES,
        }
    }
}
