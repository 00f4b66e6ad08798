//! Redis argument vectors → KV commands: the RESP port's half of the command model.
//!
//! The engine's KV state machine knows commands ([`Command`]) and their binary log
//! encoding; how a Redis client spells them (`SET k v`, case-insensitive names, arity
//! and syntax errors with Redis's error text) belongs to the port that speaks RESP.

use tally_engine::kv::Command;

/// Why a client's argument vector is not a KV command. `Display` is the Redis error line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandParseError {
    /// The first argument names no KV command (the server may still know it: PING, INFO).
    #[error("ERR unknown command '{0}'")]
    UnknownCommand(String),
    /// Empty argument vector.
    #[error("ERR empty command")]
    Empty,
    /// Wrong number of arguments for a known command.
    #[error("ERR wrong number of arguments for '{0}' command")]
    WrongArity(&'static str),
    /// Options Tally does not support (for example `SET k v EX 10`).
    #[error("ERR syntax error")]
    Syntax,
}

/// Parses a Redis-style argument vector (`[b"SET", b"k", b"v"]`, name case-insensitive)
/// into a [`Command`] borrowing from `args`.
pub fn parse_command_args<'a>(args: &[&'a [u8]]) -> Result<Command<'a>, CommandParseError> {
    let (name, rest) = args.split_first().ok_or(CommandParseError::Empty)?;
    let is = |expected: &str| name.eq_ignore_ascii_case(expected.as_bytes());
    if is("set") {
        match *rest {
            [key, value] => Ok(Command::Set { key, value }),
            [_, _, ..] => Err(CommandParseError::Syntax),
            _ => Err(CommandParseError::WrongArity("set")),
        }
    } else if is("get") {
        match *rest {
            [key] => Ok(Command::Get { key }),
            _ => Err(CommandParseError::WrongArity("get")),
        }
    } else if is("incr") {
        match *rest {
            [key] => Ok(Command::Incr { key }),
            _ => Err(CommandParseError::WrongArity("incr")),
        }
    } else if is("del") || is("exists") || is("mget") {
        if rest.is_empty() {
            let which = if is("del") {
                "del"
            } else if is("exists") {
                "exists"
            } else {
                "mget"
            };
            return Err(CommandParseError::WrongArity(which));
        }
        let keys = rest.to_vec();
        Ok(if is("del") {
            Command::Del { keys }
        } else if is("exists") {
            Command::Exists { keys }
        } else {
            Command::MGet { keys }
        })
    } else if is("mset") {
        if rest.is_empty() || rest.len() % 2 != 0 {
            return Err(CommandParseError::WrongArity("mset"));
        }
        let pairs = rest.chunks_exact(2).map(|p| (p[0], p[1])).collect();
        Ok(Command::MSet { pairs })
    } else if is("cas") {
        match *rest {
            [key, expected, new] => Ok(Command::Cas { key, expected, new }),
            _ => Err(CommandParseError::WrongArity("cas")),
        }
    } else {
        Err(CommandParseError::UnknownCommand(
            String::from_utf8_lossy(name).into_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_command_args_understands_redis_argument_vectors() {
        let parse = |args: &[&'static [u8]]| parse_command_args(args);
        assert_eq!(
            parse(&[b"sEt", b"k", b"v"]),
            Ok(Command::Set {
                key: b"k",
                value: b"v"
            })
        );
        assert_eq!(
            parse(&[b"SET", b"k", b"v", b"EX", b"1"]),
            Err(CommandParseError::Syntax)
        );
        assert_eq!(parse(&[b"GET"]), Err(CommandParseError::WrongArity("get")));
        assert_eq!(
            parse(&[b"mset", b"a", b"1", b"b"]),
            Err(CommandParseError::WrongArity("mset"))
        );
        assert_eq!(
            parse(&[b"MSET", b"a", b"1", b"b", b"2"]),
            Ok(Command::MSet {
                pairs: vec![(b"a", b"1"), (b"b", b"2")]
            })
        );
        assert_eq!(parse(&[b"DEL"]), Err(CommandParseError::WrongArity("del")));
        assert_eq!(
            parse(&[b"cas", b"k", b"e", b"n"]),
            Ok(Command::Cas {
                key: b"k",
                expected: b"e",
                new: b"n"
            })
        );
        assert_eq!(
            parse(&[b"PING"]),
            Err(CommandParseError::UnknownCommand("PING".to_string()))
        );
        assert_eq!(
            CommandParseError::WrongArity("get").to_string(),
            "ERR wrong number of arguments for 'get' command"
        );
    }
}
