//! Replies from the node as RESP, and the INFO text.

use super::*;
use crate::resp::{write_kv_response_as, Protocol};

/// The reply (without `-`) to a request refused because the node's request queue is
/// full. It was never proposed: retrying cannot apply it twice.
pub const BUSY_ERROR: &str =
    "BUSY the node's request queue is full; the command was not proposed, retry";

impl Shared {
    pub(super) fn write_result(
        &self,
        out: &mut Vec<u8>,
        result: Result<KvResponse, ClientError>,
        protocol: Protocol,
    ) {
        match result {
            Ok(response) => write_kv_response_as(out, &response, protocol),
            Err(ClientError::NotLeader { leader }) => {
                let addr = leader.and_then(|id| self.client_addr_of(id));
                write_error(
                    out,
                    &format!("NOTLEADER {}", addr.as_deref().unwrap_or("?")),
                );
            }
            Err(ClientError::OutcomeUnknown) => write_error(out, OUTCOME_UNKNOWN_ERROR),
            Err(ClientError::NotCommitted) => write_error(
                out,
                "TRYAGAIN the write was not committed (a new leader replaced it); retry",
            ),
            Err(ClientError::Overloaded) => write_error(out, BUSY_ERROR),
            Err(ClientError::NodeStopped) => write_error(out, "ERR the node stopped"),
            Err(other) => write_error(out, &format!("ERR {other}")),
        }
    }

    /// The client address of a member, if known.
    pub(super) fn client_addr_of(&self, node: u64) -> Option<String> {
        if node == self.config.node_id {
            Some(self.config.advertised_client_addr.clone()).filter(|addr| !addr.is_empty())
        } else {
            self.peer_client_addrs.get(node)
        }
    }

    /// INFO text for the lowercase `sections` asked for (none: all): Redis's standard
    /// `# Server`, `# Clients`, `# Persistence`, `# Cluster` fields that clients and
    /// harnesses read, then Tally's `# Raft`, `# Limits` and `# Stats`; CRLF line ends.
    pub(super) fn info(&self, sections: &[Vec<u8>]) -> String {
        use std::fmt::Write as _;
        let shared = self;
        let wants = |name: &[u8]| {
            sections.is_empty()
                || sections.iter().any(|s| {
                    s.as_slice() == name
                        || matches!(s.as_slice(), b"all" | b"default" | b"everything")
                })
        };
        let replication = wants(b"replication");
        let mut text = String::new();
        if wants(b"server") {
            let uptime_s = shared.started.elapsed().as_secs();
            let _ = write!(
                text,
                "# Server\r\nredis_version:{REDIS_COMPATIBLE_VERSION}\r\nredis_git_sha1:00000000\r\nredis_git_dirty:0\r\nredis_mode:standalone\r\ntally_version:{}\r\nos:{} {}\r\narch_bits:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{uptime_s}\r\nuptime_in_days:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::env::consts::ARCH,
                usize::BITS,
                std::process::id(),
                shared.local_addr.port(),
                uptime_s / 86_400,
            );
        }
        if wants(b"clients") {
            let _ = write!(
                text,
                "# Clients\r\nconnected_clients:{}\r\nblocked_clients:0\r\n\r\n",
                shared.counters.connections_open.load(Ordering::Relaxed),
            );
        }
        if wants(b"persistence") {
            // Every acknowledged write is in the fsynced log: nothing is loading or saving.
            text.push_str(
                "# Persistence\r\nloading:0\r\naof_enabled:1\r\nrdb_bgsave_in_progress:0\r\n\r\n",
            );
        }
        if wants(b"cluster") {
            text.push_str("# Cluster\r\ncluster_enabled:0\r\n\r\n");
        }
        let (raft, limits, stats) = (wants(b"raft"), wants(b"limits"), wants(b"stats"));
        if raft {
            let status = shared.handle.status();
            let role = match status.role() {
                Role::Leader => "leader",
                Role::Follower => "follower",
                Role::Candidate => "candidate",
                Role::PreCandidate => "precandidate",
                Role::Learner => "learner",
            };
            let leader = status.leader();
            let leader_addr = leader.and_then(|id| self.client_addr_of(id));
            let wal = shared.handle.wal_stats();
            let _ = write!(
                text,
                "# Raft\r\nrole:{role}\r\nnode_id:{}\r\nterm:{}\r\nleader_id:{}\r\nleader_client_addr:{}\r\ncommit_index:{}\r\napplied_index:{}\r\nlast_log_index:{}\r\nentries_per_fsync:{:.2}\r\nwal_fsyncs:{}\r\nwal_entries:{}\r\nwal_bytes:{}\r\nproposals:{}\r\nreads_lease:{}\r\nreads_read_index:{}\r\nsnapshot_index:{}\r\nsnapshot_term:{}\r\nsnapshot_bytes:{}\r\nsnapshots_taken:{}\r\nsnapshots_installed:{}\r\nlog_first_index:{}\r\nlog_entries_in_memory:{}\r\n",
                shared.config.node_id,
                status.term.load(Ordering::Relaxed),
                leader.unwrap_or(0),
                leader_addr.as_deref().unwrap_or(""),
                status.commit_index.load(Ordering::Relaxed),
                status.applied_index.load(Ordering::Relaxed),
                status.last_log_index.load(Ordering::Relaxed),
                wal.entries_per_fsync(),
                wal.batches,
                wal.entries,
                wal.bytes,
                status.proposals.load(Ordering::Relaxed),
                status.reads_lease.load(Ordering::Relaxed),
                status.reads_read_index.load(Ordering::Relaxed),
                status.snapshot_index.load(Ordering::Relaxed),
                status.snapshot_term.load(Ordering::Relaxed),
                status.snapshot_bytes.load(Ordering::Relaxed),
                status.snapshots_taken.load(Ordering::Relaxed),
                status.snapshots_installed.load(Ordering::Relaxed),
                status.log_first_index.load(Ordering::Relaxed),
                status.log_entries_in_memory.load(Ordering::Relaxed),
            );
            let _ = write!(
                text,
                "peer_handshake_refusals:{}\r\n",
                shared.peer_client_addrs.handshake_refusals()
            );
            if wal.emulated_sync_delay_us > 0 {
                // Disk emulation is on: figures from this node are not its real disk's.
                let _ = write!(
                    text,
                    "emulated_fsync_delay_us:{}\r\n",
                    wal.emulated_sync_delay_us
                );
            }
        }
        if replication {
            text.push_str(&self.replication_info());
        }
        if limits {
            let counters = &shared.counters;
            let fd_budget = crate::fd_budget::process();
            let _ = write!(
                text,
                "# Limits\r\n{}fd_limit:{}\r\nfd_reserve:{}\r\ncommands_too_large:{}\r\n\
                 client_output_buffer_limit_disconnections:{}\r\n\r\n",
                shared.config.limits.info_lines(),
                fd_budget.limit().unwrap_or(0),
                fd_budget.reserve(),
                counters.commands_too_large.load(Ordering::Relaxed),
                counters
                    .output_buffer_limit_disconnections
                    .load(Ordering::Relaxed),
            );
        }
        if stats {
            let counters = &shared.counters;
            let _ = write!(
                text,
                "# Stats\r\ntotal_connections_received:{}\r\nrejected_connections:{}\r\n\
                 rejected_connections_fd_reserve:{}\r\nbusy_replies:{}\r\n\
                 acl_access_denied_auth:{}\r\nreads_lease_local:{}\r\n\r\n",
                counters.connections_accepted.load(Ordering::Relaxed),
                counters.rejected_connections.load(Ordering::Relaxed),
                counters
                    .rejected_connections_fd_reserve
                    .load(Ordering::Relaxed),
                counters.busy_replies.load(Ordering::Relaxed),
                counters.auth_failures.load(Ordering::Relaxed),
                counters.reads_lease_local.load(Ordering::Relaxed),
            );
        }
        text
    }
}

impl Shared {
    /// `# Replication`: members as this node sees them (match index and lag are the
    /// leader's view), the leader lease, fsync latency, queue depths, dropped messages.
    fn replication_info(&self) -> String {
        use std::fmt::Write as _;
        let status = self.handle.status();
        let members = status.members();
        let wal = self.handle.wal_stats();
        let or_dash = |value: Option<u64>| value.map_or("-".to_string(), |v| v.to_string());
        let mut text = format!("# Replication\r\nmembers:{}\r\n", members.len());
        for member in &members {
            let connected = match member.connected {
                _ if member.id == self.config.node_id => "self",
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            };
            let _ = write!(
                text,
                "member_{}:role={},match_index={},lag_entries={},connected={}\r\n",
                member.id,
                if member.voter { "voter" } else { "learner" },
                or_dash(member.match_index),
                or_dash(member.lag_entries),
                connected,
            );
        }
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let _ = write!(
            text,
            "lease_remaining_ms:{}\r\nfsync_latency_p50_us:{}\r\nfsync_latency_p99_us:{}\r\nrequest_queue_depth:{}\r\ninbound_queue_depth:{}\r\napply_queue_depth:{}\r\ndropped_outbound_messages:{}\r\ndropped_inbound_messages:{}\r\nrejected_incarnations:{}\r\n\r\n",
            load(&status.lease_remaining_ms),
            wal.fsync_quantile_upper_us(0.5),
            wal.fsync_quantile_upper_us(0.99),
            load(&status.request_queue_depth),
            load(&status.inbound_queue_depth),
            load(&status.apply_queue_depth),
            load(&status.dropped_outbound_messages),
            load(&status.dropped_inbound_messages),
            load(&status.rejected_incarnations),
        );
        text
    }
}

/// Bytes `write_result` will produce for `result`, or a bound close above it (computed
/// before encoding so that an oversized reply is refused without being built).
pub(super) fn encoded_reply_bytes(result: &Result<KvResponse, ClientError>) -> usize {
    match result {
        Ok(response) => response_bytes(response),
        // Error lines are short.
        Err(_) => 256,
    }
}

fn response_bytes(response: &KvResponse) -> usize {
    /// Type byte, length digits and CRLFs of one RESP element, rounded up.
    const ELEMENT_OVERHEAD_BYTES: usize = 16;
    match response {
        KvResponse::Bulk(Some(value)) => value.len() + ELEMENT_OVERHEAD_BYTES,
        KvResponse::Array(values) => values.iter().fold(ELEMENT_OVERHEAD_BYTES, |sum, value| {
            sum.saturating_add(value.as_ref().map_or(0, |v| v.len()) + ELEMENT_OVERHEAD_BYTES)
        }),
        KvResponse::Nested(items) => items.iter().fold(ELEMENT_OVERHEAD_BYTES, |sum, item| {
            sum.saturating_add(response_bytes(item))
        }),
        // Status, integer, null and error lines are short.
        _ => 256,
    }
}
