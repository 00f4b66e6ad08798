//! On-disk format, version 2 (byte-exact description in `wal/FORMAT.md`); version 1
//! segments are still read.
//!
//! A segment file = a 64-byte segment header, then batches back to back, then zeros
//! (preallocated space). A batch = a 32-byte header, a body of records and (version 2)
//! an 8-byte trailer. The batch CRC-32 covers the segment id, the header (minus the CRC
//! field) and the body, so bytes left over from another segment (a reused or
//! preallocated file) never validate. The trailer, the last bytes of every batch, tells
//! a batch that was written completely and then damaged (corruption, refused) from one
//! whose write was torn (dropped): see [`damaged_complete_batch`].
//! All integers are little-endian.

use std::fmt;

/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TALLYSEG";
/// Format version written in new segment and batch headers.
pub const FORMAT_VERSION: u16 = 2;
/// Oldest version still read: version 1 batches have no trailer.
pub const OLDEST_READABLE_VERSION: u16 = 1;
/// Size of the batch trailer (version 2): body_len u32, then `TEND`.
pub const BATCH_TRAILER_LEN: usize = 8;
/// Magic ending every version 2 batch (its very last bytes, never zero).
pub const BATCH_END_MAGIC: [u8; 4] = *b"TEND";
/// The unit recovery assumes a device writes all or nothing (a torn write leaves whole
/// sectors unwritten). Real devices use 512 or 4096; the smaller unit is the safe
/// assumption.
pub const ATOMIC_SECTOR_BYTES: usize = 512;
/// Size of the segment header in bytes.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Magic at the start of every batch ("TBAT").
pub const BATCH_MAGIC: [u8; 4] = *b"TBAT";
/// Size of the batch header in bytes.
pub const BATCH_HEADER_LEN: usize = 32;
/// Record type: a log entry.
pub const RECORD_ENTRY: u8 = 1;
/// Record type: hard state (term, vote).
pub const RECORD_HARD_STATE: u8 = 2;
/// Record type: remove entries with index >= from_index.
pub const RECORD_TRUNCATE_SUFFIX: u8 = 3;
/// Record type: drop every entry, the log restarts empty at next_index.
pub const RECORD_RESET: u8 = 4;
/// Bytes of an entry record before its payload.
pub const ENTRY_RECORD_HEADER_LEN: usize = 22;
/// Size of a hard-state record.
pub const HARD_STATE_RECORD_LEN: usize = 17;
/// Size of a truncate-suffix or reset record.
pub const INDEX_RECORD_LEN: usize = 9;
/// Segment file name suffix.
pub const SEGMENT_SUFFIX: &str = ".wal";

/// Durable Raft state persisted next to the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Node voted for in `term`; 0 = none.
    pub vote: u64,
}

/// Name of a segment file: `<segment id, 20 digits>-<first index, 20 digits>.wal`.
pub fn segment_file_name(segment_id: u64, first_index: u64) -> String {
    format!("{segment_id:020}-{first_index:020}{SEGMENT_SUFFIX}")
}

/// Parses a segment file name into (segment id, first index).
pub fn parse_segment_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    let (id, first) = stem.split_once('-')?;
    if id.len() != 20 || first.len() != 20 {
        return None;
    }
    if !id.bytes().chain(first.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((id.parse().ok()?, first.parse().ok()?))
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    let mut raw = [0u8; 2];
    raw.copy_from_slice(&bytes[at..at + 2]);
    u16::from_le_bytes(raw)
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// Encodes a segment header of the current version.
pub fn encode_segment_header(segment_id: u64, first_index: u64) -> [u8; SEGMENT_HEADER_LEN] {
    encode_segment_header_version(segment_id, first_index, FORMAT_VERSION)
}

/// Encodes a segment header of `version` (tests and tools write older versions).
pub fn encode_segment_header_version(
    segment_id: u64,
    first_index: u64,
    version: u16,
) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..10].copy_from_slice(&version.to_le_bytes());
    header[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
    header[16..24].copy_from_slice(&segment_id.to_le_bytes());
    header[24..32].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32fast::hash(&header[0..60]);
    header[60..64].copy_from_slice(&crc.to_le_bytes());
    header
}

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Position of the segment in the log; ids of consecutive segments differ by one.
    pub segment_id: u64,
    /// The index the next entry had when the segment was created (recovery checks it
    /// against the file name and against the end of the log before this segment).
    pub first_index: u64,
    /// [`OLDEST_READABLE_VERSION`]..=[`FORMAT_VERSION`]; its batches have that version.
    pub format_version: u16,
}

/// Decodes and checks a segment header; `Err` says why it is invalid.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, String> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(format!(
            "file is {} bytes, shorter than the segment header",
            bytes.len()
        ));
    }
    let header = &bytes[..SEGMENT_HEADER_LEN];
    if header[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".into());
    }
    let stored_crc = le_u32(header, 60);
    let crc = crc32fast::hash(&header[0..60]);
    if stored_crc != crc {
        return Err(format!(
            "segment header CRC mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"
        ));
    }
    let version = le_u16(header, 8);
    if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(format!("unsupported segment format version {version}"));
    }
    Ok(SegmentHeader {
        segment_id: le_u64(header, 16),
        first_index: le_u64(header, 24),
        format_version: version,
    })
}

/// Appends an entry record. `payload` must be at most `u32::MAX` bytes (debug builds
/// assert it; the WAL's entry size limit keeps it far below).
pub fn encode_entry(out: &mut Vec<u8>, index: u64, term: u64, kind: u8, payload: &[u8]) {
    debug_assert!(payload.len() <= u32::MAX as usize);
    out.reserve(ENTRY_RECORD_HEADER_LEN + payload.len());
    out.push(RECORD_ENTRY);
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends a hard-state record.
pub fn encode_hard_state(out: &mut Vec<u8>, hard_state: HardState) {
    out.push(RECORD_HARD_STATE);
    out.extend_from_slice(&hard_state.term.to_le_bytes());
    out.extend_from_slice(&hard_state.vote.to_le_bytes());
}

/// Appends a truncate-suffix record.
pub fn encode_truncate_suffix(out: &mut Vec<u8>, from_index: u64) {
    out.push(RECORD_TRUNCATE_SUFFIX);
    out.extend_from_slice(&from_index.to_le_bytes());
}

/// Appends a reset record.
pub fn encode_reset(out: &mut Vec<u8>, next_index: u64) {
    out.push(RECORD_RESET);
    out.extend_from_slice(&next_index.to_le_bytes());
}

/// The fields of a batch header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Bytes of body following the header.
    pub body_len: u32,
    /// Records in the body (entries and control records).
    pub record_count: u32,
    /// Index of the first entry in the batch, or the next index if it has none.
    pub first_index: u64,
    /// Entry records in the body.
    pub entry_count: u32,
}

fn batch_crc(segment_id: u64, header_without_crc: &[u8], body: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&segment_id.to_le_bytes());
    hasher.update(header_without_crc);
    for part in body {
        hasher.update(part);
    }
    hasher.finalize()
}

/// Encodes a current-version batch header for `body` (given as consecutive parts) in
/// `segment_id`. The batch is the header, the body, then [`encode_batch_trailer`].
pub fn encode_batch_header(
    segment_id: u64,
    fields: BatchHeader,
    body: &[&[u8]],
) -> [u8; BATCH_HEADER_LEN] {
    encode_batch_header_version(segment_id, FORMAT_VERSION, fields, body)
}

/// The trailer that ends a version 2 batch whose body is `body_len` bytes.
pub fn encode_batch_trailer(body_len: u32) -> [u8; BATCH_TRAILER_LEN] {
    let mut trailer = [0u8; BATCH_TRAILER_LEN];
    trailer[0..4].copy_from_slice(&body_len.to_le_bytes());
    trailer[4..8].copy_from_slice(&BATCH_END_MAGIC);
    trailer
}

/// Bytes after the body of a batch of `version` (the trailer; none in version 1).
pub fn batch_trailer_len(version: u16) -> usize {
    if version == 1 {
        0
    } else {
        BATCH_TRAILER_LEN
    }
}

/// Encodes a batch header of `version` (tests write version 1 batches with it).
pub fn encode_batch_header_version(
    segment_id: u64,
    version: u16,
    fields: BatchHeader,
    body: &[&[u8]],
) -> [u8; BATCH_HEADER_LEN] {
    debug_assert_eq!(
        body.iter().map(|p| p.len()).sum::<usize>(),
        fields.body_len as usize
    );
    let mut header = [0u8; BATCH_HEADER_LEN];
    header[0..4].copy_from_slice(&BATCH_MAGIC);
    header[4..6].copy_from_slice(&version.to_le_bytes());
    // bytes 6..8: flags, zero in versions 1 and 2.
    header[8..12].copy_from_slice(&fields.body_len.to_le_bytes());
    header[12..16].copy_from_slice(&fields.record_count.to_le_bytes());
    header[16..24].copy_from_slice(&fields.first_index.to_le_bytes());
    header[24..28].copy_from_slice(&fields.entry_count.to_le_bytes());
    let crc = batch_crc(segment_id, &header[0..28], body);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Result of looking at the bytes where a batch may start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchProbe {
    /// A complete batch whose CRC matches.
    Valid(BatchHeader),
    /// Zeros from here to the end of the file: the clean end of the segment.
    CleanEnd,
    /// Something that is not a valid batch (torn, corrupt, or garbage).
    Invalid(String),
}

/// Examines `bytes[offset..]` (the rest of a segment) for a batch of `segment_id`.
/// Every length is checked against the bytes that exist before it is used. A valid
/// batch spans [`valid_batch_len`] bytes.
pub fn probe_batch(segment_id: u64, bytes: &[u8], offset: usize) -> BatchProbe {
    let rest = &bytes[offset.min(bytes.len())..];
    // The zero scan runs only when no batch starts here (once per segment in practice).
    if rest.len() < BATCH_HEADER_LEN || rest[0..4] != BATCH_MAGIC {
        if rest.iter().all(|&b| b == 0) {
            return BatchProbe::CleanEnd;
        }
        if rest.len() < BATCH_HEADER_LEN {
            return BatchProbe::Invalid(format!(
                "{} bytes left, less than a batch header",
                rest.len()
            ));
        }
        return BatchProbe::Invalid("bad batch magic".into());
    }
    let header = &rest[..BATCH_HEADER_LEN];
    let fields = BatchHeader {
        body_len: le_u32(header, 8),
        record_count: le_u32(header, 12),
        first_index: le_u64(header, 16),
        entry_count: le_u32(header, 24),
    };
    let version = le_u16(header, 4);
    let body_len = fields.body_len as usize;
    let after_header = rest.len() - BATCH_HEADER_LEN;
    let trailer_len = batch_trailer_len(version);
    if body_len > after_header || trailer_len > after_header - body_len {
        return BatchProbe::Invalid(format!(
            "batch of {body_len} body bytes runs past the end of the file ({after_header} bytes left)"
        ));
    }
    let body = &rest[BATCH_HEADER_LEN..BATCH_HEADER_LEN + body_len];
    let stored_crc = le_u32(header, 28);
    let crc = batch_crc(segment_id, &header[0..28], &[body]);
    if crc != stored_crc {
        return BatchProbe::Invalid(format!(
            "batch CRC mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"
        ));
    }
    if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
        return BatchProbe::Invalid(format!("unsupported batch format version {version}"));
    }
    let trailer_start = BATCH_HEADER_LEN + body_len;
    if rest[trailer_start..trailer_start + trailer_len]
        != encode_batch_trailer(fields.body_len)[..trailer_len]
    {
        return BatchProbe::Invalid("batch trailer missing or wrong".into());
    }
    BatchProbe::Valid(fields)
}

/// Total bytes (header, body, trailer) of the batch that [`probe_batch`] found valid
/// at `offset` with `header`.
///
/// # Panics
///
/// If `bytes` ends before `offset + 6` (it cannot after `probe_batch` returned
/// [`BatchProbe::Valid`] for the same bytes and offset).
pub fn valid_batch_len(bytes: &[u8], offset: usize, header: &BatchHeader) -> usize {
    let version = le_u16(bytes, offset + 4);
    BATCH_HEADER_LEN + header.body_len as usize + batch_trailer_len(version)
}

/// For a bad spot at `offset` of a segment of `segment_version`: `Some(why)` if the
/// bytes there are a batch that was written completely and damaged afterwards, which no
/// torn write can produce; `None` if a torn write may explain them.
///
/// A torn write of a batch leaves some of its sectors unwritten, and an unwritten sector
/// still holds zeros (segments are preallocated zero-filled, and recovery zeroes the torn
/// tails it drops). So if the batch's magic, its trailer (its last bytes, never zero, at
/// the place the header's length gives, repeating that length) and every sector of
/// [`ATOMIC_SECTOR_BYTES`] inside it hold data, the write completed, and a failing check
/// is damage to written, and possibly acknowledged, data. Version 1 has no trailer: it
/// never tells.
pub fn damaged_complete_batch(segment_version: u16, bytes: &[u8], offset: usize) -> Option<String> {
    if segment_version < 2 {
        return None;
    }
    let rest = bytes.get(offset..)?;
    if rest.len() < BATCH_HEADER_LEN || rest[0..4] != BATCH_MAGIC {
        return None;
    }
    let body_len = le_u32(rest, 8);
    let batch_len = BATCH_HEADER_LEN
        .checked_add(body_len as usize)?
        .checked_add(BATCH_TRAILER_LEN)?;
    let trailer = rest.get(batch_len - BATCH_TRAILER_LEN..batch_len)?;
    if trailer != encode_batch_trailer(body_len) {
        return None;
    }
    let end = offset + batch_len;
    let mut sector = offset.div_ceil(ATOMIC_SECTOR_BYTES) * ATOMIC_SECTOR_BYTES;
    while sector + ATOMIC_SECTOR_BYTES <= end {
        if bytes[sector..sector + ATOMIC_SECTOR_BYTES]
            .iter()
            .all(|&b| b == 0)
        {
            return None; // an unwritten sector: maybe torn (or a payload of zeros)
        }
        sector += ATOMIC_SECTOR_BYTES;
    }
    Some(format!(
        "the batch of {batch_len} bytes was written completely (magic, trailer and every \
         {ATOMIC_SECTOR_BYTES}-byte sector hold data) and damaged afterwards: not a torn write"
    ))
}

/// One decoded record. Entry payloads are given as a byte range of the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// A log entry ([`RECORD_ENTRY`]).
    Entry {
        /// Log index of the entry.
        index: u64,
        /// Raft term of the entry.
        term: u64,
        /// Application-defined kind, stored as given.
        kind: u8,
        /// Offset of the payload from the start of the body.
        payload_offset: usize,
        /// Payload length in bytes; the payload lies inside the body.
        payload_len: usize,
    },
    /// A new hard state ([`RECORD_HARD_STATE`]); the last one replayed wins.
    HardState(HardState),
    /// Remove every entry with index `>= from_index` ([`RECORD_TRUNCATE_SUFFIX`]).
    TruncateSuffix {
        /// First index removed.
        from_index: u64,
    },
    /// Drop every entry; the log restarts empty ([`RECORD_RESET`]).
    Reset {
        /// Index the next appended entry gets.
        next_index: u64,
    },
}

/// A body whose CRC matched but whose records do not parse: a writer bug or a CRC
/// collision; never ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedBody {
    /// Offset from the start of the body of the record that does not parse.
    pub body_offset: usize,
    /// What is wrong with it (truncated record, unknown type, ...).
    pub reason: String,
}

impl fmt::Display for MalformedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed record at body offset {}: {}",
            self.body_offset, self.reason
        )
    }
}

/// Iterates over the records of a batch body.
pub struct Records<'a> {
    body: &'a [u8],
    position: usize,
}

/// Records of `body`.
pub fn records(body: &[u8]) -> Records<'_> {
    Records { body, position: 0 }
}

impl Iterator for Records<'_> {
    type Item = Result<Record, MalformedBody>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.position >= self.body.len() {
            return None;
        }
        let start = self.position;
        let rest = &self.body[start..];
        let malformed = |reason: &str| {
            Some(Err(MalformedBody {
                body_offset: start,
                reason: reason.to_string(),
            }))
        };
        let (record, len) = match rest[0] {
            RECORD_ENTRY => {
                if rest.len() < ENTRY_RECORD_HEADER_LEN {
                    return malformed("truncated entry record header");
                }
                let payload_len = le_u32(rest, 2) as usize;
                if payload_len > rest.len() - ENTRY_RECORD_HEADER_LEN {
                    return malformed("entry payload runs past the end of the batch");
                }
                (
                    Record::Entry {
                        kind: rest[1],
                        index: le_u64(rest, 6),
                        term: le_u64(rest, 14),
                        payload_offset: start + ENTRY_RECORD_HEADER_LEN,
                        payload_len,
                    },
                    ENTRY_RECORD_HEADER_LEN + payload_len,
                )
            }
            RECORD_HARD_STATE => {
                if rest.len() < HARD_STATE_RECORD_LEN {
                    return malformed("truncated hard-state record");
                }
                (
                    Record::HardState(HardState {
                        term: le_u64(rest, 1),
                        vote: le_u64(rest, 9),
                    }),
                    HARD_STATE_RECORD_LEN,
                )
            }
            RECORD_TRUNCATE_SUFFIX | RECORD_RESET => {
                if rest.len() < INDEX_RECORD_LEN {
                    return malformed("truncated index record");
                }
                let value = le_u64(rest, 1);
                let record = if rest[0] == RECORD_RESET {
                    Record::Reset { next_index: value }
                } else {
                    Record::TruncateSuffix { from_index: value }
                };
                (record, INDEX_RECORD_LEN)
            }
            other => return malformed(&format!("unknown record type {other}")),
        };
        self.position = start + len;
        Some(Ok(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_file_name_round_trips() {
        let name = segment_file_name(7, 123_456);
        assert_eq!(name, "00000000000000000007-00000000000000123456.wal");
        assert_eq!(parse_segment_file_name(&name), Some((7, 123_456)));
        assert_eq!(parse_segment_file_name("LOCK"), None);
        assert_eq!(parse_segment_file_name("0007-0001.wal"), None);
    }

    #[test]
    fn segment_header_rejects_any_single_bit_flip() {
        let header = encode_segment_header(3, 99);
        assert_eq!(
            decode_segment_header(&header),
            Ok(SegmentHeader {
                segment_id: 3,
                first_index: 99,
                format_version: FORMAT_VERSION,
            })
        );
        for bit in 0..SEGMENT_HEADER_LEN * 8 {
            let mut flipped = header;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_segment_header(&flipped).is_err(),
                "bit {bit} flip accepted"
            );
        }
    }

    #[test]
    fn batch_round_trips_and_is_bound_to_its_segment() {
        let mut body = Vec::new();
        encode_hard_state(&mut body, HardState { term: 4, vote: 2 });
        encode_entry(&mut body, 10, 4, 7, b"hello");
        encode_truncate_suffix(&mut body, 10);
        encode_reset(&mut body, 50);
        let fields = BatchHeader {
            body_len: body.len() as u32,
            record_count: 4,
            first_index: 10,
            entry_count: 1,
        };
        let header = encode_batch_header(5, fields, &[&body]);
        let mut file = header.to_vec();
        file.extend_from_slice(&body);
        file.extend_from_slice(&encode_batch_trailer(fields.body_len));
        file.extend_from_slice(&[0u8; 16]);
        assert_eq!(probe_batch(5, &file, 0), BatchProbe::Valid(fields));
        assert_eq!(valid_batch_len(&file, 0, &fields), file.len() - 16);
        // Same bytes in another segment never validate.
        assert!(matches!(probe_batch(6, &file, 0), BatchProbe::Invalid(_)));
        let decoded: Vec<Record> = records(&body).collect::<Result<_, _>>().unwrap_or_default();
        assert_eq!(
            decoded,
            vec![
                Record::HardState(HardState { term: 4, vote: 2 }),
                Record::Entry {
                    index: 10,
                    term: 4,
                    kind: 7,
                    payload_offset: 17 + 22,
                    payload_len: 5
                },
                Record::TruncateSuffix { from_index: 10 },
                Record::Reset { next_index: 50 },
            ]
        );
        assert_eq!(probe_batch(5, &file, file.len() - 16), BatchProbe::CleanEnd);
    }

    #[test]
    fn oversized_lengths_are_rejected_before_use() {
        let mut body = Vec::new();
        encode_entry(&mut body, 1, 1, 0, b"abc");
        // Claim a payload far larger than the body.
        body[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(records(&body).next(), Some(Err(_))));
        let fields = BatchHeader {
            body_len: u32::MAX,
            record_count: 1,
            first_index: 1,
            entry_count: 1,
        };
        let header = encode_batch_header(
            1,
            BatchHeader {
                body_len: 0,
                ..fields
            },
            &[],
        );
        let mut file = header.to_vec();
        file[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(probe_batch(1, &file, 0), BatchProbe::Invalid(_)));
    }

    /// A batch of `payload_len` bytes of 0x11 at `offset` of a zero-filled segment of
    /// `version`; returns (file, batch length).
    fn segment_with_batch(version: u16, offset: usize, payload_len: usize) -> (Vec<u8>, usize) {
        let mut body = Vec::new();
        encode_entry(&mut body, 1, 1, 0, &vec![0x11; payload_len]);
        let fields = BatchHeader {
            body_len: body.len() as u32,
            record_count: 1,
            first_index: 1,
            entry_count: 1,
        };
        let mut file = vec![0u8; offset];
        file.extend_from_slice(&encode_batch_header_version(2, version, fields, &[&body]));
        file.extend_from_slice(&body);
        let trailer = encode_batch_trailer(fields.body_len);
        file.extend_from_slice(&trailer[..batch_trailer_len(version)]);
        let batch_len = file.len() - offset;
        file.resize(file.len() + 4096, 0);
        assert_eq!(probe_batch(2, &file, offset), BatchProbe::Valid(fields));
        (file, batch_len)
    }

    #[test]
    fn a_complete_batch_damaged_after_it_was_written_is_told_from_a_torn_one() {
        let offset = 100;
        let (file, len) = segment_with_batch(2, offset, 3000);
        // A flipped byte inside a complete batch: damage, not a tear.
        let mut flipped = file.clone();
        flipped[offset + 700] ^= 0x40;
        assert!(matches!(
            probe_batch(2, &flipped, offset),
            BatchProbe::Invalid(_)
        ));
        assert!(damaged_complete_batch(2, &flipped, offset).is_some());
        // Every prefix of the write (the rest never written: zeros) may be a tear.
        for cut in 0..len {
            let mut torn = file.clone();
            torn[offset + cut..offset + len].fill(0);
            assert_eq!(
                damaged_complete_batch(2, &torn, offset),
                None,
                "cut at {cut}"
            );
        }
        // Any one sector left unwritten (out-of-order persistence) may be a tear.
        let first = offset.div_ceil(ATOMIC_SECTOR_BYTES) * ATOMIC_SECTOR_BYTES;
        for sector in (first..offset + len - ATOMIC_SECTOR_BYTES).step_by(ATOMIC_SECTOR_BYTES) {
            let mut torn = flipped.clone();
            torn[sector..sector + ATOMIC_SECTOR_BYTES].fill(0);
            assert_eq!(
                damaged_complete_batch(2, &torn, offset),
                None,
                "sector {sector}"
            );
        }
        // Version 1 batches have no trailer: recovery cannot tell.
        let (v1, _) = segment_with_batch(1, offset, 3000);
        let mut v1 = v1;
        v1[offset + 700] ^= 0x40;
        assert_eq!(damaged_complete_batch(1, &v1, offset), None);
    }

    #[test]
    fn a_batch_with_a_valid_crc_but_no_trailer_is_invalid() {
        let (mut file, len) = segment_with_batch(2, 64, 10);
        file[64 + len - 1] = 0;
        assert!(matches!(probe_batch(2, &file, 64), BatchProbe::Invalid(_)));
        assert_eq!(damaged_complete_batch(2, &file, 64), None);
    }
}
