//! One module per subcommand group; each writes its report to `out` and returns the
//! outcome that decides the exit code.

pub mod diff;
pub mod dump;
pub mod info;
pub mod repair;
pub mod snapshot;
