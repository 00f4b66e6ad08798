//! Command dispatch: local commands answered on the I/O thread (connection state:
//! HELLO, CLIENT, MULTI/EXEC/DISCARD, WATCH/UNWATCH; server: PING, INFO, COMMAND,
//! CONFIG, TIME), `TALLY` admin commands, KV commands encoded and queued for the node.
//!
//! Every KV request carries this node's clock ([`clock_ms`]): in a write it becomes the
//! entry's log time stamp (only a leader's proposals commit), in a read the "now" it
//! is judged at (never behind the log time, see `tally_engine::kv`).

use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

use smallvec::SmallVec;

use super::auth::{allowed_before_auth, NOAUTH_ERROR};
use super::connection::{Connection, QueuedExec, Slot, Transaction, Unsubmitted, WatchSet};
use super::io_loop::Context;
use super::*;
use crate::commands::{command_spec, CommandParseError, CommandSpec, COMMAND_TABLE};
use crate::resp::{
    write_bulk, write_integer, write_map_header, write_null, write_verbatim, Protocol,
};
use tally_engine::kv::{encode_request_at, Command, KvReadView};

/// Most GETs one pass looks up ahead of answering them
/// ([`Connection::warm_pipelined_gets`]): enough for the misses of a client's pipeline
/// to overlap, few enough that the keys stay in the cache until they are answered.
const WARM_AHEAD_MAX_GETS: usize = 64;

/// The last time stamp handed out (Unix ms), so stamps never go back in this process.
static LAST_CLOCK_MS: AtomicU64 = AtomicU64::new(0);

/// This node's clock for KV requests: Unix milliseconds, never below an earlier stamp
/// of this process (a wall clock stepped back does not move log time or reads back).
pub(super) fn clock_ms() -> u64 {
    let wall_ms = wall_clock_ms();
    // Read first: within a millisecond every thread finds the stamp already there and
    // leaves the shared cache line unwritten (an unconditional `fetch_max` made the
    // client threads pass that line back and forth on every request).
    let last_ms = LAST_CLOCK_MS.load(Ordering::Acquire);
    if wall_ms <= last_ms {
        return last_ms;
    }
    LAST_CLOCK_MS
        .fetch_max(wall_ms, Ordering::AcqRel)
        .max(wall_ms)
}

/// The wall clock in Unix milliseconds (0 before 1970), what
/// `SystemTime::now().duration_since(UNIX_EPOCH)` gives, read with one
/// `clock_gettime` (the `SystemTime` subtraction and `u128` milliseconds cost more than
/// the clock read, on every request).
fn wall_clock_ms() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable `timespec` for the duration of the call, and
    // CLOCK_REALTIME is a clock every Unix has.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) } != 0 {
        return 0;
    }
    let (Ok(seconds), Ok(nanos)) = (u64::try_from(now.tv_sec), u64::try_from(now.tv_nsec)) else {
        return 0;
    };
    seconds
        .saturating_mul(1000)
        .saturating_add(nanos / 1_000_000)
}

/// Redis's reply to a HELLO without AUTH on a connection that must authenticate.
const HELLO_NOAUTH_ERROR: &str = "NOAUTH HELLO must be called with the client already \
    authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to \
    authenticate the client and select the RESP protocol version at the same time";

/// Commands that may not be queued inside MULTI (they act on the connection or the
/// server, not on the keyspace).
const NOT_QUEUED_IN_MULTI: &[&[u8]] = &[b"exec", b"discard", b"multi", b"watch", b"quit"];

impl Connection {
    /// Handles one command: answers it locally or queues it for the node. Returns its
    /// slot (QUIT also closes the connection once everything before it is answered).
    pub(super) fn command(&mut self, args: &[&[u8]], context: &mut Context<'_>) -> Slot {
        // The reply goes into the connection's reusable buffer; a handler that makes its
        // own slot hands the (still empty) buffer back first.
        let mut out = std::mem::take(&mut self.spare_reply);
        let Some(name) = args.first() else {
            write_error(&mut out, "ERR empty command");
            return Slot::Ready(out);
        };
        let command_bytes: usize = args.iter().map(|arg| arg.len()).sum();
        let max_command_bytes = context.shared.config.limits.max_command_bytes;
        if command_bytes > max_command_bytes {
            refuse_too_large(
                &mut out,
                context,
                &format!(
                    "ERR command of {command_bytes} bytes exceeds the limit of \
                     {max_command_bytes} bytes (max-command-bytes)"
                ),
            );
            if let Some(transaction) = &mut self.transaction {
                transaction.aborted = true;
            }
            return Slot::Ready(out);
        }
        // Lower-cased on the stack: every command name is shorter than the buffer
        // (a longer one is unknown and takes the allocating path).
        let mut name_buf = [0u8; 32];
        let lowered;
        let name: &[u8] = match name_buf.get_mut(..name.len()) {
            Some(buf) => {
                // One pass, no `memcpy` call for a few bytes.
                for (lower, byte) in buf.iter_mut().zip(name.iter()) {
                    *lower = byte.to_ascii_lowercase();
                }
                buf
            }
            None => {
                lowered = name.to_ascii_lowercase();
                &lowered
            }
        };
        let rest = &args[1..];
        if !self.authenticated && !allowed_before_auth(name) {
            write_error(&mut out, NOAUTH_ERROR);
            return Slot::Ready(out);
        }
        if self.transaction.is_some() && !NOT_QUEUED_IN_MULTI.contains(&name) {
            self.queue_in_transaction(args, context, &mut out);
            return Slot::Ready(out);
        }
        let protocol = self.protocol;
        match name {
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
                let sections: Vec<Vec<u8>> = rest.iter().map(|s| s.to_ascii_lowercase()).collect();
                let text = context.shared.info(&sections);
                write_verbatim(&mut out, text.as_bytes(), protocol);
            }
            b"config" => config_command_as(&mut out, rest, protocol),
            b"tally" => {
                self.spare_reply = out;
                return self.tally_command(rest, context);
            }
            b"command" => command_command(&mut out, rest, protocol),
            b"client" => self.client_command(&mut out, rest, context),
            b"hello" => self.hello_command(&mut out, rest, context),
            b"time" => time_command(&mut out, rest),
            b"multi" => match (rest, &self.transaction) {
                ([], None) => {
                    self.transaction = Some(Transaction::default());
                    write_simple_string(&mut out, "OK");
                }
                ([], Some(_)) => write_error(&mut out, "ERR MULTI calls can not be nested"),
                _ => write_error(
                    &mut out,
                    "ERR wrong number of arguments for 'multi' command",
                ),
            },
            b"discard" => match self.transaction.take() {
                None => write_error(&mut out, "ERR DISCARD without MULTI"),
                Some(_) => {
                    self.unwatch();
                    write_simple_string(&mut out, "OK");
                }
            },
            b"exec" => {
                self.spare_reply = out;
                return self.exec_command();
            }
            b"watch" => {
                self.spare_reply = out;
                return self.watch_command(args, context);
            }
            b"unwatch" => {
                self.unwatch();
                write_simple_string(&mut out, "OK");
            }
            _ => return self.kv_command(args, out, context),
        }
        Slot::Ready(out)
    }

    /// `TALLY <subcommand>`: Tally's own administration commands.
    /// `TALLY SNAPSHOT` takes a snapshot now and answers, once it is durable, an array of
    /// two bulk strings: the file's path and its index. Other subcommands: `admin.rs`.
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
            return self.admin_command(sub, rest, context);
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
                reply.send(result.map(|taken| {
                    KvResponse::Array(vec![
                        Some(taken.path.into_bytes().into()),
                        Some(taken.index.to_string().into_bytes().into()),
                    ])
                }));
            }));
        Slot::Pending(tag)
    }

    /// Parses and encodes a KV command and queues it for submission. `out`: an empty
    /// buffer for a reply made here (an error, a lease read), else handed back.
    pub(super) fn kv_command(
        &mut self,
        args: &[&[u8]],
        mut out: Vec<u8>,
        context: &mut Context<'_>,
    ) -> Slot {
        let command = match parse_command_args(args) {
            Ok(command) => command,
            Err(error) => {
                write_error(&mut out, &error.to_string());
                return Slot::Ready(out);
            }
        };
        let read_only = command.is_read_only();
        if read_only && self.serve_lease_read_here(&command, &mut out, context) {
            return Slot::Ready(out);
        }
        let session = if read_only {
            None
        } else {
            Some(ClientSession {
                client_id: self.client_id,
                sequence: self.last_sequence + 1,
            })
        };
        if let Err(reply) = encode_checked(session, &command, context) {
            return Slot::Ready(reply);
        }
        self.spare_reply = out;
        if !read_only {
            self.last_sequence += 1;
        }
        let tag = self.new_tag(!read_only);
        let request = Unsubmitted {
            tag,
            request: context.take_encoded(),
            read_only,
            exec: None,
        };
        self.queue_request(request, context);
        Slot::Pending(tag)
    }

    /// Answers a read-only command on this I/O thread from the node's published read
    /// view when the lease check passes (`tally_engine::driver::lease`: as safe as the
    /// raft thread's), and when nothing of this connection is ahead of it: no earlier
    /// write unanswered (it must see them), no earlier request still unsubmitted (replies
    /// keep request order). Returns whether the reply was written to `out`; `false`:
    /// the usual path through the node.
    fn serve_lease_read_here(
        &mut self,
        command: &Command<'_>,
        out: &mut Vec<u8>,
        context: &mut Context<'_>,
    ) -> bool {
        if !self.nothing_ahead_of_a_read() {
            return false;
        }
        let Ok(view) = context.local_reader.view_for_read() else {
            return false;
        };
        let Some(view) = view.view.downcast_ref::<KvReadView>() else {
            return false;
        };
        if let Command::Get { key } = command {
            let protocol = self.protocol;
            view.get_with(key, clock_ms(), |value| match value {
                Some(bytes) => write_bulk(out, bytes),
                None => write_null(out, protocol),
            });
        } else {
            let response = view.query(command, clock_ms());
            context
                .shared
                .write_result(out, Ok(response), self.protocol);
        }
        context.counts.lease_reads += 1;
        true
    }

    /// Whether a read parsed now may be answered here: no earlier write of this
    /// connection unanswered, no earlier request unsubmitted.
    fn nothing_ahead_of_a_read(&self) -> bool {
        self.unanswered_writes == 0 && self.unsubmitted.is_empty()
    }

    /// Before a pass parses `input`: when it starts with several GETs this thread would
    /// answer from the read view, looks their keys up once, together, so that the
    /// answers find buckets and values in the cache. Each lookup is a chain of cache
    /// misses (control bytes, bucket, value); one after another their misses overlap,
    /// which the reads answered one at a time cannot do. Only warms the cache: every
    /// command is then parsed and answered as usual. Skipped while `parser` holds a
    /// partly received command: parsing it again from its start on every read of a
    /// long request would cost time quadratic in its length.
    pub(super) fn warm_pipelined_gets(
        &self,
        input: &[u8],
        parser: &RequestParser,
        context: &mut Context<'_>,
    ) {
        if !parser.is_between_commands()
            || !self.nothing_ahead_of_a_read()
            || self.transaction.is_some()
            || !self.authenticated
        {
            return;
        }
        let mut keys: SmallVec<[Range<usize>; WARM_AHEAD_MAX_GETS]> = SmallVec::new();
        let lookahead = &mut *context.lookahead;
        lookahead.reset();
        let mut offset = 0;
        while keys.len() < WARM_AHEAD_MAX_GETS {
            let Ok(ParseStatus::Complete { consumed }) = lookahead.parse(&input[offset..]) else {
                break;
            };
            let spans = lookahead.arg_spans();
            if spans.len() != 2
                || !input[offset + spans[0].start..offset + spans[0].end]
                    .eq_ignore_ascii_case(b"get")
            {
                break;
            }
            keys.push(offset + spans[1].start..offset + spans[1].end);
            offset += consumed;
        }
        lookahead.reset();
        if keys.len() < 2 {
            return;
        }
        let Ok(view) = context.local_reader.view_for_read() else {
            return;
        };
        if let Some(view) = view.view.downcast_ref::<KvReadView>() {
            view.warm_for_reads(keys.iter().map(|key| &input[key.clone()]));
        }
    }

    /// Inside MULTI: a command that parses is queued (`+QUEUED`); one that does not is
    /// answered with its error and makes EXEC answer `-EXECABORT`, as in Redis.
    fn queue_in_transaction(&mut self, args: &[&[u8]], context: &Context<'_>, out: &mut Vec<u8>) {
        let limits = &context.shared.config.limits;
        let Some(transaction) = self.transaction.as_mut() else {
            return;
        };
        let error = match parse_command_args(args) {
            Err(CommandParseError::UnknownCommand { .. }) if command_spec(args[0]).is_some() => {
                Some("ERR Command not allowed inside a transaction".to_string())
            }
            Err(error) => Some(error.to_string()),
            Ok(_) => {
                let bytes: usize = args.iter().map(|a| a.len()).sum();
                if transaction.queued_bytes + bytes > limits.max_command_bytes
                    || transaction.queued_args + args.len() > limits.max_arguments
                {
                    Some(format!(
                        "ERR the transaction exceeds {} bytes or {} arguments \
                         (max-command-bytes, max-arguments)",
                        limits.max_command_bytes, limits.max_arguments
                    ))
                } else {
                    transaction.queued_bytes += bytes;
                    transaction.queued_args += args.len();
                    transaction
                        .queued
                        .push(args.iter().map(|a| a.to_vec()).collect());
                    None
                }
            }
        };
        match error {
            Some(error) => {
                transaction.aborted = true;
                write_error(out, &error);
            }
            None => write_simple_string(out, "QUEUED"),
        }
    }

    /// EXEC: the queued commands become one `MULTI` log entry (encoded at submission,
    /// once the WATCH reads before it answered).
    fn exec_command(&mut self) -> Slot {
        let mut out = Vec::new();
        let Some(transaction) = self.transaction.take() else {
            write_error(&mut out, "ERR EXEC without MULTI");
            return Slot::Ready(out);
        };
        let watch_generation = self.watch_generation;
        self.watch_sets.entry(watch_generation).or_default();
        self.watch_generation += 1;
        if transaction.aborted {
            self.watch_sets.remove(&watch_generation);
            write_error(
                &mut out,
                "EXECABORT Transaction discarded because of previous errors.",
            );
            return Slot::Ready(out);
        }
        let session = ClientSession {
            client_id: self.client_id,
            sequence: self.last_sequence + 1,
        };
        self.last_sequence += 1;
        let tag = self.new_tag(true);
        self.unsubmitted.push_back(Unsubmitted {
            tag,
            request: Bytes::new(),
            read_only: false,
            exec: Some(QueuedExec {
                session,
                commands: transaction.queued,
                watch_generation,
            }),
        });
        Slot::Pending(tag)
    }

    /// WATCH: a read of the keys' existence and the applied index; the reply fills the
    /// current watch set and the client hears `+OK`.
    fn watch_command(&mut self, args: &[&[u8]], context: &mut Context<'_>) -> Slot {
        let mut out = Vec::new();
        if self.transaction.is_some() {
            write_error(&mut out, "ERR WATCH inside MULTI is not allowed");
            return Slot::Ready(out);
        }
        let command = match parse_command_args(args) {
            Ok(command) => command,
            Err(error) => {
                write_error(&mut out, &error.to_string());
                return Slot::Ready(out);
            }
        };
        if self.watched_beyond_limits(&args[1..], &context.shared.config.limits) {
            write_error(
                &mut out,
                "ERR too many watched keys (max-arguments, max-command-bytes)",
            );
            return Slot::Ready(out);
        }
        if let Err(reply) = encode_checked(None, &command, context) {
            return Slot::Ready(reply);
        }
        let tag = self.new_tag(false);
        self.watch_sets.entry(self.watch_generation).or_default();
        self.watch_reads.insert(
            tag,
            (
                self.watch_generation,
                args[1..].iter().map(|k| k.to_vec()).collect(),
            ),
        );
        self.unsubmitted.push_back(Unsubmitted {
            tag,
            request: context.take_encoded(),
            read_only: true,
            exec: None,
        });
        Slot::Pending(tag)
    }

    /// Whether watching `new_keys` too would take the current watch set (answered and
    /// in-flight WATCH reads) past one command's bounds: what a connection may hold.
    fn watched_beyond_limits(&self, new_keys: &[&[u8]], limits: &Limits) -> bool {
        let generation = self.watch_generation;
        let answered = self
            .watch_sets
            .get(&generation)
            .map_or(&[][..], |set| &set.keys[..]);
        let in_flight = self
            .watch_reads
            .values()
            .filter(|(g, _)| *g == generation)
            .flat_map(|(_, keys)| keys.iter());
        let mut count = new_keys.len();
        let mut bytes: usize = new_keys.iter().map(|k| k.len()).sum();
        for key in answered.iter().map(|(k, _)| k).chain(in_flight) {
            count += 1;
            bytes += key.len();
        }
        count > limits.max_arguments || bytes > limits.max_command_bytes
    }

    /// Forgets the current watch set (replies of its reads still in flight are ignored).
    fn unwatch(&mut self) {
        self.watch_sets.remove(&self.watch_generation);
        self.watch_generation += 1;
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`: switches the protocol and
    /// answers the server map.
    fn hello_command(&mut self, out: &mut Vec<u8>, args: &[&[u8]], context: &Context<'_>) {
        let mut protocol = self.protocol;
        let mut options = args;
        if let Some((version, rest)) = args.split_first() {
            match tally_engine::kv::parse_redis_integer(version) {
                Some(2) => protocol = Protocol::Resp2,
                Some(3) => protocol = Protocol::Resp3,
                Some(_) => return write_error(out, "NOPROTO unsupported protocol version"),
                None => {
                    return write_error(
                        out,
                        "ERR Protocol version is not an integer or out of range",
                    )
                }
            }
            options = rest;
        }
        let mut name = None;
        while let Some((option, rest)) = options.split_first() {
            match rest {
                [user, password, after @ ..] if option.eq_ignore_ascii_case(b"auth") => {
                    if let Err(error) = self.hello_auth(user, password, context) {
                        return write_error(out, &error);
                    }
                    options = after;
                }
                [client_name, after @ ..] if option.eq_ignore_ascii_case(b"setname") => {
                    if let Err(error) = valid_client_name(client_name) {
                        return write_error(out, error);
                    }
                    name = Some(client_name.to_vec());
                    options = after;
                }
                _ => {
                    return write_error(
                        out,
                        &format!(
                            "ERR Syntax error in HELLO option '{}'",
                            String::from_utf8_lossy(option)
                        ),
                    )
                }
            }
        }
        if !self.authenticated {
            return write_error(out, HELLO_NOAUTH_ERROR);
        }
        self.protocol = protocol;
        if let Some(name) = name {
            self.name = Some(name).filter(|n| !n.is_empty());
        }
        write_map_header(out, 7, protocol);
        write_bulk(out, b"server");
        write_bulk(out, b"redis");
        write_bulk(out, b"version");
        write_bulk(out, REDIS_COMPATIBLE_VERSION.as_bytes());
        write_bulk(out, b"proto");
        write_integer(out, protocol.version());
        write_bulk(out, b"id");
        write_integer(out, self.id as i64);
        write_bulk(out, b"mode");
        write_bulk(out, b"standalone");
        write_bulk(out, b"role");
        write_bulk(out, b"master");
        write_bulk(out, b"modules");
        write_array_header(out, 0);
    }

    /// `HELLO ... AUTH user password`: client authentication's hook
    /// ([`Connection::authenticate`]); with no password configured the answer is
    /// Redis's `-ERR AUTH <password> called without any password configured ...`.
    pub(super) fn hello_auth(
        &mut self,
        user: &[u8],
        password: &[u8],
        context: &Context<'_>,
    ) -> Result<(), String> {
        self.authenticate(Some(user), password, context.shared)
            .map_err(|error| error.to_string())
    }

    /// `CLIENT ID|SETNAME|GETNAME|SETINFO|INFO|LIST`.
    fn client_command(&mut self, out: &mut Vec<u8>, args: &[&[u8]], context: &Context<'_>) {
        let Some((sub, rest)) = args.split_first() else {
            return write_error(out, "ERR wrong number of arguments for 'client' command");
        };
        let sub_lower = sub.to_ascii_lowercase();
        let arity_error = |out: &mut Vec<u8>| {
            write_error(
                out,
                &format!(
                    "ERR wrong number of arguments for 'client|{}' command",
                    String::from_utf8_lossy(&sub_lower)
                ),
            )
        };
        match (sub_lower.as_slice(), rest) {
            (b"id", []) => write_integer(out, self.id as i64),
            (b"getname", []) => match &self.name {
                Some(name) => write_bulk(out, name),
                None => write_null(out, self.protocol),
            },
            (b"setname", [name]) => match valid_client_name(name) {
                Ok(()) => {
                    self.name = Some(name.to_vec()).filter(|n| !n.is_empty());
                    write_simple_string(out, "OK");
                }
                Err(error) => write_error(out, error),
            },
            (b"setinfo", [attribute, value]) => {
                if value.iter().any(|b| !(b'!'..=b'~').contains(b)) {
                    return write_error(
                        out,
                        "ERR lib-name and lib-ver cannot contain spaces, newlines or special characters.",
                    );
                }
                if attribute.eq_ignore_ascii_case(b"lib-name") {
                    self.lib_name = value.to_vec();
                } else if attribute.eq_ignore_ascii_case(b"lib-ver") {
                    self.lib_ver = value.to_vec();
                } else {
                    return write_error(
                        out,
                        &format!(
                            "ERR Unrecognized option '{}'",
                            String::from_utf8_lossy(attribute)
                        ),
                    );
                }
                write_simple_string(out, "OK");
            }
            (b"info", []) => {
                let line = self.client_info_line(context);
                write_verbatim(out, line.as_bytes(), self.protocol);
            }
            // Only this connection is listed: connections live on separate I/O threads.
            (b"list", _) => {
                let line = self.client_info_line(context);
                write_verbatim(out, line.as_bytes(), self.protocol);
            }
            (b"id" | b"getname" | b"setname" | b"setinfo" | b"info", _) => arity_error(out),
            _ => write_error(
                out,
                &format!(
                    "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                    String::from_utf8_lossy(sub)
                ),
            ),
        }
    }

    /// This connection as a `CLIENT INFO` line (the fields Redis prints that Tally knows).
    fn client_info_line(&self, context: &Context<'_>) -> String {
        let multi = self
            .transaction
            .as_ref()
            .map_or(-1, |t| t.queued.len() as i64);
        format!(
            "id={} addr={} laddr={} name={} age={} idle=0 flags={} db=0 sub=0 psub=0 \
             ssub=0 multi={multi} watch={} user=default resp={} lib-name={} lib-ver={}\n",
            self.id,
            self.remote,
            context.shared.local_addr,
            String::from_utf8_lossy(self.name.as_deref().unwrap_or_default()),
            self.connected_at.elapsed().as_secs(),
            if self.transaction.is_some() { "x" } else { "N" },
            self.watch_sets
                .get(&self.watch_generation)
                .map_or(0, |set: &WatchSet| set.keys.len()),
            self.protocol.version(),
            String::from_utf8_lossy(&self.lib_name),
            String::from_utf8_lossy(&self.lib_ver),
        )
    }
}

/// Encodes `command` with this node's clock into `context.encode_buffer`, refusing what
/// the log would refuse. `Err`: the error reply.
fn encode_checked(
    session: Option<ClientSession>,
    command: &Command<'_>,
    context: &mut Context<'_>,
) -> Result<(), Vec<u8>> {
    let mut out = Vec::new();
    context.encode_buffer.clear();
    if let Err(error) = encode_request_at(
        session,
        Some(clock_ms()),
        command,
        &context.shared.config.kv_limits,
        context.encode_buffer,
    ) {
        write_error(&mut out, &format!("ERR {error}"));
        return Err(out);
    }
    let max_entry_bytes = context.shared.config.limits.max_entry_bytes;
    if context.encode_buffer.len() as u64 > max_entry_bytes {
        // Limits::validate makes this unreachable for commands under
        // max_command_bytes; kept so no configuration can hand the WAL an entry it
        // refuses (which would stop the node).
        let message = format!(
            "ERR command encodes to {} bytes, above the log entry limit of \
             {max_entry_bytes} bytes (max-entry-bytes)",
            context.encode_buffer.len()
        );
        refuse_too_large(&mut out, context, &message);
        return Err(out);
    }
    Ok(())
}

/// Writes the error for a command over a size limit and counts it (INFO
/// `commands_too_large`).
fn refuse_too_large(out: &mut Vec<u8>, context: &Context<'_>, message: &str) {
    context
        .shared
        .counters
        .commands_too_large
        .fetch_add(1, Ordering::Relaxed);
    write_error(out, message);
}

/// Redis's rule for client names: printable ASCII without spaces (empty clears).
fn valid_client_name(name: &[u8]) -> Result<(), &'static str> {
    if name.iter().all(|b| (b'!'..=b'~').contains(b)) {
        Ok(())
    } else {
        Err("ERR Client names cannot contain spaces, newlines or special characters.")
    }
}

/// `TIME`: this node's wall clock as `[seconds, microseconds]`.
fn time_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    if !args.is_empty() {
        return write_error(out, "ERR wrong number of arguments for 'time' command");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    write_array_header(out, 2);
    write_bulk(out, now.as_secs().to_string().as_bytes());
    write_bulk(out, now.subsec_micros().to_string().as_bytes());
}

/// `COMMAND`, `COMMAND COUNT|LIST|INFO [name ...]|DOCS [name ...]`.
fn command_command(out: &mut Vec<u8>, args: &[&[u8]], protocol: Protocol) {
    let Some((sub, names)) = args.split_first() else {
        write_array_header(out, COMMAND_TABLE.len());
        COMMAND_TABLE
            .iter()
            .for_each(|spec| write_command_info(out, spec));
        return;
    };
    let lookup = |names: &[&[u8]]| -> Vec<&'static CommandSpec> {
        if names.is_empty() {
            COMMAND_TABLE.iter().collect()
        } else {
            names.iter().filter_map(|n| command_spec(n)).collect()
        }
    };
    if sub.eq_ignore_ascii_case(b"count") {
        write_integer(out, COMMAND_TABLE.len() as i64);
    } else if sub.eq_ignore_ascii_case(b"list") {
        write_array_header(out, COMMAND_TABLE.len());
        COMMAND_TABLE
            .iter()
            .for_each(|spec| write_bulk(out, spec.name.as_bytes()));
    } else if sub.eq_ignore_ascii_case(b"info") {
        let specs: Vec<Option<&CommandSpec>> = if names.is_empty() {
            COMMAND_TABLE.iter().map(Some).collect()
        } else {
            names.iter().map(|n| command_spec(n)).collect()
        };
        write_array_header(out, specs.len());
        for spec in specs {
            match spec {
                Some(spec) => write_command_info(out, spec),
                None => write_null(out, protocol),
            }
        }
    } else if sub.eq_ignore_ascii_case(b"docs") {
        let specs = lookup(names);
        write_map_header(out, specs.len(), protocol);
        for spec in specs {
            write_bulk(out, spec.name.as_bytes());
            write_map_header(out, 3, protocol);
            write_bulk(out, b"summary");
            write_bulk(out, spec.summary.as_bytes());
            write_bulk(out, b"since");
            write_bulk(out, spec.since.as_bytes());
            write_bulk(out, b"group");
            write_bulk(out, spec.group.as_bytes());
        }
    } else {
        write_error(
            out,
            &format!(
                "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                String::from_utf8_lossy(sub)
            ),
        );
    }
}

/// One `COMMAND INFO` entry in Redis 7's ten-element layout.
fn write_command_info(out: &mut Vec<u8>, spec: &CommandSpec) {
    write_array_header(out, 10);
    write_bulk(out, spec.name.as_bytes());
    write_integer(out, spec.arity);
    write_array_header(out, spec.flags.len());
    spec.flags
        .iter()
        .for_each(|flag| write_simple_string(out, flag));
    write_integer(out, spec.first_key);
    write_integer(out, spec.last_key);
    write_integer(out, spec.step);
    write_array_header(out, 1);
    write_simple_string(out, &format!("@{}", spec.group));
    write_array_header(out, 0); // tips
    write_array_header(out, 0); // key specifications
    write_array_header(out, 0); // subcommands
}

/// `CONFIG GET <name>`: what redis-benchmark asks for on connect (`save`,
/// `appendonly`). Tally persists every acknowledged write, so it reports no RDB
/// schedule and `appendonly yes`. Unknown names give an empty array (map in RESP3),
/// like Redis.
#[cfg(test)]
pub(super) fn config_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    config_command_as(out, args, Protocol::Resp2);
}

/// [`config_command`] answering in `protocol`.
pub(super) fn config_command_as(out: &mut Vec<u8>, args: &[&[u8]], protocol: Protocol) {
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
    write_map_header(out, pairs.len(), protocol);
    for (name, value) in pairs {
        write_bulk(out, name);
        write_bulk(out, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system_time_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    #[test]
    fn the_wall_clock_reads_what_system_time_reads() {
        // Read between two SystemTime readings; retried in case the clock is stepped
        // back in between.
        let within = (0..5).any(|_| {
            let before = system_time_ms();
            let read = wall_clock_ms();
            let after = system_time_ms();
            before <= read && read <= after
        });
        assert!(within);
    }
}
