//! The apply thread: committed entries become state, and clients get their answers.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use super::{NodeError, NodeStatus, ReplyTo};
use crate::raft::{Entry, EntryKind};
use crate::state_machine::{CommittedEntry, StateMachine};

/// Work for the apply thread, in log order.
pub(crate) enum ApplyWork<R> {
    /// Committed entries (contiguous, increasing) and the clients waiting for some of
    /// them, by index (increasing).
    Entries {
        entries: Vec<Entry>,
        replies: Vec<(u64, ReplyTo<R>)>,
    },
    /// Reads confirmed by the core in one turn of the raft thread (one queue operation
    /// for all of them): answer each once everything through its read index is applied.
    Reads(Vec<ConfirmedRead<R>>),
}

/// A read confirmed by the core (lease or ReadIndex round); it waits in the apply thread
/// until everything through `read_index` is applied.
pub(crate) struct ConfirmedRead<R> {
    pub(crate) read_index: u64,
    pub(crate) query: Bytes,
    pub(crate) reply: ReplyTo<R>,
    pub(crate) lease: bool,
}

/// Runs until the raft thread hangs up. Returns the state machine's fatal error.
pub(crate) fn apply_loop<SM: StateMachine>(
    mut state_machine: SM,
    work: Receiver<ApplyWork<SM::Response>>,
    applied_tx: Sender<u64>,
    status: &NodeStatus,
) -> Result<(), NodeError> {
    // Every entry handed over so far (no-ops and configuration entries included) is
    // reflected; `state_machine.applied_index()` only counts commands.
    // Invariant: never decreases; equals the last index of the last batch applied.
    let mut applied_through: u64 = 0;
    let mut waiting_reads: VecDeque<ConfirmedRead<SM::Response>> = VecDeque::new();
    for item in work.iter() {
        match item {
            ApplyWork::Entries { entries, replies } => {
                let Some(last) = entries.last() else { continue };
                debug_assert!(entries[0].index > applied_through, "entry applied twice");
                let last_index = last.index;
                let mut commands = Vec::with_capacity(entries.len());
                commands.extend(
                    entries
                        .iter()
                        .filter(|entry| entry.kind == EntryKind::Normal)
                        .map(|entry| CommittedEntry {
                            index: entry.index,
                            payload: &entry.data,
                        }),
                );
                let responses = state_machine.apply(&commands)?;
                answer(&commands, responses, replies);
                applied_through = last_index;
                status
                    .applied_index
                    .store(applied_through, Ordering::Relaxed);
                let _ = applied_tx.send(applied_through);
                serve_waiting_reads(&state_machine, &mut waiting_reads, applied_through);
            }
            ApplyWork::Reads(reads) => {
                for read in reads {
                    let counter = if read.lease {
                        &status.reads_lease
                    } else {
                        &status.reads_read_index
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if read.read_index <= applied_through {
                        reply_read(&state_machine, read);
                    } else {
                        waiting_reads.push_back(read);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Sends each waiting client the response of its entry. `replies` and `commands` are
/// both in increasing index order, `replies` a subset.
fn answer<R>(commands: &[CommittedEntry<'_>], responses: Vec<R>, replies: Vec<(u64, ReplyTo<R>)>) {
    debug_assert_eq!(commands.len(), responses.len(), "one response per command");
    let mut replies = replies.into_iter().peekable();
    for (command, response) in commands.iter().zip(responses) {
        if replies
            .peek()
            .is_some_and(|(index, _)| *index == command.index)
        {
            if let Some((_, reply)) = replies.next() {
                reply.send(Ok(response));
            }
        }
    }
    // A reply whose entry was not a command cannot exist: proposals are commands.
    debug_assert!(replies.peek().is_none(), "a reply without its command");
}

fn serve_waiting_reads<SM: StateMachine>(
    state_machine: &SM,
    waiting: &mut VecDeque<ConfirmedRead<SM::Response>>,
    applied_through: u64,
) {
    // Read indexes arrive in non-decreasing order from one leader term, but keep the
    // scan general: serve every read that is ready, keep the rest in order.
    let mut index = 0;
    while index < waiting.len() {
        if waiting[index].read_index <= applied_through {
            if let Some(read) = waiting.remove(index) {
                reply_read(state_machine, read);
            }
        } else {
            index += 1;
        }
    }
}

fn reply_read<SM: StateMachine>(state_machine: &SM, read: ConfirmedRead<SM::Response>) {
    let response = state_machine.query(&read.query);
    read.reply.send(Ok(response));
}
