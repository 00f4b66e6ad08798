//! The example database as a user would run it: three members over loopback TCP (a
//! cluster secret between them), clients speaking the ledger's line protocol with
//! exactly-once sessions, leaders stopped in the middle of requests.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tally_ledger_example::cluster::{
    AttemptOutcome, ClusterOptions, LedgerClient, LocalCluster, PendingAttempt,
};
use tally_ledger_example::ledger::LedgerReply;

/// Generous: only a hung cluster reaches it (tests never assert on timing).
const PATIENCE: Duration = Duration::from_secs(60);

fn balance(client: &mut LedgerClient, account: &str) -> u64 {
    match client.query(&format!("balance {account}")).expect("query") {
        LedgerReply::Amount(amount) => amount,
        other => panic!("balance {account} answered {other:?}"),
    }
}

fn open_accounts(client: &mut LedgerClient, accounts: &[(&str, u64)]) {
    for (name, initial) in accounts {
        assert_eq!(
            client
                .execute(&format!("open {name} {initial}"))
                .expect("open"),
            LedgerReply::Done
        );
    }
}

/// Polls until `member`'s front end handed `at_least` proposals to its node.
fn wait_for_proposals(cluster: &LocalCluster, member: u64, at_least: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if proposals(cluster, member) >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the request never reached the node"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `line` to `leader`, waits until its front end proposed it, then stops `leader`
/// before the reply can be read: the attempt's outcome is what the client is left with.
fn send_then_stop_the_leader(cluster: &LocalCluster, leader: u64, line: &str) -> PendingAttempt {
    let before = proposals(cluster, leader);
    let attempt = PendingAttempt::send(
        cluster.client_addr(leader).expect("address"),
        line,
        PATIENCE,
    )
    .expect("send to the leader");
    wait_for_proposals(cluster, leader, before + 1);
    cluster.stop(leader).expect("stop the leader");
    attempt
}

fn proposals(cluster: &LocalCluster, member: u64) -> u64 {
    cluster
        .with_member(member, |server| {
            server
                .front_end()
                .counters()
                .proposals
                .load(Ordering::Acquire)
        })
        .expect("member running")
}

#[test]
fn a_retry_of_a_committed_transfer_after_its_leader_died_is_not_applied_again() {
    let root = tempfile::tempdir().expect("tempdir");
    let cluster = LocalCluster::start(root.path(), &ClusterOptions::default()).expect("start");
    let first_leader = cluster.wait_for_leader(PATIENCE).expect("leader");
    let mut client = LedgerClient::new(cluster.client_addrs());
    open_accounts(&mut client, &[("alice", 100), ("bob", 0)]);
    let transfer = client.prepare("transfer alice bob 10");
    assert_eq!(client.send(&transfer).expect("transfer"), LedgerReply::Done);
    // The reply is "lost": the leader dies and the client, not knowing, resends.
    cluster.stop(first_leader).expect("stop");
    assert_eq!(client.send(&transfer).expect("retry"), LedgerReply::Done);
    let new_leader = cluster.leader().expect("a new leader answered the retry");
    assert_ne!(new_leader, first_leader);
    assert_eq!(balance(&mut client, "alice"), 90);
    assert_eq!(balance(&mut client, "bob"), 10);
    cluster.shutdown().expect("shutdown");
}

#[test]
fn a_transfer_answered_unknown_whose_retry_loses_its_leader_too_is_applied_exactly_once() {
    let root = tempfile::tempdir().expect("tempdir");
    // A long election timeout: the leader left without followers must still be leader
    // (not yet stepped down by check-quorum) when the transfer reaches it.
    let options = ClusterOptions {
        election_timeout_ms: 2_000,
        ..ClusterOptions::default()
    };
    let cluster = LocalCluster::start(root.path(), &options).expect("start");
    let mut client = LedgerClient::new(cluster.client_addrs());
    open_accounts(&mut client, &[("alice", 100), ("bob", 0)]);
    let first = cluster.wait_for_leader(PATIENCE).expect("leader");
    let followers: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != first)
        .collect();
    // 1. Without its followers the leader cannot commit: the transfer stays in its log
    //    only, and stopping it answers the client UNKNOWN.
    for follower in &followers {
        cluster.stop(*follower).expect("stop a follower");
    }
    let transfer = client.prepare("transfer alice bob 10");
    let line = LedgerClient::propose_line(&transfer);
    let outcome = send_then_stop_the_leader(&cluster, first, &line).outcome();
    assert!(
        matches!(outcome, AttemptOutcome::Unknown | AttemptOutcome::Lost),
        "a write its leader could not commit must come back unknown, got {outcome:?}"
    );
    // 2. The followers elect a new leader (without the entry); the retry reaches it, and
    //    that leader is stopped too, before its reply is read.
    for follower in &followers {
        cluster.restart(*follower).expect("restart a follower");
    }
    let second = cluster.wait_for_leader(PATIENCE).expect("a second leader");
    assert_ne!(second, first);
    // Done if it committed in time, else unknown: the client cannot tell.
    let _ = send_then_stop_the_leader(&cluster, second, &line).outcome();
    // 3. The first leader comes back (a quorum again; its uncommitted entry is
    //    overwritten or committed, never both); the client retries until answered.
    cluster.restart(first).expect("restart the first leader");
    assert_eq!(client.send(&transfer).expect("retry"), LedgerReply::Done);
    cluster.restart(second).expect("restart the second leader");
    assert_eq!(
        client.send(&transfer).expect("a redundant retry"),
        LedgerReply::Done
    );
    assert_eq!(balance(&mut client, "bob"), 10, "the transfer moved once");
    assert_eq!(balance(&mut client, "alice"), 90);
    // Every member agrees once caught up: lead from each in turn.
    for member in cluster.ids() {
        move_leadership(&cluster, member);
        assert_eq!(balance(&mut client, "bob"), 10, "as seen led by {member}");
    }
    cluster.shutdown().expect("shutdown");
}

/// Transfers leadership to `target` and waits until it leads.
fn move_leadership(cluster: &LocalCluster, target: u64) {
    let deadline = Instant::now() + PATIENCE;
    while cluster.leader() != Some(target) {
        assert!(
            Instant::now() < deadline,
            "leadership never moved to {target}"
        );
        if let Some(current) = cluster.leader().and_then(|id| cluster.handle(id)) {
            current.transfer_leadership(target);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn concurrent_transfers_never_overdraw_and_a_member_restored_from_a_snapshot_agrees() {
    let root = tempfile::tempdir().expect("tempdir");
    // A snapshot every 40 entries, 20 kept below it: a member stopped for a while
    // catches up by snapshot installation.
    let options = ClusterOptions {
        snapshot_every: 40,
        ..ClusterOptions::default()
    };
    let cluster = LocalCluster::start(root.path(), &options).expect("start");
    cluster.wait_for_leader(PATIENCE).expect("leader");
    let accounts = ["a", "b", "c", "d"];
    let mut setup = LedgerClient::new(cluster.client_addrs());
    open_accounts(&mut setup, &accounts.map(|name| (name, 50)));
    let leader = cluster.wait_for_leader(PATIENCE).expect("leader");
    let lagging = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    cluster.stop(lagging).expect("stop a follower");
    let refused: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..3)
            .map(|worker| {
                let addrs = cluster.client_addrs();
                scope.spawn(move || {
                    let mut client = LedgerClient::new(addrs);
                    let mut refused = 0;
                    for step in 0..60usize {
                        let from = accounts[(worker + step) % 4];
                        let to = accounts[(worker + 2 * step + 1) % 4];
                        match client
                            .execute(&format!("transfer {from} {to} 30"))
                            .expect("transfer")
                        {
                            LedgerReply::Done => {}
                            LedgerReply::Refused(reason) => {
                                assert!(reason.contains("insufficient funds"), "{reason}");
                                refused += 1;
                            }
                            other => panic!("transfer answered {other:?}"),
                        }
                    }
                    refused
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).sum()
    });
    assert!(
        refused > 0,
        "30-unit transfers out of 50-unit accounts must hit overdrafts"
    );
    // u64 balances cannot go negative; the sum shows nothing was created or lost.
    let total: u64 = accounts.iter().map(|name| balance(&mut setup, name)).sum();
    assert_eq!(total, 200);

    cluster
        .restart(lagging)
        .expect("restart the lagging member");
    let leader_handle = cluster
        .handle(cluster.wait_for_leader(PATIENCE).expect("leader"))
        .expect("handle");
    let target = leader_handle.status().commit_index.load(Ordering::Acquire);
    drop(leader_handle);
    let deadline = Instant::now() + PATIENCE;
    let caught_up = || {
        cluster
            .with_member(lagging, |server| {
                let handle = server.handle();
                let status = handle.status();
                (
                    status.applied_index.load(Ordering::Acquire),
                    status.snapshots_installed.load(Ordering::Acquire),
                )
            })
            .expect("running")
    };
    while caught_up().0 < target {
        assert!(
            Instant::now() < deadline,
            "the restarted member never caught up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        caught_up().1 > 0,
        "the member should have caught up from a snapshot"
    );
    // Let the restored member lead and answer the books itself.
    move_leadership(&cluster, lagging);
    let total: u64 = accounts.iter().map(|name| balance(&mut setup, name)).sum();
    assert_eq!(total, 200);
    cluster.shutdown().expect("shutdown");
}

#[test]
fn a_snapshot_file_seeds_a_new_cluster_with_the_same_books_and_sessions() {
    let root = tempfile::tempdir().expect("tempdir");
    let cluster =
        LocalCluster::start(&root.path().join("old"), &ClusterOptions::default()).expect("start");
    let mut client = LedgerClient::new(cluster.client_addrs());
    open_accounts(&mut client, &[("alice", 100), ("bob", 0)]);
    let transfer = client.prepare("transfer alice bob 25");
    assert_eq!(client.send(&transfer).expect("transfer"), LedgerReply::Done);
    let leader = cluster.wait_for_leader(PATIENCE).expect("leader");
    let taken = cluster
        .handle(leader)
        .expect("handle")
        .snapshot_now()
        .expect("snapshot");
    let copy = root.path().join("ledger.snap");
    std::fs::copy(&taken.path, &copy).expect("copy the snapshot file");
    cluster.shutdown().expect("shutdown");

    let options = ClusterOptions {
        size: 1,
        restore_from: Some(copy),
        ..ClusterOptions::default()
    };
    let restored = LocalCluster::start(&root.path().join("new"), &options).expect("restore");
    let mut reader = LedgerClient::new(restored.client_addrs());
    assert_eq!(balance(&mut reader, "alice"), 75);
    assert_eq!(balance(&mut reader, "bob"), 25);
    // The session table came along: the old client's retry is still recognised.
    client.set_members(restored.client_addrs());
    assert_eq!(client.send(&transfer).expect("retry"), LedgerReply::Done);
    assert_eq!(balance(&mut reader, "bob"), 25, "the retry applied nothing");
    // The restored member restarts from its own directory, not the file again.
    restored.stop(1).expect("stop");
    restored.restart(1).expect("restart");
    assert_eq!(
        client.execute("transfer bob alice 5").expect("transfer"),
        LedgerReply::Done
    );
    assert_eq!(balance(&mut reader, "alice"), 80);
    restored.shutdown().expect("shutdown");
}
