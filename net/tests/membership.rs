//! Operators changing a running cluster, with real `tally-server` processes under
//! client load: grow and shrink, replace a dead member, remove the leader, refuse a
//! contradicting `--peer` list and a wiped voter reusing its id.
//!
//! Every test runs [`Load`]: writer threads that SET unique keys through whichever
//! member leads (following `-NOTLEADER`), recording every operation in a [`History`]
//! (invocation, completion, outcome). At the end every acknowledged write must read
//! back. The history keeps what a linearizability checker needs (per-client operation
//! order, invoke/complete instants, acknowledged or unknown outcomes): the project's
//! checker (`tally_engine::lincheck`) judges the whole history in
//! [`History::check_linearizable`].

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use tally_net::resp::RespValue;

// ---------------------------------------------------------------------------------
// Client load and its history.

/// What happened to one operation.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// The server acknowledged it (`+OK` for a SET, the value for a GET).
    Ok(Option<String>),
    /// No answer or `-UNKNOWN`/a dropped connection: it may or may not have happened.
    Unknown,
    /// Refused before anything happened (`-NOTLEADER`, `-ERR`).
    Failed,
}

#[derive(Clone, Debug)]
struct Operation {
    client: usize,
    /// `SET key value` or `GET key` (value `None`).
    key: String,
    value: Option<String>,
    invoked: Instant,
    completed: Instant,
    outcome: Outcome,
}

/// Every operation of a run, in completion order per client.
#[derive(Default)]
struct History {
    operations: Vec<Operation>,
}

impl History {
    fn acknowledged_writes(&self) -> BTreeMap<String, String> {
        self.operations
            .iter()
            .filter(|op| {
                op.value.is_some() && op.outcome == Outcome::Ok(None) && !is_register(&op.key)
            })
            .map(|op| (op.key.clone(), op.value.clone().unwrap_or_default()))
            .collect()
    }

    /// Checks the whole history (unique-key SETs and the shared registers' SETs and
    /// GETs) with the project's black-box linearizability checker
    /// (`tally_engine::lincheck`); refused requests took no effect and are left out.
    fn check_linearizable(&self) {
        use tally_engine::lincheck::{self, Entry, Op};
        let Some(origin) = self.operations.iter().map(|op| op.invoked).min() else {
            return;
        };
        let ns = |at: Instant| at.duration_since(origin).as_nanos() as u64;
        let mut history = lincheck::History::new();
        for op in &self.operations {
            let key = op.key.clone().into_bytes();
            let (op_kind, outcome) = match (&op.value, &op.outcome) {
                (_, Outcome::Failed) => continue,
                (Some(value), Outcome::Ok(_)) => (
                    Op::Set {
                        key,
                        value: value.clone().into_bytes(),
                    },
                    lincheck::Outcome::Ok,
                ),
                (Some(value), Outcome::Unknown) => (
                    Op::Set {
                        key,
                        value: value.clone().into_bytes(),
                    },
                    lincheck::Outcome::Unknown,
                ),
                (None, Outcome::Ok(read)) => (
                    Op::Get { key },
                    lincheck::Outcome::Value(read.clone().map(String::into_bytes)),
                ),
                (None, Outcome::Unknown) => (Op::Get { key }, lincheck::Outcome::Unknown),
            };
            history.push(Entry {
                client: op.client as u64,
                op: op_kind,
                invoke_ns: ns(op.invoked),
                complete_ns: ns(op.completed),
                outcome,
            });
        }
        let registers = self
            .operations
            .iter()
            .filter(|op| is_register(&op.key) && op.outcome != Outcome::Failed)
            .count();
        assert!(registers > 0, "the load touched no shared register");
        if let Err(violation) = lincheck::check(&history) {
            panic!("the client history is not linearizable: {violation}");
        }
    }
}

/// Writer threads that SET unique keys through the leader until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    /// Client ports of the members to try.
    ports: Arc<Mutex<Vec<u16>>>,
    history: Arc<Mutex<History>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(ports: Vec<u16>, n_clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ports = Arc::new(Mutex::new(ports));
        let history = Arc::new(Mutex::new(History::default()));
        // Each load has its own registers: a later load (e.g. on a cluster restored from
        // a snapshot) must not start from values its history never saw written.
        static LOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let load_id = LOADS.fetch_add(1, Ordering::Relaxed);
        let threads = (0..n_clients)
            .map(|client| {
                let (stop, ports, history) =
                    (Arc::clone(&stop), Arc::clone(&ports), Arc::clone(&history));
                std::thread::spawn(move || write_loop(load_id, client, &stop, &ports, &history))
            })
            .collect();
        Load {
            stop,
            ports,
            history,
            threads,
        }
    }

    fn add_port(&self, port: u16) {
        self.ports.lock().expect("ports").push(port);
    }

    fn acknowledged(&self) -> usize {
        self.history
            .lock()
            .expect("history")
            .acknowledged_writes()
            .len()
    }

    /// Waits until `more` further writes were acknowledged (the cluster makes progress).
    fn wait_progress(&self, more: usize) {
        let target = self.acknowledged() + more;
        wait_until(&format!("{target} acknowledged writes"), || {
            (self.acknowledged() >= target).then_some(())
        });
    }

    fn stop(mut self) -> History {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads.drain(..) {
            thread.join().expect("load thread");
        }
        std::mem::take(&mut *self.history.lock().expect("history"))
    }
}

fn write_loop(
    load_id: u64,
    client: usize,
    stop: &AtomicBool,
    ports: &Mutex<Vec<u16>>,
    history: &Mutex<History>,
) {
    let mut connection: Option<Client> = None;
    let mut target = 0usize;
    let mut sequence = 0u64;
    while !stop.load(Ordering::Acquire) {
        let Some(client_conn) = connection.as_mut() else {
            let candidates = ports.lock().expect("ports").clone();
            target = (target + 1) % candidates.len();
            connection = Client::connect(candidates[target]).ok();
            if connection.is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        };
        sequence += 1;
        let key = format!("c{client}-{sequence}");
        let value = format!("v{sequence}");
        let invoked = Instant::now();
        let reply = set_with_timeout(client_conn, &key, &value);
        let outcome = match &reply {
            Some(RespValue::Simple(text)) if text == b"OK" => Outcome::Ok(None),
            Some(RespValue::Error(text)) if text.starts_with(b"NOTLEADER") => {
                connection = redirect(text).and_then(|port| Client::connect(port).ok());
                Outcome::Failed
            }
            Some(RespValue::Error(text)) if text.starts_with(b"UNKNOWN") => Outcome::Unknown,
            Some(RespValue::Error(_)) => Outcome::Failed,
            Some(_) => Outcome::Unknown,
            None => {
                connection = None;
                Outcome::Unknown
            }
        };
        if outcome == Outcome::Failed
            && matches!(&reply, Some(RespValue::Error(t)) if !t.starts_with(b"NOTLEADER"))
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        history.lock().expect("history").operations.push(Operation {
            client,
            key,
            value: Some(value),
            invoked,
            completed: Instant::now(),
            outcome,
        });
        if let Some(client_conn) = connection.as_mut() {
            let register = register_op(load_id, client, sequence, client_conn);
            if register.outcome == Outcome::Unknown {
                connection = None;
            }
            history.lock().expect("history").operations.push(register);
        }
    }
}

/// Shared registers every client writes and reads, so the checker has real
/// concurrency to judge (unique keys alone are trivially linearizable).
const REGISTERS: u64 = 3;

fn is_register(key: &str) -> bool {
    key.starts_with("reg-")
}

/// One SET (odd sequences; a value no other write uses) or GET of a shared register.
fn register_op(load_id: u64, client: usize, sequence: u64, connection: &mut Client) -> Operation {
    let key = format!("reg-{load_id}-{}", sequence % REGISTERS);
    let value = (sequence % 2 == 1).then(|| format!("c{client}-{sequence}"));
    let invoked = Instant::now();
    let reply = match &value {
        Some(value) => set_with_timeout(connection, &key, value),
        None => get_with_timeout(connection, &key),
    };
    let outcome = match (&value, reply) {
        (Some(_), Some(RespValue::Simple(text))) if text == b"OK" => Outcome::Ok(None),
        (None, Some(RespValue::Bulk(read))) => {
            Outcome::Ok(read.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
        }
        // Refused before being proposed: no effect.
        (_, Some(RespValue::Error(text)))
            if text.starts_with(b"NOTLEADER")
                || text.starts_with(b"TRYAGAIN")
                || text.starts_with(b"BUSY") =>
        {
            Outcome::Failed
        }
        // A read that failed changed nothing.
        (None, Some(RespValue::Error(_))) => Outcome::Failed,
        // Any other answer to a write (`-UNKNOWN`, `-ERR the node stopped`, none) may
        // or may not have taken effect.
        _ => Outcome::Unknown,
    };
    Operation {
        client,
        key,
        value,
        invoked,
        completed: Instant::now(),
        outcome,
    }
}

fn get_with_timeout(client: &mut Client, key: &str) -> Option<RespValue> {
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    client.send_raw(&encode(&["GET", key]));
    client.read_reply()
}

/// A SET that gives up (outcome unknown) when a member hangs on to it for long, e.g. a
/// removed member that no longer hears from anyone.
fn set_with_timeout(client: &mut Client, key: &str, value: &str) -> Option<RespValue> {
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    client.send_raw(&encode(&["SET", key, value]));
    client.read_reply()
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    let parts: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    tally_net::resp::write_command(&mut out, &parts);
    out
}

fn redirect(text: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(text);
    text.split_whitespace()
        .nth(1)?
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

/// Reads every acknowledged write back from `member` (a linearizable read on the
/// leader): none may be lost.
fn verify_no_lost_write(cluster: &Cluster, history: &History) {
    history.check_linearizable();
    let acknowledged = history.acknowledged_writes();
    assert!(!acknowledged.is_empty(), "the load made no progress");
    let leader = leader_of(cluster);
    let mut client = cluster.member(leader).client();
    let keys: Vec<&String> = acknowledged.keys().collect();
    for chunk in keys.chunks(500) {
        let commands: Vec<Vec<Vec<u8>>> = chunk.iter().map(|key| cmd(&["GET", key])).collect();
        let replies = client.pipeline(&commands);
        for (key, reply) in chunk.iter().zip(replies) {
            assert_eq!(
                reply,
                bulk(&acknowledged[*key]),
                "acknowledged write of {key} lost"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// Admin helpers.

/// The running member that leads in the highest term (members waiting to join name no
/// leader, so `Cluster::wait_for_leader` would wait for them).
fn leader_of(cluster: &Cluster) -> u64 {
    wait_until("a leader", || {
        cluster
            .members
            .iter()
            .filter(|member| member.child.is_some())
            .filter_map(|member| {
                let info = member.raft_info()?;
                let term: u64 = info.get("term")?.parse().ok()?;
                (info.get("role").map(String::as_str) == Some("leader"))
                    .then_some((term, member.id))
            })
            .max()
            .map(|(_, id)| id)
    })
}

/// Runs a membership command on the leader until it is done, as an operator would:
/// following redirects, retrying while another change (e.g. recording member
/// information) is in progress or the learner still lags, and after an unknown outcome
/// (leadership lost mid-change on a busy machine), where `done_already` (the refusal a
/// retry gets once the change did happen) also means done.
fn change(cluster: &Cluster, args: &[&str], done_already: &str) {
    wait_until(&format!("{args:?} done"), || {
        let leader = leader_of(cluster);
        let reply = cluster.member(leader).client().call(args);
        match error_text(&reply) {
            None if reply == ok() => Some(()),
            Some(text) if text.contains(done_already) => Some(()),
            Some(text)
                if text.starts_with("NOTLEADER")
                    || text.contains("in progress")
                    || text.contains("still lags")
                    || text.contains("has not answered")
                    || text.contains("outcome unknown") =>
            {
                None
            }
            _ => panic!("{args:?} answered {reply:?}"),
        }
    })
}

/// `TALLY MEMBERS` on `id`, as one map of fields per member id.
fn members(member: &Member) -> BTreeMap<u64, BTreeMap<String, String>> {
    let RespValue::Array(Some(items)) = member.client().call(&["TALLY", "MEMBERS"]) else {
        panic!("TALLY MEMBERS is an array");
    };
    items
        .into_iter()
        .map(|item| {
            let RespValue::Bulk(Some(line)) = item else {
                panic!("a member is a bulk string");
            };
            let fields: BTreeMap<String, String> = String::from_utf8_lossy(&line)
                .split_whitespace()
                .filter_map(|field| field.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (fields["id"].parse().expect("id"), fields)
        })
        .collect()
}

/// Waits until the leader's `TALLY MEMBERS` lists exactly `expected` as voters (the
/// list is refreshed once per tick, so right after a change it may still be older).
fn wait_voters(cluster: &Cluster, expected: &[u64]) {
    wait_until(&format!("voters {expected:?}"), || {
        (voters(cluster.member(leader_of(cluster))) == expected).then_some(())
    });
}

fn voters(member: &Member) -> Vec<u64> {
    members(member)
        .into_iter()
        .filter(|(_, fields)| fields["role"] == "voter")
        .map(|(id, _)| id)
        .collect()
}

/// Lays out `total` members; the first `founders` form the cluster (their `--peer`
/// lists name only founders), the others wait to `--join`.
fn cluster_of(founders: u64, total: u64, extra_args: &[&str]) -> Cluster {
    let mut cluster = Cluster::start_with_stopped(total, |_, _, port| port);
    for member in &mut cluster.members {
        member.extra_args = extra_args.iter().map(|arg| arg.to_string()).collect();
        if member.id <= founders {
            member.dials.retain(|(peer, _)| *peer <= founders);
            member.spawn();
        } else {
            member.extra_args.push("--join".into());
        }
    }
    cluster
}

/// Starts a joining member, adds it and promotes it once caught up.
fn add_and_promote(cluster: &mut Cluster, load: &Load, id: u64) {
    cluster.member_mut(id).spawn();
    let member = cluster.member(id);
    let (peer, client) = (
        format!("127.0.0.1:{}", member.peer_port),
        format!("127.0.0.1:{}", member.client_port),
    );
    let id_text = id.to_string();
    change(
        cluster,
        &["TALLY", "MEMBER", "ADD", &id_text, &peer, &client],
        "already a member",
    );
    load.add_port(member.client_port);
    change(
        cluster,
        &["TALLY", "MEMBER", "PROMOTE", &id_text],
        "is not a learner",
    );
}

fn remove(cluster: &Cluster, id: u64) {
    change(
        cluster,
        &["TALLY", "MEMBER", "REMOVE", &id.to_string()],
        "unknown member",
    );
}

fn client_ports(cluster: &Cluster, ids: impl IntoIterator<Item = u64>) -> Vec<u16> {
    ids.into_iter()
        .map(|id| cluster.member(id).client_port)
        .collect()
}

// ---------------------------------------------------------------------------------
// Scenarios.

#[test]
fn grow_three_to_five_then_shrink_to_three_under_load_loses_no_acknowledged_write() {
    let mut cluster = cluster_of(3, 5, &[]);
    leader_of(&cluster);
    let load = Load::start(client_ports(&cluster, 1..=3), 3);
    load.wait_progress(50);
    // A joining member is not a voter and does not campaign before it is added.
    cluster.member_mut(4).spawn();
    let joining = cluster.member(4);
    wait_until("the joining member answers INFO", || joining.raft_info());
    assert_eq!(
        joining.raft_info().expect("info")["role"],
        "learner",
        "a --join member waits as a non-voter"
    );
    cluster.member_mut(4).sigkill();
    add_and_promote(&mut cluster, &load, 4);
    add_and_promote(&mut cluster, &load, 5);
    wait_voters(&cluster, &[1, 2, 3, 4, 5]);
    load.wait_progress(50);
    // Shrink by removing two founders, so the data must live on the new members.
    let leader = leader_of(&cluster);
    let victims: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    remove(&cluster, victims[0]);
    remove(&cluster, victims[1]);
    let remaining: Vec<u64> = (1..=5).filter(|id| !victims[..2].contains(id)).collect();
    wait_voters(&cluster, &remaining);
    load.wait_progress(50);
    for id in &victims[..2] {
        cluster.member_mut(*id).sigkill();
    }
    let history = load.stop();
    verify_no_lost_write(&cluster, &history);
}

#[test]
fn removing_the_current_leader_answers_once_c_new_commits_and_it_steps_down() {
    let cluster = cluster_of(3, 3, &[]);
    let leader = leader_of(&cluster);
    let load = Load::start(client_ports(&cluster, 1..=3), 2);
    load.wait_progress(50);
    let reply =
        cluster
            .member(leader)
            .client()
            .call(&["TALLY", "MEMBER", "REMOVE", &leader.to_string()]);
    // `+OK` comes once C_new committed; on a busy machine the leader may lose its
    // leadership first, and then the answer says the outcome is unknown.
    let unknown = error_text(&reply).is_some_and(|text| text.contains("outcome unknown"));
    assert!(reply == ok() || unknown, "{reply:?}");
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    if unknown {
        remove(&cluster, leader);
    }
    let new_leader = wait_until("a new leader among the survivors", || {
        let info = cluster.member(survivors[0]).raft_info()?;
        let id: u64 = info.get("leader_id")?.parse().ok()?;
        survivors.contains(&id).then_some(id)
    });
    assert_ne!(new_leader, leader);
    wait_voters(&cluster, &survivors);
    wait_until("the removed leader stepped down", || {
        let info = cluster.member(leader).raft_info()?;
        (info.get("role").map(String::as_str) != Some("leader")).then_some(())
    });
    load.wait_progress(50);
    let history = load.stop();
    let mut cluster = cluster;
    cluster.member_mut(leader).sigkill();
    verify_no_lost_write(&cluster, &history);
}

#[test]
fn a_dead_member_is_replaced_by_a_new_id_with_an_empty_directory_via_a_snapshot() {
    // Small snapshots: the leader has compacted its log before the newcomer joins, so
    // it catches up by InstallSnapshot.
    let args = [
        "--snapshot-log-entries",
        "200",
        "--log-retain-entries",
        "20",
    ];
    let mut cluster = cluster_of(3, 4, &args);
    leader_of(&cluster);
    let load = Load::start(client_ports(&cluster, 1..=3), 3);
    load.wait_progress(50);
    let leader = leader_of(&cluster);
    let dead = if leader == 3 { 2 } else { 3 };
    cluster.member_mut(dead).sigkill();
    load.wait_progress(400);
    add_and_promote(&mut cluster, &load, 4);
    remove(&cluster, dead);
    let expected: Vec<u64> = (1..=4).filter(|id| *id != dead).collect();
    wait_voters(&cluster, &expected);
    wait_until("the newcomer installed a snapshot", || {
        (cluster.member(4).info_u64("snapshots_installed")? >= 1).then_some(())
    });
    load.wait_progress(50);
    let history = load.stop();
    verify_no_lost_write(&cluster, &history);
}

#[test]
fn a_restart_whose_peer_list_contradicts_the_log_is_refused() {
    let mut cluster = cluster_of(3, 3, &[]);
    leader_of(&cluster);
    let load = Load::start(client_ports(&cluster, 1..=3), 2);
    load.wait_progress(30);
    let member = cluster.member_mut(3);
    assert!(member.sigterm().success());
    // Node 3 restarted as if the cluster were {1, 3, 9}: 9 is not a member.
    let saved = member.dials.clone();
    member.dials = vec![(1, saved[0].1), (9, free_port())];
    member.spawn();
    let exit = wait_until("the contradicted restart exits", || {
        member.child.as_mut()?.try_wait().ok()?
    });
    member.child = None;
    assert!(!exit.success(), "a contradicting --peer list is refused");
    let log = std::fs::read_to_string(&member.log).expect("log");
    assert!(
        log.contains("not members of the cluster") && log.contains("voters {1, 2, 3}"),
        "the refusal says what the log holds"
    );
    // With addresses only (a subset of the members) it restarts and serves.
    member.dials = saved[..1].to_vec();
    member.spawn();
    wait_until("node 3 follows again", || {
        let info = cluster.member(3).raft_info()?;
        (info.get("role").map(String::as_str) == Some("follower")).then_some(())
    });
    load.wait_progress(30);
    let history = load.stop();
    verify_no_lost_write(&cluster, &history);
}

#[test]
fn a_wiped_voter_cannot_rejoin_under_its_old_id() {
    let mut cluster = cluster_of(3, 3, &[]);
    leader_of(&cluster);
    let load = Load::start(client_ports(&cluster, 1..=3), 2);
    // The leader records every member's incarnation (from the handshake).
    let leader = leader_of(&cluster);
    wait_until("every incarnation recorded", || {
        members(cluster.member(leader))
            .values()
            .all(|fields| fields["incarnation"] != "0x0")
            .then_some(())
    });
    load.wait_progress(30);
    let leader = leader_of(&cluster);
    let victim = if leader == 3 { 2 } else { 3 };
    let recorded = members(cluster.member(leader))[&victim]["incarnation"].clone();
    let member = cluster.member_mut(victim);
    member.sigkill();
    std::fs::remove_dir_all(&member.dir).expect("wipe the directory");
    member.spawn();
    // Its peers refuse its connections: it presents a new incarnation.
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
    wait_until("a survivor refused the wiped member", || {
        let refused = survivors.iter().any(|id| {
            cluster
                .member(*id)
                .info_section("replication")
                .and_then(|info| info.get("rejected_incarnations")?.parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        });
        refused.then_some(())
    });
    let identity = std::fs::read_to_string(cluster.member(victim).dir.join("IDENTITY"))
        .expect("the wiped member has a new identity file");
    assert!(!identity.contains(&recorded), "a new incarnation was drawn");
    load.wait_progress(50);
    // The leader never counts it: its match index stays where it was wiped.
    let leader = leader_of(&cluster);
    assert_ne!(leader, victim);
    let before = members(cluster.member(leader))[&victim]["match_index"].clone();
    load.wait_progress(50);
    if leader_of(&cluster) == leader {
        let after = members(cluster.member(leader))[&victim]["match_index"].clone();
        assert_eq!(before, after, "the wiped member acknowledges nothing");
    }
    assert_eq!(
        members(cluster.member(leader))[&victim]["incarnation"],
        recorded,
        "the recorded incarnation is never replaced"
    );
    let history = load.stop();
    verify_no_lost_write(&cluster, &history);
}

#[test]
fn a_snapshot_restores_into_a_new_one_member_cluster_that_grows() {
    let mut source = cluster_of(3, 3, &[]);
    leader_of(&source);
    let load = Load::start(client_ports(&source, 1..=3), 2);
    load.wait_progress(100);
    let leader = leader_of(&source);
    let mut admin_client = source.member(leader).client();
    let asked_at = Instant::now();
    let RespValue::Array(Some(answer)) = admin_client.call(&["TALLY", "SNAPSHOT"]) else {
        panic!("TALLY SNAPSHOT answers an array");
    };
    let [RespValue::Bulk(Some(path)), RespValue::Bulk(Some(index))] = answer.as_slice() else {
        panic!("TALLY SNAPSHOT answers path and index: {answer:?}");
    };
    let path = std::path::PathBuf::from(String::from_utf8_lossy(path).into_owned());
    let index: u64 = String::from_utf8_lossy(index).parse().expect("index");
    let backup = source._root.path().join("backup.snap");
    std::fs::copy(&path, &backup).expect("copy the snapshot off the node");
    // Every write acknowledged before the snapshot was asked for is in it.
    let history = load.stop();
    for member in &mut source.members {
        member.sigkill();
    }
    let mut target = Cluster::start_with_stopped(2, |_, _, port| port);
    target.member_mut(1).dials.clear();
    target.member_mut(1).extra_args = vec!["--restore-from".into(), backup.display().to_string()];
    target.member_mut(2).extra_args = vec!["--join".into()];
    target.member_mut(1).spawn();
    wait_until("the restored member leads alone", || {
        let info = target.member(1).raft_info()?;
        (info.get("role").map(String::as_str) == Some("leader")).then_some(())
    });
    let applied = target.member(1).info_u64("applied_index").expect("applied");
    assert!(
        applied >= index,
        "restored through the snapshot index {index}"
    );
    let mut client = target.member(1).client();
    let before_snapshot: Vec<&Operation> = history
        .operations
        .iter()
        .filter(|op| {
            op.outcome == Outcome::Ok(None) && op.completed < asked_at && !is_register(&op.key)
        })
        .collect();
    assert!(before_snapshot.len() >= 100);
    for op in before_snapshot {
        let value = op.value.as_deref().unwrap_or_default();
        assert_eq!(
            client.call(&["GET", &op.key]),
            bulk(value),
            "{} was acknowledged before the snapshot and must be restored",
            op.key
        );
    }
    // Grow the restored cluster.
    let load = Load::start(client_ports(&target, 1..=1), 1);
    load.wait_progress(20);
    add_and_promote(&mut target, &load, 2);
    wait_voters(&target, &[1, 2]);
    load.wait_progress(20);
    let history = load.stop();
    verify_no_lost_write(&target, &history);
}
