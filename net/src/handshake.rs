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
/// Version of the handshake payloads this build speaks.
pub const HANDSHAKE_VERSION: u32 = 1;
/// Size of a HELLO payload.
pub const HELLO_BYTES: usize = 4 + 8 + 8 + 8;
/// Longest reason text a REJECT carries.
pub const MAX_REJECT_TEXT_BYTES: usize = 1024;

/// The dialer's opening message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Handshake version the dialer speaks.
    pub version: u32,
    /// Cluster the dialer belongs to.
    pub cluster_id: u64,
    /// The dialer's node id.
    pub from_node: u64,
    /// The node id the dialer means to reach.
    pub to_node: u64,
}

impl Hello {
    /// Encodes the HELLO payload.
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut out = [0u8; HELLO_BYTES];
        out[0..4].copy_from_slice(&self.version.to_le_bytes());
        out[4..12].copy_from_slice(&self.cluster_id.to_le_bytes());
        out[12..20].copy_from_slice(&self.from_node.to_le_bytes());
        out[20..28].copy_from_slice(&self.to_node.to_le_bytes());
        out
    }

    /// Decodes a HELLO payload; `None` unless it is exactly [`HELLO_BYTES`] long.
    pub fn decode(payload: &[u8]) -> Option<Hello> {
        if payload.len() != HELLO_BYTES {
            return None;
        }
        let u64_at = |at: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&payload[at..at + 8]);
            u64::from_le_bytes(raw)
        };
        let mut version = [0u8; 4];
        version.copy_from_slice(&payload[0..4]);
        Some(Hello {
            version: u32::from_le_bytes(version),
            cluster_id: u64_at(4),
            from_node: u64_at(12),
            to_node: u64_at(20),
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
    if hello.version != HANDSHAKE_VERSION {
        return Err((
            RejectReason::VersionMismatch,
            format!(
                "handshake version {} not supported (this node speaks {HANDSHAKE_VERSION})",
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
        }
    }

    #[test]
    fn hello_roundtrips_and_rejects_wrong_sizes() {
        let bytes = hello().encode();
        assert_eq!(Hello::decode(&bytes), Some(hello()));
        assert_eq!(Hello::decode(&bytes[..HELLO_BYTES - 1]), None);
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(Hello::decode(&longer), None);
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
