//! Command dispatch: local commands answered on the I/O thread, `TALLY` admin
//! commands, KV commands encoded and queued for the node.

use super::auth::{allowed_before_auth, NOAUTH_ERROR};
use super::connection::{Connection, Slot, Unsubmitted};
use super::io_loop::Context;
use super::*;

impl Connection {
    /// Handles one command: answers it locally or queues it for the node. Returns its
    /// slot (QUIT also closes the connection once everything before it is answered).
    pub(super) fn command(&mut self, args: &[&[u8]], context: &mut Context<'_>) -> Slot {
        let mut out = Vec::new();
        let Some(name) = args.first() else {
            write_error(&mut out, "ERR empty command");
            return Slot::Ready(out);
        };
        let command_bytes: usize = args.iter().map(|arg| arg.len()).sum();
        let max_command_bytes = context.shared.config.limits.max_command_bytes;
        if command_bytes > max_command_bytes {
            context
                .shared
                .counters
                .commands_too_large
                .fetch_add(1, Ordering::Relaxed);
            write_error(
                &mut out,
                &format!(
                    "ERR command of {command_bytes} bytes exceeds the limit of \
                     {max_command_bytes} bytes (max-command-bytes)"
                ),
            );
            return Slot::Ready(out);
        }
        let name = name.to_ascii_lowercase();
        let rest = &args[1..];
        if !self.authenticated && !allowed_before_auth(&name) {
            write_error(&mut out, NOAUTH_ERROR);
            return Slot::Ready(out);
        }
        match name.as_slice() {
            b"auth" => self.auth_command(&mut out, rest, context.shared),
            b"ping" => match rest {
                [] => write_simple_string(&mut out, "PONG"),
                [message] => write_bulk(&mut out, message),
                _ => write_error(&mut out, "ERR wrong number of arguments for 'ping' command"),
            },
            b"echo" => match rest {
                [message] => write_bulk(&mut out, message),
                _ => write_error(&mut out, "ERR wrong number of arguments for 'echo' command"),
            },
            b"quit" => {
                write_simple_string(&mut out, "OK");
                self.read_closed = true;
                self.closing = true;
            }
            b"select" => match rest {
                [db] if *db == b"0" => write_simple_string(&mut out, "OK"),
                [_] => write_error(&mut out, "ERR DB index is out of range"),
                _ => write_error(
                    &mut out,
                    "ERR wrong number of arguments for 'select' command",
                ),
            },
            b"info" => {
                let section = rest.first().map(|s| s.to_ascii_lowercase());
                let text = context.shared.info(section.as_deref());
                write_bulk(&mut out, text.as_bytes());
            }
            b"config" => config_command(&mut out, rest),
            b"tally" => return self.tally_command(rest, context),
            // redis-cli and redis-benchmark ask for command docs on connect.
            b"command" => write_array_header(&mut out, 0),
            b"client" => write_simple_string(&mut out, "OK"),
            // RESP3 is not spoken: clients fall back to RESP2 on this error.
            b"hello" => write_error(&mut out, "NOPROTO unsupported protocol version"),
            _ => return self.kv_command(args, context),
        }
        Slot::Ready(out)
    }

    /// `TALLY <subcommand>`: Tally's own administration commands.
    /// `TALLY SNAPSHOT` takes a snapshot now and answers its index once it is durable.
    pub(super) fn tally_command(&mut self, args: &[&[u8]], context: &mut Context<'_>) -> Slot {
        let mut out = Vec::new();
        let Some((sub, rest)) = args.split_first() else {
            write_error(
                &mut out,
                "ERR wrong number of arguments for 'tally' command",
            );
            return Slot::Ready(out);
        };
        if !sub.eq_ignore_ascii_case(b"snapshot") {
            write_error(
                &mut out,
                &format!(
                    "ERR unknown TALLY subcommand '{}'",
                    String::from_utf8_lossy(sub)
                ),
            );
            return Slot::Ready(out);
        }
        if !rest.is_empty() {
            write_error(
                &mut out,
                "ERR wrong number of arguments for 'tally snapshot' command",
            );
            return Slot::Ready(out);
        }
        let tag = self.new_tag(false);
        let sender = context.reply_tx.clone();
        let waker = Arc::clone(context.reply_waker);
        // Never blocks this I/O thread: a full queue answers `-BUSY` at once.
        context
            .shared
            .handle
            .try_request_snapshot(Box::new(move |result| {
                let reply = ReplyTo::with_waker(tag, sender, waker);
                reply.send(result.map(|taken| KvResponse::Integer(taken.index as i64)));
            }));
        Slot::Pending(tag)
    }

    /// Parses and encodes a KV command and queues it for submission.
    pub(super) fn kv_command(&mut self, args: &[&[u8]], context: &mut Context<'_>) -> Slot {
        let mut out = Vec::new();
        let command = match parse_command_args(args) {
            Ok(command) => command,
            Err(error) => {
                write_error(&mut out, &error.to_string());
                return Slot::Ready(out);
            }
        };
        let read_only = command.is_read_only();
        let session = if read_only {
            None
        } else {
            Some(ClientSession {
                client_id: self.client_id,
                sequence: self.last_sequence + 1,
            })
        };
        context.encode_buffer.clear();
        if let Err(error) = encode_request(
            session,
            &command,
            &context.shared.config.kv_limits,
            context.encode_buffer,
        ) {
            write_error(&mut out, &format!("ERR {error}"));
            return Slot::Ready(out);
        }
        let max_entry_bytes = context.shared.config.limits.max_entry_bytes;
        if context.encode_buffer.len() as u64 > max_entry_bytes {
            // Limits::validate makes this unreachable for commands under
            // max_command_bytes; kept so no configuration can hand the WAL an entry it
            // refuses (which would stop the node).
            context
                .shared
                .counters
                .commands_too_large
                .fetch_add(1, Ordering::Relaxed);
            write_error(
                &mut out,
                &format!(
                    "ERR command encodes to {} bytes, above the log entry limit of \
                     {max_entry_bytes} bytes (max-entry-bytes)",
                    context.encode_buffer.len()
                ),
            );
            return Slot::Ready(out);
        }
        if !read_only {
            self.last_sequence += 1;
        }
        let tag = self.new_tag(!read_only);
        self.unsubmitted.push_back(Unsubmitted {
            tag,
            request: Bytes::copy_from_slice(context.encode_buffer),
            read_only,
        });
        Slot::Pending(tag)
    }
}

/// `CONFIG GET <name>`: what redis-benchmark asks for on connect (`save`,
/// `appendonly`). Tally persists every acknowledged write, so it reports no RDB
/// schedule and `appendonly yes`. Unknown names give an empty array, like Redis.
pub(super) fn config_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let Some((sub, rest)) = args.split_first() else {
        write_error(out, "ERR wrong number of arguments for 'config' command");
        return;
    };
    if !sub.eq_ignore_ascii_case(b"get") {
        write_error(out, "ERR CONFIG is read-only in Tally (only CONFIG GET)");
        return;
    }
    let mut pairs: Vec<(&[u8], &[u8])> = Vec::new();
    for name in rest {
        if name.eq_ignore_ascii_case(b"save") {
            pairs.push((b"save", b""));
        } else if name.eq_ignore_ascii_case(b"appendonly") {
            pairs.push((b"appendonly", b"yes"));
        } else if name.eq_ignore_ascii_case(b"databases") {
            pairs.push((b"databases", b"1"));
        }
    }
    write_array_header(out, pairs.len() * 2);
    for (name, value) in pairs {
        write_bulk(out, name);
        write_bulk(out, value);
    }
}
