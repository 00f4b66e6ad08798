//! A deterministic cluster simulator running the real node: driver, core, WAL and KV
//! state machine.
//!
//! Single-threaded, simulated time in microseconds, every random choice drawn from one
//! ChaCha RNG seeded by [`SimConfig::seed`]: a seed replays exactly. Each simulated
//! server is the production [`NodeDriver`] (the same code the threaded runtime runs:
//! clock, batching, persist actions as WAL operations, replies, leadership-loss
//! handling) over the real `tally-wal` on its fault-injecting in-memory disk
//! ([`storage::WalStorage`]: a crash loses unsynced writes and may tear the last one at
//! any byte), applying to the real [`KvStateMachine`] through the same [`Applier`] as
//! the apply thread. Around them: a simulated network (drop, delay, duplication,
//! reordering, symmetric and one-way partitions), per-node clock drift (each node ticks
//! at its own rate), stalls (a node's driver frozen while its clock runs on; what
//! queued meanwhile arrives together), and KV clients with real sessions (SET, MSET,
//! GET, INCR, CAS, DEL) that resend a write with the same (client id, sequence) after an
//! unknown outcome. A share of the reads ([`SimConfig::local_reads`]) is first tried
//! the way a client I/O thread serves it: the lease the driver published, the read view
//! the applier published (lazily, so often behind), judged at the node's clock, which
//! runs on while its driver is stalled; [`LocalReadCheck`] can break that check on
//! purpose, to show that the history check catches a read it must not have served.
//!
//! After every step the [`checker::Checker`] verifies Election Safety, Leader
//! Append-Only, Log Matching, Leader Completeness, State Machine Safety, commit index
//! monotonicity and that committed entries survive on later leaders; the
//! [`history::History`] checks that register reads and writes (SET, MSET, GET, CAS) are
//! linearizable, and each client's INCR counter checks that no retried write is applied
//! twice (the n-th acknowledged INCR must answer n). Once
//! faults stop, the run checks liveness: a leader emerges and client operations
//! complete within a bound. A violation keeps the seed and the last events in a ring
//! buffer (or the full trace with `trace`).

pub mod checker;
pub mod history;
pub mod storage;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;

use bytes::Bytes;
use crossbeam_channel::{unbounded, Receiver, Sender};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::driver::{
    judge_local_read, meta_from_header, snapshot_header, Applier, ApplyWork, ClientError,
    Housekeeping, LocalRead, LocalReadCells, MembershipChange, NodeDriver, NodeError, NodeIo,
    Reply, ReplyTo, Request, SnapshotPolicy, Submission, TurnInput, WrittenSnapshot,
};
use crate::kv::{
    decode_request, encode_request, ClientSession, Command, KvLimits, KvReadView, KvResponse,
    KvStateMachine,
};
use crate::raft::SnapshotMeta;
use crate::raft::{
    Configuration, Entry, EntryKind, MemberInfo, Message, MessageBody, NodeId, PersistAction,
    ProposeError, RaftConfig, RaftNode, Role, RoleState,
};
use crate::state_machine::{SnapshotSource, StateMachine};
use checker::{Checker, NodeWatch};
use history::{History, OperationKind};
use storage::WalStorage;
use tally_wal::SnapshotStore;

/// Which faults a run injects while faults are active.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    /// Messages are dropped, duplicated and delayed at random rates.
    pub message_faults: bool,
    /// Symmetric and one-way partitions are cut and healed.
    pub partitions: bool,
    /// Nodes crash (losing unsynced writes, maybe tearing the last one) and restart.
    pub crashes: bool,
    /// Leaders are asked to change the voter set (joint consensus).
    pub membership_changes: bool,
    /// A node's driver is frozen for a while (a blocked raft thread, a paused process).
    pub stalls: bool,
    /// Mean time between nemesis actions.
    pub nemesis_interval_us: u64,
}

impl FaultConfig {
    /// Every fault kind, a nemesis action every 150 ms on average.
    pub fn all() -> FaultConfig {
        FaultConfig {
            message_faults: true,
            partitions: true,
            crashes: true,
            membership_changes: true,
            stalls: true,
            nemesis_interval_us: 150_000,
        }
    }
    /// No fault at all: a quiet run (scenario tests inject their own).
    pub fn none() -> FaultConfig {
        FaultConfig {
            message_faults: false,
            partitions: false,
            crashes: false,
            membership_changes: false,
            stalls: false,
            nemesis_interval_us: 150_000,
        }
    }
}

/// Parameters of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of the run's single RNG: the same seed replays the same run.
    pub seed: u64,
    /// Number of simulated servers, ids `1..=n_nodes`.
    pub n_nodes: usize,
    /// Nodes 1..=initial_voters form the initial configuration; the others start as
    /// non-members until a membership change adds them.
    pub initial_voters: usize,
    /// Nominal tick interval; each node's real interval is this divided by its clock rate.
    pub tick_us: u64,
    /// [`RaftConfig::election_timeout_ticks`] of every node.
    pub election_timeout_ticks: u64,
    /// [`RaftConfig::heartbeat_interval_ticks`] of every node.
    pub heartbeat_interval_ticks: u64,
    /// [`RaftConfig::pre_vote`] of every node.
    pub pre_vote: bool,
    /// [`RaftConfig::check_quorum`] of every node.
    pub check_quorum: bool,
    /// [`RaftConfig::lease_reads`] of every node.
    pub lease_reads: bool,
    /// Share of read attempts first tried as a client I/O thread serves them (the
    /// published lease and read view); the rest, and those refused, go through the
    /// driver.
    pub local_reads: f64,
    /// The check those reads are judged by: [`LocalReadCheck::Exact`] except in tests
    /// that show a broken check is caught.
    pub local_read_check: LocalReadCheck,
    /// Read views are frozen copies (`KvStateMachine::freeze_read_views`), so a
    /// published view can lag the applied state: what the applied-index part of the
    /// local read check guards against for state machines with such views.
    pub frozen_read_views: bool,
    /// The drift bound the nodes assume (RaftConfig::max_clock_drift).
    pub assumed_max_clock_drift: f64,
    /// The real spread of clock rates: each node's rate is drawn from [1 - this, 1].
    pub actual_max_clock_drift: f64,
    /// Which faults the nemesis injects.
    pub faults: FaultConfig,
    /// Faults are injected during this first part of the run (random mode only).
    pub fault_duration_us: u64,
    /// After faults stop, a leader and completed client operations must appear within this.
    pub liveness_bound_us: u64,
    /// Simulated KV clients issuing operations (0: none).
    pub n_clients: usize,
    /// Distinct keys (registers) the clients use.
    pub n_keys: u64,
    /// A client gives up on an operation after this long (its outcome becomes unknown) and
    /// resends it with the same session.
    pub client_timeout_us: u64,
    /// Message delay range in normal conditions.
    pub min_delay_us: u64,
    /// Upper end of the message delay range, in microseconds.
    pub max_delay_us: u64,
    /// Fsync latency range.
    pub min_fsync_us: u64,
    /// Upper end of the fsync latency range, in microseconds.
    pub max_fsync_us: u64,
    /// Entries per AppendEntries (1 makes old-term entries travel without the new
    /// leader's no-op, which Figure 8 scenarios need).
    pub max_batch_entries: usize,
    /// AppendEntries in flight per follower.
    pub max_inflight_messages: usize,
    /// Apply work items a node's state machine side takes per turn; the rest is given
    /// back, so the driver's apply outbox (and the request gating behind it) runs.
    pub apply_capacity_per_turn: usize,
    /// WAL operations a node's disk holds before they are durable; the driver defers
    /// the rest (its WAL backlog, held AppendEntries, request gating).
    pub wal_max_unsynced_ops: u64,
    /// Nodes take snapshots and compact (each seed draws its own thresholds, small
    /// enough that snapshots, compaction and InstallSnapshot happen in every run).
    pub snapshots: bool,
    /// Keep the full trace (and print it as it happens).
    pub trace: bool,
    /// Events kept for a violation report when not tracing fully.
    pub trace_ring_len: usize,
}

impl SimConfig {
    /// A fault-free run of `n_nodes` voters with a 10 ms tick and defaults that exercise
    /// every feature; set `faults`, `n_clients` and the rest before [`Simulation::new`].
    pub fn new(seed: u64, n_nodes: usize) -> SimConfig {
        SimConfig {
            seed,
            n_nodes,
            initial_voters: n_nodes,
            tick_us: 10_000,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            lease_reads: true,
            local_reads: 0.5,
            local_read_check: LocalReadCheck::Exact,
            frozen_read_views: false,
            assumed_max_clock_drift: 0.1,
            actual_max_clock_drift: 0.05,
            faults: FaultConfig::all(),
            fault_duration_us: 2_000_000,
            liveness_bound_us: 2_000_000,
            n_clients: 3,
            n_keys: 3,
            client_timeout_us: 300_000,
            min_delay_us: 100,
            max_delay_us: 1_500,
            min_fsync_us: 50,
            max_fsync_us: 2_000,
            max_batch_entries: 64,
            max_inflight_messages: 8,
            apply_capacity_per_turn: 4,
            wal_max_unsynced_ops: 6,
            snapshots: true,
            trace: false,
            trace_ring_len: 200,
        }
    }

    /// A quiet cluster for scenario tests: no nemesis, no clients.
    pub fn quiet(seed: u64, n_nodes: usize) -> SimConfig {
        SimConfig {
            faults: FaultConfig::none(),
            n_clients: 0,
            snapshots: false,
            ..SimConfig::new(seed, n_nodes)
        }
    }
}

/// How reads served off the raft thread are judged in the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalReadCheck {
    /// [`judge_local_read`], exactly as the client I/O threads run it.
    Exact,
    /// Broken on purpose: the lease never expires (a stalled leader keeps serving).
    IgnoreExpiry,
    /// Broken on purpose: any published view is recent enough.
    IgnoreAppliedIndex,
}

#[derive(Clone, Debug)]
enum Event {
    Tick {
        node: usize,
        incarnation: u64,
    },
    Deliver(Message),
    /// The node's disk finished the fsync of everything written when it was issued.
    FsyncDone {
        node: usize,
        incarnation: u64,
    },
    /// The background writer serializes the node's frozen view (not yet durable).
    SnapshotWrite {
        node: usize,
        incarnation: u64,
    },
    /// The background writer finishes that file: fsync, rename, directory fsync.
    SnapshotFinish {
        node: usize,
        incarnation: u64,
    },
    /// A stalled node's driver runs again.
    Resume {
        node: usize,
        incarnation: u64,
    },
    Client(usize),
    /// A client's attempt got no answer in time (only the latest attempt counts).
    ClientTimeout {
        client: usize,
        attempt: u64,
    },
    Nemesis,
    Restart(usize),
    FaultsEnd,
}

struct Scheduled {
    at_us: u64,
    order: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_us, self.order) == (other.at_us, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_us, self.order).cmp(&(other.at_us, other.order))
    }
}

/// A simulated server: the core, its disk, its state machine and its clock.
/// A simulated server: its node driver (the production behaviour), its disk, its
/// state machine and its clock.
pub struct SimNode {
    /// The node's id (`index + 1` in [`Simulation::nodes`]).
    pub id: NodeId,
    /// The node's behaviour, exactly as the threaded runtime runs it. `None` while down.
    pub driver: Option<NodeDriver<KvResponse, WalStorage, tally_wal::SimStorage>>,
    /// The real KV state machine behind the same applier the runtime's apply thread
    /// runs. `None` while down.
    applier: Option<Applier<KvStateMachine>>,
    /// The node's disk while it is down (while up, the driver owns it as its log).
    storage: Option<WalStorage>,
    /// Bumped at every crash, so events scheduled for an earlier life are dropped.
    pub incarnation: u64,
    /// Real microseconds between this node's ticks (its clock rate).
    pub tick_interval_us: u64,
    /// This incarnation's clock, in ticks: one per `Tick` event, which keep coming at
    /// the node's own rate while it is frozen (a stall stops the driver, not time).
    ticks: u64,
    fsync_free_at_us: u64,
    /// Everything applied (no-ops and configuration entries included).
    pub applied_index: u64,
    /// What arrived since the driver's last turn (messages, requests, applied index).
    input: TurnInput<KvResponse>,
    /// While set, the driver is frozen (a blocked raft thread, a paused process): what
    /// arrives queues in `input`; the disk and the clock keep going.
    frozen_until_us: Option<u64>,
    /// A frozen view the background snapshot writer has not started on yet.
    pending_snapshot: Option<(SnapshotMeta, Box<dyn SnapshotSource>)>,
    /// A snapshot file being written (bytes written, not durable, not visible yet).
    snapshot_writer: Option<(
        SnapshotMeta,
        tally_wal::SnapshotWriter<tally_wal::SimStorage>,
    )>,
    /// What the checker knows of this node's durable log and commit index.
    pub watch: NodeWatch,
    /// The lease and read view this incarnation publishes for reads served off its
    /// driver (new at every boot, like the runtime's).
    local_reads: LocalReadCells,
}

impl SimNode {
    fn is_up(&self) -> bool {
        self.driver.is_some()
    }

    fn core(&self) -> Option<&RaftNode> {
        self.driver.as_ref().map(NodeDriver::core)
    }

    /// The node's disk, wherever it is.
    fn storage_mut(&mut self) -> &mut WalStorage {
        match (self.driver.as_mut(), self.storage.as_mut()) {
            (Some(driver), _) => driver.log_mut(),
            (None, Some(storage)) => storage,
            (None, None) => unreachable!("a node's disk is either in its driver or kept aside"),
        }
    }
}

/// What a simulated client is doing.
#[derive(Clone, Debug)]
enum ClientOpKind {
    /// `SET r:<key> <value>` (a history write).
    Set { key: u64, value: u64 },
    /// `MSET r:<a> <va> r:<b> <vb>` (two history writes at one log index).
    MSet { pairs: [(u64, u64); 2] },
    /// `GET r:<key>` (a history read).
    Get { key: u64 },
    /// `INCR c:<client>`: only this client increments its counter, so the n-th
    /// acknowledged INCR must answer n (a retry applied twice answers more).
    Incr,
    /// `CAS r:<key> <expected> <new>`: swaps only if the register holds the value this
    /// client last wrote there; a swap is a history write of `new`.
    Cas { key: u64, expected: u64, new: u64 },
    /// `DEL d:<client>` on the client's own scratch key (exercised, not modelled).
    Del,
}

#[derive(Clone, Debug)]
struct ClientOp {
    kind: ClientOpKind,
    /// History operations this client operation completes.
    history_ops: Vec<usize>,
    /// The encoded request (a retry resends exactly these bytes: same session).
    request: Bytes,
    read_only: bool,
    /// Resent at least once (after an unknown outcome, a redirect or a timeout).
    retried: bool,
    /// Tag of the current attempt's replies: `client << 32 | serial`.
    serial: u64,
}

struct Client {
    /// Driven by a test through `client_write`/`client_read`: never starts operations itself.
    scripted: bool,
    target: usize,
    /// This client's session id (nonzero) and its last write sequence.
    client_id: u64,
    last_sequence: u64,
    op: Option<ClientOp>,
    next_serial: u64,
    /// Attempts sent so far (by all operations); a timeout names the attempt it is for.
    attempts: u64,
    /// Where the current attempt went (node, incarnation), if it was accepted there.
    attempt_on: Option<(usize, u64)>,
    /// INCRs acknowledged so far (the counter's expected value).
    incr_acknowledged: i64,
    /// The last value this client wrote to each register (for CAS).
    last_written: HashMap<u64, u64>,
}

/// Network conditions, changed by the nemesis.
#[derive(Clone, Debug, Default)]
struct NetworkState {
    /// `blocked[from][to]`: messages on that directed link are lost.
    blocked: Vec<Vec<bool>>,
    drop_probability: f64,
    duplicate_probability: f64,
    long_delay_probability: f64,
    long_delay_max_us: u64,
}

/// KV client totals of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStats {
    /// Client operations completed with a state-machine answer.
    pub ops: u64,
    /// Operations resent with the same session at least once.
    pub retried: u64,
    /// Writes whose effect was applied more than once (must be 0).
    pub applied_twice: u64,
    /// Times a node's driver was frozen by the nemesis.
    pub stalls: u64,
    /// Snapshot files nodes wrote themselves, and snapshots installed from a leader.
    pub snapshots_taken: u64,
    /// Snapshots nodes installed from a leader.
    pub snapshots_installed: u64,
}

/// Message and byte counts, for budgets in tests.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    /// Messages sent, by [`MessageBody::kind_name`].
    pub messages_by_kind: BTreeMap<&'static str, u64>,
    /// Messages sent, all kinds.
    pub messages_sent: u64,
    /// Estimated encoded bytes sent ([`MessageBody::size_bytes`]).
    pub bytes_sent: u64,
    /// Entry payload bytes sent ([`MessageBody::payload_bytes`]).
    pub payload_bytes_sent: u64,
    /// Simulation events processed.
    pub events: u64,
    /// Client writes acknowledged.
    pub writes_completed: u64,
    /// Client reads answered.
    pub reads_completed: u64,
    /// Reads served under a leader lease (no message round).
    pub lease_reads: u64,
    /// Reads served from a published view after the lease check (the client-thread
    /// path).
    pub local_reads_served: u64,
    /// Local read attempts the lease check refused (served through the driver instead).
    pub local_reads_refused: u64,
    /// Node crashes injected.
    pub crashes: u64,
    /// AppendEntries rejections sent (each costs a round trip of log repair).
    pub rejected_appends: u64,
    /// KV client totals.
    pub kv: KvStats,
}

/// The outcome of a run. A run passed when `violations` is empty; otherwise rerun
/// `seed` (with [`SimConfig::trace`]) to replay it exactly.
#[derive(Debug)]
pub struct SimReport {
    /// The seed that reproduces the run.
    pub seed: u64,
    /// Every safety, linearizability, exactly-once and liveness violation found; empty
    /// for a passing run.
    pub violations: Vec<String>,
    /// Readable trace of the events before the first violation (empty if none).
    pub trace: String,
    /// Message and operation counts.
    pub stats: SimStats,
    /// Simulated time the run covered, in microseconds.
    pub simulated_us: u64,
}

/// The simulator. See the module docs.
///
/// A scenario: three nodes, a command committed everywhere, the leader cut off, a new
/// leader elected by the other two; the safety checker ran after every step.
///
/// ```
/// use bytes::Bytes;
/// use tally_engine::sim::{SimConfig, Simulation};
///
/// const SECOND_US: u64 = 1_000_000;
/// let mut sim = Simulation::new(SimConfig::quiet(7, 3)); // seed 7: replays exactly
/// assert!(sim.run_until(5 * SECOND_US, |sim| sim.leader().is_some()));
/// let index = sim.one(Bytes::from_static(b"x"), 3, 10 * SECOND_US).expect("committed on 3");
///
/// let old_leader = sim.leader().unwrap();
/// sim.isolate(old_leader);
/// assert!(sim.run_until(5 * SECOND_US, |sim| {
///     sim.leaders().iter().any(|(id, _)| *id != old_leader)
/// }));
/// assert!(sim.one(Bytes::from_static(b"y"), 2, 10 * SECOND_US).unwrap() > index);
/// sim.assert_safe();
/// ```
pub struct Simulation {
    /// The run's parameters.
    pub cfg: SimConfig,
    rng: ChaCha8Rng,
    /// Current simulated time, in microseconds since the start.
    pub now_us: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_order: u64,
    /// The simulated servers; node `id` is `nodes[id - 1]`.
    pub nodes: Vec<SimNode>,
    configuration: Configuration,
    net: NetworkState,
    clients: Vec<Client>,
    /// Every client's replies arrive here, tagged `client << 32 | serial`.
    reply_tx: Sender<Reply<KvResponse>>,
    reply_rx: Receiver<Reply<KvResponse>>,
    /// The Raft safety checker, fed after every step.
    pub checker: Checker,
    /// The client history and its incremental linearizability check.
    pub history: History,
    /// Counts so far.
    pub stats: SimStats,
    trace_ring: VecDeque<TraceRecord>,
    violation_trace: Option<String>,
    faults_active: bool,
    faults_ended_at_us: Option<u64>,
    next_write_value: u64,
    liveness_failures: Vec<String>,
    /// Other safety failures found outside the checker (exactly-once, replies).
    kv_violations: Vec<String>,
    /// Every node's snapshot policy in this run.
    snapshot_policy: SnapshotPolicy,
}

/// The KV key of register `key`.
fn register_key(key: u64) -> Vec<u8> {
    format!("r:{key}").into_bytes()
}

/// The register a KV key names, if it is one.
fn parse_register_key(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key.strip_prefix(b"r:")?)
        .ok()?
        .parse()
        .ok()
}

/// A register value as the KV store holds it (decimal text; 0 is never written).
fn parse_register_value(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

impl Simulation {
    /// Builds the cluster (every node up, the initial configuration of
    /// [`SimConfig::initial_voters`]) and schedules the first events. Nothing runs until
    /// [`Simulation::run`] or [`Simulation::run_for`]. Panics if `cfg.n_nodes` is 0.
    pub fn new(cfg: SimConfig) -> Simulation {
        assert!(cfg.n_nodes >= 1);
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let configuration = Configuration::new(1..=cfg.initial_voters.clamp(1, cfg.n_nodes) as u64);
        let mut nodes = Vec::new();
        for k in 0..cfg.n_nodes {
            let rate = 1.0 - rng.gen_range(0.0..=cfg.actual_max_clock_drift.max(0.0));
            let tick_interval_us = (cfg.tick_us as f64 / rate).round() as u64;
            nodes.push(SimNode {
                id: k as u64 + 1,
                driver: None,
                applier: None,
                storage: Some(WalStorage::new().with_max_unsynced_ops(cfg.wal_max_unsynced_ops)),
                incarnation: 0,
                tick_interval_us,
                ticks: 0,
                fsync_free_at_us: 0,
                applied_index: 0,
                input: TurnInput::new(),
                frozen_until_us: None,
                pending_snapshot: None,
                snapshot_writer: None,
                watch: NodeWatch::default(),
                local_reads: LocalReadCells::new(),
            });
        }
        let n = cfg.n_nodes;
        let clients = (0..cfg.n_clients)
            .map(|k| Client::new(k, rng.gen_range(0..n), false))
            .collect();
        let (reply_tx, reply_rx) = unbounded();
        let snapshot_policy = if cfg.snapshots {
            SnapshotPolicy {
                log_entries: rng.gen_range(20..200),
                log_bytes: 0,
                retain_entries: rng.gen_range(0..40),
                keep_files: 2,
            }
        } else {
            SnapshotPolicy::manual_only()
        };
        let mut sim = Simulation {
            rng,
            now_us: 0,
            queue: BinaryHeap::new(),
            next_order: 0,
            nodes,
            configuration,
            net: NetworkState {
                blocked: vec![vec![false; n]; n],
                ..NetworkState::default()
            },
            clients,
            reply_tx,
            reply_rx,
            checker: Checker::default(),
            history: History::default(),
            stats: SimStats::default(),
            trace_ring: VecDeque::new(),
            violation_trace: None,
            faults_active: false,
            faults_ended_at_us: None,
            next_write_value: 1,
            liveness_failures: Vec::new(),
            kv_violations: Vec::new(),
            snapshot_policy,
            cfg,
        };
        for k in 0..n {
            sim.start_node(k);
        }
        for client in 0..sim.clients.len() {
            let delay = sim.rng.gen_range(0..20_000);
            sim.schedule(delay, Event::Client(client));
        }
        let faults = &sim.cfg.faults;
        if faults.message_faults
            || faults.partitions
            || faults.crashes
            || faults.membership_changes
            || faults.stalls
        {
            sim.faults_active = true;
            let first = sim.rng.gen_range(0..sim.cfg.faults.nemesis_interval_us * 2);
            sim.schedule(first, Event::Nemesis);
            let end = sim.cfg.fault_duration_us;
            sim.schedule(end, Event::FaultsEnd);
        }
        sim
    }

    // ----- public controls for scenario tests -------------------------------------

    /// Runs a whole random-fault seed: faults, then the liveness window.
    pub fn run(mut self) -> SimReport {
        let end = self.cfg.fault_duration_us + self.cfg.liveness_bound_us;
        if self.cfg.n_clients == 0 && !self.faults_active {
            self.run_for(end);
        } else {
            self.run_until_time(end);
        }
        self.check_liveness();
        self.report()
    }

    /// Ends the run and collects every violation found, with a trace when there is one.
    pub fn report(self) -> SimReport {
        let mut violations = self.checker.violations.clone();
        violations.extend(self.history.violations.iter().cloned());
        violations.extend(self.kv_violations.iter().cloned());
        violations.extend(self.liveness_failures.iter().cloned());
        let trace = if violations.is_empty() {
            String::new()
        } else {
            self.violation_trace.unwrap_or_default()
        };
        SimReport {
            seed: self.cfg.seed,
            violations,
            trace,
            stats: self.stats,
            simulated_us: self.now_us,
        }
    }

    /// All safety violations found so far.
    pub fn violations(&self) -> Vec<String> {
        let mut all = self.checker.violations.clone();
        all.extend(self.history.violations.iter().cloned());
        all.extend(self.kv_violations.iter().cloned());
        all
    }

    /// Panics with the seed and trace if any invariant broke. For tests.
    pub fn assert_safe(&self) {
        let violations = self.violations();
        assert!(
            violations.is_empty(),
            "seed {}: {:?}\ntrace:\n{}",
            self.cfg.seed,
            violations,
            self.violation_trace.as_deref().unwrap_or("")
        );
    }

    /// Runs events for `duration_us` simulated microseconds (scenario tests interleave it
    /// with faults of their own).
    pub fn run_for(&mut self, duration_us: u64) {
        let end = self.now_us + duration_us;
        self.run_until_time(end);
    }

    fn run_until_time(&mut self, end_us: u64) {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at_us > end_us {
                break;
            }
            self.step_once();
        }
        self.now_us = self.now_us.max(end_us);
    }

    /// Runs until `done` holds (checked after every event) or `max_us` passes.
    pub fn run_until(&mut self, max_us: u64, mut done: impl FnMut(&Simulation) -> bool) -> bool {
        let end = self.now_us + max_us;
        loop {
            if done(self) {
                return true;
            }
            match self.queue.peek() {
                Some(Reverse(next)) if next.at_us <= end => self.step_once(),
                _ => {
                    self.now_us = end;
                    return done(self);
                }
            }
        }
    }

    /// The core of node `id`, `None` while it is down. Panics when `id` is not in
    /// `1..=n_nodes`.
    pub fn node(&self, id: NodeId) -> Option<&RaftNode> {
        self.nodes[id as usize - 1].core()
    }

    /// Whether node `id` is running. Panics when `id` is not in `1..=n_nodes`.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes[id as usize - 1].is_up()
    }

    /// The live leader of the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(SimNode::core)
            .filter(|raft| raft.role() == Role::Leader)
            .max_by_key(|raft| raft.term())
            .map(|raft| raft.id())
    }

    /// Every live leader with its term.
    pub fn leaders(&self) -> Vec<(NodeId, u64)> {
        self.nodes
            .iter()
            .filter_map(SimNode::core)
            .filter(|raft| raft.role() == Role::Leader)
            .map(|raft| (raft.id(), raft.term()))
            .collect()
    }

    /// Highest term of any running node (0 when none runs).
    pub fn max_term(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(SimNode::core)
            .map(|raft| raft.term())
            .max()
            .unwrap_or(0)
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&mut self, id: NodeId) {
        let k = id as usize - 1;
        for other in 0..self.nodes.len() {
            if other != k {
                self.net.blocked[k][other] = true;
                self.net.blocked[other][k] = true;
            }
        }
        self.trace_event(format!("isolate node {id}"));
    }

    /// Restores every link to and from `id` (other cuts stay).
    pub fn reconnect(&mut self, id: NodeId) {
        let k = id as usize - 1;
        for other in 0..self.nodes.len() {
            self.net.blocked[k][other] = false;
            self.net.blocked[other][k] = false;
        }
        self.trace_event(format!("reconnect node {id}"));
    }

    /// Blocks messages from `from` to `to` only.
    pub fn block_link(&mut self, from: NodeId, to: NodeId) {
        self.net.blocked[from as usize - 1][to as usize - 1] = true;
        self.trace_event(format!("block link {from} -> {to}"));
    }

    /// Splits the cluster: nodes in `group` can only talk among themselves, the rest too.
    pub fn partition(&mut self, group: &[NodeId]) {
        let n = self.nodes.len();
        for a in 0..n {
            for b in 0..n {
                let a_in = group.contains(&(a as u64 + 1));
                let b_in = group.contains(&(b as u64 + 1));
                self.net.blocked[a][b] = a_in != b_in;
            }
        }
        self.trace_event(format!("partition {group:?} from the rest"));
    }

    /// Removes every partition (message loss rates stay as set).
    pub fn heal(&mut self) {
        for row in self.net.blocked.iter_mut() {
            row.iter_mut().for_each(|cell| *cell = false);
        }
        self.trace_event("heal all partitions".to_string());
    }

    /// Sets unreliable-network parameters (applies also in quiet mode).
    pub fn set_unreliable(
        &mut self,
        drop_probability: f64,
        duplicate_probability: f64,
        long_delay_probability: f64,
    ) {
        self.net.drop_probability = drop_probability;
        self.net.duplicate_probability = duplicate_probability;
        self.net.long_delay_probability = long_delay_probability;
        self.net.long_delay_max_us = 30_000;
        self.trace_event(format!(
            "network: drop {drop_probability}, duplicate {duplicate_probability}, long delay {long_delay_probability}"
        ));
    }

    /// Crashes a node: it loses its volatile state and unsynced writes.
    pub fn crash(&mut self, id: NodeId) {
        let k = id as usize - 1;
        if !self.nodes[k].is_up() {
            return;
        }
        self.stats.crashes += 1;
        let node = &mut self.nodes[k];
        if let Some(driver) = node.driver.take() {
            node.storage = Some(driver.into_log());
        }
        node.applier = None;
        node.incarnation += 1;
        node.storage_mut().crash(&mut self.rng);
        node.applied_index = 0;
        node.input = TurnInput::new();
        node.frozen_until_us = None;
        node.pending_snapshot = None;
        node.snapshot_writer = None;
        node.fsync_free_at_us = 0;
        self.trace_event(format!("crash node {id}"));
        // Clients waiting on this node resend (same session) elsewhere.
        for client in 0..self.clients.len() {
            if self.clients[client]
                .attempt_on
                .is_some_and(|(node, _)| node == k)
            {
                self.resend_soon(client);
            }
        }
    }

    /// Restarts a crashed node from its durable storage.
    pub fn restart(&mut self, id: NodeId) {
        let k = id as usize - 1;
        if self.nodes[k].is_up() {
            return;
        }
        self.trace_event(format!("restart node {id}"));
        self.start_node(k);
    }

    /// Freezes node `id`'s driver for `duration_us` (a blocked raft thread, a paused
    /// process): messages and requests queue meanwhile and are handled together when it
    /// resumes; its clock and its disk keep going.
    pub fn stall(&mut self, id: NodeId, duration_us: u64) {
        let k = id as usize - 1;
        if !self.nodes[k].is_up() || self.nodes[k].frozen_until_us.is_some() {
            return;
        }
        self.stats.kv.stalls += 1;
        let until = self.now_us + duration_us;
        self.nodes[k].frozen_until_us = Some(until);
        let incarnation = self.nodes[k].incarnation;
        self.trace_event(format!("stall node {id} for {duration_us}us"));
        self.schedule(
            duration_us,
            Event::Resume {
                node: k,
                incarnation,
            },
        );
    }

    /// Proposes one command directly on node `id` (a scripted input to its core; the
    /// driver carries out the result in the turn that follows).
    pub fn propose(&mut self, id: NodeId, data: Bytes) -> Result<u64, ProposeError> {
        let k = id as usize - 1;
        let Some(driver) = self.nodes[k].driver.as_mut() else {
            return Err(ProposeError::NotLeader { leader_hint: None });
        };
        let range = driver.core_mut().propose(vec![data])?;
        self.trace_event(format!("propose on node {id} at index {}", range.start));
        self.process(k);
        Ok(range.start)
    }

    /// Asks node `id` (a leader) to change the voters to `voters`, through its driver
    /// like any membership request. Returns whether it was not refused at once.
    pub fn change_membership(&mut self, id: NodeId, voters: &[NodeId]) -> bool {
        self.request_membership(
            id,
            MembershipChange::ReplaceVoters {
                voters: voters.to_vec(),
            },
        )
    }

    /// Submits `change` to node `id` as a driver request (the path the admin commands
    /// and `NodeHandle` take). Returns false when the node is down or refused it in the
    /// turn that took it (not leader, another change under way, a lagging learner...);
    /// true when it started (its answer comes once it commits or fails).
    pub fn request_membership(&mut self, id: NodeId, change: MembershipChange) -> bool {
        let k = id as usize - 1;
        if !self.nodes[k].is_up() {
            return false;
        }
        let (sender, receiver) = crossbeam_channel::bounded(1);
        self.nodes[k]
            .input
            .requests
            .push(Request::ChangeMembership {
                change: change.clone(),
                done: Box::new(move |result| {
                    let _ = sender.send(result);
                }),
            });
        self.process(k);
        match receiver.try_recv() {
            Ok(Err(error)) => {
                self.trace_event(format!("node {id} refuses {change:?}: {error}"));
                false
            }
            _ => {
                self.trace_event(format!("node {id} starts membership change {change:?}"));
                true
            }
        }
    }

    /// A random membership operation against `leader`'s configuration: a new voter
    /// set, or one learner added, promoted or removed.
    fn random_membership_change(&mut self, leader: NodeId) -> MembershipChange {
        let n = self.nodes.len();
        let configuration = self.nodes[leader as usize - 1]
            .core()
            .map(|raft| raft.configuration().clone())
            .unwrap_or_default();
        let all: Vec<NodeId> = (1..=n as u64).collect();
        let pick = |rng: &mut ChaCha8Rng, from: Vec<NodeId>| from.choose(rng).copied();
        let outsiders: Vec<NodeId> = all
            .iter()
            .copied()
            .filter(|id| !configuration.is_member(*id))
            .collect();
        let learners: Vec<NodeId> = configuration.learners.iter().copied().collect();
        let members: Vec<NodeId> = configuration.members().into_iter().collect();
        let choice = match self.rng.gen_range(0..10) {
            0..=3 => None,
            4 | 5 => pick(&mut self.rng, outsiders).map(|id| MembershipChange::AddLearner {
                id,
                info: MemberInfo::default(),
            }),
            6 | 7 => pick(&mut self.rng, learners).map(|id| MembershipChange::Promote { id }),
            _ => pick(&mut self.rng, members).map(|id| MembershipChange::Remove { id }),
        };
        choice.unwrap_or_else(|| {
            let size = self.rng.gen_range(n.saturating_sub(2).max(1)..=n);
            let mut ids = all;
            ids.shuffle(&mut self.rng);
            ids.truncate(size);
            MembershipChange::ReplaceVoters { voters: ids }
        })
    }

    /// Asks node `id` to transfer leadership (through the driver, as a client request
    /// whose answer comes once the target leads).
    pub fn transfer_leadership(&mut self, id: NodeId, target: NodeId) -> bool {
        let k = id as usize - 1;
        if !self.nodes[k].is_up() {
            return false;
        }
        let is_leader = self.nodes[k]
            .core()
            .is_some_and(|raft| raft.role() == Role::Leader);
        self.nodes[k].input.requests.push(Request::Transfer {
            target,
            done: Box::new(|_| {}),
        });
        self.process(k);
        is_leader
    }

    /// How many live nodes applied `index`.
    pub fn n_applied(&self, index: u64) -> usize {
        self.nodes
            .iter()
            .filter(|node| node.is_up() && node.applied_index >= index)
            .count()
    }

    /// Entry at `index` in node `id`'s log.
    pub fn entry(&self, id: NodeId, index: u64) -> Option<Entry> {
        self.node(id)
            .and_then(|raft| raft.log().entry(index).cloned())
    }

    /// Like the 6.824 `one()`: proposes `data` on whichever node is leader until it is
    /// committed and applied on at least `expected` nodes. Returns the index.
    pub fn one(&mut self, data: Bytes, expected: usize, max_us: u64) -> Option<u64> {
        let deadline = self.now_us + max_us;
        while self.now_us < deadline {
            let mut index = None;
            if let Some(leader) = self.leader() {
                index = self.propose(leader, data.clone()).ok();
            }
            if let Some(index) = index {
                let until = (self.now_us + 500_000).min(deadline);
                let data_ref = data.clone();
                let done = self.run_until(until - self.now_us, |sim| {
                    sim.n_applied(index) >= expected
                        && sim.nodes.iter().filter_map(SimNode::core).any(|raft| {
                            raft.log()
                                .entry(index)
                                .is_some_and(|entry| entry.data == data_ref)
                                && raft.log().applied() >= index
                        })
                });
                if done {
                    let agreed = self
                        .nodes
                        .iter()
                        .filter(|node| node.applied_index >= index)
                        .filter_map(SimNode::core)
                        .filter(|raft| {
                            raft.log()
                                .entry(index)
                                .is_some_and(|entry| entry.data == data)
                        })
                        .count();
                    if agreed >= expected {
                        return Some(index);
                    }
                }
            } else {
                self.run_for(20_000);
            }
        }
        None
    }

    /// Adds a client driven by the test (no random operations of its own).
    pub fn add_client(&mut self) -> usize {
        let index = self.clients.len();
        self.clients.push(Client::new(index, 0, true));
        index
    }

    /// Starts a SET of a fresh unique value to register `key` by `client`, sent to node
    /// `target` (redirected on NotLeader like any client). Returns the operation's
    /// history index.
    pub fn client_write(&mut self, client: usize, target: NodeId, key: u64) -> usize {
        let value = self.fresh_value();
        self.start_client_op(client, target, ClientOpKind::Set { key, value })
    }

    /// Starts a GET of register `key` by `client` at node `target`.
    pub fn client_read(&mut self, client: usize, target: NodeId, key: u64) -> usize {
        self.start_client_op(client, target, ClientOpKind::Get { key })
    }

    fn start_client_op(&mut self, client: usize, target: NodeId, kind: ClientOpKind) -> usize {
        assert!(
            self.clients[client].op.is_none(),
            "client {client} already has an operation running"
        );
        self.clients[client].target = target as usize - 1;
        self.begin_op(client, kind);
        let op = &self.clients[client].op;
        op.as_ref()
            .and_then(|op| op.history_ops.first().copied())
            .unwrap_or(usize::MAX)
    }

    /// Whether a client operation completed (writes: committed and applied; reads: served).
    pub fn op_completed(&self, op: usize) -> bool {
        self.history.operations[op].completed_at_us.is_some()
    }

    /// KV client totals so far.
    pub fn kv_stats(&self) -> &KvStats {
        &self.stats.kv
    }

    // ----- the event loop ---------------------------------------------------------

    fn schedule(&mut self, delay_us: u64, event: Event) {
        let order = self.next_order;
        self.next_order += 1;
        self.queue.push(Reverse(Scheduled {
            at_us: self.now_us + delay_us,
            order,
            event,
        }));
    }

    fn step_once(&mut self) {
        let Some(Reverse(next)) = self.queue.pop() else {
            return;
        };
        self.now_us = next.at_us;
        self.stats.events += 1;
        match next.event {
            Event::Tick { node, incarnation } => {
                if self.nodes[node].incarnation != incarnation || !self.nodes[node].is_up() {
                    return;
                }
                self.nodes[node].ticks += 1;
                self.process(node);
                let interval = self.nodes[node].tick_interval_us;
                self.schedule(interval, Event::Tick { node, incarnation });
            }
            Event::Deliver(message) => {
                let to = message.to as usize - 1;
                let from = message.from as usize - 1;
                if self.net.blocked[from][to] || !self.nodes[to].is_up() {
                    return;
                }
                self.trace_delivery(&message);
                self.nodes[to].input.messages.push(message);
                self.process(to);
            }
            Event::FsyncDone { node, incarnation } => {
                if self.nodes[node].incarnation != incarnation || !self.nodes[node].is_up() {
                    return;
                }
                // The disk completes its fsync even while the driver is frozen.
                self.nodes[node].storage_mut().sync_written();
                self.process(node);
            }
            Event::Resume { node, incarnation } => {
                if self.nodes[node].incarnation != incarnation {
                    return;
                }
                self.nodes[node].frozen_until_us = None;
                self.trace_event(format!("node {} resumes", node + 1));
                self.process(node);
            }
            Event::Client(client) => self.client_step(client),
            Event::ClientTimeout { client, attempt } => {
                let state = &self.clients[client];
                if state.op.is_some() && state.attempt_on.is_some() && state.attempts == attempt {
                    self.trace_event(format!("client {client} times out; resends"));
                    self.clients[client].target = self.rng.gen_range(0..self.nodes.len());
                    self.resend_soon(client);
                }
            }
            Event::Nemesis => {
                if self.faults_active {
                    self.nemesis();
                    let interval = self.cfg.faults.nemesis_interval_us;
                    let delay = self.rng.gen_range(interval / 4..interval * 2);
                    self.schedule(delay, Event::Nemesis);
                }
            }
            Event::SnapshotWrite { node, incarnation } => {
                if self.nodes[node].incarnation == incarnation {
                    self.write_snapshot(node);
                }
            }
            Event::SnapshotFinish { node, incarnation } => {
                if self.nodes[node].incarnation == incarnation {
                    self.finish_snapshot(node);
                }
            }
            Event::Restart(node) => self.restart(node as u64 + 1),
            Event::FaultsEnd => {
                self.faults_active = false;
                self.faults_ended_at_us = Some(self.now_us);
                self.heal();
                self.set_unreliable(0.0, 0.0, 0.0);
                for k in 0..self.nodes.len() {
                    self.restart(k as u64 + 1);
                }
            }
        }
        self.route_replies();
    }

    fn start_node(&mut self, k: usize) {
        let node = &mut self.nodes[k];
        let mut raft_cfg = RaftConfig::new(
            node.id,
            self.cfg.seed ^ (node.id << 32) ^ (node.incarnation << 48),
        );
        raft_cfg.election_timeout_ticks = self.cfg.election_timeout_ticks;
        raft_cfg.heartbeat_interval_ticks = self.cfg.heartbeat_interval_ticks;
        raft_cfg.pre_vote = self.cfg.pre_vote;
        raft_cfg.check_quorum = self.cfg.check_quorum;
        raft_cfg.lease_reads = self.cfg.lease_reads;
        raft_cfg.max_clock_drift = self.cfg.assumed_max_clock_drift;
        raft_cfg.max_batch_entries = self.cfg.max_batch_entries;
        raft_cfg.max_inflight_messages = self.cfg.max_inflight_messages;
        let id = node.id;
        match self.boot(k, raft_cfg) {
            Ok(()) => {}
            Err(error) => {
                // The simulated disk only ever crashes: a node that cannot restart from
                // it is a bug.
                self.kv_violations
                    .push(format!("node {id} cannot restart from its disk: {error}"));
                self.capture_violation_trace();
                return;
            }
        }
        // Start the clock at a random phase.
        let phase = self.rng.gen_range(0..self.nodes[k].tick_interval_us);
        let node = &mut self.nodes[k];
        node.ticks = 0;
        let incarnation = node.incarnation;
        self.schedule(
            phase,
            Event::Tick {
                node: k,
                incarnation,
            },
        );
        self.process(k);
    }

    /// Rebuilds node `k` from its disk exactly as the runtime does: the newest usable
    /// snapshot restores the state machine, the WAL after it restores the core.
    fn boot(&mut self, k: usize, raft_cfg: RaftConfig) -> Result<(), String> {
        let node = &mut self.nodes[k];
        let disk = node.storage_mut().disk();
        let store = SnapshotStore::new(disk).map_err(|error| error.to_string())?;
        let first_index = node.storage_mut().first_index();
        let mut state_machine = KvStateMachine::new(KvLimits::default());
        if self.cfg.frozen_read_views {
            state_machine.freeze_read_views();
        }
        let restart = match store
            .select_for_restart(first_index)
            .map_err(|error| error.to_string())?
        {
            Some(info) => {
                let mut reader = store.open(&info.name).map_err(|error| error.to_string())?;
                let meta = meta_from_header(reader.header())?;
                state_machine
                    .restore(&mut reader)
                    .map_err(|error| error.to_string())?;
                Some((meta, info))
            }
            None => None,
        };
        let snapshot_index = restart.as_ref().map_or(0, |(meta, _)| meta.index);
        let recovered = node.storage_mut().recover();
        self.checker
            .on_restart(node.id, &mut node.watch, snapshot_index, &recovered.entries);
        let raft = RaftNode::restart(
            raft_cfg,
            self.configuration.clone(),
            recovered.hard_state,
            restart.as_ref().map(|(meta, _)| meta.clone()),
            recovered.entries,
        )
        .map_err(|error| error.to_string())?;
        // The driver owns the disk for this incarnation; the node takes it back when
        // it goes down.
        let Some(storage) = node.storage.take() else {
            unreachable!("a node that is down keeps its disk aside")
        };
        let mut driver = NodeDriver::new(raft, storage, store, self.snapshot_policy);
        node.local_reads = LocalReadCells::new();
        driver.publish_lease_to(node.local_reads.lease.clone());
        if let Some((meta, info)) = &restart {
            if let Err(error) = driver.restarted_from_snapshot(meta.clone(), info) {
                node.storage = Some(driver.into_log());
                return Err(error.to_string());
            }
        }
        node.driver = Some(driver);
        let mut applier = Applier::restored(state_machine, snapshot_index);
        applier.publish_views_to(node.local_reads.views.clone());
        node.applier = Some(applier);
        node.applied_index = snapshot_index;
        node.input = TurnInput::new();
        Ok(())
    }

    /// The background writer starts on a frozen view: the bytes reach the disk's cache,
    /// not its durable state, and the file is not visible yet.
    fn write_snapshot(&mut self, k: usize) {
        let node = &mut self.nodes[k];
        let Some((meta, mut source)) = node.pending_snapshot.take() else {
            return;
        };
        let Some(driver) = node.driver.as_ref() else {
            return;
        };
        let store = driver.snapshot_store().clone();
        let written = store
            .begin(&snapshot_header(&meta))
            .map_err(|error| error.to_string())
            .and_then(|mut writer| {
                source
                    .write_to(&mut writer)
                    .map_err(|error| error.to_string())?;
                std::io::Write::flush(&mut writer).map_err(|error| error.to_string())?;
                Ok(writer)
            });
        match written {
            Ok(writer) => {
                node.snapshot_writer = Some((meta, writer));
                let incarnation = node.incarnation;
                let delay = self.rng.gen_range(100..5_000);
                self.schedule(
                    delay,
                    Event::SnapshotFinish {
                        node: k,
                        incarnation,
                    },
                );
            }
            Err(error) => self.kv_violations.push(format!(
                "node {}: writing a snapshot failed: {error}",
                k + 1
            )),
        }
    }

    /// The background writer makes the file durable and visible, and tells the driver.
    fn finish_snapshot(&mut self, k: usize) {
        let node = &mut self.nodes[k];
        let Some((meta, writer)) = node.snapshot_writer.take() else {
            return;
        };
        match writer.finish_with_file_crc32() {
            Ok((info, file_crc32)) => {
                self.stats.kv.snapshots_taken += 1;
                self.trace_event(format!(
                    "node {} wrote snapshot {} ({} bytes)",
                    k + 1,
                    meta.index,
                    info.size_bytes
                ));
                self.nodes[k].input.snapshots_written.push(WrittenSnapshot {
                    meta,
                    info,
                    file_crc32,
                });
                self.process(k);
            }
            Err(error) => self.kv_violations.push(format!(
                "node {}: finishing a snapshot failed: {error}",
                k + 1
            )),
        }
    }

    /// Runs node `k`'s driver over everything that arrived for it, then carries out what
    /// it asked for, until nothing is left; then checks invariants.
    fn process(&mut self, k: usize) {
        loop {
            let node = &mut self.nodes[k];
            if node.frozen_until_us.is_some() {
                return;
            }
            let now_tick = node.ticks;
            let SimNode { driver, input, .. } = node;
            let Some(driver) = driver.as_mut() else {
                return;
            };
            input.now_tick = now_tick;
            let mut io = SimIo {
                apply_capacity: self.cfg.apply_capacity_per_turn.max(1),
                ..SimIo::default()
            };
            if let Err(error) = driver.turn(input, &mut io) {
                let id = self.nodes[k].id;
                self.kv_violations
                    .push(format!("node {id} fail-stopped in the simulator: {error}"));
                self.capture_violation_trace();
                self.crash(id);
                return;
            }
            // Work the state machine side gave back is handed over by the next turn at
            // once (it has just taken a batch: room again), so applying is not delayed
            // by a tick; requests a backed-up driver left wait for a later event.
            let apply_waiting = driver.backlog().1 > 0;
            let backed_up = driver.is_backed_up();
            self.after_turn(k, io);
            if apply_waiting {
                continue;
            }
            if self.nodes[k].input.is_empty() || backed_up {
                break;
            }
        }
        let node = &mut self.nodes[k];
        let Some(raft) = node.driver.as_ref().map(NodeDriver::core) else {
            return;
        };
        let (role, term, commit) = (raft.role(), raft.term(), raft.commit_index());
        self.checker
            .after_step(node.id, &mut node.watch, role, term, commit);
        if !self.checker.violations.is_empty()
            || !self.history.violations.is_empty()
            || !self.kv_violations.is_empty()
        {
            self.capture_violation_trace();
        }
    }

    /// Carries out one turn's I/O: the checker sees every persist action, messages go
    /// on the network, committed entries and reads reach the state machine, staged log
    /// writes are written and their fsync scheduled.
    fn after_turn(&mut self, k: usize, io: SimIo) {
        let id = self.nodes[k].id;
        self.check_published_lease(k, &io);
        for change in &io.roles {
            self.trace_event(format!(
                "node {id} is {:?} in term {} (leader {:?})",
                change.role, change.term, change.leader
            ));
        }
        for action in &io.persists {
            let node = &mut self.nodes[k];
            self.checker.on_persist(id, &mut node.watch, action);
        }
        for message in io.messages {
            self.send(message);
        }
        for work in io.work {
            self.apply_work(k, work);
        }
        for job in io.housekeeping {
            self.housekeeping(k, job);
        }
        let storage = self.nodes[k].storage_mut();
        if storage.has_unwritten() {
            storage.write_staged();
            let latency = self
                .rng
                .gen_range(self.cfg.min_fsync_us..=self.cfg.max_fsync_us);
            let node = &mut self.nodes[k];
            let done_at = node.fsync_free_at_us.max(self.now_us) + latency;
            node.fsync_free_at_us = done_at;
            let incarnation = node.incarnation;
            self.schedule(
                done_at - self.now_us,
                Event::FsyncDone {
                    node: k,
                    incarnation,
                },
            );
        }
    }

    /// What reads served off the driver rely on, checked when a turn's output is about
    /// to leave the node: no lease is published by a node that is not leader or that
    /// hands leadership over (TimeoutNow), and the published required index covers
    /// every entry handed to the state machine.
    fn check_published_lease(&mut self, k: usize, io: &SimIo) {
        let node = &self.nodes[k];
        let Some(grant) = node.local_reads.lease.load() else {
            return;
        };
        let id = node.id;
        let mut problems = Vec::new();
        if node.core().map(RaftNode::role) != Some(Role::Leader) {
            problems.push(format!("node {id} publishes a lease while not leader"));
        }
        if io
            .messages
            .iter()
            .any(|message| matches!(message.body, MessageBody::TimeoutNow))
        {
            problems.push(format!(
                "node {id} publishes a lease while sending TimeoutNow"
            ));
        }
        let handed_through = io
            .work
            .iter()
            .filter_map(|work| match work {
                ApplyWork::Entries { entries, .. } => entries.last().map(|entry| entry.index),
                _ => None,
            })
            .max();
        if handed_through.is_some_and(|index| index > grant.required_index) {
            problems.push(format!(
                "node {id} hands entries through {handed_through:?} to apply but publishes \
                 required index {}",
                grant.required_index
            ));
        }
        if !problems.is_empty() {
            self.kv_violations.extend(problems);
            self.capture_violation_trace();
        }
    }

    /// What the runtime's snapshot thread does after a snapshot: delete covered WAL
    /// segments and old snapshot files (inline here, in event order).
    fn housekeeping(&mut self, k: usize, job: Housekeeping) {
        let node = &mut self.nodes[k];
        let Some(driver) = node.driver.as_mut() else {
            return;
        };
        let store = driver.snapshot_store().clone();
        let result = driver
            .log_mut()
            .compact_prefix(job.compact_wal_through)
            .map_err(|error| error.to_string())
            .and_then(|()| {
                store
                    .retain_newest(job.keep_snapshot_files)
                    .map(|_| ())
                    .map_err(|error| error.to_string())
            });
        if let Err(error) = result {
            self.kv_violations
                .push(format!("node {}: housekeeping failed: {error}", k + 1));
        }
    }

    fn apply_work(&mut self, k: usize, work: ApplyWork<KvResponse>) {
        match work {
            ApplyWork::Entries { entries, replies } => self.apply_entries(k, entries, replies),
            other => {
                let Some(applier) = self.nodes[k].applier.as_mut() else {
                    return;
                };
                match applier.handle(other) {
                    Ok(outcome) => {
                        self.stats.lease_reads += outcome.reads_lease;
                        let node = &mut self.nodes[k];
                        if let Some(index) = outcome.applied_through {
                            // A snapshot from the leader replaced the state.
                            self.stats.kv.snapshots_installed += 1;
                            node.applied_index = index;
                            node.input.note_applied(index);
                        }
                        if let Some(job) = outcome.snapshot {
                            node.pending_snapshot = Some(job);
                            let incarnation = node.incarnation;
                            let delay = self.rng.gen_range(100..20_000);
                            self.schedule(
                                delay,
                                Event::SnapshotWrite {
                                    node: k,
                                    incarnation,
                                },
                            );
                        }
                    }
                    Err(error) => self
                        .kv_violations
                        .push(format!("node {} state machine failed: {error}", k + 1)),
                }
            }
        }
    }

    /// Applies committed entries through the node's applier. A batch is applied in
    /// pieces that end at each CAS, so the simulator can tell (from the state right
    /// after it) whether that CAS swapped: the history records only writes that took
    /// effect.
    fn apply_entries(
        &mut self,
        k: usize,
        entries: Vec<Entry>,
        replies: Vec<(u64, ReplyTo<KvResponse>)>,
    ) {
        let id = self.nodes[k].id;
        let limits = KvLimits::default();
        let mut replies = replies.into_iter().peekable();
        let mut piece = Vec::new();
        let n_entries = entries.len();
        for (position, entry) in entries.into_iter().enumerate() {
            self.checker.on_apply(id, &entry);
            let mut cas = None;
            if entry.kind == EntryKind::Normal {
                if let Ok(request) = decode_request(&entry.data, &limits) {
                    let session = request.session;
                    match request.command {
                        Command::Set { key, value } => {
                            self.note_register_write(key, value, entry.index, session)
                        }
                        Command::MSet { pairs } => {
                            for (key, value) in pairs {
                                self.note_register_write(key, value, entry.index, session);
                            }
                        }
                        Command::Cas { key, new, .. } => {
                            cas = Some((key.to_vec(), new.to_vec(), session));
                        }
                        _ => {}
                    }
                }
            }
            let index = entry.index;
            piece.push(entry);
            if cas.is_none() && position + 1 < n_entries {
                continue;
            }
            let mut piece_replies = Vec::new();
            while replies
                .peek()
                .is_some_and(|(reply_index, _)| *reply_index <= index)
            {
                if let Some(reply) = replies.next() {
                    piece_replies.push(reply);
                }
            }
            let work = ApplyWork::Entries {
                entries: std::mem::take(&mut piece),
                replies: piece_replies,
            };
            let Some(applier) = self.nodes[k].applier.as_mut() else {
                return;
            };
            if let Err(error) = applier.handle(work) {
                self.kv_violations
                    .push(format!("node {id} state machine failed: {error}"));
                return;
            }
            if let Some((key, new, session)) = cas {
                let swapped = applier
                    .state_machine()
                    .get(&key)
                    .is_some_and(|value| value.as_ref() == new.as_slice());
                if swapped {
                    self.note_register_write(&key, &new, index, session);
                }
            }
            let node = &mut self.nodes[k];
            node.applied_index = index;
            node.input.note_applied(index);
        }
    }

    /// Records the log index of a register write (the first one for its value; a later
    /// entry with the same value must be the same client request, retried).
    fn note_register_write(
        &mut self,
        key: &[u8],
        value: &[u8],
        index: u64,
        session: Option<ClientSession>,
    ) {
        let (Some(_), Some(value)) = (parse_register_key(key), parse_register_value(value)) else {
            return;
        };
        self.history.note_committed_write(value, index, session);
    }

    fn send(&mut self, message: Message) {
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += message.body.size_bytes();
        self.stats.payload_bytes_sent += message.body.payload_bytes();
        *self
            .stats
            .messages_by_kind
            .entry(message.body.kind_name())
            .or_default() += 1;
        if matches!(&message.body, MessageBody::AppendEntriesResponse(response) if !response.success)
        {
            self.stats.rejected_appends += 1;
        }
        if self.net.drop_probability > 0.0 && self.rng.gen_bool(self.net.drop_probability) {
            return;
        }
        let copies = if self.net.duplicate_probability > 0.0
            && self.rng.gen_bool(self.net.duplicate_probability)
        {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self
                .rng
                .gen_range(self.cfg.min_delay_us..=self.cfg.max_delay_us);
            if self.net.long_delay_probability > 0.0
                && self.rng.gen_bool(self.net.long_delay_probability)
            {
                delay += self.rng.gen_range(0..=self.net.long_delay_max_us);
            }
            self.schedule(delay, Event::Deliver(message.clone()));
        }
    }

    // ----- clients ----------------------------------------------------------------

    fn clients_may_start_ops(&self) -> bool {
        match self.faults_ended_at_us {
            Some(ended) => self.now_us < ended + self.cfg.liveness_bound_us / 2,
            None => true,
        }
    }

    fn fresh_value(&mut self) -> u64 {
        let value = self.next_write_value;
        self.next_write_value += 1;
        value
    }

    /// A random operation for an unscripted client.
    fn random_op(&mut self, client: usize) -> ClientOpKind {
        let n_keys = self.cfg.n_keys.max(1);
        let key = self.rng.gen_range(0..n_keys);
        match self.rng.gen_range(0..100) {
            0..=39 => ClientOpKind::Get { key },
            40..=64 => ClientOpKind::Set {
                key,
                value: self.fresh_value(),
            },
            65..=74 if n_keys >= 2 => {
                let other = (key + self.rng.gen_range(1..n_keys)) % n_keys;
                ClientOpKind::MSet {
                    pairs: [(key, self.fresh_value()), (other, self.fresh_value())],
                }
            }
            75..=84 => ClientOpKind::Incr,
            85..=94 => match self.clients[client].last_written.get(&key).copied() {
                Some(expected) => ClientOpKind::Cas {
                    key,
                    expected,
                    new: self.fresh_value(),
                },
                None => ClientOpKind::Set {
                    key,
                    value: self.fresh_value(),
                },
            },
            95..=99 => ClientOpKind::Del,
            _ => ClientOpKind::Get { key },
        }
    }

    /// Starts `kind` as `client`'s operation: records it in the history, encodes it
    /// once with the client's next session sequence (a retry resends the same bytes),
    /// and sends the first attempt.
    fn begin_op(&mut self, client: usize, kind: ClientOpKind) {
        let now = self.now_us;
        let history_ops = match &kind {
            ClientOpKind::Set { key, value } => {
                vec![self
                    .history
                    .invoke(client, *key, OperationKind::Write { value: *value }, now)]
            }
            ClientOpKind::MSet { pairs } => pairs
                .iter()
                .map(|(key, value)| {
                    self.history
                        .invoke(client, *key, OperationKind::Write { value: *value }, now)
                })
                .collect(),
            ClientOpKind::Get { key } => {
                vec![self.history.invoke(client, *key, OperationKind::Read, now)]
            }
            ClientOpKind::Cas { key, new, .. } => {
                vec![self
                    .history
                    .invoke(client, *key, OperationKind::Write { value: *new }, now)]
            }
            ClientOpKind::Incr | ClientOpKind::Del => Vec::new(),
        };
        let read_only = matches!(kind, ClientOpKind::Get { .. });
        let state = &mut self.clients[client];
        let session = (!read_only).then(|| {
            state.last_sequence += 1;
            ClientSession {
                client_id: state.client_id,
                sequence: state.last_sequence,
            }
        });
        let request = encode_client_op(&kind, client, session);
        let serial = state.next_serial;
        state.next_serial += 1;
        state.op = Some(ClientOp {
            kind,
            history_ops,
            request,
            read_only,
            retried: false,
            serial,
        });
        self.send_attempt(client);
    }

    /// Sends the current operation to the client's target node.
    fn send_attempt(&mut self, client: usize) {
        let n = self.nodes.len();
        let k = self.clients[client].target;
        if !self.nodes[k].is_up() {
            self.clients[client].target = self.rng.gen_range(0..n);
            self.resend_soon(client);
            return;
        }
        let Some(op) = self.clients[client].op.as_ref() else {
            return;
        };
        let serial = op.serial;
        let tag = ((client as u64) << 32) | serial;
        let reply = ReplyTo::new(tag, self.reply_tx.clone());
        if op.read_only && self.cfg.local_reads > 0.0 && self.rng.gen_bool(self.cfg.local_reads) {
            let query = op.request.clone();
            if let Some(response) = self.try_local_read(k, &query) {
                let state = &mut self.clients[client];
                state.attempt_on = Some((k, self.nodes[k].incarnation));
                state.attempts += 1;
                reply.send(Ok(response));
                return;
            }
        }
        let Some(op) = self.clients[client].op.as_ref() else {
            return;
        };
        let submission = if op.read_only {
            Submission::Read {
                query: op.request.clone(),
                reply,
            }
        } else {
            Submission::Propose {
                command: op.request.clone(),
                reply,
            }
        };
        let incarnation = self.nodes[k].incarnation;
        let state = &mut self.clients[client];
        state.attempt_on = Some((k, incarnation));
        state.attempts += 1;
        let attempt = state.attempts;
        self.nodes[k].input.requests.push(Request::One(submission));
        let timeout = self.cfg.client_timeout_us;
        self.schedule(timeout, Event::ClientTimeout { client, attempt });
        self.process(k);
    }

    /// A read as a client I/O thread of node `k` would serve it: the lease grant the
    /// driver published, the view the applier published, the node's own clock (it runs
    /// on while the driver is stalled). `None`: refused, the read goes to the driver.
    fn try_local_read(&mut self, k: usize, query: &[u8]) -> Option<KvResponse> {
        let node = &self.nodes[k];
        if !node.is_up() {
            return None;
        }
        let grant = node.local_reads.lease.load();
        let view = node.local_reads.views.latest();
        let applied_through = view.as_ref().map(|view| view.applied_through);
        let verdict = match self.cfg.local_read_check {
            LocalReadCheck::Exact => judge_local_read(grant, applied_through, node.ticks),
            LocalReadCheck::IgnoreExpiry => judge_local_read(grant, applied_through, 0),
            LocalReadCheck::IgnoreAppliedIndex => {
                judge_local_read(grant, applied_through.map(|_| u64::MAX), node.ticks)
            }
        };
        if verdict == LocalRead::ViewBehind {
            node.local_reads.views.want();
        }
        let served = match (verdict, &view) {
            (LocalRead::Serve, Some(view)) => view
                .view
                .downcast_ref::<KvReadView>()
                .map(|kv| kv.query_encoded(query, &KvLimits::default())),
            _ => None,
        };
        let id = node.id;
        if served.is_some() {
            self.stats.local_reads_served += 1;
            self.trace_event(format!(
                "node {id} serves a read off its driver at tick {} from view {:?} ({grant:?})",
                self.nodes[k].ticks, applied_through
            ));
        } else {
            self.stats.local_reads_refused += 1;
        }
        served
    }

    /// Sends the current operation again (same session) after a short pause.
    fn resend_soon(&mut self, client: usize) {
        let state = &mut self.clients[client];
        state.attempt_on = None;
        if let Some(op) = state.op.as_mut() {
            op.retried = true;
        }
        let delay = self.rng.gen_range(1_000..10_000);
        self.schedule(delay, Event::Client(client));
    }

    fn client_step(&mut self, client: usize) {
        if self.clients[client].op.is_none() {
            if self.clients[client].scripted || !self.clients_may_start_ops() {
                return;
            }
            let kind = self.random_op(client);
            self.begin_op(client, kind);
            return;
        }
        if self.clients[client].attempt_on.is_none() {
            self.send_attempt(client);
        }
    }

    /// Hands every reply on the clients' channel to its client.
    fn route_replies(&mut self) {
        while let Ok(reply) = self.reply_rx.try_recv() {
            let client = (reply.tag >> 32) as usize;
            let serial = reply.tag & 0xffff_ffff;
            let current = self.clients[client].op.as_ref().map(|op| op.serial);
            if current != Some(serial) {
                continue; // an earlier operation's late attempt
            }
            match reply.result {
                Ok(response) => self.complete_op(client, response),
                Err(ClientError::NotLeader { leader }) => {
                    let n = self.nodes.len();
                    self.clients[client].target = match leader {
                        Some(leader) if (leader as usize) <= n => leader as usize - 1,
                        _ => self.rng.gen_range(0..n),
                    };
                    self.resend_soon(client);
                }
                Err(_) => {
                    // Unknown outcome, not committed, stopped: the same request again,
                    // elsewhere; its session makes a second application impossible.
                    self.clients[client].target = self.rng.gen_range(0..self.nodes.len());
                    self.resend_soon(client);
                }
            }
        }
    }

    /// A state-machine answer to the client's current operation.
    fn complete_op(&mut self, client: usize, response: KvResponse) {
        let Some(op) = self.clients[client].op.take() else {
            return;
        };
        let now = self.now_us;
        self.stats.kv.ops += 1;
        if op.retried {
            self.stats.kv.retried += 1;
        }
        let unexpected = |sim: &mut Simulation, what: &str| {
            sim.kv_violations.push(format!(
                "client {client}: {what}: {:?} answered {response:?}",
                op.kind
            ));
        };
        match (&op.kind, &response) {
            (ClientOpKind::Set { .. } | ClientOpKind::MSet { .. }, KvResponse::Ok) => {
                let values: Vec<(u64, u64)> = match &op.kind {
                    ClientOpKind::Set { key, value } => vec![(*key, *value)],
                    ClientOpKind::MSet { pairs } => pairs.to_vec(),
                    _ => Vec::new(),
                };
                for ((key, value), history_op) in values.into_iter().zip(&op.history_ops) {
                    self.complete_history_write(*history_op, value);
                    self.clients[client].last_written.insert(key, value);
                }
                self.stats.writes_completed += 1;
            }
            (ClientOpKind::Get { .. }, KvResponse::Bulk(value)) => {
                let value = match value {
                    None => Some(0),
                    Some(bytes) => parse_register_value(bytes),
                };
                match (value, op.history_ops.first()) {
                    (Some(value), Some(history_op)) => {
                        self.history.complete_read(*history_op, value, now);
                        self.stats.reads_completed += 1;
                    }
                    _ => unexpected(self, "a register read returned no register value"),
                }
            }
            (ClientOpKind::Incr, KvResponse::Integer(counter)) => {
                let state = &mut self.clients[client];
                let expected = state.incr_acknowledged + 1;
                if *counter > expected {
                    self.stats.kv.applied_twice += (*counter - expected) as u64;
                    unexpected(self, "an INCR was applied more than once");
                } else if *counter < expected {
                    unexpected(self, "a counter went backwards");
                }
                self.clients[client].incr_acknowledged = *counter;
            }
            (ClientOpKind::Cas { key, new, .. }, KvResponse::Integer(swapped)) => {
                if *swapped == 1 {
                    if let Some(history_op) = op.history_ops.first() {
                        self.complete_history_write(*history_op, *new);
                    }
                    self.clients[client].last_written.insert(*key, *new);
                }
                // A CAS that did not swap wrote nothing: its history write stays
                // uncompleted and is never committed, so it constrains nothing.
            }
            (ClientOpKind::Del, KvResponse::Integer(_)) => {}
            _ => unexpected(self, "an unexpected reply"),
        }
        let state = &mut self.clients[client];
        state.attempt_on = None;
        let delay = self.rng.gen_range(0..5_000);
        self.schedule(delay, Event::Client(client));
    }

    fn complete_history_write(&mut self, history_op: usize, value: u64) {
        match self.history.committed_write_index.get(&value).copied() {
            Some(index) => self.history.complete_write(history_op, index, self.now_us),
            None => self.kv_violations.push(format!(
                "write of value {value} acknowledged but never applied"
            )),
        }
    }

    fn check_liveness(&mut self) {
        let Some(ended) = self.faults_ended_at_us else {
            return;
        };
        if self.leader().is_none() {
            self.liveness_failures.push(format!(
                "Liveness: no leader {}us after faults ended at {ended}us",
                self.now_us - ended
            ));
        }
        for (client, state) in self.clients.iter().enumerate() {
            if let Some(op) = &state.op {
                self.liveness_failures.push(format!(
                    "Liveness: client {client} operation {:?} (serial {}) still pending at the end",
                    op.kind, op.serial
                ));
            }
        }
        let completed_after_heal = self
            .history
            .operations
            .iter()
            .filter(|op| op.invoked_at_us >= ended && op.completed_at_us.is_some())
            .count();
        if self.cfg.n_clients > 0 && completed_after_heal == 0 {
            self.liveness_failures
                .push("Liveness: no client operation completed after faults ended".to_string());
        }
        // Every node converged on the same applied state.
        let max_commit = self
            .nodes
            .iter()
            .filter_map(SimNode::core)
            .map(|r| r.commit_index())
            .max()
            .unwrap_or(0);
        let members = self
            .leader()
            .and_then(|leader| self.node(leader))
            .map(|raft| raft.configuration().members())
            .unwrap_or_default();
        for node in self.nodes.iter().filter(|node| members.contains(&node.id)) {
            if node.applied_index < max_commit {
                self.liveness_failures.push(format!(
                    "Liveness: node {} applied only {} of {max_commit} committed entries",
                    node.id, node.applied_index
                ));
            }
        }
        if !self.liveness_failures.is_empty() && self.violation_trace.is_none() {
            self.capture_violation_trace();
        }
    }

    // ----- nemesis ----------------------------------------------------------------

    fn nemesis(&mut self) {
        let faults = self.cfg.faults.clone();
        let n = self.nodes.len();
        let choice = self.rng.gen_range(0..100);
        match choice {
            0..=17 => self.heal(),
            18..=32 if faults.partitions => {
                let mut ids: Vec<NodeId> = (1..=n as u64).collect();
                ids.shuffle(&mut self.rng);
                let size = self.rng.gen_range(1..=n / 2);
                let group = ids[..size].to_vec();
                self.partition(&group);
            }
            33..=41 if faults.partitions => {
                let n_links = self.rng.gen_range(1..=3);
                for _ in 0..n_links {
                    let from = self.rng.gen_range(1..=n as u64);
                    let to = self.rng.gen_range(1..=n as u64);
                    if from != to {
                        self.block_link(from, to);
                    }
                }
            }
            42..=46 if faults.partitions => {
                if let Some(leader) = self.leader() {
                    self.isolate(leader);
                }
            }
            47..=54 if faults.membership_changes => {
                if let Some(leader) = self.leader() {
                    let change = self.random_membership_change(leader);
                    self.request_membership(leader, change);
                }
            }
            95..=99 => {
                if let Some(leader) = self.leader() {
                    let target = self.rng.gen_range(1..=n as u64);
                    if target != leader {
                        self.trace_event(format!("transfer leadership {leader} -> {target}"));
                        self.transfer_leadership(leader, target);
                    }
                }
            }
            65..=74 if faults.stalls => {
                let k = self.rng.gen_range(0..n);
                let victim = if self.rng.gen_bool(0.5) {
                    self.leader().map_or(k, |l| l as usize - 1)
                } else {
                    k
                };
                let duration = self.rng.gen_range(5_000..400_000);
                self.stall(victim as u64 + 1, duration);
            }
            55..=64 if faults.crashes => {
                let k = self.rng.gen_range(0..n);
                let victim = if self.rng.gen_bool(0.3) {
                    self.leader().map_or(k, |l| l as usize - 1)
                } else {
                    k
                };
                if self.nodes[victim].is_up() {
                    self.crash(victim as u64 + 1);
                    let downtime = self.rng.gen_range(10_000..400_000);
                    self.schedule(downtime, Event::Restart(victim));
                }
            }
            75..=94 if faults.message_faults => {
                let drop = *[0.0, 0.01, 0.05, 0.2].choose(&mut self.rng).unwrap_or(&0.0);
                let duplicate = *[0.0, 0.02, 0.1].choose(&mut self.rng).unwrap_or(&0.0);
                let long_delay = *[0.0, 0.05, 0.2].choose(&mut self.rng).unwrap_or(&0.0);
                self.set_unreliable(drop, duplicate, long_delay);
            }
            _ => {}
        }
    }

    // ----- tracing ----------------------------------------------------------------

    fn trace_event(&mut self, text: String) {
        self.push_trace(TraceRecord {
            at_us: self.now_us,
            what: TraceWhat::Text(text),
        });
    }

    /// Records a delivery without formatting it (formatting costs more than the step).
    fn trace_delivery(&mut self, message: &Message) {
        if !self.cfg.trace && self.cfg.trace_ring_len == 0 {
            return;
        }
        let summary = MessageSummary::of(message);
        self.push_trace(TraceRecord {
            at_us: self.now_us,
            what: TraceWhat::Deliver(summary),
        });
    }

    fn push_trace(&mut self, record: TraceRecord) {
        if self.cfg.trace {
            println!("{record}");
        }
        if self.cfg.trace_ring_len > 0 {
            if self.trace_ring.len() == self.cfg.trace_ring_len {
                self.trace_ring.pop_front();
            }
            self.trace_ring.push_back(record);
        }
    }

    fn capture_violation_trace(&mut self) {
        if self.violation_trace.is_some() {
            return;
        }
        let mut text = String::new();
        for record in &self.trace_ring {
            let _ = writeln!(text, "{record}");
        }
        for node in &self.nodes {
            match node.core() {
                Some(raft) => {
                    let _ = writeln!(
                        text,
                        "node {}: {:?} term {} commit {} last {} persisted {} applied {}",
                        node.id,
                        raft.role(),
                        raft.term(),
                        raft.commit_index(),
                        raft.log().last_index(),
                        raft.log().persisted(),
                        node.applied_index
                    );
                }
                None => {
                    let _ = writeln!(text, "node {}: down", node.id);
                }
            }
        }
        self.violation_trace = Some(text);
    }
}

/// One traced event; formatted only when printed.
struct TraceRecord {
    at_us: u64,
    what: TraceWhat,
}

enum TraceWhat {
    Text(String),
    Deliver(MessageSummary),
}

/// The fields of a message worth showing in a trace, copied cheaply.
struct MessageSummary {
    from: NodeId,
    to: NodeId,
    term: u64,
    kind: &'static str,
    /// AppendEntries: prev index, prev term, entries, commit. Responses: success,
    /// match, rejected prev index. Votes: last index, last term, transfer/granted.
    numbers: [u64; 4],
    hint: Option<crate::raft::ConflictHint>,
}

impl MessageSummary {
    fn of(message: &Message) -> MessageSummary {
        let mut hint = None;
        let numbers = match &message.body {
            MessageBody::AppendEntries(append) => [
                append.prev_log_index,
                append.prev_log_term,
                append.entries.len() as u64,
                append.leader_commit,
            ],
            MessageBody::AppendEntriesResponse(response) => {
                hint = response.conflict;
                [
                    response.success as u64,
                    response.match_index,
                    response.rejected_prev_index,
                    0,
                ]
            }
            MessageBody::RequestVote(request) | MessageBody::PreVote(request) => [
                request.last_log_index,
                request.last_log_term,
                request.leadership_transfer as u64,
                0,
            ],
            MessageBody::RequestVoteResponse(response) | MessageBody::PreVoteResponse(response) => {
                [response.granted as u64, 0, 0, 0]
            }
            _ => [0; 4],
        };
        MessageSummary {
            from: message.from,
            to: message.to,
            term: message.term,
            kind: message.body.kind_name(),
            numbers,
            hint,
        }
    }
}

impl std::fmt::Display for TraceRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>9}us  ", self.at_us)?;
        let summary = match &self.what {
            TraceWhat::Text(text) => return write!(f, "{text}"),
            TraceWhat::Deliver(summary) => summary,
        };
        write!(
            f,
            "deliver {} -> {} term {}: {}",
            summary.from, summary.to, summary.term, summary.kind
        )?;
        let [a, b, c, d] = summary.numbers;
        match summary.kind {
            "AppendEntries" | "Heartbeat" => write!(f, " prev {a}/{b} entries {c} commit {d}"),
            "AppendEntriesResponse" => {
                write!(
                    f,
                    " success {} match {b} rejected {c} hint {:?}",
                    a == 1,
                    summary.hint
                )
            }
            "RequestVote" | "PreVote" => {
                write!(
                    f,
                    " last {a}/{b}{}",
                    if c == 1 { " (transfer)" } else { "" }
                )
            }
            "RequestVoteResponse" | "PreVoteResponse" => write!(f, " granted {}", a == 1),
            _ => Ok(()),
        }
    }
}

/// Runs one seed with the given cluster size and everything else default.
pub fn run_seed(seed: u64, n_nodes: usize) -> SimReport {
    Simulation::new(SimConfig::new(seed, n_nodes)).run()
}

/// Maps node ids to what they applied at `index` (for agreement tests).
pub fn applied_at(sim: &Simulation, index: u64) -> HashMap<NodeId, Entry> {
    sim.nodes
        .iter()
        .filter(|node| node.applied_index >= index)
        .filter_map(|node| {
            node.core()
                .and_then(|raft| raft.log().entry(index).cloned())
                .map(|e| (node.id, e))
        })
        .collect()
}

/// What one driver turn asked the simulator to do.
#[derive(Default)]
struct SimIo {
    messages: Vec<Message>,
    housekeeping: Vec<Housekeeping>,
    work: Vec<ApplyWork<KvResponse>>,
    /// Work items taken per turn (`SimConfig::apply_capacity_per_turn`).
    apply_capacity: usize,
    persists: Vec<PersistAction>,
    roles: Vec<RoleState>,
}

impl NodeIo<KvResponse> for SimIo {
    fn send(&mut self, messages: Vec<Message>) {
        self.messages.extend(messages);
    }

    fn apply(
        &mut self,
        work: ApplyWork<KvResponse>,
    ) -> Result<Option<ApplyWork<KvResponse>>, NodeError> {
        if self.work.len() >= self.apply_capacity {
            return Ok(Some(work));
        }
        self.work.push(work);
        Ok(None)
    }

    fn housekeeping(&mut self, job: Housekeeping) -> Result<(), NodeError> {
        self.housekeeping.push(job);
        Ok(())
    }

    fn observe_persist(&mut self, action: &PersistAction) {
        self.persists.push(action.clone());
    }

    fn observe_role(&mut self, change: &RoleState) {
        self.roles.push(*change);
    }
}

impl Client {
    /// Client number `index`: a session id no other client has (never 0).
    fn new(index: usize, target: usize, scripted: bool) -> Client {
        Client {
            scripted,
            target,
            client_id: 0x5EED_0000 + index as u64 + 1,
            last_sequence: 0,
            op: None,
            next_serial: 1,
            attempts: 0,
            attempt_on: None,
            incr_acknowledged: 0,
            last_written: HashMap::new(),
        }
    }
}

/// The log payload of a client operation (the KV request encoding, with its session).
fn encode_client_op(kind: &ClientOpKind, client: usize, session: Option<ClientSession>) -> Bytes {
    let text = |value: u64| value.to_string().into_bytes();
    let counter_key = format!("c:{client}").into_bytes();
    let scratch_key = format!("d:{client}").into_bytes();
    let (a, b, c, d) = match kind {
        ClientOpKind::Set { key, value } => {
            (register_key(*key), text(*value), Vec::new(), Vec::new())
        }
        ClientOpKind::MSet { pairs } => (
            register_key(pairs[0].0),
            text(pairs[0].1),
            register_key(pairs[1].0),
            text(pairs[1].1),
        ),
        ClientOpKind::Get { key } => (register_key(*key), Vec::new(), Vec::new(), Vec::new()),
        ClientOpKind::Cas { key, expected, new } => {
            (register_key(*key), text(*expected), text(*new), Vec::new())
        }
        ClientOpKind::Incr => (counter_key, Vec::new(), Vec::new(), Vec::new()),
        ClientOpKind::Del => (scratch_key, Vec::new(), Vec::new(), Vec::new()),
    };
    let command = match kind {
        ClientOpKind::Set { .. } => Command::Set { key: &a, value: &b },
        ClientOpKind::MSet { .. } => Command::MSet {
            pairs: vec![(&a, &b), (&c, &d)],
        },
        ClientOpKind::Get { .. } => Command::Get { key: &a },
        ClientOpKind::Cas { .. } => Command::Cas {
            key: &a,
            expected: &b,
            new: &c,
        },
        ClientOpKind::Incr => Command::Incr { key: &a },
        ClientOpKind::Del => Command::Del { keys: vec![&a] },
    };
    let mut out = Vec::new();
    if let Err(error) = encode_request(session, &command, &KvLimits::default(), &mut out) {
        unreachable!("a simulated client's request always encodes: {error}");
    }
    Bytes::from(out)
}
