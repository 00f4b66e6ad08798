//! Redis argument vectors → KV commands: the RESP port's half of the command model,
//! and the command table `COMMAND COUNT/INFO/DOCS` report.
//!
//! The engine's KV state machine knows commands ([`Command`]) and their binary log
//! encoding; how a Redis client spells them (`SET k v EX 10`, case-insensitive names,
//! arity and syntax errors with Redis's error text) belongs to the port that speaks RESP.
//! Relative expiry times stay relative here: the state machine adds the entry's log
//! time, so every replica computes the same absolute time.

use tally_engine::kv::{
    parse_redis_integer, Command, ExpireCondition, Expiry, GetExTtl, SetCondition, SetOptions,
    SetTtl,
};

/// Why a client's argument vector is not a KV command. `Display` is the Redis error line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandParseError {
    /// The first argument names no KV command (the server may still know it: PING, INFO).
    /// `args` is Redis's quoted list of the first arguments.
    #[error("ERR unknown command '{name}', with args beginning with: {args}")]
    UnknownCommand {
        /// The command name as the client sent it.
        name: String,
        /// Redis's quoted list of the first arguments, for the error text.
        args: String,
    },
    /// Empty argument vector.
    #[error("ERR empty command")]
    Empty,
    /// Wrong number of arguments for a known command.
    #[error("ERR wrong number of arguments for '{0}' command")]
    WrongArity(&'static str),
    /// Options that do not go together or are not known.
    #[error("ERR syntax error")]
    Syntax,
    /// An argument that must be an integer.
    #[error("ERR value is not an integer or out of range")]
    NotAnInteger,
    /// An argument that must be a float.
    #[error("ERR value is not a valid float")]
    NotAFloat,
    /// A time to live that is not positive or overflows (names the command).
    #[error("ERR invalid expire time in '{0}' command")]
    InvalidExpireTime(&'static str),
    /// EXPIRE with an option it does not know.
    #[error("ERR Unsupported option {0}")]
    UnsupportedOption(String),
    /// Any other Redis error line (without `-`).
    #[error("{0}")]
    Other(&'static str),
}

impl CommandParseError {
    /// Redis's unknown-command error for `args` (name first): the name and the first
    /// arguments quoted, cut at 128 bytes as Redis does.
    pub fn unknown(args: &[&[u8]]) -> CommandParseError {
        let Some((name, rest)) = args.split_first() else {
            return CommandParseError::Empty;
        };
        let mut quoted = String::new();
        for arg in rest {
            if quoted.len() >= 128 {
                break;
            }
            let room = 128 - quoted.len();
            let shown = &arg[..arg.len().min(room)];
            quoted.push('\'');
            quoted.push_str(&String::from_utf8_lossy(shown));
            quoted.push_str("' ");
        }
        CommandParseError::UnknownCommand {
            name: String::from_utf8_lossy(&name[..name.len().min(128)]).into_owned(),
            args: quoted,
        }
    }
}

type Parsed<'a> = Result<Command<'a>, CommandParseError>;

fn integer(arg: &[u8]) -> Result<i64, CommandParseError> {
    parse_redis_integer(arg).ok_or(CommandParseError::NotAnInteger)
}

fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// A time to live given in seconds (`EX`, `EXAT`) or milliseconds, in milliseconds.
/// `positive`: Redis refuses 0 and negative values for SET/GETEX (not for EXPIRE).
fn ttl_ms(
    arg: &[u8],
    seconds: bool,
    positive: bool,
    command: &'static str,
) -> Result<i64, CommandParseError> {
    let value = integer(arg)?;
    if positive && value <= 0 {
        return Err(CommandParseError::InvalidExpireTime(command));
    }
    if seconds {
        value
            .checked_mul(1000)
            .ok_or(CommandParseError::InvalidExpireTime(command))
    } else {
        Ok(value)
    }
}

/// `EX`/`PX`/`EXAT`/`PXAT` and its value as an [`Expiry`], if `word` is one of them.
fn expiry_option(
    word: &[u8],
    value: Option<&&[u8]>,
    command: &'static str,
) -> Option<Result<Expiry, CommandParseError>> {
    let (seconds, absolute) = if is(word, "ex") {
        (true, false)
    } else if is(word, "px") {
        (false, false)
    } else if is(word, "exat") {
        (true, true)
    } else if is(word, "pxat") {
        (false, true)
    } else {
        return None;
    };
    let Some(value) = value else {
        return Some(Err(CommandParseError::Syntax));
    };
    Some(ttl_ms(value, seconds, true, command).map(|ms| {
        if absolute {
            Expiry::AtMs(ms)
        } else {
            Expiry::AfterMs(ms)
        }
    }))
}

/// Parses a Redis-style argument vector (`[b"SET", b"k", b"v"]`, name case-insensitive)
/// into a [`Command`] borrowing from `args`.
///
/// ```
/// use tally_engine::kv::Command;
/// use tally_net::commands::{parse_command_args, CommandParseError};
///
/// let args: [&[u8]; 3] = [b"set", b"k", b"v"];
/// assert_eq!(parse_command_args(&args), Ok(Command::Set { key: b"k", value: b"v" }));
///
/// let args: [&[u8]; 1] = [b"frobnicate"];
/// assert!(matches!(parse_command_args(&args), Err(CommandParseError::UnknownCommand { .. })));
/// ```
pub fn parse_command_args<'a>(args: &[&'a [u8]]) -> Parsed<'a> {
    let (name, rest) = args.split_first().ok_or(CommandParseError::Empty)?;
    let mut lower = [0u8; 16];
    if name.len() > lower.len() {
        return Err(CommandParseError::unknown(args));
    }
    // One pass, no `memcpy` call for a few bytes.
    for (lower, byte) in lower.iter_mut().zip(name.iter()) {
        *lower = byte.to_ascii_lowercase();
    }
    // `rest` stays borrowed: only commands whose `Command` owns a key list (DEL, EXISTS,
    // MGET, WATCH, MSET) allocate one.
    match &lower[..name.len()] {
        b"set" => parse_set(rest),
        b"get" => one_key(rest, "get").map(|key| Command::Get { key }),
        b"incr" => one_key(rest, "incr").map(|key| Command::Incr { key }),
        b"decr" => one_key(rest, "decr").map(|key| Command::IncrBy { key, delta: -1 }),
        b"incrby" => match *rest {
            [key, delta] => Ok(Command::IncrBy {
                key,
                delta: integer(delta)?,
            }),
            _ => Err(CommandParseError::WrongArity("incrby")),
        },
        b"decrby" => match *rest {
            [key, delta] => Ok(Command::IncrBy {
                key,
                delta: integer(delta)?
                    .checked_neg()
                    .ok_or(CommandParseError::Other("ERR decrement would overflow"))?,
            }),
            _ => Err(CommandParseError::WrongArity("decrby")),
        },
        b"incrbyfloat" => match *rest {
            [key, delta] => {
                let valid = std::str::from_utf8(delta)
                    .ok()
                    .filter(|t| !t.is_empty() && t.trim() == *t)
                    .and_then(|t| t.parse::<f64>().ok())
                    .is_some_and(f64::is_finite);
                if !valid {
                    return Err(CommandParseError::NotAFloat);
                }
                Ok(Command::IncrByFloat { key, delta })
            }
            _ => Err(CommandParseError::WrongArity("incrbyfloat")),
        },
        b"del" | b"unlink" | b"exists" | b"mget" | b"watch" => {
            let which = match &lower[..name.len()] {
                b"del" => "del",
                b"unlink" => "unlink",
                b"exists" => "exists",
                b"mget" => "mget",
                _ => "watch",
            };
            if rest.is_empty() {
                return Err(CommandParseError::WrongArity(which));
            }
            Ok(match which {
                "del" | "unlink" => Command::Del {
                    keys: rest.to_vec(),
                },
                "exists" => Command::Exists {
                    keys: rest.to_vec(),
                },
                "mget" => Command::MGet {
                    keys: rest.to_vec(),
                },
                _ => Command::Watch {
                    keys: rest.to_vec(),
                },
            })
        }
        b"mset" | b"msetnx" => {
            let nx = name.len() == 6;
            if rest.is_empty() || rest.len() % 2 != 0 {
                return Err(CommandParseError::WrongArity(if nx {
                    "msetnx"
                } else {
                    "mset"
                }));
            }
            let pairs = rest.chunks_exact(2).map(|p| (p[0], p[1])).collect();
            Ok(if nx {
                Command::MSetNx { pairs }
            } else {
                Command::MSet { pairs }
            })
        }
        b"cas" => match *rest {
            [key, expected, new] => Ok(Command::Cas { key, expected, new }),
            _ => Err(CommandParseError::WrongArity("cas")),
        },
        b"setnx" => two(rest, "setnx").map(|(key, value)| Command::SetNx { key, value }),
        b"append" => two(rest, "append").map(|(key, value)| Command::Append { key, value }),
        b"getset" => two(rest, "getset").map(|(key, value)| Command::GetSet { key, value }),
        b"setex" | b"psetex" => parse_setex(rest, name.len() == 5),
        b"strlen" => one_key(rest, "strlen").map(|key| Command::Strlen { key }),
        b"getdel" => one_key(rest, "getdel").map(|key| Command::GetDel { key }),
        b"persist" => one_key(rest, "persist").map(|key| Command::Persist { key }),
        b"type" => one_key(rest, "type").map(|key| Command::Type { key }),
        b"ttl" => one_key(rest, "ttl").map(|key| Command::Ttl { key, millis: false }),
        b"pttl" => one_key(rest, "pttl").map(|key| Command::Ttl { key, millis: true }),
        b"getrange" | b"substr" => match *rest {
            [key, start, end] => Ok(Command::GetRange {
                key,
                start: integer(start)?,
                end: integer(end)?,
            }),
            _ => Err(CommandParseError::WrongArity("getrange")),
        },
        b"setrange" => match *rest {
            [key, offset, value] => {
                let offset = integer(offset)?;
                let offset = u64::try_from(offset)
                    .map_err(|_| CommandParseError::Other("ERR offset is out of range"))?;
                Ok(Command::SetRange { key, offset, value })
            }
            _ => Err(CommandParseError::WrongArity("setrange")),
        },
        b"getex" => parse_getex(rest),
        b"expire" => parse_expire(rest, "expire", true, false),
        b"pexpire" => parse_expire(rest, "pexpire", false, false),
        b"expireat" => parse_expire(rest, "expireat", true, true),
        b"pexpireat" => parse_expire(rest, "pexpireat", false, true),
        b"keys" => match *rest {
            [pattern] => Ok(Command::Keys { pattern }),
            _ => Err(CommandParseError::WrongArity("keys")),
        },
        b"scan" => parse_scan(rest),
        b"dbsize" => match *rest {
            [] => Ok(Command::DbSize),
            _ => Err(CommandParseError::WrongArity("dbsize")),
        },
        b"flushdb" | b"flushall" => match *rest {
            [] => Ok(Command::FlushAll),
            [mode] if is(mode, "sync") || is(mode, "async") => Ok(Command::FlushAll),
            [_] => Err(CommandParseError::Syntax),
            _ => Err(CommandParseError::WrongArity(if name.len() == 7 {
                "flushdb"
            } else {
                "flushall"
            })),
        },
        b"rename" | b"renamenx" => {
            let only_if_missing = name.len() == 8;
            match *rest {
                [from, to] => Ok(Command::Rename {
                    from,
                    to,
                    only_if_missing,
                }),
                _ => Err(CommandParseError::WrongArity(if only_if_missing {
                    "renamenx"
                } else {
                    "rename"
                })),
            }
        }
        _ => Err(CommandParseError::unknown(args)),
    }
}

fn one_key<'a>(rest: &[&'a [u8]], name: &'static str) -> Result<&'a [u8], CommandParseError> {
    match *rest {
        [key] => Ok(key),
        _ => Err(CommandParseError::WrongArity(name)),
    }
}

fn two<'a>(
    rest: &[&'a [u8]],
    name: &'static str,
) -> Result<(&'a [u8], &'a [u8]), CommandParseError> {
    match *rest {
        [key, value] => Ok((key, value)),
        _ => Err(CommandParseError::WrongArity(name)),
    }
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]`.
fn parse_set<'a>(rest: &[&'a [u8]]) -> Parsed<'a> {
    let [key, value, options @ ..] = rest else {
        return Err(CommandParseError::WrongArity("set"));
    };
    if options.is_empty() {
        return Ok(Command::Set { key, value });
    }
    let mut parsed = SetOptions {
        condition: SetCondition::Always,
        get: false,
        ttl: SetTtl::Clear,
    };
    let mut i = 0;
    while i < options.len() {
        let word = options[i];
        if let Some(expiry) = expiry_option(word, options.get(i + 1), "set") {
            if parsed.ttl != SetTtl::Clear {
                return Err(CommandParseError::Syntax);
            }
            parsed.ttl = SetTtl::Expire(expiry?);
            i += 2;
            continue;
        }
        if is(word, "nx") && parsed.condition != SetCondition::IfExists {
            parsed.condition = SetCondition::IfMissing;
        } else if is(word, "xx") && parsed.condition != SetCondition::IfMissing {
            parsed.condition = SetCondition::IfExists;
        } else if is(word, "get") {
            parsed.get = true;
        } else if is(word, "keepttl") && matches!(parsed.ttl, SetTtl::Clear | SetTtl::Keep) {
            parsed.ttl = SetTtl::Keep;
        } else {
            return Err(CommandParseError::Syntax);
        }
        i += 1;
    }
    Ok(Command::SetWith {
        key,
        value,
        options: parsed,
    })
}

/// `SETEX key seconds value` / `PSETEX key milliseconds value`.
fn parse_setex<'a>(rest: &[&'a [u8]], seconds: bool) -> Parsed<'a> {
    let name = if seconds { "setex" } else { "psetex" };
    let [key, ttl, value] = *rest else {
        return Err(CommandParseError::WrongArity(name));
    };
    Ok(Command::SetWith {
        key,
        value,
        options: SetOptions {
            condition: SetCondition::Always,
            get: false,
            ttl: SetTtl::Expire(Expiry::AfterMs(ttl_ms(ttl, seconds, true, name)?)),
        },
    })
}

/// `GETEX key [EX s|PX ms|EXAT t|PXAT t|PERSIST]`.
fn parse_getex<'a>(rest: &[&'a [u8]]) -> Parsed<'a> {
    let Some((key, options)) = rest.split_first() else {
        return Err(CommandParseError::WrongArity("getex"));
    };
    let ttl = match options {
        [] => GetExTtl::Unchanged,
        [word] if is(word, "persist") => GetExTtl::Persist,
        [word, value] => match expiry_option(word, Some(value), "getex") {
            Some(expiry) => GetExTtl::Expire(expiry?),
            None => return Err(CommandParseError::Syntax),
        },
        _ => return Err(CommandParseError::Syntax),
    };
    Ok(Command::GetEx { key, ttl })
}

/// `EXPIRE key seconds [NX|XX|GT|LT]` and its PEXPIRE/EXPIREAT/PEXPIREAT siblings.
fn parse_expire<'a>(
    rest: &[&'a [u8]],
    name: &'static str,
    seconds: bool,
    absolute: bool,
) -> Parsed<'a> {
    let [key, time, options @ ..] = rest else {
        return Err(CommandParseError::WrongArity(name));
    };
    let mut condition = ExpireCondition::Always;
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for word in options {
        if is(word, "nx") {
            nx = true;
        } else if is(word, "xx") {
            xx = true;
        } else if is(word, "gt") {
            gt = true;
        } else if is(word, "lt") {
            lt = true;
        } else {
            return Err(CommandParseError::UnsupportedOption(
                String::from_utf8_lossy(word).into_owned(),
            ));
        }
    }
    if nx && (xx || gt || lt) {
        return Err(CommandParseError::Other(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(CommandParseError::Other(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    // GT already needs an expiry (none counts as infinite); XX adds that need to LT.
    if nx {
        condition = ExpireCondition::IfNone;
    } else if gt {
        condition = ExpireCondition::IfGreater;
    } else if lt && xx {
        condition = ExpireCondition::IfSomeAndLess;
    } else if lt {
        condition = ExpireCondition::IfLess;
    } else if xx {
        condition = ExpireCondition::IfSome;
    }
    let ms = ttl_ms(time, seconds, false, name)?;
    let at = if absolute {
        Expiry::AtMs(ms)
    } else {
        Expiry::AfterMs(ms)
    };
    Ok(Command::Expire { key, at, condition })
}

/// `SCAN cursor [MATCH pattern] [COUNT n]`.
fn parse_scan<'a>(rest: &[&'a [u8]]) -> Parsed<'a> {
    let Some((cursor, options)) = rest.split_first() else {
        return Err(CommandParseError::WrongArity("scan"));
    };
    let cursor = std::str::from_utf8(cursor)
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
        .ok_or(CommandParseError::Other("ERR invalid cursor"))?;
    let mut pattern = None;
    let mut count = 10u32;
    let mut i = 0;
    while i < options.len() {
        let (word, value) = (options[i], options.get(i + 1));
        let Some(value) = value else {
            return Err(CommandParseError::Syntax);
        };
        if is(word, "match") {
            pattern = Some(*value).filter(|p| *p != b"*");
        } else if is(word, "count") {
            let n = integer(value)?;
            if n < 1 {
                return Err(CommandParseError::Syntax);
            }
            count = u32::try_from(n).unwrap_or(u32::MAX);
        } else if is(word, "type") {
            if !is(value, "string") {
                // Only strings exist: no key can match another type.
                pattern = Some(b"[]");
            }
        } else {
            return Err(CommandParseError::Syntax);
        }
        i += 2;
    }
    Ok(Command::Scan {
        cursor,
        pattern,
        count,
    })
}

/// One row of the command table (`COMMAND INFO`, `COMMAND DOCS`, `COMMAND COUNT`).
#[derive(Debug, Clone, Copy)]
pub struct CommandSpec {
    /// Lower-case command name.
    pub name: &'static str,
    /// Redis's arity: positive = exact argument count (name included), negative = at least.
    pub arity: i64,
    /// Redis command flags (`write`, `readonly`, `fast`, ...).
    pub flags: &'static [&'static str],
    /// Position of the first key argument (0: the command takes no key).
    pub first_key: i64,
    /// Position of the last key argument (negative: counted from the end).
    pub last_key: i64,
    /// Step between key positions (2 for `MSET`'s key-value pairs).
    pub step: i64,
    /// `COMMAND DOCS` group (`string`, `generic`, `connection`, ...).
    pub group: &'static str,
    /// Redis version that introduced the command (`COMMAND DOCS` `since`).
    pub since: &'static str,
    /// One-line description (`COMMAND DOCS` `summary`).
    pub summary: &'static str,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    group: &'static str,
    since: &'static str,
    summary: &'static str,
) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
        group,
        since,
        summary,
    }
}

const W: &[&str] = &["write", "denyoom"];
const WF: &[&str] = &["write", "denyoom", "fast"];
const RF: &[&str] = &["readonly", "fast"];
const R: &[&str] = &["readonly"];
const L: &[&str] = &["loading", "stale", "fast"];
const NO_KEY: (i64, i64, i64) = (0, 0, 0);
const KEY1: (i64, i64, i64) = (1, 1, 1);

/// Every command Tally answers, in name order.
pub const COMMAND_TABLE: &[CommandSpec] = &[
    spec("append", 3, WF, KEY1, "string", "2.0.0", "Appends a string to the value of a key. Creates the key if it doesn't exist."),
    spec("auth", -2, &["noscript", "loading", "stale", "fast"], NO_KEY, "connection", "1.0.0", "Authenticates the connection."),
    spec("cas", 4, WF, KEY1, "string", "0.1.0", "Tally: sets a key to a new value if its value equals the expected one."),
    spec("client", -2, L, NO_KEY, "connection", "2.4.0", "A container for client connection commands."),
    spec("command", -1, L, NO_KEY, "server", "2.8.13", "Returns detailed information about all commands."),
    spec("config", -2, L, NO_KEY, "server", "2.0.0", "A container for server configuration commands (CONFIG GET only)."),
    spec("dbsize", 1, RF, NO_KEY, "server", "1.0.0", "Returns the number of keys in the database."),
    spec("decr", 2, WF, KEY1, "string", "1.0.0", "Decrements the integer value of a key by one. Uses 0 as initial value if the key doesn't exist."),
    spec("decrby", 3, WF, KEY1, "string", "1.0.0", "Decrements a number from the integer value of a key. Uses 0 as initial value if the key doesn't exist."),
    spec("del", -2, &["write"], (1, -1, 1), "generic", "1.0.0", "Deletes one or more keys."),
    spec("discard", 1, L, NO_KEY, "transactions", "2.0.0", "Discards a transaction."),
    spec("echo", 2, &["fast"], NO_KEY, "connection", "1.0.0", "Returns the given string."),
    spec("exec", 1, &["loading", "stale"], NO_KEY, "transactions", "1.2.0", "Executes all commands in a transaction."),
    spec("exists", -2, RF, (1, -1, 1), "generic", "1.0.0", "Determines whether one or more keys exist."),
    spec("expire", -3, WF, KEY1, "generic", "1.0.0", "Sets the expiration time of a key in seconds."),
    spec("expireat", -3, WF, KEY1, "generic", "1.2.0", "Sets the expiration time of a key to a Unix timestamp."),
    spec("flushall", -1, &["write"], NO_KEY, "server", "1.0.0", "Removes all keys from all databases."),
    spec("flushdb", -1, &["write"], NO_KEY, "server", "1.0.0", "Remove all keys from the current database."),
    spec("get", 2, RF, KEY1, "string", "1.0.0", "Returns the string value of a key."),
    spec("getdel", 2, WF, KEY1, "string", "6.2.0", "Returns the string value of a key after deleting the key."),
    spec("getex", -2, WF, KEY1, "string", "6.2.0", "Returns the string value of a key after setting its expiration time."),
    spec("getrange", 4, R, KEY1, "string", "2.4.0", "Returns a substring of the string stored at a key."),
    spec("getset", 3, WF, KEY1, "string", "1.0.0", "Returns the previous string value of a key after setting it to a new value."),
    spec("hello", -1, L, NO_KEY, "connection", "6.0.0", "Handshakes with the Redis server."),
    spec("incr", 2, WF, KEY1, "string", "1.0.0", "Increments the integer value of a key by one. Uses 0 as initial value if the key doesn't exist."),
    spec("incrby", 3, WF, KEY1, "string", "1.0.0", "Increments the integer value of a key by a number. Uses 0 as initial value if the key doesn't exist."),
    spec("incrbyfloat", 3, WF, KEY1, "string", "2.6.0", "Increment the floating point value of a key by a number. Uses 0 as initial value if the key doesn't exist."),
    spec("info", -1, &["loading", "stale"], NO_KEY, "server", "1.0.0", "Returns information and statistics about the server."),
    spec("keys", 2, R, NO_KEY, "generic", "1.0.0", "Returns all key names that match a pattern."),
    spec("mget", -2, RF, (1, -1, 1), "string", "1.0.0", "Atomically returns the string values of one or more keys."),
    spec("mset", -3, W, (1, -1, 2), "string", "1.0.1", "Atomically creates or modifies the string values of one or more keys."),
    spec("msetnx", -3, W, (1, -1, 2), "string", "1.0.1", "Atomically modifies the string values of one or more keys only when all keys don't exist."),
    spec("multi", 1, L, NO_KEY, "transactions", "1.2.0", "Starts a transaction."),
    spec("persist", 2, &["write", "fast"], KEY1, "generic", "2.2.0", "Removes the expiration time of a key."),
    spec("pexpire", -3, WF, KEY1, "generic", "2.6.0", "Sets the expiration time of a key in milliseconds."),
    spec("pexpireat", -3, WF, KEY1, "generic", "2.6.0", "Sets the expiration time of a key to a Unix milliseconds timestamp."),
    spec("ping", -1, &["fast"], NO_KEY, "connection", "1.0.0", "Returns the server's liveliness response."),
    spec("psetex", 4, W, KEY1, "string", "2.6.0", "Sets both string value and expiration time in milliseconds of a key. The key is created if it doesn't exist."),
    spec("pttl", 2, RF, KEY1, "generic", "2.6.0", "Returns the expiration time in milliseconds of a key."),
    spec("quit", -1, L, NO_KEY, "connection", "1.0.0", "Closes the connection."),
    spec("rename", 3, &["write"], (1, 2, 1), "generic", "1.0.0", "Renames a key and overwrites the destination."),
    spec("renamenx", 3, &["write", "fast"], (1, 2, 1), "generic", "1.0.0", "Renames a key only when the target key name doesn't exist."),
    spec("scan", -2, R, NO_KEY, "generic", "2.8.0", "Iterates over the key names in the database."),
    spec("select", 2, L, NO_KEY, "connection", "1.0.0", "Changes the selected database (only 0 exists)."),
    spec("set", -3, W, KEY1, "string", "1.0.0", "Sets the string value of a key, ignoring its type. The key is created if it doesn't exist."),
    spec("setex", 4, W, KEY1, "string", "2.0.0", "Sets the string value and expiration time of a key. Creates the key if it doesn't exist."),
    spec("setnx", 3, WF, KEY1, "string", "1.0.0", "Set the string value of a key only when the key doesn't exist."),
    spec("setrange", 4, W, KEY1, "string", "2.2.0", "Overwrites a part of a string value with another by an offset. Creates the key if it doesn't exist."),
    spec("strlen", 2, RF, KEY1, "string", "2.2.0", "Returns the length of a string value."),
    spec("substr", 4, R, KEY1, "string", "1.0.0", "Returns a substring from a string value."),
    spec("tally", -2, &["loading", "stale"], NO_KEY, "server", "0.1.0", "Tally administration commands (TALLY SNAPSHOT)."),
    spec("time", 1, L, NO_KEY, "server", "2.6.0", "Returns the server time."),
    spec("ttl", 2, RF, KEY1, "generic", "1.0.0", "Returns the expiration time in seconds of a key."),
    spec("type", 2, RF, KEY1, "generic", "1.0.0", "Determines the type of value stored at a key."),
    spec("unlink", -2, &["write", "fast"], (1, -1, 1), "generic", "4.0.0", "Asynchronously deletes one or more keys."),
    spec("unwatch", 1, L, NO_KEY, "transactions", "2.2.0", "Forgets about watched keys of a transaction."),
    spec("watch", -2, L, (1, -1, 1), "transactions", "2.2.0", "Monitors changes to keys to determine the execution of a transaction."),
];

/// The table row of `name` (case-insensitive).
pub fn command_spec(name: &[u8]) -> Option<&'static CommandSpec> {
    COMMAND_TABLE
        .iter()
        .find(|spec| name.eq_ignore_ascii_case(spec.name.as_bytes()))
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
            CommandParseError::WrongArity("get").to_string(),
            "ERR wrong number of arguments for 'get' command"
        );
    }

    #[test]
    fn unknown_commands_get_redis_exact_text() {
        assert_eq!(
            parse_command_args(&[b"HSET", b"h", b"f", b"v"])
                .unwrap_err()
                .to_string(),
            "ERR unknown command 'HSET', with args beginning with: 'h' 'f' 'v' "
        );
        assert_eq!(
            parse_command_args(&[b"nosuchcommandatall"])
                .unwrap_err()
                .to_string(),
            "ERR unknown command 'nosuchcommandatall', with args beginning with: "
        );
    }

    #[test]
    fn set_options_parse_as_redis_does_and_conflicts_are_syntax_errors() {
        let set = |args: &[&'static [u8]]| parse_command_args(args);
        assert_eq!(
            set(&[b"SET", b"k", b"v", b"EX", b"10"]),
            Ok(Command::SetWith {
                key: b"k",
                value: b"v",
                options: SetOptions {
                    condition: SetCondition::Always,
                    get: false,
                    ttl: SetTtl::Expire(Expiry::AfterMs(10_000)),
                },
            })
        );
        assert_eq!(
            set(&[b"set", b"k", b"v", b"nx", b"get", b"pxat", b"5"]),
            Ok(Command::SetWith {
                key: b"k",
                value: b"v",
                options: SetOptions {
                    condition: SetCondition::IfMissing,
                    get: true,
                    ttl: SetTtl::Expire(Expiry::AtMs(5)),
                },
            })
        );
        for bad in [
            &[&b"set"[..], b"k", b"v", b"NX", b"XX"][..],
            &[b"set", b"k", b"v", b"EX", b"1", b"PX", b"1"],
            &[b"set", b"k", b"v", b"KEEPTTL", b"EX", b"1"],
            &[b"set", b"k", b"v", b"EX"],
            &[b"set", b"k", b"v", b"FOO"],
        ] {
            assert_eq!(
                parse_command_args(bad),
                Err(CommandParseError::Syntax),
                "{bad:?}"
            );
        }
        assert_eq!(
            set(&[b"set", b"k", b"v", b"EX", b"0"])
                .unwrap_err()
                .to_string(),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(
            set(&[b"set", b"k", b"v", b"EX", b"x"]),
            Err(CommandParseError::NotAnInteger)
        );
        assert_eq!(
            set(&[b"set", b"k", b"v", b"EX", b"9223372036854775807"])
                .unwrap_err()
                .to_string(),
            "ERR invalid expire time in 'set' command"
        );
    }

    #[test]
    fn numeric_and_expire_arguments_are_checked_before_anything_is_proposed() {
        assert_eq!(
            parse_command_args(&[b"DECRBY", b"k", b"-9223372036854775808"])
                .unwrap_err()
                .to_string(),
            "ERR decrement would overflow"
        );
        assert_eq!(
            parse_command_args(&[b"INCRBYFLOAT", b"k", b"abc"]),
            Err(CommandParseError::NotAFloat)
        );
        assert_eq!(
            parse_command_args(&[b"INCRBYFLOAT", b"k", b"inf"]),
            Err(CommandParseError::NotAFloat)
        );
        assert_eq!(
            parse_command_args(&[b"SETRANGE", b"k", b"-1", b"x"])
                .unwrap_err()
                .to_string(),
            "ERR offset is out of range"
        );
        assert!(parse_command_args(&[b"EXPIRE", b"k", b"10", b"NX", b"XX"])
            .unwrap_err()
            .to_string()
            .contains("not compatible"));
        assert_eq!(
            parse_command_args(&[b"SCAN", b"x"])
                .unwrap_err()
                .to_string(),
            "ERR invalid cursor"
        );
        assert_eq!(
            parse_command_args(&[b"SCAN", b"0", b"COUNT", b"0"]),
            Err(CommandParseError::Syntax)
        );
        assert_eq!(
            parse_command_args(&[b"SETEX", b"k", b"-1", b"v"])
                .unwrap_err()
                .to_string(),
            "ERR invalid expire time in 'setex' command"
        );
    }

    #[test]
    fn command_table_is_sorted_and_names_every_kv_command() {
        assert!(COMMAND_TABLE.windows(2).all(|w| w[0].name < w[1].name));
        for spec in COMMAND_TABLE {
            let is_local = [
                "auth", "client", "command", "config", "discard", "echo", "exec", "hello", "info",
                "multi", "ping", "quit", "select", "tally", "time", "unwatch",
            ]
            .contains(&spec.name);
            let mut args: Vec<&[u8]> = vec![spec.name.as_bytes()];
            // Enough arguments for any arity; the parser may still refuse them, but it
            // must know the name.
            args.extend(std::iter::repeat_n(
                &b"1"[..],
                spec.arity.unsigned_abs() as usize - 1,
            ));
            let parsed = parse_command_args(&args);
            assert_eq!(
                matches!(parsed, Err(CommandParseError::UnknownCommand { .. })),
                is_local,
                "{}: {parsed:?}",
                spec.name
            );
        }
    }
}
