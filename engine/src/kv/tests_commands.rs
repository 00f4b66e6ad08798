//! The string-keyspace commands, log-time expiry, transactions and WATCH, payload
//! format 2 and snapshot format 2.

use bytes::Bytes;

use super::codec::*;
use super::*;
use crate::state_machine::{CommittedEntry, StateMachine};

const LIMITS: KvLimits = KvLimits {
    max_argument_bytes: 64,
    max_arguments: 16,
    max_sessions: 8,
};

/// A state machine with a test clock: every entry is stamped `now_ms`.
struct Replica {
    sm: KvStateMachine,
    next_index: u64,
}

impl Replica {
    fn new() -> Replica {
        Replica {
            sm: KvStateMachine::new(LIMITS),
            next_index: 1,
        }
    }

    fn apply_at(&mut self, now_ms: u64, command: Command<'_>) -> KvResponse {
        self.apply_payload(&encoded(now_ms, &command))
    }

    /// Applies an encoded request as the next log entry.
    fn apply_payload(&mut self, payload: &[u8]) -> KvResponse {
        let index = self.next_index;
        self.next_index += 1;
        self.sm
            .apply(&[CommittedEntry { index, payload }])
            .expect("apply")
            .remove(0)
    }

    fn read_at(&self, now_ms: u64, command: Command<'_>) -> KvResponse {
        self.sm.query(&encoded(now_ms, &command))
    }
}

fn encoded(now_ms: u64, command: &Command<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_request_at(None, Some(now_ms), command, &LIMITS, &mut out).expect("encodes");
    out
}

fn bulk(text: &str) -> KvResponse {
    KvResponse::Bulk(Some(Bytes::copy_from_slice(text.as_bytes())))
}

fn set_px<'a>(key: &'a [u8], value: &'a [u8], ms: i64) -> Command<'a> {
    Command::SetWith {
        key,
        value,
        options: SetOptions {
            condition: SetCondition::Always,
            get: false,
            ttl: SetTtl::Expire(Expiry::AfterMs(ms)),
        },
    }
}

fn get(key: &[u8]) -> Command<'_> {
    Command::Get { key }
}

#[test]
fn expiry_is_judged_by_log_time_and_expired_keys_are_removed_by_entries() {
    let mut r = Replica::new();
    assert_eq!(r.apply_at(1_000, set_px(b"k", b"v", 100)), KvResponse::Ok);
    assert_eq!(r.sm.expire_at_ms(b"k"), Some(1_100));
    // A read is judged at max(log time, its stamp): never behind the log.
    assert_eq!(r.read_at(0, get(b"k")), bulk("v"));
    assert_eq!(r.read_at(1_099, get(b"k")), bulk("v"));
    assert_eq!(r.read_at(1_100, get(b"k")), KvResponse::Bulk(None));
    // The reads changed nothing: the key is still stored until an entry removes it.
    assert_eq!(r.sm.len(), 1);
    assert_eq!(
        r.apply_at(
            1_050,
            Command::Set {
                key: b"x",
                value: b"1"
            }
        ),
        KvResponse::Ok
    );
    assert_eq!(r.sm.get(b"k").as_deref(), Some(&b"v"[..]));
    assert_eq!(
        r.apply_at(
            1_200,
            Command::Set {
                key: b"y",
                value: b"1"
            }
        ),
        KvResponse::Ok
    );
    assert_eq!(r.sm.get(b"k"), None);
    assert_eq!(r.sm.len(), 2, "the expired key was removed by the entry");
    assert_eq!(r.sm.expire_at_ms(b"k"), None);
}

#[test]
fn a_get_answered_in_place_agrees_with_the_view_query_on_live_expired_and_missing_keys() {
    let mut replica = Replica::new();
    replica.apply_at(1_000, set_px(b"short", b"gone-at-1500", 500));
    replica.apply_at(
        1_000,
        Command::Set {
            key: b"plain",
            value: b"stays",
        },
    );
    let view = replica.sm.read_view();
    let in_place =
        |key: &[u8], now_ms: u64| view.get_with(key, now_ms, |value| value.map(<[u8]>::to_vec));
    for (key, now_ms) in [
        (&b"short"[..], 1_200), // live
        (b"short", 1_500),      // expired by the reader's clock
        (b"plain", 0),          // judged at the log time, not before it
        (b"missing", 1_200),
    ] {
        let KvResponse::Bulk(expected) = view.query(&get(key), now_ms) else {
            panic!("GET answers a bulk string");
        };
        assert_eq!(in_place(key, now_ms), expected.map(|bytes| bytes.to_vec()));
    }
    assert_eq!(
        in_place(b"short", 1_200).as_deref(),
        Some(&b"gone-at-1500"[..])
    );
    assert_eq!(in_place(b"short", 1_500), None);
    // A log time past the expiry hides the key whatever the reader's clock says.
    replica.apply_at(2_000, Command::Get { key: b"plain" });
    assert_eq!(in_place(b"short", 0), None);
    assert_eq!(in_place(b"plain", 0).as_deref(), Some(&b"stays"[..]));
}

#[test]
fn log_time_never_goes_back_when_a_later_leader_stamps_an_earlier_time() {
    let mut r = Replica::new();
    r.apply_at(1_000, set_px(b"k", b"v", 500));
    r.apply_at(
        2_000,
        Command::Set {
            key: b"a",
            value: b"1",
        },
    );
    assert_eq!(r.sm.log_time_ms(), 2_000);
    // A new leader whose clock is behind: the log time stays, the key stays expired.
    r.apply_at(
        1_200,
        Command::Set {
            key: b"b",
            value: b"1",
        },
    );
    assert_eq!(r.sm.log_time_ms(), 2_000);
    assert_eq!(r.read_at(1_200, get(b"k")), KvResponse::Bulk(None));
    assert_eq!(
        r.apply_at(
            1_200,
            Command::Ttl {
                key: b"k",
                millis: true
            }
        ),
        KvResponse::Integer(-2)
    );
    // Format-1 entries carry no stamp and leave the log time alone.
    let mut plain = Vec::new();
    encode_request(
        None,
        &Command::Set {
            key: b"c",
            value: b"1",
        },
        &LIMITS,
        &mut plain,
    )
    .expect("encodes");
    r.sm.apply(&[CommittedEntry {
        index: 10,
        payload: &plain,
    }])
    .expect("apply");
    assert_eq!(r.sm.log_time_ms(), 2_000);
}

/// A script of stamped commands with relative and absolute expiry, transactions and
/// removals, for the replica-agreement test.
fn script() -> Vec<(u64, Command<'static>)> {
    vec![
        (1_000, set_px(b"a", b"1", 300)),
        (
            1_010,
            Command::Set {
                key: b"b",
                value: b"2",
            },
        ),
        (
            1_020,
            Command::Expire {
                key: b"b",
                at: Expiry::AtMs(1_400),
                condition: ExpireCondition::Always,
            },
        ),
        (
            1_100,
            Command::IncrBy {
                key: b"n",
                delta: 7,
            },
        ),
        (
            1_200,
            Command::Multi {
                watch_index: 0,
                watched: vec![],
                commands: vec![
                    Command::Append {
                        key: b"a",
                        value: b"x",
                    },
                    Command::GetEx {
                        key: b"n",
                        ttl: GetExTtl::Expire(Expiry::AfterMs(1_000)),
                    },
                ],
            },
        ),
        (
            1_350,
            Command::Set {
                key: b"c",
                value: b"3",
            },
        ),
        (
            1_500,
            Command::Exists {
                keys: vec![b"a", b"b", b"c", b"n"],
            },
        ),
        (2_300, Command::Keys { pattern: b"*" }),
    ]
}

#[test]
fn replicas_agree_on_expiry_whenever_they_apply_and_snapshots_keep_expiry_times() {
    let mut first = Replica::new();
    let mut replies = Vec::new();
    for (now, command) in script() {
        replies.push(first.apply_at(now, command));
    }
    assert_eq!(
        replies[6],
        KvResponse::Integer(2),
        "a and b expired at 1300/1400"
    );
    assert_eq!(
        replies[7],
        KvResponse::Array(vec![Some(Bytes::from_static(b"c"))]),
        "n expired at 2200"
    );
    // A second replica applies half, is snapshotted and restored into a third, which
    // applies the rest: the same replies, the same state (expiry times included).
    let mut second = Replica::new();
    let mut second_replies = Vec::new();
    let steps = script();
    for (now, command) in steps[..5].iter().cloned() {
        second_replies.push(second.apply_at(now, command));
    }
    let mut bytes = Vec::new();
    second.sm.snapshot().write_to(&mut bytes).expect("snapshot");
    let contents = read_stream(&mut bytes.as_slice(), &LIMITS).expect("read stream");
    assert_eq!(contents.log_time_ms, 1_200);
    assert_eq!(
        contents.expiries,
        vec![
            (Bytes::from_static(b"a"), 1_300),
            (Bytes::from_static(b"b"), 1_400),
            (Bytes::from_static(b"n"), 2_200)
        ]
    );
    let mut third = Replica::new();
    third.sm.restore(&mut bytes.as_slice()).expect("restore");
    third.next_index = second.next_index;
    for (now, command) in steps[5..].iter().cloned() {
        second_replies.push(third.apply_at(now, command));
    }
    assert_eq!(second_replies, replies);
    assert_eq!(third.sm, first.sm);
}

#[test]
fn a_transaction_is_one_entry_and_a_runtime_error_is_only_that_commands_reply() {
    let mut r = Replica::new();
    r.apply_at(
        1,
        Command::Set {
            key: b"word",
            value: b"abc",
        },
    );
    let reply = r.apply_at(
        2,
        Command::Multi {
            watch_index: 0,
            watched: vec![],
            commands: vec![
                Command::Incr { key: b"word" },
                Command::Set {
                    key: b"k",
                    value: b"v",
                },
                Command::Get { key: b"k" },
                Command::Type { key: b"k" },
            ],
        },
    );
    assert_eq!(
        reply,
        KvResponse::Nested(vec![
            KvResponse::Error(KvError::NotAnInteger),
            KvResponse::Ok,
            bulk("v"),
            KvResponse::Status("string"),
        ])
    );
    assert_eq!(r.sm.applied_index(), 2);
}

#[test]
fn watch_aborts_exec_when_a_watched_key_changed_expired_or_appeared() {
    let mut r = Replica::new();
    r.apply_at(
        10,
        Command::Set {
            key: b"w",
            value: b"1",
        },
    );
    r.apply_at(10, set_px(b"e", b"1", 50));
    let KvResponse::Watched { index, exists } = r.read_at(
        10,
        Command::Watch {
            keys: vec![b"w", b"e", b"m"],
        },
    ) else {
        panic!("WATCH read answers Watched")
    };
    assert_eq!((index, exists.as_slice()), (2, &[true, true, false][..]));
    let exec = |watched: Vec<WatchedKey<'static>>| Command::Multi {
        watch_index: index,
        watched,
        commands: vec![Command::Set {
            key: b"out",
            value: b"x",
        }],
    };
    let w = WatchedKey {
        key: b"w",
        existed: true,
    };
    let e = WatchedKey {
        key: b"e",
        existed: true,
    };
    let m = WatchedKey {
        key: b"m",
        existed: false,
    };
    // Nothing changed: EXEC applies.
    assert_eq!(
        r.apply_at(20, exec(vec![w.clone(), e.clone(), m.clone()])),
        KvResponse::Nested(vec![KvResponse::Ok])
    );
    // A write of a watched key after the WATCH read: nil, nothing applied.
    r.apply_at(
        21,
        Command::Set {
            key: b"w",
            value: b"2",
        },
    );
    assert_eq!(r.apply_at(22, exec(vec![w])), KvResponse::NullArray);
    // A watched key that expired.
    assert_eq!(r.apply_at(100, exec(vec![e])), KvResponse::NullArray);
    // A missing key that appeared.
    r.apply_at(
        101,
        Command::Set {
            key: b"m",
            value: b"1",
        },
    );
    assert_eq!(r.apply_at(102, exec(vec![m])), KvResponse::NullArray);
    // A missing key created and deleted again still counts as changed.
    r.apply_at(103, Command::Del { keys: vec![b"m"] });
    let gone = WatchedKey {
        key: b"m",
        existed: false,
    };
    assert_eq!(r.apply_at(104, exec(vec![gone])), KvResponse::NullArray);
    assert_eq!(r.sm.applied_index(), 10);
}

#[test]
fn string_commands_follow_redis_semantics() {
    let mut r = Replica::new();
    let mut at = |command: Command<'static>| r.apply_at(1_000, command);
    use KvResponse::{Bulk, Integer, Nested, Ok};
    assert_eq!(
        at(Command::IncrBy {
            key: b"n",
            delta: -5
        }),
        Integer(-5)
    );
    assert_eq!(
        at(Command::IncrBy {
            key: b"n",
            delta: i64::MIN
        }),
        KvResponse::Error(KvError::IncrOverflow)
    );
    assert_eq!(
        at(Command::IncrByFloat {
            key: b"f",
            delta: b"10.5"
        }),
        bulk("10.5")
    );
    assert_eq!(
        at(Command::IncrByFloat {
            key: b"f",
            delta: b"0.1"
        }),
        bulk("10.6")
    );
    assert_eq!(
        at(Command::IncrByFloat {
            key: b"f",
            delta: b"-10.6"
        }),
        bulk("0")
    );
    assert_eq!(
        at(Command::IncrByFloat {
            key: b"f",
            delta: b"1e400"
        }),
        KvResponse::Error(KvError::NotAFloat)
    );
    assert_eq!(
        at(Command::Append {
            key: b"s",
            value: b"Hello"
        }),
        Integer(5)
    );
    assert_eq!(
        at(Command::Append {
            key: b"s",
            value: b" World"
        }),
        Integer(11)
    );
    assert_eq!(
        at(Command::GetRange {
            key: b"s",
            start: -5,
            end: -1
        }),
        bulk("World")
    );
    assert_eq!(
        at(Command::GetRange {
            key: b"s",
            start: 0,
            end: 100
        }),
        bulk("Hello World")
    );
    assert_eq!(
        at(Command::GetRange {
            key: b"s",
            start: 5,
            end: 3
        }),
        bulk("")
    );
    assert_eq!(
        at(Command::GetRange {
            key: b"nope",
            start: 0,
            end: -1
        }),
        bulk("")
    );
    assert_eq!(
        at(Command::SetRange {
            key: b"s",
            offset: 6,
            value: b"Redis"
        }),
        Integer(11)
    );
    assert_eq!(at(Command::Get { key: b"s" }), bulk("Hello Redis"));
    assert_eq!(
        at(Command::SetRange {
            key: b"z",
            offset: 2,
            value: b"x"
        }),
        Integer(3)
    );
    assert_eq!(at(Command::Get { key: b"z" }), bulk("\0\0x"));
    assert_eq!(
        at(Command::SetRange {
            key: b"z",
            offset: 64,
            value: b"x"
        }),
        KvResponse::Error(KvError::StringTooLong)
    );
    assert_eq!(
        at(Command::Append {
            key: b"s",
            value: &[b'x'; 60]
        }),
        KvResponse::Error(KvError::StringTooLong)
    );
    assert_eq!(at(Command::Strlen { key: b"s" }), Integer(11));
    assert_eq!(
        at(Command::GetSet {
            key: b"s",
            value: b"new"
        }),
        bulk("Hello Redis")
    );
    assert_eq!(at(Command::GetDel { key: b"s" }), bulk("new"));
    assert_eq!(at(Command::GetDel { key: b"s" }), Bulk(None));
    assert_eq!(
        at(Command::SetNx {
            key: b"nx",
            value: b"1"
        }),
        Integer(1)
    );
    assert_eq!(
        at(Command::SetNx {
            key: b"nx",
            value: b"2"
        }),
        Integer(0)
    );
    assert_eq!(
        at(Command::MSetNx {
            pairs: vec![(b"m1", b"a"), (b"nx", b"b")]
        }),
        Integer(0)
    );
    assert_eq!(
        at(Command::Exists { keys: vec![b"m1"] }),
        Integer(0),
        "MSETNX: none set"
    );
    let set = |condition, get, ttl| SetOptions {
        condition,
        get,
        ttl,
    };
    assert_eq!(
        at(Command::SetWith {
            key: b"nx",
            value: b"3",
            options: set(SetCondition::IfMissing, false, SetTtl::Clear)
        }),
        Bulk(None)
    );
    assert_eq!(
        at(Command::SetWith {
            key: b"nx",
            value: b"4",
            options: set(
                SetCondition::IfExists,
                true,
                SetTtl::Expire(Expiry::AfterMs(5_000))
            )
        }),
        bulk("1")
    );
    assert_eq!(
        at(Command::Ttl {
            key: b"nx",
            millis: false
        }),
        Integer(5)
    );
    assert_eq!(
        at(Command::SetWith {
            key: b"nx",
            value: b"5",
            options: set(SetCondition::Always, false, SetTtl::Keep)
        }),
        Ok
    );
    assert_eq!(
        at(Command::Ttl {
            key: b"nx",
            millis: true
        }),
        Integer(5_000)
    );
    assert_eq!(
        at(Command::Set {
            key: b"nx",
            value: b"6"
        }),
        Ok
    );
    assert_eq!(
        at(Command::Ttl {
            key: b"nx",
            millis: true
        }),
        Integer(-1),
        "SET clears the TTL"
    );
    let expire = |ms, condition| Command::Expire {
        key: b"nx",
        at: Expiry::AfterMs(ms),
        condition,
    };
    assert_eq!(at(expire(9_000, ExpireCondition::IfSome)), Integer(0));
    assert_eq!(
        at(expire(9_000, ExpireCondition::IfGreater)),
        Integer(0),
        "no TTL is infinite"
    );
    assert_eq!(at(expire(9_000, ExpireCondition::IfLess)), Integer(1));
    assert_eq!(at(expire(8_000, ExpireCondition::IfGreater)), Integer(0));
    assert_eq!(at(expire(10_000, ExpireCondition::IfGreater)), Integer(1));
    assert_eq!(at(expire(1_000, ExpireCondition::IfNone)), Integer(0));
    assert_eq!(
        at(expire(20_000, ExpireCondition::IfSomeAndLess)),
        Integer(0)
    );
    assert_eq!(at(Command::Persist { key: b"nx" }), Integer(1));
    assert_eq!(at(Command::Persist { key: b"nx" }), Integer(0));
    assert_eq!(
        at(expire(-1, ExpireCondition::Always)),
        Integer(1),
        "a past time deletes"
    );
    assert_eq!(at(Command::Type { key: b"nx" }), KvResponse::Status("none"));
    assert_eq!(
        at(Command::Rename {
            from: b"nope",
            to: b"x",
            only_if_missing: false
        }),
        KvResponse::Error(KvError::NoSuchKey)
    );
    assert_eq!(
        at(Command::Rename {
            from: b"z",
            to: b"n",
            only_if_missing: true
        }),
        Integer(0)
    );
    assert_eq!(
        at(Command::Rename {
            from: b"z",
            to: b"n",
            only_if_missing: false
        }),
        Ok
    );
    assert_eq!(at(Command::Get { key: b"n" }), bulk("\0\0x"));
    assert_eq!(at(Command::DbSize), Integer(2));
    assert_eq!(
        at(Command::Keys { pattern: b"?" }),
        KvResponse::Array(vec![
            Some(Bytes::from_static(b"f")),
            Some(Bytes::from_static(b"n"))
        ])
    );
    assert_eq!(at(Command::FlushAll), Ok);
    assert_eq!(at(Command::DbSize), Integer(0));
    assert_eq!(
        at(Command::Scan {
            cursor: 0,
            pattern: None,
            count: 10
        }),
        Nested(vec![bulk("0"), KvResponse::Array(vec![])])
    );
}

#[test]
fn scan_returns_every_key_present_throughout_exactly_once() {
    let mut r = Replica::new();
    let keys: Vec<String> = (0..40).map(|i| format!("key:{i}")).collect();
    for key in &keys {
        let payload = encoded(
            1,
            &Command::Set {
                key: key.as_bytes(),
                value: b"v",
            },
        );
        r.apply_payload(&payload);
    }
    let mut seen = Vec::new();
    let mut cursor = 0;
    let mut rounds = 0;
    loop {
        let KvResponse::Nested(parts) = r.read_at(
            1,
            Command::Scan {
                cursor,
                pattern: Some(b"key:*"),
                count: 7,
            },
        ) else {
            panic!("SCAN answers [cursor, keys]")
        };
        let [KvResponse::Bulk(Some(next)), KvResponse::Array(batch)] = parts.as_slice() else {
            panic!("SCAN reply shape: {parts:?}")
        };
        seen.extend(batch.iter().flatten().cloned());
        // Writes between calls do not disturb the iteration.
        if rounds == 1 {
            r.apply_at(
                2,
                Command::Set {
                    key: b"other",
                    value: b"v",
                },
            );
        }
        rounds += 1;
        cursor = std::str::from_utf8(next)
            .expect("utf8")
            .parse()
            .expect("cursor");
        if cursor == 0 {
            break;
        }
        assert!(rounds < 100, "SCAN does not terminate");
    }
    seen.sort();
    let mut expected: Vec<Bytes> = keys.iter().map(|k| Bytes::from(k.clone())).collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[test]
fn new_commands_round_trip_in_both_formats_and_bad_fields_are_refused() {
    let commands = vec![
        set_px(b"k", b"v", 5),
        Command::SetWith {
            key: b"k",
            value: b"v",
            options: SetOptions {
                condition: SetCondition::IfExists,
                get: true,
                ttl: SetTtl::Keep,
            },
        },
        Command::SetNx {
            key: b"k",
            value: b"v",
        },
        Command::MSetNx {
            pairs: vec![(b"a", b"1")],
        },
        Command::IncrBy {
            key: b"k",
            delta: -3,
        },
        Command::IncrByFloat {
            key: b"k",
            delta: b"1.5",
        },
        Command::GetRange {
            key: b"k",
            start: -3,
            end: 7,
        },
        Command::SetRange {
            key: b"k",
            offset: 9,
            value: b"x",
        },
        Command::GetEx {
            key: b"k",
            ttl: GetExTtl::Persist,
        },
        Command::GetEx {
            key: b"k",
            ttl: GetExTtl::Expire(Expiry::AtMs(77)),
        },
        Command::Expire {
            key: b"k",
            at: Expiry::AfterMs(-1),
            condition: ExpireCondition::IfSomeAndLess,
        },
        Command::Ttl {
            key: b"k",
            millis: true,
        },
        Command::Keys { pattern: b"*" },
        Command::Scan {
            cursor: 99,
            pattern: Some(b"a*"),
            count: 3,
        },
        Command::Scan {
            cursor: 0,
            pattern: None,
            count: 1,
        },
        Command::DbSize,
        Command::FlushAll,
        Command::Rename {
            from: b"a",
            to: b"b",
            only_if_missing: true,
        },
        Command::Watch {
            keys: vec![b"a", b"b"],
        },
        Command::Multi {
            watch_index: 12,
            watched: vec![WatchedKey {
                key: b"a",
                existed: true,
            }],
            commands: vec![Command::Incr { key: b"a" }, Command::DbSize],
        },
        Command::Multi {
            watch_index: 0,
            watched: vec![],
            commands: vec![],
        },
    ];
    for command in &commands {
        for time_ms in [None, Some(1_234)] {
            let mut bytes = Vec::new();
            let session = Some(ClientSession {
                client_id: 3,
                sequence: 4,
            });
            encode_request_at(session, time_ms, command, &LIMITS, &mut bytes).expect("encodes");
            let decoded = decode_request(&bytes, &LIMITS).expect("decodes");
            assert_eq!(decoded.command, *command);
            assert_eq!(decoded.time_ms, time_ms);
            for cut in 0..bytes.len() {
                assert!(
                    decode_request(&bytes[..cut], &LIMITS).is_err(),
                    "{command:?} cut at {cut}"
                );
            }
        }
    }
    // A transaction inside a transaction is refused both ways.
    let nested = Command::Multi {
        watch_index: 0,
        watched: vec![],
        commands: vec![Command::Multi {
            watch_index: 0,
            watched: vec![],
            commands: vec![],
        }],
    };
    assert!(matches!(
        encode_request(None, &nested, &LIMITS, &mut Vec::new()),
        Err(KvEncodeError::Unencodable(_))
    ));
    let mut bytes = Vec::new();
    encode_request(
        None,
        &Command::Ttl {
            key: b"k",
            millis: true,
        },
        &LIMITS,
        &mut bytes,
    )
    .expect("encodes");
    *bytes.last_mut().expect("flag byte") = 2;
    assert!(matches!(
        decode_request(&bytes, &LIMITS),
        Err(KvDecodeError::InvalidField {
            field: "ttl unit",
            value: 2,
            ..
        })
    ));
}

#[test]
fn remembered_replies_of_every_kind_survive_a_snapshot() {
    let mut r = Replica::new();
    let session = |sequence| {
        Some(ClientSession {
            client_id: 5,
            sequence,
        })
    };
    let commands = [
        Command::Multi {
            watch_index: 0,
            watched: vec![],
            commands: vec![
                Command::Set {
                    key: b"s",
                    value: b"abc",
                },
                Command::Type { key: b"s" },
                Command::Scan {
                    cursor: 0,
                    pattern: None,
                    count: 5,
                },
                Command::IncrByFloat {
                    key: b"s",
                    delta: b"1",
                },
                Command::Rename {
                    from: b"nope",
                    to: b"x",
                    only_if_missing: false,
                },
                set_px(b"t", b"v", i64::MAX),
            ],
        },
        Command::Multi {
            watch_index: 0,
            watched: vec![WatchedKey {
                key: b"s",
                existed: false,
            }],
            commands: vec![],
        },
    ];
    for (i, command) in commands.iter().enumerate() {
        let mut payload = Vec::new();
        encode_request_at(
            session(i as u64 + 1),
            Some(9),
            command,
            &LIMITS,
            &mut payload,
        )
        .expect("encodes");
        r.apply_payload(&payload);
    }
    let mut bytes = Vec::new();
    r.sm.snapshot().write_to(&mut bytes).expect("snapshot");
    let mut restored = KvStateMachine::new(LIMITS);
    restored.restore(&mut bytes.as_slice()).expect("restore");
    assert_eq!(restored, r.sm);
    let contents = read_stream(&mut bytes.as_slice(), &LIMITS).expect("read");
    assert_eq!(contents.sessions[0].reply, KvResponse::NullArray);
    for position in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[position] ^= 0x01;
        assert!(
            KvStateMachine::new(LIMITS)
                .restore(&mut damaged.as_slice())
                .is_err(),
            "damage at byte {position} not detected"
        );
    }
}

#[test]
fn a_format_1_snapshot_still_restores_without_expiry() {
    // "TKVS" v1, applied 3, no sessions, one pair, CRC.
    let mut bytes = b"TKVS\x01".to_vec();
    bytes.extend_from_slice(&3u64.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(b"k");
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(b"v");
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let mut sm = KvStateMachine::new(LIMITS);
    assert_eq!(sm.restore(&mut bytes.as_slice()).expect("restore"), 3);
    assert_eq!(sm.get(b"k").as_deref(), Some(&b"v"[..]));
    assert_eq!(sm.expire_at_ms(b"k"), None);
    assert_eq!(sm.log_time_ms(), 0);
}
