//! Real `tally-server` processes on loopback: elections, redirects, pipelined writes,
//! SIGKILL of the leader, restart from the directory, a follower cut off by a proxy and
//! healed, redis-cli / redis-benchmark, and bad input on both ports.
//!
//! No timing assertions: every wait is a poll with a generous deadline so a broken build
//! fails instead of hanging. Every child process is killed by a drop guard, even when a
//! test panics.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_net::resp::{parse_reply, write_command, RespLimits, RespValue};

const DEADLINE: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(started.elapsed() < DEADLINE, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------
// A tiny RESP client.

struct Client {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Client {
    fn connect(port: u16) -> std::io::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(DEADLINE))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buffer: Vec::new(),
        })
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads one reply; `None` when the server closed the connection.
    fn read_reply(&mut self) -> Option<RespValue> {
        loop {
            if let Some((value, used)) =
                parse_reply(&self.buffer, &RespLimits::default()).expect("a well-formed reply")
            {
                self.buffer.drain(..used);
                return Some(value);
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends every command in one write, then reads one reply per command.
    fn pipeline(&mut self, commands: &[Vec<Vec<u8>>]) -> Vec<RespValue> {
        let mut out = Vec::new();
        for command in commands {
            let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
            write_command(&mut out, &args);
        }
        self.send_raw(&out);
        (0..commands.len())
            .map(|_| self.read_reply().expect("a reply per command"))
            .collect()
    }

    fn call(&mut self, args: &[&str]) -> RespValue {
        let command: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        self.pipeline(&[command]).remove(0)
    }

    /// Whether the server closed the connection (EOF within the deadline).
    fn is_closed_by_server(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(error) => return error.kind() == std::io::ErrorKind::ConnectionReset,
            }
        }
    }
}

fn cmd(args: &[&str]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.as_bytes().to_vec()).collect()
}

fn ok() -> RespValue {
    RespValue::Simple(b"OK".to_vec())
}

fn bulk(text: &str) -> RespValue {
    RespValue::Bulk(Some(text.as_bytes().to_vec()))
}

fn error_text(value: &RespValue) -> Option<String> {
    match value {
        RespValue::Error(text) => Some(String::from_utf8_lossy(text).into_owned()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------
// Processes.

struct Member {
    id: u64,
    peer_port: u16,
    client_port: u16,
    dir: PathBuf,
    /// The address this member dials for each other member.
    dials: Vec<(u64, u16)>,
    child: Option<Child>,
    log: PathBuf,
}

impl Member {
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "member {} already running", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally-server"));
        command
            .arg("--id")
            .arg(self.id.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .arg("--listen-peer")
            .arg(format!("127.0.0.1:{}", self.peer_port))
            .arg("--listen-client")
            .arg(format!("127.0.0.1:{}", self.client_port))
            .arg("--election-timeout-ms")
            .arg("500")
            .arg("--heartbeat-ms")
            .arg("50")
            .arg("--wal-backend")
            .arg("sync")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (peer, port) in &self.dials {
            command
                .arg("--peer")
                .arg(format!("{peer}=127.0.0.1:{port}"));
        }
        self.child = Some(command.spawn().expect("spawn tally-server"));
    }

    fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then the exit status.
    fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running member");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
        let started = Instant::now();
        loop {
            if let Some(exit) = child.try_wait().expect("wait") {
                return exit;
            }
            if started.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!("member {} did not exit after SIGTERM", self.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn client(&self) -> Client {
        wait_until("client port accepts", || {
            Client::connect(self.client_port).ok()
        })
    }

    /// The `# Raft` section as a map; `None` if the member does not answer.
    fn raft_info(&self) -> Option<BTreeMap<String, String>> {
        let mut client = Client::connect(self.client_port).ok()?;
        let RespValue::Bulk(Some(text)) = client.call(&["INFO", "raft"]) else {
            return None;
        };
        Some(
            String::from_utf8_lossy(&text)
                .lines()
                .filter_map(|line| line.split_once(':'))
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect(),
        )
    }

    fn info_u64(&self, key: &str) -> Option<u64> {
        self.raft_info()?.get(key)?.parse().ok()
    }
}

struct Cluster {
    members: Vec<Member>,
    /// Kept so the directories outlive the processes.
    _root: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.sigkill();
        }
        if std::thread::panicking() {
            for member in &self.members {
                let log = std::fs::read_to_string(&member.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("--- last log lines of member {} ---", member.id);
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl Cluster {
    /// Starts `size` members. `dial_port(from, to, to_peer_port)` says which port `from`
    /// dials to reach `to` (a proxy, or the peer port itself).
    fn start_with(size: u64, mut dial_port: impl FnMut(u64, u64, u16) -> u16) -> Cluster {
        let root = tempfile::tempdir().expect("temp dir");
        let peer_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let mut members: Vec<Member> = (1..=size)
            .map(|id| Member {
                id,
                peer_port: peer_ports[(id - 1) as usize],
                client_port: free_port(),
                dir: root.path().join(format!("node-{id}")),
                dials: Vec::new(),
                child: None,
                log: root.path().join(format!("node-{id}.log")),
            })
            .collect();
        for member in &mut members {
            member.dials = (1..=size)
                .filter(|other| *other != member.id)
                .map(|other| {
                    let port = dial_port(member.id, other, peer_ports[(other - 1) as usize]);
                    (other, port)
                })
                .collect();
        }
        for member in &mut members {
            member.spawn();
        }
        Cluster {
            members,
            _root: root,
        }
    }

    fn start(size: u64) -> Cluster {
        Cluster::start_with(size, |_, _, port| port)
    }

    fn member(&self, id: u64) -> &Member {
        &self.members[(id - 1) as usize]
    }

    fn member_mut(&mut self, id: u64) -> &mut Member {
        &mut self.members[(id - 1) as usize]
    }

    /// Waits until exactly one running member reports `role:leader` and every running
    /// member names it as leader; returns its id.
    fn wait_for_leader(&self) -> u64 {
        wait_until("one leader that every running member agrees on", || {
            let mut leaders = Vec::new();
            let mut named = Vec::new();
            for member in self.members.iter().filter(|m| m.child.is_some()) {
                let info = member.raft_info()?;
                if info.get("role").map(String::as_str) == Some("leader") {
                    leaders.push(member.id);
                }
                named.push(info.get("leader_id")?.parse::<u64>().ok()?);
            }
            match leaders.as_slice() {
                [leader] if named.iter().all(|id| id == leader) => Some(*leader),
                _ => None,
            }
        })
    }

    /// Waits until `id` has applied at least `index`.
    fn wait_applied(&self, id: u64, index: u64) {
        wait_until(&format!("member {id} applies through {index}"), || {
            (self.member(id).info_u64("applied_index")? >= index).then_some(())
        });
    }
}

// ---------------------------------------------------------------------------------
// A pausable TCP proxy (for cutting a member off).

struct Proxy {
    port: u16,
    paused: Arc<AtomicBool>,
    /// Open proxied sockets, closed when the proxy pauses.
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let paused = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (accept_paused, accept_open) = (Arc::clone(&paused), Arc::clone(&open));
        // The accept thread lives as long as the test process; it holds no child.
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                if accept_paused.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let pairs = [
                    (inbound.try_clone(), outbound.try_clone()),
                    (outbound.try_clone(), inbound.try_clone()),
                ];
                {
                    let mut open = accept_open.lock().expect("proxy lock");
                    open.push(inbound);
                    open.push(outbound);
                }
                for pair in pairs {
                    if let (Ok(mut from), Ok(mut to)) = pair {
                        let paused = Arc::clone(&accept_paused);
                        std::thread::spawn(move || {
                            let mut chunk = vec![0u8; 64 * 1024];
                            loop {
                                let n = match from.read(&mut chunk) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                if paused.load(Ordering::SeqCst)
                                    || to.write_all(&chunk[..n]).is_err()
                                {
                                    break;
                                }
                            }
                            let _ = from.shutdown(Shutdown::Both);
                            let _ = to.shutdown(Shutdown::Both);
                        });
                    }
                }
            }
        });
        Proxy { port, paused, open }
    }

    /// Cuts every connection through the proxy and refuses new ones.
    fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        for stream in self.open.lock().expect("proxy lock").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------
// Scenarios.

#[test]
fn three_members_elect_one_leader_followers_redirect_and_sigterm_exits_cleanly() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let leader_addr = format!("127.0.0.1:{}", cluster.member(leader).client_port);
    for member in &cluster.members {
        let info = member.raft_info().expect("INFO raft");
        assert_eq!(info["node_id"], member.id.to_string());
        assert_eq!(info["leader_client_addr"], leader_addr);
        for key in [
            "term",
            "commit_index",
            "applied_index",
            "last_log_index",
            "entries_per_fsync",
        ] {
            assert!(info.contains_key(key), "INFO lacks {key}: {info:?}");
        }
        let expected_role = if member.id == leader {
            "leader"
        } else {
            "follower"
        };
        assert_eq!(info["role"], expected_role);
        if member.id != leader {
            let mut client = member.client();
            let expected = format!("NOTLEADER {leader_addr}");
            assert_eq!(
                error_text(&client.call(&["SET", "k", "v"])),
                Some(expected.clone())
            );
            assert_eq!(error_text(&client.call(&["GET", "k"])), Some(expected));
        }
    }
    let mut client = cluster.member(leader).client();
    assert_eq!(client.call(&["SET", "k", "v"]), ok());
    assert_eq!(client.call(&["GET", "k"]), bulk("v"));
    assert_eq!(client.call(&["CAS", "k", "v", "w"]), RespValue::Integer(1));
    assert_eq!(client.call(&["CAS", "k", "v", "x"]), RespValue::Integer(0));
    assert_eq!(client.call(&["INCR", "n"]), RespValue::Integer(1));
    assert_eq!(client.call(&["DEL", "n", "missing"]), RespValue::Integer(1));
    assert_eq!(client.call(&["PING"]), RespValue::Simple(b"PONG".to_vec()));
    // The INFO # Server section clients look for.
    let RespValue::Bulk(Some(server)) = client.call(&["INFO", "server"]) else {
        panic!("INFO server is a bulk string")
    };
    assert!(String::from_utf8_lossy(&server).contains("redis_version:7.0.0"));
    for id in 1..=3 {
        let status = cluster.member_mut(id).sigterm();
        assert!(
            status.success(),
            "member {id} exited with {status} after SIGTERM"
        );
    }
}

#[test]
fn pipelined_writes_from_many_clients_are_all_readable_from_the_leader() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let port = cluster.member(leader).client_port;
    const CLIENTS: usize = 6;
    const ROUNDS: usize = 10;
    const PIPELINE: usize = 25;
    let writers: Vec<_> = (0..CLIENTS)
        .map(|client_index| {
            std::thread::spawn(move || {
                let mut client = Client::connect(port).expect("connect");
                for round in 0..ROUNDS {
                    let mut commands: Vec<Vec<Vec<u8>>> = (0..PIPELINE)
                        .map(|i| {
                            let key = format!("c{client_index}-k{}", round * PIPELINE + i);
                            cmd(&["SET", &key, &format!("v{client_index}-{round}-{i}")])
                        })
                        .collect();
                    commands.push(cmd(&["INCR", "shared-counter"]));
                    // A read right after this connection's writes sees them.
                    let last_key = format!("c{client_index}-k{}", round * PIPELINE + PIPELINE - 1);
                    commands.push(cmd(&["GET", &last_key]));
                    let replies = client.pipeline(&commands);
                    for reply in &replies[..PIPELINE] {
                        assert_eq!(*reply, ok());
                    }
                    assert!(matches!(replies[PIPELINE], RespValue::Integer(_)));
                    let expected = format!("v{client_index}-{round}-{}", PIPELINE - 1);
                    assert_eq!(
                        replies[PIPELINE + 1],
                        bulk(&expected),
                        "read-your-writes in a pipeline"
                    );
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer thread");
    }
    let mut client = cluster.member(leader).client();
    for client_index in 0..CLIENTS {
        let keys: Vec<String> = (0..ROUNDS * PIPELINE)
            .map(|k| format!("c{client_index}-k{k}"))
            .collect();
        let mut mget = vec!["MGET"];
        mget.extend(keys.iter().map(String::as_str));
        let RespValue::Array(Some(values)) = client.call(&mget) else {
            panic!("MGET returns an array")
        };
        for (k, value) in values.iter().enumerate() {
            let expected = format!("v{client_index}-{}-{}", k / PIPELINE, k % PIPELINE);
            assert_eq!(*value, bulk(&expected));
        }
    }
    assert_eq!(
        client.call(&["GET", "shared-counter"]),
        bulk(&(CLIENTS * ROUNDS).to_string()),
        "every INCR applied exactly once"
    );
}

#[test]
fn sigkill_of_the_leader_loses_no_acknowledged_write_and_the_restarted_member_catches_up() {
    let mut cluster = Cluster::start(3);
    let old_leader = cluster.wait_for_leader();
    let port = cluster.member(old_leader).client_port;
    // Writers keep writing until the leader dies; every OK is recorded.
    let acknowledged: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let acknowledged = Arc::clone(&acknowledged);
            std::thread::spawn(move || {
                let Ok(mut client) = Client::connect(port) else {
                    return;
                };
                for batch in 0.. {
                    let pairs: Vec<(String, String)> = (0..10)
                        .map(|i| {
                            (
                                format!("w{writer}-{batch}-{i}"),
                                format!("value-{writer}-{batch}-{i}"),
                            )
                        })
                        .collect();
                    let commands: Vec<_> = pairs.iter().map(|(k, v)| cmd(&["SET", k, v])).collect();
                    let mut out = Vec::new();
                    for command in &commands {
                        let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
                        write_command(&mut out, &args);
                    }
                    if client.stream.write_all(&out).is_err() {
                        return;
                    }
                    for pair in pairs {
                        match client.read_reply() {
                            Some(reply) if reply == ok() => {
                                acknowledged.lock().expect("lock").push(pair)
                            }
                            Some(_) => {}
                            None => return, // the leader died
                        }
                    }
                }
            })
        })
        .collect();
    wait_until("some writes acknowledged", || {
        (acknowledged.lock().expect("lock").len() >= 200).then_some(())
    });
    cluster.member_mut(old_leader).sigkill();
    for writer in writers {
        writer.join().expect("writer thread");
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    let new_leader = cluster.wait_for_leader();
    assert_ne!(new_leader, old_leader);
    let mut client = cluster.member(new_leader).client();
    for chunk in acknowledged.chunks(200) {
        let mut mget = vec!["MGET"];
        mget.extend(chunk.iter().map(|(k, _)| k.as_str()));
        let RespValue::Array(Some(values)) = client.call(&mget) else {
            panic!("MGET returns an array")
        };
        for ((key, value), got) in chunk.iter().zip(values) {
            assert_eq!(got, bulk(value), "acknowledged write of {key} lost");
        }
    }
    // More writes while the old leader is down, then restart it from its directory.
    for i in 0..50 {
        assert_eq!(client.call(&["SET", &format!("after-{i}"), "x"]), ok());
    }
    let commit = cluster
        .member(new_leader)
        .info_u64("commit_index")
        .expect("commit index");
    cluster.member_mut(old_leader).spawn();
    cluster.wait_applied(old_leader, commit);
    // The restarted member rejoins: all three agree on one leader again.
    cluster.wait_for_leader();
}

#[test]
fn a_follower_cut_off_by_a_proxy_catches_up_after_healing() {
    // Every link goes through its own proxy, so one member can be isolated.
    let proxies: Arc<Mutex<BTreeMap<(u64, u64), Proxy>>> = Arc::default();
    let recorded = Arc::clone(&proxies);
    let cluster = Cluster::start_with(3, move |from, to, port| {
        let proxy = Proxy::start(port);
        let proxy_port = proxy.port;
        recorded.lock().expect("lock").insert((from, to), proxy);
        proxy_port
    });
    let leader = cluster.wait_for_leader();
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let links_of_follower = |proxies: &BTreeMap<(u64, u64), Proxy>, pause: bool| {
        for ((from, to), proxy) in proxies {
            if *from == follower || *to == follower {
                if pause {
                    proxy.pause();
                } else {
                    proxy.resume();
                }
            }
        }
    };
    links_of_follower(&proxies.lock().expect("lock"), true);
    let mut client = cluster.member(leader).client();
    for i in 0..100 {
        assert_eq!(
            client.call(&["SET", &format!("cut-{i}"), &i.to_string()]),
            ok()
        );
    }
    let commit = cluster
        .member(leader)
        .info_u64("commit_index")
        .expect("commit index");
    let behind = cluster
        .member(follower)
        .info_u64("applied_index")
        .expect("applied");
    assert!(
        behind < commit,
        "the cut-off follower cannot have applied the new writes"
    );
    links_of_follower(&proxies.lock().expect("lock"), false);
    cluster.wait_applied(follower, commit);
    // The cluster still agrees on one leader once the follower is back.
    cluster.wait_for_leader();
}

#[test]
fn bad_resp_and_bad_peer_frames_close_only_that_connection() {
    let cluster = Cluster::start(1);
    let leader = cluster.wait_for_leader();
    assert_eq!(leader, 1);
    let member = cluster.member(1);
    let cases: [(&str, &[u8]); 3] = [
        ("garbage", b"*abc\r\n"),
        ("oversized bulk", b"*2\r\n$3\r\nGET\r\n$99999999999\r\n"),
        ("bad element type", b"*1\r\n:12\r\n"),
    ];
    for (what, bytes) in cases {
        let mut client = member.client();
        assert_eq!(client.call(&["SET", "before", what]), ok());
        client.send_raw(bytes);
        let reply = client
            .read_reply()
            .unwrap_or_else(|| panic!("{what}: an error reply"));
        let text = error_text(&reply).unwrap_or_else(|| panic!("{what}: got {reply:?}"));
        assert!(text.starts_with("ERR Protocol error"), "{what}: {text}");
        assert!(client.is_closed_by_server(), "{what}: connection closed");
    }
    // A request cut off by a half-close.
    let mut client = member.client();
    client.send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nk");
    client.stream.shutdown(Shutdown::Write).expect("half close");
    let reply = client
        .read_reply()
        .expect("an error for the truncated request");
    assert!(error_text(&reply).is_some_and(|t| t.starts_with("ERR Protocol error")));
    // Garbage on the peer port closes that connection only.
    let mut peer = TcpStream::connect(("127.0.0.1", member.peer_port)).expect("connect peer port");
    peer.set_read_timeout(Some(DEADLINE)).expect("timeout");
    peer.write_all(&[0xAB; 64]).expect("send garbage");
    let mut sink = [0u8; 64];
    assert!(
        matches!(peer.read(&mut sink), Ok(0) | Err(_)),
        "peer port closes on garbage"
    );
    // The node keeps serving.
    let mut client = member.client();
    assert_eq!(client.call(&["GET", "before"]), bulk("bad element type"));
    assert_eq!(
        client.call(&["HELLO", "3"]),
        RespValue::Error(b"NOPROTO unsupported protocol version".to_vec())
    );
    assert_eq!(member.raft_info().expect("INFO")["role"], "leader");
}

fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| Path::new(candidate).is_file())
    })
}

#[test]
fn redis_cli_and_redis_benchmark_work_against_the_cluster() {
    let (Some(redis_cli), Some(redis_benchmark)) = (tool("redis-cli"), tool("redis-benchmark"))
    else {
        println!("SKIP redis_cli_and_redis_benchmark_work_against_the_cluster: redis-cli/redis-benchmark not installed (apt-get install -y redis-tools)");
        return;
    };
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let port = cluster.member(leader).client_port.to_string();
    let run = |program: &PathBuf, args: &[&str]| {
        let output = Command::new(program)
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .expect("run redis tool");
        assert!(
            output.status.success(),
            "{program:?} {args:?} failed: {output:?}"
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(run(&redis_cli, &["SET", "tool-key", "hello"]).trim(), "OK");
    assert_eq!(run(&redis_cli, &["GET", "tool-key"]).trim(), "hello");
    assert!(run(&redis_cli, &["INFO", "raft"]).contains("role:leader"));
    let report = run(
        &redis_benchmark,
        &["-t", "set,get", "-n", "2000", "-P", "8", "-q"],
    );
    assert!(
        report.contains("SET:") && report.contains("GET:"),
        "benchmark report: {report}"
    );
    // redis-benchmark wrote key:__rand_int__ (the default keyspace: one key).
    assert_eq!(run(&redis_cli, &["EXISTS", "key:__rand_int__"]).trim(), "1");
}
