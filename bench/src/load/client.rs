//! One client thread: its own TCP connection, pipelined pre-encoded requests, replies
//! scanned incrementally, latencies into a thread-local histogram.
//!
//! Closed loop: send `pipeline` requests, wait for all their replies, repeat. Open loop:
//! send on the [`OpenLoopWindow`] schedule with at most `pipeline` in flight and charge
//! each latency from the intended send time.
//!
//! Cluster targets: a `-NOTLEADER <addr>` reply counts as an error and the client then
//! reconnects to `<addr>`; `-NOTLEADER ?` (no leader known) makes it back off briefly
//! and try the next configured target.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::reply::{scan_reply, Reply, ReplyError};
use super::request::{OpChooser, OpKind, RequestEncoder};
use super::schedule::OpenLoopWindow;
use super::stats::ClientStats;

/// Pause after `-NOTLEADER ?` or a failed connection before the next attempt.
pub const BACKOFF: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a reply in the closed loop before the connection is declared dead.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The clock all clients of a run share. Times are nanoseconds since `base`.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    pub base: Instant,
    /// Start of the measured window (end of warmup).
    pub measure_start_ns: u64,
    /// End of the measured window; clients stop sending here.
    pub measure_end_ns: u64,
}

impl Timeline {
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    pub fn in_window(&self, at_ns: u64) -> bool {
        (self.measure_start_ns..self.measure_end_ns).contains(&at_ns)
    }
}

/// Where a client connects: the configured targets, or the leader a redirect named.
#[derive(Debug, Clone)]
pub struct Connector {
    targets: Arc<Vec<String>>,
    /// Index of the next configured target to try (mod the list length).
    next_target: usize,
    /// Leader address from the last `-NOTLEADER <addr>`, tried before the list.
    redirect: Option<String>,
}

impl Connector {
    pub fn new(targets: Arc<Vec<String>>, first_target: usize) -> Self {
        assert!(!targets.is_empty());
        Connector {
            targets,
            next_target: first_target,
            redirect: None,
        }
    }

    /// Connects to the redirect target if one is set, else to the current list entry.
    pub fn connect(&mut self) -> io::Result<TcpStream> {
        let address = match &self.redirect {
            Some(leader) => leader.clone(),
            None => self.targets[self.next_target % self.targets.len()].clone(),
        };
        let result = connect_to(&address);
        if result.is_err() {
            // Do not insist on a dead address: next time, the next list entry.
            self.redirect = None;
            self.next_target += 1;
        }
        result
    }

    pub fn follow_redirect(&mut self, leader: String) {
        self.redirect = Some(leader);
    }

    /// `-NOTLEADER ?`: forget any redirect and move on to the next configured target.
    pub fn try_another(&mut self) {
        self.redirect = None;
        self.next_target += 1;
    }
}

/// The password every connection of this run gives (`--password`), set once at start.
static PASSWORD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// Makes every later connection send `AUTH password` first (`--password`).
pub fn set_password(password: &str) {
    let _ = PASSWORD.set(password.as_bytes().to_vec());
}

/// The `--password` of this run, if any.
pub fn password() -> Option<&'static [u8]> {
    PASSWORD.get().map(Vec::as_slice)
}

/// Sends `AUTH password` and waits for `+OK` (bounded: one short line).
fn authenticate(stream: &mut TcpStream, password: &[u8]) -> io::Result<()> {
    let mut request = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n", password.len()).into_bytes();
    request.extend_from_slice(password);
    request.extend_from_slice(b"\r\n");
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    stream.write_all(&request)?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") && line.len() < 512 {
        if stream.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        line.push(byte[0]);
    }
    stream.set_read_timeout(None)?;
    if line != b"+OK\r\n" {
        let text = String::from_utf8_lossy(&line);
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("AUTH refused: {}", text.trim_end()),
        ));
    }
    Ok(())
}

/// Opens a TCP connection with Nagle off (authenticated if `--password` was given).
pub fn connect_to(address: &str) -> io::Result<TcpStream> {
    let mut last_error = io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("`{address}` resolves to no address"),
    );
    for socket_address in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&socket_address, CONNECT_TIMEOUT) {
            Ok(mut stream) => {
                stream.set_nodelay(true)?;
                if let Some(password) = password() {
                    authenticate(&mut stream, password)?;
                }
                return Ok(stream);
            }
            Err(error) => last_error = error,
        }
    }
    Err(io::Error::new(
        last_error.kind(),
        format!("connect {address}: {last_error}"),
    ))
}

/// What a reply means for the operation it answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    Ok,
    /// `-NOTLEADER <addr>` (Some) or `-NOTLEADER ?` (None).
    NotLeader(Option<&'a str>),
    Unknown,
    ServerError,
    /// The reply does not fit the request; the string says how.
    WrongReply,
}

/// Judges `reply` as the answer to a `kind` request with values of `value_size` bytes.
pub fn classify<'a>(kind: OpKind, reply: &Reply<'a>, value_size: usize) -> Outcome<'a> {
    match (kind, reply) {
        (_, Reply::Error(text)) => {
            let text = std::str::from_utf8(text).unwrap_or("");
            let mut words = text.split_ascii_whitespace();
            match words.next() {
                Some("NOTLEADER") => match words.next() {
                    Some("?") | None => Outcome::NotLeader(None),
                    Some(leader) => Outcome::NotLeader(Some(leader)),
                },
                Some("UNKNOWN") => Outcome::Unknown,
                _ => Outcome::ServerError,
            }
        }
        (OpKind::Set, Reply::Simple(b"OK")) => Outcome::Ok,
        (OpKind::Get, Reply::Bulk(Some(value))) if value.len() == value_size => Outcome::Ok,
        _ => Outcome::WrongReply,
    }
}

fn describe_reply(kind: OpKind, reply: &Reply<'_>, value_size: usize) -> String {
    match reply {
        Reply::Error(text) => format!("{kind:?}: -{}", String::from_utf8_lossy(text)),
        Reply::Simple(text) => format!("{kind:?}: unexpected +{}", String::from_utf8_lossy(text)),
        Reply::Integer(n) => format!("{kind:?}: unexpected :{n}"),
        Reply::Bulk(None) => format!("{kind:?}: nil (key missing)"),
        Reply::Bulk(Some(value)) => format!(
            "{kind:?}: {} byte value, expected {value_size}",
            value.len()
        ),
        Reply::Array => format!("{kind:?}: unexpected array"),
    }
}

/// A connection's receive buffer: bytes `start..end` are received and not yet scanned.
#[derive(Debug)]
struct ReadBuffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
    /// The buffer never grows past this (one largest reply plus slack).
    max_bytes: usize,
}

impl ReadBuffer {
    fn new(initial_bytes: usize, max_bytes: usize) -> Self {
        ReadBuffer {
            data: vec![0; initial_bytes.min(max_bytes)],
            start: 0,
            end: 0,
            max_bytes,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn consume(&mut self, n_bytes: usize) {
        self.start += n_bytes;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Reads once from `stream` into free space, making room first.
    fn fill_from(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
        if self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.data.len() < self.max_bytes {
                let grown = (self.data.len() * 2).clamp(4096, self.max_bytes);
                self.data.resize(grown, 0);
            } else {
                return Err(io::Error::other(
                    "reply larger than the receive buffer bound",
                ));
            }
        }
        let n_read = stream.read(&mut self.data[self.end..])?;
        if n_read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        self.end += n_read;
        Ok(n_read)
    }
}

/// Where a closed-loop client takes its operations from.
#[derive(Debug)]
pub enum OpSource {
    /// The workload: random keys, GET with probability read_ratio, until the deadline.
    Random(OpChooser),
    /// The preload: SET of keys `next, next + stride, ...` below `end`, then stop.
    Sequential { next: u64, stride: u64, end: u64 },
}

impl OpSource {
    pub(crate) fn next_op(&mut self) -> Option<(OpKind, u64)> {
        match self {
            OpSource::Random(chooser) => Some(chooser.next_op()),
            OpSource::Sequential { next, stride, end } => {
                if *next >= *end {
                    return None;
                }
                let key = *next;
                *next += *stride;
                Some((OpKind::Set, key))
            }
        }
    }
}

/// Everything a client thread needs.
#[derive(Debug)]
pub struct ClientSetup {
    pub connector: Connector,
    pub pipeline: usize,
    pub value_size: usize,
    /// Total operations completed, for the progress display (added per batch).
    pub progress: Arc<AtomicU64>,
}

impl ClientSetup {
    fn max_bulk_bytes(&self) -> usize {
        self.value_size.max(1 << 20)
    }

    fn read_buffer(&self) -> ReadBuffer {
        let initial = (self.pipeline * (self.value_size + 32)).clamp(16 << 10, 1 << 20);
        ReadBuffer::new(initial, self.max_bulk_bytes() + (64 << 10))
    }
}

/// What to do after a batch of replies.
#[derive(Debug, Default)]
struct AfterBatch {
    redirect_to: Option<String>,
    no_leader: bool,
}

impl AfterBatch {
    fn must_reconnect(&self) -> bool {
        self.redirect_to.is_some() || self.no_leader
    }
}

/// Records `outcome` of one operation completed at `at_ns`.
#[allow(clippy::too_many_arguments)]
fn record_outcome(
    stats: &mut ClientStats,
    timeline: &Timeline,
    kind: OpKind,
    key: u64,
    reply: &Reply<'_>,
    value_size: usize,
    at_ns: u64,
    latency_ns: u64,
    after: &mut AfterBatch,
    collect_failed_keys: bool,
) -> bool {
    let outcome = classify(kind, reply, value_size);
    let in_window = timeline.in_window(at_ns);
    if outcome == Outcome::Ok {
        if in_window {
            stats.ops_ok += 1;
            stats.latency_ns.saturating_record(latency_ns.max(1));
        }
        return true;
    }
    stats.note_error_sample(|| describe_reply(kind, reply, value_size));
    if collect_failed_keys {
        stats.failed_keys.push(key);
    }
    if in_window {
        match outcome {
            Outcome::NotLeader(_) => stats.errors.not_leader += 1,
            Outcome::Unknown => stats.errors.unknown += 1,
            Outcome::ServerError => stats.errors.server_other += 1,
            Outcome::WrongReply => stats.errors.wrong_reply += 1,
            Outcome::Ok => unreachable!("handled above"),
        }
    } else {
        stats.errors_outside_window += 1;
    }
    match outcome {
        Outcome::NotLeader(Some(leader)) => after.redirect_to = Some(leader.to_string()),
        Outcome::NotLeader(None) => after.no_leader = true,
        _ => {}
    }
    false
}

fn count_lost(
    stats: &mut ClientStats,
    timeline: &Timeline,
    n_ops: u64,
    error: &dyn std::fmt::Display,
) {
    if n_ops == 0 {
        return;
    }
    if timeline.in_window(timeline.now_ns()) {
        stats.errors.io += n_ops;
    } else {
        stats.errors_outside_window += n_ops;
    }
    stats.note_error_sample(|| format!("connection: {error}"));
}

/// Runs a closed-loop client until `timeline.measure_end_ns` (or until a sequential
/// source is exhausted). `deadline_ns` bounds the preload.
pub fn run_closed_loop(
    mut setup: ClientSetup,
    timeline: Timeline,
    mut source: OpSource,
    collect_failed_keys: bool,
) -> ClientStats {
    let encoder = RequestEncoder::new(setup.value_size);
    let mut stats = ClientStats::new();
    let mut send_buffer = Vec::with_capacity(setup.pipeline * encoder.max_request_bytes());
    let mut batch: Vec<(OpKind, u64)> = Vec::with_capacity(setup.pipeline);
    let mut receive = setup.read_buffer();
    let max_bulk_bytes = setup.max_bulk_bytes();
    let mut connection: Option<TcpStream> = None;
    let mut leftover: Vec<(OpKind, u64)> = Vec::new();

    while timeline.now_ns() < timeline.measure_end_ns {
        let stream = match &mut connection {
            Some(stream) => stream,
            None => match setup
                .connector
                .connect()
                .and_then(|s| s.set_read_timeout(Some(REPLY_TIMEOUT)).map(|()| s))
            {
                Ok(stream) => {
                    receive.clear();
                    connection.insert(stream)
                }
                Err(error) => {
                    count_lost(&mut stats, &timeline, 1, &error);
                    std::thread::sleep(BACKOFF);
                    continue;
                }
            },
        };

        send_buffer.clear();
        batch.clear();
        while batch.len() < setup.pipeline {
            let Some((kind, key)) = leftover.pop().or_else(|| source.next_op()) else {
                break;
            };
            encoder.append(&mut send_buffer, kind, key);
            batch.push((kind, key));
        }
        if batch.is_empty() {
            break;
        }
        let sent_ns = timeline.now_ns();
        if let Err(error) = stream.write_all(&send_buffer) {
            count_lost(&mut stats, &timeline, batch.len() as u64, &error);
            if collect_failed_keys {
                leftover.extend_from_slice(&batch);
            }
            connection = None;
            continue;
        }

        let mut after = AfterBatch::default();
        let mut answered = 0usize;
        let mut ok_in_batch = 0u64;
        let mut received_ns = sent_ns;
        let mut broken: Option<io::Error> = None;
        while answered < batch.len() {
            match scan_reply(receive.pending(), max_bulk_bytes) {
                Ok(Some((reply, used))) => {
                    let (kind, key) = batch[answered];
                    let ok = record_outcome(
                        &mut stats,
                        &timeline,
                        kind,
                        key,
                        &reply,
                        setup.value_size,
                        received_ns,
                        received_ns.saturating_sub(sent_ns),
                        &mut after,
                        collect_failed_keys,
                    );
                    ok_in_batch += u64::from(ok);
                    answered += 1;
                    receive.consume(used);
                }
                Ok(None) => match receive.fill_from(stream) {
                    Ok(_) => received_ns = timeline.now_ns(),
                    Err(error) => {
                        broken = Some(error);
                        break;
                    }
                },
                Err(error) => {
                    broken = Some(protocol_error(error));
                    break;
                }
            }
        }
        setup.progress.fetch_add(ok_in_batch, Ordering::Relaxed);
        if let Some(error) = broken {
            let unanswered = &batch[answered..];
            count_lost(&mut stats, &timeline, unanswered.len() as u64, &error);
            if collect_failed_keys {
                leftover.extend_from_slice(unanswered);
            }
            connection = None;
            std::thread::sleep(BACKOFF);
            continue;
        }
        if collect_failed_keys && !stats.failed_keys.is_empty() {
            // The preload retries what failed until the deadline.
            leftover.extend(stats.failed_keys.drain(..).map(|key| (OpKind::Set, key)));
        }
        apply_after_batch(&mut setup.connector, &mut connection, after);
    }
    if collect_failed_keys {
        stats
            .failed_keys
            .extend(leftover.iter().map(|&(_, key)| key));
    }
    stats
}

fn protocol_error(error: ReplyError) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad reply stream: {error}"),
    )
}

fn apply_after_batch(
    connector: &mut Connector,
    connection: &mut Option<TcpStream>,
    after: AfterBatch,
) {
    if let Some(leader) = after.redirect_to {
        connector.follow_redirect(leader);
        *connection = None;
    } else if after.no_leader {
        connector.try_another();
        *connection = None;
        std::thread::sleep(BACKOFF);
    }
}

/// Waits until `stream` is readable (or writable, when `want_write`) or `timeout_ns`
/// passes, with nanosecond resolution so open-loop sends leave on time.
fn wait_for_socket(stream: &TcpStream, want_write: bool, timeout_ns: u64) {
    let mut events = libc::POLLIN;
    if want_write {
        events |= libc::POLLOUT;
    }
    let mut poll_fd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events,
        revents: 0,
    };
    let timeout = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `poll_fd` is one valid pollfd and `timeout` a valid timespec, both living
    // across the call; a null signal mask means "leave the mask alone". The result only
    // tells why we woke up; the caller re-checks the socket and the clock either way.
    unsafe {
        libc::ppoll(&mut poll_fd, 1, &timeout, std::ptr::null());
    }
}

/// Runs an open-loop client at `rate_per_client` ops/s from `first_send_ns` until the
/// end of the measured window.
pub fn run_open_loop(
    mut setup: ClientSetup,
    timeline: Timeline,
    mut chooser: OpChooser,
    rate_per_client: f64,
    first_send_ns: u64,
) -> ClientStats {
    let encoder = RequestEncoder::new(setup.value_size);
    let mut stats = ClientStats::new();
    let mut window = OpenLoopWindow::new(first_send_ns, rate_per_client, setup.pipeline);
    let mut kinds: std::collections::VecDeque<OpKind> =
        std::collections::VecDeque::with_capacity(setup.pipeline);
    let mut send_buffer: Vec<u8> = Vec::with_capacity(setup.pipeline * encoder.max_request_bytes());
    let mut sent_bytes = 0usize;
    let mut receive = setup.read_buffer();
    let max_bulk_bytes = setup.max_bulk_bytes();
    let mut connection: Option<TcpStream> = None;
    // A redirect (or `NOTLEADER ?`) arrived: stop sending, drain, then reconnect.
    let mut after = AfterBatch::default();

    loop {
        let now = timeline.now_ns();
        if now >= timeline.measure_end_ns {
            break;
        }
        let stream = match &mut connection {
            Some(stream) => stream,
            None => match setup
                .connector
                .connect()
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
            {
                Ok(stream) => {
                    receive.clear();
                    send_buffer.clear();
                    sent_bytes = 0;
                    connection.insert(stream)
                }
                Err(error) => {
                    count_lost(&mut stats, &timeline, 1, &error);
                    std::thread::sleep(BACKOFF);
                    continue;
                }
            },
        };
        let mut progressed = false;
        if !after.must_reconnect() {
            while window.take_due(now).is_some() {
                let (kind, key) = chooser.next_op();
                encoder.append(&mut send_buffer, kind, key);
                kinds.push_back(kind);
            }
        }
        let mut broken: Option<io::Error> = None;
        if sent_bytes < send_buffer.len() {
            match stream.write(&send_buffer[sent_bytes..]) {
                Ok(n_written) => {
                    sent_bytes += n_written;
                    progressed = n_written > 0;
                    if sent_bytes == send_buffer.len() {
                        send_buffer.clear();
                        sent_bytes = 0;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => broken = Some(error),
            }
        }
        if broken.is_none() {
            match receive.fill_from(stream) {
                Ok(_) => {
                    progressed = true;
                    let received_ns = timeline.now_ns();
                    let mut ok_count = 0u64;
                    loop {
                        match scan_reply(receive.pending(), max_bulk_bytes) {
                            Ok(Some((reply, used))) => {
                                let (Some(intended_ns), Some(kind)) =
                                    (window.complete_oldest(), kinds.pop_front())
                                else {
                                    broken = Some(io::Error::new(
                                        io::ErrorKind::InvalidData,
                                        "reply without a request",
                                    ));
                                    break;
                                };
                                let ok = record_outcome(
                                    &mut stats,
                                    &timeline,
                                    kind,
                                    0,
                                    &reply,
                                    setup.value_size,
                                    received_ns,
                                    received_ns.saturating_sub(intended_ns),
                                    &mut after,
                                    false,
                                );
                                ok_count += u64::from(ok);
                                receive.consume(used);
                            }
                            Ok(None) => break,
                            Err(error) => {
                                broken = Some(protocol_error(error));
                                break;
                            }
                        }
                    }
                    setup.progress.fetch_add(ok_count, Ordering::Relaxed);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => broken = Some(error),
            }
        }
        if let Some(error) = broken {
            let lost = window.abandon_in_flight() as u64;
            kinds.clear();
            count_lost(&mut stats, &timeline, lost, &error);
            connection = None;
            after = AfterBatch::default();
            std::thread::sleep(BACKOFF);
            continue;
        }
        if window.in_flight() == 0 && after.must_reconnect() {
            apply_after_batch(
                &mut setup.connector,
                &mut connection,
                std::mem::take(&mut after),
            );
            continue;
        }
        if !progressed {
            let now = timeline.now_ns();
            let until_next_send = if !after.must_reconnect() && window.in_flight() < setup.pipeline
            {
                window.next_intended_ns().saturating_sub(now)
            } else {
                u64::MAX
            };
            let until_end = timeline.measure_end_ns.saturating_sub(now);
            let timeout_ns = until_next_send.min(until_end).min(10_000_000);
            if timeout_ns > 0 {
                wait_for_socket(stream, sent_bytes < send_buffer.len(), timeout_ns);
            }
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_judged_against_the_request_they_answer() {
        assert_eq!(classify(OpKind::Set, &Reply::Simple(b"OK"), 3), Outcome::Ok);
        assert_eq!(
            classify(OpKind::Get, &Reply::Bulk(Some(b"abc")), 3),
            Outcome::Ok
        );
        assert_eq!(
            classify(OpKind::Get, &Reply::Bulk(Some(b"ab")), 3),
            Outcome::WrongReply
        );
        assert_eq!(
            classify(OpKind::Get, &Reply::Bulk(None), 3),
            Outcome::WrongReply
        );
        assert_eq!(
            classify(OpKind::Set, &Reply::Integer(1), 3),
            Outcome::WrongReply
        );
        assert_eq!(
            classify(OpKind::Get, &Reply::Simple(b"OK"), 3),
            Outcome::WrongReply
        );
    }

    #[test]
    fn error_replies_are_sorted_by_kind_and_carry_the_leader_address() {
        assert_eq!(
            classify(OpKind::Set, &Reply::Error(b"NOTLEADER 127.0.0.1:7002"), 3),
            Outcome::NotLeader(Some("127.0.0.1:7002"))
        );
        assert_eq!(
            classify(OpKind::Set, &Reply::Error(b"NOTLEADER ?"), 3),
            Outcome::NotLeader(None)
        );
        assert_eq!(
            classify(OpKind::Set, &Reply::Error(b"UNKNOWN leadership changed"), 3),
            Outcome::Unknown
        );
        assert_eq!(
            classify(OpKind::Get, &Reply::Error(b"ERR unknown command"), 3),
            Outcome::ServerError
        );
    }
}
