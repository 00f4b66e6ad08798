//! `tally-bench wal`: N writer threads append to one group-commit WAL for a fixed time.
//!
//! Each writer keeps up to `--inflight` appends outstanding (1 = a blocking caller like a
//! database thread waiting for durability; 256 = the Raft leader, which keeps appending
//! while earlier appends sync). Latency is append-to-durable, recorded per entry in an
//! HDR histogram; throughput counts entries made durable. `--disk-profile` adds a fixed
//! delay after every fdatasync (see `load/disk_profile.rs`); the report then says
//! "emulated".

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use tally_wal::{Backend, GroupCommitOptions, Wal, WalOptions};

use crate::load::disk_profile::DiskProfileArgs;

#[derive(Args, Debug, Clone)]
pub struct WalArgs {
    /// Concurrent writer threads.
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
    /// Appends each writer keeps outstanding (1 = blocking caller).
    #[arg(long, default_value_t = 256)]
    pub inflight: usize,
    /// Payload size of each entry in bytes.
    #[arg(long, default_value_t = 128)]
    pub value_size: usize,
    /// Measurement time in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Directory to create the WAL in (a fresh subdirectory, removed afterwards).
    /// Default: the system temp dir.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// I/O backend: auto, uring or sync (the library's default).
    #[arg(long, default_value = "sync")]
    pub backend: Backend,
    /// Segment size in MiB.
    #[arg(long, default_value_t = 64)]
    pub segment_mib: u64,
    /// Zero-fill each segment when it is created (lower fdatasync latency, each segment
    /// written twice; see `WalOptions::zero_fill_segments`).
    #[arg(long)]
    pub zero_fill: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub disk: DiskProfileArgs,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    backend: String,
    writers: usize,
    inflight: usize,
    value_size: usize,
    zero_fill: bool,
    seconds: f64,
    entries: u64,
    entries_per_sec: f64,
    mb_per_sec: f64,
    fsyncs_per_sec: f64,
    entries_per_fsync: f64,
    bytes_per_fsync: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    /// Includes the emulated delay, when there is one.
    mean_fsync_us: f64,
    dir: String,
    /// e.g. `hdd (emulated: +8 ms per fsync)`; null on the real disk alone.
    disk_profile: Option<String>,
    /// The delay the WAL added after every fdatasync, in µs (0: none).
    emulated_fsync_delay_us: u64,
}

/// Runs the benchmark and prints the report.
pub fn run(args: &WalArgs) -> Result<(), String> {
    if args.writers == 0 || args.inflight == 0 {
        return Err("--writers and --inflight must be at least 1".into());
    }
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("tally-wal-bench-")
        .tempdir_in(&parent)
        .map_err(|e| format!("temp dir in {}: {e}", parent.display()))?;
    let segment_size_bytes = args.segment_mib << 20;
    let options = GroupCommitOptions {
        wal: WalOptions {
            segment_size_bytes,
            max_entry_size_bytes: (args.value_size as u64)
                .max(1 << 20)
                .min(segment_size_bytes / 4),
            ..WalOptions::default()
        },
        backend: args.backend,
        emulated_sync_delay: args.disk.emulation().map(|disk| disk.fsync_delay()),
        ..GroupCommitOptions::default()
    };
    let wal = Wal::open(dir.path(), options).map_err(|e| e.to_string())?;
    let payload = Bytes::from(vec![0xA5u8; args.value_size]);
    let duration = Duration::from_secs_f64(args.seconds);

    let started = Instant::now();
    let deadline = started + duration;
    let writers: Vec<_> = (0..args.writers)
        .map(|_| {
            let wal = wal.clone();
            let payload = payload.clone();
            let inflight = args.inflight;
            std::thread::spawn(move || writer(&wal, &payload, inflight, deadline))
        })
        .collect();
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())?;
    let mut entries = 0u64;
    for handle in writers {
        let (count, local) = handle
            .join()
            .map_err(|_| "writer thread panicked".to_string())??;
        entries += count;
        histogram.add(&local).map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = wal.stats();
    let report = Report {
        backend: wal.backend_name().to_string(),
        writers: args.writers,
        inflight: args.inflight,
        value_size: args.value_size,
        zero_fill: args.zero_fill,
        seconds: elapsed,
        entries,
        entries_per_sec: entries as f64 / elapsed,
        mb_per_sec: entries as f64 * args.value_size as f64 / elapsed / 1e6,
        fsyncs_per_sec: stats.batches as f64 / elapsed,
        entries_per_fsync: stats.entries_per_fsync(),
        bytes_per_fsync: stats.bytes_per_fsync(),
        p50_us: histogram.value_at_quantile(0.50),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
        mean_fsync_us: stats.fsync_total_us as f64 / stats.batches.max(1) as f64,
        dir: parent.display().to_string(),
        disk_profile: args.disk.emulation().map(|disk| disk.label()),
        emulated_fsync_delay_us: stats.emulated_sync_delay_us,
    };
    drop(wal);
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "tally-bench wal  backend={} writers={} inflight={} value_size={} B  dir={}",
            report.backend, report.writers, report.inflight, report.value_size, report.dir
        );
        if let Some(disk) = &report.disk_profile {
            println!("  disk             {disk} -- every figure below is for an emulated disk");
        }
        println!("  entries/s        {:>14.0}", report.entries_per_sec);
        println!("  MB/s (payload)   {:>14.1}", report.mb_per_sec);
        println!("  fsyncs/s         {:>14.0}", report.fsyncs_per_sec);
        println!("  entries/fsync    {:>14.1}", report.entries_per_fsync);
        println!("  bytes/fsync      {:>14.0}", report.bytes_per_fsync);
        let emulated = if report.emulated_fsync_delay_us > 0 {
            format!(" (incl. emulated +{} us)", report.emulated_fsync_delay_us)
        } else {
            String::new()
        };
        println!(
            "  write+fsync mean {:>12.0} us{emulated}",
            report.mean_fsync_us
        );
        println!(
            "  append->durable  p50 {} us  p99 {} us  p99.9 {} us  max {} us",
            report.p50_us, report.p99_us, report.p999_us, report.max_us
        );
    }
    Ok(())
}

/// One writer: keeps up to `inflight` appends outstanding until `deadline`, then drains.
/// Returns (entries made durable, latency histogram).
fn writer(
    wal: &Wal,
    payload: &Bytes,
    inflight: usize,
    deadline: Instant,
) -> Result<(u64, Histogram<u64>), String> {
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())?;
    let mut outstanding: VecDeque<(u64, Instant)> = VecDeque::with_capacity(inflight);
    let mut durable_entries = 0u64;
    let payloads = std::slice::from_ref(payload);
    loop {
        let now = Instant::now();
        let stop = now >= deadline;
        if !stop && outstanding.len() < inflight {
            let ticket = wal
                .append_assign(1, 0, payloads)
                .map_err(|e| e.to_string())?;
            outstanding.push_back((ticket.last_index(), now));
            continue;
        }
        let Some(&(oldest, _)) = outstanding.front() else {
            break;
        };
        let durable = if wal.durable_index() >= oldest {
            wal.durable_index()
        } else {
            wal.wait_durable(oldest).map_err(|e| e.to_string())?
        };
        let done_at = Instant::now();
        while let Some(&(index, appended_at)) = outstanding.front() {
            if index > durable {
                break;
            }
            outstanding.pop_front();
            let latency_us = done_at.duration_since(appended_at).as_micros() as u64;
            histogram.saturating_record(latency_us.max(1));
            durable_entries += 1;
        }
    }
    Ok((durable_entries, histogram))
}
