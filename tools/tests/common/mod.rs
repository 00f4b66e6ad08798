//! Helpers shared by the `tally-wal` CLI tests: build real logs with the WAL itself
//! (FsStorage in a temporary directory), damage copies of them, run the built binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use tally_engine::kv::{encode_request, ClientSession, Command as KvCommand, KvLimits};
use tally_engine::raft::Configuration;
use tally_wal::format::HardState;
use tally_wal::{Entry, FsStorage, WalCore, WalOptions};

pub const KIND_NORMAL: u8 = 0;
pub const KIND_NOOP: u8 = 1;
pub const KIND_CONFIG: u8 = 2;

/// Small segments so a few dozen entries span several files.
pub fn small_options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 700,
        max_entry_size_bytes: 200,
        preallocate: false,
        ..WalOptions::default()
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `tally-wal args...` in `cwd` (so directory arguments are relative and the
/// output holds no temporary paths).
pub fn tally_wal(cwd: &Path, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_tally-wal"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run tally-wal");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

pub fn kv(session: Option<(u64, u64)>, command: KvCommand<'_>) -> Bytes {
    let mut out = Vec::new();
    encode_request(
        session.map(|(client_id, sequence)| ClientSession {
            client_id,
            sequence,
        }),
        &command,
        &KvLimits::default(),
        &mut out,
    )
    .expect("encode KV request");
    Bytes::from(out)
}

pub fn entry(index: u64, term: u64, kind: u8, payload: Bytes) -> Entry {
    Entry {
        index,
        term,
        kind,
        payload,
    }
}

/// Appends `entries` as one batch and makes it durable.
pub fn append_synced(wal: &mut WalCore<FsStorage>, entries: &[Entry]) {
    wal.append(entries).expect("append");
    wal.write().expect("write");
    wal.sync().expect("sync");
}

pub fn open(dir: &Path) -> WalCore<FsStorage> {
    WalCore::open(FsStorage::new(dir).expect("dir"), small_options()).expect("open WAL")
}

/// The sample log of the golden tests: a no-op, a configuration, KV commands of every
/// kind with and without sessions, a leader change that truncates two entries, a hard
/// state; several segments.
pub fn build_sample_log(dir: &Path) {
    let mut wal = open(dir);
    wal.set_hard_state(HardState { term: 1, vote: 1 })
        .expect("hard state");
    append_synced(
        &mut wal,
        &[
            entry(1, 1, KIND_NOOP, Bytes::new()),
            // The v1 encoding (still read): the goldens keep their byte layout.
            entry(2, 1, KIND_CONFIG, Configuration::new([1, 2, 3]).encode_v1()),
        ],
    );
    for index in 3..=12u64 {
        let key = format!("user:{index}");
        let value = format!("name-{index}");
        append_synced(
            &mut wal,
            &[entry(
                index,
                1,
                KIND_NORMAL,
                kv(
                    Some((7, index)),
                    KvCommand::Set {
                        key: key.as_bytes(),
                        value: value.as_bytes(),
                    },
                ),
            )],
        );
    }
    // Term 2: a new leader overwrites 11 and 12.
    wal.set_hard_state(HardState { term: 2, vote: 3 })
        .expect("hard state");
    wal.truncate_suffix(11).expect("truncate");
    append_synced(
        &mut wal,
        &[
            entry(11, 2, KIND_NOOP, Bytes::new()),
            entry(
                12,
                2,
                KIND_NORMAL,
                kv(None, KvCommand::Incr { key: b"hits" }),
            ),
            entry(
                13,
                2,
                KIND_NORMAL,
                kv(
                    Some((9, 1)),
                    KvCommand::MSet {
                        pairs: vec![(b"a", b"1"), (b"b", b"\x00\xff")],
                    },
                ),
            ),
            entry(
                14,
                2,
                KIND_NORMAL,
                kv(
                    Some((9, 2)),
                    KvCommand::Cas {
                        key: b"a",
                        expected: b"1",
                        new: b"2",
                    },
                ),
            ),
            entry(
                15,
                2,
                KIND_NORMAL,
                kv(
                    None,
                    KvCommand::Del {
                        keys: vec![b"a", b"user:3"],
                    },
                ),
            ),
            entry(16, 2, KIND_NORMAL, Bytes::from_static(b"not a command")),
        ],
    );
    assert!(wal.segment_count() >= 3, "sample log must span segments");
}

/// Writes a log of `terms[i]` at index `first + i`, one batch per entry, with a
/// KV payload.
pub fn build_log_with_terms(dir: &Path, terms: &[u64]) {
    let mut wal = open(dir);
    for (i, term) in terms.iter().enumerate() {
        let index = i as u64 + 1;
        let key = format!("k{index}");
        append_synced(
            &mut wal,
            &[entry(
                index,
                *term,
                KIND_NORMAL,
                kv(
                    None,
                    KvCommand::Set {
                        key: key.as_bytes(),
                        value: b"v",
                    },
                ),
            )],
        );
    }
}

/// Segment file names in `dir`, sorted.
pub fn segment_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| tally_wal::format::parse_segment_file_name(n).is_some())
        .collect();
    names.sort();
    names
}

/// Copies every file of `from` into a new directory `to`.
pub fn copy_dir(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
    to.to_path_buf()
}

/// Offsets and lengths of the valid batches of a segment file, in order.
pub fn batches_of(path: &Path) -> Vec<(usize, usize)> {
    use tally_wal::format::{self, BatchProbe, SEGMENT_HEADER_LEN};
    let bytes = std::fs::read(path).expect("read segment");
    let name = path.file_name().and_then(|n| n.to_str()).expect("name");
    let (id, _) = format::parse_segment_file_name(name).expect("segment name");
    let mut offset = SEGMENT_HEADER_LEN;
    let mut batches = Vec::new();
    while let BatchProbe::Valid(header) = format::probe_batch(id, &bytes, offset) {
        let len = format::valid_batch_len(&bytes, offset, &header);
        batches.push((offset, len));
        offset += len;
    }
    batches
}

/// Overwrites bytes of a file in place.
pub fn patch(path: &Path, offset: usize, bytes: &[u8]) {
    let mut contents = std::fs::read(path).expect("read");
    if contents.len() < offset + bytes.len() {
        contents.resize(offset + bytes.len(), 0);
    }
    contents[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, contents).expect("write");
}
