//! Errors that stop the inspector before it can give a verdict (exit code 2).

use std::io;

/// Why a command could not run. Every variant maps to exit code 2; verdicts about the
/// log itself (torn tail, corruption, divergence) are results, not errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    #[error("{path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a directory")]
    NotADirectory { path: String },
    #[error("{path}: not a Tally WAL: {reason}")]
    NotAWal { path: String, reason: String },
    #[error("{0}")]
    Usage(String),
    #[error("{path}: directory is in use (another process holds the WAL lock); stop the server before repairing")]
    Locked { path: String },
    #[error("repair failed on {path}: {source}")]
    RepairIo {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("writing output: {0}")]
    Output(#[source] io::Error),
}

impl From<io::Error> for ToolError {
    /// Only output writes convert implicitly; file errors carry their path explicitly.
    fn from(err: io::Error) -> Self {
        ToolError::Output(err)
    }
}

/// What a command concluded. `Clean` exits 0, `Problems` exits 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Clean,
    Problems,
}

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Clean => 0,
            Outcome::Problems => 1,
        }
    }
}
