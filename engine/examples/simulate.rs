//! Runs the deterministic cluster simulator over many seeds.
//!
//! ```text
//! cargo run --release -p tally-engine --example simulate -- --seeds 1000 [--nodes 5]
//! cargo run --release -p tally-engine --example simulate -- --seed 42 --trace
//! ```
//!
//! Without `--nodes`, seeds alternate between 3 and 5 nodes. Every violation prints
//! the seed, what broke and the trace leading there; the last line is always
//! `seeds: N, violations: V`.

use std::time::Instant;

use clap::Parser;
use tally_engine::sim::{KvStats, SimConfig, Simulation};

#[derive(Parser, Debug)]
#[command(about = "Run the Tally Raft simulator over many seeds")]
struct Args {
    /// Number of seeds to run (starting at --first-seed).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed of the range.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Run exactly this one seed (replay).
    #[arg(long)]
    seed: Option<u64>,
    /// Cluster size; default alternates 3 and 5.
    #[arg(long)]
    nodes: Option<usize>,
    /// Print every event of the run as it happens.
    #[arg(long)]
    trace: bool,
    /// Worker threads (seeds are independent; results do not depend on this).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn nodes_for(seed: u64, fixed: Option<usize>) -> usize {
    fixed.unwrap_or(if seed & 1 == 0 { 3 } else { 5 })
}

fn add_kv(total: &mut KvStats, run: &KvStats) {
    total.ops += run.ops;
    total.retried += run.retried;
    total.applied_twice += run.applied_twice;
    total.stalls += run.stalls;
    total.snapshots_taken += run.snapshots_taken;
    total.snapshots_installed += run.snapshots_installed;
}

fn run_one(seed: u64, nodes: usize, trace: bool, kv: &mut KvStats) -> (bool, String) {
    let mut cfg = SimConfig::new(seed, nodes);
    cfg.trace = trace;
    // A core assertion (e.g. "truncating committed entry") is a violation of this seed,
    // not the end of the whole run.
    let report = match std::panic::catch_unwind(|| Simulation::new(cfg).run()) {
        Ok(report) => report,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return (
                false,
                format!(
                    "VIOLATION seed {seed} ({nodes} nodes):\n  assertion failed inside the run: {message}\n  \
                     replay: cargo run --release -p tally-engine --example simulate -- --seed {seed} --nodes {nodes} --trace\n"
                ),
            );
        }
    };
    add_kv(kv, &report.stats.kv);
    if report.violations.is_empty() {
        return (true, String::new());
    }
    let mut text = format!("VIOLATION seed {seed} ({nodes} nodes):\n");
    for violation in &report.violations {
        text.push_str(&format!("  {violation}\n"));
    }
    text.push_str(&format!(
        "  replay: cargo run --release -p tally-engine --example simulate -- --seed {seed} --nodes {nodes} --trace\n"
    ));
    text.push_str("  last events:\n");
    text.push_str(&report.trace);
    (false, text)
}

fn main() {
    let args = Args::parse();
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (args.first_seed..args.first_seed + args.seeds).collect(),
    };
    let started = Instant::now();
    let threads = args.threads.max(1);
    let chunks: Vec<Vec<u64>> = (0..threads)
        .map(|t| seeds.iter().copied().skip(t).step_by(threads).collect())
        .collect();
    let results: Vec<(u64, u64, KvStats)> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let (nodes, trace) = (args.nodes, args.trace);
                scope.spawn(move || {
                    let mut violations = 0;
                    let mut kv = KvStats::default();
                    for seed in &chunk {
                        let (ok, text) = run_one(*seed, nodes_for(*seed, nodes), trace, &mut kv);
                        if !ok {
                            violations += 1;
                            print!("{text}");
                        }
                    }
                    (chunk.len() as u64, violations, kv)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or((0, 1, KvStats::default())))
            .collect()
    });
    let n_seeds: u64 = results.iter().map(|(n, _, _)| n).sum();
    let violations: u64 = results.iter().map(|(_, v, _)| v).sum();
    let mut kv = KvStats::default();
    for (_, _, run) in &results {
        add_kv(&mut kv, run);
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "elapsed: {elapsed:.1}s, {:.1} seeds/second on {threads} thread(s)",
        n_seeds as f64 / elapsed.max(1e-9)
    );
    println!(
        "snapshots: taken={} installed={}",
        kv.snapshots_taken, kv.snapshots_installed
    );
    println!(
        "kv: ops={} retried={} applied_twice={} stalls={}",
        kv.ops, kv.retried, kv.applied_twice, kv.stalls
    );
    println!("seeds: {n_seeds}, violations: {violations}");
    if violations > 0 {
        std::process::exit(1);
    }
}
