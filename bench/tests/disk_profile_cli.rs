//! `--disk-profile hdd|ssd` and `--fsync-delay-ms` end to end: the real binary, its
//! argument handling, and that every output produced under a profile says "emulated".
//! Runs are short (they check labels and plumbing, never speed).

use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args(args)
        .output()
        .expect("run tally-bench")
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json_object(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn disk_profile_with_an_external_target_is_a_usage_error_that_says_why() {
    // Port 1 is never contacted: the combination is refused before any connection.
    let output = bench(&["--target", "127.0.0.1:1", "--disk-profile", "hdd"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("--disk-profile cannot be used with --target"),
        "{stderr}"
    );
    assert!(stderr.contains("--emulated-fsync-delay-us"), "{stderr}");
    assert!(output.stdout.is_empty(), "{}", stdout_of(&output));
}

#[test]
fn bad_profile_and_delay_values_exit_2_naming_the_flag() {
    for (args, flag) in [
        (&["--disk-profile", "floppy"][..], "--disk-profile"),
        (
            &["--disk-profile", "hdd", "--fsync-delay-ms", "0"][..],
            "--fsync-delay-ms",
        ),
        (
            &["--disk-profile", "hdd", "--fsync-delay-ms=-3"][..],
            "--fsync-delay-ms",
        ),
        (
            &["--disk-profile", "ssd", "--fsync-delay-ms", "fast"][..],
            "--fsync-delay-ms",
        ),
        (
            &["--disk-profile", "ssd", "--fsync-delay-ms", "5000"][..],
            "--fsync-delay-ms",
        ),
        // The override needs a profile to override.
        (&["--fsync-delay-ms", "2"][..], "--disk-profile"),
        (&["wal", "--disk-profile", "tape"][..], "--disk-profile"),
        (&["wal", "--fsync-delay-ms", "2"][..], "--disk-profile"),
    ] {
        let output = bench(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr_of(&output)
        );
        let stderr = stderr_of(&output);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn embedded_cluster_under_the_hdd_profile_reports_8_ms_emulated_in_json() {
    let parent = tempfile::tempdir().expect("temp dir");
    let output = bench(&[
        "--dir",
        parent.path().to_str().expect("utf-8 path"),
        "--disk-profile",
        "hdd",
        "--json",
        "--read-ratio",
        "0",
        "--clients",
        "4",
        "--pipeline",
        "4",
        "--seconds",
        "1",
        "--warmup",
        "0",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let run = json_object(&stdout_of(&output));
    assert_eq!(
        run["disk_profile"], "hdd (emulated: +8 ms per fsync)",
        "{run}"
    );
    // Reported by the leader's INFO: the delay reached the nodes' WALs.
    assert_eq!(
        run["emulated_fsync_delay_us"].as_f64(),
        Some(8000.0),
        "{run}"
    );
    assert!(run["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{run}");
    assert_eq!(std::fs::read_dir(parent.path()).expect("list").count(), 0);
}

#[test]
fn fsync_delay_ms_overrides_the_profile_on_every_dir_and_every_row_says_emulated() {
    let first = tempfile::tempdir().expect("temp dir");
    let second = tempfile::tempdir().expect("temp dir");
    let output = bench(&[
        "--dir",
        first.path().to_str().expect("utf-8 path"),
        "--dir",
        second.path().to_str().expect("utf-8 path"),
        "--disk-profile",
        "ssd",
        "--fsync-delay-ms",
        "0.5",
        "--read-ratio",
        "0",
        "--clients",
        "2",
        "--seconds",
        "0.5",
        "--warmup",
        "0",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let stdout = stdout_of(&output);
    let label = "ssd (emulated: +0.5 ms per fsync)";
    // One title per location, one result row per location, then the comparison's title
    // and its two rows: all labelled.
    let labelled = stdout.lines().filter(|line| line.contains(label)).count();
    assert!(
        labelled >= 2 + 2 + 1 + 2,
        "{labelled} labelled lines in\n{stdout}"
    );
    for line in stdout.lines() {
        let is_result_row = line
            .split_whitespace()
            .next()
            .is_some_and(|first| first.parse::<u64>().is_ok());
        if is_result_row || line.starts_with("embedded:") || line.contains("storage comparison") {
            assert!(
                line.contains(label),
                "unlabelled line {line:?} in\n{stdout}"
            );
        }
    }
}

#[test]
fn wal_subcommand_under_a_profile_labels_json_and_table_and_waits_the_delay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir_text = dir.path().to_str().expect("utf-8 path");
    let common = [
        "wal",
        "--writers",
        "2",
        "--inflight",
        "4",
        "--seconds",
        "0.3",
        "--dir",
        dir_text,
        "--disk-profile",
        "hdd",
        "--fsync-delay-ms",
        "5",
    ];
    let output = bench(&[&common[..], &["--json"]].concat());
    assert!(output.status.success(), "{}", stderr_of(&output));
    let report = json_object(&stdout_of(&output));
    assert_eq!(
        report["disk_profile"], "hdd (emulated: +5 ms per fsync)",
        "{report}"
    );
    assert_eq!(report["emulated_fsync_delay_us"], 5000, "{report}");
    // A lower bound: every fsync took at least the emulated delay.
    assert!(
        report["mean_fsync_us"].as_f64().unwrap_or(0.0) >= 5000.0,
        "{report}"
    );

    let output = bench(&common);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let table = stdout_of(&output);
    assert!(table.contains("hdd (emulated: +5 ms per fsync)"), "{table}");
    assert!(table.contains("incl. emulated +5000 us"), "{table}");
}

#[test]
fn wal_subcommand_without_a_profile_reports_no_emulation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = bench(&[
        "wal",
        "--writers",
        "1",
        "--inflight",
        "2",
        "--seconds",
        "0.2",
        "--json",
        "--dir",
        dir.path().to_str().expect("utf-8 path"),
    ]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let report = json_object(&stdout_of(&output));
    assert!(report["disk_profile"].is_null(), "{report}");
    assert_eq!(report["emulated_fsync_delay_us"], 0, "{report}");
}

#[test]
fn tally_bench_version_names_the_crate_version() {
    let output = Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .arg("--version")
        .output()
        .expect("run tally-bench --version");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("tally-bench {}", env!("CARGO_PKG_VERSION"))
    );
}
