//! The cluster id a member's directory belongs to, stored in `<dir>/cluster-id`.
//!
//! Why: the handshake refuses peers of another cluster, which only helps if clusters
//! have different ids. A fixed default (`0x7a11`) makes every cluster the same cluster,
//! so with a secret the id is derived from it (HMAC(secret, "tally cluster id"): all
//! members agree without talking, and another secret gives another id). The first start
//! stores it; a later start with another id is refused instead of joining the directory's
//! data to a different cluster.
//!
//! Kept to one small file and one function so the identity file of the membership work
//! (cluster id, node id, incarnation) can absorb it: call [`resolve_cluster_id`] from
//! there, or move its check.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use crate::handshake::ClusterSecret;

/// Name of the file in the member's directory.
pub const CLUSTER_ID_FILE: &str = "cluster-id";
/// The id of a cluster started without a secret and without `--cluster-id` (members
/// cannot agree on a random one without a shared secret; such a cluster is open to
/// anyone anyway, `docs/SECURITY.md`).
pub const LEGACY_CLUSTER_ID: u64 = 0x7a11;
/// Most bytes the file may hold (checked before reading).
const MAX_FILE_BYTES: u64 = 64;

/// Why the cluster id could not be settled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterIdError {
    /// The cluster-id file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Path of the file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file does not hold `0x` followed by hex digits.
    #[error("{path}: not a cluster id (expected 0x followed by hex digits)")]
    Malformed {
        /// Path of the file.
        path: PathBuf,
    },
    /// The directory belongs to another cluster than this start asks for.
    #[error("the directory belongs to cluster {stored:#x} but this start asks for {wanted:#x} (pass --cluster-id {stored:#x} to keep it, or use a fresh --dir)")]
    Mismatch {
        /// Cluster id stored in the directory.
        stored: u64,
        /// Cluster id this start asks for (given or derived from the secret).
        wanted: u64,
    },
}

/// The cluster id this start uses: `configured` (`--cluster-id`), else the secret's
/// derived id, else the one stored in `dir`, else [`LEGACY_CLUSTER_ID`]. A stored id that
/// differs from the configured or derived one is an error; a directory without the file
/// gets it (written to a temporary file, fsynced, renamed, directory fsynced).
pub fn resolve_cluster_id(
    dir: &Path,
    configured: Option<u64>,
    secret: Option<&ClusterSecret>,
) -> Result<u64, ClusterIdError> {
    let wanted = configured.or_else(|| secret.map(ClusterSecret::cluster_id));
    let path = dir.join(CLUSTER_ID_FILE);
    match (read_stored(&path)?, wanted) {
        (Some(stored), Some(wanted)) if stored != wanted => {
            Err(ClusterIdError::Mismatch { stored, wanted })
        }
        (Some(stored), _) => Ok(stored),
        (None, wanted) => {
            let id = wanted.unwrap_or(LEGACY_CLUSTER_ID);
            store(dir, &path, id)?;
            Ok(id)
        }
    }
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
    u64::from_str_radix(digits, 16)
        .map(Some)
        .map_err(|_| malformed())
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

    #[test]
    fn the_first_start_stores_the_id_and_later_starts_must_match_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = dir.path().join("node");
        let secret = ClusterSecret::from_bytes(&[3; 32]).expect("secret");
        let derived = secret.cluster_id();
        assert_ne!(derived, LEGACY_CLUSTER_ID);
        assert_eq!(
            resolve_cluster_id(&node, None, Some(&secret)).expect("first"),
            derived
        );
        assert_eq!(
            resolve_cluster_id(&node, None, Some(&secret)).expect("again"),
            derived
        );
        assert_eq!(
            resolve_cluster_id(&node, None, None).expect("stored"),
            derived
        );
        let other = ClusterSecret::from_bytes(&[4; 32]).expect("secret");
        assert!(matches!(
            resolve_cluster_id(&node, None, Some(&other)),
            Err(ClusterIdError::Mismatch { stored, .. }) if stored == derived
        ));
        assert_eq!(
            resolve_cluster_id(&node, Some(derived), Some(&other)).expect("explicit id wins"),
            derived
        );
        let fresh = dir.path().join("fresh");
        assert_eq!(
            resolve_cluster_id(&fresh, None, None).expect("legacy"),
            LEGACY_CLUSTER_ID
        );
        std::fs::write(fresh.join(CLUSTER_ID_FILE), "garbage").expect("write");
        assert!(matches!(
            resolve_cluster_id(&fresh, None, None),
            Err(ClusterIdError::Malformed { .. })
        ));
    }
}
