//! End-to-end tests of `tally-bench --target`: the real binary against tiny RESP servers
//! on 127.0.0.1:0 started inside the test. They check flags, output formats, error
//! accounting and redirects, never speed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// How a test server answers.
#[derive(Clone)]
enum Behaviour {
    /// A key-value store; INFO has a `# Raft` section with counters when `raft_info`.
    Store { raft_info: bool },
    /// Every command but INFO gets `-NOTLEADER <addr>`.
    RedirectTo(String),
    /// Every command but INFO gets `-NOTLEADER ?`.
    NoLeader,
    /// SET works; GET returns a value one byte shorter than what was stored.
    ShortGets,
}

struct TestServer {
    address: String,
    /// Commands other than INFO received.
    commands: Arc<AtomicU64>,
}

fn start_server(behaviour: Behaviour) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let commands = Arc::new(AtomicU64::new(0));
    let store: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    let counter = commands.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (behaviour, counter, store) = (behaviour.clone(), counter.clone(), store.clone());
            thread::spawn(move || serve(stream, behaviour, counter, store));
        }
    });
    TestServer { address, commands }
}

fn read_line(reader: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end().to_string()),
    }
}

fn read_command(reader: &mut impl BufRead) -> Option<Vec<Vec<u8>>> {
    let count: usize = read_line(reader)?.strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let len: usize = read_line(reader)?.strip_prefix('$')?.parse().ok()?;
        let mut arg = vec![0; len + 2];
        reader.read_exact(&mut arg).ok()?;
        arg.truncate(len);
        args.push(arg);
    }
    Some(args)
}

fn bulk(out: &mut impl Write, bytes: &[u8]) {
    write!(out, "${}\r\n", bytes.len()).unwrap();
    out.write_all(bytes).unwrap();
    out.write_all(b"\r\n").unwrap();
}

fn serve(
    stream: TcpStream,
    behaviour: Behaviour,
    counter: Arc<AtomicU64>,
    store: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = BufWriter::new(stream);
    while let Some(args) = read_command(&mut reader) {
        let name = args[0].to_ascii_uppercase();
        if name == b"INFO" {
            let sets = counter.load(Ordering::SeqCst);
            let text = match behaviour {
                Behaviour::Store { raft_info: true } => format!(
                    "# Server\r\nversion:test\r\n\r\n# Raft\r\nrole:leader\r\nnode_id:1\r\n\
                     entries_per_fsync:1\r\nwal_fsyncs:{}\r\nwal_entries:{sets}\r\n\
                     wal_bytes_written:{}\r\n",
                    sets / 10,
                    sets * 150
                ),
                _ => "# Server\r\nredis_version:7.0.0\r\n".to_string(),
            };
            bulk(&mut writer, text.as_bytes());
        } else {
            counter.fetch_add(1, Ordering::SeqCst);
            match (&behaviour, name.as_slice()) {
                (Behaviour::RedirectTo(leader), _) => {
                    write!(writer, "-NOTLEADER {leader}\r\n").unwrap()
                }
                (Behaviour::NoLeader, _) => writer.write_all(b"-NOTLEADER ?\r\n").unwrap(),
                (_, b"SET") if args.len() == 3 => {
                    store
                        .lock()
                        .unwrap()
                        .insert(args[1].clone(), args[2].clone());
                    writer.write_all(b"+OK\r\n").unwrap();
                }
                (_, b"GET") if args.len() == 2 => {
                    let value = store.lock().unwrap().get(&args[1]).cloned();
                    match value {
                        None => writer.write_all(b"$-1\r\n").unwrap(),
                        Some(mut value) => {
                            if matches!(behaviour, Behaviour::ShortGets) {
                                value.pop();
                            }
                            bulk(&mut writer, &value);
                        }
                    }
                }
                _ => writer.write_all(b"-ERR unknown command\r\n").unwrap(),
            }
        }
        if reader.buffer().is_empty() && writer.flush().is_err() {
            return;
        }
    }
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    assert!(
        output.status.success(),
        "status {:?}, stderr: {}",
        output.status,
        stderr_of(output)
    );
    stdout_of(output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("every stdout line is JSON"))
        .collect()
}

/// Short runs: the tests check accounting and formats, not speed.
const SHORT: [&str; 4] = ["--seconds", "0.5", "--warmup", "0"];

#[test]
fn no_target_starts_an_embedded_cluster_and_reports_replicated_writes() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().to_str().unwrap();
    let output = bench(&[
        "--dir",
        dir,
        "--json",
        "--clients",
        "4",
        "--pipeline",
        "4",
        "--keys",
        "1000",
        "--seconds",
        "1",
        "--warmup",
        "0.2",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let runs = json_lines(&output);
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert!(run["ops_per_sec"].as_f64().unwrap() > 0.0, "{run}");
    assert_eq!(run["errors"].as_u64(), Some(0), "{run}");
    // Without --read-ratio the embedded run is a mixed load (a --target run is SET
    // only: see defaults_are_50_clients_pipeline_1_value_100_set_only_closed_loop).
    assert_eq!(run["read_ratio"], 0.5, "{run}");
    // The embedded cluster is a real Tally cluster: INFO reports its group commit.
    assert!(run["entries_per_fsync"].as_f64().unwrap() >= 1.0, "{run}");
    assert!(run["p50_us"].as_f64().unwrap() <= run["p99_us"].as_f64().unwrap());
    // Whatever the run created inside --dir is removed afterwards.
    assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
}

#[test]
fn repeated_dirs_run_the_same_workload_on_each_and_compare_them() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let output = bench(&[
        "--dir",
        first.path().to_str().unwrap(),
        "--dir",
        second.path().to_str().unwrap(),
        "--read-ratio",
        "0",
        "--clients",
        "2",
        "--seconds",
        "0.5",
        "--warmup",
        "0",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let stdout = stdout_of(&output);
    assert!(stdout.contains("storage comparison"), "{stdout}");
    for dir in [first.path(), second.path()] {
        let label = format!("embedded:{}", dir.display());
        assert!(stdout.contains(&label), "{label} missing from\n{stdout}");
    }
}

#[test]
fn dir_and_target_together_are_a_usage_error() {
    let output = bench(&["--dir", "/tmp", "--target", "127.0.0.1:1"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn invalid_values_exit_2_naming_the_flag() {
    for (args, flag) in [
        (
            &["--target", "x:1", "--read-ratio", "1.5"][..],
            "--read-ratio",
        ),
        (&["--target", "x:1", "--clients", "0"][..], "--clients"),
        (&["--target", "x:1", "--pipeline", "many"][..], "--pipeline"),
        (&["--target", "x:1", "--seconds", "0"][..], "--seconds"),
        (&["--target", "x:1", "--rate", "0"][..], "--rate"),
        (&["--target", "x:1", "--keys", "0"][..], "--keys"),
        (
            &["--target", "x:1", "--sweep", "threads=1,2"][..],
            "--sweep",
        ),
        (
            &["--target", "x:1", "--sweep", "clients=1,0"][..],
            "--sweep",
        ),
        (&["--target", "x:1", "--no-such-flag"][..], "--no-such-flag"),
    ] {
        let output = bench(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = stderr_of(&output);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn defaults_are_50_clients_pipeline_1_value_100_set_only_closed_loop() {
    let server = start_server(Behaviour::Store { raft_info: false });
    let output = bench(&[
        "--target",
        &server.address,
        "--json",
        "--seconds",
        "0.5",
        "--warmup",
        "0",
    ]);
    let runs = json_lines(&output);
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run["clients"], 50);
    assert_eq!(run["pipeline"], 1);
    assert_eq!(run["value_size"], 100);
    assert_eq!(run["keys"], 100_000);
    assert_eq!(run["read_ratio"], 0.0);
    assert_eq!(run["mode"], "closed");
    assert_eq!(run["rate"], serde_json::Value::Null);
    assert_eq!(run["target"], server.address.as_str());
    assert_eq!(run["errors"], 0);
    let ops = run["ops"].as_u64().unwrap();
    assert!(ops > 0);
    assert!(
        ops <= server.commands.load(Ordering::SeqCst),
        "no op counted twice"
    );
}

#[test]
fn json_has_one_object_per_sweep_run_with_the_contract_keys() {
    let server = start_server(Behaviour::Store { raft_info: false });
    let mut args = vec!["--target", &server.address, "--json", "--pipeline", "4"];
    args.extend(["--sweep", "clients=1,3"]);
    args.extend(SHORT);
    let runs = json_lines(&bench(&args));
    assert_eq!(runs.len(), 2);
    for (run, clients) in runs.iter().zip([1, 3]) {
        assert_eq!(run["clients"], clients);
        assert_eq!(run["pipeline"], 4);
        for key in [
            "ops_per_sec",
            "p50_us",
            "p99_us",
            "p999_us",
            "max_us",
            "clients",
            "pipeline",
            "value_size",
            "read_ratio",
            "target",
        ] {
            assert!(
                run[key].is_number() || run[key].is_string(),
                "{key} in {run}"
            );
        }
        let p50 = run["p50_us"].as_f64().unwrap();
        let p99 = run["p99_us"].as_f64().unwrap();
        let max = run["max_us"].as_f64().unwrap();
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{run}");
        // A server without a `# Raft` section (like Redis): storage figures unknown.
        assert_eq!(run["entries_per_fsync"], serde_json::Value::Null);
        assert_eq!(run["fsyncs_per_sec"], serde_json::Value::Null);
    }
}

#[test]
fn raft_info_counters_become_storage_figures() {
    let server = start_server(Behaviour::Store { raft_info: true });
    let mut args = vec!["--target", &server.address, "--json", "--clients", "2"];
    args.extend(["--seconds", "1", "--warmup", "0"]);
    let run = &json_lines(&bench(&args))[0];
    // The fake server reports one fsync per 10 entries written.
    let entries_per_fsync = run["entries_per_fsync"].as_f64().unwrap();
    assert!((9.0..=11.0).contains(&entries_per_fsync), "{run}");
    assert!(run["fsyncs_per_sec"].as_f64().unwrap() > 0.0, "{run}");
    assert!(run["bytes_written_per_op"].as_f64().unwrap() > 0.0, "{run}");
    assert_eq!(run["storage_figures_from"], server.address.as_str());
}

#[test]
fn table_output_has_a_header_and_one_row_per_run() {
    let server = start_server(Behaviour::Store { raft_info: true });
    let mut args = vec!["--target", &server.address, "--clients", "2"];
    args.extend(SHORT);
    let output = bench(&args);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let stdout = stdout_of(&output);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].contains(&server.address) && lines[0].contains("closed loop"));
    for column in [
        "clients",
        "ops/s",
        "p50_us",
        "p99_us",
        "p999_us",
        "max_us",
        "errors",
        "entries/fsync",
    ] {
        assert!(lines[1].contains(column), "{column} missing: {}", lines[1]);
    }
    let cells: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(cells.len(), 13, "{}", lines[2]);
    assert_eq!(&cells[..4], ["2", "1", "100", "0"]);
    assert!(cells[4].parse::<f64>().unwrap() > 0.0, "ops/s");
    assert_eq!(cells[9], "0", "errors");
    assert_ne!(cells[10], "-", "entries/fsync comes from INFO");
}

#[test]
fn gets_preload_the_key_space_and_find_every_value() {
    let server = start_server(Behaviour::Store { raft_info: false });
    let mut args = vec!["--target", &server.address, "--json", "--clients", "2"];
    args.extend(["--read-ratio", "1.0", "--keys", "300", "--value-size", "7"]);
    args.extend(SHORT);
    let run = &json_lines(&bench(&args))[0];
    assert!(run["ops"].as_u64().unwrap() > 0);
    assert_eq!(run["errors"], 0, "a GET found a missing key: {run}");
}

#[test]
fn get_of_the_wrong_size_is_counted_as_an_error_not_a_success() {
    let server = start_server(Behaviour::ShortGets);
    let mut args = vec!["--target", &server.address, "--json", "--clients", "2"];
    args.extend(["--read-ratio", "1.0", "--keys", "50"]);
    args.extend(SHORT);
    let output = bench(&args);
    assert_eq!(output.status.code(), Some(1), "no operation succeeded");
    let run: serde_json::Value = serde_json::from_str(stdout_of(&output).trim()).unwrap();
    assert_eq!(run["ops"], 0);
    let wrong = run["error_kinds"]["wrong_reply"].as_u64().unwrap();
    assert!(wrong > 0);
    assert_eq!(run["errors"].as_u64().unwrap(), wrong);
    assert!(
        run["error_sample"]
            .as_str()
            .unwrap()
            .contains("expected 100"),
        "{run}"
    );
}

#[test]
fn notleader_redirect_is_followed_to_the_leader() {
    let leader = start_server(Behaviour::Store { raft_info: false });
    let follower = start_server(Behaviour::RedirectTo(leader.address.clone()));
    let mut args = vec!["--target", &follower.address, "--json", "--clients", "3"];
    args.extend(SHORT);
    let run = &json_lines(&bench(&args))[0];
    let redirects = run["error_kinds"]["not_leader"].as_u64().unwrap();
    assert!(redirects >= 1, "{run}");
    assert!(
        redirects <= follower.commands.load(Ordering::SeqCst),
        "each redirect was a real reply"
    );
    let ops = run["ops"].as_u64().unwrap();
    assert!(
        ops > 0 && ops <= leader.commands.load(Ordering::SeqCst),
        "{run}"
    );
    assert_eq!(
        run["errors"].as_u64().unwrap(),
        redirects,
        "no other errors"
    );
}

#[test]
fn notleader_without_address_moves_on_to_another_target() {
    let no_leader = start_server(Behaviour::NoLeader);
    let leader = start_server(Behaviour::Store { raft_info: false });
    let mut args = vec!["--target", &no_leader.address, "--target", &leader.address];
    args.extend(["--json", "--clients", "2"]);
    args.extend(SHORT);
    let run = &json_lines(&bench(&args))[0];
    assert!(
        run["error_kinds"]["not_leader"].as_u64().unwrap() >= 1,
        "{run}"
    );
    assert!(run["ops"].as_u64().unwrap() > 0, "{run}");
    assert_eq!(
        run["target"],
        format!("{},{}", no_leader.address, leader.address).as_str()
    );
}

#[test]
fn unreachable_target_is_reported_as_io_errors_and_exit_1() {
    // Bind then drop a listener: a port on loopback that nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let output = bench(&[
        "--target",
        &address,
        "--json",
        "--clients",
        "1",
        "--seconds",
        "0.3",
        "--warmup",
        "0",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let run: serde_json::Value = serde_json::from_str(stdout_of(&output).trim()).unwrap();
    assert!(run["error_kinds"]["io"].as_u64().unwrap() >= 1, "{run}");
    assert!(
        run["error_sample"].as_str().unwrap().contains("connect"),
        "{run}"
    );
}

#[test]
fn open_loop_run_reports_its_mode_and_rate() {
    let server = start_server(Behaviour::Store { raft_info: false });
    let mut args = vec!["--target", &server.address, "--json", "--clients", "2"];
    args.extend(["--rate", "400", "--pipeline", "4"]);
    args.extend(SHORT);
    let run = &json_lines(&bench(&args))[0];
    assert_eq!(run["mode"], "open");
    assert_eq!(run["rate"], 400.0);
    assert!(run["ops"].as_u64().unwrap() > 0, "{run}");
    assert_eq!(run["errors"], 0, "{run}");
}

#[test]
fn plot_writes_an_svg_with_both_charts() {
    let server = start_server(Behaviour::Store { raft_info: false });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.svg");
    let path_text = path.to_str().unwrap();
    let mut args = vec!["--target", &server.address, "--json", "--plot", path_text];
    args.extend(["--sweep", "clients=1,2"]);
    args.extend(SHORT);
    assert_eq!(json_lines(&bench(&args)).len(), 2);
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(100)]);
    assert!(svg.contains("throughput") && svg.contains("latency percentiles"));
    assert!(svg.contains("clients"), "x axis names the swept flag");
}

#[test]
fn wal_subcommand_still_runs_with_its_own_flags() {
    let dir = tempfile::tempdir().unwrap();
    let dir_text = dir.path().to_str().unwrap();
    let output = bench(&[
        "wal",
        "--writers",
        "2",
        "--inflight",
        "4",
        "--seconds",
        "0.2",
        "--json",
        "--dir",
        dir_text,
    ]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    let report: serde_json::Value = serde_json::from_str(stdout_of(&output).trim()).unwrap();
    assert_eq!(report["writers"], 2);
    assert!(report["entries"].as_u64().unwrap() > 0);
}
