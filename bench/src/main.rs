//! tally-bench: load generator and benchmark reports for Tally.
//!
//! * `tally-bench --target HOST:PORT [--target ...]` drives any RESP server (a Tally
//!   cluster, a Redis) with a SET/GET workload (see `load/`).
//! * `tally-bench wal` measures the write-ahead log alone (see `wal_bench.rs`).
//! * `tally-bench` with no target starts a local 3-node cluster in this process
//!   (embedded mode, `embedded.rs`) and drives it; `--dir` picks where its WALs live.
//! * `tally-bench etcd --endpoints URL,...` drives an etcd v3 cluster with the same
//!   workload shape, for comparison (see `etcd.rs`).

mod embedded;
mod etcd;
mod load;
mod wal_bench;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "tally-bench",
    version,
    about = "Benchmarks for Tally: drive RESP servers (--target) or the WAL (wal)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    load: load::args::LoadArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Append from N concurrent writers to the WAL for a fixed time.
    Wal(wal_bench::WalArgs),
    /// Drive an etcd v3 cluster (JSON gateway) with the same SET/GET workload shape.
    Etcd(etcd::EtcdArgs),
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Wal(args)) => {
            if let Err(err) = wal_bench::run(&args) {
                eprintln!("tally-bench: {err}");
                std::process::exit(1);
            }
        }
        Some(Command::Etcd(args)) => std::process::exit(etcd::main(&args)),
        None => std::process::exit(load::main(&cli.load)),
    }
}
