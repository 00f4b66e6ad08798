//! Model-based crash test: random sequences of append / truncate_suffix /
//! compact_prefix / hard-state updates / write / sync / crash (with tearing) / reopen
//! over the simulated disk, checked against a simple in-memory model.
//!
//! The model records the log state after every staged record. A crash may legally
//! recover any state between the last one known synced and the newest one (bytes written
//! but not synced may or may not survive), and nothing else: every entry reported durable
//! survives, nothing durably truncated reappears, the hard state never goes backwards.
//! Case count: 64 by default, `PROPTEST_CASES` overrides it.

use bytes::Bytes;
use proptest::prelude::*;
use tally_wal::{Entry, HardState, SimStorage, Tear, WalCore, WalOptions};

fn payload(index: u64, term: u64) -> Bytes {
    let len = ((index * 31 + term * 17) % 300) as usize;
    Bytes::from(
        (0..len)
            .map(|i| (index as usize * 7 + term as usize * 13 + i) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn kind(index: u64, term: u64) -> u8 {
    ((index + term) % 5) as u8
}

fn options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 4096,
        max_entry_size_bytes: 1024,
        ..WalOptions::default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelState {
    first_index: u64,
    /// Term of each entry from `first_index` on (an entry is identified by index+term).
    terms: Vec<u64>,
    hard_state: HardState,
}

impl ModelState {
    fn last_index(&self) -> u64 {
        self.first_index + self.terms.len() as u64 - 1
    }
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        count: u8,
        bump_term: bool,
    },
    Truncate {
        back: u8,
    },
    Compact {
        keep: u8,
    },
    SetHardState {
        bump_term: bool,
        vote: u8,
    },
    Reset {
        ahead: u8,
    },
    Write,
    Sync,
    WriteSync,
    Crash {
        tear_seed: Option<u64>,
    },
    Reopen,
    /// Write, then an fsync that fails the Linux way (pages marked clean, never
    /// written), a restart on the same page cache, then a power loss.
    FailedSyncLosingPages,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..12, prop::bool::weighted(0.2)).prop_map(|(count, bump_term)| Op::Append { count, bump_term }),
        2 => (0u8..10).prop_map(|back| Op::Truncate { back }),
        1 => (0u8..30).prop_map(|keep| Op::Compact { keep }),
        2 => (any::<bool>(), 0u8..4).prop_map(|(bump_term, vote)| Op::SetHardState { bump_term, vote }),
        1 => (0u8..20).prop_map(|ahead| Op::Reset { ahead }),
        2 => Just(Op::Write),
        2 => Just(Op::Sync),
        3 => Just(Op::WriteSync),
        2 => prop::option::of(any::<u64>()).prop_map(|tear_seed| Op::Crash { tear_seed }),
        1 => Just(Op::Reopen),
        1 => Just(Op::FailedSyncLosingPages),
    ]
}

struct Harness {
    disk: SimStorage,
    wal: Option<WalCore<SimStorage>>,
    /// States after every staged record since the last (re)open.
    states: Vec<ModelState>,
    /// `states[synced..]` are the states a crash may recover.
    synced: usize,
    /// Index into `states` of the newest state handed to storage by an explicit write.
    written: usize,
    max_term: u64,
    must_bump_term: bool,
}

impl Harness {
    fn wal(&mut self) -> &mut WalCore<SimStorage> {
        self.wal.as_mut().expect("open")
    }

    fn current(&self) -> ModelState {
        self.states.last().cloned().expect("at least one state")
    }

    fn observe(wal: &WalCore<SimStorage>) -> ModelState {
        let terms = (wal.first_index()..=wal.last_index())
            .map(|i| wal.term_at(i).expect("term of a live entry"))
            .collect();
        ModelState {
            first_index: wal.first_index(),
            terms,
            hard_state: wal.hard_state(),
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Append { count, bump_term } => {
                let mut state = self.current();
                let term = if bump_term || self.must_bump_term {
                    self.max_term + 1
                } else {
                    self.max_term.max(1)
                };
                self.max_term = term;
                self.must_bump_term = false;
                for _ in 0..count {
                    let index = state.last_index() + 1;
                    let entry = Entry {
                        index,
                        term,
                        kind: kind(index, term),
                        payload: payload(index, term),
                    };
                    self.wal().append(&[entry]).expect("valid append");
                    state.terms.push(term);
                    self.states.push(state.clone());
                }
            }
            Op::Truncate { back } => {
                let mut state = self.current();
                let from = state.last_index() + 1 - (back as u64).min(state.terms.len() as u64);
                self.wal().truncate_suffix(from).expect("valid truncate");
                state.terms.truncate((from - state.first_index) as usize);
                self.states.push(state);
                // Re-appended indexes get a new term, so a resurrected entry is visible.
                self.must_bump_term = true;
            }
            Op::Compact { keep } => {
                let state = self.current();
                let up_to = state.last_index().saturating_sub(keep as u64);
                self.wal().compact_prefix(up_to).expect("compact");
                let wal = self.wal.as_ref().expect("open");
                assert!(
                    wal.first_index() <= up_to.max(state.first_index - 1) + 1
                        || wal.first_index() == state.first_index,
                    "compaction removed live entries above {up_to}"
                );
                let observed = Self::observe(wal);
                assert_eq!(
                    observed.terms[..],
                    state.terms[(observed.first_index - state.first_index) as usize..],
                    "compaction changed the entries it kept"
                );
                // compact_prefix syncs everything first; older states are gone for good.
                self.states = vec![observed];
                self.synced = 0;
                self.written = 0;
            }
            Op::SetHardState { bump_term, vote } => {
                let mut state = self.current();
                let hs = state.hard_state;
                let next = if bump_term || hs.vote != 0 {
                    HardState {
                        term: hs.term.max(self.max_term) + 1,
                        vote: vote as u64,
                    }
                } else {
                    HardState {
                        term: hs.term,
                        vote: vote as u64,
                    }
                };
                self.max_term = self.max_term.max(next.term);
                self.wal().set_hard_state(next).expect("valid hard state");
                state.hard_state = next;
                self.states.push(state);
            }
            Op::Reset { ahead } => {
                let mut state = self.current();
                // Anywhere from a few entries back to a few past the end (snapshot install).
                let next = (state.last_index() + ahead as u64).saturating_sub(4).max(1);
                self.wal().reset(next).expect("reset");
                state.first_index = next;
                state.terms.clear();
                self.states.push(state);
                self.must_bump_term = true;
            }
            Op::Write => {
                self.wal().write().expect("write");
                self.written = self.states.len() - 1;
            }
            Op::Sync => {
                let durable = self.wal().sync().expect("sync");
                assert!(durable <= self.wal().last_index());
                self.synced = self.written;
            }
            Op::WriteSync => {
                self.wal().write().expect("write");
                let durable = self.wal().sync().expect("sync");
                assert_eq!(
                    durable,
                    self.wal().last_index(),
                    "write + sync makes everything durable"
                );
                assert_eq!(self.wal().durable_hard_state(), self.current().hard_state);
                self.written = self.states.len() - 1;
                self.synced = self.written;
            }
            Op::Crash { tear_seed } => {
                let wal = self.wal.take().expect("open");
                let durable_index = wal.durable_index();
                let durable_hard_state = wal.durable_hard_state();
                let before = self.current();
                drop(wal);
                self.disk
                    .crash(tear_seed.map_or(Tear::DiscardUnsynced, Tear::Seeded));
                self.reopen_and_check(Some((durable_index, durable_hard_state, before)));
            }
            Op::FailedSyncLosingPages => {
                self.wal().write().expect("write");
                self.written = self.states.len() - 1;
                self.disk.fail_next_syncs_losing_pages(1);
                let mut wal = self.wal.take().expect("open");
                let failed = wal.sync().is_err();
                self.disk.fail_next_syncs(0);
                let durable_index = wal.durable_index();
                let durable_hard_state = wal.durable_hard_state();
                drop(wal);
                if !failed {
                    // Nothing was unsynced, so no fsync ran: an ordinary sync.
                    self.synced = self.written;
                }
                let before = self.current();
                // The restarted process must not report the stale cached bytes durable...
                self.reopen_and_check(Some((durable_index, durable_hard_state, before)));
                // ...which a power loss would then take away.
                self.apply(&Op::Crash { tear_seed: None });
            }
            Op::Reopen => {
                let wal = self.wal.take().expect("open");
                let durable_index = wal.durable_index();
                let durable_hard_state = wal.durable_hard_state();
                drop(wal);
                let before = self.current();
                self.reopen_and_check(Some((durable_index, durable_hard_state, before)));
            }
        }
    }

    fn reopen_and_check(&mut self, before: Option<(u64, HardState, ModelState)>) {
        let wal = WalCore::open(self.disk.clone(), options())
            .expect("recovery after a crash must never report corruption");
        let recovered = Self::observe(&wal);
        for index in recovered.first_index..=recovered.last_index() {
            let entry = wal.read(index).expect("read recovered entry");
            assert_eq!(
                entry.payload,
                payload(index, entry.term),
                "wrong payload at {index}"
            );
            assert_eq!(entry.kind, kind(index, entry.term), "wrong kind at {index}");
        }
        let allowed = &self.states[self.synced..];
        assert!(
            allowed.contains(&recovered),
            "recovered state {recovered:?} is not one of the states between the last sync and the crash: {allowed:?}"
        );
        if let Some((durable_index, durable_hard_state, model)) = before {
            assert!(
                recovered.last_index() >= durable_index,
                "durable entries up to {durable_index} lost: recovered {recovered:?}"
            );
            // Durable entries of the current log: model.first_index..=durable_index (empty
            // right after an unsynced reset, which lowers the durable index below it).
            for index in model.first_index..=durable_index {
                let position =
                    |state: &ModelState| index.checked_sub(state.first_index).map(|p| p as usize);
                let recovered_term = position(&recovered).and_then(|p| recovered.terms.get(p));
                let model_term = position(&model).and_then(|p| model.terms.get(p));
                assert!(
                    model_term.is_some(),
                    "durable index {durable_index} beyond the model log"
                );
                assert_eq!(
                    recovered_term, model_term,
                    "durable entry {index} changed or lost"
                );
            }
            let hs = recovered.hard_state;
            assert!(
                hs.term >= durable_hard_state.term,
                "hard state went backwards"
            );
            if hs.term == durable_hard_state.term && durable_hard_state.vote != 0 {
                assert_eq!(
                    hs.vote, durable_hard_state.vote,
                    "vote changed within a term"
                );
            }
        }
        self.max_term = self
            .max_term
            .max(recovered.hard_state.term)
            .max(recovered.terms.last().copied().unwrap_or(0));
        self.must_bump_term = true;
        self.states = vec![recovered];
        self.synced = 0;
        self.written = 0;
        self.wal = Some(wal);
    }
}

fn run(ops: &[Op]) {
    let disk = SimStorage::new();
    let wal = WalCore::open(disk.clone(), options()).expect("open new WAL");
    let initial = Harness::observe(&wal);
    let mut harness = Harness {
        disk,
        wal: Some(wal),
        states: vec![initial],
        synced: 0,
        written: 0,
        max_term: 0,
        must_bump_term: false,
    };
    for op in ops {
        harness.apply(op);
    }
    harness.apply(&Op::Crash { tear_seed: Some(7) });
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
    fn crashes_at_random_points_never_lose_durable_entries_or_resurrect_truncated_ones(ops in prop::collection::vec(op_strategy(), 1..80)) {
        run(&ops);
    }
}

#[test]
fn torn_write_across_a_segment_roll_recovers_a_valid_state() {
    // A fixed sequence that rolls segments with unsynced data, then tears at every
    // possible unsynced byte count.
    for keep in (0..6000u64).step_by(97) {
        let disk = SimStorage::new();
        let mut wal = WalCore::open(disk.clone(), options()).expect("open");
        for index in 1..=20 {
            wal.append(&[Entry {
                index,
                term: 1,
                kind: kind(index, 1),
                payload: payload(index, 1),
            }])
            .expect("append");
        }
        wal.write().expect("write");
        wal.sync().expect("sync");
        for index in 21..=60 {
            wal.append(&[Entry {
                index,
                term: 2,
                kind: kind(index, 2),
                payload: payload(index, 2),
            }])
            .expect("append");
            wal.write().expect("write");
        }
        drop(wal);
        disk.crash(Tear::KeepUnsyncedBytes(keep));
        let wal = WalCore::open(disk.clone(), options()).expect("torn tail must recover");
        assert!(wal.last_index() >= 20 && wal.last_index() <= 60);
        for index in 1..=wal.last_index() {
            let term = if index <= 20 { 1 } else { 2 };
            assert_eq!(wal.read(index).expect("read").payload, payload(index, term));
        }
    }
}
