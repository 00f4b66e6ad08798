//! The writer's data path: "write these bytes at this offset, then fdatasync".
//!
//! Two implementations behind [`IoBackend`]: [`SyncBackend`] (`pwritev` + `fdatasync`,
//! portable) and [`UringBackend`] (io_uring: the write and the `fdatasync` are submitted
//! together as a linked chain, so one `io_uring_enter` does both). [`Backend`] picks one
//! at runtime: `Auto` probes the kernel for io_uring and falls back with a log line.

use std::io;

use crate::storage::StorageFile;

/// Which half of a write+sync failed (a failed sync poisons the WAL).
#[derive(Debug)]
pub enum BackendError {
    /// The write failed; nothing was synced by this call.
    Write(io::Error),
    /// The fdatasync failed.
    Sync(io::Error),
}

/// The writer's data path.
pub trait IoBackend: Send {
    /// Short name for stats and logs ("sync", "uring").
    fn name(&self) -> &'static str;
    /// Writes all `bufs` back to back at `offset` of `file`, then makes them durable.
    fn write_and_sync(
        &mut self,
        file: &dyn StorageFile,
        bufs: &[&[u8]],
        offset: u64,
    ) -> Result<(), BackendError>;
}

/// Backend choice. The default is `Sync`: with 64 blocking callers on 2-core machines it
/// was ahead of io_uring in every round of sessions 8 and 10 and in most medians before
/// (io_uring runs the `fdatasync` on a kernel worker thread, one more hand-off per batch;
/// docs/BENCHMARKS.md, "Issue 15 in session 10"), and it needs nothing from the kernel
/// beyond `pwritev`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// io_uring if the kernel allows it, else `Sync`.
    Auto,
    /// io_uring or fail.
    Uring,
    /// `pwritev` + `fdatasync`.
    #[default]
    Sync,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "uring" | "io_uring" => Ok(Backend::Uring),
            "sync" | "pwritev" => Ok(Backend::Sync),
            other => Err(format!("unknown backend {other:?} (auto|uring|sync)")),
        }
    }
}

/// Builds the backend for `choice`.
pub fn make_backend(choice: Backend) -> io::Result<Box<dyn IoBackend>> {
    match choice {
        Backend::Sync => Ok(Box::new(SyncBackend)),
        Backend::Uring => Ok(Box::new(UringBackend::new()?)),
        Backend::Auto => match UringBackend::new() {
            Ok(uring) => Ok(Box::new(uring)),
            Err(err) => {
                tracing::info!("io_uring unavailable ({err}); using pwritev + fdatasync");
                Ok(Box::new(SyncBackend))
            }
        },
    }
}

/// `pwritev` + `fdatasync` through the [`StorageFile`] methods (works on any storage).
#[derive(Debug, Default)]
pub struct SyncBackend;

impl IoBackend for SyncBackend {
    fn name(&self) -> &'static str {
        "sync"
    }

    fn write_and_sync(
        &mut self,
        file: &dyn StorageFile,
        bufs: &[&[u8]],
        offset: u64,
    ) -> Result<(), BackendError> {
        file.write_all_at(bufs, offset)
            .map_err(BackendError::Write)?;
        file.sync_data().map_err(BackendError::Sync)
    }
}

/// io_uring backend: linked `writev` → `fsync(DATASYNC)`.
pub struct UringBackend {
    ring: io_uring::IoUring,
}

const WRITE_USER_DATA: u64 = 1;
const SYNC_USER_DATA: u64 = 2;

impl UringBackend {
    /// Creates a ring and checks that the kernel supports the opcodes we need.
    pub fn new() -> io::Result<Self> {
        let ring = io_uring::IoUring::new(8)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(io_uring::opcode::Writev::CODE)
            || !probe.is_supported(io_uring::opcode::Fsync::CODE)
        {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks writev or fsync",
            ));
        }
        Ok(UringBackend { ring })
    }

    /// Submits what is queued and waits for `want` completions, returning
    /// (write result, sync result) by user data. Interrupted waits are retried: returning
    /// while the kernel may still read the caller's buffers would be unsound.
    fn submit_and_reap(&mut self, want: usize) -> io::Result<(Option<i32>, Option<i32>)> {
        let mut write_result = None;
        let mut sync_result = None;
        let mut reaped = 0usize;
        let mut submitted_any = false;
        let mut failures = 0u32;
        while reaped < want {
            match self.ring.submit_and_wait(want - reaped) {
                Ok(submitted) => submitted_any |= submitted > 0,
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(err) if !submitted_any => {
                    // Nothing reached the kernel. The caller poisons the WAL and drops
                    // this backend (and its ring) without entering it again, so the
                    // queued entries are never submitted.
                    return Err(err);
                }
                Err(err) => {
                    failures += 1;
                    if failures > 100 {
                        // Operations are in flight on buffers we cannot keep alive past
                        // this call: stopping the process is the only safe outcome.
                        tracing::error!("io_uring wait keeps failing with operations in flight: {err}; aborting");
                        std::process::abort();
                    }
                }
            }
            for cqe in self.ring.completion() {
                reaped += 1;
                match cqe.user_data() {
                    WRITE_USER_DATA => write_result = Some(cqe.result()),
                    SYNC_USER_DATA => sync_result = Some(cqe.result()),
                    _ => {}
                }
            }
        }
        Ok((write_result, sync_result))
    }
}

fn os_error(result: i32) -> io::Error {
    io::Error::from_raw_os_error(-result)
}

impl IoBackend for UringBackend {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn write_and_sync(
        &mut self,
        file: &dyn StorageFile,
        bufs: &[&[u8]],
        mut offset: u64,
    ) -> Result<(), BackendError> {
        let Some(fd) = file.raw_fd() else {
            // Not a real file (simulated storage): same contract through the trait.
            return SyncBackend.write_and_sync(file, bufs, offset);
        };
        let fd = io_uring::types::Fd(fd);
        let mut slices: Vec<&[u8]> = bufs.iter().copied().filter(|b| !b.is_empty()).collect();
        let mut first = 0usize;
        loop {
            let iovecs: Vec<libc::iovec> = slices[first..]
                .iter()
                .take(libc::UIO_MAXIOV as usize)
                .map(|s| libc::iovec {
                    iov_base: s.as_ptr() as *mut libc::c_void,
                    iov_len: s.len(),
                })
                .collect();
            let all_remaining = first + iovecs.len() == slices.len();
            let write = io_uring::opcode::Writev::new(fd, iovecs.as_ptr(), iovecs.len() as u32)
                .offset(offset)
                .build()
                .flags(io_uring::squeue::Flags::IO_LINK)
                .user_data(WRITE_USER_DATA);
            let sync = io_uring::opcode::Fsync::new(fd)
                .flags(io_uring::types::FsyncFlags::DATASYNC)
                .build()
                .user_data(SYNC_USER_DATA);
            {
                let mut queue = self.ring.submission();
                // SAFETY: the iovecs and the buffers they point to (borrowed from the
                // caller for this whole call) stay alive until `submit_and_reap` has
                // reaped both completions below; the fd stays open because `file` is
                // borrowed for the call too.
                let pushed = unsafe { queue.push(&write).is_ok() && queue.push(&sync).is_ok() };
                if !pushed {
                    return Err(BackendError::Write(io::Error::other(
                        "io_uring submission queue full",
                    )));
                }
            }
            let (write_result, sync_result) =
                self.submit_and_reap(2).map_err(BackendError::Write)?;
            let written = match write_result {
                Some(result) if result < 0 => return Err(BackendError::Write(os_error(result))),
                Some(0) => {
                    return Err(BackendError::Write(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "io_uring write returned 0",
                    )))
                }
                Some(result) => result as usize,
                None => {
                    return Err(BackendError::Write(io::Error::other(
                        "io_uring write completion missing",
                    )))
                }
            };
            // A sync that ran and failed is fatal even if the write was short.
            if let Some(result) = sync_result {
                if result < 0 && result != -libc::ECANCELED {
                    return Err(BackendError::Sync(os_error(result)));
                }
            }
            // Advance past what was written (a short write breaks the link and the
            // fsync completes with -ECANCELED; resubmit the rest with a new fsync).
            offset += written as u64;
            let mut left = written;
            while left > 0 && first < slices.len() {
                let head = slices[first];
                if left >= head.len() {
                    left -= head.len();
                    first += 1;
                } else {
                    slices[first] = &head[left..];
                    left = 0;
                }
            }
            if first < slices.len() || !all_remaining {
                continue;
            }
            return match sync_result {
                Some(0) => Ok(()),
                // Full write but the chain was cancelled: sync on its own.
                _ => self.sync_only(fd),
            };
        }
    }
}

impl UringBackend {
    fn sync_only(&mut self, fd: io_uring::types::Fd) -> Result<(), BackendError> {
        let sync = io_uring::opcode::Fsync::new(fd)
            .flags(io_uring::types::FsyncFlags::DATASYNC)
            .build()
            .user_data(SYNC_USER_DATA);
        // SAFETY: an fsync entry references no memory.
        let pushed = unsafe { self.ring.submission().push(&sync).is_ok() };
        if !pushed {
            return Err(BackendError::Sync(io::Error::other(
                "io_uring submission queue full",
            )));
        }
        let (_, sync_result) = self.submit_and_reap(1).map_err(BackendError::Sync)?;
        match sync_result {
            Some(0) => Ok(()),
            Some(result) => Err(BackendError::Sync(os_error(result))),
            None => Err(BackendError::Sync(io::Error::other(
                "io_uring fsync completion missing",
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Backend;

    #[test]
    fn the_library_and_the_server_default_to_the_pwritev_backend() {
        assert_eq!(Backend::default(), Backend::Sync);
        assert_eq!(crate::GroupCommitOptions::default().backend, Backend::Sync);
        assert_eq!("sync".parse::<Backend>(), Ok(Backend::Sync));
    }
}
