//! `zt-agent run`: the daemon, in three steps so a test can start and stop
//! it in-process (mini-redis's `server::run` shape):
//!
//! - [`Agent::start`]: validate the policy, open the audit log (a log that
//!   contradicts its signed checkpoint stops here: [`crate::audit::log::OpenError::Integrity`]),
//!   probe, load, apply the first policy, seed, start the pipeline, attach
//!   the egress hooks, start the policy manager and the control socket.
//! - [`Agent::run_until`]: until the shutdown future resolves, or the audit
//!   thread dies (then the agent stops with an error: it cannot record).
//! - [`Agent::shutdown`]: demo stopped -> manager and control socket
//!   stopped -> `agent stopped` event -> pipeline drained (outputs closed,
//!   final audit checkpoint) -> programs detached (dropping `Bpf`).
//!
//! [`run`] is the three for the CLI, with SIGINT/SIGTERM as the shutdown.
mod demo;

use std::{
    collections::BTreeMap,
    future::Future,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use zt_common::{Config, config_flags};

use crate::{
    audit,
    bpf::{
        self,
        loader::{ArgvCapture, Bpf, BpfMaps, LoadOptions},
        pins::Pins,
        probe,
        tables::Counters,
    },
    control::{self, protocol},
    files,
    host::{self, boottime_ns, wall_time},
    identity::{
        Resolver,
        attribution::{self, Tables},
    },
    manager::{self, InForce, Manager, Outcome, Shared},
    pipeline::{
        self, Input, Stats,
        enrich::Enricher,
        event::{Adopted, AgentInfo, AgentState, Body, Event, PolicyAction},
        output::{JsonLines, Output, Show},
    },
    policy::{self, Bundle, RuleBook, conditions::Inputs, store},
    siem,
};

pub struct RunOptions {
    /// Policy files or directories; empty: the embedded default.
    pub policy: Vec<PathBuf>,
    pub events: Option<PathBuf>,
    pub show: Show,
    pub observe_all_connects: bool,
    pub ringbuf_bytes: u32,
    pub security_ringbuf_bytes: u32,
    /// Connect events per second per identity and CPU (0: unlimited).
    pub event_rate: u32,
    pub poll_interval: Duration,
    /// Between continuous-verification passes; zero: on demand only.
    pub verify_every: Duration,
    pub socket: PathBuf,
    pub demo: bool,
    pub argv: ArgvCapture,
    /// Attach the syscall-tracepoint guards (see `Bpf::attach_guards`).
    pub syscall_guards: bool,
    /// Pin programs and state under this bpffs directory, so enforcement
    /// outlives the daemon (see `bpf::pins`); None: everything is detached
    /// when the agent stops. Needs `state_dir` (identity ids are kept there).
    pub pin_dir: Option<PathBuf>,
    /// Where policy history is kept; None: in memory only.
    pub state_dir: Option<PathBuf>,
    pub node_labels: BTreeMap<String, String>,
    pub audit: audit::log::Config,
    /// SIEM destinations: security records from the audit log, each from
    /// its cursor (kept under `state_dir/siem`).
    pub syslog: Vec<siem::Destination>,
    /// The effective settings and their sources, for `status`.
    pub settings: Vec<crate::config::Setting>,
    /// Where `/metrics`, `/healthz` and `/readyz` listen; None: nowhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Turn the kernel's BPF statistics on (program run time and count in
    /// `/metrics`; every BPF program on the host pays two clock reads per run).
    pub bpf_stats: bool,
    /// Where Kubernetes pod metadata comes from; None: nowhere (`k8s`
    /// selectors match nothing, events carry no pod).
    pub kube: Option<crate::kube::client::Source>,
    /// The remote API over mutual TLS; None: off.
    pub api: Option<crate::api::Options>,
    /// The config file read, if any (protected like the policy files).
    pub config_file: Option<PathBuf>,
}

/// Queue into the audit thread (security-relevant events only).
const AUDIT_QUEUE_CAPACITY: usize = 65_536;

/// Queue between the ring-buffer reader and the enricher (events).
const QUEUE_CAPACITY: usize = 65_536;

/// How often rule conditions are re-evaluated (covers time windows).
const REEVALUATE_EVERY: Duration = Duration::from_secs(30);

/// Why the agent stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A signal or the caller's shutdown future (its name).
    Requested(String),
    /// The audit thread died: the agent cannot record security events.
    AuditFailed(String),
}

/// A started agent.
pub struct Agent {
    /// Shared with `model record` (the control socket), which attaches the
    /// syscall telemetry on demand.
    bpf: Arc<std::sync::Mutex<Bpf>>,
    running: pipeline::Running,
    /// Resolves when the manager's thread ends.
    manager: oneshot::Receiver<()>,
    control: JoinHandle<()>,
    stop: watch::Sender<bool>,
    audit_failure: watch::Receiver<Option<String>>,
    demo: Option<demo::Demo>,
    node: Arc<str>,
    object_digest: String,
    first_policy: Outcome,
    paths: Vec<(String, String)>,
    /// Where the programs stay pinned after the stop, if they do.
    pinned: Option<PathBuf>,
    /// The earlier run's pinned state this run adopted.
    adopted: Option<Adopted>,
    /// The file-rule fallback, where BPF LSM does not load.
    fanotify: Option<files::Fallback>,
    /// The metrics endpoint's server.
    metrics: Option<JoinHandle<()>>,
    /// Keeps the kernel's BPF statistics on while the agent runs.
    _bpf_stats: Option<std::os::fd::OwnedFd>,
    /// The Kubernetes pod watcher (it holds a pipeline sender).
    kube: Option<JoinHandle<()>>,
    /// Continuous verification's periodic passes (a pipeline sender too).
    verify: Option<JoinHandle<()>>,
    /// The remote API's server (a pipeline sender too).
    api: Option<JoinHandle<()>>,
}

/// The CLI's daemon: start, run until SIGINT/SIGTERM, shut down.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut agent = Agent::start(opts).await?;
    let signal = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT".to_string(),
            _ = term.recv() => "SIGTERM".to_string(),
        }
    };
    let reason = agent.run_until(signal).await;
    agent.shutdown(reason).await
}

impl Agent {
    pub async fn start(opts: RunOptions) -> anyhow::Result<Agent> {
        host::check_privileges()?;
        // Validate the policy before touching the kernel: a bad file is an
        // error with file:line:column and nothing is loaded.
        let bundle = if opts.policy.is_empty() { Bundle::embedded_default() } else { Bundle::read(&opts.policy)? };
        let parsed = bundle.parse()?;
        // Bound first: an address in use stops the start before anything is loaded.
        let metrics_listener = match opts.metrics_addr {
            Some(addr) => Some(crate::metrics::bind(addr).await?),
            None => None,
        };
        let api = match &opts.api {
            Some(a) => Some(crate::api::bind(a).await?),
            None => None,
        };
        let tracefs = host::ensure_tracefs()?;
        let cgroup2 = host::cgroup2_mount()?;
        let audit_writer = open_audit(&opts.audit)?;
        let (mut paths, lsm_loads) = check_kernel()?;
        let pins = prepare_pins(&opts)?;

        let (mut bpf, mut maps) = load_programs(&opts, &tracefs, pins.as_ref())?;
        let object_digest = bpf::object_digest().to_hex().to_string();
        tracing::info!("eBPF object blake3 {object_digest}");
        bpf.forward_kernel_logs();

        let node: Arc<str> = host::node_name().into();
        let (input_tx, input_rx) = mpsc::channel(QUEUE_CAPACITY);
        let shared = Shared {
            rulebook: Arc::new(RuleBook::default()),
            in_force: Arc::new(RwLock::new(InForce::default())),
            pipeline: input_tx.clone(),
            node: node.clone(),
        };
        // What stayed enforced while no agent ran (before this run's first policy).
        let adopted = match pins.as_ref().filter(|p| p.adopted()) {
            Some(_) => Some(Adopted { enforced_generation: policy::target::PolicyTarget::active(&maps.policy)?.generation }),
            None => None,
        };
        paths.push(("enforcement when the agent is not running", match (&pins, &adopted) {
            (Some(p), Some(a)) => format!(
                "pinned at {} (stays when the agent stops; `zt-agent uninstall` removes it); adopted from an earlier run that left policy generation {} in force",
                p.root().display(),
                a.enforced_generation
            ),
            (Some(p), None) => format!("pinned at {} (stays when the agent stops; `zt-agent uninstall` removes it)", p.root().display()),
            (None, _) => "none: nothing pinned (--no-pin), every program detaches when the agent stops".to_string(),
        }));
        if pins.is_some() {
            paths.push((
                "processes pending an exec verdict while the agent is not running",
                "egress refused (fail closed); the process, bpf(2) and socket-kind guards leave them alone: nobody can settle them, and a new agent binary is one of them".into(),
            ));
        }
        let stats = Arc::new(Stats::default());
        // Without BPF LSM, file rules are the fanotify responder's: it sees
        // each policy as the kernel maps switch to it.
        let fanotify = start_fanotify(&mut paths, lsm_loads, &maps.proc_table, &input_tx, &stats)?;
        let target: Box<dyn policy::target::PolicyTarget> = match &fanotify {
            Some(f) => f.target(Box::new(maps.policy)),
            None => Box::new(maps.policy),
        };
        let board = crate::anomaly::live::Board::default();
        let mut manager = new_manager(&opts, target, shared.clone(), adopted.is_some(), board.clone())?;
        // The first policy goes into the maps before the egress hooks attach.
        let first_policy = manager.apply_parsed_and_report(bundle, parsed, "start", PolicyAction::Applied).await?;
        let config = Arc::new(policy::identity_config(manager.current_policy().expect("just applied"), manager.ids()));

        let pods = opts.kube.as_ref().map(|_| Arc::new(crate::kube::Pods::default()));
        paths.push(("kubernetes pod metadata", kube_path(&opts, manager.current_policy().expect("just applied"))));
        let resolver = Resolver::new(config, "/proc").with_pods(pods.clone());
        let mut enricher = Enricher::new(resolver, cgroup2.clone(), node.clone(), opts.show == Show::All, shared.rulebook.clone());
        // Read by verification (agent processes) and the control socket (its peers).
        let proc_reader = Arc::new(maps.proc_table.reader()?);
        let mut tables = Tables { procs: Box::new(maps.proc_table), cgroups: Box::new(maps.cgroups), execs: Box::new(maps.exec_select) };
        // The demo cgroup must exist before seeding so the kernel learns its id.
        let demo_cgroup = if opts.demo { Some(demo::prepare_cgroup(&cgroup2)?) } else { None };
        let (seeded, attributed) = attribution::seed(enricher.resolver_mut(), &mut tables, &cgroup2);
        tracing::info!("seeded {seeded} running processes from /proc, {attributed} attributed");
        // This process too may have been held pending (an `exeDigest`
        // selector and a binary no daemon had hashed): settled first, then
        // named the daemon, from which point the guards hold pending
        // processes to their rules again.
        enricher.settle_pending(&mut tables);
        let recordings = enricher.recordings.clone();
        enricher.record_own_verdict(&mut tables);
        maps.settler.register_self()?;

        // Everything that can fail comes before the tasks start, so a failed
        // start leaves nothing running; the egress hooks attach after the
        // first policy is in the maps (their events wait in the ring).
        bpf.attach_network(&cgroup2)?;
        bpf.attach_guards(&cgroup2, opts.syscall_guards, lsm_loads)?;
        if bpf.attach_files(lsm_loads, opts.syscall_guards)? {
            maps.config.add_flags(zt_common::config_flags::EXEC_LSM)?;
        }
        if bpf.attached("file_open") {
            maps.config.add_flags(zt_common::config_flags::FILE_LSM)?;
        }
        // The cache only while renames are counted (they invalidate it).
        if bpf.attached(zt_common::programs::RENAME_EXIT) {
            maps.config.add_flags(zt_common::config_flags::OPEN_CACHE)?;
        }
        if fanotify.is_some()
            && let Some((_, line)) = paths.iter_mut().find(|(w, _)| *w == "file rules")
        {
            let open_exit = bpf.attached(zt_common::programs::OPEN_EXIT);
            *line = probe::file_rules_fallback(open_exit);
        }
        mark_degraded(&mut paths, &bpf.hooks);
        if let Some(pins) = &pins {
            // Ours first, then the previous run's go: no moment without a program.
            let pinned = bpf.pin_links(pins)?;
            let retired = pins.retire_previous()?;
            tracing::info!("{pinned} links pinned under {}; {retired} links of the previous run retired", pins.root().display());
        }
        for h in &bpf.hooks {
            tracing::info!("{} -> {}: {}", h.program, h.attach_point, h.state);
        }
        let events = events_writer(opts.events.as_deref())?;
        let bpf_stats = match opts.bpf_stats {
            true => Some(bpf::loader::enable_stats().context("turning on kernel BPF statistics (--bpf-stats)")?),
            false => None,
        };
        let tally = crate::metrics::tally::Tally::default();
        let hub = crate::api::stream::Hub::new(&stats.outputs);
        let api_monitor = api.as_ref().map(|b| b.monitor(hub.clone()));

        let audit_failure = audit_writer.failure();
        let audit_control = audit_writer.control();
        let siem = start_siem(&opts, &audit_control, &node)?;
        let siem_status = siem.statuses();
        // The audit log closes before the SIEM destinations: they send its
        // final checkpoint.
        let outputs: Vec<Box<dyn Output>> = vec![
            Box::new(JsonLines::spawn(events, opts.show, QUEUE_CAPACITY, stats.clone()).context("starting the event writer")?),
            Box::new(audit_writer),
            Box::new(siem),
            Box::new(tally.clone()),
            Box::new(hub.clone()),
        ];
        let kernel = pipeline::Kernel {
            ring: maps.events,
            counters: Counters { loss: maps.loss, decisions: maps.identity_counters },
            aggregates: maps.aggregates,
            tables,
        };
        let paths: Vec<(String, String)> = paths.into_iter().map(|(a, b)| (a.to_string(), b)).collect();
        let mut info = static_info(&bpf, &object_digest, &paths, &cgroup2, &opts.settings);
        info.metrics = metrics_listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| format!("http://{a}"));
        info.bpf_stats = bpf_stats.is_some();
        let info = Arc::new(info);
        let attachments = bpf.cgroup_attachments();
        let bpf = Arc::new(std::sync::Mutex::new(bpf));
        let (commands, commands_rx) = mpsc::channel(16);
        let verifier = crate::verify::Verifier::new(
            cgroup2.clone(),
            attachments,
            opts.verify_every,
            Some((shared.pipeline.clone(), node.clone())),
            crate::verify::Hooks {
                repair: Some(repair_attachment(bpf.clone(), cgroup2.clone(), pins.clone())),
                tables: Some(policy_tables(&commands)),
                audit: Some(audit_check(opts.audit.dir.clone())),
                processes: Some(process_binaries(proc_reader.clone(), shared.in_force.clone())),
            },
        );
        let telemetry = Arc::new(bpf::telemetry::Telemetry(bpf.clone()));
        // The detector turns telemetry on for the identities whose policy
        // asks for it, when the pipeline takes the first policy's identities.
        enricher.anomaly = Some(crate::anomaly::live::Watch {
            detector: crate::anomaly::live::Detector::new(opts.state_dir.as_ref().map(|d| d.join("anomaly")), board.clone()),
            telemetry: telemetry.clone(),
            responder: Arc::new(Responses { commands: commands.clone() }),
        });
        let running = pipeline::spawn((input_tx, input_rx), kernel, enricher, outputs, pipeline_options(&opts, &cgroup2), stats.clone());

        let (stop, stop_rx) = watch::channel(false);
        let manager = spawn_manager(manager, commands_rx, stop_rx.clone())?;
        let recorder = crate::anomaly::record::Recorder { switch: telemetry, recordings };
        let kube_status = Arc::new(std::sync::Mutex::new(crate::kube::client::Status::default()));
        let state = control::State {
            info,
            stats,
            in_force: shared.in_force.clone(),
            commands,
            audit: Some(audit_control),
            siem: siem_status,
            fanotify: fanotify.as_ref().map(files::Fallback::counters),
            recorder: Some(recorder),
            anomaly: board,
            kube: opts.kube.is_some().then(|| kube_status.clone()),
            verifier: Some(verifier.clone()),
            api: api_monitor.clone(),
            processes: Some(proc_reader),
        };
        let verify = (!opts.verify_every.is_zero()).then(|| tokio::spawn(crate::verify::run(verifier, opts.verify_every, stop_rx.clone())));
        let metrics = metrics_listener.map(|listener| {
            let sources = crate::metrics::Sources { control: state.clone(), tally, bpf: bpf.clone(), bpf_stats: bpf_stats.is_some() };
            tokio::spawn(crate::metrics::serve(listener, sources, stop_rx.clone()))
        });
        let api = api.zip(api_monitor).map(|(bound, monitor)| {
            let ctx = crate::api::Context { control: state.clone(), monitor, pipeline: shared.pipeline.clone(), node: node.clone() };
            tokio::spawn(crate::api::serve(bound, ctx, stop_rx.clone()))
        });
        let kube = match (opts.kube.clone(), pods) {
            (Some(source), Some(pods)) => {
                let pipeline = shared.pipeline.clone();
                let changed: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                    // Full: the periodic rescan (2 s) catches up.
                    let _ = pipeline.try_send(Input::Rescan);
                });
                Some(tokio::spawn(crate::kube::client::run(source, pods, kube_status, changed, stop_rx.clone())))
            }
            _ => None,
        };
        let control = start_control(opts.socket.clone(), state, stop_rx);

        let pinned = pins.as_ref().map(|p| p.root().to_path_buf());
        let mut agent = Agent {
            bpf,
            running,
            manager,
            control,
            stop,
            audit_failure,
            demo: None,
            node,
            object_digest,
            first_policy,
            paths,
            pinned,
            adopted,
            fanotify,
            metrics,
            _bpf_stats: bpf_stats,
            kube,
            verify,
            api,
        };
        agent.emit(agent.agent_event(AgentState::Started, None)).await;
        if let Some(dir) = demo_cgroup {
            match demo::Demo::start(dir).await {
                Ok(d) => agent.demo = Some(d),
                Err(e) => {
                    let why = format!("the demo workload did not start: {e:#}");
                    let _ = agent.shutdown(StopReason::Requested(why)).await;
                    return Err(e);
                }
            }
        }
        host::release_free_memory();
        tracing::info!("ready: attributing processes and enforcing policy (Ctrl-C to stop)");
        Ok(agent)
    }

    /// Runs until `shutdown` resolves (with its name) or the audit thread dies.
    pub async fn run_until(&mut self, shutdown: impl Future<Output = String>) -> StopReason {
        let failed = self.audit_failure.wait_for(Option::is_some);
        tokio::select! {
            why = shutdown => StopReason::Requested(why),
            r = failed => StopReason::AuditFailed(match r {
                Ok(v) => v.clone().unwrap_or_default(),
                Err(_) => "the audit thread is gone".into(),
            }),
        }
    }

    /// Stops everything in order; an error when the agent stops because it
    /// failed (so the process exits non-zero).
    pub async fn shutdown(mut self, reason: StopReason) -> anyhow::Result<()> {
        let text = match &reason {
            StopReason::Requested(s) => s.clone(),
            StopReason::AuditFailed(why) => format!("audit log failed: {why}"),
        };
        tracing::info!("{text}: stopping");
        if let Some(d) = self.demo.as_mut() {
            d.stop().await;
        }
        let _ = self.stop.send(true);
        if tokio::time::timeout(MANAGER_STOP, &mut self.manager).await.is_err() {
            tracing::warn!("the policy manager did not stop within {MANAGER_STOP:?}; stopping without it");
        }
        let _ = (&mut self.control).await;
        if let Some(m) = self.metrics.take() {
            let _ = m.await;
        }
        if let Some(k) = self.kube.take() {
            let _ = k.await;
        }
        if let Some(v) = self.verify.take() {
            let _ = v.await;
        }
        if let Some(a) = self.api.take() {
            let _ = a.await;
        }
        self.emit(self.agent_event(AgentState::Stopped, Some(text.clone()))).await;
        let Agent { bpf, running, demo, pinned: self_pinned, fanotify, .. } = self;
        // Its marks go with it; it holds a sender the pipeline waits for.
        drop(fanotify);
        running.shutdown().await;
        if let Some(d) = demo {
            d.remove_cgroup();
        }
        drop(bpf);
        match &self_pinned {
            Some(dir) => {
                tracing::info!("stopped; the programs stay attached, pinned at {} (`zt-agent uninstall` removes them)", dir.display())
            }
            None => tracing::info!("stopped; all programs detached"),
        }
        match reason {
            StopReason::Requested(_) => Ok(()),
            StopReason::AuditFailed(_) => bail!("{text}; the agent stopped because it can no longer record security events"),
        }
    }

    async fn emit(&self, ev: Event) {
        let _ = self.running.input.send(Input::Emit(Box::new(ev))).await;
    }

    fn agent_event(&self, state: AgentState, reason: Option<String>) -> Event {
        Event {
            time: wall_time(boottime_ns()),
            node: self.node.clone(),
            body: Body::Agent {
                agent: AgentInfo {
                    state,
                    version: env!("CARGO_PKG_VERSION"),
                    reason,
                    object_blake3: Some(self.object_digest.clone()),
                    policy: Some(format!("v{} blake3:{}", self.first_policy.version, self.first_policy.digest)),
                    paths: self.paths.clone(),
                    pinned: self.pinned.as_ref().map(|p| p.display().to_string()),
                    adopted: (state == AgentState::Started).then_some(self.adopted.clone()).flatten(),
                },
            },
        }
    }
}

/// Probes the kernel, logs which path each capability uses, and refuses to
/// start without tracepoints or ring buffers.
/// The enforcement paths, and whether BPF LSM programs load.
fn check_kernel() -> anyhow::Result<(Vec<(&'static str, String)>, bool)> {
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
    Ok((paths, caps.has(probe::names::LSM)))
}

/// The enforcement paths say what the kernel can run; a hook of theirs that
/// did not attach (refused by the verifier, or turned off) makes the line
/// say so, so `status` never claims a guard that is not in force.
fn mark_degraded(paths: &mut [(&'static str, String)], hooks: &[bpf::loader::HookStatus]) {
    use zt_common::programs as P;
    let file_hooks: Vec<&str> = P::LSM_FILE_HOOKS.iter().copied().filter(|h| *h != "bprm_check_security").collect();
    let owners: [(&str, &[&str]); 5] = [
        ("network enforcement", &[P::CONNECT4, P::CONNECT6, P::SENDMSG4, P::SENDMSG6, P::CONNECT_UNIX, P::SENDMSG_UNIX]),
        ("socket kinds", &[P::SOCK_CREATE, P::GUARD_ROUTE, P::GUARD_SOCKET, P::GUARD_URING, P::GUARD_LSM_SOCKET]),
        (
            "process takeover, bpf(2)",
            &[P::GUARD_PTRACE, P::GUARD_PROCESS_VM, P::GUARD_PIDFD_GETFD, P::GUARD_BPF, P::GUARD_LSM_PTRACE, P::GUARD_LSM_BPF],
        ),
        ("file rules", &file_hooks),
        ("exec rules", &["bprm_check_security"]),
    ];
    for (what, programs) in owners {
        let missing: Vec<String> = hooks
            .iter()
            .filter(|h| programs.contains(&h.program) && !h.attached)
            .map(|h| format!("{} at {}", h.program, h.attach_point))
            .collect();
        // File and exec lines claim the LSM only where it loads (else they
        // name their fallback, which these hooks are not).
        let claims = |line: &str| !line.contains("NOT ENFORCED") && !line.contains("(fallback");
        if let Some((_, line)) = paths.iter_mut().find(|(w, _)| *w == what)
            && !missing.is_empty()
            && claims(line)
        {
            line.push_str(&format!("; DEGRADED, not in force: {} (see hooks)", missing.join(", ")));
        }
    }
}

/// Starts the fanotify file-rule fallback where BPF LSM does not load and
/// the kernel has permission events (`paths` says so); if it cannot start,
/// the file-rules line says NOT ENFORCED and why.
fn start_fanotify(
    paths: &mut [(&'static str, String)],
    lsm_loads: bool,
    procs: &bpf::maps::ProcTable,
    input: &mpsc::Sender<Input>,
    stats: &Stats,
) -> anyhow::Result<Option<files::Fallback>> {
    let Some((_, line)) = paths.iter_mut().find(|(w, _)| *w == "file rules") else { return Ok(None) };
    if lsm_loads || !line.starts_with(probe::FILE_RULES_FANOTIFY) {
        return Ok(None);
    }
    let dropped = stats.outputs.register("fanotify_events_dropped");
    match files::Fallback::start(Box::new(procs.reader()?), input.clone(), dropped) {
        Ok(f) => Ok(Some(f)),
        Err(e) => {
            *line = format!("NOT ENFORCED: the fanotify fallback did not start: {e:#}");
            tracing::error!("file rules are not enforced: {e:#}");
            Ok(None)
        }
    }
}

/// The pin directory made ready (see `bpf::pins`), or None without pinning.
fn prepare_pins(opts: &RunOptions) -> anyhow::Result<Option<Pins>> {
    let Some(dir) = &opts.pin_dir else { return Ok(None) };
    anyhow::ensure!(opts.state_dir.is_some(), "pinning needs a state directory (identity ids are kept there)");
    let pins = Pins::prepare(dir, bpf::OBJECT)?;
    if pins.adopted() {
        tracing::warn!(
            "adopting the pinned state at {}: enforcement carried on while no daemon ran (an unclean stop, or an upgrade)",
            pins.root().display()
        );
    }
    Ok(Some(pins))
}

fn load_programs(opts: &RunOptions, tracefs: &Path, pins: Option<&Pins>) -> anyhow::Result<(Bpf, BpfMaps)> {
    let flags = if opts.observe_all_connects { config_flags::OBSERVE_ALL_CONNECTS } else { 0 };
    Bpf::load(&LoadOptions {
        tracefs,
        pins,
        ringbuf_bytes: (opts.ringbuf_bytes, opts.security_ringbuf_bytes),
        config: Config {
            flags,
            wakeup_bytes: opts.ringbuf_bytes / 4,
            security_wakeup_bytes: opts.security_ringbuf_bytes / 4,
            event_rate: opts.event_rate,
        },
        argv: opts.argv,
    })
}

/// How long shutdown waits for the policy manager to finish what it does.
const MANAGER_STOP: Duration = Duration::from_secs(5);

/// Runs the policy manager on its own thread and single-threaded runtime:
/// whatever it does (a large bundle, Rego conditions at their budget), it
/// never holds a worker that the pipeline, the control socket or signal
/// handling need. The receiver resolves when the thread ends.
fn spawn_manager(
    m: Manager,
    commands: mpsc::Receiver<manager::Command>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<oneshot::Receiver<()>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("building the policy manager's runtime")?;
    let (done, finished) = oneshot::channel();
    std::thread::Builder::new()
        .name("zt-policy".into())
        .spawn(move || {
            rt.block_on(manager::run(m, commands, stop, REEVALUATE_EVERY));
            let _ = done.send(());
        })
        .context("starting the policy manager thread")?;
    Ok(finished)
}

/// The policy manager over `target`, with history under `--state-dir`
/// and conditions evaluated against the clock and the node labels.
/// Identity ids are kept there too: `adopt` (pinned tables that carry ids)
/// takes them from the last run, which must have left them.
fn new_manager(
    opts: &RunOptions,
    target: Box<dyn policy::target::PolicyTarget>,
    shared: Shared,
    adopt: bool,
    board: crate::anomaly::live::Board,
) -> anyhow::Result<Manager> {
    let store = store::Store::open(opts.state_dir.as_ref().map(|d| d.join("policy-history")))?;
    let labels = opts.node_labels.clone();
    // `input.identity.risk`: the anomaly detector's live risk per identity.
    let inputs = Box::new(move || Inputs { risk: board.risks(), ..Inputs::current(labels.clone()) });
    let ids_file = opts.state_dir.as_ref().map(|d| d.join("identity-ids.json"));
    let ids = match (&ids_file, adopt) {
        (Some(f), true) => policy::IdRegistry::load(f).context(
            "the pinned tables hold identity ids from an earlier run; run `zt-agent uninstall` or start with the state directory that run used",
        )?,
        _ => policy::IdRegistry::default(),
    };
    let manager = Manager::new(opts.policy.clone(), store, target, inputs, shared).with_ids(ids, ids_file).with_protected(protected(opts));
    Ok(match &opts.state_dir {
        Some(d) => manager.with_quarantine_file(d.join("quarantined.json"))?,
        None => manager,
    })
}

/// What no agent identity may touch (see `policy::protect`): the agent's
/// state, audit, pin, policy and control-socket directories, config file
/// and binary; its keys (not read either); its control socket.
fn protected(opts: &RunOptions) -> policy::protect::Protected {
    let mut p = policy::protect::Protected::default();
    let dirs = [opts.state_dir.as_deref(), Some(opts.audit.dir.as_path()), opts.pin_dir.as_deref(), opts.socket.parent()];
    for path in dirs.into_iter().flatten().chain(opts.policy.iter().map(PathBuf::as_path)).chain(opts.config_file.as_deref()) {
        p.add(path, false);
    }
    if let Ok(exe) = std::env::current_exe() {
        p.add(&exe, false);
    }
    for key in [Some(opts.audit.key.as_path()), opts.api.as_ref().map(|a| a.key.as_path())].into_iter().flatten() {
        p.add(key, true);
    }
    p.sockets.push(opts.socket.to_string_lossy().into_owned());
    p
}

/// Anomaly responses, carried out for the pipeline: quarantine and risk
/// through the policy manager (without waiting: the pipeline never blocks
/// on it), kill by signal.
struct Responses {
    commands: mpsc::Sender<manager::Command>,
}

impl crate::anomaly::live::Responder for Responses {
    fn quarantine(&self, identity: &str, reason: &str) -> Result<(), String> {
        let cmd = manager::Command::Quarantine { identity: identity.into(), on: true, reason: reason.into(), reply: None };
        self.commands.try_send(cmd).map_err(|e| format!("the policy manager did not take the request ({e})"))
    }

    fn kill(&self, tgid: u32) -> Result<(), String> {
        let pid = nix::unistd::Pid::from_raw(tgid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).map_err(|e| e.desc().to_string())
    }

    fn risk_changed(&self) {
        // A full queue: the periodic re-evaluation picks the risk up.
        let _ = self.commands.try_send(manager::Command::Reevaluate);
    }
}

/// The enforcement-path line of the pod metadata source.
fn kube_path(opts: &RunOptions, policy: &policy::Policy) -> String {
    let k8s = policy.identities.iter().flat_map(|i| i.selectors.iter()).any(|s| s.k8s.is_some());
    match &opts.kube {
        Some(s) => format!(
            "the API server at {} ({}): list and watch, pods matched to cgroups by pod UID or container id",
            s.api,
            s.node.as_deref().map_or_else(|| "every node's pods".to_string(), |n| format!("node {n}'s pods"))
        ),
        None if k8s => "NONE: not in a cluster and no --kube-api; the policy's k8s selectors match nothing".into(),
        None => "none (not in a cluster; no --kube-api)".into(),
    }
}

fn pipeline_options(opts: &RunOptions, cgroup2: &Path) -> pipeline::Options {
    pipeline::Options {
        poll_interval: opts.poll_interval,
        loss_interval: Duration::from_secs(1),
        rescan_interval: Duration::from_secs(2),
        gc_every: 15,
        cgroup2: cgroup2.to_path_buf(),
    }
}

/// What `status` reports that does not change while the agent runs.
fn static_info(
    bpf: &Bpf,
    object_digest: &str,
    paths: &[(String, String)],
    cgroup2: &Path,
    settings: &[crate::config::Setting],
) -> protocol::StaticInfo {
    let hook = |h: &bpf::loader::HookStatus| protocol::Hook {
        program: h.program.into(),
        attach_point: h.attach_point.clone(),
        state: h.state.clone(),
        attached: h.attached,
    };
    protocol::StaticInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        started: wall_time(boottime_ns()).to_string(),
        object_blake3: object_digest.to_string(),
        hooks: bpf.hooks.iter().map(hook).collect(),
        paths: paths.to_vec(),
        cgroup2: cgroup2.display().to_string(),
        config: settings.to_vec(),
        metrics: None,
        bpf_stats: false,
    }
}

/// The SIEM destinations' threads, reading the audit log from their cursors.
fn start_siem(opts: &RunOptions, audit: &audit::writer::Control, node: &str) -> anyhow::Result<siem::Siem> {
    let cursor_dir = match &opts.state_dir {
        Some(d) => d.join("siem"),
        None => opts.audit.dir.with_extension("siem-cursors"),
    };
    let ctx = siem::Context {
        audit_dir: opts.audit.dir.clone(),
        cursor_dir,
        origin: audit.status().origin,
        node: node.to_string(),
        version: env!("CARGO_PKG_VERSION"),
        readers: opts.audit.readers.clone(),
    };
    siem::Siem::start(&opts.syslog, ctx)
}

/// Where the JSON-lines events go: appended to `path`, or stdout. The
/// writer flushes whenever its queue runs empty, so the buffer's size only
/// matters under load, where fewer, larger writes cost less (8 KiB: 450 ns
/// per 600-byte event to ext4 here, 256 KiB: 200 ns).
fn events_writer(path: Option<&Path>) -> anyhow::Result<Box<dyn Write + Send>> {
    const BUFFER: usize = 256 * 1024;
    Ok(match path {
        Some(p) => Box::new(std::io::BufWriter::with_capacity(
            BUFFER,
            std::fs::OpenOptions::new().create(true).append(true).open(p).with_context(|| format!("opening {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::with_capacity(BUFFER, std::io::stdout())),
    })
}

/// Continuous verification's repair: attach the program again through a
/// new link, and pin that link (the detached one's pin stays, harmless).
fn repair_attachment(bpf: Arc<std::sync::Mutex<Bpf>>, cgroup2: PathBuf, pins: Option<Pins>) -> crate::verify::Repair {
    Box::new(move |a| {
        let mut b = bpf.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        b.reattach_cgroup(a.program, &cgroup2).map_err(|e| format!("{e:#}"))?;
        if let Some(p) = &pins {
            b.pin_links(p).map_err(|e| format!("attached again, but its link is not pinned: {e:#}"))?;
        }
        Ok(())
    })
}

/// Binds the control socket now (so `status` answers once `started` is
/// out) and serves it on a task; without it the agent runs on, logged.
/// The processes of agent identities (the kernel's process table) and the
/// file each runs against the file at its path, looked up in the
/// process's own mount namespace (`/proc/<pid>/root`): a container's path
/// is its own. A process gone meanwhile is skipped.
fn process_binaries(procs: Arc<bpf::maps::ProcReader>, in_force: Arc<RwLock<InForce>>) -> crate::verify::ProcessBinaries {
    use std::os::unix::fs::MetadataExt as _;
    Box::new(move || {
        let list = procs.attributed();
        let names = in_force.read().expect("poisoned").ids.clone();
        let file = |m: std::fs::Metadata| (m.dev(), m.ino());
        Ok(list
            .into_iter()
            .filter_map(|(pid, id)| {
                let link = format!("/proc/{pid}/exe");
                let exe = std::fs::read_link(&link).ok()?.to_string_lossy().into_owned();
                let running = std::fs::metadata(&link).ok().map(file)?;
                let path = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
                let at_path = std::fs::metadata(format!("/proc/{pid}/root{path}")).map(file).map_err(|e| e.to_string());
                let identity = names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
                Some(crate::verify::RunningBinary { pid, identity, exe, running, at_path })
            })
            .collect())
    })
}

/// The audit log verified in full, with the log's own keys (as `zt-agent
/// audit verify DIR` does). A failure is read twice: the writer appends
/// while it reads, and only damage fails both times.
fn audit_check(dir: PathBuf) -> crate::verify::AuditCheck {
    Box::new(move || {
        let opts = audit::verify::Options { keys: vec![], trusted: vec![] };
        let verify = || audit::verify::verify_dir(&dir, &opts);
        let r = verify().or_else(|_| verify()).map_err(|f| f.to_string())?;
        Ok(format!(
            "audit log {}: records {}..{} verified, signed up to {} ({} after the last checkpoint)",
            dir.display(),
            r.first_index,
            r.first_index + r.records,
            r.latest.map_or(0, |c| c.size),
            r.unsigned
        ))
    })
}

/// The policy tables' check and repair, asked of the policy manager from a
/// verification pass (a blocking thread).
fn policy_tables(commands: &mpsc::Sender<manager::Command>) -> crate::verify::PolicyTables {
    const GONE: &str = "the policy manager is gone (the agent is stopping)";
    let (check, reinstall) = (commands.clone(), commands.clone());
    crate::verify::PolicyTables {
        check: Box::new(move || {
            let (reply, rx) = oneshot::channel();
            check.blocking_send(manager::Command::CheckMaps { reply }).map_err(|_| GONE)?;
            rx.blocking_recv().map_err(|_| GONE)?
        }),
        reinstall: Box::new(move || {
            let (reply, rx) = oneshot::channel();
            reinstall.blocking_send(manager::Command::Reinstall { reply }).map_err(|_| GONE)?;
            match rx.blocking_recv().map_err(|_| GONE)? {
                Ok(o) => Ok(format!("the policy in force installed again: generation {} now", o.generation)),
                Err(e) => Err(crate::error::chain(&e)),
            }
        }),
    }
}

fn start_control(socket: PathBuf, state: control::State, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    match control::bind(&socket) {
        Ok(listener) => tokio::spawn(async move { control::serve(listener, &socket, state, stop).await }),
        Err(e) => {
            tracing::warn!("control socket disabled: {}", crate::error::chain(&e));
            tokio::spawn(async {})
        }
    }
}

/// Opens (recovering) the audit log and starts its thread. An integrity
/// violation is returned as [`audit::log::OpenError`] for the exit status.
fn open_audit(cfg: &audit::log::Config) -> anyhow::Result<audit::writer::Writer> {
    let (log, report) = audit::log::AuditLog::open(cfg.clone()).map_err(|e| match e {
        e @ audit::log::OpenError::Integrity { .. } => anyhow::Error::new(e),
        e => anyhow::Error::new(e).context(format!("opening the audit log in {}", cfg.dir.display())),
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
    audit::writer::spawn(log, &cfg.dir, AUDIT_QUEUE_CAPACITY).context("starting the audit thread")
}

/// The `--ringbuf-size` (`flag`) check: a power of two of at least a page.
pub fn valid_ringbuf_size(flag: &str, bytes: u32) -> anyhow::Result<u32> {
    let page = 4096;
    if bytes < page || !bytes.is_power_of_two() {
        bail!("{flag} must be a power of two of at least {page} bytes (got {bytes})");
    }
    Ok(bytes)
}
