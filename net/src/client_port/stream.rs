//! The stream seam of a client connection: plain TCP or TLS, one trait.
//!
//! Why a seam and not a second connection type: everything above the bytes (parsing,
//! submission, reply order, limits, AUTH) is the same with or without TLS, so TLS is a
//! layer under [`Connection`](super::connection::Connection)'s reads and writes. The
//! enum dispatches statically; the plain path is one `match` away from the socket.
//!
//! TLS on a non-blocking socket: rustls' `ServerConnection` is sans-IO. A read feeds it
//! socket bytes (`read_tls`), lets it decrypt (`process_new_packets`) and hands out
//! plaintext; whatever it wants to send (handshake messages, alerts, records) goes out
//! with `write_tls` until the socket would block. The rest stays queued in rustls and
//! is sent by [`ClientStream::flush_pending`] on the next writable event: the I/O
//! thread calls it on every drive, so edge-triggered readiness never strands bytes.
//!
//! A TLS handshake has a deadline ([`TLS_HANDSHAKE_TIMEOUT`], from accept): a client that
//! opens a connection and never finishes (or trickles) it would otherwise hold a
//! `maxclients` slot and rustls' buffers forever; the I/O thread's tick closes it.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

/// Longest a client may take from connecting to finishing the TLS handshake (the peer
/// port's handshake deadline is the same 5 s).
pub(super) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a connection reads from and writes to. `read` and `write` never block; they
/// return `WouldBlock` when the socket (or the TLS layer) cannot progress now.
pub(super) trait ClientStream: Read + Write {
    /// Sends bytes queued below the application (TLS records); never blocks.
    fn flush_pending(&mut self) -> io::Result<()>;
    /// The socket, for registration with the poll.
    fn socket(&mut self) -> &mut TcpStream;
    /// Best-effort orderly close (TLS: close_notify), then shuts the socket down.
    fn close(&mut self);
    /// Whether a handshake is still unfinished at `now`, past its deadline (plain TCP:
    /// never).
    fn handshake_overdue(&self, _now: Instant) -> bool {
        false
    }
}

impl ClientStream for TcpStream {
    fn flush_pending(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn socket(&mut self) -> &mut TcpStream {
        self
    }

    fn close(&mut self) {
        let _ = self.shutdown(Shutdown::Both);
    }
}

/// A TLS server session over a non-blocking socket.
pub(super) struct TlsStream {
    tcp: TcpStream,
    tls: rustls::ServerConnection,
    /// The socket reached EOF (no more TLS bytes will come).
    tcp_eof: bool,
    /// When the handshake must be done by ([`TLS_HANDSHAKE_TIMEOUT`] after accept).
    handshake_deadline: Instant,
}

impl TlsStream {
    pub(super) fn new(
        tcp: TcpStream,
        config: &Arc<rustls::ServerConfig>,
    ) -> Result<TlsStream, rustls::Error> {
        Ok(TlsStream {
            tcp,
            tls: rustls::ServerConnection::new(Arc::clone(config))?,
            tcp_eof: false,
            handshake_deadline: Instant::now() + TLS_HANDSHAKE_TIMEOUT,
        })
    }

    /// Writes what rustls has queued until done or the socket would block.
    fn write_queued(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n_read) => return Ok(n_read),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed the socket without close_notify: an EOF all the same.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(error) => return Err(error),
            }
            if self.tcp_eof {
                return Ok(0);
            }
            match self.tls.read_tls(&mut self.tcp) {
                Ok(0) => self.tcp_eof = true,
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.write_queued()?;
                    return Err(error);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
            if let Err(error) = self.tls.process_new_packets() {
                // Tell the client why (the alert), then fail the connection.
                let _ = self.write_queued();
                return Err(io::Error::new(io::ErrorKind::InvalidData, error));
            }
            self.write_queued()?;
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_queued()?;
        if self.tls.wants_write() {
            // The socket is full: back-pressure, resumed by the writable event.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n_buffered = self.tls.writer().write(buf)?;
        self.write_queued()?;
        if n_buffered == 0 && !buf.is_empty() {
            // rustls' buffer is full (e.g. the handshake is not done yet).
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n_buffered)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_queued()
    }
}

impl ClientStream for TlsStream {
    fn flush_pending(&mut self) -> io::Result<()> {
        self.write_queued()
    }

    fn socket(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    fn close(&mut self) {
        self.tls.send_close_notify();
        let _ = self.write_queued();
        let _ = self.tcp.shutdown(Shutdown::Both);
    }

    fn handshake_overdue(&self, now: Instant) -> bool {
        self.tls.is_handshaking() && now > self.handshake_deadline
    }
}

/// A connection's stream: plain or TLS (static dispatch).
pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(stream) => stream.read(buf),
            Stream::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(stream) => stream.write(buf),
            Stream::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(stream) => stream.flush(),
            Stream::Tls(stream) => stream.flush(),
        }
    }
}

impl ClientStream for Stream {
    fn flush_pending(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(stream) => stream.flush_pending(),
        }
    }

    fn socket(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(stream) => stream,
            Stream::Tls(stream) => stream.socket(),
        }
    }

    fn close(&mut self) {
        match self {
            Stream::Plain(stream) => stream.close(),
            Stream::Tls(stream) => stream.close(),
        }
    }

    fn handshake_overdue(&self, now: Instant) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(stream) => stream.handshake_overdue(now),
        }
    }
}
