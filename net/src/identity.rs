//! The identity file of a node directory: cluster id, node id, incarnation.
//!
//! Why: a node that reuses its id with an emptied directory has forgotten its vote and
//! its log; letting it back in as the voter it was can elect two leaders or lose
//! acknowledged writes. The incarnation is a random id drawn when the directory is
//! created; peers record it in the configuration and refuse the same id presenting
//! another one. The file also pins the cluster id and node id, so a directory started
//! with the wrong `--id` or `--cluster-id` is refused instead of silently joining.
//!
//! Format (`IDENTITY`, text, at most [`MAX_IDENTITY_BYTES`]): a `tally-identity v1`
//! line, then `cluster_id=`, `node_id=`, `incarnation=` (hex with `0x`) and `created_as=`
//! (`bootstrap` or `join`). Written to a temp file, fsynced, renamed, directory fsynced.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// File name inside the node directory.
pub const IDENTITY_FILE: &str = "IDENTITY";
/// Largest identity file read (bounds the read of a damaged file).
pub const MAX_IDENTITY_BYTES: u64 = 4096;
const HEADER: &str = "tally-identity v1";

/// How a directory was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreatedAs {
    /// A founding member: its first log entry is the cluster's configuration.
    Bootstrap,
    /// A member that joins an existing cluster (`--join`).
    Join,
}

/// The contents of the identity file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The cluster this directory belongs to (`--cluster-id`).
    pub cluster_id: u64,
    /// The member id this directory belongs to (`--id`).
    pub node_id: u64,
    /// Nonzero.
    pub incarnation: u64,
    /// Whether the directory was created by bootstrapping a cluster or by joining one.
    pub created_as: CreatedAs,
}

/// Why the identity file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The identity file could not be read, written or synced.
    #[error("{file}: {source}")]
    Io {
        /// Path of the file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file exists but does not parse (wrong header, a missing or bad
    /// field; only the first [`MAX_IDENTITY_BYTES`] are read).
    #[error("{file} is not a valid identity file: {reason}")]
    Malformed {
        /// Path of the file.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory belongs to another member id: refused so a node never takes over
    /// another member's vote and log.
    #[error(
        "{file} belongs to node {found}, not --id {expected}: this directory is another \
         member's"
    )]
    WrongNode {
        /// Path of the file.
        file: String,
        /// Node id the file records.
        found: u64,
        /// Node id this process was started with.
        expected: u64,
    },
    /// The directory belongs to another cluster: refused so a node never joins a cluster
    /// with a log that is not its own.
    #[error(
        "{file} belongs to cluster {found:#x}, not --cluster-id {expected:#x}: this directory \
         is another cluster's"
    )]
    WrongCluster {
        /// Path of the file.
        file: String,
        /// Cluster id the file records.
        found: u64,
        /// Cluster id this process was started with.
        expected: u64,
    },
}

impl Identity {
    /// A new identity with a random nonzero incarnation.
    pub fn generate(cluster_id: u64, node_id: u64, created_as: CreatedAs) -> Identity {
        let incarnation = loop {
            let candidate: u64 = rand::random();
            if candidate != 0 {
                break candidate;
            }
        };
        Identity {
            cluster_id,
            node_id,
            incarnation,
            created_as,
        }
    }

    /// The file's text.
    pub fn encode(&self) -> String {
        let created_as = match self.created_as {
            CreatedAs::Bootstrap => "bootstrap",
            CreatedAs::Join => "join",
        };
        format!(
            "{HEADER}\ncluster_id={:#x}\nnode_id={}\nincarnation={:#x}\ncreated_as={created_as}\n",
            self.cluster_id, self.node_id, self.incarnation
        )
    }

    /// Parses [`Identity::encode`] output.
    pub fn decode(text: &str) -> Result<Identity, String> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!("the first line is not {HEADER:?}"));
        }
        let (mut cluster_id, mut node_id, mut incarnation, mut created_as) =
            (None, None, None, None);
        for line in lines {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {line:?} is not key=value"))?;
            match key {
                "cluster_id" => cluster_id = Some(parse_u64(value)?),
                "node_id" => node_id = Some(parse_u64(value)?),
                "incarnation" => incarnation = Some(parse_u64(value)?),
                "created_as" => {
                    created_as = Some(match value {
                        "bootstrap" => CreatedAs::Bootstrap,
                        "join" => CreatedAs::Join,
                        other => return Err(format!("unknown created_as {other:?}")),
                    })
                }
                other => return Err(format!("unknown key {other:?}")),
            }
        }
        let missing = |name: &str| format!("no {name} line");
        let identity = Identity {
            cluster_id: cluster_id.ok_or_else(|| missing("cluster_id"))?,
            node_id: node_id.ok_or_else(|| missing("node_id"))?,
            incarnation: incarnation.ok_or_else(|| missing("incarnation"))?,
            created_as: created_as.ok_or_else(|| missing("created_as"))?,
        };
        if identity.incarnation == 0 || identity.node_id == 0 {
            return Err("node id and incarnation must be nonzero".into());
        }
        Ok(identity)
    }

    /// Reads the identity file of `dir`; `None` when there is none.
    pub fn load(dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        let file_name = path.display().to_string();
        let io_error = |source| IdentityError::Io {
            file: file_name.clone(),
            source,
        };
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error(error)),
        };
        let mut text = String::new();
        file.take(MAX_IDENTITY_BYTES)
            .read_to_string(&mut text)
            .map_err(io_error)?;
        Identity::decode(&text)
            .map(Some)
            .map_err(|reason| IdentityError::Malformed {
                file: file_name.clone(),
                reason,
            })
    }

    /// Writes the identity file durably (temp file, fsync, rename, directory fsync).
    pub fn store(&self, dir: &Path) -> Result<(), IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        let temp: PathBuf = dir.join(format!("{IDENTITY_FILE}.tmp"));
        let io_error = |source| IdentityError::Io {
            file: path.display().to_string(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_error)?;
        let mut file = File::create(&temp).map_err(io_error)?;
        file.write_all(self.encode().as_bytes()).map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
        drop(file);
        fs::rename(&temp, &path).map_err(io_error)?;
        File::open(dir)
            .and_then(|directory| directory.sync_all())
            .map_err(io_error)
    }

    /// Refuses an identity that is not this node's or this cluster's.
    pub fn check(&self, dir: &Path, cluster_id: u64, node_id: u64) -> Result<(), IdentityError> {
        let file = dir.join(IDENTITY_FILE).display().to_string();
        if self.node_id != node_id {
            return Err(IdentityError::WrongNode {
                file,
                found: self.node_id,
                expected: node_id,
            });
        }
        if self.cluster_id != cluster_id {
            return Err(IdentityError::WrongCluster {
                file,
                found: self.cluster_id,
                expected: cluster_id,
            });
        }
        Ok(())
    }
}

fn parse_u64(value: &str) -> Result<u64, String> {
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    parsed.map_err(|error| format!("{value:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(Identity::load(dir.path()).expect("load").is_none());
        let identity = Identity::generate(0x7a11, 3, CreatedAs::Join);
        identity.store(dir.path()).expect("store");
        assert_eq!(Identity::load(dir.path()).expect("load"), Some(identity));
        assert!(identity.check(dir.path(), 0x7a11, 3).is_ok());
    }

    #[test]
    fn another_node_or_cluster_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = Identity::generate(0x7a11, 3, CreatedAs::Bootstrap);
        assert!(matches!(
            identity.check(dir.path(), 0x7a11, 4),
            Err(IdentityError::WrongNode { found: 3, .. })
        ));
        assert!(matches!(
            identity.check(dir.path(), 0x7a12, 3),
            Err(IdentityError::WrongCluster { .. })
        ));
    }

    #[test]
    fn damaged_identity_files_are_refused_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = Identity::generate(1, 2, CreatedAs::Bootstrap).encode();
        for damaged in [
            String::new(),
            text.replace("tally-identity v1", "tally-identity v9"),
            text.replace("node_id=2", "node_id=x"),
            text.replace("created_as=bootstrap\n", ""),
            format!("{text}extra=1\n"),
        ] {
            fs::write(dir.path().join(IDENTITY_FILE), damaged).expect("write");
            assert!(matches!(
                Identity::load(dir.path()),
                Err(IdentityError::Malformed { .. })
            ));
        }
    }
}
