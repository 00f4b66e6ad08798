//! One set of limits, end to end, on real `tally-server` processes: no client command,
//! burst or reply can make the leader stop or its memory grow without bound.
//!
//! Each scenario reproduces a failure seen before the limits were unified: a 9 MiB SET
//! that the client port accepted and the WAL refused (fail-stop of the leader); a bulk
//! loader's 64 MiB pipelined burst that became one WAL append over its bound (same); and
//! MGET replies that were encoded into a connection's output without a cap (gigabytes of
//! RSS). No timing assertions: waits are polls with generous deadlines.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use tally_net::resp::{write_command, RespValue};

/// The leader's id once every member agrees, after checking every member still runs.
/// These tests assert that the leader survives the load they create; a busy CI
/// machine starving a follower for half a second must not turn into an election that
/// the test would misread (the election timeout is not what they test).
const PATIENT_ELECTIONS: &[&str] = &["--election-timeout-ms", "3000", "--heartbeat-ms", "100"];

fn assert_all_running(cluster: &mut Cluster) {
    for member in &mut cluster.members {
        assert!(member.is_running(), "member {} exited", member.id);
    }
}

fn limits_counter(member: &Member, key: &str) -> u64 {
    member
        .info_section("limits")
        .and_then(|info| info.get(key)?.parse().ok())
        .unwrap_or_else(|| panic!("INFO limits has no {key}"))
}

#[test]
fn a_command_above_the_limit_gets_an_error_naming_it_and_the_leader_keeps_serving() {
    let mut cluster = Cluster::start_with_args(3, PATIENT_ELECTIONS);
    let leader = cluster.wait_for_leader();
    let mut client = cluster.member(leader).client();
    let value = vec![b'v'; 9 << 20];
    let reply = client
        .pipeline(&[vec![b"SET".to_vec(), b"big".to_vec(), value]])
        .remove(0);
    let text = error_text(&reply).unwrap_or_else(|| panic!("expected an error, got {reply:?}"));
    assert!(
        text.starts_with("ERR") && text.contains("max-command-bytes"),
        "the error names the limit: {text}"
    );
    // Nothing else happened: the connection is usable, nothing was written, the same
    // leader serves.
    assert_eq!(client.call(&["SET", "small", "1"]), ok());
    assert_eq!(client.call(&["GET", "big"]), RespValue::Bulk(None));
    assert_eq!(cluster.wait_for_leader(), leader);
    assert_all_running(&mut cluster);
    assert_eq!(
        limits_counter(cluster.member(leader), "commands_too_large"),
        1
    );
    let limits = cluster
        .member(leader)
        .info_section("limits")
        .expect("INFO limits");
    let max_command: u64 = limits["max_command_bytes"].parse().expect("number");
    let max_entry: u64 = limits["max_entry_bytes"].parse().expect("number");
    assert!(
        max_command < max_entry,
        "the client port's limit is below the WAL's"
    );
}

#[test]
fn a_bulk_loader_pipelining_16384_sets_of_4_kib_in_one_burst_gets_every_reply_and_the_leader_survives(
) {
    const N_SETS: usize = 16_384;
    let mut cluster = Cluster::start_with_args(3, PATIENT_ELECTIONS);
    let leader = cluster.wait_for_leader();
    let mut client = cluster.member(leader).client();
    let value = vec![b'x'; 4096];
    let mut burst = Vec::with_capacity(N_SETS * 4200);
    for k in 0..N_SETS {
        let key = format!("load:{k}");
        write_command(&mut burst, &[b"SET", key.as_bytes(), &value]);
    }
    // Write the 64 MiB burst from another thread while this one reads the replies.
    let mut writer = client.stream.try_clone().expect("clone the socket");
    let sender = std::thread::spawn(move || writer.write_all(&burst).is_ok());
    for k in 0..N_SETS {
        let reply = client
            .read_reply()
            .unwrap_or_else(|| panic!("connection closed after {k} of {N_SETS} replies"));
        assert_eq!(reply, ok(), "reply {k}");
    }
    assert!(sender.join().expect("sender thread"), "the burst was sent");
    for k in [0, N_SETS / 2, N_SETS - 1] {
        let key = format!("load:{k}");
        assert_eq!(
            client.call(&["GET", &key]),
            RespValue::Bulk(Some(value.clone()))
        );
    }
    assert_eq!(cluster.wait_for_leader(), leader);
    assert_all_running(&mut cluster);
}

#[test]
fn an_mget_whose_reply_would_pass_the_output_limit_closes_only_that_connection() {
    let mut cluster = Cluster::start_with_args(
        3,
        &[
            PATIENT_ELECTIONS,
            &["--client-output-buffer-limit-bytes", "67108864"],
        ]
        .concat(),
    );
    let leader = cluster.wait_for_leader();
    let mut client = cluster.member(leader).client();
    let value = vec![b'b'; 4 << 20];
    assert_eq!(
        client.pipeline(&[vec![b"SET".to_vec(), b"bv".to_vec(), value]]),
        vec![ok()]
    );
    // 100 copies of a 4 MiB value: a 400 MiB reply against a 64 MiB limit.
    let mut mget = vec![b"MGET".to_vec()];
    mget.extend(std::iter::repeat_n(b"bv".to_vec(), 100));
    let args: Vec<&[u8]> = mget.iter().map(Vec::as_slice).collect();
    let mut request = Vec::new();
    write_command(&mut request, &args);
    client.send_raw(&request);
    assert!(
        client.is_closed_by_server(),
        "the connection is closed instead of buffering the reply"
    );
    let rss_kib = cluster.member(leader).rss_anon_kib().expect("leader RSS");
    assert!(
        rss_kib < 200 * 1024,
        "the refused reply was never built: leader RssAnon {rss_kib} KiB"
    );
    // Only that connection: others are served, the leader is the same.
    let mut other = cluster.member(leader).client();
    assert_eq!(other.call(&["SET", "after", "1"]), ok());
    assert_eq!(cluster.wait_for_leader(), leader);
    assert_all_running(&mut cluster);
    assert_eq!(
        limits_counter(
            cluster.member(leader),
            "client_output_buffer_limit_disconnections"
        ),
        1
    );
}

#[test]
fn pipelined_mgets_whose_replies_are_not_read_hold_only_the_soft_limit_of_encoded_replies() {
    const N_MGETS: usize = 24;
    const COPIES: usize = 16;
    const VALUE_BYTES: usize = 1 << 20;
    let mut cluster = Cluster::start_with_args(3, PATIENT_ELECTIONS);
    let leader = cluster.wait_for_leader();
    let mut client = cluster.member(leader).client();
    let value = vec![b'm'; VALUE_BYTES];
    assert_eq!(
        client.pipeline(&[vec![b"SET".to_vec(), b"mv".to_vec(), value.clone()]]),
        vec![ok()]
    );
    let mut mget = vec![b"MGET".to_vec()];
    mget.extend(std::iter::repeat_n(b"mv".to_vec(), COPIES));
    let args: Vec<&[u8]> = mget.iter().map(Vec::as_slice).collect();
    let mut requests = Vec::new();
    for _ in 0..N_MGETS {
        write_command(&mut requests, &args);
    }
    // 24 replies of 16 MiB each (384 MiB), none read for a while.
    client.send_raw(&requests);
    std::thread::sleep(Duration::from_secs(3));
    let rss_kib = cluster.member(leader).rss_anon_kib().expect("leader RSS");
    assert!(
        rss_kib < 200 * 1024,
        "unsent replies are bounded by the soft limit: leader RssAnon {rss_kib} KiB"
    );
    // Every reply arrives intact once the client reads.
    let mut one_reply = Vec::new();
    one_reply.extend_from_slice(format!("*{COPIES}\r\n").as_bytes());
    for _ in 0..COPIES {
        one_reply.extend_from_slice(format!("${VALUE_BYTES}\r\n").as_bytes());
        one_reply.extend_from_slice(&value);
        one_reply.extend_from_slice(b"\r\n");
    }
    let mut received = std::mem::take(&mut client.buffer);
    let expected_bytes = one_reply.len() * N_MGETS;
    let mut chunk = vec![0u8; 1 << 20];
    while received.len() < expected_bytes {
        match client.stream.read(&mut chunk) {
            Ok(0) | Err(_) => panic!(
                "connection closed after {} of {expected_bytes} reply bytes",
                received.len()
            ),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    }
    for (k, reply) in received.chunks(one_reply.len()).enumerate() {
        assert!(reply == one_reply.as_slice(), "reply {k} differs");
    }
    assert_all_running(&mut cluster);
}
