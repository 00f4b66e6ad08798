//! `tally-bench --target ... --password`: every connection authenticates first, so a
//! run against a member started with a required password succeeds; without the flag it
//! gets `-NOAUTH` and reports no successful operation.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tally_net::client_port::Password;
use tally_net::server::{Server, ServerConfig};

fn protected_member(dir: &std::path::Path, password: &str) -> Server {
    let mut config = ServerConfig::new(1, dir, Vec::new());
    config.requirepass = Password::new(password);
    let server = Server::start(
        config,
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.handle().status().role() != tally_engine::raft::Role::Leader {
        assert!(Instant::now() < deadline, "the member never led");
        std::thread::sleep(Duration::from_millis(10));
    }
    server
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_target_that_requires_a_password_is_driven_with_password_and_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let server = protected_member(dir.path(), "bench-secret");
    let target = server.client_addr().to_string();
    let common = [
        "--target",
        &target,
        "--json",
        "--clients",
        "2",
        "--seconds",
        "0.5",
        "--warmup",
        "0",
    ];
    let output = bench(&[&common[..], &["--password", "bench-secret"]].concat());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert!(run["ops_per_sec"].as_f64().unwrap() > 0.0, "{run}");
    assert_eq!(run["errors"].as_u64(), Some(0), "{run}");

    let refused = bench(&common);
    assert_ne!(refused.status.code(), Some(0), "ran without the password");
    let wrong = bench(&[&common[..], &["--password", "guess"]].concat());
    assert_ne!(wrong.status.code(), Some(0), "ran with a wrong password");
    server.shutdown().unwrap();
}
