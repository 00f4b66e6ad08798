//! Reads the `# Raft` section of a target's `INFO` reply, before and after the measured
//! window, to report what the storage did per operation. Targets without that section
//! (Redis) yield nothing and the columns stay empty.
//!
//! Fields read, all `key:value` lines of `# Raft`:
//! * `role` (`leader` marks the node whose figures are reported);
//! * `entries_per_fsync` (a gauge, used when the counters below are absent);
//! * counters, when present (first name found wins): fsyncs — `wal_fsyncs`, `fsyncs`;
//!   WAL bytes written — `wal_bytes`, `wal_bytes_written`, `bytes_written`; WAL entries written —
//!   `wal_entries`, `wal_entries_written`. With them, entries per fsync, fsyncs per
//!   second and bytes written per operation are exact deltas over the measured window;
//! * `emulated_fsync_delay_us`, when the node emulates a slower disk (reports then say
//!   "emulated").

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use super::client::connect_to;
use super::reply::{scan_reply, Reply};

const INFO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest INFO reply accepted.
const MAX_INFO_BYTES: usize = 1 << 20;

pub const FSYNC_COUNTERS: &[&str] = &["wal_fsyncs", "fsyncs"];
pub const BYTES_COUNTERS: &[&str] = &["wal_bytes", "wal_bytes_written", "bytes_written"];
pub const ENTRY_COUNTERS: &[&str] = &["wal_entries", "wal_entries_written"];
/// Present (in µs) only on a node whose WAL emulates a slower disk.
pub const EMULATED_FSYNC_DELAY: &str = "emulated_fsync_delay_us";

/// The `# Raft` section of one node's INFO.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RaftInfo {
    pub role: Option<String>,
    /// Every numeric field of the section.
    pub numbers: BTreeMap<String, f64>,
}

impl RaftInfo {
    pub fn first_of(&self, names: &[&str]) -> Option<f64> {
        names
            .iter()
            .find_map(|name| self.numbers.get(*name).copied())
    }

    pub fn is_leader(&self) -> bool {
        self.role.as_deref() == Some("leader")
    }
}

/// Extracts the `# Raft` section from an INFO text; `None` when there is none.
pub fn parse_raft_section(text: &str) -> Option<RaftInfo> {
    let mut in_raft = false;
    let mut found = false;
    let mut info = RaftInfo::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(section) = line.strip_prefix('#') {
            in_raft = section.trim().eq_ignore_ascii_case("raft");
            found |= in_raft;
            continue;
        }
        if !in_raft {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if key == "role" {
            info.role = Some(value.to_string());
        }
        if let Ok(number) = value.parse::<f64>() {
            if number.is_finite() {
                info.numbers.insert(key.to_string(), number);
            }
        }
    }
    found.then_some(info)
}

/// Asks `address` for INFO. `Ok(None)`: the server answered without a `# Raft` section
/// (or with an error, as a server without INFO would).
pub fn fetch_raft_info(address: &str) -> Result<Option<RaftInfo>, String> {
    let mut stream = connect_to(address).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(INFO_TIMEOUT))
        .and_then(|()| stream.write_all(b"*1\r\n$4\r\nINFO\r\n"))
        .map_err(|e| format!("INFO to {address}: {e}"))?;
    let mut buffer = Vec::with_capacity(16 << 10);
    let mut chunk = [0u8; 16 << 10];
    loop {
        match scan_reply(&buffer, MAX_INFO_BYTES) {
            Ok(Some((Reply::Bulk(Some(text)), _))) => {
                return Ok(parse_raft_section(&String::from_utf8_lossy(text)));
            }
            Ok(Some(_)) => return Ok(None),
            Ok(None) => {}
            Err(error) => return Err(format!("INFO from {address}: {error}")),
        }
        let n_read = std::io::Read::read(&mut stream, &mut chunk)
            .map_err(|e| format!("INFO from {address}: {e}"))?;
        if n_read == 0 {
            return Err(format!("INFO from {address}: connection closed"));
        }
        buffer.extend_from_slice(&chunk[..n_read]);
    }
}

/// Storage figures over the measured window, from the leader's INFO.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StorageFigures {
    pub entries_per_fsync: Option<f64>,
    pub fsyncs_per_sec: Option<f64>,
    pub bytes_written_per_op: Option<f64>,
    /// Which target the figures come from.
    pub source: Option<String>,
    /// The delay that target's WAL adds to every fsync (INFO `emulated_fsync_delay_us`);
    /// `None` when it reports none (a real disk, or not Tally).
    pub emulated_fsync_delay_us: Option<f64>,
}

/// Compares samples taken before and after the window (`(address, info)` per target
/// that has a Raft section) and derives the figures from the leader.
pub fn storage_figures(
    before: &[(String, RaftInfo)],
    after: &[(String, RaftInfo)],
    seconds: f64,
    ops_ok: u64,
) -> StorageFigures {
    let Some((address, end)) = after
        .iter()
        .find(|(_, info)| info.is_leader())
        .or_else(|| after.first())
    else {
        return StorageFigures::default();
    };
    let start = before.iter().find(|(a, _)| a == address).map(|(_, i)| i);
    let delta = |names: &[&str]| -> Option<f64> {
        let d = end.first_of(names)? - start?.first_of(names)?;
        (d >= 0.0).then_some(d)
    };
    let fsyncs = delta(FSYNC_COUNTERS);
    let entries = delta(ENTRY_COUNTERS);
    let bytes = delta(BYTES_COUNTERS);
    let entries_per_fsync = match (entries, fsyncs) {
        (Some(entries), Some(fsyncs)) if fsyncs > 0.0 => Some(entries / fsyncs),
        _ => end.numbers.get("entries_per_fsync").copied(),
    };
    StorageFigures {
        entries_per_fsync,
        fsyncs_per_sec: fsyncs.map(|f| f / seconds),
        bytes_written_per_op: bytes.filter(|_| ops_ok > 0).map(|b| b / ops_ok as f64),
        source: Some(address.clone()),
        emulated_fsync_delay_us: end
            .numbers
            .get(EMULATED_FSYNC_DELAY)
            .copied()
            .filter(|&us| us > 0.0),
    }
}

/// Samples every target that answers INFO with a Raft section; others are skipped.
pub fn sample_all(targets: &[String]) -> Vec<(String, RaftInfo)> {
    targets
        .iter()
        .filter_map(|address| match fetch_raft_info(address) {
            Ok(Some(info)) => Some((address.clone(), info)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEADER_INFO: &str = "# Server\r\nredis_version:7.0\r\n\r\n# Raft\r\nrole:leader\r\n\
        node_id:1\r\nterm:3\r\nentries_per_fsync:212.5\r\nwal_fsyncs:1000\r\n\
        wal_entries:200000\r\nwal_bytes_written:30000000\r\n";

    #[test]
    fn raft_section_is_found_and_other_sections_ignored() {
        let info = parse_raft_section(LEADER_INFO).unwrap();
        assert!(info.is_leader());
        assert_eq!(info.numbers.get("entries_per_fsync"), Some(&212.5));
        assert_eq!(info.numbers.get("redis_version"), None);
        assert_eq!(
            parse_raft_section("# Server\r\nredis_version:7.0\r\n"),
            None
        );
    }

    #[test]
    fn figures_are_deltas_of_the_leaders_counters_over_the_window() {
        let before = parse_raft_section(LEADER_INFO).unwrap();
        let mut after = before.clone();
        after.numbers.insert("wal_fsyncs".into(), 1500.0);
        after.numbers.insert("wal_entries".into(), 300_000.0);
        after
            .numbers
            .insert("wal_bytes_written".into(), 45_000_000.0);
        let mut follower = after.clone();
        follower.role = Some("follower".into());
        let figures = storage_figures(
            &[("a".into(), before.clone()), ("b".into(), before)],
            &[("a".into(), follower), ("b".into(), after)],
            5.0,
            100_000,
        );
        assert_eq!(figures.source.as_deref(), Some("b"));
        assert_eq!(figures.entries_per_fsync, Some(200.0));
        assert_eq!(figures.fsyncs_per_sec, Some(100.0));
        assert_eq!(figures.bytes_written_per_op, Some(150.0));
    }

    #[test]
    fn without_counters_the_gauge_is_reported_and_rates_stay_unknown() {
        let info = parse_raft_section("# Raft\nrole:leader\nentries_per_fsync:12\n").unwrap();
        let figures = storage_figures(&[], &[("a".into(), info)], 1.0, 10);
        assert_eq!(figures.entries_per_fsync, Some(12.0));
        assert_eq!(figures.fsyncs_per_sec, None);
        assert_eq!(figures.bytes_written_per_op, None);
        assert_eq!(
            storage_figures(&[], &[], 1.0, 10),
            StorageFigures::default()
        );
    }

    #[test]
    fn an_emulated_fsync_delay_in_info_is_reported_and_absent_otherwise() {
        let real = parse_raft_section(LEADER_INFO).unwrap();
        let figures = storage_figures(&[], &[("a".into(), real)], 1.0, 10);
        assert_eq!(figures.emulated_fsync_delay_us, None);
        let emulated =
            parse_raft_section(&format!("{LEADER_INFO}emulated_fsync_delay_us:8000\r\n")).unwrap();
        let figures = storage_figures(&[], &[("a".into(), emulated)], 1.0, 10);
        assert_eq!(figures.emulated_fsync_delay_us, Some(8000.0));
    }
}
