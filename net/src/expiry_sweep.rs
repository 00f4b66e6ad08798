//! The leader's active expiry: expired keys leave memory through replicated entries,
//! even when writes stop.
//!
//! The KV store removes expired keys only as entries apply (a write to the key, or the
//! few earliest per timed entry: `tally_engine::kv::EXPIRE_PER_ENTRY`), never by a
//! replica's own clock, so every replica holds the same keys. A keyspace whose writes
//! stop would keep its expired keys (invisible, but in memory) forever. This thread,
//! run next to the RESP port, closes that gap: on the leader, every interval, it asks
//! the store (a linearizable read, no log entry) how many stored keys are expired at the
//! leader's clock; while some are, it proposes `PURGEEXPIRED` entries (each removes at
//! most [`MAX_PURGE_KEYS`]) stamped with the leader's clock. Followers never sweep: they
//! remove exactly what the entries remove. An idle keyspace with nothing expired costs
//! one read per interval and no log entry.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use tally_engine::kv::{encode_request_at, Command, KvLimits, KvResponse, MAX_PURGE_KEYS};
use tally_engine::raft::Role;
use tally_engine::runtime::{NodeHandle, ReplyTo};

/// Default interval between the leader's expiry checks.
pub const DEFAULT_SWEEP_INTERVAL_MS: u64 = 100;
/// Most purge entries one round proposes before it waits for the next interval (so a
/// huge backlog is freed in steps that leave room for clients' writes).
const MAX_PURGES_PER_ROUND: usize = 64;
/// How long the sweep waits for one read or purge reply before giving up on the round.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the sweep did (tests and logs).
#[derive(Debug, Default)]
pub struct SweepCounters {
    /// `PURGEEXPIRED` entries proposed and applied.
    pub purges: AtomicU64,
    /// Keys those entries removed.
    pub keys_removed: AtomicU64,
}

/// The running sweep thread.
pub struct ExpirySweep {
    stop: Sender<()>,
    stopping: Arc<AtomicBool>,
    counters: Arc<SweepCounters>,
    thread: Option<JoinHandle<()>>,
}

impl ExpirySweep {
    /// Starts the sweep of `handle`'s KV store, checking every `interval` while the node
    /// leads.
    pub fn start(
        node_id: u64,
        handle: NodeHandle<KvResponse>,
        interval: Duration,
    ) -> std::io::Result<ExpirySweep> {
        let (stop, stopped) = bounded(1);
        let stopping = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(SweepCounters::default());
        let sweeper = Sweeper {
            handle,
            stopping: Arc::clone(&stopping),
            counters: Arc::clone(&counters),
        };
        let thread = std::thread::Builder::new()
            .name(format!("expiry-sweep-{node_id}"))
            .spawn(move || sweeper.run(&stopped, interval))?;
        Ok(ExpirySweep {
            stop,
            stopping,
            counters,
            thread: Some(thread),
        })
    }

    /// What the sweep did so far.
    pub fn counters(&self) -> &SweepCounters {
        &self.counters
    }

    /// Stops the thread (a round in progress ends at its next step) and joins it.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.stop.try_send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ExpirySweep {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

struct Sweeper {
    handle: NodeHandle<KvResponse>,
    stopping: Arc<AtomicBool>,
    counters: Arc<SweepCounters>,
}

impl Sweeper {
    fn run(&self, stopped: &Receiver<()>, interval: Duration) {
        loop {
            match stopped.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            if self.handle.status().role() == Role::Leader {
                self.round();
            }
        }
    }

    /// Purges while the store reports expired keys, at most `MAX_PURGES_PER_ROUND`
    /// times; any failure (leadership lost, overload, timeout) ends the round.
    fn round(&self) {
        for _ in 0..MAX_PURGES_PER_ROUND {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            match self.ask(Command::ExpiryBacklog, false) {
                Some(KvResponse::Nested(counts)) if expired_pending(&counts) => {}
                _ => return,
            }
            let Some(KvResponse::Integer(removed)) = self.ask(
                Command::PurgeExpired {
                    max: MAX_PURGE_KEYS,
                },
                true,
            ) else {
                return;
            };
            self.counters.purges.fetch_add(1, Ordering::Relaxed);
            self.counters
                .keys_removed
                .fetch_add(removed.max(0) as u64, Ordering::Relaxed);
            if removed == 0 {
                return;
            }
        }
    }

    /// A read (`write == false`) or a proposal of `command` stamped with this node's
    /// clock; `None` on any error or no reply in time.
    fn ask(&self, command: Command<'_>, write: bool) -> Option<KvResponse> {
        let mut payload = Vec::new();
        encode_request_at(
            None,
            Some(wall_clock_ms()),
            &command,
            &KvLimits::default(),
            &mut payload,
        )
        .ok()?;
        let (sender, receiver) = bounded(1);
        let payload = Bytes::from(payload);
        if write {
            self.handle.propose(payload, ReplyTo::new(0, sender));
        } else {
            self.handle.read(payload, ReplyTo::new(0, sender));
        }
        receiver.recv_timeout(REPLY_TIMEOUT).ok()?.result.ok()
    }
}

/// True when an `EXPIRYBACKLOG` reply counts at least one expired stored key.
fn expired_pending(counts: &[KvResponse]) -> bool {
    matches!(counts, [_, KvResponse::Integer(expired)] if *expired > 0)
}

fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_engine::kv::{decode_request, Expiry, KvStateMachine, SetOptions, SetTtl};
    use tally_engine::state_machine::{CommittedEntry, StateMachine};

    fn payload(command: &Command<'_>, time_ms: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode_request_at(None, Some(time_ms), command, &KvLimits::default(), &mut out)
            .expect("encode");
        out
    }

    fn apply(machine: &mut KvStateMachine, command: &Command<'_>, time_ms: u64) -> KvResponse {
        let index = machine.applied_index() + 1;
        let bytes = payload(command, time_ms);
        machine
            .apply(&[CommittedEntry {
                index,
                payload: &bytes,
            }])
            .expect("apply")
            .remove(0)
    }

    fn backlog(machine: &KvStateMachine, time_ms: u64) -> KvResponse {
        machine.query(&payload(&Command::ExpiryBacklog, time_ms))
    }

    fn counts(stored: i64, expired: i64) -> KvResponse {
        KvResponse::Nested(vec![
            KvResponse::Integer(stored),
            KvResponse::Integer(expired),
        ])
    }

    #[test]
    fn a_purge_entry_removes_only_keys_expired_at_its_log_time_and_at_most_its_max() {
        let mut machine = KvStateMachine::default();
        let expiring = SetOptions {
            condition: tally_engine::kv::SetCondition::Always,
            get: false,
            ttl: SetTtl::Expire(Expiry::AfterMs(10)),
        };
        let keys: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
        for key in &keys {
            let command = Command::SetWith {
                key: key.as_bytes(),
                value: b"v",
                options: expiring,
            };
            apply(&mut machine, &command, 1_000);
        }
        let kept = Command::Set {
            key: b"kept",
            value: b"v",
        };
        apply(&mut machine, &kept, 1_000);
        // The read counts at the reader's clock; nothing is removed by reading.
        assert_eq!(backlog(&machine, 1_000), counts(61, 0));
        assert_eq!(backlog(&machine, 5_000), counts(61, 60));
        assert_eq!(machine.len(), 61);
        // A purge at a log time before the expiry removes nothing.
        let purge = Command::PurgeExpired { max: 25 };
        assert_eq!(apply(&mut machine, &purge, 1_005), KvResponse::Integer(0));
        // At a later log time: `max` by the command, then the few every timed entry
        // removes (EXPIRE_PER_ENTRY), never the key without an expiry.
        assert_eq!(apply(&mut machine, &purge, 5_000), KvResponse::Integer(25));
        let left = 60 - 25 - tally_engine::kv::EXPIRE_PER_ENTRY;
        assert_eq!(machine.len(), 1 + left);
        assert_eq!(
            apply(&mut machine, &purge, 5_000),
            KvResponse::Integer(left as i64)
        );
        assert_eq!(machine.len(), 1);
        assert_eq!(backlog(&machine, 5_000), counts(1, 0));
    }

    #[test]
    fn a_purge_max_outside_its_bound_is_neither_encoded_nor_decoded() {
        for max in [0, MAX_PURGE_KEYS + 1] {
            let mut out = Vec::new();
            let command = Command::PurgeExpired { max };
            assert!(
                encode_request_at(None, Some(1), &command, &KvLimits::default(), &mut out).is_err()
            );
        }
        let mut bytes = payload(&Command::PurgeExpired { max: 1 }, 1);
        let end = bytes.len();
        bytes[end - 4..].copy_from_slice(&(MAX_PURGE_KEYS + 1).to_le_bytes());
        assert!(decode_request(&bytes, &KvLimits::default()).is_err());
        let ok = payload(
            &Command::PurgeExpired {
                max: MAX_PURGE_KEYS,
            },
            1,
        );
        assert_eq!(
            decode_request(&ok, &KvLimits::default())
                .expect("decode")
                .command,
            Command::PurgeExpired {
                max: MAX_PURGE_KEYS
            }
        );
    }
}
