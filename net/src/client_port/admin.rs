//! `TALLY` membership commands: `redis-cli` as the operator's admin tool.
//!
//! Why here and not in the node: the client port only parses arguments and renders
//! answers; every check and the wait for the commit happen in the node driver
//! (`tally_engine::driver::MembershipChange`), the same path embedders and the
//! simulator use. A change answers `+OK` once its final configuration committed (C_new
//! for a joint change), a transfer once the target leads; otherwise `-NOTLEADER <addr>`
//! or `-ERR <why>` (another change in progress, unknown id, learner still lagging, ...).
//!
//! - `TALLY MEMBERS`: one bulk string per member, `id=.. role=voter|learner
//!   peer_addr=.. client_addr=.. match_index=.. lag_entries=.. connected=yes|no|self
//!   incarnation=0x..` (0x0: not recorded yet)
//!   (`-` where this node does not know: match index and lag are the leader's view).
//! - `TALLY MEMBER ADD <id> <peer-addr> <client-addr>`: joins as a learner.
//! - `TALLY MEMBER PROMOTE <id>`, `TALLY MEMBER REMOVE <id>`, `TALLY TRANSFER <id>`.

use tally_engine::raft::MemberInfo;
use tally_engine::runtime::{MemberStatus, MembershipChange, MembershipError};

use super::connection::{Connection, Slot};
use super::io_loop::Context;
use super::*;

impl Connection {
    /// A `TALLY` subcommand other than `SNAPSHOT`.
    pub(super) fn admin_command(
        &mut self,
        sub: &[u8],
        rest: &[&[u8]],
        context: &mut Context<'_>,
    ) -> Slot {
        let sub = sub.to_ascii_lowercase();
        let parsed = match sub.as_slice() {
            b"members" if rest.is_empty() => {
                let mut out = Vec::new();
                write_members(&mut out, context.shared);
                return Slot::Ready(out);
            }
            b"member" => parse_member_change(rest),
            b"transfer" => match rest {
                [id] => parse_id(id).map(AdminRequest::Transfer),
                _ => Err(wrong_arity("tally transfer")),
            },
            b"members" => Err(wrong_arity("tally members")),
            _ => Err(format!(
                "ERR unknown TALLY subcommand '{}'",
                String::from_utf8_lossy(&sub)
            )),
        };
        match parsed {
            Ok(request) => self.submit_admin(request, context),
            Err(text) => {
                let mut out = Vec::new();
                write_error(&mut out, &text);
                Slot::Ready(out)
            }
        }
    }

    fn submit_admin(&mut self, request: AdminRequest, context: &mut Context<'_>) -> Slot {
        let tag = self.new_tag(false);
        let sender = context.reply_tx.clone();
        let waker = Arc::clone(context.reply_waker);
        let reply = move |result: Result<(), MembershipError>| {
            ReplyTo::with_waker(tag, sender, waker)
                .send(result.map(|()| KvResponse::Ok).map_err(client_error_of));
        };
        let handle = &context.shared.handle;
        match request {
            AdminRequest::Change(change) => handle.request_membership_change(
                change,
                Box::new(move |result| reply(result.map(|_| ()))),
            ),
            AdminRequest::Transfer(target) => {
                handle.request_transfer(target, Box::new(move |result| reply(result.map(|_| ()))))
            }
        }
        Slot::Pending(tag)
    }
}

enum AdminRequest {
    Change(MembershipChange),
    Transfer(u64),
}

fn client_error_of(error: MembershipError) -> ClientError {
    match error {
        MembershipError::NotLeader { leader } => ClientError::NotLeader { leader },
        other => ClientError::Refused(other.to_string()),
    }
}

fn wrong_arity(command: &str) -> String {
    format!("ERR wrong number of arguments for '{command}' command")
}

fn parse_member_change(args: &[&[u8]]) -> Result<AdminRequest, String> {
    let Some((verb, rest)) = args.split_first() else {
        return Err(wrong_arity("tally member"));
    };
    let change = match (verb.to_ascii_lowercase().as_slice(), rest) {
        (b"add", [id, peer_addr, client_addr]) => MembershipChange::AddLearner {
            id: parse_id(id)?,
            info: MemberInfo {
                peer_addr: parse_addr("peer", peer_addr)?,
                client_addr: parse_addr("client", client_addr)?,
                incarnation: 0,
            },
        },
        (b"promote", [id]) => MembershipChange::Promote { id: parse_id(id)? },
        (b"remove", [id]) => MembershipChange::Remove { id: parse_id(id)? },
        (b"add", _) => return Err(wrong_arity("tally member add")),
        (b"promote", _) => return Err(wrong_arity("tally member promote")),
        (b"remove", _) => return Err(wrong_arity("tally member remove")),
        (other, _) => {
            return Err(format!(
                "ERR unknown TALLY MEMBER subcommand '{}' (ADD, PROMOTE, REMOVE)",
                String::from_utf8_lossy(other)
            ))
        }
    };
    Ok(AdminRequest::Change(change))
}

fn parse_id(arg: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .filter(|id| *id != 0)
        .ok_or_else(|| {
            format!(
                "ERR invalid member id '{}' (a nonzero integer)",
                String::from_utf8_lossy(arg)
            )
        })
}

/// `host:port` with a numeric port, at most the configuration's address bound. Not
/// resolved here (no DNS lookups on an I/O thread): the transport resolves it.
fn parse_addr(what: &str, arg: &[u8]) -> Result<String, String> {
    let invalid = || {
        format!(
            "ERR invalid {what} address '{}' (host:port)",
            String::from_utf8_lossy(arg)
        )
    };
    let text = std::str::from_utf8(arg).map_err(|_| invalid())?;
    let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
    if host.is_empty()
        || port.parse::<u16>().is_err()
        || text.len() > tally_engine::raft::config::MAX_MEMBER_ADDR_BYTES
    {
        return Err(invalid());
    }
    Ok(text.to_string())
}

fn write_members(out: &mut Vec<u8>, shared: &Shared) {
    let members = shared.handle.status().members();
    write_array_header(out, members.len());
    for member in &members {
        write_bulk(out, member_line(member, shared).as_bytes());
    }
}

/// One member as `key=value` fields (stable names: scripts parse them).
fn member_line(member: &MemberStatus, shared: &Shared) -> String {
    let or_dash = |value: Option<u64>| value.map_or("-".to_string(), |v| v.to_string());
    let known = |text: &str| {
        if text.is_empty() {
            "-".to_string()
        } else {
            text.to_string()
        }
    };
    let client_addr = if member.info.client_addr.is_empty() {
        shared.client_addr_of(member.id).unwrap_or_default()
    } else {
        member.info.client_addr.clone()
    };
    let connected = match member.connected {
        _ if member.id == shared.config.node_id => "self",
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    };
    format!(
        "id={} role={} peer_addr={} client_addr={} match_index={} lag_entries={} connected={} \
         incarnation={:#x}",
        member.id,
        if member.voter { "voter" } else { "learner" },
        known(&member.info.peer_addr),
        known(&client_addr),
        or_dash(member.match_index),
        or_dash(member.lag_entries),
        connected,
        member.info.incarnation,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_commands_parse_ids_and_addresses() {
        let parsed = parse_member_change(&[b"ADD", b"4", b"10.0.0.4:7001", b"10.0.0.4:6379"]);
        assert!(matches!(
            parsed,
            Ok(AdminRequest::Change(MembershipChange::AddLearner {
                id: 4,
                ..
            }))
        ));
        assert!(matches!(
            parse_member_change(&[b"promote", b"4"]),
            Ok(AdminRequest::Change(MembershipChange::Promote { id: 4 }))
        ));
        assert!(matches!(
            parse_member_change(&[b"remove", b"2"]),
            Ok(AdminRequest::Change(MembershipChange::Remove { id: 2 }))
        ));
        for bad in [
            &[b"add".as_slice(), b"0", b"a:1", b"b:2"][..],
            &[b"add", b"4", b"no-port", b"b:2"],
            &[b"add", b"4", b"a:99999", b"b:2"],
            &[b"add", b"4", b"a:1"],
            &[b"promote"],
            &[b"rename", b"4"],
            &[],
        ] {
            assert!(parse_member_change(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn refusals_become_error_lines_and_not_leader_a_redirect() {
        assert_eq!(
            client_error_of(MembershipError::NotLeader { leader: Some(2) }),
            ClientError::NotLeader { leader: Some(2) }
        );
        assert_eq!(
            client_error_of(MembershipError::ChangeInProgress),
            ClientError::Refused("another membership change is in progress".into())
        );
    }
}
