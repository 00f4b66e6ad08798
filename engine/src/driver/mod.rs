//! The node driver: everything a node does except waiting, as one sans-IO object.
//!
//! Why it exists: the Raft core ([`RaftNode`]) decides, but a node also has to keep its
//! clock, pair proposals with the clients waiting for them, carry out each [`Ready`]
//! (messages, persist actions as WAL operations, committed entries and confirmed reads
//! to the state machine), report persist completions in order and fail pending work on
//! leadership loss. [`NodeDriver`] is the one copy of that logic, so everything the
//! simulator finds under faults is about the code that runs in production: the threaded
//! runtime (`crate::runtime`) is a thin loop that waits on its
//! queues, collects what arrived into a [`TurnInput`] and calls [`NodeDriver::turn`];
//! the simulator (`crate::sim`) does the same with simulated time, network and disk.
//!
//! The order inside a turn is fixed here, because it is a safety property: the clock
//! is advanced to the caller's "now" **before** anything is stepped or answered. A
//! leader that was stalled (a blocked thread, a paused process) must judge its lease at
//! the real time, not at the tick it had when it stopped; a follower must stamp leader
//! contact with the time it processes a message, never earlier, so a stall cannot
//! shorten its wait before voting (the lease derivation in ARCHITECTURE.md assumes
//! both).
//!
//! I/O is done by the caller through two seams: [`LogWriter`] (the WAL: the threaded
//! runtime passes `tally_wal::Wal`, the simulator a `WalCore` over a simulated disk) and
//! [`NodeIo`] (sending messages, handing work to the state machine).
//!
//! # A turn
//!
//! (1) Advance the core's clock to `now_tick` before anything is stepped or answered: a
//! stalled leader judges its lease at the real time, a follower stamps leader contact no earlier than
//! it processes the message. (2) Report the applied index and written snapshots; hand over deferred
//! apply work and WAL operations; step held, then new messages (flow control: `flow.rs`). (3) Start reads; all
//! proposals the turn admits become ONE `propose` (one WAL batch, one AppendEntries per follower). (4)
//! Report durable persists in sequence order; carry out every `Ready`:
//! - messages to `NodeIo::send` first (replication overlaps the local fsync);
//! - the persist action (the only place it becomes WAL operations): a snapshot chunk into a
//!   `SnapshotReceiver` (the last one installed, fsync + rename + directory fsync, before the WAL part
//!   is queued), then hard state, reset, truncation, entries (split at `max_append_bytes`; a `barrier`
//!   if nothing); the last ticket stands for the action;
//! - committed entries paired with proposals by index and term (match: the `Applier` answers after
//!   applying; other term: `NotCommitted`); leadership lost: pending writes `OutcomeUnknown`, reads
//!   `NotLeader`; stop (`fail_on_stop`): writes `OutcomeUnknown`, reads and snapshot waiters
//!   `NodeStopped`;
//! - `NodeIo::apply` in log order: `Restore` (installed file), `Entries`, maybe `Snapshot`, then the
//!   turn's confirmed reads as one `Reads`.

mod apply;
mod flow;
pub mod lease;
mod log;
mod membership;
mod snapshot;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::Sender;

use tally_wal::{SnapshotStore, Storage};

use crate::raft::{
    CoreError, Entry, MemberInfo, Message, NodeId, PersistAction, ProposeError, RaftNode,
    ReadError, ReadPath, Ready, Role, RoleState, SnapshotChunk, SnapshotMeta,
};

pub use apply::{Applied, Applier, ApplyWork, ConfirmedRead};
pub use flow::MAX_HELD_APPENDS;
use flow::{ApplyOutbox, HeldAppends, TurnBudget, WalBacklog, WalOp};
pub use lease::{
    judge_local_read, LeaseCell, LeaseGrant, LocalRead, LocalReadCells, ReadView, ViewCell,
    ViewReader,
};
pub use log::LogWriter;
use membership::MembershipState;
pub use membership::{
    lag_of, MembershipChange, MembershipDone, MembershipError, MembershipOutcome, MembershipPolicy,
    TransferDone,
};
use snapshot::SnapshotState;
pub use snapshot::{
    meta_from_header, snapshot_header, SnapshotDone, SnapshotPolicy, SnapshotStats, SnapshotTaken,
    WrittenSnapshot,
};

/// Why a client request did not get a state-machine response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// This node is not the leader; `leader` is the one it believes in, if any.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node believes in, if any: where to retry.
        leader: Option<NodeId>,
    },
    /// Leadership changed while the write was in flight: it may or may not commit.
    /// Retrying with the same client id and sequence number is safe (sessions).
    #[error("leadership changed while the request was in flight: outcome unknown")]
    OutcomeUnknown,
    /// The write was definitely not committed (another entry took its index).
    #[error("the request was not committed (overwritten by a new leader); retry")]
    NotCommitted,
    /// The node is stopping or stopped (shutdown or fail-stop).
    #[error("the node stopped")]
    NodeStopped,
    /// The request queue is full.
    #[error("the node is overloaded")]
    Overloaded,
    /// An administrative request was refused; the text says why.
    #[error("{0}")]
    Refused(String),
}

/// A response to one client request, tagged with the caller's token so one reply
/// channel can serve a whole pipelined connection.
#[derive(Debug)]
pub struct Reply<R> {
    /// The caller's token from [`ReplyTo::tag`], naming the request answered.
    pub tag: u64,
    /// The state machine's answer, or why there is none.
    pub result: Result<R, ClientError>,
}

/// Told after a reply was put on a caller's channel, so a caller that multiplexes many
/// requests in an event loop (the client port's I/O threads) need not block on the
/// channel. Called on the raft or apply thread: it must be cheap and must not block
/// (coalescing repeated wake-ups is the implementor's job).
pub trait ReplyWaker: Send + Sync {
    /// Called once a reply is on the channel. Must not block.
    fn wake(&self);
}

/// Where a reply goes: the caller's channel, its token and, optionally, whom to wake.
pub struct ReplyTo<R> {
    /// The caller's token, echoed in [`Reply::tag`].
    pub tag: u64,
    /// The channel the reply is sent on (a send to a dropped receiver is ignored).
    pub sender: Sender<Reply<R>>,
    /// Invariant: when set, called after (never before) the reply is on `sender`, so a
    /// woken caller always finds it there.
    pub waker: Option<Arc<dyn ReplyWaker>>,
}

impl<R> ReplyTo<R> {
    /// A reply target the caller blocks on (no wake-up hook).
    pub fn new(tag: u64, sender: Sender<Reply<R>>) -> ReplyTo<R> {
        ReplyTo {
            tag,
            sender,
            waker: None,
        }
    }

    /// A reply target that calls `waker` after each reply is sent.
    pub fn with_waker(
        tag: u64,
        sender: Sender<Reply<R>>,
        waker: Arc<dyn ReplyWaker>,
    ) -> ReplyTo<R> {
        ReplyTo {
            tag,
            sender,
            waker: Some(waker),
        }
    }

    /// Delivers the result, then wakes the caller; a caller that went away is not an
    /// error.
    pub fn send(self, result: Result<R, ClientError>) {
        let delivered = self
            .sender
            .send(Reply {
                tag: self.tag,
                result,
            })
            .is_ok();
        if delivered {
            if let Some(waker) = &self.waker {
                waker.wake();
            }
        }
    }
}

/// What clients hand to a node.
pub enum Request<R> {
    /// One proposal or read.
    One(Submission<R>),
    /// Several proposals and reads in order, handed over with one queue operation.
    Batch(Vec<Submission<R>>),
    /// Hand leadership to another voter.
    TransferLeadership {
        /// The voter to hand leadership to.
        target: NodeId,
    },
    /// Take a snapshot now; `done` is called once one covering everything applied so
    /// far is durable.
    SnapshotNow {
        /// Called with the snapshot taken, or why none was.
        done: SnapshotDone,
    },
    /// Change the membership; `done` is called once the final configuration (C_new for
    /// a joint change) committed, or with why not.
    ChangeMembership {
        /// What to change.
        change: MembershipChange,
        /// Called with the committed configuration, or why the change failed.
        done: MembershipDone,
    },
    /// Hand leadership to `target`; `done` is called once it leads (or it failed).
    Transfer {
        /// The voter to hand leadership to.
        target: NodeId,
        /// Called once `target` leads, or with why not.
        done: TransferDone,
    },
    /// What a member said about itself (peer handshake): recorded into the
    /// configuration where it has nothing yet.
    MemberObserved {
        /// The member that introduced itself.
        id: NodeId,
        /// The addresses and incarnation it announced.
        info: MemberInfo,
    },
}

/// One client request: alone or inside a batch.
pub enum Submission<R> {
    /// A command to replicate and apply.
    Propose {
        /// The encoded command, as [`crate::state_machine::StateMachine::apply`]
        /// takes it.
        command: Bytes,
        /// Where the answer goes.
        reply: ReplyTo<R>,
    },
    /// A read-only query to answer linearizably.
    Read {
        /// The encoded read, as [`crate::state_machine::StateMachine::query`] takes it.
        query: Bytes,
        /// Where the answer goes.
        reply: ReplyTo<R>,
    },
}

fn fail_submission<R>(submission: Submission<R>, error: ClientError) {
    match submission {
        Submission::Propose { reply, .. } | Submission::Read { reply, .. } => {
            reply.send(Err(error))
        }
    }
}

/// Answers every client request inside `request` with `error`.
pub fn fail_request<R>(request: Request<R>, error: ClientError) {
    match request {
        Request::One(submission) => fail_submission(submission, error),
        Request::Batch(batch) => {
            for submission in batch {
                fail_submission(submission, error.clone());
            }
        }
        Request::TransferLeadership { .. } | Request::MemberObserved { .. } => {}
        Request::SnapshotNow { done } => done(Err(error)),
        Request::ChangeMembership { done, .. } => done(Err(membership_error(&error))),
        Request::Transfer { done, .. } => done(Err(membership_error(&error))),
    }
}

/// The membership answer for a request failed with a client error.
fn membership_error(error: &ClientError) -> MembershipError {
    match error {
        ClientError::NotLeader { leader } => MembershipError::NotLeader { leader: *leader },
        _ => MembershipError::NodeStopped,
    }
}

/// Errors that stop a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Reading, writing or syncing the WAL failed (fatal: fsync errors are never retried).
    #[error("WAL: {0}")]
    Wal(#[from] tally_wal::WalError),
    /// The state machine refused a committed entry or a snapshot (fatal).
    #[error("state machine: {0}")]
    StateMachine(#[from] crate::state_machine::StateMachineError),
    /// The WAL recovered, but its contents cannot be a Raft log (for example entries
    /// that are not contiguous).
    #[error("the log read back from {dir} is unusable: {reason}")]
    BadLog {
        /// The node directory.
        dir: String,
        /// What is wrong with the log.
        reason: String,
    },
    /// A thread of the node could not be started.
    #[error("could not start thread {name}: {source}")]
    Spawn {
        /// Name of the thread.
        name: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The Raft core stopped (an undecodable configuration entry, an unusable log).
    #[error("Raft core: {0}")]
    Core(#[from] CoreError),
    /// Reading or writing a snapshot file failed.
    #[error("snapshot: {0}")]
    Snapshot(#[from] tally_wal::SnapshotError),
    /// The operator's view of the membership contradicts the log's.
    #[error("membership: {0}")]
    MembershipMismatch(String),
}

/// What the driver asks of its environment besides the WAL.
pub trait NodeIo<R> {
    /// Sends messages best-effort (Raft retransmits what is lost).
    fn send(&mut self, messages: Vec<Message>);
    /// Hands committed entries (with the clients waiting for them) or confirmed reads to
    /// the state machine, in order, without waiting: `Ok(Some(work))` gives the work
    /// back because the state machine side is full (the driver keeps it and offers it
    /// again on a later turn, before anything newer). The environment reports the
    /// applied index back through [`TurnInput::applied_index`].
    fn apply(&mut self, work: ApplyWork<R>) -> Result<Option<ApplyWork<R>>, NodeError>;
    /// Disk housekeeping once a snapshot is durable (see [`Housekeeping`]). The runtime
    /// hands it to its snapshot thread, so the raft thread never waits for it.
    fn housekeeping(&mut self, job: Housekeeping) -> Result<(), NodeError>;
    /// Called with every persist action before it is carried out (the simulator's
    /// checker mirrors logs from them).
    fn observe_persist(&mut self, _action: &PersistAction) {}
    /// Called on every role change the core reports.
    fn observe_role(&mut self, _change: &RoleState) {}
}

/// What may be deleted once a snapshot is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Housekeeping {
    /// WAL segments whose entries are all `<=` this index (the snapshot index minus the
    /// retained window; the core already dropped them from memory).
    pub compact_wal_through: u64,
    /// How many of the newest snapshot files to keep.
    pub keep_snapshot_files: usize,
}

/// Everything that arrived for a node since its last turn. The driver empties it.
pub struct TurnInput<R> {
    /// The node's clock, in ticks since it started (monotonic; the driver never moves
    /// the core's clock backwards).
    pub now_tick: u64,
    /// The highest index the state machine reported applied, if it advanced.
    pub applied_index: Option<u64>,
    /// Messages from peers, in arrival order.
    pub messages: Vec<Message>,
    /// Client requests, in arrival order.
    pub requests: Vec<Request<R>>,
    /// Snapshot files the background writer finished since the last turn.
    pub snapshots_written: Vec<WrittenSnapshot>,
}

impl<R> TurnInput<R> {
    /// An empty input at tick 0.
    pub fn new() -> TurnInput<R> {
        TurnInput {
            now_tick: 0,
            applied_index: None,
            messages: Vec::new(),
            requests: Vec::new(),
            snapshots_written: Vec::new(),
        }
    }

    /// Records an applied index (keeps the highest).
    pub fn note_applied(&mut self, index: u64) {
        self.applied_index = Some(self.applied_index.map_or(index, |seen| seen.max(index)));
    }

    /// Whether the input carries nothing but the clock (no applied index, message,
    /// request or snapshot).
    pub fn is_empty(&self) -> bool {
        self.applied_index.is_none()
            && self.messages.is_empty()
            && self.requests.is_empty()
            && self.snapshots_written.is_empty()
    }
}

impl<R> Default for TurnInput<R> {
    fn default() -> Self {
        TurnInput::new()
    }
}

/// A proposal waiting for its entry to commit.
struct PendingWrite<R> {
    index: u64,
    term: u64,
    reply: ReplyTo<R>,
}

/// Counters a driver keeps beside the core (for INFO and the simulator).
#[derive(Clone, Debug, Default)]
pub struct DriverStats {
    /// Commands accepted by the core while leader (cumulative).
    pub proposals_accepted: u64,
    /// Persist actions whose WAL operations had to wait for room in the log.
    pub persists_deferred: u64,
    /// Apply work the state machine side could not take at once (cumulative).
    pub apply_deferred: u64,
    /// Entry-bearing AppendEntries held because the log had no room (cumulative).
    pub appends_held: u64,
    /// Entry-bearing AppendEntries dropped because [`MAX_HELD_APPENDS`] were held.
    pub appends_dropped: u64,
    /// Turns that left client requests queued because the log or the apply side was
    /// full (cumulative).
    pub turns_requests_deferred: u64,
}

/// One node's behaviour (see the module docs).
pub struct NodeDriver<R, L: LogWriter, S: Storage> {
    core: RaftNode,
    log: L,
    snapshots: SnapshotState<S>,
    /// Proposals by index. Invariant: indexes strictly increasing.
    pending_writes: VecDeque<PendingWrite<R>>,
    /// Reads waiting for the core to confirm them, by request id.
    pending_reads: HashMap<u64, (Bytes, ReplyTo<R>)>,
    next_read_id: u64,
    /// Persist actions handed to the log, oldest first, with the ticket of their last
    /// operation. Invariant: sequence numbers strictly increasing.
    inflight_persists: VecDeque<(u64, L::Ticket)>,
    /// WAL operations waiting for room in the log (see `flow`); actions enter
    /// `inflight_persists` once their last operation left this.
    wal_backlog: WalBacklog,
    /// Work waiting for the state machine side to take it.
    apply_outbox: ApplyOutbox<R>,
    /// Entry-bearing AppendEntries waiting for room in the log.
    held_appends: HeldAppends,
    role: Role,
    /// Ticks given to the core so far. Invariant: never decreases.
    ticks_done: u64,
    stats: DriverStats,
    membership: MembershipState,
    /// Where lease reads served off this thread find the lease (see `lease`), with
    /// the grant last stored there. Invariant: republished after every `take_ready`,
    /// before that `Ready` is carried out, and `None` once the node stops.
    lease_cell: Option<(Arc<LeaseCell>, Option<LeaseGrant>)>,
}

impl<R, L: LogWriter, S: Storage> NodeDriver<R, L, S> {
    /// A driver around a core restored from `log`'s contents (and, when the core
    /// restarted from one, the newest snapshot in `snapshots`), at tick 0.
    pub fn new(
        core: RaftNode,
        log: L,
        snapshots: SnapshotStore<S>,
        policy: SnapshotPolicy,
    ) -> NodeDriver<R, L, S> {
        let role = core.role();
        let mut state = SnapshotState::new(snapshots, policy);
        if let Some(meta) = core.snapshot_meta() {
            state.stats.snapshot_index = meta.index;
            state.stats.snapshot_term = meta.term;
        }
        state.handed_out = (core.log().applied(), 0);
        NodeDriver {
            core,
            log,
            snapshots: state,
            pending_writes: VecDeque::new(),
            pending_reads: HashMap::new(),
            next_read_id: 1,
            inflight_persists: VecDeque::new(),
            wal_backlog: WalBacklog::default(),
            apply_outbox: ApplyOutbox::default(),
            held_appends: HeldAppends::default(),
            role,
            ticks_done: 0,
            stats: DriverStats::default(),
            membership: MembershipState::new(MembershipPolicy::default()),
            lease_cell: None,
        }
    }

    /// Publishes this node's lease in `cell` from now on, for lease reads served on
    /// other threads (`lease` module docs: why this is as safe as a read here).
    pub fn publish_lease_to(&mut self, cell: Arc<LeaseCell>) {
        cell.publish(None);
        self.lease_cell = Some((cell, None));
        self.publish_lease();
    }

    /// Stores the core's current lease in the cell when it changed.
    fn publish_lease(&mut self) {
        let Some((cell, published)) = self.lease_cell.as_mut() else {
            return;
        };
        let grant = self
            .core
            .lease_remaining_ticks()
            .map(|remaining_ticks| LeaseGrant {
                term: self.core.term(),
                expires_tick: self.core.now_tick().saturating_add(remaining_ticks),
                required_index: self.core.commit_index(),
            });
        if grant != *published {
            cell.publish(grant);
            *published = grant;
        }
    }

    /// Withdraws the published lease (the node stops).
    fn revoke_lease(&mut self) {
        if let Some((cell, published)) = self.lease_cell.as_mut() {
            cell.publish(None);
            *published = None;
        }
    }

    /// The Raft core (read-only view).
    pub fn core(&self) -> &RaftNode {
        &self.core
    }

    /// The core, for scripted inputs (tests, the simulator's nemesis): whatever it
    /// produces is carried out by the next [`NodeDriver::turn`], like any other input.
    pub fn core_mut(&mut self) -> &mut RaftNode {
        &mut self.core
    }

    /// Gives the log back (the node stops; the simulator keeps the disk across crashes).
    pub fn into_log(self) -> L {
        self.log
    }

    /// The node's log (WAL).
    pub fn log(&self) -> &L {
        &self.log
    }

    /// The node's log, mutable (tests and the simulator's fault injection).
    pub fn log_mut(&mut self) -> &mut L {
        &mut self.log
    }

    /// Counters of the driver's deferrals and held messages (INFO, the simulator).
    pub fn stats(&self) -> &DriverStats {
        &self.stats
    }

    /// Counters of this node's snapshots (INFO raft).
    pub fn snapshot_stats(&self) -> &SnapshotStats {
        &self.snapshots.stats
    }

    /// The snapshot files of this node.
    pub fn snapshot_store(&self) -> &SnapshotStore<S> {
        &self.snapshots.store
    }

    /// Tells the core about the snapshot it restarted from, with the file's bytes so it
    /// can send it to followers (call once after `new` when the node restored one).
    pub fn restarted_from_snapshot(
        &mut self,
        meta: SnapshotMeta,
        info: &tally_wal::SnapshotInfo,
    ) -> Result<(), NodeError> {
        let data = self.snapshots.file_bytes(info)?;
        self.snapshots.note_durable(&meta, info);
        self.snapshots.handed_out = (meta.index, meta.term);
        self.core
            .snapshot_ready(meta, data)
            .map_err(|error| NodeError::BadLog {
                dir: self.snapshots.store.describe(),
                reason: format!("the restart snapshot was refused by the core: {error}"),
            })
    }

    /// What member `id` said about itself (peer handshake); recorded into the
    /// configuration by a later turn where it has nothing yet (leader only).
    pub fn note_member_observed(&mut self, id: NodeId, info: MemberInfo) {
        self.membership.observed(id, info);
    }

    /// Sets how membership changes are checked (promotion lag, transfer timeout).
    pub fn set_membership_policy(&mut self, policy: MembershipPolicy) {
        self.membership.policy = policy;
    }

    /// Ticks the core has seen.
    pub fn now_tick(&self) -> u64 {
        self.ticks_done
    }

    /// One turn: advance the clock to `input.now_tick`, then report the applied index,
    /// step every message, take every request (all proposals become one `propose`),
    /// report durable persists in order, and carry out everything the core asks for.
    /// An `Err` is fatal: the caller stops the node.
    pub fn turn(
        &mut self,
        input: &mut TurnInput<R>,
        io: &mut impl NodeIo<R>,
    ) -> Result<(), NodeError> {
        // The clock first: nothing time-dependent (a lease, a vote, leader contact) may
        // be judged at a tick older than the caller's now.
        self.advance_clock(input.now_tick);
        if let Some(index) = input.applied_index.take() {
            self.core.on_applied(index);
        }
        for written in std::mem::take(&mut input.snapshots_written) {
            self.snapshot_written(written, io)?;
        }
        self.apply_outbox.drain(io)?;
        self.drain_wal_backlog()?;
        let mut budget = TurnBudget::default();
        self.step_messages(&mut input.messages, &mut budget);
        let entries_before = budget.entries;
        let admitted = self.admitted_requests(&input.requests, &mut budget);
        // Sized once: a pipelined turn proposes hundreds of commands.
        let proposals = budget.entries - entries_before;
        let mut commands = Vec::with_capacity(proposals);
        let mut replies = Vec::with_capacity(proposals);
        if admitted < input.requests.len() {
            self.stats.turns_requests_deferred += 1;
        }
        for request in input.requests.drain(..admitted) {
            self.sort_request(request, &mut commands, &mut replies);
        }
        self.membership.drive(&mut self.core);
        self.propose_batch(commands, replies);
        self.check_durable()?;
        self.process_ready(io)
    }

    /// Whether the log or the state machine side has work waiting (then nothing new
    /// that would add to it is taken).
    pub fn is_backed_up(&self) -> bool {
        !self.wal_backlog.is_empty() || !self.apply_outbox.is_empty()
    }

    /// (WAL bytes waiting, apply work items waiting, AppendEntries held).
    pub fn backlog(&self) -> (usize, usize, usize) {
        (
            self.wal_backlog.bytes(),
            self.apply_outbox.len(),
            self.held_appends.len(),
        )
    }

    /// Whether `footprint` more (after what the turn admitted) fits in the log now.
    fn admits(&self, budget: &TurnBudget, (bytes, entries): (usize, usize)) -> bool {
        if self.is_backed_up() {
            return false;
        }
        let total_bytes = budget.bytes + bytes;
        (budget.bytes == 0 || total_bytes <= self.log.max_append_bytes())
            && self.log.has_room(total_bytes, budget.entries + entries)
    }

    /// Steps held AppendEntries that now fit, then the new messages: votes, heartbeats
    /// and answers at once; entry-bearing AppendEntries only while the log has room
    /// (held otherwise, in order, and dropped past the bound: the leader resends).
    fn step_messages(&mut self, messages: &mut Vec<Message>, budget: &mut TurnBudget) {
        while let Some(held) = self.held_appends.front() {
            let footprint = flow::append_footprint(held);
            if !self.admits(budget, footprint) {
                break;
            }
            budget.add(footprint);
            if let Some(message) = self.held_appends.pop_front() {
                self.core.step(message);
            }
        }
        for message in messages.drain(..) {
            let footprint = flow::append_footprint(&message);
            if footprint.1 == 0 {
                self.core.step(message);
            } else if self.held_appends.is_empty() && self.admits(budget, footprint) {
                budget.add(footprint);
                self.core.step(message);
            } else if self.held_appends.hold(message) {
                self.stats.appends_held += 1;
            } else {
                self.stats.appends_dropped += 1;
            }
        }
    }

    /// How many of `requests` (a prefix, so their order is kept) this turn takes: a
    /// leader takes none while backed up, and proposals only while the log has room
    /// for them. The rest stay with the caller (its bounded request queue then fills
    /// and new clients are turned away there). A non-leader answers them all at once.
    fn admitted_requests(&self, requests: &[Request<R>], budget: &mut TurnBudget) -> usize {
        if self.core.role() != Role::Leader {
            return requests.len();
        }
        let mut admitted = 0;
        for request in requests {
            let footprint = flow::proposal_footprint(request);
            if self.is_backed_up() || (footprint.1 > 0 && !self.admits(budget, footprint)) {
                break;
            }
            budget.add(footprint);
            admitted += 1;
        }
        admitted
    }

    /// Hands the log what it has room for from the backlog, in order.
    fn drain_wal_backlog(&mut self) -> Result<(), NodeError> {
        self.wal_backlog
            .drain(&mut self.log, &mut self.inflight_persists)
    }

    /// Hands `work` to the state machine side, in order after anything waiting.
    fn hand_to_apply(
        &mut self,
        work: ApplyWork<R>,
        io: &mut impl NodeIo<R>,
    ) -> Result<(), NodeError> {
        if self.apply_outbox.hand_over(work, io)? {
            self.stats.apply_deferred += 1;
        }
        Ok(())
    }

    fn advance_clock(&mut self, now_tick: u64) {
        while self.ticks_done < now_tick {
            self.core.tick();
            self.ticks_done += 1;
        }
    }

    fn sort_request(
        &mut self,
        request: Request<R>,
        commands: &mut Vec<Bytes>,
        replies: &mut Vec<ReplyTo<R>>,
    ) {
        match request {
            Request::One(submission) => self.sort_submission(submission, commands, replies),
            Request::Batch(batch) => {
                for submission in batch {
                    self.sort_submission(submission, commands, replies);
                }
            }
            Request::TransferLeadership { target } => {
                if let Err(error) = self.core.transfer_leadership(target) {
                    tracing::info!(%error, target, "leadership transfer refused");
                }
            }
            Request::SnapshotNow { done } => {
                // Answered by the first snapshot that covers everything handed out so
                // far (one already in progress may not).
                let covers = self.snapshots.handed_out.0.max(1);
                if let Some(taken) = self.snapshots.covering(covers) {
                    // Nothing applied since the newest durable snapshot: it is the answer.
                    return done(Ok(taken));
                }
                self.snapshots.waiters.push((covers, done));
                self.snapshots.forced = true;
            }
            Request::ChangeMembership { change, done } => {
                self.membership.request(&mut self.core, change, done)
            }
            Request::Transfer { target, done } => {
                self.membership.transfer(&mut self.core, target, done)
            }
            Request::MemberObserved { id, info } => self.membership.observed(id, info),
        }
    }

    fn sort_submission(
        &mut self,
        submission: Submission<R>,
        commands: &mut Vec<Bytes>,
        replies: &mut Vec<ReplyTo<R>>,
    ) {
        match submission {
            Submission::Propose { command, reply } => {
                commands.push(command);
                replies.push(reply);
            }
            Submission::Read { query, reply } => self.start_read(query, reply),
        }
    }

    /// Proposes every command of this turn as one batch. Reads of the same turn were
    /// started before it: a read need not observe a write that has not been
    /// acknowledged yet (the two are concurrent); a client that wants its own pipelined
    /// writes visible to its later reads holds those reads back until the writes are
    /// answered (the RESP port does).
    fn propose_batch(&mut self, commands: Vec<Bytes>, replies: Vec<ReplyTo<R>>) {
        if commands.is_empty() {
            return;
        }
        let term = self.core.term();
        match self.core.propose(commands) {
            Ok(indexes) => {
                self.stats.proposals_accepted += indexes.end - indexes.start;
                debug_assert_eq!((indexes.end - indexes.start) as usize, replies.len());
                for (index, reply) in indexes.zip(replies) {
                    debug_assert!(self
                        .pending_writes
                        .back()
                        .is_none_or(|last| last.index < index));
                    self.pending_writes
                        .push_back(PendingWrite { index, term, reply });
                }
            }
            Err(error) => {
                let client_error = match error {
                    ProposeError::NotLeader { leader_hint } => ClientError::NotLeader {
                        leader: leader_hint,
                    },
                    ProposeError::TransferInProgress => ClientError::NotLeader { leader: None },
                    ProposeError::Empty => return,
                };
                for reply in replies {
                    reply.send(Err(client_error.clone()));
                }
            }
        }
    }

    fn start_read(&mut self, query: Bytes, reply: ReplyTo<R>) {
        let request_id = self.next_read_id;
        self.next_read_id += 1;
        match self.core.read_index(request_id) {
            Ok(()) => {
                self.pending_reads.insert(request_id, (query, reply));
            }
            Err(ReadError::NotLeader { leader_hint }) => {
                reply.send(Err(ClientError::NotLeader {
                    leader: leader_hint,
                }));
            }
        }
    }

    /// Reports to the core every persist action the log made durable, in order.
    fn check_durable(&mut self) -> Result<(), NodeError> {
        let mut durable_seq = None;
        while let Some((_, ticket)) = self.inflight_persists.front() {
            if !self.log.is_durable(ticket) {
                break;
            }
            let Some((seq, ticket)) = self.inflight_persists.pop_front() else {
                break;
            };
            self.log.finish(ticket)?;
            durable_seq = Some(seq);
        }
        if let Some(seq) = durable_seq {
            self.core.on_persisted(seq);
        }
        Ok(())
    }

    fn process_ready(&mut self, io: &mut impl NodeIo<R>) -> Result<(), NodeError> {
        while self.core.has_ready() {
            let ready = self.core.take_ready();
            // Before anything of this Ready leaves: a step-down, a TimeoutNow or a new
            // configuration ends the published lease first, and the commit index
            // covers the entries about to be applied.
            self.publish_lease();
            self.carry_out(ready, io)?;
            // A persist that was already durable (e.g. nothing new) resolves at once.
            self.check_durable()?;
        }
        self.membership.resolve(&self.core);
        // Acknowledgements stepped this turn may have extended the lease.
        self.publish_lease();
        Ok(())
    }

    fn carry_out(&mut self, ready: Ready, io: &mut impl NodeIo<R>) -> Result<(), NodeError> {
        let Ready {
            persist,
            messages,
            committed_entries,
            reads,
            failed_reads,
            role_change,
            restore_snapshot,
            fatal,
        } = ready;
        if let Some(error) = fatal {
            return Err(NodeError::Core(error));
        }
        // The leader's messages go out first so replication overlaps its own fsync.
        if !messages.is_empty() {
            io.send(messages);
        }
        if let Some(action) = persist {
            io.observe_persist(&action);
            self.persist(action)?;
        }
        // Committed entries answer their clients even if leadership is lost in the
        // same turn; only what is still pending after them has an unknown outcome.
        let replies = self.answer_committed(&committed_entries);
        if let Some(change) = role_change {
            io.observe_role(&change);
            if change.role != self.role {
                tracing::debug!(term = change.term, role = ?change.role, leader = ?change.leader, "role change");
            }
            let was_leader = self.role == Role::Leader;
            self.role = change.role;
            if was_leader && change.role != Role::Leader {
                self.fail_all_pending(ClientError::OutcomeUnknown);
                // A change whose C_new committed (a removed leader steps down then) is
                // answered as done; anything else has an unknown outcome.
                self.membership.resolve(&self.core);
                self.membership.leadership_lost();
            }
        }
        if let Some(meta) = restore_snapshot {
            self.restore_installed(meta, io)?;
        }
        if let Some(last) = committed_entries.last() {
            self.snapshots.handed_out = (last.index, last.term);
            self.snapshots.bytes_since += committed_entries
                .iter()
                .map(|entry| entry.data.len() as u64)
                .sum::<u64>();
            self.hand_to_apply(
                ApplyWork::Entries {
                    entries: committed_entries,
                    replies,
                },
                io,
            )?;
            self.maybe_snapshot(io)?;
        } else if self.snapshots.forced {
            self.maybe_snapshot(io)?;
        }
        let mut confirmed = Vec::with_capacity(reads.len());
        for ready_read in reads {
            if let Some((query, reply)) = self.pending_reads.remove(&ready_read.request_id) {
                confirmed.push(ConfirmedRead {
                    read_index: ready_read.read_index,
                    query,
                    reply,
                    lease: ready_read.via == ReadPath::Lease,
                });
            }
        }
        if !confirmed.is_empty() {
            self.hand_to_apply(ApplyWork::Reads(confirmed), io)?;
        }
        for (request_id, ReadError::NotLeader { leader_hint }) in failed_reads {
            if let Some((_, reply)) = self.pending_reads.remove(&request_id) {
                reply.send(Err(ClientError::NotLeader {
                    leader: leader_hint,
                }));
            }
        }
        Ok(())
    }

    /// Pairs committed entries with the proposals waiting for them.
    fn answer_committed(&mut self, committed: &[Entry]) -> Vec<(u64, ReplyTo<R>)> {
        let Some(last) = committed.last() else {
            return Vec::new();
        };
        let mut replies = Vec::with_capacity(committed.len().min(self.pending_writes.len()));
        let first_index = committed[0].index;
        while self
            .pending_writes
            .front()
            .is_some_and(|pending| pending.index <= last.index)
        {
            let Some(pending) = self.pending_writes.pop_front() else {
                break;
            };
            let entry = pending
                .index
                .checked_sub(first_index)
                .and_then(|offset| committed.get(offset as usize));
            match entry {
                Some(entry) if entry.term == pending.term => {
                    replies.push((pending.index, pending.reply))
                }
                Some(_) => pending.reply.send(Err(ClientError::NotCommitted)),
                // Committed in an earlier Ready without us seeing it: cannot happen, as
                // committed entries arrive in order; answer honestly anyway.
                None => pending.reply.send(Err(ClientError::OutcomeUnknown)),
            }
        }
        replies
    }

    /// Carries out one persist action as WAL operations — the only place where a
    /// `PersistAction` becomes WAL records. Order: hard state, truncation, entries; the
    /// ticket of the last operation covers the whole action.
    fn persist(&mut self, action: PersistAction) -> Result<(), NodeError> {
        let PersistAction {
            seq,
            hard_state,
            truncate_from,
            entries,
            snapshot,
            reset_log,
        } = action;
        // A received snapshot chunk first; the last one is installed (fsync, rename,
        // directory fsync) before anything after it is queued: a WAL reset must never
        // become durable before the snapshot that replaces the log.
        if let Some(chunk) = snapshot {
            self.receive_chunk(chunk)?;
        }
        let mut ops = Vec::new();
        if let Some(hard_state) = hard_state {
            ops.push(WalOp::HardState(tally_wal::HardState {
                term: hard_state.term,
                vote: hard_state.voted_for.unwrap_or(0),
            }));
        }
        if let Some(start) = reset_log {
            ops.push(WalOp::Reset {
                next_index: start.last_index + 1,
            });
        }
        if let Some(from_index) = truncate_from {
            ops.push(WalOp::Truncate { from_index });
        }
        self.append_ops(&entries, &mut ops);
        // An action with nothing to write still gets an ordered completion (a barrier).
        self.wal_backlog.push_action(seq, ops);
        self.drain_wal_backlog()?;
        if !self.wal_backlog.is_empty() {
            self.stats.persists_deferred += 1;
        }
        Ok(())
    }

    /// Splits `entries` into as many log appends as the log's per-append bound needs (a
    /// leader's batch of many large commands can exceed it); group commit still writes
    /// them together, and the last ticket covers them all (tickets resolve in order).
    fn append_ops(&self, entries: &[Entry], ops: &mut Vec<WalOp>) {
        let max_bytes = self.log.max_append_bytes();
        let mut chunk = Vec::with_capacity(entries.len());
        let mut chunk_bytes = 0usize;
        for (position, entry) in entries.iter().enumerate() {
            let entry_bytes = tally_wal::ENTRY_RECORD_HEADER_LEN + entry.data.len();
            if !chunk.is_empty() && chunk_bytes + entry_bytes > max_bytes {
                let rest = Vec::with_capacity(entries.len() - position);
                ops.push(WalOp::Append(std::mem::replace(&mut chunk, rest)));
                chunk_bytes = 0;
            }
            chunk_bytes += entry_bytes;
            chunk.push(tally_wal::Entry {
                index: entry.index,
                term: entry.term,
                kind: entry.kind.as_u8(),
                payload: entry.data.clone(),
            });
        }
        if !chunk.is_empty() {
            ops.push(WalOp::Append(chunk));
        }
    }

    /// Appends one chunk of a snapshot received from the leader to its temp file; the
    /// last chunk installs it (durable and visible) before the action counts as done.
    fn receive_chunk(&mut self, chunk: SnapshotChunk) -> Result<(), NodeError> {
        let state = &mut self.snapshots;
        if chunk.offset == 0 || state.receiver.is_none() {
            // A new transfer (or one restarted from 0) replaces any partial one.
            state.receiver = Some(state.store.begin_receive(chunk.total_bytes)?);
        }
        let Some(receiver) = state.receiver.as_mut() else {
            unreachable!("a receiver was just created")
        };
        receiver.append(chunk.offset, &chunk.data)?;
        if chunk.last {
            let Some(receiver) = state.receiver.take() else {
                unreachable!("the receiver is present")
            };
            // The core checked the bytes' CRC; the file's own checksums are verified
            // again here, so a mismatch is local corruption: fail-stop.
            let info = receiver.install()?;
            state.stats.snapshots_installed += 1;
            state.note_durable(&chunk.meta, &info);
            state.pending_install = Some((chunk.meta, info));
        }
        Ok(())
    }

    /// The core asks for the installed snapshot to be restored: hand the state machine
    /// a reader over the file (in order, before later committed entries), offer the
    /// file to the core for sending, and compact what the snapshot covers.
    fn restore_installed(
        &mut self,
        meta: SnapshotMeta,
        io: &mut impl NodeIo<R>,
    ) -> Result<(), NodeError> {
        let info = match self.snapshots.pending_install.take() {
            Some((installed, info)) if installed.index == meta.index => info,
            _ => {
                return Err(NodeError::BadLog {
                    dir: self.snapshots.store.describe(),
                    reason: format!(
                        "the core asked to restore snapshot {} which was not installed here",
                        meta.index
                    ),
                })
            }
        };
        let reader = self.snapshots.store.open(&info.name)?;
        self.hand_to_apply(
            ApplyWork::Restore {
                meta: meta.clone(),
                reader: Box::new(reader),
            },
            io,
        )?;
        self.snapshots.handed_out = (meta.index, meta.term);
        self.snapshots.bytes_since = 0;
        let data = self.snapshots.file_bytes(&info)?;
        if let Err(error) = self.core.snapshot_ready(meta.clone(), data) {
            tracing::debug!(%error, index = meta.index, "installed snapshot not kept for sending");
        }
        self.compact(meta.index, io)
    }

    /// Asks the state machine for a frozen view as of the last entry handed out, when
    /// the policy (or `snapshot_now`) says so. The applier reaches it in order, so the
    /// view is exactly at `meta.index`.
    fn maybe_snapshot(&mut self, io: &mut impl NodeIo<R>) -> Result<(), NodeError> {
        if !self.snapshots.due() {
            return Ok(());
        }
        let (index, term) = self.snapshots.handed_out;
        let Some(configuration) = self.core.configuration_at(index).cloned() else {
            return Ok(()); // not in memory any more: the next trigger will do
        };
        self.snapshots.in_progress = true;
        self.snapshots.forced = false;
        self.snapshots.bytes_since = 0;
        self.hand_to_apply(
            ApplyWork::Snapshot {
                meta: SnapshotMeta {
                    index,
                    term,
                    configuration,
                },
            },
            io,
        )
    }

    /// The background writer finished a snapshot file: offer it to the core, compact
    /// memory and disk below it (keeping the retained window), keep the newest files.
    fn snapshot_written(
        &mut self,
        written: WrittenSnapshot,
        io: &mut impl NodeIo<R>,
    ) -> Result<(), NodeError> {
        let WrittenSnapshot {
            meta,
            info,
            file_crc32,
        } = written;
        self.snapshots.in_progress = false;
        self.snapshots.stats.snapshots_taken += 1;
        self.snapshots.note_durable(&meta, &info);
        let data = self.snapshots.file_bytes(&info)?;
        if let Err(error) = self
            .core
            .snapshot_ready_with_checksum(meta.clone(), data, file_crc32)
        {
            // E.g. a newer snapshot was installed from the leader meanwhile.
            tracing::debug!(%error, index = meta.index, "snapshot not offered to the core");
            return Ok(());
        }
        self.compact(meta.index, io)
    }

    /// Drops entries below `snapshot_index - retain_entries` from memory, and asks the
    /// environment to delete the WAL segments and snapshot files that are no longer
    /// needed (off the raft thread in the runtime).
    fn compact(&mut self, snapshot_index: u64, io: &mut impl NodeIo<R>) -> Result<(), NodeError> {
        let keep_snapshot_files = self.snapshots.policy.keep_files.max(1);
        let through = snapshot_index.saturating_sub(self.snapshots.policy.retain_entries);
        let through = through.min(self.core.log().applied());
        if through > self.core.log().start().last_index {
            if let Err(error) = self.core.compact_log(through) {
                tracing::debug!(%error, through, "in-memory compaction skipped");
            }
        }
        io.housekeeping(Housekeeping {
            compact_wal_through: self.core.log().start().last_index,
            keep_snapshot_files,
        })
    }

    /// Answers every pending client: writes with `error`, reads with `NotLeader` when
    /// the error is an unknown outcome (a read never has side effects).
    pub fn fail_all_pending(&mut self, error: ClientError) {
        for pending in self.pending_writes.drain(..) {
            pending.reply.send(Err(error.clone()));
        }
        let leader = self.core.leader_id();
        for (_, (_, reply)) in self.pending_reads.drain() {
            let read_error = match error {
                ClientError::OutcomeUnknown => ClientError::NotLeader { leader },
                ref other => other.clone(),
            };
            reply.send(Err(read_error));
        }
    }

    /// The node stops (shutdown or fail-stop): writes already proposed may still commit
    /// through the other members, so their outcome is unknown; reads just failed.
    pub fn fail_on_stop(&mut self) {
        self.revoke_lease();
        self.membership.fail_all(MembershipError::NodeStopped);
        self.apply_outbox.fail_on_stop();
        for (_, done) in self.snapshots.waiters.drain(..) {
            done(Err(ClientError::NodeStopped));
        }
        for pending in self.pending_writes.drain(..) {
            pending.reply.send(Err(ClientError::OutcomeUnknown));
        }
        for (_, (_, reply)) in self.pending_reads.drain() {
            reply.send(Err(ClientError::NodeStopped));
        }
    }
}

#[cfg(test)]
mod tests;
