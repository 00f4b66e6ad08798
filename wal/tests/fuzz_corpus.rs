//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the same
//! harnesses the fuzz targets run (`tally_wal::fuzzing`), so every input the fuzzer kept
//! (and every crash it found, once fixed) is checked by plain `cargo test` on stable.
//! A harness panic fails the test and names the input file.

use bytes::Bytes;
use tally_wal::format::{self, BatchHeader};
use tally_wal::fuzzing;
use tally_wal::inspect::{self, NoVisitor, SegmentBytes, Verdict};
use tally_wal::{Entry, SimStorage, Storage, WalCore, WalError, WalOptions};

#[test]
fn wal_recovery_corpus_replays_without_panics() {
    fuzzing::replay_corpus("wal_recovery", fuzzing::recover_dir);
}

#[test]
fn snapshot_file_corpus_replays_without_panics() {
    fuzzing::replay_corpus("snapshot_file", fuzzing::snapshot_file);
}

// ----- regressions for what the fuzzer found (inputs also in the corpus) ----------------

fn small_options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 1024,
        max_entry_size_bytes: 256,
        preallocate: false,
        ..WalOptions::default()
    }
}

/// A durable segment file `id`/`first_index` with a valid header and one batch of `body`.
fn put_segment(storage: &SimStorage, id: u64, first_index: u64, body: &[u8], fields: BatchHeader) {
    let name = format::segment_file_name(id, first_index);
    let mut bytes = format::encode_segment_header(id, first_index).to_vec();
    if !body.is_empty() {
        bytes.extend_from_slice(&format::encode_batch_header(id, fields, &[body]));
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(&format::encode_batch_trailer(fields.body_len));
    }
    let file = storage.create(&name).expect("create");
    file.write_all_at(&[&bytes], 0).expect("write");
    file.sync_data().expect("sync");
    storage.sync_dir().expect("sync dir");
}

/// Opens the WAL and runs the scanner; both must report this corruption reason.
fn assert_corruption_both_ways(storage: &SimStorage, reason_part: &str) {
    let names = storage.list().expect("list");
    let files: Vec<(String, Vec<u8>)> = names
        .into_iter()
        .filter_map(|n| storage.file_contents(&n).map(|b| (n, b)))
        .collect();
    let views: Vec<SegmentBytes<'_>> = files
        .iter()
        .map(|(name, bytes)| SegmentBytes { name, bytes })
        .collect();
    let report = inspect::scan(&views, &mut NoVisitor).expect("scan");
    assert!(
        matches!(&report.verdict, Verdict::Corruption { reason, .. } if reason.contains(reason_part)),
        "{:?}",
        report.verdict
    );
    match WalCore::open(storage.clone(), small_options()) {
        Err(WalError::Corruption { reason, .. }) => {
            assert!(reason.contains(reason_part), "{reason}")
        }
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("expected corruption, the log opened"),
    }
}

fn no_batch() -> BatchHeader {
    BatchHeader {
        body_len: 0,
        record_count: 0,
        first_index: 0,
        entry_count: 0,
    }
}

#[test]
fn segment_named_with_first_index_zero_is_corruption_not_an_overflow_panic() {
    let storage = SimStorage::new();
    put_segment(&storage, 1, 0, &[], no_batch());
    assert_corruption_both_ways(&storage, "first index 0");
}

#[test]
fn segment_named_with_id_u64_max_is_corruption_not_an_overflow_panic() {
    let storage = SimStorage::new();
    put_segment(&storage, u64::MAX, 5, &[], no_batch());
    assert_corruption_both_ways(&storage, "id u64::MAX");
    // Two segments with id u64::MAX: the id-gap check must not overflow either.
    put_segment(&storage, u64::MAX, 6, &[], no_batch());
    assert_corruption_both_ways(&storage, "id u64::MAX");
}

#[test]
fn entry_at_index_u64_max_is_corruption_not_an_overflow_panic() {
    let storage = SimStorage::new();
    let mut body = Vec::new();
    format::encode_reset(&mut body, u64::MAX);
    format::encode_entry(&mut body, u64::MAX, 1, 0, b"x");
    let fields = BatchHeader {
        body_len: body.len() as u32,
        record_count: 2,
        first_index: u64::MAX,
        entry_count: 1,
    };
    put_segment(&storage, 1, 1, &body, fields);
    assert_corruption_both_ways(&storage, "leaves no next index");
}

#[test]
fn log_in_segment_id_just_below_max_refuses_to_roll_with_a_typed_error() {
    let storage = SimStorage::new();
    put_segment(&storage, u64::MAX - 1, 1, &[], no_batch());
    let mut core = WalCore::open(storage.clone(), small_options()).expect("open");
    let payload = Bytes::from(vec![7u8; 200]);
    let mut refused = None;
    for index in 1..=20 {
        let entry = Entry {
            index,
            term: 1,
            kind: 0,
            payload: payload.clone(),
        };
        core.append(&[entry]).expect("append");
        if let Err(error) = core.write() {
            refused = Some(error);
            break;
        }
        core.sync().expect("sync");
    }
    assert!(
        matches!(&refused, Some(WalError::Corruption { reason, .. }) if reason.contains("u64::MAX")),
        "{refused:?}"
    );
    drop(core);
    // Nothing was created under the refused id, and the directory still opens.
    let reopened = WalCore::open(storage, small_options()).expect("reopen");
    assert_eq!(
        reopened.segment_names(),
        vec![format::segment_file_name(u64::MAX - 1, 1)]
    );
}

#[test]
fn append_at_index_u64_max_is_refused() {
    let storage = SimStorage::new();
    let mut core = WalCore::open(storage, small_options()).expect("open");
    core.reset(u64::MAX).expect("reset");
    let entry = Entry {
        index: u64::MAX,
        term: 1,
        kind: 0,
        payload: Bytes::new(),
    };
    assert!(matches!(
        core.append(&[entry]),
        Err(WalError::OutOfOrder {
            index: u64::MAX,
            ..
        })
    ));
}
