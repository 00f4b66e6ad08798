//! Clients: plain RESP over TCP, one command in flight, recording what they observe.
//!
//! A client sends GET/SET/INCR/CAS to the member it believes leads, follows
//! `-NOTLEADER <addr>`, and reconnects (to another member) after a timeout or a lost
//! connection. Every operation becomes a [`tally_engine::lincheck::Entry`] unless it
//! definitely did not take effect (`-NOTLEADER`, `-TRYAGAIN`). Written values are
//! unique (`c<client>-<sequence>`) so the checker stays fast and a lost write is
//! recognisable.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tally_engine::lincheck::{Entry, History, Op, Outcome};
use tally_net::resp::{parse_reply, write_command, RespLimits, RespValue};

/// Keys holding a register (SET, GET, CAS).
pub const REGISTER_KEYS: [&str; 3] = ["r0", "r1", "r2"];
/// Keys holding a counter (INCR, GET).
pub const COUNTER_KEYS: [&str; 2] = ["n0", "n1"];

/// Largest reply a client buffers (replies here are a few bytes).
const MAX_REPLY_BYTES: usize = 1 << 20;

/// Why a call got no reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("malformed or oversized reply")]
    Protocol,
}

/// One RESP connection with a read timeout.
pub struct RespConnection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl RespConnection {
    pub fn connect(port: u16, timeout: Duration) -> std::io::Result<RespConnection> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(RespConnection {
            stream,
            buffer: Vec::new(),
        })
    }

    /// Sends one command and reads its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<RespValue, CallError> {
        let mut out = Vec::new();
        write_command(&mut out, args);
        self.stream.write_all(&out)?;
        loop {
            match parse_reply(&self.buffer, &RespLimits::default()) {
                Ok(Some((value, used))) => {
                    self.buffer.drain(..used);
                    return Ok(value);
                }
                Ok(None) if self.buffer.len() < MAX_REPLY_BYTES => {}
                _ => return Err(CallError::Protocol),
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk)? {
                0 => return Err(CallError::Closed),
                n => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// `INFO <section>` as text.
    pub fn info(&mut self, section: &str) -> Result<String, CallError> {
        match self.call(&[b"INFO", section.as_bytes()])? {
            RespValue::Bulk(Some(text)) => Ok(String::from_utf8_lossy(&text).into_owned()),
            _ => Err(CallError::Protocol),
        }
    }
}

/// What a worker counted besides its history.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClientCounts {
    /// Operations sent (any outcome).
    pub n_sent: u64,
    /// Answered with a state-machine reply.
    pub n_acknowledged: u64,
    /// Outcome unknown (timeout, `-UNKNOWN`, connection lost, `-BUSY`), reads included.
    pub n_unknown: u64,
    /// Definitely not applied (`-NOTLEADER`, `-TRYAGAIN`).
    pub n_refused: u64,
    /// Error replies the suite does not expect (counted, treated as unknown).
    pub n_unexpected_errors: u64,
}

/// How one reply is classified.
enum Classified {
    Done(Outcome),
    Unknown,
    NotLeader(Option<u16>),
    Refused,
    Unexpected,
}

fn classify(op: &Op, reply: RespValue) -> Classified {
    let outcome = match (op, reply) {
        (Op::Get { .. }, RespValue::Bulk(value)) => Outcome::Value(value),
        (Op::Set { .. }, RespValue::Simple(text)) if text == b"OK" => Outcome::Ok,
        (Op::Incr { .. }, RespValue::Integer(n)) => Outcome::Integer(n),
        (Op::Cas { .. }, RespValue::Integer(n @ (0 | 1))) => Outcome::Swapped(n == 1),
        (_, RespValue::Error(text)) => return classify_error(op, &text),
        _ => return Classified::Unexpected,
    };
    Classified::Done(outcome)
}

fn classify_error(op: &Op, text: &[u8]) -> Classified {
    let text = String::from_utf8_lossy(text);
    if let Some(addr) = text.strip_prefix("NOTLEADER ") {
        let port = addr
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok());
        return Classified::NotLeader(port);
    }
    if text.starts_with("TRYAGAIN") {
        return Classified::Refused;
    }
    if text.starts_with("UNKNOWN") || text.starts_with("BUSY") || text == "ERR the node stopped" {
        return Classified::Unknown;
    }
    if matches!(op, Op::Incr { .. }) && text.starts_with("ERR value is not an integer") {
        return Classified::Done(Outcome::Error);
    }
    Classified::Unexpected
}

/// One client thread's loop.
pub struct Worker {
    pub client: u64,
    /// Client ports of the members, by member index.
    pub ports: Vec<u16>,
    pub rng: ChaCha8Rng,
    pub start: Instant,
    pub stop: Arc<AtomicBool>,
    pub timeout: Duration,
    /// The last value this client saw per register key (CAS expects it).
    last_seen: Vec<Option<Vec<u8>>>,
    sequence: u64,
    target: usize,
    connection: Option<RespConnection>,
    pub history: History,
    pub counts: ClientCounts,
}

impl Worker {
    pub fn new(
        client: u64,
        ports: Vec<u16>,
        rng: ChaCha8Rng,
        start: Instant,
        stop: Arc<AtomicBool>,
    ) -> Worker {
        let target = client as usize % ports.len().max(1);
        Worker {
            client,
            ports,
            rng,
            start,
            stop,
            timeout: Duration::from_millis(1500),
            last_seen: vec![None; REGISTER_KEYS.len()],
            sequence: 0,
            target,
            connection: None,
            history: History::new(),
            counts: ClientCounts::default(),
        }
    }

    /// Runs until `stop`.
    pub fn run(mut self) -> Worker {
        while !self.stop.load(Ordering::Relaxed) {
            let (op, register) = self.next_op();
            self.execute(op, register);
        }
        self
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// A random operation; the register index when it is on a register key.
    fn next_op(&mut self) -> (Op, Option<usize>) {
        self.sequence += 1;
        let unique = format!("c{}-{}", self.client, self.sequence).into_bytes();
        if self.rng.gen_bool(0.4) {
            let key = COUNTER_KEYS.choose(&mut self.rng).copied().unwrap_or("n0");
            let key = key.as_bytes().to_vec();
            let op = if self.rng.gen_bool(0.6) {
                Op::Incr { key }
            } else {
                Op::Get { key }
            };
            return (op, None);
        }
        let index = self.rng.gen_range(0..REGISTER_KEYS.len());
        let key = REGISTER_KEYS[index].as_bytes().to_vec();
        let op = match (self.rng.gen_range(0..100), &self.last_seen[index]) {
            (0..40, _) => Op::Get { key },
            (40..75, _) | (_, None) => Op::Set { key, value: unique },
            (_, Some(expected)) => Op::Cas {
                key,
                expected: expected.clone(),
                new: unique,
            },
        };
        (op, Some(index))
    }

    fn args(op: &Op) -> Vec<&[u8]> {
        match op {
            Op::Get { key } => vec![b"GET", key],
            Op::Set { key, value } => vec![b"SET", key, value],
            Op::Incr { key } => vec![b"INCR", key],
            Op::Cas { key, expected, new } => vec![b"CAS", key, expected, new],
        }
    }

    fn connection(&mut self) -> Option<&mut RespConnection> {
        if self.connection.is_none() {
            let port = self.ports[self.target];
            match RespConnection::connect(port, self.timeout) {
                Ok(connection) => self.connection = Some(connection),
                Err(_) => {
                    self.switch_target(None);
                    std::thread::sleep(Duration::from_millis(50));
                    return None;
                }
            }
        }
        self.connection.as_mut()
    }

    /// Drops the connection and aims at `port`'s member, or a random other one.
    fn switch_target(&mut self, port: Option<u16>) {
        self.connection = None;
        let named = port.and_then(|port| self.ports.iter().position(|&p| p == port));
        self.target = match named {
            Some(index) if index != self.target => index,
            _ => (self.target + self.rng.gen_range(1..self.ports.len().max(2))) % self.ports.len(),
        };
    }

    fn execute(&mut self, op: Op, register: Option<usize>) {
        if self.connection().is_none() {
            return;
        }
        let invoke_ns = self.now_ns();
        self.counts.n_sent += 1;
        let reply = match self.connection.as_mut() {
            Some(connection) => connection.call(&Self::args(&op)),
            None => return,
        };
        let complete_ns = self.now_ns();
        let classified = match reply {
            Ok(reply) => classify(&op, reply),
            Err(_) => {
                self.switch_target(None);
                Classified::Unknown
            }
        };
        let outcome = match classified {
            Classified::Done(outcome) => {
                self.counts.n_acknowledged += 1;
                outcome
            }
            Classified::Unknown => {
                self.counts.n_unknown += 1;
                Outcome::Unknown
            }
            Classified::Unexpected => {
                self.counts.n_unexpected_errors += 1;
                self.counts.n_unknown += 1;
                Outcome::Unknown
            }
            Classified::NotLeader(port) => {
                self.counts.n_refused += 1;
                self.switch_target(port);
                if port.is_none() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
            Classified::Refused => {
                self.counts.n_refused += 1;
                return;
            }
        };
        self.remember(&op, &outcome, register);
        self.history.push(Entry {
            client: self.client,
            op,
            invoke_ns,
            complete_ns,
            outcome,
        });
    }

    /// Keeps the register's latest known value for the next CAS.
    fn remember(&mut self, op: &Op, outcome: &Outcome, register: Option<usize>) {
        let Some(index) = register else { return };
        let seen = match (op, outcome) {
            (Op::Get { .. }, Outcome::Value(value)) => value.clone(),
            (Op::Set { value, .. }, Outcome::Ok) => Some(value.clone()),
            (Op::Cas { new, .. }, Outcome::Swapped(true)) => Some(new.clone()),
            _ => return,
        };
        self.last_seen[index] = seen;
    }
}

/// Reads every key through the leader until each read is acknowledged (after the
/// cluster healed); the reads join the history as client 0.
pub fn final_reads(
    ports: &[u16],
    leader_port: u16,
    start: Instant,
    deadline: Duration,
    history: &mut History,
) -> Option<std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>> {
    let began = Instant::now();
    let mut port = leader_port;
    let mut finals = std::collections::BTreeMap::new();
    for key in REGISTER_KEYS.iter().chain(COUNTER_KEYS.iter()) {
        loop {
            if began.elapsed() > deadline {
                return None;
            }
            let invoke_ns = start.elapsed().as_nanos() as u64;
            let reply = RespConnection::connect(port, Duration::from_secs(2))
                .map_err(CallError::from)
                .and_then(|mut connection| connection.call(&[b"GET", key.as_bytes()]));
            let complete_ns = start.elapsed().as_nanos() as u64;
            match reply {
                Ok(RespValue::Bulk(value)) => {
                    finals.insert(key.as_bytes().to_vec(), value.clone());
                    history.push(Entry {
                        client: 0,
                        op: Op::Get {
                            key: key.as_bytes().to_vec(),
                        },
                        invoke_ns,
                        complete_ns,
                        outcome: Outcome::Value(value),
                    });
                    break;
                }
                Ok(RespValue::Error(text)) if text.starts_with(b"NOTLEADER ") => {
                    let named = String::from_utf8_lossy(&text)
                        .rsplit_once(':')
                        .and_then(|(_, p)| p.parse().ok());
                    port = named
                        .unwrap_or(ports[(began.elapsed().as_millis() as usize) % ports.len()]);
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Some(finals)
}
