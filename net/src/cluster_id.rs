//! The cluster id a member's directory belongs to, stored in `<dir>/cluster-id`.
//!
//! Why: the handshake refuses peers of another cluster, which only helps if clusters
//! have different ids. A fixed default makes every cluster the same cluster, so every new
//! cluster gets its own id, settled once and stored (fsynced) before the node starts:
//!
//! * `--cluster-id` wins; else, with a secret, the id derived from it
//!   (HMAC(secret, "tally cluster id")): all members agree without talking, another
//!   secret gives another id.
//! * Without either, the founder with the lowest id (or a one-member cluster, or a
//!   `--restore-from` start) draws a random id. Every other new member (the other
//!   founders, a `--join` node) asks its `--peer`s for theirs ([`ASK_CLUSTER_ID`] in a
//!   HELLO, answered only by running members, which all hold a settled id) and stores the
//!   first answer. Founders started in any order converge on the lowest founder's id:
//!   nobody else draws one, and a member runs (and answers) only once it holds it. The
//!   node takes part in no election before its id is stored, because it does not start
//!   before. Trust-on-first-use: without a secret or peer TLS the answer is not
//!   authenticated (`docs/SECURITY.md`).
//! * A directory that already has an id keeps it (a restart; a later start with another
//!   configured or derived id is refused); a log from before ids were stored keeps the
//!   old fixed [`LEGACY_CLUSTER_ID`].

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::frame::{encode_frame, FrameReader, MAX_HANDSHAKE_FRAME_PAYLOAD_BYTES};
use crate::handshake::{
    decode_cluster_id_answer, decode_reject, new_nonce, ClusterSecret, Hello, ASK_CLUSTER_ID,
    HANDSHAKE_VERSION, MSG_CLUSTER_ID, MSG_HELLO, MSG_REJECT,
};
use crate::identity::{Identity, IdentityError, IDENTITY_FILE};
use crate::peer_tls::{names_exactly, PeerTls};

/// Name of the file in the member's directory.
pub const CLUSTER_ID_FILE: &str = "cluster-id";
/// The id every cluster had before ids were drawn: kept by a directory holding a log but
/// no stored id (it was written by such a build).
pub const LEGACY_CLUSTER_ID: u64 = 0x7a11;
/// Most bytes the file may hold (checked before reading).
const MAX_FILE_BYTES: u64 = 64;
/// Connect timeout of one question to a peer.
const ASK_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Read and write timeout of one question (a peer that is itself still waiting for its
/// id accepts the connection but never answers).
const ASK_IO_TIMEOUT_MS: u64 = 2_000;
/// Pause between two rounds over the peers.
const ASK_ROUND_PAUSE_MS: u64 = 200;
/// How often the wait is logged again.
const ASK_LOG_EVERY_MS: u64 = 10_000;

/// Why the cluster id could not be settled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterIdError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a cluster id (expected 0x followed by hex digits, not 0)")]
    Malformed { path: PathBuf },
    #[error("the directory belongs to cluster {stored:#x} but this start asks for {wanted:#x} (pass --cluster-id {stored:#x} to keep it, or use a fresh --dir)")]
    Mismatch { stored: u64, wanted: u64 },
    #[error("cluster id 0 is reserved (it asks a peer for its id)")]
    Reserved,
    #[error("a new member that is not the lowest-id founder learns the cluster id from a --peer, but none is given")]
    NoPeerToAsk,
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// What settling the id of one start needs.
#[derive(Clone, Copy, Debug)]
pub struct ClusterIdStart<'a> {
    /// The member's directory.
    pub dir: &'a Path,
    /// `--cluster-id`.
    pub configured: Option<u64>,
    /// `--cluster-secret-file`.
    pub secret: Option<&'a ClusterSecret>,
    /// `--id`.
    pub node_id: u64,
    /// `--peer`: the founders (a founder) or the members to ask (a `--join` node).
    pub peers: &'a [(u64, SocketAddr)],
    /// `--join`: a new directory never draws, it asks.
    pub join: bool,
    /// `--restore-from`: a new one-member cluster, it draws.
    pub restore: bool,
    /// Peer TLS: questions go over it (the answer is then authenticated).
    pub tls: Option<&'a PeerTls>,
}

impl ClusterIdStart<'_> {
    /// Whether a new directory draws the id (rather than asking a peer for it).
    fn draws(&self) -> bool {
        self.restore || (!self.join && self.peers.iter().all(|(peer, _)| self.node_id < *peer))
    }
}

/// The cluster id this start uses (see the module documentation for the order). A
/// directory without the file gets it (temporary file, fsync, rename, directory fsync)
/// before this returns. Blocks while a new member waits for a peer to answer.
pub fn settle_cluster_id(start: &ClusterIdStart<'_>) -> Result<u64, ClusterIdError> {
    let wanted = match start.configured {
        Some(ASK_CLUSTER_ID) => return Err(ClusterIdError::Reserved),
        Some(id) => Some(id),
        None => start.secret.map(ClusterSecret::cluster_id),
    };
    let path = start.dir.join(CLUSTER_ID_FILE);
    let stored = match read_stored(&path)? {
        Some(id) => Some(id),
        // A directory whose identity file predates the cluster-id file.
        None => Identity::load(start.dir)?.map(|identity| identity.cluster_id),
    };
    let id = match (stored, wanted) {
        (Some(stored), Some(wanted)) if stored != wanted => {
            return Err(ClusterIdError::Mismatch { stored, wanted })
        }
        (Some(stored), _) => stored,
        (None, Some(wanted)) => wanted,
        (None, None) if holds_a_log(start.dir, &path)? => LEGACY_CLUSTER_ID,
        (None, None) if start.draws() => draw_cluster_id(),
        (None, None) => ask_peers(start)?,
    };
    if read_stored(&path)? != Some(id) {
        store(start.dir, &path, id)?;
    }
    Ok(id)
}

/// A random id, never [`ASK_CLUSTER_ID`].
fn draw_cluster_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != ASK_CLUSTER_ID {
            return id;
        }
    }
}

/// Asks the peers in turn until one answers with its id; waits as long as it takes
/// (like a member waiting for a quorum), logging now and then.
fn ask_peers(start: &ClusterIdStart<'_>) -> Result<u64, ClusterIdError> {
    if start.peers.is_empty() {
        return Err(ClusterIdError::NoPeerToAsk);
    }
    let mut members: Vec<u64> = start.peers.iter().map(|(id, _)| *id).collect();
    members.push(start.node_id);
    let mut logged_at: Option<Instant> = None;
    loop {
        let mut last_error = String::new();
        for &(peer, addr) in start.peers {
            match ask_peer(start, &members, peer, addr) {
                Ok(id) => {
                    tracing::info!(
                        node_id = start.node_id,
                        peer,
                        cluster_id = format_args!("{id:#x}"),
                        "learned the cluster id from a running member"
                    );
                    return Ok(id);
                }
                Err(error) => last_error = format!("node {peer} at {addr}: {error}"),
            }
        }
        if logged_at.is_none_or(|at| at.elapsed() >= Duration::from_millis(ASK_LOG_EVERY_MS)) {
            logged_at = Some(Instant::now());
            tracing::warn!(
                node_id = start.node_id,
                last_error = %last_error,
                "a new member without a cluster id waits for a running --peer to tell it (the lowest-id founder draws it)"
            );
        }
        std::thread::sleep(Duration::from_millis(ASK_ROUND_PAUSE_MS));
    }
}

/// One question to one peer, over TLS if configured.
fn ask_peer(
    start: &ClusterIdStart<'_>,
    members: &[u64],
    peer: u64,
    addr: SocketAddr,
) -> Result<u64, String> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_millis(ASK_CONNECT_TIMEOUT_MS))
        .map_err(|error| error.to_string())?;
    let timeout = Some(Duration::from_millis(ASK_IO_TIMEOUT_MS));
    tcp.set_read_timeout(timeout)
        .and_then(|()| tcp.set_write_timeout(timeout))
        .and_then(|()| tcp.set_nodelay(true))
        .map_err(|error| error.to_string())?;
    let Some(tls) = start.tls else {
        return exchange(tcp, start.node_id, peer);
    };
    let session = tls.connect(peer).map_err(|error| error.to_string())?;
    let mut stream = rustls::StreamOwned::new(session, tcp);
    let id = exchange(&mut stream, start.node_id, peer)?;
    // rustls checked the chain and the name; also refuse a certificate that would pass
    // for another member (as the transport does).
    let names_peer = stream
        .conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .is_some_and(|cert| names_exactly(cert, peer, members));
    if !names_peer {
        return Err("its certificate does not name exactly the node dialed".into());
    }
    Ok(id)
}

/// Sends the question (a HELLO carrying [`ASK_CLUSTER_ID`]) and reads the answer.
fn exchange(
    mut stream: impl std::io::Read + std::io::Write,
    node_id: u64,
    peer: u64,
) -> Result<u64, String> {
    let hello = Hello {
        version: HANDSHAKE_VERSION,
        cluster_id: ASK_CLUSTER_ID,
        from_node: node_id,
        to_node: peer,
        nonce: new_nonce(),
        client_addr: String::new(),
        incarnation: 0,
    };
    let mut wire = Vec::new();
    encode_frame(
        MSG_HELLO,
        0,
        &hello.encode(),
        MAX_HANDSHAKE_FRAME_PAYLOAD_BYTES,
        &mut wire,
    )
    .map_err(|error| error.to_string())?;
    stream
        .write_all(&wire)
        .and_then(|()| stream.flush())
        .map_err(|error| error.to_string())?;
    let answer = FrameReader::new(stream, MAX_HANDSHAKE_FRAME_PAYLOAD_BYTES)
        .read_frame()
        .map_err(|error| error.to_string())?;
    match answer.msg_type {
        MSG_CLUSTER_ID => decode_cluster_id_answer(&answer.payload)
            .ok_or_else(|| "a malformed cluster id answer".to_string()),
        MSG_REJECT => {
            let (reason, text) = decode_reject(&answer.payload);
            Err(format!("refused ({reason:?}) {text}"))
        }
        other => Err(format!("unexpected answer type {other:#04x}")),
    }
}

/// Whether `dir` holds anything but the identity and cluster-id files and the lock: a
/// log written before cluster ids were stored.
fn holds_a_log(dir: &Path, path: &Path) -> Result<bool, ClusterIdError> {
    let io = |source| ClusterIdError::Io {
        path: path.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(io(error)),
    };
    for entry in entries {
        let name = entry.map_err(io)?.file_name();
        let name = name.to_string_lossy();
        let bookkeeping =
            name.starts_with(IDENTITY_FILE) || name.starts_with(CLUSTER_ID_FILE) || name == "LOCK";
        if !bookkeeping {
            return Ok(true);
        }
    }
    Ok(false)
}

fn read_stored(path: &Path) -> Result<Option<u64>, ClusterIdError> {
    let io = |source| ClusterIdError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io(error)),
    };
    let mut text = String::new();
    file.take(MAX_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(io)?;
    let malformed = || ClusterIdError::Malformed {
        path: path.to_path_buf(),
    };
    let digits = text.trim().strip_prefix("0x").ok_or_else(malformed)?;
    match u64::from_str_radix(digits, 16) {
        Ok(ASK_CLUSTER_ID) | Err(_) => Err(malformed()),
        Ok(id) => Ok(Some(id)),
    }
}

fn store(dir: &Path, path: &Path, id: u64) -> Result<(), ClusterIdError> {
    let io = |source| ClusterIdError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let temp = dir.join(format!("{CLUSTER_ID_FILE}.tmp"));
    let mut file = std::fs::File::create(&temp).map_err(io)?;
    file.write_all(format!("{id:#x}\n").as_bytes())
        .map_err(io)?;
    // Fail-stop on fsync errors: start-up fails, nothing is retried.
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&temp, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::CreatedAs;

    fn start<'a>(dir: &'a Path, secret: Option<&'a ClusterSecret>) -> ClusterIdStart<'a> {
        ClusterIdStart {
            dir,
            configured: None,
            secret,
            node_id: 1,
            peers: &[],
            join: false,
            restore: false,
            tls: None,
        }
    }

    #[test]
    fn the_first_start_stores_the_id_and_later_starts_must_match_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = dir.path().join("node");
        let secret = ClusterSecret::from_bytes(&[3; 32]).expect("secret");
        let derived = secret.cluster_id();
        let settle = |configured, secret| {
            settle_cluster_id(&ClusterIdStart {
                configured,
                ..start(&node, secret)
            })
        };
        assert_eq!(settle(None, Some(&secret)).expect("first"), derived);
        assert_eq!(settle(None, Some(&secret)).expect("again"), derived);
        assert_eq!(settle(None, None).expect("stored"), derived);
        let other = ClusterSecret::from_bytes(&[4; 32]).expect("secret");
        assert!(matches!(
            settle(None, Some(&other)),
            Err(ClusterIdError::Mismatch { stored, .. }) if stored == derived
        ));
        assert_eq!(
            settle(Some(derived), Some(&other)).expect("explicit id wins"),
            derived
        );
        assert!(matches!(
            settle(Some(ASK_CLUSTER_ID), None),
            Err(ClusterIdError::Reserved)
        ));
        std::fs::write(node.join(CLUSTER_ID_FILE), "garbage").expect("write");
        assert!(matches!(
            settle(None, None),
            Err(ClusterIdError::Malformed { .. })
        ));
        std::fs::write(node.join(CLUSTER_ID_FILE), "0x0\n").expect("write");
        assert!(matches!(
            settle(None, None),
            Err(ClusterIdError::Malformed { .. })
        ));
    }

    #[test]
    fn a_lone_new_member_draws_a_random_id_and_keeps_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let first = settle_cluster_id(&start(&a, None)).expect("draw");
        assert_ne!(first, LEGACY_CLUSTER_ID);
        assert_ne!(first, ASK_CLUSTER_ID);
        assert_eq!(settle_cluster_id(&start(&a, None)).expect("kept"), first);
        let second = settle_cluster_id(&start(&b, None)).expect("draw");
        assert_ne!(first, second, "two new clusters get two ids");
    }

    #[test]
    fn old_directories_keep_their_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        let with_log = dir.path().join("log");
        std::fs::create_dir_all(&with_log).expect("mkdir");
        std::fs::write(with_log.join("wal-0000000000000001.seg"), b"x").expect("write");
        assert_eq!(
            settle_cluster_id(&start(&with_log, None)).expect("legacy"),
            LEGACY_CLUSTER_ID
        );
        let with_identity = dir.path().join("identity");
        Identity::generate(0x1234, 1, CreatedAs::Bootstrap)
            .store(&with_identity)
            .expect("identity");
        assert_eq!(
            settle_cluster_id(&start(&with_identity, None)).expect("from the identity"),
            0x1234
        );
        assert_eq!(
            read_stored(&with_identity.join(CLUSTER_ID_FILE)).expect("read"),
            Some(0x1234)
        );
    }

    #[test]
    fn only_the_lowest_founder_or_a_restore_draws() {
        let dir = tempfile::tempdir().expect("temp dir");
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let lowest = ClusterIdStart {
            peers: &[(2, peer), (3, peer)],
            ..start(dir.path(), None)
        };
        assert!(lowest.draws());
        assert!(!ClusterIdStart {
            node_id: 2,
            peers: &[(1, peer), (3, peer)],
            ..lowest
        }
        .draws());
        assert!(!ClusterIdStart {
            join: true,
            ..lowest
        }
        .draws());
        assert!(ClusterIdStart {
            node_id: 9,
            restore: true,
            ..lowest
        }
        .draws());
        assert!(matches!(
            settle_cluster_id(&ClusterIdStart {
                join: true,
                ..start(dir.path(), None)
            }),
            Err(ClusterIdError::NoPeerToAsk)
        ));
    }
}
