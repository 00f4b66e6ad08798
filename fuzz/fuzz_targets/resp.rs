//! Fuzz target `resp`: the harness `tally_net::fuzzing::resp_request` (also replayed over
//! `fuzz/corpus/resp/` by `cargo test`; see `docs/FUZZING.md`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_net::fuzzing::resp_request(data));
