//! tally-wal: a segmented, checksummed, group-commit write-ahead log.
//!
//! Layers, bottom up (see `ARCHITECTURE.md` and `FORMAT.md`):
//! - [`storage`]: a directory of files, real ([`FsStorage`]) or simulated with crashes and
//!   faults ([`SimStorage`]);
//! - [`format`](mod@format): the byte-exact segment and batch encoding;
//! - [`WalCore`]: synchronous recovery, index, append/truncate/compact/hard state and the
//!   separated write and sync steps (what the deterministic simulator drives);
//! - [`Wal`]: the thread-safe group-commit handle (one writer thread, one write and one
//!   fdatasync per batch) over an [`IoBackend`] (io_uring or pwritev);
//! - [`snapshot`]: durable, checksummed snapshot files in the same directory;
//! - [`inspect`]: a read-only scanner that tells what recovery would do to a directory.
//!
//! # Example
//!
//! Open a log, append, wait until the entries are durable, reopen and read them back.
//! [`Ticket::wait`] returns `Ok` only after the batch holding the entries was written and
//! fdatasynced; reopening runs recovery ([`Wal::recovery_report`] says what it found).
//!
//! ```
//! use bytes::Bytes;
//! use tally_wal::{GroupCommitOptions, Wal, WalOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let options = GroupCommitOptions {
//!     // Small segments keep the example's preallocated files small.
//!     wal: WalOptions {
//!         segment_size_bytes: 1 << 20,
//!         max_entry_size_bytes: 64 << 10,
//!         ..WalOptions::default()
//!     },
//!     ..GroupCommitOptions::default()
//! };
//!
//! let wal = Wal::open(dir.path(), options.clone())?;
//! let payloads = [Bytes::from_static(b"set x 1"), Bytes::from_static(b"set y 2")];
//! // The WAL assigns indexes 1 and 2, both in term 1, kind 0 (the kind is opaque).
//! let ticket = wal.append_assign(1, 0, &payloads)?;
//! assert_eq!(ticket.last_index(), 2);
//! let durable_index = ticket.wait()?;
//! assert!(durable_index >= 2);
//! drop(wal); // stops the writer thread and releases the directory lock
//!
//! let wal = Wal::open(dir.path(), options)?;
//! assert_eq!(wal.recovery_report().entries_recovered, 2);
//! assert!(wal.recovery_report().dropped.is_empty()); // a clean shutdown tears nothing
//! let entries = wal.read_range(1..3)?;
//! assert_eq!(entries[0].payload, payloads[0]);
//! assert_eq!((entries[1].index, entries[1].term), (2, 1));
//! # Ok(())
//! # }
//! ```
//!
//! Errors are one enum, [`WalError`]; [`WalError::is_fatal`] tells the errors after which
//! the instance must be dropped and the directory reopened. A failed fdatasync is never
//! retried: it poisons the instance ([`PoisonCause`]).

#![warn(missing_docs)]

pub mod backend;
mod batch_wake;
mod core;
pub mod error;
pub mod format;
mod futex;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspect;
pub mod snapshot;
pub mod storage;
mod wal;

pub use crate::backend::{
    make_backend, Backend, BackendError, IoBackend, SyncBackend, UringBackend,
};
pub use crate::core::{
    DroppedRegion, Entry, PendingCommit, RecoveryReport, WalCore, WalOptions,
    CACHE_RELEASE_LAG_BYTES, CACHE_RELEASE_STEP_BYTES,
};
pub use crate::error::{PoisonCause, Result, WalError};
pub use crate::format::{HardState, ENTRY_RECORD_HEADER_LEN};
pub use crate::snapshot::{
    SnapshotError, SnapshotHeader, SnapshotInfo, SnapshotOptions, SnapshotReader, SnapshotReceiver,
    SnapshotStore, SnapshotWriter,
};
pub use crate::storage::{FsStorage, SimStorage, Storage, StorageFile, Tear};
pub use crate::wal::{
    GroupCommitOptions, Ticket, Wal, WalStats, WalStatsSnapshot, FSYNC_HISTOGRAM_BUCKETS,
};
