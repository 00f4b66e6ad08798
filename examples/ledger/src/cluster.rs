//! A local cluster of ledger members in one process, and a client that speaks the line
//! protocol ([`crate::front_end`]) and retries with exactly-once semantics.
//!
//! Each member is a `tally_net::server::Server` of `ExactlyOnce<Ledger>` with the
//! ledger's own front end, its own directory, a loopback peer port and a loopback client
//! port; members prove a shared cluster secret to each other and talk over real TCP,
//! exactly as separate machines would. The client knows only the client addresses.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tally_engine::driver::SnapshotPolicy;
use tally_engine::exactly_once::{ClientSession, ExactlyOnce, SessionLimits, SessionRequest};
use tally_engine::raft::Role;
use tally_engine::runtime::NodeHandle;
use tally_net::handshake::ClusterSecret;
use tally_net::server::{Server, ServerBuilder, ServerConfig, ServerError};

use crate::front_end::{encode_hex, LineFrontEnd, LineServer, MAX_LINE_BYTES};
use crate::ledger::{Ledger, LedgerReply};
use crate::Response;

/// A running ledger member: the generic server with the line front end.
pub type LedgerServer = Server<Response, LineServer>;

/// How to start a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of members.
    pub size: usize,
    /// Take a snapshot every this many entries, keeping half as many below it (0: the
    /// default policy).
    pub snapshot_every: u64,
    /// Base election timeout of every member.
    pub election_timeout_ms: u64,
    /// Seed a new one-member cluster (`size` 1) from this snapshot file, taken with
    /// `NodeHandle::snapshot_now` on any ledger member (`ServerConfig::restore_from`).
    pub restore_from: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            size: 3,
            snapshot_every: 0,
            election_timeout_ms: 500,
            restore_from: None,
        }
    }
}

/// A member slot: its configuration and addresses, and the running server unless
/// stopped.
struct Member {
    config: ServerConfig,
    peer_addr: SocketAddr,
    client_addr: SocketAddr,
    running: Option<LedgerServer>,
}

/// Members on loopback, each with a directory under one root.
pub struct LocalCluster {
    /// Invariant: index i holds member id i + 1.
    members: Mutex<Vec<Member>>,
}

fn bind_loopback(what: &'static str) -> Result<TcpListener, ServerError> {
    TcpListener::bind("127.0.0.1:0").map_err(|source| ServerError::Io { what, source })
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, ServerError> {
    listener.local_addr().map_err(|source| ServerError::Io {
        what: "listener address",
        source,
    })
}

impl LocalCluster {
    /// Starts the members with directories `root/node-<id>` (recovered if present) and
    /// a fresh random cluster secret.
    pub fn start(root: &Path, options: &ClusterOptions) -> Result<LocalCluster, ServerError> {
        let secret = ClusterSecret::from_bytes(&rand::random::<[u8; 32]>())
            .map_err(|error| ServerError::Config(error.to_string()))?;
        let mut listeners = Vec::with_capacity(options.size);
        for _ in 0..options.size {
            listeners.push((bind_loopback("peer port")?, bind_loopback("client port")?));
        }
        let peer_addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|(peer, _)| local_addr(peer))
            .collect::<Result<_, _>>()?;
        let mut members = Vec::with_capacity(options.size);
        for (index, (peer_listener, client_listener)) in listeners.into_iter().enumerate() {
            let id = index as u64 + 1;
            let peers = peer_addrs
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != index)
                .map(|(other, addr)| (other as u64 + 1, *addr))
                .collect();
            let mut config = ServerConfig::new(id, node_dir(root, id), peers);
            config.cluster_secret = Some(secret.clone());
            config.election_timeout_ms = options.election_timeout_ms;
            if options.snapshot_every > 0 {
                config.snapshot = SnapshotPolicy {
                    log_entries: options.snapshot_every,
                    retain_entries: options.snapshot_every / 2,
                    ..SnapshotPolicy::default()
                };
            }
            config.restore_from = options.restore_from.clone();
            let client_addr = local_addr(&client_listener)?;
            let running = start_member(&config, peer_listener, client_listener)?;
            // Restored once; a restart recovers the directory instead.
            config.restore_from = None;
            members.push(Member {
                config,
                peer_addr: peer_addrs[index],
                client_addr,
                running: Some(running),
            });
        }
        Ok(LocalCluster {
            members: Mutex::new(members),
        })
    }

    /// Member ids.
    pub fn ids(&self) -> Vec<u64> {
        (1..=self.lock().len() as u64).collect()
    }

    /// Every member's client address (what a client is configured with).
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.lock()
            .iter()
            .map(|member| member.client_addr)
            .collect()
    }

    /// One member's client address.
    pub fn client_addr(&self, id: u64) -> Option<SocketAddr> {
        let members = self.lock();
        Some(members.get(id.checked_sub(1)? as usize)?.client_addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on a running member.
    pub fn with_member<T>(&self, id: u64, f: impl FnOnce(&LedgerServer) -> T) -> Option<T> {
        let members = self.lock();
        let member = members.get(id.checked_sub(1)? as usize)?;
        member.running.as_ref().map(f)
    }

    /// The handle of a running member (drop it before restarting that member: it keeps
    /// the node's WAL, and its directory lock, alive).
    pub fn handle(&self, id: u64) -> Option<NodeHandle<Response>> {
        self.with_member(id, Server::handle)
    }

    /// The running member that currently believes it leads, if any.
    pub fn leader(&self) -> Option<u64> {
        self.ids().into_iter().find(|id| {
            self.with_member(*id, |server| {
                server.handle().status().role() == Role::Leader
            })
            .unwrap_or(false)
        })
    }

    /// Waits until some member leads.
    pub fn wait_for_leader(&self, patience: Duration) -> Option<u64> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(id) = self.leader() {
                return Some(id);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops a member (its directory stays): what a crash of that machine looks like to
    /// the others and to its clients (a request it holds is answered `UNKNOWN`).
    pub fn stop(&self, id: u64) -> Result<(), ServerError> {
        let server = {
            let mut members = self.lock();
            members
                .get_mut(id.saturating_sub(1) as usize)
                .and_then(|member| member.running.take())
        };
        match server {
            Some(server) => server.shutdown(),
            None => Ok(()),
        }
    }

    /// Restarts a stopped member on its old directory and addresses.
    pub fn restart(&self, id: u64) -> Result<(), ServerError> {
        let (config, peer_addr, client_addr) = {
            let members = self.lock();
            let member = members
                .get(id.saturating_sub(1) as usize)
                .ok_or_else(|| ServerError::Config(format!("no member {id}")))?;
            (member.config.clone(), member.peer_addr, member.client_addr)
        };
        let server = start_member(&config, bind_again(peer_addr)?, bind_again(client_addr)?)?;
        self.lock()[id as usize - 1].running = Some(server);
        Ok(())
    }

    /// Stops every member.
    pub fn shutdown(self) -> Result<(), ServerError> {
        for id in self.ids() {
            self.stop(id)?;
        }
        Ok(())
    }
}

fn node_dir(root: &Path, id: u64) -> PathBuf {
    root.join(format!("node-{id}"))
}

/// One member: the ledger wrapped for exactly-once writes, behind the line front end.
fn start_member(
    config: &ServerConfig,
    peer_listener: TcpListener,
    client_listener: TcpListener,
) -> Result<LedgerServer, ServerError> {
    let state_machine = ExactlyOnce::new(Ledger::new(), SessionLimits::default());
    let front_end = LineFrontEnd::new(client_listener).map_err(|source| ServerError::Io {
        what: "client listener",
        source,
    })?;
    ServerBuilder::new(config.clone(), state_machine)
        .front_end(front_end)
        .start(peer_listener)
}

/// Rebinds a port just released by a stopped member (retrying briefly while the kernel
/// lets go of it).
fn bind_again(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(source) if Instant::now() >= deadline => {
                return Err(ServerError::Io {
                    what: "rebind a port",
                    source,
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Why a client request gave up.
#[derive(Debug, thiserror::Error)]
pub enum ClientFailure {
    /// No member answered within the client's patience.
    #[error("no leader answered within {0:?}")]
    Timeout(Duration),
    /// The session refused the request (a stale retry); nothing was applied.
    #[error("{0}")]
    Session(String),
    /// The server refused the request as malformed.
    #[error("refused by the server: {0}")]
    Protocol(String),
}

/// What one attempt of a request came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The ledger's reply: applied (or the stored reply of an applied retry).
    Reply(LedgerReply),
    /// The session refused an old retry.
    Stale(String),
    /// Ask this client address instead (`None`: the member knows no leader).
    NotLeader(Option<String>),
    /// The write may or may not apply (leader lost, stopped, no answer).
    Unknown,
    /// Not done; try again.
    Retry(String),
    /// The connection failed or closed before a reply: as unknown as `Unknown`.
    Lost,
    /// `ERR`: the server refused the request itself.
    Error(String),
}

fn parse_reply(line: &str) -> AttemptOutcome {
    let line = line.trim_end_matches(['\r', '\n']);
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    match verb {
        "DONE" => AttemptOutcome::Reply(LedgerReply::Done),
        "AMOUNT" => match rest.parse() {
            Ok(amount) => AttemptOutcome::Reply(LedgerReply::Amount(amount)),
            Err(_) => AttemptOutcome::Error(format!("bad amount {rest:?}")),
        },
        "REFUSED" => AttemptOutcome::Reply(LedgerReply::Refused(rest.to_string())),
        "STALE" => AttemptOutcome::Stale(rest.to_string()),
        "NOTLEADER" => AttemptOutcome::NotLeader((rest != "?").then(|| rest.to_string())),
        "UNKNOWN" => AttemptOutcome::Unknown,
        "RETRY" => AttemptOutcome::Retry(rest.to_string()),
        _ => AttemptOutcome::Error(line.to_string()),
    }
}

/// A request sent on its own connection whose reply is not read yet (to stop a member
/// between the two in tests).
pub struct PendingAttempt {
    reader: BufReader<TcpStream>,
}

impl PendingAttempt {
    /// Sends `line` to `addr` on a new connection.
    pub fn send(addr: SocketAddr, line: &str, timeout: Duration) -> std::io::Result<Self> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(line.as_bytes())?;
        Ok(PendingAttempt {
            reader: BufReader::new(stream),
        })
    }

    /// Reads the reply (bounded to one line of `MAX_LINE_BYTES`).
    pub fn outcome(mut self) -> AttemptOutcome {
        let mut line = String::new();
        match (&mut self.reader)
            .take(MAX_LINE_BYTES as u64)
            .read_line(&mut line)
        {
            Ok(0) | Err(_) => AttemptOutcome::Lost,
            Ok(_) if !line.ends_with('\n') => AttemptOutcome::Lost,
            Ok(_) => parse_reply(&line),
        }
    }
}

/// A ledger client: one exactly-once session, following the leader over the line
/// protocol.
pub struct LedgerClient {
    addrs: Vec<SocketAddr>,
    session: ClientSession,
    /// Where the next attempt goes.
    target: SocketAddr,
    /// Total time one request may take, retries included.
    pub patience: Duration,
    /// How long one attempt waits for its reply before trying again.
    pub attempt_timeout: Duration,
    /// Attempts repeated (unknown outcomes, redirects, timeouts, no leader known).
    pub retries: u64,
    /// Attempts of writes whose outcome was unknown (`UNKNOWN` or a lost connection).
    pub unknown_outcomes: u64,
}

impl LedgerClient {
    /// A client of the members at `addrs` (at least one) with a fresh random session.
    pub fn new(addrs: Vec<SocketAddr>) -> LedgerClient {
        let target = addrs
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        LedgerClient {
            addrs,
            session: ClientSession::new(),
            target,
            patience: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(5),
            retries: 0,
            unknown_outcomes: 0,
        }
    }

    /// Points this client (its session unchanged) at other members' client addresses,
    /// e.g. a cluster restored from a snapshot of the old one.
    pub fn set_members(&mut self, addrs: Vec<SocketAddr>) {
        if let Some(first) = addrs.first() {
            self.target = *first;
        }
        self.addrs = addrs;
    }

    /// Numbers a command for this session without sending it (to send it with
    /// [`LedgerClient::send`], possibly several times).
    pub fn prepare(&mut self, command: &str) -> SessionRequest {
        self.session.next_request(command.as_bytes())
    }

    /// The request line of a prepared write.
    pub fn propose_line(request: &SessionRequest) -> String {
        format!("PROPOSE {}\n", encode_hex(&request.bytes))
    }

    /// Runs a command until it is applied exactly once or refused.
    pub fn execute(&mut self, command: &str) -> Result<LedgerReply, ClientFailure> {
        let request = self.prepare(command);
        self.send(&request)
    }

    /// Sends a prepared request to the leader, resending the very same bytes after any
    /// outcome that leaves it unknown; the session makes every resend safe.
    pub fn send(&mut self, request: &SessionRequest) -> Result<LedgerReply, ClientFailure> {
        let line = Self::propose_line(request);
        self.until_answered(&line, true)
    }

    /// A linearizable read (`balance <account>`, `total`) on the leader.
    pub fn query(&mut self, query: &str) -> Result<LedgerReply, ClientFailure> {
        self.until_answered(&format!("READ {query}\n"), false)
    }

    fn until_answered(&mut self, line: &str, write: bool) -> Result<LedgerReply, ClientFailure> {
        let deadline = Instant::now() + self.patience;
        loop {
            if Instant::now() >= deadline {
                return Err(ClientFailure::Timeout(self.patience));
            }
            let outcome = match PendingAttempt::send(self.target, line, self.attempt_timeout) {
                Ok(pending) => pending.outcome(),
                // Not sent: as if that member knew no leader.
                Err(_) => AttemptOutcome::NotLeader(None),
            };
            match outcome {
                AttemptOutcome::Reply(reply) => return Ok(reply),
                AttemptOutcome::Stale(reason) => return Err(ClientFailure::Session(reason)),
                AttemptOutcome::Error(reason) => return Err(ClientFailure::Protocol(reason)),
                AttemptOutcome::NotLeader(Some(addr)) => match addr.parse() {
                    Ok(leader) => self.target = leader,
                    Err(_) => self.next_member(),
                },
                AttemptOutcome::Unknown | AttemptOutcome::Lost => {
                    if write {
                        self.unknown_outcomes += 1;
                    }
                    self.next_member();
                }
                AttemptOutcome::NotLeader(None) | AttemptOutcome::Retry(_) => self.next_member(),
            }
            self.retries += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Tries the next configured member (the leader may have moved or died).
    fn next_member(&mut self) {
        if let Some(position) = self.addrs.iter().position(|addr| *addr == self.target) {
            self.target = self.addrs[(position + 1) % self.addrs.len()];
        } else if let Some(first) = self.addrs.first() {
            self.target = *first;
        }
    }
}
