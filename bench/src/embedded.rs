//! The embedded default: a local 3-node Tally cluster started inside this process.
//!
//! `tally-bench` with no `--target` starts three real members (the same
//! [`tally_net::server::Server`] that `tally-server` runs: TCP peer transport, WAL group
//! commit with fdatasync, RESP client port) on loopback, each with its WAL in a fresh
//! directory under `--dir` (default: the system temp dir), drives them with the load
//! generator over real sockets, and removes what it created. `--dir` may be repeated:
//! the same workload then runs on each location in turn and the results stand side by
//! side (the HDD versus SSD versus `/dev/shm` question). `--disk-profile` makes every
//! node's WAL emulate a slower disk at each location (see `load/disk_profile.rs`).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tally_engine::raft::Role;
use tally_net::server::{Server, ServerConfig};

use crate::load::args::LoadArgs;
use crate::load::disk_profile::DiskEmulation;
use crate::load::report::RunReport;
use crate::load::OutputOptions;

/// Members of the embedded cluster.
const CLUSTER_SIZE: u64 = 3;
/// Bound on waiting for the first leader; only hit when something is broken.
const ELECTION_DEADLINE: Duration = Duration::from_secs(60);

/// A running embedded cluster and the directory it owns.
struct EmbeddedCluster {
    servers: Vec<Server>,
    /// Removed on drop, after the servers stopped.
    _dir: tempfile::TempDir,
}

impl EmbeddedCluster {
    fn start(parent: &Path, disk: Option<&DiskEmulation>) -> Result<EmbeddedCluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("tally-bench-")
            .tempdir_in(parent)
            .map_err(|error| {
                format!("cannot create a directory in {}: {error}", parent.display())
            })?;
        let bind = || {
            TcpListener::bind("127.0.0.1:0")
                .map_err(|error| format!("cannot bind on loopback: {error}"))
        };
        let mut peer_listeners = Vec::new();
        let mut client_listeners = Vec::new();
        for _ in 0..CLUSTER_SIZE {
            peer_listeners.push(bind()?);
            client_listeners.push(bind()?);
        }
        let peer_addrs: Vec<SocketAddr> = peer_listeners
            .iter()
            .map(|listener| listener.local_addr().map_err(|error| error.to_string()))
            .collect::<Result<_, _>>()?;
        let mut servers = Vec::new();
        for (index, (peer_listener, client_listener)) in
            peer_listeners.into_iter().zip(client_listeners).enumerate()
        {
            let id = index as u64 + 1;
            let peers = (1..=CLUSTER_SIZE)
                .filter(|other| *other != id)
                .map(|other| (other, peer_addrs[(other - 1) as usize]))
                .collect();
            let mut config = ServerConfig::new(id, dir.path().join(format!("node-{id}")), peers);
            config.emulated_sync_delay = disk.map(DiskEmulation::fsync_delay);
            config.requirepass =
                crate::load::client::password().and_then(tally_net::client_port::Password::new);
            let server = Server::start(config, peer_listener, client_listener)
                .map_err(|error| format!("cannot start node {id}: {error}"))?;
            servers.push(server);
        }
        let cluster = EmbeddedCluster { servers, _dir: dir };
        cluster.wait_for_leader()?;
        Ok(cluster)
    }

    fn wait_for_leader(&self) -> Result<(), String> {
        let deadline = Instant::now() + ELECTION_DEADLINE;
        while Instant::now() < deadline {
            if self
                .servers
                .iter()
                .any(|server| server.handle().status().role() == Role::Leader)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!("no leader elected within {ELECTION_DEADLINE:?}"))
    }

    fn client_addrs(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|server| server.client_addr().to_string())
            .collect()
    }

    fn shutdown(self) -> Result<(), String> {
        let mut first_error = None;
        for server in self.servers {
            if let Err(error) = server.shutdown() {
                first_error.get_or_insert(error.to_string());
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Runs the configured workload against a fresh embedded cluster in each directory.
pub fn run(args: &LoadArgs, output: &OutputOptions) -> Result<Vec<RunReport>, String> {
    let dirs: Vec<PathBuf> = if args.dirs.is_empty() {
        vec![std::env::temp_dir()]
    } else {
        args.dirs.clone()
    };
    let disk = args.disk.emulation();
    let mut reports = Vec::new();
    for dir in &dirs {
        if !output.json {
            println!(
                "embedded cluster: {CLUSTER_SIZE} tally nodes on loopback, WALs under {} \
                 (every acknowledged write fdatasync'd on a majority)",
                dir.display()
            );
            if let Some(disk) = &disk {
                println!(
                    "  disk: {} -- every node's WAL sleeps {} ms after each real fdatasync",
                    disk.label(),
                    disk.fsync_delay_ms
                );
            }
        }
        let cluster = EmbeddedCluster::start(dir, disk.as_ref())?;
        let result = crate::load::run_all_on_disk(
            &cluster.client_addrs(),
            &args.runs(),
            output,
            disk.as_ref(),
        );
        let stopped = cluster.shutdown();
        let mut dir_reports = result?;
        stopped?;
        for report in &mut dir_reports {
            report.target = format!("embedded:{}", dir.display());
        }
        reports.extend(dir_reports);
    }
    Ok(reports)
}
