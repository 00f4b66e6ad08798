//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the same
//! harnesses the fuzz targets run (`tally_net::fuzzing`), so every input the fuzzer kept
//! (and every crash it found, once fixed) is checked by plain `cargo test` on stable.
//! A harness panic fails the test and names the input file.

use std::fs;
use std::panic;
use std::path::PathBuf;

use tally_net::fuzzing;

/// Runs `harness` over every file of `fuzz/corpus/<target>/`; fails naming each input
/// that panics, and if the directory holds no input at all.
fn replay(target: &str, harness: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    paths.retain(|p| p.is_file());
    paths.sort();
    assert!(!paths.is_empty(), "no corpus inputs in {}", dir.display());
    let failures: Vec<String> = paths
        .iter()
        .filter_map(|path| {
            let data = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            panic::catch_unwind(|| harness(&data))
                .err()
                .map(|_| path.display().to_string())
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} {target} inputs panicked: {failures:?}",
        failures.len(),
        paths.len()
    );
}

/// The replay is not vacuous: a harness that panics fails it.
#[test]
#[should_panic(expected = "inputs panicked")]
fn replay_fails_when_the_harness_panics() {
    replay("handshake", |_| panic!("harness broke a promise"));
}

#[test]
fn frame_corpus_replays_without_panics() {
    replay("frame", fuzzing::frame_stream);
}

#[test]
fn raft_codec_corpus_replays_without_panics() {
    replay("raft_codec", fuzzing::raft_codec);
}

#[test]
fn handshake_corpus_replays_without_panics() {
    replay("handshake", fuzzing::handshake);
}

#[test]
fn resp_corpus_replays_without_panics() {
    replay("resp", fuzzing::resp_request);
}

#[test]
fn kv_request_corpus_replays_without_panics() {
    replay("kv_request", fuzzing::kv_request);
}
