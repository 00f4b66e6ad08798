//! The last batch of a log: a torn write (dropped, reported) versus a batch written
//! completely and damaged afterwards (format version 2: `WalError::Corruption`, nothing
//! changed on disk), with the offline scanner reaching the same verdict; and version 1
//! segments, which have no batch trailer, still read (and still cannot tell).

mod common;

use common::{entries, entry, small_options};
use tally_wal::format::{self, BatchHeader, BatchProbe, ATOMIC_SECTOR_BYTES, SEGMENT_HEADER_LEN};
use tally_wal::inspect::{self, NoVisitor, SegmentBytes, Verdict};
use tally_wal::{HardState, SimStorage, Storage, WalCore, WalError, WalOptions};

/// A log of three synced batches in one segment; returns the segment name and the
/// (start, end) of its last batch.
fn three_batches(disk: &SimStorage, payload_len: usize) -> (String, usize, usize) {
    let mut wal = WalCore::open(disk.clone(), small_options()).expect("open");
    for batch in 0..3u64 {
        wal.append(&entries(batch * 2 + 1..=batch * 2 + 2, 1, payload_len))
            .expect("append");
        wal.write().expect("write");
        wal.sync().expect("sync");
    }
    let name = wal.segment_names().remove(0);
    drop(wal);
    let bytes = disk.file_contents(&name).expect("segment");
    let mut offset = SEGMENT_HEADER_LEN;
    let mut last = (0, 0);
    while let BatchProbe::Valid(header) = format::probe_batch(1, &bytes, offset) {
        let end = offset + format::valid_batch_len(&bytes, offset, &header);
        last = (offset, end);
        offset = end;
    }
    (name, last.0, last.1)
}

fn scan_verdict(disk: &SimStorage) -> Verdict {
    let files: Vec<(String, Vec<u8>)> = disk
        .list()
        .expect("list")
        .into_iter()
        .filter_map(|name| disk.file_contents(&name).map(|bytes| (name, bytes)))
        .collect();
    let views: Vec<SegmentBytes<'_>> = files
        .iter()
        .map(|(name, bytes)| SegmentBytes { name, bytes })
        .collect();
    inspect::scan(&views, &mut NoVisitor).expect("scan").verdict
}

#[test]
fn a_byte_flipped_in_the_last_fsynced_batch_is_corruption_not_a_silent_truncation() {
    let disk = SimStorage::new();
    let (name, start, end) = three_batches(&disk, 30);
    let at = (start + end) / 2;
    let original = disk.file_contents(&name).expect("segment")[at];
    disk.corrupt(&name, at as u64, &[original ^ 0x04])
        .expect("corrupt");
    let before = disk.file_contents(&name);

    match WalCore::open(disk.clone(), small_options()) {
        Err(WalError::Corruption {
            file,
            offset,
            expected_index,
            reason,
        }) => {
            assert_eq!(file, name);
            assert_eq!(offset as usize, start);
            assert_eq!(expected_index, 5);
            assert!(reason.contains("not a torn write"), "{reason}");
        }
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(wal) => panic!("opened, last index {}", wal.last_index()),
    }
    assert_eq!(
        disk.file_contents(&name),
        before,
        "a refused open changes nothing"
    );
    assert!(
        matches!(scan_verdict(&disk), Verdict::Corruption { offset, .. } if offset as usize == start),
        "the scanner agrees"
    );

    // An explicit tolerant open drops it and says so.
    let tolerant = WalOptions {
        tolerant_recovery: true,
        ..small_options()
    };
    let wal = WalCore::open(disk, tolerant).expect("tolerant open");
    assert_eq!(wal.last_index(), 4);
    assert!(wal.recovery_report().tolerated_corruption.is_some());
}

#[test]
fn a_torn_last_batch_with_an_unwritten_middle_sector_is_still_dropped_as_torn() {
    // The device persisted the sectors of the last write out of order: its header and
    // trailer reached the disk, one sector in between did not (zeros).
    let disk = SimStorage::new();
    let (name, start, end) = three_batches(&disk, 300);
    let sector = start.div_ceil(ATOMIC_SECTOR_BYTES) * ATOMIC_SECTOR_BYTES;
    assert!(
        sector + ATOMIC_SECTOR_BYTES < end,
        "the last batch spans a whole sector"
    );
    disk.corrupt(&name, sector as u64, &[0u8; ATOMIC_SECTOR_BYTES])
        .expect("unwrite a sector");
    assert!(matches!(scan_verdict(&disk), Verdict::TornTail { .. }));

    let wal = WalCore::open(disk.clone(), small_options()).expect("open");
    assert_eq!(wal.last_index(), 4);
    let dropped = &wal.recovery_report().dropped;
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].offset as usize, start);
    let repaired = disk.file_contents(&name).expect("segment");
    assert!(
        repaired[start..].iter().all(|&b| b == 0),
        "torn bytes zeroed"
    );
}

/// A version 1 segment (no batch trailers) holding entries 1..=n, written durably.
fn put_version1_segment(disk: &SimStorage, n: u64) -> String {
    let name = format::segment_file_name(1, 1);
    let mut bytes = format::encode_segment_header_version(1, 1, 1).to_vec();
    let mut push_batch = |body: &[u8], fields: BatchHeader| {
        bytes.extend_from_slice(&format::encode_batch_header_version(1, 1, fields, &[body]));
        bytes.extend_from_slice(body);
    };
    let mut hard_state = Vec::new();
    format::encode_hard_state(&mut hard_state, HardState { term: 1, vote: 2 });
    push_batch(
        &hard_state,
        BatchHeader {
            body_len: hard_state.len() as u32,
            record_count: 1,
            first_index: 1,
            entry_count: 0,
        },
    );
    for index in 1..=n {
        let e = entry(index, 1, 30);
        let mut body = Vec::new();
        format::encode_entry(&mut body, index, 1, e.kind, &e.payload);
        push_batch(
            &body,
            BatchHeader {
                body_len: body.len() as u32,
                record_count: 1,
                first_index: index,
                entry_count: 1,
            },
        );
    }
    bytes.resize(small_options().segment_size_bytes as usize, 0);
    let file = disk.create(&name).expect("create");
    file.write_all_at(&[&bytes], 0).expect("write");
    file.sync_data().expect("sync");
    disk.sync_dir().expect("sync dir");
    name
}

#[test]
fn a_version_1_segment_is_read_and_new_batches_go_to_a_version_2_segment() {
    let disk = SimStorage::new();
    let old = put_version1_segment(&disk, 3);
    let mut wal = WalCore::open(disk.clone(), small_options()).expect("open v1");
    assert_eq!(wal.last_index(), 3);
    assert_eq!(wal.hard_state(), HardState { term: 1, vote: 2 });
    assert_eq!(wal.read(2).expect("read"), entry(2, 1, 30));
    let names = wal.segment_names();
    assert_eq!(names.len(), 2, "the v1 segment is sealed: {names:?}");
    wal.append(&[entry(4, 1, 30)]).expect("append");
    wal.write().expect("write");
    wal.sync().expect("sync");
    drop(wal);

    let new = disk.file_contents(&names[1]).expect("new segment");
    let header = format::decode_segment_header(&new).expect("header");
    assert_eq!(header.format_version, format::FORMAT_VERSION);
    let v1 = disk.file_contents(&old).expect("old segment");
    assert_eq!(
        format::decode_segment_header(&v1)
            .expect("header")
            .format_version,
        1
    );

    let wal = WalCore::open(disk.clone(), small_options()).expect("reopen");
    assert_eq!(wal.last_index(), 4);
    assert_eq!(wal.hard_state(), HardState { term: 1, vote: 2 });
    assert!(scan_verdict(&disk).is_clean());
}

#[test]
fn damage_in_the_last_batch_of_a_version_1_segment_cannot_be_told_from_a_tear() {
    let disk = SimStorage::new();
    let name = put_version1_segment(&disk, 3);
    let bytes = disk.file_contents(&name).expect("segment");
    let used = bytes.iter().rposition(|&b| b != 0).expect("data");
    disk.corrupt(&name, (used - 10) as u64, &[bytes[used - 10] ^ 0x01])
        .expect("corrupt");
    assert!(matches!(scan_verdict(&disk), Verdict::TornTail { .. }));
    let wal = WalCore::open(disk, small_options()).expect("open");
    assert_eq!(wal.last_index(), 2, "dropped as a torn tail (the v1 limit)");
}
