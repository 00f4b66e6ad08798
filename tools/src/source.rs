//! Opening a WAL directory for inspection: read-only, lock-free, memory-mapped.
//!
//! The inspector must be safe on a directory a live server is using, so it never takes
//! the directory lock, opens every file read-only and maps it read-only. It reads what
//! the file system returns: on a live directory the active segment's tail may hold bytes
//! written but not yet fsynced (or a batch being written), which shows up as a torn tail
//! exactly as recovery would see it if the machine crashed at that instant.

use std::fs::File;
use std::path::{Path, PathBuf};

use tally_wal::format::{parse_segment_file_name, SEGMENT_MAGIC};
use tally_wal::inspect::{self, find_valid_batch_in, ScanReport, ScanVisitor, SegmentBytes};

use crate::error::ToolError;
use crate::progress::Progress;

/// A mapped segment file.
enum Contents {
    Mapped(memmap2::Mmap),
    /// Zero-length files cannot be mapped.
    Empty,
}

impl Contents {
    fn bytes(&self) -> &[u8] {
        match self {
            Contents::Mapped(map) => map,
            Contents::Empty => &[],
        }
    }
}

/// The segment files of one WAL directory, mapped read-only.
pub struct WalDir {
    /// The directory as the user named it (printed in messages; never canonicalized so
    /// output does not depend on where the directory lives).
    pub display: String,
    pub path: PathBuf,
    /// Segment-named files, in directory order (the scanner orders them).
    files: Vec<(String, Contents)>,
}

impl WalDir {
    /// Opens `path` read-only. Fails (exit 2) if it is missing, not a directory,
    /// unreadable, holds no segment files, or holds a segment-named file that is not a
    /// Tally segment at all.
    pub fn open(path: &Path) -> Result<WalDir, ToolError> {
        let display = path.display().to_string();
        let metadata = std::fs::metadata(path).map_err(|source| ToolError::Unreadable {
            path: display.clone(),
            source,
        })?;
        if !metadata.is_dir() {
            return Err(ToolError::NotADirectory { path: display });
        }
        let mut names = Vec::new();
        let entries = std::fs::read_dir(path).map_err(|source| ToolError::Unreadable {
            path: display.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| ToolError::Unreadable {
                path: display.clone(),
                source,
            })?;
            if let Some(name) = entry.file_name().to_str() {
                if parse_segment_file_name(name).is_some() {
                    names.push(name.to_string());
                }
            }
        }
        if names.is_empty() {
            return Err(ToolError::NotAWal {
                path: display,
                reason: "no segment files (named <20-digit id>-<20-digit first index>.wal)".into(),
            });
        }
        names.sort();
        let mut files = Vec::with_capacity(names.len());
        for name in names {
            let file_path = path.join(&name);
            let unreadable = |source| ToolError::Unreadable {
                path: format!("{display}/{name}"),
                source,
            };
            let file = File::open(&file_path).map_err(unreadable)?;
            let len = file.metadata().map_err(unreadable)?.len();
            let contents = if len == 0 {
                Contents::Empty
            } else {
                // SAFETY: the map is read-only and private to this process. A live server
                // may write into the segment while we read it (appends into preallocated
                // space; recovery zeroing a torn tail), so bytes can change under the
                // slice: every reader here treats the bytes as untrusted input (lengths
                // are bounded, CRCs checked), so a concurrent change yields a torn-tail
                // verdict, never unsafety in our code. Tally never shrinks a segment file
                // (removal unlinks it, which keeps the mapping valid), so no access can
                // fault past the end of the file.
                let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(unreadable)?;
                // Readahead hint only; failure is harmless.
                let _ = map.advise(memmap2::Advice::Sequential);
                Contents::Mapped(map)
            };
            files.push((name, contents));
        }
        let dir = WalDir {
            display,
            path: path.to_path_buf(),
            files,
        };
        dir.reject_foreign_files()?;
        Ok(dir)
    }

    /// A segment-named file that starts with neither the segment magic nor zeros (a torn
    /// header write leaves zeros) and holds no valid batch of its segment id anywhere is
    /// not a damaged Tally segment but a foreign file: refuse to judge it (exit 2)
    /// instead of calling it a torn tail. A flipped bit in a real header still leaves
    /// valid batches behind it, so that case stays a corruption verdict.
    fn reject_foreign_files(&self) -> Result<(), ToolError> {
        for (name, contents) in &self.files {
            let bytes = contents.bytes();
            let Some(head) = bytes.get(..SEGMENT_MAGIC.len()) else {
                continue;
            };
            if head == SEGMENT_MAGIC || head.iter().all(|&b| b == 0) {
                continue;
            }
            let Some((segment_id, _)) = parse_segment_file_name(name) else {
                continue;
            };
            if find_valid_batch_in(segment_id, bytes, 0).is_none() {
                return Err(ToolError::NotAWal {
                    path: format!("{}/{name}", self.display),
                    reason: "not a Tally segment (no segment magic, no valid batch)".into(),
                });
            }
        }
        Ok(())
    }

    /// The files as scanner input.
    pub fn inputs(&self) -> Vec<SegmentBytes<'_>> {
        self.files
            .iter()
            .map(|(name, contents)| SegmentBytes {
                name,
                bytes: contents.bytes(),
            })
            .collect()
    }

    /// Total bytes of the segment files.
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|(_, contents)| contents.bytes().len() as u64)
            .sum()
    }

    /// Scans the directory with recovery's rules, feeding `visitor`, with a progress bar
    /// on a terminal.
    pub fn scan(&self, visitor: &mut dyn ScanVisitor) -> Result<ScanReport, ToolError> {
        let inputs = self.inputs();
        let mut progress = Progress::new(&self.display, self.total_bytes(), &inputs);
        let scanned = inspect::scan(&inputs, &mut progress.wrap(visitor));
        progress.finish();
        let report = scanned.map_err(|err| ToolError::NotAWal {
            path: self.display.clone(),
            reason: err.to_string(),
        })?;
        Ok(report)
    }
}
