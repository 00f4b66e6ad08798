//! Random fault schedules on the simulator: every seed injects message drops,
//! duplicates, delays and reordering, symmetric and one-way partitions, crashes with
//! lost unsynced writes, stalls of a node's driver, and clock drift, with KV clients
//! (real sessions, resending after unknown outcomes) writing and reading throughout.
//! Each seed fails the test if any safety invariant, linearizability or the liveness
//! check after the faults broke. Seeds are kept short so 2,000+ run in `cargo test`.

use tally_engine::sim::{KvStats, SimConfig, Simulation};

fn run_seeds(first_seed: u64, n_seeds: u64, n_nodes: usize) {
    let mut failures = Vec::new();
    for seed in first_seed..first_seed + n_seeds {
        let mut cfg = SimConfig::new(seed, n_nodes);
        cfg.fault_duration_us = 1_000_000;
        cfg.liveness_bound_us = 1_500_000;
        // An assertion inside the core is a failure of this seed, named as such.
        let report = match std::panic::catch_unwind(|| Simulation::new(cfg).run()) {
            Ok(report) => report,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!(
                    "seed {seed} ({n_nodes} nodes): assertion failed inside the run: {message}"
                ));
                continue;
            }
        };
        if !report.violations.is_empty() {
            failures.push(format!(
                "seed {seed} ({n_nodes} nodes): {:?}\n{}",
                report.violations, report.trace
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n_seeds} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn random_faults_three_nodes_seeds_0_to_599() {
    run_seeds(0, 600, 3);
}

#[test]
fn random_faults_three_nodes_seeds_600_to_1199() {
    run_seeds(600, 600, 3);
}

#[test]
fn random_faults_five_nodes_seeds_0_to_449() {
    run_seeds(0, 450, 5);
}

#[test]
fn random_faults_five_nodes_seeds_450_to_899() {
    run_seeds(450, 450, 5);
}

#[test]
fn kv_clients_resend_with_their_sessions_and_no_write_applies_twice_under_stalls_and_crashes() {
    let mut total = KvStats::default();
    let mut failures = Vec::new();
    for seed in 7000..7060 {
        let report = Simulation::new(SimConfig::new(seed, 3)).run();
        if !report.violations.is_empty() {
            failures.push(format!(
                "seed {seed}: {:?}\n{}",
                report.violations, report.trace
            ));
        }
        let kv = &report.stats.kv;
        total.ops += kv.ops;
        total.retried += kv.retried;
        total.applied_twice += kv.applied_twice;
        total.stalls += kv.stalls;
        total.snapshots_taken += kv.snapshots_taken;
        total.snapshots_installed += kv.snapshots_installed;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        total.applied_twice, 0,
        "a resent write applied twice: {total:?}"
    );
    assert!(total.stalls > 0, "the nemesis stalled no driver: {total:?}");
    assert!(
        total.retried > 0,
        "no operation was resent with its session: {total:?}"
    );
    assert!(total.ops > 1000, "too little KV traffic: {total:?}");
    assert!(
        total.snapshots_taken > 0 && total.snapshots_installed > 0,
        "snapshots were neither taken nor installed: {total:?}"
    );
}
