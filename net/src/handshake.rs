//! The handshake that opens every peer connection (layout in `net/PROTOCOL.md`).
//!
//! Why: a node must never take Raft messages from a member of another cluster (a
//! misconfigured address list) or act on messages meant for a different node (a stale
//! address after a move). The dialer states who it is and whom it means to reach; the
//! acceptor checks both before any Raft frame is read.

/// Frame type of the dialer's opening message.
pub const MSG_HELLO: u8 = 0xF0;
/// Frame type of the acceptor's positive answer (empty payload).
pub const MSG_ACCEPT: u8 = 0xF1;
/// Frame type of the acceptor's refusal.
pub const MSG_REJECT: u8 = 0xF2;
/// Frame types from this value up belong to the transport; Raft messages use lower ones.
pub const FIRST_RESERVED_MSG_TYPE: u8 = 0xF0;
/// Version of the handshake payloads this build speaks (2: HELLO carries the dialer's
/// advertised client address; 3: then its incarnation, a `u64`).
pub const HANDSHAKE_VERSION: u32 = 3;
/// Oldest handshake version this build still accepts (1: no client address).
pub const MIN_HANDSHAKE_VERSION: u32 = 1;
/// Size of a version-1 HELLO payload, and of the fixed part of a version-2 one.
pub const HELLO_BYTES: usize = 4 + 8 + 8 + 8;
/// Longest advertised client address a HELLO carries (a host name plus port fits).
pub const MAX_CLIENT_ADDR_BYTES: usize = 255;
/// Longest reason text a REJECT carries.
pub const MAX_REJECT_TEXT_BYTES: usize = 1024;

/// The dialer's opening message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Handshake version the dialer speaks.
    pub version: u32,
    /// Cluster the dialer belongs to.
    pub cluster_id: u64,
    /// The dialer's node id.
    pub from_node: u64,
    /// The node id the dialer means to reach.
    pub to_node: u64,
    /// Where the dialer serves Redis clients (`host:port`), so followers can redirect
    /// clients to the leader with `-NOTLEADER <addr>`. Empty when unknown (version 1).
    /// Invariant: at most [`MAX_CLIENT_ADDR_BYTES`] bytes.
    pub client_addr: String,
    /// The random id the dialer drew when its directory was created (version 3; 0 when
    /// older or unknown): an acceptor refuses a member id whose recorded incarnation
    /// differs (an emptied directory reusing an old id).
    pub incarnation: u64,
}

impl Hello {
    /// Encodes the HELLO payload: the fixed part, then (version 2 and later) a `u16`
    /// length and the client address. An over-long address is cut at a character
    /// boundary rather than rejected: it is advisory.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HELLO_BYTES + 2 + self.client_addr.len());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.cluster_id.to_le_bytes());
        out.extend_from_slice(&self.from_node.to_le_bytes());
        out.extend_from_slice(&self.to_node.to_le_bytes());
        if self.version >= 2 {
            let mut cut = self.client_addr.len().min(MAX_CLIENT_ADDR_BYTES);
            while !self.client_addr.is_char_boundary(cut) {
                cut -= 1;
            }
            out.extend_from_slice(&(cut as u16).to_le_bytes());
            out.extend_from_slice(&self.client_addr.as_bytes()[..cut]);
        }
        if self.version >= 3 {
            out.extend_from_slice(&self.incarnation.to_le_bytes());
        }
        out
    }

    /// Decodes a HELLO payload. A version-1 payload is exactly [`HELLO_BYTES`] long; a
    /// later one has the address length and address after it and nothing more. `None`
    /// for any other size, an address over [`MAX_CLIENT_ADDR_BYTES`] or invalid UTF-8.
    /// (Versions this build does not speak are decoded as far as the fixed part so
    /// [`check_hello`] can name the version in its refusal.)
    pub fn decode(payload: &[u8]) -> Option<Hello> {
        let fixed = payload.get(..HELLO_BYTES)?;
        let u64_at = |at: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&fixed[at..at + 8]);
            u64::from_le_bytes(raw)
        };
        let mut version = [0u8; 4];
        version.copy_from_slice(&fixed[0..4]);
        let version = u32::from_le_bytes(version);
        let rest = &payload[HELLO_BYTES..];
        let mut incarnation = 0;
        let client_addr = if version < 2 {
            if !rest.is_empty() {
                return None;
            }
            String::new()
        } else if version > HANDSHAKE_VERSION {
            // Unknown layout beyond the fixed part: let check_hello refuse it by version.
            String::new()
        } else {
            let length_bytes = rest.get(..2)?;
            let length = usize::from(u16::from_le_bytes([length_bytes[0], length_bytes[1]]));
            let tail = if version >= 3 { 8 } else { 0 };
            if length > MAX_CLIENT_ADDR_BYTES || rest.len() != 2 + length + tail {
                return None;
            }
            if tail > 0 {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(&rest[2 + length..]);
                incarnation = u64::from_le_bytes(raw);
            }
            std::str::from_utf8(&rest[2..2 + length]).ok()?.to_string()
        };
        Some(Hello {
            version,
            cluster_id: u64_at(4),
            from_node: u64_at(12),
            to_node: u64_at(20),
            client_addr,
            incarnation,
        })
    }
}

/// Why an acceptor refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// The dialer speaks another handshake version.
    VersionMismatch,
    /// The dialer belongs to another cluster.
    WrongCluster,
    /// The dialer meant to reach a different node.
    WrongNode,
    /// The dialer is not a member this node knows.
    UnknownSender,
    /// The first frame was not a well-formed HELLO.
    MalformedHello,
    /// The dialer's incarnation differs from the one the cluster recorded for its id.
    IncarnationMismatch,
    /// A code this build does not know (a newer peer).
    Other(u8),
}

impl RejectReason {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            RejectReason::VersionMismatch => 1,
            RejectReason::WrongCluster => 2,
            RejectReason::WrongNode => 3,
            RejectReason::UnknownSender => 4,
            RejectReason::MalformedHello => 5,
            RejectReason::IncarnationMismatch => 6,
            RejectReason::Other(code) => code,
        }
    }

    /// The reason for a wire code.
    pub fn from_code(code: u8) -> RejectReason {
        match code {
            1 => RejectReason::VersionMismatch,
            2 => RejectReason::WrongCluster,
            3 => RejectReason::WrongNode,
            4 => RejectReason::UnknownSender,
            5 => RejectReason::MalformedHello,
            6 => RejectReason::IncarnationMismatch,
            other => RejectReason::Other(other),
        }
    }
}

/// Encodes a REJECT payload: reason code, then the text cut to
/// [`MAX_REJECT_TEXT_BYTES`] (at a character boundary).
pub fn encode_reject(reason: RejectReason, text: &str) -> Vec<u8> {
    let mut cut = text.len().min(MAX_REJECT_TEXT_BYTES);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = Vec::with_capacity(1 + cut);
    out.push(reason.code());
    out.extend_from_slice(&text.as_bytes()[..cut]);
    out
}

/// Decodes a REJECT payload; the text is lossily decoded and bounded.
pub fn decode_reject(payload: &[u8]) -> (RejectReason, String) {
    match payload.split_first() {
        None => (RejectReason::Other(0), String::new()),
        Some((code, text)) => {
            let text = &text[..text.len().min(MAX_REJECT_TEXT_BYTES)];
            (
                RejectReason::from_code(*code),
                String::from_utf8_lossy(text).into_owned(),
            )
        }
    }
}

/// What the acceptor concludes from a HELLO.
pub fn check_hello(
    hello: &Hello,
    cluster_id: u64,
    node_id: u64,
    is_known_peer: impl Fn(u64) -> bool,
) -> Result<(), (RejectReason, String)> {
    if !(MIN_HANDSHAKE_VERSION..=HANDSHAKE_VERSION).contains(&hello.version) {
        return Err((
            RejectReason::VersionMismatch,
            format!(
                "handshake version {} not supported (this node speaks {MIN_HANDSHAKE_VERSION}..={HANDSHAKE_VERSION})",
                hello.version
            ),
        ));
    }
    if hello.cluster_id != cluster_id {
        return Err((
            RejectReason::WrongCluster,
            format!(
                "cluster id {:#x} does not match this node's {cluster_id:#x}",
                hello.cluster_id
            ),
        ));
    }
    if hello.to_node != node_id {
        return Err((
            RejectReason::WrongNode,
            format!("dialed node {} but reached node {node_id}", hello.to_node),
        ));
    }
    if hello.from_node == node_id || !is_known_peer(hello.from_node) {
        return Err((
            RejectReason::UnknownSender,
            format!("node {} is not a known peer", hello.from_node),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            version: HANDSHAKE_VERSION,
            cluster_id: 7,
            from_node: 1,
            to_node: 2,
            client_addr: "127.0.0.1:6379".to_string(),
            incarnation: 0xabcd,
        }
    }

    #[test]
    fn version_two_hello_without_incarnation_is_still_understood() {
        let old = Hello {
            version: 2,
            incarnation: 0,
            ..hello()
        };
        let bytes = old.encode();
        assert_eq!(Hello::decode(&bytes), Some(old));
        assert_eq!(hello().encode().len(), bytes.len() + 8);
    }

    #[test]
    fn hello_roundtrips_and_rejects_wrong_sizes() {
        let bytes = hello().encode();
        assert_eq!(Hello::decode(&bytes), Some(hello()));
        assert_eq!(Hello::decode(&bytes[..HELLO_BYTES - 1]), None);
        assert_eq!(Hello::decode(&bytes[..bytes.len() - 1]), None);
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(Hello::decode(&longer), None);
    }

    #[test]
    fn version_one_hello_without_client_addr_is_still_understood() {
        let old = Hello {
            version: 1,
            client_addr: String::new(),
            incarnation: 0,
            ..hello()
        };
        let bytes = old.encode();
        assert_eq!(bytes.len(), HELLO_BYTES);
        assert_eq!(Hello::decode(&bytes), Some(old.clone()));
        assert_eq!(check_hello(&old, 7, 2, |id| id == 1), Ok(()));
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0, 0]);
        assert_eq!(
            Hello::decode(&longer),
            None,
            "version 1 has no address field"
        );
    }

    #[test]
    fn client_addr_is_bounded_both_ways() {
        let long = Hello {
            client_addr: "é".repeat(MAX_CLIENT_ADDR_BYTES),
            ..hello()
        };
        let decoded = Hello::decode(&long.encode()).expect("an encoded HELLO decodes");
        assert!(decoded.client_addr.len() <= MAX_CLIENT_ADDR_BYTES);
        assert!(long.client_addr.starts_with(&decoded.client_addr));
        // A hand-made payload announcing a longer address is refused.
        let mut bad = hello().encode()[..HELLO_BYTES].to_vec();
        bad.extend_from_slice(&((MAX_CLIENT_ADDR_BYTES + 1) as u16).to_le_bytes());
        bad.extend(std::iter::repeat_n(b'a', MAX_CLIENT_ADDR_BYTES + 1));
        assert_eq!(Hello::decode(&bad), None);
        let mut not_utf8 = hello().encode()[..HELLO_BYTES].to_vec();
        not_utf8.extend_from_slice(&2u16.to_le_bytes());
        not_utf8.extend_from_slice(&[0xff, 0xfe]);
        not_utf8.extend_from_slice(&[0; 8]);
        assert_eq!(Hello::decode(&not_utf8), None);
    }

    #[test]
    fn acceptor_checks_version_cluster_target_and_sender() {
        let known = |id: u64| id == 1 || id == 3;
        assert_eq!(check_hello(&hello(), 7, 2, known), Ok(()));
        let reason = |h: Hello| check_hello(&h, 7, 2, known).map_err(|(r, _)| r);
        assert_eq!(
            reason(Hello {
                version: 9,
                ..hello()
            }),
            Err(RejectReason::VersionMismatch)
        );
        assert_eq!(
            reason(Hello {
                cluster_id: 8,
                ..hello()
            }),
            Err(RejectReason::WrongCluster)
        );
        assert_eq!(
            reason(Hello {
                to_node: 3,
                ..hello()
            }),
            Err(RejectReason::WrongNode)
        );
        assert_eq!(
            reason(Hello {
                from_node: 4,
                ..hello()
            }),
            Err(RejectReason::UnknownSender)
        );
        assert_eq!(
            reason(Hello {
                from_node: 2,
                ..hello()
            }),
            Err(RejectReason::UnknownSender),
            "a node does not accept itself"
        );
    }

    #[test]
    fn reject_text_is_bounded_and_survives_garbage() {
        let long = "é".repeat(2000);
        let payload = encode_reject(RejectReason::WrongNode, &long);
        assert!(payload.len() <= 1 + MAX_REJECT_TEXT_BYTES);
        let (reason, text) = decode_reject(&payload);
        assert_eq!(reason, RejectReason::WrongNode);
        assert!(long.starts_with(&text));
        assert_eq!(decode_reject(&[]).0, RejectReason::Other(0));
        assert_eq!(decode_reject(&[200, 0xff]).0, RejectReason::Other(200));
    }
}
