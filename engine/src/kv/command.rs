//! The KV command model: commands, requests with sessions, limits and replies.

use bytes::Bytes;

use super::codec::KvDecodeError;

/// Bounds on what the KV state machine accepts. Must be identical on every replica
/// (`max_sessions` decides evictions, which decide replies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Largest key or value, in bytes.
    pub max_argument_bytes: usize,
    /// Most keys (or key-value pairs for MSET) in one command.
    pub max_arguments: usize,
    /// Most client sessions remembered; the least recently written one is evicted beyond.
    pub max_sessions: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits {
            max_argument_bytes: 64 << 20,
            max_arguments: 1 << 20,
            max_sessions: 65_536,
        }
    }
}

/// Identifies a client's request for duplicate detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientSession {
    /// Nonzero id, unique per client for the life of the cluster.
    pub client_id: u64,
    /// Per-client request number, starting at 1 and increasing by any step.
    pub sequence: u64,
}

/// One KV command, borrowing its keys and values from the encoded request or the
/// client's argument buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `SET key value` -> `OK`.
    Set { key: &'a [u8], value: &'a [u8] },
    /// `GET key` -> bulk or null.
    Get { key: &'a [u8] },
    /// `DEL key [key ...]` -> number of keys removed.
    Del { keys: Vec<&'a [u8]> },
    /// `EXISTS key [key ...]` -> number of the given keys that exist (repeats count again).
    Exists { keys: Vec<&'a [u8]> },
    /// `INCR key` -> the new value; a missing key counts as 0.
    Incr { key: &'a [u8] },
    /// `MGET key [key ...]` -> array of bulk-or-null.
    MGet { keys: Vec<&'a [u8]> },
    /// `MSET key value [key value ...]` -> `OK`.
    MSet { pairs: Vec<(&'a [u8], &'a [u8])> },
    /// `CAS key expected new` -> 1 if swapped, 0 if not (see the module docs).
    Cas {
        key: &'a [u8],
        expected: &'a [u8],
        new: &'a [u8],
    },
}

impl Command<'_> {
    /// True for commands that never change state (GET, MGET, EXISTS): they may be served
    /// by [`KvReadView::query`](super::KvReadView::query) instead of going through the log.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Command::Get { .. } | Command::MGet { .. } | Command::Exists { .. }
        )
    }

    /// The lowercase Redis command name.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Set { .. } => "set",
            Command::Get { .. } => "get",
            Command::Del { .. } => "del",
            Command::Exists { .. } => "exists",
            Command::Incr { .. } => "incr",
            Command::MGet { .. } => "mget",
            Command::MSet { .. } => "mset",
            Command::Cas { .. } => "cas",
        }
    }
}

/// A decoded log payload: optional session plus command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// `None` when the request carries no session (client id 0).
    pub session: Option<ClientSession>,
    /// The command.
    pub command: Command<'a>,
}

/// Errors a KV command replies with. `Display` is the Redis error line (without `-`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// INCR on a value that is not a base-10 signed 64-bit integer.
    #[error("ERR value is not an integer or out of range")]
    NotAnInteger,
    /// INCR past `i64::MAX`.
    #[error("ERR increment or decrement would overflow")]
    IncrOverflow,
    /// A request older than the client's last applied one; its reply is gone.
    #[error(
        "ERR stale request: client {client_id} sequence {sequence} is older than the last \
         applied sequence {last_sequence}"
    )]
    StaleSequence {
        client_id: u64,
        sequence: u64,
        last_sequence: u64,
    },
    /// The log entry or query is not a valid encoded request.
    #[error("ERR malformed command: {0}")]
    Malformed(KvDecodeError),
    /// A write command was sent to the read path.
    #[error("ERR '{0}' changes state and cannot be served as a read")]
    NotReadOnly(&'static str),
}

/// The reply to one KV command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvResponse {
    /// `+OK`.
    Ok,
    /// `:n`.
    Integer(i64),
    /// A bulk string, or the null bulk for a missing key.
    Bulk(Option<Bytes>),
    /// An array of bulk-or-null (MGET).
    Array(Vec<Option<Bytes>>),
    /// An error reply.
    Error(KvError),
}
