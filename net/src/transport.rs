//! Long-lived, pipelined peer connections for the Raft runtime.
//!
//! Why it is built this way:
//! * **One outbound connection and one sender thread per peer.** A slow or dead peer
//!   stalls only its own thread. Messages to a peer are queued in a bounded channel; the
//!   Raft thread calls [`PeerTransport::try_send`], which never blocks: a full queue
//!   returns [`PeerSendError::Full`] and Raft treats the message as lost (it retransmits
//!   on its own schedule). Nothing waits for replies: sending is pipelined.
//! * **Batching.** The sender takes *everything* queued (up to a bound), frames it, and
//!   writes all headers and payload slices with vectored writes: under load many Raft
//!   messages share one system call, and entry payloads are never copied.
//! * **Reconnects.** A failed connect or write drops the connection and the messages in
//!   hand, then retries with exponential backoff up to a cap. Messages queued while the
//!   peer is unreachable are dropped too: stale Raft messages are worthless and would
//!   delay fresh ones.
//! * **One inbound queue.** The listener accepts connections and runs the handshake on a
//!   reader thread per connection; readers decode frames and push
//!   `(from node, type, payload)` into one bounded channel consumed by the Raft thread.
//!   When that channel is full the reader blocks, TCP flow control pushes back, and the
//!   remote sender's queue fills: backpressure end to end.
//! * **Bad input closes one connection.** A bad magic, version, checksum or length, a
//!   failed handshake or a reserved message type closes that connection with a logged
//!   reason; the process and the other connections carry on.
//! * **Bounded before authentication.** Until a dialer passed the handshake its frames
//!   are capped at [`MAX_HANDSHAKE_FRAME_PAYLOAD_BYTES`], the whole handshake (TLS
//!   included) has one deadline (`handshake_timeout_ms`, not per read: a trickle is cut
//!   there), and at most `max_inbound_connections` inbound connections exist at once
//!   (pending handshakes included; past it a new one is closed at once).
//! * **Dead peers are noticed.** Every peer socket has TCP keepalive, `TCP_USER_TIMEOUT`
//!   and a write timeout, so a half-open peer costs its sender seconds, not the kernel's
//!   fifteen-minute retransmission timeout.
//! * **One stream seam.** A connection is a `PeerStream`: plain TCP (vectored writes)
//!   or rustls over it (`peer_tls.rs`); handshake, reader and sender do not care which
//!   (a plain stream lets the frame reader `recv` into unused buffer capacity, with no
//!   zero-fill; TLS decrypts into memory zeroed once).
//! * **No async runtime.** Plain threads and blocking sockets; shutdown sets a flag, shuts
//!   down every registered socket (unblocking reads and writes), wakes the listener and
//!   joins every thread.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::frame::{
    encode_frame, encode_frame_header, uninit_frame_reader, write_all_vectored, Frame, FrameError,
    FrameReader, ReadUninit, DEFAULT_MAX_FRAME_PAYLOAD_BYTES, FRAME_HEADER_BYTES,
    MAX_HANDSHAKE_FRAME_PAYLOAD_BYTES,
};
use crate::handshake::{
    check_cluster_id_question, check_hello, decode_challenge, decode_reject, encode_reject,
    new_nonce, ClusterSecret, Hello, RejectReason, ASK_CLUSTER_ID, FIRST_RESERVED_MSG_TYPE,
    HANDSHAKE_VERSION, MSG_ACCEPT, MSG_CHALLENGE, MSG_CLUSTER_ID, MSG_HELLO, MSG_PROOF, MSG_REJECT,
    NONCE_HANDSHAKE_VERSION,
};
use crate::peer_tls::{names_exactly, PeerTls};

/// A Raft node id.
pub type NodeId = u64;

/// How a [`PeerTransport`] behaves. Construct with [`TransportConfig::new`] and adjust.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Cluster id every peer must present.
    pub cluster_id: u64,
    /// This node's id.
    pub node_id: NodeId,
    /// The other members and the address this node dials for each.
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// Messages queued per peer before `try_send` reports `Full`.
    pub peer_queue_capacity: usize,
    /// Messages queued from all peers before readers block.
    pub inbound_queue_capacity: usize,
    /// Largest frame payload sent or accepted.
    pub max_frame_payload_bytes: usize,
    /// Most messages one vectored write carries.
    pub max_messages_per_write: usize,
    /// First reconnect delay; doubles per failure.
    pub reconnect_initial_backoff_ms: u64,
    /// Reconnect delay cap.
    pub reconnect_max_backoff_ms: u64,
    /// Bound on establishing a TCP connection.
    pub connect_timeout_ms: u64,
    /// Deadline of the whole handshake on each side (TLS, HELLO, challenge, proof,
    /// answer), from the moment the connection exists; not per read.
    pub handshake_timeout_ms: u64,
    /// Most inbound connections open at once, pending handshakes included; a connection
    /// past it is closed at once (counted in [`InboundStats::refused_over_cap`]).
    pub max_inbound_connections: usize,
    /// Bound on one blocked write to a peer socket (`SO_SNDTIMEO`); past it the
    /// connection is dropped and redialed.
    pub write_timeout_ms: u64,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the kernel
    /// drops the connection (a half-open peer).
    pub tcp_user_timeout_ms: u64,
    /// TCP keepalive: idle time before the first probe; probes then follow every
    /// `keepalive_interval_ms`, [`KEEPALIVE_PROBES`] of them.
    pub keepalive_idle_ms: u64,
    /// TCP keepalive probe interval.
    pub keepalive_interval_ms: u64,
    /// The cluster secret: with it, the handshake is a mutual HMAC challenge-response
    /// (`handshake.rs`) and a dialer without it is refused before any Raft frame.
    pub cluster_secret: Option<ClusterSecret>,
    /// Mutual TLS between members (`peer_tls.rs`); `None`: plain TCP.
    pub tls: Option<PeerTls>,
    /// This node's client (RESP) address, sent in every HELLO so peers can redirect
    /// clients here; empty when there is none. Cut to
    /// [`crate::handshake::MAX_CLIENT_ADDR_BYTES`] on the wire.
    pub advertised_client_addr: String,
    /// This node's incarnation (identity file), sent in every HELLO; 0: none.
    pub incarnation: u64,
}

impl TransportConfig {
    /// Defaults for everything but identity and peers.
    pub fn new(cluster_id: u64, node_id: NodeId, peers: Vec<(NodeId, SocketAddr)>) -> Self {
        TransportConfig {
            cluster_id,
            node_id,
            peers,
            peer_queue_capacity: 4096,
            inbound_queue_capacity: 16384,
            max_frame_payload_bytes: DEFAULT_MAX_FRAME_PAYLOAD_BYTES,
            max_messages_per_write: 512,
            reconnect_initial_backoff_ms: 10,
            reconnect_max_backoff_ms: 1000,
            connect_timeout_ms: 2000,
            handshake_timeout_ms: 5000,
            max_inbound_connections: 64,
            write_timeout_ms: 10_000,
            tcp_user_timeout_ms: 10_000,
            keepalive_idle_ms: 5_000,
            keepalive_interval_ms: 1_000,
            cluster_secret: None,
            tls: None,
            advertised_client_addr: String::new(),
            incarnation: 0,
        }
    }
}

/// Keepalive probes unanswered before the kernel drops a peer connection.
pub const KEEPALIVE_PROBES: u32 = 5;

/// A message to send: a Raft message type and its payload as one or more byte slices
/// (sent back to back as one frame payload, without copying).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// Message type; must be below [`FIRST_RESERVED_MSG_TYPE`].
    pub msg_type: u8,
    /// Payload parts, concatenated on the wire.
    pub payload_parts: Vec<Bytes>,
}

impl OutboundMessage {
    /// A message with a single payload buffer.
    pub fn new(msg_type: u8, payload: Bytes) -> Self {
        OutboundMessage {
            msg_type,
            payload_parts: vec![payload],
        }
    }

    /// Total payload length.
    pub fn payload_len(&self) -> usize {
        self.payload_parts.iter().map(Bytes::len).sum()
    }
}

/// A message received from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// The sender, as established by the handshake.
    pub from: NodeId,
    /// Message type.
    pub msg_type: u8,
    /// Payload.
    pub payload: Bytes,
}

/// Where reader threads hand inbound messages. Called on the connection's reader thread,
/// so a sink that decodes and forwards the message saves the hop through a queue and
/// another thread (the server's sink hands messages straight to the raft thread).
pub trait InboundSink: Send + Sync + 'static {
    /// Takes one message. Returning false ends this connection's reader (the consumer
    /// is gone); the sink decides itself whether a full consumer blocks or drops.
    fn deliver(&self, message: InboundMessage) -> bool;
    /// A peer passed the handshake, presenting this incarnation and client address.
    fn peer_identified(&self, _peer: NodeId, _incarnation: u64, _client_addr: &str) {}
}

/// The sink of [`PeerTransport::start`]: a bounded queue; a full queue blocks the reader
/// (TCP flow control then slows the peer) until there is room or the transport stops.
struct ChannelSink {
    queue: Sender<InboundMessage>,
    shared: Arc<Shared>,
}

impl InboundSink for ChannelSink {
    fn deliver(&self, mut message: InboundMessage) -> bool {
        loop {
            match self.queue.send_timeout(message, Duration::from_millis(100)) {
                Ok(()) => return true,
                Err(SendTimeoutError::Timeout(back)) => {
                    if self.shared.is_stopping() {
                        return false;
                    }
                    message = back;
                }
                Err(SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }
}

/// Why [`PeerTransport::try_send`] did not queue a message. The message is handed back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerSendError {
    /// The peer's queue is full (the peer is slow or unreachable); drop or retry later.
    #[error("send queue to peer is full")]
    Full(OutboundMessage),
    /// The transport is shutting down.
    #[error("transport is shut down")]
    Disconnected(OutboundMessage),
    /// No such peer in the configuration.
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    /// The message type is reserved for the transport.
    #[error("message type {0:#04x} is reserved for the transport")]
    ReservedType(u8),
    /// The payload exceeds the frame limit.
    #[error("payload of {len} bytes exceeds the frame limit of {max}")]
    TooLarge {
        /// Payload length, in bytes.
        len: usize,
        /// The frame limit, in bytes.
        max: usize,
    },
}

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Binding or configuring the listening socket failed.
    #[error("peer listener failed: {0}")]
    Listen(io::Error),
    /// A thread could not be spawned.
    #[error("could not spawn transport thread: {0}")]
    Spawn(io::Error),
    /// The configuration is inconsistent.
    #[error("invalid transport configuration: {0}")]
    InvalidConfig(String),
}

/// Counters for one peer's outbound side.
#[derive(Debug, Default)]
struct PeerCounters {
    connected: AtomicBool,
    sent_messages: AtomicU64,
    dropped_messages: AtomicU64,
    connections_established: AtomicU64,
    handshakes_rejected: AtomicU64,
}

/// A snapshot of one peer's outbound counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerStats {
    /// Whether the outbound connection is up (handshake done).
    pub connected: bool,
    /// Messages written to the socket.
    pub sent_messages: u64,
    /// Messages dropped because the peer was unreachable or a write failed.
    pub dropped_messages: u64,
    /// Successful handshakes so far (1 + number of reconnects).
    pub connections_established: u64,
    /// Times the peer refused our handshake.
    pub handshakes_rejected: u64,
}

/// A snapshot of the inbound side's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InboundStats {
    /// Connections that completed the handshake.
    pub accepted_connections: u64,
    /// Connections refused at the handshake: a failed check, proof or certificate, or
    /// a TLS or read failure before it passed.
    pub rejected_handshakes: u64,
    /// Connections cut because the handshake was not done by its deadline.
    pub handshake_timeouts: u64,
    /// Connections closed at once because `max_inbound_connections` were open, or the
    /// process's open descriptors were within the reserve of its limit (`fd_budget`).
    pub refused_over_cap: u64,
    /// Connections closed because a frame was bad (magic, version, length, checksum,
    /// truncation, reserved type).
    pub closed_for_bad_frames: u64,
    /// Messages delivered to the inbound queue.
    pub received_messages: u64,
    /// Connections refused because the peer's incarnation differs from the recorded one.
    pub rejected_incarnations: u64,
}

/// The inbound counters, shared by the transport threads and [`PeerClientAddrs`].
#[derive(Debug, Default)]
struct InboundCounters {
    accepted_connections: AtomicU64,
    rejected_handshakes: AtomicU64,
    handshake_timeouts: AtomicU64,
    refused_over_cap: AtomicU64,
    /// Frames refused before the handshake passed (also in `closed_for_bad_frames`).
    bad_frames_before_handshake: AtomicU64,
    closed_for_bad_frames: AtomicU64,
    received_messages: AtomicU64,
}

impl InboundCounters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> InboundStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        InboundStats {
            accepted_connections: get(&self.accepted_connections),
            rejected_handshakes: get(&self.rejected_handshakes),
            handshake_timeouts: get(&self.handshake_timeouts),
            refused_over_cap: get(&self.refused_over_cap),
            closed_for_bad_frames: get(&self.closed_for_bad_frames),
            received_messages: get(&self.received_messages),
            // Kept in `Shared` (the membership side records incarnations).
            rejected_incarnations: 0,
        }
    }

    /// Every inbound connection that never passed the handshake (INFO
    /// `peer_handshake_refusals`).
    fn handshake_refusals(&self) -> u64 {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        get(&self.rejected_handshakes)
            + get(&self.handshake_timeouts)
            + get(&self.refused_over_cap)
            + get(&self.bad_frames_before_handshake)
    }
}

/// The transport's live view for the client port: the client addresses peers
/// advertised in their HELLOs, by node id (for `-NOTLEADER <addr>`), and the count of
/// refused inbound peer connections (INFO). Cloneable and cheap to read from any thread.
#[derive(Debug, Clone, Default)]
pub struct PeerClientAddrs {
    by_node: Arc<RwLock<HashMap<NodeId, String>>>,
    inbound: Arc<InboundCounters>,
}

impl PeerClientAddrs {
    /// Inbound peer connections that never passed the handshake: refused (check,
    /// proof, certificate, TLS), timed out, over the connection cap, or a bad frame
    /// before HELLO passed.
    pub fn handshake_refusals(&self) -> u64 {
        self.inbound.handshake_refusals()
    }

    /// The client address `node` advertised most recently, if any.
    pub fn get(&self, node: NodeId) -> Option<String> {
        self.by_node.read().get(&node).cloned()
    }

    /// Records what `node` advertised (an empty address forgets it).
    pub fn set(&self, node: NodeId, client_addr: String) {
        let mut by_node = self.by_node.write();
        if client_addr.is_empty() {
            by_node.remove(&node);
        } else {
            by_node.insert(node, client_addr);
        }
    }
}

/// State shared by the handle and all transport threads.
struct Shared {
    config: TransportConfig,
    local_addr: SocketAddr,
    /// Set once by shutdown; threads exit when they see it.
    stopping: AtomicBool,
    /// Every open socket (outbound and inbound), so shutdown can unblock its thread.
    /// Invariant: once `stopping` is set (under this lock) no socket is added.
    sockets: Mutex<HashMap<u64, TcpStream>>,
    next_socket_id: AtomicU64,
    /// Newest inbound connection per peer; an older one is closed when a newer arrives.
    inbound_by_peer: Mutex<HashMap<NodeId, u64>>,
    /// Members whose HELLO we accept.
    known_peers: RwLock<HashSet<NodeId>>,
    /// Incarnations the cluster recorded, by member: a HELLO presenting another one is
    /// refused (absent: any is accepted).
    recorded_incarnations: RwLock<HashMap<NodeId, u64>>,
    rejected_incarnations: AtomicU64,
    /// Reader threads, joined at shutdown (finished ones are pruned on accept).
    reader_threads: Mutex<Vec<JoinHandle<()>>>,
    /// Inbound connections open now, pending handshakes included. Invariant: at most
    /// `config.max_inbound_connections`; the listener increments it before spawning a
    /// reader, and the reader's [`InboundSlot`] decrements it when the connection ends.
    inbound_open: AtomicUsize,
    /// Wakes backoff sleeps at shutdown.
    wake_lock: Mutex<()>,
    wake: Condvar,
    inbound: Arc<InboundCounters>,
    /// Client addresses learned from accepted HELLOs (shares `inbound`).
    peer_client_addrs: PeerClientAddrs,
}

impl Shared {
    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Registers a socket for shutdown; `None` if the transport is stopping (the caller
    /// then drops the connection).
    fn register(&self, stream: &TcpStream) -> Option<u64> {
        let clone = stream.try_clone().ok()?;
        let mut sockets = self.sockets.lock();
        if self.is_stopping() {
            return None;
        }
        let id = self.next_socket_id.fetch_add(1, Ordering::Relaxed);
        sockets.insert(id, clone);
        Some(id)
    }

    fn unregister(&self, id: u64) {
        if let Some(stream) = self.sockets.lock().remove(&id) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Sleeps up to `duration`, returning early at shutdown.
    fn sleep(&self, duration: Duration) {
        let mut guard = self.wake_lock.lock();
        if !self.is_stopping() {
            let _ = self.wake.wait_for(&mut guard, duration);
        }
    }
}

/// The peer transport of one node. Dropping it shuts it down.
pub struct PeerTransport {
    shared: Arc<Shared>,
    /// Queue into each peer's sender thread. Dropped at shutdown, which ends the thread.
    senders: HashMap<NodeId, Sender<OutboundMessage>>,
    counters: HashMap<NodeId, Arc<PeerCounters>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTransport")
            .field("node_id", &self.shared.config.node_id)
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

impl PeerTransport {
    /// Binds `listen_addr` and starts the transport; see [`PeerTransport::start`].
    pub fn bind(
        config: TransportConfig,
        listen_addr: SocketAddr,
    ) -> Result<(PeerTransport, Receiver<InboundMessage>), TransportError> {
        let listener = TcpListener::bind(listen_addr).map_err(TransportError::Listen)?;
        Self::start(config, listener)
    }

    /// Starts the listener and one sender thread per peer. Returns the transport and the
    /// single inbound queue the consumer reads.
    pub fn start(
        config: TransportConfig,
        listener: TcpListener,
    ) -> Result<(PeerTransport, Receiver<InboundMessage>), TransportError> {
        let (inbound_tx, inbound_rx) = crossbeam_channel::bounded(config.inbound_queue_capacity);
        let transport = Self::start_inner(config, listener, |shared| {
            Arc::new(ChannelSink {
                queue: inbound_tx,
                shared,
            })
        })?;
        Ok((transport, inbound_rx))
    }

    /// Like [`PeerTransport::start`], but every inbound message goes to `sink` on the
    /// reader thread of its connection instead of into a queue.
    pub fn start_with_sink(
        config: TransportConfig,
        listener: TcpListener,
        sink: Arc<dyn InboundSink>,
    ) -> Result<PeerTransport, TransportError> {
        Self::start_inner(config, listener, |_| sink)
    }

    fn start_inner(
        config: TransportConfig,
        listener: TcpListener,
        make_sink: impl FnOnce(Arc<Shared>) -> Arc<dyn InboundSink>,
    ) -> Result<PeerTransport, TransportError> {
        validate(&config)?;
        let local_addr = listener.local_addr().map_err(TransportError::Listen)?;
        let known_peers = config.peers.iter().map(|(id, _)| *id).collect();
        let inbound = Arc::new(InboundCounters::default());
        let shared = Arc::new(Shared {
            config: config.clone(),
            local_addr,
            stopping: AtomicBool::new(false),
            sockets: Mutex::new(HashMap::new()),
            next_socket_id: AtomicU64::new(1),
            inbound_by_peer: Mutex::new(HashMap::new()),
            known_peers: RwLock::new(known_peers),
            recorded_incarnations: RwLock::new(HashMap::new()),
            rejected_incarnations: AtomicU64::new(0),
            reader_threads: Mutex::new(Vec::new()),
            inbound_open: AtomicUsize::new(0),
            wake_lock: Mutex::new(()),
            wake: Condvar::new(),
            inbound: Arc::clone(&inbound),
            peer_client_addrs: PeerClientAddrs {
                by_node: Arc::default(),
                inbound,
            },
        });
        let mut transport = PeerTransport {
            shared: Arc::clone(&shared),
            senders: HashMap::new(),
            counters: HashMap::new(),
            threads: Vec::new(),
        };
        let listener_shared = Arc::clone(&shared);
        let sink = make_sink(Arc::clone(&shared));
        let handle = std::thread::Builder::new()
            .name(format!("peer-listen-{}", config.node_id))
            .spawn(move || listen_loop(listener_shared, listener, sink))
            .map_err(TransportError::Spawn)?;
        transport.threads.push(handle);
        for (peer, addr) in &config.peers {
            transport.spawn_sender(*peer, *addr)?;
        }
        tracing::info!(
            node_id = config.node_id,
            %local_addr,
            n_peers = config.peers.len(),
            "peer transport started: 1 listener thread, 1 sender thread per peer, 1 reader thread per inbound connection"
        );
        Ok(transport)
    }

    fn spawn_sender(&mut self, peer: NodeId, addr: SocketAddr) -> Result<(), TransportError> {
        let (tx, rx) = crossbeam_channel::bounded(self.shared.config.peer_queue_capacity);
        let counters = Arc::new(PeerCounters::default());
        let sender = PeerSender {
            shared: Arc::clone(&self.shared),
            peer,
            addr,
            queue: rx,
            counters: Arc::clone(&counters),
        };
        let handle = std::thread::Builder::new()
            .name(format!("peer-send-{}-{}", self.shared.config.node_id, peer))
            .spawn(move || sender.run())
            .map_err(TransportError::Spawn)?;
        self.threads.push(handle);
        self.senders.insert(peer, tx);
        self.counters.insert(peer, counters);
        Ok(())
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Queues `message` for `to` without blocking.
    pub fn try_send(&self, to: NodeId, message: OutboundMessage) -> Result<(), PeerSendError> {
        if message.msg_type >= FIRST_RESERVED_MSG_TYPE {
            return Err(PeerSendError::ReservedType(message.msg_type));
        }
        let len = message.payload_len();
        if len > self.shared.config.max_frame_payload_bytes {
            return Err(PeerSendError::TooLarge {
                len,
                max: self.shared.config.max_frame_payload_bytes,
            });
        }
        let sender = self
            .senders
            .get(&to)
            .ok_or(PeerSendError::UnknownPeer(to))?;
        sender.try_send(message).map_err(|error| match error {
            TrySendError::Full(message) => PeerSendError::Full(message),
            TrySendError::Disconnected(message) => PeerSendError::Disconnected(message),
        })
    }

    /// The client addresses peers advertised in their HELLOs (live view).
    pub fn peer_client_addrs(&self) -> PeerClientAddrs {
        self.shared.peer_client_addrs.clone()
    }

    /// Whether the outbound connection to `peer` is established.
    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.counters
            .get(&peer)
            .is_some_and(|c| c.connected.load(Ordering::Relaxed))
    }

    /// Counters of the outbound side to `peer`.
    pub fn peer_stats(&self, peer: NodeId) -> Option<PeerStats> {
        self.counters.get(&peer).map(|c| PeerStats {
            connected: c.connected.load(Ordering::Relaxed),
            sent_messages: c.sent_messages.load(Ordering::Relaxed),
            dropped_messages: c.dropped_messages.load(Ordering::Relaxed),
            connections_established: c.connections_established.load(Ordering::Relaxed),
            handshakes_rejected: c.handshakes_rejected.load(Ordering::Relaxed),
        })
    }

    /// Counters of the inbound side.
    pub fn inbound_stats(&self) -> InboundStats {
        let mut stats = self.shared.inbound.snapshot();
        stats.rejected_incarnations = self.shared.rejected_incarnations.load(Ordering::Relaxed);
        stats
    }

    /// Adds a member (membership change): starts dialing it and accepts its HELLO.
    pub fn add_peer(&mut self, peer: NodeId, addr: SocketAddr) -> Result<(), TransportError> {
        if peer == self.shared.config.node_id || self.senders.contains_key(&peer) {
            return Err(TransportError::InvalidConfig(format!(
                "peer {peer} is this node or already present"
            )));
        }
        self.shared.known_peers.write().insert(peer);
        self.spawn_sender(peer, addr)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.config.node_id
    }

    /// Whether `peer` is dialed (a member this transport knows).
    pub fn has_peer(&self, peer: NodeId) -> bool {
        self.senders.contains_key(&peer)
    }

    /// The peers this transport dials.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        self.senders.keys().copied().collect()
    }

    /// Sets the incarnations the cluster recorded (0 entries are ignored): a HELLO from
    /// one of these ids with another incarnation is refused and counted.
    pub fn set_recorded_incarnations(&self, recorded: impl IntoIterator<Item = (NodeId, u64)>) {
        let map = recorded
            .into_iter()
            .filter(|(_, incarnation)| *incarnation != 0)
            .collect();
        *self.shared.recorded_incarnations.write() = map;
    }

    /// Removes a member: stops dialing it, refuses its future HELLOs and closes its
    /// current inbound connection.
    pub fn remove_peer(&mut self, peer: NodeId) {
        self.shared.known_peers.write().remove(&peer);
        // Dropping the queue ends the sender thread; it is joined at shutdown.
        self.senders.remove(&peer);
        self.counters.remove(&peer);
        if let Some(socket_id) = self.shared.inbound_by_peer.lock().remove(&peer) {
            self.shared.unregister(socket_id);
        }
    }

    /// Stops every thread and closes every connection. Messages still queued are dropped.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        {
            let sockets = self.shared.sockets.lock();
            if self.shared.stopping.swap(true, Ordering::AcqRel) {
                return;
            }
            for stream in sockets.values() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        {
            let _guard = self.shared.wake_lock.lock();
            self.shared.wake.notify_all();
        }
        self.senders.clear();
        // Wake the blocking accept with a throwaway connection.
        let mut wake_addr = self.shared.local_addr;
        if wake_addr.ip().is_unspecified() {
            wake_addr.set_ip(match wake_addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake_addr, Duration::from_secs(1));
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
        let readers: Vec<_> = self.shared.reader_threads.lock().drain(..).collect();
        for handle in readers {
            let _ = handle.join();
        }
        tracing::info!(
            node_id = self.shared.config.node_id,
            "peer transport stopped"
        );
    }
}

impl Drop for PeerTransport {
    fn drop(&mut self) {
        self.stop();
    }
}

fn validate(config: &TransportConfig) -> Result<(), TransportError> {
    let invalid = |why: String| Err(TransportError::InvalidConfig(why));
    let mut seen = HashSet::new();
    for (peer, _) in &config.peers {
        if *peer == config.node_id {
            return invalid(format!("node {peer} lists itself as a peer"));
        }
        if !seen.insert(*peer) {
            return invalid(format!("peer {peer} listed twice"));
        }
    }
    if config.peer_queue_capacity == 0
        || config.inbound_queue_capacity == 0
        || config.max_messages_per_write == 0
    {
        return invalid("queue capacities and batch size must be positive".into());
    }
    if config.max_frame_payload_bytes > u32::MAX as usize {
        return invalid("max_frame_payload_bytes must fit in u32".into());
    }
    if config.max_inbound_connections == 0 {
        return invalid("max_inbound_connections must be positive".into());
    }
    Ok(())
}

// ----- the stream seam -------------------------------------------------------------

/// A peer socket with an optional read deadline: while one is set, every read waits at
/// most until it (the socket's read timeout is set to what is left before each read), so
/// a whole handshake, TLS included, has one deadline however the bytes trickle in.
#[derive(Debug)]
struct DeadlineSocket {
    tcp: TcpStream,
    read_deadline: Option<Instant>,
}

impl DeadlineSocket {
    /// Sets the socket's read timeout to what is left before the deadline, if one is set.
    fn arm_deadline(&mut self) -> io::Result<()> {
        if let Some(deadline) = self.read_deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake deadline passed",
                ));
            }
            self.tcp.set_read_timeout(Some(left))?;
        }
        Ok(())
    }

    /// `recv(2)` into possibly uninitialized memory, under the deadline like `read`.
    fn recv_uninit(&mut self, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
        self.arm_deadline()?;
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call (a
        // unique borrow); recv writes at most that many into it and returns how many
        // it wrote, or -1 (then nothing is claimed written).
        let read = unsafe {
            libc::recv(
                self.tcp.as_raw_fd(),
                buf.as_mut_ptr().cast::<libc::c_void>(),
                buf.len(),
                0,
            )
        };
        // A negative count is the -1 of a failure (errno says which; EINTR and EAGAIN
        // come out as `Interrupted` and `WouldBlock`, as from `TcpStream::read`).
        usize::try_from(read).map_err(|_| io::Error::last_os_error())
    }
}

impl Read for DeadlineSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm_deadline()?;
        self.tcp.read(buf)
    }
}

impl Write for DeadlineSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.tcp.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// One peer connection's byte stream: plain TCP, or TLS (rustls) over it. Blocking I/O
/// either way; each connection is used by one thread only.
enum PeerStream {
    Plain(DeadlineSocket),
    TlsServer(Box<rustls::StreamOwned<rustls::ServerConnection, DeadlineSocket>>),
    TlsClient(Box<rustls::StreamOwned<rustls::ClientConnection, DeadlineSocket>>),
}

/// How many bytes of a batch a TLS sender hands to rustls at once (TLS copies into
/// records anyway; this bounds the staging buffer).
const TLS_WRITE_CHUNK_BYTES: usize = 256 << 10;

impl PeerStream {
    fn socket_mut(&mut self) -> &mut DeadlineSocket {
        match self {
            PeerStream::Plain(socket) => socket,
            PeerStream::TlsServer(tls) => &mut tls.sock,
            PeerStream::TlsClient(tls) => &mut tls.sock,
        }
    }

    /// Sets (or, with `None`, clears) the read deadline.
    fn set_read_deadline(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        let socket = self.socket_mut();
        socket.read_deadline = deadline;
        if deadline.is_none() {
            socket.tcp.set_read_timeout(None)?;
        }
        Ok(())
    }

    /// The certificate the other side presented (TLS, once its handshake is done).
    fn peer_certificate(&self) -> Option<rustls::pki_types::CertificateDer<'static>> {
        let certs = match self {
            PeerStream::Plain(_) => None,
            PeerStream::TlsServer(tls) => tls.conn.peer_certificates(),
            PeerStream::TlsClient(tls) => tls.conn.peer_certificates(),
        }?;
        certs.first().map(|cert| cert.clone().into_owned())
    }

    fn is_tls(&self) -> bool {
        !matches!(self, PeerStream::Plain(_))
    }

    /// Writes all of `slices`, in order: one vectored write per up to 1024 slices on
    /// plain TCP; through `staging` in bounded chunks on TLS (rustls' stream would turn
    /// each small slice into its own record).
    fn write_slices(&mut self, slices: &[&[u8]], staging: &mut Vec<u8>) -> io::Result<()> {
        match self {
            PeerStream::Plain(socket) => write_all_vectored(&mut socket.tcp, slices),
            tls => {
                staging.clear();
                for slice in slices {
                    if staging.len() + slice.len() > TLS_WRITE_CHUNK_BYTES && !staging.is_empty() {
                        tls.write_all(staging)?;
                        staging.clear();
                    }
                    if slice.len() >= TLS_WRITE_CHUNK_BYTES {
                        tls.write_all(slice)?;
                    } else {
                        staging.extend_from_slice(slice);
                    }
                }
                if !staging.is_empty() {
                    tls.write_all(staging)?;
                }
                tls.flush()
            }
        }
    }
}

// SAFETY: on a plain stream (the only one `can_read_uninit` admits) `read_uninit` is
// `recv_uninit`, which returns only counts recv(2) reports as written into `buf`; a TLS
// stream refuses without touching `buf`.
unsafe impl ReadUninit for PeerStream {
    fn can_read_uninit(&self) -> bool {
        matches!(self, PeerStream::Plain(_))
    }

    fn read_uninit(&mut self, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
        match self {
            PeerStream::Plain(socket) => socket.recv_uninit(buf),
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a TLS stream reads only into initialized memory",
            )),
        }
    }
}

impl Read for PeerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            PeerStream::Plain(socket) => socket.read(buf),
            PeerStream::TlsServer(tls) => tls.read(buf),
            PeerStream::TlsClient(tls) => tls.read(buf),
        }
    }
}

impl Write for PeerStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            PeerStream::Plain(socket) => socket.write(buf),
            PeerStream::TlsServer(tls) => tls.write(buf),
            PeerStream::TlsClient(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            PeerStream::Plain(socket) => socket.flush(),
            PeerStream::TlsServer(tls) => tls.flush(),
            PeerStream::TlsClient(tls) => tls.flush(),
        }
    }
}

/// Sends one small transport frame (handshake) and flushes it.
fn send_frame(stream: &mut PeerStream, msg_type: u8, payload: &[u8]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    encode_frame(msg_type, 0, payload, usize::MAX, &mut frame)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))?;
    stream.write_all(&frame)?;
    stream.flush()
}

/// Socket options of every peer connection, both directions: no Nagle delay, keepalive,
/// `TCP_USER_TIMEOUT` and a write timeout (see [`TransportConfig`]).
fn configure_peer_socket(stream: &TcpStream, config: &TransportConfig) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(Duration::from_millis(config.write_timeout_ms.max(1))))?;
    let socket = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_millis(config.keepalive_idle_ms.max(1000)))
        .with_interval(Duration::from_millis(
            config.keepalive_interval_ms.max(1000),
        ))
        .with_retries(KEEPALIVE_PROBES);
    socket.set_tcp_keepalive(&keepalive)?;
    socket.set_tcp_user_timeout(Some(Duration::from_millis(
        config.tcp_user_timeout_ms.max(1),
    )))?;
    Ok(())
}

// ----- the dialer ------------------------------------------------------------------

/// Why dialing a peer failed.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("peer refused the handshake ({reason:?}): {text}")]
    Rejected { reason: RejectReason, text: String },
    #[error("peer did not authenticate: {0}")]
    Unauthenticated(&'static str),
    #[error("unexpected handshake answer of type {0:#04x}")]
    UnexpectedAnswer(u8),
    #[error("transport is stopping")]
    Stopping,
}

/// The outbound side for one peer, run on its own thread.
struct PeerSender {
    shared: Arc<Shared>,
    peer: NodeId,
    addr: SocketAddr,
    queue: Receiver<OutboundMessage>,
    counters: Arc<PeerCounters>,
}

/// An established outbound connection.
struct Connection {
    stream: PeerStream,
    socket_id: u64,
}

impl PeerSender {
    fn run(self) {
        let config = &self.shared.config;
        let initial_backoff = Duration::from_millis(config.reconnect_initial_backoff_ms.max(1));
        let max_backoff = Duration::from_millis(config.reconnect_max_backoff_ms.max(1));
        let mut backoff = initial_backoff;
        let mut failures_in_a_row: u64 = 0;
        let mut connection: Option<Connection> = None;
        let mut batch: Vec<OutboundMessage> = Vec::new();
        let mut headers: Vec<[u8; FRAME_HEADER_BYTES]> = Vec::new();
        let mut staging: Vec<u8> = Vec::new();
        while !self.shared.is_stopping() {
            if connection.is_none() {
                match self.dial() {
                    Ok(established) => {
                        failures_in_a_row = 0;
                        backoff = initial_backoff;
                        self.counters.connected.store(true, Ordering::Relaxed);
                        self.counters
                            .connections_established
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            node_id = config.node_id,
                            peer = self.peer,
                            addr = %self.addr,
                            tls = established.stream.is_tls(),
                            "peer connected (outbound)"
                        );
                        connection = Some(established);
                    }
                    Err(DialError::Stopping) => break,
                    Err(error) => {
                        if let DialError::Rejected { .. } | DialError::Unauthenticated(_) = error {
                            self.counters
                                .handshakes_rejected
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(node_id = config.node_id, peer = self.peer, addr = %self.addr, %error, "peer refused our connection");
                        } else if failures_in_a_row == 0 {
                            tracing::warn!(node_id = config.node_id, peer = self.peer, addr = %self.addr, %error, "cannot reach peer; retrying with backoff");
                        } else {
                            tracing::debug!(node_id = config.node_id, peer = self.peer, %error, "reconnect failed");
                        }
                        failures_in_a_row += 1;
                        // Messages queued for an unreachable peer are stale: drop them.
                        let dropped = self.queue.try_iter().count() as u64;
                        self.counters
                            .dropped_messages
                            .fetch_add(dropped, Ordering::Relaxed);
                        if self.queue_closed() {
                            break;
                        }
                        self.shared.sleep(backoff);
                        backoff = (backoff * 2).min(max_backoff);
                        continue;
                    }
                }
            }
            // Block for the first message, then take everything else already queued.
            match self.queue.recv() {
                Ok(message) => batch.push(message),
                Err(_) => break, // transport handle dropped the queue: shutting down
            }
            while batch.len() < config.max_messages_per_write {
                match self.queue.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            let Some(open) = connection.as_mut() else {
                continue;
            };
            match write_batch(
                &mut open.stream,
                &batch,
                &mut headers,
                &mut staging,
                config.max_frame_payload_bytes,
            ) {
                Ok(()) => {
                    self.counters
                        .sent_messages
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                Err(error) => {
                    self.counters
                        .dropped_messages
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if !self.shared.is_stopping() {
                        tracing::info!(node_id = config.node_id, peer = self.peer, %error, "peer disconnected (outbound)");
                    }
                    self.counters.connected.store(false, Ordering::Relaxed);
                    if let Some(closed) = connection.take() {
                        self.shared.unregister(closed.socket_id);
                    }
                }
            }
            batch.clear();
        }
        self.counters.connected.store(false, Ordering::Relaxed);
        if let Some(closed) = connection.take() {
            self.shared.unregister(closed.socket_id);
        }
    }

    fn queue_closed(&self) -> bool {
        // A disconnected, empty channel reports Disconnected on try_recv.
        matches!(
            self.queue.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// Connects, runs the handshake (TLS first if configured) within one deadline.
    fn dial(&self) -> Result<Connection, DialError> {
        let config = &self.shared.config;
        let tcp = TcpStream::connect_timeout(
            &self.addr,
            Duration::from_millis(config.connect_timeout_ms.max(1)),
        )?;
        let socket_id = self.shared.register(&tcp).ok_or(DialError::Stopping)?;
        let result = configure_peer_socket(&tcp, config)
            .map_err(DialError::from)
            .and_then(|()| {
                let socket = DeadlineSocket {
                    tcp,
                    read_deadline: Some(
                        Instant::now() + Duration::from_millis(config.handshake_timeout_ms.max(1)),
                    ),
                };
                let stream = match &config.tls {
                    None => PeerStream::Plain(socket),
                    Some(tls) => PeerStream::TlsClient(Box::new(rustls::StreamOwned::new(
                        tls.connect(self.peer)?,
                        socket,
                    ))),
                };
                self.handshake(stream)
            });
        match result {
            Ok(stream) => Ok(Connection { stream, socket_id }),
            Err(error) => {
                self.shared.unregister(socket_id);
                Err(error)
            }
        }
    }

    /// HELLO, then ACCEPT (no secret) or CHALLENGE → PROOF → ACCEPT with the acceptor's
    /// proof (secret). Returns the stream with its read deadline cleared.
    fn handshake(&self, mut stream: PeerStream) -> Result<PeerStream, DialError> {
        let config = &self.shared.config;
        let hello = Hello {
            version: HANDSHAKE_VERSION,
            cluster_id: config.cluster_id,
            from_node: config.node_id,
            to_node: self.peer,
            nonce: new_nonce(),
            client_addr: config.advertised_client_addr.clone(),
            incarnation: config.incarnation,
        };
        let hello_payload = hello.encode();
        send_frame(&mut stream, MSG_HELLO, &hello_payload)?;
        let mut reader = FrameReader::new(stream, MAX_HANDSHAKE_FRAME_PAYLOAD_BYTES);
        let answer = reader.read_frame()?;
        match (answer.msg_type, &config.cluster_secret) {
            (MSG_ACCEPT, None) => {}
            (MSG_ACCEPT, Some(_)) => {
                return Err(DialError::Unauthenticated(
                    "it accepted without a challenge (it has no cluster secret)",
                ))
            }
            (MSG_CHALLENGE, None) => {
                return Err(DialError::Unauthenticated(
                    "it requires a cluster secret and this node has none",
                ))
            }
            (MSG_CHALLENGE, Some(secret)) => {
                let nonce = decode_challenge(&answer.payload)
                    .ok_or(DialError::UnexpectedAnswer(MSG_CHALLENGE))?;
                let proof = secret.dialer_proof(&hello_payload, &nonce);
                send_frame(reader.get_mut(), MSG_PROOF, &proof)?;
                let verdict = reader.read_frame()?;
                match verdict.msg_type {
                    MSG_ACCEPT => {
                        if !secret.verify_acceptor_proof(&hello_payload, &nonce, &verdict.payload) {
                            return Err(DialError::Unauthenticated(
                                "its proof of the cluster secret is wrong",
                            ));
                        }
                    }
                    MSG_REJECT => return Err(rejected(&verdict)),
                    other => return Err(DialError::UnexpectedAnswer(other)),
                }
            }
            (MSG_REJECT, _) => return Err(rejected(&answer)),
            (other, _) => return Err(DialError::UnexpectedAnswer(other)),
        }
        let mut stream = reader.into_inner();
        if stream.is_tls() {
            let members = self.shared.members();
            let names_peer = stream
                .peer_certificate()
                .is_some_and(|cert| names_exactly(&cert, self.peer, &members));
            if !names_peer {
                return Err(DialError::Unauthenticated(
                    "its certificate does not name exactly the node dialed",
                ));
            }
        }
        stream.set_read_deadline(None)?;
        Ok(stream)
    }
}

fn rejected(frame: &Frame) -> DialError {
    let (reason, text) = decode_reject(&frame.payload);
    DialError::Rejected { reason, text }
}

/// Frames every message of `batch` and writes them all (vectored on plain TCP).
fn write_batch(
    stream: &mut PeerStream,
    batch: &[OutboundMessage],
    headers: &mut Vec<[u8; FRAME_HEADER_BYTES]>,
    staging: &mut Vec<u8>,
    max_payload_bytes: usize,
) -> io::Result<()> {
    headers.clear();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(4);
    for message in batch {
        parts.clear();
        parts.extend(message.payload_parts.iter().map(|p| p.as_ref()));
        // try_send checked the length, so this cannot fail.
        let header = encode_frame_header(message.msg_type, 0, &parts, max_payload_bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        headers.push(header);
    }
    let mut slices: Vec<&[u8]> = Vec::with_capacity(batch.len() * 2);
    for (header, message) in headers.iter().zip(batch) {
        slices.push(header);
        slices.extend(message.payload_parts.iter().map(|p| p.as_ref()));
    }
    stream.write_slices(&slices, staging)
}

// ----- the acceptor ----------------------------------------------------------------

impl Shared {
    /// Every member id this node knows, itself included (for certificate name checks).
    fn members(&self) -> Vec<NodeId> {
        let mut members: Vec<NodeId> = self.known_peers.read().iter().copied().collect();
        members.push(self.config.node_id);
        members
    }
}

/// Holds one place of `Shared::inbound_open`; gives it back when dropped.
struct InboundSlot(Arc<Shared>);

impl Drop for InboundSlot {
    fn drop(&mut self) {
        self.0.inbound_open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    /// Takes a place for a new inbound connection, or `None` at the cap.
    fn take_inbound_slot(self: &Arc<Self>) -> Option<InboundSlot> {
        let cap = self.config.max_inbound_connections;
        self.inbound_open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < cap).then_some(open + 1)
            })
            .ok()
            .map(|_| InboundSlot(Arc::clone(self)))
    }
}

fn listen_loop(shared: Arc<Shared>, listener: TcpListener, inbound: Arc<dyn InboundSink>) {
    loop {
        let accepted = listener.accept();
        if shared.is_stopping() {
            break;
        }
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(node_id = shared.config.node_id, %error, "accept failed");
                shared.sleep(Duration::from_millis(50));
                continue;
            }
        };
        // Within the descriptor reserve, refuse first: the WAL must always get a
        // descriptor (segment create, directory fsync), or the node would stop.
        if !crate::fd_budget::process().admit() {
            let refused = shared
                .inbound
                .refused_over_cap
                .fetch_add(1, Ordering::Relaxed);
            if refused == 0 {
                tracing::warn!(node_id = shared.config.node_id, %remote, "open descriptors are within the reserve of the limit; closing new peer connections at once (counted, logged once)");
            }
            drop(stream);
            continue;
        }
        let Some(slot) = shared.take_inbound_slot() else {
            // Closed at once: past the cap a connection costs no thread and no buffer.
            let refused = shared
                .inbound
                .refused_over_cap
                .fetch_add(1, Ordering::Relaxed);
            if refused == 0 {
                tracing::warn!(node_id = shared.config.node_id, %remote, cap = shared.config.max_inbound_connections, "too many inbound peer connections; closing new ones at once (counted, logged once)");
            }
            drop(stream);
            continue;
        };
        let Some(socket_id) = shared.register(&stream) else {
            break;
        };
        let reader_shared = Arc::clone(&shared);
        let reader_inbound = Arc::clone(&inbound);
        let spawned = std::thread::Builder::new()
            .name(format!("peer-recv-{}", shared.config.node_id))
            .spawn(move || {
                let _slot = slot;
                serve_inbound(&reader_shared, stream, remote, socket_id, &reader_inbound);
                reader_shared.unregister(socket_id);
            });
        let mut readers = shared.reader_threads.lock();
        readers.retain(|h| !h.is_finished());
        match spawned {
            Ok(handle) => readers.push(handle),
            Err(error) => {
                drop(readers);
                tracing::error!(%error, "cannot spawn peer reader thread; closing connection");
                shared.unregister(socket_id);
            }
        }
    }
}

/// How an inbound handshake failed.
enum Refusal {
    /// The dialer went away before sending anything (also the shutdown wake-up).
    Quiet,
    /// The deadline passed.
    TimedOut(String),
    /// A bad frame before the handshake passed.
    BadFrame(String),
    /// A read or TLS failure.
    Failed(String),
    /// The check, the proof or the certificate failed: answered with this REJECT.
    Rejected {
        reason: RejectReason,
        log: String,
        text: String,
    },
}

/// Runs the acceptor side of one connection: handshake, then frames into the sink.
fn serve_inbound(
    shared: &Shared,
    tcp: TcpStream,
    remote: SocketAddr,
    socket_id: u64,
    inbound: &Arc<dyn InboundSink>,
) {
    let config = &shared.config;
    let node_id = config.node_id;
    if let Err(error) = configure_peer_socket(&tcp, config) {
        tracing::warn!(node_id, %remote, %error, "cannot configure peer socket; closing");
        return;
    }
    let socket = DeadlineSocket {
        tcp,
        read_deadline: Some(
            Instant::now() + Duration::from_millis(config.handshake_timeout_ms.max(1)),
        ),
    };
    let stream = match &config.tls {
        None => PeerStream::Plain(socket),
        Some(tls) => match tls.accept() {
            Ok(conn) => PeerStream::TlsServer(Box::new(rustls::StreamOwned::new(conn, socket))),
            Err(error) => {
                tracing::warn!(node_id, %remote, %error, "cannot start TLS; closing");
                return;
            }
        },
    };
    let mut reader = uninit_frame_reader(stream, MAX_HANDSHAKE_FRAME_PAYLOAD_BYTES);
    let hello = match accept_handshake(shared, &mut reader) {
        Ok(hello) => hello,
        Err(refusal) => {
            count_refusal(shared, remote, &mut reader, refusal);
            return;
        }
    };
    reader.set_max_payload_bytes(config.max_frame_payload_bytes);
    if reader.get_mut().set_read_deadline(None).is_err() {
        return;
    }
    let peer = hello.from_node;
    inbound.peer_identified(peer, hello.incarnation, &hello.client_addr);
    shared.peer_client_addrs.set(peer, hello.client_addr);
    InboundCounters::bump(&shared.inbound.accepted_connections);
    // A newer connection from the same peer replaces the old one (the peer reconnected;
    // with a secret or TLS, only a connection that authenticated gets here).
    if let Some(older) = shared.inbound_by_peer.lock().insert(peer, socket_id) {
        shared.unregister(older);
    }
    tracing::info!(node_id, peer, %remote, "peer connected (inbound)");
    let reason = receive_frames(shared, &mut reader, peer, inbound);
    {
        let mut by_peer = shared.inbound_by_peer.lock();
        if by_peer.get(&peer) == Some(&socket_id) {
            by_peer.remove(&peer);
        }
    }
    tracing::info!(node_id, peer, %remote, reason = %reason, "peer disconnected (inbound)");
}

/// Counts and logs a refused handshake; answers a REJECT where there is one to give.
fn count_refusal(
    shared: &Shared,
    remote: SocketAddr,
    reader: &mut FrameReader<PeerStream>,
    refusal: Refusal,
) {
    let node_id = shared.config.node_id;
    let counters = &shared.inbound;
    match refusal {
        Refusal::Quiet => {}
        Refusal::TimedOut(why) => {
            InboundCounters::bump(&counters.handshake_timeouts);
            tracing::warn!(node_id, %remote, %why, "closing inbound connection: handshake deadline passed");
        }
        Refusal::BadFrame(why) => {
            InboundCounters::bump(&counters.closed_for_bad_frames);
            InboundCounters::bump(&counters.bad_frames_before_handshake);
            tracing::warn!(node_id, %remote, %why, "closing inbound connection before handshake");
        }
        Refusal::Failed(why) => {
            InboundCounters::bump(&counters.rejected_handshakes);
            tracing::warn!(node_id, %remote, %why, "refused peer connection");
        }
        Refusal::Rejected { reason, log, text } => {
            InboundCounters::bump(&counters.rejected_handshakes);
            tracing::warn!(node_id, %remote, ?reason, %log, "refused peer connection");
            let _ = send_frame(reader.get_mut(), MSG_REJECT, &encode_reject(reason, &text));
        }
    }
}

fn read_handshake_frame(reader: &mut FrameReader<PeerStream>) -> Result<Frame, Refusal> {
    reader.read_frame().map_err(|error| match error {
        FrameError::Eof => Refusal::Quiet,
        FrameError::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            Refusal::TimedOut(io.to_string())
        }
        FrameError::Io(io) => Refusal::Failed(format!("before the handshake passed: {io}")),
        other => Refusal::BadFrame(other.to_string()),
    })
}

/// The acceptor's handshake: HELLO and its check, the certificate name (TLS), and with a
/// secret the challenge and proof. On a node with a secret every refusal is the same
/// `Refused` without text, sent only after the proof (so nothing, not even which check
/// failed, reaches a dialer without the secret).
fn accept_handshake(
    shared: &Shared,
    reader: &mut FrameReader<PeerStream>,
) -> Result<Hello, Refusal> {
    let config = &shared.config;
    let first = read_handshake_frame(reader)?;
    let secret = config.cluster_secret.as_ref();
    let refuse = |reason: RejectReason, log: String| match secret {
        Some(_) => Refusal::Rejected {
            reason: RejectReason::Refused,
            log,
            text: String::new(),
        },
        None => Refusal::Rejected {
            reason,
            text: log.clone(),
            log,
        },
    };
    if first.msg_type != MSG_HELLO {
        return Err(refuse(
            RejectReason::MalformedHello,
            format!("expected HELLO, got message type {:#04x}", first.msg_type),
        ));
    }
    let Some(hello) = Hello::decode(&first.payload) else {
        return Err(refuse(
            RejectReason::MalformedHello,
            "HELLO payload has the wrong size".to_string(),
        ));
    };
    if hello.cluster_id == ASK_CLUSTER_ID && secret.is_none() {
        return Err(answer_cluster_id_question(shared, reader, &hello));
    }
    let verdict = check_hello(&hello, config.cluster_id, config.node_id, |peer| {
        shared.known_peers.read().contains(&peer)
    })
    .and_then(|()| check_incarnation(shared, &hello))
    .and_then(|()| check_certificate(shared, reader.get_ref(), hello.from_node));
    let Some(secret) = secret else {
        return match verdict {
            Ok(()) => {
                send_frame(reader.get_mut(), MSG_ACCEPT, &[])
                    .map_err(|error| Refusal::Failed(error.to_string()))?;
                Ok(hello)
            }
            Err((reason, text)) => Err(refuse(reason, text)),
        };
    };
    if hello.version < NONCE_HANDSHAKE_VERSION {
        return Err(refuse(
            RejectReason::VersionMismatch,
            format!(
                "handshake version {} cannot answer a challenge",
                hello.version
            ),
        ));
    }
    // Challenge whatever the verdict, so the dialer cannot tell which part failed.
    let nonce = new_nonce();
    send_frame(reader.get_mut(), MSG_CHALLENGE, &nonce)
        .map_err(|error| Refusal::Failed(error.to_string()))?;
    let answer = read_handshake_frame(reader)?;
    let proof_ok = answer.msg_type == MSG_PROOF
        && secret.verify_dialer_proof(&first.payload, &nonce, &answer.payload);
    match (verdict, proof_ok) {
        (Ok(()), true) => {
            let proof = secret.acceptor_proof(&first.payload, &nonce);
            send_frame(reader.get_mut(), MSG_ACCEPT, &proof)
                .map_err(|error| Refusal::Failed(error.to_string()))?;
            Ok(hello)
        }
        (Err((reason, text)), _) => Err(refuse(reason, text)),
        (Ok(()), false) => Err(refuse(
            RejectReason::Refused,
            format!(
                "node {} did not prove the cluster secret (wrong or missing secret)",
                hello.from_node
            ),
        )),
    }
}

/// Tells a new member that asks (`cluster_id.rs`) this node's cluster id, then closes;
/// its certificate must name the node it claims (TLS). Never on a node with a secret.
fn answer_cluster_id_question(
    shared: &Shared,
    reader: &mut FrameReader<PeerStream>,
    hello: &Hello,
) -> Refusal {
    let config = &shared.config;
    let checked = check_cluster_id_question(hello, config.node_id)
        .and_then(|()| check_certificate(shared, reader.get_ref(), hello.from_node));
    if let Err((reason, text)) = checked {
        return Refusal::Rejected {
            reason,
            log: text.clone(),
            text,
        };
    }
    let answer = config.cluster_id.to_le_bytes();
    match send_frame(reader.get_mut(), MSG_CLUSTER_ID, &answer) {
        Ok(()) => {
            tracing::info!(
                node_id = config.node_id,
                asker = hello.from_node,
                "told a new member the cluster id"
            );
            Refusal::Quiet
        }
        Err(error) => Refusal::Failed(error.to_string()),
    }
}

/// Refuses a member id presenting another incarnation than the one recorded for it.
fn check_incarnation(shared: &Shared, hello: &Hello) -> Result<(), (RejectReason, String)> {
    let recorded = shared
        .recorded_incarnations
        .read()
        .get(&hello.from_node)
        .copied();
    match recorded {
        Some(recorded) if recorded != hello.incarnation => {
            shared.rejected_incarnations.fetch_add(1, Ordering::Relaxed);
            Err((
                RejectReason::IncarnationMismatch,
                format!(
                    "node {} is recorded with incarnation {recorded:#x} but presents {:#x}: \
                     a node whose directory was emptied must be added as a new member",
                    hello.from_node, hello.incarnation
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// With TLS, the dialer's certificate must name exactly the node its HELLO claims.
fn check_certificate(
    shared: &Shared,
    stream: &PeerStream,
    claimed: NodeId,
) -> Result<(), (RejectReason, String)> {
    if !stream.is_tls() {
        return Ok(());
    }
    let members = shared.members();
    match stream.peer_certificate() {
        Some(cert) if names_exactly(&cert, claimed, &members) => Ok(()),
        _ => Err((
            RejectReason::UnknownSender,
            format!("the TLS certificate does not name exactly node {claimed}"),
        )),
    }
}

/// Moves frames into the inbound queue until the connection ends; returns why it ended.
fn receive_frames(
    shared: &Shared,
    reader: &mut FrameReader<PeerStream>,
    peer: NodeId,
    inbound: &Arc<dyn InboundSink>,
) -> String {
    loop {
        let frame = match reader.read_frame() {
            Ok(frame) => frame,
            Err(FrameError::Eof) => return "connection closed by peer".to_string(),
            Err(FrameError::Io(error)) => return format!("read failed: {error}"),
            Err(error) => {
                InboundCounters::bump(&shared.inbound.closed_for_bad_frames);
                tracing::warn!(node_id = shared.config.node_id, peer, %error, "closing connection on bad frame");
                return format!("bad frame: {error}");
            }
        };
        if frame.msg_type >= FIRST_RESERVED_MSG_TYPE {
            InboundCounters::bump(&shared.inbound.closed_for_bad_frames);
            tracing::warn!(
                node_id = shared.config.node_id,
                peer,
                msg_type = frame.msg_type,
                "closing connection on reserved message type after handshake"
            );
            return format!("reserved message type {:#04x}", frame.msg_type);
        }
        let message = InboundMessage {
            from: peer,
            msg_type: frame.msg_type,
            payload: frame.payload,
        };
        if !inbound.deliver(message) {
            return if shared.is_stopping() {
                "transport stopping".to_string()
            } else {
                "inbound consumer gone".to_string()
            };
        }
        InboundCounters::bump(&shared.inbound.received_messages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_pair() -> (DeadlineSocket, DeadlineSocket) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let dialed = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let socket = |tcp| DeadlineSocket {
            tcp,
            read_deadline: None,
        };
        (socket(dialed), socket(accepted))
    }

    /// Mutual TLS between node 1 (dialer) and node 2 (acceptor), one CA.
    fn tls_pair() -> (PeerStream, PeerStream) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let ca = params.self_signed(&ca_key).expect("self-signed");
        let tls_for = |node: u64| {
            let params =
                rcgen::CertificateParams::new(vec![format!("node-{node}.tally")]).expect("params");
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &ca, &ca_key).expect("sign");
            let (cert, key) = (cert.pem(), key.serialize_pem());
            let ca_pem = ca.pem();
            PeerTls::from_pem(
                cert.as_bytes(),
                key.as_bytes(),
                ca_pem.as_bytes(),
                node,
                &[1, 2],
            )
            .expect("TLS config")
        };
        let (dialed, accepted) = tcp_pair();
        let client = tls_for(1).connect(2).expect("client session");
        let server = tls_for(2).accept().expect("server session");
        (
            PeerStream::TlsClient(Box::new(rustls::StreamOwned::new(client, dialed))),
            PeerStream::TlsServer(Box::new(rustls::StreamOwned::new(server, accepted))),
        )
    }

    /// Payload sizes from empty to beyond a reader chunk, in an order that makes frames
    /// straddle chunk ends.
    fn payload_sizes() -> Vec<usize> {
        (0..400usize)
            .map(|i| match i % 9 {
                0 => 0,
                1..=4 => (i * 53) % 700,
                5 | 6 => 9_000 + i * 211,
                7 => 70_000 + i,
                _ => [300_000, 1_100_000][(i / 9) % 2],
            })
            .collect()
    }

    fn payload(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|at| (i * 13 + at * 101) as u8).collect()
    }

    /// Writes every frame (batches of 1..=7 through `write_slices`, some byte by byte),
    /// reads them back through the transport's frame reader, and checks them all, held
    /// until the end.
    fn frames_cross(mut writer: PeerStream, reader: PeerStream, reads_uninit: bool) {
        let sizes = payload_sizes();
        let mut reader = uninit_frame_reader(reader, DEFAULT_MAX_FRAME_PAYLOAD_BYTES);
        assert_eq!(reader.reads_uninit(), reads_uninit);
        std::thread::scope(|scope| {
            let sizes = &sizes;
            scope.spawn(move || {
                let mut staging = Vec::new();
                let mut i = 0;
                while i < sizes.len() {
                    let batch = (i % 7 + 1).min(sizes.len() - i);
                    let payloads: Vec<Vec<u8>> =
                        (i..i + batch).map(|k| payload(k, sizes[k])).collect();
                    let headers: Vec<[u8; FRAME_HEADER_BYTES]> = payloads
                        .iter()
                        .enumerate()
                        .map(|(k, p)| {
                            encode_frame_header((i + k) as u8 % 0x40, 0, &[p], usize::MAX)
                                .expect("header")
                        })
                        .collect();
                    if i % 5 == 0 {
                        for (header, p) in headers.iter().zip(&payloads) {
                            for byte in header.iter().chain(p.iter().take(40)) {
                                writer.write_all(&[*byte]).expect("write byte");
                                writer.flush().expect("flush");
                            }
                            writer.write_all(&p[p.len().min(40)..]).expect("write rest");
                        }
                        writer.flush().expect("flush");
                    } else {
                        let mut slices: Vec<&[u8]> = Vec::new();
                        for (header, p) in headers.iter().zip(&payloads) {
                            slices.push(header);
                            slices.push(p);
                        }
                        writer
                            .write_slices(&slices, &mut staging)
                            .expect("write batch");
                    }
                    i += batch;
                }
                close_cleanly(&mut writer);
            });
            let mut held = Vec::new();
            for (i, &len) in sizes.iter().enumerate() {
                let frame = reader.read_frame().expect("frame");
                assert_eq!(frame.msg_type, i as u8 % 0x40, "frame {i}");
                assert_eq!(frame.payload.len(), len, "frame {i}");
                held.push(frame.payload);
            }
            assert!(matches!(reader.read_frame(), Err(FrameError::Eof)));
            drop(reader); // the writer drains until this end closes
            for (i, (payload_read, &len)) in held.iter().zip(sizes.iter()).enumerate() {
                assert!(payload_read[..] == payload(i, len)[..], "frame {i} changed");
            }
        });
    }

    /// Ends the stream so the reader sees a clean end: TLS close_notify, then a TCP
    /// half-close, then the writer drains what it never read (TLS session tickets; had
    /// they stayed unread, closing would reset the connection under the reader).
    fn close_cleanly(writer: &mut PeerStream) {
        if let PeerStream::TlsClient(tls) = writer {
            tls.conn.send_close_notify();
            tls.flush().expect("close_notify");
        }
        let socket = writer.socket_mut();
        socket.tcp.shutdown(Shutdown::Write).expect("half-close");
        let mut sink = [0u8; 4096];
        while matches!(socket.tcp.read(&mut sink), Ok(n) if n > 0) {}
    }

    #[test]
    fn frames_of_every_size_cross_a_plain_stream_read_into_uninitialized_capacity() {
        let (dialed, accepted) = tcp_pair();
        frames_cross(PeerStream::Plain(dialed), PeerStream::Plain(accepted), true);
    }

    #[test]
    fn frames_of_every_size_cross_a_tls_stream_read_into_zeroed_capacity() {
        let (client, server) = tls_pair();
        frames_cross(client, server, false);
    }

    #[test]
    fn a_handshake_deadline_also_bounds_reads_into_uninitialized_capacity() {
        let (_dialed, accepted) = tcp_pair();
        let mut stream = PeerStream::Plain(accepted);
        stream
            .set_read_deadline(Some(Instant::now() + Duration::from_millis(50)))
            .expect("deadline");
        let mut reader = uninit_frame_reader(stream, MAX_HANDSHAKE_FRAME_PAYLOAD_BYTES);
        match reader.read_frame() {
            Err(FrameError::Io(error)) => assert!(
                matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ),
                "{error}"
            ),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
}
