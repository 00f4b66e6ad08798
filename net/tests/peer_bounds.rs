//! What an unauthenticated connection to the peer port can cost a node, and how dead
//! peers are noticed: a 64 MiB frame header before the handshake (resident memory of a
//! real `tally-server`), a handshake trickled one byte per 100 ms (cut at the
//! whole-handshake deadline), the inbound connection cap, and the socket options
//! (keepalive, `TCP_USER_TIMEOUT`, write timeout) read back with `getsockopt`.
//!
//! No timing assertions: deadlines are generous and only bound a broken build.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{wait_until, Cluster};
use crossbeam_channel::Receiver;
use tally_net::frame::{FRAME_HEADER_BYTES, FRAME_MAGIC, FRAME_VERSION};
use tally_net::handshake::MSG_HELLO;
use tally_net::transport::{InboundMessage, OutboundMessage, PeerTransport, TransportConfig};

const CLUSTER: u64 = 0x7a11;

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind loopback")
}

fn addr(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().expect("local addr")
}

/// A frame header announcing `payload_len` bytes (the checksum is never reached).
fn header_announcing(payload_len: u32) -> [u8; FRAME_HEADER_BYTES] {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    header[4] = FRAME_VERSION;
    header[5] = MSG_HELLO;
    header[8..12].copy_from_slice(&payload_len.to_le_bytes());
    header
}

/// Whether the other side closed `stream` (EOF or reset) within `patience`.
fn closed_within(stream: &mut TcpStream, patience: Duration) -> bool {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let mut chunk = [0u8; 1024];
    while started.elapsed() < patience {
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn frame_headers_announcing_64_mib_before_the_handshake_cost_no_memory() {
    let cluster = Cluster::start(1);
    let member = cluster.member(1);
    drop(member.client()); // the server is up
    let before_kib = member.rss_anon_kib().expect("RssAnon of the server");
    let n_connections = 8;
    let mut streams: Vec<TcpStream> = (0..n_connections)
        .map(|_| {
            let mut stream =
                TcpStream::connect(("127.0.0.1", member.peer_port)).expect("connect peer port");
            stream
                .write_all(&header_announcing(64 << 20))
                .expect("send header");
            // Some payload, so a reader that reserves and zero-fills the announced
            // length has started on it.
            let _ = stream.write_all(&vec![0u8; 128 << 10]);
            stream
        })
        .collect();
    // Sample while the connections are (or would be) open: a node that zero-fills the
    // announced length grows by 64 MiB per connection at once.
    let mut peak_kib = before_kib;
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_millis(1500) {
        peak_kib = peak_kib.max(member.rss_anon_kib().expect("RssAnon"));
        std::thread::sleep(Duration::from_millis(20));
    }
    for stream in &mut streams {
        assert!(
            closed_within(stream, common::DEADLINE),
            "an oversized handshake frame must close the connection"
        );
    }
    let growth_kib = peak_kib.saturating_sub(before_kib);
    println!(
        "RssAnon before {before_kib} KiB, peak {peak_kib} KiB with {n_connections} x 64 MiB headers"
    );
    assert!(
        growth_kib < 32 << 10,
        "{n_connections} headers announcing 64 MiB grew the node by {growth_kib} KiB"
    );
    let refusals = member
        .info_u64("peer_handshake_refusals")
        .expect("INFO peer_handshake_refusals");
    assert!(refusals >= n_connections as u64, "refusals {refusals}");
}

fn acceptor(
    configure: impl FnOnce(&mut TransportConfig),
) -> (PeerTransport, Receiver<InboundMessage>) {
    let listener = listener();
    let mut config =
        TransportConfig::new(CLUSTER, 2, vec![(1, "127.0.0.1:9".parse().expect("addr"))]);
    configure(&mut config);
    PeerTransport::start(config, listener).expect("start")
}

#[test]
fn a_handshake_trickled_one_byte_per_100_ms_is_cut_at_the_deadline() {
    let (transport, _inbound) = acceptor(|config| config.handshake_timeout_ms = 1000);
    let mut stream = TcpStream::connect(transport.local_addr()).expect("connect");
    // A HELLO frame announcing 2000 payload bytes, sent one byte at a time: 200 s in
    // all, each byte well within any per-read timeout.
    let mut wire = header_announcing(2000).to_vec();
    wire.resize(FRAME_HEADER_BYTES + 2000, 0);
    let started = Instant::now();
    let mut cut = false;
    for byte in &wire {
        if stream.write_all(std::slice::from_ref(byte)).is_err()
            || closed_within(&mut stream, Duration::from_millis(100))
        {
            cut = true;
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the trickle was still accepted after 30 s (handshake deadline 1 s)"
        );
    }
    assert!(cut, "the whole trickle was read");
    wait_until("the timeout is counted", || {
        (transport.inbound_stats().handshake_timeouts == 1).then_some(())
    });
    transport.shutdown();
}

#[test]
fn past_the_inbound_cap_a_new_connection_is_closed_at_once() {
    let dialer_listener = listener();
    let dialer_addr = addr(&dialer_listener);
    let (transport, inbound) = acceptor(|config| {
        config.max_inbound_connections = 3;
        config.handshake_timeout_ms = 120_000;
        config.peers = vec![(1, dialer_addr)];
    });
    let target = transport.local_addr();
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(target).expect("connect"))
        .collect();
    let mut over = TcpStream::connect(target).expect("connect");
    assert!(
        closed_within(&mut over, common::DEADLINE),
        "the connection past the cap must be closed"
    );
    assert_eq!(transport.inbound_stats().refused_over_cap, 1);
    for stream in &mut idle {
        assert!(
            !closed_within(stream, Duration::from_millis(200)),
            "pending handshakes under the cap stay open"
        );
    }
    // Freed places are taken again: a real member gets through.
    drop(idle);
    let (dialer, _) = PeerTransport::start(
        TransportConfig::new(CLUSTER, 1, vec![(2, target)]),
        dialer_listener,
    )
    .expect("start dialer");
    wait_until("the member connects once places are free", || {
        dialer.is_connected(2).then_some(())
    });
    dialer
        .try_send(2, OutboundMessage::new(1, Bytes::from_static(b"x")))
        .expect("queue");
    let message = inbound
        .recv_timeout(common::DEADLINE)
        .expect("the message arrives");
    assert_eq!((message.from, message.payload.as_ref()), (1, &b"x"[..]));
    dialer.shutdown();
    transport.shutdown();
}

#[test]
fn peer_sockets_have_keepalive_a_user_timeout_and_a_write_timeout() {
    let (listener_a, listener_b) = (listener(), listener());
    let (addr_a, addr_b) = (addr(&listener_a), addr(&listener_b));
    let config = |node, peer: (u64, SocketAddr)| {
        let mut config = TransportConfig::new(CLUSTER, node, vec![peer]);
        config.tcp_user_timeout_ms = 7_000;
        config.write_timeout_ms = 9_000;
        config.keepalive_idle_ms = 3_000;
        config.keepalive_interval_ms = 2_000;
        config
    };
    let (a, _) = PeerTransport::start(config(1, (2, addr_b)), listener_a).expect("start a");
    let (b, _) = PeerTransport::start(config(2, (1, addr_a)), listener_b).expect("start b");
    wait_until("both directions connect", || {
        (a.is_connected(2) && b.is_connected(1)).then_some(())
    });
    // Outbound sockets of a (to b's listener) and b's inbound ends of them, and the
    // reverse: every fd whose local or peer address is a listener address.
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("list fds") {
        let Ok(fd) = entry
            .expect("fd")
            .file_name()
            .to_string_lossy()
            .parse::<i32>()
        else {
            continue;
        };
        // SAFETY: the fd was open a moment ago and is only borrowed for getsockopt; if it
        // was closed or reused meanwhile the calls fail (EBADF, ENOTSOCK) and it is skipped.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&borrowed);
        let (Ok(local), Ok(peer)) = (socket.local_addr(), socket.peer_addr()) else {
            continue;
        };
        let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) else {
            continue;
        };
        let listeners = [addr_a, addr_b];
        if listeners.contains(&local) || listeners.contains(&peer) {
            fds.push(fd);
        }
    }
    // Two connections, both ends in this process; the transport keeps a clone of each
    // socket for shutdown, so each end may appear twice.
    assert!(fds.len() >= 4, "found {} peer sockets", fds.len());
    for fd in fds {
        // SAFETY: as above; the transports are running, so these sockets are open.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&borrowed);
        assert!(socket.keepalive().expect("SO_KEEPALIVE"), "fd {fd}");
        assert_eq!(
            socket.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
            Duration::from_secs(3)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
            Duration::from_secs(2)
        );
        assert_eq!(
            socket.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
            Some(Duration::from_millis(7_000))
        );
        assert_eq!(
            socket.write_timeout().expect("SO_SNDTIMEO"),
            Some(Duration::from_millis(9_000))
        );
        assert!(socket.tcp_nodelay().expect("TCP_NODELAY"));
    }
    a.shutdown();
    b.shutdown();
}

/// Runs `scenario` on a thread in a network namespace of its own (loopback up), so a
/// test can cut "the network" without touching the machine's. `Err` (with the reason)
/// when namespaces or `ip` are not available here.
fn in_own_network_namespace(scenario: impl FnOnce() + Send + 'static) -> Result<(), String> {
    std::thread::spawn(move || {
        // SAFETY: unshare(CLONE_NEWNET) only moves this thread (and the threads and
        // processes it starts from now on) to a new network namespace; no memory is
        // involved.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "unshare(CLONE_NEWNET) failed ({}; needs root)",
                std::io::Error::last_os_error()
            ));
        }
        set_loopback(true)?;
        scenario();
        Ok(())
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn set_loopback(up: bool) -> Result<(), String> {
    let state = if up { "up" } else { "down" };
    match std::process::Command::new("ip")
        .args(["link", "set", "lo", state])
        .status()
    {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("`ip link set lo {state}` exited with {status}")),
        Err(error) => Err(format!("cannot run `ip` ({error})")),
    }
}

#[test]
fn a_half_open_peer_is_dropped_at_the_tcp_user_timeout() {
    let outcome = in_own_network_namespace(|| {
        let (listener_a, listener_b) = (listener(), listener());
        let (addr_a, addr_b) = (addr(&listener_a), addr(&listener_b));
        let config = |node, peer: (u64, SocketAddr)| {
            let mut config = TransportConfig::new(CLUSTER, node, vec![peer]);
            config.tcp_user_timeout_ms = 2_000;
            config.connect_timeout_ms = 500;
            config
        };
        let (a, _) = PeerTransport::start(config(1, (2, addr_b)), listener_a).expect("start a");
        let (b, _inbound_b) =
            PeerTransport::start(config(2, (1, addr_a)), listener_b).expect("start b");
        wait_until("a connects to b", || a.is_connected(2).then_some(()));
        // From here every packet is lost and neither side hears a FIN or RST: b is
        // half-open as far as a can tell, and a's sends stay unacknowledged.
        set_loopback(false).expect("take loopback down");
        let started = Instant::now();
        let patience = Duration::from_secs(60);
        while a.is_connected(2) && started.elapsed() < patience {
            let _ = a.try_send(2, OutboundMessage::new(1, Bytes::from_static(b"ping")));
            std::thread::sleep(Duration::from_millis(50));
        }
        let noticed = !a.is_connected(2);
        // Shutdown wakes the listeners with a connection to them: loopback up again
        // before anything can fail (a panic with loopback down would hang in drop).
        set_loopback(true).expect("bring loopback back");
        assert!(
            noticed,
            "a still trusts a connection whose data went unacknowledged for {patience:?}"
        );
        println!(
            "the half-open connection was dropped after {:?} (TCP_USER_TIMEOUT 2 s)",
            started.elapsed()
        );
        a.shutdown();
        b.shutdown();
    });
    if let Err(reason) = outcome {
        println!("SKIPPED a_half_open_peer_is_dropped_at_the_tcp_user_timeout: {reason}");
    }
}
