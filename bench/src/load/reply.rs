//! Allocation-free, incremental scanning of RESP2 replies for the load generator.
//!
//! Why not `tally_net::resp::parse_reply`: that one builds owned values (a `Vec` per
//! reply); the hot loop only needs to know what kind of reply arrived and how long a
//! bulk string is, and must not allocate per operation. Replies borrow from the caller's
//! read buffer. Every announced length is bounded before the scanner waits for it.

use thiserror::Error;

/// What a complete reply was, borrowing text from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `+text`
    Simple(&'a [u8]),
    /// `-text`
    Error(&'a [u8]),
    /// `:n`
    Integer(i64),
    /// `$n ...`: the payload, or `None` for `$-1`.
    Bulk(Option<&'a [u8]>),
    /// `*n ...` (skipped whole; the load generator never expects one).
    Array,
}

/// A reply stream that breaks RESP2: the connection's position is lost and it must close.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    #[error("reply starts with unexpected byte 0x{0:02x}")]
    UnknownType(u8),
    #[error("malformed length or integer line")]
    BadNumber,
    #[error("reply announces {announced} bytes, more than the limit of {max}")]
    TooLarge { announced: u64, max: usize },
    #[error("status line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("bulk string not terminated by CRLF")]
    MissingCrlf,
    #[error("arrays nested deeper than {0}")]
    TooDeep(usize),
}

/// Longest `+`/`-` line accepted (Redis error texts are short; a redirect holds an addr).
pub const MAX_LINE_BYTES: usize = 64 << 10;
const MAX_NESTING: usize = 8;
const MAX_ARRAY_ELEMENTS: u64 = 1 << 20;

/// Scans one reply at the front of `buffer`. `Ok(None)`: more bytes needed.
/// `max_bulk_bytes` bounds a bulk string so a hostile length cannot make the caller
/// buffer without limit.
pub fn scan_reply(
    buffer: &[u8],
    max_bulk_bytes: usize,
) -> Result<Option<(Reply<'_>, usize)>, ReplyError> {
    scan_at(buffer, 0, max_bulk_bytes, 0)
}

fn find_line(buffer: &[u8], start: usize, max_bytes: usize) -> Result<Option<usize>, ReplyError> {
    let window_end = buffer.len().min(start.saturating_add(max_bytes + 2));
    let Some(window) = buffer.get(start..window_end) else {
        return Ok(None);
    };
    match window.windows(2).position(|pair| pair == b"\r\n") {
        Some(offset) => Ok(Some(start + offset)),
        None if window.len() >= max_bytes + 2 => Err(ReplyError::LineTooLong(max_bytes)),
        None => Ok(None),
    }
}

fn parse_decimal(digits: &[u8]) -> Result<i64, ReplyError> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 {
        return Err(ReplyError::BadNumber);
    }
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return Err(ReplyError::BadNumber);
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(digit - b'0')))
            .ok_or(ReplyError::BadNumber)?;
    }
    Ok(if negative { -value } else { value })
}

fn scan_at(
    buffer: &[u8],
    start: usize,
    max_bulk_bytes: usize,
    depth: usize,
) -> Result<Option<(Reply<'_>, usize)>, ReplyError> {
    if depth > MAX_NESTING {
        return Err(ReplyError::TooDeep(MAX_NESTING));
    }
    let Some(&kind) = buffer.get(start) else {
        return Ok(None);
    };
    let line_limit = match kind {
        b'+' | b'-' => MAX_LINE_BYTES,
        b':' | b'$' | b'*' => 21,
        other => return Err(ReplyError::UnknownType(other)),
    };
    let Some(line_end) = find_line(buffer, start + 1, line_limit)? else {
        return Ok(None);
    };
    let line = &buffer[start + 1..line_end];
    let after_line = line_end + 2;
    match kind {
        b'+' => Ok(Some((Reply::Simple(line), after_line))),
        b'-' => Ok(Some((Reply::Error(line), after_line))),
        b':' => Ok(Some((Reply::Integer(parse_decimal(line)?), after_line))),
        b'$' => {
            let announced = parse_decimal(line)?;
            if announced == -1 {
                return Ok(Some((Reply::Bulk(None), after_line)));
            }
            let length = u64::try_from(announced).map_err(|_| ReplyError::BadNumber)?;
            if length > max_bulk_bytes as u64 {
                return Err(ReplyError::TooLarge {
                    announced: length,
                    max: max_bulk_bytes,
                });
            }
            // Bounded above by max_bulk_bytes, so the cast and the additions fit.
            let payload_end = after_line + length as usize;
            if buffer.len() < payload_end + 2 {
                return Ok(None);
            }
            if &buffer[payload_end..payload_end + 2] != b"\r\n" {
                return Err(ReplyError::MissingCrlf);
            }
            Ok(Some((
                Reply::Bulk(Some(&buffer[after_line..payload_end])),
                payload_end + 2,
            )))
        }
        _ => {
            let announced = parse_decimal(line)?;
            if announced == -1 {
                return Ok(Some((Reply::Array, after_line)));
            }
            let count = u64::try_from(announced).map_err(|_| ReplyError::BadNumber)?;
            if count > MAX_ARRAY_ELEMENTS {
                return Err(ReplyError::TooLarge {
                    announced: count,
                    max: MAX_ARRAY_ELEMENTS as usize,
                });
            }
            let mut position = after_line;
            for _ in 0..count {
                match scan_at(buffer, position, max_bulk_bytes, depth + 1)? {
                    Some((_, next)) => position = next,
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array, position)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] =
        b"+OK\r\n-NOTLEADER 127.0.0.1:7001\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*2\r\n$1\r\na\r\n:1\r\n";

    fn scan_all(buffer: &[u8]) -> Vec<Reply<'_>> {
        let mut position = 0;
        let mut replies = Vec::new();
        while let Some((reply, used)) = scan_reply(&buffer[position..], 1024).unwrap() {
            replies.push(reply);
            position += used;
        }
        assert_eq!(position, buffer.len(), "every byte belongs to a reply");
        replies
    }

    #[test]
    fn pipelined_stream_of_every_reply_kind_scans_in_order() {
        assert_eq!(
            scan_all(STREAM),
            vec![
                Reply::Simple(b"OK"),
                Reply::Error(b"NOTLEADER 127.0.0.1:7001"),
                Reply::Integer(42),
                Reply::Bulk(Some(b"hello")),
                Reply::Bulk(None),
                Reply::Array,
            ]
        );
    }

    #[test]
    fn every_split_point_yields_incomplete_then_the_same_reply() {
        for cut in 0..STREAM.len() {
            let head = &STREAM[..cut];
            let complete_in_head: usize = {
                let mut position = 0;
                while let Some((_, used)) = scan_reply(&head[position..], 1024).unwrap() {
                    position += used;
                }
                position
            };
            // Nothing past the last complete reply is misread as a reply.
            let mut joined = head[..complete_in_head].to_vec();
            joined.extend_from_slice(&STREAM[complete_in_head..]);
            assert_eq!(scan_all(&joined), scan_all(STREAM));
        }
    }

    #[test]
    fn oversized_bulk_is_refused_before_waiting_for_its_bytes() {
        assert_eq!(
            scan_reply(b"$999999\r\n", 100),
            Err(ReplyError::TooLarge {
                announced: 999_999,
                max: 100
            })
        );
    }

    #[test]
    fn garbage_is_a_protocol_error_not_a_panic() {
        assert_eq!(
            scan_reply(b"?x\r\n", 10),
            Err(ReplyError::UnknownType(b'?'))
        );
        assert_eq!(scan_reply(b":12a\r\n", 10), Err(ReplyError::BadNumber));
        assert_eq!(
            scan_reply(b"$2\r\nabcd\r\n", 10),
            Err(ReplyError::MissingCrlf)
        );
        assert_eq!(scan_reply(b"$-7\r\n", 10), Err(ReplyError::BadNumber));
        assert!(scan_reply(&[b'$'; 40], 10).is_err());
    }
}
