//! The peer transport on real loopback sockets: ordering, reconnects, handshake
//! refusals and bad input. No timing assertions: waits are bounded only so that a broken
//! build fails instead of hanging.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use tally_net::frame::{encode_frame, FrameReader, FRAME_HEADER_BYTES};
use tally_net::handshake::{
    decode_reject, Hello, RejectReason, HANDSHAKE_VERSION, MSG_ACCEPT, MSG_HELLO, MSG_REJECT,
};
use tally_net::transport::{
    InboundMessage, NodeId, OutboundMessage, PeerSendError, PeerTransport, TransportConfig,
};

const DEADLINE: Duration = Duration::from_secs(30);
const CLUSTER: u64 = 0x7a11;

/// Log lines of every test in this binary (the transport logs from its own threads, so
/// the capture has to be global).
fn captured_logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(Arc::clone(&sink)))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        logs
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs_contain(needle: &str) -> bool {
    String::from_utf8_lossy(&captured_logs().lock().expect("log lock")).contains(needle)
}

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind loopback")
}

fn addr(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().expect("local addr")
}

fn start(
    cluster: u64,
    node: NodeId,
    peers: Vec<(NodeId, SocketAddr)>,
    listener: TcpListener,
) -> (PeerTransport, Receiver<InboundMessage>) {
    captured_logs();
    let mut config = TransportConfig::new(cluster, node, peers);
    config.reconnect_max_backoff_ms = 100;
    PeerTransport::start(config, listener).expect("start transport")
}

/// Waits until `condition` holds; panics after the deadline instead of hanging.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < DEADLINE, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sends, retrying while the peer's queue is full.
fn send(transport: &PeerTransport, to: NodeId, mut message: OutboundMessage) {
    let started = Instant::now();
    loop {
        match transport.try_send(to, message) {
            Ok(()) => return,
            Err(PeerSendError::Full(back)) => {
                assert!(started.elapsed() < DEADLINE, "queue to {to} stayed full");
                message = back;
                std::thread::yield_now();
            }
            Err(other) => panic!("send to {to} failed: {other}"),
        }
    }
}

fn recv(inbound: &Receiver<InboundMessage>) -> InboundMessage {
    inbound
        .recv_timeout(DEADLINE)
        .expect("message within deadline")
}

/// A payload in two parts (as the codec sends entry payloads): sequence number, then
/// a body whose length varies with it.
fn numbered(sequence: u32) -> OutboundMessage {
    let body = vec![(sequence % 251) as u8; (sequence % 97) as usize];
    OutboundMessage {
        msg_type: 1 + (sequence % 7) as u8,
        payload_parts: vec![
            Bytes::copy_from_slice(&sequence.to_le_bytes()),
            Bytes::from(body),
        ],
    }
}

fn sequence_of(message: &InboundMessage) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&message.payload[..4]);
    u32::from_le_bytes(raw)
}

#[test]
fn thousands_of_pipelined_messages_arrive_in_order_both_ways() {
    let (listener_a, listener_b) = (listener(), listener());
    let (addr_a, addr_b) = (addr(&listener_a), addr(&listener_b));
    let (a, inbound_a) = start(CLUSTER, 1, vec![(2, addr_b)], listener_a);
    let (b, inbound_b) = start(CLUSTER, 2, vec![(1, addr_a)], listener_b);
    const N: u32 = 5000;
    std::thread::scope(|scope| {
        scope.spawn(|| (0..N).for_each(|i| send(&a, 2, numbered(i))));
        scope.spawn(|| (0..N).for_each(|i| send(&b, 1, numbered(i))));
        for (inbound, from) in [(&inbound_b, 1), (&inbound_a, 2)] {
            for expected in 0..N {
                let message = recv(inbound);
                assert_eq!(message.from, from);
                assert_eq!(sequence_of(&message), expected, "out of order");
                let original = numbered(expected);
                assert_eq!(message.msg_type, original.msg_type);
                assert_eq!(message.payload, original.payload_parts.concat());
            }
        }
    });
    let stats = a.peer_stats(2).expect("peer 2");
    assert_eq!(stats.sent_messages, u64::from(N));
    assert_eq!(stats.dropped_messages, 0);
    assert_eq!(b.inbound_stats().received_messages, u64::from(N));
    assert!(logs_contain("peer connected (outbound)"));
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_restarted_peer_is_reconnected_and_receives_again() {
    let (listener_a, listener_b) = (listener(), listener());
    let (addr_a, addr_b) = (addr(&listener_a), addr(&listener_b));
    let (a, _inbound_a) = start(CLUSTER, 1, vec![(2, addr_b)], listener_a);
    let (b, inbound_b) = start(CLUSTER, 2, vec![(1, addr_a)], listener_b);
    for i in 0..100 {
        send(&a, 2, numbered(i));
    }
    for expected in 0..100 {
        assert_eq!(sequence_of(&recv(&inbound_b)), expected);
    }
    b.shutdown();
    drop(inbound_b);

    // Same address, new process-equivalent: a fresh transport on a fresh listener.
    let listener_b2 = TcpListener::bind(addr_b).expect("rebind the restarted peer's address");
    let (b2, inbound_b2) = start(CLUSTER, 2, vec![(1, addr_a)], listener_b2);
    // Keep sending (messages written into the dead connection are lost, as Raft allows)
    // until the restarted peer hears from us.
    let mut next = 100;
    let first = loop {
        send(&a, 2, numbered(next));
        next += 1;
        if let Ok(message) = inbound_b2.recv_timeout(Duration::from_millis(5)) {
            break message;
        }
        assert!(next < 10_000_000, "never reconnected");
    };
    assert!(sequence_of(&first) >= 100);
    // After reconnecting, delivery is in order again.
    let mut last = sequence_of(&first);
    let stop_at = next + 50;
    while next < stop_at {
        send(&a, 2, numbered(next));
        next += 1;
    }
    loop {
        let message = recv(&inbound_b2);
        let sequence = sequence_of(&message);
        assert!(sequence > last, "out of order after reconnect");
        last = sequence;
        if sequence == stop_at - 1 {
            break;
        }
    }
    let stats = a.peer_stats(2).expect("peer 2");
    assert!(stats.connections_established >= 2, "{stats:?}");
    assert!(logs_contain("peer disconnected"));
    a.shutdown();
    b2.shutdown();
}

#[test]
fn wrong_cluster_and_wrong_node_are_refused_while_the_listener_keeps_serving() {
    let (listener_good, listener_b, listener_bad_cluster, listener_bad_node) =
        (listener(), listener(), listener(), listener());
    let addr_b = addr(&listener_b);
    let (b, inbound_b) = start(
        CLUSTER,
        2,
        vec![(1, addr(&listener_good)), (3, addr(&listener_bad_node))],
        listener_b,
    );
    // Node 1 of another cluster dials node 2.
    let (bad_cluster, _) = start(CLUSTER + 1, 1, vec![(2, addr_b)], listener_bad_cluster);
    // Node 3 of our cluster thinks node 4 lives at node 2's address.
    let (bad_node, _) = start(CLUSTER, 3, vec![(4, addr_b)], listener_bad_node);
    wait_until("both refusals", || {
        bad_cluster.peer_stats(2).expect("peer").handshakes_rejected >= 1
            && bad_node.peer_stats(4).expect("peer").handshakes_rejected >= 1
    });
    assert!(!bad_cluster.is_connected(2));
    assert!(!bad_node.is_connected(4));
    assert!(b.inbound_stats().rejected_handshakes >= 2);
    assert_eq!(b.inbound_stats().accepted_connections, 0);
    assert!(logs_contain("refused peer connection"));
    assert!(logs_contain("WrongCluster"));
    assert!(logs_contain("WrongNode"));
    assert!(logs_contain("peer refused our connection"));
    bad_cluster.shutdown();
    bad_node.shutdown();

    // The listener still serves the right peer.
    let (good, _) = start(CLUSTER, 1, vec![(2, addr_b)], listener_good);
    send(&good, 2, numbered(42));
    let message = recv(&inbound_b);
    assert_eq!((message.from, sequence_of(&message)), (1, 42));
    good.shutdown();
    b.shutdown();
}

/// Opens a raw connection to `to` and completes the handshake as `from`.
fn raw_handshake(to_addr: SocketAddr, from: NodeId, to: NodeId) -> TcpStream {
    let mut stream = TcpStream::connect(to_addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let hello = Hello {
        version: HANDSHAKE_VERSION,
        cluster_id: CLUSTER,
        from_node: from,
        to_node: to,
        nonce: [0; 32],
        client_addr: String::new(),
        incarnation: 0,
    };
    let mut frame = Vec::new();
    encode_frame(MSG_HELLO, 0, &hello.encode(), 1024, &mut frame).expect("encode");
    stream.write_all(&frame).expect("hello");
    let answer = FrameReader::new(&stream, 4096)
        .read_frame()
        .expect("answer");
    assert_eq!(answer.msg_type, MSG_ACCEPT);
    stream
}

/// Blocks until the other side closes the connection (EOF or reset); fails on timeout.
fn assert_closed_by_peer(stream: &mut TcpStream, case: &str) {
    let mut sink = [0u8; 256];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("{case}: connection not closed by the transport: {e}"),
        }
    }
}

#[test]
fn bad_frames_close_only_their_connection_and_a_good_peer_keeps_flowing() {
    let (listener_good, listener_b) = (listener(), listener());
    let addr_b = addr(&listener_b);
    let (b, inbound_b) = start(
        CLUSTER,
        2,
        vec![
            (1, addr(&listener_good)),
            (3, "127.0.0.1:9".parse().expect("addr")),
        ],
        listener_b,
    );
    let (good, _) = start(CLUSTER, 1, vec![(2, addr_b)], listener_good);
    let mut sequence = 0;
    let mut check_good_peer = |case: &str| {
        send(&good, 2, numbered(sequence));
        let message = recv(&inbound_b);
        assert_eq!(
            (message.from, sequence_of(&message)),
            (1, sequence),
            "after {case}"
        );
        sequence += 1;
    };
    check_good_peer("start");

    let mut valid = Vec::new();
    encode_frame(1, 0, b"fine payload", 1 << 20, &mut valid).expect("encode");
    let mut bad_checksum = valid.clone();
    *bad_checksum.last_mut().expect("payload") ^= 1;
    let mut bad_magic = valid.clone();
    bad_magic[0] ^= 0xff;
    let mut bad_version = valid.clone();
    bad_version[4] = 99;
    let mut oversized = valid[..FRAME_HEADER_BYTES].to_vec();
    oversized[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut reserved_type = Vec::new();
    encode_frame(MSG_HELLO, 0, b"", 1024, &mut reserved_type).expect("encode");
    let truncated = valid[..valid.len() - 3].to_vec();
    let cases: [(&str, &[u8]); 7] = [
        (
            "garbage",
            b"this is not a frame at all, just some bytes....",
        ),
        ("bad checksum", &bad_checksum),
        ("bad magic", &bad_magic),
        ("bad version", &bad_version),
        ("oversized length", &oversized),
        ("reserved type", &reserved_type),
        ("truncated", &truncated),
    ];
    for (index, (case, bytes)) in cases.iter().enumerate() {
        let mut stream = raw_handshake(addr_b, 3, 2);
        // One good frame first: the connection really was serving.
        stream.write_all(&valid).expect("valid frame");
        let message = recv(&inbound_b);
        assert_eq!(
            (message.from, &message.payload[..]),
            (3, &b"fine payload"[..])
        );
        stream.write_all(bytes).expect("bad bytes");
        if *case == "truncated" {
            stream
                .shutdown(std::net::Shutdown::Write)
                .expect("half close");
        }
        assert_closed_by_peer(&mut stream, case);
        wait_until("bad frame counted", || {
            b.inbound_stats().closed_for_bad_frames as usize > index
        });
        check_good_peer(case);
    }
    assert!(logs_contain("closing connection on bad frame"));

    // Garbage instead of a handshake is refused too.
    let mut stream = TcpStream::connect(addr_b).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
    assert_closed_by_peer(&mut stream, "no handshake");
    check_good_peer("no handshake");
    good.shutdown();
    b.shutdown();
}

#[test]
fn a_handshake_from_an_unknown_node_gets_a_reject_frame_with_its_reason() {
    let listener_b = listener();
    let addr_b = addr(&listener_b);
    let (b, _inbound) = start(
        CLUSTER,
        2,
        vec![(1, "127.0.0.1:9".parse().expect("addr"))],
        listener_b,
    );
    let mut stream = TcpStream::connect(addr_b).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let hello = Hello {
        version: HANDSHAKE_VERSION,
        cluster_id: CLUSTER,
        from_node: 77,
        to_node: 2,
        nonce: [0; 32],
        client_addr: String::new(),
        incarnation: 0,
    };
    let mut frame = Vec::new();
    encode_frame(MSG_HELLO, 0, &hello.encode(), 1024, &mut frame).expect("encode");
    stream.write_all(&frame).expect("hello");
    let answer = FrameReader::new(&stream, 4096)
        .read_frame()
        .expect("answer");
    assert_eq!(answer.msg_type, MSG_REJECT);
    let (reason, text) = decode_reject(&answer.payload);
    assert_eq!(reason, RejectReason::UnknownSender);
    assert!(text.contains("77"), "{text}");
    assert_closed_by_peer(&mut stream, "after reject");
    b.shutdown();
}

#[test]
fn try_send_reports_full_when_the_peer_never_answers_and_shutdown_still_completes() {
    // A listener nobody accepts on: the kernel completes TCP connects, but no handshake
    // answer ever comes, so the sender thread waits and the queue fills.
    let silent = listener();
    let listener_a = listener();
    let mut config = TransportConfig::new(CLUSTER, 1, vec![(2, addr(&silent))]);
    config.peer_queue_capacity = 4;
    config.handshake_timeout_ms = 120_000;
    captured_logs();
    let (a, _inbound) = PeerTransport::start(config, listener_a).expect("start");
    let mut full = None;
    for i in 0..1000 {
        match a.try_send(2, numbered(i)) {
            Ok(()) => {}
            Err(PeerSendError::Full(message)) => {
                full = Some(message);
                break;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    let returned = full.expect("queue must fill while the handshake hangs");
    assert_eq!(
        returned.payload_parts.len(),
        2,
        "the message is handed back"
    );
    assert!(matches!(
        a.try_send(9, numbered(0)),
        Err(PeerSendError::UnknownPeer(9))
    ));
    assert!(matches!(
        a.try_send(2, OutboundMessage::new(MSG_HELLO, Bytes::new())),
        Err(PeerSendError::ReservedType(MSG_HELLO))
    ));
    assert!(!a.is_connected(2));
    // Shutdown interrupts the hanging handshake read (no 120 s wait).
    a.shutdown();
    drop(silent);
}

#[test]
fn oversized_outbound_message_is_refused_at_try_send() {
    let listener_a = listener();
    let mut config =
        TransportConfig::new(CLUSTER, 1, vec![(2, "127.0.0.1:9".parse().expect("addr"))]);
    config.max_frame_payload_bytes = 8;
    captured_logs();
    let (a, _inbound) = PeerTransport::start(config, listener_a).expect("start");
    let message = OutboundMessage::new(1, Bytes::from_static(b"123456789"));
    assert!(matches!(
        a.try_send(2, message),
        Err(PeerSendError::TooLarge { len: 9, max: 8 })
    ));
    a.shutdown();
}

#[test]
fn invalid_configurations_are_refused() {
    let config = TransportConfig::new(CLUSTER, 1, vec![(1, "127.0.0.1:9".parse().expect("addr"))]);
    assert!(
        PeerTransport::start(config, listener()).is_err(),
        "self as peer"
    );
    let peers = vec![
        (2, "127.0.0.1:9".parse().expect("addr")),
        (2, "127.0.0.1:10".parse().expect("addr")),
    ];
    assert!(PeerTransport::start(TransportConfig::new(CLUSTER, 1, peers), listener()).is_err());
}

#[test]
fn each_node_learns_the_client_address_its_peers_advertise() {
    let (listener_a, listener_b) = (listener(), listener());
    let (addr_a, addr_b) = (addr(&listener_a), addr(&listener_b));
    let start_advertising = |node: NodeId, peer: (NodeId, SocketAddr), listener, client: &str| {
        captured_logs();
        let mut config = TransportConfig::new(CLUSTER, node, vec![peer]);
        config.reconnect_max_backoff_ms = 100;
        config.advertised_client_addr = client.to_string();
        PeerTransport::start(config, listener).expect("start transport")
    };
    let (a, _inbound_a) = start_advertising(1, (2, addr_b), listener_a, "10.0.0.1:6379");
    let (b, _inbound_b) = start_advertising(2, (1, addr_a), listener_b, "10.0.0.2:6380");
    let (addrs_a, addrs_b) = (a.peer_client_addrs(), b.peer_client_addrs());
    wait_until("both HELLOs accepted", || {
        addrs_a.get(2).is_some() && addrs_b.get(1).is_some()
    });
    assert_eq!(addrs_a.get(2).as_deref(), Some("10.0.0.2:6380"));
    assert_eq!(addrs_b.get(1).as_deref(), Some("10.0.0.1:6379"));
    assert_eq!(
        addrs_a.get(1),
        None,
        "a node does not learn its own address"
    );
    a.shutdown();
    b.shutdown();
}
