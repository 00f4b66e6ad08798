//! Flow control of the driver: the raft thread never waits for the disk or the state
//! machine.
//!
//! Why: a node that blocks in `Wal::append` (a full group-commit buffer behind a slow
//! fsync) or on a full apply queue stops ticking, so it sends no heartbeats and answers
//! no votes, and a slow disk turns into needless elections. Instead, the driver asks
//! before it hands anything over ([`LogWriter::has_room`], [`NodeIo::apply`] giving the
//! work back) and defers what does not fit, in order, in bounded queues that live here
//! (sans-IO, so the simulator runs them):
//! - [`WalBacklog`]: WAL operations of persist actions, handed to the log as room frees
//!   up; an action's ticket is tracked only once its last operation is queued, so
//!   persist actions still become durable, and are reported, strictly in order;
//! - [`ApplyOutbox`]: work for the state machine, handed over in order;
//! - [`HeldAppends`]: AppendEntries with entries that arrived while the node could not
//!   queue more for its log; stepped later in arrival order (heartbeats and votes are
//!   stepped at once: Raft tolerates that reordering).
//!
//! What bounds them: while either backlog is non-empty (or the WAL has no room for
//! them) the driver takes no new client requests (they stay in the caller's request
//! queue) and holds new entry-bearing AppendEntries (up to [`MAX_HELD_APPENDS`], then
//! drops them: the leader resends). So the backlogs hold at most what one turn admitted
//! while there was room, plus small hard-state records and the committed entries of a
//! log that stops growing.
//!
//! [`NodeIo::apply`]: super::NodeIo::apply

use std::collections::VecDeque;

use tally_wal::{HardState, WalError};

use super::{ApplyWork, ClientError, LogWriter, NodeError, NodeIo, Request, Submission};
use crate::raft::{Message, MessageBody};

/// Most entry-bearing AppendEntries held while the log is full (a leader has at most
/// `max_inflight_messages` in flight to us, plus resends); beyond it they are dropped.
pub const MAX_HELD_APPENDS: usize = 256;

/// Encoded bytes assumed for a record that carries no entries (hard state, truncation,
/// reset: 17 and 9 bytes in format v1), rounded up.
const SMALL_RECORD_BYTES: usize = 32;

/// One WAL operation of a persist action.
pub(crate) enum WalOp {
    HardState(HardState),
    Reset { next_index: u64 },
    Truncate { from_index: u64 },
    Append(Vec<tally_wal::Entry>),
    Barrier,
}

impl WalOp {
    /// (encoded bytes, entries) the operation adds to the WAL's pending buffer.
    fn footprint(&self) -> (usize, usize) {
        match self {
            WalOp::HardState(_) | WalOp::Reset { .. } | WalOp::Truncate { .. } => {
                (SMALL_RECORD_BYTES, 0)
            }
            WalOp::Append(entries) => (entries_bytes(entries), entries.len()),
            WalOp::Barrier => (0, 0),
        }
    }

    fn submit<L: LogWriter>(self, log: &mut L) -> Result<L::Ticket, WalError> {
        match self {
            WalOp::HardState(hard_state) => log.set_hard_state(hard_state),
            WalOp::Reset { next_index } => log.reset(next_index),
            WalOp::Truncate { from_index } => log.truncate_suffix(from_index),
            WalOp::Append(entries) => log.append(&entries),
            WalOp::Barrier => log.barrier(),
        }
    }
}

fn entries_bytes(entries: &[tally_wal::Entry]) -> usize {
    entries
        .iter()
        .map(|entry| tally_wal::ENTRY_RECORD_HEADER_LEN + entry.payload.len())
        .sum()
}

/// WAL operations waiting for room, oldest first; `completes` marks the last operation
/// of persist action `seq`. Invariant: operations are in the order the driver produced
/// them, and every action's operations are contiguous and end with a `completes` mark.
#[derive(Default)]
pub(crate) struct WalBacklog {
    ops: VecDeque<(WalOp, Option<u64>)>,
    bytes: usize,
}

impl WalBacklog {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Encoded bytes waiting (for INFO and tests).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queues the operations of persist action `seq` (a barrier if there are none).
    pub fn push_action(&mut self, seq: u64, mut ops: Vec<WalOp>) {
        if ops.is_empty() {
            ops.push(WalOp::Barrier);
        }
        let last = ops.len() - 1;
        for (position, op) in ops.into_iter().enumerate() {
            self.bytes += op.footprint().0;
            self.ops.push_back((op, (position == last).then_some(seq)));
        }
    }

    /// Hands the log every operation it has room for, in order, without waiting, and
    /// appends to `completed` the (seq, ticket) of each action whose last operation was
    /// handed over.
    pub fn drain<L: LogWriter>(
        &mut self,
        log: &mut L,
        completed: &mut VecDeque<(u64, L::Ticket)>,
    ) -> Result<(), NodeError> {
        while let Some((op, _)) = self.ops.front() {
            let (bytes, entries) = op.footprint();
            if !log.has_room(bytes, entries) {
                return Ok(());
            }
            let Some((op, completes)) = self.ops.pop_front() else {
                break;
            };
            self.bytes -= bytes;
            let ticket = op.submit(log)?;
            if let Some(seq) = completes {
                debug_assert!(completed.back().is_none_or(|(last, _)| *last < seq));
                completed.push_back((seq, ticket));
            }
        }
        Ok(())
    }
}

/// Work the state machine side could not take yet, oldest first. Invariant: handed
/// over strictly in order (nothing goes to `NodeIo::apply` while this is non-empty
/// except its own front).
pub(crate) struct ApplyOutbox<R> {
    work: VecDeque<ApplyWork<R>>,
}

impl<R> Default for ApplyOutbox<R> {
    fn default() -> Self {
        ApplyOutbox {
            work: VecDeque::new(),
        }
    }
}

impl<R> ApplyOutbox<R> {
    pub fn is_empty(&self) -> bool {
        self.work.is_empty()
    }

    pub fn len(&self) -> usize {
        self.work.len()
    }

    /// Hands `work` over after everything already waiting. Returns whether it had to
    /// wait.
    pub fn hand_over(
        &mut self,
        work: ApplyWork<R>,
        io: &mut impl NodeIo<R>,
    ) -> Result<bool, NodeError> {
        if !self.work.is_empty() {
            self.work.push_back(work);
            return Ok(true);
        }
        match io.apply(work)? {
            None => Ok(false),
            Some(back) => {
                self.work.push_back(back);
                Ok(true)
            }
        }
    }

    /// The node stops: the clients waiting on work that never reached the state
    /// machine are answered (writes committed but not applied here may be applied by
    /// the other members: outcome unknown; reads just fail).
    pub fn fail_on_stop(&mut self) {
        for work in self.work.drain(..) {
            match work {
                ApplyWork::Entries { replies, .. } => {
                    for (_, reply) in replies {
                        reply.send(Err(ClientError::OutcomeUnknown));
                    }
                }
                ApplyWork::Reads(reads) => {
                    for read in reads {
                        read.reply.send(Err(ClientError::NodeStopped));
                    }
                }
                ApplyWork::Snapshot { .. } | ApplyWork::Restore { .. } => {}
            }
        }
    }

    /// Hands over what the state machine side takes now, in order.
    pub fn drain(&mut self, io: &mut impl NodeIo<R>) -> Result<(), NodeError> {
        while let Some(work) = self.work.pop_front() {
            if let Some(back) = io.apply(work)? {
                self.work.push_front(back);
                break;
            }
        }
        Ok(())
    }
}

/// Entry-bearing AppendEntries waiting for room in the log, in arrival order.
/// Invariant: `len() <= MAX_HELD_APPENDS`.
#[derive(Default)]
pub(crate) struct HeldAppends {
    messages: VecDeque<Message>,
}

impl HeldAppends {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Holds `message`; false (and the message dropped) when the bound is reached.
    pub fn hold(&mut self, message: Message) -> bool {
        if self.messages.len() >= MAX_HELD_APPENDS {
            return false;
        }
        self.messages.push_back(message);
        true
    }

    pub fn front(&self) -> Option<&Message> {
        self.messages.front()
    }

    pub fn pop_front(&mut self) -> Option<Message> {
        self.messages.pop_front()
    }
}

/// What this turn already admitted towards the log (entries of stepped AppendEntries
/// and proposals), so one turn never queues more than the log has room for.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TurnBudget {
    pub bytes: usize,
    pub entries: usize,
}

impl TurnBudget {
    pub fn add(&mut self, (bytes, entries): (usize, usize)) {
        self.bytes += bytes;
        self.entries += entries;
    }
}

/// (encoded bytes, entries) an inbound message would add to the log: non-zero only for
/// an AppendEntries that carries entries.
pub(crate) fn append_footprint(message: &Message) -> (usize, usize) {
    match &message.body {
        MessageBody::AppendEntries(append) => (
            append
                .entries
                .iter()
                .map(|entry| tally_wal::ENTRY_RECORD_HEADER_LEN + entry.data.len())
                .sum(),
            append.entries.len(),
        ),
        _ => (0, 0),
    }
}

/// (encoded bytes, entries) the proposals inside `request` would add to the log.
pub(crate) fn proposal_footprint<R>(request: &Request<R>) -> (usize, usize) {
    fn one<R>(submission: &Submission<R>) -> (usize, usize) {
        match submission {
            Submission::Propose { command, .. } => {
                (tally_wal::ENTRY_RECORD_HEADER_LEN + command.len(), 1)
            }
            Submission::Read { .. } => (0, 0),
        }
    }
    match request {
        Request::One(submission) => one(submission),
        Request::Batch(batch) => batch
            .iter()
            .map(one)
            .fold((0, 0), |(b, n), (bytes, entries)| (b + bytes, n + entries)),
        _ => (0, 0),
    }
}
