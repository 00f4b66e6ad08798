//! Snapshots on real `tally-server` processes: the log is compacted behind snapshots, a
//! member that was down while the others compacted catches up by InstallSnapshot, every
//! member restarts from its snapshot, and `TALLY SNAPSHOT` answers with a durable file's path and index.
//! No timing assertions: waits are polls with generous deadlines.

mod common;

use common::*;
use tally_net::resp::RespValue;

const SNAPSHOT_ARGS: [&str; 4] = [
    "--snapshot-log-entries",
    "300",
    "--log-retain-entries",
    "50",
];

fn write_keys(client: &mut Client, prefix: &str, n_keys: usize) {
    let commands: Vec<Vec<Vec<u8>>> = (0..n_keys)
        .map(|k| {
            cmd(&[
                "SET",
                &format!("{prefix}{}", k % 100),
                &format!("{prefix}-{k}"),
            ])
        })
        .collect();
    for chunk in commands.chunks(200) {
        for reply in client.pipeline(chunk) {
            assert_eq!(reply, ok());
        }
    }
}

#[test]
fn members_compact_behind_snapshots_a_returning_member_installs_one_and_all_restart_from_them() {
    let mut cluster = Cluster::start_with_args(3, &SNAPSHOT_ARGS);
    let leader = cluster.wait_for_leader();
    let mut client = cluster.member(leader).client();
    write_keys(&mut client, "a", 1500);
    let RespValue::Array(Some(answer)) = client.call(&["TALLY", "SNAPSHOT"]) else {
        panic!("TALLY SNAPSHOT answers an array: path, index");
    };
    let [RespValue::Bulk(Some(path)), RespValue::Bulk(Some(index))] = answer.as_slice() else {
        panic!("TALLY SNAPSHOT answers two bulk strings: {answer:?}");
    };
    let path = std::path::PathBuf::from(String::from_utf8_lossy(path).into_owned());
    let index: u64 = String::from_utf8_lossy(index).parse().expect("an index");
    assert!(
        path.starts_with(&cluster.member(leader).dir) && path.exists(),
        "the path names the durable file in the node directory: {path:?}"
    );
    assert!(
        index >= 1500,
        "the snapshot covers every acknowledged write: {index}"
    );
    for member in &cluster.members {
        wait_until(
            &format!("member {} compacts behind a snapshot", member.id),
            || {
                let info = member.raft_info()?;
                let first: u64 = info.get("log_first_index")?.parse().ok()?;
                let snapshot: u64 = info.get("snapshot_index")?.parse().ok()?;
                (first > 1 && snapshot >= 300).then_some(())
            },
        );
    }

    // A follower misses everything the others compact away meanwhile.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.member_mut(follower).sigkill();
    write_keys(&mut client, "b", 1500);
    let leader_first = wait_until("the leader compacts past the follower's log", || {
        let first = cluster.member(leader).info_u64("log_first_index")?;
        (first > 1600).then_some(first)
    });
    assert!(leader_first > 1600);
    cluster.member_mut(follower).spawn();
    let target = cluster
        .member(leader)
        .info_u64("commit_index")
        .expect("commit index");
    cluster.wait_applied(follower, target);
    wait_until(
        "the returning member caught up through InstallSnapshot",
        || (cluster.member(follower).info_u64("snapshots_installed")? >= 1).then_some(()),
    );

    // Everyone restarts from snapshot + log tail, and every write is there.
    for id in 1..=3 {
        cluster.member_mut(id).sigkill();
    }
    for id in 1..=3 {
        cluster.member_mut(id).spawn();
    }
    let leader = cluster.wait_for_leader();
    let mut client = cluster.member(leader).client();
    for k in 1400..1500 {
        assert_eq!(
            client.call(&["GET", &format!("a{}", k % 100)]),
            bulk(&format!("a-{k}"))
        );
    }
    for k in 1400..1500 {
        assert_eq!(
            client.call(&["GET", &format!("b{}", k % 100)]),
            bulk(&format!("b-{k}"))
        );
    }
}
