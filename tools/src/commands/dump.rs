//! `tally-wal dump DIR` and `tally-wal stats DIR`.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::{Map, Value};

use crate::decode::{describe_json, describe_text, kind_name};
use crate::entries::{walk, EntryRecord};
use crate::error::{Outcome, ToolError};
use crate::report::{index_range, outcome, warn_if_damaged};
use crate::source::WalDir;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpFormat {
    Text,
    Json,
    Hex,
}

/// Which entries `dump` prints.
#[derive(Clone, Debug, Default)]
pub struct DumpFilter {
    pub from_index: Option<u64>,
    pub to_index: Option<u64>,
    pub term: Option<u64>,
    pub kind: Option<u8>,
    pub limit: Option<u64>,
    /// Also print entry records a later truncation or reset removed.
    pub include_superseded: bool,
}

impl DumpFilter {
    fn accepts(&self, entry: &EntryRecord<'_>) -> bool {
        (entry.live || self.include_superseded)
            && self.from_index.is_none_or(|from| entry.index >= from)
            && self.to_index.is_none_or(|to| entry.index <= to)
            && self.term.is_none_or(|term| entry.term == term)
            && self.kind.is_none_or(|kind| entry.kind == kind)
    }
}

fn write_hex(out: &mut dyn Write, payload: &[u8]) -> std::io::Result<()> {
    for (line, chunk) in payload.chunks(16).enumerate() {
        let mut hex = String::with_capacity(48);
        for (i, byte) in chunk.iter().enumerate() {
            if i == 8 {
                hex.push(' ');
            }
            hex.push_str(&format!("{byte:02x} "));
        }
        let ascii: String = chunk
            .iter()
            .map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        writeln!(out, "  {:08x}  {hex:<49} |{ascii}|", line * 16)?;
    }
    Ok(())
}

pub fn dump(
    dir: &WalDir,
    filter: &DumpFilter,
    format: DumpFormat,
    out: &mut dyn Write,
) -> Result<Outcome, ToolError> {
    let mut printed = 0u64;
    let mut write_error: Option<std::io::Error> = None;
    if format == DumpFormat::Text {
        writeln!(
            out,
            "{:>10} {:>6} {:<7} {:>8}  command",
            "index", "term", "kind", "size"
        )?;
    }
    let mut on_entry = |entry: &EntryRecord<'_>| {
        if write_error.is_some() || filter.limit.is_some_and(|limit| printed >= limit) {
            return;
        }
        if !filter.accepts(entry) {
            return;
        }
        printed += 1;
        let superseded = if entry.live { "" } else { " (superseded)" };
        let result = match format {
            DumpFormat::Text => {
                let line = format!(
                    "{:>10} {:>6} {:<7} {:>8}  {}{superseded}",
                    entry.index,
                    entry.term,
                    kind_name(entry.kind),
                    entry.payload.len(),
                    describe_text(entry.kind, entry.payload)
                );
                writeln!(out, "{}", line.trim_end())
            }
            DumpFormat::Hex => writeln!(
                out,
                "index {} term {} kind {} size {}{superseded}",
                entry.index,
                entry.term,
                kind_name(entry.kind),
                entry.payload.len()
            )
            .and_then(|()| write_hex(out, entry.payload)),
            DumpFormat::Json => {
                // Fixed fields first, in a stable order, then the decoded payload.
                let mut line = format!(
                    "{{\"index\":{},\"term\":{},\"kind\":{},\"size\":{}",
                    entry.index,
                    entry.term,
                    Value::String(kind_name(entry.kind)),
                    entry.payload.len()
                );
                if !entry.live {
                    line.push_str(",\"superseded\":true");
                }
                let mut decoded = Map::new();
                describe_json(entry.kind, entry.payload, &mut decoded);
                for key in ["command", "session", "config", "decode_error"] {
                    if let Some(value) = decoded.get(key) {
                        line.push_str(&format!(",{}:{value}", Value::String(key.into())));
                    }
                }
                line.push('}');
                writeln!(out, "{line}")
            }
        };
        if let Err(err) = result {
            write_error = Some(err);
        }
    };
    let report = walk(dir, &mut |_| {}, &mut on_entry)?;
    if let Some(err) = write_error {
        return Err(ToolError::Output(err));
    }
    warn_if_damaged(&report, &dir.display);
    Ok(outcome(&report))
}

/// Upper bounds (inclusive) of the payload size histogram buckets; the last bucket is
/// everything larger.
const SIZE_BUCKETS: [u64; 9] = [0, 15, 63, 255, 1023, 4095, 16383, 65535, 1048575];

fn bucket_label(position: usize) -> String {
    match position {
        0 => "0".into(),
        p if p < SIZE_BUCKETS.len() => format!("{}..={}", SIZE_BUCKETS[p - 1] + 1, SIZE_BUCKETS[p]),
        _ => format!(">{}", SIZE_BUCKETS[SIZE_BUCKETS.len() - 1]),
    }
}

pub fn stats(dir: &WalDir, out: &mut dyn Write) -> Result<Outcome, ToolError> {
    let mut by_kind: BTreeMap<u8, u64> = BTreeMap::new();
    let mut histogram = [0u64; SIZE_BUCKETS.len() + 1];
    // term -> (entries, lowest index, highest index)
    let mut by_term: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
    let (mut live, mut superseded, mut payload_total, mut payload_max) = (0u64, 0u64, 0u64, 0u64);
    let mut batches_with_entries = 0u64;
    let (mut per_batch_min, mut per_batch_max) = (u64::MAX, 0u64);
    let mut control_only_batches = 0u64;
    let mut on_batch = |batch: &tally_wal::inspect::VisitedBatch<'_>| {
        let n = batch.header.entry_count as u64;
        if n == 0 {
            control_only_batches += 1;
        } else {
            batches_with_entries += 1;
            per_batch_min = per_batch_min.min(n);
            per_batch_max = per_batch_max.max(n);
        }
    };
    let mut on_entry = |entry: &EntryRecord<'_>| {
        if !entry.live {
            superseded += 1;
            return;
        }
        live += 1;
        *by_kind.entry(entry.kind).or_default() += 1;
        let size = entry.payload.len() as u64;
        payload_total += size;
        payload_max = payload_max.max(size);
        let bucket = SIZE_BUCKETS
            .iter()
            .position(|&bound| size <= bound)
            .unwrap_or(SIZE_BUCKETS.len());
        histogram[bucket] += 1;
        let slot = by_term
            .entry(entry.term)
            .or_insert((0, entry.index, entry.index));
        slot.0 += 1;
        slot.1 = slot.1.min(entry.index);
        slot.2 = slot.2.max(entry.index);
    };
    let report = walk(dir, &mut on_batch, &mut on_entry)?;
    writeln!(
        out,
        "entries: {live} in the log ({}), {superseded} superseded by truncations",
        index_range(&report.log)
    )?;
    writeln!(out, "by kind:")?;
    for (kind, count) in &by_kind {
        writeln!(out, "  {:<8} {count:>10}", kind_name(*kind))?;
    }
    writeln!(
        out,
        "payload bytes: total {payload_total}, mean {:.1}, max {payload_max}",
        payload_total as f64 / live.max(1) as f64
    )?;
    writeln!(out, "payload size histogram (bytes: entries):")?;
    for (position, count) in histogram.iter().enumerate() {
        if *count > 0 {
            writeln!(out, "  {:<16} {count:>10}", bucket_label(position))?;
        }
    }
    let total_entry_records = live + superseded;
    writeln!(
        out,
        "batches: {} ({batches_with_entries} with entries, {control_only_batches} control only)",
        report.n_batches
    )?;
    if batches_with_entries > 0 {
        writeln!(
            out,
            "entries per batch: min {per_batch_min}, mean {:.2}, max {per_batch_max}",
            total_entry_records as f64 / batches_with_entries as f64
        )?;
    }
    writeln!(out, "entries per term:")?;
    for (term, (count, low, high)) in &by_term {
        writeln!(out, "  term {term:<6} {count:>10}  (index {low}..={high})")?;
    }
    warn_if_damaged(&report, &dir.display);
    Ok(outcome(&report))
}
