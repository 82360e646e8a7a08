//! `zt-agent run`: the daemon's options (command line, environment, config
//! file, defaults, in that order) -> [`zt_agent::run::RunOptions`].
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{ArgMatches, Args, parser::ValueSource};
use serde_saphyr::{Location, Spanned};
use zt_agent::{
    audit::{self, log::OpenError},
    bpf::loader::ArgvCapture,
    config::{self, ConfigFile, Loaded, LogFormat, Setting, SyscallGuards},
    control,
    pipeline::output::Show,
    run,
};

/// Exit status of `run` when the audit log contradicts its signed checkpoint.
const AUDIT_VIOLATION_EXIT: u8 = 3;

#[derive(Args)]
pub struct RunArgs {
    /// The config file (YAML): every option of `run` under its flag's name
    /// in camelCase (README: "Config file"). Flags and environment
    /// variables override it. Default: /etc/zt-agent/config.yaml when it
    /// exists. The remote API (mutual TLS, SPIFFE grants) is configured
    /// only here, in its `api` section (README: "Remote API").
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Policy file or directory (YAML, `kind: HostPolicy`); repeat to compose
    /// several. Watched for changes (inotify) and reloaded on SIGHUP.
    /// Default: the embedded policy.
    #[arg(long, value_name = "PATH")]
    pub policy: Vec<PathBuf>,
    /// Where the policy history (for `policy history|rollback`) is kept.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/zt-agent")]
    pub state_dir: PathBuf,
    /// A node label visible to Rego conditions as input.node.labels (repeatable).
    #[arg(long = "node-label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub node_labels: Vec<(String, String)>,
    /// Append JSON-lines events to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Which events to output.
    #[arg(long, value_enum, default_value_t = Show::Attributed)]
    pub show: Show,
    /// Also report connects of processes without an identity (costs more per connect).
    #[arg(long)]
    pub observe_all_connects: bool,
    /// Telemetry ring buffer size in bytes (power of two): exec, exit, allowed connects.
    #[arg(long, value_name = "BYTES", default_value_t = zt_common::maps::EVENTS_DEFAULT_BYTES)]
    pub ringbuf_size: u32,
    /// Security ring buffer size in bytes (power of two): denials, would-denies, guard actions.
    #[arg(long, value_name = "BYTES", default_value_t = zt_common::maps::SECURITY_EVENTS_DEFAULT_BYTES)]
    pub security_ringbuf_size: u32,
    /// Connect events per second each identity may cause on each CPU; past it,
    /// its new destinations are folded into counted `connect_folded` summaries
    /// (0: unlimited).
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    pub event_rate: u32,
    /// How often the consumer drains the ring buffer (the kernel submits without wakeups).
    #[arg(long, value_name = "MS", default_value_t = 10)]
    pub poll_ms: u64,
    /// Seconds between continuous-verification passes (our cgroup programs
    /// still attached, the binary unchanged; see `zt-agent verify`); 0: on demand only.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub verify_every: u64,
    /// Control socket path (for `zt-agent status`).
    #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Start a demo workload in the cgroup /zt-agents/demo (what the default policy attributes).
    #[arg(long)]
    pub demo: bool,
    /// Where exec argv comes from: `kernel` (from the new image at exec, via
    /// BTF offsets; falls back to syscall tracepoints without BTF), `syscalls`
    /// (force the syscall-tracepoint path, which slows every syscall a little),
    /// or `proc` (read from /proc after the exec: misses processes that exit at once).
    #[arg(long, value_enum, default_value_t = ArgvCapture::Kernel)]
    pub argv_capture: ArgvCapture,
    /// The syscall guards (socket/socketpair of non-inet families, ptrace,
    /// process_vm_readv/writev, pidfd_getfd, bpf: the caller is killed).
    /// Their tracepoints put every syscall of every process on the kernel's
    /// traced path (see BENCHMARKS.md); `off` trades those guards for that
    /// cost, and `status` says they are off. Where BPF LSM loads, LSM hooks
    /// guard these calls instead (EPERM, no cost to other syscalls) and
    /// this setting changes nothing.
    #[arg(long, value_enum, default_value_t = SyscallGuards::On)]
    pub syscall_guards: SyscallGuards,
    /// Pin programs and enforcement state here (bpffs), so enforcement
    /// outlives the agent (a crash, `kill -9`, a stop, an upgrade) and the
    /// next start adopts it without a gap. `zt-agent uninstall` removes it.
    #[arg(long, value_name = "DIR", default_value = zt_agent::bpf::pins::DEFAULT_DIR)]
    pub pin_dir: PathBuf,
    /// Pin nothing: enforcement ends when the agent stops (development;
    /// implied by --demo).
    #[arg(long)]
    pub no_pin: bool,
    /// Where the signed audit log is written.
    #[arg(long, value_name = "DIR", env = "ZT_AUDIT_DIR", default_value = audit::log::DEFAULT_DIR)]
    pub audit_dir: PathBuf,
    /// The audit signing key (Ed25519 PKCS#8): created with mode 0400 if
    /// missing, or a mounted secret (must not be group/other readable).
    #[arg(long, value_name = "FILE", env = "ZT_AUDIT_KEY", default_value = audit::log::DEFAULT_KEY)]
    pub audit_key: PathBuf,
    /// Audit log origin and key name for a new log (default `zt-agent/<hostname>`).
    #[arg(long, value_name = "NAME", env = "ZT_AUDIT_ORIGIN")]
    pub audit_origin: Option<String>,
    /// Start a new audit segment file beyond this size.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub audit_segment_bytes: u64,
    /// Delete the oldest signed segments beyond this total size (recorded in the log).
    #[arg(long, value_name = "BYTES")]
    pub audit_retain_bytes: Option<u64>,
    /// Send every audit record (denials, policy changes, ...) to a SIEM over
    /// syslog (RFC 5424): `udp://HOST:PORT`, `tcp://HOST:PORT` or
    /// `tls://HOST:PORT?ca=FILE[&cert=FILE&key=FILE]`, with options
    /// `format=ocsf|cef|json`, `severity=LEVEL`, `kinds=a,b`,
    /// `telemetry=true`, `name=NAME`, `facility=NAME`, `max_message=BYTES`, `rate=N` (UDP),
    /// `server_name=NAME`, `sd_id=ID` (README: "SIEM output"). Repeatable.
    #[arg(long, value_name = "URL")]
    pub syslog: Vec<zt_agent::siem::Destination>,
    /// Serve Prometheus `/metrics`, `/healthz` and `/readyz` over HTTP on
    /// HOST:PORT (port 0: any free port, shown by `status`), or `none`.
    #[arg(long, value_name = "HOST:PORT", default_value = zt_agent::metrics::DEFAULT_ADDR)]
    pub metrics_addr: config::Listen,
    /// Turn on the kernel's BPF statistics: each program's run time and
    /// count in `/metrics`. Every BPF program on the host then pays two
    /// clock reads per run (see BENCHMARKS.md).
    #[arg(long)]
    pub bpf_stats: bool,
    /// Kubernetes pod metadata (for `k8s:` selectors and the `pod` of every
    /// event): `auto` (the in-cluster API server when running in a pod),
    /// `off`, or the API server's URL.
    #[arg(long, value_name = "auto|off|URL", default_value = "auto")]
    pub kube_api: config::KubeApi,
    /// Bearer token for `--kube-api URL` (read at every request).
    #[arg(long, value_name = "FILE")]
    pub kube_token: Option<PathBuf>,
    /// CA bundle of the API server's certificate for `--kube-api https://...`.
    #[arg(long, value_name = "FILE")]
    pub kube_ca: Option<PathBuf>,
    /// Watch only this node's pods (`spec.nodeName`); the DaemonSet sets
    /// ZT_NODE_NAME from the downward API. Unset: every pod.
    #[arg(long, value_name = "NAME", env = "ZT_NODE_NAME")]
    pub kube_node: Option<String>,
    /// The daemon's log lines on stderr: `text`, or `json` (one object per line).
    #[arg(long, value_enum, env = "ZT_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

/// Picks each option from the command line or environment, else the
/// config file, else the default, and records where it came from.
struct Picker<'a> {
    matches: &'a ArgMatches,
    file: Option<&'a Loaded>,
    settings: Vec<Setting>,
}

impl Picker<'_> {
    /// `id`: the clap argument (the field name); `key`: the file's key.
    fn pick<T: std::fmt::Debug>(&mut self, id: &str, key: &str, cli: T, in_file: impl FnOnce(&ConfigFile) -> Option<(T, Location)>) -> T {
        let from_file = self.file.and_then(|l| in_file(&l.file).map(|(v, at)| (v, l.at(&at))));
        let (value, source) = match (self.matches.value_source(id), from_file) {
            (Some(ValueSource::CommandLine), _) => (cli, "command line".to_string()),
            (Some(ValueSource::EnvVariable), _) => (cli, "environment".to_string()),
            (_, Some((v, at))) => (v, at),
            (_, None) => (cli, "default".to_string()),
        };
        self.settings.push(Setting { key: key.into(), value: format!("{value:?}"), source });
        value
    }
}

impl RunArgs {
    fn options(self, matches: &ArgMatches) -> anyhow::Result<run::RunOptions> {
        let path = self.config.clone().or_else(|| Path::new(config::DEFAULT_PATH).exists().then(|| config::DEFAULT_PATH.into()));
        let loaded = path.map(|p| config::load(&p)).transpose()?;
        let mut p = Picker { matches, file: loaded.as_ref(), settings: Vec::new() };
        let policy = p.pick("policy", "policy", self.policy, |f| val(&f.policy));
        let state_dir = p.pick("state_dir", "stateDir", self.state_dir, |f| val(&f.state_dir));
        let labels = p.pick("node_labels", "nodeLabels", self.node_labels.into_iter().collect(), |f| val(&f.node_labels));
        let events = p.pick("events", "events", self.events, |f| opt(&f.events));
        let show = p.pick("show", "show", self.show, |f| val(&f.show));
        let observe_all_connects =
            p.pick("observe_all_connects", "observeAllConnects", self.observe_all_connects, |f| val(&f.observe_all_connects));
        let ringbuf_size = p.pick("ringbuf_size", "ringbufSize", self.ringbuf_size, |f| val(&f.ringbuf_size));
        let security_ringbuf_size =
            p.pick("security_ringbuf_size", "securityRingbufSize", self.security_ringbuf_size, |f| val(&f.security_ringbuf_size));
        let event_rate = p.pick("event_rate", "eventRate", self.event_rate, |f| val(&f.event_rate));
        let poll_ms = p.pick("poll_ms", "pollMs", self.poll_ms, |f| val(&f.poll_ms));
        let verify_every = p.pick("verify_every", "verifyEvery", self.verify_every, |f| val(&f.verify_every));
        let socket = p.pick("socket", "socket", self.socket, |f| val(&f.socket));
        let demo = p.pick("demo", "demo", self.demo, |f| val(&f.demo));
        let argv_capture = p.pick("argv_capture", "argvCapture", self.argv_capture, |f| val(&f.argv_capture));
        let syscall_guards = p.pick("syscall_guards", "syscallGuards", self.syscall_guards, |f| val(&f.syscall_guards));
        let pin_dir = p.pick("pin_dir", "pinDir", self.pin_dir, |f| val(&f.pin_dir));
        let no_pin = p.pick("no_pin", "noPin", self.no_pin, |f| val(&f.no_pin));
        let audit_dir = p.pick("audit_dir", "auditDir", self.audit_dir, |f| val(&f.audit_dir));
        let audit_key = p.pick("audit_key", "auditKey", self.audit_key, |f| val(&f.audit_key));
        let audit_origin = p.pick("audit_origin", "auditOrigin", self.audit_origin, |f| opt(&f.audit_origin));
        let audit_segment_bytes =
            p.pick("audit_segment_bytes", "auditSegmentBytes", self.audit_segment_bytes, |f| val(&f.audit_segment_bytes));
        let audit_retain_bytes = p.pick("audit_retain_bytes", "auditRetainBytes", self.audit_retain_bytes, |f| opt(&f.audit_retain_bytes));
        let metrics_addr = p.pick("metrics_addr", "metricsAddr", self.metrics_addr, |f| {
            // Checked by `config::load` (an unparsable value never gets here).
            f.metrics_addr.as_ref().map(|a| (a.value.parse().unwrap_or(config::Listen(None)), a.referenced))
        });
        let bpf_stats = p.pick("bpf_stats", "bpfStats", self.bpf_stats, |f| val(&f.bpf_stats));
        let kube_api = p.pick("kube_api", "kubeApi", self.kube_api, |f| {
            // Checked by `config::load`.
            f.kube_api.as_ref().map(|a| (a.value.parse().unwrap_or(config::KubeApi::Off), a.referenced))
        });
        let kube_token = p.pick("kube_token", "kubeToken", self.kube_token, |f| opt(&f.kube_token));
        let kube_ca = p.pick("kube_ca", "kubeCa", self.kube_ca, |f| opt(&f.kube_ca));
        let kube_node = p.pick("kube_node", "kubeNode", self.kube_node, |f| opt(&f.kube_node));
        let kube = match kube_api {
            config::KubeApi::Off => None,
            config::KubeApi::Auto => zt_agent::kube::client::Source::in_cluster(kube_node),
            config::KubeApi::Url(api) => Some(zt_agent::kube::client::Source { api, token: kube_token, ca: kube_ca, node: kube_node }),
        };
        let log_format = p.pick("log_format", "logFormat", self.log_format, |f| val(&f.log_format));
        crate::init_logging(log_format);
        // SIEM destinations: the command line's list replaces the file's.
        let syslog = match (matches.value_source("syslog"), &loaded) {
            (Some(ValueSource::CommandLine), _) | (_, None) => self.syslog,
            (_, Some(l)) => l.syslog.clone(),
        };
        p.settings.push(Setting {
            key: "syslog".into(),
            value: format!("{:?}", syslog.iter().map(|d| d.url.as_str()).collect::<Vec<_>>()),
            source: match (
                matches.value_source("syslog"),
                loaded.as_ref().and_then(|l| l.file.syslog.as_ref().and_then(|s| s.first()).map(|s| l.at(&s.referenced))),
            ) {
                (Some(ValueSource::CommandLine), _) => "command line".into(),
                (_, Some(at)) => at,
                _ => "default".into(),
            },
        });
        // The remote API: the config file only (its grants have no flag form).
        let api = loaded.as_ref().and_then(|l| l.api.clone());
        p.settings.push(Setting {
            key: "api".into(),
            value: api.as_ref().map_or_else(|| "off".into(), |a| format!("https://{} ({} grants)", a.listen, a.rules.0.len())),
            source: loaded.as_ref().and_then(|l| l.file.api.as_ref().map(|a| l.at(&a.referenced))).unwrap_or_else(|| "default".into()),
        });
        let mut audit = audit::log::Config::new(audit_dir, audit_key, audit_origin.unwrap_or_else(audit::log::default_origin));
        audit.segment_bytes = audit_segment_bytes;
        audit.retain_bytes = audit_retain_bytes;
        Ok(run::RunOptions {
            policy,
            events,
            show,
            observe_all_connects,
            ringbuf_bytes: run::valid_ringbuf_size("--ringbuf-size", ringbuf_size)?,
            security_ringbuf_bytes: run::valid_ringbuf_size("--security-ringbuf-size", security_ringbuf_size)?,
            event_rate,
            poll_interval: Duration::from_millis(poll_ms.max(1)),
            verify_every: Duration::from_secs(verify_every),
            socket,
            demo,
            argv: argv_capture,
            syscall_guards: syscall_guards == SyscallGuards::On,
            pin_dir: (!no_pin && !demo).then_some(pin_dir),
            state_dir: Some(state_dir),
            node_labels: labels,
            audit,
            syslog,
            settings: p.settings,
            metrics_addr: metrics_addr.0,
            bpf_stats,
            kube,
            api,
            config_file: loaded.map(|l| l.path),
        })
    }
}

/// A value from the file, and where it is.
fn val<T: Clone>(s: &Option<Spanned<T>>) -> Option<(T, Location)> {
    s.as_ref().map(|s| (s.value.clone(), s.referenced))
}

/// [`val`] for a flag whose value is optional.
fn opt<T: Clone>(s: &Option<Spanned<T>>) -> Option<(Option<T>, Location)> {
    s.as_ref().map(|s| (Some(s.value.clone()), s.referenced))
}

pub fn run(args: RunArgs, matches: &ArgMatches) -> anyhow::Result<ExitCode> {
    let opts = args.options(matches)?;
    // Before the runtime's threads exist.
    if zt_agent::host::enter_host_cgroup_namespace()? {
        tracing::info!("joined the host's cgroup namespace (PID 1's): cgroup paths are the host's");
    }
    match tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run::run(opts)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if matches!(e.downcast_ref(), Some(OpenError::Integrity { .. })) => {
            eprintln!("zt-agent: AUDIT LOG INTEGRITY VIOLATION: {e:#}");
            eprintln!(
                "zt-agent: refusing to start; keep the directory as evidence (move it aside to start a new log) and check it with `zt-agent audit verify`"
            );
            Ok(ExitCode::from(AUDIT_VIOLATION_EXIT))
        }
        Err(e) => Err(e),
    }
}

/// `zt-agent uninstall`.
pub fn uninstall(pin_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let removed = zt_agent::bpf::pins::uninstall(pin_dir)?;
    println!(
        "removed {} pinned links (their programs detached) and {} pinned maps under {}",
        removed.links,
        removed.maps,
        pin_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
