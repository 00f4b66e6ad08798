//! In-process clusters of real nodes (real WAL on disk, real threads) connected by
//! channels. The TCP transport and real processes are tested in `tally-net`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{unbounded, Receiver};
use parking_lot::RwLock;

use super::*;
use crate::kv::{encode_request, ClientSession, Command, KvLimits, KvResponse, KvStateMachine};
use crate::raft::Message;

type Registry = Arc<RwLock<HashMap<NodeId, NodeHandle<KvResponse>>>>;

/// Delivers messages straight into the destination's inbound queue, except across a
/// cut link.
struct ChannelTransport {
    from: NodeId,
    registry: Registry,
    isolated: Arc<RwLock<HashSet<NodeId>>>,
}

impl Transport for ChannelTransport {
    fn send(&mut self, messages: Vec<Message>) {
        let registry = self.registry.read();
        let isolated = self.isolated.read();
        for message in messages {
            if isolated.contains(&self.from) || isolated.contains(&message.to) {
                continue;
            }
            if let Some(handle) = registry.get(&message.to) {
                handle.deliver(message);
            }
        }
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    voters: Vec<NodeId>,
    nodes: HashMap<NodeId, Node<KvResponse>>,
    registry: Registry,
    isolated: Arc<RwLock<HashSet<NodeId>>>,
    next_sequence: u64,
    /// Applied to every node's options before it starts.
    tweak: fn(&mut NodeOptions),
    /// When set, every node's state machine sleeps this long per applied batch.
    apply_delay: Option<Duration>,
}

/// Generous bound for anything a test waits for; only hit when something is broken.
const PATIENCE: Duration = Duration::from_secs(60);

impl Cluster {
    fn start(size: u64) -> Cluster {
        Cluster::start_with(size, |_| {})
    }

    fn start_with(size: u64, tweak: fn(&mut NodeOptions)) -> Cluster {
        Cluster::start_slow(size, tweak, None)
    }

    fn start_slow(
        size: u64,
        tweak: fn(&mut NodeOptions),
        apply_delay: Option<Duration>,
    ) -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let dir = tempfile::tempdir().expect("tempdir");
        let voters: Vec<NodeId> = (1..=size).collect();
        let mut cluster = Cluster {
            dir,
            voters: voters.clone(),
            nodes: HashMap::new(),
            registry: Arc::default(),
            isolated: Arc::default(),
            next_sequence: 0,
            tweak,
            apply_delay,
        };
        for id in voters {
            cluster.start_node(id);
        }
        cluster
    }

    fn start_node(&mut self, id: NodeId) {
        let mut options = NodeOptions::new(
            id,
            self.voters.clone(),
            self.dir.path().join(format!("node-{id}")),
        );
        (self.tweak)(&mut options);
        let transport = ChannelTransport {
            from: id,
            registry: Arc::clone(&self.registry),
            isolated: Arc::clone(&self.isolated),
        };
        let state_machine = KvStateMachine::new(KvLimits::default());
        let node = match self.apply_delay {
            None => Node::start(options, state_machine, transport),
            Some(delay) => Node::start(
                options,
                SlowStateMachine {
                    inner: state_machine,
                    delay,
                },
                transport,
            ),
        }
        .expect("node starts");
        self.registry.write().insert(id, node.handle());
        self.nodes.insert(id, node);
    }

    /// Stops a node abruptly: its threads stop, nothing more is written. Everything it
    /// acknowledged was fsync'd before the acknowledgement.
    fn stop_node(&mut self, id: NodeId) {
        self.registry.write().remove(&id);
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().expect("clean stop");
        }
    }

    fn leader(&self) -> Option<NodeId> {
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(id, node)| {
                !self.isolated.read().contains(id)
                    && node.handle().status().role() == crate::raft::Role::Leader
            })
            .map(|(id, _)| *id)
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    fn wait_for_leader(&self) -> NodeId {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Some(leader) = self.leader() {
                return leader;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no single leader within {PATIENCE:?}");
    }

    fn encode(&mut self, command: &Command<'_>) -> Bytes {
        self.next_sequence += 1;
        let session = ClientSession {
            client_id: 7,
            sequence: self.next_sequence,
        };
        let mut out = Vec::new();
        encode_request(Some(session), command, &KvLimits::default(), &mut out).expect("encodes");
        Bytes::from(out)
    }

    /// Sends a write to whoever leads, retrying on NotLeader / unknown outcomes with the
    /// same session (so a retry never applies twice).
    fn write(&mut self, key: &str, value: &str) -> KvResponse {
        let command = self.encode(&Command::Set {
            key: key.as_bytes(),
            value: value.as_bytes(),
        });
        self.request_until_answered(command, false)
    }

    fn read(&mut self, key: &str) -> KvResponse {
        let query = self.encode(&Command::Get {
            key: key.as_bytes(),
        });
        self.request_until_answered(query, true)
    }

    fn request_until_answered(&mut self, payload: Bytes, read: bool) -> KvResponse {
        let deadline = Instant::now() + PATIENCE;
        let (sender, receiver): (_, Receiver<Reply<KvResponse>>) = unbounded();
        while Instant::now() < deadline {
            let leader = self.wait_for_leader();
            let handle = self.nodes[&leader].handle();
            let reply = ReplyTo::new(1, sender.clone());
            if read {
                handle.read(payload.clone(), reply);
            } else {
                handle.propose(payload.clone(), reply);
            }
            match receiver.recv_timeout(PATIENCE) {
                Ok(Reply {
                    result: Ok(response),
                    ..
                }) => return response,
                Ok(Reply { result: Err(_), .. }) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => panic!("no reply within {PATIENCE:?}"),
            }
        }
        panic!("request not answered within {PATIENCE:?}");
    }
}

#[test]
fn three_nodes_elect_exactly_one_leader() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let status = cluster.nodes[&leader].handle();
    assert!(status.status().term.load(Ordering::Relaxed) >= 1);
    for (id, node) in &cluster.nodes {
        if *id != leader {
            assert_ne!(node.handle().status().role(), crate::raft::Role::Leader);
        }
    }
}

#[test]
fn acknowledged_writes_are_readable_from_the_leader() {
    let mut cluster = Cluster::start(3);
    for k in 0..50 {
        assert_eq!(
            cluster.write(&format!("key-{k}"), &format!("value-{k}")),
            KvResponse::Ok
        );
    }
    for k in 0..50 {
        let expected = KvResponse::Bulk(Some(Bytes::from(format!("value-{k}"))));
        assert_eq!(cluster.read(&format!("key-{k}")), expected);
    }
    let leader = cluster.wait_for_leader();
    let stats = cluster.nodes[&leader].handle().wal_stats();
    assert!(
        stats.entries >= 50,
        "leader WAL holds the writes: {stats:?}"
    );
}

#[test]
fn pipelined_proposals_from_many_clients_all_commit() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let handle = cluster.nodes[&leader].handle();
    let (sender, receiver) = unbounded();
    let total = 2_000u64;
    for k in 0..total {
        let mut out = Vec::new();
        let key = format!("k{k}");
        let session = ClientSession {
            client_id: 100 + k % 16,
            sequence: 1 + k / 16,
        };
        encode_request(
            Some(session),
            &Command::Set {
                key: key.as_bytes(),
                value: b"v",
            },
            &KvLimits::default(),
            &mut out,
        )
        .expect("encodes");
        handle.propose(Bytes::from(out), ReplyTo::new(k, sender.clone()));
    }
    let mut answered = HashSet::new();
    for _ in 0..total {
        let reply = receiver
            .recv_timeout(PATIENCE)
            .expect("every proposal is answered");
        // A leader change during the test would give OutcomeUnknown: acceptable, but
        // then the write must not be reported OK twice.
        if let Ok(response) = reply.result {
            assert_eq!(response, KvResponse::Ok);
        }
        assert!(
            answered.insert(reply.tag),
            "tag {} answered twice",
            reply.tag
        );
    }
    let stats = handle.wal_stats();
    assert!(
        stats.batches < stats.entries,
        "group commit must put several entries in one fsync: {stats:?}"
    );
}

#[test]
fn a_batch_of_proposals_larger_than_one_wal_append_is_split_and_all_commit() {
    // 64 KiB per WAL append; one batch of 200 commands of 1 KiB (about 200 KiB) reaches
    // the raft thread in one queue operation and becomes one persist action.
    let cluster = Cluster::start_with(3, |options| {
        options.wal.max_pending_bytes = 64 << 10;
        options.wal.wal.max_entry_size_bytes = 16 << 10;
    });
    let leader = cluster.wait_for_leader();
    let handle = cluster.nodes[&leader].handle();
    let (sender, receiver) = unbounded();
    let value = vec![b'v'; 1024];
    let batch: Vec<Submission<KvResponse>> = (0..200u64)
        .map(|k| {
            let key = format!("big-batch-{k}");
            let mut out = Vec::new();
            let session = ClientSession {
                client_id: 900,
                sequence: k + 1,
            };
            encode_request(
                Some(session),
                &Command::Set {
                    key: key.as_bytes(),
                    value: &value,
                },
                &KvLimits::default(),
                &mut out,
            )
            .expect("encodes");
            Submission::Propose {
                command: Bytes::from(out),
                reply: ReplyTo::new(k, sender.clone()),
            }
        })
        .collect();
    handle.submit_batch(batch);
    for _ in 0..200 {
        let reply = receiver
            .recv_timeout(PATIENCE)
            .expect("every proposal answered");
        assert_eq!(reply.result, Ok(KvResponse::Ok), "proposal {}", reply.tag);
    }
    assert!(
        !cluster.nodes[&leader].has_failed(),
        "the leader must not fail-stop"
    );
}

#[test]
fn a_new_leader_takes_over_and_keeps_every_acknowledged_write() {
    let mut cluster = Cluster::start(3);
    for k in 0..20 {
        assert_eq!(cluster.write(&format!("a{k}"), "1"), KvResponse::Ok);
    }
    let old_leader = cluster.wait_for_leader();
    cluster.stop_node(old_leader);
    let new_leader = cluster.wait_for_leader();
    assert_ne!(new_leader, old_leader);
    for k in 0..20 {
        assert_eq!(
            cluster.read(&format!("a{k}")),
            KvResponse::Bulk(Some(Bytes::from_static(b"1")))
        );
    }
    assert_eq!(cluster.write("after", "2"), KvResponse::Ok);
}

#[test]
fn a_restarted_node_recovers_from_its_directory_and_catches_up() {
    let mut cluster = Cluster::start(3);
    assert_eq!(cluster.write("before", "1"), KvResponse::Ok);
    let leader = cluster.wait_for_leader();
    let follower = *cluster
        .voters
        .iter()
        .find(|id| **id != leader)
        .expect("a follower");
    cluster.stop_node(follower);
    for k in 0..30 {
        assert_eq!(cluster.write(&format!("during{k}"), "2"), KvResponse::Ok);
    }
    cluster.start_node(follower);
    let target = cluster.nodes[&leader]
        .handle()
        .status()
        .commit_index
        .load(Ordering::Relaxed);
    let deadline = Instant::now() + PATIENCE;
    let restarted = cluster.nodes[&follower].handle();
    while restarted.status().applied_index.load(Ordering::Relaxed) < target {
        assert!(
            Instant::now() < deadline,
            "restarted follower did not catch up"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_follower_cut_off_and_healed_catches_up() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let follower = *cluster
        .voters
        .iter()
        .find(|id| **id != leader)
        .expect("a follower");
    cluster.isolated.write().insert(follower);
    for k in 0..30 {
        assert_eq!(cluster.write(&format!("cut{k}"), "3"), KvResponse::Ok);
    }
    cluster.isolated.write().clear();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let leader = cluster.wait_for_leader();
        let target = cluster.nodes[&leader]
            .handle()
            .status()
            .commit_index
            .load(Ordering::Relaxed);
        let applied = cluster.nodes[&follower]
            .handle()
            .status()
            .applied_index
            .load(Ordering::Relaxed);
        if applied >= target && target > 30 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "healed follower did not catch up ({applied} < {target})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_follower_refuses_writes_and_names_the_leader() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    // Wait until every follower has heard from the leader.
    let deadline = Instant::now() + PATIENCE;
    let follower = *cluster
        .voters
        .iter()
        .find(|id| **id != leader)
        .expect("a follower");
    let handle = cluster.nodes[&follower].handle();
    while handle.status().leader() != Some(leader) {
        assert!(
            Instant::now() < deadline,
            "follower never learned the leader"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (sender, receiver) = unbounded();
    handle.propose(Bytes::from_static(b"x"), ReplyTo::new(9, sender));
    let reply = receiver.recv_timeout(PATIENCE).expect("answered");
    match reply.result {
        // Leadership may have moved in between; the hint must still name a member.
        Err(ClientError::NotLeader { leader: Some(hint) }) => {
            assert!(cluster.voters.contains(&hint))
        }
        Err(ClientError::NotLeader { leader: None }) => {}
        other => panic!("expected NotLeader, got {other:?}"),
    }
}

/// A waker that checks, when called, that the reply is already on the channel.
struct ReplyVisibleWaker {
    receiver: Receiver<Reply<KvResponse>>,
    calls: std::sync::atomic::AtomicU64,
    calls_with_reply_queued: std::sync::atomic::AtomicU64,
}

impl ReplyWaker for ReplyVisibleWaker {
    fn wake(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.receiver.is_empty() {
            self.calls_with_reply_queued.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn reply_waker_is_called_once_per_reply_and_only_after_the_reply_is_queued() {
    let (sender, receiver) = unbounded();
    let waker = Arc::new(ReplyVisibleWaker {
        receiver: receiver.clone(),
        calls: Default::default(),
        calls_with_reply_queued: Default::default(),
    });
    for tag in 0..3 {
        let reply = ReplyTo::with_waker(tag, sender.clone(), Arc::clone(&waker) as _);
        reply.send(Err(ClientError::Overloaded));
        assert_eq!(receiver.try_recv().map(|r| r.tag).ok(), Some(tag));
    }
    assert_eq!(waker.calls.load(Ordering::SeqCst), 3);
    assert_eq!(waker.calls_with_reply_queued.load(Ordering::SeqCst), 3);
    // A plain target never wakes anyone.
    ReplyTo::new(7, sender).send(Err(ClientError::Overloaded));
    assert_eq!(waker.calls.load(Ordering::SeqCst), 3);
}

#[test]
fn reply_waker_is_not_called_when_the_caller_went_away() {
    let (sender, receiver) = unbounded::<Reply<KvResponse>>();
    let waker = Arc::new(ReplyVisibleWaker {
        receiver: unbounded().1,
        calls: Default::default(),
        calls_with_reply_queued: Default::default(),
    });
    drop(receiver);
    ReplyTo::with_waker(1, sender, Arc::clone(&waker) as _).send(Err(ClientError::NodeStopped));
    assert_eq!(waker.calls.load(Ordering::SeqCst), 0);
}

// ----- snapshots --------------------------------------------------------------------

/// Snapshots every 100 entries, 10 retained, 64 KiB WAL segments (so compaction really
/// deletes files in a short test).
fn snapshot_often(options: &mut NodeOptions) {
    options.snapshot = crate::driver::SnapshotPolicy {
        log_entries: 100,
        log_bytes: 0,
        retain_entries: 10,
        keep_files: 2,
    };
    options.wal.wal.segment_size_bytes = 64 << 10;
    options.wal.wal.max_entry_size_bytes = 16 << 10;
    options.wal.max_pending_bytes = 32 << 10;
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Names of the files in `dir` ending with `suffix`, sorted.
fn files_ending_with(dir: &std::path::Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("node directory")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(suffix))
        .collect();
    names.sort();
    names
}

fn segment_files(dir: &std::path::Path) -> Vec<String> {
    files_ending_with(dir, ".wal")
}

fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
    files_ending_with(dir, ".snap")
}

#[test]
fn snapshots_compact_memory_and_disk_and_every_node_restarts_from_its_snapshot() {
    let mut cluster = Cluster::start_with(3, snapshot_often);
    let value = "v".repeat(200);
    for k in 0..600 {
        assert_eq!(
            cluster.write(&format!("s{}", k % 50), &value),
            KvResponse::Ok
        );
    }
    for id in cluster.voters.clone() {
        let handle = cluster.nodes[&id].handle();
        wait_for("every node takes a snapshot and compacts", || {
            let status = handle.status();
            status.snapshot_index.load(Ordering::Relaxed) >= 400
                && status.log_first_index.load(Ordering::Relaxed) > 1
        });
        let status = handle.status();
        assert!(
            status.log_entries_in_memory.load(Ordering::Relaxed) < 250,
            "node {id} keeps only the retained window and what came after its snapshot"
        );
        // The snapshot thread deletes files after the snapshot is reported: poll.
        let dir = cluster.dir.path().join(format!("node-{id}"));
        wait_for(
            &format!("node {id} keeps the newest two snapshot files"),
            || {
                let snapshots = snapshot_files(&dir);
                !snapshots.is_empty() && snapshots.len() <= 2
            },
        );
        wait_for(
            &format!("node {id} deletes its oldest WAL segments"),
            || {
                segment_files(&dir)
                    .first()
                    .is_some_and(|first| !first.ends_with("-00000000000000000001.wal"))
            },
        );
    }
    // Everyone restarts from snapshot + log; the data is all there.
    let mut snapshot_index = std::collections::BTreeMap::new();
    for id in cluster.voters.clone() {
        let handle = cluster.nodes[&id].handle();
        snapshot_index.insert(id, handle.status().snapshot_index.load(Ordering::Relaxed));
        cluster.stop_node(id);
    }
    for id in cluster.voters.clone() {
        cluster.start_node(id);
        // Reported at once, before anything new applies (the first node back cannot
        // even elect a leader alone): INFO's applied_index is the restored state.
        let applied = cluster.nodes[&id]
            .handle()
            .status()
            .applied_index
            .load(Ordering::Relaxed);
        assert!(
            applied >= snapshot_index[&id],
            "node {id} restarted from its snapshot at {} reports applied_index {applied}",
            snapshot_index[&id]
        );
    }
    for k in 0..50 {
        assert_eq!(
            cluster.read(&format!("s{k}")),
            KvResponse::Bulk(Some(Bytes::from(value.clone())))
        );
    }
    assert_eq!(cluster.write("after-restart", "1"), KvResponse::Ok);
}

#[test]
fn a_follower_down_while_the_leader_compacted_catches_up_by_install_snapshot() {
    let mut cluster = Cluster::start_with(3, snapshot_often);
    assert_eq!(cluster.write("first", "1"), KvResponse::Ok);
    let leader = cluster.wait_for_leader();
    let follower = *cluster
        .voters
        .iter()
        .find(|id| **id != leader)
        .expect("a follower");
    cluster.stop_node(follower);
    for k in 0..500 {
        assert_eq!(
            cluster.write(&format!("while-down-{k}"), "x"),
            KvResponse::Ok
        );
    }
    let leader = cluster.wait_for_leader();
    let leader_status = cluster.nodes[&leader].handle();
    wait_for("the leader compacted past what the follower has", || {
        leader_status
            .status()
            .log_first_index
            .load(Ordering::Relaxed)
            > 100
    });
    cluster.start_node(follower);
    let target = leader_status.status().commit_index.load(Ordering::Relaxed);
    let restarted = cluster.nodes[&follower].handle();
    wait_for("the follower installs the snapshot and catches up", || {
        restarted.status().applied_index.load(Ordering::Relaxed) >= target
    });
    // Status counters are published after the raft thread's turn: poll.
    wait_for("the follower caught up through InstallSnapshot", || {
        restarted
            .status()
            .snapshots_installed
            .load(Ordering::Relaxed)
            >= 1
    });
    // Its state is the leader's: let it lead and read through it.
    leader_status.transfer_leadership(follower);
    wait_for("leadership moves to the caught-up follower", || {
        cluster.leader() == Some(follower)
    });
    assert_eq!(
        cluster.read("while-down-0"),
        KvResponse::Bulk(Some(Bytes::from_static(b"x")))
    );
    assert_eq!(
        cluster.read("first"),
        KvResponse::Bulk(Some(Bytes::from_static(b"1")))
    );
}

#[test]
fn snapshot_now_answers_once_a_snapshot_covering_everything_applied_is_durable() {
    let mut cluster = Cluster::start(3);
    for k in 0..20 {
        assert_eq!(cluster.write(&format!("n{k}"), "1"), KvResponse::Ok);
    }
    let leader = cluster.wait_for_leader();
    let handle = cluster.nodes[&leader].handle();
    let applied = handle.status().applied_index.load(Ordering::Relaxed);
    let taken = handle.snapshot_now().expect("a snapshot");
    assert!(taken.index >= applied, "{taken:?} covers index {applied}");
    let dir = cluster.dir.path().join(format!("node-{leader}"));
    assert!(
        snapshot_files(&dir).contains(&taken.name),
        "the file {} is in place",
        taken.name
    );
    assert_eq!(
        std::path::PathBuf::from(&taken.path),
        dir.join(&taken.name),
        "the answer names the file's path"
    );
    // The status counters are published after the raft thread's turn: poll.
    wait_for("INFO's snapshot_index reaches the snapshot", || {
        handle.status().snapshot_index.load(Ordering::Relaxed) >= taken.index
    });
    // A second request with nothing applied since is answered by the newest durable
    // snapshot (no new one is due, so waiting for one would never end).
    let (sender, receiver) = unbounded();
    handle.request_snapshot(Box::new(move |result| {
        let _ = sender.send(result);
    }));
    let again = receiver
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("a second snapshot request is answered")
        .expect("a snapshot");
    assert!(again.index >= taken.index);
}

#[test]
fn a_node_whose_only_snapshot_is_corrupt_refuses_to_start_and_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node_dir = dir.path().join("node-1");
    let start = |dir: &std::path::Path| {
        let mut options = NodeOptions::new(1, vec![1], dir);
        snapshot_often(&mut options);
        options.snapshot.retain_entries = 0;
        let transport = ChannelTransport {
            from: 1,
            registry: Arc::default(),
            isolated: Arc::default(),
        };
        Node::<KvResponse>::start(options, KvStateMachine::new(KvLimits::default()), transport)
    };
    {
        let node = start(&node_dir).expect("starts");
        let handle = node.handle();
        wait_for("the single node leads", || {
            handle.status().role() == crate::raft::Role::Leader
        });
        let (sender, receiver) = unbounded();
        for k in 0..400u64 {
            let mut out = Vec::new();
            let key = format!("c{k}");
            encode_request(
                Some(ClientSession {
                    client_id: 5,
                    sequence: k + 1,
                }),
                &Command::Set {
                    key: key.as_bytes(),
                    value: &[b'z'; 300],
                },
                &KvLimits::default(),
                &mut out,
            )
            .expect("encodes");
            handle.propose(Bytes::from(out), ReplyTo::new(k, sender.clone()));
        }
        for _ in 0..400 {
            let reply = receiver.recv_timeout(PATIENCE).expect("answered");
            assert_eq!(reply.result, Ok(KvResponse::Ok));
        }
        wait_for("the log is compacted below a snapshot", || {
            handle.status().log_first_index.load(Ordering::Relaxed) > 1
        });
        // The snapshot thread deletes the covered WAL segments after that: poll.
        wait_for("the WAL no longer holds the first entries", || {
            segment_files(&node_dir)
                .first()
                .is_some_and(|name| !name.ends_with("-00000000000000000001.wal"))
        });
        node.shutdown().expect("clean stop");
    }
    // Every snapshot file loses a byte in the middle: none is usable.
    let snapshots = snapshot_files(&node_dir);
    assert!(!snapshots.is_empty());
    for name in &snapshots {
        let path = node_dir.join(name);
        let mut bytes = std::fs::read(&path).expect("read snapshot");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&path, bytes).expect("write snapshot");
    }
    let error = match start(&node_dir) {
        Ok(_) => panic!("a node without a usable snapshot must not start"),
        Err(error) => error.to_string(),
    };
    assert!(
        snapshots.iter().any(|name| error.contains(name.as_str())),
        "the error names the snapshot file: {error}"
    );
}

/// A state machine that takes `delay` for every batch it applies (a slow database).
struct SlowStateMachine {
    inner: KvStateMachine,
    delay: Duration,
}

impl StateMachine for SlowStateMachine {
    type Response = KvResponse;

    fn apply(
        &mut self,
        entries: &[crate::state_machine::CommittedEntry<'_>],
    ) -> Result<Vec<KvResponse>, crate::state_machine::StateMachineError> {
        std::thread::sleep(self.delay);
        self.inner.apply(entries)
    }

    fn query(&self, request: &[u8]) -> KvResponse {
        self.inner.query(request)
    }

    fn applied_index(&self) -> u64 {
        self.inner.applied_index()
    }

    fn snapshot(&self) -> Box<dyn crate::state_machine::SnapshotSource> {
        self.inner.snapshot()
    }

    fn restore(
        &mut self,
        input: &mut dyn std::io::Read,
    ) -> Result<u64, crate::state_machine::StateMachineError> {
        self.inner.restore(input)
    }
}

fn one_slot_apply_queue(options: &mut NodeOptions) {
    options.apply_queue_capacity = 1;
}

/// (term, role) of every node.
fn terms_and_roles(cluster: &Cluster) -> Vec<(NodeId, u64, crate::raft::Role)> {
    let mut seen: Vec<_> = cluster
        .nodes
        .iter()
        .map(|(id, node)| {
            let handle = node.handle();
            let status = handle.status();
            (
                *id,
                status.term.load(std::sync::atomic::Ordering::Relaxed),
                status.role(),
            )
        })
        .collect();
    seen.sort_by_key(|(id, _, _)| *id);
    seen
}

#[test]
fn a_full_apply_queue_behind_a_slow_state_machine_does_not_stop_heartbeats() {
    // Each applied batch takes five election timeouts (100-200 ms), and the apply queue
    // holds one batch: a raft thread that waited for the apply queue would miss every
    // heartbeat meanwhile, and its cluster would hold elections (it did, before the
    // driver's apply outbox).
    let apply_delay = Duration::from_millis(1000);
    let mut cluster = Cluster::start_slow(3, one_slot_apply_queue, Some(apply_delay));
    let leader = cluster.wait_for_leader();
    // The no-op of the term is applied first, so the load starts from a settled term.
    wait_for("the leader applied its no-op", || {
        let handle = cluster.nodes[&leader].handle();
        handle
            .status()
            .applied_index
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    });
    let before = terms_and_roles(&cluster);
    let (sender, replies): (_, Receiver<Reply<KvResponse>>) = unbounded();
    let writes = 20u64;
    for k in 0..writes {
        let key = format!("slow-{k}");
        let command = cluster.encode(&Command::Set {
            key: key.as_bytes(),
            value: b"v",
        });
        let handle = cluster.nodes[&leader].handle();
        handle.propose(command, ReplyTo::new(k, sender.clone()));
        // Spread over several turns, so several batches queue up behind the slow apply.
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let mut answered = 0;
    while answered < writes || started.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            terms_and_roles(&cluster),
            before,
            "a term or role changed while applying slowly"
        );
        assert!(
            started.elapsed() < PATIENCE,
            "only {answered} of {writes} writes answered"
        );
        if answered < writes {
            if let Ok(reply) = replies.recv_timeout(Duration::from_millis(10)) {
                assert_eq!(reply.result, Ok(KvResponse::Ok), "write {}", reply.tag);
                answered += 1;
            }
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert_eq!(terms_and_roles(&cluster), before);
}
