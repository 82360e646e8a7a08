//! Certificates for the remote API's tests and benchmark, made with the
//! openssl CLI ([`certificates`]), and a kept-alive HTTPS client with a
//! client certificate (rustls) for the benchmark ([`Client`]). The tests
//! use curl and `openssl s_client`, clients we did not write.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::Command,
    sync::Arc,
};

use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

/// Runs openssl in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl (apt package openssl)");
    assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

/// `name.key` and `name.pem` signed by `ca`, with the extensions `ext`
/// (`days` < 0: expired already).
fn issue(dir: &Path, name: &str, ca: &str, ext: &str, days: i32) {
    let (key, csr, pem, extfile) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
    let subject = format!("/CN={name}");
    openssl(dir, &[&["req", "-new"][..], &EC, &["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subject]].concat());
    std::fs::write(dir.join(&extfile), ext).unwrap();
    let (ca_pem, ca_key, days) = (format!("{ca}.pem"), format!("{ca}.key"), days.to_string());
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            &days,
            "-extfile",
            &extfile,
            "-out",
            &pem,
        ],
    );
}

/// In `dir`: CAs `ca` and `other-ca`; `server` (127.0.0.1) and the clients
/// `deployer` (spiffe://zt.test/ops/deployer), `viewer`
/// (spiffe://zt.test/ops/viewer), `no-spiffe` (a DNS name only), `expired`
/// (the deployer's ID, expired) and `stranger` (the deployer's ID, issued
/// by `other-ca`).
pub fn certificates(dir: &Path) {
    for ca in ["ca", "other-ca"] {
        let (key, pem, subject) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN={ca}"));
        openssl(dir, &[&["req", "-x509"][..], &EC, &["-nodes", "-keyout", &key, "-out", &pem, "-subj", &subject, "-days", "2"]].concat());
    }
    let client = |spiffe: &str| format!("subjectAltName=URI:{spiffe}\nextendedKeyUsage=clientAuth\n");
    issue(dir, "server", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n", 2);
    issue(dir, "deployer", "ca", &client("spiffe://zt.test/ops/deployer"), 2);
    issue(dir, "viewer", "ca", &client("spiffe://zt.test/ops/viewer"), 2);
    issue(dir, "no-spiffe", "ca", "subjectAltName=DNS:client.test\nextendedKeyUsage=clientAuth\n", 2);
    issue(dir, "expired", "ca", &client("spiffe://zt.test/ops/deployer"), -1);
    issue(dir, "stranger", "other-ca", &client("spiffe://zt.test/ops/deployer"), 2);
}

/// The agent config's `api` section for [`certificates`] in `dir`: the
/// `ops/*` IDs may read, the deployer may also push and stream.
pub fn api_config(dir: &Path) -> String {
    format!(
        "api:\n  listen: 127.0.0.1:0\n  ca: {d}/ca.pem\n  cert: {d}/server.pem\n  key: {d}/server.key\n  allow:\n    \
         - spiffe: spiffe://zt.test/ops/*\n      may: [read]\n    - spiffe: spiffe://zt.test/ops/deployer\n      may: [push, stream]\n",
        d = dir.display()
    )
}

/// One kept-alive HTTPS connection as a client of [`certificates`].
pub struct Client {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl Client {
    /// Connects to `addr` (`IP:PORT`) as `name` and finishes the handshake.
    pub fn connect(dir: &Path, name: &str, addr: &str) -> anyhow::Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(dir.join("ca.pem"))?)?;
        let chain = vec![CertificateDer::from_pem_file(dir.join(format!("{name}.pem")))?];
        let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key")))?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        let ip = ServerName::try_from(addr.rsplit_once(':').context("IP:PORT")?.0.to_string())?;
        let conn = rustls::ClientConnection::new(Arc::new(config), ip)?;
        let tcp = TcpStream::connect(addr)?;
        tcp.set_nodelay(true)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Client { tls })
    }

    /// One request; the status and the body.
    pub fn call(&mut self, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
        // One write: one TLS record, not one per formatted piece.
        let request = format!("{method} {path} HTTP/1.1\r\nhost: zt-agent\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        self.tls.write_all(request.as_bytes())?;
        self.tls.flush()?;
        let mut r = BufReader::new(&mut self.tls);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status = line.split_whitespace().nth(1).context("status line")?.parse()?;
        let mut length = 0;
        loop {
            line.clear();
            r.read_line(&mut line)?;
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse()?;
            }
        }
        let mut text = vec![0; length];
        r.read_exact(&mut text)?;
        Ok((status, String::from_utf8(text)?))
    }
}
