//! TLS on the client port (`--client-tls-cert`, `--client-tls-key`, `--client-tls-ca`)
//! of a real `tally-server`: a rustls client and `redis-cli --tls` are served; a plain
//! client is not; with a client CA, only certificates that CA signed get in; a handshake
//! left unfinished is cut at its deadline and frees its `--max-clients` slot.
//! Certificates are generated per test (rcgen).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tally_net::resp::{parse_reply, write_command, RespLimits, RespValue};

struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn new_ca(name: &str) -> TestCa {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).expect("self-sign the CA");
    TestCa { cert, key }
}

/// A certificate and key signed by `ca`, written as `<name>.pem` and `<name>.key`.
fn issue(ca: &TestCa, dir: &Path, name: &str, client: bool) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .expect("sign the certificate");
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).expect("write certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (cert_path, key_path)
}

fn write_ca(ca: &TestCa, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, ca.cert.pem()).expect("write CA");
    path
}

/// A blocking RESP client over rustls.
struct TlsClient {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buffer: Vec<u8>,
}

impl TlsClient {
    fn connect(port: u16, ca: &Path, identity: Option<(&Path, &Path)>) -> std::io::Result<Self> {
        let roots = tally_net::tls::load_roots(ca).expect("roots");
        let builder = rustls::ClientConfig::builder_with_provider(tally_net::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> =
                    tally_net::tls::load_certificates(cert).expect("client chain");
                let key: PrivateKeyDer<'static> =
                    tally_net::tls::load_private_key(key).expect("client key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client identity")
            }
        };
        let server_name = ServerName::try_from("localhost").expect("name");
        let connection = rustls::ClientConnection::new(Arc::new(config), server_name)
            .map_err(std::io::Error::other)?;
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(TlsClient {
            stream: rustls::StreamOwned::new(connection, tcp),
            buffer: Vec::new(),
        })
    }

    fn pipeline(&mut self, commands: &[Vec<Vec<u8>>]) -> std::io::Result<Vec<RespValue>> {
        let mut out = Vec::new();
        for command in commands {
            let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
            write_command(&mut out, &args);
        }
        self.stream.write_all(&out)?;
        self.stream.flush()?;
        let mut replies = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        while replies.len() < commands.len() {
            let limits = RespLimits {
                max_bulk_bytes: 64 << 20,
                ..RespLimits::default()
            };
            match parse_reply(&self.buffer, &limits) {
                Ok(Some((value, used))) => {
                    self.buffer.drain(..used);
                    replies.push(value);
                    continue;
                }
                Ok(None) => {}
                Err(error) => return Err(std::io::Error::other(format!("{error:?}"))),
            }
            let n_read = self.stream.read(&mut chunk)?;
            if n_read == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buffer.extend_from_slice(&chunk[..n_read]);
        }
        Ok(replies)
    }

    fn call(&mut self, args: &[&str]) -> std::io::Result<RespValue> {
        Ok(self.pipeline(&[cmd(args)])?.remove(0))
    }
}

fn pong() -> RespValue {
    RespValue::Simple(b"PONG".to_vec())
}

/// Waits until the member leads, asking over TLS.
fn wait_for_tls_leader(port: u16, ca: &Path, identity: Option<(&Path, &Path)>) -> TlsClient {
    wait_until("the TLS member leads", || {
        let mut client = TlsClient::connect(port, ca, identity).ok()?;
        let RespValue::Bulk(Some(info)) = client.call(&["INFO", "raft"]).ok()? else {
            return None;
        };
        String::from_utf8_lossy(&info)
            .contains("role:leader")
            .then_some(client)
    })
}

fn redis_cli_installed_with_tls() -> bool {
    Command::new("redis-cli")
        .arg("--help")
        .output()
        .is_ok_and(|output| {
            String::from_utf8_lossy(&output.stderr).contains("--tls")
                || String::from_utf8_lossy(&output.stdout).contains("--tls")
        })
}

fn redis_cli(port: u16, tls_args: &[&str], command: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "localhost", "-p", &port.to_string(), "--tls"])
        .args(tls_args)
        .args(command)
        .output()
        .expect("run redis-cli");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

/// One member serving clients over TLS with `cert` and `key`, plus `extra` flags.
fn tls_member(cert: &Path, key: &Path, extra: &[&str]) -> Cluster {
    let mut args = vec![
        "--client-tls-cert",
        cert.to_str().expect("utf-8"),
        "--client-tls-key",
        key.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    Cluster::start_with_args(1, &args)
}

#[test]
fn tls_clients_are_served_and_plain_ones_are_not() {
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = new_ca("Tally test CA");
    let ca_path = write_ca(&ca, certs.path(), "ca");
    let (cert, key) = issue(&ca, certs.path(), "server", false);
    let cluster = tls_member(&cert, &key, &[]);
    let port = cluster.member(1).client_port;
    let mut client = wait_for_tls_leader(port, &ca_path, None);
    assert_eq!(client.call(&["PING"]).expect("PING"), pong());
    assert_eq!(client.call(&["SET", "k", "v"]).expect("SET"), ok());
    assert_eq!(client.call(&["GET", "k"]).expect("GET"), bulk("v"));

    // Large replies and a deep pipeline: TLS records cross many socket writes.
    let big = vec![b'x'; 3 << 20];
    let replies = client
        .pipeline(&[
            vec![b"SET".to_vec(), b"big".to_vec(), big.clone()],
            cmd(&["GET", "big"]),
        ])
        .expect("big pipeline");
    assert_eq!(replies, vec![ok(), RespValue::Bulk(Some(big))]);
    let many: Vec<Vec<Vec<u8>>> = (0..500)
        .map(|i| cmd(&["SET", &format!("key{i}"), &format!("{i}")]))
        .chain((0..500).map(|i| cmd(&["GET", &format!("key{i}")])))
        .collect();
    let replies = client.pipeline(&many).expect("deep pipeline");
    for (i, reply) in replies[500..].iter().enumerate() {
        assert_eq!(*reply, bulk(&i.to_string()));
    }

    // A plain client gets no RESP reply: the TLS layer refuses its bytes and closes.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    plain.write_all(b"PING\r\n").expect("send");
    let mut received = Vec::new();
    let _ = plain.read_to_end(&mut received);
    assert!(
        !String::from_utf8_lossy(&received).contains("PONG"),
        "{received:?}"
    );

    if real_clients_opted_out() {
        return;
    }
    assert!(
        redis_cli_installed_with_tls(),
        "redis-cli with --tls is required (.ci/run installs redis-tools), or set {OPT_OUT}=1"
    );
    let ca_arg = ca_path.to_str().expect("utf-8");
    assert_eq!(
        redis_cli(port, &["--cacert", ca_arg], &["SET", "cli", "tls"]),
        "OK"
    );
    assert_eq!(
        redis_cli(port, &["--cacert", ca_arg], &["GET", "cli"]),
        "tls"
    );
    assert_eq!(
        redis_py_over_tls(port, &ca_path),
        "PONG True b'tls' b'py' 1"
    );
}

const OPT_OUT: &str = "TALLY_SKIP_REAL_CLIENTS";

/// The same opt-out as `redis_clients.rs`: real clients are required unless this is 1.
fn real_clients_opted_out() -> bool {
    let opted_out = std::env::var_os(OPT_OUT).is_some_and(|v| v == "1");
    if opted_out {
        println!("SKIP redis-cli and redis-py over TLS: {OPT_OUT}=1");
    }
    opted_out
}

/// redis-py with its default settings (RESP3 `HELLO 3`) plus `ssl=True`, verifying the
/// server's certificate against `ca`; prints what it read back.
fn redis_py_over_tls(port: u16, ca: &Path) -> String {
    let script = format!(
        "import redis\n\
         r = redis.Redis(host='localhost', port={port}, ssl=True, ssl_ca_certs={ca:?})\n\
         print('PONG' if r.ping() else 'no', r.set('py', 'py'), r.get('cli'), r.get('py'), \
         r.exists('py'))\n",
        ca = ca.to_str().expect("utf-8"),
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 is required (.ci/run installs it with redis-py)");
    assert!(
        output.status.success(),
        "redis-py over TLS failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn with_a_client_ca_only_certificates_it_signed_are_accepted() {
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = new_ca("Tally test CA");
    let other_ca = new_ca("Someone else's CA");
    let ca_path = write_ca(&ca, certs.path(), "ca");
    let (cert, key) = issue(&ca, certs.path(), "server", false);
    let (client_cert, client_key) = issue(&ca, certs.path(), "client", true);
    let (foreign_cert, foreign_key) = issue(&other_ca, certs.path(), "foreign", true);
    let cluster = tls_member(
        &cert,
        &key,
        &["--client-tls-ca", ca_path.to_str().expect("utf-8")],
    );
    let port = cluster.member(1).client_port;
    let identity = Some((client_cert.as_path(), client_key.as_path()));
    let mut client = wait_for_tls_leader(port, &ca_path, identity);
    assert_eq!(client.call(&["SET", "k", "v"]).expect("SET"), ok());

    for (what, identity) in [
        (
            "a certificate from another CA",
            Some((foreign_cert.as_path(), foreign_key.as_path())),
        ),
        ("no certificate", None),
    ] {
        let result = TlsClient::connect(port, &ca_path, identity)
            .and_then(|mut refused| refused.call(&["GET", "k"]));
        assert!(result.is_err(), "{what} was served: {result:?}");
    }
    assert_eq!(client.call(&["GET", "k"]).expect("GET"), bulk("v"));

    if redis_cli_installed_with_tls() {
        let ca_arg = ca_path.to_str().expect("utf-8");
        let with_cert = [
            "--cacert",
            ca_arg,
            "--cert",
            client_cert.to_str().expect("utf-8"),
            "--key",
            client_key.to_str().expect("utf-8"),
        ];
        assert_eq!(redis_cli(port, &with_cert, &["GET", "k"]), "v");
        let foreign = [
            "--cacert",
            ca_arg,
            "--cert",
            foreign_cert.to_str().expect("utf-8"),
            "--key",
            foreign_key.to_str().expect("utf-8"),
        ];
        assert_ne!(redis_cli(port, &foreign, &["GET", "k"]), "v");
    }
}

#[test]
fn a_client_that_never_finishes_its_tls_handshake_is_cut_and_frees_its_slot() {
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = new_ca("Tally test CA");
    let ca_path = write_ca(&ca, certs.path(), "ca");
    let (cert, key) = issue(&ca, certs.path(), "server", false);
    // Three client slots: one for a served client, two taken by connections stuck in
    // their handshake; without a deadline they would lock everyone else out.
    let cluster = tls_member(&cert, &key, &["--max-clients", "3"]);
    let port = cluster.member(1).client_port;
    let mut served = wait_for_tls_leader(port, &ca_path, None);
    // The start of a ClientHello record (type, version, length 0x80), then silence.
    let mut stalled = wait_until("a slot is free", || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80]).ok()?;
        Some(stream)
    });
    // A trickler: a 16 KiB record announced, then one byte every 200 ms, never done.
    let trickler = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let started = std::time::Instant::now();
        let mut wire = vec![0x16, 0x03, 0x01, 0x40, 0x00];
        while started.elapsed() < DEADLINE {
            if stream.write_all(&wire).is_err() {
                return true;
            }
            wire = vec![0x01];
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    });
    stalled.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut received = Vec::new();
    match stalled.read_to_end(&mut received) {
        Ok(_) => {}
        Err(error) => assert!(
            !matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the server never closed the unfinished handshake: {error}"
        ),
    }
    assert!(
        trickler.join().expect("trickler"),
        "the server never closed the trickled handshake"
    );
    // The slots they held serve a real client again.
    let mut client = wait_until("a TLS client is served again", || {
        let mut client = TlsClient::connect(port, &ca_path, None).ok()?;
        (client.call(&["PING"]).ok()? == pong()).then_some(client)
    });
    assert_eq!(client.call(&["SET", "after", "cut"]).expect("SET"), ok());
    assert_eq!(served.call(&["GET", "after"]).expect("GET"), bulk("cut"));
    let log = std::fs::read_to_string(&cluster.member(1).log).expect("log");
    assert!(log.contains("TLS handshake passed its deadline"), "{log}");
}
