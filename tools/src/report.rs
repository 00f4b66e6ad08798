//! Shared wording for scan results, so every subcommand describes a log the same way.

use std::io::Write;

use tally_wal::inspect::{LogShape, ScanReport, TailAction, Verdict};

use crate::error::{Outcome, ToolError};

/// `first..=last`, or `none` for an empty log.
pub fn index_range(log: &LogShape) -> String {
    if log.n_entries == 0 {
        format!("none (next index {})", log.first_index)
    } else {
        format!("{}..={}", log.first_index, log.last_index())
    }
}

pub fn outcome(report: &ScanReport) -> Outcome {
    if report.verdict.is_clean() {
        Outcome::Clean
    } else {
        Outcome::Problems
    }
}

pub fn describe_action(action: &TailAction) -> String {
    match action {
        TailAction::Zero {
            file,
            offset,
            len_bytes,
            ..
        } => format!("zero {len_bytes} bytes of {file} from offset {offset}"),
        TailAction::Remove {
            file,
            len_bytes,
            reason,
        } => format!("remove {file} ({len_bytes} bytes; {reason})"),
    }
}

/// The verdict paragraph (ends with a newline).
pub fn write_verdict(out: &mut dyn Write, report: &ScanReport) -> Result<(), ToolError> {
    match &report.verdict {
        Verdict::Clean => writeln!(out, "verdict: clean")?,
        Verdict::TornTail {
            file,
            offset,
            expected_index,
            reason,
            actions,
        } => {
            writeln!(
                out,
                "verdict: torn tail in {file} at offset {offset} (expected entry index {expected_index}): {reason}"
            )?;
            writeln!(
                out,
                "  nothing valid follows it: recovery (or `tally-wal repair --yes`) will"
            )?;
            for action in actions {
                writeln!(out, "  - {}", describe_action(action))?;
            }
            writeln!(
                out,
                "  and keep entries {} (every entry before the torn write)",
                index_range(&report.log)
            )?;
        }
        Verdict::Corruption {
            file,
            offset,
            expected_index,
            reason,
        } => {
            writeln!(
                out,
                "verdict: CORRUPTION in {file} at offset {offset} (expected entry index {expected_index}): {reason}"
            )?;
            writeln!(
                out,
                "  recovery refuses to open this log; repair never touches corruption in the middle"
            )?;
            writeln!(
                out,
                "  (restore this replica from a healthy one; entries {} before it are readable)",
                index_range(&report.log)
            )?;
        }
    }
    Ok(())
}

/// One line for stderr when a command that is not `verify` meets a damaged log.
pub fn warn_if_damaged(report: &ScanReport, display: &str) {
    match &report.verdict {
        Verdict::Clean => {}
        Verdict::TornTail { file, offset, .. } => eprintln!(
            "warning: {display}: torn tail in {file} at offset {offset}; showing what recovery would keep (run `tally-wal verify`)"
        ),
        Verdict::Corruption { file, offset, .. } => eprintln!(
            "warning: {display}: CORRUPTION in {file} at offset {offset}; showing the log up to it (run `tally-wal verify`)"
        ),
    }
}
