//! Typed errors of the WAL crate.
//!
//! One enum for every operation keeps the API small; each variant carries what an
//! operator needs to act on it (file, offset, index). Errors that make the log unusable
//! until it is reopened (`Poisoned`) are separate from caller mistakes (`IndexGap`, ...),
//! which leave the log untouched.

use std::io;
use std::sync::Arc;

/// Result alias used throughout the crate.
pub type Result<T, E = WalError> = std::result::Result<T, E>;

/// Why the WAL stopped accepting work (fail-stop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoisonCause {
    /// An `fdatasync` failed. The kernel may already have dropped the dirty pages, so a
    /// retry could report success for data that is gone: the log must be reopened (and
    /// recovered from what is really on disk) instead.
    SyncFailed,
    /// A data write failed (including `ENOSPC` during a write). Reopening recovers every
    /// entry that was durable before the failure.
    WriteFailed,
}

/// Every error the WAL returns.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// An I/O error from the storage layer, with the operation and file it concerned.
    #[error("I/O error during {operation} on {file}: {source}")]
    Io {
        /// The step that failed, e.g. `"open"`, `"fdatasync"`, `"remove torn segment"`.
        operation: &'static str,
        /// The file name inside the WAL directory, or the directory itself for
        /// directory operations.
        file: String,
        /// The OS error (shared, so the error stays `Clone` for every waiting ticket).
        #[source]
        source: Arc<io::Error>,
    },
    /// The disk is full. Entries durable before this error are intact; the log is
    /// poisoned for this process and must be reopened once space is available.
    #[error("no space left on device during {operation} on {file}; free space and reopen the WAL (every previously durable entry is intact)")]
    NoSpace {
        /// The step that hit `ENOSPC`, as in [`WalError::Io`].
        operation: &'static str,
        /// The file (or directory) it concerned, as in [`WalError::Io`].
        file: String,
    },
    /// An `fdatasync` (or a write) failed earlier: the WAL refuses all further work.
    #[error("WAL is poisoned after an earlier {cause:?} ({detail}); fail-stop: no further writes or fsyncs are attempted, reopen the WAL to recover what is durable")]
    Poisoned {
        /// What kind of failure poisoned the log.
        cause: PoisonCause,
        /// The original failure (operation, file and OS error), for the operator.
        detail: String,
    },
    /// Another process (or handle) holds the directory lock.
    #[error("WAL directory {dir} is locked by another process or handle")]
    Locked {
        /// The directory, as [`Storage::describe`](crate::Storage::describe) names it.
        dir: String,
    },
    /// A bad batch was followed by valid data: this is corruption, not a torn write.
    #[error(
        "corruption in {file} at offset {offset} (expected entry index {expected_index}): {reason}"
    )]
    Corruption {
        /// The segment file name in which the damage starts.
        file: String,
        /// Byte offset in `file` of the bad batch (0 when the segment itself is bad).
        offset: u64,
        /// The entry index recovery would have read next at `offset` (the last
        /// recovered index + 1).
        expected_index: u64,
        /// What is wrong there and why it cannot be a torn write.
        reason: String,
    },
    /// The first appended entry does not follow the last one.
    #[error("index gap: expected entry index {expected}, got {got}")]
    IndexGap {
        /// The only index the append may start at: the last queued index + 1.
        expected: u64,
        /// The index of the first entry of the refused append.
        got: u64,
    },
    /// Entries in one append are not contiguous, or a term goes backwards.
    #[error("out-of-order entry at index {index}: {reason}")]
    OutOfOrder {
        /// Index of the entry that breaks the order.
        index: u64,
        /// Which rule it breaks (index not contiguous, term below the previous one).
        reason: String,
    },
    /// An entry payload exceeds [`WalOptions::max_entry_size_bytes`](crate::WalOptions),
    /// or one append's encoded entries exceed the largest batch a segment holds.
    #[error(
        "entry {index} payload of {size_bytes} bytes exceeds the maximum of {max_bytes} bytes"
    )]
    EntryTooLarge {
        /// Index of the oversized entry (the append's first index when the whole append
        /// is too large).
        index: u64,
        /// The size that was refused, in bytes.
        size_bytes: u64,
        /// The limit it exceeds, in bytes.
        max_bytes: u64,
    },
    /// The index is outside `first_index..=last_index`.
    #[error("index {index} is out of range (log holds {first_index}..={last_index})")]
    IndexOutOfRange {
        /// The index asked for.
        index: u64,
        /// First index the log held when asked.
        first_index: u64,
        /// Last index the log held when asked (`first_index - 1` when empty).
        last_index: u64,
    },
    /// A hard-state update would go backwards (lower term, or a second vote in a term).
    #[error("hard state regression: {reason}")]
    HardStateRegression {
        /// The current and the refused hard state, in words.
        reason: String,
    },
    /// The options are inconsistent (e.g. segment too small for the maximum entry), or
    /// the API was misused (e.g. [`WalCore::finish_commit`](crate::WalCore::finish_commit)
    /// without a commit in flight). The string says which.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The entries of a ticket were truncated before they became durable.
    #[error("entries up to {index} were truncated before they became durable")]
    Truncated {
        /// The last index the ticket covered.
        index: u64,
    },
    /// The WAL was shut down while the operation was pending.
    #[error("WAL is shut down")]
    Shutdown,
}

impl WalError {
    /// Wraps an `io::Error`, mapping `ENOSPC` to [`WalError::NoSpace`].
    pub fn io(operation: &'static str, file: impl Into<String>, source: io::Error) -> Self {
        let file = file.into();
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.kind() == io::ErrorKind::StorageFull
        {
            return WalError::NoSpace { operation, file };
        }
        WalError::Io {
            operation,
            file,
            source: Arc::new(source),
        }
    }

    /// True for [`Poisoned`](WalError::Poisoned), [`NoSpace`](WalError::NoSpace) and
    /// [`Io`](WalError::Io): errors no change to the request can fix. Treat this WAL
    /// instance as failed; dropping it and reopening the directory recovers every
    /// durable entry.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            WalError::Poisoned { .. } | WalError::NoSpace { .. } | WalError::Io { .. }
        )
    }
}
