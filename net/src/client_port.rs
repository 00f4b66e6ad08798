//! The Redis-compatible (RESP2) client port of a Tally node.
//!
//! Why it is built this way:
//! * **N event-loop I/O threads, not a thread per connection.** One accept thread hands
//!   each new connection, round-robin, to one of [`ClientPortConfig::io_threads`] I/O
//!   threads (`--threads`, default the core count). Each I/O thread runs a `mio` poll
//!   over its non-blocking sockets and drives every connection as a small state machine:
//!   read what is there, parse *every* complete command in the buffer, submit them all
//!   to the node (writes as proposals, reads through the linearizable read path), and
//!   write the answers, in request order, as soon as the head of the connection's reply
//!   queue is answered. A connection with 16 commands in flight costs one read, 16 queue
//!   pushes and (usually) one write.
//! * **Replies wake the loop, coalesced.** The raft and apply threads answer through
//!   [`ReplyTo`] on the I/O thread's single reply channel; the tag says which
//!   connection (and whether the request was a write). `ReplyTo` calls the thread's
//!   [`LoopWaker`] after each send; an atomic "wake pending" flag turns a burst of
//!   replies (a whole applied batch) into one `mio::Waker::wake` (one eventfd write),
//!   cleared by the I/O thread before it drains the channel.
//! * **Reads after writes within one connection wait for the writes.** The runtime
//!   starts reads (ReadIndex/lease) as soon as the raft thread sees them, but proposes
//!   the writes drained in the same turn after them; a `SET k v; GET k` pipeline could
//!   then read the old value. So a read stays queued (with everything after it, to keep
//!   the connection's order) until every earlier write of the connection is answered.
//! * **Never a false OK.** An `OK` (or any state-machine reply) is only ever produced
//!   from the reply the apply thread sends after the entry committed and applied.
//!   Leadership loss mid-flight becomes `-UNKNOWN ...`; a follower answers
//!   `-NOTLEADER <leader client addr>` (or `-NOTLEADER ?`).
//! * **Bounded buffers** ([`Limits`], one set for the whole member). The parser bounds
//!   every announced length; a request still incomplete past
//!   [`Limits::max_request_buffer_bytes`] is a protocol error; a command larger than
//!   [`Limits::max_command_bytes`] (or whose log encoding exceeds
//!   [`Limits::max_entry_bytes`]) is answered `-ERR ... (max-command-bytes)` and nothing
//!   else happens, so no client can make the WAL refuse an entry (which would stop the
//!   node). A connection has at most [`Limits::max_pipeline_commands`] unanswered
//!   commands; past [`Limits::output_buffer_soft_bytes`] of unsent replies it is not
//!   read and no further reply is encoded for it until its client reads; a reply that
//!   would take it past [`Limits::output_buffer_limit_bytes`] closes it (counted). A
//!   protocol error gets `-ERR Protocol error: ...` and closes that connection only.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream as StdTcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use tally_engine::kv::{encode_request, ClientSession, KvLimits, KvResponse};
use tally_engine::raft::Role;
use tally_engine::runtime::{ClientError, NodeHandle, Reply, ReplyTo, ReplyWaker, Submission};

use crate::commands::parse_command_args;
use crate::limits::Limits;
use crate::resp::{
    write_array_header, write_bulk, write_error, write_kv_response, write_simple_string,
    ParseStatus, RequestParser,
};
use crate::transport::PeerClientAddrs;

/// The `redis_version` INFO reports: new enough that clients enable what they need.
pub const REDIS_COMPATIBLE_VERSION: &str = "7.0.0-tally-compatible";
/// The error line (without `-`) for a write whose outcome is unknown.
pub const OUTCOME_UNKNOWN_ERROR: &str =
    "UNKNOWN leadership changed while the write was in flight; outcome unknown";

/// How long unsent replies may make no progress before the connection is dropped (a
/// client that stops reading must not hold memory, nor block shutdown, forever).
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an idle I/O thread looks at the clock: node stopped, stalled writers.
const IO_TICK: Duration = Duration::from_millis(200);
/// The poll token of an I/O thread's waker; connection ids start at 1.
const WAKE_TOKEN: Token = Token(0);
/// Reply tags: `connection id << 24 | request sequence (23 bits) << 1 | is_write`.
const TAG_CONNECTION_SHIFT: u32 = 24;
const TAG_SEQUENCE_MASK: u64 = (1 << (TAG_CONNECTION_SHIFT - 1)) - 1;
const TAG_WRITE_BIT: u64 = 1;

/// The reply tag of a connection's request number `sequence` (taken modulo 2^23).
fn reply_tag(connection_id: u64, sequence: u64, is_write: bool) -> u64 {
    debug_assert!(
        connection_id < 1 << 40,
        "connection ids must fit the reply tag"
    );
    (connection_id << TAG_CONNECTION_SHIFT)
        | ((sequence & TAG_SEQUENCE_MASK) << 1)
        | u64::from(is_write)
}

/// The core count (the default number of I/O threads).
pub fn default_io_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Tuning and bounds of the client port.
#[derive(Debug, Clone)]
pub struct ClientPortConfig {
    /// This node's id (INFO, logs).
    pub node_id: u64,
    /// The address this node advertises to clients (INFO, `-NOTLEADER` on itself).
    pub advertised_client_addr: String,
    /// Event-loop threads serving connections (at least 1).
    pub io_threads: usize,
    /// Size limits of requests, commands and unsent replies (the member's one set;
    /// `max_pipeline_commands` must stay below 2^23, the tag sequence space).
    pub limits: Limits,
    /// Bounds the KV state machine enforces (must match every replica's).
    pub kv_limits: KvLimits,
    /// Bytes read per `read` call.
    pub read_chunk_bytes: usize,
}

impl ClientPortConfig {
    /// Defaults: one I/O thread per core and [`Limits::default`].
    pub fn new(node_id: u64, advertised_client_addr: String) -> ClientPortConfig {
        ClientPortConfig {
            node_id,
            advertised_client_addr,
            io_threads: default_io_threads(),
            limits: Limits::default(),
            kv_limits: KvLimits::default(),
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
    /// Commands refused for exceeding `max_command_bytes` / `max_entry_bytes`.
    pub commands_too_large: AtomicU64,
    /// Connections closed because a reply would pass `output_buffer_limit_bytes`.
    pub output_buffer_limit_disconnections: AtomicU64,
    /// Wake-ups that reached an I/O thread's `mio::Waker` (after coalescing).
    pub io_wakeups: AtomicU64,
}

/// What the accept thread and every I/O thread share.
struct Shared {
    config: ClientPortConfig,
    handle: NodeHandle<KvResponse>,
    peer_client_addrs: PeerClientAddrs,
    counters: Arc<ClientPortCounters>,
    started: Instant,
    local_addr: SocketAddr,
    /// Set once at shutdown: the accept thread stops, I/O threads stop reading, answer
    /// what they parsed, close and exit.
    stopping: AtomicBool,
}

/// Wakes one I/O thread's poll, coalescing: between two [`LoopWaker::acknowledge`]
/// calls by the I/O thread at most one `mio::Waker::wake` happens, however many replies
/// or new connections arrive.
struct LoopWaker {
    waker: Waker,
    /// Invariant: true ⇒ a wake was issued that the I/O thread has not acknowledged
    /// yet, so it will drain its queues after this flag's last setter queued its item.
    wake_pending: AtomicBool,
    counters: Arc<ClientPortCounters>,
}

impl LoopWaker {
    fn new(registry: &mio::Registry, counters: Arc<ClientPortCounters>) -> io::Result<LoopWaker> {
        Ok(LoopWaker {
            waker: Waker::new(registry, WAKE_TOKEN)?,
            wake_pending: AtomicBool::new(false),
            counters,
        })
    }

    /// Called by the I/O thread on a wake event, *before* it drains its queues: a
    /// sender that queues after this point sees `false` and wakes again. (AcqRel pairs
    /// with the sender's swap: what it queued before is visible to the drain.)
    fn acknowledge(&self) {
        self.wake_pending.swap(false, Ordering::AcqRel);
    }
}

impl ReplyWaker for LoopWaker {
    fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            self.counters.io_wakeups.fetch_add(1, Ordering::Relaxed);
            if let Err(error) = self.waker.wake() {
                // The I/O thread still drains its queues every IO_TICK.
                tracing::warn!(%error, "cannot wake a client I/O thread");
            }
        }
    }
}

/// What the accept thread holds of one I/O thread.
struct IoThreadInbox {
    waker: Arc<LoopWaker>,
    new_connections: Sender<(StdTcpStream, SocketAddr)>,
}

/// A running client port. Dropping it shuts it down.
pub struct ClientPort {
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
    io_wakers: Vec<Arc<LoopWaker>>,
    io_threads: Vec<JoinHandle<()>>,
}

impl ClientPort {
    /// Starts accepting clients on `listener`, served by `config.io_threads` threads.
    pub fn start(
        listener: TcpListener,
        config: ClientPortConfig,
        handle: NodeHandle<KvResponse>,
        peer_client_addrs: PeerClientAddrs,
    ) -> io::Result<ClientPort> {
        assert!(
            (config.limits.max_pipeline_commands as u64) < TAG_SEQUENCE_MASK,
            "max_pipeline_commands must leave the tag sequence room to wrap"
        );
        config
            .limits
            .validate()
            .map_err(|reason| io::Error::new(io::ErrorKind::InvalidInput, reason))?;
        let local_addr = listener.local_addr()?;
        let n_io_threads = config.io_threads.max(1);
        let shared = Arc::new(Shared {
            config,
            handle,
            peer_client_addrs,
            counters: Arc::new(ClientPortCounters::default()),
            started: Instant::now(),
            local_addr,
            stopping: AtomicBool::new(false),
        });
        let node_id = shared.config.node_id;
        let mut port = ClientPort {
            shared: Arc::clone(&shared),
            accept_thread: None,
            io_wakers: Vec::new(),
            io_threads: Vec::new(),
        };
        let mut inboxes = Vec::with_capacity(n_io_threads);
        for index in 0..n_io_threads {
            let poll = Poll::new()?;
            let waker = Arc::new(LoopWaker::new(
                poll.registry(),
                Arc::clone(&shared.counters),
            )?);
            let (new_tx, new_rx) = crossbeam_channel::unbounded();
            let io_loop = IoLoop::new(Arc::clone(&shared), poll, Arc::clone(&waker), new_rx);
            // On error, `port` drops here and stops the threads already started.
            let thread = std::thread::Builder::new()
                .name(format!("client-io-{node_id}-{index}"))
                .spawn(move || io_loop.run())?;
            port.io_threads.push(thread);
            port.io_wakers.push(Arc::clone(&waker));
            inboxes.push(IoThreadInbox {
                waker,
                new_connections: new_tx,
            });
        }
        let accept_shared = Arc::clone(&shared);
        port.accept_thread = Some(
            std::thread::Builder::new()
                .name(format!("client-accept-{node_id}"))
                .spawn(move || accept_loop(&accept_shared, listener, inboxes))?,
        );
        tracing::info!(
            node_id,
            %local_addr,
            io_threads = n_io_threads,
            "client port started: 1 accept thread (client-accept, round-robin hand-off), \
             {n_io_threads} I/O threads (client-io, mio event loops: read, parse, submit, reply)"
        );
        Ok(port)
    }

    /// The address the port listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Counters (for logs and tests).
    pub fn counters(&self) -> &ClientPortCounters {
        &self.shared.counters
    }

    /// Stops accepting; every connection stops reading, gets the answers to every
    /// command it already sent that was parsed, and is closed; joins every thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.shared.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(thread) = self.accept_thread.take() {
            // Wake the blocking accept with a throwaway connection.
            let mut wake_addr = self.shared.local_addr;
            if wake_addr.ip().is_unspecified() {
                wake_addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let _ = StdTcpStream::connect_timeout(&wake_addr, Duration::from_secs(1));
            let _ = thread.join();
        }
        for waker in &self.io_wakers {
            waker.wake();
        }
        for thread in self.io_threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for ClientPort {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(shared: &Shared, listener: TcpListener, inboxes: Vec<IoThreadInbox>) {
    let mut next_inbox = 0usize;
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
        if let Err(error) = stream.set_nonblocking(true) {
            tracing::warn!(%remote, %error, "cannot make a client socket non-blocking; closing it");
            continue;
        }
        let inbox = &inboxes[next_inbox % inboxes.len()];
        next_inbox = next_inbox.wrapping_add(1);
        if inbox.new_connections.send((stream, remote)).is_err() {
            tracing::error!(%remote, "a client I/O thread is gone; closing the connection");
            continue;
        }
        inbox.waker.wake();
        shared
            .counters
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// One I/O thread: a `mio` poll over its connections, its waker and its reply channel.
struct IoLoop {
    shared: Arc<Shared>,
    poll: Poll,
    waker: Arc<LoopWaker>,
    /// The same waker, as the runtime sees it (cloned into every `ReplyTo`).
    reply_waker: Arc<dyn ReplyWaker>,
    new_connections: Receiver<(StdTcpStream, SocketAddr)>,
    reply_tx: Sender<Reply<KvResponse>>,
    reply_rx: Receiver<Reply<KvResponse>>,
    /// Open connections by id. Invariant: ids are never reused (stale replies to a
    /// closed connection find nothing), start at 1 and stay below 2^40.
    connections: HashMap<u64, Connection>,
    next_connection_id: u64,
    /// Connections to drive this turn; each appears once (`Connection::scheduled`).
    scheduled: Vec<u64>,
    encode_buffer: Vec<u8>,
    read_scratch: Vec<u8>,
    /// Requests parsed in this pass over the scheduled connections, handed to the node
    /// in one batch at the end of the pass (one queue operation, one wake-up).
    outbox: Vec<Submission<KvResponse>>,
}

/// What a connection needs from its I/O thread while it is driven.
struct Context<'a> {
    shared: &'a Shared,
    reply_tx: &'a Sender<Reply<KvResponse>>,
    reply_waker: &'a Arc<dyn ReplyWaker>,
    encode_buffer: &'a mut Vec<u8>,
    read_scratch: &'a mut [u8],
    outbox: &'a mut Vec<Submission<KvResponse>>,
}

impl IoLoop {
    fn new(
        shared: Arc<Shared>,
        poll: Poll,
        waker: Arc<LoopWaker>,
        new_connections: Receiver<(StdTcpStream, SocketAddr)>,
    ) -> IoLoop {
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        let read_chunk_bytes = shared.config.read_chunk_bytes.max(1);
        IoLoop {
            reply_waker: Arc::clone(&waker) as Arc<dyn ReplyWaker>,
            shared,
            poll,
            waker,
            new_connections,
            reply_tx,
            reply_rx,
            connections: HashMap::new(),
            next_connection_id: 1,
            scheduled: Vec::new(),
            encode_buffer: Vec::new(),
            read_scratch: vec![0; read_chunk_bytes],
            outbox: Vec::new(),
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut stopping_seen = false;
        let mut last_tick = Instant::now();
        loop {
            if let Err(error) = self.poll.poll(&mut events, Some(IO_TICK)) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(%error, "client I/O thread cannot poll; closing its connections");
                break;
            }
            for event in events.iter() {
                match event.token() {
                    WAKE_TOKEN => self.waker.acknowledge(),
                    Token(id) => self.schedule(id as u64),
                }
            }
            self.register_new_connections();
            self.route_replies();
            if !stopping_seen && self.shared.stopping.load(Ordering::Acquire) {
                stopping_seen = true;
                let ids: Vec<u64> = self.connections.keys().copied().collect();
                for id in ids {
                    if let Some(connection) = self.connections.get_mut(&id) {
                        connection.stop_reading();
                    }
                    self.schedule(id);
                }
            }
            if last_tick.elapsed() >= IO_TICK {
                last_tick = Instant::now();
                self.tick();
            }
            self.drive_scheduled();
            if stopping_seen && self.connections.is_empty() {
                break;
            }
        }
        let ids: Vec<u64> = self.connections.keys().copied().collect();
        for id in ids {
            self.close(id);
        }
    }

    fn schedule(&mut self, id: u64) {
        if let Some(connection) = self.connections.get_mut(&id) {
            if !connection.scheduled {
                connection.scheduled = true;
                self.scheduled.push(id);
            }
        }
    }

    fn register_new_connections(&mut self) {
        while let Ok((stream, remote)) = self.new_connections.try_recv() {
            if self.shared.stopping.load(Ordering::Acquire) {
                let _ = stream.shutdown(Shutdown::Both);
                continue;
            }
            let id = self.next_connection_id;
            self.next_connection_id += 1;
            debug_assert!(id < 1 << 40, "connection ids must fit the reply tag");
            let mut stream = TcpStream::from_std(stream);
            if let Err(error) = self.poll.registry().register(
                &mut stream,
                Token(id as usize),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                tracing::warn!(%remote, %error, "cannot register a client connection; closing it");
                continue;
            }
            self.shared
                .counters
                .connections_open
                .fetch_add(1, Ordering::Relaxed);
            self.connections
                .insert(id, Connection::new(id, stream, remote, &self.shared.config));
            self.schedule(id);
        }
    }

    /// Hands every reply on the channel to its connection (replies to closed
    /// connections are dropped).
    fn route_replies(&mut self) {
        while let Ok(reply) = self.reply_rx.try_recv() {
            let id = reply.tag >> TAG_CONNECTION_SHIFT;
            if let Some(connection) = self.connections.get_mut(&id) {
                connection.accept_reply(reply);
                self.schedule(id);
            }
        }
    }

    /// Periodic checks: a stopped node answers nothing more; a client that stopped
    /// reading its replies is dropped.
    fn tick(&mut self) {
        let node_stopped = self.shared.handle.status().stopped.load(Ordering::Acquire);
        let now = Instant::now();
        let mut stalled = Vec::new();
        let mut to_schedule = Vec::new();
        for (id, connection) in &mut self.connections {
            if node_stopped && connection.abandon_unanswered() {
                to_schedule.push(*id);
            }
            if connection
                .unsent_since
                .is_some_and(|since| now.duration_since(since) > CLIENT_WRITE_TIMEOUT)
            {
                stalled.push(*id);
            }
        }
        for id in to_schedule {
            self.schedule(id);
        }
        for id in stalled {
            tracing::info!(
                node_id = self.shared.config.node_id,
                "closing a client connection that stopped reading its replies"
            );
            self.close(id);
        }
    }

    fn drive_scheduled(&mut self) {
        let mut ids = std::mem::take(&mut self.scheduled);
        for id in ids.drain(..) {
            let Some(connection) = self.connections.get_mut(&id) else {
                continue;
            };
            connection.scheduled = false;
            let mut context = Context {
                shared: &self.shared,
                reply_tx: &self.reply_tx,
                reply_waker: &self.reply_waker,
                encode_buffer: &mut self.encode_buffer,
                read_scratch: &mut self.read_scratch,
                outbox: &mut self.outbox,
            };
            match connection.drive(&mut context) {
                Ok(Verdict::Keep) => {}
                Ok(Verdict::Close) => self.close(id),
                Err(error) => {
                    tracing::debug!(remote = %connection.remote, %error, "client connection ended with an error");
                    self.close(id);
                }
            }
        }
        // Keep the allocation; drive never schedules (only events and replies do).
        debug_assert!(self.scheduled.is_empty());
        self.scheduled = ids;
        if !self.outbox.is_empty() {
            let batch = std::mem::take(&mut self.outbox);
            self.shared.handle.submit_batch(batch);
        }
    }

    fn close(&mut self, id: u64) {
        if let Some(mut connection) = self.connections.remove(&id) {
            let _ = self.poll.registry().deregister(&mut connection.stream);
            let _ = connection.stream.shutdown(Shutdown::Both);
            self.shared
                .counters
                .connections_open
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One reply owed to a connection, in request order.
enum Slot {
    /// Already encoded (local commands, parse errors).
    Ready(Vec<u8>),
    /// Waiting for the node's reply with this tag.
    Pending(u64),
}

/// A KV request encoded but not yet handed to the node.
struct Unsubmitted {
    tag: u64,
    request: Bytes,
    read_only: bool,
}

/// What the I/O thread does with a connection after driving it.
enum Verdict {
    Keep,
    Close,
}

/// One client connection, driven by its I/O thread.
struct Connection {
    id: u64,
    stream: TcpStream,
    remote: SocketAddr,
    /// Unique per connection for the life of the cluster (never 0): the KV session.
    client_id: u64,
    /// Sequence number of the last write encoded. Invariant: increases by 1 per write.
    last_sequence: u64,
    /// Sequence part of the next reply tag (wraps; never more than
    /// `max_pipeline_commands` tags are live).
    next_request: u64,
    parser: RequestParser,
    /// Bytes read and not yet parsed (the parser's buffer).
    input: Vec<u8>,
    /// Replies owed, in request order. Invariant: at most `max_pipeline_commands`
    /// (plus one protocol error line).
    slots: VecDeque<Slot>,
    /// Requests not yet submitted, in order: the head is a read waiting for this
    /// connection's unanswered writes (everything behind it waits too).
    unsubmitted: VecDeque<Unsubmitted>,
    /// Replies received, by tag, not yet written.
    received: HashMap<u64, Result<KvResponse, ClientError>>,
    /// Submitted writes whose reply has not arrived (reads wait for 0).
    unanswered_writes: usize,
    /// Encoded replies; `out[out_written..]` is not yet written to the socket.
    out: Vec<u8>,
    out_written: usize,
    /// Since when unsent replies made no progress (None: nothing unsent or progress).
    unsent_since: Option<Instant>,
    /// No more bytes will be read (EOF, shutdown, QUIT, protocol error).
    read_closed: bool,
    /// No more commands are parsed; close once every slot is answered and written.
    closing: bool,
    /// Queued in the I/O thread's `scheduled` list.
    scheduled: bool,
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

impl Connection {
    fn new(
        id: u64,
        stream: TcpStream,
        remote: SocketAddr,
        config: &ClientPortConfig,
    ) -> Connection {
        Connection {
            id,
            stream,
            remote,
            client_id: new_client_id(),
            last_sequence: 0,
            next_request: 0,
            parser: RequestParser::new(config.limits.resp_limits()),
            input: Vec::new(),
            slots: VecDeque::new(),
            unsubmitted: VecDeque::new(),
            received: HashMap::new(),
            unanswered_writes: 0,
            out: Vec::new(),
            out_written: 0,
            unsent_since: None,
            read_closed: false,
            closing: false,
            scheduled: false,
        }
    }

    fn unsent_bytes(&self) -> usize {
        self.out.len() - self.out_written
    }

    /// Shutdown: read nothing more, answer what was parsed, then close.
    fn stop_reading(&mut self) {
        self.read_closed = true;
        self.closing = true;
    }

    /// Makes as much progress as the socket allows: submit, write answered replies,
    /// parse buffered commands, read. Returns when the socket would block (or the
    /// connection waits for replies, or must close).
    fn drive(&mut self, context: &mut Context<'_>) -> io::Result<Verdict> {
        let config = &context.shared.config;
        loop {
            self.submit_ready(context);
            if let Err(reply_bytes) = self.collect_and_flush(context.shared)? {
                context
                    .shared
                    .counters
                    .output_buffer_limit_disconnections
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    node_id = config.node_id,
                    remote = %self.remote,
                    reply_bytes,
                    unsent_bytes = self.unsent_bytes(),
                    limit_bytes = config.limits.output_buffer_limit_bytes,
                    "closing a client connection: its unsent replies would pass the output buffer limit"
                );
                return Ok(Verdict::Close);
            }
            if self.closing && self.slots.is_empty() && self.unsent_bytes() == 0 {
                return Ok(Verdict::Close);
            }
            if self.parse_commands(context) {
                continue;
            }
            let may_read = !self.read_closed
                && !self.closing
                && self.slots.len() < config.limits.max_pipeline_commands
                && self.unsent_bytes() < config.limits.output_buffer_soft_bytes;
            if !may_read {
                return Ok(Verdict::Keep);
            }
            match self.stream.read(context.read_scratch) {
                Ok(0) => self.read_closed = true,
                Ok(n_read) => self
                    .input
                    .extend_from_slice(&context.read_scratch[..n_read]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Verdict::Keep)
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Parses buffered commands (within the bounds) and turns them into slots.
    /// Returns whether anything changed.
    fn parse_commands(&mut self, context: &mut Context<'_>) -> bool {
        if self.closing {
            return false;
        }
        let shared = context.shared;
        let config = &shared.config;
        let input = std::mem::take(&mut self.input);
        let mut parser = std::mem::replace(
            &mut self.parser,
            RequestParser::new(config.limits.resp_limits()),
        );
        let mut consumed_total = 0;
        let mut n_commands = 0u64;
        let mut incomplete = false;
        let mut protocol_error = None;
        while !self.closing
            && self.slots.len() < config.limits.max_pipeline_commands
            && self.unsent_bytes() < config.limits.output_buffer_soft_bytes
        {
            match parser.parse(&input[consumed_total..]) {
                Ok(ParseStatus::Complete { consumed }) => {
                    let args: Vec<&[u8]> = parser.args(&input[consumed_total..]).collect();
                    let slot = self.command(&args, context);
                    self.slots.push_back(slot);
                    consumed_total += consumed;
                    n_commands += 1;
                }
                Ok(ParseStatus::Incomplete) => {
                    incomplete = true;
                    break;
                }
                Err(error) => {
                    protocol_error = Some(error.error_reply());
                    break;
                }
            }
        }
        let leftover_bytes = input.len() - consumed_total;
        if protocol_error.is_none() && incomplete && !self.closing {
            if leftover_bytes > config.limits.max_request_buffer_bytes {
                protocol_error = Some(format!(
                    "ERR Protocol error: request larger than {} bytes (max-request-buffer-bytes)",
                    config.limits.max_request_buffer_bytes
                ));
            } else if self.read_closed && leftover_bytes > 0 {
                // A client that half-closed in the middle of a request still hears why
                // nothing happened.
                protocol_error =
                    Some("ERR Protocol error: connection closed in the middle of a request".into());
            }
        }
        self.parser = parser;
        self.input = input;
        self.input.drain(..consumed_total);
        shared
            .counters
            .commands
            .fetch_add(n_commands, Ordering::Relaxed);
        let mut changed = n_commands > 0;
        if let Some(error_line) = protocol_error {
            shared
                .counters
                .protocol_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(node_id = config.node_id, remote = %self.remote, error = %error_line, "closing client connection on a protocol error");
            let mut out = Vec::new();
            write_error(&mut out, &error_line);
            self.slots.push_back(Slot::Ready(out));
            self.read_closed = true;
            self.closing = true;
            changed = true;
        } else if self.read_closed && self.input.is_empty() && !self.closing {
            // EOF after whole commands: answer them, then close.
            self.closing = true;
            changed = true;
        }
        changed
    }

    /// Hands queued requests to the node, in order, holding back a read (and what
    /// follows it) while a write of this connection is unanswered.
    fn submit_ready(&mut self, context: &mut Context<'_>) {
        while let Some(next) = self.unsubmitted.front() {
            if next.read_only && self.unanswered_writes > 0 {
                return;
            }
            let Some(request) = self.unsubmitted.pop_front() else {
                return;
            };
            let reply = ReplyTo::with_waker(
                request.tag,
                context.reply_tx.clone(),
                Arc::clone(context.reply_waker),
            );
            if request.read_only {
                context.outbox.push(Submission::Read {
                    query: request.request,
                    reply,
                });
            } else {
                self.unanswered_writes += 1;
                context.outbox.push(Submission::Propose {
                    command: request.request,
                    reply,
                });
            }
        }
    }

    /// Files a reply from the node.
    fn accept_reply(&mut self, reply: Reply<KvResponse>) {
        if self.received.contains_key(&reply.tag) {
            return; // Already given up on (node stopped).
        }
        if reply.tag & TAG_WRITE_BIT != 0 {
            debug_assert!(
                self.unanswered_writes > 0,
                "a write reply nobody waited for"
            );
            self.unanswered_writes = self.unanswered_writes.saturating_sub(1);
        }
        self.received.insert(reply.tag, reply.result);
    }

    /// The node stopped: whatever it has not answered yet never will be. Returns true
    /// if a slot changed.
    fn abandon_unanswered(&mut self) -> bool {
        let mut changed = false;
        for slot in &self.slots {
            if let Slot::Pending(tag) = slot {
                if !self.received.contains_key(tag) {
                    self.received.insert(*tag, Err(ClientError::NodeStopped));
                    changed = true;
                }
            }
        }
        self.unsubmitted.clear();
        self.unanswered_writes = 0;
        changed
    }

    /// Encodes answered replies and writes them until the socket would block or the
    /// head of the queue is unanswered. `Ok(Err(reply_bytes))`: the next reply would take
    /// the unsent bytes past the hard output limit (the connection must close).
    fn collect_and_flush(&mut self, shared: &Shared) -> io::Result<Result<(), usize>> {
        loop {
            if let Err(reply_bytes) = self.collect_answered(shared) {
                return Ok(Err(reply_bytes));
            }
            self.flush()?;
            // Stop when the socket is full (a writable event resumes) or nothing more is
            // answered; otherwise the soft limit held replies back that now fit.
            if self.unsent_bytes() > 0 || !self.head_is_answered() {
                return Ok(Ok(()));
            }
        }
    }

    fn head_is_answered(&self) -> bool {
        match self.slots.front() {
            Some(Slot::Ready(_)) => true,
            Some(Slot::Pending(tag)) => self.received.contains_key(tag),
            None => false,
        }
    }

    /// Moves the answered head of `slots` into `out`, in request order, while the unsent
    /// bytes stay below the soft output limit (one reply may pass it when nothing else
    /// is unsent). `Err(reply_bytes)`: the next reply alone would pass the hard limit.
    fn collect_answered(&mut self, shared: &Shared) -> Result<(), usize> {
        let limits = &shared.config.limits;
        while let Some(slot) = self.slots.front() {
            let unsent = self.unsent_bytes();
            let reply_bytes = match slot {
                Slot::Ready(bytes) => bytes.len(),
                Slot::Pending(tag) => match self.received.get(tag) {
                    Some(result) => encoded_reply_bytes(result),
                    None => return Ok(()),
                },
            };
            if unsent.saturating_add(reply_bytes) > limits.output_buffer_limit_bytes {
                return Err(reply_bytes);
            }
            if unsent > 0 && unsent + reply_bytes > limits.output_buffer_soft_bytes {
                return Ok(()); // written once the client reads what is already here
            }
            match slot {
                Slot::Ready(bytes) => self.out.extend_from_slice(bytes),
                Slot::Pending(tag) => {
                    if let Some(result) = self.received.remove(tag) {
                        shared.write_result(&mut self.out, result);
                    }
                }
            }
            self.slots.pop_front();
        }
        Ok(())
    }

    /// Writes unsent replies until done or the socket would block.
    fn flush(&mut self) -> io::Result<()> {
        while self.out_written < self.out.len() {
            match self.stream.write(&self.out[self.out_written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n_written) => {
                    self.out_written += n_written;
                    self.unsent_since = None;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.unsent_since.get_or_insert_with(Instant::now);
                    return Ok(());
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        self.out.clear();
        self.out_written = 0;
        self.unsent_since = None;
        Ok(())
    }

    /// A reply tag for this connection's next request.
    fn new_tag(&mut self, is_write: bool) -> u64 {
        let tag = reply_tag(self.id, self.next_request, is_write);
        self.next_request = self.next_request.wrapping_add(1);
        tag
    }

    /// Handles one command: answers it locally or queues it for the node. Returns its
    /// slot (QUIT also closes the connection once everything before it is answered).
    fn command(&mut self, args: &[&[u8]], context: &mut Context<'_>) -> Slot {
        let mut out = Vec::new();
        let Some(name) = args.first() else {
            write_error(&mut out, "ERR empty command");
            return Slot::Ready(out);
        };
        let command_bytes: usize = args.iter().map(|arg| arg.len()).sum();
        let max_command_bytes = context.shared.config.limits.max_command_bytes;
        if command_bytes > max_command_bytes {
            context
                .shared
                .counters
                .commands_too_large
                .fetch_add(1, Ordering::Relaxed);
            write_error(
                &mut out,
                &format!(
                    "ERR command of {command_bytes} bytes exceeds the limit of \
                     {max_command_bytes} bytes (max-command-bytes)"
                ),
            );
            return Slot::Ready(out);
        }
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
                self.read_closed = true;
                self.closing = true;
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
                let text = context.shared.info(section.as_deref());
                write_bulk(&mut out, text.as_bytes());
            }
            b"config" => config_command(&mut out, rest),
            b"tally" => return self.tally_command(rest, context),
            // redis-cli and redis-benchmark ask for command docs on connect.
            b"command" => write_array_header(&mut out, 0),
            b"client" => write_simple_string(&mut out, "OK"),
            // RESP3 is not spoken: clients fall back to RESP2 on this error.
            b"hello" => write_error(&mut out, "NOPROTO unsupported protocol version"),
            _ => return self.kv_command(args, context),
        }
        Slot::Ready(out)
    }

    /// `TALLY <subcommand>`: Tally's own administration commands.
    /// `TALLY SNAPSHOT` takes a snapshot now and answers its index once it is durable.
    fn tally_command(&mut self, args: &[&[u8]], context: &mut Context<'_>) -> Slot {
        let mut out = Vec::new();
        let Some((sub, rest)) = args.split_first() else {
            write_error(
                &mut out,
                "ERR wrong number of arguments for 'tally' command",
            );
            return Slot::Ready(out);
        };
        if !sub.eq_ignore_ascii_case(b"snapshot") {
            write_error(
                &mut out,
                &format!(
                    "ERR unknown TALLY subcommand '{}'",
                    String::from_utf8_lossy(sub)
                ),
            );
            return Slot::Ready(out);
        }
        if !rest.is_empty() {
            write_error(
                &mut out,
                "ERR wrong number of arguments for 'tally snapshot' command",
            );
            return Slot::Ready(out);
        }
        let tag = self.new_tag(false);
        let sender = context.reply_tx.clone();
        let waker = Arc::clone(context.reply_waker);
        context
            .shared
            .handle
            .request_snapshot(Box::new(move |result| {
                let reply = ReplyTo::with_waker(tag, sender, waker);
                reply.send(result.map(|taken| KvResponse::Integer(taken.index as i64)));
            }));
        Slot::Pending(tag)
    }

    /// Parses and encodes a KV command and queues it for submission.
    fn kv_command(&mut self, args: &[&[u8]], context: &mut Context<'_>) -> Slot {
        let mut out = Vec::new();
        let command = match parse_command_args(args) {
            Ok(command) => command,
            Err(error) => {
                write_error(&mut out, &error.to_string());
                return Slot::Ready(out);
            }
        };
        let read_only = command.is_read_only();
        let session = if read_only {
            None
        } else {
            Some(ClientSession {
                client_id: self.client_id,
                sequence: self.last_sequence + 1,
            })
        };
        context.encode_buffer.clear();
        if let Err(error) = encode_request(
            session,
            &command,
            &context.shared.config.kv_limits,
            context.encode_buffer,
        ) {
            write_error(&mut out, &format!("ERR {error}"));
            return Slot::Ready(out);
        }
        let max_entry_bytes = context.shared.config.limits.max_entry_bytes;
        if context.encode_buffer.len() as u64 > max_entry_bytes {
            // Limits::validate makes this unreachable for commands under
            // max_command_bytes; kept so no configuration can hand the WAL an entry it
            // refuses (which would stop the node).
            context
                .shared
                .counters
                .commands_too_large
                .fetch_add(1, Ordering::Relaxed);
            write_error(
                &mut out,
                &format!(
                    "ERR command encodes to {} bytes, above the log entry limit of \
                     {max_entry_bytes} bytes (max-entry-bytes)",
                    context.encode_buffer.len()
                ),
            );
            return Slot::Ready(out);
        }
        if !read_only {
            self.last_sequence += 1;
        }
        let tag = self.new_tag(!read_only);
        self.unsubmitted.push_back(Unsubmitted {
            tag,
            request: Bytes::copy_from_slice(context.encode_buffer),
            read_only,
        });
        Slot::Pending(tag)
    }
}

impl Shared {
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
        if node == self.config.node_id {
            Some(self.config.advertised_client_addr.clone()).filter(|addr| !addr.is_empty())
        } else {
            self.peer_client_addrs.get(node)
        }
    }

    /// INFO text: `# Server` and `# Raft` (the brief's contract), CRLF line ends.
    fn info(&self, section: Option<&[u8]>) -> String {
        use std::fmt::Write as _;
        let shared = self;
        let (server, raft, limits) = match section {
            None | Some(b"all") | Some(b"default") | Some(b"everything") => (true, true, true),
            Some(b"server") => (true, false, false),
            Some(b"raft") => (false, true, false),
            Some(b"limits") => (false, false, true),
            Some(_) => (false, false, false),
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
            if wal.emulated_sync_delay_us > 0 {
                // Disk emulation is on: figures from this node are not its real disk's.
                let _ = write!(
                    text,
                    "emulated_fsync_delay_us:{}\r\n",
                    wal.emulated_sync_delay_us
                );
            }
        }
        if limits {
            let counters = &shared.counters;
            let _ = write!(
                text,
                "# Limits\r\n{}commands_too_large:{}\r\nclient_output_buffer_limit_disconnections:{}\r\n\r\n",
                shared.config.limits.info_lines(),
                counters.commands_too_large.load(Ordering::Relaxed),
                counters
                    .output_buffer_limit_disconnections
                    .load(Ordering::Relaxed),
            );
        }
        text
    }
}

/// Bytes `write_result` will produce for `result`, or a bound close above it (computed
/// before encoding so that an oversized reply is refused without being built).
fn encoded_reply_bytes(result: &Result<KvResponse, ClientError>) -> usize {
    /// Type byte, length digits and CRLFs of one RESP element, rounded up.
    const ELEMENT_OVERHEAD_BYTES: usize = 16;
    match result {
        Ok(KvResponse::Bulk(Some(value))) => value.len() + ELEMENT_OVERHEAD_BYTES,
        Ok(KvResponse::Array(values)) => {
            values.iter().fold(ELEMENT_OVERHEAD_BYTES, |sum, value| {
                sum.saturating_add(value.as_ref().map_or(0, |v| v.len()) + ELEMENT_OVERHEAD_BYTES)
            })
        }
        // Status, integer, null and error lines are short.
        _ => 256,
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
    fn a_burst_of_wakes_costs_one_waker_call_until_the_loop_acknowledges() {
        let mut poll = Poll::new().expect("poll");
        let counters = Arc::new(ClientPortCounters::default());
        let waker = LoopWaker::new(poll.registry(), Arc::clone(&counters)).expect("waker");
        for _ in 0..1000 {
            waker.wake();
        }
        assert_eq!(counters.io_wakeups.load(Ordering::Relaxed), 1);
        let mut events = Events::with_capacity(8);
        poll.poll(&mut events, None).expect("poll");
        assert!(events.iter().any(|event| event.token() == WAKE_TOKEN));
        waker.acknowledge();
        // After the acknowledgement the next reply must wake the loop again.
        waker.wake();
        waker.wake();
        assert_eq!(counters.io_wakeups.load(Ordering::Relaxed), 2);
        poll.poll(&mut events, None).expect("poll");
        assert!(events.iter().any(|event| event.token() == WAKE_TOKEN));
    }

    #[test]
    fn reply_tags_name_their_connection_and_whether_they_are_writes() {
        for (connection_id, sequence, is_write) in [
            (1, 0, true),
            (7, TAG_SEQUENCE_MASK, false),
            ((1 << 40) - 1, 12345, true),
        ] {
            let tag = reply_tag(connection_id, sequence, is_write);
            assert_eq!(tag >> TAG_CONNECTION_SHIFT, connection_id);
            assert_eq!(tag & TAG_WRITE_BIT != 0, is_write);
            assert_eq!((tag >> 1) & TAG_SEQUENCE_MASK, sequence);
        }
        // The sequence wraps inside its field instead of spilling into the id.
        assert_eq!(
            reply_tag(3, TAG_SEQUENCE_MASK + 1, false),
            reply_tag(3, 0, false)
        );
        // Far more sequence values than unanswered commands may exist at once.
        assert!(
            ClientPortConfig::new(1, String::new())
                .limits
                .max_pipeline_commands as u64
                <= TAG_SEQUENCE_MASK
        );
    }

    #[test]
    fn client_ids_are_never_zero_and_differ() {
        let ids: std::collections::HashSet<u64> = (0..1000).map(|_| new_client_id()).collect();
        assert!(!ids.contains(&0));
        assert_eq!(ids.len(), 1000);
    }
}
