//! The process's file-descriptor budget: listeners refuse connections before the WAL
//! runs out of descriptors.
//!
//! Why: every WAL or snapshot error is fail-stop, and creating a segment, opening a
//! snapshot file or fsyncing a directory each needs a free descriptor. If sockets may
//! take every descriptor up to `RLIMIT_NOFILE`, a crowd of clients (or peers) stops the
//! node. So a listener admits a new connection only while the process's open
//! descriptors stay below the limit minus a reserve ([`reserve_for_limit`]: the larger
//! of 64 and 5 % of the limit), which is left to the WAL, snapshots and peers.
//!
//! Descriptors are a process-wide resource, so there is one budget per process
//! ([`process`]), shared by the client port and the peer listener (and by the three
//! members the benchmark embeds in one process). Counting `/proc/self/fd` costs a
//! directory read, so the count is re-measured only when the estimate (last count plus
//! connections admitted since) comes within a reserve of the threshold, or after
//! [`REMEASURE_INTERVAL`]; far from the limit an admission is one mutex and two adds.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Smallest number of descriptors kept free for the WAL, snapshots and peers.
pub const MIN_RESERVE: u64 = 64;
/// How stale the descriptor count may get while far from the threshold.
pub const REMEASURE_INTERVAL: Duration = Duration::from_millis(100);

/// The reserve kept below a descriptor limit: max(64, 5 % of the limit).
pub fn reserve_for_limit(limit: u64) -> u64 {
    MIN_RESERVE.max(limit / 20)
}

/// The soft `RLIMIT_NOFILE` of this process; `None` if unlimited or unknown.
pub fn descriptor_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives for the call.
    let status = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if status != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(limit.rlim_cur)
}

/// Descriptors this process has open now (Linux: entries of `/proc/self/fd`, minus the
/// one reading it); `None` where that cannot be read.
pub fn open_descriptors() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    let count = entries.filter(|entry| entry.is_ok()).count() as u64;
    Some(count.saturating_sub(1))
}

/// Admission against a descriptor limit (see the module docs).
#[derive(Debug)]
pub struct FdBudget {
    /// `None`: no limit known, every admission succeeds.
    limit: Option<u64>,
    reserve: u64,
    estimate: Mutex<Estimate>,
}

#[derive(Debug)]
struct Estimate {
    /// Descriptors open at `measured_at`.
    open: u64,
    measured_at: Option<Instant>,
    /// Connections admitted since that count. Invariant: `open + admitted_since` is at
    /// least the descriptors open now, as far as this budget's admissions go.
    admitted_since: u64,
}

impl FdBudget {
    /// A budget for `limit` descriptors (`None`: unlimited) with the default reserve.
    pub fn new(limit: Option<u64>) -> FdBudget {
        FdBudget {
            limit,
            reserve: limit.map_or(0, reserve_for_limit),
            estimate: Mutex::new(Estimate {
                open: 0,
                measured_at: None,
                admitted_since: 0,
            }),
        }
    }

    /// The descriptor limit (soft `RLIMIT_NOFILE`), if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Descriptors kept free.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Most descriptors the process may have open for a connection to be admitted.
    pub fn threshold(&self) -> Option<u64> {
        self.limit.map(|limit| limit.saturating_sub(self.reserve))
    }

    /// Called with a just-accepted connection open: true if it may stay (it is counted),
    /// false if the process is within the reserve of its limit (close it).
    pub fn admit(&self) -> bool {
        let Some(threshold) = self.threshold() else {
            return true;
        };
        let mut estimate = self.estimate.lock();
        let now = Instant::now();
        let stale = estimate
            .measured_at
            .is_none_or(|at| now.duration_since(at) >= REMEASURE_INTERVAL)
            || estimate.open + estimate.admitted_since + self.reserve >= threshold;
        if stale {
            if let Some(open) = open_descriptors() {
                *estimate = Estimate {
                    open,
                    measured_at: Some(now),
                    admitted_since: 0,
                };
            }
        }
        if estimate.open + estimate.admitted_since > threshold {
            return false;
        }
        estimate.admitted_since += 1;
        true
    }
}

/// This process's budget, from `RLIMIT_NOFILE` read at first use (call it at start).
pub fn process() -> &'static FdBudget {
    static BUDGET: OnceLock<FdBudget> = OnceLock::new();
    BUDGET.get_or_init(|| {
        let budget = FdBudget::new(descriptor_limit());
        tracing::info!(
            limit = ?budget.limit(),
            reserve = budget.reserve(),
            "file descriptor budget: connections are refused within the reserve of the limit"
        );
        budget
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_at_least_64_and_5_percent_of_the_limit() {
        assert_eq!(reserve_for_limit(256), 64);
        assert_eq!(reserve_for_limit(1024), 64);
        assert_eq!(reserve_for_limit(65536), 3276);
    }

    #[test]
    fn a_budget_below_the_descriptors_already_open_admits_nothing() {
        // Threshold = limit - reserve = 2: stdin, stdout and stderr alone pass it
        // (a threshold relative to the count open now would race with other test
        // threads closing files).
        let budget = FdBudget::new(Some(MIN_RESERVE + 2));
        assert!(open_descriptors().expect("/proc/self/fd") >= 3);
        assert!(!budget.admit());
    }

    #[test]
    fn a_budget_admits_until_the_open_descriptors_reach_the_threshold() {
        let open = open_descriptors().expect("/proc/self/fd");
        // Room for a few more descriptors than are open now (other test threads may
        // open and close files meanwhile, so only bound the count from both sides).
        let budget = FdBudget::new(Some(open + MIN_RESERVE + 3));
        let mut files = Vec::new();
        while files.len() < 1000 && budget.admit() {
            // What a listener does after admitting: the connection stays open.
            files.push(std::fs::File::open("/dev/null").expect("open /dev/null"));
        }
        let admitted = files.len();
        assert!(admitted >= 1, "room for at least one admission");
        assert!(
            admitted <= 3 + 8,
            "admitted {admitted}: the count is not kept"
        );
    }

    #[test]
    fn no_limit_admits_everything() {
        let budget = FdBudget::new(None);
        assert!((0..100).all(|_| budget.admit()));
    }
}
