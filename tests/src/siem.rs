//! Real syslog receivers for the SIEM tests: test certificates made with
//! the openssl CLI, and rsyslogd started on 127.0.0.1 with UDP, TCP and
//! TLS inputs (both its `gtls` and `ossl` drivers), each writing the raw
//! messages it received (framing removed, bytes as sent) to its own file.
use std::{
    net::{TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A P-256 CA, a server certificate for `localhost` and 127.0.0.1, and a
/// client certificate (`clientAuth`), as PEM files in `dir`.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn server(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("server.pem"), self.dir.join("server.key"))
    }
    pub fn client(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("client.pem"), self.dir.join("client.key"))
    }
    /// A `tls://` destination with this CA and the client certificate;
    /// `query` holds the other options.
    pub fn tls_url(&self, host: &str, port: u16, query: &str) -> String {
        let (ca, (cert, key)) = (self.ca(), self.client());
        let sep = if query.is_empty() { "" } else { "&" };
        format!("tls://{host}:{port}?{query}{sep}ca={}&cert={}&key={}", ca.display(), cert.display(), key.display())
    }
    /// A server certificate for `localhost` signed by the CA that expired yesterday.
    pub fn expired_server(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("expired.pem"), self.dir.join("expired.key"))
    }
    /// Another CA, which signed none of these.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let c = Certs { dir: dir.to_path_buf() };
        let ossl = |args: &[&str]| -> anyhow::Result<()> {
            let o = Command::new("openssl").args(args).current_dir(dir).output().context("running openssl")?;
            if !o.status.success() {
                bail!("openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
            }
            Ok(())
        };
        let key = |name: &str| ossl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name]);
        key("ca.key")?;
        ossl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=zt-test-ca",
            "-days",
            "2",
            "-out",
            "ca.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
        key("other-ca.key")?;
        ossl(&["req", "-x509", "-new", "-key", "other-ca.key", "-subj", "/CN=zt-other-ca", "-days", "2", "-out", "other-ca.pem"])?;
        let server = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n";
        let client = "subjectAltName=DNS:zt-agent\nextendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n";
        // (file name, CN, extensions, validity in days: -1 expired yesterday)
        for (name, cn, ext, days) in
            [("server", "localhost", server, "2"), ("expired", "localhost", server, "-1"), ("client", "zt-agent", client, "2")]
        {
            key(&format!("{name}.key"))?;
            std::fs::write(dir.join(format!("{name}.ext")), ext)?;
            let (csr, pem) = (format!("{name}.csr"), format!("{name}.pem"));
            ossl(&["req", "-new", "-key", &format!("{name}.key"), "-subj", &format!("/CN={cn}"), "-out", &csr])?;
            let ext_file = format!("{name}.ext");
            let signed = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", days, "-extfile", &ext_file, "-out", &pem];
            ossl(&[&["x509", "-req", "-in", csr.as_str()][..], &signed[..]].concat())?;
        }
        Ok(c)
    }
}

/// The lines of a receiver's output file so far (none if it has none yet).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).lines().map(str::to_string).collect()).unwrap_or_default()
}

/// Waits (at most 20 s) until every port of 127.0.0.1 accepts; the
/// receiver's stderr goes into the error.
fn wait_listening(what: &str, ports: &[u16], stderr: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for port in ports {
        while TcpStream::connect(("127.0.0.1", *port)).is_err() {
            if Instant::now() > deadline {
                bail!("{what} did not listen on {port}: {}", std::fs::read_to_string(stderr).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// A free port on 127.0.0.1 (TCP and UDP), released for the receiver.
pub fn free_port() -> u16 {
    loop {
        let t = TcpListener::bind("127.0.0.1:0").expect("binding a TCP port");
        let port = t.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An rsyslogd of our own: `udp`, `tcp`, `gtls` and `ossl` inputs, each
/// writing what it receives to `DIR/<input>.log`, one message per line.
pub struct Rsyslog {
    pub dir: PathBuf,
    /// Each line starts with the time rsyslog received the message
    /// (`%timegenerated%`, RFC 3339 with microseconds) and a space.
    pub stamped: bool,
    pub udp: u16,
    pub tcp: u16,
    pub gtls: u16,
    pub ossl: u16,
    child: Option<Child>,
}

impl Rsyslog {
    pub fn available() -> bool {
        Command::new("rsyslogd").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    }

    pub fn start(dir: &Path, certs: &Certs) -> anyhow::Result<Self> {
        Self::start_with(dir, certs, false)
    }

    /// [`Self::start`], with lines [`Self::stamped`] or not.
    pub fn start_with(dir: &Path, certs: &Certs, stamped: bool) -> anyhow::Result<Self> {
        let (udp, tcp, gtls, ossl) = (free_port(), free_port(), free_port(), free_port());
        let mut r = Rsyslog { dir: dir.to_path_buf(), stamped, udp, tcp, gtls, ossl, child: None };
        r.restart(certs)?;
        Ok(r)
    }

    /// The messages received on `input` so far.
    pub fn received(&self, input: &str) -> Vec<String> {
        lines(&self.dir.join(format!("{input}.log")))
    }

    /// Stops the receiver (SIGTERM, waited for).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports (after [`Self::stop`]).
    pub fn restart(&mut self, certs: &Certs) -> anyhow::Result<()> {
        let d = self.dir.display();
        let (ca, (cert, key)) = (certs.ca(), certs.server());
        let conf = format!(
            r#"global(workDirectory="{d}" maxMessageSize="64k" parser.escapeControlCharactersOnReceive="off"
       defaultNetstreamDriverCAFile="{ca}" defaultNetstreamDriverCertFile="{cert}" defaultNetstreamDriverKeyFile="{key}")
module(load="imudp")
module(load="imptcp")
module(load="imtcp" maxSessions="100")
template(name="raw" type="string" string="{stamp}%rawmsg%\n")
ruleset(name="udp") {{ action(type="omfile" file="{d}/udp.log" template="raw") }}
ruleset(name="tcp") {{ action(type="omfile" file="{d}/tcp.log" template="raw") }}
ruleset(name="gtls") {{ action(type="omfile" file="{d}/gtls.log" template="raw") }}
ruleset(name="ossl") {{ action(type="omfile" file="{d}/ossl.log" template="raw") }}
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="udp")
input(type="imptcp" address="127.0.0.1" port="{tcp}" ruleset="tcp" supportOctetCountedFraming="on")
input(type="imtcp" address="127.0.0.1" port="{gtls}" ruleset="gtls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
input(type="imtcp" address="127.0.0.1" port="{ossl}" ruleset="ossl"
      streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
"#,
            ca = ca.display(),
            cert = cert.display(),
            key = key.display(),
            udp = self.udp,
            tcp = self.tcp,
            gtls = self.gtls,
            ossl = self.ossl,
            stamp = if self.stamped { "%timegenerated:::date-rfc3339% " } else { "" },
        );
        let conf_path = self.dir.join("rsyslog.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(self.dir.join("rsyslog.pid"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("rsyslogd.stderr"))?)
            .spawn()
            .context("starting rsyslogd")?;
        self.child = Some(child);
        // Listening once every TCP input accepts (the UDP input opens with them).
        wait_listening("rsyslogd", &[self.tcp, self.gtls, self.ossl], &self.dir.join("rsyslogd.stderr"))?;
        Ok(())
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A syslog-ng 3.38 of our own (unpacked under `target/syslog-ng` by
/// `cargo xtask setup`: it conflicts with the rsyslog package): `tcp` and
/// mutual-`tls` syslog sources (octet counting), each writing the raw
/// messages to `DIR/ng-<source>.log`.
pub struct SyslogNg {
    pub dir: PathBuf,
    pub tcp: u16,
    pub tls: u16,
    child: Child,
}

impl SyslogNg {
    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/syslog-ng")
    }

    pub fn available() -> bool {
        Self::root().join("usr/sbin/syslog-ng").exists()
    }

    pub fn start(dir: &Path, certs: &Certs) -> anyhow::Result<Self> {
        let (tcp, tls) = (free_port(), free_port());
        let d = dir.display();
        let (ca, (cert, key)) = (certs.ca(), certs.server());
        let conf = format!(
            r#"@version: 3.38
options {{ keep-hostname(yes); log-msg-size(65536); stats-freq(0); }};
source s_tcp {{ syslog(ip("127.0.0.1") port({tcp}) transport("tcp") flags(store-raw-message)); }};
source s_tls {{ syslog(ip("127.0.0.1") port({tls}) transport("tls") flags(store-raw-message)
  tls(key-file("{key}") cert-file("{cert}") ca-file("{ca}") peer-verify(required-trusted))); }};
destination d_tcp {{ file("{d}/ng-tcp.log" template("${{RAWMSG}}\n")); }};
destination d_tls {{ file("{d}/ng-tls.log" template("${{RAWMSG}}\n")); }};
log {{ source(s_tcp); destination(d_tcp); }};
log {{ source(s_tls); destination(d_tls); }};
"#,
            key = key.display(),
            cert = cert.display(),
            ca = ca.display(),
        );
        let conf_path = dir.join("syslog-ng.conf");
        std::fs::write(&conf_path, conf)?;
        let root = Self::root();
        let libs = ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib/syslog-ng"]
            .iter()
            .map(|l| root.join(l).display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let child = Command::new(root.join("usr/sbin/syslog-ng"))
            .args(["-F", "--no-caps"])
            .arg("-f")
            .arg(&conf_path)
            .arg("-R")
            .arg(dir.join("syslog-ng.persist"))
            .arg("-c")
            .arg(dir.join("syslog-ng.ctl"))
            .arg("-p")
            .arg(dir.join("syslog-ng.pid"))
            .arg("--module-path")
            .arg(root.join("usr/lib/syslog-ng/3.38"))
            .env("LD_LIBRARY_PATH", libs)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("syslog-ng.stderr"))?)
            .spawn()
            .context("starting syslog-ng")?;
        let ng = SyslogNg { dir: dir.to_path_buf(), tcp, tls, child };
        wait_listening("syslog-ng", &[tcp, tls], &dir.join("syslog-ng.stderr"))?;
        Ok(ng)
    }

    /// The messages received on `source` (`tcp` or `tls`) so far.
    pub fn received(&self, source: &str) -> Vec<String> {
        lines(&self.dir.join(format!("ng-{source}.log")))
    }
}

impl Drop for SyslogNg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One received RFC 5424 message: what the tests look at.
#[derive(Debug, Clone)]
pub struct Received {
    pub pri: u32,
    pub msgid: String,
    /// SD parameters of the agent's element, unescaped.
    pub sd: Vec<(String, String)>,
    /// The body after the BOM.
    pub body: String,
}

impl Received {
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix('<')?;
        let (pri, rest) = rest.split_once('>')?;
        let mut fields = rest.splitn(7, ' ');
        let (_version, _time, _host, _app, _procid) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        let msgid = fields.next()?.to_string();
        let rest = fields.next()?;
        let rest = rest.strip_prefix('[')?;
        let (_id, mut rest) = rest.split_once(' ')?;
        let mut sd = Vec::new();
        loop {
            let (name, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => value.push(chars.next()?.1),
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            sd.push((name.to_string(), value));
            rest = &after[end + 1..];
            if let Some(r) = rest.strip_prefix(' ') {
                rest = r;
            } else {
                rest = rest.strip_prefix(']')?;
                break;
            }
        }
        let body = rest.strip_prefix(" \u{feff}").unwrap_or(rest).to_string();
        Some(Received { pri: pri.parse().ok()?, msgid, sd, body })
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.sd.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn index(&self) -> Option<u64> {
        self.param("index")?.parse().ok()
    }
}

/// `openssl s_server` serving `cert` on a port of 127.0.0.1, writing what it
/// receives (after TLS) to `out`: a TLS receiver with a certificate
/// rsyslog would not start with.
pub struct TlsServer {
    pub port: u16,
    child: Child,
}

impl TlsServer {
    pub fn start(cert: &Path, key: &Path, out: &Path) -> anyhow::Result<Self> {
        let port = free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-accept", &port.to_string(), "-cert"])
            .arg(cert)
            .arg("-key")
            .arg(key)
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(out)?)
            .stderr(std::fs::File::create(out.with_extension("stderr"))?)
            .spawn()
            .context("starting openssl s_server")?;
        let server = TlsServer { port, child };
        wait_listening("openssl s_server", &[port], &out.with_extension("stderr"))?;
        Ok(server)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
