//! One Tally member as a library: peer transport + node runtime + a state machine + the
//! front end its clients talk to, wired together.
//!
//! [`ServerBuilder`] starts a member of any [`StateMachine`] with any [`FrontEnd`] (or
//! none), with everything a member needs whatever it serves: cluster id and secret, peer
//! mutual TLS, the identity file (incarnation), membership from the log (`join`),
//! `restore_from`, metrics. [`Server::start`] is the KV store behind the RESP port
//! ([`RespFrontEnd`]); `tally-server` is a thin command line around it, and the benchmark
//! embeds three of them in one process for its default run. Embedding walkthrough:
//! `docs/EMBEDDING.md`. Listeners are bound by the caller so that a
//! whole cluster's addresses are known before any member starts (members dial each
//! other lazily, with backoff, so start order does not matter).
//!
//! Membership comes from the log, not the command line: a fresh directory's identity
//! file is created first (`crate::identity`), then a founding member writes the
//! cluster's configuration (its `--id` and the `--peer` ids) as log entry 1; a restart
//! takes `--peer` as addresses only and refuses ids the log does not know; `--join`
//! starts an empty directory as a non-member that waits for `TALLY MEMBER ADD`.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tally_engine::driver::SnapshotPolicy;
use tally_engine::kv::{KvLimits, KvResponse, KvStateMachine};
use tally_engine::raft::{Configuration, MemberInfo};
use tally_engine::runtime::{LogMembership, MembershipPolicy, Node, NodeHandle, NodeOptions};
use tally_engine::state_machine::StateMachine;

use crate::client_port::{default_io_threads, ClientPort, ClientPortConfig, ClientPortCounters};
use crate::cluster_id::{settle_cluster_id, ClusterIdStart};
use crate::expiry_sweep::{ExpirySweep, DEFAULT_SWEEP_INTERVAL_MS};
use crate::handshake::{ClusterSecret, ASK_CLUSTER_ID};
use crate::identity::{CreatedAs, Identity, IdentityError, IDENTITY_FILE};
use crate::limits::Limits;
use crate::peer_tls::{PeerTls, PeerTlsFiles};
use crate::transport::{PeerClientAddrs, TransportConfig};

/// The core's tick; election timeout and heartbeat interval are rounded to it.
pub const TICK_MS: u64 = 10;

/// What one member needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// This member's id (nonzero, unique in the cluster).
    pub id: u64,
    /// Directory of this member's WAL.
    pub dir: PathBuf,
    /// The other members and the address this member dials for each.
    pub peers: Vec<(u64, SocketAddr)>,
    /// Client address advertised to peers for `-NOTLEADER <addr>`; default: the bound
    /// client listener's address.
    pub advertise_client: Option<String>,
    /// Cluster id every member must present (`--cluster-id`). `None`: derived from the
    /// cluster secret, else the one stored in `dir`, else drawn by the lowest-id founder
    /// and asked for by the others (`cluster_id::settle_cluster_id`).
    pub cluster_id: Option<u64>,
    /// The cluster secret (`--cluster-secret-file`): peers must prove they hold it.
    pub cluster_secret: Option<ClusterSecret>,
    /// Mutual TLS between members (`--peer-tls-cert`, `--peer-tls-key`, `--peer-tls-ca`).
    pub peer_tls: Option<PeerTlsFiles>,
    /// Base election timeout (the core randomizes above it).
    pub election_timeout_ms: u64,
    /// Heartbeat interval, in milliseconds (rounded to [`TICK_MS`]).
    pub heartbeat_ms: u64,
    /// How the WAL writes and syncs (`--wal-backend`).
    pub wal_backend: tally_wal::Backend,
    /// Event-loop threads of the client port (`--threads`; at least 1). Read by
    /// [`RespFrontEnd`] only.
    pub client_io_threads: usize,
    /// Disk emulation: extra latency slept after every WAL batch fdatasync, on top of
    /// the real one (see `tally_wal::GroupCommitOptions::emulated_sync_delay`); at most
    /// [`MAX_EMULATED_SYNC_DELAY`]. `None`: the real disk only.
    pub emulated_sync_delay: Option<Duration>,
    /// Size limits of commands, log entries and client buffers, end to end (one place;
    /// checked by [`Limits::validate`] at start, shown in `INFO limits`).
    pub limits: Limits,
    /// When to snapshot and how much log to keep (`--snapshot-log-entries`,
    /// `--snapshot-log-bytes`, `--log-retain-entries`).
    pub snapshot: SnapshotPolicy,
    /// Test-only failpoint: the raft thread panics this long after start.
    #[doc(hidden)] // Test seam: set only by process-level tests, never in production.
    pub failpoint_raft_panic_after: Option<Duration>,
    /// Start an empty `dir` as a non-member that waits to be added (`--join`); it
    /// catches up as a learner and never campaigns until promoted. Ignored on restart.
    pub join: bool,
    /// Peer address recorded for this member (`--advertise-peer`); default: the bound
    /// peer listener's address.
    pub advertise_peer: Option<String>,
    /// `TALLY MEMBER PROMOTE` is refused while the learner lags by more entries.
    pub max_promote_lag_entries: u64,
    /// Seed an empty `dir` from this snapshot file (`TALLY SNAPSHOT`'s) as a new
    /// one-member cluster, to be grown with `TALLY MEMBER ADD` (`--restore-from`).
    pub restore_from: Option<PathBuf>,
    /// Serve Prometheus metrics at `GET /metrics` here (`--metrics-listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// TLS on the client port (`--client-tls-cert/-key[/-ca]`, see
    /// [`crate::tls::server_config`]); `None`: plain TCP. Read by [`RespFrontEnd`] only.
    pub client_tls: Option<Arc<rustls::ServerConfig>>,
    /// The password clients must give (`--requirepass-file`); `None`: no AUTH. Read by
    /// [`RespFrontEnd`] only.
    pub requirepass: Option<crate::client_port::Password>,
    /// Test-only failpoint: the raft thread sleeps this long before its first turn.
    #[doc(hidden)] // Test seam: set only by process-level tests, never in production.
    pub failpoint_raft_stall_at_start: Option<Duration>,
    /// Bound of the node's request queue, in batches (`--request-queue-capacity`); a
    /// client batch that finds it full is answered `-BUSY`.
    pub request_queue_capacity: usize,
    /// WAL segment size (`--wal-segment-bytes`); raised to hold two of the largest
    /// entries. `None`: the WAL's default (64 MiB).
    pub wal_segment_bytes: Option<u64>,
    /// How often the leader's RESP front end checks for expired keys to purge
    /// (`crate::expiry_sweep`); at least 1. Read by [`RespFrontEnd`] only.
    pub expiry_sweep_interval_ms: u64,
}

/// Default bound of the node's request queue (batches from client I/O threads).
pub const DEFAULT_REQUEST_QUEUE_CAPACITY: usize = 64 * 1024;

/// Largest accepted emulated fsync delay: far above any real device, low enough that a
/// unit mistake (µs given as ns) is refused rather than stalling the cluster.
pub const MAX_EMULATED_SYNC_DELAY: Duration = Duration::from_secs(1);

impl ServerConfig {
    /// A founding member `id` storing in `dir`, with `peers` as the other founders,
    /// election timeout 500 ms, heartbeat 50 ms and defaults for everything else; change
    /// fields before [`Server::start`].
    pub fn new(id: u64, dir: impl Into<PathBuf>, peers: Vec<(u64, SocketAddr)>) -> ServerConfig {
        ServerConfig {
            id,
            dir: dir.into(),
            peers,
            advertise_client: None,
            cluster_id: None,
            cluster_secret: None,
            peer_tls: None,
            election_timeout_ms: 500,
            heartbeat_ms: 50,
            // See tally-server's --wal-backend for why not io_uring by default.
            wal_backend: tally_wal::Backend::Sync,
            client_io_threads: default_io_threads(),
            emulated_sync_delay: None,
            limits: Limits::default(),
            snapshot: SnapshotPolicy::default(),
            failpoint_raft_panic_after: None,
            join: false,
            advertise_peer: None,
            max_promote_lag_entries: MembershipPolicy::default().max_promote_lag_entries,
            restore_from: None,
            metrics_listen: None,
            failpoint_raft_stall_at_start: None,
            requirepass: None,
            client_tls: None,
            request_queue_capacity: DEFAULT_REQUEST_QUEUE_CAPACITY,
            wal_segment_bytes: None,
            expiry_sweep_interval_ms: DEFAULT_SWEEP_INTERVAL_MS,
        }
    }
}

/// Why a member could not start (or stopped with an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is inconsistent (a bad limit, an id the log does not know, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An I/O step at start failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The peer transport could not start.
    #[error("peer transport: {0}")]
    Transport(String),
    /// The identity file of the directory is unusable or belongs to another member or
    /// cluster.
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    /// The node could not start (an unusable WAL or snapshot, a thread that did not start).
    #[error("node {id}: {source}")]
    Node {
        /// The member's id.
        id: u64,
        /// Why the node did not start.
        source: tally_engine::runtime::NodeError,
    },
}

/// What a front end is given once its member's node runs: the handle to propose and
/// read through, and what the member knows about itself and its peers.
pub struct FrontEndContext<'a, R> {
    /// The member's settings (a front end reads its own fields: the RESP port takes
    /// `client_io_threads`, `limits`, `requirepass`, `client_tls`).
    pub config: &'a ServerConfig,
    /// The node: `propose`, `read`, `status`, membership changes.
    pub handle: NodeHandle<R>,
    /// The cluster id this member presents and requires.
    pub cluster_id: u64,
    /// This member's incarnation (from its identity file).
    pub incarnation: u64,
    /// The bound peer address.
    pub peer_addr: SocketAddr,
    /// The client address advertised to peers (empty when the front end has none).
    pub advertised_client_addr: String,
    /// Client addresses the other members advertised (for redirecting clients).
    pub peer_client_addrs: PeerClientAddrs,
}

/// The part of a member its clients talk to: the RESP port over KV ([`RespFrontEnd`])
/// is one; a database embedding Tally brings its own (a line protocol, HTTP, a library
/// call), or none (`()`).
///
/// Two steps because peers must learn the client address before the node starts (it
/// travels in the peer handshake), while serving needs the started node.
pub trait FrontEnd<R>: Send {
    /// The serving front end, kept by the [`Server`] until shutdown.
    type Running: RunningFrontEnd;
    /// The address clients reach this member at (advertised to peers unless
    /// `ServerConfig::advertise_client` overrides it); `None`: no client address.
    fn client_addr(&self) -> Option<SocketAddr>;
    /// Starts serving clients through `context.handle`.
    fn start(self, context: FrontEndContext<'_, R>) -> Result<Self::Running, ServerError>;
}

/// A front end that is serving.
pub trait RunningFrontEnd: Send {
    /// Stops serving (answering what it already accepted, where it can) and joins its
    /// threads; called before the node stops.
    fn shutdown(self);
}

/// No front end: a member that only replicates (the embedder talks to the node through
/// [`Server::handle`] in-process).
impl<R> FrontEnd<R> for () {
    type Running = ();
    fn client_addr(&self) -> Option<SocketAddr> {
        None
    }
    fn start(self, _: FrontEndContext<'_, R>) -> Result<(), ServerError> {
        Ok(())
    }
}

impl RunningFrontEnd for () {
    fn shutdown(self) {}
}

/// The RESP client port over the KV state machine, with the leader's expiry sweep:
/// what `tally-server` serves.
pub struct RespFrontEnd {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl RespFrontEnd {
    /// A RESP port on an already-bound listener.
    pub fn new(listener: TcpListener) -> Result<RespFrontEnd, ServerError> {
        let local_addr = listener.local_addr().map_err(|source| ServerError::Io {
            what: "client listener",
            source,
        })?;
        Ok(RespFrontEnd {
            listener,
            local_addr,
        })
    }
}

/// The serving RESP port and the expiry sweep.
pub struct RespPort {
    client_port: ClientPort,
    sweep: ExpirySweep,
}

impl RespPort {
    /// The bound client address.
    pub fn local_addr(&self) -> SocketAddr {
        self.client_port.local_addr()
    }

    /// Counters of the client port.
    pub fn counters(&self) -> &ClientPortCounters {
        self.client_port.counters()
    }

    /// Counters of the expiry sweep.
    pub fn sweep_counters(&self) -> &crate::expiry_sweep::SweepCounters {
        self.sweep.counters()
    }
}

impl FrontEnd<KvResponse> for RespFrontEnd {
    type Running = RespPort;

    fn client_addr(&self) -> Option<SocketAddr> {
        Some(self.local_addr)
    }

    fn start(self, context: FrontEndContext<'_, KvResponse>) -> Result<RespPort, ServerError> {
        let config = context.config;
        let mut port_config =
            ClientPortConfig::new(config.id, context.advertised_client_addr.clone());
        port_config.io_threads = config.client_io_threads;
        port_config.limits = config.limits;
        port_config.requirepass = config.requirepass.clone();
        port_config.tls = config.client_tls.clone();
        let client_port = ClientPort::start(
            self.listener,
            port_config,
            context.handle.clone(),
            context.peer_client_addrs,
        )
        .map_err(|error| ServerError::Transport(format!("client port: {error}")))?;
        let sweep = ExpirySweep::start(
            config.id,
            context.handle,
            Duration::from_millis(config.expiry_sweep_interval_ms),
        )
        .map_err(|source| ServerError::Io {
            what: "start the expiry sweep thread",
            source,
        })?;
        Ok(RespPort { client_port, sweep })
    }
}

impl RunningFrontEnd for RespPort {
    fn shutdown(self) {
        self.sweep.shutdown();
        self.client_port.shutdown();
    }
}

/// Starts a member of any state machine with any front end.
///
/// Secure by default: [`ServerBuilder::start`] refuses a member whose peer port anyone
/// could join (no `cluster_secret`, no `peer_tls`) unless
/// [`ServerBuilder::allow_unauthenticated_peers`] says so; `tally-server` (and
/// [`Server::start`]) keep their warning instead, for compatibility.
///
/// ```no_run
/// # use std::net::TcpListener;
/// # use tally_engine::kv::{KvLimits, KvStateMachine};
/// # use tally_net::handshake::ClusterSecret;
/// # use tally_net::server::{ServerBuilder, ServerConfig};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let peers = vec![(2, "10.0.0.2:7000".parse()?), (3, "10.0.0.3:7000".parse()?)];
/// let mut config = ServerConfig::new(1, "/var/lib/mydb/node-1", peers);
/// config.cluster_secret = Some(ClusterSecret::from_file("/etc/mydb/cluster.secret".as_ref())?);
/// let server = ServerBuilder::new(config, KvStateMachine::new(KvLimits::default()))
///     .start(TcpListener::bind("0.0.0.0:7000")?)?; // no front end: use server.handle()
/// # Ok(()) }
/// ```
pub struct ServerBuilder<M, F> {
    config: ServerConfig,
    state_machine: M,
    front_end: F,
    allow_unauthenticated_peers: bool,
}

impl<M: StateMachine + 'static> ServerBuilder<M, ()> {
    /// A member of `state_machine`, no front end yet.
    pub fn new(config: ServerConfig, state_machine: M) -> ServerBuilder<M, ()> {
        ServerBuilder {
            config,
            state_machine,
            front_end: (),
            allow_unauthenticated_peers: false,
        }
    }
}

impl<M, F> ServerBuilder<M, F>
where
    M: StateMachine + 'static,
    F: FrontEnd<M::Response>,
{
    /// Serves clients with `front_end` (started once the node runs).
    pub fn front_end<G: FrontEnd<M::Response>>(self, front_end: G) -> ServerBuilder<M, G> {
        ServerBuilder {
            config: self.config,
            state_machine: self.state_machine,
            front_end,
            allow_unauthenticated_peers: self.allow_unauthenticated_peers,
        }
    }

    /// Starts even without a cluster secret or peer TLS (tests on loopback, or a network
    /// only members reach); a warning is logged instead.
    pub fn allow_unauthenticated_peers(mut self, allow: bool) -> Self {
        self.allow_unauthenticated_peers = allow;
        self
    }

    /// Starts the member on an already-bound peer listener: cluster id (settled against
    /// the directory) → identity file → `restore_from` → peer transport → node → member
    /// information offered → front end → metrics.
    pub fn start(
        self,
        peer_listener: TcpListener,
    ) -> Result<Server<M::Response, F::Running>, ServerError> {
        let config = self.config;
        validate(&config)?;
        let unauthenticated = config.cluster_secret.is_none() && config.peer_tls.is_none();
        if unauthenticated && !self.allow_unauthenticated_peers {
            return Err(ServerError::Config(
                "no cluster secret and no peer TLS: any process that reaches the peer port \
                 could act as a member; set cluster_secret or peer_tls, or call \
                 allow_unauthenticated_peers(true) (see docs/SECURITY.md)"
                    .into(),
            ));
        }
        let advertised_client_addr = config.advertise_client.clone().unwrap_or_else(|| {
            self.front_end
                .client_addr()
                .map(|addr| addr.to_string())
                .unwrap_or_default()
        });
        let mut transport_config =
            peer_transport_config(&config, ASK_CLUSTER_ID, advertised_client_addr.clone())?;
        // Settled against the directory first (stored there on a first start; a new
        // member may wait here for a peer to tell it).
        let cluster_id = settle_cluster_id(&ClusterIdStart {
            dir: &config.dir,
            configured: config.cluster_id,
            secret: config.cluster_secret.as_ref(),
            node_id: config.id,
            peers: &config.peers,
            join: config.join,
            restore: config.restore_from.is_some(),
            tls: transport_config.tls.as_ref(),
        })
        .map_err(|error| ServerError::Config(format!("cluster id: {error}")))?;
        transport_config.cluster_id = cluster_id;
        let (identity, created) = open_identity(&config, cluster_id)?;
        if let Some(snapshot) = &config.restore_from {
            restore_from_snapshot(&config, snapshot)?;
        }
        transport_config.incarnation = identity.incarnation;
        let (node, peer_addr, peer_client_addrs) = crate::replica::start_member(
            transport_config,
            peer_listener,
            node_options(&config, identity.created_as == CreatedAs::Bootstrap),
            self.state_machine,
            config.peers.clone(),
        )?;
        if unauthenticated {
            tracing::warn!(
                node_id = config.id,
                %peer_addr,
                "PEER PORT OPEN: no --cluster-secret-file and no peer TLS, so any process that can reach \
                 {peer_addr} can act as a cluster member (forge log entries, votes, terms); see docs/SECURITY.md"
            );
        }
        let advertised_peer = config
            .advertise_peer
            .clone()
            .unwrap_or_else(|| peer_addr.to_string());
        offer_member_info(
            &node.handle(),
            &config,
            &identity,
            advertised_peer,
            &advertised_client_addr,
        );
        tracing::info!(
            node = config.id,
            incarnation = format_args!("{:#x}", identity.incarnation),
            new_directory = created,
            join = config.join,
            "member identity"
        );
        // On an error below, `node` drops and stops.
        let front_end = self.front_end.start(FrontEndContext {
            config: &config,
            handle: node.handle(),
            cluster_id,
            incarnation: identity.incarnation,
            peer_addr,
            advertised_client_addr: advertised_client_addr.clone(),
            peer_client_addrs,
        })?;
        let metrics = match start_metrics(&config, &node) {
            Ok(metrics) => metrics,
            Err(error) => {
                front_end.shutdown();
                return Err(error);
            }
        };
        Ok(Server {
            id: config.id,
            node,
            front_end,
            peer_addr,
            advertised_client_addr,
            metrics,
            cluster_id,
            incarnation: identity.incarnation,
        })
    }
}

fn start_metrics<R: Send + 'static>(
    config: &ServerConfig,
    node: &Node<R>,
) -> Result<Option<crate::metrics::MetricsServer>, ServerError> {
    let Some(addr) = config.metrics_listen else {
        return Ok(None);
    };
    let io_error = |source| ServerError::Io {
        what: "metrics listener",
        source,
    };
    let listener = TcpListener::bind(addr).map_err(io_error)?;
    crate::metrics::MetricsServer::start(listener, config.id, node.handle())
        .map(Some)
        .map_err(io_error)
}

/// A running member: node, peer transport, its front end (`P`, the running one) and
/// metrics. `Server` alone is the KV store behind the RESP port, as `tally-server` runs it
/// (see the [crate example](crate#example-a-3-member-kv-cluster-on-localhost)).
pub struct Server<R = KvResponse, P = RespPort> {
    id: u64,
    node: Node<R>,
    front_end: P,
    peer_addr: SocketAddr,
    advertised_client_addr: String,
    metrics: Option<crate::metrics::MetricsServer>,
    cluster_id: u64,
    incarnation: u64,
}

impl Server {
    /// Starts a KV member with the RESP port on already-bound listeners, as
    /// `tally-server` does (a peer port without secret or TLS is allowed, with a
    /// warning).
    pub fn start(
        config: ServerConfig,
        peer_listener: TcpListener,
        client_listener: TcpListener,
    ) -> Result<Server, ServerError> {
        let state_machine = KvStateMachine::new(KvLimits::default());
        ServerBuilder::new(config, state_machine)
            .front_end(RespFrontEnd::new(client_listener)?)
            .allow_unauthenticated_peers(true)
            .start(peer_listener)
    }

    /// The bound client address.
    pub fn client_addr(&self) -> SocketAddr {
        self.front_end.local_addr()
    }

    /// Counters of the client port (connections, commands, I/O-thread wake-ups).
    pub fn client_port_counters(&self) -> &ClientPortCounters {
        self.front_end.counters()
    }
}

impl<R: Send + 'static, P: RunningFrontEnd> Server<R, P> {
    /// The cluster id this member presents and requires.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// This member's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// This member's incarnation (from its identity file).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The bound peer address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The client address advertised to peers (empty when the front end has none).
    pub fn advertised_client_addr(&self) -> &str {
        &self.advertised_client_addr
    }

    /// The running front end.
    pub fn front_end(&self) -> &P {
        &self.front_end
    }

    /// Where `GET /metrics` is served, when `metrics_listen` was set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|metrics| metrics.local_addr())
    }

    /// The node's handle (status, WAL statistics, direct proposals).
    pub fn handle(&self) -> NodeHandle<R> {
        self.node.handle()
    }

    /// True once the node stopped on its own (fail-stop).
    pub fn has_failed(&self) -> bool {
        self.node.has_failed()
    }

    /// Stops the front end (answering in-flight rounds), then the node, and joins
    /// every thread. Returns the node's fatal error, if it had one.
    pub fn shutdown(self) -> Result<(), ServerError> {
        let id = self.id;
        if let Some(metrics) = self.metrics {
            metrics.shutdown();
        }
        self.front_end.shutdown();
        // The raft thread drops the transport, which ends its reader threads.
        let result = self.node.shutdown();
        result.map_err(|source| ServerError::Node { id, source })
    }
}

fn validate(config: &ServerConfig) -> Result<(), ServerError> {
    if config.id == 0 {
        return Err(ServerError::Config("the node id must be nonzero".into()));
    }
    if config.peers.iter().any(|(id, _)| *id == config.id) {
        return Err(ServerError::Config(format!(
            "the peer list names this node's own id {}",
            config.id
        )));
    }
    if config.client_io_threads == 0 {
        return Err(ServerError::Config(
            "the client port needs at least one I/O thread".into(),
        ));
    }
    if config.expiry_sweep_interval_ms == 0 {
        return Err(ServerError::Config(
            "the expiry sweep interval must be at least 1 ms".into(),
        ));
    }
    if config.request_queue_capacity == 0 {
        return Err(ServerError::Config(
            "the request queue capacity must be at least 1".into(),
        ));
    }
    if config.peers.iter().any(|(id, _)| *id == 0) {
        return Err(ServerError::Config("peer ids must be nonzero".into()));
    }
    if config
        .emulated_sync_delay
        .is_some_and(|delay| delay > MAX_EMULATED_SYNC_DELAY)
    {
        return Err(ServerError::Config(format!(
            "the emulated fsync delay {:?} exceeds the maximum {MAX_EMULATED_SYNC_DELAY:?}",
            config.emulated_sync_delay.unwrap_or_default()
        )));
    }
    config
        .limits
        .validate()
        .map_err(|reason| ServerError::Config(format!("limits: {reason}")))?;
    let election_ticks = config.election_timeout_ms / TICK_MS;
    let heartbeat_ticks = (config.heartbeat_ms / TICK_MS).max(1);
    if election_ticks < 2 || heartbeat_ticks >= election_ticks {
        return Err(ServerError::Config(format!(
            "the heartbeat ({} ms) must be well below the election timeout ({} ms), \
             both at least {TICK_MS} ms",
            config.heartbeat_ms, config.election_timeout_ms
        )));
    }
    Ok(())
}

/// Reads the directory's identity file, or creates it for a new directory. Returns it
/// and whether it was created now.
fn open_identity(config: &ServerConfig, cluster_id: u64) -> Result<(Identity, bool), ServerError> {
    if let Some(identity) = Identity::load(&config.dir)? {
        identity.check(&config.dir, cluster_id, config.id)?;
        return Ok((identity, false));
    }
    let has_log = directory_has_data(&config.dir)?;
    if has_log && config.join {
        return Err(ServerError::Config(format!(
            "--join needs an empty --dir, but {} holds a log",
            config.dir.display()
        )));
    }
    if has_log {
        tracing::warn!(dir = %config.dir.display(), "a log without an identity file: creating one");
    }
    let created_as = if config.join {
        CreatedAs::Join
    } else {
        CreatedAs::Bootstrap
    };
    let identity = Identity::generate(cluster_id, config.id, created_as);
    identity.store(&config.dir)?;
    Ok((identity, true))
}

/// Largest snapshot file `--restore-from` reads (it is read whole to verify it).
pub const MAX_RESTORE_SNAPSHOT_BYTES: u64 = 64 << 30;

/// Seeds the (empty) node directory from a snapshot file as a one-member cluster: the
/// snapshot's state under a configuration of this member alone, and a hard state at the
/// snapshot's term (so the new leader's entries never have a lower term than the
/// snapshot's last one). The file is fully verified first; nothing is written if not.
fn restore_from_snapshot(
    config: &ServerConfig,
    source: &std::path::Path,
) -> Result<(), ServerError> {
    let refuse = |reason: String| ServerError::Config(format!("--restore-from: {reason}"));
    if directory_has_data(&config.dir)? {
        return Err(refuse(format!(
            "{} already holds data; restore into a new, empty --dir",
            config.dir.display()
        )));
    }
    if !config.peers.is_empty() {
        return Err(refuse(
            "a restored node starts as a one-member cluster: give no --peer (grow it with \
             TALLY MEMBER ADD)"
                .into(),
        ));
    }
    let name = source.display().to_string();
    let size = std::fs::metadata(source)
        .map_err(|error| refuse(format!("{name}: {error}")))?
        .len();
    if size > MAX_RESTORE_SNAPSHOT_BYTES {
        return Err(refuse(format!(
            "{name} is {size} bytes, above the limit {MAX_RESTORE_SNAPSHOT_BYTES}"
        )));
    }
    let bytes = std::fs::read(source).map_err(|error| refuse(format!("{name}: {error}")))?;
    let file_name = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.clone());
    let layout = tally_wal::snapshot::verify_bytes(&file_name, &bytes)
        .map_err(|error| refuse(error.to_string()))?;
    let header = layout.header;
    let start = layout.data_offset as usize;
    let data = bytes
        .get(start..start + layout.data_len_bytes as usize)
        .ok_or_else(|| refuse(format!("{name}: data length beyond the file")))?;
    let snapshot_error = |error: tally_wal::SnapshotError| refuse(error.to_string());
    let storage = tally_wal::FsStorage::new(&config.dir).map_err(|source| ServerError::Io {
        what: "open the node directory",
        source,
    })?;
    let store = tally_wal::SnapshotStore::new(storage).map_err(snapshot_error)?;
    let configuration = Configuration::new([config.id]);
    let mut writer = store
        .begin(&tally_wal::SnapshotHeader {
            index: header.index,
            term: header.term,
            configuration: configuration.encode(),
        })
        .map_err(snapshot_error)?;
    std::io::Write::write_all(&mut writer, data).map_err(|source| ServerError::Io {
        what: "write the restored snapshot",
        source,
    })?;
    let info = writer.finish().map_err(snapshot_error)?;
    let wal = tally_wal::Wal::open(&config.dir, tally_wal::GroupCommitOptions::default())
        .map_err(|error| refuse(error.to_string()))?;
    wal.set_hard_state(tally_wal::HardState {
        term: header.term,
        vote: 0,
    })
    .and_then(|ticket| ticket.wait())
    .map_err(|error| refuse(error.to_string()))?;
    drop(wal);
    tracing::info!(
        source = %name,
        index = header.index,
        term = header.term,
        file = %info.name,
        "restored a snapshot as a one-member cluster"
    );
    Ok(())
}

/// Whether `dir` holds anything but an identity file (a log, snapshots, a lock).
fn directory_has_data(dir: &std::path::Path) -> Result<bool, ServerError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(ServerError::Io {
                what: "read the node directory",
                source,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| ServerError::Io {
            what: "read the node directory",
            source,
        })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let bookkeeping = name.starts_with(IDENTITY_FILE)
            || name.starts_with(crate::cluster_id::CLUSTER_ID_FILE)
            || name == "LOCK";
        if !bookkeeping {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Tells the node what it knows about members (its own addresses and incarnation, the
/// `--peer` addresses), so the leader records what the configuration lacks.
fn offer_member_info<R: Send + 'static>(
    handle: &NodeHandle<R>,
    config: &ServerConfig,
    identity: &Identity,
    advertised_peer: String,
    advertised_client: &str,
) {
    handle.member_observed(
        config.id,
        MemberInfo {
            peer_addr: advertised_peer,
            client_addr: advertised_client.to_string(),
            incarnation: identity.incarnation,
        },
    );
    for (id, addr) in &config.peers {
        handle.member_observed(
            *id,
            MemberInfo {
                peer_addr: addr.to_string(),
                ..MemberInfo::default()
            },
        );
    }
}

/// The peer transport's configuration: identity, cluster id (settled against the
/// directory), secret and TLS.
fn peer_transport_config(
    config: &ServerConfig,
    cluster_id: u64,
    advertised_client_addr: String,
) -> Result<TransportConfig, ServerError> {
    let mut transport_config = TransportConfig::new(cluster_id, config.id, config.peers.clone());
    transport_config.advertised_client_addr = advertised_client_addr;
    transport_config.cluster_secret = config.cluster_secret.clone();
    if let Some(files) = &config.peer_tls {
        let mut members: Vec<u64> = config.peers.iter().map(|(id, _)| *id).collect();
        members.push(config.id);
        let tls = PeerTls::load(files, config.id, &members)
            .map_err(|error| ServerError::Config(format!("peer TLS: {error}")))?;
        transport_config.tls = Some(tls);
    }
    Ok(transport_config)
}

fn node_options(config: &ServerConfig, founding_member: bool) -> NodeOptions {
    let peer_ids: Vec<u64> = config.peers.iter().map(|(id, _)| *id).collect();
    let mut voters = peer_ids.clone();
    voters.push(config.id);
    voters.sort_unstable();
    let mut options = NodeOptions::new(config.id, voters.clone(), &config.dir);
    options.log_membership = Some(LogMembership {
        // Ids only: every founding member writes the same bytes at index 1.
        bootstrap: founding_member.then(|| Configuration::new(voters)),
        peer_ids,
    });
    options.membership.max_promote_lag_entries = config.max_promote_lag_entries;
    options.tick_interval = Duration::from_millis(TICK_MS);
    options.raft.election_timeout_ticks = config.election_timeout_ms / TICK_MS;
    options.raft.heartbeat_interval_ticks = (config.heartbeat_ms / TICK_MS).max(1);
    options.wal.backend = config.wal_backend;
    options.wal.emulated_sync_delay = config.emulated_sync_delay;
    options.snapshot = config.snapshot;
    options.failpoint_raft_panic_after = config.failpoint_raft_panic_after;
    options.failpoint_raft_stall_at_start = config.failpoint_raft_stall_at_start;
    options.request_queue_capacity = config.request_queue_capacity;
    if let Some(bytes) = config.wal_segment_bytes {
        options.wal.wal.segment_size_bytes = bytes;
    }
    // The WAL takes every entry the client port lets through (Limits::validate).
    let max_entry_bytes = config.limits.max_entry_bytes;
    options.wal.wal.max_entry_size_bytes = max_entry_bytes;
    options.wal.wal.segment_size_bytes =
        options.wal.wal.segment_size_bytes.max(2 * max_entry_bytes);
    options.wal.max_pending_bytes = options
        .wal
        .max_pending_bytes
        .max(max_entry_bytes as usize + tally_wal::ENTRY_RECORD_HEADER_LEN);
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::{parse_reply, write_command, RespLimits, RespValue};
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    /// Generous: only a hung server reaches it (tests never assert on timing).
    const PATIENCE: Duration = Duration::from_secs(60);

    /// A one-member cluster on loopback with `io_threads` client I/O threads, once it
    /// leads.
    fn single_member(dir: &std::path::Path, io_threads: usize) -> Server {
        let mut config = ServerConfig::new(1, dir, Vec::new());
        config.client_io_threads = io_threads;
        let peer_listener = TcpListener::bind("127.0.0.1:0").expect("bind peer");
        let client_listener = TcpListener::bind("127.0.0.1:0").expect("bind client");
        let server = Server::start(config, peer_listener, client_listener).expect("start");
        let deadline = Instant::now() + PATIENCE;
        while server.handle().status().role() != tally_engine::raft::Role::Leader {
            assert!(Instant::now() < deadline, "the single member never led");
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    /// A client connection to `server` whose reads wait up to [`PATIENCE`].
    fn connect_patiently(server: &Server) -> TcpStream {
        let stream = TcpStream::connect(server.client_addr()).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        stream
    }

    /// Sends every command in one write, then reads exactly one reply per command.
    fn pipeline(stream: &mut TcpStream, commands: &[Vec<String>]) -> Vec<RespValue> {
        let mut out = Vec::new();
        for command in commands {
            let args: Vec<&[u8]> = command.iter().map(|a| a.as_bytes()).collect();
            write_command(&mut out, &args);
        }
        stream.write_all(&out).expect("send pipeline");
        read_replies(stream, commands.len())
    }

    /// Reads up to `n_replies` replies; fewer if the server closes first.
    fn read_replies(stream: &mut TcpStream, n_replies: usize) -> Vec<RespValue> {
        let mut buffer = Vec::new();
        let mut replies = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        while replies.len() < n_replies {
            if let Some((value, used)) =
                parse_reply(&buffer, &RespLimits::default()).expect("a well-formed reply")
            {
                buffer.drain(..used);
                replies.push(value);
                continue;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        replies
    }

    fn command(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn pipelined_reads_see_earlier_writes_of_their_connection_on_every_io_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = single_member(dir.path(), 3);
        let addr = server.client_addr();
        let n_clients = 6;
        let clients: Vec<_> = (0..n_clients)
            .map(|client| {
                std::thread::spawn(move || {
                    let mut stream = TcpStream::connect(addr).expect("connect");
                    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
                    // SET then GET of the same key, INCRs then a GET of the counter, all
                    // in one pipeline: each read must see every write sent before it.
                    let mut commands = Vec::new();
                    for round in 0..40 {
                        let key = format!("c{client}-k{round}");
                        commands.push(command(&["SET", &key, &format!("v{round}")]));
                        commands.push(command(&["GET", &key]));
                        commands.push(command(&["INCR", &format!("c{client}-counter")]));
                        commands.push(command(&["GET", &format!("c{client}-counter")]));
                    }
                    let replies = pipeline(&mut stream, &commands);
                    assert_eq!(replies.len(), commands.len(), "one reply per command");
                    for (round, chunk) in replies.chunks(4).enumerate() {
                        let count = (round + 1).to_string();
                        assert_eq!(chunk[0], RespValue::Simple(b"OK".to_vec()));
                        assert_eq!(
                            chunk[1],
                            RespValue::Bulk(Some(format!("v{round}").into_bytes()))
                        );
                        assert_eq!(chunk[2], RespValue::Integer(round as i64 + 1));
                        assert_eq!(chunk[3], RespValue::Bulk(Some(count.into_bytes())));
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().expect("client thread");
        }
        let counters = server.client_port_counters();
        assert_eq!(
            counters.connections_accepted.load(Ordering::Relaxed),
            n_clients
        );
        assert_eq!(counters.commands.load(Ordering::Relaxed), n_clients * 160);
        server.shutdown().expect("clean shutdown");
    }

    #[test]
    fn a_pipeline_of_gets_in_every_spelling_and_arity_answers_as_each_get_sent_alone() {
        // The I/O thread looks a pipeline's leading GETs up before it answers them: that
        // must change no answer, whatever the spelling, arity or command that ends them.
        let dir = tempfile::tempdir().expect("tempdir");
        let server = single_member(dir.path(), 1);
        let mut stream = connect_patiently(&server);
        let sets: Vec<_> = (0..8)
            .map(|i| command(&["SET", &format!("k{i}"), &format!("v{i}")]))
            .collect();
        assert!(pipeline(&mut stream, &sets)
            .iter()
            .all(|reply| *reply == RespValue::Simple(b"OK".to_vec())));
        // Reads are answered on the I/O thread only under a lease; wait for one.
        let lease_reads = || {
            server
                .client_port_counters()
                .reads_lease_local
                .load(Ordering::Relaxed)
        };
        let deadline = Instant::now() + PATIENCE;
        while lease_reads() == 0 {
            assert!(
                Instant::now() < deadline,
                "no read was ever served under the lease"
            );
            pipeline(&mut stream, &[command(&["GET", "k0"])]);
            std::thread::sleep(Duration::from_millis(5));
        }
        let mixed = vec![
            command(&["GET", "k0"]),
            command(&["get", "k1"]),
            command(&["GeT", "missing"]),
            command(&["GET", "k2"]),
            command(&["GET", "k3", "extra"]),
            command(&["GET", "k4"]),
            command(&["SET", "k5", "new"]),
            command(&["GET", "k5"]),
            command(&["GET"]),
            command(&["GET", "k6"]),
            command(&["GET", "k7"]),
        ];
        let before = lease_reads();
        let together = pipeline(&mut stream, &mixed);
        assert!(
            lease_reads() > before,
            "the pipeline was answered under the lease"
        );
        let mut alone = connect_patiently(&server);
        let one_by_one: Vec<RespValue> = mixed
            .iter()
            .filter(|args| args[0] != "SET")
            .flat_map(|args| pipeline(&mut alone, std::slice::from_ref(args)))
            .collect();
        let together_reads: Vec<RespValue> = together
            .iter()
            .zip(&mixed)
            .filter(|(_, args)| args[0] != "SET")
            .map(|(reply, _)| reply.clone())
            .collect();
        assert_eq!(together_reads, one_by_one);
        assert_eq!(together[0], RespValue::Bulk(Some(b"v0".to_vec())));
        assert_eq!(together[1], RespValue::Bulk(Some(b"v1".to_vec())));
        assert_eq!(together[2], RespValue::Bulk(None));
        assert!(
            matches!(together[4], RespValue::Error(_)),
            "{:?}",
            together[4]
        );
        assert_eq!(together[7], RespValue::Bulk(Some(b"new".to_vec())));
        assert!(
            matches!(together[8], RespValue::Error(_)),
            "{:?}",
            together[8]
        );
        assert_eq!(together[10], RespValue::Bulk(Some(b"v7".to_vec())));
        server.shutdown().expect("clean shutdown");
    }

    #[test]
    fn shutdown_answers_every_command_already_parsed_then_closes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = single_member(dir.path(), 2);
        let mut stream = connect_patiently(&server);
        let n_commands = 300;
        let mut out = Vec::new();
        for index in 0..n_commands {
            let key = format!("k{index}");
            write_command(&mut out, &[b"SET", key.as_bytes(), b"v"]);
        }
        stream.write_all(&out).expect("send");
        // Wait until the port has parsed (and so owes) every command, then stop it.
        let deadline = Instant::now() + PATIENCE;
        while server
            .client_port_counters()
            .commands
            .load(Ordering::Relaxed)
            < n_commands
        {
            assert!(Instant::now() < deadline, "the pipeline was never parsed");
            std::thread::sleep(Duration::from_millis(1));
        }
        let stopper = std::thread::spawn(move || server.shutdown());
        let replies = read_replies(&mut stream, n_commands as usize + 1);
        assert_eq!(
            replies.len(),
            n_commands as usize,
            "every parsed command answered, nothing more"
        );
        assert!(replies
            .iter()
            .all(|reply| *reply == RespValue::Simple(b"OK".to_vec())));
        stopper.join().expect("stopper").expect("clean shutdown");
    }

    #[test]
    fn requests_after_short_reads_and_a_half_close_after_them_are_all_seen() {
        // After a short read the port waits for the socket's next poll event instead of
        // reading again: each new request, and the half-close, must be such an event,
        // whether the half-close comes with the last request or after its reply.
        let dir = tempfile::tempdir().expect("tempdir");
        let server = single_member(dir.path(), 1);
        let mut stream = connect_patiently(&server);
        for round in 0..200 {
            let mut out = Vec::new();
            write_command(&mut out, &[b"INCR", b"rounds"]);
            stream.write_all(&out).expect("send");
            assert_eq!(
                read_replies(&mut stream, 1),
                [RespValue::Integer(round + 1)],
                "round {round}"
            );
        }
        for fin_with_request in [true, false] {
            let mut stream = connect_patiently(&server);
            let mut out = Vec::new();
            write_command(&mut out, &[b"SET", b"k", b"v"]);
            write_command(&mut out, &[b"GET", b"k"]);
            stream.write_all(&out).expect("send");
            if fin_with_request {
                stream.shutdown(Shutdown::Write).expect("half close");
            }
            assert_eq!(
                read_replies(&mut stream, 2),
                [
                    RespValue::Simple(b"OK".to_vec()),
                    RespValue::Bulk(Some(b"v".to_vec()))
                ]
            );
            if !fin_with_request {
                stream.shutdown(Shutdown::Write).expect("half close");
            }
            let mut rest = [0u8; 16];
            assert!(
                matches!(stream.read(&mut rest), Ok(0)),
                "the port closes after the half-close (with the request: {fin_with_request})"
            );
        }
        server.shutdown().expect("clean shutdown");
    }

    fn config() -> ServerConfig {
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("address");
        ServerConfig::new(1, "/nonexistent", vec![(2, peer)])
    }

    #[test]
    fn a_zero_id_is_refused() {
        let mut config = config();
        config.id = 0;
        assert!(matches!(validate(&config), Err(ServerError::Config(_))));
    }

    #[test]
    fn listing_itself_as_a_peer_is_refused() {
        let mut config = config();
        config
            .peers
            .push((1, "127.0.0.1:2".parse().expect("address")));
        assert!(matches!(validate(&config), Err(ServerError::Config(_))));
    }

    #[test]
    fn a_heartbeat_not_below_the_election_timeout_is_refused() {
        let mut config = config();
        config.heartbeat_ms = 500;
        config.election_timeout_ms = 500;
        assert!(matches!(validate(&config), Err(ServerError::Config(_))));
        config.election_timeout_ms = 5;
        config.heartbeat_ms = 1;
        assert!(matches!(validate(&config), Err(ServerError::Config(_))));
    }

    #[test]
    fn zero_client_io_threads_are_refused() {
        let mut config = config();
        config.client_io_threads = 0;
        assert!(matches!(validate(&config), Err(ServerError::Config(_))));
    }

    #[test]
    fn defaults_are_valid() {
        assert!(validate(&config()).is_ok());
    }

    #[test]
    fn an_emulated_fsync_delay_above_the_maximum_is_refused() {
        let mut config = config();
        config.emulated_sync_delay = Some(MAX_EMULATED_SYNC_DELAY);
        assert!(validate(&config).is_ok());
        config.emulated_sync_delay = Some(MAX_EMULATED_SYNC_DELAY + Duration::from_micros(1));
        assert!(matches!(validate(&config), Err(ServerError::Config(_))));
    }

    /// The `# Raft` INFO text of a one-member cluster after one acknowledged SET.
    /// A one-member server (one client I/O thread, configured by `configure`) once it
    /// leads, and a client connection to it.
    fn leading_single_member(
        configure: impl FnOnce(&mut ServerConfig),
    ) -> (tempfile::TempDir, Server, TcpStream) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ServerConfig::new(1, dir.path(), Vec::new());
        config.client_io_threads = 1;
        configure(&mut config);
        let server = Server::start(
            config,
            TcpListener::bind("127.0.0.1:0").expect("bind peer"),
            TcpListener::bind("127.0.0.1:0").expect("bind client"),
        )
        .expect("start");
        let deadline = Instant::now() + PATIENCE;
        while server.handle().status().role() != tally_engine::raft::Role::Leader {
            assert!(Instant::now() < deadline, "the single member never led");
            std::thread::sleep(Duration::from_millis(10));
        }
        let stream = connect_patiently(&server);
        (dir, server, stream)
    }

    fn raft_info_after_one_write(emulated_sync_delay: Option<Duration>) -> String {
        let (_dir, server, mut stream) =
            leading_single_member(|config| config.emulated_sync_delay = emulated_sync_delay);
        let replies = pipeline(
            &mut stream,
            &[command(&["SET", "k", "v"]), command(&["INFO", "raft"])],
        );
        assert_eq!(replies[0], RespValue::Simple(b"OK".to_vec()));
        let RespValue::Bulk(Some(info)) = &replies[1] else {
            panic!("INFO is a bulk string: {:?}", replies[1]);
        };
        let info = String::from_utf8_lossy(info).into_owned();
        drop(stream);
        server.shutdown().expect("clean shutdown");
        info
    }

    #[test]
    fn info_reports_the_emulated_fsync_delay_only_when_one_is_set() {
        let emulated = raft_info_after_one_write(Some(Duration::from_micros(2_500)));
        assert!(
            emulated.contains("\r\nemulated_fsync_delay_us:2500\r\n"),
            "{emulated}"
        );
        assert!(emulated.contains("entries_per_fsync:"), "{emulated}");
        let real = raft_info_after_one_write(None);
        assert!(!real.contains("emulated"), "{real}");
    }

    /// `[stored keys, expired keys still stored]`, read on the leader at its clock.
    fn expiry_backlog(server: &Server) -> (i64, i64) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64;
        let mut payload = Vec::new();
        tally_engine::kv::encode_request_at(
            None,
            Some(now_ms),
            &tally_engine::kv::Command::ExpiryBacklog,
            &KvLimits::default(),
            &mut payload,
        )
        .expect("encode");
        let (sender, receiver) = crossbeam_channel::bounded(1);
        server.handle().read(
            payload.into(),
            tally_engine::runtime::ReplyTo::new(0, sender),
        );
        let reply = receiver.recv_timeout(PATIENCE).expect("a reply");
        match reply.result {
            Ok(KvResponse::Nested(counts)) => match counts.as_slice() {
                [KvResponse::Integer(stored), KvResponse::Integer(expired)] => (*stored, *expired),
                other => panic!("unexpected backlog {other:?}"),
            },
            other => panic!("unexpected backlog reply {other:?}"),
        }
    }

    #[test]
    fn expired_keys_leave_memory_through_the_leaders_purge_entries_without_further_writes() {
        let (_dir, server, mut stream) =
            leading_single_member(|config| config.expiry_sweep_interval_ms = 20);
        let deadline = Instant::now() + PATIENCE;
        let n_keys = 300;
        let mut commands: Vec<Vec<String>> = (0..n_keys)
            .map(|i| command(&["SET", &format!("k{i}"), "v", "PX", "150"]))
            .collect();
        commands.push(command(&["SET", "forever", "v"]));
        let replies = pipeline(&mut stream, &commands);
        assert!(replies
            .iter()
            .all(|reply| *reply == RespValue::Simple(b"OK".to_vec())));
        // No more writes: only the sweep's entries can remove the expired keys (a timed
        // entry removes a few, but the last ones written stay without it).
        while expiry_backlog(&server) != (1, 0) {
            assert!(
                Instant::now() < deadline,
                "expired keys stayed in memory: {:?}",
                expiry_backlog(&server)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let sweep = server.front_end().sweep_counters();
        assert!(sweep.purges.load(Ordering::Relaxed) > 0);
        assert!(sweep.keys_removed.load(Ordering::Relaxed) > 0);
        let replies = pipeline(&mut stream, &[command(&["GET", "forever"])]);
        assert_eq!(replies[0], RespValue::Bulk(Some(b"v".to_vec())));
        drop(stream);
        server.shutdown().expect("clean shutdown");
    }

    #[test]
    fn an_idle_keyspace_with_nothing_expired_gets_no_purge_entries() {
        let (_dir, server, mut stream) =
            leading_single_member(|config| config.expiry_sweep_interval_ms = 10);
        let replies = pipeline(&mut stream, &[command(&["SET", "k", "v", "EX", "3600"])]);
        assert_eq!(replies[0], RespValue::Simple(b"OK".to_vec()));
        let status = server.handle();
        // Settle (the leader records its member information as an entry), then many
        // sweep intervals: each one a read, never an entry.
        std::thread::sleep(Duration::from_millis(300));
        let commit = status.status().commit_index.load(Ordering::Acquire);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(status.status().commit_index.load(Ordering::Acquire), commit);
        assert_eq!(
            server
                .front_end()
                .sweep_counters()
                .purges
                .load(Ordering::Relaxed),
            0
        );
        assert_eq!(expiry_backlog(&server), (1, 0));
        drop(stream);
        server.shutdown().expect("clean shutdown");
    }

    #[test]
    fn the_builder_refuses_a_peer_port_without_secret_or_tls_before_touching_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node_dir = dir.path().join("node-1");
        let config = ServerConfig::new(1, &node_dir, Vec::new());
        let refused = ServerBuilder::new(config.clone(), KvStateMachine::default())
            .start(TcpListener::bind("127.0.0.1:0").expect("bind peer"));
        assert!(
            matches!(&refused, Err(ServerError::Config(reason)) if reason.contains("cluster secret")),
            "{:?}",
            refused.err()
        );
        assert!(!node_dir.exists(), "nothing written for a refused member");
        let mut config = config;
        config.cluster_secret = Some(ClusterSecret::from_bytes(&[7u8; 32]).expect("secret"));
        let replica = ServerBuilder::new(config, KvStateMachine::default())
            .start(TcpListener::bind("127.0.0.1:0").expect("bind peer"))
            .expect("a member with a secret starts");
        assert!(node_dir.join(IDENTITY_FILE).exists());
        assert_ne!(replica.incarnation(), 0);
        assert_eq!(replica.advertised_client_addr(), "");
        replica.shutdown().expect("clean shutdown");
    }
}
