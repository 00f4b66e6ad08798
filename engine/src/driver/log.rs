//! The WAL seam of the driver: the operations a persist action becomes.
//!
//! Two implementations: `tally_wal::Wal` (group commit on a writer thread; the threaded
//! runtime) and the simulator's `WalCore` over a fault-injecting in-memory disk. Both
//! run the production encoding and recovery; only who performs the write and fsync
//! (a thread, or a simulated event) differs.

use tally_wal::{HardState, WalError};

/// What the driver needs from a node's log. Every operation is queued in order and
/// returns a ticket; a ticket is durable once everything queued up to it is.
pub trait LogWriter {
    /// Names one queued operation; resolved once it is durable or failed.
    type Ticket;
    /// Queues the term and vote to store (replacing the stored ones).
    fn set_hard_state(&mut self, hard_state: HardState) -> Result<Self::Ticket, WalError>;
    /// Queues the removal of every stored entry with index `>= from_index`.
    fn truncate_suffix(&mut self, from_index: u64) -> Result<Self::Ticket, WalError>;
    /// Queues `entries` (contiguous, right after the last stored or the truncation point)
    /// for appending; at most [`LogWriter::max_append_bytes`] encoded bytes.
    fn append(&mut self, entries: &[tally_wal::Entry]) -> Result<Self::Ticket, WalError>;
    /// The log now starts at `next_index`, every entry gone (a snapshot replaced it).
    fn reset(&mut self, next_index: u64) -> Result<Self::Ticket, WalError>;
    /// An ordered completion that writes nothing.
    fn barrier(&mut self) -> Result<Self::Ticket, WalError>;

    /// The most encoded bytes one `append` may carry.
    fn max_append_bytes(&self) -> usize;
    /// Whether an operation of `bytes` encoded bytes and `entries` entries would be
    /// queued now without waiting for buffer space. The driver asks before every
    /// operation and defers it otherwise, so the raft thread never blocks on the WAL's
    /// back-pressure. Room must only grow until the caller queues more.
    fn has_room(&self, _bytes: usize, _entries: usize) -> bool {
        true
    }
    /// Whether the ticket resolved (durable, or failed).
    fn is_durable(&self, ticket: &Self::Ticket) -> bool;
    /// The outcome of a resolved ticket. A ticket whose entries a later truncation
    /// removed still counts as done (the core capped its watermark for that).
    fn finish(&mut self, ticket: Self::Ticket) -> Result<(), WalError>;
}

impl LogWriter for tally_wal::Wal {
    type Ticket = tally_wal::Ticket;

    fn set_hard_state(&mut self, hard_state: HardState) -> Result<Self::Ticket, WalError> {
        tally_wal::Wal::set_hard_state(self, hard_state)
    }

    fn truncate_suffix(&mut self, from_index: u64) -> Result<Self::Ticket, WalError> {
        tally_wal::Wal::truncate_suffix(self, from_index)
    }

    fn append(&mut self, entries: &[tally_wal::Entry]) -> Result<Self::Ticket, WalError> {
        tally_wal::Wal::append(self, entries)
    }

    fn reset(&mut self, next_index: u64) -> Result<Self::Ticket, WalError> {
        tally_wal::Wal::reset(self, next_index)
    }

    fn barrier(&mut self) -> Result<Self::Ticket, WalError> {
        tally_wal::Wal::barrier(self)
    }

    fn max_append_bytes(&self) -> usize {
        tally_wal::Wal::max_append_bytes(self)
    }

    fn has_room(&self, bytes: usize, entries: usize) -> bool {
        tally_wal::Wal::has_room(self, bytes, entries)
    }

    fn is_durable(&self, ticket: &Self::Ticket) -> bool {
        ticket.is_ready()
    }

    fn finish(&mut self, ticket: Self::Ticket) -> Result<(), WalError> {
        match ticket.wait() {
            Ok(_) | Err(WalError::Truncated { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }
}
