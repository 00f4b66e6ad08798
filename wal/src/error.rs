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
        operation: &'static str,
        file: String,
        #[source]
        source: Arc<io::Error>,
    },
    /// The disk is full. Entries durable before this error are intact; the log is
    /// poisoned for this process and must be reopened once space is available.
    #[error("no space left on device during {operation} on {file}; free space and reopen the WAL (every previously durable entry is intact)")]
    NoSpace {
        operation: &'static str,
        file: String,
    },
    /// An `fdatasync` (or a write) failed earlier: the WAL refuses all further work.
    #[error("WAL is poisoned after an earlier {cause:?} ({detail}); fail-stop: no further writes or fsyncs are attempted, reopen the WAL to recover what is durable")]
    Poisoned { cause: PoisonCause, detail: String },
    /// Another process (or handle) holds the directory lock.
    #[error("WAL directory {dir} is locked by another process or handle")]
    Locked { dir: String },
    /// A bad batch was followed by valid data: this is corruption, not a torn write.
    #[error(
        "corruption in {file} at offset {offset} (expected entry index {expected_index}): {reason}"
    )]
    Corruption {
        file: String,
        offset: u64,
        expected_index: u64,
        reason: String,
    },
    /// The first appended entry does not follow the last one.
    #[error("index gap: expected entry index {expected}, got {got}")]
    IndexGap { expected: u64, got: u64 },
    /// Entries in one append are not contiguous, or a term goes backwards.
    #[error("out-of-order entry at index {index}: {reason}")]
    OutOfOrder { index: u64, reason: String },
    /// An entry payload exceeds the configured maximum.
    #[error(
        "entry {index} payload of {size_bytes} bytes exceeds the maximum of {max_bytes} bytes"
    )]
    EntryTooLarge {
        index: u64,
        size_bytes: u64,
        max_bytes: u64,
    },
    /// The index is outside `first_index..=last_index`.
    #[error("index {index} is out of range (log holds {first_index}..={last_index})")]
    IndexOutOfRange {
        index: u64,
        first_index: u64,
        last_index: u64,
    },
    /// A hard-state update would go backwards (lower term, or a second vote in a term).
    #[error("hard state regression: {reason}")]
    HardStateRegression { reason: String },
    /// The options are inconsistent (e.g. segment too small for the maximum entry).
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The entries of a ticket were truncated before they became durable.
    #[error("entries up to {index} were truncated before they became durable")]
    Truncated { index: u64 },
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

    /// True for errors after which this WAL instance refuses all work.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            WalError::Poisoned { .. } | WalError::NoSpace { .. } | WalError::Io { .. }
        )
    }
}
