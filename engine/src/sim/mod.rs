//! A deterministic cluster simulator running the real Raft core.
//!
//! Single-threaded, simulated time in microseconds, every random choice drawn from one
//! ChaCha RNG seeded by [`SimConfig::seed`]: a seed replays exactly. It runs N
//! [`RaftNode`]s over a simulated network (drop, delay, duplication, reordering,
//! symmetric and one-way partitions), each node's log in the real `tally-wal` over its
//! fault-injecting in-memory disk ([`storage::WalStorage`]: a crash loses unsynced
//! writes and may tear the last one at any byte), per-node clock drift (each
//! node ticks at its own rate), and clients that write and read registers throughout.
//!
//! After every step the [`checker::Checker`] verifies Election Safety, Leader
//! Append-Only, Log Matching, Leader Completeness, State Machine Safety, commit index
//! monotonicity and that committed entries survive on later leaders; the
//! [`history::History`] checks that served reads and writes are linearizable. Once
//! faults stop, the run checks liveness: a leader emerges and client operations
//! complete within a bound. A violation keeps the seed and the last events in a ring
//! buffer (or the full trace with `trace`).

pub mod checker;
pub mod history;
pub mod storage;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::raft::{
    Configuration, Entry, EntryKind, Message, MessageBody, NodeId, ProposeError, RaftConfig,
    RaftNode, ReadError, Ready, Role,
};
use checker::{Checker, NodeWatch};
use history::{History, OperationKind};
use storage::{SimStorage, WalStorage};

/// Which faults a run injects while faults are active.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    pub message_faults: bool,
    pub partitions: bool,
    pub crashes: bool,
    /// Leaders are asked to change the voter set (joint consensus).
    pub membership_changes: bool,
    /// Mean time between nemesis actions.
    pub nemesis_interval_us: u64,
}

impl FaultConfig {
    pub fn all() -> FaultConfig {
        FaultConfig {
            message_faults: true,
            partitions: true,
            crashes: true,
            membership_changes: true,
            nemesis_interval_us: 150_000,
        }
    }
    pub fn none() -> FaultConfig {
        FaultConfig {
            message_faults: false,
            partitions: false,
            crashes: false,
            membership_changes: false,
            nemesis_interval_us: 150_000,
        }
    }
}

/// Parameters of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub n_nodes: usize,
    /// Nodes 1..=initial_voters form the initial configuration; the others start as
    /// non-members until a membership change adds them.
    pub initial_voters: usize,
    /// Nominal tick interval; each node's real interval is this divided by its clock rate.
    pub tick_us: u64,
    pub election_timeout_ticks: u64,
    pub heartbeat_interval_ticks: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub lease_reads: bool,
    /// The drift bound the nodes assume (RaftConfig::max_clock_drift).
    pub assumed_max_clock_drift: f64,
    /// The real spread of clock rates: each node's rate is drawn from [1 - this, 1].
    pub actual_max_clock_drift: f64,
    pub faults: FaultConfig,
    /// Faults are injected during this first part of the run (random mode only).
    pub fault_duration_us: u64,
    /// After faults stop, a leader and completed client operations must appear within this.
    pub liveness_bound_us: u64,
    pub n_clients: usize,
    pub n_keys: u64,
    pub client_timeout_us: u64,
    /// Message delay range in normal conditions.
    pub min_delay_us: u64,
    pub max_delay_us: u64,
    /// Fsync latency range.
    pub min_fsync_us: u64,
    pub max_fsync_us: u64,
    /// Entries per AppendEntries (1 makes old-term entries travel without the new
    /// leader's no-op, which Figure 8 scenarios need).
    pub max_batch_entries: usize,
    /// AppendEntries in flight per follower.
    pub max_inflight_messages: usize,
    /// Keep the full trace (and print it as it happens).
    pub trace: bool,
    /// Events kept for a violation report when not tracing fully.
    pub trace_ring_len: usize,
}

impl SimConfig {
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
            trace: false,
            trace_ring_len: 200,
        }
    }

    /// A quiet cluster for scenario tests: no nemesis, no clients.
    pub fn quiet(seed: u64, n_nodes: usize) -> SimConfig {
        SimConfig {
            faults: FaultConfig::none(),
            n_clients: 0,
            ..SimConfig::new(seed, n_nodes)
        }
    }
}

#[derive(Clone, Debug)]
enum Event {
    Tick {
        node: usize,
        incarnation: u64,
    },
    Deliver(Message),
    FsyncDone {
        node: usize,
        incarnation: u64,
        seq: u64,
    },
    Client(usize),
    ClientTimeout {
        client: usize,
        op: usize,
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
pub struct SimNode {
    pub id: NodeId,
    pub raft: Option<RaftNode>,
    pub storage: Box<dyn SimStorage>,
    pub incarnation: u64,
    /// Real microseconds between this node's ticks (its clock rate).
    pub tick_interval_us: u64,
    fsync_free_at_us: u64,
    /// The register state machine: key -> value (0 = never written).
    pub registers: BTreeMap<u64, u64>,
    pub applied_index: u64,
    /// Reads declared safe, waiting for the state machine to reach their index.
    ready_reads: Vec<(u64, u64)>,
    pub watch: NodeWatch,
}

#[derive(Clone, Copy, Debug)]
enum Attempt {
    None,
    Write {
        node: usize,
        incarnation: u64,
        index: u64,
    },
    Read {
        node: usize,
        incarnation: u64,
        request_id: u64,
    },
}

struct Client {
    /// Driven by a test through `client_write`/`client_read`: never starts operations itself.
    scripted: bool,
    target: usize,
    op: Option<usize>,
    attempt: Attempt,
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

/// Message and byte counts, for budgets in tests.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub messages_by_kind: BTreeMap<&'static str, u64>,
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub payload_bytes_sent: u64,
    pub events: u64,
    pub writes_completed: u64,
    pub reads_completed: u64,
    pub lease_reads: u64,
    pub crashes: u64,
    /// AppendEntries rejections sent (each costs a round trip of log repair).
    pub rejected_appends: u64,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct SimReport {
    pub seed: u64,
    pub violations: Vec<String>,
    /// Readable trace of the events before the first violation (empty if none).
    pub trace: String,
    pub stats: SimStats,
    pub simulated_us: u64,
}

/// The simulator. See the module docs.
pub struct Simulation {
    pub cfg: SimConfig,
    rng: ChaCha8Rng,
    pub now_us: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_order: u64,
    pub nodes: Vec<SimNode>,
    configuration: Configuration,
    net: NetworkState,
    clients: Vec<Client>,
    pub checker: Checker,
    pub history: History,
    pub stats: SimStats,
    trace_ring: VecDeque<TraceRecord>,
    violation_trace: Option<String>,
    faults_active: bool,
    faults_ended_at_us: Option<u64>,
    next_write_value: u64,
    next_request_id: u64,
    liveness_failures: Vec<String>,
}

fn encode_write(key: u64, value: u64) -> Bytes {
    let mut data = BytesMut::with_capacity(16);
    data.put_u64_le(key);
    data.put_u64_le(value);
    data.freeze()
}

fn decode_write(entry: &Entry) -> Option<(u64, u64)> {
    if entry.kind != EntryKind::Normal || entry.data.len() != 16 {
        return None;
    }
    let mut data = &entry.data[..];
    Some((data.get_u64_le(), data.get_u64_le()))
}

impl Simulation {
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
                raft: None,
                storage: Box::new(WalStorage::new()),
                incarnation: 0,
                tick_interval_us,
                fsync_free_at_us: 0,
                registers: BTreeMap::new(),
                applied_index: 0,
                ready_reads: Vec::new(),
                watch: NodeWatch::default(),
            });
        }
        let n = cfg.n_nodes;
        let clients = (0..cfg.n_clients)
            .map(|_| Client {
                scripted: false,
                target: rng.gen_range(0..n),
                op: None,
                attempt: Attempt::None,
            })
            .collect();
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
            checker: Checker::default(),
            history: History::default(),
            stats: SimStats::default(),
            trace_ring: VecDeque::new(),
            violation_trace: None,
            faults_active: false,
            faults_ended_at_us: None,
            next_write_value: 1,
            next_request_id: 1,
            liveness_failures: Vec::new(),
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
        if faults.message_faults || faults.partitions || faults.crashes || faults.membership_changes
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

    pub fn report(self) -> SimReport {
        let mut violations = self.checker.violations.clone();
        violations.extend(self.history.violations.iter().cloned());
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

    pub fn node(&self, id: NodeId) -> Option<&RaftNode> {
        self.nodes[id as usize - 1].raft.as_ref()
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes[id as usize - 1].raft.is_some()
    }

    /// The live leader of the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|node| node.raft.as_ref())
            .filter(|raft| raft.role() == Role::Leader)
            .max_by_key(|raft| raft.term())
            .map(|raft| raft.id())
    }

    /// Leaders whose followers could still reach them: leaders not isolated from a majority.
    pub fn leaders(&self) -> Vec<(NodeId, u64)> {
        self.nodes
            .iter()
            .filter_map(|node| node.raft.as_ref())
            .filter(|raft| raft.role() == Role::Leader)
            .map(|raft| (raft.id(), raft.term()))
            .collect()
    }

    pub fn max_term(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|node| node.raft.as_ref())
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
        if self.nodes[k].raft.is_none() {
            return;
        }
        self.stats.crashes += 1;
        let node = &mut self.nodes[k];
        node.raft = None;
        node.incarnation += 1;
        node.storage.crash(&mut self.rng);
        node.registers.clear();
        node.applied_index = 0;
        node.ready_reads.clear();
        node.fsync_free_at_us = 0;
        self.trace_event(format!("crash node {id}"));
        // Clients waiting on this node: writes become indeterminate, reads retry.
        for client in 0..self.clients.len() {
            match self.clients[client].attempt {
                Attempt::Write { node, .. } if node == k => self.abandon_op(client),
                Attempt::Read { node, .. } if node == k => self.retry_client(client),
                _ => {}
            }
        }
    }

    /// Restarts a crashed node from its durable storage.
    pub fn restart(&mut self, id: NodeId) {
        let k = id as usize - 1;
        if self.nodes[k].raft.is_some() {
            return;
        }
        self.trace_event(format!("restart node {id}"));
        self.start_node(k);
    }

    /// Proposes one command directly on node `id`.
    pub fn propose(&mut self, id: NodeId, data: Bytes) -> Result<u64, ProposeError> {
        let k = id as usize - 1;
        let Some(raft) = self.nodes[k].raft.as_mut() else {
            return Err(ProposeError::NotLeader { leader_hint: None });
        };
        let range = raft.propose(vec![data])?;
        self.trace_event(format!("propose on node {id} at index {}", range.start));
        self.process(k);
        Ok(range.start)
    }

    /// Asks node `id` (a leader) to change the voters to `voters`. Returns whether the
    /// change was accepted.
    pub fn change_membership(&mut self, id: NodeId, voters: &[NodeId]) -> bool {
        let k = id as usize - 1;
        let Some(raft) = self.nodes[k].raft.as_mut() else {
            return false;
        };
        let accepted = raft
            .propose_configuration_change(voters.iter().copied(), [])
            .is_ok();
        if accepted {
            self.trace_event(format!(
                "node {id} starts membership change to voters {voters:?}"
            ));
        }
        self.process(k);
        accepted
    }

    /// Asks node `id` to transfer leadership.
    pub fn transfer_leadership(&mut self, id: NodeId, target: NodeId) -> bool {
        let k = id as usize - 1;
        let Some(raft) = self.nodes[k].raft.as_mut() else {
            return false;
        };
        let ok = raft.transfer_leadership(target).is_ok();
        self.process(k);
        ok
    }

    /// How many live nodes applied `index`, and the data they applied (None if they disagree).
    pub fn n_applied(&self, index: u64) -> usize {
        self.nodes
            .iter()
            .filter(|node| node.raft.is_some() && node.applied_index >= index)
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
                        && sim
                            .nodes
                            .iter()
                            .filter_map(|n| n.raft.as_ref())
                            .any(|raft| {
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
                        .filter_map(|node| node.raft.as_ref())
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
        self.clients.push(Client {
            scripted: true,
            target: 0,
            op: None,
            attempt: Attempt::None,
        });
        self.clients.len() - 1
    }

    /// Starts a write of a fresh unique value to `key` by `client`, sent to node `target`
    /// (redirected on NotLeader like any client). Returns the operation's history index.
    pub fn client_write(&mut self, client: usize, target: NodeId, key: u64) -> usize {
        let value = self.next_write_value;
        self.next_write_value += 1;
        self.start_client_op(client, target, key, OperationKind::Write { value })
    }

    /// Starts a read of `key` by `client` at node `target`.
    pub fn client_read(&mut self, client: usize, target: NodeId, key: u64) -> usize {
        self.start_client_op(client, target, key, OperationKind::Read)
    }

    fn start_client_op(
        &mut self,
        client: usize,
        target: NodeId,
        key: u64,
        kind: OperationKind,
    ) -> usize {
        assert!(
            self.clients[client].op.is_none(),
            "client {client} already has an operation running"
        );
        let op = self.history.invoke(client, key, kind, self.now_us);
        self.clients[client].op = Some(op);
        self.clients[client].target = target as usize - 1;
        self.clients[client].attempt = Attempt::None;
        let timeout = self.cfg.client_timeout_us;
        self.schedule(timeout, Event::ClientTimeout { client, op });
        self.client_step(client);
        op
    }

    /// Whether a client operation completed (writes: committed and applied; reads: served).
    pub fn op_completed(&self, op: usize) -> bool {
        self.history.operations[op].completed_at_us.is_some()
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
                if self.nodes[node].incarnation != incarnation || self.nodes[node].raft.is_none() {
                    return;
                }
                if let Some(raft) = self.nodes[node].raft.as_mut() {
                    raft.tick();
                }
                self.process(node);
                let interval = self.nodes[node].tick_interval_us;
                self.schedule(interval, Event::Tick { node, incarnation });
            }
            Event::Deliver(message) => {
                let to = message.to as usize - 1;
                let from = message.from as usize - 1;
                if self.net.blocked[from][to] {
                    return;
                }
                if self.nodes[to].raft.is_none() {
                    return;
                }
                self.trace_delivery(&message);
                if let Some(raft) = self.nodes[to].raft.as_mut() {
                    raft.step(message);
                }
                self.process(to);
            }
            Event::FsyncDone {
                node,
                incarnation,
                seq,
            } => {
                if self.nodes[node].incarnation != incarnation || self.nodes[node].raft.is_none() {
                    return;
                }
                self.nodes[node].storage.sync(seq);
                if let Some(raft) = self.nodes[node].raft.as_mut() {
                    raft.on_persisted(seq);
                }
                self.process(node);
            }
            Event::Client(client) => self.client_step(client),
            Event::ClientTimeout { client, op } => {
                if self.clients[client].op == Some(op) {
                    self.trace_event(format!("client {client} gives up on operation {op}"));
                    self.abandon_op(client);
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
        let recovered = node.storage.recover();
        self.checker
            .on_restart(node.id, &mut node.watch, &recovered.entries);
        let raft = RaftNode::restart(
            raft_cfg,
            self.configuration.clone(),
            recovered.hard_state,
            Default::default(),
            recovered.entries,
        )
        .expect("the simulated log restores");
        node.raft = Some(raft);
        let incarnation = node.incarnation;
        // Start the clock at a random phase.
        let phase = self.rng.gen_range(0..self.nodes[k].tick_interval_us);
        self.schedule(
            phase,
            Event::Tick {
                node: k,
                incarnation,
            },
        );
        self.process(k);
    }

    /// Carries out everything node `k`'s core asked for, then checks invariants.
    fn process(&mut self, k: usize) {
        loop {
            let Some(raft) = self.nodes[k].raft.as_mut() else {
                return;
            };
            if !raft.has_ready() {
                break;
            }
            let ready = raft.take_ready();
            self.handle_ready(k, ready);
        }
        let node = &mut self.nodes[k];
        let Some(raft) = node.raft.as_ref() else {
            return;
        };
        let (role, term, commit) = (raft.role(), raft.term(), raft.commit_index());
        self.checker
            .after_step(node.id, &mut node.watch, role, term, commit);
        if !self.checker.violations.is_empty() || !self.history.violations.is_empty() {
            self.capture_violation_trace();
        }
    }

    fn handle_ready(&mut self, k: usize, ready: Ready) {
        let id = self.nodes[k].id;
        if let Some(change) = ready.role_change {
            self.trace_event(format!(
                "node {id} is {:?} in term {} (leader {:?})",
                change.role, change.term, change.leader
            ));
        }
        if let Some(action) = ready.persist {
            let node = &mut self.nodes[k];
            self.checker.on_persist(id, &mut node.watch, &action);
            node.storage.write(&action);
            let latency = self
                .rng
                .gen_range(self.cfg.min_fsync_us..=self.cfg.max_fsync_us);
            let node = &mut self.nodes[k];
            let done_at = node.fsync_free_at_us.max(self.now_us) + latency;
            node.fsync_free_at_us = done_at;
            let incarnation = node.incarnation;
            let delay = done_at - self.now_us;
            self.schedule(
                delay,
                Event::FsyncDone {
                    node: k,
                    incarnation,
                    seq: action.seq,
                },
            );
        }
        for message in ready.messages {
            self.send(message);
        }
        if let Some(last) = ready.committed_entries.last().map(|entry| entry.index) {
            for entry in &ready.committed_entries {
                self.apply(k, entry);
            }
            if let Some(raft) = self.nodes[k].raft.as_mut() {
                raft.on_applied(last);
            }
        }
        for read in ready.reads {
            if read.via == crate::raft::ReadPath::Lease {
                self.stats.lease_reads += 1;
            }
            self.nodes[k]
                .ready_reads
                .push((read.request_id, read.read_index));
        }
        for (request_id, ReadError::NotLeader { .. }) in ready.failed_reads {
            if let Some(client) = self.client_reading(k, request_id) {
                self.retry_client(client);
            }
        }
        self.serve_reads(k);
    }

    fn apply(&mut self, k: usize, entry: &Entry) {
        let id = self.nodes[k].id;
        self.checker.on_apply(id, entry);
        debug_assert_eq!(entry.index, self.nodes[k].applied_index + 1);
        self.nodes[k].applied_index = entry.index;
        let Some((key, value)) = decode_write(entry) else {
            return;
        };
        self.nodes[k].registers.insert(key, value);
        self.history.note_committed_write(value, entry.index);
        // Complete the client write waiting for this index on this node.
        let incarnation = self.nodes[k].incarnation;
        for client in 0..self.clients.len() {
            let Attempt::Write {
                node,
                incarnation: inc,
                index,
            } = self.clients[client].attempt
            else {
                continue;
            };
            if node != k || inc != incarnation || index != entry.index {
                continue;
            }
            let Some(op) = self.clients[client].op else {
                continue;
            };
            let OperationKind::Write { value: wanted } = self.history.operations[op].kind else {
                continue;
            };
            if wanted == value {
                self.history.complete_write(op, entry.index, self.now_us);
                self.stats.writes_completed += 1;
                self.finish_op(client);
            } else {
                // Another entry won this index: ours was never committed anywhere, so
                // proposing the same value again keeps values unique in the log.
                self.retry_client(client);
            }
        }
    }

    fn serve_reads(&mut self, k: usize) {
        let applied = self.nodes[k].applied_index;
        let ready: Vec<(u64, u64)> = self.nodes[k]
            .ready_reads
            .iter()
            .copied()
            .filter(|(_, index)| *index <= applied)
            .collect();
        if ready.is_empty() {
            return;
        }
        self.nodes[k]
            .ready_reads
            .retain(|(_, index)| *index > applied);
        for (request_id, _) in ready {
            let Some(client) = self.client_reading(k, request_id) else {
                continue;
            };
            let Some(op) = self.clients[client].op else {
                continue;
            };
            let key = self.history.operations[op].key;
            let value = self.nodes[k].registers.get(&key).copied().unwrap_or(0);
            self.history.complete_read(op, value, self.now_us);
            self.stats.reads_completed += 1;
            self.trace_event(format!(
                "client {client} read key {key} = {value} on node {}",
                k + 1
            ));
            self.finish_op(client);
        }
    }

    fn client_reading(&self, k: usize, request_id: u64) -> Option<usize> {
        let incarnation = self.nodes[k].incarnation;
        self.clients.iter().position(|client| {
            matches!(client.attempt, Attempt::Read { node, incarnation: inc, request_id: id }
                if node == k && inc == incarnation && id == request_id)
        })
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

    fn client_step(&mut self, client: usize) {
        if self.clients[client].op.is_none() {
            if self.clients[client].scripted || !self.clients_may_start_ops() {
                return;
            }
            let key = self.rng.gen_range(0..self.cfg.n_keys.max(1));
            let kind = if self.rng.gen_bool(0.5) {
                let value = self.next_write_value;
                self.next_write_value += 1;
                OperationKind::Write { value }
            } else {
                OperationKind::Read
            };
            let op = self.history.invoke(client, key, kind, self.now_us);
            self.clients[client].op = Some(op);
            let timeout = self.cfg.client_timeout_us;
            self.schedule(timeout, Event::ClientTimeout { client, op });
        }
        if !matches!(self.clients[client].attempt, Attempt::None) {
            return; // an attempt is outstanding (this event is a stale retry)
        }
        let Some(op) = self.clients[client].op else {
            return;
        };
        let k = self.clients[client].target;
        let n = self.nodes.len();
        let incarnation = self.nodes[k].incarnation;
        let Some(raft) = self.nodes[k].raft.as_mut() else {
            self.clients[client].target = self.rng.gen_range(0..n);
            self.retry_client(client);
            return;
        };
        let operation = &self.history.operations[op];
        let hint = match operation.kind {
            OperationKind::Write { value } => {
                match raft.propose(vec![encode_write(operation.key, value)]) {
                    Ok(range) => {
                        self.clients[client].attempt = Attempt::Write {
                            node: k,
                            incarnation,
                            index: range.start,
                        };
                        None
                    }
                    Err(ProposeError::NotLeader { leader_hint }) => Some(leader_hint),
                    Err(_) => Some(None),
                }
            }
            OperationKind::Read => {
                let request_id = self.next_request_id;
                self.next_request_id += 1;
                match raft.read_index(request_id) {
                    Ok(()) => {
                        self.clients[client].attempt = Attempt::Read {
                            node: k,
                            incarnation,
                            request_id,
                        };
                        None
                    }
                    Err(ReadError::NotLeader { leader_hint }) => Some(leader_hint),
                }
            }
        };
        match hint {
            None => self.process(k),
            Some(leader_hint) => {
                self.clients[client].target = match leader_hint {
                    Some(leader) => leader as usize - 1,
                    None => self.rng.gen_range(0..n),
                };
                self.retry_client(client);
            }
        }
    }

    fn retry_client(&mut self, client: usize) {
        self.clients[client].attempt = Attempt::None;
        let delay = self.rng.gen_range(1_000..10_000);
        self.schedule(delay, Event::Client(client));
    }

    fn finish_op(&mut self, client: usize) {
        self.clients[client].op = None;
        self.clients[client].attempt = Attempt::None;
        let delay = self.rng.gen_range(0..5_000);
        self.schedule(delay, Event::Client(client));
    }

    /// The client stops waiting: a write may or may not take effect (it stays in the
    /// history without completion), a read is simply dropped.
    fn abandon_op(&mut self, client: usize) {
        if let Some(op) = self.clients[client].op {
            let invoked = self.history.operations[op].invoked_at_us;
            if let Some(ended) = self.faults_ended_at_us {
                if invoked >= ended + self.cfg.liveness_bound_us / 4 {
                    self.liveness_failures.push(format!(
                        "Liveness: client {client} operation {op} invoked at {invoked}us, after faults ended at \
                         {ended}us, did not complete within {}us",
                        self.cfg.client_timeout_us
                    ));
                }
            }
        }
        self.finish_op(client);
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
            if let Some(op) = state.op {
                let invoked = self.history.operations[op].invoked_at_us;
                self.liveness_failures.push(format!(
                    "Liveness: client {client} operation {op} invoked at {invoked}us still pending at the end"
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
            .filter_map(|n| n.raft.as_ref())
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
                    let size = self.rng.gen_range(n.saturating_sub(2).max(1)..=n);
                    let mut ids: Vec<NodeId> = (1..=n as u64).collect();
                    ids.shuffle(&mut self.rng);
                    ids.truncate(size);
                    self.change_membership(leader, &ids);
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
            55..=74 if faults.crashes => {
                let k = self.rng.gen_range(0..n);
                let victim = if self.rng.gen_bool(0.3) {
                    self.leader().map_or(k, |l| l as usize - 1)
                } else {
                    k
                };
                if self.nodes[victim].raft.is_some() {
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
            match &node.raft {
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
            node.raft
                .as_ref()
                .and_then(|raft| raft.log().entry(index).cloned())
                .map(|e| (node.id, e))
        })
        .collect()
}
