//! Fail-stop means exit: a panic inside a running `tally-server` ends the process with a
//! non-zero status promptly, so a supervisor restarts it and its clients see their
//! connections close instead of hanging on a process that keeps its ports open; the
//! restarted member keeps every acknowledged write.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_panic_in_the_raft_thread_ends_the_process_with_a_non_zero_status_and_loses_nothing() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let mut client = cluster.member(leader).client();
    assert_eq!(client.call(&["SET", "kept", "1"]), ok());

    // Restart one follower with the raft-thread panic failpoint armed.
    let victim = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.member_mut(victim).sigkill();
    let member = cluster.member_mut(victim);
    member.extra_args.clear();
    std::env::set_var("TALLY_FAILPOINT_RAFT_PANIC_AFTER_MS", "1500");
    member.spawn();
    std::env::remove_var("TALLY_FAILPOINT_RAFT_PANIC_AFTER_MS");
    let started = Instant::now();
    let status = loop {
        let child = member.child.as_mut().expect("spawned");
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a member whose raft thread panicked kept running"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    member.child = None;
    assert_eq!(
        status.code(),
        Some(70),
        "exit status after a panic: {status:?}"
    );
    let log = std::fs::read_to_string(&member.log).unwrap_or_default();
    assert!(log.contains("panic"), "the panic is logged");

    // Restarted without the failpoint, it serves what was acknowledged.
    member.spawn();
    let leader = cluster.wait_for_leader();
    let mut client = cluster.member(leader).client();
    assert_eq!(client.call(&["GET", "kept"]), bulk("1"));
    let target = cluster
        .member(leader)
        .info_u64("commit_index")
        .expect("commit");
    cluster.wait_applied(victim, target);
}
