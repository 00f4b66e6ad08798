//! `--metrics-listen ADDR`: the node's status in the Prometheus text format.
//!
//! Why a fresh registry per scrape: every figure already lives in an atomic of the
//! node (`NodeStatus`, WAL statistics, the transport's counters), published by the raft
//! thread; copying them into `prometheus-client` metrics when scraped costs nothing on
//! the hot path and cannot drift from INFO. Names follow the Prometheus conventions
//! (`tally_` prefix, `_total` on counters, base units such as `_seconds`).
//!
//! The HTTP side is deliberately tiny: one thread, one request per connection, `GET
//! /metrics` answered, anything else 404; requests are bounded in size and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tally_engine::raft::Role;
use tally_engine::runtime::NodeHandle;

/// Largest HTTP request read (the request line and headers of a scrape are short).
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A client that sends its request slower than this is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

type Labels = Vec<(String, String)>;

/// The metrics text of `handle`'s node, in the Prometheus (OpenMetrics) text format.
pub fn render<R: Send + 'static>(handle: &NodeHandle<R>) -> String {
    let mut registry = Registry::default();
    raft_metrics(&mut registry, handle);
    wal_metrics(&mut registry, handle);
    replication_metrics(&mut registry, handle);
    let mut text = String::new();
    if encode(&mut text, &registry).is_err() {
        text.clear();
    }
    text
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let metric = Gauge::<i64, AtomicI64>::default();
    metric.set(value);
    registry.register(name, help, metric);
}

fn gauge_f64(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let metric = Gauge::<f64, AtomicU64>::default();
    metric.set(value);
    registry.register(name, help, metric);
}

/// `name` gets the `_total` suffix from the encoder.
fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric = Counter::<u64, AtomicU64>::default();
    metric.inc_by(value);
    registry.register(name, help, metric);
}

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn raft_metrics<R: Send + 'static>(registry: &mut Registry, handle: &NodeHandle<R>) {
    let status = handle.status();
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    gauge(
        registry,
        "tally_raft_term",
        "Current Raft term",
        as_i64(load(&status.term)),
    );
    gauge(
        registry,
        "tally_raft_is_leader",
        "1 while this node leads",
        i64::from(status.role() == Role::Leader),
    );
    gauge(
        registry,
        "tally_raft_commit_index",
        "Highest committed log index",
        as_i64(load(&status.commit_index)),
    );
    gauge(
        registry,
        "tally_raft_applied_index",
        "Highest log index applied to the state machine",
        as_i64(load(&status.applied_index)),
    );
    gauge(
        registry,
        "tally_raft_last_log_index",
        "Last index of the log",
        as_i64(load(&status.last_log_index)),
    );
    counter(
        registry,
        "tally_raft_proposals",
        "Commands accepted while leader",
        load(&status.proposals),
    );
    counter(
        registry,
        "tally_snapshots_taken",
        "Snapshots written by this node",
        load(&status.snapshots_taken),
    );
    counter(
        registry,
        "tally_snapshots_installed",
        "Snapshots received from a leader and installed",
        load(&status.snapshots_installed),
    );
    gauge_f64(
        registry,
        "tally_leader_lease_remaining_seconds",
        "Leader lease left (0 without a lease)",
        load(&status.lease_remaining_ms) as f64 / 1000.0,
    );
}

fn wal_metrics<R: Send + 'static>(registry: &mut Registry, handle: &NodeHandle<R>) {
    let wal = handle.wal_stats();
    counter(
        registry,
        "tally_wal_fsyncs",
        "WAL batches written and fsynced",
        wal.batches,
    );
    counter(
        registry,
        "tally_wal_entries",
        "Entries written to the WAL",
        wal.entries,
    );
    counter(
        registry,
        "tally_wal_written_bytes",
        "Bytes written to the WAL",
        wal.bytes,
    );
    let quantiles = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (label, q) in [("0.5", 0.5), ("0.99", 0.99)] {
        quantiles
            .get_or_create(&vec![("quantile".to_string(), label.to_string())])
            .set(wal.fsync_quantile_upper_us(q) as f64 / 1e6);
    }
    registry.register(
        "tally_wal_fsync_latency_seconds",
        "WAL write+fsync latency quantile (upper bound of its power-of-two bucket)",
        quantiles,
    );
}

fn replication_metrics<R: Send + 'static>(registry: &mut Registry, handle: &NodeHandle<R>) {
    let status = handle.status();
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let match_index = Family::<Labels, Gauge>::default();
    let lag = Family::<Labels, Gauge>::default();
    let connected = Family::<Labels, Gauge>::default();
    let voter = Family::<Labels, Gauge>::default();
    for member in status.members() {
        let labels = vec![("member".to_string(), member.id.to_string())];
        voter.get_or_create(&labels).set(i64::from(member.voter));
        if let Some(index) = member.match_index {
            match_index.get_or_create(&labels).set(as_i64(index));
        }
        if let Some(entries) = member.lag_entries {
            lag.get_or_create(&labels).set(as_i64(entries));
        }
        if let Some(up) = member.connected {
            connected.get_or_create(&labels).set(i64::from(up));
        }
    }
    registry.register(
        "tally_member_voter",
        "1 for a voter, 0 for a learner",
        voter,
    );
    registry.register(
        "tally_member_match_index",
        "Highest index known replicated on the member (leader's view)",
        match_index,
    );
    registry.register(
        "tally_member_lag_entries",
        "Entries the member is behind the leader's last index",
        lag,
    );
    registry.register(
        "tally_peer_connected",
        "1 while the connection to the member is up",
        connected,
    );
    let queues = Family::<Labels, Gauge>::default();
    for (queue, depth) in [
        ("requests", &status.request_queue_depth),
        ("inbound", &status.inbound_queue_depth),
        ("apply", &status.apply_queue_depth),
    ] {
        queues
            .get_or_create(&vec![("queue".to_string(), queue.to_string())])
            .set(as_i64(load(depth)));
    }
    registry.register(
        "tally_queue_depth",
        "Items waiting in the node's queues",
        queues,
    );
    let dropped = Family::<Labels, Counter>::default();
    for (direction, value) in [
        ("outbound", &status.dropped_outbound_messages),
        ("inbound", &status.dropped_inbound_messages),
    ] {
        dropped
            .get_or_create(&vec![("direction".to_string(), direction.to_string())])
            .inc_by(load(value));
    }
    registry.register(
        "tally_transport_dropped_messages",
        "Raft messages dropped (full queues, unknown peers, undecodable)",
        dropped,
    );
    counter(
        registry,
        "tally_transport_rejected_incarnations",
        "Peer connections refused: a member id presented another incarnation",
        load(&status.rejected_incarnations),
    );
}

/// The `--metrics-listen` endpoint: one thread serving `GET /metrics`.
pub struct MetricsServer {
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `handle`'s metrics on `listener` until shut down.
    pub fn start<R: Send + 'static>(
        listener: TcpListener,
        node_id: u64,
        handle: NodeHandle<R>,
    ) -> std::io::Result<MetricsServer> {
        let local_addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let stopping = Arc::clone(&stopping);
            std::thread::Builder::new()
                .name(format!("tally-metrics-{node_id}"))
                .spawn(move || serve(&listener, &stopping, &handle))?
        };
        tracing::info!(%local_addr, "metrics endpoint: GET /metrics");
        Ok(MetricsServer {
            local_addr,
            stopping,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the thread (a throwaway connection wakes its `accept`).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve<R: Send + 'static>(listener: &TcpListener, stopping: &AtomicBool, handle: &NodeHandle<R>) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::Acquire) {
            break;
        }
        match stream {
            Ok(stream) => {
                if let Err(error) = answer(stream, handle) {
                    tracing::debug!(%error, "metrics request failed");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Reads one request (bounded) and answers it; the connection is then closed.
fn answer<R: Send + 'static>(mut stream: TcpStream, handle: &NodeHandle<R>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 || request.len() + n > MAX_REQUEST_BYTES {
            break;
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let is_scrape = line.starts_with(b"GET /metrics ") || line.starts_with(b"GET /metrics?");
    let (status, content_type, body) = if is_scrape {
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(handle),
        )
    } else {
        ("404 Not Found", "text/plain", "GET /metrics\n".to_string())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::server::{Server, ServerConfig};

    fn scrape(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response");
        response
    }

    #[test]
    fn metrics_endpoint_serves_prometheus_text_named_by_convention() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ServerConfig::new(1, dir.path(), Vec::new());
        config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
        let server = Server::start(
            config,
            TcpListener::bind("127.0.0.1:0").expect("bind peer"),
            TcpListener::bind("127.0.0.1:0").expect("bind client"),
        )
        .expect("start");
        let addr = server.metrics_addr().expect("metrics served");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let response = scrape(addr, "/metrics");
            if response.contains("\ntally_raft_is_leader 1\n") {
                assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
                for name in [
                    "tally_raft_commit_index ",
                    "tally_wal_fsyncs_total ",
                    "tally_wal_fsync_latency_seconds{quantile=\"0.99\"} ",
                    "tally_member_match_index{member=\"1\"} ",
                    "tally_queue_depth{queue=\"requests\"} ",
                    "tally_transport_dropped_messages_total{direction=\"outbound\"} 0",
                    "tally_leader_lease_remaining_seconds ",
                ] {
                    assert!(response.contains(name), "{name} missing:\n{response}");
                }
                break;
            }
            assert!(Instant::now() < deadline, "never led: {response}");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(scrape(addr, "/other").starts_with("HTTP/1.1 404"));
        server.shutdown().expect("clean shutdown");
    }
}
