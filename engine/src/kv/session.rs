//! Per-client duplicate detection (exactly-once writes), bounded by evicting the client
//! whose last request has the lowest log index (a choice every replica makes alike).

use imbl::OrdMap;

use super::command::{ClientSession, KvResponse};

/// What the session table knows about a client's last request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SessionRecord {
    /// Sequence number of the last request applied for this client.
    pub(super) last_sequence: u64,
    /// Log index of that request; key of this client in `SessionTable::by_last_index`.
    pub(super) last_index: u64,
    /// Its reply, returned again for a retry of `last_sequence`.
    pub(super) reply: KvResponse,
}

/// Per-client duplicate detection, bounded by evicting the client whose last request has
/// the lowest log index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SessionTable {
    /// Invariant: `by_client` and `by_last_index` hold the same clients:
    /// `by_last_index[r.last_index] == client` for every `(client, r)` in `by_client`.
    pub(super) by_client: OrdMap<u64, SessionRecord>,
    /// Eviction order: last log index -> client id.
    pub(super) by_last_index: OrdMap<u64, u64>,
}

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
            by_client: OrdMap::new(),
            by_last_index: OrdMap::new(),
        }
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

    pub(super) fn record(&mut self, client_id: u64, record: SessionRecord, max_sessions: usize) {
        let last_index = record.last_index;
        if let Some(old) = self.by_client.insert(client_id, record) {
            let removed = self.by_last_index.remove(&old.last_index);
            debug_assert_eq!(removed, Some(client_id));
        }
        let previous = self.by_last_index.insert(last_index, client_id);
        assert!(
            previous.is_none(),
            "two sessions recorded at log index {last_index}"
        );
        self.evict_beyond(max_sessions);
    }

    pub(super) fn evict_beyond(&mut self, max_sessions: usize) {
        while self.by_client.len() > max_sessions {
            let Some((index, client)) = self.by_last_index.get_min().map(|(i, c)| (*i, *c)) else {
                break;
            };
            self.by_last_index.remove(&index);
            self.by_client.remove(&client);
        }
        debug_assert_eq!(self.by_client.len(), self.by_last_index.len());
    }
}
