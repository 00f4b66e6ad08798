//! Group commit: a thread-safe [`Wal`] handle over [`WalCore`].
//!
//! Appenders validate against a queue-side view of the log tail, encode their records
//! straight into one shared pending buffer (bounded in bytes and entries: appenders block
//! when it is full) and get a [`Ticket`]. One writer thread swaps the buffer out (double
//! buffering), stages it in the core as ONE batch, and issues one write and one
//! `fdatasync` through the [`IoBackend`]; then it publishes the durable index, wakes the
//! waiters and notifies the optional subscriber. The next batch is whatever queued during
//! the previous fsync, with one bounded exception (group merging, below).
//!
//! Blocking waiters: every operation knows at enqueue the number of the batch that will
//! make it durable (the writer takes the whole pending buffer, one batch at a time). A
//! [`Ticket::wait`] caller counts itself in `DurableState::sleepers` for that batch's
//! parity and sleeps on a futex word of that parity; publishing batch `b` bumps the words
//! of parity `b % 2` and wakes all their sleepers, one futex wake per word, the writer
//! doing the first and the first sleeper to wake the others (`batch_wake.rs`; a failure
//! or shutdown wakes both parities). Sleepers of the batch behind it use the other
//! parity's words and are not disturbed.
//! A [`Wal::wait_durable`] caller sleeps the same way for the batch that holds its index
//! as far as the queue can tell, and again for a later one if that batch did not reach
//! it. Unparking the ~62 callers of a batch one by one cost more than the fdatasync on a
//! 2-core VM (each woken caller preempted the waker), and a condvar `notify_all` woke the
//! next batch's waiters too and handed the mutex along a serial chain.
//!
//! Group merging: with N blocking callers, the callers split into two alternating groups
//! (the batch in flight and the one queueing behind it), so each fsync carries only about
//! N/2 entries. When a batch wakes K parked callers, the writer therefore waits (at most
//! half that batch's write+fsync time, capped at `MAX_REJOIN_WAIT`) until K more
//! operations are queued or the buffer is half full before it takes the next batch: the
//! woken callers join the group behind them instead of forming the one after it. A batch
//! that woke nobody (the raft thread uses tickets without blocking) never waits.
//!
//! Lock order (never taken in the other direction): queue → core, queue → durable.
//!
//! Disk emulation: [`GroupCommitOptions::emulated_sync_delay`] makes the writer sleep a
//! fixed time after every successful batch fdatasync and before it publishes the batch as
//! durable, so a fast device behaves like a slower one (an HDD's ~8 ms rotational fsync)
//! on machines without that hardware. The sleep sits where the device wait sits, outside
//! the core lock, so the next batch accumulates during it exactly as during a real slow
//! fsync and group commit keeps working. It is the same for every backend because it
//! lives in the writer loop, not in an [`IoBackend`].

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use crate::backend::{make_backend, Backend, IoBackend};
use crate::batch_wake::BatchWake;
use crate::core::{Entry, RecoveryReport, WalCore, WalOptions};
use crate::error::{Result, WalError};
use crate::format::{self, HardState, ENTRY_RECORD_HEADER_LEN};
use crate::futex;
use crate::storage::{FsStorage, Storage};

/// Options of the group-commit WAL.
#[derive(Clone, Debug)]
pub struct GroupCommitOptions {
    /// Options of the underlying log.
    pub wal: WalOptions,
    /// I/O backend for the writer (default [`Backend::Sync`]).
    pub backend: Backend,
    /// Bound on encoded bytes waiting for the writer (appenders block beyond it).
    /// Clamped to the largest batch a segment can hold.
    pub max_pending_bytes: usize,
    /// Bound on entries waiting for the writer.
    pub max_pending_entries: usize,
    /// Receives every newly published durable index (use an unbounded channel, or one
    /// that is drained promptly: the writer blocks on a full channel).
    pub durable_subscriber: Option<crossbeam_channel::Sender<u64>>,
    /// Emulated extra device latency: after each successful batch write + fdatasync the
    /// writer sleeps this long before it reports the batch durable (`None`: real disk
    /// only). For benchmarking slow disks on fast hardware; never weakens durability (the
    /// real fdatasync still happens first).
    pub emulated_sync_delay: Option<Duration>,
}

impl Default for GroupCommitOptions {
    fn default() -> Self {
        GroupCommitOptions {
            wal: WalOptions::default(),
            backend: Backend::default(),
            max_pending_bytes: 8 << 20,
            max_pending_entries: 64 * 1024,
            durable_subscriber: None,
            emulated_sync_delay: None,
        }
    }
}

/// Number of fsync latency buckets: bucket `i` counts latencies in `[2^(i-1), 2^i)` µs.
pub const FSYNC_HISTOGRAM_BUCKETS: usize = 32;

/// Writer statistics (cheap atomics).
#[derive(Default)]
pub struct WalStats {
    batches: AtomicU64,
    entries: AtomicU64,
    bytes: AtomicU64,
    fsync_total_us: AtomicU64,
    fsync_max_us: AtomicU64,
    fsync_histogram: [AtomicU64; FSYNC_HISTOGRAM_BUCKETS],
    /// The configured emulated sync delay (0 = none); constant for the WAL's lifetime.
    emulated_sync_delay_us: u64,
}

/// A copy of [`WalStats`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalStatsSnapshot {
    /// Batches written = fsyncs issued by the writer.
    pub batches: u64,
    /// Entries written (made durable) by those batches.
    pub entries: u64,
    /// Bytes written (batch headers and bodies).
    pub bytes: u64,
    /// Sum of the batch write+fsync latencies, in µs (includes any emulated delay).
    pub fsync_total_us: u64,
    /// Longest batch write+fsync latency, in µs (includes any emulated delay).
    pub fsync_max_us: u64,
    /// Bucketed write+fsync latencies, 32 buckets: bucket `i` counts latencies in
    /// `[2^(i-1), 2^i)` µs. Like `fsync_total_us` and `fsync_max_us` they include any
    /// emulated sync delay.
    pub fsync_histogram: Vec<u64>,
    /// Emulated delay added after every batch fdatasync, in µs (0 = real disk only);
    /// reports use it to say their figures come from an emulated disk.
    pub emulated_sync_delay_us: u64,
}

impl WalStatsSnapshot {
    /// Mean entries per fsync.
    pub fn entries_per_fsync(&self) -> f64 {
        self.entries as f64 / self.batches.max(1) as f64
    }
    /// Mean bytes per fsync.
    pub fn bytes_per_fsync(&self) -> f64 {
        self.bytes as f64 / self.batches.max(1) as f64
    }
    /// Upper bound (µs) of the histogram bucket holding quantile `q` (0..=1) of the
    /// write+fsync latency.
    pub fn fsync_quantile_upper_us(&self, q: f64) -> u64 {
        let total: u64 = self.fsync_histogram.iter().sum();
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in self.fsync_histogram.iter().enumerate() {
            seen += count;
            if seen >= target {
                return 1u64 << bucket;
            }
        }
        0
    }
}

impl WalStats {
    fn with_emulated_sync_delay(delay: Option<Duration>) -> Self {
        WalStats {
            emulated_sync_delay_us: delay.map_or(0, |d| d.as_micros() as u64),
            ..WalStats::default()
        }
    }

    fn record_batch(&self, entries: u64, bytes: u64, latency_us: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.entries.fetch_add(entries, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.fsync_total_us.fetch_add(latency_us, Ordering::Relaxed);
        self.fsync_max_us.fetch_max(latency_us, Ordering::Relaxed);
        let bucket = (64 - latency_us.leading_zeros() as usize).min(FSYNC_HISTOGRAM_BUCKETS - 1);
        self.fsync_histogram[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> WalStatsSnapshot {
        WalStatsSnapshot {
            batches: self.batches.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            fsync_total_us: self.fsync_total_us.load(Ordering::Relaxed),
            fsync_max_us: self.fsync_max_us.load(Ordering::Relaxed),
            fsync_histogram: self
                .fsync_histogram
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            emulated_sync_delay_us: self.emulated_sync_delay_us,
        }
    }
}

/// The queue-side view of the log tail and the pending batch body.
struct Queue {
    /// Encoded records waiting for the writer (one future batch body).
    body: Vec<u8>,
    pending_entries: usize,
    /// Index the next entry gets. Invariant: `next_index == last queued index + 1`.
    next_index: u64,
    /// Term of the entry `next_index - 1`, if known (`None` when the log is empty).
    last_term: Option<u64>,
    /// Lower bound for truncation (the log's first index as far as the queue knows).
    first_index: u64,
    /// Terms of the pending entries `pending_first_index..next_index`.
    pending_terms: VecDeque<u64>,
    pending_first_index: u64,
    hard_state: HardState,
    /// Sequence number of the next queued operation.
    next_seq: u64,
    /// Batches the writer has taken out of this queue. Invariant: an operation queued
    /// now is made durable by batch number `batches_taken + 1` (the writer takes the
    /// whole pending buffer at once, one batch at a time).
    batches_taken: u64,
    writer_idle: bool,
    /// While `writer_idle`, appenders wake the writer only once `next_seq` reaches this
    /// (0 while it waits for any work; the rejoin target during group merging).
    writer_wake_seq: u64,
    shutdown: bool,
    failure: Option<WalError>,
}

/// Queued truncations, kept as a monotonic stack: `(seq, from_index)` with both strictly
/// increasing, so `min_from_after(seq)` (the lowest truncation point of any operation
/// queued after `seq`) is a binary search. A truncation that is dominated by a later one
/// with a lower or equal `from_index` can never be the answer and is dropped.
#[derive(Default)]
struct TruncationLog {
    stack: Vec<(u64, u64)>,
}

impl TruncationLog {
    fn push(&mut self, seq: u64, from_index: u64) {
        debug_assert!(self.stack.last().is_none_or(|&(last, _)| last < seq));
        while self
            .stack
            .last()
            .is_some_and(|&(_, from)| from >= from_index)
        {
            self.stack.pop();
        }
        self.stack.push((seq, from_index));
    }

    fn min_from_after(&self, seq: u64) -> Option<u64> {
        let position = self.stack.partition_point(|&(s, _)| s <= seq);
        self.stack.get(position).map(|&(_, from)| from)
    }
}

/// Blocking waiters released by a change of the durable state, per batch parity; woken
/// by [`wake`] after the durable lock is released.
#[must_use]
struct Wakeups {
    released: [u64; 2],
}

impl Wakeups {
    fn count(&self) -> u64 {
        self.released.iter().sum()
    }
}

struct DurableState {
    durable_index: u64,
    durable_hard_state: HardState,
    /// Sequence numbers of operations made durable so far (all ops `< durable_seq`).
    durable_seq: u64,
    /// Number of the last published batch (batches are published in order, one by one).
    published_batch: u64,
    /// (seq, from_index) of every queued truncation/reset: a ticket whose entries were
    /// truncated by a later operation resolves with `Truncated`.
    truncations: TruncationLog,
    failure: Option<WalError>,
    shutdown: bool,
    /// Blocking callers asleep on `Shared::batch_wake`'s words, counted per parity of the
    /// batch they registered for (always `published_batch + 1` or `+ 2`, so the two
    /// parities never mix batches). Invariant: counts exactly the registered callers not
    /// yet released; publishing batch `b` releases (zeroes) entry `b % 2`, a failure or
    /// shutdown releases both.
    sleepers: [u64; 2],
}

impl DurableState {
    /// Publishes durable batch number `batch`; returns the sleepers it released.
    fn publish(
        &mut self,
        batch: u64,
        durable_index: u64,
        durable_seq: u64,
        durable_hard_state: HardState,
    ) -> Wakeups {
        debug_assert_eq!(batch, self.published_batch + 1);
        self.durable_index = durable_index;
        self.durable_seq = durable_seq;
        self.durable_hard_state = durable_hard_state;
        self.published_batch = batch;
        let parity = (batch % 2) as usize;
        let mut released = [0; 2];
        released[parity] = std::mem::take(&mut self.sleepers[parity]);
        Wakeups { released }
    }

    /// Records the failure that stops the WAL; releases every sleeper.
    fn fail(&mut self, err: WalError) -> Wakeups {
        self.failure = Some(err);
        Wakeups {
            released: std::mem::take(&mut self.sleepers),
        }
    }

    /// Records the writer's exit; releases every sleeper.
    fn shut_down(&mut self) -> Wakeups {
        self.shutdown = true;
        Wakeups {
            released: std::mem::take(&mut self.sleepers),
        }
    }
}

/// Wakes what a state change released; call after unlocking `durable`.
fn wake<S: Storage>(shared: &Shared<S>, wakeups: Wakeups) {
    for (parity, released) in wakeups.released.into_iter().enumerate() {
        if released > 0 {
            // Sleepers read their word under the durable lock before they sleep, and this
            // runs after the state change that released them: either they see the new
            // value (and do not sleep) or they are asleep and woken here (or by a
            // sleeper that woke first: `BatchWake`).
            shared.batch_wake.release(parity, released);
        }
    }
}

/// What a blocking caller waits for.
#[derive(Clone, Copy)]
enum WaitFor {
    /// Batch number `.0` published (a [`Ticket`] knows its batch).
    Batch(u64),
    /// The durable index reaching `.0` ([`Wal::wait_durable`]): the caller sleeps for the
    /// batch that holds that index as far as the queue can tell, and again if that
    /// batch did not get there (truncation, an index not queued yet).
    Index(u64),
}

/// Blocks until `outcome` returns `Some` (it must once the WAL failed or shut down, and
/// for `WaitFor::Batch(b)` once batch `b` is published), sleeping on the futex word of
/// the batch it waits for. Woken callers re-check under the lock; spurious returns of the
/// futex wait are harmless.
fn park_until<S: Storage, T>(
    shared: &Shared<S>,
    until: WaitFor,
    outcome: impl Fn(&DurableState) -> Option<T>,
) -> T {
    // The batch this caller is counted for in `sleepers` (released once it is published)
    // and the lane of that parity it sleeps on.
    let mut registered: Option<(u64, usize)> = None;
    loop {
        let likely_batch = match until {
            WaitFor::Batch(batch) => batch,
            WaitFor::Index(index) => {
                let queue = shared.queue.lock();
                if index < queue.pending_first_index {
                    queue.batches_taken
                } else {
                    queue.batches_taken + 1
                }
            }
        };
        let mut state = shared.durable.lock();
        if let Some(result) = outcome(&state) {
            return result;
        }
        let (batch, lane) = match registered {
            Some((batch, lane)) if batch > state.published_batch => (batch, lane),
            _ => {
                let batch = likely_batch.max(state.published_batch + 1);
                let parity = (batch % 2) as usize;
                let lane = BatchWake::lane_for(state.sleepers[parity]);
                state.sleepers[parity] += 1;
                registered = Some((batch, lane));
                (batch, lane)
            }
        };
        let parity = (batch % 2) as usize;
        let word = shared.batch_wake.word(parity, lane);
        // Read under the lock: a release after this point changes the word first.
        let observed = word.load(Ordering::Acquire);
        drop(state);
        futex::wait(word, observed);
        shared.batch_wake.help(parity);
    }
}

struct Shared<S: Storage> {
    queue: Mutex<Queue>,
    work_ready: Condvar,
    space_ready: Condvar,
    core: Mutex<WalCore<S>>,
    durable: Mutex<DurableState>,
    /// Futex words of the ticket waiters, per batch parity and lane: bumped (then woken)
    /// when a batch of that parity is published, and on failure or shutdown.
    batch_wake: BatchWake,
    durable_index: AtomicU64,
    stats: WalStats,
    max_pending_bytes: usize,
    max_pending_entries: usize,
    max_entry_size_bytes: u64,
    subscriber: Option<crossbeam_channel::Sender<u64>>,
    /// Slept after each successful batch fdatasync (see the module docs).
    emulated_sync_delay: Option<Duration>,
    backend_name: &'static str,
    recovery_report: RecoveryReport,
}

impl<S: Storage> Shared<S> {
    /// The back-pressure rule: the pending buffer takes an operation that fits in its
    /// bounds, and any operation while it is empty (so an oversized one cannot wait
    /// forever).
    fn queue_has_room(&self, queue: &Queue, bytes: usize, entries: usize) -> bool {
        let fits = queue.body.len() + bytes <= self.max_pending_bytes
            && queue.pending_entries + entries <= self.max_pending_entries;
        fits || queue.body.is_empty()
    }
}

/// Where an operation went in the queue.
#[derive(Clone, Copy)]
struct Queued {
    seq: u64,
    batch: u64,
}

struct Inner<S: Storage> {
    shared: Arc<Shared<S>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl<S: Storage> Drop for Inner<S> {
    fn drop(&mut self) {
        {
            let mut queue = self.shared.queue.lock();
            queue.shutdown = true;
        }
        self.shared.work_ready.notify_all();
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }
}

/// Thread-safe group-commit WAL handle (cheap to clone).
pub struct Wal<S: Storage = FsStorage> {
    inner: Arc<Inner<S>>,
}

impl<S: Storage> Clone for Wal<S> {
    fn clone(&self) -> Self {
        Wal {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// Resolves when the operation's entries are durable.
pub struct Ticket<S: Storage = FsStorage> {
    shared: Arc<Shared<S>>,
    /// Durable once the durable index reaches this.
    last_index: u64,
    /// Sequence number of the operation (for truncation checks).
    seq: u64,
    /// Number of the batch that makes the operation durable (see `Queue::batches_taken`).
    batch: u64,
}

impl<S: Storage> Ticket<S> {
    /// The last index covered by this ticket.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// True if the ticket would resolve without blocking.
    pub fn is_ready(&self) -> bool {
        let durable = self.shared.durable.lock();
        durable.durable_seq > self.seq || durable.failure.is_some() || durable.shutdown
    }

    /// Blocks until the entries are durable; returns the durable index.
    ///
    /// Fails with the WAL's failure (every waiter sees it), [`WalError::Truncated`] if an
    /// operation queued later removed these entries, or [`WalError::Shutdown`].
    pub fn wait(self) -> Result<u64> {
        park_until(&self.shared, WaitFor::Batch(self.batch), |durable| {
            if let Some(err) = &durable.failure {
                return Some(Err(err.clone()));
            }
            if durable.durable_seq > self.seq {
                let truncated = durable
                    .truncations
                    .min_from_after(self.seq)
                    .is_some_and(|from| from <= self.last_index);
                if truncated {
                    return Some(Err(WalError::Truncated {
                        index: self.last_index,
                    }));
                }
                return Some(Ok(durable.durable_index));
            }
            durable.shutdown.then_some(Err(WalError::Shutdown))
        })
    }
}

impl Wal<FsStorage> {
    /// Opens (recovering) the WAL in `dir` and starts the writer thread.
    pub fn open(dir: impl AsRef<Path>, options: GroupCommitOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let storage = FsStorage::new(dir)
            .map_err(|e| WalError::io("create dir", dir.display().to_string(), e))?;
        Self::open_on(storage, options)
    }
}

impl<S: Storage> Wal<S> {
    /// Opens the WAL on any storage and starts the writer thread.
    pub fn open_on(storage: S, options: GroupCommitOptions) -> Result<Self> {
        let core = WalCore::open(storage, options.wal.clone())?;
        let backend = make_backend(options.backend)
            .map_err(|e| WalError::io("create io_uring", "backend", e))?;
        let max_batch = core.options().max_batch_body_bytes() as usize;
        let next_index = core.last_index() + 1;
        let queue = Queue {
            body: Vec::new(),
            pending_entries: 0,
            next_index,
            last_term: core.last_term(),
            first_index: core.first_index(),
            pending_terms: VecDeque::new(),
            pending_first_index: next_index,
            hard_state: core.hard_state(),
            next_seq: 0,
            batches_taken: 0,
            writer_idle: false,
            writer_wake_seq: 0,
            shutdown: false,
            failure: None,
        };
        let durable_index = core.durable_index();
        let shared = Arc::new(Shared {
            queue: Mutex::new(queue),
            work_ready: Condvar::new(),
            space_ready: Condvar::new(),
            durable: Mutex::new(DurableState {
                durable_index,
                durable_seq: 0,
                published_batch: 0,
                durable_hard_state: core.durable_hard_state(),
                truncations: TruncationLog::default(),
                failure: None,
                shutdown: false,
                sleepers: [0; 2],
            }),
            batch_wake: BatchWake::new(),
            durable_index: AtomicU64::new(durable_index),
            stats: WalStats::with_emulated_sync_delay(options.emulated_sync_delay),
            max_pending_bytes: options.max_pending_bytes.clamp(1, max_batch),
            max_pending_entries: options.max_pending_entries.max(1),
            max_entry_size_bytes: core.options().max_entry_size_bytes,
            subscriber: options.durable_subscriber.clone(),
            emulated_sync_delay: options.emulated_sync_delay.filter(|d| !d.is_zero()),
            backend_name: backend.name(),
            recovery_report: core.recovery_report().clone(),
            core: Mutex::new(core),
        });
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("tally-wal-writer".into())
            .spawn(move || writer_loop(writer_shared, backend))
            .map_err(|e| WalError::io("spawn writer thread", "tally-wal-writer", e))?;
        Ok(Wal {
            inner: Arc::new(Inner {
                shared,
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    fn shared(&self) -> &Shared<S> {
        &self.inner.shared
    }

    /// Name of the I/O backend in use ("uring" or "sync").
    pub fn backend_name(&self) -> &'static str {
        self.shared().backend_name
    }

    /// What recovery found when the WAL was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.shared().recovery_report
    }

    /// The emulated delay added after every batch fdatasync, if any.
    pub fn emulated_sync_delay(&self) -> Option<Duration> {
        self.shared().emulated_sync_delay
    }

    /// Writer statistics.
    pub fn stats(&self) -> WalStatsSnapshot {
        self.shared().stats.snapshot()
    }

    /// Highest durable index.
    pub fn durable_index(&self) -> u64 {
        self.shared().durable_index.load(Ordering::Acquire)
    }

    /// Last queued index (may not be durable yet).
    pub fn last_index(&self) -> u64 {
        self.shared().queue.lock().next_index - 1
    }

    /// First index of the log.
    pub fn first_index(&self) -> u64 {
        // The queue's view (includes queued resets); never waits for an fsync.
        self.shared().queue.lock().first_index
    }

    /// Durable hard state.
    pub fn durable_hard_state(&self) -> HardState {
        // Published by the writer; never waits for an fsync in progress.
        self.shared().durable.lock().durable_hard_state
    }

    /// Reads a written entry (entries still queued for the writer are not readable).
    pub fn read(&self, index: u64) -> Result<Entry> {
        self.shared().core.lock().read(index)
    }

    /// Reads written entries in `range`.
    pub fn read_range(&self, range: std::ops::Range<u64>) -> Result<Vec<Entry>> {
        self.shared().core.lock().read_range(range)
    }

    /// Term of a written entry.
    pub fn term_at(&self, index: u64) -> Result<u64> {
        self.shared().core.lock().term_at(index)
    }

    /// Blocks until `index` is durable (or the WAL failed).
    pub fn wait_durable(&self, index: u64) -> Result<u64> {
        park_until(self.shared(), WaitFor::Index(index), |durable| {
            if let Some(err) = &durable.failure {
                return Some(Err(err.clone()));
            }
            if durable.durable_index >= index {
                return Some(Ok(durable.durable_index));
            }
            durable.shutdown.then_some(Err(WalError::Shutdown))
        })
    }

    fn ticket(&self, last_index: u64, queued: Queued) -> Ticket<S> {
        Ticket {
            shared: Arc::clone(&self.inner.shared),
            last_index,
            seq: queued.seq,
            batch: queued.batch,
        }
    }

    /// Locks the queue once the pending buffer has room for `bytes`/`entries` (or is
    /// empty), failing if the WAL failed or shut down.
    fn lock_queue_with_room(
        &self,
        bytes: usize,
        entries: usize,
    ) -> Result<parking_lot::MutexGuard<'_, Queue>> {
        let shared = self.shared();
        let mut queue = shared.queue.lock();
        loop {
            if let Some(err) = &queue.failure {
                return Err(err.clone());
            }
            if queue.shutdown {
                return Err(WalError::Shutdown);
            }
            if shared.queue_has_room(&queue, bytes, entries) {
                return Ok(queue);
            }
            shared.space_ready.wait(&mut queue);
        }
    }

    /// Whether an operation of `bytes` encoded bytes and `entries` entries would be
    /// queued now without waiting for buffer space (the non-blocking side of the
    /// back-pressure: a caller that must never block, the raft thread, asks first and
    /// defers otherwise). Room only grows until this caller queues more, so a single
    /// appender that queues no more than it asked about never waits. A failed or shut
    /// down WAL has room: the operation then fails at once instead of waiting.
    pub fn has_room(&self, bytes: usize, entries: usize) -> bool {
        let shared = self.shared();
        let queue = shared.queue.lock();
        queue.failure.is_some() || queue.shutdown || shared.queue_has_room(&queue, bytes, entries)
    }

    fn finish_enqueue(&self, mut queue: parking_lot::MutexGuard<'_, Queue>) -> Queued {
        let queued = Queued {
            seq: queue.next_seq,
            batch: queue.batches_taken + 1,
        };
        queue.next_seq += 1;
        let wake = queue.writer_idle && queue.next_seq >= queue.writer_wake_seq;
        drop(queue);
        if wake {
            self.shared().work_ready.notify_one();
        }
        queued
    }

    /// The most encoded bytes one `append` / `append_assign` call may carry (entry
    /// records of [`ENTRY_RECORD_HEADER_LEN`] + payload each): a caller with more splits
    /// it into several appends, which group commit still writes together.
    pub fn max_append_bytes(&self) -> usize {
        self.shared()
            .max_pending_bytes
            .max(self.shared().max_entry_size_bytes as usize + ENTRY_RECORD_HEADER_LEN)
    }

    fn check_batch_size(&self, first_index: u64, encoded_bytes: usize) -> Result<()> {
        let limit = self.max_append_bytes();
        if encoded_bytes > limit {
            return Err(WalError::EntryTooLarge {
                index: first_index,
                size_bytes: encoded_bytes as u64,
                max_bytes: limit as u64,
            });
        }
        Ok(())
    }

    /// Appends entries with WAL-assigned indexes (all with `term` and `kind`).
    pub fn append_assign(&self, term: u64, kind: u8, payloads: &[Bytes]) -> Result<Ticket<S>> {
        let encoded: usize = payloads
            .iter()
            .map(|p| ENTRY_RECORD_HEADER_LEN + p.len())
            .sum();
        let mut queue = self.lock_queue_with_room(encoded, payloads.len())?;
        let first = queue.next_index;
        for (offset, payload) in payloads.iter().enumerate() {
            if payload.len() as u64 > self.shared().max_entry_size_bytes {
                return Err(WalError::EntryTooLarge {
                    index: first + offset as u64,
                    size_bytes: payload.len() as u64,
                    max_bytes: self.shared().max_entry_size_bytes,
                });
            }
        }
        self.check_batch_size(first, encoded)?;
        if let Some(previous) = queue.last_term {
            if term < previous {
                return Err(WalError::OutOfOrder {
                    index: first,
                    reason: format!("term {term} is below the previous entry's term {previous}"),
                });
            }
        }
        for payload in payloads {
            let index = queue.next_index;
            format::encode_entry(&mut queue.body, index, term, kind, payload);
            queue.pending_terms.push_back(term);
            queue.next_index += 1;
        }
        queue.pending_entries += payloads.len();
        if !payloads.is_empty() {
            queue.last_term = Some(term);
        }
        let last_index = queue.next_index - 1;
        let queued = self.finish_enqueue(queue);
        Ok(self.ticket(last_index, queued))
    }

    /// Appends caller-indexed entries (the Raft runtime): `entries[0].index` must follow
    /// the last queued index, indexes contiguous, terms non-decreasing.
    pub fn append(&self, entries: &[Entry]) -> Result<Ticket<S>> {
        let encoded: usize = entries
            .iter()
            .map(|e| ENTRY_RECORD_HEADER_LEN + e.payload.len())
            .sum();
        let mut queue = self.lock_queue_with_room(encoded, entries.len())?;
        let mut expected = queue.next_index;
        let mut previous_term = queue.last_term;
        for (position, entry) in entries.iter().enumerate() {
            if entry.index != expected {
                return Err(if position == 0 {
                    WalError::IndexGap {
                        expected,
                        got: entry.index,
                    }
                } else {
                    WalError::OutOfOrder {
                        index: entry.index,
                        reason: format!("expected index {expected} (entries must be contiguous)"),
                    }
                });
            }
            if previous_term.is_some_and(|previous| entry.term < previous) {
                return Err(WalError::OutOfOrder {
                    index: entry.index,
                    reason: format!(
                        "term {} is below the previous entry's term {}",
                        entry.term,
                        previous_term.unwrap_or(0)
                    ),
                });
            }
            if entry.payload.len() as u64 > self.shared().max_entry_size_bytes {
                return Err(WalError::EntryTooLarge {
                    index: entry.index,
                    size_bytes: entry.payload.len() as u64,
                    max_bytes: self.shared().max_entry_size_bytes,
                });
            }
            expected += 1;
            previous_term = Some(entry.term);
        }
        self.check_batch_size(queue.next_index, encoded)?;
        for entry in entries {
            format::encode_entry(
                &mut queue.body,
                entry.index,
                entry.term,
                entry.kind,
                &entry.payload,
            );
            queue.pending_terms.push_back(entry.term);
        }
        queue.next_index = expected;
        queue.last_term = previous_term;
        queue.pending_entries += entries.len();
        let last_index = queue.next_index - 1;
        let queued = self.finish_enqueue(queue);
        Ok(self.ticket(last_index, queued))
    }

    /// Queues a hard-state change; it lands in the same write + fsync as the entries
    /// queued with it. Same rules as [`WalCore::set_hard_state`].
    pub fn set_hard_state(&self, hard_state: HardState) -> Result<Ticket<S>> {
        let mut queue = self.lock_queue_with_room(format::HARD_STATE_RECORD_LEN, 0)?;
        let current = queue.hard_state;
        crate::core::check_hard_state_transition(current, hard_state)?;
        if hard_state != current {
            format::encode_hard_state(&mut queue.body, hard_state);
            queue.hard_state = hard_state;
        }
        let last_index = queue.next_index - 1;
        let queued = self.finish_enqueue(queue);
        Ok(self.ticket(last_index, queued))
    }

    /// Queues removal of entries `>= from_index` (ordered with the other operations).
    pub fn truncate_suffix(&self, from_index: u64) -> Result<Ticket<S>> {
        let mut queue = self.lock_queue_with_room(format::INDEX_RECORD_LEN, 0)?;
        let last = queue.next_index - 1;
        if from_index < queue.first_index || from_index > last + 1 {
            return Err(WalError::IndexOutOfRange {
                index: from_index,
                first_index: queue.first_index,
                last_index: last,
            });
        }
        if from_index <= last {
            // Term of the entry that becomes the last one.
            let new_last_term = if from_index - 1 < queue.first_index {
                None
            } else if from_index > queue.pending_first_index {
                queue
                    .pending_terms
                    .get((from_index - 1 - queue.pending_first_index) as usize)
                    .copied()
            } else {
                // Lock order queue -> core. The writer applied every swapped-out batch
                // to the core before releasing it, so the core knows this entry.
                Some(self.shared().core.lock().term_at(from_index - 1)?)
            };
            format::encode_truncate_suffix(&mut queue.body, from_index);
            if from_index >= queue.pending_first_index {
                let keep = (from_index - queue.pending_first_index) as usize;
                queue.pending_terms.truncate(keep);
            } else {
                queue.pending_terms.clear();
                queue.pending_first_index = from_index;
            }
            queue.next_index = from_index;
            queue.last_term = new_last_term;
            let seq = queue.next_seq;
            self.shared()
                .durable
                .lock()
                .truncations
                .push(seq, from_index);
        }
        let queued = self.finish_enqueue(queue);
        Ok(self.ticket(from_index - 1, queued))
    }

    /// Queues a reset: the log restarts empty at `next_index` (snapshot install).
    pub fn reset(&self, next_index: u64) -> Result<Ticket<S>> {
        if next_index == 0 {
            return Err(WalError::IndexOutOfRange {
                index: 0,
                first_index: 1,
                last_index: 0,
            });
        }
        let mut queue = self.lock_queue_with_room(format::INDEX_RECORD_LEN, 0)?;
        format::encode_reset(&mut queue.body, next_index);
        queue.pending_terms.clear();
        queue.pending_first_index = next_index;
        queue.next_index = next_index;
        queue.first_index = next_index;
        queue.last_term = None;
        let seq = queue.next_seq;
        self.shared().durable.lock().truncations.push(seq, 0);
        let queued = self.finish_enqueue(queue);
        Ok(self.ticket(next_index - 1, queued))
    }

    /// Deletes whole segments whose entries are all `<= up_to_index` (see
    /// [`WalCore::compact_prefix`]). Returns the number of segments removed.
    pub fn compact_prefix(&self, up_to_index: u64) -> Result<usize> {
        let (removed, first_index) = {
            let mut core = self.shared().core.lock();
            let removed = core.compact_prefix(up_to_index)?;
            (removed, core.first_index())
        };
        let mut queue = self.shared().queue.lock();
        queue.first_index = queue.first_index.max(first_index);
        Ok(removed)
    }

    /// An ordered no-op: a ticket that resolves once everything queued before it is
    /// durable (for callers that need a completion without writing anything).
    pub fn barrier(&self) -> Result<Ticket<S>> {
        let queue = self.lock_queue_with_room(0, 0)?;
        let last_index = queue.next_index - 1;
        let queued = self.finish_enqueue(queue);
        Ok(self.ticket(last_index, queued))
    }

    /// Makes everything queued so far durable and waits for it.
    pub fn flush(&self) -> Result<u64> {
        self.barrier()?.wait()
    }
}

/// Upper bound on the group-merging wait (see the module docs).
const MAX_REJOIN_WAIT: Duration = Duration::from_millis(1);

/// What the writer waits for before its next batch: `seq` queued, at most `max_wait`.
struct Rejoin {
    seq: u64,
    max_wait: Duration,
}

/// Group merging (see the module docs): waits until `rejoin.seq` is queued, the buffer is
/// half full, the WAL stops, or `rejoin.max_wait` passes.
fn wait_for_rejoin<S: Storage>(
    shared: &Shared<S>,
    queue: &mut parking_lot::MutexGuard<'_, Queue>,
    rejoin: Rejoin,
) {
    let deadline = Instant::now() + rejoin.max_wait;
    while queue.next_seq < rejoin.seq
        && !queue.shutdown
        && queue.body.len() < shared.max_pending_bytes / 2
        && queue.pending_entries < shared.max_pending_entries / 2
    {
        queue.writer_idle = true;
        queue.writer_wake_seq = rejoin.seq;
        if shared.work_ready.wait_until(queue, deadline).timed_out() {
            break;
        }
    }
    queue.writer_idle = false;
    queue.writer_wake_seq = 0;
}

/// If the writer thread unwinds (a bug), fail every waiter instead of leaving them
/// blocked forever.
struct WriterPanicGuard<'a, S: Storage> {
    shared: &'a Shared<S>,
}

impl<S: Storage> Drop for WriterPanicGuard<'_, S> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let err = WalError::Poisoned {
            cause: crate::error::PoisonCause::WriteFailed,
            detail: "the WAL writer thread panicked".into(),
        };
        // The writer's own lock guards were dropped before this one (declared later).
        self.shared.queue.lock().failure = Some(err.clone());
        let woken = self.shared.durable.lock().fail(err);
        wake(self.shared, woken);
        self.shared.space_ready.notify_all();
    }
}

fn writer_loop<S: Storage>(shared: Arc<Shared<S>>, mut backend: Box<dyn IoBackend>) {
    let _panic_guard = WriterPanicGuard { shared: &shared };
    let mut spare: Vec<u8> = Vec::new();
    let mut rejoin: Option<Rejoin> = None;
    loop {
        let mut queue = shared.queue.lock();
        if let Some(rejoin) = rejoin.take() {
            wait_for_rejoin(&shared, &mut queue, rejoin);
        }
        // `next_seq` counts every operation; an empty flush still needs an answer.
        let mut acknowledged_seq = shared.durable.lock().durable_seq;
        while queue.body.is_empty() && queue.next_seq == acknowledged_seq && !queue.shutdown {
            queue.writer_idle = true;
            shared.work_ready.wait(&mut queue);
            acknowledged_seq = shared.durable.lock().durable_seq;
        }
        queue.writer_idle = false;
        if queue.body.is_empty() && queue.next_seq == acknowledged_seq && queue.shutdown {
            drop(queue);
            let woken = shared.durable.lock().shut_down();
            wake(&shared, woken);
            return;
        }
        let mut core = shared.core.lock();
        std::mem::swap(&mut queue.body, &mut spare);
        let batch_entries = queue.pending_entries as u64;
        queue.pending_entries = 0;
        queue.pending_terms.clear();
        queue.pending_first_index = queue.next_index;
        let batch_seq = queue.next_seq;
        queue.batches_taken += 1;
        let batch = queue.batches_taken;
        drop(queue);
        shared.space_ready.notify_all();

        let started = Instant::now();
        let batch_bytes =
            (format::BATCH_HEADER_LEN + spare.len() + format::BATCH_TRAILER_LEN) as u64;
        // Stage and frame under the core lock, then write + fdatasync WITHOUT it, so
        // readers (and truncation's term lookup) never wait for the device.
        let had_body = !spare.is_empty();
        let begun = core
            .stage_encoded_owned(&mut spare)
            .and_then(|()| core.begin_commit());
        let result = match begun {
            Ok(Some(commit)) => {
                drop(core);
                let outcome = backend.write_and_sync(
                    commit.file.as_ref(),
                    &[&commit.header, &commit.body],
                    commit.offset,
                );
                drop(commit);
                if let (Ok(()), Some(delay)) = (&outcome, shared.emulated_sync_delay) {
                    // The emulated slow device: nothing is published before this ends,
                    // and no lock is held, so appenders keep filling the next batch.
                    std::thread::sleep(delay);
                }
                core = shared.core.lock();
                core.finish_commit(outcome)
            }
            Ok(None) => core.sync(),
            Err(err) => Err(err),
        };
        let latency_us = started.elapsed().as_micros() as u64;
        match result {
            Ok(durable_index) => {
                let durable_hard_state = core.durable_hard_state();
                spare = core.take_spare_buffer();
                drop(core);
                if had_body {
                    shared
                        .stats
                        .record_batch(batch_entries, batch_bytes, latency_us);
                }
                // The subscriber hears first, so anyone woken below can rely on the
                // channel already holding this index.
                if let Some(subscriber) = &shared.subscriber {
                    let _ = subscriber.send(durable_index);
                }
                shared.durable_index.store(durable_index, Ordering::Release);
                // Lock order queue -> durable: `queued_seq` is read before anyone woken
                // here can queue again, so the rejoin target counts only their operations.
                let (woken, queued_seq) = {
                    let queue = shared.queue.lock();
                    let woken = shared.durable.lock().publish(
                        batch,
                        durable_index,
                        batch_seq,
                        durable_hard_state,
                    );
                    (woken, queue.next_seq)
                };
                let woken_count = woken.count();
                if woken_count > 0 {
                    rejoin = Some(Rejoin {
                        seq: queued_seq + woken_count,
                        max_wait: (started.elapsed() / 2).min(MAX_REJOIN_WAIT),
                    });
                }
                wake(&shared, woken);
            }
            Err(err) => {
                let stored = core.poisoned().unwrap_or_else(|| err.clone());
                drop(core);
                tracing::error!("WAL writer stopped: {err}");
                shared.queue.lock().failure = Some(stored);
                let woken = shared.durable.lock().fail(err);
                wake(&shared, woken);
                shared.space_ready.notify_all();
                return;
            }
        }
        spare.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::{DurableState, HardState, TruncationLog, WalError};

    fn durable_state() -> DurableState {
        DurableState {
            durable_index: 0,
            durable_hard_state: HardState::default(),
            durable_seq: 0,
            published_batch: 0,
            truncations: TruncationLog::default(),
            failure: None,
            shutdown: false,
            sleepers: [0; 2],
        }
    }

    #[test]
    fn publishing_a_batch_releases_only_the_sleepers_of_its_parity() {
        let mut state = durable_state();
        state.published_batch = 6;
        // Three callers sleep for batch 7 (odd), two for batch 8 queued behind it.
        state.sleepers = [2, 3];
        let woken = state.publish(7, 10, 4, HardState::default());
        assert_eq!(woken.released, [0, 3]);
        assert_eq!(state.sleepers, [2, 0], "batch 8's sleepers stay counted");
        let woken = state.publish(8, 12, 6, HardState::default());
        assert_eq!(woken.released, [2, 0]);
        assert_eq!(woken.count(), 2);
        assert_eq!(state.sleepers, [0, 0]);
        assert_eq!(state.published_batch, 8);
    }

    #[test]
    fn a_failure_releases_the_sleepers_of_both_parities() {
        let mut state = durable_state();
        state.sleepers = [4, 1];
        let err = WalError::Poisoned {
            cause: crate::error::PoisonCause::SyncFailed,
            detail: "test".into(),
        };
        let woken = state.fail(err);
        assert_eq!(woken.released, [4, 1]);
        assert_eq!(state.sleepers, [0, 0]);
        state.sleepers = [0, 2];
        assert_eq!(state.shut_down().released, [0, 2]);
    }

    #[test]
    fn truncation_log_answers_the_lowest_truncation_queued_after_a_ticket() {
        let mut log = TruncationLog::default();
        log.push(3, 50);
        log.push(5, 80);
        log.push(9, 60); // dominates (5, 80)
        assert_eq!(log.min_from_after(0), Some(50));
        assert_eq!(log.min_from_after(3), Some(60));
        assert_eq!(log.min_from_after(4), Some(60));
        assert_eq!(log.min_from_after(9), None);
        log.push(12, 0); // a reset dominates everything before it
        assert_eq!(log.min_from_after(1), Some(0));
        assert_eq!(log.stack.len(), 1);
    }
}
