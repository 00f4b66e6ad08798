//! Applying: committed entries become state, clients get their answers, confirmed reads
//! are served once the state reaches their read index.
//!
//! [`Applier`] is the one copy of that logic: the threaded runtime runs it on its apply
//! thread, the simulator calls it inline.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;

use super::lease::{ReadView, ViewCell};
use super::ReplyTo;
use crate::raft::{Entry, EntryKind, SnapshotMeta};
use crate::state_machine::{CommittedEntry, SnapshotSource, StateMachine, StateMachineError};

/// Work for the state machine, in log order.
pub enum ApplyWork<R> {
    /// Committed entries (contiguous, increasing) and the clients waiting for some of
    /// them, by index (increasing).
    Entries {
        /// The committed entries, in index order.
        entries: Vec<Entry>,
        /// `(log index, reply)` of each client waiting for an entry of this batch, by index.
        replies: Vec<(u64, ReplyTo<R>)>,
    },
    /// Reads confirmed by the core in one turn (one hand-off for all of them): answer
    /// each once everything through its read index is applied.
    Reads(Vec<ConfirmedRead<R>>),
    /// Capture a frozen view for a snapshot; everything through `meta.index` (exactly)
    /// has been handed over before this item.
    Snapshot {
        /// What the snapshot will cover; `meta.index` is the last index handed over.
        meta: SnapshotMeta,
    },
    /// Replace the whole state with a snapshot installed from the leader.
    Restore {
        /// What the snapshot covers.
        meta: SnapshotMeta,
        /// The snapshot file's data bytes (after its header); the read fails instead of
        /// delivering the last byte when the file's checksum does not match.
        reader: Box<dyn Read + Send>,
    },
}

/// A read confirmed by the core (lease or ReadIndex round); it waits until everything
/// through `read_index` is applied.
pub struct ConfirmedRead<R> {
    /// Serve the read once everything through this index is applied.
    pub read_index: u64,
    /// The encoded read, as given to [`crate::state_machine::StateMachine::query`].
    pub query: Bytes,
    /// Where the answer goes.
    pub reply: ReplyTo<R>,
    /// Confirmed by the leader lease (no message round), else by a ReadIndex round; for
    /// statistics.
    pub lease: bool,
}

/// What one [`Applier::handle`] did.
#[derive(Default)]
pub struct Applied {
    /// The new applied index, when entries were applied (or a snapshot restored).
    pub applied_through: Option<u64>,
    /// Reads this call served that a lease confirmed.
    pub reads_lease: u64,
    /// Reads this call served that a ReadIndex round confirmed.
    pub reads_read_index: u64,
    /// A frozen view to serialize into a snapshot file (off this thread).
    pub snapshot: Option<(SnapshotMeta, Box<dyn SnapshotSource>)>,
}

/// Owns the state machine and the reads waiting for it.
pub struct Applier<SM: StateMachine> {
    state_machine: SM,
    /// Every entry handed over so far (no-ops and configuration entries included) is
    /// reflected; `state_machine.applied_index()` only counts commands.
    /// Invariant: never decreases; equals the last index of the last batch applied.
    applied_through: u64,
    waiting_reads: VecDeque<ConfirmedRead<SM::Response>>,
    /// Where read views for client threads are published, and the `applied_through`
    /// of the last one published there. Invariant: a view is published only after
    /// everything through its index is applied, in increasing index order.
    views: Option<(Arc<ViewCell>, Option<u64>)>,
}

impl<SM: StateMachine> Applier<SM> {
    /// An applier over a fresh state machine (nothing applied).
    pub fn new(state_machine: SM) -> Applier<SM> {
        Applier::restored(state_machine, 0)
    }

    /// An applier whose state machine already reflects every entry through
    /// `applied_through` (restored from a snapshot, or persisted by itself).
    pub fn restored(state_machine: SM, applied_through: u64) -> Applier<SM> {
        Applier {
            state_machine,
            applied_through,
            waiting_reads: VecDeque::new(),
            views: None,
        }
    }

    /// Publishes read views in `cell` (when a reader wants a newer one) from now on.
    pub fn publish_views_to(&mut self, cell: Arc<ViewCell>) {
        self.views = Some((cell, None));
        self.publish_view_if_wanted();
    }

    /// A new view when a reader found the published one behind and the state moved
    /// since: a write-only load never freezes views nobody reads.
    fn publish_view_if_wanted(&mut self) {
        let Some((cell, published_through)) = self.views.as_mut() else {
            return;
        };
        if !cell.is_wanted() || *published_through == Some(self.applied_through) {
            return;
        }
        let Some(view) = self.state_machine.read_view() else {
            return;
        };
        cell.clear_wanted();
        cell.publish(ReadView {
            applied_through: self.applied_through,
            view,
        });
        *published_through = Some(self.applied_through);
    }

    /// The state machine (for inspection: answers and snapshots go through `handle`).
    pub fn state_machine(&self) -> &SM {
        &self.state_machine
    }

    /// Index of the last entry handed over (no-ops and configuration entries included).
    pub fn applied_through(&self) -> u64 {
        self.applied_through
    }

    /// Applies or queues one item. An `Err` is fatal (fail-stop).
    pub fn handle(&mut self, work: ApplyWork<SM::Response>) -> Result<Applied, StateMachineError> {
        let mut outcome = Applied::default();
        match work {
            ApplyWork::Entries { entries, replies } => {
                let Some(last) = entries.last() else {
                    return Ok(outcome);
                };
                debug_assert!(
                    entries[0].index > self.applied_through,
                    "entry applied twice"
                );
                let last_index = last.index;
                // A state machine that persists itself may be ahead of the log at start:
                // it is given only the entries after what it already reflects.
                let already = self.state_machine.applied_index();
                let mut commands = Vec::with_capacity(entries.len());
                commands.extend(
                    entries
                        .iter()
                        .filter(|entry| entry.kind == EntryKind::Normal && entry.index > already)
                        .map(|entry| CommittedEntry {
                            index: entry.index,
                            payload: &entry.data,
                        }),
                );
                let responses = self.state_machine.apply(&commands)?;
                answer(&commands, responses, replies);
                self.applied_through = last_index;
                outcome.applied_through = Some(last_index);
                self.publish_view_if_wanted();
                self.serve_waiting_reads();
            }
            ApplyWork::Reads(reads) => {
                self.publish_view_if_wanted();
                for read in reads {
                    if read.lease {
                        outcome.reads_lease += 1;
                    } else {
                        outcome.reads_read_index += 1;
                    }
                    if read.read_index <= self.applied_through {
                        self.reply_read(read);
                    } else {
                        self.waiting_reads.push_back(read);
                    }
                }
            }
            ApplyWork::Snapshot { meta } => {
                if meta.index != self.applied_through {
                    return Err(StateMachineError::Fatal(format!(
                        "snapshot asked at index {} but the applier is at {}",
                        meta.index, self.applied_through
                    )));
                }
                outcome.snapshot = Some((meta, self.state_machine.snapshot()));
            }
            ApplyWork::Restore { meta, mut reader } => {
                self.state_machine.restore(&mut reader)?;
                self.applied_through = meta.index;
                outcome.applied_through = Some(meta.index);
                self.publish_view_if_wanted();
                self.serve_waiting_reads();
            }
        }
        Ok(outcome)
    }

    fn serve_waiting_reads(&mut self) {
        // Read indexes arrive in non-decreasing order from one leader term, but keep the
        // scan general: serve every read that is ready, keep the rest in order.
        let mut index = 0;
        while index < self.waiting_reads.len() {
            if self.waiting_reads[index].read_index <= self.applied_through {
                if let Some(read) = self.waiting_reads.remove(index) {
                    self.reply_read(read);
                }
            } else {
                index += 1;
            }
        }
    }

    fn reply_read(&self, read: ConfirmedRead<SM::Response>) {
        let response = self.state_machine.query(&read.query);
        read.reply.send(Ok(response));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{encode_request, Command, KvLimits, KvResponse, KvStateMachine};

    fn set_entry(index: u64) -> Entry {
        let mut out = Vec::new();
        let key = format!("k{index}");
        encode_request(
            None,
            &Command::Set {
                key: key.as_bytes(),
                value: b"v",
            },
            &KvLimits::default(),
            &mut out,
        )
        .expect("encodes");
        Entry {
            index,
            term: 1,
            kind: EntryKind::Normal,
            data: Bytes::from(out),
        }
    }

    #[test]
    fn a_state_machine_that_is_ahead_at_start_is_given_only_later_entries() {
        // A state machine that persisted itself through index 10...
        let mut ahead = Applier::new(KvStateMachine::new(KvLimits::default()));
        let first: Vec<Entry> = (1..=10).map(set_entry).collect();
        ahead
            .handle(ApplyWork::Entries {
                entries: first,
                replies: Vec::new(),
            })
            .expect("applies");
        let state_machine = ahead.state_machine;
        assert_eq!(state_machine.applied_index(), 10);
        // ...restarts under a log that hands it everything from index 1 again.
        let mut applier = Applier::new(state_machine);
        let all: Vec<Entry> = (1..=15).map(set_entry).collect();
        let outcome = applier
            .handle(ApplyWork::Entries {
                entries: all,
                replies: Vec::new(),
            })
            .expect("entries it already reflects are skipped, not refused");
        assert_eq!(outcome.applied_through, Some(15));
        assert_eq!(applier.state_machine().applied_index(), 15);
        let query = {
            let mut out = Vec::new();
            encode_request(
                None,
                &Command::Get { key: b"k15" },
                &KvLimits::default(),
                &mut out,
            )
            .expect("encodes");
            out
        };
        assert_eq!(
            applier.state_machine().query(&query),
            KvResponse::Bulk(Some(Bytes::from_static(b"v")))
        );
    }
}
