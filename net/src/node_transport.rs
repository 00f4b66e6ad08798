//! Glue between the node runtime (`tally_engine::runtime`) and the peer transport.
//!
//! Why it is a separate piece: the runtime only knows the [`Transport`] trait (raft
//! thread → peers) and [`NodeHandle::deliver`] (peers → raft thread); the transport
//! only knows opaque `(type, payload)` frames. This module converts between the two
//! with the codec and applies the one policy both sides agree on: **never block the
//! raft thread and never take the process down for a peer's sake.**
//!
//! * Outbound: [`NetTransport::send`] encodes each message (entry payloads referenced,
//!   not copied) and calls `try_send`; a full peer queue drops the message and counts
//!   it (Raft retransmits on its own schedule).
//! * Inbound: [`RaftInbound`] is the transport's [`InboundSink`]: the connection's
//!   reader thread decodes each frame and hands the message straight to the raft
//!   thread (no queue and thread in between: one wake-up per message fewer). A message
//!   that does not decode is logged and dropped (the peer connection itself stays up:
//!   the frame was intact, only its content is wrong, and a newer peer version might
//!   send a type we do not know); so is one that finds the raft queue full or arrives
//!   before the node started (Raft retransmits).
//! * Membership: when the configuration in effect changes, [`NetTransport`] dials new
//!   members (at the peer address the configuration records, else the operator's
//!   `--peer` one), stops dialing removed ones, and hands the recorded incarnations to
//!   the handshake check; [`RaftInbound`] tells the node what each peer presented in
//!   its HELLO, so the leader records it.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tally_engine::raft::{Configuration, MemberInfo, Message, NodeId};
use tally_engine::runtime::{NodeHandle, Transport, TransportCounters};

use crate::codec::{decode_inbound, CodecLimits, MessageEncoder};
use crate::transport::{InboundMessage, InboundSink, PeerSendError, PeerTransport};

/// Counters of the glue, shared with whoever reports them (INFO, logs).
#[derive(Debug, Default)]
pub struct GlueCounters {
    /// Messages handed to a peer's queue.
    pub sent_messages: AtomicU64,
    /// Messages dropped because a peer's queue was full or the peer is unknown.
    pub dropped_outbound: AtomicU64,
    /// Inbound messages handed to the raft thread.
    pub delivered_messages: AtomicU64,
    /// Inbound messages that did not decode (logged and dropped).
    pub undecodable_messages: AtomicU64,
    /// Inbound messages dropped because the raft thread's queue was full.
    pub dropped_inbound: AtomicU64,
}

/// The runtime's [`Transport`] over TCP. Owned by the raft thread; dropping it (when
/// the node stops) shuts the peer transport down, which ends the inbound pump.
pub struct NetTransport {
    peers: PeerTransport,
    counters: Arc<GlueCounters>,
    /// Addresses the operator gave (`--peer`), used for members whose configuration
    /// entry records none.
    fallback_addrs: HashMap<NodeId, SocketAddr>,
    /// Encodes a broadcast's entries once for all followers.
    encoder: MessageEncoder,
}

impl NetTransport {
    /// Wraps a started peer transport.
    pub fn new(peers: PeerTransport, counters: Arc<GlueCounters>) -> NetTransport {
        NetTransport {
            peers,
            counters,
            fallback_addrs: HashMap::new(),
            encoder: MessageEncoder::new(),
        }
    }

    /// Addresses to dial members at when their configuration entry records none.
    pub fn with_fallback_addrs(
        mut self,
        addrs: impl IntoIterator<Item = (NodeId, SocketAddr)>,
    ) -> NetTransport {
        self.fallback_addrs = addrs.into_iter().collect();
        self
    }

    fn address_of(&self, id: NodeId, info: &MemberInfo) -> Option<SocketAddr> {
        let recorded = (!info.peer_addr.is_empty())
            .then(|| info.peer_addr.to_socket_addrs().ok()?.next())
            .flatten();
        recorded.or_else(|| self.fallback_addrs.get(&id).copied())
    }
}

impl Transport for NetTransport {
    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            let to = message.to;
            match self.peers.try_send(to, self.encoder.encode(&message)) {
                Ok(()) => {
                    self.counters.sent_messages.fetch_add(1, Ordering::Relaxed);
                }
                Err(PeerSendError::Full(_)) | Err(PeerSendError::Disconnected(_)) => {
                    self.counters
                        .dropped_outbound
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    self.counters
                        .dropped_outbound
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(to, %error, "cannot send Raft message; dropped");
                }
            }
        }
    }

    fn configuration_changed(&mut self, configuration: &Configuration) {
        let own = self.peers.node_id();
        let members = configuration.members();
        for id in members.iter().copied().filter(|id| *id != own) {
            if self.peers.has_peer(id) {
                continue;
            }
            let info = configuration.info_of(id);
            match self.address_of(id, &info) {
                Some(addr) => match self.peers.add_peer(id, addr) {
                    Ok(()) => tracing::info!(peer = id, %addr, "dialing new member"),
                    Err(error) => tracing::warn!(peer = id, %error, "cannot add member"),
                },
                None => tracing::warn!(
                    peer = id,
                    recorded = %info.peer_addr,
                    "no usable peer address for a member; give it with --peer"
                ),
            }
        }
        // A node that knows no configuration yet (joining) keeps its --peer list.
        if !members.is_empty() {
            for id in self.peers.peer_ids() {
                if !members.contains(&id) {
                    tracing::info!(peer = id, "member removed: no longer dialed");
                    self.peers.remove_peer(id);
                }
            }
        }
        self.peers.set_recorded_incarnations(
            configuration
                .info
                .iter()
                .map(|(id, info)| (*id, info.incarnation)),
        );
    }

    fn counters(&self) -> TransportCounters {
        let glue = &self.counters;
        TransportCounters {
            dropped_outbound: glue.dropped_outbound.load(Ordering::Relaxed),
            dropped_inbound: glue.dropped_inbound.load(Ordering::Relaxed)
                + glue.undecodable_messages.load(Ordering::Relaxed),
            rejected_incarnations: self.peers.inbound_stats().rejected_incarnations,
        }
    }

    fn peer_connected(&self, peer: NodeId) -> Option<bool> {
        self.peers
            .has_peer(peer)
            .then(|| self.peers.is_connected(peer))
    }
}

/// Decodes inbound frames on the transport's reader threads and delivers them to the
/// raft thread. Created before the node (the node needs the transport), so the handle
/// is attached afterwards with [`RaftInbound::attach`].
pub struct RaftInbound<R> {
    node_id: u64,
    handle: OnceLock<NodeHandle<R>>,
    /// Peers identified before the handle was attached (handed over by `attach`).
    /// Locked around attaching, so none is lost between the check and the hand-over.
    early_identities: std::sync::Mutex<Vec<(NodeId, MemberInfo)>>,
    limits: CodecLimits,
    counters: Arc<GlueCounters>,
}

impl<R: Send + 'static> RaftInbound<R> {
    /// Glue for node `node_id` decoding with `limits`; drops (and counts in `counters`)
    /// whatever arrives before [`RaftInbound::attach`].
    pub fn new(node_id: u64, limits: CodecLimits, counters: Arc<GlueCounters>) -> Self {
        RaftInbound {
            node_id,
            handle: OnceLock::new(),
            early_identities: std::sync::Mutex::new(Vec::new()),
            limits,
            counters,
        }
    }

    /// Starts delivering to `handle` (messages before this are dropped and counted).
    pub fn attach(&self, handle: NodeHandle<R>) {
        let mut early = self
            .early_identities
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (id, info) in early.drain(..) {
            handle.member_observed(id, info);
        }
        let _ = self.handle.set(handle);
    }
}

impl<R: Send + 'static> InboundSink for RaftInbound<R> {
    fn deliver(&self, received: InboundMessage) -> bool {
        match decode_inbound(&received, &self.limits) {
            Ok(message) => {
                let delivered = self
                    .handle
                    .get()
                    .is_some_and(|handle| handle.deliver(message));
                let counter = if delivered {
                    &self.counters.delivered_messages
                } else {
                    &self.counters.dropped_inbound
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.counters
                    .undecodable_messages
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    node_id = self.node_id,
                    from = received.from,
                    msg_type = received.msg_type,
                    %error,
                    "dropping undecodable Raft message"
                );
            }
        }
        true
    }

    fn peer_identified(&self, peer: NodeId, incarnation: u64, client_addr: &str) {
        let info = MemberInfo {
            peer_addr: String::new(),
            client_addr: client_addr.to_string(),
            incarnation,
        };
        let mut early = self
            .early_identities
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match self.handle.get() {
            Some(handle) => handle.member_observed(peer, info),
            // Bounded: one entry per accepted handshake before the node started.
            None if early.len() < 1024 => early.push((peer, info)),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crossbeam_channel::Sender;
    use tally_engine::kv::{KvLimits, KvStateMachine};
    use tally_engine::raft::{MessageBody, RequestVote};
    use tally_engine::runtime::{Node, NodeOptions};

    use super::*;
    use crate::codec::encode_message;

    /// Records what the raft thread sends.
    struct CapturingTransport(Sender<Message>);

    impl Transport for CapturingTransport {
        fn send(&mut self, messages: Vec<Message>) {
            for message in messages {
                let _ = self.0.send(message);
            }
        }
    }

    #[test]
    fn undecodable_inbound_messages_are_dropped_and_valid_ones_reach_the_raft_thread() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (sent_tx, sent_rx) = crossbeam_channel::unbounded();
        // Node 1 of {1, 2}; a huge election timeout keeps it a quiet follower.
        let mut options = NodeOptions::new(1, vec![1, 2], dir.path());
        options.raft.election_timeout_ticks = 1_000_000;
        let node = Node::start(
            options,
            KvStateMachine::new(KvLimits::default()),
            CapturingTransport(sent_tx),
        )
        .expect("start node");
        let counters = Arc::new(GlueCounters::default());
        let sink = RaftInbound::new(1, CodecLimits::default(), Arc::clone(&counters));
        let garbage = [
            (0x01, vec![0xff; 3]), // truncated AppendEntries
            (0x77, vec![0; 40]),   // unknown type
        ];
        for (msg_type, payload) in garbage {
            assert!(sink.deliver(InboundMessage {
                from: 2,
                msg_type,
                payload: payload.into(),
            }));
        }
        // A valid PreVote from node 2, but on a connection the handshake says is node 3:
        // refused as a sender mismatch.
        let pre_vote = Message {
            from: 2,
            to: 1,
            term: 1,
            body: MessageBody::PreVote(RequestVote {
                last_log_index: 0,
                last_log_term: 0,
                leadership_transfer: false,
            }),
        };
        let encoded = encode_message(&pre_vote);
        let payload: Vec<u8> = encoded
            .payload_parts
            .iter()
            .flat_map(|part| part.iter().copied())
            .collect();
        let inbound = |from| InboundMessage {
            from,
            msg_type: encoded.msg_type,
            payload: payload.clone().into(),
        };
        // Before the node is attached a valid message is dropped (and counted).
        assert!(sink.deliver(inbound(2)));
        assert_eq!(counters.dropped_inbound.load(Ordering::Relaxed), 1);
        sink.attach(node.handle());
        assert!(sink.deliver(inbound(3)));
        assert!(sink.deliver(inbound(2)));
        // The node answers the valid PreVote: it was delivered.
        let answer = sent_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the node answers the PreVote");
        assert_eq!((answer.from, answer.to), (1, 2));
        assert!(matches!(answer.body, MessageBody::PreVoteResponse(_)));
        let started = Instant::now();
        while counters.delivered_messages.load(Ordering::Relaxed) < 1 {
            assert!(started.elapsed() < Duration::from_secs(60));
            std::thread::yield_now();
        }
        assert_eq!(counters.undecodable_messages.load(Ordering::Relaxed), 3);
        assert_eq!(counters.delivered_messages.load(Ordering::Relaxed), 1);
        node.shutdown().expect("clean shutdown");
    }
}
