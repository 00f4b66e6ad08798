//! Real Redis clients against a 3-member `tally-server` cluster: redis-py with its
//! default settings (RESP3, a transaction pipeline, WATCH), redis-benchmark, and the
//! RESP3 / MULTI / WATCH replies byte for byte on the wire.
//!
//! redis-py and redis-benchmark are required (`.ci/run` installs them): a missing tool
//! FAILS the test unless `TALLY_SKIP_REAL_CLIENTS=1` opts out explicitly. No timing
//! assertions: waits poll with generous deadlines.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use tally_net::resp::RespValue;

const OPT_OUT: &str = "TALLY_SKIP_REAL_CLIENTS";

fn opted_out(what: &str) -> bool {
    if std::env::var_os(OPT_OUT).is_some_and(|v| v == "1") {
        println!("SKIP {what}: {OPT_OUT}=1");
        return true;
    }
    false
}

fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| Path::new(candidate).is_file())
    })
}

fn leader_port(cluster: &Cluster) -> u16 {
    cluster.member(cluster.wait_for_leader()).client_port
}

#[test]
fn redis_py_with_default_settings_drives_strings_expiry_transactions_and_watch() {
    if opted_out("redis-py") {
        return;
    }
    let python = tool("python3").unwrap_or_else(|| {
        panic!("python3 is required (or set {OPT_OUT}=1): .ci/run installs it with redis-py")
    });
    let probe = Command::new(&python)
        .args(["-c", "import redis; print(redis.__version__)"])
        .output()
        .expect("run python3");
    assert!(
        probe.status.success(),
        "redis-py is required (pip install redis, or set {OPT_OUT}=1): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let cluster = Cluster::start(3);
    let port = leader_port(&cluster);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/redis_py_clients.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(port.to_string())
        .output()
        .expect("run the redis-py script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("redis-py checks passed"),
        "redis-py {} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&probe.stdout).trim(),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn redis_benchmark_set_get_incr_mset_ping_all_succeed() {
    if opted_out("redis-benchmark") {
        return;
    }
    let benchmark = tool("redis-benchmark").unwrap_or_else(|| {
        panic!("redis-benchmark is required (apt-get install redis-tools, or set {OPT_OUT}=1)")
    });
    let cluster = Cluster::start(3);
    let port = leader_port(&cluster).to_string();
    let output = Command::new(benchmark)
        .args(["-h", "127.0.0.1", "-p", &port])
        .args([
            "-t",
            "set,get,incr,mset,ping",
            "-n",
            "1000",
            "-P",
            "4",
            "-q",
        ])
        .output()
        .expect("run redis-benchmark");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "redis-benchmark failed: {output:?}"
    );
    for test in [
        "PING_INLINE:",
        "PING_MBULK:",
        "SET:",
        "GET:",
        "INCR:",
        "MSET (10 keys):",
    ] {
        let line = report
            .split(['\r', '\n'])
            .rfind(|line| line.trim_start().starts_with(test))
            .unwrap_or_else(|| panic!("no {test} result in: {report}"));
        assert!(
            line.contains("requests per second") && !line.contains("-nan"),
            "{test} did not complete: {line}"
        );
    }
    let mut client = Client::connect(leader_port(&cluster)).expect("connect");
    assert_eq!(
        client.call(&["EXISTS", "counter:__rand_int__"]),
        RespValue::Integer(1)
    );
}

/// Sends `args` and returns the raw reply bytes (read until `expected_len` bytes).
fn raw_call(client: &mut Client, args: &[&str], expected: &[u8]) {
    let mut request = Vec::new();
    tally_net::resp::write_command(
        &mut request,
        &args.iter().map(|a| a.as_bytes()).collect::<Vec<_>>(),
    );
    client.send_raw(&request);
    let mut got = vec![0u8; expected.len()];
    use std::io::Read;
    client
        .stream
        .read_exact(&mut got)
        .unwrap_or_else(|e| panic!("{args:?}: reading {} reply bytes: {e}", expected.len()));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected),
        "reply to {args:?}"
    );
}

#[test]
fn resp3_hello_transactions_and_watch_follow_redis_on_the_wire() {
    let cluster = Cluster::start(3);
    let port = leader_port(&cluster);
    let mut c = Client::connect(port).expect("connect");
    // HELLO 3: the server map, then RESP3 nulls.
    let own_id = match c.call(&["CLIENT", "ID"]) {
        RespValue::Integer(id) => id,
        other => panic!("CLIENT ID: {other:?}"),
    };
    let hello = format!(
        "%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n\
         $5\r\nproto\r\n:3\r\n$2\r\nid\r\n:{own_id}\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n\
         $4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"
    );
    raw_call(&mut c, &["HELLO", "3"], hello.as_bytes());
    raw_call(&mut c, &["GET", "missing"], b"_\r\n");
    raw_call(
        &mut c,
        &["HELLO", "4"],
        b"-NOPROTO unsupported protocol version\r\n",
    );
    raw_call(
        &mut c,
        &["HELLO", "3", "AUTH", "default", "secret"],
        b"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n",
    );
    // A command that fails to queue aborts the whole transaction: nothing applies.
    raw_call(&mut c, &["MULTI"], b"+OK\r\n");
    raw_call(&mut c, &["SET", "tx", "1"], b"+QUEUED\r\n");
    raw_call(
        &mut c,
        &["SET", "tx"],
        b"-ERR wrong number of arguments for 'set' command\r\n",
    );
    raw_call(
        &mut c,
        &["MULTI"],
        b"-ERR MULTI calls can not be nested\r\n",
    );
    raw_call(
        &mut c,
        &["WATCH", "tx"],
        b"-ERR WATCH inside MULTI is not allowed\r\n",
    );
    raw_call(
        &mut c,
        &["EXEC"],
        b"-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    raw_call(&mut c, &["EXISTS", "tx"], b":0\r\n");
    raw_call(&mut c, &["EXEC"], b"-ERR EXEC without MULTI\r\n");
    raw_call(&mut c, &["DISCARD"], b"-ERR DISCARD without MULTI\r\n");
    // A runtime error is that command's reply; the rest applies, as one entry.
    raw_call(&mut c, &["SET", "word", "abc"], b"+OK\r\n");
    raw_call(&mut c, &["MULTI"], b"+OK\r\n");
    raw_call(&mut c, &["INCR", "word"], b"+QUEUED\r\n");
    raw_call(&mut c, &["SET", "tx", "2", "PX", "600000"], b"+QUEUED\r\n");
    raw_call(&mut c, &["GET", "missing"], b"+QUEUED\r\n");
    raw_call(
        &mut c,
        &["EXEC"],
        b"*3\r\n-ERR value is not an integer or out of range\r\n+OK\r\n_\r\n",
    );
    raw_call(&mut c, &["GET", "tx"], b"$1\r\n2\r\n");
    // DISCARD drops the queue.
    raw_call(&mut c, &["MULTI"], b"+OK\r\n");
    raw_call(&mut c, &["DEL", "tx"], b"+QUEUED\r\n");
    raw_call(&mut c, &["DISCARD"], b"+OK\r\n");
    raw_call(&mut c, &["EXISTS", "tx"], b":1\r\n");
    // WATCH: another client's write after WATCH makes EXEC answer the null (RESP3 `_`).
    let mut other = Client::connect(port).expect("connect");
    raw_call(&mut c, &["WATCH", "tx", "never-set"], b"+OK\r\n");
    assert_eq!(other.call(&["SET", "tx", "theirs"]), ok());
    raw_call(&mut c, &["MULTI"], b"+OK\r\n");
    raw_call(&mut c, &["SET", "tx", "mine"], b"+QUEUED\r\n");
    raw_call(&mut c, &["EXEC"], b"_\r\n");
    raw_call(&mut c, &["GET", "tx"], b"$6\r\ntheirs\r\n");
    // Watches end with EXEC: the same transaction now applies.
    raw_call(&mut c, &["MULTI"], b"+OK\r\n");
    raw_call(&mut c, &["SET", "tx", "mine"], b"+QUEUED\r\n");
    raw_call(&mut c, &["EXEC"], b"*1\r\n+OK\r\n");
    // A watched key that nobody touched lets EXEC through; UNWATCH forgets a watch.
    raw_call(&mut c, &["WATCH", "tx"], b"+OK\r\n");
    raw_call(&mut c, &["MULTI"], b"+OK\r\n");
    raw_call(&mut c, &["APPEND", "tx", "!"], b"+QUEUED\r\n");
    raw_call(&mut c, &["EXEC"], b"*1\r\n:5\r\n");
    raw_call(&mut c, &["WATCH", "tx"], b"+OK\r\n");
    assert_eq!(other.call(&["SET", "tx", "again"]), ok());
    raw_call(&mut c, &["UNWATCH"], b"+OK\r\n");
    raw_call(&mut c, &["MULTI"], b"+OK\r\n");
    raw_call(&mut c, &["GET", "tx"], b"+QUEUED\r\n");
    raw_call(&mut c, &["EXEC"], b"*1\r\n$5\r\nagain\r\n");
    // RESP2 (the default, or HELLO 2): the RESP2 nulls.
    let mut c2 = Client::connect(port).expect("connect");
    let RespValue::Array(Some(hello2)) = c2.call(&["HELLO", "2"]) else {
        panic!("HELLO 2 answers a flat array");
    };
    assert_eq!(hello2.len(), 14);
    assert_eq!(hello2[5], RespValue::Integer(2));
    raw_call(&mut c2, &["GET", "missing"], b"$-1\r\n");
    raw_call(&mut c2, &["WATCH", "tx"], b"+OK\r\n");
    assert_eq!(other.call(&["DEL", "tx"]), RespValue::Integer(1));
    raw_call(&mut c2, &["MULTI"], b"+OK\r\n");
    raw_call(&mut c2, &["GET", "tx"], b"+QUEUED\r\n");
    raw_call(&mut c2, &["EXEC"], b"*-1\r\n");
    // Unknown commands keep Redis's exact text; local commands answer correctly.
    raw_call(
        &mut c2,
        &["HSET", "h", "f", "v"],
        b"-ERR unknown command 'HSET', with args beginning with: 'h' 'f' 'v' \r\n",
    );
    raw_call(&mut c2, &["CLIENT", "GETNAME"], b"$-1\r\n");
    raw_call(&mut c2, &["CLIENT", "SETNAME", "me"], b"+OK\r\n");
    raw_call(&mut c2, &["CLIENT", "GETNAME"], b"$2\r\nme\r\n");
    raw_call(&mut c2, &["CLIENT", "SETINFO", "LIB-NAME", "x"], b"+OK\r\n");
    let count = tally_net::commands::COMMAND_TABLE.len();
    raw_call(
        &mut c2,
        &["COMMAND", "COUNT"],
        format!(":{count}\r\n").as_bytes(),
    );
}

#[test]
fn multi_queues_and_watch_sets_are_bounded_by_the_command_limits() {
    let cluster = Cluster::start_with_args(1, &["--max-command-bytes", "1024"]);
    let port = leader_port(&cluster);
    let mut c = Client::connect(port).expect("connect");
    let big = "x".repeat(600);
    // The second 600-byte key would take the watch set past one command's bytes.
    raw_call(&mut c, &["WATCH", &big], b"+OK\r\n");
    raw_call(
        &mut c,
        &["WATCH", &format!("{big}y")],
        b"-ERR too many watched keys (max-arguments, max-command-bytes)\r\n",
    );
    raw_call(&mut c, &["UNWATCH"], b"+OK\r\n");
    // A queue past max-command-bytes aborts the transaction: nothing applies.
    raw_call(&mut c, &["MULTI"], b"+OK\r\n");
    raw_call(&mut c, &["SET", "a", &big], b"+QUEUED\r\n");
    raw_call(
        &mut c,
        &["SET", "b", &big],
        b"-ERR the transaction exceeds 1024 bytes or 65536 arguments (max-command-bytes, max-arguments)\r\n",
    );
    raw_call(
        &mut c,
        &["EXEC"],
        b"-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    raw_call(&mut c, &["EXISTS", "a", "b"], b":0\r\n");
}

/// Reads raw reply bytes until they end with `tail` (or the read deadline passes).
fn read_raw_until(client: &mut Client, tail: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.ends_with(tail) {
        match client.stream.read(&mut chunk) {
            Ok(0) => panic!("server closed after {:?}", String::from_utf8_lossy(&got)),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("{e} after {:?}", String::from_utf8_lossy(&got)),
        }
    }
    got
}

/// Replaces the digits after `id\r\n:` (the connection id in a HELLO map) with `N`.
fn mask_connection_id(reply: &[u8]) -> String {
    let text = String::from_utf8_lossy(reply).into_owned();
    let marker = "$2\r\nid\r\n:";
    let Some(start) = text.find(marker).map(|at| at + marker.len()) else {
        return text;
    };
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    format!("{}N{}", &text[..start], &text[start + digits..])
}

/// go-redis v9 cannot be fetched on this machine (the Go module proxy is not among the
/// reachable registries), so this replays what its `initConn` sends with default
/// options, as it sends it: lower-case `hello 3` alone, then one write holding
/// `client setinfo lib-name` and `lib-ver`, then a `TxPipelined` (MULTI ... EXEC in one
/// write) and a `Watch` transaction; every reply must be what go-redis parses.
#[test]
fn go_redis_v9_default_connection_sequence_gets_the_replies_it_parses() {
    let cluster = Cluster::start(3);
    let port = leader_port(&cluster);
    let mut c = Client::connect(port).expect("connect");
    let write = |c: &mut Client, commands: &[&[&str]]| {
        let mut out = Vec::new();
        for args in commands {
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            tally_net::resp::write_command(&mut out, &args);
        }
        c.send_raw(&out);
    };
    write(&mut c, &[&["hello", "3"]]);
    let hello = read_raw_until(&mut c, b"$7\r\nmodules\r\n*0\r\n");
    assert_eq!(
        mask_connection_id(&hello),
        "%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n\
         $5\r\nproto\r\n:3\r\n$2\r\nid\r\n:N\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n\
         $4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"
    );
    write(
        &mut c,
        &[
            &["client", "setinfo", "LIB-NAME", "go-redis(,go1.22.5)"],
            &["client", "setinfo", "LIB-VER", "9.7.0"],
        ],
    );
    assert_eq!(read_raw_until(&mut c, b"+OK\r\n+OK\r\n"), b"+OK\r\n+OK\r\n");
    // TxPipelined: MULTI, the queued commands and EXEC in one write.
    write(
        &mut c,
        &[
            &["multi"],
            &["set", "go:key", "value", "ex", "600"],
            &["incr", "go:counter"],
            &["get", "go:missing"],
            &["exec"],
        ],
    );
    let tx = b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n+OK\r\n:1\r\n_\r\n";
    assert_eq!(
        String::from_utf8_lossy(&read_raw_until(&mut c, b"_\r\n")),
        String::from_utf8_lossy(tx)
    );
    // Watch(fn, key): WATCH, GET inside fn, then a TxPipelined that must fail with the
    // RESP3 null (go-redis's TxFailedErr) after another client changed the key.
    write(&mut c, &[&["watch", "go:counter"], &["get", "go:counter"]]);
    assert_eq!(
        read_raw_until(&mut c, b"$1\r\n1\r\n"),
        b"+OK\r\n$1\r\n1\r\n"
    );
    let mut other = Client::connect(port).expect("connect");
    assert_eq!(other.call(&["INCR", "go:counter"]), RespValue::Integer(2));
    write(
        &mut c,
        &[&["multi"], &["set", "go:counter", "100"], &["exec"]],
    );
    assert_eq!(read_raw_until(&mut c, b"_\r\n"), b"+OK\r\n+QUEUED\r\n_\r\n");
    assert_eq!(other.call(&["GET", "go:counter"]), bulk("2"));
    let ttl = other.call(&["TTL", "go:key"]);
    assert!(
        matches!(ttl, RespValue::Integer(seconds) if (500..=600).contains(&seconds)),
        "TTL after SET EX 600 inside the transaction: {ttl:?}"
    );
}
