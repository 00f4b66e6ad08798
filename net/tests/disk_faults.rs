//! Disk faults in real processes: a `tally-server` whose fsync fails (EIO) or whose disk
//! is full (ENOSPC), injected by the test-only storage failpoints, exits non-zero naming
//! the error; the cluster goes on without it (a new leader if it led), no acknowledged
//! write is lost, and restarted on the same directory without the failpoint the member
//! recovers and catches up.
//!
//! Every member starts with the failpoint configured but unarmed; the test arms one
//! member at a time by creating the arm file in its directory, so it picks the victim's
//! role (leader, then a follower) while a client writes and records every `+OK`.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use tally_net::resp::{write_command, RespValue};

const ARM_FILE: &str = "FAILPOINT_ARMED";

/// The environment is process-wide and the tests of this file run in parallel: members
/// are spawned while holding this lock, with exactly the variables they should see.
static SPAWN_ENV: Mutex<()> = Mutex::new(());

fn spawn_with_env(member: &mut Member, env: &[(&str, &str)]) {
    let _guard = SPAWN_ENV.lock().unwrap_or_else(|e| e.into_inner());
    for (key, value) in env {
        std::env::set_var(key, value);
    }
    member.spawn();
    for (key, _) in env {
        std::env::remove_var(key);
    }
}

/// Keys `w-<n>` written with value `v-<n>` and acknowledged `+OK`.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    thread: Option<JoinHandle<()>>,
}

fn leader_port(ports: &[u16]) -> Option<u16> {
    ports.iter().copied().find(|port| {
        let Ok(mut client) = Client::connect(*port) else {
            return false;
        };
        let mut out = Vec::new();
        write_command(&mut out, &[b"INFO".as_slice(), b"raft".as_slice()]);
        if client.stream.write_all(&out).is_err() {
            return false;
        }
        matches!(client.read_reply(), Some(RespValue::Bulk(Some(text)))
            if String::from_utf8_lossy(&text).contains("role:leader"))
    })
}

/// One SET; `None` if the connection failed or the reply was not `+OK`.
fn try_set(client: &mut Client, n: u64) -> Option<()> {
    let (key, value) = (format!("w-{n}"), format!("v-{n}"));
    let mut out = Vec::new();
    write_command(
        &mut out,
        &[b"SET".as_slice(), key.as_bytes(), value.as_bytes()],
    );
    client.stream.write_all(&out).ok()?;
    (client.read_reply()? == ok()).then_some(())
}

impl Load {
    fn start(ports: Vec<u16>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (stop_flag, acked_list) = (Arc::clone(&stop), Arc::clone(&acked));
        let thread = std::thread::spawn(move || {
            let mut client: Option<Client> = None;
            let mut n = 0u64;
            while !stop_flag.load(Ordering::Relaxed) {
                let Some(connected) = client.as_mut() else {
                    client = leader_port(&ports).and_then(|port| Client::connect(port).ok());
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                n += 1;
                match try_set(connected, n) {
                    Some(()) => acked_list.lock().expect("acked").push(n),
                    None => client = None,
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Load {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().expect("acked").len()
    }

    /// Waits until `more` writes beyond the current count were acknowledged.
    fn wait_for_more(&self, more: usize) {
        let target = self.acked_count() + more;
        wait_until(&format!("{target} acknowledged writes"), || {
            (self.acked_count() >= target).then_some(())
        });
    }

    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("load thread");
        }
        std::mem::take(&mut *self.acked.lock().expect("acked"))
    }
}

/// Waits for `member` to exit by itself; returns its exit code.
fn wait_for_exit(member: &mut Member) -> Option<i32> {
    let started = Instant::now();
    let status = loop {
        let child = member.child.as_mut().expect("running member");
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "member {} kept running after its disk failed",
            member.id
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    member.child = None;
    status.code()
}

/// Arms the failpoint of `victim`, which must then exit with status 1 and log `error`.
fn fail_member(cluster: &mut Cluster, load: &Load, victim: u64, error: &[&str]) {
    load.wait_for_more(20);
    let member = cluster.member_mut(victim);
    std::fs::write(member.dir.join(ARM_FILE), b"").expect("arm the failpoint");
    let code = wait_for_exit(member);
    assert_eq!(code, Some(1), "member {victim} exit status");
    let log = std::fs::read_to_string(&member.log).unwrap_or_default();
    assert!(
        error.iter().any(|text| log.contains(text)),
        "member {victim}'s stderr names the error ({error:?})"
    );
    std::fs::remove_file(member.dir.join(ARM_FILE)).expect("disarm");
}

/// Restarts `victim` without failpoints and waits until it applied what the leader
/// committed, with writes still flowing.
fn restart_and_catch_up(cluster: &mut Cluster, load: &Load, victim: u64) {
    spawn_with_env(cluster.member_mut(victim), &[]);
    load.wait_for_more(20);
    let leader = cluster.wait_for_leader();
    let target = cluster
        .member(leader)
        .info_u64("commit_index")
        .expect("leader commit index");
    cluster.wait_applied(victim, target);
}

/// Every acknowledged write reads back its value from the leader.
fn assert_every_acked_write_is_readable(cluster: &Cluster, acked: &[u64]) {
    assert!(!acked.is_empty());
    let leader = cluster.wait_for_leader();
    let mut client = cluster.member(leader).client();
    let mut missing = BTreeMap::new();
    for chunk in acked.chunks(256) {
        let commands: Vec<Vec<Vec<u8>>> = chunk
            .iter()
            .map(|n| cmd(&["GET", &format!("w-{n}")]))
            .collect();
        for (n, reply) in chunk.iter().zip(client.pipeline(&commands)) {
            if reply != bulk(&format!("v-{n}")) {
                missing.insert(*n, reply);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        missing.iter().next()
    );
}

/// The scenario for one kind of fault: the leader fails, is restarted; then a follower
/// that still has the failpoint fails, is restarted; nothing acknowledged is lost.
fn leader_then_follower_fail_and_recover(fault_env: (&str, &str), error: &[&str]) {
    let mut cluster = Cluster::start_with_stopped(3, |_, _, port| port);
    let env = [fault_env, ("TALLY_FAILPOINT_ARM_FILE", ARM_FILE)];
    for id in 1..=3 {
        spawn_with_env(cluster.member_mut(id), &env);
    }
    let ports: Vec<u16> = cluster.members.iter().map(|m| m.client_port).collect();
    let load = Load::start(ports);

    let leader = cluster.wait_for_leader();
    fail_member(&mut cluster, &load, leader, error);
    let new_leader = cluster.wait_for_leader();
    assert_ne!(new_leader, leader, "another member leads");
    restart_and_catch_up(&mut cluster, &load, leader);

    // A follower that still runs with the failpoint configured.
    let current = cluster.wait_for_leader();
    let follower = (1..=3)
        .find(|id| *id != leader && *id != current)
        .expect("an armed follower");
    fail_member(&mut cluster, &load, follower, error);
    restart_and_catch_up(&mut cluster, &load, follower);

    let acked = load.finish();
    eprintln!("{} acknowledged writes checked", acked.len());
    assert_every_acked_write_is_readable(&cluster, &acked);
}

#[test]
fn fsync_eio_stops_the_leader_then_a_follower_and_both_recover_without_losing_an_acknowledged_write(
) {
    leader_then_follower_fail_and_recover(
        ("TALLY_FAILPOINT_FSYNC_EIO_AFTER", "3"),
        &["Input/output error", "os error 5"],
    );
}

#[test]
fn enospc_stops_the_leader_then_a_follower_and_both_recover_without_losing_an_acknowledged_write() {
    leader_then_follower_fail_and_recover(
        ("TALLY_FAILPOINT_ENOSPC_AFTER_BYTES", "4096"),
        &[
            "no space left on device",
            "No space left on device",
            "os error 28",
        ],
    );
}
