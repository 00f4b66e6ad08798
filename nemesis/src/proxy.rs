//! One TCP proxy per directed peer link, so the nemesis can cut a direction alone.
//!
//! Why per direction: a `tally-server` sends to a peer only over the connection it
//! dialed (`--peer ID=ADDR`) and only reads from the connections peers dialed to it. So
//! the proxy in front of "A dials B" carries exactly the traffic A → B (plus the
//! handshake's answer); cutting it is a one-way partition, cutting both directions a
//! symmetric one. A cut closes every open connection through the proxy and refuses new
//! ones until healed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::NemesisError;

/// Shared between the proxy handle and its threads.
struct LinkState {
    cut: AtomicBool,
    /// Open connection pairs by id; a pump removes its pair when it ends, a cut closes
    /// them all.
    open: Mutex<HashMap<u64, [TcpStream; 2]>>,
    next_id: AtomicU64,
    target_port: u16,
}

/// A proxy listening on `port`, forwarding to the target's peer port.
pub struct LinkProxy {
    pub port: u16,
    state: Arc<LinkState>,
}

impl LinkProxy {
    /// Binds an ephemeral port and starts the accept thread (it lives as long as the
    /// process; it holds no child process).
    pub fn start(target_port: u16) -> Result<LinkProxy, NemesisError> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(NemesisError::io("bind proxy"))?;
        let port = listener
            .local_addr()
            .map_err(NemesisError::io("proxy address"))?
            .port();
        let state = Arc::new(LinkState {
            cut: AtomicBool::new(false),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            target_port,
        });
        let accept_state = Arc::clone(&state);
        std::thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || accept_loop(listener, accept_state))
            .map_err(NemesisError::io("spawn proxy thread"))?;
        Ok(LinkProxy { port, state })
    }

    /// Drops the link: closes what is open, refuses new connections.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        let pairs: Vec<[TcpStream; 2]> = lock(&self.state.open).drain().map(|(_, p)| p).collect();
        for [a, b] in pairs {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.state.cut.load(Ordering::SeqCst)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn accept_loop(listener: TcpListener, state: Arc<LinkState>) {
    for inbound in listener.incoming() {
        let Ok(inbound) = inbound else { continue };
        if state.cut.load(Ordering::SeqCst) {
            let _ = inbound.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(outbound) = TcpStream::connect(("127.0.0.1", state.target_port)) else {
            let _ = inbound.shutdown(Shutdown::Both);
            continue;
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let id = state.next_id.fetch_add(1, Ordering::Relaxed);
        let clones = (
            inbound.try_clone(),
            outbound.try_clone(),
            outbound.try_clone(),
            inbound.try_clone(),
        );
        let (Ok(in_read), Ok(out_write), Ok(out_read), Ok(in_write)) = clones else {
            continue;
        };
        lock(&state.open).insert(id, [inbound, outbound]);
        for (from, to) in [(in_read, out_write), (out_read, in_write)] {
            let pump_state = Arc::clone(&state);
            let _ = std::thread::Builder::new()
                .name(format!("proxy-pump-{id}"))
                .spawn(move || pump(from, to, id, pump_state));
        }
    }
}

/// Copies one direction until either side closes or the link is cut.
fn pump(mut from: TcpStream, mut to: TcpStream, id: u64, state: Arc<LinkState>) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if state.cut.load(Ordering::SeqCst) || to.write_all(&chunk[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    lock(&state.open).remove(&id);
}

/// Every directed link of a cluster of `n` members (ids 1..=n).
pub struct Network {
    /// `links[(from, to)]`: the proxy `from` dials to reach `to`.
    links: HashMap<(u64, u64), LinkProxy>,
}

impl Network {
    /// One proxy per ordered pair, forwarding to `peer_ports[to - 1]`.
    pub fn start(peer_ports: &[u16]) -> Result<Network, NemesisError> {
        let n = peer_ports.len() as u64;
        let mut links = HashMap::new();
        for from in 1..=n {
            for to in (1..=n).filter(|&to| to != from) {
                links.insert((from, to), LinkProxy::start(peer_ports[(to - 1) as usize])?);
            }
        }
        Ok(Network { links })
    }

    /// The port `from` dials to reach `to`.
    pub fn dial_port(&self, from: u64, to: u64) -> Option<u16> {
        self.links.get(&(from, to)).map(|proxy| proxy.port)
    }

    /// Cuts the direction `from` → `to`.
    pub fn cut(&self, from: u64, to: u64) {
        if let Some(proxy) = self.links.get(&(from, to)) {
            proxy.cut();
        }
    }

    /// Cuts both directions between every member of `side` and every other member.
    pub fn isolate(&self, side: &[u64]) {
        for (&(from, to), proxy) in &self.links {
            if side.contains(&from) != side.contains(&to) {
                proxy.cut();
            }
        }
    }

    pub fn heal_all(&self) {
        for proxy in self.links.values() {
            proxy.heal();
        }
    }

    /// How many directed links are cut.
    pub fn n_cut(&self) -> usize {
        self.links.values().filter(|proxy| proxy.is_cut()).count()
    }
}
