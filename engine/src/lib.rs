//! tally-engine: the sans-IO Raft core, the deterministic cluster simulator,
//! the state-machine interface and the KV state machine Tally ships.

pub mod driver;
pub mod exactly_once;
pub mod kv;
pub mod lincheck;
pub mod raft;
pub mod runtime;
pub mod sim;
pub mod state_machine;
