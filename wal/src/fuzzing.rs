//! Fuzz harness for WAL recovery over arbitrary directory contents.
//!
//! Why here: the cargo-fuzz target in `fuzz/` and the corpus replay test in
//! `wal/tests/fuzz_corpus.rs` call the same [`recover_dir`], so CI replays exactly the
//! fuzzed code. A random byte string almost never contains a batch with a valid CRC, so
//! the input is read as a small program that *builds* a directory: copies of the
//! segments of a real log (written by this crate) with bytes overwritten, XORed or cut
//! by the input, raw files under segment-like or arbitrary names, and batches whose
//! header fields and body come from the input but whose CRC the harness computes, so
//! fuzzed records reach replay. Not part of the API (`#[doc(hidden)]`); see
//! `docs/FUZZING.md`.
//!
//! What must hold: [`WalCore::open`](crate::WalCore::open) returns a typed
//! [`WalError::Corruption`] or a log that verifies (every entry readable, contiguous,
//! terms non-decreasing, everything durable), that log accepts one more entry, and a
//! second open finds the same log with nothing left to repair. The offline scanner
//! ([`inspect::scan`]) reaches the same verdict (same corruption, or the same torn-tail
//! actions and log) on the same bytes. Neither panics.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::format::{self, BatchHeader, BatchProbe, HardState, SEGMENT_HEADER_LEN};
use crate::inspect::{self, NoVisitor, ScanError, ScanReport, SegmentBytes, TailAction, Verdict};
use crate::{Entry, SimStorage, Storage, WalCore, WalError, WalOptions};

/// Most files one input creates.
const MAX_FILES: usize = 6;
/// Largest raw file or batch body taken from the input.
const MAX_RAW_BYTES: usize = 4096;

/// A segment of the template log: name, id, bytes, end of its batches.
struct TemplateSegment {
    name: String,
    id: u64,
    bytes: Vec<u8>,
    batches_end: usize,
}

/// Small segments so a few entries span several files and a new segment costs little.
fn options(tolerant_recovery: bool) -> WalOptions {
    WalOptions {
        segment_size_bytes: 1024,
        max_entry_size_bytes: 256,
        preallocate: false,
        tolerant_recovery,
        zero_fill_segments: false,
        release_synced_pages: false,
        first_index_of_new_log: 1,
    }
}

/// A valid log written through the real write path, built once: hard states, entries
/// over several segments, and a truncation.
fn template() -> &'static [TemplateSegment] {
    static TEMPLATE: OnceLock<Vec<TemplateSegment>> = OnceLock::new();
    TEMPLATE.get_or_init(build_template)
}

fn build_template() -> Vec<TemplateSegment> {
    let storage = SimStorage::new();
    let mut core = WalCore::open(storage.clone(), options(false)).expect("template: open");
    let entry = |index: u64, term: u64| Entry {
        index,
        term,
        kind: (index % 3) as u8,
        payload: Bytes::from(vec![index as u8; (index as usize * 7) % 90]),
    };
    let step = |core: &mut WalCore<SimStorage>| {
        core.write().expect("template: write");
        core.sync().expect("template: sync");
    };
    core.set_hard_state(HardState { term: 1, vote: 1 })
        .expect("template: hard state");
    for first in (1..=10).step_by(3) {
        let entries: Vec<Entry> = (first..(first + 3).min(11)).map(|i| entry(i, 1)).collect();
        core.append(&entries).expect("template: append");
        step(&mut core);
    }
    core.truncate_suffix(8).expect("template: truncate");
    core.set_hard_state(HardState { term: 2, vote: 0 })
        .expect("template: hard state");
    for first in (8..=20).step_by(4) {
        let entries: Vec<Entry> = (first..(first + 4).min(21)).map(|i| entry(i, 2)).collect();
        core.append(&entries).expect("template: append");
        step(&mut core);
    }
    core.segment_names()
        .into_iter()
        .map(|name| {
            let bytes = storage.file_contents(&name).expect("template: segment");
            let (id, _) = format::parse_segment_file_name(&name).expect("template: segment name");
            let batches_end = batches_end(id, &bytes);
            TemplateSegment {
                name,
                id,
                bytes,
                batches_end,
            }
        })
        .collect()
}

/// Offset after the last valid batch of a segment.
fn batches_end(id: u64, bytes: &[u8]) -> usize {
    let mut offset = SEGMENT_HEADER_LEN;
    while let BatchProbe::Valid(header) = format::probe_batch(id, bytes, offset) {
        offset += format::valid_batch_len(bytes, offset, &header);
    }
    offset
}

/// Reads the fuzz input front to back; past the end every read yields zeros.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&byte, rest)) => {
                self.data = rest;
                byte
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// A length-prefixed byte string (at most `max` bytes, fewer if the input ends).
    fn bytes(&mut self, max: usize) -> &'a [u8] {
        let len = (usize::from(self.u16()) % (max + 1)).min(self.data.len());
        let (taken, rest) = self.data.split_at(len);
        self.data = rest;
        taken
    }

    /// A "small or extreme" index: mostly near the template's, sometimes anything.
    fn index(&mut self) -> u64 {
        match self.u8() {
            0..=191 => u64::from(self.u8()),
            192..=223 => u64::MAX - u64::from(self.u8()),
            _ => self.u64(),
        }
    }
}

/// A file to create: name and contents.
struct File {
    name: String,
    bytes: Vec<u8>,
}

/// One step of the directory-building program.
fn next_file(input: &mut Input<'_>) -> File {
    let template = template();
    let op = input.u8();
    let source = &template[usize::from(op >> 2) % template.len()];
    match op & 3 {
        0 => mutated_template(input, source),
        1 => raw_file(input),
        2 => {
            // The template segment with a fuzzed batch appended after its last batch.
            let mut bytes = source.bytes.clone();
            bytes.truncate(source.batches_end);
            append_fuzzed_batch(input, source.id, &mut bytes);
            File {
                name: source.name.clone(),
                bytes,
            }
        }
        _ => {
            // A fresh segment: valid header for a fuzzed id and first index, then
            // fuzzed batches.
            let id = input.index();
            let first_index = input.index();
            let mut bytes = format::encode_segment_header(id, first_index).to_vec();
            for _ in 0..1 + input.u8() % 3 {
                append_fuzzed_batch(input, id, &mut bytes);
            }
            File {
                name: format::segment_file_name(id, first_index),
                bytes,
            }
        }
    }
}

/// A template segment with up to 8 bytes overwritten or XORed, maybe cut short, maybe
/// renamed.
fn mutated_template(input: &mut Input<'_>, source: &TemplateSegment) -> File {
    let mut bytes = source.bytes.clone();
    for _ in 0..input.u8() % 9 {
        let at = usize::from(input.u16()) % bytes.len();
        let value = input.u8();
        match value & 1 {
            0 => bytes[at] = value >> 1,
            _ => bytes[at] ^= 1 << (value >> 1 & 7),
        }
    }
    let flags = input.u8();
    if flags & 1 != 0 {
        bytes.truncate(usize::from(input.u16()) % (bytes.len() + 1));
    }
    let name = if flags & 2 != 0 {
        format::segment_file_name(input.index(), input.index())
    } else {
        source.name.clone()
    };
    File { name, bytes }
}

/// Arbitrary bytes under a segment name (fuzzed id and first index) or any name.
fn raw_file(input: &mut Input<'_>) -> File {
    let name = if input.u8() & 1 == 0 {
        format::segment_file_name(input.index(), input.index())
    } else {
        String::from_utf8_lossy(input.bytes(48)).into_owned()
    };
    File {
        name,
        bytes: input.bytes(MAX_RAW_BYTES).to_vec(),
    }
}

/// Appends a batch whose header fields and body come from the input, with the CRC the
/// segment `id` needs, so its records reach replay.
fn append_fuzzed_batch(input: &mut Input<'_>, id: u64, out: &mut Vec<u8>) {
    let record_count = u32::from(input.u8() % 8);
    let entry_count = u32::from(input.u8() % 8);
    let first_index = input.index();
    let body = records_body(input);
    let fields = BatchHeader {
        body_len: body.len() as u32,
        record_count,
        first_index,
        entry_count,
    };
    out.extend_from_slice(&format::encode_batch_header(id, fields, &[&body]));
    out.extend_from_slice(&body);
    out.extend_from_slice(&format::encode_batch_trailer(fields.body_len));
}

/// A batch body: well-formed records with fuzzed fields, or raw bytes.
fn records_body(input: &mut Input<'_>) -> Vec<u8> {
    let mut body = Vec::new();
    let n = input.u8();
    if n & 0x80 != 0 {
        return input.bytes(MAX_RAW_BYTES).to_vec();
    }
    for _ in 0..n % 8 {
        match input.u8() % 4 {
            0 => {
                let (index, term, kind) = (input.index(), input.index(), input.u8());
                let payload = input.bytes(300);
                format::encode_entry(&mut body, index, term, kind, payload);
            }
            1 => {
                let hard_state = HardState {
                    term: input.index(),
                    vote: u64::from(input.u8()),
                };
                format::encode_hard_state(&mut body, hard_state);
            }
            2 => format::encode_truncate_suffix(&mut body, input.index()),
            _ => format::encode_reset(&mut body, input.index()),
        }
    }
    body
}

/// Builds a simulated directory from `data`, opens the WAL on it and checks the result.
/// `data[0]` bit 0 turns on tolerant recovery.
pub fn recover_dir(data: &[u8]) {
    let mut input = Input { data };
    let tolerant = input.u8() & 1 != 0;
    let storage = SimStorage::new();
    let mut created = 0;
    while !input.is_empty() && created < MAX_FILES {
        let file = next_file(&mut input);
        if populate(&storage, &file) {
            created += 1;
        }
    }
    storage.sync_dir().expect("simulated sync_dir");
    let scanned = scan(&storage);
    let opened = WalCore::open(storage.clone(), options(tolerant));
    if !tolerant {
        check_scanner_agrees(scanned, &opened);
    }
    match opened {
        Err(WalError::Corruption { .. }) => {}
        Err(other) => panic!("recovery failed with a non-corruption error: {other}"),
        Ok(core) => check_recovered(core, storage, tolerant),
    }
}

/// The offline inspector's verdict on the directory as it is now.
fn scan(storage: &SimStorage) -> Result<ScanReport, ScanError> {
    let files: Vec<(String, Vec<u8>)> = storage
        .list()
        .expect("simulated list")
        .into_iter()
        .filter_map(|name| storage.file_contents(&name).map(|bytes| (name, bytes)))
        .collect();
    let views: Vec<SegmentBytes<'_>> = files
        .iter()
        .map(|(name, bytes)| SegmentBytes { name, bytes })
        .collect();
    inspect::scan(&views, &mut NoVisitor)
}

/// `inspect::scan` promises recovery's verdict: the same corruption, or the same torn
/// tail actions and the same log.
fn check_scanner_agrees(
    scanned: Result<ScanReport, ScanError>,
    opened: &Result<WalCore<SimStorage>, WalError>,
) {
    let report = match scanned {
        Err(ScanError::NoSegments) => {
            assert!(opened.is_ok(), "recovery failed without segments");
            return;
        }
        Ok(report) => report,
    };
    match (&report.verdict, opened) {
        (
            Verdict::Corruption {
                file,
                offset,
                expected_index,
                reason,
            },
            Err(WalError::Corruption {
                file: r_file,
                offset: r_offset,
                expected_index: r_expected,
                reason: r_reason,
            }),
        ) => assert_eq!(
            (file, offset, expected_index, reason),
            (r_file, r_offset, r_expected, r_reason),
            "scanner and recovery name different corruption"
        ),
        (Verdict::Corruption { .. }, Ok(_)) | (_, Err(_)) => panic!(
            "scanner says {:?}, recovery says {:?}",
            report.verdict,
            opened.as_ref().err()
        ),
        (verdict, Ok(core)) => {
            let expected: Vec<(String, u64, u64, String, bool)> = match verdict {
                Verdict::TornTail { actions, .. } => actions.iter().map(tail_action).collect(),
                _ => Vec::new(),
            };
            let dropped: Vec<(String, u64, u64, String, bool)> = core
                .recovery_report()
                .dropped
                .iter()
                .map(|d| {
                    let region = (d.file.clone(), d.offset, d.len_bytes);
                    (
                        region.0,
                        region.1,
                        region.2,
                        d.reason.clone(),
                        d.file_removed,
                    )
                })
                .collect();
            assert_eq!(dropped, expected, "verdict {verdict:?}");
            assert_eq!(core.first_index(), report.log.first_index);
            assert_eq!(core.last_index(), report.log.last_index());
            assert_eq!(core.hard_state(), report.log.hard_state);
            for index in core.first_index()..=core.last_index() {
                assert_eq!(core.term_at(index).ok(), report.log.term_at(index));
            }
        }
    }
}

fn tail_action(action: &TailAction) -> (String, u64, u64, String, bool) {
    match action {
        TailAction::Zero {
            file,
            offset,
            len_bytes,
            reason,
        } => (file.clone(), *offset, *len_bytes, reason.clone(), false),
        TailAction::Remove {
            file,
            len_bytes,
            reason,
        } => (file.clone(), 0, *len_bytes, reason.clone(), true),
    }
}

/// Creates one file durably; false if the name is taken or not creatable.
fn populate(storage: &SimStorage, file: &File) -> bool {
    let Ok(handle) = storage.create(&file.name) else {
        return false;
    };
    handle
        .write_all_at(&[&file.bytes], 0)
        .expect("simulated write");
    handle.sync_data().expect("simulated sync");
    true
}

/// Everything a recovered log promises, then one append and a clean second recovery.
fn check_recovered(mut core: WalCore<SimStorage>, storage: SimStorage, tolerant: bool) {
    let entries = verified_entries(&core);
    assert_eq!(
        core.durable_index(),
        core.last_index(),
        "recovered log not durable"
    );
    assert_eq!(core.durable_hard_state(), core.hard_state());
    let (first, hard_state) = (core.first_index(), core.hard_state());
    let mut expected = entries;
    // A log whose active segment has id u64::MAX - 1 cannot roll (that id is refused).
    let can_roll = core
        .segment_names()
        .last()
        .and_then(|name| format::parse_segment_file_name(name))
        .is_some_and(|(id, _)| id < u64::MAX - 1);
    let next = core.last_index() + 1;
    if can_roll && next < u64::MAX {
        let entry = Entry {
            index: next,
            term: core.last_term().unwrap_or(hard_state.term),
            kind: 1,
            payload: Bytes::from_static(b"after recovery"),
        };
        core.append(std::slice::from_ref(&entry))
            .expect("append after recovery");
        core.write().expect("write after recovery");
        assert_eq!(core.sync().expect("sync after recovery"), next);
        expected.push(entry);
    }
    drop(core);
    let again = WalCore::open(storage, options(tolerant)).expect("second recovery");
    assert!(
        again.recovery_report().dropped.is_empty(),
        "second recovery repaired again: {:?}",
        again.recovery_report().dropped
    );
    assert_eq!(again.first_index(), first, "first index changed");
    assert_eq!(again.hard_state(), hard_state, "hard state changed");
    assert_eq!(
        verified_entries(&again),
        expected,
        "log changed across reopen"
    );
}

/// Reads every entry and checks indexes and terms; returns them.
fn verified_entries(core: &WalCore<SimStorage>) -> Vec<Entry> {
    let (first, last) = (core.first_index(), core.last_index());
    assert!(first >= 1, "first index 0");
    assert!(last >= first - 1, "last index {last} below first {first}");
    let mut entries: Vec<Entry> = Vec::new();
    for index in first..=last {
        let entry = core.read(index).expect("a recovered entry reads back");
        assert_eq!(entry.index, index);
        assert_eq!(core.term_at(index).ok(), Some(entry.term));
        if let Some(previous) = entries.last() {
            assert!(entry.term >= previous.term, "term went down at {index}");
        }
        entries.push(entry);
    }
    assert_eq!(core.last_term(), entries.last().map(|e| e.term));
    entries
}

// ----- snapshot files --------------------------------------------------------------------

/// Fuzz harness for the snapshot file reader (`fuzz/fuzz_targets/snapshot_file.rs`,
/// replayed over `fuzz/corpus/snapshot_file/` by `wal/tests/fuzz_corpus.rs`).
///
/// Two shapes per input, because random bytes almost never carry a valid CRC: the
/// input itself as a snapshot file, and a valid snapshot built by the store from the
/// input (index, term, configuration and data taken from it) with one byte changed at a
/// position the input chooses. What must hold for each: the byte-level checker
/// ([`crate::snapshot::verify_bytes`]), the store's `verify` and the store's reader agree
/// on whether the file is valid, a valid file's reader yields exactly its data bytes,
/// any changed byte of a valid file is detected, and nothing panics.
pub fn snapshot_file(data: &[u8]) {
    check_snapshot_bytes(data);
    if data.len() < 20 {
        return;
    }
    let index = u64::from(u16::from_le_bytes([data[0], data[1]])) + 1;
    let term = u64::from(data[2]) + 1;
    let config_len = usize::from(data[3] % 32).min(data.len() - 20);
    let configuration = Bytes::copy_from_slice(&data[20..20 + config_len]);
    let payload = &data[20 + config_len..];
    let storage = SimStorage::new();
    let Ok(store) = crate::SnapshotStore::new(storage.clone()) else {
        panic!("a fresh simulated directory opens as a snapshot store");
    };
    let header = crate::SnapshotHeader {
        index,
        term,
        configuration,
    };
    let mut writer = match store.begin(&header) {
        Ok(writer) => writer,
        Err(error) => panic!("a header with a small configuration is accepted: {error}"),
    };
    if let Err(error) = std::io::Write::write_all(&mut writer, payload) {
        panic!("writing to a simulated disk cannot fail: {error}");
    }
    let info = match writer.finish() {
        Ok(info) => info,
        Err(error) => panic!("finishing a snapshot on a simulated disk cannot fail: {error}"),
    };
    let Ok(valid) = store.file_bytes(&info.name) else {
        panic!("a finished snapshot can be read back");
    };
    let read_back = check_snapshot_bytes(&valid).unwrap_or_else(|| {
        panic!("a snapshot the store wrote must verify");
    });
    assert_eq!(
        read_back, payload,
        "the reader yields exactly the data written"
    );
    let position = usize::from(u16::from_le_bytes([data[4], data[5]])) % valid.len();
    let flip = data[6] | 1;
    let mut damaged = valid.to_vec();
    damaged[position] ^= flip;
    assert!(
        check_snapshot_bytes(&damaged).is_none(),
        "a changed byte at offset {position} of a valid snapshot went unnoticed"
    );
}

/// Writes `bytes` as a snapshot file (named after the header it claims, if any) and
/// checks that every reader agrees. Returns the data bytes when the file is valid.
fn check_snapshot_bytes(bytes: &[u8]) -> Option<Vec<u8>> {
    let name = crate::snapshot::parse_layout("probe", bytes)
        .map(|layout| crate::snapshot::snapshot_file_name(layout.header.index, layout.header.term))
        .unwrap_or_else(|_| crate::snapshot::snapshot_file_name(1, 1));
    let by_bytes = crate::snapshot::verify_bytes(&name, bytes);
    let storage = SimStorage::new();
    let Ok(file) = storage.create(&name) else {
        panic!("creating a file on a simulated disk cannot fail");
    };
    if file.write_all_at(&[bytes], 0).is_err() || file.sync_data().is_err() {
        panic!("writing a file on a simulated disk cannot fail");
    }
    let Ok(store) = crate::SnapshotStore::new(storage) else {
        panic!("a simulated directory with one file opens as a snapshot store");
    };
    let by_store = store.verify(&name);
    assert_eq!(
        by_bytes.is_ok(),
        by_store.is_ok(),
        "verify_bytes ({:?}) and the store's verify ({:?}) disagree",
        by_bytes.as_ref().err(),
        by_store.as_ref().err()
    );
    let read = store.open(&name).ok().and_then(|mut reader| {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut out)
            .ok()
            .map(|_| out)
    });
    assert_eq!(
        read.is_some(),
        by_bytes.is_ok(),
        "the reader and verify disagree on whether the file is valid"
    );
    let layout = by_bytes.ok()?;
    let data = read?;
    assert_eq!(data.len() as u64, layout.data_len_bytes);
    Some(data)
}

// ----- corpus replay ---------------------------------------------------------------------

/// Runs `harness` over every file of `fuzz/corpus/<target>/` (the committed corpora, for
/// the replay tests of every crate); fails naming each input that panics, and if the
/// directory holds no input at all.
pub fn replay_corpus(target: &str, harness: fn(&[u8])) {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    paths.retain(|p| p.is_file());
    paths.sort();
    assert!(!paths.is_empty(), "no corpus inputs in {}", dir.display());
    let failures: Vec<String> = paths
        .iter()
        .filter_map(|path| {
            let data =
                std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            std::panic::catch_unwind(|| harness(&data))
                .err()
                .map(|_| path.display().to_string())
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} {target} inputs panicked: {failures:?}",
        failures.len(),
        paths.len()
    );
}
