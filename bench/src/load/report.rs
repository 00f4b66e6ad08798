//! The result of one run and its two renderings: a table row for people, a JSON line
//! for scripts.

use serde::Serialize;

use super::args::RunConfig;
use super::info::StorageFigures;
use super::stats::{ClientStats, ErrorCounts};

/// One run's results. Field names are the `--json` keys (see the brief's Benchmark
/// contract: ops_per_sec, p50_us, p99_us, p999_us, entries_per_fsync at least).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Targets as given, comma-separated.
    pub target: String,
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Open-loop total rate in ops/s; null in closed loop.
    pub rate: Option<f64>,
    pub clients: usize,
    pub pipeline: usize,
    pub value_size: usize,
    pub keys: u64,
    pub read_ratio: f64,
    /// Length of the measured window in seconds.
    pub seconds: f64,
    /// Successful operations completed in the window.
    pub ops: u64,
    pub ops_per_sec: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Failed operations in the window (sum of `error_kinds`).
    pub errors: u64,
    pub error_kinds: ErrorCounts,
    /// Failures during warmup, reported so that none goes unseen.
    pub errors_outside_window: u64,
    /// The first failure seen, described.
    pub error_sample: Option<String>,
    /// From the leader's INFO `# Raft` section; null when the target has none.
    pub entries_per_fsync: Option<f64>,
    pub fsyncs_per_sec: Option<f64>,
    pub bytes_written_per_op: Option<f64>,
    /// The target whose INFO the storage figures come from.
    pub storage_figures_from: Option<String>,
    /// Set when the disk was emulated (`--disk-profile`, or a server that reports an
    /// emulated fsync delay), e.g. `hdd (emulated: +8 ms per fsync)`; null on real disks.
    pub disk_profile: Option<String>,
    /// The emulated delay per fsync the measured leader reported in INFO, in µs.
    pub emulated_fsync_delay_us: Option<f64>,
}

fn micros(nanoseconds: u64) -> f64 {
    (nanoseconds as f64 / 100.0).round() / 10.0
}

impl RunReport {
    pub fn new(
        targets: &[String],
        config: &RunConfig,
        seconds: f64,
        stats: &ClientStats,
        storage: StorageFigures,
    ) -> Self {
        let histogram = &stats.latency_ns;
        let empty = histogram.is_empty();
        let quantile = |q: f64| {
            if empty {
                0.0
            } else {
                micros(histogram.value_at_quantile(q))
            }
        };
        RunReport {
            target: targets.join(","),
            mode: if config.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            rate: config.rate,
            clients: config.clients,
            pipeline: config.pipeline,
            value_size: config.value_size,
            keys: config.keys,
            read_ratio: config.read_ratio,
            seconds,
            ops: stats.ops_ok,
            ops_per_sec: stats.ops_ok as f64 / seconds,
            mean_us: if empty {
                0.0
            } else {
                (histogram.mean() / 100.0).round() / 10.0
            },
            p50_us: quantile(0.50),
            p99_us: quantile(0.99),
            p999_us: quantile(0.999),
            max_us: if empty { 0.0 } else { micros(histogram.max()) },
            errors: stats.errors.total(),
            error_kinds: stats.errors,
            errors_outside_window: stats.errors_outside_window,
            error_sample: stats.error_sample.clone(),
            entries_per_fsync: storage.entries_per_fsync,
            fsyncs_per_sec: storage.fsyncs_per_sec,
            bytes_written_per_op: storage.bytes_written_per_op,
            storage_figures_from: storage.source,
            disk_profile: storage
                .emulated_fsync_delay_us
                .map(super::disk_profile::label_from_server),
            emulated_fsync_delay_us: storage.emulated_fsync_delay_us,
        }
    }

    pub fn to_json_line(&self) -> String {
        // A struct of numbers, strings and options always serializes.
        serde_json::to_string(self).expect("RunReport serializes")
    }
}

/// Header of the human table.
pub fn table_header() -> String {
    format!(
        "{:>7} {:>8} {:>7} {:>5} {:>12} {:>9} {:>9} {:>9} {:>9} {:>7} {:>13} {:>9} {:>9}",
        "clients",
        "pipeline",
        "value_B",
        "read%",
        "ops/s",
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
        "errors",
        "entries/fsync",
        "fsyncs/s",
        "bytes/op"
    )
}

fn optional(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

/// One table row, plus an indented line with the error breakdown when there were errors.
pub fn table_row(report: &RunReport) -> String {
    let mut row = format!(
        "{:>7} {:>8} {:>7} {:>5.0} {:>12.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>7} {:>13} {:>9} {:>9}",
        report.clients,
        report.pipeline,
        report.value_size,
        report.read_ratio * 100.0,
        report.ops_per_sec,
        report.p50_us,
        report.p99_us,
        report.p999_us,
        report.max_us,
        report.errors,
        optional(report.entries_per_fsync, 1),
        optional(report.fsyncs_per_sec, 0),
        optional(report.bytes_written_per_op, 0),
    );
    if let Some(disk) = &report.disk_profile {
        row.push_str(&format!("  disk: {disk}"));
    }
    if report.errors > 0 || report.errors_outside_window > 0 {
        let kinds = &report.error_kinds;
        row.push_str(&format!(
            "\n        errors: notleader={} unknown={} server={} wrong_reply={} io={} (warmup: {})",
            kinds.not_leader,
            kinds.unknown,
            kinds.server_other,
            kinds.wrong_reply,
            kinds.io,
            report.errors_outside_window
        ));
        if let Some(sample) = &report.error_sample {
            row.push_str(&format!("; first: {sample}"));
        }
    }
    row
}

/// A side-by-side table of runs on different storage locations (`--dir` repeated).
pub fn format_comparison(reports: &[RunReport]) -> String {
    let mut out = String::from("\nstorage comparison");
    if let Some(disk) = reports.iter().find_map(|r| r.disk_profile.as_ref()) {
        out.push_str(&format!(
            " (disk {disk}, added to each location's real fsync)"
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<40} {:>12} {:>10} {:>10} {:>10} {:>14}\n",
        "location", "ops/s", "p50 us", "p99 us", "p999 us", "entries/fsync"
    ));
    for report in reports {
        let per_fsync = report
            .entries_per_fsync
            .map_or_else(|| "-".to_string(), |value| format!("{value:.1}"));
        out.push_str(&format!(
            "{:<40} {:>12.0} {:>10.1} {:>10.1} {:>10.1} {:>14}\n",
            report.target,
            report.ops_per_sec,
            report.p50_us,
            report.p99_us,
            report.p999_us,
            per_fsync
        ));
        if let Some(disk) = &report.disk_profile {
            // Replace the row's newline: the label belongs on the row.
            out.pop();
            out.push_str(&format!("  {disk}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RunConfig {
        RunConfig {
            clients: 1,
            pipeline: 1,
            value_size: 100,
            keys: 10,
            read_ratio: 0.0,
            seconds: 1.0,
            warmup: 0.0,
            rate: None,
            seed: 1,
        }
    }

    fn report(storage: StorageFigures) -> RunReport {
        RunReport::new(&["a".into()], &config(), 1.0, &ClientStats::new(), storage)
    }

    #[test]
    fn a_real_disk_run_carries_no_disk_label() {
        let run = report(StorageFigures::default());
        assert_eq!(run.disk_profile, None);
        assert!(run.to_json_line().contains("\"disk_profile\":null"));
        assert!(!table_row(&run).contains("emulated"));
        assert!(!format_comparison(&[run]).contains("emulated"));
    }

    #[test]
    fn a_server_reporting_an_emulated_delay_labels_row_json_and_comparison() {
        let run = report(StorageFigures {
            emulated_fsync_delay_us: Some(200.0),
            ..StorageFigures::default()
        });
        let label = "server-side (emulated: +0.2 ms per fsync)";
        assert_eq!(run.disk_profile.as_deref(), Some(label));
        assert!(run.to_json_line().contains(label));
        assert!(table_row(&run).ends_with(&format!("disk: {label}")));
        let comparison = format_comparison(&[run]);
        let lines: Vec<&str> = comparison.lines().collect();
        assert!(
            lines[1].starts_with("storage comparison (disk"),
            "{comparison}"
        );
        assert!(lines[3].ends_with(label), "{comparison}");
    }
}
