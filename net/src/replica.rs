//! One replica of any state machine: peer transport + node runtime, wired together,
//! with no client front end.
//!
//! This is the seam a database builder links against: bring a [`StateMachine`], bind a
//! peer listener, call [`Replica::start`], and talk to the node through its
//! [`NodeHandle`] from whatever front end the database has (an HTTP API, a library call,
//! a custom protocol). [`crate::server::Server`] is this plus the RESP client port over
//! the KV state machine. Walkthrough: `docs/EMBEDDING.md`; example: `examples/ledger`.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tally_engine::driver::SnapshotPolicy;
use tally_engine::runtime::{Node, NodeHandle, NodeOptions};
use tally_engine::state_machine::StateMachine;

use crate::codec::CodecLimits;
use crate::node_transport::{GlueCounters, NetTransport, RaftInbound};
use crate::server::{ServerError, TICK_MS};
use crate::transport::{InboundSink, PeerClientAddrs, PeerTransport, TransportConfig};

/// What one replica needs to start.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// This member's id (nonzero, unique in the cluster).
    pub id: u64,
    /// Directory of this member's WAL and snapshots (created on first start, recovered
    /// on restart).
    pub dir: PathBuf,
    /// The other members and the address this member dials for each.
    pub peers: Vec<(u64, SocketAddr)>,
    /// Cluster id every member must share (checked in the peer handshake).
    pub cluster_id: u64,
    /// Base election timeout (the core randomizes above it); a multiple of
    /// [`TICK_MS`].
    pub election_timeout_ms: u64,
    /// Leader heartbeat interval; well below the election timeout.
    pub heartbeat_ms: u64,
    /// When to snapshot and how much log to keep.
    pub snapshot: SnapshotPolicy,
    /// Address advertised to peers as this member's client address (shown to clients
    /// that reach a follower); empty if the front end has none.
    pub advertised_client_addr: String,
}

impl ReplicaConfig {
    /// Defaults: 500 ms election timeout, 50 ms heartbeats, the default snapshot policy.
    pub fn new(id: u64, dir: impl Into<PathBuf>, peers: Vec<(u64, SocketAddr)>) -> ReplicaConfig {
        ReplicaConfig {
            id,
            dir: dir.into(),
            peers,
            cluster_id: 0x7a11,
            election_timeout_ms: 500,
            heartbeat_ms: 50,
            snapshot: SnapshotPolicy::default(),
            advertised_client_addr: String::new(),
        }
    }

    fn validate(&self) -> Result<(), ServerError> {
        if self.id == 0 || self.peers.iter().any(|(id, _)| *id == 0) {
            return Err(ServerError::Config("node ids must be nonzero".into()));
        }
        if self.peers.iter().any(|(id, _)| *id == self.id) {
            return Err(ServerError::Config(format!(
                "the peer list names this node's own id {}",
                self.id
            )));
        }
        let election_ticks = self.election_timeout_ms / TICK_MS;
        let heartbeat_ticks = (self.heartbeat_ms / TICK_MS).max(1);
        if election_ticks < 2 || heartbeat_ticks >= election_ticks {
            return Err(ServerError::Config(format!(
                "the heartbeat ({} ms) must be well below the election timeout ({} ms), \
                 both at least {TICK_MS} ms",
                self.heartbeat_ms, self.election_timeout_ms
            )));
        }
        Ok(())
    }

    fn node_options(&self) -> NodeOptions {
        let mut voters: Vec<u64> = self.peers.iter().map(|(id, _)| *id).collect();
        voters.push(self.id);
        voters.sort_unstable();
        let mut options = NodeOptions::new(self.id, voters, &self.dir);
        options.tick_interval = Duration::from_millis(TICK_MS);
        options.raft.election_timeout_ticks = self.election_timeout_ms / TICK_MS;
        options.raft.heartbeat_interval_ticks = (self.heartbeat_ms / TICK_MS).max(1);
        options.snapshot = self.snapshot;
        options
    }
}

/// Starts the peer transport (its reader threads deliver into the node), then the node
/// over it, and attaches the two: what every member does, whatever its front end.
/// `fallback_addrs` are dialed for members the configuration has no address for yet.
pub(crate) fn start_member<M>(
    transport_config: TransportConfig,
    peer_listener: TcpListener,
    options: NodeOptions,
    state_machine: M,
    fallback_addrs: Vec<(u64, SocketAddr)>,
) -> Result<(Node<M::Response>, SocketAddr, PeerClientAddrs), ServerError>
where
    M: StateMachine + 'static,
{
    let id = transport_config.node_id;
    let counters = Arc::new(GlueCounters::default());
    let inbound = Arc::new(RaftInbound::new(
        id,
        CodecLimits::default(),
        Arc::clone(&counters),
    ));
    let peer_transport = PeerTransport::start_with_sink(
        transport_config,
        peer_listener,
        Arc::clone(&inbound) as Arc<dyn InboundSink>,
    )
    .map_err(|error| ServerError::Transport(error.to_string()))?;
    let peer_addr = peer_transport.local_addr();
    let peer_client_addrs = peer_transport.peer_client_addrs();
    let transport = NetTransport::new(peer_transport, counters).with_fallback_addrs(fallback_addrs);
    let node = Node::start(options, state_machine, transport)
        .map_err(|source| ServerError::Node { id, source })?;
    inbound.attach(node.handle());
    Ok((node, peer_addr, peer_client_addrs))
}

/// A running replica. Dropping it without [`Replica::shutdown`] stops it too.
pub struct Replica<R> {
    id: u64,
    node: Node<R>,
    peer_addr: SocketAddr,
    peer_client_addrs: PeerClientAddrs,
}

impl<R: Send + 'static> Replica<R> {
    /// Starts a replica of `state_machine` on an already-bound peer listener. The
    /// directory's WAL and newest usable snapshot are recovered first; members dial each
    /// other lazily, so start order does not matter.
    pub fn start<M>(
        config: ReplicaConfig,
        peer_listener: TcpListener,
        state_machine: M,
    ) -> Result<Replica<R>, ServerError>
    where
        M: StateMachine<Response = R> + 'static,
    {
        config.validate()?;
        let mut transport_config =
            TransportConfig::new(config.cluster_id, config.id, config.peers.clone());
        transport_config.advertised_client_addr = config.advertised_client_addr.clone();
        let (node, peer_addr, peer_client_addrs) = start_member(
            transport_config,
            peer_listener,
            config.node_options(),
            state_machine,
            config.peers.clone(),
        )?;
        Ok(Replica {
            id: config.id,
            node,
            peer_addr,
            peer_client_addrs,
        })
    }

    /// This member's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The bound peer address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Client addresses the other members advertised (for redirecting clients).
    pub fn peer_client_addrs(&self) -> PeerClientAddrs {
        self.peer_client_addrs.clone()
    }

    /// The node's handle: propose, read, status, snapshots.
    pub fn handle(&self) -> NodeHandle<R> {
        self.node.handle()
    }

    /// True once the node stopped on its own (fail-stop).
    pub fn has_failed(&self) -> bool {
        self.node.has_failed()
    }

    /// Stops the node and joins its threads; returns its fatal error, if it had one.
    pub fn shutdown(self) -> Result<(), ServerError> {
        let id = self.id;
        self.node
            .shutdown()
            .map_err(|source| ServerError::Node { id, source })
    }
}
