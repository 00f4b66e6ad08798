//! Validation of inbound messages before the core acts on them.
//!
//! Why: messages come from the network, and the core's own checks are assertions
//! (`invariant!`) that must never fire on outside data. Anything a correct peer could
//! not have sent — a message for another node, a term so large that `term + 1` would
//! wrap, entries that are not contiguous after `prev_log_index`, an acknowledgement of
//! entries this leader never had, a snapshot chunk whose offsets do not add up — is
//! dropped here and counted in `CoreStats::invalid_messages`.

use super::{Message, MessageBody, RaftNode};
use crate::raft::message::{AppendEntries, InstallSnapshot};

/// Terms above this are refused, so that the core's own `term + 1` never overflows.
pub(super) const MAX_TERM: u64 = u64::MAX / 2;

impl RaftNode {
    pub(super) fn is_valid_inbound(&self, message: &Message) -> bool {
        if message.to != self.cfg.id || message.from == self.cfg.id || message.from == 0 {
            return false;
        }
        if message.term > MAX_TERM {
            return false;
        }
        let current_term = message.term == self.term;
        match &message.body {
            MessageBody::AppendEntries(append) => is_valid_append(message.term, append),
            MessageBody::InstallSnapshot(request) => is_valid_chunk(message.term, request),
            // Indexes in answers refer to what this node sent in this term.
            MessageBody::AppendEntriesResponse(response) => {
                !current_term || !response.success || response.match_index <= self.log.last_index()
            }
            MessageBody::InstallSnapshotResponse(response) => {
                !current_term || response.snapshot_index <= self.log.last_index()
            }
            _ => true,
        }
    }
}

/// Entries contiguous after `prev_log_index`, terms non-decreasing from
/// `prev_log_term` and never above the sender's term.
fn is_valid_append(term: u64, append: &AppendEntries) -> bool {
    if append.prev_log_term > term {
        return false;
    }
    let mut expected_index = append.prev_log_index;
    let mut previous_term = append.prev_log_term;
    for entry in &append.entries {
        let Some(next) = expected_index.checked_add(1) else {
            return false;
        };
        if entry.index != next || entry.term < previous_term || entry.term > term {
            return false;
        }
        expected_index = next;
        previous_term = entry.term;
    }
    true
}

/// A chunk inside its snapshot (`done` exactly for the one that ends it, no empty
/// chunk before it) of a real snapshot (index and term at least 1, term not above the
/// sender's, at least one voter).
fn is_valid_chunk(term: u64, request: &InstallSnapshot) -> bool {
    let Some(end) = request.offset.checked_add(request.data.len() as u64) else {
        return false;
    };
    end <= request.total_bytes
        && request.done == (end == request.total_bytes)
        && (request.done || !request.data.is_empty())
        && request.meta.index >= 1
        && request.meta.term >= 1
        && request.meta.term <= term
        && !request.meta.configuration.voters.is_empty()
}
