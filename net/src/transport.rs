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
//! * **No async runtime.** Plain threads and blocking sockets; shutdown sets a flag, shuts
//!   down every registered socket (unblocking reads and writes), wakes the listener and
//!   joins every thread.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::frame::{
    encode_frame, encode_frame_header, write_all_vectored, FrameError, FrameReader,
    DEFAULT_MAX_FRAME_PAYLOAD_BYTES, FRAME_HEADER_BYTES,
};
use crate::handshake::{
    check_hello, decode_reject, encode_reject, Hello, RejectReason, FIRST_RESERVED_MSG_TYPE,
    HANDSHAKE_VERSION, MSG_ACCEPT, MSG_HELLO, MSG_REJECT,
};

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
    /// Bound on each side's wait for the other's handshake frame.
    pub handshake_timeout_ms: u64,
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
            advertised_client_addr: String::new(),
            incarnation: 0,
        }
    }
}

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
    TooLarge { len: usize, max: usize },
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
    /// Connections refused at the handshake.
    pub rejected_handshakes: u64,
    /// Connections closed because a frame was bad (magic, version, length, checksum,
    /// truncation, reserved type).
    pub closed_for_bad_frames: u64,
    /// Messages delivered to the inbound queue.
    pub received_messages: u64,
    /// Connections refused because the peer's incarnation differs from the recorded one.
    pub rejected_incarnations: u64,
}

/// The client addresses peers advertised in their HELLOs, by node id. Cloneable and
/// cheap to read from any thread (the client port reads it for `-NOTLEADER <addr>`).
#[derive(Debug, Clone, Default)]
pub struct PeerClientAddrs {
    by_node: Arc<RwLock<HashMap<NodeId, String>>>,
}

impl PeerClientAddrs {
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
    /// Wakes backoff sleeps at shutdown.
    wake_lock: Mutex<()>,
    wake: Condvar,
    accepted_connections: AtomicU64,
    rejected_handshakes: AtomicU64,
    closed_for_bad_frames: AtomicU64,
    received_messages: AtomicU64,
    /// Client addresses learned from accepted HELLOs.
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
            wake_lock: Mutex::new(()),
            wake: Condvar::new(),
            accepted_connections: AtomicU64::new(0),
            rejected_handshakes: AtomicU64::new(0),
            closed_for_bad_frames: AtomicU64::new(0),
            received_messages: AtomicU64::new(0),
            peer_client_addrs: PeerClientAddrs::default(),
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
        let s = &self.shared;
        InboundStats {
            accepted_connections: s.accepted_connections.load(Ordering::Relaxed),
            rejected_handshakes: s.rejected_handshakes.load(Ordering::Relaxed),
            closed_for_bad_frames: s.closed_for_bad_frames.load(Ordering::Relaxed),
            received_messages: s.received_messages.load(Ordering::Relaxed),
            rejected_incarnations: s.rejected_incarnations.load(Ordering::Relaxed),
        }
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
    Ok(())
}

/// Why dialing a peer failed.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("peer refused the handshake ({reason:?}): {text}")]
    Rejected { reason: RejectReason, text: String },
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
    stream: TcpStream,
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
                            "peer connected (outbound)"
                        );
                        connection = Some(established);
                    }
                    Err(DialError::Stopping) => break,
                    Err(error) => {
                        if let DialError::Rejected { .. } = error {
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

    /// Connects, sends HELLO, and waits for ACCEPT.
    fn dial(&self) -> Result<Connection, DialError> {
        let config = &self.shared.config;
        let stream = TcpStream::connect_timeout(
            &self.addr,
            Duration::from_millis(config.connect_timeout_ms.max(1)),
        )?;
        let socket_id = self.shared.register(&stream).ok_or(DialError::Stopping)?;
        let result = self.handshake(&stream);
        match result {
            Ok(()) => Ok(Connection { stream, socket_id }),
            Err(error) => {
                self.shared.unregister(socket_id);
                Err(error)
            }
        }
    }

    fn handshake(&self, stream: &TcpStream) -> Result<(), DialError> {
        let config = &self.shared.config;
        stream.set_nodelay(true)?;
        let hello = Hello {
            version: HANDSHAKE_VERSION,
            cluster_id: config.cluster_id,
            from_node: config.node_id,
            to_node: self.peer,
            client_addr: config.advertised_client_addr.clone(),
            incarnation: config.incarnation,
        };
        let mut frame = Vec::new();
        encode_frame(MSG_HELLO, 0, &hello.encode(), usize::MAX, &mut frame)?;
        (&*stream).write_all(&frame)?;
        stream.set_read_timeout(Some(Duration::from_millis(
            config.handshake_timeout_ms.max(1),
        )))?;
        // The answer is tiny; a small limit keeps a confused peer from making us allocate.
        let mut reader = FrameReader::new(stream, 4096);
        let answer = reader.read_frame()?;
        match answer.msg_type {
            MSG_ACCEPT => Ok(()),
            MSG_REJECT => {
                let (reason, text) = decode_reject(&answer.payload);
                Err(DialError::Rejected { reason, text })
            }
            other => Err(DialError::UnexpectedAnswer(other)),
        }
    }
}

/// Frames every message of `batch` and writes them all with vectored writes.
fn write_batch(
    stream: &mut TcpStream,
    batch: &[OutboundMessage],
    headers: &mut Vec<[u8; FRAME_HEADER_BYTES]>,
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
    write_all_vectored(stream, &slices)
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
        let Some(socket_id) = shared.register(&stream) else {
            break;
        };
        let reader_shared = Arc::clone(&shared);
        let reader_inbound = Arc::clone(&inbound);
        let spawned = std::thread::Builder::new()
            .name(format!("peer-recv-{}", shared.config.node_id))
            .spawn(move || {
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

/// Runs the acceptor side of one connection: handshake, then frames into the queue.
fn serve_inbound(
    shared: &Shared,
    stream: TcpStream,
    remote: SocketAddr,
    socket_id: u64,
    inbound: &Arc<dyn InboundSink>,
) {
    let config = &shared.config;
    let node_id = config.node_id;
    let _ = stream.set_nodelay(true);
    if let Err(error) = stream.set_read_timeout(Some(Duration::from_millis(
        config.handshake_timeout_ms.max(1),
    ))) {
        tracing::warn!(node_id, %remote, %error, "cannot set handshake timeout; closing");
        return;
    }
    let mut reader = FrameReader::new(&stream, config.max_frame_payload_bytes);
    let first = match reader.read_frame() {
        Ok(frame) => frame,
        Err(FrameError::Eof) => return, // e.g. the shutdown wake-up connection
        Err(error) => {
            shared.closed_for_bad_frames.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node_id, %remote, %error, "closing inbound connection before handshake");
            return;
        }
    };
    let verdict = if first.msg_type != MSG_HELLO {
        Err((
            RejectReason::MalformedHello,
            format!("expected HELLO, got message type {:#04x}", first.msg_type),
        ))
    } else {
        match Hello::decode(&first.payload) {
            None => Err((
                RejectReason::MalformedHello,
                "HELLO payload has the wrong size".to_string(),
            )),
            Some(hello) => check_hello(&hello, config.cluster_id, node_id, |peer| {
                shared.known_peers.read().contains(&peer)
            })
            .and_then(|()| check_incarnation(shared, &hello))
            .map(|()| hello),
        }
    };
    let hello = match verdict {
        Ok(hello) => hello,
        Err((reason, text)) => {
            shared.rejected_handshakes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node_id, %remote, ?reason, %text, "refused peer connection");
            let mut answer = Vec::new();
            if encode_frame(
                MSG_REJECT,
                0,
                &encode_reject(reason, &text),
                usize::MAX,
                &mut answer,
            )
            .is_ok()
            {
                let _ = (&stream).write_all(&answer);
            }
            return;
        }
    };
    let peer = hello.from_node;
    inbound.peer_identified(peer, hello.incarnation, &hello.client_addr);
    shared.peer_client_addrs.set(peer, hello.client_addr);
    let mut accept = Vec::new();
    if encode_frame(MSG_ACCEPT, 0, &[], usize::MAX, &mut accept).is_err()
        || (&stream).write_all(&accept).is_err()
        || stream.set_read_timeout(None).is_err()
    {
        return;
    }
    shared.accepted_connections.fetch_add(1, Ordering::Relaxed);
    // A newer connection from the same peer replaces the old one (the peer reconnected).
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

/// Moves frames into the inbound queue until the connection ends; returns why it ended.
fn receive_frames(
    shared: &Shared,
    reader: &mut FrameReader<&TcpStream>,
    peer: NodeId,
    inbound: &Arc<dyn InboundSink>,
) -> String {
    loop {
        let frame = match reader.read_frame() {
            Ok(frame) => frame,
            Err(FrameError::Eof) => return "connection closed by peer".to_string(),
            Err(FrameError::Io(error)) => return format!("read failed: {error}"),
            Err(error) => {
                shared.closed_for_bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node_id = shared.config.node_id, peer, %error, "closing connection on bad frame");
                return format!("bad frame: {error}");
            }
        };
        if frame.msg_type >= FIRST_RESERVED_MSG_TYPE {
            shared.closed_for_bad_frames.fetch_add(1, Ordering::Relaxed);
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
        shared.received_messages.fetch_add(1, Ordering::Relaxed);
    }
}
