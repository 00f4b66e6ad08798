//! Exactly-once writes for any state machine.
//!
//! Raft makes a write durable and ordered, but not unique: a client whose leader
//! crashed after the entry was replicated, but before the reply arrived, gets
//! [`ClientError::OutcomeUnknown`](crate::driver::ClientError::OutcomeUnknown) and must
//! retry, and the retry would apply a second time. The cure (Raft dissertation §6.3) is a
//! client session: each client picks a random id and numbers its writes; the replicated
//! state machine remembers, per client, the last sequence it applied and that write's
//! reply. A retry of that sequence gets the stored reply and changes nothing; an older
//! one is refused. Every replica keeps the same table (it is part of the replicated
//! state and of every snapshot), so the answer does not depend on which node leads.
//!
//! [`ExactlyOnce`] wraps a database's [`StateMachine`] and does this for it: proposals
//! carry a [`SessionRequest`] header in front of the database's own payload, the inner
//! state machine sees each request once, and its snapshots are wrapped with the session
//! table. The KV store has its own copy of this logic inside its codec; this is the one
//! for embedders.
//!
//! # Log payload
//! ```text
//! u8 0x01  u64 client_id  u64 sequence  then the inner payload   (a session request)
//! u8 0x00  then the inner payload                                (no session: applied as is)
//! ```
//! All integers little-endian. `client_id` is never 0; `sequence` starts at 1.
//!
//! # Snapshot stream
//! ```text
//! "TXO1"  u64 applied_index  u64 inner_applied_index  u32 n_sessions
//! per session (client id order): u64 client_id u64 last_sequence u64 last_index
//!                                u32 reply_len  reply bytes (ResponseCodec)
//! u32 CRC-32 of every preceding byte of this header, then the inner snapshot stream
//! ```

use std::io::{Read, Write};

use imbl::OrdMap;

use crate::state_machine::{CommittedEntry, SnapshotSource, StateMachine, StateMachineError};

const TAG_PLAIN: u8 = 0x00;
const TAG_SESSION: u8 = 0x01;
const SESSION_HEADER_BYTES: usize = 1 + 8 + 8;
const SNAPSHOT_MAGIC: [u8; 4] = *b"TXO1";

/// How a stored reply is written into snapshots (the session table is replicated state,
/// so the replies it keeps must survive a restart).
pub trait ResponseCodec: Sized + Clone + Send + Sync + 'static {
    /// Appends the reply's bytes to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads a reply written by [`ResponseCodec::encode`]; `None` if the bytes are not one.
    fn decode(bytes: &[u8]) -> Option<Self>;
}

/// Why a session request was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The client already had a later sequence applied: this is an old retry whose reply
    /// is no longer kept. Nothing was applied.
    #[error("stale request: sequence {sequence} is below the last applied {last_sequence}")]
    Stale {
        /// The request's sequence.
        sequence: u64,
        /// The last sequence applied for this client.
        last_sequence: u64,
    },
    /// The payload is not a session request (too short, unknown tag, client id 0 or
    /// sequence 0). Nothing was applied.
    #[error("malformed session request: {reason}")]
    Malformed {
        /// What is wrong, in words.
        reason: &'static str,
    },
}

/// A client's identity and write counter. Make one per client process (or connection)
/// with [`ClientSession::new`]; number every write with [`ClientSession::next_request`]
/// and resend exactly the same bytes when a write's outcome is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSession {
    client_id: u64,
    /// Invariant: the sequence of the last request made (0 before the first).
    last_sequence: u64,
}

impl ClientSession {
    /// A session with a random 64-bit id (never 0) from the OS-seeded generator.
    pub fn new() -> ClientSession {
        loop {
            let client_id: u64 = rand::random();
            if client_id != 0 {
                return ClientSession::with_id(client_id);
            }
        }
    }

    /// A session with a chosen id (tests, or an id the application already has).
    ///
    /// # Panics
    /// If `client_id` is 0 (reserved).
    pub fn with_id(client_id: u64) -> ClientSession {
        assert_ne!(client_id, 0, "client id 0 is reserved");
        ClientSession {
            client_id,
            last_sequence: 0,
        }
    }

    /// This session's client id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Wraps `payload` as this client's next write. Propose
    /// [`SessionRequest::bytes`]; on an unknown outcome propose the same bytes again
    /// (to whichever node leads then): it is applied at most once.
    pub fn next_request(&mut self, payload: &[u8]) -> SessionRequest {
        self.last_sequence += 1;
        SessionRequest::encode(self.client_id, self.last_sequence, payload)
    }
}

impl Default for ClientSession {
    fn default() -> Self {
        ClientSession::new()
    }
}

/// One numbered write, encoded for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    /// The client that made it.
    pub client_id: u64,
    /// Its number in that client's order (from 1).
    pub sequence: u64,
    /// The log payload: the session header and the inner payload.
    pub bytes: bytes::Bytes,
}

impl SessionRequest {
    fn encode(client_id: u64, sequence: u64, payload: &[u8]) -> SessionRequest {
        let mut bytes = Vec::with_capacity(SESSION_HEADER_BYTES + payload.len());
        bytes.push(TAG_SESSION);
        bytes.extend_from_slice(&client_id.to_le_bytes());
        bytes.extend_from_slice(&sequence.to_le_bytes());
        bytes.extend_from_slice(payload);
        SessionRequest {
            client_id,
            sequence,
            bytes: bytes.into(),
        }
    }
}

/// The log payload of a write made without a session (applied every time it commits).
pub fn plain_request(payload: &[u8]) -> bytes::Bytes {
    let mut bytes = Vec::with_capacity(1 + payload.len());
    bytes.push(TAG_PLAIN);
    bytes.extend_from_slice(payload);
    bytes.into()
}

/// A decoded log payload.
enum Decoded<'a> {
    Plain(&'a [u8]),
    Session {
        client_id: u64,
        sequence: u64,
        payload: &'a [u8],
    },
}

fn decode_payload(bytes: &[u8]) -> Result<Decoded<'_>, SessionError> {
    match bytes.split_first() {
        Some((&TAG_PLAIN, rest)) => Ok(Decoded::Plain(rest)),
        Some((&TAG_SESSION, rest)) => {
            if rest.len() < SESSION_HEADER_BYTES - 1 {
                return Err(SessionError::Malformed {
                    reason: "shorter than a session header",
                });
            }
            let client_id = read_u64(&rest[0..8]);
            let sequence = read_u64(&rest[8..16]);
            if client_id == 0 || sequence == 0 {
                return Err(SessionError::Malformed {
                    reason: "client id and sequence must be nonzero",
                });
            }
            Ok(Decoded::Session {
                client_id,
                sequence,
                payload: &rest[16..],
            })
        }
        Some(_) => Err(SessionError::Malformed {
            reason: "unknown payload tag",
        }),
        None => Err(SessionError::Malformed {
            reason: "empty payload",
        }),
    }
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(array)
}

/// A new request waiting in a run for the inner state machine: its slot in the batch's
/// replies, the entry (inner payload only) and its session, if it has one.
struct Pending<'a> {
    slot: usize,
    entry: CommittedEntry<'a>,
    session: Option<(u64, u64)>,
}

/// What the table keeps of a client's last applied write.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SessionRecord<R> {
    last_sequence: u64,
    /// Log index of that write; this client's key in `Sessions::by_last_index`.
    last_index: u64,
    reply: R,
}

/// The replicated session table, bounded by evicting the client whose last write is
/// oldest in the log (every replica evicts alike).
#[derive(Debug, Clone)]
struct Sessions<R: Clone> {
    /// Invariant: `by_client` and `by_last_index` hold the same clients
    /// (`by_last_index[r.last_index] == client` for every `(client, r)`); changed only by
    /// [`Sessions::record`].
    by_client: OrdMap<u64, SessionRecord<R>>,
    by_last_index: OrdMap<u64, u64>,
}

impl<R: Clone> Sessions<R> {
    fn new() -> Self {
        Sessions {
            by_client: OrdMap::new(),
            by_last_index: OrdMap::new(),
        }
    }

    fn record(&mut self, client_id: u64, record: SessionRecord<R>, max_sessions: usize) {
        let last_index = record.last_index;
        if let Some(old) = self.by_client.insert(client_id, record) {
            self.by_last_index.remove(&old.last_index);
        }
        self.by_last_index.insert(last_index, client_id);
        while self.by_client.len() > max_sessions {
            let Some((index, client)) = self.by_last_index.get_min().map(|(i, c)| (*i, *c)) else {
                break;
            };
            self.by_last_index.remove(&index);
            self.by_client.remove(&client);
        }
    }
}

/// Bounds of the session table (identical on every replica: they shape the replicated
/// state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Clients remembered; the one whose last write is oldest is forgotten first (its
    /// later retries of that write are then refused as stale... or, if it was evicted
    /// entirely, applied again: size this above the number of live clients).
    pub max_sessions: usize,
    /// Largest stored reply accepted from a snapshot.
    pub max_reply_bytes: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_sessions: 100_000,
            max_reply_bytes: 1 << 20,
        }
    }
}

/// A [`StateMachine`] that applies every session request at most once (see the module
/// docs), around the database's own state machine `M`.
pub struct ExactlyOnce<M: StateMachine>
where
    M::Response: ResponseCodec,
{
    inner: M,
    sessions: Sessions<M::Response>,
    limits: SessionLimits,
    /// Invariant: the index of the last entry offered (applied, answered from the table,
    /// or refused); `>= inner.applied_index()`.
    applied_index: u64,
}

impl<M: StateMachine> ExactlyOnce<M>
where
    M::Response: ResponseCodec,
{
    /// Wraps a fresh (or restored) state machine.
    pub fn new(inner: M, limits: SessionLimits) -> Self {
        let applied_index = inner.applied_index();
        ExactlyOnce {
            inner,
            sessions: Sessions::new(),
            limits,
            applied_index,
        }
    }

    /// The database's state machine (for queries outside the log, tests).
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// Clients currently remembered.
    pub fn session_count(&self) -> usize {
        self.sessions.by_client.len()
    }

    /// Applies the run of new requests collected so far and records their sessions.
    fn flush_run(
        &mut self,
        run: &mut Vec<Pending<'_>>,
        responses: &mut [Option<Result<M::Response, SessionError>>],
    ) -> Result<(), StateMachineError> {
        if run.is_empty() {
            return Ok(());
        }
        let entries: Vec<CommittedEntry<'_>> = run.iter().map(|pending| pending.entry).collect();
        let replies = self.inner.apply(&entries)?;
        if replies.len() != run.len() {
            return Err(StateMachineError::Fatal(format!(
                "the inner state machine answered {} of {} entries",
                replies.len(),
                run.len()
            )));
        }
        for (
            Pending {
                slot,
                entry,
                session,
            },
            reply,
        ) in run.drain(..).zip(replies)
        {
            if let Some((client_id, sequence)) = session {
                let record = SessionRecord {
                    last_sequence: sequence,
                    last_index: entry.index,
                    reply: reply.clone(),
                };
                self.sessions
                    .record(client_id, record, self.limits.max_sessions);
            }
            responses[slot] = Some(Ok(reply));
        }
        Ok(())
    }
}

impl<M: StateMachine> StateMachine for ExactlyOnce<M>
where
    M::Response: ResponseCodec,
{
    type Response = Result<M::Response, SessionError>;

    fn apply(
        &mut self,
        entries: &[CommittedEntry<'_>],
    ) -> Result<Vec<Self::Response>, StateMachineError> {
        let mut responses: Vec<Option<Self::Response>> = vec![None; entries.len()];
        // Consecutive new requests go to the inner state machine in one call; a request
        // whose client is already in the run waits until the run is applied, so it sees
        // the run's session record.
        let mut run = Vec::new();
        let mut clients_in_run = std::collections::HashSet::new();
        for (slot, entry) in entries.iter().enumerate() {
            if entry.index <= self.applied_index {
                return Err(StateMachineError::IndexNotIncreasing {
                    applied_index: self.applied_index,
                    got: entry.index,
                });
            }
            self.applied_index = entry.index;
            let decoded = match decode_payload(entry.payload) {
                Ok(decoded) => decoded,
                Err(error) => {
                    responses[slot] = Some(Err(error));
                    continue;
                }
            };
            let (payload, session) = match decoded {
                Decoded::Plain(payload) => (payload, None),
                Decoded::Session {
                    client_id,
                    sequence,
                    payload,
                } => {
                    if clients_in_run.contains(&client_id) {
                        self.flush_run(&mut run, &mut responses)?;
                        clients_in_run.clear();
                    }
                    match self.sessions.by_client.get(&client_id) {
                        Some(record) if sequence == record.last_sequence => {
                            responses[slot] = Some(Ok(record.reply.clone()));
                            continue;
                        }
                        Some(record) if sequence < record.last_sequence => {
                            responses[slot] = Some(Err(SessionError::Stale {
                                sequence,
                                last_sequence: record.last_sequence,
                            }));
                            continue;
                        }
                        _ => {}
                    }
                    clients_in_run.insert(client_id);
                    (payload, Some((client_id, sequence)))
                }
            };
            run.push(Pending {
                slot,
                entry: CommittedEntry {
                    index: entry.index,
                    payload,
                },
                session,
            });
        }
        self.flush_run(&mut run, &mut responses)?;
        responses
            .into_iter()
            .map(|response| {
                response.ok_or_else(|| StateMachineError::Fatal("an entry got no response".into()))
            })
            .collect()
    }

    fn query(&self, request: &[u8]) -> Self::Response {
        Ok(self.inner.query(request))
    }

    fn applied_index(&self) -> u64 {
        self.applied_index
    }

    fn snapshot(&self) -> Box<dyn SnapshotSource> {
        Box::new(ExactlyOnceSnapshot {
            applied_index: self.applied_index,
            sessions: self.sessions.clone(),
            inner: self.inner.snapshot(),
        })
    }

    fn restore(&mut self, input: &mut dyn Read) -> Result<u64, StateMachineError> {
        let (applied_index, inner_applied_index, sessions) =
            read_session_header(input, &self.limits)?;
        if inner_applied_index > applied_index {
            return Err(corrupt(
                "the inner applied index is above the applied index",
            ));
        }
        let restored_inner = self.inner.restore(input)?;
        if restored_inner != inner_applied_index {
            return Err(corrupt(
                "the inner snapshot's applied index differs from the header",
            ));
        }
        self.sessions = sessions;
        self.applied_index = applied_index;
        Ok(applied_index)
    }
}

fn corrupt(reason: &str) -> StateMachineError {
    StateMachineError::CorruptSnapshot {
        reason: reason.to_string(),
    }
}

/// A frozen [`ExactlyOnce`]: the session table (an O(1) clone) and the inner view.
struct ExactlyOnceSnapshot<R: Clone> {
    applied_index: u64,
    sessions: Sessions<R>,
    inner: Box<dyn SnapshotSource>,
}

impl<R: ResponseCodec> SnapshotSource for ExactlyOnceSnapshot<R> {
    fn applied_index(&self) -> u64 {
        self.applied_index
    }

    fn write_to(&mut self, out: &mut dyn Write) -> Result<u64, StateMachineError> {
        let mut header = Vec::new();
        header.extend_from_slice(&SNAPSHOT_MAGIC);
        header.extend_from_slice(&self.applied_index.to_le_bytes());
        header.extend_from_slice(&self.inner.applied_index().to_le_bytes());
        let n_sessions = u32::try_from(self.sessions.by_client.len())
            .map_err(|_| StateMachineError::Fatal("more than 2^32 sessions".into()))?;
        header.extend_from_slice(&n_sessions.to_le_bytes());
        let mut reply = Vec::new();
        for (client_id, record) in &self.sessions.by_client {
            header.extend_from_slice(&client_id.to_le_bytes());
            header.extend_from_slice(&record.last_sequence.to_le_bytes());
            header.extend_from_slice(&record.last_index.to_le_bytes());
            reply.clear();
            record.reply.encode(&mut reply);
            let reply_len = u32::try_from(reply.len())
                .map_err(|_| StateMachineError::Fatal("a stored reply above 4 GiB".into()))?;
            header.extend_from_slice(&reply_len.to_le_bytes());
            header.extend_from_slice(&reply);
        }
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        out.write_all(&header)?;
        let inner_bytes = self.inner.write_to(out)?;
        Ok(header.len() as u64 + inner_bytes)
    }
}

/// Reads and checks the session header of a snapshot stream, bounding every count and
/// length before allocating. Leaves `input` at the start of the inner stream.
fn read_session_header<R: ResponseCodec>(
    input: &mut dyn Read,
    limits: &SessionLimits,
) -> Result<(u64, u64, Sessions<R>), StateMachineError> {
    let mut hasher = crc32fast::Hasher::new();
    let mut read = |buffer: &mut [u8]| -> Result<(), StateMachineError> {
        input.read_exact(buffer)?;
        hasher.update(buffer);
        Ok(())
    };
    let mut magic = [0u8; 4];
    read(&mut magic)?;
    if magic != SNAPSHOT_MAGIC {
        return Err(corrupt("not an exactly-once snapshot (bad magic)"));
    }
    let mut word = [0u8; 8];
    read(&mut word)?;
    let applied_index = u64::from_le_bytes(word);
    read(&mut word)?;
    let inner_applied_index = u64::from_le_bytes(word);
    let mut half = [0u8; 4];
    read(&mut half)?;
    let n_sessions = u32::from_le_bytes(half) as usize;
    if n_sessions > limits.max_sessions {
        return Err(StateMachineError::SnapshotLimitExceeded {
            what: "session count",
            found: n_sessions as u64,
            limit: limits.max_sessions as u64,
        });
    }
    let mut sessions = Sessions::new();
    let mut reply = Vec::new();
    for _ in 0..n_sessions {
        let mut fields = [0u64; 3];
        for field in &mut fields {
            read(&mut word)?;
            *field = u64::from_le_bytes(word);
        }
        let [client_id, last_sequence, last_index] = fields;
        read(&mut half)?;
        let reply_len = u32::from_le_bytes(half) as usize;
        if reply_len > limits.max_reply_bytes {
            return Err(StateMachineError::SnapshotLimitExceeded {
                what: "stored reply length",
                found: reply_len as u64,
                limit: limits.max_reply_bytes as u64,
            });
        }
        reply.resize(reply_len, 0);
        read(&mut reply)?;
        let reply = R::decode(&reply).ok_or_else(|| corrupt("undecodable stored reply"))?;
        if client_id == 0
            || last_index > applied_index
            || sessions.by_client.contains_key(&client_id)
        {
            return Err(corrupt("impossible session record"));
        }
        sessions.record(
            client_id,
            SessionRecord {
                last_sequence,
                last_index,
                reply,
            },
            usize::MAX,
        );
    }
    let expected = hasher.finalize();
    let mut stored = [0u8; 4];
    input.read_exact(&mut stored)?;
    if u32::from_le_bytes(stored) != expected {
        return Err(corrupt("session header checksum mismatch"));
    }
    if sessions.by_last_index.len() != sessions.by_client.len() {
        return Err(corrupt("two sessions share a log index"));
    }
    Ok((applied_index, inner_applied_index, sessions))
}

#[cfg(test)]
mod tests;
