//! tally-bench: load generator and benchmark reports for Tally.
//!
//! `tally-bench wal` measures the write-ahead log alone (see `wal_bench.rs`). The
//! cluster benchmark will become the default (no-subcommand) mode.

mod wal_bench;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "tally-bench", about = "Benchmarks for Tally")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Append from N concurrent writers to the WAL for a fixed time.
    Wal(wal_bench::WalArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Wal(args)) => wal_bench::run(&args),
        None => {
            // Until the cluster benchmark exists, the default is the WAL benchmark with
            // its default options.
            match Cli::parse_from(["tally-bench", "wal"]).command {
                Some(Command::Wal(args)) => wal_bench::run(&args),
                None => Err("no default benchmark".into()),
            }
        }
    };
    if let Err(err) = result {
        eprintln!("tally-bench: {err}");
        std::process::exit(1);
    }
}
