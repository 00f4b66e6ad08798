//! Recovery over arbitrary damage never panics, never allocates from an unchecked
//! length, and never returns wrong data: random multi-byte damage, random truncation and
//! fully random segment files either open to a prefix of the original log (every entry
//! byte-identical) or fail with a typed error.

mod common;

use common::{entry, small_options};
use proptest::prelude::*;
use tally_wal::format::segment_file_name;
use tally_wal::{SimStorage, Storage, WalCore, WalError};

const N_ENTRIES: u64 = 40;

/// A synced log of N_ENTRIES entries over several small segments.
fn build() -> (SimStorage, Vec<String>) {
    let disk = SimStorage::new();
    let mut wal = WalCore::open(disk.clone(), small_options()).expect("open");
    for index in 1..=N_ENTRIES {
        wal.append(&[entry(index, 1 + index / 10, (index as usize * 37) % 300)])
            .expect("append");
        if index % 3 == 0 {
            wal.write().expect("write");
            wal.sync().expect("sync");
        }
    }
    wal.write().expect("write");
    wal.sync().expect("sync");
    let names = wal.segment_names();
    drop(wal);
    (disk, names)
}

fn check_open(disk: SimStorage) {
    match WalCore::open(disk, small_options()) {
        Ok(wal) => {
            assert!(wal.last_index() <= N_ENTRIES);
            for index in wal.first_index()..=wal.last_index() {
                let read = wal.read(index).expect("recovered entries are readable");
                assert_eq!(
                    read,
                    entry(index, 1 + index / 10, (index as usize * 37) % 300),
                    "wrong data at {index}"
                );
            }
        }
        Err(WalError::Corruption { file, .. }) => assert!(
            file.ends_with(".wal") || file.starts_with("segment"),
            "{file}"
        ),
        Err(other) => panic!("unexpected error kind: {other}"),
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn random_byte_damage_yields_an_exact_prefix_or_corruption(
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>()), 1..6)
    ) {
        let (disk, names) = build();
        for (file, position, value) in damage {
            let name = &names[file.index(names.len())];
            let len = disk.file_contents(name).map_or(0, |c| c.len());
            // Aim at the used part of the segment most of the time.
            let offset = position.index(len.clamp(1, 3000));
            disk.corrupt(name, offset as u64, &[value]).expect("corrupt");
        }
        check_open(disk);
    }

    #[test]
    fn random_truncation_of_the_last_segment_yields_an_exact_prefix(cut in any::<prop::sample::Index>()) {
        let (disk, names) = build();
        let last = names.last().expect("segments");
        let file = disk.open(last).expect("open");
        let len = disk.file_contents(last).map_or(0, |c| c.len());
        file.set_len(cut.index(len + 1) as u64).expect("truncate");
        file.sync_data().expect("sync");
        drop(file);
        check_open(disk);
    }

    #[test]
    fn a_segment_of_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048), with_header in any::<bool>()) {
        let disk = SimStorage::new();
        let name = segment_file_name(1, 1);
        let file = disk.create(&name).expect("create");
        let mut contents = if with_header { tally_wal::format::encode_segment_header(1, 1).to_vec() } else { Vec::new() };
        contents.extend_from_slice(&bytes);
        file.write_all_at(&[&contents], 0).expect("write");
        drop(file);
        match WalCore::open(disk, small_options()) {
            Ok(wal) => prop_assert_eq!(wal.last_index(), 0, "random bytes produced entries"),
            Err(WalError::Corruption { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error kind: {}", other),
        }
    }
}
