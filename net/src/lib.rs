//! tally-net: everything of Tally that touches a socket.
//!
//! * [`resp`]: RESP2 codec for the Redis-compatible client port.
//! * [`frame`]: the checksummed frame format peers exchange.
//! * [`codec`]: Raft messages as frame payloads, entry data carried without copies.
//! * [`handshake`]: the HELLO/ACCEPT/REJECT exchange that opens every peer connection.
//! * [`peer_tls`]: mutual TLS between members (rustls), node ids bound to certificates.
//! * [`cluster_id`]: the cluster id stored in a member's directory.
//! * [`identity`]: the identity file (cluster id, node id, incarnation) of a member's
//!   directory.
//! * [`transport`]: long-lived peer connections with handshake, pipelined vectored
//!   sending, bounded queues and reconnects.
//! * [`node_transport`]: the glue between the node runtime and the transport.
//! * [`client_port`]: the RESP2 server clients talk to.
//! * [`commands`]: Redis argument vectors parsed into KV commands.
//! * [`tls`]: TLS on the client port from PEM files (rustls).
//! * [`limits`]: one set of size limits, end to end (commands, log entries, client
//!   buffers, connections).
//! * [`fd_budget`]: the file-descriptor budget listeners keep so the WAL never runs out.
//! * [`metrics`]: `GET /metrics` in the Prometheus text format.
//! * [`replica`]: one replica of any state machine (peer transport + node), no front end.
//! * [`expiry_sweep`]: the leader's purge of expired keys by replicated entries.
//! * [`server`]: one member as a library (binary: `tally-server`; the benchmark embeds
//!   three).
//!
//! The Raft core (in `tally-engine`) never sees sockets; the node runtime moves opaque
//! `(message type, payload)` pairs between it and this crate.
//!
//! # Example: a 3-member KV cluster on localhost
//!
//! Three members in one process, every listener on port 0 (the OS picks free ports);
//! a client speaks RESP to the leader over a plain [`std::net::TcpStream`]. A member
//! that does not lead answers writes `-NOTLEADER <addr>`, so the client asks the
//! leader directly.
//!
//! ```
//! use std::io::{BufRead, BufReader, Read, Write};
//! use std::net::{SocketAddr, TcpListener, TcpStream};
//! use std::time::{Duration, Instant};
//!
//! use tally_engine::raft::Role;
//! use tally_net::server::{Server, ServerConfig};
//!
//! /// Sends one command and reads one reply (simple, error or bulk string).
//! fn call(stream: &mut BufReader<TcpStream>, args: &[&str]) -> std::io::Result<String> {
//!     let mut request = format!("*{}\r\n", args.len());
//!     for arg in args {
//!         request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
//!     }
//!     stream.get_mut().write_all(request.as_bytes())?;
//!     let mut line = String::new();
//!     stream.read_line(&mut line)?;
//!     let line = line.trim_end().to_string();
//!     match line.strip_prefix('$').map(str::parse::<usize>) {
//!         Some(Ok(len)) => {
//!             let mut value = vec![0; len + 2]; // the value and its CRLF
//!             stream.read_exact(&mut value)?;
//!             Ok(String::from_utf8_lossy(&value[..len]).into_owned())
//!         }
//!         _ => Ok(line), // "+OK", "-NOTLEADER ...", "$-1" (nil)
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let root = tempfile::tempdir()?;
//! let bind = || TcpListener::bind("127.0.0.1:0");
//! let peer_listeners = [bind()?, bind()?, bind()?];
//! let peer_addrs: Vec<SocketAddr> =
//!     peer_listeners.iter().map(TcpListener::local_addr).collect::<Result<_, _>>()?;
//!
//! let mut members = Vec::new();
//! for (k, peer_listener) in peer_listeners.into_iter().enumerate() {
//!     let id = k as u64 + 1;
//!     // The other founding members, and where to dial them.
//!     let peers = (1..=3u64)
//!         .filter(|other| *other != id)
//!         .map(|other| (other, peer_addrs[other as usize - 1]))
//!         .collect();
//!     let mut config = ServerConfig::new(id, root.path().join(format!("member-{id}")), peers);
//!     config.client_io_threads = 1;
//!     members.push(Server::start(config, peer_listener, bind()?)?);
//! }
//!
//! // Wait for a leader and talk to it (again, should leadership move meanwhile).
//! let deadline = Instant::now() + Duration::from_secs(60);
//! loop {
//!     assert!(Instant::now() < deadline, "no leader answered");
//!     let Some(leader) = members.iter().find(|m| m.handle().status().role() == Role::Leader)
//!     else {
//!         std::thread::sleep(Duration::from_millis(10));
//!         continue;
//!     };
//!     let mut client = BufReader::new(TcpStream::connect(leader.client_addr())?);
//!     if call(&mut client, &["SET", "greeting", "hello"])? == "+OK" {
//!         assert_eq!(call(&mut client, &["GET", "greeting"])?, "hello");
//!         break;
//!     }
//! }
//!
//! for member in members {
//!     member.shutdown()?;
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

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
