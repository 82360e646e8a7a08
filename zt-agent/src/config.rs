//! The agent's config file (`zt-agent run --config FILE`, default
//! [`DEFAULT_PATH`] when it exists): every `run` option under its flag's
//! name in camelCase (`--event-rate` is `eventRate`), YAML. Unknown keys
//! and bad values are errors at `file:line:column`; the command line
//! overrides the file (see `cli/run.rs`), and `status` shows where each
//! value came from ([`Setting`]).
//!
//! ```yaml
//! policy: [/etc/zt-agent/policies]
//! eventRate: 20000
//! auditDir: /var/lib/zt-agent/audit
//! syslog:
//!   - tls://siem.example:6514?ca=/etc/zt-agent/siem-ca.pem&cert=/etc/zt-agent/client.pem&key=/etc/zt-agent/client.key
//! api:                      # the remote API (config only; see crate::api)
//!   listen: 0.0.0.0:9443
//!   ca: /etc/zt-agent/api-client-ca.pem
//!   cert: /etc/zt-agent/api.pem
//!   key: /etc/zt-agent/api.key
//!   allow:
//!     - spiffe: spiffe://example.org/ops/*
//!       may: [read, stream]
//!     - spiffe: spiffe://example.org/ops/deployer
//!       may: [push]
//! ```
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};

use crate::{bpf::loader::ArgvCapture, pipeline::output::Show, siem::Destination};

pub const DEFAULT_PATH: &str = "/etc/zt-agent/config.yaml";

/// `--syscall-guards`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyscallGuards {
    On,
    Off,
}

/// `--log-format`: how the daemon's own log lines (stderr) look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields.message`, `target`.
    Json,
}

/// `--metrics-addr`: an IP address and port, or `none`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<std::net::SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "none" {
            return Ok(Listen(None));
        }
        s.parse()
            .map(|a| Listen(Some(a)))
            .map_err(|_| format!("{s:?} is not HOST:PORT (an IP address and a port, e.g. 127.0.0.1:9464) or none"))
    }
}

impl std::fmt::Debug for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("none"),
        }
    }
}

/// `--kube-api`: where pod metadata comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum KubeApi {
    /// The in-cluster API server when the agent runs in a pod, else none.
    Auto,
    Off,
    /// `https://HOST:PORT` (or `http://` for a local test server).
    Url(url::Url),
}

impl std::str::FromStr for KubeApi {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(KubeApi::Auto),
            "off" => Ok(KubeApi::Off),
            _ => {
                let u = url::Url::parse(s).map_err(|e| format!("{s:?}: {e} (auto, off, or https://HOST:PORT)"))?;
                if !matches!(u.scheme(), "https" | "http") || u.host_str().is_none() {
                    return Err(format!("{s:?}: expected auto, off, or https://HOST:PORT"));
                }
                Ok(KubeApi::Url(u))
            }
        }
    }
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeApi::Auto => f.write_str("auto"),
            KubeApi::Off => f.write_str("off"),
            KubeApi::Url(u) => write!(f, "{u}"),
        }
    }
}

/// The file's shape. Each key is a `run` flag; see `zt-agent run --help`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigFile {
    pub policy: Option<Spanned<Vec<PathBuf>>>,
    pub state_dir: Option<Spanned<PathBuf>>,
    pub node_labels: Option<Spanned<BTreeMap<String, String>>>,
    pub events: Option<Spanned<PathBuf>>,
    pub show: Option<Spanned<Show>>,
    pub observe_all_connects: Option<Spanned<bool>>,
    pub ringbuf_size: Option<Spanned<u32>>,
    pub security_ringbuf_size: Option<Spanned<u32>>,
    pub event_rate: Option<Spanned<u32>>,
    pub poll_ms: Option<Spanned<u64>>,
    pub verify_every: Option<Spanned<u64>>,
    pub socket: Option<Spanned<PathBuf>>,
    pub demo: Option<Spanned<bool>>,
    pub argv_capture: Option<Spanned<ArgvCapture>>,
    pub syscall_guards: Option<Spanned<SyscallGuards>>,
    pub pin_dir: Option<Spanned<PathBuf>>,
    pub no_pin: Option<Spanned<bool>>,
    pub audit_dir: Option<Spanned<PathBuf>>,
    pub audit_key: Option<Spanned<PathBuf>>,
    pub audit_origin: Option<Spanned<String>>,
    pub audit_segment_bytes: Option<Spanned<u64>>,
    pub audit_retain_bytes: Option<Spanned<u64>>,
    /// SIEM destination URLs (as `--syslog`).
    pub syslog: Option<Vec<Spanned<String>>>,
    /// `HOST:PORT` or `none` (as `--metrics-addr`).
    pub metrics_addr: Option<Spanned<String>>,
    pub bpf_stats: Option<Spanned<bool>>,
    pub log_format: Option<Spanned<LogFormat>>,
    /// `auto`, `off` or a URL (as `--kube-api`).
    pub kube_api: Option<Spanned<String>>,
    pub kube_token: Option<Spanned<PathBuf>>,
    pub kube_ca: Option<Spanned<PathBuf>>,
    pub kube_node: Option<Spanned<String>>,
    /// The remote API (no flag: its grants are structured).
    pub api: Option<Spanned<ApiFile>>,
}

/// The `api` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiFile {
    /// `IP:PORT`.
    pub listen: Spanned<String>,
    /// The CA bundle client certificates must chain to (PEM).
    pub ca: PathBuf,
    /// The server's certificate chain and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Who may do what; no grant, no access.
    pub allow: Spanned<Vec<GrantFile>>,
}

/// One grant: a SPIFFE ID pattern and what it may do.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantFile {
    pub spiffe: Spanned<String>,
    pub may: Spanned<Vec<crate::api::authz::Permission>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// One line per problem, each `file:line:column: message`.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// A config file, read and checked.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub file: ConfigFile,
    /// The `syslog` URLs, parsed.
    pub syslog: Vec<Destination>,
    /// `metricsAddr`, parsed.
    pub metrics_addr: Option<Listen>,
    /// The `api` section, checked.
    pub api: Option<crate::api::Options>,
}

impl Loaded {
    /// `file:line:column` of a value in the file.
    pub fn at(&self, loc: &Location) -> String {
        format!("{}:{}:{}", self.path.display(), loc.line(), loc.column())
    }
}

/// Reads and checks `path`: syntax, unknown keys and value types (serde),
/// then the values serde cannot judge (ring sizes, SIEM URLs); every
/// problem is reported, each at its place.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Loaded, ConfigError> {
    let file: ConfigFile = if text.trim().is_empty() {
        ConfigFile::default()
    } else {
        serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
            let message = e.to_string().lines().next().unwrap_or_default().to_string();
            ConfigError::Invalid(vec![format!("{}:{line}:{column}: {message}", path.display())])
        })?
    };
    let mut loaded = Loaded { path: path.to_path_buf(), file, syslog: Vec::new(), metrics_addr: None, api: None };
    let mut errors = Vec::new();
    for (key, size) in [("ringbufSize", &loaded.file.ringbuf_size), ("securityRingbufSize", &loaded.file.security_ringbuf_size)] {
        if let Some(s) = size
            && let Err(e) = crate::run::valid_ringbuf_size(key, s.value)
        {
            errors.push(format!("{}: {e}", loaded.at(&s.referenced)));
        }
    }
    for url in loaded.file.syslog.iter().flatten() {
        match url.value.parse::<Destination>() {
            Ok(d) => loaded.syslog.push(d),
            Err(e) => errors.push(format!("{}: {e}", loaded.at(&url.referenced))),
        }
    }
    if let Some(a) = &loaded.file.kube_api
        && let Err(e) = a.value.parse::<KubeApi>()
    {
        errors.push(format!("{}: {e}", loaded.at(&a.referenced)));
    }
    if let Some(a) = &loaded.file.metrics_addr {
        match a.value.parse::<Listen>() {
            Ok(l) => loaded.metrics_addr = Some(l),
            Err(e) => errors.push(format!("{}: {e}", loaded.at(&a.referenced))),
        }
    }
    if let Some(api) = &loaded.file.api {
        loaded.api = api_options(&loaded, &api.value, &mut errors);
    }
    if errors.is_empty() { Ok(loaded) } else { Err(ConfigError::Invalid(errors)) }
}

/// The `api` section checked: its address, grant patterns and permissions.
fn api_options(loaded: &Loaded, api: &ApiFile, errors: &mut Vec<String>) -> Option<crate::api::Options> {
    use crate::api::authz::{Grant, Rules};
    let before = errors.len();
    let listen = api.listen.value.parse().map_err(|_| {
        errors.push(format!("{}: {:?} is not IP:PORT (e.g. 0.0.0.0:9443)", loaded.at(&api.listen.referenced), api.listen.value))
    });
    if api.allow.value.is_empty() {
        errors.push(format!("{}: api.allow grants nothing: every call would be refused", loaded.at(&api.allow.referenced)));
    }
    let mut grants = Vec::new();
    for g in &api.allow.value {
        match g.spiffe.value.parse() {
            Ok(pattern) => grants.push(Grant { pattern, may: g.may.value.clone() }),
            Err(e) => errors.push(format!("{}: {e}", loaded.at(&g.spiffe.referenced))),
        }
        if g.may.value.is_empty() {
            errors.push(format!("{}: an empty `may` grants nothing (read, push, stream)", loaded.at(&g.may.referenced)));
        }
    }
    let listen = listen.ok().filter(|_| errors.len() == before)?;
    Some(crate::api::Options { listen, ca: api.ca.clone(), cert: api.cert.clone(), key: api.key.clone(), rules: Rules(grants) })
}

/// One effective `run` setting, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    /// The config-file key (the flag is its kebab-case form).
    pub key: String,
    pub value: String,
    /// "command line", "environment", "FILE:line:column", or "default".
    pub source: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse(Path::new("c.yaml"), text) {
            Err(ConfigError::Invalid(e)) => e,
            other => panic!("expected errors, got {other:?}"),
        }
    }

    #[test]
    fn reads_every_kind_of_value() {
        let text = "policy: [/p1, /p2]\neventRate: 500\nshow: all\nargvCapture: proc\nsyscallGuards: off\nnodeLabels: {zone: a}\n\
                    syslog:\n  - udp://127.0.0.1:514\n  - tcp://127.0.0.1:601?format=cef\nmetricsAddr: \"[::1]:9000\"\n\
                    bpfStats: true\nlogFormat: json\n";
        let l = parse(Path::new("c.yaml"), text).unwrap();
        let f = &l.file;
        assert_eq!(f.policy.as_ref().unwrap().value, vec![PathBuf::from("/p1"), "/p2".into()]);
        assert_eq!(f.event_rate.as_ref().map(|s| s.value), Some(500));
        assert_eq!(f.show.as_ref().map(|s| s.value), Some(Show::All));
        assert_eq!(f.argv_capture.as_ref().map(|s| s.value), Some(ArgvCapture::Proc));
        assert_eq!(f.syscall_guards.as_ref().map(|s| s.value), Some(SyscallGuards::Off));
        assert_eq!(l.syslog.len(), 2);
        assert_eq!(l.metrics_addr, Some(Listen(Some("[::1]:9000".parse().unwrap()))));
        assert_eq!(f.log_format.as_ref().map(|s| s.value), Some(LogFormat::Json));
        assert_eq!("none".parse(), Ok(Listen(None)));
        assert_eq!(l.at(&f.event_rate.as_ref().unwrap().referenced), "c.yaml:2:12");
        assert!(parse(Path::new("c.yaml"), "").unwrap().syslog.is_empty(), "an empty file is an empty config");
    }

    #[test]
    fn every_error_has_its_place() {
        let e = errors("eventRate: 5\nevntRate: 6\n");
        assert!(e[0].starts_with("c.yaml:2:1: ") && e[0].contains("evntRate"), "{e:?}");
        let e = errors("show: everything\n");
        assert!(e[0].starts_with("c.yaml:1:7: "), "{e:?}");
        let e = errors("eventRate: many\n");
        assert!(e[0].starts_with("c.yaml:1:12: "), "{e:?}");
        let e = errors("ringbufSize: 5000\nsyslog:\n  - tls://h:1\n  - udp://ok:514\n  - ftp://x:1\nmetricsAddr: localhost\n");
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[3].starts_with("c.yaml:6:14: ") && e[3].contains("not HOST:PORT"), "{e:?}");
        assert!(e[0].starts_with("c.yaml:1:14: ") && e[0].contains("power of two"), "{e:?}");
        assert!(e[1].starts_with("c.yaml:3:5: ") && e[1].contains("needs ca=FILE"), "{e:?}");
        assert!(e[2].starts_with("c.yaml:5:5: ") && e[2].contains("unknown scheme"), "{e:?}");
    }

    #[test]
    fn the_api_section() {
        let head = "api:\n  listen: 127.0.0.1:9443\n  ca: /ca.pem\n  cert: /s.pem\n  key: /s.key\n";
        let l = parse(Path::new("c.yaml"), &format!("{head}  allow:\n    - spiffe: spiffe://zt.test/ops/*\n      may: [read, stream]\n"))
            .unwrap();
        let api = l.api.unwrap();
        assert_eq!(api.listen, "127.0.0.1:9443".parse().unwrap());
        assert!(api.rules.allows("spiffe://zt.test/ops/ci", crate::api::authz::Permission::Stream));
        assert!(!api.rules.allows("spiffe://zt.test/ops/ci", crate::api::authz::Permission::Push));
        let e = errors(&format!("{head}  allow:\n    - spiffe: https://x/y\n      may: []\n"));
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("c.yaml:7:15: ") && e[0].contains("not a SPIFFE ID pattern"), "{e:?}");
        assert!(e[1].starts_with("c.yaml:8:12: ") && e[1].contains("grants nothing"), "{e:?}");
        let e = errors(&format!("{head}  allow:\n    - spiffe: spiffe://zt.test/a\n      may: [write]\n"));
        assert!(e[0].starts_with("c.yaml:8:") && e[0].contains("write"), "{e:?}");
        let e = errors(&head.replace("127.0.0.1:9443", "localhost").replace("  key: /s.key\n", "  key: /s.key\n  allow: []\n"));
        assert!(e[0].starts_with("c.yaml:2:11: ") && e[0].contains("not IP:PORT"), "{e:?}");
        assert!(e[1].starts_with("c.yaml:6:10: ") && e[1].contains("grants nothing"), "{e:?}");
    }
}
