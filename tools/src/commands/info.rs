//! `tally-wal info DIR` and `tally-wal verify DIR`.

use std::io::Write;
use std::time::Instant;

use tally_wal::format::FORMAT_VERSION;
use tally_wal::inspect::{NoVisitor, ScanReport, TailAction, Verdict};

use crate::error::{Outcome, ToolError};
use crate::report::{index_range, outcome, write_verdict};
use crate::snapshots::DirSnapshots;
use crate::source::WalDir;

/// What became of a segment under the verdict.
fn segment_state(report: &ScanReport, position: usize) -> &'static str {
    let name = &report.segments[position].name;
    let removed = match &report.verdict {
        Verdict::TornTail { actions, .. } => actions
            .iter()
            .any(|a| matches!(a, TailAction::Remove { file, .. } if file == name)),
        _ => false,
    };
    let torn_here = matches!(&report.verdict, Verdict::TornTail { file, .. } if file == name);
    let corrupt_here = matches!(&report.verdict, Verdict::Corruption { file, .. } if file == name);
    if removed {
        "torn (removed by recovery)"
    } else if torn_here {
        "open, torn tail"
    } else if corrupt_here {
        "CORRUPT"
    } else if !report.segments[position].scanned {
        "not reached"
    } else if position + 1 == report.segments.len() {
        "open"
    } else {
        "sealed"
    }
}

pub fn info(dir: &WalDir, out: &mut dyn Write) -> Result<Outcome, ToolError> {
    let report = dir.scan(&mut NoVisitor)?;
    writeln!(out, "directory: {}", dir.display)?;
    writeln!(out, "format: version {FORMAT_VERSION}")?;
    writeln!(out, "segments: {}", report.segments.len())?;
    let name_width = report
        .segments
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0);
    writeln!(
        out,
        "  {:<name_width$} {:>4} {:>21} {:>8} {:>12} {:>12}  state",
        "name", "id", "entries written", "batches", "used_bytes", "size_bytes"
    )?;
    for (position, segment) in report.segments.iter().enumerate() {
        let range = match segment.entry_index_range {
            Some((low, high)) => format!("{low}..={high}"),
            None => "-".into(),
        };
        writeln!(
            out,
            "  {:<name_width$} {:>4} {:>21} {:>8} {:>12} {:>12}  {}",
            segment.name,
            segment.segment_id,
            range,
            segment.n_batches,
            segment.end_offset,
            segment.size_bytes,
            segment_state(&report, position)
        )?;
    }
    let hard_state = report.log.hard_state;
    writeln!(
        out,
        "hard state: term {}, vote {}",
        hard_state.term,
        if hard_state.vote == 0 {
            "none".to_string()
        } else {
            hard_state.vote.to_string()
        }
    )?;
    let payload_bytes: u64 = report.segments.iter().map(|s| s.payload_bytes).sum();
    let used_bytes: u64 = report.segments.iter().map(|s| s.end_offset).sum();
    writeln!(
        out,
        "log: entries {} ({} entries; last term {})",
        index_range(&report.log),
        report.log.n_entries,
        report
            .log
            .last_term()
            .map_or("-".to_string(), |t| t.to_string())
    )?;
    writeln!(
        out,
        "records: {} batches, {} entry records, {} payload bytes, {} bytes used of {} allocated",
        report.n_batches,
        report.n_entry_records,
        payload_bytes,
        used_bytes,
        dir.total_bytes()
    )?;
    write_verdict(out, &report)?;
    let snapshots = DirSnapshots::scan(&dir.path, &dir.display)?;
    snapshots.write_table(out)?;
    Ok(combine(outcome(&report), snapshots.all_valid()))
}

fn combine(wal: Outcome, snapshots_ok: bool) -> Outcome {
    if wal == Outcome::Clean && snapshots_ok {
        Outcome::Clean
    } else {
        Outcome::Problems
    }
}

/// One line per snapshot file, then whether the log starts where a restart needs it
/// (first index <= newest snapshot index + 1). Returns true when all is well.
fn verify_snapshots(
    dir: &WalDir,
    wal_first_index: u64,
    out: &mut dyn Write,
) -> Result<bool, ToolError> {
    let snapshots = DirSnapshots::scan(&dir.path, &dir.display)?;
    let width = snapshots
        .files
        .iter()
        .map(|f| f.name.len())
        .max()
        .unwrap_or(0);
    for file in &snapshots.files {
        match &file.check {
            Ok(layout) => writeln!(
                out,
                "{:<width$}  ok  index {} term {}, {} bytes ({} data bytes), checksum ok",
                file.name, file.index, file.term, file.size_bytes, layout.data_len_bytes
            )?,
            Err(reason) => writeln!(out, "{:<width$}  INVALID  {reason}", file.name)?,
        }
    }
    for (name, len) in &snapshots.temp_files {
        writeln!(
            out,
            "{name}  ignored  unfinished snapshot temp file, {len} bytes"
        )?;
    }
    let covered = match (
        snapshots.files.first(),
        snapshots.restart_choice(wal_first_index),
    ) {
        (None, _) => {
            writeln!(out, "snapshots: none (log first index {wal_first_index})")?;
            true
        }
        (Some(newest), Ok(Some(chosen))) if chosen.index.saturating_add(1) >= wal_first_index => {
            let fallback = if chosen.name == newest.name {
                String::new()
            } else {
                format!(
                    " (newest is invalid; restart falls back to index {})",
                    chosen.index
                )
            };
            writeln!(
                out,
                "snapshots: {} checked; log first index {wal_first_index} <= snapshot index {} + 1: covered{fallback}",
                snapshots.files.len(),
                chosen.index
            )?;
            true
        }
        (Some(_), Ok(Some(chosen))) => {
            writeln!(
                out,
                "snapshots: GAP: log first index {wal_first_index} > snapshot index {} + 1: entries {}..={} are in neither",
                chosen.index,
                chosen.index + 1,
                wal_first_index - 1
            )?;
            false
        }
        (Some(_), Ok(None)) => true,
        (Some(_), Err(reason)) => {
            writeln!(out, "snapshots: restart would fail: {reason}")?;
            false
        }
    };
    let clean = covered && snapshots.all_valid();
    writeln!(
        out,
        "snapshot verdict: {}",
        if clean { "clean" } else { "PROBLEM" }
    )?;
    Ok(clean)
}

pub fn verify(dir: &WalDir, timing: bool, out: &mut dyn Write) -> Result<Outcome, ToolError> {
    let started = Instant::now();
    let report = dir.scan(&mut NoVisitor)?;
    let elapsed = started.elapsed();
    let name_width = report
        .segments
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0);
    let status_of = |position: usize| match segment_state(&report, position) {
        "sealed" | "open" => "ok",
        other => other,
    };
    let status_width = (0..report.segments.len())
        .map(|p| status_of(p).len())
        .max()
        .unwrap_or(2);
    for (position, segment) in report.segments.iter().enumerate() {
        let detail = match &report.verdict {
            Verdict::TornTail {
                file,
                offset,
                reason,
                ..
            }
            | Verdict::Corruption {
                file,
                offset,
                reason,
                ..
            } if *file == segment.name => format!(" at offset {offset}: {reason}"),
            _ => String::new(),
        };
        let status = status_of(position);
        writeln!(
            out,
            "{:<name_width$}  {status:<status_width$}  {} batches, {} entries{detail}",
            segment.name, segment.n_batches, segment.n_entries
        )?;
    }
    writeln!(
        out,
        "checked: {} segments, {} batches, {} entry records, {} bytes; format version, batch CRCs, index continuity, term order",
        report.segments.iter().filter(|s| s.scanned).count(),
        report.n_batches,
        report.n_entry_records,
        report.scanned_bytes
    )?;
    let log = &report.log;
    let first_term = log.term_runs.first().map(|r| r.term);
    writeln!(
        out,
        "log: entries {}, terms {}, hard state term {} vote {}",
        index_range(log),
        match (first_term, log.last_term()) {
            (Some(a), Some(b)) => format!("{a}..={b}"),
            _ => "-".into(),
        },
        log.hard_state.term,
        log.hard_state.vote
    )?;
    write_verdict(out, &report)?;
    let snapshots_ok = verify_snapshots(dir, report.log.first_index, out)?;
    if timing {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        eprintln!(
            "verified {} bytes of batches ({} bytes of files) in {:.3} s: {:.2} GB/s of batches",
            report.scanned_bytes,
            dir.total_bytes(),
            seconds,
            report.scanned_bytes as f64 / seconds / 1e9
        );
    }
    Ok(combine(outcome(&report), snapshots_ok))
}
