//! `tally-wal`: inspect, verify, compare and repair Tally write-ahead logs offline.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use tally_tools::commands::diff::{diff, DiffWindow, MAX_COLUMNS};
use tally_tools::commands::dump::{dump, stats, DumpFilter, DumpFormat};
use tally_tools::commands::info::{info, verify};
use tally_tools::commands::repair::repair;
use tally_tools::commands::snapshot::{snapshot, SnapshotFormat};
use tally_tools::decode::parse_kind;
use tally_tools::error::{Outcome, ToolError};
use tally_tools::source::WalDir;

/// Offline inspector for Tally node directories (WAL segments and snapshot files).
/// Read-only (no lock taken) except `repair --yes`. Exit status: 0 clean, 1 torn tail /
/// corruption / divergence / invalid snapshot / log gap after the newest snapshot,
/// 2 usage error or unreadable / non-Tally directory.
#[derive(Parser)]
#[command(name = "tally-wal", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Text,
    Json,
    Hex,
}

#[derive(Clone, Copy, ValueEnum)]
enum SnapshotFormatArg {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Segments, hard state, index range, totals; snapshot files (valid or not).
    Info { dir: PathBuf },
    /// Check every batch CRC, index continuity, term order and format version; tell a
    /// torn tail from corruption exactly as recovery would. Check every snapshot's
    /// checksum and that the log starts at most one past the newest snapshot.
    Verify {
        dir: PathBuf,
        /// Print bytes verified and throughput to stderr.
        #[arg(long)]
        timing: bool,
    },
    /// Print entries (KV commands decoded).
    Dump {
        dir: PathBuf,
        /// First index to print.
        #[arg(long)]
        from: Option<u64>,
        /// Last index to print (inclusive).
        #[arg(long)]
        to: Option<u64>,
        /// Only entries of this term.
        #[arg(long)]
        term: Option<u64>,
        /// Only entries of this kind (normal, noop, config, or a number).
        #[arg(long, value_parser = parse_kind)]
        kind: Option<u8>,
        /// Print at most this many entries.
        #[arg(long)]
        limit: Option<u64>,
        #[arg(long, value_enum, default_value = "text")]
        format: FormatArg,
        /// Also print entries removed by a later truncation or reset (marked superseded).
        #[arg(long)]
        all: bool,
    },
    /// Entries by kind, payload size histogram, entries per batch, entries per term.
    Stats { dir: PathBuf },
    /// Compare replicas' logs index by index (terms), Raft-lecture style.
    Diff {
        #[arg(required = true, num_args = 2..)]
        dirs: Vec<PathBuf>,
        /// First index column.
        #[arg(long)]
        from: Option<u64>,
        /// Last index column (inclusive).
        #[arg(long)]
        to: Option<u64>,
        /// Columns to show when --from/--to are not both given.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=MAX_COLUMNS))]
        width: u64,
    },
    /// One snapshot file: header (index, term, configuration), checksum verdict and, for
    /// KV snapshots, the applied index, sessions, keys and values.
    Snapshot {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: SnapshotFormatArg,
    },
    /// Truncate a torn tail (never a corruption in the middle), keeping a backup.
    /// Without --yes, only prints what it would do.
    Repair {
        dir: PathBuf,
        #[arg(long)]
        yes: bool,
    },
}

fn run(cli: Cli, out: &mut dyn Write) -> Result<Outcome, ToolError> {
    match cli.command {
        Command::Info { dir } => info(&WalDir::open(&dir)?, out),
        Command::Verify { dir, timing } => verify(&WalDir::open(&dir)?, timing, out),
        Command::Dump {
            dir,
            from,
            to,
            term,
            kind,
            limit,
            format,
            all,
        } => {
            if let (Some(from), Some(to)) = (from, to) {
                if from > to {
                    return Err(ToolError::Usage(format!(
                        "--from {from} is after --to {to}"
                    )));
                }
            }
            let filter = DumpFilter {
                from_index: from,
                to_index: to,
                term,
                kind,
                limit,
                include_superseded: all,
            };
            let format = match format {
                FormatArg::Text => DumpFormat::Text,
                FormatArg::Json => DumpFormat::Json,
                FormatArg::Hex => DumpFormat::Hex,
            };
            dump(&WalDir::open(&dir)?, &filter, format, out)
        }
        Command::Stats { dir } => stats(&WalDir::open(&dir)?, out),
        Command::Diff {
            dirs,
            from,
            to,
            width,
        } => {
            let dirs = dirs
                .iter()
                .map(|dir| WalDir::open(dir))
                .collect::<Result<Vec<_>, _>>()?;
            let window = DiffWindow {
                from_index: from,
                to_index: to,
                width,
            };
            diff(&dirs, &window, out)
        }
        Command::Snapshot { file, format } => {
            let format = match format {
                SnapshotFormatArg::Text => SnapshotFormat::Text,
                SnapshotFormatArg::Json => SnapshotFormat::Json,
            };
            snapshot(&file, format, out)
        }
        Command::Repair { dir, yes } => repair(&dir, yes, out),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            // --help and --version are not errors.
            return ExitCode::from(if err.use_stderr() { 2 } else { 0 });
        }
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = run(cli, &mut out).and_then(|outcome| {
        out.flush().map_err(ToolError::Output)?;
        Ok(outcome)
    });
    match result {
        Ok(outcome) => ExitCode::from(outcome.exit_code() as u8),
        // The reader went away (`| head`): not an error of ours.
        Err(ToolError::Output(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(err) => {
            let _ = out.flush();
            eprintln!("tally-wal: error: {err}");
            ExitCode::from(2)
        }
    }
}
