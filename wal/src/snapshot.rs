//! Durable snapshot files in a node directory (format: `FORMAT.md`, "Snapshot files").
//!
//! Why it looks like this:
//! * **Same seam as the WAL.** Everything goes through [`Storage`], so the deterministic
//!   simulator runs this code over [`crate::SimStorage`] and crashes it at every step.
//! * **Visible only when complete.** A snapshot is written (or received) into a temp file
//!   (`*.snap.tmp`), fsynced, renamed to its final name and the directory fsynced. Only
//!   final names are listed or opened, so a crash at any step leaves either the old set of
//!   snapshots or the new one. Temp files are leftovers of a crash: [`SnapshotStore::new`]
//!   deletes them.
//! * **Always checked.** A footer holds the data length and a CRC-32 over everything
//!   before the CRC, so a torn, truncated or flipped file never verifies; every length is
//!   bounded by the file's real size before anything is allocated; no file content can
//!   make this module panic.
//! * **Restore is all-or-nothing.** [`SnapshotReader`] checks the CRC before it hands out
//!   the last data byte, so a state machine that reads its whole stream sees an error
//!   instead of the end of a damaged file.
//! * **Fail-stop on fsync errors.** A failed fsync (file or directory) poisons the store:
//!   every later mutating call returns [`SnapshotError::Poisoned`]; nothing is retried.
//!
//! Snapshot files live in the node directory next to the WAL segments; WAL recovery
//! ignores them (it only reads segment-named files).

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::storage::{FileView, Storage, StorageFile};

/// First bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"TALLYSNP";
/// Last bytes of every snapshot file.
pub const SNAPSHOT_END_MAGIC: [u8; 4] = *b"SNPE";
/// The format version this build writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u16 = 1;
/// Bytes of the fixed part of the header (before the configuration blob).
pub const SNAPSHOT_HEADER_FIXED_BYTES: usize = 40;
/// Bytes of the footer.
pub const SNAPSHOT_FOOTER_BYTES: usize = 16;
/// Largest configuration blob a snapshot may carry.
pub const MAX_CONFIGURATION_BYTES: usize = 1 << 20;
/// Suffix of final snapshot file names.
pub const SNAPSHOT_SUFFIX: &str = ".snap";
/// Suffix of snapshot temp files (deleted when a store opens).
pub const SNAPSHOT_TEMP_SUFFIX: &str = ".snap.tmp";

const NAME_PREFIX: &str = "snapshot-";
const DEFAULT_WRITE_BUFFER_BYTES: usize = 256 << 10;
/// A snapshot's bytes are sent to the device in chunks of this size, one at a time
/// (`SnapshotWriter::pace_writeback`): at ~1 GB/s, 4 ms that a WAL fsync may wait.
pub const WRITEBACK_CHUNK_BYTES: u64 = 4 << 20;
/// Bytes a [`SnapshotReader`] hands out before it adds them to its CRC.
const READ_HASH_CHUNK_BYTES: usize = 64 << 10;
const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 40;

/// Everything a snapshot file says about itself besides the state machine's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Index of the last log entry the snapshot includes.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// The cluster membership at `index`, encoded by the Raft layer (opaque here).
    /// Invariant (checked by `begin`): at most [`MAX_CONFIGURATION_BYTES`].
    pub configuration: Bytes,
}

/// A complete snapshot file of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// File name inside the directory.
    pub name: String,
    /// Last included index (from the name; `verify` checks the header agrees).
    pub index: u64,
    /// Last included term.
    pub term: u64,
    /// File size.
    pub size_bytes: u64,
}

/// Every error of the snapshot layer, naming the file (and offset where one applies).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The storage layer failed.
    #[error("I/O error during {operation} on {file}: {source}")]
    Io {
        /// The step that failed, e.g. `"open"`, `"write"`, `"rename"`, `"list"`.
        operation: &'static str,
        /// The file name in the directory (or the directory for `list`).
        file: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An fsync failed earlier (or just now): the store refuses further changes.
    #[error(
        "snapshot store is poisoned after a failed fsync ({detail}); fail-stop: restart the node"
    )]
    Poisoned {
        /// Which fsync failed, on which file, with the OS error (or, on later calls,
        /// that an earlier fsync failed).
        detail: String,
    },
    /// The file's bytes are not a valid snapshot.
    #[error("snapshot {file} is corrupt at offset {offset}: {reason}")]
    Corrupt {
        /// The file name; for a received snapshot its temp file name (or
        /// `"received snapshot"` when the announced size is already too small).
        file: String,
        /// Byte offset of the field found wrong (the file length when the file is too
        /// short).
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// The file was written by a format version this build does not read.
    #[error("snapshot {file} has format version {found}; this build reads {supported}")]
    UnsupportedVersion {
        /// The file name.
        file: String,
        /// The version in the file's header.
        found: u16,
        /// The version this build reads ([`SNAPSHOT_FORMAT_VERSION`]).
        supported: u16,
    },
    /// The name is not a snapshot file name.
    #[error("{file} is not a snapshot file name (snapshot-<20 digits>-<20 digits>.snap)")]
    InvalidName {
        /// The name that was given.
        file: String,
    },
    /// A length exceeds its bound; nothing of that size was allocated.
    #[error("{what} of {found} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large (`"snapshot configuration"`, `"announced snapshot file"`).
        what: &'static str,
        /// Its size in bytes.
        found: u64,
        /// The bound in bytes ([`MAX_CONFIGURATION_BYTES`] or
        /// [`SnapshotOptions::max_file_bytes`]).
        limit: u64,
    },
    /// A received chunk does not start where the previous one ended.
    #[error("snapshot chunk for {file} at offset {got}, expected offset {expected}")]
    UnexpectedOffset {
        /// The receiver's temp file name.
        file: String,
        /// Bytes received so far: the only offset accepted.
        expected: u64,
        /// The offset the chunk claimed.
        got: u64,
    },
    /// A received chunk goes past the announced total.
    #[error("snapshot chunk for {file} at offset {offset} of {len} bytes exceeds the announced {total_bytes} bytes")]
    ChunkBeyondTotal {
        /// The receiver's temp file name.
        file: String,
        /// Offset of the chunk in the file.
        offset: u64,
        /// Length of the chunk in bytes.
        len: u64,
        /// The file size announced to [`SnapshotStore::begin_receive`].
        total_bytes: u64,
    },
    /// `install` was called before every announced byte arrived.
    #[error("snapshot {file} incomplete: received {received_bytes} of {total_bytes} bytes")]
    Incomplete {
        /// The receiver's temp file name.
        file: String,
        /// Bytes received.
        received_bytes: u64,
        /// Bytes announced.
        total_bytes: u64,
    },
    /// A write into the snapshot failed earlier; the file cannot be finished.
    #[error("snapshot {file} cannot be finished: an earlier write failed")]
    WriteFailed {
        /// The writer's temp file name.
        file: String,
    },
    /// The newest snapshot is unusable and no older one can replace it.
    #[error("newest snapshot {file} is unusable ({cause}) and no older valid snapshot is covered by the log (WAL first index {wal_first_index})")]
    NoUsableSnapshot {
        /// The newest snapshot file.
        file: String,
        /// The first index of the log, as given to
        /// [`SnapshotStore::select_for_restart`]: an older snapshot at index `i` is
        /// usable only if `wal_first_index <= i + 1`.
        wal_first_index: u64,
        /// Why the newest snapshot does not verify.
        #[source]
        cause: Box<SnapshotError>,
    },
}

impl SnapshotError {
    fn io(operation: &'static str, file: &str, source: io::Error) -> Self {
        SnapshotError::Io {
            operation,
            file: file.to_string(),
            source,
        }
    }

    fn corrupt(file: &str, offset: u64, reason: impl Into<String>) -> Self {
        SnapshotError::Corrupt {
            file: file.to_string(),
            offset,
            reason: reason.into(),
        }
    }
}

/// Result alias of this module.
pub type SnapshotResult<T> = std::result::Result<T, SnapshotError>;

// ---------------------------------------------------------------------------------------
// Names and bytes (pure functions; the offline tools use them on mapped files)
// ---------------------------------------------------------------------------------------

/// The final file name of the snapshot at (`index`, `term`); names sort by index.
pub fn snapshot_file_name(index: u64, term: u64) -> String {
    format!("{NAME_PREFIX}{index:020}-{term:020}{SNAPSHOT_SUFFIX}")
}

/// Parses a final snapshot file name into (index, term).
pub fn parse_snapshot_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name
        .strip_prefix(NAME_PREFIX)?
        .strip_suffix(SNAPSHOT_SUFFIX)?;
    let (index, term) = stem.split_once('-')?;
    if index.len() != 20 || term.len() != 20 {
        return None;
    }
    if !index
        .bytes()
        .chain(term.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((index.parse().ok()?, term.parse().ok()?))
}

/// True for snapshot temp files (leftovers of an unfinished write or receive).
pub fn is_snapshot_temp_file_name(name: &str) -> bool {
    name.ends_with(SNAPSHOT_TEMP_SUFFIX)
}

/// The header bytes (fixed part + configuration) of `header`.
fn encode_header(header: &SnapshotHeader) -> SnapshotResult<Vec<u8>> {
    let config_len = header.configuration.len();
    if config_len > MAX_CONFIGURATION_BYTES {
        return Err(SnapshotError::TooLarge {
            what: "snapshot configuration",
            found: config_len as u64,
            limit: MAX_CONFIGURATION_BYTES as u64,
        });
    }
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_FIXED_BYTES + config_len);
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&((SNAPSHOT_HEADER_FIXED_BYTES + config_len) as u32).to_le_bytes());
    out.extend_from_slice(&header.index.to_le_bytes());
    out.extend_from_slice(&header.term.to_le_bytes());
    out.extend_from_slice(&(config_len as u32).to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&header.configuration);
    Ok(out)
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    let mut raw = [0u8; 2];
    raw.copy_from_slice(&bytes[at..at + 2]);
    u16::from_le_bytes(raw)
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// Where the parts of a snapshot file are, once its header and footer check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotLayout {
    /// The decoded header.
    pub header: SnapshotHeader,
    /// Offset of the first data byte (= header length).
    pub data_offset: u64,
    /// Number of data bytes.
    pub data_len_bytes: u64,
    /// The CRC-32 stored in the footer.
    pub stored_crc: u32,
}

/// Decodes the fixed header from the first bytes of a file of `file_len` bytes; returns
/// (index, term, configuration length). Checks everything the fixed part can tell.
fn parse_fixed_header(
    file: &str,
    fixed: &[u8],
    file_len: u64,
) -> SnapshotResult<(u64, u64, usize)> {
    let min_len = (SNAPSHOT_HEADER_FIXED_BYTES + SNAPSHOT_FOOTER_BYTES) as u64;
    if file_len < min_len || fixed.len() < SNAPSHOT_HEADER_FIXED_BYTES {
        return Err(SnapshotError::corrupt(
            file,
            file_len,
            format!("file of {file_len} bytes is shorter than the minimum {min_len}"),
        ));
    }
    if fixed[0..8] != SNAPSHOT_MAGIC {
        return Err(SnapshotError::corrupt(file, 0, "bad magic"));
    }
    let stored_crc = le_u32(fixed, 36);
    let computed = crc32fast::hash(&fixed[0..36]);
    if stored_crc != computed {
        return Err(SnapshotError::corrupt(
            file,
            36,
            format!(
                "header checksum mismatch: stored {stored_crc:#010x}, computed {computed:#010x}"
            ),
        ));
    }
    let version = le_u16(fixed, 8);
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedVersion {
            file: file.to_string(),
            found: version,
            supported: SNAPSHOT_FORMAT_VERSION,
        });
    }
    if le_u16(fixed, 10) != 0 {
        return Err(SnapshotError::corrupt(
            file,
            10,
            "reserved bytes are not zero",
        ));
    }
    let config_len = le_u32(fixed, 32) as usize;
    if config_len > MAX_CONFIGURATION_BYTES {
        return Err(SnapshotError::corrupt(
            file,
            32,
            format!("configuration length {config_len} exceeds {MAX_CONFIGURATION_BYTES}"),
        ));
    }
    let header_len = le_u32(fixed, 12) as usize;
    if header_len != SNAPSHOT_HEADER_FIXED_BYTES + config_len {
        return Err(SnapshotError::corrupt(
            file,
            12,
            format!("header length {header_len} does not match configuration length {config_len}"),
        ));
    }
    if (header_len + SNAPSHOT_FOOTER_BYTES) as u64 > file_len {
        return Err(SnapshotError::corrupt(
            file,
            file_len,
            format!("file of {file_len} bytes ends inside the header ({header_len} bytes)"),
        ));
    }
    Ok((le_u64(fixed, 16), le_u64(fixed, 24), config_len))
}

/// Checks the footer (`footer` = last [`SNAPSHOT_FOOTER_BYTES`] of a `file_len`-byte
/// file) against the header length; returns (data length, stored CRC).
fn parse_footer(
    file: &str,
    footer: &[u8],
    header_len: u64,
    file_len: u64,
) -> SnapshotResult<(u64, u32)> {
    let footer_offset = file_len - SNAPSHOT_FOOTER_BYTES as u64;
    if footer[12..16] != SNAPSHOT_END_MAGIC {
        return Err(SnapshotError::corrupt(
            file,
            footer_offset + 12,
            "bad end magic (torn or truncated file)",
        ));
    }
    let data_len = le_u64(footer, 0);
    let expected = footer_offset - header_len;
    if data_len != expected {
        return Err(SnapshotError::corrupt(
            file,
            footer_offset,
            format!("footer announces {data_len} data bytes, the file holds {expected}"),
        ));
    }
    Ok((data_len, le_u32(footer, 8)))
}

/// Parses header and footer of a whole file (no data checksum yet).
pub fn parse_layout(file: &str, bytes: &[u8]) -> SnapshotResult<SnapshotLayout> {
    let file_len = bytes.len() as u64;
    let fixed = &bytes[..bytes.len().min(SNAPSHOT_HEADER_FIXED_BYTES)];
    let (index, term, config_len) = parse_fixed_header(file, fixed, file_len)?;
    let header_len = SNAPSHOT_HEADER_FIXED_BYTES + config_len;
    let footer = &bytes[bytes.len() - SNAPSHOT_FOOTER_BYTES..];
    let (data_len, stored_crc) = parse_footer(file, footer, header_len as u64, file_len)?;
    let configuration = Bytes::copy_from_slice(&bytes[SNAPSHOT_HEADER_FIXED_BYTES..header_len]);
    Ok(SnapshotLayout {
        header: SnapshotHeader {
            index,
            term,
            configuration,
        },
        data_offset: header_len as u64,
        data_len_bytes: data_len,
        stored_crc,
    })
}

/// Fully verifies the bytes of a snapshot file called `file`: header, footer, CRC, and
/// (when `file` is a snapshot file name) that the name agrees with the header.
pub fn verify_bytes(file: &str, bytes: &[u8]) -> SnapshotResult<SnapshotLayout> {
    let layout = parse_layout(file, bytes)?;
    let crc_end = bytes.len() - SNAPSHOT_FOOTER_BYTES + 8;
    let computed = crc32fast::hash(&bytes[..crc_end]);
    if computed != layout.stored_crc {
        return Err(SnapshotError::corrupt(
            file,
            crc_end as u64,
            format!(
                "checksum mismatch: stored {:#010x}, computed {computed:#010x}",
                layout.stored_crc
            ),
        ));
    }
    check_name_agrees(file, &layout.header)?;
    Ok(layout)
}

fn check_name_agrees(file: &str, header: &SnapshotHeader) -> SnapshotResult<()> {
    match parse_snapshot_file_name(file) {
        Some((index, term)) if (index, term) != (header.index, header.term) => {
            Err(SnapshotError::corrupt(
                file,
                16,
                format!(
                    "header says index {} term {}, the name says index {index} term {term}",
                    header.index, header.term
                ),
            ))
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------

/// Tunables of a [`SnapshotStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// Bytes a writer buffers before one storage write (tests use tiny buffers to crash
    /// between writes).
    pub write_buffer_bytes: usize,
    /// Largest snapshot file a receiver accepts.
    pub max_file_bytes: u64,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

/// Shared by a store and the writers/receivers it hands out.
struct Shared<S> {
    storage: S,
    /// Set by the first failed fsync; never cleared (fail-stop).
    poisoned: AtomicBool,
    /// Makes temp file names unique within this store.
    next_temp_id: AtomicU64,
    write_buffer_bytes: usize,
    max_file_bytes: u64,
}

impl<S: Storage> Shared<S> {
    fn check_poison(&self) -> SnapshotResult<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(SnapshotError::Poisoned {
                detail: "an earlier fsync failed".to_string(),
            });
        }
        Ok(())
    }

    /// fsync of a file or the directory; a failure poisons the store.
    fn sync(&self, what: &'static str, file: &str, result: io::Result<()>) -> SnapshotResult<()> {
        result.map_err(|e| {
            self.poisoned.store(true, Ordering::Release);
            SnapshotError::Poisoned {
                detail: format!("{what} of {file} failed: {e}"),
            }
        })
    }

    fn sync_dir(&self) -> SnapshotResult<()> {
        let dir = self.storage.describe();
        self.sync("directory fsync", &dir, self.storage.sync_dir())
    }

    /// Creates a new temp file named `<stem>-<n>.snap.tmp`.
    fn create_temp(&self, stem: &str) -> SnapshotResult<(String, Arc<dyn StorageFile>)> {
        loop {
            let id = self.next_temp_id.fetch_add(1, Ordering::Relaxed);
            let name = format!("{stem}-{id}{SNAPSHOT_TEMP_SUFFIX}");
            match self.storage.create(&name) {
                Ok(file) => return Ok((name, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(SnapshotError::io("create", &name, e)),
            }
        }
    }

    /// fsync the temp file, rename it to `final_name`, fsync the directory.
    fn publish(&self, file: &dyn StorageFile, temp: &str, final_name: &str) -> SnapshotResult<()> {
        self.check_poison()?;
        self.sync("fsync", temp, file.sync_data())?;
        self.storage
            .rename(temp, final_name)
            .map_err(|e| SnapshotError::io("rename", temp, e))?;
        self.sync_dir()
    }
}

/// The snapshot files of one node directory. Cloning is cheap and yields another handle
/// to the same store (for a background snapshot thread); the poison flag is shared.
///
/// # Example
///
/// Write a snapshot, find it again as a restarting node would, and restore its data:
///
/// ```
/// use std::io::{Read, Write};
///
/// use bytes::Bytes;
/// use tally_wal::{FsStorage, SnapshotHeader, SnapshotStore};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = SnapshotStore::new(FsStorage::new(dir.path())?)?;
///
/// // The state machine as of log index 42 (term 3); the configuration is opaque here.
/// let header = SnapshotHeader {
///     index: 42,
///     term: 3,
///     configuration: Bytes::from_static(b"voters=1,2,3"),
/// };
/// let mut writer = store.begin(&header)?;
/// writer.write_all(b"x=1;y=2")?;
/// let info = writer.finish()?; // fsynced, renamed, directory fsynced: now listed
/// assert_eq!((info.index, info.term), (42, 3));
///
/// // A log that starts at index 43 continues right after the snapshot.
/// let chosen = store.select_for_restart(43)?.expect("one snapshot exists");
/// assert_eq!(chosen.name, info.name);
/// let mut reader = store.open(&chosen.name)?;
/// assert_eq!(reader.header(), &header);
/// let mut data = Vec::new();
/// reader.read_to_end(&mut data)?; // fails instead of ending if the CRC is wrong
/// assert_eq!(data, b"x=1;y=2");
/// # Ok(())
/// # }
/// ```
pub struct SnapshotStore<S: Storage> {
    shared: Arc<Shared<S>>,
}

impl<S: Storage> Clone for SnapshotStore<S> {
    fn clone(&self) -> Self {
        SnapshotStore {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: Storage> SnapshotStore<S> {
    /// Opens the store over `storage` with default options (see [`Self::new_with`]).
    pub fn new(storage: S) -> SnapshotResult<Self> {
        Self::new_with(storage, SnapshotOptions::default())
    }

    /// Opens the store over `storage`, deleting leftover temp files (and fsyncing the
    /// directory if it deleted any).
    pub fn new_with(storage: S, options: SnapshotOptions) -> SnapshotResult<Self> {
        let dir = storage.describe();
        let names = storage
            .list()
            .map_err(|e| SnapshotError::io("list", &dir, e))?;
        let mut removed = false;
        for name in names.iter().filter(|n| is_snapshot_temp_file_name(n)) {
            storage
                .remove(name)
                .map_err(|e| SnapshotError::io("remove", name, e))?;
            removed = true;
        }
        let store = SnapshotStore {
            shared: Arc::new(Shared {
                storage,
                poisoned: AtomicBool::new(false),
                next_temp_id: AtomicU64::new(0),
                write_buffer_bytes: options.write_buffer_bytes.max(1),
                max_file_bytes: options.max_file_bytes,
            }),
        };
        if removed {
            store.shared.sync_dir()?;
        }
        Ok(store)
    }

    /// The directory, for messages.
    pub fn describe(&self) -> String {
        self.shared.storage.describe()
    }

    /// Complete snapshot files, newest (highest index, then term) first.
    pub fn list(&self) -> SnapshotResult<Vec<SnapshotInfo>> {
        let storage = &self.shared.storage;
        let dir = storage.describe();
        let names = storage
            .list()
            .map_err(|e| SnapshotError::io("list", &dir, e))?;
        let mut infos = Vec::new();
        for name in names {
            let Some((index, term)) = parse_snapshot_file_name(&name) else {
                continue;
            };
            let file = storage
                .open(&name)
                .map_err(|e| SnapshotError::io("open", &name, e))?;
            let size_bytes = file
                .len_bytes()
                .map_err(|e| SnapshotError::io("stat", &name, e))?;
            infos.push(SnapshotInfo {
                name,
                index,
                term,
                size_bytes,
            });
        }
        infos.sort_by_key(|i| std::cmp::Reverse((i.index, i.term)));
        Ok(infos)
    }

    /// Starts writing the snapshot described by `header` into a temp file; write the
    /// state machine's bytes through [`Write`], then call [`SnapshotWriter::finish`].
    ///
    /// # Errors
    ///
    /// [`SnapshotError::TooLarge`] if the configuration exceeds
    /// [`MAX_CONFIGURATION_BYTES`], [`SnapshotError::Poisoned`] after a failed fsync,
    /// [`SnapshotError::Io`] if the temp file cannot be created.
    pub fn begin(&self, header: &SnapshotHeader) -> SnapshotResult<SnapshotWriter<S>> {
        self.shared.check_poison()?;
        let encoded = encode_header(header)?;
        let final_name = snapshot_file_name(header.index, header.term);
        let stem = final_name.trim_end_matches(SNAPSHOT_SUFFIX).to_string();
        let (temp_name, file) = self.shared.create_temp(&stem)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&encoded);
        let capacity = self.shared.write_buffer_bytes;
        let mut buffer = Vec::with_capacity(capacity.max(encoded.len()));
        buffer.extend_from_slice(&encoded);
        Ok(SnapshotWriter {
            shared: Arc::clone(&self.shared),
            file,
            temp_name,
            final_name,
            index: header.index,
            term: header.term,
            buffer,
            written_bytes: 0,
            data_len_bytes: 0,
            hasher,
            written_back_to: 0,
            writeback_started_to: 0,
            failed: false,
            finished: false,
        })
    }

    /// Deletes every snapshot file but the newest `keep`; returns the deleted names.
    pub fn retain_newest(&self, keep: usize) -> SnapshotResult<Vec<String>> {
        self.shared.check_poison()?;
        let doomed: Vec<String> = self
            .list()?
            .into_iter()
            .skip(keep)
            .map(|i| i.name)
            .collect();
        for name in &doomed {
            self.shared
                .storage
                .remove(name)
                .map_err(|e| SnapshotError::io("remove", name, e))?;
        }
        if !doomed.is_empty() {
            self.shared.sync_dir()?;
        }
        Ok(doomed)
    }

    /// `from_device`: evict the file's cached pages first, so what is verified or
    /// restored is what the disk holds (see `StorageFile::evict_cache`).
    fn view(&self, name: &str, from_device: bool) -> SnapshotResult<FileView> {
        if parse_snapshot_file_name(name).is_none() {
            return Err(SnapshotError::InvalidName {
                file: name.to_string(),
            });
        }
        let file = self
            .shared
            .storage
            .open(name)
            .map_err(|e| SnapshotError::io("open", name, e))?;
        if from_device {
            file.evict_cache()
                .map_err(|e| SnapshotError::io("evict cached pages", name, e))?;
        }
        file.view().map_err(|e| SnapshotError::io("map", name, e))
    }

    /// Full check of one snapshot file, as the device holds it (cached pages are evicted
    /// first); returns its header.
    ///
    /// # Errors
    ///
    /// [`SnapshotError::InvalidName`] for a name that is not a final snapshot name,
    /// [`SnapshotError::Corrupt`] or [`SnapshotError::UnsupportedVersion`] for bad bytes,
    /// [`SnapshotError::Io`] if the file cannot be opened or mapped.
    pub fn verify(&self, name: &str) -> SnapshotResult<SnapshotHeader> {
        let view = self.view(name, true)?;
        Ok(verify_bytes(name, &view)?.header)
    }

    /// Opens a snapshot for restoring: its header and a [`Read`] over its data bytes that
    /// fails instead of delivering the last byte if the checksum does not match.
    /// Errors as [`verify`](Self::verify), except that the data checksum is checked by the
    /// reader, at the end of the data.
    pub fn open(&self, name: &str) -> SnapshotResult<SnapshotReader> {
        let view = self.view(name, true)?;
        let layout = parse_layout(name, &view)?;
        check_name_agrees(name, &layout.header)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&view[..layout.data_offset as usize]);
        Ok(SnapshotReader {
            name: name.to_string(),
            position: layout.data_offset as usize,
            data_end: (layout.data_offset + layout.data_len_bytes) as usize,
            stored_crc: layout.stored_crc,
            header: layout.header,
            hasher,
            hashed_through: layout.data_offset as usize,
            view,
            verdict: None,
        })
    }

    /// The whole file (a read-only memory map on real files), for sending in chunks.
    pub fn file_bytes(&self, name: &str) -> SnapshotResult<Bytes> {
        Ok(match self.view(name, false)? {
            FileView::Mapped(map) => Bytes::from_owner(map),
            FileView::Owned(bytes) => bytes,
        })
    }

    /// Starts receiving a snapshot file of `total_bytes` bytes (a leader's InstallSnapshot).
    pub fn begin_receive(&self, total_bytes: u64) -> SnapshotResult<SnapshotReceiver<S>> {
        self.shared.check_poison()?;
        let min = (SNAPSHOT_HEADER_FIXED_BYTES + SNAPSHOT_FOOTER_BYTES) as u64;
        if total_bytes > self.shared.max_file_bytes {
            return Err(SnapshotError::TooLarge {
                what: "announced snapshot file",
                found: total_bytes,
                limit: self.shared.max_file_bytes,
            });
        }
        if total_bytes < min {
            return Err(SnapshotError::corrupt(
                "received snapshot",
                0,
                format!("announced size {total_bytes} is below the minimum {min}"),
            ));
        }
        let (temp_name, file) = self.shared.create_temp("receive")?;
        Ok(SnapshotReceiver {
            shared: Arc::clone(&self.shared),
            file,
            temp_name,
            total_bytes,
            received_bytes: 0,
            done: false,
        })
    }

    /// The snapshot a restarting node should restore: the newest that verifies, or an
    /// older valid one when the newest is corrupt and the log (starting at
    /// `wal_first_index`) still covers everything after the older one. `None` only
    /// when there is no snapshot file at all.
    pub fn select_for_restart(&self, wal_first_index: u64) -> SnapshotResult<Option<SnapshotInfo>> {
        let infos = self.list()?;
        let mut first_failure: Option<(String, SnapshotError)> = None;
        for info in infos {
            match self.verify(&info.name) {
                Ok(_) if first_failure.is_none() => return Ok(Some(info)),
                Ok(_) if wal_first_index <= info.index.saturating_add(1) => {
                    if let Some((file, cause)) = &first_failure {
                        tracing::warn!(corrupt = %file, %cause, fallback = %info.name,
                            "newest snapshot is corrupt; restoring an older one the log covers");
                    }
                    return Ok(Some(info));
                }
                Ok(_) => break,
                Err(e @ SnapshotError::Io { .. }) => return Err(e),
                Err(e) => {
                    if first_failure.is_none() {
                        first_failure = Some((info.name.clone(), e));
                    }
                }
            }
        }
        match first_failure {
            None => Ok(None),
            Some((file, cause)) => Err(SnapshotError::NoUsableSnapshot {
                file,
                wal_first_index,
                cause: Box::new(cause),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// Streams one snapshot into a temp file; [`SnapshotWriter::finish`] makes it visible.
/// Dropping an unfinished writer deletes the temp file.
pub struct SnapshotWriter<S: Storage> {
    shared: Arc<Shared<S>>,
    file: Arc<dyn StorageFile>,
    temp_name: String,
    final_name: String,
    index: u64,
    term: u64,
    /// Bytes not yet written to the file (starts with the header).
    buffer: Vec<u8>,
    /// Bytes already written to the file; the buffer goes at this offset.
    written_bytes: u64,
    /// State-machine bytes accepted through `Write` so far.
    data_len_bytes: u64,
    /// CRC-32 of header + every data byte accepted so far.
    hasher: crc32fast::Hasher,
    /// Invariant: `written_back_to <= writeback_started_to <= written_bytes`. Bytes below
    /// `written_back_to` were written to the device (and their cached pages released);
    /// the range up to `writeback_started_to` is being written (`pace_writeback`).
    written_back_to: u64,
    writeback_started_to: u64,
    /// A storage write failed: `finish` refuses.
    failed: bool,
    finished: bool,
}

impl<S: Storage> SnapshotWriter<S> {
    /// The temp file's name (tests and logs).
    pub fn temp_name(&self) -> &str {
        &self.temp_name
    }

    fn flush_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if self.failed {
            return Err(io::Error::other("an earlier snapshot write failed"));
        }
        if let Err(e) = self.file.write_all_at(&[&self.buffer], self.written_bytes) {
            self.failed = true;
            return Err(e);
        }
        self.written_bytes += self.buffer.len() as u64;
        self.buffer.clear();
        self.pace_writeback()
    }

    /// Once [`WRITEBACK_CHUNK_BYTES`] were written since the last range was started, waits
    /// for that range to reach the device (releasing its cached pages) and starts the
    /// next one: at most one chunk of this snapshot is queued at the device at a time, so
    /// a WAL fdatasync on the same disk waits behind at most that much, and the final
    /// fsync has little left to write. (Without this, hundreds of MiB stayed dirty until
    /// the final fsync and the WAL's p99 went to 150 ms: docs/BENCHMARKS.md.)
    fn pace_writeback(&mut self) -> io::Result<()> {
        if self.written_bytes - self.writeback_started_to < WRITEBACK_CHUNK_BYTES {
            return Ok(());
        }
        let result = self.wait_and_start_writeback();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn wait_and_start_writeback(&mut self) -> io::Result<()> {
        let pending = self.writeback_started_to - self.written_back_to;
        if pending > 0 {
            self.file.write_back(self.written_back_to, pending, true)?;
            // A hint: the pages were written, nothing is lost if they stay cached.
            let _ = self.file.release_cache(self.written_back_to, pending);
            self.written_back_to = self.writeback_started_to;
        }
        let start = self.writeback_started_to;
        self.file
            .write_back(start, self.written_bytes - start, false)?;
        self.writeback_started_to = self.written_bytes;
        Ok(())
    }

    /// Writes the footer, fsyncs the file, renames it to its final name and fsyncs the
    /// directory. Only after this returns is the snapshot listed.
    ///
    /// # Errors
    ///
    /// [`SnapshotError::WriteFailed`] if an earlier [`Write`] call failed,
    /// [`SnapshotError::Poisoned`] if an fsync fails (now or before),
    /// [`SnapshotError::Io`] if the last write or the rename fails.
    pub fn finish(self) -> SnapshotResult<SnapshotInfo> {
        self.finish_with_file_crc32().map(|(info, _)| info)
    }

    /// [`finish`](Self::finish), also returning the CRC-32 of the whole file, header to
    /// end magic: the checksum a leader sends followers the file under, known here without
    /// reading the file back.
    ///
    /// # Errors
    ///
    /// As [`finish`](Self::finish).
    pub fn finish_with_file_crc32(mut self) -> SnapshotResult<(SnapshotInfo, u32)> {
        if self.failed {
            return Err(SnapshotError::WriteFailed {
                file: self.temp_name.clone(),
            });
        }
        self.shared.check_poison()?;
        let data_len = self.data_len_bytes.to_le_bytes();
        self.hasher.update(&data_len);
        let crc = self.hasher.clone().finalize();
        // Everything before the footer's CRC field is in `hasher` already.
        self.hasher.update(&crc.to_le_bytes());
        self.hasher.update(&SNAPSHOT_END_MAGIC);
        let file_crc32 = self.hasher.clone().finalize();
        self.buffer.extend_from_slice(&data_len);
        self.buffer.extend_from_slice(&crc.to_le_bytes());
        self.buffer.extend_from_slice(&SNAPSHOT_END_MAGIC);
        self.flush_buffer()
            .map_err(|e| SnapshotError::io("write", &self.temp_name, e))?;
        self.shared
            .publish(self.file.as_ref(), &self.temp_name, &self.final_name)?;
        self.finished = true;
        let info = SnapshotInfo {
            name: self.final_name.clone(),
            index: self.index,
            term: self.term,
            size_bytes: self.written_bytes,
        };
        Ok((info, file_crc32))
    }
}

impl<S: Storage> Write for SnapshotWriter<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("an earlier snapshot write failed"));
        }
        let capacity = self.shared.write_buffer_bytes;
        if self.buffer.is_empty() && buf.len() >= capacity {
            // A large write goes straight to the file (no copy through the buffer).
            if let Err(e) = self.file.write_all_at(&[buf], self.written_bytes) {
                self.failed = true;
                return Err(e);
            }
            self.written_bytes += buf.len() as u64;
            self.hasher.update(buf);
            self.data_len_bytes += buf.len() as u64;
            self.pace_writeback()?;
            return Ok(buf.len());
        }
        let room = capacity.saturating_sub(self.buffer.len());
        if room == 0 {
            self.flush_buffer()?;
            return self.write(buf);
        }
        let n = room.min(buf.len());
        self.buffer.extend_from_slice(&buf[..n]);
        self.hasher.update(&buf[..n]);
        self.data_len_bytes += n as u64;
        Ok(n)
    }

    /// Writes the buffered bytes to the file (no fsync; `finish` does that).
    fn flush(&mut self) -> io::Result<()> {
        self.flush_buffer()
    }
}

impl<S: Storage> Drop for SnapshotWriter<S> {
    fn drop(&mut self) {
        if !self.finished {
            // Best effort: a leftover temp file is deleted by the next `SnapshotStore::new` anyway.
            let _ = self.shared.storage.remove(&self.temp_name);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

/// The data bytes of one snapshot file, checked against the footer CRC before the last
/// byte is handed out: on a mismatch, the [`Read`] call that would return the last bytes
/// fails with [`io::ErrorKind::InvalidData`] (wrapping a [`SnapshotError::Corrupt`]).
pub struct SnapshotReader {
    name: String,
    header: SnapshotHeader,
    view: FileView,
    /// Next byte to hand out. Invariant: `position <= data_end <= view.len()`.
    position: usize,
    data_end: usize,
    stored_crc: u32,
    /// CRC of everything before `hashed_through`. Invariant: `hashed_through <=
    /// position`, and `position - hashed_through < READ_HASH_CHUNK_BYTES` unless
    /// `position == data_end`, where all is hashed before the last byte is handed out.
    /// Hashing in large pieces: a CRC update per small read (a state machine reads
    /// field by field) cost more than the copy.
    hasher: crc32fast::Hasher,
    hashed_through: usize,
    /// Set once the checksum was checked (at the end of the data).
    verdict: Option<bool>,
}

impl SnapshotReader {
    /// The snapshot's header.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// The file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of data bytes (the state machine's stream).
    pub fn data_len_bytes(&self) -> u64 {
        (self.data_end - SNAPSHOT_HEADER_FIXED_BYTES - self.header.configuration.len()) as u64
    }

    fn checksum_error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            SnapshotError::corrupt(
                &self.name,
                self.data_end as u64 + 8,
                "checksum mismatch: the snapshot data is damaged",
            ),
        )
    }

    /// Checks the CRC once all data bytes are hashed.
    fn check_end(&mut self) -> io::Result<()> {
        let ok = *self.verdict.get_or_insert_with(|| {
            let mut hasher = self.hasher.clone();
            hasher.update(&self.view[self.data_end..self.data_end + 8]);
            hasher.finalize() == self.stored_crc
        });
        if ok {
            Ok(())
        } else {
            Err(self.checksum_error())
        }
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.data_end - self.position);
        if n == 0 {
            return if buf.is_empty() {
                Ok(0)
            } else {
                self.check_end().map(|()| 0)
            };
        }
        let range = self.position..self.position + n;
        if range.end == self.data_end || range.end - self.hashed_through >= READ_HASH_CHUNK_BYTES {
            self.hasher
                .update(&self.view[self.hashed_through..range.end]);
            self.hashed_through = range.end;
        }
        if range.end == self.data_end {
            self.check_end()?;
        }
        buf[..n].copy_from_slice(&self.view[range]);
        self.position += n;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------
// Receiving
// ---------------------------------------------------------------------------------------

/// Collects a snapshot file sent in chunks; [`SnapshotReceiver::install`] verifies and
/// publishes it. Dropping an uninstalled receiver deletes the temp file.
pub struct SnapshotReceiver<S: Storage> {
    shared: Arc<Shared<S>>,
    file: Arc<dyn StorageFile>,
    temp_name: String,
    /// Announced file size. Invariant: `received_bytes <= total_bytes`.
    total_bytes: u64,
    received_bytes: u64,
    /// Installed, or failed and cleaned up.
    done: bool,
}

impl<S: Storage> SnapshotReceiver<S> {
    /// Bytes received so far (the offset the next chunk must start at).
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes
    }

    /// The announced size.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The temp file's name (tests and logs).
    pub fn temp_name(&self) -> &str {
        &self.temp_name
    }

    /// Appends the chunk that starts at `offset` (must equal [`Self::received_bytes`]).
    ///
    /// # Errors
    ///
    /// [`SnapshotError::UnexpectedOffset`] for any other offset,
    /// [`SnapshotError::ChunkBeyondTotal`] if the chunk runs past the announced size
    /// (nothing is written in either case), [`SnapshotError::Poisoned`] after a failed
    /// fsync, [`SnapshotError::Io`] if the write fails.
    pub fn append(&mut self, offset: u64, data: &[u8]) -> SnapshotResult<()> {
        self.shared.check_poison()?;
        if offset != self.received_bytes {
            return Err(SnapshotError::UnexpectedOffset {
                file: self.temp_name.clone(),
                expected: self.received_bytes,
                got: offset,
            });
        }
        let len = data.len() as u64;
        if len > self.total_bytes - self.received_bytes {
            return Err(SnapshotError::ChunkBeyondTotal {
                file: self.temp_name.clone(),
                offset,
                len,
                total_bytes: self.total_bytes,
            });
        }
        self.file
            .write_all_at(&[data], offset)
            .map_err(|e| SnapshotError::io("write", &self.temp_name, e))?;
        self.received_bytes += len;
        Ok(())
    }

    /// Verifies the received file (header, footer, CRC), fsyncs it, renames it to its
    /// final name and fsyncs the directory. On a verification failure the temp file is
    /// deleted (nothing was fsynced for it).
    ///
    /// # Errors
    ///
    /// [`SnapshotError::Incomplete`] before every announced byte arrived,
    /// [`SnapshotError::Corrupt`] or [`SnapshotError::UnsupportedVersion`] if the bytes do
    /// not verify, [`SnapshotError::Poisoned`] if an fsync fails (now or before).
    pub fn install(mut self) -> SnapshotResult<SnapshotInfo> {
        self.shared.check_poison()?;
        if self.received_bytes != self.total_bytes {
            return Err(SnapshotError::Incomplete {
                file: self.temp_name.clone(),
                received_bytes: self.received_bytes,
                total_bytes: self.total_bytes,
            });
        }
        let view = self
            .file
            .view()
            .map_err(|e| SnapshotError::io("map", &self.temp_name, e))?;
        let header = verify_bytes(&self.temp_name, &view)?.header;
        drop(view);
        let final_name = snapshot_file_name(header.index, header.term);
        self.shared
            .publish(self.file.as_ref(), &self.temp_name, &final_name)?;
        self.done = true;
        Ok(SnapshotInfo {
            name: final_name,
            index: header.index,
            term: header.term,
            size_bytes: self.total_bytes,
        })
    }
}

impl<S: Storage> Drop for SnapshotReceiver<S> {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: a leftover temp file is deleted by the next `SnapshotStore::new` anyway.
            let _ = self.shared.storage.remove(&self.temp_name);
        }
    }
}
