//! `tally-bench etcd`: the load generator's SET/GET workload against an etcd v3 cluster,
//! so that Tally's figures can be set beside etcd's (issue 5: "at least 50x the write
//! throughput of a 3-member etcd cluster ... at the same client count and value size").
//!
//! Workload shape, as in the RESP runs (`load/`): `--clients` threads, each with one
//! request in flight (closed loop, as etcd's own `benchmark --clients` does), keys
//! `key:000000000000` .. `key:<keys-1>` chosen uniformly, `--value-size` bytes per value,
//! `--read-ratio` of the operations are reads, a warmup that is not recorded and a
//! measured window whose latencies go into HDR histograms. The result is the same
//! [`RunReport`] as a RESP run, so the table and `--json` have the same columns.
//!
//! Protocol: etcd's JSON gRPC gateway (`POST /v3/kv/put`, `POST /v3/kv/range`, keys and
//! values base64), over a blocking HTTP/1.1 client with keep-alive, one connection per
//! client thread. This keeps the crate free of an async runtime and a gRPC stack, at a
//! cost on etcd's side: every request is decoded from JSON, re-encoded as protobuf and
//! passed through an in-process gRPC call. That cost is CPU, not disk, so it matters
//! little next to the fsync of every commit, but it is not zero (see docs/BENCHMARKS.md, "Tally versus etcd").
//! Reads are etcd's default range requests, i.e. linearizable (`serializable: false`).
//!
//! Which member the clients talk to: by default all of them go to the leader, found by
//! asking every endpoint for `/v3/maintenance/status` (a member is the leader when its
//! own id equals the leader id it reports). A follower would forward each proposal to
//! the leader over the peer connection, one more hop per write; sending to the leader
//! gives etcd its best write figure, which is the fair baseline for a "Tally is N times
//! faster" claim. `--spread` instead spreads the clients round-robin over the endpoints
//! (what a client library with several endpoints does).

use std::sync::{Arc, Barrier, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use clap::Args;
use serde_json::Value;

use crate::load::args::{
    parse_bounded_u64, parse_keys, parse_nonnegative_seconds, parse_positive_seconds, parse_ratio,
    RunConfig, KEY_DIGITS, MAX_CLIENTS, MAX_KEYS,
};
use crate::load::client::{OpSource, Timeline};
use crate::load::info::StorageFigures;
use crate::load::report::{self, RunReport};
use crate::load::request::{value_bytes, OpChooser, OpKind};
use crate::load::stats::ClientStats;

/// Largest value this subcommand writes: etcd refuses requests above 1.5 MiB by default
/// (`--max-request-bytes`), and a value travels base64-encoded (4/3 larger).
pub const MAX_ETCD_VALUE_SIZE_BYTES: usize = 1 << 20;
/// Largest reply body read for a put or status request (etcd's are ~250 bytes).
const MAX_SMALL_REPLY_BYTES: u64 = 64 << 10;
/// How long the whole run waits for the cluster to report a leader.
const LEADER_DEADLINE: Duration = Duration::from_secs(15);
/// Pause after a failed connection so that a dead endpoint is not hammered.
const BACKOFF: Duration = Duration::from_millis(50);
/// Most characters of a reply body quoted in an error message.
const EXCERPT_CHARS: usize = 200;
/// Client threads that write the key space before a run with reads.
const PRELOAD_CLIENTS: usize = 16;

/// Flags of `tally-bench etcd`.
#[derive(Args, Debug, Clone)]
pub struct EtcdArgs {
    /// Client URL of an etcd member, `http://HOST:PORT`. Repeat the flag or give a
    /// comma-separated list for the members of a cluster.
    #[arg(
        long = "endpoints",
        value_name = "URL",
        required = true,
        value_delimiter = ',',
        value_parser = parse_endpoint
    )]
    pub endpoints: Vec<Endpoint>,
    /// Client threads, each with one HTTP connection and one request in flight.
    #[arg(long, default_value_t = 50, value_parser = parse_clients)]
    pub clients: usize,
    /// Size of each value in bytes (reads must return this size).
    #[arg(long, default_value_t = 100, value_parser = parse_value_size)]
    pub value_size: usize,
    /// Key space: keys `key:000000000000` .. `key:<keys-1>`, chosen uniformly.
    #[arg(long, default_value_t = 100_000, value_parser = parse_keys)]
    pub keys: u64,
    /// Fraction of operations that are (linearizable) reads. When above 0, every key is
    /// written once before the run so that reads find a value.
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    pub read_ratio: f64,
    /// Measured time, in seconds.
    #[arg(long, default_value_t = 5.0, value_parser = parse_positive_seconds)]
    pub seconds: f64,
    /// Unrecorded time before the measured window, in seconds.
    #[arg(long, default_value_t = 1.0, value_parser = parse_nonnegative_seconds)]
    pub warmup: f64,
    /// Spread the clients round-robin over all endpoints instead of sending every
    /// request to the leader.
    #[arg(long)]
    pub spread: bool,
    /// Give up on one request after this many milliseconds (counted as an I/O error).
    #[arg(long, default_value_t = 10_000, value_parser = parse_timeout_ms)]
    pub timeout_ms: u64,
    /// Print one JSON object (the RESP run's keys plus `system` and `etcd_version`).
    #[arg(long)]
    pub json: bool,
    /// Seed of the key and operation choice (each client derives its own stream).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// An etcd client URL, validated and normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http://HOST:PORT`, without a trailing slash. Invariant: the port is a number
    /// in 1..=65535 and the host is not empty.
    base: String,
}

impl Endpoint {
    pub fn url(&self, path: &str) -> String {
        debug_assert!(path.starts_with('/'));
        format!("{}{path}", self.base)
    }

    pub fn as_str(&self) -> &str {
        &self.base
    }
}

/// Parses `http://HOST:PORT` (a trailing `/` is allowed, nothing else after the port).
pub fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    let text = text.trim();
    if text.starts_with("https://") {
        return Err(format!(
            "`{text}`: https is not supported (this client speaks plain HTTP; run etcd \
             without TLS on loopback and use http://)"
        ));
    }
    let Some(rest) = text.strip_prefix("http://") else {
        return Err(format!(
            "`{text}` is not an etcd client URL of the form http://HOST:PORT"
        ));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "`{text}`: give only http://HOST:PORT, without a path, query or user"
        ));
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err(format!("`{text}` has no port (expected http://HOST:PORT)"));
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("`{text}` has no host (expected http://HOST:PORT)"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "`{text}`: an IPv6 host must be in brackets, e.g. http://[::1]:2379"
        ));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(Endpoint {
            base: format!("http://{host}:{port}"),
        }),
        _ => Err(format!(
            "`{text}`: `{port}` is not a port number in 1..=65535"
        )),
    }
}

fn parse_clients(text: &str) -> Result<usize, String> {
    parse_bounded_u64(text, 1, MAX_CLIENTS as u64).map(|v| v as usize)
}

fn parse_value_size(text: &str) -> Result<usize, String> {
    parse_bounded_u64(text, 0, MAX_ETCD_VALUE_SIZE_BYTES as u64).map(|v| v as usize)
}

fn parse_timeout_ms(text: &str) -> Result<u64, String> {
    parse_bounded_u64(text, 1, 3_600_000)
}

// ---------------------------------------------------------------------------------------
// Wire format

/// Length of a key: `key:` and [`KEY_DIGITS`] decimal digits, as in the RESP runs.
pub const KEY_BYTES: usize = 4 + KEY_DIGITS;

/// The key of index `key_index`, e.g. `key:000000000042`.
pub fn key_bytes(key_index: u64) -> [u8; KEY_BYTES] {
    debug_assert!(key_index < MAX_KEYS);
    let mut key = [b'0'; KEY_BYTES];
    key[..4].copy_from_slice(b"key:");
    let mut rest = key_index;
    for digit in key[4..].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    key
}

/// Body of `POST /v3/kv/put`. `value_base64` is the value already base64-encoded (done
/// once per client); base64 text needs no JSON escaping.
pub fn put_body(key: &[u8], value_base64: &str) -> String {
    debug_assert!(value_base64.bytes().all(is_base64_byte));
    format!(
        "{{\"key\":\"{}\",\"value\":\"{value_base64}\"}}",
        BASE64.encode(key)
    )
}

/// Body of `POST /v3/kv/range` for one key (linearizable: `serializable` left false).
pub fn range_body(key: &[u8]) -> String {
    format!("{{\"key\":\"{}\"}}", BASE64.encode(key))
}

fn is_base64_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'/' | b'=')
}

/// What kind of failure an operation met; maps one-to-one onto
/// [`crate::load::stats::ErrorCounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// etcd said it has no leader (`etcdserver: no leader`).
    NotLeader,
    /// The write's outcome is unknown (leader changed, request timed out in etcd).
    Unknown,
    /// Any other error reply.
    Server,
    /// A reply that is not what the request asks for (bad JSON, missing key, a value of
    /// another size, a body over the size cap).
    WrongReply,
    /// No reply: connection refused or broken, client timeout.
    Io,
}

/// A failed operation, with a description for the report's error sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: String,
}

impl Failure {
    fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Failure {
            kind,
            detail: detail.into(),
        }
    }
}

/// The start of `body` as printable text, for error messages.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .take(EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > EXCERPT_CHARS {
        out.push_str("...");
    }
    out
}

/// Sorts an etcd error message into the failure kinds (messages as etcd 3.4/3.5 word
/// them in `etcdserver/api/v3rpc/rpctypes`).
fn failure_kind_of_message(message: &str) -> FailureKind {
    if message.contains("no leader") {
        FailureKind::NotLeader
    } else if message.contains("leader changed")
        || message.contains("request timed out")
        || message.contains("timed out due to")
    {
        FailureKind::Unknown
    } else {
        FailureKind::Server
    }
}

/// Checks one reply: `status` and `body` of the HTTP exchange for an operation of
/// `kind`; reads must return exactly one key with a value of `value_size` bytes.
pub fn check_reply(
    kind: OpKind,
    status: u16,
    body: &[u8],
    value_size: usize,
) -> Result<(), Failure> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if status != 200 {
        // The gateway's error body: {"error": "...", "message": "...", "code": N}.
        let message = json.as_ref().and_then(|v| {
            v.get("message")
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        let kind = message
            .as_deref()
            .map_or(FailureKind::Server, failure_kind_of_message);
        return Err(Failure::new(
            kind,
            format!("HTTP {status}: {}", excerpt(body)),
        ));
    }
    let Some(json) = json else {
        return Err(Failure::new(
            FailureKind::WrongReply,
            format!("reply is not JSON: {}", excerpt(body)),
        ));
    };
    if !matches!(json.get("header"), Some(Value::Object(_))) {
        return Err(Failure::new(
            FailureKind::WrongReply,
            format!("reply has no etcd response header: {}", excerpt(body)),
        ));
    }
    match kind {
        OpKind::Set => Ok(()),
        OpKind::Get => {
            let kvs = json.get("kvs").and_then(Value::as_array);
            let [kv] = kvs.map(Vec::as_slice).unwrap_or_default() else {
                return Err(Failure::new(
                    FailureKind::WrongReply,
                    format!(
                        "range returned {} keys, expected 1",
                        kvs.map_or(0, Vec::len)
                    ),
                ));
            };
            // The gateway omits empty fields: no "value" means an empty value.
            let encoded = match kv.get("value") {
                None => "",
                Some(Value::String(text)) => text.as_str(),
                Some(_) => {
                    return Err(Failure::new(
                        FailureKind::WrongReply,
                        "range value is not a string",
                    ))
                }
            };
            // Compare the decoded length without decoding (and allocating) blindly:
            // a base64 text longer than the value's encoding cannot match.
            if encoded.len() > base64::encoded_len(value_size, true).unwrap_or(usize::MAX) {
                return Err(Failure::new(
                    FailureKind::WrongReply,
                    format!(
                        "range value has {} base64 characters, more than {value_size} bytes need",
                        encoded.len()
                    ),
                ));
            }
            match BASE64.decode(encoded) {
                Ok(value) if value.len() == value_size => Ok(()),
                Ok(value) => Err(Failure::new(
                    FailureKind::WrongReply,
                    format!(
                        "range value has {} bytes, expected {value_size}",
                        value.len()
                    ),
                )),
                Err(error) => Err(Failure::new(
                    FailureKind::WrongReply,
                    format!("range value is not base64: {error}"),
                )),
            }
        }
    }
}

/// One member's answer to `/v3/maintenance/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub member_id: u64,
    /// Id of the leader this member knows of; 0 when it knows none.
    pub leader_id: u64,
    pub version: String,
}

impl MemberStatus {
    pub fn is_leader(&self) -> bool {
        self.leader_id != 0 && self.member_id == self.leader_id
    }
}

/// 64-bit integers come as JSON strings from the gateway; accept numbers as well.
fn json_u64(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::String(text) => text.parse().ok(),
        Value::Number(number) => number.as_u64(),
        _ => None,
    }
}

/// Parses a status reply body.
pub fn parse_status(body: &[u8]) -> Result<MemberStatus, String> {
    let json: Value = serde_json::from_slice(body)
        .map_err(|error| format!("status reply is not JSON ({error}): {}", excerpt(body)))?;
    let member_id = json_u64(json.get("header").and_then(|h| h.get("member_id")))
        .ok_or_else(|| format!("status reply has no header.member_id: {}", excerpt(body)))?;
    Ok(MemberStatus {
        member_id,
        leader_id: json_u64(json.get("leader")).unwrap_or(0),
        version: json
            .get("version")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string(),
    })
}

// ---------------------------------------------------------------------------------------
// HTTP

/// One client's connection to one endpoint (ureq keeps the connection alive).
struct HttpClient {
    agent: ureq::Agent,
}

impl HttpClient {
    fn new(timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            // Loopback benchmarks must not go through a proxy from the environment.
            .proxy(None)
            // Non-2xx replies are read like any other: their body says what failed.
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_idle_connections(4)
            .max_idle_connections_per_host(4)
            .build();
        HttpClient {
            agent: ureq::Agent::new_with_config(config),
        }
    }

    /// POSTs a JSON `body` to `url`; returns the status and at most `max_reply_bytes`
    /// of reply body (a longer body is a failure, not a truncation).
    fn post(&self, url: &str, body: &str, max_reply_bytes: u64) -> Result<(u16, Vec<u8>), Failure> {
        let mut response = self
            .agent
            .post(url)
            .content_type("application/json")
            .send(body)
            .map_err(|error| Failure::new(FailureKind::Io, format!("{url}: {error}")))?;
        let status = response.status().as_u16();
        let reply = response
            .body_mut()
            .with_config()
            .limit(max_reply_bytes)
            .read_to_vec()
            .map_err(|error| match error {
                ureq::Error::BodyExceedsLimit(limit) => Failure::new(
                    FailureKind::WrongReply,
                    format!("{url}: reply body larger than {limit} bytes"),
                ),
                other => Failure::new(FailureKind::Io, format!("{url}: {other}")),
            })?;
        Ok((status, reply))
    }
}

/// Largest reply accepted for a range of one key with a value of `value_size` bytes:
/// its base64 encoding plus ample room for the header and metadata.
pub fn max_range_reply_bytes(value_size: usize) -> u64 {
    MAX_SMALL_REPLY_BYTES + 2 * value_size as u64
}

/// Asks one endpoint for its status.
fn fetch_status(client: &HttpClient, endpoint: &Endpoint) -> Result<MemberStatus, String> {
    let url = endpoint.url("/v3/maintenance/status");
    match client.post(&url, "{}", MAX_SMALL_REPLY_BYTES) {
        Ok((200, body)) => parse_status(&body).map_err(|error| format!("{url}: {error}")),
        Ok((status, body)) => Err(format!("{url}: HTTP {status}: {}", excerpt(&body))),
        Err(failure) => Err(failure.detail),
    }
}

/// The cluster as seen before the run.
#[derive(Debug)]
struct Discovery {
    /// The endpoint whose member is the leader.
    leader: Endpoint,
    version: String,
}

/// Finds the leader among `endpoints`, waiting up to [`LEADER_DEADLINE`] for an
/// election. Fails at once when no endpoint answers at all.
fn discover(endpoints: &[Endpoint], timeout: Duration) -> Result<Discovery, String> {
    let client = HttpClient::new(timeout.min(Duration::from_secs(5)));
    let started = Instant::now();
    loop {
        let mut errors = Vec::new();
        let mut answered = None;
        for endpoint in endpoints {
            match fetch_status(&client, endpoint) {
                Ok(status) if status.is_leader() => {
                    return Ok(Discovery {
                        leader: endpoint.clone(),
                        version: status.version,
                    })
                }
                Ok(status) => answered = Some(status),
                Err(error) => errors.push(error),
            }
        }
        if answered.is_none() {
            return Err(format!("etcd unreachable: {}", errors.join("; ")));
        }
        if started.elapsed() >= LEADER_DEADLINE {
            return Err(format!(
                "no endpoint reports itself as the leader after {} s{}",
                LEADER_DEADLINE.as_secs(),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", errors.join("; "))
                }
            ));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------
// Clients

/// Everything one client thread needs.
struct EtcdClient {
    http: HttpClient,
    put_url: String,
    range_url: String,
    value_base64: String,
    value_size: usize,
}

impl EtcdClient {
    fn new(endpoint: &Endpoint, value_size: usize, timeout: Duration) -> Self {
        EtcdClient {
            http: HttpClient::new(timeout),
            put_url: endpoint.url("/v3/kv/put"),
            range_url: endpoint.url("/v3/kv/range"),
            value_base64: BASE64.encode(value_bytes(value_size)),
            value_size,
        }
    }

    /// Performs one operation and checks its reply.
    fn perform(&self, kind: OpKind, key_index: u64) -> Result<(), Failure> {
        let key = key_bytes(key_index);
        let (url, body, max_reply_bytes) = match kind {
            OpKind::Set => (
                &self.put_url,
                put_body(&key, &self.value_base64),
                MAX_SMALL_REPLY_BYTES,
            ),
            OpKind::Get => (
                &self.range_url,
                range_body(&key),
                max_range_reply_bytes(self.value_size),
            ),
        };
        let (status, reply) = self.http.post(url, &body, max_reply_bytes)?;
        check_reply(kind, status, &reply, self.value_size)
    }
}

/// Counts one failure in `stats`.
fn record_failure(stats: &mut ClientStats, failure: &Failure, in_window: bool) {
    stats.note_error_sample(|| failure.detail.clone());
    if !in_window {
        stats.errors_outside_window += 1;
        return;
    }
    let errors = &mut stats.errors;
    match failure.kind {
        FailureKind::NotLeader => errors.not_leader += 1,
        FailureKind::Unknown => errors.unknown += 1,
        FailureKind::Server => errors.server_other += 1,
        FailureKind::WrongReply => errors.wrong_reply += 1,
        FailureKind::Io => errors.io += 1,
    }
}

/// A closed-loop client: one request in flight until the window ends (or the source
/// runs out). An operation counts when it completes inside the window.
fn run_client(
    client: EtcdClient,
    timeline: Timeline,
    mut source: OpSource,
    collect_failed_keys: bool,
) -> ClientStats {
    let mut stats = ClientStats::new();
    while timeline.now_ns() < timeline.measure_end_ns {
        let Some((kind, key)) = source.next_op() else {
            break;
        };
        let sent_ns = timeline.now_ns();
        let outcome = client.perform(kind, key);
        let done_ns = timeline.now_ns();
        let in_window = timeline.in_window(done_ns);
        match outcome {
            Ok(()) => {
                if in_window {
                    stats.ops_ok += 1;
                    stats
                        .latency_ns
                        .saturating_record(done_ns.saturating_sub(sent_ns).max(1));
                }
            }
            Err(failure) => {
                record_failure(&mut stats, &failure, in_window);
                if collect_failed_keys {
                    stats.failed_keys.push(key);
                }
                if failure.kind == FailureKind::Io {
                    thread::sleep(BACKOFF);
                }
            }
        }
    }
    stats
}

/// Writes every key once so that reads find values of the configured size.
fn preload(endpoints: &[Endpoint], args: &EtcdArgs) -> Result<String, String> {
    let started = Instant::now();
    let timeline = Timeline {
        base: started,
        measure_start_ns: 0,
        measure_end_ns: u64::MAX,
    };
    let n_threads = PRELOAD_CLIENTS.min(args.keys as usize).max(1);
    let timeout = Duration::from_millis(args.timeout_ms);
    let handles = (0..n_threads)
        .map(|index| {
            let client = EtcdClient::new(
                &endpoints[index % endpoints.len()],
                args.value_size,
                timeout,
            );
            let source = OpSource::Sequential {
                next: index as u64,
                stride: n_threads as u64,
                end: args.keys,
            };
            thread::Builder::new()
                .name(format!("etcd-preload-{index}"))
                .spawn(move || run_client(client, timeline, source, true))
                .map_err(|error| format!("spawn preload thread: {error}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let total = ClientStats::join_all(handles, "client")?;
    let missing = total.failed_keys.len() as u64;
    if missing == args.keys {
        return Err(format!(
            "preload wrote none of the {} keys: {}",
            args.keys,
            total.error_sample.unwrap_or_else(|| "no reply".into())
        ));
    }
    Ok(format!(
        "preload: {} of {} keys written in {:.1} s{}",
        args.keys - missing,
        args.keys,
        started.elapsed().as_secs_f64(),
        total
            .error_sample
            .map(|sample| format!(" (first error: {sample})"))
            .unwrap_or_default()
    ))
}

/// The measured run: all clients start together after a warmup.
fn run_measured(endpoints: &[Endpoint], args: &EtcdArgs) -> Result<ClientStats, String> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let ready = Arc::new(Barrier::new(args.clients + 1));
    let shared_timeline: Arc<OnceLock<Timeline>> = Arc::new(OnceLock::new());
    let mut handles = Vec::with_capacity(args.clients);
    for index in 0..args.clients {
        let client = EtcdClient::new(
            &endpoints[index % endpoints.len()],
            args.value_size,
            timeout,
        );
        let chooser = OpChooser::new(
            args.seed
                .wrapping_mul(0x1_0000_0001)
                .wrapping_add(index as u64),
            args.keys,
            args.read_ratio,
        );
        let (ready, shared_timeline) = (ready.clone(), shared_timeline.clone());
        let handle = thread::Builder::new()
            .name(format!("etcd-client-{index}"))
            .stack_size(256 << 10)
            .spawn(move || {
                ready.wait();
                match shared_timeline.get() {
                    Some(&timeline) => {
                        run_client(client, timeline, OpSource::Random(chooser), false)
                    }
                    None => ClientStats::new(),
                }
            })
            .map_err(|error| format!("spawn client thread: {error}"))?;
        handles.push(handle);
    }
    let warmup_ns = (args.warmup * 1e9) as u64;
    let _ = shared_timeline.set(Timeline {
        base: Instant::now(),
        measure_start_ns: warmup_ns,
        measure_end_ns: warmup_ns + (args.seconds * 1e9) as u64,
    });
    ready.wait();
    ClientStats::join_all(handles, "preload")
}

/// The report's JSON line: the RESP run's keys plus which system and version ran.
pub fn json_line(report: &RunReport, etcd_version: &str) -> Result<String, String> {
    let mut value = serde_json::to_value(report).map_err(|error| error.to_string())?;
    if let Value::Object(map) = &mut value {
        map.insert("system".into(), Value::from("etcd"));
        map.insert("etcd_version".into(), Value::from(etcd_version));
    }
    serde_json::to_string(&value).map_err(|error| error.to_string())
}

fn run(args: &EtcdArgs) -> Result<RunReport, String> {
    let discovery = discover(&args.endpoints, Duration::from_millis(args.timeout_ms))?;
    let targets: Vec<Endpoint> = if args.spread {
        args.endpoints.clone()
    } else {
        vec![discovery.leader.clone()]
    };
    let target_names: Vec<String> = targets.iter().map(|e| e.as_str().to_string()).collect();
    let say = |line: String| {
        // Keep stdout pure JSON under --json.
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    say(format!(
        "tally-bench etcd -> {} ({}; etcd {}; JSON gateway; closed loop; {} s measured after \
         {} s warmup; {} keys)",
        target_names.join(","),
        if args.spread {
            "clients spread over the endpoints".to_string()
        } else {
            format!("the leader of {} endpoints", args.endpoints.len())
        },
        discovery.version,
        args.seconds,
        args.warmup,
        args.keys
    ));
    if args.read_ratio > 0.0 {
        say(preload(&targets, args)?);
    }
    let total = run_measured(&targets, args)?;
    let config = RunConfig {
        clients: args.clients,
        pipeline: 1,
        value_size: args.value_size,
        keys: args.keys,
        read_ratio: args.read_ratio,
        seconds: args.seconds,
        warmup: args.warmup,
        rate: None,
        seed: args.seed,
    };
    let report = RunReport::new(
        &target_names,
        &config,
        args.seconds,
        &total,
        StorageFigures::default(),
    );
    if args.json {
        println!("{}", json_line(&report, &discovery.version)?);
    } else {
        println!("{}", report::table_header());
        println!("{}", report::table_row(&report));
    }
    Ok(report)
}

/// Entry point of `tally-bench etcd`. Returns the process exit code.
pub fn main(args: &EtcdArgs) -> i32 {
    match run(args) {
        Ok(report) if report.ops > 0 => 0,
        Ok(_) => {
            eprintln!("tally-bench etcd: no operation succeeded");
            1
        }
        Err(error) => {
            eprintln!("tally-bench etcd: {error}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_accepts_http_host_port_and_strips_one_trailing_slash() {
        assert_eq!(
            parse_endpoint(" http://127.0.0.1:2379/ ").unwrap().as_str(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            parse_endpoint("http://[::1]:2379")
                .unwrap()
                .url("/v3/kv/put"),
            "http://[::1]:2379/v3/kv/put"
        );
        assert_eq!(
            parse_endpoint("http://localhost:1").unwrap().as_str(),
            "http://localhost:1"
        );
    }

    #[test]
    fn endpoint_rejects_other_schemes_paths_and_bad_ports_with_a_reason() {
        let cases = [
            ("https://127.0.0.1:2379", "https is not supported"),
            ("127.0.0.1:2379", "not an etcd client URL"),
            ("ftp://h:1", "not an etcd client URL"),
            ("http://127.0.0.1:2379/v3", "without a path"),
            ("http://127.0.0.1", "no port"),
            ("http://:2379", "no host"),
            ("http://127.0.0.1:0", "not a port number"),
            ("http://127.0.0.1:65536", "not a port number"),
            ("http://127.0.0.1:x", "not a port number"),
            ("http://::1:2379", "brackets"),
        ];
        for (text, reason) in cases {
            let error = parse_endpoint(text).unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }

    #[test]
    fn numeric_flags_reject_zero_clients_and_oversized_values() {
        assert!(parse_clients("0").unwrap_err().contains("out of range"));
        assert_eq!(parse_clients("50"), Ok(50));
        assert!(parse_value_size(&(MAX_ETCD_VALUE_SIZE_BYTES + 1).to_string()).is_err());
        assert_eq!(parse_value_size("0"), Ok(0));
        assert!(parse_keys("0").is_err());
        assert!(parse_ratio("1.01").is_err());
        assert!(parse_positive_seconds("0").is_err());
        assert!(parse_nonnegative_seconds("inf").is_err());
        assert!(parse_timeout_ms("0").is_err());
    }

    #[test]
    fn keys_have_the_resp_runs_fixed_width_format() {
        assert_eq!(&key_bytes(0), b"key:000000000000");
        assert_eq!(&key_bytes(123_456), b"key:000000123456");
        assert_eq!(&key_bytes(MAX_KEYS - 1), b"key:999999999999");
    }

    #[test]
    fn put_body_is_json_with_base64_key_and_value_that_decode_back() {
        let value = value_bytes(100);
        let body = put_body(&key_bytes(42), &BASE64.encode(&value));
        let json: Value = serde_json::from_str(&body).unwrap();
        let object = json.as_object().unwrap();
        assert_eq!(object.len(), 2, "{body}");
        let decode = |field: &str| BASE64.decode(json[field].as_str().unwrap()).unwrap();
        assert_eq!(decode("key"), b"key:000000000042");
        assert_eq!(decode("value"), value);
    }

    #[test]
    fn range_body_asks_for_exactly_one_key_linearizably() {
        let body = range_body(&key_bytes(7));
        let json: Value = serde_json::from_str(&body).unwrap();
        let object = json.as_object().unwrap();
        // No range_end (one key), no serializable flag (linearizable by default).
        assert_eq!(object.keys().collect::<Vec<_>>(), vec!["key"]);
        assert_eq!(
            BASE64.decode(json["key"].as_str().unwrap()).unwrap(),
            b"key:000000000007"
        );
    }

    const HEADER: &str =
        r#""header":{"cluster_id":"1","member_id":"2","revision":"3","raft_term":"2"}"#;

    #[test]
    fn put_reply_with_a_header_is_success() {
        let body = format!("{{{HEADER}}}");
        assert_eq!(check_reply(OpKind::Set, 200, body.as_bytes(), 100), Ok(()));
    }

    #[test]
    fn range_reply_must_hold_one_value_of_the_configured_size() {
        let reply = |value: &str| {
            format!(
                r#"{{{HEADER},"kvs":[{{"key":"a2V5","mod_revision":"3","value":"{value}"}}],"count":"1"}}"#
            )
        };
        let good = reply(&BASE64.encode(value_bytes(10)));
        assert_eq!(check_reply(OpKind::Get, 200, good.as_bytes(), 10), Ok(()));
        let short = reply(&BASE64.encode(value_bytes(9)));
        let failure = check_reply(OpKind::Get, 200, short.as_bytes(), 10).unwrap_err();
        assert_eq!(failure.kind, FailureKind::WrongReply);
        assert!(
            failure.detail.contains("9 bytes, expected 10"),
            "{failure:?}"
        );
        let long = reply(&BASE64.encode(value_bytes(1000)));
        let failure = check_reply(OpKind::Get, 200, long.as_bytes(), 10).unwrap_err();
        assert_eq!(failure.kind, FailureKind::WrongReply);
        let garbage = reply("!!!!");
        let failure = check_reply(OpKind::Get, 200, garbage.as_bytes(), 3).unwrap_err();
        assert!(failure.detail.contains("not base64"), "{failure:?}");
    }

    #[test]
    fn range_reply_of_a_missing_key_is_a_wrong_reply() {
        let body = format!("{{{HEADER}}}");
        let failure = check_reply(OpKind::Get, 200, body.as_bytes(), 10).unwrap_err();
        assert_eq!(failure.kind, FailureKind::WrongReply);
        assert!(failure.detail.contains("0 keys"), "{failure:?}");
    }

    #[test]
    fn range_reply_without_value_field_means_an_empty_value() {
        let body = format!(r#"{{{HEADER},"kvs":[{{"key":"a2V5"}}],"count":"1"}}"#);
        assert_eq!(check_reply(OpKind::Get, 200, body.as_bytes(), 0), Ok(()));
        assert!(check_reply(OpKind::Get, 200, body.as_bytes(), 1).is_err());
    }

    #[test]
    fn gateway_error_bodies_are_sorted_by_message_and_quoted() {
        let cases = [
            ("etcdserver: no leader", FailureKind::NotLeader),
            ("etcdserver: leader changed", FailureKind::Unknown),
            ("etcdserver: request timed out", FailureKind::Unknown),
            ("etcdserver: key is not provided", FailureKind::Server),
        ];
        for (message, kind) in cases {
            let body = format!(r#"{{"error":"{message}","message":"{message}","code":14}}"#);
            let failure = check_reply(OpKind::Set, 503, body.as_bytes(), 10).unwrap_err();
            assert_eq!(failure.kind, kind, "{message}");
            assert!(failure.detail.starts_with("HTTP 503: "), "{failure:?}");
            assert!(failure.detail.contains(message), "{failure:?}");
        }
        // Not JSON at all (a 404 from a wrong path): still a server error, quoted.
        let failure = check_reply(OpKind::Set, 404, b"Not Found\n", 10).unwrap_err();
        assert_eq!(failure.kind, FailureKind::Server);
        assert_eq!(failure.detail, "HTTP 404: Not Found ");
    }

    #[test]
    fn garbage_or_headerless_success_bodies_are_wrong_replies() {
        for body in [&b"\xff\x00garbage"[..], b"", b"[]", b"{\"kvs\":[]}"] {
            let failure = check_reply(OpKind::Set, 200, body, 10).unwrap_err();
            assert_eq!(failure.kind, FailureKind::WrongReply, "{body:?}");
        }
    }

    #[test]
    fn excerpt_is_bounded_and_printable() {
        let long = vec![b'x'; 10_000];
        let text = excerpt(&long);
        assert_eq!(text.len(), EXCERPT_CHARS + 3);
        assert!(text.ends_with("..."));
        assert_eq!(excerpt(b"a\r\nb\xff"), "a  b\u{fffd}");
    }

    #[test]
    fn status_reply_of_etcd_3_4_names_member_and_leader() {
        let body = br#"{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"1","raft_term":"2"},"version":"3.4.23","dbSize":"20480","leader":"3319814642761637952","raftIndex":"4","raftTerm":"2"}"#;
        let status = parse_status(body).unwrap();
        assert_eq!(status.member_id, 3_319_814_642_761_637_952);
        assert!(status.is_leader());
        assert_eq!(status.version, "3.4.23");
        let follower = br#"{"header":{"member_id":5},"leader":"7","version":"3.5.0"}"#;
        assert!(!parse_status(follower).unwrap().is_leader());
        let no_leader = br#"{"header":{"member_id":"5"},"version":"3.5.0"}"#;
        assert!(!parse_status(no_leader).unwrap().is_leader());
        assert!(parse_status(b"{}").unwrap_err().contains("member_id"));
        assert!(parse_status(b"<html>").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn json_line_keeps_the_resp_keys_and_names_the_system() {
        let config = RunConfig {
            clients: 2,
            pipeline: 1,
            value_size: 100,
            keys: 10,
            read_ratio: 0.0,
            seconds: 1.0,
            warmup: 0.0,
            rate: None,
            seed: 1,
        };
        let mut stats = ClientStats::new();
        stats.ops_ok = 3;
        stats.latency_ns.saturating_record(2_000);
        let report = RunReport::new(
            &["http://h:1".to_string()],
            &config,
            1.0,
            &stats,
            StorageFigures::default(),
        );
        let line = json_line(&report, "3.4.23").unwrap();
        let json: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["system"], "etcd");
        assert_eq!(json["etcd_version"], "3.4.23");
        assert_eq!(json["ops"], 3);
        assert_eq!(json["ops_per_sec"], 3.0);
        assert_eq!(json["p50_us"], 2.0);
        assert!(json["entries_per_fsync"].is_null());
    }

    #[test]
    fn failures_land_in_the_matching_counter_or_outside_the_window() {
        let mut stats = ClientStats::new();
        let kinds = [
            FailureKind::NotLeader,
            FailureKind::Unknown,
            FailureKind::Server,
            FailureKind::WrongReply,
            FailureKind::Io,
        ];
        for kind in kinds {
            record_failure(&mut stats, &Failure::new(kind, format!("{kind:?}")), true);
        }
        record_failure(&mut stats, &Failure::new(FailureKind::Io, "late"), false);
        let errors = stats.errors;
        assert_eq!(
            (
                errors.not_leader,
                errors.unknown,
                errors.server_other,
                errors.wrong_reply,
                errors.io
            ),
            (1, 1, 1, 1, 1)
        );
        assert_eq!(stats.errors_outside_window, 1);
        assert_eq!(stats.error_sample.as_deref(), Some("NotLeader"));
    }
}
