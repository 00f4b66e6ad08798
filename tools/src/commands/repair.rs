//! `tally-wal repair DIR [--yes]`: does offline what recovery would do to a torn tail,
//! after backing up every byte it changes, and nothing else.
//!
//! Order of operations (each step durable before the next one starts, so a crash at any
//! point leaves either the original files or the backups plus a log recovery accepts):
//! 1. take the WAL directory lock (refuse if a server holds it), then scan;
//! 2. refuse unless the verdict is a torn tail (never touches corruption in the middle);
//! 3. copy the bytes to be zeroed into `<segment>.repair-<offset>.bak` next to the
//!    segment, fsync each backup, fsync the directory;
//! 4. zero those bytes in place, fsync the segment;
//! 5. rename each segment to be removed to `<segment>.removed.bak` (a name recovery
//!    ignores), fsync the directory;
//! 6. scan again and report.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tally_wal::inspect::{NoVisitor, TailAction, Verdict};
use tally_wal::{FsStorage, Storage};

use crate::error::{Outcome, ToolError};
use crate::report::{describe_action, index_range, write_verdict};
use crate::source::WalDir;

/// Zeros written per `pwrite` when clearing a torn tail.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

fn repair_io(path: &Path) -> impl Fn(std::io::Error) -> ToolError + '_ {
    move |source| ToolError::RepairIo {
        path: path.display().to_string(),
        source,
    }
}

/// `base`, or `base.1`, `base.2`, ... : the first name that does not exist yet.
fn unused_path(base: PathBuf) -> PathBuf {
    if !base.exists() {
        return base;
    }
    (1u32..)
        .map(|n| PathBuf::from(format!("{}.{n}", base.display())))
        .find(|candidate| !candidate.exists())
        .unwrap_or(base)
}

fn sync_dir(dir: &Path) -> Result<(), ToolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(repair_io(dir))
}

pub fn repair(path: &Path, yes: bool, out: &mut dyn Write) -> Result<Outcome, ToolError> {
    // Lock first (only when we will write), so nothing changes between scan and repair.
    let _lock = if yes {
        // Refuse to create a directory: it must already be a WAL directory.
        WalDir::open(path)?;
        let storage = FsStorage::new(path).map_err(repair_io(path))?;
        match storage.lock() {
            Ok(lock) => Some(lock),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(ToolError::Locked {
                    path: path.display().to_string(),
                })
            }
            Err(err) => return Err(repair_io(path)(err)),
        }
    } else {
        None
    };
    let dir = WalDir::open(path)?;
    let report = dir.scan(&mut NoVisitor)?;
    let actions = match &report.verdict {
        Verdict::Clean => {
            writeln!(
                out,
                "nothing to repair: the log is clean (entries {})",
                index_range(&report.log)
            )?;
            return Ok(Outcome::Clean);
        }
        Verdict::Corruption { .. } => {
            write_verdict(out, &report)?;
            writeln!(out, "refusing to repair: only a torn tail can be repaired without losing acknowledged entries")?;
            return Ok(Outcome::Problems);
        }
        Verdict::TornTail { actions, .. } => actions.clone(),
    };
    write_verdict(out, &report)?;
    if !yes {
        writeln!(out, "dry run: nothing was changed; run again with --yes to apply (a backup of every changed byte is kept next to the segment)")?;
        return Ok(Outcome::Problems);
    }

    // 3. Backups of the bytes to be zeroed.
    let inputs = dir.inputs();
    let bytes_of = |name: &str| {
        inputs
            .iter()
            .find(|input| input.name == name)
            .map(|input| input.bytes)
            .unwrap_or(&[])
    };
    for action in &actions {
        if let TailAction::Zero {
            file,
            offset,
            len_bytes,
            ..
        } = action
        {
            let bytes = bytes_of(file);
            let start = (*offset as usize).min(bytes.len());
            let end = (start + *len_bytes as usize).min(bytes.len());
            let backup_path = unused_path(path.join(format!("{file}.repair-{offset}.bak")));
            let mut backup = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&backup_path)
                .map_err(repair_io(&backup_path))?;
            backup
                .write_all(&bytes[start..end])
                .and_then(|()| backup.sync_all())
                .map_err(repair_io(&backup_path))?;
            writeln!(
                out,
                "backed up {} bytes of {file} (offset {offset}) to {}",
                end - start,
                backup_path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            )?;
        }
    }
    sync_dir(path)?;
    drop(inputs);
    drop(dir);

    // 4. Zero, 5. rename away.
    for action in &actions {
        match action {
            TailAction::Zero {
                file,
                offset,
                len_bytes,
                ..
            } => {
                let segment_path = path.join(file);
                let segment = OpenOptions::new()
                    .write(true)
                    .open(&segment_path)
                    .map_err(repair_io(&segment_path))?;
                let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(*len_bytes as usize)];
                let mut done = 0u64;
                while done < *len_bytes {
                    let n = (*len_bytes - done).min(zeros.len() as u64) as usize;
                    segment
                        .write_all_at(&zeros[..n], offset + done)
                        .map_err(repair_io(&segment_path))?;
                    done += n as u64;
                }
                segment.sync_data().map_err(repair_io(&segment_path))?;
            }
            TailAction::Remove { file, .. } => {
                let from = path.join(file);
                let to = unused_path(path.join(format!("{file}.removed.bak")));
                std::fs::rename(&from, &to).map_err(repair_io(&from))?;
            }
        }
        writeln!(out, "done: {}", describe_action(action))?;
    }
    sync_dir(path)?;

    // 6. Check the result.
    match WalDir::open(path) {
        Ok(repaired) => {
            let after = repaired.scan(&mut NoVisitor)?;
            writeln!(out, "after repair:")?;
            write_verdict(out, &after)?;
            Ok(if after.verdict.is_clean() {
                Outcome::Clean
            } else {
                Outcome::Problems
            })
        }
        Err(ToolError::NotAWal { .. }) => {
            writeln!(
                out,
                "after repair: no segment is left (nothing valid was written); the next open starts an empty log at index {}",
                report.log.first_index
            )?;
            Ok(Outcome::Clean)
        }
        Err(err) => Err(err),
    }
}
