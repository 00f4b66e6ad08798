//! The example database as a user would run it: three replicas over loopback TCP, an
//! exactly-once client, leaders stopped in the middle of requests.

use std::time::{Duration, Instant};

use tally_ledger_example::cluster::{LedgerClient, LocalCluster};
use tally_ledger_example::ledger::LedgerReply;

/// Generous: only a hung cluster reaches it (tests never assert on timing).
const PATIENCE: Duration = Duration::from_secs(60);

fn balance(client: &mut LedgerClient<'_>, account: &str) -> u64 {
    match client.query(&format!("balance {account}")).expect("query") {
        LedgerReply::Amount(amount) => amount,
        other => panic!("balance {account} answered {other:?}"),
    }
}

fn open_accounts(client: &mut LedgerClient<'_>, accounts: &[(&str, u64)]) {
    for (name, initial) in accounts {
        assert_eq!(
            client
                .execute(&format!("open {name} {initial}"))
                .expect("open"),
            LedgerReply::Done
        );
    }
}

#[test]
fn a_retry_of_a_committed_transfer_after_its_leader_died_is_not_applied_again() {
    let root = tempfile::tempdir().expect("tempdir");
    let cluster = LocalCluster::start(root.path(), 3, 0).expect("start");
    let first_leader = cluster.wait_for_leader(PATIENCE).expect("leader");
    let mut client = LedgerClient::new(&cluster);
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
fn a_transfer_whose_leader_is_stopped_before_replying_is_applied_exactly_once_after_retries() {
    let root = tempfile::tempdir().expect("tempdir");
    let cluster = LocalCluster::start(root.path(), 3, 0).expect("start");
    cluster.wait_for_leader(PATIENCE).expect("leader");
    let mut client = LedgerClient::new(&cluster);
    open_accounts(&mut client, &[("alice", 1000), ("bob", 0)]);
    const ROUNDS: u64 = 3;
    for round in 0..ROUNDS {
        let leader = cluster.wait_for_leader(PATIENCE).expect("leader");
        let transfer = client.prepare("transfer alice bob 7");
        // Hand the request to the leader and stop it at once: the proposal may be lost,
        // or replicated and committed by the next leader; the client cannot know.
        let handle = cluster.handle(leader).expect("leader handle");
        let (sender, _unheard) = crossbeam_channel::bounded(1);
        handle.propose(
            transfer.bytes.clone(),
            tally_engine::runtime::ReplyTo::new(0, sender),
        );
        // A handle keeps the node's WAL (and its directory lock) alive: let go of it.
        drop(handle);
        cluster.stop(leader).expect("stop the leader");
        assert_eq!(client.send(&transfer).expect("retry"), LedgerReply::Done);
        // A second, redundant retry changes nothing either.
        assert_eq!(
            client.send(&transfer).expect("retry again"),
            LedgerReply::Done
        );
        cluster.restart(leader).expect("restart");
        assert_eq!(
            balance(&mut client, "bob"),
            7 * (round + 1),
            "round {round}"
        );
    }
    assert_eq!(balance(&mut client, "alice"), 1000 - 7 * ROUNDS);
    cluster.shutdown().expect("shutdown");
}

#[test]
fn concurrent_transfers_never_overdraw_and_a_member_restored_from_a_snapshot_agrees() {
    let root = tempfile::tempdir().expect("tempdir");
    // A snapshot every 40 entries, 20 kept below it: a member stopped for a while
    // catches up by snapshot installation.
    let cluster = LocalCluster::start(root.path(), 3, 40).expect("start");
    cluster.wait_for_leader(PATIENCE).expect("leader");
    let accounts = ["a", "b", "c", "d"];
    let mut setup = LedgerClient::new(&cluster);
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
                let cluster = &cluster;
                scope.spawn(move || {
                    let mut client = LedgerClient::new(cluster);
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
    for name in accounts {
        // u64 balances cannot go negative; the sum shows nothing was created or lost.
        let _ = balance(&mut setup, name);
    }
    let total: u64 = accounts.iter().map(|name| balance(&mut setup, name)).sum();
    assert_eq!(total, 200);

    cluster
        .restart(lagging)
        .expect("restart the lagging member");
    let leader_handle = cluster
        .handle(cluster.wait_for_leader(PATIENCE).expect("leader"))
        .expect("handle");
    let target = leader_handle
        .status()
        .commit_index
        .load(std::sync::atomic::Ordering::Acquire);
    let lagging_handle = cluster.handle(lagging).expect("handle");
    let deadline = Instant::now() + PATIENCE;
    while lagging_handle
        .status()
        .applied_index
        .load(std::sync::atomic::Ordering::Acquire)
        < target
    {
        assert!(
            Instant::now() < deadline,
            "the restarted member never caught up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        lagging_handle
            .status()
            .snapshots_installed
            .load(std::sync::atomic::Ordering::Acquire)
            > 0,
        "the member should have caught up from a snapshot"
    );
    // Let the restored member lead and answer the books itself.
    while cluster.leader() != Some(lagging) {
        assert!(
            Instant::now() < deadline,
            "leadership never moved to the restored member"
        );
        if let Some(current) = cluster.leader().and_then(|id| cluster.handle(id)) {
            current.transfer_leadership(lagging);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let total: u64 = accounts.iter().map(|name| balance(&mut setup, name)).sum();
    assert_eq!(total, 200);
    cluster.shutdown().expect("shutdown");
}
