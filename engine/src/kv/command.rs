//! The KV command model: commands, requests with sessions, limits and replies.

use bytes::Bytes;

use super::codec::KvDecodeError;

/// Bounds on what the KV state machine accepts. Must be identical on every replica
/// (`max_sessions` decides evictions, which decide replies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Largest key or value, in bytes (also the largest value APPEND or SETRANGE may
    /// build: a snapshot must be able to hold every value).
    pub max_argument_bytes: usize,
    /// Most keys (or key-value pairs for MSET, or commands in a transaction) in one
    /// command.
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

/// Most keys one [`Command::PurgeExpired`] entry removes (and [`Command::ExpiryBacklog`]
/// counts): bounds the work of one entry on every replica's apply thread.
pub const MAX_PURGE_KEYS: u32 = 1024;

/// Identifies a client's request for duplicate detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientSession {
    /// Nonzero id, unique per client for the life of the cluster.
    pub client_id: u64,
    /// Per-client request number, starting at 1 and increasing by any step.
    pub sequence: u64,
}

/// When a key expires, as a command states it. Relative times are turned into log time
/// when the entry applies (every replica adds the same entry time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// `EX`/`PX`/`EXPIRE`/`PEXPIRE`: milliseconds after the entry's log time.
    AfterMs(i64),
    /// `EXAT`/`PXAT`/`EXPIREAT`/`PEXPIREAT`: a Unix time in milliseconds.
    AtMs(i64),
}

/// What SET does to an existing time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTtl {
    /// Plain SET: the key loses any time to live.
    Clear,
    /// `KEEPTTL`.
    Keep,
    /// `EX`, `PX`, `EXAT`, `PXAT`.
    Expire(Expiry),
}

/// `SET ... NX|XX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCondition {
    /// No condition (neither `NX` nor `XX`).
    Always,
    /// Only if the key does not exist.
    IfMissing,
    /// Only if the key exists.
    IfExists,
}

/// The options of `SET key value [NX|XX] [GET] [EX|PX|EXAT|PXAT|KEEPTTL]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetOptions {
    /// `NX`, `XX` or neither.
    pub condition: SetCondition,
    /// `GET`: reply with the old value (or nil) instead of OK.
    pub get: bool,
    /// `EX`, `PX`, `EXAT`, `PXAT`, `KEEPTTL`, or none (the time to live is cleared).
    pub ttl: SetTtl,
}

/// `GETEX` options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetExTtl {
    /// No option: the time to live is unchanged.
    Unchanged,
    /// `PERSIST`.
    Persist,
    /// `EX`, `PX`, `EXAT`, `PXAT`.
    Expire(Expiry),
}

/// `EXPIRE ... NX|XX|GT|LT` (a key without a time to live counts as infinite for GT/LT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireCondition {
    /// No condition: the expiry is always set.
    Always,
    /// Only if the key has no time to live.
    IfNone,
    /// Only if the key has one.
    IfSome,
    /// Only if the new expiry is later.
    IfGreater,
    /// Only if the new expiry is earlier.
    IfLess,
    /// `XX LT`: only if the key has an expiry and the new one is earlier.
    IfSomeAndLess,
}

/// A key a transaction watches, with what the WATCH read saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedKey<'a> {
    /// The watched key.
    pub key: &'a [u8],
    /// Whether the key existed at the WATCH read.
    pub existed: bool,
}

/// One KV command, borrowing its keys and values from the encoded request or the
/// client's argument buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `SET key value` -> `OK`.
    Set {
        /// The key.
        key: &'a [u8],
        /// The value stored.
        value: &'a [u8],
    },
    /// `GET key` -> bulk or null.
    Get {
        /// The key.
        key: &'a [u8],
    },
    /// `DEL key [key ...]` (and `UNLINK`) -> number of keys removed.
    Del {
        /// The keys, in the client's order (at least one).
        keys: Vec<&'a [u8]>,
    },
    /// `EXISTS key [key ...]` -> number of the given keys that exist (repeats count again).
    Exists {
        /// The keys, in the client's order (at least one).
        keys: Vec<&'a [u8]>,
    },
    /// `INCR key` -> the new value; a missing key counts as 0.
    Incr {
        /// The key.
        key: &'a [u8],
    },
    /// `MGET key [key ...]` -> array of bulk-or-null.
    MGet {
        /// The keys, in the client's order (at least one).
        keys: Vec<&'a [u8]>,
    },
    /// `MSET key value [key value ...]` -> `OK`.
    MSet {
        /// `(key, value)` pairs, applied in order (a later pair wins).
        pairs: Vec<(&'a [u8], &'a [u8])>,
    },
    /// `CAS key expected new` -> 1 if swapped, 0 if not (see the module docs).
    Cas {
        /// The key.
        key: &'a [u8],
        /// The value the key must hold for the swap.
        expected: &'a [u8],
        /// The value stored when it does.
        new: &'a [u8],
    },
    /// `SET key value` with options, `SETEX`, `PSETEX`.
    SetWith {
        /// The key.
        key: &'a [u8],
        /// The value stored.
        value: &'a [u8],
        /// Condition, `GET` and time to live.
        options: SetOptions,
    },
    /// `SETNX key value` -> 1 if set, 0 if the key existed.
    SetNx {
        /// The key.
        key: &'a [u8],
        /// The value stored when the key is missing.
        value: &'a [u8],
    },
    /// `MSETNX` -> 1 if every key was missing (all set), else 0 (none set).
    MSetNx {
        /// `(key, value)` pairs.
        pairs: Vec<(&'a [u8], &'a [u8])>,
    },
    /// `INCRBY`/`DECR`/`DECRBY` -> the new value.
    IncrBy {
        /// The key.
        key: &'a [u8],
        /// Amount added (negative for `DECR`/`DECRBY`).
        delta: i64,
    },
    /// `INCRBYFLOAT key delta` -> the new value as a bulk string. `delta` is the
    /// client's text, parsed (the same way on every replica) when the entry applies.
    IncrByFloat {
        /// The key.
        key: &'a [u8],
        /// The increment as the client wrote it.
        delta: &'a [u8],
    },
    /// `APPEND key value` -> the new length.
    Append {
        /// The key.
        key: &'a [u8],
        /// Bytes appended to the value (a missing key counts as empty).
        value: &'a [u8],
    },
    /// `STRLEN key` -> length (0 if missing).
    Strlen {
        /// The key.
        key: &'a [u8],
    },
    /// `GETRANGE key start end` (inclusive, negative from the end).
    GetRange {
        /// The key.
        key: &'a [u8],
        /// First byte offset (negative: from the end).
        start: i64,
        /// Last byte offset, inclusive (negative: from the end).
        end: i64,
    },
    /// `SETRANGE key offset value` -> the new length.
    SetRange {
        /// The key.
        key: &'a [u8],
        /// Byte offset at which `value` is written (the value is zero-padded up to it).
        offset: u64,
        /// Bytes written.
        value: &'a [u8],
    },
    /// `GETSET key value` -> the old value.
    GetSet {
        /// The key.
        key: &'a [u8],
        /// The new value.
        value: &'a [u8],
    },
    /// `GETDEL key` -> the value, then the key is gone.
    GetDel {
        /// The key.
        key: &'a [u8],
    },
    /// `GETEX key [options]` -> the value.
    GetEx {
        /// The key.
        key: &'a [u8],
        /// What to do with the time to live.
        ttl: GetExTtl,
    },
    /// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT` -> 1 if set (or the key deleted
    /// because the time is past), 0 if not.
    Expire {
        /// The key.
        key: &'a [u8],
        /// When the key expires.
        at: Expiry,
        /// When to set it (`NX`, `XX`, `GT`, `LT`).
        condition: ExpireCondition,
    },
    /// `TTL` (seconds) / `PTTL` (milliseconds) -> -2 missing, -1 no expiry, else left.
    Ttl {
        /// The key.
        key: &'a [u8],
        /// `PTTL`: answer in milliseconds, else seconds.
        millis: bool,
    },
    /// `PERSIST key` -> 1 if a time to live was removed.
    Persist {
        /// The key.
        key: &'a [u8],
    },
    /// `TYPE key` -> `string` or `none`.
    Type {
        /// The key.
        key: &'a [u8],
    },
    /// `KEYS pattern` -> every matching key, sorted.
    Keys {
        /// Glob pattern (`*`, `?`, `[...]`, `\` escapes).
        pattern: &'a [u8],
    },
    /// `SCAN cursor [MATCH pattern] [COUNT n]` -> `[next cursor, keys]`.
    Scan {
        /// Where to continue (0 starts a new scan; the reply names the next cursor, 0 when
        /// done).
        cursor: u64,
        /// `MATCH` glob pattern, if any.
        pattern: Option<&'a [u8]>,
        /// `COUNT`: keys to examine in this call (at least 1).
        count: u32,
    },
    /// `DBSIZE` -> number of live keys.
    DbSize,
    /// `FLUSHDB` / `FLUSHALL` -> `OK`.
    FlushAll,
    /// Internal (no RESP name), read-only: `[stored keys, expired keys still stored]`
    /// (the second counted up to [`MAX_PURGE_KEYS`]): what the leader's expiry sweep
    /// asks before it proposes [`Command::PurgeExpired`].
    ExpiryBacklog,
    /// Internal (no RESP name), a write: removes up to `max` (at most
    /// [`MAX_PURGE_KEYS`]) keys expired at the entry's log time, earliest first ->
    /// the number removed. The leader proposes it, stamped with its clock, while
    /// expired keys are stored, so memory is freed by replicated entries even when
    /// writes stop, never by a replica's own clock.
    PurgeExpired {
        /// Most keys to remove: `1..=MAX_PURGE_KEYS` (other values do not encode).
        max: u32,
    },
    /// `RENAME from to` (`OK`) / `RENAMENX` (1 or 0).
    Rename {
        /// The key renamed.
        from: &'a [u8],
        /// Its new name (an existing key there is replaced, unless `only_if_missing`).
        to: &'a [u8],
        /// `RENAMENX`: rename only if `to` does not exist.
        only_if_missing: bool,
    },
    /// `WATCH key [key ...]`, the read half: -> [`KvResponse::Watched`].
    Watch {
        /// The keys watched.
        keys: Vec<&'a [u8]>,
    },
    /// `MULTI ... EXEC` as one entry: applied all together, unless a watched key changed
    /// since the WATCH read at log index `watch_index` (then nothing, reply null array).
    /// Never nested; holds no `Watch`.
    Multi {
        /// Applied index of the state the WATCH read saw.
        watch_index: u64,
        /// Each watched key and whether it existed then.
        watched: Vec<WatchedKey<'a>>,
        /// The queued commands, applied in order.
        commands: Vec<Command<'a>>,
    },
}

impl Command<'_> {
    /// True for commands that never change state: they may be served by
    /// [`KvReadView::query`](super::KvReadView::query) instead of going through the log.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Command::Get { .. }
                | Command::MGet { .. }
                | Command::Exists { .. }
                | Command::Strlen { .. }
                | Command::GetRange { .. }
                | Command::Ttl { .. }
                | Command::Type { .. }
                | Command::Keys { .. }
                | Command::Scan { .. }
                | Command::DbSize
                | Command::ExpiryBacklog
                | Command::Watch { .. }
        )
    }

    /// The first key the command names, if any (`RENAME`: the source): what a
    /// cache warm-up before a batch of entries looks up. Only a hint: a command's
    /// outcome never depends on it.
    pub fn first_key(&self) -> Option<&[u8]> {
        match self {
            Command::Set { key, .. }
            | Command::Get { key, .. }
            | Command::Incr { key, .. }
            | Command::Cas { key, .. }
            | Command::SetWith { key, .. }
            | Command::SetNx { key, .. }
            | Command::IncrBy { key, .. }
            | Command::IncrByFloat { key, .. }
            | Command::Append { key, .. }
            | Command::Strlen { key, .. }
            | Command::GetRange { key, .. }
            | Command::SetRange { key, .. }
            | Command::GetSet { key, .. }
            | Command::GetDel { key, .. }
            | Command::GetEx { key, .. }
            | Command::Expire { key, .. }
            | Command::Ttl { key, .. }
            | Command::Persist { key, .. }
            | Command::Type { key, .. } => Some(key),
            Command::Del { keys }
            | Command::Exists { keys }
            | Command::MGet { keys }
            | Command::Watch { keys } => keys.first().copied(),
            Command::MSet { pairs } | Command::MSetNx { pairs } => {
                pairs.first().map(|(key, _)| *key)
            }
            Command::Rename { from, .. } => Some(from),
            Command::Keys { .. }
            | Command::Scan { .. }
            | Command::DbSize
            | Command::FlushAll
            | Command::ExpiryBacklog
            | Command::PurgeExpired { .. }
            | Command::Multi { .. } => None,
        }
    }

    /// The lowercase Redis command name.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Set { .. } | Command::SetWith { .. } => "set",
            Command::Get { .. } => "get",
            Command::Del { .. } => "del",
            Command::Exists { .. } => "exists",
            Command::Incr { .. } => "incr",
            Command::MGet { .. } => "mget",
            Command::MSet { .. } => "mset",
            Command::Cas { .. } => "cas",
            Command::SetNx { .. } => "setnx",
            Command::MSetNx { .. } => "msetnx",
            Command::IncrBy { .. } => "incrby",
            Command::IncrByFloat { .. } => "incrbyfloat",
            Command::Append { .. } => "append",
            Command::Strlen { .. } => "strlen",
            Command::GetRange { .. } => "getrange",
            Command::SetRange { .. } => "setrange",
            Command::GetSet { .. } => "getset",
            Command::GetDel { .. } => "getdel",
            Command::GetEx { .. } => "getex",
            Command::Expire { .. } => "expire",
            Command::Ttl { .. } => "ttl",
            Command::Persist { .. } => "persist",
            Command::Type { .. } => "type",
            Command::Keys { .. } => "keys",
            Command::Scan { .. } => "scan",
            Command::DbSize => "dbsize",
            Command::FlushAll => "flushall",
            Command::ExpiryBacklog => "expirybacklog",
            Command::PurgeExpired { .. } => "purgeexpired",
            Command::Rename { .. } => "rename",
            Command::Watch { .. } => "watch",
            Command::Multi { .. } => "exec",
        }
    }
}

/// A decoded log payload: optional session, the leader's time stamp, command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// `None` when the request carries no session (client id 0).
    pub session: Option<ClientSession>,
    /// The leader's clock (Unix milliseconds) when it encoded the request; `None` for a
    /// format-1 payload (no stamp: the log time stays where it is).
    pub time_ms: Option<u64>,
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
        /// The client id.
        client_id: u64,
        /// The sequence of the refused request.
        sequence: u64,
        /// The client's last applied sequence.
        last_sequence: u64,
    },
    /// The log entry or query is not a valid encoded request.
    #[error("ERR malformed command: {0}")]
    Malformed(KvDecodeError),
    /// A write command was sent to the read path.
    #[error("ERR '{0}' changes state and cannot be served as a read")]
    NotReadOnly(&'static str),
    /// INCRBYFLOAT on a value (or with a delta) that is not a finite float.
    #[error("ERR value is not a valid float")]
    NotAFloat,
    /// INCRBYFLOAT whose result is not finite.
    #[error("ERR increment would produce NaN or Infinity")]
    FloatOverflow,
    /// APPEND or SETRANGE would build a value above `max_argument_bytes`.
    #[error("ERR string exceeds maximum allowed size (proto-max-bulk-len)")]
    StringTooLong,
    /// RENAME of a missing key.
    #[error("ERR no such key")]
    NoSuchKey,
    /// An expiry time that overflows when made absolute (`command` names it).
    #[error("ERR invalid expire time in '{0}' command")]
    InvalidExpireTime(&'static str),
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
    /// An array of bulk-or-null (MGET, KEYS).
    Array(Vec<Option<Bytes>>),
    /// An error reply.
    Error(KvError),
    /// A status line (`+string`, `+none` for TYPE).
    Status(&'static str),
    /// The null array (RESP3 null): EXEC when a watched key changed.
    NullArray,
    /// An array of replies: EXEC's replies in order; SCAN's `[cursor, keys]`.
    Nested(Vec<KvResponse>),
    /// The WATCH read: the applied index of the state read and, per key, whether it
    /// existed. The client port keeps this and answers `+OK`; it is never a client reply.
    Watched {
        /// Applied index of the state the read saw.
        index: u64,
        /// Per watched key, in order: whether it existed.
        exists: Vec<bool>,
    },
}
