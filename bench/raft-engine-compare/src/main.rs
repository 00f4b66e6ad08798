//! Blocking writers (each waits for durability before its next append) against
//! raft-engine (`Engine::write(batch, sync = true)`) and tally-wal
//! (`append_assign(..).wait()`), same process, same directory, same payloads.
//!
//! Usage: raft-engine-compare [DIR] [WRITERS] [VALUE_SIZE] [SECONDS] [ENGINES] [SLICES]
//!
//! ENGINES: comma-separated, run in that order (default `raft-engine,tally-sync,tally-auto`;
//! `tally-sync` is the library's default backend, `tally-auto` io_uring where the kernel has it). The first one is the ratio's baseline.
//! SLICES (default 1): all engines are opened first, then each runs SECONDS in total as
//! SLICES round-robin slices, so a disk that slows down for a few seconds (a shared
//! machine) hits every engine alike instead of whichever ran then.
//! tally lines add entries per fsync, the mean write+fsync and the mean batch cycle
//! (elapsed / batches): cycle - fsync is the time the disk waited for the callers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

fn run_writers(writers: usize, seconds: f64, append: Arc<dyn Fn(usize, u64) + Send + Sync>) -> (u64, f64, Histogram<u64>) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|writer| {
            let append = Arc::clone(&append);
            std::thread::spawn(move || {
                let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    let began = Instant::now();
                    append(writer, seq);
                    histogram.saturating_record((began.elapsed().as_micros() as u64).max(1));
                    seq += 1;
                }
                (seq, histogram)
            })
        })
        .collect();
    let mut total = 0;
    let mut merged = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    for handle in handles {
        let (count, histogram) = handle.join().expect("writer");
        total += count;
        merged.add(&histogram).expect("merge");
    }
    (total, started.elapsed().as_secs_f64(), merged)
}

/// One engine under test: its blocking append, accumulated over its slices.
struct Contender {
    name: String,
    append: Arc<dyn Fn(usize, u64) + Send + Sync>,
    /// tally-wal only: for entries per fsync, mean fsync and cycle.
    wal: Option<tally_wal::Wal>,
    entries: u64,
    seconds: f64,
    histogram: Histogram<u64>,
    /// Keeps the engine's directory until the end.
    _dir: tempfile::TempDir,
}

fn raft_engine(dir: &Path, value: &Bytes) -> (String, Arc<dyn Fn(usize, u64) + Send + Sync>, Option<tally_wal::Wal>) {
    let config = raft_engine::Config { dir: dir.display().to_string(), ..Default::default() };
    let engine = Arc::new(raft_engine::Engine::open(config).expect("open raft-engine"));
    let value = value.to_vec();
    let append = Arc::new(move |writer: usize, seq: u64| {
        let mut batch = raft_engine::LogBatch::default();
        batch.put(writer as u64 + 1, seq.to_be_bytes().to_vec(), value.clone()).expect("put");
        engine.write(&mut batch, true).expect("write");
    });
    ("raft-engine 0.4 (write sync=true)".into(), append, None)
}

fn tally(dir: &Path, value: &Bytes, backend: tally_wal::Backend) -> (String, Arc<dyn Fn(usize, u64) + Send + Sync>, Option<tally_wal::Wal>) {
    let options = tally_wal::GroupCommitOptions { backend, ..Default::default() };
    let wal = tally_wal::Wal::open(dir, options).expect("open tally-wal");
    let name = format!("tally-wal ({})", wal.backend_name());
    let append_wal = wal.clone();
    let payload = [value.clone()];
    let append = Arc::new(move |_: usize, _: u64| {
        append_wal.append_assign(1, 0, &payload).expect("append").wait().expect("durable");
    });
    (name, append, Some(wal))
}

fn tally_extra(wal: &tally_wal::Wal, seconds: f64) -> String {
    let stats = wal.stats();
    let batches = stats.batches.max(1) as f64;
    format!(
        "entries/fsync {:.1}  fsync {:.0} us  cycle {:.0} us",
        stats.entries_per_fsync(),
        stats.fsync_total_us as f64 / batches,
        seconds * 1e6 / batches
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parent = PathBuf::from(args.get(1).cloned().unwrap_or_else(|| std::env::temp_dir().display().to_string()));
    let writers: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(64);
    let value_size: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(128);
    let seconds: f64 = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(5.0);
    let engines = args.get(5).cloned().unwrap_or_else(|| "raft-engine,tally-sync,tally-auto".into());
    let slices: usize = args.get(6).and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    let value = Bytes::from(vec![0x5Au8; value_size]);
    println!(
        "blocking writers: {writers}, value size {value_size} B, {seconds} s each in {slices} interleaved slice(s), dir {}",
        parent.display()
    );
    let mut contenders: Vec<Contender> = engines
        .split(',')
        .map(|engine| {
            let dir = tempfile::Builder::new().prefix("compare-").tempdir_in(&parent).expect("temp dir");
            let (name, append, wal) = match engine {
                "raft-engine" => raft_engine(dir.path(), &value),
                "tally-sync" => tally(dir.path(), &value, tally_wal::Backend::Sync),
                "tally-auto" => tally(dir.path(), &value, tally_wal::Backend::Auto),
                "tally-uring" => tally(dir.path(), &value, tally_wal::Backend::Uring),
                other => panic!("unknown engine {other:?} (raft-engine, tally-sync, tally-auto, tally-uring)"),
            };
            let histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
            Contender { name, append, wal, entries: 0, seconds: 0.0, histogram, _dir: dir }
        })
        .collect();
    for _ in 0..slices {
        for contender in &mut contenders {
            let (entries, elapsed, histogram) = run_writers(writers, seconds / slices as f64, Arc::clone(&contender.append));
            contender.entries += entries;
            contender.seconds += elapsed;
            contender.histogram.add(&histogram).expect("merge");
        }
    }
    let baseline = contenders[0].entries as f64 / contenders[0].seconds;
    for contender in &contenders {
        let rate = contender.entries as f64 / contender.seconds;
        let extra = contender.wal.as_ref().map(|wal| tally_extra(wal, contender.seconds)).unwrap_or_default();
        println!(
            "{:<36} {:>9.0} entries/s  ratio {:>5.2}  p50 {:>6} us  p99 {:>6} us  {}",
            contender.name,
            rate,
            rate / baseline,
            contender.histogram.value_at_quantile(0.5),
            contender.histogram.value_at_quantile(0.99),
            extra
        );
    }
}
