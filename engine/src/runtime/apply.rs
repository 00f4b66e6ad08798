//! The apply thread runs the driver's [`Applier`] so the raft thread never waits for the
//! state machine; the snapshot thread serializes frozen views into snapshot files so
//! neither of them waits for snapshot I/O; client threads serve lease reads from the
//! read views the apply thread publishes ([`LocalReader`]), so a read in a lease waits
//! for neither.

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::{NodeError, NodeStatus};
use crate::driver::{
    judge_local_read, snapshot_header, Applier, ApplyWork, Housekeeping, LocalRead, LocalReadCells,
    ReadView, ViewReader, WrittenSnapshot,
};
use crate::raft::SnapshotMeta;
use crate::state_machine::{SnapshotSource, StateMachine};

/// A frozen view waiting to be written, with the meta of the point it was taken at.
pub(crate) type SnapshotJob = (SnapshotMeta, Box<dyn SnapshotSource>);

/// Runs until the raft thread hangs up. Returns the state machine's fatal error.
pub(crate) fn apply_loop<SM: StateMachine>(
    mut applier: Applier<SM>,
    work: Receiver<ApplyWork<SM::Response>>,
    applied_tx: Sender<u64>,
    snapshot_jobs: Sender<SnapshotJob>,
    status: &NodeStatus,
) -> Result<(), NodeError> {
    for item in work.iter() {
        let outcome = applier.handle(item)?;
        status
            .reads_lease
            .fetch_add(outcome.reads_lease, Ordering::Relaxed);
        status
            .reads_read_index
            .fetch_add(outcome.reads_read_index, Ordering::Relaxed);
        if let Some(applied) = outcome.applied_through {
            status.applied_index.store(applied, Ordering::Relaxed);
            let _ = applied_tx.send(applied);
        }
        if let Some(job) = outcome.snapshot {
            // The driver asks for one snapshot at a time, so this never waits long.
            if snapshot_jobs.send(job).is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// The snapshot thread: writes each frozen view into a durable snapshot file and
/// reports it to the raft thread, and does the housekeeping the driver asks for after a
/// snapshot (deleting covered WAL segments and old snapshot files), so the raft thread
/// never waits for either. Any error is fatal (a failed fsync must not be retried).
pub(crate) fn snapshot_loop<S: tally_wal::Storage>(
    store: &tally_wal::SnapshotStore<S>,
    wal: &tally_wal::Wal,
    jobs: Receiver<SnapshotJob>,
    housekeeping: Receiver<Housekeeping>,
    written: Sender<WrittenSnapshot>,
) -> Result<(), NodeError> {
    loop {
        crossbeam_channel::select! {
            recv(jobs) -> job => match job {
                Ok((meta, source)) => {
                    let done = write_snapshot(store, meta, source)?;
                    if written.send(done).is_err() {
                        return Ok(());
                    }
                }
                Err(_) => return Ok(()),
            },
            recv(housekeeping) -> job => match job {
                Ok(job) => {
                    let segments = wal.compact_prefix(job.compact_wal_through)?;
                    let removed = store.retain_newest(job.keep_snapshot_files)?;
                    tracing::debug!(
                        through = job.compact_wal_through,
                        segments,
                        snapshot_files = removed.len(),
                        "compacted the WAL and old snapshots"
                    );
                }
                Err(_) => return Ok(()),
            },
        }
    }
}

fn write_snapshot<S: tally_wal::Storage>(
    store: &tally_wal::SnapshotStore<S>,
    meta: SnapshotMeta,
    mut source: Box<dyn SnapshotSource>,
) -> Result<WrittenSnapshot, NodeError> {
    let started = std::time::Instant::now();
    let mut writer = store.begin(&snapshot_header(&meta))?;
    source.write_to(&mut writer)?;
    writer
        .flush()
        .map_err(crate::state_machine::StateMachineError::Io)?;
    let (info, file_crc32) = writer.finish_with_file_crc32()?;
    tracing::info!(
        index = meta.index,
        term = meta.term,
        bytes = info.size_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        file = %info.name,
        "snapshot written"
    );
    Ok(WrittenSnapshot {
        meta,
        info,
        file_crc32,
    })
}

/// What a client thread needs to serve lease reads itself: the node's lease and view
/// cells and the clock the lease is counted in (`driver::lease` has the argument).
#[derive(Clone)]
pub struct LocalReadPort {
    cells: LocalReadCells,
    /// Taken before the raft thread starts counting ticks, so a tick read here is never
    /// smaller than the raft thread's at the same instant (conservative).
    origin: Instant,
    tick_nanos: u128,
}

impl LocalReadPort {
    pub(crate) fn new(cells: LocalReadCells, origin: Instant, tick_interval: Duration) -> Self {
        LocalReadPort {
            cells,
            origin,
            tick_nanos: tick_interval.as_nanos().max(1),
        }
    }

    /// A reader for one client thread (it caches the latest view).
    pub fn reader(&self) -> LocalReader {
        LocalReader {
            port: self.clone(),
            views: self.cells.views.reader(),
        }
    }
}

/// One client thread's side of lease reads served off the raft thread.
pub struct LocalReader {
    port: LocalReadPort,
    views: ViewReader,
}

impl LocalReader {
    /// The view to answer a lease read from now, or why not (then the read goes
    /// through the raft and apply threads as usual). Loads the grant, then the view,
    /// then reads the clock; a view behind the grant asks the apply side for a newer
    /// one.
    pub fn view_for_read(&mut self) -> Result<&ReadView, LocalRead> {
        let grant = self.port.cells.lease.load();
        let applied_through = self.views.current().map(|view| view.applied_through);
        let now_tick = (self.port.origin.elapsed().as_nanos() / self.port.tick_nanos) as u64;
        match judge_local_read(grant, applied_through, now_tick) {
            LocalRead::Serve => self.views.current().ok_or(LocalRead::NoLease),
            LocalRead::ViewBehind => {
                self.views.cell().want();
                Err(LocalRead::ViewBehind)
            }
            refused => Err(refused),
        }
    }
}
