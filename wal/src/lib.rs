//! tally-wal: a segmented, checksummed, group-commit write-ahead log.
//!
//! Layers, bottom up (see `ARCHITECTURE.md` and `FORMAT.md`):
//! - [`storage`]: a directory of files, real ([`FsStorage`]) or simulated with crashes and
//!   faults ([`SimStorage`]);
//! - [`format`]: the byte-exact segment and batch encoding;
//! - [`WalCore`]: synchronous recovery, index, append/truncate/compact/hard state and the
//!   separated write and sync steps (what the deterministic simulator drives);
//! - [`Wal`]: the thread-safe group-commit handle (one writer thread, one write and one
//!   fdatasync per batch) over an [`IoBackend`] (io_uring or pwritev);
//! - [`snapshot`]: durable, checksummed snapshot files in the same directory.

pub mod backend;
mod core;
pub mod error;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspect;
pub mod snapshot;
pub mod storage;
mod wal;

pub use crate::backend::{
    make_backend, Backend, BackendError, IoBackend, SyncBackend, UringBackend,
};
pub use crate::core::{DroppedRegion, Entry, PendingCommit, RecoveryReport, WalCore, WalOptions};
pub use crate::error::{PoisonCause, Result, WalError};
pub use crate::format::{HardState, ENTRY_RECORD_HEADER_LEN};
pub use crate::snapshot::{
    SnapshotError, SnapshotHeader, SnapshotInfo, SnapshotOptions, SnapshotReader, SnapshotReceiver,
    SnapshotStore, SnapshotWriter,
};
pub use crate::storage::{FsStorage, SimStorage, Storage, StorageFile, Tear};
pub use crate::wal::{GroupCommitOptions, Ticket, Wal, WalStats, WalStatsSnapshot};
