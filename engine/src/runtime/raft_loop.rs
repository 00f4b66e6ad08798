//! The raft thread: drains every queue, feeds the core, carries out its `Ready`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{select, Receiver, Sender};

use super::apply::{ApplyWork, ConfirmedRead};
use super::{
    initial_configuration, ClientError, NodeError, NodeOptions, NodeStatus, ReplyTo, Request,
    Submission, Transport,
};
use crate::raft::{
    Entry, EntryKind, HardState, Message, PersistAction, ProposeError, RaftNode, ReadPath, Ready,
    Role,
};

/// Most requests taken from the queue in one turn, so one turn stays short.
const MAX_REQUESTS_PER_TURN: usize = 16 * 1024;
/// Most inbound messages handled in one turn.
const MAX_MESSAGES_PER_TURN: usize = 4 * 1024;

pub(crate) struct Queues<R> {
    pub requests: Receiver<Request<R>>,
    pub inbound: Receiver<Message>,
    pub durable: Receiver<u64>,
    pub applied: Receiver<u64>,
    pub apply: Sender<ApplyWork<R>>,
}

/// Rebuilds the core from what the WAL holds.
pub(crate) fn restore_core(
    options: &NodeOptions,
    wal: &tally_wal::Wal,
) -> Result<RaftNode, NodeError> {
    let bad_log = |reason: String| NodeError::BadLog {
        dir: options.wal_dir.display().to_string(),
        reason,
    };
    let durable = wal.durable_hard_state();
    let hard_state = HardState {
        term: durable.term,
        voted_for: (durable.vote != 0).then_some(durable.vote),
    };
    let first_index = wal.first_index();
    if first_index != 1 {
        // Compaction happens only together with a snapshot, which this runtime does not
        // write yet: a log that starts later cannot be rebuilt into a state machine.
        return Err(bad_log(format!(
            "log starts at index {first_index} but no snapshot exists"
        )));
    }
    let last_index = wal.last_index();
    let stored = wal.read_range(first_index..last_index + 1)?;
    let mut entries = Vec::with_capacity(stored.len());
    for entry in stored {
        let kind = EntryKind::from_u8(entry.kind).ok_or_else(|| {
            bad_log(format!(
                "entry {} has unknown kind {}",
                entry.index, entry.kind
            ))
        })?;
        entries.push(Entry {
            index: entry.index,
            term: entry.term,
            kind,
            data: entry.payload,
        });
    }
    tracing::info!(
        node = options.id,
        term = hard_state.term,
        voted_for = ?hard_state.voted_for,
        last_index,
        "restored Raft state from the WAL"
    );
    RaftNode::restart(
        options.raft.clone(),
        initial_configuration(options),
        hard_state,
        None,
        entries,
    )
    .map_err(|error| bad_log(error.to_string()))
}

/// A proposal waiting for its entry to commit.
struct PendingWrite<R> {
    index: u64,
    term: u64,
    reply: ReplyTo<R>,
}

/// State the raft thread keeps beside the core.
struct Pipeline<R, T> {
    core: RaftNode,
    wal: tally_wal::Wal,
    transport: T,
    apply: Sender<ApplyWork<R>>,
    /// Proposals by index. Invariant: indexes strictly increasing.
    pending_writes: VecDeque<PendingWrite<R>>,
    /// Reads waiting for the core to confirm them, by request id.
    pending_reads: HashMap<u64, (Bytes, ReplyTo<R>)>,
    next_read_id: u64,
    /// Persist actions handed to the WAL, oldest first, with the ticket of their last
    /// operation. Invariant: sequence numbers strictly increasing.
    inflight_persists: VecDeque<(u64, tally_wal::Ticket)>,
    /// Reused buffer for converting entries.
    wal_entries: Vec<tally_wal::Entry>,
    role: Role,
    /// Commands the core accepted as leader, for `NodeStatus::proposals`.
    proposals_accepted: u64,
}

/// Runs until shutdown or a fatal error.
pub(crate) fn raft_loop<R: Send + 'static, T: Transport>(
    core: RaftNode,
    wal: tally_wal::Wal,
    transport: T,
    queues: Queues<R>,
    status: &NodeStatus,
    shutdown: &AtomicBool,
    tick_interval: Duration,
) -> Result<(), NodeError> {
    let Queues {
        requests,
        inbound,
        durable,
        applied,
        apply,
    } = queues;
    let role = core.role();
    let mut pipeline = Pipeline {
        core,
        wal,
        transport,
        apply,
        pending_writes: VecDeque::new(),
        pending_reads: HashMap::new(),
        next_read_id: 1,
        inflight_persists: VecDeque::new(),
        wal_entries: Vec::new(),
        role,
        proposals_accepted: 0,
    };
    let started = Instant::now();
    let mut ticks_done: u64 = 0;
    let tick_nanos = tick_interval.as_nanos().max(1);
    let result = loop {
        if shutdown.load(Ordering::Acquire) {
            break Ok(());
        }
        let next_tick_at =
            started + Duration::from_nanos((tick_nanos * (u128::from(ticks_done) + 1)) as u64);
        let timeout = next_tick_at.saturating_duration_since(Instant::now());
        // Block until anything arrives or the next tick is due; then drain everything.
        select! {
            recv(requests) -> request => if let Ok(request) = request { pipeline.handle_request(request) },
            recv(inbound) -> message => if let Ok(message) = message { pipeline.core.step(message) },
            recv(durable) -> _ => {},
            recv(applied) -> index => if let Ok(index) = index { pipeline.core.on_applied(index) },
            default(timeout) => {},
        }
        // Messages that queued while this thread was not running are handled before the
        // clock catches up, so a descheduled leader does not step down (check-quorum)
        // for want of acknowledgements that are already here.
        for message in inbound.try_iter().take(MAX_MESSAGES_PER_TURN) {
            pipeline.core.step(message);
        }
        // Catch the core's clock up with the monotonic clock before serving anything
        // time-dependent (leases): a late tick must never make a lease look younger.
        let due_ticks = (started.elapsed().as_nanos() / tick_nanos) as u64;
        while ticks_done < due_ticks {
            pipeline.core.tick();
            ticks_done += 1;
        }
        for index in applied.try_iter() {
            pipeline.core.on_applied(index);
        }
        pipeline.drain_requests(&requests);
        for _ in durable.try_iter() {}
        if let Err(error) = pipeline.check_durable() {
            break Err(error);
        }
        if let Err(error) = pipeline.process_ready(status) {
            break Err(error);
        }
    };
    pipeline.fail_all_pending(ClientError::NodeStopped);
    for request in requests.try_iter() {
        fail_request(request, ClientError::NodeStopped);
    }
    result
}

fn fail_submission<R>(submission: Submission<R>, error: ClientError) {
    match submission {
        Submission::Propose { reply, .. } | Submission::Read { reply, .. } => {
            reply.send(Err(error))
        }
    }
}

pub(crate) fn fail_request<R>(request: Request<R>, error: ClientError) {
    match request {
        Request::One(submission) => fail_submission(submission, error),
        Request::Batch(batch) => {
            for submission in batch {
                fail_submission(submission, error.clone());
            }
        }
        Request::TransferLeadership { .. } => {}
    }
}

impl<R: Send + 'static, T: Transport> Pipeline<R, T> {
    fn handle_request(&mut self, request: Request<R>) {
        let mut commands = Vec::new();
        let mut replies = Vec::new();
        self.sort_request(request, &mut commands, &mut replies);
        self.propose_batch(commands, replies);
    }

    /// Takes everything queued: all proposals become one `propose` call.
    fn drain_requests(&mut self, requests: &Receiver<Request<R>>) {
        let mut commands = Vec::new();
        let mut replies = Vec::new();
        for request in requests.try_iter().take(MAX_REQUESTS_PER_TURN) {
            self.sort_request(request, &mut commands, &mut replies);
        }
        self.propose_batch(commands, replies);
    }

    fn sort_request(
        &mut self,
        request: Request<R>,
        commands: &mut Vec<Bytes>,
        replies: &mut Vec<ReplyTo<R>>,
    ) {
        match request {
            Request::One(submission) => self.sort_submission(submission, commands, replies),
            Request::Batch(batch) => {
                for submission in batch {
                    self.sort_submission(submission, commands, replies);
                }
            }
            Request::TransferLeadership { target } => {
                if let Err(error) = self.core.transfer_leadership(target) {
                    tracing::info!(%error, target, "leadership transfer refused");
                }
            }
        }
    }

    fn sort_submission(
        &mut self,
        submission: Submission<R>,
        commands: &mut Vec<Bytes>,
        replies: &mut Vec<ReplyTo<R>>,
    ) {
        match submission {
            Submission::Propose { command, reply } => {
                commands.push(command);
                replies.push(reply);
            }
            Submission::Read { query, reply } => self.start_read(query, reply),
        }
    }

    /// Proposes every command drained this turn as one batch. Reads drained in the same
    /// turn were started before it: a read need not observe a write that has not been
    /// acknowledged yet (the two are concurrent); a client that wants its own pipelined
    /// writes visible to its later reads holds those reads back until the writes are
    /// answered (the RESP port does).
    fn propose_batch(&mut self, commands: Vec<Bytes>, replies: Vec<ReplyTo<R>>) {
        if commands.is_empty() {
            return;
        }
        let term = self.core.term();
        match self.core.propose(commands) {
            Ok(indexes) => {
                self.proposals_accepted += indexes.end - indexes.start;
                debug_assert_eq!((indexes.end - indexes.start) as usize, replies.len());
                for (index, reply) in indexes.zip(replies) {
                    debug_assert!(self
                        .pending_writes
                        .back()
                        .is_none_or(|last| last.index < index));
                    self.pending_writes
                        .push_back(PendingWrite { index, term, reply });
                }
            }
            Err(error) => {
                let client_error = match error {
                    ProposeError::NotLeader { leader_hint } => ClientError::NotLeader {
                        leader: leader_hint,
                    },
                    ProposeError::TransferInProgress => ClientError::NotLeader { leader: None },
                    ProposeError::Empty => return,
                };
                for reply in replies {
                    reply.send(Err(client_error.clone()));
                }
            }
        }
    }

    fn start_read(&mut self, query: Bytes, reply: ReplyTo<R>) {
        let request_id = self.next_read_id;
        self.next_read_id += 1;
        match self.core.read_index(request_id) {
            Ok(()) => {
                self.pending_reads.insert(request_id, (query, reply));
            }
            Err(crate::raft::ReadError::NotLeader { leader_hint }) => {
                reply.send(Err(ClientError::NotLeader {
                    leader: leader_hint,
                }));
            }
        }
    }

    /// Reports to the core every persist action the WAL made durable, in order.
    fn check_durable(&mut self) -> Result<(), NodeError> {
        let mut durable_seq = None;
        while let Some((seq, ticket)) = self.inflight_persists.front() {
            if !ticket.is_ready() {
                break;
            }
            let seq = *seq;
            let Some((_, ticket)) = self.inflight_persists.pop_front() else {
                break;
            };
            match ticket.wait() {
                // A later truncation removed some of these entries; the core already
                // capped its watermark for that, so the action still counts as done.
                Ok(_) | Err(tally_wal::WalError::Truncated { .. }) => durable_seq = Some(seq),
                Err(error) => return Err(NodeError::Wal(error)),
            }
        }
        if let Some(seq) = durable_seq {
            self.core.on_persisted(seq);
        }
        Ok(())
    }

    fn process_ready(&mut self, status: &NodeStatus) -> Result<(), NodeError> {
        while self.core.has_ready() {
            let ready = self.core.take_ready();
            self.carry_out(ready)?;
            // A persist that was already durable (e.g. nothing new) resolves at once.
            self.check_durable()?;
        }
        self.publish(status);
        Ok(())
    }

    fn carry_out(&mut self, ready: Ready) -> Result<(), NodeError> {
        let Ready {
            persist,
            messages,
            committed_entries,
            reads,
            failed_reads,
            role_change,
            ..
        } = ready;
        // The leader's messages go out first so replication overlaps its own fsync.
        if !messages.is_empty() {
            self.transport.send(messages);
        }
        if let Some(action) = persist {
            self.persist(action)?;
        }
        // Committed entries answer their clients even if leadership is lost in the
        // same turn; only what is still pending after them has an unknown outcome.
        let replies = self.answer_committed(&committed_entries);
        if let Some(change) = role_change {
            if change.role != self.role {
                tracing::info!(term = change.term, role = ?change.role, leader = ?change.leader, "role change");
            }
            let was_leader = self.role == Role::Leader;
            self.role = change.role;
            if was_leader && change.role != Role::Leader {
                self.fail_all_pending(ClientError::OutcomeUnknown);
            }
        }
        if !committed_entries.is_empty() {
            self.send_apply(ApplyWork::Entries {
                entries: committed_entries,
                replies,
            })?;
        }
        let mut confirmed = Vec::with_capacity(reads.len());
        for ready_read in reads {
            if let Some((query, reply)) = self.pending_reads.remove(&ready_read.request_id) {
                confirmed.push(ConfirmedRead {
                    read_index: ready_read.read_index,
                    query,
                    reply,
                    lease: ready_read.via == ReadPath::Lease,
                });
            }
        }
        if !confirmed.is_empty() {
            self.send_apply(ApplyWork::Reads(confirmed))?;
        }
        for (request_id, crate::raft::ReadError::NotLeader { leader_hint }) in failed_reads {
            if let Some((_, reply)) = self.pending_reads.remove(&request_id) {
                reply.send(Err(ClientError::NotLeader {
                    leader: leader_hint,
                }));
            }
        }
        Ok(())
    }

    /// Pairs committed entries with the proposals waiting for them.
    fn answer_committed(&mut self, committed: &[Entry]) -> Vec<(u64, ReplyTo<R>)> {
        let mut replies = Vec::new();
        let Some(last) = committed.last() else {
            return replies;
        };
        let first_index = committed[0].index;
        while self
            .pending_writes
            .front()
            .is_some_and(|pending| pending.index <= last.index)
        {
            let Some(pending) = self.pending_writes.pop_front() else {
                break;
            };
            let entry = pending
                .index
                .checked_sub(first_index)
                .and_then(|offset| committed.get(offset as usize));
            match entry {
                Some(entry) if entry.term == pending.term => {
                    replies.push((pending.index, pending.reply))
                }
                Some(_) => pending.reply.send(Err(ClientError::NotCommitted)),
                // Committed in an earlier Ready without us seeing it: cannot happen, as
                // committed entries arrive in order; answer honestly anyway.
                None => pending.reply.send(Err(ClientError::OutcomeUnknown)),
            }
        }
        replies
    }

    fn persist(&mut self, action: PersistAction) -> Result<(), NodeError> {
        let PersistAction {
            seq,
            hard_state,
            truncate_from,
            entries,
            ..
        } = action;
        let mut ticket = None;
        if let Some(hard_state) = hard_state {
            let stored = tally_wal::HardState {
                term: hard_state.term,
                vote: hard_state.voted_for.unwrap_or(0),
            };
            ticket = Some(self.wal.set_hard_state(stored)?);
        }
        if let Some(from_index) = truncate_from {
            ticket = Some(self.wal.truncate_suffix(from_index)?);
        }
        if !entries.is_empty() {
            self.wal_entries.clear();
            self.wal_entries
                .extend(entries.iter().map(|entry| tally_wal::Entry {
                    index: entry.index,
                    term: entry.term,
                    kind: entry.kind.as_u8(),
                    payload: entry.data.clone(),
                }));
            ticket = Some(self.wal.append(&self.wal_entries)?);
            self.wal_entries.clear();
        }
        let ticket = match ticket {
            Some(ticket) => ticket,
            // An action with nothing to write still needs an ordered completion.
            None => self.wal.barrier()?,
        };
        debug_assert!(self
            .inflight_persists
            .back()
            .is_none_or(|(last, _)| *last < seq));
        self.inflight_persists.push_back((seq, ticket));
        Ok(())
    }

    fn send_apply(&mut self, work: ApplyWork<R>) -> Result<(), NodeError> {
        // Blocking here is the backpressure from a slow state machine.
        self.apply.send(work).map_err(|_| {
            NodeError::StateMachine(crate::state_machine::StateMachineError::Fatal(
                "apply thread stopped".into(),
            ))
        })
    }

    fn fail_all_pending(&mut self, error: ClientError) {
        for pending in self.pending_writes.drain(..) {
            pending.reply.send(Err(error.clone()));
        }
        let leader = self.core.leader_id();
        for (_, (_, reply)) in self.pending_reads.drain() {
            let read_error = match error {
                ClientError::OutcomeUnknown => ClientError::NotLeader { leader },
                ref other => other.clone(),
            };
            reply.send(Err(read_error));
        }
    }

    fn publish(&self, status: &NodeStatus) {
        status.set_role(self.core.role());
        status
            .proposals
            .store(self.proposals_accepted, Ordering::Relaxed);
        status.term.store(self.core.term(), Ordering::Relaxed);
        status
            .leader_id
            .store(self.core.leader_id().unwrap_or(0), Ordering::Relaxed);
        status
            .commit_index
            .store(self.core.commit_index(), Ordering::Relaxed);
        status
            .last_log_index
            .store(self.core.log().last_index(), Ordering::Relaxed);
    }
}
