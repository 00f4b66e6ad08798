//! Peers prove who they are: the cluster secret's challenge-response and mutual TLS.
//!
//! In-process transports on loopback show what reaches the inbound side (the node's
//! core in a server): nothing from a dialer without the secret, with a wrong one, with a
//! certificate of another CA or one naming another node; refusals are counted and say
//! nothing. Real `tally-server` processes show `gen-secret`, the derived cluster id, INFO
//! `peer_handshake_refusals` and a cluster running over mutual TLS with a secret.
//!
//! No timing assertions: deadlines are generous and only bound a broken build.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::Receiver;
use tally_net::cluster_id::{settle_cluster_id, ClusterIdStart};
use tally_net::frame::{encode_frame, FrameReader};
use tally_net::handshake::{
    decode_reject, ClusterSecret, Hello, RejectReason, ASK_CLUSTER_ID, HANDSHAKE_VERSION,
    MSG_CHALLENGE, MSG_HELLO, MSG_PROOF, MSG_REJECT, NONCE_BYTES,
};
use tally_net::peer_tls::PeerTls;
use tally_net::transport::{
    InboundMessage, NodeId, OutboundMessage, PeerTransport, TransportConfig,
};

use common::{wait_until, Cluster, DEADLINE};

const CLUSTER: u64 = 0x51ec;

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind loopback")
}

fn addr(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().expect("local addr")
}

fn secret(byte: u8) -> ClusterSecret {
    ClusterSecret::from_bytes(&[byte; 32]).expect("secret")
}

fn config(node: NodeId, peers: Vec<(NodeId, SocketAddr)>) -> TransportConfig {
    let mut config = TransportConfig::new(CLUSTER, node, peers);
    config.reconnect_max_backoff_ms = 100;
    config
}

fn start(
    config: TransportConfig,
    listener: TcpListener,
) -> (PeerTransport, Receiver<InboundMessage>) {
    PeerTransport::start(config, listener).expect("start transport")
}

fn message(tag: &'static [u8]) -> OutboundMessage {
    OutboundMessage::new(1, Bytes::from_static(tag))
}

/// Keeps queueing `tag` to `to` until `inbound` receives it (the first ones may be
/// dropped while the connection is not up yet).
fn deliver_through(
    from: &PeerTransport,
    to: NodeId,
    inbound: &Receiver<InboundMessage>,
    tag: &'static [u8],
) {
    wait_until("a message gets through", || {
        let _ = from.try_send(to, message(tag));
        inbound
            .recv_timeout(Duration::from_millis(100))
            .ok()
            .filter(|m| m.payload.as_ref() == tag)
    });
}

/// A forger's raw HELLO claiming to be `from`, sent to node 2, with a Raft frame
/// pipelined right behind it (as an attacker would, not waiting for an answer).
fn forge_hello(target: SocketAddr, version: u32, from: NodeId) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(target).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let hello = Hello {
        version,
        cluster_id: CLUSTER,
        from_node: from,
        to_node: 2,
        nonce: [7; NONCE_BYTES],
        client_addr: String::new(),
        incarnation: 0,
    };
    let payload = hello.encode();
    let mut wire = Vec::new();
    encode_frame(MSG_HELLO, 0, &payload, 4096, &mut wire).expect("encode");
    encode_frame(1, 0, b"forged AppendEntries", 4096, &mut wire).expect("encode");
    stream.write_all(&wire).expect("send");
    (stream, payload)
}

fn assert_says_nothing(frame: &tally_net::frame::Frame) {
    assert_eq!(frame.msg_type, MSG_REJECT);
    let (reason, text) = decode_reject(&frame.payload);
    assert_eq!(reason, RejectReason::Refused);
    assert_eq!(text, "", "a refusal on a node with a secret says nothing");
}

#[test]
fn a_dialer_without_the_secret_or_with_a_wrong_one_gets_no_message_in_and_is_counted() {
    let (listener_a, listener_b) = (listener(), listener());
    let addr_b = addr(&listener_b);
    let mut config_b = config(2, vec![(1, addr(&listener_a))]);
    config_b.cluster_secret = Some(secret(1));
    let (b, inbound_b) = start(config_b, listener_b);

    // A raw forger with no secret: it gets a challenge it cannot answer.
    let (mut forger, _) = forge_hello(addr_b, HANDSHAKE_VERSION, 1);
    let mut reader = FrameReader::new(&forger, 4096);
    let challenge = reader.read_frame().expect("a challenge");
    assert_eq!(challenge.msg_type, MSG_CHALLENGE);
    // (The pipelined Raft frame is read as the answer: not a proof.)
    assert_says_nothing(&reader.read_frame().expect("a refusal"));
    let mut rest = Vec::new();
    let _ = forger.read_to_end(&mut rest);
    // An old-version HELLO (no nonce) cannot even be challenged.
    let (old, _) = forge_hello(addr_b, 2, 1);
    assert_says_nothing(
        &FrameReader::new(&old, 4096)
            .read_frame()
            .expect("a refusal"),
    );
    // An unknown sender is refused the same way, after the proof (not before).
    let (unknown, hello) = forge_hello(addr_b, HANDSHAKE_VERSION, 99);
    let mut reader = FrameReader::new(&unknown, 4096);
    let challenge = reader.read_frame().expect("challenged like anyone");
    assert_eq!(challenge.msg_type, MSG_CHALLENGE);
    let nonce: [u8; NONCE_BYTES] = challenge.payload.as_ref().try_into().expect("nonce");
    let mut proof_frame = Vec::new();
    // Even with the right secret, an unknown id is refused.
    encode_frame(
        MSG_PROOF,
        0,
        &secret(1).dialer_proof(&hello, &nonce),
        4096,
        &mut proof_frame,
    )
    .expect("encode");
    (&unknown).write_all(&proof_frame).expect("send proof");
    assert_says_nothing(&reader.read_frame().expect("a refusal"));

    // A member transport with a wrong secret, and one with none.
    let mut wrong = config(1, vec![(2, addr_b)]);
    wrong.cluster_secret = Some(secret(2));
    let (wrong, _) = start(wrong, listener_a);
    wait_until("the wrong secret is refused twice", || {
        (wrong.peer_stats(2).expect("peer").handshakes_rejected >= 2).then_some(())
    });
    for _ in 0..10 {
        let _ = wrong.try_send(2, message(b"from the wrong secret"));
    }
    assert!(!wrong.is_connected(2));
    assert_eq!(wrong.peer_stats(2).expect("peer").sent_messages, 0);
    wrong.shutdown();
    let listener_a = listener();
    let (none, _) = start(config(1, vec![(2, addr_b)]), listener_a);
    wait_until("no secret is refused", || {
        (none.peer_stats(2).expect("peer").handshakes_rejected >= 1).then_some(())
    });
    assert!(!none.is_connected(2));
    none.shutdown();

    let stats = b.inbound_stats();
    assert_eq!(
        stats.received_messages, 0,
        "nothing reached the core: {stats:?}"
    );
    assert_eq!(stats.accepted_connections, 0, "{stats:?}");
    assert!(stats.rejected_handshakes >= 6, "{stats:?}");
    assert!(inbound_b.try_recv().is_err());
    assert!(b.peer_client_addrs().handshake_refusals() >= 6);

    // The member with the right secret gets through.
    let listener_a = listener();
    let mut good = config(1, vec![(2, addr_b)]);
    good.cluster_secret = Some(secret(1));
    let (good, _) = start(good, listener_a);
    deliver_through(&good, 2, &inbound_b, b"authenticated");
    good.shutdown();
    b.shutdown();
}

/// Sends `hello` to `target`, answers the challenge with a proof made with `key` (the
/// right secret: only the HELLO's claims are wrong) and returns the verdict.
fn verdict_for(target: SocketAddr, hello: &Hello, key: &ClusterSecret) -> tally_net::frame::Frame {
    let stream = TcpStream::connect(target).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let payload = hello.encode();
    let mut wire = Vec::new();
    encode_frame(MSG_HELLO, 0, &payload, 4096, &mut wire).expect("encode");
    (&stream).write_all(&wire).expect("send");
    let mut reader = FrameReader::new(&stream, 4096);
    let challenge = reader.read_frame().expect("challenged like anyone");
    assert_eq!(challenge.msg_type, MSG_CHALLENGE, "{hello:?}");
    let nonce: [u8; NONCE_BYTES] = challenge.payload.as_ref().try_into().expect("nonce");
    let mut proof = Vec::new();
    encode_frame(
        MSG_PROOF,
        0,
        &key.dialer_proof(&payload, &nonce),
        4096,
        &mut proof,
    )
    .expect("encode");
    (&stream).write_all(&proof).expect("send proof");
    reader.read_frame().expect("a verdict")
}

#[test]
fn with_a_secret_a_wrong_cluster_a_wrong_target_and_a_cluster_id_question_get_one_silent_refusal() {
    let listener_b = listener();
    let addr_b = addr(&listener_b);
    let mut config_b = config(2, vec![(1, "127.0.0.1:9".parse().expect("addr"))]);
    config_b.cluster_secret = Some(secret(1));
    let (b, inbound_b) = start(config_b, listener_b);
    let right = Hello {
        version: HANDSHAKE_VERSION,
        cluster_id: CLUSTER,
        from_node: 1,
        to_node: 2,
        nonce: [7; NONCE_BYTES],
        client_addr: String::new(),
        incarnation: 0,
    };
    for (what, wrong) in [
        (
            "another cluster",
            Hello {
                cluster_id: CLUSTER + 1,
                ..right.clone()
            },
        ),
        (
            "another target",
            Hello {
                to_node: 3,
                ..right.clone()
            },
        ),
        (
            "an unknown sender",
            Hello {
                from_node: 9,
                ..right.clone()
            },
        ),
        (
            "a cluster id question",
            Hello {
                cluster_id: ASK_CLUSTER_ID,
                ..right.clone()
            },
        ),
    ] {
        let verdict = verdict_for(addr_b, &wrong, &secret(1));
        assert_eq!(verdict.msg_type, MSG_REJECT, "{what}: never the cluster id");
        assert_says_nothing(&verdict);
    }
    // The same exchange with the right claims passes: only the claims made the difference.
    let verdict = verdict_for(addr_b, &right, &secret(1));
    assert_eq!(verdict.msg_type, tally_net::handshake::MSG_ACCEPT);
    assert!(inbound_b.try_recv().is_err());
    assert_eq!(b.inbound_stats().rejected_handshakes, 4);
    b.shutdown();
}

#[test]
fn a_new_member_learns_the_cluster_id_from_a_member_without_a_secret_over_tcp_and_tls() {
    let ca = ca();
    for use_tls in [false, true] {
        let listener_b = listener();
        let addr_b = addr(&listener_b);
        let mut config_b = config(2, vec![(1, "127.0.0.1:9".parse().expect("addr"))]);
        if use_tls {
            config_b.tls = Some(tls(&ca, 2, &ca));
        }
        let (b, inbound_b) = start(config_b, listener_b);
        let dir = tempfile::tempdir().expect("temp dir");
        let asker_tls = use_tls.then(|| tls(&ca, 3, &ca));
        // Node 3 is not a member node 2 knows: a --join node asks before it is added.
        let learned = settle_cluster_id(&ClusterIdStart {
            dir: dir.path(),
            configured: None,
            secret: None,
            node_id: 3,
            peers: &[(2, addr_b)],
            join: true,
            restore: false,
            tls: asker_tls.as_ref(),
        })
        .expect("learned");
        assert_eq!(learned, CLUSTER, "tls: {use_tls}");
        let stored = std::fs::read_to_string(dir.path().join("cluster-id")).expect("stored");
        assert_eq!(stored.trim(), format!("{CLUSTER:#x}"));
        let stats = b.inbound_stats();
        assert_eq!(
            stats.accepted_connections, 0,
            "a question is no connection: {stats:?}"
        );
        assert_eq!(stats.rejected_handshakes, 0, "{stats:?}");
        assert!(inbound_b.try_recv().is_err());
        b.shutdown();
    }
}

#[test]
fn a_forger_claiming_a_connected_members_id_does_not_replace_its_connection() {
    let (listener_a, listener_b) = (listener(), listener());
    let addr_b = addr(&listener_b);
    let mut config_b = config(2, vec![(1, addr(&listener_a))]);
    config_b.cluster_secret = Some(secret(1));
    let (b, inbound_b) = start(config_b, listener_b);
    let mut config_a = config(1, vec![(2, addr_b)]);
    config_a.cluster_secret = Some(secret(1));
    let (a, _) = start(config_a, listener_a);
    deliver_through(&a, 2, &inbound_b, b"before");
    let established = a.peer_stats(2).expect("peer").connections_established;
    for _ in 0..3 {
        let (mut forger, _) = forge_hello(addr_b, HANDSHAKE_VERSION, 1);
        let mut rest = Vec::new();
        let _ = forger.read_to_end(&mut rest);
    }
    wait_until("the forgeries are refused", || {
        (b.inbound_stats().rejected_handshakes >= 3).then_some(())
    });
    a.try_send(2, message(b"after")).expect("queue");
    let after = inbound_b
        .recv_timeout(DEADLINE)
        .expect("the member's connection still works");
    assert_eq!(after.payload.as_ref(), b"after");
    assert_eq!(
        a.peer_stats(2).expect("peer").connections_established,
        established,
        "the member's connection was never closed"
    );
    assert_eq!(b.inbound_stats().accepted_connections, 1);
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_dialer_with_the_secret_refuses_an_acceptor_that_cannot_prove_it() {
    let (listener_a, listener_b) = (listener(), listener());
    let addr_b = addr(&listener_b);
    // The acceptor has no secret (an impostor listening at a member's address).
    let (b, inbound_b) = start(config(2, vec![(1, addr(&listener_a))]), listener_b);
    let mut config_a = config(1, vec![(2, addr_b)]);
    config_a.cluster_secret = Some(secret(1));
    let (a, _) = start(config_a, listener_a);
    wait_until("the dialer refuses", || {
        (a.peer_stats(2).expect("peer").handshakes_rejected >= 1).then_some(())
    });
    for _ in 0..10 {
        let _ = a.try_send(2, message(b"secret data"));
    }
    assert!(!a.is_connected(2));
    assert_eq!(a.peer_stats(2).expect("peer").sent_messages, 0);
    assert!(inbound_b.recv_timeout(Duration::from_millis(300)).is_err());
    a.shutdown();
    b.shutdown();
}

// ----- mutual TLS ------------------------------------------------------------------

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pem: String,
}

fn ca() -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    Ca {
        pem: cert.pem(),
        cert,
        key,
    }
}

/// A certificate and key for `node-<named>.tally`, signed by `ca`.
fn node_cert(ca: &Ca, named: u64) -> (String, String) {
    let params =
        rcgen::CertificateParams::new(vec![format!("node-{named}.tally")]).expect("params");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("sign");
    (cert.pem(), key.serialize_pem())
}

/// TLS for a node whose certificate names `named`, trusting `trusted`.
fn tls(signer: &Ca, named: u64, trusted: &Ca) -> PeerTls {
    let (cert, key) = node_cert(signer, named);
    PeerTls::from_pem(
        cert.as_bytes(),
        key.as_bytes(),
        trusted.pem.as_bytes(),
        named,
        &[1, 2, 3],
    )
    .expect("TLS config")
}

/// Node 2 over TLS (certificate from `ca`), node 1 dialing it with `tls_a`.
fn tls_pair(ca: &Ca, tls_a: PeerTls) -> (PeerTransport, PeerTransport, Receiver<InboundMessage>) {
    let (listener_a, listener_b) = (listener(), listener());
    let addr_b = addr(&listener_b);
    let mut config_b = config(
        2,
        vec![
            (1, addr(&listener_a)),
            (3, "127.0.0.1:9".parse().expect("addr")),
        ],
    );
    config_b.tls = Some(tls(ca, 2, ca));
    let (b, inbound_b) = start(config_b, listener_b);
    let mut config_a = config(1, vec![(2, addr_b)]);
    config_a.tls = Some(tls_a);
    let (a, _) = start(config_a, listener_a);
    (a, b, inbound_b)
}

#[test]
fn mutual_tls_carries_messages_between_members_of_one_ca() {
    let ca = ca();
    let (a, b, inbound_b) = tls_pair(&ca, tls(&ca, 1, &ca));
    deliver_through(&a, 2, &inbound_b, b"over TLS");
    // A large message crosses in several TLS records.
    let big = Bytes::from(vec![0xab; 3 << 20]);
    a.try_send(2, OutboundMessage::new(1, big.clone()))
        .expect("queue");
    let received = inbound_b.recv_timeout(DEADLINE).expect("the big message");
    assert_eq!(received.payload, big);
    assert_eq!(b.inbound_stats().rejected_handshakes, 0);
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let (ca, other) = (ca(), ca());
    // Node 1's certificate is signed by another CA (it trusts the real one).
    let (a, b, inbound_b) = tls_pair(&ca, tls(&other, 1, &ca));
    wait_until("the acceptor refuses the certificate", || {
        (b.inbound_stats().rejected_handshakes >= 2).then_some(())
    });
    for _ in 0..10 {
        let _ = a.try_send(2, message(b"from another CA"));
    }
    assert!(!a.is_connected(2));
    assert!(inbound_b.recv_timeout(Duration::from_millis(300)).is_err());
    assert_eq!(b.inbound_stats().received_messages, 0);
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_certificate_naming_another_node_is_refused_on_both_sides() {
    let ca = ca();
    // Node 1 presents node 3's (valid) certificate.
    let (a, b, inbound_b) = tls_pair(&ca, tls(&ca, 3, &ca));
    wait_until("the acceptor refuses the claim", || {
        (b.inbound_stats().rejected_handshakes >= 2).then_some(())
    });
    for _ in 0..10 {
        let _ = a.try_send(2, message(b"claims node 1"));
    }
    assert!(!a.is_connected(2));
    assert!(inbound_b.recv_timeout(Duration::from_millis(300)).is_err());
    assert_eq!(b.inbound_stats().received_messages, 0);
    a.shutdown();
    b.shutdown();

    // The other way round: the acceptor at node 2's address presents node 3's
    // certificate; the dialer verifies the name of the node it dials and gives up.
    let (listener_a, listener_b) = (listener(), listener());
    let addr_b = addr(&listener_b);
    let mut config_b = config(2, vec![(1, addr(&listener_a))]);
    config_b.tls = Some(tls(&ca, 3, &ca));
    let (b, inbound_b) = start(config_b, listener_b);
    let mut config_a = config(1, vec![(2, addr_b)]);
    config_a.tls = Some(tls(&ca, 1, &ca));
    let (a, _) = start(config_a, listener_a);
    wait_until("the dialer fails twice", || {
        let stats = a.peer_stats(2).expect("peer");
        (stats.connections_established == 0 && b.inbound_stats().rejected_handshakes >= 2)
            .then_some(())
    });
    assert!(!a.is_connected(2));
    assert!(inbound_b.try_recv().is_err());
    a.shutdown();
    b.shutdown();
}

// ----- real processes --------------------------------------------------------------

#[test]
fn gen_secret_writes_a_private_file_once_and_members_derive_one_stored_cluster_id() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = tempfile::tempdir().expect("temp dir");
    let path = root.path().join("secret");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_tally-server"))
            .arg("gen-secret")
            .arg(&path)
            .output()
            .expect("run gen-secret")
    };
    assert!(run().status.success());
    let text = std::fs::read_to_string(&path).expect("read secret");
    assert_eq!(text.trim().len(), 64, "32 bytes as hex");
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!run().status.success(), "gen-secret never overwrites");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), text);

    let mut cluster = Cluster::start_with_stopped(3, |_, _, port| port);
    for member in &mut cluster.members {
        member.secret_file = Some(path.clone());
        member.spawn();
    }
    let leader = cluster.wait_for_leader();
    let expected = ClusterSecret::from_file(&path).expect("load").cluster_id();
    assert_ne!(expected, 0x7a11);
    for member in &cluster.members {
        let stored = std::fs::read_to_string(member.dir.join("cluster-id")).expect("stored id");
        assert_eq!(stored.trim(), format!("{expected:#x}"));
    }
    // A forger on the leader's peer port is refused and counted in INFO.
    let before = cluster
        .member(leader)
        .info_u64("peer_handshake_refusals")
        .expect("INFO");
    let (mut forger, _) = forge_hello_to(cluster.member(leader).peer_port, leader);
    let mut rest = Vec::new();
    let _ = forger.read_to_end(&mut rest);
    wait_until("the refusal shows in INFO", || {
        (cluster.member(leader).info_u64("peer_handshake_refusals")? > before).then_some(())
    });
    let mut client = cluster.member(leader).client();
    assert_eq!(client.call(&["SET", "k", "v"]), common::ok());
    // Restarting a member with another secret is refused: its directory belongs to the
    // first cluster.
    let other = root.path().join("other-secret");
    std::fs::write(&other, ClusterSecret::generate_file_text()).expect("write");
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let member = cluster.member_mut(follower);
    member.sigkill();
    member.secret_file = Some(other);
    member.spawn();
    wait_until("the mismatched member exits", || {
        (!member.is_running()).then_some(())
    });
    let log = std::fs::read_to_string(&member.log).expect("log");
    assert!(log.contains("belongs to cluster"), "{log}");
}

fn wait_until_ready(member: &common::Member) -> String {
    wait_until("the member logs that it is ready", || {
        let log = std::fs::read_to_string(&member.log).ok()?;
        log.contains("tally-server ready").then_some(log)
    })
}

#[test]
fn a_member_without_a_secret_or_tls_says_once_that_its_peer_port_is_open() {
    let mut open = Cluster::start_with_stopped(1, |_, _, port| port);
    open.member_mut(1).secret_file = None;
    open.member_mut(1).spawn();
    let mut secured = Cluster::start_with_stopped(1, |_, _, port| port);
    secured.use_cluster_secret();
    secured.member_mut(1).spawn();

    let log = wait_until_ready(open.member(1));
    let port = open.member(1).peer_port;
    let warning = format!(
        "PEER PORT OPEN: no --cluster-secret-file and no peer TLS, so any process that can reach 127.0.0.1:{port} can act as a cluster member"
    );
    assert_eq!(log.matches("PEER PORT OPEN").count(), 1, "{log}");
    assert!(log.contains(&warning), "{log}");
    assert!(log.contains("NONE (peer port open)"), "{log}");
    let log = wait_until_ready(secured.member(1));
    assert!(!log.contains("PEER PORT OPEN"), "{log}");
    assert!(
        log.contains("peer_auth=\"cluster secret\"") || log.contains("peer_auth=cluster secret"),
        "{log}"
    );
}

/// A forger's HELLO (no secret) to a real member's peer port, claiming a peer's id.
fn forge_hello_to(peer_port: u16, target: u64) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", peer_port)).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let hello = Hello {
        version: HANDSHAKE_VERSION,
        cluster_id: 0x7a11,
        from_node: if target == 1 { 2 } else { 1 },
        to_node: target,
        nonce: [7; NONCE_BYTES],
        client_addr: String::new(),
        incarnation: 0,
    };
    let mut wire = Vec::new();
    encode_frame(MSG_HELLO, 0, &hello.encode(), 4096, &mut wire).expect("encode");
    encode_frame(MSG_PROOF, 0, &[0; 32], 4096, &mut wire).expect("encode");
    stream.write_all(&wire).expect("send");
    (stream, hello.encode())
}

#[test]
fn three_processes_over_mutual_tls_with_a_secret_elect_a_leader_and_replicate() {
    let ca = ca();
    let mut cluster = Cluster::start_with_stopped(3, |_, _, port| port);
    cluster.use_cluster_secret();
    let ca_path = cluster._root.path().join("ca.pem");
    std::fs::write(&ca_path, &ca.pem).expect("write CA");
    for member in &mut cluster.members {
        let (cert, key) = node_cert(&ca, member.id);
        let cert_path = cluster._root.path().join(format!("node-{}.pem", member.id));
        let key_path = cluster._root.path().join(format!("node-{}.key", member.id));
        std::fs::write(&cert_path, cert).expect("write cert");
        std::fs::write(&key_path, key).expect("write key");
        member.extra_args = vec![
            "--peer-tls-cert".into(),
            cert_path.display().to_string(),
            "--peer-tls-key".into(),
            key_path.display().to_string(),
            "--peer-tls-ca".into(),
            ca_path.display().to_string(),
        ];
        member.spawn();
    }
    let leader = cluster.wait_for_leader();
    let mut client = cluster.member(leader).client();
    assert_eq!(client.call(&["SET", "tls", "yes"]), common::ok());
    let index = cluster
        .member(leader)
        .info_u64("commit_index")
        .expect("commit index");
    for id in 1..=3 {
        cluster.wait_applied(id, index);
    }
    for member in &cluster.members {
        assert_eq!(
            member.info_u64("peer_handshake_refusals"),
            Some(0),
            "member {}",
            member.id
        );
    }
}
