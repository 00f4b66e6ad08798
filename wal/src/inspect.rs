//! A read-only scanner of a WAL's segment bytes, for offline inspection (`tally-wal`).
//!
//! Why it exists: an operator must be able to ask "is this log intact, and what would
//! recovery do with it?" about a directory that a server may be using, or about a copy,
//! without changing a byte. [`WalCore::open`](crate::WalCore::open) cannot answer that:
//! it takes the directory lock and *repairs* (zeroes a torn tail, removes segments).
//!
//! The scanner takes the segment files as byte slices (the caller maps them read-only),
//! never writes, never locks, and classifies the log with **exactly the rules of
//! recovery** (`core.rs`, `WalCore::recover`):
//! 1. files are the names that parse as segment names, ordered by (id, first index);
//!    a gap in the ids is corruption;
//! 2. per segment: a header that does not decode or disagrees with the name is a *bad
//!    spot* at offset 0; a segment that does not start right after the previous one ends
//!    is corruption; batches are probed one after the other until the clean end (zeros);
//!    an invalid batch is a bad spot; a *valid* batch whose records do not fit the log
//!    (index gap, term going back, malformed body, wrong counts) is corruption;
//! 3. a bad spot followed by any valid batch (later in that segment, or anywhere in a
//!    later segment) is corruption, and so is a bad spot that is a complete batch
//!    damaged after it was written (`format::damaged_complete_batch`, version 2
//!    segments); otherwise it is a torn tail, and recovery would zero
//!    the bad segment from the bad spot to its last non-zero byte (or remove the segment
//!    if the bad spot is at or before its first batch) and remove every later segment.
//!
//! Recovery's rules live in private code of `core.rs`, so they are mirrored here rather
//! than shared; `tests` below runs recovery and this scanner over the same damaged logs
//! (random operations, random damage) and asserts identical verdicts, reports and
//! surviving logs, so a change to either side that is not made to the other fails.

use std::fmt;

use crate::format::{
    self, BatchHeader, BatchProbe, HardState, Record, BATCH_HEADER_LEN, BATCH_MAGIC,
    SEGMENT_HEADER_LEN,
};

/// One segment file handed to the scanner: its name in the directory and its bytes.
#[derive(Clone, Copy, Debug)]
pub struct SegmentBytes<'a> {
    /// File name inside the WAL directory.
    pub name: &'a str,
    /// The whole file (including preallocated zeros).
    pub bytes: &'a [u8],
}

/// What recovery would do to the files of a torn tail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TailAction {
    /// Overwrite `len_bytes` bytes at `offset` of `file` with zeros.
    Zero {
        /// Segment file name (the segment of the bad spot).
        file: String,
        /// Byte offset of the bad spot in `file`.
        offset: u64,
        /// Bytes from `offset` to the last non-zero byte of `file`.
        len_bytes: u64,
        /// Why the bytes at `offset` are not a valid batch.
        reason: String,
    },
    /// Remove `file` (it holds `len_bytes` bytes up to its last non-zero byte).
    Remove {
        /// Segment file name.
        file: String,
        /// Bytes of `file` up to its last non-zero byte.
        len_bytes: u64,
        /// `"segment has no valid batch"` (the bad spot is at or before its first batch)
        /// or `"after the torn tail"` (a later segment).
        reason: String,
    },
}

/// The classification of a log, as recovery would make it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every batch is valid up to a clean end: recovery changes nothing.
    Clean,
    /// The log ends with a torn write: recovery drops it (see `actions`) and opens the
    /// log with every entry before it.
    TornTail {
        /// Segment holding the first bad spot.
        file: String,
        /// Offset of the bad spot in `file`.
        offset: u64,
        /// Entry index recovery expected next there.
        expected_index: u64,
        /// Why the bytes there are not a valid batch.
        reason: String,
        /// What recovery would do, in the order it does it.
        actions: Vec<TailAction>,
    },
    /// Damage followed by valid data, or valid data that cannot follow the log:
    /// recovery refuses to open the log (the fields are those of
    /// [`WalError::Corruption`](crate::WalError::Corruption)).
    Corruption {
        /// Segment file name in which the damage starts.
        file: String,
        /// Byte offset in `file` of the bad or misfitting batch (0 for a bad segment).
        offset: u64,
        /// The entry index recovery expected next at `offset`.
        expected_index: u64,
        /// What is wrong and why it cannot be a torn write.
        reason: String,
    },
}

impl Verdict {
    /// True for [`Verdict::Clean`].
    pub fn is_clean(&self) -> bool {
        matches!(self, Verdict::Clean)
    }
}

/// A run of consecutive entries with the same term in the logical log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermRun {
    /// Index of the first entry of the run.
    pub first_index: u64,
    /// Term of every entry of the run.
    pub term: u64,
}

/// The logical log (what recovery's in-memory index would hold), without payloads:
/// the index range and the term of every index as runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogShape {
    /// First index, or the next index when empty. Invariant: `>= 1`.
    pub first_index: u64,
    /// Number of entries. Entries are `first_index .. first_index + n_entries`.
    pub n_entries: u64,
    /// Term runs covering exactly the entries, in index order; consecutive runs have
    /// strictly increasing `first_index` and non-decreasing terms.
    pub term_runs: Vec<TermRun>,
    /// The last hard state record replayed.
    pub hard_state: HardState,
}

impl LogShape {
    fn new(first_index: u64) -> Self {
        LogShape {
            first_index,
            n_entries: 0,
            term_runs: Vec::new(),
            hard_state: HardState::default(),
        }
    }

    /// Last index (`first_index - 1` when empty).
    pub fn last_index(&self) -> u64 {
        // Cannot overflow: `first_index >= 1` and the last index is a u64 (as recovery).
        self.first_index - 1 + self.n_entries
    }

    /// Term of the last entry, if any.
    pub fn last_term(&self) -> Option<u64> {
        self.term_runs.last().map(|run| run.term)
    }

    /// Term of the entry at `index`, if the log holds it.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index < self.first_index || index > self.last_index() || self.n_entries == 0 {
            return None;
        }
        let position = self
            .term_runs
            .partition_point(|run| run.first_index <= index);
        position
            .checked_sub(1)
            .map(|position| self.term_runs[position].term)
    }

    /// Drops entries `>= from_index` (`from_index` within `first_index..=last+1`).
    fn truncate_from(&mut self, from_index: u64) {
        debug_assert!(from_index >= self.first_index && from_index <= self.last_index() + 1);
        self.n_entries = from_index - self.first_index;
        while self
            .term_runs
            .last()
            .is_some_and(|run| run.first_index >= from_index)
        {
            self.term_runs.pop();
        }
    }

    fn clear_at(&mut self, next_index: u64) {
        self.first_index = next_index;
        self.n_entries = 0;
        self.term_runs.clear();
    }

    /// Applies one record with the rules (and messages) of recovery's `LogState::apply`.
    fn apply(&mut self, record: &Record) -> Result<(), String> {
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
                    return Err(format!("entry index {index} leaves no next index"));
                }
                if let Some(previous_term) = self.last_term() {
                    if term < previous_term {
                        return Err(format!(
                            "entry {index} has term {term} below the previous term {previous_term}"
                        ));
                    }
                }
                if self.last_term() != Some(term) {
                    self.term_runs.push(TermRun {
                        first_index: index,
                        term,
                    });
                }
                self.n_entries += 1;
            }
            Record::HardState(hard_state) => self.hard_state = hard_state,
            Record::TruncateSuffix { from_index } => {
                if from_index < self.first_index {
                    self.clear_at(from_index.max(1));
                } else if from_index <= self.last_index() + 1 {
                    self.truncate_from(from_index);
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
                self.clear_at(next_index);
            }
        }
        debug_assert!(self.first_index >= 1);
        Ok(())
    }
}

/// What the scanner found in one segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    /// File name inside the WAL directory.
    pub name: String,
    /// Segment id from the file name.
    pub segment_id: u64,
    /// First index from the file name.
    pub first_index: u64,
    /// File length including preallocated space.
    pub size_bytes: u64,
    /// False if the scan stopped before this segment (an earlier bad spot or corruption).
    pub scanned: bool,
    /// End of the last valid batch (where the next batch would go).
    pub end_offset: u64,
    /// Valid batches replayed.
    pub n_batches: u64,
    /// Entry records in those batches.
    pub n_entries: u64,
    /// Payload bytes of those entries.
    pub payload_bytes: u64,
    /// Lowest and highest entry index written in this segment (records, before any
    /// later truncation).
    pub entry_index_range: Option<(u64, u64)>,
}

/// Everything a scan found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanReport {
    /// Segment files in recovery order.
    pub segments: Vec<SegmentSummary>,
    /// What recovery would make of the log.
    pub verdict: Verdict,
    /// The log up to the end of the scan: for a clean log or a torn tail, exactly what
    /// recovery opens; for corruption, the log up to the corrupt spot.
    pub log: LogShape,
    /// Valid batches replayed, over all segments.
    pub n_batches: u64,
    /// Entry records replayed (including entries later truncated).
    pub n_entry_records: u64,
    /// Bytes of segment files examined (header + batches; the zero tails excluded).
    pub scanned_bytes: u64,
}

/// Why the scanner could not run at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanError {
    /// No file in the list has a segment name: this is not a WAL directory (recovery
    /// would create a new, empty log here).
    NoSegments,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanError::NoSegments => write!(f, "no WAL segment files"),
        }
    }
}

impl std::error::Error for ScanError {}

/// A valid batch with its records, handed to a [`ScanVisitor`].
pub struct VisitedBatch<'a> {
    /// Position of the segment in [`ScanReport::segments`].
    pub segment_position: usize,
    /// File name of that segment.
    pub segment_name: &'a str,
    /// Offset of the batch header in the segment file.
    pub offset: u64,
    /// The decoded batch header (its CRC matched).
    pub header: BatchHeader,
    /// The batch body; payloads are `body[payload_offset..][..payload_len]`.
    pub body: &'a [u8],
}

/// Receives what the scan replays, in log order. Only batches that recovery would
/// replay successfully are visited, each once, after all its records were checked.
pub trait ScanVisitor {
    /// A valid batch; call [`format::records`] on `batch.body` for its records (they
    /// are known to parse and to fit the log).
    fn batch(&mut self, batch: &VisitedBatch<'_>);
}

/// A visitor that ignores everything.
pub struct NoVisitor;

impl ScanVisitor for NoVisitor {
    fn batch(&mut self, _batch: &VisitedBatch<'_>) {}
}

/// Segment-named files among `names`, in recovery order, as indexes into `names` with
/// (segment id, first index).
pub fn segment_order(names: &[&str]) -> Vec<(u64, u64, usize)> {
    let mut order: Vec<(u64, u64, usize)> = names
        .iter()
        .enumerate()
        .filter_map(|(position, name)| {
            format::parse_segment_file_name(name).map(|(id, first)| (id, first, position))
        })
        .collect();
    order.sort_by(|a, b| (a.0, a.1, names[a.2]).cmp(&(b.0, b.1, names[b.2])));
    order
}

fn last_nonzero_end(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |p| p as u64 + 1)
}

/// Scans `files` (any files of a WAL directory; names that are not segment names are
/// ignored, as recovery ignores them) and classifies the log. Reads only `files`.
pub fn scan(
    files: &[SegmentBytes<'_>],
    visitor: &mut dyn ScanVisitor,
) -> Result<ScanReport, ScanError> {
    let names: Vec<&str> = files.iter().map(|f| f.name).collect();
    let order = segment_order(&names);
    if order.is_empty() {
        return Err(ScanError::NoSegments);
    }
    let segments: Vec<(u64, u64, SegmentBytes<'_>)> = order
        .iter()
        .map(|&(id, first, position)| (id, first, files[position]))
        .collect();
    let mut report = ScanReport {
        segments: segments
            .iter()
            .map(|(id, first, file)| SegmentSummary {
                name: file.name.to_string(),
                segment_id: *id,
                first_index: *first,
                size_bytes: file.bytes.len() as u64,
                scanned: false,
                end_offset: SEGMENT_HEADER_LEN as u64,
                n_batches: 0,
                n_entries: 0,
                payload_bytes: 0,
                entry_index_range: None,
            })
            .collect(),
        verdict: Verdict::Clean,
        log: LogShape::new(segments[0].1.max(1)),
        n_batches: 0,
        n_entry_records: 0,
        scanned_bytes: 0,
    };
    if let Some((id, _, file)) = segments
        .iter()
        .find(|(id, first, _)| crate::core::out_of_range(*id, *first))
    {
        report.verdict = Verdict::Corruption {
            file: file.name.to_string(),
            offset: 0,
            expected_index: 1,
            reason: crate::core::out_of_range_reason(*id),
        };
        return Ok(report);
    }
    for pair in segments.windows(2) {
        if pair[0].0.checked_add(1) != Some(pair[1].0) {
            report.verdict = Verdict::Corruption {
                file: pair[1].2.name.to_string(),
                offset: 0,
                expected_index: pair[1].1,
                reason: format!(
                    "segment ids jump from {} to {}: a segment is missing",
                    pair[0].0, pair[1].0
                ),
            };
            return Ok(report);
        }
    }

    // (segment position, offset, reason) of the first bad spot.
    let mut bad_spot: Option<(usize, u64, String)> = None;
    let mut versions = vec![format::FORMAT_VERSION; segments.len()];
    'segments: for (position, (id, first_index, file)) in segments.iter().enumerate() {
        report.segments[position].scanned = true;
        let bytes = file.bytes;
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
        if position > 0 && *first_index != report.log.last_index() + 1 {
            report.verdict = Verdict::Corruption {
                file: file.name.to_string(),
                offset: 0,
                expected_index: report.log.last_index() + 1,
                reason: format!(
                    "segment starts at index {first_index}, the log before it ends at {}",
                    report.log.last_index()
                ),
            };
            return Ok(report);
        }
        report.scanned_bytes += SEGMENT_HEADER_LEN as u64;
        let mut offset = SEGMENT_HEADER_LEN;
        loop {
            match format::probe_batch(*id, bytes, offset) {
                BatchProbe::CleanEnd => break,
                BatchProbe::Invalid(reason) => {
                    bad_spot = Some((position, offset as u64, reason));
                    break 'segments;
                }
                BatchProbe::Valid(header) => {
                    let body_start = offset + BATCH_HEADER_LEN;
                    let body = &bytes[body_start..body_start + header.body_len as usize];
                    let summary = &mut report.segments[position];
                    if let Err(reason) = replay_batch(&mut report.log, summary, body, header) {
                        report.verdict = Verdict::Corruption {
                            file: file.name.to_string(),
                            offset: offset as u64,
                            expected_index: report.log.last_index() + 1,
                            reason,
                        };
                        return Ok(report);
                    }
                    summary.n_batches += 1;
                    report.n_batches += 1;
                    report.n_entry_records += header.entry_count as u64;
                    visitor.batch(&VisitedBatch {
                        segment_position: position,
                        segment_name: file.name,
                        offset: offset as u64,
                        header,
                        body,
                    });
                    let batch_len = format::valid_batch_len(bytes, offset, &header);
                    offset += batch_len;
                    report.scanned_bytes += batch_len as u64;
                    report.segments[position].end_offset = offset as u64;
                }
            }
        }
    }

    let Some((bad_position, bad_offset, reason)) = bad_spot else {
        return Ok(report);
    };
    let bad_name = segments[bad_position].2.name.to_string();
    let expected_index = report.log.last_index() + 1;
    if let Some((valid_position, valid_offset)) =
        find_valid_batch_after(&segments, bad_position, bad_offset)
    {
        report.verdict = Verdict::Corruption {
            file: bad_name,
            offset: bad_offset,
            expected_index,
            reason: format!(
                "bad batch ({reason}) followed by a valid batch in {} at offset {valid_offset}",
                segments[valid_position].2.name
            ),
        };
        return Ok(report);
    }
    let bad_bytes = segments[bad_position].2.bytes;
    if let Some(detail) =
        format::damaged_complete_batch(versions[bad_position], bad_bytes, bad_offset as usize)
    {
        report.verdict = Verdict::Corruption {
            file: bad_name,
            offset: bad_offset,
            expected_index,
            reason: format!("bad batch ({reason}): {detail}"),
        };
        return Ok(report);
    }
    let mut actions = Vec::new();
    let bad_segment_has_batches = bad_offset > SEGMENT_HEADER_LEN as u64;
    let keep_segments = if bad_segment_has_batches {
        bad_position + 1
    } else {
        bad_position
    };
    if bad_segment_has_batches {
        let len_bytes = last_nonzero_end(segments[bad_position].2.bytes).saturating_sub(bad_offset);
        actions.push(TailAction::Zero {
            file: bad_name.clone(),
            offset: bad_offset,
            len_bytes,
            reason: reason.clone(),
        });
    }
    for (position, (_, _, file)) in segments.iter().enumerate().skip(keep_segments) {
        actions.push(TailAction::Remove {
            file: file.name.to_string(),
            len_bytes: last_nonzero_end(file.bytes),
            reason: if position == bad_position {
                "segment has no valid batch".into()
            } else {
                "after the torn tail".into()
            },
        });
    }
    if keep_segments == 0 {
        // Nothing valid survives: recovery restarts the log empty at the first
        // segment's index (it creates a fresh segment there).
        let mut fresh = LogShape::new(segments[0].1);
        fresh.hard_state = HardState::default();
        report.log = fresh;
    }
    report.verdict = Verdict::TornTail {
        file: bad_name,
        offset: bad_offset,
        expected_index,
        reason,
        actions,
    };
    Ok(report)
}

/// Replays one valid batch into `log` with the rules of recovery's `replay_batch`.
fn replay_batch(
    log: &mut LogShape,
    summary: &mut SegmentSummary,
    body: &[u8],
    header: BatchHeader,
) -> Result<(), String> {
    let (mut n_records, mut n_entries) = (0u32, 0u32);
    for record in format::records(body) {
        let record = record.map_err(|e| e.to_string())?;
        if let Record::Entry {
            index, payload_len, ..
        } = record
        {
            if n_entries == 0 && index != header.first_index {
                return Err(format!(
                    "first entry {index} differs from the batch header's first index {}",
                    header.first_index
                ));
            }
            // Recovery also rejects payloads beyond max(max_entry_size, u32::MAX); the
            // length field is a u32, so no payload can exceed that bound.
            debug_assert!(payload_len as u64 <= u32::MAX as u64);
            n_entries += 1;
            summary.n_entries += 1;
            summary.payload_bytes += payload_len as u64;
            summary.entry_index_range = Some(match summary.entry_index_range {
                None => (index, index),
                Some((low, high)) => (low.min(index), high.max(index)),
            });
        }
        log.apply(&record)?;
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

/// Any valid batch after the bad spot (later in its segment, or anywhere in a later
/// segment), as recovery's `find_valid_batch_after` looks for it.
fn find_valid_batch_after(
    segments: &[(u64, u64, SegmentBytes<'_>)],
    bad_position: usize,
    bad_offset: u64,
) -> Option<(usize, u64)> {
    for (position, (id, _, file)) in segments.iter().enumerate().skip(bad_position) {
        let start = if position == bad_position {
            bad_offset as usize + 1
        } else {
            0
        };
        if let Some(offset) = find_valid_batch_in(*id, file.bytes, start) {
            return Some((position, offset));
        }
    }
    None
}

/// The first offset `>= start` in `bytes` where a valid batch of segment `segment_id`
/// starts.
pub fn find_valid_batch_in(segment_id: u64, bytes: &[u8], start: usize) -> Option<u64> {
    let mut search = start;
    while search + BATCH_HEADER_LEN <= bytes.len() {
        let found = bytes[search..].windows(4).position(|w| w == BATCH_MAGIC)?;
        let candidate = search + found;
        if let BatchProbe::Valid(_) = format::probe_batch(segment_id, bytes, candidate) {
            return Some(candidate as u64);
        }
        search = candidate + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Entry, WalCore, WalOptions};
    use crate::error::WalError;
    use crate::storage::{SimStorage, Storage, Tear};
    use bytes::Bytes;
    use proptest::prelude::*;

    fn options() -> WalOptions {
        WalOptions {
            segment_size_bytes: 2048,
            max_entry_size_bytes: 200,
            preallocate: false,
            tolerant_recovery: false,
            first_index_of_new_log: 1,
            zero_fill_segments: false,
            release_synced_pages: true,
        }
    }

    /// The files of a simulated directory, as the scanner's caller would hand them.
    fn snapshot(storage: &SimStorage) -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        for name in storage.list().unwrap_or_default() {
            if let Some(bytes) = storage.file_contents(&name) {
                files.push((name, bytes));
            }
        }
        files
    }

    fn scan_snapshot(files: &[(String, Vec<u8>)]) -> Result<ScanReport, ScanError> {
        let inputs: Vec<SegmentBytes<'_>> = files
            .iter()
            .map(|(name, bytes)| SegmentBytes { name, bytes })
            .collect();
        scan(&inputs, &mut NoVisitor)
    }

    #[derive(Clone, Debug)]
    enum Op {
        Append {
            n_entries: u8,
            term_step: u8,
            payload_len: u8,
        },
        HardState {
            term_step: u8,
            vote: u8,
        },
        TruncateBack {
            entries: u8,
        },
        Reset {
            skip: u8,
        },
        Sync,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1u8..6, 0u8..2, 0u8..150).prop_map(|(n_entries, term_step, payload_len)| Op::Append { n_entries, term_step, payload_len }),
            1 => (0u8..2, 0u8..4).prop_map(|(term_step, vote)| Op::HardState { term_step, vote }),
            1 => (0u8..4).prop_map(|entries| Op::TruncateBack { entries }),
            1 => (0u8..3).prop_map(|skip| Op::Reset { skip }),
            3 => Just(Op::Sync),
        ]
    }

    #[derive(Clone, Debug)]
    enum Damage {
        /// Crash keeping a seeded prefix of the unsynced bytes.
        Crash(u64),
        /// Flip one bit at a position chosen by the seed among the non-zero region.
        FlipBit(u64),
        /// Zero everything from a seeded position of a seeded segment.
        ZeroFrom(u64),
        /// Remove a seeded segment file.
        RemoveSegment(u64),
        /// Write garbage bytes at a seeded place.
        Garbage(u64),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            any::<u64>().prop_map(Damage::Crash),
            any::<u64>().prop_map(Damage::FlipBit),
            any::<u64>().prop_map(Damage::ZeroFrom),
            any::<u64>().prop_map(Damage::RemoveSegment),
            any::<u64>().prop_map(Damage::Garbage),
        ]
    }

    fn run_ops(storage: &SimStorage, ops: &[Op]) {
        let Ok(mut wal) = WalCore::open(storage.clone(), options()) else {
            return;
        };
        let mut term = 1u64;
        let mut hard_state = HardState { term: 1, vote: 0 };
        for op in ops {
            let result = match *op {
                Op::Append {
                    n_entries,
                    term_step,
                    payload_len,
                } => {
                    term = term.max(wal.last_term().unwrap_or(0)) + term_step as u64;
                    let first = wal.last_index() + 1;
                    let entries: Vec<Entry> = (first..first + n_entries as u64)
                        .map(|index| Entry {
                            index,
                            term,
                            kind: (index % 3) as u8,
                            payload: Bytes::from(vec![index as u8; payload_len as usize]),
                        })
                        .collect();
                    wal.append(&entries).and_then(|()| wal.write())
                }
                Op::HardState { term_step, vote } => {
                    hard_state.term += term_step as u64;
                    hard_state.vote = if term_step > 0 {
                        vote as u64
                    } else {
                        hard_state.vote
                    };
                    wal.set_hard_state(hard_state)
                }
                Op::TruncateBack { entries } => {
                    let from = (wal.last_index() + 1)
                        .saturating_sub(entries as u64)
                        .max(wal.first_index());
                    wal.truncate_suffix(from)
                }
                Op::Reset { skip } => wal.reset(wal.last_index() + 1 + skip as u64),
                Op::Sync => wal.write().and_then(|()| wal.sync().map(|_| ())),
            };
            if result.is_err() {
                return;
            }
        }
        let _ = wal.write();
    }

    fn segment_names(storage: &SimStorage) -> Vec<String> {
        let mut names: Vec<String> = storage
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| format::parse_segment_file_name(n).is_some())
            .collect();
        names.sort();
        names
    }

    fn apply_damage(storage: &SimStorage, damage: &Damage) {
        let names = segment_names(storage);
        let pick = |seed: u64| -> Option<(String, Vec<u8>)> {
            if names.is_empty() {
                return None;
            }
            let name = names[(seed % names.len() as u64) as usize].clone();
            let bytes = storage.file_contents(&name)?;
            Some((name, bytes))
        };
        match *damage {
            Damage::Crash(seed) => storage.crash(Tear::Seeded(seed)),
            Damage::FlipBit(seed) => {
                storage.crash(Tear::DiscardUnsynced);
                if let Some((name, bytes)) = pick(seed) {
                    let end = last_nonzero_end(&bytes).max(1);
                    let at = (seed >> 8) % end;
                    let flipped =
                        bytes.get(at as usize).copied().unwrap_or(0) ^ (1 << (seed >> 60 & 7));
                    let _ = storage.corrupt(&name, at, &[flipped]);
                }
            }
            Damage::ZeroFrom(seed) => {
                storage.crash(Tear::DiscardUnsynced);
                if let Some((name, bytes)) = pick(seed) {
                    let end = last_nonzero_end(&bytes).max(1);
                    let at = (seed >> 8) % end;
                    let zeros = vec![0u8; (end - at) as usize];
                    let _ = storage.corrupt(&name, at, &zeros);
                }
            }
            Damage::RemoveSegment(seed) => {
                storage.crash(Tear::DiscardUnsynced);
                if let Some((name, _)) = pick(seed) {
                    let _ = storage.remove(&name);
                }
            }
            Damage::Garbage(seed) => {
                storage.crash(Tear::Seeded(seed));
                if let Some((name, bytes)) = pick(seed) {
                    let end = last_nonzero_end(&bytes).max(1);
                    let at = (seed >> 8) % end;
                    let garbage: Vec<u8> = (0..(seed % 40 + 1))
                        .map(|i| (seed >> (i % 8)) as u8 | 1)
                        .collect();
                    let _ = storage.corrupt(&name, at, &garbage);
                }
            }
        }
    }

    /// Runs the scanner, then recovery, on the same directory and checks they agree.
    fn assert_scanner_matches_recovery(storage: &SimStorage) {
        let before = snapshot(storage);
        let scanned = scan_snapshot(&before);
        // The scanner never changes the files.
        assert_eq!(snapshot(storage), before);
        let recovered = WalCore::open(storage.clone(), options());
        let report = match scanned {
            Err(ScanError::NoSegments) => {
                assert!(
                    recovered.is_ok(),
                    "recovery failed on a directory without segments"
                );
                return;
            }
            Ok(report) => report,
        };
        match (&report.verdict, recovered) {
            (
                Verdict::Corruption {
                    file,
                    offset,
                    expected_index,
                    reason,
                },
                Err(WalError::Corruption {
                    file: r_file,
                    offset: r_offset,
                    expected_index: r_expected,
                    reason: r_reason,
                }),
            ) => {
                assert_eq!(
                    (file, offset, expected_index, reason),
                    (&r_file, &r_offset, &r_expected, &r_reason)
                );
                // Recovery refused to open and changed nothing.
                assert_eq!(snapshot(storage), before);
            }
            (verdict, Ok(wal)) if !matches!(verdict, Verdict::Corruption { .. }) => {
                let recovery = wal.recovery_report();
                let expected_dropped: Vec<(String, u64, u64, String, bool)> = match verdict {
                    Verdict::TornTail { actions, .. } => actions
                        .iter()
                        .map(|action| match action {
                            TailAction::Zero {
                                file,
                                offset,
                                len_bytes,
                                reason,
                            } => (file.clone(), *offset, *len_bytes, reason.clone(), false),
                            TailAction::Remove {
                                file,
                                len_bytes,
                                reason,
                            } => (file.clone(), 0, *len_bytes, reason.clone(), true),
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let dropped: Vec<(String, u64, u64, String, bool)> = recovery
                    .dropped
                    .iter()
                    .map(|d| {
                        (
                            d.file.clone(),
                            d.offset,
                            d.len_bytes,
                            d.reason.clone(),
                            d.file_removed,
                        )
                    })
                    .collect();
                assert_eq!(dropped, expected_dropped, "verdict {verdict:?}");
                assert_eq!(wal.first_index(), report.log.first_index);
                assert_eq!(wal.last_index(), report.log.last_index());
                assert_eq!(wal.hard_state(), report.log.hard_state);
                for index in wal.first_index()..=wal.last_index() {
                    assert_eq!(wal.term_at(index).ok(), report.log.term_at(index));
                }
                if verdict.is_clean() {
                    assert_eq!(recovery.batches_replayed, report.n_batches);
                }
            }
            (verdict, recovered) => panic!(
                "scanner says {verdict:?}, recovery says {:?}",
                recovered.map(|_| "opened")
            ),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn scanner_verdict_matches_recovery_after_random_damage(
            ops in proptest::collection::vec(op(), 1..60),
            damage in damage(),
        ) {
            let storage = SimStorage::new();
            run_ops(&storage, &ops);
            apply_damage(&storage, &damage);
            assert_scanner_matches_recovery(&storage);
        }
    }

    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = *state;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    /// A fixed corpus of seeded scenarios: besides agreeing with recovery on each, the
    /// corpus must produce every kind of verdict, so the comparison is not vacuous.
    #[test]
    fn seeded_damage_corpus_agrees_with_recovery_and_covers_every_verdict() {
        let (mut clean, mut torn_zero, mut torn_remove, mut corruption) = (0, 0, 0, 0);
        for seed in 0..300u64 {
            let mut rng = seed;
            let n_ops = 5 + splitmix(&mut rng) % 50;
            let ops: Vec<Op> = (0..n_ops)
                .map(|_| {
                    let r = splitmix(&mut rng);
                    match r % 12 {
                        0..=5 => Op::Append {
                            n_entries: (1 + (r >> 8) % 5) as u8,
                            term_step: ((r >> 16) % 2) as u8,
                            payload_len: ((r >> 24) % 150) as u8,
                        },
                        6 => Op::HardState {
                            term_step: ((r >> 8) % 2) as u8,
                            vote: ((r >> 16) % 4) as u8,
                        },
                        7 => Op::TruncateBack {
                            entries: ((r >> 8) % 4) as u8,
                        },
                        8 => Op::Reset {
                            skip: ((r >> 8) % 3) as u8,
                        },
                        _ => Op::Sync,
                    }
                })
                .collect();
            let r = splitmix(&mut rng);
            let damage = match seed % 5 {
                0 => Damage::Crash(r),
                1 => Damage::FlipBit(r),
                2 => Damage::ZeroFrom(r),
                3 => Damage::RemoveSegment(r),
                _ => Damage::Garbage(r),
            };
            let storage = SimStorage::new();
            run_ops(&storage, &ops);
            apply_damage(&storage, &damage);
            if let Ok(report) = scan_snapshot(&snapshot(&storage)) {
                match &report.verdict {
                    Verdict::Clean => clean += 1,
                    Verdict::TornTail { actions, .. } => {
                        if actions.iter().any(|a| matches!(a, TailAction::Zero { .. })) {
                            torn_zero += 1;
                        }
                        if actions
                            .iter()
                            .any(|a| matches!(a, TailAction::Remove { .. }))
                        {
                            torn_remove += 1;
                        }
                    }
                    Verdict::Corruption { .. } => corruption += 1,
                }
            }
            assert_scanner_matches_recovery(&storage);
        }
        assert!(
            clean > 0 && torn_zero > 0 && torn_remove > 0 && corruption > 0,
            "corpus too narrow: clean {clean}, torn/zero {torn_zero}, torn/remove {torn_remove}, corruption {corruption}"
        );
    }

    #[test]
    fn clean_log_scans_clean_with_every_entry() {
        let storage = SimStorage::new();
        let ops: Vec<Op> = (0..40)
            .map(|i| {
                if i % 4 == 3 {
                    Op::Sync
                } else {
                    Op::Append {
                        n_entries: 3,
                        term_step: (i % 7 == 0) as u8,
                        payload_len: 60,
                    }
                }
            })
            .collect();
        run_ops(&storage, &ops);
        storage.crash(Tear::DiscardUnsynced);
        let files = snapshot(&storage);
        let report = scan_snapshot(&files).expect("segments");
        assert_eq!(report.verdict, Verdict::Clean);
        assert!(report.segments.len() > 2, "test needs several segments");
        assert_eq!(report.log.n_entries, 90);
        assert_scanner_matches_recovery(&storage);
    }

    #[test]
    fn flipped_bit_in_a_sealed_segment_is_corruption_not_a_torn_tail() {
        let storage = SimStorage::new();
        let ops: Vec<Op> = (0..30)
            .map(|_| Op::Append {
                n_entries: 2,
                term_step: 0,
                payload_len: 100,
            })
            .chain([Op::Sync])
            .collect();
        run_ops(&storage, &ops);
        let names = segment_names(&storage);
        assert!(names.len() >= 2);
        let first = storage.file_contents(&names[0]).expect("segment");
        let at = SEGMENT_HEADER_LEN + BATCH_HEADER_LEN + 40;
        storage
            .corrupt(&names[0], at as u64 + 200, &[first[at + 200] ^ 4])
            .expect("corrupt");
        let report = scan_snapshot(&snapshot(&storage)).expect("segments");
        assert!(
            matches!(report.verdict, Verdict::Corruption { .. }),
            "{:?}",
            report.verdict
        );
        assert_scanner_matches_recovery(&storage);
    }

    #[test]
    fn term_at_follows_truncations() {
        let mut log = LogShape::new(1);
        let entry = |index, term| Record::Entry {
            index,
            term,
            kind: 0,
            payload_offset: 0,
            payload_len: 0,
        };
        for (index, term) in [(1, 1), (2, 1), (3, 2), (4, 3)] {
            log.apply(&entry(index, term)).expect("append");
        }
        log.apply(&Record::TruncateSuffix { from_index: 3 })
            .expect("truncate");
        log.apply(&entry(3, 4)).expect("append after truncate");
        assert_eq!(
            (1..=4).map(|i| log.term_at(i)).collect::<Vec<_>>(),
            vec![Some(1), Some(1), Some(4), None]
        );
        assert!(log.apply(&entry(5, 4)).is_err(), "gap accepted");
        assert!(log.apply(&entry(4, 3)).is_err(), "term regression accepted");
    }
}
