//! RESP2 and RESP3, the Redis wire protocol, for Tally's client port.
//!
//! Why: speaking RESP lets `redis-cli`, `redis-benchmark` and every Redis client library
//! talk to a Tally cluster unchanged. Requests are the same in both versions; a
//! connection switches its replies to RESP3 with `HELLO 3` ([`Protocol`]), which changes
//! nulls (`_`), maps (`%`) and text for people (verbatim `=`), as Redis does.
//!
//! * [`RequestParser`] reads pipelined requests incrementally from a connection's byte
//!   buffer: arrays of bulk strings (what every client library sends) and inline commands
//!   (what a person types into `telnet`). It keeps its position between calls, so a large
//!   request that arrives in many reads is scanned once, not once per read. Every length
//!   and count is checked against [`RespLimits`] before anything is reserved; argument
//!   bytes are never copied: the parser records spans into the caller's buffer.
//! * A malformed request yields a [`RespError`] whose [`RespError::error_reply`] is the
//!   line to send (`-ERR Protocol error: ...`, as Redis does) before closing the
//!   connection: after a framing error the stream position is unknown.
//! * The `write_*` functions encode replies into a reusable `Vec<u8>`.
//! * [`parse_reply`] and [`write_command`] are the client side, for tests and tools.

use std::ops::Range;

use tally_engine::kv::KvResponse;

/// Bounds on what a request may announce. A request past a bound is a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RespLimits {
    /// Largest bulk string, in bytes (Redis's `proto-max-bulk-len` is 512 MiB).
    pub max_bulk_bytes: usize,
    /// Most elements in one request array.
    pub max_array_elements: usize,
    /// Longest inline command line, in bytes (Redis: 64 KiB).
    pub max_inline_bytes: usize,
}

impl Default for RespLimits {
    fn default() -> Self {
        RespLimits {
            max_bulk_bytes: 64 << 20,
            max_array_elements: 1 << 20,
            max_inline_bytes: 64 << 10,
        }
    }
}

/// Longest `*<n>\r\n` / `$<n>\r\n` header line we look for a CRLF in (sign, 19 digits,
/// CR, plus slack); a longer one is a protocol error rather than a reason to buffer more.
const MAX_LENGTH_LINE_BYTES: usize = 32;
/// Deepest nesting [`parse_reply`] follows, so hostile input cannot exhaust the stack.
const MAX_REPLY_NESTING: usize = 32;

/// A request or reply that breaks the protocol. `Display` is Redis's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RespError {
    /// `*` not followed by a valid integer and CRLF.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// The array announces more elements than allowed.
    #[error("Protocol error: multibulk length {count} exceeds the limit of {max}")]
    TooManyElements {
        /// Element count the array announces.
        count: u64,
        /// The limit in force.
        max: usize,
    },
    /// An array element is not a bulk string.
    #[error("Protocol error: expected '$', got '{}'", char::from(*got))]
    ExpectedBulk {
        /// The type byte found instead of `$`.
        got: u8,
    },
    /// `$` not followed by a valid non-negative integer and CRLF.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// The bulk string announces more bytes than allowed.
    #[error("Protocol error: bulk length {len} exceeds the limit of {max}")]
    BulkTooLarge {
        /// Length the bulk string announces, in bytes.
        len: u64,
        /// The limit in force, in bytes.
        max: usize,
    },
    /// A bulk string's bytes are not followed by CRLF.
    #[error("Protocol error: expected CRLF after bulk string")]
    MissingCrlf,
    /// An inline command line without a newline within the limit.
    #[error("Protocol error: too big inline request")]
    InlineTooLong {
        /// The inline line limit, in bytes.
        max: usize,
    },
    /// (Replies) a type byte that is not `+ - : $ *`.
    #[error("Protocol error: unexpected reply type byte {0:#04x}")]
    UnexpectedReplyType(u8),
    /// (Replies) `:` not followed by a valid integer.
    #[error("Protocol error: invalid integer reply")]
    InvalidInteger,
    /// (Replies) arrays nested deeper than we follow.
    #[error("Protocol error: replies nested too deeply")]
    NestingTooDeep,
}

impl RespError {
    /// The error line to send the client before closing (without `-` and CRLF),
    /// e.g. `ERR Protocol error: invalid bulk length`.
    pub fn error_reply(&self) -> String {
        format!("ERR {self}")
    }
}

/// Result of one [`RequestParser::parse`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseStatus {
    /// A whole command was parsed; its arguments are available from
    /// [`RequestParser::args`] until the next `parse`. `consumed` bytes (including any
    /// empty commands skipped before it) may now be removed from the buffer front.
    Complete {
        /// Bytes of the buffer the command (and skipped empty commands) took.
        consumed: usize,
    },
    /// More bytes are needed. Call again with the same buffer plus whatever arrives.
    Incomplete,
}

/// Where the parser stopped within the current command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Before the first byte of a command.
    Start,
    /// Inside an array request announcing `elements` bulk strings.
    Array { elements: usize },
}

/// A parsed `*n` / `$n` line: the integer (None when invalid) and the offset after it.
type LengthLine = (Option<i64>, usize);

/// What [`RequestParser::inline_command`] found.
enum InlineOutcome {
    Complete(ParseStatus),
    Incomplete,
    /// A blank line, consumed; parsing goes on after it.
    EmptyLine,
}

/// Incremental parser for pipelined RESP2 requests.
///
/// Contract: between a call that returned [`ParseStatus::Incomplete`] and the next call,
/// the caller may only *append* to the buffer. After [`ParseStatus::Complete`] the caller
/// reads [`RequestParser::args`] and then removes the consumed bytes (or passes the
/// unconsumed tail next time); the parser starts the next command at offset 0.
///
/// ```
/// use tally_net::resp::{ParseStatus, RequestParser, RespLimits};
///
/// let mut parser = RequestParser::new(RespLimits::default());
/// let mut buffer = b"*3\r\n$3\r\nSET\r\n$1\r\nk".to_vec();
/// assert_eq!(parser.parse(&buffer).unwrap(), ParseStatus::Incomplete);
/// buffer.extend_from_slice(b"\r\n$1\r\nv\r\n"); // the rest arrives
/// let ParseStatus::Complete { consumed } = parser.parse(&buffer).unwrap() else {
///     panic!("a whole command is buffered");
/// };
/// let args: Vec<&[u8]> = parser.args(&buffer).collect();
/// assert_eq!(args, [&b"SET"[..], b"k", b"v"]);
/// buffer.drain(..consumed);
/// assert!(buffer.is_empty());
/// ```
#[derive(Debug)]
pub struct RequestParser {
    limits: RespLimits,
    progress: Progress,
    /// Offset in the buffer up to which the current command has been parsed.
    /// Invariant: every span in `spans` ends at or before `position`.
    position: usize,
    /// Spans of the arguments parsed so far for the current (or last complete) command.
    spans: Vec<Range<usize>>,
}

impl RequestParser {
    /// A parser enforcing `limits`.
    pub fn new(limits: RespLimits) -> Self {
        RequestParser {
            limits,
            progress: Progress::Start,
            position: 0,
            spans: Vec::new(),
        }
    }

    /// The limits this parser enforces.
    pub fn limits(&self) -> &RespLimits {
        &self.limits
    }

    /// Spans (into the buffer passed to the last `parse`) of the last complete command's
    /// arguments.
    pub fn arg_spans(&self) -> &[Range<usize>] {
        &self.spans
    }

    /// The last complete command's arguments, borrowed from `buffer` (the same buffer the
    /// completing `parse` call saw).
    pub fn args<'b>(&'b self, buffer: &'b [u8]) -> impl ExactSizeIterator<Item = &'b [u8]> + 'b {
        self.spans.iter().map(move |span| &buffer[span.clone()])
    }

    /// Whether no command is partly parsed: the next `parse` starts a command at the
    /// start of its buffer.
    pub fn is_between_commands(&self) -> bool {
        self.progress == Progress::Start && self.position == 0
    }

    /// Forgets any partial command (for reuse after the caller drops its buffer).
    pub fn reset(&mut self) {
        self.progress = Progress::Start;
        self.position = 0;
        self.spans.clear();
    }

    /// Parses the next command from `buffer`, resuming where the previous `Incomplete`
    /// call stopped.
    pub fn parse(&mut self, buffer: &[u8]) -> Result<ParseStatus, RespError> {
        if self.progress == Progress::Start && self.position == 0 {
            if let Some(consumed) = self.whole_array(buffer) {
                return Ok(ParseStatus::Complete { consumed });
            }
        }
        loop {
            match self.progress {
                Progress::Start => {
                    if self.position == 0 {
                        self.spans.clear();
                    }
                    let Some(&first) = buffer.get(self.position) else {
                        return Ok(ParseStatus::Incomplete);
                    };
                    if first == b'*' {
                        let Some((count, next)) = self.length_line(buffer)? else {
                            return Ok(ParseStatus::Incomplete);
                        };
                        let count = count.ok_or(RespError::InvalidMultibulkLength)?;
                        self.position = next;
                        if count <= 0 {
                            continue; // `*0` and `*-1` are empty requests: skipped.
                        }
                        let count = count as u64;
                        if count > self.limits.max_array_elements as u64 {
                            return Err(RespError::TooManyElements {
                                count,
                                max: self.limits.max_array_elements,
                            });
                        }
                        self.spans.clear();
                        // Reserve no more than the bytes present could describe.
                        let plausible = (buffer.len() - next) / 4 + 1;
                        self.spans.reserve((count as usize).min(plausible));
                        self.progress = Progress::Array {
                            elements: count as usize,
                        };
                    } else {
                        match self.inline_command(buffer)? {
                            InlineOutcome::Complete(status) => return Ok(status),
                            InlineOutcome::Incomplete => return Ok(ParseStatus::Incomplete),
                            InlineOutcome::EmptyLine => continue,
                        }
                    }
                }
                Progress::Array { elements } => {
                    while self.spans.len() < elements {
                        match self.bulk_element(buffer)? {
                            Some(span) => self.spans.push(span),
                            None => return Ok(ParseStatus::Incomplete),
                        }
                    }
                    return Ok(self.complete());
                }
            }
        }
    }

    /// The fast path for what clients send: a whole array request at the start of
    /// `buffer` whose every length is plain digits, within the limits. Returns the bytes
    /// it takes, its spans recorded; `None` for anything else (incomplete, an empty
    /// array, a sign, an error...), which the general path then parses from the same
    /// start (it clears the spans), so every outcome is the general path's.
    #[inline]
    fn whole_array(&mut self, buffer: &[u8]) -> Option<usize> {
        if buffer.first() != Some(&b'*') {
            return None;
        }
        let (count, mut position) = digits_line(buffer, 1)?;
        // An element takes at least 6 bytes (`$0\r\n\r\n`): a count the buffer cannot
        // hold is incomplete, and bounds the reservation below.
        let max_present = (buffer.len() - position) / 6;
        if count == 0 || count > self.limits.max_array_elements as u64 || count > max_present as u64
        {
            return None;
        }
        self.spans.clear();
        self.spans.reserve(count as usize);
        for _ in 0..count {
            if buffer.get(position) != Some(&b'$') {
                return None;
            }
            let (len, data_start) = digits_line(buffer, position + 1)?;
            if len > self.limits.max_bulk_bytes as u64 {
                return None;
            }
            let data_end = data_start + len as usize;
            if buffer.get(data_end..data_end + 2) != Some(b"\r\n") {
                return None;
            }
            self.spans.push(data_start..data_end);
            position = data_end + 2;
        }
        Some(position)
    }

    /// Parses one `$<len>\r\n<bytes>\r\n` element at `position` and moves past it.
    /// `Ok(None)`: more bytes are needed (`position` unchanged, so the element's header
    /// is parsed again next time: it is at most [`MAX_LENGTH_LINE_BYTES`] long, while
    /// the bytes of earlier elements are never looked at again).
    #[inline]
    fn bulk_element(&mut self, buffer: &[u8]) -> Result<Option<Range<usize>>, RespError> {
        let Some(&first) = buffer.get(self.position) else {
            return Ok(None);
        };
        if first != b'$' {
            return Err(RespError::ExpectedBulk { got: first });
        }
        let (len, data_start) = match digits_line(buffer, self.position + 1) {
            Some((len, data_start)) => (len, data_start),
            None => {
                let Some((len, data_start)) = self.length_line(buffer)? else {
                    return Ok(None);
                };
                match len {
                    Some(len) if len >= 0 => (len as u64, data_start),
                    _ => return Err(RespError::InvalidBulkLength),
                }
            }
        };
        if len > self.limits.max_bulk_bytes as u64 {
            return Err(RespError::BulkTooLarge {
                len,
                max: self.limits.max_bulk_bytes,
            });
        }
        // No overflow: `len` is within `max_bulk_bytes`, a usize.
        let data_end = data_start + len as usize;
        let Some(terminator) = buffer.get(data_end..data_end + 2) else {
            return Ok(None);
        };
        if terminator != b"\r\n" {
            return Err(RespError::MissingCrlf);
        }
        self.position = data_end + 2;
        Ok(Some(data_start..data_end))
    }

    fn complete(&mut self) -> ParseStatus {
        let consumed = self.position;
        debug_assert!(self.spans.iter().all(|s| s.end <= consumed));
        self.progress = Progress::Start;
        self.position = 0;
        ParseStatus::Complete { consumed }
    }

    /// Parses `<type byte><integer>\r\n` at `position`. `Ok(None)`: need more bytes;
    /// `Ok(Some((None, _)))`: the line is complete but not a valid integer.
    fn length_line(&self, buffer: &[u8]) -> Result<Option<LengthLine>, RespError> {
        let start = self.position + 1;
        if let Some((value, next)) = digits_line(buffer, start) {
            // At most 18 digits: within i64.
            return Ok(Some((Some(value as i64), next)));
        }
        let window_end = buffer.len().min(start + MAX_LENGTH_LINE_BYTES);
        let window = &buffer[start.min(window_end)..window_end];
        match window.iter().position(|&b| b == b'\r') {
            Some(cr) => {
                let after_cr = start + cr + 1;
                match buffer.get(after_cr) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some((parse_integer(&window[..cr]), after_cr + 1))),
                    Some(_) => Ok(Some((None, after_cr))),
                }
            }
            None if window.len() >= MAX_LENGTH_LINE_BYTES => Ok(Some((None, window_end))),
            None => Ok(None),
        }
    }

    /// Parses an inline command line at `position`.
    fn inline_command(&mut self, buffer: &[u8]) -> Result<InlineOutcome, RespError> {
        let start = self.position;
        let window_end = buffer.len().min(start + self.limits.max_inline_bytes);
        let Some(newline) = buffer[start..window_end].iter().position(|&b| b == b'\n') else {
            if buffer.len() - start >= self.limits.max_inline_bytes {
                return Err(RespError::InlineTooLong {
                    max: self.limits.max_inline_bytes,
                });
            }
            return Ok(InlineOutcome::Incomplete);
        };
        let line_end = start + newline;
        let mut content_end = line_end;
        if content_end > start && buffer[content_end - 1] == b'\r' {
            content_end -= 1;
        }
        self.spans.clear();
        let mut cursor = start;
        while cursor < content_end {
            while cursor < content_end && buffer[cursor].is_ascii_whitespace() {
                cursor += 1;
            }
            let word_start = cursor;
            while cursor < content_end && !buffer[cursor].is_ascii_whitespace() {
                cursor += 1;
            }
            if cursor > word_start {
                self.spans.push(word_start..cursor);
            }
        }
        self.position = line_end + 1;
        if self.spans.is_empty() {
            // An empty line is skipped, like Redis does; parsing continues after it.
            return Ok(InlineOutcome::EmptyLine);
        }
        Ok(InlineOutcome::Complete(self.complete()))
    }
}

/// Most digits [`digits_line`] accepts: any 18-digit number fits `i64` (and `u64`).
const FAST_LENGTH_DIGITS: usize = 18;

/// The common length line, `<1..=18 digits>\r\n` at `start`: its value and the offset
/// after the LF. `None` for anything else (a sign, more digits, no CRLF yet, junk):
/// [`RequestParser::length_line`] then decides, so the outcome of every input is the
/// general path's (this only skips its separate CR search and checked arithmetic).
#[inline(always)]
fn digits_line(buffer: &[u8], start: usize) -> Option<(u64, usize)> {
    let window = buffer.get(start..)?;
    let mut value: u64 = 0;
    let mut n_digits = 0;
    while n_digits < FAST_LENGTH_DIGITS {
        let digit = window.get(n_digits)?.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        value = value * 10 + u64::from(digit);
        n_digits += 1;
    }
    if n_digits == 0 || window.get(n_digits..n_digits + 2) != Some(b"\r\n") {
        return None;
    }
    Some((value, start + n_digits + 2))
}

/// Parses a RESP integer: optional `-`, then 1..=19 ASCII digits, within `i64`.
fn parse_integer(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut value: i64 = 0;
    for &digit in digits {
        value = value
            .checked_mul(10)?
            .checked_add(i64::from(digit - b'0'))?;
    }
    Some(if negative { -value } else { value })
}

/// Writes bytes for a simple string or error line with CR and LF replaced by spaces, so a
/// message can never break the framing.
fn write_line_sanitized(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    if bytes.iter().any(|&b| b == b'\r' || b == b'\n') {
        out.extend(
            bytes
                .iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
    } else {
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(b"\r\n");
}

/// Longest decimal `u64` (20 digits).
const MAX_DECIMAL_DIGITS: usize = 20;

/// `<type byte>[-]<decimal value>\r\n`, the header line of integers, bulk strings,
/// arrays and maps: the digits as `write!` would print them, but built right to left
/// on the stack and appended with one copy (the formatting machinery costs hundreds of
/// instructions per reply on the I/O thread).
fn write_header_line(out: &mut Vec<u8>, type_byte: u8, negative: bool, mut value: u64) {
    // Type byte, sign, 20 digits, CRLF.
    let mut line = [0u8; MAX_DECIMAL_DIGITS + 4];
    let mut start = line.len() - 2;
    line[start..].copy_from_slice(b"\r\n");
    loop {
        start -= 1;
        line[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    if negative {
        start -= 1;
        line[start] = b'-';
    }
    start -= 1;
    line[start] = type_byte;
    out.extend_from_slice(&line[start..]);
}

/// `+text\r\n`.
pub fn write_simple_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'+');
    write_line_sanitized(out, text);
}

/// `-message\r\n`; `message` starts with the error code, e.g. `ERR ...` or `NOTLEADER ...`.
pub fn write_error(out: &mut Vec<u8>, message: &str) {
    out.push(b'-');
    write_line_sanitized(out, message);
}

/// `:n\r\n`.
pub fn write_integer(out: &mut Vec<u8>, value: i64) {
    write_header_line(out, b':', value < 0, value.unsigned_abs());
}

/// `$len\r\nbytes\r\n`.
pub fn write_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    // One reservation for the whole element: `$`, digits, two CRLFs.
    out.reserve(bytes.len() + MAX_DECIMAL_DIGITS + 5);
    write_header_line(out, b'$', false, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// `$-1\r\n`, the null bulk string (a missing key).
pub fn write_null_bulk(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

/// `*n\r\n`; the caller writes the `n` elements next.
pub fn write_array_header(out: &mut Vec<u8>, n_elements: usize) {
    write_header_line(out, b'*', false, n_elements as u64);
}

/// `*-1\r\n`, the null array.
pub fn write_null_array(out: &mut Vec<u8>) {
    out.extend_from_slice(b"*-1\r\n");
}

/// Writes a request as an array of bulk strings (what clients send).
pub fn write_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    write_array_header(out, args.len());
    for arg in args {
        write_bulk(out, arg);
    }
}

/// The protocol a connection speaks: RESP2 until `HELLO 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// RESP2, the protocol every connection starts with.
    #[default]
    Resp2,
    /// RESP3, after a successful `HELLO 3`.
    Resp3,
}

impl Protocol {
    /// The number `HELLO` reports.
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// The null reply: `$-1` (RESP2) or `_` (RESP3).
pub fn write_null(out: &mut Vec<u8>, protocol: Protocol) {
    match protocol {
        Protocol::Resp2 => write_null_bulk(out),
        Protocol::Resp3 => out.extend_from_slice(b"_\r\n"),
    }
}

/// The null array: `*-1` (RESP2) or `_` (RESP3).
pub fn write_null_array_as(out: &mut Vec<u8>, protocol: Protocol) {
    match protocol {
        Protocol::Resp2 => write_null_array(out),
        Protocol::Resp3 => out.extend_from_slice(b"_\r\n"),
    }
}

/// A map of `n_pairs` pairs: `%n` (RESP3) or a flat array of `2n` elements (RESP2); the
/// caller writes the keys and values next.
pub fn write_map_header(out: &mut Vec<u8>, n_pairs: usize, protocol: Protocol) {
    match protocol {
        Protocol::Resp2 => write_array_header(out, n_pairs * 2),
        Protocol::Resp3 => write_header_line(out, b'%', false, n_pairs as u64),
    }
}

/// Text for a person (INFO, CLIENT INFO): a bulk string (RESP2) or a verbatim string
/// `=len\r\ntxt:...` (RESP3, what Redis sends).
pub fn write_verbatim(out: &mut Vec<u8>, text: &[u8], protocol: Protocol) {
    match protocol {
        Protocol::Resp2 => write_bulk(out, text),
        Protocol::Resp3 => {
            out.reserve(text.len() + MAX_DECIMAL_DIGITS + 9);
            write_header_line(out, b'=', false, text.len() as u64 + 4);
            out.extend_from_slice(b"txt:");
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Writes a KV state machine reply in RESP2.
pub fn write_kv_response(out: &mut Vec<u8>, response: &KvResponse) {
    write_kv_response_as(out, response, Protocol::Resp2);
}

/// Writes a KV state machine reply in `protocol` (RESP3 differs only in its nulls).
pub fn write_kv_response_as(out: &mut Vec<u8>, response: &KvResponse, protocol: Protocol) {
    match response {
        KvResponse::Ok => out.extend_from_slice(b"+OK\r\n"),
        KvResponse::Integer(n) => write_integer(out, *n),
        KvResponse::Bulk(Some(bytes)) => write_bulk(out, bytes),
        KvResponse::Bulk(None) => write_null(out, protocol),
        KvResponse::Array(items) => {
            write_array_header(out, items.len());
            for item in items {
                match item {
                    Some(bytes) => write_bulk(out, bytes),
                    None => write_null(out, protocol),
                }
            }
        }
        KvResponse::Error(error) => write_error(out, &error.to_string()),
        KvResponse::Status(status) => write_simple_string(out, status),
        KvResponse::NullArray => write_null_array_as(out, protocol),
        KvResponse::Nested(items) => {
            write_array_header(out, items.len());
            for item in items {
                write_kv_response_as(out, item, protocol);
            }
        }
        // The client port turns the WATCH read into its own reply; `+OK` is what the
        // client of a WATCH hears.
        KvResponse::Watched { .. } => write_simple_string(out, "OK"),
    }
}

/// A decoded reply (client side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespValue {
    /// `+...`
    Simple(Vec<u8>),
    /// `-...`
    Error(Vec<u8>),
    /// `:n`
    Integer(i64),
    /// `$n ...` or `$-1` (None).
    Bulk(Option<Vec<u8>>),
    /// `*n ...` or `*-1` (None).
    Array(Option<Vec<RespValue>>),
}

impl RespValue {
    /// Encodes this value.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            RespValue::Simple(text) => {
                out.push(b'+');
                out.extend_from_slice(text);
                out.extend_from_slice(b"\r\n");
            }
            RespValue::Error(text) => {
                out.push(b'-');
                out.extend_from_slice(text);
                out.extend_from_slice(b"\r\n");
            }
            RespValue::Integer(n) => write_integer(out, *n),
            RespValue::Bulk(Some(bytes)) => write_bulk(out, bytes),
            RespValue::Bulk(None) => write_null_bulk(out),
            RespValue::Array(None) => write_null_array(out),
            RespValue::Array(Some(items)) => {
                write_array_header(out, items.len());
                for item in items {
                    item.write(out);
                }
            }
        }
    }
}

/// Parses one reply from the front of `buffer`: `Ok(None)` when incomplete, else the
/// value and the bytes it used. Bounded by `limits` and a nesting depth.
pub fn parse_reply(
    buffer: &[u8],
    limits: &RespLimits,
) -> Result<Option<(RespValue, usize)>, RespError> {
    parse_reply_at(buffer, 0, limits, 0)
}

fn reply_line(
    buffer: &[u8],
    start: usize,
    max_bytes: usize,
) -> Option<Result<(&[u8], usize), RespError>> {
    let window_end = buffer.len().min(start.saturating_add(max_bytes));
    let window = buffer.get(start..window_end)?;
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(cr) => Some(Ok((&window[..cr], start + cr + 2))),
        None if window.len() >= max_bytes => Some(Err(RespError::InlineTooLong { max: max_bytes })),
        None => None,
    }
}

fn parse_reply_at(
    buffer: &[u8],
    start: usize,
    limits: &RespLimits,
    depth: usize,
) -> Result<Option<(RespValue, usize)>, RespError> {
    if depth > MAX_REPLY_NESTING {
        return Err(RespError::NestingTooDeep);
    }
    let Some(&kind) = buffer.get(start) else {
        return Ok(None);
    };
    let line_limit = match kind {
        b'+' | b'-' => limits.max_inline_bytes,
        _ => MAX_LENGTH_LINE_BYTES,
    };
    let (line, next) = match reply_line(buffer, start + 1, line_limit) {
        None => return Ok(None),
        Some(Err(_)) if kind == b'$' => return Err(RespError::InvalidBulkLength),
        Some(Err(_)) if kind == b'*' => return Err(RespError::InvalidMultibulkLength),
        Some(Err(_)) if kind == b':' => return Err(RespError::InvalidInteger),
        Some(result) => result?,
    };
    match kind {
        b'+' => Ok(Some((RespValue::Simple(line.to_vec()), next))),
        b'-' => Ok(Some((RespValue::Error(line.to_vec()), next))),
        b':' => {
            let value = parse_integer(line).ok_or(RespError::InvalidInteger)?;
            Ok(Some((RespValue::Integer(value), next)))
        }
        b'$' => match parse_integer(line) {
            Some(-1) => Ok(Some((RespValue::Bulk(None), next))),
            Some(len) if len >= 0 => {
                let len = len as u64;
                if len > limits.max_bulk_bytes as u64 {
                    return Err(RespError::BulkTooLarge {
                        len,
                        max: limits.max_bulk_bytes,
                    });
                }
                let end = next + len as usize;
                if buffer.len() < end + 2 {
                    return Ok(None);
                }
                if &buffer[end..end + 2] != b"\r\n" {
                    return Err(RespError::MissingCrlf);
                }
                Ok(Some((
                    RespValue::Bulk(Some(buffer[next..end].to_vec())),
                    end + 2,
                )))
            }
            _ => Err(RespError::InvalidBulkLength),
        },
        b'*' => match parse_integer(line) {
            Some(-1) => Ok(Some((RespValue::Array(None), next))),
            Some(count) if count >= 0 => {
                let count = count as u64;
                if count > limits.max_array_elements as u64 {
                    return Err(RespError::TooManyElements {
                        count,
                        max: limits.max_array_elements,
                    });
                }
                let mut items = Vec::with_capacity((count as usize).min(buffer.len() - next));
                let mut cursor = next;
                for _ in 0..count {
                    match parse_reply_at(buffer, cursor, limits, depth + 1)? {
                        None => return Ok(None),
                        Some((item, after)) => {
                            items.push(item);
                            cursor = after;
                        }
                    }
                }
                Ok(Some((RespValue::Array(Some(items)), cursor)))
            }
            _ => Err(RespError::InvalidMultibulkLength),
        },
        other => Err(RespError::UnexpectedReplyType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use tally_engine::kv::KvError;

    /// Commands as owned argument vectors.
    type Commands = Vec<Vec<Vec<u8>>>;

    /// Parses every complete command in `buffer` with a fresh parser.
    fn parse_all(buffer: &[u8]) -> Result<(Commands, usize), RespError> {
        let mut parser = RequestParser::new(RespLimits::default());
        let mut commands = Vec::new();
        let mut offset = 0;
        loop {
            match parser.parse(&buffer[offset..])? {
                ParseStatus::Complete { consumed } => {
                    commands.push(parser.args(&buffer[offset..]).map(<[u8]>::to_vec).collect());
                    offset += consumed;
                }
                ParseStatus::Incomplete => return Ok((commands, offset)),
            }
        }
    }

    /// Feeds `buffer` as a connection would: appending `chunk` bytes at a time and
    /// draining consumed bytes from the front.
    fn parse_streamed(
        buffer: &[u8],
        chunk_sizes: &mut dyn Iterator<Item = usize>,
    ) -> Result<Commands, RespError> {
        let mut parser = RequestParser::new(RespLimits::default());
        let mut pending: Vec<u8> = Vec::new();
        let mut fed = 0;
        let mut commands = Vec::new();
        while fed < buffer.len() {
            let n = chunk_sizes.next().unwrap_or(1).clamp(1, buffer.len() - fed);
            pending.extend_from_slice(&buffer[fed..fed + n]);
            fed += n;
            while let ParseStatus::Complete { consumed } = parser.parse(&pending)? {
                commands.push(parser.args(&pending).map(<[u8]>::to_vec).collect());
                pending.drain(..consumed);
            }
        }
        Ok(commands)
    }

    fn owned(args: &[&[u8]]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.to_vec()).collect()
    }

    #[test]
    fn array_request_roundtrips_including_binary_and_empty_arguments() {
        let args: [&[u8]; 4] = [b"SET", b"key", b"\r\n\0bin", b""];
        let mut wire = Vec::new();
        write_command(&mut wire, &args);
        let (commands, consumed) = parse_all(&wire).expect("parse");
        assert_eq!(commands, vec![owned(&args)]);
        assert_eq!(consumed, wire.len());
    }

    #[test]
    fn inline_commands_split_on_whitespace_and_skip_empty_lines() {
        let wire = b"\r\n\nPING\r\nSET  a   b\nGET a\r\n";
        let (commands, consumed) = parse_all(wire).expect("parse");
        assert_eq!(
            commands,
            vec![
                owned(&[b"PING"]),
                owned(&[b"SET", b"a", b"b"]),
                owned(&[b"GET", b"a"])
            ]
        );
        assert_eq!(consumed, wire.len());
    }

    #[test]
    fn empty_arrays_are_skipped() {
        let (commands, consumed) = parse_all(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n").expect("parse");
        assert_eq!(commands, vec![owned(&[b"PING"])]);
        assert_eq!(consumed, 23);
    }

    #[test]
    fn a_parser_is_between_commands_only_before_a_command_or_after_a_complete_one() {
        let mut wire = Vec::new();
        write_command(&mut wire, &[b"GET", b"key"]);
        let mut parser = RequestParser::new(RespLimits::default());
        assert!(parser.is_between_commands());
        for cut in 1..wire.len() {
            parser.reset();
            assert_eq!(parser.parse(&wire[..cut]), Ok(ParseStatus::Incomplete));
            // A cut inside the array header (`*2\r\n`, 4 bytes) keeps nothing; any later
            // cut keeps a partial command.
            assert_eq!(
                parser.is_between_commands(),
                cut < 4,
                "cut at {cut} of {wire:?}"
            );
            assert_eq!(
                parser.parse(&wire),
                Ok(ParseStatus::Complete {
                    consumed: wire.len()
                })
            );
            assert!(
                parser.is_between_commands(),
                "after the command cut at {cut}"
            );
        }
    }

    #[test]
    fn pipelined_requests_split_at_every_byte_boundary_parse_identically() {
        let mut wire = Vec::new();
        write_command(&mut wire, &[b"SET", b"k", b"value with spaces"]);
        wire.extend_from_slice(b"PING\r\n");
        write_command(&mut wire, &[b"MGET", b"a", b"b", b"c"]);
        write_command(&mut wire, &[b"GET", b""]);
        let (expected, _) = parse_all(&wire).expect("whole");
        assert_eq!(expected.len(), 4);
        for split in 0..=wire.len() {
            let mut sizes = [split, wire.len()].into_iter();
            assert_eq!(
                parse_streamed(&wire, &mut sizes).expect("split"),
                expected,
                "split {split}"
            );
        }
        assert_eq!(
            parse_streamed(&wire, &mut std::iter::repeat(1)).expect("bytewise"),
            expected
        );
    }

    #[test]
    fn incomplete_input_never_reports_a_command() {
        let mut wire = Vec::new();
        write_command(&mut wire, &[b"SET", b"k", b"v"]);
        for cut in 0..wire.len() {
            let mut parser = RequestParser::new(RespLimits::default());
            assert_eq!(
                parser.parse(&wire[..cut]),
                Ok(ParseStatus::Incomplete),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn malformed_requests_give_redis_protocol_errors() {
        let cases: &[(&[u8], RespError)] = &[
            (b"*x\r\n", RespError::InvalidMultibulkLength),
            (b"*1\r\n:5\r\n", RespError::ExpectedBulk { got: b':' }),
            (b"*1\r\n$-1\r\n", RespError::InvalidBulkLength),
            (b"*1\r\n$abc\r\n", RespError::InvalidBulkLength),
            (b"*1\r\n$1\r\nab\r\n", RespError::MissingCrlf),
            (b"*1\r\n$1\rxa\r\n", RespError::InvalidBulkLength),
            (
                b"*99999999999999999999999999999999999\r\n",
                RespError::InvalidMultibulkLength,
            ),
        ];
        for (wire, expected) in cases {
            let mut parser = RequestParser::new(RespLimits::default());
            assert_eq!(
                parser.parse(wire).as_ref(),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        assert_eq!(
            RespError::ExpectedBulk { got: b':' }.error_reply(),
            "ERR Protocol error: expected '$', got ':'"
        );
        let mut out = Vec::new();
        write_error(&mut out, &RespError::InvalidMultibulkLength.error_reply());
        assert_eq!(out, b"-ERR Protocol error: invalid multibulk length\r\n");
    }

    #[test]
    fn oversized_announcements_are_refused_before_the_bytes_arrive() {
        let limits = RespLimits {
            max_bulk_bytes: 10,
            max_array_elements: 3,
            max_inline_bytes: 16,
        };
        let mut parser = RequestParser::new(limits);
        assert_eq!(
            parser.parse(b"*4\r\n"),
            Err(RespError::TooManyElements { count: 4, max: 3 })
        );
        let mut parser = RequestParser::new(limits);
        assert_eq!(
            parser.parse(b"*1\r\n$11\r\n"),
            Err(RespError::BulkTooLarge { len: 11, max: 10 })
        );
        let mut parser = RequestParser::new(limits);
        assert_eq!(
            parser.parse(b"this inline line never ends"),
            Err(RespError::InlineTooLong { max: 16 })
        );
        // A huge element count under the limit does not reserve memory for it up front.
        let mut parser = RequestParser::new(RespLimits::default());
        assert_eq!(parser.parse(b"*1000000\r\n"), Ok(ParseStatus::Incomplete));
        assert!(parser.spans.capacity() < 1000);
    }

    #[test]
    fn replies_roundtrip_through_the_encoder_and_parser() {
        let value = RespValue::Array(Some(vec![
            RespValue::Simple(b"OK".to_vec()),
            RespValue::Error(b"NOTLEADER 127.0.0.1:6379".to_vec()),
            RespValue::Integer(-42),
            RespValue::Bulk(Some(b"a\r\nb".to_vec())),
            RespValue::Bulk(None),
            RespValue::Array(None),
            RespValue::Array(Some(vec![])),
        ]));
        let mut out = Vec::new();
        value.write(&mut out);
        let limits = RespLimits::default();
        assert_eq!(parse_reply(&out, &limits), Ok(Some((value, out.len()))));
        for cut in 0..out.len() {
            assert_eq!(parse_reply(&out[..cut], &limits), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn kv_responses_encode_as_redis_would() {
        let cases = [
            (KvResponse::Ok, &b"+OK\r\n"[..]),
            (KvResponse::Integer(3), b":3\r\n"),
            (KvResponse::Bulk(None), b"$-1\r\n"),
            (
                KvResponse::Bulk(Some(Bytes::from_static(b"hi"))),
                b"$2\r\nhi\r\n",
            ),
            (
                KvResponse::Array(vec![Some(Bytes::from_static(b"a")), None]),
                b"*2\r\n$1\r\na\r\n$-1\r\n",
            ),
            (
                KvResponse::Error(KvError::NotAnInteger),
                b"-ERR value is not an integer or out of range\r\n",
            ),
        ];
        for (response, expected) in cases {
            let mut out = Vec::new();
            write_kv_response(&mut out, &response);
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn error_and_simple_strings_cannot_inject_line_breaks() {
        let mut out = Vec::new();
        write_error(&mut out, "ERR bad\r\n+OK");
        write_simple_string(&mut out, "a\nb");
        assert_eq!(out, b"-ERR bad  +OK\r\n+a b\r\n");
    }

    #[test]
    fn integer_edges_encode_as_the_formatter_would() {
        for value in [0, 1, -1, 9, 10, -10, 99, 100, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            write_integer(&mut out, value);
            assert_eq!(out, format!(":{value}\r\n").into_bytes());
        }
        let mut out = Vec::new();
        write_array_header(&mut out, usize::MAX);
        assert_eq!(out, format!("*{}\r\n", usize::MAX).into_bytes());
    }

    #[test]
    fn length_lines_past_the_fast_path_keep_the_general_rules() {
        let limits = RespLimits::default();
        let cases: &[&[u8]] = &[
            // 18 digits (fast path's most), 19 digits (general path), leading zeros.
            b"*1\r\n$000000000000000003\r\nabc\r\n",
            b"*1\r\n$0000000000000000003\r\nabc\r\n",
            b"*01\r\n$3\r\nabc\r\n",
            b"*-1\r\n*1\r\n$1\r\na\r\n",
            b"*1\r\n$-0\r\n\r\n",
            b"*1\r\n$3\r\r\nabc\r\n",
            b"*1\r\n$99999999999999999999\r\n",
            // 19 digits past i64: not an integer (not "too large").
            b"*1\r\n$9223372036854775808\r\n",
            b"*9223372036854775808\r\n",
            b"*2\r\n$1\r\na\r\n:1\r\n",
            b"*3\r\n$1\r\na\r\n",
        ];
        for wire in cases {
            assert_eq!(
                parse_all_until_error(wire, limits),
                reference_parse_all(wire, limits),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        // The 19-digit length is refused as too large, not misread.
        let (commands, _, error) = parse_all_until_error(b"*1\r\n$1000000000000000000\r\n", limits);
        assert!(commands.is_empty());
        assert_eq!(
            error,
            Some(RespError::BulkTooLarge {
                len: 1_000_000_000_000_000_000,
                max: limits.max_bulk_bytes
            })
        );
    }

    #[test]
    fn many_blank_lines_are_skipped_without_recursion() {
        let mut wire = b"\r\n".repeat(30_000);
        wire.extend_from_slice(b"PING\r\n");
        let (commands, consumed) = parse_all(&wire).expect("parse");
        assert_eq!(commands, vec![owned(&[b"PING"])]);
        assert_eq!(consumed, wire.len());
    }

    #[test]
    fn deeply_nested_reply_is_refused_not_recursed() {
        let wire = b"*1\r\n".repeat(100);
        assert_eq!(
            parse_reply(&wire, &RespLimits::default()),
            Err(RespError::NestingTooDeep)
        );
    }

    /// The request parser as it was before its fast paths (`whole_array`,
    /// `digits_line`): the model every input must parse the same with.
    mod reference {
        use super::super::{parse_integer, RespError, RespLimits, MAX_LENGTH_LINE_BYTES};
        use std::ops::Range;

        pub(super) enum Status {
            Complete(usize),
            Incomplete,
        }

        pub(super) struct Parser {
            limits: RespLimits,
            /// Elements of the array in progress (None: at the start of a command).
            elements: Option<usize>,
            position: usize,
            pub(super) spans: Vec<Range<usize>>,
        }

        impl Parser {
            pub(super) fn new(limits: RespLimits) -> Parser {
                Parser {
                    limits,
                    elements: None,
                    position: 0,
                    spans: Vec::new(),
                }
            }

            pub(super) fn parse(&mut self, buffer: &[u8]) -> Result<Status, RespError> {
                loop {
                    let Some(elements) = self.elements else {
                        if self.position == 0 {
                            self.spans.clear();
                        }
                        let Some(&first) = buffer.get(self.position) else {
                            return Ok(Status::Incomplete);
                        };
                        if first != b'*' {
                            match self.inline(buffer)? {
                                Some(Some(status)) => return Ok(status),
                                Some(None) => continue,
                                None => return Ok(Status::Incomplete),
                            }
                        }
                        let Some((count, next)) = self.length_line(buffer) else {
                            return Ok(Status::Incomplete);
                        };
                        let count = count.ok_or(RespError::InvalidMultibulkLength)?;
                        self.position = next;
                        if count <= 0 {
                            continue;
                        }
                        let count = count as u64;
                        if count > self.limits.max_array_elements as u64 {
                            return Err(RespError::TooManyElements {
                                count,
                                max: self.limits.max_array_elements,
                            });
                        }
                        self.spans.clear();
                        self.elements = Some(count as usize);
                        continue;
                    };
                    while self.spans.len() < elements {
                        let Some(&first) = buffer.get(self.position) else {
                            return Ok(Status::Incomplete);
                        };
                        if first != b'$' {
                            return Err(RespError::ExpectedBulk { got: first });
                        }
                        let Some((len, data_start)) = self.length_line(buffer) else {
                            return Ok(Status::Incomplete);
                        };
                        let len = match len {
                            Some(len) if len >= 0 => len as u64,
                            _ => return Err(RespError::InvalidBulkLength),
                        };
                        if len > self.limits.max_bulk_bytes as u64 {
                            return Err(RespError::BulkTooLarge {
                                len,
                                max: self.limits.max_bulk_bytes,
                            });
                        }
                        let data_end = data_start + len as usize;
                        if buffer.len() < data_end + 2 {
                            return Ok(Status::Incomplete);
                        }
                        if &buffer[data_end..data_end + 2] != b"\r\n" {
                            return Err(RespError::MissingCrlf);
                        }
                        self.spans.push(data_start..data_end);
                        self.position = data_end + 2;
                    }
                    return Ok(self.complete());
                }
            }

            fn complete(&mut self) -> Status {
                let consumed = self.position;
                self.elements = None;
                self.position = 0;
                Status::Complete(consumed)
            }

            fn length_line(&self, buffer: &[u8]) -> Option<(Option<i64>, usize)> {
                let start = self.position + 1;
                let window_end = buffer.len().min(start + MAX_LENGTH_LINE_BYTES);
                let window = &buffer[start.min(window_end)..window_end];
                match window.iter().position(|&b| b == b'\r') {
                    Some(cr) => {
                        let after_cr = start + cr + 1;
                        match buffer.get(after_cr) {
                            None => None,
                            Some(b'\n') => Some((parse_integer(&window[..cr]), after_cr + 1)),
                            Some(_) => Some((None, after_cr)),
                        }
                    }
                    None if window.len() >= MAX_LENGTH_LINE_BYTES => Some((None, window_end)),
                    None => None,
                }
            }

            /// `None`: incomplete; `Some(None)`: an empty line, skipped.
            fn inline(&mut self, buffer: &[u8]) -> Result<Option<Option<Status>>, RespError> {
                let start = self.position;
                let max = self.limits.max_inline_bytes;
                let window_end = buffer.len().min(start + max);
                let Some(newline) = buffer[start..window_end].iter().position(|&b| b == b'\n')
                else {
                    if buffer.len() - start >= max {
                        return Err(RespError::InlineTooLong { max });
                    }
                    return Ok(None);
                };
                let line_end = start + newline;
                let mut content_end = line_end;
                if content_end > start && buffer[content_end - 1] == b'\r' {
                    content_end -= 1;
                }
                self.spans.clear();
                let mut cursor = start;
                while cursor < content_end {
                    while cursor < content_end && buffer[cursor].is_ascii_whitespace() {
                        cursor += 1;
                    }
                    let word_start = cursor;
                    while cursor < content_end && !buffer[cursor].is_ascii_whitespace() {
                        cursor += 1;
                    }
                    if cursor > word_start {
                        self.spans.push(word_start..cursor);
                    }
                }
                self.position = line_end + 1;
                if self.spans.is_empty() {
                    return Ok(Some(None));
                }
                Ok(Some(Some(self.complete())))
            }
        }
    }

    /// Every complete command in `buffer` by the reference parser, then its error if
    /// it stopped on one (commands parsed before an error are kept, as a connection
    /// answers them).
    fn reference_parse_all(
        buffer: &[u8],
        limits: RespLimits,
    ) -> (Commands, usize, Option<RespError>) {
        let mut parser = reference::Parser::new(limits);
        let mut commands = Vec::new();
        let mut offset = 0;
        loop {
            match parser.parse(&buffer[offset..]) {
                Ok(reference::Status::Complete(consumed)) => {
                    let base = &buffer[offset..];
                    commands.push(
                        parser
                            .spans
                            .iter()
                            .map(|s| base[s.clone()].to_vec())
                            .collect(),
                    );
                    offset += consumed;
                }
                Ok(reference::Status::Incomplete) => return (commands, offset, None),
                Err(error) => return (commands, offset, Some(error)),
            }
        }
    }

    /// [`reference_parse_all`] with the parser under test.
    fn parse_all_until_error(
        buffer: &[u8],
        limits: RespLimits,
    ) -> (Commands, usize, Option<RespError>) {
        let mut parser = RequestParser::new(limits);
        let mut commands = Vec::new();
        let mut offset = 0;
        loop {
            match parser.parse(&buffer[offset..]) {
                Ok(ParseStatus::Complete { consumed }) => {
                    commands.push(parser.args(&buffer[offset..]).map(<[u8]>::to_vec).collect());
                    offset += consumed;
                }
                Ok(ParseStatus::Incomplete) => return (commands, offset, None),
                Err(error) => return (commands, offset, Some(error)),
            }
        }
    }

    /// Feeds `buffer` in the given pieces as a connection does (append, parse every
    /// complete command, drain): the commands and the error it stopped on.
    fn parse_split_until_error(
        buffer: &[u8],
        limits: RespLimits,
        cuts: &[usize],
    ) -> (Commands, Option<RespError>) {
        let mut parser = RequestParser::new(limits);
        let mut pending: Vec<u8> = Vec::new();
        let mut commands = Vec::new();
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (buffer.len() + 1)).collect();
        bounds.push(buffer.len());
        bounds.sort_unstable();
        let mut fed = 0;
        for bound in bounds {
            pending.extend_from_slice(&buffer[fed..bound]);
            fed = bound;
            loop {
                match parser.parse(&pending) {
                    Ok(ParseStatus::Complete { consumed }) => {
                        commands.push(parser.args(&pending).map(<[u8]>::to_vec).collect());
                        pending.drain(..consumed);
                    }
                    Ok(ParseStatus::Incomplete) => break,
                    Err(error) => return (commands, Some(error)),
                }
            }
        }
        (commands, None)
    }

    /// Small limits, so the generated inputs reach every bound.
    fn small_limits() -> RespLimits {
        RespLimits {
            max_bulk_bytes: 40,
            max_array_elements: 6,
            max_inline_bytes: 24,
        }
    }

    /// Pieces of valid and broken requests: headers with every kind of length, data,
    /// CRLF halves, inline words.
    fn protocol_piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"*".to_vec()),
            Just(b"$".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"-".to_vec()),
            Just(b"+".to_vec()),
            Just(b" ".to_vec()),
            Just(b"SET".to_vec()),
            Just(b"GET key".to_vec()),
            (0u64..12).prop_map(|n| n.to_string().into_bytes()),
            (0u64..u64::MAX).prop_map(|n| n.to_string().into_bytes()),
            Just(b"9223372036854775807".to_vec()),
            Just(b"9223372036854775808".to_vec()),
            Just(b"000000000000000000000000000000003".to_vec()),
            prop::collection::vec(any::<u8>(), 0..6),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..4).prop_map(
                |args| {
                    let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                    let mut wire = Vec::new();
                    write_command(&mut wire, &args);
                    wire
                }
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn any_input_parses_like_the_reference_parser_in_one_piece_or_split_anywhere(
            pieces in prop::collection::vec(protocol_piece(), 0..24),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
            small in any::<bool>(),
        ) {
            let wire: Vec<u8> = pieces.concat();
            let limits = if small { small_limits() } else { RespLimits::default() };
            let (expected, expected_offset, expected_error) = reference_parse_all(&wire, limits);
            let (commands, offset, error) = parse_all_until_error(&wire, limits);
            prop_assert_eq!(&commands, &expected);
            prop_assert_eq!(offset, expected_offset);
            prop_assert_eq!(&error, &expected_error);
            // Arbitrary splits: same commands, same error (an error is found as soon as
            // its bytes arrived, so a split cannot change which one).
            let (split_commands, split_error) = parse_split_until_error(&wire, limits, &cuts);
            prop_assert_eq!(&split_commands, &expected);
            prop_assert_eq!(&split_error, &expected_error);
        }

        #[test]
        fn valid_pipelines_split_at_arbitrary_points_parse_as_in_one_piece(
            commands in prop::collection::vec(
                prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..6),
                1..12,
            ),
            inline_every in 0usize..4,
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut wire = Vec::new();
            for (i, command) in commands.iter().enumerate() {
                if inline_every > 0 && i % (inline_every + 1) == 0 {
                    wire.extend_from_slice(b"\r\n*0\r\nPING  x\r\n");
                }
                let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
                write_command(&mut wire, &args);
            }
            let (whole, consumed, error) = parse_all_until_error(&wire, RespLimits::default());
            prop_assert_eq!(error, None);
            prop_assert_eq!(consumed, wire.len());
            let (split, split_error) = parse_split_until_error(&wire, RespLimits::default(), &cuts);
            prop_assert_eq!(split_error, None);
            prop_assert_eq!(&split, &whole);
            let only_arrays: Commands =
                whole.iter().filter(|c| c[..] != [b"PING".to_vec(), b"x".to_vec()]).cloned().collect();
            prop_assert_eq!(only_arrays, commands);
        }

        #[test]
        fn integers_and_lengths_encode_as_the_formatter_would(value in any::<i64>(), len in 0usize..3000) {
            let mut out = Vec::new();
            write_integer(&mut out, value);
            prop_assert_eq!(out, format!(":{value}\r\n").into_bytes());
            let bytes = vec![b'x'; len];
            let mut out = Vec::new();
            write_bulk(&mut out, &bytes);
            let mut expected = format!("${len}\r\n").into_bytes();
            expected.extend_from_slice(&bytes);
            expected.extend_from_slice(b"\r\n");
            prop_assert_eq!(out, expected);
            let mut out = Vec::new();
            write_array_header(&mut out, len);
            write_map_header(&mut out, len, Protocol::Resp3);
            write_verbatim(&mut out, &bytes[..len.min(10)], Protocol::Resp3);
            let mut expected = format!("*{len}\r\n%{len}\r\n={}\r\ntxt:", len.min(10) + 4).into_bytes();
            expected.extend_from_slice(&bytes[..len.min(10)]);
            expected.extend_from_slice(b"\r\n");
            prop_assert_eq!(out, expected);
        }

        #[test]
        fn random_bytes_never_panic_the_request_parser(
            bytes in prop::collection::vec(any::<u8>(), 0..256),
            chunk in 1usize..17,
        ) {
            let _ = parse_all(&bytes);
            let _ = parse_streamed(&bytes, &mut std::iter::repeat(chunk));
            let _ = parse_reply(&bytes, &RespLimits::default());
        }

        #[test]
        fn random_protocolish_bytes_never_panic(
            pieces in prop::collection::vec(
                prop_oneof![
                    Just(b"*".to_vec()), Just(b"$".to_vec()), Just(b"\r\n".to_vec()),
                    Just(b"-1".to_vec()), Just(b"3".to_vec()), Just(b"abc".to_vec()),
                    Just(b":".to_vec()), Just(b"+".to_vec()),
                ],
                0..40,
            ),
        ) {
            let bytes: Vec<u8> = pieces.concat();
            let _ = parse_all(&bytes);
            let _ = parse_reply(&bytes, &RespLimits::default());
        }

        #[test]
        fn random_commands_roundtrip_through_any_chunking(
            commands in prop::collection::vec(
                prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 1..5),
                1..8,
            ),
            chunks in prop::collection::vec(1usize..9, 1..64),
        ) {
            let mut wire = Vec::new();
            for command in &commands {
                let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
                write_command(&mut wire, &args);
            }
            let parsed = parse_streamed(&wire, &mut chunks.iter().copied().cycle()).expect("valid");
            prop_assert_eq!(parsed, commands);
        }
    }
}
