//! Connection bounds of the client port: `--max-clients`, `-BUSY` instead of a blocked
//! I/O thread, and the descriptor reserve that keeps the WAL able to open files.

mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tally_net::client_port::BUSY_ERROR;
use tally_net::resp::RespValue;
use tally_net::server::{Server, ServerConfig};

/// A one-member cluster in this process, started with `configure` applied.
fn start_member(dir: &std::path::Path, configure: impl FnOnce(&mut ServerConfig)) -> Server {
    let mut config = ServerConfig::new(1, dir, Vec::new());
    config.client_io_threads = 1;
    configure(&mut config);
    Server::start(
        config,
        TcpListener::bind("127.0.0.1:0").expect("bind peer"),
        TcpListener::bind("127.0.0.1:0").expect("bind client"),
    )
    .expect("start")
}

fn wait_for_leader(server: &Server) {
    wait_until("the single member leads", || {
        (server.handle().status().role() == tally_engine::raft::Role::Leader).then_some(())
    });
}

fn info_field(client: &mut Client, section: &str, key: &str) -> Option<String> {
    let RespValue::Bulk(Some(text)) = client.call(&["INFO", section]) else {
        return None;
    };
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key}:")).map(str::to_string))
}

#[test]
fn a_connection_past_max_clients_is_answered_an_error_and_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_member(dir.path(), |config| config.limits.max_clients = 3);
    let port = server.client_addr().port();
    let mut open: Vec<Client> = (0..3)
        .map(|_| {
            let mut client = Client::connect(port).expect("connect");
            assert_eq!(client.call(&["PING"]), RespValue::Simple(b"PONG".to_vec()));
            client
        })
        .collect();

    let mut refused = Client::connect(port).expect("the kernel accepts the TCP connection");
    let reply = refused
        .read_reply()
        .expect("an error line before the close");
    assert_eq!(
        error_text(&reply).as_deref(),
        Some("ERR max number of clients reached")
    );
    assert!(refused.is_closed_by_server());
    assert_eq!(
        info_field(&mut open[0], "stats", "rejected_connections").as_deref(),
        Some("1")
    );
    assert_eq!(
        info_field(&mut open[0], "limits", "max_clients").as_deref(),
        Some("3")
    );

    // A closed connection frees its place.
    drop(open.pop());
    let mut again = wait_until("a place frees up after a close", || {
        let mut client = Client::connect(port).ok()?;
        client.send_raw(b"PING\r\n");
        (client.read_reply()? == RespValue::Simple(b"PONG".to_vec())).then_some(client)
    });
    wait_for_leader(&server);
    assert_eq!(again.call(&["SET", "k", "v"]), ok());
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_full_request_queue_answers_busy_and_the_io_thread_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stall = Duration::from_secs(8);
    let started = Instant::now();
    let server = start_member(dir.path(), |config| {
        config.request_queue_capacity = 1;
        config.failpoint_raft_stall_at_start = Some(stall);
    });
    let port = server.client_addr().port();
    let counters = server.client_port_counters();
    // Three idle connections on the one I/O thread.
    let mut first = Client::connect(port).expect("connect");
    let mut second = Client::connect(port).expect("connect");
    let mut third = Client::connect(port).expect("connect");
    for client in [&mut first, &mut second, &mut third] {
        assert_eq!(client.call(&["PING"]), RespValue::Simple(b"PONG".to_vec()));
    }
    // The first write fills the queue (the stalled raft thread drains nothing) ...
    let parsed_before = counters.commands.load(Ordering::Relaxed);
    first.send_raw(b"*3\r\n$3\r\nSET\r\n$5\r\nfirst\r\n$1\r\n1\r\n");
    wait_until("the first SET is parsed (and so submitted)", || {
        (counters.commands.load(Ordering::Relaxed) > parsed_before).then_some(())
    });
    // ... the next finds it full: -BUSY at once, while the raft thread still stalls.
    let busy = second.call(&["SET", "busy", "1"]);
    assert_eq!(error_text(&busy).as_deref(), Some(BUSY_ERROR), "{busy:?}");
    // The I/O thread is not blocked: another connection is served.
    assert_eq!(third.call(&["PING"]), RespValue::Simple(b"PONG".to_vec()));
    assert!(
        started.elapsed() < stall,
        "the machine was too slow for the stall window; the checks above ran after it"
    );
    assert!(counters.busy_replies.load(Ordering::Relaxed) >= 1);

    // After the stall: the refused write was never applied, the connection still works.
    let first_reply = first.read_reply().expect("the first SET is answered");
    assert!(
        first_reply == ok() || error_text(&first_reply).is_some_and(|e| e.starts_with("NOTLEADER")),
        "{first_reply:?}"
    );
    wait_for_leader(&server);
    assert_eq!(third.call(&["GET", "busy"]), RespValue::Bulk(None));
    assert_eq!(second.call(&["SET", "after", "2"]), ok());
    assert_eq!(third.call(&["GET", "after"]), bulk("2"));
    assert_eq!(third.call(&["GET", "busy"]), RespValue::Bulk(None));
    drop((first, second, third));
    server.shutdown().expect("clean shutdown");
}

/// A `tally-server` child killed on drop (also when the test panics).
struct ChildGuard {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// What a fresh connection hears after sending PING: `Some(reply)`, or `None` if the
/// server closed it (or said nothing within `patience`).
fn probe_ping(port: u16, patience: Duration) -> (Option<Client>, Option<RespValue>) {
    let Ok(mut client) = Client::connect(port) else {
        return (None, None);
    };
    client
        .stream
        .set_read_timeout(Some(patience))
        .expect("timeout");
    if std::io::Write::write_all(&mut client.stream, b"PING\r\n").is_err() {
        return (None, None);
    }
    let reply = client.read_reply();
    client
        .stream
        .set_read_timeout(Some(DEADLINE))
        .expect("timeout");
    (Some(client), reply)
}

#[test]
fn with_descriptors_near_the_limit_connections_are_refused_and_the_wal_keeps_rolling() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("prlimit not installed; skipping");
        return;
    }
    const NOFILE: u64 = 256;
    let root = tempfile::tempdir().expect("tempdir");
    let (peer_port, client_port) = (free_port(), free_port());
    let log = root.path().join("member.log");
    let child = Command::new("prlimit")
        .arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_tally-server"))
        .args(["--id", "1", "--wal-backend", "sync", "--threads", "2"])
        .arg("--dir")
        .arg(root.path().join("wal"))
        .arg("--listen-peer")
        .arg(format!("127.0.0.1:{peer_port}"))
        .arg("--listen-client")
        .arg(format!("127.0.0.1:{client_port}"))
        // 1 MiB segments (two of the largest entries) and a snapshot every ~3 MB: the
        // WAL and the snapshot store create files while the sockets crowd the limit.
        .args([
            "--max-entry-bytes",
            "524288",
            "--max-command-bytes",
            "200000",
        ])
        .args([
            "--wal-segment-bytes",
            "1048576",
            "--snapshot-log-bytes",
            "3000000",
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn prlimit tally-server");
    let mut member = ChildGuard { child, log };
    let mut writer = wait_until("the member leads", || {
        let mut client = Client::connect(client_port).ok()?;
        let RespValue::Bulk(Some(info)) = client.call(&["INFO", "raft"]) else {
            return None;
        };
        String::from_utf8_lossy(&info)
            .contains("role:leader")
            .then_some(client)
    });

    // Open connections until one is refused.
    let mut open = Vec::new();
    let refusal = loop {
        assert!(
            (open.len() as u64) < NOFILE,
            "{} connections admitted under a limit of {NOFILE} descriptors",
            open.len()
        );
        match probe_ping(client_port, Duration::from_secs(20)) {
            (Some(client), Some(reply)) if reply == RespValue::Simple(b"PONG".to_vec()) => {
                open.push(client)
            }
            (_, Some(reply)) => break error_text(&reply).expect("an error line"),
            (_, None) => panic!(
                "connection {} got neither PONG nor an error (left in the backlog?)",
                open.len() + 1
            ),
        }
    };
    assert!(
        refusal.starts_with("ERR max number of clients reached"),
        "{refusal}"
    );
    assert!(
        open.len() >= 64,
        "only {} connections admitted under {NOFILE} descriptors",
        open.len()
    );

    // The peer port refuses too, at once (not after its handshake deadline): a peer
    // connection must not take the descriptor the WAL needs either.
    let mut peer = std::net::TcpStream::connect(("127.0.0.1", peer_port)).expect("peer connect");
    peer.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("read timeout");
    let mut byte = [0u8; 1];
    match std::io::Read::read(&mut peer, &mut byte) {
        Ok(0) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the peer port kept a connection within the descriptor reserve: {other:?}"),
    }
    drop(peer);

    // Writes keep committing while the WAL creates segments (9 MB through 1 MiB
    // segments) and snapshot files.
    let value = vec![b'v'; 150_000];
    for index in 0..60 {
        let key = format!("key{index}");
        let reply = writer.pipeline(&[vec![b"SET".to_vec(), key.into_bytes(), value.clone()]]);
        assert_eq!(reply[0], ok(), "SET {index}");
        if index % 20 == 0 {
            // Still refusing new connections meanwhile.
            let (_, reply) = probe_ping(client_port, Duration::from_secs(20));
            assert!(
                reply
                    .as_ref()
                    .and_then(error_text)
                    .is_some_and(|e| e.starts_with("ERR max number")),
                "{reply:?}"
            );
        }
    }
    assert!(
        member.child.try_wait().expect("wait").is_none(),
        "the member stopped"
    );
    let RespValue::Bulk(Some(info)) = writer.call(&["INFO"]) else {
        panic!("INFO");
    };
    let info = String::from_utf8_lossy(&info).into_owned();
    assert!(info.contains(&format!("fd_limit:{NOFILE}\r\n")), "{info}");
    let snapshots_taken: u64 = info
        .lines()
        .find_map(|line| line.strip_prefix("snapshots_taken:"))
        .and_then(|n| n.parse().ok())
        .expect("snapshots_taken");
    assert!(snapshots_taken >= 1, "{info}");

    // Closing connections makes room again.
    open.truncate(open.len() / 2);
    let (client, reply) =
        wait_until(
            "a connection is admitted after others closed",
            || match probe_ping(client_port, Duration::from_secs(20)) {
                (Some(client), Some(reply)) if reply == RespValue::Simple(b"PONG".to_vec()) => {
                    Some((client, reply))
                }
                _ => None,
            },
        );
    drop((client, reply));
    assert_eq!(
        writer.call(&["GET", "key0"]).clone(),
        RespValue::Bulk(Some(value))
    );
    assert!(member.child.try_wait().expect("wait").is_none());
}
