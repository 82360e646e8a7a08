//! `zt-agent run`: the daemon. Wires probe, loader, seeding, pipeline and the
//! control socket together and owns the shutdown order:
//! signal -> `agent stop` event -> pipeline drained -> control socket removed
//! -> demo workload stopped -> programs detached (dropping `Bpf`).
use std::{
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
    bpf::{self, loader::{ArgvCapture, Bpf, LoadOptions}, probe},
    control, host,
    identity::{self, IdentityConfig, Resolver},
    pipeline::{self, MapTables, Stats, enrich::Enricher, event::{AgentInfo, Body}, output::Show},
};

pub struct RunOptions {
    pub policy: Option<PathBuf>,
    pub events: Option<PathBuf>,
    pub show: Show,
    pub observe_all_connects: bool,
    pub ringbuf_bytes: u32,
    pub poll_interval: Duration,
    pub socket: PathBuf,
    pub demo: bool,
    pub argv: ArgvCapture,
}

/// The policy in force: parsed config, where it came from, its blake3 digest.
pub fn load_policy(path: Option<&Path>) -> anyhow::Result<(IdentityConfig, String, blake3::Hash)> {
    match path {
        None => {
            let c = identity::config::parse("<embedded default policy>", identity::DEFAULT_POLICY)?;
            Ok((c, "embedded default".into(), blake3::hash(identity::DEFAULT_POLICY.as_bytes())))
        }
        Some(p) => {
            let text = std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?;
            let c = identity::config::load_file(p)?;
            Ok((c, p.display().to_string(), blake3::hash(&text)))
        }
    }
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    host::check_privileges()?;
    let (config, policy_source, policy_digest) = load_policy(opts.policy.as_deref())?;
    let config = Arc::new(config);
    let tracefs = host::ensure_tracefs()?;
    let cgroup2 = host::cgroup2_mount()?;

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
    for h in &bpf.hooks {
        tracing::info!("{} -> {}: {}", h.program, h.attach_point, h.state);
    }
    let logger_task = spawn_kernel_logger(&mut bpf);

    let node: Arc<str> = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default().into();
    let mut enricher = Enricher::new(Resolver::new(config.clone(), "/proc"), node, opts.show == Show::All);
    let mut tables = MapTables { procs: maps.proc_table, cgroups: maps.cgroups };

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
        maps.events,
        maps.loss,
        tables,
        enricher,
        vec![(output, opts.show)],
        pipeline::Options {
            queue_capacity: 65_536,
            poll_interval: opts.poll_interval,
            loss_interval: Duration::from_secs(1),
            rescan_interval: Duration::from_secs(2),
            gc_every: 15,
            cgroup2: cgroup2.clone(),
        },
        stats.clone(),
    );

    let identities: Vec<(String, String)> = config.identities.iter().map(|i| (i.name.clone(), i.spiffe_id.clone())).collect();
    let path_strings: Vec<(String, String)> = paths.iter().map(|(a, b)| (a.to_string(), b.clone())).collect();
    let node = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let agent_event = |state: &'static str, reason: Option<String>| pipeline::event::Event {
        time: Enricher::wall_time(host::boottime_ns()),
        node: node.as_str().into(),
        body: Body::Agent {
            agent: AgentInfo {
                state,
                version: env!("CARGO_PKG_VERSION"),
                reason,
                object_blake3: Some(object_digest.clone()),
                policy: Some(format!("{} ({}) blake3:{}", config.name, policy_source, policy_digest.to_hex())),
                paths: path_strings.clone(),
            },
        },
    };
    let _ = running.input.send(pipeline::Input::Emit(Box::new(agent_event("started", None)))).await;

    let (stop_tx, stop_rx) = watch::channel(false);
    let info = Arc::new(control::StaticInfo {
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        started: Enricher::wall_time(host::boottime_ns()),
        object_blake3: object_digest.clone(),
        policy_name: config.name.clone(),
        policy_source: policy_source.clone(),
        policy_blake3: policy_digest.to_hex().to_string(),
        trust_domain: config.trust_domain.clone(),
        identities,
        hooks: bpf.hooks.clone(),
        paths: path_strings.clone(),
        cgroup2: cgroup2.display().to_string(),
    });
    let control_task = {
        let socket = opts.socket.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            if let Err(e) = control::serve(&socket, info, stats, stop_rx).await {
                tracing::warn!("control socket disabled: {e:#}");
            }
        })
    };

    let mut demo = match &demo_cgroup {
        Some(dir) => Some(start_demo(dir).await?),
        None => None,
    };
    tracing::info!("ready: attributing processes (Ctrl-C to stop)");

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let reason = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    tracing::info!("{reason}: stopping");
    if let Some(d) = demo.as_mut() {
        d.stop().await;
    }
    let _ = running.input.send(pipeline::Input::Emit(Box::new(agent_event("stopped", Some(reason.into()))))).await;
    running.shutdown().await;
    let _ = stop_tx.send(true);
    let _ = control_task.await;
    if let Some(dir) = &demo_cgroup {
        let _ = std::fs::remove_dir(dir);
    }
    logger_task.abort();
    drop(bpf);
    tracing::info!("stopped; all programs detached");
    Ok(())
}

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
    let script = format!(
        "while :; do uname -r >/dev/null; (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; sleep 2; done"
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
        "demo workload: pid {} in cgroup {} connecting to 127.0.0.1:{port} every 2 s",
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

