//! The key-value state machine Tally ships, and the binary command encoding its log
//! entries carry.
//!
//! Why it looks like this:
//! * **A live map, frozen by shards.** Data lives in a hash map split into 1024 shards,
//!   each shared copy-on-write (`data_map`), behind one lock that [`KvReadView`]s share:
//!   client threads serving lease reads read the live map under a read lock, and
//!   [`snapshot`](crate::state_machine::StateMachine::snapshot) freezes it with one
//!   reference count per shard (the first write to a shard after that copies the shard,
//!   once). A persistent trie (`imbl::HashMap`, before) made every write several node
//!   visits, and every published read view made the next writes copy whole nodes: under a
//!   read/write load an insert cost 5-7x more. The map is hashed, not ordered, because
//!   every replica applies every write on the hot path: an ordered B-tree spent a third
//!   of a 3-node cluster's CPU comparing keys (perf, 50 clients, pipeline 16). Snapshots
//!   sort the keys while they serialize, off the hot path, so the snapshot bytes stay a
//!   pure function of the state. The apply thread holds the write lock for at most 64
//!   entries at a time, and every reader sees the state between two entries. The
//!   session table, which every write with a session updates too, is no persistent map
//!   either (three ordered-map updates per write were ~12 % of a leader's
//!   instructions): a std hash map and an append-only eviction queue index a slab of
//!   records in copy-on-write chunks of 64, which a snapshot shares in
//!   O(sessions / 64) (see `session`); snapshots sort the sessions too.
//! * **Sessions for exactly-once writes.** Every request may carry a session header
//!   (client id, sequence number). The state machine remembers, per client, the last
//!   sequence number applied and its reply. A retry of that sequence returns the remembered
//!   reply without applying again; an older sequence gets [`KvError::StaleSequence`]. A
//!   client keeps at most one request per session whose outcome it may retry (the usual
//!   Raft-thesis §6.3 rule); pipelined requests are fine as long as retries are of the
//!   latest one. The table is bounded: past [`KvLimits::max_sessions`] clients the one
//!   whose last request has the lowest log index is evicted. That choice depends only on
//!   the log, so every replica evicts the same client. A client whose session was evicted
//!   loses duplicate protection for a retry of its last request.
//! * **Redis semantics.** Commands and error texts follow Redis where Redis defines them, so
//!   the RESP client port can forward replies verbatim. (Parsing Redis argument vectors
//!   into a [`Command`] is the RESP port's job: `tally_net::commands`.)
//!
//! # CAS on a missing key
//!
//! `CAS key expected new` swaps only when the key exists and its value equals `expected`
//! byte for byte. A missing key never matches (reply 0, the key stays missing): an empty
//! `expected` does not stand for "absent", because the empty string is a real value.
//!
//! # Time, expiry, transactions
//! Every replica must agree on what has expired, so expiry is judged by *log time*
//! (the largest leader time stamp applied; see `machine`), never by a replica's clock,
//! and expired keys are removed only by applying entries. A transaction (`MULTI`..`EXEC`)
//! is ONE entry ([`Command::Multi`]): all its commands apply together or, when a watched
//! key's version (the index of the entry that last wrote it) passed the WATCH read's
//! index, none does.
//!
//! # Layout
//! One concern per file: `command` (the command model, limits, replies), `codec` (the
//! log payload encoding), `session` (exactly-once table), `machine` (the state
//! machine, log time, read views), `data_map` (the sharded copy-on-write map),
//! `keyspace` (values, expiry index, every command's
//! semantics), `glob` (KEYS/SCAN patterns), [`snapshot`] (the snapshot stream, writer
//! and readers).

mod codec;
mod command;
mod data_map;
mod glob;
mod keyspace;
mod machine;
mod session;
pub mod snapshot;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_commands;

pub use codec::{
    decode_request, encode_request, encode_request_at, KvDecodeError, KvEncodeError,
    REQUEST_FORMAT_VERSION, REQUEST_FORMAT_VERSION_TIMED, REQUEST_HEADER_BYTES,
};
pub use command::{
    ClientSession, Command, ExpireCondition, Expiry, GetExTtl, KvError, KvLimits, KvResponse,
    Request, SetCondition, SetOptions, SetTtl, WatchedKey, MAX_PURGE_KEYS,
};
pub use machine::{parse_redis_integer, KvReadView, KvStateMachine, EXPIRE_PER_ENTRY};
pub use snapshot::{read_stream, KvSnapshotContents, KvSnapshotSession};
