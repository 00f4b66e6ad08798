//! Unit tests of single-node behaviour, driven by hand-made messages. Cluster-level
//! scenarios live in `tests/` and run on the simulator.

use bytes::Bytes;

use super::*;
use crate::raft::node::ConfigChangeError;

fn config(id: NodeId) -> RaftConfig {
    RaftConfig::new(id, id * 7919)
}

fn three_nodes() -> Configuration {
    Configuration::new([1, 2, 3])
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        data: Bytes::from(format!("e{index}t{term}")),
    }
}

fn message(from: NodeId, to: NodeId, term: u64, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

fn append(prev: (u64, u64), entries: Vec<Entry>, leader_commit: u64) -> MessageBody {
    MessageBody::AppendEntries(AppendEntries {
        prev_log_index: prev.0,
        prev_log_term: prev.1,
        entries,
        leader_commit,
        heartbeat_id: 0,
        sent_at_tick: 0,
    })
}

fn ack(match_index: u64) -> MessageBody {
    MessageBody::AppendEntriesResponse(AppendEntriesResponse {
        success: true,
        match_index,
        rejected_prev_index: 0,
        conflict: None,
        heartbeat_id: 0,
        sent_at_tick: 0,
    })
}

fn responses(ready: &Ready) -> Vec<&AppendEntriesResponse> {
    ready
        .messages
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::AppendEntriesResponse(response) => Some(response),
            _ => None,
        })
        .collect()
}

/// Ticks until the node sends pre-votes, then grants them from node 2.
/// Returns the node as a candidate whose hard state is not yet durable.
fn make_candidate(node: &mut RaftNode) -> u64 {
    for _ in 0..100 {
        node.tick();
        if node.role() == Role::PreCandidate {
            break;
        }
    }
    assert_eq!(node.role(), Role::PreCandidate);
    let term = node.term();
    node.step(message(
        2,
        1,
        term + 1,
        MessageBody::PreVoteResponse(VoteResponse { granted: true }),
    ));
    assert_eq!(node.role(), Role::Candidate);
    assert_eq!(node.term(), term + 1);
    term + 1
}

fn make_leader(node: &mut RaftNode) -> u64 {
    let term = make_candidate(node);
    let ready = node.take_ready();
    node.on_persisted(ready.persist.expect("term and vote must be persisted").seq);
    node.step(message(
        2,
        1,
        term,
        MessageBody::RequestVoteResponse(VoteResponse { granted: true }),
    ));
    assert_eq!(node.role(), Role::Leader);
    term
}

#[test]
fn request_vote_is_held_until_term_and_vote_are_durable() {
    let mut node = RaftNode::new(config(1), three_nodes());
    let term = make_candidate(&mut node);
    let ready = node.take_ready();
    let persist = ready
        .persist
        .expect("candidate must persist its term and vote");
    assert_eq!(
        persist.hard_state,
        Some(HardState {
            term,
            voted_for: Some(1)
        })
    );
    assert!(
        !ready
            .messages
            .iter()
            .any(|m| matches!(m.body, MessageBody::RequestVote(_))),
        "RequestVote sent before the vote for ourselves was durable"
    );
    node.on_persisted(persist.seq);
    let ready = node.take_ready();
    let n_requests = ready
        .messages
        .iter()
        .filter(|m| matches!(m.body, MessageBody::RequestVote(_)))
        .count();
    assert_eq!(n_requests, 2);
}

#[test]
fn vote_grant_is_held_until_durable() {
    let mut node = RaftNode::new(config(2), three_nodes());
    let request = RequestVote {
        last_log_index: 0,
        last_log_term: 0,
        leadership_transfer: false,
    };
    node.step(message(1, 2, 1, MessageBody::RequestVote(request)));
    assert_eq!(node.voted_for(), Some(1));
    let ready = node.take_ready();
    assert!(
        ready.messages.is_empty(),
        "vote granted before it was durable: {:?}",
        ready.messages
    );
    let persist = ready.persist.expect("vote must be persisted");
    assert_eq!(
        persist.hard_state,
        Some(HardState {
            term: 1,
            voted_for: Some(1)
        })
    );
    node.on_persisted(persist.seq);
    let ready = node.take_ready();
    assert_eq!(ready.messages.len(), 1);
    assert!(matches!(
        ready.messages[0].body,
        MessageBody::RequestVoteResponse(VoteResponse { granted: true })
    ));
}

#[test]
fn one_vote_per_term() {
    let mut node = RaftNode::new(config(3), three_nodes());
    let request = RequestVote {
        last_log_index: 0,
        last_log_term: 0,
        leadership_transfer: false,
    };
    node.step(message(1, 3, 1, MessageBody::RequestVote(request.clone())));
    node.step(message(2, 3, 1, MessageBody::RequestVote(request)));
    let ready = node.take_ready();
    node.on_persisted(ready.persist.map_or(0, |p| p.seq));
    let ready = node.take_ready();
    let grants: Vec<(NodeId, bool)> = ready
        .messages
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::RequestVoteResponse(response) => Some((m.to, response.granted)),
            _ => None,
        })
        .collect();
    assert_eq!(grants, vec![(1, true), (2, false)]);
}

#[test]
fn vote_refused_to_candidate_with_older_log() {
    let entries = vec![entry(1, 1), entry(2, 2)];
    let mut node = RaftNode::restart(
        config(2),
        three_nodes(),
        HardState {
            term: 2,
            voted_for: None,
        },
        None,
        entries,
    )
    .expect("valid restart state");
    for _ in 0..20 {
        node.tick(); // let the post-restart vote quarantine pass
    }
    let stale = RequestVote {
        last_log_index: 5,
        last_log_term: 1,
        leadership_transfer: false,
    };
    node.step(message(1, 2, 3, MessageBody::RequestVote(stale)));
    assert_eq!(node.voted_for(), None);
}

#[test]
fn single_node_becomes_leader_only_after_its_vote_is_durable() {
    let mut node = RaftNode::new(config(1), Configuration::new([1]));
    for _ in 0..40 {
        node.tick();
    }
    assert_eq!(node.role(), Role::Candidate);
    let ready = node.take_ready();
    node.on_persisted(ready.persist.expect("vote").seq);
    assert_eq!(node.role(), Role::Leader);
    let range = node
        .propose(vec![Bytes::from_static(b"x")])
        .expect("leader accepts proposals");
    assert_eq!(range, 2..3, "the no-op of the new term takes index 1");
}

#[test]
fn leader_counts_itself_only_once_its_write_is_durable() {
    let mut node = RaftNode::new(config(1), three_nodes());
    let term = make_leader(&mut node);
    let ready = node.take_ready();
    let persist = ready.persist.expect("no-op must be persisted");
    assert_eq!(persist.entries.len(), 1);
    assert!(
        ready
            .messages
            .iter()
            .any(|m| matches!(&m.body, MessageBody::AppendEntries(a) if !a.entries.is_empty())),
        "leader must replicate in parallel with its own disk write"
    );
    // Node 2 acknowledges: 1 of 3 durable copies (the leader's own is not durable yet).
    node.step(message(2, 1, term, ack(1)));
    assert_eq!(
        node.commit_index(),
        0,
        "leader counted its own non-durable write"
    );
    node.on_persisted(persist.seq);
    assert_eq!(node.commit_index(), 1);
}

#[test]
fn leader_never_commits_an_old_term_entry_by_counting_replicas() {
    // Figure 8: entries 1 (term 1) and 2 (term 2) from earlier leaders.
    let entries = vec![entry(1, 1), entry(2, 2)];
    let hard_state = HardState {
        term: 3,
        voted_for: None,
    };
    let mut node = RaftNode::restart(config(1), three_nodes(), hard_state, None, entries)
        .expect("valid restart state");
    let term = make_leader(&mut node);
    assert_eq!(term, 4);
    let ready = node.take_ready();
    node.on_persisted(ready.persist.expect("no-op").seq);
    // A majority (leader + node 2) now holds entry 2, but it is from term 2.
    node.step(message(2, 1, term, ack(2)));
    assert_eq!(
        node.commit_index(),
        0,
        "committed an entry of an older term by counting replicas"
    );
    node.step(message(2, 1, term, ack(3)));
    assert_eq!(
        node.commit_index(),
        3,
        "committing the no-op commits everything before it"
    );
}

#[test]
fn follower_acknowledges_entries_only_after_they_are_durable() {
    let mut node = RaftNode::new(config(2), three_nodes());
    node.step(message(
        1,
        2,
        1,
        append((0, 0), vec![entry(1, 1), entry(2, 1)], 0),
    ));
    let ready = node.take_ready();
    assert!(
        responses(&ready).is_empty(),
        "acknowledged entries that are not durable"
    );
    let persist = ready.persist.expect("entries must be persisted");
    assert_eq!(persist.entries.len(), 2);
    node.on_persisted(persist.seq);
    let ready = node.take_ready();
    let acks = responses(&ready);
    assert_eq!(acks.len(), 1);
    assert!(acks[0].success);
    assert_eq!(acks[0].match_index, 2);
}

#[test]
fn conflicting_suffix_is_truncated_and_replaced() {
    let entries = vec![entry(1, 1), entry(2, 1), entry(3, 2), entry(4, 2)];
    let hard_state = HardState {
        term: 2,
        voted_for: None,
    };
    let mut node = RaftNode::restart(config(2), three_nodes(), hard_state, None, entries)
        .expect("valid restart state");
    node.step(message(1, 2, 3, append((2, 1), vec![entry(3, 3)], 0)));
    assert_eq!(node.log().last_index(), 3);
    assert_eq!(node.log().term(3), Some(3));
    let persist = node
        .take_ready()
        .persist
        .expect("truncation must be persisted");
    assert_eq!(persist.truncate_from, Some(3));
    assert_eq!(persist.entries, vec![entry(3, 3)]);
}

#[test]
fn durability_of_an_action_is_capped_by_a_later_truncation() {
    let mut node = RaftNode::new(config(2), three_nodes());
    node.step(message(
        1,
        2,
        1,
        append((0, 0), vec![entry(1, 1), entry(2, 1), entry(3, 1)], 0),
    ));
    let first = node.take_ready().persist.expect("first write");
    // A new leader overwrites entries 2..3 before the first write is durable.
    node.step(message(3, 2, 2, append((1, 1), vec![entry(2, 2)], 0)));
    let second = node.take_ready();
    let second_persist = second.persist.expect("second write");
    assert_eq!(second_persist.truncate_from, Some(2));
    node.on_persisted(first.seq);
    assert_eq!(
        node.log().persisted(),
        1,
        "entries 2..3 of the first write were truncated away"
    );
    let ready = node.take_ready();
    // The term-1 reply may go now (it is just a delayed message: its entries were
    // durable when sent); no term-2 success may.
    let term_two_acks = ready
        .messages
        .iter()
        .filter(|m| {
            m.term == 2 && matches!(&m.body, MessageBody::AppendEntriesResponse(r) if r.success)
        })
        .count();
    assert_eq!(
        term_two_acks, 0,
        "acknowledged an entry of term 2 that is not durable"
    );
    node.on_persisted(second_persist.seq);
    assert_eq!(node.log().persisted(), 2);
    let ready = node.take_ready();
    assert!(responses(&ready)
        .iter()
        .any(|r| r.success && r.match_index == 2));
}

#[test]
fn rejection_carries_fast_backup_hints() {
    let entries = vec![
        entry(1, 1),
        entry(2, 1),
        entry(3, 2),
        entry(4, 2),
        entry(5, 2),
    ];
    let hard_state = HardState {
        term: 2,
        voted_for: None,
    };
    let mut node = RaftNode::restart(config(2), three_nodes(), hard_state, None, entries)
        .expect("valid restart state");
    node.step(message(1, 2, 3, append((5, 3), vec![], 0)));
    node.step(message(1, 2, 3, append((9, 3), vec![], 0)));
    let ready = node.take_ready();
    node.on_persisted(ready.persist.map_or(0, |p| p.seq));
    let ready = node.take_ready();
    let hints: Vec<ConflictHint> = responses(&ready)
        .iter()
        .filter_map(|r| r.conflict)
        .collect();
    assert_eq!(
        hints,
        vec![
            ConflictHint {
                conflict_term: Some(2),
                first_index_of_conflict_term: 3,
                last_log_index: 5
            },
            ConflictHint {
                conflict_term: None,
                first_index_of_conflict_term: 0,
                last_log_index: 5
            },
        ]
    );
}

#[test]
fn follower_commit_index_never_passes_the_verified_prefix() {
    let entries = vec![entry(1, 1), entry(2, 1), entry(3, 1)];
    let hard_state = HardState {
        term: 1,
        voted_for: None,
    };
    let mut node = RaftNode::restart(config(2), three_nodes(), hard_state, None, entries)
        .expect("valid restart state");
    // The leader has committed 10, but this heartbeat only verifies the log through 1.
    node.step(message(1, 2, 2, append((1, 1), vec![], 10)));
    assert_eq!(node.commit_index(), 1);
}

#[test]
fn pre_vote_does_not_increment_the_term_and_is_ignored_while_a_leader_is_heard() {
    let mut node = RaftNode::new(config(2), three_nodes());
    node.step(message(1, 2, 1, append((0, 0), vec![], 0)));
    let term = node.term();
    let request = RequestVote {
        last_log_index: 9,
        last_log_term: 9,
        leadership_transfer: false,
    };
    node.step(message(
        3,
        2,
        term + 1,
        MessageBody::PreVote(request.clone()),
    ));
    node.step(message(3, 2, term + 1, MessageBody::RequestVote(request)));
    assert_eq!(node.term(), term);
    let ready = node.take_ready();
    node.on_persisted(ready.persist.map_or(0, |p| p.seq));
    let ready = node.take_ready();
    assert!(
        !ready.messages.iter().any(|m| matches!(
            m.body,
            MessageBody::PreVoteResponse(_) | MessageBody::RequestVoteResponse(_)
        )),
        "answered a vote request while hearing from a live leader"
    );
}

#[test]
fn restarted_node_refuses_votes_for_an_election_timeout() {
    let hard_state = HardState {
        term: 5,
        voted_for: None,
    };
    let mut node = RaftNode::restart(
        config(2),
        three_nodes(),
        hard_state,
        None,
        vec![entry(1, 5)],
    )
    .expect("valid restart state");
    let request = RequestVote {
        last_log_index: 1,
        last_log_term: 5,
        leadership_transfer: false,
    };
    node.step(message(3, 2, 6, MessageBody::RequestVote(request.clone())));
    assert_eq!(
        node.term(),
        5,
        "restarted node voted before an election timeout passed"
    );
    for _ in 0..node.config().election_timeout_ticks {
        node.tick();
    }
    node.step(message(3, 2, 7, MessageBody::RequestVote(request)));
    assert_eq!(node.voted_for(), Some(3));
}

#[test]
fn lease_length_shrinks_with_the_drift_bound() {
    let mut cfg = config(1);
    cfg.election_timeout_ticks = 11;
    cfg.max_clock_drift = 0.0;
    assert_eq!(cfg.lease_ticks(), 10);
    cfg.max_clock_drift = 0.25;
    assert_eq!(cfg.lease_ticks(), 7);
}

#[test]
fn proposals_on_a_follower_name_the_leader() {
    let mut node = RaftNode::new(config(2), three_nodes());
    node.step(message(1, 2, 1, append((0, 0), vec![], 0)));
    assert_eq!(
        node.propose(vec![Bytes::from_static(b"x")]),
        Err(ProposeError::NotLeader {
            leader_hint: Some(1)
        })
    );
    assert_eq!(
        node.read_index(7),
        Err(ReadError::NotLeader {
            leader_hint: Some(1)
        })
    );
}

#[test]
fn stale_leader_is_told_the_newer_term() {
    let hard_state = HardState {
        term: 5,
        voted_for: None,
    };
    let mut node = RaftNode::restart(config(2), three_nodes(), hard_state, None, vec![])
        .expect("valid restart state");
    node.step(message(1, 2, 3, append((0, 0), vec![], 0)));
    let ready = node.take_ready();
    assert_eq!(ready.messages.len(), 1);
    assert_eq!(ready.messages[0].term, 5);
    assert!(responses(&ready).iter().all(|r| !r.success));
}

fn ack_echo(match_index: u64, heartbeat_id: u64, sent_at_tick: u64) -> MessageBody {
    MessageBody::AppendEntriesResponse(AppendEntriesResponse {
        success: true,
        match_index,
        rejected_prev_index: match_index,
        conflict: None,
        heartbeat_id,
        sent_at_tick,
    })
}

/// A 3-node leader (node 1) whose no-op is durable but not yet acknowledged.
fn leader_with_durable_noop() -> (RaftNode, u64) {
    let mut node = RaftNode::new(config(1), three_nodes());
    let term = make_leader(&mut node);
    let ready = node.take_ready();
    node.on_persisted(ready.persist.expect("no-op").seq);
    (node, term)
}

fn heartbeat_ids_sent(ready: &Ready) -> Vec<u64> {
    ready
        .messages
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::AppendEntries(append) => Some(append.heartbeat_id),
            _ => None,
        })
        .collect()
}

#[test]
fn no_reads_are_served_before_an_entry_of_the_term_is_committed() {
    let (mut node, term) = leader_with_durable_noop();
    node.read_index(1).expect("leader");
    assert!(
        node.take_ready().reads.is_empty(),
        "read served before the no-op committed"
    );
    let now = node.now_tick();
    node.step(message(2, 1, term, ack_echo(1, 0, now)));
    assert_eq!(node.commit_index(), 1);
    let reads = node.take_ready().reads;
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].read_index, 1);
}

#[test]
fn lease_read_needs_no_round_trip_until_the_lease_expires() {
    let (mut node, term) = leader_with_durable_noop();
    let sent = node.now_tick();
    node.step(message(2, 1, term, ack_echo(1, 0, sent)));
    node.take_ready();
    assert!(node.lease_valid());
    node.read_index(7).expect("leader");
    let ready = node.take_ready();
    assert_eq!(
        ready.reads,
        vec![ReadyRead {
            request_id: 7,
            read_index: 1,
            via: ReadPath::Lease
        }]
    );
    // Keep node 2 answering nothing newer: the lease runs out after lease_ticks.
    for _ in 0..node.config().lease_ticks() {
        node.tick();
    }
    assert!(!node.lease_valid(), "lease outlived lease_ticks");
    node.take_ready();
    node.read_index(8).expect("leader");
    let ready = node.take_ready();
    assert!(ready.reads.is_empty(), "expired lease served a read");
    // The ReadIndex round: only an echo of the new heartbeat id confirms it.
    let round = *heartbeat_ids_sent(&ready)
        .iter()
        .max()
        .expect("heartbeats sent for ReadIndex");
    node.step(message(2, 1, term, ack_echo(1, round - 1, node.now_tick())));
    assert!(
        node.take_ready().reads.is_empty(),
        "an older heartbeat confirmed a newer read"
    );
    node.step(message(2, 1, term, ack_echo(1, round, node.now_tick())));
    let reads = node.take_ready().reads;
    assert_eq!(
        reads,
        vec![ReadyRead {
            request_id: 8,
            read_index: 1,
            via: ReadPath::ReadIndex
        }]
    );
}

#[test]
fn lease_is_revoked_once_timeout_now_is_sent() {
    let (mut node, term) = leader_with_durable_noop();
    node.step(message(2, 1, term, ack_echo(1, 0, node.now_tick())));
    node.take_ready();
    assert!(node.lease_valid());
    node.transfer_leadership(2).expect("leader");
    let ready = node.take_ready();
    assert!(ready
        .messages
        .iter()
        .any(|m| m.to == 2 && matches!(m.body, MessageBody::TimeoutNow)));
    assert!(
        !node.lease_valid(),
        "the transfer target's election ignores leases"
    );
    assert_eq!(
        node.propose(vec![Bytes::from_static(b"x")]),
        Err(ProposeError::TransferInProgress)
    );
}

#[test]
fn leader_steps_down_after_an_election_timeout_without_a_quorum() {
    let (mut node, _) = leader_with_durable_noop();
    for _ in 0..node.config().election_timeout_ticks {
        node.tick();
    }
    assert_eq!(node.role(), Role::Follower);
}

#[test]
fn replicate_mode_bounds_messages_in_flight() {
    let (mut node, term) = leader_with_durable_noop();
    node.step(message(2, 1, term, ack_echo(1, 0, node.now_tick())));
    node.take_ready();
    let limit = node.config().max_inflight_messages;
    for k in 0..(limit * 3) {
        node.propose(vec![Bytes::from(format!("p{k}"))])
            .expect("leader");
    }
    let ready = node.take_ready();
    let to_two = ready
        .messages
        .iter()
        .filter(|m| {
            m.to == 2 && matches!(&m.body, MessageBody::AppendEntries(a) if !a.entries.is_empty())
        })
        .count();
    assert_eq!(
        to_two, limit,
        "pipelining must stop at max_inflight_messages"
    );
    let to_three = ready
        .messages
        .iter()
        .filter(|m| {
            m.to == 3 && matches!(&m.body, MessageBody::AppendEntries(a) if !a.entries.is_empty())
        })
        .count();
    assert!(
        to_three <= 1,
        "a follower in probe mode gets one AppendEntries at a time, got {to_three}"
    );
}

#[test]
fn joint_configuration_commits_only_with_majorities_of_old_and_new_voters() {
    let (mut node, term) = leader_with_durable_noop();
    let now = node.now_tick();
    node.step(message(2, 1, term, ack_echo(1, 0, now)));
    let joint_index = node
        .propose_configuration_change([1, 4, 5], [])
        .expect("leader");
    assert!(
        node.configuration().is_joint(),
        "the joint configuration takes effect when appended"
    );
    assert!(node.progress(4).is_some(), "new voters get replicated to");
    assert_eq!(
        node.propose_configuration_change([1, 2, 3], []),
        Err(ConfigChangeError::ChangeInProgress)
    );
    let persist = node.take_ready().persist.expect("joint entry");
    node.on_persisted(persist.seq);
    // Old majority {1, 2, 3} holds it, new majority {1, 4, 5} does not.
    node.step(message(2, 1, term, ack_echo(joint_index, 0, now)));
    node.step(message(3, 1, term, ack_echo(joint_index, 0, now)));
    assert!(
        node.commit_index() < joint_index,
        "joint entry committed without a new-voter majority"
    );
    node.step(message(4, 1, term, ack_echo(joint_index, 0, now)));
    assert_eq!(node.commit_index(), joint_index);
    // Committing the joint entry makes the leader append C_new by itself.
    let final_config = node.configuration().clone();
    assert!(!final_config.is_joint());
    assert_eq!(final_config.voters, [1, 4, 5].into_iter().collect());
    assert_eq!(
        node.log().entry(joint_index + 1).map(|e| e.kind),
        Some(EntryKind::Config)
    );
    assert!(
        node.progress(2).is_none(),
        "removed voters are no longer replicated to"
    );
}

#[test]
fn truncating_a_configuration_entry_restores_the_previous_configuration() {
    let mut node = RaftNode::new(config(2), three_nodes());
    let mut joint = Configuration::new([1, 2, 4]);
    joint.outgoing_voters = [1, 2, 3].into_iter().collect();
    let config_entry = Entry {
        index: 1,
        term: 1,
        kind: EntryKind::Config,
        data: joint.encode(),
    };
    node.step(message(1, 2, 1, append((0, 0), vec![config_entry], 0)));
    assert_eq!(node.configuration(), &joint);
    node.step(message(3, 2, 2, append((0, 0), vec![entry(1, 2)], 0)));
    assert_eq!(
        node.configuration(),
        &three_nodes(),
        "configuration of a truncated entry still in effect"
    );
}

#[test]
fn removed_node_may_campaign_until_its_removal_is_committed() {
    // Node 1 restarts with C_new = {2, 3, 4} (which drops it) as the latest entry.
    let new = Configuration::new([2, 3, 4]);
    let entries = vec![
        entry(1, 1),
        Entry {
            index: 2,
            term: 1,
            kind: EntryKind::Config,
            data: new.encode(),
        },
    ];
    let hard_state = HardState {
        term: 1,
        voted_for: None,
    };
    let mut node = RaftNode::restart(config(1), three_nodes(), hard_state, None, entries)
        .expect("valid restart state");
    assert_eq!(
        node.configuration(),
        &new,
        "the latest configuration in the log is in effect"
    );
    // Until C_new is known committed, node 1 may be the only holder of it and must be
    // able to get elected to finish the change (thesis §4.2.2).
    assert_eq!(node.role(), Role::Follower);
    node.step(message(2, 1, 2, append((2, 1), vec![], 2)));
    assert_eq!(node.commit_index(), 2);
    assert_eq!(
        node.role(),
        Role::Learner,
        "a removed node kept campaigning after its removal committed"
    );
}

/// Entry-bearing AppendEntries in a ready, per follower: (to, last index, sent_at_tick,
/// heartbeat id); empty ones (heartbeats) as (to, None, ...).
fn appends_sent(ready: &Ready) -> Vec<(NodeId, Option<u64>, u64, u64)> {
    ready
        .messages
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::AppendEntries(append) => Some((
                m.to,
                append.entries.last().map(|entry| entry.index),
                append.sent_at_tick,
                append.heartbeat_id,
            )),
            _ => None,
        })
        .collect()
}

/// Both followers answer heartbeats at once but acknowledge entries only
/// `ack_delay_ticks` later (a slow disk: acks wait for fsync). Returns the leader after
/// `ticks` ticks of one proposal per tick, and the highest index acknowledged.
fn leader_with_slow_followers(
    ack_delay_ticks: u64,
    ticks: u64,
    lose_last: bool,
) -> (RaftNode, u64) {
    let (mut node, term) = leader_with_durable_noop();
    node.step(message(2, 1, term, ack_echo(1, 0, node.now_tick())));
    node.step(message(3, 1, term, ack_echo(1, 0, node.now_tick())));
    node.take_ready();
    let mut delayed: Vec<(u64, NodeId, u64, u64, u64)> = Vec::new();
    let mut acked = [1u64; 4];
    for tick in 0..ticks {
        if tick < ticks / 2 {
            node.propose(vec![Bytes::from(format!("p{tick}"))])
                .expect("leader");
        }
        node.tick();
        let now = node.now_tick();
        let ready = node.take_ready();
        if let Some(persist) = &ready.persist {
            node.on_persisted(persist.seq);
        }
        for (to, last, sent_at_tick, heartbeat_id) in appends_sent(&ready) {
            match last {
                // The last batch to node 2 is lost when asked.
                Some(_) if lose_last && to == 2 && tick + 1 == ticks / 2 => {}
                Some(last) => {
                    delayed.push((now + ack_delay_ticks, to, last, heartbeat_id, sent_at_tick))
                }
                None => {
                    let answer = ack_echo(acked[to as usize], heartbeat_id, sent_at_tick);
                    node.step(message(to, 1, term, answer));
                }
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = delayed.into_iter().partition(|d| d.0 <= now);
        delayed = later;
        for (_, to, last, heartbeat_id, sent_at_tick) in due {
            acked[to as usize] = acked[to as usize].max(last);
            node.step(message(
                to,
                1,
                term,
                ack_echo(last, heartbeat_id, sent_at_tick),
            ));
        }
        assert_eq!(node.role(), Role::Leader, "the leader keeps its quorum");
    }
    (node, acked[2])
}

#[test]
fn a_follower_whose_acks_take_ten_heartbeats_keeps_its_pipeline() {
    let ticks = 200;
    let (node, acked) = leader_with_slow_followers(10, ticks, false);
    let stats = node.stats();
    assert_eq!(
        stats.probe_transitions, 0,
        "late acknowledgements are not losses"
    );
    assert_eq!(
        stats.batches_resent, 0,
        "nothing is resent to a merely slow follower"
    );
    assert_eq!(acked, node.log().last_index(), "everything was replicated");
    assert_eq!(node.commit_index(), node.log().last_index());
}

#[test]
fn a_batch_lost_at_the_tail_is_resent_once_its_acknowledgement_is_overdue() {
    let (node, _) = leader_with_slow_followers(10, 50, false);
    assert_eq!(node.stats().probe_transitions, 0);
    let stall = node.config().replication_stall_ticks();
    let (node, acked) = leader_with_slow_followers(10, 50 + 2 * stall, true);
    let stats = node.stats();
    assert_eq!(stats.probe_transitions, 1, "one loss, one probe");
    assert!(stats.batches_resent >= 1, "the lost batch was resent");
    assert_eq!(acked, node.log().last_index(), "the follower caught up");
}

#[test]
fn a_node_does_not_campaign_while_its_granted_vote_is_not_durable() {
    let mut node = RaftNode::new(config(1), three_nodes());
    node.step(message(
        2,
        1,
        1,
        MessageBody::RequestVote(RequestVote {
            last_log_index: 0,
            last_log_term: 0,
            leadership_transfer: false,
        }),
    ));
    let ready = node.take_ready();
    assert!(responses(&ready).is_empty());
    let persist = ready.persist.expect("the vote is persisted");
    let timeout = node.config().election_timeout_ticks;
    for _ in 0..5 * timeout {
        node.tick();
    }
    assert_eq!(
        node.role(),
        Role::Follower,
        "no campaign while the vote is not out"
    );
    node.on_persisted(persist.seq);
    // The wait is added to the timeout: at most 2T more after 5T of waiting.
    for _ in 0..8 * timeout {
        node.tick();
        if node.role() != Role::Follower {
            break;
        }
    }
    assert_eq!(
        node.role(),
        Role::PreCandidate,
        "it campaigns once its timer runs"
    );
}
