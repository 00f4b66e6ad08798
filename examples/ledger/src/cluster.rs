//! A local cluster of ledger replicas in one process, and a client that follows the
//! leader and retries with exactly-once semantics.
//!
//! Each replica is a [`tally_net::replica::Replica`] of `ExactlyOnce<Ledger>` with its
//! own directory and loopback peer port; they talk over real TCP, exactly as separate
//! machines would. The client reaches replicas through their `NodeHandle`s (the
//! in-process front end); a database with a network front end would put its own
//! protocol in front of the same calls.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{bounded, RecvTimeoutError};
use tally_engine::driver::SnapshotPolicy;
use tally_engine::exactly_once::{
    ClientSession, ExactlyOnce, SessionError, SessionLimits, SessionRequest,
};
use tally_engine::raft::Role;
use tally_engine::runtime::{ClientError, NodeHandle, ReplyTo};
use tally_net::replica::{Replica, ReplicaConfig};
use tally_net::server::ServerError;

use crate::ledger::{Ledger, LedgerReply};

/// What every replica answers: the ledger's reply, or why the session refused it.
pub type Response = Result<LedgerReply, SessionError>;

/// A replica slot: its configuration, and the running replica unless stopped.
struct Member {
    config: ReplicaConfig,
    peer_addr: SocketAddr,
    running: Option<Replica<Response>>,
}

/// Replicas on loopback, each with a directory under one root.
pub struct LocalCluster {
    /// Invariant: index i holds member id i + 1.
    members: Mutex<Vec<Member>>,
}

impl LocalCluster {
    /// Starts `size` replicas with directories `root/node-<id>` (recovered if present).
    /// `snapshot_every` entries, a snapshot is taken (0: the default policy).
    pub fn start(
        root: &Path,
        size: usize,
        snapshot_every: u64,
    ) -> Result<LocalCluster, ServerError> {
        let listeners: Vec<TcpListener> = (0..size)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()
            .map_err(|source| ServerError::Io {
                what: "bind a peer port",
                source,
            })?;
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<Result<_, _>>()
            .map_err(|source| ServerError::Io {
                what: "peer port address",
                source,
            })?;
        let mut members = Vec::with_capacity(size);
        for (index, listener) in listeners.into_iter().enumerate() {
            let id = index as u64 + 1;
            let peers = addrs
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != index)
                .map(|(other, addr)| (other as u64 + 1, *addr))
                .collect();
            let mut config = ReplicaConfig::new(id, node_dir(root, id), peers);
            if snapshot_every > 0 {
                config.snapshot = SnapshotPolicy {
                    log_entries: snapshot_every,
                    retain_entries: snapshot_every / 2,
                    ..SnapshotPolicy::default()
                };
            }
            let running = start_replica(&config, listener)?;
            members.push(Member {
                config,
                peer_addr: addrs[index],
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The handle of a running member.
    pub fn handle(&self, id: u64) -> Option<NodeHandle<Response>> {
        let members = self.lock();
        let member = members.get(id.checked_sub(1)? as usize)?;
        member.running.as_ref().map(Replica::handle)
    }

    /// The running member that currently believes it leads, if any.
    pub fn leader(&self) -> Option<u64> {
        self.ids().into_iter().find(|id| {
            self.handle(*id)
                .is_some_and(|handle| handle.status().role() == Role::Leader)
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
    /// the others.
    pub fn stop(&self, id: u64) -> Result<(), ServerError> {
        let replica = {
            let mut members = self.lock();
            members
                .get_mut(id as usize - 1)
                .and_then(|member| member.running.take())
        };
        match replica {
            Some(replica) => replica.shutdown(),
            None => Ok(()),
        }
    }

    /// Restarts a stopped member on its old directory and peer address.
    pub fn restart(&self, id: u64) -> Result<(), ServerError> {
        let (config, addr) = {
            let members = self.lock();
            let member = &members[id as usize - 1];
            (member.config.clone(), member.peer_addr)
        };
        let listener = bind_again(addr)?;
        let replica = start_replica(&config, listener)?;
        self.lock()[id as usize - 1].running = Some(replica);
        Ok(())
    }

    /// Stops every member.
    pub fn shutdown(self) -> Result<(), ServerError> {
        let ids = self.ids();
        for id in ids {
            self.stop(id)?;
        }
        Ok(())
    }
}

fn node_dir(root: &Path, id: u64) -> PathBuf {
    root.join(format!("node-{id}"))
}

fn start_replica(
    config: &ReplicaConfig,
    listener: TcpListener,
) -> Result<Replica<Response>, ServerError> {
    let state_machine = ExactlyOnce::new(Ledger::new(), SessionLimits::default());
    Replica::start(config.clone(), listener, state_machine)
}

/// Rebinds a peer port just released by a stopped member (retrying briefly while the
/// kernel lets go of it).
fn bind_again(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(source) if Instant::now() >= deadline => {
                return Err(ServerError::Io {
                    what: "rebind a peer port",
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
    Session(SessionError),
}

/// A ledger client: one exactly-once session, following the leader.
pub struct LedgerClient<'a> {
    cluster: &'a LocalCluster,
    session: ClientSession,
    /// Total time one request may take, retries included.
    pub patience: Duration,
    /// How long one attempt waits for its reply before trying again.
    pub attempt_timeout: Duration,
    /// Attempts repeated (unknown outcomes, redirects, timeouts, no leader known).
    pub retries: u64,
}

impl<'a> LedgerClient<'a> {
    /// A client with a fresh random session.
    pub fn new(cluster: &'a LocalCluster) -> LedgerClient<'a> {
        LedgerClient {
            cluster,
            session: ClientSession::new(),
            patience: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(5),
            retries: 0,
        }
    }

    /// Numbers a command for this session without sending it (to send it with
    /// [`LedgerClient::send`], possibly several times).
    pub fn prepare(&mut self, command: &str) -> SessionRequest {
        self.session.next_request(command.as_bytes())
    }

    /// Runs a command until it is applied exactly once or refused.
    pub fn execute(&mut self, command: &str) -> Result<LedgerReply, ClientFailure> {
        let request = self.prepare(command);
        self.send(&request)
    }

    /// Sends a prepared request to the leader, retrying the very same bytes after any
    /// outcome that leaves it unknown; the session makes every retry safe.
    pub fn send(&mut self, request: &SessionRequest) -> Result<LedgerReply, ClientFailure> {
        let deadline = Instant::now() + self.patience;
        let mut target = self.cluster.leader();
        loop {
            if Instant::now() >= deadline {
                return Err(ClientFailure::Timeout(self.patience));
            }
            let handle = target.and_then(|id| self.cluster.handle(id));
            let Some(handle) = handle else {
                std::thread::sleep(Duration::from_millis(20));
                target = self.cluster.leader();
                self.retries += 1;
                continue;
            };
            match attempt(&handle, request.bytes.clone(), self.attempt_timeout) {
                Some(Ok(Ok(reply))) => return Ok(reply),
                Some(Ok(Err(refused))) => return Err(ClientFailure::Session(refused)),
                Some(Err(ClientError::NotLeader {
                    leader: Some(leader),
                })) => {
                    target = Some(leader);
                }
                // Unknown outcome, not committed, stopped, overloaded, no leader known,
                // or no answer in time: the same bytes again, to whoever leads now.
                _ => {
                    std::thread::sleep(Duration::from_millis(20));
                    target = self.cluster.leader();
                }
            }
            self.retries += 1;
        }
    }

    /// A linearizable read (`balance <account>`, `total`) on the leader.
    pub fn query(&mut self, query: &str) -> Result<LedgerReply, ClientFailure> {
        let deadline = Instant::now() + self.patience;
        loop {
            if Instant::now() >= deadline {
                return Err(ClientFailure::Timeout(self.patience));
            }
            if let Some(handle) = self.cluster.leader().and_then(|id| self.cluster.handle(id)) {
                let (sender, receiver) = bounded(1);
                handle.read(
                    Bytes::copy_from_slice(query.as_bytes()),
                    ReplyTo::new(0, sender),
                );
                if let Ok(reply) = receiver.recv_timeout(self.attempt_timeout) {
                    if let Ok(Ok(answer)) = reply.result {
                        return Ok(answer);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One proposal and its reply; `None` if no reply came in time.
fn attempt(
    handle: &NodeHandle<Response>,
    payload: Bytes,
    timeout: Duration,
) -> Option<Result<Response, ClientError>> {
    let (sender, receiver) = bounded(1);
    handle.propose(payload, ReplyTo::new(0, sender));
    match receiver.recv_timeout(timeout) {
        Ok(reply) => Some(reply.result),
        Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
    }
}
