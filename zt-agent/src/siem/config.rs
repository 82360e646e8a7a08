//! A SIEM destination's settings, from a URL:
//! `udp|tcp|tls://HOST:PORT[?option=value&...]`.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `name` | `scheme-host-port` | names the destination in `status` and its cursor file |
//! | `format` | `ocsf` | body: `ocsf` (OCSF 1.8 JSON), `cef`, or `json` (the event as the JSON-lines stream has it) |
//! | `severity` | `info` | least severe record sent (`debug` ... `emergency`) |
//! | `kinds` | all | comma-separated record kinds sent (`connect,guard,policy,...`) |
//! | `telemetry` | `false` | also send telemetry (exec, exit, allowed connects): best effort, every drop counted |
//! | `facility` | `auth` | syslog facility |
//! | `max_message` | 2048 (udp), 8192 (tcp, tls) | longest message in bytes; a longer body is cut and marked `truncated` |
//! | `rate` | 10000 | UDP only: datagrams per second at most (UDP has no flow control: a backlog sent at once overflows the receiver) |
//! | `ca` | — | TLS: the CA bundle (PEM) the receiver is verified against (required) |
//! | `cert`, `key` | — | TLS: client certificate chain and key (PEM), for mutual TLS |
//! | `server_name` | the host | TLS: the name the receiver's certificate must carry (and SNI) |
//! | `sd_id` | `ztagent@32473` | SD-ID of the element that carries origin, index and leaf hash (32473 is the documentation enterprise number: set your own) |
use std::{path::PathBuf, str::FromStr};

use super::rfc5424::{Facility, Severity};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Udp,
    Tcp,
    Tls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ocsf,
    Cef,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub name: String,
    pub url: String,
    pub scheme: Scheme,
    /// `host:port`.
    pub address: String,
    pub format: Format,
    pub min_severity: Severity,
    pub kinds: Option<Vec<String>>,
    pub telemetry: bool,
    pub facility: Facility,
    pub max_message: usize,
    /// UDP datagrams per second at most.
    pub rate: u32,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub server_name: String,
    pub sd_id: String,
}

const OPTIONS: &[&str] =
    &["name", "format", "severity", "kinds", "telemetry", "facility", "max_message", "ca", "cert", "key", "server_name", "sd_id"];

impl FromStr for Destination {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|e| format!("{text:?}: {e} (expected udp://, tcp:// or tls://HOST:PORT)"))?;
        let scheme = match url.scheme() {
            "udp" => Scheme::Udp,
            "tcp" => Scheme::Tcp,
            "tls" => Scheme::Tls,
            s => return Err(format!("{text:?}: unknown scheme {s:?} (udp, tcp or tls)")),
        };
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| format!("{text:?}: no host"))?;
        let port = url.port().ok_or_else(|| format!("{text:?}: no port"))?;
        if !url.path().is_empty() && url.path() != "/" {
            return Err(format!("{text:?}: a syslog destination has no path"));
        }
        let host_bare = host.trim_start_matches('[').trim_end_matches(']');
        let mut d = Destination {
            name: format!("{}-{}-{port}", url.scheme(), host_bare.replace([':', '.'], "_")),
            url: text.to_string(),
            scheme,
            address: format!("{host}:{port}"),
            format: Format::Ocsf,
            min_severity: Severity::Info,
            kinds: None,
            telemetry: false,
            facility: Facility::AUTH,
            max_message: if scheme == Scheme::Udp { 2048 } else { 8192 },
            rate: 10_000,
            ca: None,
            client_cert: None,
            server_name: host_bare.to_string(),
            sd_id: "ztagent@32473".into(),
        };
        let (mut cert, mut key) = (None, None);
        for (k, v) in url.query_pairs() {
            let bad = |why: &str| format!("{text:?}: {k}={v:?}: {why}");
            match k.as_ref() {
                "name" => {
                    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                        return Err(bad("letters, digits, - and _ only"));
                    }
                    d.name = v.to_string();
                }
                "format" => {
                    d.format = match v.as_ref() {
                        "ocsf" => Format::Ocsf,
                        "cef" => Format::Cef,
                        "json" => Format::Json,
                        _ => return Err(bad("ocsf, cef or json")),
                    }
                }
                "severity" => d.min_severity = v.parse().map_err(|e: String| bad(&e))?,
                "kinds" => d.kinds = Some(v.split(',').filter(|k| !k.is_empty()).map(str::to_string).collect()),
                "telemetry" => d.telemetry = v.parse().map_err(|_| bad("true or false"))?,
                "facility" => d.facility = v.parse().map_err(|e: String| bad(&e))?,
                "max_message" => {
                    d.max_message =
                        v.parse().ok().filter(|n| (480..=1 << 20).contains(n)).ok_or_else(|| bad("a size from 480 to 1048576 bytes"))?
                }
                "rate" => d.rate = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| bad("datagrams per second, at least 1"))?,
                "ca" => d.ca = Some(PathBuf::from(v.as_ref())),
                "cert" => cert = Some(PathBuf::from(v.as_ref())),
                "key" => key = Some(PathBuf::from(v.as_ref())),
                "server_name" => d.server_name = v.to_string(),
                "sd_id" => d.sd_id = v.to_string(),
                _ => return Err(format!("{text:?}: unknown option {k:?} (known: {})", OPTIONS.join(", "))),
            }
        }
        d.client_cert = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(format!("{text:?}: cert and key go together")),
        };
        if scheme == Scheme::Tls && d.ca.is_none() {
            return Err(format!("{text:?}: tls:// needs ca=FILE, the CA bundle the receiver's certificate is verified against"));
        }
        if scheme != Scheme::Tls && (d.ca.is_some() || d.client_cert.is_some()) {
            return Err(format!("{text:?}: ca, cert and key are for tls:// only (this would send in plaintext)"));
        }
        Ok(d)
    }
}

impl Destination {
    /// Whether a record of this kind and severity goes to this destination.
    pub fn wants(&self, kind: &str, severity: Severity) -> bool {
        severity <= self.min_severity && self.kinds.as_ref().is_none_or(|k| k.iter().any(|k| k == kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options() {
        let d: Destination =
            "tls://siem.example:6514?ca=/etc/ca.pem&cert=/c.pem&key=/k.pem&format=cef&severity=notice&kinds=connect,guard&name=prod"
                .parse()
                .unwrap();
        assert_eq!((d.scheme, d.address.as_str(), d.format, d.name.as_str()), (Scheme::Tls, "siem.example:6514", Format::Cef, "prod"));
        assert_eq!(d.server_name, "siem.example");
        assert_eq!(d.client_cert, Some(("/c.pem".into(), "/k.pem".into())));
        assert!(d.wants("guard", Severity::Warning));
        assert!(!d.wants("guard", Severity::Info), "below the minimum severity");
        assert!(!d.wants("policy", Severity::Error), "not a listed kind");
        let u: Destination = "udp://127.0.0.1:514".parse().unwrap();
        assert_eq!((u.max_message, u.name.as_str(), u.format), (2048, "udp-127_0_0_1-514", Format::Ocsf));
        let v6: Destination = "tcp://[::1]:601".parse().unwrap();
        assert_eq!((v6.address.as_str(), v6.server_name.as_str()), ("[::1]:601", "::1"));
    }

    #[test]
    fn refuses_what_would_go_wrong() {
        let err = |s: &str| s.parse::<Destination>().unwrap_err();
        assert!(err("tls://h:6514").contains("needs ca=FILE"), "{}", err("tls://h:6514"));
        assert!(err("tcp://h:601?ca=/x").contains("plaintext"));
        assert!(err("http://h:1").contains("unknown scheme"));
        assert!(err("tcp://h").contains("no port"));
        assert!(err("tcp://h:1?colour=red").contains("unknown option \"colour\""));
        assert!(err("tcp://h:1?severity=loud").contains("unknown severity"));
        assert!(err("tls://h:1?ca=/a&cert=/c").contains("go together"));
        assert!(err("udp://h:1?max_message=10").contains("480"));
    }
}
