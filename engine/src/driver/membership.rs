//! Membership changes and leadership transfers as requests with answers.
//!
//! Why this lives in the driver: an operator (the client port's `TALLY MEMBER ...`),
//! an embedder (`NodeHandle`) and the simulator's nemesis must go through the same
//! checks and get the same answers, and an answer may only say "done" once the change
//! has committed. The core decides quorums and joint consensus; this module turns an
//! operation (add a learner, promote, remove, transfer) into a target configuration,
//! refuses what must not start (not leader, another change under way, unknown id, a
//! learner still lagging), and answers when the core's log shows the final
//! configuration (C_new for a joint change) committed, or when the target leads.
//!
//! It also records what members tell about themselves (incarnation, client address,
//! learned from the peer handshake) into the configuration, as a simple configuration
//! entry that changes no quorum: so a member id that comes back with an emptied
//! directory (a new incarnation) can be refused by its peers.

use std::collections::HashMap;

use crate::raft::{
    ConfigChangeError, Configuration, MemberInfo, NodeId, RaftNode, Role, TransferError,
};

/// A membership operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Adds `id` as a learner (it receives the log, never votes) at these addresses.
    AddLearner {
        /// The new member's id (unused in the configuration).
        id: NodeId,
        /// Where it is (peer and client address) and its incarnation.
        info: MemberInfo,
    },
    /// Makes learner `id` a voter (joint consensus); refused while it lags by more than
    /// [`MembershipPolicy::max_promote_lag_entries`].
    Promote {
        /// The learner to promote.
        id: NodeId,
    },
    /// Removes voter or learner `id`; a removed leader steps down once C_new commits.
    Remove {
        /// The member to remove.
        id: NodeId,
    },
    /// Sets the voter set in one change (learners named become voters, voters not named
    /// leave). For embedders and the simulator; no lag check.
    ReplaceVoters {
        /// The complete new voter set.
        voters: Vec<NodeId>,
    },
}

/// Why a membership operation or transfer did not (or may not have) happened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// This node is not the leader.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader it believes in, if any: where to retry.
        leader: Option<NodeId>,
    },
    /// An earlier change has not finished (C_new not committed yet): one at a time.
    #[error("another membership change is in progress")]
    ChangeInProgress,
    /// A leadership transfer is under way; retry once it ended.
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    /// The id is not a member of the configuration.
    #[error("unknown member id {0}")]
    UnknownMember(NodeId),
    /// The id is already a voter or learner.
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    /// The id is a member but not a learner (only learners are promoted).
    #[error("node {0} is not a learner")]
    NotALearner(NodeId),
    /// The id is not a voter (only voters can take leadership).
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
    /// The learner's log is too far behind the leader's to promote it safely.
    #[error(
        "learner {id} still lags by {lag_entries} entries (promotion needs at most \
         {max_lag_entries})"
    )]
    LearnerLagging {
        /// The learner.
        id: NodeId,
        /// Entries it lacks compared with the leader's last index.
        lag_entries: u64,
        /// The most it may lack ([`MembershipPolicy::max_promote_lag_entries`]).
        max_lag_entries: u64,
    },
    /// The learner has not answered the leader within an election timeout.
    #[error(
        "learner {0} has not answered the leader within an election timeout (not connected \
         yet?); promoting it could cost the quorum"
    )]
    LearnerNotResponding(NodeId),
    /// The change would leave the configuration without a voter.
    #[error("the change would leave no voter")]
    NoVoters,
    /// Leadership changed before the change committed: it may or may not take effect;
    /// read the configuration to find out.
    #[error("leadership was lost before the change committed: outcome unknown")]
    LeadershipLost,
    /// The target did not take leadership within the transfer deadline.
    #[error("node {0} did not take leadership in time")]
    TransferTimedOut(NodeId),
    /// The node stopped (fail-stop or shutdown) before the operation finished.
    #[error("the node stopped")]
    NodeStopped,
}

/// A committed membership change: the configuration in effect and its entry's index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipOutcome {
    /// Log index of the configuration entry that committed the change.
    pub index: u64,
    /// The configuration now in effect.
    pub configuration: Configuration,
}

/// Called once with the outcome of a membership change (on the raft thread: must not
/// block).
pub type MembershipDone = Box<dyn FnOnce(Result<MembershipOutcome, MembershipError>) + Send>;
/// Called once with the new leader's id, or why the transfer failed.
pub type TransferDone = Box<dyn FnOnce(Result<NodeId, MembershipError>) + Send>;

/// Tunables of membership changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembershipPolicy {
    /// A learner is promoted only when its match index is at most this many entries
    /// behind the leader's last index (`--max-promote-lag-entries`).
    pub max_promote_lag_entries: u64,
    /// A transfer that did not make the target leader within this many election
    /// timeouts is answered [`MembershipError::TransferTimedOut`].
    pub transfer_timeout_elections: u64,
}

impl Default for MembershipPolicy {
    fn default() -> Self {
        MembershipPolicy {
            max_promote_lag_entries: 1000,
            transfer_timeout_elections: 4,
        }
    }
}

/// A change the core accepted, waiting for its final configuration to commit.
struct Pending {
    /// Index of the change's first entry (the joint one when joint).
    first_index: u64,
    /// `None`: an internal change (member information recorded), nobody waits.
    done: Option<MembershipDone>,
}

/// The driver's membership state. Invariant: at most one change is pending in the
/// core at a time (`pending`), and `waiting` holds an operator's change only while an
/// internal one is pending.
pub(super) struct MembershipState {
    pub(super) policy: MembershipPolicy,
    pending: Option<Pending>,
    waiting: Option<(MembershipChange, MembershipDone)>,
    /// (target, deadline tick, answer).
    transfer: Option<(NodeId, u64, TransferDone)>,
    /// What members said about themselves (handshake), newest per id.
    observed: HashMap<NodeId, MemberInfo>,
}

impl MembershipState {
    pub(super) fn new(policy: MembershipPolicy) -> MembershipState {
        MembershipState {
            policy,
            pending: None,
            waiting: None,
            transfer: None,
            observed: HashMap::new(),
        }
    }

    /// An operator's change: started now, held behind an internal change, or refused.
    pub(super) fn request(
        &mut self,
        core: &mut RaftNode,
        change: MembershipChange,
        done: MembershipDone,
    ) {
        match &self.pending {
            Some(pending) if pending.done.is_none() && self.waiting.is_none() => {
                self.waiting = Some((change, done));
            }
            Some(_) => done(Err(MembershipError::ChangeInProgress)),
            None => self.start(core, change, done),
        }
    }

    fn start(&mut self, core: &mut RaftNode, change: MembershipChange, done: MembershipDone) {
        match target_configuration(core, &change, &self.policy) {
            Err(error) => done(Err(error)),
            Ok(target) => match core.propose_configuration(target) {
                Ok(first_index) => {
                    tracing::info!(?change, first_index, "membership change started");
                    self.pending = Some(Pending {
                        first_index,
                        done: Some(done),
                    });
                }
                Err(error) => done(Err(from_core_error(error))),
            },
        }
    }

    /// Records what a member said about itself; proposed when leader and idle.
    /// Newer non-empty fields replace older ones (the handshake knows the incarnation
    /// and client address, the operator's `--peer` the peer address).
    pub(super) fn observed(&mut self, id: NodeId, info: MemberInfo) {
        let known = self.observed.entry(id).or_default();
        if info.incarnation != 0 {
            known.incarnation = info.incarnation;
        }
        if !info.client_addr.is_empty() {
            known.client_addr = info.client_addr;
        }
        if !info.peer_addr.is_empty() {
            known.peer_addr = info.peer_addr;
        }
    }

    pub(super) fn transfer(&mut self, core: &mut RaftNode, target: NodeId, done: TransferDone) {
        if self.transfer.is_some() {
            return done(Err(MembershipError::TransferInProgress));
        }
        if core.is_leader() && target == core.id() {
            return done(Ok(target));
        }
        match core.transfer_leadership(target) {
            Ok(()) | Err(TransferError::AlreadyLeader) => {
                let timeout = core.config().election_timeout_ticks
                    * self.policy.transfer_timeout_elections.max(1);
                self.transfer = Some((target, core.now_tick() + timeout, done));
            }
            Err(TransferError::NotLeader { leader_hint }) => {
                done(Err(MembershipError::NotLeader {
                    leader: leader_hint,
                }))
            }
            Err(TransferError::NotAVoter(id)) => done(Err(MembershipError::NotAVoter(id))),
        }
    }

    /// Answers what the core's state settled: a committed change, a lost leadership, a
    /// transfer done or timed out. Then starts a held change or records member
    /// information when nothing is pending. Returns whether the core got new input.
    pub(super) fn drive(&mut self, core: &mut RaftNode) -> bool {
        self.resolve(core);
        self.check_transfer(core);
        if self.pending.is_some() || !core.is_leader() {
            return false;
        }
        if let Some((change, done)) = self.waiting.take() {
            self.start(core, change, done);
            return true;
        }
        self.record_observed(core)
    }

    /// Answers a pending change once its final configuration committed; fails it when
    /// this node is no longer the leader that could finish it.
    pub(super) fn resolve(&mut self, core: &RaftNode) {
        let Some(pending) = &self.pending else {
            return;
        };
        let latest = core.latest_configuration_index();
        let settled = latest >= pending.first_index
            && !core.configuration().is_joint()
            && core.commit_index() >= latest;
        if settled {
            if let Some(Pending {
                done: Some(done), ..
            }) = self.pending.take()
            {
                done(Ok(MembershipOutcome {
                    index: latest,
                    configuration: core.configuration().clone(),
                }));
            }
            return;
        }
        if core.role() != Role::Leader {
            self.leadership_lost();
        }
    }

    fn check_transfer(&mut self, core: &RaftNode) {
        let Some((target, deadline, _)) = &self.transfer else {
            return;
        };
        let (target, deadline) = (*target, *deadline);
        let outcome = if core.leader_id() == Some(target) {
            Ok(target)
        } else if core.now_tick() >= deadline {
            Err(MembershipError::TransferTimedOut(target))
        } else {
            return;
        };
        if let Some((_, _, done)) = self.transfer.take() {
            done(outcome);
        }
    }

    /// Proposes the first observed member information that fills a gap in the
    /// configuration (an unrecorded incarnation, an unknown address). A recorded
    /// incarnation is never overwritten: that is what tells an emptied directory apart.
    fn record_observed(&mut self, core: &mut RaftNode) -> bool {
        let configuration = core.configuration();
        let mut update = None;
        for (id, seen) in &self.observed {
            if !configuration.is_member(*id) {
                continue;
            }
            let recorded = configuration.info_of(*id);
            let merged = merge_info(&recorded, seen);
            if merged != recorded {
                update = Some((*id, merged));
                break;
            }
        }
        let Some((id, merged)) = update else {
            return false;
        };
        let mut target = configuration.clone();
        target.outgoing_voters.clear();
        target.info.insert(id, merged);
        match core.propose_configuration(target) {
            Ok(first_index) => {
                tracing::info!(member = id, first_index, "recording member information");
                self.pending = Some(Pending {
                    first_index,
                    done: None,
                });
                true
            }
            Err(error) => {
                tracing::debug!(%error, member = id, "member information not recorded yet");
                false
            }
        }
    }

    fn fail_waiting(&mut self, error: MembershipError) {
        if let Some((_, done)) = self.waiting.take() {
            done(Err(error.clone()));
        }
    }

    /// The node stops: everyone waiting is told.
    pub(super) fn fail_all(&mut self, error: MembershipError) {
        if let Some(Pending {
            done: Some(done), ..
        }) = self.pending.take()
        {
            done(Err(error.clone()));
        }
        self.fail_waiting(error.clone());
        if let Some((_, _, done)) = self.transfer.take() {
            done(Err(error));
        }
    }

    /// Leadership was lost: a pending change's outcome is unknown.
    pub(super) fn leadership_lost(&mut self) {
        if let Some(Pending {
            done: Some(done), ..
        }) = self.pending.take()
        {
            done(Err(MembershipError::LeadershipLost));
        }
        self.fail_waiting(MembershipError::LeadershipLost);
    }
}

/// Fills what `recorded` lacks from `seen`; a recorded incarnation stays.
fn merge_info(recorded: &MemberInfo, seen: &MemberInfo) -> MemberInfo {
    let mut merged = recorded.clone();
    if merged.incarnation == 0 {
        merged.incarnation = seen.incarnation;
    }
    if merged.client_addr.is_empty() {
        merged.client_addr = seen.client_addr.clone();
    }
    if merged.peer_addr.is_empty() {
        merged.peer_addr = seen.peer_addr.clone();
    }
    merged
}

/// The configuration `change` leads to, or why it must not start.
fn target_configuration(
    core: &RaftNode,
    change: &MembershipChange,
    policy: &MembershipPolicy,
) -> Result<Configuration, MembershipError> {
    if !core.is_leader() {
        return Err(MembershipError::NotLeader {
            leader: core.leader_id(),
        });
    }
    if core.membership_change_in_progress() {
        return Err(MembershipError::ChangeInProgress);
    }
    let current = core.configuration();
    let mut target = current.clone();
    target.outgoing_voters.clear();
    match change {
        MembershipChange::AddLearner { id, info } => {
            if current.is_member(*id) {
                return Err(MembershipError::AlreadyMember(*id));
            }
            target.learners.insert(*id);
            target.info.insert(*id, info.clone());
        }
        MembershipChange::Promote { id } => {
            if current.is_voter(*id) || !current.is_member(*id) {
                return Err(if current.is_voter(*id) {
                    MembershipError::NotALearner(*id)
                } else {
                    MembershipError::UnknownMember(*id)
                });
            }
            if !answered_recently(core, *id) {
                return Err(MembershipError::LearnerNotResponding(*id));
            }
            let lag_entries = lag_of(core, *id);
            if lag_entries > policy.max_promote_lag_entries {
                return Err(MembershipError::LearnerLagging {
                    id: *id,
                    lag_entries,
                    max_lag_entries: policy.max_promote_lag_entries,
                });
            }
            target.learners.remove(id);
            target.voters.insert(*id);
        }
        MembershipChange::Remove { id } => {
            if !current.is_member(*id) {
                return Err(MembershipError::UnknownMember(*id));
            }
            target.learners.remove(id);
            target.voters.remove(id);
            target.info.remove(id);
        }
        MembershipChange::ReplaceVoters { voters } => {
            target.voters = voters.iter().copied().collect();
            target.learners.retain(|id| !target.voters.contains(id));
            target.prune_info();
        }
    }
    if target.voters.is_empty() {
        return Err(MembershipError::NoVoters);
    }
    Ok(target)
}

/// Whether `id` echoed a message the leader sent less than an election timeout ago (a
/// learner that cannot reach the leader would count against the new quorum at once).
fn answered_recently(core: &RaftNode, id: NodeId) -> bool {
    let timeout = core.config().election_timeout_ticks;
    core.progress(id)
        .and_then(|progress| progress.acked_sent_tick)
        .is_some_and(|sent| core.now_tick().saturating_sub(sent) < timeout)
}

/// Entries `id` is behind the leader's last index (the whole log when unknown).
pub fn lag_of(core: &RaftNode, id: NodeId) -> u64 {
    let last = core.log().last_index();
    if id == core.id() {
        return 0;
    }
    core.progress(id)
        .map_or(last, |progress| last.saturating_sub(progress.match_index))
}

fn from_core_error(error: ConfigChangeError) -> MembershipError {
    match error {
        ConfigChangeError::NotLeader { leader_hint } => MembershipError::NotLeader {
            leader: leader_hint,
        },
        ConfigChangeError::TransferInProgress => MembershipError::TransferInProgress,
        ConfigChangeError::ChangeInProgress => MembershipError::ChangeInProgress,
        ConfigChangeError::NoVoters => MembershipError::NoVoters,
    }
}
