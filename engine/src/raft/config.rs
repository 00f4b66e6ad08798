//! Cluster membership and quorum arithmetic.
//!
//! Every "is this a majority?" question in the core goes through [`Configuration`], so
//! joint consensus (Raft §6: decisions need a majority of the old AND of the new voter
//! set) and learners (members that replicate but never vote) need no change to the
//! election, commit or lease code.
//!
//! A configuration also names where each member is (peer and client address) and which
//! incarnation of it was admitted: the log is the authority on membership, so a
//! restarted or joining node learns from it whom to dial, and a member id that comes
//! back with a different incarnation (an emptied directory) is told apart from the
//! member the log knows. Encoding v2 carries that; v1 (ids only) still decodes.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::types::NodeId;

/// Largest membership an encoded configuration may declare; bounds allocation when
/// decoding a configuration entry read from disk or the wire.
pub const MAX_MEMBERS: usize = 1024;

/// Longest peer or client address an encoded configuration may carry.
pub const MAX_MEMBER_ADDR_BYTES: usize = 255;

/// First word of a v2 encoding. Above [`MAX_MEMBERS`], so a v1 decoder refuses it
/// (too many members) instead of misreading it, and v1 data (which starts with the
/// voter count) is never taken for v2.
const CONFIG_V2_MARKER: u32 = 0x5443_4632;

/// Where a member is and which incarnation of it the cluster admitted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberInfo {
    /// Address peers dial (empty: unknown, taken from the operator's `--peer`).
    pub peer_addr: String,
    /// Address clients are redirected to (empty: unknown).
    pub client_addr: String,
    /// Random id the member drew when its directory was created; 0: not recorded yet.
    pub incarnation: u64,
}

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
    /// Addresses and incarnations, by member. Invariant: keys are members (a member
    /// may have no entry: nothing known about it yet).
    pub info: BTreeMap<NodeId, MemberInfo>,
}

/// Why an encoded configuration could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigDecodeError {
    /// The encoding ended before a declared field.
    #[error("configuration entry truncated")]
    Truncated,
    /// The encoding declares more members than [`MAX_MEMBERS`] (refused before allocating).
    #[error("configuration declares {declared} members, more than the limit {limit}")]
    TooManyMembers {
        /// Member count the encoding declares.
        declared: usize,
        /// The limit, [`MAX_MEMBERS`].
        limit: usize,
    },
    /// A member address is longer than [`MAX_MEMBER_ADDR_BYTES`].
    #[error("member address of {len} bytes exceeds the limit {limit}")]
    AddressTooLong {
        /// Declared address length, in bytes.
        len: usize,
        /// The limit, [`MAX_MEMBER_ADDR_BYTES`].
        limit: usize,
    },
    /// A member address is not valid UTF-8.
    #[error("member address is not UTF-8")]
    AddressNotUtf8,
    /// The encoding carries member information for this id, which is in no voter or learner
    /// set.
    #[error("member information for {0}, which is not a member")]
    InfoForNonMember(NodeId),
}

impl Configuration {
    /// A simple (non-joint) configuration of the given voters.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Configuration {
        Configuration {
            voters: voters.into_iter().collect(),
            outgoing_voters: BTreeSet::new(),
            learners: BTreeSet::new(),
            info: BTreeMap::new(),
        }
    }

    /// Whether `id` is a voter (either half) or a learner.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// What the configuration records about `id` (default when nothing).
    pub fn info_of(&self, id: NodeId) -> MemberInfo {
        self.info.get(&id).cloned().unwrap_or_default()
    }

    /// Drops information about ids that are no longer members (keeps the invariant).
    pub fn prune_info(&mut self) {
        let members = self.members();
        self.info.retain(|id, _| members.contains(id));
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

    /// Encodes as the data of an [`super::EntryKind::Config`] entry (v2): the marker,
    /// three length-prefixed lists of little-endian u64 ids (voters, outgoing voters,
    /// learners), then a count and per member `id, incarnation, u16 peer address
    /// length, bytes, u16 client address length, bytes`.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u32_le(CONFIG_V2_MARKER);
        for set in [&self.voters, &self.outgoing_voters, &self.learners] {
            out.put_u32_le(set.len() as u32);
            for id in set {
                out.put_u64_le(*id);
            }
        }
        out.put_u32_le(self.info.len() as u32);
        for (id, info) in &self.info {
            out.put_u64_le(*id);
            out.put_u64_le(info.incarnation);
            for addr in [&info.peer_addr, &info.client_addr] {
                let bytes = &addr.as_bytes()[..addr.len().min(MAX_MEMBER_ADDR_BYTES)];
                out.put_u16_le(bytes.len() as u16);
                out.put_slice(bytes);
            }
        }
        out.freeze()
    }

    /// The v1 encoding (ids only), as nodes before member information wrote it.
    pub fn encode_v1(&self) -> Bytes {
        let mut out = BytesMut::new();
        for set in [&self.voters, &self.outgoing_voters, &self.learners] {
            out.put_u32_le(set.len() as u32);
            for id in set {
                out.put_u64_le(*id);
            }
        }
        out.freeze()
    }

    /// Decodes [`Configuration::encode`] (v2) or [`Configuration::encode_v1`] output,
    /// bounding every length first.
    pub fn decode(mut data: &[u8]) -> Result<Configuration, ConfigDecodeError> {
        let v2 = data.len() >= 4 && data[..4] == CONFIG_V2_MARKER.to_le_bytes();
        if v2 {
            data.advance(4);
        }
        let mut sets: [BTreeSet<NodeId>; 3] = Default::default();
        for set in sets.iter_mut() {
            let declared = read_count(&mut data)?;
            if data.remaining() < declared * 8 {
                return Err(ConfigDecodeError::Truncated);
            }
            for _ in 0..declared {
                set.insert(data.get_u64_le());
            }
        }
        let [voters, outgoing_voters, learners] = sets;
        let mut configuration = Configuration {
            voters,
            outgoing_voters,
            learners,
            info: BTreeMap::new(),
        };
        if v2 {
            let declared = read_count(&mut data)?;
            for _ in 0..declared {
                if data.remaining() < 16 {
                    return Err(ConfigDecodeError::Truncated);
                }
                let id = data.get_u64_le();
                let incarnation = data.get_u64_le();
                let peer_addr = read_addr(&mut data)?;
                let client_addr = read_addr(&mut data)?;
                if !configuration.is_member(id) {
                    return Err(ConfigDecodeError::InfoForNonMember(id));
                }
                configuration.info.insert(
                    id,
                    MemberInfo {
                        peer_addr,
                        client_addr,
                        incarnation,
                    },
                );
            }
        }
        Ok(configuration)
    }
}

fn read_count(data: &mut &[u8]) -> Result<usize, ConfigDecodeError> {
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
    Ok(declared)
}

fn read_addr(data: &mut &[u8]) -> Result<String, ConfigDecodeError> {
    if data.remaining() < 2 {
        return Err(ConfigDecodeError::Truncated);
    }
    let len = data.get_u16_le() as usize;
    if len > MAX_MEMBER_ADDR_BYTES {
        return Err(ConfigDecodeError::AddressTooLong {
            len,
            limit: MAX_MEMBER_ADDR_BYTES,
        });
    }
    if data.remaining() < len {
        return Err(ConfigDecodeError::Truncated);
    }
    let text = std::str::from_utf8(&data[..len]).map_err(|_| ConfigDecodeError::AddressNotUtf8)?;
    let text = text.to_string();
    data.advance(len);
    Ok(text)
}

/// Outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A majority of every voter set (both, in joint consensus) granted the vote.
    Won,
    /// A majority of some voter set refused: the election cannot be won any more.
    Lost,
    /// Neither yet: more answers are needed.
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

    fn with_info() -> Configuration {
        let mut config = Configuration::new([1, 2]);
        config.learners.insert(3);
        config.info.insert(
            1,
            MemberInfo {
                peer_addr: "10.0.0.1:7001".into(),
                client_addr: "10.0.0.1:6379".into(),
                incarnation: 0xfeed,
            },
        );
        config.info.insert(
            3,
            MemberInfo {
                peer_addr: "10.0.0.3:7001".into(),
                client_addr: String::new(),
                incarnation: 7,
            },
        );
        config
    }

    #[test]
    fn v2_configuration_round_trips_addresses_and_incarnations() {
        let config = with_info();
        let encoded = config.encode();
        assert_eq!(Configuration::decode(&encoded), Ok(config));
        for cut in 0..encoded.len() {
            assert!(
                Configuration::decode(&encoded[..cut]).is_err(),
                "a truncation at {cut} decoded"
            );
        }
    }

    #[test]
    fn v1_encoding_still_decodes_without_member_information() {
        let config = with_info();
        let decoded = Configuration::decode(&config.encode_v1()).expect("v1 decodes");
        assert_eq!(decoded.voters, config.voters);
        assert_eq!(decoded.learners, config.learners);
        assert!(decoded.info.is_empty());
    }

    #[test]
    fn v2_refuses_info_for_a_non_member_and_oversized_addresses() {
        let mut config = with_info();
        config.info.insert(9, MemberInfo::default());
        assert_eq!(
            Configuration::decode(&config.encode()),
            Err(ConfigDecodeError::InfoForNonMember(9))
        );
        let mut encoded = BytesMut::from(&with_info().encode()[..]);
        // The first member's peer address length sits after marker, three sets
        // (4 + 16, 4, 4 + 8), the info count (4) and id + incarnation (16).
        let at = 4 + 20 + 4 + 12 + 4 + 16;
        encoded[at..at + 2].copy_from_slice(&(MAX_MEMBER_ADDR_BYTES as u16 + 1).to_le_bytes());
        assert!(matches!(
            Configuration::decode(&encoded),
            Err(ConfigDecodeError::AddressTooLong { .. })
        ));
    }
}
