//! Per-thread results (counts and an HDR latency histogram), merged after a run.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in nanoseconds, 1 ns .. 10 min, 3 significant digits.
pub const MAX_LATENCY_NS: u64 = 600_000_000_000;

/// Failed operations, by kind. Every failure lands in exactly one counter.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// `-NOTLEADER ...`: sent to a node that is not the leader.
    pub not_leader: u64,
    /// `-UNKNOWN ...`: the outcome of the write is unknown (leadership changed).
    pub unknown: u64,
    /// Any other error reply (`-ERR ...`, `-WRONGTYPE ...`).
    pub server_other: u64,
    /// A reply of the wrong kind or size (e.g. GET of a value of another length, or nil).
    pub wrong_reply: u64,
    /// Requests lost with a broken connection, plus failed connection attempts.
    pub io: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.not_leader + self.unknown + self.server_other + self.wrong_reply + self.io
    }

    pub fn add(&mut self, other: &ErrorCounts) {
        self.not_leader += other.not_leader;
        self.unknown += other.unknown;
        self.server_other += other.server_other;
        self.wrong_reply += other.wrong_reply;
        self.io += other.io;
    }
}

/// What one client thread observed.
#[derive(Debug)]
pub struct ClientStats {
    /// Latency of every successful operation completed inside the measured window.
    pub latency_ns: Histogram<u64>,
    /// Successful operations completed inside the measured window.
    pub ops_ok: u64,
    /// Failures inside the measured window.
    pub errors: ErrorCounts,
    /// Failures during warmup (or preload), reported apart so none is silently dropped.
    pub errors_outside_window: u64,
    /// The first failure's description, to tell the user what went wrong.
    pub error_sample: Option<String>,
    /// Keys whose SET failed (collected only by the preload).
    pub failed_keys: Vec<u64>,
}

impl ClientStats {
    pub fn new() -> Self {
        ClientStats {
            // Bounds are constants that hdrhistogram accepts (low >= 1, high >= 2*low).
            latency_ns: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .expect("constant histogram bounds are valid"),
            ops_ok: 0,
            errors: ErrorCounts::default(),
            errors_outside_window: 0,
            error_sample: None,
            failed_keys: Vec::new(),
        }
    }

    /// Waits for every client thread and merges their statistics; `what` names the
    /// threads in the error if one panicked.
    pub fn join_all(
        handles: Vec<std::thread::JoinHandle<ClientStats>>,
        what: &str,
    ) -> Result<ClientStats, String> {
        let mut total = ClientStats::new();
        for handle in handles {
            total.merge(
                handle
                    .join()
                    .map_err(|_| format!("{what} thread panicked"))?,
            );
        }
        Ok(total)
    }

    pub fn merge(&mut self, other: ClientStats) {
        // Same bounds on both sides, so adding cannot fail.
        self.latency_ns
            .add(&other.latency_ns)
            .expect("histograms share bounds");
        self.ops_ok += other.ops_ok;
        self.errors.add(&other.errors);
        self.errors_outside_window += other.errors_outside_window;
        if self.error_sample.is_none() {
            self.error_sample = other.error_sample;
        }
        self.failed_keys.extend(other.failed_keys);
    }

    pub fn note_error_sample(&mut self, describe: impl FnOnce() -> String) {
        if self.error_sample.is_none() {
            self.error_sample = Some(describe());
        }
    }
}
