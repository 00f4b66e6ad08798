//! Disk truth after a failed fsync ("fsyncgate"): Linux marks the pages of a failed
//! writeback clean without writing them, so a process that reopens the files reads bytes
//! the device does not hold. Recovery syncs, evicts the cached pages and only then reads,
//! so nothing it reports durable can vanish in a later crash; the snapshot store verifies
//! and restores what the device holds.

mod common;

use std::io;
use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{entries, small_options};
use tally_wal::storage::{DirLock, FileView};
use tally_wal::{
    FsStorage, GroupCommitOptions, SimStorage, SnapshotHeader, SnapshotStore, Storage, StorageFile,
    Tear, Wal, WalCore, WalOptions, CACHE_RELEASE_LAG_BYTES, CACHE_RELEASE_STEP_BYTES,
};

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

/// Segment files of a WAL directory, oldest first, with their resident page counts.
fn resident_pages_per_segment(dir: &std::path::Path) -> Vec<(String, usize)> {
    let storage = FsStorage::new(dir).expect("storage");
    let mut names: Vec<String> = storage
        .list()
        .expect("list")
        .into_iter()
        .filter(|name| name.ends_with(".wal"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let view = storage.open(&name).expect("open").view().expect("map");
            let resident = resident_pages(&view);
            (name, resident)
        })
        .collect()
}

/// Appends 160 batches of 16 entries of 4000 bytes (about 10 MiB) through the
/// group-commit WAL, each made durable before the next, over 4 MiB segments.
fn write_ten_mib(dir: &std::path::Path, release_synced_pages: bool) -> Wal {
    let options = GroupCommitOptions {
        wal: WalOptions {
            segment_size_bytes: 4 << 20,
            max_entry_size_bytes: 64 << 10,
            release_synced_pages,
            ..WalOptions::default()
        },
        ..GroupCommitOptions::default()
    };
    let wal = Wal::open(dir, options).expect("open");
    for batch in 0..160u64 {
        let payloads: Vec<Bytes> = (0..16u64)
            .map(|i| Bytes::from(vec![(batch * 16 + i) as u8; 4000]))
            .collect();
        wal.append_assign(1, 0, &payloads)
            .expect("append")
            .wait()
            .expect("durable");
    }
    wal
}

#[test]
fn a_wal_drops_the_cached_pages_of_what_it_made_durable_and_still_reads_it() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let wal = write_ten_mib(dir.path(), true);
    let segments = resident_pages_per_segment(dir.path());
    assert!(segments.len() >= 3, "4 MiB segments: {segments:?}");
    let kept_pages = ((CACHE_RELEASE_LAG_BYTES + CACHE_RELEASE_STEP_BYTES) / 4096) as usize;
    let (active, sealed) = segments.split_last().expect("segments");
    for (name, resident) in sealed {
        // Only the page holding the sealed segment's last bytes may stay.
        assert!(*resident <= 1, "sealed {name}: {resident} pages cached");
    }
    // The active segment (about 2 MiB written) keeps at most the lag behind its end, one
    // release step and the page being appended.
    assert!(
        active.1 <= kept_pages + 1,
        "active {}: {} pages cached (lag and step: {kept_pages})",
        active.0,
        active.1
    );
    // Released entries read back from the device, whole.
    for index in [1u64, 1000, 2560] {
        let entry = wal.read(index).expect("read");
        assert_eq!(entry.payload, Bytes::from(vec![(index - 1) as u8; 4000]));
    }
}

#[test]
fn with_release_turned_off_the_durable_pages_stay_cached() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let _wal = write_ten_mib(dir.path(), false);
    let cached: usize = resident_pages_per_segment(dir.path())
        .iter()
        .map(|(_, resident)| resident)
        .sum();
    // About 2,500 pages were written; all of them are still in the page cache.
    assert!(cached > 2000, "{cached} pages cached");
}

/// FsStorage that records, whenever a file is mapped, how many of its pages were in the
/// page cache at that moment.
#[derive(Clone)]
struct ResidencyAtMap {
    inner: FsStorage,
    seen: Arc<Mutex<Vec<(String, usize)>>>,
}

struct ResidencyFile {
    inner: Arc<dyn StorageFile>,
    seen: Arc<Mutex<Vec<(String, usize)>>>,
}

impl StorageFile for ResidencyFile {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn len_bytes(&self) -> io::Result<u64> {
        self.inner.len_bytes()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(bufs, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        self.inner.set_len(len_bytes)
    }
    fn allocate(&self, len_bytes: u64) -> io::Result<()> {
        self.inner.allocate(len_bytes)
    }
    fn view(&self) -> io::Result<FileView> {
        let view = self.inner.view()?;
        let resident = resident_pages(&view);
        self.seen
            .lock()
            .expect("seen")
            .push((self.name().to_string(), resident));
        Ok(view)
    }
    fn raw_fd(&self) -> Option<RawFd> {
        self.inner.raw_fd()
    }
    fn evict_cache(&self) -> io::Result<()> {
        self.inner.evict_cache()
    }
}

impl ResidencyAtMap {
    fn wrap(&self, inner: Arc<dyn StorageFile>) -> Arc<dyn StorageFile> {
        Arc::new(ResidencyFile {
            inner,
            seen: Arc::clone(&self.seen),
        })
    }
}

impl Storage for ResidencyAtMap {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn create(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        Ok(self.wrap(self.inner.create(name)?))
    }
    fn open(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        Ok(self.wrap(self.inner.open(name)?))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
    fn lock(&self) -> io::Result<DirLock> {
        self.inner.lock()
    }
}

#[test]
fn fs_recovery_maps_every_segment_with_none_of_its_pages_cached() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let storage = FsStorage::new(dir.path()).expect("storage");
    let mut wal = WalCore::open(storage.clone(), small_options()).expect("open");
    for batch in 0..20u64 {
        wal.append(&entries(batch * 4 + 1..=batch * 4 + 4, 1, 60))
            .expect("append");
        wal.write().expect("write");
        wal.sync().expect("sync");
    }
    let names = wal.segment_names();
    assert!(names.len() >= 2, "several segments: {names:?}");
    drop(wal);
    // Just written: their pages are cached.
    let cached: usize = names
        .iter()
        .map(|name| resident_pages(&storage.open(name).expect("open").view().expect("map")))
        .sum();
    assert!(cached > 0, "written segments are in the page cache");

    let recording = ResidencyAtMap {
        inner: storage,
        seen: Arc::default(),
    };
    let wal = WalCore::open(recording.clone(), small_options()).expect("recover");
    assert_eq!(wal.last_index(), 80);
    let seen = recording.seen.lock().expect("seen").clone();
    assert_eq!(
        seen.len(),
        names.len(),
        "recovery maps every segment once: {seen:?}"
    );
    assert!(
        seen.iter().all(|(_, resident)| *resident == 0),
        "recovery mapped cached pages: {seen:?}"
    );
}
