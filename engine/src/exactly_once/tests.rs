use super::*;

/// A counter: every payload is an i64 LE added to the total; the reply is the new total.
#[derive(Default)]
struct Counter {
    total: i64,
    applied_index: u64,
    applications: u64,
}

impl ResponseCodec for i64 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(i64::from_le_bytes(bytes.try_into().ok()?))
    }
}

struct CounterSnapshot(i64, u64);

impl SnapshotSource for CounterSnapshot {
    fn applied_index(&self) -> u64 {
        self.1
    }
    fn write_to(&mut self, out: &mut dyn Write) -> Result<u64, StateMachineError> {
        out.write_all(&self.0.to_le_bytes())?;
        out.write_all(&self.1.to_le_bytes())?;
        Ok(16)
    }
}

impl StateMachine for Counter {
    type Response = i64;
    fn apply(&mut self, entries: &[CommittedEntry<'_>]) -> Result<Vec<i64>, StateMachineError> {
        let mut out = Vec::new();
        for entry in entries {
            assert!(entry.index > self.applied_index);
            self.total += i64::decode(entry.payload).unwrap_or(0);
            self.applied_index = entry.index;
            self.applications += 1;
            out.push(self.total);
        }
        Ok(out)
    }
    fn query(&self, _request: &[u8]) -> i64 {
        self.total
    }
    fn applied_index(&self) -> u64 {
        self.applied_index
    }
    fn snapshot(&self) -> Box<dyn SnapshotSource> {
        Box::new(CounterSnapshot(self.total, self.applied_index))
    }
    fn restore(&mut self, input: &mut dyn Read) -> Result<u64, StateMachineError> {
        let mut word = [0u8; 8];
        input.read_exact(&mut word)?;
        let total = i64::from_le_bytes(word);
        input.read_exact(&mut word)?;
        self.total = total;
        self.applied_index = u64::from_le_bytes(word);
        Ok(self.applied_index)
    }
}

fn machine() -> ExactlyOnce<Counter> {
    ExactlyOnce::new(Counter::default(), SessionLimits::default())
}

fn apply_one(
    machine: &mut ExactlyOnce<Counter>,
    index: u64,
    payload: &[u8],
) -> Result<i64, SessionError> {
    let mut replies = machine
        .apply(&[CommittedEntry { index, payload }])
        .expect("apply");
    replies.pop().expect("one reply")
}

#[test]
fn a_retry_after_an_unknown_outcome_gets_the_stored_reply_and_applies_nothing() {
    let mut machine = machine();
    let mut session = ClientSession::with_id(7);
    let request = session.next_request(&5i64.to_le_bytes());
    assert_eq!(apply_one(&mut machine, 1, &request.bytes), Ok(5));
    // The client never heard back and resends the very same bytes; a new leader
    // commits them again at a later index.
    assert_eq!(apply_one(&mut machine, 2, &request.bytes), Ok(5));
    assert_eq!(machine.inner().total, 5);
    assert_eq!(machine.inner().applications, 1);
    assert_eq!(machine.applied_index(), 2);
    let next = session.next_request(&1i64.to_le_bytes());
    assert_eq!(apply_one(&mut machine, 3, &next.bytes), Ok(6));
}

#[test]
fn the_same_request_twice_in_one_batch_is_applied_once() {
    let mut machine = machine();
    let mut session = ClientSession::with_id(9);
    let request = session.next_request(&3i64.to_le_bytes());
    let other = ClientSession::with_id(10).next_request(&100i64.to_le_bytes());
    let replies = machine
        .apply(&[
            CommittedEntry {
                index: 1,
                payload: &request.bytes,
            },
            CommittedEntry {
                index: 2,
                payload: &other.bytes,
            },
            CommittedEntry {
                index: 3,
                payload: &request.bytes,
            },
        ])
        .expect("apply");
    assert_eq!(replies, vec![Ok(3), Ok(103), Ok(3)]);
    assert_eq!(machine.inner().applications, 2);
}

#[test]
fn an_older_sequence_than_the_last_applied_is_refused_as_stale() {
    let mut machine = machine();
    let mut session = ClientSession::with_id(4);
    let first = session.next_request(&1i64.to_le_bytes());
    let second = session.next_request(&2i64.to_le_bytes());
    assert_eq!(apply_one(&mut machine, 1, &first.bytes), Ok(1));
    assert_eq!(apply_one(&mut machine, 2, &second.bytes), Ok(3));
    assert_eq!(
        apply_one(&mut machine, 3, &first.bytes),
        Err(SessionError::Stale {
            sequence: 1,
            last_sequence: 2
        })
    );
    assert_eq!(machine.inner().total, 3);
}

#[test]
fn plain_requests_apply_every_time_and_malformed_ones_never() {
    let mut machine = machine();
    let plain = plain_request(&2i64.to_le_bytes());
    assert_eq!(apply_one(&mut machine, 1, &plain), Ok(2));
    assert_eq!(apply_one(&mut machine, 2, &plain), Ok(4));
    for bad in [&b""[..], &[0x07, 1, 2][..], &[TAG_SESSION, 1, 0, 0][..]] {
        let index = machine.applied_index() + 1;
        assert!(matches!(
            apply_one(&mut machine, index, bad),
            Err(SessionError::Malformed { .. })
        ));
    }
    let mut zero_sequence = vec![TAG_SESSION];
    zero_sequence.extend_from_slice(&5u64.to_le_bytes());
    zero_sequence.extend_from_slice(&0u64.to_le_bytes());
    assert!(matches!(
        apply_one(&mut machine, 10, &zero_sequence),
        Err(SessionError::Malformed { .. })
    ));
    assert_eq!(machine.inner().total, 4);
}

#[test]
fn an_entry_at_or_below_the_applied_index_is_a_fatal_error() {
    let mut machine = machine();
    apply_one(&mut machine, 5, &plain_request(&1i64.to_le_bytes())).expect("applied");
    let error = machine
        .apply(&[CommittedEntry {
            index: 5,
            payload: &plain_request(&1i64.to_le_bytes()),
        }])
        .expect_err("index 5 again");
    assert!(matches!(
        error,
        StateMachineError::IndexNotIncreasing { .. }
    ));
}

fn snapshot_bytes(machine: &ExactlyOnce<Counter>) -> Vec<u8> {
    let mut source = machine.snapshot();
    let mut bytes = Vec::new();
    let written = source.write_to(&mut bytes).expect("write snapshot");
    assert_eq!(written, bytes.len() as u64);
    bytes
}

#[test]
fn a_restored_replica_still_recognizes_a_retry_applied_before_the_snapshot() {
    let mut machine = machine();
    let mut session = ClientSession::with_id(11);
    let request = session.next_request(&8i64.to_le_bytes());
    apply_one(&mut machine, 1, &request.bytes).expect("applied");
    // A duplicate answered from the table moves the applied index past the inner one.
    apply_one(&mut machine, 2, &request.bytes).expect("answered");
    let bytes = snapshot_bytes(&machine);

    let mut restored = ExactlyOnce::new(Counter::default(), SessionLimits::default());
    assert_eq!(restored.restore(&mut &bytes[..]).expect("restore"), 2);
    assert_eq!(restored.applied_index(), 2);
    assert_eq!(restored.inner().total, 8);
    assert_eq!(apply_one(&mut restored, 3, &request.bytes), Ok(8));
    assert_eq!(restored.inner().applications, 0);
}

#[test]
fn a_damaged_snapshot_header_is_refused_and_the_state_is_untouched() {
    let mut source = machine();
    let mut session = ClientSession::with_id(12);
    apply_one(
        &mut source,
        1,
        &session.next_request(&1i64.to_le_bytes()).bytes,
    )
    .expect("ok");
    let bytes = snapshot_bytes(&source);
    let header_bytes = bytes.len() - 16;
    for position in 0..header_bytes {
        let mut damaged = bytes.clone();
        damaged[position] ^= 0x40;
        let mut target = machine();
        let mut other = ClientSession::with_id(99);
        apply_one(
            &mut target,
            1,
            &other.next_request(&50i64.to_le_bytes()).bytes,
        )
        .expect("ok");
        assert!(
            target.restore(&mut &damaged[..]).is_err(),
            "a flipped bit at byte {position} was accepted"
        );
        assert_eq!(target.inner().total, 50);
        assert_eq!(target.session_count(), 1);
        assert_eq!(target.applied_index(), 1);
    }
}

#[test]
fn a_snapshot_announcing_more_sessions_than_the_limit_is_refused_before_allocating() {
    let mut header = Vec::new();
    header.extend_from_slice(&SNAPSHOT_MAGIC);
    header.extend_from_slice(&1u64.to_le_bytes());
    header.extend_from_slice(&1u64.to_le_bytes());
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut target = machine();
    assert!(matches!(
        target.restore(&mut &header[..]),
        Err(StateMachineError::SnapshotLimitExceeded { .. })
    ));
}

#[test]
fn the_session_table_forgets_the_client_whose_last_write_is_oldest() {
    let limits = SessionLimits {
        max_sessions: 2,
        ..SessionLimits::default()
    };
    let mut machine = ExactlyOnce::new(Counter::default(), limits);
    let mut sessions: Vec<ClientSession> = (1..=3).map(ClientSession::with_id).collect();
    let first = sessions[0].next_request(&1i64.to_le_bytes());
    apply_one(&mut machine, 1, &first.bytes).expect("ok");
    apply_one(
        &mut machine,
        2,
        &sessions[1].next_request(&1i64.to_le_bytes()).bytes,
    )
    .expect("ok");
    apply_one(
        &mut machine,
        3,
        &sessions[2].next_request(&1i64.to_le_bytes()).bytes,
    )
    .expect("ok");
    assert_eq!(machine.session_count(), 2);
    // Client 1 was evicted: its retry is no longer recognized (the documented cost of
    // a table smaller than the number of live clients).
    assert_eq!(apply_one(&mut machine, 4, &first.bytes), Ok(4));
}
