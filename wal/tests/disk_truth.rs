//! Disk truth after a failed fsync ("fsyncgate"): Linux marks the pages of a failed
//! writeback clean without writing them, so a process that reopens the files reads bytes
//! the device does not hold. Recovery syncs, evicts the cached pages and only then reads,
//! so nothing it reports durable can vanish in a later crash; the snapshot store verifies
//! and restores what the device holds.

mod common;

use common::{entries, small_options};
use tally_wal::storage::FileView;
use tally_wal::{FsStorage, SimStorage, SnapshotHeader, SnapshotStore, Storage, Tear, WalCore};

#[test]
fn entries_of_a_failed_fsync_that_left_clean_stale_pages_are_not_recovered_as_durable() {
    let disk = SimStorage::new();
    let mut wal = WalCore::open(disk.clone(), small_options()).expect("open");
    wal.append(&entries(1..=3, 1, 20)).expect("append");
    wal.write().expect("write");
    wal.sync().expect("sync");
    wal.append(&entries(4..=6, 1, 20)).expect("append");
    wal.write().expect("write");
    disk.fail_next_syncs_losing_pages(1);
    assert!(wal.sync().is_err(), "the injected fsync error is reported");
    drop(wal);

    // The process restarts (no power loss): the page cache still shows entries 4..=6.
    let evictions_before = disk.evict_calls();
    let wal = WalCore::open(disk.clone(), small_options()).expect("reopen");
    assert!(disk.evict_calls() > evictions_before, "recovery evicts");
    assert_eq!(
        wal.last_index(),
        3,
        "recovery read the cache instead of the device"
    );
    assert_eq!(wal.durable_index(), 3);
    let recovered: Vec<_> = wal.read_range(1..4).expect("read");
    assert_eq!(recovered, entries(1..=3, 1, 20));
    drop(wal);

    // What recovery reported durable survives a power loss.
    disk.crash(Tear::DiscardUnsynced);
    let wal = WalCore::open(disk, small_options()).expect("reopen after crash");
    assert_eq!(wal.last_index(), 3);
}

#[test]
fn a_failed_fsync_without_stale_pages_keeps_the_data_visible_until_it_is_synced() {
    // The ordinary model (data stays dirty): eviction must not drop dirty data, and the
    // recovery sync makes it durable.
    let disk = SimStorage::new();
    let mut wal = WalCore::open(disk.clone(), small_options()).expect("open");
    wal.append(&entries(1..=4, 1, 20)).expect("append");
    wal.write().expect("write");
    disk.fail_next_syncs(1);
    assert!(wal.sync().is_err());
    drop(wal);
    let wal = WalCore::open(disk.clone(), small_options()).expect("reopen");
    assert_eq!(wal.last_index(), 4);
    drop(wal);
    disk.crash(Tear::DiscardUnsynced);
    let wal = WalCore::open(disk, small_options()).expect("reopen after crash");
    assert_eq!(wal.last_index(), 4, "recovery synced what it reported");
}

#[test]
fn snapshot_verify_and_restore_read_the_device_not_stale_cached_pages() {
    let disk = SimStorage::new();
    let store = SnapshotStore::new(disk.clone()).expect("store");
    let header = SnapshotHeader {
        index: 10,
        term: 2,
        configuration: bytes::Bytes::from_static(b"voters"),
    };
    let mut writer = store.begin(&header).expect("begin");
    std::io::Write::write_all(&mut writer, &[7u8; 3000]).expect("write");
    let info = writer.finish().expect("finish");

    // A later write into the published file (a stray writer) fails its fsync and leaves
    // clean stale pages: the device still holds the valid file.
    let file = disk.open(&info.name).expect("open");
    file.write_all_at(&[&[0xAA; 64]], 100).expect("write");
    disk.fail_next_syncs_losing_pages(1);
    assert!(file.sync_data().is_err());

    assert_eq!(store.verify(&info.name).expect("verify").index, 10);
    let mut reader = store.open(&info.name).expect("open for restore");
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut data).expect("restore reads");
    assert_eq!(data, vec![7u8; 3000]);
}

/// Pages of `file`'s mapping resident in the page cache (`mincore`).
fn resident_pages(view: &FileView) -> usize {
    let FileView::Mapped(map) = view else {
        panic!("FsStorage maps files");
    };
    // SAFETY: sysconf has no memory arguments.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let pages = map.len().div_ceil(page);
    let mut residency = vec![0u8; pages];
    // SAFETY: the range is the whole live mapping (page aligned by mmap) and `residency`
    // holds one byte per page of it.
    let ret = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            map.len(),
            residency.as_mut_ptr(),
        )
    };
    assert_eq!(ret, 0, "mincore: {}", std::io::Error::last_os_error());
    residency.iter().filter(|&&r| r & 1 == 1).count()
}

#[test]
fn fs_evict_cache_leaves_no_page_of_a_synced_file_resident() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let storage = FsStorage::new(dir.path()).expect("storage");
    let file = storage.create("data").expect("create");
    file.write_all_at(&[&vec![0x5Au8; 1 << 20]], 0)
        .expect("write");
    file.sync_data().expect("sync");
    let view = file.view().expect("map");
    assert!(
        resident_pages(&view) > 0,
        "freshly written pages are cached"
    );
    file.evict_cache().expect("evict");
    assert_eq!(resident_pages(&view), 0, "evicted pages are gone");
    // Reads after eviction come from the device and see the data.
    let mut buf = [0u8; 16];
    file.read_exact_at(&mut buf, 4096).expect("read");
    assert_eq!(buf, [0x5A; 16]);
}
