//! The Redis-compatible (RESP2) client port of a Tally node.
//!
//! Why it is built this way:
//! * **N event-loop I/O threads, not a thread per connection.** One accept thread hands
//!   each new connection, round-robin, to one of [`ClientPortConfig::io_threads`] I/O
//!   threads (`--threads`, default half the core count). Each I/O thread runs a `mio` poll
//!   over its non-blocking sockets and drives every connection as a small state machine:
//!   read what is there, parse *every* complete command in the buffer, submit them all
//!   to the node (writes as proposals, reads through the linearizable read path), and
//!   write the answers, in request order, as soon as the head of the connection's reply
//!   queue is answered. A connection with 16 commands in flight costs one read, 16 queue
//!   pushes and (usually) one write.
//! * **Replies wake the loop, coalesced.** The raft and apply threads answer through
//!   [`ReplyTo`] on the I/O thread's single reply channel; the tag says which
//!   connection (and whether the request was a write). `ReplyTo` calls the thread's
//!   `LoopWaker` after each send; an atomic "wake pending" flag turns a burst of
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

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream as StdTcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use tally_engine::kv::{ClientSession, KvLimits, KvResponse};
use tally_engine::raft::Role;
use tally_engine::runtime::{
    ClientError, LocalReader, NodeHandle, Reply, ReplyTo, ReplyWaker, Submission,
};

use crate::commands::parse_command_args;
use crate::limits::Limits;
use crate::resp::{
    write_array_header, write_bulk, write_error, write_simple_string, ParseStatus, RequestParser,
};
use crate::transport::PeerClientAddrs;

/// The `redis_version` INFO reports: new enough that clients enable what they need.
pub const REDIS_COMPATIBLE_VERSION: &str = "7.0.0";
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

/// Half the core count, at least one: the default number of I/O threads.
///
/// The raft, apply, WAL writer and peer threads of the node need cores too. On two cores
/// one I/O thread served more than two did in every read test and in large-value writes
/// (fewer sleeping loops to wake, one `epoll_wait` sees more ready connections):
/// docs/BENCHMARKS.md, "Issue 15 in session 10".
pub fn default_io_threads() -> usize {
    io_threads_for_cores(
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    )
}

fn io_threads_for_cores(cores: usize) -> usize {
    (cores / 2).max(1)
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
    /// The password clients must give (`AUTH`) before anything but AUTH, HELLO, PING
    /// and QUIT; `None`: no authentication.
    pub requirepass: Option<Password>,
    /// TLS for every client connection (`--client-tls-cert/-key[/-ca]`); `None`: plain
    /// TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
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
            requirepass: None,
            tls: None,
        }
    }
}

/// Counters of the client port.
#[derive(Debug, Default)]
pub struct ClientPortCounters {
    /// Connections accepted since start.
    pub connections_accepted: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Commands parsed from clients since start (any outcome).
    pub commands: AtomicU64,
    /// Connections closed for a RESP protocol error, since start.
    pub protocol_errors: AtomicU64,
    /// Commands refused for exceeding `max_command_bytes` / `max_entry_bytes`.
    pub commands_too_large: AtomicU64,
    /// Connections closed because a reply would pass `output_buffer_limit_bytes`.
    pub output_buffer_limit_disconnections: AtomicU64,
    /// Wake-ups that reached an I/O thread's `mio::Waker` (after coalescing).
    pub io_wakeups: AtomicU64,
    /// Connections refused on accept (`--max-clients` reached, or the descriptor
    /// reserve): answered `-ERR max number of clients reached` and closed.
    pub rejected_connections: AtomicU64,
    /// The part of `rejected_connections` refused for the descriptor reserve (or
    /// shed while accept failed with EMFILE/ENFILE).
    pub rejected_connections_fd_reserve: AtomicU64,
    /// Requests answered `-BUSY` because the node's request queue was full (never
    /// proposed, never read).
    pub busy_replies: AtomicU64,
    /// Failed authentication attempts (INFO `acl_access_denied_auth`).
    pub auth_failures: AtomicU64,
    /// Lease reads answered on the I/O thread from a published read view (INFO
    /// `reads_lease_local`); the others went through the raft and apply threads.
    pub reads_lease_local: AtomicU64,
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

/// The reply to a connection refused on accept (Redis's text for `maxclients`).
pub const MAX_CLIENTS_ERROR: &str = "ERR max number of clients reached";
/// Longest pause between accept attempts while accept keeps failing.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one warning per this interval while accept keeps failing.
const ACCEPT_WARN_INTERVAL: Duration = Duration::from_secs(5);

/// Why a connection was refused on accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    MaxClients,
    DescriptorReserve,
}

fn accept_loop(shared: &Shared, listener: TcpListener, inboxes: Vec<IoThreadInbox>) {
    let mut next_inbox = 0usize;
    let mut failures = AcceptFailures::new();
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let (stream, remote) = match accepted {
            Ok(pair) => {
                failures.reset();
                pair
            }
            Err(error) => {
                if is_descriptor_exhaustion(&error) {
                    failures.shed_one(shared, &listener);
                }
                failures.pause(&error);
                continue;
            }
        };
        if let Some(refusal) = admission(shared) {
            refuse(shared, stream, remote, refusal);
            continue;
        }
        // Counted here, before the hand-off, so the cap holds exactly; every path that
        // drops an admitted stream decrements it (`IoLoop::close` and the others).
        shared
            .counters
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        if let Err(error) = stream.set_nonblocking(true) {
            tracing::warn!(%remote, %error, "cannot make a client socket non-blocking; closing it");
            shared.connection_dropped();
            continue;
        }
        let inbox = &inboxes[next_inbox % inboxes.len()];
        next_inbox = next_inbox.wrapping_add(1);
        if inbox.new_connections.send((stream, remote)).is_err() {
            tracing::error!(%remote, "a client I/O thread is gone; closing the connection");
            shared.connection_dropped();
            continue;
        }
        inbox.waker.wake();
        shared
            .counters
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
    }
}

mod admin;
impl Shared {
    /// An admitted connection is gone (closed, or dropped before it was registered).
    pub(super) fn connection_dropped(&self) {
        self.counters
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a just-accepted connection must be refused: the `max_clients` cap, then the
/// process's descriptor reserve (the WAL must always be able to open a file).
fn admission(shared: &Shared) -> Option<Refusal> {
    let open = shared.counters.connections_open.load(Ordering::Relaxed);
    if open >= shared.config.limits.max_clients as u64 {
        return Some(Refusal::MaxClients);
    }
    if !crate::fd_budget::process().admit() {
        return Some(Refusal::DescriptorReserve);
    }
    None
}

/// Answers `-ERR max number of clients reached` (best effort, never blocking) and
/// closes the connection.
fn refuse(shared: &Shared, stream: StdTcpStream, remote: SocketAddr, refusal: Refusal) {
    let counters = &shared.counters;
    let total = counters
        .rejected_connections
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    let line = match refusal {
        Refusal::MaxClients => format!("-{MAX_CLIENTS_ERROR}\r\n"),
        Refusal::DescriptorReserve => {
            counters
                .rejected_connections_fd_reserve
                .fetch_add(1, Ordering::Relaxed);
            format!("-{MAX_CLIENTS_ERROR} (open file descriptors near RLIMIT_NOFILE)\r\n")
        }
    };
    if total.is_power_of_two() {
        tracing::warn!(
            node_id = shared.config.node_id,
            %remote,
            ?refusal,
            rejected_connections = total,
            max_clients = shared.config.limits.max_clients,
            "refusing a client connection"
        );
    }
    let _ = stream.set_nonblocking(true);
    let _ = (&stream).write(line.as_bytes());
    let _ = stream.shutdown(Shutdown::Both);
}

/// EMFILE (process) or ENFILE (system): no descriptor for the new connection.
fn is_descriptor_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE)
    )
}

/// What the accept thread does while `accept` fails: pause with a growing backoff (no
/// core spinning on a connection it cannot take), warn at most every
/// [`ACCEPT_WARN_INTERVAL`], and, out of descriptors, shed one waiting connection with a
/// spare descriptor (so clients are told instead of waiting in the backlog forever).
struct AcceptFailures {
    /// Held open to be given up for one accept when the process is out of descriptors.
    spare: Option<std::fs::File>,
    backoff: Duration,
    failed_since_warning: u64,
    last_warning: Option<Instant>,
}

impl AcceptFailures {
    fn new() -> AcceptFailures {
        AcceptFailures {
            spare: std::fs::File::open("/dev/null").ok(),
            backoff: Duration::ZERO,
            failed_since_warning: 0,
            last_warning: None,
        }
    }

    fn reset(&mut self) {
        self.backoff = Duration::ZERO;
        if self.spare.is_none() {
            self.spare = std::fs::File::open("/dev/null").ok();
        }
    }

    fn shed_one(&mut self, shared: &Shared, listener: &TcpListener) {
        if self.spare.take().is_none() {
            return;
        }
        if let Ok((stream, remote)) = listener.accept() {
            refuse(shared, stream, remote, Refusal::DescriptorReserve);
        }
        self.spare = std::fs::File::open("/dev/null").ok();
    }

    fn pause(&mut self, error: &io::Error) {
        self.failed_since_warning += 1;
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_WARN_INTERVAL)
        {
            tracing::warn!(%error, failures = self.failed_since_warning, "client accept failed");
            self.failed_since_warning = 0;
            self.last_warning = Some(now);
        }
        self.backoff = (self.backoff * 2)
            .max(Duration::from_millis(10))
            .min(ACCEPT_BACKOFF_MAX);
        std::thread::sleep(self.backoff);
    }
}

mod auth;
mod connection;
mod dispatch;
mod id_map;
mod info;
mod io_loop;
mod stream;

pub use auth::{
    AuthError, Password, PasswordFileError, AUTH_NOT_CONFIGURED_ERROR, NOAUTH_ERROR,
    WRONGPASS_ERROR,
};
pub use info::BUSY_ERROR;
use io_loop::IoLoop;

#[cfg(test)]
mod tests {
    use super::connection::new_client_id;
    use super::dispatch::config_command;
    use super::*;

    #[test]
    fn io_threads_default_to_half_the_cores_and_never_to_none() {
        assert_eq!(io_threads_for_cores(1), 1);
        assert_eq!(io_threads_for_cores(2), 1);
        assert_eq!(io_threads_for_cores(3), 1);
        assert_eq!(io_threads_for_cores(8), 4);
        assert_eq!(io_threads_for_cores(0), 1);
    }

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
