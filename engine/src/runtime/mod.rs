//! The node runtime: the threads around the node driver.
//!
//! Everything a node decides lives in [`crate::driver::NodeDriver`] (the simulator runs
//! the same code); this module only waits, reads the monotonic clock and moves work
//! between threads (the transport's threads live in `tally-net`):
//!
//! ```text
//!  client threads ──requests──► [request queue] ──┐
//!  transport readers ──messages──► [inbound] ─────┤
//!  WAL writer ──durable index──► [durable] ───────┼─► raft thread (NodeDriver) ──► Transport::send
//!  apply thread ──applied index──► [applied] ─────┤        │  │   └─► WAL (LogWriter)
//!  snapshot thread ──files written──► [written] ──┘        │  └► [housekeeping] ─► snapshot thread
//!                                                          └► [apply queue] ─► apply thread ─► [jobs] ─► snapshot thread
//! ```
//!
//! - **raft thread** (`raft_loop`): waits until any queue has work or the next tick is
//!   due, collects everything that arrived into a `TurnInput`, and calls
//!   `NodeDriver::turn` with the clock read after the wait.
//! - **WAL writer** (inside [`tally_wal::Wal`]): group commit; reports durable indexes.
//! - **apply thread** (`apply_loop`): runs the driver's `Applier` (the state machine,
//!   client replies, confirmed reads) and hands frozen views to the snapshot thread.
//! - **snapshot thread** (`snapshot_loop`): writes snapshot files and deletes what a
//!   durable snapshot made unnecessary (WAL segments, old snapshot files).
//!
//! Every queue is a bounded crossbeam channel except the completion queues (durable,
//! applied, written, housekeeping), which carry one small item per batch and must never
//! block the thread that produces them.
//!
//! Failure policy: any WAL or snapshot error is fatal (fail-stop: the page cache may have
//! dropped the data); so is a state machine `Err`. The node stops, proposed writes get
//! [`ClientError::OutcomeUnknown`], queued requests [`ClientError::NodeStopped`], and
//! [`Node::shutdown`] returns the cause.

mod apply;
mod raft_loop;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{bounded, unbounded, Sender, TrySendError};
use parking_lot::Mutex;

use crate::raft::{Configuration, MemberInfo, Message, NodeId, RaftConfig, Role};
use crate::state_machine::StateMachine;

use apply::{apply_loop, snapshot_loop};
pub use apply::{LocalReadPort, LocalReader};
use raft_loop::raft_loop;

use crate::driver::{
    Applier, LocalReadCells, NodeDriver, SnapshotDone, SnapshotPolicy, SnapshotTaken,
};

pub use crate::driver::{
    fail_request, ClientError, MembershipChange, MembershipDone, MembershipError,
    MembershipOutcome, MembershipPolicy, NodeError, Reply, ReplyTo, ReplyWaker, Request,
    Submission, TransferDone,
};

/// Carries Raft messages to other nodes. Implemented by `tally-net` over TCP and by
/// tests over channels.
pub trait Transport: Send + 'static {
    /// Sends messages best-effort. Must not block for long: drop what does not fit in a
    /// peer's queue (Raft retransmits). Messages to one peer must keep their order.
    fn send(&mut self, messages: Vec<Message>);
    /// The configuration in effect changed (an entry appended, truncated or restored):
    /// start or stop talking to members. Called on the raft thread, once at start.
    fn configuration_changed(&mut self, _configuration: &Configuration) {}
    /// Whether the connection to `peer` is up, when the transport knows.
    fn peer_connected(&self, _peer: NodeId) -> Option<bool> {
        None
    }
    /// Cumulative counters of what the transport dropped or refused.
    fn counters(&self) -> TransportCounters {
        TransportCounters::default()
    }
}

/// What a transport dropped or refused (cumulative; for INFO and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportCounters {
    /// Outbound messages dropped (a full peer queue, an unknown or unreachable peer).
    pub dropped_outbound: u64,
    /// Inbound messages dropped (undecodable, or the raft queue full).
    pub dropped_inbound: u64,
    /// Peer connections refused because the incarnation differed from the recorded one.
    pub rejected_incarnations: u64,
}

/// Membership taken from the log instead of from `NodeOptions::voters` (tally-server).
#[derive(Clone, Debug, Default)]
pub struct LogMembership {
    /// A brand-new cluster: written as the first log entry when the log is empty.
    /// `None`: a restart, or a node joining with an empty log (it is a non-member,
    /// never campaigns, until the leader's log makes it one).
    pub bootstrap: Option<Configuration>,
    /// Ids the operator named as peers; any that is not a member of the log's
    /// configuration refuses the start ([`NodeError::MembershipMismatch`]).
    pub peer_ids: Vec<NodeId>,
}

/// One member as this node sees it (for `TALLY MEMBERS` and INFO).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member's id.
    pub id: NodeId,
    /// Whether it votes (false: a learner).
    pub voter: bool,
    /// Its addresses and incarnation, as the configuration records them.
    pub info: MemberInfo,
    /// Known on the leader only (this node itself: its last log index).
    pub match_index: Option<u64>,
    /// Entries behind the leader's last index (leader only).
    pub lag_entries: Option<u64>,
    /// Whether the transport's connection to it is up (None: this node, or unknown).
    pub connected: Option<bool>,
}

/// Options of a node: identity, initial voters, WAL directory and tuning. Start from
/// [`NodeOptions::new`] and change fields before [`Node::start`].
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's id (non-zero, unique in the cluster).
    pub id: NodeId,
    /// Voters of the initial configuration (this node included).
    pub voters: Vec<NodeId>,
    /// Directory of the node's WAL.
    pub wal_dir: PathBuf,
    /// The core's tick: election timeout and heartbeat interval are multiples of it.
    pub tick_interval: Duration,
    /// Core parameters (id and seed are taken from here; keep `raft.id == id`).
    pub raft: RaftConfig,
    /// Group-commit WAL options (the durable subscriber is set by the runtime).
    pub wal: tally_wal::GroupCommitOptions,
    /// Bound of the proposal/read queue from client threads.
    pub request_queue_capacity: usize,
    /// Bound of the queue of committed batches waiting for the apply thread.
    pub apply_queue_capacity: usize,
    /// When to take snapshots and how much log to keep after one.
    pub snapshot: SnapshotPolicy,
    /// Test-only failpoint: the raft thread panics this long after start (process-level
    /// tests of fail-stop; never set in production).
    #[doc(hidden)] // Test seam: set only by process-level tests, never in production.
    pub failpoint_raft_panic_after: Option<Duration>,
    /// `Some`: the log is the authority on membership and `voters` is ignored.
    pub log_membership: Option<LogMembership>,
    /// Promotion lag bound and transfer timeout.
    pub membership: MembershipPolicy,
    /// Test-only failpoint: the raft thread sleeps this long before its first turn, so
    /// the request queue fills (tests of client back-pressure; never set in production).
    #[doc(hidden)] // Test seam: set only by process-level tests, never in production.
    pub failpoint_raft_stall_at_start: Option<Duration>,
}

impl NodeOptions {
    /// Defaults for a node: 10 ms ticks, 500-1000 ms election timeout, 50 ms heartbeats.
    /// The election timeout is generous on purpose: an election needs three fsyncs
    /// (candidate, voters, the leader's no-op), and a busy machine must not turn slow
    /// disks into endless elections.
    pub fn new(id: NodeId, voters: Vec<NodeId>, wal_dir: impl Into<PathBuf>) -> NodeOptions {
        let mut raft = RaftConfig::new(id, id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x7A11);
        raft.election_timeout_ticks = 50;
        raft.heartbeat_interval_ticks = 5;
        NodeOptions {
            id,
            voters,
            wal_dir: wal_dir.into(),
            tick_interval: Duration::from_millis(10),
            raft,
            wal: tally_wal::GroupCommitOptions::default(),
            request_queue_capacity: 64 * 1024,
            apply_queue_capacity: 1024,
            snapshot: SnapshotPolicy::default(),
            failpoint_raft_panic_after: None,
            log_membership: None,
            membership: MembershipPolicy::default(),
            failpoint_raft_stall_at_start: None,
        }
    }
}

/// Live counters of a node, readable from any thread (for INFO and benchmarks).
#[derive(Debug, Default)]
pub struct NodeStatus {
    role: AtomicU8,
    /// The node's current term.
    pub term: AtomicU64,
    /// 0 when no leader is known.
    pub leader_id: AtomicU64,
    /// Highest index known committed.
    pub commit_index: AtomicU64,
    /// Highest index the state machine applied.
    pub applied_index: AtomicU64,
    /// Index of the last entry in the node's log.
    pub last_log_index: AtomicU64,
    /// Commands accepted by the core while leader (cumulative).
    pub proposals: AtomicU64,
    /// Reads served under the leader lease (cumulative).
    pub reads_lease: AtomicU64,
    /// Reads served after a ReadIndex round (cumulative).
    pub reads_read_index: AtomicU64,
    /// Newest durable snapshot: index, term, file size (0 when none).
    pub snapshot_index: AtomicU64,
    /// Term of the newest durable snapshot (0 when none).
    pub snapshot_term: AtomicU64,
    /// File size of the newest durable snapshot, in bytes (0 when none).
    pub snapshot_bytes: AtomicU64,
    /// Snapshots this node wrote itself (cumulative).
    pub snapshots_taken: AtomicU64,
    /// Snapshots received from a leader and installed (cumulative).
    pub snapshots_installed: AtomicU64,
    /// First index of the in-memory log and how many entries it holds.
    pub log_first_index: AtomicU64,
    /// Entries held in the in-memory log.
    pub log_entries_in_memory: AtomicU64,
    /// Set once the node stopped (shutdown or fatal error).
    pub stopped: AtomicBool,
    /// Leader lease left, in milliseconds (0: no lease).
    pub lease_remaining_ms: AtomicU64,
    /// Requests, inbound messages and apply batches queued (sampled once per tick).
    pub request_queue_depth: AtomicU64,
    /// Peer messages queued for the raft thread.
    pub inbound_queue_depth: AtomicU64,
    /// Apply batches queued for the apply thread.
    pub apply_queue_depth: AtomicU64,
    /// The transport's counters (refreshed once per tick).
    pub dropped_outbound_messages: AtomicU64,
    /// Inbound peer messages the transport dropped (undecodable, or the raft queue full).
    pub dropped_inbound_messages: AtomicU64,
    /// Peer connections refused for presenting an incarnation the configuration does not
    /// record for that id.
    pub rejected_incarnations: AtomicU64,
    /// Members of the configuration in effect (refreshed once per tick).
    members: Mutex<Vec<MemberStatus>>,
    /// Member identities seen in handshakes, for the raft thread (at most
    /// [`MAX_PENDING_OBSERVATIONS`]).
    observed: Mutex<Vec<(NodeId, MemberInfo)>>,
}

/// Bound of member observations waiting for the raft thread (one per handshake).
const MAX_PENDING_OBSERVATIONS: usize = 1024;

impl NodeStatus {
    /// The node's role as last published by the raft thread (`Learner` before it first
    /// published).
    pub fn role(&self) -> Role {
        // 0 (the initial value, before the raft thread first publishes) is Learner:
        // a node that has not started yet must not look like a voting follower.
        match self.role.load(Ordering::Relaxed) {
            1 => Role::PreCandidate,
            2 => Role::Candidate,
            3 => Role::Leader,
            4 => Role::Follower,
            _ => Role::Learner,
        }
    }

    pub(crate) fn set_role(&self, role: Role) {
        let code = match role {
            Role::Learner => 0,
            Role::PreCandidate => 1,
            Role::Candidate => 2,
            Role::Leader => 3,
            Role::Follower => 4,
        };
        self.role.store(code, Ordering::Relaxed);
    }

    /// The leader this node knows of; `None` when unknown.
    pub fn leader(&self) -> Option<NodeId> {
        match self.leader_id.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    /// The members of the configuration in effect, as of the last tick.
    pub fn members(&self) -> Vec<MemberStatus> {
        self.members.lock().clone()
    }

    pub(crate) fn set_members(&self, members: Vec<MemberStatus>) {
        *self.members.lock() = members;
    }

    pub(crate) fn take_observed(&self) -> Vec<(NodeId, MemberInfo)> {
        std::mem::take(&mut *self.observed.lock())
    }
}

/// A cheap, cloneable handle for client threads and the transport.
pub struct NodeHandle<R> {
    requests: Sender<Request<R>>,
    inbound: Sender<Message>,
    status: Arc<NodeStatus>,
    wal: tally_wal::Wal,
    local_reads: LocalReadPort,
}

impl<R> Clone for NodeHandle<R> {
    fn clone(&self) -> Self {
        NodeHandle {
            requests: self.requests.clone(),
            inbound: self.inbound.clone(),
            status: Arc::clone(&self.status),
            wal: self.wal.clone(),
            local_reads: self.local_reads.clone(),
        }
    }
}

impl<R: Send + 'static> NodeHandle<R> {
    /// Queues a command; the result arrives on `reply` once it is committed and
    /// applied (or failed). Blocks while the request queue is full.
    pub fn propose(&self, command: Bytes, reply: ReplyTo<R>) {
        self.submit(Request::One(Submission::Propose { command, reply }));
    }

    /// Queues a linearizable read of the state machine.
    pub fn read(&self, query: Bytes, reply: ReplyTo<R>) {
        self.submit(Request::One(Submission::Read { query, reply }));
    }

    /// Asks the leader to hand leadership to `target` (ignored on followers).
    pub fn transfer_leadership(&self, target: NodeId) {
        let _ = self.requests.send(Request::TransferLeadership { target });
    }

    /// Starts a membership change; `done` is called (on the raft thread: it must not
    /// block) once the final configuration committed, or with why not.
    pub fn request_membership_change(&self, change: MembershipChange, done: MembershipDone) {
        self.submit(Request::ChangeMembership { change, done });
    }

    /// Changes the membership and waits until the change committed (C_new for a joint
    /// change) or failed.
    pub fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<MembershipOutcome, MembershipError> {
        let (sender, receiver) = bounded(1);
        self.request_membership_change(
            change,
            Box::new(move |result| {
                let _ = sender.send(result);
            }),
        );
        receiver.recv().unwrap_or(Err(MembershipError::NodeStopped))
    }

    /// Asks the leader to hand leadership to `target`; `done` gets the new leader once
    /// `target` leads (seen from this node), or why not.
    pub fn request_transfer(&self, target: NodeId, done: TransferDone) {
        self.submit(Request::Transfer { target, done });
    }

    /// Hands leadership to `target` and waits until it leads (or the transfer failed).
    pub fn transfer_leadership_and_wait(&self, target: NodeId) -> Result<NodeId, MembershipError> {
        let (sender, receiver) = bounded(1);
        self.request_transfer(
            target,
            Box::new(move |result| {
                let _ = sender.send(result);
            }),
        );
        receiver.recv().unwrap_or(Err(MembershipError::NodeStopped))
    }

    /// Tells the node what member `id` said about itself (its incarnation and client
    /// address, from the peer handshake). Never blocks: dropped when the queue is full.
    pub fn member_observed(&self, id: NodeId, info: MemberInfo) {
        // Not through the request queue: a bounded queue full of clients' requests must
        // neither lose this nor be filled by it. The raft thread picks it up each tick.
        let mut observed = self.status.observed.lock();
        if observed.len() < MAX_PENDING_OBSERVATIONS {
            observed.push((id, info));
        }
    }

    /// Asks for a snapshot now; `done` is called (on the raft thread, so it must not
    /// block) once a snapshot covering everything applied so far is durable.
    pub fn request_snapshot(&self, done: SnapshotDone) {
        self.submit(Request::SnapshotNow { done });
    }

    /// Takes a snapshot now and waits until it is durable.
    pub fn snapshot_now(&self) -> Result<SnapshotTaken, ClientError> {
        let (sender, receiver) = bounded(1);
        self.request_snapshot(Box::new(move |result| {
            let _ = sender.send(result);
        }));
        receiver.recv().unwrap_or(Err(ClientError::NodeStopped))
    }

    /// Queues proposals and reads in order with one queue operation (and at most one
    /// wake-up of the raft thread): a client port that collects everything it parsed in
    /// one pass over its connections hands it over here instead of once per request.
    /// The whole batch takes one slot of the request queue; callers bound its size.
    pub fn submit_batch(&self, batch: Vec<Submission<R>>) {
        if !batch.is_empty() {
            self.submit(Request::Batch(batch));
        }
    }

    /// Like [`NodeHandle::submit_batch`], but never blocks: when the request queue is
    /// full, every submission of the batch is answered [`ClientError::Overloaded`] at
    /// once and nothing of it reaches the node (never proposed, never read). Returns
    /// whether the batch was queued. For event loops that must not stall on the node.
    pub fn try_submit_batch(&self, batch: Vec<Submission<R>>) -> bool {
        batch.is_empty() || self.try_submit(Request::Batch(batch))
    }

    /// Like [`NodeHandle::request_snapshot`], but never blocks: a full request queue
    /// calls `done` with [`ClientError::Overloaded`] at once. Returns whether it was
    /// queued.
    pub fn try_request_snapshot(&self, done: SnapshotDone) -> bool {
        self.try_submit(Request::SnapshotNow { done })
    }

    fn try_submit(&self, request: Request<R>) -> bool {
        match self.requests.try_send(request) {
            Ok(()) => true,
            Err(TrySendError::Full(request)) => {
                fail_request(request, ClientError::Overloaded);
                false
            }
            Err(TrySendError::Disconnected(request)) => {
                fail_request(request, ClientError::NodeStopped);
                false
            }
        }
    }

    fn submit(&self, request: Request<R>) {
        if let Err(error) = self.requests.send(request) {
            fail_request(error.into_inner(), ClientError::NodeStopped);
        }
    }

    /// Hands a message received from a peer to the raft thread. Drops it when the
    /// inbound queue is full (Raft retransmits); returns false then.
    pub fn deliver(&self, message: Message) -> bool {
        !matches!(
            self.inbound.try_send(message),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_))
        )
    }

    /// Live counters of the node, readable from any thread.
    pub fn status(&self) -> &NodeStatus {
        &self.status
    }

    /// Group-commit statistics of this node's WAL.
    pub fn wal_stats(&self) -> tally_wal::WalStatsSnapshot {
        self.wal.stats()
    }

    /// Lease reads a client thread may serve itself ([`LocalReadPort::reader`]).
    pub fn local_reads(&self) -> &LocalReadPort {
        &self.local_reads
    }
}

/// A running node: its threads and the handle to talk to it.
pub struct Node<R> {
    handle: NodeHandle<R>,
    shutdown: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    fatal: Arc<Mutex<Option<NodeError>>>,
}

impl<R: Send + 'static> Node<R> {
    /// Opens the WAL (recovering it), rebuilds the core from it and starts the raft and
    /// apply threads. The transport is used by the raft thread only.
    pub fn start<SM>(
        options: NodeOptions,
        state_machine: SM,
        transport: impl Transport,
    ) -> Result<Node<R>, NodeError>
    where
        SM: StateMachine<Response = R> + 'static,
    {
        assert_eq!(
            options.raft.id, options.id,
            "RaftConfig id must match the node id"
        );
        let (durable_tx, durable_rx) = unbounded();
        let mut wal_options = options.wal.clone();
        wal_options.durable_subscriber = Some(durable_tx);
        let wal = tally_wal::Wal::open(&options.wal_dir, wal_options)?;
        let report = wal.recovery_report();
        if !report.dropped.is_empty() {
            tracing::warn!(dropped = ?report.dropped, "WAL recovery truncated a torn tail");
        }
        let snapshots =
            tally_wal::SnapshotStore::new(tally_wal::FsStorage::new(&options.wal_dir).map_err(
                |source| tally_wal::SnapshotError::Io {
                    operation: "open directory",
                    file: options.wal_dir.display().to_string(),
                    source,
                },
            )?)?;
        let mut state_machine = state_machine;
        let restart_snapshot =
            raft_loop::restore_snapshot(&options, &wal, &snapshots, &mut state_machine)?;
        if restart_snapshot.is_none() {
            raft_loop::write_bootstrap_entry(&options, &wal)?;
        }
        let core = raft_loop::restore_core(
            &options,
            &wal,
            restart_snapshot.as_ref().map(|(meta, _)| meta.clone()),
        )?;
        raft_loop::check_peer_ids(&options, &core)?;
        let applied_through = restart_snapshot.as_ref().map_or(0, |(meta, _)| meta.index);
        let mut driver = NodeDriver::new(core, wal.clone(), snapshots.clone(), options.snapshot);
        driver.set_membership_policy(options.membership);
        // The lease clock's origin is taken before the raft thread starts its own.
        let local_read_cells = LocalReadCells::new();
        let local_reads = LocalReadPort::new(
            local_read_cells.clone(),
            std::time::Instant::now(),
            options.tick_interval,
        );
        driver.publish_lease_to(Arc::clone(&local_read_cells.lease));
        if let Some((meta, info)) = &restart_snapshot {
            driver.restarted_from_snapshot(meta.clone(), info)?;
        }

        let (request_tx, request_rx) = bounded(options.request_queue_capacity);
        let (inbound_tx, inbound_rx) = bounded(64 * 1024);
        let (apply_tx, apply_rx) = bounded(options.apply_queue_capacity);
        let (applied_tx, applied_rx) = unbounded();
        let (snapshot_job_tx, snapshot_job_rx) = bounded(1);
        let (written_tx, written_rx) = unbounded();
        let (housekeeping_tx, housekeeping_rx) = unbounded();
        let status = Arc::new(NodeStatus::default());
        // The restored state is applied before anything new: report it at once, not
        // only after the apply thread's first batch (INFO, `wait_applied` callers).
        status
            .applied_index
            .store(applied_through, Ordering::Relaxed);
        let shutdown = Arc::new(AtomicBool::new(false));
        let fatal = Arc::new(Mutex::new(None));

        let apply_thread = {
            let status = Arc::clone(&status);
            let fatal = Arc::clone(&fatal);
            let shutdown = Arc::clone(&shutdown);
            let mut applier = Applier::restored(state_machine, applied_through);
            applier.publish_views_to(Arc::clone(&local_read_cells.views));
            std::thread::Builder::new()
                .name(format!("tally-apply-{}", options.id))
                .spawn(move || {
                    if let Err(error) =
                        apply_loop(applier, apply_rx, applied_tx, snapshot_job_tx, &status)
                    {
                        tracing::error!(%error, "apply thread stopped: fail-stop");
                        shutdown.store(true, Ordering::Release);
                        fatal.lock().get_or_insert(error);
                    }
                })
                .map_err(|source| NodeError::Spawn {
                    name: "apply",
                    source,
                })?
        };
        let snapshot_thread = {
            let fatal = Arc::clone(&fatal);
            let shutdown = Arc::clone(&shutdown);
            let snapshots = snapshots.clone();
            let wal = wal.clone();
            std::thread::Builder::new()
                .name(format!("tally-snapshot-{}", options.id))
                .spawn(move || {
                    if let Err(error) = snapshot_loop(
                        &snapshots,
                        &wal,
                        snapshot_job_rx,
                        housekeeping_rx,
                        written_tx,
                    ) {
                        tracing::error!(%error, "snapshot writer stopped: fail-stop");
                        shutdown.store(true, Ordering::Release);
                        fatal.lock().get_or_insert(error);
                    }
                })
                .map_err(|source| NodeError::Spawn {
                    name: "snapshot",
                    source,
                })?
        };
        let raft_thread = {
            let queues = raft_loop::Queues {
                requests: request_rx,
                inbound: inbound_rx,
                durable: durable_rx,
                applied: applied_rx,
                snapshots_written: written_rx,
                apply: apply_tx,
                housekeeping: housekeeping_tx,
            };
            let status = Arc::clone(&status);
            let fatal = Arc::clone(&fatal);
            let shutdown = Arc::clone(&shutdown);
            let tick_interval = options.tick_interval;
            let panic_at = options
                .failpoint_raft_panic_after
                .map(|after| std::time::Instant::now() + after);
            let stall_at_start = options.failpoint_raft_stall_at_start;
            std::thread::Builder::new()
                .name(format!("tally-raft-{}", options.id))
                .spawn(move || {
                    if let Some(stall) = stall_at_start {
                        tracing::warn!(
                            ?stall,
                            "failpoint: the raft thread stalls before its first turn"
                        );
                        std::thread::sleep(stall);
                    }
                    let result = raft_loop(
                        driver,
                        transport,
                        queues,
                        &status,
                        &shutdown,
                        tick_interval,
                        panic_at,
                    );
                    status.stopped.store(true, Ordering::Release);
                    if let Err(error) = result {
                        tracing::error!(%error, "raft thread stopped: fail-stop");
                        shutdown.store(true, Ordering::Release);
                        fatal.lock().get_or_insert(error);
                    }
                })
                .map_err(|source| NodeError::Spawn {
                    name: "raft",
                    source,
                })?
        };
        tracing::info!(
            node = options.id,
            wal_backend = wal.backend_name(),
            "node started: raft thread (core, batching, ticks), apply thread (state machine, replies, reads), WAL writer (group commit)"
        );
        let handle = NodeHandle {
            requests: request_tx,
            inbound: inbound_tx,
            status,
            wal,
            local_reads,
        };
        Ok(Node {
            handle,
            shutdown,
            threads: vec![raft_thread, apply_thread, snapshot_thread],
            fatal,
        })
    }

    /// A cloneable handle to submit requests to the node from any thread.
    pub fn handle(&self) -> NodeHandle<R> {
        self.handle.clone()
    }

    /// True once the node stopped on its own (fatal error).
    pub fn has_failed(&self) -> bool {
        self.fatal.lock().is_some()
    }

    /// Stops the threads and waits for them. Requests still queued get
    /// [`ClientError::NodeStopped`]; everything the WAL acknowledged stays durable.
    pub fn shutdown(mut self) -> Result<(), NodeError> {
        self.shutdown.store(true, Ordering::Release);
        self.join()
    }

    fn join(&mut self) -> Result<(), NodeError> {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        match self.fatal.lock().take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl<R> Drop for Node<R> {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Release);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The configuration a node starts with before its log says otherwise: `voters`, or
/// none when the log is the authority on membership.
pub(crate) fn initial_configuration(options: &NodeOptions) -> Configuration {
    if options.log_membership.is_some() {
        return Configuration::default();
    }
    Configuration::new(options.voters.iter().copied())
}

#[cfg(test)]
mod tests;
