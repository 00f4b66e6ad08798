//! Cluster membership and quorum arithmetic.
//!
//! Every "is this a majority?" question in the core goes through [`Configuration`], so
//! joint consensus (Raft §6: decisions need a majority of the old AND of the new voter
//! set) and learners (members that replicate but never vote) need no change to the
//! election, commit or lease code.

use std::collections::BTreeSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::types::NodeId;

/// Largest membership an encoded configuration may declare; bounds allocation when
/// decoding a configuration entry read from disk or the wire.
pub const MAX_MEMBERS: usize = 1024;

/// A cluster membership.
///
/// Invariant: `voters` is non-empty for a working cluster; a node appears in at most one
/// of `voters ∪ outgoing_voters` and `learners`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Configuration {
    /// Voters of the (incoming) configuration.
    pub voters: BTreeSet<NodeId>,
    /// Voters of the outgoing configuration while in joint consensus; empty otherwise.
    pub outgoing_voters: BTreeSet<NodeId>,
    /// Members that receive the log but do not vote or count toward any quorum.
    pub learners: BTreeSet<NodeId>,
}

/// Why an encoded configuration could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigDecodeError {
    #[error("configuration entry truncated")]
    Truncated,
    #[error("configuration declares {declared} members, more than the limit {limit}")]
    TooManyMembers { declared: usize, limit: usize },
}

impl Configuration {
    /// A simple (non-joint) configuration of the given voters.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Configuration {
        Configuration {
            voters: voters.into_iter().collect(),
            outgoing_voters: BTreeSet::new(),
            learners: BTreeSet::new(),
        }
    }

    /// True while in joint consensus (C_old,new).
    pub fn is_joint(&self) -> bool {
        !self.outgoing_voters.is_empty()
    }

    /// Whether `id` votes in this configuration (in either half when joint).
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing_voters.contains(&id)
    }

    /// Every member the leader replicates to: voters of both halves and learners.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all: BTreeSet<NodeId> = self.voters.union(&self.outgoing_voters).copied().collect();
        all.extend(self.learners.iter().copied());
        all
    }

    /// Whether the nodes for which `yes` holds form a quorum: a majority of `voters`
    /// and, when joint, also a majority of `outgoing_voters`.
    pub fn is_quorum(&self, yes: impl Fn(NodeId) -> bool) -> bool {
        majority_of(&self.voters, &yes)
            && (self.outgoing_voters.is_empty() || majority_of(&self.outgoing_voters, &yes))
    }

    /// The outcome of a vote given the nodes that granted and those that refused.
    pub fn vote_result(&self, granted: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        let won = self.is_quorum(|id| granted(id) == Some(true));
        if won {
            return VoteResult::Won;
        }
        // Lost when even all undecided nodes granting could not make a quorum.
        let could_win = self.is_quorum(|id| granted(id) != Some(false));
        if could_win {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }

    /// The largest index that a quorum has reached, given each voter's index. For a
    /// joint configuration, the minimum of both halves' quorum indexes.
    pub fn quorum_index(&self, index_of: impl Fn(NodeId) -> u64) -> u64 {
        let incoming = quorum_index_of(&self.voters, &index_of);
        if self.outgoing_voters.is_empty() {
            incoming
        } else {
            incoming.min(quorum_index_of(&self.outgoing_voters, &index_of))
        }
    }

    /// Encodes as the data of an [`super::EntryKind::Config`] entry:
    /// three length-prefixed lists of little-endian u64 ids.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        for set in [&self.voters, &self.outgoing_voters, &self.learners] {
            out.put_u32_le(set.len() as u32);
            for id in set {
                out.put_u64_le(*id);
            }
        }
        out.freeze()
    }

    /// Decodes [`Configuration::encode`] output, bounding every length first.
    pub fn decode(mut data: &[u8]) -> Result<Configuration, ConfigDecodeError> {
        let mut sets: [BTreeSet<NodeId>; 3] = Default::default();
        for set in sets.iter_mut() {
            if data.remaining() < 4 {
                return Err(ConfigDecodeError::Truncated);
            }
            let declared = data.get_u32_le() as usize;
            if declared > MAX_MEMBERS {
                return Err(ConfigDecodeError::TooManyMembers {
                    declared,
                    limit: MAX_MEMBERS,
                });
            }
            if data.remaining() < declared * 8 {
                return Err(ConfigDecodeError::Truncated);
            }
            for _ in 0..declared {
                set.insert(data.get_u64_le());
            }
        }
        let [voters, outgoing_voters, learners] = sets;
        Ok(Configuration {
            voters,
            outgoing_voters,
            learners,
        })
    }
}

/// Outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Won,
    Lost,
    Pending,
}

fn majority_of(set: &BTreeSet<NodeId>, yes: &impl Fn(NodeId) -> bool) -> bool {
    let n_yes = set.iter().filter(|id| yes(**id)).count();
    n_yes > set.len() / 2
}

fn quorum_index_of(set: &BTreeSet<NodeId>, index_of: &impl Fn(NodeId) -> u64) -> u64 {
    if set.is_empty() {
        return u64::MAX;
    }
    let mut indexes: Vec<u64> = set.iter().map(|id| index_of(*id)).collect();
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    // With n voters, the (n/2 + 1)-th largest index is held by a majority.
    indexes[set.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_index_of_five_voters_is_third_largest() {
        let config = Configuration::new([1, 2, 3, 4, 5]);
        let index = |id: NodeId| [0, 10, 9, 3, 7, 1][id as usize];
        assert_eq!(config.quorum_index(index), 7);
    }

    #[test]
    fn joint_configuration_needs_both_majorities() {
        let mut config = Configuration::new([1, 2, 3]);
        config.outgoing_voters = [3, 4, 5].into_iter().collect();
        // 1 and 2 are a majority of the incoming set but only 0 of 3 in the outgoing.
        assert!(!config.is_quorum(|id| id == 1 || id == 2));
        assert!(config.is_quorum(|id| id == 1 || id == 3 || id == 4));
        let index = |id: NodeId| [0, 9, 9, 5, 1, 1][id as usize];
        assert_eq!(config.quorum_index(index), 1);
    }

    #[test]
    fn learners_never_count_toward_a_quorum() {
        let mut config = Configuration::new([1, 2, 3]);
        config.learners.insert(4);
        config.learners.insert(5);
        assert!(!config.is_quorum(|id| id == 1 || id == 4 || id == 5));
    }

    #[test]
    fn vote_is_lost_once_a_majority_refused() {
        let config = Configuration::new([1, 2, 3]);
        assert_eq!(
            config.vote_result(|id| (id == 1).then_some(true)),
            VoteResult::Pending
        );
        assert_eq!(config.vote_result(|id| Some(id == 1)), VoteResult::Lost);
        assert_eq!(config.vote_result(|id| Some(id != 3)), VoteResult::Won);
    }

    #[test]
    fn configuration_round_trips_and_rejects_truncation_and_huge_counts() {
        let mut config = Configuration::new([1, 2, 3]);
        config.outgoing_voters = [4].into_iter().collect();
        config.learners = [9].into_iter().collect();
        let encoded = config.encode();
        assert_eq!(Configuration::decode(&encoded), Ok(config));
        assert_eq!(
            Configuration::decode(&encoded[..encoded.len() - 1]),
            Err(ConfigDecodeError::Truncated)
        );
        let huge = u32::MAX.to_le_bytes();
        assert!(matches!(
            Configuration::decode(&huge),
            Err(ConfigDecodeError::TooManyMembers { .. })
        ));
    }
}
