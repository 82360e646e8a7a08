//! `zt-agent run`: the daemon's options -> [`zt_agent::run::RunOptions`].
use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Args;
use zt_agent::{
    audit::{self, log::OpenError},
    bpf::loader::ArgvCapture,
    control,
    pipeline::output::Show,
    run,
};

/// Exit status of `run` when the audit log contradicts its signed checkpoint.
const AUDIT_VIOLATION_EXIT: u8 = 3;

#[derive(Args)]
pub struct RunArgs {
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
    /// cost, and `status` says they are off.
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyscallGuards {
    On,
    Off,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

impl RunArgs {
    fn options(self) -> anyhow::Result<run::RunOptions> {
        let mut audit =
            audit::log::Config::new(self.audit_dir, self.audit_key, self.audit_origin.unwrap_or_else(audit::log::default_origin));
        audit.segment_bytes = self.audit_segment_bytes;
        audit.retain_bytes = self.audit_retain_bytes;
        Ok(run::RunOptions {
            policy: self.policy,
            events: self.events,
            show: self.show,
            observe_all_connects: self.observe_all_connects,
            ringbuf_bytes: run::valid_ringbuf_size("--ringbuf-size", self.ringbuf_size)?,
            security_ringbuf_bytes: run::valid_ringbuf_size("--security-ringbuf-size", self.security_ringbuf_size)?,
            event_rate: self.event_rate,
            poll_interval: Duration::from_millis(self.poll_ms.max(1)),
            socket: self.socket,
            demo: self.demo,
            argv: self.argv_capture,
            syscall_guards: self.syscall_guards == SyscallGuards::On,
            pin_dir: (!self.no_pin && !self.demo).then_some(self.pin_dir),
            state_dir: Some(self.state_dir),
            node_labels: self.node_labels.into_iter().collect(),
            audit,
            syslog: self.syslog,
        })
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let opts = args.options()?;
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
