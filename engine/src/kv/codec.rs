//! The binary encoding of KV requests in log entries (and of queries).
//!
//! # Log payload encoding (formats 1 and 2, little-endian)
//!
//! ```text
//! u8  format           1 (no time stamp) or 2
//! u64 client_id        0 = no session (the command is applied every time it appears)
//! u64 sequence         >= 1 when client_id != 0; 0 when client_id == 0
//! u64 time_ms          format 2 only: the leader's clock, Unix milliseconds
//! u8  opcode, then its arguments (below)
//! ```
//! A byte string is a u32 length + bytes; a list is a u32 count then its items; `i64`
//! and `u64` are 8 bytes; a flag is one byte 0 or 1; an expiry is u8 kind (2 after,
//! 3 at) + i64 milliseconds.
//!
//! | op | command | arguments |
//! |---|---|---|
//! | 1 | SET | key value |
//! | 2, 5, 15, 19, 23, 24 | GET, INCR, STRLEN, GETDEL, PERSIST, TYPE | key |
//! | 3, 4, 6, 30 | DEL, EXISTS, MGET, WATCH | list (>= 1) of keys |
//! | 7, 11 | MSET, MSETNX | list (>= 1) of key, value pairs |
//! | 8 | CAS | key expected new |
//! | 9 | SET with options | key value, u8 condition (0 always, 1 NX, 2 XX), flag GET, u8 ttl (0 clear, 1 keep, or an expiry) |
//! | 10, 14, 18 | SETNX, APPEND, GETSET | key value |
//! | 12 | INCRBY | key i64 |
//! | 13 | INCRBYFLOAT | key, delta text |
//! | 16 | GETRANGE | key i64 start i64 end |
//! | 17 | SETRANGE | key u64 offset value |
//! | 20 | GETEX | key, u8 ttl (0 unchanged, 1 persist, or an expiry) |
//! | 21 | EXPIRE | key, expiry, u8 condition (0 always, 1 NX, 2 XX, 3 GT, 4 LT, 5 XX LT) |
//! | 22 | TTL | key, flag millis |
//! | 25 | KEYS | pattern |
//! | 26 | SCAN | u64 cursor, flag + pattern, u32 count (>= 1) |
//! | 27, 28 | DBSIZE, FLUSHALL | nothing |
//! | 32 | EXPIRYBACKLOG (internal read) | nothing |
//! | 33 | PURGEEXPIRED (internal write) | u32 max (1..=1024) |
//! | 29 | RENAME | from to, flag NX |
//! | 31 | MULTI | u64 watch_index, list (>= 0) of (flag existed, key), list (>= 0) of commands (opcode + arguments; no MULTI, no WATCH) |
//!
//! Nothing may follow the last argument. Every length and count is checked against
//! [`KvLimits`] and against the bytes actually present before anything is allocated;
//! every field has one encoding (a decoded request re-encodes to the same bytes).

use super::command::{
    ClientSession, Command, ExpireCondition, Expiry, GetExTtl, KvLimits, Request, SetCondition,
    SetOptions, SetTtl, WatchedKey, MAX_PURGE_KEYS,
};

/// Version byte of a request without a time stamp (what [`encode_request`] writes).
pub const REQUEST_FORMAT_VERSION: u8 = 1;
/// Version byte of a request with the leader's time stamp ([`encode_request_at`]).
pub const REQUEST_FORMAT_VERSION_TIMED: u8 = 2;
/// Most bytes of a request header: format, client id, sequence, time stamp, opcode.
pub const REQUEST_HEADER_BYTES: usize = 1 + 8 + 8 + 8 + 1;

pub(super) const OP_SET: u8 = 1;
pub(super) const OP_GET: u8 = 2;
pub(super) const OP_DEL: u8 = 3;
pub(super) const OP_EXISTS: u8 = 4;
pub(super) const OP_INCR: u8 = 5;
pub(super) const OP_MGET: u8 = 6;
pub(super) const OP_MSET: u8 = 7;
pub(super) const OP_CAS: u8 = 8;
const OP_SET_WITH: u8 = 9;
const OP_SETNX: u8 = 10;
const OP_MSETNX: u8 = 11;
const OP_INCRBY: u8 = 12;
const OP_INCRBYFLOAT: u8 = 13;
const OP_APPEND: u8 = 14;
const OP_STRLEN: u8 = 15;
const OP_GETRANGE: u8 = 16;
const OP_SETRANGE: u8 = 17;
const OP_GETSET: u8 = 18;
const OP_GETDEL: u8 = 19;
const OP_GETEX: u8 = 20;
const OP_EXPIRE: u8 = 21;
const OP_TTL: u8 = 22;
const OP_PERSIST: u8 = 23;
const OP_TYPE: u8 = 24;
const OP_KEYS: u8 = 25;
const OP_SCAN: u8 = 26;
const OP_DBSIZE: u8 = 27;
const OP_FLUSHALL: u8 = 28;
const OP_RENAME: u8 = 29;
const OP_WATCH: u8 = 30;
const OP_MULTI: u8 = 31;
const OP_EXPIRY_BACKLOG: u8 = 32;
const OP_PURGE_EXPIRED: u8 = 33;

const EXPIRY_AFTER: u8 = 2;
const EXPIRY_AT: u8 = 3;

/// The opcode byte of `command`.
fn opcode(command: &Command<'_>) -> u8 {
    match command {
        Command::Set { .. } => OP_SET,
        Command::Get { .. } => OP_GET,
        Command::Del { .. } => OP_DEL,
        Command::Exists { .. } => OP_EXISTS,
        Command::Incr { .. } => OP_INCR,
        Command::MGet { .. } => OP_MGET,
        Command::MSet { .. } => OP_MSET,
        Command::Cas { .. } => OP_CAS,
        Command::SetWith { .. } => OP_SET_WITH,
        Command::SetNx { .. } => OP_SETNX,
        Command::MSetNx { .. } => OP_MSETNX,
        Command::IncrBy { .. } => OP_INCRBY,
        Command::IncrByFloat { .. } => OP_INCRBYFLOAT,
        Command::Append { .. } => OP_APPEND,
        Command::Strlen { .. } => OP_STRLEN,
        Command::GetRange { .. } => OP_GETRANGE,
        Command::SetRange { .. } => OP_SETRANGE,
        Command::GetSet { .. } => OP_GETSET,
        Command::GetDel { .. } => OP_GETDEL,
        Command::GetEx { .. } => OP_GETEX,
        Command::Expire { .. } => OP_EXPIRE,
        Command::Ttl { .. } => OP_TTL,
        Command::Persist { .. } => OP_PERSIST,
        Command::Type { .. } => OP_TYPE,
        Command::Keys { .. } => OP_KEYS,
        Command::Scan { .. } => OP_SCAN,
        Command::DbSize => OP_DBSIZE,
        Command::FlushAll => OP_FLUSHALL,
        Command::ExpiryBacklog => OP_EXPIRY_BACKLOG,
        Command::PurgeExpired { .. } => OP_PURGE_EXPIRED,
        Command::Rename { .. } => OP_RENAME,
        Command::Watch { .. } => OP_WATCH,
        Command::Multi { .. } => OP_MULTI,
    }
}

/// Why a command could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvEncodeError {
    /// A key or value is longer than [`KvLimits::max_argument_bytes`].
    #[error("argument of {len} bytes exceeds the limit of {max} bytes")]
    ArgumentTooLarge { len: usize, max: usize },
    /// Too many keys or pairs for [`KvLimits::max_arguments`], or none at all.
    #[error("command has {count} arguments; allowed 1..={max}")]
    BadArgumentCount { count: usize, max: usize },
    /// A session must have a nonzero client id and a nonzero sequence.
    #[error("session needs nonzero client id and sequence (got {client_id}, {sequence})")]
    InvalidSession { client_id: u64, sequence: u64 },
    /// A transaction holding a transaction or a WATCH, or a SCAN with COUNT 0.
    #[error("{0} cannot be encoded")]
    Unencodable(&'static str),
}

/// Why bytes could not be decoded as a request. Decoding never panics and never
/// allocates more than the input justifies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvDecodeError {
    /// The input ended before a field it announced.
    #[error("truncated: needed {needed} more bytes at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    /// The format byte is not one this build reads.
    #[error("unsupported request format {0}")]
    UnsupportedFormat(u8),
    /// The opcode names no command.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    /// A key or value length exceeds the limit.
    #[error("argument of {len} bytes exceeds the limit of {max} bytes")]
    ArgumentTooLarge { len: u64, max: usize },
    /// A key or pair count is zero or exceeds the limit.
    #[error("argument count {count} outside 1..={max}")]
    BadArgumentCount { count: u64, max: usize },
    /// The session header is inconsistent (sequence 0 with a client, or a sequence
    /// without a client).
    #[error("invalid session header (client {client_id}, sequence {sequence})")]
    InvalidSession { client_id: u64, sequence: u64 },
    /// Bytes follow the last argument.
    #[error("{0} trailing bytes after the command")]
    TrailingBytes(usize),
    /// A flag, kind or condition byte outside its values, or a command where it may
    /// not stand (a transaction or WATCH inside a transaction).
    #[error("invalid {field} {value} at offset {offset}")]
    InvalidField {
        field: &'static str,
        value: u64,
        offset: usize,
    },
}

/// Appends the encoded request, format 1 (no time stamp), to `out`.
pub fn encode_request(
    session: Option<ClientSession>,
    command: &Command<'_>,
    limits: &KvLimits,
    out: &mut Vec<u8>,
) -> Result<(), KvEncodeError> {
    encode_request_at(session, None, command, limits, out)
}

/// Appends the encoded request to `out`: format 2 with the leader's clock `time_ms`
/// (Unix milliseconds) when given, else format 1. Nothing is written on error.
pub fn encode_request_at(
    session: Option<ClientSession>,
    time_ms: Option<u64>,
    command: &Command<'_>,
    limits: &KvLimits,
    out: &mut Vec<u8>,
) -> Result<(), KvEncodeError> {
    let (client_id, sequence) = match session {
        Some(s) if s.client_id == 0 || s.sequence == 0 => {
            return Err(KvEncodeError::InvalidSession {
                client_id: s.client_id,
                sequence: s.sequence,
            })
        }
        Some(s) => (s.client_id, s.sequence),
        None => (0, 0),
    };
    check_encode_args(command, limits, false)?;
    match time_ms {
        None => out.push(REQUEST_FORMAT_VERSION),
        Some(_) => out.push(REQUEST_FORMAT_VERSION_TIMED),
    }
    out.extend_from_slice(&client_id.to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    if let Some(time_ms) = time_ms {
        out.extend_from_slice(&time_ms.to_le_bytes());
    }
    put_command(out, command);
    Ok(())
}

fn put_command(out: &mut Vec<u8>, command: &Command<'_>) {
    out.push(opcode(command));
    match command {
        Command::Set { key, value }
        | Command::SetNx { key, value }
        | Command::Append { key, value }
        | Command::GetSet { key, value } => {
            put_bytes(out, key);
            put_bytes(out, value);
        }
        Command::Get { key }
        | Command::Incr { key }
        | Command::Strlen { key }
        | Command::GetDel { key }
        | Command::Persist { key }
        | Command::Type { key } => put_bytes(out, key),
        Command::Del { keys }
        | Command::Exists { keys }
        | Command::MGet { keys }
        | Command::Watch { keys } => {
            put_count(out, keys.len());
            for key in keys {
                put_bytes(out, key);
            }
        }
        Command::MSet { pairs } | Command::MSetNx { pairs } => {
            put_count(out, pairs.len());
            for (key, value) in pairs {
                put_bytes(out, key);
                put_bytes(out, value);
            }
        }
        Command::Cas { key, expected, new } => {
            put_bytes(out, key);
            put_bytes(out, expected);
            put_bytes(out, new);
        }
        Command::SetWith {
            key,
            value,
            options,
        } => {
            put_bytes(out, key);
            put_bytes(out, value);
            out.push(match options.condition {
                SetCondition::Always => 0,
                SetCondition::IfMissing => 1,
                SetCondition::IfExists => 2,
            });
            out.push(u8::from(options.get));
            match options.ttl {
                SetTtl::Clear => out.push(0),
                SetTtl::Keep => out.push(1),
                SetTtl::Expire(expiry) => put_expiry(out, expiry),
            }
        }
        Command::IncrBy { key, delta } => {
            put_bytes(out, key);
            out.extend_from_slice(&delta.to_le_bytes());
        }
        Command::IncrByFloat { key, delta } => {
            put_bytes(out, key);
            put_bytes(out, delta);
        }
        Command::GetRange { key, start, end } => {
            put_bytes(out, key);
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(&end.to_le_bytes());
        }
        Command::SetRange { key, offset, value } => {
            put_bytes(out, key);
            out.extend_from_slice(&offset.to_le_bytes());
            put_bytes(out, value);
        }
        Command::GetEx { key, ttl } => {
            put_bytes(out, key);
            match ttl {
                GetExTtl::Unchanged => out.push(0),
                GetExTtl::Persist => out.push(1),
                GetExTtl::Expire(expiry) => put_expiry(out, *expiry),
            }
        }
        Command::Expire { key, at, condition } => {
            put_bytes(out, key);
            put_expiry(out, *at);
            out.push(match condition {
                ExpireCondition::Always => 0,
                ExpireCondition::IfNone => 1,
                ExpireCondition::IfSome => 2,
                ExpireCondition::IfGreater => 3,
                ExpireCondition::IfLess => 4,
                ExpireCondition::IfSomeAndLess => 5,
            });
        }
        Command::Ttl { key, millis } => {
            put_bytes(out, key);
            out.push(u8::from(*millis));
        }
        Command::Keys { pattern } => put_bytes(out, pattern),
        Command::Scan {
            cursor,
            pattern,
            count,
        } => {
            out.extend_from_slice(&cursor.to_le_bytes());
            match pattern {
                None => out.push(0),
                Some(pattern) => {
                    out.push(1);
                    put_bytes(out, pattern);
                }
            }
            out.extend_from_slice(&count.to_le_bytes());
        }
        Command::DbSize | Command::FlushAll | Command::ExpiryBacklog => {}
        Command::PurgeExpired { max } => out.extend_from_slice(&max.to_le_bytes()),
        Command::Rename {
            from,
            to,
            only_if_missing,
        } => {
            put_bytes(out, from);
            put_bytes(out, to);
            out.push(u8::from(*only_if_missing));
        }
        Command::Multi {
            watch_index,
            watched,
            commands,
        } => {
            out.extend_from_slice(&watch_index.to_le_bytes());
            put_count(out, watched.len());
            for watched in watched {
                out.push(u8::from(watched.existed));
                put_bytes(out, watched.key);
            }
            put_count(out, commands.len());
            for command in commands {
                put_command(out, command);
            }
        }
    }
}

fn put_expiry(out: &mut Vec<u8>, expiry: Expiry) {
    let (kind, ms) = match expiry {
        Expiry::AfterMs(ms) => (EXPIRY_AFTER, ms),
        Expiry::AtMs(ms) => (EXPIRY_AT, ms),
    };
    out.push(kind);
    out.extend_from_slice(&ms.to_le_bytes());
}

fn check_encode_args(
    command: &Command<'_>,
    limits: &KvLimits,
    nested: bool,
) -> Result<(), KvEncodeError> {
    // The u32 length prefix bounds the limit too.
    let max_len = limits.max_argument_bytes.min(u32::MAX as usize);
    let max_count = limits.max_arguments.min(u32::MAX as usize);
    let check_len = |arg: &[u8]| {
        if arg.len() > max_len {
            Err(KvEncodeError::ArgumentTooLarge {
                len: arg.len(),
                max: max_len,
            })
        } else {
            Ok(())
        }
    };
    let check_count = |count: usize, min: usize| {
        if count < min || count > max_count {
            Err(KvEncodeError::BadArgumentCount {
                count,
                max: max_count,
            })
        } else {
            Ok(())
        }
    };
    match command {
        Command::Set { key, value }
        | Command::SetNx { key, value }
        | Command::Append { key, value }
        | Command::GetSet { key, value }
        | Command::SetWith { key, value, .. }
        | Command::SetRange { key, value, .. }
        | Command::IncrByFloat { key, delta: value }
        | Command::Rename {
            from: key,
            to: value,
            ..
        } => {
            check_len(key)?;
            check_len(value)
        }
        Command::Get { key }
        | Command::Incr { key }
        | Command::Strlen { key }
        | Command::GetDel { key }
        | Command::Persist { key }
        | Command::Type { key }
        | Command::IncrBy { key, .. }
        | Command::GetRange { key, .. }
        | Command::GetEx { key, .. }
        | Command::Expire { key, .. }
        | Command::Ttl { key, .. }
        | Command::Keys { pattern: key } => check_len(key),
        Command::Del { keys } | Command::Exists { keys } | Command::MGet { keys } => {
            check_count(keys.len(), 1)?;
            keys.iter().try_for_each(|k| check_len(k))
        }
        Command::Watch { keys } => {
            if nested {
                return Err(KvEncodeError::Unencodable("WATCH inside a transaction"));
            }
            check_count(keys.len(), 1)?;
            keys.iter().try_for_each(|k| check_len(k))
        }
        Command::MSet { pairs } | Command::MSetNx { pairs } => {
            check_count(pairs.len(), 1)?;
            pairs.iter().try_for_each(|(k, v)| {
                check_len(k)?;
                check_len(v)
            })
        }
        Command::Cas { key, expected, new } => {
            check_len(key)?;
            check_len(expected)?;
            check_len(new)
        }
        Command::Scan { pattern, count, .. } => {
            if *count == 0 {
                return Err(KvEncodeError::Unencodable("SCAN with COUNT 0"));
            }
            pattern.map_or(Ok(()), check_len)
        }
        Command::DbSize | Command::FlushAll | Command::ExpiryBacklog => Ok(()),
        Command::PurgeExpired { max } => {
            if *max == 0 || *max > MAX_PURGE_KEYS {
                return Err(KvEncodeError::Unencodable(
                    "PURGEEXPIRED max outside 1..=1024",
                ));
            }
            Ok(())
        }
        Command::Multi {
            watched, commands, ..
        } => {
            if nested {
                return Err(KvEncodeError::Unencodable(
                    "a transaction inside a transaction",
                ));
            }
            check_count(watched.len(), 0)?;
            check_count(commands.len(), 0)?;
            watched.iter().try_for_each(|w| check_len(w.key))?;
            commands
                .iter()
                .try_for_each(|c| check_encode_args(c, limits, true))
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    debug_assert!(
        bytes.len() <= u32::MAX as usize,
        "checked by check_encode_args"
    );
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_count(out: &mut Vec<u8>, count: usize) {
    debug_assert!(count <= u32::MAX as usize, "checked by check_encode_args");
    out.extend_from_slice(&(count as u32).to_le_bytes());
}

/// A key and its value.
type Pair<'a> = (&'a [u8], &'a [u8]);

/// A bounds-checked cursor over an encoded request.
struct Cursor<'a> {
    bytes: &'a [u8],
    /// Invariant: `offset <= bytes.len()`.
    offset: usize,
    limits: KvLimits,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KvDecodeError> {
        let remaining = self.bytes.len() - self.offset;
        if n > remaining {
            return Err(KvDecodeError::Truncated {
                offset: self.offset,
                needed: n - remaining,
            });
        }
        let slice = &self.bytes[self.offset..self.offset + n];
        self.offset += n;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, KvDecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, KvDecodeError> {
        let mut raw = [0u8; 4];
        raw.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(raw))
    }

    fn u64(&mut self) -> Result<u64, KvDecodeError> {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(raw))
    }

    fn i64(&mut self) -> Result<i64, KvDecodeError> {
        Ok(self.u64()? as i64)
    }

    /// A byte that must be below `values` (a flag: `values` 2).
    fn choice(&mut self, field: &'static str, values: u8) -> Result<u8, KvDecodeError> {
        let offset = self.offset;
        let value = self.u8()?;
        if value >= values {
            return Err(KvDecodeError::InvalidField {
                field,
                value: u64::from(value),
                offset,
            });
        }
        Ok(value)
    }

    fn flag(&mut self, field: &'static str) -> Result<bool, KvDecodeError> {
        Ok(self.choice(field, 2)? == 1)
    }

    fn bytes(&mut self) -> Result<&'a [u8], KvDecodeError> {
        let len = self.u32()?;
        if len as usize > self.limits.max_argument_bytes {
            return Err(KvDecodeError::ArgumentTooLarge {
                len: u64::from(len),
                max: self.limits.max_argument_bytes,
            });
        }
        self.take(len as usize)
    }

    /// Reads a count (at least `min`) of items each at least `min_item_bytes` long and
    /// returns it with a safe capacity to reserve (never more than the remaining input
    /// can hold).
    fn count(&mut self, min: u32, min_item_bytes: usize) -> Result<(usize, usize), KvDecodeError> {
        let count = self.u32()?;
        if count < min || count as usize > self.limits.max_arguments {
            return Err(KvDecodeError::BadArgumentCount {
                count: u64::from(count),
                max: self.limits.max_arguments,
            });
        }
        let remaining = self.bytes.len() - self.offset;
        let capacity = (count as usize).min(remaining / min_item_bytes);
        Ok((count as usize, capacity))
    }

    fn keys(&mut self) -> Result<Vec<&'a [u8]>, KvDecodeError> {
        let (count, capacity) = self.count(1, 4)?;
        let mut keys = Vec::with_capacity(capacity);
        for _ in 0..count {
            keys.push(self.bytes()?);
        }
        Ok(keys)
    }

    fn pairs(&mut self) -> Result<Vec<Pair<'a>>, KvDecodeError> {
        let (count, capacity) = self.count(1, 8)?;
        let mut pairs = Vec::with_capacity(capacity);
        for _ in 0..count {
            let key = self.bytes()?;
            let value = self.bytes()?;
            pairs.push((key, value));
        }
        Ok(pairs)
    }

    /// An expiry, or `None` for the kind bytes below 2 (their meaning is the caller's).
    fn ttl(&mut self, field: &'static str) -> Result<Result<Expiry, u8>, KvDecodeError> {
        let kind = self.choice(field, 4)?;
        Ok(match kind {
            EXPIRY_AFTER => Ok(Expiry::AfterMs(self.i64()?)),
            EXPIRY_AT => Ok(Expiry::AtMs(self.i64()?)),
            other => Err(other),
        })
    }

    fn expiry(&mut self) -> Result<Expiry, KvDecodeError> {
        let offset = self.offset;
        match self.ttl("expiry kind")? {
            Ok(expiry) => Ok(expiry),
            Err(kind) => Err(KvDecodeError::InvalidField {
                field: "expiry kind",
                value: u64::from(kind),
                offset,
            }),
        }
    }

    fn command(&mut self, nested: bool) -> Result<Command<'a>, KvDecodeError> {
        let opcode_offset = self.offset;
        let opcode = self.u8()?;
        Ok(match opcode {
            OP_SET => Command::Set {
                key: self.bytes()?,
                value: self.bytes()?,
            },
            OP_GET => Command::Get { key: self.bytes()? },
            OP_INCR => Command::Incr { key: self.bytes()? },
            OP_STRLEN => Command::Strlen { key: self.bytes()? },
            OP_GETDEL => Command::GetDel { key: self.bytes()? },
            OP_PERSIST => Command::Persist { key: self.bytes()? },
            OP_TYPE => Command::Type { key: self.bytes()? },
            OP_DEL => Command::Del { keys: self.keys()? },
            OP_EXISTS => Command::Exists { keys: self.keys()? },
            OP_MGET => Command::MGet { keys: self.keys()? },
            OP_MSET => Command::MSet {
                pairs: self.pairs()?,
            },
            OP_MSETNX => Command::MSetNx {
                pairs: self.pairs()?,
            },
            OP_CAS => Command::Cas {
                key: self.bytes()?,
                expected: self.bytes()?,
                new: self.bytes()?,
            },
            OP_SET_WITH => self.set_with()?,
            OP_SETNX => Command::SetNx {
                key: self.bytes()?,
                value: self.bytes()?,
            },
            OP_APPEND => Command::Append {
                key: self.bytes()?,
                value: self.bytes()?,
            },
            OP_GETSET => Command::GetSet {
                key: self.bytes()?,
                value: self.bytes()?,
            },
            OP_INCRBY => Command::IncrBy {
                key: self.bytes()?,
                delta: self.i64()?,
            },
            OP_INCRBYFLOAT => Command::IncrByFloat {
                key: self.bytes()?,
                delta: self.bytes()?,
            },
            OP_GETRANGE => Command::GetRange {
                key: self.bytes()?,
                start: self.i64()?,
                end: self.i64()?,
            },
            OP_SETRANGE => Command::SetRange {
                key: self.bytes()?,
                offset: self.u64()?,
                value: self.bytes()?,
            },
            OP_GETEX => {
                let key = self.bytes()?;
                let ttl = match self.ttl("getex ttl")? {
                    Ok(expiry) => GetExTtl::Expire(expiry),
                    Err(0) => GetExTtl::Unchanged,
                    Err(_) => GetExTtl::Persist,
                };
                Command::GetEx { key, ttl }
            }
            OP_EXPIRE => Command::Expire {
                key: self.bytes()?,
                at: self.expiry()?,
                condition: match self.choice("expire condition", 6)? {
                    0 => ExpireCondition::Always,
                    1 => ExpireCondition::IfNone,
                    2 => ExpireCondition::IfSome,
                    3 => ExpireCondition::IfGreater,
                    4 => ExpireCondition::IfLess,
                    _ => ExpireCondition::IfSomeAndLess,
                },
            },
            OP_TTL => Command::Ttl {
                key: self.bytes()?,
                millis: self.flag("ttl unit")?,
            },
            OP_KEYS => Command::Keys {
                pattern: self.bytes()?,
            },
            OP_SCAN => self.scan()?,
            OP_DBSIZE => Command::DbSize,
            OP_FLUSHALL => Command::FlushAll,
            OP_EXPIRY_BACKLOG => Command::ExpiryBacklog,
            OP_PURGE_EXPIRED => {
                let offset = self.offset;
                let max = self.u32()?;
                if max == 0 || max > MAX_PURGE_KEYS {
                    return Err(KvDecodeError::InvalidField {
                        field: "purge max",
                        value: u64::from(max),
                        offset,
                    });
                }
                Command::PurgeExpired { max }
            }
            OP_RENAME => Command::Rename {
                from: self.bytes()?,
                to: self.bytes()?,
                only_if_missing: self.flag("rename nx")?,
            },
            OP_WATCH | OP_MULTI if nested => {
                return Err(KvDecodeError::InvalidField {
                    field: "opcode inside a transaction",
                    value: u64::from(opcode),
                    offset: opcode_offset,
                })
            }
            OP_WATCH => Command::Watch { keys: self.keys()? },
            OP_MULTI => self.multi()?,
            other => return Err(KvDecodeError::UnknownOpcode(other)),
        })
    }

    fn set_with(&mut self) -> Result<Command<'a>, KvDecodeError> {
        let key = self.bytes()?;
        let value = self.bytes()?;
        let condition = match self.choice("set condition", 3)? {
            0 => SetCondition::Always,
            1 => SetCondition::IfMissing,
            _ => SetCondition::IfExists,
        };
        let get = self.flag("set get")?;
        let ttl = match self.ttl("set ttl")? {
            Ok(expiry) => SetTtl::Expire(expiry),
            Err(0) => SetTtl::Clear,
            Err(_) => SetTtl::Keep,
        };
        Ok(Command::SetWith {
            key,
            value,
            options: SetOptions {
                condition,
                get,
                ttl,
            },
        })
    }

    fn scan(&mut self) -> Result<Command<'a>, KvDecodeError> {
        let cursor = self.u64()?;
        let pattern = if self.flag("scan pattern")? {
            Some(self.bytes()?)
        } else {
            None
        };
        let count_offset = self.offset;
        let count = self.u32()?;
        if count == 0 {
            return Err(KvDecodeError::InvalidField {
                field: "scan count",
                value: 0,
                offset: count_offset,
            });
        }
        Ok(Command::Scan {
            cursor,
            pattern,
            count,
        })
    }

    fn multi(&mut self) -> Result<Command<'a>, KvDecodeError> {
        let watch_index = self.u64()?;
        let (n_watched, capacity) = self.count(0, 5)?;
        let mut watched = Vec::with_capacity(capacity);
        for _ in 0..n_watched {
            let existed = self.flag("watched existed")?;
            watched.push(WatchedKey {
                key: self.bytes()?,
                existed,
            });
        }
        let (n_commands, capacity) = self.count(0, 1)?;
        let mut commands = Vec::with_capacity(capacity);
        for _ in 0..n_commands {
            commands.push(self.command(true)?);
        }
        Ok(Command::Multi {
            watch_index,
            watched,
            commands,
        })
    }
}

/// Decodes a log payload. Borrowed slices point into `bytes`; never panics.
pub fn decode_request<'a>(
    bytes: &'a [u8],
    limits: &KvLimits,
) -> Result<Request<'a>, KvDecodeError> {
    let mut cursor = Cursor {
        bytes,
        offset: 0,
        limits: *limits,
    };
    let format = cursor.u8()?;
    if format != REQUEST_FORMAT_VERSION && format != REQUEST_FORMAT_VERSION_TIMED {
        return Err(KvDecodeError::UnsupportedFormat(format));
    }
    let client_id = cursor.u64()?;
    let sequence = cursor.u64()?;
    let session = match (client_id, sequence) {
        (0, 0) => None,
        (0, _) | (_, 0) => {
            return Err(KvDecodeError::InvalidSession {
                client_id,
                sequence,
            })
        }
        _ => Some(ClientSession {
            client_id,
            sequence,
        }),
    };
    let time_ms = if format == REQUEST_FORMAT_VERSION_TIMED {
        Some(cursor.u64()?)
    } else {
        None
    };
    let command = cursor.command(false)?;
    let trailing = bytes.len() - cursor.offset;
    if trailing != 0 {
        return Err(KvDecodeError::TrailingBytes(trailing));
    }
    Ok(Request {
        session,
        time_ms,
        command,
    })
}
