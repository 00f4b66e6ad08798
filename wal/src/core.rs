//! The synchronous WAL core: recovery, the in-memory index, append / truncate /
//! compact / hard state, and the separated `write` (hand bytes to storage) and `sync`
//! (make them durable) steps.
//!
//! It owns no threads and reads no clocks, so the deterministic Raft simulator drives it
//! directly over [`SimStorage`](crate::storage::SimStorage); the group-commit [`Wal`](crate::Wal)
//! is a layer on top.
//!
//! Mutations are *staged*: encoded as records into one pending batch body and applied to
//! the in-memory index at once (so reads see them), then framed as one batch by `write`.
//! Replaying the same records is exactly what recovery does, so the in-memory state and
//! the recovered state come from one function ([`LogState::apply`]).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::backend::{BackendError, IoBackend};
use crate::error::{PoisonCause, Result, WalError};
use crate::format::{
    self, BatchHeader, BatchProbe, HardState, Record, BATCH_HEADER_LEN, BATCH_MAGIC,
    BATCH_TRAILER_LEN, ENTRY_RECORD_HEADER_LEN, FORMAT_VERSION, HARD_STATE_RECORD_LEN,
    INDEX_RECORD_LEN, SEGMENT_HEADER_LEN,
};
use crate::storage::{FileView, Storage, StorageFile};

/// A log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log (1-based, contiguous).
    pub index: u64,
    /// Raft term; never decreases along the log.
    pub term: u64,
    /// Application-defined entry kind (all values are valid).
    pub kind: u8,
    /// Opaque payload.
    pub payload: Bytes,
}

/// Options of a WAL.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Size of each segment file, preallocated on creation.
    pub segment_size_bytes: u64,
    /// Largest accepted entry payload.
    pub max_entry_size_bytes: u64,
    /// Preallocate segments with `fallocate` (recommended: steady-state `fdatasync`
    /// then has no metadata to write).
    pub preallocate: bool,
    /// Write zeros over each new segment before using it. On ext4/xfs an fallocated
    /// extent is "unwritten", and the first write into it makes the next fdatasync commit
    /// metadata (the extent conversion) through the journal; overwriting blocks that were
    /// already written needs no metadata, so fdatasync can be cheaper (fio on this
    /// machine: 0.16–3.9 ms median for overwrites vs 3.3–3.9 ms for fresh blocks, very
    /// noisy). The price: every segment is written twice, and the roll that creates a
    /// segment stalls while it is zeroed. Off by default (bandwidth-bound loads lose).
    pub zero_fill_segments: bool,
    /// Once a stretch of a segment is durable, drop its pages from the page cache
    /// (`posix_fadvise(DONTNEED)`, in steps of at least [`CACHE_RELEASE_STEP_BYTES`], the
    /// last [`CACHE_RELEASE_LAG_BYTES`] kept until the segment is sealed).
    /// A WAL is written once and read back only by recovery or by a lagging reader, so
    /// keeping its pages cached only pushes useful memory out; and on the development VM
    /// writing into pages the kernel just freed was far cheaper than into new ones (4 KiB
    /// entries: about 3x the bandwidth; docs/BENCHMARKS.md). [`WalCore::read`] of a
    /// released entry reads the device. On by default.
    pub release_synced_pages: bool,
    /// On corruption (a bad batch followed by valid data), stop at the first bad batch,
    /// drop and report everything after it, instead of failing the open.
    pub tolerant_recovery: bool,
    /// First index of a brand-new, empty log.
    pub first_index_of_new_log: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size_bytes: 64 << 20,
            max_entry_size_bytes: 8 << 20,
            preallocate: true,
            tolerant_recovery: false,
            zero_fill_segments: false,
            release_synced_pages: true,
            first_index_of_new_log: 1,
        }
    }
}

impl WalOptions {
    /// Largest batch body that fits in a fresh segment after its start batch.
    pub fn max_batch_body_bytes(&self) -> u64 {
        self.segment_size_bytes
            .saturating_sub((SEGMENT_HEADER_LEN + FIRST_BATCH_LEN + BATCH_OVERHEAD_LEN) as u64)
    }

    fn validate(&self) -> Result<()> {
        let needed = self.max_entry_size_bytes + ENTRY_RECORD_HEADER_LEN as u64;
        if self.max_batch_body_bytes() < needed.max(INDEX_RECORD_LEN as u64 * 4) {
            return Err(WalError::InvalidOptions(format!(
                "segment_size_bytes {} cannot hold an entry of max_entry_size_bytes {}",
                self.segment_size_bytes, self.max_entry_size_bytes
            )));
        }
        if self.max_entry_size_bytes > u32::MAX as u64 {
            return Err(WalError::InvalidOptions(
                "max_entry_size_bytes must fit in u32".into(),
            ));
        }
        if self.first_index_of_new_log == 0 {
            return Err(WalError::InvalidOptions(
                "first_index_of_new_log must be >= 1".into(),
            ));
        }
        Ok(())
    }
}

/// The least a durable stretch of a segment grows before its cached pages are released
/// (`WalOptions::release_synced_pages`): one `posix_fadvise` per this many bytes, not per
/// batch.
pub const CACHE_RELEASE_STEP_BYTES: u64 = 256 << 10;

/// How far behind a segment's end its cached pages are kept
/// (`WalOptions::release_synced_pages`). Pages written a moment ago may still sit in a
/// CPU's LRU batch, where `posix_fadvise` cannot drop them without draining every CPU's
/// batches (a synchronous cross-CPU call inside the commit); a lag this long lets them
/// reach the LRU first.
pub const CACHE_RELEASE_LAG_BYTES: u64 = 1 << 20;

/// Releases start on multiples of this (a multiple of every common page size: 4, 16 and
/// 64 KiB), so a page left cached because a release ended inside it is covered whole by
/// the next one.
const CACHE_RELEASE_ALIGN_BYTES: u64 = 64 << 10;

/// Bytes a batch adds around its body (header and trailer).
const BATCH_OVERHEAD_LEN: usize = BATCH_HEADER_LEN + BATCH_TRAILER_LEN;
/// The batch every segment starts with: one hard-state record.
const FIRST_BATCH_LEN: usize = BATCH_OVERHEAD_LEN + HARD_STATE_RECORD_LEN;

/// A region of a segment that recovery dropped (zeroed or removed), with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedRegion {
    /// Segment file name inside the WAL directory.
    pub file: String,
    /// Byte offset in `file` where the dropped region starts (0 for a removed file).
    pub offset: u64,
    /// Bytes dropped: from `offset` to the last non-zero byte of the file (the zeros of
    /// preallocated space are not counted).
    pub len_bytes: u64,
    /// Why the bytes at `offset` are not a valid batch, or why the file was removed
    /// (`"after the torn tail"`, `"segment has no valid batch"`).
    pub reason: String,
    /// True if the whole file was removed.
    pub file_removed: bool,
}

/// What `open` found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files whose header recovery read (up to and including the first bad one).
    pub segments_scanned: usize,
    /// Valid batches replayed into the index, over all segments.
    pub batches_replayed: u64,
    /// Entries in the log once recovery finished (after replayed truncations, resets and
    /// dropped tails).
    pub entries_recovered: u64,
    /// Torn-tail bytes (or, in tolerant mode, everything after the first bad batch) that
    /// were dropped, in file order. Empty after a clean shutdown.
    pub dropped: Vec<DroppedRegion>,
    /// Tolerant mode only: the corruption that was tolerated (file, offset, reason).
    pub tolerated_corruption: Option<String>,
}

/// Where an entry lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Location {
    /// Segment holding the entry (meaningless while `Staged`).
    segment_id: u64,
    /// Payload offset in the segment file when `Written`, else in the staged or
    /// in-flight body.
    offset: u64,
    payload_len: u32,
    kind: u8,
    residence: Residence,
    term: u64,
}

/// Where an entry's payload bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Residence {
    /// In a segment file.
    Written,
    /// In the staged body (not yet handed to storage).
    Staged,
    /// In the body of the commit between `begin_commit` and `finish_commit`.
    InFlight,
}

/// A batch handed out by [`WalCore::begin_commit`]: write `header` then `body` at
/// `offset` of `file` and fdatasync, without holding the core, then report the outcome
/// to [`WalCore::finish_commit`].
pub struct PendingCommit {
    /// The active segment, which the batch goes into.
    pub file: Arc<dyn StorageFile>,
    /// The encoded batch header (its CRC covers `body` without the trailer).
    pub header: [u8; BATCH_HEADER_LEN],
    /// The records followed by the batch trailer: write it right after `header`.
    pub body: Bytes,
    /// Byte offset in `file` where `header` goes (the end of the last written batch).
    pub offset: u64,
}

/// The core's record of a commit in flight.
struct InFlight {
    body: Bytes,
    batch_offset: u64,
    /// Log state the batch brings the disk to.
    last_index: u64,
    hard_state: HardState,
}

/// The logical log, rebuilt identically by recovery and by live mutations.
#[derive(Debug)]
struct LogState {
    /// Index of `index[0]`, or the next index when empty.
    /// Invariant: `first_index >= 1`.
    first_index: u64,
    /// `index[i]` locates entry `first_index + i`.
    index: VecDeque<Location>,
    hard_state: HardState,
}

impl LogState {
    fn last_index(&self) -> u64 {
        // `first_index >= 1`, so this cannot underflow, and it cannot overflow while the
        // last entry's index is a u64 (`first_index + len` alone would at u64::MAX).
        self.first_index - 1 + self.index.len() as u64
    }

    fn last_term(&self) -> Option<u64> {
        self.index.back().map(|l| l.term)
    }

    /// Applies one record. `Err` describes why the record cannot follow the log.
    fn apply(&mut self, record: &Record, location: Location) -> std::result::Result<(), String> {
        match *record {
            Record::Entry { index, term, .. } => {
                let expected = self.last_index() + 1;
                if index != expected {
                    return Err(format!(
                        "entry index {index} does not follow {}",
                        expected - 1
                    ));
                }
                if index == u64::MAX {
                    // Keeps `last_index() + 1` representable everywhere.
                    return Err(format!("entry index {index} leaves no next index"));
                }
                if let Some(previous_term) = self.last_term() {
                    if term < previous_term {
                        return Err(format!(
                            "entry {index} has term {term} below the previous term {previous_term}"
                        ));
                    }
                }
                self.index.push_back(location);
            }
            Record::HardState(hard_state) => self.hard_state = hard_state,
            Record::TruncateSuffix { from_index } => {
                if from_index < self.first_index {
                    // The entries below from_index were compacted away together with the
                    // segments that held them; the log restarts empty at from_index.
                    self.index.clear();
                    self.first_index = from_index.max(1);
                } else if from_index <= self.last_index() + 1 {
                    self.index
                        .truncate((from_index - self.first_index) as usize);
                } else {
                    return Err(format!(
                        "truncate_suffix({from_index}) beyond the last index {}",
                        self.last_index()
                    ));
                }
            }
            Record::Reset { next_index } => {
                if next_index == 0 {
                    return Err("reset to index 0".into());
                }
                self.index.clear();
                self.first_index = next_index;
            }
        }
        Ok(())
    }
}

struct Segment {
    id: u64,
    name: String,
    file: Arc<dyn StorageFile>,
    /// End of the last batch: the next batch is written here.
    /// Invariant: `SEGMENT_HEADER_LEN <= end_offset <= capacity_bytes`.
    end_offset: u64,
    capacity_bytes: u64,
    /// Read-only view for sealed segments, created on first read.
    view: OnceLock<FileView>,
    /// Where the next release of cached pages starts (`WalOptions::release_synced_pages`):
    /// the pages below it were released. Invariant: a multiple of
    /// [`CACHE_RELEASE_ALIGN_BYTES`], `<= end_offset`, and everything below it is durable.
    cache_released_to: u64,
}

/// The synchronous WAL. See the module docs.
pub struct WalCore<S: Storage> {
    storage: S,
    options: WalOptions,
    _lock: crate::storage::DirLock,
    /// Oldest first; ids contiguous; the last one is active (the only one written).
    segments: VecDeque<Segment>,
    log: LogState,
    /// Encoded records not yet handed to storage (one future batch body).
    staged: Vec<u8>,
    staged_records: u32,
    staged_entries: u32,
    /// Index of the first entry record in `staged` (batch header field).
    staged_first_entry_index: Option<u64>,
    /// The log's next index as replayed from everything handed to storage (the first
    /// index of a new segment).
    written_next_index: u64,
    /// Hard state as of everything handed to storage.
    written_hard_state: HardState,
    /// Entries `<= written_index` of the current log have been handed to storage.
    /// Invariant: `durable_index <= written_index <= last_index`.
    written_index: u64,
    /// Entries `<= durable_index` of the current log are durable.
    durable_index: u64,
    durable_hard_state: HardState,
    /// Bytes in the active segment written but not synced.
    active_unsynced: bool,
    poison: Option<(PoisonCause, String)>,
    report: RecoveryReport,
    /// The batch between `begin_commit` and `finish_commit`, if any.
    /// Invariant: while `Some`, `staged` is empty and nothing new is staged.
    in_flight: Option<InFlight>,
    /// The body allocation of the last committed batch, cleared, for the group-commit
    /// writer to reuse (see [`WalCore::take_spare_buffer`]); empty when none came back.
    spare_buffer: Vec<u8>,
}

fn io_err(operation: &'static str, file: &str, err: std::io::Error) -> WalError {
    WalError::io(operation, file, err)
}

impl<S: Storage> WalCore<S> {
    /// Opens (recovering) or creates the WAL in `storage`.
    ///
    /// Recovery replays every valid batch, zeroes a torn tail and removes the segments
    /// after it; [`recovery_report`](Self::recovery_report) says what it dropped.
    ///
    /// # Errors
    ///
    /// [`WalError::InvalidOptions`] for inconsistent `options`, [`WalError::Locked`] if
    /// another handle holds the directory, [`WalError::Corruption`] if damage is followed
    /// by valid data (unless [`WalOptions::tolerant_recovery`]), and
    /// [`WalError::Io`] / [`WalError::NoSpace`] from storage.
    pub fn open(storage: S, options: WalOptions) -> Result<Self> {
        options.validate()?;
        let lock = storage.lock().map_err(|err| {
            if err.kind() == std::io::ErrorKind::WouldBlock {
                WalError::Locked {
                    dir: storage.describe(),
                }
            } else {
                io_err("lock", &storage.describe(), err)
            }
        })?;
        let mut core = WalCore {
            log: LogState {
                first_index: options.first_index_of_new_log,
                index: VecDeque::new(),
                hard_state: HardState::default(),
            },
            storage,
            options,
            _lock: lock,
            segments: VecDeque::new(),
            staged: Vec::new(),
            spare_buffer: Vec::new(),
            staged_records: 0,
            staged_entries: 0,
            staged_first_entry_index: None,
            written_next_index: 0,
            written_hard_state: HardState::default(),
            written_index: 0,
            durable_index: 0,
            durable_hard_state: HardState::default(),
            active_unsynced: false,
            poison: None,
            report: RecoveryReport::default(),
            in_flight: None,
        };
        core.recover()?;
        Ok(core)
    }

    fn recover(&mut self) -> Result<()> {
        let dir = self.storage.describe();
        let mut names: Vec<(u64, u64, String)> = self
            .storage
            .list()
            .map_err(|e| io_err("list", &dir, e))?
            .into_iter()
            .filter_map(|name| {
                format::parse_segment_file_name(&name).map(|(id, first)| (id, first, name))
            })
            .collect();
        names.sort();
        if let Some((id, _, name)) = names
            .iter()
            .find(|(id, first, _)| out_of_range(*id, *first))
        {
            // Indexes start at 1 and every segment needs a next id: no version of this
            // WAL names a segment so.
            return Err(WalError::Corruption {
                file: name.clone(),
                offset: 0,
                expected_index: 1,
                reason: out_of_range_reason(*id),
            });
        }
        for pair in names.windows(2) {
            if pair[0].0.checked_add(1) != Some(pair[1].0) {
                return Err(WalError::Corruption {
                    file: pair[1].2.clone(),
                    offset: 0,
                    expected_index: pair[1].1,
                    reason: format!(
                        "segment ids jump from {} to {}: a segment is missing",
                        pair[0].0, pair[1].0
                    ),
                });
            }
        }
        if names.is_empty() {
            let first = self.options.first_index_of_new_log;
            self.log.first_index = first;
            self.written_next_index = first;
            self.written_index = first - 1;
            self.durable_index = first - 1;
            self.create_segment(1, first, HardState::default())?;
            return Ok(());
        }

        // Replay every segment in id order until the end or the first bad spot.
        let mut files = Vec::with_capacity(names.len());
        let mut views = Vec::with_capacity(names.len());
        for (_, _, name) in &names {
            let file = self
                .storage
                .open(name)
                .map_err(|e| io_err("open", name, e))?;
            let view = read_disk_truth(file.as_ref())?;
            files.push(file);
            views.push(view);
        }
        self.log.first_index = names[0].1;
        // (segment position, offset, reason) of the first bad spot.
        let mut bad_spot: Option<(usize, u64, String)> = None;
        let mut end_offsets = vec![SEGMENT_HEADER_LEN as u64; names.len()];
        let mut versions = vec![FORMAT_VERSION; names.len()];
        'segments: for (position, (id, first_index, name)) in names.iter().enumerate() {
            self.report.segments_scanned += 1;
            let bytes: &[u8] = &views[position];
            match format::decode_segment_header(bytes) {
                Ok(header) if header.segment_id == *id && header.first_index == *first_index => {
                    versions[position] = header.format_version;
                }
                Ok(header) => {
                    bad_spot = Some((
                        position,
                        0,
                        format!(
                            "segment header says id {} first index {}, the name disagrees",
                            header.segment_id, header.first_index
                        ),
                    ));
                    break 'segments;
                }
                Err(reason) => {
                    bad_spot = Some((position, 0, reason));
                    break 'segments;
                }
            }
            if position > 0 && *first_index != self.log.last_index() + 1 {
                return Err(WalError::Corruption {
                    file: name.clone(),
                    offset: 0,
                    expected_index: self.log.last_index() + 1,
                    reason: format!(
                        "segment starts at index {first_index}, the log before it ends at {}",
                        self.log.last_index()
                    ),
                });
            }
            let mut offset = SEGMENT_HEADER_LEN;
            loop {
                match format::probe_batch(*id, bytes, offset) {
                    BatchProbe::CleanEnd => break,
                    BatchProbe::Invalid(reason) => {
                        end_offsets[position] = offset as u64;
                        bad_spot = Some((position, offset as u64, reason));
                        break 'segments;
                    }
                    BatchProbe::Valid(header) => {
                        let body_start = offset + BATCH_HEADER_LEN;
                        let body = &bytes[body_start..body_start + header.body_len as usize];
                        // A batch with a valid CRC that does not fit the log is never a torn
                        // write: always corruption.
                        self.replay_batch(*id, body_start as u64, body, header)
                            .map_err(|reason| WalError::Corruption {
                                file: name.clone(),
                                offset: offset as u64,
                                expected_index: self.log.last_index() + 1,
                                reason,
                            })?;
                        self.report.batches_replayed += 1;
                        offset += format::valid_batch_len(bytes, offset, &header);
                        end_offsets[position] = offset as u64;
                    }
                }
            }
        }

        let mut keep_segments = names.len();
        if let Some((bad_position, bad_offset, reason)) = bad_spot {
            let later_valid = find_valid_batch_after(&names, &views, bad_position, bad_offset);
            let (bad_name, bad_first) = (&names[bad_position].2, names[bad_position].1);
            let damaged = || {
                let bytes: &[u8] = &views[bad_position];
                format::damaged_complete_batch(versions[bad_position], bytes, bad_offset as usize)
            };
            let corruption = match later_valid {
                Some((valid_position, valid_offset)) => Some(format!(
                    "bad batch ({reason}) followed by a valid batch in {} at offset {valid_offset}",
                    names[valid_position].2
                )),
                None => damaged().map(|detail| format!("bad batch ({reason}): {detail}")),
            };
            if let Some(description) = corruption {
                if !self.options.tolerant_recovery {
                    return Err(WalError::Corruption {
                        file: bad_name.clone(),
                        offset: bad_offset,
                        expected_index: self.log.last_index() + 1,
                        reason: description,
                    });
                }
                tracing::warn!(file = %bad_name, offset = bad_offset, "tolerant recovery: {description}");
                self.report.tolerated_corruption =
                    Some(format!("{bad_name} at offset {bad_offset}: {description}"));
            }
            let _ = bad_first;
            // Drop the bad region of this segment and every later segment.
            let bad_segment_has_batches = bad_offset > SEGMENT_HEADER_LEN as u64;
            keep_segments = if bad_segment_has_batches {
                bad_position + 1
            } else {
                bad_position
            };
            if bad_segment_has_batches {
                let bytes: &[u8] = &views[bad_position];
                let nonzero_end = bytes
                    .iter()
                    .rposition(|&b| b != 0)
                    .map_or(0, |p| p as u64 + 1);
                let len = nonzero_end.saturating_sub(bad_offset);
                if len > 0 {
                    let zeros = vec![0u8; len as usize];
                    let file = &files[bad_position];
                    file.write_all_at(&[&zeros], bad_offset)
                        .map_err(|e| io_err("zero torn tail", bad_name, e))?;
                    file.sync_data()
                        .map_err(|e| io_err("sync after zeroing torn tail", bad_name, e))?;
                }
                self.report.dropped.push(DroppedRegion {
                    file: bad_name.clone(),
                    offset: bad_offset,
                    len_bytes: len,
                    reason,
                    file_removed: false,
                });
            }
            for position in keep_segments..names.len() {
                let name = &names[position].2;
                let len_bytes = views[position]
                    .iter()
                    .rposition(|&b| b != 0)
                    .map_or(0, |p| p as u64 + 1);
                self.storage
                    .remove(name)
                    .map_err(|e| io_err("remove torn segment", name, e))?;
                self.report.dropped.push(DroppedRegion {
                    file: name.clone(),
                    offset: 0,
                    len_bytes,
                    reason: if position == bad_position {
                        "segment has no valid batch".into()
                    } else {
                        "after the torn tail".into()
                    },
                    file_removed: true,
                });
            }
            if keep_segments < names.len() {
                self.storage
                    .sync_dir()
                    .map_err(|e| io_err("sync_dir", &dir, e))?;
            }
            for region in &self.report.dropped {
                tracing::warn!(file = %region.file, offset = region.offset, len_bytes = region.len_bytes, removed = region.file_removed, "recovery dropped a torn tail: {}", region.reason);
            }
        }
        drop(views);

        // Every kept segment was synced by `read_disk_truth` (and a zeroed tail right
        // after zeroing); the directory too before anything is reported durable.
        if keep_segments > 0 {
            self.storage
                .sync_dir()
                .map_err(|e| io_err("sync_dir", &dir, e))?;
        }
        for (position, file) in files.into_iter().enumerate().take(keep_segments) {
            let (id, first_index, name) = names[position].clone();
            let capacity_bytes = file.len_bytes().map_err(|e| io_err("stat", &name, e))?;
            debug_assert!(first_index >= 1);
            self.segments.push_back(Segment {
                id,
                name,
                file,
                end_offset: end_offsets[position],
                capacity_bytes,
                view: OnceLock::new(),
                cache_released_to: 0,
            });
        }
        let active_version = versions[..keep_segments].last().copied();
        self.report.entries_recovered = self.log.index.len() as u64;
        let last = self.log.last_index();
        self.written_next_index = last + 1;
        self.written_index = last;
        self.durable_index = last;
        self.written_hard_state = self.log.hard_state;
        self.durable_hard_state = self.log.hard_state;
        if self.segments.is_empty() {
            // Nothing valid at all survived: start over at the first segment's index.
            let first = names[0].1;
            self.log.first_index = first;
            self.written_next_index = first;
            self.written_index = first - 1;
            self.durable_index = first - 1;
            self.create_segment(names[0].0, first, HardState::default())?;
        } else if active_version.is_some_and(|version| version < FORMAT_VERSION) {
            // Batches are written in the version of their segment's header: an older
            // active segment is sealed, new batches go to a current-version segment.
            self.roll()?;
        }
        debug_assert_eq!(
            self.segments.back().map(|s| s.id),
            Some(self.segments[0].id + (self.segments.len() as u64 - 1))
        );
        Ok(())
    }

    fn replay_batch(
        &mut self,
        segment_id: u64,
        body_file_offset: u64,
        body: &[u8],
        header: BatchHeader,
    ) -> std::result::Result<(), String> {
        let (mut n_records, mut n_entries) = (0u32, 0u32);
        for record in format::records(body) {
            let record = record.map_err(|e| e.to_string())?;
            let mut location = Location {
                segment_id,
                offset: 0,
                payload_len: 0,
                kind: 0,
                residence: Residence::Written,
                term: 0,
            };
            if let Record::Entry {
                index,
                term,
                kind,
                payload_offset,
                payload_len,
            } = record
            {
                if n_entries == 0 && index != header.first_index {
                    return Err(format!(
                        "first entry {index} differs from the batch header's first index {}",
                        header.first_index
                    ));
                }
                if payload_len as u64 > self.options.max_entry_size_bytes.max(u32::MAX as u64) {
                    return Err(format!(
                        "entry {index} of {payload_len} bytes exceeds the format limit"
                    ));
                }
                location = Location {
                    segment_id,
                    offset: body_file_offset + payload_offset as u64,
                    payload_len: payload_len as u32,
                    kind,
                    residence: Residence::Written,
                    term,
                };
                n_entries += 1;
            }
            self.log.apply(&record, location)?;
            n_records += 1;
        }
        if n_records != header.record_count || n_entries != header.entry_count {
            return Err(format!(
                "batch header counts {} records / {} entries, body has {n_records} / {n_entries}",
                header.record_count, header.entry_count
            ));
        }
        Ok(())
    }

    // ----- accessors -------------------------------------------------------------------

    /// What recovery found and did when this WAL was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }
    /// The options in use.
    pub fn options(&self) -> &WalOptions {
        &self.options
    }
    /// First index in the log (or the next index if the log is empty).
    pub fn first_index(&self) -> u64 {
        self.log.first_index
    }
    /// Last index in the log (`first_index() - 1` if empty).
    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }
    /// Term of the last entry, if any.
    pub fn last_term(&self) -> Option<u64> {
        self.log.last_term()
    }
    /// Entries `<= durable_index()` of the current log are durable.
    pub fn durable_index(&self) -> u64 {
        self.durable_index
    }
    /// The current (possibly not yet durable) hard state.
    pub fn hard_state(&self) -> HardState {
        self.log.hard_state
    }
    /// The hard state as of the last successful sync.
    pub fn durable_hard_state(&self) -> HardState {
        self.durable_hard_state
    }
    /// True if records are staged or written but not yet durable.
    pub fn has_unsynced(&self) -> bool {
        !self.staged.is_empty() || self.active_unsynced
    }
    /// Bytes currently staged (encoded, not yet handed to storage).
    pub fn staged_bytes(&self) -> usize {
        self.staged.len()
    }
    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
    /// Names of the segment files, oldest first.
    pub fn segment_names(&self) -> Vec<String> {
        self.segments.iter().map(|s| s.name.clone()).collect()
    }
    /// The storage this WAL runs on.
    pub fn storage(&self) -> &S {
        &self.storage
    }
    /// `Some` once a failed fsync or write has poisoned the WAL.
    pub fn poisoned(&self) -> Option<WalError> {
        self.poison
            .as_ref()
            .map(|(cause, detail)| WalError::Poisoned {
                cause: cause.clone(),
                detail: detail.clone(),
            })
    }

    fn check_poison(&self) -> Result<()> {
        match self.poisoned() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn poison_with(&mut self, cause: PoisonCause, err: WalError) -> WalError {
        tracing::error!("WAL poisoned ({cause:?}): {err}");
        self.poison = Some((cause.clone(), err.to_string()));
        match err {
            WalError::NoSpace { .. } => err,
            other => WalError::Poisoned {
                cause,
                detail: other.to_string(),
            },
        }
    }

    // ----- reads -----------------------------------------------------------------------

    fn location(&self, index: u64) -> Result<Location> {
        if index < self.log.first_index || index > self.log.last_index() {
            return Err(WalError::IndexOutOfRange {
                index,
                first_index: self.log.first_index,
                last_index: self.log.last_index(),
            });
        }
        Ok(self.log.index[(index - self.log.first_index) as usize])
    }

    /// Term of the entry at `index`; [`WalError::IndexOutOfRange`] outside
    /// `first_index()..=last_index()`.
    pub fn term_at(&self, index: u64) -> Result<u64> {
        Ok(self.location(index)?.term)
    }

    /// Reads the entry at `index`, staged, in flight or written.
    ///
    /// # Errors
    ///
    /// [`WalError::IndexOutOfRange`] outside `first_index()..=last_index()`,
    /// [`WalError::Poisoned`] once poisoned, [`WalError::Io`] if the segment cannot be read.
    pub fn read(&self, index: u64) -> Result<Entry> {
        self.check_poison()?;
        let location = self.location(index)?;
        let len = location.payload_len as usize;
        let payload = if location.residence == Residence::Staged {
            let start = location.offset as usize;
            Bytes::copy_from_slice(&self.staged[start..start + len])
        } else if location.residence == Residence::InFlight {
            let start = location.offset as usize;
            let body = self
                .in_flight
                .as_ref()
                .map(|f| &f.body[..])
                .unwrap_or_default();
            let bytes = body
                .get(start..start + len)
                .ok_or_else(|| WalError::Corruption {
                    file: "in-flight batch".into(),
                    offset: location.offset,
                    expected_index: index,
                    reason: "in-flight entry outside its batch".into(),
                })?;
            Bytes::copy_from_slice(bytes)
        } else {
            let position = location
                .segment_id
                .checked_sub(self.segments[0].id)
                .map(|p| p as usize);
            let segment = position.and_then(|p| self.segments.get(p)).ok_or_else(|| {
                WalError::Corruption {
                    file: format!("segment {}", location.segment_id),
                    offset: location.offset,
                    expected_index: index,
                    reason: "index points to a segment that is not open".into(),
                }
            })?;
            debug_assert_eq!(segment.id, location.segment_id);
            debug_assert!(location.offset + len as u64 <= segment.end_offset);
            let is_active = position == Some(self.segments.len() - 1);
            if is_active {
                let mut buf = vec![0u8; len];
                segment
                    .file
                    .read_exact_at(&mut buf, location.offset)
                    .map_err(|e| io_err("read", &segment.name, e))?;
                Bytes::from(buf)
            } else {
                let view = match segment.view.get() {
                    Some(view) => view,
                    None => {
                        let view = segment
                            .file
                            .view()
                            .map_err(|e| io_err("map", &segment.name, e))?;
                        segment.view.get_or_init(|| view)
                    }
                };
                let start = location.offset as usize;
                let bytes = view
                    .get(start..start + len)
                    .ok_or_else(|| WalError::Corruption {
                        file: segment.name.clone(),
                        offset: location.offset,
                        expected_index: index,
                        reason: "entry extends past the end of the mapped segment".into(),
                    })?;
                Bytes::copy_from_slice(bytes)
            }
        };
        Ok(Entry {
            index,
            term: location.term,
            kind: location.kind,
            payload,
        })
    }

    /// Reads entries `range.start..range.end`; errors as [`read`](Self::read), checked for
    /// both ends before anything is read. An empty range gives an empty `Vec`.
    pub fn read_range(&self, range: Range<u64>) -> Result<Vec<Entry>> {
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        self.location(range.start)?;
        self.location(range.end - 1)?;
        range.map(|index| self.read(index)).collect()
    }

    /// Iterates over entries in `range` (each item may fail with an I/O error).
    pub fn entries(&self, range: Range<u64>) -> impl Iterator<Item = Result<Entry>> + '_ {
        range.map(move |index| self.read(index))
    }

    // ----- mutations (staged) ----------------------------------------------------------

    fn ensure_staging_room(&mut self, record_len: usize) -> Result<()> {
        if self.staged.len() + record_len > self.options.max_batch_body_bytes() as usize {
            self.write()?;
        }
        Ok(())
    }

    /// Validates `entries` against the log without changing anything.
    #[allow(clippy::explicit_counter_loop)] // `expected` doubles as the error's context
    fn validate_entries(&self, entries: &[Entry]) -> Result<()> {
        let mut expected = self.log.last_index() + 1;
        let mut previous_term = self.log.last_term();
        for (position, entry) in entries.iter().enumerate() {
            if entry.index == u64::MAX {
                return Err(WalError::OutOfOrder {
                    index: entry.index,
                    reason: "the last index u64::MAX cannot be used".into(),
                });
            }
            if entry.index != expected {
                return Err(if position == 0 {
                    WalError::IndexGap {
                        expected,
                        got: entry.index,
                    }
                } else {
                    WalError::OutOfOrder {
                        index: entry.index,
                        reason: format!("expected index {expected} (entries must be contiguous)"),
                    }
                });
            }
            if let Some(previous) = previous_term {
                if entry.term < previous {
                    return Err(WalError::OutOfOrder {
                        index: entry.index,
                        reason: format!(
                            "term {} is below the previous entry's term {previous}",
                            entry.term
                        ),
                    });
                }
            }
            if entry.payload.len() as u64 > self.options.max_entry_size_bytes {
                return Err(WalError::EntryTooLarge {
                    index: entry.index,
                    size_bytes: entry.payload.len() as u64,
                    max_bytes: self.options.max_entry_size_bytes,
                });
            }
            expected += 1;
            previous_term = Some(entry.term);
        }
        Ok(())
    }

    fn stage_record(&mut self, record: Record, encode: impl FnOnce(&mut Vec<u8>)) {
        let start = self.staged.len();
        encode(&mut self.staged);
        let mut location = Location {
            segment_id: 0,
            offset: 0,
            payload_len: 0,
            kind: 0,
            residence: Residence::Staged,
            term: 0,
        };
        if let Record::Entry {
            index,
            term,
            kind,
            payload_len,
            ..
        } = record
        {
            location = Location {
                segment_id: 0,
                offset: (start + ENTRY_RECORD_HEADER_LEN) as u64,
                payload_len: payload_len as u32,
                kind,
                residence: Residence::Staged,
                term,
            };
            if self.staged_first_entry_index.is_none() {
                self.staged_first_entry_index = Some(index);
            }
            self.staged_entries += 1;
        }
        self.staged_records += 1;
        let applied = self.log.apply(&record, location);
        // Callers validate first; a failure here would desynchronise memory and disk.
        assert!(
            applied.is_ok(),
            "staged record rejected after validation: {applied:?}"
        );
    }

    /// Appends entries; `entries[0].index` must be `last_index() + 1`, indexes contiguous,
    /// terms non-decreasing, payloads within `max_entry_size_bytes`. Nothing changes on
    /// error. The entries are readable at once and durable after `write` + `sync`.
    ///
    /// # Errors
    ///
    /// [`WalError::IndexGap`], [`WalError::OutOfOrder`] and [`WalError::EntryTooLarge`]
    /// for entries that break those rules; [`WalError::Poisoned`] once poisoned;
    /// [`WalError::InvalidOptions`] while a [`begin_commit`](Self::begin_commit) is
    /// unfinished; a fatal storage error if the staged batch is full and its write fails.
    pub fn append(&mut self, entries: &[Entry]) -> Result<()> {
        self.check_poison()?;
        self.check_no_commit_in_flight()?;
        self.validate_entries(entries)?;
        for entry in entries {
            self.ensure_staging_room(ENTRY_RECORD_HEADER_LEN + entry.payload.len())?;
            let record = Record::Entry {
                index: entry.index,
                term: entry.term,
                kind: entry.kind,
                payload_offset: 0,
                payload_len: entry.payload.len(),
            };
            self.stage_record(record, |out| {
                format::encode_entry(out, entry.index, entry.term, entry.kind, &entry.payload)
            });
        }
        Ok(())
    }

    /// Records a new hard state; it becomes durable with the next sync, in the same
    /// write as entries staged with it. The term may not decrease, and the vote may not
    /// change within a term once cast ([`WalError::HardStateRegression`] otherwise).
    pub fn set_hard_state(&mut self, hard_state: HardState) -> Result<()> {
        self.check_poison()?;
        self.check_no_commit_in_flight()?;
        let current = self.log.hard_state;
        if hard_state == current {
            return Ok(());
        }
        check_hard_state_transition(current, hard_state)?;
        self.ensure_staging_room(HARD_STATE_RECORD_LEN)?;
        self.stage_record(Record::HardState(hard_state), |out| {
            format::encode_hard_state(out, hard_state)
        });
        Ok(())
    }

    /// Removes entries `>= from_index` (a durable logical record: after it is synced,
    /// recovery never brings them back). `first_index() <= from_index <= last_index() + 1`,
    /// else [`WalError::IndexOutOfRange`]; `from_index == last_index() + 1` does nothing.
    pub fn truncate_suffix(&mut self, from_index: u64) -> Result<()> {
        self.check_poison()?;
        self.check_no_commit_in_flight()?;
        let last = self.log.last_index();
        if from_index < self.log.first_index || from_index > last + 1 {
            return Err(WalError::IndexOutOfRange {
                index: from_index,
                first_index: self.log.first_index,
                last_index: last,
            });
        }
        if from_index == last + 1 {
            return Ok(());
        }
        self.ensure_staging_room(INDEX_RECORD_LEN)?;
        self.stage_record(Record::TruncateSuffix { from_index }, |out| {
            format::encode_truncate_suffix(out, from_index)
        });
        self.written_index = self.written_index.min(from_index - 1);
        self.durable_index = self.durable_index.min(from_index - 1);
        Ok(())
    }

    /// Drops every entry; the log restarts empty at `next_index` (a follower installing a
    /// snapshot). Old segments are removed by later `compact_prefix` calls.
    /// `next_index` must be at least 1 ([`WalError::IndexOutOfRange`] otherwise).
    pub fn reset(&mut self, next_index: u64) -> Result<()> {
        self.check_poison()?;
        self.check_no_commit_in_flight()?;
        if next_index == 0 {
            return Err(WalError::IndexOutOfRange {
                index: 0,
                first_index: self.log.first_index,
                last_index: self.log.last_index(),
            });
        }
        self.ensure_staging_room(INDEX_RECORD_LEN)?;
        self.stage_record(Record::Reset { next_index }, |out| {
            format::encode_reset(out, next_index)
        });
        self.written_index = self.written_index.min(next_index - 1);
        self.durable_index = self.durable_index.min(next_index - 1);
        Ok(())
    }

    /// Stages records encoded elsewhere (the group-commit queue), validating and
    /// applying them like recovery does. On error the WAL is poisoned (the queue
    /// validated them already, so this is a bug, and memory may be half-updated).
    pub fn stage_encoded(&mut self, body: &[u8]) -> Result<()> {
        self.check_poison()?;
        self.check_no_commit_in_flight()?;
        if self.staged.len() + body.len() > self.options.max_batch_body_bytes() as usize {
            self.write()?;
        }
        let base = self.staged.len();
        if base == 0 {
            // Room for the trailer `frame_staged` appends: growing a full batch by 8
            // bytes would copy it (a realloc of ~30 KB per batch with some allocators).
            self.staged.reserve(body.len() + format::BATCH_TRAILER_LEN);
        }
        self.staged.extend_from_slice(body);
        self.index_staged_records(base, body)
    }

    /// [`stage_encoded`](Self::stage_encoded) taking the encoded records by value: when
    /// nothing is staged, `body`'s allocation becomes the staged batch (no copy) and
    /// `body` is left empty. The bytes staged are the same either way.
    pub fn stage_encoded_owned(&mut self, body: &mut Vec<u8>) -> Result<()> {
        self.check_poison()?;
        self.check_no_commit_in_flight()?;
        if body.is_empty() {
            return Ok(());
        }
        if !self.staged.is_empty() {
            let result = self.stage_encoded(body);
            body.clear();
            return result;
        }
        // Room for the trailer `frame_staged` appends (see `stage_encoded`).
        body.reserve(format::BATCH_TRAILER_LEN);
        let staged = std::mem::take(body);
        let result = self.index_staged_records(0, &staged);
        self.staged = staged;
        result
    }

    /// A cleared buffer to collect the next batch in: the allocation of the last
    /// committed batch when it came back, else a new empty one.
    pub fn take_spare_buffer(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.spare_buffer)
    }

    /// Indexes the records of `body`, just appended to `staged` at offset `base`.
    fn index_staged_records(&mut self, base: usize, body: &[u8]) -> Result<()> {
        for record in format::records(body) {
            let record = match record {
                Ok(record) => record,
                Err(err) => {
                    return Err(self.poison_with(
                        PoisonCause::WriteFailed,
                        WalError::InvalidOptions(format!("queued batch malformed: {err}")),
                    ))
                }
            };
            let mut location = Location {
                segment_id: 0,
                offset: 0,
                payload_len: 0,
                kind: 0,
                residence: Residence::Staged,
                term: 0,
            };
            match record {
                Record::Entry {
                    index,
                    term,
                    kind,
                    payload_offset,
                    payload_len,
                } => {
                    location = Location {
                        segment_id: 0,
                        offset: (base + payload_offset) as u64,
                        payload_len: payload_len as u32,
                        kind,
                        residence: Residence::Staged,
                        term,
                    };
                    if self.staged_first_entry_index.is_none() {
                        self.staged_first_entry_index = Some(index);
                    }
                    self.staged_entries += 1;
                }
                Record::TruncateSuffix { from_index }
                | Record::Reset {
                    next_index: from_index,
                } => {
                    self.written_index = self.written_index.min(from_index.saturating_sub(1));
                    self.durable_index = self.durable_index.min(from_index.saturating_sub(1));
                }
                Record::HardState(_) => {}
            }
            self.staged_records += 1;
            if let Err(reason) = self.log.apply(&record, location) {
                return Err(self.poison_with(
                    PoisonCause::WriteFailed,
                    WalError::InvalidOptions(format!("queued record rejected: {reason}")),
                ));
            }
        }
        Ok(())
    }

    // ----- write / sync ------------------------------------------------------------------

    fn active(&self) -> &Segment {
        // Invariant: at least one segment after open.
        self.segments
            .back()
            .expect("a WAL always has an active segment")
    }

    /// Frames the staged records as one batch and returns (header, batch offset),
    /// rolling to a new segment first if the batch does not fit.
    /// Afterwards `staged` ends with the batch trailer: it is everything after the header.
    fn frame_staged(&mut self) -> Result<([u8; BATCH_HEADER_LEN], u64)> {
        let batch_len = (BATCH_OVERHEAD_LEN + self.staged.len()) as u64;
        let active = self.active();
        if active.end_offset + batch_len > active.capacity_bytes {
            self.roll()?;
        }
        let active = self.active();
        let fields = BatchHeader {
            body_len: self.staged.len() as u32,
            record_count: self.staged_records,
            first_index: self
                .staged_first_entry_index
                .unwrap_or(self.log.last_index() + 1),
            entry_count: self.staged_entries,
        };
        let header = format::encode_batch_header(active.id, fields, &[&self.staged]);
        let offset = active.end_offset;
        self.staged
            .extend_from_slice(&format::encode_batch_trailer(fields.body_len));
        Ok((header, offset))
    }

    /// After the staged batch reached storage at `batch_offset`: point the index at it.
    /// (The staged or in-flight bytes include the trailer.)
    fn finish_staged_write(&mut self, batch_offset: u64) {
        let body_base = batch_offset + BATCH_HEADER_LEN as u64;
        let active_id = self.active().id;
        let mut body_len = self.staged.len();
        if let Some(in_flight) = &self.in_flight {
            debug_assert!(self.staged.is_empty());
            body_len = in_flight.body.len();
        }
        for location in self.log.index.iter_mut().rev() {
            if location.residence == Residence::Written {
                break;
            }
            location.residence = Residence::Written;
            location.segment_id = active_id;
            location.offset += body_base;
        }
        let batch_len = (BATCH_HEADER_LEN + body_len) as u64;
        if let Some(active) = self.segments.back_mut() {
            active.end_offset = batch_offset + batch_len;
            debug_assert!(active.end_offset <= active.capacity_bytes);
        }
        self.staged.clear();
        self.staged_records = 0;
        self.staged_entries = 0;
        self.staged_first_entry_index = None;
        self.written_index = self.log.last_index();
        self.written_next_index = self.log.last_index() + 1;
        self.written_hard_state = self.log.hard_state;
    }

    /// Hands the staged batch to storage (not yet durable).
    pub fn write(&mut self) -> Result<()> {
        self.check_poison()?;
        if self.staged.is_empty() {
            return Ok(());
        }
        self.check_no_commit_in_flight()?;
        let (header, offset) = self.frame_staged()?;
        let active = self.active();
        let result = active.file.write_all_at(&[&header, &self.staged], offset);
        if let Err(err) = result {
            let err = io_err("write", &active.name.clone(), err);
            return Err(self.poison_with(PoisonCause::WriteFailed, err));
        }
        self.active_unsynced = true;
        self.finish_staged_write(offset);
        Ok(())
    }

    /// `fdatasync`s what was written; returns the new durable index. A failure poisons
    /// the WAL (fail-stop: the sync is never retried).
    pub fn sync(&mut self) -> Result<u64> {
        self.check_poison()?;
        if self.active_unsynced {
            let active = self.active();
            if let Err(err) = active.file.sync_data() {
                let err = io_err("fdatasync", &active.name.clone(), err);
                return Err(self.poison_with(PoisonCause::SyncFailed, err));
            }
            self.active_unsynced = false;
        }
        self.mark_written_durable();
        self.release_synced_cache(false);
        Ok(self.durable_index)
    }

    /// Releases the cached pages of the active segment's durable bytes
    /// (`WalOptions::release_synced_pages`): all of them once the segment is `sealed`,
    /// else those more than [`CACHE_RELEASE_LAG_BYTES`] behind its end, once at least
    /// [`CACHE_RELEASE_STEP_BYTES`] of them accumulated. Call only when everything written
    /// to the active segment is durable. A failure is only logged: the advice changes
    /// neither contents nor durability.
    fn release_synced_cache(&mut self, sealed: bool) {
        if !self.options.release_synced_pages {
            return;
        }
        let Some(active) = self.segments.back_mut() else {
            return;
        };
        let from = active.cache_released_to;
        let (keep, min_step) = if sealed {
            (0, 1)
        } else {
            (CACHE_RELEASE_LAG_BYTES, CACHE_RELEASE_STEP_BYTES)
        };
        let until = active.end_offset.saturating_sub(keep);
        if until < from + min_step {
            return;
        }
        // Only whole pages inside the range are dropped: the page holding `until` stays
        // (so appending never reads a page back from the device), and the next release
        // starts at or below it, on a boundary of any page size.
        match active.file.release_cache(from, until - from) {
            Ok(()) => active.cache_released_to = until & !(CACHE_RELEASE_ALIGN_BYTES - 1),
            Err(err) => tracing::debug!("releasing cached WAL pages of {}: {err}", active.name),
        }
    }

    fn mark_written_durable(&mut self) {
        debug_assert!(self.written_index <= self.log.last_index());
        self.durable_index = self.written_index;
        self.durable_hard_state = self.written_hard_state;
    }

    /// Writes the staged batch and makes it durable through `backend` (one write + one
    /// fdatasync, linked on io_uring). Returns the durable index.
    pub fn write_and_sync_with(&mut self, backend: &mut dyn IoBackend) -> Result<u64> {
        match self.begin_commit()? {
            None => self.sync(),
            Some(commit) => {
                let outcome = backend.write_and_sync(
                    commit.file.as_ref(),
                    &[&commit.header, &commit.body],
                    commit.offset,
                );
                self.finish_commit(outcome)
            }
        }
    }

    /// Frames the staged records as one batch (rolling to a new segment if needed) and
    /// hands it out, so the caller can write and sync it without holding the core.
    /// Until [`finish_commit`](Self::finish_commit), its entries stay readable from the
    /// in-flight body, and new records cannot be staged. `None` if nothing is staged.
    pub fn begin_commit(&mut self) -> Result<Option<PendingCommit>> {
        self.check_poison()?;
        self.check_no_commit_in_flight()?;
        if self.staged.is_empty() {
            return Ok(None);
        }
        let (header, offset) = self.frame_staged()?;
        let active_id = self.active().id;
        for location in self.log.index.iter_mut().rev() {
            if location.residence != Residence::Staged {
                break;
            }
            location.residence = Residence::InFlight;
            location.segment_id = active_id;
        }
        let body = Bytes::from(std::mem::take(&mut self.staged));
        self.staged_records = 0;
        self.staged_entries = 0;
        self.staged_first_entry_index = None;
        self.in_flight = Some(InFlight {
            body: body.clone(),
            batch_offset: offset,
            last_index: self.log.last_index(),
            hard_state: self.log.hard_state,
        });
        Ok(Some(PendingCommit {
            file: Arc::clone(&self.active().file),
            header,
            body,
            offset,
        }))
    }

    /// Completes [`begin_commit`](Self::begin_commit) with the outcome of the write +
    /// fdatasync. Returns the new durable index; a failure poisons the WAL.
    pub fn finish_commit(&mut self, outcome: std::result::Result<(), BackendError>) -> Result<u64> {
        let Some(in_flight) = self.in_flight.as_ref() else {
            return Err(WalError::InvalidOptions(
                "finish_commit without begin_commit".into(),
            ));
        };
        let (batch_offset, last_index, hard_state) = (
            in_flight.batch_offset,
            in_flight.last_index,
            in_flight.hard_state,
        );
        let name = self.active().name.clone();
        match outcome {
            Ok(()) => {}
            Err(BackendError::Write(err)) => {
                return Err(self.poison_with(PoisonCause::WriteFailed, io_err("write", &name, err)))
            }
            Err(BackendError::Sync(err)) => {
                return Err(
                    self.poison_with(PoisonCause::SyncFailed, io_err("fdatasync", &name, err))
                )
            }
        }
        // Nothing can be staged or truncated while a commit is in flight.
        debug_assert_eq!(last_index, self.log.last_index());
        self.finish_staged_write(batch_offset);
        if let Some(done) = self.in_flight.take() {
            // Unique once the backend dropped its reference: hand the allocation back.
            if let Ok(body) = done.body.try_into_mut() {
                let mut buffer = Vec::from(body);
                buffer.clear();
                self.spare_buffer = buffer;
            }
        }
        self.written_index = last_index;
        self.written_next_index = last_index + 1;
        self.written_hard_state = hard_state;
        self.active_unsynced = false;
        self.mark_written_durable();
        self.release_synced_cache(false);
        Ok(self.durable_index)
    }

    fn check_no_commit_in_flight(&self) -> Result<()> {
        if self.in_flight.is_some() {
            return Err(WalError::InvalidOptions(
                "a commit is in flight: finish_commit first".into(),
            ));
        }
        Ok(())
    }

    /// Seals the active segment (syncing it) and starts a new one.
    fn roll(&mut self) -> Result<()> {
        let next_id = self.active().id + 1; // below u64::MAX: recovery refuses that id
        if out_of_range(next_id, self.written_next_index) {
            // Only a directory holding a segment no WAL writes gets here; nothing changed.
            return Err(WalError::Corruption {
                file: self.active().name.clone(),
                offset: 0,
                expected_index: self.written_next_index,
                reason: out_of_range_reason(next_id),
            });
        }
        if self.active_unsynced {
            let active = self.active();
            if let Err(err) = active.file.sync_data() {
                let err = io_err("fdatasync before roll", &active.name.clone(), err);
                return Err(self.poison_with(PoisonCause::SyncFailed, err));
            }
            self.active_unsynced = false;
            // Everything written so far is durable now.
            self.mark_written_durable();
        }
        // The segment is sealed and durable: release the rest of its pages.
        self.release_synced_cache(true);
        if let Err(err) =
            self.create_segment(next_id, self.written_next_index, self.written_hard_state)
        {
            let cause = if matches!(
                err,
                WalError::Poisoned {
                    cause: PoisonCause::SyncFailed,
                    ..
                }
            ) {
                PoisonCause::SyncFailed
            } else {
                PoisonCause::WriteFailed
            };
            return Err(self.poison_with(cause, err));
        }
        Ok(())
    }

    /// Creates, preallocates and syncs a segment that starts with a batch holding
    /// `hard_state`, then syncs the directory.
    fn create_segment(&mut self, id: u64, first_index: u64, hard_state: HardState) -> Result<()> {
        let name = format::segment_file_name(id, first_index);
        let file = self
            .storage
            .create(&name)
            .map_err(|e| io_err("create segment", &name, e))?;
        let size = self.options.segment_size_bytes;
        let allocated = if self.options.preallocate {
            file.allocate(size)
        } else {
            file.set_len(size)
        };
        let allocated = allocated.and_then(|()| {
            if self.options.zero_fill_segments {
                zero_fill(file.as_ref(), size)
            } else {
                Ok(())
            }
        });
        if let Err(err) = allocated {
            let err = io_err("allocate segment", &name, err);
            // Best effort: a half-created segment is also removed by the next recovery.
            if self.storage.remove(&name).is_ok() {
                let _ = self.storage.sync_dir();
            }
            return Err(err);
        }
        let mut body = Vec::with_capacity(HARD_STATE_RECORD_LEN);
        format::encode_hard_state(&mut body, hard_state);
        let fields = BatchHeader {
            body_len: body.len() as u32,
            record_count: 1,
            first_index,
            entry_count: 0,
        };
        let segment_header = format::encode_segment_header(id, first_index);
        let batch_header = format::encode_batch_header(id, fields, &[&body]);
        let trailer = format::encode_batch_trailer(fields.body_len);
        file.write_all_at(&[&segment_header, &batch_header, &body, &trailer], 0)
            .map_err(|e| io_err("write segment header", &name, e))?;
        file.sync_data().map_err(|e| WalError::Poisoned {
            cause: PoisonCause::SyncFailed,
            detail: io_err("fdatasync new segment", &name, e).to_string(),
        })?;
        self.storage.sync_dir().map_err(|e| WalError::Poisoned {
            cause: PoisonCause::SyncFailed,
            detail: io_err("sync_dir", &self.storage.describe(), e).to_string(),
        })?;
        let capacity_bytes = file.len_bytes().map_err(|e| io_err("stat", &name, e))?;
        self.segments.push_back(Segment {
            id,
            name,
            file,
            end_offset: (SEGMENT_HEADER_LEN + FIRST_BATCH_LEN) as u64,
            capacity_bytes,
            view: OnceLock::new(),
            cache_released_to: 0,
        });
        Ok(())
    }

    /// Deletes whole segments, oldest first, while every live entry in them is
    /// `<= up_to_index`; never the active segment. Everything pending is synced first so
    /// that no older state can reappear after a crash. Returns the number removed.
    pub fn compact_prefix(&mut self, up_to_index: u64) -> Result<usize> {
        self.check_poison()?;
        self.write()?;
        self.sync()?;
        let mut removed = 0usize;
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let live = self
                .log
                .index
                .iter()
                .take_while(|l| l.segment_id == oldest.id)
                .count() as u64;
            if live > 0 && self.log.first_index + live - 1 > up_to_index {
                break;
            }
            let name = oldest.name.clone();
            if let Err(err) = self.storage.remove(&name) {
                return Err(io_err("remove segment", &name, err));
            }
            self.segments.pop_front();
            self.log.index.drain(..live as usize);
            self.log.first_index += live;
            removed += 1;
        }
        if removed > 0 {
            if let Err(err) = self.storage.sync_dir() {
                let err = io_err("sync_dir", &self.storage.describe(), err);
                return Err(self.poison_with(PoisonCause::SyncFailed, err));
            }
        }
        Ok(removed)
    }
}

/// Maps `file` as the device holds it. The previous process may have died with
/// written-but-unsynced bytes in the page cache: `fdatasync` writes them (or fails, and
/// recovery stops). A previous failed fsync may have left pages marked clean that were
/// never written ("fsyncgate"): evicting the clean pages makes the map read the device,
/// so recovery never verifies, replays or reports durable bytes that only the cache held.
fn read_disk_truth(file: &dyn StorageFile) -> Result<FileView> {
    let name = file.name();
    file.sync_data()
        .map_err(|e| io_err("fdatasync during recovery", name, e))?;
    file.evict_cache()
        .map_err(|e| io_err("evict cached pages", name, e))?;
    file.view().map_err(|e| io_err("map", name, e))
}

/// Overwrites `[0, size_bytes)` of `file` with zeros (1 MiB writes).
fn zero_fill(file: &dyn StorageFile, size_bytes: u64) -> std::io::Result<()> {
    const CHUNK_BYTES: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK_BYTES.min(size_bytes) as usize];
    let mut offset = 0;
    while offset < size_bytes {
        let len = CHUNK_BYTES.min(size_bytes - offset) as usize;
        file.write_all_at(&[&zeros[..len]], offset)?;
        offset += len as u64;
    }
    Ok(())
}

/// True for a segment name no WAL writes: first index 0, or the last possible id.
pub(crate) fn out_of_range(segment_id: u64, first_index: u64) -> bool {
    first_index == 0 || segment_id == u64::MAX
}

/// Why [`out_of_range`] refused a segment name (recovery and `inspect` say the same).
pub(crate) fn out_of_range_reason(segment_id: u64) -> String {
    if segment_id == u64::MAX {
        "segment name gives id u64::MAX, which leaves no next segment id".into()
    } else {
        "segment name gives first index 0".into()
    }
}

/// Looks for any valid batch after the bad spot (in the same segment and all later
/// segments). Returns its (segment position, offset).
fn find_valid_batch_after(
    names: &[(u64, u64, String)],
    views: &[FileView],
    bad_position: usize,
    bad_offset: u64,
) -> Option<(usize, u64)> {
    for position in bad_position..names.len() {
        let bytes: &[u8] = &views[position];
        let id = names[position].0;
        let start = if position == bad_position {
            bad_offset as usize + 1
        } else {
            0
        };
        let mut search = start;
        while search + BATCH_HEADER_LEN <= bytes.len() {
            let found = bytes[search..].windows(4).position(|w| w == BATCH_MAGIC);
            let Some(found) = found else { break };
            let candidate = search + found;
            if let BatchProbe::Valid(_) = format::probe_batch(id, bytes, candidate) {
                return Some((position, candidate as u64));
            }
            search = candidate + 1;
        }
    }
    None
}

/// The one rule for changing the hard state, shared by the synchronous core and the
/// group-commit queue: the term never decreases and a vote is never changed within a
/// term (Raft's "one vote per term" must survive crashes).
pub(crate) fn check_hard_state_transition(current: HardState, next: HardState) -> Result<()> {
    if next.term < current.term {
        return Err(WalError::HardStateRegression {
            reason: format!(
                "term {} is below the current term {}",
                next.term, current.term
            ),
        });
    }
    if next.term == current.term && current.vote != 0 && next.vote != current.vote {
        return Err(WalError::HardStateRegression {
            reason: format!(
                "vote for {} in term {} after voting for {}",
                next.vote, current.term, current.vote
            ),
        });
    }
    Ok(())
}
