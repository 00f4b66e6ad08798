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
}

impl NodeIo<u64> for Collected {
    fn send(&mut self, messages: Vec<Message>) {
        self.messages.extend(messages);
    }
    fn housekeeping(&mut self, _: Housekeeping) -> Result<(), NodeError> {
        Ok(())
    }
    fn apply(&mut self, work: ApplyWork<u64>) -> Result<Option<ApplyWork<u64>>, NodeError> {
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
}

impl Trio {
    fn new() -> Trio {
        let drivers = (1..=3u64)
            .map(|id| {
                let cfg = RaftConfig::new(id, 7 + id);
                let core = RaftNode::new(cfg, Configuration::new([1, 2, 3]));
                let store = SnapshotStore::new(tally_wal::SimStorage::new()).expect("store");
                NodeDriver::new(
                    core,
                    InstantLog::default(),
                    store,
                    SnapshotPolicy::manual_only(),
                )
            })
            .collect();
        Trio {
            drivers,
            inputs: (0..3).map(|_| TurnInput::new()).collect(),
            tick: 0,
            apply_full: [false; 3],
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
                ..Collected::default()
            };
            self.inputs[k].now_tick = self.tick;
            self.drivers[k]
                .turn(&mut self.inputs[k], &mut io)
                .expect("turn");
            if let Some(index) = io.applied_through {
                self.inputs[k].note_applied(index);
            }
            outbox.extend(io.messages);
        }
        for message in outbox {
            let to = message.to as usize - 1;
            if Some(to) != cut {
                self.inputs[to].messages.push(message);
            }
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
