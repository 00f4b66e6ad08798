//! Snapshots in the core: the leader's local snapshot and log compaction, sending a
//! snapshot to a follower in chunks, and a follower receiving and installing one.
//!
//! Why it works like this:
//! - The core never does I/O: the runtime reports a durable snapshot with its bytes
//!   (`snapshot_ready`, usually a memory map), the leader slices chunks out of them,
//!   and a follower hands every accepted chunk to its runtime in a persist action.
//! - Bounded and resumable: at most `snapshot_inflight_chunks` chunks are
//!   unacknowledged per follower; a refused chunk names the offset the follower
//!   expects and the next heartbeat round resends from there; a window nobody answers
//!   for `snapshot_retry_ticks` is resent from the last acknowledged offset. A new
//!   leader sends its own snapshot from offset 0 (the follower restarts its receive).
//!   Heartbeats to the follower continue meanwhile; other followers are unaffected.
//! - Nothing half-installed becomes visible: the follower checks the CRC-32 over all
//!   received bytes before it emits the last chunk (whose persist action installs the
//!   file atomically); a mismatch discards the receive and is counted. The log is
//!   replaced in memory when the last chunk is accepted, so every later log change
//!   lands in the same or a later persist action, after the WAL reset; the state
//!   machine restore is asked for once that action is durable.

use bytes::Bytes;

use super::{
    LocalSnapshot, Message, MessageBody, NodeId, RaftNode, ReplicationState, Role, SnapshotChunk,
    SnapshotMeta,
};
use crate::raft::message::{InstallSnapshot, InstallSnapshotResponse};
use crate::raft::progress::SnapshotTransfer;
use crate::raft::snapshot::{CompactError, SnapshotError};

/// A snapshot being received from the current leader (follower side).
pub(super) struct SnapshotReceive {
    /// Term of the leader sending it (one leader per term identifies the sender).
    leader_term: u64,
    meta: SnapshotMeta,
    total_bytes: u64,
    checksum: u32,
    /// Bytes accepted (and handed out in persist actions) so far.
    /// Invariant: `next_offset <= total_bytes`.
    next_offset: u64,
    /// CRC-32 of the accepted bytes (reset with every new receive).
    hasher: crc32fast::Hasher,
}

impl SnapshotReceive {
    fn new(leader_term: u64, request: &InstallSnapshot) -> SnapshotReceive {
        SnapshotReceive {
            leader_term,
            meta: request.meta.clone(),
            total_bytes: request.total_bytes,
            checksum: request.checksum,
            next_offset: 0,
            hasher: crc32fast::Hasher::new(),
        }
    }

    /// Whether `request` belongs to this transfer.
    fn is_transfer_of(&self, leader_term: u64, request: &InstallSnapshot) -> bool {
        self.leader_term == leader_term
            && self.meta == request.meta
            && self.total_bytes == request.total_bytes
            && self.checksum == request.checksum
    }
}

impl RaftNode {
    // ----- local snapshots and compaction ----------------------------------------

    /// The runtime made a snapshot of the state machine at applied index `meta.index`
    /// durable; `data` is the complete snapshot file. The node keeps the newest one to
    /// send to followers that need compacted entries.
    pub fn snapshot_ready(&mut self, meta: SnapshotMeta, data: Bytes) -> Result<(), SnapshotError> {
        let checksum = crc32fast::hash(&data);
        self.snapshot_ready_with_checksum(meta, data, checksum)
    }

    /// [`snapshot_ready`](Self::snapshot_ready) with the CRC-32 of `data` already known
    /// (the snapshot writer computes it as it writes): the core then never reads the
    /// whole file on the thread that drives it. A wrong checksum would make every
    /// follower refuse the transfer; the invariant checks (debug builds, the simulator)
    /// verify it.
    pub fn snapshot_ready_with_checksum(
        &mut self,
        meta: SnapshotMeta,
        data: Bytes,
        checksum: u32,
    ) -> Result<(), SnapshotError> {
        self.check_snapshot_meta(&meta)?;
        invariant!(
            crc32fast::hash(&data) == checksum,
            "the checksum handed with snapshot {} does not match its bytes",
            meta.index
        );
        self.snapshot = Some(LocalSnapshot {
            meta,
            data,
            checksum,
        });
        // Followers that waited for a snapshot to exist can get it now.
        let waiting: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|(_, p)| p.state == ReplicationState::Snapshot && p.snapshot.is_none())
            .map(|(id, _)| *id)
            .collect();
        for peer in waiting {
            self.start_snapshot_transfer(peer);
            self.send_snapshot_chunks(peer);
        }
        self.check_invariants();
        Ok(())
    }

    fn check_snapshot_meta(&self, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
        if self.fatal.is_some() {
            return Err(SnapshotError::Stopped);
        }
        let applied = self.log.applied();
        if meta.index > applied {
            return Err(SnapshotError::AboveApplied {
                index: meta.index,
                applied,
            });
        }
        if let Some(kept) = &self.snapshot {
            if meta.index <= kept.meta.index {
                return Err(SnapshotError::NotNewer {
                    index: meta.index,
                    kept_index: kept.meta.index,
                });
            }
        }
        let log_term = self.log.term(meta.index);
        if log_term != Some(meta.term) {
            return Err(SnapshotError::TermMismatch {
                index: meta.index,
                term: meta.term,
                log_term,
            });
        }
        if self.configuration_at(meta.index) != Some(&meta.configuration) {
            return Err(SnapshotError::ConfigurationMismatch { index: meta.index });
        }
        Ok(())
    }

    /// Drops the in-memory entries through `through_index` (a durable snapshot covers
    /// them). Allowed up to the applied index and the newest snapshot's index; at or
    /// below the log start it does nothing.
    pub fn compact_log(&mut self, through_index: u64) -> Result<(), CompactError> {
        if through_index <= self.log.start().last_index {
            return Ok(());
        }
        let applied = self.log.applied();
        if through_index > applied {
            return Err(CompactError::AboveApplied {
                through_index,
                applied,
            });
        }
        let snapshot_index = self.snapshot.as_ref().map(|s| s.meta.index);
        if snapshot_index.is_none_or(|index| through_index > index) {
            return Err(CompactError::AboveSnapshot {
                through_index,
                snapshot_index,
            });
        }
        if self.log.compact_to(through_index) {
            self.prune_configuration_history(through_index);
        }
        self.check_invariants();
        Ok(())
    }

    /// Forgets configurations superseded at or below `through` (the one in effect
    /// there stays as the base).
    fn prune_configuration_history(&mut self, through: u64) {
        let base = self
            .configuration_history
            .iter()
            .rposition(|(index, _)| *index <= through)
            .unwrap_or(0);
        self.configuration_history.drain(..base);
    }

    // ----- leader: sending -------------------------------------------------------

    /// A snapshot a follower can continue from: it must reach the log start.
    fn usable_snapshot(&self) -> Option<LocalSnapshot> {
        self.snapshot
            .as_ref()
            .filter(|snapshot| snapshot.meta.index >= self.log.start().last_index)
            .cloned()
    }

    /// Puts `peer` in snapshot state, sending the newest usable snapshot (none yet:
    /// it waits for `snapshot_ready`, heartbeats continue).
    pub(super) fn start_snapshot_transfer(&mut self, peer: NodeId) {
        let now_tick = self.now_tick;
        let transfer = self
            .usable_snapshot()
            .map(|snapshot| SnapshotTransfer::new(snapshot, now_tick));
        if let Some(progress) = self.progress.get_mut(&peer) {
            progress.become_snapshot(transfer);
        }
    }

    /// Sends `peer` chunks while its window has room. Returns whether any went out.
    pub(super) fn send_snapshot_chunks(&mut self, peer: NodeId) -> bool {
        let chunk_bytes = self.cfg.snapshot_chunk_bytes.max(1);
        let window_bytes =
            chunk_bytes.saturating_mul(self.cfg.snapshot_inflight_chunks.max(1) as u64);
        let mut sent_any = false;
        while let Some(transfer) = self
            .progress
            .get_mut(&peer)
            .and_then(|progress| progress.snapshot.as_mut())
        {
            if transfer.last_sent || transfer.next_offset - transfer.acked_offset >= window_bytes {
                break;
            }
            let request = next_chunk(transfer, chunk_bytes);
            self.stats.snapshot_chunks_sent += 1;
            self.send(peer, MessageBody::InstallSnapshot(request));
            sent_any = true;
        }
        sent_any
    }

    /// On a heartbeat round: starts a transfer that waited for a snapshot, resends
    /// from the offset a follower asked for, or resends an unanswered window.
    pub(super) fn retry_snapshot_transfer(&mut self, peer: NodeId) {
        let now_tick = self.now_tick;
        let retry_ticks = self.cfg.snapshot_retry_ticks.max(1);
        let Some(progress) = self.progress.get(&peer) else {
            return;
        };
        if progress.state != ReplicationState::Snapshot {
            return;
        }
        if progress.snapshot.is_none() {
            self.start_snapshot_transfer(peer);
        } else if let Some(transfer) = self
            .progress
            .get_mut(&peer)
            .and_then(|progress| progress.snapshot.as_mut())
        {
            if let Some(offset) = transfer.resend_from.take() {
                transfer.rewind(offset, now_tick);
            } else if now_tick.saturating_sub(transfer.last_activity_tick) >= retry_ticks {
                let acked = transfer.acked_offset;
                transfer.rewind(acked, now_tick);
            }
        }
        self.send_snapshot_chunks(peer);
    }

    pub(super) fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        response: InstallSnapshotResponse,
    ) {
        if self.role != Role::Leader {
            return;
        }
        let now_tick = self.now_tick;
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        if response.installed {
            self.snapshot_installed_on(from, response.snapshot_index);
            return;
        }
        let Some(transfer) = progress.snapshot.as_mut() else {
            return;
        };
        if transfer.snapshot.meta.index != response.snapshot_index {
            return; // an answer about an earlier transfer
        }
        if response.rejected {
            // A follower's expected offset only grows within a receive, or drops to 0
            // when it starts over (checksum failure, restart): a refusal naming an
            // offset below what it already confirmed is an old answer.
            let stale = response.next_offset != 0 && response.next_offset < transfer.acked_offset;
            if !stale {
                transfer.resend_from = Some(response.next_offset);
            }
            transfer.last_activity_tick = now_tick;
            return;
        }
        transfer.acknowledge(response.next_offset, now_tick);
        self.send_snapshot_chunks(from);
    }

    /// `peer` durably holds everything through `snapshot_index`: replicate after it.
    fn snapshot_installed_on(&mut self, peer: NodeId, snapshot_index: u64) {
        let Some(progress) = self.progress.get_mut(&peer) else {
            return;
        };
        let advanced = snapshot_index > progress.match_index;
        if advanced {
            progress.match_index = snapshot_index;
        }
        if progress.state == ReplicationState::Snapshot {
            progress.become_replicate();
        } else {
            progress.next_index = progress.next_index.max(progress.match_index + 1);
        }
        if advanced {
            self.maybe_commit();
        }
        self.send_append(peer, false);
        self.maybe_send_timeout_now();
    }

    // ----- follower: receiving ---------------------------------------------------

    pub(super) fn handle_install_snapshot(&mut self, from: NodeId, request: InstallSnapshot) {
        self.note_leader_contact(from);
        let index = request.meta.index;
        if index <= self.log.committed() {
            // Our log (or an installed snapshot) already covers it: once durable, the
            // leader may continue with AppendEntries.
            let durable_tag = self.log_tag(index);
            self.send_snapshot_response(from, index, request.total_bytes, true, false, durable_tag);
            return;
        }
        let term = self.term;
        let expected_offset = match &self.receive {
            Some(receive) if receive.is_transfer_of(term, &request) => receive.next_offset,
            _ => {
                if request.offset == 0 {
                    self.receive = Some(SnapshotReceive::new(term, &request));
                }
                0
            }
        };
        if request.offset != expected_offset {
            self.send_snapshot_response(from, index, expected_offset, false, true, 0);
            return;
        }
        self.accept_snapshot_chunk(from, request);
    }

    /// Takes a chunk at the expected offset into the next persist action; the last one
    /// only if the whole snapshot's checksum matches, and then installs it in memory.
    fn accept_snapshot_chunk(&mut self, from: NodeId, request: InstallSnapshot) {
        let Some(receive) = self.receive.as_mut() else {
            return;
        };
        receive.hasher.update(&request.data);
        receive.next_offset += request.data.len() as u64;
        let next_offset = receive.next_offset;
        let index = request.meta.index;
        if request.done {
            let computed = receive.hasher.clone().finalize();
            self.receive = None;
            if computed != request.checksum {
                self.stats.snapshot_checksum_failures += 1;
                tracing::warn!(
                    index,
                    expected = request.checksum,
                    computed,
                    "received snapshot fails its checksum: discarded"
                );
                self.send_snapshot_response(from, index, 0, false, true, 0);
                return;
            }
        }
        if self.pending_chunk.is_some() {
            // One chunk per persist action: number the previous one first.
            self.seal_persist();
        }
        self.pending_chunk = Some(SnapshotChunk {
            meta: request.meta.clone(),
            offset: request.offset,
            data: request.data,
            total_bytes: request.total_bytes,
            checksum: request.checksum,
            last: request.done,
        });
        if request.done {
            self.install_snapshot_in_memory(request.meta);
        }
        let chunk_seq = self.next_persist_seq;
        self.send_snapshot_response(from, index, next_offset, request.done, false, chunk_seq);
    }

    /// Replaces the log by the snapshot (Figure 13, rules 6-7) now, so later messages
    /// build on it; the unsealed persist action (carrying the last chunk) installs it
    /// durably, resetting the WAL first when the log was discarded.
    fn install_snapshot_in_memory(&mut self, meta: SnapshotMeta) {
        let old_committed = self.log.committed();
        let point = meta.log_start();
        let kept = self.log.install_snapshot(point);
        if !kept {
            // Earlier actions wrote entries the snapshot replaced: they vouch for the
            // committed prefix only.
            for inflight in self.inflight_persists.iter_mut() {
                inflight.last_index = inflight.last_index.min(old_committed);
            }
        }
        if !kept || self.unissued_from <= meta.index {
            // The durable log cannot continue from the snapshot point: reset it there
            // and write the kept entries (if any) again after it.
            self.pending_reset = Some(point);
            self.pending_truncate = None;
            self.unissued_from = meta.index + 1;
        }
        self.install_configuration(&meta, kept);
        self.pending_install = Some((self.next_persist_seq, meta));
    }

    /// The snapshot's configuration becomes the base; kept entries after the snapshot
    /// point keep theirs.
    fn install_configuration(&mut self, meta: &SnapshotMeta, kept: bool) {
        let later: Vec<(u64, super::Configuration)> = if kept {
            self.configuration_history
                .drain(..)
                .filter(|(index, _)| *index > meta.index)
                .collect()
        } else {
            Vec::new()
        };
        self.configuration_history = vec![(meta.index, meta.configuration.clone())];
        self.configuration_history.extend(later);
        let current = self
            .configuration_history
            .last()
            .map(|(_, configuration)| configuration.clone())
            .unwrap_or_default();
        self.set_configuration(current);
    }

    /// Answers a chunk, held until persist action `after_seq` (and the hard state) is
    /// durable.
    pub(super) fn send_snapshot_response(
        &mut self,
        to: NodeId,
        snapshot_index: u64,
        next_offset: u64,
        installed: bool,
        rejected: bool,
        after_seq: u64,
    ) {
        let body = MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
            snapshot_index,
            next_offset,
            installed,
            rejected,
        });
        let message = Message {
            from: self.cfg.id,
            to,
            term: self.term,
            body,
        };
        let needed = self.hard_state_tag().max(after_seq);
        self.emit(needed, message);
    }
}

/// The next chunk of `transfer` (advancing it).
fn next_chunk(transfer: &mut SnapshotTransfer, chunk_bytes: u64) -> InstallSnapshot {
    let offset = transfer.next_offset;
    let total_bytes = transfer.total_bytes();
    let end = offset.saturating_add(chunk_bytes).min(total_bytes);
    let done = end == total_bytes;
    transfer.next_offset = end;
    transfer.last_sent = done;
    InstallSnapshot {
        meta: transfer.snapshot.meta.clone(),
        total_bytes,
        checksum: transfer.snapshot.checksum,
        offset,
        data: transfer.snapshot.data.slice(offset as usize..end as usize),
        done,
    }
}
