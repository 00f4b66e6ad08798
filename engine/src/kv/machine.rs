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
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use super::codec::{decode_request, KvDecodeError};
use super::command::{Command, KvError, KvLimits, KvResponse, Request};
use super::keyspace::Keyspace;
use super::session::{SessionCheck, SessionRecord, SessionTable};
use super::snapshot::{read_snapshot, KvSnapshot};
use crate::state_machine::{CommittedEntry, SnapshotSource, StateMachine, StateMachineError};

/// The data map: see the module docs for why it is hashed and sharded.
pub(super) use super::data_map::DataMap;
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

/// Entries applied under one hold of the write lock: readers on other threads wait at
/// most this many entries' apply, and the lock is taken once per this many.
const ENTRIES_PER_LOCK: usize = 64;

/// What reads see: the keyspace with the applied index and log time it reflects, always
/// changed together under [`KvStateMachine::live`]'s lock, between entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct LiveState {
    pub(super) keyspace: Keyspace,
    /// Index of the last applied entry; 0 before any.
    pub(super) applied_index: u64,
    /// Log time: the largest time stamp of any applied entry (Unix ms; 0 before any).
    /// Invariant: never decreases.
    pub(super) log_time_ms: u64,
}

impl LiveState {
    /// Answers a read-only command judged at `max(log time, now_ms)`.
    fn read(&self, command: &Command<'_>, now_ms: u64) -> KvResponse {
        self.keyspace
            .read(command, self.log_time_ms.max(now_ms), self.applied_index)
    }
}

/// The replicated KV store: data, expiry, client sessions, log time, applied index.
///
/// The data lives behind a lock shared with the [`KvReadView`]s, so client threads read
/// the live map (never a stale copy) while the apply thread writes it between reads.
pub struct KvStateMachine {
    /// Written only by `apply` and `restore` (the apply thread); read by views.
    pub(super) live: Arc<RwLock<LiveState>>,
    pub(super) sessions: SessionTable,
    limits: KvLimits,
    /// [`StateMachine::read_view`] hands out frozen copies instead of live handles
    /// (see [`KvStateMachine::freeze_read_views`]).
    frozen_views: bool,
}

impl Clone for KvStateMachine {
    /// An independent copy (the data shards are shared copy-on-write, not the lock).
    fn clone(&self) -> Self {
        KvStateMachine {
            live: Arc::new(RwLock::new(self.live.read_recursive().clone())),
            sessions: self.sessions.clone(),
            limits: self.limits,
            frozen_views: self.frozen_views,
        }
    }
}

impl PartialEq for KvStateMachine {
    fn eq(&self, other: &KvStateMachine) -> bool {
        *self.live.read_recursive() == *other.live.read_recursive()
            && self.sessions == other.sessions
            && self.limits == other.limits
    }
}

impl Eq for KvStateMachine {}

impl std::fmt::Debug for KvStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStateMachine")
            .field("live", &*self.live.read_recursive())
            .field("sessions", &self.sessions)
            .field("limits", &self.limits)
            .finish()
    }
}

/// A handle for serving reads on other threads: it reads the live state under a read
/// lock, so what it answers reflects at least every entry applied when it was made.
/// Its reads take the lock fairly (`read`, not `read_recursive`): a steady stream of
/// reads from client threads cannot keep the apply thread from writing.
#[derive(Debug, Clone)]
pub struct KvReadView {
    live: Arc<RwLock<LiveState>>,
}

impl KvReadView {
    /// The index of the last entry applied (the view follows the live state).
    pub fn applied_index(&self) -> u64 {
        self.live.read().applied_index
    }

    /// Answers a read-only command judged at `max(log time, now_ms)`; write commands
    /// get [`KvError::NotReadOnly`].
    /// A command that walks the whole keyspace (KEYS, SCAN) runs on a frozen copy taken
    /// under the lock (one reference count per shard), so it never holds the apply
    /// thread up for O(keys).
    pub fn query(&self, command: &Command<'_>, now_ms: u64) -> KvResponse {
        let live = self.live.read();
        if matches!(command, Command::Keys { .. } | Command::Scan { .. }) {
            let frozen = live.clone();
            drop(live);
            return frozen.read(command, now_ms);
        }
        live.read(command, now_ms)
    }

    /// `GET key` answered in place: `reply` gets the live value (`None`: missing or
    /// expired), judged as [`KvReadView::query`] judges it, while the read lock is held,
    /// so the value is neither copied nor shared (a shared value costs two atomic
    /// reference count updates on a line the apply thread writes).
    pub fn get_with<T>(
        &self,
        key: &[u8],
        now_ms: u64,
        reply: impl FnOnce(Option<&[u8]>) -> T,
    ) -> T {
        let live = self.live.read();
        let now_ms = live.log_time_ms.max(now_ms);
        reply(
            live.keyspace
                .live(key, now_ms)
                .map(|value| &value.bytes[..]),
        )
    }

    /// Looks up `keys` under one read lock, loading their buckets and values into the
    /// cache, so that the reads of them that follow (a client's pipelined GETs) find
    /// them there: looked up one after another their cache misses overlap, where each
    /// read alone waits for its own. Answers nothing and changes nothing.
    pub fn warm_for_reads<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) {
        let live = self.live.read();
        for key in keys {
            live.keyspace.warm_for_read(key);
        }
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
            live: Arc::new(RwLock::new(LiveState::default())),
            sessions: SessionTable::new(),
            limits,
            frozen_views: false,
        }
    }

    /// The limits this store was built with.
    pub fn limits(&self) -> &KvLimits {
        &self.limits
    }

    /// Number of keys stored (expired ones not yet removed included).
    pub fn len(&self) -> usize {
        self.live.read_recursive().keyspace.data.len()
    }

    /// True when no key is stored.
    pub fn is_empty(&self) -> bool {
        self.live.read_recursive().keyspace.data.is_empty()
    }

    /// Number of client sessions remembered.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The log time (Unix ms): the largest stamp applied.
    pub fn log_time_ms(&self) -> u64 {
        self.live.read_recursive().log_time_ms
    }

    /// The value of `key`, if stored and not expired at log time.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        let live = self.live.read_recursive();
        live.keyspace
            .live(key, live.log_time_ms)
            .map(|v| v.bytes.clone())
    }

    /// The expiry (Unix ms) of a stored `key`, if it has one.
    pub fn expire_at_ms(&self, key: &[u8]) -> Option<u64> {
        self.live
            .read_recursive()
            .keyspace
            .data
            .get(key)
            .map(|v| v.expire_at_ms)
            .filter(|&at| at != 0)
    }

    /// All stored key-value pairs, in no particular order (for tests and tools: a copy
    /// of the whole map).
    pub fn pairs(&self) -> Vec<(Bytes, Bytes)> {
        self.live
            .read_recursive()
            .keyspace
            .data
            .iter()
            .map(|(key, value)| (Bytes::copy_from_slice(key.as_slice()), value.bytes.clone()))
            .collect()
    }

    /// A handle for reads on other threads (O(1): it shares the live state's lock).
    pub fn read_view(&self) -> KvReadView {
        KvReadView {
            live: Arc::clone(&self.live),
        }
    }

    /// A view frozen at the current state: later entries do not change what it reads.
    /// It costs one reference count per shard, and the next write to each shard copies
    /// that shard.
    pub fn frozen_read_view(&self) -> KvReadView {
        KvReadView {
            live: Arc::new(RwLock::new(self.live.read_recursive().clone())),
        }
    }

    /// From now on, [`StateMachine::read_view`] hands out [`frozen_read_view`]s: reads
    /// served from a published view then lag the state until the next one is published
    /// (for the simulator's check that a view behind the commit index never serves, and
    /// for embedders that want point-in-time views).
    ///
    /// [`frozen_read_view`]: KvStateMachine::frozen_read_view
    pub fn freeze_read_views(&mut self) {
        self.frozen_views = true;
    }

    /// Answers a read-only command from the current state, judged at log time.
    pub fn query_command(&self, command: &Command<'_>) -> KvResponse {
        self.live.read_recursive().read(command, 0)
    }
}

/// The apply path, over the live state (its write lock held) and the session table.
struct Applying<'a> {
    live: &'a mut LiveState,
    sessions: &'a mut SessionTable,
    limits: &'a KvLimits,
}

impl Applying<'_> {
    /// Applies one decoded entry; see [`StateMachine::apply`].
    fn apply_entry(
        &mut self,
        index: u64,
        decoded: Result<Request<'_>, KvDecodeError>,
    ) -> KvResponse {
        let request = match decoded {
            Ok(request) => request,
            Err(error) => return KvResponse::Error(KvError::Malformed(error)),
        };
        if let Some(time_ms) = request.time_ms {
            self.live.log_time_ms = self.live.log_time_ms.max(time_ms);
        }
        let reply = self.apply_request(index, request.session, &request.command);
        if request.time_ms.is_some() {
            self.live
                .keyspace
                .remove_expired(self.live.log_time_ms, index, EXPIRE_PER_ENTRY);
        }
        reply
    }

    fn apply_request(
        &mut self,
        index: u64,
        session: Option<super::ClientSession>,
        command: &Command<'_>,
    ) -> KvResponse {
        let now_ms = self.live.log_time_ms;
        let Some(session) = session else {
            return self
                .live
                .keyspace
                .execute(command, index, now_ms, self.limits);
        };
        match self.sessions.check(session) {
            SessionCheck::Duplicate(reply) => reply,
            SessionCheck::Stale { last_sequence } => KvResponse::Error(KvError::StaleSequence {
                client_id: session.client_id,
                sequence: session.sequence,
                last_sequence,
            }),
            SessionCheck::New(hint) => {
                let reply = self
                    .live
                    .keyspace
                    .execute(command, index, now_ms, self.limits);
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
        let mut decoded = Vec::with_capacity(entries.len().min(ENTRIES_PER_LOCK));
        for chunk in entries.chunks(ENTRIES_PER_LOCK) {
            // Decoded before the lock is taken; then every key the chunk names is looked
            // up once, so that their cache misses overlap (`Keyspace::warm`), before
            // the entries are applied one by one in log order.
            decoded.extend(
                chunk
                    .iter()
                    .map(|entry| decode_request(entry.payload, &self.limits)),
            );
            let mut live = self.live.write();
            for request in decoded.iter().flatten() {
                if let Some(key) = request.command.first_key() {
                    live.keyspace.warm(key);
                }
            }
            let mut applying = Applying {
                live: &mut live,
                sessions: &mut self.sessions,
                limits: &self.limits,
            };
            for (entry, request) in chunk.iter().zip(decoded.drain(..)) {
                if entry.index <= applying.live.applied_index {
                    return Err(StateMachineError::IndexNotIncreasing {
                        applied_index: applying.live.applied_index,
                        got: entry.index,
                    });
                }
                responses.push(applying.apply_entry(entry.index, request));
                applying.live.applied_index = entry.index;
            }
        }
        debug_assert_eq!(responses.len(), entries.len());
        Ok(responses)
    }

    /// `request` is an encoded request (session ignored) holding a read-only command;
    /// its time stamp (the serving node's clock) is the "now" of the read, never
    /// behind the log time.
    fn query(&self, request: &[u8]) -> KvResponse {
        match decode_request(request, &self.limits) {
            Ok(request) => self
                .live
                .read_recursive()
                .read(&request.command, request.time_ms.unwrap_or(0)),
            Err(error) => KvResponse::Error(KvError::Malformed(error)),
        }
    }

    fn applied_index(&self) -> u64 {
        self.live.read_recursive().applied_index
    }

    fn snapshot(&self) -> Box<dyn SnapshotSource> {
        let live = self.live.read_recursive();
        Box::new(KvSnapshot {
            keyspace: live.keyspace.clone(),
            sessions: self.sessions.freeze(),
            applied_index: live.applied_index,
            log_time_ms: live.log_time_ms,
        })
    }

    /// A [`KvReadView`] (O(1): it shares the live state's lock; a frozen copy after
    /// [`KvStateMachine::freeze_read_views`]).
    fn read_view(&self) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        if self.frozen_views {
            Some(Box::new(self.frozen_read_view()))
        } else {
            Some(Box::new(KvStateMachine::read_view(self)))
        }
    }

    fn restore(&mut self, input: &mut dyn Read) -> Result<u64, StateMachineError> {
        let restored = read_snapshot(input, &self.limits)?;
        let KvStateMachine { live, sessions, .. } = restored;
        let restored_live = std::mem::take(&mut *live.write());
        let applied_index = restored_live.applied_index;
        // The same lock: views handed out before the restore read the restored state.
        *self.live.write() = restored_live;
        self.sessions = sessions;
        Ok(applied_index)
    }
}
