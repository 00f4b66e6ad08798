//! The nemesis: cycles through every fault kind (each cycle in a seeded random order),
//! holds each fault for a while, heals, and watches who leads.
//!
//! A fault aimed at "a node" hits the current leader half of the time, since faults at
//! the leader are the ones that exercise elections, leases and unknown outcomes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::cluster::{Cluster, Disk};
use crate::NemesisError;

/// What the nemesis does to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// kill -9, restarted on the same directory at the heal.
    Kill,
    /// SIGSTOP, SIGCONT at the heal.
    Pause,
    /// A minority and a majority that cannot reach each other (both directions).
    Partition,
    /// One node's outbound or inbound links cut, the other direction intact.
    OneWay,
    /// The leader (found via INFO) cut off from every peer; clients still reach it.
    IsolateLeader,
    /// A restart with `--emulated-fsync-delay-us`, back to normal at the heal.
    SlowDisk,
}

impl FaultKind {
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::OneWay,
        FaultKind::IsolateLeader,
        FaultKind::SlowDisk,
    ];

    /// The name in the summary line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::OneWay => "one_way",
            FaultKind::IsolateLeader => "isolate_leader",
            FaultKind::SlowDisk => "slow_disk",
        }
    }
}

/// How long faults and heals last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub fault_min_ms: u64,
    pub fault_max_ms: u64,
    pub heal_min_ms: u64,
    pub heal_max_ms: u64,
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule {
            fault_min_ms: 1500,
            fault_max_ms: 3500,
            heal_min_ms: 1000,
            heal_max_ms: 2500,
        }
    }
}

/// What the nemesis did and saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NemesisLog {
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// Every `(term, leader id)` observed through INFO.
    pub leaders: BTreeSet<(u64, u64)>,
    /// One line per fault: seconds since the start, what was done.
    pub timeline: Vec<String>,
    /// Members that exited without being killed: `(id, status text)`.
    pub unexpected_exits: Vec<(u64, String)>,
}

impl NemesisLog {
    /// Leader changes seen: distinct (term, leader) pairs after the first.
    pub fn leader_changes(&self) -> u64 {
        self.leaders.len().saturating_sub(1) as u64
    }
}

pub struct Nemesis<'a> {
    cluster: &'a mut Cluster,
    rng: ChaCha8Rng,
    schedule: Schedule,
    start: Instant,
    pub log: NemesisLog,
}

impl<'a> Nemesis<'a> {
    pub fn new(
        cluster: &'a mut Cluster,
        rng: ChaCha8Rng,
        schedule: Schedule,
        start: Instant,
    ) -> Nemesis<'a> {
        Nemesis {
            cluster,
            rng,
            schedule,
            start,
            log: NemesisLog::default(),
        }
    }

    /// Faults and heals until `until` (the last fault is healed before returning).
    pub fn run(&mut self, until: Instant) -> Result<(), NemesisError> {
        let mut queue: Vec<FaultKind> = Vec::new();
        self.observe_for(Duration::from_millis(self.schedule.heal_min_ms));
        while Instant::now() < until {
            if queue.is_empty() {
                queue = FaultKind::ALL.to_vec();
                queue.shuffle(&mut self.rng);
            }
            let kind = queue.remove(0);
            let (done, what) = self.inject(kind)?;
            if done != kind {
                // No leader to isolate this time: try again next.
                queue.insert(0, kind);
            }
            self.note(&what);
            let hold_ms = self
                .rng
                .gen_range(self.schedule.fault_min_ms..=self.schedule.fault_max_ms);
            self.observe_for(Duration::from_millis(hold_ms));
            self.cluster.heal()?;
            self.note("heal");
            let heal_ms = self
                .rng
                .gen_range(self.schedule.heal_min_ms..=self.schedule.heal_max_ms);
            self.observe_for(Duration::from_millis(heal_ms));
        }
        Ok(())
    }

    fn note(&mut self, what: &str) {
        let line = format!("{:8.3}s {what}", self.start.elapsed().as_secs_f64());
        self.log.timeline.push(line);
    }

    /// Samples INFO for leaders (and checks for crashed members) for `duration`.
    fn observe_for(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        loop {
            self.log.leaders.extend(self.cluster.leaders());
            for (id, status) in self.cluster.crashed() {
                self.log.unexpected_exits.push((id, status.to_string()));
                self.note(&format!("node {id} exited on its own: {status}"));
                if let Err(error) = self.cluster.restart(id, Disk::Normal) {
                    self.note(&format!("restart of node {id} failed: {error}"));
                }
            }
            if Instant::now() >= until {
                return;
            }
            std::thread::sleep(Duration::from_millis(250).min(until - Instant::now()));
        }
    }

    /// The current leader half of the time (if one answers), else a random member.
    fn pick_node(&mut self) -> u64 {
        if self.rng.gen_bool(0.5) {
            if let Some(leader) = self.cluster.current_leader() {
                return leader;
            }
        }
        let ids = self.cluster.ids();
        ids[self.rng.gen_range(0..ids.len())]
    }

    fn find_leader(&mut self, deadline: Duration) -> Option<u64> {
        let started = Instant::now();
        while started.elapsed() < deadline {
            if let Some(leader) = self.cluster.current_leader() {
                return Some(leader);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Injects one fault of `kind` (or, for the isolated leader when none answers, a
    /// partition, counted as such); returns the kind done and a description.
    fn inject(&mut self, kind: FaultKind) -> Result<(FaultKind, String), NemesisError> {
        let (counted, what) = match kind {
            FaultKind::Kill => {
                let id = self.pick_node();
                self.cluster.member_mut(id).kill9();
                (kind, format!("kill -9 node {id}"))
            }
            FaultKind::Pause => {
                let id = self.pick_node();
                self.cluster.member_mut(id).pause();
                (kind, format!("SIGSTOP node {id}"))
            }
            FaultKind::Partition => {
                let mut ids = self.cluster.ids();
                ids.shuffle(&mut self.rng);
                let minority: Vec<u64> = ids[..ids.len() / 2].to_vec();
                self.cluster.network.isolate(&minority);
                (kind, format!("partition {minority:?} from the rest"))
            }
            FaultKind::OneWay => {
                let id = self.pick_node();
                let outbound = self.rng.gen_bool(0.5);
                for other in self.cluster.ids().into_iter().filter(|&o| o != id) {
                    if outbound {
                        self.cluster.network.cut(id, other);
                    } else {
                        self.cluster.network.cut(other, id);
                    }
                }
                let direction = if outbound { "send" } else { "hear" };
                (kind, format!("one-way: node {id} cannot {direction}"))
            }
            FaultKind::IsolateLeader => match self.find_leader(Duration::from_secs(5)) {
                Some(leader) => {
                    self.cluster.network.isolate(&[leader]);
                    (kind, format!("isolate leader node {leader}"))
                }
                None => {
                    let id = self.pick_node();
                    self.cluster.network.isolate(&[id]);
                    let what = format!("no leader answered; isolate node {id} (a partition)");
                    (FaultKind::Partition, what)
                }
            },
            FaultKind::SlowDisk => {
                let id = self.pick_node();
                let fsync_delay_us = self.rng.gen_range(5_000..=30_000u64);
                self.cluster.restart(id, Disk::Slow { fsync_delay_us })?;
                (
                    kind,
                    format!("restart node {id} with --emulated-fsync-delay-us {fsync_delay_us}"),
                )
            }
        };
        *self.log.faults.entry(counted).or_insert(0) += 1;
        Ok((counted, what))
    }
}
