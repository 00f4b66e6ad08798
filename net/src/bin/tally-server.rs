//! `tally-server`: one member of a Tally cluster.
//!
//! Wires the pieces together: the peer transport (TCP frames between members), the node
//! runtime (raft thread, WAL group commit, apply thread) with the KV state machine, and
//! the RESP client port. First start with an empty `--dir` forms the cluster from
//! `--id` and the `--peer` ids (written as the first log entry); a restart recovers
//! everything from `--dir`, the log being the authority on membership (`--peer` then
//! only gives addresses). `--join` starts an empty `--dir` as a member-to-be that waits
//! for `TALLY MEMBER ADD` on the leader.
//!
//! `tally-server gen-secret FILE` writes a new cluster secret (for
//! `--cluster-secret-file`) and exits.
//!
//! Exit status: 0 after SIGTERM/SIGINT (clients' in-flight rounds answered, node
//! drained); 1 when the node fail-stops (e.g. an fsync error) or cannot start; 70 when
//! any thread panicked (the process exits at once).

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tally_net::client_port::{default_io_threads, Password};
use tally_net::handshake::ClusterSecret;
use tally_net::peer_tls::PeerTlsFiles;
use tally_net::server::{Server, ServerConfig};

#[derive(Parser, Debug)]
#[command(
    name = "tally-server",
    version,
    about = "A member of a Raft-replicated Tally cluster (RESP client port)",
    after_help = "Also: `tally-server gen-secret FILE` writes a new cluster secret for --cluster-secret-file."
)]
struct Args {
    /// This member's id (nonzero, unique in the cluster).
    #[arg(long)]
    id: u64,
    /// Directory of this member's WAL (created on first start, reused on restart).
    #[arg(long)]
    dir: PathBuf,
    /// Address to accept peer connections on.
    #[arg(long)]
    listen_peer: String,
    /// Address to accept Redis clients on.
    #[arg(long)]
    listen_client: String,
    /// Another member: `ID=ADDR`, the address THIS node dials for it (a proxy may sit in
    /// between). Repeat for every other member. On the first start of a cluster the ids
    /// are the voters; afterwards the log says who the members are, and an id it does
    /// not know is refused.
    #[arg(long = "peer", value_name = "ID=ADDR")]
    peers: Vec<String>,
    /// Client address advertised to peers (for `-NOTLEADER <addr>`); default: the bound
    /// `--listen-client` address.
    #[arg(long)]
    advertise_client: Option<String>,
    /// Start with an empty --dir as a non-voting member that waits to be added
    /// (`TALLY MEMBER ADD` on the leader), catches up, and never campaigns until
    /// promoted. --peer gives the current members' addresses.
    #[arg(long)]
    join: bool,
    /// Peer address recorded for this member in the configuration (what others and
    /// joining nodes dial); default: the bound --listen-peer address.
    #[arg(long)]
    advertise_peer: Option<String>,
    /// `TALLY MEMBER PROMOTE` is refused while the learner lags the leader by more
    /// entries than this.
    #[arg(long, default_value_t = 1000)]
    max_promote_lag_entries: u64,
    /// Serve Prometheus metrics (text format) at `GET /metrics` on this address.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Seed a new, empty --dir from this snapshot file (the path `TALLY SNAPSHOT`
    /// answers, copied off the old cluster) as a one-member cluster; grow it with
    /// `TALLY MEMBER ADD`. Only on the first start, without --peer.
    #[arg(long, value_name = "SNAPSHOT")]
    restore_from: Option<PathBuf>,
    /// Cluster id every member must share (decimal or 0x hex). Default: derived from the
    /// cluster secret, else the one stored in --dir, else 0x7a11.
    #[arg(long, value_parser = parse_cluster_id)]
    cluster_id: Option<u64>,
    /// File holding the cluster secret (at least 32 bytes; `tally-server gen-secret FILE`
    /// writes one). Peers must prove they hold it before any Raft message is read.
    #[arg(long, value_name = "FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// This node's certificate (PEM) for mutual TLS between members; it must carry the
    /// DNS SAN node-<id>.tally. Requires --peer-tls-key and --peer-tls-ca.
    #[arg(long, value_name = "FILE", requires_all = ["peer_tls_key", "peer_tls_ca"])]
    peer_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --peer-tls-cert.
    #[arg(long, value_name = "FILE", requires_all = ["peer_tls_cert", "peer_tls_ca"])]
    peer_tls_key: Option<PathBuf>,
    /// The CA certificate(s) (PEM) every member's certificate must chain to.
    #[arg(long, value_name = "FILE", requires_all = ["peer_tls_cert", "peer_tls_key"])]
    peer_tls_ca: Option<PathBuf>,
    /// Base election timeout (the core randomizes above it).
    #[arg(long, default_value_t = 500)]
    election_timeout_ms: u64,
    /// Leader heartbeat interval.
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// Client I/O threads: event loops that serve every client connection (default: half
    /// the core count, at least one).
    #[arg(long)]
    threads: Option<usize>,
    /// WAL I/O backend. `sync` (pwritev + fdatasync on the WAL writer thread) is the
    /// default: io_uring runs fdatasync on a kernel worker thread, one more hand-off per
    /// batch, and on small machines that costs latency and CPU (docs/BENCHMARKS.md).
    #[arg(long, default_value = "sync", value_parser = ["auto", "uring", "sync"])]
    wal_backend: String,
    /// Disk emulation for benchmarks: microseconds slept after every WAL fdatasync, on
    /// top of the real one (e.g. 8000 for an HDD). Reported in INFO as
    /// `emulated_fsync_delay_us`. Default: none.
    #[arg(long, value_name = "MICROSECONDS")]
    emulated_fsync_delay_us: Option<u64>,
    /// Largest client command (sum of its arguments' bytes); a larger one is answered
    /// `-ERR ... (max-command-bytes)`. Default 7.5 MiB. Must leave room for the log
    /// encoding within --max-entry-bytes.
    #[arg(long, value_name = "BYTES")]
    max_command_bytes: Option<usize>,
    /// Largest log entry the WAL accepts. Default 8 MiB.
    #[arg(long, value_name = "BYTES")]
    max_entry_bytes: Option<u64>,
    /// Unsent reply bytes past which a client connection is not read until its client
    /// reads. Default 16 MiB.
    #[arg(long, value_name = "BYTES")]
    client_output_buffer_soft_bytes: Option<usize>,
    /// A reply that would take a connection's unsent replies past this closes the
    /// connection (Redis's client-output-buffer-limit). Default 256 MiB.
    #[arg(long, value_name = "BYTES")]
    client_output_buffer_limit_bytes: Option<usize>,
    /// Most client connections open at once; one more is answered
    /// `-ERR max number of clients reached` and closed (INFO `rejected_connections`).
    /// Default 10000.
    #[arg(long, value_name = "N")]
    max_clients: Option<usize>,
    /// Bound of the node's request queue, in batches of client requests; a batch that
    /// finds it full is answered `-BUSY` (never proposed). Default 65536.
    #[arg(long, value_name = "N")]
    request_queue_capacity: Option<usize>,
    /// WAL segment size (raised to hold two of the largest entries). Default 64 MiB.
    #[arg(long, value_name = "BYTES")]
    wal_segment_bytes: Option<u64>,
    /// Require clients to authenticate (`AUTH password`, `AUTH default password`) with
    /// the content of FILE (one trailing newline stripped; an empty file is refused).
    #[arg(long, value_name = "FILE")]
    requirepass_file: Option<PathBuf>,
    /// Serve clients over TLS with this certificate chain (PEM; with --client-tls-key).
    #[arg(long, value_name = "FILE", requires = "client_tls_key")]
    client_tls_cert: Option<PathBuf>,
    /// The private key of --client-tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "client_tls_cert")]
    client_tls_key: Option<PathBuf>,
    /// Require client certificates signed by a CA of this PEM bundle.
    #[arg(long, value_name = "FILE", requires = "client_tls_cert")]
    client_tls_ca: Option<PathBuf>,
    /// Take a snapshot once this many entries were applied since the last one (0: off).
    /// Default 250000.
    #[arg(long, value_name = "N")]
    snapshot_log_entries: Option<u64>,
    /// Or once this many payload bytes were applied since the last one (0: off).
    /// Default 268435456 (256 MiB).
    #[arg(long, value_name = "BYTES")]
    snapshot_log_bytes: Option<u64>,
    /// Entries kept below a snapshot (in memory and in the WAL) so a follower that is a
    /// little behind catches up from the log. Default 10000.
    #[arg(long, value_name = "N")]
    log_retain_entries: Option<u64>,
}

/// `tally-server gen-secret FILE`.
#[derive(Parser, Debug)]
#[command(
    name = "tally-server gen-secret",
    about = "Writes a new cluster secret (32 random bytes as hex, mode 0600) to FILE; refuses to overwrite"
)]
struct GenSecretArgs {
    /// Where to write the secret (must not exist).
    file: PathBuf,
}

fn parse_cluster_id(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("{text:?} is not a cluster id (decimal or 0x hex)"))
}

/// Writes a new secret file: created exclusively with mode 0600, fsynced.
fn gen_secret(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let shown = path.display();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| format!("cannot create {shown}: {error}"))?;
    file.write_all(ClusterSecret::generate_file_text().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| format!("cannot write {shown}: {error}"))?;
    eprintln!(
        "tally-server: wrote a new cluster secret to {shown}; give every member a copy \
         (mode 0600) with --cluster-secret-file"
    );
    Ok(())
}

/// Exit status after a panic (EX_SOFTWARE): distinct from 1 (a fail-stop error).
const PANIC_EXIT_CODE: i32 = 70;

/// Test-only failpoint: the raft thread panics this many milliseconds after start.
const FAILPOINT_RAFT_PANIC_ENV: &str = "TALLY_FAILPOINT_RAFT_PANIC_AFTER_MS";
/// Test-only failpoint: the raft thread sleeps this many milliseconds before its first
/// turn (the request queue fills; clients get `-BUSY`).
const FAILPOINT_RAFT_STALL_ENV: &str = "TALLY_FAILPOINT_RAFT_STALL_AT_START_MS";
/// Test-only failpoint: after this many fsyncs of `--dir` files, every fsync fails (EIO).
const FAILPOINT_FSYNC_EIO_ENV: &str = "TALLY_FAILPOINT_FSYNC_EIO_AFTER";
/// Test-only failpoint: after this many bytes written, every write fails (ENOSPC).
const FAILPOINT_ENOSPC_ENV: &str = "TALLY_FAILPOINT_ENOSPC_AFTER_BYTES";
/// Test-only: the two counts above start once a file of this name exists in `--dir`.
const FAILPOINT_ARM_FILE_ENV: &str = "TALLY_FAILPOINT_ARM_FILE";

/// Reads the test-only storage failpoints; installs them if any count is set. They act
/// on the files' own `pwritev`/`fdatasync`, which the io_uring backend bypasses.
fn install_storage_failpoints(wal_backend: &str) -> Result<(), String> {
    let count = |name: &str| -> Result<Option<u64>, String> {
        match std::env::var(name) {
            Err(_) => Ok(None),
            Ok(text) => text
                .parse()
                .map(Some)
                .map_err(|_| format!("{name}={text:?} is not a count")),
        }
    };
    let faults = tally_wal::storage::FsFaults {
        fsync_eio_after: count(FAILPOINT_FSYNC_EIO_ENV)?,
        enospc_after_bytes: count(FAILPOINT_ENOSPC_ENV)?,
        arm_file: std::env::var(FAILPOINT_ARM_FILE_ENV).ok(),
    };
    if faults.fsync_eio_after.is_none() && faults.enospc_after_bytes.is_none() {
        return Ok(());
    }
    if wal_backend != "sync" {
        return Err("storage failpoints need --wal-backend sync".into());
    }
    tracing::warn!(?faults, "test-only storage failpoints installed");
    tally_wal::FsStorage::install_process_faults(faults);
    Ok(())
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    // Fail-stop means exit: a panic on any thread (raft, apply, WAL writer, client I/O)
    // leaves a node whose state cannot be trusted, so the process ends at once with a
    // non-zero status (a supervisor restarts it; its clients see their connections
    // close instead of hanging on a process that keeps its ports open).
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        tracing::error!(thread = name, panic = %info, "panic: fail-stop, exiting");
        eprintln!("tally-server: panic in thread {name}: {info}");
        std::process::exit(PANIC_EXIT_CODE);
    }));
    if std::env::args_os()
        .nth(1)
        .is_some_and(|first| first == "gen-secret")
    {
        let args = GenSecretArgs::parse_from(std::env::args_os().skip(1));
        return match gen_secret(&args.file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("tally-server: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "tally-server stopped with an error");
            eprintln!("tally-server: {error}");
            ExitCode::FAILURE
        }
    }
}

fn resolve(what: &str, addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|error| format!("{what} {addr:?}: {error}"))?
        .next()
        .ok_or_else(|| format!("{what} {addr:?} resolves to no address"))
}

fn parse_peer(text: &str) -> Result<(u64, SocketAddr), String> {
    let (id, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("--peer {text:?}: expected ID=ADDR"))?;
    let id: u64 = id
        .parse()
        .map_err(|_| format!("--peer {text:?}: {id:?} is not a node id"))?;
    Ok((id, resolve("--peer", addr)?))
}

fn run(args: Args) -> Result<(), String> {
    let peers = args
        .peers
        .iter()
        .map(|text| parse_peer(text))
        .collect::<Result<Vec<_>, _>>()?;
    let client_io_threads = args.threads.unwrap_or_else(default_io_threads);
    if client_io_threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    let client_listener = TcpListener::bind(resolve("--listen-client", &args.listen_client)?)
        .map_err(|error| {
            format!(
                "cannot listen for clients on {}: {error}",
                args.listen_client
            )
        })?;
    let peer_listener = TcpListener::bind(resolve("--listen-peer", &args.listen_peer)?)
        .map_err(|error| format!("cannot listen for peers on {}: {error}", args.listen_peer))?;

    install_storage_failpoints(&args.wal_backend)?;
    let mut config = ServerConfig::new(args.id, &args.dir, peers);
    config.advertise_client = args.advertise_client.clone();
    config.join = args.join;
    config.restore_from = args.restore_from.clone();
    config.metrics_listen = args
        .metrics_listen
        .as_deref()
        .map(|addr| resolve("--metrics-listen", addr))
        .transpose()?;
    config.advertise_peer = args.advertise_peer.clone();
    config.max_promote_lag_entries = args.max_promote_lag_entries;
    config.cluster_id = args.cluster_id;
    if let Some(path) = &args.cluster_secret_file {
        config.cluster_secret = Some(ClusterSecret::from_file(path).map_err(|e| e.to_string())?);
    }
    if let (Some(cert), Some(key), Some(ca)) = (
        args.peer_tls_cert.clone(),
        args.peer_tls_key.clone(),
        args.peer_tls_ca.clone(),
    ) {
        config.peer_tls = Some(PeerTlsFiles { cert, key, ca });
    }
    config.election_timeout_ms = args.election_timeout_ms;
    config.heartbeat_ms = args.heartbeat_ms;
    config.client_io_threads = client_io_threads;
    config.wal_backend = args
        .wal_backend
        .parse()
        .map_err(|error| format!("--wal-backend: {error}"))?;
    config.emulated_sync_delay = args
        .emulated_fsync_delay_us
        .filter(|&micros| micros > 0)
        .map(Duration::from_micros);
    if let Some(bytes) = args.max_command_bytes {
        config.limits.max_command_bytes = bytes;
    }
    if let Some(bytes) = args.max_entry_bytes {
        config.limits.max_entry_bytes = bytes;
    }
    if let Some(bytes) = args.client_output_buffer_soft_bytes {
        config.limits.output_buffer_soft_bytes = bytes;
    }
    if let Some(bytes) = args.client_output_buffer_limit_bytes {
        config.limits.output_buffer_limit_bytes = bytes;
    }
    if let Some(n) = args.max_clients {
        config.limits.max_clients = n;
    }
    if let Some(n) = args.request_queue_capacity {
        config.request_queue_capacity = n;
    }
    config.wal_segment_bytes = args.wal_segment_bytes;
    if let (Some(cert), Some(key)) = (&args.client_tls_cert, &args.client_tls_key) {
        let tls = tally_net::tls::server_config(cert, key, args.client_tls_ca.as_deref())
            .map_err(|error| format!("client TLS: {error}"))?;
        config.client_tls = Some(tls);
    }
    if let Some(path) = &args.requirepass_file {
        let password =
            Password::from_file(path).map_err(|error| format!("--requirepass-file: {error}"))?;
        config.requirepass = Some(password);
    }
    if let Some(entries) = args.snapshot_log_entries {
        config.snapshot.log_entries = entries;
    }
    if let Some(bytes) = args.snapshot_log_bytes {
        config.snapshot.log_bytes = bytes;
    }
    if let Some(entries) = args.log_retain_entries {
        config.snapshot.retain_entries = entries;
    }
    config.failpoint_raft_panic_after = std::env::var(FAILPOINT_RAFT_PANIC_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    config.failpoint_raft_stall_at_start = std::env::var(FAILPOINT_RAFT_STALL_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    let voters: Vec<u64> = config
        .peers
        .iter()
        .map(|(id, _)| *id)
        .chain([args.id])
        .collect();
    let server =
        Server::start(config, peer_listener, client_listener).map_err(|error| error.to_string())?;

    tracing::info!(
        node_id = args.id,
        cluster_id = format_args!("{:#x}", server.cluster_id()),
        peer_auth = match (args.cluster_secret_file.is_some(), args.peer_tls_cert.is_some()) {
            (true, true) => "cluster secret + mutual TLS",
            (true, false) => "cluster secret",
            (false, true) => "mutual TLS",
            (false, false) => "NONE (peer port open)",
        },
        voters = ?voters,
        peer_addr = %server.peer_addr(),
        client_addr = %server.advertised_client_addr(),
        client_io_threads,
        emulated_fsync_delay_us = args.emulated_fsync_delay_us.unwrap_or(0),
        "tally-server ready. Threads: raft (core, batching, ticks), apply (state machine, replies, reads), \
         WAL writer (group commit), peer-listen + 1 peer-recv per inbound peer connection (decodes and hands to raft), \
         1 peer-send per peer ({n_peers}), client-accept (round-robin hand-off), \
         {client_io_threads} client-io (mio event loops serving every client connection)",
        n_peers = voters.len() - 1,
    );

    let stop_requested = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop_requested))
            .map_err(|error| format!("cannot install the signal handler: {error}"))?;
    }
    while !stop_requested.load(Ordering::Relaxed) && !server.has_failed() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let failed = server.has_failed();
    if failed {
        tracing::error!(
            node_id = args.id,
            "node failed (fail-stop); closing the client port"
        );
    } else {
        tracing::info!(
            node_id = args.id,
            "shutdown requested: draining client connections"
        );
    }
    match server.shutdown() {
        Ok(()) if !failed => {
            tracing::info!(node_id = args.id, "stopped cleanly");
            Ok(())
        }
        Ok(()) => Err("the node failed".into()),
        Err(error) => Err(error.to_string()),
    }
}
