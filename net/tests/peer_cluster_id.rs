//! A new cluster without a secret or `--cluster-id` gets a random id of its own, stored in
//! every member's `<dir>/cluster-id`: the lowest-id founder draws it, the others ask a
//! running `--peer` (`net/src/cluster_id.rs`). Real `tally-server` processes show two
//! clusters getting two ids, a member of one refused by the other, an id surviving a
//! restart and founders started lowest-last still converging.
//!
//! These scenarios are about clusters *without* a secret (a secret derives the id), so
//! they clear the harness's `TALLY_TEST_CLUSTER_SECRET` secret. No timing assertions.

mod common;

use common::{bulk, ok, wait_until, Cluster, Member};

/// A cluster of `size` members laid out without a secret, not started.
fn open_cluster(size: u64) -> Cluster {
    let mut cluster = Cluster::start_with_stopped(size, |_, _, port| port);
    for member in &mut cluster.members {
        member.secret_file = None;
    }
    cluster
}

fn stored_id(member: &Member) -> u64 {
    let path = member.dir.join("cluster-id");
    let text = std::fs::read_to_string(&path).expect("a stored cluster id");
    let digits = text.trim().strip_prefix("0x").expect("0x prefix");
    u64::from_str_radix(digits, 16).expect("hex")
}

/// The one id every member stored (all members agree).
fn cluster_id(cluster: &Cluster) -> u64 {
    let ids: Vec<u64> = cluster.members.iter().map(stored_id).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "members disagree: {ids:x?}"
    );
    ids[0]
}

fn log_of(member: &Member) -> String {
    std::fs::read_to_string(&member.log).unwrap_or_default()
}

#[test]
fn two_new_clusters_get_different_random_ids_and_a_member_of_one_is_refused_by_the_other() {
    let (mut a, mut b) = (open_cluster(3), open_cluster(3));
    for member in a.members.iter_mut().chain(b.members.iter_mut()) {
        member.spawn();
    }
    let leader_a = a.wait_for_leader();
    b.wait_for_leader();
    let (id_a, id_b) = (cluster_id(&a), cluster_id(&b));
    assert_ne!(id_a, id_b, "two new clusters share an id");
    for id in [id_a, id_b] {
        assert_ne!(id, 0x7a11, "the old constant");
        assert_ne!(id, 0);
    }
    let mut client = a.member(leader_a).client();
    assert_eq!(client.call(&["SET", "cluster", "a"]), ok());

    // Member 3 of A, restarted with B's members as its peers (A's others stopped, so
    // only B can reach it), keeps A's id: B's members refuse it, so it follows no leader.
    for id in 1..=2 {
        a.member_mut(id).sigkill();
    }
    let before: u64 = (1..=2)
        .map(|id| {
            b.member(id)
                .info_u64("peer_handshake_refusals")
                .expect("INFO")
        })
        .sum();
    let stray = a.member_mut(3);
    stray.sigkill();
    stray.dials = vec![(1, b.member(1).peer_port), (2, b.member(2).peer_port)];
    stray.spawn();
    wait_until("B's members refuse A's member", || {
        let now: u64 = (1..=2)
            .map(|id| b.member(id).info_u64("peer_handshake_refusals"))
            .sum::<Option<u64>>()?;
        (now >= before + 2).then_some(())
    });
    let stray = a.member(3);
    wait_until("the stray member logs the refusal", || {
        log_of(stray).contains("WrongCluster").then_some(())
    });
    assert_eq!(stored_id(stray), id_a, "a restart keeps the stored id");
    let info = stray.raft_info().expect("INFO of the stray member");
    assert_ne!(info["role"], "leader");
    assert_eq!(info["leader_id"], "0", "it joined no leader of B: {info:?}");
    b.wait_for_leader();
    assert_eq!(cluster_id(&b), id_b);
}

#[test]
fn a_restarted_cluster_keeps_its_id_and_its_data() {
    let mut cluster = open_cluster(3);
    for member in &mut cluster.members {
        member.spawn();
    }
    let leader = cluster.wait_for_leader();
    let id = cluster_id(&cluster);
    let mut client = cluster.member(leader).client();
    assert_eq!(client.call(&["SET", "k", "v"]), ok());
    for member in &mut cluster.members {
        member.sigkill();
    }
    // Restarted lowest-last: restarts read their stored id, nobody asks or draws.
    for id in [3, 2, 1] {
        cluster.member_mut(id).spawn();
    }
    let leader = cluster.wait_for_leader();
    assert_eq!(cluster_id(&cluster), id);
    let mut client = cluster.member(leader).client();
    assert_eq!(client.call(&["GET", "k"]), bulk("v"));
    assert!(
        !log_of(cluster.member(1)).contains("learned the cluster id"),
        "the lowest founder draws, it never asks"
    );
}

#[test]
fn founders_started_lowest_last_wait_for_it_and_converge_on_its_id() {
    let mut cluster = open_cluster(3);
    cluster.member_mut(3).spawn();
    cluster.member_mut(2).spawn();
    for id in [2, 3] {
        let member = cluster.member(id);
        wait_until("a new founder waits for the lowest one", || {
            log_of(member)
                .contains("waits for a running --peer")
                .then_some(())
        });
        assert!(
            !member.dir.join("cluster-id").exists(),
            "member {id} settled an id before the lowest founder ran"
        );
    }
    cluster.member_mut(1).spawn();
    let leader = cluster.wait_for_leader();
    let id = cluster_id(&cluster);
    assert_ne!(id, 0x7a11);
    for id in [2, 3] {
        assert!(log_of(cluster.member(id)).contains("learned the cluster id"));
    }
    let mut client = cluster.member(leader).client();
    assert_eq!(client.call(&["SET", "k", "v"]), ok());
}
