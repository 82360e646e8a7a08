//! Syscall telemetry for the anomaly model: the `TELEMETRY` switch per
//! identity, `sys_telemetry` (raw tracepoint `sys_enter`) and
//! `uring_telemetry` attached only while some identity has it on, and the
//! calls still in the per-CPU batches (`SYSCALL_BATCH`).
//!
//! [`Telemetry`] implements `anomaly::record::TelemetrySwitch` over the
//! shared [`Bpf`].
use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use aya::{
    maps::{Array, PerCpuArray},
    programs::{RawTracePoint, TracePoint, raw_trace_point::RawTracePointLinkId, trace_point::TracePointLinkId},
};
use zt_common::{maps as M, programs as P, syscalls::SyscallBatch};

use super::loader::Bpf;
use crate::anomaly::record::{TelemetrySwitch, TelemetryUser};

/// The links while telemetry runs, and who has it on for whom.
#[derive(Default)]
pub struct TelemetryState {
    on: BTreeSet<(u32, TelemetryUser)>,
    links: Option<(RawTracePointLinkId, Option<TracePointLinkId>)>,
}

impl Bpf {
    /// Turns `identity`'s telemetry on or off for `user` (it stays on
    /// while another user has it on); attaches the programs when the first
    /// identity turns it on, detaches them when the last turns it off.
    pub fn set_telemetry(&mut self, identity: u32, user: TelemetryUser, on: bool) -> anyhow::Result<()> {
        let ebpf = &mut self.ebpf;
        let t = &mut self.telemetry;
        if on {
            t.on.insert((identity, user));
        } else {
            t.on.remove(&(identity, user));
        }
        let any = t.on.iter().any(|(id, _)| *id == identity);
        let mut map: Array<_, u32> = Array::try_from(ebpf.map_mut(M::TELEMETRY).context("TELEMETRY missing")?)?;
        map.set(identity, u32::from(any), 0).with_context(|| format!("TELEMETRY[{identity}]"))?;
        match (t.on.is_empty(), t.links.take()) {
            (false, None) => {
                let sys: &mut RawTracePoint = ebpf.program_mut(P::SYS_TELEMETRY).context("sys_telemetry missing")?.try_into()?;
                if sys.fd().is_err() {
                    sys.load().context("loading sys_telemetry")?;
                }
                let sys_link = sys.attach("sys_enter").context("attaching sys_telemetry to raw_tracepoint/sys_enter")?;
                // io_uring submissions need the tracepoint's opcode offset.
                let uring = if self.uring_offsets {
                    let u: &mut TracePoint = ebpf.program_mut(P::URING_TELEMETRY).context("uring_telemetry missing")?.try_into()?;
                    if u.fd().is_err() {
                        u.load().context("loading uring_telemetry")?;
                    }
                    match u.attach("io_uring", "io_uring_submit_req") {
                        Ok(l) => Some(l),
                        Err(e) => {
                            tracing::warn!("io_uring submissions are not in the syscall telemetry: {e}");
                            None
                        }
                    }
                } else {
                    None
                };
                t.links = Some((sys_link, uring));
            }
            (true, Some((sys_link, uring))) => {
                let sys: &mut RawTracePoint = ebpf.program_mut(P::SYS_TELEMETRY).context("sys_telemetry missing")?.try_into()?;
                sys.detach(sys_link)?;
                if let Some(l) = uring {
                    let u: &mut TracePoint = ebpf.program_mut(P::URING_TELEMETRY).context("uring_telemetry missing")?.try_into()?;
                    u.detach(l)?;
                }
            }
            (_, links) => t.links = links,
        }
        Ok(())
    }

    /// What runs now: the programs attached, and for how many identities.
    pub fn telemetry_state(&self) -> String {
        let t = &self.telemetry;
        let ids: BTreeSet<u32> = t.on.iter().map(|(id, _)| *id).collect();
        match &t.links {
            None => "detached (no identity is watched or recorded): processes pay nothing".into(),
            Some((_, uring)) => format!(
                "attached: raw tracepoint sys_enter{} for {} identit{} (every process pays the tracepoint while attached)",
                if uring.is_some() { " and tracepoint io_uring/io_uring_submit_req" } else { " (io_uring submissions NOT seen)" },
                ids.len(),
                if ids.len() == 1 { "y" } else { "ies" }
            ),
        }
    }

    /// The batches of `identity` the CPUs still hold (not yet sent).
    pub fn unsent_batches(&self, identity: u32) -> anyhow::Result<Vec<SyscallBatch>> {
        let map: PerCpuArray<_, SyscallBatch> = PerCpuArray::try_from(self.ebpf.map(M::SYSCALL_BATCH).context("SYSCALL_BATCH missing")?)?;
        let per_cpu = map.get(&0, 0)?;
        Ok(per_cpu.iter().filter(|b| b.count > 0 && b.header.identity == identity).copied().collect())
    }
}

/// [`TelemetrySwitch`] over the daemon's [`Bpf`].
pub struct Telemetry(pub Arc<Mutex<Bpf>>);

impl TelemetrySwitch for Telemetry {
    fn set(&self, identity: u32, user: TelemetryUser, on: bool) -> Result<(), String> {
        let mut bpf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        bpf.set_telemetry(identity, user, on).map_err(|e| format!("{e:#}"))
    }

    fn state(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).telemetry_state()
    }

    fn unsent(&self, identity: u32) -> Vec<(u32, u32, u64, Vec<u16>)> {
        let bpf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match bpf.unsent_batches(identity) {
            Ok(batches) => batches.into_iter().map(|b| (b.header.tgid, b.header.tid, b.header.time_ns, b.held().to_vec())).collect(),
            Err(e) => {
                tracing::warn!("reading the unsent syscall batches: {e:#}");
                Vec::new()
            }
        }
    }
}
