//! Byte-level damage to a real segment file (FsStorage in a temporary directory):
//! truncation at every offset of the last batches and a single bit flip at every byte.
//! Recovery must yield exactly a durable prefix (torn tail) or a precise corruption error
//! (bad batch followed by valid data, or a last batch that was written completely and
//! then damaged), never wrong data.

mod common;

use std::path::{Path, PathBuf};

use common::{entries, entry, small_options};
use tally_wal::format::{
    self, BatchProbe, BATCH_HEADER_LEN, BATCH_TRAILER_LEN, SEGMENT_HEADER_LEN,
};
use tally_wal::{FsStorage, WalCore, WalError, WalOptions};

/// Temporary directory, on tmpfs when available so the thousands of recoveries (each
/// with fsyncs) stay fast; the code path is the same FsStorage.
fn temp_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

const ENTRIES_PER_BATCH: u64 = 3;
const N_BATCHES: u64 = 5;

/// Writes N_BATCHES synced batches into one segment; returns (segment name, bytes,
/// batch boundaries as (start offset, end offset, last index after the batch)).
fn build_log(dir: &Path) -> (String, Vec<u8>, Vec<(usize, usize, u64)>) {
    let mut wal = WalCore::open(FsStorage::new(dir).expect("dir"), small_options()).expect("open");
    for batch in 0..N_BATCHES {
        let first = batch * ENTRIES_PER_BATCH + 1;
        wal.append(&entries(
            first..=first + ENTRIES_PER_BATCH - 1,
            1 + batch,
            40,
        ))
        .expect("append");
        wal.write().expect("write");
        wal.sync().expect("sync");
    }
    assert_eq!(wal.segment_count(), 1);
    let name = wal.segment_names().remove(0);
    drop(wal);
    let bytes = std::fs::read(dir.join(&name)).expect("read segment");
    // Walk the batches: the first is the segment's start batch (hard state, no entries).
    let mut boundaries = Vec::new();
    let mut offset = SEGMENT_HEADER_LEN;
    let mut last_index = 0;
    while let BatchProbe::Valid(header) = format::probe_batch(1, &bytes, offset) {
        let end = offset + format::valid_batch_len(&bytes, offset, &header);
        last_index += header.entry_count as u64;
        boundaries.push((offset, end, last_index));
        offset = end;
    }
    assert_eq!(boundaries.len() as u64, N_BATCHES + 1);
    (name, bytes, boundaries)
}

fn reset_dir(dir: &Path, name: &str, bytes: &[u8]) {
    for file in std::fs::read_dir(dir).expect("list") {
        let path: PathBuf = file.expect("entry").path();
        if path.extension().is_some_and(|e| e == "wal") {
            std::fs::remove_file(path).expect("remove");
        }
    }
    std::fs::write(dir.join(name), bytes).expect("write segment");
}

fn entry_term(index: u64) -> u64 {
    1 + (index - 1) / ENTRIES_PER_BATCH
}

/// Opens and checks that the log is exactly entries 1..=expected_last.
fn assert_exact_prefix(
    dir: &Path,
    options: &WalOptions,
    expected_last: u64,
    context: &str,
) -> WalCore<FsStorage> {
    let wal = WalCore::open(FsStorage::new(dir).expect("dir"), options.clone())
        .unwrap_or_else(|e| panic!("{context}: open failed: {e}"));
    assert_eq!(wal.first_index(), 1, "{context}");
    assert_eq!(
        wal.last_index(),
        expected_last,
        "{context}: wrong recovered prefix"
    );
    for index in 1..=expected_last {
        assert_eq!(
            wal.read(index).expect("read"),
            entry(index, entry_term(index), 40),
            "{context}: wrong data at {index}"
        );
    }
    wal
}

#[test]
fn truncating_the_file_at_every_offset_of_its_last_batches_recovers_the_complete_batches() {
    let dir = temp_dir();
    let (name, bytes, boundaries) = build_log(dir.path());
    let options = small_options();
    let used_end = boundaries.last().expect("batches").1;
    let cut_from = boundaries[boundaries.len() - 2].0;
    // Every cut inside the last two batches, plus cuts inside the headers.
    let cuts = (0..SEGMENT_HEADER_LEN + BATCH_HEADER_LEN + 20).chain(cut_from..=used_end);
    for cut in cuts {
        reset_dir(dir.path(), &name, &bytes[..cut]);
        let expected_last = boundaries
            .iter()
            .rev()
            .find(|b| b.1 <= cut)
            .map(|b| b.2)
            .unwrap_or(0);
        let wal = assert_exact_prefix(
            dir.path(),
            &options,
            expected_last,
            &format!("cut at {cut}"),
        );
        let torn = boundaries.iter().all(|b| b.1 != cut) && cut != 0;
        if torn && cut >= SEGMENT_HEADER_LEN + BATCH_HEADER_LEN + 17 + BATCH_TRAILER_LEN {
            let dropped = &wal.recovery_report().dropped;
            assert_eq!(
                dropped.len(),
                1,
                "cut at {cut}: torn tail must be reported: {dropped:?}"
            );
            let last_good_end = boundaries
                .iter()
                .rev()
                .find(|b| b.1 <= cut)
                .map(|b| b.1)
                .unwrap_or(SEGMENT_HEADER_LEN);
            assert_eq!(dropped[0].offset as usize, last_good_end, "cut at {cut}");
            // Up to the last non-zero byte (trailing zeros look like preallocated space).
            let nonzero_len = bytes[last_good_end..cut]
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |p| p + 1);
            assert_eq!(dropped[0].len_bytes as usize, nonzero_len, "cut at {cut}");
            let repaired = std::fs::read(dir.path().join(&name)).expect("read");
            assert!(
                repaired[last_good_end..].iter().all(|&b| b == 0),
                "cut at {cut}: torn bytes must be zeroed"
            );
        }
        drop(wal);
        // The repair is durable: a second open finds a clean log.
        let again = assert_exact_prefix(
            dir.path(),
            &options,
            expected_last,
            &format!("reopen after cut at {cut}"),
        );
        assert!(
            again.recovery_report().dropped.is_empty(),
            "cut at {cut}: second open should be clean"
        );
    }
}

#[test]
fn flipping_any_single_bit_yields_a_durable_prefix_or_a_precise_corruption_error() {
    let dir = temp_dir();
    let (name, bytes, boundaries) = build_log(dir.path());
    let options = small_options();
    let used_end = boundaries.last().expect("batches").1;
    let last_batch_start = boundaries.last().expect("batches").0;
    let mut torn_cases = 0;
    let mut corruption_cases = 0;
    let used_end_of = |b: &(usize, usize, u64)| b.1;
    let last_batch_end = used_end_of(boundaries.last().expect("batches"));
    // Bytes of the last batch whose flip still shows a completely written batch: all but
    // the magic (0..4), the body length (8..12) and the trailer.
    let last_batch_frame_intact = |position: usize| {
        let at = position - last_batch_start;
        !(at < 4 || (8..12).contains(&at) || position >= last_batch_end - BATCH_TRAILER_LEN)
    };
    let mut last_batch_corruption_cases = 0;
    for position in 0..used_end + 16 {
        let mut damaged = bytes.clone();
        damaged[position] ^= 1 << (position % 8);
        reset_dir(dir.path(), &name, &damaged);
        let context = format!("bit flip at byte {position}");
        let result = WalCore::open(FsStorage::new(dir.path()).expect("dir"), options.clone());
        if position >= used_end {
            // Garbage after the last batch: a torn tail, every entry intact.
            let wal = result.unwrap_or_else(|e| panic!("{context}: {e}"));
            assert_eq!(wal.last_index(), N_BATCHES * ENTRIES_PER_BATCH, "{context}");
            assert_eq!(wal.recovery_report().dropped.len(), 1, "{context}");
            torn_cases += 1;
        } else if position >= last_batch_start && !last_batch_frame_intact(position) {
            // Damage to the framing of the last batch (its magic, its length, its
            // trailer): recovery cannot tell it from a torn write and drops it.
            drop(result.unwrap_or_else(|e| panic!("{context}: {e}")));
            assert_exact_prefix(
                dir.path(),
                &options,
                (N_BATCHES - 1) * ENTRIES_PER_BATCH,
                &context,
            );
            torn_cases += 1;
        } else {
            // Damage followed by valid batches, or inside a last batch whose framing
            // shows it was written completely: corruption naming file, offset and index.
            let (batch_start, expected_index) = if position < SEGMENT_HEADER_LEN {
                (0, 1)
            } else {
                let batch = boundaries
                    .iter()
                    .position(|b| position >= b.0 && position < b.1)
                    .expect("inside a batch");
                let before = if batch == 0 {
                    0
                } else {
                    boundaries[batch - 1].2
                };
                (boundaries[batch].0, before + 1)
            };
            match result {
                Err(WalError::Corruption {
                    file,
                    offset,
                    expected_index: index,
                    ..
                }) => {
                    assert_eq!(file, name, "{context}");
                    assert_eq!(offset as usize, batch_start, "{context}");
                    assert_eq!(index, expected_index, "{context}");
                }
                Err(other) => panic!("{context}: expected corruption, got {other}"),
                Ok(wal) => panic!(
                    "{context}: expected corruption, opened with last index {}",
                    wal.last_index()
                ),
            }
            assert_eq!(
                std::fs::read(dir.path().join(&name)).expect("read"),
                damaged,
                "{context}: a failed open must not modify the file"
            );
            corruption_cases += 1;
            if position >= last_batch_start {
                last_batch_corruption_cases += 1;
            }
        }
    }
    assert!(
        torn_cases > 15 && corruption_cases > 500 && last_batch_corruption_cases > 150,
        "{torn_cases} torn, {corruption_cases} corrupt ({last_batch_corruption_cases} in the last batch)"
    );
}

#[test]
fn tolerant_open_stops_at_the_first_bad_batch_and_reports_what_it_dropped() {
    let dir = temp_dir();
    let (name, bytes, boundaries) = build_log(dir.path());
    let mut damaged = bytes.clone();
    let (second_entry_batch_start, _, _) = boundaries[2];
    damaged[second_entry_batch_start + BATCH_HEADER_LEN + 5] ^= 0x10;
    reset_dir(dir.path(), &name, &damaged);
    let strict = WalCore::open(FsStorage::new(dir.path()).expect("dir"), small_options());
    assert!(matches!(strict, Err(WalError::Corruption { .. })));
    let tolerant_options = WalOptions {
        tolerant_recovery: true,
        ..small_options()
    };
    let wal = WalCore::open(FsStorage::new(dir.path()).expect("dir"), tolerant_options)
        .expect("tolerant open");
    assert_eq!(
        wal.last_index(),
        ENTRIES_PER_BATCH,
        "only the batches before the bad one survive"
    );
    let report = wal.recovery_report();
    assert!(report.tolerated_corruption.is_some());
    assert_eq!(report.dropped.len(), 1);
    assert_eq!(report.dropped[0].offset as usize, second_entry_batch_start);
}

#[test]
fn damage_in_a_sealed_segment_followed_by_a_later_segment_is_corruption_naming_that_segment() {
    let dir = temp_dir();
    let options = small_options();
    let mut wal =
        WalCore::open(FsStorage::new(dir.path()).expect("dir"), options.clone()).expect("open");
    for index in 1..=60 {
        wal.append(&[entry(index, 1, 100)]).expect("append");
        wal.write().expect("write");
        wal.sync().expect("sync");
    }
    let names = wal.segment_names();
    assert!(names.len() >= 2);
    drop(wal);
    let first_path = dir.path().join(&names[0]);
    let mut first_segment = std::fs::read(&first_path).expect("read");
    // Flip the last byte of the last batch of the first (sealed) segment.
    let used_end = first_segment.iter().rposition(|&b| b != 0).expect("data");
    first_segment[used_end] ^= 0x01;
    std::fs::write(&first_path, &first_segment).expect("write");
    match WalCore::open(FsStorage::new(dir.path()).expect("dir"), options) {
        Err(WalError::Corruption { file, .. }) => assert_eq!(file, names[0]),
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("a torn sealed segment followed by a valid one must not open"),
    }
}
