//! The apply thread: runs the driver's [`Applier`] on its own thread so the raft thread
//! never waits for the state machine.

use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, Sender};

use super::{NodeError, NodeStatus};
use crate::driver::{Applier, ApplyWork};
use crate::state_machine::StateMachine;

/// Runs until the raft thread hangs up. Returns the state machine's fatal error.
pub(crate) fn apply_loop<SM: StateMachine>(
    state_machine: SM,
    work: Receiver<ApplyWork<SM::Response>>,
    applied_tx: Sender<u64>,
    status: &NodeStatus,
) -> Result<(), NodeError> {
    let mut applier = Applier::new(state_machine);
    for item in work.iter() {
        let outcome = applier.handle(item)?;
        status
            .reads_lease
            .fetch_add(outcome.reads_lease, Ordering::Relaxed);
        status
            .reads_read_index
            .fetch_add(outcome.reads_read_index, Ordering::Relaxed);
        if let Some(applied) = outcome.applied_through {
            status.applied_index.store(applied, Ordering::Relaxed);
            let _ = applied_tx.send(applied);
        }
    }
    Ok(())
}
