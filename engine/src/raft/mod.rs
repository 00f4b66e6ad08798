//! The sans-IO Raft core.
//!
//! - [`node`]: [`RaftNode`], inputs and the [`Ready`] batch of actions, with the
//!   ordering rules between persistence and messages;
//! - [`log`]: the in-memory log with its persisted/committed/applied watermarks;
//! - [`message`]: messages between nodes (plain structs for the wire codec);
//! - [`config`]: membership and quorum arithmetic (joint consensus ready);
//! - [`progress`]: the leader's per-follower replication state.

pub mod config;
pub mod log;
pub mod message;
pub mod node;
pub mod progress;
pub mod types;

pub use config::{Configuration, VoteResult};
pub use log::RaftLog;
pub use message::{
    AppendEntries, AppendEntriesResponse, ConflictHint, InstallSnapshot, InstallSnapshotResponse,
    Message, MessageBody, RequestVote, VoteResponse,
};
pub use node::{
    ConfigChangeError, PersistAction, ProposeError, RaftConfig, RaftNode, ReadError, ReadPath,
    Ready, ReadyRead, RoleState, TransferError,
};
pub use progress::{Progress, ReplicationState};
pub use types::{Entry, EntryKind, HardState, LogStart, NodeId, Role};

#[cfg(test)]
mod tests;
