//! Fuzz target `snapshot_file`: the harness `tally_wal::fuzzing::snapshot_file` (also
//! replayed over `fuzz/corpus/snapshot_file/` by `cargo test`; see `docs/FUZZING.md`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_wal::fuzzing::snapshot_file(data));
