//! TLS configuration from PEM files, shared by the client port (`--client-tls-*`) and
//! the peer transport.
//!
//! Why rustls (with the `ring` provider): no OpenSSL to link or configure, memory-safe
//! record handling, and a sans-IO `ServerConnection` (`read_tls` / `process_new_packets`
//! / `write_tls`) that sits on top of the client port's non-blocking mio sockets without
//! a thread per connection. TLS 1.2 and 1.3 with rustls' safe defaults (redis-cli and
//! redis-py negotiate 1.3).
//!
//! Every file is read with a size bound ([`MAX_PEM_FILE_BYTES`]) before it is parsed.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// Largest PEM file read (certificate chains and bundles are kilobytes).
pub const MAX_PEM_FILE_BYTES: u64 = 1 << 20;

/// Why a TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {file}: {source}")]
    Io {
        /// Path of the file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file is larger than [`MAX_PEM_FILE_BYTES`].
    #[error("{file} is larger than {MAX_PEM_FILE_BYTES} bytes")]
    TooLarge {
        /// Path of the file.
        file: String,
    },
    /// A PEM file holds no item of the kind needed.
    #[error("{file}: no {what} found in PEM")]
    Missing {
        /// Path of the file.
        file: String,
        /// What was looked for (`"certificate"`, `"private key"`).
        what: &'static str,
    },
    /// A PEM file does not parse.
    #[error("{file}: bad PEM: {reason}")]
    Pem {
        /// Path of the file.
        file: String,
        /// The parser's complaint.
        reason: String,
    },
    /// rustls refused the configuration (for example a key that does not match the
    /// certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the CA file.
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// The crypto provider every Tally TLS configuration uses (`ring`).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A file's bytes, at most [`MAX_PEM_FILE_BYTES`].
fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    let file = path.display().to_string();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|handle| handle.take(MAX_PEM_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|source| TlsError::Io {
            file: file.clone(),
            source,
        })?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(TlsError::TooLarge { file });
    }
    Ok(bytes)
}

/// Every certificate of a PEM file, in order (a chain: leaf first).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_bounded(path)?;
    let file = path.display().to_string();
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            file: file.clone(),
            reason: error.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Missing {
            file,
            what: "certificate",
        });
    }
    Ok(certificates)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_bounded(path)?;
    let file = path.display().to_string();
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| match error {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Missing {
            file,
            what: "private key",
        },
        other => TlsError::Pem {
            file,
            reason: other.to_string(),
        },
    })
}

/// A root store holding every certificate of a PEM bundle.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in load_certificates(path)? {
        roots.add(certificate)?;
    }
    Ok(roots)
}

/// A server configuration: this side's chain and key, and, with `client_ca`, required
/// client certificates signed by one of that bundle's CAs (others are refused in the
/// handshake).
pub fn server_config(
    cert_chain: &Path,
    private_key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = load_certificates(cert_chain)?;
    let key = load_private_key(private_key)?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(path)?), provider)
                    .build()
                    .map_err(|error| TlsError::Verifier(error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    Ok(Arc::new(builder.with_single_cert(chain, key)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_without_pem_items_are_refused_with_their_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let error = load_certificates(&path).expect_err("no certificate");
        assert!(matches!(error, TlsError::Missing { .. }), "{error}");
        assert!(error.to_string().contains("empty.pem"));
        assert!(matches!(
            load_private_key(&path),
            Err(TlsError::Missing { .. })
        ));
        std::fs::write(&path, vec![b'x'; MAX_PEM_FILE_BYTES as usize + 1]).expect("write");
        assert!(matches!(
            load_certificates(&path),
            Err(TlsError::TooLarge { .. })
        ));
        assert!(matches!(
            server_config(&dir.path().join("missing"), &path, None),
            Err(TlsError::Io { .. })
        ));
    }
}
