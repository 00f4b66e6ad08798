//! The ledger state machine: named accounts holding whole units, and transfers that
//! never overdraw.
//!
//! Commands are short text lines (readable in `tally-wal dump` and in this example):
//! `open <account> <initial>`, `deposit <account> <amount>`,
//! `transfer <from> <to> <amount>`. Queries: `balance <account>`, `total`.
//! Everything here is deterministic: the reply to a command depends only on the state
//! and the command, so every replica answers alike.

use std::io::{Read, Write};

use imbl::OrdMap;
use tally_engine::exactly_once::ResponseCodec;
use tally_engine::state_machine::{
    CommittedEntry, SnapshotSource, StateMachine, StateMachineError,
};

/// Longest account name, in bytes.
pub const MAX_ACCOUNT_NAME_BYTES: usize = 64;
/// Most accounts a ledger holds (a snapshot announcing more is refused).
pub const MAX_ACCOUNTS: usize = 1_000_000;
const SNAPSHOT_MAGIC: [u8; 4] = *b"TLG1";

/// What a command or query answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerReply {
    /// The command was applied.
    Done,
    /// A balance or the total of all balances.
    Amount(u64),
    /// The command was refused by the ledger's rules; nothing changed.
    Refused(String),
}

impl ResponseCodec for LedgerReply {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            LedgerReply::Done => out.push(0),
            LedgerReply::Amount(amount) => {
                out.push(1);
                out.extend_from_slice(&amount.to_le_bytes());
            }
            LedgerReply::Refused(reason) => {
                out.push(2);
                out.extend_from_slice(reason.as_bytes());
            }
        }
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes.split_first()? {
            (0, []) => Some(LedgerReply::Done),
            (1, rest) => Some(LedgerReply::Amount(u64::from_le_bytes(
                rest.try_into().ok()?,
            ))),
            (2, rest) => Some(LedgerReply::Refused(String::from_utf8(rest.to_vec()).ok()?)),
            _ => None,
        }
    }
}

/// A parsed ledger command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command<'a> {
    Open {
        account: &'a str,
        initial: u64,
    },
    Deposit {
        account: &'a str,
        amount: u64,
    },
    Transfer {
        from: &'a str,
        to: &'a str,
        amount: u64,
    },
}

fn parse_account(name: &str) -> Result<&str, String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_ACCOUNT_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(name)
    } else {
        Err(format!(
            "invalid account name (1-{MAX_ACCOUNT_NAME_BYTES} of [A-Za-z0-9_-])"
        ))
    }
}

fn parse_amount(text: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .map_err(|_| format!("invalid amount '{text}'"))
}

fn parse_command(payload: &[u8]) -> Result<Command<'_>, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "command is not UTF-8".to_string())?;
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    match words.as_slice() {
        ["open", account, initial] => Ok(Command::Open {
            account: parse_account(account)?,
            initial: parse_amount(initial)?,
        }),
        ["deposit", account, amount] => Ok(Command::Deposit {
            account: parse_account(account)?,
            amount: parse_amount(amount)?,
        }),
        ["transfer", from, to, amount] => Ok(Command::Transfer {
            from: parse_account(from)?,
            to: parse_account(to)?,
            amount: parse_amount(amount)?,
        }),
        _ => Err("unknown command (open, deposit, transfer)".to_string()),
    }
}

/// The replicated ledger.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// Invariant: the sum of balances changes only by `open` and `deposit` (a transfer
    /// moves units, never creates them), and no balance is ever below zero (`u64`,
    /// checked subtraction).
    accounts: OrdMap<String, u64>,
    applied_index: u64,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    fn execute(&mut self, command: Command<'_>) -> LedgerReply {
        match command {
            Command::Open { account, initial } => {
                if self.accounts.contains_key(account) {
                    return LedgerReply::Refused(format!("account {account} exists"));
                }
                if self.accounts.len() >= MAX_ACCOUNTS {
                    return LedgerReply::Refused("the ledger is full".into());
                }
                self.accounts.insert(account.to_string(), initial);
                LedgerReply::Done
            }
            Command::Deposit { account, amount } => match self.accounts.get_mut(account) {
                None => LedgerReply::Refused(format!("no account {account}")),
                Some(balance) => match balance.checked_add(amount) {
                    None => LedgerReply::Refused("balance overflow".into()),
                    Some(sum) => {
                        *balance = sum;
                        LedgerReply::Done
                    }
                },
            },
            Command::Transfer { from, to, amount } => self.transfer(from, to, amount),
        }
    }

    fn transfer(&mut self, from: &str, to: &str, amount: u64) -> LedgerReply {
        let (Some(&from_balance), Some(&to_balance)) =
            (self.accounts.get(from), self.accounts.get(to))
        else {
            return LedgerReply::Refused("no such account".into());
        };
        if from == to {
            return LedgerReply::Done;
        }
        let Some(remaining) = from_balance.checked_sub(amount) else {
            return LedgerReply::Refused(format!(
                "insufficient funds: {from} holds {from_balance}, asked {amount}"
            ));
        };
        let Some(received) = to_balance.checked_add(amount) else {
            return LedgerReply::Refused("balance overflow".into());
        };
        self.accounts.insert(from.to_string(), remaining);
        self.accounts.insert(to.to_string(), received);
        LedgerReply::Done
    }

    /// The sum of every balance (a full scan; for checks and the `total` query).
    pub fn total(&self) -> u64 {
        self.accounts
            .values()
            .fold(0u64, |sum, b| sum.saturating_add(*b))
    }
}

impl StateMachine for Ledger {
    type Response = LedgerReply;

    fn apply(
        &mut self,
        entries: &[CommittedEntry<'_>],
    ) -> Result<Vec<LedgerReply>, StateMachineError> {
        let mut replies = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.index <= self.applied_index {
                return Err(StateMachineError::IndexNotIncreasing {
                    applied_index: self.applied_index,
                    got: entry.index,
                });
            }
            self.applied_index = entry.index;
            replies.push(match parse_command(entry.payload) {
                Ok(command) => self.execute(command),
                Err(reason) => LedgerReply::Refused(reason),
            });
        }
        Ok(replies)
    }

    fn query(&self, request: &[u8]) -> LedgerReply {
        let text = String::from_utf8_lossy(request);
        let words: Vec<&str> = text.split_ascii_whitespace().collect();
        match words.as_slice() {
            ["balance", account] => match self.accounts.get(*account) {
                Some(balance) => LedgerReply::Amount(*balance),
                None => LedgerReply::Refused(format!("no account {account}")),
            },
            ["total"] => LedgerReply::Amount(self.total()),
            _ => LedgerReply::Refused("unknown query (balance, total)".into()),
        }
    }

    fn applied_index(&self) -> u64 {
        self.applied_index
    }

    fn snapshot(&self) -> Box<dyn SnapshotSource> {
        // O(1): the persistent map is shared with the live ledger until it changes.
        Box::new(self.clone())
    }

    fn restore(&mut self, input: &mut dyn Read) -> Result<u64, StateMachineError> {
        let restored = read_snapshot(input)?;
        let index = restored.applied_index;
        *self = restored;
        Ok(index)
    }
}

/// Snapshot stream: `"TLG1" u64 applied_index u32 n`, per account in name order
/// `u8 name_len name u64 balance`, then `u32` CRC-32 of every preceding byte.
impl SnapshotSource for Ledger {
    fn applied_index(&self) -> u64 {
        self.applied_index
    }

    fn write_to(&mut self, out: &mut dyn Write) -> Result<u64, StateMachineError> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&self.applied_index.to_le_bytes());
        bytes.extend_from_slice(&(self.accounts.len() as u32).to_le_bytes());
        for (name, balance) in &self.accounts {
            bytes.push(name.len() as u8);
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(&balance.to_le_bytes());
        }
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        out.write_all(&bytes)?;
        Ok(bytes.len() as u64)
    }
}

fn corrupt(reason: &str) -> StateMachineError {
    StateMachineError::CorruptSnapshot {
        reason: reason.into(),
    }
}

fn read_snapshot(input: &mut dyn Read) -> Result<Ledger, StateMachineError> {
    let mut hasher = crc32fast::Hasher::new();
    let mut read = |buffer: &mut [u8]| -> Result<(), StateMachineError> {
        input.read_exact(buffer)?;
        hasher.update(buffer);
        Ok(())
    };
    let mut magic = [0u8; 4];
    read(&mut magic)?;
    if magic != SNAPSHOT_MAGIC {
        return Err(corrupt("not a ledger snapshot"));
    }
    let mut word = [0u8; 8];
    read(&mut word)?;
    let applied_index = u64::from_le_bytes(word);
    let mut half = [0u8; 4];
    read(&mut half)?;
    let n_accounts = u32::from_le_bytes(half) as usize;
    if n_accounts > MAX_ACCOUNTS {
        return Err(StateMachineError::SnapshotLimitExceeded {
            what: "account count",
            found: n_accounts as u64,
            limit: MAX_ACCOUNTS as u64,
        });
    }
    let mut accounts = OrdMap::new();
    let mut name = [0u8; MAX_ACCOUNT_NAME_BYTES];
    for _ in 0..n_accounts {
        let mut len = [0u8; 1];
        read(&mut len)?;
        let len = len[0] as usize;
        if len == 0 || len > MAX_ACCOUNT_NAME_BYTES {
            return Err(corrupt("account name length out of range"));
        }
        read(&mut name[..len])?;
        let account = std::str::from_utf8(&name[..len])
            .ok()
            .and_then(|text| parse_account(text).ok())
            .ok_or_else(|| corrupt("invalid account name"))?;
        read(&mut word)?;
        if accounts
            .insert(account.to_string(), u64::from_le_bytes(word))
            .is_some()
        {
            return Err(corrupt("an account appears twice"));
        }
    }
    let expected = hasher.finalize();
    let mut stored = [0u8; 4];
    input.read_exact(&mut stored)?;
    if u32::from_le_bytes(stored) != expected {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(Ledger {
        accounts,
        applied_index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(ledger: &mut Ledger, command: &str) -> LedgerReply {
        let index = ledger.applied_index + 1;
        ledger
            .apply(&[CommittedEntry {
                index,
                payload: command.as_bytes(),
            }])
            .expect("apply")
            .remove(0)
    }

    #[test]
    fn a_transfer_larger_than_the_balance_is_refused_and_moves_nothing() {
        let mut ledger = Ledger::new();
        assert_eq!(apply(&mut ledger, "open alice 10"), LedgerReply::Done);
        assert_eq!(apply(&mut ledger, "open bob 0"), LedgerReply::Done);
        assert!(matches!(
            apply(&mut ledger, "transfer alice bob 11"),
            LedgerReply::Refused(_)
        ));
        assert_eq!(
            apply(&mut ledger, "transfer alice bob 10"),
            LedgerReply::Done
        );
        assert_eq!(ledger.query(b"balance alice"), LedgerReply::Amount(0));
        assert_eq!(ledger.query(b"balance bob"), LedgerReply::Amount(10));
        assert_eq!(ledger.query(b"total"), LedgerReply::Amount(10));
    }

    #[test]
    fn malformed_commands_are_refused_replies_not_errors() {
        let mut ledger = Ledger::new();
        for bad in [
            "",
            "open",
            "open a -1",
            "open a\u{e9} 1",
            "transfer a b x",
            "drop all",
        ] {
            assert!(
                matches!(apply(&mut ledger, bad), LedgerReply::Refused(_)),
                "{bad}"
            );
        }
        let long = format!("open {} 1", "a".repeat(MAX_ACCOUNT_NAME_BYTES + 1));
        assert!(matches!(apply(&mut ledger, &long), LedgerReply::Refused(_)));
    }

    #[test]
    fn a_snapshot_restores_the_same_balances_and_any_flipped_byte_is_refused() {
        let mut ledger = Ledger::new();
        apply(&mut ledger, "open alice 10");
        apply(&mut ledger, "open bob 5");
        apply(&mut ledger, "transfer alice bob 3");
        let mut bytes = Vec::new();
        ledger.snapshot().write_to(&mut bytes).expect("write");
        let mut restored = Ledger::new();
        assert_eq!(restored.restore(&mut &bytes[..]).expect("restore"), 3);
        assert_eq!(restored.query(b"balance bob"), LedgerReply::Amount(8));
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x01;
            let mut target = Ledger::new();
            apply(&mut target, "open carol 1");
            assert!(
                target.restore(&mut &damaged[..]).is_err(),
                "byte {position}"
            );
            assert_eq!(target.query(b"balance carol"), LedgerReply::Amount(1));
        }
    }

    #[test]
    fn stored_replies_round_trip_through_their_codec() {
        for reply in [
            LedgerReply::Done,
            LedgerReply::Amount(u64::MAX),
            LedgerReply::Refused("no".into()),
        ] {
            let mut bytes = Vec::new();
            reply.encode(&mut bytes);
            assert_eq!(LedgerReply::decode(&bytes), Some(reply));
        }
        assert_eq!(LedgerReply::decode(&[9]), None);
    }
}
