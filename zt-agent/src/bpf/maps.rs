//! Typed wrappers over the maps: user space touches kernel maps only through
//! these, and every error names its map and operation.
//!
//! # Layout
//! - [`ProcTable`]: tgid -> `ProcInfo` and its fast-path shadow `PID_IDENTITY`.
//! - [`ProcReader`]: a second, read-only handle on `PROC_TABLE` (for the
//!   fanotify responder's thread).
//! - [`CgroupIdentities`]: cgroup id -> identity id.
//! - [`LossCounters`]: per-CPU kernel loss counters (and the
//!   security records lost per identity).
//! - [`ConfigMap`]: the run-time switches.
//! - [`SettlerMap`]: which daemon settles pending processes.
//! - [`EventSource`]: the two ring buffers, readable from tokio.
//! - [`PolicyMaps`]: the policy maps of both slots and the active-slot switch.
//!
//! Nothing here knows the domain's rules: `bpf::tables` implements the
//! domain's table traits over these wrappers.
use aya::maps::{
    Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf,
    lpm_trie::{Key, LpmTrie},
};
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use zt_common::{
    Config, DigestKey, ExecKey, ExecPick, NO_IDENTITY, ProcInfo,
    loss::{self, SecurityLoss},
    maps,
    path_policy::{ObjectKey, ObjectRules},
    policy::{AGG_SLOTS, ActivePolicy, AggSlot, IdentityBudget, IdentityCounters, IdentityPolicy, NetKeyData, NetRuleList},
    unix::UnixKeyData,
};

#[derive(Debug, Error)]
#[error("map {map}: {op}: {source}")]
pub struct MapAccessError {
    pub map: &'static str,
    pub op: &'static str,
    #[source]
    pub source: MapError,
}

fn err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> MapAccessError {
    move |source| MapAccessError { map, op, source }
}

/// `BPF_NOEXIST`: create only.
const NOEXIST: u64 = 1;
/// `BPF_EXIST`: update only.
const EXIST: u64 = 2;

fn is_missing_key(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound) || matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

fn is_existing_key(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EEXIST))
}

/// The process table and its fast-path shadow `PID_IDENTITY` (pid ->
/// identity), written together. The assignment rules are the domain's
/// (`identity::table`); this is map access only.
pub struct ProcTable {
    table: HashMap<MapData, u32, ProcInfo>,
    by_pid: Array<MapData, u32>,
}

impl ProcTable {
    pub fn new(map: Map, by_pid: Map) -> Result<Self, MapAccessError> {
        Ok(ProcTable {
            table: HashMap::try_from(map).map_err(err(maps::PROC_TABLE, "open"))?,
            by_pid: Array::try_from(by_pid).map_err(err(maps::PID_IDENTITY, "open"))?,
        })
    }

    /// Mirrors an identity into the fast-path array (pids beyond its size
    /// are served by the table alone).
    fn set_by_pid(&mut self, pid: u32, identity: u32) -> Result<(), MapAccessError> {
        if pid >= self.by_pid.len() {
            return Ok(());
        }
        self.by_pid.set(pid, identity, 0).map_err(err(maps::PID_IDENTITY, "set"))
    }

    pub fn get(&self, tgid: u32) -> Result<Option<ProcInfo>, MapAccessError> {
        match self.table.get(&tgid, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_missing_key(&e) => Ok(None),
            Err(e) => Err(err(maps::PROC_TABLE, "get")(e)),
        }
    }

    /// Creates an entry (`BPF_NOEXIST`); false when one exists.
    pub fn insert_new(&mut self, tgid: u32, info: ProcInfo) -> Result<bool, MapAccessError> {
        match self.table.insert(tgid, info, NOEXIST) {
            Ok(()) => {
                self.set_by_pid(tgid, info.identity)?;
                Ok(true)
            }
            Err(e) if is_existing_key(&e) => Ok(false),
            Err(e) => Err(err(maps::PROC_TABLE, "insert (new)")(e)),
        }
    }

    /// Replaces an existing entry (`BPF_EXIST`); false when it is gone.
    pub fn update_existing(&mut self, tgid: u32, info: ProcInfo) -> Result<bool, MapAccessError> {
        match self.table.insert(tgid, info, EXIST) {
            Ok(()) => {
                self.set_by_pid(tgid, info.identity)?;
                Ok(true)
            }
            Err(e) if is_missing_key(&e) => Ok(false),
            Err(e) => Err(err(maps::PROC_TABLE, "update")(e)),
        }
    }

    /// A read-only handle of its own on the table (a duplicated map
    /// descriptor), for another thread.
    pub fn reader(&self) -> Result<ProcReader, MapAccessError> {
        use aya::maps::IterableMap as _;
        use std::os::fd::AsFd as _;
        let fd = self
            .table
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| err(maps::PROC_TABLE, "dup")(MapError::SyscallError(aya::sys::SyscallError { call: "dup", io_error: e })))?;
        let data = MapData::from_fd(fd).map_err(err(maps::PROC_TABLE, "open"))?;
        Ok(ProcReader(HashMap::try_from(Map::HashMap(data)).map_err(err(maps::PROC_TABLE, "open"))?))
    }

    /// Snapshot of every entry.
    pub fn entries(&self) -> Vec<(u32, ProcInfo)> {
        self.table.iter().filter_map(Result::ok).collect()
    }

    pub fn remove(&mut self, tgid: u32) -> Result<(), MapAccessError> {
        self.set_by_pid(tgid, NO_IDENTITY)?;
        match self.table.remove(&tgid) {
            Ok(()) => Ok(()),
            Err(e) if is_missing_key(&e) => Ok(()),
            Err(e) => Err(err(maps::PROC_TABLE, "remove")(e)),
        }
    }
}

/// `PROC_TABLE`, read only.
pub struct ProcReader(HashMap<MapData, u32, ProcInfo>);

impl ProcReader {
    /// Every process with an identity: (tgid, identity id).
    pub fn attributed(&self) -> Vec<(u32, u32)> {
        self.0
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, p)| p.identity != zt_common::NO_IDENTITY && p.identity != zt_common::PENDING_IDENTITY)
            .map(|(tgid, p)| (tgid, p.identity))
            .collect()
    }
}

impl crate::files::Processes for ProcReader {
    fn get(&self, tgid: u32) -> Option<ProcInfo> {
        self.0.get(&tgid, 0).ok()
    }
}

/// `EXEC_SELECT`: the selectors the kernel decides at exec; and
/// `DIGEST_VERDICT`, the `exeDigest` verdicts per file version.
pub struct ExecSelect {
    select: HashMap<MapData, ExecKey, ExecPick>,
    verdicts: HashMap<MapData, DigestKey, ExecPick>,
}

impl ExecSelect {
    pub fn new(select: Map, verdicts: Map) -> Result<Self, MapAccessError> {
        Ok(ExecSelect {
            select: HashMap::try_from(select).map_err(err(maps::EXEC_SELECT, "open"))?,
            verdicts: HashMap::try_from(verdicts).map_err(err(maps::DIGEST_VERDICT, "open"))?,
        })
    }

    pub fn entries(&self) -> Vec<(ExecKey, ExecPick)> {
        self.select.iter().filter_map(Result::ok).collect()
    }

    pub fn set(&mut self, key: ExecKey, pick: ExecPick) -> Result<(), MapAccessError> {
        self.select.insert(key, pick, 0).map_err(err(maps::EXEC_SELECT, "insert"))
    }

    pub fn remove(&mut self, key: &ExecKey) -> Result<(), MapAccessError> {
        match self.select.remove(key) {
            Ok(()) => Ok(()),
            Err(e) if is_missing_key(&e) => Ok(()),
            Err(e) => Err(err(maps::EXEC_SELECT, "remove")(e)),
        }
    }

    /// Records a verdict; a full map (E2BIG) is cleared and the write retried.
    pub fn set_verdict(&mut self, key: DigestKey, pick: ExecPick) -> Result<(), MapAccessError> {
        match self.verdicts.insert(key, pick, 0) {
            Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
                self.clear_verdicts()?;
                self.verdicts.insert(key, pick, 0).map_err(err(maps::DIGEST_VERDICT, "insert"))
            }
            r => r.map_err(err(maps::DIGEST_VERDICT, "insert")),
        }
    }

    pub fn clear_verdicts(&mut self) -> Result<(), MapAccessError> {
        let keys: Vec<DigestKey> = self.verdicts.keys().filter_map(Result::ok).collect();
        for k in keys {
            match self.verdicts.remove(&k) {
                Ok(()) => {}
                Err(e) if is_missing_key(&e) => {}
                Err(e) => return Err(err(maps::DIGEST_VERDICT, "clear")(e)),
            }
        }
        Ok(())
    }
}

pub struct CgroupIdentities(HashMap<MapData, u64, u32>);

impl CgroupIdentities {
    pub fn remove(&mut self, cgroup_id: u64) -> Result<(), MapAccessError> {
        match self.0.remove(&cgroup_id) {
            Ok(()) => Ok(()),
            Err(e) if is_missing_key(&e) => Ok(()),
            Err(e) => Err(err(maps::CGROUP_IDENTITY, "remove")(e)),
        }
    }

    pub fn keys(&self) -> Vec<u64> {
        self.0.keys().filter_map(Result::ok).collect()
    }

    pub fn new(map: Map) -> Result<Self, MapAccessError> {
        HashMap::try_from(map).map(Self).map_err(err(maps::CGROUP_IDENTITY, "open"))
    }

    pub fn set(&mut self, cgroup_id: u64, identity: u32) -> Result<(), MapAccessError> {
        self.0.insert(cgroup_id, identity, 0).map_err(err(maps::CGROUP_IDENTITY, "insert"))
    }

    pub fn get(&self, cgroup_id: u64) -> Result<Option<u32>, MapAccessError> {
        match self.0.get(&cgroup_id, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_missing_key(&e) => Ok(None),
            Err(e) => Err(err(maps::CGROUP_IDENTITY, "get")(e)),
        }
    }
}

pub struct LossCounters {
    loss: PerCpuArray<MapData, u64>,
    security: PerCpuArray<MapData, SecurityLoss>,
}

impl LossCounters {
    pub fn new(loss: Map, security: Map) -> Result<Self, MapAccessError> {
        Ok(LossCounters {
            loss: PerCpuArray::try_from(loss).map_err(err(maps::LOSS, "open"))?,
            security: PerCpuArray::try_from(security).map_err(err(maps::SECURITY_LOSS, "open"))?,
        })
    }

    /// Each CPU's counters, indexed by `zt_common::loss`.
    pub fn read(&self) -> Result<Vec<[u64; loss::COUNT as usize]>, MapAccessError> {
        let mut out = Vec::new();
        for i in 0..loss::COUNT {
            let per_cpu = self.loss.get(&i, 0).map_err(err(maps::LOSS, "get"))?;
            out.resize(per_cpu.len(), [0u64; loss::COUNT as usize]);
            for (cpu, v) in per_cpu.iter().enumerate() {
                out[cpu][i as usize] = *v;
            }
        }
        Ok(out)
    }

    /// Security records lost per identity (every CPU together: counts
    /// summed, the earliest first and the latest last loss), for identities
    /// with any.
    pub fn security(&self) -> Result<Vec<(u32, SecurityLoss)>, MapAccessError> {
        let mut out = Vec::new();
        for slot in 0..maps::SECURITY_LOSS_CAPACITY {
            let per_cpu = self.security.get(&slot, 0).map_err(err(maps::SECURITY_LOSS, "get"))?;
            let mut sum = SecurityLoss::default();
            for l in per_cpu.iter().filter(|l| l.count > 0) {
                sum.count += l.count;
                sum.first_ns = if sum.first_ns == 0 { l.first_ns } else { sum.first_ns.min(l.first_ns) };
                sum.last_ns = sum.last_ns.max(l.last_ns);
            }
            if sum.count > 0 {
                out.push((loss::slot_identity(slot), sum));
            }
        }
        Ok(out)
    }
}

/// The kernel's per-CPU egress aggregation cache and the identities'
/// budgets with their folded attempts (read by user space).
pub struct EgressAggregates {
    slots: PerCpuArray<MapData, AggSlot>,
    budgets: PerCpuArray<MapData, IdentityBudget>,
}

impl EgressAggregates {
    pub fn new(slots: Map, budgets: Map) -> Result<Self, MapAccessError> {
        Ok(Self {
            slots: PerCpuArray::try_from(slots).map_err(err(maps::EGRESS_AGG, "open"))?,
            budgets: PerCpuArray::try_from(budgets).map_err(err(maps::IDENTITY_BUDGET, "open"))?,
        })
    }

    /// Every slot holding a key, with its CPU.
    pub fn slots(&self) -> Result<Vec<(u32, AggSlot)>, MapAccessError> {
        let mut out = Vec::new();
        for i in 0..AGG_SLOTS {
            let per_cpu = self.slots.get(&i, 0).map_err(err(maps::EGRESS_AGG, "get"))?;
            out.extend(per_cpu.iter().enumerate().filter(|(_, s)| s.total != 0).map(|(cpu, s)| (cpu as u32, *s)));
        }
        Ok(out)
    }

    /// Attempts folded per identity (every CPU together: counts summed,
    /// the earliest first and the latest last), for `identities`.
    pub fn folded(&self, identities: &[u32]) -> Result<Vec<(u32, IdentityBudget)>, MapAccessError> {
        let mut out = Vec::new();
        for &id in identities {
            let per_cpu = self.budgets.get(&loss::identity_slot(id), 0).map_err(err(maps::IDENTITY_BUDGET, "get"))?;
            let mut sum = IdentityBudget::default();
            for b in per_cpu.iter().filter(|b| b.first_ns != 0) {
                sum.folded = sum.folded + b.folded;
                sum.first_ns = if sum.first_ns == 0 { b.first_ns } else { sum.first_ns.min(b.first_ns) };
                sum.last_ns = sum.last_ns.max(b.last_ns);
            }
            if sum.first_ns != 0 {
                out.push((id, sum));
            }
        }
        Ok(out)
    }
}

/// Per-identity decision counters, summed over CPUs.
pub struct IdentityCounterMap(PerCpuArray<MapData, IdentityCounters>);

impl IdentityCounterMap {
    pub fn new(map: Map) -> Result<Self, MapAccessError> {
        PerCpuArray::try_from(map).map(Self).map_err(err(maps::IDENTITY_COUNTERS, "open"))
    }

    /// Counters of every identity id with any decision.
    pub fn read(&self) -> Result<Vec<(u32, IdentityCounters)>, MapAccessError> {
        let mut out = Vec::new();
        for id in 1..=maps::MAX_IDENTITIES {
            let per_cpu = self.0.get(&id, 0).map_err(err(maps::IDENTITY_COUNTERS, "get"))?;
            let sum = per_cpu.iter().fold(IdentityCounters::default(), |a, c| a + *c);
            if sum != IdentityCounters::default() {
                out.push((id, sum));
            }
        }
        Ok(out)
    }
}

pub struct ConfigMap(Array<MapData, Config>);

impl ConfigMap {
    pub fn new(map: Map) -> Result<Self, MapAccessError> {
        Array::try_from(map).map(Self).map_err(err(maps::CONFIG, "open"))
    }

    pub fn set(&mut self, config: Config) -> Result<(), MapAccessError> {
        self.0.set(0, config, 0).map_err(err(maps::CONFIG, "set"))
    }

    /// Sets `flags` ([`zt_common::config_flags`]) in the config in force.
    pub fn add_flags(&mut self, flags: u32) -> Result<(), MapAccessError> {
        let mut c = self.0.get(&0, 0).map_err(err(maps::CONFIG, "get"))?;
        c.flags |= flags;
        self.set(c)
    }
}

/// The running daemon's tgid (`SETTLER`): while it is set, the guards
/// hold pending processes to their rules, since this daemon settles them.
pub struct SettlerMap(Array<MapData, u32>);

impl SettlerMap {
    pub fn new(map: Map) -> Result<Self, MapAccessError> {
        Array::try_from(map).map(Self).map_err(err(maps::SETTLER, "open"))
    }

    /// Records this process as the daemon: call it once this process is
    /// settled itself (the kernel clears it when the process dies).
    pub fn register_self(&mut self) -> Result<(), MapAccessError> {
        self.0.set(0, std::process::id(), 0).map_err(err(maps::SETTLER, "set"))
    }
}

/// The two event ring buffers (telemetry and security records), registered
/// with tokio. The kernel submits without waking us (except when a ring
/// fills past its threshold, or a process is held at exec), so the consumer
/// drains on a short timer as well as on readiness.
pub struct EventSource {
    telemetry: AsyncFd<RingBuf<MapData>>,
    security: AsyncFd<RingBuf<MapData>>,
}

impl EventSource {
    pub fn new(telemetry: Map, security: Map) -> Result<Self, anyhow::Error> {
        let ring = |map: Map, name: &'static str| -> Result<AsyncFd<RingBuf<MapData>>, anyhow::Error> {
            let ring = RingBuf::try_from(map).map_err(err(name, "open"))?;
            // SAFETY: the RingBuf owns its map fd, which stays open and the
            // same for the AsyncFd's whole life (the AsyncFd owns the RingBuf).
            unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow::anyhow!("registering the ring buffer {name} with tokio: {e}"))
        };
        Ok(Self { telemetry: ring(telemetry, maps::EVENTS)?, security: ring(security, maps::SECURITY_EVENTS)? })
    }

    /// Waits until the kernel forces a wakeup on either ring or `timeout` passes.
    pub async fn wait(&self, timeout: std::time::Duration) {
        let either = async {
            tokio::select! {
                Ok(mut g) = self.security.readable() => g.clear_ready(),
                Ok(mut g) = self.telemetry.readable() => g.clear_ready(),
            }
        };
        let _ = tokio::time::timeout(timeout, either).await;
    }

    /// Hands at most `max` pending records of one ring to `f`; returns how
    /// many there were.
    pub fn drain(&mut self, security: bool, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let ring = if security { self.security.get_mut() } else { self.telemetry.get_mut() };
        let mut n = 0;
        while n < max
            && let Some(item) = ring.next()
        {
            f(&item);
            n += 1;
        }
        n
    }
}

/// The policy maps of both slots and the active-slot switch (map access
/// only; the install/flip/grace protocol is `policy::target`, implemented
/// over these in `bpf::tables`).
pub struct PolicyMaps {
    net: LpmTrie<MapData, NetKeyData, NetRuleList>,
    files: HashMap<MapData, ObjectKey, ObjectRules>,
    unix: LpmTrie<MapData, UnixKeyData, NetRuleList>,
    identities: Array<MapData, IdentityPolicy>,
    active: Array<MapData, ActivePolicy>,
    /// Keys written into each slot, to clear it before reuse.
    installed: [Installed; 2],
    last_switch: Option<std::time::Instant>,
}

#[derive(Default)]
struct Installed {
    net: Vec<Key<NetKeyData>>,
    unix: Vec<Key<UnixKeyData>>,
    files: Vec<ObjectKey>,
    /// `IDENTITY_POLICY` elements.
    identities: Vec<u32>,
}

impl PolicyMaps {
    /// Opens the maps. Keys already in them (pinned maps adopted from an
    /// earlier run) count as installed, so the first install into a slot
    /// clears what that run left there.
    pub fn new(net: Map, unix: Map, files: Map, identities: Map, active: Map) -> Result<Self, MapAccessError> {
        let mut m = PolicyMaps {
            net: LpmTrie::try_from(net).map_err(err(maps::NET_RULES, "open"))?,
            files: HashMap::try_from(files).map_err(err(maps::FILE_RULES, "open"))?,
            unix: LpmTrie::try_from(unix).map_err(err(maps::UNIX_RULES, "open"))?,
            identities: Array::try_from(identities).map_err(err(maps::IDENTITY_POLICY, "open"))?,
            active: Array::try_from(active).map_err(err(maps::POLICY_ACTIVE, "open"))?,
            installed: Default::default(),
            last_switch: None,
        };
        let slot = |s: u32| (s as usize).min(1);
        for k in m.net.keys() {
            let k = k.map_err(err(maps::NET_RULES, "list"))?;
            m.installed[slot(k.data().slot)].net.push(k);
        }
        for k in m.unix.keys() {
            let k = k.map_err(err(maps::UNIX_RULES, "list"))?;
            m.installed[slot(k.data().slot)].unix.push(k);
        }
        for k in m.files.keys() {
            let k = k.map_err(err(maps::FILE_RULES, "list"))?;
            m.installed[slot(k.slot)].files.push(k);
        }
        for i in 0..maps::IDENTITY_POLICY_CAPACITY {
            if m.identities.get(&i, 0).map_err(err(maps::IDENTITY_POLICY, "list"))?.defined != 0 {
                m.installed[slot(i / zt_common::policy::IDENTITY_SLOT_STRIDE)].identities.push(i);
            }
        }
        Ok(m)
    }

    pub fn active(&self) -> Result<ActivePolicy, MapAccessError> {
        self.active.get(&0, 0).map_err(err(maps::POLICY_ACTIVE, "get"))
    }

    /// What `slot` holds, read back from every table (see
    /// `policy::target::Contents`).
    pub fn contents(&self, slot: u32) -> Result<blake3::Hash, MapAccessError> {
        use crate::policy::target::{Contents, table};
        let mut c = Contents::default();
        for e in self.net.iter() {
            let (k, list) = e.map_err(err(maps::NET_RULES, "read"))?;
            if k.data().slot == slot {
                c.add(table::NET, &(k.prefix_len(), k.data(), list));
            }
        }
        for e in self.unix.iter() {
            let (k, list) = e.map_err(err(maps::UNIX_RULES, "read"))?;
            if k.data().slot == slot {
                c.add(table::UNIX, &(k.prefix_len(), k.data(), list));
            }
        }
        for e in self.files.iter() {
            let (k, rules) = e.map_err(err(maps::FILE_RULES, "read"))?;
            if k.slot == slot {
                c.add(table::FILES, &(k, rules));
            }
        }
        let stride = zt_common::policy::IDENTITY_SLOT_STRIDE;
        for i in (slot * stride..(slot + 1) * stride).filter(|i| *i < maps::IDENTITY_POLICY_CAPACITY) {
            let v = self.identities.get(&i, 0).map_err(err(maps::IDENTITY_POLICY, "read"))?;
            if v.defined != 0 {
                c.add(table::IDENTITIES, &(i, v));
            }
        }
        Ok(c.digest())
    }

    /// Removes every key an earlier install wrote into `slot`.
    pub fn clear_slot(&mut self, slot: u32) -> Result<(), MapAccessError> {
        let old = std::mem::take(&mut self.installed[slot as usize]);
        for k in &old.net {
            self.net.remove(k).or_else(|e| if is_missing_key(&e) { Ok(()) } else { Err(e) }).map_err(err(maps::NET_RULES, "clear"))?;
        }
        for k in &old.unix {
            self.unix.remove(k).or_else(|e| if is_missing_key(&e) { Ok(()) } else { Err(e) }).map_err(err(maps::UNIX_RULES, "clear"))?;
        }
        for k in &old.files {
            self.files.remove(k).or_else(|e| if is_missing_key(&e) { Ok(()) } else { Err(e) }).map_err(err(maps::FILE_RULES, "clear"))?;
        }
        for i in &old.identities {
            self.identities.set(*i, IdentityPolicy::default(), 0).map_err(err(maps::IDENTITY_POLICY, "clear"))?;
        }
        Ok(())
    }

    /// Writes a compiled policy's entries into its slot, recording each key
    /// as it is written so a failed write is cleared by the next
    /// [`Self::clear_slot`].
    pub fn write_slot(&mut self, c: &crate::policy::Compiled) -> Result<(), MapAccessError> {
        let installed = &mut self.installed[c.slot as usize];
        installed.net.reserve_exact(c.net.len());
        installed.unix.reserve_exact(c.unix.len());
        installed.files.reserve_exact(c.objects.len());
        installed.identities.reserve_exact(c.identities.len() + 1);
        for (len, data, list) in &c.net {
            let key = Key::new(*len, *data);
            self.net.insert(&key, list, 0).map_err(err(maps::NET_RULES, "insert"))?;
            installed.net.push(key);
        }
        for (len, data, list) in &c.unix {
            let key = Key::new(*len, *data);
            self.unix.insert(&key, list, 0).map_err(err(maps::UNIX_RULES, "insert"))?;
            installed.unix.push(key);
        }
        for (key, rules) in &c.objects {
            self.files.insert(key, rules, 0).map_err(err(maps::FILE_RULES, "insert"))?;
            installed.files.push(*key);
        }
        let pending = crate::policy::compile::pending_identity(c.slot);
        for (k, v) in c.identities.iter().chain([&pending]) {
            let Some(i) = zt_common::policy::identity_index(k.slot, k.identity) else { continue };
            self.identities.set(i, *v, 0).map_err(err(maps::IDENTITY_POLICY, "insert"))?;
            installed.identities.push(i);
        }
        Ok(())
    }

    /// Points every reader at `next` (one array-element update).
    pub fn set_active(&mut self, next: ActivePolicy) -> Result<(), MapAccessError> {
        self.active.set(0, next, 0).map_err(err(maps::POLICY_ACTIVE, "switch"))?;
        self.last_switch = Some(std::time::Instant::now());
        Ok(())
    }

    /// When the active slot last changed.
    pub fn last_switch(&self) -> Option<std::time::Instant> {
        self.last_switch
    }
}
