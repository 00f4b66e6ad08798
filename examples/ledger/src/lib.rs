//! An example database built on Tally: a replicated ledger.
//!
//! * [`ledger`]: the state machine (accounts, transfers that never overdraw, snapshots).
//! * [`front_end`]: its own client protocol (lines over TCP), plugged into Tally's
//!   generic `tally_net::server::ServerBuilder`.
//! * [`cluster`]: a local cluster of members and an exactly-once client.
//!
//! Run it: `cargo run --release -p tally-ledger-example`. Walkthrough:
//! `docs/EMBEDDING.md`.

pub mod cluster;
pub mod front_end;
pub mod ledger;

/// What every member answers a write or read: the ledger's reply, or why the client
/// session refused it (`tally_engine::exactly_once::ExactlyOnce` wraps the ledger).
pub type Response = Result<ledger::LedgerReply, tally_engine::exactly_once::SessionError>;

#[doc = include_str!("../../../docs/EMBEDDING.md")]
pub mod guide {}
