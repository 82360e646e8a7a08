//! Loading the embedded object and attaching the hook table.
//!
//! Each hook names the feature it needs and what happens without it: the
//! lineage tracepoints are required (no attribution without them), argv
//! capture falls back to `/proc/<pid>/cmdline`, and without the cgroup
//! sock_addr hooks there is no egress enforcement (said by `status` and
//! `probe`). [`Bpf`] owns the `Ebpf` and so every link: dropping it detaches
//! everything, leaving nothing in the kernel.
use std::{fs::File, path::Path};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupAttachMode, Program, TracePoint},
};
use serde::Serialize;
use zt_common::{Config, maps as M, programs as P};

use super::{
    OBJECT, btf,
    maps::{
        CgroupIdentities, ConfigMap, EgressAggregates, EventSource, ExecSelect, IdentityCounterMap, LossCounters, PolicyMaps, ProcTable,
        SettlerMap,
    },
    tracefs,
    unix::UnixPrograms,
};

/// An `EbpfLoader` with the tracepoint offsets set (or the object's defaults
/// when `offsets` is `None`, as the probe does: it attaches no lineage program).
/// Turns the kernel's BPF statistics (run time and count of every
/// program) on while the descriptor lives: every BPF program on the host
/// pays two clock reads per run meanwhile (`--bpf-stats`).
pub fn enable_stats() -> Result<std::os::fd::OwnedFd, aya::sys::SyscallError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
}

pub fn loader_with_offsets<'a>(offsets: Option<&'a [(&'static str, u32)]>) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    match offsets {
        Some(offsets) => {
            for (name, value) in offsets {
                loader.override_global(name, value, true);
            }
        }
        // The probe attaches no lineage program: keep its maps small.
        None => {
            loader.map_max_entries(M::PID_IDENTITY, 1);
        }
    }
    loader
}

/// `/proc/sys/kernel/pid_max` (the fast-path array's size), bounded.
fn pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(M::PID_IDENTITY_DEFAULT_CAPACITY)
        .clamp(1024, M::PID_IDENTITY_DEFAULT_CAPACITY)
}

pub struct LoadOptions<'a> {
    pub tracefs: &'a Path,
    /// Reuse (or create and pin) the state maps there.
    pub pins: Option<&'a super::pins::Pins>,
    /// Sizes of the telemetry and the security ring.
    pub ringbuf_bytes: (u32, u32),
    pub config: Config,
    pub argv: ArgvCapture,
}

#[derive(Debug, Clone, Serialize)]
pub struct HookStatus {
    pub program: &'static str,
    pub attach_point: String,
    /// "attached", or why not and what is used instead.
    pub state: String,
    pub attached: bool,
}

/// The maps user space works with, taken out of the `Ebpf`.
pub struct BpfMaps {
    pub proc_table: ProcTable,
    pub cgroups: CgroupIdentities,
    pub exec_select: ExecSelect,
    pub loss: LossCounters,
    pub config: ConfigMap,
    pub settler: SettlerMap,
    pub events: EventSource,
    pub policy: PolicyMaps,
    pub identity_counters: IdentityCounterMap,
    pub aggregates: EgressAggregates,
}

pub struct Bpf {
    pub(super) ebpf: Ebpf,
    /// Loaded beside aya (see [`super::unix`]), or why not.
    unix: Result<UnixPrograms, String>,
    /// The io_uring guard's offsets are known (tracefs and BTF).
    pub(super) uring_offsets: bool,
    /// Syscall telemetry: who has it on, its links.
    pub(super) telemetry: super::telemetry::TelemetryState,
    /// The file programs' offsets are known (BTF), or why not.
    file_offsets: Result<(), String>,
    /// The descriptor table's offsets (for [`P::OPEN_EXIT`]), or why not.
    fd_offsets: Result<(), String>,
    /// The LSM guards' globals are known (BTF), or why not.
    lsm_guard_globals: Result<(), String>,
    pub hooks: Vec<HookStatus>,
    /// Forwards the programs' aya-log records to `tracing`; aborted on drop.
    logger: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Bpf {
    fn drop(&mut self) {
        if let Some(l) = self.logger.take() {
            l.abort();
        }
    }
}

/// Where exec argv comes from (`zt-agent run --argv-capture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArgvCapture {
    /// In the kernel: from the exec'd image at `sched_process_exec` (needs
    /// kernel BTF), else from the syscall arguments at `sys_enter_execve[at]`.
    Kernel,
    /// Force the syscall-tracepoint path. Attaching any syscall tracepoint
    /// puts every syscall of every task on the traced slow path (+3% on
    /// fork+exec here, see BENCHMARKS.md).
    Syscalls,
    /// Read `/proc/<pid>/cmdline` after the exec event: no kernel cost,
    /// but processes that exit at once have no argv.
    Proc,
}

enum ArgvSource {
    Mm,
    Syscalls(String),
    Proc,
}

enum Need {
    Required,
    Optional { fallback: &'static str },
}

impl Bpf {
    /// Loads the object with layouts read from tracefs, sets the config and
    /// attaches the lineage hooks ([`Bpf::attach_network`] attaches the rest).
    /// Returns the maps separately so they can move to the tasks that use them.
    pub fn load(opts: &LoadOptions<'_>) -> anyhow::Result<(Bpf, BpfMaps)> {
        let mut offsets = tracefs::program_offsets(opts.tracefs).context("reading tracepoint layouts")?;
        // Kernel struct offsets come from BTF, read and parsed once here.
        let vmlinux = std::fs::read("/sys/kernel/btf/vmlinux").map_err(|e| format!("/sys/kernel/btf/vmlinux: {e}"));
        let btf = vmlinux.as_ref().map_err(String::clone).and_then(|d| btf::Btf::parse(d).map_err(|e| e.to_string()));
        // argv from the exec'd image needs three struct offsets from BTF;
        // without them the syscall tracepoints are the fallback.
        let argv_source = match opts.argv {
            ArgvCapture::Proc => ArgvSource::Proc,
            ArgvCapture::Syscalls => ArgvSource::Syscalls("--argv-capture syscalls".into()),
            ArgvCapture::Kernel => {
                match btf.as_ref().map_err(String::clone).and_then(|b| btf::argv_offsets(b).map_err(|e| e.to_string())) {
                    Ok(o) => {
                        offsets.extend(o);
                        ArgvSource::Mm
                    }
                    Err(e) => ArgvSource::Syscalls(format!("no BTF offsets ({e})")),
                }
            }
        };
        // exe/uid selectors decided in the kernel at exec need more (see lineage.rs).
        match btf.as_ref().map_err(String::clone).and_then(|b| btf::exe_offsets(b).map_err(|e| e.to_string())) {
            Ok(o) => offsets.extend(o),
            Err(e) => {
                tracing::warn!("exe, exeDigest and uid selectors are decided in user space after exec (a window): no BTF offsets ({e})")
            }
        }
        match btf.as_ref().map_err(String::clone).and_then(|b| btf::ctime_offsets(b).map_err(|e| e.to_string())) {
            Ok(o) => offsets.extend(o),
            Err(e) => {
                tracing::warn!("exeDigest selectors and exe globs are decided in user space after exec (a window): no BTF offsets ({e})")
            }
        }
        match btf.as_ref().map_err(String::clone).and_then(|b| btf::io_socket_offsets(b).map_err(|e| e.to_string())) {
            Ok(o) => offsets.extend(o),
            Err(e) => tracing::warn!("sockets made through io_uring are not guarded: no BTF offsets ({e})"),
        }
        // File and exec rules (LSM programs and the exec fallback) need the
        // exec selectors' offsets and these.
        let file_offsets = btf.as_ref().map_err(String::clone).and_then(|b| btf::file_offsets(b).map_err(|e| e.to_string()));
        match &file_offsets {
            Ok(o) => offsets.extend(o.iter().copied()),
            Err(e) => tracing::warn!("file and exec rules are not enforced: no BTF offsets ({e})"),
        }
        let fd_offsets = btf.as_ref().map_err(String::clone).and_then(|b| btf::fd_offsets(b).map_err(|e| format!("no BTF offsets ({e})")));
        if let Ok(o) = &fd_offsets {
            offsets.extend(o.iter().copied());
        }
        let fd_offsets = fd_offsets.map(drop);
        let lsm_guard_globals =
            btf.as_ref().map_err(String::clone).and_then(|b| btf::lsm_guard_globals(b).map_err(|e| format!("no BTF offsets ({e})")));
        if let Ok(o) = &lsm_guard_globals {
            offsets.extend(o.iter().copied());
        }
        let lsm_guard_globals = lsm_guard_globals.map(drop);
        // The Unix-socket programs read the address behind their context.
        let unix_offsets = btf.as_ref().map_err(String::clone).and_then(|b| btf::sock_addr_offsets(b).map_err(|e| e.to_string()));
        if let Ok(o) = &unix_offsets {
            offsets.extend(o.iter().copied());
        }
        let mut loader = loader_with_offsets(Some(&offsets));
        loader.map_max_entries(M::EVENTS, opts.ringbuf_bytes.0);
        loader.map_max_entries(M::SECURITY_EVENTS, opts.ringbuf_bytes.1);
        loader.map_max_entries(M::PID_IDENTITY, pid_max());
        if let Some(pins) = opts.pins {
            for name in M::pinned() {
                loader.map_pin_path(name, pins.map_path(name));
            }
        }
        let mut ebpf = loader.load(OBJECT).context("loading the eBPF object")?;
        // Before any map is taken out: they relocate against all of them.
        let unix = unix_offsets
            .map_err(|e| format!("no BTF offsets ({e})"))
            .and_then(|_| UnixPrograms::load(&ebpf, OBJECT).map_err(|e| format!("{e}")));

        let mut maps = BpfMaps {
            proc_table: ProcTable::new(take(&mut ebpf, M::PROC_TABLE)?, take(&mut ebpf, M::PID_IDENTITY)?)?,
            cgroups: CgroupIdentities::new(take(&mut ebpf, M::CGROUP_IDENTITY)?)?,
            loss: LossCounters::new(take(&mut ebpf, M::LOSS)?, take(&mut ebpf, M::SECURITY_LOSS)?)?,
            config: ConfigMap::new(take(&mut ebpf, M::CONFIG)?)?,
            settler: SettlerMap::new(take(&mut ebpf, M::SETTLER)?)?,
            events: EventSource::new(take(&mut ebpf, M::EVENTS)?, take(&mut ebpf, M::SECURITY_EVENTS)?)?,
            exec_select: ExecSelect::new(take(&mut ebpf, M::EXEC_SELECT)?, take(&mut ebpf, M::DIGEST_VERDICT)?)?,
            policy: PolicyMaps::new(
                take(&mut ebpf, M::NET_RULES)?,
                take(&mut ebpf, M::UNIX_RULES)?,
                take(&mut ebpf, M::FILE_RULES)?,
                take(&mut ebpf, M::IDENTITY_POLICY)?,
                take(&mut ebpf, M::POLICY_ACTIVE)?,
            )?,
            identity_counters: IdentityCounterMap::new(take(&mut ebpf, M::IDENTITY_COUNTERS)?)?,
            aggregates: EgressAggregates::new(take(&mut ebpf, M::EGRESS_AGG)?, take(&mut ebpf, M::IDENTITY_BUDGET)?)?,
        };
        maps.config.set(opts.config)?;

        let uring_offsets = {
            use zt_common::globals::{ABSENT, IO_SOCKET_DOMAIN, URING_REQ};
            offsets.iter().any(|(g, v)| *g == URING_REQ && *v != ABSENT) && offsets.iter().any(|(g, _)| *g == IO_SOCKET_DOMAIN)
        };
        let exec_offsets = offsets.iter().any(|(g, v)| *g == zt_common::globals::SB_DEV && *v != zt_common::globals::ABSENT);
        let file_offsets = match file_offsets {
            Ok(_) if exec_offsets => Ok(()),
            Ok(_) => Err("no BTF offsets for the exec'd file".to_string()),
            Err(e) => Err(format!("no BTF offsets ({e})")),
        };
        let mut bpf = Bpf {
            ebpf,
            unix,
            uring_offsets,
            telemetry: Default::default(),
            file_offsets,
            fd_offsets,
            lsm_guard_globals,
            hooks: Vec::new(),
            logger: None,
        };
        // Exit before fork before exec: a process is never forked into the
        // table after its exit was missed.
        for (prog, category, name, need) in [
            (P::EXIT, "sched", "sched_process_exit", Need::Required),
            (P::FORK, "sched", "sched_process_fork", Need::Required),
            (P::EXEC, "sched", "sched_process_exec", Need::Required),
            (
                P::CGROUP_ATTACH,
                "cgroup",
                "cgroup_attach_task",
                Need::Optional { fallback: "a process moved into an identity's cgroup is attributed at its next exec or rescan" },
            ),
            (P::EXECVE_ARGS, "syscalls", "sys_enter_execve", Need::Optional { fallback: "argv read from /proc" }),
            (P::EXECVEAT_ARGS, "syscalls", "sys_enter_execveat", Need::Optional { fallback: "argv read from /proc" }),
        ] {
            let at = format!("tracepoint/{category}/{name}");
            let skip = match (&argv_source, category) {
                (ArgvSource::Proc, "syscalls") => Some("not attached (--argv-capture proc); argv read from /proc".to_string()),
                (ArgvSource::Mm, "syscalls") => {
                    Some("not needed: argv read from the exec'd image at sched_process_exec (BTF offsets)".into())
                }
                (ArgvSource::Syscalls(why), "syscalls") => {
                    tracing::info!("argv capture falls back to syscall tracepoints: {why}");
                    None
                }
                _ => None,
            };
            let skip = skip.or_else(|| {
                let absent = offsets.iter().any(|(g, v)| *g == zt_common::globals::ATTACH_PID && *v == zt_common::globals::ABSENT);
                (prog == P::CGROUP_ATTACH && absent).then(|| "not attached: no cgroup_attach_task fields in tracefs; a process moved into an identity's cgroup is attributed at its next exec or rescan".to_string())
            });
            if let Some(state) = skip {
                bpf.hooks.push(HookStatus { program: prog, attach_point: at, state, attached: false });
                continue;
            }
            let r = bpf.attach_tracepoint(prog, category, name);
            bpf.record(prog, at, r, need)?;
        }
        Ok((bpf, maps))
    }

    /// Attaches the egress hooks. Called once the first policy is in the
    /// maps, so no connect is ever decided without one.
    pub fn attach_network(&mut self, cgroup2: &Path) -> anyhow::Result<()> {
        for prog in [P::CONNECT4, P::CONNECT6, P::SENDMSG4, P::SENDMSG6] {
            let r = self.attach_cgroup(prog, cgroup2);
            self.record(
                prog,
                format!("cgroup/{prog} at {}", cgroup2.display()),
                r,
                Need::Optional { fallback: "no egress enforcement or connect events" },
            )?;
        }
        for (prog, _) in super::unix::HOOKS {
            let r = match &mut self.unix {
                Ok(u) => u.attach(prog, cgroup2).map_err(anyhow::Error::from).context("attach"),
                Err(why) => Err(anyhow::anyhow!("not loaded: {why}")),
            };
            self.record(
                prog,
                format!("cgroup/{prog} at {}", cgroup2.display()),
                r,
                Need::Optional { fallback: "Unix-socket destinations not enforced (needs Linux >= 6.7 and BTF)" },
            )?;
        }
        Ok(())
    }

    /// Attaches the guards (see `zt-ebpf/src/guard.rs`): `sock_create` at
    /// the cgroup root, the BPF LSM guards where BPF LSM loads (`lsm`), and
    /// the tracepoints for the calls no LSM guard took. Called with
    /// [`Bpf::attach_network`]; each one missing (or off: `syscalls`
    /// false) is said by `status`.
    pub fn attach_guards(&mut self, cgroup2: &Path, syscalls: bool, lsm: bool) -> anyhow::Result<()> {
        let r = self.attach_cgroup(P::SOCK_CREATE, cgroup2);
        self.record(
            P::SOCK_CREATE,
            format!("cgroup/sock_create at {}", cgroup2.display()),
            r,
            Need::Optional { fallback: "inet socket kinds (raw, ICMP, SCTP, ...) not restricted" },
        )?;
        let r = self.attach_cgroup(P::GUARD_ROUTE, cgroup2);
        self.record(
            P::GUARD_ROUTE,
            format!("cgroup_skb/egress at {}", cgroup2.display()),
            r,
            Need::Optional { fallback: "route-changing options (setsockopt or per message) not dropped" },
        )?;
        let by_lsm = self.attach_lsm_guards(lsm)?;
        // Not a syscall tracepoint: no cost to other syscalls, so attached
        // whatever `--syscall-guards` says.
        let at = "tracepoint/io_uring/io_uring_submit_req".to_string();
        if by_lsm.contains(&P::GUARD_URING) {
            // Guarded at `socket_create`: nothing to attach.
        } else if !self.uring_offsets {
            let state = "not attached: no io_uring_submit_req fields in tracefs or no io_socket in BTF; sockets made through io_uring are not guarded".to_string();
            self.hooks.push(HookStatus { program: P::GUARD_URING, attach_point: at, state, attached: false });
        } else {
            let r = self.attach_tracepoint(P::GUARD_URING, "io_uring", "io_uring_submit_req");
            self.record(P::GUARD_URING, at, r, Need::Optional { fallback: "sockets made through io_uring are not guarded" })?;
        }
        if !by_lsm.contains(&P::GUARD_SIGNAL) {
            // Reads the target's tgid at its BTF offset (with the LSM guards').
            let r = match &self.lsm_guard_globals {
                Err(why) => Err(anyhow::anyhow!("{why}")),
                Ok(()) => self.attach_raw_tracepoint(P::GUARD_SIGNAL, "signal_generate"),
            };
            let fallback = "signals from agent identities to the agent are not guarded";
            self.record(P::GUARD_SIGNAL, "raw_tracepoint/signal_generate".into(), r, Need::Optional { fallback })?;
        }
        for (prog, tracepoints) in P::GUARD_TRACEPOINTS.iter().filter(|(p, _)| !by_lsm.contains(p)) {
            for name in *tracepoints {
                let at = format!("tracepoint/syscalls/{name}");
                if !syscalls {
                    let state = "off (--syscall-guards off): this call is not guarded".to_string();
                    self.hooks.push(HookStatus { program: prog, attach_point: at, state, attached: false });
                    continue;
                }
                let r = self.attach_tracepoint(prog, "syscalls", name);
                self.record(prog, at, r, Need::Optional { fallback: "this call is not guarded" })?;
            }
        }
        Ok(())
    }

    /// Attaches the BPF LSM guards where BPF LSM loads; returns the
    /// tracepoint guards they stand in for (see `P::LSM_GUARDS`). One that
    /// does not attach is said by `status`, and its tracepoints stand in.
    fn attach_lsm_guards(&mut self, lsm: bool) -> anyhow::Result<Vec<&'static str>> {
        let mut replaced = Vec::new();
        if !lsm {
            return Ok(replaced);
        }
        let btf = aya::Btf::from_sys_fs();
        for (prog, hook, stands_in) in P::LSM_GUARDS {
            let at = format!("lsm/{hook}");
            let r = match (&self.lsm_guard_globals, &btf) {
                (Err(why), _) => Err(anyhow::anyhow!("{why}")),
                (_, Err(e)) => Err(anyhow::anyhow!("kernel BTF: {e}")),
                (Ok(()), Ok(btf)) => self.attach_lsm(prog, hook, btf),
            };
            if r.is_ok() {
                replaced.extend_from_slice(stands_in);
            }
            self.record(prog, at, r, Need::Optional { fallback: "the syscall tracepoints guard these calls (SIGKILL)" })?;
        }
        Ok(replaced)
    }

    /// Attaches the BPF LSM file and exec programs where the kernel loads
    /// them (`lsm`: `zt-agent probe` found BPF LSM programs load). Returns
    /// whether `bprm_check_security` is attached (then the exec fallback at
    /// `sched_process_exec` must stand down: `config_flags::EXEC_LSM`).
    /// Each program that is not attached is said by `status`.
    pub fn attach_files(&mut self, lsm: bool, syscalls: bool) -> anyhow::Result<bool> {
        let btf = aya::Btf::from_sys_fs().map_err(|e| e.to_string());
        for hook in P::LSM_FILE_HOOKS {
            let at = format!("lsm/{hook}");
            let skip = match (&self.file_offsets, lsm, &btf) {
                (Err(why), _, _) => Some(format!("not loaded: {why}; file and exec rules are not enforced")),
                (_, false, _) => Some(
                    "not loaded: BPF LSM programs do not load on this kernel (see `zt-agent probe`); exec rules fall back to \
                     sched_process_exec + SIGKILL, file rules to fanotify and open_exit (see the file rules path)"
                        .to_string(),
                ),
                (_, _, Err(e)) => Some(format!("not loaded: kernel BTF: {e}")),
                _ => None,
            };
            if let Some(state) = skip {
                self.hooks.push(HookStatus { program: hook, attach_point: at, state, attached: false });
                continue;
            }
            let btf = btf.as_ref().expect("checked above");
            let started = std::time::Instant::now();
            let r = self.attach_lsm(hook, hook, btf);
            tracing::info!("lsm/{hook}: loaded and attached in {} ms", started.elapsed().as_millis());
            let fallback = if *hook == "bprm_check_security" {
                "exec rules fall back to sched_process_exec + SIGKILL"
            } else {
                "this file operation is not checked"
            };
            self.record(hook, at, r, Need::Optional { fallback })?;
        }
        if self.attached("file_open") {
            let btf = btf.as_ref().expect("file_open attached");
            let at = format!("fexit/{}", P::RENAME_EXIT_FUNCTION);
            let r = self.attach_fexit(P::RENAME_EXIT, P::RENAME_EXIT_FUNCTION, btf);
            self.record(P::RENAME_EXIT, at, r, Need::Optional { fallback: "file_open walks every open (no decision cache)" })?;
        } else {
            self.attach_open_exit(syscalls)?;
        }
        Ok(self.attached("bprm_check_security"))
    }

    /// Whether program `program` is attached (at any of its attach points).
    /// Run time and count of each loaded program (kernel BPF statistics:
    /// zero unless they are on, see [`enable_stats`]).
    pub fn program_stats(&self) -> Vec<crate::metrics::exposition::ProgramStats> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                let run_time_ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
                Some(crate::metrics::exposition::ProgramStats { program: name.to_string(), run_time_ns, run_count: info.run_count() })
            })
            .collect()
    }

    pub fn attached(&self, program: &str) -> bool {
        self.hooks.iter().any(|h| h.program == program && h.attached)
    }

    /// Where `file_open` is not attached: [`P::OPEN_EXIT`] at the return
    /// of each open syscall, for identities whose files default to deny.
    /// A syscall tracepoint, so only with the syscall guards (it puts every
    /// syscall on the traced path, which they already do).
    fn attach_open_exit(&mut self, syscalls: bool) -> anyhow::Result<()> {
        for name in P::OPEN_EXIT_TRACEPOINTS {
            let at = format!("tracepoint/syscalls/{name}");
            let skip = match (&self.file_offsets, &self.fd_offsets, syscalls) {
                (Err(why), _, _) | (_, Err(why), _) => Some(format!("not attached: {why}")),
                (_, _, false) => Some("off (--syscall-guards off)".to_string()),
                _ => None,
            };
            if let Some(why) = skip {
                let state = format!("{why}: identities whose files default to deny are not held to it here");
                self.hooks.push(HookStatus { program: P::OPEN_EXIT, attach_point: at, state, attached: false });
                continue;
            }
            let r = self.attach_tracepoint(P::OPEN_EXIT, "syscalls", name);
            self.record(
                P::OPEN_EXIT,
                at,
                r,
                Need::Optional { fallback: "opens through this call are not checked for default-deny identities" },
            )?;
        }
        Ok(())
    }

    /// Loads program `prog` for LSM hook `hook` and attaches it.
    fn attach_lsm(&mut self, prog: &str, hook: &str, btf: &aya::Btf) -> anyhow::Result<()> {
        let p: &mut aya::programs::Lsm = self.ebpf.program_mut(prog).with_context(|| format!("{prog} missing"))?.try_into()?;
        p.load(hook, btf).context("load")?;
        p.attach().context("attach")?;
        Ok(())
    }

    /// Loads program `prog` as an fexit of kernel function `function` and
    /// attaches it.
    fn attach_fexit(&mut self, prog: &str, function: &str, btf: &aya::Btf) -> anyhow::Result<()> {
        let p: &mut aya::programs::FExit = self.ebpf.program_mut(prog).with_context(|| format!("{prog} missing"))?.try_into()?;
        p.load(function, btf).context("load")?;
        p.attach().context("attach")?;
        Ok(())
    }

    /// Pins the links of every program of ours now loaded (see
    /// [`super::pins`]); returns how many.
    pub fn pin_links(&self, pins: &super::pins::Pins) -> anyhow::Result<usize> {
        let mut ids: Vec<(&str, u32)> = P::ALL
            .iter()
            .chain(P::LSM_FILE_HOOKS)
            .chain(P::LSM_GUARDS.iter().map(|g| &g.0))
            .filter_map(|name| Some((*name, self.ebpf.program(name)?.info().ok()?.id())))
            .collect();
        if let Ok(u) = &self.unix {
            ids.extend(u.ids());
        }
        Ok(pins.pin_links(&ids)?)
    }

    /// The kernel's id of loaded program `name` (aya's or a Unix-socket one).
    pub(super) fn program_id(&self, name: &str) -> Option<u32> {
        if let Some(p) = self.ebpf.program(name) {
            return p.info().ok().map(|i| i.id());
        }
        self.unix.as_ref().ok()?.ids().find(|(n, _)| *n == name).map(|(_, id)| id)
    }

    fn record(&mut self, program: &'static str, attach_point: String, r: anyhow::Result<()>, need: Need) -> anyhow::Result<()> {
        let (state, attached) = match (r, need) {
            (Ok(()), _) => ("attached".to_string(), true),
            (Err(e), Need::Required) => bail!("attaching {program} to {attach_point} (required): {e:#}"),
            (Err(e), Need::Optional { fallback }) => (format!("not attached ({e:#}); {fallback}"), false),
        };
        self.hooks.push(HookStatus { program, attach_point, state, attached });
        Ok(())
    }

    /// Loads `prog` (once: a guard program serves several tracepoints) and
    /// attaches it.
    fn attach_tracepoint(&mut self, prog: &str, category: &str, name: &str) -> anyhow::Result<()> {
        let p: &mut TracePoint = self.ebpf.program_mut(prog).with_context(|| format!("{prog} missing"))?.try_into()?;
        if p.fd().is_err() {
            p.load().context("load")?;
        }
        p.attach(category, name).context("attach")?;
        Ok(())
    }

    fn attach_raw_tracepoint(&mut self, prog: &str, name: &str) -> anyhow::Result<()> {
        let p: &mut aya::programs::RawTracePoint = self.ebpf.program_mut(prog).with_context(|| format!("{prog} missing"))?.try_into()?;
        p.load().context("load")?;
        p.attach(name).context("attach")?;
        Ok(())
    }

    /// Loads a cgroup program (sock_addr, sock or skb egress) and attaches it
    /// at the cgroup v2 root.
    fn attach_cgroup(&mut self, prog: &str, cgroup2: &Path) -> anyhow::Result<()> {
        match self.ebpf.program_mut(prog).with_context(|| format!("{prog} missing"))? {
            Program::CgroupSockAddr(p) => p.load(),
            Program::CgroupSock(p) => p.load(),
            Program::CgroupSkb(p) => p.load(),
            _ => bail!("{prog} is not a cgroup program"),
        }
        .context("load")?;
        self.reattach_cgroup(prog, cgroup2)
    }

    /// Attaches loaded cgroup program `prog` at the cgroup v2 root through a
    /// new link: at start, and as continuous verification's repair of a link
    /// detached from outside (the Unix-socket programs too).
    pub fn reattach_cgroup(&mut self, prog: &str, cgroup2: &Path) -> anyhow::Result<()> {
        if super::unix::HOOKS.iter().any(|(p, _)| *p == prog) {
            return match &mut self.unix {
                Ok(u) => Ok(u.attach(prog, cgroup2).context("attach")?),
                Err(why) => bail!("not loaded: {why}"),
            };
        }
        let root = File::open(cgroup2).with_context(|| format!("opening {}", cgroup2.display()))?;
        // aya attaches through a bpf_link on Linux >= 5.7; link attachments
        // always coexist with other programs at the same cgroup (the kernel
        // treats them as BPF_F_ALLOW_MULTI, and rejects the flag itself with
        // EINVAL), so "Single" evicts nothing that other software attached.
        let mode = CgroupAttachMode::Single;
        match self.ebpf.program_mut(prog).with_context(|| format!("{prog} missing"))? {
            Program::CgroupSockAddr(p) => p.attach(&root, mode).map(drop),
            Program::CgroupSock(p) => p.attach(&root, mode).map(drop),
            Program::CgroupSkb(p) => p.attach(&root, aya::programs::CgroupSkbAttachType::Egress, mode).map(drop),
            _ => bail!("{prog} is not a cgroup program"),
        }
        .context("attach")
    }

    /// Forwards aya-log records from the kernel programs to `tracing` (via
    /// `log`) on a task that lives as long as `self`. Needs a tokio runtime.
    pub fn forward_kernel_logs(&mut self) {
        let logger = aya_log::EbpfLogger::init(&mut self.ebpf).map_err(anyhow::Error::from).and_then(|l| {
            // SAFETY: the logger owns its map fd for as long as the AsyncFd owns the logger.
            unsafe { tokio::io::unix::AsyncFd::register(l) }.context("registering with tokio")
        });
        match logger {
            Ok(mut logger) => {
                self.logger = Some(tokio::spawn(async move {
                    loop {
                        let Ok(mut guard) = logger.readable_mut().await else { break };
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                }))
            }
            Err(e) => tracing::warn!("kernel log forwarding off: {e:#}"),
        }
    }
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name).with_context(|| format!("map {name} missing from the object"))
}
