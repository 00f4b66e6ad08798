//! The KV snapshot stream (format 2; format 1 is still read): the writer a background
//! thread runs over a frozen view, restore, and [`read_stream`] for inspection tools.
//! Keys are written sorted so the bytes are a pure function of the state. Format 2 adds
//! the log time, the removal mark and, per key, its version and expiry time: a restored
//! replica judges expiry and WATCH exactly as the one that wrote the snapshot.

use std::collections::BTreeSet;
use std::io::{Read, Write};

use bytes::Bytes;

use super::command::{KvError, KvLimits, KvResponse};
use super::keyspace::Keyspace;
use super::machine::{DataKey, DataMap, KvStateMachine, Value};
use super::session::{SessionRecord, SessionSlots, SessionTable};
use crate::state_machine::{SnapshotSource, StateMachineError};

const SNAPSHOT_MAGIC: [u8; 4] = *b"TKVS";
const SNAPSHOT_FORMAT_V1: u8 = 1;
const SNAPSHOT_FORMAT_VERSION: u8 = 2;
/// Deepest nesting of a remembered reply (EXEC of a SCAN is 2).
const MAX_REPLY_DEPTH: usize = 4;

/// A frozen KV state for a background snapshot writer.
///
/// Snapshot format 2 (little-endian), followed by nothing:
/// ```text
/// "TKVS" u8 version u64 applied_index
/// u64 log_time_ms u64 last_removal_index                     (format 2 only)
/// u64 n_sessions, then per session in client-id order:
///     u64 client_id u64 last_sequence u64 last_index  response
/// u64 n_entries, then per entry in key order: u32 len key u32 len value
///     u64 version u64 expire_at_ms (0 = none)                 (format 2 only)
/// u32 CRC-32 of every preceding byte
/// response: u8 tag; 0 OK | 1 i64 | 2 null bulk | 3 u32 len bytes |
///           4 u32 n then n x (u8 0 null | u8 1 u32 len bytes) | 5 u8 error code (1 not an
///           integer, 2 overflow, 3 not a float, 4 float overflow, 5 string too long,
///           6 no such key, 7 invalid expire time + u8 command: 1 set, 2 getex, 3 expire) |
///           6 u8 status (1 string, 2 none) | 7 null array | 8 u32 n then n responses |
///           9 u64 index u32 n then n x u8 exists
/// ```
pub(super) struct KvSnapshot {
    pub(super) keyspace: Keyspace,
    /// The session records, shared with the table: the writer sorts them by client id.
    pub(super) sessions: SessionSlots,
    pub(super) applied_index: u64,
    pub(super) log_time_ms: u64,
}

/// Bytes the writer serializes before it checksums them and hands them on in one
/// write: the snapshot store's write buffer size, so the store passes each piece
/// straight to the file instead of copying it again.
const WRITE_CHUNK_BYTES: usize = 256 << 10;

/// Serializes a stream into one reused buffer; per full buffer, one CRC update and one
/// `write_all`. Per key that leaves copies into the buffer. Before, each field was a
/// `Write` call chain and two CRC updates of a few bytes (this stream's and the file's):
/// with the sort, most of the 245 M instructions a 100,000-key snapshot cost
/// (callgrind, `benches/kv_snapshot.rs`).
struct StreamWriter<'a> {
    out: &'a mut dyn Write,
    /// Serialized bytes not handed to `out` yet. Invariant: shorter than
    /// [`WRITE_CHUNK_BYTES`] between calls (a piece of that size or more bypasses it),
    /// so its capacity of twice that never grows.
    buffer: Vec<u8>,
    /// CRC-32 of every byte handed to `out`.
    hasher: crc32fast::Hasher,
    /// Bytes handed to `out`.
    written_bytes: u64,
}

impl<'a> StreamWriter<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        StreamWriter {
            out,
            buffer: Vec::with_capacity(2 * WRITE_CHUNK_BYTES),
            hasher: crc32fast::Hasher::new(),
            written_bytes: 0,
        }
    }

    #[inline]
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.len() >= WRITE_CHUNK_BYTES {
            self.spill()?;
            return self.emit(bytes);
        }
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= WRITE_CHUNK_BYTES {
            self.spill()?;
        }
        Ok(())
    }

    #[inline]
    fn put_u8(&mut self, byte: u8) -> std::io::Result<()> {
        self.put(&[byte])
    }

    #[inline]
    fn put_u32(&mut self, n: u32) -> std::io::Result<()> {
        self.put(&n.to_le_bytes())
    }

    #[inline]
    fn put_u64(&mut self, n: u64) -> std::io::Result<()> {
        self.put(&n.to_le_bytes())
    }

    /// A u32 length, then the bytes.
    #[inline]
    fn put_len_bytes(&mut self, bytes: &[u8]) -> Result<(), StateMachineError> {
        let len =
            u32::try_from(bytes.len()).map_err(|_| StateMachineError::SnapshotLimitExceeded {
                what: "byte string length",
                found: bytes.len() as u64,
                limit: u64::from(u32::MAX),
            })?;
        self.put_u32(len)?;
        self.put(bytes)?;
        Ok(())
    }

    /// Checksums and writes `bytes` (not through the buffer).
    fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)?;
        self.written_bytes += bytes.len() as u64;
        Ok(())
    }

    fn spill(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.hasher.update(&self.buffer);
        self.out.write_all(&self.buffer)?;
        self.written_bytes += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Writes the rest and the CRC-32 of everything before it; returns the stream's
    /// length in bytes.
    fn finish(mut self) -> Result<u64, StateMachineError> {
        self.spill()?;
        let crc = self.hasher.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.flush()?;
        Ok(self.written_bytes + 4)
    }
}

fn write_response(
    out: &mut StreamWriter<'_>,
    response: &KvResponse,
) -> Result<(), StateMachineError> {
    match response {
        KvResponse::Ok => out.put_u8(0)?,
        KvResponse::Integer(n) => {
            out.put_u8(1)?;
            out.put(&n.to_le_bytes())?;
        }
        KvResponse::Bulk(None) => out.put_u8(2)?,
        KvResponse::Bulk(Some(bytes)) => {
            out.put_u8(3)?;
            out.put_len_bytes(bytes)?;
        }
        KvResponse::Array(items) => {
            out.put_u8(4)?;
            out.put_u32(items.len() as u32)?;
            for item in items {
                match item {
                    None => out.put_u8(0)?,
                    Some(bytes) => {
                        out.put_u8(1)?;
                        out.put_len_bytes(bytes)?;
                    }
                }
            }
        }
        KvResponse::Error(KvError::NotAnInteger) => out.put(&[5, 1])?,
        KvResponse::Error(KvError::IncrOverflow) => out.put(&[5, 2])?,
        KvResponse::Error(KvError::NotAFloat) => out.put(&[5, 3])?,
        KvResponse::Error(KvError::FloatOverflow) => out.put(&[5, 4])?,
        KvResponse::Error(KvError::StringTooLong) => out.put(&[5, 5])?,
        KvResponse::Error(KvError::NoSuchKey) => out.put(&[5, 6])?,
        KvResponse::Error(KvError::InvalidExpireTime(command)) => {
            let code = match *command {
                "set" => 1,
                "getex" => 2,
                "expire" => 3,
                other => {
                    return Err(StateMachineError::Fatal(format!(
                        "session table holds an expire-time error of '{other}'"
                    )))
                }
            };
            out.put(&[5, 7, code])?;
        }
        KvResponse::Status(status) => {
            let code = match *status {
                "string" => 1,
                "none" => 2,
                other => {
                    return Err(StateMachineError::Fatal(format!(
                        "session table holds an unknown status '{other}'"
                    )))
                }
            };
            out.put(&[6, code])?;
        }
        KvResponse::NullArray => out.put_u8(7)?,
        KvResponse::Nested(items) => {
            out.put_u8(8)?;
            out.put_u32(items.len() as u32)?;
            for item in items {
                write_response(out, item)?;
            }
        }
        KvResponse::Watched { index, exists } => {
            out.put_u8(9)?;
            out.put_u64(*index)?;
            out.put_u32(exists.len() as u32)?;
            for &exists in exists {
                out.put_u8(u8::from(exists))?;
            }
        }
        KvResponse::Error(other) => {
            // Only replies of executed commands are remembered; stale/malformed/read-path
            // errors are produced before execution and never reach the session table.
            return Err(StateMachineError::Fatal(format!(
                "session table holds an uncacheable reply: {other}"
            )));
        }
    }
    Ok(())
}

/// A key's first 16 bytes, zero-padded, as two big-endian numbers. Where two keys'
/// numbers differ they order the keys as their bytes do (a shorter key's padding is
/// below any byte a longer key has there, or ties with a zero byte and the whole keys
/// decide), so the keys can be sorted by their numbers and only ties by their bytes.
#[inline]
fn key_prefix(key: &[u8]) -> (u64, u64) {
    let mut raw = [0u8; 16];
    let n = key.len().min(16);
    raw[..n].copy_from_slice(&key[..n]);
    let prefix = u128::from_be_bytes(raw);
    ((prefix >> 64) as u64, prefix as u64)
}

/// Byte `digit` (0 = least significant) of a prefix.
#[inline]
fn prefix_byte(high: u64, low: u64, digit: usize) -> usize {
    let word = if digit < 8 { low } else { high };
    ((word >> (8 * (digit % 8))) & 0xff) as usize
}

/// Sorts `(high, low, position)` items by prefix: a least-significant-digit radix sort
/// over the 16 prefix bytes that skips the bytes all items share (the constant part of
/// keys like `key:000000012345`). One counting pass for all 16 bytes, then one stable
/// scatter per byte that differs.
fn radix_sort_by_prefix(items: &mut Vec<(u64, u64, usize)>) {
    let mut counts = vec![[0usize; 256]; 16];
    for &(high, low, _) in items.iter() {
        for (digit, count) in counts.iter_mut().enumerate() {
            count[prefix_byte(high, low, digit)] += 1;
        }
    }
    let mut scratch = items.clone();
    for (digit, count) in counts.iter().enumerate() {
        if count.contains(&items.len()) {
            continue;
        }
        let mut offsets = [0usize; 256];
        let mut total = 0;
        for (offset, &n) in offsets.iter_mut().zip(count.iter()) {
            *offset = total;
            total += n;
        }
        for &item in items.iter() {
            let bucket = &mut offsets[prefix_byte(item.0, item.1, digit)];
            scratch[*bucket] = item;
            *bucket += 1;
        }
        std::mem::swap(items, &mut scratch);
    }
}

/// The positions of `keys` in increasing byte order of the keys. Sorting the keys by
/// slice comparison was a third of the writer's instructions, and half after the
/// buffering (memcmp calls, moves, cache misses into the map; callgrind): a radix sort
/// of 16-byte prefixes, then comparisons only among keys whose prefixes tie.
fn key_order(keys: &[&[u8]]) -> Vec<usize> {
    let mut order: Vec<(u64, u64, usize)> = keys
        .iter()
        .enumerate()
        .map(|(position, key)| {
            let (high, low) = key_prefix(key);
            (high, low, position)
        })
        .collect();
    radix_sort_by_prefix(&mut order);
    for tied in order.chunk_by_mut(|a, b| (a.0, a.1) == (b.0, b.1)) {
        if tied.len() > 1 {
            tied.sort_unstable_by(|a, b| keys[a.2].cmp(keys[b.2]));
        }
    }
    order.into_iter().map(|(_, _, position)| position).collect()
}

/// Every key and value of `data` in key order.
fn sorted_pairs(data: &DataMap) -> Vec<(&[u8], &Value)> {
    let (keys, values): (Vec<&[u8]>, Vec<&Value>) = data
        .iter()
        .map(|(key, value)| (key.as_slice(), value))
        .unzip();
    key_order(&keys)
        .into_iter()
        .map(|position| (keys[position], values[position]))
        .collect()
}

impl KvSnapshot {
    fn write_header(&self, out: &mut StreamWriter<'_>) -> Result<(), StateMachineError> {
        out.put(&SNAPSHOT_MAGIC)?;
        out.put_u8(SNAPSHOT_FORMAT_VERSION)?;
        out.put_u64(self.applied_index)?;
        out.put_u64(self.log_time_ms)?;
        out.put_u64(self.keyspace.last_removal_index)?;
        Ok(())
    }

    fn write_sessions(&self, out: &mut StreamWriter<'_>) -> Result<(), StateMachineError> {
        // Client-id order makes the bytes a pure function of the state (slots are not).
        let sessions = self.sessions.sorted_by_client();
        out.put_u64(sessions.len() as u64)?;
        for (client_id, record) in sessions {
            out.put_u64(client_id)?;
            out.put_u64(record.last_sequence)?;
            out.put_u64(record.last_index)?;
            write_response(out, &record.reply)?;
        }
        Ok(())
    }

    fn write_entries(&self, out: &mut StreamWriter<'_>) -> Result<(), StateMachineError> {
        let data = &self.keyspace.data;
        out.put_u64(data.len() as u64)?;
        // Key order makes the bytes a pure function of the state (the map is hashed).
        for (key, value) in sorted_pairs(data) {
            out.put_len_bytes(key)?;
            out.put_len_bytes(&value.bytes)?;
            out.put_u64(value.version)?;
            out.put_u64(value.expire_at_ms)?;
        }
        Ok(())
    }
}

impl SnapshotSource for KvSnapshot {
    fn applied_index(&self) -> u64 {
        self.applied_index
    }

    fn write_to(&mut self, out: &mut dyn Write) -> Result<u64, StateMachineError> {
        let mut writer = StreamWriter::new(out);
        self.write_header(&mut writer)?;
        self.write_sessions(&mut writer)?;
        self.write_entries(&mut writer)?;
        writer.finish()
    }
}

/// Bytes the reader collects before one CRC update (CRC updates of a few bytes per
/// field cost more than the parse).
const HASH_CHUNK_BYTES: usize = 64 << 10;

/// Longest byte string the reader allocates at its announced length before reading it;
/// a longer one grows only as bytes actually arrive (a lying length in a short stream
/// then allocates no more than the stream holds).
const EXACT_ALLOC_BYTES: usize = 64 << 10;

/// Checksums everything read through it. Reads exactly what the parse asks for (no read
/// ahead: the input's own checks, such as the snapshot file's CRC at its end, fire at
/// the same point as with unbuffered reads).
struct ChecksumReader<'a> {
    inner: &'a mut dyn Read,
    hasher: crc32fast::Hasher,
    /// Bytes read and not yet in `hasher`. Invariant: shorter than [`HASH_CHUNK_BYTES`]
    /// between calls; `hasher` + `unhashed` = every byte read.
    unhashed: Vec<u8>,
}

impl<'a> ChecksumReader<'a> {
    fn new(inner: &'a mut dyn Read) -> Self {
        ChecksumReader {
            inner,
            hasher: crc32fast::Hasher::new(),
            unhashed: Vec::with_capacity(2 * HASH_CHUNK_BYTES),
        }
    }

    #[inline]
    fn note(&mut self, bytes: &[u8]) {
        if bytes.len() >= HASH_CHUNK_BYTES {
            self.hasher.update(&self.unhashed);
            self.unhashed.clear();
            self.hasher.update(bytes);
            return;
        }
        self.unhashed.extend_from_slice(bytes);
        if self.unhashed.len() >= HASH_CHUNK_BYTES {
            self.hasher.update(&self.unhashed);
            self.unhashed.clear();
        }
    }

    /// The CRC-32 of every byte read so far.
    fn crc(&self) -> u32 {
        let mut hasher = self.hasher.clone();
        hasher.update(&self.unhashed);
        hasher.finalize()
    }

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N], StateMachineError> {
        let mut raw = [0u8; N];
        self.inner
            .read_exact(&mut raw)
            .map_err(truncated_is_corrupt)?;
        self.note(&raw);
        Ok(raw)
    }

    fn u8(&mut self) -> Result<u8, StateMachineError> {
        Ok(self.read_array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, StateMachineError> {
        Ok(u32::from_le_bytes(self.read_array()?))
    }

    fn u64(&mut self) -> Result<u64, StateMachineError> {
        Ok(u64::from_le_bytes(self.read_array()?))
    }

    /// Reads a u32 byte string length and checks it is at most `max_bytes`.
    fn string_len(&mut self, max_bytes: usize) -> Result<usize, StateMachineError> {
        let len = self.u32()?;
        if len as usize > max_bytes {
            return Err(StateMachineError::SnapshotLimitExceeded {
                what: "byte string length",
                found: u64::from(len),
                limit: max_bytes as u64,
            });
        }
        Ok(len as usize)
    }

    /// Reads the `len` bytes of a byte string into `buffer` (replacing its contents).
    fn string_into(&mut self, len: usize, buffer: &mut Vec<u8>) -> Result<(), StateMachineError> {
        buffer.clear();
        if len <= EXACT_ALLOC_BYTES {
            buffer.resize(len, 0);
            self.inner.read_exact(buffer).map_err(|error| {
                if error.kind() == std::io::ErrorKind::UnexpectedEof {
                    corrupt("snapshot ends inside a byte string")
                } else {
                    StateMachineError::Io(error)
                }
            })?;
        } else {
            let read = (&mut *self.inner).take(len as u64).read_to_end(buffer)?;
            if read != len {
                return Err(corrupt("snapshot ends inside a byte string"));
            }
        }
        self.note(buffer);
        Ok(())
    }

    /// Reads a u32-length-prefixed byte string of at most `max_bytes` into `buffer`.
    fn len_bytes_into(
        &mut self,
        max_bytes: usize,
        buffer: &mut Vec<u8>,
    ) -> Result<(), StateMachineError> {
        let len = self.string_len(max_bytes)?;
        self.string_into(len, buffer)
    }

    /// Reads a u32-length-prefixed byte string of at most `max_bytes` (one allocation
    /// of its exact length, up to [`EXACT_ALLOC_BYTES`]).
    fn len_bytes(&mut self, max_bytes: usize) -> Result<Bytes, StateMachineError> {
        let len = self.string_len(max_bytes)?;
        let mut buffer = Vec::with_capacity(len.min(EXACT_ALLOC_BYTES));
        self.string_into(len, &mut buffer)?;
        // Exactly sized, `Bytes` takes the allocation over without another one.
        buffer.shrink_to_fit();
        Ok(Bytes::from(buffer))
    }
}

fn corrupt(reason: impl Into<String>) -> StateMachineError {
    StateMachineError::CorruptSnapshot {
        reason: reason.into(),
    }
}

fn truncated_is_corrupt(error: std::io::Error) -> StateMachineError {
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        corrupt("snapshot ends early")
    } else {
        StateMachineError::Io(error)
    }
}

fn read_response(
    reader: &mut ChecksumReader<'_>,
    limits: &KvLimits,
    depth: usize,
) -> Result<KvResponse, StateMachineError> {
    if depth > MAX_REPLY_DEPTH {
        return Err(corrupt("remembered reply nested too deep"));
    }
    let read_count = |reader: &mut ChecksumReader<'_>| -> Result<u32, StateMachineError> {
        let count = reader.u32()?;
        if count as usize > limits.max_arguments {
            return Err(StateMachineError::SnapshotLimitExceeded {
                what: "reply array length",
                found: u64::from(count),
                limit: limits.max_arguments as u64,
            });
        }
        Ok(count)
    };
    Ok(match reader.u8()? {
        0 => KvResponse::Ok,
        1 => KvResponse::Integer(i64::from_le_bytes(reader.read_array()?)),
        2 => KvResponse::Bulk(None),
        3 => KvResponse::Bulk(Some(reader.len_bytes(limits.max_argument_bytes)?)),
        4 => {
            let count = reader.u32()?;
            if count as usize > limits.max_arguments {
                return Err(StateMachineError::SnapshotLimitExceeded {
                    what: "reply array length",
                    found: u64::from(count),
                    limit: limits.max_arguments as u64,
                });
            }
            let mut items = Vec::new();
            for _ in 0..count {
                items.push(match reader.u8()? {
                    0 => None,
                    1 => Some(reader.len_bytes(limits.max_argument_bytes)?),
                    tag => return Err(corrupt(format!("bad array item tag {tag}"))),
                });
            }
            KvResponse::Array(items)
        }
        5 => KvResponse::Error(match reader.u8()? {
            1 => KvError::NotAnInteger,
            2 => KvError::IncrOverflow,
            3 => KvError::NotAFloat,
            4 => KvError::FloatOverflow,
            5 => KvError::StringTooLong,
            6 => KvError::NoSuchKey,
            7 => KvError::InvalidExpireTime(match reader.u8()? {
                1 => "set",
                2 => "getex",
                3 => "expire",
                code => return Err(corrupt(format!("bad expire command code {code}"))),
            }),
            code => return Err(corrupt(format!("bad error code {code}"))),
        }),
        6 => KvResponse::Status(match reader.u8()? {
            1 => "string",
            2 => "none",
            code => return Err(corrupt(format!("bad status code {code}"))),
        }),
        7 => KvResponse::NullArray,
        8 => {
            let count = read_count(reader)?;
            let mut items = Vec::new();
            for _ in 0..count {
                items.push(read_response(reader, limits, depth + 1)?);
            }
            KvResponse::Nested(items)
        }
        9 => {
            let index = reader.u64()?;
            let count = read_count(reader)?;
            let mut exists = Vec::new();
            for _ in 0..count {
                exists.push(match reader.u8()? {
                    0 => false,
                    1 => true,
                    flag => return Err(corrupt(format!("bad exists flag {flag}"))),
                });
            }
            KvResponse::Watched { index, exists }
        }
        tag => return Err(corrupt(format!("bad reply tag {tag}"))),
    })
}

/// One client session as stored in a snapshot stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvSnapshotSession {
    /// The client's id (nonzero).
    pub client_id: u64,
    /// Sequence number of the client's last applied request (nonzero).
    pub last_sequence: u64,
    /// Log index of that request (in `1..=applied_index`).
    pub last_index: u64,
    /// Its remembered reply.
    pub reply: KvResponse,
}

/// Everything a KV snapshot stream holds, for inspection tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvSnapshotContents {
    /// Index of the last entry the snapshot reflects.
    pub applied_index: u64,
    /// The log time (Unix ms) expiry is judged by (0 in format 1).
    pub log_time_ms: u64,
    /// Keys with an expiry and its Unix ms time, in key order (none in format 1).
    pub expiries: Vec<(Bytes, u64)>,
    /// The session table in client-id order, as stored (before any eviction a smaller
    /// `max_sessions` would make on restore).
    pub sessions: Vec<KvSnapshotSession>,
    /// The key-value pairs in key order.
    pub entries: Vec<(Bytes, Bytes)>,
}

/// Reads and fully checks a KV snapshot stream (the same checks as restore: magic,
/// version, bounds, orders, CRC, nothing after it) and returns its contents. Holds the
/// whole contents in memory.
pub fn read_stream(
    input: &mut dyn Read,
    limits: &KvLimits,
) -> Result<KvSnapshotContents, StateMachineError> {
    let mut contents = KvSnapshotContents {
        applied_index: 0,
        log_time_ms: 0,
        expiries: Vec::new(),
        sessions: Vec::new(),
        entries: Vec::new(),
    };
    parse_stream(input, limits, &mut contents)?;
    Ok(contents)
}

/// Receives the parts of a stream as [`parse_stream`] checks them.
trait StreamSink {
    fn header(&mut self, applied_index: u64, log_time_ms: u64, last_removal_index: u64);
    fn session(&mut self, session: KvSnapshotSession);
    fn entry(&mut self, key: &[u8], value: Value);
}

impl StreamSink for KvSnapshotContents {
    fn header(&mut self, applied_index: u64, log_time_ms: u64, _last_removal_index: u64) {
        self.applied_index = applied_index;
        self.log_time_ms = log_time_ms;
    }
    fn session(&mut self, session: KvSnapshotSession) {
        self.sessions.push(session);
    }
    fn entry(&mut self, key: &[u8], value: Value) {
        let key = Bytes::copy_from_slice(key);
        if value.expire_at_ms != 0 {
            self.expiries.push((key.clone(), value.expire_at_ms));
        }
        self.entries.push((key, value.bytes));
    }
}

/// A state machine being restored: the sessions arrive in client-id order and are
/// collected, the table (which needs them in log order) is built once all are read.
struct Restoring {
    state: KvStateMachine,
    sessions: Vec<(u64, SessionRecord)>,
}

impl StreamSink for Restoring {
    fn header(&mut self, applied_index: u64, log_time_ms: u64, last_removal_index: u64) {
        let mut live = self.state.live.write();
        live.applied_index = applied_index;
        live.log_time_ms = log_time_ms;
        live.keyspace.last_removal_index = last_removal_index;
    }
    fn session(&mut self, session: KvSnapshotSession) {
        // `parse_stream` checked that clients and last indexes are unique.
        self.sessions.push((
            session.client_id,
            SessionRecord {
                last_sequence: session.last_sequence,
                last_index: session.last_index,
                reply: session.reply,
            },
        ));
    }
    fn entry(&mut self, key: &[u8], value: Value) {
        let expire_at_ms = value.expire_at_ms;
        let mut live = self.state.live.write();
        live.keyspace.data.insert(DataKey::new(key), value);
        if expire_at_ms != 0 {
            live.keyspace
                .expiries
                .insert((expire_at_ms, DataKey::new(key)));
        }
    }
}

/// Restores a state machine from a snapshot stream.
pub(super) fn read_snapshot(
    input: &mut dyn Read,
    limits: &KvLimits,
) -> Result<KvStateMachine, StateMachineError> {
    let mut restoring = Restoring {
        state: KvStateMachine::new(*limits),
        sessions: Vec::new(),
    };
    parse_stream(input, limits, &mut restoring)?;
    let mut state = restoring.state;
    // A smaller configured bound than the writer's evicts the same clients everywhere.
    state.sessions = SessionTable::from_records(restoring.sessions, limits.max_sessions);
    Ok(state)
}

fn parse_stream(
    input: &mut dyn Read,
    limits: &KvLimits,
    sink: &mut dyn StreamSink,
) -> Result<(), StateMachineError> {
    let mut reader = ChecksumReader::new(input);
    if reader.read_array::<4>()? != SNAPSHOT_MAGIC {
        return Err(corrupt("bad magic"));
    }
    let version = reader.u8()?;
    if version != SNAPSHOT_FORMAT_VERSION && version != SNAPSHOT_FORMAT_V1 {
        return Err(StateMachineError::UnsupportedSnapshotVersion {
            found: version,
            supported: SNAPSHOT_FORMAT_VERSION,
        });
    }
    let timed = version == SNAPSHOT_FORMAT_VERSION;
    let applied_index = reader.u64()?;
    let (log_time_ms, last_removal_index) = if timed {
        (reader.u64()?, reader.u64()?)
    } else {
        (0, 0)
    };
    if last_removal_index > applied_index {
        return Err(corrupt("removal mark past the applied index"));
    }
    sink.header(applied_index, log_time_ms, last_removal_index);
    parse_sessions(&mut reader, limits, applied_index, sink)?;
    parse_entries(&mut reader, limits, applied_index, timed, sink)?;
    check_trailer(reader)
}

fn parse_sessions(
    reader: &mut ChecksumReader<'_>,
    limits: &KvLimits,
    applied_index: u64,
    sink: &mut dyn StreamSink,
) -> Result<(), StateMachineError> {
    let n_sessions = reader.u64()?;
    let mut previous_client: Option<u64> = None;
    let mut last_indexes = BTreeSet::new();
    for _ in 0..n_sessions {
        let client_id = reader.u64()?;
        let last_sequence = reader.u64()?;
        let last_index = reader.u64()?;
        let reply = read_response(reader, limits, 0)?;
        if client_id == 0 || last_sequence == 0 {
            return Err(corrupt("session with zero client id or sequence"));
        }
        if previous_client.is_some_and(|p| p >= client_id) {
            return Err(corrupt("sessions not in increasing client order"));
        }
        previous_client = Some(client_id);
        if last_index == 0 || last_index > applied_index {
            return Err(corrupt("session index outside 1..=applied_index"));
        }
        if !last_indexes.insert(last_index) {
            return Err(corrupt("two sessions at one log index"));
        }
        sink.session(KvSnapshotSession {
            client_id,
            last_sequence,
            last_index,
            reply,
        });
    }
    Ok(())
}

fn parse_entries(
    reader: &mut ChecksumReader<'_>,
    limits: &KvLimits,
    applied_index: u64,
    timed: bool,
    sink: &mut dyn StreamSink,
) -> Result<(), StateMachineError> {
    let n_entries = reader.u64()?;
    // Two reused key buffers: this entry's and the previous one's (no allocation per key).
    let mut key = Vec::new();
    let mut previous_key = Vec::new();
    for number in 0..n_entries {
        std::mem::swap(&mut key, &mut previous_key);
        reader.len_bytes_into(limits.max_argument_bytes, &mut key)?;
        let value = reader.len_bytes(limits.max_argument_bytes)?;
        if number > 0 && previous_key >= key {
            return Err(corrupt("keys not in increasing order"));
        }
        let (version, expire_at_ms) = if timed {
            (reader.u64()?, reader.u64()?)
        } else {
            (0, 0)
        };
        if version > applied_index {
            return Err(corrupt("key version past the applied index"));
        }
        sink.entry(
            &key,
            Value {
                bytes: value,
                version,
                expire_at_ms,
            },
        );
    }
    Ok(())
}

/// The stored CRC must match and nothing may follow it.
fn check_trailer(reader: ChecksumReader<'_>) -> Result<(), StateMachineError> {
    let computed = reader.crc();
    let mut raw = [0u8; 4];
    reader
        .inner
        .read_exact(&mut raw)
        .map_err(truncated_is_corrupt)?;
    let stored = u32::from_le_bytes(raw);
    if stored != computed {
        return Err(corrupt(format!(
            "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )));
    }
    let mut probe = [0u8; 1];
    loop {
        match reader.inner.read(&mut probe) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(corrupt("bytes after the checksum")),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StateMachineError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::key_order;

    fn sorted_by_bytes(keys: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut sorted = keys.to_vec();
        sorted.sort();
        sorted
    }

    fn sorted_by_key_order(keys: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let slices: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        key_order(&slices)
            .into_iter()
            .map(|position| keys[position].clone())
            .collect()
    }

    #[test]
    fn keys_tied_on_their_prefix_or_padding_are_ordered_by_their_bytes() {
        let keys: Vec<Vec<u8>> = [
            &b"a"[..],
            b"a\0",
            b"",
            b"\0",
            b"0123456789abcdef",
            b"0123456789abcdef\0",
            b"0123456789abcdefz",
            b"0123456789abcdef0",
            b"0123456789abcdee\xff\xff",
            b"\xff",
            b"key:000000000010",
            b"key:000000000009",
        ]
        .iter()
        .map(|key| key.to_vec())
        .collect();
        assert_eq!(sorted_by_key_order(&keys), sorted_by_bytes(&keys));
    }

    proptest! {
        #[test]
        fn key_order_is_byte_order(
            // Hash-map order, not sorted order, is what the writer starts from.
            keys in proptest::collection::btree_set(
                proptest::collection::vec(
                    prop_oneof![Just(0u8), Just(1u8), Just(b'k'), Just(0xff), any::<u8>()],
                    0..40,
                ),
                0..300,
            )
            .prop_map(|keys| keys.into_iter().collect::<Vec<_>>())
            .prop_shuffle()
        ) {
            prop_assert_eq!(sorted_by_key_order(&keys), sorted_by_bytes(&keys));
        }
    }
}
