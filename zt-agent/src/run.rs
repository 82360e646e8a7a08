//! `zt-agent run`: the daemon. Wires probe, loader, the first policy,
//! seeding, the audit log, pipeline, policy manager and the control socket
//! together, and owns the shutdown order: signal -> demo stopped -> manager
//! and control socket stopped -> `agent stop` event -> pipeline drained ->
//! final audit checkpoint -> programs detached (dropping `Bpf`).
//!
//! The audit log is opened before anything is loaded: a log that
//! contradicts its signed checkpoint stops the agent (exit status 3).
use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, sync::watch};
use zt_common::{Config, config_flags};

use crate::{
    audit,
    bpf::{
        self,
        loader::{ArgvCapture, Bpf, LoadOptions},
        probe,
    },
    control, host,
    identity::Resolver,
    manager::{self, InForce, Manager, RuleBook},
    pipeline::{
        self, MapTables, Stats,
        enrich::Enricher,
        event::{AgentInfo, Body},
        output::Show,
    },
    policy::{self, Bundle, store},
};

pub struct RunOptions {
    /// Policy files or directories; empty: the embedded default.
    pub policy: Vec<PathBuf>,
    pub events: Option<PathBuf>,
    pub show: Show,
    pub observe_all_connects: bool,
    pub ringbuf_bytes: u32,
    pub poll_interval: Duration,
    pub socket: PathBuf,
    pub demo: bool,
    pub argv: ArgvCapture,
    /// Where policy history is kept; None: in memory only.
    pub state_dir: Option<PathBuf>,
    pub node_labels: BTreeMap<String, String>,
    pub audit: audit::log::Config,
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    host::check_privileges()?;
    // Validate the policy before touching the kernel: a bad file is an error
    // with file:line:column and nothing is loaded.
    let bundle = if opts.policy.is_empty() { Bundle::embedded_default() } else { Bundle::read(&opts.policy)? };
    bundle.parse()?;
    let tracefs = host::ensure_tracefs()?;
    let cgroup2 = host::cgroup2_mount()?;
    let audit_writer = open_audit(&opts.audit)?;

    let caps = probe::probe();
    let paths = probe::enforcement_paths(&caps);
    for f in caps.features.iter().filter(|f| !f.available) {
        tracing::info!("kernel feature {} unavailable: {}", f.name, f.detail);
    }
    for (what, how) in &paths {
        tracing::info!("{what}: {how}");
    }
    if !caps.has(probe::names::TRACEPOINT) {
        bail!("tracepoint programs do not load on this kernel; process attribution is impossible (see `zt-agent probe`)");
    }
    if !caps.has(probe::names::RINGBUF) {
        bail!("BPF ring buffers are unavailable (Linux >= 5.8 needed)");
    }

    let mut flags = 0;
    if opts.observe_all_connects {
        flags |= config_flags::OBSERVE_ALL_CONNECTS;
    }
    let (mut bpf, maps) = Bpf::load(&LoadOptions {
        tracefs: &tracefs,
        cgroup2: &cgroup2,
        ringbuf_bytes: opts.ringbuf_bytes,
        config: Config { flags, wakeup_bytes: opts.ringbuf_bytes / 4 },
        argv: opts.argv,
    })?;
    let object_digest = bpf::object_digest().to_hex().to_string();
    tracing::info!("eBPF object blake3 {object_digest}");
    let logger_task = spawn_kernel_logger(&mut bpf);

    let node: Arc<str> = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default().into();
    let (input_tx, input_rx) = tokio::sync::mpsc::channel(QUEUE_CAPACITY);
    let rulebook = Arc::new(RuleBook::default());
    let in_force = Arc::new(std::sync::RwLock::new(InForce::default()));
    let store = store::Store::open(opts.state_dir.as_ref().map(|d| d.join("policy-history")))?;
    let mut manager = Manager::new(
        opts.policy.clone(),
        store,
        maps.policy,
        opts.node_labels.clone(),
        rulebook.clone(),
        input_tx.clone(),
        in_force.clone(),
        node.clone(),
    );
    // The first policy goes into the maps before the egress hooks attach.
    let first = manager.apply_and_report(bundle, "start", "applied").await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = Arc::new(policy::identity_config(&manager.current_policy().expect("just applied"), manager.ids()));

    let mut enricher = Enricher::new(Resolver::new(config.clone(), "/proc"), node.clone(), opts.show == Show::All, rulebook);
    let mut tables = MapTables { procs: maps.proc_table, cgroups: maps.cgroups, aggregates: maps.aggregates };
    // The demo cgroup must exist before seeding so the kernel learns its id.
    let demo_cgroup = if opts.demo { Some(prepare_demo_cgroup(&cgroup2)?) } else { None };
    let (seeded, attributed) = pipeline::seed(&mut enricher, &mut tables, &cgroup2);
    tracing::info!("seeded {seeded} running processes from /proc, {attributed} attributed");

    let stats = Arc::new(Stats::default());
    let output: Box<dyn Write + Send> = match &opts.events {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new().create(true).append(true).open(p).with_context(|| format!("opening {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let running = pipeline::spawn(
        (input_tx, input_rx),
        maps.events,
        (maps.loss, maps.identity_counters),
        tables,
        enricher,
        vec![(output, opts.show)],
        Some(audit_writer.sink.clone()),
        pipeline::Options {
            poll_interval: opts.poll_interval,
            loss_interval: Duration::from_secs(1),
            rescan_interval: Duration::from_secs(2),
            gc_every: 15,
            cgroup2: cgroup2.clone(),
        },
        stats.clone(),
    );
    bpf.attach_network(&cgroup2)?;
    for h in &bpf.hooks {
        tracing::info!("{} -> {}: {}", h.program, h.attach_point, h.state);
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let (req_tx, req_rx) = tokio::sync::mpsc::channel(16);
    let manager_task = tokio::spawn(manager::run(manager, req_rx, stop_rx.clone(), Duration::from_secs(30)));

    let path_strings: Vec<(String, String)> = paths.iter().map(|(a, b)| (a.to_string(), b.clone())).collect();
    let agent_event = |state: &'static str, reason: Option<String>| pipeline::event::Event {
        time: Enricher::wall_time(host::boottime_ns()),
        node: node.clone(),
        body: Body::Agent {
            agent: AgentInfo {
                state,
                version: env!("CARGO_PKG_VERSION"),
                reason,
                object_blake3: Some(object_digest.clone()),
                policy: Some(format!("v{} blake3:{}", first.version, first.digest)),
                paths: path_strings.clone(),
            },
        },
    };
    let _ = running.input.send(pipeline::Input::Emit(Box::new(agent_event("started", None)))).await;

    let info = Arc::new(control::StaticInfo {
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        started: Enricher::wall_time(host::boottime_ns()),
        object_blake3: object_digest.clone(),
        hooks: bpf.hooks.clone(),
        paths: path_strings.clone(),
        cgroup2: cgroup2.display().to_string(),
    });
    let control_task = {
        let socket = opts.socket.clone();
        let state = control::State {
            info,
            stats: stats.clone(),
            in_force,
            requests: req_tx,
            audit: Some((audit_writer.sink.clone(), audit_writer.status.clone())),
        };
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = control::serve(&socket, state, stop).await {
                tracing::warn!("control socket disabled: {e:#}");
            }
        })
    };

    let mut demo = match &demo_cgroup {
        Some(dir) => Some(start_demo(dir).await?),
        None => None,
    };
    tracing::info!("ready: attributing processes and enforcing policy (Ctrl-C to stop)");

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let reason = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    tracing::info!("{reason}: stopping");
    if let Some(d) = demo.as_mut() {
        d.stop().await;
    }
    let _ = stop_tx.send(true);
    let _ = manager_task.await;
    let _ = control_task.await;
    let _ = running.input.send(pipeline::Input::Emit(Box::new(agent_event("stopped", Some(reason.into()))))).await;
    running.shutdown().await;
    audit_writer.finish().await;
    if let Some(dir) = &demo_cgroup {
        let _ = std::fs::remove_dir(dir);
    }
    logger_task.abort();
    drop(bpf);
    tracing::info!("stopped; all programs detached");
    Ok(())
}

/// Opens (recovering) the audit log and starts its thread. An integrity
/// violation is returned as [`audit::log::OpenError`] for the exit status.
fn open_audit(cfg: &audit::log::Config) -> anyhow::Result<audit::writer::Writer> {
    let (log, report) = audit::log::AuditLog::open(cfg.clone()).map_err(|e| match e {
        e @ audit::log::OpenError::Integrity { .. } => anyhow::Error::new(e),
        audit::log::OpenError::Other(e) => e.context(format!("opening the audit log in {}", cfg.dir.display())),
    })?;
    if report.key_created {
        tracing::info!("created audit signing key {} (mode 0400)", cfg.key.display());
    }
    if let Some(bad) = &report.recovered {
        tracing::warn!(
            "audit log recovered after a crash: cut {} bytes at record {} ({}): {}; every signed record (size {}) is intact",
            bad.bytes,
            bad.index,
            bad.path.display(),
            bad.reason,
            report.signed_size
        );
    }
    tracing::info!(
        "audit log {} (origin {}): {} records, {} signed; verifier key: {}",
        cfg.dir.display(),
        report.origin,
        report.records,
        report.signed_size,
        report.verifier_keys.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(" ")
    );
    Ok(audit::writer::spawn(log, &cfg.dir, AUDIT_QUEUE_CAPACITY))
}

/// Queue into the audit thread (security-relevant events only).
const AUDIT_QUEUE_CAPACITY: usize = 65_536;

/// Queue between the ring-buffer reader and the enricher (events).
const QUEUE_CAPACITY: usize = 65_536;

/// Forwards aya-log records from the kernel programs to `tracing` (via `log`).
fn spawn_kernel_logger(bpf: &mut Bpf) -> tokio::task::JoinHandle<()> {
    let logger = aya_log::EbpfLogger::init(bpf.ebpf_mut()).map_err(anyhow::Error::from).and_then(|l| {
        // SAFETY: the logger owns its map fd for as long as the AsyncFd owns the logger.
        unsafe { AsyncFd::register(l) }.map_err(|e| anyhow::anyhow!("registering with tokio: {e}"))
    });
    match logger {
        Ok(mut logger) => tokio::spawn(async move {
            loop {
                let Ok(mut guard) = logger.readable_mut().await else { break };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }),
        Err(e) => {
            tracing::warn!("kernel log forwarding off: {e:#}");
            tokio::spawn(async {})
        }
    }
}

fn prepare_demo_cgroup(cgroup2: &Path) -> anyhow::Result<PathBuf> {
    let dir = cgroup2.join("zt-agents").join("demo");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating demo cgroup {}", dir.display()))?;
    Ok(dir)
}

/// A visible workload for the embedded policy: a shell in `/zt-agents/demo`
/// that every 2 s runs a command and connects to a loopback listener.
struct Demo {
    child: tokio::process::Child,
    listener: tokio::task::JoinHandle<()>,
}

impl Demo {
    async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            // The shell is a process group leader (setsid): end the group.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        self.listener.abort();
    }
}

async fn start_demo(cgroup: &Path) -> anyhow::Result<Demo> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let accept = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    // Opened here, written in the child: no allocation between fork and exec.
    let procs = std::fs::OpenOptions::new().write(true).open(cgroup.join("cgroup.procs"))?;
    let procs_fd = std::os::fd::AsRawFd::as_raw_fd(&procs);
    // 127.0.0.1 is allowed by the default policy, 127.0.0.2 is not (EPERM).
    let script = format!(
        "while :; do uname -r >/dev/null; (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; (exec 3<>/dev/tcp/127.0.0.2/{port}) 2>/dev/null; sleep 2; done"
    );
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c").arg(script).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (setsid, write) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the demo workload (bash)")?;
    drop(procs);
    tracing::info!(
        "demo workload: pid {} in cgroup {} connecting to 127.0.0.1:{port} (allowed) and 127.0.0.2:{port} (denied) every 2 s",
        child.id().unwrap_or(0),
        cgroup.display()
    );
    Ok(Demo { child, listener: accept })
}

/// Opens the ring buffer size check for `--ringbuf-size`.
pub fn valid_ringbuf_size(bytes: u32) -> anyhow::Result<u32> {
    let page = 4096;
    if bytes < page || !bytes.is_power_of_two() {
        bail!("--ringbuf-size must be a power of two of at least {page} bytes (got {bytes})");
    }
    Ok(bytes)
}
