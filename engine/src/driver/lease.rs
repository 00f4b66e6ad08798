//! Lease reads served on the thread that owns the client connection.
//!
//! Today's path for a read is client thread → raft thread (lease check, read index) →
//! apply thread (wait for the read index, look up) → client thread. This module lets a
//! client thread answer a lease read itself, with exactly the same guarantee, from two
//! things other threads publish:
//!
//! * the raft thread (the driver) publishes a [`LeaseGrant`] in a [`LeaseCell`]: the
//!   tick before which its lease holds (`expires_tick`), its term, and the index every
//!   lease read must observe (`required_index`, the commit index);
//! * the apply side (the [`Applier`](super::Applier)) publishes a [`ReadView`] in a
//!   [`ViewCell`]: a view of the state machine (frozen, or following the live state)
//!   and the index of the last entry it reflected when published (`applied_through`, a
//!   lower bound for a live view).
//!
//! A client thread reads the grant, then the view, then its own clock, and serves the
//! read from the view only when [`judge_local_read`] says [`LocalRead::Serve`]: a grant
//! exists, `now_tick < expires_tick`, and `applied_through >= required_index`. Anything
//! else falls back to today's path, unchanged. Key expiry in the view is judged at
//! `max(log time, the serving thread's clock)`, as on the apply thread.
//!
//! # Why this is exactly as safe as today's lease read
//!
//! Today a lease read is linearizable because (1) while the lease holds no other node
//! can be elected (ARCHITECTURE.md, "Elections and leases"), so nothing commits that
//! this leader does not know of, and (2) it is answered from a state that includes
//! everything committed when the lease was checked. Here:
//!
//! 1. **The lease is judged at the serving thread's real time.** The grant holds the
//!    expiry as an absolute tick of the core's clock (`core.now_tick() +
//!    lease_remaining_ticks()`): the core would judge the lease valid at tick `c` iff
//!    `c < expires_tick`. The serving thread reads its tick from the same monotonic
//!    clock, counted from an origin at or before the raft thread's (the runtime takes
//!    it before the raft thread starts), so its tick is never smaller than the raft
//!    thread's at the same instant: it can only judge the lease expired earlier. The
//!    clock is read after the grant is loaded, so the lease held when the grant was
//!    read. Acknowledgements only move the expiry later, so an older grant is
//!    conservative.
//! 2. **Every change that could end the lease early is published before it has any
//!    effect outside the node.** The driver republishes the grant (or its absence)
//!    after taking each `Ready` from the core and before carrying it out: a step-down,
//!    a configuration change, a sent TimeoutNow (which revokes the lease in the core)
//!    reach other nodes only through that `Ready`'s messages. A stopping node
//!    publishes "no lease".
//! 3. **The required index covers everything anybody could have seen.** It is the
//!    core's commit index, published before the committed entries it covers are handed
//!    to the state machine. A write is acknowledged, and a read answered, only by the
//!    apply side after it applied the entry, so anything a client observed before this
//!    read started (its own writes: a connection submits a read only once its writes
//!    are answered; anybody's acknowledged writes; anything an earlier read returned)
//!    has an index at or below the required index this thread loads. Entries of earlier
//!    terms are covered too: a grant exists only once an entry of the leader's term
//!    committed.
//! 4. **The view is a committed prefix of the log** reaching at least the required
//!    index: it contains nothing uncommitted and everything in (3).
//!
//! The check is a pure function so the simulator and the driver tests call the very
//! code the client threads run (`sim`: a stalled leader whose clock runs on, views
//! published lazily so they are often behind).

use std::any::Any;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

/// What a lease read served off the raft thread needs from the raft thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The leader's term when it was published (diagnostics; a new term publishes anew).
    pub term: u64,
    /// The lease holds at ticks strictly below this one (the core's clock).
    pub expires_tick: u64,
    /// A read may be served only from a view that reflects every entry through this
    /// index (the commit index when the grant was published).
    pub required_index: u64,
}

/// The verdict on a lease read a client thread would like to serve itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalRead {
    /// Serve it from the view now.
    Serve,
    /// No lease is published (not leader, lease reads off, no entry of the term
    /// committed yet, leadership being handed over, or no view published yet).
    NoLease,
    /// The lease expired by the serving thread's clock.
    LeaseExpired,
    /// The view does not reach the required index yet.
    ViewBehind,
}

/// The one check (see the module docs): `grant` as loaded, then the index the view
/// reflects, then `now_tick` read from the serving thread's clock after both.
pub fn judge_local_read(
    grant: Option<LeaseGrant>,
    view_applied_through: Option<u64>,
    now_tick: u64,
) -> LocalRead {
    let Some(grant) = grant else {
        return LocalRead::NoLease;
    };
    let Some(applied_through) = view_applied_through else {
        return LocalRead::NoLease;
    };
    if now_tick >= grant.expires_tick {
        return LocalRead::LeaseExpired;
    }
    if applied_through < grant.required_index {
        return LocalRead::ViewBehind;
    }
    LocalRead::Serve
}

/// Attempts a reader makes while the writer is mid-update before it gives up (and the
/// read falls back): the writer holds the cell for a few stores only.
const READ_ATTEMPTS: usize = 64;

/// A seqlock holding the current [`LeaseGrant`]: one writer (the raft thread), any
/// number of readers that never block it.
///
/// Invariant: `seq` is odd exactly while the writer is storing the fields; readers
/// accept fields only when they saw the same even `seq` before and after reading them.
#[derive(Debug, Default)]
pub struct LeaseCell {
    seq: AtomicU64,
    /// 0: no grant.
    expires_tick: AtomicU64,
    term: AtomicU64,
    required_index: AtomicU64,
}

impl LeaseCell {
    /// A cell holding no grant (every local read falls back until the raft thread
    /// publishes one).
    pub fn new() -> LeaseCell {
        LeaseCell::default()
    }

    /// Replaces the grant (`None`: no lease). Single writer only.
    pub fn publish(&self, grant: Option<LeaseGrant>) {
        let (term, expires_tick, required_index) = grant.map_or((0, 0, 0), |grant| {
            (grant.term, grant.expires_tick, grant.required_index)
        });
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.expires_tick.store(expires_tick, Ordering::Relaxed);
        self.term.store(term, Ordering::Relaxed);
        self.required_index.store(required_index, Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The current grant; `None` when there is none (or the writer kept the cell busy
    /// for every attempt: the read falls back, which is always safe).
    pub fn load(&self) -> Option<LeaseGrant> {
        for _ in 0..READ_ATTEMPTS {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let expires_tick = self.expires_tick.load(Ordering::Relaxed);
            let term = self.term.load(Ordering::Relaxed);
            let required_index = self.required_index.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return (expires_tick != 0).then_some(LeaseGrant {
                    term,
                    expires_tick,
                    required_index,
                });
            }
        }
        None
    }
}

/// A frozen view of the state machine, as its [`StateMachine::read_view`] made it.
///
/// [`StateMachine::read_view`]: crate::state_machine::StateMachine::read_view
pub struct ReadView {
    /// Every entry through this index (no-ops and configuration entries included) is
    /// reflected.
    pub applied_through: u64,
    /// The state machine's own view type (for `KvStateMachine`: `KvReadView`).
    pub view: Box<dyn Any + Send + Sync>,
}

/// The latest [`ReadView`], published by the apply side, read by client threads.
///
/// Views are published lazily: only when a reader found the published one behind
/// (`want`), so a write-only load pays nothing for the views nobody reads (a state
/// machine whose views are frozen copies pays for each one it makes).
/// Invariant: `generation` increases with every publish, after the view is stored;
/// published `applied_through` values never decrease.
pub struct ViewCell {
    current: RwLock<Option<Arc<ReadView>>>,
    generation: AtomicU64,
    /// A reader found the view behind the required index (starts set: publish once).
    wanted: AtomicBool,
}

impl Default for ViewCell {
    fn default() -> Self {
        ViewCell {
            current: RwLock::new(None),
            generation: AtomicU64::new(0),
            wanted: AtomicBool::new(true),
        }
    }
}

impl ViewCell {
    /// A cell holding no view yet, with a view wanted (the apply side publishes its first
    /// one at once).
    pub fn new() -> ViewCell {
        ViewCell::default()
    }

    /// Publishes `view` (the apply side only, in apply order).
    pub fn publish(&self, view: ReadView) {
        let mut current = self.current.write();
        debug_assert!(current
            .as_ref()
            .is_none_or(|old| old.applied_through <= view.applied_through));
        *current = Some(Arc::new(view));
        drop(current);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Asks the apply side for a newer view.
    pub fn want(&self) {
        if !self.wanted.load(Ordering::Relaxed) {
            self.wanted.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a reader asked for a newer view.
    pub fn is_wanted(&self) -> bool {
        self.wanted.load(Ordering::Relaxed)
    }

    /// Clears the request (the apply side, before it publishes).
    pub fn clear_wanted(&self) {
        self.wanted.store(false, Ordering::Relaxed);
    }

    /// The latest view.
    pub fn latest(&self) -> Option<Arc<ReadView>> {
        self.current.read().clone()
    }

    /// A reader that keeps its own reference to the latest view and takes the lock
    /// only after a publish.
    pub fn reader(self: &Arc<ViewCell>) -> ViewReader {
        ViewReader {
            cell: Arc::clone(self),
            cached: None,
            generation: u64::MAX,
        }
    }
}

/// One thread's cached reference to the latest published view.
pub struct ViewReader {
    cell: Arc<ViewCell>,
    cached: Option<Arc<ReadView>>,
    /// The cell's generation `cached` was taken at (`u64::MAX`: never).
    generation: u64,
}

impl ViewReader {
    /// The latest published view (refreshed when the cell's generation moved).
    pub fn current(&mut self) -> Option<&ReadView> {
        let generation = self.cell.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.cached = self.cell.latest();
            self.generation = generation;
        }
        self.cached.as_deref()
    }

    /// The cell this reader reads from (to ask for a newer view with [`ViewCell::want`]).
    pub fn cell(&self) -> &ViewCell {
        &self.cell
    }
}

/// The two cells of one node, shared by its raft thread (lease), apply side (views)
/// and client threads.
#[derive(Clone, Default)]
pub struct LocalReadCells {
    /// Where the raft thread publishes its lease grant.
    pub lease: Arc<LeaseCell>,
    /// Where the apply side publishes its read views.
    pub views: Arc<ViewCell>,
}

impl LocalReadCells {
    /// Two empty cells: no grant, no view.
    pub fn new() -> LocalReadCells {
        LocalReadCells {
            lease: Arc::new(LeaseCell::new()),
            views: Arc::new(ViewCell::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(expires_tick: u64, required_index: u64) -> Option<LeaseGrant> {
        Some(LeaseGrant {
            term: 3,
            expires_tick,
            required_index,
        })
    }

    #[test]
    fn a_read_is_served_only_inside_the_lease_from_a_view_that_reaches_the_required_index() {
        assert_eq!(judge_local_read(grant(10, 5), Some(5), 9), LocalRead::Serve);
        assert_eq!(judge_local_read(grant(10, 5), Some(7), 0), LocalRead::Serve);
        // The expiry tick itself is outside the lease (the core's `now < sent + lease`).
        assert_eq!(
            judge_local_read(grant(10, 5), Some(5), 10),
            LocalRead::LeaseExpired
        );
        assert_eq!(
            judge_local_read(grant(10, 5), Some(4), 9),
            LocalRead::ViewBehind
        );
        assert_eq!(judge_local_read(None, Some(5), 0), LocalRead::NoLease);
        assert_eq!(judge_local_read(grant(10, 5), None, 0), LocalRead::NoLease);
    }

    #[test]
    fn a_published_grant_reads_back_and_a_revoked_one_reads_as_none() {
        let cell = LeaseCell::new();
        assert_eq!(cell.load(), None);
        cell.publish(grant(42, 7));
        assert_eq!(cell.load(), grant(42, 7));
        cell.publish(None);
        assert_eq!(cell.load(), None);
    }

    #[test]
    fn a_reader_never_sees_fields_of_two_different_grants() {
        // The writer publishes grants whose fields all derive from one number; a torn
        // read would mix two of them.
        let cell = Arc::new(LeaseCell::new());
        let writer = {
            let cell = Arc::clone(&cell);
            std::thread::spawn(move || {
                for n in 1..200_000u64 {
                    cell.publish(Some(LeaseGrant {
                        term: n,
                        expires_tick: n * 2,
                        required_index: n * 3,
                    }));
                }
            })
        };
        let mut seen = 0u64;
        while !writer.is_finished() || seen == 0 {
            if let Some(grant) = cell.load() {
                assert_eq!(grant.expires_tick, grant.term * 2, "torn read: {grant:?}");
                assert_eq!(grant.required_index, grant.term * 3, "torn read: {grant:?}");
                seen += 1;
            }
        }
        writer.join().expect("writer");
        assert!(seen > 0);
    }

    #[test]
    fn a_view_reader_follows_publishes_and_wanting_is_a_flag_the_apply_side_clears() {
        let cell = Arc::new(ViewCell::new());
        assert!(cell.is_wanted(), "the first view is wanted");
        let mut reader = cell.reader();
        assert!(reader.current().is_none());
        cell.clear_wanted();
        cell.publish(ReadView {
            applied_through: 4,
            view: Box::new(()),
        });
        assert_eq!(reader.current().map(|v| v.applied_through), Some(4));
        cell.want();
        assert!(cell.is_wanted());
        cell.publish(ReadView {
            applied_through: 9,
            view: Box::new(()),
        });
        assert_eq!(reader.current().map(|v| v.applied_through), Some(9));
    }
}
