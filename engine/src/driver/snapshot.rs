//! The driver's side of snapshots: when to take one, what to do once one is durable
//! (tell the core, compact the log in memory and on disk, keep the newest files), and
//! how a snapshot received from the leader in chunks becomes a durable file.
//!
//! Why here: taking a snapshot must not cost the hot path anything. The state machine
//! hands over a frozen view on its own thread (for the KV store, one reference count per
//! copy-on-write shard), a background writer streams it into a file, and only the file's
//! completion comes back to the driver, which then compacts. Neither the raft thread nor
//! the apply thread waits for snapshot I/O. The same code runs under the simulator,
//! whose disk loses unsynced snapshot bytes on a crash exactly like WAL bytes.

use bytes::Bytes;
use tally_wal::{SnapshotHeader, SnapshotInfo, SnapshotReceiver, SnapshotStore, Storage};

use crate::raft::{Configuration, SnapshotMeta};

use super::ClientError;

/// When a node takes a snapshot and how much log it keeps after one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Take a snapshot once this many entries were applied since the last one
    /// (`--snapshot-log-entries`; 0 turns the entry trigger off).
    pub log_entries: u64,
    /// Or once this many payload bytes were applied since the last one
    /// (`--snapshot-log-bytes`; 0 turns the byte trigger off).
    pub log_bytes: u64,
    /// Entries kept below a snapshot in memory and in the WAL, so a follower that is
    /// only a little behind catches up from the log (`--log-retain-entries`).
    pub retain_entries: u64,
    /// Snapshot files kept (the newest ones); at least 1.
    pub keep_files: usize,
}

impl Default for SnapshotPolicy {
    /// 250,000 entries or 256 MiB of payload since the last snapshot, 10,000 entries
    /// retained, two files kept (see docs/BENCHMARKS.md for the measurement).
    fn default() -> Self {
        SnapshotPolicy {
            log_entries: 250_000,
            log_bytes: 256 << 20,
            retain_entries: 10_000,
            keep_files: 2,
        }
    }
}

impl SnapshotPolicy {
    /// No automatic snapshots (the log grows until `snapshot_now`).
    pub fn manual_only() -> SnapshotPolicy {
        SnapshotPolicy {
            log_entries: 0,
            log_bytes: 0,
            ..SnapshotPolicy::default()
        }
    }
}

/// A snapshot file the background writer finished (durable and renamed into place).
#[derive(Clone, Debug)]
pub struct WrittenSnapshot {
    /// What the file covers (index, term, configuration).
    pub meta: SnapshotMeta,
    /// Where the file is and how large it is.
    pub info: SnapshotInfo,
    /// CRC-32 of the whole file (`SnapshotWriter::finish_with_file_crc32`), so the raft
    /// thread need not read it to offer it to the core.
    pub file_crc32: u32,
}

/// What `snapshot_now` answers once a snapshot covering the request is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotTaken {
    /// Index the snapshot covers (at least the applied index when it was requested).
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
    /// The file name inside the node directory.
    pub name: String,
    /// The file's path (the node directory joined with `name`).
    pub path: String,
    /// The file's size, in bytes.
    pub size_bytes: u64,
}

/// Called once with the outcome of a `snapshot_now` request (on the raft thread: it
/// must not block).
pub type SnapshotDone = Box<dyn FnOnce(Result<SnapshotTaken, ClientError>) + Send>;

/// The snapshot header for `meta`.
pub fn snapshot_header(meta: &SnapshotMeta) -> SnapshotHeader {
    SnapshotHeader {
        index: meta.index,
        term: meta.term,
        configuration: meta.configuration.encode(),
    }
}

/// The meta a snapshot file's header describes.
pub fn meta_from_header(header: &SnapshotHeader) -> Result<SnapshotMeta, String> {
    let configuration = Configuration::decode(&header.configuration)
        .map_err(|error| format!("the configuration in the snapshot header: {error}"))?;
    Ok(SnapshotMeta {
        index: header.index,
        term: header.term,
        configuration,
    })
}

/// Counters of a node's snapshots (INFO raft).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Index and term of the newest durable snapshot (0 when none).
    pub snapshot_index: u64,
    /// Term of the entry at `snapshot_index` (0 when none).
    pub snapshot_term: u64,
    /// Its file size.
    pub snapshot_bytes: u64,
    /// Snapshots this node wrote itself.
    pub snapshots_taken: u64,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: u64,
}

/// The driver's snapshot bookkeeping.
pub(crate) struct SnapshotState<S: Storage> {
    pub(crate) store: SnapshotStore<S>,
    pub(crate) policy: SnapshotPolicy,
    /// A snapshot being received from the leader (chunks appended so far).
    pub(crate) receiver: Option<SnapshotReceiver<S>>,
    /// A received snapshot installed durably, waiting for the core's restore request.
    pub(crate) pending_install: Option<(SnapshotMeta, SnapshotInfo)>,
    /// A snapshot was asked of the state machine and its file is not durable yet.
    pub(crate) in_progress: bool,
    /// Index and term of the last entry handed out for applying.
    pub(crate) handed_out: (u64, u64),
    /// Payload bytes handed out since the last snapshot was asked for.
    pub(crate) bytes_since: u64,
    /// `snapshot_now` callers, each with the lowest index that answers it.
    pub(crate) waiters: Vec<(u64, SnapshotDone)>,
    /// A `snapshot_now` is waiting for the next request to the state machine.
    pub(crate) forced: bool,
    pub(crate) stats: SnapshotStats,
    /// The newest durable snapshot, answering a `snapshot_now` it already covers (no
    /// new one is taken when nothing was applied since).
    pub(crate) newest: Option<SnapshotTaken>,
}

impl<S: Storage> SnapshotState<S> {
    pub(crate) fn new(store: SnapshotStore<S>, policy: SnapshotPolicy) -> SnapshotState<S> {
        SnapshotState {
            store,
            policy,
            receiver: None,
            pending_install: None,
            in_progress: false,
            handed_out: (0, 0),
            bytes_since: 0,
            waiters: Vec::new(),
            forced: false,
            stats: SnapshotStats::default(),
            newest: None,
        }
    }

    /// The durable snapshot that already covers index `covers`, if any.
    pub(crate) fn covering(&self, covers: u64) -> Option<SnapshotTaken> {
        self.newest.clone().filter(|taken| taken.index >= covers)
    }

    /// Whether the policy (or a waiting `snapshot_now`) asks for a snapshot now.
    pub(crate) fn due(&self) -> bool {
        if self.in_progress || self.handed_out.0 <= self.stats.snapshot_index {
            return false;
        }
        let entries_since = self.handed_out.0 - self.stats.snapshot_index;
        self.forced
            || (self.policy.log_entries > 0 && entries_since >= self.policy.log_entries)
            || (self.policy.log_bytes > 0 && self.bytes_since >= self.policy.log_bytes)
    }

    /// Records the newest durable snapshot and answers the waiters it covers.
    pub(crate) fn note_durable(&mut self, meta: &SnapshotMeta, info: &SnapshotInfo) {
        if meta.index >= self.stats.snapshot_index {
            self.stats.snapshot_index = meta.index;
            self.stats.snapshot_term = meta.term;
            self.stats.snapshot_bytes = info.size_bytes;
        }
        let taken = SnapshotTaken {
            index: meta.index,
            term: meta.term,
            name: info.name.clone(),
            path: std::path::Path::new(&self.store.describe())
                .join(&info.name)
                .display()
                .to_string(),
            size_bytes: info.size_bytes,
        };
        if self
            .newest
            .as_ref()
            .is_none_or(|newest| newest.index <= meta.index)
        {
            self.newest = Some(taken.clone());
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(min_index, _)| *min_index <= meta.index);
        self.waiters = waiting;
        for (_, done) in ready {
            done(Ok(taken.clone()));
        }
    }

    /// The file bytes of a durable snapshot, for the core to send in chunks.
    pub(crate) fn file_bytes(
        &self,
        info: &SnapshotInfo,
    ) -> Result<Bytes, tally_wal::SnapshotError> {
        self.store.file_bytes(&info.name)
    }
}
