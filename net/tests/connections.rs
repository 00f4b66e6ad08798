//! Connection bounds of the client port: `--max-clients`, `-BUSY` instead of a blocked
//! I/O thread, and the descriptor reserve that keeps the WAL able to open files.

mod common;

use std::net::TcpListener;
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
    let stall = Duration::from_secs(5);
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
