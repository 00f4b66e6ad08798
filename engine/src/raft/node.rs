//! The Raft core: one node's consensus state machine, free of I/O.
//!
//! [`RaftNode`] takes inputs (`tick`, `step`, `propose`, `read_index`,
//! `transfer_leadership`, and the runtime's completions `on_persisted` / `on_applied`)
//! and accumulates what the runtime must do into a [`Ready`], taken with
//! [`RaftNode::take_ready`]. It never reads a clock, touches a disk or socket, spawns a
//! thread or draws randomness it was not given: the election-timeout RNG is seeded
//! from [`RaftConfig::rng_seed`]. The same code runs in production and in the
//! simulator (`crate::sim`).
//!
//! # Ordering rules (enforced by the core)
//!
//! 1. `Ready::persist` actions carry sequence numbers 1, 2, 3, ... The runtime carries
//!    them out in that order (each as one write + fsync) and reports completion with
//!    `on_persisted(seq)`, meaning "every action with a sequence number <= seq is
//!    durable". Truncations inside an action make completions unambiguous: the core
//!    caps the watermark of every earlier action at the truncation point.
//! 2. Every message in `Ready::messages` may be sent at once. The core itself holds back
//!    any message whose correctness depends on durability until the runtime reported
//!    it: vote grants and RequestVote (term/vote must be durable: one vote per term
//!    survives crashes), AppendEntries success replies (the follower's log must be
//!    durable through the acknowledged index), and in general every message is held
//!    until the hard state current at its creation is durable.
//! 3. A leader's own AppendEntries go out immediately, in parallel with its own disk
//!    write (thesis §10.2.1); it counts itself toward the commit quorum only through
//!    `RaftLog::persisted`, i.e. once its write is durable.
//! 4. `Ready::committed_entries` are committed and durable locally (applied <=
//!    min(committed, persisted)); apply them in order and report `on_applied`.
//! 5. `Ready::reads` name a read index: serve the read once the state machine applied
//!    at least that index.
//! 6. Snapshots (see `transfer.rs`): a received snapshot replaces the log in memory at
//!    once (so later messages build on it), travels in a persist action like any log
//!    change, and `Ready::restore_snapshot` asks for the state-machine restore only
//!    once that action is durable, in the same `Ready` as (and before) the first
//!    entries after it. Nothing at or below the snapshot index is handed out after it.
//!
//! A fatal error (an undecodable configuration entry) stops the node: it is reported
//! once in `Ready::fatal` (and by [`RaftNode::fatal_error`]) and every later input is
//! ignored (fail-stop).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::{Configuration, VoteResult};
use super::log::RaftLog;
use super::message::{
    AppendEntries, AppendEntriesResponse, ConflictHint, Message, MessageBody, RequestVote,
    VoteResponse,
};
use super::progress::{Progress, ReplicationState};
use super::snapshot::{LocalSnapshot, SnapshotChunk, SnapshotMeta};
use super::types::{Entry, EntryKind, HardState, LogStart, NodeId, Role};

#[path = "transfer.rs"]
mod transfer;
#[path = "validate.rs"]
mod validate;

/// Static parameters of a node. Times are in ticks: the runtime calls
/// [`RaftNode::tick`] at a fixed interval of its local clock.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// This node's id. Must be non-zero and unique in the cluster.
    pub id: NodeId,
    /// Minimum election timeout; each timeout is drawn from `[min, 2 * min)`.
    /// Followers also refuse votes for this long after hearing from a leader.
    pub election_timeout_ticks: u64,
    /// A leader sends heartbeats this often. Must be well below the election timeout.
    pub heartbeat_interval_ticks: u64,
    /// At most this many AppendEntries with entries in flight to one follower.
    pub max_inflight_messages: usize,
    /// At most this many entry bytes in flight to one follower.
    pub max_inflight_bytes: u64,
    /// An AppendEntries carries entries up to this many bytes (at least one entry).
    pub max_batch_bytes: u64,
    /// An AppendEntries carries at most this many entries.
    pub max_batch_entries: usize,
    /// Run a pre-vote round before incrementing the term (thesis §9.6).
    pub pre_vote: bool,
    /// A leader that did not hear from a quorum within an election timeout steps
    /// down, and followers ignore vote requests while they hear from a leader.
    pub check_quorum: bool,
    /// Serve reads under a leader lease when it is valid (needs `check_quorum`).
    pub lease_reads: bool,
    /// Bound on clock rate difference: while the slowest clock in the cluster
    /// advances T, the fastest advances at most T / (1 - max_clock_drift).
    pub max_clock_drift: f64,
    /// Seed of the election-timeout RNG.
    pub rng_seed: u64,
    /// A snapshot is sent in chunks of this many bytes (the last may be shorter). Keep
    /// it well below the transport's frame limit (64 MiB by default).
    pub snapshot_chunk_bytes: u64,
    /// At most this many snapshot chunks are unacknowledged per follower.
    pub snapshot_inflight_chunks: usize,
    /// A snapshot transfer that got no answer for this many ticks resends from the
    /// last acknowledged offset (lost chunks with nothing after them to reveal it).
    pub snapshot_retry_ticks: u64,
}

impl RaftConfig {
    /// Defaults suited to a 10 ms tick: 100 ms election timeout, 10 ms heartbeats.
    pub fn new(id: NodeId, rng_seed: u64) -> RaftConfig {
        RaftConfig {
            id,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 1,
            max_inflight_messages: 16,
            max_inflight_bytes: 4 << 20,
            max_batch_bytes: 256 << 10,
            max_batch_entries: 1024,
            pre_vote: true,
            check_quorum: true,
            lease_reads: true,
            max_clock_drift: 0.1,
            rng_seed,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_inflight_chunks: 4,
            snapshot_retry_ticks: 20,
        }
    }

    /// A follower in replicate state whose in-flight window made no progress (its
    /// match index did not advance) for this long is presumed to have lost a message and
    /// is probed: a backstop (a slow disk delays acknowledgements, so it is many election
    /// timeouts); losses are normally found by a rejection or by an answer to a later
    /// message (see `Progress::ack_latency_ticks`).
    pub fn replication_stall_ticks(&self) -> u64 {
        8 * self.election_timeout_ticks.max(1)
    }

    /// Ticks a lease lasts after the send time a quorum acknowledged:
    /// `floor((election_timeout - 1) * (1 - max_clock_drift))`. The `- 1` covers tick
    /// granularity on the follower side, and the strict comparison in
    /// `lease_valid` the leader's side (see the derivation in ARCHITECTURE.md, "Elections and leases").
    pub fn lease_ticks(&self) -> u64 {
        let drift = self.max_clock_drift.clamp(0.0, 1.0);
        ((self.election_timeout_ticks.saturating_sub(1)) as f64 * (1.0 - drift)).floor() as u64
    }
}

/// One persistence action, reported durable with one `on_persisted(seq)`. Carry it out
/// in this order: the snapshot chunk (for the last chunk: fsync the file, rename it
/// into place, fsync the directory — all durable *before* anything of the WAL part is
/// queued, since `reset_log` forgets entries only the snapshot then covers), then in
/// ONE WAL write + fsync the hard state, `reset_log`, the truncation, the entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistAction {
    /// Sequence number, 1, 2, 3, ...; report with `on_persisted(seq)`.
    pub seq: u64,
    /// A received snapshot chunk to append to the temporary snapshot file (offset 0
    /// starts a new file); with `last`, the snapshot is installed.
    pub snapshot: Option<SnapshotChunk>,
    /// Term and vote to make durable before anything that depends on them is sent;
    /// `None` when they did not change.
    pub hard_state: Option<HardState>,
    /// The durable log now starts after this point and holds no entry (a snapshot
    /// replaced it): `tally_wal::Wal::reset(last_index + 1)`.
    pub reset_log: Option<LogStart>,
    /// Delete every stored entry with index >= this before appending.
    pub truncate_from: Option<u64>,
    /// Entries to append; contiguous, starting at `truncate_from` if set, after
    /// `reset_log`'s point if set, otherwise right after the previously persisted
    /// entries.
    pub entries: Vec<Entry>,
}

/// A read that became safe to serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadyRead {
    /// The id the caller gave [`RaftNode::read_index`].
    pub request_id: u64,
    /// Serve once the state machine applied at least this index.
    pub read_index: u64,
    /// How the read was made safe.
    pub via: ReadPath,
}

/// How a read was confirmed linearizable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPath {
    /// Leader lease: no message round was needed.
    Lease,
    /// A quorum confirmed leadership after the request arrived.
    ReadIndex,
}

/// The node's role, term and known leader, reported when any of them changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleState {
    /// The node's role now.
    pub role: Role,
    /// The node's current term.
    pub term: u64,
    /// The leader this node knows of in `term`; `None` while unknown (elections).
    pub leader: Option<NodeId>,
}

/// Everything the runtime must do after feeding inputs. See the module docs for the
/// ordering rules.
#[derive(Clone, Debug, Default)]
pub struct Ready {
    /// What to make durable, then report with [`RaftNode::on_persisted`]; `None`: nothing.
    pub persist: Option<PersistAction>,
    /// Messages to send now; the core already held back those that must wait for
    /// durability (see the module docs).
    pub messages: Vec<Message>,
    /// Entries committed and durable locally, to apply in index order (then report with
    /// [`RaftNode::on_applied`]).
    pub committed_entries: Vec<Entry>,
    /// Reads that became safe: serve each once the state machine applied its `read_index`.
    pub reads: Vec<ReadyRead>,
    /// Reads that will never become safe on this node (it lost leadership).
    pub failed_reads: Vec<(u64, ReadError)>,
    /// Set when the role, term or known leader changed since the last `Ready`.
    pub role_change: Option<RoleState>,
    /// A received snapshot is durably installed: restore the state machine from it
    /// BEFORE applying this Ready's `committed_entries` (all above its index).
    pub restore_snapshot: Option<SnapshotMeta>,
    /// The node stopped (fail-stop); reported once, nothing else follows.
    pub fatal: Option<CoreError>,
}

impl Ready {
    /// Whether there is nothing to do: no persistence, message, entry, read, role change,
    /// snapshot restore or fatal error.
    pub fn is_empty(&self) -> bool {
        self.persist.is_none()
            && self.restore_snapshot.is_none()
            && self.fatal.is_none()
            && self.messages.is_empty()
            && self.committed_entries.is_empty()
            && self.reads.is_empty()
            && self.failed_reads.is_empty()
            && self.role_change.is_none()
    }
}

/// Why [`RaftNode::propose`] refused a proposal. Nothing was appended; the caller may
/// retry on the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node knows of, if any: where to retry.
        leader_hint: Option<NodeId>,
    },
    /// The leader is handing leadership over and takes no proposal meanwhile.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// No command was given.
    #[error("empty proposal")]
    Empty,
}

/// Why a membership change was refused; the configuration is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigChangeError {
    /// This node is not the leader.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node knows of, if any: where to retry.
        leader_hint: Option<NodeId>,
    },
    /// The leader is handing leadership over and takes no change meanwhile.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// An earlier change is not committed yet (or joint consensus is not left yet): one
    /// change at a time.
    #[error("a membership change is still in progress")]
    ChangeInProgress,
    /// The requested configuration has no voter.
    #[error("a configuration needs at least one voter")]
    NoVoters,
}

/// Why a linearizable read cannot be served by this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// This node is not the leader (or stopped being it before the read was confirmed).
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node knows of, if any: where to retry.
        leader_hint: Option<NodeId>,
    },
}

/// Why [`RaftNode::transfer_leadership`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// This node is not the leader.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader_hint: Option<NodeId>,
    },
    /// The target is not a voter of the current configuration.
    #[error("node {0} is not a voter of the configuration")]
    NotAVoter(NodeId),
    /// The target is this node, which already leads.
    #[error("already the leader")]
    AlreadyLeader,
}

/// Errors that stop the node or refuse its durable state: the log it was given or
/// received cannot be trusted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// A configuration entry in the log does not decode (fatal: the log is corrupt).
    #[error("configuration entry at index {index} does not decode: {reason}")]
    UndecodableConfiguration {
        /// Index of the entry.
        index: u64,
        /// What the decoder refused.
        reason: String,
    },
    /// Restored entries do not follow each other index by index.
    #[error(
        "log entries are not contiguous: expected index {expected_index}, found {found_index}"
    )]
    LogNotContiguous {
        /// Index the next entry should have had.
        expected_index: u64,
        /// Index it had.
        found_index: u64,
    },
    /// A restored entry's term is below its predecessor's.
    #[error("entry {index} has term {term}, below the previous term {previous_term}")]
    TermRegression {
        /// Index of the entry.
        index: u64,
        /// Its term.
        term: u64,
        /// Term of the entry before it.
        previous_term: u64,
    },
}

/// Counters of the core (cumulative since construction).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Received snapshots discarded because their checksum did not match.
    pub snapshot_checksum_failures: u64,
    /// Received snapshots installed (state-machine restores asked for).
    pub snapshots_installed: u64,
    /// Snapshot chunks sent as leader.
    pub snapshot_chunks_sent: u64,
    /// Inbound messages dropped because they were malformed or impossible.
    pub invalid_messages: u64,
    /// Followers dropped from replicate to probe state (a rejection, an acknowledgement
    /// overdue past the follower's own recent latency, or a pipeline that made no
    /// progress for [`RaftConfig::replication_stall_ticks`]).
    pub probe_transitions: u64,
    /// AppendEntries with entries that start at or below an index already sent to that
    /// follower (resends after a loss, a rejection or a probe).
    pub batches_resent: u64,
}

#[derive(Clone, Copy, Debug)]
struct PendingRead {
    request_id: u64,
    read_index: u64,
    /// Confirmed once a quorum echoed a heartbeat id >= this.
    heartbeat_id: u64,
}

#[derive(Clone, Copy, Debug)]
struct Transfer {
    target: NodeId,
    elapsed_ticks: u64,
    timeout_now_sent: bool,
}

/// A persist action handed to the runtime but not yet reported durable.
#[derive(Clone, Copy, Debug)]
struct InflightPersist {
    seq: u64,
    /// The log is durable through this index once the action completes.
    /// Capped when a later truncation removes entries the action wrote.
    last_index: u64,
    hard_state: Option<HardState>,
}

/// One Raft node. See the module docs.
///
/// A one-node cluster driven by hand: what a runtime does, without threads, disk or
/// network (a real runtime writes `persist` to its WAL and fsyncs before reporting it,
/// and sends `messages` to peers).
///
/// ```
/// use bytes::Bytes;
/// use tally_engine::raft::{Configuration, EntryKind, RaftConfig, RaftNode, Ready};
///
/// let mut node = RaftNode::new(RaftConfig::new(1, 42), Configuration::new([1]));
/// let mut applied = Vec::new();
/// let mut carry_out = |node: &mut RaftNode, ready: Ready| {
///     if let Some(action) = ready.persist {
///         node.on_persisted(action.seq); // "durable" at once in this example
///     }
///     for entry in ready.committed_entries {
///         if entry.kind == EntryKind::Normal {
///             applied.push(entry.data.clone());
///         }
///         node.on_applied(entry.index);
///     }
/// };
/// // Tick until the election timeout fires and the node elects itself.
/// while !node.is_leader() {
///     node.tick();
///     let ready = node.take_ready();
///     carry_out(&mut node, ready);
/// }
/// let indexes = node.propose(vec![Bytes::from_static(b"hello")]).unwrap();
/// while node.has_ready() {
///     let ready = node.take_ready();
///     carry_out(&mut node, ready);
/// }
/// assert!(node.commit_index() >= indexes.start);
/// assert_eq!(applied, [Bytes::from_static(b"hello")]);
/// ```
pub struct RaftNode {
    cfg: RaftConfig,
    /// The configuration in effect: that of the latest configuration entry in the log
    /// (committed or not, Raft §6), else the base configuration.
    configuration: Configuration,
    /// Configurations by the log index that introduced them, oldest first; the first
    /// is the base (index = log start). Invariant: non-empty; indexes increasing;
    /// `configuration == history.last()`. Truncation pops entries past the cut.
    configuration_history: Vec<(u64, Configuration)>,
    role: Role,
    /// Invariant: never decreases. Durable copy in `durable_hard_state`.
    term: u64,
    /// Invariant: at most one vote per term (set only when `None` or the same node).
    voted_for: Option<NodeId>,
    leader_id: Option<NodeId>,
    log: RaftLog,
    rng: ChaCha8Rng,

    /// Ticks since construction (the node's local clock).
    now_tick: u64,
    election_elapsed_ticks: u64,
    randomized_election_timeout_ticks: u64,
    /// Ticks of the current election timer spent waiting for this node's own term and
    /// vote to become durable: they do not count towards the timeout (nothing that
    /// depends on them has left yet), and they are added to it afterwards, since a
    /// voter's disk is likely as slow as ours. Reset with the election timer.
    hard_state_wait_ticks: u64,
    /// Ticks since a leader last contacted us (or since start). While below the election
    /// timeout, vote requests are ignored: this is what makes leader leases safe.
    ticks_since_leader_contact: u64,
    heartbeat_elapsed_ticks: u64,
    check_quorum_elapsed_ticks: u64,

    /// Votes received in the current (pre-)election.
    votes: BTreeMap<NodeId, bool>,
    /// Set when the current candidacy came from TimeoutNow.
    campaign_is_transfer: bool,

    progress: BTreeMap<NodeId, Progress>,
    /// Index of the no-op this leader appended on election.
    term_start_index: u64,
    heartbeat_id: u64,
    pending_reads: VecDeque<PendingRead>,
    reads_awaiting_term_commit: Vec<u64>,
    transfer: Option<Transfer>,
    /// Set once this leader sent TimeoutNow in its term: the target's election ignores
    /// follower leases, so this leader's lease is no proof of leadership any more.
    lease_revoked: bool,

    next_persist_seq: u64,
    /// Highest sequence number reported durable. Invariant: < next_persist_seq.
    durable_seq: u64,
    hard_state_dirty: bool,
    last_hard_state_seq: u64,
    durable_hard_state: HardState,
    /// Entries from this index on were not yet handed out in a persist action.
    /// Invariant: `persisted < unissued_from <= last_index + 1`.
    unissued_from: u64,
    pending_truncate: Option<u64>,
    inflight_persists: VecDeque<InflightPersist>,
    /// Messages waiting for a persist sequence number to become durable.
    held_messages: VecDeque<(u64, Message)>,

    out_messages: Vec<Message>,
    out_reads: Vec<ReadyRead>,
    out_failed_reads: Vec<(u64, ReadError)>,
    last_reported_role: Option<RoleState>,
    /// Highest index the runtime reported applied.
    applied_by_runtime: u64,

    /// The newest durable local snapshot (what a leader sends).
    /// Invariant: `meta.index <= applied` when reported.
    snapshot: Option<LocalSnapshot>,
    /// A snapshot being received from the leader (follower side).
    receive: Option<transfer::SnapshotReceive>,
    /// A received chunk for the next persist action (at most one per action).
    pending_chunk: Option<SnapshotChunk>,
    /// The next persist action resets the durable log to this point.
    pending_reset: Option<LogStart>,
    /// Persist actions already numbered but not yet taken by `take_ready`, in order.
    sealed_persists: VecDeque<PersistAction>,
    /// The latest snapshot installed in memory, by the seq of the persist action that
    /// installs it durably. Invariant: `Some` implies `log.restore_pending()` or the
    /// restore is in `restore_ready`.
    pending_install: Option<(u64, SnapshotMeta)>,
    /// Durably installed: hand out in the next `Ready::restore_snapshot`.
    restore_ready: Option<SnapshotMeta>,
    stats: CoreStats,
    /// Set once: the node stopped. `fatal_reported` once it went out in a `Ready`.
    fatal: Option<CoreError>,
    fatal_reported: bool,
}

impl RaftNode {
    /// A node of a brand-new cluster: empty log, term 0.
    pub fn new(cfg: RaftConfig, configuration: Configuration) -> RaftNode {
        let mut node = RaftNode::build(cfg, configuration, HardState::default(), RaftLog::empty());
        node.finish_construction();
        node
    }

    /// A node rebuilt from durable state: hard state, the newest durable snapshot (if
    /// any) and the log entries the WAL holds. The commit and applied indexes restart
    /// at the snapshot point (the runtime restored the state machine from it; report
    /// the snapshot with [`RaftNode::snapshot_ready`] so the node can send it). The
    /// configuration is that of the latest configuration entry in the log, else the
    /// snapshot's, else `configuration`.
    ///
    /// `entries` may begin at or below the snapshot point (the WAL keeps a retained
    /// window): those are dropped. When they do not continue the snapshot (the WAL ends
    /// before it, or holds a different entry at its index: a crash between installing
    /// a received snapshot and resetting the WAL), they are all discarded and the first
    /// persist action carries `reset_log`. Refuses entries with a gap after the
    /// snapshot, non-contiguous indexes, decreasing terms or an undecodable
    /// configuration entry.
    pub fn restart(
        cfg: RaftConfig,
        configuration: Configuration,
        hard_state: HardState,
        snapshot: Option<SnapshotMeta>,
        entries: Vec<Entry>,
    ) -> Result<RaftNode, CoreError> {
        let start = snapshot
            .as_ref()
            .map_or(LogStart::default(), SnapshotMeta::log_start);
        let (entries, needs_reset) = align_to_snapshot(start, entries)?;
        let base = snapshot.map_or(configuration, |meta| meta.configuration);
        let history = configuration_history(start.last_index, base, &entries)?;
        let log = RaftLog::restore(start, entries)?;
        let mut node = RaftNode::build(cfg, Configuration::default(), hard_state, log);
        node.configuration = history.last().map(|(_, c)| c.clone()).unwrap_or_default();
        node.configuration_history = history;
        if needs_reset {
            node.pending_reset = Some(start);
        }
        node.finish_construction();
        Ok(node)
    }

    fn build(
        cfg: RaftConfig,
        configuration: Configuration,
        hard_state: HardState,
        log: RaftLog,
    ) -> RaftNode {
        assert!(
            cfg.election_timeout_ticks > cfg.heartbeat_interval_ticks,
            "election timeout must exceed heartbeat"
        );
        assert!(cfg.max_inflight_messages > 0);
        let unissued_from = log.last_index() + 1;
        let rng = ChaCha8Rng::seed_from_u64(cfg.rng_seed);
        let fresh = hard_state == HardState::default() && log.last_index() == 0;
        // A restarted node may have acknowledged a leader's heartbeat just before it
        // crashed; it must not vote for an election timeout, or that leader's lease
        // would be unsafe. A brand-new node never acknowledged anything.
        let ticks_since_leader_contact = if fresh { cfg.election_timeout_ticks } else { 0 };
        RaftNode {
            role: Role::Learner,
            configuration_history: vec![(log.start().last_index, configuration.clone())],
            configuration,
            term: hard_state.term,
            voted_for: hard_state.voted_for,
            leader_id: None,
            applied_by_runtime: log.applied(),
            log,
            rng,
            now_tick: 0,
            election_elapsed_ticks: 0,
            randomized_election_timeout_ticks: 0,
            hard_state_wait_ticks: 0,
            ticks_since_leader_contact,
            heartbeat_elapsed_ticks: 0,
            check_quorum_elapsed_ticks: 0,
            votes: BTreeMap::new(),
            campaign_is_transfer: false,
            progress: BTreeMap::new(),
            term_start_index: 0,
            heartbeat_id: 0,
            pending_reads: VecDeque::new(),
            reads_awaiting_term_commit: Vec::new(),
            transfer: None,
            lease_revoked: false,
            next_persist_seq: 1,
            durable_seq: 0,
            hard_state_dirty: false,
            last_hard_state_seq: 0,
            durable_hard_state: hard_state,
            unissued_from,
            pending_truncate: None,
            inflight_persists: VecDeque::new(),
            held_messages: VecDeque::new(),
            out_messages: Vec::new(),
            out_reads: Vec::new(),
            out_failed_reads: Vec::new(),
            last_reported_role: None,
            snapshot: None,
            receive: None,
            pending_chunk: None,
            pending_reset: None,
            sealed_persists: VecDeque::new(),
            pending_install: None,
            restore_ready: None,
            stats: CoreStats::default(),
            fatal: None,
            fatal_reported: false,
            cfg,
        }
    }

    fn finish_construction(&mut self) {
        self.reset_election_timer();
        self.role = Role::Learner;
        self.refresh_passive_role();
        self.check_invariants();
    }

    // ----- accessors -------------------------------------------------------------

    /// This node's id ([`RaftConfig::id`]).
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }
    /// The current term (durable once the Ready that changed it was persisted).
    pub fn term(&self) -> u64 {
        self.term
    }
    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The candidate this node voted for in the current term, if any.
    pub fn voted_for(&self) -> Option<NodeId> {
        self.voted_for
    }
    /// The leader this node knows of in the current term, if any.
    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader_id
    }
    /// The in-memory log and its watermarks.
    pub fn log(&self) -> &RaftLog {
        &self.log
    }
    /// Highest index known committed.
    pub fn commit_index(&self) -> u64 {
        self.log.committed()
    }
    /// The membership configuration in effect (the latest configuration entry in the log,
    /// committed or not, as Raft §6 prescribes).
    pub fn configuration(&self) -> &Configuration {
        &self.configuration
    }
    /// The static parameters this node was built with.
    pub fn config(&self) -> &RaftConfig {
        &self.cfg
    }
    /// Ticks since the node was created (advanced by [`RaftNode::tick`]).
    pub fn now_tick(&self) -> u64 {
        self.now_tick
    }
    /// Whether this node is the leader of the current term.
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
    /// Progress of a follower, when leader.
    pub fn progress(&self, peer: NodeId) -> Option<&Progress> {
        self.progress.get(&peer)
    }
    /// Counters since construction.
    pub fn stats(&self) -> CoreStats {
        self.stats
    }
    /// The fatal error that stopped this node, if any.
    pub fn fatal_error(&self) -> Option<&CoreError> {
        self.fatal.as_ref()
    }
    /// The newest local snapshot reported with `snapshot_ready`.
    pub fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref().map(|snapshot| &snapshot.meta)
    }
    /// The configuration in effect at log index `index` (what a snapshot taken there
    /// must carry); `None` below the oldest configuration still known.
    pub fn configuration_at(&self, index: u64) -> Option<&Configuration> {
        self.configuration_history
            .iter()
            .rev()
            .find(|(introduced, _)| *introduced <= index)
            .map(|(_, configuration)| configuration)
    }
    /// Whether a lease read would be served right now without a message round.
    pub fn lease_valid(&self) -> bool {
        self.role == Role::Leader
            && self.cfg.lease_reads
            && self.cfg.check_quorum
            && !self.lease_revoked
            && self.committed_in_term()
            && {
                let lease_ticks = self.cfg.lease_ticks();
                let now = self.now_tick;
                self.configuration.is_quorum(|id| {
                    id == self.cfg.id
                        || self
                            .progress
                            .get(&id)
                            .and_then(|progress| progress.acked_sent_tick)
                            .is_some_and(|sent| now < sent + lease_ticks)
                })
            }
    }

    // ----- inputs ----------------------------------------------------------------

    /// Advances the node's clock by one tick.
    pub fn tick(&mut self) {
        if self.fatal.is_some() {
            return;
        }
        self.now_tick += 1;
        self.ticks_since_leader_contact = self.ticks_since_leader_contact.saturating_add(1);
        match self.role {
            Role::Leader => self.tick_leader(),
            Role::Learner => {}
            Role::Follower | Role::PreCandidate | Role::Candidate => {
                // A vote granted or a campaign started is not out while its hard state
                // is not durable: a slow disk must not make us campaign before the
                // message that the election timer waits on has even left.
                if self.hard_state_is_durable() {
                    self.election_elapsed_ticks += 1;
                } else {
                    self.hard_state_wait_ticks += 1;
                }
                if self.election_elapsed_ticks
                    >= self.randomized_election_timeout_ticks + self.hard_state_wait_ticks
                {
                    self.start_election(false);
                }
            }
        }
        self.check_invariants();
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed_ticks += 1;
        self.check_quorum_elapsed_ticks += 1;
        if let Some(transfer) = self.transfer.as_mut() {
            transfer.elapsed_ticks += 1;
            if transfer.elapsed_ticks >= self.cfg.election_timeout_ticks {
                self.transfer = None;
            }
        }
        if self.cfg.check_quorum
            && self.check_quorum_elapsed_ticks >= self.cfg.election_timeout_ticks
        {
            self.check_quorum_elapsed_ticks = 0;
            let self_id = self.cfg.id;
            let active = self.configuration.is_quorum(|id| {
                id == self_id || self.progress.get(&id).is_some_and(|p| p.recent_active)
            });
            for progress in self.progress.values_mut() {
                progress.recent_active = false;
            }
            if !active {
                let term = self.term;
                self.become_follower(term, None);
                return;
            }
        }
        if self.heartbeat_elapsed_ticks >= self.cfg.heartbeat_interval_ticks {
            self.heartbeat_elapsed_ticks = 0;
            self.probe_stalled_followers();
            self.broadcast_heartbeat();
        }
    }

    /// Drops to probe every follower whose pipeline made no progress for
    /// [`RaftConfig::replication_stall_ticks`]: a message lost at the tail of a stream
    /// (nothing after it to be rejected) is resent from the match point.
    fn probe_stalled_followers(&mut self) {
        let stall_ticks = self.cfg.replication_stall_ticks();
        let now_tick = self.now_tick;
        for progress in self.progress.values_mut() {
            if progress.is_stalled(now_tick, stall_ticks) {
                let next_index = progress.match_index + 1;
                progress.become_probe(next_index);
                self.stats.probe_transitions += 1;
            }
        }
    }

    /// Appends client commands to the log (leader only). Returns the assigned indexes.
    pub fn propose(&mut self, commands: Vec<Bytes>) -> Result<Range<u64>, ProposeError> {
        if self.role != Role::Leader || self.fatal.is_some() {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader_id,
            });
        }
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if commands.is_empty() {
            return Err(ProposeError::Empty);
        }
        let first = self.log.last_index() + 1;
        let entries: Vec<Entry> = commands
            .into_iter()
            .enumerate()
            .map(|(k, data)| Entry {
                index: first + k as u64,
                term: self.term,
                kind: EntryKind::Normal,
                data,
            })
            .collect();
        self.log.append(&entries);
        let end = self.log.last_index() + 1;
        self.broadcast_append();
        self.maybe_commit();
        self.check_invariants();
        Ok(first..end)
    }

    /// Starts a membership change to `voters` and `learners` through joint consensus:
    /// the leader appends C_old,new (decisions need both majorities), and once that is
    /// committed, appends C_new on its own. One change at a time. Returns the index of
    /// the joint entry. Member information of the current configuration is kept.
    pub fn propose_configuration_change(
        &mut self,
        voters: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
    ) -> Result<u64, ConfigChangeError> {
        let mut target = Configuration::new(voters);
        target.learners = learners.into_iter().collect();
        target.info = self.configuration.info.clone();
        self.propose_configuration(target)
    }

    /// Starts a change to `target` (its voters, learners and member information; its
    /// `outgoing_voters` are ignored). When the voters change this goes through joint
    /// consensus as [`RaftNode::propose_configuration_change`]; when they stay the same
    /// (a learner added or removed, member information recorded) no quorum changes, so
    /// `target` is appended directly as a simple configuration. Returns the index of
    /// the first entry of the change.
    pub fn propose_configuration(
        &mut self,
        mut target: Configuration,
    ) -> Result<u64, ConfigChangeError> {
        if self.role != Role::Leader || self.fatal.is_some() {
            return Err(ConfigChangeError::NotLeader {
                leader_hint: self.leader_id,
            });
        }
        if self.transfer.is_some() {
            return Err(ConfigChangeError::TransferInProgress);
        }
        if self.membership_change_in_progress() {
            return Err(ConfigChangeError::ChangeInProgress);
        }
        if target.voters.is_empty() {
            return Err(ConfigChangeError::NoVoters);
        }
        let voters = target.voters.clone();
        target.learners.retain(|id| !voters.contains(id));
        target.outgoing_voters.clear();
        if target.voters != self.configuration.voters {
            target.outgoing_voters = self.configuration.voters.clone();
        }
        target.prune_info();
        let index = self.append_configuration(target);
        self.check_invariants();
        Ok(index)
    }

    /// Whether a configuration change is under way: joint, or the latest configuration
    /// entry not committed yet.
    pub fn membership_change_in_progress(&self) -> bool {
        self.configuration.is_joint() || self.latest_configuration_index() > self.log.committed()
    }

    /// Ticks the leader lease has left (`None` when no lease holds: not leader, lease
    /// reads off, revoked, or no entry of this term committed yet).
    pub fn lease_remaining_ticks(&self) -> Option<u64> {
        if !self.lease_valid() {
            return None;
        }
        let lease_ticks = self.cfg.lease_ticks();
        let now = self.now_tick;
        let expires_at = self.configuration.quorum_index(|id| {
            if id == self.cfg.id {
                return now + lease_ticks;
            }
            self.progress
                .get(&id)
                .and_then(|progress| progress.acked_sent_tick)
                .map_or(0, |sent| sent + lease_ticks)
        });
        Some(expires_at.saturating_sub(now))
    }

    /// Index of the entry that introduced the configuration in effect (the log start
    /// for the base configuration).
    pub fn latest_configuration_index(&self) -> u64 {
        self.configuration_history
            .last()
            .map_or(0, |(index, _)| *index)
    }

    /// Leader: appends a configuration entry; it takes effect at once.
    fn append_configuration(&mut self, configuration: Configuration) -> u64 {
        let index = self.log.last_index() + 1;
        let entry = Entry {
            index,
            term: self.term,
            kind: EntryKind::Config,
            data: configuration.encode(),
        };
        self.log.append(&[entry]);
        self.adopt_configuration(index, configuration);
        self.broadcast_append();
        self.maybe_commit();
        index
    }

    /// Makes `configuration` (from the entry at `index`) the one in effect.
    fn adopt_configuration(&mut self, index: u64, configuration: Configuration) {
        invariant!(index > self.latest_configuration_index());
        self.configuration_history
            .push((index, configuration.clone()));
        self.set_configuration(configuration);
    }

    /// Whether this node may start elections. A voter of the latest configuration may;
    /// so may a voter of the previous one while the latest is not committed: it may be
    /// needed to commit it (thesis §4.2.2) — e.g. a leader that appended a C_new without
    /// itself and lost leadership before anyone else stored that entry. Its own vote
    /// still counts only where the configuration says so.
    fn can_campaign(&self) -> bool {
        if self.configuration.is_voter(self.cfg.id) {
            return true;
        }
        let n = self.configuration_history.len();
        n >= 2
            && self.configuration_history[n - 1].0 > self.log.committed()
            && self.configuration_history[n - 2].1.is_voter(self.cfg.id)
    }

    /// Follower or Learner, by `can_campaign`, for a node that is neither leader nor
    /// candidate.
    fn refresh_passive_role(&mut self) {
        let can_campaign = self.can_campaign();
        match self.role {
            Role::Learner if can_campaign => {
                self.role = Role::Follower;
                self.reset_election_timer();
            }
            Role::Follower if !can_campaign => self.role = Role::Learner,
            _ => {}
        }
    }

    fn set_configuration(&mut self, configuration: Configuration) {
        self.configuration = configuration;
        self.refresh_passive_role();
        if self.role == Role::Leader {
            let members = self.configuration.members();
            self.progress.retain(|id, _| members.contains(id));
            let next_index = self.log.last_index() + 1;
            let election_timeout_ticks = self.cfg.election_timeout_ticks;
            for id in members {
                if id != self.cfg.id {
                    self.progress
                        .entry(id)
                        .or_insert_with(|| Progress::new(next_index, election_timeout_ticks));
                }
            }
        }
    }

    /// Leader: after the joint configuration commits, move to C_new; after a
    /// configuration that excludes this leader commits, step down (thesis §4.2.2).
    fn advance_configuration(&mut self) {
        if self.role != Role::Leader || self.latest_configuration_index() > self.log.committed() {
            return;
        }
        if self.configuration.is_joint() {
            let mut new = self.configuration.clone();
            new.outgoing_voters.clear();
            self.append_configuration(new);
        } else if !self.configuration.is_voter(self.cfg.id) {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    /// Asks for a linearizable read, identified by `request_id`. The answer comes in a
    /// later `Ready::reads` (or `failed_reads`).
    pub fn read_index(&mut self, request_id: u64) -> Result<(), ReadError> {
        if self.role != Role::Leader || self.fatal.is_some() {
            return Err(ReadError::NotLeader {
                leader_hint: self.leader_id,
            });
        }
        if !self.committed_in_term() {
            self.reads_awaiting_term_commit.push(request_id);
            return Ok(());
        }
        self.start_read(request_id);
        self.check_invariants();
        Ok(())
    }

    /// Hands leadership to `target`: it is brought up to date, then told to time out.
    /// Proposals are refused until the transfer completes or an election timeout passes.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader || self.fatal.is_some() {
            return Err(TransferError::NotLeader {
                leader_hint: self.leader_id,
            });
        }
        if target == self.cfg.id {
            return Err(TransferError::AlreadyLeader);
        }
        if !self.configuration.is_voter(target) {
            return Err(TransferError::NotAVoter(target));
        }
        self.transfer = Some(Transfer {
            target,
            elapsed_ticks: 0,
            timeout_now_sent: false,
        });
        self.maybe_send_timeout_now();
        if self
            .transfer
            .is_some_and(|transfer| !transfer.timeout_now_sent)
        {
            self.send_append(target, true);
        }
        self.check_invariants();
        Ok(())
    }

    /// The runtime made every persist action with sequence number <= `seq` durable.
    pub fn on_persisted(&mut self, seq: u64) {
        if self.fatal.is_some() {
            return;
        }
        let issued = self.next_persist_seq - 1 - self.sealed_persists.len() as u64;
        invariant!(
            seq <= issued,
            "on_persisted({seq}) for an action never handed out (last {issued})"
        );
        if seq <= self.durable_seq {
            return;
        }
        self.durable_seq = seq;
        while let Some(done) = self.inflight_persists.front().copied() {
            if done.seq > seq {
                break;
            }
            self.inflight_persists.pop_front();
            self.log.persist_to(done.last_index);
            if let Some(hard_state) = done.hard_state {
                self.durable_hard_state = hard_state;
            }
        }
        if self
            .pending_install
            .as_ref()
            .is_some_and(|(install_seq, _)| *install_seq <= seq)
        {
            self.restore_ready = self.pending_install.take().map(|(_, meta)| meta);
        }
        // Tags are not monotonic in creation order (a vote reply needs only the hard
        // state, an earlier ack needed the log), so scan them all, keeping order.
        let held = std::mem::take(&mut self.held_messages);
        for (needed, message) in held {
            if needed <= seq {
                self.out_messages.push(message);
            } else {
                self.held_messages.push_back((needed, message));
            }
        }
        let own_vote = HardState {
            term: self.term,
            voted_for: Some(self.cfg.id),
        };
        match self.role {
            // Our own vote counts only once it is durable.
            Role::Candidate if self.durable_hard_state == own_vote => {
                self.votes.insert(self.cfg.id, true);
                self.check_vote_result();
            }
            Role::Leader => self.maybe_commit(),
            _ => {}
        }
        self.check_invariants();
    }

    /// The state machine applied every entry through `index`.
    pub fn on_applied(&mut self, index: u64) {
        invariant!(
            index <= self.log.applied(),
            "applied {index} beyond what was handed out"
        );
        self.applied_by_runtime = self.applied_by_runtime.max(index);
        self.check_invariants();
    }

    /// Handles a message from another node.
    ///
    /// Messages that are malformed or impossible from a correct peer (wrong
    /// addressee, absurd terms, non-contiguous entries, indexes beyond anything this
    /// node sent...) are dropped and counted in `stats().invalid_messages`.
    pub fn step(&mut self, message: Message) {
        if self.fatal.is_some() {
            return;
        }
        if !self.is_valid_inbound(&message) {
            self.stats.invalid_messages += 1;
            return;
        }
        if message.term > self.term {
            match &message.body {
                MessageBody::RequestVote(request) | MessageBody::PreVote(request) => {
                    if self.in_lease() && !request.leadership_transfer {
                        // We heard from a live leader recently: a vote now could end
                        // its lease early. Ignore (thesis §4.2.3).
                        return;
                    }
                    if matches!(message.body, MessageBody::RequestVote(_)) {
                        self.become_follower(message.term, None);
                    }
                }
                MessageBody::PreVoteResponse(response) if response.granted => {}
                MessageBody::AppendEntries(_)
                | MessageBody::TimeoutNow
                | MessageBody::InstallSnapshot(_) => {
                    self.become_follower(message.term, Some(message.from));
                }
                _ => self.become_follower(message.term, None),
            }
        } else if message.term < self.term {
            match &message.body {
                MessageBody::AppendEntries(_) => {
                    // Tell a stale leader about the newer term so it steps down.
                    self.send_append_response(message.from, false, 0, 0, None, 0, 0);
                }
                MessageBody::InstallSnapshot(request) => {
                    let snapshot_index = request.meta.index;
                    self.send_snapshot_response(message.from, snapshot_index, 0, false, true, 0);
                }
                MessageBody::PreVote(_) => self.send(
                    message.from,
                    MessageBody::PreVoteResponse(VoteResponse { granted: false }),
                ),
                MessageBody::RequestVote(_) => self.send(
                    message.from,
                    MessageBody::RequestVoteResponse(VoteResponse { granted: false }),
                ),
                _ => {}
            }
            return;
        }
        let from = message.from;
        let term = message.term;
        match message.body {
            MessageBody::AppendEntries(append) => self.handle_append_entries(from, append),
            MessageBody::AppendEntriesResponse(response) => {
                self.handle_append_response(from, response)
            }
            MessageBody::RequestVote(request) => self.handle_request_vote(from, request),
            MessageBody::RequestVoteResponse(response) => {
                if self.role == Role::Candidate && term == self.term {
                    self.votes.insert(from, response.granted);
                    self.check_vote_result();
                }
            }
            MessageBody::PreVote(request) => self.handle_pre_vote(from, term, request),
            MessageBody::PreVoteResponse(response) => {
                if self.role == Role::PreCandidate && term == self.term + 1 {
                    self.votes.insert(from, response.granted);
                    self.check_vote_result();
                }
            }
            MessageBody::TimeoutNow => {
                if self.role == Role::Follower && self.can_campaign() {
                    self.start_election(true);
                }
            }
            MessageBody::InstallSnapshot(request) => self.handle_install_snapshot(from, request),
            MessageBody::InstallSnapshotResponse(response) => {
                self.handle_snapshot_response(from, response)
            }
        }
        self.check_invariants();
    }

    /// Whether anything is waiting in the next `take_ready`.
    pub fn has_ready(&self) -> bool {
        if self.fatal.is_some() {
            return !self.fatal_reported;
        }
        !self.sealed_persists.is_empty()
            || self.has_unsealed_persist()
            || self.restore_ready.is_some()
            || !self.out_messages.is_empty()
            || !self.out_reads.is_empty()
            || !self.out_failed_reads.is_empty()
            || (!self.log.restore_pending()
                && self.log.applied() < self.log.committed().min(self.log.persisted()))
            || self.last_reported_role != Some(self.role_state())
    }

    /// Collects everything the runtime must do now.
    pub fn take_ready(&mut self) -> Ready {
        if self.fatal.is_some() {
            let fatal = (!self.fatal_reported).then(|| self.fatal.clone()).flatten();
            self.fatal_reported = true;
            return Ready {
                fatal,
                ..Ready::default()
            };
        }
        let mut ready = Ready::default();
        if self.sealed_persists.is_empty() {
            self.seal_persist();
        }
        ready.persist = self.sealed_persists.pop_front();
        if let Some(meta) = self.restore_ready.take() {
            self.log.snapshot_restored();
            self.applied_by_runtime = self.applied_by_runtime.max(meta.index);
            self.stats.snapshots_installed += 1;
            ready.restore_snapshot = Some(meta);
        }
        ready.committed_entries = self.log.take_committed();
        ready.messages = std::mem::take(&mut self.out_messages);
        ready.reads = std::mem::take(&mut self.out_reads);
        ready.failed_reads = std::mem::take(&mut self.out_failed_reads);
        let role_state = self.role_state();
        if self.last_reported_role != Some(role_state) {
            ready.role_change = Some(role_state);
            self.last_reported_role = Some(role_state);
        }
        self.check_invariants();
        ready
    }

    /// Whether log changes, a hard state or a chunk wait for a persist action.
    fn has_unsealed_persist(&self) -> bool {
        self.hard_state_dirty
            || self.pending_truncate.is_some()
            || self.pending_reset.is_some()
            || self.pending_chunk.is_some()
            || self.unissued_from <= self.log.last_index()
    }

    /// Numbers everything not yet in a persist action as the next action (sequence
    /// `next_persist_seq`, which every durability tag taken so far refers to).
    fn seal_persist(&mut self) {
        if !self.has_unsealed_persist() {
            return;
        }
        let seq = self.next_persist_seq;
        self.next_persist_seq += 1;
        let hard_state = self.hard_state_dirty.then_some(HardState {
            term: self.term,
            voted_for: self.voted_for,
        });
        if hard_state.is_some() {
            self.last_hard_state_seq = seq;
        }
        invariant!(self
            .pending_truncate
            .iter()
            .all(|from| *from == self.unissued_from));
        let entries: Vec<Entry> = self.log.entries_from(self.unissued_from).cloned().collect();
        self.sealed_persists.push_back(PersistAction {
            seq,
            snapshot: self.pending_chunk.take(),
            hard_state,
            reset_log: self.pending_reset.take(),
            truncate_from: self.pending_truncate.take(),
            entries,
        });
        self.inflight_persists.push_back(InflightPersist {
            seq,
            last_index: self.log.last_index(),
            hard_state,
        });
        self.hard_state_dirty = false;
        self.unissued_from = self.log.last_index() + 1;
    }

    // ----- elections -------------------------------------------------------------

    fn role_state(&self) -> RoleState {
        RoleState {
            role: self.role,
            term: self.term,
            leader: self.leader_id,
        }
    }

    fn in_lease(&self) -> bool {
        self.cfg.check_quorum
            && (self.role == Role::Leader
                || self.ticks_since_leader_contact < self.cfg.election_timeout_ticks)
    }

    fn hard_state_is_durable(&self) -> bool {
        self.durable_hard_state.term == self.term
            && self.durable_hard_state.voted_for == self.voted_for
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed_ticks = 0;
        self.hard_state_wait_ticks = 0;
        let min = self.cfg.election_timeout_ticks;
        self.randomized_election_timeout_ticks = self.rng.gen_range(min..2 * min);
    }

    fn set_term(&mut self, term: u64) {
        invariant!(term >= self.term, "term must never decrease");
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            self.hard_state_dirty = true;
        }
    }

    fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        let was_leader = self.role == Role::Leader;
        self.set_term(term);
        self.role = if self.can_campaign() {
            Role::Follower
        } else {
            Role::Learner
        };
        self.leader_id = leader;
        self.votes.clear();
        self.campaign_is_transfer = false;
        self.reset_election_timer();
        if was_leader {
            self.progress.clear();
            self.transfer = None;
            let leader_hint = self.leader_id;
            for read in self.pending_reads.drain(..) {
                self.out_failed_reads
                    .push((read.request_id, ReadError::NotLeader { leader_hint }));
            }
            for request_id in self.reads_awaiting_term_commit.drain(..) {
                self.out_failed_reads
                    .push((request_id, ReadError::NotLeader { leader_hint }));
            }
        }
    }

    fn start_election(&mut self, leadership_transfer: bool) {
        if !self.can_campaign() {
            return;
        }
        if self.cfg.pre_vote && !leadership_transfer {
            self.role = Role::PreCandidate;
            self.leader_id = None;
            self.votes.clear();
            self.votes.insert(self.cfg.id, true);
            self.reset_election_timer();
            let request = self.vote_request(false);
            for peer in self.voter_peers() {
                self.send_with_term(peer, self.term + 1, MessageBody::PreVote(request.clone()));
            }
            self.check_vote_result();
        } else {
            self.become_candidate(leadership_transfer);
        }
    }

    fn become_candidate(&mut self, leadership_transfer: bool) {
        let term = self.term + 1;
        self.set_term(term);
        self.voted_for = Some(self.cfg.id);
        self.hard_state_dirty = true;
        self.role = Role::Candidate;
        self.leader_id = None;
        self.votes.clear();
        self.campaign_is_transfer = leadership_transfer;
        self.reset_election_timer();
        // Our own vote counts once it is durable (see on_persisted); RequestVote messages
        // are held by `send` until then too.
        let request = self.vote_request(leadership_transfer);
        for peer in self.voter_peers() {
            self.send(peer, MessageBody::RequestVote(request.clone()));
        }
    }

    fn vote_request(&self, leadership_transfer: bool) -> RequestVote {
        RequestVote {
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            leadership_transfer,
        }
    }

    fn voter_peers(&self) -> Vec<NodeId> {
        let self_id = self.cfg.id;
        self.configuration
            .members()
            .into_iter()
            .filter(|id| *id != self_id && self.configuration.is_voter(*id))
            .collect()
    }

    fn check_vote_result(&mut self) {
        let result = self
            .configuration
            .vote_result(|id| self.votes.get(&id).copied());
        match (result, self.role) {
            (VoteResult::Won, Role::PreCandidate) => self.become_candidate(false),
            // Grants can only answer our RequestVote, which left after our vote was
            // durable; a grant before that is bogus input: wait for durability.
            (VoteResult::Won, Role::Candidate) if self.durable_hard_state.term == self.term => {
                self.become_leader()
            }
            (VoteResult::Lost, Role::PreCandidate | Role::Candidate) => {
                let term = self.term;
                self.become_follower(term, None);
            }
            _ => {}
        }
    }

    fn handle_request_vote(&mut self, from: NodeId, request: RequestVote) {
        // Same term here (higher terms were adopted in `step`).
        let can_vote =
            self.voted_for == Some(from) || (self.voted_for.is_none() && self.leader_id.is_none());
        let granted = can_vote
            && self.role != Role::Leader
            && self
                .log
                .is_up_to_date(request.last_log_index, request.last_log_term);
        if granted {
            self.voted_for = Some(from);
            self.hard_state_dirty = true;
            self.reset_election_timer();
        }
        self.send(
            from,
            MessageBody::RequestVoteResponse(VoteResponse { granted }),
        );
    }

    fn handle_pre_vote(&mut self, from: NodeId, term: u64, request: RequestVote) {
        // `step` already dropped pre-votes while we hear from a live leader.
        let granted = term > self.term
            && self
                .log
                .is_up_to_date(request.last_log_index, request.last_log_term);
        let reply_term = if granted { term } else { self.term };
        self.send_with_term(
            from,
            reply_term,
            MessageBody::PreVoteResponse(VoteResponse { granted }),
        );
    }

    fn become_leader(&mut self) {
        invariant!(
            self.durable_hard_state.term == self.term,
            "leader's term must be durable"
        );
        self.role = Role::Leader;
        self.leader_id = Some(self.cfg.id);
        self.votes.clear();
        self.transfer = None;
        self.lease_revoked = false;
        self.heartbeat_elapsed_ticks = 0;
        self.check_quorum_elapsed_ticks = 0;
        let next_index = self.log.last_index() + 1;
        self.progress = self
            .configuration
            .members()
            .into_iter()
            .filter(|id| *id != self.cfg.id)
            .map(|id| {
                (
                    id,
                    Progress::new(next_index, self.cfg.election_timeout_ticks),
                )
            })
            .collect();
        let noop = Entry {
            index: next_index,
            term: self.term,
            kind: EntryKind::Noop,
            data: Bytes::new(),
        };
        self.term_start_index = next_index;
        self.log.append(&[noop]);
        self.broadcast_append();
        self.maybe_commit();
    }

    // ----- replication (leader) --------------------------------------------------

    fn committed_in_term(&self) -> bool {
        self.role == Role::Leader && self.log.committed() >= self.term_start_index
    }

    fn broadcast_append(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_append(peer, false);
        }
    }

    fn broadcast_heartbeat(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_heartbeat(peer);
            self.retry_snapshot_transfer(peer);
        }
    }

    /// An empty AppendEntries. In replicate state it checks the log at `match_index`
    /// (which the follower surely holds), so reordered heartbeats never cause
    /// rejections; in probe state it probes at `next_index - 1`. When that entry was
    /// compacted (and in snapshot state) it checks the log start: the follower accepts
    /// it if it holds that entry (then it needs no snapshot) and refuses it otherwise,
    /// and either way its election timer and the lease are refreshed.
    fn send_heartbeat(&mut self, peer: NodeId) {
        let Some(progress) = self.progress.get(&peer) else {
            return;
        };
        let prev_log_index = match progress.state {
            ReplicationState::Replicate => progress.match_index,
            ReplicationState::Probe => progress.next_index - 1,
            ReplicationState::Snapshot => self.log.start().last_index,
        };
        let (prev_log_index, prev_log_term) = match self.log.term(prev_log_index) {
            Some(term) => (prev_log_index, term),
            None => (self.log.start().last_index, self.log.start().last_term),
        };
        self.send_append_entries(peer, prev_log_index, prev_log_term, Vec::new());
    }

    /// Sends entries to `peer` as flow control allows (several messages in replicate
    /// state). With `allow_empty`, sends an empty AppendEntries if nothing else goes.
    fn send_append(&mut self, peer: NodeId, allow_empty: bool) {
        let mut sent_any = false;
        loop {
            let Some(progress) = self.progress.get(&peer) else {
                return;
            };
            let blocked = match progress.state {
                ReplicationState::Probe => progress.probe_outstanding,
                ReplicationState::Replicate => {
                    progress.inflight.len() >= self.cfg.max_inflight_messages
                        || progress.inflight_bytes >= self.cfg.max_inflight_bytes
                }
                ReplicationState::Snapshot => {
                    sent_any |= self.send_snapshot_chunks(peer);
                    break;
                }
            };
            let next_index = progress.next_index;
            let state = progress.state;
            if blocked || next_index > self.log.last_index() {
                break;
            }
            let prev_log_index = next_index - 1;
            let Some(prev_log_term) = self.log.term(prev_log_index) else {
                // Compacted away: the follower needs a snapshot.
                self.start_snapshot_transfer(peer);
                sent_any |= self.send_snapshot_chunks(peer);
                break;
            };
            let entries = self.log.batch_from(
                next_index,
                self.cfg.max_batch_bytes,
                self.cfg.max_batch_entries,
            );
            let last = entries.last().map_or(prev_log_index, |entry| entry.index);
            let size_bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
            self.send_append_entries(peer, prev_log_index, prev_log_term, entries);
            sent_any = true;
            let Some(progress) = self.progress.get_mut(&peer) else {
                return;
            };
            if next_index <= progress.highest_sent_index {
                self.stats.batches_resent += 1;
            }
            progress.highest_sent_index = progress.highest_sent_index.max(last);
            match state {
                ReplicationState::Replicate => {
                    progress.next_index = last + 1;
                    progress.push_inflight(last, size_bytes, self.now_tick);
                }
                _ => {
                    progress.probe_outstanding = true;
                    break;
                }
            }
        }
        if allow_empty && !sent_any {
            self.send_heartbeat(peer);
        }
    }

    fn send_append_entries(
        &mut self,
        peer: NodeId,
        prev_log_index: u64,
        prev_log_term: u64,
        entries: Vec<Entry>,
    ) {
        let append = AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.log.committed(),
            heartbeat_id: self.heartbeat_id,
            sent_at_tick: self.now_tick,
        };
        self.send(peer, MessageBody::AppendEntries(append));
    }

    fn handle_append_response(&mut self, from: NodeId, response: AppendEntriesResponse) {
        if self.role != Role::Leader {
            return;
        }
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        progress.acked_heartbeat_id = progress.acked_heartbeat_id.max(response.heartbeat_id);
        progress.acked_sent_tick = Some(
            progress
                .acked_sent_tick
                .map_or(response.sent_at_tick, |t| t.max(response.sent_at_tick)),
        );
        progress.probe_outstanding = false;
        let mut match_advanced = false;
        if response.success {
            if response.match_index > progress.match_index {
                progress.match_index = response.match_index;
                progress.last_progress_tick = self.now_tick;
                progress.note_ack_latency(self.now_tick.saturating_sub(response.sent_at_tick));
                match_advanced = true;
            }
            match progress.state {
                ReplicationState::Probe => progress.become_replicate(),
                ReplicationState::Replicate => {
                    progress.free_inflight_through(progress.match_index);
                    progress.next_index = progress.next_index.max(progress.match_index + 1);
                    // The follower answered a message sent well after the oldest one in
                    // flight without having acknowledged that one: it was lost, unless
                    // its acknowledgement is merely late. A follower acknowledges
                    // entries only once they are durable, so with a slow disk its
                    // heartbeat answers overtake them: "well after" is measured in its
                    // own recent acknowledgement latency (a late ack is no loss).
                    let patience_ticks =
                        2 * self.cfg.heartbeat_interval_ticks + 2 * progress.ack_latency_ticks;
                    let lost = progress.inflight.front().is_some_and(|&(_, _, sent_tick)| {
                        response.sent_at_tick >= sent_tick + patience_ticks
                    });
                    if lost {
                        let next_index = progress.match_index + 1;
                        progress.become_probe(next_index);
                        self.stats.probe_transitions += 1;
                    }
                }
                ReplicationState::Snapshot => {
                    // A late success can raise the match point during a transfer; keep
                    // `match_index < next_index` (nothing is sent from next_index meanwhile).
                    progress.next_index = progress.next_index.max(progress.match_index + 1);
                    // The follower holds the log start after all: no snapshot needed.
                    if progress.match_index >= self.log.start().last_index {
                        progress.become_replicate();
                    }
                }
            }
        } else {
            let stale = match progress.state {
                ReplicationState::Replicate => response.rejected_prev_index <= progress.match_index,
                ReplicationState::Probe => response.rejected_prev_index != progress.next_index - 1,
                ReplicationState::Snapshot => true,
            };
            if !stale {
                let next = match response.conflict {
                    None => response.rejected_prev_index,
                    Some(hint) => match hint.conflict_term {
                        None => hint.last_log_index.saturating_add(1),
                        Some(term) => match self.log.last_index_of_term(term) {
                            Some(index) => index + 1,
                            None => hint.first_index_of_conflict_term,
                        },
                    },
                };
                let next = next
                    .min(response.rejected_prev_index)
                    .min(last_index + 1)
                    .max(1);
                if progress.state == ReplicationState::Replicate {
                    self.stats.probe_transitions += 1;
                }
                progress.become_probe(next);
            }
        }
        progress.check_invariants();
        if match_advanced {
            self.maybe_commit();
        }
        self.resolve_pending_reads();
        self.send_append(from, false);
        self.maybe_send_timeout_now();
    }

    /// Advances the commit index to the highest index a quorum holds durably, but only
    /// through an entry of the current term (Raft Figure 8 / §5.4.2).
    fn maybe_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let self_id = self.cfg.id;
        let persisted = self.log.persisted();
        let quorum_index = self.configuration.quorum_index(|id| {
            if id == self_id {
                persisted
            } else {
                self.progress.get(&id).map_or(0, |p| p.match_index)
            }
        });
        if quorum_index <= self.log.committed() || self.log.term(quorum_index) != Some(self.term) {
            return;
        }
        let was_committed_in_term = self.committed_in_term();
        self.log.commit_to(quorum_index);
        // Tell followers promptly, so they can apply.
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_append(peer, true);
        }
        if !was_committed_in_term && self.committed_in_term() {
            for request_id in std::mem::take(&mut self.reads_awaiting_term_commit) {
                self.start_read(request_id);
            }
        }
        self.advance_configuration();
    }

    fn start_read(&mut self, request_id: u64) {
        invariant!(self.committed_in_term());
        let read_index = self.log.committed();
        if self.configuration.is_quorum(|id| id == self.cfg.id) {
            self.out_reads.push(ReadyRead {
                request_id,
                read_index,
                via: ReadPath::ReadIndex,
            });
            return;
        }
        if self.lease_valid() {
            self.out_reads.push(ReadyRead {
                request_id,
                read_index,
                via: ReadPath::Lease,
            });
            return;
        }
        self.heartbeat_id += 1;
        self.pending_reads.push_back(PendingRead {
            request_id,
            read_index,
            heartbeat_id: self.heartbeat_id,
        });
        self.broadcast_heartbeat();
    }

    fn resolve_pending_reads(&mut self) {
        while let Some(read) = self.pending_reads.front().copied() {
            let self_id = self.cfg.id;
            let confirmed = self.configuration.is_quorum(|id| {
                id == self_id
                    || self
                        .progress
                        .get(&id)
                        .is_some_and(|p| p.acked_heartbeat_id >= read.heartbeat_id)
            });
            if !confirmed {
                break;
            }
            self.pending_reads.pop_front();
            self.out_reads.push(ReadyRead {
                request_id: read.request_id,
                read_index: read.read_index,
                via: ReadPath::ReadIndex,
            });
        }
    }

    fn maybe_send_timeout_now(&mut self) {
        let Some(transfer) = self.transfer else {
            return;
        };
        if transfer.timeout_now_sent {
            return;
        }
        let caught_up = self
            .progress
            .get(&transfer.target)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.lease_revoked = true;
            self.send(transfer.target, MessageBody::TimeoutNow);
            if let Some(transfer) = self.transfer.as_mut() {
                transfer.timeout_now_sent = true;
            }
        }
    }

    // ----- replication (follower) ------------------------------------------------

    /// A message of the current term from its leader (AppendEntries, InstallSnapshot):
    /// candidates step down, the election timer restarts.
    fn note_leader_contact(&mut self, from: NodeId) {
        // Same term as ours (adopted in `step`): `from` is this term's leader.
        if self.role != Role::Follower && self.role != Role::Learner {
            let term = self.term;
            self.become_follower(term, Some(from));
        }
        self.leader_id = Some(from);
        self.election_elapsed_ticks = 0;
        self.ticks_since_leader_contact = 0;
    }

    fn handle_append_entries(&mut self, from: NodeId, append: AppendEntries) {
        self.note_leader_contact(from);
        let AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
            heartbeat_id,
            sent_at_tick,
        } = append;
        let Some((prev_log_index, prev_log_term, entries)) =
            self.clip_to_log_start(prev_log_index, prev_log_term, entries)
        else {
            self.stats.invalid_messages += 1;
            return;
        };
        if let Some(hint) = self.append_conflict(prev_log_index, prev_log_term) {
            self.send_append_response(
                from,
                false,
                0,
                prev_log_index,
                Some(hint),
                heartbeat_id,
                sent_at_tick,
            );
            return;
        }
        let last_new_index = prev_log_index + entries.len() as u64;
        let Some(first_new) = self.first_new_entry(&entries) else {
            // A leader never contradicts a committed entry: this message is bogus.
            self.stats.invalid_messages += 1;
            return;
        };
        if first_new < entries.len() {
            if entries[first_new].index <= self.log.last_index() {
                self.truncate_log_from(entries[first_new].index);
            }
            self.log.append(&entries[first_new..]);
            self.adopt_configuration_entries(&entries[first_new..]);
            if self.fatal.is_some() {
                return;
            }
        }
        let new_commit = leader_commit.min(last_new_index);
        if new_commit > self.log.committed() {
            self.log.commit_to(new_commit);
            // Committing a configuration that excludes us ends our candidacy rights.
            self.refresh_passive_role();
        }
        self.send_append_response(
            from,
            true,
            last_new_index,
            prev_log_index,
            None,
            heartbeat_id,
            sent_at_tick,
        );
    }

    /// Moves an AppendEntries that starts below the log start up to it: entries up to
    /// the snapshot point are committed and identical everywhere. `None` when the
    /// message disagrees with the snapshot's last entry (bogus).
    fn clip_to_log_start(
        &self,
        prev_log_index: u64,
        prev_log_term: u64,
        mut entries: Vec<Entry>,
    ) -> Option<(u64, u64, Vec<Entry>)> {
        let start = self.log.start();
        if prev_log_index >= start.last_index {
            return Some((prev_log_index, prev_log_term, entries));
        }
        match entries.iter().find(|entry| entry.index == start.last_index) {
            Some(entry) if entry.term != start.last_term => return None,
            Some(_) => entries.retain(|entry| entry.index > start.last_index),
            None => entries.clear(),
        }
        Some((start.last_index, start.last_term, entries))
    }

    /// The fast-backup hint to refuse an AppendEntries with when this log does not
    /// hold `(prev_log_index, prev_log_term)`; `None` when it does.
    fn append_conflict(&self, prev_log_index: u64, prev_log_term: u64) -> Option<ConflictHint> {
        let last_log_index = self.log.last_index();
        if prev_log_index > last_log_index {
            return Some(ConflictHint {
                conflict_term: None,
                first_index_of_conflict_term: 0,
                last_log_index,
            });
        }
        let our_term = self.log.term(prev_log_index);
        if our_term == Some(prev_log_term) {
            return None;
        }
        let conflict_term = our_term.unwrap_or(0);
        Some(ConflictHint {
            conflict_term: Some(conflict_term),
            first_index_of_conflict_term: self
                .log
                .first_index_of_term_at(conflict_term, prev_log_index),
            last_log_index,
        })
    }

    /// Position of the first entry this log does not hold (the length if it holds them
    /// all); `None` when an entry conflicts with a committed one.
    fn first_new_entry(&self, entries: &[Entry]) -> Option<usize> {
        for (position, entry) in entries.iter().enumerate() {
            match self.log.term(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) if entry.index <= self.log.committed() => return None,
                _ => return Some(position),
            }
        }
        Some(entries.len())
    }

    /// Takes up the configurations among freshly appended entries. One that does not
    /// decode stops the node: its membership is unknown from here on.
    fn adopt_configuration_entries(&mut self, entries: &[Entry]) {
        for entry in entries
            .iter()
            .filter(|entry| entry.kind == EntryKind::Config)
        {
            match Configuration::decode(&entry.data) {
                Ok(configuration) => self.adopt_configuration(entry.index, configuration),
                Err(error) => {
                    tracing::error!(index = entry.index, %error, "undecodable configuration entry");
                    self.fail(CoreError::UndecodableConfiguration {
                        index: entry.index,
                        reason: error.to_string(),
                    });
                    return;
                }
            }
        }
    }

    /// Stops the node (fail-stop): reported once in `Ready::fatal`, every later input
    /// ignored.
    fn fail(&mut self, error: CoreError) {
        if self.fatal.is_none() {
            self.fatal = Some(error);
        }
    }

    fn truncate_log_from(&mut self, from: u64) {
        self.log.truncate_from(from);
        let before = self.configuration_history.len();
        while self.configuration_history.len() > 1 && self.latest_configuration_index() >= from {
            self.configuration_history.pop();
        }
        if self.configuration_history.len() != before {
            let configuration = self
                .configuration_history
                .last()
                .map(|(_, c)| c.clone())
                .unwrap_or_default();
            self.set_configuration(configuration);
        }
        for inflight in self.inflight_persists.iter_mut() {
            inflight.last_index = inflight.last_index.min(from - 1);
        }
        if from < self.unissued_from {
            self.unissued_from = from;
            self.pending_truncate = Some(from);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send_append_response(
        &mut self,
        to: NodeId,
        success: bool,
        match_index: u64,
        rejected_prev_index: u64,
        conflict: Option<ConflictHint>,
        heartbeat_id: u64,
        sent_at_tick: u64,
    ) {
        let body = MessageBody::AppendEntriesResponse(AppendEntriesResponse {
            success,
            match_index,
            rejected_prev_index,
            conflict,
            heartbeat_id,
            sent_at_tick,
        });
        let needed = if success {
            self.hard_state_tag().max(self.log_tag(match_index))
        } else {
            self.hard_state_tag()
        };
        let message = Message {
            from: self.cfg.id,
            to,
            term: self.term,
            body,
        };
        self.emit(needed, message);
    }

    // ----- durability gating -----------------------------------------------------

    /// Persist sequence number after which the current hard state is durable.
    fn hard_state_tag(&self) -> u64 {
        if self.hard_state_dirty {
            self.next_persist_seq
        } else {
            self.last_hard_state_seq
        }
    }

    /// Persist sequence number after which the log is durable through `through`.
    fn log_tag(&self, through: u64) -> u64 {
        if through <= self.log.persisted() {
            return 0;
        }
        if through >= self.unissued_from {
            return self.next_persist_seq;
        }
        self.inflight_persists
            .iter()
            .find(|inflight| inflight.last_index >= through)
            .map_or(self.next_persist_seq, |inflight| inflight.seq)
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        let term = self.term;
        self.send_with_term(to, term, body);
    }

    fn send_with_term(&mut self, to: NodeId, term: u64, body: MessageBody) {
        let message = Message {
            from: self.cfg.id,
            to,
            term,
            body,
        };
        let needed = self.hard_state_tag();
        self.emit(needed, message);
    }

    fn emit(&mut self, needed_seq: u64, message: Message) {
        if needed_seq <= self.durable_seq {
            self.out_messages.push(message);
        } else {
            self.held_messages.push_back((needed_seq, message));
        }
    }

    /// Checks the node's invariants after every input (debug builds and the
    /// `invariants` feature; compiled out otherwise).
    fn check_invariants(&self) {
        if !cfg!(any(debug_assertions, feature = "invariants")) {
            return;
        }
        self.log.check_invariants();
        invariant!(self.durable_seq < self.next_persist_seq);
        invariant!(
            self.log.persisted() < self.unissued_from
                && self.unissued_from <= self.log.last_index() + 1
        );
        invariant!(self.role != Role::Leader || self.leader_id == Some(self.cfg.id));
        invariant!(self.role != Role::Candidate || self.voted_for == Some(self.cfg.id));
        invariant!(self.durable_hard_state.term <= self.term);
        invariant!(self
            .configuration_history
            .last()
            .is_some_and(|(_, c)| *c == self.configuration));
        invariant!(self
            .configuration_history
            .windows(2)
            .all(|pair| pair[0].0 < pair[1].0));
        for progress in self.progress.values() {
            progress.check_invariants();
            invariant!(progress.next_index <= self.log.last_index() + 1);
        }
        invariant!(self
            .held_messages
            .iter()
            .all(|(needed, _)| *needed > self.durable_seq));
        invariant!(
            self.pending_install.is_none() || self.log.restore_pending(),
            "an install is pending but the log does not wait for its restore"
        );
        invariant!(self.restore_ready.is_none() || self.log.restore_pending());
        invariant!(self
            .snapshot
            .as_ref()
            .is_none_or(|snapshot| snapshot.meta.index <= self.log.committed()));
    }
}

/// Drops the entries a snapshot at `start` covers and says whether the rest continue
/// it. Returns the entries after `start` and whether the durable log must be reset
/// (the entries handed in do not line up with the snapshot: all discarded).
fn align_to_snapshot(
    start: LogStart,
    entries: Vec<Entry>,
) -> Result<(Vec<Entry>, bool), CoreError> {
    if start.last_index == 0 {
        return Ok((entries, false));
    }
    let Some(first_index) = entries.first().map(|entry| entry.index) else {
        // Nothing tells where the WAL's next index is: reset it to the snapshot (an
        // already reset WAL is unaffected).
        return Ok((entries, true));
    };
    if first_index > start.last_index + 1 {
        return Err(CoreError::LogNotContiguous {
            expected_index: start.last_index + 1,
            found_index: first_index,
        });
    }
    let at_start = entries.iter().find(|entry| entry.index == start.last_index);
    let continues = match at_start {
        Some(entry) => entry.term == start.last_term,
        None => first_index == start.last_index + 1,
    };
    let first_after_ok = entries
        .iter()
        .find(|entry| entry.index == start.last_index + 1)
        .is_none_or(|entry| entry.term >= start.last_term);
    if !continues || !first_after_ok {
        return Ok((Vec::new(), true));
    }
    let kept = entries
        .into_iter()
        .filter(|entry| entry.index > start.last_index)
        .collect();
    Ok((kept, false))
}

/// The configuration history of a restarted log: `base` at the log start, then every
/// configuration entry. An entry that does not decode is an error.
fn configuration_history(
    start_index: u64,
    base: Configuration,
    entries: &[Entry],
) -> Result<Vec<(u64, Configuration)>, CoreError> {
    let mut history = vec![(start_index, base)];
    for entry in entries
        .iter()
        .filter(|entry| entry.kind == EntryKind::Config)
    {
        let configuration = Configuration::decode(&entry.data).map_err(|error| {
            CoreError::UndecodableConfiguration {
                index: entry.index,
                reason: error.to_string(),
            }
        })?;
        history.push((entry.index, configuration));
    }
    Ok(history)
}
