//! End-to-end tests of `tally-bench etcd`: the real binary against tiny fake etcd members
//! (HTTP/1.1 on 127.0.0.1:0, started inside the test) that speak the JSON gateway's
//! `/v3/maintenance/status`, `/v3/kv/put` and `/v3/kv/range`. They check flags, leader
//! choice, request encoding, error accounting and bounded reads; never speed, and they
//! need no etcd installed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::Value;

/// How a fake member answers puts.
#[derive(Clone)]
enum PutReply {
    /// Stores the value and answers like etcd.
    Store,
    /// Answers with this status and body.
    Error(u16, String),
    /// Answers 200 with a body of this many bytes of `x`.
    Oversized(usize),
    /// Answers 200 with a body that is not JSON.
    Garbage,
}

/// One fake etcd member.
struct FakeMember {
    endpoint: String,
    /// Puts received whose body was a valid etcd put (base64 key `key:` + 12 digits,
    /// base64 value of the expected size).
    valid_puts: Arc<AtomicU64>,
    /// Requests to put or range that were malformed in any way.
    invalid_requests: Arc<AtomicU64>,
    /// Ranges received whose body named exactly one key and nothing else.
    valid_ranges: Arc<AtomicU64>,
}

struct MemberSetup {
    member_id: u64,
    leader_id: u64,
    put_reply: PutReply,
    value_size: usize,
}

fn start_member(setup: MemberSetup) -> FakeMember {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let valid_puts = Arc::new(AtomicU64::new(0));
    let invalid_requests = Arc::new(AtomicU64::new(0));
    let valid_ranges = Arc::new(AtomicU64::new(0));
    let store: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let setup = Arc::new(setup);
    let counters = (
        valid_puts.clone(),
        invalid_requests.clone(),
        valid_ranges.clone(),
    );
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (setup, store, counters) = (setup.clone(), store.clone(), counters.clone());
            thread::spawn(move || serve(stream, &setup, &store, &counters));
        }
    });
    FakeMember {
        endpoint,
        valid_puts,
        invalid_requests,
        valid_ranges,
    }
}

fn header(member_id: u64) -> String {
    format!(
        r#""header":{{"cluster_id":"9","member_id":"{member_id}","revision":"1","raft_term":"2"}}"#
    )
}

fn is_benchmark_key(key: &[u8]) -> bool {
    key.len() == 16 && key.starts_with(b"key:") && key[4..].iter().all(u8::is_ascii_digit)
}

type Counters = (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>);

fn serve(
    stream: TcpStream,
    setup: &MemberSetup,
    store: &Mutex<HashMap<String, String>>,
    (valid_puts, invalid, valid_ranges): &Counters,
) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        // Request line and headers.
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let decode = |field: &str| {
            json.get(field)
                .and_then(Value::as_str)
                .and_then(|text| BASE64.decode(text).ok())
        };
        let (status, reply) = match path.as_str() {
            "/v3/maintenance/status" => (
                200,
                format!(
                    r#"{{{},"version":"3.4.99","dbSize":"20480","leader":"{}","raftIndex":"4"}}"#,
                    header(setup.member_id),
                    setup.leader_id
                ),
            ),
            "/v3/kv/put" => {
                let key = decode("key");
                let value = decode("value");
                let well_formed = json.as_object().is_some_and(|o| o.len() == 2)
                    && key.as_deref().is_some_and(is_benchmark_key)
                    && value.as_ref().is_some_and(|v| v.len() == setup.value_size);
                if !well_formed {
                    invalid.fetch_add(1, Ordering::Relaxed);
                    (400, r#"{"error":"bad put","code":3}"#.to_string())
                } else {
                    valid_puts.fetch_add(1, Ordering::Relaxed);
                    match &setup.put_reply {
                        PutReply::Store => {
                            let key = json["key"].as_str().unwrap_or("").to_string();
                            let value = json["value"].as_str().unwrap_or("").to_string();
                            store.lock().unwrap().insert(key, value);
                            (200, format!("{{{}}}", header(setup.member_id)))
                        }
                        PutReply::Error(status, body) => (*status, body.clone()),
                        PutReply::Oversized(size) => (200, "x".repeat(*size)),
                        PutReply::Garbage => (200, "<html>proxy error</html>".to_string()),
                    }
                }
            }
            "/v3/kv/range" => {
                let only_key = json.as_object().is_some_and(|o| o.len() == 1)
                    && decode("key").as_deref().is_some_and(is_benchmark_key);
                if !only_key {
                    invalid.fetch_add(1, Ordering::Relaxed);
                    (400, r#"{"error":"bad range","code":3}"#.to_string())
                } else {
                    valid_ranges.fetch_add(1, Ordering::Relaxed);
                    let key = json["key"].as_str().unwrap_or("").to_string();
                    let value = store.lock().unwrap().get(&key).cloned();
                    let kvs = value.map_or(String::new(), |value| {
                        format!(r#","kvs":[{{"key":"{key}","value":"{value}"}}],"count":"1""#)
                    });
                    (200, format!("{{{}{kvs}}}", header(setup.member_id)))
                }
            }
            _ => (404, "Not Found\n".to_string()),
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            reply.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(reply.as_bytes()).is_err()
        {
            return;
        }
    }
}

fn run_bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .arg("etcd")
        .args(args)
        .output()
        .unwrap()
}

/// Short runs: correctness only, never speed.
const SHORT: [&str; 4] = ["--seconds", "0.3", "--warmup", "0.1"];

fn run_json(endpoints: &str, extra: &[&str]) -> (Output, Value) {
    let mut args = vec!["--endpoints", endpoints, "--json"];
    args.extend_from_slice(&SHORT);
    args.extend_from_slice(extra);
    let output = run_bench(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or("");
    let json: Value = serde_json::from_str(line).unwrap_or_else(|error| {
        panic!(
            "stdout is not one JSON line ({error}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, json)
}

fn leader(value_size: usize, put_reply: PutReply) -> FakeMember {
    start_member(MemberSetup {
        member_id: 7,
        leader_id: 7,
        put_reply,
        value_size,
    })
}

#[test]
fn write_run_sends_valid_base64_puts_and_reports_them_like_a_resp_run() {
    let member = leader(10, PutReply::Store);
    let (output, json) = run_json(
        &member.endpoint,
        &["--clients", "2", "--value-size", "10", "--keys", "50"],
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(member.invalid_requests.load(Ordering::Relaxed), 0);
    let ops = json["ops"].as_u64().unwrap();
    assert!(ops > 0, "{json}");
    assert!(member.valid_puts.load(Ordering::Relaxed) >= ops);
    assert_eq!(json["errors"], 0);
    assert_eq!(json["system"], "etcd");
    assert_eq!(json["etcd_version"], "3.4.99");
    assert_eq!(json["clients"], 2);
    assert_eq!(json["pipeline"], 1);
    assert_eq!(json["value_size"], 10);
    assert_eq!(json["target"], member.endpoint.as_str());
    for key in ["ops_per_sec", "p50_us", "p99_us", "p999_us", "max_us"] {
        assert!(json[key].as_f64().unwrap() > 0.0, "{key}: {json}");
    }
}

#[test]
fn mixed_run_preloads_then_reads_values_of_the_configured_size() {
    let member = leader(33, PutReply::Store);
    let (output, json) = run_json(
        &member.endpoint,
        &[
            "--clients",
            "2",
            "--value-size",
            "33",
            "--keys",
            "20",
            "--read-ratio",
            "0.5",
        ],
    );
    assert!(output.status.success(), "{output:?}");
    // The preload wrote all 20 keys, so no read may miss.
    assert!(member.valid_puts.load(Ordering::Relaxed) >= 20);
    assert!(member.valid_ranges.load(Ordering::Relaxed) > 0);
    assert_eq!(member.invalid_requests.load(Ordering::Relaxed), 0);
    assert_eq!(json["errors"], 0, "{json}");
    assert_eq!(json["read_ratio"], 0.5);
    // The preload's line goes to stderr under --json so stdout stays parseable.
    assert!(String::from_utf8_lossy(&output.stderr).contains("preload: 20 of 20 keys"));
}

#[test]
fn all_clients_go_to_the_leader_unless_spread() {
    let follower = start_member(MemberSetup {
        member_id: 1,
        leader_id: 2,
        put_reply: PutReply::Store,
        value_size: 100,
    });
    let leader = start_member(MemberSetup {
        member_id: 2,
        leader_id: 2,
        put_reply: PutReply::Store,
        value_size: 100,
    });
    let endpoints = format!("{},{}", follower.endpoint, leader.endpoint);
    let (output, json) = run_json(&endpoints, &["--clients", "4"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(json["target"], leader.endpoint.as_str());
    assert_eq!(follower.valid_puts.load(Ordering::Relaxed), 0);
    assert!(leader.valid_puts.load(Ordering::Relaxed) > 0);

    let (output, json) = run_json(&endpoints, &["--clients", "4", "--spread"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(json["target"], endpoints.as_str());
    assert!(follower.valid_puts.load(Ordering::Relaxed) > 0);
}

#[test]
fn error_replies_are_counted_by_kind_and_quoted() {
    let body = r#"{"error":"etcdserver: request timed out","message":"etcdserver: request timed out","code":14}"#;
    let member = leader(100, PutReply::Error(503, body.to_string()));
    let (output, json) = run_json(&member.endpoint, &["--clients", "1"]);
    // Nothing succeeded: the run fails, but still reports what it saw.
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(json["ops"], 0);
    assert!(
        json["error_kinds"]["unknown"].as_u64().unwrap() > 0,
        "{json}"
    );
    let sample = json["error_sample"].as_str().unwrap();
    assert!(sample.contains("HTTP 503"), "{sample}");
    assert!(sample.contains("etcdserver: request timed out"), "{sample}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("no operation succeeded"));
}

#[test]
fn oversized_reply_is_refused_at_the_cap() {
    let member = leader(100, PutReply::Oversized(1 << 20));
    let (output, json) = run_json(&member.endpoint, &["--clients", "1"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        json["error_kinds"]["wrong_reply"].as_u64().unwrap() > 0,
        "{json}"
    );
    let sample = json["error_sample"].as_str().unwrap();
    assert!(sample.contains("larger than 65536 bytes"), "{sample}");
}

#[test]
fn garbage_reply_is_a_wrong_reply_with_an_excerpt() {
    let member = leader(100, PutReply::Garbage);
    let (output, json) = run_json(&member.endpoint, &["--clients", "1"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        json["error_kinds"]["wrong_reply"].as_u64().unwrap() > 0,
        "{json}"
    );
    let sample = json["error_sample"].as_str().unwrap();
    assert!(
        sample.contains("not JSON: <html>proxy error</html>"),
        "{sample}"
    );
}

#[test]
fn unreachable_endpoint_fails_before_the_run_with_a_clear_message() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let output = run_bench(&["--endpoints", &endpoint, "--seconds", "0.1"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("etcd unreachable"), "{stderr}");
    assert!(stderr.contains(&endpoint), "{stderr}");
}

#[test]
fn bad_flags_are_rejected_with_the_reason() {
    let cases: [(&[&str], &str); 6] = [
        (
            &["--endpoints", "ftp://127.0.0.1:2379"],
            "not an etcd client URL",
        ),
        (
            &["--endpoints", "https://127.0.0.1:2379"],
            "https is not supported",
        ),
        (
            &["--endpoints", "http://127.0.0.1:2379,http://h"],
            "has no port",
        ),
        (
            &["--endpoints", "http://127.0.0.1:2379", "--clients", "0"],
            "out of range",
        ),
        (
            &["--endpoints", "http://127.0.0.1:2379", "--read-ratio", "2"],
            "between 0.0 and 1.0",
        ),
        (&["--clients", "5"], "--endpoints"),
    ];
    for (args, reason) in cases {
        let output = run_bench(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}
