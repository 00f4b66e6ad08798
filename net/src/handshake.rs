//! The handshake that opens every peer connection (layout in `net/PROTOCOL.md`).
//!
//! Why: a node must never take Raft messages from a member of another cluster (a
//! misconfigured address list) or act on messages meant for a different node (a stale
//! address after a move). The dialer states who it is and whom it means to reach; the
//! acceptor checks both before any Raft frame is read.
//!
//! With a cluster secret the handshake also proves both claims: the acceptor answers a
//! HELLO with a fresh nonce, the dialer proves it holds the secret with an HMAC-SHA256
//! over its HELLO and that nonce, and the acceptor's ACCEPT carries its own HMAC over the
//! same bytes (another label, so neither proof can be replayed as the other). Whoever
//! lacks the secret is refused before a single Raft frame is read, and the refusal is the
//! same for every cause, so it tells the dialer nothing. Without a secret, anyone who
//! can reach the peer port can claim to be a member (`docs/SECURITY.md`).
//!
//! Everything here is pure (bytes in, verdicts out); `transport.rs` does the I/O.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Frame type of the dialer's opening message.
pub const MSG_HELLO: u8 = 0xF0;
/// Frame type of the acceptor's positive answer (empty, or the acceptor's proof).
pub const MSG_ACCEPT: u8 = 0xF1;
/// Frame type of the acceptor's refusal.
pub const MSG_REJECT: u8 = 0xF2;
/// Frame type of the acceptor's challenge (its nonce), sent when it has a secret.
pub const MSG_CHALLENGE: u8 = 0xF3;
/// Frame type of the dialer's answer to a challenge (its proof).
pub const MSG_PROOF: u8 = 0xF4;
/// Frame type of an acceptor's answer to a HELLO that asks for the cluster id: the id,
/// a `u64` little-endian, then the acceptor closes (`cluster_id.rs`; never with a secret).
pub const MSG_CLUSTER_ID: u8 = 0xF5;
/// The cluster id a HELLO carries to ask for the acceptor's instead of joining: a new
/// member that has no id yet. No cluster has it (ids are drawn, derived or configured
/// nonzero).
pub const ASK_CLUSTER_ID: u64 = 0;
/// Frame types from this value up belong to the transport; Raft messages use lower ones.
pub const FIRST_RESERVED_MSG_TYPE: u8 = 0xF0;
/// Version of the handshake payloads this build speaks (2: HELLO carries the dialer's
/// advertised client address; 3: the dialer's nonce before it, and the
/// challenge-response exists; 4: the dialer's incarnation, a `u64`, after the address).
pub const HANDSHAKE_VERSION: u32 = 4;
/// First version whose HELLO carries the dialer's incarnation.
pub const INCARNATION_HANDSHAKE_VERSION: u32 = 4;
/// Oldest handshake version this build still accepts from a dialer when it has no
/// secret (1: no client address, 2: no nonce). With a secret only versions with a
/// nonce (3 and up) pass.
pub const MIN_HANDSHAKE_VERSION: u32 = 1;
/// First version whose HELLO carries a nonce (and can answer a challenge).
pub const NONCE_HANDSHAKE_VERSION: u32 = 3;
/// Size of a version-1 HELLO payload, and of the fixed part of later ones.
pub const HELLO_BYTES: usize = 4 + 8 + 8 + 8;
/// Size of a nonce (HELLO version 3, CHALLENGE).
pub const NONCE_BYTES: usize = 32;
/// Size of a proof (PROOF, a secured ACCEPT): one HMAC-SHA256 output.
pub const PROOF_BYTES: usize = 32;
/// Longest advertised client address a HELLO carries (a host name plus port fits).
pub const MAX_CLIENT_ADDR_BYTES: usize = 255;
/// Longest reason text a REJECT carries.
pub const MAX_REJECT_TEXT_BYTES: usize = 1024;
/// Fewest bytes a cluster secret has.
pub const MIN_SECRET_BYTES: usize = 32;
/// Most bytes a cluster secret file may hold (checked before it is read).
pub const MAX_SECRET_FILE_BYTES: u64 = 4096;

/// HMAC labels: one per direction, so a proof cannot be reflected as the other one.
const DIALER_PROOF_LABEL: &[u8] = b"tally peer handshake v3 dialer proof";
const ACCEPTOR_PROOF_LABEL: &[u8] = b"tally peer handshake v3 acceptor proof";
const CLUSTER_ID_LABEL: &[u8] = b"tally cluster id";

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
    /// The dialer's fresh random nonce (version 3; all zero before).
    pub nonce: [u8; NONCE_BYTES],
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
    /// Encodes the HELLO payload: the fixed part, then (version 3) the nonce, then
    /// (version 2 and later) a `u16` length and the client address. An over-long address
    /// is cut at a character boundary rather than rejected: it is advisory.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HELLO_BYTES + NONCE_BYTES + 2 + self.client_addr.len());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.cluster_id.to_le_bytes());
        out.extend_from_slice(&self.from_node.to_le_bytes());
        out.extend_from_slice(&self.to_node.to_le_bytes());
        if self.version >= NONCE_HANDSHAKE_VERSION {
            out.extend_from_slice(&self.nonce);
        }
        if self.version >= 2 {
            let mut cut = self.client_addr.len().min(MAX_CLIENT_ADDR_BYTES);
            while !self.client_addr.is_char_boundary(cut) {
                cut -= 1;
            }
            out.extend_from_slice(&(cut as u16).to_le_bytes());
            out.extend_from_slice(&self.client_addr.as_bytes()[..cut]);
        }
        if self.version >= INCARNATION_HANDSHAKE_VERSION {
            out.extend_from_slice(&self.incarnation.to_le_bytes());
        }
        out
    }

    /// Decodes a HELLO payload. A version-1 payload is exactly [`HELLO_BYTES`] long;
    /// version 2 adds the address length and address; version 3 puts the nonce before
    /// them; nothing may trail. `None` for any other size, an address over
    /// [`MAX_CLIENT_ADDR_BYTES`] or invalid UTF-8. (Versions this build does not speak
    /// are decoded as far as the fixed part so [`check_hello`] can refuse them.)
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
        let mut rest = &payload[HELLO_BYTES..];
        let mut nonce = [0u8; NONCE_BYTES];
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
            if version >= NONCE_HANDSHAKE_VERSION {
                nonce.copy_from_slice(rest.get(..NONCE_BYTES)?);
                rest = &rest[NONCE_BYTES..];
            }
            let length_bytes = rest.get(..2)?;
            let length = usize::from(u16::from_le_bytes([length_bytes[0], length_bytes[1]]));
            let tail = if version >= INCARNATION_HANDSHAKE_VERSION {
                8
            } else {
                0
            };
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
            nonce,
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
    /// Refused without saying why: what every refusal is on a node with a cluster
    /// secret, so a dialer without it learns nothing.
    Refused,
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
            RejectReason::Refused => 6,
            RejectReason::IncarnationMismatch => 7,
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
            6 => RejectReason::Refused,
            7 => RejectReason::IncarnationMismatch,
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

/// What the acceptor concludes from a HELLO. The text is for the acceptor's log and,
/// on a node without a secret, the dialer: it names what the dialer sent, never this
/// node's own cluster or node id.
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
            format!("cluster id {:#x} is not this node's", hello.cluster_id),
        ));
    }
    if hello.to_node != node_id {
        return Err((
            RejectReason::WrongNode,
            format!("dialed node {} but reached another node", hello.to_node),
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

/// What the acceptor concludes from a HELLO that asks for its cluster id
/// ([`ASK_CLUSTER_ID`]): it answers only a dialer that speaks a known version and meant
/// to reach this node. The asker need not be a member yet (a `--join` node asks before it
/// is added); the id is not secret on a node without a cluster secret, whose port admits
/// anyone anyway, and a node with one never answers.
pub fn check_cluster_id_question(
    hello: &Hello,
    node_id: u64,
) -> Result<(), (RejectReason, String)> {
    if !(MIN_HANDSHAKE_VERSION..=HANDSHAKE_VERSION).contains(&hello.version) {
        return Err((
            RejectReason::VersionMismatch,
            format!("handshake version {} not supported", hello.version),
        ));
    }
    if hello.to_node != node_id {
        return Err((
            RejectReason::WrongNode,
            format!("dialed node {} but reached another node", hello.to_node),
        ));
    }
    if hello.from_node == node_id || hello.from_node == 0 {
        return Err((
            RejectReason::UnknownSender,
            format!("node {} cannot ask for the cluster id", hello.from_node),
        ));
    }
    Ok(())
}

/// Decodes a [`MSG_CLUSTER_ID`] payload: exactly 8 bytes, not [`ASK_CLUSTER_ID`].
pub fn decode_cluster_id_answer(payload: &[u8]) -> Option<u64> {
    let raw: [u8; 8] = payload.try_into().ok()?;
    Some(u64::from_le_bytes(raw)).filter(|&id| id != ASK_CLUSTER_ID)
}

/// Why a cluster secret could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("cluster secret file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "cluster secret file {path} holds {len} bytes; at most {MAX_SECRET_FILE_BYTES} allowed"
    )]
    TooLarge { path: String, len: u64 },
    #[error("cluster secret holds {len} bytes; at least {MIN_SECRET_BYTES} are needed (tally-server gen-secret FILE writes one)")]
    TooShort { len: usize },
}

/// The shared key every member of a cluster holds. Invariant: at least
/// [`MIN_SECRET_BYTES`] bytes. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(redacted)")
    }
}

impl ClusterSecret {
    /// A secret from its bytes.
    pub fn from_bytes(key: &[u8]) -> Result<ClusterSecret, SecretError> {
        if key.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort { len: key.len() });
        }
        Ok(ClusterSecret { key: key.to_vec() })
    }

    /// Reads a secret file: its bytes with trailing whitespace (a final newline) removed
    /// are the key. The size is checked before reading.
    pub fn from_file(path: &Path) -> Result<ClusterSecret, SecretError> {
        use std::io::Read as _;
        let shown = path.display().to_string();
        let io = |source| SecretError::Io {
            path: shown.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len > MAX_SECRET_FILE_BYTES {
            return Err(SecretError::TooLarge { path: shown, len });
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.take(MAX_SECRET_FILE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |last| last + 1);
        ClusterSecret::from_bytes(&bytes[..end])
    }

    /// A new secret file's contents: 32 bytes from the operating system's random source,
    /// as 64 lowercase hex digits and a newline (the key is the hex text itself).
    pub fn generate_file_text() -> String {
        use rand::RngCore as _;
        let mut raw = [0u8; MIN_SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let mut text: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        text.push('\n');
        text
    }

    /// The cluster id every holder of this secret derives: the first 8 bytes
    /// (little-endian) of HMAC-SHA256(secret, "tally cluster id"), so a new cluster's
    /// members agree on a random id without talking. (0, [`ASK_CLUSTER_ID`], becomes 1.)
    pub fn cluster_id(&self) -> u64 {
        let tag = self.mac(&[CLUSTER_ID_LABEL]);
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag[..8]);
        u64::from_le_bytes(first).max(1)
    }

    /// The dialer's proof: HMAC-SHA256(secret, dialer label ‖ u32 len ‖ HELLO payload ‖
    /// acceptor nonce). The HELLO payload holds the version, cluster id, both node ids,
    /// the dialer's nonce and its client address.
    pub fn dialer_proof(
        &self,
        hello_payload: &[u8],
        acceptor_nonce: &[u8; NONCE_BYTES],
    ) -> [u8; PROOF_BYTES] {
        self.transcript_mac(DIALER_PROOF_LABEL, hello_payload, acceptor_nonce)
    }

    /// The acceptor's proof: as [`ClusterSecret::dialer_proof`] with the acceptor label.
    pub fn acceptor_proof(
        &self,
        hello_payload: &[u8],
        acceptor_nonce: &[u8; NONCE_BYTES],
    ) -> [u8; PROOF_BYTES] {
        self.transcript_mac(ACCEPTOR_PROOF_LABEL, hello_payload, acceptor_nonce)
    }

    /// Checks a dialer's proof in constant time (any length other than
    /// [`PROOF_BYTES`] fails).
    pub fn verify_dialer_proof(
        &self,
        hello_payload: &[u8],
        acceptor_nonce: &[u8; NONCE_BYTES],
        proof: &[u8],
    ) -> bool {
        self.verify(DIALER_PROOF_LABEL, hello_payload, acceptor_nonce, proof)
    }

    /// Checks an acceptor's proof in constant time.
    pub fn verify_acceptor_proof(
        &self,
        hello_payload: &[u8],
        acceptor_nonce: &[u8; NONCE_BYTES],
        proof: &[u8],
    ) -> bool {
        self.verify(ACCEPTOR_PROOF_LABEL, hello_payload, acceptor_nonce, proof)
    }

    fn keyed(&self) -> HmacSha256 {
        // HMAC takes keys of any length; the error type exists for other MACs.
        <HmacSha256 as Mac>::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; PROOF_BYTES] {
        let mut mac = self.keyed();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    fn transcript(
        mut mac: HmacSha256,
        label: &[u8],
        hello_payload: &[u8],
        acceptor_nonce: &[u8; NONCE_BYTES],
    ) -> HmacSha256 {
        mac.update(label);
        mac.update(&(hello_payload.len() as u32).to_le_bytes());
        mac.update(hello_payload);
        mac.update(acceptor_nonce);
        mac
    }

    fn transcript_mac(
        &self,
        label: &[u8],
        hello_payload: &[u8],
        acceptor_nonce: &[u8; NONCE_BYTES],
    ) -> [u8; PROOF_BYTES] {
        Self::transcript(self.keyed(), label, hello_payload, acceptor_nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    fn verify(
        &self,
        label: &[u8],
        hello_payload: &[u8],
        acceptor_nonce: &[u8; NONCE_BYTES],
        proof: &[u8],
    ) -> bool {
        Self::transcript(self.keyed(), label, hello_payload, acceptor_nonce)
            .verify_slice(proof)
            .is_ok()
    }
}

/// A fresh nonce from the operating system's random source.
pub fn new_nonce() -> [u8; NONCE_BYTES] {
    use rand::RngCore as _;
    let mut nonce = [0u8; NONCE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

/// Decodes a CHALLENGE payload (exactly one nonce).
pub fn decode_challenge(payload: &[u8]) -> Option<[u8; NONCE_BYTES]> {
    payload.try_into().ok()
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
            nonce: [9; NONCE_BYTES],
            client_addr: "127.0.0.1:6379".to_string(),
            incarnation: 0xabcd,
        }
    }

    #[test]
    fn version_three_hello_without_incarnation_is_still_understood() {
        let old = Hello {
            version: 3,
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
            nonce: [0; NONCE_BYTES],
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
        let fixed = HELLO_BYTES + NONCE_BYTES;
        let mut bad = hello().encode()[..fixed].to_vec();
        bad.extend_from_slice(&((MAX_CLIENT_ADDR_BYTES + 1) as u16).to_le_bytes());
        bad.extend(std::iter::repeat_n(b'a', MAX_CLIENT_ADDR_BYTES + 1));
        assert_eq!(Hello::decode(&bad), None);
        let mut not_utf8 = hello().encode()[..fixed].to_vec();
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
    fn a_cluster_id_question_is_answered_only_for_this_node_and_answers_decode_strictly() {
        let ask = Hello {
            cluster_id: ASK_CLUSTER_ID,
            ..hello()
        };
        assert_eq!(check_cluster_id_question(&ask, 2), Ok(()));
        let reason = |h: Hello| check_cluster_id_question(&h, 2).map_err(|(r, _)| r);
        assert_eq!(
            reason(Hello {
                to_node: 3,
                ..ask.clone()
            }),
            Err(RejectReason::WrongNode)
        );
        assert_eq!(
            reason(Hello {
                from_node: 2,
                ..ask.clone()
            }),
            Err(RejectReason::UnknownSender)
        );
        assert_eq!(
            reason(Hello { version: 99, ..ask }),
            Err(RejectReason::VersionMismatch)
        );
        assert_eq!(decode_cluster_id_answer(&7u64.to_le_bytes()), Some(7));
        assert_eq!(decode_cluster_id_answer(&0u64.to_le_bytes()), None);
        assert_eq!(decode_cluster_id_answer(&[7; 7]), None);
        assert_eq!(decode_cluster_id_answer(&[7; 9]), None);
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

    #[test]
    fn version_two_hello_without_nonce_is_still_understood() {
        let old = Hello {
            version: 2,
            nonce: [0; NONCE_BYTES],
            incarnation: 0,
            ..hello()
        };
        let bytes = old.encode();
        assert_eq!(bytes.len(), HELLO_BYTES + 2 + old.client_addr.len());
        assert_eq!(Hello::decode(&bytes), Some(old));
        let current = hello().encode();
        assert_eq!(
            current.len(),
            HELLO_BYTES + NONCE_BYTES + 2 + hello().client_addr.len() + 8
        );
        assert_eq!(&current[HELLO_BYTES..HELLO_BYTES + NONCE_BYTES], &[9; 32]);
    }

    fn secret(byte: u8) -> ClusterSecret {
        ClusterSecret::from_bytes(&[byte; MIN_SECRET_BYTES]).expect("long enough")
    }

    #[test]
    fn proofs_verify_only_with_the_same_secret_transcript_and_direction() {
        let payload = hello().encode();
        let nonce = [5u8; NONCE_BYTES];
        let key = secret(1);
        let proof = key.dialer_proof(&payload, &nonce);
        assert!(key.verify_dialer_proof(&payload, &nonce, &proof));
        assert!(!secret(2).verify_dialer_proof(&payload, &nonce, &proof));
        assert!(
            !key.verify_acceptor_proof(&payload, &nonce, &proof),
            "a dialer proof must not pass as the acceptor's"
        );
        assert!(!key.verify_dialer_proof(&payload, &[6; NONCE_BYTES], &proof));
        for byte in 0..payload.len() {
            let mut changed = payload.clone();
            changed[byte] ^= 1;
            assert!(
                !key.verify_dialer_proof(&changed, &nonce, &proof),
                "byte {byte}"
            );
        }
        assert!(!key.verify_dialer_proof(&payload, &nonce, &proof[..31]));
        assert!(!key.verify_dialer_proof(&payload, &nonce, &[]));
        let back = key.acceptor_proof(&payload, &nonce);
        assert!(key.verify_acceptor_proof(&payload, &nonce, &back));
        assert_ne!(back, proof);
    }

    #[test]
    fn secrets_are_bounded_and_derive_one_cluster_id() {
        assert!(matches!(
            ClusterSecret::from_bytes(&[1; MIN_SECRET_BYTES - 1]),
            Err(SecretError::TooShort { .. })
        ));
        assert_eq!(secret(1).cluster_id(), secret(1).cluster_id());
        assert_ne!(secret(1).cluster_id(), secret(2).cluster_id());
        assert_eq!(format!("{:?}", secret(1)), "ClusterSecret(redacted)");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("secret");
        let text = ClusterSecret::generate_file_text();
        assert_eq!(text.len(), 2 * MIN_SECRET_BYTES + 1);
        assert_ne!(text, ClusterSecret::generate_file_text());
        std::fs::write(&path, &text).expect("write");
        let loaded = ClusterSecret::from_file(&path).expect("load");
        assert_eq!(
            loaded,
            ClusterSecret::from_bytes(text.trim().as_bytes()).expect("key")
        );
        std::fs::write(&path, "short\n").expect("write");
        assert!(matches!(
            ClusterSecret::from_file(&path),
            Err(SecretError::TooShort { len: 5 })
        ));
        std::fs::write(&path, vec![b'a'; MAX_SECRET_FILE_BYTES as usize + 1]).expect("write");
        assert!(matches!(
            ClusterSecret::from_file(&path),
            Err(SecretError::TooLarge { .. })
        ));
    }

    #[test]
    fn refusal_texts_never_name_the_acceptors_own_ids() {
        let known = |id: u64| id == 1;
        for bad in [
            Hello {
                cluster_id: 8,
                ..hello()
            },
            Hello {
                to_node: 3,
                ..hello()
            },
            Hello {
                from_node: 4,
                ..hello()
            },
        ] {
            let (_, text) = check_hello(&bad, 7, 2, known).expect_err("refused");
            assert!(!text.contains("0x7") && !text.contains("node 2"), "{text}");
        }
    }
}
