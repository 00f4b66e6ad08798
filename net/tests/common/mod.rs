//! The harness shared by the process-level tests: a small RESP client, real
//! `tally-server` member processes (killed by a drop guard even when a test panics), a
//! cluster of them, and a pausable TCP proxy.
//!
//! No timing assertions: every wait is a poll with a generous deadline so a broken build
//! fails instead of hanging.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tally_net::resp::{parse_reply, write_command, RespLimits, RespValue};

pub const DEADLINE: Duration = Duration::from_secs(60);

/// A port nothing listens on now and that no other call in this process returned.
///
/// Ports come from a per-process counter below the kernel's ephemeral range (so no
/// outgoing connection's local port can take one between this call and the bind), each
/// checked by binding it once. Asking the kernel for port 0 instead could hand two
/// tests running in parallel threads the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = FIRST + (std::process::id() * 997) % SPAN;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(offset < SPAN, "ran out of test ports");
        let port = (FIRST + (start - FIRST + offset) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
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

pub struct Client {
    pub stream: TcpStream,
    pub buffer: Vec<u8>,
}

impl Client {
    pub fn connect(port: u16) -> std::io::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(DEADLINE))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buffer: Vec::new(),
        })
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads one reply; `None` when the server closed the connection.
    pub fn read_reply(&mut self) -> Option<RespValue> {
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
    pub fn pipeline(&mut self, commands: &[Vec<Vec<u8>>]) -> Vec<RespValue> {
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

    pub fn call(&mut self, args: &[&str]) -> RespValue {
        let command: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        self.pipeline(&[command]).remove(0)
    }

    /// Whether the server closed the connection (EOF within the deadline).
    pub fn is_closed_by_server(&mut self) -> bool {
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

pub fn cmd(args: &[&str]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.as_bytes().to_vec()).collect()
}

pub fn ok() -> RespValue {
    RespValue::Simple(b"OK".to_vec())
}

pub fn bulk(text: &str) -> RespValue {
    RespValue::Bulk(Some(text.as_bytes().to_vec()))
}

pub fn error_text(value: &RespValue) -> Option<String> {
    match value {
        RespValue::Error(text) => Some(String::from_utf8_lossy(text).into_owned()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------
// Processes.

pub struct Member {
    pub id: u64,
    pub peer_port: u16,
    pub client_port: u16,
    pub dir: PathBuf,
    /// The address this member dials for each other member.
    pub dials: Vec<(u64, u16)>,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// Extra command-line arguments given at every start.
    pub extra_args: Vec<String>,
    /// `--cluster-secret-file` given at every start (kept apart from `extra_args`, which
    /// tests replace).
    pub secret_file: Option<PathBuf>,
}

impl Member {
    pub fn spawn(&mut self) {
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
            .arg("--wal-backend")
            .arg("sync")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // Default timing unless the test chose its own.
        if !self
            .extra_args
            .iter()
            .any(|arg| arg == "--election-timeout-ms")
        {
            command.args(["--election-timeout-ms", "500"]);
        }
        if !self.extra_args.iter().any(|arg| arg == "--heartbeat-ms") {
            command.args(["--heartbeat-ms", "50"]);
        }
        command.args(&self.extra_args);
        if let Some(secret) = &self.secret_file {
            command.arg("--cluster-secret-file").arg(secret);
        }
        for (peer, port) in &self.dials {
            command
                .arg("--peer")
                .arg(format!("{peer}=127.0.0.1:{port}"));
        }
        self.child = Some(command.spawn().expect("spawn tally-server"));
    }

    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then the exit status.
    pub fn sigterm(&mut self) -> std::process::ExitStatus {
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

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Anonymous resident memory of the running process (heap, not mapped files), in
    /// KiB, from /proc.
    pub fn rss_anon_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("RssAnon:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// One INFO section as a map; `None` if the member does not answer.
    pub fn info_section(&self, section: &str) -> Option<BTreeMap<String, String>> {
        let mut client = Client::connect(self.client_port).ok()?;
        let RespValue::Bulk(Some(text)) = client.call(&["INFO", section]) else {
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

    pub fn client(&self) -> Client {
        wait_until("client port accepts", || {
            Client::connect(self.client_port).ok()
        })
    }

    /// The `# Raft` section as a map; `None` if the member does not answer.
    pub fn raft_info(&self) -> Option<BTreeMap<String, String>> {
        self.info_section("raft")
    }

    pub fn info_u64(&self, key: &str) -> Option<u64> {
        self.raft_info()?.get(key)?.parse().ok()
    }
}

/// Set `TALLY_TEST_CLUSTER_SECRET=1` to run every process-level cluster of the tests
/// with a cluster secret (`cargo test -p tally-net` passes both ways; `.ci/run` runs the
/// multi-member test binaries a second time so). Every member the harness lays out gets
/// it; `wait_for_leader` checks the running ones use it. Exempt: tests that clear
/// `secret_file` on purpose (`peer_cluster_id.rs`: clusters without a secret) or set
/// their own (`peer_security.rs`).
pub const CLUSTER_SECRET_ENV: &str = "TALLY_TEST_CLUSTER_SECRET";

pub fn cluster_secret_from_env() -> bool {
    std::env::var_os(CLUSTER_SECRET_ENV).is_some_and(|value| value != "0" && !value.is_empty())
}

pub struct Cluster {
    pub members: Vec<Member>,
    /// Kept so the directories outlive the processes.
    pub _root: tempfile::TempDir,
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
    pub fn start_with(size: u64, dial_port: impl FnMut(u64, u64, u16) -> u16) -> Cluster {
        let mut cluster = Cluster::start_with_stopped(size, dial_port);
        for member in &mut cluster.members {
            member.spawn();
        }
        cluster
    }

    /// Lays out `size` members without starting them.
    pub fn start_with_stopped(
        size: u64,
        mut dial_port: impl FnMut(u64, u64, u16) -> u16,
    ) -> Cluster {
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
                extra_args: Vec::new(),
                secret_file: None,
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
        let mut cluster = Cluster {
            members,
            _root: root,
        };
        if cluster_secret_from_env() {
            cluster.use_cluster_secret();
        }
        cluster
    }

    /// Gives every member the same new `--cluster-secret-file` (from its next start on).
    pub fn use_cluster_secret(&mut self) -> PathBuf {
        let path = self._root.path().join("cluster.secret");
        if !path.exists() {
            let text = tally_net::handshake::ClusterSecret::generate_file_text();
            std::fs::write(&path, text).expect("write the cluster secret");
        }
        for member in &mut self.members {
            member.secret_file = Some(path.clone());
        }
        path
    }

    /// Starts `size` members that share a cluster secret.
    pub fn start_secured(size: u64) -> Cluster {
        let mut cluster = Cluster::start_with_stopped(size, |_, _, port| port);
        cluster.use_cluster_secret();
        for member in &mut cluster.members {
            member.spawn();
        }
        cluster
    }

    pub fn start(size: u64) -> Cluster {
        Cluster::start_with(size, |_, _, port| port)
    }

    /// Starts `size` members, each with `extra_args` on its command line.
    pub fn start_with_args(size: u64, extra_args: &[&str]) -> Cluster {
        let mut cluster = Cluster::start_with_stopped(size, |_, _, port| port);
        for member in &mut cluster.members {
            member.extra_args = extra_args.iter().map(|arg| arg.to_string()).collect();
            member.spawn();
        }
        cluster
    }

    pub fn member(&self, id: u64) -> &Member {
        &self.members[(id - 1) as usize]
    }

    pub fn member_mut(&mut self, id: u64) -> &mut Member {
        &mut self.members[(id - 1) as usize]
    }

    /// Waits until exactly one running member reports `role:leader` and every running
    /// member names it as leader; returns its id.
    pub fn wait_for_leader(&self) -> u64 {
        let leader = wait_until("one leader that every running member agrees on", || {
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
        });
        if cluster_secret_from_env() {
            self.assert_secret_in_use();
        }
        leader
    }

    /// Under `TALLY_TEST_CLUSTER_SECRET=1`: every running member the test did not
    /// deliberately leave without a secret started with one (its ready line says so).
    pub fn assert_secret_in_use(&self) {
        for member in self.members.iter().filter(|m| m.child.is_some()) {
            if member.secret_file.is_none() {
                continue;
            }
            wait_until(
                &format!("member {} reports its peer auth", member.id),
                || {
                    let log = std::fs::read_to_string(&member.log).ok()?;
                    let ready = log
                        .lines()
                        .rev()
                        .find(|l| l.contains("tally-server ready"))?;
                    assert!(
                        ready.contains("cluster secret"),
                        "member {} runs without the cluster secret: {ready}",
                        member.id
                    );
                    Some(())
                },
            );
        }
    }

    /// Waits until `id` has applied at least `index`.
    pub fn wait_applied(&self, id: u64, index: u64) {
        wait_until(&format!("member {id} applies through {index}"), || {
            (self.member(id).info_u64("applied_index")? >= index).then_some(())
        });
    }
}

// ---------------------------------------------------------------------------------
// A pausable TCP proxy (for cutting a member off).

pub struct Proxy {
    pub port: u16,
    pub paused: Arc<AtomicBool>,
    /// Open proxied sockets, closed when the proxy pauses.
    pub open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(target_port: u16) -> Proxy {
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
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        for stream in self.open.lock().expect("proxy lock").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}
