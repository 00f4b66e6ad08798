//! `tally-nemesis`: five real `tally-server` processes under faults; exits non-zero when
//! the client history is not linearizable or an acknowledged write is lost.
//!
//! Exit status: 0 pass; 1 a violation, a lost write or a member that exited on its own;
//! 2 the run could not be carried out (no leader, binary missing, I/O).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tally_engine::lincheck::{self, CheckOptions};
use tally_nemesis::history_file::parse_history;
use tally_nemesis::{run, RunConfig};

#[derive(Parser, Debug)]
#[command(
    version,
    name = "tally-nemesis",
    about = "Fault injection against real tally-server processes, checked for linearizability"
)]
struct Args {
    /// Length of the faulty phase.
    #[arg(long, default_value_t = 45)]
    seconds: u64,
    /// Seeds the fault schedule and the clients' operations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Cluster size.
    #[arg(long, default_value_t = 5)]
    nodes: u64,
    /// Client threads.
    #[arg(long, default_value_t = 6)]
    clients: u64,
    /// Directory for member data, logs, history.txt, summary.txt, timeline.txt (kept).
    /// Default: a temporary directory, kept only if the run fails.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The tally-server binary. Default: `tally-server` next to this executable.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Search states per key the linearizability checker may explore before it answers
    /// "inconclusive" (a failure).
    #[arg(long)]
    max_states: Option<usize>,
    /// Check a saved history.txt instead of running (exit 0 linearizable, 1 not).
    #[arg(long, value_name = "FILE")]
    check_history: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.check_history {
        return check_history_file(path, args.max_states);
    }
    let server_bin = match args.server_bin.or_else(sibling_server_bin) {
        Some(path) if path.is_file() => path,
        other => {
            eprintln!(
                "tally-nemesis: no tally-server binary at {:?}; build it (cargo build -p tally-net --bin tally-server) or pass --server-bin",
                other
            );
            return ExitCode::from(2);
        }
    };
    if args.nodes < 3 {
        eprintln!("tally-nemesis: --nodes must be at least 3");
        return ExitCode::from(2);
    }
    let mut config = RunConfig::new(server_bin);
    config.seconds = args.seconds;
    config.seed = args.seed;
    config.nodes = args.nodes;
    config.clients = args.clients.max(1);
    config.dir = args.dir;
    if let Some(max_states) = args.max_states {
        config.check.max_states = max_states;
    }
    match run(&config) {
        Ok(report) => {
            println!("{report}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("tally-nemesis: {error}");
            ExitCode::from(2)
        }
    }
}

fn check_history_file(path: &std::path::Path, max_states: Option<usize>) -> ExitCode {
    let history = match std::fs::read_to_string(path)
        .map_err(|error| error.to_string())
        .and_then(|text| parse_history(&text).map_err(|error| error.to_string()))
    {
        Ok(history) => history,
        Err(error) => {
            eprintln!("tally-nemesis: {}: {error}", path.display());
            return ExitCode::from(2);
        }
    };
    let mut options = CheckOptions::default();
    if let Some(max_states) = max_states {
        options.max_states = max_states;
    }
    match lincheck::check_with(&history, &options) {
        Ok(stats) => {
            println!(
                "linearizability: ok (ops={} keys={} definite={} unknown_writes={} states={})",
                history.len(),
                stats.n_keys,
                stats.n_definite,
                stats.n_unknown_writes,
                stats.n_states
            );
            ExitCode::SUCCESS
        }
        Err(violation) => {
            println!("linearizability: VIOLATION\n{violation}");
            ExitCode::from(1)
        }
    }
}

fn sibling_server_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join("tally-server"))
}
