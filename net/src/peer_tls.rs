//! Mutual TLS between members (rustls, ring provider; no OpenSSL).
//!
//! Why: the cluster secret (`handshake.rs`) proves who opened a connection, but the
//! bytes after the handshake travel in clear and unauthenticated, so anyone on the path
//! can read or rewrite Raft traffic. TLS encrypts and authenticates every byte, and a
//! certificate per node lets a compromised node's key be revoked alone (a new CA, or
//! certificates reissued without it; `docs/SECURITY.md`).
//!
//! The node id is bound to the certificate: a member's certificate carries the DNS SAN
//! `node-<id>.tally` ([`node_dns_name`]). The dialer verifies the acceptor's certificate
//! for the name of the node it dials; the acceptor checks the dialer's certificate names
//! the node its HELLO claims. A certificate that would also pass for another member (a
//! wildcard, or several node names) is refused: one certificate, one member.
//!
//! Loading (`--peer-tls-cert`, `--peer-tls-key`, `--peer-tls-ca`, PEM files) happens once
//! at start; a bad file is a start-up error, never a runtime one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Most bytes a PEM file may hold (checked before it is read): certificates and keys
/// are a few KiB; a chain of a dozen still fits.
pub const MAX_PEM_FILE_BYTES: u64 = 1 << 20;

/// The DNS name a member's certificate carries (and the dialer verifies): `node-<id>.tally`.
pub fn node_dns_name(node_id: u64) -> String {
    format!("node-{node_id}.tally")
}

/// Why the peer TLS files could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerTlsError {
    /// A PEM file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// Path of the file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file is larger than [`MAX_PEM_FILE_BYTES`].
    #[error("{path}: {len} bytes; at most {MAX_PEM_FILE_BYTES} allowed")]
    TooLarge {
        /// Path of the file.
        path: PathBuf,
        /// Its size, in bytes.
        len: u64,
    },
    /// A PEM file does not hold the expected kind of item, or does not parse.
    #[error("{path}: not PEM of the expected kind: {reason}")]
    Pem {
        /// Path of the file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// The certificate file holds no certificate.
    #[error("{path}: no certificate in it")]
    NoCertificate {
        /// Path of the file.
        path: PathBuf,
    },
    /// The certificate does not carry exactly this node's DNS name ([`node_dns_name`]).
    #[error("the certificate does not name this node: it must carry exactly the DNS SAN {expected} of the members' names")]
    WrongNodeName {
        /// The DNS SAN it must carry.
        expected: String,
    },
    /// rustls refused the configuration (for example a key that does not match the
    /// certificate).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the CA file.
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// Paths of a member's peer TLS files (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    /// This node's certificate chain (leaf first), naming [`node_dns_name`] of its id.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificate(s) every member's certificate must chain to.
    pub ca: PathBuf,
}

/// Loaded peer TLS: one configuration for each side of a connection.
#[derive(Clone)]
pub struct PeerTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, PeerTlsError> {
    use std::io::Read as _;
    let io = |source| PeerTlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > MAX_PEM_FILE_BYTES {
        return Err(PeerTlsError::TooLarge {
            path: path.to_path_buf(),
            len,
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_PEM_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Ok(bytes)
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PeerTlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| PeerTlsError::Pem {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PeerTlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // Explicit, so another crate enabling a second provider cannot make this ambiguous.
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PeerTls {
    /// Loads the files of `node_id`; its certificate must name that node and no other
    /// of `members` (this node included).
    pub fn load(files: &PeerTlsFiles, node_id: u64, members: &[u64]) -> Result<Self, PeerTlsError> {
        let cert = read_bounded(&files.cert)?;
        let key = read_bounded(&files.key)?;
        let ca = read_bounded(&files.ca)?;
        Self::from_pem(&cert, &key, &ca, node_id, members).map_err(|error| match error {
            PeerTlsError::Pem { reason, .. } => PeerTlsError::Pem {
                path: files.cert.clone(),
                reason,
            },
            other => other,
        })
    }

    /// As [`PeerTls::load`], from PEM bytes.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        ca_pem: &[u8],
        node_id: u64,
        members: &[u64],
    ) -> Result<Self, PeerTlsError> {
        let chain = certificates(Path::new("certificate"), cert_pem)?;
        if !names_exactly(&chain[0], node_id, members) {
            return Err(PeerTlsError::WrongNodeName {
                expected: node_dns_name(node_id),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| PeerTlsError::Pem {
            path: PathBuf::from("key"),
            reason: error.to_string(),
        })?;
        let mut roots = RootCertStore::empty();
        for ca in certificates(Path::new("CA"), ca_pem)? {
            roots.add(ca)?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .build()
            .map_err(|error| PeerTlsError::Verifier(error.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// A server-side session for an accepted connection.
    pub fn accept(&self) -> Result<rustls::ServerConnection, rustls::Error> {
        rustls::ServerConnection::new(Arc::clone(&self.server))
    }

    /// A client-side session for a connection to `peer`: the acceptor's certificate must
    /// be valid for `node-<peer>.tally`.
    pub fn connect(&self, peer: u64) -> Result<rustls::ClientConnection, rustls::Error> {
        let name = ServerName::try_from(node_dns_name(peer))
            .map_err(|_| rustls::Error::General("node name is not a DNS name".into()))?;
        rustls::ClientConnection::new(Arc::clone(&self.client), name)
    }
}

/// Whether `cert` is valid for `node-<node_id>.tally` and for no other name among
/// `node-0.tally` (id 0 is never a member: a wildcard would pass it) and `members`.
/// Only the names are checked here; the chain was verified by the TLS handshake.
pub fn names_exactly(cert: &CertificateDer<'_>, node_id: u64, members: &[u64]) -> bool {
    let Ok(parsed) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let valid_for = |id: u64| {
        ServerName::try_from(node_dns_name(id))
            .is_ok_and(|name| parsed.verify_is_valid_for_subject_name(&name).is_ok())
    };
    valid_for(node_id)
        && !valid_for(0)
        && members
            .iter()
            .all(|&other| other == node_id || !valid_for(other))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
        pem: String,
    }

    fn ca() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        Ca {
            pem: cert.pem(),
            cert,
            key,
        }
    }

    fn leaf(ca: &Ca, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_certificate_must_name_its_node_and_no_other_member() {
        let ca = ca();
        let members = [1, 2, 3];
        let (cert, key) = leaf(&ca, &["node-2.tally"]);
        PeerTls::from_pem(
            cert.as_bytes(),
            key.as_bytes(),
            ca.pem.as_bytes(),
            2,
            &members,
        )
        .expect("node 2's certificate loads for node 2");
        for (names, why) in [
            (&["node-3.tally"][..], "another node's name"),
            (&["*.tally"][..], "a wildcard"),
            (&["node-2.tally", "node-3.tally"][..], "two members' names"),
        ] {
            let (cert, key) = leaf(&ca, names);
            let error = PeerTls::from_pem(
                cert.as_bytes(),
                key.as_bytes(),
                ca.pem.as_bytes(),
                2,
                &members,
            )
            .expect_err(why);
            assert!(
                matches!(error, PeerTlsError::WrongNodeName { .. }),
                "{why}: {error}"
            );
        }
        assert!(matches!(
            PeerTls::from_pem(b"not pem", key.as_bytes(), ca.pem.as_bytes(), 2, &members),
            Err(PeerTlsError::NoCertificate { .. })
        ));
    }
}
