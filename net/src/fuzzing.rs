//! Fuzz harnesses for every decoder of this crate (and the KV log payload decoder).
//!
//! Why here: the cargo-fuzz targets in `fuzz/` and the corpus replay tests in
//! `net/tests/fuzz_corpus.rs` call these same functions, so what CI replays is exactly
//! what was fuzzed. Each harness takes arbitrary bytes, must never panic, and panics
//! (an assertion) only when a decoder breaks one of its own promises: a decoded value
//! that does not re-encode to an equal value, or a parse that depends on how the input
//! was split into reads. Not part of the API (`#[doc(hidden)]`); see `docs/FUZZING.md`.

use std::io::{self, Read};

use bytes::Bytes;
use tally_engine::kv::{self, KvLimits};

use crate::codec::{self, CodecError, CodecLimits};
use crate::frame::{self, Frame, FrameError, FrameReader, FRAME_HEADER_BYTES};
use crate::handshake::{self, Hello, RejectReason};
use crate::resp::{self, ParseStatus, RequestParser, RespError, RespLimits};
use crate::transport::InboundMessage;

/// A deterministic split of the input into read sizes (xorshift over a fuzzed seed), so
/// the fuzzer controls where reads end without spending input bytes per split.
struct Splitter {
    state: u32,
    max_chunk_bytes: usize,
}

impl Splitter {
    fn new(seed: u16, max_chunk_bytes: usize) -> Self {
        Splitter {
            state: u32::from(seed) | 0x1_0000,
            max_chunk_bytes: max_chunk_bytes.max(1),
        }
    }

    fn next_chunk_bytes(&mut self) -> usize {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        1 + self.state as usize % self.max_chunk_bytes
    }
}

/// Splits `data` into (control bytes, rest); short inputs get zero control bytes.
fn split_control<const N: usize>(data: &[u8]) -> ([u8; N], &[u8]) {
    let mut control = [0u8; N];
    let n = data.len().min(N);
    control[..n].copy_from_slice(&data[..n]);
    (control, &data[n..])
}

// ----- 1. frames -------------------------------------------------------------------------

/// A reader that returns `data` in chunks chosen by a [`Splitter`], with an
/// `Interrupted` error before some of them (which the frame reader must retry).
struct ChunkedReader<'a> {
    data: &'a [u8],
    splitter: Splitter,
    interrupt_next: bool,
}

impl Read for ChunkedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let chunk = self.splitter.next_chunk_bytes();
        if chunk.is_multiple_of(7) && !self.interrupt_next {
            self.interrupt_next = true;
            return Err(io::Error::new(io::ErrorKind::Interrupted, "fuzz interrupt"));
        }
        self.interrupt_next = false;
        let n = chunk.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Payload limits the frame harness picks from (small, so a hostile length exercises
/// the bound instead of zeroing 64 MiB per run).
const FRAME_LIMITS: [usize; 8] = [0, 1, 16, 255, 4096, 65_535, 65_536, 1 << 18];

/// Every frame `reader` yields, and the error that ended the stream.
fn read_frames(mut reader: FrameReader<impl Read>) -> (Vec<Frame>, FrameError) {
    let mut frames = Vec::new();
    loop {
        match reader.read_frame() {
            Ok(frame) => frames.push(frame),
            Err(error) => return (frames, error),
        }
    }
}

/// Frame decoder: `data[0]` picks the payload limit, `data[1..3]` seed the read sizes,
/// the rest is the byte stream. Checks that the split does not change the frames or the
/// final error, and that the frames re-encode to exactly the bytes they came from.
pub fn frame_stream(data: &[u8]) {
    let (control, stream) = split_control::<3>(data);
    let max_payload_bytes = FRAME_LIMITS[usize::from(control[0]) % FRAME_LIMITS.len()];
    let seed = u16::from_le_bytes([control[1], control[2]]);
    let max_chunk_bytes = 1 + usize::from(control[0] >> 3);

    let (whole, whole_end) = read_frames(FrameReader::new(stream, max_payload_bytes));
    let chunked_reader = ChunkedReader {
        data: stream,
        splitter: Splitter::new(seed, max_chunk_bytes),
        interrupt_next: false,
    };
    let (chunked, chunked_end) = read_frames(FrameReader::new(chunked_reader, max_payload_bytes));
    assert_eq!(whole, chunked, "read sizes changed the frames");
    assert_eq!(
        format!("{whole_end:?}"),
        format!("{chunked_end:?}"),
        "read sizes changed the error"
    );
    assert!(!matches!(whole_end, FrameError::Io(_)), "{whole_end:?}");

    let mut reencoded = Vec::with_capacity(stream.len());
    for frame in &whole {
        assert!(frame.payload.len() <= max_payload_bytes);
        frame::encode_frame(
            frame.msg_type,
            frame.flags,
            &frame.payload,
            max_payload_bytes,
            &mut reencoded,
        )
        .expect("a decoded frame re-encodes within the limit it was read with");
    }
    assert_eq!(
        reencoded,
        stream[..reencoded.len()],
        "frames re-encode to other bytes"
    );
    if let Some(raw) = stream.get(..FRAME_HEADER_BYTES) {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header.copy_from_slice(raw);
        if let Ok(decoded) = frame::decode_frame_header(&header, max_payload_bytes) {
            assert!(decoded.payload_len as usize <= max_payload_bytes);
        }
    }
}

// ----- 2. Raft message codec -------------------------------------------------------------

/// Raft codec: `data[0]` is the frame message type, `data[1]` picks the entry limit
/// (255 = default), the rest is the payload. Anything that decodes must re-encode and
/// decode to an equal message, never longer than the original payload.
pub fn raft_codec(data: &[u8]) {
    let (control, payload) = split_control::<2>(data);
    let msg_type = control[0];
    let limits = match control[1] {
        255 => CodecLimits::default(),
        n => CodecLimits {
            max_entries_per_message: usize::from(n),
        },
    };
    let payload = Bytes::copy_from_slice(payload);
    let Ok(message) = codec::decode_message(msg_type, &payload, &limits) else {
        return;
    };
    let encoded = codec::encode_message(&message);
    assert_eq!(encoded.msg_type, msg_type, "message type changed");
    let bytes = Bytes::from(encoded.payload_parts.concat());
    assert!(bytes.len() <= payload.len(), "re-encoding grew the payload");
    let again = codec::decode_message(msg_type, &bytes, &limits)
        .expect("a re-encoded message decodes under the same limits");
    assert_eq!(again, message, "message changed through re-encoding");

    let inbound = |from| InboundMessage {
        from,
        msg_type,
        payload: bytes.clone(),
    };
    assert_eq!(
        codec::decode_inbound(&inbound(message.from), &limits).as_ref(),
        Ok(&message)
    );
    let other = message.from.wrapping_add(1);
    assert_eq!(
        codec::decode_inbound(&inbound(other), &limits),
        Err(CodecError::SenderMismatch {
            claimed: message.from,
            connected: other,
        })
    );
}

// ----- 3. peer handshake -----------------------------------------------------------------

/// Handshake: the acceptor's HELLO parser and check, and the dialer's REJECT parser,
/// both over `data[1..]`; `data[0]` picks the acceptor's own node id (0..=3).
pub fn handshake(data: &[u8]) {
    let (control, payload) = split_control::<1>(data);
    let node_id = u64::from(control[0] & 3);
    if let Some(hello) = Hello::decode(payload) {
        check_hello_roundtrip(&hello, payload);
        let verdict = handshake::check_hello(&hello, 7, node_id, |peer| peer <= 3);
        if verdict.is_ok() {
            assert!(
                (handshake::MIN_HANDSHAKE_VERSION..=handshake::HANDSHAKE_VERSION)
                    .contains(&hello.version)
                    && hello.cluster_id == 7
                    && hello.to_node == node_id
                    && hello.from_node != node_id
                    && hello.from_node <= 3,
                "accepted {hello:?}"
            );
        }
    }
    check_challenge_and_proofs(payload);
    let (reason, text) = handshake::decode_reject(payload);
    assert!(text.chars().count() <= handshake::MAX_REJECT_TEXT_BYTES);
    assert_eq!(RejectReason::from_code(reason.code()), reason);
    let (again_reason, again_text) =
        handshake::decode_reject(&handshake::encode_reject(reason, &text));
    if !payload.is_empty() {
        assert_eq!(again_reason, reason, "reject reason changed");
    }
    assert!(text.starts_with(&again_text), "reject text changed");
}

/// The challenge-response over arbitrary bytes: a CHALLENGE decodes only at its exact
/// size; a proof computed over the bytes verifies in its own direction only, and the
/// bytes taken as a proof verify only if they are the proof.
fn check_challenge_and_proofs(payload: &[u8]) {
    if let Some(nonce) = handshake::decode_challenge(payload) {
        assert_eq!(payload.len(), handshake::NONCE_BYTES);
        assert_eq!(&nonce[..], payload);
    }
    let secret = handshake::ClusterSecret::from_bytes(&[0x5a; handshake::MIN_SECRET_BYTES])
        .expect("a long enough secret");
    let nonce = [0x11; handshake::NONCE_BYTES];
    let dialer = secret.dialer_proof(payload, &nonce);
    assert!(secret.verify_dialer_proof(payload, &nonce, &dialer));
    assert!(!secret.verify_acceptor_proof(payload, &nonce, &dialer));
    let acceptor = secret.acceptor_proof(payload, &nonce);
    assert!(secret.verify_acceptor_proof(payload, &nonce, &acceptor));
    // Arbitrary bytes pass as a proof exactly when they are the proof.
    let forged = payload.get(..handshake::PROOF_BYTES).unwrap_or(payload);
    let real = secret.dialer_proof(b"", &nonce);
    assert_eq!(
        secret.verify_dialer_proof(b"", &nonce, forged),
        forged == real.as_slice()
    );
}

fn check_hello_roundtrip(hello: &Hello, payload: &[u8]) {
    assert!(hello.client_addr.len() <= handshake::MAX_CLIENT_ADDR_BYTES);
    let encoded = hello.encode();
    assert_eq!(
        Hello::decode(&encoded).as_ref(),
        Some(hello),
        "HELLO changed through re-encoding"
    );
    if hello.version <= handshake::HANDSHAKE_VERSION {
        assert_eq!(
            encoded, payload,
            "a HELLO this build speaks re-encodes exactly"
        );
    }
}

// ----- 4. RESP ---------------------------------------------------------------------------

/// Small limits (so inputs reach every bound) or the production defaults.
fn resp_limits(selector: u8) -> RespLimits {
    if selector & 1 == 0 {
        RespLimits {
            max_bulk_bytes: 64,
            max_array_elements: 8,
            max_inline_bytes: 32,
        }
    } else {
        RespLimits::default()
    }
}

type Commands = Vec<Vec<Vec<u8>>>;

/// How a parse over the whole stream ended: the commands, then the error or the number
/// of bytes left unconsumed (an incomplete request).
#[derive(Debug, PartialEq, Eq)]
struct RequestOutcome {
    commands: Commands,
    end: Result<usize, RespError>,
}

/// Parses `stream` as the client port does: `chunk` bytes arrive at a time, every
/// complete command is taken and its bytes drained from the buffer front.
fn parse_requests_streamed(
    stream: &[u8],
    limits: RespLimits,
    mut next_chunk_bytes: impl FnMut() -> usize,
) -> RequestOutcome {
    let mut parser = RequestParser::new(limits);
    let mut pending: Vec<u8> = Vec::new();
    let mut commands = Vec::new();
    let mut fed = 0;
    loop {
        loop {
            match parser.parse(&pending) {
                Ok(ParseStatus::Complete { consumed }) => {
                    assert!(consumed > 0 && consumed <= pending.len());
                    commands.push(parser.args(&pending).map(<[u8]>::to_vec).collect());
                    pending.drain(..consumed);
                }
                Ok(ParseStatus::Incomplete) => break,
                Err(error) => {
                    return RequestOutcome {
                        commands,
                        end: Err(error),
                    }
                }
            }
        }
        if fed == stream.len() {
            return RequestOutcome {
                commands,
                end: Ok(pending.len()),
            };
        }
        let n = next_chunk_bytes().min(stream.len() - fed);
        pending.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
    }
}

/// RESP request parser: `data[0]` picks the limits and the largest read, `data[1..3]`
/// seed the read sizes, the rest is the stream. The split must not change the parse:
/// the same commands and the same error or leftover as one read of everything.
/// Also runs the client-side reply parser over the same bytes.
pub fn resp_request(data: &[u8]) {
    let (control, stream) = split_control::<3>(data);
    let limits = resp_limits(control[0]);
    let whole = parse_requests_streamed(stream, limits, || usize::MAX);
    let mut splitter = Splitter::new(
        u16::from_le_bytes([control[1], control[2]]),
        1 + usize::from(control[0] >> 1),
    );
    let split = parse_requests_streamed(stream, limits, || splitter.next_chunk_bytes());
    assert_eq!(whole, split, "read sizes changed the parse");
    for command in &whole.commands {
        assert!(!command.is_empty() && command.len() <= limits.max_array_elements.max(1 << 16));
        for arg in command {
            assert!(arg.len() <= limits.max_bulk_bytes.max(limits.max_inline_bytes));
        }
    }
    resp_reply_stream(stream, &limits);
}

/// Client-side reply parser over `stream`: every reply it returns re-encodes to bytes
/// that parse back to the same value, and no strict prefix of a reply is complete.
fn resp_reply_stream(stream: &[u8], limits: &RespLimits) {
    let mut offset = 0;
    while let Ok(Some((value, used))) = resp::parse_reply(&stream[offset..], limits) {
        assert!(used > 0 && used <= stream.len() - offset);
        let mut encoded = Vec::new();
        value.write(&mut encoded);
        assert_eq!(
            resp::parse_reply(&encoded, limits),
            Ok(Some((value, encoded.len()))),
            "reply changed through re-encoding"
        );
        let reply = &stream[offset..offset + used];
        for cut in [used - 1, used / 2, 1] {
            if cut < used {
                let prefix = resp::parse_reply(&reply[..cut], limits);
                assert!(
                    matches!(prefix, Ok(None)),
                    "a {cut}-byte prefix of a {used}-byte reply parsed as {prefix:?}"
                );
            }
        }
        offset += used;
    }
}

// ----- 6. KV log payload -----------------------------------------------------------------

/// KV log payload decoder: `data[0]` picks the limits (small or default), the rest is
/// the payload. A payload that decodes re-encodes to exactly the same bytes (the format
/// has one encoding per request).
pub fn kv_request(data: &[u8]) {
    let (control, payload) = split_control::<1>(data);
    let limits = if control[0] & 1 == 0 {
        KvLimits {
            max_argument_bytes: 16,
            max_arguments: 4,
            ..KvLimits::default()
        }
    } else {
        KvLimits::default()
    };
    let Ok(request) = kv::decode_request(payload, &limits) else {
        return;
    };
    let mut encoded = Vec::with_capacity(payload.len());
    kv::encode_request_at(
        request.session,
        request.time_ms,
        &request.command,
        &limits,
        &mut encoded,
    )
    .expect("a decoded request re-encodes under the same limits");
    assert_eq!(encoded, payload, "request re-encodes to other bytes");
    let again = kv::decode_request(&encoded, &limits).expect("re-encoded request decodes");
    assert_eq!(again, request);
}
