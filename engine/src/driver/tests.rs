//! Driver scenarios on three in-memory nodes: the order of a turn is a safety property.

use crossbeam_channel::{unbounded, Receiver};

use super::*;
use crate::raft::{Configuration, RaftConfig};

/// A log whose every operation is durable at once (the driver's ordering is under
/// test, not the disk).
#[derive(Default)]
struct InstantLog {
    next_ticket: u64,
    /// No room: every operation must wait (a full group-commit buffer).
    full: bool,
}

impl LogWriter for InstantLog {
    type Ticket = u64;
    fn set_hard_state(&mut self, _: tally_wal::HardState) -> Result<u64, tally_wal::WalError> {
        self.barrier()
    }
    fn truncate_suffix(&mut self, _: u64) -> Result<u64, tally_wal::WalError> {
        self.barrier()
    }
    fn append(&mut self, _: &[tally_wal::Entry]) -> Result<u64, tally_wal::WalError> {
        self.barrier()
    }
    fn reset(&mut self, _: u64) -> Result<u64, tally_wal::WalError> {
        self.barrier()
    }
    fn barrier(&mut self) -> Result<u64, tally_wal::WalError> {
        self.next_ticket += 1;
        Ok(self.next_ticket)
    }
    fn max_append_bytes(&self) -> usize {
        usize::MAX
    }
    fn has_room(&self, _: usize, _: usize) -> bool {
        !self.full
    }
    fn is_durable(&self, _: &u64) -> bool {
        true
    }
    fn finish(&mut self, _: u64) -> Result<(), tally_wal::WalError> {
        Ok(())
    }
}

/// Collects what a turn sends and hands to the state machine.
#[derive(Default)]
struct Collected {
    messages: Vec<Message>,
    lease_reads: usize,
    other_reads: usize,
    applied_through: Option<u64>,
    /// The state machine side is full: every work item is given back.
    refuse_apply: bool,
    /// The node's published lease, checked whenever the driver carries something out.
    lease: Option<Arc<LeaseCell>>,
    lease_violations: Vec<String>,
}

impl NodeIo<u64> for Collected {
    fn send(&mut self, messages: Vec<Message>) {
        let grant = self.lease.as_ref().and_then(|cell| cell.load());
        if grant.is_some()
            && messages
                .iter()
                .any(|message| matches!(message.body, crate::raft::MessageBody::TimeoutNow))
        {
            self.lease_violations
                .push(format!("TimeoutNow sent under a published lease {grant:?}"));
        }
        self.messages.extend(messages);
    }
    fn housekeeping(&mut self, _: Housekeeping) -> Result<(), NodeError> {
        Ok(())
    }
    fn apply(&mut self, work: ApplyWork<u64>) -> Result<Option<ApplyWork<u64>>, NodeError> {
        if let (ApplyWork::Entries { entries, .. }, Some(cell)) = (&work, &self.lease) {
            let last = entries.last().map_or(0, |entry| entry.index);
            if let Some(grant) = cell.load().filter(|grant| grant.required_index < last) {
                self.lease_violations.push(format!(
                    "entries through {last} handed to apply under {grant:?}"
                ));
            }
        }
        if self.refuse_apply {
            return Ok(Some(work));
        }
        match work {
            ApplyWork::Entries { entries, replies } => {
                self.applied_through = entries.last().map(|entry| entry.index);
                for (index, reply) in replies {
                    reply.send(Ok(index));
                }
            }
            ApplyWork::Reads(reads) => {
                for read in reads {
                    if read.lease {
                        self.lease_reads += 1;
                    } else {
                        self.other_reads += 1;
                    }
                    read.reply.send(Ok(0));
                }
            }
            ApplyWork::Snapshot { .. } | ApplyWork::Restore { .. } => {}
        }
        Ok(None)
    }
}

struct Trio {
    drivers: Vec<NodeDriver<u64, InstantLog, tally_wal::SimStorage>>,
    inputs: Vec<TurnInput<u64>>,
    tick: u64,
    /// Nodes whose state machine side takes nothing.
    apply_full: [bool; 3],
    /// Each node's published lease.
    leases: Vec<Arc<LeaseCell>>,
    lease_violations: Vec<String>,
}

impl Trio {
    fn new() -> Trio {
        let leases: Vec<Arc<LeaseCell>> = (0..3).map(|_| Arc::new(LeaseCell::new())).collect();
        let drivers = (1..=3u64)
            .map(|id| {
                let cfg = RaftConfig::new(id, 7 + id);
                let core = RaftNode::new(cfg, Configuration::new([1, 2, 3]));
                let store = SnapshotStore::new(tally_wal::SimStorage::new()).expect("store");
                let mut driver = NodeDriver::new(
                    core,
                    InstantLog::default(),
                    store,
                    SnapshotPolicy::manual_only(),
                );
                driver.publish_lease_to(Arc::clone(&leases[id as usize - 1]));
                driver
            })
            .collect();
        Trio {
            drivers,
            inputs: (0..3).map(|_| TurnInput::new()).collect(),
            tick: 0,
            apply_full: [false; 3],
            leases,
            lease_violations: Vec::new(),
        }
    }

    /// One tick of every node; messages are delivered by the next round (`cut`:
    /// messages to and from it are lost).
    fn round(&mut self, cut: Option<usize>) {
        self.tick += 1;
        let mut outbox = Vec::new();
        for k in 0..3 {
            if Some(k) == cut {
                self.inputs[k].messages.clear();
                continue;
            }
            let mut io = Collected {
                refuse_apply: self.apply_full[k],
                lease: Some(Arc::clone(&self.leases[k])),
                ..Collected::default()
            };
            self.inputs[k].now_tick = self.tick;
            self.drivers[k]
                .turn(&mut self.inputs[k], &mut io)
                .expect("turn");
            self.lease_violations.append(&mut io.lease_violations);
            self.check_published_lease(k);
            if let Some(index) = io.applied_through {
                self.inputs[k].note_applied(index);
            }
            outbox.extend(io.messages);
        }
        for message in outbox {
            let to = message.to as usize - 1;
            // Messages to members outside the trio (added learners) are lost.
            if Some(to) != cut && to < self.inputs.len() {
                self.inputs[to].messages.push(message);
            }
        }
    }

    /// After a turn the published lease is exactly the core's.
    fn check_published_lease(&mut self, k: usize) {
        let core = self.drivers[k].core();
        let expected = core.lease_remaining_ticks().map(|remaining| LeaseGrant {
            term: core.term(),
            expires_tick: core.now_tick() + remaining,
            required_index: core.commit_index(),
        });
        let published = self.leases[k].load();
        if published != expected {
            self.lease_violations.push(format!(
                "node {} published {published:?}, its core has {expected:?}",
                k + 1
            ));
        }
    }

    fn leader_with_lease(&self) -> Option<usize> {
        (0..3).find(|&k| self.drivers[k].core().lease_valid())
    }
}

fn read_request(tag: u64) -> (Request<u64>, Receiver<Reply<u64>>) {
    let (sender, receiver) = unbounded();
    let request = Request::One(Submission::Read {
        query: Bytes::from_static(b"q"),
        reply: ReplyTo::new(tag, sender),
    });
    (request, receiver)
}

#[test]
fn a_leader_stalled_past_its_lease_never_serves_a_lease_read_on_resuming() {
    let mut trio = Trio::new();
    for _ in 0..200 {
        trio.round(None);
        if trio.leader_with_lease().is_some() {
            break;
        }
    }
    let leader = trio.leader_with_lease().expect("a leader with a lease");
    // Sanity: before the stall, a read is served under the lease.
    let (request, _reply) = read_request(1);
    trio.inputs[leader].requests.push(request);
    trio.inputs[leader].now_tick = trio.tick;
    let mut io = Collected::default();
    trio.drivers[leader]
        .turn(&mut trio.inputs[leader], &mut io)
        .expect("turn");
    assert_eq!(io.lease_reads, 1, "a fresh lease serves reads");

    // The leader's thread stalls just past its lease while the others go on without it
    // (a longer stall would also trip check-quorum, which fails pending reads anyway);
    // a read that queued during the stall is handled when it resumes.
    let stall_ticks = trio.drivers[leader].core().config().lease_ticks() + 1;
    for _ in 0..stall_ticks {
        trio.round(Some(leader));
    }
    let (request, reply) = read_request(2);
    let mut resumed = TurnInput::new();
    resumed.now_tick = trio.tick;
    resumed.requests.push(request);
    let mut io = Collected::default();
    trio.drivers[leader]
        .turn(&mut resumed, &mut io)
        .expect("turn");
    assert_eq!(
        io.lease_reads, 0,
        "a lease is judged at the resumed clock, not the tick the stall began at"
    );
    assert_eq!(io.other_reads, 0, "no quorum confirmed the read either");
    assert!(
        !trio.drivers[leader].core().lease_valid(),
        "the lease expired during the stall"
    );
    assert_eq!(
        trio.drivers[leader].core().role(),
        Role::Leader,
        "still leader: only the lease protects this read"
    );
    // Whatever the read got, it was not a value served from a stale lease.
    if let Ok(answer) = reply.try_recv() {
        assert!(
            answer.result.is_err(),
            "read answered without a lease or quorum"
        );
    }
}

#[test]
fn a_turn_takes_every_queued_proposal_as_one_batch() {
    let mut trio = Trio::new();
    for _ in 0..200 {
        trio.round(None);
        if trio.leader_with_lease().is_some() {
            break;
        }
    }
    let leader = trio.leader_with_lease().expect("a leader");
    let (sender, receiver) = unbounded();
    for tag in 0..10 {
        trio.inputs[leader]
            .requests
            .push(Request::One(Submission::Propose {
                command: Bytes::from_static(b"c"),
                reply: ReplyTo::new(tag, sender.clone()),
            }));
    }
    let before = trio.drivers[leader].core().log().last_index();
    trio.round(None);
    assert_eq!(
        trio.drivers[leader].core().log().last_index(),
        before + 10,
        "all ten proposals appended in one turn"
    );
    for _ in 0..20 {
        trio.round(None);
    }
    let mut answered: Vec<u64> = receiver.try_iter().map(|reply| reply.tag).collect();
    answered.sort_unstable();
    assert_eq!(answered, (0..10).collect::<Vec<_>>());
}

// ----- membership requests ---------------------------------------------------------

type MembershipAnswer = Receiver<Result<MembershipOutcome, MembershipError>>;

fn membership_request(change: MembershipChange) -> (Request<u64>, MembershipAnswer) {
    let (sender, receiver) = unbounded();
    let request = Request::ChangeMembership {
        change,
        done: Box::new(move |result| {
            let _ = sender.send(result);
        }),
    };
    (request, receiver)
}

fn elected_trio() -> (Trio, usize) {
    let mut trio = Trio::new();
    for _ in 0..200 {
        trio.round(None);
        if let Some(leader) = trio.leader_with_lease() {
            return (trio, leader);
        }
    }
    panic!("no leader");
}

/// Submits `change` to node `k` and runs rounds until it is answered.
fn answer_of(
    trio: &mut Trio,
    k: usize,
    change: MembershipChange,
) -> Result<MembershipOutcome, MembershipError> {
    let (request, answer) = membership_request(change);
    trio.inputs[k].requests.push(request);
    for _ in 0..200 {
        trio.round(None);
        if let Ok(result) = answer.try_recv() {
            return result;
        }
    }
    panic!("never answered");
}

#[test]
fn a_removal_is_answered_only_once_its_final_configuration_committed() {
    let (mut trio, leader) = elected_trio();
    let victim = (leader + 1) % 3;
    let (request, answer) = membership_request(MembershipChange::Remove {
        id: victim as u64 + 1,
    });
    trio.inputs[leader].requests.push(request);
    trio.round(None);
    assert!(
        answer.try_recv().is_err(),
        "not answered while only the joint entry is appended"
    );
    assert!(trio.drivers[leader].core().configuration().is_joint());
    let outcome = (0..200)
        .find_map(|_| {
            trio.round(None);
            answer.try_recv().ok()
        })
        .expect("answered")
        .expect("the removal succeeds");
    let core = trio.drivers[leader].core();
    assert!(!outcome.configuration.is_joint());
    assert!(!outcome.configuration.is_member(victim as u64 + 1));
    assert!(
        core.commit_index() >= outcome.index,
        "answered after C_new committed"
    );
}

#[test]
fn a_change_is_refused_on_a_follower_and_while_another_is_in_progress() {
    let (mut trio, leader) = elected_trio();
    let follower = (leader + 1) % 3;
    assert_eq!(
        answer_of(&mut trio, follower, MembershipChange::Remove { id: 1 }),
        Err(MembershipError::NotLeader {
            leader: Some(leader as u64 + 1)
        })
    );
    let add = |id| MembershipChange::AddLearner {
        id,
        info: crate::raft::MemberInfo::default(),
    };
    let (first, first_answer) = membership_request(add(4));
    let (second, second_answer) = membership_request(add(5));
    trio.inputs[leader].requests.push(first);
    trio.inputs[leader].requests.push(second);
    trio.round(None);
    assert_eq!(
        second_answer.try_recv().expect("refused at once"),
        Err(MembershipError::ChangeInProgress)
    );
    let outcome = (0..200)
        .find_map(|_| {
            trio.round(None);
            first_answer.try_recv().ok()
        })
        .expect("answered")
        .expect("the learner is added");
    assert!(outcome.configuration.learners.contains(&4));
    assert_eq!(
        answer_of(&mut trio, leader, add(4)),
        Err(MembershipError::AlreadyMember(4))
    );
    assert_eq!(
        answer_of(&mut trio, leader, MembershipChange::Promote { id: 9 }),
        Err(MembershipError::UnknownMember(9))
    );
    assert_eq!(
        answer_of(&mut trio, leader, MembershipChange::Promote { id: 2 }),
        Err(MembershipError::NotALearner(2))
    );
}

#[test]
fn a_lagging_learner_is_not_promoted() {
    let (mut trio, leader) = elected_trio();
    trio.drivers[leader].set_membership_policy(MembershipPolicy {
        max_promote_lag_entries: 0,
        ..MembershipPolicy::default()
    });
    let added = answer_of(
        &mut trio,
        leader,
        MembershipChange::AddLearner {
            id: 4,
            info: crate::raft::MemberInfo::default(),
        },
    );
    assert!(added.is_ok());
    // Node 4 does not exist: it never answers.
    let refused = answer_of(&mut trio, leader, MembershipChange::Promote { id: 4 });
    assert_eq!(refused, Err(MembershipError::LearnerNotResponding(4)));
    assert!(!trio.drivers[leader].core().configuration().is_voter(4));
    // A learner that answers but is behind: make voter 3 a learner again, then cut it
    // off while the others move on.
    let victim = if leader == 2 { 1 } else { 2 };
    let demoted = answer_of(
        &mut trio,
        leader,
        MembershipChange::ReplaceVoters {
            voters: (1..=3).filter(|id| *id != victim as u64 + 1).collect(),
        },
    );
    assert!(demoted.is_ok(), "{demoted:?}");
    let added_back = answer_of(
        &mut trio,
        leader,
        MembershipChange::AddLearner {
            id: victim as u64 + 1,
            info: crate::raft::MemberInfo::default(),
        },
    );
    assert!(added_back.is_ok(), "{added_back:?}");
    let (sender, _replies) = unbounded();
    trio.inputs[leader]
        .requests
        .push(Request::One(Submission::Propose {
            command: Bytes::from_static(b"c"),
            reply: ReplyTo::new(1, sender),
        }));
    let (request, answer) = membership_request(MembershipChange::Promote {
        id: victim as u64 + 1,
    });
    trio.inputs[leader].requests.push(request);
    trio.round(Some(victim));
    let refused = answer.try_recv().expect("refused at once");
    assert!(
        matches!(
            refused,
            Err(MembershipError::LearnerLagging { lag_entries, max_lag_entries: 0, .. }) if lag_entries > 0
        ),
        "{refused:?}"
    );
}

#[test]
fn a_removed_leader_is_answered_done_and_steps_down() {
    let (mut trio, leader) = elected_trio();
    let outcome = answer_of(
        &mut trio,
        leader,
        MembershipChange::Remove {
            id: leader as u64 + 1,
        },
    )
    .expect("the leader's own removal succeeds");
    assert!(!outcome.configuration.is_member(leader as u64 + 1));
    assert_ne!(trio.drivers[leader].core().role(), Role::Leader);
}

#[test]
fn the_published_lease_is_the_cores_and_ends_before_a_transfer_or_a_stall_could_let_another_lead() {
    let (mut trio, leader) = elected_trio();
    for tag in 0..5 {
        let _reply = propose(&mut trio, leader, tag);
        trio.round(None);
    }
    let grant = trio.leases[leader]
        .load()
        .expect("the leader publishes its lease");
    assert_eq!(
        grant.required_index,
        trio.drivers[leader].core().commit_index()
    );
    assert!(
        trio.leases
            .iter()
            .filter(|cell| cell.load().is_some())
            .count()
            == 1
    );
    // A stalled leader publishes nothing new: its grant expires by the clock alone,
    // never later than the core would judge (`now < expires_tick`).
    let grant = trio.leases[leader].load().expect("lease");
    let stall_ticks = trio.drivers[leader].core().config().lease_ticks() + 1;
    for _ in 0..stall_ticks {
        trio.round(Some(leader));
    }
    assert_eq!(
        judge_local_read(Some(grant), Some(u64::MAX), trio.tick),
        LocalRead::LeaseExpired
    );
    for _ in 0..20 {
        trio.round(None);
    }
    let leader = elected(&mut trio);
    let target = (leader + 1) % 3;
    let result = transfer(&mut trio, leader, target);
    assert_eq!(result, Ok(target as u64 + 1));
    assert!(
        trio.leases[leader].load().is_none(),
        "the old leader's lease ended"
    );
    assert!(
        trio.lease_violations.is_empty(),
        "{:?}",
        trio.lease_violations
    );
    trio.drivers[target].fail_on_stop();
    assert!(
        trio.leases[target].load().is_none(),
        "a stopped node publishes no lease"
    );
}

/// Asks `leader` (an index into the trio) to hand leadership to `target` and runs
/// rounds until the request is answered.
fn transfer(trio: &mut Trio, leader: usize, target: usize) -> Result<u64, MembershipError> {
    let (sender, answer) = unbounded();
    trio.inputs[leader].requests.push(Request::Transfer {
        target: target as u64 + 1,
        done: Box::new(move |result| {
            let _ = sender.send(result);
        }),
    });
    (0..200)
        .find_map(|_| {
            trio.round(None);
            answer.try_recv().ok()
        })
        .expect("answered")
}

#[test]
fn a_transfer_is_answered_once_the_target_leads() {
    let (mut trio, leader) = elected_trio();
    let target = (leader + 1) % 3;
    let result = transfer(&mut trio, leader, target);
    assert_eq!(result, Ok(target as u64 + 1));
    assert_eq!(trio.drivers[target].core().role(), Role::Leader);
}

#[test]
fn observed_member_information_fills_gaps_but_never_replaces_a_recorded_incarnation() {
    let (mut trio, leader) = elected_trio();
    let observe = |incarnation| Request::MemberObserved {
        id: 2,
        info: crate::raft::MemberInfo {
            peer_addr: String::new(),
            client_addr: "10.0.0.2:6379".into(),
            incarnation,
        },
    };
    trio.inputs[leader].requests.push(observe(5));
    let recorded = |trio: &Trio| trio.drivers[leader].core().configuration().info_of(2);
    for _ in 0..50 {
        trio.round(None);
    }
    assert_eq!(recorded(&trio).incarnation, 5);
    assert_eq!(recorded(&trio).client_addr, "10.0.0.2:6379");
    // An emptied directory reusing id 2 presents another incarnation: not recorded.
    trio.inputs[leader].requests.push(observe(6));
    for _ in 0..50 {
        trio.round(None);
    }
    assert_eq!(recorded(&trio).incarnation, 5);
}

fn elected(trio: &mut Trio) -> usize {
    for _ in 0..200 {
        trio.round(None);
        if trio.leader_with_lease().is_some() {
            break;
        }
    }
    trio.leader_with_lease().expect("a leader")
}

fn terms_and_roles(trio: &Trio) -> Vec<(u64, Role)> {
    trio.drivers
        .iter()
        .map(|driver| (driver.core().term(), driver.core().role()))
        .collect()
}

fn propose(trio: &mut Trio, k: usize, tag: u64) -> Receiver<Reply<u64>> {
    let (sender, receiver) = unbounded();
    trio.inputs[k]
        .requests
        .push(Request::One(Submission::Propose {
            command: Bytes::from_static(b"c"),
            reply: ReplyTo::new(tag, sender),
        }));
    receiver
}

#[test]
fn a_leader_with_a_full_wal_leaves_proposals_queued_and_keeps_its_followers() {
    let mut trio = Trio::new();
    let leader = elected(&mut trio);
    let before = terms_and_roles(&trio);
    for driver in &mut trio.drivers {
        driver.log_mut().full = true;
    }
    let reply = propose(&mut trio, leader, 1);
    let last_index = trio.drivers[leader].core().log().last_index();
    let election_ticks = trio.drivers[leader].core().config().election_timeout_ticks;
    for _ in 0..10 * election_ticks {
        trio.round(None);
    }
    assert_eq!(terms_and_roles(&trio), before, "heartbeats kept flowing");
    assert_eq!(
        trio.inputs[leader].requests.len(),
        1,
        "the proposal stays with the caller"
    );
    assert_eq!(trio.drivers[leader].core().log().last_index(), last_index);
    assert!(trio.drivers[leader].stats().turns_requests_deferred > 0);
    assert!(
        reply.try_recv().is_err(),
        "not answered while the WAL is full"
    );

    for driver in &mut trio.drivers {
        driver.log_mut().full = false;
    }
    for _ in 0..20 {
        trio.round(None);
    }
    let answer = reply.try_recv().expect("answered once the WAL has room");
    assert_eq!(answer.result, Ok(last_index + 1));
    assert_eq!(terms_and_roles(&trio), before);
}

#[test]
fn a_follower_with_a_full_wal_holds_new_entries_and_acknowledges_them_once_it_has_room() {
    let mut trio = Trio::new();
    let leader = elected(&mut trio);
    let before = terms_and_roles(&trio);
    let followers: Vec<usize> = (0..3).filter(|&k| k != leader).collect();
    for &k in &followers {
        trio.drivers[k].log_mut().full = true;
    }
    let reply = propose(&mut trio, leader, 7);
    let election_ticks = trio.drivers[leader].core().config().election_timeout_ticks;
    for _ in 0..10 * election_ticks {
        trio.round(None);
    }
    assert_eq!(terms_and_roles(&trio), before, "heartbeats were answered");
    for &k in &followers {
        assert!(
            trio.drivers[k].stats().appends_held > 0,
            "node {k} held the entries"
        );
        assert!(trio.drivers[k].is_backed_up() || trio.drivers[k].backlog().2 > 0);
    }
    assert!(
        reply.try_recv().is_err(),
        "no quorum holds the entry durably yet"
    );

    for &k in &followers {
        trio.drivers[k].log_mut().full = false;
    }
    for _ in 0..20 {
        trio.round(None);
    }
    assert!(reply.try_recv().expect("committed").result.is_ok());
    for &k in &followers {
        assert_eq!(
            trio.drivers[k].backlog(),
            (0, 0, 0),
            "node {k} drained everything"
        );
    }
    assert_eq!(terms_and_roles(&trio), before);
}

#[test]
fn a_leader_whose_apply_side_is_full_keeps_leading_and_answers_waiting_clients_when_it_stops() {
    let mut trio = Trio::new();
    let leader = elected(&mut trio);
    let before = terms_and_roles(&trio);
    trio.apply_full = [true; 3];
    let first = propose(&mut trio, leader, 1);
    let election_ticks = trio.drivers[leader].core().config().election_timeout_ticks;
    for _ in 0..5 * election_ticks {
        trio.round(None);
    }
    assert!(
        trio.drivers[leader].backlog().1 > 0,
        "the committed entry waits in the outbox"
    );
    assert!(trio.drivers[leader].stats().apply_deferred > 0);
    let second = propose(&mut trio, leader, 2);
    for _ in 0..5 * election_ticks {
        trio.round(None);
    }
    assert_eq!(terms_and_roles(&trio), before, "heartbeats kept flowing");
    assert_eq!(
        trio.inputs[leader].requests.len(),
        1,
        "no new work taken while backed up"
    );
    assert!(first.try_recv().is_err() && second.try_recv().is_err());

    trio.drivers[leader].fail_on_stop();
    let answer = first.try_recv().expect("answered on stop");
    assert_eq!(answer.result, Err(ClientError::OutcomeUnknown));
}
