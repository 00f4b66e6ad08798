//! One client connection as a state machine: read, parse, submit, collect replies in
//! request order, write. It also holds what Redis keeps per connection: the protocol
//! version (`HELLO`), the client name and library (`CLIENT SETNAME/SETINFO`), the
//! `MULTI` queue and the `WATCH` sets.

use super::id_map::IdMap;
use super::info::encoded_reply_bytes;
use super::io_loop::Context;
use super::stream::{ClientStream, Stream};
use super::*;
use crate::limits::Limits;
use crate::resp::{write_null_array_as, Protocol};
use smallvec::SmallVec;
use std::collections::hash_map::Entry;
use tally_engine::kv::{encode_request_at, Command, WatchedKey};

/// One reply owed to a connection, in request order.
pub(super) enum Slot {
    /// Already encoded (local commands, parse errors).
    Ready(Vec<u8>),
    /// Waiting for the node's reply with this tag.
    Pending(u64),
}

/// Largest reply buffer a connection keeps for reuse ([`Connection::spare_reply`]).
const SPARE_REPLY_MAX_BYTES: usize = 16 * 1024;

/// Whether a reply of `reply_bytes` may be appended to `unsent` unsent bytes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// Append it now.
    Now,
    /// Past the soft output limit: wait until the client read what is unsent.
    Later,
    /// Past the hard output limit: the connection must close.
    TooLarge,
}

/// The output limits' rule: one reply may pass the soft limit when nothing else is
/// unsent; nothing may pass the hard limit.
fn reply_fit(unsent: usize, reply_bytes: usize, limits: &Limits) -> Fit {
    if unsent.saturating_add(reply_bytes) > limits.output_buffer_limit_bytes {
        Fit::TooLarge
    } else if unsent > 0 && unsent + reply_bytes > limits.output_buffer_soft_bytes {
        Fit::Later
    } else {
        Fit::Now
    }
}

/// A KV request encoded but not yet handed to the node.
pub(super) struct Unsubmitted {
    pub(super) tag: u64,
    /// The encoded request (empty for an EXEC: encoded at submission).
    pub(super) request: Bytes,
    pub(super) read_only: bool,
    /// An EXEC: encoded once every WATCH read before it answered (they decide its
    /// watch set), so it waits at the head of the queue until then.
    pub(super) exec: Option<QueuedExec>,
}

/// A `MULTI` in progress: the commands queued until `EXEC`.
#[derive(Default)]
pub(super) struct Transaction {
    /// Each queued command's arguments (checked by the parser when queued).
    pub(super) queued: Vec<Vec<Vec<u8>>>,
    /// Argument bytes and arguments queued. Invariant: within `max_command_bytes` and
    /// `max_arguments`, so the EXEC entry stays under `max_entry_bytes`.
    pub(super) queued_bytes: usize,
    pub(super) queued_args: usize,
    /// A command failed to queue: EXEC answers `-EXECABORT` and applies nothing.
    pub(super) aborted: bool,
}

/// An EXEC waiting for submission.
pub(super) struct QueuedExec {
    pub(super) session: ClientSession,
    pub(super) commands: Vec<Vec<Vec<u8>>>,
    /// Which watch set (`Connection::watch_sets`) the transaction checks.
    pub(super) watch_generation: u64,
}

/// The keys one generation of WATCH commands watches (one generation lasts until
/// EXEC, DISCARD or UNWATCH).
#[derive(Default)]
pub(super) struct WatchSet {
    /// Keys and whether the WATCH read saw them.
    pub(super) keys: Vec<(Vec<u8>, bool)>,
    /// The lowest applied index of this set's WATCH reads (`None` before any answered):
    /// a change after it aborts the transaction (conservative for later WATCHes).
    pub(super) index: Option<u64>,
    /// A WATCH read failed: the EXEC answers nil without proposing.
    pub(super) failed: bool,
}

/// What the I/O thread does with a connection after driving it.
pub(super) enum Verdict {
    Keep,
    Close,
}

/// One client connection, driven by its I/O thread.
pub(super) struct Connection {
    pub(super) id: u64,
    pub(super) stream: Stream,
    pub(super) remote: SocketAddr,
    /// Unique per connection for the life of the cluster (never 0): the KV session.
    pub(super) client_id: u64,
    /// Sequence number of the last write encoded. Invariant: increases by 1 per write.
    pub(super) last_sequence: u64,
    /// Sequence part of the next reply tag (wraps; never more than
    /// `max_pipeline_commands` tags are live).
    pub(super) next_request: u64,
    pub(super) parser: RequestParser,
    /// Bytes read and not yet parsed (the parser's buffer).
    pub(super) input: Vec<u8>,
    /// Replies owed, in request order. Invariant: at most `max_pipeline_commands`
    /// (plus one protocol error line).
    pub(super) slots: VecDeque<Slot>,
    /// Requests not yet submitted, in order: the head is a read waiting for this
    /// connection's unanswered writes (everything behind it waits too).
    pub(super) unsubmitted: VecDeque<Unsubmitted>,
    /// Replies received, by tag, not yet written.
    pub(super) received: IdMap<Result<KvResponse, ClientError>>,
    /// Submitted writes whose reply has not arrived (reads wait for 0).
    pub(super) unanswered_writes: usize,
    /// Encoded replies; `out[out_written..]` is not yet written to the socket.
    pub(super) out: Vec<u8>,
    /// An empty buffer local replies are encoded into, handed back once its reply was
    /// copied to `out` (one allocation per connection instead of one per reply).
    /// Invariant: empty, capacity at most `SPARE_REPLY_MAX_BYTES`.
    pub(super) spare_reply: Vec<u8>,
    pub(super) out_written: usize,
    /// Since when unsent replies made no progress (None: nothing unsent or progress).
    pub(super) unsent_since: Option<Instant>,
    /// No more bytes will be read (EOF, shutdown, QUIT, protocol error).
    pub(super) read_closed: bool,
    /// The last read of the plain TCP socket returned fewer bytes than asked: the socket
    /// held nothing more then, and epoll (edge-triggered) reports whatever arrives after
    /// it, so the next read waits for this connection's next poll event (the I/O thread
    /// clears this flag on each) instead of a syscall answering EAGAIN. Invariant: false
    /// for TLS (a short plaintext read says nothing about the socket) and once the peer's
    /// half-close was reported (its EOF is read, not waited for).
    pub(super) socket_drained: bool,
    /// A poll event reported the peer's half-close (or a hang-up).
    pub(super) peer_closed_reported: bool,
    /// No more commands are parsed; close once every slot is answered and written.
    pub(super) closing: bool,
    /// Queued in the I/O thread's `scheduled` list.
    pub(super) scheduled: bool,
    /// Reply protocol (`HELLO 2|3`).
    pub(super) protocol: Protocol,
    /// `CLIENT SETNAME` / `HELLO SETNAME` (`None`: no name).
    pub(super) name: Option<Vec<u8>>,
    /// `CLIENT SETINFO LIB-NAME` / `LIB-VER`.
    pub(super) lib_name: Vec<u8>,
    pub(super) lib_ver: Vec<u8>,
    pub(super) connected_at: Instant,
    /// `Some` between MULTI and EXEC/DISCARD.
    pub(super) transaction: Option<Transaction>,
    /// Watch sets by generation: the current one and those EXECs still wait on.
    pub(super) watch_sets: IdMap<WatchSet>,
    /// The generation new WATCH commands join. Invariant: increases by one at every
    /// EXEC, DISCARD and UNWATCH.
    pub(super) watch_generation: u64,
    /// WATCH reads in flight: tag -> (generation, keys).
    pub(super) watch_reads: IdMap<(u64, Vec<Vec<u8>>)>,
    /// Invariant: true iff no password is configured or this connection gave it
    /// (`Connection::authenticate`, the only place that sets it).
    pub(super) authenticated: bool,
}

/// A client id unique for the life of the cluster with overwhelming probability: 64
/// random bits from the OS-seeded generator (never 0).
pub(super) fn new_client_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

impl Connection {
    pub(super) fn new(
        id: u64,
        stream: Stream,
        remote: SocketAddr,
        config: &ClientPortConfig,
    ) -> Connection {
        Connection {
            id,
            stream,
            remote,
            client_id: new_client_id(),
            last_sequence: 0,
            next_request: 0,
            parser: RequestParser::new(config.limits.resp_limits()),
            input: Vec::new(),
            slots: VecDeque::new(),
            unsubmitted: VecDeque::new(),
            received: IdMap::default(),
            unanswered_writes: 0,
            out: Vec::new(),
            spare_reply: Vec::new(),
            out_written: 0,
            unsent_since: None,
            read_closed: false,
            socket_drained: false,
            peer_closed_reported: false,
            closing: false,
            scheduled: false,
            protocol: Protocol::Resp2,
            name: None,
            lib_name: Vec::new(),
            lib_ver: Vec::new(),
            connected_at: Instant::now(),
            transaction: None,
            watch_sets: IdMap::default(),
            watch_generation: 0,
            watch_reads: IdMap::default(),
            authenticated: config.requirepass.is_none(),
        }
    }

    pub(super) fn unsent_bytes(&self) -> usize {
        self.out.len() - self.out_written
    }

    /// A poll event for this connection: the socket may hold new bytes (or an EOF, or
    /// an error), so the next drive reads it.
    pub(super) fn on_poll_event(&mut self, read_closed: bool) {
        self.socket_drained = false;
        self.peer_closed_reported |= read_closed;
    }

    /// Shutdown: read nothing more, answer what was parsed, then close.
    pub(super) fn stop_reading(&mut self) {
        self.read_closed = true;
        self.closing = true;
    }

    /// Makes as much progress as the socket allows: submit, write answered replies,
    /// parse buffered commands, read. Returns when the socket would block (or the
    /// connection waits for replies, or must close).
    pub(super) fn drive(&mut self, context: &mut Context<'_>) -> io::Result<Verdict> {
        let config = &context.shared.config;
        loop {
            self.submit_ready(context);
            if let Err(reply_bytes) = self.collect_and_flush(context.shared)? {
                context
                    .shared
                    .counters
                    .output_buffer_limit_disconnections
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    node_id = config.node_id,
                    remote = %self.remote,
                    reply_bytes,
                    unsent_bytes = self.unsent_bytes(),
                    limit_bytes = config.limits.output_buffer_limit_bytes,
                    "closing a client connection: its unsent replies would pass the output buffer limit"
                );
                return Ok(Verdict::Close);
            }
            if self.closing && self.slots.is_empty() && self.unsent_bytes() == 0 {
                return Ok(Verdict::Close);
            }
            if self.parse_commands(context) {
                continue;
            }
            let may_read = !self.read_closed
                && !self.socket_drained
                && !self.closing
                && self.slots.len() < config.limits.max_pipeline_commands
                && self.unsent_bytes() < config.limits.output_buffer_soft_bytes;
            if !may_read {
                return Ok(Verdict::Keep);
            }
            match self.stream.read(context.read_scratch) {
                Ok(0) => self.read_closed = true,
                Ok(n_read) => {
                    self.input
                        .extend_from_slice(&context.read_scratch[..n_read]);
                    self.socket_drained = n_read < context.read_scratch.len()
                        && !self.peer_closed_reported
                        && matches!(self.stream, Stream::Plain(_));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Verdict::Keep)
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Parses buffered commands (within the bounds) and turns them into slots.
    /// Returns whether anything changed.
    pub(super) fn parse_commands(&mut self, context: &mut Context<'_>) -> bool {
        if self.closing {
            return false;
        }
        let shared = context.shared;
        let config = &shared.config;
        let input = std::mem::take(&mut self.input);
        let mut parser = std::mem::replace(
            &mut self.parser,
            RequestParser::new(config.limits.resp_limits()),
        );
        self.warm_pipelined_gets(&input, &parser, context);
        let mut consumed_total = 0;
        let mut n_commands = 0u64;
        let mut incomplete = false;
        let mut protocol_error = None;
        while !self.closing
            && self.slots.len() < config.limits.max_pipeline_commands
            && self.unsent_bytes() < config.limits.output_buffer_soft_bytes
        {
            match parser.parse(&input[consumed_total..]) {
                Ok(ParseStatus::Complete { consumed }) => {
                    let args: SmallVec<[&[u8]; 8]> =
                        parser.args(&input[consumed_total..]).collect();
                    let slot = self.command(&args, context);
                    self.place_reply(slot, &config.limits);
                    consumed_total += consumed;
                    n_commands += 1;
                }
                Ok(ParseStatus::Incomplete) => {
                    incomplete = true;
                    break;
                }
                Err(error) => {
                    protocol_error = Some(error.error_reply());
                    break;
                }
            }
        }
        let leftover_bytes = input.len() - consumed_total;
        if protocol_error.is_none() && incomplete && !self.closing {
            if leftover_bytes > config.limits.max_request_buffer_bytes {
                protocol_error = Some(format!(
                    "ERR Protocol error: request larger than {} bytes (max-request-buffer-bytes)",
                    config.limits.max_request_buffer_bytes
                ));
            } else if self.read_closed && leftover_bytes > 0 {
                // A client that half-closed in the middle of a request still hears why
                // nothing happened.
                protocol_error =
                    Some("ERR Protocol error: connection closed in the middle of a request".into());
            }
        }
        self.parser = parser;
        self.input = input;
        self.input.drain(..consumed_total);
        context.counts.commands += n_commands;
        let mut changed = n_commands > 0;
        if let Some(error_line) = protocol_error {
            shared
                .counters
                .protocol_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(node_id = config.node_id, remote = %self.remote, error = %error_line, "closing client connection on a protocol error");
            let mut out = Vec::new();
            write_error(&mut out, &error_line);
            self.slots.push_back(Slot::Ready(out));
            self.read_closed = true;
            self.closing = true;
            changed = true;
        } else if self.read_closed && self.input.is_empty() && !self.closing {
            // EOF after whole commands: answer them, then close.
            self.closing = true;
            changed = true;
        }
        changed
    }

    /// Files a command's slot. A reply made here with nothing owed before it goes
    /// straight to `out` when the output limits allow it now: exactly what
    /// [`Connection::collect_answered`] would do with it next, without queueing it.
    fn place_reply(&mut self, slot: Slot, limits: &Limits) {
        match slot {
            Slot::Ready(bytes)
                if self.slots.is_empty()
                    && reply_fit(self.unsent_bytes(), bytes.len(), limits) == Fit::Now =>
            {
                self.out.extend_from_slice(&bytes);
                self.recycle_reply(bytes);
            }
            slot => self.slots.push_back(slot),
        }
    }

    /// Keeps an emptied reply buffer for the next local reply (see `spare_reply`).
    pub(super) fn recycle_reply(&mut self, mut bytes: Vec<u8>) {
        if bytes.capacity() <= SPARE_REPLY_MAX_BYTES
            && bytes.capacity() > self.spare_reply.capacity()
        {
            bytes.clear();
            self.spare_reply = bytes;
        }
    }

    /// Hands queued requests to the node, in order, holding back a read (and what
    /// follows it) while a write of this connection is unanswered.
    pub(super) fn submit_ready(&mut self, context: &mut Context<'_>) {
        while let Some(next) = self.unsubmitted.front() {
            if next.read_only && self.unanswered_writes > 0 {
                return;
            }
            if next.exec.is_some() && !self.watch_reads.is_empty() {
                return;
            }
            let Some(mut request) = self.unsubmitted.pop_front() else {
                return;
            };
            if let Some(exec) = request.exec.take() {
                match self.encode_exec(exec, context) {
                    Ok(encoded) => request.request = encoded,
                    Err(reply) => {
                        self.answer_locally(request.tag, reply);
                        continue;
                    }
                }
            }
            self.submit(request, context);
        }
    }

    /// Queues an encoded request for submission. A write with nothing queued before it
    /// goes to the pass's outbox at once: exactly what [`Connection::submit_ready`]
    /// would do with it next, without the queue.
    pub(super) fn queue_request(&mut self, request: Unsubmitted, context: &mut Context<'_>) {
        if request.read_only || request.exec.is_some() || !self.unsubmitted.is_empty() {
            self.unsubmitted.push_back(request);
        } else {
            self.submit(request, context);
        }
    }

    /// Hands one request to the pass's outbox (counting an unanswered write).
    fn submit(&mut self, request: Unsubmitted, context: &mut Context<'_>) {
        let reply = ReplyTo::with_waker(
            request.tag,
            context.reply_tx.clone(),
            Arc::clone(context.reply_waker),
        );
        if request.read_only {
            context.outbox.push(Submission::Read {
                query: request.request,
                reply,
            });
        } else {
            self.unanswered_writes += 1;
            context.outbox.push(Submission::Propose {
                command: request.request,
                reply,
            });
        }
    }

    /// Files a reply from the node.
    pub(super) fn accept_reply(&mut self, reply: Reply<KvResponse>) {
        if !self.watch_reads.is_empty() && self.watch_reads.contains_key(&reply.tag) {
            if self.received.contains_key(&reply.tag) {
                return; // Already given up on (node stopped).
            }
            if let Some((generation, keys)) = self.watch_reads.remove(&reply.tag) {
                let result = self.record_watch(generation, keys, reply.result);
                self.received.insert(reply.tag, result);
            }
            return;
        }
        // One lookup files the reply (or finds it already given up on: node stopped).
        let Entry::Vacant(entry) = self.received.entry(reply.tag) else {
            return;
        };
        if reply.tag & TAG_WRITE_BIT != 0 {
            debug_assert!(
                self.unanswered_writes > 0,
                "a write reply nobody waited for"
            );
            self.unanswered_writes = self.unanswered_writes.saturating_sub(1);
        }
        entry.insert(reply.result);
    }

    /// The node stopped: whatever it has not answered yet never will be. Returns true
    /// if a slot changed.
    pub(super) fn abandon_unanswered(&mut self) -> bool {
        let mut changed = false;
        for slot in &self.slots {
            if let Slot::Pending(tag) = slot {
                if !self.received.contains_key(tag) {
                    self.received.insert(*tag, Err(ClientError::NodeStopped));
                    changed = true;
                }
            }
        }
        self.unsubmitted.clear();
        self.unanswered_writes = 0;
        self.watch_reads.clear();
        changed
    }

    /// Encodes answered replies and writes them until the socket would block or the
    /// head of the queue is unanswered. `Ok(Err(reply_bytes))`: the next reply would take
    /// the unsent bytes past the hard output limit (the connection must close).
    pub(super) fn collect_and_flush(&mut self, shared: &Shared) -> io::Result<Result<(), usize>> {
        loop {
            if let Err(reply_bytes) = self.collect_answered(shared) {
                return Ok(Err(reply_bytes));
            }
            self.flush()?;
            // Stop when the socket is full (a writable event resumes) or nothing more is
            // answered; otherwise the soft limit held replies back that now fit.
            if self.unsent_bytes() > 0 || !self.head_is_answered() {
                return Ok(Ok(()));
            }
        }
    }

    pub(super) fn head_is_answered(&self) -> bool {
        match self.slots.front() {
            Some(Slot::Ready(_)) => true,
            Some(Slot::Pending(tag)) => self.received.contains_key(tag),
            None => false,
        }
    }

    /// Moves the answered head of `slots` into `out`, in request order, while the unsent
    /// bytes stay below the soft output limit (one reply may pass it when nothing else
    /// is unsent). `Err(reply_bytes)`: the next reply alone would pass the hard limit.
    pub(super) fn collect_answered(&mut self, shared: &Shared) -> Result<(), usize> {
        let limits = &shared.config.limits;
        while let Some(slot) = self.slots.front() {
            let unsent = self.unsent_bytes();
            match slot {
                Slot::Ready(bytes) => match reply_fit(unsent, bytes.len(), limits) {
                    Fit::Now => self.out.extend_from_slice(bytes),
                    // Written once the client reads what is already here.
                    Fit::Later => return Ok(()),
                    Fit::TooLarge => return Err(bytes.len()),
                },
                Slot::Pending(tag) => {
                    let tag = *tag;
                    // Taken out in one lookup; put back in the rare case it must wait.
                    let Some(result) = self.received.remove(&tag) else {
                        return Ok(());
                    };
                    let reply_bytes = encoded_reply_bytes(&result);
                    match reply_fit(unsent, reply_bytes, limits) {
                        Fit::Now => shared.write_result(&mut self.out, result, self.protocol),
                        Fit::Later => {
                            self.received.insert(tag, result);
                            return Ok(());
                        }
                        Fit::TooLarge => {
                            self.received.insert(tag, result);
                            return Err(reply_bytes);
                        }
                    }
                }
            }
            if let Some(Slot::Ready(bytes)) = self.slots.pop_front() {
                self.recycle_reply(bytes);
            }
        }
        Ok(())
    }

    /// Writes unsent replies until done or the socket would block.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        // Bytes the TLS layer still holds (handshake, records the socket refused) first.
        self.stream.flush_pending()?;
        while self.out_written < self.out.len() {
            match self.stream.write(&self.out[self.out_written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n_written) => {
                    self.out_written += n_written;
                    self.unsent_since = None;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.unsent_since.get_or_insert_with(Instant::now);
                    return Ok(());
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        self.out.clear();
        self.out_written = 0;
        self.unsent_since = None;
        Ok(())
    }

    /// A reply tag for this connection's next request.
    pub(super) fn new_tag(&mut self, is_write: bool) -> u64 {
        let tag = reply_tag(self.id, self.next_request, is_write);
        self.next_request = self.next_request.wrapping_add(1);
        tag
    }
}

impl Connection {
    /// Files the answer to a WATCH read in its watch set; the client hears `+OK` (or
    /// the error, and the set's EXEC will answer nil).
    fn record_watch(
        &mut self,
        generation: u64,
        keys: Vec<Vec<u8>>,
        result: Result<KvResponse, ClientError>,
    ) -> Result<KvResponse, ClientError> {
        let set = self.watch_sets.get_mut(&generation);
        match result {
            Ok(KvResponse::Watched { index, exists }) if exists.len() == keys.len() => {
                if let Some(set) = set {
                    set.index = Some(set.index.map_or(index, |i| i.min(index)));
                    set.keys.extend(keys.into_iter().zip(exists));
                }
                Ok(KvResponse::Ok)
            }
            other => {
                if let Some(set) = set {
                    set.failed = true;
                }
                other
            }
        }
    }

    /// Encodes a queued EXEC with its watch set as one `MULTI` entry. `Err`: the reply
    /// to give instead (the watch failed: nil; the entry is too large: an error).
    fn encode_exec(
        &mut self,
        exec: QueuedExec,
        context: &mut Context<'_>,
    ) -> Result<Bytes, Vec<u8>> {
        let set = self
            .watch_sets
            .remove(&exec.watch_generation)
            .unwrap_or_default();
        let mut reply = Vec::new();
        if set.failed {
            write_null_array_as(&mut reply, self.protocol);
            return Err(reply);
        }
        let arg_refs: Vec<Vec<&[u8]>> = exec
            .commands
            .iter()
            .map(|args| args.iter().map(Vec::as_slice).collect())
            .collect();
        let mut commands = Vec::with_capacity(arg_refs.len());
        for args in &arg_refs {
            match parse_command_args(args) {
                Ok(command) => commands.push(command),
                Err(error) => {
                    // Checked when queued; kept so a parser change cannot half-apply.
                    write_error(&mut reply, &format!("EXECABORT {error}"));
                    return Err(reply);
                }
            }
        }
        let command = Command::Multi {
            watch_index: set.index.unwrap_or(0),
            watched: set
                .keys
                .iter()
                .map(|(key, existed)| WatchedKey {
                    key,
                    existed: *existed,
                })
                .collect(),
            commands,
        };
        let shared = context.shared;
        context.encode_buffer.clear();
        let encoded = encode_request_at(
            Some(exec.session),
            Some(super::dispatch::clock_ms()),
            &command,
            &shared.config.kv_limits,
            context.encode_buffer,
        );
        let max_entry_bytes = shared.config.limits.max_entry_bytes;
        match encoded {
            Err(error) => write_error(&mut reply, &format!("EXECABORT {error}")),
            Ok(()) if context.encode_buffer.len() as u64 > max_entry_bytes => write_error(
                &mut reply,
                &format!(
                    "EXECABORT the transaction encodes to {} bytes, above the log entry \
                     limit of {max_entry_bytes} bytes (max-entry-bytes)",
                    context.encode_buffer.len()
                ),
            ),
            Ok(()) => return Ok(context.take_encoded()),
        }
        Err(reply)
    }

    /// Replaces the pending slot of `tag` with a reply made here.
    fn answer_locally(&mut self, tag: u64, reply: Vec<u8>) {
        if let Some(slot) = self
            .slots
            .iter_mut()
            .rev()
            .find(|slot| matches!(slot, Slot::Pending(t) if *t == tag))
        {
            *slot = Slot::Ready(reply);
        }
    }
}
