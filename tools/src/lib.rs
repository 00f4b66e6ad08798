//! tally-tools: `tally-wal`, the offline inspector for Tally write-ahead logs.
//!
//! Every subcommand maps the segment files read-only, without the directory lock, and
//! runs [`tally_wal::inspect::scan`], which classifies the log with exactly the rules
//! of WAL recovery (clean / torn tail / corruption). Only `repair --yes` writes, and
//! only what recovery itself would write, after a backup.
//!
//! Exit codes: 0 clean (or logs agree), 1 torn tail, corruption or divergence found,
//! 2 usage errors, missing or unreadable directories, files that are not Tally segments.

pub mod commands;
pub mod decode;
pub mod entries;
pub mod error;
pub mod progress;
pub mod report;
pub mod snapshots;
pub mod source;
