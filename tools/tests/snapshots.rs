//! Golden output of the snapshot parts of `tally-wal`: `info` and `verify` on a node
//! directory holding WAL segments and snapshot files, `snapshot FILE` in text and JSON,
//! and the exit codes for damaged snapshots and a log that starts after a gap.

mod common;

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use common::*;
use tally_engine::kv::{Command as KvCommand, KvStateMachine};
use tally_engine::raft::Configuration;
use tally_engine::state_machine::{CommittedEntry, StateMachine};
use tally_wal::snapshot::snapshot_file_name;
use tally_wal::{FsStorage, SnapshotHeader, SnapshotStore, WalCore, WalOptions};

/// A KV state with two sessions, an escaped value and a counter, applied through index
/// `applied_index`.
fn kv_state(applied_index: u64) -> KvStateMachine {
    let mut sm = KvStateMachine::default();
    let commands = [
        kv(
            Some((7, 1)),
            KvCommand::Set {
                key: b"user:3",
                value: b"name-3",
            },
        ),
        kv(
            Some((9, 2)),
            KvCommand::MSet {
                pairs: vec![(b"a", b"1"), (b"b", b"\x00\xff")],
            },
        ),
        kv(None, KvCommand::Incr { key: b"hits" }),
    ];
    let entries: Vec<CommittedEntry<'_>> = commands
        .iter()
        .enumerate()
        .map(|(i, payload)| CommittedEntry {
            index: applied_index - 2 + i as u64,
            payload,
        })
        .collect();
    sm.apply(&entries).expect("apply");
    sm
}

/// Writes a KV snapshot of `kv_state(index)` into `dir` through the store.
fn write_kv_snapshot(dir: &Path, index: u64, term: u64) -> String {
    let store = SnapshotStore::new(FsStorage::new(dir).expect("dir")).expect("store");
    let mut writer = store
        .begin(&SnapshotHeader {
            index,
            term,
            configuration: Configuration::new([1, 2, 3]).encode(),
        })
        .expect("begin");
    kv_state(index)
        .snapshot()
        .write_to(&mut writer)
        .expect("write");
    writer.flush().expect("flush");
    writer.finish().expect("finish").name
}

fn sample_with_snapshot() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = root.path().join("wal");
    build_sample_log(&dir);
    write_kv_snapshot(&dir, 9, 1);
    write_kv_snapshot(&dir, 14, 2);
    root
}

const NEWEST: &str = "snapshot-00000000000000000014-00000000000000000002.snap";
const OLDER: &str = "snapshot-00000000000000000009-00000000000000000001.snap";

fn assert_output(root: &tempfile::TempDir, args: &[&str], code: i32, expected: &str) {
    let run = tally_wal(root.path(), args);
    assert_eq!(
        run.stdout, expected,
        "stdout of tally-wal {args:?} (stderr: {})",
        run.stderr
    );
    assert_eq!(run.code, code, "exit code of tally-wal {args:?}");
}

/// Flips one bit in the middle of a snapshot file's data.
fn flip_data_byte(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[100] ^= 0x04;
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn info_lists_snapshot_files_with_index_term_size_and_validity() {
    let root = sample_with_snapshot();
    std::fs::write(root.path().join("wal/receive-0.snap.tmp"), b"partial").expect("temp");
    assert_output(
        &root,
        &["info", "wal"],
        0,
        "\
directory: wal
format: version 2
segments: 3
  name                                            id       entries written  batches   used_bytes   size_bytes  state
  00000000000000000001-00000000000000000001.wal    1                 1..=6        6          658          700  sealed
  00000000000000000002-00000000000000000007.wal    2                7..=11        6          625          700  sealed
  00000000000000000003-00000000000000000012.wal    3               11..=16        3          573          700  open
hard state: term 2, vote 3
log: entries 1..=16 (16 entries; last term 2)
records: 15 batches, 18 entry records, 574 payload bytes, 1856 bytes used of 2100 allocated
verdict: clean
snapshots: 2
  name                                                         index   term   size_bytes  state
  snapshot-00000000000000000014-00000000000000000002.snap         14      2          309  valid
  snapshot-00000000000000000009-00000000000000000001.snap          9      1          309  valid
snapshot temp file: receive-0.snap.tmp (7 bytes; an unfinished snapshot, deleted when the node starts)
",
    );
    assert!(
        root.path().join("wal/receive-0.snap.tmp").exists(),
        "the inspector never deletes"
    );
}

#[test]
fn verify_checks_every_snapshot_and_that_the_log_covers_the_newest() {
    assert_output(
        &sample_with_snapshot(),
        &["verify", "wal"],
        0,
        "\
00000000000000000001-00000000000000000001.wal  ok  6 batches, 6 entries
00000000000000000002-00000000000000000007.wal  ok  6 batches, 5 entries
00000000000000000003-00000000000000000012.wal  ok  3 batches, 7 entries
checked: 3 segments, 15 batches, 18 entry records, 1856 bytes; format version, batch CRCs, index continuity, term order
log: entries 1..=16, terms 1..=2, hard state term 2 vote 3
verdict: clean
snapshot-00000000000000000014-00000000000000000002.snap  ok  index 14 term 2, 309 bytes (217 data bytes), checksum ok
snapshot-00000000000000000009-00000000000000000001.snap  ok  index 9 term 1, 309 bytes (217 data bytes), checksum ok
snapshots: 2 checked; log first index 1 <= snapshot index 14 + 1: covered
snapshot verdict: clean
",
    );
}

#[test]
fn snapshot_text_prints_header_configuration_sessions_and_escaped_pairs() {
    assert_output(
        &sample_with_snapshot(),
        &["snapshot", &format!("wal/{NEWEST}")],
        0,
        r#"file: snapshot-00000000000000000014-00000000000000000002.snap
size: 309 bytes
format: version 1
index: 14
term: 2
configuration: voters {1,2,3}
layout: header 76 bytes, data 217 bytes, footer 16 bytes
checksum: ok
state machine: KV snapshot
applied index: 14
sessions: 2
  client 7 last sequence 1 at index 12: OK
  client 9 last sequence 2 at index 13: OK
keys: 4
  "a" = "1"
  "b" = "\x00\xff"
  "hits" = "1"
  "user:3" = "name-3"
"#,
    );
}

#[test]
fn snapshot_json_is_one_lossless_object() {
    let root = sample_with_snapshot();
    let run = tally_wal(
        root.path(),
        &["snapshot", "--format", "json", &format!("wal/{NEWEST}")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON object");
    assert_eq!(value["index"], 14);
    assert_eq!(value["term"], 2);
    assert_eq!(value["checksum"], "ok");
    assert_eq!(
        value["configuration"]["voters"],
        serde_json::json!([1, 2, 3])
    );
    assert_eq!(value["kv"]["applied_index"], 14);
    assert_eq!(value["kv"]["sessions"][1]["client_id"], 9);
    assert_eq!(
        value["kv"]["entries"][1],
        serde_json::json!({ "key": "b", "value": { "hex": "00ff" } })
    );
}

#[test]
fn a_flipped_byte_in_the_newest_snapshot_fails_verify_info_and_snapshot_with_exit_1() {
    let root = sample_with_snapshot();
    flip_data_byte(&root.path().join("wal").join(NEWEST));

    let run = tally_wal(root.path(), &["verify", "wal"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!(
            "{NEWEST}  INVALID  snapshot {NEWEST} is corrupt at offset 301: checksum mismatch"
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(
            "covered (newest is invalid; restart falls back to index 9)\nsnapshot verdict: PROBLEM\n"
        ),
        "{}",
        run.stdout
    );

    let run = tally_wal(root.path(), &["info", "wal"]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("INVALID: snapshot"), "{}", run.stdout);

    let run = tally_wal(root.path(), &["snapshot", &format!("wal/{NEWEST}")]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("checksum: INVALID: snapshot")
            && run
                .stdout
                .ends_with("state machine: not read (the file does not verify)\n"),
        "{}",
        run.stdout
    );
    // The older one is still fine.
    let run = tally_wal(root.path(), &["snapshot", &format!("wal/{OLDER}")]);
    assert_eq!(run.code, 0, "{}", run.stdout);
}

/// A WAL whose first index is `first` (as after compaction), with a few entries.
fn compacted_log(dir: &Path, first: u64) {
    let options = WalOptions {
        first_index_of_new_log: first,
        ..small_options()
    };
    let mut wal = WalCore::open(FsStorage::new(dir).expect("dir"), options).expect("open");
    append_synced(
        &mut wal,
        &[entry(
            first,
            3,
            KIND_NORMAL,
            kv(None, KvCommand::Incr { key: b"hits" }),
        )],
    );
}

#[test]
fn verify_reports_a_gap_between_the_newest_snapshot_and_the_log_start() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = root.path().join("gap");
    compacted_log(&dir, 50);
    write_kv_snapshot(&dir, 40, 2);
    let run = tally_wal(root.path(), &["verify", "gap"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.ends_with(
            "snapshots: GAP: log first index 50 > snapshot index 40 + 1: entries 41..=49 are in neither\nsnapshot verdict: PROBLEM\n"
        ),
        "{}",
        run.stdout
    );

    write_kv_snapshot(&dir, 49, 2);
    let run = tally_wal(root.path(), &["verify", "gap"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("log first index 50 <= snapshot index 49 + 1: covered\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn corrupt_newest_snapshot_with_a_log_gap_names_the_file_a_restart_would_fail_on() {
    let root = tempfile::tempdir().expect("temp dir");
    let dir = root.path().join("node");
    compacted_log(&dir, 50);
    write_kv_snapshot(&dir, 30, 2);
    let newest = write_kv_snapshot(&dir, 49, 2);
    flip_data_byte(&dir.join(&newest));
    let run = tally_wal(root.path(), &["verify", "node"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains(&format!(
            "snapshots: restart would fail: newest snapshot {newest} is corrupt and the log (first index 50) does not cover the gap after"
        )),
        "{}",
        run.stdout
    );
}

#[test]
fn snapshot_of_a_missing_file_exits_2_and_of_a_foreign_file_exits_1() {
    let root = tempfile::tempdir().expect("temp dir");
    let run = tally_wal(root.path(), &["snapshot", "nope.snap"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("nope.snap"), "{}", run.stderr);

    std::fs::write(
        root.path().join("foreign.snap"),
        "hello, not a snapshot at all. ".repeat(4),
    )
    .expect("write");
    let run = tally_wal(root.path(), &["snapshot", "foreign.snap"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains(
            "header: unreadable: snapshot foreign.snap is corrupt at offset 0: bad magic"
        ),
        "{}",
        run.stdout
    );
}

#[test]
fn snapshot_with_an_empty_configuration_and_a_non_kv_stream_is_shown_as_such() {
    let root = tempfile::tempdir().expect("temp dir");
    let store = SnapshotStore::new(FsStorage::new(root.path()).expect("dir")).expect("store");
    let mut writer = store
        .begin(&SnapshotHeader {
            index: 3,
            term: 1,
            configuration: Bytes::new(),
        })
        .expect("begin");
    writer.write_all(b"opaque state").expect("write");
    let name = writer.finish().expect("finish").name;
    assert_eq!(name, snapshot_file_name(3, 1));
    let run = tally_wal(root.path(), &["snapshot", &name]);
    assert_eq!(run.code, 0);
    assert!(
        run.stdout.contains("configuration: none (empty)\n")
            && run
                .stdout
                .ends_with("state machine: not a KV snapshot stream (no TKVS magic)\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn inspecting_snapshots_never_changes_a_byte_or_deletes_a_temp_file() {
    let root = sample_with_snapshot();
    let dir = root.path().join("wal");
    std::fs::write(dir.join("snapshot-x-1.snap.tmp"), b"unfinished").expect("temp");
    let contents = |dir: &Path| {
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
    };
    let before = contents(&dir);
    let held = open(&dir); // a live server holds the WAL lock
    let newest = format!("wal/{NEWEST}");
    for args in [
        vec!["info", "wal"],
        vec!["verify", "wal"],
        vec!["snapshot", newest.as_str()],
        vec!["snapshot", "--format", "json", newest.as_str()],
    ] {
        let run = tally_wal(root.path(), &args);
        assert_eq!(run.code, 0, "{args:?}: {}{}", run.stdout, run.stderr);
        assert_eq!(run.stderr, "", "{args:?}");
    }
    drop(held);
    assert_eq!(contents(&dir), before);
}
