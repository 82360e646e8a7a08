//! Continuous verification ("never trust, always verify"): every few
//! seconds (`--verify-every`), and on demand (`zt-agent verify`), what this
//! agent put in the kernel and runs from is checked against what is there
//! now. A problem is an `integrity` event (so an audit record and a SIEM
//! message) when first seen, and again when it is gone.
//!
//! # Layout
//! - [`Expected`]: fixed at start: our programs attached at the cgroup root
//!   (with their kernel ids) and the agent's binary (path, file identity,
//!   blake3, taken on the first pass).
//! - [`Observed`]: the kernel's and the file system's answer now
//!   ([`Verifier::observe`]).
//! - [`check`]: the comparison, pure -> [`Finding`]s.
//! - [`Verifier`]: one pass ([`Verifier::pass`]), what changed since the
//!   last, and [`Status`] for `status`; [`Verifier::verify`]: a pass off
//!   the runtime with its changes sent as events; [`run`]: the periodic
//!   task.
//!
//! Checked now: each cgroup program still attached at the root with the
//! id we loaded (a detached link, or another program in its place, is a
//! finding), the policy tables in force (read back and compared with what
//! the policy manager installed, [`PolicyTables`]), the binary (a
//! binary replaced or rewritten on disk while it runs), the executables of
//! running agent processes ([`ProcessBinaries`]: the file a process of an
//! identity runs must still be the one at the path it was started from),
//! and the audit log
//! ([`AuditCheck`]: verified in full, as `zt-agent audit verify` does, on
//! every on-demand pass and at most every [`AUDIT_EVERY`] otherwise). A program no
//! longer attached is attached again ([`Repair`]), tables found changed
//! are installed again, and each repair is an event too (`repaired`); a
//! binary cannot be repaired: that finding stays until it is gone.
use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{
    bpf::verify::CgroupAttachment,
    host::{boottime_ns, wall_time},
    pipeline::{
        Input,
        event::{Body, Event},
    },
};

/// One problem found by a pass.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Finding {
    /// `attachment` or `binary`.
    pub check: String,
    /// What it is about: a program name, a path.
    pub subject: String,
    pub detail: String,
}

/// A finding's change, as the `integrity` event carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Integrity {
    /// `found`; `repaired` when the pass put it right (the detail says
    /// how); `cleared` once a pass no longer finds it.
    pub state: String,
    #[serde(flatten)]
    pub finding: Finding,
}

/// A file as `stat` names it: a rename over it, or a write into it, changes this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileId {
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The agent's binary as it was when the agent started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binary {
    pub path: PathBuf,
    pub id: FileId,
    pub digest: blake3::Hash,
}

#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// The cgroup v2 root our cgroup programs are attached at.
    pub cgroup2: PathBuf,
    pub attachments: Vec<CgroupAttachment>,
    pub binary: Option<Binary>,
}

/// What a pass saw.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Attach type -> program ids attached at the root, or why not known.
    pub cgroup: BTreeMap<u32, Result<Vec<u32>, String>>,
    /// The binary's path now: its identity and, when it changed (or a full
    /// pass), its digest; or why it could not be read.
    pub binary: Option<Result<(FileId, Option<blake3::Hash>), String>>,
    /// The policy tables: equal to what was installed (None), what
    /// differs, or why they could not be read; None: not checked here.
    pub tables: Option<Result<Option<String>, String>>,
    /// The audit log's last verification: how far it verified, or where
    /// and why it does not; None: not checked here.
    pub audit: Option<Result<String, String>>,
    /// The processes of agent identities and what they run; None: not
    /// checked here.
    pub processes: Option<Result<Vec<RunningBinary>, String>>,
}

/// What a process of an agent identity runs, and what its path holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningBinary {
    pub pid: u32,
    pub identity: String,
    /// `/proc/<pid>/exe` as the kernel names it (` (deleted)` when the file
    /// it runs has no name any more).
    pub exe: String,
    /// (device, inode) of the file it runs.
    pub running: (u64, u64),
    /// (device, inode) of the file at the path now, or why there is none.
    pub at_path: Result<(u64, u64), String>,
}

impl RunningBinary {
    /// Why the file at its path is not the one it runs; None: it is.
    fn replaced(&self) -> Option<String> {
        let path = self.exe.strip_suffix(" (deleted)").unwrap_or(&self.exe);
        match &self.at_path {
            Ok(now) if *now == self.running && !self.exe.ends_with(" (deleted)") => None,
            Ok((dev, ino)) => Some(format!(
                "runs {path} (inode {} on device {:#x}), which was replaced on disk while it runs: the path holds inode {ino} on device {dev:#x} now",
                self.running.1, self.running.0
            )),
            Err(why) => Some(format!("runs {path}, which was removed from disk while it runs ({why})")),
        }
    }
}

/// Every difference between what was put in place and what is there.
/// Something that cannot be checked is a finding too: unverified is not
/// verified.
pub fn check(expected: &Expected, observed: &Observed) -> Vec<Finding> {
    let mut out = Vec::new();
    let root = expected.cgroup2.display();
    for a in &expected.attachments {
        let finding = |detail: String| Finding { check: "attachment".into(), subject: a.program.to_string(), detail };
        match observed.cgroup.get(&a.attach_type) {
            Some(Ok(ids)) if ids.contains(&a.id) => {}
            Some(Ok(ids)) => out.push(finding(format!(
                "program id {} is no longer attached at {root} (attach type {}); attached there now: {ids:?}",
                a.id, a.attach_type
            ))),
            Some(Err(why)) => out.push(finding(format!("cannot query the programs at {root} (attach type {}): {why}", a.attach_type))),
            None => out.push(finding(format!("not checked (attach type {} not queried)", a.attach_type))),
        }
    }
    let tables = |detail: String| Finding { check: "policy_maps".into(), subject: "policy tables in force".into(), detail };
    match &observed.tables {
        None | Some(Ok(None)) => {}
        Some(Ok(Some(differs))) => out.push(tables(differs.clone())),
        Some(Err(why)) => out.push(tables(format!("cannot be read back: {why}"))),
    }
    match &observed.processes {
        None => {}
        Some(Err(why)) => out.push(Finding {
            check: "process_binary".into(),
            subject: "agent processes".into(),
            detail: format!("cannot be listed: {why}"),
        }),
        Some(Ok(list)) => out.extend(list.iter().filter_map(|p| {
            p.replaced().map(|detail| Finding {
                check: "process_binary".into(),
                subject: format!("pid {} ({})", p.pid, p.identity),
                detail,
            })
        })),
    }
    if let Some(Err(why)) = &observed.audit {
        out.push(Finding { check: "audit_log".into(), subject: "audit log".into(), detail: format!("does not verify: {why}") });
    }
    let Some(b) = &expected.binary else {
        // The first pass could not take the binary's digest.
        if let Some(Err(why)) = &observed.binary {
            out.push(Finding { check: "binary".into(), subject: "/proc/self/exe".into(), detail: format!("cannot be read: {why}") });
        }
        return out;
    };
    let finding = |detail: String| Finding { check: "binary".into(), subject: b.path.display().to_string(), detail };
    match &observed.binary {
        None => {}
        Some(Err(why)) => out.push(finding(format!("cannot be read: {why}"))),
        Some(Ok((_, Some(d)))) if *d != b.digest => {
            out.push(finding(format!("content changed since start: blake3 {} now {}", b.digest.to_hex(), d.to_hex())))
        }
        // The same content in another file still means the file was replaced.
        Some(Ok((id, _))) if (id.dev, id.ino) != (b.id.dev, b.id.ino) => out.push(finding(format!(
            "replaced since start: inode {} on device {:#x} now inode {} on device {:#x}",
            b.id.ino, b.id.dev, id.ino, id.dev
        ))),
        Some(Ok(_)) => {}
    }
    out
}

/// `status`'s view of verification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Seconds between passes; 0: only on demand.
    pub every_secs: u64,
    pub passes: u64,
    /// RFC 3339 UTC of the last pass.
    pub last_pass: Option<String>,
    /// What the last pass found (empty: everything verified).
    pub findings: Vec<Finding>,
    /// Findings reported since start (each counted once until it clears).
    pub findings_total: u64,
    /// How long the last pass took, in microseconds.
    #[serde(default)]
    pub last_pass_micros: u64,
}

/// One pass's answer (`zt-agent verify`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// What was checked, one line each.
    pub checked: Vec<String>,
    pub findings: Vec<Finding>,
    /// How long the pass took (the binary hashed in full), in microseconds.
    #[serde(default)]
    pub micros: u64,
}

/// Attaches a program found detached again; Err says why it could not.
pub type Repair = Box<dyn Fn(&CgroupAttachment) -> Result<(), String> + Send + Sync>;

/// The audit log verified in full; Ok says how far (records, signed size).
pub type AuditCheck = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

/// How often a periodic pass verifies the whole audit log (a pass on
/// demand always does): at 770,000 records/s, a large log takes seconds.
pub const AUDIT_EVERY: Duration = Duration::from_secs(600);

/// Lists the processes of agent identities and what they run.
pub type ProcessBinaries = Box<dyn Fn() -> Result<Vec<RunningBinary>, String> + Send + Sync>;

/// What a pass asks of the rest of the agent; each is optional (a pass
/// checks what it is given).
#[derive(Default)]
pub struct Hooks {
    pub repair: Option<Repair>,
    pub tables: Option<PolicyTables>,
    pub audit: Option<AuditCheck>,
    pub processes: Option<ProcessBinaries>,
}

/// The policy tables' check and repair, asked of the policy manager (it
/// knows what it installed; see `Manager::check_maps`). Both block: a pass
/// runs off the runtime.
pub struct PolicyTables {
    /// Ok(None): the tables hold what was installed; Ok(Some(what
    /// differs)); Err: why they could not be read back.
    pub check: Box<dyn Fn() -> Result<Option<String>, String> + Send + Sync>,
    /// Installs the policy in force again; Ok says what is in force now.
    pub reinstall: Box<dyn Fn() -> Result<String, String> + Send + Sync>,
}

pub struct Verifier {
    /// Held through a pass: the periodic one and `zt-agent verify` never
    /// overlap (each would report, and repair, the same finding).
    pass: Mutex<()>,
    expected: Mutex<Expected>,
    status: Mutex<Status>,
    /// Where changes go as `integrity` events, and the node they name.
    events: Option<(mpsc::Sender<Input>, Arc<str>)>,
    hooks: Hooks,
    /// The audit log's last answer and when it was taken.
    last_audit: Mutex<Option<(std::time::Instant, Result<String, String>)>>,
}

impl Verifier {
    pub fn new(
        cgroup2: PathBuf,
        attachments: Vec<CgroupAttachment>,
        every: Duration,
        events: Option<(mpsc::Sender<Input>, Arc<str>)>,
        hooks: Hooks,
    ) -> Arc<Self> {
        Arc::new(Verifier {
            pass: Mutex::new(()),
            expected: Mutex::new(Expected { cgroup2, attachments, binary: None }),
            status: Mutex::new(Status { every_secs: every.as_secs(), ..Status::default() }),
            events,
            hooks,
            last_audit: Mutex::new(None),
        })
    }

    /// A pass on a blocking thread (it queries the kernel and may hash the
    /// binary); each change goes into the event stream (and so the audit
    /// log and the SIEM), waiting for room rather than dropping it.
    pub async fn verify(self: &Arc<Self>, full: bool) -> Report {
        let v = self.clone();
        let (report, changes) = tokio::task::spawn_blocking(move || v.pass(full)).await.expect("a verification pass panicked");
        for c in changes {
            let f = &c.finding;
            match &c.state[..] {
                "found" => tracing::error!("integrity: {} {}: {}", f.check, f.subject, f.detail),
                "repaired" => tracing::warn!("integrity: {} {} repaired: {}", f.check, f.subject, f.detail),
                _ => tracing::info!("integrity: {} {} verified again", f.check, f.subject),
            }
            if let Some((tx, node)) = &self.events {
                let ev = Event { time: wall_time(boottime_ns()), node: node.clone(), body: Body::Integrity { integrity: c } };
                let _ = tx.send(Input::Emit(Box::new(ev))).await;
            }
        }
        report
    }

    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// What is there now; the binary is hashed when its identity changed,
    /// on a `full` pass, and on the first (which fixes what is expected).
    fn observe(&self, full: bool) -> Observed {
        let mut expected = self.expected.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut observed = Observed {
            tables: self.hooks.tables.as_ref().map(|t| (t.check)()),
            audit: self.audit_log(full),
            processes: self.hooks.processes.as_ref().map(|p| p()),
            ..Observed::default()
        };
        for a in &expected.attachments {
            observed
                .cgroup
                .entry(a.attach_type)
                .or_insert_with(|| crate::bpf::verify::cgroup_programs(&expected.cgroup2, a.attach_type).map_err(|e| e.to_string()));
        }
        match &expected.binary {
            None => match own_binary() {
                // The first pass (or the first that could read it): the
                // binary as it is now is what is expected.
                Ok(b) => expected.binary = Some(b),
                Err(e) => observed.binary = Some(Err(e.to_string())),
            },
            Some(b) => {
                observed.binary = Some(FileId::of(&b.path).map_err(|e| e.to_string()).and_then(|id| {
                    let digest = match full || id != b.id {
                        true => Some(hash_file(&b.path).map_err(|e| e.to_string())?),
                        false => None,
                    };
                    Ok((id, digest))
                }));
            }
        }
        observed
    }

    /// One pass: the report, and the changes since the last pass (new
    /// findings, repairs, cleared ones) for the event stream.
    pub fn pass(&self, full: bool) -> (Report, Vec<Integrity>) {
        let _one_at_a_time = self.pass.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let started = std::time::Instant::now();
        let observed = self.observe(full);
        let expected = self.expected.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut findings = check(&expected, &observed);
        let mut repaired = self.repair_detached(&expected, &observed, &mut findings);
        repaired.extend(self.repair_tables(&observed, &mut findings));
        let mut checked: Vec<String> = expected
            .attachments
            .iter()
            .map(|a| format!("{} attached at {} (program id {})", a.program, expected.cgroup2.display(), a.id))
            .collect();
        if self.hooks.tables.is_some() {
            checked.push("policy tables in force (read back, compared with what was installed)".into());
        }
        if let Some(Ok(list)) = &observed.processes {
            checked.push(format!("executables of {} agent processes (each still the file at its path)", list.len()));
        }
        if let Some(Ok(how_far)) = &observed.audit {
            checked.push(how_far.clone());
        }
        if let Some(b) = &expected.binary {
            checked.push(format!("binary {} (blake3 {})", b.path.display(), b.digest.to_hex()));
        }
        let mut st = self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let seen = |f: &Finding, among: &[Finding]| among.iter().any(|p| same(p, f));
        let event = |state: &str, f: &Finding| Integrity { state: state.into(), finding: f.clone() };
        // Found (a repaired one too: it was found first), then repaired, then cleared.
        let mut changes: Vec<Integrity> =
            findings.iter().chain(repaired.iter().map(|(f, _)| f)).filter(|f| !seen(f, &st.findings)).map(|f| event("found", f)).collect();
        let repaired: Vec<Finding> = repaired.into_iter().map(|(f, how)| Finding { detail: format!("{}; {how}", f.detail), ..f }).collect();
        changes.extend(repaired.iter().map(|f| event("repaired", f)));
        changes.extend(st.findings.iter().filter(|p| !seen(p, &findings) && !seen(p, &repaired)).map(|p| event("cleared", p)));
        st.findings_total += changes.iter().filter(|c| c.state == "found").count() as u64;
        st.passes += 1;
        st.last_pass = Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string());
        st.findings = findings.clone();
        let micros = started.elapsed().as_micros() as u64;
        st.last_pass_micros = micros;
        // `zt-agent verify` reports a repair too (exit status 1), with what was done.
        let mut reported = findings;
        reported.extend(repaired);
        (Report { checked, findings: reported, micros }, changes)
    }

    /// Attaches again each of our programs the kernel answered for and no
    /// longer lists (not one whose query failed: nothing is known then).
    /// Returns the findings put right, with what was done; a failed repair
    /// stays a finding, its detail saying why.
    fn repair_detached(&self, expected: &Expected, observed: &Observed, findings: &mut Vec<Finding>) -> Vec<(Finding, String)> {
        let Some(repair) = &self.hooks.repair else { return Vec::new() };
        let mut repaired = Vec::new();
        let mut kept = Vec::new();
        for mut f in findings.drain(..) {
            let detached = expected
                .attachments
                .iter()
                .find(|a| f.check == "attachment" && f.subject == a.program && matches!(observed.cgroup.get(&a.attach_type), Some(Ok(_))));
            match detached.map(repair) {
                Some(Ok(())) => repaired.push((f, format!("attached again at {} through a new link", expected.cgroup2.display()))),
                Some(Err(why)) => {
                    f.detail = format!("{}; attaching it again failed: {why}", f.detail);
                    kept.push(f);
                }
                None => kept.push(f),
            }
        }
        *findings = kept;
        repaired
    }

    /// The audit log's verification: run again when due (a `full` pass,
    /// the first, or [`AUDIT_EVERY`] since the last), else the last answer.
    fn audit_log(&self, full: bool) -> Option<Result<String, String>> {
        let check = self.hooks.audit.as_ref()?;
        let mut last = self.last_audit.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = full || last.as_ref().is_none_or(|(at, _)| at.elapsed() >= AUDIT_EVERY);
        if due {
            *last = Some((std::time::Instant::now(), check()));
        }
        last.as_ref().map(|(_, r)| r.clone())
    }

    /// Installs the policy again when the tables were read back and differ
    /// (not when they could not be read: nothing is known then).
    fn repair_tables(&self, observed: &Observed, findings: &mut Vec<Finding>) -> Vec<(Finding, String)> {
        let (Some(t), Some(Ok(Some(_)))) = (&self.hooks.tables, &observed.tables) else { return Vec::new() };
        let Some(i) = findings.iter().position(|f| f.check == "policy_maps") else { return Vec::new() };
        match (t.reinstall)() {
            Ok(how) => vec![(findings.remove(i), how)],
            Err(why) => {
                findings[i].detail = format!("{}; installing the policy again failed: {why}", findings[i].detail);
                Vec::new()
            }
        }
    }
}

/// The same problem (its detail may change between passes).
fn same(a: &Finding, b: &Finding) -> bool {
    a.check == b.check && a.subject == b.subject
}

fn own_binary() -> std::io::Result<Binary> {
    let path = std::fs::read_link("/proc/self/exe")?;
    let id = FileId::of(&path)?;
    let digest = hash_file(&path)?;
    Ok(Binary { path, id, digest })
}

fn hash_file(path: &Path) -> std::io::Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path)?)?;
    Ok(h.finalize())
}

/// Runs a pass every `every` until `stop`.
pub async fn run(verifier: Arc<Verifier>, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        verifier.verify(false).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(program: &'static str, id: u32, attach_type: u32) -> CgroupAttachment {
        CgroupAttachment { program, id, attach_type }
    }

    fn id(ino: u64) -> FileId {
        FileId { dev: 1, ino, size: 10, mtime_ns: 5, ctime_ns: 6 }
    }

    fn expected() -> Expected {
        Expected {
            cgroup2: "/sys/fs/cgroup".into(),
            attachments: vec![attachment("connect4", 7, 10), attachment("connect6", 8, 11)],
            binary: Some(Binary { path: "/usr/bin/zt-agent".into(), id: id(100), digest: blake3::hash(b"agent") }),
        }
    }

    fn observed(c4: Vec<u32>, c6: Result<Vec<u32>, String>, binary: Result<(FileId, Option<blake3::Hash>), String>) -> Observed {
        Observed { cgroup: [(10, Ok(c4)), (11, c6)].into(), binary: Some(binary), ..Observed::default() }
    }

    #[test]
    fn everything_in_place_finds_nothing() {
        assert_eq!(check(&expected(), &observed(vec![3, 7], Ok(vec![8]), Ok((id(100), None)))), []);
        assert_eq!(check(&expected(), &observed(vec![7], Ok(vec![8]), Ok((id(100), Some(blake3::hash(b"agent")))))), []);
    }

    #[test]
    fn a_detached_or_replaced_program_is_found() {
        let f = check(&expected(), &observed(vec![9], Ok(vec![8]), Ok((id(100), None))));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].check.as_str(), f[0].subject.as_str()), ("attachment", "connect4"));
        assert!(f[0].detail.contains("program id 7 is no longer attached") && f[0].detail.contains("[9]"), "{}", f[0].detail);
    }

    #[test]
    fn what_cannot_be_checked_is_a_finding() {
        let f = check(&expected(), &observed(vec![7], Err("Operation not permitted".into()), Err("No such file".into())));
        assert_eq!(
            f.iter().map(|f| (f.check.as_str(), f.subject.as_str())).collect::<Vec<_>>(),
            [("attachment", "connect6"), ("binary", "/usr/bin/zt-agent")]
        );
        assert!(f[0].detail.contains("cannot query") && f[1].detail.contains("cannot be read"), "{f:?}");
    }

    #[test]
    fn a_binary_replaced_or_rewritten_is_found() {
        let replaced = check(&expected(), &observed(vec![7], Ok(vec![8]), Ok((id(200), None))));
        assert!(replaced[0].detail.contains("replaced since start: inode 100"), "{replaced:?}");
        let rewritten = check(&expected(), &observed(vec![7], Ok(vec![8]), Ok((id(100), Some(blake3::hash(b"other"))))));
        assert!(rewritten[0].detail.contains("content changed since start"), "{rewritten:?}");
        // Touched (times changed) with the same content: verified by the hash.
        let touched = FileId { mtime_ns: 99, ..id(100) };
        assert_eq!(check(&expected(), &observed(vec![7], Ok(vec![8]), Ok((touched, Some(blake3::hash(b"agent")))))), []);
    }

    #[test]
    fn only_a_program_the_kernel_no_longer_lists_is_attached_again() {
        let tried = Arc::new(Mutex::new(Vec::new()));
        let t = tried.clone();
        let repair: Repair = Box::new(move |a| {
            t.lock().unwrap().push(a.program);
            if a.program == "connect6" { Err("EBUSY".into()) } else { Ok(()) }
        });
        let v = Verifier::new(
            "/sys/fs/cgroup".into(),
            vec![],
            Duration::from_secs(5),
            None,
            Hooks { repair: Some(repair), ..Hooks::default() },
        );
        let mut e = expected();
        e.attachments.push(attachment("sendmsg4", 9, 14));
        // connect4 and connect6 detached; sendmsg4's query failed.
        let o = Observed { cgroup: [(10, Ok(vec![])), (11, Ok(vec![])), (14, Err("EPERM".into()))].into(), ..Observed::default() };
        let mut findings = check(&e, &o);
        let repaired = v.repair_detached(&e, &o, &mut findings);
        assert_eq!(*tried.lock().unwrap(), ["connect4", "connect6"], "nothing tried where the kernel did not answer");
        assert_eq!(repaired.iter().map(|(f, _)| f.subject.as_str()).collect::<Vec<_>>(), ["connect4"]);
        assert!(repaired[0].1.contains("attached again"), "{repaired:?}");
        let left: Vec<(&str, &str)> = findings.iter().map(|f| (f.subject.as_str(), f.detail.as_str())).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left[0].0 == "connect6" && left[0].1.contains("attaching it again failed: EBUSY"), "{left:?}");
        assert!(left[1].0 == "sendmsg4" && left[1].1.contains("cannot query"), "{left:?}");
    }

    #[test]
    fn a_pass_reports_changes_once() {
        // No attachments to query: only the binary (this test's own), fixed on the first pass.
        let v = Verifier::new("/nonexistent".into(), vec![], Duration::from_secs(5), None, Hooks::default());
        let (first, changes) = v.pass(false);
        assert_eq!((first.findings.len(), changes.len()), (0, 0));
        assert_eq!(first.checked.len(), 1, "{first:?}");
        // Pretend the binary changed: the next pass finds it once, then it stays quiet.
        v.expected.lock().unwrap().binary.as_mut().unwrap().digest = blake3::hash(b"not this");
        let (r, changes) = v.pass(true);
        assert_eq!((r.findings.len(), changes.len(), changes[0].state.as_str()), (1, 1, "found"));
        let (_, changes) = v.pass(true);
        assert!(changes.is_empty());
        let own = own_binary().unwrap().digest;
        v.expected.lock().unwrap().binary.as_mut().unwrap().digest = own;
        let (r, changes) = v.pass(true);
        assert_eq!((r.findings.len(), changes[0].state.as_str()), (0, "cleared"));
        assert_eq!((v.status().passes, v.status().findings_total), (4, 1));
    }

    #[test]
    fn changed_tables_are_installed_again_and_unreadable_ones_are_not() {
        let answer = Arc::new(Mutex::new(Ok(Some("slot 0 does not hold what was installed".to_string()))));
        let reinstalled = Arc::new(Mutex::new(0));
        let (a, r) = (answer.clone(), reinstalled.clone());
        let tables = PolicyTables {
            check: Box::new(move || a.lock().unwrap().clone()),
            reinstall: Box::new(move || {
                *r.lock().unwrap() += 1;
                Ok("installed again: generation 2 in force".into())
            }),
        };
        let v =
            Verifier::new("/nonexistent".into(), vec![], Duration::from_secs(5), None, Hooks { tables: Some(tables), ..Hooks::default() });
        let (report, changes) = v.pass(false);
        let states: Vec<&str> = changes.iter().map(|c| c.state.as_str()).collect();
        assert_eq!(states, ["found", "repaired"], "{changes:?}");
        assert!(report.findings[0].detail.contains("installed again: generation 2"), "{report:?}");
        assert!(report.checked.iter().any(|c| c.starts_with("policy tables in force")), "{report:?}");
        assert_eq!(*reinstalled.lock().unwrap(), 1);
        *answer.lock().unwrap() = Err("EPERM".into());
        let (report, _) = v.pass(false);
        assert!(report.findings[0].detail.contains("cannot be read back: EPERM"), "{report:?}");
        assert_eq!(*reinstalled.lock().unwrap(), 1, "nothing reinstalled when nothing is known");
        *answer.lock().unwrap() = Ok(None);
        let (report, changes) = v.pass(false);
        assert!(report.findings.is_empty() && changes[0].state == "cleared", "{changes:?}");
    }

    #[test]
    fn the_audit_log_is_verified_when_due_and_a_failure_stays_until_verified_again() {
        let answer = Arc::new(Mutex::new(Ok("audit log /a: 10 records verified".to_string())));
        let runs = Arc::new(Mutex::new(0));
        let (a, n) = (answer.clone(), runs.clone());
        let check: AuditCheck = Box::new(move || {
            *n.lock().unwrap() += 1;
            a.lock().unwrap().clone()
        });
        let v =
            Verifier::new("/nonexistent".into(), vec![], Duration::from_secs(5), None, Hooks { audit: Some(check), ..Hooks::default() });
        let (r, _) = v.pass(false);
        assert!(r.checked.iter().any(|c| c.contains("10 records verified")), "{r:?}");
        v.pass(false);
        assert_eq!(*runs.lock().unwrap(), 1, "a periodic pass reuses the answer until it is due");
        *answer.lock().unwrap() = Err("record 7: leaf hash differs".into());
        let (r, changes) = v.pass(true);
        assert_eq!(*runs.lock().unwrap(), 2, "a pass on demand verifies again");
        assert_eq!((changes[0].state.as_str(), changes[0].finding.check.as_str()), ("found", "audit_log"));
        assert!(r.findings[0].detail.contains("record 7: leaf hash differs"), "{r:?}");
        let (r, changes) = v.pass(false);
        assert!(changes.is_empty() && r.findings.len() == 1, "the finding stays until verified again");
    }

    #[test]
    fn a_process_whose_binary_was_replaced_or_removed_is_found() {
        let p = |exe: &str, at_path: Result<(u64, u64), String>| RunningBinary {
            pid: 42,
            identity: "coder".into(),
            exe: exe.into(),
            running: (1, 100),
            at_path,
        };
        let o = |list: Vec<RunningBinary>| Observed { processes: Some(Ok(list)), ..Observed::default() };
        let e = Expected::default();
        assert_eq!(check(&e, &o(vec![p("/opt/agent", Ok((1, 100)))])), []);
        let f = check(&e, &o(vec![p("/opt/agent (deleted)", Ok((1, 200)))]));
        assert_eq!((f[0].check.as_str(), f[0].subject.as_str()), ("process_binary", "pid 42 (coder)"));
        assert!(f[0].detail.contains("runs /opt/agent (inode 100") && f[0].detail.contains("holds inode 200"), "{f:?}");
        let f = check(&e, &o(vec![p("/opt/agent (deleted)", Err("No such file or directory".into()))]));
        assert!(f[0].detail.contains("removed from disk"), "{f:?}");
        let f = check(&e, &Observed { processes: Some(Err("EPERM".into())), ..Observed::default() });
        assert!(f[0].detail.contains("cannot be listed: EPERM"), "{f:?}");
    }
}
