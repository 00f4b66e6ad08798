//! `tally-server`: one member of a Tally cluster.
//!
//! Wires the pieces together: the peer transport (TCP frames between members), the node
//! runtime (raft thread, WAL group commit, apply thread) with the KV state machine, and
//! the RESP client port. First start with an empty `--dir` forms the cluster from
//! `--id` and the `--peer` ids; a restart recovers everything from `--dir`.
//!
//! Exit status: 0 after SIGTERM/SIGINT (clients' in-flight rounds answered, node
//! drained); 1 when the node fail-stops (e.g. an fsync error) or cannot start; 70 when
//! any thread panicked (the process exits at once).

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tally_net::client_port::{default_io_threads, Password};
use tally_net::server::{Server, ServerConfig};

#[derive(Parser, Debug)]
#[command(
    name = "tally-server",
    about = "A member of a Raft-replicated Tally cluster (RESP client port)"
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
    /// between). Repeat for every other member.
    #[arg(long = "peer", value_name = "ID=ADDR")]
    peers: Vec<String>,
    /// Client address advertised to peers (for `-NOTLEADER <addr>`); default: the bound
    /// `--listen-client` address.
    #[arg(long)]
    advertise_client: Option<String>,
    /// Cluster id every member must share.
    #[arg(long, default_value_t = 0x7a11)]
    cluster_id: u64,
    /// Base election timeout (the core randomizes above it).
    #[arg(long, default_value_t = 500)]
    election_timeout_ms: u64,
    /// Leader heartbeat interval.
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// Client I/O threads: event loops that serve every client connection (default: the
    /// core count).
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
    config.cluster_id = args.cluster_id;
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
        cluster_id = args.cluster_id,
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
