//! A black-box linearizability checker for a keyed register + counter (GET, SET, INCR,
//! CAS), fed by what real clients observed.
//!
//! Why a second checker: the simulator's (`sim/history.rs`) knows the log index each
//! write landed at. A client of a real process knows only when it sent a command, when
//! (and whether) the answer came, and what it said. This module decides from that alone
//! whether some total order of the operations, consistent with real time, explains every
//! answer — the definition of linearizability (Herlihy & Wing).
//!
//! How: per key (a history is linearizable iff each key's sub-history is:
//! P-compositionality), a depth-first search in the style of Wing & Gong with Lowe's
//! memoization: a search state is (the set of operations linearized so far, the model's
//! value), and a state seen before is not explored again (the set is kept as a 128-bit
//! fingerprint: see `KeySearch`). An operation may come next if
//! no operation still waiting returned before it was invoked.
//!
//! Unknown outcomes (a timeout, `-UNKNOWN`, a lost connection) may or may not have taken
//! effect, at any time after their invocation: they never have to be linearized (leaving
//! one out is the same as placing it after everything). Three reductions keep the search
//! small and are sound (they never turn a linearizable history into a refusal):
//! - an available definite op that fits the current value and leaves it unchanged (a
//!   read of it, a failed CAS) is placed at once, without trying alternatives: any
//!   linearization that places it later can place it there instead;
//! - identical unknown operations are interchangeable, so only the earliest invoked one
//!   of a group of candidates is tried;
//! - an unknown write of `v` is tried only just in time: right before an operation that
//!   may come next and that it enables (a definite op whose answer fits `v` but not the
//!   current value, an unknown CAS expecting `v`, an INCR when `v` is an integer). In any
//!   linearization, look at the op right after such a write: if it works on the value
//!   before the write too, the two can swap with the same result; if it overwrites, or
//!   is unknown and changes nothing on `v`, the write (or that op) can be left out. So
//!   some linearization places every unknown write just in time.
//!
//! Unique written values (the suite writes `client-sequence` strings) keep the search
//! close to linear. The search is bounded ([`CheckOptions::max_states`]): a history too
//! large for the budget is [`Violation::Inconclusive`], never a pass.
//!
//! Every key starts absent (no value); DEL is not modelled.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

/// One operation a client issued.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// `GET key`.
    Get {
        /// The key read.
        key: Vec<u8>,
    },
    /// `SET key value`.
    Set {
        /// The key written.
        key: Vec<u8>,
        /// The value written.
        value: Vec<u8>,
    },
    /// `INCR key` (an absent key counts as 0).
    Incr {
        /// The key incremented.
        key: Vec<u8>,
    },
    /// `CAS key expected new`: swaps when the key holds `expected`.
    Cas {
        /// The key.
        key: Vec<u8>,
        /// The value the key must hold for the swap.
        expected: Vec<u8>,
        /// The value stored when it does.
        new: Vec<u8>,
    },
}

impl Op {
    /// The key the operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Get { key } | Op::Set { key, .. } | Op::Incr { key } | Op::Cas { key, .. } => key,
        }
    }

    /// True for GET.
    pub fn is_read(&self) -> bool {
        matches!(self, Op::Get { .. })
    }
}

/// What the client learned about an operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// GET's reply (`None`: the key is absent).
    Value(Option<Vec<u8>>),
    /// SET's `OK`.
    Ok,
    /// INCR's new value.
    Integer(i64),
    /// CAS's reply: true when it swapped.
    Swapped(bool),
    /// A state-machine error reply (INCR on a non-integer or at `i64::MAX`): applied,
    /// changed nothing.
    Error,
    /// May or may not have taken effect (timeout, `-UNKNOWN`, connection lost).
    Unknown,
}

/// One observed operation. Times are nanoseconds on one clock shared by all clients
/// (for example since the start of the run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Which client issued it (for reports only).
    pub client: u64,
    /// What the client sent.
    pub op: Op,
    /// Just before the command was sent.
    pub invoke_ns: u64,
    /// Just after the reply arrived (for `Unknown`: when the client gave up; the
    /// operation may still take effect later).
    pub complete_ns: u64,
    /// What the client learned.
    pub outcome: Outcome,
}

/// A client history: every operation whose outcome is known or unknown. Operations that
/// definitely did not take effect (`-NOTLEADER`, `-TRYAGAIN`) are simply not recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    entries: Vec<Entry>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Appends one observed operation (in any order: the check sorts by time).
    pub fn push(&mut self, entry: Entry) {
        self.entries.push(entry);
    }

    /// Appends another client's entries.
    pub fn extend(&mut self, other: History) {
        self.entries.extend(other.entries);
    }

    /// The recorded operations, in the order they were pushed.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Number of recorded operations.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Search limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Distinct search states (memo entries) allowed per key before the answer is
    /// [`Violation::Inconclusive`]. Each costs a few dozen bytes (a fingerprint and the
    /// value) plus a search frame.
    pub max_states: usize,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions {
            max_states: 2_000_000,
        }
    }
}

/// What a passing check looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckStats {
    /// Distinct keys checked.
    pub n_keys: usize,
    /// Operations with a known outcome (reads and writes).
    pub n_definite: usize,
    /// Writes with an unknown outcome (unknown reads are dropped: they change nothing).
    pub n_unknown_writes: usize,
    /// Search states explored, all keys.
    pub n_states: usize,
}

/// Why a history was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// An entry that cannot describe a real observation.
    #[error("history entry {index} is malformed: {reason}")]
    InvalidHistory {
        /// Position of the entry in [`History::entries`].
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// No order explains every answer on this key.
    #[error("{}", .0.report)]
    NotLinearizable(Box<NonLinearizable>),
    /// The search budget ran out before an answer: NOT a pass.
    #[error(
        "key {key}: inconclusive after {n_states} search states \
         ({n_definite} definite ops, {n_unknown} unknown writes); raise max_states or shorten the run\n\
         furthest point: {furthest}"
    )]
    Inconclusive {
        /// The key whose search ran out of states (lossy UTF-8).
        key: String,
        /// Search states explored on that key.
        n_states: usize,
        /// Operations on the key with a known outcome.
        n_definite: usize,
        /// Writes on the key with an unknown outcome.
        n_unknown: usize,
        /// Where the search got furthest (as in a refusal's report).
        furthest: String,
    },
}

/// The evidence for a refusal: the longest prefix the search could explain and the
/// operations none of which could come after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonLinearizable {
    /// The key whose operations no order explains.
    pub key: Vec<u8>,
    /// Definite operations the longest explained prefix places.
    pub n_definite_placed: usize,
    /// History indexes of the last operations of that prefix, in linearization order.
    pub prefix_tail: Vec<usize>,
    /// The model's value after that prefix.
    pub value_after_prefix: Option<Vec<u8>>,
    /// History indexes of the definite operations that could come next in real time,
    /// none of whose answers fits that value.
    pub stuck: Vec<usize>,
    /// Human-readable description (the `Display` text).
    pub report: String,
}

/// Checks a whole history with the default budget.
pub fn check(history: &History) -> Result<(), Violation> {
    check_with(history, &CheckOptions::default()).map(|_| ())
}

/// Checks a whole history: `Ok` only if every key's sub-history is linearizable.
pub fn check_with(history: &History, options: &CheckOptions) -> Result<CheckStats, Violation> {
    validate(history)?;
    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (index, entry) in history.entries.iter().enumerate() {
        if entry.op.is_read() && entry.outcome == Outcome::Unknown {
            continue;
        }
        by_key.entry(entry.op.key()).or_default().push(index);
    }
    let mut stats = CheckStats {
        n_keys: by_key.len(),
        ..CheckStats::default()
    };
    for (key, indexes) in by_key {
        let mut search = KeySearch::new(history, key, indexes);
        stats.n_definite += search.n_definite;
        stats.n_unknown_writes += search.ops.len() - search.n_definite;
        stats.n_states += search.run(history, options)?;
    }
    Ok(stats)
}

fn validate(history: &History) -> Result<(), Violation> {
    for (index, entry) in history.entries.iter().enumerate() {
        let fits = matches!(
            (&entry.op, &entry.outcome),
            (_, Outcome::Unknown)
                | (Op::Get { .. }, Outcome::Value(_))
                | (Op::Set { .. }, Outcome::Ok)
                | (Op::Incr { .. }, Outcome::Integer(_) | Outcome::Error)
                | (Op::Cas { .. }, Outcome::Swapped(_))
        );
        let reason = if !fits {
            format!("{:?} cannot answer {:?}", entry.outcome, entry.op)
        } else if entry.complete_ns < entry.invoke_ns {
            format!(
                "completed at {} ns, before its invocation at {} ns",
                entry.complete_ns, entry.invoke_ns
            )
        } else {
            continue;
        };
        return Err(Violation::InvalidHistory { index, reason });
    }
    Ok(())
}

/// The register's value.
type Value = Option<Vec<u8>>;

/// A strict decimal i64 (`-?[0-9]+`, no `+`, no leading zeros), as INCR reads it.
fn parse_integer(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let well_formed = !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && (digits.len() == 1 || digits[0] != b'0');
    if !well_formed {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// The model: the value after `op` applied to `value`, if that explains `outcome`.
fn step(value: &Value, op: &Op, outcome: &Outcome) -> Option<Value> {
    let unknown = *outcome == Outcome::Unknown;
    match op {
        Op::Get { .. } => (*outcome == Outcome::Value(value.clone())).then(|| value.clone()),
        Op::Set { value: new, .. } => Some(Some(new.clone())),
        Op::Incr { .. } => {
            let current = match value {
                None => Some(0),
                Some(bytes) => parse_integer(bytes),
            };
            match current.and_then(|n| n.checked_add(1)) {
                Some(next) if unknown || *outcome == Outcome::Integer(next) => {
                    Some(Some(next.to_string().into_bytes()))
                }
                None if unknown || *outcome == Outcome::Error => Some(value.clone()),
                _ => None,
            }
        }
        Op::Cas { expected, new, .. } => {
            let swap = value.as_deref() == Some(expected.as_slice());
            if !unknown && *outcome != Outcome::Swapped(swap) {
                return None;
            }
            Some(if swap {
                Some(new.clone())
            } else {
                value.clone()
            })
        }
    }
}

/// One operation of the key's sub-history.
struct KeyOp {
    /// Index in the whole history.
    index: usize,
    invoke_ns: u64,
    /// `None` for unknown outcomes (no real-time bound after the invocation).
    return_ns: Option<u64>,
}

/// One level of the depth-first search.
struct Frame {
    /// The value before this level's choice.
    value: Value,
    /// Positions (in `ops`) that may come next, in the order they are tried.
    candidates: Vec<u32>,
    next: usize,
    /// The position linearized to enter the level below, undone on return.
    chosen: Option<usize>,
}

/// The furthest point the search reached, kept for the refusal report.
#[derive(Default)]
struct Deepest {
    n_definite: usize,
    /// The last positions of the prefix that got there (at most [`REPORT_TAIL`]).
    tail: Vec<usize>,
    value: Value,
    candidates: Vec<u32>,
}

/// Prefix operations shown in a refusal.
const REPORT_TAIL: usize = 6;

/// A fixed pseudo-random 128-bit tag per position (SplitMix64), for Zobrist hashing.
fn position_tag(position: usize) -> u128 {
    let mut x = (position as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut next = || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (u128::from(next()) << 64) | u128::from(next())
}

/// The search over one key.
///
/// The memo stores a 128-bit Zobrist fingerprint of the linearized set (updated in O(1)
/// per step) with the exact value, not the set itself: memory stays a few dozen bytes
/// per state however long the history. Two different sets sharing a fingerprint (odds
/// about `states² / 2^129`) could only make the search skip a state, that is refuse a
/// linearizable history, never accept a wrong one.
struct KeySearch {
    key: Vec<u8>,
    /// Sorted by invocation time.
    ops: Vec<KeyOp>,
    tags: Vec<u128>,
    /// Positions of definite ops, sorted by return time.
    by_return: Vec<usize>,
    /// Positions of unknown ops, in invocation order.
    unknown: Vec<usize>,
    n_definite: usize,
    linearized: Vec<bool>,
    fingerprint: u128,
    n_definite_linearized: usize,
    /// No definite op before this position (invocation order) is waiting.
    open_from: usize,
    /// No op before this index of `by_return` is waiting.
    open_return_from: usize,
}

impl KeySearch {
    fn new(history: &History, key: &[u8], indexes: Vec<usize>) -> KeySearch {
        let mut ops: Vec<KeyOp> = indexes
            .into_iter()
            .map(|index| {
                let entry = &history.entries[index];
                KeyOp {
                    index,
                    invoke_ns: entry.invoke_ns,
                    return_ns: (entry.outcome != Outcome::Unknown).then_some(entry.complete_ns),
                }
            })
            .collect();
        ops.sort_by_key(|op| (op.invoke_ns, op.index));
        let (mut by_return, unknown): (Vec<usize>, Vec<usize>) =
            (0..ops.len()).partition(|&position| ops[position].return_ns.is_some());
        by_return.sort_by_key(|&position| ops[position].return_ns);
        KeySearch {
            key: key.to_vec(),
            n_definite: by_return.len(),
            tags: (0..ops.len()).map(position_tag).collect(),
            linearized: vec![false; ops.len()],
            fingerprint: 0,
            n_definite_linearized: 0,
            open_from: 0,
            open_return_from: 0,
            ops,
            by_return,
            unknown,
        }
    }

    fn set_linearized(&mut self, position: usize, on: bool) {
        debug_assert_ne!(self.linearized[position], on);
        self.linearized[position] = on;
        self.fingerprint ^= self.tags[position];
        if self.ops[position].return_ns.is_none() {
            return;
        }
        if on {
            self.n_definite_linearized += 1;
        } else {
            self.n_definite_linearized -= 1;
            self.open_from = self.open_from.min(position);
            self.open_return_from = self.open_return_from.min(self.return_rank(position));
        }
    }

    /// Where `position` sits in `by_return` (a binary search on return time, then a
    /// short scan among equal times).
    fn return_rank(&self, position: usize) -> usize {
        let time = self.ops[position].return_ns;
        let first = self
            .by_return
            .partition_point(|&p| self.ops[p].return_ns < time);
        first
            + self.by_return[first..]
                .iter()
                .position(|&p| p == position)
                .unwrap_or(0)
    }

    /// Moves the cursors past linearized definite ops.
    fn advance_cursors(&mut self) {
        while self.open_from < self.ops.len()
            && (self.linearized[self.open_from] || self.ops[self.open_from].return_ns.is_none())
        {
            self.open_from += 1;
        }
        while self
            .by_return
            .get(self.open_return_from)
            .is_some_and(|&p| self.linearized[p])
        {
            self.open_return_from += 1;
        }
    }

    /// The positions that may be linearized next from `value`: definite ops invoked
    /// before the earliest waiting return (earliest return first), then the unknown
    /// writes worth trying (see the module docs).
    fn candidates(&mut self, history: &History, value: &Value) -> Vec<u32> {
        self.advance_cursors();
        let earliest_return = self
            .by_return
            .get(self.open_return_from)
            .and_then(|&position| self.ops[position].return_ns)
            .unwrap_or(u64::MAX);
        let mut definite: Vec<usize> = Vec::new();
        for position in self.open_from..self.ops.len() {
            let op = &self.ops[position];
            if op.invoke_ns > earliest_return {
                break;
            }
            if op.return_ns.is_some() && !self.linearized[position] {
                definite.push(position);
            }
        }
        definite.sort_by_key(|&position| self.ops[position].return_ns);
        if let Some(&forced) = definite
            .iter()
            .find(|&&p| self.fits_unchanged(history, value, p))
        {
            return vec![forced as u32];
        }
        let open_unknown: Vec<usize> = self
            .unknown
            .iter()
            .copied()
            .take_while(|&position| self.ops[position].invoke_ns <= earliest_return)
            .filter(|&position| !self.linearized[position])
            .collect();
        let mut chosen: Vec<usize> = Vec::new();
        for &position in &open_unknown {
            if self.unknown_worth_trying(
                history,
                value,
                position,
                &definite,
                &open_unknown,
                &chosen,
            ) {
                chosen.push(position);
            }
        }
        definite.extend(chosen);
        definite.into_iter().map(|p| p as u32).collect()
    }

    /// Whether the definite op at `position` answers consistently with `value` and
    /// leaves it unchanged (a GET of it, a failed CAS, an INCR error). Such an op may
    /// come next without loss of generality: any linearization placing it later can
    /// place it here instead (nothing waiting returned before its invocation, and it
    /// changes nothing in between), so it is the only move tried.
    fn fits_unchanged(&self, history: &History, value: &Value, position: usize) -> bool {
        let (op, outcome) = self.op_at(history, position);
        step(value, op, outcome).is_some_and(|next| next == *value)
    }

    fn op_at<'h>(&self, history: &'h History, position: usize) -> (&'h Op, &'h Outcome) {
        let entry = &history.entries[self.ops[position].index];
        (&entry.op, &entry.outcome)
    }

    /// Whether the unknown op at `position` may be linearized now, from `value`. An
    /// identical op already chosen stands for it; an op that changes nothing is never
    /// needed. An unknown SET (or swapping CAS) writing `v` is needed only right before
    /// an available op it enables: a definite op whose answer fits `v` but not `value`,
    /// an unknown CAS expecting `v`, or an INCR when `v` is an integer. (Any other op
    /// that could follow it either works without it, and the write can move after that
    /// op, or overwrites it, or is unknown and can be left out: see the module docs.)
    /// Unknown INCRs are always tried.
    fn unknown_worth_trying(
        &self,
        history: &History,
        value: &Value,
        position: usize,
        definite: &[usize],
        open_unknown: &[usize],
        chosen: &[usize],
    ) -> bool {
        let (op, _) = self.op_at(history, position);
        if chosen.iter().any(|&p| self.op_at(history, p).0 == op) {
            return false;
        }
        let written = match step(value, op, &Outcome::Unknown) {
            None => return false,
            Some(next) if next == *value => return false,
            Some(next) => next,
        };
        let Some(written_bytes) = written
            .as_deref()
            .filter(|_| !matches!(op, Op::Incr { .. }))
        else {
            return true;
        };
        let enables_definite = definite.iter().any(|&p| {
            let (other, outcome) = self.op_at(history, p);
            step(value, other, outcome).is_none() && step(&written, other, outcome).is_some()
        });
        let is_integer = parse_integer(written_bytes).is_some();
        let enables_unknown = open_unknown.iter().any(|&p| {
            p != position
                && match self.op_at(history, p).0 {
                    Op::Cas { expected, .. } => expected.as_slice() == written_bytes,
                    Op::Incr { .. } => is_integer,
                    _ => false,
                }
        });
        let incr_waits = is_integer
            && definite
                .iter()
                .any(|&p| matches!(self.op_at(history, p).0, Op::Incr { .. }));
        enables_definite || enables_unknown || incr_waits
    }

    /// Runs the search; `Ok(states explored)` when a linearization exists.
    fn run(&mut self, history: &History, options: &CheckOptions) -> Result<usize, Violation> {
        let mut seen: HashSet<(u128, Value)> = HashSet::new();
        let root_candidates = self.candidates(history, &None);
        let mut stack = vec![Frame {
            candidates: root_candidates.clone(),
            value: None,
            next: 0,
            chosen: None,
        }];
        let mut order: Vec<usize> = Vec::new();
        let mut deepest = Deepest {
            candidates: root_candidates,
            ..Deepest::default()
        };
        while let Some(frame) = stack.last_mut() {
            if self.n_definite_linearized == self.n_definite {
                return Ok(seen.len());
            }
            let Some(&position) = frame.candidates.get(frame.next) else {
                stack.pop();
                if let Some(undo) = stack.last_mut().and_then(|parent| parent.chosen.take()) {
                    self.set_linearized(undo, false);
                    order.pop();
                }
                continue;
            };
            let position = position as usize;
            frame.next += 1;
            let entry = &history.entries[self.ops[position].index];
            let Some(next_value) = step(&frame.value, &entry.op, &entry.outcome) else {
                continue;
            };
            frame.chosen = Some(position);
            self.set_linearized(position, true);
            order.push(position);
            if !seen.insert((self.fingerprint, next_value.clone())) {
                frame.chosen = None;
                self.set_linearized(position, false);
                order.pop();
                continue;
            }
            if seen.len() > options.max_states {
                return Err(self.inconclusive(history, deepest, seen.len()));
            }
            let candidates = self.candidates(history, &next_value);
            if self.n_definite_linearized > deepest.n_definite {
                deepest = Deepest {
                    n_definite: self.n_definite_linearized,
                    tail: order[order.len().saturating_sub(REPORT_TAIL)..].to_vec(),
                    value: next_value.clone(),
                    candidates: candidates.clone(),
                };
            }
            stack.push(Frame {
                value: next_value,
                candidates,
                next: 0,
                chosen: None,
            });
        }
        Err(self.refusal(history, deepest))
    }

    fn inconclusive(&self, history: &History, deepest: Deepest, n_states: usize) -> Violation {
        let furthest = match self.refusal(history, deepest) {
            Violation::NotLinearizable(evidence) => evidence.report,
            other => other.to_string(),
        };
        Violation::Inconclusive {
            key: String::from_utf8_lossy(&self.key).into_owned(),
            n_states,
            n_definite: self.n_definite,
            n_unknown: self.unknown.len(),
            furthest,
        }
    }

    fn refusal(&self, history: &History, deepest: Deepest) -> Violation {
        let tail: Vec<usize> = deepest.tail.iter().map(|&p| self.ops[p].index).collect();
        let stuck: Vec<usize> = deepest
            .candidates
            .iter()
            .map(|&p| p as usize)
            .filter(|&p| self.ops[p].return_ns.is_some())
            .map(|p| self.ops[p].index)
            .collect();
        let mut report = format!(
            "key {:?} is not linearizable: the longest explained prefix places {} of {} \
             definite ops and leaves the value {}",
            String::from_utf8_lossy(&self.key),
            deepest.n_definite,
            self.n_definite,
            show_value(&deepest.value),
        );
        let _ = write!(report, "\n  last ops of that prefix:");
        for &index in &tail {
            let _ = write!(report, "\n    {}", describe(history, index));
        }
        let _ = write!(report, "\n  none of these answers fits next:");
        for &index in stuck.iter().take(8) {
            let _ = write!(report, "\n    {}", describe(history, index));
        }
        Violation::NotLinearizable(Box::new(NonLinearizable {
            key: self.key.clone(),
            n_definite_placed: deepest.n_definite,
            prefix_tail: tail,
            value_after_prefix: deepest.value,
            stuck,
            report,
        }))
    }
}

fn show_value(value: &Value) -> String {
    match value {
        None => "(absent)".to_string(),
        Some(bytes) => format!("{:?}", String::from_utf8_lossy(bytes)),
    }
}

/// One entry as a line: `#12 client 3 [1.204117s..1.300023s] GET "r1" -> "c3-9"`.
pub fn describe(history: &History, index: usize) -> String {
    let Some(entry) = history.entries.get(index) else {
        return format!("#{index} (no such entry)");
    };
    let text = |bytes: &[u8]| format!("{:?}", String::from_utf8_lossy(bytes));
    let op = match &entry.op {
        Op::Get { key } => format!("GET {}", text(key)),
        Op::Set { key, value } => format!("SET {} {}", text(key), text(value)),
        Op::Incr { key } => format!("INCR {}", text(key)),
        Op::Cas { key, expected, new } => {
            format!("CAS {} {} {}", text(key), text(expected), text(new))
        }
    };
    let outcome = match &entry.outcome {
        Outcome::Value(value) => show_value(value),
        Outcome::Ok => "OK".to_string(),
        Outcome::Integer(n) => n.to_string(),
        Outcome::Swapped(swapped) => u8::from(*swapped).to_string(),
        Outcome::Error => "error".to_string(),
        Outcome::Unknown => "unknown".to_string(),
    };
    format!(
        "#{index} client {} [{:.6}s..{:.6}s] {op} -> {outcome}",
        entry.client,
        entry.invoke_ns as f64 / 1e9,
        entry.complete_ns as f64 / 1e9,
    )
}

/// An acknowledged write the final state does not reflect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostWrite {
    /// The key.
    pub key: Vec<u8>,
    /// How many acknowledged writes on the key are missing (INCRs missing from the
    /// count, or SET/CAS writes the final value predates).
    pub count: u64,
    /// Which writes are missing, for the report.
    pub detail: String,
}

/// Acknowledged writes missing from the final values read after the run (one read per
/// key, after healing; absent from the map: not checked). A counter key (any INCR on
/// it) must count at least every acknowledged INCR and at least the highest INCR answer;
/// on a register key, an acknowledged SET or swapping CAS is lost when the final value
/// is absent, nobody wrote it, or its writer returned before that write was invoked.
pub fn lost_acknowledged_writes(
    history: &History,
    final_values: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) -> Vec<LostWrite> {
    let mut lost = Vec::new();
    for (key, final_value) in final_values {
        let on_key: Vec<&Entry> = history
            .entries
            .iter()
            .filter(|entry| entry.op.key() == key.as_slice())
            .collect();
        let found = if on_key.iter().any(|e| matches!(e.op, Op::Incr { .. })) {
            lost_increments(key, &on_key, final_value)
        } else {
            lost_register_writes(key, &on_key, final_value)
        };
        lost.extend(found);
    }
    lost
}

fn lost_increments(key: &[u8], on_key: &[&Entry], final_value: &Value) -> Option<LostWrite> {
    let acknowledged: Vec<i64> = on_key
        .iter()
        .filter_map(|entry| match (&entry.op, &entry.outcome) {
            (Op::Incr { .. }, Outcome::Integer(n)) => Some(*n),
            _ => None,
        })
        .collect();
    let n_acknowledged = acknowledged.len() as i64;
    let highest = acknowledged.iter().copied().max().unwrap_or(0);
    let final_count = match final_value {
        None => 0,
        Some(bytes) => parse_integer(bytes).unwrap_or(i64::MIN),
    };
    let missing = n_acknowledged.max(highest).saturating_sub(final_count);
    (missing > 0).then(|| LostWrite {
        key: key.to_vec(),
        count: missing as u64,
        detail: format!(
            "counter {:?} reads {} after {n_acknowledged} acknowledged INCRs (highest answer {highest})",
            String::from_utf8_lossy(key),
            show_value(final_value),
        ),
    })
}

fn written_value(entry: &Entry) -> Option<&[u8]> {
    match (&entry.op, &entry.outcome) {
        (Op::Set { value, .. }, _) => Some(value),
        (Op::Cas { new, .. }, Outcome::Swapped(true) | Outcome::Unknown) => Some(new),
        _ => None,
    }
}

fn lost_register_writes(key: &[u8], on_key: &[&Entry], final_value: &Value) -> Option<LostWrite> {
    let acknowledged: Vec<&Entry> = on_key
        .iter()
        .copied()
        .filter(|entry| matches!(entry.outcome, Outcome::Ok | Outcome::Swapped(true)))
        .collect();
    let writer = final_value
        .as_deref()
        .and_then(|value| on_key.iter().find(|e| written_value(e) == Some(value)));
    let lost: Vec<&Entry> = acknowledged
        .into_iter()
        .filter(|write| match writer {
            None => true,
            Some(writer) => {
                writer.outcome != Outcome::Unknown && writer.complete_ns < write.invoke_ns
            }
        })
        .collect();
    let first = lost.first()?;
    Some(LostWrite {
        key: key.to_vec(),
        count: lost.len() as u64,
        detail: format!(
            "register {:?} reads {} (written by {}); {} acknowledged writes are newer, e.g. one invoked at {:.3}s",
            String::from_utf8_lossy(key),
            show_value(final_value),
            if writer.is_some() { "an op that returned before them" } else { "no recorded op" },
            lost.len(),
            first.invoke_ns as f64 / 1e9,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::collections::HashMap;

    fn key(name: &str) -> Vec<u8> {
        name.as_bytes().to_vec()
    }
    fn get(k: &str) -> Op {
        Op::Get { key: key(k) }
    }
    fn set(k: &str, v: &str) -> Op {
        Op::Set {
            key: key(k),
            value: key(v),
        }
    }
    fn incr(k: &str) -> Op {
        Op::Incr { key: key(k) }
    }
    fn cas(k: &str, expected: &str, new: &str) -> Op {
        Op::Cas {
            key: key(k),
            expected: key(expected),
            new: key(new),
        }
    }
    fn value(v: &str) -> Outcome {
        Outcome::Value(Some(key(v)))
    }

    /// `(client, invoke, complete, op, outcome)`.
    fn history(entries: Vec<(u64, u64, u64, Op, Outcome)>) -> History {
        let mut history = History::new();
        for (client, invoke_ns, complete_ns, op, outcome) in entries {
            history.push(Entry {
                client,
                op,
                invoke_ns,
                complete_ns,
                outcome,
            });
        }
        history
    }

    fn refused(history: &History) -> Box<NonLinearizable> {
        match check(history) {
            Err(Violation::NotLinearizable(evidence)) => evidence,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn stale_read_after_an_acknowledged_overwrite_is_refused() {
        let h = history(vec![
            (1, 0, 10, set("x", "a"), Outcome::Ok),
            (1, 20, 30, set("x", "b"), Outcome::Ok),
            (2, 40, 50, get("x"), value("a")),
        ]);
        let evidence = refused(&h);
        assert_eq!(evidence.key, key("x"));
        assert_eq!(evidence.stuck, vec![2]);
        assert!(
            evidence.report.contains("GET \"x\" -> \"a\""),
            "{}",
            evidence.report
        );
    }

    #[test]
    fn lost_acknowledged_set_read_as_absent_is_refused() {
        let h = history(vec![
            (1, 0, 10, set("x", "a"), Outcome::Ok),
            (2, 20, 30, get("x"), Outcome::Value(None)),
        ]);
        refused(&h);
    }

    #[test]
    fn read_of_a_value_nobody_wrote_is_refused() {
        let h = history(vec![
            (1, 0, 10, set("x", "a"), Outcome::Ok),
            (2, 5, 30, get("x"), value("ghost")),
        ]);
        refused(&h);
    }

    #[test]
    fn reads_going_back_in_time_during_a_slow_write_are_refused() {
        // The write overlaps both reads, but once a read saw "b", a later read may not
        // see "a" again.
        let h = history(vec![
            (1, 0, 10, set("x", "a"), Outcome::Ok),
            (2, 20, 100, set("x", "b"), Outcome::Ok),
            (3, 30, 40, get("x"), value("b")),
            (3, 50, 60, get("x"), value("a")),
        ]);
        refused(&h);
    }

    #[test]
    fn double_applied_incr_is_refused() {
        let h = history(vec![
            (1, 0, 10, incr("n"), Outcome::Integer(1)),
            (1, 20, 30, incr("n"), Outcome::Integer(3)),
        ]);
        refused(&h);
        let h = history(vec![
            (1, 0, 10, incr("n"), Outcome::Integer(1)),
            (2, 20, 30, get("n"), value("2")),
        ]);
        refused(&h);
    }

    #[test]
    fn two_incrs_answering_the_same_count_are_refused() {
        let h = history(vec![
            (1, 0, 50, incr("n"), Outcome::Integer(1)),
            (2, 10, 60, incr("n"), Outcome::Integer(1)),
        ]);
        refused(&h);
    }

    #[test]
    fn an_unknown_incr_explains_exactly_one_extra_count() {
        let mut entries = vec![
            (1, 0, 10, incr("n"), Outcome::Unknown),
            (2, 20, 30, incr("n"), Outcome::Integer(2)),
            (2, 40, 50, get("n"), value("2")),
        ];
        assert_eq!(check(&history(entries.clone())), Ok(()));
        entries.push((2, 60, 70, incr("n"), Outcome::Integer(4)));
        refused(&history(entries));
    }

    #[test]
    fn cas_swapping_on_a_value_the_key_does_not_hold_is_refused() {
        let h = history(vec![
            (1, 0, 10, set("x", "a"), Outcome::Ok),
            (2, 20, 30, cas("x", "b", "c"), Outcome::Swapped(true)),
        ]);
        refused(&h);
    }

    #[test]
    fn cas_failing_on_the_value_the_key_holds_is_refused() {
        let h = history(vec![
            (1, 0, 10, set("x", "a"), Outcome::Ok),
            (2, 20, 30, cas("x", "a", "c"), Outcome::Swapped(false)),
        ]);
        refused(&h);
    }

    #[test]
    fn read_older_than_a_successful_cas_is_refused() {
        let h = history(vec![
            (1, 0, 10, set("x", "a"), Outcome::Ok),
            (2, 20, 30, cas("x", "a", "c"), Outcome::Swapped(true)),
            (3, 40, 50, get("x"), value("a")),
        ]);
        refused(&h);
    }

    #[test]
    fn two_cas_swapping_from_the_same_value_are_refused() {
        let h = history(vec![
            (1, 0, 10, set("x", "a"), Outcome::Ok),
            (2, 20, 60, cas("x", "a", "b"), Outcome::Swapped(true)),
            (3, 25, 65, cas("x", "a", "c"), Outcome::Swapped(true)),
        ]);
        refused(&h);
    }

    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        let h = history(vec![
            (1, 0, 100, set("x", "a"), Outcome::Ok),
            (2, 10, 20, get("x"), Outcome::Value(None)),
            (3, 30, 40, get("x"), value("a")),
            (4, 50, 150, set("x", "b"), Outcome::Ok),
            (5, 60, 70, get("x"), value("b")),
            (2, 80, 90, get("x"), value("b")),
            (6, 95, 140, cas("x", "b", "c"), Outcome::Swapped(true)),
            (3, 160, 170, get("x"), value("c")),
        ]);
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn unknown_writes_may_or_may_not_take_effect_even_after_they_gave_up() {
        // Seen long after the client gave up.
        let h = history(vec![
            (1, 0, 10, set("x", "late"), Outcome::Unknown),
            (2, 20, 30, get("x"), Outcome::Value(None)),
            (2, 200, 210, get("x"), value("late")),
        ]);
        assert_eq!(check(&h), Ok(()));
        // Never seen.
        let h = history(vec![
            (1, 0, 10, set("x", "a"), Outcome::Ok),
            (1, 20, 30, set("x", "never"), Outcome::Unknown),
            (2, 40, 50, get("x"), value("a")),
        ]);
        assert_eq!(check(&h), Ok(()));
        // An unseen unknown write is the only explanation for a failed CAS.
        let h = history(vec![
            (1, 0, 10, set("x", "a"), Outcome::Ok),
            (3, 5, 6, set("x", "unseen"), Outcome::Unknown),
            (2, 20, 30, cas("x", "a", "c"), Outcome::Swapped(false)),
        ]);
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn a_chain_of_unknown_writes_explains_a_later_read() {
        // Only an unknown SET followed by an unknown CAS from its value explains "n".
        let h = history(vec![
            (1, 0, 10, set("x", "v"), Outcome::Unknown),
            (2, 5, 15, cas("x", "v", "n"), Outcome::Unknown),
            (3, 100, 110, get("x"), value("n")),
        ]);
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn an_unknown_write_cannot_take_effect_before_its_invocation() {
        let h = history(vec![
            (2, 0, 10, get("x"), value("early")),
            (1, 20, 30, set("x", "early"), Outcome::Unknown),
        ]);
        refused(&h);
    }

    #[test]
    fn keys_are_checked_independently() {
        let h = history(vec![
            (1, 0, 10, set("x", "a"), Outcome::Ok),
            (1, 20, 30, incr("n"), Outcome::Integer(1)),
            (2, 40, 50, get("x"), value("a")),
            (2, 60, 70, get("y"), Outcome::Value(None)),
            (2, 80, 90, get("n"), value("1")),
        ]);
        let stats = check_with(&h, &CheckOptions::default()).expect("linearizable");
        assert_eq!(stats.n_keys, 3);
        assert_eq!(stats.n_definite, 5);
        let mut bad = h.clone();
        bad.push(Entry {
            client: 3,
            op: get("n"),
            invoke_ns: 100,
            complete_ns: 110,
            outcome: Outcome::Value(None),
        });
        assert_eq!(refused(&bad).key, key("n"));
    }

    #[test]
    fn incr_on_a_non_integer_must_answer_an_error() {
        let h = history(vec![
            (1, 0, 10, set("x", "word"), Outcome::Ok),
            (1, 20, 30, incr("x"), Outcome::Error),
            (1, 40, 50, get("x"), value("word")),
        ]);
        assert_eq!(check(&h), Ok(()));
        let h = history(vec![
            (1, 0, 10, set("x", "word"), Outcome::Ok),
            (1, 20, 30, incr("x"), Outcome::Integer(1)),
        ]);
        refused(&h);
    }

    #[test]
    fn malformed_entries_are_rejected_not_checked() {
        let h = history(vec![(1, 50, 10, get("x"), Outcome::Value(None))]);
        assert!(matches!(
            check(&h),
            Err(Violation::InvalidHistory { index: 0, .. })
        ));
        let h = history(vec![(1, 0, 10, get("x"), Outcome::Ok)]);
        assert!(matches!(
            check(&h),
            Err(Violation::InvalidHistory { index: 0, .. })
        ));
    }

    #[test]
    fn a_search_past_its_budget_is_inconclusive_not_a_pass() {
        // Many concurrent INCRs answered out of order: linearizable, but the search must
        // try orders; with a budget of 3 states it cannot finish.
        let entries = (0..12)
            .map(|i| (i, 0, 100, incr("n"), Outcome::Integer(12 - i as i64)))
            .collect();
        let h = history(entries);
        assert_eq!(check(&h), Ok(()));
        assert!(matches!(
            check_with(&h, &CheckOptions { max_states: 3 }),
            Err(Violation::Inconclusive { .. })
        ));
    }

    /// A random history that is linearizable by construction: each op takes effect at a
    /// random point inside its interval; some writes are reported unknown (applied or
    /// not, maybe after the client gave up).
    fn random_linearizable_history(rng: &mut ChaCha8Rng, unknown_rate: f64) -> History {
        let keys = ["r", "n"];
        let mut planned = Vec::new();
        for client in 0..4u64 {
            let mut time = rng.gen_range(0..20u64);
            for sequence in 0..rng.gen_range(5..25u64) {
                let k = keys[rng.gen_range(0..2)];
                let op = match (k, rng.gen_range(0..3)) {
                    ("n", 0) => get(k),
                    ("n", _) => incr(k),
                    (_, 0) => get(k),
                    (_, 1) => set(k, &format!("c{client}-{sequence}")),
                    _ => cas(k, &format!("c{}-{}", rng.gen_range(0..4), sequence), "z"),
                };
                let duration = rng.gen_range(1..60u64);
                let effect = time + rng.gen_range(0..=duration);
                let unknown = !op.is_read() && rng.gen_bool(unknown_rate);
                let applied = !unknown || rng.gen_bool(0.5);
                let effect = if unknown {
                    effect + rng.gen_range(0..200)
                } else {
                    effect
                };
                planned.push((client, time, time + duration, op, unknown, applied, effect));
                time += duration + rng.gen_range(1..10u64);
            }
        }
        let mut order: Vec<usize> = (0..planned.len()).collect();
        order.sort_by_key(|&i| planned[i].6);
        let mut state: HashMap<Vec<u8>, Value> = HashMap::new();
        let mut outcomes = vec![Outcome::Unknown; planned.len()];
        for i in order {
            let (_, _, _, op, unknown, applied, _) = &planned[i];
            if !applied {
                continue;
            }
            let value = state.entry(op.key().to_vec()).or_default();
            let outcome = match op {
                Op::Get { .. } => Outcome::Value(value.clone()),
                Op::Set { value: new, .. } => {
                    *value = Some(new.clone());
                    Outcome::Ok
                }
                Op::Incr { .. } => {
                    let next = value.as_deref().and_then(parse_integer).unwrap_or(0) + 1;
                    *value = Some(next.to_string().into_bytes());
                    Outcome::Integer(next)
                }
                Op::Cas { expected, new, .. } => {
                    let swap = value.as_deref() == Some(expected.as_slice());
                    if swap {
                        *value = Some(new.clone());
                    }
                    Outcome::Swapped(swap)
                }
            };
            if !unknown {
                outcomes[i] = outcome;
            }
        }
        history(
            planned
                .into_iter()
                .zip(outcomes)
                .map(|((client, invoke, complete, op, ..), outcome)| {
                    (client, invoke, complete, op, outcome)
                })
                .collect(),
        )
    }

    #[test]
    fn random_linearizable_histories_are_accepted_and_a_corrupted_read_is_refused() {
        let mut n_refused = 0;
        for seed in 0..300 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let unknown_rate = if seed % 2 == 0 { 0.15 } else { 0.5 };
            let h = random_linearizable_history(&mut rng, unknown_rate);
            if let Err(violation) = check(&h) {
                panic!("seed {seed}: a linearizable history was refused: {violation}");
            }
            // A read answering a value nobody ever wrote can never be explained.
            let mut corrupted = h.clone();
            let Some(read) = corrupted
                .entries
                .iter_mut()
                .find(|e| e.op.is_read() && e.outcome != Outcome::Unknown)
            else {
                continue;
            };
            read.outcome = value("never-written");
            assert!(
                matches!(check(&corrupted), Err(Violation::NotLinearizable(_))),
                "seed {seed}: a corrupted read was accepted"
            );
            n_refused += 1;
        }
        assert!(n_refused > 200, "too few corrupted histories: {n_refused}");
    }

    fn finals(pairs: &[(&str, Option<&str>)]) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        pairs.iter().map(|(k, v)| (key(k), v.map(key))).collect()
    }

    #[test]
    fn lost_acknowledged_incrs_are_counted() {
        let h = history(vec![
            (1, 0, 10, incr("n"), Outcome::Integer(1)),
            (1, 20, 30, incr("n"), Outcome::Integer(2)),
            (2, 25, 35, incr("n"), Outcome::Unknown),
            (1, 40, 50, incr("n"), Outcome::Integer(4)),
        ]);
        assert!(lost_acknowledged_writes(&h, &finals(&[("n", Some("4"))])).is_empty());
        let lost = lost_acknowledged_writes(&h, &finals(&[("n", Some("2"))]));
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].count, 2);
        assert_eq!(
            lost_acknowledged_writes(&h, &finals(&[("n", None)]))[0].count,
            4
        );
    }

    #[test]
    fn lost_acknowledged_sets_are_counted() {
        let h = history(vec![
            (1, 0, 10, set("x", "a"), Outcome::Ok),
            (1, 20, 30, set("x", "b"), Outcome::Ok),
            (2, 25, 40, set("x", "c"), Outcome::Unknown),
            (3, 50, 60, cas("x", "b", "d"), Outcome::Swapped(true)),
        ]);
        for fine in ["d", "c"] {
            assert!(lost_acknowledged_writes(&h, &finals(&[("x", Some(fine))])).is_empty());
        }
        // "a" returned before both later acknowledged writes were invoked.
        assert_eq!(
            lost_acknowledged_writes(&h, &finals(&[("x", Some("a"))]))[0].count,
            2
        );
        assert_eq!(
            lost_acknowledged_writes(&h, &finals(&[("x", None)]))[0].count,
            3
        );
    }
}
