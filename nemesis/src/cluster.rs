//! The `tally-server` member processes: start, kill -9, SIGSTOP/SIGCONT, restart (same
//! directory, optionally with a slow emulated disk), INFO.
//!
//! Every child is killed when the [`Cluster`] drops, a panic included, so a failed run
//! leaves no process behind.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::client::RespConnection;
use crate::proxy::Network;
use crate::NemesisError;

/// How a member is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    Normal,
    /// `--emulated-fsync-delay-us`.
    Slow {
        fsync_delay_us: u64,
    },
}

/// One member process.
pub struct Member {
    pub id: u64,
    pub client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    log: PathBuf,
    /// `(peer id, port this member dials for it)`: the proxies.
    dials: Vec<(u64, u16)>,
    child: Option<Child>,
    paused: bool,
    disk: Disk,
}

impl Member {
    /// Starts the process (it must not be running).
    fn spawn(&mut self, server_bin: &Path, disk: Disk) -> Result<(), NemesisError> {
        debug_assert!(self.child.is_none(), "member {} already running", self.id);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(NemesisError::io("open member log"))?;
        let mut command = Command::new(server_bin);
        command
            .arg("--id")
            .arg(self.id.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .arg("--listen-peer")
            .arg(format!("127.0.0.1:{}", self.peer_port))
            .arg("--listen-client")
            .arg(format!("127.0.0.1:{}", self.client_port))
            .args(["--election-timeout-ms", "500", "--heartbeat-ms", "50"])
            .args(["--wal-backend", "sync", "--threads", "1"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Disk::Slow { fsync_delay_us } = disk {
            command
                .arg("--emulated-fsync-delay-us")
                .arg(fsync_delay_us.to_string());
        }
        for (peer, port) in &self.dials {
            command
                .arg("--peer")
                .arg(format!("{peer}=127.0.0.1:{port}"));
        }
        let child = command.spawn().map_err(|source| NemesisError::Spawn {
            path: server_bin.to_path_buf(),
            source,
        })?;
        self.child = Some(child);
        self.paused = false;
        self.disk = disk;
        Ok(())
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) takes plain integers; the pid is our own live (unreaped)
            // child, so it cannot name another process.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = self.child.is_some();
    }

    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    pub fn is_up(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    /// Whether the process exited on its own (a crash, a fail-stop): its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The `# Raft` section, if the member answers within a short timeout.
    pub fn raft_info(&self) -> Option<BTreeMap<String, String>> {
        if !self.is_up() {
            return None;
        }
        let timeout = Duration::from_millis(500);
        let mut connection = RespConnection::connect(self.client_port, timeout).ok()?;
        let text = connection.info("raft").ok()?;
        Some(
            text.lines()
                .filter_map(|line| line.split_once(':'))
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect(),
        )
    }
}

/// Five (or `n`) members behind a [`Network`] of link proxies.
pub struct Cluster {
    pub members: Vec<Member>,
    pub network: Network,
    server_bin: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.resume();
            member.kill9();
        }
    }
}

fn free_port() -> Result<u16, NemesisError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(NemesisError::io("bind a port"))?;
    Ok(listener
        .local_addr()
        .map_err(NemesisError::io("port address"))?
        .port())
}

impl Cluster {
    /// Lays out `n` members under `root` (one directory and log file each) and starts
    /// them.
    pub fn start(n: u64, root: &Path, server_bin: &Path) -> Result<Cluster, NemesisError> {
        let peer_ports = (0..n).map(|_| free_port()).collect::<Result<Vec<_>, _>>()?;
        let network = Network::start(&peer_ports)?;
        let mut members = Vec::new();
        for id in 1..=n {
            let dials = (1..=n)
                .filter(|&other| other != id)
                .filter_map(|other| Some((other, network.dial_port(id, other)?)))
                .collect();
            members.push(Member {
                id,
                client_port: free_port()?,
                peer_port: peer_ports[(id - 1) as usize],
                dir: root.join(format!("node-{id}")),
                log: root.join(format!("node-{id}.log")),
                dials,
                child: None,
                paused: false,
                disk: Disk::Normal,
            });
        }
        let mut cluster = Cluster {
            members,
            network,
            server_bin: server_bin.to_path_buf(),
        };
        for index in 0..cluster.members.len() {
            cluster.restart(index as u64 + 1, Disk::Normal)?;
        }
        Ok(cluster)
    }

    pub fn member(&self, id: u64) -> &Member {
        &self.members[(id - 1) as usize]
    }

    pub fn member_mut(&mut self, id: u64) -> &mut Member {
        &mut self.members[(id - 1) as usize]
    }

    pub fn ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// (Re)starts a member on its directory: kill -9 first if it runs.
    pub fn restart(&mut self, id: u64, disk: Disk) -> Result<(), NemesisError> {
        let server_bin = self.server_bin.clone();
        let member = self.member_mut(id);
        member.resume();
        member.kill9();
        member.spawn(&server_bin, disk)
    }

    /// Every member running at normal speed, every link healed.
    pub fn heal(&mut self) -> Result<(), NemesisError> {
        self.network.heal_all();
        for id in self.ids() {
            let member = self.member_mut(id);
            member.resume();
            if member.child.is_none() || member.disk != Disk::Normal {
                self.restart(id, Disk::Normal)?;
            }
        }
        Ok(())
    }

    /// Members whose process ended on its own (not by the nemesis), with the status.
    pub fn crashed(&mut self) -> Vec<(u64, std::process::ExitStatus)> {
        self.members
            .iter_mut()
            .filter_map(|m| Some((m.id, m.exited()?)))
            .collect()
    }

    /// `(term, leader id)` as seen by each answering member that is a leader.
    pub fn leaders(&self) -> Vec<(u64, u64)> {
        self.members
            .iter()
            .filter_map(|member| {
                let info = member.raft_info()?;
                if info.get("role").map(String::as_str) != Some("leader") {
                    return None;
                }
                Some((info.get("term")?.parse().ok()?, member.id))
            })
            .collect()
    }

    /// The leader of the highest term among the answering members, if any.
    pub fn current_leader(&self) -> Option<u64> {
        self.leaders().into_iter().max().map(|(_, id)| id)
    }

    /// Waits (polling) until every member is up and names the same leader.
    pub fn wait_for_agreed_leader(&self, deadline: Duration) -> Option<u64> {
        let started = std::time::Instant::now();
        while started.elapsed() < deadline {
            let named: Vec<Option<u64>> = self
                .members
                .iter()
                .map(|m| m.raft_info()?.get("leader_id")?.parse().ok())
                .collect();
            if let Some(Some(first)) = named.first() {
                if *first != 0 && named.iter().all(|id| *id == Some(*first)) {
                    return Some(*first);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Where a member's stderr goes.
    pub fn log_path(&self, id: u64) -> &Path {
        &self.member(id).log
    }
}
