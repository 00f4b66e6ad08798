//! The short nemesis run of `cargo test`: five real `tally-server` processes, about 40 s
//! of faults, then the linearizability check and the lost-write count.
//!
//! Besides "no violation, nothing lost" it asserts that the run did work under faults
//! (acknowledged operations, every fault kind at least once, a leader change), so it
//! cannot pass by doing nothing. No timing is asserted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use tally_engine::lincheck::{self, History, Outcome, Violation};
use tally_nemesis::faults::{FaultKind, Schedule};
use tally_nemesis::{run, RunConfig};

/// The `tally-server` binary of this build, built first if needed: cargo sets
/// `CARGO_BIN_EXE_*` only for a package's own binaries, and this test lives outside
/// `tally-net`. `TALLY_SERVER_BIN` overrides.
fn tally_server_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TALLY_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/short_run-<hash>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target dir");
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    // The variables cargo sets for a test process (CARGO_PKG_*, CARGO_MANIFEST_*,
    // CARGO_TARGET_TMPDIR, ...) made the nested build rebuild tally-net every time; the
    // build sees the environment a shell would.
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if name_text.starts_with("CARGO_") && name_text != "CARGO_HOME" {
            build.env_remove(&name);
        }
    }
    build
        .current_dir(&workspace)
        .args([
            "build",
            "--quiet",
            "-p",
            "tally-net",
            "--bin",
            "tally-server",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build for tally-server");
    assert!(status.success(), "cargo build of tally-server failed");
    let path = profile_dir.join("tally-server");
    assert!(path.is_file(), "no tally-server at {}", path.display());
    path
}

#[test]
fn five_servers_under_every_fault_kind_stay_linearizable_and_lose_no_acknowledged_write() {
    let mut config = RunConfig::new(tally_server_bin());
    config.seconds = 40;
    config.seed = 7;
    // Short faults so that every kind comes up more than once in 40 s.
    config.schedule = Schedule {
        fault_min_ms: 1000,
        fault_max_ms: 2000,
        heal_min_ms: 800,
        heal_max_ms: 1500,
    };
    let report = run(&config).expect("the run completes");
    println!("{report}");
    assert!(report.check.is_ok(), "not linearizable:\n{report}");
    assert_eq!(report.n_lost(), 0, "lost acknowledged writes:\n{report}");
    assert!(
        report.nemesis.unexpected_exits.is_empty(),
        "a member exited on its own:\n{report}"
    );
    assert!(report.passed(), "{report}");
    // The run did work, under faults.
    assert!(
        report.counts.n_acknowledged >= 500,
        "too few acknowledged operations:\n{report}"
    );
    for kind in FaultKind::ALL {
        assert!(
            report.faults_of(kind) >= 1,
            "fault {} never injected:\n{report}",
            kind.name()
        );
    }
    assert!(
        report.nemesis.leader_changes() >= 1,
        "no leader change:\n{report}"
    );
    let stats = report.check.as_ref().expect("checked above");
    assert!(stats.n_definite > 500, "{report}");
    recorded_history_would_expose_a_wrong_answer(&report.history);
}

/// The recorded history is precise enough to catch a wrong server: one acknowledged
/// read answered with a value nobody wrote, or a counter one short at the end.
fn recorded_history_would_expose_a_wrong_answer(history: &History) {
    let mut entries = history.entries().to_vec();
    let read = entries
        .iter_mut()
        .rev()
        .find(|entry| matches!(entry.outcome, Outcome::Value(Some(_))))
        .expect("an acknowledged read of a written key");
    read.outcome = Outcome::Value(Some(b"never-written".to_vec()));
    let mut tampered = History::new();
    for entry in entries {
        tampered.push(entry);
    }
    assert!(matches!(
        lincheck::check(&tampered),
        Err(Violation::NotLinearizable(_))
    ));
    let acknowledged_incrs = history
        .entries()
        .iter()
        .filter(|entry| entry.op.key() == b"n0" && matches!(entry.outcome, Outcome::Integer(_)))
        .count() as i64;
    assert!(acknowledged_incrs > 0, "no acknowledged INCR on n0");
    let one_short = BTreeMap::from([(
        b"n0".to_vec(),
        Some((acknowledged_incrs - 1).to_string().into_bytes()),
    )]);
    assert!(!lincheck::lost_acknowledged_writes(history, &one_short).is_empty());
}
