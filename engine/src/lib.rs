//! tally-engine: the sans-IO Raft core, the deterministic cluster simulator,
//! the state-machine interface and the KV state machine Tally ships.
//!
//! # Layers
//!
//! * [`raft`]: one node's consensus state machine, free of I/O: feed it ticks, messages
//!   and proposals, carry out the [`raft::Ready`] it returns (persist, send, apply).
//! * [`driver`]: the production node behaviour around the core (batching, persisting
//!   through the WAL, replies to clients, snapshots, membership), still free of threads
//!   and sockets so that the simulator runs exactly this code.
//! * [`runtime`]: the threaded node: a raft thread running the driver over
//!   `tally-wal`, an apply thread, and a [`runtime::NodeHandle`] to submit requests
//!   from any thread. Peer messages go through a [`runtime::Transport`] you provide
//!   (`tally-net` has the TCP one).
//! * [`state_machine`]: the interface a replicated application implements;
//!   [`kv`] is the Redis-compatible key-value store Tally ships on it, with
//!   exactly-once sessions ([`exactly_once`] has the generic helper).
//! * [`sim`]: a deterministic, seeded simulator of whole clusters with network, disk,
//!   clock and crash faults, checking Raft's safety properties after every step;
//!   [`lincheck`] checks recorded client histories for linearizability.
//!
//! # Example: an in-process 3-node cluster
//!
//! Three real nodes (real WAL on disk, real threads) connected by channels instead of
//! sockets; a `SET` is proposed on the leader and read back linearizably.
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::{Arc, RwLock};
//! use std::time::{Duration, Instant};
//!
//! use bytes::Bytes;
//! use crossbeam_channel::unbounded;
//! use tally_engine::kv::{
//!     encode_request, ClientSession, Command, KvLimits, KvResponse, KvStateMachine,
//! };
//! use tally_engine::raft::{Message, NodeId, Role};
//! use tally_engine::runtime::{Node, NodeHandle, NodeOptions, Reply, ReplyTo, Transport};
//!
//! type Registry = Arc<RwLock<HashMap<NodeId, NodeHandle<KvResponse>>>>;
//!
//! /// Hands each message straight to the destination node.
//! struct Channels(Registry);
//!
//! impl Transport for Channels {
//!     fn send(&mut self, messages: Vec<Message>) {
//!         let nodes = self.0.read().unwrap();
//!         for message in messages {
//!             if let Some(node) = nodes.get(&message.to) {
//!                 node.deliver(message);
//!             }
//!         }
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let registry = Registry::default();
//! let voters: Vec<NodeId> = vec![1, 2, 3];
//! let mut nodes = Vec::new();
//! for &id in &voters {
//!     let options = NodeOptions::new(id, voters.clone(), dir.path().join(format!("node-{id}")));
//!     let state_machine = KvStateMachine::new(KvLimits::default());
//!     let node = Node::start(options, state_machine, Channels(Arc::clone(&registry)))?;
//!     registry.write().unwrap().insert(id, node.handle());
//!     nodes.push(node);
//! }
//!
//! // Encode a command as the KV state machine's log entry; the session makes a
//! // retry of the same request apply at most once.
//! let encode = |sequence: u64, command: &Command<'_>| -> Bytes {
//!     let session = ClientSession { client_id: 1, sequence };
//!     let mut out = Vec::new();
//!     encode_request(Some(session), command, &KvLimits::default(), &mut out)
//!         .expect("fits the limits");
//!     Bytes::from(out)
//! };
//! let set = encode(1, &Command::Set { key: b"greeting", value: b"hello" });
//! let get = encode(2, &Command::Get { key: b"greeting" });
//!
//! // Propose on whichever node leads; retry (same session) until one answers.
//! let (sender, replies) = unbounded::<Reply<KvResponse>>();
//! let deadline = Instant::now() + Duration::from_secs(60);
//! let mut answers = Vec::new();
//! for (request, is_read) in [(set, false), (get, true)] {
//!     loop {
//!         assert!(Instant::now() < deadline, "no answer");
//!         let is_leader = |n: &&Node<KvResponse>| n.handle().status().role() == Role::Leader;
//!         let Some(leader) = nodes.iter().find(is_leader) else {
//!             std::thread::sleep(Duration::from_millis(10));
//!             continue;
//!         };
//!         let handle = leader.handle();
//!         if is_read {
//!             handle.read(request.clone(), ReplyTo::new(0, sender.clone()));
//!         } else {
//!             handle.propose(request.clone(), ReplyTo::new(0, sender.clone()));
//!         }
//!         match replies.recv_timeout(Duration::from_secs(10)) {
//!             Ok(Reply { result: Ok(answer), .. }) => {
//!                 answers.push(answer);
//!                 break;
//!             }
//!             // Not the leader any more, or the outcome is unknown: retry.
//!             _ => std::thread::sleep(Duration::from_millis(10)),
//!         }
//!     }
//! }
//! assert_eq!(answers[0], KvResponse::Ok);
//! assert_eq!(answers[1], KvResponse::Bulk(Some(Bytes::from_static(b"hello"))));
//!
//! for node in nodes {
//!     node.shutdown()?;
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod driver;
pub mod exactly_once;
pub mod kv;
pub mod lincheck;
pub mod raft;
pub mod runtime;
pub mod sim;
pub mod state_machine;
