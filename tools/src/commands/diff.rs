//! `tally-wal diff DIR DIR [DIR ...]`: the replicas' logs side by side, by index, in
//! the shape of the Raft lecture tables, with the first index where they diverge.
//!
//! Only terms are compared: by the Log Matching property two logs that hold an entry
//! with the same index and term are identical up to it, so the first index where two
//! replicas hold different terms is exactly where their logs part.

use std::io::Write;

use tally_wal::inspect::{LogShape, NoVisitor, ScanReport, Verdict};

use crate::error::{Outcome, ToolError};
use crate::report::index_range;
use crate::source::WalDir;

/// Most index columns printed in one table.
pub const MAX_COLUMNS: u64 = 200;

pub struct DiffWindow {
    pub from_index: Option<u64>,
    pub to_index: Option<u64>,
    /// Columns shown when no explicit range is given.
    pub width: u64,
}

/// The first index at which two logs both hold an entry with different terms, with
/// each log's term there (`None`: no entry at that index).
pub fn first_divergence(logs: &[&LogShape]) -> Option<(u64, Vec<Option<u64>>)> {
    // Terms are constant between these boundaries in every log, so checking the
    // boundaries suffices.
    let mut boundaries: Vec<u64> = Vec::new();
    for log in logs {
        boundaries.push(log.first_index);
        boundaries.push(log.last_index() + 1);
        boundaries.extend(log.term_runs.iter().map(|run| run.first_index));
    }
    boundaries.sort_unstable();
    boundaries.dedup();
    for index in boundaries {
        let terms: Vec<Option<u64>> = logs.iter().map(|log| log.term_at(index)).collect();
        let mut present = terms.iter().flatten();
        if let Some(first) = present.next() {
            if present.any(|term| term != first) {
                return Some((index, terms));
            }
        }
    }
    None
}

pub fn diff(
    dirs: &[WalDir],
    window: &DiffWindow,
    out: &mut dyn Write,
) -> Result<Outcome, ToolError> {
    let mut reports: Vec<ScanReport> = Vec::with_capacity(dirs.len());
    for dir in dirs {
        reports.push(dir.scan(&mut NoVisitor)?);
    }
    let labels: Vec<String> = (1..=dirs.len()).map(|n| format!("S{n}")).collect();
    let mut corrupt = false;
    for ((label, dir), report) in labels.iter().zip(dirs).zip(&reports) {
        let note = match &report.verdict {
            Verdict::Clean => String::new(),
            Verdict::TornTail { file, offset, .. } => {
                format!("; torn tail in {file} at offset {offset}, compared as recovery keeps it")
            }
            Verdict::Corruption { file, offset, .. } => {
                corrupt = true;
                format!("; CORRUPTION in {file} at offset {offset}, compared up to it")
            }
        };
        writeln!(
            out,
            "{label} = {} (entries {}{note})",
            dir.display,
            index_range(&report.log)
        )?;
    }
    let logs: Vec<&LogShape> = reports.iter().map(|r| &r.log).collect();
    let divergence = first_divergence(&logs);
    let lowest = logs.iter().map(|l| l.first_index).min().unwrap_or(1);
    let highest = logs.iter().map(|l| l.last_index()).max().unwrap_or(0);
    let (from, to) = match (window.from_index, window.to_index) {
        (Some(from), Some(to)) => (from, to),
        (Some(from), None) => (
            from,
            from.saturating_add(window.width - 1).min(highest.max(from)),
        ),
        (None, Some(to)) => (to.saturating_sub(window.width - 1).max(lowest).min(to), to),
        (None, None) => {
            let anchor = divergence.as_ref().map_or(highest, |(index, _)| *index);
            let from = anchor.saturating_sub(2).max(lowest);
            let to = highest
                .max(anchor)
                .min(from.saturating_add(window.width - 1));
            let from = if divergence.is_none() {
                to.saturating_sub(window.width - 1).max(lowest)
            } else {
                from
            };
            (from, to)
        }
    };
    if from > to {
        return Err(ToolError::Usage(format!("empty index range {from}..={to}")));
    }
    if to - from >= MAX_COLUMNS {
        return Err(ToolError::Usage(format!(
            "index range {from}..={to} is wider than {MAX_COLUMNS} columns; narrow it with --from/--to"
        )));
    }
    writeln!(out)?;
    if highest < lowest {
        writeln!(out, "(every log is empty)")?;
    } else {
        let column_width = (from..=to)
            .map(|i| i.to_string().len())
            .chain(
                logs.iter()
                    .flat_map(|log| (from..=to).filter_map(|i| log.term_at(i)))
                    .map(|t| t.to_string().len()),
            )
            .max()
            .unwrap_or(1);
        let label_width = labels
            .iter()
            .map(|l| l.len() + 1)
            .max()
            .unwrap_or(3)
            .max("index".len());
        let mut header = format!("{:<label_width$}", "index");
        for index in from..=to {
            header.push_str(&format!(" {index:>column_width$}"));
        }
        writeln!(out, "{}", header.trim_end())?;
        for (label, log) in labels.iter().zip(&logs) {
            let mut row = format!("{:<label_width$}", format!("{label}:"));
            for index in from..=to {
                let cell = match log.term_at(index) {
                    Some(term) => term.to_string(),
                    // Compacted away on this replica (it held it once).
                    None if index < log.first_index => ".".into(),
                    None => String::new(),
                };
                row.push_str(&format!(" {cell:>column_width$}"));
            }
            writeln!(out, "{}", row.trim_end())?;
        }
        writeln!(out)?;
    }
    let outcome = match divergence {
        Some((index, terms)) => {
            let holders: Vec<String> = labels
                .iter()
                .zip(&terms)
                .filter_map(|(label, term)| term.map(|t| format!("{label} term {t}")))
                .collect();
            let missing: Vec<&str> = labels
                .iter()
                .zip(&terms)
                .filter(|(_, term)| term.is_none())
                .map(|(label, _)| label.as_str())
                .collect();
            let missing = if missing.is_empty() {
                String::new()
            } else {
                format!(" ({} no entry)", missing.join(", "))
            };
            writeln!(
                out,
                "first divergence: index {index}: {}{missing}",
                holders.join(", ")
            )?;
            Outcome::Problems
        }
        None => {
            writeln!(
                out,
                "no divergence: the logs agree on every index they share"
            )?;
            if corrupt {
                Outcome::Problems
            } else {
                Outcome::Clean
            }
        }
    };
    if corrupt {
        writeln!(out, "(a log is corrupt; run `tally-wal verify` on it)")?;
    }
    Ok(outcome)
}
