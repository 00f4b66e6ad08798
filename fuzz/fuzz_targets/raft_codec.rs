//! Fuzz target `raft_codec`: the harness `tally_net::fuzzing::raft_codec` (also replayed over
//! `fuzz/corpus/raft_codec/` by `cargo test`; see `docs/FUZZING.md`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_net::fuzzing::raft_codec(data));
