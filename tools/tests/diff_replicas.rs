//! `diff` on replicas built to match the Raft lecture's log tables.

mod common;

use common::*;

fn replicas(logs: &[(&str, &[u64])]) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    for (name, terms) in logs {
        build_log_with_terms(&root.path().join(name), terms);
    }
    root
}

const PREFIX: [u64; 9] = [1, 1, 1, 2, 2, 3, 3, 3, 3];

fn with_tail(tail: &[u64]) -> Vec<u64> {
    PREFIX.iter().chain(tail).copied().collect()
}

#[test]
fn lecture_example_prints_the_divergence_at_index_12() {
    // Index 10..13: S1 `3`, S2 `3 3 4`, S3 `3 3 5`.
    let (s1, s2, s3) = (
        with_tail(&[3]),
        with_tail(&[3, 3, 4]),
        with_tail(&[3, 3, 5]),
    );
    let root = replicas(&[("s1", &s1), ("s2", &s2), ("s3", &s3)]);
    let run = tally_wal(
        root.path(),
        &["diff", "s1", "s2", "s3", "--from", "10", "--to", "13"],
    );
    assert_eq!(
        run.stdout,
        "\
S1 = s1 (entries 1..=10)
S2 = s2 (entries 1..=12)
S3 = s3 (entries 1..=12)

index 10 11 12 13
S1:    3
S2:    3  3  4
S3:    3  3  5

first divergence: index 12: S2 term 4, S3 term 5 (S1 no entry)
"
    );
    assert_eq!(run.code, 1);
    // Without a range, the table starts two indexes before the divergence.
    let run = tally_wal(root.path(), &["diff", "s1", "s2", "s3"]);
    assert!(run.stdout.contains("\nindex 10 11 12\n"), "{}", run.stdout);
    assert_eq!(run.code, 1);
}

#[test]
fn logs_that_agree_where_they_overlap_exit_0() {
    let (s1, s2) = (with_tail(&[3]), with_tail(&[3, 3, 4]));
    let root = replicas(&[("s1", &s1), ("s2", &s2)]);
    let run = tally_wal(root.path(), &["diff", "s1", "s2"]);
    assert_eq!(
        run.stdout,
        "\
S1 = s1 (entries 1..=10)
S2 = s2 (entries 1..=12)

index  1  2  3  4  5  6  7  8  9 10 11 12
S1:    1  1  1  2  2  3  3  3  3  3
S2:    1  1  1  2  2  3  3  3  3  3  3  4

no divergence: the logs agree on every index they share
"
    );
    assert_eq!(run.code, 0);
}

#[test]
fn divergence_early_in_the_log_is_found_between_many_replicas() {
    // Figure 7 style: a follower with extra entries of an old term.
    let leader = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let stale = [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3];
    let behind = [1, 1, 1, 4];
    let root = replicas(&[("a", &leader), ("b", &behind), ("c", &stale)]);
    let run = tally_wal(root.path(), &["diff", "a", "b", "c", "--width", "6"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout
            .ends_with("first divergence: index 4: S1 term 4, S2 term 4, S3 term 2\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("\nindex 2 3 4 5 6 7\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("\nS2:   1 1 4\n"), "{}", run.stdout);
}
