//! Power loss at every step of writing and of receiving a snapshot: after the crash the
//! store lists either the old set of snapshots or the new one (complete and valid),
//! never a half file, under every `Tear` mode.

use std::io::{self, Read, Write};
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tally_wal::snapshot::{snapshot_file_name, SnapshotOptions};
use tally_wal::storage::{DirLock, FileView};
use tally_wal::{SimStorage, SnapshotHeader, SnapshotStore, Storage, StorageFile, Tear};

/// Counts every mutating storage call; the call numbered `crash_at` crashes the disk
/// (with `tear`) instead of running, and so does every call after it.
#[derive(Clone)]
struct CrashingStorage {
    sim: SimStorage,
    steps: Arc<AtomicU64>,
    crash_at: u64,
    tear: Tear,
}

impl CrashingStorage {
    fn step(&self) -> io::Result<()> {
        let step = self.steps.fetch_add(1, Ordering::SeqCst);
        if step == self.crash_at {
            self.sim.crash(self.tear);
        }
        if step >= self.crash_at {
            return Err(io::Error::other("crashed"));
        }
        Ok(())
    }

    fn wrap(&self, file: Arc<dyn StorageFile>) -> Arc<dyn StorageFile> {
        Arc::new(CrashingFile {
            storage: self.clone(),
            inner: file,
        })
    }
}

struct CrashingFile {
    storage: CrashingStorage,
    inner: Arc<dyn StorageFile>,
}

impl StorageFile for CrashingFile {
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
        self.storage.step()?;
        self.inner.write_all_at(bufs, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.storage.step()?;
        self.inner.sync_data()
    }
    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        self.storage.step()?;
        self.inner.set_len(len_bytes)
    }
    fn allocate(&self, len_bytes: u64) -> io::Result<()> {
        self.storage.step()?;
        self.inner.allocate(len_bytes)
    }
    fn view(&self) -> io::Result<FileView> {
        self.inner.view()
    }
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
    fn evict_cache(&self) -> io::Result<()> {
        self.inner.evict_cache()
    }
}

impl Storage for CrashingStorage {
    fn describe(&self) -> String {
        "crashing-sim:".to_string()
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.sim.list()
    }
    fn create(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        self.step()?;
        Ok(self.wrap(self.sim.create(name)?))
    }
    fn open(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        Ok(self.wrap(self.sim.open(name)?))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.step()?;
        self.sim.remove(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.step()?;
        self.sim.rename(from, to)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.step()?;
        self.sim.sync_dir()
    }
    fn lock(&self) -> io::Result<DirLock> {
        self.sim.lock()
    }
}

fn data_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn header(index: u64) -> SnapshotHeader {
    SnapshotHeader {
        index,
        term: 2,
        configuration: Bytes::from_static(b"voters 1 2 3"),
    }
}

const OLD_INDEX: u64 = 10;
const NEW_INDEX: u64 = 20;

fn tiny_buffers() -> SnapshotOptions {
    SnapshotOptions {
        write_buffer_bytes: 64,
        ..SnapshotOptions::default()
    }
}

/// A disk holding one durable snapshot (the "old set").
fn disk_with_old_snapshot() -> SimStorage {
    let sim = SimStorage::new();
    let store = SnapshotStore::new(sim.clone()).expect("store");
    let mut writer = store.begin(&header(OLD_INDEX)).expect("begin");
    writer.write_all(b"old state").expect("write");
    writer.finish().expect("finish");
    sim
}

/// After the crash: either the old set, or the old set plus the complete new snapshot.
/// Returns true when the new one is there.
fn check_old_or_new(sim: &SimStorage, new_data: &[u8]) -> bool {
    let store = SnapshotStore::new(sim.clone()).expect("reopen after crash");
    assert!(
        sim.list()
            .expect("list")
            .iter()
            .all(|n| !n.ends_with(".tmp")),
        "temp files deleted on open"
    );
    let indexes: Vec<u64> = store
        .list()
        .expect("list")
        .iter()
        .map(|i| i.index)
        .collect();
    let old = snapshot_file_name(OLD_INDEX, 2);
    store.verify(&old).expect("old snapshot intact");
    match indexes.as_slice() {
        [OLD_INDEX] => false,
        [NEW_INDEX, OLD_INDEX] => {
            let name = snapshot_file_name(NEW_INDEX, 2);
            assert_eq!(
                store.verify(&name).expect("new verifies"),
                header(NEW_INDEX)
            );
            let mut data = Vec::new();
            store
                .open(&name)
                .expect("open")
                .read_to_end(&mut data)
                .expect("read");
            assert_eq!(data, new_data);
            true
        }
        other => panic!("half state after crash: {other:?}"),
    }
}

fn tears() -> Vec<Tear> {
    let mut tears = vec![Tear::DiscardUnsynced];
    tears.extend([1, 7, 40, 64, 65, 200, 10_000].map(Tear::KeepUnsyncedBytes));
    tears.extend((0..6).map(Tear::Seeded));
    tears
}

/// Runs `scenario` with a crash at every mutating storage call, for every tear mode,
/// and checks the outcome. Returns (crash points tried, outcomes with the new file).
fn crash_everywhere(
    new_data: &[u8],
    scenario: impl Fn(&SnapshotStore<CrashingStorage>, &SimStorage) -> bool,
) -> (u64, u64) {
    let mut tried = 0;
    let mut with_new = 0;
    for tear in tears() {
        for crash_at in 0.. {
            let sim = disk_with_old_snapshot();
            let storage = CrashingStorage {
                sim: sim.clone(),
                steps: Arc::new(AtomicU64::new(0)),
                crash_at,
                tear,
            };
            let store = SnapshotStore::new_with(storage, tiny_buffers()).expect("store");
            let completed = scenario(&store, &sim);
            drop(store);
            if completed {
                // Crash after the last step: everything must already be durable.
                sim.crash(tear);
                assert!(check_old_or_new(&sim, new_data), "finished means durable");
                break;
            }
            tried += 1;
            with_new += u64::from(check_old_or_new(&sim, new_data));
        }
    }
    eprintln!("crash points tried: {tried}, new snapshot visible after: {with_new}");
    (tried, with_new)
}

#[test]
fn crash_at_every_step_of_writing_leaves_the_old_set_or_the_complete_new_snapshot() {
    let data = data_bytes(1000);
    let (tried, with_new) = crash_everywhere(&data, |store, _| {
        let Ok(mut writer) = store.begin(&header(NEW_INDEX)) else {
            return false;
        };
        // Small chunks go through the 64-byte buffer, large ones straight to the file.
        for chunk in data[..300].chunks(10).chain(data[300..].chunks(100)) {
            if writer.write_all(chunk).is_err() {
                return false;
            }
        }
        writer.finish().is_ok()
    });
    // 1 create + >= 10 writes (buffered and direct) + fsync + rename + dir fsync, per
    // tear mode.
    assert!(tried >= 14 * tears().len() as u64, "tried {tried}");
    // Only a crash at the very last call (the dir fsync: the rename may not survive)
    // can leave the new file visible before `finish` returns; the simulated dir fsync
    // either ran fully or not at all, so here never.
    assert_eq!(with_new, 0);
}

#[test]
fn crash_at_every_step_of_receiving_leaves_the_old_set_or_the_complete_new_snapshot() {
    let data = data_bytes(3000);
    let file = {
        let leader = SnapshotStore::new(SimStorage::new()).expect("leader");
        let mut writer = leader.begin(&header(NEW_INDEX)).expect("begin");
        writer.write_all(&data).expect("write");
        let info = writer.finish().expect("finish");
        leader.file_bytes(&info.name).expect("bytes")
    };
    let (tried, _) = crash_everywhere(&data, |store, _| {
        let Ok(mut receiver) = store.begin_receive(file.len() as u64) else {
            return false;
        };
        for (i, chunk) in file.chunks(500).enumerate() {
            if receiver.append(i as u64 * 500, chunk).is_err() {
                return false;
            }
        }
        receiver.install().is_ok()
    });
    assert!(tried >= 10 * tears().len() as u64, "tried {tried}");
}

#[test]
fn crash_while_another_writer_fsyncs_the_directory_leaves_no_half_snapshot_visible() {
    // The WAL shares the directory and fsyncs it when it creates a segment: the temp
    // file's name (and, before the snapshot's own dir fsync, its rename) can become
    // durable through someone else's fsync. Temp files must still never be listed, and
    // a renamed file must already hold every byte.
    let data = data_bytes(1000);
    let (tried, _) = crash_everywhere(&data, |store, sim| {
        let Ok(mut writer) = store.begin(&header(NEW_INDEX)) else {
            return false;
        };
        for chunk in data.chunks(50) {
            sim.sync_dir().expect("the other writer's directory fsync");
            if writer.write_all(chunk).is_err() {
                return false;
            }
        }
        writer.finish().is_ok()
    });
    assert!(tried >= 20 * tears().len() as u64, "tried {tried}");
}
