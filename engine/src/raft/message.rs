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
    /// Sender; never 0 and never the recipient (such a message is ignored). tally-net
    /// checks it against the peer its connection's handshake established.
    pub from: NodeId,
    /// Recipient; [`RaftNode::step`](crate::raft::RaftNode::step) ignores a message
    /// addressed to another node.
    pub to: NodeId,
    /// The sender's current term. For `PreVote` it is the term the sender *would*
    /// campaign in (its term + 1); for a granted `PreVoteResponse` it echoes that term.
    pub term: u64,
    /// What the message says.
    pub body: MessageBody,
}

/// The Raft RPCs and their answers (Raft §5, pre-vote §9.6, leadership transfer §3.10,
/// snapshots §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Leader to follower: entries to append, or a heartbeat when empty.
    AppendEntries(AppendEntries),
    /// Follower to leader: whether the append matched, and how far.
    AppendEntriesResponse(AppendEntriesResponse),
    /// Candidate to voter: vote for me in `Message::term`.
    RequestVote(RequestVote),
    /// Voter to candidate: granted or not.
    RequestVoteResponse(VoteResponse),
    /// Pre-candidate to voter: would you vote for me in `Message::term`? Changes no term.
    PreVote(RequestVote),
    /// Voter to pre-candidate: would grant or not.
    PreVoteResponse(VoteResponse),
    /// Sent by a leader to the target of a leadership transfer: start an election now,
    /// skipping pre-vote.
    TimeoutNow,
    /// Snapshot transfer for followers whose next entry was compacted away.
    InstallSnapshot(InstallSnapshot),
    /// Follower to leader: the chunk's outcome and the offset expected next.
    InstallSnapshotResponse(InstallSnapshotResponse),
}

/// Replicates entries (possibly none: a heartbeat) after `prev_log_index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntries {
    /// Index of the entry just before `entries` (0 when they start the log).
    pub prev_log_index: u64,
    /// Term of the entry at `prev_log_index`; the follower rejects the request unless its
    /// own log has that term there (the log-matching check).
    pub prev_log_term: u64,
    /// Entries to append after `prev_log_index`, in index order; empty for a heartbeat.
    pub entries: Vec<Entry>,
    /// The leader's commit index; the follower commits up to the lower of it and the last
    /// index this request made it match.
    pub leader_commit: u64,
    /// The leader's heartbeat counter when it sent this message, echoed in the reply.
    /// A reply echoing an id at least a ReadIndex request's id proves the sender was
    /// still leader after that request arrived.
    pub heartbeat_id: u64,
    /// The leader's tick count when it sent this message, echoed in the reply; the
    /// leader's lease is measured from the oldest send time a quorum acknowledged.
    pub sent_at_tick: u64,
}

/// A follower's answer to [`AppendEntries`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntriesResponse {
    /// The follower's log held `prev_log_index` with `prev_log_term` and took the entries.
    pub success: bool,
    /// On success: the follower's log matches the leader's through this index and is
    /// durable through it.
    pub match_index: u64,
    /// The `prev_log_index` of the request this answers (lets the leader discard stale
    /// rejections).
    pub rejected_prev_index: u64,
    /// On failure: where the logs may diverge (fast backup).
    pub conflict: Option<ConflictHint>,
    /// `heartbeat_id` of the request answered (for ReadIndex confirmation).
    pub heartbeat_id: u64,
    /// `sent_at_tick` of the request answered (for the leader's lease).
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

/// A (pre-)vote request; voters grant it only to a log at least as up to date as their
/// own (Raft §5.4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestVote {
    /// Index of the candidate's last log entry.
    pub last_log_index: u64,
    /// Term of the candidate's last log entry.
    pub last_log_term: u64,
    /// Set when the election was triggered by `TimeoutNow`: voters then disregard the
    /// fact that they recently heard from the (transferring) leader.
    pub leadership_transfer: bool,
}

/// A voter's answer to [`RequestVote`] or a pre-vote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteResponse {
    /// Whether the vote (or pre-vote) was granted.
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
    /// The bytes of this chunk: `data.len()` bytes starting at `offset`.
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
