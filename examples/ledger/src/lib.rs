//! An example database built on Tally: a replicated ledger.
//!
//! * [`ledger`]: the state machine (accounts, transfers that never overdraw, snapshots).
//! * [`cluster`]: a local cluster of replicas and an exactly-once client.
//!
//! Run it: `cargo run --release -p tally-ledger-example`. Walkthrough:
//! `docs/EMBEDDING.md`.

pub mod cluster;
pub mod ledger;
