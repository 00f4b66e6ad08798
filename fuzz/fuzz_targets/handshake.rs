//! Fuzz target `handshake`: the harness `tally_net::fuzzing::handshake` (also replayed over
//! `fuzz/corpus/handshake/` by `cargo test`; see `docs/FUZZING.md`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_net::fuzzing::handshake(data));
