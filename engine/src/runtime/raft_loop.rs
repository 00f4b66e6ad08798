//! The raft thread: waits on its queues and hands what arrived to the node driver.
//!
//! Everything the node decides lives in [`NodeDriver`] (shared with the simulator);
//! this loop only waits, reads the monotonic clock, and performs the I/O the driver
//! asks for (the transport, the apply queue; the WAL is the driver's [`LogWriter`]).
//!
//! [`LogWriter`]: crate::driver::LogWriter

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{never, select, Receiver, Sender, TrySendError};

use super::{
    initial_configuration, ClientError, MemberStatus, NodeError, NodeOptions, NodeStatus, Transport,
};
use crate::driver::{
    fail_request, lag_of, meta_from_header, ApplyWork, Housekeeping, NodeDriver, NodeIo, Request,
    TurnInput, WrittenSnapshot,
};
use crate::raft::{Configuration, Entry, EntryKind, HardState, Message, RaftNode, SnapshotMeta};
use crate::state_machine::StateMachine;

/// Most requests taken from the queue in one turn, so one turn stays short.
const MAX_REQUESTS_PER_TURN: usize = 16 * 1024;
/// Most inbound messages handled in one turn.
const MAX_MESSAGES_PER_TURN: usize = 4 * 1024;

pub(crate) struct Queues<R> {
    pub requests: Receiver<Request<R>>,
    pub inbound: Receiver<Message>,
    pub durable: Receiver<u64>,
    pub applied: Receiver<u64>,
    pub snapshots_written: Receiver<WrittenSnapshot>,
    pub apply: Sender<ApplyWork<R>>,
    pub housekeeping: Sender<Housekeeping>,
}

/// Restores the state machine from the newest valid snapshot in the node directory, if
/// there is one. A corrupt newest snapshot falls back to the previous one only when the
/// log still covers the gap; otherwise the node refuses to start with an error naming
/// the file (never an empty state under its old identity).
pub(crate) fn restore_snapshot<SM: StateMachine>(
    options: &NodeOptions,
    wal: &tally_wal::Wal,
    store: &tally_wal::SnapshotStore<tally_wal::FsStorage>,
    state_machine: &mut SM,
) -> Result<Option<(SnapshotMeta, tally_wal::SnapshotInfo)>, NodeError> {
    let Some(info) = store.select_for_restart(wal.first_index())? else {
        return Ok(None);
    };
    let mut reader = store.open(&info.name)?;
    let meta = meta_from_header(reader.header()).map_err(|reason| NodeError::BadLog {
        dir: options.wal_dir.display().to_string(),
        reason: format!("{}: {reason}", info.name),
    })?;
    state_machine.restore(&mut reader)?;
    tracing::info!(
        node = options.id,
        index = meta.index,
        term = meta.term,
        bytes = info.size_bytes,
        file = %info.name,
        "restored the state machine from a snapshot"
    );
    Ok(Some((meta, info)))
}

/// A brand-new cluster member writes its configuration as the first log entry (index 1,
/// term 0, the same bytes on every founding member), durable before anything else: from
/// then on the log, not the command line, says who the voters are.
pub(crate) fn write_bootstrap_entry(
    options: &NodeOptions,
    wal: &tally_wal::Wal,
) -> Result<(), NodeError> {
    let Some(configuration) = options
        .log_membership
        .as_ref()
        .and_then(|membership| membership.bootstrap.as_ref())
    else {
        return Ok(());
    };
    if wal.last_index() != 0 {
        return Ok(());
    }
    let entry = tally_wal::Entry {
        index: 1,
        term: 0,
        kind: EntryKind::Config.as_u8(),
        payload: configuration.encode(),
    };
    wal.append(&[entry])?.wait()?;
    tracing::info!(
        node = options.id,
        voters = ?configuration.voters,
        "bootstrapped: the cluster's configuration is log entry 1"
    );
    Ok(())
}

/// Refuses a start whose `--peer` ids are not members of the configuration the log
/// holds (the log is the authority; `--peer` only gives addresses).
pub(crate) fn check_peer_ids(options: &NodeOptions, core: &RaftNode) -> Result<(), NodeError> {
    let Some(membership) = &options.log_membership else {
        return Ok(());
    };
    let configuration = core.configuration();
    if configuration.members().is_empty() {
        return Ok(()); // joining: the log has no configuration yet
    }
    let strangers: Vec<u64> = membership
        .peer_ids
        .iter()
        .copied()
        .filter(|id| !configuration.is_member(*id))
        .collect();
    if strangers.is_empty() {
        return Ok(());
    }
    Err(NodeError::MembershipMismatch(format!(
        "--peer names {strangers:?}, not members of the cluster: the log's configuration \
         (entry {}) has voters {:?} and learners {:?}; change membership with TALLY MEMBER \
         commands, --peer only gives addresses",
        core.latest_configuration_index(),
        configuration.voters,
        configuration.learners,
    )))
}

/// Rebuilds the core from the snapshot it restarts from (if any) and what the WAL holds.
pub(crate) fn restore_core(
    options: &NodeOptions,
    wal: &tally_wal::Wal,
    snapshot: Option<SnapshotMeta>,
) -> Result<RaftNode, NodeError> {
    let bad_log = |reason: String| NodeError::BadLog {
        dir: options.wal_dir.display().to_string(),
        reason,
    };
    let durable = wal.durable_hard_state();
    let hard_state = HardState {
        term: durable.term,
        voted_for: (durable.vote != 0).then_some(durable.vote),
    };
    let first_index = wal.first_index();
    let covered_through = snapshot.as_ref().map_or(0, |meta| meta.index);
    if first_index > covered_through + 1 {
        // The log was compacted below a snapshot that is not here (or not usable).
        return Err(bad_log(format!(
            "log starts at index {first_index} but no snapshot covers the entries before it \
             (newest usable snapshot ends at {covered_through})"
        )));
    }
    let last_index = wal.last_index();
    let stored = wal.read_range(first_index..last_index + 1)?;
    let mut entries = Vec::with_capacity(stored.len());
    for entry in stored {
        let kind = EntryKind::from_u8(entry.kind).ok_or_else(|| {
            bad_log(format!(
                "entry {} has unknown kind {}",
                entry.index, entry.kind
            ))
        })?;
        entries.push(Entry {
            index: entry.index,
            term: entry.term,
            kind,
            data: entry.payload,
        });
    }
    tracing::info!(
        node = options.id,
        term = hard_state.term,
        voted_for = ?hard_state.voted_for,
        last_index,
        "restored Raft state from the WAL"
    );
    RaftNode::restart(
        options.raft.clone(),
        initial_configuration(options),
        hard_state,
        snapshot,
        entries,
    )
    .map_err(|error| bad_log(error.to_string()))
}

/// The runtime's side of the driver's I/O: the transport and the apply queue.
struct RuntimeIo<R, T> {
    transport: T,
    apply: Sender<ApplyWork<R>>,
    housekeeping: Sender<Housekeeping>,
}

impl<R, T: Transport> NodeIo<R> for RuntimeIo<R, T> {
    fn send(&mut self, messages: Vec<Message>) {
        self.transport.send(messages);
    }

    fn housekeeping(&mut self, job: Housekeeping) -> Result<(), NodeError> {
        // The snapshot thread deletes files; a gone thread means the node is stopping.
        let _ = self.housekeeping.send(job);
        Ok(())
    }

    fn apply(&mut self, work: ApplyWork<R>) -> Result<Option<ApplyWork<R>>, NodeError> {
        // Never blocks: a full apply queue gives the work back to the driver, which
        // keeps it (and stops taking new work) until the apply thread catches up.
        match self.apply.try_send(work) {
            Ok(()) => Ok(None),
            Err(TrySendError::Full(work)) => Ok(Some(work)),
            Err(TrySendError::Disconnected(_)) => Err(NodeError::StateMachine(
                crate::state_machine::StateMachineError::Fatal("apply thread stopped".into()),
            )),
        }
    }
}

/// The driver as the threaded runtime runs it.
pub(crate) type RuntimeDriver<R> = NodeDriver<R, tally_wal::Wal, tally_wal::FsStorage>;

/// Runs until shutdown or a fatal error.
pub(crate) fn raft_loop<R: Send + 'static, T: Transport>(
    mut driver: RuntimeDriver<R>,
    transport: T,
    queues: Queues<R>,
    status: &NodeStatus,
    shutdown: &AtomicBool,
    tick_interval: Duration,
    failpoint_panic_at: Option<Instant>,
) -> Result<(), NodeError> {
    let Queues {
        requests,
        inbound,
        durable,
        applied,
        snapshots_written,
        apply,
        housekeeping,
    } = queues;
    let mut io = RuntimeIo {
        transport,
        apply,
        housekeeping,
    };
    let mut input = TurnInput::new();
    let mut membership = MembershipWatch::default();
    // Stands in for the request queue while the driver still holds requests it did not
    // take (a full WAL or apply queue): new ones then stay in the bounded queue.
    let no_requests: Receiver<Request<R>> = never();
    let started = Instant::now();
    let tick_nanos = tick_interval.as_nanos().max(1);
    let result = loop {
        if shutdown.load(Ordering::Acquire) {
            break Ok(());
        }
        let next_tick_at = started
            + Duration::from_nanos((tick_nanos * (u128::from(driver.now_tick()) + 1)) as u64);
        let timeout = next_tick_at.saturating_duration_since(Instant::now());
        let take_requests = input.requests.is_empty();
        let request_queue = if take_requests {
            &requests
        } else {
            &no_requests
        };
        // Block until anything arrives or the next tick is due; then drain everything.
        // What woke the thread is only collected here: the driver advances the clock
        // before it steps or answers anything. (Room in the WAL frees up when its
        // writer takes a batch, which wakes nobody: a deferred operation waits for the
        // next tick or completion at most.)
        select! {
            recv(request_queue) -> request => if let Ok(request) = request { input.requests.push(request) },
            recv(inbound) -> message => if let Ok(message) = message { input.messages.push(message) },
            recv(durable) -> _ => {},
            recv(applied) -> index => if let Ok(index) = index { input.note_applied(index) },
            recv(snapshots_written) -> written => if let Ok(written) = written { input.snapshots_written.push(written) },
            default(timeout) => {},
        }
        input
            .messages
            .extend(inbound.try_iter().take(MAX_MESSAGES_PER_TURN));
        for index in applied.try_iter() {
            input.note_applied(index);
        }
        if take_requests {
            input
                .requests
                .extend(requests.try_iter().take(MAX_REQUESTS_PER_TURN));
        }
        input.snapshots_written.extend(snapshots_written.try_iter());
        for _ in durable.try_iter() {}
        input.now_tick = (started.elapsed().as_nanos() / tick_nanos) as u64;
        if let Err(error) = driver.turn(&mut input, &mut io) {
            break Err(error);
        }
        publish(&driver, status);
        membership.after_turn(&driver, &mut io.transport);
        if membership.published_tick != driver.now_tick() {
            membership.published_tick = driver.now_tick();
            for (id, info) in status.take_observed() {
                driver.note_member_observed(id, info);
            }
            publish_members(&driver, &io.transport, status, tick_interval);
            status
                .request_queue_depth
                .store(requests.len() as u64, Ordering::Relaxed);
            status
                .inbound_queue_depth
                .store(inbound.len() as u64, Ordering::Relaxed);
            status
                .apply_queue_depth
                .store(io.apply.len() as u64, Ordering::Relaxed);
        }
        if failpoint_panic_at.is_some_and(|at| Instant::now() >= at) {
            panic!("failpoint: the raft thread panics on purpose (failpoint_raft_panic_after)");
        }
    };
    // Writes already proposed may still commit through the other members: their
    // outcome is unknown, whether this node stopped cleanly or failed.
    driver.fail_on_stop();
    for request in input.requests.drain(..).chain(requests.try_iter()) {
        fail_request(request, ClientError::NodeStopped);
    }
    result
}

/// Tells the transport when the configuration in effect changes.
#[derive(Default)]
struct MembershipWatch {
    /// The configuration the transport was last told about (None: not yet).
    told: Option<Configuration>,
    published_tick: u64,
}

impl MembershipWatch {
    fn after_turn<R, T: Transport>(&mut self, driver: &RuntimeDriver<R>, transport: &mut T) {
        let view = transport_view(driver.core());
        if self.told.as_ref() != Some(&view) {
            transport.configuration_changed(&view);
            self.told = Some(view);
        }
    }
}

/// What the transport must serve: every member of the configuration in effect and of
/// the committed one. A removed member stays reachable until its removal commits, or a
/// leader removing itself could never hear that C_new committed (its followers would
/// stop answering it as soon as they appended C_new).
fn transport_view(core: &RaftNode) -> Configuration {
    let current = core.configuration();
    let Some(committed) = core.configuration_at(core.commit_index()) else {
        return current.clone();
    };
    if committed == current {
        return current.clone();
    }
    let mut view = current.clone();
    for id in committed.members() {
        if !view.is_member(id) {
            view.learners.insert(id);
            if let Some(info) = committed.info.get(&id) {
                view.info.insert(id, info.clone());
            }
        }
    }
    view
}

/// The members as this node sees them: progress on the leader, connections from the
/// transport.
fn publish_members<R, T: Transport>(
    driver: &RuntimeDriver<R>,
    transport: &T,
    status: &NodeStatus,
    tick_interval: Duration,
) {
    let core = driver.core();
    let configuration = core.configuration();
    let leader = core.is_leader();
    let members = configuration
        .members()
        .into_iter()
        .map(|id| {
            let own = id == core.id();
            MemberStatus {
                id,
                voter: configuration.is_voter(id),
                info: configuration.info_of(id),
                match_index: if own {
                    Some(core.log().last_index())
                } else {
                    core.progress(id).map(|progress| progress.match_index)
                },
                lag_entries: (leader).then(|| lag_of(core, id)),
                connected: if own {
                    None
                } else {
                    transport.peer_connected(id)
                },
            }
        })
        .collect();
    status.set_members(members);
    let counters = transport.counters();
    status
        .dropped_outbound_messages
        .store(counters.dropped_outbound, Ordering::Relaxed);
    status
        .dropped_inbound_messages
        .store(counters.dropped_inbound, Ordering::Relaxed);
    status
        .rejected_incarnations
        .store(counters.rejected_incarnations, Ordering::Relaxed);
    let lease_ms = core.lease_remaining_ticks().map_or(0, |ticks| {
        (u128::from(ticks) * tick_interval.as_millis()).min(u128::from(u64::MAX)) as u64
    });
    status.lease_remaining_ms.store(lease_ms, Ordering::Relaxed);
}

fn publish<R>(driver: &RuntimeDriver<R>, status: &NodeStatus) {
    let core = driver.core();
    let snapshots = driver.snapshot_stats();
    status
        .snapshot_index
        .store(snapshots.snapshot_index, Ordering::Relaxed);
    status
        .snapshot_term
        .store(snapshots.snapshot_term, Ordering::Relaxed);
    status
        .snapshot_bytes
        .store(snapshots.snapshot_bytes, Ordering::Relaxed);
    status
        .snapshots_taken
        .store(snapshots.snapshots_taken, Ordering::Relaxed);
    status
        .snapshots_installed
        .store(snapshots.snapshots_installed, Ordering::Relaxed);
    status
        .log_first_index
        .store(core.log().first_index(), Ordering::Relaxed);
    status.log_entries_in_memory.store(
        core.log().last_index() + 1 - core.log().first_index(),
        Ordering::Relaxed,
    );
    status.set_role(core.role());
    status
        .proposals
        .store(driver.stats().proposals_accepted, Ordering::Relaxed);
    status.term.store(core.term(), Ordering::Relaxed);
    status
        .leader_id
        .store(core.leader_id().unwrap_or(0), Ordering::Relaxed);
    status
        .commit_index
        .store(core.commit_index(), Ordering::Relaxed);
    status
        .last_log_index
        .store(core.log().last_index(), Ordering::Relaxed);
}
