//! The snapshot files of a node directory, found and checked read-only.
//!
//! Snapshot files live next to the WAL segments (`--dir` holds everything). The store in
//! `tally_wal::snapshot` deletes temp files when it opens, so the inspector does not use
//! it: it lists and maps the files itself, read-only and without the lock, and checks
//! them with the same pure functions the store uses (`verify_bytes`), so its verdict is
//! the store's.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use tally_wal::snapshot::{
    is_snapshot_temp_file_name, parse_snapshot_file_name, verify_bytes, SnapshotLayout,
};

use crate::error::ToolError;

/// A read-only view of a whole file.
pub enum FileBytes {
    Mapped(memmap2::Mmap),
    /// Zero-length files cannot be mapped.
    Empty,
}

impl FileBytes {
    pub fn bytes(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(map) => map,
            FileBytes::Empty => &[],
        }
    }
}

/// Maps `path` read-only.
pub fn map_file(path: &Path, display: &str) -> Result<FileBytes, ToolError> {
    let unreadable = |source| ToolError::Unreadable {
        path: display.to_string(),
        source,
    };
    let file = File::open(path).map_err(unreadable)?;
    let metadata = file.metadata().map_err(unreadable)?;
    if !metadata.is_file() {
        return Err(ToolError::Usage(format!("{display}: not a regular file")));
    }
    if metadata.len() == 0 {
        return Ok(FileBytes::Empty);
    }
    // SAFETY: read-only private map. Snapshot files are never written after they get
    // their final name (the store writes temp files and renames them), and are only
    // removed by unlinking, which keeps the mapping valid; every byte is treated as
    // untrusted input (lengths bounded, CRC checked).
    let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(unreadable)?;
    Ok(FileBytes::Mapped(map))
}

/// One snapshot file and what checking it found.
pub struct SnapshotFile {
    pub name: String,
    /// From the file name.
    pub index: u64,
    pub term: u64,
    pub size_bytes: u64,
    /// The layout if the file verifies, else why not.
    pub check: Result<SnapshotLayout, String>,
}

/// Every snapshot file of a directory (newest first) and leftover temp files.
pub struct DirSnapshots {
    pub files: Vec<SnapshotFile>,
    /// (name, size in bytes) of `*.snap.tmp` files.
    pub temp_files: Vec<(String, u64)>,
}

impl DirSnapshots {
    /// Lists and verifies the snapshot files of `dir`.
    pub fn scan(dir: &Path, display: &str) -> Result<DirSnapshots, ToolError> {
        let entries = std::fs::read_dir(dir).map_err(|source| ToolError::Unreadable {
            path: display.to_string(),
            source,
        })?;
        let mut files = Vec::new();
        let mut temp_files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ToolError::Unreadable {
                path: display.to_string(),
                source,
            })?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let shown = format!("{display}/{name}");
            if is_snapshot_temp_file_name(&name) {
                let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
                temp_files.push((name, len));
            } else if let Some((index, term)) = parse_snapshot_file_name(&name) {
                let bytes = map_file(&entry.path(), &shown)?;
                let check = verify_bytes(&name, bytes.bytes()).map_err(|e| e.to_string());
                files.push(SnapshotFile {
                    size_bytes: bytes.bytes().len() as u64,
                    name,
                    index,
                    term,
                    check,
                });
            }
        }
        files.sort_by_key(|f| std::cmp::Reverse((f.index, f.term)));
        temp_files.sort();
        Ok(DirSnapshots { files, temp_files })
    }

    pub fn all_valid(&self) -> bool {
        self.files.iter().all(|f| f.check.is_ok())
    }

    /// What a restart with a log starting at `wal_first_index` would restore, by the
    /// rules of `SnapshotStore::select_for_restart`: `Ok(None)` without snapshot files.
    pub fn restart_choice(&self, wal_first_index: u64) -> Result<Option<&SnapshotFile>, String> {
        let Some(newest) = self.files.first() else {
            return Ok(None);
        };
        if newest.check.is_ok() {
            return Ok(Some(newest));
        }
        let fallback = self.files.iter().find(|f| f.check.is_ok());
        match fallback {
            Some(older) if wal_first_index <= older.index.saturating_add(1) => Ok(Some(older)),
            Some(older) => Err(format!(
                "newest snapshot {} is corrupt and the log (first index {wal_first_index}) does not cover the gap after {} (index {})",
                newest.name, older.name, older.index
            )),
            None => Err(format!(
                "newest snapshot {} is corrupt and no older valid snapshot exists",
                newest.name
            )),
        }
    }

    /// The `info` section: a table of snapshot files and any temp files.
    pub fn write_table(&self, out: &mut dyn Write) -> Result<(), ToolError> {
        if self.files.is_empty() {
            writeln!(out, "snapshots: none")?;
        } else {
            writeln!(out, "snapshots: {}", self.files.len())?;
            let width = self.files.iter().map(|f| f.name.len()).max().unwrap_or(0);
            writeln!(
                out,
                "  {:<width$} {:>10} {:>6} {:>12}  state",
                "name", "index", "term", "size_bytes"
            )?;
            for file in &self.files {
                let state = match &file.check {
                    Ok(_) => "valid".to_string(),
                    Err(reason) => format!("INVALID: {reason}"),
                };
                writeln!(
                    out,
                    "  {:<width$} {:>10} {:>6} {:>12}  {state}",
                    file.name, file.index, file.term, file.size_bytes
                )?;
            }
        }
        for (name, len) in &self.temp_files {
            writeln!(
                out,
                "snapshot temp file: {name} ({len} bytes; an unfinished snapshot, deleted when the node starts)"
            )?;
        }
        Ok(())
    }
}
