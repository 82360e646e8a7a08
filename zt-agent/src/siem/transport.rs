//! Connections to a syslog receiver: UDP (RFC 5426), TCP and TLS
//! (RFC 5425, octet counting), blocking, on the destination's own thread.
//!
//! - TLS is rustls with the ring provider only, TLS 1.2 and 1.3, the
//!   server verified against the configured CA bundle (its name: the URL's
//!   host or `server_name`, sent as SNI), an optional client certificate.
//!   A TLS destination never sends a byte in plaintext: there is no
//!   fallback.
//! - TCP keepalive (10 s idle, 5 s apart, 3 probes) and `TCP_USER_TIMEOUT`
//!   (30 s) so a dead receiver is noticed; writes time out after 10 s.
//! - [`Conn::acked`]: how many of the bytes written the receiver's TCP has
//!   acknowledged (`SIOCOUTQ`), so the destination knows which records may
//!   have been lost when a connection breaks, and replays only those.
//! - [`Conn::close`] sends TLS `close_notify`, then waits (at most 2 s) for
//!   the receiver to acknowledge everything (a receiver may drop what came
//!   before an abrupt close: rsyslog's `ossl` driver does).
use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket},
    os::fd::AsRawFd,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const USER_TIMEOUT: Duration = Duration::from_secs(30);
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long a new TLS connection waits for a refusal (see [`refused_after_handshake`]).
const POST_HANDSHAKE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("resolving {addr}: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("TLS with {addr}: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    #[error("{what} {path}: {reason}")]
    Config { what: &'static str, path: String, reason: String },
}

/// How to reach a receiver.
#[derive(Clone)]
pub enum Transport {
    Udp,
    Tcp,
    Tls { config: Arc<ClientConfig>, server_name: ServerName<'static> },
}

impl Transport {
    /// A TLS transport: the CA bundle to verify the receiver against, an
    /// optional client certificate chain and key (PEM), and the name the
    /// receiver's certificate must carry.
    pub fn tls(ca: &Path, client: Option<(&Path, &Path)>, server_name: &str) -> Result<Self, TransportError> {
        fn bad(what: &'static str, path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TransportError {
            let path = path.display().to_string();
            move |e| TransportError::Config { what, path: path.clone(), reason: e.to_string() }
        }
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(bad("CA bundle", ca))? {
            roots.add(cert.map_err(bad("CA bundle", ca))?).map_err(|e| TransportError::Config {
                what: "CA bundle",
                path: ca.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        if roots.is_empty() {
            return Err(TransportError::Config {
                what: "CA bundle",
                path: ca.display().to_string(),
                reason: "holds no certificate".into(),
            });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TransportError::Config { what: "TLS", path: String::new(), reason: e.to_string() })?
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(bad("client certificate", cert))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad("client certificate", cert))?;
                let key_der = PrivateKeyDer::from_pem_file(key).map_err(bad("client key", key))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| TransportError::Config {
                    what: "client certificate",
                    path: cert.display().to_string(),
                    reason: e.to_string(),
                })?
            }
        };
        let server_name = ServerName::try_from(server_name.to_string()).map_err(|e| TransportError::Config {
            what: "server name",
            path: server_name.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Transport::Tls { config: Arc::new(config), server_name })
    }
}

/// A TCP stream that counts the bytes written to it (ciphertext, for TLS).
struct Counted {
    tcp: TcpStream,
    written: u64,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.tcp.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

enum Inner {
    Udp(UdpSocket),
    Tcp(Counted),
    Tls(Box<StreamOwned<ClientConnection, Counted>>),
}

pub struct Conn {
    inner: Inner,
    pub peer: SocketAddr,
}

impl Conn {
    pub fn connect(transport: &Transport, addr: &str) -> Result<Self, TransportError> {
        let peer = addr
            .to_socket_addrs()
            .map_err(|source| TransportError::Resolve { addr: addr.into(), source })?
            .next()
            .ok_or_else(|| TransportError::Resolve { addr: addr.into(), source: io::ErrorKind::NotFound.into() })?;
        let connect_err = |source| TransportError::Connect { addr: peer, source };
        let inner = match transport {
            Transport::Udp => {
                let local: SocketAddr = if peer.is_ipv4() { "0.0.0.0:0".parse() } else { "[::]:0".parse() }.expect("literal");
                let s = UdpSocket::bind(local).map_err(connect_err)?;
                // Connected: ICMP port-unreachable comes back as ECONNREFUSED.
                s.connect(peer).map_err(connect_err)?;
                s.set_write_timeout(Some(IO_TIMEOUT)).map_err(connect_err)?;
                Inner::Udp(s)
            }
            Transport::Tcp => Inner::Tcp(Counted { tcp: tcp(peer).map_err(connect_err)?, written: 0 }),
            Transport::Tls { config, server_name } => {
                let mut sock = Counted { tcp: tcp(peer).map_err(connect_err)?, written: 0 };
                let mut conn = ClientConnection::new(config.clone(), server_name.clone())
                    .map_err(|e| TransportError::Tls { addr: peer, reason: e.to_string() })?;
                while conn.is_handshaking() {
                    conn.complete_io(&mut sock).map_err(|e| {
                        let reason = match e.kind() {
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                                format!("no answer to the TLS handshake within {IO_TIMEOUT:?} (is it a TLS receiver?)")
                            }
                            _ => tls_reason(&e),
                        };
                        TransportError::Tls { addr: peer, reason }
                    })?;
                }
                let mut stream = StreamOwned::new(conn, sock);
                refused_after_handshake(&mut stream).map_err(|reason| TransportError::Tls { addr: peer, reason })?;
                Inner::Tls(Box::new(stream))
            }
        };
        Ok(Conn { inner, peer })
    }

    /// Sends messages: one datagram each over UDP; framed and written in
    /// one piece over TCP and TLS.
    pub fn send(&mut self, framed: &[u8], datagrams: &[Vec<u8>]) -> io::Result<()> {
        match &mut self.inner {
            Inner::Udp(s) => {
                for d in datagrams {
                    s.send(d)?;
                }
                Ok(())
            }
            Inner::Tcp(c) => c.write_all(framed).and_then(|()| c.flush()),
            Inner::Tls(t) => t.write_all(framed).and_then(|()| t.flush()),
        }
    }

    pub fn is_datagram(&self) -> bool {
        matches!(self.inner, Inner::Udp(_))
    }

    /// Bytes written to the TCP socket so far (ciphertext for TLS).
    pub fn written(&self) -> u64 {
        match &self.inner {
            Inner::Udp(_) => 0,
            Inner::Tcp(c) => c.written,
            Inner::Tls(t) => t.sock.written,
        }
    }

    /// Of [`Self::written`], how many the receiver's TCP acknowledged.
    pub fn acked(&self) -> Option<u64> {
        let tcp = match &self.inner {
            Inner::Udp(_) => return None,
            Inner::Tcp(c) => &c.tcp,
            Inner::Tls(t) => &t.sock.tcp,
        };
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int: the bytes in the
        // socket's send queue not yet acknowledged by the peer.
        let r = unsafe { libc::ioctl(tcp.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        (r == 0).then(|| self.written().saturating_sub(queued.max(0) as u64))
    }

    /// Whether the receiver is still there: reads what it sent without
    /// blocking (receivers send nothing but TLS alerts, session tickets and
    /// the end of the stream). An error says why it is gone.
    pub fn check(&mut self) -> io::Result<()> {
        let gone = |what: &str| io::Error::new(io::ErrorKind::ConnectionAborted, what.to_string());
        let mut buf = [0u8; 512];
        match &mut self.inner {
            Inner::Udp(s) => {
                s.set_nonblocking(true)?;
                let r = s.recv(&mut buf);
                s.set_nonblocking(false)?;
                match r {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                    Err(e) => Err(e),
                    Ok(_) => Ok(()),
                }
            }
            Inner::Tcp(c) => {
                c.tcp.set_nonblocking(true)?;
                let r = c.tcp.read(&mut buf);
                c.tcp.set_nonblocking(false)?;
                match r {
                    Ok(0) => Err(gone("the receiver closed the connection")),
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Inner::Tls(t) => {
                t.sock.tcp.set_nonblocking(true)?;
                let r = t.read(&mut buf);
                t.sock.tcp.set_nonblocking(false)?;
                match r {
                    Ok(0) => Err(gone("the receiver closed the TLS session")),
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), tls_reason(&e))),
                }
            }
        }
    }

    /// A clean close: TLS `close_notify`, then the write side shut, then a
    /// bounded wait until the receiver acknowledged every byte. Returns
    /// whether it did.
    pub fn close(mut self) -> bool {
        if let Inner::Tls(t) = &mut self.inner {
            t.conn.send_close_notify();
            let _ = t.conn.complete_io(&mut t.sock);
        }
        let tcp = match &self.inner {
            Inner::Udp(_) => return true,
            Inner::Tcp(c) => &c.tcp,
            Inner::Tls(t) => &t.sock.tcp,
        };
        let _ = tcp.shutdown(std::net::Shutdown::Write);
        let deadline = Instant::now() + CLOSE_WAIT;
        loop {
            // The FIN is one more byte in the queue until it is acknowledged.
            if self.acked().is_some_and(|a| a >= self.written()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Under TLS 1.3 the receiver judges our certificate after the handshake
/// ended on our side: a refusal comes as an alert (rsyslog `ossl`) or a
/// silent close (rsyslog `gtls`) right after it. Waiting briefly for either
/// makes a refusing receiver an error here, not a sink that swallows what
/// we send.
fn refused_after_handshake(stream: &mut StreamOwned<ClientConnection, Counted>) -> Result<(), String> {
    let set = |s: &StreamOwned<ClientConnection, Counted>, t| s.sock.tcp.set_read_timeout(Some(t)).map_err(|e| e.to_string());
    set(stream, POST_HANDSHAKE)?;
    let mut b = [0u8; 64];
    let closed = "the receiver closed the connection right after the handshake (did it refuse our client certificate?)";
    let r = match stream.read(&mut b) {
        Ok(0) => Err(closed.into()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(closed.into()),
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Ok(()),
        Err(e) => Err(tls_reason(&e)),
    };
    set(stream, IO_TIMEOUT)?;
    r
}

fn tcp(peer: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&peer, CONNECT_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let sock = socket2::SockRef::from(&s);
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(10)).with_interval(Duration::from_secs(5)).with_retries(3);
    sock.set_tcp_keepalive(&keepalive)?;
    sock.set_tcp_user_timeout(Some(USER_TIMEOUT))?;
    Ok(s)
}

/// The TLS reason inside an I/O error (rustls wraps its own errors).
fn tls_reason(e: &io::Error) -> String {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).map_or_else(|| e.to_string(), |t| t.to_string())
}
