//! Turning entry payloads into something a person (text) or a program (JSON) can read:
//! Raft entry kinds, KV commands (`tally_engine::kv`), membership configurations.

use serde_json::{json, Map, Value};
use tally_engine::kv::{decode_request, Command, KvLimits, Request};
use tally_engine::raft::{Configuration, EntryKind};

/// Longest key or value shown in text output before it is cut.
const TEXT_VALUE_MAX_BYTES: usize = 64;

/// The name of a stored kind byte (`kind(N)` for one no Tally version writes).
pub fn kind_name(kind: u8) -> String {
    match EntryKind::from_u8(kind) {
        Some(EntryKind::Normal) => "normal".into(),
        Some(EntryKind::Noop) => "noop".into(),
        Some(EntryKind::Config) => "config".into(),
        None => format!("kind({kind})"),
    }
}

/// Parses a `--kind` argument: a name (`normal`, `noop`, `config`) or a number.
pub fn parse_kind(text: &str) -> Result<u8, String> {
    match text {
        "normal" => Ok(EntryKind::Normal.as_u8()),
        "noop" => Ok(EntryKind::Noop.as_u8()),
        "config" => Ok(EntryKind::Config.as_u8()),
        other => other
            .parse::<u8>()
            .map_err(|_| format!("unknown kind '{other}' (normal, noop, config or 0-255)")),
    }
}

/// `bytes` as a quoted string: printable ASCII as is, everything else `\xNN`, cut at
/// `TEXT_VALUE_MAX_BYTES` with the full length noted.
pub fn quote_bytes(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(TEXT_VALUE_MAX_BYTES)];
    let mut out = String::with_capacity(shown.len() + 2);
    out.push('"');
    for &byte in shown {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(byte as char),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out.push('"');
    if shown.len() < bytes.len() {
        out.push_str(&format!("...({} bytes)", bytes.len()));
    }
    out
}

/// `bytes` in JSON without loss: a string if UTF-8, else `{"hex": "..."}`.
pub fn json_bytes(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => json!({ "hex": hex(bytes) }),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn join_quoted(items: &[&[u8]]) -> String {
    items
        .iter()
        .map(|item| quote_bytes(item))
        .collect::<Vec<_>>()
        .join(" ")
}

fn command_text(command: &Command<'_>) -> String {
    let name = command.name().to_uppercase();
    let args = match command {
        Command::Set { key, value } => join_quoted(&[key, value]),
        Command::Get { key } | Command::Incr { key } => quote_bytes(key),
        Command::Del { keys } | Command::Exists { keys } | Command::MGet { keys } => {
            join_quoted(keys)
        }
        Command::MSet { pairs } => pairs
            .iter()
            .map(|(key, value)| join_quoted(&[key, value]))
            .collect::<Vec<_>>()
            .join(" "),
        Command::Cas { key, expected, new } => join_quoted(&[key, expected, new]),
        // Commands added with format 2 (options, expiry, transactions): their fields.
        other => format!("{other:?}"),
    };
    format!("{name} {args}")
}

fn command_json(command: &Command<'_>) -> Value {
    let mut object = Map::new();
    object.insert("op".into(), Value::String(command.name().into()));
    let list = |items: &[&[u8]]| Value::Array(items.iter().map(|i| json_bytes(i)).collect());
    match command {
        Command::Set { key, value } => {
            object.insert("key".into(), json_bytes(key));
            object.insert("value".into(), json_bytes(value));
        }
        Command::Get { key } | Command::Incr { key } => {
            object.insert("key".into(), json_bytes(key));
        }
        Command::Del { keys } | Command::Exists { keys } | Command::MGet { keys } => {
            object.insert("keys".into(), list(keys));
        }
        Command::MSet { pairs } => {
            let pairs = pairs
                .iter()
                .map(|(key, value)| json!([json_bytes(key), json_bytes(value)]))
                .collect();
            object.insert("pairs".into(), Value::Array(pairs));
        }
        Command::Cas { key, expected, new } => {
            object.insert("key".into(), json_bytes(key));
            object.insert("expected".into(), json_bytes(expected));
            object.insert("new".into(), json_bytes(new));
        }
        other => {
            object.insert("fields".into(), Value::String(format!("{other:?}")));
        }
    }
    Value::Object(object)
}

fn decode_kv(payload: &[u8]) -> Result<Request<'_>, String> {
    decode_request(payload, &KvLimits::default()).map_err(|err| err.to_string())
}

fn ids(set: &std::collections::BTreeSet<u64>) -> String {
    set.iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// A membership configuration as text: `voters {1,2,3}` (+ outgoing, learners).
pub fn configuration_text(config: &Configuration) -> String {
    let mut text = format!("voters {{{}}}", ids(&config.voters));
    if !config.outgoing_voters.is_empty() {
        text.push_str(&format!(" outgoing {{{}}}", ids(&config.outgoing_voters)));
    }
    if !config.learners.is_empty() {
        text.push_str(&format!(" learners {{{}}}", ids(&config.learners)));
    }
    text
}

/// A membership configuration as JSON.
pub fn configuration_json(config: &Configuration) -> Value {
    json!({
        "voters": config.voters,
        "outgoing_voters": config.outgoing_voters,
        "learners": config.learners,
    })
}

/// The decoded payload of an entry for text output ("" for a no-op).
pub fn describe_text(kind: u8, payload: &[u8]) -> String {
    match EntryKind::from_u8(kind) {
        Some(EntryKind::Noop) => String::new(),
        Some(EntryKind::Normal) => match decode_kv(payload) {
            Ok(request) => {
                let mut text = command_text(&request.command);
                if let Some(session) = request.session {
                    text.push_str(&format!(
                        " [client {} seq {}]",
                        session.client_id, session.sequence
                    ));
                }
                text
            }
            Err(reason) => format!("<not a KV command: {reason}>"),
        },
        Some(EntryKind::Config) => match Configuration::decode(payload) {
            Ok(config) => configuration_text(&config),
            Err(err) => format!("<not a configuration: {err}>"),
        },
        None => format!("<{} bytes of unknown kind>", payload.len()),
    }
}

/// Adds the decoded payload to a JSON entry object: `command` (+ `session`) for KV
/// commands, `config` for configurations, `decode_error` when it does not decode.
pub fn describe_json(kind: u8, payload: &[u8], object: &mut Map<String, Value>) {
    match EntryKind::from_u8(kind) {
        Some(EntryKind::Noop) | None => {}
        Some(EntryKind::Normal) => match decode_kv(payload) {
            Ok(request) => {
                object.insert("command".into(), command_json(&request.command));
                if let Some(session) = request.session {
                    object.insert(
                        "session".into(),
                        json!({ "client_id": session.client_id, "sequence": session.sequence }),
                    );
                }
            }
            Err(reason) => {
                object.insert("decode_error".into(), Value::String(reason));
            }
        },
        Some(EntryKind::Config) => match Configuration::decode(payload) {
            Ok(config) => {
                object.insert("config".into(), configuration_json(&config));
            }
            Err(err) => {
                object.insert("decode_error".into(), Value::String(err.to_string()));
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_bytes_escapes_and_cuts() {
        assert_eq!(
            quote_bytes(b"a \"b\"\\\n\xff"),
            "\"a \\\"b\\\"\\\\\\x0a\\xff\""
        );
        let long = vec![b'x'; 70];
        assert_eq!(
            quote_bytes(&long),
            format!("\"{}\"...(70 bytes)", "x".repeat(64))
        );
    }

    #[test]
    fn kinds_parse_by_name_and_number() {
        assert_eq!(parse_kind("noop"), Ok(1));
        assert_eq!(parse_kind("7"), Ok(7));
        assert!(parse_kind("bogus").is_err());
        assert_eq!(kind_name(9), "kind(9)");
    }
}
