//! Command-line flags of the load generator, validated by clap so that a bad value exits
//! with status 2 and a message naming the flag.

use std::path::PathBuf;

use clap::Args;

/// Largest value a run may write: bounds the per-client buffers (pipeline x value).
pub const MAX_VALUE_SIZE_BYTES: usize = 16 << 20;
/// Keys are `key:` plus [`KEY_DIGITS`] decimal digits, so the key space is bounded.
pub const KEY_DIGITS: usize = 12;
/// Largest key space: every key index must fit in [`KEY_DIGITS`] digits.
pub const MAX_KEYS: u64 = 1_000_000_000_000;
/// Most requests one connection keeps in flight.
pub const MAX_PIPELINE: usize = 65_536;
/// Most client threads (each owns a thread and a socket).
pub const MAX_CLIENTS: usize = 10_000;

/// Flags of `tally-bench` without a subcommand: drive RESP servers with a SET/GET load.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// RESP server to drive, HOST:PORT. Repeat for the members of a cluster: clients start
    /// spread over them and follow `-NOTLEADER <addr>` redirects to the leader.
    #[arg(long = "target", value_name = "HOST:PORT")]
    pub targets: Vec<String>,
    /// Without --target: where the embedded 3-node cluster keeps its WALs (a fresh
    /// directory is created inside and removed afterwards). Repeat to run the same
    /// workload on each location in turn, e.g. an HDD, an SSD and /dev/shm.
    #[arg(long = "dir", value_name = "PATH", conflicts_with = "targets")]
    pub dirs: Vec<PathBuf>,
    /// Client threads, each with its own TCP connection.
    #[arg(long, default_value_t = 50, value_parser = parse_clients)]
    pub clients: usize,
    /// Requests each connection keeps in flight (closed loop: exactly this many per
    /// round trip; open loop: at most this many).
    #[arg(long, default_value_t = 1, value_parser = parse_pipeline)]
    pub pipeline: usize,
    /// Size of each SET value in bytes (GET replies must have this size).
    #[arg(long, default_value_t = 100, value_parser = parse_value_size)]
    pub value_size: usize,
    /// Key space: keys `key:000000000000` .. `key:<keys-1>`, chosen uniformly.
    #[arg(long, default_value_t = 100_000, value_parser = parse_keys)]
    pub keys: u64,
    /// Fraction of operations that are GETs (0.0 = SET only, 1.0 = GET only). When above
    /// 0, every key is written once before the run so GETs find a value. Default: 0.5 (a
    /// mixed load) for the embedded cluster, 0 (SET only) with --target
    #[arg(long, value_parser = parse_ratio)]
    pub read_ratio: Option<f64>,
    /// Measured time per run, in seconds.
    #[arg(long, default_value_t = 5.0, value_parser = parse_positive_seconds)]
    pub seconds: f64,
    /// Unrecorded time before each measured run, in seconds.
    #[arg(long, default_value_t = 1.0, value_parser = parse_nonnegative_seconds)]
    pub warmup: f64,
    /// Open loop: send this many operations per second in total, on a fixed schedule,
    /// and measure each latency from the operation's intended send time.
    #[arg(long, value_name = "OPS", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Run a series, e.g. `clients=1,8,64,256` (also `pipeline=` and `value-size=`).
    #[arg(long, value_name = "PARAM=V1,V2,..", value_parser = parse_sweep)]
    pub sweep: Option<Sweep>,
    /// Print one JSON object per run (one per line) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Draw throughput and latency percentiles per run into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Seed of the key and operation choice (each client derives its own stream).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Authenticate every connection with `AUTH PASSWORD` (a server started with
    /// `--requirepass-file`); the embedded cluster then requires it too.
    #[arg(long, value_name = "PASSWORD")]
    pub password: Option<String>,
    /// `--disk-profile` / `--fsync-delay-ms` (embedded cluster only; applies to every
    /// `--dir`).
    #[command(flatten)]
    pub disk: super::disk_profile::DiskProfileArgs,
}

/// The flag a sweep varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepParam {
    Clients,
    Pipeline,
    ValueSize,
}

impl SweepParam {
    pub fn name(self) -> &'static str {
        match self {
            SweepParam::Clients => "clients",
            SweepParam::Pipeline => "pipeline",
            SweepParam::ValueSize => "value_size",
        }
    }
}

/// `--sweep PARAM=V1,V2,...`: one run per value, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sweep {
    pub param: SweepParam,
    /// Invariant: non-empty, every value valid for `param`.
    pub values: Vec<usize>,
}

/// Read ratio of the embedded run when `--read-ratio` is not given: the README's main
/// command measures a mixed load.
pub const EMBEDDED_DEFAULT_READ_RATIO: f64 = 0.5;

/// The workload of one run, after a sweep value has been applied.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    pub clients: usize,
    pub pipeline: usize,
    pub value_size: usize,
    pub keys: u64,
    pub read_ratio: f64,
    pub seconds: f64,
    pub warmup: f64,
    pub rate: Option<f64>,
    pub seed: u64,
}

impl LoadArgs {
    /// The runs to perform: one, or one per sweep value.
    pub fn runs(&self) -> Vec<RunConfig> {
        let base = RunConfig {
            clients: self.clients,
            pipeline: self.pipeline,
            value_size: self.value_size,
            keys: self.keys,
            read_ratio: self.read_ratio.unwrap_or(if self.targets.is_empty() {
                EMBEDDED_DEFAULT_READ_RATIO
            } else {
                0.0
            }),
            seconds: self.seconds,
            warmup: self.warmup,
            rate: self.rate,
            seed: self.seed,
        };
        match &self.sweep {
            None => vec![base],
            Some(sweep) => sweep
                .values
                .iter()
                .map(|&value| {
                    let mut run = base.clone();
                    match sweep.param {
                        SweepParam::Clients => run.clients = value,
                        SweepParam::Pipeline => run.pipeline = value,
                        SweepParam::ValueSize => run.value_size = value,
                    }
                    run
                })
                .collect(),
        }
    }
}

/// A whole number in `min..=max` (shared with `tally-bench etcd`).
pub(crate) fn parse_bounded_u64(text: &str, min: u64, max: u64) -> Result<u64, String> {
    let value: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number"))?;
    if value < min || value > max {
        return Err(format!("{value} is out of range {min}..={max}"));
    }
    Ok(value)
}

fn parse_bounded(text: &str, min: usize, max: usize) -> Result<usize, String> {
    parse_bounded_u64(text, min as u64, max as u64).map(|value| value as usize)
}

fn parse_clients(text: &str) -> Result<usize, String> {
    parse_bounded(text, 1, MAX_CLIENTS)
}

fn parse_pipeline(text: &str) -> Result<usize, String> {
    parse_bounded(text, 1, MAX_PIPELINE)
}

fn parse_value_size(text: &str) -> Result<usize, String> {
    parse_bounded(text, 0, MAX_VALUE_SIZE_BYTES)
}

pub(crate) fn parse_keys(text: &str) -> Result<u64, String> {
    parse_bounded_u64(text, 1, MAX_KEYS)
}

fn parse_finite(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if !value.is_finite() {
        return Err(format!("`{text}` is not a finite number"));
    }
    Ok(value)
}

pub(crate) fn parse_ratio(text: &str) -> Result<f64, String> {
    let value = parse_finite(text)?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("{value} is not between 0.0 and 1.0"));
    }
    Ok(value)
}

pub(crate) fn parse_positive_seconds(text: &str) -> Result<f64, String> {
    let value = parse_finite(text)?;
    if value <= 0.0 || value > 86_400.0 {
        return Err(format!("{value} is not in (0, 86400] seconds"));
    }
    Ok(value)
}

pub(crate) fn parse_nonnegative_seconds(text: &str) -> Result<f64, String> {
    let value = parse_finite(text)?;
    if !(0.0..=86_400.0).contains(&value) {
        return Err(format!("{value} is not in [0, 86400] seconds"));
    }
    Ok(value)
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let value = parse_finite(text)?;
    if value <= 0.0 || value > 1e9 {
        return Err(format!("{value} is not in (0, 1e9] operations per second"));
    }
    Ok(value)
}

type ValueParser = fn(&str) -> Result<usize, String>;

/// Parses `clients=1,8,64,256` (names: clients, pipeline, value-size / value_size).
pub fn parse_sweep(text: &str) -> Result<Sweep, String> {
    let (name, list) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not PARAM=V1,V2,.. (e.g. clients=1,8,64)"))?;
    let (param, parse): (SweepParam, ValueParser) = match name.trim() {
        "clients" => (SweepParam::Clients, parse_clients),
        "pipeline" => (SweepParam::Pipeline, parse_pipeline),
        "value-size" | "value_size" => (SweepParam::ValueSize, parse_value_size),
        other => {
            return Err(format!(
                "unknown sweep parameter `{other}` (expected clients, pipeline or value-size)"
            ))
        }
    };
    let values = list
        .split(',')
        .map(|item| parse(item).map_err(|e| format!("{}: {e}", param.name())))
        .collect::<Result<Vec<_>, _>>()?;
    if values.is_empty() {
        return Err("a sweep needs at least one value".into());
    }
    Ok(Sweep { param, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_of_clients_keeps_order_and_values() {
        let sweep = parse_sweep("clients=1,8,64,256").unwrap();
        assert_eq!(sweep.param, SweepParam::Clients);
        assert_eq!(sweep.values, vec![1, 8, 64, 256]);
    }

    #[test]
    fn sweep_accepts_both_spellings_of_value_size() {
        assert_eq!(
            parse_sweep("value-size=10,1000").unwrap(),
            parse_sweep("value_size=10,1000").unwrap()
        );
    }

    #[test]
    fn sweep_rejects_unknown_param_empty_items_and_out_of_range_values() {
        assert!(parse_sweep("threads=1,2").unwrap_err().contains("unknown"));
        assert!(parse_sweep("clients=1,,2").is_err());
        assert!(parse_sweep("clients=0")
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_sweep("clients").is_err());
        assert!(parse_sweep("pipeline=1,x")
            .unwrap_err()
            .contains("pipeline"));
    }

    #[test]
    fn ratio_must_lie_between_zero_and_one() {
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert!(parse_ratio("1.5").is_err());
        assert!(parse_ratio("-0.1").is_err());
        assert!(parse_ratio("NaN").is_err());
    }
}
