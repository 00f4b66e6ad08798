//! The load generator: drives any RESP server (a Tally cluster, a Redis) with the same
//! SET/GET workload so that comparisons use one tool.
//!
//! A run: (preload the key space when GETs are asked for) -> every client connects ->
//! warmup (not recorded) -> measured window, with the targets' INFO sampled at its start
//! and end -> per-thread histograms merged -> one [`report::RunReport`]. `--sweep`
//! repeats this per value. Targets come in as a list of addresses from any source, so
//! the embedded cluster mode can hand over the addresses of the nodes it starts.

pub mod args;
pub mod client;
pub mod disk_profile;
pub mod info;
pub mod plot;
pub mod reply;
pub mod report;
pub mod request;
pub mod schedule;
pub mod stats;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use args::{LoadArgs, RunConfig};
use client::{ClientSetup, Connector, OpSource, Timeline};
use disk_profile::DiskEmulation;
use report::RunReport;
use request::OpChooser;
use stats::ClientStats;

/// How long the preload may take before the run goes on without the missing keys (their
/// GETs then count as wrong replies).
const PRELOAD_LIMIT: Duration = Duration::from_secs(300);
/// Connections and pipeline depth of the preload.
const PRELOAD_CLIENTS: usize = 8;
const PRELOAD_PIPELINE: usize = 64;

/// Output and display choices, separate from the workload.
#[derive(Debug, Clone)]
pub struct OutputOptions {
    pub json: bool,
    pub progress_bar: bool,
}

/// Runs every configured run against `targets`, printing each result as it completes.
/// Returns the reports (for the plot).
pub fn run_all(
    targets: &[String],
    runs: &[RunConfig],
    output: &OutputOptions,
) -> Result<Vec<RunReport>, String> {
    run_all_on_disk(targets, runs, output, None)
}

/// [`run_all`] against servers whose WALs run under `disk` emulation (the embedded
/// cluster): every report row and JSON object says so (the caller titles the table).
pub fn run_all_on_disk(
    targets: &[String],
    runs: &[RunConfig],
    output: &OutputOptions,
    disk: Option<&DiskEmulation>,
) -> Result<Vec<RunReport>, String> {
    let targets = Arc::new(targets.to_vec());
    let mut reports = Vec::with_capacity(runs.len());
    let mut preloaded: Option<(u64, usize)> = None;
    if !output.json {
        let mode = match runs.first().and_then(|r| r.rate) {
            Some(rate) => format!("open loop at {rate} ops/s, latency from intended send time"),
            None => "closed loop".to_string(),
        };
        if let Some(first) = runs.first() {
            println!(
                "tally-bench -> {}  ({mode}; {} s measured after {} s warmup; {} keys)",
                targets.join(","),
                first.seconds,
                first.warmup,
                first.keys
            );
        }
    }
    for (index, config) in runs.iter().enumerate() {
        if config.read_ratio > 0.0 && preloaded != Some((config.keys, config.value_size)) {
            preload(&targets, config, output)?;
            preloaded = Some((config.keys, config.value_size));
        }
        let mut report = run_one(&targets, config, output)?;
        if let Some(disk) = disk {
            report.disk_profile = Some(disk.label());
        }
        if output.json {
            println!("{}", report.to_json_line());
        } else {
            // After the preload's line, so header and rows stay together.
            if index == 0 {
                println!("{}", report::table_header());
            }
            println!("{}", report::table_row(&report));
        }
        reports.push(report);
    }
    Ok(reports)
}

/// Writes every key once so that GETs find values of the configured size.
fn preload(
    targets: &Arc<Vec<String>>,
    config: &RunConfig,
    output: &OutputOptions,
) -> Result<(), String> {
    let started = Instant::now();
    let timeline = Timeline {
        base: started,
        measure_start_ns: 0,
        measure_end_ns: PRELOAD_LIMIT.as_nanos() as u64,
    };
    let n_threads = PRELOAD_CLIENTS.min(config.keys as usize).max(1);
    let progress = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..n_threads)
        .map(|index| {
            let setup = ClientSetup {
                connector: Connector::new(targets.clone(), index),
                pipeline: PRELOAD_PIPELINE,
                value_size: config.value_size,
                progress: progress.clone(),
            };
            let source = OpSource::Sequential {
                next: index as u64,
                stride: n_threads as u64,
                end: config.keys,
            };
            thread::spawn(move || client::run_closed_loop(setup, timeline, source, true))
        })
        .collect();
    let total = ClientStats::join_all(handles, "preload")?;
    let missing = total.failed_keys.len();
    let line = format!(
        "preload: {} of {} keys written in {:.1} s{}",
        config.keys - missing as u64,
        config.keys,
        started.elapsed().as_secs_f64(),
        total
            .error_sample
            .as_ref()
            .map(|s| format!(" ({} errors, first: {s})", total.errors.total()))
            .unwrap_or_default()
    );
    // Keep stdout pure JSON lines under --json.
    if output.json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    if missing as u64 == config.keys {
        return Err(format!(
            "preload wrote none of the {} keys: {}",
            config.keys,
            total.error_sample.unwrap_or_else(|| "no reply".into())
        ));
    }
    Ok(())
}

fn run_one(
    targets: &Arc<Vec<String>>,
    config: &RunConfig,
    output: &OutputOptions,
) -> Result<RunReport, String> {
    let warmup_ns = (config.warmup * 1e9) as u64;
    let measure_ns = (config.seconds * 1e9) as u64;
    let progress = Arc::new(AtomicU64::new(0));
    // Clients connect, then all start together on a clock set after the last connected.
    let connected = Arc::new(Barrier::new(config.clients + 1));
    let shared_timeline: Arc<OnceLock<Timeline>> = Arc::new(OnceLock::new());
    let started = Arc::new(Barrier::new(config.clients + 1));
    let mut handles = Vec::with_capacity(config.clients);
    for index in 0..config.clients {
        let setup = ClientSetup {
            connector: Connector::new(targets.clone(), index),
            pipeline: config.pipeline,
            value_size: config.value_size,
            progress: progress.clone(),
        };
        let chooser = OpChooser::new(
            config
                .seed
                .wrapping_mul(0x1_0000_0001)
                .wrapping_add(index as u64),
            config.keys,
            config.read_ratio,
        );
        let (connected, started, shared_timeline) =
            (connected.clone(), started.clone(), shared_timeline.clone());
        let rate = config.rate;
        let n_clients = config.clients;
        let handle = thread::Builder::new()
            .name(format!("client-{index}"))
            .stack_size(256 << 10)
            .spawn(move || {
                connected.wait();
                started.wait();
                let Some(&timeline) = shared_timeline.get() else {
                    return ClientStats::new();
                };
                match rate {
                    None => {
                        client::run_closed_loop(setup, timeline, OpSource::Random(chooser), false)
                    }
                    Some(rate) => {
                        let per_client = rate / n_clients as f64;
                        // Spread the clients' phases over one interval.
                        let offset_ns = (1e9 / per_client * index as f64 / n_clients as f64) as u64;
                        client::run_open_loop(setup, timeline, chooser, per_client, offset_ns)
                    }
                }
            })
            .map_err(|e| format!("spawn client thread: {e}"))?;
        handles.push(handle);
    }
    connected.wait();
    let timeline = Timeline {
        base: Instant::now(),
        measure_start_ns: warmup_ns,
        measure_end_ns: warmup_ns + measure_ns,
    };
    let _ = shared_timeline.set(timeline);
    started.wait();

    let bar = output
        .progress_bar
        .then(|| progress_bar(warmup_ns + measure_ns));
    let mut before = Vec::new();
    let mut sampled_before = false;
    loop {
        let now_ns = timeline.now_ns();
        if !sampled_before && now_ns >= timeline.measure_start_ns {
            before = info::sample_all(targets);
            sampled_before = true;
        }
        if now_ns >= timeline.measure_end_ns {
            break;
        }
        if let Some(bar) = &bar {
            bar.set_position(now_ns / 1_000_000);
            let phase = if now_ns < timeline.measure_start_ns {
                "warmup"
            } else {
                "measuring"
            };
            bar.set_message(format!("{phase}, {} ops", progress.load(Ordering::Relaxed)));
        }
        let wake_ns = if sampled_before {
            timeline.measure_end_ns
        } else {
            timeline.measure_start_ns
        };
        thread::sleep(
            Duration::from_nanos(wake_ns.saturating_sub(now_ns)).min(Duration::from_millis(100)),
        );
    }
    let after = info::sample_all(targets);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let total = ClientStats::join_all(handles, "client")?;
    let seconds = config.seconds;
    let storage = info::storage_figures(&before, &after, seconds, total.ops_ok);
    Ok(RunReport::new(targets, config, seconds, &total, storage))
}

fn progress_bar(total_ns: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total_ns / 1_000_000);
    let style = indicatif::ProgressStyle::with_template("{bar:40} {elapsed_precise} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Entry point of `tally-bench [--target ...]`. Returns the process exit code.
pub fn main(args: &LoadArgs) -> i32 {
    if !args.targets.is_empty() && args.disk.disk_profile.is_some() {
        // A usage error (exit 2, like clap's), with the reason and the alternative.
        eprintln!("tally-bench: {}", disk_profile::TARGET_CONFLICT);
        return 2;
    }
    if let Some(password) = &args.password {
        client::set_password(password);
    }
    let output = OutputOptions {
        json: args.json,
        progress_bar: std::io::stderr().is_terminal(),
    };
    let result = if args.targets.is_empty() {
        crate::embedded::run(args, &output)
    } else {
        run_all(&args.targets, &args.runs(), &output)
    };
    let reports = match result {
        Ok(reports) => reports,
        Err(error) => {
            eprintln!("tally-bench: {error}");
            return 1;
        }
    };
    if args.dirs.len() > 1 && !args.json {
        print!("{}", report::format_comparison(&reports));
    }
    if let Some(path) = &args.plot {
        let x_name = args.sweep.as_ref().map_or("run", |s| s.param.name());
        if let Err(error) = plot::write_svg(path, &reports, x_name) {
            eprintln!("tally-bench: plot {}: {error}", path.display());
            return 1;
        }
    }
    if reports.iter().all(|r| r.ops == 0) {
        eprintln!("tally-bench: no operation succeeded");
        return 1;
    }
    0
}
