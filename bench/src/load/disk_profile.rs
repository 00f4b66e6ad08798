//! `--disk-profile hdd|ssd`: emulate a slower disk on machines that lack one.
//!
//! The emulation is the WAL's `emulated_sync_delay`: after every real batch fdatasync the
//! writer sleeps a fixed time before it reports the batch durable, so the device looks
//! that much slower while group commit keeps batching (the next batch fills during the
//! sleep, exactly as during a slow real fsync). It only models latency, not bandwidth or
//! seek patterns, and it adds to whatever the real disk costs. Every figure produced
//! under a profile is labelled "emulated" so it is never mistaken for a measurement of
//! real hardware.
//!
//! It applies where this process owns the WAL: the embedded cluster (every `--dir`
//! location) and `tally-bench wal`. A server behind `--target` is out of reach; start it
//! with `tally-server --emulated-fsync-delay-us N` instead (its INFO then reports
//! `emulated_fsync_delay_us`, which the reports pick up).

use std::time::Duration;

use clap::{Args, ValueEnum};

/// Largest accepted per-fsync delay (matches the server's bound): far above any real
/// device, so a larger value is a unit mistake.
pub const MAX_FSYNC_DELAY_MS: f64 = 1000.0;

/// A disk to emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiskProfile {
    /// A rotating disk: +8 ms per fsync (about one rotation at 7,200 rpm).
    Hdd,
    /// A SATA SSD without power-loss protection: +0.2 ms per fsync.
    Ssd,
}

impl DiskProfile {
    pub fn name(self) -> &'static str {
        match self {
            DiskProfile::Hdd => "hdd",
            DiskProfile::Ssd => "ssd",
        }
    }

    /// The delay added to every fsync unless `--fsync-delay-ms` overrides it.
    pub fn default_fsync_delay_ms(self) -> f64 {
        match self {
            DiskProfile::Hdd => 8.0,
            DiskProfile::Ssd => 0.2,
        }
    }
}

/// The flags, shared by the load generator and `tally-bench wal`.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct DiskProfileArgs {
    /// Emulate a disk by adding a fixed latency to every WAL fsync, on top of the real
    /// one: hdd = +8 ms, ssd = +0.2 ms (see --fsync-delay-ms). Results say "emulated".
    /// Only for WALs this process runs (the embedded cluster, `wal`), not --target.
    #[arg(long, value_enum, value_name = "hdd|ssd")]
    pub disk_profile: Option<DiskProfile>,
    /// With --disk-profile: the latency added to every fsync, in milliseconds
    /// (fractions allowed, e.g. 0.5), instead of the profile's default.
    #[arg(long, value_name = "MS", requires = "disk_profile", value_parser = parse_fsync_delay_ms)]
    pub fsync_delay_ms: Option<f64>,
}

/// A resolved profile: what to emulate and how to say so.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskEmulation {
    pub profile: DiskProfile,
    /// Invariant: in `(0, MAX_FSYNC_DELAY_MS]`.
    pub fsync_delay_ms: f64,
}

impl DiskProfileArgs {
    /// `None` when no profile was asked for.
    pub fn emulation(&self) -> Option<DiskEmulation> {
        let profile = self.disk_profile?;
        let fsync_delay_ms = self
            .fsync_delay_ms
            .unwrap_or_else(|| profile.default_fsync_delay_ms());
        debug_assert!(fsync_delay_ms > 0.0 && fsync_delay_ms <= MAX_FSYNC_DELAY_MS);
        Some(DiskEmulation {
            profile,
            fsync_delay_ms,
        })
    }
}

impl DiskEmulation {
    /// The WAL option.
    pub fn fsync_delay(&self) -> Duration {
        Duration::from_secs_f64(self.fsync_delay_ms / 1000.0)
    }

    /// The label every report carries, e.g. `hdd (emulated: +8 ms per fsync)`.
    pub fn label(&self) -> String {
        format!(
            "{} (emulated: +{} ms per fsync)",
            self.profile.name(),
            self.fsync_delay_ms
        )
    }
}

/// The label of a run against a server that reported its own emulated delay in INFO.
pub fn label_from_server(fsync_delay_us: f64) -> String {
    format!(
        "server-side (emulated: +{} ms per fsync)",
        fsync_delay_us / 1000.0
    )
}

/// Usage error text for a profile combined with external targets.
pub const TARGET_CONFLICT: &str = "--disk-profile cannot be used with --target: it emulates a \
    slower disk inside the WALs this process runs, and a remote server's disk is out of \
    reach. Drop --target to benchmark the embedded cluster, or start each tally-server \
    with --emulated-fsync-delay-us N";

fn parse_fsync_delay_ms(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of milliseconds"))?;
    if !value.is_finite() || value <= 0.0 || value > MAX_FSYNC_DELAY_MS {
        return Err(format!(
            "{text} ms is not in (0, {MAX_FSYNC_DELAY_MS}] milliseconds"
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(profile: Option<DiskProfile>, fsync_delay_ms: Option<f64>) -> DiskProfileArgs {
        DiskProfileArgs {
            disk_profile: profile,
            fsync_delay_ms,
        }
    }

    #[test]
    fn profiles_default_to_8_ms_for_hdd_and_0_2_ms_for_ssd() {
        let hdd = args(Some(DiskProfile::Hdd), None).emulation().unwrap();
        assert_eq!(hdd.fsync_delay(), Duration::from_millis(8));
        assert_eq!(hdd.label(), "hdd (emulated: +8 ms per fsync)");
        let ssd = args(Some(DiskProfile::Ssd), None).emulation().unwrap();
        assert_eq!(ssd.fsync_delay(), Duration::from_micros(200));
        assert_eq!(ssd.label(), "ssd (emulated: +0.2 ms per fsync)");
    }

    #[test]
    fn fsync_delay_ms_overrides_the_profile_default() {
        let hdd = args(Some(DiskProfile::Hdd), Some(4.5)).emulation().unwrap();
        assert_eq!(hdd.fsync_delay(), Duration::from_micros(4_500));
        assert_eq!(hdd.label(), "hdd (emulated: +4.5 ms per fsync)");
    }

    #[test]
    fn no_profile_means_no_emulation() {
        assert_eq!(args(None, None).emulation(), None);
    }

    #[test]
    fn fsync_delay_must_be_a_positive_bounded_number_of_milliseconds() {
        assert_eq!(parse_fsync_delay_ms("0.25"), Ok(0.25));
        assert_eq!(parse_fsync_delay_ms("1000"), Ok(1000.0));
        for bad in ["0", "-1", "1000.5", "NaN", "inf", "8ms", ""] {
            assert!(parse_fsync_delay_ms(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_server_reported_delay_is_labelled_emulated() {
        assert_eq!(
            label_from_server(8000.0),
            "server-side (emulated: +8 ms per fsync)"
        );
    }
}
