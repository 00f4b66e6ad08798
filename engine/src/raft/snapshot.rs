//! Snapshot types shared by the core, the runtime and the wire codec.
//!
//! Why they live apart from the node: the runtime builds [`SnapshotMeta`] when it writes a
//! snapshot file, the codec carries it inside `InstallSnapshot`, and the follower's
//! runtime writes [`SnapshotChunk`]s to a temporary file. None of them needs the core.

use std::fmt;

use bytes::Bytes;

use super::config::Configuration;
use super::types::LogStart;

/// What a snapshot covers: everything through `index` (whose entry had `term`), with
/// the membership configuration in effect at that index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Last log index the snapshot includes. Invariant: committed cluster-wide.
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
    /// The configuration of the latest configuration entry at or below `index`.
    pub configuration: Configuration,
}

impl SnapshotMeta {
    /// The log start point a log compacted into this snapshot has.
    pub fn log_start(&self) -> LogStart {
        LogStart {
            last_index: self.index,
            last_term: self.term,
        }
    }
}

/// One received piece of a snapshot the runtime must write (see
/// `PersistAction::snapshot`). Chunks of one transfer arrive in order with contiguous
/// offsets; offset 0 starts a new temporary file.
#[derive(Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// What the whole snapshot covers (index, term, configuration); equal in every chunk
    /// of one transfer.
    pub meta: SnapshotMeta,
    /// Byte offset of `data` in the snapshot file.
    pub offset: u64,
    /// The bytes of this chunk, to be written at `offset` of the temporary file.
    pub data: Bytes,
    /// Size of the whole snapshot file.
    pub total_bytes: u64,
    /// CRC-32 (crc32fast) of the whole file; the core already checked it over the
    /// received chunks before emitting the last one.
    pub checksum: u32,
    /// The final chunk: fsync the file, rename it into place and fsync the directory
    /// before the persist action counts as durable.
    pub last: bool,
}

impl fmt::Debug for SnapshotChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotChunk")
            .field("meta", &self.meta)
            .field("offset", &self.offset)
            .field("data_bytes", &self.data.len())
            .field("total_bytes", &self.total_bytes)
            .field("checksum", &self.checksum)
            .field("last", &self.last)
            .finish()
    }
}

/// A durable local snapshot the leader sends to followers. `data` is the whole file
/// (usually a memory map); the core only slices chunks out of it.
#[derive(Clone)]
pub struct LocalSnapshot {
    /// What the snapshot covers (index, term, configuration).
    pub meta: SnapshotMeta,
    /// The whole snapshot file, as the state machine wrote it; chunks are slices of it
    /// (no copy).
    pub data: Bytes,
    /// CRC-32 of `data`, computed once when the snapshot was reported.
    pub checksum: u32,
}

impl fmt::Debug for LocalSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSnapshot")
            .field("meta", &self.meta)
            .field("data_bytes", &self.data.len())
            .field("checksum", &self.checksum)
            .finish()
    }
}

/// Why `RaftNode::snapshot_ready` refused a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The snapshot claims an index the state machine has not applied yet.
    #[error("snapshot at index {index} is above the applied index {applied}")]
    AboveApplied {
        /// Index the snapshot claims to cover.
        index: u64,
        /// This node's applied index.
        applied: u64,
    },
    /// The snapshot's term differs from the term of the log's entry at that index (or the
    /// log no longer holds it and cannot confirm it).
    #[error("snapshot at index {index} has term {term}, the log has {log_term:?} there")]
    TermMismatch {
        /// Index the snapshot claims to cover.
        index: u64,
        /// Term the snapshot claims for `index`.
        term: u64,
        /// Term the log holds at `index`; `None` when it holds no entry there.
        log_term: Option<u64>,
    },
    /// The snapshot's configuration differs from the configuration in effect at its index.
    #[error("snapshot at index {index} does not carry the configuration in effect there")]
    ConfigurationMismatch {
        /// Index the snapshot claims to cover.
        index: u64,
    },
    /// A snapshot at or above this index is already kept; the older one is not taken.
    #[error("snapshot at index {index} is not newer than the one kept ({kept_index})")]
    NotNewer {
        /// Index the refused snapshot covers.
        index: u64,
        /// Index of the snapshot already kept.
        kept_index: u64,
    },
    /// The node stopped after a fatal error and accepts no snapshot.
    #[error("the node stopped after a fatal error")]
    Stopped,
}

/// Why `RaftNode::compact_log` refused to compact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompactError {
    /// Compaction would drop entries the state machine has not applied.
    #[error("compaction through {through_index} is above the applied index {applied}")]
    AboveApplied {
        /// Index compaction was asked to reach.
        through_index: u64,
        /// This node's applied index.
        applied: u64,
    },
    /// Compaction would drop entries no durable snapshot covers yet.
    #[error(
        "compaction through {through_index} is above the newest snapshot ({snapshot_index:?})"
    )]
    AboveSnapshot {
        /// Index compaction was asked to reach.
        through_index: u64,
        /// Index of the newest durable snapshot; `None` when there is none.
        snapshot_index: Option<u64>,
    },
}
