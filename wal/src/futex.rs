//! Futex wait and wake-all on an `AtomicU32` (Linux `futex(2)`, process-private).
//!
//! Why not `Thread::unpark` per waiter: one batch satisfies up to all blocking callers at
//! once, and waking 62 parked threads one syscall at a time cost ~400 µs per batch on a
//! 2-core VM (more than the fdatasync), because each woken caller preempted the waker
//! before it could wake the next one. One `FUTEX_WAKE` for all of them does the wake-ups
//! in one pass inside the kernel.

use std::sync::atomic::AtomicU32;

/// Sleeps while `word` holds `expected` (returns at once if it does not). May return
/// spuriously (signals, stale wake-ups): callers re-check their condition in a loop.
pub(crate) fn wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT only reads the aligned u32 behind `word`, which the borrow keeps
    // alive for the whole call; a null timeout means "no timeout"; the other arguments
    // are ignored by this operation. Errors (EAGAIN: the value changed, EINTR) are
    // spurious returns, which callers handle.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

/// Wakes every thread sleeping in [`wait`] on `word`.
pub(crate) fn wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address of `word` as the key of the wait queue;
    // no memory is read or written through it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn wait_returns_at_once_when_the_word_already_changed() {
        let word = AtomicU32::new(1);
        super::wait(&word, 0);
    }

    #[test]
    fn wake_all_releases_every_sleeper_after_the_word_changes() {
        let word = Arc::new(AtomicU32::new(0));
        let sleepers: Vec<_> = (0..4)
            .map(|_| {
                let word = Arc::clone(&word);
                std::thread::spawn(move || {
                    while word.load(Ordering::Acquire) == 0 {
                        super::wait(&word, 0);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        word.store(1, Ordering::Release);
        super::wake_all(&word);
        let deadline = Instant::now() + Duration::from_secs(30);
        for sleeper in sleepers {
            while !sleeper.is_finished() {
                assert!(Instant::now() < deadline, "a sleeper was not woken");
                std::thread::sleep(Duration::from_millis(5));
            }
            sleeper.join().expect("sleeper");
        }
    }
}
