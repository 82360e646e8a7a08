//! The policy model: what a validated, composed bundle is (the parser in
//! [`super::parse`] builds it; lint, conditions and compile read it).
//!
//! # Layout
//! - [`Pos`], [`Diagnostic`], [`PolicyErrors`]: positions and messages.
//! - [`Policy`], [`IdentityDef`], [`Rule`], [`Egress`], [`PathRuleDef`],
//!   [`Condition`], [`TimeWindow`]: the validated types.
use std::{fmt, sync::Arc};

use ipnet::IpNet;

use crate::identity::selector::Selector;

/// A position in a source file (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pos {
    /// Shared by every position in the file (a bundle holds 10,000s).
    pub file: Arc<str>,
    pub line: u64,
    pub column: u64,
}

/// As `file:line:col`, the way every message shows it.
impl serde::Serialize for Pos {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: the whole file (it could not be read).
        if self.line == 0 { write!(f, "{}", self.file) } else { write!(f, "{}:{}:{}", self.file, self.line, self.column) }
    }
}

/// One error or warning, printed as `file:line:col: message (hint: …)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Every error found, in file order; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors(pub Vec<Diagnostic>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Any,
    Tcp,
    Udp,
}

/// Default actions per category. Unset: egress deny (zero trust for agents),
/// files and exec allow (a default-deny file policy must list every library
/// a process loads; opt in with `defaultAction: deny`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    pub egress: Action,
    pub files: Action,
    pub exec: Action,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults { egress: Action::Deny, files: Action::Allow, exec: Action::Allow }
    }
}

#[derive(Debug, Clone)]
pub struct IdentityDef {
    pub name: String,
    pub spiffe_id: String,
    pub selectors: std::sync::Arc<[Selector]>,
    pub mode: Mode,
    pub defaults: Defaults,
    /// Socket kinds its processes may create (`zt_common::guard::sock_kind` bits).
    pub sockets: u32,
    /// Syscall anomaly detection (`anomaly:`), off when absent.
    pub anomaly: Option<Anomaly>,
    pub pos: Pos,
}

/// An identity's `anomaly:` block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anomaly {
    pub mode: AnomalyMode,
    pub response: AnomalyResponse,
    /// The share of normal processes allowed to alert (the threshold is
    /// set for it on calibration data), in (0, 0.5].
    pub false_positive_rate: f64,
    /// Calls the identity's processes make before the baseline is trained.
    pub learn_calls: u64,
}

impl Anomaly {
    pub const DEFAULT_FALSE_POSITIVE_RATE: f64 = 0.005;
    pub const DEFAULT_LEARN_CALLS: u64 = 200_000;
    /// `learnCalls` range: enough calls for a window model, and a bound on
    /// what learning holds in memory (4 bytes a call) and trains at once.
    pub const LEARN_CALLS: std::ops::RangeInclusive<u64> = 1_000..=5_000_000;
}

impl std::fmt::Display for Anomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (mode, response) = (self.mode.name(), self.response.name());
        write!(
            f,
            "{mode}, response {response}, false-positive target {}%, baseline after {} calls",
            self.false_positive_rate * 100.0,
            self.learn_calls
        )
    }
}

/// `learn`: build and calibrate the baseline, alert on nothing;
/// `detect`: score against it and respond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnomalyMode {
    Learn,
    Detect,
}

/// What a detection does besides its alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnomalyResponse {
    Alert,
    /// The identity's egress switched to deny-all until released.
    Quarantine,
    /// The process is killed.
    Kill,
}

impl AnomalyMode {
    /// The policy's word for it.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyMode::Learn => "learn",
            AnomalyMode::Detect => "detect",
        }
    }
}

impl AnomalyResponse {
    /// The policy's word for it (a `detection` event's `response`).
    pub fn name(self) -> &'static str {
        match self {
            AnomalyResponse::Alert => "alert",
            AnomalyResponse::Quarantine => "quarantine",
            AnomalyResponse::Kill => "kill",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Egress {
    /// Networks; IPv4 kept as IPv4 here (mapped at compile time).
    pub to: Vec<IpNet>,
    /// Unix-domain socket destinations (`unix:` in `to`).
    pub unix: Vec<UnixName>,
    /// Inclusive port ranges; empty = every port.
    pub ports: Vec<(u16, u16)>,
    pub proto: Proto,
    pub pos: Pos,
}

/// A Unix-domain socket destination (`to: [unix:...]`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnixName {
    /// `unix:/run/x.sock`: exactly that path, as the caller writes it.
    Path(String),
    /// `unix:/run/dir/**`: every path below the directory (held with its
    /// trailing '/'; `unix:/**` is every path).
    Under(String),
    /// `unix:@name`: exactly that abstract name.
    Abstract(Vec<u8>),
    /// `unix:@*`: every abstract name.
    AnyAbstract,
}

impl UnixName {
    /// Whether every address `other` matches, this matches too.
    pub fn covers(&self, other: &UnixName) -> bool {
        match (self, other) {
            (UnixName::Under(d), UnixName::Path(p) | UnixName::Under(p)) => p.starts_with(d.as_str()),
            (UnixName::AnyAbstract, UnixName::Abstract(_) | UnixName::AnyAbstract) => true,
            (a, b) => a == b,
        }
    }
}

impl fmt::Display for UnixName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixName::Path(p) => write!(f, "unix:{p}"),
            UnixName::Under(d) => write!(f, "unix:{d}**"),
            UnixName::Abstract(n) => write!(f, "unix:@{}", n.escape_ascii()),
            UnixName::AnyAbstract => write!(f, "unix:@*"),
        }
    }
}

/// File access bits (also in `zt_common::policy`-compatible order).
pub mod access {
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
    pub const CREATE: u32 = 4;
    pub const DELETE: u32 = 8;
    pub const EXEC: u32 = 16;
    pub const NAMES: [(&str, u32); 5] = [("read", READ), ("write", WRITE), ("create", CREATE), ("delete", DELETE), ("exec", EXEC)];
}

/// A file or exec rule's paths: exact files, or directory prefixes when the
/// path ends with '/'.
#[derive(Debug, Clone)]
pub struct PathRuleDef {
    pub paths: Vec<String>,
    /// [`access`] bits (exec rules: `EXEC`).
    pub access: u32,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeWindow {
    /// Bit i = weekday i (0 = Monday), UTC.
    pub days: u8,
    /// Minutes after midnight UTC; `start > end` wraps past midnight.
    pub start: u16,
    pub end: u16,
}

#[derive(Debug, Clone)]
pub struct Condition {
    pub time: Option<TimeWindow>,
    /// A Rego body (one or more expressions, AND-ed), compiled and checked
    /// at load time; evaluated when inputs change, never per syscall.
    pub rego: Option<super::conditions::RegoSource>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique in the bundle; default `<identity>/<index in its file>`.
    pub name: String,
    /// Shared by the identity's rules.
    pub identity: Arc<str>,
    pub action: Action,
    /// Per-rule mode; the identity's mode applies when unset (and audit at
    /// either level makes the rule audit).
    pub mode: Option<Mode>,
    /// Boxed: most rules have none, and a bundle may hold 10,000s of rules.
    pub when: Option<Box<Condition>>,
    pub egress: Vec<Egress>,
    pub files: Vec<PathRuleDef>,
    pub exec: Vec<PathRuleDef>,
    pub pos: Pos,
}

/// A composed, validated bundle.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub trust_domain: String,
    pub identities: Vec<IdentityDef>,
    pub rules: Vec<Rule>,
    pub warnings: Vec<Diagnostic>,
}

impl Policy {
    pub fn identity(&self, name: &str) -> Option<&IdentityDef> {
        self.identities.iter().find(|i| i.name == name)
    }

    /// Gives back the spare capacity of every list (collected lists start at
    /// 4 elements; a 10,000-rule bundle would hold ~5 MiB of it for as long
    /// as the policy is in force).
    pub fn shrink_to_fit(&mut self) {
        for r in &mut self.rules {
            for e in &mut r.egress {
                e.to.shrink_to_fit();
                e.unix.shrink_to_fit();
                e.ports.shrink_to_fit();
            }
            for p in r.files.iter_mut().chain(&mut r.exec) {
                p.paths.shrink_to_fit();
            }
            r.egress.shrink_to_fit();
            r.files.shrink_to_fit();
            r.exec.shrink_to_fit();
        }
        self.identities.shrink_to_fit();
        self.rules.shrink_to_fit();
    }
}
