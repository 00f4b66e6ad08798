//! The ledger's own front end: a line protocol over TCP, one thread per connection.
//!
//! Tally's `ServerBuilder` starts it once the node runs and hands it the node's handle;
//! this file is everything the database adds to speak to its clients. Readable with
//! `nc`:
//!
//! ```text
//! request  PROPOSE <hex>       a write: the log payload, hex (an ExactlyOnce session
//!                              request: the client numbers it, a retry resends it)
//!          READ <query>        a linearizable read: `balance <account>` or `total`
//! reply    DONE | AMOUNT <n> | REFUSED <reason>      the ledger's answer
//!          STALE <reason>      the session refused an old retry: nothing applied
//!          NOTLEADER <addr>|?  ask the leader (its client address, if known)
//!          UNKNOWN             the write may or may not apply: resend the same bytes
//!          RETRY <reason>      not done (overloaded, stopping): try again
//!          ERR <reason>        a malformed request; the connection is closed
//! ```
//!
//! Bounds: a line is at most [`MAX_LINE_BYTES`], at most [`MAX_CONNECTIONS`] are served
//! at once, a request waits at most [`MAX_REPLY_WAIT`] for the node.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError};
use tally_engine::runtime::{ClientError, NodeHandle, Reply, ReplyTo};
use tally_net::server::{FrontEnd, FrontEndContext, RunningFrontEnd, ServerError};
use tally_net::transport::PeerClientAddrs;

use crate::ledger::LedgerReply;
use crate::Response;

/// Longest request line, newline included (a PROPOSE of a long command fits).
pub const MAX_LINE_BYTES: usize = 4096;
/// Most connections served at once; more are answered `ERR` and closed.
pub const MAX_CONNECTIONS: usize = 256;
/// Longest wait for the node's answer to one request (then `UNKNOWN` or `RETRY`).
pub const MAX_REPLY_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting connection thread checks whether the server stops.
const STOP_POLL: Duration = Duration::from_millis(50);

/// What the front end has seen (tests wait on these).
#[derive(Debug, Default)]
pub struct LineCounters {
    /// Connections accepted (refused ones not included).
    pub connections: AtomicU64,
    /// PROPOSE lines handed to the node.
    pub proposals: AtomicU64,
    /// READ lines handed to the node.
    pub reads: AtomicU64,
}

/// The front end before the node starts: a bound listener.
pub struct LineFrontEnd {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl LineFrontEnd {
    /// A line-protocol front end on an already-bound listener.
    pub fn new(listener: TcpListener) -> std::io::Result<LineFrontEnd> {
        let local_addr = listener.local_addr()?;
        Ok(LineFrontEnd {
            listener,
            local_addr,
        })
    }
}

impl FrontEnd<Response> for LineFrontEnd {
    type Running = LineServer;

    fn client_addr(&self) -> Option<SocketAddr> {
        Some(self.local_addr)
    }

    fn start(self, context: FrontEndContext<'_, Response>) -> Result<LineServer, ServerError> {
        let shared = Arc::new(Shared {
            handle: context.handle,
            peer_client_addrs: context.peer_client_addrs,
            stopping: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            counters: LineCounters::default(),
            connections: Mutex::new(Vec::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let listener = self.listener;
        let accept = std::thread::Builder::new()
            .name(format!("ledger-accept-{}", context.config.id))
            .spawn(move || accept_loop(&accept_shared, &listener))
            .map_err(|source| ServerError::Io {
                what: "start the ledger front end",
                source,
            })?;
        Ok(LineServer {
            shared,
            local_addr: self.local_addr,
            accept: Some(accept),
        })
    }
}

/// The serving front end.
pub struct LineServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl LineServer {
    /// The bound client address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What it has seen so far.
    pub fn counters(&self) -> &LineCounters {
        &self.shared.counters
    }
}

impl RunningFrontEnd for LineServer {
    /// Stops accepting; a connection waiting for the node answers `UNKNOWN` (a write) or
    /// `RETRY` (a read) and closes. Runs before the node stops.
    fn shutdown(mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        // Wakes `accept` (it checks the flag after every connection).
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let connections = std::mem::take(&mut *lock(&self.shared.connections));
        for connection in connections {
            let _ = connection.join();
        }
    }
}

struct Shared {
    handle: NodeHandle<Response>,
    peer_client_addrs: PeerClientAddrs,
    stopping: AtomicBool,
    /// Connections being served; at most `MAX_CONNECTIONS`.
    active: AtomicUsize,
    counters: LineCounters,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut stream) = stream else {
            // EMFILE and the like: back off instead of spinning.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if shared.active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            shared.active.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.write_all(b"ERR too many connections\n");
            continue;
        }
        shared.counters.connections.fetch_add(1, Ordering::Relaxed);
        let connection_shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("ledger-conn".into())
            .spawn(move || {
                serve(&connection_shared, stream);
                connection_shared.active.fetch_sub(1, Ordering::AcqRel);
            });
        let mut connections = lock(&shared.connections);
        connections.retain(|thread| !thread.is_finished());
        match spawned {
            Ok(thread) => connections.push(thread),
            Err(_) => {
                shared.active.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// Serves one connection until it closes, sends a bad line, or the server stops.
fn serve(shared: &Shared, mut stream: TcpStream) {
    if stream.set_read_timeout(Some(STOP_POLL)).is_err() {
        return;
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 1024];
    while !shared.stopping.load(Ordering::Acquire) {
        if let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let (reply, keep_open) = answer(shared, &line[..end]);
            if stream.write_all(reply.as_bytes()).is_err() || !keep_open {
                break;
            }
            continue;
        }
        if pending.len() >= MAX_LINE_BYTES {
            let _ = stream.write_all(b"ERR line too long\n");
            break;
        }
        let room = (MAX_LINE_BYTES - pending.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => break,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// One request line → its reply line, and whether the connection stays open.
fn answer(shared: &Shared, line: &[u8]) -> (String, bool) {
    let Ok(line) = std::str::from_utf8(line) else {
        return ("ERR request is not UTF-8\n".into(), false);
    };
    let line = line.trim_end_matches('\r');
    let (verb, argument) = line.split_once(' ').unwrap_or((line, ""));
    let (sender, receiver) = bounded(1);
    let reply_to = ReplyTo::new(0, sender);
    match verb {
        "PROPOSE" => {
            let Some(payload) = decode_hex(argument) else {
                return ("ERR PROPOSE takes the payload in hex\n".into(), false);
            };
            shared.handle.propose(Bytes::from(payload), reply_to);
            shared.counters.proposals.fetch_add(1, Ordering::Relaxed);
            (wait(shared, &receiver, true), true)
        }
        "READ" => {
            shared
                .handle
                .read(Bytes::copy_from_slice(argument.as_bytes()), reply_to);
            shared.counters.reads.fetch_add(1, Ordering::Relaxed);
            (wait(shared, &receiver, false), true)
        }
        _ => ("ERR unknown request (PROPOSE, READ)\n".into(), false),
    }
}

/// Waits for the node's reply; a write whose reply does not come (stopping, or no answer
/// within `MAX_REPLY_WAIT`) may still apply, so it is `UNKNOWN`.
fn wait(shared: &Shared, receiver: &Receiver<Reply<Response>>, write: bool) -> String {
    let deadline = Instant::now() + MAX_REPLY_WAIT;
    loop {
        match receiver.recv_timeout(STOP_POLL) {
            Ok(reply) => return reply_line(shared, reply.result),
            Err(RecvTimeoutError::Timeout)
                if !shared.stopping.load(Ordering::Acquire) && Instant::now() < deadline => {}
            Err(_) if write => return "UNKNOWN\n".into(),
            Err(_) => return "RETRY no answer\n".into(),
        }
    }
}

fn reply_line(shared: &Shared, result: Result<Response, ClientError>) -> String {
    match result {
        Ok(Ok(LedgerReply::Done)) => "DONE\n".into(),
        Ok(Ok(LedgerReply::Amount(amount))) => format!("AMOUNT {amount}\n"),
        Ok(Ok(LedgerReply::Refused(reason))) => format!("REFUSED {}\n", one_line(&reason)),
        Ok(Err(session)) => format!("STALE {}\n", one_line(&session.to_string())),
        Err(ClientError::NotLeader { leader }) => {
            let addr = leader.and_then(|id| shared.peer_client_addrs.get(id));
            format!("NOTLEADER {}\n", addr.as_deref().unwrap_or("?"))
        }
        Err(ClientError::OutcomeUnknown) => "UNKNOWN\n".into(),
        Err(other) => format!("RETRY {}\n", one_line(&other.to_string())),
    }
}

fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// Lowercase hex of `bytes`.
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// The bytes of a hex string; `None` if it is not one (odd length, other characters).
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let value = |digit: u8| char::from(digit).to_digit(16).map(|v| v as u8);
    digits
        .chunks_exact(2)
        .map(|pair| Some((value(pair[0])? << 4) | value(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        let bytes = [0x00, 0x01, 0x7f, 0x80, 0xff];
        assert_eq!(encode_hex(&bytes), "00017f80ff");
        assert_eq!(decode_hex("00017F80ff").as_deref(), Some(&bytes[..]));
        for bad in ["0", "0g", "+1", " 1"] {
            assert_eq!(decode_hex(bad), None, "{bad}");
        }
    }
}
