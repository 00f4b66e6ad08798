//! tally-nemesis: real `tally-server` processes under faults, checked from the outside.
//!
//! Why a crate of its own (not a `bench/` binary): it needs none of the benchmark's
//! dependencies, its test is the one slow process test worth running alone
//! (`cargo test -p tally-nemesis`), and other real-process suites can reuse its cluster,
//! proxies and clients. It uses only what an operator has: the `tally-server` CLI and
//! RESP.
//!
//! A run: `nodes` members, each peer link behind its own proxy ([`proxy`]); client
//! threads doing GET/SET/INCR/CAS ([`client`]); the nemesis ([`faults`]) cycling through
//! kill -9, SIGSTOP, partitions, one-way partitions, an isolated leader and a slow disk.
//! At the end everything is healed, every key is read through the leader, and the
//! history goes through [`tally_engine::lincheck`] and the lost-write count.

pub mod client;
pub mod cluster;
pub mod faults;
pub mod history_file;
pub mod proxy;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tally_engine::lincheck::{self, CheckOptions, CheckStats, History, LostWrite, Violation};

use crate::client::{ClientCounts, Worker};
use crate::cluster::Cluster;
use crate::faults::{FaultKind, Nemesis, NemesisLog, Schedule};

/// Why a run could not be carried out (a harness or liveness failure, not a verdict).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NemesisError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no leader every member agrees on within {seconds} s ({phase})")]
    NoLeader { phase: &'static str, seconds: u64 },
    #[error("the final reads did not all succeed within {seconds} s")]
    FinalReads { seconds: u64 },
    #[error("a client thread panicked")]
    ClientPanicked,
}

impl NemesisError {
    /// For `map_err`: an I/O error while doing `what`.
    pub fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> NemesisError {
        move |source| NemesisError::Io { what, source }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The `tally-server` binary.
    pub server_bin: PathBuf,
    /// Length of the faulty phase.
    pub seconds: u64,
    pub seed: u64,
    pub nodes: u64,
    pub clients: u64,
    /// Where member directories, logs and the history go (kept); `None`: a temporary
    /// directory, kept only when the run fails.
    pub dir: Option<PathBuf>,
    pub schedule: Schedule,
    pub check: CheckOptions,
}

impl RunConfig {
    pub fn new(server_bin: PathBuf) -> RunConfig {
        RunConfig {
            server_bin,
            seconds: 45,
            seed: 1,
            nodes: 5,
            clients: 6,
            dir: None,
            schedule: Schedule::default(),
            check: CheckOptions::default(),
        }
    }
}

/// Liveness deadlines after the faults (generous: the machine may be busy).
const RECOVERY_DEADLINE: Duration = Duration::from_secs(90);

/// The outcome of a run.
#[derive(Debug)]
pub struct RunReport {
    pub seed: u64,
    pub seconds: u64,
    pub nodes: u64,
    pub counts: ClientCounts,
    pub nemesis: NemesisLog,
    /// The linearizability verdict over every client's history plus the final reads.
    pub check: Result<CheckStats, Violation>,
    pub lost: Vec<LostWrite>,
    /// How long the linearizability check took (informational).
    pub check_ms: u64,
    /// Where the run's files are (when kept).
    pub dir: Option<PathBuf>,
    pub history: History,
}

impl RunReport {
    /// Acknowledged writes missing from the final state.
    pub fn n_lost(&self) -> u64 {
        self.lost.iter().map(|lost| lost.count).sum()
    }

    /// Linearizable, nothing lost, no member exited on its own.
    pub fn passed(&self) -> bool {
        self.check.is_ok() && self.lost.is_empty() && self.nemesis.unexpected_exits.is_empty()
    }

    /// Faults of `kind` injected.
    pub fn faults_of(&self, kind: FaultKind) -> u64 {
        self.nemesis.faults.get(&kind).copied().unwrap_or(0)
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        writeln!(
            f,
            "nemesis: seed={} nodes={} seconds={}",
            self.seed, self.nodes, self.seconds
        )?;
        writeln!(
            f,
            "ops: {} acknowledged: {} unknown: {} refused: {} unexpected_errors: {}",
            c.n_sent, c.n_acknowledged, c.n_unknown, c.n_refused, c.n_unexpected_errors
        )?;
        let faults: Vec<String> = FaultKind::ALL
            .iter()
            .map(|kind| format!("{}={}", kind.name(), self.faults_of(*kind)))
            .collect();
        writeln!(f, "faults: {}", faults.join(" "))?;
        writeln!(f, "leader changes: {}", self.nemesis.leader_changes())?;
        for (id, status) in &self.nemesis.unexpected_exits {
            writeln!(f, "unexpected exit: node {id}: {status}")?;
        }
        match &self.check {
            Ok(stats) => writeln!(
                f,
                "linearizability: ok (keys={} definite={} unknown_writes={} states={} check_ms={})",
                stats.n_keys,
                stats.n_definite,
                stats.n_unknown_writes,
                stats.n_states,
                self.check_ms
            )?,
            Err(violation) => writeln!(f, "linearizability: VIOLATION\n{violation}")?,
        }
        writeln!(f, "violations: {}", u8::from(self.check.is_err()))?;
        writeln!(f, "lost acknowledged writes: {}", self.n_lost())?;
        for lost in &self.lost {
            writeln!(f, "  {}", lost.detail)?;
        }
        if let Some(dir) = &self.dir {
            writeln!(f, "files: {}", dir.display())?;
        }
        write!(
            f,
            "verdict: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

/// Starts the cluster, runs clients and nemesis, heals, reads, checks. The files of a
/// run that fails or errs are kept (the path is in the report or printed).
pub fn run(config: &RunConfig) -> Result<RunReport, NemesisError> {
    let (temp, root) = match &config.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(NemesisError::io("create --dir"))?;
            (None, dir.clone())
        }
        None => {
            let temp = tempfile::tempdir().map_err(NemesisError::io("create a temp dir"))?;
            let root = temp.path().to_path_buf();
            (Some(temp), root)
        }
    };
    let result = run_in(config, &root);
    let passed = matches!(&result, Ok(report) if report.passed());
    if let (Some(temp), false) = (temp, passed) {
        let kept = temp.keep();
        eprintln!("tally-nemesis: run files kept in {}", kept.display());
    }
    let mut report = result?;
    if config.dir.is_some() || !passed {
        write_history(&root, &report)?;
        report.dir = Some(root);
    }
    Ok(report)
}

fn run_in(config: &RunConfig, root: &Path) -> Result<RunReport, NemesisError> {
    let mut cluster = Cluster::start(config.nodes, root, &config.server_bin)?;
    let deadline_s = RECOVERY_DEADLINE.as_secs();
    cluster
        .wait_for_agreed_leader(RECOVERY_DEADLINE)
        .ok_or(NemesisError::NoLeader {
            phase: "start",
            seconds: deadline_s,
        })?;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let ports: Vec<u16> = cluster.members.iter().map(|m| m.client_port).collect();
    let workers = spawn_clients(config, &ports, start, &stop)?;
    let mut nemesis = Nemesis::new(
        &mut cluster,
        ChaCha8Rng::seed_from_u64(config.seed),
        config.schedule,
        start,
    );
    let nemesis_result = nemesis.run(start + Duration::from_secs(config.seconds));
    let nemesis_log = nemesis.log;
    stop.store(true, Ordering::Relaxed);
    let (mut history, counts) = join_clients(workers)?;
    nemesis_result?;
    cluster.heal()?;
    let leader =
        cluster
            .wait_for_agreed_leader(RECOVERY_DEADLINE)
            .ok_or(NemesisError::NoLeader {
                phase: "after healing",
                seconds: deadline_s,
            })?;
    let leader_port = cluster.member(leader).client_port;
    let finals = client::final_reads(&ports, leader_port, start, RECOVERY_DEADLINE, &mut history)
        .ok_or(NemesisError::FinalReads {
        seconds: deadline_s,
    })?;
    drop(cluster);
    let check_started = Instant::now();
    let check = lincheck::check_with(&history, &config.check);
    let check_ms = check_started.elapsed().as_millis() as u64;
    let lost = lincheck::lost_acknowledged_writes(&history, &finals);
    Ok(RunReport {
        seed: config.seed,
        seconds: config.seconds,
        nodes: config.nodes,
        counts,
        nemesis: nemesis_log,
        check,
        lost,
        check_ms,
        dir: None,
        history,
    })
}

fn spawn_clients(
    config: &RunConfig,
    ports: &[u16],
    start: Instant,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<std::thread::JoinHandle<Worker>>, NemesisError> {
    (1..=config.clients)
        .map(|client| {
            let rng =
                ChaCha8Rng::seed_from_u64(config.seed.wrapping_mul(1000).wrapping_add(client));
            let worker = Worker::new(client, ports.to_vec(), rng, start, Arc::clone(stop));
            std::thread::Builder::new()
                .name(format!("nemesis-client-{client}"))
                .spawn(move || worker.run())
                .map_err(NemesisError::io("spawn a client thread"))
        })
        .collect()
}

fn join_clients(
    workers: Vec<std::thread::JoinHandle<Worker>>,
) -> Result<(History, ClientCounts), NemesisError> {
    let mut history = History::new();
    let mut counts = ClientCounts::default();
    for handle in workers {
        let worker = handle.join().map_err(|_| NemesisError::ClientPanicked)?;
        let c = worker.counts;
        counts.n_sent += c.n_sent;
        counts.n_acknowledged += c.n_acknowledged;
        counts.n_unknown += c.n_unknown;
        counts.n_refused += c.n_refused;
        counts.n_unexpected_errors += c.n_unexpected_errors;
        history.extend(worker.history);
    }
    Ok((history, counts))
}

/// `summary.txt` and `timeline.txt` under `root`, and for a failed run `history.txt`
/// (one line per operation, in invocation order; a long run's is large).
fn write_history(root: &Path, report: &RunReport) -> Result<(), NemesisError> {
    let write = |name: &str, contents: &str| {
        std::fs::write(root.join(name), contents).map_err(NemesisError::io("write run files"))
    };
    write("summary.txt", &format!("{report}\n"))?;
    write("timeline.txt", &(report.nemesis.timeline.join("\n") + "\n"))?;
    if report.passed() {
        return Ok(());
    }
    let mut order: Vec<usize> = (0..report.history.len()).collect();
    order.sort_by_key(|&i| report.history.entries()[i].invoke_ns);
    let mut text = String::new();
    for index in order {
        text.push_str(&lincheck::describe(&report.history, index));
        text.push('\n');
    }
    write("history.txt", &text)
}
