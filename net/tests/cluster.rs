//! Real `tally-server` processes on loopback: elections, redirects, pipelined writes,
//! SIGKILL of the leader, restart from the directory, a follower cut off by a proxy and
//! healed, redis-cli / redis-benchmark, and bad input on both ports.
//!
//! No timing assertions: every wait is a poll with a generous deadline so a broken build
//! fails instead of hanging. Every child process is killed by a drop guard, even when a
//! test panics.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::*;
use tally_net::resp::{write_command, RespValue};

// ---------------------------------------------------------------------------------
// Scenarios.

#[test]
fn three_members_elect_one_leader_followers_redirect_and_sigterm_exits_cleanly() {
    elect_redirect_write_and_sigterm(Cluster::start(3));
}

#[test]
fn three_members_with_a_cluster_secret_elect_redirect_write_and_sigterm_exit_cleanly() {
    elect_redirect_write_and_sigterm(Cluster::start_secured(3));
}

fn elect_redirect_write_and_sigterm(mut cluster: Cluster) {
    let leader = cluster.wait_for_leader();
    let leader_addr = format!("127.0.0.1:{}", cluster.member(leader).client_port);
    for member in &cluster.members {
        let info = member.raft_info().expect("INFO raft");
        assert_eq!(info["node_id"], member.id.to_string());
        assert_eq!(info["leader_client_addr"], leader_addr);
        for key in [
            "term",
            "commit_index",
            "applied_index",
            "last_log_index",
            "entries_per_fsync",
            "peer_handshake_refusals",
        ] {
            assert!(info.contains_key(key), "INFO lacks {key}: {info:?}");
        }
        let expected_role = if member.id == leader {
            "leader"
        } else {
            "follower"
        };
        assert_eq!(info["role"], expected_role);
        if member.id != leader {
            let mut client = member.client();
            let expected = format!("NOTLEADER {leader_addr}");
            assert_eq!(
                error_text(&client.call(&["SET", "k", "v"])),
                Some(expected.clone())
            );
            assert_eq!(error_text(&client.call(&["GET", "k"])), Some(expected));
        }
    }
    let mut client = cluster.member(leader).client();
    assert_eq!(client.call(&["SET", "k", "v"]), ok());
    assert_eq!(client.call(&["GET", "k"]), bulk("v"));
    assert_eq!(client.call(&["CAS", "k", "v", "w"]), RespValue::Integer(1));
    assert_eq!(client.call(&["CAS", "k", "v", "x"]), RespValue::Integer(0));
    assert_eq!(client.call(&["INCR", "n"]), RespValue::Integer(1));
    assert_eq!(client.call(&["DEL", "n", "missing"]), RespValue::Integer(1));
    assert_eq!(client.call(&["PING"]), RespValue::Simple(b"PONG".to_vec()));
    // The INFO # Server section clients look for.
    let RespValue::Bulk(Some(server)) = client.call(&["INFO", "server"]) else {
        panic!("INFO server is a bulk string")
    };
    assert!(String::from_utf8_lossy(&server).contains("redis_version:7.0.0"));
    for id in 1..=3 {
        let status = cluster.member_mut(id).sigterm();
        assert!(
            status.success(),
            "member {id} exited with {status} after SIGTERM"
        );
    }
}

#[test]
fn pipelined_writes_from_many_clients_are_all_readable_from_the_leader() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let port = cluster.member(leader).client_port;
    const CLIENTS: usize = 6;
    const ROUNDS: usize = 10;
    const PIPELINE: usize = 25;
    let writers: Vec<_> = (0..CLIENTS)
        .map(|client_index| {
            std::thread::spawn(move || {
                let mut client = Client::connect(port).expect("connect");
                for round in 0..ROUNDS {
                    let mut commands: Vec<Vec<Vec<u8>>> = (0..PIPELINE)
                        .map(|i| {
                            let key = format!("c{client_index}-k{}", round * PIPELINE + i);
                            cmd(&["SET", &key, &format!("v{client_index}-{round}-{i}")])
                        })
                        .collect();
                    commands.push(cmd(&["INCR", "shared-counter"]));
                    // A read right after this connection's writes sees them.
                    let last_key = format!("c{client_index}-k{}", round * PIPELINE + PIPELINE - 1);
                    commands.push(cmd(&["GET", &last_key]));
                    let replies = client.pipeline(&commands);
                    for reply in &replies[..PIPELINE] {
                        assert_eq!(*reply, ok());
                    }
                    assert!(matches!(replies[PIPELINE], RespValue::Integer(_)));
                    let expected = format!("v{client_index}-{round}-{}", PIPELINE - 1);
                    assert_eq!(
                        replies[PIPELINE + 1],
                        bulk(&expected),
                        "read-your-writes in a pipeline"
                    );
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer thread");
    }
    let mut client = cluster.member(leader).client();
    for client_index in 0..CLIENTS {
        let keys: Vec<String> = (0..ROUNDS * PIPELINE)
            .map(|k| format!("c{client_index}-k{k}"))
            .collect();
        let mut mget = vec!["MGET"];
        mget.extend(keys.iter().map(String::as_str));
        let RespValue::Array(Some(values)) = client.call(&mget) else {
            panic!("MGET returns an array")
        };
        for (k, value) in values.iter().enumerate() {
            let expected = format!("v{client_index}-{}-{}", k / PIPELINE, k % PIPELINE);
            assert_eq!(*value, bulk(&expected));
        }
    }
    assert_eq!(
        client.call(&["GET", "shared-counter"]),
        bulk(&(CLIENTS * ROUNDS).to_string()),
        "every INCR applied exactly once"
    );
}

#[test]
fn reads_served_on_the_leaders_io_threads_see_every_write_acknowledged_on_another_connection() {
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let member = cluster.member(leader);
    let mut writer = member.client();
    let mut reader = member.client();
    for round in 0..200 {
        let value = format!("v{round}");
        assert_eq!(writer.call(&["SET", "seen", &value]), ok());
        // A different connection (maybe another I/O thread), right after the OK.
        assert_eq!(
            reader.call(&["GET", "seen"]),
            bulk(&value),
            "round {round}: a read missed an acknowledged write"
        );
        assert_eq!(
            reader.call(&["MGET", "seen", "missing"]),
            RespValue::Array(Some(vec![bulk(&value), RespValue::Bulk(None)]))
        );
    }
    // Reads with no write in between are answered from the published view.
    for _ in 0..50 {
        assert_eq!(reader.call(&["GET", "seen"]), bulk("v199"));
    }
    let served_here = member
        .info_section("stats")
        .and_then(|stats| stats.get("reads_lease_local")?.parse::<u64>().ok())
        .expect("INFO stats has reads_lease_local");
    assert!(
        served_here > 0,
        "no read was served on the I/O thread ({served_here})"
    );
}

#[test]
fn sigkill_of_the_leader_loses_no_acknowledged_write_and_the_restarted_member_catches_up() {
    let mut cluster = Cluster::start(3);
    let old_leader = cluster.wait_for_leader();
    let port = cluster.member(old_leader).client_port;
    // Writers keep writing until the leader dies; every OK is recorded.
    let acknowledged: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let acknowledged = Arc::clone(&acknowledged);
            std::thread::spawn(move || {
                let Ok(mut client) = Client::connect(port) else {
                    return;
                };
                for batch in 0.. {
                    let pairs: Vec<(String, String)> = (0..10)
                        .map(|i| {
                            (
                                format!("w{writer}-{batch}-{i}"),
                                format!("value-{writer}-{batch}-{i}"),
                            )
                        })
                        .collect();
                    let commands: Vec<_> = pairs.iter().map(|(k, v)| cmd(&["SET", k, v])).collect();
                    let mut out = Vec::new();
                    for command in &commands {
                        let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
                        write_command(&mut out, &args);
                    }
                    if client.stream.write_all(&out).is_err() {
                        return;
                    }
                    for pair in pairs {
                        match client.read_reply() {
                            Some(reply) if reply == ok() => {
                                acknowledged.lock().expect("lock").push(pair)
                            }
                            Some(_) => {}
                            None => return, // the leader died
                        }
                    }
                }
            })
        })
        .collect();
    wait_until("some writes acknowledged", || {
        (acknowledged.lock().expect("lock").len() >= 200).then_some(())
    });
    cluster.member_mut(old_leader).sigkill();
    for writer in writers {
        writer.join().expect("writer thread");
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    let new_leader = cluster.wait_for_leader();
    assert_ne!(new_leader, old_leader);
    let mut client = cluster.member(new_leader).client();
    for chunk in acknowledged.chunks(200) {
        let mut mget = vec!["MGET"];
        mget.extend(chunk.iter().map(|(k, _)| k.as_str()));
        let RespValue::Array(Some(values)) = client.call(&mget) else {
            panic!("MGET returns an array")
        };
        for ((key, value), got) in chunk.iter().zip(values) {
            assert_eq!(got, bulk(value), "acknowledged write of {key} lost");
        }
    }
    // More writes while the old leader is down, then restart it from its directory.
    for i in 0..50 {
        assert_eq!(client.call(&["SET", &format!("after-{i}"), "x"]), ok());
    }
    let commit = cluster
        .member(new_leader)
        .info_u64("commit_index")
        .expect("commit index");
    cluster.member_mut(old_leader).spawn();
    cluster.wait_applied(old_leader, commit);
    // The restarted member rejoins: all three agree on one leader again.
    cluster.wait_for_leader();
}

#[test]
fn a_follower_cut_off_by_a_proxy_catches_up_after_healing() {
    // Every link goes through its own proxy, so one member can be isolated.
    let proxies: Arc<Mutex<BTreeMap<(u64, u64), Proxy>>> = Arc::default();
    let recorded = Arc::clone(&proxies);
    let cluster = Cluster::start_with(3, move |from, to, port| {
        let proxy = Proxy::start(port);
        let proxy_port = proxy.port;
        recorded.lock().expect("lock").insert((from, to), proxy);
        proxy_port
    });
    let leader = cluster.wait_for_leader();
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let links_of_follower = |proxies: &BTreeMap<(u64, u64), Proxy>, pause: bool| {
        for ((from, to), proxy) in proxies {
            if *from == follower || *to == follower {
                if pause {
                    proxy.pause();
                } else {
                    proxy.resume();
                }
            }
        }
    };
    links_of_follower(&proxies.lock().expect("lock"), true);
    let mut client = cluster.member(leader).client();
    for i in 0..100 {
        assert_eq!(
            client.call(&["SET", &format!("cut-{i}"), &i.to_string()]),
            ok()
        );
    }
    let commit = cluster
        .member(leader)
        .info_u64("commit_index")
        .expect("commit index");
    let behind = cluster
        .member(follower)
        .info_u64("applied_index")
        .expect("applied");
    assert!(
        behind < commit,
        "the cut-off follower cannot have applied the new writes"
    );
    links_of_follower(&proxies.lock().expect("lock"), false);
    cluster.wait_applied(follower, commit);
    // The cluster still agrees on one leader once the follower is back.
    cluster.wait_for_leader();
}

#[test]
fn bad_resp_and_bad_peer_frames_close_only_that_connection() {
    let cluster = Cluster::start(1);
    let leader = cluster.wait_for_leader();
    assert_eq!(leader, 1);
    let member = cluster.member(1);
    let cases: [(&str, &[u8]); 3] = [
        ("garbage", b"*abc\r\n"),
        ("oversized bulk", b"*2\r\n$3\r\nGET\r\n$99999999999\r\n"),
        ("bad element type", b"*1\r\n:12\r\n"),
    ];
    for (what, bytes) in cases {
        let mut client = member.client();
        assert_eq!(client.call(&["SET", "before", what]), ok());
        client.send_raw(bytes);
        let reply = client
            .read_reply()
            .unwrap_or_else(|| panic!("{what}: an error reply"));
        let text = error_text(&reply).unwrap_or_else(|| panic!("{what}: got {reply:?}"));
        assert!(text.starts_with("ERR Protocol error"), "{what}: {text}");
        assert!(client.is_closed_by_server(), "{what}: connection closed");
    }
    // A request cut off by a half-close.
    let mut client = member.client();
    client.send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nk");
    client.stream.shutdown(Shutdown::Write).expect("half close");
    let reply = client
        .read_reply()
        .expect("an error for the truncated request");
    assert!(error_text(&reply).is_some_and(|t| t.starts_with("ERR Protocol error")));
    // Garbage on the peer port closes that connection only.
    let mut peer = TcpStream::connect(("127.0.0.1", member.peer_port)).expect("connect peer port");
    peer.set_read_timeout(Some(DEADLINE)).expect("timeout");
    peer.write_all(&[0xAB; 64]).expect("send garbage");
    let mut sink = [0u8; 64];
    assert!(
        matches!(peer.read(&mut sink), Ok(0) | Err(_)),
        "peer port closes on garbage"
    );
    // The node keeps serving.
    let mut client = member.client();
    assert_eq!(client.call(&["GET", "before"]), bulk("bad element type"));
    assert_eq!(
        client.call(&["HELLO", "4"]),
        RespValue::Error(b"NOPROTO unsupported protocol version".to_vec())
    );
    assert_eq!(member.raft_info().expect("INFO")["role"], "leader");
}

fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| Path::new(candidate).is_file())
    })
}

#[test]
fn redis_cli_and_redis_benchmark_work_against_the_cluster() {
    let (Some(redis_cli), Some(redis_benchmark)) = (tool("redis-cli"), tool("redis-benchmark"))
    else {
        println!("SKIP redis_cli_and_redis_benchmark_work_against_the_cluster: redis-cli/redis-benchmark not installed (apt-get install -y redis-tools)");
        return;
    };
    let cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let port = cluster.member(leader).client_port.to_string();
    let run = |program: &PathBuf, args: &[&str]| {
        let output = Command::new(program)
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .expect("run redis tool");
        assert!(
            output.status.success(),
            "{program:?} {args:?} failed: {output:?}"
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(run(&redis_cli, &["SET", "tool-key", "hello"]).trim(), "OK");
    assert_eq!(run(&redis_cli, &["GET", "tool-key"]).trim(), "hello");
    assert!(run(&redis_cli, &["INFO", "raft"]).contains("role:leader"));
    let report = run(
        &redis_benchmark,
        &["-t", "set,get", "-n", "2000", "-P", "8", "-q"],
    );
    assert!(
        report.contains("SET:") && report.contains("GET:"),
        "benchmark report: {report}"
    );
    // redis-benchmark wrote key:__rand_int__ (the default keyspace: one key).
    assert_eq!(run(&redis_cli, &["EXISTS", "key:__rand_int__"]).trim(), "1");
}
