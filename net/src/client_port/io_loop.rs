//! One client I/O thread: a `mio` poll over its connections, its waker and its
//! reply channel.

use super::connection::{Connection, Verdict};
use super::id_map::IdMap;
use super::stream::{ClientStream, Stream, TlsStream};
use super::*;

/// One I/O thread: a `mio` poll over its connections, its waker and its reply channel.
pub(super) struct IoLoop {
    pub(super) shared: Arc<Shared>,
    pub(super) poll: Poll,
    pub(super) waker: Arc<LoopWaker>,
    /// The same waker, as the runtime sees it (cloned into every `ReplyTo`).
    pub(super) reply_waker: Arc<dyn ReplyWaker>,
    pub(super) new_connections: Receiver<(StdTcpStream, SocketAddr)>,
    pub(super) reply_tx: Sender<Reply<KvResponse>>,
    pub(super) reply_rx: Receiver<Reply<KvResponse>>,
    /// Open connections by id. Invariant: ids are never reused (stale replies to a
    /// closed connection find nothing), start at 1 and stay below 2^40.
    pub(super) connections: IdMap<Connection>,
    pub(super) next_connection_id: u64,
    /// Connections to drive this turn; each appears once (`Connection::scheduled`).
    pub(super) scheduled: Vec<u64>,
    pub(super) encode_buffer: Vec<u8>,
    /// Where encoded commands are copied for the node: many entries share one chunk
    /// (one allocation and one reference count instead of one per command).
    pub(super) arena: BytesMut,
    pub(super) read_scratch: Vec<u8>,
    /// Requests parsed in this pass over the scheduled connections, handed to the node
    /// in one batch at the end of the pass (one queue operation, one wake-up).
    pub(super) outbox: Vec<Submission<KvResponse>>,
    /// This thread's side of lease reads served here (its cached read view).
    pub(super) local_reader: LocalReader,
    /// Parses ahead of a connection's parser to find the keys of pipelined GETs
    /// (`Connection::warm_pipelined_gets`); kept here so its buffer is reused.
    pub(super) lookahead: RequestParser,
}

/// What a connection needs from its I/O thread while it is driven.
pub(super) struct Context<'a> {
    pub(super) shared: &'a Shared,
    pub(super) reply_tx: &'a Sender<Reply<KvResponse>>,
    pub(super) reply_waker: &'a Arc<dyn ReplyWaker>,
    pub(super) encode_buffer: &'a mut Vec<u8>,
    pub(super) arena: &'a mut BytesMut,
    pub(super) read_scratch: &'a mut [u8],
    pub(super) outbox: &'a mut Vec<Submission<KvResponse>>,
    pub(super) local_reader: &'a mut LocalReader,
    pub(super) lookahead: &'a mut RequestParser,
    /// Counts of this pass, added to the shared counters once at its end.
    pub(super) counts: &'a mut PassCounts,
}

/// What one pass over the scheduled connections counted, kept on the I/O thread and
/// added to [`ClientPortCounters`](super::ClientPortCounters) once per pass: counting
/// each command in the shared atomics made every client thread write the same cache
/// lines per request.
#[derive(Debug, Default)]
pub(super) struct PassCounts {
    /// Commands parsed (INFO `total_commands_processed`).
    pub(super) commands: u64,
    /// Reads answered on this thread under the lease (INFO `reads_lease_local`).
    pub(super) lease_reads: u64,
}

/// Size of the chunks encoded commands are copied into.
const ARENA_CHUNK_BYTES: usize = 64 * 1024;
/// Commands larger than this get an allocation of their own (a chunk would hold few).
const ARENA_MAX_COMMAND_BYTES: usize = 16 * 1024;

impl Context<'_> {
    /// The command in `encode_buffer` as the bytes the node logs and replicates: a
    /// slice of the I/O thread's current chunk (a new chunk when it is full), so the
    /// commands of one pass cost one allocation between them, and cloning one (log,
    /// WAL, peers, apply) is a reference count, never a first-clone allocation.
    pub(super) fn take_encoded(&mut self) -> Bytes {
        let len = self.encode_buffer.len();
        if len > ARENA_MAX_COMMAND_BYTES {
            return Bytes::copy_from_slice(self.encode_buffer);
        }
        if self.arena.capacity() < len {
            *self.arena = BytesMut::with_capacity(ARENA_CHUNK_BYTES);
        }
        self.arena.extend_from_slice(self.encode_buffer);
        self.arena.split().freeze()
    }
}

impl IoLoop {
    pub(super) fn new(
        shared: Arc<Shared>,
        poll: Poll,
        waker: Arc<LoopWaker>,
        new_connections: Receiver<(StdTcpStream, SocketAddr)>,
    ) -> IoLoop {
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        let read_chunk_bytes = shared.config.read_chunk_bytes.max(1);
        let local_reader = shared.handle.local_reads().reader();
        IoLoop {
            local_reader,
            lookahead: RequestParser::new(shared.config.limits.resp_limits()),
            reply_waker: Arc::clone(&waker) as Arc<dyn ReplyWaker>,
            shared,
            poll,
            waker,
            new_connections,
            reply_tx,
            reply_rx,
            connections: IdMap::default(),
            next_connection_id: 1,
            scheduled: Vec::new(),
            encode_buffer: Vec::new(),
            arena: BytesMut::new(),
            read_scratch: vec![0; read_chunk_bytes],
            outbox: Vec::new(),
        }
    }

    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut stopping_seen = false;
        let mut last_tick = Instant::now();
        loop {
            if let Err(error) = self.poll.poll(&mut events, Some(IO_TICK)) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(%error, "client I/O thread cannot poll; closing its connections");
                break;
            }
            for event in events.iter() {
                match event.token() {
                    WAKE_TOKEN => self.waker.acknowledge(),
                    Token(id) => {
                        let id = id as u64;
                        if let Some(connection) = self.connections.get_mut(&id) {
                            connection.on_poll_event(event.is_read_closed());
                        }
                        self.schedule(id);
                    }
                }
            }
            self.register_new_connections();
            self.route_replies();
            if !stopping_seen && self.shared.stopping.load(Ordering::Acquire) {
                stopping_seen = true;
                let ids: Vec<u64> = self.connections.keys().copied().collect();
                for id in ids {
                    if let Some(connection) = self.connections.get_mut(&id) {
                        connection.stop_reading();
                    }
                    self.schedule(id);
                }
            }
            if last_tick.elapsed() >= IO_TICK {
                last_tick = Instant::now();
                self.tick();
            }
            self.drive_scheduled();
            if stopping_seen && self.connections.is_empty() {
                break;
            }
        }
        let ids: Vec<u64> = self.connections.keys().copied().collect();
        for id in ids {
            self.close(id);
        }
    }

    pub(super) fn schedule(&mut self, id: u64) {
        if let Some(connection) = self.connections.get_mut(&id) {
            if !connection.scheduled {
                connection.scheduled = true;
                self.scheduled.push(id);
            }
        }
    }

    pub(super) fn register_new_connections(&mut self) {
        while let Ok((stream, remote)) = self.new_connections.try_recv() {
            if self.shared.stopping.load(Ordering::Acquire) {
                let _ = stream.shutdown(Shutdown::Both);
                self.shared.connection_dropped();
                continue;
            }
            let id = self.next_connection_id;
            self.next_connection_id += 1;
            debug_assert!(id < 1 << 40, "connection ids must fit the reply tag");
            let mut stream = TcpStream::from_std(stream);
            if let Err(error) = self.poll.registry().register(
                &mut stream,
                Token(id as usize),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                tracing::warn!(%remote, %error, "cannot register a client connection; closing it");
                self.shared.connection_dropped();
                continue;
            }
            let stream = match &self.shared.config.tls {
                None => Stream::Plain(stream),
                Some(tls) => match TlsStream::new(stream, tls) {
                    Ok(tls_stream) => Stream::Tls(Box::new(tls_stream)),
                    Err(error) => {
                        tracing::warn!(%remote, %error, "cannot start a TLS session; closing the connection");
                        self.shared.connection_dropped();
                        continue;
                    }
                },
            };
            self.connections
                .insert(id, Connection::new(id, stream, remote, &self.shared.config));
            self.schedule(id);
        }
    }

    /// Hands every reply on the channel to its connection (replies to closed
    /// connections are dropped).
    pub(super) fn route_replies(&mut self) {
        while let Ok(reply) = self.reply_rx.try_recv() {
            let id = reply.tag >> TAG_CONNECTION_SHIFT;
            // One lookup files the reply and schedules the connection.
            if let Some(connection) = self.connections.get_mut(&id) {
                connection.accept_reply(reply);
                if !connection.scheduled {
                    connection.scheduled = true;
                    self.scheduled.push(id);
                }
            }
        }
    }

    /// Periodic checks: a stopped node answers nothing more; a client that stopped
    /// reading its replies, or did not finish its TLS handshake in time, is dropped.
    pub(super) fn tick(&mut self) {
        let node_stopped = self.shared.handle.status().stopped.load(Ordering::Acquire);
        let now = Instant::now();
        let mut stalled = Vec::new();
        let mut overdue = Vec::new();
        let mut to_schedule = Vec::new();
        for (id, connection) in &mut self.connections {
            if node_stopped && connection.abandon_unanswered() {
                to_schedule.push(*id);
            }
            if connection
                .unsent_since
                .is_some_and(|since| now.duration_since(since) > CLIENT_WRITE_TIMEOUT)
            {
                stalled.push(*id);
            }
            if connection.stream.handshake_overdue(now) {
                tracing::info!(node_id = self.shared.config.node_id, remote = %connection.remote, "closing a client connection whose TLS handshake passed its deadline");
                overdue.push(*id);
            }
        }
        for id in overdue {
            self.close(id);
        }
        for id in to_schedule {
            self.schedule(id);
        }
        for id in stalled {
            tracing::info!(
                node_id = self.shared.config.node_id,
                "closing a client connection that stopped reading its replies"
            );
            self.close(id);
        }
    }

    pub(super) fn drive_scheduled(&mut self) {
        let mut ids = std::mem::take(&mut self.scheduled);
        let mut counts = PassCounts::default();
        for id in ids.drain(..) {
            let Some(connection) = self.connections.get_mut(&id) else {
                continue;
            };
            connection.scheduled = false;
            let mut context = Context {
                shared: &self.shared,
                reply_tx: &self.reply_tx,
                reply_waker: &self.reply_waker,
                encode_buffer: &mut self.encode_buffer,
                arena: &mut self.arena,
                read_scratch: &mut self.read_scratch,
                outbox: &mut self.outbox,
                local_reader: &mut self.local_reader,
                lookahead: &mut self.lookahead,
                counts: &mut counts,
            };
            match connection.drive(&mut context) {
                Ok(Verdict::Keep) => {}
                Ok(Verdict::Close) => self.close(id),
                Err(error) => {
                    tracing::debug!(remote = %connection.remote, %error, "client connection ended with an error");
                    self.close(id);
                }
            }
        }
        let counters = &self.shared.counters;
        if counts.commands > 0 {
            counters
                .commands
                .fetch_add(counts.commands, Ordering::Relaxed);
        }
        if counts.lease_reads > 0 {
            counters
                .reads_lease_local
                .fetch_add(counts.lease_reads, Ordering::Relaxed);
        }
        // Keep the allocation; drive never schedules (only events and replies do).
        debug_assert!(self.scheduled.is_empty());
        self.scheduled = ids;
        self.submit_outbox();
    }

    /// Hands the pass's requests to the node without ever blocking this thread (every
    /// other connection it serves would stall behind a full request queue). A batch that
    /// does not fit is answered `-BUSY` request by request and never proposed: the
    /// client retries, no write is duplicated, and PING, INFO and replies to earlier
    /// requests keep flowing. (Deferring the batch instead would hold replies in memory
    /// and hide the overload from clients that would rather retry elsewhere.)
    pub(super) fn submit_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        // The next pass likely parses as many: one allocation instead of a doubling series.
        let capacity = self.outbox.len();
        let batch = std::mem::replace(&mut self.outbox, Vec::with_capacity(capacity));
        let n_requests = batch.len() as u64;
        if !self.shared.handle.try_submit_batch(batch) {
            // Each request's ReplyTo got `Overloaded`; the replies arrive on this
            // thread's channel like any other (with a wake-up).
            self.shared
                .counters
                .busy_replies
                .fetch_add(n_requests, Ordering::Relaxed);
        }
    }

    pub(super) fn close(&mut self, id: u64) {
        if let Some(mut connection) = self.connections.remove(&id) {
            let _ = self.poll.registry().deregister(connection.stream.socket());
            connection.stream.close();
            self.shared.connection_dropped();
        }
    }
}
