//! Snapshot, compaction and InstallSnapshot scenarios, driven by hand on three cores.
//!
//! The harness below plays the runtime for each node: it carries out persist actions
//! on a small disk model (a temporary snapshot file, the installed snapshot, a WAL that
//! honours `reset_log`, truncations and contiguous appends), reports them durable at
//! once unless told to hold them, restores and applies to a model state machine that
//! refuses any index not above the one it applied, and delivers messages in order
//! through a filter that can drop, corrupt or partition.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

const CHUNK_BYTES: u64 = 64;
const INFLIGHT_CHUNKS: usize = 2;

fn config(id: NodeId) -> RaftConfig {
    let mut cfg = RaftConfig::new(id, id * 7919);
    cfg.snapshot_chunk_bytes = CHUNK_BYTES;
    cfg.snapshot_inflight_chunks = INFLIGHT_CHUNKS;
    cfg
}

fn members() -> Configuration {
    Configuration::new([1, 2, 3])
}

/// The state machine model: applied index and the payloads of normal entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    applied_index: u64,
    values: Vec<(u64, Bytes)>,
}

impl Model {
    fn apply(&mut self, entry: &Entry) {
        assert!(
            entry.index > self.applied_index,
            "entry {} handed out again after applying {}",
            entry.index,
            self.applied_index
        );
        assert_eq!(
            entry.index,
            self.applied_index + 1,
            "entries handed out with a gap"
        );
        self.applied_index = entry.index;
        if entry.kind == EntryKind::Normal {
            self.values.push((entry.index, entry.data.clone()));
        }
    }

    fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u64_le(self.values.len() as u64);
        for (index, data) in &self.values {
            out.put_u64_le(*index);
            out.put_u32_le(data.len() as u32);
            out.put_slice(data);
        }
        out.freeze()
    }

    fn restore(applied_index: u64, mut data: &[u8]) -> Model {
        let count = data.get_u64_le();
        let mut values = Vec::new();
        for _ in 0..count {
            let index = data.get_u64_le();
            let len = data.get_u32_le() as usize;
            values.push((index, Bytes::copy_from_slice(&data[..len])));
            data.advance(len);
        }
        assert!(data.is_empty(), "snapshot has trailing bytes");
        Model {
            applied_index,
            values,
        }
    }
}

/// The disk of one node, as a runtime would keep it.
#[derive(Clone, Debug, Default)]
struct Disk {
    hard_state: HardState,
    /// The installed (or locally taken) snapshot file.
    snapshot: Option<(SnapshotMeta, Bytes)>,
    /// The temporary file chunks are appended to.
    temp: Vec<u8>,
    wal_start: LogStart,
    wal: Vec<Entry>,
    resets: usize,
}

impl Disk {
    fn carry_out(&mut self, action: &PersistAction) {
        if let Some(chunk) = &action.snapshot {
            self.write_chunk(chunk);
        }
        if let Some(hard_state) = action.hard_state {
            self.hard_state = hard_state;
        }
        if let Some(point) = action.reset_log {
            self.wal.clear();
            self.wal_start = point;
            self.resets += 1;
        }
        if let Some(from) = action.truncate_from {
            self.wal.retain(|entry| entry.index < from);
        }
        for entry in &action.entries {
            let expected = self
                .wal
                .last()
                .map_or(self.wal_start.last_index + 1, |last| last.index + 1);
            assert_eq!(entry.index, expected, "WAL append leaves a gap");
            self.wal.push(entry.clone());
        }
    }

    fn write_chunk(&mut self, chunk: &SnapshotChunk) {
        if chunk.offset == 0 {
            self.temp.clear();
        }
        assert_eq!(chunk.offset, self.temp.len() as u64, "chunk out of order");
        self.temp.extend_from_slice(&chunk.data);
        if chunk.last {
            assert_eq!(self.temp.len() as u64, chunk.total_bytes);
            assert_eq!(
                crc32fast::hash(&self.temp),
                chunk.checksum,
                "the core emitted a last chunk of a corrupt snapshot"
            );
            let data = Bytes::from(std::mem::take(&mut self.temp));
            self.snapshot = Some((chunk.meta.clone(), data));
        }
    }
}

type Filter = Box<dyn FnMut(&Message) -> Option<Message>>;

struct Cluster {
    nodes: BTreeMap<NodeId, RaftNode>,
    disks: BTreeMap<NodeId, Disk>,
    models: BTreeMap<NodeId, Model>,
    network: VecDeque<Message>,
    isolated: BTreeSet<NodeId>,
    /// Returns the message to deliver (possibly changed) or None to drop it.
    filter: Option<Filter>,
    /// Every message delivered, for assertions.
    delivered: Vec<Message>,
    restores: BTreeMap<NodeId, Vec<SnapshotMeta>>,
    fatal: BTreeMap<NodeId, CoreError>,
    /// When set, messages are dropped, duplicated and reordered at random.
    chaos: Option<ChaCha8Rng>,
}

impl Cluster {
    fn new() -> Cluster {
        let ids = [1, 2, 3];
        Cluster {
            nodes: ids
                .iter()
                .map(|id| (*id, RaftNode::new(config(*id), members())))
                .collect(),
            disks: ids.iter().map(|id| (*id, Disk::default())).collect(),
            models: ids.iter().map(|id| (*id, Model::default())).collect(),
            network: VecDeque::new(),
            isolated: BTreeSet::new(),
            filter: None,
            delivered: Vec::new(),
            restores: BTreeMap::new(),
            fatal: BTreeMap::new(),
            chaos: None,
        }
    }

    fn node(&self, id: NodeId) -> &RaftNode {
        &self.nodes[&id]
    }

    fn node_mut(&mut self, id: NodeId) -> &mut RaftNode {
        self.nodes.get_mut(&id).expect("node exists")
    }

    /// Carries out everything `id`'s core asked for (persists durable at once).
    fn process(&mut self, id: NodeId) {
        loop {
            let node = self.nodes.get_mut(&id).expect("node exists");
            if !node.has_ready() {
                break;
            }
            let ready = node.take_ready();
            if let Some(fatal) = ready.fatal {
                self.fatal.insert(id, fatal);
            }
            if let Some(action) = &ready.persist {
                self.disks.get_mut(&id).expect("disk").carry_out(action);
                node.on_persisted(action.seq);
            }
            if let Some(meta) = ready.restore_snapshot {
                let (installed, data) = self.disks[&id]
                    .snapshot
                    .clone()
                    .expect("restore asked for before the snapshot was installed");
                assert_eq!(
                    installed, meta,
                    "restore of a snapshot that is not installed"
                );
                self.models.insert(id, Model::restore(meta.index, &data));
                self.restores.entry(id).or_default().push(meta);
            }
            let model = self.models.get_mut(&id).expect("model");
            for entry in &ready.committed_entries {
                model.apply(entry);
            }
            if let Some(last) = ready.committed_entries.last() {
                node.on_applied(last.index);
            }
            self.network.extend(ready.messages);
        }
    }

    fn process_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.process(id);
        }
    }

    /// Delivers messages until the network is quiet.
    fn run(&mut self) {
        for _ in 0..1_000_000 {
            self.process_all();
            let Some(message) = self.network.pop_front() else {
                return;
            };
            if self.isolated.contains(&message.from) || self.isolated.contains(&message.to) {
                continue;
            }
            if let Some(rng) = self.chaos.as_mut() {
                let roll: f64 = rng.gen();
                if roll < 0.1 {
                    continue; // lost
                } else if roll < 0.2 {
                    self.network.push_back(message); // overtaken by what follows
                    continue;
                } else if roll < 0.25 {
                    self.network.push_back(message.clone()); // duplicated
                }
            }
            let message = match self.filter.as_mut() {
                Some(filter) => match filter(&message) {
                    Some(message) => message,
                    None => continue,
                },
                None => message,
            };
            self.delivered.push(message.clone());
            let to = message.to;
            if let Some(node) = self.nodes.get_mut(&to) {
                node.step(message);
            }
        }
        panic!("the network never went quiet");
    }

    fn tick_all(&mut self, ticks: usize) {
        for _ in 0..ticks {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.node_mut(id).tick();
            }
            self.run();
        }
    }

    /// Crashes and restarts `id` from its disk: the core is rebuilt from the hard
    /// state, the installed snapshot and the WAL; the state machine from the snapshot;
    /// the temporary snapshot file is discarded (as a runtime does on startup).
    fn restart(&mut self, id: NodeId) {
        self.restart_reporting(id, false);
    }

    /// `restart`, then (with `report_snapshot`) the runtime reports the snapshot it
    /// restored from, so the node can send it.
    fn restart_reporting(&mut self, id: NodeId, report_snapshot: bool) {
        let disk = self.disks.get_mut(&id).expect("disk");
        disk.temp.clear();
        let disk = disk.clone();
        let snapshot_meta = disk.snapshot.as_ref().map(|(meta, _)| meta.clone());
        let node = RaftNode::restart(
            config(id),
            members(),
            disk.hard_state,
            snapshot_meta,
            disk.wal.clone(),
        )
        .expect("restart from disk");
        self.nodes.insert(id, node);
        let model = match &disk.snapshot {
            Some((meta, data)) => Model::restore(meta.index, data),
            None => Model::default(),
        };
        self.models.insert(id, model);
        if let (true, Some((meta, data))) = (report_snapshot, disk.snapshot) {
            self.node_mut(id)
                .snapshot_ready(meta, data)
                .expect("the restored snapshot is at the log start");
        }
    }

    /// Takes a snapshot on `id` if it applied past its newest one, then compacts.
    fn maybe_snapshot(&mut self, id: NodeId, retain: u64) {
        let node = &self.nodes[&id];
        let newest = node.snapshot_meta().map_or(0, |meta| meta.index);
        if node.log().applied() > newest && !node.log().restore_pending() {
            self.snapshot_and_compact(id, retain);
        }
    }

    /// Ticks every node until one is leader; returns it.
    fn tick_until_leader(&mut self) -> NodeId {
        for _ in 0..500 {
            self.tick_all(1);
            if let Some((id, _)) = self.nodes.iter().find(|(_, node)| node.is_leader()) {
                return *id;
            }
        }
        panic!("no leader emerged");
    }

    /// Ticks only `id` until it is leader.
    fn elect(&mut self, id: NodeId) {
        for _ in 0..200 {
            self.node_mut(id).tick();
            self.run();
            if self.node(id).is_leader() {
                return;
            }
        }
        panic!("node {id} did not become leader");
    }

    fn propose(&mut self, leader: NodeId, n: usize, tag: &str) {
        let commands = (0..n).map(|k| Bytes::from(format!("{tag}-{k}"))).collect();
        self.node_mut(leader).propose(commands).expect("leader");
        self.run();
    }

    /// Takes a snapshot at `id`'s applied index, reports it, and compacts the log to
    /// keep `retain` entries below it.
    fn snapshot_and_compact(&mut self, id: NodeId, retain: u64) -> SnapshotMeta {
        let node = &self.nodes[&id];
        let applied = node.log().applied();
        let meta = SnapshotMeta {
            index: applied,
            term: node
                .log()
                .term(applied)
                .expect("applied entry is in the log"),
            configuration: node
                .configuration_at(applied)
                .expect("configuration known")
                .clone(),
        };
        assert_eq!(self.models[&id].applied_index, applied);
        let data = self.models[&id].encode();
        self.disks.get_mut(&id).expect("disk").snapshot = Some((meta.clone(), data.clone()));
        let node = self.node_mut(id);
        node.snapshot_ready(meta.clone(), data)
            .expect("snapshot accepted");
        node.compact_log(applied.saturating_sub(retain))
            .expect("compaction allowed");
        meta
    }

    fn chunks_delivered_to(&self, to: NodeId) -> Vec<&InstallSnapshot> {
        self.delivered
            .iter()
            .filter(|m| m.to == to)
            .filter_map(|m| match &m.body {
                MessageBody::InstallSnapshot(chunk) => Some(chunk),
                _ => None,
            })
            .collect()
    }
}

/// A cluster led by node 1 where node 3 missed `n` committed entries that the leader
/// compacted away (keeping 5 below its snapshot).
fn cluster_with_a_lagging_follower(n: usize) -> (Cluster, SnapshotMeta) {
    let mut cluster = Cluster::new();
    cluster.elect(1);
    cluster.propose(1, 3, "early");
    cluster.isolated.insert(3);
    cluster.propose(1, n, "missed");
    cluster.tick_all(1);
    let meta = cluster.snapshot_and_compact(1, 5);
    assert!(cluster.node(1).log().start().last_index > cluster.node(3).log().last_index());
    (cluster, meta)
}

#[test]
fn compaction_frees_entries_and_keeps_the_log_readable_after_the_point() {
    let mut cluster = Cluster::new();
    cluster.elect(1);
    cluster.propose(1, 200, "v");
    let before = cluster.node(1).log().len();
    let meta = cluster.snapshot_and_compact(1, 10);
    let log = cluster.node(1).log();
    assert_eq!(log.start().last_index, meta.index - 10);
    assert_eq!(log.len(), before - (meta.index as usize - 10));
    assert_eq!(
        log.entry(meta.index - 10),
        None,
        "compacted entry still readable"
    );
    assert_eq!(
        log.term(meta.index - 10),
        Some(meta.term),
        "the start point keeps its term"
    );
    let first = log
        .entry(meta.index - 9)
        .expect("first entry after the point");
    assert_eq!(first.index, meta.index - 9);
    assert_eq!(log.last_index(), meta.index);
    // Replication continues from the window; the followers still apply everything.
    cluster.propose(1, 5, "after");
    cluster.tick_all(2);
    for id in [2, 3] {
        assert_eq!(cluster.models[&id], cluster.models[&1], "node {id}");
    }
}

#[test]
fn compaction_is_refused_above_the_applied_index_or_the_snapshot() {
    let mut cluster = Cluster::new();
    cluster.elect(1);
    cluster.propose(1, 20, "v");
    let applied = cluster.node(1).log().applied();
    assert!(matches!(
        cluster.node_mut(1).compact_log(applied),
        Err(CompactError::AboveSnapshot {
            snapshot_index: None,
            ..
        })
    ));
    let meta = cluster.snapshot_and_compact(1, 5);
    assert!(matches!(
        cluster.node_mut(1).compact_log(meta.index + 1),
        Err(CompactError::AboveApplied { .. })
    ));
    let stale = SnapshotMeta {
        index: meta.index,
        ..meta.clone()
    };
    assert!(matches!(
        cluster.node_mut(1).snapshot_ready(stale, Bytes::new()),
        Err(SnapshotError::NotNewer { .. })
    ));
}

#[test]
fn snapshot_with_a_term_or_index_the_log_contradicts_is_refused() {
    let mut cluster = Cluster::new();
    cluster.elect(1);
    cluster.propose(1, 5, "v");
    let applied = cluster.node(1).log().applied();
    let term = cluster.node(1).term();
    let wrong_term = SnapshotMeta {
        index: applied,
        term: term + 1,
        configuration: members(),
    };
    assert!(matches!(
        cluster.node_mut(1).snapshot_ready(wrong_term, Bytes::new()),
        Err(SnapshotError::TermMismatch { .. })
    ));
    let above = SnapshotMeta {
        index: applied + 1,
        term,
        configuration: members(),
    };
    assert!(matches!(
        cluster.node_mut(1).snapshot_ready(above, Bytes::new()),
        Err(SnapshotError::AboveApplied { .. })
    ));
    let wrong_configuration = SnapshotMeta {
        index: applied,
        term,
        configuration: Configuration::new([1, 2]),
    };
    assert!(matches!(
        cluster
            .node_mut(1)
            .snapshot_ready(wrong_configuration, Bytes::new()),
        Err(SnapshotError::ConfigurationMismatch { .. })
    ));
}

#[test]
fn partitioned_follower_is_brought_back_by_install_snapshot_in_chunks_then_append_entries() {
    let (mut cluster, meta) = cluster_with_a_lagging_follower(100);
    let snapshot_bytes = cluster.disks[&1].snapshot.as_ref().expect("taken").1.len() as u64;
    assert!(
        snapshot_bytes > 4 * CHUNK_BYTES,
        "snapshot must need several chunks"
    );
    cluster.isolated.clear();
    cluster.tick_all(3);
    assert_eq!(
        cluster.node(1).progress(3).map(|p| p.state),
        Some(ReplicationState::Replicate)
    );
    let chunks = cluster.chunks_delivered_to(3);
    assert_eq!(chunks.len() as u64, snapshot_bytes.div_ceil(CHUNK_BYTES));
    assert!(chunks
        .windows(2)
        .all(|w| w[1].offset == w[0].offset + w[0].data.len() as u64));
    assert_eq!(cluster.restores[&3], vec![meta.clone()]);
    assert_eq!(cluster.node(3).log().start(), meta.log_start());
    assert_eq!(
        cluster.disks[&3].resets, 1,
        "the follower's WAL was reset once"
    );
    assert_eq!(cluster.node(3).stats().snapshots_installed, 1);
    // New entries reach it by AppendEntries.
    cluster.propose(1, 4, "later");
    cluster.tick_all(2);
    assert_eq!(cluster.models[&3], cluster.models[&1]);
    assert_eq!(
        cluster.node(3).log().last_index(),
        cluster.node(1).log().last_index()
    );
    let wal = &cluster.disks[&3].wal;
    assert_eq!(wal.first().map(|e| e.index), Some(meta.index + 1));
}

#[test]
fn snapshot_window_is_bounded_and_heartbeats_continue_during_a_transfer() {
    let (mut cluster, _) = cluster_with_a_lagging_follower(100);
    cluster.isolated.clear();
    // Hold node 3's chunks back: nothing acknowledged, so the window stays full.
    cluster.filter = Some(Box::new(|m: &Message| {
        (!matches!(m.body, MessageBody::InstallSnapshotResponse(_))).then(|| m.clone())
    }));
    cluster.tick_all(3);
    let chunks = cluster.chunks_delivered_to(3).len();
    assert_eq!(
        chunks, INFLIGHT_CHUNKS,
        "more chunks in flight than the window"
    );
    let heartbeats = cluster
        .delivered
        .iter()
        .filter(|m| m.to == 3 && matches!(m.body, MessageBody::AppendEntries(_)))
        .count();
    assert!(
        heartbeats >= 3,
        "heartbeats to the follower stopped: {heartbeats}"
    );
    assert_eq!(cluster.node(3).role(), Role::Follower);
    assert_eq!(cluster.node(3).leader_id(), Some(1));
    assert!(
        cluster.node(1).lease_valid(),
        "the transfer cost the leader its lease"
    );
    // The other follower is unaffected: new entries reach it at once.
    cluster.propose(1, 3, "during");
    assert_eq!(cluster.models[&2], cluster.models[&1]);
    assert_eq!(
        cluster.node(1).progress(3).map(|p| p.state),
        Some(ReplicationState::Snapshot)
    );
}

#[test]
fn lost_chunk_is_resent_and_the_transfer_completes() {
    let (mut cluster, meta) = cluster_with_a_lagging_follower(100);
    cluster.isolated.clear();
    let mut dropped = false;
    cluster.filter = Some(Box::new(move |m: &Message| {
        if let MessageBody::InstallSnapshot(chunk) = &m.body {
            if chunk.offset == CHUNK_BYTES && !dropped {
                dropped = true;
                return None;
            }
        }
        Some(m.clone())
    }));
    cluster.tick_all(6);
    let offsets: Vec<u64> = cluster
        .chunks_delivered_to(3)
        .iter()
        .map(|c| c.offset)
        .collect();
    assert_eq!(
        offsets
            .iter()
            .filter(|offset| **offset == CHUNK_BYTES)
            .count(),
        1,
        "the lost chunk was not resent exactly once: {offsets:?}"
    );
    assert_eq!(cluster.restores[&3], vec![meta]);
    assert_eq!(cluster.models[&3], cluster.models[&1]);
}

#[test]
fn a_lost_last_window_is_resent_after_the_retry_timeout() {
    let (mut cluster, meta) = cluster_with_a_lagging_follower(100);
    cluster.isolated.clear();
    let mut drops_left = INFLIGHT_CHUNKS;
    cluster.filter = Some(Box::new(move |m: &Message| {
        if matches!(m.body, MessageBody::InstallSnapshot(_)) && drops_left > 0 {
            drops_left -= 1;
            return None;
        }
        Some(m.clone())
    }));
    cluster.tick_all(config(1).snapshot_retry_ticks as usize + 5);
    assert_eq!(cluster.restores[&3], vec![meta]);
    assert_eq!(cluster.models[&3], cluster.models[&1]);
}

#[test]
fn follower_restarted_mid_transfer_receives_the_snapshot_again_from_offset_0() {
    let (mut cluster, meta) = cluster_with_a_lagging_follower(100);
    cluster.isolated.clear();
    let mut chunks_to_3 = 0;
    cluster.filter = Some(Box::new(move |m: &Message| {
        if m.to == 3 && matches!(m.body, MessageBody::InstallSnapshot(_)) {
            chunks_to_3 += 1;
            if chunks_to_3 > 2 {
                return None;
            }
        }
        Some(m.clone())
    }));
    cluster.tick_all(2);
    assert_eq!(cluster.chunks_delivered_to(3).len(), 2);
    cluster.restart(3);
    cluster.filter = None;
    cluster.tick_all(config(1).snapshot_retry_ticks as usize + 5);
    assert_eq!(cluster.restores[&3], vec![meta]);
    let starts = cluster
        .chunks_delivered_to(3)
        .iter()
        .filter(|chunk| chunk.offset == 0)
        .count();
    assert_eq!(
        starts, 2,
        "the transfer did not start over after the restart"
    );
    assert_eq!(cluster.models[&3], cluster.models[&1]);
    // And it survives another restart, now from the installed snapshot.
    cluster.restart(3);
    cluster.propose(1, 2, "after-restart");
    cluster.tick_all(3);
    assert_eq!(cluster.models[&3], cluster.models[&1]);
}

#[test]
fn corrupted_snapshot_fails_its_checksum_is_counted_and_the_transfer_restarts() {
    let (mut cluster, meta) = cluster_with_a_lagging_follower(100);
    cluster.isolated.clear();
    let mut corrupted = false;
    cluster.filter = Some(Box::new(move |m: &Message| {
        let mut m = m.clone();
        if let MessageBody::InstallSnapshot(chunk) = &mut m.body {
            if chunk.offset == 0 && !corrupted {
                corrupted = true;
                let mut data = chunk.data.to_vec();
                data[3] ^= 0x40;
                chunk.data = Bytes::from(data);
            }
        }
        Some(m)
    }));
    cluster.tick_all(8);
    assert_eq!(cluster.node(3).stats().snapshot_checksum_failures, 1);
    let zero_offsets = cluster
        .chunks_delivered_to(3)
        .iter()
        .filter(|c| c.offset == 0)
        .count();
    assert_eq!(
        zero_offsets, 2,
        "the transfer did not restart from offset 0"
    );
    assert_eq!(
        cluster.restores[&3],
        vec![meta],
        "exactly one, good install"
    );
    assert_eq!(cluster.models[&3], cluster.models[&1]);
}

#[test]
fn leader_change_mid_transfer_restarts_it_cleanly_from_the_new_leader() {
    let (mut cluster, _) = cluster_with_a_lagging_follower(100);
    // Node 2 has everything too and compacts, so it must send its own snapshot.
    let meta_2 = cluster.snapshot_and_compact(2, 5);
    cluster.isolated.clear();
    // Let two chunks of node 1's transfer through, then cut node 1 off.
    let mut from_1 = 0;
    cluster.filter = Some(Box::new(move |m: &Message| {
        if m.from == 1 && matches!(m.body, MessageBody::InstallSnapshot(_)) {
            from_1 += 1;
            if from_1 > 2 {
                return None;
            }
        }
        Some(m.clone())
    }));
    cluster.tick_all(2);
    assert_eq!(cluster.chunks_delivered_to(3).len(), 2);
    assert!(!cluster.restores.contains_key(&3), "installed too early");
    cluster
        .node_mut(1)
        .transfer_leadership(2)
        .expect("node 2 is caught up");
    cluster.run();
    assert!(cluster.node(2).is_leader());
    cluster.isolated.insert(1);
    cluster.tick_all(4);
    let from_2: Vec<u64> = cluster
        .delivered
        .iter()
        .filter(|m| m.from == 2 && m.to == 3)
        .filter_map(|m| match &m.body {
            MessageBody::InstallSnapshot(chunk) => Some(chunk.offset),
            _ => None,
        })
        .collect();
    assert_eq!(from_2.first(), Some(&0), "new leader did not start at 0");
    assert_eq!(cluster.restores[&3], vec![meta_2]);
    assert_eq!(cluster.models[&3], cluster.models[&2]);
    cluster.propose(2, 3, "new-leader");
    cluster.tick_all(2);
    assert_eq!(cluster.models[&3], cluster.models[&2]);
}

#[test]
fn leader_without_a_snapshot_waits_for_one_then_sends_it() {
    let (mut cluster, _) = cluster_with_a_lagging_follower(60);
    cluster.snapshot_and_compact(2, 5);
    // Nodes 1 and 2 restart from their disks: their logs start past node 3's, and
    // neither has reported its snapshot to its new core.
    for id in [1, 2] {
        let disk = cluster.disks[&id].clone();
        let (meta, data) = disk.snapshot.clone().expect("snapshot");
        let restarted = RaftNode::restart(
            config(id),
            members(),
            disk.hard_state,
            Some(meta.clone()),
            disk.wal.clone(),
        )
        .expect("restart");
        cluster.nodes.insert(id, restarted);
        cluster.models.insert(id, Model::restore(meta.index, &data));
    }
    cluster.isolated.clear();
    let leader = cluster.tick_until_leader();
    assert_ne!(leader, 3, "node 3's log is behind");
    cluster.tick_all(2);
    assert_eq!(
        cluster.node(leader).progress(3).map(|p| p.state),
        Some(ReplicationState::Snapshot)
    );
    assert!(cluster.chunks_delivered_to(3).is_empty());
    assert!(!cluster.restores.contains_key(&3));
    let (meta, data) = cluster.disks[&leader].snapshot.clone().expect("snapshot");
    cluster
        .node_mut(leader)
        .snapshot_ready(meta.clone(), data)
        .expect("snapshot at the log start");
    cluster.run();
    cluster.tick_all(3);
    assert_eq!(cluster.restores[&3], vec![meta]);
    assert_eq!(cluster.models[&3].values, cluster.models[&leader].values);
}

// ----- single-node follower scenarios ----------------------------------------------

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        data: Bytes::from(format!("e{index}t{term}")),
    }
}

fn follower_with_log(entries: Vec<Entry>, term: u64) -> RaftNode {
    RaftNode::restart(
        config(2),
        members(),
        HardState {
            term,
            voted_for: None,
        },
        None,
        entries,
    )
    .expect("valid restart state")
}

fn chunk(meta: &SnapshotMeta, data: &[u8], offset: u64, len: u64) -> MessageBody {
    let end = (offset + len).min(data.len() as u64);
    MessageBody::InstallSnapshot(InstallSnapshot {
        meta: meta.clone(),
        total_bytes: data.len() as u64,
        checksum: crc32fast::hash(data),
        offset,
        data: Bytes::copy_from_slice(&data[offset as usize..end as usize]),
        done: end == data.len() as u64,
    })
}

fn from_leader(term: u64, body: MessageBody) -> Message {
    Message {
        from: 1,
        to: 2,
        term,
        body,
    }
}

fn snapshot_answers(ready: &Ready) -> Vec<(u64, InstallSnapshotResponse)> {
    ready
        .messages
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::InstallSnapshotResponse(r) => Some((m.term, *r)),
            _ => None,
        })
        .collect()
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term,
        configuration: members(),
    }
}

#[test]
fn chunk_at_the_wrong_offset_is_refused_with_the_expected_offset() {
    let mut node = follower_with_log(vec![], 3);
    let data = vec![7u8; 100];
    let snapshot = meta(50, 2);
    node.step(from_leader(3, chunk(&snapshot, &data, 0, 30)));
    let ready = node.take_ready();
    assert_eq!(
        ready
            .persist
            .as_ref()
            .and_then(|p| p.snapshot.as_ref())
            .map(|c| c.offset),
        Some(0)
    );
    node.on_persisted(ready.persist.expect("chunk").seq);
    node.take_ready();
    node.step(from_leader(3, chunk(&snapshot, &data, 60, 30)));
    let ready = node.take_ready();
    assert!(ready.persist.is_none(), "a refused chunk was persisted");
    let answers = snapshot_answers(&ready);
    assert_eq!(answers.len(), 1);
    let (_, answer) = answers[0];
    assert!(answer.rejected && !answer.installed);
    assert_eq!(answer.next_offset, 30);
    // A repeated first chunk of the same transfer does not restart it either.
    node.step(from_leader(3, chunk(&snapshot, &data, 0, 30)));
    let answers = snapshot_answers(&node.take_ready());
    assert_eq!(answers[0].1.next_offset, 30);
    assert!(answers[0].1.rejected);
}

#[test]
fn chunk_from_a_stale_term_is_ignored_and_answered_with_the_newer_term() {
    let mut node = follower_with_log(vec![], 5);
    let data = vec![1u8; 40];
    node.step(from_leader(3, chunk(&meta(20, 2), &data, 0, 40)));
    let ready = node.take_ready();
    assert!(ready.persist.is_none());
    assert_eq!(node.leader_id(), None, "a stale leader was taken as leader");
    let answers = snapshot_answers(&ready);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].0, 5, "the answer must carry the newer term");
    assert!(answers[0].1.rejected);
    assert_eq!(node.log().start(), LogStart::default());
}

#[test]
fn chunk_of_the_current_term_is_leader_contact_and_acknowledged_only_once_durable() {
    let mut node = follower_with_log(vec![], 3);
    for _ in 0..5 {
        node.tick();
    }
    let data = vec![9u8; 50];
    node.step(from_leader(4, chunk(&meta(20, 4), &data, 0, 25)));
    assert_eq!(node.leader_id(), Some(1));
    assert_eq!(node.term(), 4);
    let ready = node.take_ready();
    assert!(
        snapshot_answers(&ready).is_empty(),
        "acknowledged before durable"
    );
    node.on_persisted(ready.persist.expect("chunk").seq);
    let answers = snapshot_answers(&node.take_ready());
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].1.next_offset, 25);
    assert!(!answers[0].1.rejected && !answers[0].1.installed);
}

#[test]
fn install_discards_a_conflicting_log_resets_the_wal_and_restores_before_applying() {
    let mut node = follower_with_log(vec![entry(1, 1), entry(2, 1), entry(3, 2)], 3);
    let data = Model {
        applied_index: 10,
        values: vec![(1, Bytes::from_static(b"x"))],
    }
    .encode();
    let snapshot = meta(10, 3);
    node.step(from_leader(3, chunk(&snapshot, &data, 0, 1000)));
    // Entries after the snapshot arrive before the install is durable.
    node.step(from_leader(
        3,
        MessageBody::AppendEntries(AppendEntries {
            prev_log_index: 10,
            prev_log_term: 3,
            entries: vec![entry(11, 3), entry(12, 3)],
            leader_commit: 12,
            heartbeat_id: 0,
            sent_at_tick: 0,
        }),
    ));
    assert_eq!(node.log().start(), snapshot.log_start());
    let ready = node.take_ready();
    let persist = ready.persist.expect("install");
    let chunk = persist.snapshot.as_ref().expect("chunk");
    assert!(chunk.last);
    assert_eq!(persist.reset_log, Some(snapshot.log_start()));
    assert_eq!(
        persist.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![11, 12]
    );
    assert!(
        ready.restore_snapshot.is_none(),
        "restore before the install is durable"
    );
    assert!(
        ready.committed_entries.is_empty(),
        "entries handed out before the restore"
    );
    node.on_persisted(persist.seq);
    let ready = node.take_ready();
    assert_eq!(ready.restore_snapshot, Some(snapshot));
    assert_eq!(
        ready
            .committed_entries
            .iter()
            .map(|e| e.index)
            .collect::<Vec<_>>(),
        vec![11, 12]
    );
    assert_eq!(node.log().applied(), 12);
    let answers = snapshot_answers(&ready);
    assert!(answers
        .iter()
        .any(|(_, a)| a.installed && a.snapshot_index == 10));
}

#[test]
fn follower_whose_log_holds_the_snapshot_point_keeps_its_suffix() {
    let entries: Vec<Entry> = (1..=8).map(|i| entry(i, 2)).collect();
    let mut node = follower_with_log(entries, 2);
    let data = b"state".to_vec();
    let snapshot = meta(5, 2);
    node.step(from_leader(2, chunk(&snapshot, &data, 0, 100)));
    assert_eq!(node.log().start(), snapshot.log_start());
    assert_eq!(
        node.log().last_index(),
        8,
        "the suffix after the snapshot was lost"
    );
    assert_eq!(node.log().entry(6).map(|e| e.term), Some(2));
    let ready = node.take_ready();
    let persist = ready.persist.expect("install");
    assert_eq!(
        persist.reset_log, None,
        "a consistent WAL must not be reset"
    );
    assert!(persist.entries.is_empty());
    node.on_persisted(persist.seq);
    let ready = node.take_ready();
    assert_eq!(ready.restore_snapshot, Some(snapshot));
    assert!(
        ready.committed_entries.is_empty(),
        "6..8 are not known committed"
    );
}

#[test]
fn chunk_for_a_snapshot_at_or_below_the_commit_index_is_answered_installed() {
    let mut node = follower_with_log((1..=4).map(|i| entry(i, 1)).collect(), 2);
    node.step(from_leader(
        2,
        MessageBody::AppendEntries(AppendEntries {
            prev_log_index: 4,
            prev_log_term: 1,
            entries: vec![],
            leader_commit: 4,
            heartbeat_id: 0,
            sent_at_tick: 0,
        }),
    ));
    node.take_ready();
    node.step(from_leader(2, chunk(&meta(3, 1), b"abc", 0, 3)));
    let ready = node.take_ready();
    assert!(ready.persist.is_none());
    let answers = snapshot_answers(&ready);
    assert_eq!(answers.len(), 1);
    assert!(answers[0].1.installed && !answers[0].1.rejected);
}

#[test]
fn corrupt_last_chunk_is_never_emitted_and_is_counted() {
    let mut node = follower_with_log(vec![], 2);
    let data = vec![5u8; 20];
    let MessageBody::InstallSnapshot(mut bad) = chunk(&meta(9, 2), &data, 0, 20) else {
        unreachable!("built as InstallSnapshot")
    };
    bad.checksum ^= 1;
    node.step(from_leader(2, MessageBody::InstallSnapshot(bad)));
    let ready = node.take_ready();
    assert!(
        ready.persist.is_none(),
        "a corrupt snapshot reached the disk as installed"
    );
    assert_eq!(node.stats().snapshot_checksum_failures, 1);
    let answers = snapshot_answers(&ready);
    assert!(answers[0].1.rejected);
    assert_eq!(answers[0].1.next_offset, 0);
    assert_eq!(node.log().start(), LogStart::default());
}

// ----- restart -------------------------------------------------------------------

fn config_entry(index: u64, term: u64, configuration: &Configuration) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Config,
        data: configuration.encode(),
    }
}

#[test]
fn restart_from_a_snapshot_and_the_log_after_it() {
    let snapshot = SnapshotMeta {
        index: 50,
        term: 3,
        configuration: Configuration::new([1, 2, 3, 4]),
    };
    // The WAL keeps a window below the snapshot.
    let entries: Vec<Entry> = (45..=60).map(|i| entry(i, 3)).collect();
    let node = RaftNode::restart(
        config(2),
        members(),
        HardState {
            term: 3,
            voted_for: None,
        },
        Some(snapshot.clone()),
        entries,
    )
    .expect("restart");
    assert_eq!(node.log().start(), snapshot.log_start());
    assert_eq!(node.log().first_index(), 51);
    assert_eq!(node.log().last_index(), 60);
    assert_eq!(node.commit_index(), 50);
    assert_eq!(node.log().applied(), 50);
    assert_eq!(node.configuration(), &snapshot.configuration);

    // A later configuration entry wins over the snapshot's.
    let newer = Configuration::new([1, 2]);
    let entries = vec![entry(51, 3), config_entry(52, 3, &newer)];
    let node = RaftNode::restart(
        config(2),
        members(),
        HardState::default(),
        Some(snapshot.clone()),
        entries,
    )
    .expect("restart");
    assert_eq!(node.configuration(), &newer);
}

#[test]
fn restart_with_a_wal_that_does_not_continue_the_snapshot_resets_it() {
    let snapshot = meta(50, 3);
    for entries in [
        (10..=30).map(|i| entry(i, 2)).collect::<Vec<_>>(), // ends before the snapshot
        (40..=55).map(|i| entry(i, 2)).collect(),           // other term at index 50
        vec![],
    ] {
        let mut node = RaftNode::restart(
            config(2),
            members(),
            HardState::default(),
            Some(snapshot.clone()),
            entries,
        )
        .expect("restart");
        assert_eq!(node.log().last_index(), 50);
        let persist = node.take_ready().persist.expect("reset");
        assert_eq!(persist.reset_log, Some(snapshot.log_start()));
    }
    let gap = RaftNode::restart(
        config(2),
        members(),
        HardState::default(),
        Some(snapshot),
        vec![entry(52, 3)],
    );
    assert!(matches!(gap, Err(CoreError::LogNotContiguous { .. })));
}

#[test]
fn undecodable_configuration_entry_is_a_restart_error() {
    let bad = Entry {
        index: 2,
        term: 1,
        kind: EntryKind::Config,
        data: Bytes::from_static(&[1, 0]),
    };
    let result = RaftNode::restart(
        config(2),
        members(),
        HardState::default(),
        None,
        vec![entry(1, 1), bad],
    );
    assert!(matches!(
        result,
        Err(CoreError::UndecodableConfiguration { index: 2, .. })
    ));
}

#[test]
fn undecodable_configuration_entry_received_live_stops_the_node() {
    let mut node = follower_with_log(vec![], 1);
    let bad = Entry {
        index: 1,
        term: 1,
        kind: EntryKind::Config,
        data: Bytes::from_static(&[9]),
    };
    node.step(from_leader(
        1,
        MessageBody::AppendEntries(AppendEntries {
            prev_log_index: 0,
            prev_log_term: 0,
            entries: vec![bad],
            leader_commit: 0,
            heartbeat_id: 0,
            sent_at_tick: 0,
        }),
    ));
    assert!(node.fatal_error().is_some());
    let ready = node.take_ready();
    assert!(matches!(
        ready.fatal,
        Some(CoreError::UndecodableConfiguration { index: 1, .. })
    ));
    assert!(ready.persist.is_none() && ready.messages.is_empty());
    assert!(!node.has_ready());
    for _ in 0..50 {
        node.tick();
    }
    assert!(!node.has_ready(), "a stopped node acted on input");
    assert_eq!(
        node.take_ready().fatal,
        None,
        "the fatal error is reported once"
    );
}

// ----- defensive core ----------------------------------------------------------------

#[test]
fn message_with_a_term_that_would_overflow_is_dropped_and_counted() {
    let mut node = follower_with_log(vec![], 1);
    node.step(Message {
        from: 1,
        to: 2,
        term: u64::MAX,
        body: MessageBody::PreVoteResponse(VoteResponse { granted: true }),
    });
    node.step(Message {
        from: 1,
        to: 9,
        term: 1,
        body: MessageBody::TimeoutNow,
    });
    assert_eq!(node.stats().invalid_messages, 2);
    assert_eq!(node.term(), 1);
}

#[test]
fn append_entries_contradicting_a_committed_entry_is_dropped_not_asserted() {
    let mut node = follower_with_log((1..=3).map(|i| entry(i, 1)).collect(), 1);
    node.step(from_leader(1, append_body(3, 1, vec![], 3)));
    node.take_ready();
    assert_eq!(node.commit_index(), 3);
    node.step(from_leader(
        1,
        append_body(1, 1, vec![entry(2, 1), entry(3, 1)], 3),
    ));
    let before = node.stats().invalid_messages;
    node.step(Message {
        from: 1,
        to: 2,
        term: 2,
        body: append_body(1, 1, vec![entry(2, 2)], 3),
    });
    assert_eq!(node.stats().invalid_messages, before + 1);
    assert_eq!(node.log().term(2), Some(1));
}

fn append_body(prev_index: u64, prev_term: u64, entries: Vec<Entry>, commit: u64) -> MessageBody {
    MessageBody::AppendEntries(AppendEntries {
        prev_log_index: prev_index,
        prev_log_term: prev_term,
        entries,
        leader_commit: commit,
        heartbeat_id: 0,
        sent_at_tick: 0,
    })
}

/// Mostly plausible AppendEntries: contiguous entries with non-decreasing terms.
fn plausible_append() -> impl Strategy<Value = MessageBody> {
    (
        0u64..8,
        0u64..3,
        prop::collection::vec(0u64..2, 0..4),
        0u64..12,
    )
        .prop_map(|(prev_index, prev_term, bumps, commit)| {
            let mut term = prev_term;
            let entries = bumps
                .iter()
                .enumerate()
                .map(|(k, bump)| {
                    term += bump;
                    entry(prev_index + 1 + k as u64, term)
                })
                .collect();
            append_body(prev_index, prev_term, entries, commit)
        })
}

/// Chunks of a 30-byte snapshot at chunk boundaries, sometimes corrupt.
fn plausible_chunk() -> impl Strategy<Value = MessageBody> {
    (1u64..10, 1u64..3, 0u64..3, any::<bool>(), any::<bool>()).prop_map(
        |(index, term, piece, whole, corrupt)| {
            let data = vec![3u8; 30];
            let (offset, len) = if whole { (0, 30) } else { (piece * 10, 10) };
            let MessageBody::InstallSnapshot(mut request) =
                chunk(&meta(index, term), &data, offset, len)
            else {
                unreachable!("built as InstallSnapshot")
            };
            if corrupt {
                request.checksum ^= 1;
            }
            MessageBody::InstallSnapshot(request)
        },
    )
}

fn arbitrary_body() -> impl Strategy<Value = MessageBody> {
    let small = 0u64..12;
    prop_oneof![
        plausible_append(),
        plausible_chunk(),
        (
            small.clone(),
            small.clone(),
            prop::collection::vec((small.clone(), small.clone()), 0..4),
            small.clone()
        )
            .prop_map(|(prev_index, prev_term, entries, commit)| {
                let entries = entries.into_iter().map(|(i, t)| entry(i, t)).collect();
                append_body(prev_index, prev_term, entries, commit)
            }),
        (any::<bool>(), small.clone(), small.clone(), small.clone()).prop_map(
            |(success, match_index, rejected_prev_index, last)| {
                MessageBody::AppendEntriesResponse(AppendEntriesResponse {
                    success,
                    match_index,
                    rejected_prev_index,
                    conflict: Some(ConflictHint {
                        conflict_term: Some(last),
                        first_index_of_conflict_term: match_index,
                        last_log_index: last,
                    }),
                    heartbeat_id: 0,
                    sent_at_tick: 0,
                })
            }
        ),
        (small.clone(), small.clone(), any::<bool>()).prop_map(|(index, term, transfer)| {
            MessageBody::RequestVote(RequestVote {
                last_log_index: index,
                last_log_term: term,
                leadership_transfer: transfer,
            })
        }),
        any::<bool>()
            .prop_map(|granted| MessageBody::RequestVoteResponse(VoteResponse { granted })),
        any::<bool>().prop_map(|granted| MessageBody::PreVoteResponse(VoteResponse { granted })),
        Just(MessageBody::TimeoutNow),
        (
            small.clone(),
            small.clone(),
            0u64..40,
            0u64..40,
            any::<bool>()
        )
            .prop_map(|(index, term, offset, len, corrupt)| {
                let data = vec![3u8; 30];
                let MessageBody::InstallSnapshot(mut request) =
                    chunk(&meta(index, term), &data, offset.min(30), len)
                else {
                    unreachable!("built as InstallSnapshot")
                };
                if corrupt {
                    request.checksum ^= 1;
                }
                MessageBody::InstallSnapshot(request)
            }),
        (small.clone(), 0u64..40, any::<bool>(), any::<bool>()).prop_map(
            |(snapshot_index, next_offset, installed, rejected)| {
                MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
                    snapshot_index,
                    next_offset,
                    installed,
                    rejected,
                })
            }
        ),
    ]
}

#[derive(Clone, Debug)]
enum Input {
    Message(NodeId, u64, MessageBody),
    Tick,
    PersistAll,
    Propose,
}

fn arbitrary_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        4 => (1u64..4, prop_oneof![8 => 1u64..4, 1 => 0u64..8, 1 => Just(u64::MAX)], arbitrary_body())
            .prop_map(|(from, term, body)| Input::Message(from, term, body)),
        2 => Just(Input::Tick),
        2 => Just(Input::PersistAll),
        1 => Just(Input::Propose),
    ]
}

/// Random loss, duplication, reordering, partitions, restarts, proposals and
/// snapshots on every node: in the end every node applied the same state.
fn run_chaos(seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cluster = Cluster::new();
    cluster.elect(1);
    cluster.chaos = Some(ChaCha8Rng::seed_from_u64(seed ^ 0x5EED));
    for step in 0..300u64 {
        let roll: f64 = rng.gen();
        if roll < 0.03 {
            cluster.isolated = [rng.gen_range(1..=3)].into_iter().collect();
        } else if roll < 0.08 {
            cluster.isolated.clear();
        } else if roll < 0.1 {
            cluster.restart_reporting(rng.gen_range(1..=3), true);
        }
        if let Some(leader) = cluster
            .nodes
            .values()
            .find(|n| n.is_leader())
            .map(|n| n.id())
        {
            let _ = cluster
                .node_mut(leader)
                .propose(vec![Bytes::from(format!("c{step}"))]);
        }
        if step % 25 == 0 {
            for id in [1, 2, 3] {
                cluster.maybe_snapshot(id, rng.gen_range(0..4));
            }
        }
        cluster.tick_all(1);
    }
    cluster.chaos = None;
    cluster.isolated.clear();
    let leader = cluster.tick_until_leader();
    cluster.propose(leader, 1, "final");
    cluster.tick_all(60);
    let leader = cluster.tick_until_leader();
    for id in [1, 2, 3] {
        assert_eq!(
            cluster.models[&id], cluster.models[&leader],
            "seed {seed}: node {id} differs from leader {leader}"
        );
    }
}

#[test]
fn transfers_survive_loss_duplication_reordering_partitions_and_restarts() {
    for seed in 0..u64::from(cases() / 8) {
        run_chaos(seed);
    }
}

/// 128 cases by default; `PROPTEST_CASES` overrides it.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Arbitrary (often impossible) message sequences never panic the core, and its
    /// invariants (checked after every input in test builds) hold throughout.
    #[test]
    fn arbitrary_message_sequences_never_panic_the_core(
        inputs in prop::collection::vec(arbitrary_input(), 1..80),
    ) {
        let mut node = RaftNode::new(config(2), members());
        let mut issued: Vec<u64> = Vec::new();
        let mut applied = 0;
        for input in inputs {
            match input {
                Input::Message(from, term, body) => node.step(Message { from, to: 2, term, body }),
                Input::Tick => node.tick(),
                Input::PersistAll => {
                    if let Some(seq) = issued.last() {
                        node.on_persisted(*seq);
                    }
                }
                Input::Propose => {
                    let _ = node.propose(vec![Bytes::from_static(b"p")]);
                }
            }
            while node.has_ready() {
                let ready = node.take_ready();
                if let Some(persist) = &ready.persist {
                    issued.push(persist.seq);
                }
                if let Some(meta) = &ready.restore_snapshot {
                    applied = meta.index;
                }
                for entry in &ready.committed_entries {
                    prop_assert!(entry.index > applied, "entry {} applied twice", entry.index);
                    applied = entry.index;
                }
                if let Some(last) = ready.committed_entries.last() {
                    node.on_applied(last.index);
                }
            }
        }
    }
}
