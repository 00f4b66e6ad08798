//! The futex words blocking WAL callers sleep on, and the wake that releases a batch's
//! sleepers with the help of the first of them to wake up.
//!
//! Why: one `FUTEX_WAKE` for the ~63 sleepers of a batch does the wake-ups one task at a
//! time inside the writer's system call (~100 us per batch on a 2-core VM, each one a
//! `try_to_wake_up`, many of them an inter-processor interrupt), and the next batch
//! cannot start before the last woken caller has queued again. So the sleepers of one
//! parity are spread over [`LANES`] words: the writer wakes lane 0 itself and leaves the
//! other lanes in a `delegated` mask; the first sleeper of that parity to return from its
//! wait takes the mask and wakes those lanes on the other core while the writer is still
//! waking lane 0. Whoever takes the mask does those wakes, and the writer takes whatever
//! is left after its own wake, so no lane is ever left asleep.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::futex;

/// Futex words per batch parity.
pub(crate) const LANES: usize = 2;

/// Below this many sleepers the writer wakes every lane itself (a hand-over is not worth
/// a second system call).
const DELEGATE_MIN_SLEEPERS: u64 = 16;

/// Per batch parity: one futex word per lane, and the lanes whose wake is still to do.
pub(crate) struct BatchWake {
    /// Invariant: bumped (then woken) whenever the sleepers of that parity are released,
    /// so a sleeper that read a word before a release either sees it changed or is woken.
    words: [[AtomicU32; LANES]; 2],
    /// Invariant: a bit set here belongs to a release whose words were already bumped;
    /// whoever clears it with `swap` wakes that lane.
    delegated: [AtomicU32; 2],
}

impl BatchWake {
    pub(crate) fn new() -> Self {
        BatchWake {
            words: Default::default(),
            delegated: Default::default(),
        }
    }

    /// The lane a sleeper registering as the `registered`-th of its parity uses.
    pub(crate) fn lane_for(registered: u64) -> usize {
        (registered % LANES as u64) as usize
    }

    /// The word a sleeper of `parity` in `lane` reads (under the durable lock) and sleeps on.
    pub(crate) fn word(&self, parity: usize, lane: usize) -> &AtomicU32 {
        &self.words[parity][lane]
    }

    /// Releases every sleeper of `parity` (`sleepers` of them were counted); call after
    /// the state change that released them is visible.
    pub(crate) fn release(&self, parity: usize, sleepers: u64) {
        for word in &self.words[parity] {
            word.fetch_add(1, Ordering::Release);
        }
        if sleepers < DELEGATE_MIN_SLEEPERS {
            for word in &self.words[parity] {
                futex::wake_all(word);
            }
            return;
        }
        let others = ((1u32 << LANES) - 1) & !1;
        self.delegated[parity].fetch_or(others, Ordering::AcqRel);
        futex::wake_all(&self.words[parity][0]);
        self.wake_delegated(parity);
    }

    /// Called by a sleeper of `parity` after its wait returned: wakes the lanes the writer
    /// left to whoever wakes first, if they are still to do.
    pub(crate) fn help(&self, parity: usize) {
        if self.delegated[parity].load(Ordering::Relaxed) != 0 {
            self.wake_delegated(parity);
        }
    }

    fn wake_delegated(&self, parity: usize) {
        let mask = self.delegated[parity].swap(0, Ordering::AcqRel);
        for (lane, word) in self.words[parity].iter().enumerate() {
            if mask & (1 << lane) != 0 {
                futex::wake_all(word);
            }
        }
    }

    #[cfg(test)]
    fn delegated(&self, parity: usize) -> u32 {
        self.delegated[parity].load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{BatchWake, DELEGATE_MIN_SLEEPERS, LANES};
    use crate::futex;

    /// `count` sleepers of one parity on the given lanes (in turn), each sleeping until its
    /// word changes; with `help`, each helps after its wait as the WAL's callers do.
    fn sleepers(
        wake: &Arc<BatchWake>,
        parity: usize,
        lanes: &[usize],
        count: usize,
        help: bool,
    ) -> Vec<std::thread::JoinHandle<()>> {
        (0..count)
            .map(|registered| {
                let wake = Arc::clone(wake);
                let lane = lanes[registered % lanes.len()];
                let observed = wake.word(parity, lane).load(Ordering::Acquire);
                std::thread::spawn(move || {
                    while wake.word(parity, lane).load(Ordering::Acquire) == observed {
                        futex::wait(wake.word(parity, lane), observed);
                        if help {
                            wake.help(parity);
                        }
                    }
                })
            })
            .collect()
    }

    const ALL_LANES: [usize; LANES] = [0, 1];

    fn join_all_within(handles: Vec<std::thread::JoinHandle<()>>, limit: Duration) {
        let deadline = Instant::now() + limit;
        for handle in handles {
            while !handle.is_finished() {
                assert!(Instant::now() < deadline, "a sleeper was never woken");
                std::thread::sleep(Duration::from_millis(5));
            }
            handle.join().expect("sleeper");
        }
    }

    #[test]
    fn a_release_with_many_sleepers_wakes_every_lane_and_leaves_nothing_delegated() {
        let wake = Arc::new(BatchWake::new());
        let count = DELEGATE_MIN_SLEEPERS as usize * 2;
        let handles = sleepers(&wake, 1, &ALL_LANES, count, true);
        std::thread::sleep(Duration::from_millis(50));
        wake.release(1, count as u64);
        assert_eq!(
            wake.delegated(1),
            0,
            "the writer takes back what nobody took"
        );
        join_all_within(handles, Duration::from_secs(30));
    }

    #[test]
    fn a_release_with_few_sleepers_wakes_every_lane_itself() {
        let wake = Arc::new(BatchWake::new());
        let handles = sleepers(&wake, 0, &ALL_LANES, LANES + 1, false);
        std::thread::sleep(Duration::from_millis(50));
        wake.release(0, LANES as u64 + 1);
        assert_eq!(wake.delegated(0), 0);
        join_all_within(handles, Duration::from_secs(30));
    }

    #[test]
    fn sleepers_only_on_a_delegated_lane_are_woken_by_the_writer_when_nobody_helps() {
        let wake = Arc::new(BatchWake::new());
        let count = DELEGATE_MIN_SLEEPERS as usize;
        let handles = sleepers(&wake, 0, &[1], count, false);
        std::thread::sleep(Duration::from_millis(50));
        wake.release(0, count as u64);
        join_all_within(handles, Duration::from_secs(30));
    }

    #[test]
    fn a_helper_takes_the_delegated_lanes_exactly_once() {
        let wake = BatchWake::new();
        wake.delegated[0].store(0b10, Ordering::Release);
        wake.help(1);
        assert_eq!(
            wake.delegated(0),
            0b10,
            "a sleeper of the other parity leaves it"
        );
        wake.help(0);
        assert_eq!(wake.delegated(0), 0);
    }

    #[test]
    fn sleepers_alternate_between_the_lanes() {
        let lanes: Vec<usize> = (0..4).map(BatchWake::lane_for).collect();
        assert_eq!(lanes, [0, 1, 0, 1]);
    }
}
