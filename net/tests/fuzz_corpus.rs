//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the same
//! harnesses the fuzz targets run (`tally_net::fuzzing`), so every input the fuzzer kept
//! (and every crash it found, once fixed) is checked by plain `cargo test` on stable.
//! A harness panic fails the test and names the input file.

use tally_net::fuzzing;
use tally_wal::fuzzing::replay_corpus;

/// The replay is not vacuous: a harness that panics fails it.
#[test]
#[should_panic(expected = "inputs panicked")]
fn replay_fails_when_the_harness_panics() {
    replay_corpus("handshake", |_| panic!("harness broke a promise"));
}

#[test]
fn frame_corpus_replays_without_panics() {
    replay_corpus("frame", fuzzing::frame_stream);
}

#[test]
fn raft_codec_corpus_replays_without_panics() {
    replay_corpus("raft_codec", fuzzing::raft_codec);
}

#[test]
fn handshake_corpus_replays_without_panics() {
    replay_corpus("handshake", fuzzing::handshake);
}

#[test]
fn resp_corpus_replays_without_panics() {
    replay_corpus("resp", fuzzing::resp_request);
}

#[test]
fn kv_request_corpus_replays_without_panics() {
    replay_corpus("kv_request", fuzzing::kv_request);
}
