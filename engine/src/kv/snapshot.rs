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
use super::machine::{DataKey, KvStateMachine, Value};
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

/// Counts and checksums everything written through it.
struct ChecksumWriter<'a> {
    inner: &'a mut dyn Write,
    hasher: crc32fast::Hasher,
    written_bytes: u64,
}

impl Write for ChecksumWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written_bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_len_bytes(out: &mut dyn Write, bytes: &[u8]) -> Result<(), StateMachineError> {
    let len = u32::try_from(bytes.len()).map_err(|_| StateMachineError::SnapshotLimitExceeded {
        what: "byte string length",
        found: bytes.len() as u64,
        limit: u64::from(u32::MAX),
    })?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)?;
    Ok(())
}

fn write_response(out: &mut dyn Write, response: &KvResponse) -> Result<(), StateMachineError> {
    match response {
        KvResponse::Ok => out.write_all(&[0])?,
        KvResponse::Integer(n) => {
            out.write_all(&[1])?;
            out.write_all(&n.to_le_bytes())?;
        }
        KvResponse::Bulk(None) => out.write_all(&[2])?,
        KvResponse::Bulk(Some(bytes)) => {
            out.write_all(&[3])?;
            write_len_bytes(out, bytes)?;
        }
        KvResponse::Array(items) => {
            out.write_all(&[4])?;
            out.write_all(&(items.len() as u32).to_le_bytes())?;
            for item in items {
                match item {
                    None => out.write_all(&[0])?,
                    Some(bytes) => {
                        out.write_all(&[1])?;
                        write_len_bytes(out, bytes)?;
                    }
                }
            }
        }
        KvResponse::Error(KvError::NotAnInteger) => out.write_all(&[5, 1])?,
        KvResponse::Error(KvError::IncrOverflow) => out.write_all(&[5, 2])?,
        KvResponse::Error(KvError::NotAFloat) => out.write_all(&[5, 3])?,
        KvResponse::Error(KvError::FloatOverflow) => out.write_all(&[5, 4])?,
        KvResponse::Error(KvError::StringTooLong) => out.write_all(&[5, 5])?,
        KvResponse::Error(KvError::NoSuchKey) => out.write_all(&[5, 6])?,
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
            out.write_all(&[5, 7, code])?;
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
            out.write_all(&[6, code])?;
        }
        KvResponse::NullArray => out.write_all(&[7])?,
        KvResponse::Nested(items) => {
            out.write_all(&[8])?;
            out.write_all(&(items.len() as u32).to_le_bytes())?;
            for item in items {
                write_response(out, item)?;
            }
        }
        KvResponse::Watched { index, exists } => {
            out.write_all(&[9])?;
            out.write_all(&index.to_le_bytes())?;
            out.write_all(&(exists.len() as u32).to_le_bytes())?;
            for &exists in exists {
                out.write_all(&[u8::from(exists)])?;
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

impl SnapshotSource for KvSnapshot {
    fn applied_index(&self) -> u64 {
        self.applied_index
    }

    fn write_to(&mut self, out: &mut dyn Write) -> Result<u64, StateMachineError> {
        let mut writer = ChecksumWriter {
            inner: out,
            hasher: crc32fast::Hasher::new(),
            written_bytes: 0,
        };
        writer.write_all(&SNAPSHOT_MAGIC)?;
        writer.write_all(&[SNAPSHOT_FORMAT_VERSION])?;
        writer.write_all(&self.applied_index.to_le_bytes())?;
        writer.write_all(&self.log_time_ms.to_le_bytes())?;
        writer.write_all(&self.keyspace.last_removal_index.to_le_bytes())?;
        // Client-id order makes the bytes a pure function of the state (slots are not).
        let sessions = self.sessions.sorted_by_client();
        writer.write_all(&(sessions.len() as u64).to_le_bytes())?;
        for (client_id, record) in sessions {
            writer.write_all(&client_id.to_le_bytes())?;
            writer.write_all(&record.last_sequence.to_le_bytes())?;
            writer.write_all(&record.last_index.to_le_bytes())?;
            write_response(&mut writer, &record.reply)?;
        }
        let data = &self.keyspace.data;
        writer.write_all(&(data.len() as u64).to_le_bytes())?;
        // Key order makes the bytes a pure function of the state (the map is hashed).
        let mut pairs: Vec<(&[u8], &Value)> = data
            .iter()
            .map(|(key, value)| (key.as_slice(), value))
            .collect();
        pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (key, value) in pairs {
            write_len_bytes(&mut writer, key)?;
            write_len_bytes(&mut writer, &value.bytes)?;
            writer.write_all(&value.version.to_le_bytes())?;
            writer.write_all(&value.expire_at_ms.to_le_bytes())?;
        }
        let crc = writer.hasher.clone().finalize();
        writer.inner.write_all(&crc.to_le_bytes())?;
        writer.inner.flush()?;
        Ok(writer.written_bytes + 4)
    }
}

/// Checksums everything read through it.
struct ChecksumReader<'a> {
    inner: &'a mut dyn Read,
    hasher: crc32fast::Hasher,
}

impl ChecksumReader<'_> {
    fn read_array<const N: usize>(&mut self) -> Result<[u8; N], StateMachineError> {
        let mut raw = [0u8; N];
        self.inner
            .read_exact(&mut raw)
            .map_err(truncated_is_corrupt)?;
        self.hasher.update(&raw);
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

    /// Reads a u32-length-prefixed byte string of at most `max_bytes`, growing the buffer
    /// only as bytes actually arrive.
    fn len_bytes(&mut self, max_bytes: usize) -> Result<Bytes, StateMachineError> {
        let len = self.u32()?;
        if len as usize > max_bytes {
            return Err(StateMachineError::SnapshotLimitExceeded {
                what: "byte string length",
                found: u64::from(len),
                limit: max_bytes as u64,
            });
        }
        let mut buffer = Vec::new();
        let read = (&mut *self.inner)
            .take(u64::from(len))
            .read_to_end(&mut buffer)?;
        if read != len as usize {
            return Err(corrupt("snapshot ends inside a byte string"));
        }
        self.hasher.update(&buffer);
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
    fn entry(&mut self, key: Bytes, value: Value);
}

impl StreamSink for KvSnapshotContents {
    fn header(&mut self, applied_index: u64, log_time_ms: u64, _last_removal_index: u64) {
        self.applied_index = applied_index;
        self.log_time_ms = log_time_ms;
    }
    fn session(&mut self, session: KvSnapshotSession) {
        self.sessions.push(session);
    }
    fn entry(&mut self, key: Bytes, value: Value) {
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
    fn entry(&mut self, key: Bytes, value: Value) {
        let expire_at_ms = value.expire_at_ms;
        let mut live = self.state.live.write();
        live.keyspace.data.insert(DataKey::new(&key), value);
        if expire_at_ms != 0 {
            live.keyspace
                .expiries
                .insert((expire_at_ms, DataKey::new(&key)));
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
    let mut reader = ChecksumReader {
        inner: input,
        hasher: crc32fast::Hasher::new(),
    };
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
    let mut previous_key: Option<Bytes> = None;
    for _ in 0..n_entries {
        let key = reader.len_bytes(limits.max_argument_bytes)?;
        let value = reader.len_bytes(limits.max_argument_bytes)?;
        if previous_key.as_ref().is_some_and(|p| *p >= key) {
            return Err(corrupt("keys not in increasing order"));
        }
        previous_key = Some(key.clone());
        let (version, expire_at_ms) = if timed {
            (reader.u64()?, reader.u64()?)
        } else {
            (0, 0)
        };
        if version > applied_index {
            return Err(corrupt("key version past the applied index"));
        }
        sink.entry(
            key,
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
    let computed = reader.hasher.clone().finalize();
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
