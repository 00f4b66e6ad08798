//! The KV state machine: data, expiry times, sessions and applied index, the apply
//! path, and the frozen read views reads are served from.
//!
//! # Time
//! Expiry is judged by *log time*, never by a replica's clock: every timed entry carries
//! the leader's clock, and `log_time_ms` is the maximum stamp applied so far (so it
//! never goes back, whatever the clocks of successive leaders do). A read carries the
//! serving node's clock and is judged at `max(log_time_ms, its stamp)`, never behind
//! the log. A key past its expiry is invisible at once; it is removed by entries only:
//! a write that touches it, or the few (at most [`EXPIRE_PER_ENTRY`]) earliest expired
//! keys every timed entry removes as it applies, in expiry order (the same keys on every
//! replica).

use std::io::Read;

use bytes::Bytes;

use super::codec::decode_request;
use super::command::{Command, KvError, KvLimits, KvResponse};
use super::keyspace::Keyspace;
use super::session::{SessionCheck, SessionRecord, SessionTable};
use super::snapshot::{read_snapshot, KvSnapshot};
use crate::state_machine::{CommittedEntry, SnapshotSource, StateMachine, StateMachineError};

/// The data map: see the module docs for why it is hashed. The hasher is foldhash's
/// (randomly seeded per map, so keys chosen by clients cannot aim at one trie path):
/// SipHash, std's default, was about 3 % of a leader's instructions per write
/// (callgrind, 50 clients x 16).
pub(super) type DataMap =
    imbl::GenericHashMap<DataKey, Value, DataHasher, imbl::shared_ptr::DefaultSharedPtr>;
/// The data map's hasher: see [`DataMap`].
pub(super) type DataHasher = foldhash::fast::RandomState;
/// Keys with an expiry, in expiry order: `(expire_at_ms, key)`.
pub(super) type ExpiryIndex = imbl::OrdSet<(u64, DataKey)>;

/// Most expired keys one timed entry removes as it applies.
pub const EXPIRE_PER_ENTRY: usize = 16;

/// A stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Value {
    pub(super) bytes: Bytes,
    /// Log index of the entry that last wrote the key (WATCH compares it).
    pub(super) version: u64,
    /// Unix milliseconds (log time) from which the key is gone; 0 = never.
    pub(super) expire_at_ms: u64,
}

/// Longest key stored inside the map's node instead of in its own allocation.
pub(super) const INLINE_KEY_BYTES: usize = 22;

/// A key of the data map. Short keys (the common case) live inline: inserting one
/// allocates nothing, and comparing it during a lookup touches no other cache line --
/// with a separately allocated key, that comparison was a cache miss on every write of
/// every replica (perf: `memcmp` ~6 % of a 3-node cluster's CPU at 50 clients × 16).
/// Hash and equality are those of the byte string, so `&[u8]` looks keys up.
#[derive(Clone)]
pub(super) enum DataKey {
    Inline {
        len: u8,
        bytes: [u8; INLINE_KEY_BYTES],
    },
    Heap(Box<[u8]>),
}

impl DataKey {
    pub(super) fn new(key: &[u8]) -> DataKey {
        if key.len() <= INLINE_KEY_BYTES {
            let mut bytes = [0u8; INLINE_KEY_BYTES];
            bytes[..key.len()].copy_from_slice(key);
            DataKey::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            DataKey::Heap(key.into())
        }
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            DataKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            DataKey::Heap(bytes) => bytes,
        }
    }
}

impl std::borrow::Borrow<[u8]> for DataKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::hash::Hash for DataKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Must equal `<[u8] as Hash>::hash` for `Borrow<[u8]>` lookups to work.
        self.as_slice().hash(state);
    }
}

impl PartialEq for DataKey {
    fn eq(&self, other: &DataKey) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for DataKey {}

impl PartialOrd for DataKey {
    fn partial_cmp(&self, other: &DataKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DataKey {
    fn cmp(&self, other: &DataKey) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", Bytes::copy_from_slice(self.as_slice()))
    }
}

/// Parses a value the way Redis's `string2ll` does: optional `-`, no `+`, no spaces, no
/// leading zeros (except `0` itself), no `-0`, within `i64`.
pub fn parse_redis_integer(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes {
        [b'0'] => return Some(0),
        [b'-', rest @ ..] => (true, rest),
        _ => (false, bytes),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut magnitude: u64 = 0;
    for &byte in digits {
        if !byte.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(byte - b'0'))?;
    }
    if negative {
        if magnitude == 1u64 << 63 {
            Some(i64::MIN)
        } else {
            i64::try_from(magnitude).ok().map(|m| -m)
        }
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// The replicated KV store: data, expiry, client sessions, log time, applied index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvStateMachine {
    pub(super) keyspace: Keyspace,
    pub(super) sessions: SessionTable,
    /// Index of the last applied entry; 0 before any.
    pub(super) applied_index: u64,
    /// Log time: the largest time stamp of any applied entry (Unix ms; 0 before any).
    /// Invariant: never decreases.
    pub(super) log_time_ms: u64,
    limits: KvLimits,
}

/// A frozen, cheaply cloned view of the KV data for serving reads on other threads.
#[derive(Debug, Clone)]
pub struct KvReadView {
    keyspace: Keyspace,
    applied_index: u64,
    log_time_ms: u64,
}

impl KvReadView {
    /// The index of the last entry this view reflects.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Answers a read-only command judged at `max(log time, now_ms)`; write commands
    /// get [`KvError::NotReadOnly`].
    pub fn query(&self, command: &Command<'_>, now_ms: u64) -> KvResponse {
        self.keyspace
            .read(command, self.log_time_ms.max(now_ms), self.applied_index)
    }

    /// [`StateMachine::query`] on this view: `request` is an encoded request holding a
    /// read-only command, judged at `max(log time, its time stamp)`.
    pub fn query_encoded(&self, request: &[u8], limits: &KvLimits) -> KvResponse {
        match decode_request(request, limits) {
            Ok(request) => self.query(&request.command, request.time_ms.unwrap_or(0)),
            Err(error) => KvResponse::Error(KvError::Malformed(error)),
        }
    }
}

impl Default for KvStateMachine {
    fn default() -> Self {
        Self::new(KvLimits::default())
    }
}

impl KvStateMachine {
    /// An empty store.
    pub fn new(limits: KvLimits) -> Self {
        KvStateMachine {
            keyspace: Keyspace::default(),
            sessions: SessionTable::new(),
            applied_index: 0,
            log_time_ms: 0,
            limits,
        }
    }

    /// The limits this store was built with.
    pub fn limits(&self) -> &KvLimits {
        &self.limits
    }

    /// Number of keys stored (expired ones not yet removed included).
    pub fn len(&self) -> usize {
        self.keyspace.data.len()
    }

    /// True when no key is stored.
    pub fn is_empty(&self) -> bool {
        self.keyspace.data.is_empty()
    }

    /// Number of client sessions remembered.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The log time (Unix ms): the largest stamp applied.
    pub fn log_time_ms(&self) -> u64 {
        self.log_time_ms
    }

    /// The value of `key`, if stored and not expired at log time.
    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.keyspace.live(key, self.log_time_ms).map(|v| &v.bytes)
    }

    /// The expiry (Unix ms) of a stored `key`, if it has one.
    pub fn expire_at_ms(&self, key: &[u8]) -> Option<u64> {
        self.keyspace
            .data
            .get(key)
            .map(|v| v.expire_at_ms)
            .filter(|&at| at != 0)
    }

    /// All stored key-value pairs, in no particular order (for tests and tools).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Bytes)> {
        self.keyspace
            .data
            .iter()
            .map(|(key, value)| (key.as_slice(), &value.bytes))
    }

    /// An O(1) frozen view for reads on other threads.
    pub fn read_view(&self) -> KvReadView {
        KvReadView {
            keyspace: self.keyspace.clone(),
            applied_index: self.applied_index,
            log_time_ms: self.log_time_ms,
        }
    }

    /// Answers a read-only command from the current state, judged at log time.
    pub fn query_command(&self, command: &Command<'_>) -> KvResponse {
        self.keyspace
            .read(command, self.log_time_ms, self.applied_index)
    }

    /// Applies one entry; see [`StateMachine::apply`].
    fn apply_entry(&mut self, index: u64, payload: &[u8]) -> KvResponse {
        let request = match decode_request(payload, &self.limits) {
            Ok(request) => request,
            Err(error) => return KvResponse::Error(KvError::Malformed(error)),
        };
        if let Some(time_ms) = request.time_ms {
            self.log_time_ms = self.log_time_ms.max(time_ms);
        }
        let reply = self.apply_request(index, request.session, &request.command);
        if request.time_ms.is_some() {
            self.keyspace
                .remove_expired(self.log_time_ms, index, EXPIRE_PER_ENTRY);
        }
        reply
    }

    fn apply_request(
        &mut self,
        index: u64,
        session: Option<super::ClientSession>,
        command: &Command<'_>,
    ) -> KvResponse {
        let now_ms = self.log_time_ms;
        let Some(session) = session else {
            return self.keyspace.execute(command, index, now_ms, &self.limits);
        };
        match self.sessions.check(session) {
            SessionCheck::Duplicate(reply) => reply,
            SessionCheck::Stale { last_sequence } => KvResponse::Error(KvError::StaleSequence {
                client_id: session.client_id,
                sequence: session.sequence,
                last_sequence,
            }),
            SessionCheck::New(hint) => {
                let reply = self.keyspace.execute(command, index, now_ms, &self.limits);
                let record = SessionRecord {
                    last_sequence: session.sequence,
                    last_index: index,
                    reply: reply.clone(),
                };
                self.sessions
                    .record(session.client_id, record, hint, self.limits.max_sessions);
                reply
            }
        }
    }
}

impl StateMachine for KvStateMachine {
    type Response = KvResponse;

    fn apply(
        &mut self,
        entries: &[CommittedEntry<'_>],
    ) -> Result<Vec<KvResponse>, StateMachineError> {
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.index <= self.applied_index {
                return Err(StateMachineError::IndexNotIncreasing {
                    applied_index: self.applied_index,
                    got: entry.index,
                });
            }
            responses.push(self.apply_entry(entry.index, entry.payload));
            self.applied_index = entry.index;
        }
        debug_assert_eq!(responses.len(), entries.len());
        Ok(responses)
    }

    /// `request` is an encoded request (session ignored) holding a read-only command;
    /// its time stamp (the serving node's clock) is the "now" of the read, never
    /// behind the log time.
    fn query(&self, request: &[u8]) -> KvResponse {
        match decode_request(request, &self.limits) {
            Ok(request) => {
                let now_ms = self.log_time_ms.max(request.time_ms.unwrap_or(0));
                self.keyspace
                    .read(&request.command, now_ms, self.applied_index)
            }
            Err(error) => KvResponse::Error(KvError::Malformed(error)),
        }
    }

    fn applied_index(&self) -> u64 {
        self.applied_index
    }

    fn snapshot(&self) -> Box<dyn SnapshotSource> {
        Box::new(KvSnapshot {
            keyspace: self.keyspace.clone(),
            sessions: self.sessions.freeze(),
            applied_index: self.applied_index,
            log_time_ms: self.log_time_ms,
        })
    }

    /// A [`KvReadView`] (O(1): the maps are persistent).
    fn read_view(&self) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        Some(Box::new(KvStateMachine::read_view(self)))
    }

    fn restore(&mut self, input: &mut dyn Read) -> Result<u64, StateMachineError> {
        let restored = read_snapshot(input, &self.limits)?;
        let applied_index = restored.applied_index;
        *self = restored;
        Ok(applied_index)
    }
}
