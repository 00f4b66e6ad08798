//! Golden output of every read-only subcommand on a log the test writes itself
//! (`build_sample_log`: a no-op, a configuration, KV commands with and without sessions,
//! a leader change truncating two entries, three segments). Directories are passed
//! relative to the working directory, so the text holds no temporary paths.

mod common;

use common::*;

fn sample() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    build_sample_log(&root.path().join("wal"));
    root
}

fn assert_output(root: &tempfile::TempDir, args: &[&str], code: i32, expected: &str) {
    let run = tally_wal(root.path(), args);
    assert_eq!(
        run.stdout, expected,
        "stdout of tally-wal {args:?} (stderr: {})",
        run.stderr
    );
    assert_eq!(run.code, code, "exit code of tally-wal {args:?}");
}

#[test]
fn info_lists_segments_hard_state_and_totals() {
    assert_output(
        &sample(),
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
snapshots: none
",
    );
}

#[test]
fn verify_reports_every_segment_and_a_clean_verdict() {
    assert_output(
        &sample(),
        &["verify", "wal"],
        0,
        "\
00000000000000000001-00000000000000000001.wal  ok  6 batches, 6 entries
00000000000000000002-00000000000000000007.wal  ok  6 batches, 5 entries
00000000000000000003-00000000000000000012.wal  ok  3 batches, 7 entries
checked: 3 segments, 15 batches, 18 entry records, 1856 bytes; format version, batch CRCs, index continuity, term order
log: entries 1..=16, terms 1..=2, hard state term 2 vote 3
verdict: clean
snapshots: none (log first index 1)
snapshot verdict: clean
",
    );
}

#[test]
fn dump_text_decodes_kv_commands_and_hides_superseded_entries() {
    assert_output(
        &sample(),
        &["dump", "wal"],
        0,
        r#"     index   term kind        size  command
         1      1 noop           0
         2      1 config        36  voters {1,2,3}
         3      1 normal        38  SET "user:3" "name-3" [client 7 seq 3]
         4      1 normal        38  SET "user:4" "name-4" [client 7 seq 4]
         5      1 normal        38  SET "user:5" "name-5" [client 7 seq 5]
         6      1 normal        38  SET "user:6" "name-6" [client 7 seq 6]
         7      1 normal        38  SET "user:7" "name-7" [client 7 seq 7]
         8      1 normal        38  SET "user:8" "name-8" [client 7 seq 8]
         9      1 normal        38  SET "user:9" "name-9" [client 7 seq 9]
        10      1 normal        40  SET "user:10" "name-10" [client 7 seq 10]
        11      2 noop           0
        12      2 normal        26  INCR "hits"
        13      2 normal        43  MSET "a" "1" "b" "\x00\xff" [client 9 seq 1]
        14      2 normal        33  CAS "a" "1" "2" [client 9 seq 2]
        15      2 normal        37  DEL "a" "user:3"
        16      2 normal        13  <not a KV command: unsupported request format 110>
"#,
    );
}

#[test]
fn dump_all_shows_entries_a_new_leader_truncated() {
    assert_output(
        &sample(),
        &["dump", "wal", "--all", "--from", "10", "--to", "12"],
        0,
        r#"     index   term kind        size  command
        10      1 normal        40  SET "user:10" "name-10" [client 7 seq 10]
        11      1 normal        40  SET "user:11" "name-11" [client 7 seq 11] (superseded)
        12      1 normal        40  SET "user:12" "name-12" [client 7 seq 12] (superseded)
        11      2 noop           0
        12      2 normal        26  INCR "hits"
"#,
    );
}

#[test]
fn dump_json_is_one_object_per_line() {
    let root = sample();
    assert_output(
        &root,
        &[
            "dump", "wal", "--format", "json", "--from", "12", "--to", "16",
        ],
        0,
        r#"{"index":12,"term":2,"kind":"normal","size":26,"command":{"key":"hits","op":"incr"}}
{"index":13,"term":2,"kind":"normal","size":43,"command":{"op":"mset","pairs":[["a","1"],["b",{"hex":"00ff"}]]},"session":{"client_id":9,"sequence":1}}
{"index":14,"term":2,"kind":"normal","size":33,"command":{"expected":"1","key":"a","new":"2","op":"cas"},"session":{"client_id":9,"sequence":2}}
{"index":15,"term":2,"kind":"normal","size":37,"command":{"keys":["a","user:3"],"op":"del"}}
{"index":16,"term":2,"kind":"normal","size":13,"decode_error":"unsupported request format 110"}
"#,
    );
    // Every line of a full dump parses as JSON with the fixed fields.
    let run = tally_wal(root.path(), &["dump", "wal", "--format", "json"]);
    assert_eq!(run.code, 0);
    let indexes: Vec<u64> = run
        .stdout
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("valid JSON line");
            value["index"].as_u64().expect("index")
        })
        .collect();
    assert_eq!(indexes, (1..=16).collect::<Vec<_>>());
}

#[test]
fn dump_filters_by_term_kind_and_limit() {
    let root = sample();
    assert_output(
        &root,
        &["dump", "wal", "--term", "2", "--kind", "noop"],
        0,
        "     index   term kind        size  command\n        11      2 noop           0\n",
    );
    assert_output(
        &root,
        &[
            "dump", "wal", "--kind", "normal", "--limit", "2", "--from", "5",
        ],
        0,
        r#"     index   term kind        size  command
         5      1 normal        38  SET "user:5" "name-5" [client 7 seq 5]
         6      1 normal        38  SET "user:6" "name-6" [client 7 seq 6]
"#,
    );
}

#[test]
fn dump_hex_prints_payload_bytes() {
    assert_output(
        &sample(),
        &[
            "dump", "wal", "--format", "hex", "--from", "2", "--limit", "2",
        ],
        0,
        "\
index 2 term 1 kind config size 36
  00000000  03 00 00 00 01 00 00 00  00 00 00 00 02 00 00 00  |................|
  00000010  00 00 00 00 03 00 00 00  00 00 00 00 00 00 00 00  |................|
  00000020  00 00 00 00                                       |....|
index 3 term 1 kind normal size 38
  00000000  01 07 00 00 00 00 00 00  00 03 00 00 00 00 00 00  |................|
  00000010  00 01 06 00 00 00 75 73  65 72 3a 33 06 00 00 00  |......user:3....|
  00000020  6e 61 6d 65 2d 33                                 |name-3|
",
    );
}

#[test]
fn stats_counts_kinds_sizes_batches_and_terms() {
    assert_output(
        &sample(),
        &["stats", "wal"],
        0,
        "\
entries: 16 in the log (1..=16), 2 superseded by truncations
by kind:
  normal           13
  noop              2
  config            1
payload bytes: total 494, mean 30.9, max 43
payload size histogram (bytes: entries):
  0                         2
  1..=15                    1
  16..=63                  13
batches: 15 (12 with entries, 3 control only)
entries per batch: min 1, mean 1.50, max 6
entries per term:
  term 1              10  (index 1..=10)
  term 2               6  (index 11..=16)
",
    );
}

#[test]
fn inspecting_never_changes_a_byte_or_takes_the_lock() {
    let root = sample();
    let dir = root.path().join("wal");
    let snapshot = |dir: &std::path::Path| {
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
    let before = snapshot(&dir);
    // A live server holds the lock: every read-only command still works.
    let held = open(&dir);
    for args in [
        vec!["info", "wal"],
        vec!["verify", "wal"],
        vec!["dump", "wal", "--format", "json"],
        vec!["stats", "wal"],
        vec!["repair", "wal"],
        vec!["diff", "wal", "wal"],
    ] {
        let run = tally_wal(root.path(), &args);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        // Piped output: no progress bar or other noise on stderr.
        assert_eq!(run.stderr, "", "{args:?}");
    }
    drop(held);
    assert_eq!(snapshot(&dir), before);
}
