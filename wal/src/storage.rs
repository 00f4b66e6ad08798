//! The storage seam: a directory of files, real or simulated.
//!
//! Everything above this module (format, recovery, the synchronous core) talks to a
//! [`Storage`], never to `std::fs`, so the deterministic Raft simulator can run the real
//! WAL code over [`SimStorage`], a fault-injecting in-memory disk that keeps
//! written-but-unsynced bytes apart from durable ones and can "crash".
//!
//! [`FsStorage`] is the production implementation: plain files, `pwritev`, `fdatasync`,
//! `fallocate`, `flock` on a lock file, and read-only `mmap` views of sealed segments.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;

/// A read-only view of a whole file (a memory map on real files, a copy in the simulator).
pub enum FileView {
    /// A read-only memory map (sealed segments on [`FsStorage`]).
    Mapped(memmap2::Mmap),
    /// An owned snapshot of the bytes.
    Owned(Bytes),
}

impl Deref for FileView {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileView::Mapped(map) => map,
            FileView::Owned(bytes) => bytes,
        }
    }
}

/// One open file of a [`Storage`].
pub trait StorageFile: Send + Sync {
    /// The file's name inside its directory (for error messages).
    fn name(&self) -> &str;
    /// Current length in bytes (including preallocated space).
    fn len_bytes(&self) -> io::Result<u64>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `bufs`, back to back, starting at `offset` (vectored, short writes
    /// are continued internally).
    fn write_all_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()>;
    /// `fdatasync`: makes the written data (and the size needed to read it) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Sets the file length (zero-filling on growth).
    fn set_len(&self, len_bytes: u64) -> io::Result<()>;
    /// Reserves space up to `len_bytes` (`fallocate`), so later writes inside it need no
    /// metadata update and cannot hit `ENOSPC` on ordinary file systems.
    fn allocate(&self, len_bytes: u64) -> io::Result<()>;
    /// A read-only view of the current contents.
    fn view(&self) -> io::Result<FileView>;
    /// The raw descriptor, if this is a real file (used by the io_uring backend).
    fn raw_fd(&self) -> Option<RawFd>;
    /// Drops the file's clean cached pages, so the next reads come from the device.
    ///
    /// After a failed writeback Linux marks the pages clean without having written them
    /// ("fsyncgate"): reads keep returning bytes the disk does not hold until the pages
    /// are evicted. Recovery therefore syncs (to flush what is still dirty), evicts, and
    /// only then reads. Dirty pages are not dropped.
    fn evict_cache(&self) -> io::Result<()>;
    /// Advises that the synced bytes in `offset..offset + len_bytes` will not be read
    /// soon, so their cached pages can be dropped (pages only partly inside the range
    /// stay). A hint: contents and durability are unchanged, and a storage without a page
    /// cache ignores it.
    fn release_cache(&self, offset: u64, len_bytes: u64) -> io::Result<()> {
        let _ = (offset, len_bytes);
        Ok(())
    }
    /// Starts writing the dirty cached pages of `offset..offset + len_bytes` to the device
    /// and, with `wait`, waits until they are written (`sync_file_range`). It makes nothing
    /// durable (the device cache and the metadata still need [`StorageFile::sync_data`]);
    /// it paces a large file written in one go, so the pages do not pile up for one long
    /// final sync that every other writer of the device queues behind. An error is the
    /// device's: treat it as a failed write. A storage without a page cache ignores it.
    fn write_back(&self, offset: u64, len_bytes: u64, wait: bool) -> io::Result<()> {
        let _ = (offset, len_bytes, wait);
        Ok(())
    }
}

/// Held while a directory is open; dropping it releases the lock.
pub struct DirLock {
    _guard: Box<dyn Send + Sync>,
}

/// A directory of files.
pub trait Storage: Send + Sync + 'static {
    /// Human-readable location (for errors).
    fn describe(&self) -> String;
    /// Names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates a new, empty file; fails if it exists.
    fn create(&self, name: &str) -> io::Result<Arc<dyn StorageFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, name: &str) -> io::Result<Arc<dyn StorageFile>>;
    /// Removes a file (durable only after [`Storage::sync_dir`]).
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Renames a file (durable only after [`Storage::sync_dir`]).
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations, renames and removals durable (fsync of the directory).
    fn sync_dir(&self) -> io::Result<()>;
    /// Takes the exclusive directory lock; fails with `WouldBlock` if it is held.
    fn lock(&self) -> io::Result<DirLock>;
}

// ---------------------------------------------------------------------------------------
// Real files
// ---------------------------------------------------------------------------------------

/// Name of the lock file inside a WAL directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// [`Storage`] over a real directory.
#[derive(Clone, Debug)]
pub struct FsStorage {
    dir: PathBuf,
    /// Test-only faults ([`FsStorage::install_process_faults`]); `None` in production.
    faults: Option<Arc<FaultState>>,
}

impl FsStorage {
    /// Uses `dir`, creating it if needed.
    pub fn new(dir: impl AsRef<Path>) -> io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let faults = PROCESS_FAULTS.get().cloned();
        Ok(FsStorage { dir, faults })
    }

    /// The directory path.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Test-only: every `FsStorage` created after this call injects `faults` (one
    /// process-wide budget shared by all of them). Used by `tally-server`'s failpoint
    /// environment variables to fail a real process's fsync or writes. Returns `false`
    /// (and changes nothing) if faults were installed before.
    pub fn install_process_faults(faults: FsFaults) -> bool {
        PROCESS_FAULTS
            .set(Arc::new(FaultState {
                faults,
                armed: AtomicBool::new(false),
                syncs: AtomicU64::new(0),
                written_bytes: AtomicU64::new(0),
            }))
            .is_ok()
    }

    fn file(&self, name: &str, file: File) -> Arc<dyn StorageFile> {
        Arc::new(FsFile {
            name: name.to_string(),
            file,
            faults: self
                .faults
                .as_ref()
                .map(|state| (Arc::clone(state), self.dir.clone())),
        })
    }
}

/// Faults injected into real files, for process-level tests of fail-stop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsFaults {
    /// After this many `sync_data` calls (counted once armed), every later one fails
    /// with `EIO` without syncing.
    pub fsync_eio_after: Option<u64>,
    /// Once this many bytes were written (counted once armed), every later write and
    /// allocation fails with `ENOSPC` without writing.
    pub enospc_after_bytes: Option<u64>,
    /// Counting starts once a file of this name exists in the storage directory (at
    /// once if `None`), so a test can pick the moment and the member.
    pub arm_file: Option<String>,
}

/// The shared budget of [`FsFaults`]. Invariant: `armed` never goes back to false.
#[derive(Debug)]
struct FaultState {
    faults: FsFaults,
    armed: AtomicBool,
    syncs: AtomicU64,
    written_bytes: AtomicU64,
}

static PROCESS_FAULTS: OnceLock<Arc<FaultState>> = OnceLock::new();

impl FaultState {
    fn armed(&self, dir: &Path) -> bool {
        if self.armed.load(Ordering::Relaxed) {
            return true;
        }
        let now = self
            .faults
            .arm_file
            .as_ref()
            .is_none_or(|name| dir.join(name).exists());
        if now {
            self.armed.store(true, Ordering::Relaxed);
            tracing::warn!(faults = ?self.faults, "storage failpoints armed");
        }
        now
    }

    fn before_sync(&self, dir: &Path) -> io::Result<()> {
        let Some(limit) = self.faults.fsync_eio_after else {
            return Ok(());
        };
        if self.armed(dir) && self.syncs.fetch_add(1, Ordering::Relaxed) >= limit {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    fn before_write(&self, dir: &Path, len_bytes: u64) -> io::Result<()> {
        let Some(limit) = self.faults.enospc_after_bytes else {
            return Ok(());
        };
        if self.armed(dir) {
            let before = self.written_bytes.fetch_add(len_bytes, Ordering::Relaxed);
            if before.saturating_add(len_bytes) > limit {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        Ok(())
    }
}

struct FsFile {
    name: String,
    file: File,
    /// Test-only faults and the directory holding the arm file.
    faults: Option<(Arc<FaultState>, PathBuf)>,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl StorageFile for FsFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        if let Some((faults, dir)) = &self.faults {
            faults.before_write(dir, bufs.iter().map(|b| b.len() as u64).sum())?;
        }
        pwritev_all(self.file.as_raw_fd(), bufs, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        if let Some((faults, dir)) = &self.faults {
            faults.before_sync(dir)?;
        }
        self.file.sync_data()
    }

    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        self.file.set_len(len_bytes)
    }

    fn allocate(&self, len_bytes: u64) -> io::Result<()> {
        if let Some((faults, dir)) = &self.faults {
            faults.before_write(dir, 0)?;
        }
        let len = libc::off_t::try_from(len_bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "allocation too large"))?;
        // SAFETY: plain syscall on a descriptor we own; no memory is passed.
        let ret = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, 0, len) };
        match cvt(ret) {
            Ok(_) => Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                // File systems without fallocate: fall back to a sparse file of the size.
                tracing::debug!(file = %self.name, "fallocate unsupported; using set_len");
                if self.len_bytes()? < len_bytes {
                    self.file.set_len(len_bytes)?;
                }
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    fn view(&self) -> io::Result<FileView> {
        // SAFETY: the WAL only maps sealed segments, which are never written again while
        // mapped (new data goes to the active segment; deletion unlinks the name but the
        // mapping keeps the pages). Recovery maps the active segment before any writes.
        // The snapshot store maps only files it no longer writes (complete snapshot
        // files, a received temp file after its last chunk); replacing or deleting one
        // unlinks the name, never truncates the mapped inode.
        let map = unsafe { memmap2::Mmap::map(&self.file)? };
        Ok(FileView::Mapped(map))
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn evict_cache(&self) -> io::Result<()> {
        fadvise_dont_need(self.file.as_raw_fd(), 0, 0)
    }

    fn release_cache(&self, offset: u64, len_bytes: u64) -> io::Result<()> {
        let (offset, len) = file_range(offset, len_bytes)?;
        fadvise_dont_need(self.file.as_raw_fd(), offset, len)
    }

    fn write_back(&self, offset: u64, len_bytes: u64, wait: bool) -> io::Result<()> {
        let (offset, len) = file_range(offset, len_bytes)?;
        let flags = if wait {
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER
        } else {
            libc::SYNC_FILE_RANGE_WRITE
        };
        // SAFETY: plain syscall on a descriptor we own; no memory is passed.
        let ret = unsafe { libc::sync_file_range(self.file.as_raw_fd(), offset, len, flags) };
        match cvt(ret) {
            Ok(_) => Ok(()),
            // A kernel or file system without it: the final sync writes everything, as
            // it would without pacing. Any other error is the device's.
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ENOSYS | libc::EOPNOTSUPP | libc::ESPIPE)
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}

/// A byte range as the `off_t` pair file system calls take.
fn file_range(offset: u64, len_bytes: u64) -> io::Result<(i64, i64)> {
    match (i64::try_from(offset), i64::try_from(len_bytes)) {
        (Ok(offset), Ok(len)) => Ok((offset, len)),
        _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
    }
}

/// `posix_fadvise(POSIX_FADV_DONTNEED)`: drops the clean cached pages wholly inside the
/// range (`len == 0`: to the end of the file); dirty pages stay.
fn fadvise_dont_need(fd: RawFd, offset: i64, len: i64) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor the caller owns; no memory is passed.
    let ret = unsafe { libc::posix_fadvise(fd, offset, len, libc::POSIX_FADV_DONTNEED) };
    // posix_fadvise returns the error number instead of setting errno.
    match ret {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// `pwritev` until every byte of `bufs` is written at `offset`.
pub fn pwritev_all(fd: RawFd, bufs: &[&[u8]], mut offset: u64) -> io::Result<()> {
    let mut slices: Vec<&[u8]> = bufs.iter().copied().filter(|b| !b.is_empty()).collect();
    let mut first = 0usize;
    while first < slices.len() {
        let iovecs: Vec<libc::iovec> = slices[first..]
            .iter()
            .take(libc::UIO_MAXIOV as usize)
            .map(|s| libc::iovec {
                iov_base: s.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            })
            .collect();
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: every iovec points into a slice borrowed for the duration of the call.
        let ret = unsafe { libc::pwritev(fd, iovecs.as_ptr(), iovecs.len() as libc::c_int, off) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let mut written = ret as usize;
        if written == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote 0 bytes",
            ));
        }
        offset += written as u64;
        while written > 0 {
            let head = slices[first];
            if written >= head.len() {
                written -= head.len();
                first += 1;
            } else {
                slices[first] = &head[written..];
                written = 0;
            }
        }
    }
    Ok(())
}

impl Storage for FsStorage {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    fn create(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.dir.join(name))?;
        Ok(self.file(name, file))
    }

    fn open(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join(name))?;
        Ok(self.file(name, file))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn lock(&self) -> io::Result<DirLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join(LOCK_FILE_NAME))?;
        // A lock found held is retried for a short, bounded time before giving up: flock
        // locks belong to the open file description, and a child that another thread of
        // this (or the previous owner's) process forks copies that description and holds
        // it until its `exec` closes the CLOEXEC descriptor. Without the retry, reopening
        // a WAL right after closing it fails spuriously whenever the process also spawns
        // children. A real second owner still gets `WouldBlock` after the wait.
        let deadline = std::time::Instant::now() + LOCK_CONTENTION_WAIT;
        loop {
            // SAFETY: plain syscall on a descriptor we own. flock locks belong to the open
            // file description, so a second open in this process is refused as well.
            let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            match cvt(ret) {
                Ok(_) => break,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(DirLock {
            _guard: Box::new(file),
        })
    }
}

/// How long `FsStorage::lock` keeps retrying a held lock (see there for why).
const LOCK_CONTENTION_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

// ---------------------------------------------------------------------------------------
// Simulated disk
// ---------------------------------------------------------------------------------------

/// How a simulated crash treats bytes written since the last sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tear {
    /// Every unsynced byte is lost.
    DiscardUnsynced,
    /// The first `n` unsynced bytes, in write order, survive (the last kept write is cut
    /// at an arbitrary byte); the rest is lost.
    KeepUnsyncedBytes(u64),
    /// Like `KeepUnsyncedBytes`, with the count drawn from this seed (reproducible).
    Seeded(u64),
}

#[derive(Default)]
struct SimInode {
    /// What reads see now.
    current: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// `current` holds bytes a failed sync marked clean without writing them: it differs
    /// from `durable` outside the unsynced ranges. False: `current` is `durable` with the
    /// unsynced ranges on top.
    stale_cache: bool,
}

/// One unsynced modification, in global write order.
struct UnsyncedRange {
    inode: u64,
    offset: u64,
    len: u64,
}

#[derive(Default)]
struct SimState {
    inodes: HashMap<u64, SimInode>,
    next_inode: u64,
    /// Directory as processes see it now.
    dir: BTreeMap<String, u64>,
    /// Directory as it survives a crash (after the last `sync_dir`).
    durable_dir: BTreeMap<String, u64>,
    /// Unsynced byte ranges in write order (for sync and for tearing).
    unsynced: Vec<UnsyncedRange>,
    /// Incremented by every crash; handles of older boots refuse all work.
    boot: u64,
    /// Lock generation held, if any.
    lock_holder: Option<u64>,
    next_lock_generation: u64,
    fail_next_syncs: u32,
    /// The failing syncs mark the pages clean without writing them (see
    /// [`SimStorage::fail_next_syncs_losing_pages`]).
    failed_sync_marks_clean: bool,
    fail_next_writes: u32,
    fail_next_write_backs: u32,
    /// Every `write_back` call: `(offset, len_bytes, wait)`.
    write_backs: Vec<(u64, u64, bool)>,
    space_limit_bytes: Option<u64>,
    write_calls: u64,
    sync_calls: u64,
    evict_calls: u64,
    bytes_written: u64,
}

/// A deterministic, fault-injecting in-memory disk. Cloning yields another handle to the
/// same disk, so a test keeps one, crashes it and reopens the WAL on it.
#[derive(Clone, Default)]
pub struct SimStorage {
    state: Arc<Mutex<SimState>>,
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn stale_handle() -> io::Error {
    io::Error::other("simulated disk crashed: this handle belongs to a dead process")
}

impl SimState {
    fn used_bytes(&self) -> u64 {
        self.dir
            .values()
            .filter_map(|ino| self.inodes.get(ino))
            .map(|inode| inode.current.len() as u64)
            .sum()
    }

    fn check_space(&self, inode: u64, new_len: u64) -> io::Result<()> {
        if let Some(limit) = self.space_limit_bytes {
            let old_len = self
                .inodes
                .get(&inode)
                .map_or(0, |i| i.current.len() as u64);
            if new_len > old_len && self.used_bytes() + (new_len - old_len) > limit {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        Ok(())
    }

    fn sync_inode(&mut self, inode_id: u64) {
        let Some(inode) = self.inodes.get_mut(&inode_id) else {
            return;
        };
        for range in self.unsynced.iter().filter(|r| r.inode == inode_id) {
            copy_range(&inode.current, &mut inode.durable, range.offset, range.len);
        }
        inode.durable.resize(inode.current.len(), 0);
        self.unsynced.retain(|r| r.inode != inode_id);
    }
}

/// Copies `current[offset..offset+len]` into `durable`, growing it as needed.
fn copy_range(current: &[u8], durable: &mut Vec<u8>, offset: u64, len: u64) {
    let start = offset as usize;
    let end = ((offset + len) as usize).min(current.len());
    if start >= end {
        return;
    }
    if durable.len() < end {
        durable.resize(end, 0);
    }
    durable[start..end].copy_from_slice(&current[start..end]);
}

impl SimStorage {
    /// A new, empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a power loss: unsynced directory changes revert, unsynced bytes are
    /// lost except what `tear` keeps, handles of the old "process" stop working and the
    /// directory lock is released.
    pub fn crash(&self, tear: Tear) {
        let mut state = self.state.lock();
        let unsynced_total: u64 = state.unsynced.iter().map(|r| r.len).sum();
        let mut keep_bytes = match tear {
            Tear::DiscardUnsynced => 0,
            Tear::KeepUnsyncedBytes(n) => n.min(unsynced_total),
            Tear::Seeded(seed) => splitmix64(seed) % (unsynced_total + 1),
        };
        let ranges = std::mem::take(&mut state.unsynced);
        for range in ranges {
            if keep_bytes == 0 {
                break;
            }
            let kept = range.len.min(keep_bytes);
            keep_bytes -= kept;
            if let Some(inode) = state.inodes.get_mut(&range.inode) {
                let SimInode {
                    current, durable, ..
                } = inode;
                copy_range(current, durable, range.offset, kept);
            }
        }
        state.dir = state.durable_dir.clone();
        let live: std::collections::HashSet<u64> = state.dir.values().copied().collect();
        state.inodes.retain(|id, _| live.contains(id));
        for inode in state.inodes.values_mut() {
            inode.current = inode.durable.clone();
            inode.stale_cache = false;
        }
        state.boot += 1;
        state.lock_holder = None;
    }

    /// The next `n` `sync_data` calls fail with `EIO` (their data stays unsynced).
    pub fn fail_next_syncs(&self, n: u32) {
        let mut state = self.state.lock();
        state.fail_next_syncs = n;
        state.failed_sync_marks_clean = false;
    }

    /// The next `n` `sync_data` calls fail with `EIO` the way Linux fails a writeback
    /// ("fsyncgate"): the file's unsynced pages are marked clean without being written.
    /// Reads keep seeing their bytes until [`StorageFile::evict_cache`], a later sync
    /// does not write them, and a crash loses them.
    pub fn fail_next_syncs_losing_pages(&self, n: u32) {
        let mut state = self.state.lock();
        state.fail_next_syncs = n;
        state.failed_sync_marks_clean = true;
    }

    /// The next `n` writes fail with `EIO` without writing anything.
    pub fn fail_next_writes(&self, n: u32) {
        self.state.lock().fail_next_writes = n;
    }

    /// Writes or allocations that would grow the disk beyond `limit_bytes` fail with
    /// `ENOSPC` (`None` removes the limit).
    pub fn set_space_limit(&self, limit_bytes: Option<u64>) {
        self.state.lock().space_limit_bytes = limit_bytes;
    }

    /// Bytes currently used by files in the directory.
    pub fn used_bytes(&self) -> u64 {
        self.state.lock().used_bytes()
    }

    /// Number of write calls so far (successful or not).
    pub fn write_calls(&self) -> u64 {
        self.state.lock().write_calls
    }

    /// Number of `sync_data` calls so far (successful or not).
    pub fn sync_calls(&self) -> u64 {
        self.state.lock().sync_calls
    }

    /// Every [`StorageFile::write_back`] call so far, in order: `(offset, len_bytes, wait)`.
    pub fn write_backs(&self) -> Vec<(u64, u64, bool)> {
        self.state.lock().write_backs.clone()
    }

    /// The next `n` [`StorageFile::write_back`] calls fail with `EIO` (a writeback error
    /// the device reported; nothing becomes durable either way).
    pub fn fail_next_write_backs(&self, n: u32) {
        self.state.lock().fail_next_write_backs = n;
    }

    /// Number of [`StorageFile::evict_cache`] calls so far.
    pub fn evict_calls(&self) -> u64 {
        self.state.lock().evict_calls
    }

    /// Total bytes written.
    pub fn bytes_written(&self) -> u64 {
        self.state.lock().bytes_written
    }

    /// Unsynced bytes pending (what a crash may lose).
    pub fn unsynced_bytes(&self) -> u64 {
        self.state.lock().unsynced.iter().map(|r| r.len).sum()
    }

    /// The current contents of a file (test helper).
    pub fn file_contents(&self, name: &str) -> Option<Vec<u8>> {
        let state = self.state.lock();
        let ino = state.dir.get(name)?;
        state.inodes.get(ino).map(|i| i.current.clone())
    }

    /// Overwrites bytes of a file durably, as bit rot or a misdirected write would
    /// (test helper for corruption scenarios).
    pub fn corrupt(&self, name: &str, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.state.lock();
        let ino = *state
            .dir
            .get(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let inode = state.inodes.get_mut(&ino).ok_or_else(stale_handle)?;
        let end = offset as usize + bytes.len();
        for buf in [&mut inode.current, &mut inode.durable] {
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[offset as usize..end].copy_from_slice(bytes);
        }
        Ok(())
    }

    fn handle(&self, name: &str, inode: u64, boot: u64) -> Arc<dyn StorageFile> {
        Arc::new(SimFile {
            storage: self.clone(),
            name: name.to_string(),
            inode,
            boot,
        })
    }
}

struct SimFile {
    storage: SimStorage,
    name: String,
    inode: u64,
    boot: u64,
}

impl SimFile {
    fn with_state<T>(&self, f: impl FnOnce(&mut SimState) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.storage.state.lock();
        if state.boot != self.boot {
            return Err(stale_handle());
        }
        f(&mut state)
    }
}

impl StorageFile for SimFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn len_bytes(&self) -> io::Result<u64> {
        self.with_state(|s| {
            Ok(s.inodes
                .get(&self.inode)
                .ok_or_else(stale_handle)?
                .current
                .len() as u64)
        })
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with_state(|s| {
            let inode = s.inodes.get(&self.inode).ok_or_else(stale_handle)?;
            let start = usize::try_from(offset)
                .map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            let end = start + buf.len();
            if end > inode.current.len() {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            buf.copy_from_slice(&inode.current[start..end]);
            Ok(())
        })
    }

    fn write_all_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        self.with_state(|s| {
            s.write_calls += 1;
            if s.fail_next_writes > 0 {
                s.fail_next_writes -= 1;
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
            let end = offset + total;
            s.check_space(self.inode, end)?;
            let inode = s.inodes.get_mut(&self.inode).ok_or_else(stale_handle)?;
            if (inode.current.len() as u64) < end {
                inode.current.resize(end as usize, 0);
            }
            let mut pos = offset as usize;
            for buf in bufs {
                inode.current[pos..pos + buf.len()].copy_from_slice(buf);
                pos += buf.len();
            }
            s.bytes_written += total;
            s.unsynced.push(UnsyncedRange {
                inode: self.inode,
                offset,
                len: total,
            });
            Ok(())
        })
    }

    fn write_back(&self, offset: u64, len_bytes: u64, wait: bool) -> io::Result<()> {
        // Written back or not, unsynced bytes stay unsynced: a crash loses them.
        self.with_state(|s| {
            s.write_backs.push((offset, len_bytes, wait));
            if s.fail_next_write_backs > 0 {
                s.fail_next_write_backs -= 1;
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with_state(|s| {
            s.sync_calls += 1;
            if s.fail_next_syncs > 0 {
                s.fail_next_syncs -= 1;
                if s.failed_sync_marks_clean {
                    // Clean but never written: `current` keeps the stale bytes.
                    s.unsynced.retain(|r| r.inode != self.inode);
                    if let Some(inode) = s.inodes.get_mut(&self.inode) {
                        inode.stale_cache = true;
                    }
                }
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            s.sync_inode(self.inode);
            Ok(())
        })
    }

    fn set_len(&self, len_bytes: u64) -> io::Result<()> {
        self.with_state(|s| {
            s.check_space(self.inode, len_bytes)?;
            let inode = s.inodes.get_mut(&self.inode).ok_or_else(stale_handle)?;
            let old_len = inode.current.len() as u64;
            inode.current.resize(len_bytes as usize, 0);
            let (lo, hi) = (old_len.min(len_bytes), old_len.max(len_bytes));
            s.unsynced.push(UnsyncedRange {
                inode: self.inode,
                offset: lo,
                len: hi - lo,
            });
            Ok(())
        })
    }

    fn allocate(&self, len_bytes: u64) -> io::Result<()> {
        if self.len_bytes()? < len_bytes {
            self.set_len(len_bytes)?;
        }
        Ok(())
    }

    fn view(&self) -> io::Result<FileView> {
        self.with_state(|s| {
            let inode = s.inodes.get(&self.inode).ok_or_else(stale_handle)?;
            Ok(FileView::Owned(Bytes::copy_from_slice(&inode.current)))
        })
    }

    fn raw_fd(&self) -> Option<RawFd> {
        None
    }

    fn evict_cache(&self) -> io::Result<()> {
        self.with_state(|s| {
            s.evict_calls += 1;
            let SimState {
                inodes, unsynced, ..
            } = s;
            let inode = inodes.get_mut(&self.inode).ok_or_else(stale_handle)?;
            if !inode.stale_cache {
                return Ok(()); // reads already see the device plus the dirty ranges
            }
            // What the device holds, with the still-dirty ranges (which stay cached) on top.
            let mut fresh = inode.durable.clone();
            fresh.resize(inode.current.len(), 0);
            for range in unsynced.iter().filter(|r| r.inode == self.inode) {
                copy_range(&inode.current, &mut fresh, range.offset, range.len);
            }
            inode.current = fresh;
            inode.stale_cache = false;
            Ok(())
        })
    }
}

struct SimLockGuard {
    storage: SimStorage,
    generation: u64,
}

impl Drop for SimLockGuard {
    fn drop(&mut self) {
        let mut state = self.storage.state.lock();
        if state.lock_holder == Some(self.generation) {
            state.lock_holder = None;
        }
    }
}

impl Storage for SimStorage {
    fn describe(&self) -> String {
        "sim:".to_string()
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state.lock().dir.keys().cloned().collect())
    }

    fn create(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        let (inode, boot) = {
            let mut state = self.state.lock();
            if state.dir.contains_key(name) {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            let inode = state.next_inode;
            state.next_inode += 1;
            state.inodes.insert(inode, SimInode::default());
            state.dir.insert(name.to_string(), inode);
            (inode, state.boot)
        };
        Ok(self.handle(name, inode, boot))
    }

    fn open(&self, name: &str) -> io::Result<Arc<dyn StorageFile>> {
        let (inode, boot) = {
            let state = self.state.lock();
            let inode = *state
                .dir
                .get(name)
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
            (inode, state.boot)
        };
        Ok(self.handle(name, inode, boot))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.state.lock();
        state
            .dir
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.state.lock();
        let inode = state
            .dir
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        state.dir.insert(to.to_string(), inode);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut state = self.state.lock();
        state.durable_dir = state.dir.clone();
        Ok(())
    }

    fn lock(&self) -> io::Result<DirLock> {
        let mut state = self.state.lock();
        if state.lock_holder.is_some() {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        let generation = state.next_lock_generation;
        state.next_lock_generation += 1;
        state.lock_holder = Some(generation);
        Ok(DirLock {
            _guard: Box::new(SimLockGuard {
                storage: self.clone(),
                generation,
            }),
        })
    }
}
