//! What every member runs whatever it serves: peer transport + node runtime, attached
//! to each other (`start_member`), and [`Replica`], a member with no front end.
//!
//! Members are started by [`crate::server::ServerBuilder`] (any state machine, any
//! front end, the same peer security, identity and membership as `tally-server`).
//! Walkthrough: `docs/EMBEDDING.md`; example: `examples/ledger`.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use tally_engine::runtime::{Node, NodeOptions};
use tally_engine::state_machine::StateMachine;

use crate::codec::CodecLimits;
use crate::node_transport::{GlueCounters, NetTransport, RaftInbound};
use crate::server::{Server, ServerError};
use crate::transport::{InboundSink, PeerClientAddrs, PeerTransport, TransportConfig};

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

/// A member with no front end: the embedder talks to the node through
/// [`Server::handle`] in-process. Started with
/// `ServerBuilder::new(config, state_machine).start(peer_listener)`.
pub type Replica<R> = Server<R, ()>;
