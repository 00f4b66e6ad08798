//! Per-client duplicate detection (exactly-once writes), bounded by evicting the client
//! whose last request has the lowest log index (a choice every replica makes alike).
//!
//! Every write of every replica records its session, so the table is built for a cheap
//! update (the previous design, three updates of persistent ordered maps per write, was
//! about 12 % of a leader's instructions per write; callgrind, issue 15):
//! * The records live in slots of a slab, in chunks of [`CHUNK_SLOTS`] behind an `Arc`:
//!   a snapshot shares the chunks (O(sessions / 64) pointer copies, ~7 µs at 65,536
//!   sessions, where copying a hash map of the records took ~5 ms of the apply thread:
//!   `cargo bench -p tally-engine --bench sessions`), and the first write into a chunk
//!   a snapshot still holds copies that chunk.
//! * A hash map from client id to slot, hashed with foldhash randomly seeded per map
//!   (client ids come from clients: they cannot aim at one bucket), as the data map is;
//!   SipHash, std's default, was half of the table's ~420 instructions per write.
//! * The eviction order: an append-only queue of `(last_index, slot)`. Indices are
//!   recorded in increasing order, so appending keeps it sorted. A client's older
//!   entries are left behind (lazy deletion: an entry is stale once its slot's
//!   `last_index` differs, which needs no hash lookup); an eviction drops those it
//!   meets at the front, and once stale entries outnumber the live ones a compaction
//!   drops them all (one pass, order kept). Each update is O(1) amortized.
//!
//! The snapshot writer sorts the records by client id itself, off the apply thread.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::command::{ClientSession, KvResponse};

/// Stale queue entries tolerated beyond the number of live sessions before the queue is
/// compacted (16 KiB of entries): a table of a few clients, the common case, is
/// compacted once per about this many writes, not once per as many writes as it has
/// clients (with a slack of 64, compactions cost ~120 instructions per write at 50
/// clients).
pub(super) const COMPACT_SLACK: usize = 1024;

/// Slots per chunk of the slab: a write into a chunk a snapshot still shares copies
/// this many slots (about 4 KiB).
pub(super) const CHUNK_SLOTS: usize = 64;

/// What the session table knows about a client's last request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SessionRecord {
    /// Sequence number of the last request applied for this client.
    pub(super) last_sequence: u64,
    /// Log index of that request; the live entry of this client's slot in
    /// `SessionTable::order`.
    pub(super) last_index: u64,
    /// Its reply, returned again for a retry of `last_sequence`.
    pub(super) reply: KvResponse,
}

/// An occupied slot: a client and its record.
#[derive(Debug, Clone)]
struct Slot {
    client_id: u64,
    record: SessionRecord,
}

type Chunk = [Option<Slot>; CHUNK_SLOTS];

/// The slots of a session table, chunked and shared: cloning copies one pointer per
/// chunk, writing into a shared chunk copies it first (copy on write).
#[derive(Debug, Clone, Default)]
pub(super) struct SessionSlots {
    chunks: Vec<Arc<Chunk>>,
}

impl SessionSlots {
    fn get(&self, slot: u32) -> Option<&Slot> {
        let slot = slot as usize;
        self.chunks[slot / CHUNK_SLOTS][slot % CHUNK_SLOTS].as_ref()
    }

    /// The slot for writing, its chunk copied first if a snapshot shares it.
    fn get_mut(&mut self, slot: u32) -> &mut Option<Slot> {
        let slot = slot as usize;
        &mut Arc::make_mut(&mut self.chunks[slot / CHUNK_SLOTS])[slot % CHUNK_SLOTS]
    }

    fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK_SLOTS
    }

    fn occupied(&self) -> impl Iterator<Item = (u32, &Slot)> {
        self.chunks
            .iter()
            .flat_map(|chunk| chunk.iter())
            .enumerate()
            .filter_map(|(slot, content)| content.as_ref().map(|s| (slot as u32, s)))
    }

    /// Every session, sorted by client id (the snapshot stream's order).
    pub(super) fn sorted_by_client(&self) -> Vec<(u64, &SessionRecord)> {
        let mut sessions: Vec<(u64, &SessionRecord)> = self
            .occupied()
            .map(|(_, slot)| (slot.client_id, &slot.record))
            .collect();
        sessions.sort_unstable_by_key(|&(client_id, _)| client_id);
        sessions
    }
}

/// Per-client duplicate detection, bounded by evicting the client whose last request has
/// the lowest log index.
///
/// Equality is that of the sessions alone: the live queue entries are the records'
/// `(last_index, slot)` pairs in index order, so equal sessions mean the same eviction
/// order, whichever slots hold them and whatever stale entries either queue still holds.
#[derive(Debug, Clone)]
pub(super) struct SessionTable {
    /// Client id -> its slot. Invariant: `by_client[c] == s` iff slot `s` holds client
    /// `c`; no two records share a `last_index`.
    by_client: HashMap<u64, u32, foldhash::fast::RandomState>,
    /// The records. Invariant: every slot below `slots.capacity()` is either occupied
    /// (and in `by_client`) or in `free`, never both. It grows only when no slot is
    /// free, so it stays within the most sessions ever held at once (`max_sessions + 1`:
    /// a record exceeds the bound until its eviction), rounded up to a chunk.
    slots: SessionSlots,
    /// The empty slots, each once; the lowest is reused first within a new chunk.
    free: Vec<u32>,
    /// Eviction order, oldest first. Invariants: `last_index` strictly increases from
    /// front to back; an entry is live iff its slot holds a record at that
    /// `last_index`, stale otherwise; every occupied slot has exactly one live entry;
    /// `order.len() == by_client.len() + stale`.
    order: VecDeque<(u64, u32)>,
    /// Number of stale entries in `order`. Invariant (restored by every `evict_beyond`,
    /// which every `record` ends with): `stale <= by_client.len() + COMPACT_SLACK`, so
    /// the queue never exceeds twice the live sessions plus a constant.
    stale: usize,
}

impl PartialEq for SessionTable {
    fn eq(&self, other: &SessionTable) -> bool {
        self.len() == other.len()
            && self
                .by_client
                .keys()
                .all(|&client_id| self.get(client_id) == other.get(client_id))
    }
}

impl Eq for SessionTable {}

/// Where [`SessionTable::check`] found the client, handed to [`SessionTable::record`]
/// so that recording a known client needs no second hash lookup. `record` verifies it, so a hint from before another change of the
/// table is harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SlotHint(Option<u32>);

impl SlotHint {
    /// No hint: `record` looks the client up.
    pub(super) const NONE: SlotHint = SlotHint(None);
}

pub(super) enum SessionCheck {
    /// First time this sequence is seen: apply it, then record it with this hint.
    New(SlotHint),
    /// The last applied sequence again: return its reply.
    Duplicate(KvResponse),
    /// Older than the last applied sequence.
    Stale { last_sequence: u64 },
}

impl SessionTable {
    pub(super) fn new() -> Self {
        SessionTable {
            by_client: HashMap::default(),
            slots: SessionSlots::default(),
            free: Vec::new(),
            order: VecDeque::new(),
            stale: 0,
        }
    }

    /// A table holding `records` (clients unique, `last_index`es unique, in any order),
    /// then bounded to `max_sessions` exactly as recording them in log order would.
    pub(super) fn from_records(
        records: impl IntoIterator<Item = (u64, SessionRecord)>,
        max_sessions: usize,
    ) -> Self {
        let mut table = SessionTable::new();
        for (client_id, record) in records {
            debug_assert!(!table.by_client.contains_key(&client_id));
            let slot = allocate(&mut table.free, &mut table.slots);
            *table.slots.get_mut(slot) = Some(Slot { client_id, record });
            table.by_client.insert(client_id, slot);
        }
        table.rebuild_order();
        table.evict_beyond(max_sessions);
        table
    }

    /// Number of sessions remembered.
    pub(super) fn len(&self) -> usize {
        self.by_client.len()
    }

    /// The record of `client_id`, if it has a session.
    fn get(&self, client_id: u64) -> Option<&SessionRecord> {
        self.find(client_id).map(|(_, record)| record)
    }

    fn find(&self, client_id: u64) -> Option<(u32, &SessionRecord)> {
        let &slot = self.by_client.get(&client_id)?;
        self.slots.get(slot).map(|content| (slot, &content.record))
    }

    /// True when `client_id` has a session.
    #[cfg(test)]
    pub(super) fn contains(&self, client_id: u64) -> bool {
        self.by_client.contains_key(&client_id)
    }

    /// Entries in the eviction queue, stale ones included (for tests of its bound).
    #[cfg(test)]
    pub(super) fn queue_len(&self) -> usize {
        self.order.len()
    }

    /// Slots allocated, free ones included (for tests of their bound).
    #[cfg(test)]
    pub(super) fn slot_capacity(&self) -> usize {
        self.slots.capacity()
    }

    /// A frozen view of the records for a snapshot writer: O(sessions / CHUNK_SLOTS).
    pub(super) fn freeze(&self) -> SessionSlots {
        self.slots.clone()
    }

    pub(super) fn check(&self, session: ClientSession) -> SessionCheck {
        match self.find(session.client_id) {
            None => SessionCheck::New(SlotHint::NONE),
            Some((slot, record)) if session.sequence > record.last_sequence => {
                SessionCheck::New(SlotHint(Some(slot)))
            }
            Some((_, record)) if session.sequence == record.last_sequence => {
                SessionCheck::Duplicate(record.reply.clone())
            }
            Some((_, record)) => SessionCheck::Stale {
                last_sequence: record.last_sequence,
            },
        }
    }

    /// Records `client_id`'s latest request, then evicts down to `max_sessions`. `hint`
    /// is what `check` said of this client ([`SlotHint::NONE`] for none).
    ///
    /// Panics when `record.last_index` is not above every index recorded before (the
    /// state machine applies entries in increasing index order; a restore sorts).
    pub(super) fn record(
        &mut self,
        client_id: u64,
        record: SessionRecord,
        hint: SlotHint,
        max_sessions: usize,
    ) {
        let last_index = record.last_index;
        if let Some(&(newest, _)) = self.order.back() {
            assert!(
                newest < last_index,
                "session recorded at log index {last_index} after one at {newest}"
            );
        }
        let slot = match hint.0 {
            // A slot holding the client is its slot (`by_client` agrees).
            Some(slot)
                if self
                    .slots
                    .get(slot)
                    .is_some_and(|s| s.client_id == client_id) =>
            {
                self.stale += 1;
                slot
            }
            _ => self.slot_for(client_id),
        };
        *self.slots.get_mut(slot) = Some(Slot { client_id, record });
        self.order.push_back((last_index, slot));
        self.evict_beyond(max_sessions);
    }

    /// The slot of `client_id`, found with one hash lookup, or a free one now given to
    /// it. A client already present has a queue entry that is stale from now on.
    fn slot_for(&mut self, client_id: u64) -> u32 {
        match self.by_client.entry(client_id) {
            Entry::Occupied(entry) => {
                self.stale += 1;
                *entry.get()
            }
            Entry::Vacant(entry) => *entry.insert(allocate(&mut self.free, &mut self.slots)),
        }
    }

    /// Evicts the clients whose last request has the lowest log index until at most
    /// `max_sessions` remain (dropping the stale entries met on the way), then compacts
    /// the queue if stale entries outnumber the live ones by more than `COMPACT_SLACK`.
    pub(super) fn evict_beyond(&mut self, max_sessions: usize) {
        while self.by_client.len() > max_sessions {
            let Some((index, slot)) = self.order.pop_front() else {
                break;
            };
            let live_client = self
                .slots
                .get(slot)
                .filter(|live| live.record.last_index == index)
                .map(|live| live.client_id);
            match live_client {
                Some(client_id) => {
                    self.by_client.remove(&client_id);
                    *self.slots.get_mut(slot) = None;
                    self.free.push(slot);
                }
                None => self.stale -= 1,
            }
        }
        if self.stale > self.by_client.len() + COMPACT_SLACK {
            self.compact();
        }
        debug_assert_eq!(self.order.len(), self.by_client.len() + self.stale);
    }

    /// Drops every stale entry, keeping the order: one pass over the queue (no hashing:
    /// staleness is read from the slot), run once stale entries outnumber the live ones
    /// by `COMPACT_SLACK`, so O(1) amortized per request.
    fn compact(&mut self) {
        let slots = &self.slots;
        self.order.retain(|&(index, slot)| {
            slots
                .get(slot)
                .is_some_and(|live| live.record.last_index == index)
        });
        self.stale = 0;
        debug_assert_eq!(self.order.len(), self.by_client.len());
    }

    /// Builds the queue from the slots alone (their `(last_index, slot)` pairs, sorted):
    /// for a table whose records arrived out of log order (a restore).
    fn rebuild_order(&mut self) {
        self.order.clear();
        self.order.extend(
            self.slots
                .occupied()
                .map(|(slot, content)| (content.record.last_index, slot)),
        );
        self.order.make_contiguous().sort_unstable();
        self.stale = 0;
        debug_assert!(self
            .order
            .iter()
            .zip(self.order.iter().skip(1))
            .all(|(a, b)| a.0 < b.0));
    }

    /// The records in eviction order, oldest first: the live queue entries (tests compare
    /// them with a model of the ordered-map design).
    #[cfg(test)]
    pub(super) fn in_eviction_order(&self) -> Vec<(u64, SessionRecord)> {
        self.order
            .iter()
            .filter_map(|&(index, slot)| {
                self.slots
                    .get(slot)
                    .filter(|live| live.record.last_index == index)
                    .map(|live| (live.client_id, live.record.clone()))
            })
            .collect()
    }
}

/// An empty slot, taken from `free` (a new chunk's slots join it when none is left).
///
/// Panics past 2^32 slots (`max_sessions` beyond 4 billion, hundreds of GiB of records).
fn allocate(free: &mut Vec<u32>, slots: &mut SessionSlots) -> u32 {
    if let Some(slot) = free.pop() {
        return slot;
    }
    let first = u32::try_from(slots.capacity()).expect("fewer than 2^32 session slots");
    let last = first
        .checked_add(CHUNK_SLOTS as u32 - 1)
        .expect("fewer than 2^32 session slots");
    slots.chunks.push(Arc::new(std::array::from_fn(|_| None)));
    free.extend((first + 1..=last).rev());
    first
}
