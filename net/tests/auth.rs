//! Client authentication with `--requirepass-file`: every AUTH form, `-NOAUTH` before
//! it (INFO included), `-WRONGPASS`, the failure counter and log line, on a real
//! `tally-server` process.

mod common;

use std::net::TcpListener;
use std::process::Command;

use common::*;
use tally_net::client_port::{AUTH_NOT_CONFIGURED_ERROR, NOAUTH_ERROR, WRONGPASS_ERROR};
use tally_net::resp::RespValue;
use tally_net::server::{Server, ServerConfig};

const PASSWORD: &str = "correct horse battery staple";

fn pong() -> RespValue {
    RespValue::Simple(b"PONG".to_vec())
}

fn error(text: &str) -> Option<String> {
    Some(text.to_string())
}

/// A one-member cluster whose clients must give `PASSWORD` (the file ends in a newline,
/// which is not part of the password).
fn start_protected() -> (Cluster, tempfile::TempDir) {
    let secrets = tempfile::tempdir().expect("tempdir");
    let file = secrets.path().join("requirepass");
    std::fs::write(&file, format!("{PASSWORD}\n")).expect("write the password file");
    let file = file.to_str().expect("utf-8 path").to_string();
    let cluster = Cluster::start_with_args(1, &["--requirepass-file", &file]);
    (cluster, secrets)
}

/// Connects and authenticates, once the member leads.
fn authenticated_client(member: &Member) -> Client {
    wait_until("the member leads and takes AUTH", || {
        let mut client = Client::connect(member.client_port).ok()?;
        if client.call(&["AUTH", PASSWORD]) != ok() {
            return None;
        }
        let RespValue::Bulk(Some(info)) = client.call(&["INFO", "raft"]) else {
            return None;
        };
        String::from_utf8_lossy(&info)
            .contains("role:leader")
            .then_some(client)
    })
}

fn stats_field(client: &mut Client, key: &str) -> Option<String> {
    let RespValue::Bulk(Some(text)) = client.call(&["INFO", "stats"]) else {
        return None;
    };
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key}:")).map(str::to_string))
}

#[test]
fn every_auth_form_unlocks_a_connection_and_nothing_else_does() {
    let (cluster, _secrets) = start_protected();
    let member = cluster.member(1);
    let mut admin = authenticated_client(member);
    assert_eq!(admin.call(&["SET", "k", "v"]), ok());

    // Before AUTH: only AUTH, HELLO, PING and QUIT are served.
    let mut client = member.client();
    assert_eq!(client.call(&["PING"]), pong());
    for command in [
        &["GET", "k"][..],
        &["SET", "k", "stolen"],
        &["INFO"],
        &["INFO", "raft"],
        &["info", "all"],
        &["INFO", "server"],
        &["CONFIG", "GET", "save"],
        &["TALLY", "SNAPSHOT"],
        &["ECHO", "hi"],
    ] {
        assert_eq!(
            error_text(&client.call(command)),
            error(NOAUTH_ERROR),
            "{command:?}"
        );
    }
    // HELLO passes the gate and answers as Redis does without its AUTH option; with
    // it, it authenticates.
    assert!(
        error_text(&client.call(&["HELLO", "3"]))
            .is_some_and(|e| e
                .starts_with("NOAUTH HELLO must be called with the client already authenticated")),
        "HELLO is served before AUTH"
    );
    let mut hello_client = member.client();
    assert!(matches!(
        hello_client.call(&["HELLO", "2", "AUTH", "default", PASSWORD]),
        tally_net::resp::RespValue::Array(Some(_))
    ));
    assert_eq!(hello_client.call(&["GET", "k"]), bulk("v"));

    // Wrong password, wrong user, wrong arity.
    assert_eq!(
        error_text(&client.call(&["AUTH", "guess"])),
        error(WRONGPASS_ERROR)
    );
    assert_eq!(
        error_text(&client.call(&["AUTH", "default", "guess"])),
        error(WRONGPASS_ERROR)
    );
    assert_eq!(
        error_text(&client.call(&["AUTH", "admin", PASSWORD])),
        error(WRONGPASS_ERROR)
    );
    assert_eq!(
        error_text(&client.call(&["AUTH", &format!("{PASSWORD}\n")])),
        error(WRONGPASS_ERROR),
        "the file's trailing newline is not part of the password"
    );
    assert!(error_text(&client.call(&["AUTH", "a", "b", "c"]))
        .is_some_and(|e| e.contains("wrong number of arguments")));
    assert_eq!(error_text(&client.call(&["GET", "k"])), error(NOAUTH_ERROR));

    // AUTH password.
    assert_eq!(client.call(&["AUTH", PASSWORD]), ok());
    assert_eq!(client.call(&["GET", "k"]), bulk("v"));
    // A later failure does not undo an earlier success (like Redis).
    assert_eq!(
        error_text(&client.call(&["AUTH", "guess"])),
        error(WRONGPASS_ERROR)
    );
    assert_eq!(client.call(&["GET", "k"]), bulk("v"));

    // AUTH default password, on another connection.
    let mut other = member.client();
    assert_eq!(other.call(&["AUTH", "default", PASSWORD]), ok());
    assert_eq!(other.call(&["SET", "k", "w"]), ok());
    assert_eq!(client.call(&["GET", "k"]), bulk("w"));

    // Failures: 4 WRONGPASS before success, 1 after.
    assert_eq!(
        stats_field(&mut admin, "acl_access_denied_auth").as_deref(),
        Some("5")
    );
    let log = std::fs::read_to_string(&member.log).expect("member log");
    let failures: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("client authentication failed"))
        .collect();
    assert_eq!(failures.len(), 5, "one log line per failure");
    assert!(failures.iter().all(|line| line.contains("127.0.0.1:")));
    assert!(!log.contains(PASSWORD), "the password is never logged");

    // QUIT before AUTH is answered.
    let mut quitter = member.client();
    assert_eq!(quitter.call(&["QUIT"]), ok());
    assert!(quitter.is_closed_by_server());
}

#[test]
fn redis_cli_authenticates_with_dash_a() {
    if Command::new("redis-cli").arg("--version").output().is_err() {
        eprintln!("redis-cli not installed; skipping");
        return;
    }
    let (cluster, _secrets) = start_protected();
    let member = cluster.member(1);
    drop(authenticated_client(member));
    let port = member.client_port.to_string();
    let run = |extra: &[&str]| {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(extra)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    assert_eq!(
        run(&["-a", PASSWORD, "--no-auth-warning", "SET", "cli", "yes"]),
        "OK"
    );
    assert_eq!(
        run(&["-a", PASSWORD, "--no-auth-warning", "GET", "cli"]),
        "yes"
    );
    assert!(run(&["GET", "cli"]).contains("NOAUTH"));
}

#[test]
fn an_empty_password_file_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("empty");
    std::fs::write(&file, "\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_tally-server"))
        .args(["--id", "1", "--listen-peer", "127.0.0.1:0"])
        .args(["--listen-client", "127.0.0.1:0"])
        .arg("--dir")
        .arg(dir.path().join("wal"))
        .arg("--requirepass-file")
        .arg(&file)
        .output()
        .expect("run tally-server");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("empty password"));
}

#[test]
fn auth_without_a_configured_password_is_refused_like_redis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        ServerConfig::new(1, dir.path(), Vec::new()),
        TcpListener::bind("127.0.0.1:0").expect("bind peer"),
        TcpListener::bind("127.0.0.1:0").expect("bind client"),
    )
    .expect("start");
    let mut client = Client::connect(server.client_addr().port()).expect("connect");
    assert_eq!(
        error_text(&client.call(&["AUTH", "anything"])),
        error(AUTH_NOT_CONFIGURED_ERROR)
    );
    assert_eq!(client.call(&["PING"]), pong());
    assert!(client.call(&["INFO", "server"]) != RespValue::Error(NOAUTH_ERROR.into()));
    server.shutdown().expect("clean shutdown");
}
