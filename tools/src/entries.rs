//! Walking every entry record of a log and telling which ones are still part of the
//! log recovery would open ("live") and which a later truncate-suffix or reset record
//! superseded.
//!
//! A record stream is append-only: a truncation is a record written after the entries
//! it removes. So an entry record is superseded exactly when some *later* cut record
//! (truncate-suffix from `i`, or reset, which cuts everything) has `i <= index`. One scan
//! collects the cuts with their position in the stream (the number of entry records
//! before them); a suffix minimum over the cuts then answers "is this entry cut later?"
//! in O(1) during a second scan that streams payloads from the mapped files, so memory
//! stays proportional to the number of cuts, not of entries.

use tally_wal::format::{records, Record};
use tally_wal::inspect::{ScanReport, ScanVisitor, VisitedBatch};

use crate::error::ToolError;
use crate::source::WalDir;

/// One entry record.
pub struct EntryRecord<'a> {
    pub index: u64,
    pub term: u64,
    pub kind: u8,
    pub payload: &'a [u8],
    /// Still in the log recovery opens (not removed by a later truncation or reset).
    pub live: bool,
}

/// A cut: entries written before `entries_before` with index `>= from_index` are gone.
#[derive(Clone, Copy)]
struct Cut {
    entries_before: u64,
    from_index: u64,
}

#[derive(Default)]
struct CutCollector {
    entries_seen: u64,
    cuts: Vec<Cut>,
}

impl ScanVisitor for CutCollector {
    fn batch(&mut self, batch: &VisitedBatch<'_>) {
        for record in records(batch.body).flatten() {
            match record {
                Record::Entry { .. } => self.entries_seen += 1,
                // A truncation below the log's first index empties the log (recovery's
                // rule); every earlier entry has an index >= that first index > from_index,
                // so "index >= from_index" covers that case too.
                Record::TruncateSuffix { from_index } => self.cuts.push(Cut {
                    entries_before: self.entries_seen,
                    from_index,
                }),
                Record::Reset { .. } => self.cuts.push(Cut {
                    entries_before: self.entries_seen,
                    from_index: 0,
                }),
                Record::HardState(_) => {}
            }
        }
    }
}

/// Calls `on_entry` for every entry record, `on_batch` for every valid batch, in log
/// order; returns the scan report.
pub fn walk(
    dir: &WalDir,
    on_batch: &mut dyn FnMut(&VisitedBatch<'_>),
    on_entry: &mut dyn FnMut(&EntryRecord<'_>),
) -> Result<ScanReport, ToolError> {
    let mut collector = CutCollector::default();
    let first = dir.scan(&mut collector)?;
    // suffix_min[k] = lowest from_index among cuts k.. (u64::MAX: no later cut).
    let mut suffix_min = vec![u64::MAX; collector.cuts.len() + 1];
    for k in (0..collector.cuts.len()).rev() {
        suffix_min[k] = suffix_min[k + 1].min(collector.cuts[k].from_index);
    }
    let mut walker = Walker {
        cuts: &collector.cuts,
        suffix_min: &suffix_min,
        next_cut: 0,
        entries_seen: 0,
        on_batch,
        on_entry,
    };
    let second = dir.scan(&mut walker)?;
    if first != second {
        // Not an invariant: a live server may append between the two scans. Liveness
        // is then computed from the first scan's cuts; say so.
        eprintln!(
            "warning: {}: the log changed while it was read (a live server?); superseded marks may be stale",
            dir.display
        );
    }
    Ok(second)
}

struct Walker<'a> {
    cuts: &'a [Cut],
    suffix_min: &'a [u64],
    /// First cut that comes after the current entry record.
    next_cut: usize,
    entries_seen: u64,
    on_batch: &'a mut dyn FnMut(&VisitedBatch<'_>),
    on_entry: &'a mut dyn FnMut(&EntryRecord<'_>),
}

impl ScanVisitor for Walker<'_> {
    fn batch(&mut self, batch: &VisitedBatch<'_>) {
        (self.on_batch)(batch);
        for record in records(batch.body).flatten() {
            if let Record::Entry {
                index,
                term,
                kind,
                payload_offset,
                payload_len,
            } = record
            {
                while self.next_cut < self.cuts.len()
                    && self.cuts[self.next_cut].entries_before <= self.entries_seen
                {
                    self.next_cut += 1;
                }
                self.entries_seen += 1;
                // The scanner only visits batches whose records parsed and fit.
                let payload = batch
                    .body
                    .get(payload_offset..payload_offset + payload_len)
                    .unwrap_or(&[]);
                (self.on_entry)(&EntryRecord {
                    index,
                    term,
                    kind,
                    payload,
                    live: index < self.suffix_min[self.next_cut],
                });
            }
        }
    }
}
