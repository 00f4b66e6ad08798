//! Fuzz target `wal_recovery`: the harness `tally_wal::fuzzing::recover_dir` (also replayed over
//! `fuzz/corpus/wal_recovery/` by `cargo test`; see `docs/FUZZING.md`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_wal::fuzzing::recover_dir(data));
