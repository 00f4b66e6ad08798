//! The binary encoding of KV requests in log entries (and of queries).
//!
//! # Log payload encoding (format 1, little-endian)
//!
//! ```text
//! u8  format (= 1)
//! u64 client_id        0 = no session (the command is applied every time it appears)
//! u64 sequence         >= 1 when client_id != 0; 0 when client_id == 0
//! u8  opcode           1 SET, 2 GET, 3 DEL, 4 EXISTS, 5 INCR, 6 MGET, 7 MSET, 8 CAS
//! arguments            a byte string is u32 length + bytes; DEL/EXISTS/MGET carry a
//!                      u32 key count (>= 1) then the keys; MSET a u32 pair count (>= 1)
//!                      then key, value pairs; SET key value; GET/INCR key;
//!                      CAS key expected new
//! ```
//! Nothing may follow the last argument. Every length and count is checked against
//! [`KvLimits`] and against the bytes actually present before anything is allocated.
//!

use super::command::{ClientSession, Command, KvLimits, Request};

/// Version byte at the start of every encoded request.
pub const REQUEST_FORMAT_VERSION: u8 = 1;
/// Bytes of the request header: format, client id, sequence, opcode.
pub const REQUEST_HEADER_BYTES: usize = 1 + 8 + 8 + 1;

pub(super) const OP_SET: u8 = 1;
pub(super) const OP_GET: u8 = 2;
pub(super) const OP_DEL: u8 = 3;
pub(super) const OP_EXISTS: u8 = 4;
pub(super) const OP_INCR: u8 = 5;
pub(super) const OP_MGET: u8 = 6;
pub(super) const OP_MSET: u8 = 7;
pub(super) const OP_CAS: u8 = 8;

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
}

/// Appends the encoded request to `out` (see the module docs for the format).
pub fn encode_request(
    session: Option<ClientSession>,
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
    check_encode_args(command, limits)?;
    out.push(REQUEST_FORMAT_VERSION);
    out.extend_from_slice(&client_id.to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    out.push(opcode(command));
    match command {
        Command::Set { key, value } => {
            put_bytes(out, key);
            put_bytes(out, value);
        }
        Command::Get { key } | Command::Incr { key } => put_bytes(out, key),
        Command::Del { keys } | Command::Exists { keys } | Command::MGet { keys } => {
            put_count(out, keys.len());
            for key in keys {
                put_bytes(out, key);
            }
        }
        Command::MSet { pairs } => {
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
    }
    Ok(())
}

fn check_encode_args(command: &Command<'_>, limits: &KvLimits) -> Result<(), KvEncodeError> {
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
    let check_count = |count: usize| {
        if count == 0 || count > max_count {
            Err(KvEncodeError::BadArgumentCount {
                count,
                max: max_count,
            })
        } else {
            Ok(())
        }
    };
    match command {
        Command::Set { key, value } => {
            check_len(key)?;
            check_len(value)
        }
        Command::Get { key } | Command::Incr { key } => check_len(key),
        Command::Del { keys } | Command::Exists { keys } | Command::MGet { keys } => {
            check_count(keys.len())?;
            keys.iter().try_for_each(|k| check_len(k))
        }
        Command::MSet { pairs } => {
            check_count(pairs.len())?;
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

    /// Reads a count of items each at least `min_item_bytes` long and returns it with a
    /// safe capacity to reserve (never more than the remaining input can hold).
    fn count(&mut self, min_item_bytes: usize) -> Result<(usize, usize), KvDecodeError> {
        let count = self.u32()?;
        if count == 0 || count as usize > self.limits.max_arguments {
            return Err(KvDecodeError::BadArgumentCount {
                count: u64::from(count),
                max: self.limits.max_arguments,
            });
        }
        let remaining = self.bytes.len() - self.offset;
        let capacity = (count as usize).min(remaining / min_item_bytes);
        Ok((count as usize, capacity))
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
    if format != REQUEST_FORMAT_VERSION {
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
    let opcode = cursor.u8()?;
    let command = match opcode {
        OP_SET => Command::Set {
            key: cursor.bytes()?,
            value: cursor.bytes()?,
        },
        OP_GET => Command::Get {
            key: cursor.bytes()?,
        },
        OP_INCR => Command::Incr {
            key: cursor.bytes()?,
        },
        OP_DEL | OP_EXISTS | OP_MGET => {
            let (count, capacity) = cursor.count(4)?;
            let mut keys = Vec::with_capacity(capacity);
            for _ in 0..count {
                keys.push(cursor.bytes()?);
            }
            match opcode {
                OP_DEL => Command::Del { keys },
                OP_EXISTS => Command::Exists { keys },
                _ => Command::MGet { keys },
            }
        }
        OP_MSET => {
            let (count, capacity) = cursor.count(8)?;
            let mut pairs = Vec::with_capacity(capacity);
            for _ in 0..count {
                let key = cursor.bytes()?;
                let value = cursor.bytes()?;
                pairs.push((key, value));
            }
            Command::MSet { pairs }
        }
        OP_CAS => Command::Cas {
            key: cursor.bytes()?,
            expected: cursor.bytes()?,
            new: cursor.bytes()?,
        },
        other => return Err(KvDecodeError::UnknownOpcode(other)),
    };
    let trailing = bytes.len() - cursor.offset;
    if trailing != 0 {
        return Err(KvDecodeError::TrailingBytes(trailing));
    }
    Ok(Request { session, command })
}
