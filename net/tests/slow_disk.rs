//! A slow disk must not cost leadership: three real `tally-server` processes whose every
//! WAL fsync takes one extra second (`--emulated-fsync-delay-us 1000000`), a minute of
//! pipelined write load large enough to fill the WAL's pending buffer, and through all
//! of it the term (INFO `term`) and every member's role stay as they were.
//!
//! Why this is a process test: the property spans the raft thread, the WAL writer, the
//! apply thread and the peer transport of real processes. Nothing here asserts speed;
//! the writes only have to complete. The test takes about 70 s on purpose.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cmd, error_text, ok, Cluster};

/// How long the load runs.
const LOAD: Duration = Duration::from_secs(60);
/// Writer connections, commands per pipeline, value size: 6 × 32 × 64 KiB = 12 MiB in
/// flight, more than the WAL's 8 MiB pending buffer holds while a 1 s fsync runs.
const WRITERS: usize = 6;
const PIPELINE_DEPTH: usize = 32;
const VALUE_BYTES: usize = 64 << 10;
/// Keys per writer (overwritten, so snapshots stay small and the WAL can be compacted).
const KEYS_PER_WRITER: usize = 16;

/// `(term, role)` of every member, or `None` for a member that does not answer INFO.
fn terms_and_roles(cluster: &Cluster) -> BTreeMap<u64, Option<(String, String)>> {
    cluster
        .members
        .iter()
        .map(|member| {
            let seen = member
                .raft_info()
                .and_then(|info| Some((info.get("term")?.clone(), info.get("role")?.clone())));
            (member.id, seen)
        })
        .collect()
}

/// Writes pipelines of large SETs to `port` until `stop`; returns the error replies.
fn write_load(
    port: u16,
    writer: usize,
    stop: &AtomicBool,
    acknowledged: &AtomicU64,
) -> Vec<String> {
    let mut client = common::Client::connect(port).expect("connect to the leader");
    let value = "v".repeat(VALUE_BYTES);
    let mut errors = Vec::new();
    let mut round = 0usize;
    while !stop.load(Ordering::Relaxed) && errors.len() < 10 {
        let commands: Vec<Vec<Vec<u8>>> = (0..PIPELINE_DEPTH)
            .map(|slot| {
                let key = format!(
                    "w{writer}-k{}",
                    (round * PIPELINE_DEPTH + slot) % KEYS_PER_WRITER
                );
                cmd(&["SET", &key, &value])
            })
            .collect();
        for reply in client.pipeline(&commands) {
            if reply == ok() {
                acknowledged.fetch_add(1, Ordering::Relaxed);
            } else {
                errors.push(error_text(&reply).unwrap_or_else(|| format!("{reply:?}")));
            }
        }
        round += 1;
    }
    errors
}

#[test]
fn a_one_second_fsync_on_every_node_under_a_minute_of_load_causes_no_election() {
    let cluster = Cluster::start_with_args(
        3,
        &[
            "--emulated-fsync-delay-us",
            "1000000",
            "--snapshot-log-bytes",
            "67108864",
            "--log-retain-entries",
            "1000",
        ],
    );
    let leader = cluster.wait_for_leader();
    let before = terms_and_roles(&cluster);
    assert!(
        before.values().all(Option::is_some),
        "INFO before the load: {before:?}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let port = cluster.member(leader).client_port;
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let stop = Arc::clone(&stop);
            let acknowledged = Arc::clone(&acknowledged);
            std::thread::spawn(move || write_load(port, writer, &stop, &acknowledged))
        })
        .collect();

    let started = Instant::now();
    let mut changes = Vec::new();
    while started.elapsed() < LOAD {
        std::thread::sleep(Duration::from_millis(500));
        let now = terms_and_roles(&cluster);
        if now != before {
            changes.push((started.elapsed(), now));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let errors: Vec<String> = writers
        .into_iter()
        .flat_map(|writer| writer.join().expect("writer thread"))
        .collect();
    let after = terms_and_roles(&cluster);

    let acknowledged = acknowledged.load(Ordering::Relaxed);
    eprintln!(
        "slow disk: {acknowledged} writes acknowledged in {LOAD:?}, {} errors",
        errors.len()
    );
    let first_changes: Vec<_> = changes.iter().take(5).collect();
    assert!(
        changes.is_empty(),
        "term or role changed under the slow disk (before {before:?}), first of {} samples: {first_changes:?}",
        changes.len()
    );
    assert_eq!(after, before, "term or role changed by the end of the load");
    assert!(
        errors.is_empty(),
        "write errors under the slow disk: {errors:?}"
    );
    assert!(
        acknowledged >= (WRITERS * PIPELINE_DEPTH) as u64,
        "only {acknowledged} writes completed in a minute"
    );
}
