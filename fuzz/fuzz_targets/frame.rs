//! Fuzz target `frame`: the harness `tally_net::fuzzing::frame_stream` (also replayed over
//! `fuzz/corpus/frame/` by `cargo test`; see `docs/FUZZING.md`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_net::fuzzing::frame_stream(data));
