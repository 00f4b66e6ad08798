//! Wire encoding of Raft messages (`tally_engine::raft::Message`) as frame payloads.
//!
//! Why it looks like this: AppendEntries carries client payloads, often hundreds per
//! message. The encoding puts every fixed-size field (including one descriptor per
//! entry) in a small metadata buffer and appends the entry payloads *after* it, so that
//! * sending references large entries' `Bytes` as extra iovecs (no copy) and copies
//!   small ones (up to [`INLINE_ENTRY_MAX_BYTES`]) behind the descriptors, which is
//!   cheaper than an iovec and a reference count each; the bytes on the wire are the same;
//! * receiving slices each entry's data out of the frame payload: no copy either.
//!
//! Layout (little-endian). Every message starts with `u64 from, u64 to, u64 term`; the
//! frame's message type selects the body:
//!
//! ```text
//! 0x01 AppendEntries          u64 prev_log_index u64 prev_log_term u64 leader_commit
//!                             u64 heartbeat_id u64 sent_at_tick u32 n_entries
//!                             n x (u64 index u64 term u8 kind u32 data_len)
//!                             then the entries' data back to back
//! 0x02 AppendEntriesResponse  u8 success u64 match_index u64 rejected_prev_index
//!                             u8 has_conflict [u8 has_term u64 conflict_term
//!                             u64 first_index_of_conflict_term u64 last_log_index]
//!                             u64 heartbeat_id u64 sent_at_tick
//! 0x03 RequestVote, 0x05 PreVote      u64 last_log_index u64 last_log_term
//!                                     u8 leadership_transfer
//! 0x04 RequestVoteResponse, 0x06 PreVoteResponse   u8 granted
//! 0x07 TimeoutNow             (nothing)
//! 0x0A InstallSnapshot (v2)   u64 index u64 term u64 total_bytes u32 checksum
//!                             u64 offset u8 done u32 data_len u32 config_len
//!                             config bytes, then the data
//! 0x0B InstallSnapshotResponse (v2)  u64 snapshot_index u64 next_offset
//!                                    u8 installed u8 rejected
//! ```
//! 0x08 and 0x09 were the first (never sent) layouts of the snapshot messages; they
//! are retired and refused as unknown types (see `net/PROTOCOL.md`, "Versions").
//! Booleans are exactly 0 or 1. Decoding checks every count and length against the bytes
//! present (and [`CodecLimits`]) before allocating, rejects trailing bytes, and never
//! panics.

use bytes::{BufMut, Bytes};
use tally_engine::raft::config::ConfigDecodeError;
use tally_engine::raft::{
    AppendEntries, AppendEntriesResponse, Configuration, ConflictHint, Entry, EntryKind,
    InstallSnapshot, InstallSnapshotResponse, Message, MessageBody, NodeId, RequestVote,
    SnapshotMeta, VoteResponse,
};

use crate::transport::{InboundMessage, OutboundMessage};

/// Frame message type of each Raft message.
pub mod msg_type {
    /// [`tally_engine::raft::MessageBody::AppendEntries`] (and heartbeats).
    pub const APPEND_ENTRIES: u8 = 0x01;
    /// [`tally_engine::raft::MessageBody::AppendEntriesResponse`].
    pub const APPEND_ENTRIES_RESPONSE: u8 = 0x02;
    /// [`tally_engine::raft::MessageBody::RequestVote`].
    pub const REQUEST_VOTE: u8 = 0x03;
    /// [`tally_engine::raft::MessageBody::RequestVoteResponse`].
    pub const REQUEST_VOTE_RESPONSE: u8 = 0x04;
    /// [`tally_engine::raft::MessageBody::PreVote`].
    pub const PRE_VOTE: u8 = 0x05;
    /// [`tally_engine::raft::MessageBody::PreVoteResponse`].
    pub const PRE_VOTE_RESPONSE: u8 = 0x06;
    /// [`tally_engine::raft::MessageBody::TimeoutNow`].
    pub const TIMEOUT_NOW: u8 = 0x07;
    /// Retired: the version-1 layout of InstallSnapshot (never sent by any release).
    pub const INSTALL_SNAPSHOT_V1: u8 = 0x08;
    /// Retired: the version-1 layout of InstallSnapshotResponse.
    pub const INSTALL_SNAPSHOT_RESPONSE_V1: u8 = 0x09;
    /// [`tally_engine::raft::MessageBody::InstallSnapshot`] (current layout).
    pub const INSTALL_SNAPSHOT: u8 = 0x0A;
    /// [`tally_engine::raft::MessageBody::InstallSnapshotResponse`] (current layout).
    pub const INSTALL_SNAPSHOT_RESPONSE: u8 = 0x0B;
}

const ENTRY_DESCRIPTOR_BYTES: usize = 8 + 8 + 1 + 4;

/// Bounds applied when decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecLimits {
    /// Most entries one AppendEntries may carry.
    pub max_entries_per_message: usize,
}

impl Default for CodecLimits {
    fn default() -> Self {
        CodecLimits {
            max_entries_per_message: 1 << 20,
        }
    }
}

/// Why a payload is not a valid Raft message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The frame type names no Raft message.
    #[error("unknown Raft message type {0:#04x}")]
    UnknownType(u8),
    /// The payload ended before a field.
    #[error("payload truncated at offset {offset}: needed {needed} more bytes")]
    Truncated {
        /// Offset in the payload of the field that did not fit.
        offset: usize,
        /// Bytes the field needed beyond the payload's end.
        needed: usize,
    },
    /// Bytes follow the message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// A boolean byte other than 0 or 1.
    #[error("invalid boolean byte {0}")]
    InvalidBool(u8),
    /// An entry kind byte no version of Tally writes.
    #[error("invalid entry kind {0}")]
    InvalidEntryKind(u8),
    /// More entries than allowed (or than the payload could hold).
    #[error("message announces {count} entries; allowed at most {max}")]
    TooManyEntries {
        /// Entry count the message announces.
        count: u64,
        /// The limit in force.
        max: usize,
    },
    /// The entry lengths do not add up to the bytes after the descriptors.
    #[error("entry lengths add up to {declared} bytes but {present} follow")]
    EntryDataMismatch {
        /// Sum of the declared entry lengths, in bytes.
        declared: u64,
        /// Bytes actually after the descriptors.
        present: usize,
    },
    /// The embedded configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The message claims a sender other than the one the handshake established.
    #[error("message claims sender {claimed} on a connection from {connected}")]
    SenderMismatch {
        /// Sender id the message names.
        claimed: NodeId,
        /// Peer id the connection's handshake established.
        connected: NodeId,
    },
}

/// Encodes `message` for [`crate::transport::PeerTransport::try_send`]. Entry and
/// snapshot data are referenced, not copied.
pub fn encode_message(message: &Message) -> OutboundMessage {
    if let MessageBody::AppendEntries(append) = &message.body {
        return append_entries_message(message, append, encode_entry_part(&append.entries));
    }
    let mut meta: Vec<u8> = Vec::with_capacity(64);
    meta.put_u64_le(message.from);
    meta.put_u64_le(message.to);
    meta.put_u64_le(message.term);
    let mut parts: Vec<Bytes> = Vec::new();
    let msg_type = match &message.body {
        MessageBody::AppendEntries(_) => unreachable!("encoded above"),
        MessageBody::AppendEntriesResponse(response) => {
            meta.put_u8(u8::from(response.success));
            meta.put_u64_le(response.match_index);
            meta.put_u64_le(response.rejected_prev_index);
            match &response.conflict {
                None => meta.put_u8(0),
                Some(hint) => {
                    meta.put_u8(1);
                    meta.put_u8(u8::from(hint.conflict_term.is_some()));
                    meta.put_u64_le(hint.conflict_term.unwrap_or(0));
                    meta.put_u64_le(hint.first_index_of_conflict_term);
                    meta.put_u64_le(hint.last_log_index);
                }
            }
            meta.put_u64_le(response.heartbeat_id);
            meta.put_u64_le(response.sent_at_tick);
            msg_type::APPEND_ENTRIES_RESPONSE
        }
        MessageBody::RequestVote(vote) | MessageBody::PreVote(vote) => {
            meta.put_u64_le(vote.last_log_index);
            meta.put_u64_le(vote.last_log_term);
            meta.put_u8(u8::from(vote.leadership_transfer));
            if matches!(message.body, MessageBody::PreVote(_)) {
                msg_type::PRE_VOTE
            } else {
                msg_type::REQUEST_VOTE
            }
        }
        MessageBody::RequestVoteResponse(response) => {
            meta.put_u8(u8::from(response.granted));
            msg_type::REQUEST_VOTE_RESPONSE
        }
        MessageBody::PreVoteResponse(response) => {
            meta.put_u8(u8::from(response.granted));
            msg_type::PRE_VOTE_RESPONSE
        }
        MessageBody::TimeoutNow => msg_type::TIMEOUT_NOW,
        MessageBody::InstallSnapshot(snapshot) => {
            let configuration = snapshot.meta.configuration.encode();
            meta.put_u64_le(snapshot.meta.index);
            meta.put_u64_le(snapshot.meta.term);
            meta.put_u64_le(snapshot.total_bytes);
            meta.put_u32_le(snapshot.checksum);
            meta.put_u64_le(snapshot.offset);
            meta.put_u8(u8::from(snapshot.done));
            meta.put_u32_le(snapshot.data.len() as u32);
            meta.put_u32_le(configuration.len() as u32);
            meta.extend_from_slice(&configuration);
            if !snapshot.data.is_empty() {
                parts.push(snapshot.data.clone());
            }
            msg_type::INSTALL_SNAPSHOT
        }
        MessageBody::InstallSnapshotResponse(response) => {
            meta.put_u64_le(response.snapshot_index);
            meta.put_u64_le(response.next_offset);
            meta.put_u8(u8::from(response.installed));
            meta.put_u8(u8::from(response.rejected));
            msg_type::INSTALL_SNAPSHOT_RESPONSE
        }
    };
    parts.insert(0, Bytes::from(meta));
    OutboundMessage {
        msg_type,
        payload_parts: parts,
    }
}

/// Encodes messages like [`encode_message`], but shares the entry part of an
/// AppendEntries (descriptors and data) between consecutive messages that carry the
/// same entries: a leader broadcasting one batch to N followers encodes (and copies) its
/// entries once, then each follower's message is its own 68-byte header plus a reference
/// to the shared part. The bytes on the wire are exactly `encode_message`'s.
///
/// Why the key is safe: entries are named by (index, term), and by Raft's Log Matching
/// property two entries with the same index and term hold the same data on every node
/// at any time, so (first index, first term, last index, last term) names one sequence
/// of entries for the life of the cluster.
#[derive(Default)]
pub struct MessageEncoder {
    /// The entry part last encoded and its key. Invariant: `parts` is the encoding of
    /// the entries the key names (built only by `encode_entry_part`).
    last: Option<(EntriesKey, Vec<Bytes>)>,
}

/// (first index, first term, last index, last term) of a non-empty run of entries.
type EntriesKey = (u64, u64, u64, u64);

/// Bytes of an AppendEntries before its entry descriptors: the common prefix (24), five
/// u64 fields and the entry count.
const APPEND_HEADER_BYTES: usize = 24 + 40 + 4;

impl MessageEncoder {
    /// An encoder remembering no entries yet (the first AppendEntries is encoded in full).
    pub fn new() -> MessageEncoder {
        MessageEncoder::default()
    }

    /// Encodes `message`; an AppendEntries with the entries of the previous one reuses
    /// their encoding.
    pub fn encode(&mut self, message: &Message) -> OutboundMessage {
        let MessageBody::AppendEntries(append) = &message.body else {
            return encode_message(message);
        };
        let (Some(first), Some(last)) = (append.entries.first(), append.entries.last()) else {
            return encode_message(message);
        };
        let key = (first.index, first.term, last.index, last.term);
        let entry_parts = match &self.last {
            Some((last_key, parts)) if *last_key == key => parts.clone(),
            _ => {
                let parts = encode_entry_part(&append.entries);
                self.last = Some((key, parts.clone()));
                parts
            }
        };
        append_entries_message(message, append, entry_parts)
    }
}

/// An AppendEntries: its own header (common prefix, five fields, entry count), then the
/// entry part (`encode_entry_part`, possibly shared with other followers' messages).
fn append_entries_message(
    message: &Message,
    append: &AppendEntries,
    entry_parts: Vec<Bytes>,
) -> OutboundMessage {
    let mut header = Vec::with_capacity(APPEND_HEADER_BYTES);
    header.put_u64_le(message.from);
    header.put_u64_le(message.to);
    header.put_u64_le(message.term);
    header.put_u64_le(append.prev_log_index);
    header.put_u64_le(append.prev_log_term);
    header.put_u64_le(append.leader_commit);
    header.put_u64_le(append.heartbeat_id);
    header.put_u64_le(append.sent_at_tick);
    header.put_u32_le(append.entries.len() as u32);
    let mut payload_parts = Vec::with_capacity(1 + entry_parts.len());
    payload_parts.push(Bytes::from(header));
    payload_parts.extend(entry_parts);
    OutboundMessage {
        msg_type: msg_type::APPEND_ENTRIES,
        payload_parts,
    }
}

/// The descriptors and data of `entries` as payload parts (see `append_entry_data`).
fn encode_entry_part(entries: &[Entry]) -> Vec<Bytes> {
    let inline_bytes: usize = entries
        .iter()
        .map(|entry| entry.data.len())
        .filter(|&len| len <= INLINE_ENTRY_MAX_BYTES)
        .sum();
    let mut descriptors = Vec::with_capacity(entries.len() * ENTRY_DESCRIPTOR_BYTES + inline_bytes);
    put_entry_descriptors(entries, &mut descriptors);
    let mut parts = Vec::new();
    append_entry_data(entries, descriptors, &mut parts);
    parts
}

fn put_entry_descriptors(entries: &[Entry], out: &mut Vec<u8>) {
    for entry in entries {
        out.put_u64_le(entry.index);
        out.put_u64_le(entry.term);
        out.put_u8(entry.kind.as_u8());
        out.put_u32_le(entry.data.len() as u32);
    }
}

/// Entries up to this size are copied behind the descriptors instead of sent as an
/// iovec of their own: copying 100 bytes costs less than a reference count taken on the
/// raft thread and dropped on the sender thread, plus an iovec (and its share of the
/// frame CRC's setup) per entry; larger ones are referenced, never copied.
pub const INLINE_ENTRY_MAX_BYTES: usize = 512;

/// Appends the entries' data (the bytes after the descriptors) to `parts`: runs of small
/// entries copied into the buffer before them (starting with `meta`), large ones as
/// references. The concatenated parts are the same bytes either way.
fn append_entry_data(entries: &[Entry], meta: Vec<u8>, parts: &mut Vec<Bytes>) {
    let mut buffer = meta;
    for entry in entries {
        if entry.data.len() <= INLINE_ENTRY_MAX_BYTES {
            buffer.extend_from_slice(&entry.data);
            continue;
        }
        if !buffer.is_empty() {
            parts.push(Bytes::from(std::mem::take(&mut buffer)));
        }
        parts.push(entry.data.clone());
    }
    if !buffer.is_empty() {
        parts.push(Bytes::from(buffer));
    }
}

/// Decodes a received message and checks that it claims the sender the handshake
/// established.
pub fn decode_inbound(
    inbound: &InboundMessage,
    limits: &CodecLimits,
) -> Result<Message, CodecError> {
    let message = decode_message(inbound.msg_type, &inbound.payload, limits)?;
    if message.from != inbound.from {
        return Err(CodecError::SenderMismatch {
            claimed: message.from,
            connected: inbound.from,
        });
    }
    Ok(message)
}

/// A bounds-checked reader over a payload.
struct Reader<'a> {
    payload: &'a Bytes,
    /// Invariant: `offset <= payload.len()`.
    offset: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.payload.len() - self.offset
    }

    fn take(&mut self, n: usize) -> Result<&[u8], CodecError> {
        if n > self.remaining() {
            return Err(CodecError::Truncated {
                offset: self.offset,
                needed: n - self.remaining(),
            });
        }
        let slice = &self.payload[self.offset..self.offset + n];
        self.offset += n;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn bool(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(CodecError::InvalidBool(other)),
        }
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        let mut raw = [0u8; 4];
        raw.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(raw))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(raw))
    }

    /// The next `n` bytes as a zero-copy slice of the payload.
    fn bytes(&mut self, n: usize) -> Result<Bytes, CodecError> {
        let start = self.offset;
        self.take(n)?;
        Ok(self.payload.slice(start..start + n))
    }

    fn finish(&self) -> Result<(), CodecError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(CodecError::TrailingBytes(n)),
        }
    }
}

/// Decodes a frame payload of type `msg_type`. Entry and snapshot data are slices of
/// `payload` (no copies).
pub fn decode_message(
    msg_type: u8,
    payload: &Bytes,
    limits: &CodecLimits,
) -> Result<Message, CodecError> {
    let mut reader = Reader { payload, offset: 0 };
    let retired = [
        msg_type::INSTALL_SNAPSHOT_V1,
        msg_type::INSTALL_SNAPSHOT_RESPONSE_V1,
    ];
    if !(msg_type::APPEND_ENTRIES..=msg_type::INSTALL_SNAPSHOT_RESPONSE).contains(&msg_type)
        || retired.contains(&msg_type)
    {
        return Err(CodecError::UnknownType(msg_type));
    }
    let from = reader.u64()?;
    let to = reader.u64()?;
    let term = reader.u64()?;
    let body = match msg_type {
        msg_type::APPEND_ENTRIES => MessageBody::AppendEntries(decode_append(&mut reader, limits)?),
        msg_type::APPEND_ENTRIES_RESPONSE => {
            let success = reader.bool()?;
            let match_index = reader.u64()?;
            let rejected_prev_index = reader.u64()?;
            let conflict = if reader.bool()? {
                let has_term = reader.bool()?;
                let conflict_term = reader.u64()?;
                Some(ConflictHint {
                    conflict_term: has_term.then_some(conflict_term),
                    first_index_of_conflict_term: reader.u64()?,
                    last_log_index: reader.u64()?,
                })
            } else {
                None
            };
            MessageBody::AppendEntriesResponse(AppendEntriesResponse {
                success,
                match_index,
                rejected_prev_index,
                conflict,
                heartbeat_id: reader.u64()?,
                sent_at_tick: reader.u64()?,
            })
        }
        msg_type::REQUEST_VOTE | msg_type::PRE_VOTE => {
            let vote = RequestVote {
                last_log_index: reader.u64()?,
                last_log_term: reader.u64()?,
                leadership_transfer: reader.bool()?,
            };
            if msg_type == msg_type::PRE_VOTE {
                MessageBody::PreVote(vote)
            } else {
                MessageBody::RequestVote(vote)
            }
        }
        msg_type::REQUEST_VOTE_RESPONSE => MessageBody::RequestVoteResponse(VoteResponse {
            granted: reader.bool()?,
        }),
        msg_type::PRE_VOTE_RESPONSE => MessageBody::PreVoteResponse(VoteResponse {
            granted: reader.bool()?,
        }),
        msg_type::TIMEOUT_NOW => MessageBody::TimeoutNow,
        msg_type::INSTALL_SNAPSHOT => MessageBody::InstallSnapshot(decode_install(&mut reader)?),
        _ => MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
            snapshot_index: reader.u64()?,
            next_offset: reader.u64()?,
            installed: reader.bool()?,
            rejected: reader.bool()?,
        }),
    };
    reader.finish()?;
    Ok(Message {
        from,
        to,
        term,
        body,
    })
}

fn decode_install(reader: &mut Reader<'_>) -> Result<InstallSnapshot, CodecError> {
    let index = reader.u64()?;
    let term = reader.u64()?;
    let total_bytes = reader.u64()?;
    let checksum = reader.u32()?;
    let offset = reader.u64()?;
    let done = reader.bool()?;
    let data_len = reader.u32()? as usize;
    let config_len = reader.u32()? as usize;
    // `take` and `bytes` check both lengths against the bytes present.
    let configuration = Configuration::decode(reader.take(config_len)?)
        .map_err(|error: ConfigDecodeError| CodecError::Config(error.to_string()))?;
    let data = reader.bytes(data_len)?;
    Ok(InstallSnapshot {
        meta: SnapshotMeta {
            index,
            term,
            configuration,
        },
        total_bytes,
        checksum,
        offset,
        data,
        done,
    })
}

fn decode_append(
    reader: &mut Reader<'_>,
    limits: &CodecLimits,
) -> Result<AppendEntries, CodecError> {
    let prev_log_index = reader.u64()?;
    let prev_log_term = reader.u64()?;
    let leader_commit = reader.u64()?;
    let heartbeat_id = reader.u64()?;
    let sent_at_tick = reader.u64()?;
    let count = reader.u32()? as usize;
    let fits = reader.remaining() / ENTRY_DESCRIPTOR_BYTES;
    if count > limits.max_entries_per_message || count > fits {
        return Err(CodecError::TooManyEntries {
            count: count as u64,
            max: limits.max_entries_per_message.min(fits),
        });
    }
    // `count <= fits`, so the descriptors are present; one pass checks their kinds and
    // the data lengths they declare, the next slices the data (no list in between).
    let descriptors_at = reader.offset;
    reader.take(count * ENTRY_DESCRIPTOR_BYTES)?;
    let descriptors = || Reader {
        payload: reader.payload,
        offset: descriptors_at,
    };
    let mut checking = descriptors();
    let mut declared: u64 = 0;
    for _ in 0..count {
        let (_, _, len) = entry_descriptor(&mut checking)?;
        declared += u64::from(len);
    }
    if declared != reader.remaining() as u64 {
        return Err(CodecError::EntryDataMismatch {
            declared,
            present: reader.remaining(),
        });
    }
    let mut described = descriptors();
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let ((index, term), kind, len) = entry_descriptor(&mut described)?;
        entries.push(Entry {
            index,
            term,
            kind,
            data: reader.bytes(len as usize)?,
        });
    }
    Ok(AppendEntries {
        prev_log_index,
        prev_log_term,
        entries,
        leader_commit,
        heartbeat_id,
        sent_at_tick,
    })
}

/// The next entry descriptor (`ENTRY_DESCRIPTOR_BYTES`): ((index, term), kind, data length).
fn entry_descriptor(reader: &mut Reader<'_>) -> Result<((u64, u64), EntryKind, u32), CodecError> {
    let index = reader.u64()?;
    let term = reader.u64()?;
    let kind_byte = reader.u8()?;
    let kind = EntryKind::from_u8(kind_byte).ok_or(CodecError::InvalidEntryKind(kind_byte))?;
    Ok(((index, term), kind, reader.u32()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes of the `from, to, term` prefix every message starts with.
    const COMMON_BYTES: usize = 24;

    fn concat(message: &OutboundMessage) -> Bytes {
        Bytes::from(message.payload_parts.concat())
    }

    fn roundtrip(message: &Message) -> Message {
        let encoded = encode_message(message);
        decode_message(encoded.msg_type, &concat(&encoded), &CodecLimits::default())
            .expect("decode")
    }

    fn message(body: MessageBody) -> Message {
        Message {
            from: 1,
            to: 2,
            term: 9,
            body,
        }
    }

    fn append(n_entries: u64) -> MessageBody {
        MessageBody::AppendEntries(AppendEntries {
            prev_log_index: 10,
            prev_log_term: 3,
            entries: (0..n_entries)
                .map(|i| Entry {
                    index: 11 + i,
                    term: 4,
                    kind: if i == 0 {
                        EntryKind::Noop
                    } else {
                        EntryKind::Normal
                    },
                    data: Bytes::from(vec![i as u8; i as usize]),
                })
                .collect(),
            leader_commit: 9,
            heartbeat_id: 77,
            sent_at_tick: 1234,
        })
    }

    fn every_kind() -> Vec<Message> {
        let vote = RequestVote {
            last_log_index: 5,
            last_log_term: 2,
            leadership_transfer: true,
        };
        vec![
            message(append(0)),
            message(append(5)),
            message(MessageBody::AppendEntriesResponse(AppendEntriesResponse {
                success: false,
                match_index: 0,
                rejected_prev_index: 10,
                conflict: Some(ConflictHint {
                    conflict_term: Some(3),
                    first_index_of_conflict_term: 7,
                    last_log_index: 12,
                }),
                heartbeat_id: 5,
                sent_at_tick: 6,
            })),
            message(MessageBody::AppendEntriesResponse(AppendEntriesResponse {
                success: true,
                match_index: 15,
                rejected_prev_index: 0,
                conflict: Some(ConflictHint {
                    conflict_term: None,
                    first_index_of_conflict_term: 0,
                    last_log_index: 2,
                }),
                heartbeat_id: 5,
                sent_at_tick: 6,
            })),
            message(MessageBody::AppendEntriesResponse(AppendEntriesResponse {
                success: true,
                match_index: 15,
                rejected_prev_index: 0,
                conflict: None,
                heartbeat_id: 1,
                sent_at_tick: 2,
            })),
            message(MessageBody::RequestVote(vote.clone())),
            message(MessageBody::PreVote(RequestVote {
                leadership_transfer: false,
                ..vote
            })),
            message(MessageBody::RequestVoteResponse(VoteResponse {
                granted: true,
            })),
            message(MessageBody::PreVoteResponse(VoteResponse {
                granted: false,
            })),
            message(MessageBody::TimeoutNow),
            message(MessageBody::InstallSnapshot(install_snapshot(
                4096,
                b"snapshot chunk",
                true,
            ))),
            message(MessageBody::InstallSnapshot(install_snapshot(
                0, b"", false,
            ))),
            message(MessageBody::InstallSnapshotResponse(
                InstallSnapshotResponse {
                    snapshot_index: 100,
                    next_offset: 4110,
                    installed: true,
                    rejected: false,
                },
            )),
            message(MessageBody::InstallSnapshotResponse(
                InstallSnapshotResponse {
                    snapshot_index: 100,
                    next_offset: 0,
                    installed: false,
                    rejected: true,
                },
            )),
        ]
    }

    fn install_snapshot(offset: u64, data: &'static [u8], done: bool) -> InstallSnapshot {
        let mut configuration = Configuration::new([1, 2, 3]);
        configuration.outgoing_voters = [4].into_iter().collect();
        configuration.learners = [9].into_iter().collect();
        InstallSnapshot {
            meta: SnapshotMeta {
                index: 100,
                term: 7,
                configuration,
            },
            total_bytes: 4110,
            checksum: 0xDEAD_BEEF,
            offset,
            data: Bytes::from_static(data),
            done,
        }
    }

    #[test]
    fn every_message_kind_roundtrips() {
        for original in every_kind() {
            assert_eq!(
                roundtrip(&original),
                original,
                "{}",
                original.body.kind_name()
            );
        }
    }

    #[test]
    fn large_entry_payloads_are_referenced_not_copied_when_encoding() {
        let sizes = [0, 3, INLINE_ENTRY_MAX_BYTES + 1, 7, 4096, 9000];
        let original = message(MessageBody::AppendEntries(AppendEntries {
            prev_log_index: 10,
            prev_log_term: 3,
            entries: sizes
                .iter()
                .enumerate()
                .map(|(i, &len)| Entry {
                    index: 11 + i as u64,
                    term: 4,
                    kind: EntryKind::Normal,
                    data: Bytes::from(vec![i as u8 + 1; len]),
                })
                .collect(),
            leader_commit: 9,
            heartbeat_id: 77,
            sent_at_tick: 1234,
        }));
        let encoded = encode_message(&original);
        let MessageBody::AppendEntries(append) = &original.body else {
            unreachable!("built as AppendEntries")
        };
        // Parts: header, descriptors + small data, large, small, large, large.
        let large: Vec<&Entry> = append
            .entries
            .iter()
            .filter(|e| e.data.len() > INLINE_ENTRY_MAX_BYTES)
            .collect();
        let referenced: Vec<&Bytes> = encoded
            .payload_parts
            .iter()
            .filter(|part| large.iter().any(|e| e.data.as_ptr() == part.as_ptr()))
            .collect();
        assert_eq!(referenced.len(), large.len(), "large entry data was copied");
        assert_eq!(encoded.payload_parts.len(), 6);
        assert_eq!(roundtrip(&original), original);
    }

    #[test]
    fn the_shared_encoder_sends_the_same_bytes_and_encodes_a_broadcast_once() {
        let mut encoder = MessageEncoder::new();
        let to_two = message(append(30));
        let mut to_three = to_two.clone();
        to_three.to = 3;
        if let MessageBody::AppendEntries(append) = &mut to_three.body {
            append.leader_commit = 12; // per-follower fields differ; entries are the same
        }
        let first = encoder.encode(&to_two);
        let second = encoder.encode(&to_three);
        assert_eq!(concat(&first), concat(&encode_message(&to_two)));
        assert_eq!(concat(&second), concat(&encode_message(&to_three)));
        assert_eq!(
            first.payload_parts[1].as_ptr(),
            second.payload_parts[1].as_ptr(),
            "the entry part is shared, not encoded twice"
        );
        // Other entries, a heartbeat and other kinds still encode exactly.
        for other in [message(append(5)), message(append(0))]
            .into_iter()
            .chain(every_kind())
        {
            assert_eq!(
                concat(&encoder.encode(&other)),
                concat(&encode_message(&other))
            );
        }
    }

    #[test]
    fn small_entry_payloads_travel_in_one_buffer_behind_the_descriptors() {
        let original = message(append(40));
        let encoded = encode_message(&original);
        assert_eq!(
            encoded.payload_parts.len(),
            2,
            "the header, then one buffer of descriptors and data: no iovec per entry"
        );
        assert_eq!(roundtrip(&original), original);
    }

    #[test]
    fn decoded_entries_are_slices_of_the_frame_payload() {
        let encoded = encode_message(&message(append(3)));
        let payload = concat(&encoded);
        let decoded =
            decode_message(encoded.msg_type, &payload, &CodecLimits::default()).expect("decode");
        let MessageBody::AppendEntries(append) = decoded.body else {
            unreachable!("AppendEntries")
        };
        let range = payload.as_ptr_range();
        for entry in append.entries.iter().filter(|e| !e.data.is_empty()) {
            assert!(
                range.contains(&entry.data.as_ptr()),
                "entry data was copied"
            );
        }
    }

    #[test]
    fn truncation_and_trailing_bytes_are_errors_for_every_kind() {
        for original in every_kind() {
            let encoded = encode_message(&original);
            let payload = concat(&encoded);
            let limits = CodecLimits::default();
            for cut in 0..payload.len() {
                assert!(
                    decode_message(encoded.msg_type, &payload.slice(..cut), &limits).is_err(),
                    "{} cut at {cut}",
                    original.body.kind_name()
                );
            }
            let mut longer = payload.to_vec();
            longer.push(0);
            let error = decode_message(encoded.msg_type, &Bytes::from(longer), &limits);
            assert!(
                error.is_err(),
                "{} with a trailing byte",
                original.body.kind_name()
            );
        }
    }

    #[test]
    fn bad_fields_get_typed_errors() {
        let limits = CodecLimits::default();
        assert_eq!(
            decode_message(0x42, &Bytes::new(), &limits),
            Err(CodecError::UnknownType(0x42))
        );
        let vote = encode_message(&message(MessageBody::RequestVoteResponse(VoteResponse {
            granted: true,
        })));
        let mut bad_bool = concat(&vote).to_vec();
        bad_bool[COMMON_BYTES] = 2;
        assert_eq!(
            decode_message(vote.msg_type, &Bytes::from(bad_bool), &limits),
            Err(CodecError::InvalidBool(2))
        );
        let appended = encode_message(&message(append(2)));
        let mut bad_kind = concat(&appended).to_vec();
        bad_kind[COMMON_BYTES + 44 + 16] = 9; // first descriptor's kind byte
        assert_eq!(
            decode_message(appended.msg_type, &Bytes::from(bad_kind), &limits),
            Err(CodecError::InvalidEntryKind(9))
        );
        let tight = CodecLimits {
            max_entries_per_message: 1,
        };
        assert!(matches!(
            decode_message(appended.msg_type, &concat(&appended), &tight),
            Err(CodecError::TooManyEntries { count: 2, .. })
        ));
        // Data lengths that do not add up to the bytes present are refused.
        let mut short = concat(&appended).to_vec();
        short.pop();
        assert!(matches!(
            decode_message(appended.msg_type, &Bytes::from(short), &limits),
            Err(CodecError::EntryDataMismatch { .. })
        ));
        // A huge count with no bytes behind it is refused before allocating.
        let mut huge = concat(&encode_message(&message(append(0)))).to_vec();
        let count_at = COMMON_BYTES + 40;
        huge[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_message(msg_type::APPEND_ENTRIES, &Bytes::from(huge), &limits),
            Err(CodecError::TooManyEntries { .. })
        ));
    }

    #[test]
    fn snapshot_chunk_data_is_referenced_when_encoding_and_sliced_when_decoding() {
        let original = message(MessageBody::InstallSnapshot(install_snapshot(
            4096,
            b"snapshot chunk",
            true,
        )));
        let encoded = encode_message(&original);
        let MessageBody::InstallSnapshot(chunk) = &original.body else {
            unreachable!("built as InstallSnapshot")
        };
        assert_eq!(encoded.payload_parts.len(), 2);
        assert_eq!(encoded.payload_parts[1].as_ptr(), chunk.data.as_ptr());
        let payload = concat(&encoded);
        let decoded =
            decode_message(encoded.msg_type, &payload, &CodecLimits::default()).expect("decode");
        let MessageBody::InstallSnapshot(decoded) = decoded.body else {
            unreachable!("InstallSnapshot")
        };
        assert!(payload.as_ptr_range().contains(&decoded.data.as_ptr()));
    }

    #[test]
    fn retired_version_1_snapshot_types_are_refused_as_unknown() {
        let limits = CodecLimits::default();
        for retired in [
            msg_type::INSTALL_SNAPSHOT_V1,
            msg_type::INSTALL_SNAPSHOT_RESPONSE_V1,
        ] {
            let encoded = encode_message(&message(MessageBody::InstallSnapshotResponse(
                InstallSnapshotResponse {
                    snapshot_index: 1,
                    next_offset: 0,
                    installed: false,
                    rejected: false,
                },
            )));
            assert_eq!(
                decode_message(retired, &concat(&encoded), &limits),
                Err(CodecError::UnknownType(retired))
            );
        }
    }

    #[test]
    fn a_snapshot_chunk_announcing_more_data_than_present_is_truncated_not_allocated() {
        let encoded = encode_message(&message(MessageBody::InstallSnapshot(install_snapshot(
            0, b"abc", false,
        ))));
        let mut bytes = concat(&encoded).to_vec();
        // data_len sits after from/to/term, index, term, total, checksum, offset, done.
        let data_len_at = COMMON_BYTES + 8 + 8 + 8 + 4 + 8 + 1;
        bytes[data_len_at..data_len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_message(
                encoded.msg_type,
                &Bytes::from(bytes),
                &CodecLimits::default()
            ),
            Err(CodecError::Truncated { .. })
        ));
    }

    #[test]
    fn a_message_claiming_another_sender_is_refused() {
        let encoded = encode_message(&message(MessageBody::TimeoutNow));
        let inbound = InboundMessage {
            from: 3,
            msg_type: encoded.msg_type,
            payload: concat(&encoded),
        };
        assert_eq!(
            decode_inbound(&inbound, &CodecLimits::default()),
            Err(CodecError::SenderMismatch {
                claimed: 1,
                connected: 3
            })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn random_payloads_never_panic(
            msg_type in 0u8..14,
            bytes in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let _ = decode_message(msg_type, &Bytes::from(bytes), &CodecLimits::default());
        }

        #[test]
        fn mutated_messages_never_panic(
            which in 0usize..16,
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let kinds = every_kind();
            let encoded = encode_message(&kinds[which % kinds.len()]);
            let mut bytes = concat(&encoded).to_vec();
            for (position, value) in flips {
                let at = position % bytes.len();
                bytes[at] = value;
            }
            let _ = decode_message(encoded.msg_type, &Bytes::from(bytes), &CodecLimits::default());
        }

        #[test]
        fn random_snapshot_messages_roundtrip(
            fields in (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>(), any::<u64>(), any::<bool>()),
            voters in prop::collection::btree_set(any::<u64>(), 0..5),
            data in prop::collection::vec(any::<u8>(), 0..64),
            response in (any::<u64>(), any::<u64>(), any::<bool>(), any::<bool>()),
        ) {
            let chunk = message(MessageBody::InstallSnapshot(InstallSnapshot {
                meta: SnapshotMeta {
                    index: fields.0,
                    term: fields.1,
                    configuration: Configuration {
                        voters,
                        ..Configuration::default()
                    },
                },
                total_bytes: fields.2,
                checksum: fields.3,
                offset: fields.4,
                data: Bytes::from(data),
                done: fields.5,
            }));
            prop_assert_eq!(roundtrip(&chunk), chunk);
            let answer = message(MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
                snapshot_index: response.0,
                next_offset: response.1,
                installed: response.2,
                rejected: response.3,
            }));
            prop_assert_eq!(roundtrip(&answer), answer);
        }

        #[test]
        fn random_append_entries_roundtrip(
            header in (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
            entries in prop::collection::vec(
                (any::<u64>(), any::<u64>(), 0u8..3, prop::collection::vec(any::<u8>(), 0..40)),
                0..20,
            ),
        ) {
            let original = message(MessageBody::AppendEntries(AppendEntries {
                prev_log_index: header.0,
                prev_log_term: header.1,
                leader_commit: header.2,
                heartbeat_id: header.3,
                sent_at_tick: header.4,
                entries: entries
                    .into_iter()
                    .map(|(index, term, kind, data)| Entry {
                        index,
                        term,
                        kind: EntryKind::from_u8(kind).expect("valid kind"),
                        data: Bytes::from(data),
                    })
                    .collect(),
            }));
            prop_assert_eq!(roundtrip(&original), original);
        }
    }
}
