//! tally-net: everything of Tally that touches a socket.
//!
//! * [`resp`]: RESP2 codec for the Redis-compatible client port.
//! * [`frame`]: the checksummed frame format peers exchange.
//! * [`codec`]: Raft messages as frame payloads, entry data carried without copies.
//! * [`handshake`]: the HELLO/ACCEPT/REJECT exchange that opens every peer connection.
//! * [`peer_tls`]: mutual TLS between members (rustls), node ids bound to certificates.
//! * [`cluster_id`]: the cluster id stored in a member's directory.
//! * [`transport`]: long-lived peer connections with handshake, pipelined vectored
//!   sending, bounded queues and reconnects.
//! * [`node_transport`]: the glue between the node runtime and the transport.
//! * [`client_port`]: the RESP2 server clients talk to.
//! * [`commands`]: Redis argument vectors parsed into KV commands.
//! * [`replica`]: one replica of any state machine (peer transport + node), no front end.
//! * [`expiry_sweep`]: the leader's purge of expired keys by replicated entries.
//! * [`server`]: one member as a library (binary: `tally-server`; the benchmark embeds
//!   three).
//!
//! The Raft core (in `tally-engine`) never sees sockets; the node runtime moves opaque
//! `(message type, payload)` pairs between it and this crate.

pub mod client_port;
pub mod cluster_id;
pub mod codec;
pub mod commands;
pub mod expiry_sweep;
pub mod fd_budget;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod node_transport;
pub mod peer_tls;
pub mod replica;
pub mod resp;
pub mod server;
pub mod tls;
pub mod transport;
