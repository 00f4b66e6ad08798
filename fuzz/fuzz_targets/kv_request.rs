//! Fuzz target `kv_request`: the harness `tally_net::fuzzing::kv_request` (also replayed over
//! `fuzz/corpus/kv_request/` by `cargo test`; see `docs/FUZZING.md`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_net::fuzzing::kv_request(data));
