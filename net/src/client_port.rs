//! The Redis-compatible (RESP2) client port of a Tally node.
//!
//! Why it is built this way:
//! * **One thread per connection, blocking sockets.** Each connection's thread reads,
//!   parses *every* complete command in its buffer, submits them all to the node
//!   (writes as proposals, reads through the linearizable read path), waits for their
//!   replies on one channel (matched by tag), and answers them in request order with
//!   one write. This is pipelining without an event loop: a connection with 16 commands
//!   in flight costs one read, 16 queue pushes and one write. The cost is a thread per
//!   client (fine for tens to hundreds of clients, the target of this port); an event
//!   loop (`mio`) with a waker per I/O thread would cap threads but needs a wake-up
//!   hook the runtime's reply channels do not offer (a relay thread per I/O thread
//!   would be the workaround). See `net/ARCHITECTURE-net.md`.
//! * **Reads after writes within one pipeline wait for the writes.** The runtime starts
//!   reads (ReadIndex/lease) as soon as the raft thread sees them, but proposes the
//!   writes drained in the same turn after them; a `SET k v; GET k` pipeline could then
//!   read the old value. So before submitting a read that follows an unanswered write of
//!   the same connection, the connection waits for the outstanding replies.
//! * **Never a false OK.** An `OK` (or any state-machine reply) is only ever produced
//!   from the reply the apply thread sends after the entry committed and applied.
//!   Leadership loss mid-flight becomes `-UNKNOWN ...`; a follower answers
//!   `-NOTLEADER <leader client addr>` (or `-NOTLEADER ?`).
//! * **Bounded buffers.** The parser bounds every announced length; a request that is
//!   still incomplete past [`ClientPortConfig::max_request_bytes`] is a protocol error;
//!   at most [`ClientPortConfig::max_pipeline_commands`] commands are taken per round.
//!   A protocol error gets `-ERR Protocol error: ...` and closes that connection only.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use tally_engine::kv::{encode_request, parse_command_args, ClientSession, KvLimits, KvResponse};
use tally_engine::raft::Role;
use tally_engine::runtime::{ClientError, NodeHandle, Reply, ReplyTo};

use crate::resp::{
    write_array_header, write_bulk, write_error, write_kv_response, write_simple_string,
    ParseStatus, RequestParser, RespLimits,
};
use crate::transport::PeerClientAddrs;

/// The `redis_version` INFO reports: new enough that clients enable what they need.
pub const REDIS_COMPATIBLE_VERSION: &str = "7.0.0-tally-compatible";
/// The error line (without `-`) for a write whose outcome is unknown.
pub const OUTCOME_UNKNOWN_ERROR: &str =
    "UNKNOWN leadership changed while the write was in flight; outcome unknown";

/// How long one reply write may stall before the connection is dropped.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Tuning and bounds of the client port.
#[derive(Debug, Clone)]
pub struct ClientPortConfig {
    /// This node's id (INFO, logs).
    pub node_id: u64,
    /// The address this node advertises to clients (INFO, `-NOTLEADER` on itself).
    pub advertised_client_addr: String,
    /// Bounds on what a request may announce.
    pub resp_limits: RespLimits,
    /// Bounds the KV state machine enforces (must match every replica's).
    pub kv_limits: KvLimits,
    /// Most commands taken from one connection's buffer per round.
    pub max_pipeline_commands: usize,
    /// Largest incomplete request buffered before it is a protocol error.
    pub max_request_bytes: usize,
    /// Bytes read per `read` call.
    pub read_chunk_bytes: usize,
}

impl ClientPortConfig {
    /// Defaults: 16 MiB bulk strings, 64 MiB requests, 4096 commands per round.
    pub fn new(node_id: u64, advertised_client_addr: String) -> ClientPortConfig {
        ClientPortConfig {
            node_id,
            advertised_client_addr,
            resp_limits: RespLimits {
                max_bulk_bytes: 16 << 20,
                max_array_elements: 1 << 16,
                max_inline_bytes: 64 << 10,
            },
            kv_limits: KvLimits::default(),
            max_pipeline_commands: 4096,
            max_request_bytes: 64 << 20,
            read_chunk_bytes: 64 << 10,
        }
    }
}

/// Counters of the client port.
#[derive(Debug, Default)]
pub struct ClientPortCounters {
    pub connections_accepted: AtomicU64,
    pub connections_open: AtomicU64,
    pub commands: AtomicU64,
    pub protocol_errors: AtomicU64,
}

/// A registered connection: a clone of its socket (so shutdown can end its reads) and
/// its thread (taken when joined).
type OpenConnection = (TcpStream, Option<JoinHandle<()>>);

/// What every connection thread shares.
struct Shared {
    config: ClientPortConfig,
    handle: NodeHandle<KvResponse>,
    peer_client_addrs: PeerClientAddrs,
    counters: ClientPortCounters,
    started: Instant,
    local_addr: SocketAddr,
    /// Set once at shutdown. Invariant: once set (under `connections`), no connection
    /// is added.
    stopping: AtomicBool,
    /// Open connections (for shutdown) and their threads.
    connections: Mutex<HashMap<u64, OpenConnection>>,
    next_connection_id: AtomicU64,
}

/// A running client port. Dropping it shuts it down.
pub struct ClientPort {
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl ClientPort {
    /// Starts accepting clients on `listener`.
    pub fn start(
        listener: TcpListener,
        config: ClientPortConfig,
        handle: NodeHandle<KvResponse>,
        peer_client_addrs: PeerClientAddrs,
    ) -> io::Result<ClientPort> {
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            handle,
            peer_client_addrs,
            counters: ClientPortCounters::default(),
            started: Instant::now(),
            local_addr,
            stopping: AtomicBool::new(false),
            connections: Mutex::new(HashMap::new()),
            next_connection_id: AtomicU64::new(1),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = std::thread::Builder::new()
            .name(format!("client-accept-{}", shared.config.node_id))
            .spawn(move || accept_loop(&accept_shared, listener))?;
        tracing::info!(
            node_id = shared.config.node_id,
            %local_addr,
            "client port started: 1 accept thread, 1 thread per client connection (read, parse, submit, reply)"
        );
        Ok(ClientPort {
            shared,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address the port listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Counters (for logs and tests).
    pub fn counters(&self) -> &ClientPortCounters {
        &self.shared.counters
    }

    /// Stops accepting, lets every connection finish the round it is in (its replies
    /// are written), closes the connections and joins their threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let threads: Vec<JoinHandle<()>> = {
            let mut connections = self.shared.connections.lock();
            if self.shared.stopping.swap(true, Ordering::AcqRel) {
                return;
            }
            connections
                .values_mut()
                .filter_map(|(stream, thread)| {
                    // Reads end; replies already owed can still be written.
                    let _ = stream.shutdown(Shutdown::Read);
                    thread.take()
                })
                .collect()
        };
        // Wake the blocking accept with a throwaway connection.
        let mut wake_addr = self.shared.local_addr;
        if wake_addr.ip().is_unspecified() {
            wake_addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&wake_addr, Duration::from_secs(1));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
        for thread in threads {
            let _ = thread.join();
        }
        // Threads of connections registered after the snapshot cannot exist (stopping).
        self.shared.connections.lock().clear();
    }
}

impl Drop for ClientPort {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "client accept failed");
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // A client that stops reading its replies must not pin a thread forever (nor
        // block shutdown): a write stalled this long closes the connection.
        let _ = stream.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        let id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
        let mut connections = shared.connections.lock();
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        // Forget the threads of connections that ended.
        connections.retain(|_, (_, thread)| thread.as_ref().is_none_or(|t| !t.is_finished()));
        let thread_shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name(format!("client-conn-{}", shared.config.node_id))
            .spawn(move || {
                thread_shared
                    .counters
                    .connections_open
                    .fetch_add(1, Ordering::Relaxed);
                if let Err(error) = serve_connection(&thread_shared, stream) {
                    tracing::debug!(%remote, %error, "client connection ended with an error");
                }
                thread_shared
                    .counters
                    .connections_open
                    .fetch_sub(1, Ordering::Relaxed);
            });
        match spawned {
            Ok(thread) => {
                shared
                    .counters
                    .connections_accepted
                    .fetch_add(1, Ordering::Relaxed);
                connections.insert(id, (registered, Some(thread)));
            }
            Err(error) => {
                tracing::error!(%error, "cannot spawn a client connection thread; closing it");
                let _ = registered.shutdown(Shutdown::Both);
            }
        }
    }
}

/// One reply slot of a round, in request order.
enum Slot {
    /// Already encoded (local commands, parse errors).
    Ready(Vec<u8>),
    /// Waiting for the node's reply with this tag.
    Pending(u64),
}

/// Per-connection state.
struct Connection<'s> {
    shared: &'s Shared,
    /// Unique per connection for the life of the cluster (never 0): the KV session.
    client_id: u64,
    /// Sequence number of the last write sent. Invariant: increases by 1 per write.
    last_sequence: u64,
    next_tag: u64,
    reply_tx: Sender<Reply<KvResponse>>,
    reply_rx: Receiver<Reply<KvResponse>>,
    /// Replies received, by tag, not yet written.
    received: HashMap<u64, Result<KvResponse, ClientError>>,
    /// Tags submitted this round whose reply has not arrived.
    outstanding: usize,
    /// Whether a write of this round is still unanswered (reads wait for it).
    write_outstanding: bool,
    /// Reused buffer for encoded requests.
    encode_buffer: Vec<u8>,
}

/// What to do after a round.
enum AfterRound {
    Continue,
    Close,
}

fn serve_connection(shared: &Shared, mut stream: TcpStream) -> io::Result<()> {
    let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
    let mut connection = Connection {
        shared,
        client_id: new_client_id(),
        last_sequence: 0,
        next_tag: 1,
        reply_tx,
        reply_rx,
        received: HashMap::new(),
        outstanding: 0,
        write_outstanding: false,
        encode_buffer: Vec::new(),
    };
    let config = &shared.config;
    let mut parser = RequestParser::new(config.resp_limits);
    let mut buffer: Vec<u8> = Vec::with_capacity(config.read_chunk_bytes);
    let mut out: Vec<u8> = Vec::new();
    let mut slots: Vec<Slot> = Vec::new();
    loop {
        // Read at least one chunk.
        let filled = buffer.len();
        buffer.resize(filled + config.read_chunk_bytes, 0);
        let n_read = match stream.read(&mut buffer[filled..]) {
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {
                buffer.truncate(filled);
                continue;
            }
            Err(error) => {
                buffer.truncate(filled);
                return Err(error);
            }
        };
        buffer.truncate(filled + n_read);
        if n_read == 0 {
            // EOF (or our shutdown of the read side). A client that half-closed in the
            // middle of a request still hears why nothing happened.
            if !buffer.is_empty() {
                shared
                    .counters
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                out.clear();
                write_error(
                    &mut out,
                    "ERR Protocol error: connection closed in the middle of a request",
                );
                let _ = stream.write_all(&out);
            }
            return Ok(());
        }
        // Take every complete command.
        let mut consumed_total = 0;
        let mut close_after = false;
        let mut protocol_error = None;
        while slots.len() < config.max_pipeline_commands {
            match parser.parse(&buffer[consumed_total..]) {
                Ok(ParseStatus::Complete { consumed }) => {
                    let args: Vec<&[u8]> = parser.args(&buffer[consumed_total..]).collect();
                    let (slot, quit) = connection.command(&args);
                    slots.push(slot);
                    consumed_total += consumed;
                    if quit {
                        close_after = true;
                        break;
                    }
                }
                Ok(ParseStatus::Incomplete) => break,
                Err(error) => {
                    protocol_error = Some(error.error_reply());
                    break;
                }
            }
        }
        if protocol_error.is_none()
            && !close_after
            && buffer.len() - consumed_total > config.max_request_bytes
        {
            protocol_error = Some(format!(
                "ERR Protocol error: request larger than {} bytes",
                config.max_request_bytes
            ));
        }
        buffer.drain(..consumed_total);
        let commands = slots.len() as u64;
        shared
            .counters
            .commands
            .fetch_add(commands, Ordering::Relaxed);
        let after = if protocol_error.is_some() || close_after {
            AfterRound::Close
        } else {
            AfterRound::Continue
        };
        if slots.is_empty() && protocol_error.is_none() {
            continue;
        }
        connection.wait_for_outstanding();
        out.clear();
        for slot in slots.drain(..) {
            match slot {
                Slot::Ready(bytes) => out.extend_from_slice(&bytes),
                Slot::Pending(tag) => match connection.received.remove(&tag) {
                    Some(result) => connection.write_result(&mut out, result),
                    // wait_for_outstanding only returns without a reply when the node
                    // stopped.
                    None => write_error(&mut out, "ERR the node stopped"),
                },
            }
        }
        if let Some(error_line) = &protocol_error {
            shared
                .counters
                .protocol_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(node_id = config.node_id, error = %error_line, "closing client connection on a protocol error");
            write_error(&mut out, error_line);
        }
        stream.write_all(&out)?;
        if let AfterRound::Close = after {
            let _ = stream.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}

/// A client id unique for the life of the cluster with overwhelming probability: 64
/// random bits from the OS-seeded generator (never 0).
fn new_client_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

impl Connection<'_> {
    /// Handles one command: answers it locally or submits it. Returns its slot and
    /// whether the connection closes after this round (QUIT).
    fn command(&mut self, args: &[&[u8]]) -> (Slot, bool) {
        let mut out = Vec::new();
        let Some(name) = args.first() else {
            write_error(&mut out, "ERR empty command");
            return (Slot::Ready(out), false);
        };
        let name = name.to_ascii_lowercase();
        let rest = &args[1..];
        match name.as_slice() {
            b"ping" => match rest {
                [] => write_simple_string(&mut out, "PONG"),
                [message] => write_bulk(&mut out, message),
                _ => write_error(&mut out, "ERR wrong number of arguments for 'ping' command"),
            },
            b"echo" => match rest {
                [message] => write_bulk(&mut out, message),
                _ => write_error(&mut out, "ERR wrong number of arguments for 'echo' command"),
            },
            b"quit" => {
                write_simple_string(&mut out, "OK");
                return (Slot::Ready(out), true);
            }
            b"select" => match rest {
                [db] if *db == b"0" => write_simple_string(&mut out, "OK"),
                [_] => write_error(&mut out, "ERR DB index is out of range"),
                _ => write_error(
                    &mut out,
                    "ERR wrong number of arguments for 'select' command",
                ),
            },
            b"info" => {
                let section = rest.first().map(|s| s.to_ascii_lowercase());
                let text = self.info(section.as_deref());
                write_bulk(&mut out, text.as_bytes());
            }
            b"config" => config_command(&mut out, rest),
            // redis-cli and redis-benchmark ask for command docs on connect.
            b"command" => write_array_header(&mut out, 0),
            b"client" => write_simple_string(&mut out, "OK"),
            // RESP3 is not spoken: clients fall back to RESP2 on this error.
            b"hello" => write_error(&mut out, "NOPROTO unsupported protocol version"),
            _ => return (self.kv_command(args), false),
        }
        (Slot::Ready(out), false)
    }

    /// Parses and submits a KV command.
    fn kv_command(&mut self, args: &[&[u8]]) -> Slot {
        let mut out = Vec::new();
        let command = match parse_command_args(args) {
            Ok(command) => command,
            Err(error) => {
                write_error(&mut out, &error.to_string());
                return Slot::Ready(out);
            }
        };
        let read_only = command.is_read_only();
        if read_only && self.write_outstanding {
            // Keep read-your-writes within the pipeline (module docs).
            self.wait_for_outstanding();
        }
        let session = if read_only {
            None
        } else {
            Some(ClientSession {
                client_id: self.client_id,
                sequence: self.last_sequence + 1,
            })
        };
        self.encode_buffer.clear();
        if let Err(error) = encode_request(
            session,
            &command,
            &self.shared.config.kv_limits,
            &mut self.encode_buffer,
        ) {
            write_error(&mut out, &format!("ERR {error}"));
            return Slot::Ready(out);
        }
        if !read_only {
            self.last_sequence += 1;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let reply = ReplyTo {
            tag,
            sender: self.reply_tx.clone(),
        };
        let request = Bytes::copy_from_slice(&self.encode_buffer);
        self.outstanding += 1;
        if read_only {
            self.shared.handle.read(request, reply);
        } else {
            self.write_outstanding = true;
            self.shared.handle.propose(request, reply);
        }
        Slot::Pending(tag)
    }

    /// Waits until every submitted request of this round has its reply (or the node
    /// stopped).
    fn wait_for_outstanding(&mut self) {
        while self.outstanding > 0 {
            match self.reply_rx.recv_timeout(Duration::from_millis(200)) {
                Ok(reply) => {
                    self.received.insert(reply.tag, reply.result);
                    self.outstanding -= 1;
                }
                Err(RecvTimeoutError::Timeout) => {
                    let status = self.shared.handle.status();
                    if status.stopped.load(Ordering::Acquire) {
                        // The stopped node answers what it held; anything still missing
                        // after it stopped will never come.
                        for reply in self.reply_rx.try_iter() {
                            self.received.insert(reply.tag, reply.result);
                        }
                        self.outstanding = 0;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => self.outstanding = 0,
            }
        }
        self.write_outstanding = false;
    }

    fn write_result(&self, out: &mut Vec<u8>, result: Result<KvResponse, ClientError>) {
        match result {
            Ok(response) => write_kv_response(out, &response),
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
            Err(ClientError::Overloaded) => write_error(out, "BUSY the node is overloaded; retry"),
            Err(ClientError::NodeStopped) => write_error(out, "ERR the node stopped"),
            Err(other) => write_error(out, &format!("ERR {other}")),
        }
    }

    /// The client address of a member, if known.
    fn client_addr_of(&self, node: u64) -> Option<String> {
        if node == self.shared.config.node_id {
            Some(self.shared.config.advertised_client_addr.clone()).filter(|addr| !addr.is_empty())
        } else {
            self.shared.peer_client_addrs.get(node)
        }
    }

    /// INFO text: `# Server` and `# Raft` (the brief's contract), CRLF line ends.
    fn info(&self, section: Option<&[u8]>) -> String {
        use std::fmt::Write as _;
        let shared = self.shared;
        let (server, raft) = match section {
            None | Some(b"all") | Some(b"default") | Some(b"everything") => (true, true),
            Some(b"server") => (true, false),
            Some(b"raft") => (false, true),
            Some(_) => (false, false),
        };
        let mut text = String::new();
        if server {
            let _ = write!(
                text,
                "# Server\r\nredis_version:{REDIS_COMPATIBLE_VERSION}\r\ntally_version:{}\r\nredis_mode:standalone\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\nconnected_clients:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                std::process::id(),
                shared.local_addr.port(),
                shared.started.elapsed().as_secs(),
                shared.counters.connections_open.load(Ordering::Relaxed),
            );
        }
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
                "# Raft\r\nrole:{role}\r\nnode_id:{}\r\nterm:{}\r\nleader_id:{}\r\nleader_client_addr:{}\r\ncommit_index:{}\r\napplied_index:{}\r\nlast_log_index:{}\r\nentries_per_fsync:{:.2}\r\nwal_fsyncs:{}\r\nwal_entries:{}\r\nwal_bytes:{}\r\nproposals:{}\r\nreads_lease:{}\r\nreads_read_index:{}\r\n",
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
            );
        }
        text
    }
}

/// `CONFIG GET <name>`: what redis-benchmark asks for on connect (`save`,
/// `appendonly`). Tally persists every acknowledged write, so it reports no RDB
/// schedule and `appendonly yes`. Unknown names give an empty array, like Redis.
fn config_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let Some((sub, rest)) = args.split_first() else {
        write_error(out, "ERR wrong number of arguments for 'config' command");
        return;
    };
    if !sub.eq_ignore_ascii_case(b"get") {
        write_error(out, "ERR CONFIG is read-only in Tally (only CONFIG GET)");
        return;
    }
    let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
    for name in rest {
        if name.eq_ignore_ascii_case(b"save") {
            pairs.push((b"save", b""));
        } else if name.eq_ignore_ascii_case(b"appendonly") {
            pairs.push((b"appendonly", b"yes"));
        } else if name.eq_ignore_ascii_case(b"databases") {
            pairs.push((b"databases", b"1"));
        }
    }
    write_array_header(out, pairs.len() * 2);
    for (name, value) in pairs {
        write_bulk(out, name);
        write_bulk(out, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_get_answers_what_benchmarks_ask_and_nothing_else() {
        let mut out = Vec::new();
        config_command(&mut out, &[b"GET", b"save"]);
        assert_eq!(out, b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n");
        out.clear();
        config_command(&mut out, &[b"get", b"appendonly"]);
        assert_eq!(out, b"*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n");
        out.clear();
        config_command(&mut out, &[b"GET", b"maxmemory"]);
        assert_eq!(out, b"*0\r\n");
        out.clear();
        config_command(&mut out, &[b"SET", b"save", b""]);
        assert!(out.starts_with(b"-ERR"));
    }

    #[test]
    fn client_ids_are_never_zero_and_differ() {
        let ids: std::collections::HashSet<u64> = (0..1000).map(|_| new_client_id()).collect();
        assert!(!ids.contains(&0));
        assert_eq!(ids.len(), 1000);
    }
}
