//! Per-client duplicate detection (exactly-once writes), bounded by evicting the client
//! whose last request has the lowest log index (a choice every replica makes alike).
//!
//! Every write of every replica records its session, so the table is built for a cheap
//! update: a hash map from client id to its last request (keyed hasher: client ids come
//! from clients), and the eviction order as an append-only queue of
//! `(last_index, client)`. Indices are recorded in increasing order, so appending keeps
//! the queue sorted. A client's older entries are left behind (lazy deletion: an entry
//! is stale once the client's `last_index` differs); an eviction drops those it meets
//! at the front, and once stale entries outnumber the live ones the queue is rebuilt
//! from the records. Each update is O(1) amortized plus a few comparisons for the
//! rebuild's sort; the previous design (three updates of persistent ordered maps per
//! write) was about 12 % of a leader's instructions per write (callgrind, issue 15).
//!
//! A snapshot needs only the records, frozen: [`SessionTable::freeze`] copies the map
//! (O(sessions), bounded by `max_sessions`), and the writer sorts it by client id off
//! the apply thread.

use std::collections::{HashMap, VecDeque};

use super::command::{ClientSession, KvResponse};

/// Stale queue entries tolerated beyond the number of live sessions before the queue is
/// compacted (so that a table of a few clients is not compacted on every write).
pub(super) const COMPACT_SLACK: usize = 64;

/// What the session table knows about a client's last request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SessionRecord {
    /// Sequence number of the last request applied for this client.
    pub(super) last_sequence: u64,
    /// Log index of that request; this client's live entry in `SessionTable::order`.
    pub(super) last_index: u64,
    /// Its reply, returned again for a retry of `last_sequence`.
    pub(super) reply: KvResponse,
}

/// The records of a session table, keyed by client id (std's SipHash with a random
/// key: iteration order differs between processes, so whoever needs an order sorts).
pub(super) type SessionRecords = HashMap<u64, SessionRecord>;

/// Per-client duplicate detection, bounded by evicting the client whose last request has
/// the lowest log index.
///
/// Equality is that of the records alone: the live queue entries are the records'
/// `(last_index, client)` pairs in index order, so equal records mean the same eviction
/// order, whatever stale entries either queue still holds.
#[derive(Debug, Clone)]
pub(super) struct SessionTable {
    /// Client id -> its last request. Invariant: no two records share a `last_index`;
    /// every `(client, r)` has exactly one live entry `(r.last_index, client)` in
    /// `order`.
    by_client: SessionRecords,
    /// Eviction order, oldest first. Invariants: `last_index` strictly increases from
    /// front to back; an entry is live iff `by_client[client].last_index == last_index`,
    /// stale otherwise; `order.len() == by_client.len() + stale`.
    order: VecDeque<(u64, u64)>,
    /// Number of stale entries in `order`. Invariant (restored by every `evict_beyond`,
    /// which every `record` ends with): `stale <= by_client.len() + COMPACT_SLACK`, so
    /// the queue never exceeds twice the live sessions plus a constant.
    stale: usize,
}

impl PartialEq for SessionTable {
    fn eq(&self, other: &SessionTable) -> bool {
        self.by_client == other.by_client
    }
}

impl Eq for SessionTable {}

pub(super) enum SessionCheck {
    /// First time this sequence is seen: apply it.
    New,
    /// The last applied sequence again: return its reply.
    Duplicate(KvResponse),
    /// Older than the last applied sequence.
    Stale { last_sequence: u64 },
}

impl SessionTable {
    pub(super) fn new() -> Self {
        SessionTable {
            by_client: SessionRecords::default(),
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
        let mut table = SessionTable {
            by_client: records.into_iter().collect(),
            order: VecDeque::new(),
            stale: 0,
        };
        table.rebuild_order();
        table.evict_beyond(max_sessions);
        table
    }

    /// Number of sessions remembered.
    pub(super) fn len(&self) -> usize {
        self.by_client.len()
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

    /// A frozen copy of the records for a snapshot writer: O(sessions).
    pub(super) fn freeze(&self) -> SessionRecords {
        self.by_client.clone()
    }

    pub(super) fn check(&self, session: ClientSession) -> SessionCheck {
        match self.by_client.get(&session.client_id) {
            None => SessionCheck::New,
            Some(record) if session.sequence > record.last_sequence => SessionCheck::New,
            Some(record) if session.sequence == record.last_sequence => {
                SessionCheck::Duplicate(record.reply.clone())
            }
            Some(record) => SessionCheck::Stale {
                last_sequence: record.last_sequence,
            },
        }
    }

    /// Records `client_id`'s latest request, then evicts down to `max_sessions`.
    ///
    /// Panics when `record.last_index` is not above every index recorded before (the
    /// state machine applies entries in increasing index order; a restore sorts).
    pub(super) fn record(&mut self, client_id: u64, record: SessionRecord, max_sessions: usize) {
        let last_index = record.last_index;
        if let Some(&(newest, _)) = self.order.back() {
            assert!(
                newest < last_index,
                "session recorded at log index {last_index} after one at {newest}"
            );
        }
        if self.by_client.insert(client_id, record).is_some() {
            self.stale += 1;
        }
        self.order.push_back((last_index, client_id));
        self.evict_beyond(max_sessions);
    }

    /// Evicts the clients whose last request has the lowest log index until at most
    /// `max_sessions` remain (dropping the stale entries met on the way), then compacts
    /// the queue if stale entries outnumber the live ones by more than `COMPACT_SLACK`.
    pub(super) fn evict_beyond(&mut self, max_sessions: usize) {
        while self.by_client.len() > max_sessions {
            let Some((index, client)) = self.order.pop_front() else {
                break;
            };
            if self.is_live(index, client) {
                self.by_client.remove(&client);
            } else {
                self.stale -= 1;
            }
        }
        if self.stale > self.by_client.len() + COMPACT_SLACK {
            self.rebuild_order();
        }
        debug_assert_eq!(self.order.len(), self.by_client.len() + self.stale);
    }

    fn is_live(&self, index: u64, client: u64) -> bool {
        self.by_client
            .get(&client)
            .is_some_and(|record| record.last_index == index)
    }

    /// Rebuilds the queue from the records alone (their `(last_index, client)` pairs,
    /// sorted), dropping every stale entry without a lookup: O(n log n) in the live
    /// sessions, run once stale entries outnumber them by `COMPACT_SLACK`, so O(log n)
    /// amortized per recorded request (a few comparisons).
    fn rebuild_order(&mut self) {
        self.order.clear();
        self.order.extend(
            self.by_client
                .iter()
                .map(|(&client, record)| (record.last_index, client)),
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
            .filter(|&&(index, client)| self.is_live(index, client))
            .map(|&(_, client)| (client, self.by_client[&client].clone()))
            .collect()
    }
}
