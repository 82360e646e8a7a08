//! The domain's table traits implemented over the kernel maps: the one
//! place where `identity`, `policy` and `pipeline` meet aya (through the
//! typed wrappers in [`super::maps`]).
//!
//! # Layout
//! - [`identity::table::ProcessTable`] for [`ProcTable`] (assignment rule
//!   from `identity::table::assigned`, so both implementations agree).
//! - [`identity::table::CgroupTable`] for [`CgroupIdentities`].
//! - [`policy::target::PolicyTarget`] for [`PolicyMaps`].
//! - [`pipeline::source`] traits for the ring buffer, the counters and the
//!   aggregation table.
use std::time::Duration;

use zt_common::{
    DigestKey, ExecKey, ExecPick, ProcInfo,
    loss::SecurityLoss,
    policy::{ActivePolicy, AggSlot, IdentityBudget, IdentityCounters},
};

use super::maps::{
    CgroupIdentities, EgressAggregates, EventSource, ExecSelect, IdentityCounterMap, LossCounters, MapAccessError, PolicyMaps, ProcTable,
};
use crate::{
    identity::{
        Classification,
        table::{self, Assign, CgroupTable, ExecTable, ProcessTable, TableError},
    },
    pipeline::source::{AggregateTable, EventRing, KernelCounters, LossArray, Ring},
    policy::{
        Compiled,
        target::{GRACE, PolicyTarget, TargetError, target_slot},
    },
};

fn table_err(table: &'static str, op: &'static str) -> impl FnOnce(MapAccessError) -> TableError {
    move |e| TableError { table, op, source: Box::new(e) }
}

fn target_err(op: &'static str) -> impl FnOnce(MapAccessError) -> TargetError {
    move |e| TargetError::Backend { op, source: Box::new(e) }
}

impl ProcessTable for ProcTable {
    fn get(&self, tgid: u32) -> Result<Option<ProcInfo>, TableError> {
        ProcTable::get(self, tgid).map_err(table_err("process table", "get"))
    }

    /// The read-check-write is not atomic with the kernel; the remaining
    /// window (microseconds) would need the pid space to wrap around within it.
    fn assign(&mut self, tgid: u32, start_ns: u64, c: Classification) -> Result<Assign, TableError> {
        let current = ProcessTable::get(self, tgid)?;
        match table::assigned(current, start_ns, c) {
            Ok(info) => match self.update_existing(tgid, info).map_err(table_err("process table", "assign"))? {
                true => Ok(Assign::Updated),
                false => Ok(Assign::Gone),
            },
            Err(answer) => Ok(answer),
        }
    }

    fn seed(&mut self, tgid: u32, info: ProcInfo) -> Result<bool, TableError> {
        self.insert_new(tgid, info).map_err(table_err("process table", "seed"))
    }

    fn remove(&mut self, tgid: u32) -> Result<(), TableError> {
        ProcTable::remove(self, tgid).map_err(table_err("process table", "remove"))
    }

    fn entries(&self) -> Vec<(u32, ProcInfo)> {
        ProcTable::entries(self)
    }
}

impl ExecTable for ExecSelect {
    fn entries(&self) -> Vec<(ExecKey, ExecPick)> {
        ExecSelect::entries(self)
    }
    fn set(&mut self, key: ExecKey, pick: ExecPick) -> Result<(), TableError> {
        ExecSelect::set(self, key, pick).map_err(table_err("exec selection table", "set"))
    }
    fn remove(&mut self, key: &ExecKey) -> Result<(), TableError> {
        ExecSelect::remove(self, key).map_err(table_err("exec selection table", "remove"))
    }
    fn set_verdict(&mut self, key: DigestKey, pick: ExecPick) -> Result<(), TableError> {
        ExecSelect::set_verdict(self, key, pick).map_err(table_err("digest verdicts", "set"))
    }
    fn clear_verdicts(&mut self) -> Result<(), TableError> {
        ExecSelect::clear_verdicts(self).map_err(table_err("digest verdicts", "clear"))
    }
}

impl CgroupTable for CgroupIdentities {
    fn get(&self, cgroup_id: u64) -> Result<Option<u32>, TableError> {
        CgroupIdentities::get(self, cgroup_id).map_err(table_err("cgroup table", "get"))
    }
    fn set(&mut self, cgroup_id: u64, identity: u32) -> Result<(), TableError> {
        CgroupIdentities::set(self, cgroup_id, identity).map_err(table_err("cgroup table", "set"))
    }
    fn remove(&mut self, cgroup_id: u64) -> Result<(), TableError> {
        CgroupIdentities::remove(self, cgroup_id).map_err(table_err("cgroup table", "remove"))
    }
    fn keys(&self) -> Vec<u64> {
        CgroupIdentities::keys(self)
    }
}

impl PolicyTarget for PolicyMaps {
    fn active(&self) -> Result<ActivePolicy, TargetError> {
        PolicyMaps::active(self).map_err(target_err("read the active slot"))
    }

    fn install(&mut self, compiled: &Compiled) -> Result<(), TargetError> {
        let active = PolicyTarget::active(self)?;
        if compiled.slot != target_slot(active) {
            return Err(TargetError::SlotInForce { slot: compiled.slot, generation: active.generation });
        }
        self.clear_slot(compiled.slot).map_err(target_err("clear the inactive slot"))?;
        self.write_slot(compiled).map_err(target_err("write the inactive slot"))
    }

    fn flip(&mut self, slot: u32) -> Result<ActivePolicy, TargetError> {
        let next = ActivePolicy { slot, generation: PolicyTarget::active(self)?.generation + 1 };
        self.set_active(next).map_err(target_err("switch slots"))?;
        Ok(next)
    }

    fn grace_remaining(&self) -> Duration {
        self.last_switch().map(|t| GRACE.saturating_sub(t.elapsed())).unwrap_or_default()
    }

    fn contents(&self, slot: u32) -> Result<blake3::Hash, TargetError> {
        PolicyMaps::contents(self, slot).map_err(target_err("read the slot back"))
    }
}

impl AggregateTable for EgressAggregates {
    fn slots(&self) -> Result<Vec<(u32, AggSlot)>, TableError> {
        EgressAggregates::slots(self).map_err(table_err("egress aggregates", "read"))
    }
    fn folded(&self, identities: &[u32]) -> Result<Vec<(u32, IdentityBudget)>, TableError> {
        EgressAggregates::folded(self, identities).map_err(table_err("identity budgets", "read"))
    }
}

/// The loss counters and the per-identity decision counters, read together.
pub struct Counters {
    pub loss: LossCounters,
    pub decisions: IdentityCounterMap,
}

impl KernelCounters for Counters {
    fn loss(&self) -> Result<Vec<LossArray>, TableError> {
        self.loss.read().map_err(table_err("loss counters", "read"))
    }
    fn security_loss(&self) -> Result<Vec<(u32, SecurityLoss)>, TableError> {
        self.loss.security().map_err(table_err("security loss counters", "read"))
    }
    fn decisions(&self) -> Result<Vec<(u32, IdentityCounters)>, TableError> {
        self.decisions.read().map_err(table_err("decision counters", "read"))
    }
}

impl EventRing for EventSource {
    fn wait(&self, timeout: Duration) -> impl Future<Output = ()> + Send {
        EventSource::wait(self, timeout)
    }
    fn drain(&mut self, ring: Ring, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        EventSource::drain(self, ring == Ring::Security, max, f)
    }
}
