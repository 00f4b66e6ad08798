//! Reads back a `history.txt` (the lines of [`tally_engine::lincheck::describe`]) so a
//! failed run's history can be checked again (`tally-nemesis --check-history FILE`).
//!
//! Times in the file have microsecond precision; rounding only merges instants, so a
//! re-check is at most more lenient than the original, never stricter.

use tally_engine::lincheck::{Entry, History, Op, Outcome};

/// Why a line is not a history entry.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
}

/// Parses every non-empty line.
pub fn parse_history(text: &str) -> Result<History, ParseError> {
    let mut history = History::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let entry = parse_line(line).map_err(|reason| ParseError {
            line: number + 1,
            reason,
        })?;
        history.push(entry);
    }
    Ok(history)
}

fn seconds_to_ns(text: &str) -> Option<u64> {
    let seconds: f64 = text.strip_suffix('s')?.parse().ok()?;
    Some((seconds * 1e9).round() as u64)
}

/// `"..."` strings and bare words, in order.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            out.push(quoted[..end].to_string());
            rest = quoted.get(end + 1..).unwrap_or("").trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            out.push(rest[..end].to_string());
            rest = rest[end..].trim_start();
        }
    }
    out
}

fn parse_line(line: &str) -> Result<Entry, &'static str> {
    let rest = line.split_once(" client ").ok_or("no client")?.1;
    let (client, rest) = rest.split_once(" [").ok_or("no interval")?;
    let (interval, rest) = rest.split_once("] ").ok_or("no interval end")?;
    let (invoke, complete) = interval.split_once("..").ok_or("bad interval")?;
    let (op_text, outcome_text) = rest.rsplit_once(" -> ").ok_or("no outcome")?;
    let words = tokens(op_text);
    let bytes = |i: usize| {
        words
            .get(i)
            .map(|w| w.as_bytes().to_vec())
            .ok_or("missing argument")
    };
    let op = match words.first().map(String::as_str) {
        Some("GET") => Op::Get { key: bytes(1)? },
        Some("SET") => Op::Set {
            key: bytes(1)?,
            value: bytes(2)?,
        },
        Some("INCR") => Op::Incr { key: bytes(1)? },
        Some("CAS") => Op::Cas {
            key: bytes(1)?,
            expected: bytes(2)?,
            new: bytes(3)?,
        },
        _ => return Err("unknown operation"),
    };
    let outcome = match (&op, outcome_text) {
        (_, "unknown") => Outcome::Unknown,
        (_, "error") => Outcome::Error,
        (Op::Set { .. }, "OK") => Outcome::Ok,
        (Op::Get { .. }, "(absent)") => Outcome::Value(None),
        (Op::Get { .. }, quoted) => {
            Outcome::Value(Some(quoted.trim_matches('"').as_bytes().to_vec()))
        }
        (Op::Cas { .. }, flag) => Outcome::Swapped(flag == "1"),
        (Op::Incr { .. }, n) => Outcome::Integer(n.parse().map_err(|_| "bad integer")?),
        _ => return Err("outcome does not fit the operation"),
    };
    Ok(Entry {
        client: client.parse().map_err(|_| "bad client")?,
        op,
        invoke_ns: seconds_to_ns(invoke).ok_or("bad invoke time")?,
        complete_ns: seconds_to_ns(complete).ok_or("bad complete time")?,
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_engine::lincheck::describe;

    #[test]
    fn described_entries_read_back_the_same() {
        let mut history = History::new();
        let entries = [
            (
                Op::Get {
                    key: b"r0".to_vec(),
                },
                Outcome::Value(Some(b"c1-2".to_vec())),
            ),
            (
                Op::Get {
                    key: b"r1".to_vec(),
                },
                Outcome::Value(None),
            ),
            (
                Op::Set {
                    key: b"r0".to_vec(),
                    value: b"c1-3".to_vec(),
                },
                Outcome::Ok,
            ),
            (
                Op::Incr {
                    key: b"n0".to_vec(),
                },
                Outcome::Integer(41),
            ),
            (
                Op::Cas {
                    key: b"r0".to_vec(),
                    expected: b"a".to_vec(),
                    new: b"b".to_vec(),
                },
                Outcome::Swapped(true),
            ),
            (
                Op::Cas {
                    key: b"r0".to_vec(),
                    expected: b"a".to_vec(),
                    new: b"b".to_vec(),
                },
                Outcome::Unknown,
            ),
        ];
        for (i, (op, outcome)) in entries.into_iter().enumerate() {
            history.push(Entry {
                client: i as u64,
                op,
                invoke_ns: 1_000_000 * i as u64,
                complete_ns: 1_000_000 * i as u64 + 2_000,
                outcome,
            });
        }
        let text: String = (0..history.len())
            .map(|i| describe(&history, i) + "\n")
            .collect();
        assert_eq!(parse_history(&text).expect("parses"), history);
    }
}
