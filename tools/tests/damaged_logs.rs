//! Damaged copies of a real log: each gets the verdict recovery would give (checked
//! against `WalCore::open` on the same files) and the right exit code; repair fixes a
//! torn tail (and only a torn tail) with a backup; bad invocations exit 2.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use tally_wal::{FsStorage, WalCore, WalError};

struct Fixture {
    root: tempfile::TempDir,
    names: Vec<String>,
}

impl Fixture {
    fn new() -> Fixture {
        let root = tempfile::tempdir().expect("temp dir");
        build_sample_log(&root.path().join("wal"));
        let names = segment_names(&root.path().join("wal"));
        assert_eq!(names.len(), 3);
        Fixture { root, names }
    }

    /// A fresh copy of the sample log named `name`.
    fn copy(&self, name: &str) -> PathBuf {
        copy_dir(&self.root.path().join("wal"), &self.root.path().join(name))
    }

    fn run(&self, args: &[&str]) -> Run {
        tally_wal(self.root.path(), args)
    }
}

fn files_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    files.sort();
    files
}

/// Zeroes the second half of the last batch of the last segment: a write torn by a
/// power loss (the batch holding entries 11..=16 of term 2).
fn tear_last_batch(dir: &Path, names: &[String]) -> (PathBuf, usize) {
    let last = dir.join(names.last().expect("segments"));
    let (offset, len) = *batches_of(&last).last().expect("batches");
    patch(&last, offset + len / 2, &vec![0u8; len - len / 2]);
    (last, offset)
}

fn recovery_error(dir: &Path) -> WalError {
    match WalCore::open(FsStorage::new(dir).expect("dir"), small_options()) {
        Ok(_) => panic!("recovery opened a log the inspector calls corrupt"),
        Err(err) => err,
    }
}

#[test]
fn torn_tail_is_reported_as_torn_and_recovery_agrees() {
    let fixture = Fixture::new();
    let dir = fixture.copy("torn");
    let (_, offset) = tear_last_batch(&dir, &fixture.names);
    let run = fixture.run(&["verify", "torn"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let expected_verdict = format!(
        "verdict: torn tail in {} at offset {offset} (expected entry index 13)",
        fixture.names[2]
    );
    assert!(run.stdout.contains(&expected_verdict), "{}", run.stdout);
    assert!(
        run.stdout.contains("and keep entries 1..=12"),
        "{}",
        run.stdout
    );
    // Recovery drops exactly that region and keeps 1..=12.
    let wal = open(&dir);
    let dropped = &wal.recovery_report().dropped;
    assert_eq!(dropped.len(), 1);
    assert_eq!(
        (dropped[0].file.as_str(), dropped[0].offset),
        (fixture.names[2].as_str(), offset as u64)
    );
    assert_eq!(wal.last_index(), 12);
}

#[test]
fn flipped_bit_in_the_middle_is_corruption_with_file_offset_and_index() {
    let fixture = Fixture::new();
    let dir = fixture.copy("flip");
    let first = dir.join(&fixture.names[0]);
    let (offset, _) = batches_of(&first)[2];
    let byte = std::fs::read(&first).expect("read")[offset + 40];
    patch(&first, offset + 40, &[byte ^ 0x10]);
    let run = fixture.run(&["verify", "flip"]);
    assert_eq!(run.code, 1);
    let err = recovery_error(&dir);
    let WalError::Corruption {
        file,
        offset: bad_offset,
        expected_index,
        reason,
    } = err
    else {
        panic!("expected a corruption error, got {err}");
    };
    assert_eq!(
        (file.as_str(), bad_offset),
        (fixture.names[0].as_str(), offset as u64)
    );
    let expected = format!(
        "verdict: CORRUPTION in {file} at offset {bad_offset} (expected entry index {expected_index}): {reason}\n"
    );
    assert!(
        run.stdout.contains(&expected),
        "{}\nwanted {expected}",
        run.stdout
    );
    assert!(run.stdout.contains("followed by a valid batch"));
    // info, dump and stats also exit 1 on it, and say so on stderr.
    for command in ["info", "dump", "stats"] {
        let run = fixture.run(&[command, "flip"]);
        assert_eq!(run.code, 1, "{command}");
    }
    assert!(fixture.run(&["dump", "flip"]).stderr.contains("CORRUPTION"));
}

#[test]
fn missing_segment_is_corruption() {
    let fixture = Fixture::new();
    let dir = fixture.copy("missing");
    std::fs::remove_file(dir.join(&fixture.names[1])).expect("remove");
    let run = fixture.run(&["verify", "missing"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout
            .contains("segment ids jump from 1 to 3: a segment is missing"),
        "{}",
        run.stdout
    );
    assert!(matches!(recovery_error(&dir), WalError::Corruption { .. }));
}

/// Another node's log, with bigger entries than the sample so its segments start at
/// other indexes.
fn other_node_log(dir: &Path) -> Vec<String> {
    let mut wal = open(dir);
    for index in 1..=20u64 {
        append_synced(
            &mut wal,
            &[entry(
                index,
                1,
                KIND_NORMAL,
                bytes::Bytes::from(vec![b'x'; 120]),
            )],
        );
    }
    segment_names(dir)
}

#[test]
fn segment_from_another_directory_is_corruption() {
    let fixture = Fixture::new();
    let other_names = other_node_log(&fixture.root.path().join("other"));
    let other = fixture.root.path().join("other");
    assert_ne!(other_names[1], fixture.names[1]);

    // The operator copies the other node's segment 2 over ours, keeping our name.
    let dir = fixture.copy("mixed");
    std::fs::copy(other.join(&other_names[1]), dir.join(&fixture.names[1])).expect("copy");
    let run = fixture.run(&["verify", "mixed"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!(
            "verdict: CORRUPTION in {} at offset 0",
            fixture.names[1]
        )),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("the name disagrees"), "{}", run.stdout);
    assert!(matches!(recovery_error(&dir), WalError::Corruption { .. }));

    // Or copies it in under its own name, next to ours.
    let dir = fixture.copy("mixed2");
    std::fs::copy(other.join(&other_names[1]), dir.join(&other_names[1])).expect("copy");
    let run = fixture.run(&["verify", "mixed2"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("segment ids jump from 2 to 2: a segment is missing"),
        "{}",
        run.stdout
    );
    assert!(matches!(recovery_error(&dir), WalError::Corruption { .. }));
}

#[test]
fn repair_dry_run_changes_nothing_and_exits_1() {
    let fixture = Fixture::new();
    let dir = fixture.copy("torn");
    tear_last_batch(&dir, &fixture.names);
    let before = files_of(&dir);
    let run = fixture.run(&["repair", "torn"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("dry run: nothing was changed"),
        "{}",
        run.stdout
    );
    assert_eq!(files_of(&dir), before);
}

#[test]
fn repair_truncates_a_torn_tail_keeps_a_backup_and_every_durable_entry() {
    let fixture = Fixture::new();
    let dir = fixture.copy("torn");
    let (last, offset) = tear_last_batch(&dir, &fixture.names);
    let torn_bytes = std::fs::read(&last).expect("read");
    let nonzero_end = torn_bytes.iter().rposition(|&b| b != 0).expect("data") + 1;
    // Entries durable before the torn write, read through the WAL from a clean copy.
    let expected: Vec<_> = {
        let reference = fixture.copy("reference");
        let (_, _) = tear_last_batch(&reference, &fixture.names);
        let wal = open(&reference);
        (1..=12).map(|i| wal.read(i).expect("read")).collect()
    };

    let run = fixture.run(&["repair", "torn", "--yes"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.ends_with("after repair:\nverdict: clean\n"),
        "{}",
        run.stdout
    );

    // The backup holds exactly the bytes that were zeroed.
    let backup = dir.join(format!("{}.repair-{offset}.bak", fixture.names[2]));
    assert_eq!(
        std::fs::read(&backup).expect("backup exists"),
        torn_bytes[offset..nonzero_end].to_vec()
    );
    // The segment differs only by those zeros.
    let repaired = std::fs::read(&last).expect("read");
    assert_eq!(repaired[..offset], torn_bytes[..offset]);
    assert!(repaired[offset..].iter().all(|&b| b == 0));

    // Recovery now has nothing to drop and holds every durable entry.
    let wal = open(&dir);
    assert!(wal.recovery_report().dropped.is_empty());
    assert_eq!(wal.last_index(), 12);
    let entries: Vec<_> = (1..=12).map(|i| wal.read(i).expect("read")).collect();
    assert_eq!(entries, expected);
    drop(wal);
    assert_eq!(fixture.run(&["verify", "torn"]).code, 0);
}

#[test]
fn repair_moves_segments_after_a_torn_tail_aside() {
    let fixture = Fixture::new();
    let dir = fixture.copy("torn2");
    // A crash while the last segment was being created: its header is torn and
    // nothing valid follows, so recovery removes the whole segment.
    let last = dir.join(&fixture.names[2]);
    let mut damaged = std::fs::read(&last).expect("read");
    damaged[20..28].fill(0xEE);
    damaged[64..].fill(0);
    std::fs::write(&last, &damaged).expect("write");
    let run = fixture.run(&["repair", "torn2", "--yes"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(!last.exists());
    let moved = dir.join(format!("{}.removed.bak", fixture.names[2]));
    assert_eq!(std::fs::read(moved).expect("moved aside"), damaged);
    let wal = open(&dir);
    assert_eq!(wal.last_index(), 11);
    assert!(wal.recovery_report().dropped.is_empty());
}

#[test]
fn repair_refuses_corruption_in_the_middle() {
    let fixture = Fixture::new();
    let dir = fixture.copy("flip");
    let first = dir.join(&fixture.names[0]);
    let (offset, _) = batches_of(&first)[1];
    patch(&first, offset + 35, &[0xAA]);
    let before = files_of(&dir);
    let run = fixture.run(&["repair", "flip", "--yes"]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("refusing to repair"), "{}", run.stdout);
    // Only the lock file may have been created; no segment byte changed.
    let after: Vec<_> = files_of(&dir)
        .into_iter()
        .filter(|(n, _)| n != "LOCK")
        .collect();
    let before: Vec<_> = before.into_iter().filter(|(n, _)| n != "LOCK").collect();
    assert_eq!(after, before);
}

#[test]
fn repair_refuses_a_directory_a_server_holds() {
    let fixture = Fixture::new();
    let dir = fixture.copy("busy");
    let held = open(&dir);
    let run = fixture.run(&["repair", "busy", "--yes"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("directory is in use"), "{}", run.stderr);
    drop(held);
}

#[test]
fn repair_on_a_clean_log_does_nothing() {
    let fixture = Fixture::new();
    let dir = fixture.copy("clean");
    let before = files_of(&dir);
    let run = fixture.run(&["repair", "clean", "--yes"]);
    assert_eq!(run.code, 0);
    assert_eq!(
        run.stdout,
        "nothing to repair: the log is clean (entries 1..=16)\n"
    );
    assert_eq!(files_of(&dir), before);
}

#[test]
fn missing_unreadable_and_foreign_directories_exit_2() {
    let fixture = Fixture::new();
    let run = fixture.run(&["verify", "does-not-exist"]);
    assert_eq!(run.code, 2);
    assert_eq!(
        run.stderr,
        "tally-wal: error: does-not-exist: No such file or directory (os error 2)\n"
    );

    let file = format!("wal/{}", fixture.names[0]);
    let run = fixture.run(&["info", &file]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("not a directory"), "{}", run.stderr);

    std::fs::create_dir(fixture.root.path().join("empty")).expect("mkdir");
    std::fs::write(fixture.root.path().join("empty/notes.txt"), "hello").expect("write");
    let run = fixture.run(&["stats", "empty"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("not a Tally WAL: no segment files"),
        "{}",
        run.stderr
    );

    // A file named like a segment that is not one.
    let dir = fixture.copy("foreign");
    std::fs::write(
        dir.join(&fixture.names[2]),
        b"SQLite format 3\0 and more bytes",
    )
    .expect("write");
    let run = fixture.run(&["verify", "foreign"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("not a Tally segment"), "{}", run.stderr);
}

#[test]
fn usage_errors_exit_2() {
    let fixture = Fixture::new();
    for args in [
        vec![],
        vec!["frobnicate", "wal"],
        vec!["verify"],
        vec!["diff", "wal"],
        vec!["dump", "wal", "--format", "xml"],
        vec!["dump", "wal", "--kind", "bogus"],
        vec!["dump", "wal", "--from", "9", "--to", "3"],
        vec!["dump", "wal", "--limit", "-1"],
        vec!["diff", "wal", "wal", "--from", "1", "--to", "100000"],
    ] {
        let run = fixture.run(&args);
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        assert!(!run.stderr.is_empty(), "{args:?} printed no reason");
    }
    assert_eq!(fixture.run(&["--help"]).code, 0);
}
