//! The sans-IO Raft core.
//!
//! - [`node`]: [`RaftNode`], inputs and the [`Ready`] batch of actions, with the
//!   ordering rules between persistence and messages;
//! - [`log`]: the in-memory log with its persisted/committed/applied watermarks;
//! - [`message`]: messages between nodes (plain structs for the wire codec);
//! - [`config`]: membership and quorum arithmetic (joint consensus ready);
//! - [`progress`]: the leader's per-follower replication state;
//! - [`snapshot`]: snapshot metadata and chunks (compaction and InstallSnapshot).

/// An assertion of the core's own invariants. It is checked in debug builds and, with
/// the `invariants` cargo feature, in release builds too (the simulator turns it on so
/// that `--release` runs check everything); otherwise it compiles to nothing. Never use
/// it on data from the network or disk: validate those and refuse them instead.
macro_rules! invariant {
    ($($arg:tt)*) => {
        if cfg!(any(debug_assertions, feature = "invariants")) {
            assert!($($arg)*);
        }
    };
}

pub mod config;
pub mod log;
pub mod message;
pub mod node;
pub mod progress;
pub mod snapshot;
pub mod types;

pub use config::{Configuration, MemberInfo, VoteResult};
pub use log::RaftLog;
pub use message::{
    AppendEntries, AppendEntriesResponse, ConflictHint, InstallSnapshot, InstallSnapshotResponse,
    Message, MessageBody, RequestVote, VoteResponse,
};
pub use node::{
    ConfigChangeError, CoreError, CoreStats, PersistAction, ProposeError, RaftConfig, RaftNode,
    ReadError, ReadPath, Ready, ReadyRead, RoleState, TransferError,
};
pub use progress::{Progress, ReplicationState, SnapshotTransfer};
pub use snapshot::{CompactError, LocalSnapshot, SnapshotChunk, SnapshotError, SnapshotMeta};
pub use types::{Entry, EntryKind, HardState, LogStart, NodeId, Role};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod snapshot_tests;
