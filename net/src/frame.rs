//! The frame: the unit peers exchange over TCP (layout in `net/PROTOCOL.md`).
//!
//! ```text
//! offset size field
//!  0     4    magic        0x594C4154 (the bytes "TALY")
//!  4     1    version      1
//!  5     1    message type (opaque here; see transport/codec)
//!  6     2    flags        (reserved; 0)
//!  8     4    payload length in bytes (<= the receiver's limit, default 64 MiB)
//! 12     4    checksum     CRC-32 (IEEE) of the payload followed by header bytes 4..12
//! 16     ...  payload
//! ```
//! All integers are little-endian.
//!
//! Why: TCP's own 16-bit checksum lets corruption through at scale, and a bug on either
//! side can desynchronize a stream; a magic, a version and a checksum turn both into a
//! closed connection with a logged reason instead of a misread message. The checksum also
//! covers version, type, flags and length, so a damaged header cannot pass as a different
//! message. The length is checked against the receiver's limit *before* anything is
//! allocated, so a hostile or corrupt length cannot exhaust memory.
//!
//! Sending is zero-copy: [`encode_frame_header`] computes a header for a payload given as
//! several slices, and [`write_all_vectored`] writes many headers and payload slices with
//! as few `writev` calls as the kernel allows. Receiving is buffered: [`FrameReader`]
//! reads as much as is available into a large buffer, without zero-filling it first on
//! plain TCP, and hands out payloads as [`Bytes`] views of it, without copying (small
//! ones are copied, so they cannot keep a large buffer alive).

use std::io::{self, IoSlice, Read, Write};
use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};

/// First four bytes of every frame: "TALY" read as a little-endian u32.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"TALY");
/// The frame format version this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// Size of the fixed header.
pub const FRAME_HEADER_BYTES: usize = 16;
/// Default bound on a frame's payload.
pub const DEFAULT_MAX_FRAME_PAYLOAD_BYTES: usize = 64 << 20;
/// Bound on a frame's payload until the peer passed the handshake: every handshake
/// message fits in it with room to spare (the largest, a HELLO, is under 400 bytes), so
/// an unauthenticated dialer cannot make the acceptor reserve more than this.
pub const MAX_HANDSHAKE_FRAME_PAYLOAD_BYTES: usize = 4 << 10;
/// Most slices handed to one `writev` call (Linux's `IOV_MAX`).
const MAX_IOVECS_PER_WRITE: usize = 1024;
/// A new [`FrameReader`] chunk is this many times the largest frame of the last one
/// (within the two bounds below; a larger frame gets a chunk of its size): the frame a
/// chunk ends in is copied to the next one, so chunks are several frames long.
const CHUNK_FRAMES: usize = 8;
/// Smallest chunk (while frames are small, or before any frame).
const MIN_CHUNK_BYTES: usize = 128 << 10;
/// Largest standard chunk: one read takes up to this much.
const MAX_CHUNK_BYTES: usize = 2 << 20;
/// Frames under `1 / CHUNK_BYTES_PER_SLICED_FRAME` of their chunk are copied out, so a
/// held payload keeps at most this many times its frame's size alive. With
/// `CHUNK_FRAMES` = 8 a frame of a quarter of the recent largest one is still sliced.
const CHUNK_BYTES_PER_SLICED_FRAME: usize = 32;
/// Room a new chunk keeps behind the frame it is taken for, and the least a zero-filling
/// read asks for.
const MIN_READ_BYTES: usize = 8 << 10;
/// Most bytes zeroed ahead of a read through [`Read::read`]: a header announcing a large
/// payload that then trickles (or never comes) costs at most this much resident memory
/// beyond what arrived (with `ReadUninit`, capacity never read into is never touched).
const ZERO_AHEAD_BYTES: usize = 64 << 10;

/// Why a frame could not be read. Every variant except [`FrameError::Io`] means the
/// stream can no longer be trusted and the connection must be closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream does not start a frame here.
    #[error("bad frame magic {found:#010x} (expected {FRAME_MAGIC:#010x})")]
    BadMagic {
        /// The first four bytes read.
        found: u32,
    },
    /// A frame format this build does not speak.
    #[error("unsupported frame version {found} (this build speaks {FRAME_VERSION})")]
    BadVersion {
        /// The version byte read.
        found: u8,
    },
    /// The announced payload exceeds the limit; nothing was allocated for it.
    #[error("frame payload of {payload_len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload length the header announces, in bytes.
        payload_len: u64,
        /// The limit in force, in bytes.
        max: usize,
    },
    /// The payload or header fields were damaged in transit.
    #[error("frame checksum mismatch: header says {expected:#010x}, computed {computed:#010x}")]
    BadChecksum {
        /// Checksum the header carries.
        expected: u32,
        /// Checksum of the bytes received.
        computed: u32,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: needed {needed_bytes} bytes, got {got_bytes}")]
    Truncated {
        /// Bytes the frame needed.
        needed_bytes: usize,
        /// Bytes the stream held before it ended.
        got_bytes: usize,
    },
    /// The stream ended cleanly between frames.
    #[error("end of stream")]
    Eof,
    /// The underlying reader failed (including read timeouts).
    #[error("frame I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// A decoded, validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message type.
    pub msg_type: u8,
    /// Flags (reserved).
    pub flags: u16,
    /// Payload length. Invariant: within the limit it was decoded against.
    pub payload_len: u32,
    /// Checksum the payload must match (see [`frame_checksum`]).
    pub checksum: u32,
}

/// A received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Message type.
    pub msg_type: u8,
    /// Flags.
    pub flags: u16,
    /// Payload, a view into the reader's buffer (no copy).
    pub payload: Bytes,
}

/// The checksum of a frame: CRC-32 over the payload parts, then header bytes 4..12
/// (version, type, flags, length).
pub fn frame_checksum<'p>(
    msg_type: u8,
    flags: u16,
    payload_len: u32,
    payload_parts: impl IntoIterator<Item = &'p [u8]>,
) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in payload_parts {
        hasher.update(part);
    }
    hasher.update(&checksummed_header_fields(msg_type, flags, payload_len));
    hasher.finalize()
}

fn checksummed_header_fields(msg_type: u8, flags: u16, payload_len: u32) -> [u8; 8] {
    let mut fields = [0u8; 8];
    fields[0] = FRAME_VERSION;
    fields[1] = msg_type;
    fields[2..4].copy_from_slice(&flags.to_le_bytes());
    fields[4..8].copy_from_slice(&payload_len.to_le_bytes());
    fields
}

/// Builds the header for a payload given as consecutive slices (sent after the header,
/// e.g. as separate iovecs). Fails only if the payload exceeds `max_payload_bytes`.
pub fn encode_frame_header(
    msg_type: u8,
    flags: u16,
    payload_parts: &[&[u8]],
    max_payload_bytes: usize,
) -> Result<[u8; FRAME_HEADER_BYTES], FrameError> {
    let total: u64 = payload_parts.iter().map(|p| p.len() as u64).sum();
    let limit = max_payload_bytes.min(u32::MAX as usize);
    if total > limit as u64 {
        return Err(FrameError::TooLarge {
            payload_len: total,
            max: limit,
        });
    }
    let payload_len = total as u32;
    let checksum = frame_checksum(msg_type, flags, payload_len, payload_parts.iter().copied());
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    header[4..12].copy_from_slice(&checksummed_header_fields(msg_type, flags, payload_len));
    header[12..16].copy_from_slice(&checksum.to_le_bytes());
    Ok(header)
}

/// Validates magic, version and length (against `max_payload_bytes`) of a header.
pub fn decode_frame_header(
    header: &[u8; FRAME_HEADER_BYTES],
    max_payload_bytes: usize,
) -> Result<FrameHeader, FrameError> {
    let field = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let magic = field(0);
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    if header[4] != FRAME_VERSION {
        return Err(FrameError::BadVersion { found: header[4] });
    }
    let payload_len = field(8);
    if payload_len as usize > max_payload_bytes {
        return Err(FrameError::TooLarge {
            payload_len: u64::from(payload_len),
            max: max_payload_bytes,
        });
    }
    Ok(FrameHeader {
        msg_type: header[5],
        flags: u16::from_le_bytes([header[6], header[7]]),
        payload_len,
        checksum: field(12),
    })
}

/// Checks a payload against its header's checksum.
pub fn verify_frame_payload(header: &FrameHeader, payload: &[u8]) -> Result<(), FrameError> {
    debug_assert_eq!(payload.len(), header.payload_len as usize);
    let computed = frame_checksum(header.msg_type, header.flags, header.payload_len, [payload]);
    if computed != header.checksum {
        return Err(FrameError::BadChecksum {
            expected: header.checksum,
            computed,
        });
    }
    Ok(())
}

/// Appends a whole frame (header and payload) to `out`; for tests and small messages.
pub fn encode_frame(
    msg_type: u8,
    flags: u16,
    payload: &[u8],
    max_payload_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    out.extend_from_slice(&encode_frame_header(
        msg_type,
        flags,
        &[payload],
        max_payload_bytes,
    )?);
    out.extend_from_slice(payload);
    Ok(())
}

/// Writes every byte of `slices`, in order, with vectored writes of at most 1024 slices,
/// resuming after partial writes and retrying on `Interrupted`.
pub fn write_all_vectored(writer: &mut impl Write, slices: &[&[u8]]) -> io::Result<()> {
    let mut index = 0; // first slice not fully written
    let mut offset = 0; // bytes of slices[index] already written
    let mut iovecs: Vec<IoSlice<'_>> = Vec::with_capacity(slices.len().min(MAX_IOVECS_PER_WRITE));
    loop {
        while index < slices.len() && offset == slices[index].len() {
            index += 1;
            offset = 0;
        }
        if index == slices.len() {
            return Ok(());
        }
        iovecs.clear();
        iovecs.push(IoSlice::new(&slices[index][offset..]));
        iovecs.extend(
            slices[index + 1..]
                .iter()
                .filter(|s| !s.is_empty())
                .take(MAX_IOVECS_PER_WRITE - 1)
                .map(|s| IoSlice::new(s)),
        );
        let mut written = match writer.write_vectored(&iovecs) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "writer accepted no bytes",
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while written > 0 {
            let left_in_slice = slices[index].len() - offset;
            if written < left_in_slice {
                offset += written;
                written = 0;
            } else {
                written -= left_in_slice;
                index += 1;
                offset = 0;
                while index < slices.len() && slices[index].is_empty() {
                    index += 1;
                }
            }
        }
    }
}

/// A stream a [`FrameReader`] can read into memory that was never initialized, so the
/// reader need not zero-fill its buffer before the socket overwrites it (crate-private:
/// the peer transport's plain TCP stream implements it).
///
/// # Safety
///
/// An implementation promises that `read_uninit` returning `Ok(n)` wrote the first `n`
/// bytes of `buf` (so `n <= buf.len()`), whenever `can_read_uninit` is true.
pub(crate) unsafe trait ReadUninit: Read {
    /// Whether [`ReadUninit::read_uninit`] may be called on this stream; if not, the
    /// reader reads through [`Read::read`] into memory it zeroed once.
    fn can_read_uninit(&self) -> bool;

    /// Reads like [`Read::read`], into `buf`, which may be uninitialized.
    fn read_uninit(&mut self, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize>;
}

/// A raw read into uninitialized memory, taken from a [`ReadUninit`] implementation.
type UninitRead<R> = fn(&mut R, &mut [MaybeUninit<u8>]) -> io::Result<usize>;

/// Reads frames from a byte stream through large receive buffers ("chunks").
///
/// Each read asks for all the room left in the current chunk, every complete frame in
/// it is returned before the next read, and a payload is handed out as a [`Bytes`] view
/// of the chunk (no copy). A new chunk is taken only when the frame in progress does not
/// fit in what is left (its received part is copied over); chunks are 8 times the
/// largest recent frame (128 KiB to 2 MiB), and the old one lives on as long as payloads
/// sliced from it do. Memory a held payload keeps alive is bounded: a frame under 1/32 of
/// its chunk's size is copied into a buffer of its own instead of being sliced, so a
/// chunk of `C` bytes outlives its frames only through a frame of at least `C / 32`
/// bytes (held payloads pin at most 32 times their frames' size).
///
/// On a stream that implements `ReadUninit` (plain TCP) the socket writes straight into
/// unused capacity; on any other `Read` (TLS, test slices) the chunk is zeroed once, at
/// most 64 KiB ahead of the read, never per frame.
///
/// ```
/// use tally_net::frame::{encode_frame, FrameError, FrameReader, DEFAULT_MAX_FRAME_PAYLOAD_BYTES};
///
/// let mut wire = Vec::new();
/// encode_frame(0x01, 0, b"hello", DEFAULT_MAX_FRAME_PAYLOAD_BYTES, &mut wire).unwrap();
/// let mut reader = FrameReader::new(&wire[..], DEFAULT_MAX_FRAME_PAYLOAD_BYTES);
/// let frame = reader.read_frame().unwrap();
/// assert_eq!((frame.msg_type, &frame.payload[..]), (0x01, &b"hello"[..]));
/// assert!(matches!(reader.read_frame(), Err(FrameError::Eof)));
///
/// // A damaged byte is caught by the checksum, never handed on.
/// wire[20] ^= 0xff;
/// let mut reader = FrameReader::new(&wire[..], DEFAULT_MAX_FRAME_PAYLOAD_BYTES);
/// assert!(matches!(reader.read_frame(), Err(FrameError::BadChecksum { .. })));
/// ```
#[derive(Debug)]
pub struct FrameReader<R> {
    reader: R,
    /// Set (from a [`ReadUninit`] stream that can) to read into uninitialized capacity.
    read_uninit: Option<UninitRead<R>>,
    /// The current chunk: bytes received but not yet returned as frames, then the spare
    /// capacity the next read lands in.
    buffer: BytesMut,
    /// Bytes of `buffer`'s spare capacity, from its end on, known to be initialized
    /// (zeroed or written by an earlier read), for reads through [`Read::read`].
    /// Invariant: `buffer.len() + initialized_spare <= buffer.capacity()`; 0 after
    /// `buffer` is replaced or reclaimed (changed only by `fill_once` and `make_room`).
    initialized_spare: usize,
    /// Capacity the current chunk was taken with: frames under 1/32 of it are copied out.
    chunk_bytes: usize,
    /// Largest frame (header and payload) returned from the current chunk: sizes the next.
    largest_frame_bytes: usize,
    max_payload_bytes: usize,
}

impl<R: Read> FrameReader<R> {
    /// Reads frames of at most `max_payload_bytes` payload from `reader`.
    pub fn new(reader: R, max_payload_bytes: usize) -> Self {
        FrameReader {
            reader,
            read_uninit: None,
            buffer: BytesMut::new(),
            initialized_spare: 0,
            chunk_bytes: 0,
            largest_frame_bytes: 0,
            max_payload_bytes,
        }
    }

    /// The underlying reader (e.g. to set a timeout).
    pub fn get_ref(&self) -> &R {
        &self.reader
    }

    /// The underlying reader, mutably (e.g. to answer a handshake on the same stream).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.reader
    }

    /// The underlying reader; bytes buffered but not yet returned are dropped.
    pub fn into_inner(self) -> R {
        self.reader
    }

    /// Changes the payload bound for the frames read from now on (the transport reads
    /// handshake frames under [`MAX_HANDSHAKE_FRAME_PAYLOAD_BYTES`], then raises it).
    pub fn set_max_payload_bytes(&mut self, max_payload_bytes: usize) {
        self.max_payload_bytes = max_payload_bytes;
    }

    /// Bytes buffered but not yet returned.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Whether reads land in uninitialized capacity (a `ReadUninit` stream that can).
    #[cfg(test)]
    pub(crate) fn reads_uninit(&self) -> bool {
        self.read_uninit.is_some()
    }

    /// Reads the next frame. [`FrameError::Eof`] means the peer closed between frames.
    pub fn read_frame(&mut self) -> Result<Frame, FrameError> {
        self.fill_to(FRAME_HEADER_BYTES, 0)?;
        let mut raw = [0u8; FRAME_HEADER_BYTES];
        raw.copy_from_slice(&self.buffer[..FRAME_HEADER_BYTES]);
        let header = decode_frame_header(&raw, self.max_payload_bytes)?;
        // Bounded: the length was checked against the limit.
        let frame_bytes = FRAME_HEADER_BYTES + header.payload_len as usize;
        self.fill_to(frame_bytes, FRAME_HEADER_BYTES)?;
        verify_frame_payload(&header, &self.buffer[FRAME_HEADER_BYTES..frame_bytes])?;
        Ok(Frame {
            msg_type: header.msg_type,
            flags: header.flags,
            payload: self.take_payload(frame_bytes),
        })
    }

    /// Removes the frame of `frame_bytes` at the front of the buffer and returns its
    /// payload: a view of the chunk, or, for a frame under 1/32 of the chunk, a copy (so
    /// a small payload held for long cannot keep a large chunk alive).
    fn take_payload(&mut self, frame_bytes: usize) -> Bytes {
        self.largest_frame_bytes = self.largest_frame_bytes.max(frame_bytes);
        if frame_bytes < self.chunk_bytes / CHUNK_BYTES_PER_SLICED_FRAME {
            let payload = Bytes::copy_from_slice(&self.buffer[FRAME_HEADER_BYTES..frame_bytes]);
            self.buffer.advance(frame_bytes);
            return payload;
        }
        self.buffer.advance(FRAME_HEADER_BYTES);
        self.buffer
            .split_to(frame_bytes - FRAME_HEADER_BYTES)
            .freeze()
    }

    /// Reads until at least `wanted` bytes are buffered (each read takes all that is
    /// available, up to the room left). `frame_started` tells how many of them are
    /// already known to belong to a frame (for the Eof/Truncated distinction).
    fn fill_to(&mut self, wanted: usize, frame_started: usize) -> Result<(), FrameError> {
        while self.buffer.len() < wanted {
            self.make_room(wanted);
            let old_len = self.buffer.len();
            let read = match self.fill_once() {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(FrameError::Io(e)),
            };
            if read == 0 {
                if old_len == 0 && frame_started == 0 {
                    return Err(FrameError::Eof);
                }
                return Err(FrameError::Truncated {
                    needed_bytes: wanted,
                    got_bytes: old_len,
                });
            }
        }
        Ok(())
    }

    /// Makes the spare capacity hold at least the `wanted - len` bytes still missing:
    /// reuses the chunk if no payload still points into it, else takes a new one and
    /// copies the received part of the frame in progress into it.
    fn make_room(&mut self, wanted: usize) {
        let len = self.buffer.len();
        if self.buffer.capacity() - len >= wanted - len {
            return;
        }
        let capacity = self.chunk_capacity_for(wanted);
        self.initialized_spare = 0;
        self.largest_frame_bytes = 0;
        if self.buffer.try_reclaim(capacity - len) {
            self.chunk_bytes = self.buffer.capacity();
            return;
        }
        // Bounded: `wanted` is a header, or a header plus a length checked against the
        // limit; with `read_uninit` only the received part becomes resident.
        let mut chunk = BytesMut::with_capacity(capacity);
        chunk.extend_from_slice(&self.buffer);
        self.buffer = chunk;
        self.chunk_bytes = self.buffer.capacity();
    }

    /// Size of a new chunk for a frame of `wanted` bytes: `CHUNK_FRAMES` times the
    /// largest frame of the last chunk, within bounds (smaller while the payload limit is
    /// small, before the handshake), and at least the frame plus room behind it.
    fn chunk_capacity_for(&self, wanted: usize) -> usize {
        let standard = self
            .largest_frame_bytes
            .saturating_mul(CHUNK_FRAMES)
            .clamp(MIN_CHUNK_BYTES, MAX_CHUNK_BYTES)
            .min(
                FRAME_HEADER_BYTES
                    .saturating_add(self.max_payload_bytes)
                    .saturating_add(MIN_READ_BYTES),
            );
        standard.max(wanted.saturating_add(MIN_READ_BYTES))
    }

    /// One read into the spare capacity; returns the bytes it added to the buffer.
    fn fill_once(&mut self) -> io::Result<usize> {
        let len = self.buffer.len();
        let spare = self.buffer.spare_capacity_mut();
        let room = spare.len();
        let read = match self.read_uninit {
            Some(read_uninit) => read_uninit(&mut self.reader, spare)?,
            None => {
                if self.initialized_spare < room.min(MIN_READ_BYTES) {
                    let upto = room.min(self.initialized_spare + ZERO_AHEAD_BYTES);
                    spare[self.initialized_spare..upto].fill(MaybeUninit::new(0));
                    self.initialized_spare = upto;
                }
                // SAFETY: the first `initialized_spare` bytes of `spare` are initialized:
                // zeroed above or earlier, or written by an earlier read (the invariant
                // on the field; `spare` starts at the buffer's end, where it did then).
                let initialized = unsafe {
                    std::slice::from_raw_parts_mut(
                        spare.as_mut_ptr().cast::<u8>(),
                        self.initialized_spare,
                    )
                };
                let read = self.reader.read(initialized)?;
                if read > initialized.len() {
                    return Err(read_overflow());
                }
                self.initialized_spare -= read;
                read
            }
        };
        if read > room {
            return Err(read_overflow());
        }
        // SAFETY: `read <= room` bytes after `len` were written: by `read_uninit`, as
        // the `ReadUninit` contract promises, or by `Read::read` into initialized memory.
        unsafe { self.buffer.set_len(len + read) };
        Ok(read)
    }
}

/// Like [`FrameReader::new`], reading straight into unused buffer capacity when the
/// stream can (no zero-fill at all).
pub(crate) fn uninit_frame_reader<R: ReadUninit>(
    reader: R,
    max_payload_bytes: usize,
) -> FrameReader<R> {
    let read_uninit = reader
        .can_read_uninit()
        .then_some(R::read_uninit as UninitRead<R>);
    FrameReader {
        read_uninit,
        ..FrameReader::new(reader, max_payload_bytes)
    }
}

fn read_overflow() -> io::Error {
    io::Error::other("the stream reported more bytes read than the buffer holds")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = DEFAULT_MAX_FRAME_PAYLOAD_BYTES;

    fn frame_bytes(msg_type: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(msg_type, 0, payload, MAX, &mut out).expect("encode");
        out
    }

    fn read_all(bytes: &[u8], max: usize) -> (Vec<Frame>, FrameError) {
        let mut reader = FrameReader::new(bytes, max);
        let mut frames = Vec::new();
        loop {
            match reader.read_frame() {
                Ok(frame) => frames.push(frame),
                Err(error) => return (frames, error),
            }
        }
    }

    /// A writer that accepts at most `step` bytes per call and fails every other call
    /// with `Interrupted`, to exercise partial-write handling.
    struct StingyWriter {
        out: Vec<u8>,
        step: usize,
        calls: usize,
    }

    impl Write for StingyWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls & 1 == 0 {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "again"));
            }
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn frames_roundtrip_including_empty_and_multi_part_payloads() {
        let mut wire = frame_bytes(1, b"hello");
        wire.extend(frame_bytes(2, b""));
        let parts: [&[u8]; 3] = [b"ab", b"", b"cde"];
        let header = encode_frame_header(3, 7, &parts, MAX).expect("header");
        wire.extend_from_slice(&header);
        for part in parts {
            wire.extend_from_slice(part);
        }
        let (frames, end) = read_all(&wire, MAX);
        assert!(matches!(end, FrameError::Eof), "{end:?}");
        let got: Vec<(u8, u16, &[u8])> = frames
            .iter()
            .map(|f| (f.msg_type, f.flags, f.payload.as_ref()))
            .collect();
        assert_eq!(
            got,
            vec![(1, 0, &b"hello"[..]), (2, 0, b""), (3, 7, b"abcde")]
        );
    }

    #[test]
    fn header_layout_matches_protocol_document() {
        let header = encode_frame_header(0x42, 0x0102, &[b"xyz"], MAX).expect("header");
        assert_eq!(&header[0..4], b"TALY");
        assert_eq!(header[4], FRAME_VERSION);
        assert_eq!(header[5], 0x42);
        assert_eq!(&header[6..8], &[0x02, 0x01]);
        assert_eq!(&header[8..12], &3u32.to_le_bytes());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(b"xyz");
        hasher.update(&header[4..12]);
        assert_eq!(&header[12..16], &hasher.finalize().to_le_bytes());
    }

    #[test]
    fn each_corruption_class_is_reported_as_its_own_error() {
        let good = frame_bytes(9, b"payload bytes");

        let mut magic = good.clone();
        magic[0] ^= 1;
        assert!(matches!(
            read_all(&magic, MAX).1,
            FrameError::BadMagic { .. }
        ));

        let mut version = good.clone();
        version[4] = 2;
        assert!(matches!(
            read_all(&version, MAX).1,
            FrameError::BadVersion { found: 2 }
        ));

        let mut payload = good.clone();
        *payload.last_mut().expect("nonempty") ^= 0x80;
        assert!(matches!(
            read_all(&payload, MAX).1,
            FrameError::BadChecksum { .. }
        ));

        let mut msg_type = good.clone();
        msg_type[5] ^= 1;
        assert!(
            matches!(read_all(&msg_type, MAX).1, FrameError::BadChecksum { .. }),
            "header fields are covered by the checksum"
        );

        let (_, too_large) = read_all(&good, 4);
        assert!(matches!(
            too_large,
            FrameError::TooLarge {
                payload_len: 13,
                max: 4
            }
        ));

        for cut in 1..good.len() {
            let (frames, error) = read_all(&good[..cut], MAX);
            assert!(frames.is_empty());
            assert!(
                matches!(error, FrameError::Truncated { .. }),
                "cut {cut}: {error:?}"
            );
        }
        assert!(matches!(read_all(&[], MAX).1, FrameError::Eof));
    }

    #[test]
    fn oversized_length_is_refused_without_allocating_it() {
        let mut header = encode_frame_header(1, 0, &[], MAX).expect("header");
        header[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut reader = FrameReader::new(&header[..], MAX);
        assert!(matches!(
            reader.read_frame(),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(reader.buffer.capacity() <= MIN_CHUNK_BYTES);
    }

    #[test]
    fn encode_refuses_a_payload_over_the_limit() {
        assert!(matches!(
            encode_frame_header(1, 0, &[b"abc", b"de"], 4),
            Err(FrameError::TooLarge {
                payload_len: 5,
                max: 4
            })
        ));
    }

    #[test]
    fn vectored_write_survives_partial_writes_and_interrupts() {
        let slices: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; usize::from(i % 7)]).collect();
        let refs: Vec<&[u8]> = slices.iter().map(Vec::as_slice).collect();
        for step in [1, 2, 3, 5, 64] {
            let mut writer = StingyWriter {
                out: Vec::new(),
                step,
                calls: 0,
            };
            write_all_vectored(&mut writer, &refs).expect("write");
            assert_eq!(writer.out, slices.concat(), "step {step}");
        }
    }

    #[test]
    fn vectored_write_handles_more_slices_than_one_writev_takes() {
        let slices: Vec<Vec<u8>> = (0..3000u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let refs: Vec<&[u8]> = slices.iter().map(Vec::as_slice).collect();
        let mut out = Vec::new();
        write_all_vectored(&mut out, &refs).expect("write");
        assert_eq!(out, slices.concat());
    }

    /// A stream handing out `data` in reads of the sizes `steps` cycles through (each
    /// also capped by the room offered), counting reads; with `uninit` it reads through
    /// `ReadUninit` (as plain TCP does), else through `Read` (as TLS does).
    struct Scripted<'a> {
        data: &'a [u8],
        steps: Vec<usize>,
        reads: usize,
        uninit: bool,
    }

    impl<'a> Scripted<'a> {
        fn new(data: &'a [u8], steps: Vec<usize>, uninit: bool) -> Self {
            Scripted {
                data,
                steps,
                reads: 0,
                uninit,
            }
        }

        fn next_len(&mut self, room: usize) -> usize {
            let step = self.steps[self.reads % self.steps.len()];
            self.reads += 1;
            step.min(room).min(self.data.len())
        }
    }

    impl Read for Scripted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.next_len(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    // SAFETY: `read_uninit` writes the first `n` bytes of `buf` before returning `n`.
    unsafe impl ReadUninit for Scripted<'_> {
        fn can_read_uninit(&self) -> bool {
            self.uninit
        }

        fn read_uninit(&mut self, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
            let n = self.next_len(buf.len());
            for (slot, byte) in buf.iter_mut().zip(&self.data[..n]) {
                slot.write(*byte);
            }
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn read_scripted(source: Scripted<'_>, max: usize) -> (Vec<Frame>, FrameError, usize) {
        let mut reader = uninit_frame_reader(source, max);
        let mut frames = Vec::new();
        loop {
            match reader.read_frame() {
                Ok(frame) => frames.push(frame),
                Err(error) => return (frames, error, reader.get_ref().reads),
            }
        }
    }

    /// Frames of the given payload sizes (payload `i` filled from `i`), and the payloads.
    fn stream_of(sizes: &[usize]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let payloads: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| (0..len).map(|at| (i * 31 + at * 7) as u8).collect())
            .collect();
        let mut wire = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            encode_frame(i as u8, 0, payload, MAX, &mut wire).expect("encode");
        }
        (wire, payloads)
    }

    fn assert_frames(frames: &[Frame], payloads: &[Vec<u8>], case: &str) {
        assert_eq!(frames.len(), payloads.len(), "{case}");
        for (i, (frame, payload)) in frames.iter().zip(payloads).enumerate() {
            assert_eq!(frame.msg_type, i as u8, "{case}: frame {i}");
            assert_eq!(&frame.payload[..], &payload[..], "{case}: frame {i}");
        }
    }

    #[test]
    fn frames_split_at_every_byte_position_or_coalesced_arrive_intact_both_read_paths() {
        let sizes: Vec<usize> = (0..48).map(|i| (i * 37) % 300).collect();
        let (wire, payloads) = stream_of(&sizes);
        for uninit in [false, true] {
            for cut in 0..=wire.len() {
                // Two reads split at `cut`, each holding several frames.
                let steps = vec![cut.max(1), usize::MAX];
                let (frames, end, _) = read_scripted(Scripted::new(&wire, steps, uninit), MAX);
                assert!(matches!(end, FrameError::Eof), "cut {cut}: {end:?}");
                assert_frames(&frames, &payloads, &format!("uninit {uninit} cut {cut}"));
            }
            for step in 1..=40 {
                let (frames, end, _) = read_scripted(Scripted::new(&wire, vec![step], uninit), MAX);
                assert!(matches!(end, FrameError::Eof), "step {step}: {end:?}");
                assert_frames(&frames, &payloads, &format!("uninit {uninit} step {step}"));
            }
        }
    }

    #[test]
    fn one_read_takes_every_frame_that_is_available() {
        let (wire, payloads) = stream_of(&[100; 100]);
        assert!(wire.len() < MIN_CHUNK_BYTES);
        for uninit in [false, true] {
            let source = Scripted::new(&wire, vec![usize::MAX], uninit);
            let (frames, end, reads) = read_scripted(source, MAX);
            assert!(matches!(end, FrameError::Eof));
            assert_frames(&frames, &payloads, "coalesced");
            assert_eq!(reads, 2, "one read for 100 frames, one that saw the end");
        }
    }

    #[test]
    fn large_frames_and_chunk_changes_keep_every_held_payload_intact() {
        // Frames around the copy-out bound, the chunk size and beyond it, all held while
        // later frames replace or reuse the chunks they were read into.
        let mut sizes = Vec::new();
        for round in 0..3 {
            sizes.extend([0, 1, 100, 3_000, 4_079, 4_080, 60_000, 300_000]);
            sizes.extend([
                MIN_CHUNK_BYTES - 100,
                MIN_CHUNK_BYTES + 1,
                MAX_CHUNK_BYTES + 1,
            ]);
            sizes.extend([100 + round, 40_000, 1_000, MAX_CHUNK_BYTES / 2]);
        }
        let (wire, payloads) = stream_of(&sizes);
        for uninit in [false, true] {
            for steps in [vec![usize::MAX], vec![4096, 1, 70_000, 13], vec![65_536]] {
                let source = Scripted::new(&wire, steps.clone(), uninit);
                let (frames, end, _) = read_scripted(source, MAX);
                assert!(matches!(end, FrameError::Eof), "{end:?}");
                assert_frames(&frames, &payloads, &format!("uninit {uninit} {steps:?}"));
            }
        }
    }

    #[test]
    fn small_payloads_are_copied_out_and_large_ones_are_views_of_the_chunk() {
        // The first chunk is the smallest; its frames under 1/32 of it are copied.
        let small = MIN_CHUNK_BYTES / CHUNK_BYTES_PER_SLICED_FRAME - FRAME_HEADER_BYTES - 1;
        let (wire, payloads) = stream_of(&[small, small + 1, 50]);
        let mut reader = FrameReader::new(&wire[..], MAX);
        let frames: Vec<Frame> = (0..3)
            .map(|_| reader.read_frame().expect("frame"))
            .collect();
        assert_frames(&frames, &payloads, "mixed");
        let [copied, sliced, tiny] = [0, 1, 2].map(|i| frames[i].payload.clone());
        drop(frames);
        assert!(copied.is_unique(), "a small payload owns its bytes");
        assert!(tiny.is_unique(), "a small payload owns its bytes");
        assert!(
            !sliced.is_unique(),
            "a large payload shares the reader's chunk"
        );
        drop(reader);
        assert!(sliced.is_unique());
        assert_eq!(&sliced[..], &payloads[1][..]);
    }

    #[test]
    fn a_stream_claiming_more_bytes_than_offered_is_an_error_not_an_overrun() {
        struct Liar;
        impl Read for Liar {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                Ok(buf.len() + 1)
            }
        }
        let mut reader = FrameReader::new(Liar, MAX);
        assert!(matches!(reader.read_frame(), Err(FrameError::Io(_))));
        assert_eq!(reader.buffered_bytes(), 0);
    }

    #[test]
    fn an_announced_payload_that_never_comes_is_zeroed_only_a_little_ahead() {
        let len = 32 << 20;
        let mut header = encode_frame_header(1, 0, &[], MAX).expect("header");
        header[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        header[12..16].fill(0);
        let mut wire = header.to_vec();
        wire.extend_from_slice(&[7; 1000]);
        let mut reader = FrameReader::new(&wire[..], MAX);
        assert!(matches!(
            reader.read_frame(),
            Err(FrameError::Truncated {
                got_bytes: 1016,
                ..
            })
        ));
        assert!(reader.buffer.len() + reader.initialized_spare <= 1016 + ZERO_AHEAD_BYTES);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic_the_reader(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = read_all(&bytes, 64);
        }

        #[test]
        fn random_bytes_after_a_valid_header_never_panic(
            msg_type in any::<u8>(),
            len in 0u32..100,
            tail in prop::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut header = encode_frame_header(msg_type, 0, &[], MAX).expect("header");
            header[8..12].copy_from_slice(&len.to_le_bytes());
            let mut wire = header.to_vec();
            wire.extend(tail);
            let _ = read_all(&wire, MAX);
        }

        #[test]
        fn any_single_byte_corruption_is_detected(
            payload in prop::collection::vec(any::<u8>(), 0..64),
            position in any::<usize>(),
            xor in 1u8..=255,
        ) {
            let mut wire = frame_bytes(5, &payload);
            let at = position % wire.len();
            wire[at] ^= xor;
            let (frames, _) = read_all(&wire, MAX);
            prop_assert!(frames.is_empty(), "corruption at byte {} went unnoticed", at);
        }

        #[test]
        fn both_read_paths_match_the_whole_stream_for_any_split(
            bytes in prop::collection::vec(any::<u8>(), 0..300),
            sizes in prop::collection::vec(0usize..400, 0..12),
            steps in prop::collection::vec(1usize..200, 1..6),
            max in prop::sample::select(vec![16usize, 255, 4096, MAX]),
        ) {
            let (mut wire, _) = stream_of(&sizes);
            wire.extend(bytes);
            let (whole, whole_end) = read_all(&wire, max);
            for uninit in [false, true] {
                let source = Scripted::new(&wire, steps.clone(), uninit);
                let (frames, end, _) = read_scripted(source, max);
                prop_assert_eq!(&frames, &whole);
                prop_assert_eq!(format!("{end:?}"), format!("{whole_end:?}"));
            }
        }

        #[test]
        fn streams_of_frames_roundtrip_through_vectored_writes(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..50), 0..20),
            step in 1usize..40,
        ) {
            let headers: Vec<[u8; FRAME_HEADER_BYTES]> = payloads
                .iter()
                .enumerate()
                .map(|(i, p)| encode_frame_header(i as u8, 0, &[p], MAX).expect("header"))
                .collect();
            let mut slices: Vec<&[u8]> = Vec::new();
            for (header, payload) in headers.iter().zip(&payloads) {
                slices.push(header);
                slices.push(payload);
            }
            let mut writer = StingyWriter { out: Vec::new(), step, calls: 0 };
            write_all_vectored(&mut writer, &slices).expect("write");
            let (frames, end) = read_all(&writer.out, MAX);
            prop_assert!(matches!(end, FrameError::Eof));
            let got: Vec<Vec<u8>> = frames.iter().map(|f| f.payload.to_vec()).collect();
            prop_assert_eq!(got, payloads);
        }
    }
}
