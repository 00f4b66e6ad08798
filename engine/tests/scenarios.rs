//! Scenario tests on the deterministic simulator, named after the situation they
//! create. They port the ideas of the classic Raft lab suites (elections, agreement,
//! persistence, Figure 8, churn) and the Raft paper, plus pre-vote, check-quorum,
//! leases and leadership transfer. Every scenario also runs the simulator's safety
//! checker after every step (`assert_safe`).

use bytes::Bytes;
use tally_engine::raft::{NodeId, Role};
use tally_engine::sim::{FaultConfig, LocalReadCheck, SimConfig, Simulation};

const SECOND_US: u64 = 1_000_000;

fn cluster(n_nodes: usize, seed: u64) -> Simulation {
    Simulation::new(SimConfig::quiet(seed, n_nodes))
}

fn command(text: &str) -> Bytes {
    Bytes::from(text.to_string())
}

/// Waits for a leader and returns it.
fn wait_for_leader(sim: &mut Simulation) -> NodeId {
    assert!(
        sim.run_until(5 * SECOND_US, |sim| sim.leader().is_some()),
        "no leader elected"
    );
    sim.leader().expect("leader")
}

/// Exactly one leader among the nodes in `among` (in the highest term they know).
fn leaders_among(sim: &Simulation, among: &[NodeId]) -> Vec<NodeId> {
    among
        .iter()
        .copied()
        .filter(|id| {
            sim.node(*id)
                .is_some_and(|raft| raft.role() == Role::Leader)
        })
        .collect()
}

fn wait_for_one_leader_among(sim: &mut Simulation, among: &[NodeId]) -> NodeId {
    let among = among.to_vec();
    let found = sim.run_until(5 * SECOND_US, |sim| leaders_among(sim, &among).len() == 1);
    assert!(found, "no single leader among {among:?}");
    leaders_among(sim, &among)[0]
}

fn one(sim: &mut Simulation, text: &str, expected: usize) -> u64 {
    match sim.one(command(text), expected, 10 * SECOND_US) {
        Some(index) => index,
        None => panic!("{text:?} was not committed on {expected} nodes"),
    }
}

// ----- elections ------------------------------------------------------------------

#[test]
fn initial_election_elects_one_leader_that_keeps_its_term_while_idle() {
    let mut sim = cluster(3, 1);
    let leader = wait_for_leader(&mut sim);
    let term = sim.node(leader).expect("up").term();
    sim.run_for(2 * SECOND_US);
    assert_eq!(
        sim.leader(),
        Some(leader),
        "leadership changed without failures"
    );
    assert_eq!(sim.max_term(), term, "terms advanced without failures");
    sim.assert_safe();
}

#[test]
fn reelection_after_leader_is_cut_off_and_no_leader_without_majority() {
    let mut sim = cluster(3, 2);
    let first = wait_for_leader(&mut sim);
    sim.isolate(first);
    let others: Vec<NodeId> = (1..=3).filter(|id| *id != first).collect();
    let second = wait_for_one_leader_among(&mut sim, &others);
    // The old leader rejoins: still exactly one leader (it steps down).
    sim.reconnect(first);
    sim.run_for(SECOND_US);
    assert_eq!(leaders_among(&sim, &[1, 2, 3]).len(), 1);
    // Cut two of three: nobody may lead.
    let current = sim.leader().expect("leader");
    let cut: Vec<NodeId> = (1..=3).filter(|id| *id != current).collect();
    for id in &cut {
        sim.isolate(*id);
    }
    sim.run_for(2 * SECOND_US);
    assert!(
        leaders_among(&sim, &[1, 2, 3]).is_empty(),
        "a leader without a majority"
    );
    // Restore one: a majority again. `reconnect` heals every link of that node, to the
    // other cut node too, so either side of it may win the election.
    sim.reconnect(cut[0]);
    wait_for_one_leader_among(&mut sim, &[1, 2, 3]);
    let _ = second;
    sim.assert_safe();
}

#[test]
fn many_elections_with_seven_nodes_and_random_disconnections() {
    let mut sim = cluster(7, 3);
    wait_for_leader(&mut sim);
    let mut picks = 0u64;
    for iteration in 0..10u64 {
        // Disconnect three nodes (pseudo-randomly chosen from the iteration).
        let mut cut = Vec::new();
        while cut.len() < 3 {
            picks += 1;
            let id = (picks * 2654435761 + iteration) % 7 + 1;
            if !cut.contains(&id) {
                cut.push(id);
            }
        }
        for id in &cut {
            sim.isolate(*id);
        }
        let connected: Vec<NodeId> = (1..=7).filter(|id| !cut.contains(id)).collect();
        wait_for_one_leader_among(&mut sim, &connected);
        for id in &cut {
            sim.reconnect(*id);
        }
    }
    sim.run_for(SECOND_US);
    assert_eq!(leaders_among(&sim, &[1, 2, 3, 4, 5, 6, 7]).len(), 1);
    sim.assert_safe();
}

#[test]
fn dueling_candidates_resolve_through_randomized_timeouts() {
    // Without pre-vote and with identical clocks, followers of a crashed leader time
    // out close together and split votes; randomized timeouts must still converge.
    for seed in 0..20 {
        let mut cfg = SimConfig::quiet(seed, 5);
        cfg.pre_vote = false;
        cfg.actual_max_clock_drift = 0.0;
        let mut sim = Simulation::new(cfg);
        let leader = wait_for_leader(&mut sim);
        sim.crash(leader);
        let others: Vec<NodeId> = (1..=5).filter(|id| *id != leader).collect();
        wait_for_one_leader_among(&mut sim, &others);
        sim.assert_safe();
    }
}

#[test]
fn disruptive_rejoining_node_is_neutralised_by_pre_vote() {
    let rejoin_after_isolation = |pre_vote: bool| {
        let mut cfg = SimConfig::quiet(4, 3);
        cfg.pre_vote = pre_vote;
        let mut sim = Simulation::new(cfg);
        let leader = wait_for_leader(&mut sim);
        let term = sim.node(leader).expect("up").term();
        let follower = (1..=3).find(|id| *id != leader).expect("follower");
        sim.isolate(follower);
        sim.run_for(3 * SECOND_US);
        sim.reconnect(follower);
        sim.run_for(SECOND_US);
        sim.assert_safe();
        (sim.leader() == Some(leader), sim.max_term() == term)
    };
    assert_eq!(
        rejoin_after_isolation(true),
        (true, true),
        "pre-vote let a rejoining node disrupt the leader"
    );
    // Without pre-vote the isolated node inflates its term and deposes the leader
    // on rejoin: this shows the pre-vote test above is not vacuous.
    let (_, same_term) = rejoin_after_isolation(false);
    assert!(
        !same_term,
        "without pre-vote the rejoining node should have forced a new term"
    );
}

#[test]
fn leader_steps_down_when_it_loses_its_quorum() {
    let mut sim = cluster(5, 5);
    let leader = wait_for_leader(&mut sim);
    sim.partition(&[leader]);
    let stepped_down = sim.run_until(SECOND_US, |sim| {
        sim.node(leader)
            .is_some_and(|raft| raft.role() != Role::Leader)
    });
    assert!(stepped_down, "an isolated leader kept leading");
    sim.assert_safe();
}

// ----- agreement ------------------------------------------------------------------

#[test]
fn basic_agreement_commits_on_all_nodes_in_order() {
    let mut sim = cluster(3, 6);
    wait_for_leader(&mut sim);
    let mut previous = 0;
    for k in 0..3 {
        let index = one(&mut sim, &format!("cmd{k}"), 3);
        assert!(index > previous, "indexes must increase");
        previous = index;
    }
    sim.assert_safe();
}

#[test]
fn each_entry_is_sent_to_each_follower_about_once() {
    let mut sim = cluster(3, 7);
    wait_for_leader(&mut sim);
    one(&mut sim, "warm-up", 3);
    let before = sim.stats.clone();
    let payload = "x".repeat(5_000);
    let n_entries = 50;
    for k in 0..n_entries {
        one(&mut sim, &format!("{k:03}{payload}"), 3);
    }
    let total_payload = n_entries * (payload.len() as u64 + 3);
    let n_followers = 2;
    let payload_sent = sim.stats.payload_bytes_sent - before.payload_bytes_sent;
    let bytes_sent = sim.stats.bytes_sent - before.bytes_sent;
    assert!(
        payload_sent <= n_followers * total_payload + 10_000,
        "entries were sent more than once: {payload_sent} payload bytes for {total_payload} per follower"
    );
    assert!(
        bytes_sent <= 3 * n_followers * total_payload / 2 + 50_000,
        "too many bytes on the wire: {bytes_sent} for {total_payload} of payload per follower"
    );
    sim.assert_safe();
}

#[test]
fn agreement_despite_a_failed_follower() {
    let mut sim = cluster(3, 8);
    let leader = wait_for_leader(&mut sim);
    one(&mut sim, "a", 3);
    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    sim.isolate(follower);
    one(&mut sim, "b", 2);
    sim.run_for(SECOND_US);
    one(&mut sim, "c", 2);
    sim.reconnect(follower);
    one(&mut sim, "d", 3);
    sim.assert_safe();
}

#[test]
fn no_agreement_without_a_majority() {
    let mut sim = cluster(5, 9);
    let leader = wait_for_leader(&mut sim);
    one(&mut sim, "a", 5);
    let followers: Vec<NodeId> = (1..=5).filter(|id| *id != leader).collect();
    for id in &followers[..3] {
        sim.isolate(*id);
    }
    let index = sim
        .propose(leader, command("lonely"))
        .expect("still leader");
    sim.run_for(SECOND_US);
    for id in 1..=5 {
        let committed = sim
            .node(id)
            .is_some_and(|raft| raft.commit_index() >= index);
        assert!(
            !committed,
            "node {id} committed an entry only two nodes have"
        );
    }
    for id in &followers[..3] {
        sim.reconnect(*id);
    }
    one(&mut sim, "b", 5);
    sim.assert_safe();
}

#[test]
fn concurrent_proposals_all_commit_at_distinct_indexes() {
    let mut sim = cluster(3, 10);
    let leader = wait_for_leader(&mut sim);
    one(&mut sim, "start", 3);
    let indexes: Vec<u64> = (0..5)
        .map(|k| {
            sim.propose(leader, command(&format!("c{k}")))
                .expect("leader accepts")
        })
        .collect();
    let last = *indexes.iter().max().expect("five");
    assert!(sim.run_until(SECOND_US, |sim| sim.n_applied(last) == 3));
    let mut sorted = indexes.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 5);
    for (k, index) in indexes.iter().enumerate() {
        for id in 1..=3 {
            assert_eq!(
                sim.entry(id, *index).expect("entry").data,
                command(&format!("c{k}"))
            );
        }
    }
    sim.assert_safe();
}

#[test]
fn partitioned_old_leader_uncommitted_entries_are_overwritten_on_rejoin() {
    let mut sim = cluster(3, 11);
    let old_leader = wait_for_leader(&mut sim);
    one(&mut sim, "101", 3);
    sim.isolate(old_leader);
    let stale: Vec<u64> = ["102", "103", "104"]
        .iter()
        .map(|text| {
            sim.propose(old_leader, command(text))
                .expect("still leader")
        })
        .collect();
    let others: Vec<NodeId> = (1..=3).filter(|id| *id != old_leader).collect();
    wait_for_one_leader_among(&mut sim, &others);
    one(&mut sim, "103-new", 2);
    sim.reconnect(old_leader);
    one(&mut sim, "104-new", 3);
    for index in stale {
        let entry = sim.entry(old_leader, index).expect("log covers the index");
        assert!(
            !["102", "103", "104"].contains(&std::str::from_utf8(&entry.data).unwrap_or(""))
                || entry.index > index
        );
    }
    sim.assert_safe();
}

#[test]
fn backup_from_minority_leaders_with_50_uncommitted_entries_twice_converges_fast() {
    let mut sim = cluster(5, 12);
    let leader1 = wait_for_leader(&mut sim);
    one(&mut sim, "start", 5);
    // Leader 1 and one follower in the minority; 50 uncommitted entries there.
    let mut others: Vec<NodeId> = (1..=5).filter(|id| *id != leader1).collect();
    let minority_follower = others.remove(0);
    sim.partition(&[leader1, minority_follower]);
    for k in 0..50 {
        let _ = sim.propose(leader1, command(&format!("lost-a-{k}")));
    }
    sim.run_for(SECOND_US / 2);
    // The majority side commits 50 entries.
    wait_for_one_leader_among(&mut sim, &others);
    for k in 0..50 {
        one(&mut sim, &format!("kept-a-{k}"), 3);
    }
    // Now a different minority: the new leader and one other append 50 uncommitted.
    let leader2 = leaders_among(&sim, &others)[0];
    let other = *others.iter().find(|id| **id != leader2).expect("other");
    let isolated: Vec<NodeId> = others
        .iter()
        .copied()
        .filter(|id| *id != leader2 && *id != other)
        .collect();
    sim.partition(&[leader2, other]);
    for k in 0..50 {
        let _ = sim.propose(leader2, command(&format!("lost-b-{k}")));
    }
    sim.run_for(SECOND_US / 2);
    // The old minority (leader 1's side) plus the isolated node form a majority.
    let mut majority = vec![leader1, minority_follower];
    majority.extend(isolated);
    sim.partition(&majority);
    wait_for_one_leader_among(&mut sim, &majority);
    for k in 0..50 {
        one(&mut sim, &format!("kept-b-{k}"), 3);
    }
    // Everyone back: all logs must converge, with few rejected AppendEntries.
    let rejects_before = count_rejections(&sim);
    sim.heal();
    one(&mut sim, "end", 5);
    let rejects = count_rejections(&sim) - rejects_before;
    // One round trip per diverging term and follower, not one per entry (50+).
    assert!(
        rejects <= 12,
        "{rejects} rejected AppendEntries to repair two followers"
    );
    sim.assert_safe();
}

fn count_rejections(sim: &Simulation) -> u64 {
    sim.stats.rejected_appends
}

// ----- message budgets ------------------------------------------------------------

#[test]
fn election_of_three_nodes_costs_at_most_30_messages() {
    for seed in 0..10 {
        let mut sim = cluster(3, 100 + seed);
        wait_for_leader(&mut sim);
        assert!(
            sim.stats.messages_sent <= 30,
            "seed {seed}: election took {} messages",
            sim.stats.messages_sent
        );
    }
}

#[test]
fn idle_cluster_sends_only_heartbeats_and_their_replies() {
    let mut sim = cluster(3, 13);
    wait_for_leader(&mut sim);
    one(&mut sim, "settle", 3);
    sim.run_for(SECOND_US / 10);
    let before = sim.stats.clone();
    sim.run_for(SECOND_US);
    for (kind, count) in &sim.stats.messages_by_kind {
        let delta = count - before.messages_by_kind.get(kind).copied().unwrap_or(0);
        assert!(
            delta == 0 || *kind == "Heartbeat" || *kind == "AppendEntriesResponse",
            "idle cluster sent {delta} {kind} messages"
        );
    }
    // Heartbeat every 2 ticks of ~10 ms: at most ~50 rounds to 2 followers, and replies.
    let sent = sim.stats.messages_sent - before.messages_sent;
    assert!(
        sent <= 2 * 2 * 55,
        "idle cluster sent {sent} messages in a second"
    );
}

#[test]
fn agreeing_on_12_entries_one_at_a_time_costs_a_few_messages_per_entry_per_follower() {
    let mut sim = cluster(3, 14);
    wait_for_leader(&mut sim);
    one(&mut sim, "settle", 3);
    let before = sim.stats.clone();
    let started = sim.now_us;
    for k in 0..12 {
        one(&mut sim, &format!("e{k}"), 3);
    }
    let sent = sim.stats.messages_sent - before.messages_sent;
    let elapsed_ticks = (sim.now_us - started) / 10_000 + 1;
    // Per entry and follower: AppendEntries, reply, commit notice, reply = 4;
    // plus the heartbeats of the elapsed time.
    let budget = 12 * 2 * 4 + elapsed_ticks * 2 * 2;
    assert!(
        sent <= budget,
        "{sent} messages for 12 entries (budget {budget})"
    );
}

// ----- persistence ----------------------------------------------------------------

#[test]
fn persistence_survives_crash_of_all_nodes() {
    let mut sim = cluster(3, 15);
    wait_for_leader(&mut sim);
    let index = one(&mut sim, "durable", 3);
    for id in 1..=3 {
        sim.crash(id);
    }
    for id in 1..=3 {
        sim.restart(id);
    }
    one(&mut sim, "after", 3);
    for id in 1..=3 {
        assert_eq!(sim.entry(id, index).expect("kept").data, command("durable"));
    }
    sim.assert_safe();
}

#[test]
fn persistence_survives_crash_of_a_majority_and_of_a_partitioned_leader() {
    let mut sim = cluster(5, 16);
    let leader = wait_for_leader(&mut sim);
    let first = one(&mut sim, "one", 5);
    // Crash a majority including the leader, restart them.
    let victims: Vec<NodeId> = std::iter::once(leader)
        .chain((1..=5).filter(|id| *id != leader).take(2))
        .collect();
    for id in &victims {
        sim.crash(*id);
    }
    sim.run_for(SECOND_US / 2);
    for id in &victims {
        sim.restart(*id);
    }
    let second = one(&mut sim, "two", 5);
    // Partition the leader, crash it while partitioned, restart and rejoin.
    let leader = wait_for_leader(&mut sim);
    sim.isolate(leader);
    let _ = sim.propose(leader, command("partitioned-uncommitted"));
    let third = one(&mut sim, "three", 4);
    sim.crash(leader);
    sim.restart(leader);
    sim.reconnect(leader);
    one(&mut sim, "four", 5);
    for id in 1..=5 {
        assert_eq!(sim.entry(id, first).expect("kept").data, command("one"));
        assert_eq!(sim.entry(id, second).expect("kept").data, command("two"));
        assert_eq!(sim.entry(id, third).expect("kept").data, command("three"));
    }
    sim.assert_safe();
}

/// Figure 8 of the Raft paper: leaders crash right after proposing, in a storm of
/// elections; an entry of an old term must never be committed by counting replicas.
fn figure8(seed: u64, unreliable: bool, iterations: u64) {
    let mut cfg = SimConfig::quiet(seed, 5);
    cfg.client_timeout_us = 5 * SECOND_US;
    cfg.max_batch_entries = 1;
    cfg.max_inflight_messages = 1;
    let mut sim = Simulation::new(cfg);
    if unreliable {
        sim.set_unreliable(0.1, 0.05, 0.2);
    }
    wait_for_leader(&mut sim);
    let mut n_up = 5;
    let mut pick: u64 = seed;
    let mut next = || {
        pick = pick
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        pick >> 33
    };
    for iteration in 0..iterations {
        if let Some(leader) = sim.leader() {
            let _ = sim.propose(leader, command(&format!("f8-{iteration}")));
        }
        let wait_us = if next() % 10 == 0 {
            next() % 500_000
        } else {
            next() % 13_000
        };
        sim.run_for(wait_us);
        if let Some(leader) = sim.leader() {
            if unreliable {
                sim.isolate(leader);
            } else {
                sim.crash(leader);
                n_up -= 1;
            }
        }
        if unreliable {
            if next() % 2 == 0 {
                let id = next() % 5 + 1;
                sim.reconnect(id);
            }
        } else {
            // Also crash bystanders now and then, so that stale logs come back later.
            if next() % 4 == 0 {
                let id = next() % 5 + 1;
                if sim.is_up(id) {
                    sim.crash(id);
                    n_up -= 1;
                }
            }
            while n_up < 3 {
                let id = next() % 5 + 1;
                if !sim.is_up(id) {
                    sim.restart(id);
                    n_up += 1;
                }
            }
        }
    }
    sim.set_unreliable(0.0, 0.0, 0.0);
    for id in 1..=5 {
        sim.restart(id);
        sim.reconnect(id);
    }
    one(&mut sim, "final", 5);
    sim.assert_safe();
}

/// (With the commit rule broken, the unreliable variant below catches it on its seeds;
/// this reliable variant did not in 100 seeds: with pipelined no-ops the window is one
/// round trip. The unit test `leader_never_commits_an_old_term_entry_by_counting_replicas`
/// checks the rule directly.)
#[test]
fn figure8_leader_crashes_with_random_delays_never_lose_committed_entries() {
    for seed in FIGURE8_SEEDS {
        figure8(seed, false, 1000);
    }
}

#[test]
fn figure8_on_an_unreliable_network_never_loses_committed_entries() {
    // With the commit rule broken (counting replicas of an old-term entry), each of
    // these seeds trips the core's "truncating committed entry" assert.
    for seed in [5, 12, 16, 26] {
        figure8(seed, true, 1000);
    }
}

const FIGURE8_SEEDS: [u64; 4] = [17, 18, 19, 20];

// ----- churn ----------------------------------------------------------------------

/// Returns how many crashes the run injected.
fn churn(seed: u64, message_faults: bool) -> u64 {
    let mut cfg = SimConfig::new(seed, 5);
    cfg.faults = FaultConfig {
        message_faults,
        partitions: true,
        crashes: true,
        membership_changes: true,
        stalls: true,
        nemesis_interval_us: 100_000,
    };
    cfg.n_clients = 5;
    cfg.fault_duration_us = 3 * SECOND_US;
    let report = Simulation::new(cfg).run();
    assert!(
        report.violations.is_empty(),
        "seed {seed}: {:?}\n{}",
        report.violations,
        report.trace
    );
    assert!(
        report.stats.writes_completed > 20,
        "churn made too little progress: {:?}",
        report.stats
    );
    report.stats.crashes
}

#[test]
fn reliable_churn_with_crashes_and_partitions_stays_safe_and_live() {
    let crashes: u64 = (0..4).map(|seed| churn(1000 + seed, false)).sum();
    assert!(crashes > 0, "the churn injected no crash");
}

#[test]
fn unreliable_churn_with_crashes_partitions_and_lossy_network_stays_safe_and_live() {
    let crashes: u64 = (0..4).map(|seed| churn(2000 + seed, true)).sum();
    assert!(crashes > 0, "the churn injected no crash");
}

// ----- leases and reads -----------------------------------------------------------

#[test]
fn lease_reads_never_stale_under_partitions_and_drift_within_the_bound() {
    let mut lease_reads = 0;
    let mut served_off_the_driver = 0;
    for seed in 0..30 {
        let mut cfg = SimConfig::new(3000 + seed, 3);
        cfg.faults = FaultConfig {
            message_faults: false,
            partitions: true,
            crashes: true,
            membership_changes: false,
            stalls: true,
            nemesis_interval_us: 100_000,
        };
        cfg.assumed_max_clock_drift = 0.3;
        cfg.actual_max_clock_drift = 0.3;
        cfg.n_clients = 4;
        let report = Simulation::new(cfg).run();
        assert!(
            report.violations.is_empty(),
            "seed {}: {:?}\n{}",
            3000 + seed,
            report.violations,
            report.trace
        );
        lease_reads += report.stats.lease_reads;
        served_off_the_driver += report.stats.local_reads_served;
    }
    assert!(
        lease_reads > 100,
        "the lease path was hardly exercised ({lease_reads} lease reads)"
    );
    assert!(
        served_off_the_driver > 100,
        "reads off the driver were hardly exercised ({served_off_the_driver} served)"
    );
}

/// The old leader's clock runs at a fifth of the others' speed; it is partitioned away
/// after writing, the majority elects a new leader and overwrites the key, then a client
/// reads at the old leader. Returns whether the history checker found a stale read.
fn read_at_slow_partitioned_leader(assumed_drift: f64) -> bool {
    let mut cfg = SimConfig::quiet(19, 3);
    cfg.assumed_max_clock_drift = assumed_drift;
    cfg.actual_max_clock_drift = 0.0;
    let mut sim = Simulation::new(cfg);
    let old_leader = wait_for_leader(&mut sim);
    let client = sim.add_client();
    let first = sim.client_write(client, old_leader, 0);
    assert!(sim.run_until(SECOND_US, |sim| sim.op_completed(first)));
    // Slow down the old leader's clock 5x (a drift the nodes do not assume).
    let k = old_leader as usize - 1;
    sim.nodes[k].tick_interval_us *= 5;
    sim.run_for(200_000);
    sim.partition(&[old_leader]);
    let others: Vec<NodeId> = (1..=3).filter(|id| *id != old_leader).collect();
    let new_leader = wait_for_one_leader_among(&mut sim, &others);
    let second = sim.client_write(client, new_leader, 0);
    assert!(sim.run_until(SECOND_US, |sim| sim.op_completed(second)));
    sim.run_for(1_000); // strictly after the write completed
    let read = sim.client_read(client, old_leader, 0);
    sim.run_for(SECOND_US / 2);
    let stale = sim.violations().iter().any(|v| v.contains("stale read"));
    assert!(stale || !sim.op_completed(read) || sim.violations().is_empty());
    stale
}

#[test]
fn lease_read_is_stale_when_the_real_drift_exceeds_the_assumed_bound() {
    assert!(
        read_at_slow_partitioned_leader(0.0),
        "a 5x slow clock with no assumed drift should have produced a stale lease read"
    );
}

#[test]
fn lease_read_is_refused_when_the_assumed_bound_covers_the_real_drift() {
    assert!(
        !read_at_slow_partitioned_leader(0.8),
        "stale lease read although the drift bound holds"
    );
}

// ----- leadership transfer --------------------------------------------------------

#[test]
fn leadership_transfer_hands_over_to_a_lagging_target_after_it_catches_up() {
    let mut sim = cluster(3, 20);
    let leader = wait_for_leader(&mut sim);
    let target = (1..=3).find(|id| *id != leader).expect("follower");
    sim.isolate(target);
    for k in 0..20 {
        one(&mut sim, &format!("t{k}"), 2);
    }
    sim.reconnect(target);
    let term = sim.node(leader).expect("up").term();
    assert!(sim.transfer_leadership(leader, target));
    let moved = sim.run_until(SECOND_US, |sim| sim.leader() == Some(target));
    assert!(moved, "leadership did not move to node {target}");
    assert_eq!(
        sim.node(target).expect("up").term(),
        term + 1,
        "transfer should take exactly one election"
    );
    one(&mut sim, "after-transfer", 3);
    sim.assert_safe();
}

// ----- membership changes -----------------------------------------------------------

#[test]
fn membership_change_grows_to_five_then_removes_the_leader_and_another_node() {
    let mut cfg = SimConfig::quiet(21, 5);
    cfg.initial_voters = 3;
    let mut sim = Simulation::new(cfg);
    let leader = wait_for_one_leader_among(&mut sim, &[1, 2, 3]);
    one(&mut sim, "before", 3);
    assert!(sim.change_membership(leader, &[1, 2, 3, 4, 5]));
    let grown = sim.run_until(SECOND_US, |sim| {
        sim.node(leader).is_some_and(|raft| {
            !raft.configuration().is_joint() && raft.configuration().voters.len() == 5
        })
    });
    assert!(grown, "did not reach the five-voter configuration");
    let index = one(&mut sim, "five", 5);
    // Remove the leader and one more node.
    let other = (1..=5).find(|id| *id != leader).expect("other");
    let remaining: Vec<NodeId> = (1..=5).filter(|id| *id != leader && *id != other).collect();
    assert!(sim.change_membership(leader, &remaining));
    let stepped_down = sim.run_until(SECOND_US, |sim| {
        sim.node(leader)
            .is_some_and(|raft| raft.role() != Role::Leader)
    });
    assert!(
        stepped_down,
        "a leader outside the new configuration kept leading"
    );
    let new_leader = wait_for_one_leader_among(&mut sim, &remaining);
    assert!(remaining.contains(&new_leader));
    // The removed nodes are not needed any more.
    sim.isolate(leader);
    sim.isolate(other);
    let after = one(&mut sim, "three", 3);
    assert!(after > index);
    sim.assert_safe();
}

// ----- lease reads served off the raft thread ---------------------------------------

/// Node `leader` serves reads of key 0 the way a client I/O thread does (published
/// lease, published view) until one is served that way.
fn serve_one_read_off_the_driver(sim: &mut Simulation, client: usize, leader: NodeId) {
    for _ in 0..5 {
        let before = sim.stats.local_reads_served;
        let read = sim.client_read(client, leader, 0);
        assert!(sim.run_until(SECOND_US, |sim| sim.op_completed(read)));
        if sim.stats.local_reads_served > before {
            return;
        }
    }
    panic!("no read was served off the driver");
}

/// A leader serves a read off its driver, then its driver stalls (its clock runs on);
/// the others elect a new leader that overwrites the key; a client then reads at the
/// stalled leader. Returns whether the history checker found a stale read.
fn read_off_the_driver_at_a_stalled_leader(check: LocalReadCheck) -> bool {
    let mut cfg = SimConfig::quiet(23, 3);
    cfg.local_reads = 1.0;
    cfg.local_read_check = check;
    let mut sim = Simulation::new(cfg);
    let old_leader = wait_for_leader(&mut sim);
    let client = sim.add_client();
    let first = sim.client_write(client, old_leader, 0);
    assert!(sim.run_until(SECOND_US, |sim| sim.op_completed(first)));
    serve_one_read_off_the_driver(&mut sim, client, old_leader);
    sim.stall(old_leader, 3 * SECOND_US);
    let others: Vec<NodeId> = (1..=3).filter(|id| *id != old_leader).collect();
    let new_leader = wait_for_one_leader_among(&mut sim, &others);
    let second = sim.client_write(client, new_leader, 0);
    assert!(sim.run_until(SECOND_US, |sim| sim.op_completed(second)));
    sim.run_for(1_000); // strictly after the write completed
    let _read = sim.client_read(client, old_leader, 0);
    sim.run_for(SECOND_US / 2);
    sim.violations().iter().any(|v| v.contains("stale read"))
}

#[test]
fn a_stalled_leader_whose_lease_expired_never_serves_a_read_off_its_driver() {
    assert!(
        !read_off_the_driver_at_a_stalled_leader(LocalReadCheck::Exact),
        "stale read served off the driver of a stalled leader"
    );
}

#[test]
fn ignoring_the_lease_expiry_in_the_local_read_check_is_caught_as_a_stale_read() {
    assert!(
        read_off_the_driver_at_a_stalled_leader(LocalReadCheck::IgnoreExpiry),
        "a check that ignores the lease expiry should have served a stale read"
    );
}

/// A leader serves a read off its driver (the view is then current and nobody wants a
/// newer one), applies a second write to the key, and a client reads it there again:
/// the published view is behind. Returns whether a stale read was found. With
/// `frozen_views` the view is a frozen copy, so being behind means stale data; with the
/// KV store's live views, a view behind the commit index still reads the applied state.
fn read_off_the_driver_from_a_view_behind_the_commit_index(
    check: LocalReadCheck,
    frozen_views: bool,
) -> bool {
    let mut cfg = SimConfig::quiet(29, 3);
    cfg.local_reads = 1.0;
    cfg.local_read_check = check;
    cfg.frozen_read_views = frozen_views;
    let mut sim = Simulation::new(cfg);
    let leader = wait_for_leader(&mut sim);
    let client = sim.add_client();
    let first = sim.client_write(client, leader, 0);
    assert!(sim.run_until(SECOND_US, |sim| sim.op_completed(first)));
    serve_one_read_off_the_driver(&mut sim, client, leader);
    let second = sim.client_write(client, leader, 0);
    assert!(sim.run_until(SECOND_US, |sim| sim.op_completed(second)));
    let read = sim.client_read(client, leader, 0);
    assert!(sim.run_until(SECOND_US, |sim| sim.op_completed(read)));
    sim.violations().iter().any(|v| v.contains("stale read"))
}

#[test]
fn a_read_view_behind_the_commit_index_never_serves_a_read_off_the_driver() {
    for frozen_views in [true, false] {
        assert!(
            !read_off_the_driver_from_a_view_behind_the_commit_index(
                LocalReadCheck::Exact,
                frozen_views
            ),
            "stale read served from a view behind the commit index (frozen: {frozen_views})"
        );
    }
}

#[test]
fn ignoring_the_applied_index_in_the_local_read_check_is_caught_as_a_stale_read() {
    assert!(
        read_off_the_driver_from_a_view_behind_the_commit_index(
            LocalReadCheck::IgnoreAppliedIndex,
            true
        ),
        "a check that ignores a frozen view's applied index should have served a stale read"
    );
}
